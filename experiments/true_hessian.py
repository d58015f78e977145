"""Theorem 1 against ground truth: the True Hessian of a teacher-student problem, measured.

    python -m experiments.true_hessian                          # default: ~1 min on 2 CPU cores
    python -m experiments.true_hessian --preset smoke           # ~30 s; what the tests run
    python -m experiments.true_hessian --preset gpu --workdir runs/true_hessian_gpu
    python -m experiments.true_hessian --qs 0.1 1 10 --lanczos-steps 60 --num-vectors 3

The paper could only approximate the True Hessian (the expected Hessian under the data-generating
distribution) by augmentation. Here the distribution is ours, so fresh samples are free:

* **Teacher.** ``x ~ N(0, I_d)``; a fixed random tanh MLP gives logits ``f*(x)``; the label is
  *sampled* from ``softmax(teacher_scale * f*(x))``, so the Bayes error is nonzero and the
  Hessian does not collapse as the student fits its data.
* **Student.** A tanh MLP with ``P`` parameters (2,092 by default), trained on ``N``
  samples by Adam with a cosine schedule for a *fixed number of steps* (the same for every N:
  interpolation for q >= 3, about 12 epochs at q = 0.1), plain cross-entropy, no weight decay
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

Costs: every HVP is over zero-weight-padded batches of one shape (one compilation for the whole
study); host-driven Lanczos on CPU, compiled on GPU (``--driver``).

Repeated over a sweep of ``q`` (default 0.1 ... 10). Everything goes under ``--workdir``
(default ``runs/true_hessian``): ``config.json``; per point ``N<N>/`` with the trained
``params.npz``, raw spectra ``spectrum_{empirical,heldout,true,noise_*}.json``, comparison tables
``comparison_{train,heldout}.{md,csv,json}``, the stem plots ``spectra.png`` and ``result.json``
(written last: a rerun skips finished points and resumes an interrupted Lanczos run from its
checkpoint); over the sweep ``summary.{md,csv,json}`` and ``extremal.png`` (measured and
predicted extremal eigenvalues against q).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxspec import (Spectrum, batch_dataset, hessian_matvec, host_hessian_matvec, hvp,
                     random_probe, resolve_driver, run_lanczos, slq)
from jaxspec import rmt
from jaxspec.atomic import replacing, write_text
from jaxspec.compare import compare_spectra

__all__ = [
    "PRESETS",
    "StudyConfig",
    "cross_entropy",
    "evaluate",
    "padded",
    "main",
    "mlp_apply",
    "mlp_init",
    "num_params",
    "preset",
    "run_study",
    "sample_data",
    "summary_rows",
    "train_student",
    "weighted_cross_entropy",
]

Params = list  # a list of {"w": (a, b), "b": (b,)} layers


# ---- configuration ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Settings of the study (saved as ``config.json``; a rerun must use the same ones).

    Attributes:
      seed: master seed (teacher, data pools, student inits, probes).
      input_dim: ``d``, inputs ``x ~ N(0, I_d)``.
      num_classes: ``K``.
      teacher_widths: hidden widths of the teacher MLP.
      teacher_scale: logit multiplier of the teacher (larger: more confident labels, lower
        Bayes error).
      student_widths: hidden widths of the student MLP (sets ``P``).
      qs: the targeted ``q = P / N``; ``N = round(P / q)``.
      true_ratio: ``M / P`` for the True Hessian (rounded up to whole noise batches).
      train_steps: Adam steps, the same for every N.
      train_batch_size: mini-batch size (batches are drawn from reshuffled epochs).
      learning_rate: peak Adam learning rate (cosine decay to 0 over ``train_steps``).
      train_input_noise: std of Gaussian jitter added to the inputs of every training batch
        (an augmentation; 0: none). The Hessians are always of the clean samples, so with
        jitter the weights do not minimise the loss whose Hessian is measured, as in the paper
        (trained with augmentation, Hessian of the un-augmented training set).
      lanczos_steps: ``m`` for the empirical and held-out Hessians.
      true_lanczos_steps: ``m`` for the True Hessian.
      num_vectors: SLQ probe vectors per spectrum (the paper: 1).
      noise_probes: probe vectors for the sigma^2 estimate and the direct noise check.
      noise_spectrum_qs: the q (nearest point) at which the noise matrices ``H_emp - H_true`` and
        ``H_heldout - H_true`` get their own SLQ (costly: an M-sample HVP per step).
      noise_lanczos_steps: ``m`` for those.
      per_sample_count: fresh samples for the per-sample statistics (0: skip).
      hvp_batch_size: samples per HVP batch, and the mini-batch size of the sigma^2 estimate.
        Every data set is zero-weight padded to whole batches (:func:`weighted_cross_entropy`),
        so all HVPs of the study share one compilation.
      driver: Lanczos driver, ``"auto"`` (host on CPU, compiled elsewhere), ``"host"``,
        ``"compiled"``.

    Example:
      >>> from experiments.true_hessian import StudyConfig, mlp_init, num_params
      >>> c = StudyConfig(qs=(1.0, 10.0), lanczos_steps=10)
      >>> c.qs, c.lanczos_steps, c.true_lanczos_steps   # unset fields keep their defaults
      ((1.0, 10.0), 10, 30)
      >>> num_params(mlp_init(c.seed, [c.input_dim, *c.student_widths, c.num_classes]))  # P
      2092
    """

    seed: int = 0
    input_dim: int = 16
    num_classes: int = 4
    teacher_widths: tuple[int, ...] = (32,)
    teacher_scale: float = 4.0
    student_widths: tuple[int, ...] = (48, 24)
    qs: tuple[float, ...] = (0.1, 0.316, 1.0, 3.16, 10.0)
    true_ratio: float = 20.0
    train_steps: int = 1000
    train_batch_size: int = 256
    learning_rate: float = 3e-3
    train_input_noise: float = 0.0
    lanczos_steps: int = 30
    true_lanczos_steps: int = 30
    num_vectors: int = 1
    noise_probes: int = 2
    noise_spectrum_qs: tuple[float, ...] = (1.0,)
    noise_lanczos_steps: int = 30
    per_sample_count: int = 2048
    hvp_batch_size: int = 2000
    driver: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists).

        Example:
          >>> StudyConfig().to_dict()["student_widths"]
          [48, 24]
        """
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudyConfig":
        """Inverse of :meth:`to_dict` (unknown keys rejected).

        Example:
          >>> c = StudyConfig(qs=(1.0, 10.0))
          >>> StudyConfig.from_dict(c.to_dict()) == c
          True
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


