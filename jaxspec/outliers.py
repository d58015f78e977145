"""Outlier eigenvalues of a matrix plus sampling noise, beyond Theorem 1's GOE model.

Three predictors of an extremal eigenvalue of ``H + E`` from ``H`` and statistics of ``E``
(derivations in ``docs/true_hessian_theory.md``), each a pure NumPy function:

* :func:`perturbative_edge`: second-order perturbation theory, plain (Rayleigh-Schrodinger) or
  self-consistent (Brillouin-Wigner). ``E`` is the mean of ``N`` i.i.d. zero-mean terms ``X_i``;
  the input is the measured coupling ``c_j = E[(v_j^T X u)^2]`` of the noise to the eigenvector
  ``u`` of ``lambda``, resolved over levels ``theta_j`` (eigenvalues of ``H`` with eigenvectors
  ``v_j``):  ``lambda' = lambda + (1/N) sum_j c_j / (lambda' - theta_j)``.
* :func:`outlier_equation`: Benaych-Georges and Nadakuditi (2011). A rank-one ``theta u u^T``
  plus an orthogonally invariant noise of spectral law ``mu`` has an outlier at the ``z`` beyond
  the support with ``G_mu(z) = 1 / theta`` (``G_mu`` the Stieltjes transform,
  :func:`stieltjes`). For the semicircle of variance ``s^2`` it is ``theta + s^2 / theta``:
  Lemma 3 (:func:`jaxspec.rmt.spiked_edge`).
* The Wishart analogue for a sample second-moment matrix (the Gauss-Newton / Fisher case):
  :func:`spiked_covariance_edge` (Baik-Ben Arous-Peche, isotropic population) and
  :func:`population_outlier` (Baik-Silverstein: any population spectrum,
  ``psi(l) = l + gamma l int t / (l - t) dH(t)``).

Measures are given as ``(nodes, weights)``: the atoms of a discrete law, e.g. a
:class:`jaxspec.Spectrum`'s ``nodes`` and ``weights``, or a quadrature of a continuous one.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["outlier_equation", "perturbative_edge", "population_outlier",
           "spiked_covariance_edge", "stieltjes"]

Side = Literal["top", "bottom"]
_ITERATIONS = 200  # bisection steps: the bracket shrinks below float64 resolution


def _measure(nodes, weights) -> tuple[np.ndarray, np.ndarray]:
    """The law's atoms and normalised weights; atoms of weight 0 are not in its support (a
    histogram's empty bins would otherwise move its edge)."""
    t = np.asarray(nodes, np.float64).ravel()
    w = np.asarray(weights, np.float64).ravel()
    if t.shape != w.shape or t.size == 0:
        raise ValueError(f"nodes and weights must be non-empty and of one length, got "
                         f"{t.shape} and {w.shape}")
    if np.any(w < 0) or not w.sum() > 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    keep = w > 0
    return t[keep], w[keep] / w.sum()


def _check_side(side: str) -> None:
    if side not in ("top", "bottom"):
        raise ValueError(f"side must be 'top' or 'bottom', got {side!r}")


