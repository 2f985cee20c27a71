"""The package's layout: imports between polypseg modules point one way (no cycle), each module imports only
modules on its own floor or below in docs/DESIGN.md's diagram, and no module imports another module's private
``_name``. Read from the source with ast, so lazy imports inside functions count too; imports under
``if TYPE_CHECKING:`` (type hints only, never run) do not."""

from __future__ import annotations

import ast
from pathlib import Path

import polypseg

PACKAGE = Path(polypseg.__file__).resolve().parent
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def polypseg_imports(source: str) -> list[tuple[str, str | None]]:
    """(polypseg module, imported name or None) for every runtime import of a polypseg module in ``source``
    (a module of the package: relative imports are resolved against it)."""
    found = []
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .data import x
                found += [(node.module.split(".")[0], a.name) for a in node.names]
            elif node.level == 1:  # from . import metrics
                found += [(a.name, None) for a in node.names]
            elif node.module and node.module.split(".")[0] == "polypseg":
                parts = node.module.split(".")
                if len(parts) > 1:
                    found += [(parts[1], a.name) for a in node.names]
                else:
                    found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "polypseg" and len(parts) > 1:
                    found.append((parts[1], None))
    return found


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    return {name: {m for m, _ in polypseg_imports(text) if m in sources and m != name}
            for name, text in sources.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def design_floors(design: str) -> dict[str, int]:
    """The floors of DESIGN.md's import diagram (the first code block after "## Direction of imports"):
    module -> its row, 0 at the top; words in parentheses are comments."""
    block = design.split("## Direction of imports", 1)[1].split("```", 2)[1]
    floors: dict[str, int] = {}
    rows = [line.split("(", 1)[0].split() for line in block.splitlines()]
    for row, names in enumerate(r for r in rows if r):
        for name in names:
            assert name not in floors, f"{name} is on two rows of the diagram"
            floors[name] = row
    return floors


def floor_violations(graph: dict[str, set[str]], floors: dict[str, int]) -> list[str]:
    """Each import of a module on a higher row than the importer's (the diagram puts imports on the same row
    or below), as "a (row i) imports b (row j)"."""
    return [f"{name} (row {floors[name]}) imports {other} (row {floors[other]})"
            for name in sorted(graph) for other in sorted(graph[name])
            if name in floors and other in floors and floors[other] < floors[name]]


def _sources() -> dict[str, str]:
    return {name: (PACKAGE / f"{name}.py").read_text() for name in MODULES}


def test_no_import_cycle_between_modules():
    assert find_cycle(import_graph(_sources())) is None


def test_every_module_imports_only_its_floor_or_below_in_the_design():
    floors = design_floors(DESIGN.read_text(encoding="utf-8"))
    assert sorted(set(MODULES) - set(floors)) == []  # every module has its row in the diagram
    assert sorted(set(floors) - set(MODULES)) == []  # and the diagram names no module that is gone
    graph = import_graph(_sources())
    assert floor_violations(graph, floors) == []
    # the server on top: only the command imports the app, only the app and routers import routers
    assert sorted(name for name, imported in graph.items() if "serve" in imported) == ["cli"]
    routers = {name for name in graph if name.startswith("serve_") and name != "serve_state"}
    assert {name for name, imported in graph.items() if imported & routers} <= routers | {"serve"}


def test_the_floor_check_catches_an_import_upwards():
    design = ("# x\n## Direction of imports\ntext\n\n```\ntop   peer\nmiddle   (a comment)\n\nbottom\n```\n"
              "```\nother block\n```\n")
    floors = design_floors(design)
    assert floors == {"top": 0, "peer": 0, "middle": 1, "bottom": 2}
    sources = {"top": "from .peer import x\nfrom . import bottom\n", "peer": "import polypseg.middle\n",
               "middle": "from .bottom import y\n", "bottom": ""}
    assert floor_violations(import_graph(sources), floors) == []  # the same row and below are fine
    sources["bottom"] = "def late():\n    from .middle import y\n"  # a lazy import up one row
    assert floor_violations(import_graph(sources), floors) == ["bottom (row 2) imports middle (row 1)"]
    # the real package with one hand-made violation: a router importing the app above it
    real, floors = _sources(), design_floors(DESIGN.read_text(encoding="utf-8"))
    real["serve_state"] += "\ndef _late():\n    from .serve import create_app\n"
    assert floor_violations(import_graph(real), floors) == [
        f"serve_state (row {floors['serve_state']}) imports serve (row {floors['serve']})"]
    assert floors["serve"] < floors["serve_sites"] < floors["serve_state"] < floors["predict"]


def test_no_module_imports_another_modules_private_names():
    private = [f"{name} imports {mod}.{imported}"
               for name, text in _sources().items()
               for mod, imported in polypseg_imports(text)
               if imported and imported.startswith("_") and mod != name]
    assert private == []


def test_the_checks_catch_what_they_look_for():
    # A cycle through a lazy import inside a function, and a private name, are found; a type-only import
    # under TYPE_CHECKING is not an import at run time.
    sources = {
        "a": "from .b import run\n",
        "b": "def run():\n    from .c import _helper\n",
        "c": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import X\nimport polypseg.a\n",
    }
    assert find_cycle(import_graph(sources)) == ["a", "b", "c", "a"]
    assert ("c", "_helper") in polypseg_imports(sources["b"])
    sources["c"] = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import X\n"
    assert find_cycle(import_graph(sources)) is None
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_the_python_api_names_stay_what_they_name():
    # A fresh interpreter: `polypseg.train` is the function on every call, although importing the module
    # polypseg.train binds that name on the package; `calibrate` lives in polypseg.calibration, whose import
    # (train imports it) must not shadow it either.
    import subprocess
    import sys

    code = ("import inspect, polypseg\n"
            "names = ('train', 'train', 'calibrate', 'evaluate', 'evaluate', 'Predictor', 'describe')\n"
            "kinds = [inspect.isfunction(getattr(polypseg, n)) or inspect.isclass(getattr(polypseg, n)) for n in names]\n"
            "print(kinds, sorted(set(polypseg.__all__) - set(dir(polypseg)) - set(polypseg._API)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == f"{[True] * 7} []"
    assert set(polypseg.__all__) == set(polypseg._API)
