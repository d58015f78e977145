"""Theorem 1 against ground truth: the True Hessian of a teacher-student problem, measured.

    python -m experiments.true_hessian                     # default: 3 seeds, ~3 min on 2 cores
    python -m experiments.true_hessian --preset smoke           # ~40 s; what the tests run
    python -m experiments.true_hessian --preset full --workdir runs/true_hessian_full
    python -m experiments.true_hessian --preset gpu --workdir runs/true_hessian_gpu
    python -m experiments.true_hessian --qs 0.1 1 10 --lanczos-steps 60 --num-vectors 3
    python -m experiments.true_hessian --preset smoke --set qs=0.5,2 --set lanczos_steps=12

The paper could only approximate the True Hessian (the expected Hessian under the data-generating
distribution) by augmentation. Here the distribution is ours, so fresh samples are free:

* **Teacher.** ``x ~ N(0, I_d)``; a fixed random tanh MLP (:class:`jaxspec.models.MLP`)
  gives logits ``f*(x)``; the label is *sampled* from ``softmax(teacher_scale * f*(x))``, so the Bayes error is nonzero and the
  Hessian does not collapse as the student fits its data.
* **Student.** A tanh MLP (:class:`jaxspec.models.MLP`) with ``P`` parameters (2,092 by
  default), trained on ``N`` samples by ``optax.adam`` with a cosine schedule for a *fixed
  number of steps* (the same for every N: interpolation for q >= 3, about 12 epochs at q = 0.1), plain cross-entropy, no weight decay
  (``--train-input-noise`` adds input-jitter augmentation).
* **Hessians at the final weights** (all by SLQ, :func:`jaxspec.slq`, same probe key):
  the *Empirical* Hessian over the N training samples; the *True* Hessian over ``M`` fresh
  samples (``M = true_ratio * P``, so its own sampling noise ``P / M`` is small); and a
  *held-out empirical* Hessian over N other fresh samples, which is exactly Theorem 1's setting
  (``H_true`` + a mean-zero sum of N i.i.d. per-sample terms) without the dependence of the
  weights on the training sample.
* **sigma^2** (per-sample Hessian element variance) by
  :func:`jaxspec.rmt.estimate_noise_variance` on disjoint mini-batches of the *fresh* samples:
  it is a property of the distribution at these weights, not of the training set.
* **Theory vs measurement.** :func:`jaxspec.compare.compare_spectra` with ``q = P / N`` maps the
  true extremal eigenvalues through Theorem 1 and sets them against the measured empirical ones.
  The same map with the noise variance measured *along the true extremal eigenvector*
  (``sigma2_top``, ``sigma2_bottom``: the estimator run with that eigenvector as its probe) in
  place of the mean element variance. Direct checks of the noise model:
  ``|(H_emp - H_true) v|^2 / |v|^2`` against its model value ``(q + P/M) sigma^2``; the spectrum
  of the noise matrix itself at selected q (semicircle edges ``+-2 s`` and zero skewness if it
  were a GOE); and per-sample statistics (kurtosis, share of the variance carried by the top 1 %
  of samples).

* **Predictors beyond Theorem 1** (:mod:`~experiments.true_hessian.theory`, on
  :mod:`jaxspec.outliers`; derivations in ``docs/true_hessian_theory.md``): second-order
  perturbation with the coupling ``E[(v_j^T X u)^2]`` of the per-sample noise to the true
  extremal Ritz vector ``u``, measured on fresh samples' per-sample HVPs and resolved over the
  True Hessian's Ritz vectors ``v_j`` (plain and self-consistent).
* **The shift beyond first order**: each held-out extremal eigenvalue is also measured against
  the held-out matrix's Rayleigh quotient ``u^T H_N u`` along the True Hessian's extremal Ritz
  vector (one product): the first-order terms cancel, so a mean shift is resolved by a few
  seeds where ``lambda(H_N) - lambda(H_M)`` scatters more than it moves; predicted at
  ``1/N + 1/M`` (:mod:`~experiments.true_hessian.theory`).
* **Gauss-Newton** (``kind="ggn"``): the empirical, held-out and true GGN, the Wishart
  (Baik-Silverstein / BBP) prediction of the held-out GGN's top eigenvalue, and the residual
  ``H - GGN`` on the training and on the held-out set.
* **Seeds.** ``--seeds k`` repeats everything but the teacher for seeds ``seed ... seed+k-1``
  (points under ``seed<s>/``); the summary gives mean +- standard deviation. Every extremal
  Ritz value's residual norm is recorded (``ritz_residual_*`` in each spectrum's meta).

Costs: every HVP is over zero-weight-padded batches of one shape (one compilation for the whole
study); the operators are :func:`jaxspec.curvature_operator` with the host reduction and
host-driven Lanczos on CPU, ``lax.scan`` and compiled Lanczos on GPU (``--driver``).

Layout: :mod:`~experiments.true_hessian.config` (:class:`StudyConfig`, the presets
``default``, ``smoke``, ``full``, ``gpu``), :mod:`~experiments.true_hessian.measure` (data,
training, operators, spectra, noise statistics and couplings),
:mod:`~experiments.true_hessian.theory` (the predictions),
:mod:`~experiments.true_hessian.report` (tables, summaries, figures),
:mod:`~experiments.true_hessian.main` (:func:`run_study`, the CLI).

Repeated over a sweep of ``q`` (default 0.1 ... 10). Everything goes under ``--workdir``
(default ``runs/true_hessian``): ``config.json``; per point ``N<N>/`` with the trained
``params.npz``, raw spectra ``spectrum_{empirical,heldout,true,ggn_*,residual_*,noise_*}.json``
with their Ritz pairs ``ritz_*.npz``, comparison tables
``comparison_{train,heldout}.{md,csv,json}``, the stem plots ``spectra.png`` and ``result.json``
(written last: a rerun skips finished points and resumes an interrupted Lanczos run from its
checkpoint); over the sweep ``summary.{md,csv,json}``, ``extremal.png`` (measured and
predicted extremal eigenvalues against q) and ``beyond_first_order.png`` (the shift beyond first
order, measured and predicted, against q).

Example:
  >>> from experiments.true_hessian import get_config, preset
  >>> get_config("smoke") == preset("smoke")
  True
"""

from experiments.true_hessian.config import StudyConfig
from experiments.true_hessian.config import apply_overrides
from experiments.true_hessian.config import config_names
from experiments.true_hessian.config import get_config
from experiments.true_hessian.config import preset
from experiments.true_hessian.main import run_point
from experiments.true_hessian.main import run_study
from experiments.true_hessian.report import SUMMARY_COLUMNS
from experiments.true_hessian.report import summary_rows

__all__ = [
    "SUMMARY_COLUMNS",
    "StudyConfig",
    "apply_overrides",
    "config_names",
    "get_config",
    "preset",
    "run_point",
    "run_study",
    "summary_rows",
]