def _bisect(f, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The root of ``f`` in ``[lo, hi]`` (elementwise), for ``f`` increasing with
    ``f(lo) <= 0 <= f(hi)``."""
    for _ in range(_ITERATIONS):
        mid = 0.5 * (lo + hi)
        neg = f(mid) < 0
        lo, hi = np.where(neg, mid, lo), np.where(neg, hi, mid)
    return 0.5 * (lo + hi)


def stieltjes(z, nodes, weights, /) -> np.ndarray:
    """``G(z) = sum_k w_k / (z - t_k)``: the Stieltjes transform of a discrete law (normalised).

    Example:
      >>> from jaxspec.outliers import stieltjes
      >>> stieltjes([2.0, 3.0], [0.0, 1.0], [0.5, 0.5]).round(6).tolist()  # 1/4 + 1/2, 1/6 + 1/4
      [0.75, 0.416667]
    """
    t, w = _measure(nodes, weights)
    z = np.asarray(z, np.float64)
    return np.sum(w / (z[..., None] - t), axis=-1)


def outlier_equation(theta, nodes, weights, /, *, side: Side = "top") -> np.ndarray:
    """Benaych-Georges-Nadakuditi: the outlier of ``theta u u^T + W`` for a noise ``W`` with
    spectral law ``mu = (nodes, weights)`` whose eigenvectors are uniformly random.

    Top: the root ``z > max(nodes)`` of ``G_mu(z) = 1 / theta`` (:func:`stieltjes`). ``G`` falls
    from ``G(edge)`` to 0 beyond the support, so a root exists iff ``1 / theta < G(edge)``:
    for the semicircle of variance ``s^2`` (``G(2 s) = 1 / s``) iff ``theta > s``, and then
    ``z = theta + s^2 / theta`` (Lemma 3). Otherwise the eigenvalue sticks to the edge, which is
    returned. A discrete law has ``G(max node) = inf``: every ``theta > 0`` gives a root, near
    the edge when ``theta`` is below the threshold of the law the atoms sample. Bottom: the
    mirror image (``theta < 0``, root below ``min(nodes)``).

    Args:
      theta: the spike(s) (vectorised).
      nodes, weights: the noise's spectral law.
      side: ``"top"`` or ``"bottom"``.

    Returns:
      The predicted extremal eigenvalue(s), shaped like ``theta``.

    Example:
      >>> import numpy as np
      >>> from jaxspec.outliers import outlier_equation
      >>> k = np.arange(1, 4001); a = k * np.pi / 4001             # Gauss nodes of the
      >>> t, w = 2 * np.cos(a), np.sin(a) ** 2                     # semicircle, s = 1
      >>> outlier_equation([2.0, 3.0], t, w).round(6).tolist()     # theta + 1 / theta
      [2.5, 3.333333]
      >>> float(outlier_equation(-2.0, t, w, side="bottom").round(6))
      -2.5
    """
    _check_side(side)
    t, w = _measure(nodes, weights)
    theta = np.asarray(theta, np.float64)
    if side == "bottom":
        return -outlier_equation(-theta, -t, w, side="top")
    edge = t.max()
    # G(z) <= 1 / (z - edge), so G(edge + theta) <= 1 / theta: the root lies below edge + theta
    good = theta > 0
    th = np.where(good, theta, 1.0)
    z = _bisect(lambda z: 1.0 / th - stieltjes(z, t, w), np.full_like(th, edge),
                edge + np.abs(th) + 1e-300)
    return np.where(good, z, edge)


def perturbative_edge(l, couplings, levels, /, *, num_samples: int, side: Side = "top",
                      self_consistent: bool = True) -> np.ndarray:
    """Second-order perturbation theory for the extremal eigenvalue ``l`` of ``H`` in
    ``H + E``, ``E = (1/N) sum_i X_i`` with i.i.d. zero-mean ``X_i``.

    With ``u`` the eigenvector of ``l`` and ``v_j`` the other eigenvectors (levels
    ``theta_j``), the expected second-order shift is ``(1/N) sum_j c_j / (l - theta_j)``,
    ``c_j = E[(v_j^T X u)^2]`` (the first-order term ``u^T E u`` has mean 0). The
    self-consistent (Brillouin-Wigner) form puts the perturbed eigenvalue into the
    denominators and solves ``z = l + (1/N) sum_j c_j / (z - theta_j)`` for the root beyond
    ``max(l, theta_j)`` (top; the bottom is mirrored); it stays finite for near-degenerate
    levels, where the plain form diverges. Coupling to directions outside the resolved levels
    goes in as a level of its own (e.g. at 0 for an unresolved near-null space).

    Args:
      l: the extremal eigenvalue of ``H`` (a scalar).
      couplings: ``(k,)`` the ``c_j >= 0``.
      levels: ``(k,)`` the ``theta_j`` (below ``l`` at the top, above it at the bottom).
      num_samples: ``N``.
      side: ``"top"`` or ``"bottom"``.
      self_consistent: Brillouin-Wigner (True) or plain second order (False).

    Returns:
      The predicted extremal eigenvalue of ``H + E`` (a 0-d array).

    Example:
      >>> from jaxspec.outliers import perturbative_edge
      >>> float(perturbative_edge(2.0, [3.0], [0.0], num_samples=1, self_consistent=False))
      3.5
      >>> float(perturbative_edge(2.0, [3.0], [0.0], num_samples=1).round(6))  # z = 2 + 3 / z
      3.0
    """
    _check_side(side)
    c = np.asarray(couplings, np.float64).ravel()
    th = np.asarray(levels, np.float64).ravel()
    l = float(l)
    if c.shape != th.shape or np.any(c < 0):
        raise ValueError("couplings must be >= 0 and as many as the levels")
    if not num_samples >= 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if side == "bottom":
        return -perturbative_edge(-l, c, -th, num_samples=num_samples, side="top",
                                  self_consistent=self_consistent)
    if np.any(th[c > 0] > l):
        raise ValueError("a level above the top eigenvalue couples to it: not its outlier")
    cn = c / num_samples
    if not self_consistent:
        return np.asarray(l + np.sum(cn / (l - th)))
    lo = max(l, th[c > 0].max()) if np.any(c > 0) else l
    hi = lo + np.sqrt(cn.sum()) + 1e-300  # z - l >= sqrt(C) >= sum_j c_j / (z - theta_j)
    return _bisect(lambda z: z - l - np.sum(cn / (z - th)), np.asarray(lo), np.asarray(hi))


def spiked_covariance_edge(l, /, *, gamma: float, sigma2: float = 1.0) -> np.ndarray:
    """Baik-Ben Arous-Peche: the top eigenvalue of a sample covariance matrix (``n`` samples,
    ``P / n -> gamma``) whose population covariance is ``sigma2 I`` plus one spike at ``l``.

    ``l (1 + gamma sigma2 / (l - sigma2))`` if ``l > sigma2 (1 + sqrt(gamma))``, else the
    Marchenko-Pastur edge ``sigma2 (1 + sqrt(gamma))^2``; :func:`population_outlier` with the
    law ``delta(sigma2)``.

    Example:
      >>> from jaxspec.outliers import spiked_covariance_edge
      >>> spiked_covariance_edge([5.0, 1.5], gamma=1.0).tolist()   # 5 (1 + 1/4); (1 + 1)^2
      [6.25, 4.0]
    """
    if not (gamma > 0 and sigma2 > 0):
        raise ValueError(f"gamma and sigma2 must be > 0, got {gamma}, {sigma2}")
    l = np.asarray(l, np.float64)
    crit = sigma2 * (1 + np.sqrt(gamma))
    safe = np.where(l > crit, l, 2 * crit)
    return np.where(l > crit, safe * (1 + gamma * sigma2 / (safe - sigma2)),
                    sigma2 * (1 + np.sqrt(gamma)) ** 2)


def population_outlier(l, nodes, weights, /, *, gamma: float) -> np.ndarray:
    """Baik-Silverstein: the top eigenvalue of a sample covariance (``P / n -> gamma``) whose
    population covariance has the spectral law ``H = (nodes, weights)`` (``>= 0``) plus a spike
    at ``l``.

    ``psi(l) = l + gamma l int t / (l - t) dH(t)`` if ``psi'(l) > 0``; otherwise the spike is
    swallowed and the top eigenvalue is the bulk's right edge ``psi(l_c)``, ``l_c`` the root of
    ``psi'(l) = 1 - gamma int t^2 / (l - t)^2 dH(t)`` beyond the support. With ``l`` at or
    below the support (no spike) the edge is returned.

    Example:
      >>> from jaxspec.outliers import population_outlier
      >>> population_outlier([5.0, 1.5], [1.0], [1.0], gamma=1.0).tolist()   # BBP, sigma2 = 1
      [6.25, 4.0]
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    t, w = _measure(nodes, weights)
    if np.any(t < 0):
        raise ValueError("a population covariance has no negative eigenvalue")
    l = np.asarray(l, np.float64)
    top = t.max()

    def psi(x):
        return x + gamma * x * np.sum(w * t / (x[..., None] - t), -1)

    def dpsi(x):
        return 1.0 - gamma * np.sum(w * t * t / (x[..., None] - t) ** 2, -1)

    # psi' rises from -inf (at the top atom, if it is > 0) to 1: one root; psi' = 0 at
    # top + sqrt(gamma int t^2 dH) at the latest
    if top == 0:  # a null population: the sample matrix is the spike alone
        return np.maximum(l, 0.0)
    hi = top + np.sqrt(gamma * np.sum(w * t * t)) + 1e-300
    lc = _bisect(dpsi, np.asarray(top), np.asarray(hi))
    return psi(np.maximum(l, lc))
