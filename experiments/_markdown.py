"""Markdown table cells and rows, and JSON-ready values, shared by the report scripts (no JAX
import)."""

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


def jsonable(x: Any) -> Any:
    """A copy of ``x`` that strict JSON takes: NaN/Inf -> None, tuples -> lists, NumPy -> Python.

    Example:
      >>> import numpy as np
      >>> from experiments._markdown import jsonable
      >>> jsonable({"q": float("nan"), "m": np.int64(3), "t": (np.float32(0.5), np.bool_(True))})
      {'q': None, 'm': 3, 't': [0.5, True]}
    """
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x