PRESETS: dict[str, dict[str, Any]] = {
    # ~1-1.5 minutes on 2 CPU cores: P = 2,092, M = 42,000, five q from 0.1 to 10, m = 30.
    "default": {},
    # ~30 s: the tests. P = 555, M = 6,000, q = 0.3, 1, 3, m = 20.
    "smoke": dict(input_dim=8, num_classes=3, teacher_widths=(16,), student_widths=(24, 12),
                  qs=(0.3, 1.0, 3.0), true_ratio=10.0, train_steps=300, lanczos_steps=20,
                  true_lanczos_steps=20, noise_spectrum_qs=(1.0,), noise_lanczos_steps=20,
                  per_sample_count=512, hvp_batch_size=500),
    # one GPU (untested on one so far): P = 50,826, M = 2.55 M (50 P), nine q, m = 80, 3 probes.
    "gpu": dict(input_dim=64, num_classes=10, teacher_widths=(128,), student_widths=(256, 128),
                qs=(0.1, 0.178, 0.316, 0.562, 1.0, 1.78, 3.16, 5.62, 10.0), true_ratio=50.0,
                train_steps=4000, train_batch_size=512, lanczos_steps=80,
                true_lanczos_steps=80, num_vectors=3, noise_probes=4,
                noise_spectrum_qs=(0.1, 1.0, 10.0), noise_lanczos_steps=40,
                per_sample_count=2048, hvp_batch_size=50000),
}


def preset(name: str, /, **overrides: Any) -> StudyConfig:
    """The named preset (``default``, ``smoke``, ``gpu``) with ``overrides`` applied.

    Example:
      >>> preset("smoke", seed=3).seed, preset("smoke").student_widths
      (3, (24, 12))
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return StudyConfig(**{**PRESETS[name], **overrides})


# ---- teacher, student, data -------------------------------------------------------------------

def mlp_init(seed: int | Sequence[int], widths: Sequence[int], /) -> Params:
    """A tanh MLP ``widths[0] -> ... -> widths[-1]``: weights ``N(0, 1/fan_in)``, zero biases,
    float32 whatever the global x64 setting.

    Drawn by NumPy (``np.random.default_rng(seed)``): no XLA compilation per layer shape.

    Example:
      >>> p = mlp_init(0, [3, 5, 2])
      >>> [l["w"].shape for l in p], num_params(p), str(p[0]["w"].dtype)
      ([(3, 5), (5, 2)], 32, 'float32')
    """
    rng = np.random.default_rng(seed)
    return [{"w": jnp.asarray(rng.standard_normal((a, b), np.float32) / np.float32(math.sqrt(a))),
             "b": jnp.zeros((b,), jnp.float32)}
            for a, b in zip(widths[:-1], widths[1:])]


def mlp_apply(params: Params, x: jax.Array, /) -> jax.Array:
    """Logits of the tanh MLP.

    Example:
      >>> import jax.numpy as jnp
      >>> p = mlp_init(0, [3, 5, 2])
      >>> mlp_apply(p, jnp.ones((4, 3), jnp.float32)).shape
      (4, 2)
    """
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def cross_entropy(params: Params, batch: tuple[jax.Array, jax.Array], /) -> jax.Array:
    """Mean cross-entropy of the student on ``batch = (x, y)``: the ``loss_fn`` of every Hessian.

    Module level on purpose: jaxspec caches compiled HVPs per ``loss_fn`` and shapes.

    Example:
      >>> import jax.numpy as jnp
      >>> p = mlp_init(0, [3, 2])
      >>> p[0]["w"] = jnp.zeros((3, 2), jnp.float32)
      >>> x, y = jnp.ones((4, 3), jnp.float32), jnp.zeros(4, jnp.int32)
      >>> round(float(cross_entropy(p, (x, y))), 4)     # log 2
      0.6931
    """
    x, y = batch
    logits = mlp_apply(params, x)
    return jnp.mean(jax.nn.logsumexp(logits, -1)
                    - jnp.take_along_axis(logits, y[:, None].astype(jnp.int32), -1)[:, 0])


def num_params(params: Any, /) -> int:
    """Number of scalar parameters.

    Example:
      >>> num_params(mlp_init(0, [16, 48, 24, 4]))
      2092
    """
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def _np_apply(params: Params, x: np.ndarray) -> np.ndarray:
    for layer in params[:-1]:
        x = np.tanh(x @ np.asarray(layer["w"]) + np.asarray(layer["b"]))
    return x @ np.asarray(params[-1]["w"]) + np.asarray(params[-1]["b"])


def sample_data(teacher: Params, seed: int | Sequence[int], n: int, /, *, scale: float,
                chunk: int = 1 << 16) -> dict[str, np.ndarray]:
    """``n`` samples of the teacher's distribution, drawn on the host by NumPy.

    ``x ~ N(0, I_d)`` (float32), ``y ~ softmax(scale * teacher(x))`` (int32, Gumbel-max), plus
    the teacher's entropy and top probability per sample (their means are the Bayes-optimal loss
    and accuracy).

    Example:
      >>> t = mlp_init(0, [4, 8, 3])
      >>> d = sample_data(t, 1, 5, scale=2.0)
      >>> d["x"].shape, d["y"].dtype, bool(((d["y"] >= 0) & (d["y"] < 3)).all())
      ((5, 4), dtype('int32'), True)
    """
    rng = np.random.default_rng(seed)
    d = int(np.shape(teacher[0]["w"])[0])
    xs, ys, ents, tops = [], [], [], []
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        x = rng.standard_normal((size, d), np.float32)
        logits = scale * _np_apply(teacher, x).astype(np.float64)
        y = np.argmax(logits + rng.gumbel(size=logits.shape), -1).astype(np.int32)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        probs = np.exp(logp)
        xs.append(x)
        ys.append(y)
        ents.append(-(probs * logp).sum(-1))
        tops.append(probs.max(-1))
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "entropy": np.concatenate(ents),
            "top_prob": np.concatenate(tops)}


@functools.lru_cache(maxsize=None)
def _trainer(learning_rate: float, total_steps: int):
    import optax

    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, total_steps))

    @jax.jit
    def run(params, opt_state, xb, yb):
        def step(carry, batch):
            p, s = carry
            loss, g = jax.value_and_grad(cross_entropy)(p, batch)
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (xb, yb))
        return params, opt_state, losses

    return opt, run


def train_student(params: Params, x: np.ndarray, y: np.ndarray, /, *, steps: int,
                  batch_size: int, learning_rate: float, seed: int = 0, input_noise: float = 0.0,
                  chunk: int = 250) -> tuple[Params, np.ndarray]:
    """Adam (cosine decay to 0) on the mean cross-entropy for a fixed number of steps.

    Mini-batches of ``batch_size`` are cut from consecutive reshuffled epochs (a batch may
    straddle two epochs, so ``N < batch_size`` works). ``input_noise > 0`` adds fresh Gaussian
    jitter of that std to every batch's inputs. Steps run in jitted ``lax.scan`` chunks of a
    fixed shape: one compilation serves every N.

    Returns:
      ``(params, losses)``: the final parameters and the per-step mini-batch losses.

    Example:
      >>> import numpy as np
      >>> p = mlp_init(0, [2, 8, 2])
      >>> x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
      >>> y = (x[:, 0] > 0).astype(np.int32)
      >>> p, losses = train_student(p, x, y, steps=200, batch_size=32, learning_rate=0.05)
      >>> bool(losses[-20:].mean() < 0.3 * losses[:20].mean())
      True
    """
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    total = steps * batch_size
    order = np.concatenate([rng.permutation(n) for _ in range(-(-total // n))])[:total]
    order = order.reshape(steps, batch_size)
    opt, run = _trainer(float(learning_rate), int(steps))
    opt_state = opt.init(params)
    chunk = max(d for d in range(1, min(chunk, steps) + 1) if steps % d == 0)  # one shape
    losses = []
    for start in range(0, steps, chunk):
        idx = order[start:start + chunk]
        xb = x[idx]
        if input_noise:
            xb = xb + np.float32(input_noise) * rng.standard_normal(xb.shape, np.float32)
        params, opt_state, l = run(params, opt_state, xb, y[idx])
        losses.append(np.asarray(l))
    return params, np.concatenate(losses)


@jax.jit
def _eval_sums(params, x, y, w):
    logits = mlp_apply(params, x)
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0]
    return jnp.sum(w * nll), jnp.sum(w * (jnp.argmax(logits, -1) == y))


def evaluate(params: Params, x: np.ndarray, y: np.ndarray, /, *,
             chunk: int = 8192) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``(x, y)``, in zero-weight-padded chunks of one
    shape (one compilation for every data-set size).

    Example:
      >>> import numpy as np
      >>> p = mlp_init(0, [3, 2])
      >>> loss, acc = evaluate(p, np.zeros((5, 3), np.float32), np.zeros(5, np.int32))
      >>> round(loss, 4), acc
      (0.6931, 1.0)
    """
    n = x.shape[0]
    total_loss = total_acc = 0.0
    for start in range(0, n, chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        w = np.ones(chunk, np.float32)
        if xb.shape[0] < chunk:
            pad = chunk - xb.shape[0]
            w[xb.shape[0]:] = 0.0
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros(pad, yb.dtype)])
        l, a = _eval_sums(params, xb, yb, w)
        total_loss += float(l)
        total_acc += float(a)
    return total_loss / n, total_acc / n


