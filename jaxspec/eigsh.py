"""Top-k eigenpairs of a symmetric operator by thick-restart Lanczos, with certified residuals.

:func:`eigsh` keeps a basis of ``m = k + num_extra`` vectors (plus the residual direction), so its
memory is ``(m + 1) x P`` however many matvecs convergence takes. Each cycle extends the basis by
Lanczos steps to ``m`` vectors, solves the small projected eigenproblem, and, unless the ``k``
wanted Ritz pairs have converged, restarts from the ``l`` best Ritz vectors and the last
residual direction (Wu & Simon, "Thick-restart Lanczos method for large symmetric eigenvalue
problems", SIAM J. Matrix Anal. Appl. 22, 2000; for a symmetric matrix this is Stewart's
Krylov-Schur method). After a restart, ``A y_i = theta_i y_i + b_i q`` with
``b_i = beta_m s_{m,i}``, so the projected matrix is an arrowhead followed by a tridiagonal, and
the relation ``A V_m^T = V_m^T H_m + beta_m q_m e_m^T`` holds throughout: the Ritz residual
estimate is ``|beta_m e_m^T s_j|``, as in :func:`jaxspec.ritz_pairs`.
A :class:`jaxspec.CurvatureOperator`'s products are linearised once for the run
(:meth:`jaxspec.CurvatureOperator.linearized`, within its memory budget), as a Lanczos run's
are: every restart applies the same matrix. A plain callable is first probed for symmetry
(:func:`jaxspec.assert_symmetric`, three products), as :func:`jaxspec.slq` does.

Deviations from the textbook algorithm, and why:

* The projected matrix is not assembled from alphas and betas: every step records all its
  Gram-Schmidt coefficients as a column of ``H``, and the small eigenproblem is solved on
  ``(H + H^T) / 2`` in float64. The arrowhead couplings then come from the computation rather
  than from theory, and the full re-orthogonalisation keeps them consistent with the basis to
  working precision. Each step makes one classical Gram-Schmidt pass against the whole basis
  and a second only where the first left less than ``1 / sqrt(2)`` of the vector's norm (the
  test of Daniel, Gragg, Kaufman and Stewart, 1976, ARPACK's too): where more is left, one pass
  is already orthogonal to working precision, and the step reads the basis half as often.
  Every norm, the measured residuals' too, is :func:`jaxspec.norms.norm`, which neither
  overflows nor underflows: the pairs of ``2^k A`` are ``2^k`` times those of ``A``, bit for
  bit, over the scales :mod:`jaxspec.norms` supports; an operator outside them raises (with
  plain norms, residuals flushed to zero certified wrong values of an operator near 1e-19).
* Convergence is tested on the estimates ``|beta_m e_m^T s_j| <= tol * ||A||``, ``||A||``
  estimated by the largest ``|theta|`` seen. When they pass (or the restarts run out), the
  ``k`` Ritz vectors are formed and each is applied once more to ``A``: the reported value is
  the Rayleigh quotient of the returned vector and the reported residual is the *measured*
  ``|A x - theta x|`` (``k`` extra matvecs, counted in ``num_matvecs``), so the certificate
  does not rest on the recurrence. By the Bauer-Fike/Weyl bound each reported value lies
  within its residual of an eigenvalue of ``A``.
* A breakdown (an invariant Krylov space, e.g. a start vector spanned by a few eigenvectors;
  detected by the shift-invariant test of :mod:`jaxspec.lanczos`, with the step's other
  couplings in place of ``beta_{i-1}``) is not an error: the step puts a random vector,
  orthogonalised against the basis, in place of the next Lanczos vector with a zero coupling,
  and the run continues. The Ritz pairs of the invariant part then have zero residual estimates
  whether or not they are the wanted ones, so after a breakdown convergence is tested only at
  the end of the cycle, once the fresh direction has been explored (a warm start from a vector
  converged to rounding breaks down at the first step, so it costs one cycle of ``m`` steps,
  not a handful).
* A block of start vectors ``(j, P)`` enters as one start vector, the sum of its orthonormalised
  rows: if the rows are eigenvectors with distinct eigenvalues, ``K_j(A, sum_i y_i)`` is their
  span, so the first ``j`` steps recover them (then the breakdown rule above takes over). A true
  block start would need a block Krylov method, whose projected matrix is not an arrowhead.
* Convergence is not tested before the basis holds ``2k + 1`` vectors (or is full), even where
  the host driver tests at every step: a small Krylov space holds converged pairs long before
  it holds the extreme ones (on ``logspace(-8, 4, 60)``, the 40 smallest tested from step 41
  included 236), and ARPACK asks for a basis at least twice the wanted count for the same
  reason.
* Like every single-vector Krylov method, an exactly repeated eigenvalue is seen once in exact
  arithmetic, and so are eigenvalues closer together than the tolerance; rounding usually
  brings in the other copies, but the residuals certify only the pairs returned, not that none
  was skipped.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.checks import assert_symmetric, check_matvec
from jaxspec.compiler import jit, jit_argument
from jaxspec.heap import release_before
from jaxspec.lanczos import BREAKDOWN_UNITS, resolve_driver
from jaxspec.linearized import linearized
from jaxspec.norms import describe_range, hypot, in_range, norm
from jaxspec.slq import probes_symmetry

__all__ = ["EigshResult", "eigsh"]

_HIGHEST = jax.lax.Precision.HIGHEST


class EigshResult(NamedTuple):
    """Eigenpairs from :func:`eigsh`, ascending by value.

    Attributes:
      values: ``(k,)`` Rayleigh quotients ``x^T A x`` of the returned vectors (float64).
      vectors: ``(k, P)`` unit vectors as rows, in the working dtype. For a
        :class:`jaxspec.CurvatureOperator`, ``jax.vmap(op.unravel)(vectors)`` gives pytrees
        like ``params`` with a leading axis ``k``.
      residuals: ``(k,)`` measured ``|A x - theta x|`` (float64): each value lies within its
        residual of an eigenvalue of ``A``.
      converged: ``(k,)`` whether ``residual <= tol * ||A||`` (``||A||`` estimated by the largest
        ``|Ritz value|`` seen): each pair is accurate, not that no eigenvalue beyond it was
        skipped. A repeated eigenvalue is found as often as rounding brings in its copies (the
        module docstring): the 5 smallest of a matrix with a null space of dimension 769
        came back as ``[0, 0, 0.0099, ...]``, all converged.
      num_matvecs: products with ``A`` taken, the final ``k`` measurements included.
      num_restarts: thick restarts taken.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import eigsh
      >>> res = eigsh(lambda v: jnp.arange(1.0, 31.0) * v, jnp.ones(30), 2, num_extra=6)
      >>> res.values.round(4).tolist(), bool(res.converged.all()), res.vectors.shape
      ([29.0, 30.0], True, (2, 30))
      >>> res.num_matvecs > 2 + 6 + 1     # more products than the basis holds: restarted
      True
    """

    values: np.ndarray
    vectors: jax.Array
    residuals: np.ndarray
    converged: np.ndarray
    num_matvecs: int
    num_restarts: int


def _dot(a, b):
    return jnp.dot(a, b, precision=_HIGHEST)


def _orthogonalise(V: jax.Array, w: jax.Array, w_norm: jax.Array):
    """``w`` (of norm ``w_norm``) orthogonalised against the rows of ``V`` (unfilled rows are
    zero, so no mask is needed) by classical Gram-Schmidt, with a second pass where the first
    left less than ``1 / sqrt(2)`` of ``w``'s norm (see the module docstring). Returns the new
    ``w``, the coefficients ``V w`` and the new ``w``'s norm (:func:`jaxspec.norms.norm`)."""
    h1 = _dot(V, w)
    w1 = w - _dot(h1, V)
    n1 = norm(w1)

    def again(w1):
        h2 = _dot(V, w1)
        w2 = w1 - _dot(h2, V)
        return w2, h1 + h2, norm(w2)

    return jax.lax.cond(n1 < w_norm * float(np.sqrt(0.5)), again, lambda w1: (w1, h1, n1), w1)


