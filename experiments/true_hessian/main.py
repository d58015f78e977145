"""The study's driver: :func:`run_study` (the sweep, resumable) and :func:`main` (the CLI).

Per point ``N<N>/``: train (or reload) the student, the True Hessian's spectrum and extremal
Ritz vectors, the noise statistics, the empirical and held-out spectra, the noise matrices'
spectra at selected q, the per-sample statistics, then the comparison with Theorem 1;
``result.json`` last. Every stage's file is reused by a rerun, and an interrupted Lanczos run
resumes from its checkpoint (:func:`jaxspec.io.slq_hooks`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jaxspec
from jaxspec.workdir import workdir_lock
from jaxspec import Spectrum, rmt
from jaxspec.compare import compare_spectra
from jaxspec.io import dumps, load_spectrum, save_spectrum, slq_hooks
from experiments.true_hessian import measure, report, theory
from experiments.true_hessian.config import (StudyConfig, apply_overrides, config_names,
                                             get_config)

__all__ = ["config_mismatch", "main", "make_pools", "run_point", "run_study"]


#: The form of a point's predictions, kept in its ``result.json``: a finished point of another
#: form (2: the True Hessian's own noise undone; 3: the shift beyond first order, see theory.py)
#: gets its predictions again from its saved weights and spectra.
PREDICTIONS = 3


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def _noise_spectrum_here(q: float, p: int, cfg: StudyConfig) -> bool:
    """Whether the grid point nearest (in log q) to one of ``noise_spectrum_qs`` is ``q``."""
    grid = [p / cfg.num_samples(qq) for qq in cfg.qs]
    return any(math.isclose(min(grid, key=lambda g: abs(math.log(g / t))), q, rel_tol=1e-9)
               for t in cfg.noise_spectrum_qs)


def _save_params(path: str, params: Any, losses: np.ndarray) -> None:
    leaves = jax.tree.leaves(params)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, minibatch_losses=losses, **{f"leaf{i}": np.asarray(x)
                                              for i, x in enumerate(leaves)})
    os.replace(tmp, path)


def _load_params(path: str, like: Any) -> tuple[Any, np.ndarray | None]:
    leaves, treedef = jax.tree.flatten(like)
    with np.load(path) as f:
        params = jax.tree.unflatten(treedef, [jnp.asarray(f[f"leaf{i}"], jnp.float32)
                                              for i in range(len(leaves))])
        losses = f["minibatch_losses"] if "minibatch_losses" in f.files else None
    return params, losses


def _spectrum(path: str, compute) -> Spectrum:
    if os.path.exists(path):
        return load_spectrum(path)
    spectrum = compute()
    save_spectrum(spectrum, path)
    return spectrum


def run_point(cfg: StudyConfig, n: int, pools: dict[str, dict[str, np.ndarray]], outdir: str,
              /, *, progress: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Measures one point of the sweep (N training samples) into ``outdir``; returns its result.

    Example:
      >>> import os, tempfile
      >>> from experiments.true_hessian.config import preset
      >>> from experiments.true_hessian.main import make_pools, run_point
      >>> cfg = preset("smoke", qs=(2.0,), noise_spectrum_qs=(), per_sample_count=0,
      ...              train_steps=20, lanczos_steps=5, true_lanczos_steps=5, noise_probes=1,
      ...              ggn=False, coupling_samples=512)
      >>> pools, _ = make_pools(cfg, 278, 5500)
      >>> r = run_point(cfg, 278, pools, tempfile.mkdtemp(), progress=False, quiet=True)
      >>> r["N"], r["P"], r["final_minibatch_loss"] > 0
      (278, 555, True)
    """
    t_point = time.perf_counter()
    times: dict[str, float] = {}
    os.makedirs(outdir, exist_ok=True)
    reduce = measure.reduce_for(cfg.driver)
    driver = cfg.driver
    widths = [cfg.input_dim, *cfg.student_widths, cfg.num_classes]
    net, init = measure.make_mlp(widths, measure.seed_int(cfg.seed, n, 1))
    p = measure.num_params(init)
    q, m_true = p / n, pools["fresh"]["x"].shape[0]
    tag = f"[seed {cfg.seed} q={q:.3g} N={n}]"
    data = {"empirical": (pools["train"]["x"][:n], pools["train"]["y"][:n]),
            "heldout": (pools["heldout"]["x"][:n], pools["heldout"]["y"][:n]),
            "true": (pools["fresh"]["x"], pools["fresh"]["y"])}
    x_f, y_f = data["true"]
    k_probe = jax.random.fold_in(jax.random.key(cfg.seed), n)
    rng = np.random.default_rng([cfg.seed, n, 2])

    # 1. train (or reload the student of an interrupted run, with its mini-batch losses)
    t = time.perf_counter()
    params_path = os.path.join(outdir, "params.npz")
    reloaded = os.path.exists(params_path)
    if reloaded:
        params, losses = _load_params(params_path, init)
    else:
        params, losses = measure.train_student(
            net, init, *data["empirical"], steps=cfg.train_steps,
            batch_size=cfg.train_batch_size, learning_rate=cfg.learning_rate,
            seed=cfg.seed + n, input_noise=cfg.train_input_noise)
        _save_params(params_path, params, losses)
    train_loss, train_acc = measure.evaluate(net, params, *data["empirical"])
    test_loss, test_acc = measure.evaluate(net, params, x_f, y_f)
    times["train"] = time.perf_counter() - t
    _log(f"{tag} {'reloaded' if reloaded else f'trained {cfg.train_steps} steps'} "
         f"[{times['train']:.1f}s]: train loss {train_loss:.3f} acc {train_acc:.3f} | "
         f"fresh-sample loss {test_loss:.3f} acc {test_acc:.3f}", quiet)
    ops = {k: measure.hessian_operator(net, params, *xy, batch_size=cfg.hvp_batch_size,
                                       reduce=reduce) for k, xy in data.items()}
    if cfg.ggn:
        ops.update({f"ggn_{k}": measure.hessian_operator(
            net, params, *xy, batch_size=cfg.hvp_batch_size, reduce=reduce, kind="ggn")
            for k, xy in data.items()})
    steps = {"empirical": cfg.lanczos_steps, "heldout": cfg.lanczos_steps,
             "true": cfg.true_lanczos_steps}
    meta = {"P": p, "q": q}

    # 2. the True Hessian first: its extremal Ritz vectors feed the directional noise variance
    spectra: dict[str, Spectrum] = {}
    pairs: dict[str, dict] = {}

    def slq_stage(name, op, num_steps, label, num_samples, mv=None, fingerprint="auto"):
        """SLQ of ``op`` (or the matvec ``mv``) into ``spectrum_<name>.json`` with its extremal
        Ritz residuals in the meta; ``pairs[name]`` gets the Ritz pairs (``ritz_<name>.npz``)."""
        t = time.perf_counter()
        path, vec_path = (os.path.join(outdir, f"{s}_{name}.{e}")
                          for s, e in (("spectrum", "json"), ("ritz", "npz")))
        if os.path.exists(path) and os.path.exists(vec_path):
            spectra[name] = load_spectrum(path)
            with np.load(vec_path) as f:
                pairs[name] = {side: {k: f[f"{side}_{k}"] for k in ("values", "residuals",
                                                                    "vectors")}
                               for side in ("top", "bottom")}
        else:
            hk = slq_hooks(checkpoint_dir=os.path.join(outdir, f".lanczos_{name}"),
                           progress=f"{tag} {label}" if progress else False,
                           fingerprint=fingerprint)
            sp, top, bottom = measure.spectrum_with_ritz_vectors(
                mv or op, k_probe, p, num_steps, num_vectors=cfg.num_vectors,
                driver=jaxspec.resolve_driver(driver, op), hooks=hk,
                meta={"hessian": name, "num_samples": num_samples, **meta})
            sp.meta.update(ritz_residual_max=float(top["residuals"][-1]),
                           ritz_residual_min=float(bottom["residuals"][0]))
            pairs[name] = {"top": top, "bottom": bottom}
            np.savez(vec_path, **{f"{side}_{k}": v for side, d in pairs[name].items()
                                  for k, v in d.items()})
            save_spectrum(sp, path)
            spectra[name] = sp
        times[f"slq_{name}"] = time.perf_counter() - t
        sp = spectra[name]
        _log(f"{tag} {name:13s} ({label}, m={num_steps}): lambda in [{sp.lambda_min:.4g}, "
             f"{sp.lambda_max:.4g}], Ritz residuals {sp.meta['ritz_residual_min']:.2g} / "
             f"{sp.meta['ritz_residual_max']:.2g} [{times[f'slq_{name}']:.1f}s]", quiet)

    slq_stage("true", ops["true"], steps["true"], f"true H, M={m_true}", m_true)
    u_top, u_bottom = pairs["true"]["top"]["vectors"][-1], pairs["true"]["bottom"]["vectors"][0]

    # 3. sigma^2 on the fresh samples, along random probes and the true extremal eigenvectors
    t = time.perf_counter()
    probes = rng.standard_normal((cfg.noise_probes, p)).astype(np.float32)
    noise = measure.noise_statistics(net, params, ops, x_f, y_f, probes,
                                     np.stack([u_top, u_bottom]), batch_size=cfg.hvp_batch_size,
                                     q=q, reduce=reduce)
    sigma2, s2_model = noise["sigma2"], noise["direct_s2_model"]
    sigma2_top, sigma2_bottom = (float(x) for x in noise.pop("sigma2_dir"))
    num_batches = noise.pop("num_batches")
    times["sigma2"] = time.perf_counter() - t
    _log(f"{tag} sigma^2 = {sigma2:.4g} (+- {noise['sigma2_stderr'] or float('nan'):.2g}) from "
         f"{num_batches} fresh batches of {cfg.hvp_batch_size}; along the true "
         f"top / bottom eigenvectors: {sigma2_top:.4g} / {sigma2_bottom:.4g}; |eps v|^2 / "
         f"((q + P/M) sigma^2 |v|^2): train {noise['direct_s2_train'] / s2_model:.3g}, "
         f"held-out {noise['direct_s2_heldout'] / s2_model:.3g} [{times['sigma2']:.1f}s]", quiet)

    # 3b. the noise's coupling to the true extremal Ritz vectors, on fresh samples
    t = time.perf_counter()
    c = max(1, min(cfg.coupling_samples, m_true) // 512) * 512  # whole chunks: one shape
    coup = {side: measure.noise_couplings(net, params, x_f[-c:], y_f[-c:], u,
                                          pairs["true"][side]["vectors"])
            for side, u in (("top", u_top), ("bottom", u_bottom))}
    preds = theory.hessian_predictions(pairs["true"], coup, n, m=m_true)
    times["couplings"] = time.perf_counter() - t

    # 4. Empirical (training set) and held-out empirical spectra, same probe key
    for name in ("empirical", "heldout"):
        slq_stage(name, ops[name], steps[name], f"{name} H, N={n}", n)

    # 4b. the Gauss-Newton matrices, and the residual H - GGN on the training and held-out sets
    if cfg.ggn:
        slq_stage("ggn_true", ops["ggn_true"], steps["true"], f"true GGN, M={m_true}", m_true)
        for name in ("empirical", "heldout"):
            slq_stage(f"ggn_{name}", ops[f"ggn_{name}"], steps[name], f"{name} GGN, N={n}", n)
            slq_stage(f"residual_{name}", ops[name], steps[name], f"{name} H - GGN, N={n}", n,
                      mv=jax.tree_util.Partial(measure.difference, ops[name],
                                               ops[f"ggn_{name}"]),
                      fingerprint=ops[name].fingerprint() + "-ggn")
        preds.update(theory.ggn_predictions(spectra["ggn_true"], n, cfg.num_classes, m=m_true))
        t = time.perf_counter()
        gtop = pairs["ggn_true"]["top"]
        coup["ggn_top"] = measure.noise_couplings(net, params, x_f[-c:], y_f[-c:],
                                                  gtop["vectors"][-1], gtop["vectors"],
                                                  kind="ggn")
        preds.update({f"ggn_{k}": v for k, v in theory.hessian_predictions(
            pairs["ggn_true"], {"top": coup["ggn_top"]}, n, m=m_true, sides=("top",)).items()})
        times["couplings_ggn"] = time.perf_counter() - t

    # 4c. the shift beyond first order: the held-out matrices along the true extremal vectors,
    # predicted at 1/N + 1/M (theory.py)
    beyond = {"heldout_rayleigh_max": measure.rayleigh_quotient(ops["heldout"], u_top),
              "heldout_rayleigh_min": measure.rayleigh_quotient(ops["heldout"], u_bottom),
              **{f"rq_{k}": v for k, v in theory.hessian_predictions(
                  pairs["true"], coup, n, m=m_true, reference="rayleigh").items()}}
    if cfg.ggn:
        beyond["ggn_heldout_rayleigh_max"] = measure.rayleigh_quotient(
            ops["ggn_heldout"], pairs["ggn_true"]["top"]["vectors"][-1])
        ggn_rq = theory.ggn_predictions(spectra["ggn_true"], n, cfg.num_classes, m=m_true,
                                        reference="rayleigh")
        beyond.update({f"rq_{k}": ggn_rq[k] for k in ("ggn_pred_lambda_max",
                                                       "ggn_pred_iso_lambda_max")})
        beyond.update({f"rq_ggn_{k}": v for k, v in theory.hessian_predictions(
            pairs["ggn_true"], {"top": coup["ggn_top"]}, n, m=m_true, reference="rayleigh",
            sides=("top",)).items()})

    # 5. the noise matrices themselves, at selected q
    noise_spectra: dict[str, Any] = {}
    if _noise_spectrum_here(q, p, cfg):
        for name in ("heldout", "empirical"):
            t = time.perf_counter()
            mv = jax.tree_util.Partial(measure.difference, ops[name], ops["true"])
            fingerprint = ops[name].fingerprint() + "-" + ops["true"].fingerprint()
            sp = spectra[f"noise_{name}"] = _spectrum(
                os.path.join(outdir, f"spectrum_noise_{name}.json"), lambda: jaxspec.slq(
                    mv, k_probe, p, cfg.noise_lanczos_steps,
                    driver=jaxspec.resolve_driver(driver, ops[name]),
                    hooks=slq_hooks(checkpoint_dir=os.path.join(outdir, f".lanczos_noise_{name}"),
                                    progress=f"{tag} noise {name}" if progress else False,
                                    fingerprint=fingerprint),
                    meta={"hessian": f"{name} - true", "num_samples": n, **meta}))
            times[f"slq_noise_{name}"] = time.perf_counter() - t
            d = noise_spectra[name] = measure.noise_spectrum_stats(sp, s2_model)
            _log(f"{tag} noise {name} - true: lambda in [{sp.lambda_min:.4g}, "
                 f"{sp.lambda_max:.4g}] vs semicircle +-{d['semicircle_edge']:.4g}; skewness "
                 f"{d['skewness']:.3g} (GOE: 0)", quiet)

    # 6. per-sample statistics of the noise (heavy tails)
    per_sample = None
    if cfg.per_sample_count:
        t = time.perf_counter()
        c = max(1, min(cfg.per_sample_count, m_true) // 512) * 512  # whole chunks: one shape
        per_sample = measure.per_sample_stats(net, params, x_f[:c], y_f[:c],
                                              jnp.asarray(probes[0]))
        times["per_sample"] = time.perf_counter() - t

    # 7. theory vs measurement
    emp, tru, ho = spectra["empirical"], spectra["true"], spectra["heldout"]
    # the True Hessian is a mean over M samples: its noise at P / M is undone (theory.py)
    comparisons = {name: compare_spectra(sp, tru, q=q, sigma2=sigma2, reference_q=p / m_true)
                   for name, sp in (("train", emp), ("heldout", ho))}
    for name, comp in comparisons.items():
        report.write_comparison(comp, os.path.join(outdir, f"comparison_{name}"))
    t = time.perf_counter()
    report.plot_point(spectra, os.path.join(outdir, "spectra.png"),
                      title=f"q = P/N = {q:.3g} (P = {p}, N = {n}, M = {m_true})")
    times["plot"] = time.perf_counter() - t
    rows = {k: comparisons["train"].row(k) for k in ("lambda_max", "lambda_min")}
    # Theorem 1 with the noise variance seen along the true extremal eigenvectors ("dir"), and
    # Theorem 1 against the Rayleigh reference ("rq_", the shift beyond first order)
    thm1 = {}
    for e, lam, s2_dir, side in (("max", tru.lambda_max, sigma2_top, "top"),
                                 ("min", tru.lambda_min, sigma2_bottom, "bottom")):
        thm1[f"pred_dir_lambda_{e}"] = float(rmt.empirical_edge(
            np.float32(lam), q=q, sigma2=s2_dir, side=side, reference_q=p / m_true))
        for key, s2 in (("pred", sigma2), ("pred_dir", s2_dir)):
            thm1[f"rq_{key}_lambda_{e}"] = theory.theorem1_rayleigh(
                lam, p=p, n=n, m=m_true, sigma2=s2, side=side)
    result = {
        "seed": cfg.seed, "q": q, "N": n, "P": p, "M": m_true, "predictions": PREDICTIONS,
        "train_loss": train_loss, "train_acc": train_acc,
        "test_loss": test_loss, "test_acc": test_acc,
        "final_minibatch_loss": None if losses is None else float(losses[-10:].mean()),
        **noise, "sigma2_top": sigma2_top, "sigma2_bottom": sigma2_bottom,
        "s": math.sqrt(q * sigma2),
        "true_lambda_max": tru.lambda_max, "true_lambda_min": tru.lambda_min,
        "emp_lambda_max": emp.lambda_max, "emp_lambda_min": emp.lambda_min,
        "heldout_lambda_max": ho.lambda_max, "heldout_lambda_min": ho.lambda_min,
        "pred_lambda_max": rows["lambda_max"]["predicted_empirical"],
        "pred_lambda_min": rows["lambda_min"]["predicted_empirical"],
        "true_noise_edge_goe": 2 * math.sqrt(p / m_true * sigma2),
        "noise_spectrum": noise_spectra or None, "per_sample": per_sample, **preds, **beyond,
        **thm1,
        "coupling_samples": c, **{f"coupling_{side}_total": d["total"] for side, d in coup.items()},
        **{f"coupling_{side}_rest": d["rest"] for side, d in coup.items()},
        **{f"{k}_lambda_{e}": getattr(spectra[k], f"lambda_{e}") for k in spectra
           if k.startswith(("ggn_", "residual_")) for e in ("max", "min")},
        "ritz_residuals": {k: [sp.meta.get("ritz_residual_min"), sp.meta.get("ritz_residual_max")]
                           for k, sp in spectra.items() if "ritz_residual_max" in sp.meta},
        "summaries": {k: v.summary() for k, v in spectra.items()}, "times": times,
    }
    result = json.loads(dumps(result))  # NaN -> None, as the saved file has it
    result["times"]["total"] = time.perf_counter() - t_point
    report.write_json(os.path.join(outdir, "result.json"), result)
    for name in os.listdir(outdir):  # the Lanczos checkpoints are only needed mid-point
        if name.startswith(".lanczos_"):
            shutil.rmtree(os.path.join(outdir, name), ignore_errors=True)
    shifts = {f"{k}_{e}": report.shift_ratio(result, k, e)
              for k in ("pred", "pred_dir", "bw") for e in ("max", "min")}
    rq_shifts = {e: report.shift_ratio(result, "pert", e, reference="rayleigh")
                 for e in ("max", "min")}
    _log(f"{tag} done [{result['times']['total']:.1f}s]: lambda_max true {tru.lambda_max:.4g}, "
         f"held-out {ho.lambda_max:.4g}, train {emp.lambda_max:.4g}; lambda_min true "
         f"{tru.lambda_min:.4g}, held-out {ho.lambda_min:.4g}, train {emp.lambda_min:.4g}. "
         f"Predicted / measured held-out shift, top | bottom: Thm 1 {shifts['pred_max']:.3g} | "
         f"{shifts['pred_min']:.3g}, Thm 1 dir {shifts['pred_dir_max']:.3g} | "
         f"{shifts['pred_dir_min']:.3g}, self-consistent 2nd order {shifts['bw_max']:.3g} | "
         f"{shifts['bw_min']:.3g}; beyond first order (from u^T H_N u): measured "
         f"{ho.lambda_max - result['heldout_rayleigh_max']:.3g} | "
         f"{ho.lambda_min - result['heldout_rayleigh_min']:.3g}, 2nd order / measured "
         f"{rq_shifts['max']:.3g} | {rq_shifts['min']:.3g}", quiet)
    return result


def make_pools(cfg: StudyConfig, n_max: int, m: int, /, *,
               data_seed: int | None = None) -> tuple[dict[str, Any], dict]:
    """The teacher's samples: ``train`` and ``heldout`` pools of ``n_max`` and ``fresh`` of
    ``m``; plus the Bayes-optimal loss and accuracy (means over the fresh pool). The teacher
    comes from ``cfg.seed``, the samples from ``data_seed`` (default ``cfg.seed``).

    Example:
      >>> from experiments.true_hessian.config import smoke
      >>> from experiments.true_hessian.main import make_pools
      >>> pools, bayes = make_pools(smoke(), 10, 20)
      >>> pools["fresh"]["x"].shape, 0 < bayes["bayes_accuracy"] < 1
      ((20, 8), True)
    """
    teacher, t_params = measure.make_mlp(
        [cfg.input_dim, *cfg.teacher_widths, cfg.num_classes], measure.seed_int(cfg.seed, 0, 0))
    data_seed = cfg.seed if data_seed is None else data_seed
    pools = {name: measure.sample_data(teacher, t_params, [data_seed, 0, 10 + i], size,
                                       scale=cfg.teacher_scale)
             for i, (name, size) in enumerate((("train", n_max), ("heldout", n_max),
                                               ("fresh", m)))}
    return pools, {"bayes_loss": float(pools["fresh"]["entropy"].mean()),
                   "bayes_accuracy": float(pools["fresh"]["top_prob"].mean())}


def run_study(config: StudyConfig, workdir: str | os.PathLike, /, *, progress: bool = True,
              quiet: bool = False) -> dict[str, Any]:
    """Runs (or resumes) the sweep and writes every output under ``workdir``.

    Finished points (``N<N>/result.json``) are loaded, not recomputed; the sweep table and the
    extremal-eigenvalue plot are rewritten from all finished points at the end. A ``workdir``
    holding a different ``config.json`` is refused.

    Returns:
      ``{"config", "P", "M", "rows" (summary rows), "points" (results), "bayes_loss",
      "bayes_accuracy" (means over the seeds' fresh pools), "wall_time"}``.

    Example:
      >>> import tempfile
      >>> from experiments.true_hessian import preset, run_study
      >>> cfg = preset("smoke", qs=(2.0,), noise_spectrum_qs=(), per_sample_count=0,
      ...              train_steps=20, lanczos_steps=5, true_lanczos_steps=5, noise_probes=1,
      ...              ggn=False, coupling_samples=512)
      >>> out = run_study(cfg, tempfile.mkdtemp(), progress=False, quiet=True)
      >>> out["rows"][0]["N"], out["P"]
      (278, 555)
    """
    # One live study per work directory: a second one is refused, naming the holder's PID.
    with workdir_lock(workdir) as path:
        return _sweep(config, path, progress=progress, quiet=quiet)


def _sweep(config: StudyConfig, workdir: str, /, *, progress: bool, quiet: bool) -> dict:
    t0 = time.perf_counter()
    cfg_path = os.path.join(workdir, "config.json")
    mismatch = config_mismatch(config, workdir)
    if mismatch:
        raise ValueError(mismatch)
    if not os.path.exists(cfg_path):
        report.write_json(cfg_path, config.to_dict())
    p, m_true = config.num_params, config.true_samples
    ns = sorted({config.num_samples(q) for q in config.qs}, reverse=True)
    _log(f"True-Hessian study: P = {p}, M = {m_true} fresh samples (P/M = {p / m_true:.3g}), "
         f"N in {ns}, backend {jax.default_backend()}, driver "
         f"{jaxspec.resolve_driver(config.driver)}", quiet)
    results, bayes_by_seed = [], {}
    for seed in range(config.seed, config.seed + config.seeds):
        # one seed: the points directly under workdir; several: under seed<s>/ each
        base = workdir if config.seeds == 1 else os.path.join(workdir, f"seed{seed}")
        cfg = dataclasses.replace(config, seed=seed)
        t = time.perf_counter()
        pools, bayes = make_pools(config, max(ns), m_true, data_seed=seed)
        bayes_by_seed[seed] = bayes
        _log(f"seed {seed}: sampled data in {time.perf_counter() - t:.1f}s; Bayes-optimal "
             f"loss {bayes['bayes_loss']:.3f}, accuracy {bayes['bayes_accuracy']:.3f}", quiet)
        for n in ns:
            outdir = os.path.join(base, f"N{n:06d}")
            done = os.path.join(outdir, "result.json")
            if os.path.exists(done):
                with open(done) as f:
                    result = json.load(f)
                if result.get("predictions") == PREDICTIONS:
                    results.append(result)
                    _log(f"[seed {seed} q={p / n:.3g} N={n}] finished earlier: skipped", quiet)
                    continue
                _log(f"[seed {seed} q={p / n:.3g} N={n}] finished earlier with predictions of "
                     "another form: predicting again", quiet)
            results.append(run_point(cfg, n, pools, outdir, progress=progress, quiet=quiet))
    rows = report.write_summary(results, workdir, config.to_dict())
    report.plot_extremal(results, os.path.join(workdir, "extremal.png"))
    report.plot_beyond(results, os.path.join(workdir, "beyond_first_order.png"))
    # the same teacher for every seed; each seed's fresh pool estimates its Bayes values
    bayes = {k: float(np.mean([b[k] for b in bayes_by_seed.values()]))
             for k in ("bayes_loss", "bayes_accuracy")}
    report.write_json(os.path.join(workdir, "bayes.json"), {**bayes, "per_seed": bayes_by_seed})
    wall = time.perf_counter() - t0
    if not quiet:
        with open(os.path.join(workdir, "summary.md")) as f:
            print("\n" + f.read())
        print(f"outputs in {workdir}; total wall time {wall:.1f}s", flush=True)
    return {"config": config.to_dict(), "P": p, "M": m_true, "rows": rows, "points": results,
            **bayes, "wall_time": wall}


def config_mismatch(config: StudyConfig, workdir: str | os.PathLike, /) -> str | None:
    """Why ``workdir`` cannot hold a study of ``config`` (its ``config.json`` is another's), or
    None.

    Example:
      >>> import tempfile
      >>> from experiments.true_hessian import preset
      >>> from experiments.true_hessian.main import config_mismatch
      >>> config_mismatch(preset("smoke"), tempfile.mkdtemp()) is None   # nothing there yet
      True
    """
    path = os.path.join(os.fspath(workdir), "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    saved = {**StudyConfig().to_dict(), **saved}  # a field added since: its default then
    now = config.to_dict()
    diff = {k: (v, now.get(k)) for k, v in saved.items() if v != now.get(k)}
    if not diff:
        return None
    return (f"{workdir} holds a study with another config (saved vs now: {diff}); use another "
            "--workdir or delete it")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.true_hessian",
        description="Empirical vs True Hessian spectra of a teacher-student MLP over a sweep of "
                    "q = P/N, checked against Theorem 1 of Granziol et al. (2020).")
    ap.add_argument("--workdir", default="runs/true_hessian")
    ap.add_argument("--preset", "--config", dest="preset", default="default",
                    choices=config_names())
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a StudyConfig field (repeatable), e.g. --set qs=0.1,1,10")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    ap.add_argument("--quiet", action="store_true", help="no per-stage prints")
    defaults = StudyConfig()
    for f in dataclasses.fields(StudyConfig):
        # every flag goes through apply_overrides, the one parser of config values (a bool
        # takes true/false, a list its values)
        flag = "--" + f.name.replace("_", "-")
        listed = isinstance(getattr(defaults, f.name), tuple)
        ap.add_argument(flag, nargs="*" if listed else None, default=None, metavar="VALUE",
                        help=f"{'(list) ' if listed else ''}{f.name}")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m experiments.true_hessian [--preset P] [...]``.

    Every :class:`StudyConfig` field is a flag (``--student-widths 256 128``,
    ``--qs 0.1 1 10``, ``--lanczos-steps 60``, ...) overriding the preset, as is
    ``--set key=value`` (applied after the flags).

    Example:
      >>> from experiments.true_hessian.main import main
      >>> main(["--help"])  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      SystemExit: 0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    flags = [f"{f.name}={','.join(v) if isinstance(v, list) else v}"
             for f in dataclasses.fields(StudyConfig) if (v := getattr(args, f.name)) is not None]
    try:  # a bad value, or a work directory of another study: the message, no traceback
        config = apply_overrides(get_config(args.preset), flags + args.overrides)
    except ValueError as e:
        parser.error(str(e))
    mismatch = config_mismatch(config, args.workdir)
    if mismatch:
        parser.error(mismatch)
    run_study(config, args.workdir, progress=not args.no_progress, quiet=args.quiet)
    return 0
