"""The study's predictions of the held-out empirical extremal eigenvalues, beyond Theorem 1.

Everything here maps quantities measured on *fresh* samples (the True Hessian's Ritz pairs,
the noise couplings of :func:`experiments.true_hessian.measure.noise_couplings`, the True GGN's
spectrum) through :mod:`jaxspec.outliers`; nothing reads the empirical matrices it predicts.

* Hessian, second order (:func:`hessian_predictions`): the coupling ``c_j`` of the per-sample
  noise to the true extremal Ritz vector ``u``, resolved over the other Ritz vectors ``v_j``
  (levels ``theta_j``), the part outside the Krylov space as a level at 0;
  ``lambda' = lambda + (1/N) sum_j c_j / (lambda - theta_j)`` (plain) or with ``lambda'`` in
  the denominators (self-consistent, Brillouin-Wigner).
* GGN, Wishart (:func:`ggn_predictions`): the empirical GGN is ``(1/N) sum_i J_i^T L_i J_i``,
  a sample second-moment matrix of ``N (K - 1)`` vectors (``L_i``, the softmax Hessian, has
  rank ``K - 1``) whose population matrix is the True GGN: Baik-Silverstein with
  ``gamma = P / (N (K - 1))`` and the True GGN's spectrum as the population law, and the
  isotropic BBP formula with ``sigma^2 = tr(GGN) / P`` (its mean eigenvalue).

The "True" matrices are themselves means over ``M`` fresh samples, so their edges carry the
same kind of shift at ``1/M``, and what is measured is ``lambda(H_N) - lambda(H_M)``. Each
predictor therefore runs with ``1/N - 1/M`` in place of ``1/N`` (``q`` and ``gamma`` scaled
alike; Theorem 1 undoes the reference's shift exactly, :func:`jaxspec.rmt.empirical_edge`'s
``reference_q``): predicting the full ``1/N`` shift from ``lambda(H_M)`` would over-predict the
measured one by ``M / (M - N)``, 2x at ``q = 2 P / M``.

The shift beyond first order (``reference="rayleigh"``): measured against the Rayleigh quotient
``u^T H_N u`` of the held-out matrix along the True Hessian's extremal Ritz vector ``u`` instead
of against ``lambda(H_M)``, the first-order terms ``u^T E_N u`` of the two cancel, so one draw
scatters far less (by the error of ``u`` times ``|E_N|``). Its mean is the ``1/N`` shift of
``lambda(H_N)`` plus ``lambda - E[u^T H u] = (1/M) sum_j c_j / (lambda - theta_j)`` (``u`` is
``H_M``'s vector, tilted by ``H_M``'s noise), so the perturbative and Wishart predictors run
with ``1/N + 1/M`` (to first order in ``1/M``, as above); Theorem 1 undoes the reference's shift
exactly (:func:`theorem1_rayleigh`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxspec import Spectrum
from jaxspec.outliers import perturbative_edge, population_outlier, spiked_covariance_edge

__all__ = ["REFERENCES", "effective_samples", "ggn_predictions", "hessian_predictions",
           "theorem1_rayleigh"]

#: What a held-out extremal eigenvalue is measured against: the True Hessian's eigenvalue
#: ``lambda(H_M)`` (the shift at ``1/N - 1/M``) or the held-out matrix's Rayleigh quotient along
#: the True Hessian's eigenvector, ``u^T H_N u`` (the shift beyond first order, at ``1/N + 1/M``).
REFERENCES = ("eigenvalue", "rayleigh")


def hessian_predictions(pairs: dict[str, dict[str, Any]], couplings: dict[str, dict[str, Any]],
                        n: int, /, *, m: float = math.inf, reference: str = "eigenvalue",
                        sides: tuple[str, ...] = ("top", "bottom")) -> dict[str, float]:
    """Second-order predictions of the held-out extremal eigenvalues (plain ``pert_*`` and
    self-consistent ``bw_*``) from the True Hessian's Ritz pairs and the noise couplings, and
    (``reference="eigenvalue"``) ``fluct_*``: the standard deviation ``sqrt(c_uu (1/N + 1/M))``
    of the first-order terms ``u^T E u`` of the two matrices (mean 0), the scatter of one
    measured shift about the predicted mean.

    Args:
      pairs: ``{"top", "bottom"}`` Ritz pairs (``values`` ascending) of the True Hessian, from
        :func:`experiments.true_hessian.measure.spectrum_with_ritz_vectors`.
      couplings: ``{"top", "bottom"}`` from
        :func:`experiments.true_hessian.measure.noise_couplings` over those pairs' vectors.
      n: ``N``, the held-out sample count.
      m: ``M``, the True Hessian's sample count (> ``N``).
      reference: ``"eigenvalue"``: the shift from ``lambda(H_M)``, at ``1/N - 1/M``;
        ``"rayleigh"``: the shift from ``u^T H_N u``, at ``1/N + 1/M`` (the module docstring).
        Either way the predicted shift is the returned value minus the True Hessian's
        eigenvalue.
      sides: the sides to predict (``couplings`` needs only those); the same predictor serves
        the GGN's top eigenvalue, with its pairs and ``kind="ggn"`` couplings.

    Example:
      >>> import numpy as np
      >>> from experiments.true_hessian.theory import hessian_predictions
      >>> pairs = {s: {"values": np.array([-1.0, 0.0, 2.0])} for s in ("top", "bottom")}
      >>> coup = {"top": {"couplings": np.array([0.0, 4.0, 0.0]), "rest": 0.0},
      ...         "bottom": {"couplings": np.array([0.0, 1.0, 0.0]), "rest": 0.0}}
      >>> d = hessian_predictions(pairs, coup, 1)   # top: 2 + 4 / 2; z = 2 + 4 / z
      >>> d["pert_lambda_max"], round(d["bw_lambda_max"], 4), d["pert_lambda_min"]
      (4.0, 3.2361, -2.0)
      >>> hessian_predictions(pairs, coup, 1, m=2)["pert_lambda_max"]   # 1/1 - 1/2 of the shift
      3.0
      >>> hessian_predictions(pairs, coup, 2, m=4, reference="rayleigh")["pert_lambda_max"]
      3.5
    """
    n_eff = effective_samples(n, m, reference)
    out = {}
    for side, idx, key in (("top", -1, "max"), ("bottom", 0, "min")):
        if side not in sides:
            continue
        values = np.asarray(pairs[side]["values"], np.float64)
        c = np.asarray(couplings[side]["couplings"], np.float64)
        keep = np.arange(values.size) != idx % values.size  # every level but lambda's own
        levels = np.append(values[keep], 0.0)
        cs = np.append(c[keep], couplings[side]["rest"])
        if reference == "eigenvalue":  # the std of u^T (E_N - E_M) u
            out[f"fluct_{key}"] = float(np.sqrt(c[idx] * (1 / n + 1 / m)))
        for name, sc in (("pert", False), ("bw", True)):
            out[f"{name}_lambda_{key}"] = float(perturbative_edge(
                values[idx], cs, levels, num_samples=n_eff, side=side, self_consistent=sc))
    return out


def effective_samples(n: int, m: float, reference: str = "eigenvalue", /) -> float:
    """The sample count whose shift is the measured one: ``1 / (1/N - 1/M)`` against the True
    Hessian's eigenvalue, ``1 / (1/N + 1/M)`` against the Rayleigh quotient along its vector
    (:data:`REFERENCES`; the module docstring).

    Example:
      >>> from experiments.true_hessian.theory import effective_samples
      >>> effective_samples(100, 400), effective_samples(100, 400, "rayleigh")
      (133.33333333333334, 80.0)
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if not m > n:
        raise ValueError(f"the True Hessian needs more samples than the empirical one: M = {m}, "
                         f"N = {n}")
    return 1.0 / (1.0 / n + (1.0 if reference == "rayleigh" else -1.0) / m)


