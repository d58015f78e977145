"""Cheap probes of data and operators before an expensive spectral run.

Each catches a mistake that would otherwise come back as a plausible but wrong number:
labels outside ``[0, num_classes)`` (:func:`check_labels`), a Lanczos start vector or step count
that cannot work (:func:`check_start_vector`, :func:`clamp_steps`), a matvec of the wrong shape
(:func:`check_matvec`), and an operator that is not one fixed symmetric matrix
(:func:`symmetry_error`, :func:`assert_symmetric`).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.norms import norm

__all__ = ["SymmetryReport", "assert_symmetric", "check_dimension", "check_labels",
           "check_matvec", "check_start_vector", "clamp_steps", "symmetry_error"]

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


def check_start_vector(v0, /) -> None:
    """Raises unless ``v0`` can start a Lanczos run: a 1-D real floating-point array, nonempty,
    of a dtype JAX keeps (a NumPy float64 with x64 off would silently become float32), and,
    where its values are known (not traced), finite and nonzero.

    Example:
      >>> import numpy as np
      >>> from jaxspec.checks import check_start_vector
      >>> check_start_vector(np.ones(3, np.float32))
      >>> check_start_vector(np.zeros(3, np.float32))
      Traceback (most recent call last):
      ...
      ValueError: v0 is the zero vector; Lanczos needs a nonzero start vector
    """
    if not isinstance(v0, (jax.Array, np.ndarray)) or v0.ndim != 1:
        raise ValueError(f"v0 must be a 1-D array (a flat vector), got {type(v0).__name__} "
                         f"with shape {getattr(v0, 'shape', None)}")
    if not jnp.issubdtype(v0.dtype, jnp.floating):
        raise TypeError(f"v0 must be a real floating-point vector, got dtype {v0.dtype}")
    if jax.dtypes.canonicalize_dtype(v0.dtype) != v0.dtype:  # e.g. NumPy float64, x64 off
        raise TypeError(f"v0 is {v0.dtype}, which JAX turns into "
                        f"{jax.dtypes.canonicalize_dtype(v0.dtype)} (jax_enable_x64 is off): pass "
                        f"a {jax.dtypes.canonicalize_dtype(v0.dtype)} start vector, or enable x64 "
                        "before anything else touches JAX")
    if v0.shape[0] == 0:
        raise ValueError("v0 is empty")
    if not isinstance(v0, jax.core.Tracer):
        arr = np.asarray(v0)
        if not np.all(np.isfinite(arr)):
            raise ValueError("v0 contains NaN or Inf")
        if not np.any(arr):
            raise ValueError("v0 is the zero vector; Lanczos needs a nonzero start vector")


def clamp_steps(num_steps: int, dim: int, /) -> int:
    """``num_steps`` as an int, at most ``dim`` (a Krylov space is no larger than the space it
    lives in; clamping warns), or a ``ValueError`` unless it is a positive integer.

    Example:
      >>> import warnings
      >>> from jaxspec.checks import clamp_steps
      >>> with warnings.catch_warnings(record=True) as caught:
      ...     warnings.simplefilter("always")
      ...     clamp_steps(5, 10), clamp_steps(50, 10), len(caught)
      (5, 10, 1)
    """
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if num_steps > dim:
        warnings.warn(
            f"num_steps={num_steps} exceeds the dimension {dim}; clamped to {dim} "
            "(a Krylov space cannot be larger than the space it lives in)",
            stacklevel=3,
        )
        return dim
    return int(num_steps)


def check_matvec(matvec: Callable, v0, /, *, same_dtype: bool = True) -> None:
    """Raises ``TypeError`` unless ``matvec`` traces on a vector like ``v0`` and returns one of
    the same shape and dtype (shapes only: nothing is computed). ``same_dtype=False`` checks
    the shape only (an estimator whose probes may be promoted by the matvec).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.checks import check_matvec
      >>> check_matvec(lambda v: 2 * v, jnp.ones(3))
      >>> check_matvec(lambda v: v[:2], jnp.ones(3))  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      TypeError: the matvec must map a vector of shape (3,) ... it returned shape (2,), ...
    """
    try:
        out = jax.eval_shape(matvec, jax.ShapeDtypeStruct(v0.shape, v0.dtype))
    except Exception as err:  # re-raised with context: the user's matvec failed to trace
        raise TypeError(f"the matvec could not be evaluated on a vector like v0 "
                        f"(shape {v0.shape}, dtype {v0.dtype}): {err}") from err
    if not hasattr(out, "shape") or out.shape != v0.shape or (same_dtype
                                                                and out.dtype != v0.dtype):
        got = (getattr(out, "shape", type(out).__name__), getattr(out, "dtype", None))
        raise TypeError(f"the matvec must map a vector of shape {v0.shape} and dtype {v0.dtype} "
                        f"to the same shape and dtype; it returned shape {got[0]}, dtype {got[1]}")


def check_dimension(matvec: Callable, dim: int, dtype, /) -> None:
    """A clear error, before any product, for a ``dim`` or a matvec that does not fit: an
    operator's ``size`` against ``dim`` (``ValueError``), or a plain callable traced on a
    ``(dim,)`` vector of ``dtype`` (:func:`check_matvec` on shapes; ``TypeError``).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.checks import check_dimension
      >>> check_dimension(lambda v: jnp.eye(3) @ v, 3, jnp.float32)
      >>> check_dimension(lambda v: jnp.eye(3) @ v, 4, jnp.float32)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      TypeError: the matvec could not be evaluated on a vector like v0 (shape (4,), ...
    """
    size = getattr(matvec, "size", None)
    if size is not None:
        if int(size) != int(dim):
            raise ValueError(f"dim={dim}, but the operator acts on vectors of size {size}")
    else:
        check_matvec(matvec, jax.ShapeDtypeStruct((int(dim),), dtype), same_dtype=False)


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
        try:
            Av = matvec(v)
        except (TypeError, ValueError) as err:  # most often a dim that does not fit
            raise TypeError(f"the matvec could not be evaluated on a vector of shape ({dim},) "
                            f"and dtype {jnp.dtype(dtype)} (is dim right?): {err}") from err
        Aw = matvec(w)
        if jnp.shape(Av) != (dim,) or jnp.shape(Aw) != (dim,):
            raise TypeError(f"the matvec must map ({dim},) vectors to the same shape; it "
                            f"returned {jnp.shape(Av)}")
        vAw, wAv = float(jnp.vdot(v, Aw)), float(jnp.vdot(w, Av))
        # the norms over- and underflow-safe, their products in float64: an operator scaled by
        # 1e-20 or 1e20 in float32 would otherwise pass any probe (0 / 0 or x / inf)
        scale = float(norm(v)) * float(norm(Aw)) + float(norm(w)) * float(norm(Av))
        if not np.isfinite(vAw) or not np.isfinite(wAv):
            raise FloatingPointError("the operator returned NaN/Inf on a random probe")
        err = abs(vAw - wAv) / scale if scale > 0 else 0.0
        worst = max(worst, err)
        if first is None:
            first = (vAw, wAv)
            again = matvec(v)
            size, diff = float(norm(Av)), float(norm(again - Av))
            repeat = diff / size if size > 0 else (0.0 if diff == 0 else float("inf"))
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