# ---- Hessian operators ------------------------------------------------------------------------

def weighted_cross_entropy(params: Params, batch: tuple[jax.Array, ...], /) -> jax.Array:
    """``sum_i w_i nll_i / len(batch)`` for ``batch = (x, y, w)``: the study's HVP ``loss_fn``.

    With ``w_i = N' / N`` on the N real samples and 0 on padding up to ``N'`` (whole batches,
    :func:`padded`), the data-set mean that :func:`jaxspec.batch_dataset` forms over the ``N'``
    samples is exactly the mean cross-entropy of the N real ones, and every batch of every data
    set has one shape: one compiled HVP serves the whole study.

    Example:
      >>> import jax.numpy as jnp
      >>> p = mlp_init(0, [3, 2])
      >>> x, y = jnp.ones((4, 3), jnp.float32), jnp.array([0, 1, 0, 1], jnp.int32)
      >>> w = jnp.array([2.0, 2.0, 0.0, 0.0], jnp.float32)      # 2 real samples padded to 4
      >>> bool(jnp.isclose(weighted_cross_entropy(p, (x, y, w)), cross_entropy(p, (x[:2], y[:2]))))
      True
    """
    x, y, w = batch
    logits = mlp_apply(params, x)
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0]
    return jnp.sum(w * nll) / x.shape[0]


def padded(x: np.ndarray, y: np.ndarray, batch_size: int, /) -> tuple[np.ndarray, ...]:
    """``(x, y, w)`` zero-weight padded to a whole number of batches, for
    :func:`weighted_cross_entropy` (real samples weigh ``N' / N``).

    Example:
      >>> import numpy as np
      >>> x, y, w = padded(np.ones((3, 2), np.float32), np.zeros(3, np.int32), 2)
      >>> x.shape, w.tolist()
      ((4, 2), [1.3333333730697632, 1.3333333730697632, 1.3333333730697632, 0.0])
    """
    n = x.shape[0]
    total = -(-n // batch_size) * batch_size
    pad = total - n
    w = np.zeros(total, np.float32)
    w[:n] = total / n
    return (np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]),
            np.concatenate([y, np.zeros(pad, y.dtype)]), w)


def _operator(params: Params, x: np.ndarray, y: np.ndarray, *, batch_size: int,
              driver: str) -> Callable[[jax.Array], jax.Array]:
    """The Hessian of the mean cross-entropy over ``(x, y)`` as a flat matvec for ``driver``."""
    data = padded(x, y, batch_size)
    if driver == "host":
        return host_hessian_matvec(weighted_cross_entropy, params, batch_dataset(data, batch_size))
    return hessian_matvec(weighted_cross_entropy, params,
                          batch_dataset(tuple(jnp.asarray(a) for a in data), batch_size))


@jax.jit
def _batch_hvp(params, batch, v):
    unravel = ravel_pytree(params)[1]
    return ravel_pytree(hvp(weighted_cross_entropy, params, batch, unravel(v)))[0]


@jax.jit
def _per_sample_hvps(params, x, y, v):
    unravel = ravel_pytree(params)[1]
    tangent = unravel(v)
    one = lambda xi, yi: ravel_pytree(hvp(cross_entropy, params, (xi[None], yi[None]),  # noqa: E731
                                          tangent))[0]
    return jax.vmap(one)(x, y)