def ggn_predictions(true_ggn: Spectrum, n: int, num_classes: int, /, *,
                    m: float = math.inf, reference: str = "eigenvalue") -> dict[str, float]:
    """The Wishart predictions of the held-out empirical GGN's top eigenvalue.

    ``ggn_pred_lambda_max``: Baik-Silverstein, the True GGN's top Ritz value as the spike and
    its other SLQ nodes as the population law, ``gamma = P (1/N - 1/M) / (K - 1)`` (the True
    GGN's own ``M`` samples, see the module docstring; ``1/N + 1/M`` with
    ``reference="rayleigh"``, the shift from the held-out GGN's Rayleigh quotient along the True
    GGN's top vector, as in :func:`hessian_predictions`); ``ggn_pred_iso_lambda_max``: BBP with
    ``sigma^2 = tr(GGN) / P`` (the spectrum's mean). With several probes every probe finds the
    spike: its copies (nodes within ``1e-3`` of it, relatively) leave the population law, which
    would otherwise hold the spike's own weight next to it.

    Example:
      >>> from jaxspec import Spectrum
      >>> from experiments.true_hessian.theory import ggn_predictions
      >>> s = Spectrum([1.0, 5.0], [0.99, 0.01], meta={"P": 100})
      >>> d = ggn_predictions(s, 50, 3)   # gamma = 100 / 100 = 1
      >>> round(d["ggn_pred_lambda_max"], 4), round(d["ggn_sigma2"], 4), d["ggn_gamma"]
      (6.25, 1.04, 1.0)
      >>> two = Spectrum([1.0, 5.0, 1.0, 5.0], [0.495, 0.005, 0.495, 0.005], meta={"P": 100})
      >>> ggn_predictions(two, 50, 3)["ggn_pred_lambda_max"] == d["ggn_pred_lambda_max"]
      True
    """
    p = int(true_ggn.meta["P"])
    gamma = p / (effective_samples(n, m, reference) * (num_classes - 1))
    nodes, weights = np.asarray(true_ggn.nodes), np.asarray(true_ggn.weights)
    top = int(np.argmax(nodes))
    rest = np.abs(nodes - nodes[top]) > 1e-3 * abs(nodes[top])
    bulk = np.clip(nodes[rest], 0.0, None)  # Ritz values of a PSD matrix: >= 0 up to rounding
    sigma2 = float(np.sum(nodes * weights) / np.sum(weights))
    return {"ggn_gamma": gamma, "ggn_sigma2": sigma2,
            "ggn_pred_lambda_max": float(population_outlier(nodes[top], bulk, weights[rest],
                                                            gamma=gamma)),
            "ggn_pred_iso_lambda_max": float(spiked_covariance_edge(nodes[top], gamma=gamma,
                                                                    sigma2=sigma2))}


