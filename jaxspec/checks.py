"""Cheap probes of data and operators before an expensive spectral run.

Each catches a mistake that would otherwise come back as a plausible but wrong number:
labels outside ``[0, num_classes)`` (:func:`check_labels`), and an operator that is not one
fixed symmetric matrix (:func:`symmetry_error`, :func:`assert_symmetric`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SymmetryReport", "assert_symmetric", "check_labels", "symmetry_error"]

# Offending entries listed in a label error; the rest are counted, not printed.
_SHOWN = 8


def check_labels(labels: Any, num_classes: int, /, *, name: str = "labels") -> None:
    """Raises ``ValueError`` unless every label is an integer in ``[0, num_classes)``.

    Out-of-range labels never fail loudly on their own: in a softmax cross-entropy a label
    ``>= num_classes`` makes the loss NaN while its gradient (and so every HVP) stays finite, and
    a negative label is read as a class counted from the end (``-1`` is the last class). Call this
    once per data set on host arrays, where data meets a model; the message names the offending
    values, their indices (the first few) and the valid range.

    Args:
      labels: integer class indices, any shape (a NumPy array or a concrete JAX array).
      num_classes: the number of classes of the model.
      name: what to call the labels in the message (``"y_train"``).

    Raises:
      ValueError: for labels out of range or of a non-integer dtype.
      TypeError: for traced labels (inside ``jit``), whose values cannot be read.

    Example:
      >>> import numpy as np
      >>> from jaxspec.checks import check_labels
      >>> check_labels(np.array([0, 2, 1]), 3)
      >>> check_labels(np.array([0, 3, -1]), 3)
      Traceback (most recent call last):
      ...
      ValueError: labels: 2 of 3 labels out of range [0, 3) (num_classes=3): values -1, 3 at indices 1, 2. A label >= num_classes makes the loss NaN while its gradients stay finite; a negative one is silently read as a class counted from the end.
    """
    if isinstance(labels, jax.core.Tracer):
        raise TypeError(f"{name}: check_labels needs concrete labels, not traced ones; call it on "
                        "the data set before jit")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    y = np.asarray(labels)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    bad = (y < 0) | (y >= num_classes)
    count = int(np.count_nonzero(bad))
    if not count:
        return
    values = np.unique(y[bad])
    shown = ", ".join(str(int(v)) for v in values[:_SHOWN])
    if values.size > _SHOWN:
        shown += f", ... ({values.size} distinct)"
    where = np.argwhere(bad)[:_SHOWN]
    index = [str(int(i[0])) if y.ndim == 1 else str(tuple(int(j) for j in i)) for i in where]
    index = ", ".join(index) + (", ..." if count > _SHOWN else "")
    raise ValueError(
        f"{name}: {count} of {y.size} labels out of range [0, {num_classes}) "
        f"(num_classes={num_classes}): values {shown} at {'index' if count == 1 else 'indices'} "
        f"{index}. A label >= num_classes makes the loss NaN while its gradients stay finite; a "
        "negative one is silently read as a class counted from the end.")


class SymmetryReport(NamedTuple):
    """Result of :func:`symmetry_error`.

    Attributes:
      relative_error: ``max |v^T A w - w^T A v| / (|v| |A w| + |w| |A v|)`` over the probe pairs;
        about ``eps * sqrt(P)`` for a symmetric operator in floating point.
      vAw: ``v^T A w`` of the first pair.
      wAv: ``w^T A v`` of the first pair.
      repeat_error: ``|A v - A v'| / |A v|``, two products with the same ``v``: 0 (or rounding,
        for non-deterministic GPU reductions) for a fixed matrix.

    Example:
      >>> import jax
      >>> from jaxspec import assert_symmetric
      >>> r = assert_symmetric(lambda v: 2.0 * v, jax.random.key(0), 3)
      >>> r.relative_error, r.vAw == r.wAv, r.repeat_error
      (0.0, True, 0.0)
    """

    relative_error: float
    vAw: float
    wAv: float
    repeat_error: float = 0.0


def symmetry_error(matvec: Callable[[jax.Array], jax.Array], key: jax.Array, dim: int, /, *,
                   dtype=jnp.float32, num_pairs: int = 1) -> SymmetryReport:
    """Measures how far ``matvec`` is from one symmetric matrix: 2 matvecs a pair, plus 1.

    A Hessian is symmetric, and Lanczos needs the same matrix at every step; an operator that
    changes between calls (dropout left on, random augmentation redrawn per call, BatchNorm
    statistics that move) makes it return meaningless numbers. Random pairs ``(v, w)`` measure
    the asymmetry; the first ``v`` is applied a second time, because a slightly random operator
    can look symmetric within the tolerance while differing from call to call. The experiment
    scripts call this (through :func:`assert_symmetric`) before a run.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import symmetry_error
      >>> A = jnp.array([[2.0, 1.0], [1.0, 3.0]])
      >>> symmetry_error(lambda v: A @ v, jax.random.key(0), 2).relative_error < 1e-6
      True
      >>> symmetry_error(lambda v: A.at[0, 1].set(5.0) @ v, jax.random.key(0), 2).relative_error > 0.1
      True
      >>> calls = iter(range(100))  # a matrix that changes with every call
      >>> symmetry_error(lambda v: (1.0 + 1e-3 * next(calls)) * (A @ v), jax.random.key(0),
      ...                2).repeat_error > 1e-4
      True
    """
    worst, first = 0.0, None
    for k in jax.random.split(key, num_pairs):
        kv, kw = jax.random.split(k)
        v = jax.random.normal(kv, (dim,), dtype)
        w = jax.random.normal(kw, (dim,), dtype)
        Av, Aw = matvec(v), matvec(w)
        vAw, wAv = float(jnp.vdot(v, Aw)), float(jnp.vdot(w, Av))
        scale = float(jnp.linalg.norm(v) * jnp.linalg.norm(Aw) + jnp.linalg.norm(w) * jnp.linalg.norm(Av))
        if not np.isfinite(vAw) or not np.isfinite(wAv):
            raise FloatingPointError("the operator returned NaN/Inf on a random probe")
        err = abs(vAw - wAv) / scale if scale > 0 else 0.0
        worst = max(worst, err)
        if first is None:
            first = (vAw, wAv)
            again = matvec(v)
            norm = float(jnp.linalg.norm(Av))
            diff = float(jnp.linalg.norm(again - Av))
            repeat = diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))
    return SymmetryReport(worst, *first, repeat)


def assert_symmetric(matvec: Callable[[jax.Array], jax.Array], key: jax.Array, dim: int, /, *,
                     dtype=jnp.float32, rtol: float | None = None,
                     repeat_rtol: float | None = None) -> SymmetryReport:
    """Raises ``ValueError`` unless ``matvec`` is one fixed symmetric matrix (:func:`symmetry_error`).

    ``rtol`` bounds the asymmetry: ``1e-3`` in float32 and ``1e-8`` in float64 by default, well
    above rounding for a symmetric operator, well below what a changing loss produces.
    ``repeat_rtol`` bounds the difference between two products with the same vector:
    ``1e-5`` (float32) and ``1e-12`` (float64) by default, room for the summation-order noise of
    non-deterministic GPU reductions (``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` removes it),
    far below a random mask or augmentation drawn per call.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import assert_symmetric
      >>> assert_symmetric(lambda v: 2.0 * v, jax.random.key(0), 3).relative_error
      0.0
      >>> calls = iter(range(100))
      >>> assert_symmetric(lambda v: (1.0 + 1e-3 * next(calls)) * v, jax.random.key(0), 3)
      Traceback (most recent call last):
      ...
      ValueError: the operator is not deterministic (e.g. dropout on, or a random augmentation per call): Lanczos needs the same matrix at every step. Two products with the same vector differ by 0.002 (relative; tolerance 1e-05).
    """
    single = jnp.dtype(dtype) == jnp.float32
    if rtol is None:
        rtol = 1e-3 if single else 1e-8
    if repeat_rtol is None:
        repeat_rtol = 1e-5 if single else 1e-12
    report = symmetry_error(matvec, key, dim, dtype=dtype)
    if not report.repeat_error <= repeat_rtol:
        raise ValueError(
            "the operator is not deterministic (e.g. dropout on, or a random augmentation per "
            "call): Lanczos needs the same matrix at every step. Two products with the same "
            f"vector differ by {report.repeat_error:.3g} (relative; tolerance {repeat_rtol:g}).")
    if not report.relative_error <= rtol:
        raise ValueError(
            f"the operator is not symmetric: v^T A w = {report.vAw:.6g} but w^T A v = "
            f"{report.wAv:.6g} (relative error {report.relative_error:.3g} > {rtol:g}). A Hessian "
            "must be symmetric: check for dropout, redrawn augmentation or moving BatchNorm "
            "statistics inside the loss.")
    return report