def _per_sample_stats(params: Params, x: np.ndarray, y: np.ndarray, v: jax.Array,
                      chunk: int = 512) -> dict[str, float]:
    """Heavy tails of the per-sample Hessian noise ``u_i = H_i v`` (one probe)."""
    u = np.concatenate([np.asarray(_per_sample_hvps(params, x[s:s + chunk], y[s:s + chunk], v))
                        for s in range(0, x.shape[0], chunk)])  # (n, P) float32
    n, p = u.shape
    d = u - u.mean(0, dtype=np.float64).astype(u.dtype)
    del u
    var = (d ** 2).mean(0, dtype=np.float64)
    ok = var > 1e-30 * var.max()
    kurt = (d[:, ok] ** 4).mean(0, dtype=np.float64) / var[ok] ** 2 - 3.0
    norms = np.sort((d ** 2).sum(1, dtype=np.float64))[::-1]
    top = max(1, n // 100)
    vv = float(np.asarray(v, np.float64) @ np.asarray(v, np.float64))
    return {
        "count": int(n),
        "sigma2_per_sample": float(norms.sum() / ((n - 1) * p * vv)),
        "excess_kurtosis_median": float(np.median(kurt)),
        "excess_kurtosis_mean": float(np.mean(kurt)),
        "top1pct_variance_share": float(norms[:top].sum() / norms.sum()),
    }


# ---- one point of the sweep -------------------------------------------------------------------

def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def _save_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, allow_nan=False, default=_json_default))


def _json_default(x):
    if isinstance(x, (np.generic, jax.Array, np.ndarray)):
        return np.asarray(x).tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _save_params(path: str, params: Params) -> None:
    with replacing(path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, **{f"{i}_{k}": np.asarray(v) for i, layer in enumerate(params)
                         for k, v in layer.items()})


def _load_params(path: str, like: Params) -> Params:
    with np.load(path) as f:
        return [{k: jnp.asarray(f[f"{i}_{k}"], jnp.float32) for k in layer}
                for i, layer in enumerate(like)]


def _spectrum_moments(s: Spectrum) -> dict[str, float]:
    m = s.moments(3)
    m2c = m[2] - m[1] ** 2
    m3c = m[3] - 3 * m[1] * m[2] + 2 * m[1] ** 3
    return {"mean": float(m[1]), "variance": float(m2c),
            "skewness": float(m3c / m2c ** 1.5) if m2c > 0 else float("nan")}


def _slq_with_ritz_vectors(op, key, p, steps, *, num_vectors, driver, progress, ckpt_dir, meta):
    """:func:`jaxspec.slq` (same probes, same result) that also returns the Ritz vectors of the
    extremal Ritz values (from the probe that found the most extreme ones)."""
    keys = jax.random.split(key, num_vectors)
    spectra, top, bottom = [], None, None
    os.makedirs(ckpt_dir, exist_ok=True)
    for i in range(num_vectors):
        v0 = random_probe(keys[i], p, dtype=jnp.float32)
        label = progress
        if progress and num_vectors > 1:
            label = f"{progress} {i + 1}/{num_vectors}"
        res = run_lanczos(op, v0, steps, driver=driver, progress=label,
                          checkpoint=os.path.join(ckpt_dir, f"lanczos_{i}.npz"),
                          return_basis=True)
        sp = Spectrum.from_lanczos(res)
        spectra.append(sp)
        k = int(res.num_valid)
        a, b = np.asarray(res.alphas, np.float64)[:k], np.asarray(res.betas, np.float64)[:k - 1]
        theta, vecs = np.linalg.eigh(np.diag(a) + np.diag(b, 1) + np.diag(b, -1))
        basis = np.asarray(res.basis, np.float64)[:k]
        for j, keep, cur in ((-1, lambda t, c: c is None or t > c[0], top),
                             (0, lambda t, c: c is None or t < c[0], bottom)):
            if keep(theta[j], cur):
                vec = basis.T @ vecs[:, j]
                cur = (float(theta[j]), (vec / np.linalg.norm(vec)).astype(np.float32))
                if j == -1:
                    top = cur
                else:
                    bottom = cur
    info = {"num_steps": int(steps), "dim": int(p), "distribution": "normal",
            "dtype": "float32", **meta}
    return Spectrum.average(spectra, meta=info), top[1], bottom[1]


