"""Markdown table cells and rows, shared by the report scripts (no JAX import)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def fmt(x: Any, spec: str = ".4g") -> str:
    """One table cell: ``-`` for a missing or NaN value, yes/no, ints with separators.

    Example:
      >>> from experiments._markdown import fmt
      >>> [fmt(None), fmt(float("nan")), fmt(True), fmt(12345), fmt(0.123456), fmt(2.5, ".1f")]
      ['-', '-', 'yes', '12,345', '0.1235', '2.5']
    """
    if x is None or (isinstance(x, (float, np.floating)) and np.isnan(x)):
        return "-"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return format(float(x), spec)


def row(cells: Sequence[Any]) -> str:
    """One Markdown table row.

    Example:
      >>> from experiments._markdown import row
      >>> row(["a", 1])
      '| a | 1 |'
    """
    return "| " + " | ".join(str(c) for c in cells) + " |"
