"""Stochastic traces, diagonals and log-determinants of symmetric operators, with standard errors.

* :func:`hutchinson`: ``tr(A) ~ mean_i v_i^T A v_i`` over probes with ``E[v v^T] = I``;
  :func:`hutchinson_diagonal`: ``diag(A) ~ mean_i v_i * A v_i`` (exact in expectation for
  Rademacher probes, and of least variance with them). The per-probe integrands are
  matfree's (``matfree.stochtrace.monte_carlo_trace``, ``monte_carlo_diagonal``), the probes
  :func:`jaxspec.random_probe`'s (its Rademacher signs take one random bit each where matfree's
  ``sampler_signs`` takes a 32-bit number: a fourth of the time). This module adds: probe
  ``i`` drawn from ``jax.random.split(key, num_probes)[i]`` (so the result does not depend on
  ``batch_size``), probes applied one after another in one compiled loop (or ``batch_size`` at
  a time, vmapped; from the host for an operator with the host reduction, which cannot be
  traced), in blocks of bounded memory, and running moments for the standard error.
* :func:`hutch_plus_plus`: Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021): a third of the
  matvecs sketch the range of ``A``, a third take the exact trace on it, the rest go to
  Hutchinson on the deflated remainder. Far smaller error when ``A`` has a few dominant
  eigenvalues (the Hessian of a trained network: a few outliers over a bulk).
* :func:`xtrace`: XTrace (Epperly, Tropp & Webber, SIMAX 2024) from matfree
  (``leave_one_out_xtrace``), for traceable operators.
* :func:`logdet`: ``log det(A + shift I)`` of a positive semi-definite ``A`` by stochastic
  Lanczos quadrature: ``v^T log(A + shift I) v ~ |v|^2 sum_j w_j log(theta_j + shift)`` with the
  Ritz values and weights of :func:`jaxspec.ritz_pairs` (the log-evidence of a Laplace
  approximation, ``A`` a GGN and ``shift`` the prior precision).

Every estimator linearises an operator's products once (:meth:`jaxspec.CurvatureOperator.
linearized`, within its memory budget), as a Lanczos run does: all its products are taken at
one point, so each then pays only the part that depends on the probe.

Standard errors are ``std(samples, ddof=1) / sqrt(n)`` over the probes: for Hutch++ conditional
on the sketch (the low-rank part is exact given it), for XTrace matfree's spread of the
leave-one-out estimates, for :func:`logdet` the Monte-Carlo error only (the quadrature bias of
``num_steps`` Lanczos steps is not in it; it decays geometrically with the steps).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matfree import stochtrace

from jaxspec.checks import check_dimension
from jaxspec.compiler import jit, jit_argument
from jaxspec.lanczos import run_lanczos
from jaxspec.linearized import linearized
from jaxspec.ritz import ritz_pairs
from jaxspec.slq import probe_dtype, random_probe

__all__ = ["TraceEstimate", "hutch_plus_plus", "hutchinson", "hutchinson_diagonal", "logdet",
           "xtrace"]

_HIGHEST = jax.lax.Precision.HIGHEST


class TraceEstimate(NamedTuple):
    """A stochastic estimate and its standard error.

    Attributes:
      value: the estimate: a float (trace, log-determinant) or a ``(P,)`` array (diagonal).
      stderr: its standard error, of the same shape.
      num_matvecs: products with ``A`` taken.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import hutchinson
      >>> est = hutchinson(lambda v: 2.0 * v, jax.random.key(0), 10, num_probes=4)
      >>> est.value, est.stderr, est.num_matvecs   # Rademacher probes: exact for 2 I
      (20.0, 0.0, 4)
    """

    value: Any
    stderr: Any
    num_matvecs: int


def _traceable(matvec: Callable) -> bool:
    """False for an operator whose reduction runs on the host (it cannot be vmapped)."""
    return getattr(getattr(matvec, "reduce", None), "driver", "compiled") != "host"


def _check_distribution(distribution: str) -> None:
    if distribution not in ("rademacher", "normal"):
        raise ValueError(f"distribution must be 'rademacher' or 'normal', got {distribution!r}")


@functools.partial(jax.jit, static_argnames=("distribution", "dim", "dtype"))
def _draw(keys: jax.Array, distribution: str, dim: int, dtype) -> jax.Array:
    """One probe per key, as rows (:func:`jaxspec.random_probe`)."""
    return jax.vmap(lambda k: random_probe(k, dim, dtype=dtype, distribution=distribution))(keys)


@functools.partial(jax.jit, static_argnums=2)
def _integrate(probes: jax.Array, products: jax.Array, what: str) -> jax.Array:
    """matfree's per-probe integrand ``what`` (``"trace"`` or ``"diagonal"``), given the
    products ``A v``, one row per probe."""
    integrand = (stochtrace.monte_carlo_trace() if what == "trace"
                 else stochtrace.monte_carlo_diagonal())
    return jax.vmap(lambda v, w: integrand(lambda _: w, v))(probes, products)


# Hutchinson draws and applies its probes in blocks of at most this many bytes (and at least one
# vmapped batch of ``batch_size`` probes): the probes and their products are what it holds.
_BLOCK_BYTES = 64 * 2**20


@functools.partial(jit, static_argnums=3)
def _mapped(op, block, count, batch_size):
    """``op`` applied to the first ``count`` rows of ``block`` (whose rows are a multiple of
    ``batch_size``), ``batch_size`` rows vmapped at a time, one batch after another in one
    compiled loop; the other rows of the result are zero. ``count`` is an argument, so blocks
    of one shape share one program however many of their rows are probes."""
    chunks = block.reshape(-1, batch_size, block.shape[-1])
    if batch_size == 1:  # the very product the Lanczos drivers compile, no vmap around it
        body = lambda i, out: out.at[i, 0].set(op(chunks[i, 0]))  # noqa: E731
    else:
        body = lambda i, out: out.at[i].set(jax.vmap(op)(chunks[i]))  # noqa: E731
    stop = (count + batch_size - 1) // batch_size
    out = jnp.zeros(chunks.shape, jax.eval_shape(op, chunks[0, 0]).dtype)  # products' dtype
    return jax.lax.fori_loop(0, stop, body, out).reshape(block.shape)


_row = jax.jit(lambda block, i: jax.lax.dynamic_index_in_dim(block, i, keepdims=False))


def _apply(matvec: Callable, block: jax.Array, batch_size: int,
           rows: int | None = None) -> jax.Array:
    """``A`` applied to the rows of ``block``: in one compiled loop over them, ``batch_size``
    vmapped at a time, with ``block`` padded to ``rows`` rows (default its own; rounded up to a
    multiple of ``batch_size``) so that blocks of different lengths share one program; row by
    row from the host for an operator with the host reduction."""
    count = block.shape[0]
    if not _traceable(matvec):  # one program takes each row out, one stacks the products
        return jnp.stack([matvec(_row(block, np.int32(i))) for i in range(count)])
    rows = -(-max(count, rows or 0) // batch_size) * batch_size
    padded = jnp.pad(block, ((0, rows - count), (0, 0))) if rows > count else block
    return _mapped(jit_argument(matvec), padded, np.int32(count), batch_size)[:count]


@jax.custom_batching.custom_vmap
def _one_at_a_time(op: Callable, v: jax.Array) -> jax.Array:
    return op(v)


@_one_at_a_time.def_vmap
def _one_at_a_time_vmap(axis_size, in_batched, op, v):
    """Under ``vmap`` over the vectors, ``op`` applied to one after another (``lax.map``), so
    that a vmapped curvature product holds one product's activations, not ``axis_size``
    products' (matfree's XTrace vmaps the operator over all its probes at once)."""
    op_batched, v_batched = in_batched
    if any(jax.tree.leaves(op_batched)):
        raise NotImplementedError("the operator itself is batched: vmap it directly")
    if not v_batched:  # e.g. jax.jacfwd's tangents, batched outside this call
        return op(v), False
    return jax.lax.map(op, v), True


def _block_rows(dim: int, dtype, num_probes: int, batch_size: int) -> int:
    """Probes per block: at most :data:`_BLOCK_BYTES` of them, but at least one vmapped batch;
    a multiple of ``batch_size``; no more than ``num_probes`` need."""
    fit = max(1, _BLOCK_BYTES // (dim * jnp.dtype(dtype).itemsize) // batch_size) * batch_size
    return min(fit, -(-num_probes // batch_size) * batch_size)


def _column_sum(x: jax.Array) -> jax.Array:
    # a product with a row of ones: XLA:CPU's reduction over a short leading axis of a long
    # array (YNNPACK's) runs many times slower than the product (docs/speed.md)
    return jnp.dot(jnp.ones(x.shape[0], x.dtype), x, precision=_HIGHEST)


@jax.jit
def _merge(count, mean, m2, x):
    """Chan et al.'s merge of the moments ``(count, mean, m2)`` with the rows of ``x``: no
    cancellation when the mean is large against the spread."""
    n = x.shape[0]
    batch_mean = _column_sum(x) / n
    total = count + n
    delta = batch_mean - mean
    m2 = m2 + _column_sum((x - batch_mean) ** 2) + delta**2 * (count * n / total)
    return total, mean + delta * (n / total), m2


class _Moments:
    """Running count, mean and centred sum of squares of the rows added."""

    def __init__(self):
        self.count = 0

    def add(self, x: jax.Array) -> None:
        if self.count == 0:
            self.mean = self.m2 = jnp.zeros(x.shape[1:], x.dtype)
        count, self.mean, self.m2 = _merge(jnp.asarray(self.count, x.dtype), self.mean,
                                           self.m2, x)
        self.count += x.shape[0]

    def stderr(self):
        if self.count < 2:
            return jnp.full(jnp.shape(self.mean), jnp.nan)
        return jnp.sqrt(self.m2 / ((self.count - 1) * self.count))


def _check_count(name: str, value: int, least: int = 1) -> None:
    if not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def _finite(estimate: TraceEstimate) -> TraceEstimate:
    if not np.all(np.isfinite(np.asarray(estimate.value))):
        raise FloatingPointError("the estimate is not finite: the matvec returned NaN or Inf "
                                 "(check the loss and the parameters)")
    return estimate


def _hutchinson_moments(matvec, key, dim, num_probes, batch_size, distribution, dtype, what):
    """The running moments of matfree's integrand ``what`` over the probes."""
    _check_count("num_probes", num_probes)
    _check_count("batch_size", batch_size)
    dtype = probe_dtype(matvec, dtype)
    _check_distribution(distribution)
    check_dimension(matvec, dim, dtype)
    keys = jax.random.split(key, num_probes)
    rows = _block_rows(int(dim), dtype, num_probes, batch_size)
    matvec = linearized(matvec, rows)  # an operator's products, once for all probes
    moments = _Moments()
    for start in range(0, num_probes, rows):
        probes = _draw(keys[start:start + rows], distribution, int(dim), dtype)
        moments.add(_integrate(probes, _apply(matvec, probes, batch_size, rows), what))
    return moments