def _run_point(cfg: StudyConfig, n: int, pools: dict[str, dict[str, np.ndarray]], p: int,
               outdir: str, *, progress: bool, quiet: bool) -> dict[str, Any]:
    t_point = time.perf_counter()
    times: dict[str, float] = {}
    os.makedirs(outdir, exist_ok=True)
    driver = resolve_driver(cfg.driver)
    widths = [cfg.input_dim, *cfg.student_widths, cfg.num_classes]
    q = p / n
    m_true = pools["fresh"]["x"].shape[0]
    q_m = p / m_true
    tag = f"[q={q:.3g} N={n}]"
    x_tr, y_tr = pools["train"]["x"][:n], pools["train"]["y"][:n]
    x_ho, y_ho = pools["heldout"]["x"][:n], pools["heldout"]["y"][:n]
    x_f, y_f = pools["fresh"]["x"], pools["fresh"]["y"]
    k_probe = jax.random.fold_in(jax.random.key(cfg.seed), n)
    rng = np.random.default_rng([cfg.seed, n, 2])

    # 1. train (or reload the student of an interrupted run)
    t = time.perf_counter()
    init = mlp_init([cfg.seed, n, 1], widths)
    params_path = os.path.join(outdir, "params.npz")
    losses = None
    if os.path.exists(params_path):
        params = _load_params(params_path, init)
    else:
        params, losses = train_student(init, x_tr, y_tr, steps=cfg.train_steps,
                                       batch_size=cfg.train_batch_size,
                                       learning_rate=cfg.learning_rate, seed=cfg.seed + n,
                                       input_noise=cfg.train_input_noise)
        _save_params(params_path, params)
    train_loss, train_acc = evaluate(params, x_tr, y_tr)
    test_loss, test_acc = evaluate(params, x_f, y_f)
    times["train"] = time.perf_counter() - t
    how = "reloaded" if losses is None else f"trained {cfg.train_steps} steps"
    _log(f"{tag} {how} [{times['train']:.1f}s]: train loss "
         f"{train_loss:.3f} acc {train_acc:.3f} | fresh-sample loss {test_loss:.3f} acc "
         f"{test_acc:.3f}", quiet)

    ops = {
        "empirical": _operator(params, x_tr, y_tr, batch_size=cfg.hvp_batch_size, driver=driver),
        "heldout": _operator(params, x_ho, y_ho, batch_size=cfg.hvp_batch_size, driver=driver),
        "true": _operator(params, x_f, y_f, batch_size=cfg.hvp_batch_size, driver=driver),
    }
    apply = ops if driver == "host" else {
        k: functools.partial(_apply_operator, v) for k, v in ops.items()}
    steps = {"empirical": cfg.lanczos_steps, "heldout": cfg.lanczos_steps,
             "true": cfg.true_lanczos_steps}

    # 2. the True Hessian first: its extremal Ritz vectors feed the directional noise variance
    spectra: dict[str, Spectrum] = {}
    t = time.perf_counter()
    true_path = os.path.join(outdir, "spectrum_true.json")
    vec_path = os.path.join(outdir, "true_ritz_vectors.npz")
    if os.path.exists(true_path) and os.path.exists(vec_path):
        spectra["true"] = Spectrum.load(true_path)
        with np.load(vec_path) as f:
            u_top, u_bottom = f["top"], f["bottom"]
    else:
        spectra["true"], u_top, u_bottom = _slq_with_ritz_vectors(
            ops["true"], k_probe, p, steps["true"], num_vectors=cfg.num_vectors, driver=driver,
            progress=f"{tag} true H (M={m_true})" if progress else False,
            ckpt_dir=os.path.join(outdir, ".lanczos_true"),
            meta={"hessian": "true", "num_samples": m_true, "P": p, "q": q})
        np.savez(vec_path, top=u_top, bottom=u_bottom)
        spectra["true"].save(true_path)
    times["slq_true"] = time.perf_counter() - t
    _log(f"{tag} true      Hessian (M={m_true}, m={steps['true']}): lambda in "
         f"[{spectra['true'].lambda_min:.4g}, {spectra['true'].lambda_max:.4g}] "
         f"[{times['slq_true']:.1f}s]", quiet)

    # 3. sigma^2 on the fresh samples (disjoint mini-batches), random probes; then the same
    #    estimator along the true extremal eigenvectors (the noise variance that direction sees)
    t = time.perf_counter()
    b = cfg.hvp_batch_size
    ones = np.ones(b, np.float32)
    true_hv: list[jax.Array] = []

    def full_hvp(v):
        true_hv.append(apply["true"](v))
        return true_hv[-1]

    def hvp_on_batch(i, v):
        batch = (x_f[i * b:(i + 1) * b], y_f[i * b:(i + 1) * b], ones)
        if driver == "host":  # one batch: the host operator's one-batch group HVP
            return host_hessian_matvec(weighted_cross_entropy, params,
                                       batch_dataset(batch, b))(v)
        return _batch_hvp(params, batch, v)

    probes = rng.standard_normal((cfg.noise_probes, p)).astype(np.float32)
    nv = rmt.estimate_noise_variance(hvp_on_batch, jnp.asarray(probes), num_batches=m_true // b,
                                     batch_size=b, num_samples=m_true, full_hvp=full_hvp)
    sigma2 = float(nv.sigma2)
    nv_dir = rmt.estimate_noise_variance(hvp_on_batch, jnp.asarray(np.stack([u_top, u_bottom])),
                                         num_batches=m_true // b, batch_size=b,
                                         num_samples=m_true, full_hvp=apply["true"])
    sigma2_top, sigma2_bottom = (float(x) for x in np.asarray(nv_dir.per_probe))
    # direct check: E|(H_N - H_M) v|^2 / |v|^2 = (q + P/M) sigma^2 for N independent samples
    s2_model = (q + q_m) * sigma2
    direct = {}
    for name in ("empirical", "heldout"):
        r = [float(np.sum((np.asarray(apply[name](jnp.asarray(v))) - np.asarray(hv)) ** 2)
                   / np.sum(v * v)) for v, hv in zip(probes, true_hv)]
        direct[name] = float(np.mean(r))
    times["sigma2"] = time.perf_counter() - t
    _log(f"{tag} sigma^2 = {sigma2:.4g} (+- {float(nv.stderr):.2g}) from {m_true // b} fresh "
         f"batches of {b}; along the true top / bottom eigenvectors: {sigma2_top:.4g} / "
         f"{sigma2_bottom:.4g}; |eps v|^2 / ((q + P/M) sigma^2 |v|^2): train "
         f"{direct['empirical'] / s2_model:.3g}, held-out {direct['heldout'] / s2_model:.3g} "
         f"[{times['sigma2']:.1f}s]", quiet)

    # 4. Empirical (training set) and held-out empirical spectra, same probe key
    for name in ("empirical", "heldout"):
        path = os.path.join(outdir, f"spectrum_{name}.json")
        t = time.perf_counter()
        if os.path.exists(path):
            spectra[name] = Spectrum.load(path)
            continue
        spectra[name] = slq(ops[name], k_probe, p, steps[name], num_vectors=cfg.num_vectors,
                            dtype=jnp.float32, driver=driver,
                            progress=f"{tag} {name} H (N={n})" if progress else False,
                            checkpoint_dir=os.path.join(outdir, f".lanczos_{name}"),
                            meta={"hessian": name, "num_samples": n, "P": p, "q": q})
        spectra[name].save(path)
        times[f"slq_{name}"] = time.perf_counter() - t
        _log(f"{tag} {name:9s} Hessian (N={n}, m={steps[name]}): lambda in "
             f"[{spectra[name].lambda_min:.4g}, {spectra[name].lambda_max:.4g}] "
             f"[{times[f'slq_{name}']:.1f}s]", quiet)

    # 5. the noise matrices themselves, at selected q
    noise: dict[str, Any] = {}
    if _selected(q, p, cfg):
        s_eff = math.sqrt(s2_model)
        for name in ("heldout", "empirical"):
            path = os.path.join(outdir, f"spectrum_noise_{name}.json")
            t = time.perf_counter()
            if os.path.exists(path):
                sp = Spectrum.load(path)
            else:
                if driver == "host":
                    mv = functools.partial(_difference, ops[name], ops["true"])
                else:
                    mv = jax.tree_util.Partial(_difference, ops[name], ops["true"])
                sp = slq(mv, k_probe, p, cfg.noise_lanczos_steps, dtype=jnp.float32,
                         driver=driver, progress=f"{tag} noise {name}" if progress else False,
                         checkpoint_dir=os.path.join(outdir, f".lanczos_noise_{name}"),
                         meta={"hessian": f"{name} - true", "num_samples": n, "P": p, "q": q})
                sp.save(path)
                times[f"slq_noise_{name}"] = time.perf_counter() - t
            spectra[f"noise_{name}"] = sp
            mom = _spectrum_moments(sp)
            noise[name] = {"lambda_max": sp.lambda_max, "lambda_min": sp.lambda_min,
                           "semicircle_edge": 2 * s_eff,
                           "top_over_edge": sp.lambda_max / (2 * s_eff),
                           "bottom_over_edge": -sp.lambda_min / (2 * s_eff),
                           "variance_over_s2": mom["variance"] / s2_model,
                           "mean": mom["mean"], "skewness": mom["skewness"]}
            _log(f"{tag} noise {name} - true: lambda in [{sp.lambda_min:.4g}, "
                 f"{sp.lambda_max:.4g}] vs semicircle +-{2 * s_eff:.4g}; skewness "
                 f"{mom['skewness']:.3g} (GOE: 0)", quiet)

    # 6. per-sample statistics of the noise (heavy tails)
    per_sample = None
    if cfg.per_sample_count:
        t = time.perf_counter()
        c = max(1, min(cfg.per_sample_count, m_true) // 512) * 512  # whole chunks: one shape
        per_sample = _per_sample_stats(params, x_f[:c], y_f[:c], jnp.asarray(probes[0]))
        times["per_sample"] = time.perf_counter() - t

    # 7. theory vs measurement
    comparisons = {
        "train": compare_spectra(spectra["empirical"], spectra["true"], q=q, sigma2=sigma2),
        "heldout": compare_spectra(spectra["heldout"], spectra["true"], q=q, sigma2=sigma2),
    }
    for name, comp in comparisons.items():
        base = os.path.join(outdir, f"comparison_{name}")
        for ext, text in (("md", comp.to_markdown()), ("csv", comp.to_csv()),
                          ("json", comp.to_json())):
            with open(f"{base}.{ext}", "w") as f:
                f.write(text)
    t = time.perf_counter()
    _plot_point(spectra, os.path.join(outdir, "spectra.png"),
                f"q = P/N = {q:.3g} (P = {p}, N = {n}, M = {m_true})")
    times["plot"] = time.perf_counter() - t

    emp, tru, ho = spectra["empirical"], spectra["true"], spectra["heldout"]
    rows = {k: comparisons["train"].row(k) for k in ("lambda_max", "lambda_min")}
    # Theorem 1 with the noise variance seen along the true extremal eigenvectors
    pred_dir_max = float(rmt.empirical_edge(np.float32(tru.lambda_max), q=q, sigma2=sigma2_top))
    pred_dir_min = float(rmt.empirical_edge(np.float32(tru.lambda_min), q=q,
                                            sigma2=sigma2_bottom, side="bottom"))
    result = {
        "q": q, "N": n, "P": p, "M": m_true,
        "train_loss": train_loss, "train_acc": train_acc,
        "test_loss": test_loss, "test_acc": test_acc,
        "final_minibatch_loss": None if losses is None else float(losses[-10:].mean()),
        "sigma2": sigma2, "sigma2_stderr": _finite(float(nv.stderr)),
        "sigma2_top": sigma2_top, "sigma2_bottom": sigma2_bottom,
        "s": math.sqrt(q * sigma2),
        "true_lambda_max": tru.lambda_max, "true_lambda_min": tru.lambda_min,
        "emp_lambda_max": emp.lambda_max, "emp_lambda_min": emp.lambda_min,
        "heldout_lambda_max": ho.lambda_max, "heldout_lambda_min": ho.lambda_min,
        "pred_lambda_max": _finite(rows["lambda_max"]["predicted_empirical"]),
        "pred_lambda_min": _finite(rows["lambda_min"]["predicted_empirical"]),
        "pred_dir_lambda_max": _finite(pred_dir_max), "pred_dir_lambda_min": _finite(pred_dir_min),
        "true_noise_edge_goe": 2 * math.sqrt(q_m * sigma2),
        "direct_s2_train": direct["empirical"], "direct_s2_heldout": direct["heldout"],
        "direct_s2_model": s2_model,
        "noise_spectrum": noise or None,
        "per_sample": per_sample,
        "summaries": {k: v.summary() for k, v in spectra.items()},
        "times": times,
    }
    result["times"]["total"] = time.perf_counter() - t_point
    _save_json(os.path.join(outdir, "result.json"), result)
    for name in os.listdir(outdir):  # the Lanczos checkpoints are only needed mid-point
        if name.startswith(".lanczos_"):
            shutil.rmtree(os.path.join(outdir, name), ignore_errors=True)
    _log(f"{tag} done [{result['times']['total']:.1f}s]: lambda_max emp {emp.lambda_max:.4g}, "
         f"held-out {ho.lambda_max:.4g}, Thm1 {result['pred_lambda_max']:.4g} (directional "
         f"{pred_dir_max:.4g}), true {tru.lambda_max:.4g}; lambda_min emp {emp.lambda_min:.4g}, "
         f"held-out {ho.lambda_min:.4g}, Thm1 {result['pred_lambda_min']:.4g} (directional "
         f"{pred_dir_min:.4g}), true {tru.lambda_min:.4g}", quiet)
    return result


def _difference(a, b, v):
    return a(v) - b(v)


@jax.jit
def _apply_operator(op, v):
    """A pytree operator (``hessian_matvec``) applied under jit, its data passed as arguments."""
    return op(v)


def _selected(q: float, p: int, cfg: StudyConfig) -> bool:
    """Whether the grid point nearest (in log q) to one of ``noise_spectrum_qs`` is ``q``."""
    if not cfg.noise_spectrum_qs:
        return False
    grid = [p / _n_for(p, qq) for qq in cfg.qs]
    for target in cfg.noise_spectrum_qs:
        nearest = min(grid, key=lambda g: abs(math.log(g / target)))
        if math.isclose(nearest, q, rel_tol=1e-9):
            return True
    return False


def _n_for(p: int, q: float) -> int:
    return max(2, int(round(p / q)))


# ---- figures ----------------------------------------------------------------------------------

def _plot_point(spectra: dict[str, Spectrum], path: str, title: str) -> None:
    from jaxspec.plotting import stem_plots

    items = [(f"Empirical (train, N = {spectra['empirical'].meta.get('num_samples', '?')})",
              spectra["empirical"]),
             ("Held-out empirical (N fresh)", spectra["heldout"]),
             (f"True (M = {spectra['true'].meta.get('num_samples', '?')} fresh)",
              spectra["true"])]
    stem_plots(items, path=path, suptitle=title)


def plot_extremal(results: Sequence[dict[str, Any]], path: str, /, *, dpi: int = 110) -> None:
    """Measured vs Theorem-1-predicted extremal eigenvalues against q (log x), top and bottom.

    Example:
      >>> import os, tempfile
      >>> r = dict(q=1.0, true_lambda_max=1.0, emp_lambda_max=2.0, pred_lambda_max=1.5,
      ...          heldout_lambda_max=1.8, true_lambda_min=-0.1, emp_lambda_min=-0.5,
      ...          pred_lambda_min=-0.6, heldout_lambda_min=-0.4, s=0.5)
      >>> p = os.path.join(tempfile.mkdtemp(), "e.png")
      >>> plot_extremal([r, {**r, "q": 10.0}], p)
      >>> os.path.getsize(p) > 0
      True
    """
    from jaxspec.plotting import _pyplot

    plt = _pyplot()
    rs = sorted(results, key=lambda r: r["q"])
    q = np.array([r["q"] for r in rs])
    get = lambda k: np.array([np.nan if r.get(k) is None else r[k] for r in rs])  # noqa: E731
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    for ax, side, sign in ((axes[0], "max", 1.0), (axes[1], "min", -1.0)):
        # the bottom panel shows -lambda_P on the same log scale (values >= 0 are left out)
        y = lambda k: np.where(sign * get(k) > 0, sign * get(k), np.nan)  # noqa: E731
        ax.plot(q, y(f"true_lambda_{side}"), "k-o", ms=4, label="True (M fresh)")
        ax.plot(q, y(f"emp_lambda_{side}"), "C3-s", ms=5, label="Empirical (train), measured")
        ax.plot(q, y(f"heldout_lambda_{side}"), "C1:^", ms=5,
                label="Empirical (held-out), measured")
        ax.plot(q, y(f"pred_lambda_{side}"), "C0--D", ms=4,
                label=r"Theorem 1 (True, mean $\sigma^2$)")
        ax.plot(q, y(f"pred_dir_lambda_{side}"), "C2--v", ms=4,
                label=r"Theorem 1 (True, $\sigma^2$ along its eigenvector)")
        ax.plot(q, 2 * get("s"), color="0.6", ls="-.", lw=1,
                label=r"GOE bulk edge $2\sqrt{q}\sigma$")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(q, [f"{v:.3g}" for v in q])
        ax.minorticks_off()
        ax.set_xlabel("q = P / N")
        ax.set_title(r"top eigenvalue $\lambda_1$" if side == "max"
                     else r"bottom eigenvalue, $-\lambda_P$", fontsize=10)
        ax.grid(True, which="major", alpha=0.25)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


# ---- summary ----------------------------------------------------------------------------------

SUMMARY_COLUMNS = (
    "q", "N", "train_acc", "test_acc", "sigma2", "s", "sigma2_top", "sigma2_bottom",
    "true_lambda_max", "emp_lambda_max", "heldout_lambda_max", "pred_lambda_max",
    "pred_dir_lambda_max",
    "true_lambda_min", "emp_lambda_min", "heldout_lambda_min", "pred_lambda_min",
    "pred_dir_lambda_min",
    "direct_ratio_train", "direct_ratio_heldout", "more_extreme", "heldout_more_extreme",
)


def summary_rows(results: Sequence[dict[str, Any]], /) -> list[dict[str, Any]]:
    """One row per point: the sweep table (``SUMMARY_COLUMNS``), sorted by q.

    ``direct_ratio_*`` is ``|(H_N - H_M) v|^2 / |v|^2`` over its sampling-model value
    ``(q + P/M) sigma^2`` (1 if the noise has the CLT scale). ``more_extreme`` is the paper's
    qualitative claim for the training-set Hessian, ``lambda'_max > lambda_max`` and
    ``lambda'_min < lambda_min``; ``heldout_more_extreme`` the same for the held-out one.
    ``pred_dir_*`` is Theorem 1 with the noise variance measured along the true extremal
    eigenvector (``sigma2_top``, ``sigma2_bottom``) instead of the mean element variance.

    Example:
      >>> r = dict(q=2.0, N=5, train_acc=1.0, test_acc=0.7, sigma2=0.1, s=0.45,
      ...          true_lambda_max=1.0, emp_lambda_max=2.0, pred_lambda_max=1.2,
      ...          heldout_lambda_max=1.9, true_lambda_min=-0.1, emp_lambda_min=-0.5,
      ...          pred_lambda_min=-0.9, heldout_lambda_min=-0.04, direct_s2_train=0.3,
      ...          direct_s2_heldout=0.2, direct_s2_model=0.2)
      >>> row = summary_rows([r])[0]
      >>> row["more_extreme"], row["heldout_more_extreme"], row["direct_ratio_heldout"]
      (True, False, 1.0)
    """
    rows = []
    for r in sorted(results, key=lambda r: r["q"]):
        row = {k: r.get(k) for k in SUMMARY_COLUMNS}
        row["direct_ratio_train"] = r["direct_s2_train"] / r["direct_s2_model"]
        row["direct_ratio_heldout"] = r["direct_s2_heldout"] / r["direct_s2_model"]
        for col, pre in (("more_extreme", "emp"), ("heldout_more_extreme", "heldout")):
            row[col] = bool(r[f"{pre}_lambda_max"] > r["true_lambda_max"]
                            and r[f"{pre}_lambda_min"] < r["true_lambda_min"])
        rows.append(row)
    return rows


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.4g}"


