"""Random-matrix theory of the Empirical Hessian (paper, section 4): laws, edges and samplers.

The model: ``H_emp = H_true + eps`` where ``eps`` is a GOE whose elements have variance
``sigma^2 / N`` (``sigma^2``: the per-sample variance of a Hessian element, N: the number of
samples) and ``H_true`` has low rank. Writing ``q = P / N`` and ``s^2 = q sigma^2``,
``eps = B / sqrt(P)`` with ``B`` a GOE of element variance ``s^2``.

Scaling convention, used by every function here: a matrix "of element variance ``s^2``, scaled by
``1/sqrt(P)``" is ``W = B / sqrt(P)`` with ``B`` symmetric, off-diagonal elements of variance
``s^2`` and (GOE) diagonal elements of variance ``2 s^2``; ``W``'s off-diagonal elements have
variance ``s^2 / P``. Its spectrum tends to the semicircle on ``[-2 s, 2 s]``. The diagonal
variance does not affect the limit law or the edges.

Contents:

* Wigner semicircle: :func:`semicircle_density`, :func:`semicircle_cdf`, :func:`semicircle_edges`.
* Lemma 3 (spiked GOE, BBP transition): :func:`spiked_edge`, :func:`spiked_eigenvalues`.
* Theorem 1 (true -> empirical extremal eigenvalues) and its inverse: :func:`empirical_edge`,
  :func:`true_edge` (-> :class:`TrueEdge`), and :func:`implied_sigma2` (the ``sigma^2`` that
  makes a pair of measured edges consistent with Theorem 1).
* Marchenko-Pastur law (Wishart, the Gauss-Newton / Fisher counterpart):
  :func:`marchenko_pastur_density`, :func:`marchenko_pastur_edges`, :func:`marchenko_pastur_atom`.
* Samplers (take a PRNG key): :func:`sample_goe`, :func:`sample_spiked_goe`,
  :func:`sample_wishart`.
* The per-element Hessian noise variance ``sigma^2`` from mini-batch HVPs:
  :func:`noise_variance` (pure, on arrays) and :func:`estimate_noise_variance` (drives a
  ``hvp_on_batch`` callable), both returning :class:`NoiseVariance`.

Everything is a pure function of arrays (jax or numpy); the module imports only jax.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "Edges",
    "NoiseVariance",
    "TrueEdge",
    "empirical_edge",
    "estimate_noise_variance",
    "implied_sigma2",
    "marchenko_pastur_atom",
    "marchenko_pastur_density",
    "marchenko_pastur_edges",
    "noise_variance",
    "sample_goe",
    "sample_spiked_goe",
    "sample_wishart",
    "semicircle_cdf",
    "semicircle_density",
    "semicircle_edges",
    "spiked_edge",
    "spiked_eigenvalues",
    "true_edge",
]

Side = Literal["top", "bottom"]


class Edges(NamedTuple):
    """The support ``[lower, upper]`` of a limiting spectral law.

    Returned by :func:`semicircle_edges` and :func:`marchenko_pastur_edges`.

    Example:
      >>> from jaxspec.rmt import semicircle_edges
      >>> e = semicircle_edges(s2=1.0)
      >>> float(e.lower), float(e.upper)
      (-2.0, 2.0)
    """

    lower: jax.Array
    upper: jax.Array


class TrueEdge(NamedTuple):
    """Theorem 1 inverted: what an empirical extremal eigenvalue says about the true one.

    Attributes:
      value: the true extremal eigenvalue where ``identifiable``, else NaN.
      identifiable: whether the empirical edge lies beyond the bulk edge (``lambda' > 2 s`` at
        the top, ``lambda' < -2 s`` at the bottom), so that it is an outlier and determines the
        true eigenvalue uniquely.
      bound: the BBP threshold on this side, ``s`` (top) or ``-s`` (bottom), with
        ``s = sqrt(q sigma^2)``. When not identifiable, all one can say is ``lambda_1 <= bound``
        (top) or ``lambda_P >= bound`` (bottom): the empirical edge is the noise's bulk edge.
        When identifiable, ``value`` lies beyond ``bound``.

    Example:
      >>> from jaxspec.rmt import true_edge
      >>> t = true_edge(2.5, q=4.0, sigma2=0.25)
      >>> float(t.value), bool(t.identifiable), float(t.bound)
      (2.0, True, 1.0)
    """

    value: jax.Array
    identifiable: jax.Array
    bound: jax.Array


class NoiseVariance(NamedTuple):
    """Estimate of the per-sample Hessian element variance ``sigma^2`` (see :func:`noise_variance`).

    Attributes:
      sigma2: the pooled estimate over all probes and batches.
      per_probe: ``(num_probes,)`` the estimate from each probe vector alone.
      stderr: a rough standard error: the standard deviation of the per-(probe, batch) terms over
        the square root of their number, treating them as independent (batches of one shuffle
        are slightly negatively correlated and all probes share the same samples). Where the
        batches partition the data set (``m b = N`` without replacement) their deviations from
        ``H_N v`` sum to zero, so the ``m`` terms are not independent (with ``m = 2`` they are
        equal and their spread is 0); the terms are then the ``m - 1`` Helmert contrasts of the
        deviations, uncorrelated for exchangeable batches, whose sum is the same sum of squares.
        NaN with a single term.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.rmt import noise_variance
      >>> hb = jnp.array([[[1.0, 0.0], [-1.0, 0.0]], [[2.0, 0.0], [-2.0, 0.0]]])  # (k, m, P)
      >>> nv = noise_variance(hb, jnp.zeros((2, 2)), jnp.ones((2, 2)), batch_size=1, num_samples=2)
      >>> float(nv.sigma2), nv.per_probe.tolist(), round(float(nv.stderr), 3)  # 2 x 1 cover N = 2
      (1.25, [0.5, 2.0], 0.75)
    """

    sigma2: jax.Array
    per_probe: jax.Array
    stderr: jax.Array


# ---- helpers ----------------------------------------------------------------------------------

def _float(x) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _check_side(side: str) -> None:
    if side not in ("top", "bottom"):
        raise ValueError(f"side must be 'top' or 'bottom', got {side!r}")


def _check_nonneg(name: str, value, *, strict: bool = False, nan_ok: bool = False) -> None:
    try:
        v = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return  # traced: cannot check
    if not (v > 0 if strict else v >= 0) and not (nan_ok and math.isnan(v)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} 0, got {v}")


def _default_dtype(dtype):
    return jnp.dtype(jnp.result_type(float) if dtype is None else dtype)


# ---- Wigner semicircle ------------------------------------------------------------------------

def semicircle_density(x: jax.typing.ArrayLike, /, *, s2: float = 1.0) -> jax.Array:
    """Wigner semicircle density for element variance ``s2`` (matrix scaled by ``1/sqrt(P)``).

    ``rho(x) = sqrt(4 s^2 - x^2) / (2 pi s^2)`` on ``[-2 s, 2 s]``, zero outside.

    Args:
      x: points at which to evaluate (any shape).
      s2: the element variance ``s^2 > 0`` of ``B`` in ``W = B / sqrt(P)``.

    Returns:
      The density at ``x``, same shape.

    Example:
      >>> from jaxspec.rmt import semicircle_density
      >>> round(float(semicircle_density(0.0, s2=1.0)), 6)  # 1 / pi
      0.31831
      >>> float(semicircle_density(2.5, s2=1.0))
      0.0
    """
    _check_nonneg("s2", s2, strict=True)
    return _semicircle_density(_float(x), s2)


# Elementwise kernels are jitted: one compilation per input shape instead of one per primitive.
@jax.jit
def _semicircle_density(x, s2):
    s2 = jnp.asarray(s2, x.dtype)
    return jnp.sqrt(jnp.maximum(4.0 * s2 - x * x, 0.0)) / (2.0 * jnp.pi * s2)


def semicircle_cdf(x: jax.typing.ArrayLike, /, *, s2: float = 1.0) -> jax.Array:
    """Cumulative distribution function of :func:`semicircle_density`.

    With ``u = x / (2 s)`` clipped to ``[-1, 1]``:
    ``F = 1/2 + (u sqrt(1 - u^2) + arcsin u) / pi``.

    Args:
      x: points (any shape).
      s2: the element variance ``s^2 > 0``.

    Returns:
      ``P(X <= x)``, same shape as ``x``.

    Example:
      >>> from jaxspec.rmt import semicircle_cdf
      >>> [round(float(semicircle_cdf(t, s2=4.0)), 6) for t in (-5.0, 0.0, 4.0)]
      [0.0, 0.5, 1.0]
    """
    _check_nonneg("s2", s2, strict=True)
    return _semicircle_cdf(_float(x), s2)


@jax.jit
def _semicircle_cdf(x, s2):
    u = jnp.clip(x / (2.0 * jnp.sqrt(jnp.asarray(s2, x.dtype))), -1.0, 1.0)
    return jnp.clip(0.5 + (u * jnp.sqrt(1.0 - u * u) + jnp.arcsin(u)) / jnp.pi, 0.0, 1.0)


def semicircle_edges(*, s2: float = 1.0) -> Edges:
    """The support ``[-2 s, 2 s]`` of the semicircle of element variance ``s2``.

    Example:
      >>> from jaxspec.rmt import semicircle_edges
      >>> [float(e) for e in semicircle_edges(s2=4.0)]
      [-4.0, 4.0]
    """
    _check_nonneg("s2", s2)
    s = jnp.sqrt(_float(s2))
    return Edges(-2.0 * s, 2.0 * s)


# ---- Lemma 3: spiked GOE ----------------------------------------------------------------------

def spiked_edge(l: jax.typing.ArrayLike, /, *, s2: float, side: Side = "top") -> jax.Array:
    """Lemma 3: the extremal eigenvalue of ``A + B / sqrt(P)`` (large-P limit).

    ``A`` has finite rank and extremal eigenvalue ``l`` on the chosen side; ``B`` is a GOE of
    element variance ``s2``; ``s = sqrt(s2)``. Top: ``l + s^2 / l`` if ``l > s``, else ``2 s``.
    Bottom: ``l + s^2 / l`` if ``l < -s``, else ``-2 s`` (the BBP transition).

    Args:
      l: the extremal eigenvalue(s) of ``A`` on that side (any shape; vectorised).
      s2: the element variance ``s^2 >= 0`` of ``B``.
      side: ``"top"`` (``l = lambda_1``) or ``"bottom"`` (``l = lambda_P``). The side matters
        for ``|l| <= s``: a bottom eigenvalue of ``2e-5`` maps to ``-2 s``, not ``2 s``.

    Returns:
      The extremal eigenvalue of the sum, same shape as ``l``.

    Example:
      >>> from jaxspec.rmt import spiked_edge
      >>> [round(float(e), 4) for e in spiked_edge([3.0, 0.5], s2=1.0)]
      [3.3333, 2.0]
      >>> spiked_edge([-2.0, 0.1], s2=1.0, side="bottom").tolist()
      [-2.5, -2.0]
    """
    _check_side(side)
    _check_nonneg("s2", s2)
    return _spiked_edge(_float(l), s2, top=side == "top")


@functools.partial(jax.jit, static_argnames="top")
def _spiked_edge(l, s2, *, top):
    s2 = jnp.asarray(s2, l.dtype)
    s = jnp.sqrt(s2)
    outlier = l > s if top else l < -s
    safe = jnp.where(outlier, l, 1.0)
    return jnp.where(outlier, l + s2 / safe, 2.0 * s if top else -2.0 * s)


def spiked_eigenvalues(spikes: jax.typing.ArrayLike, /, *, s2: float) -> jax.Array:
    """Where each spike of ``A`` lands in the spectrum of ``A + B / sqrt(P)`` (large P).

    The remark after Theorem 1: every well-separated spike ``l`` with ``|l| > s`` produces an
    outlier at ``l + s^2 / l``; a spike with ``|l| <= s`` is absorbed into the bulk and its
    eigenvalue sits at the edge on its side, ``2 s`` (``l >= 0``) or ``-2 s`` (``l < 0``).

    Args:
      spikes: the nonzero eigenvalues of the finite-rank ``A`` (any shape; vectorised).
      s2: the element variance ``s^2 >= 0`` of ``B``.

    Returns:
      The predicted eigenvalue for each spike, same shape.

    Example:
      >>> from jaxspec.rmt import spiked_eigenvalues
      >>> spiked_eigenvalues([4.0, 0.5, -0.5, -2.0], s2=1.0).tolist()
      [4.25, 2.0, -2.0, -2.5]
    """
    _check_nonneg("s2", s2)
    return _spiked_eigenvalues(_float(spikes), s2)


@jax.jit
def _spiked_eigenvalues(l, s2):
    s2 = jnp.asarray(s2, l.dtype)
    s = jnp.sqrt(s2)
    outlier = jnp.abs(l) > s
    safe = jnp.where(outlier, l, 1.0)
    return jnp.where(outlier, l + s2 / safe, jnp.where(l >= 0, 2.0 * s, -2.0 * s))


# ---- Theorem 1 --------------------------------------------------------------------------------

def empirical_edge(true_eig: jax.typing.ArrayLike, /, *, q: float, sigma2: float,
                   side: Side = "top", reference_q: float = 0.0) -> jax.Array:
    """Theorem 1: the empirical extremal eigenvalue predicted from the true one.

    With ``s^2 = q sigma^2``: ``lambda'_1 = lambda_1 + q sigma^2 / lambda_1`` if
    ``lambda_1 > sqrt(q) sigma`` else ``2 sqrt(q) sigma``; ``lambda'_P`` mirrored
    (:func:`spiked_edge` with ``s2 = q * sigma2``).

    A reference that is itself a mean over ``M`` samples (a True Hessian measured on ``M``
    fresh samples, an augmented Hessian) carries the same kind of noise, at
    ``reference_q = P / M``: its edge is first mapped back to the true one (:func:`true_edge`
    with ``q = reference_q``), then forward with ``q``. Otherwise the predicted shift is
    ``q / (q - reference_q)`` times the expected one (1.5x at ``reference_q = q / 3``). A
    reference inside its own noise bulk only bounds the true edge by ``sqrt(reference_q)
    sigma``; that maps to the bulk edge ``2 sqrt(q) sigma`` when ``reference_q <= q``, and to
    NaN (unknown) when ``reference_q > q``.

    Args:
      true_eig: the True Hessian's extremal eigenvalue(s) on ``side`` (vectorised), or the
        reference's where ``reference_q > 0``.
      q: ``P / N``, parameters over samples.
      sigma2: the per-sample variance of a Hessian element (:func:`noise_variance`).
      side: ``"top"`` for ``lambda_1``, ``"bottom"`` for ``lambda_P``.
      reference_q: ``P / M`` of a reference measured on ``M`` samples; 0: the true edge.

    Returns:
      The predicted empirical extremal eigenvalue(s).

    Example:
      >>> from jaxspec.rmt import empirical_edge
      >>> float(empirical_edge(2.0, q=4.0, sigma2=0.25))   # s = 1: 2 + 1/2
      2.5
      >>> float(empirical_edge(-0.01, q=4.0, sigma2=0.25, side="bottom"))
      -2.0
      >>> # a reference on M = 4 N samples reads 2 + 0.125: the true edge 2, then q = 4
      >>> float(empirical_edge(2.125, q=4.0, sigma2=0.25, reference_q=1.0))
      2.5
    """
    _check_nonneg("q", q)
    _check_nonneg("sigma2", sigma2)
    _check_nonneg("reference_q", reference_q)
    if not reference_q:
        return spiked_edge(true_eig, s2=q * sigma2, side=side)
    reference = true_edge(true_eig, q=reference_q, sigma2=sigma2, side=side)
    true = jnp.where(reference.identifiable, reference.value,
                     reference.bound if reference_q <= q else jnp.nan)
    return spiked_edge(true, s2=q * sigma2, side=side)


def true_edge(emp_eig: jax.typing.ArrayLike, /, *, q: float, sigma2: float,
              side: Side = "top") -> TrueEdge:
    """Theorem 1 inverted: the true extremal eigenvalue from the empirical one, where it exists.

    Above the transition the forward map ``l -> l + s^2 / l`` (``|l| > s``) is a bijection onto
    ``|l'| > 2 s``, with inverse ``l = (l' + sign(l') sqrt(l'^2 - 4 s^2)) / 2`` (the root of
    ``l^2 - l' l + s^2 = 0`` with ``|l| > s``). At or below it (``l' <= 2 s`` at the top,
    ``l' >= -2 s`` at the bottom) the empirical edge is the bulk edge of the noise and carries
    no information beyond ``|l| <= s``: ``value`` is NaN, ``identifiable`` False, and ``bound``
    gives ``s`` (top: ``lambda_1 <= s``) or ``-s`` (bottom: ``lambda_P >= -s``). A measured top
    edge well below ``2 s`` (or bottom well above ``-2 s``) contradicts the model: ``sigma2`` is
    overestimated (finite-P edges fluctuate by ``O(s P^{-2/3})``).

    Args:
      emp_eig: the Empirical Hessian's extremal eigenvalue(s) on ``side`` (vectorised).
      q: ``P / N``.
      sigma2: the per-sample variance of a Hessian element.
      side: ``"top"`` for ``lambda'_1``, ``"bottom"`` for ``lambda'_P``.

    Returns:
      :class:`TrueEdge` ``(value, identifiable, bound)``, each shaped like ``emp_eig``.

    Example:
      >>> from jaxspec.rmt import true_edge
      >>> r = true_edge([2.5, 1.9], q=4.0, sigma2=0.25)
      >>> r.value.tolist(), r.identifiable.tolist(), r.bound.tolist()
      ([2.0, nan], [True, False], [1.0, 1.0])
      >>> float(true_edge(-2.5, q=4.0, sigma2=0.25, side="bottom").value)
      -2.0
    """
    _check_side(side)
    _check_nonneg("q", q)
    _check_nonneg("sigma2", sigma2)
    return _true_edge(_float(emp_eig), q * sigma2, top=side == "top")


@functools.partial(jax.jit, static_argnames="top")
def _true_edge(lp, s2, *, top):
    s = jnp.sqrt(jnp.asarray(s2, lp.dtype))
    ident = lp > 2.0 * s if top else lp < -2.0 * s
    # l'^2 - 4 s^2 factored: no cancellation near the transition.
    disc = jnp.sqrt(jnp.where(ident, (lp - 2.0 * s) * (lp + 2.0 * s), 0.0))
    root = (lp + disc) / 2.0 if top else (lp - disc) / 2.0
    value = jnp.where(ident, root, jnp.nan)
    bound = jnp.broadcast_to(s if top else -s, lp.shape)
    return TrueEdge(value, ident, bound)


def implied_sigma2(true_eig: jax.typing.ArrayLike, emp_eig: jax.typing.ArrayLike, /, *,
                   q: float, side: Side = "top", reference_q: float = 0.0) -> jax.Array:
    """The ``sigma^2`` for which Theorem 1 maps a measured true edge onto a measured empirical one.

    Top (bottom mirrored by negating both): with ``l = lambda_1``, ``l' = lambda'_1``,
    ``s^2 = l (l' - l)`` if ``0 < l <= l' < 2 l`` (outlier branch, ``s < l``); ``s^2 = l'^2 / 4``
    if ``l' > 0`` and ``l' >= 2 l`` (bulk-edge branch, ``l <= s``); NaN otherwise (``l' < l``:
    the empirical edge inside the true one, which the model cannot produce). The two branches
    meet at ``l' = 2 l``. Returns ``s^2 / q``. Comparing the top and bottom values tests the
    model's symmetric-noise assumption. On the outlier branch far above the transition
    (``l >> s``) the shift ``l' - l = s^2 / l`` is a small difference of measured numbers: the
    relative error of the result is about ``(l / s)^2`` times that of ``l'``.

    With a reference measured on ``M`` samples (``reference_q = P / M < q``, see
    :func:`empirical_edge`), both edges are Theorem 1 images of one true edge ``t``:
    ``l = t + reference_q a``, ``l' = t + q a`` with ``a = sigma^2 / t``, so
    ``a = (l' - l) / (q - reference_q)``, ``t = l - reference_q a`` and ``sigma^2 = a t`` on the
    outlier branch (``l <= l' < 2 q l / (q + reference_q)``), ``l'^2 / (4 q)`` beyond it (the
    branches meet there); NaN where ``reference_q >= q``.

    Args:
      true_eig: the true (or reference) extremal eigenvalue(s) on ``side``.
      emp_eig: the empirical extremal eigenvalue(s) on ``side``.
      q: ``P / N`` (> 0).
      side: ``"top"`` or ``"bottom"``.
      reference_q: ``P / M`` of a reference measured on ``M`` samples; 0: the true edge.

    Returns:
      The implied per-sample element variance ``sigma^2`` (broadcast shape).

    Example:
      >>> from jaxspec.rmt import implied_sigma2
      >>> float(implied_sigma2(2.0, 2.5, q=4.0))             # 2 + s^2/2 = 2.5: s^2 = 1
      0.25
      >>> float(implied_sigma2(-0.01, -2.0, q=4.0, side="bottom"))   # bulk edge: s = 1
      0.25
      >>> float(implied_sigma2(2.125, 2.5, q=4.0, reference_q=1.0))  # empirical_edge's example
      0.25
    """
    _check_side(side)
    _check_nonneg("q", q, strict=True, nan_ok=True)  # NaN: P / N unknown, so is the answer
    _check_nonneg("reference_q", reference_q)
    l, lp = jnp.broadcast_arrays(_float(true_eig), _float(emp_eig))
    return _implied_sigma2(l, lp, q, reference_q, top=side == "top")


@functools.partial(jax.jit, static_argnames="top")
def _implied_sigma2(l, lp, q, q_ref, *, top):
    if not top:
        l, lp = -l, -lp
    a = (lp - l) / (q - q_ref)  # sigma^2 / t, t the true edge; q_ref = 0: (lp - l) / q
    t = l - q_ref * a
    outlier = (l > 0) & (lp >= l) & (lp * (q + q_ref) < 2.0 * q * l) & (q > q_ref)
    edge = (lp > 0) & (lp * (q + q_ref) >= 2.0 * q * l) & (q > q_ref)
    return jnp.where(outlier, a * t, jnp.where(edge, lp * lp / (4.0 * q), jnp.nan))


# ---- Marchenko-Pastur -------------------------------------------------------------------------

def marchenko_pastur_edges(*, ratio: float, variance: float = 1.0) -> Edges:
    """Support of the continuous part of the Marchenko-Pastur law:
    ``[v (1 - sqrt(c))^2, v (1 + sqrt(c))^2]`` for ratio ``c`` and variance ``v``.

    Example:
      >>> from jaxspec.rmt import marchenko_pastur_edges
      >>> [float(e) for e in marchenko_pastur_edges(ratio=0.25, variance=2.0)]
      [0.5, 4.5]
    """
    _check_nonneg("ratio", ratio, strict=True)
    _check_nonneg("variance", variance, strict=True)
    c = _float(ratio)
    r = jnp.sqrt(c)
    return Edges(variance * (1.0 - r) ** 2, variance * (1.0 + r) ** 2)


def marchenko_pastur_atom(*, ratio: float) -> float:
    """The mass of the Marchenko-Pastur law at zero: ``max(0, 1 - 1 / ratio)``.

    A ``P x P`` Wishart ``X X^T / n`` with ``P > n`` has rank ``n``, so a fraction ``1 - n / P``
    of its eigenvalues is exactly zero (so does a Gauss-Newton matrix with fewer
    sample-outputs than parameters).

    Example:
      >>> from jaxspec.rmt import marchenko_pastur_atom
      >>> marchenko_pastur_atom(ratio=4.0), marchenko_pastur_atom(ratio=0.5)
      (0.75, 0.0)
    """
    if not ratio > 0:
        raise ValueError(f"ratio must be > 0, got {ratio}")
    return max(0.0, 1.0 - 1.0 / float(ratio))


def marchenko_pastur_density(x: jax.typing.ArrayLike, /, *, ratio: float,
                             variance: float = 1.0) -> jax.Array:
    """Density of the continuous part of the Marchenko-Pastur law.

    The limiting eigenvalue law of ``X X^T / n`` for ``X`` of shape ``(P, n)`` with i.i.d.
    entries of mean 0 and variance ``v``, as ``P, n -> inf`` with ``P / n -> c``:
    ``rho(x) = sqrt((b - x)(x - a)) / (2 pi v c x)`` on ``[a, b]``
    (:func:`marchenko_pastur_edges`). For ``c > 1`` this part has mass ``1 / c`` and the rest
    sits at zero (:func:`marchenko_pastur_atom`). The Gauss-Newton (and Fisher) matrix
    ``J^T J / N`` is of this form, the Wishart counterpart of the GOE noise model.

    Args:
      x: points (any shape).
      ratio: ``c = P / n > 0``.
      variance: the entry variance ``v > 0``.

    Returns:
      The density at ``x``, zero outside ``[a, b]``.

    Example:
      >>> from jaxspec.rmt import marchenko_pastur_density
      >>> round(float(marchenko_pastur_density(1.0, ratio=1.0)), 6)   # sqrt(3) / (2 pi)
      0.275664
    """
    _check_nonneg("ratio", ratio, strict=True)
    _check_nonneg("variance", variance, strict=True)
    return _marchenko_pastur_density(_float(x), ratio, variance)


@jax.jit
def _marchenko_pastur_density(x, ratio, variance):
    ratio = jnp.asarray(ratio, x.dtype)
    variance = jnp.asarray(variance, x.dtype)
    a, b = variance * (1.0 - jnp.sqrt(ratio)) ** 2, variance * (1.0 + jnp.sqrt(ratio)) ** 2
    inside = (x > a) & (x < b)
    safe_x = jnp.where(inside, x, 1.0)
    num = jnp.sqrt(jnp.maximum((b - x) * (x - a), 0.0))
    return jnp.where(inside, num / (2.0 * jnp.pi * variance * ratio * safe_x), 0.0)


# ---- samplers ---------------------------------------------------------------------------------

def sample_goe(key: jax.Array, size: int, /, *, s2: float = 1.0,
               dtype: jax.typing.DTypeLike | None = None) -> jax.Array:
    """A GOE matrix ``W = B / sqrt(P)`` with element variance ``s2`` (the module's convention).

    ``W = s (G + G^T) / sqrt(2 P)`` with ``G`` i.i.d. standard normal: ``W`` is symmetric, its
    off-diagonal elements have variance ``s^2 / P`` and its diagonal ``2 s^2 / P``; its
    spectrum tends to the semicircle on ``[-2 s, 2 s]`` (:func:`semicircle_density`).

    Args:
      key: PRNG key.
      size: ``P``.
      s2: the element variance ``s^2`` of ``B``.
      dtype: float dtype (default: jax's default float).

    Returns:
      ``(P, P)`` symmetric matrix.

    Example:
      >>> import jax
      >>> from jaxspec.rmt import sample_goe
      >>> W = sample_goe(jax.random.key(0), 4, s2=2.0)
      >>> W.shape, bool((W == W.T).all())
      ((4, 4), True)
    """
    _check_nonneg("s2", s2)
    g = jax.random.normal(key, (int(size), int(size)), _default_dtype(dtype))
    return _goe_from_normal(g, s2)


# The random normals are drawn by jax.random (one compiled program, materialised) and the
# matrices assembled by a second jitted function. Drawing them inside the same jit would let XLA
# fuse the normal transform into the mirror image and evaluate it twice per pair (i, j), once
# vectorised and once not, which rounds differently: the result would be asymmetric by an ulp.
@jax.jit
def _goe_from_normal(g, s2):
    size = g.shape[0]
    return _mirror((g + g.T) * jnp.sqrt(jnp.asarray(s2, g.dtype) / (2.0 * size)))


def _mirror(a):
    """Exactly symmetric copy of the upper triangle of ``a``."""
    return jnp.triu(a) + jnp.triu(a, 1).T


def sample_spiked_goe(key: jax.Array, spikes: jax.typing.ArrayLike, size: int, /, *,
                      s2: float = 1.0, dtype: jax.typing.DTypeLike | None = None) -> jax.Array:
    """A low-rank matrix with prescribed nonzero eigenvalues plus a GOE: ``A + B / sqrt(P)``.

    ``A = U diag(spikes) U^T`` with ``U`` a Haar-random ``(P, r)`` orthonormal basis; ``B /
    sqrt(P)`` is :func:`sample_goe` with element variance ``s2``. Lemma 3 predicts the outliers
    (:func:`spiked_eigenvalues`).

    Args:
      key: PRNG key.
      spikes: ``(r,)`` nonzero eigenvalues of ``A`` (``r < P``).
      size: ``P``.
      s2: the element variance of ``B``.
      dtype: float dtype (default: jax's default float).

    Returns:
      ``(P, P)`` symmetric matrix.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec.rmt import sample_spiked_goe
      >>> M = sample_spiked_goe(jax.random.key(0), [5.0, -3.0], 8, s2=0.0)
      >>> [round(float(e), 3) for e in jnp.linalg.eigvalsh(M)[jnp.array([0, -1])]]
      [-3.0, 5.0]
    """
    _check_nonneg("s2", s2)
    dtype = _default_dtype(dtype)
    spikes = jnp.asarray(spikes, dtype).reshape(-1)
    r = spikes.shape[0]
    if r >= size:
        raise ValueError(f"need fewer spikes than the dimension, got {r} >= {size}")
    k_basis, k_noise = jax.random.split(key)
    basis = jax.random.normal(k_basis, (int(size), r), dtype)
    noise = jax.random.normal(k_noise, (int(size), int(size)), dtype)
    return _spiked_from_normal(basis, noise, spikes, s2)


@jax.jit
def _spiked_from_normal(basis, noise, spikes, s2):
    u, _ = jnp.linalg.qr(basis)
    low_rank = jnp.matmul(u * spikes, u.T, precision=jax.lax.Precision.HIGHEST)
    return _mirror(low_rank + _goe_from_normal(noise, s2))


def sample_wishart(key: jax.Array, size: int, num_samples: int, /, *, variance: float = 1.0,
                   dtype: jax.typing.DTypeLike | None = None) -> jax.Array:
    """A Wishart matrix ``X X^T / n``, ``X`` of shape ``(P, n)`` with i.i.d. ``N(0, variance)``.

    Its spectrum tends to the Marchenko-Pastur law with ``ratio = P / n``
    (:func:`marchenko_pastur_density`).

    Args:
      key: PRNG key.
      size: ``P``.
      num_samples: ``n``.
      variance: entry variance of ``X``.
      dtype: float dtype (default: jax's default float).

    Returns:
      ``(P, P)`` symmetric positive semi-definite matrix.

    Example:
      >>> import jax
      >>> from jaxspec.rmt import sample_wishart
      >>> sample_wishart(jax.random.key(0), 3, 10).shape
      (3, 3)
    """
    _check_nonneg("variance", variance)
    x = jax.random.normal(key, (int(size), int(num_samples)), _default_dtype(dtype))
    return _wishart_from_normal(x, variance)


@jax.jit
def _wishart_from_normal(x, variance):
    w = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
    return _mirror(w * (jnp.asarray(variance, x.dtype) / x.shape[1]))


# ---- sigma^2 from mini-batch HVPs -------------------------------------------------------------

def _sampling_factor(batch_size: int, num_samples: int, replace: bool) -> float:
    b, n = int(batch_size), int(num_samples)
    if not 1 <= b <= n:
        raise ValueError(f"need 1 <= batch_size <= num_samples, got {b} and {n}")
    if replace:
        if n < 2:
            raise ValueError("need num_samples >= 2")
        return (1.0 - 1.0 / n) / b
    if b == n:
        raise ValueError("batch_size == num_samples without replacement: every batch is the "
                         "full data set and carries no information about sigma^2")
    return 1.0 / b - 1.0 / n


def noise_variance(batch_hvps: jax.typing.ArrayLike, full_hvp: jax.typing.ArrayLike,
                   probes: jax.typing.ArrayLike, /, *, batch_size: int, num_samples: int,
                   replace: bool = False) -> NoiseVariance:
    """Estimates the per-sample Hessian element variance ``sigma^2`` from mini-batch HVPs.

    Model: the loss is the mean over N samples, sample ``i`` has Hessian ``H_i = H + E_i`` with
    ``E_i`` i.i.d., symmetric, mean zero, and its elements ``E_i[j, k]`` (``j <= k``, diagonal
    included) independent of variance ``sigma^2``. A mini-batch ``B`` of ``b`` samples has
    ``H_B = (1/b) sum_{i in B} H_i``; the full data ``H_N = (1/N) sum_i H_i``.

    Derivation. Fix a probe ``v`` (independent of the ``E_i``) and let ``u_i = E_i v``. Row
    ``j`` of ``E_i`` holds ``P`` distinct independent elements, so
    ``Var((E_i v)_j) = sigma^2 |v|^2`` and ``E|u_i|^2 = P sigma^2 |v|^2``. The deviation
    ``d_B = H_B v - H_N v = mean_{i in B} u_i - mean_i u_i`` is a sample mean minus the
    population mean of the N fixed vectors ``u_i``. For ``B`` a simple random sample without
    replacement, the finite-population formula gives ``E[|d_B|^2 | u] = (1/b - 1/N) S^2`` with
    ``S^2 = sum_i |u_i - mean u|^2 / (N - 1)``, and ``E[S^2] = P sigma^2 |v|^2`` (the unbiased
    sample variance of i.i.d. vectors), so, exactly (no large-N approximation),

        ``E |H_B v - H_N v|^2 = P sigma^2 |v|^2 c``,  ``c = 1/b - 1/N``

    (with replacement: ``c = (1 - 1/N) / b``). The estimator, pooled over ``m`` batches and
    ``k`` probes ``v_p``, is unbiased:

        ``sigma2_hat = sum_{p, B} |H_B v_p - H_N v_p|^2 / (m c P sum_p |v_p|^2)``.

    Each batch needs only to be marginally a simple random sample: the disjoint batches of one
    shuffled pass qualify (their correlation changes the variance of the estimate, not its mean).
    Its relative standard deviation is about ``sqrt(2 / (k m P))`` for ``m << N``.

    Theorem 1 then takes ``s^2 = q sigma2_hat``; note ``E|H_N v - H v|^2 = s^2 |v|^2``.

    Assumptions and caveats. (1) If the diagonal has the GOE variance ``2 sigma^2``,
    ``Var((E_i v)_j) = sigma^2 (|v|^2 + v_j^2)`` and the estimate is biased up by exactly
    ``(P + 1) / P``, for any probe: negligible. (2) Correlated or unequal elements: the same
    computation gives ``E|u_i - E u_i|^2 = v^T C v`` with ``C = E[(E_i - E E_i)^2]``, so the
    estimate is
    ``sum_p v_p^T C v_p / (P sum_p |v_p|^2)``, the average element variance along the probe
    directions; for random probes with ``E[v v^T] = I`` its mean is
    ``tr C / P^2 = (1/P^2) sum_{j,k} Var(E[j, k])``, the mean variance over all ``P^2``
    elements, which is the ``sigma^2`` Theorem 1 wants when the variance profile is roughly flat.
    (3) ``H_N`` must be the mean over the same N samples the batches are drawn from, and every
    HVP must be taken at the same parameters in the same mode (e.g. BatchNorm in eval mode).

    Args:
      batch_hvps: ``(m, P)`` mini-batch HVPs ``H_B v`` for one probe, or ``(k, m, P)`` for ``k``
        probes.
      full_hvp: ``(P,)`` or ``(k, P)``: ``H_N v`` for each probe.
      probes: ``(P,)`` or ``(k, P)``: the probe vectors ``v`` (any norm; random ones
        recommended, e.g. :func:`jaxspec.random_probe`).
      batch_size: ``b``, samples per batch (the loss is the batch mean).
      num_samples: ``N``, the samples ``H_N`` averages over.
      replace: whether each batch's samples are drawn with replacement.

    Returns:
      :class:`NoiseVariance` ``(sigma2, per_probe, stderr)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.rmt import noise_variance
      >>> v = jnp.ones(2)
      >>> hb = jnp.array([[1.0, 0.0], [-1.0, 0.0]])     # H_B v - H_N v for 2 batches
      >>> float(noise_variance(hb, jnp.zeros(2), v, batch_size=1, num_samples=2).sigma2)
      0.5
    """
    hb = _float(batch_hvps)
    hn = jnp.asarray(full_hvp, hb.dtype)
    v = jnp.asarray(probes, hb.dtype)
    if hb.ndim == 2:
        hb, hn, v = hb[None], hn.reshape(1, -1), v.reshape(1, -1)
    if hb.ndim != 3 or hn.shape != (hb.shape[0], hb.shape[2]) or v.shape != hn.shape:
        raise ValueError(f"shapes do not fit: batch_hvps {hb.shape}, full_hvp {hn.shape}, "
                         f"probes {v.shape}; want (k, m, P), (k, P), (k, P) or (m, P), (P,), (P,)")
    norms = jnp.sum(v * v, axis=-1)
    if not isinstance(norms, jax.core.Tracer) and not bool(jnp.all(norms > 0)):
        raise ValueError("every probe must be nonzero: its squared norm divides the estimate")
    c = _sampling_factor(batch_size, num_samples, replace)
    partition = not replace and hb.shape[1] * batch_size == num_samples
    return _noise_variance(hb, hn, v, c, partition)


@functools.partial(jax.jit, static_argnums=4)
def _noise_variance(hb, hn, v, c, partition):
    dev = hb - hn[:, None, :]                                         # (k, m, P)
    dev2 = jnp.sum(dev ** 2, axis=-1)                                 # (k, m)
    base = c * hb.shape[2] * jnp.sum(v * v, axis=-1)                  # (k,)
    scale = jnp.broadcast_to(base[:, None], dev2.shape)
    if not partition:
        return _from_terms(dev2, scale)
    m = dev.shape[1]
    t = jnp.arange(2, m + 1, dtype=dev.dtype)                         # Helmert contrasts
    before = jnp.cumsum(dev, axis=1)[:, :-1] / (t - 1)[None, :, None]  # mean of the first t - 1
    contrasts = (t - 1) / t * jnp.sum((dev[:, 1:] - before) ** 2, axis=-1)
    return _from_terms(dev2, scale, contrasts / (base[:, None] * m / (m - 1)))


@jax.jit
def _from_terms(dev2, scale, error_terms=None) -> NoiseVariance:
    """Estimates from squared deviations ``dev2`` whose expectations are ``sigma^2 * scale``;
    the standard error from ``error_terms`` (each of expectation ``sigma^2``) where given, else
    from ``dev2 / scale``."""
    per_probe = jnp.sum(dev2, axis=1) / jnp.sum(scale, axis=1)
    pooled = jnp.sum(dev2) / jnp.sum(scale)
    terms = (dev2 / scale if error_terms is None else error_terms).reshape(-1)
    n_terms = terms.shape[0]
    stderr = (jnp.std(terms, ddof=1) / jnp.sqrt(n_terms) if n_terms > 1
              else jnp.asarray(jnp.nan, terms.dtype))
    return NoiseVariance(pooled, per_probe, stderr)


def estimate_noise_variance(hvp_on_batch: Callable[[int, jax.Array], jax.Array],
                            probes: jax.typing.ArrayLike, /, *, num_batches: int,
                            batch_size: int, num_samples: int,
                            full_hvp: Callable[[jax.Array], jax.Array] | None = None,
                            replace: bool = False) -> NoiseVariance:
    """:func:`noise_variance` driven by an HVP callable, streaming: ``O(P)`` memory.

    Per probe it calls ``hvp_on_batch`` once per batch and keeps only running sums, never the
    ``(num_batches, P)`` stack, so it scales to networks with millions of parameters.

    * With ``full_hvp``: one full-data HVP per probe, then the squared deviation of each batch
      from it, exactly as :func:`noise_variance` (where the batches partition the data set, the
      standard error from the Helmert contrasts of the deviations, as there).
    * Without: the batches must partition the data set (``num_batches * batch_size ==
      num_samples``, without replacement), so their mean is ``H_N v`` exactly and no extra pass
      over the data is needed. The sum of squared deviations from that mean is accumulated by
      Welford's update, ``M2 += (t - 1) / t |x_t - mean_{t-1}|^2``; its ``m - 1`` increments are
      the Helmert contrasts of the batch HVPs, uncorrelated with equal means for exchangeable
      batches, and serve as the terms of ``stderr``. ``sigma2`` equals :func:`noise_variance`
      with the mean as ``full_hvp``.

    Args:
      hvp_on_batch: ``(i, v) -> H_{B_i} v`` for batch index ``i in range(num_batches)``, on flat
        vectors of length P (the Hessian of the batch-mean loss).
      probes: ``(P,)`` or ``(k, P)`` probe vectors.
      num_batches: ``m`` (``>= 2`` without ``full_hvp``).
      batch_size: ``b``.
      num_samples: ``N``.
      full_hvp: ``v -> H_N v`` over all N samples, or None (see above).
      replace: whether each batch's samples are drawn with replacement.

    Returns:
      :class:`NoiseVariance`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec.rmt import estimate_noise_variance
      >>> E = jax.random.normal(jax.random.key(0), (64, 50, 50))
      >>> E = jnp.triu(E) + jnp.swapaxes(jnp.triu(E, 1), 1, 2)       # sigma^2 = 1
      >>> hvp_on_batch = lambda i, v: E[8 * i: 8 * i + 8].mean(0) @ v
      >>> v = jax.random.normal(jax.random.key(1), (4, 50))
      >>> r = estimate_noise_variance(hvp_on_batch, v, num_batches=8, batch_size=8,
      ...                             num_samples=64)
      >>> bool(abs(r.sigma2 - 1.0) < 0.1)
      True
    """
    v = _float(probes)
    v2 = v.reshape(1, -1) if v.ndim == 1 else v
    p = v2.shape[1]
    c = _sampling_factor(batch_size, num_samples, replace)
    if full_hvp is None and (replace or num_batches * batch_size != num_samples
                             or num_batches < 2):
        raise ValueError("without full_hvp the batches must partition the data set: need "
                         "num_batches * batch_size == num_samples, num_batches >= 2 and "
                         "replace=False")
    partition = not replace and num_batches * batch_size == num_samples
    dev2, scale, contrasts = [], [], []
    for vp in v2:
        base = c * p * float(jnp.vdot(vp, vp))
        if full_hvp is not None:
            f = jnp.asarray(full_hvp(vp))
            devs, mean, terms = [], None, []
            for i in range(num_batches):
                d = jnp.asarray(hvp_on_batch(i, vp)) - f
                devs.append(_sq_dist(d, 0.0))
                if partition and mean is None:
                    mean = d
                elif partition:  # the Helmert contrasts of the deviations, by Welford's update
                    mean, term = _welford(mean, d, i + 1)
                    terms.append(term)
            dev2.append(devs)
            scale.append([base] * num_batches)
            contrasts.append([float(x) / (base * num_batches / (num_batches - 1))
                              for x in terms])
        else:
            mean, terms = jnp.asarray(hvp_on_batch(0, vp)), []
            for t in range(2, num_batches + 1):
                mean, term = _welford(mean, jnp.asarray(hvp_on_batch(t - 1, vp)), t)
                terms.append(term)
            dev2.append(terms)
            # E[M2] = m c P sigma^2 |v|^2, spread evenly over the m - 1 contrasts
            scale.append([base * num_batches / (num_batches - 1)] * (num_batches - 1))
    dev2 = jnp.asarray([[float(d) for d in row] for row in dev2], v2.dtype)
    if full_hvp is not None and partition:
        return _from_terms(dev2, jnp.asarray(scale, v2.dtype), jnp.asarray(contrasts, v2.dtype))
    return _from_terms(dev2, jnp.asarray(scale, v2.dtype))


@jax.jit
def _sq_dist(x, y):
    d = x - y
    return jnp.vdot(d, d)


@jax.jit
def _welford(mean, x, t):
    """One Welford step: the new mean and the increment ``(t - 1) / t |x - mean|^2`` of M2."""
    delta = x - mean
    return mean + delta / t, (t - 1) / t * jnp.vdot(delta, delta)
