"""Cheap probes of an operator before an expensive spectral run."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SymmetryReport", "assert_symmetric", "symmetry_error"]


class SymmetryReport(NamedTuple):
    """Result of :func:`symmetry_error`.

    Attributes:
      relative_error: ``max |v^T A w - w^T A v| / (|v| |A w| + |w| |A v|)`` over the probe pairs;
        about ``eps * sqrt(P)`` for a symmetric operator in floating point.
      vAw: ``v^T A w`` of the first pair.
      wAv: ``w^T A v`` of the first pair.

    Example:
      >>> import jax
      >>> from jaxspec import assert_symmetric
      >>> r = assert_symmetric(lambda v: 2.0 * v, jax.random.key(0), 3)
      >>> r.relative_error, r.vAw == r.wAv
      (0.0, True)
    """

    relative_error: float
    vAw: float
    wAv: float


def symmetry_error(matvec: Callable[[jax.Array], jax.Array], key: jax.Array, dim: int, /, *,
                   dtype=jnp.float32, num_pairs: int = 1) -> SymmetryReport:
    """Measures how far ``matvec`` is from symmetric with random pairs ``(v, w)``: 2 matvecs a pair.

    A Hessian is symmetric; an operator that is not (a loss that changes between calls, such as
    dropout left on, random augmentation redrawn per call, or BatchNorm statistics that move)
    makes Lanczos return meaningless numbers. The experiment scripts call this before a run.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import symmetry_error
      >>> A = jnp.array([[2.0, 1.0], [1.0, 3.0]])
      >>> symmetry_error(lambda v: A @ v, jax.random.key(0), 2).relative_error < 1e-6
      True
      >>> symmetry_error(lambda v: A.at[0, 1].set(5.0) @ v, jax.random.key(0), 2).relative_error > 0.1
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
        first = first or (vAw, wAv)
    return SymmetryReport(worst, *first)


def assert_symmetric(matvec: Callable[[jax.Array], jax.Array], key: jax.Array, dim: int, /, *,
                     dtype=jnp.float32, rtol: float | None = None) -> SymmetryReport:
    """Raises ``ValueError`` if :func:`symmetry_error` exceeds ``rtol``.

    ``rtol`` defaults to ``1e-3`` in float32 and ``1e-8`` in float64: well above rounding for
    a symmetric operator, well below what a changing loss produces.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import assert_symmetric
      >>> assert_symmetric(lambda v: 2.0 * v, jax.random.key(0), 3).relative_error
      0.0
    """
    if rtol is None:
        rtol = 1e-3 if jnp.dtype(dtype) == jnp.float32 else 1e-8
    report = symmetry_error(matvec, key, dim, dtype=dtype)
    if not report.relative_error <= rtol:
        raise ValueError(
            f"the operator is not symmetric: v^T A w = {report.vAw:.6g} but w^T A v = "
            f"{report.wAv:.6g} (relative error {report.relative_error:.3g} > {rtol:g}). A Hessian "
            "must be symmetric: check for dropout, redrawn augmentation or moving BatchNorm "
            "statistics inside the loss.")
    return report