def _write_summary(results: Sequence[dict[str, Any]], workdir: str,
                   config: StudyConfig) -> list[dict[str, Any]]:
    rows = summary_rows(results)
    _save_json(os.path.join(workdir, "summary.json"),
               {"config": config.to_dict(), "rows": rows, "points": list(results)})
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if row[k] is None else row[k] for k in SUMMARY_COLUMNS})
    with open(os.path.join(workdir, "summary.csv"), "w") as f:
        f.write(out.getvalue())
    head = ("q", "N", "train acc", "test acc", "sigma^2", "s=sqrt(q)sigma", "sigma^2 top dir",
            "sigma^2 bottom dir",
            "lambda_max true", "lambda'_max emp", "lambda'_max held-out", "lambda'_max Thm1",
            "lambda'_max Thm1 dir",
            "lambda_min true", "lambda'_min emp", "lambda'_min held-out", "lambda'_min Thm1",
            "lambda'_min Thm1 dir",
            "eps ratio train", "eps ratio held-out", "emp more extreme",
            "held-out more extreme")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[k]) for k in SUMMARY_COLUMNS) + " |")
    noise_lines = []
    for r in sorted(results, key=lambda r: r["q"]):
        for name, d in (r.get("noise_spectrum") or {}).items():
            noise_lines.append(
                f"| {r['q']:.3g} | {name} - true | {d['lambda_min']:.4g} | {d['lambda_max']:.4g} "
                f"| +-{d['semicircle_edge']:.4g} | {d['bottom_over_edge']:.3g} | "
                f"{d['top_over_edge']:.3g} | {d['skewness']:.3g} |")
    if noise_lines:
        lines += ["", "Noise matrix spectra (SLQ of H_N - H_M; a GOE would give ratios 1 and "
                  "skewness 0):", "",
                  "| q | matrix | lambda_min | lambda_max | semicircle edges | "
                  "-lambda_min / 2s | lambda_max / 2s | skewness |", "|---" * 8 + "|",
                  *noise_lines]
    ps = [(r["q"], r["per_sample"]) for r in sorted(results, key=lambda r: r["q"])
          if r.get("per_sample")]
    if ps:
        lines += ["", "Per-sample noise u_i = H_i v (one probe): Gaussian elements would give "
                  "excess kurtosis 0 and a top-1% share of about 0.01.", "",
                  "| q | samples | sigma^2 (per-sample) | excess kurtosis (median over "
                  "coordinates) | variance share of top 1% samples |", "|---|---|---|---|---|"]
        lines += [f"| {q:.3g} | {d['count']} | {d['sigma2_per_sample']:.4g} | "
                  f"{d['excess_kurtosis_median']:.3g} | {d['top1pct_variance_share']:.3g} |"
                  for q, d in ps]
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return rows