def theorem1_rayleigh(lam_m: float, /, *, p: int, n: int, m: float, sigma2: float,
                      side: str = "top") -> float:
    """Theorem 1's prediction against the Rayleigh reference, as the value ``lambda(H_M) + D``
    (``D = lambda(H_N) - u_M^T H_N u_M``, :data:`REFERENCES`; NaN where ``lambda(H_M)`` is not
    an outlier at ``q_M = P / M``).

    In the spiked GOE the true spike is ``theta = `` :func:`jaxspec.rmt.true_edge` of
    ``lambda(H_M)`` at ``q_M``; ``E[lambda(H_N)]`` is Theorem 1's edge at ``q_N = P / N`` and
    ``E[u_M^T H_N u_M] = theta |u . u_M|^2 = theta - q_M sigma^2 / theta`` (the outlier
    eigenvector's overlap ``1 - s^2 / theta^2``), so the True Hessian's own ``1/M`` shift is
    undone on both sides, the edge below the transition at ``q_N`` included.

    Example:
      >>> from experiments.true_hessian.theory import theorem1_rayleigh
      >>> # theta = 1, sigma2 = 0.3, q_N = 1, q_M = 0.25: D = sigma2 (q_N + q_M) / theta = 0.375
      >>> round(theorem1_rayleigh(1.075, p=100, n=100, m=400, sigma2=0.3) - 1.075, 6)
      0.375
    """
    from jaxspec import rmt

    q_n, q_m = p / n, p / m
    theta = float(rmt.true_edge(np.float64(lam_m), q=q_m, sigma2=sigma2, side=side).value)
    if not math.isfinite(theta):
        return float("nan")
    edge = float(rmt.empirical_edge(np.float64(theta), q=q_n, sigma2=sigma2, side=side))
    return lam_m + edge - (theta - q_m * sigma2 / theta)