def _expand(V: jax.Array, H: jax.Array, n: jax.Array, w: jax.Array, key: jax.Array):
    """Folds ``w = A q_n`` into the basis: ``H[:, n]`` gets the coefficients and ``beta``,
    ``V[n + 1]`` the next vector (a random one orthogonal to the basis at a breakdown), which
    is also returned: the next step's product takes it without slicing the basis."""
    w_norm = norm(w)
    w, h, beta = _orthogonalise(V, w, w_norm)
    # shift-invariant, as in jaxspec.lanczos: beta against the step's other couplings,
    # |(A - h_n) q_n| without beta, or a few rounding units of |A q_n| (the first step)
    others = hypot(jnp.where(jnp.arange(h.shape[0]) == n, 0, h))
    eps = jnp.finfo(w.dtype).eps
    broke = ~(beta > jnp.maximum(jnp.sqrt(eps) * others, BREAKDOWN_UNITS * eps * w_norm))

    def fresh(_):
        r = jax.random.normal(jax.random.fold_in(key, n), w.shape, w.dtype)
        r, _, r_norm = _orthogonalise(V, r, norm(r))
        return r, r_norm

    q, q_norm = jax.lax.cond(broke, fresh, lambda w: (w, beta), w)
    q = q / q_norm
    beta = jnp.where(broke, jnp.zeros_like(beta), beta)
    H = H.at[:, n].set(h.at[n + 1].set(beta))
    return V.at[n + 1].set(q), H, q