def hutchinson(matvec: Callable[[jax.Array], jax.Array], key: jax.Array, dim: int, /, *,
               num_probes: int = 100, batch_size: int = 1,
               distribution: str = "rademacher", dtype=None) -> TraceEstimate:
    """Hutchinson's estimate of ``tr(A)``: the mean of ``v^T A v`` over random probes.

    Args:
      matvec: ``v -> A v`` on flat ``(dim,)`` vectors: a :class:`jaxspec.CurvatureOperator`
        or any callable (traceable unless it is an operator with the host reduction).
      key: PRNG key; probe ``i`` comes from ``jax.random.split(key, num_probes)[i]``.
      dim: the dimension P.
      num_probes: number of probes (= matvecs).
      batch_size: probes per vmapped product. The products run one batch after another in
        one compiled loop, so the default, 1, holds the activations of one product; ``k`` holds
        ``k`` times that and can be faster where one product leaves the device idle (a small
        model on a GPU). An operator with the host reduction is applied probe by probe.
      distribution: ``"rademacher"`` (least variance for a fixed matrix) or ``"normal"``.
      dtype: the probes' dtype (default the operator's, else float32).

    Returns:
      :class:`TraceEstimate` with a float value and standard error.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import hutchinson
      >>> A = jnp.diag(jnp.arange(1.0, 101.0)) + 0.1           # trace 5060
      >>> est = hutchinson(lambda v: A @ v, jax.random.key(0), 100, num_probes=200)
      >>> abs(est.value - 5060.0) < 4 * est.stderr
      True
    """
    trace = _hutchinson_moments(matvec, key, dim, num_probes, batch_size, distribution, dtype,
                                "trace")
    return _finite(TraceEstimate(float(trace.mean), float(trace.stderr()), num_probes))


