"""Ritz pairs of a Lanczos run: values, quadrature weights, vectors and residual norms.

After k Lanczos steps ``A Q_k^T = Q_k^T T_k + beta_k q_k e_k^T`` (rows of ``Q_k`` are the basis
vectors). With ``T_k = S diag(theta) S^T``, the Ritz pair ``(theta_j, y_j = Q_k^T s_j)`` has
residual ``|A y_j - theta_j y_j| = beta_k |e_k^T s_j|`` (exact for an orthonormal basis, which
full re-orthogonalisation keeps to working precision); ``theta_j`` is then within that residual
of an eigenvalue of ``A``. The recurrence's estimate of a converged pair falls below what the
products themselves resolve (0 in float32 where the measured residual is 1.7e-7 of
``|A| = 10``), so each residual is floored at ``eps |T_k|``, the rounding level of the run's
dtype times the largest ``|theta|``. The squared first components ``(e_1^T s_j)^2`` are the Gauss
quadrature weights of stochastic Lanczos quadrature. The small eigenproblem is solved on the
host in float64.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.lanczos import LanczosResult

__all__ = ["RitzPairs", "ritz_pairs"]


class RitzPairs(NamedTuple):
    """Ritz pairs of a Lanczos run, ascending by value.

    Attributes:
      values: ``(k,)`` Ritz values ``theta_j`` (float64).
      weights: ``(k,)`` quadrature weights ``(e_1^T s_j)^2``; they sum to 1.
      residuals: ``(k,)`` residual norms ``|A y_j - theta_j y_j| = beta_k |e_k^T s_j|``, at
        least ``eps max|theta|`` (the run's rounding level; the module docstring).
      vectors: ``(len(indices), P)`` unit Ritz vectors as rows, in the basis' dtype, or None
        when the run kept no basis or none were asked for.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import lanczos, ritz_pairs
      >>> res = lanczos(lambda v: jnp.array([1.0, 3.0]) * v, jnp.ones(2), 2, return_basis=True)
      >>> pairs = ritz_pairs(res, vectors=True)
      >>> pairs.values.round(6).tolist(), pairs.vectors.shape
      ([1.0, 3.0], (2, 2))
    """

    values: np.ndarray
    weights: np.ndarray
    residuals: np.ndarray
    vectors: jax.Array | None = None


def ritz_pairs(result: LanczosResult, /, *,
               vectors: bool | Sequence[int] = False) -> RitzPairs:
    """The Ritz pairs of ``result`` (its ``num_valid`` steps).

    Args:
      result: a :class:`jaxspec.LanczosResult`.
      vectors: ``True`` for every Ritz vector, a sequence of indices (into the ascending
        values; ``-1`` is the largest) for some, ``False`` for none. Vectors need a run made
        with ``return_basis=True``.

    Returns:
      :class:`RitzPairs`.

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> from jaxspec import lanczos, ritz_pairs
      >>> A = jnp.diag(jnp.arange(1.0, 21.0))
      >>> res = lanczos(lambda v: A @ v, jnp.ones(20), 8, return_basis=True)
      >>> pairs = ritz_pairs(res, vectors=[-1])
      >>> y = pairs.vectors[0]
      >>> err = float(jnp.linalg.norm(A @ y - pairs.values[-1] * y))
      >>> bool(np.isclose(err, pairs.residuals[-1], rtol=1e-3)), round(float(pairs.weights.sum()), 6)
      (True, 1.0)
    """
    k = int(result.num_valid)
    if k < 1:
        raise ValueError("the Lanczos run has no valid step")
    alphas = np.asarray(result.alphas, np.float64)[:k]
    betas = np.asarray(result.betas, np.float64)
    T = np.diag(alphas) + np.diag(betas[: k - 1], 1) + np.diag(betas[: k - 1], -1)
    theta, s = np.linalg.eigh(T)
    weights = s[0] ** 2
    floor = np.finfo(np.asarray(result.alphas).dtype).eps * np.max(np.abs(theta))
    residuals = np.maximum(abs(betas[k - 1]) * np.abs(s[k - 1]), floor)
    if vectors is False or vectors is None:
        return RitzPairs(theta, weights / weights.sum(), residuals)
    if result.basis is None:
        raise ValueError("Ritz vectors need the basis: run Lanczos with return_basis=True")
    index = np.arange(k) if vectors is True else np.asarray(vectors, int)
    basis = result.basis[:k]
    coeffs = jnp.asarray(s[:, index].T, basis.dtype)
    ys = jnp.dot(coeffs, basis, precision=jax.lax.Precision.HIGHEST)
    return RitzPairs(theta, weights / weights.sum(), residuals, ys)
