"""Writing files so that a failure or a kill never leaves a half-written one (imports nothing heavy)."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import PolypsegError


def temp_path(path: str | Path, keep_suffix: bool = False) -> Path:
    """A new empty hidden file in ``path``'s folder (``.NAME.XXXX.tmp``), to be renamed over ``path`` by
    ``publish``. ``keep_suffix`` ends the name in ``path``'s suffix too (``.NAME.XXXX.tmp.mp4``): OpenCV
    picks the video container by it."""
    path = Path(path)
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    return Path(tmp)


def publish(tmp: str | Path, path: str | Path) -> Path:
    """Rename the finished ``tmp`` over ``path`` in one step: readers see the old file or the new one."""
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared like any other
    os.replace(tmp, path)
    return Path(path)


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file in ``path``'s folder, then rename it over ``path``."""
    tmp = temp_path(path)
    try:
        write(str(tmp))
        return publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def check_writable(path: str | Path, what: str, folder: bool = False) -> None:
    """Fail before any work starts when ``path`` (a file, or with ``folder`` a folder, still to be written)
    cannot be written: its nearest existing ancestor is a file, or is not writable."""
    path = Path(path).absolute()
    if path.exists() and path.is_dir() != folder:
        kind = "folder" if path.is_dir() else "file"
        raise PolypsegError(f"{path} is a {kind}; give {'a folder' if folder else 'a file name'} for {what}.")
    existing = path if path.is_dir() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PolypsegError(f"Cannot write {what} at {path}: {existing} is a file, not a folder. Choose another path.")
    try:  # a real probe: permission bits say nothing about root, read-only mounts or full disks
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise PolypsegError(
            f"Cannot write {what} at {path}: the folder {existing} is not writable ({err.strerror}). "
            "Choose another output path, or make the folder writable."
        ) from None


def csv_text(rows, fields=None) -> str:
    """``rows`` (dicts) as CSV text with a header: ``fields`` in order, default the first row's keys."""
    rows = list(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields if fields is not None else rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def publish_folder(tmp: Path, path: Path, keep: bool) -> None:
    """Put the finished folder ``tmp`` at ``path`` (with ``keep``; else only remove an old ``path``): the
    old folder is moved aside first, so readers see the old one or the new one."""
    import shutil

    old = None
    if path.is_dir():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.replace(path, old / path.name)
    if keep:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
        os.replace(tmp, path)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