def hutchinson_diagonal(matvec: Callable[[jax.Array], jax.Array], key: jax.Array, dim: int, /,
                        *, num_probes: int = 100, batch_size: int = 1,
                        distribution: str = "rademacher", dtype=None) -> TraceEstimate:
    """Hutchinson's estimate of ``diag(A)``: the mean of ``v * (A v)`` over random probes.

    With Rademacher probes entry ``i`` has variance ``sum_{j != i} A_ij^2`` per probe (a
    diagonal matrix is exact). Arguments as in :func:`hutchinson`.

    Returns:
      :class:`TraceEstimate` whose value and standard error are ``(dim,)`` arrays.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import hutchinson_diagonal
      >>> A = jnp.array([[2.0, 0.1], [0.1, 3.0]])
      >>> est = hutchinson_diagonal(lambda v: A @ v, jax.random.key(0), 2, num_probes=400)
      >>> bool(jnp.all(jnp.abs(est.value - jnp.array([2.0, 3.0])) < 4 * est.stderr + 1e-6))
      True
    """
    diagonal = _hutchinson_moments(matvec, key, dim, num_probes, batch_size, distribution,
                                   dtype, "diagonal")
    return _finite(TraceEstimate(diagonal.mean, diagonal.stderr(), num_probes))


@jax.jit
def _orthonormal_rows(Y: jax.Array) -> jax.Array:
    return jnp.linalg.qr(Y.T)[0].T