_host_expand = jax.jit(_expand, donate_argnums=(0, 1))


@functools.partial(jit, donate_argnums=(1, 2))
def _compiled_cycle(op, V, H, q, start, stop, key):
    """Lanczos steps ``start .. stop - 1`` from ``q = V[start]`` in one ``lax.fori_loop`` (the
    compiled driver)."""
    return jax.lax.fori_loop(start, stop, lambda n, c: _expand(c[0], c[1], n, op(c[2]), key),
                             (V, H, q))


@jax.jit
def _combine(C: jax.Array, V: jax.Array) -> jax.Array:
    """``C @ V``: new basis rows as combinations of the old (restart and final vectors)."""
    return _dot(C.astype(V.dtype), V)


def _start_vector(matvec: Callable, v0: Any) -> jax.Array:
    if not isinstance(v0, (jax.Array, np.ndarray)) and hasattr(matvec, "ravel"):
        v0 = matvec.ravel(v0)  # a pytree like the operator's params
    v0 = jnp.asarray(v0)
    if v0.ndim == 2:  # a block of previous vectors: the sum of its orthonormalised rows
        q = jnp.linalg.qr(v0.T)[0]
        v0 = jnp.sum(q, axis=1)
    if v0.ndim != 1 or not jnp.issubdtype(v0.dtype, jnp.floating):
        raise ValueError(f"v0 must be a float (P,) vector or a (j, P) block, got {v0.dtype} "
                         f"{v0.shape}")
    size = float(norm(v0))
    if not np.isfinite(size) or size == 0.0:
        raise ValueError("v0 must be finite and nonzero")
    return v0 / size


def _wanted(theta: np.ndarray, count: int, which: str) -> np.ndarray:
    """Indices into the ascending ``theta`` of the ``count`` pairs ``which`` asks for; for
    ``"both"`` half from each end, the extra one from the top (as scipy's ``"BE"``)."""
    n = theta.shape[0]
    if which == "largest":
        return np.arange(n - count, n)
    if which == "smallest":
        return np.arange(count)
    low = count // 2
    return np.concatenate([np.arange(low), np.arange(n - (count - low), n)])