# ---- the study --------------------------------------------------------------------------------

def run_study(config: StudyConfig, workdir: str | os.PathLike, /, *, progress: bool = True,
              quiet: bool = False) -> dict[str, Any]:
    """Runs (or resumes) the sweep and writes every output under ``workdir``.

    Finished points (``N<N>/result.json``) are loaded, not recomputed; the sweep table and the
    extremal-eigenvalue plot are rewritten from all finished points at the end. A ``workdir``
    holding a different ``config.json`` is refused.

    Returns:
      ``{"config": ..., "P": ..., "M": ..., "rows": summary_rows, "points": [result, ...],
      "wall_time": seconds}``.

    Example:
      >>> import tempfile
      >>> cfg = preset("smoke", qs=(2.0,), noise_spectrum_qs=(), per_sample_count=0,
      ...              train_steps=20, lanczos_steps=5, true_lanczos_steps=5, noise_probes=1)
      >>> out = run_study(cfg, tempfile.mkdtemp(), progress=False, quiet=True)
      >>> out["rows"][0]["N"], out["P"]
      (278, 555)
    """
    t0 = time.perf_counter()
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    cfg_path = os.path.join(workdir, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            old = StudyConfig.from_dict(json.load(f))
        if old != config:
            diff = {k: (v, config.to_dict()[k]) for k, v in old.to_dict().items()
                    if v != config.to_dict()[k]}
            raise ValueError(f"{workdir} holds a study with another config (saved vs now: "
                             f"{diff}); use another --workdir or delete it")
    else:
        _save_json(cfg_path, config.to_dict())

    widths = [config.input_dim, *config.student_widths, config.num_classes]
    p = num_params(mlp_init(0, widths))
    ns = sorted({_n_for(p, q) for q in config.qs}, reverse=True)
    b = config.hvp_batch_size
    m_true = int(math.ceil(config.true_ratio * p / b)) * b
    _log(f"True-Hessian study: P = {p}, M = {m_true} fresh samples (P/M = {p / m_true:.3g}), "
         f"N in {ns}, backend {jax.default_backend()}, driver "
         f"{resolve_driver(config.driver)}", quiet)

    teacher = mlp_init([config.seed, 0, 0],
                       [config.input_dim, *config.teacher_widths, config.num_classes])
    t = time.perf_counter()
    pools = {name: sample_data(teacher, [config.seed, 0, 10 + i], size,
                               scale=config.teacher_scale)
             for i, (name, size) in enumerate((("train", max(ns)), ("heldout", max(ns)),
                                                ("fresh", m_true)))}
    bayes_loss = float(pools["fresh"]["entropy"].mean())
    bayes_acc = float(pools["fresh"]["top_prob"].mean())
    _log(f"sampled data in {time.perf_counter() - t:.1f}s; Bayes-optimal loss "
         f"{bayes_loss:.3f}, accuracy {bayes_acc:.3f}", quiet)

    results = []
    for n in ns:
        outdir = os.path.join(workdir, f"N{n:06d}")
        done = os.path.join(outdir, "result.json")
        if os.path.exists(done):
            with open(done) as f:
                results.append(json.load(f))
            _log(f"[q={p / n:.3g} N={n}] finished earlier: skipped", quiet)
            continue
        results.append(_run_point(config, n, pools, p, outdir, progress=progress, quiet=quiet))

    rows = _write_summary(results, workdir, config)
    plot_extremal(results, os.path.join(workdir, "extremal.png"))
    wall = time.perf_counter() - t0
    _save_json(os.path.join(workdir, "bayes.json"), {"bayes_loss": bayes_loss,
                                                     "bayes_accuracy": bayes_acc})
    if not quiet:
        with open(os.path.join(workdir, "summary.md")) as f:
            print("\n" + f.read())
        print(f"outputs in {workdir}; total wall time {wall:.1f}s", flush=True)
    return {"config": config.to_dict(), "P": p, "M": m_true, "rows": rows, "points": results,
            "bayes_loss": bayes_loss, "bayes_accuracy": bayes_acc, "wall_time": wall}


# ---- CLI --------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.true_hessian",
        description="Empirical vs True Hessian spectra of a teacher-student MLP over a sweep of "
                    "q = P/N, checked against Theorem 1 of Granziol et al. (2020).")
    ap.add_argument("--workdir", default="runs/true_hessian")
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS))
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    ap.add_argument("--quiet", action="store_true", help="no per-stage prints")
    defaults = StudyConfig()
    for f in dataclasses.fields(StudyConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, tuple):
            kind = float if f.name.endswith("qs") else int
            ap.add_argument(flag, type=kind, nargs="*", default=None, help=f"(list) {f.name}")
        else:
            ap.add_argument(flag, type=type(default), default=None, help=f.name)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m experiments.true_hessian [--preset P] [...]``.

    Every :class:`StudyConfig` field is a flag (``--student-widths 256 128``,
    ``--qs 0.1 1 10``, ``--lanczos-steps 60``, ...) overriding the preset.

    Example:
      >>> main(["--help"])  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      SystemExit: 0
    """
    args = _parser().parse_args(argv)
    overrides = {f.name: (tuple(getattr(args, f.name)) if isinstance(getattr(args, f.name), list)
                          else getattr(args, f.name))
                 for f in dataclasses.fields(StudyConfig) if getattr(args, f.name) is not None}
    config = preset(args.preset, **overrides)
    run_study(config, args.workdir, progress=not args.no_progress, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