@jax.jit
def _deflate(G: jax.Array, Q: jax.Array) -> jax.Array:
    """The rows of ``G`` projected by ``I - Q^T Q`` (``Q``: orthonormal rows)."""
    return G - jnp.dot(jnp.dot(G, Q.T, precision=_HIGHEST), Q, precision=_HIGHEST)


def hutch_plus_plus(matvec: Callable[[jax.Array], jax.Array], key: jax.Array, dim: int, /, *,
                    num_matvecs: int = 99, batch_size: int = 1,
                    distribution: str = "rademacher", dtype=None) -> TraceEstimate:
    """Hutch++: the exact trace on a sketched dominant subspace plus Hutchinson on the rest.

    With ``s = num_matvecs // 3``: ``Q = orth(A S)`` for ``s`` random probes ``S``;
    ``tr(Q^T A Q)`` (``s`` matvecs); Hutchinson with the remaining ``num_matvecs - 2 s`` probes
    ``g`` projected by ``I - Q Q^T``. Unbiased; the standard error is that of the Hutchinson
    part, conditional on ``Q``. Memory: two ``(s, P)`` blocks.

    Args:
      matvec, key, dim, batch_size, distribution, dtype: as in :func:`hutchinson`.
      num_matvecs: the total budget of products (at least 3).

    Returns:
      :class:`TraceEstimate`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import hutch_plus_plus
      >>> A = jnp.diag(jnp.concatenate([jnp.array([1e3, 5e2]), jnp.ones(98)]))   # trace 1598
      >>> est = hutch_plus_plus(lambda v: A @ v, jax.random.key(0), 100, num_matvecs=30)
      >>> abs(est.value - 1598.0) < 1.0, est.num_matvecs
      (True, 30)
    """
    _check_count("num_matvecs", num_matvecs, 3)
    dtype = probe_dtype(matvec, dtype)
    _check_distribution(distribution)
    check_dimension(matvec, dim, dtype)
    s = num_matvecs // 3
    g = num_matvecs - 2 * s
    _check_count("batch_size", batch_size)
    keys = jax.random.split(key, s + g)
    matvec = linearized(matvec, 2 * g)  # an operator's products, once for all three blocks
    # every block padded to g >= s rows: one compiled loop applies all three
    Q = _orthonormal_rows(_apply(matvec, _draw(keys[:s], distribution, int(dim), dtype),
                                 batch_size, g))
    low_rank = jnp.sum(_integrate(Q, _apply(matvec, Q, batch_size, g), "trace"))
    G = _deflate(_draw(keys[s:], distribution, int(dim), dtype), Q)
    samples = _integrate(G, _apply(matvec, G, batch_size, g), "trace")
    rest = _Moments()
    rest.add(samples)
    return _finite(TraceEstimate(float(low_rank + rest.mean), float(rest.stderr()),
                                 num_matvecs))


@functools.cache
def _xtrace_program(dim: int, dtype, num_probes: int) -> Callable:
    """matfree's leave-one-out XTrace with ``num_probes`` normal probes of ``(dim,)``, jitted:
    one program per shape, so a later estimate of the same shapes compiles nothing."""
    sampler = stochtrace.sampler_normal(jnp.zeros((dim,), dtype), num=num_probes)
    return jit(stochtrace.estimator_leave_one_out_mean_and_sem(
        stochtrace.leave_one_out_xtrace(), sampler))