def eigsh(
    matvec: Callable[[jax.Array], jax.Array],
    v0: Any,
    k: int,
    /,
    *,
    which: str = "largest",
    tol: float = 1e-6,
    num_extra: int | None = None,
    num_keep: int | None = None,
    max_restarts: int = 100,
    driver: str = "auto",
    check_every: int | None = None,
    key: jax.Array | None = None,
    check: bool | None = None,
) -> EigshResult:
    """The ``k`` extreme eigenpairs of a symmetric operator, by thick-restart Lanczos.

    The basis holds ``m = k + num_extra`` vectors; each restart keeps ``num_keep`` Ritz vectors
    (the wanted ``k`` and the next ones from the same end) and the residual direction, and
    takes ``m - num_keep`` new Lanczos steps. Residuals are measured at the end with one matvec
    per pair (see the module docstring). Compiles once per ``(m, P, dtype)``; not itself
    traceable (it decides on the host when to stop).

    Args:
      matvec: ``v -> A v`` on flat vectors like ``v0``: a :class:`jaxspec.CurvatureOperator`
        or any callable; ``A`` symmetric.
      v0: the start vector ``(P,)`` (e.g. a previous eigenvector: a warm start), a pytree like
        an operator's ``params``, or a ``(j, P)`` block of previous vectors (their
        orthonormalised sum starts the run). Its dtype is the working precision and must be
        the matvec's (a float32 start for a float64 operator is refused: cast it).
      k: number of eigenpairs.
      which: ``"largest"`` (algebraic), ``"smallest"``, or ``"both"`` (``k // 2`` smallest and
        the rest largest).
      tol: relative residual ``|A x - theta x| / ||A||`` at which a pair has converged (below
        about ``1e-6`` needs float64).
      num_extra: basis vectors beyond ``k`` (default ``max(k + 1, 16)``; clamped to ``P - 1``
        in all).
      num_keep: Ritz vectors kept at a restart (default ``k + (m - k) // 2``).
      max_restarts: restarts before giving up (the result then says which pairs converged).
      driver: ``"host"`` (a Python loop over steps, the matvec called eagerly: any operator),
        ``"compiled"`` (each cycle one ``lax.fori_loop``; a traceable matvec), or ``"auto"``
        (:func:`jaxspec.resolve_driver`).
      check_every: steps between convergence tests (a host sync and an ``n x n`` eigenproblem;
        default every step with the host driver, every cycle with the compiled one).
      key: PRNG key for the vectors that replace a breakdown (default ``jax.random.key(0)``).
      check: first probe that the matvec is one fixed symmetric matrix (three products, not
        counted in ``num_matvecs``); ``None``: unless it is a :class:`jaxspec.CurvatureOperator`,
        as :func:`jaxspec.slq` (:func:`jaxspec.slq.probes_symmetry`).

    Returns:
      :class:`EigshResult`.

    Raises:
      ValueError: a plain callable failed the symmetry probe (``check``).
      FloatingPointError: the matvec returned NaN or Inf, or products outside the scales
        :mod:`jaxspec.norms` supports.

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> from jaxspec import eigsh
      >>> d = jnp.concatenate([jnp.array([-4.0, -3.0]), jnp.linspace(0.0, 1.0, 60),
      ...                      jnp.array([5.0])])
      >>> res = eigsh(lambda v: d * v, jnp.ones(63), 3, which="both")
      >>> res.values.round(4).tolist(), bool(res.converged.all())
      ([-4.0, 1.0, 5.0], True)
      >>> warm = eigsh(lambda v: d * v, res.vectors[2], 1)     # from a converged vector
      >>> warm.num_matvecs < res.num_matvecs, round(float(warm.values[0]), 4)
      (True, 5.0)
    """
    if which not in ("largest", "smallest", "both"):
        raise ValueError(f"which must be 'largest', 'smallest' or 'both', got {which!r}")
    q0 = _start_vector(matvec, v0)
    dim, dtype = int(q0.shape[0]), q0.dtype
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= dim - 2:
        raise ValueError(f"k must be an int with 1 <= k <= P - 2 = {dim - 2} (a basis of more "
                         f"than k vectors and its residual direction fit in P dimensions; for "
                         f"so small a P, take jnp.linalg.eigh of the dense matrix), got {k!r}")
    m = min(k + (max(k + 1, 16) if num_extra is None else int(num_extra)), dim - 1)
    if m <= k:
        raise ValueError(f"the basis (k + num_extra = {m}, at most P - 1) must exceed k = {k}")
    keep = k + (m - k) // 2 if num_keep is None else int(num_keep)
    if not k <= keep < m:
        raise ValueError(f"num_keep must satisfy k <= num_keep < k + num_extra; got {keep}")
    check = probes_symmetry(matvec, check)
    matvec = linearized(matvec, m + 1)  # an operator's products, once for the whole run
    driver = resolve_driver(driver, matvec)
    key = jax.random.key(0) if key is None else key
    op = jit_argument(matvec) if driver == "compiled" else matvec

    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if driver == "compiled":
        check_matvec(matvec, q0)
    every = (1 if driver == "host" else m) if check_every is None else int(check_every)
    if every < 1:
        raise ValueError(f"check_every must be >= 1, got {every}")
    if check:
        assert_symmetric(matvec, jax.random.fold_in(key, 1), dim, dtype=dtype)

    release_before((m + 1) * dim * np.dtype(dtype).itemsize)  # jaxspec.heap: XLA's freed memory
    V = jnp.zeros((m + 1, dim), dtype).at[0].set(q0)
    H = jnp.zeros((m + 1, m), dtype)
    q = q0  # V[n], the vector the next step multiplies (a restart keeps it as V[keep])
    n, cycle_start, restarts, num_matvecs, anorm = 0, 0, 0, 0, 0.0
    while True:
        stop = min(n + every, m)
        if driver == "compiled":
            V, H, q = _compiled_cycle(op, V, H, q, n, stop, key)
        else:
            for i in range(n, stop):
                w = matvec(q)
                if w.shape != (dim,) or w.dtype != dtype:
                    raise TypeError(f"the matvec must map ({dim},) {dtype} to the same; it "
                                    f"returned {w.shape} {w.dtype}")
                V, H, q = _host_expand(V, H, i, w, key)
        num_matvecs += stop - n
        n = stop
        Hn = np.asarray(H, np.float64)
        if not np.all(np.isfinite(Hn)):
            raise FloatingPointError(f"the matvec returned NaN or Inf (restart {restarts})")
        if not in_range(float(np.max(np.abs(Hn))), dtype, dim):
            raise FloatingPointError(
                f"the products' norms |A q| (up to {np.max(np.abs(Hn)):.3g}) are outside the "
                f"scales eigsh supports, {describe_range(dtype)} (P = {dim}: jaxspec.norms); "
                "rescale the operator by a power of two")
        # After a breakdown in this cycle the invariant space reached need not hold the
        # wanted pairs (its Ritz residuals are exactly zero): the fresh direction is explored
        # for the rest of the cycle before convergence is tested.
        steps = np.arange(cycle_start, n)
        broke = bool(np.any(Hn[steps + 1, steps] == 0))
        if n < m and (n < 2 * k + 1 or broke):
            continue
        theta, S = np.linalg.eigh(0.5 * (Hn[:n, :n] + Hn[:n, :n].T))
        beta = Hn[n, n - 1]
        anorm = max(anorm, float(np.max(np.abs(theta))))
        wanted = _wanted(theta, k, which)
        # a zero beta ends the cycle on an invariant space, not an answer (above), unless
        # the operator is zero there (a frozen parameter block, say)
        done = (beta != 0 or anorm == 0) and np.all(
            np.abs(beta * S[n - 1, wanted]) <= tol * anorm)
        if done or (n == m and restarts >= max_restarts):
            break
        if n < m:
            continue
        # thick restart: the kept Ritz vectors, then the residual direction q_m (= q, held)
        kept = _wanted(theta, keep, which)
        C = np.zeros((m + 1, m + 1))
        C[:keep, :m] = S[:, kept].T
        C[keep, m] = 1.0
        V = _combine(jnp.asarray(C), V)
        Hr = np.zeros((m + 1, m))
        Hr[np.arange(keep), np.arange(keep)] = theta[kept]
        Hr[keep, :keep] = beta * S[m - 1, kept]
        H = jnp.asarray(Hr, dtype)
        n = cycle_start = keep
        restarts += 1

    C = np.zeros((m + 1, m + 1))
    C[:k, :n] = S[:, wanted].T
    X = _combine(jnp.asarray(C), V)[:k]
    values, residuals = np.zeros(k), np.zeros(k)
    for j in range(k):  # the certificate: one more product per pair
        x = X[j]
        ax = matvec(x)
        values[j] = float(_dot(x, ax) / _dot(x, x))
        residuals[j] = float(norm(ax - values[j].astype(dtype) * x))
    num_matvecs += k
    order = np.argsort(values, kind="stable")
    return EigshResult(values[order], X[jnp.asarray(order)], residuals[order],
                       residuals[order] <= tol * max(anorm, float(np.max(np.abs(values)))),
                       num_matvecs, restarts)
