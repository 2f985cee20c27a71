"""What commands print as they work: progress of long loops (tqdm's bar on a terminal, a plain line every
10% when output goes to a file or a pipe, so a log reads as a few lines, not hundreds of carriage-return
updates) and the aligned tables they end with."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
STEP_PERCENT = 10
UNKNOWN_TOTAL_STEP = 100  # items between lines when the total is not known


class LineProgress:
    """``update``/``close`` like tqdm's, printing ``desc: 30% (93/310 img)`` lines at each 10% step."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.n = 0
        self.shown = 0  # the count of the last line printed

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.total:
            due = self.n * 100 // self.total // STEP_PERCENT > before * 100 // self.total // STEP_PERCENT
        else:
            due = self.n // UNKNOWN_TOTAL_STEP > before // UNKNOWN_TOTAL_STEP
        if due:
            self._line()

    def close(self) -> None:
        if self.n != self.shown:  # the end, when it did not fall on a step
            self._line()

    def _line(self) -> None:
        self.shown = self.n
        if self.total:
            text = f"{self.desc}: {self.n * 100 // self.total}% ({self.n}/{self.total} {self.unit})"
        else:
            text = f"{self.desc}: {self.n} {self.unit}"
        print(text, file=self.stream, flush=True)


class NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, stream: TextIO | None = None):
    """An object with ``update(n)`` and ``close()``: tqdm on a terminal, plain lines otherwise, nothing
    when not ``enabled``. Writes to ``stream`` (default: stderr, where tqdm writes)."""
    stream = stream or sys.stderr
    if not enabled:
        return NoProgress()
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, desc=desc, unit=unit, file=stream)
    return LineProgress(total, desc, unit, stream)


def progress(
    items: Iterable[T], desc: str, unit: str = "it", total: int | None = None, enabled: bool = True,
    stream: TextIO | None = None,
) -> Iterator[T]:
    """``items``, reporting progress as ``progress_bar`` does (total: ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = progress_bar(total, desc, unit, enabled, stream)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


def text_table(rows: Sequence[Sequence[str]], rule: bool = True) -> list[str]:
    """``rows`` (the header first) as lines of left-aligned columns two spaces apart; ``rule``: a line of
    dashes under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def show_table(rows: Sequence[Sequence[str]], output: str | Path | None = None, head: str = "") -> str:
    """``rows`` as ``text_table`` lines (under ``head`` when given), printed, and written to ``output`` when
    given (atomically): what the benchmarks print and keep. Returns the text."""
    from .files import atomic_write_text

    text = (head + "\n\n" if head else "") + "\n".join(text_table(rows))
    print(text)
    if output is not None:
        atomic_write_text(output, text + "\n")
    return text
