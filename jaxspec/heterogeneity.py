"""How different the spectra of parameter blocks are: Jensen-Shannon distances between densities.

Zhang et al. (2024), "Why Transformers Need Adam: A Hessian Perspective", call a model's Hessian
*block-heterogeneous* when the spectra of its parameter blocks (:func:`jaxspec.block_spectra`)
differ, and measure it by the Jensen-Shannon distance between block densities, averaged over all
pairs of blocks. Here:

* :func:`js_distance` of two discrete distributions ``p, q``: the square root of the
  Jensen-Shannon divergence in bits, ``sqrt(KL(p | m) / 2 + KL(q | m) / 2)`` with
  ``m = (p + q) / 2``: a metric, 0 for equal distributions, 1 for disjoint ones (the definition of
  ``scipy.spatial.distance.jensenshannon(p, q, base=2)``).
* :func:`block_densities` puts every block's SLQ spectrum on one grid. Block scales differ by
  orders of magnitude, so the grid is uniform in ``u = asinh(lambda / tau)``, linear near 0 and
  logarithmic in ``|lambda|`` beyond ``tau``, with ``tau = floor * max |lambda|`` over all blocks
  of the model; each Ritz value is a Gaussian of width ``sigma`` in ``u``, weighted by its SLQ
  weight. Scaling the whole Hessian by ``c > 0`` scales ``tau`` too and leaves every density,
  hence every distance, unchanged: models of different loss scales compare fairly.
* :func:`js_matrix` holds the distance of every pair of blocks and :func:`heterogeneity` the mean
  over the pairs (Zhang et al.'s JS averaged over block pairs; they report it at
  initialisation as ``JS^0``).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from jaxspec.slq import Spectrum

__all__ = ["block_densities", "heterogeneity", "js_distance", "js_matrix"]


def js_distance(p: np.ndarray, q: np.ndarray, /) -> float:
    """Jensen-Shannon distance (base 2, in ``[0, 1]``) of two discrete distributions.

    ``p`` and ``q`` are non-negative weights on the same points; each is normalised to sum 1.

    Raises:
      ValueError: different shapes, a negative or non-finite weight, or an all-zero input.

    Example:
      >>> js_distance([1.0, 0.0], [0.0, 1.0]), js_distance([1.0, 3.0], [2.0, 6.0])
      (1.0, 0.0)
    """
    p, q = (np.asarray(a, np.float64).reshape(-1) for a in (p, q))
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same length, got {p.size} and {q.size}")
    for name, a in (("p", p), ("q", q)):
        if not np.all(np.isfinite(a)) or np.any(a < 0) or not a.sum() > 0:
            raise ValueError(f"{name} must be finite non-negative weights, not all zero")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = (a > 0) & (m > 0)  # 0 log 0 = 0; m >= a / 2 > 0 but for denormals halved to 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    divergence = 0.5 * kl(p) + 0.5 * kl(q)
    return float(np.sqrt(min(max(divergence, 0.0), 1.0)))  # rounding can leave [0, 1]


def block_densities(spectra: Mapping[str, Spectrum], /, *, num_points: int = 1024,
                    floor: float = 1e-3, sigma: float = 1.0
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every block's spectrum as a density on one grid in ``u = asinh(lambda / tau)``.

    Args:
      spectra: ``{block name: Spectrum}`` (e.g. from :func:`jaxspec.block_spectra`).
      num_points: grid points.
      floor: ``tau = floor * max |lambda|`` over all blocks: eigenvalues below ``tau`` in
        magnitude are on a linear scale, above it on a logarithmic one.
      sigma: width of each Ritz value's Gaussian in ``u`` (``asinh`` units: about a factor
        ``e^sigma`` in ``|lambda|`` far from 0). A few tens of Ritz values per block are a
        sparse sample of its density: narrower Gaussians make blocks of one distribution look
        disjoint and every distance near 1.

    Returns:
      ``(lambdas, densities)``: the grid mapped back to eigenvalues, and per block its weights
      on the grid (summing to 1).

    Example:
      >>> from jaxspec import Spectrum
      >>> lam, d = block_densities({"a": Spectrum([1.0], [1.0]), "b": Spectrum([0.01], [1.0])})
      >>> round(float(lam[d["a"].argmax()]), 1), round(float(d["b"].sum()), 6)
      (1.0, 1.0)
    """
    if not spectra:
        raise ValueError("no spectra")
    scale = max(float(np.max(np.abs(s.nodes))) for s in spectra.values())
    if not scale > 0:
        raise ValueError("every spectrum is zero: no scale to compare blocks on")
    tau = floor * scale
    us = {k: np.arcsinh(s.nodes / tau) for k, s in spectra.items()}
    lo = min(u.min() for u in us.values()) - 4 * sigma
    hi = max(u.max() for u in us.values()) + 4 * sigma
    grid = np.linspace(lo, hi, num_points)
    densities = {}
    for name, s in spectra.items():
        z = (grid[:, None] - us[name][None, :]) / sigma
        d = np.exp(-0.5 * z ** 2) @ s.weights
        densities[name] = d / d.sum()
    return tau * np.sinh(grid), densities


def js_matrix(spectra: Mapping[str, Spectrum], /, **density_kwargs
              ) -> tuple[list[str], np.ndarray]:
    """Jensen-Shannon distance between the densities of every pair of blocks.

    Args:
      spectra: ``{block name: Spectrum}``.
      **density_kwargs: as for :func:`block_densities`.

    Returns:
      ``(names, D)``: ``D[i, j]`` the distance between blocks ``names[i]`` and ``names[j]``
      (symmetric, zero diagonal).

    Example:
      >>> from jaxspec import Spectrum
      >>> names, d = js_matrix({"a": Spectrum([1.0], [1.0]), "b": Spectrum([1.0], [1.0]),
      ...                       "c": Spectrum([-1.0], [1.0])})
      >>> names, d.round(3).tolist()
      (['a', 'b', 'c'], [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    """
    _, densities = block_densities(spectra, **density_kwargs)
    names = list(densities)
    d = np.zeros((len(names), len(names)))
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            d[i, j] = d[j, i] = js_distance(densities[names[i]], densities[names[j]])
    return names, d


def heterogeneity(spectra: Mapping[str, Spectrum], /, **density_kwargs) -> float:
    """Mean Jensen-Shannon distance over all pairs of blocks: 0 when all spectra are equal.

    Args:
      spectra: ``{block name: Spectrum}``, at least two blocks.
      **density_kwargs: as for :func:`block_densities`.

    Example:
      >>> from jaxspec import Spectrum
      >>> same = {"a": Spectrum([1.0, 2.0], [0.5, 0.5]), "b": Spectrum([1.0, 2.0], [0.5, 0.5])}
      >>> heterogeneity(same)
      0.0
    """
    if len(spectra) < 2:
        raise ValueError(f"heterogeneity needs at least two blocks, got {len(spectra)}")
    _, d = js_matrix(spectra, **density_kwargs)
    return float(d[np.triu_indices(len(d), k=1)].mean())
