"""Re-orthogonalisation of the Lanczos vectors: full, or partial (Simon, 1984).

A Lanczos step computes ``w = A q_i - alpha_i q_i - beta_{i-1} q_{i-1}``; in exact arithmetic
``w`` is orthogonal to the whole basis, in floating point it drifts towards the Ritz vectors that
have converged, and T grows spurious copies of their Ritz values ("ghosts") and wrong quadrature
weights. Two remedies are offered to :mod:`jaxspec.lanczos` (its ``reorth`` option):

* ``"full"``: every ``w`` is orthogonalised against the whole basis by classical Gram-Schmidt,
  with a second pass where the first removed more than half of ``|w|^2`` (the
  Daniel-Gragg-Kaufman-Stewart test): orthogonality to working precision, two reads of the
  filled basis per step.
* ``"partial"``: the omega recurrence estimates the loss of orthogonality
  ``omega_{i+1,k} ~ q_{i+1}^T q_k`` from T alone (Simon 1984; the ``|rounding|`` term bounds the
  local errors with the sign that makes them grow, as in Larsen's PROPACK). ``w`` is
  orthogonalised against the whole basis (the same passes as ``"full"``) only where
  ``max_k |omega_{i+1,k}| > sqrt(eps)``; the estimates for that vector are then reset to what the
  pass can have left. The basis it projects out is itself only semi-orthogonal, so a pass that
  removes ``h = Q w`` leaves up to ``sqrt(eps) |h|_1 / |w'|`` of the basis in ``w'``; Simon's
  model resets to the rounding unit, which a component spread over many rows (as at a small
  ``beta``) exceeds a thousandfold. Where that bound is above ``sqrt(eps)`` a second pass is
  taken, and the reset is the larger of the bound and the rounding unit. The recurrence builds
  each vector from the last two, so a loss left in the older one comes back within a step or
  two: left to the estimates, the passes can settle into every other step. Simon's algorithm
  therefore re-orthogonalises the vector after a pass as well, which restarts both rows from the
  unit. That pays only where a clean pair stays semi-orthogonal for a while, so here the second
  pass is taken where the estimates' growth from a clean pair at the current step, ``g``, leaves
  three steps under the threshold (``g^3 unit <= sqrt(eps)``); where they grow faster
  (well-separated outliers: ``g`` near ``|T| / beta``, in the hundreds) the pair would not outlast
  the pass it costs, and the estimates alone decide. Semi-orthogonality
  (``|Q^T Q - I| <= sqrt(eps)``) is enough for T to be, to working precision, the projection of
  ``A`` on an orthonormal basis of the Krylov space (Simon 1984), so the Ritz values have no
  ghosts and the Gauss quadrature weights and moments are those of full re-orthogonalisation,
  while steps between the passes never read the basis. The recurrence estimates the loss; it
  does not bound it: over 204 random float32 spectra (N = 100-600, m = 20-90; uniform,
  exponential, outliers 10-100x the bulk, cubed Gaussians) the measured ``|Q^T Q - I|`` stayed
  under ``sqrt(eps)`` in all but one (1.8x it; with the reset to the unit, five, up to 5.9x, for
  3% fewer passes), and the Ritz values within 4e-6 ``|A|`` of full re-orthogonalisation's.

  Deviation: the recurrence's rounding unit is measured, not assumed. Simon's model takes the
  local error of a step to be ``eps |T|``, true of an exact matrix product; a product computed
  in lower precision (float32 matmuls in TF32 or bfloat16, the default on GPUs and TPUs) makes
  errors orders of magnitude larger, orthogonality is lost long before ``eps`` estimates say so,
  and T grows ghosts. So the first :data:`CALIBRATION_STEPS` steps always take a pass, and
  every pass compares the largest coefficient it removes, ``max_k |q_k^T w| / |w|``, with the
  largest estimate; where the measured loss is larger, the unit (``unit`` in the Lanczos state,
  ``eps`` at the start) grows by their ratio. With products as coarse as the threshold itself
  every step takes a pass: full re-orthogonalisation, with its accuracy.

The estimates of the last two vectors and the unit live in the Lanczos state (``omega``, shape
``(2, num_steps + 1)``, and ``unit``), so a checkpoint resumes a partial run exactly. Under
``"full"`` the estimates are kept as after a pass, so a run may switch methods between chunks.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxspec.norms import hypot, norm

__all__ = ["CALIBRATION_STEPS", "METHODS", "check_method", "omega_init", "omega_next",
           "orthogonalise"]

METHODS = ("full", "partial")

# Steps 0 .. CALIBRATION_STEPS - 1 of a partial run take a pass whatever the estimates say: the
# passes measure the products' rounding (step 0's cannot: alpha_0 is taken from the product
# itself, so q_0^T w is zero up to the recurrence's own rounding).
CALIBRATION_STEPS = 3


def check_method(reorth: str) -> str:
    """``reorth`` if it names a method (:data:`METHODS`), else a ``ValueError``.

    Example:
      >>> from jaxspec.reorth import check_method
      >>> check_method("partial")
      'partial'
    """
    if reorth not in METHODS:
        raise ValueError(f"reorth must be one of {METHODS}, got {reorth!r}")
    return reorth


def omega_init(num_steps: int, dtype, step: int = 0) -> jax.Array:
    """The orthogonality estimates ``(2, num_steps + 1)`` of a run at ``step`` whose vectors were
    all fully re-orthogonalised (at ``step=0``: before the first step). Row 1 is for the newest
    vector ``q_step`` (``omega_{step,step} = 1``, ``eps`` before it), row 0 for ``q_{step-1}``
    (zeros if there is none).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.reorth import omega_init
      >>> omega_init(2, jnp.float32).tolist()
      [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
      >>> (omega_init(2, jnp.float32, step=2) / jnp.finfo(jnp.float32).eps).round().tolist()[0]
      [1.0, 8388608.0, 0.0]
    """
    size = num_steps + 1
    return jnp.stack([_fresh_row(size, step - 2, dtype), _fresh_row(size, step - 1, dtype)])


def _fresh_row(size: int, i, dtype, unit=None) -> jax.Array:
    """The estimates of ``q_{i+1}`` right after a full pass: the rounding ``unit`` (default
    ``eps``) for ``k <= i``, 1 at ``i + 1``."""
    k = jnp.arange(size, dtype=jnp.int32)
    unit = jnp.finfo(dtype).eps if unit is None else unit
    return jnp.where(k <= i, unit, jnp.where(k == i + 1, 1, 0)).astype(dtype)


def _fresh(row: jax.Array, j) -> jax.Array:
    """Whether ``row``, the estimates of ``q_j``, is as a pass left it (:func:`_fresh_row`:
    one value, the unit of the time, for every ``k < j``). The recurrence never gives that: its
    entries are at least ``unit |T| / beta`` and differ from one another."""
    k = jnp.arange(row.shape[0], dtype=jnp.int32)
    return jnp.all((row == row[0]) | (k >= j))


def omega_next(omega: jax.Array, alphas: jax.Array, betas: jax.Array, i, alpha,
               beta, unit=None) -> jax.Array:
    """The estimates ``omega_{i+1,k}`` of ``q_{i+1}^T q_k`` (Simon's recurrence).

    ``omega`` holds the rows of ``q_{i-1}`` and ``q_i``; ``alphas[:i]``, ``betas[:i]`` are the
    steps before, ``alpha``, ``beta`` step ``i``'s (before any re-orthogonalisation). For
    ``k < i``::

        beta omega_{i+1,k} = beta_k omega_{i,k+1} + (alpha_k - alpha) omega_{i,k}
                             + beta_{k-1} omega_{i,k-1} - beta_{i-1} omega_{i-1,k} +- eps |T|

    where the rounding term takes the sign of the rest (the bound grows, never cancels) and
    ``|T|`` is a Gershgorin bound of the first i rows of the tridiagonal;
    ``omega_{i+1,i} = eps |T| / beta`` (the rounding of the recurrence itself) and
    ``omega_{i+1,i+1} = 1``. ``unit`` replaces ``eps`` (default: the dtype's ``eps``).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.reorth import omega_init, omega_next
      >>> row = omega_next(omega_init(3, jnp.float32), jnp.zeros(3), jnp.zeros(3), 0, 2.0, 1.0)
      >>> bool(row[0] == 3 * jnp.finfo(jnp.float32).eps)   # eps |T| / beta, |T| = 2 + 1
      True
      >>> row[1:].tolist()
      [1.0, 0.0, 0.0]
    """
    size = omega.shape[1]
    prev, cur = omega[0], omega[1]
    zero = jnp.zeros((1,), omega.dtype)
    a = jnp.concatenate([alphas, zero])
    b = jnp.concatenate([betas, zero])
    b_down = jnp.concatenate([zero, b[:-1]])  # beta_{k-1}
    before = jnp.arange(size, dtype=jnp.int32) < i
    beta_prev = jnp.where(i > 0, b[jnp.maximum(i - 1, 0)], 0)
    norm_t = jnp.maximum(jnp.max(jnp.where(before, jnp.abs(a) + b + b_down, 0)),
                         jnp.abs(alpha) + beta + beta_prev)
    rounding = (jnp.finfo(omega.dtype).eps if unit is None else unit) * norm_t
    rec = (b * jnp.concatenate([cur[1:], zero]) + (a - alpha) * cur
           + b_down * jnp.concatenate([zero, cur[:-1]]) - beta_prev * prev)
    rec = rec + jnp.where(rec >= 0, rounding, -rounding)
    k = jnp.arange(size, dtype=jnp.int32)
    row = jnp.where(before, rec, jnp.where(k == i, rounding, 0)) / beta
    return jnp.where(k == i + 1, 1, row).astype(omega.dtype)


def _gram_schmidt(project: Callable, w: jax.Array, i, level=None):
    """A full pass, and a second where the first removed more than half of ``|w|^2``, that is
    where ``|h| > |w - Q^T h|`` (Pythagoras: no norm of ``w`` before the pass is needed).
    Returns the new ``w``, its coefficient on ``q_i``, ``|w|``, the number of passes, the
    largest coefficient the first pass removed, ``max_k |q_k^T w|``, and the loss of
    orthogonality the last pass can have left, ``level |h|_1 / |w|``. The norms neither over-
    nor underflow (:mod:`jaxspec.norms`): the coefficients are often rounding-sized
    (``eps |A|``), and their squares underflow with those of a small operator's vectors.

    ``level`` bounds ``|q_j^T q_k|`` over the basis (default: it is orthonormal to rounding). A
    pass against such a basis leaves ``Q w' = -(Q Q^T - I) h``, so the new vector keeps up to
    ``level |h|_1 / |w'|`` of each direction; where that is above ``level`` the second pass is
    taken too (it removes all but ``level`` times that again).

    The passes are a ``lax.while_loop`` of at most two iterations: the pass over the basis
    is compiled once, not once per pass."""
    level = jnp.zeros((), w.dtype) if level is None else level

    def again(carry):
        _, _, removed, kept, passes, _, left = carry
        return (passes == 0) | ((passes == 1) & ((removed > kept) | (left > level)))

    def one_pass(carry):
        w, coef, _, _, passes, top, _ = carry
        w, h = project(w)
        top = jnp.where(passes == 0, jnp.max(jnp.abs(h)), top)
        kept = norm(w)
        left = level * jnp.sum(jnp.abs(h)) / kept
        return (w, coef + h[i], hypot(h), kept, passes + 1, top, left)

    zero = jnp.zeros((), w.dtype)
    w, coef, _, kept, passes, top, left = jax.lax.while_loop(
        again, one_pass, (w, zero, zero, zero, jnp.int32(0), zero, zero))
    return w, coef, kept, passes, top, left


def orthogonalise(method: str, project: Callable, w: jax.Array, i, alpha, omega: jax.Array,
                  alphas: jax.Array, betas: jax.Array, unit=None, finish: Callable | None = None):
    """Re-orthogonalises ``w`` (step ``i``'s vector after the three-term recurrence) by
    ``method``.

    ``project(w)`` is one classical Gram-Schmidt pass against the filled basis (rows
    ``0 .. i``): it returns ``w - Q^T (Q w)`` and ``Q w``. ``alpha`` is ``q_i^T A q_i`` from the
    recurrence; the coefficients a pass takes off ``q_i`` are added to it, so T matches the
    re-orthogonalised basis. ``unit`` is the recurrence's rounding unit (default ``eps``).
    ``finish(w, alpha, beta)`` (default: ``w`` as it is) is applied to the new ``w`` where it
    is made, inside the branch that made it: a conditional that hands its operand back out
    makes XLA copy it, one more write and read of ``P`` floats at every step without a pass,
    where the caller's normalisation of ``w`` reads and writes it anyway.
    Returns ``finish`` of the new ``w``, ``alpha``, ``|w|`` (``beta_i``, by
    :func:`jaxspec.norms.norm`), the estimates of the rows of ``q_i`` and ``q_{i+1}``, the
    number of passes over the basis, and the unit (under ``"partial"`` raised where a pass
    measured more loss of orthogonality than estimated).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.reorth import omega_init, orthogonalise
      >>> Q = jnp.eye(3)[:1]                     # the basis: q_0 = e_0
      >>> project = lambda w: (w - (Q @ w) @ Q, Q @ w)
      >>> w, alpha, beta, omega, passes, unit = orthogonalise(
      ...     "full", project, jnp.array([0.5, 2.0, 0.0]), 0, 1.0, omega_init(2, jnp.float32),
      ...     jnp.zeros(2), jnp.zeros(2))
      >>> w.tolist(), float(alpha), float(beta), int(passes)
      ([0.0, 2.0, 0.0], 1.5, 2.0, 1)
      >>> bool(unit == jnp.finfo(jnp.float32).eps)
      True
    """
    size, dtype = omega.shape[1], omega.dtype
    unit = jnp.asarray(jnp.finfo(dtype).eps if unit is None else unit, dtype)
    finish = (lambda w, alpha, beta: w) if finish is None else finish
    if check_method(method) == "full":
        w, h, beta, passes, _, _ = _gram_schmidt(project, w, i)
        return (finish(w, alpha + h, beta), alpha + h, beta,
                jnp.stack([omega[1], _fresh_row(size, i, dtype, unit)]), passes, unit)
    beta = norm(w)
    row = omega_next(omega, alphas, betas, i, alpha, beta, unit)
    filled = jnp.arange(size, dtype=jnp.int32) <= i
    estimate = jnp.max(jnp.where(filled, jnp.abs(row), 0))
    # a NaN estimate (beta = 0, or a non-finite w) also takes the pass, and so does the vector
    # after a pass (q_i's row fresh, q_{i-1}'s not) where a clean pair would last
    threshold = jnp.sqrt(jnp.finfo(dtype).eps)
    clean = jnp.stack([_fresh_row(size, i - 1, dtype, unit), _fresh_row(size, i, dtype, unit)])
    growth = jnp.max(jnp.where(filled, jnp.abs(omega_next(
        clean, alphas.at[i].set(alpha), betas.at[i].set(beta), i + 1, alpha, beta, unit)),
        0)) / unit
    second = _fresh(omega[1], i) & ~_fresh(omega[0], i - 1) & (growth ** 3 * unit <= threshold)
    ok = (i >= CALIBRATION_STEPS) & ~second & (estimate <= threshold)

    def measured(w):
        # the basis is semi-orthogonal: the pass leaves what it cannot remove in the estimates
        w, h, after, passes, top, left = _gram_schmidt(project, w, i, threshold)
        ratio = top / beta / estimate  # the loss measured over the loss estimated
        new = unit * jnp.where(jnp.isfinite(ratio), jnp.maximum(ratio, 1), 1).astype(dtype)
        reset = jnp.maximum(new, jnp.where(jnp.isfinite(left), left, 0)).astype(dtype)
        return (finish(w, alpha + h, after), alpha + h, after, _fresh_row(size, i, dtype, reset),
                passes, new)

    w, alpha, beta, row, passes, unit = jax.lax.cond(
        ok, lambda w: (finish(w, alpha, beta), alpha, beta, row, jnp.int32(0), unit),
        measured, w)
    return w, alpha, beta, jnp.stack([omega[1], row]), passes, unit
