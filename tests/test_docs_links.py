"""README.md and docs/*.md: every relative link and image resolves, every docs page is linked from the
README, and the README stays short and starts with the two commands (issue 18).

Links are read as GitHub renders them: Markdown links and images ``[text](target)``, ``![alt](target)``
(nested as ``[![alt](img)](target)`` too), reference definitions ``[name]: target``, and HTML
``<img src=...>`` / ``<a href=...>``; text in code blocks and code spans is not a link. Targets with a
scheme (``https:``, ``mailto:``, ...) and pure ``#anchor`` links are not checked; for the others the
``#anchor`` (and any ``?query``) is dropped and the file or folder must exist, relative to the Markdown
file (a leading ``/``: relative to the repository root), inside the repository."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 160

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# Link text may hold one level of brackets (an image inside a link); the lookahead lets an image inside a
# link match as well as the link around it.
_INLINE = re.compile(r"(?=(?<!!)!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\))")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
_HTML = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def link_targets(markdown: str) -> list[str]:
    """Every link and image target in ``markdown``, in order of appearance (code excluded)."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    found = []
    for pattern in (_INLINE, _REFERENCE, _HTML):
        found += [(m.start(), m.group(1).strip("<>")) for m in pattern.finditer(text)]
    return [target for _, target in sorted(found)]


def broken_links(md_file: Path, root: Path) -> list[str]:
    """The relative targets of ``md_file`` that name no file or folder inside ``root``."""
    broken = []
    for target in link_targets(md_file.read_text(encoding="utf-8")):
        if target.startswith("#") or _SCHEME.match(target):
            continue
        path = unquote(re.split(r"[#?]", target, maxsplit=1)[0])
        resolved = ((root / path.lstrip("/")) if path.startswith("/") else (md_file.parent / path)).resolve()
        if not resolved.is_relative_to(root.resolve()) or not resolved.exists():
            broken.append(target)
    return broken


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("md_file", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_image_resolves(md_file: Path) -> None:
    assert broken_links(md_file, REPO) == [], f"{md_file.relative_to(REPO)} links to what is not there"


def test_readme_links_every_docs_page() -> None:
    linked = {
        (README.parent / re.split(r"[#?]", t, maxsplit=1)[0]).resolve()
        for t in link_targets(README.read_text(encoding="utf-8"))
        if not _SCHEME.match(t) and not t.startswith("#")
    }
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert unlinked == [], f"docs pages the README's Links list does not name: {unlinked}"


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    content = [line for line in lines if line.strip()]
    assert content[0].startswith("# polypseg")
    assert content[1].startswith("```")
    end = content.index("```", 2)
    block = content[2:end]
    assert [line.split()[0] for line in block] == ["scripts/reproduce.sh", "scripts/test.sh"]


def test_link_checker_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.png").write_bytes(b"")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "good.md").write_text("# good\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "A [good link](good.md#a-heading), a [broken one](missing.md), an ![image](../img/x.png \"title\"),\n"
        "[![badge](../img/x.png)](../img/) a linked image, <img src=\"../img/gone.png\" width=10>,\n"
        '<a href="good.md">html</a>, [outside](../../elsewhere.md), [web](https://example.org/x.md),\n'
        "[mail](mailto:a@b.c), [anchor](#top), `[in code](nope.md)`\n[ref]: /img/x.png\n"
        "```\n[in a block](nope.md)\n```\n"
    )
    assert link_targets(page.read_text()) == [
        "good.md#a-heading", "missing.md", "../img/x.png", "../img/", "../img/x.png", "../img/gone.png",
        "good.md", "../../elsewhere.md", "https://example.org/x.md", "mailto:a@b.c", "#top", "/img/x.png",
    ]
    assert broken_links(page, tmp_path) == ["missing.md", "../img/gone.png", "../../elsewhere.md"]