def xtrace(matvec: Callable[[jax.Array], jax.Array], key: jax.Array, dim: int, /, *,
           num_probes: int = 50, dtype=None) -> TraceEstimate:
    """XTrace (Epperly, Tropp & Webber 2024): every probe both sketches and tests, by
    leave-one-out; matfree's ``leave_one_out_xtrace`` with normal probes.

    Takes ``2 num_probes`` matvecs in one compiled program (one per shape), so the operator
    must be traceable: an operator with the host reduction is applied with ``reduce="scan"``
    instead (:meth:`jaxspec.CurvatureOperator.with_reduce`). matfree vmaps the operator over
    all its probes; here the vmapped products run one after another (``lax.map``), each
    holding one product's activations. When ``2 num_probes >= dim`` matfree computes the exact
    trace from the dense matrix (``dim`` matvecs) instead. The standard error is matfree's
    spread of the leave-one-out estimates over ``sqrt(num_probes)``: a heuristic, not a
    confidence bound.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import xtrace
      >>> A = jnp.diag(jnp.concatenate([jnp.array([1e3, 5e2]), jnp.ones(98)]))   # trace 1598
      >>> est = xtrace(lambda v: A @ v, jax.random.key(0), 100, num_probes=10)
      >>> abs(est.value - 1598.0) < 1.0, est.num_matvecs
      (True, 20)
    """
    _check_count("num_probes", num_probes, 2)
    if not _traceable(matvec):  # the host reduction cannot be traced: the same matrix by scan
        matvec = matvec.with_reduce("scan")
    check_dimension(matvec, dim, probe_dtype(matvec, dtype))
    if 2 * num_probes >= dim:  # the exact branch: any count from dim / 2 to dim is the same
        num_probes = min(num_probes, int(dim))
    matvec = linearized(matvec, 2 * num_probes)  # an operator's products, once for all probes
    one_at_a_time = jax.tree_util.Partial(_one_at_a_time, jit_argument(matvec))
    mean, sem = _xtrace_program(int(dim), probe_dtype(matvec, dtype), num_probes)(
        one_at_a_time, key)
    return _finite(TraceEstimate(float(mean), float(sem),
                                 dim if 2 * num_probes >= dim else 2 * num_probes))


def logdet(matvec: Callable[[jax.Array], jax.Array], key: jax.Array, dim: int,
           num_steps: int, /, *, shift: float = 0.0, num_probes: int = 10,
           distribution: str = "rademacher", dtype=None, **lanczos_kwargs: Any
           ) -> TraceEstimate:
    """``log det(A + shift I)`` of a positive semi-definite ``A``, by stochastic Lanczos
    quadrature.

    Each probe ``v`` (from ``jax.random.split(key, num_probes)``) gets a Lanczos run of
    ``num_steps`` steps (:func:`jaxspec.run_lanczos`; ``lanczos_kwargs`` such as ``driver``
    go there), and ``v^T log(A + shift I) v ~ |v|^2 sum_j w_j log(theta_j + shift)`` with its
    Ritz values ``theta_j`` and weights ``w_j`` (``|v|^2 = P`` for Rademacher probes). The
    standard error is over the probes; the quadrature error is not in it (it falls
    geometrically with ``num_steps``, the faster the better conditioned ``A + shift I``).

    Raises:
      ValueError: a Ritz value of ``A + shift I`` is not positive (``A`` is not PSD, or the
        shift is too small for the rounding of ``A``'s null space).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from jaxspec import logdet
      >>> d = jnp.linspace(0.0, 2.0, 50)
      >>> est = logdet(lambda v: d * v, jax.random.key(0), 50, 20, shift=1.0, num_probes=4,
      ...              dtype=d.dtype)
      >>> truth = float(np.sum(np.log(np.asarray(d) + 1.0)))
      >>> abs(est.value - truth) < 4 * est.stderr + 1e-3
      True
    """
    _check_count("num_probes", num_probes)
    dtype = probe_dtype(matvec, dtype)
    keys = jax.random.split(key, num_probes)
    samples, num_matvecs = [], 0
    matvec = linearized(matvec, num_steps + 1)  # an operator's products, once for all probes
    for i in range(num_probes):
        v = random_probe(keys[i], dim, dtype=dtype, distribution=distribution)
        run = run_lanczos(matvec, v, num_steps, **lanczos_kwargs)
        pairs = ritz_pairs(run)
        shifted = pairs.values + float(shift)
        if np.any(shifted <= 0):
            raise ValueError(f"a Ritz value of A + shift I is {shifted.min():.3g} <= 0: logdet "
                             "needs a positive semi-definite A (e.g. a GGN) and shift > 0")
        norm2 = float(np.sum(np.asarray(v, np.float64) ** 2))
        samples.append(norm2 * float(np.sum(pairs.weights * np.log(shifted))))
        num_matvecs += int(run.num_valid)
    samples = np.asarray(samples)
    stderr = float(np.std(samples, ddof=1) / np.sqrt(num_probes)) if num_probes > 1 else np.nan
    return TraceEstimate(float(samples.mean()), stderr, num_matvecs)
