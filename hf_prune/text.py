"""Text every wing writes the same way: "did you mean" hints and markdown tables."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["did_you_mean", "markdown_table"]


def did_you_mean(word: str, candidates: Iterable[str], n: int = 1, cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` (``n=1``) or ``"; did you mean: x, y?"`` with the up to ``n`` candidates
    closest to ``word`` (:func:`difflib.get_close_matches`), or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=n, cutoff=cutoff)
    if not close:
        return ""
    return f"; did you mean {close[0]!r}?" if n == 1 else f"; did you mean: {', '.join(close)}?"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A markdown table; cells are written with ``str``. ``align`` has one letter per column, ``l`` or
    ``r`` (right-aligned, for numbers); missing letters mean ``l``."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align.ljust(len(header), "l")) + "|"
    def line(cells: Iterable[Any]) -> str:
        return "| " + " | ".join(map(str, cells)) + " |"

    return "\n".join([line(header), rule, *map(line, rows)])
