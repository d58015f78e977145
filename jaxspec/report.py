"""Table cells and rows: the one formatter of every Markdown and CSV table jaxspec writes.

The comparison (:mod:`jaxspec.compare`) and the experiment scripts' reports format their numbers
here, so a number looks the same in every table; JSON goes through :func:`jaxspec.io.dumps`.
NumPy only.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["csv_cell", "fmt", "md_row"]


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and not np.isfinite(x))


def fmt(x: Any, spec: str = ".4g") -> str:
    """One Markdown cell: ``-`` for a missing or non-finite value, yes/no, ints with separators,
    floats by ``spec``, strings as they are.

    Example:
      >>> from jaxspec.report import fmt
      >>> [fmt(None), fmt(float("nan")), fmt(True), fmt(12345), fmt(0.123456), fmt(2.5, ".1f")]
      ['-', '-', 'yes', '12,345', '0.1235', '2.5']
    """
    if _missing(x):
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return format(float(x), spec)


def md_row(cells: Sequence[Any]) -> str:
    """One Markdown table row (a ``|`` inside a cell is escaped).

    Example:
      >>> from jaxspec.report import md_row
      >>> md_row(["a", 1, "x|y"])
      '| a | 1 | x\\\\|y |'
    """
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def csv_cell(x: Any) -> str:
    """One CSV cell: empty for a missing or non-finite value, floats exactly (``repr``), ints
    and bools as integers, strings as they are.

    Example:
      >>> from jaxspec.report import csv_cell
      >>> [csv_cell(None), csv_cell(float("inf")), csv_cell(0.1), csv_cell(True), csv_cell("q")]
      ['', '', '0.1', '1', 'q']
    """
    if _missing(x):
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_, int, np.integer)):
        return str(int(x))
    return repr(float(x))
