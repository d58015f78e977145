"""Tests of the experiments/true_hessian package: the True-Hessian study on its smoke preset.

One module-scoped run of the smoke sweep (q = 0.3, 1, 3; P = 555, M = 6,000) feeds every test:
it must finish in under a minute, write every artefact in a parseable form, and show the paper's
qualitative claim where Theorem 1's premise holds.
"""

import csv
import io
import json
import math
import os
import shutil
import time

import numpy as np
import pytest

from experiments.true_hessian import (SUMMARY_COLUMNS, StudyConfig, apply_overrides, preset,
                                      run_study, summary_rows)
from experiments.true_hessian.main import main
from jaxspec.io import load_spectrum

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("true_hessian"))
    t = time.perf_counter()
    out = run_study(preset("smoke"), workdir, progress=False, quiet=True)
    return {"workdir": workdir, "out": out, "wall": time.perf_counter() - t}


def _png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    return head == PNG_MAGIC and os.path.getsize(path) > 1000


def test_smoke_study_runs_in_under_a_minute(study):
    assert study["wall"] < 60, f"smoke study took {study['wall']:.1f}s"


def test_outputs_exist_and_parse(study):
    wd, out = study["workdir"], study["out"]
    cfg = json.load(open(os.path.join(wd, "config.json")))
    assert StudyConfig.from_dict(cfg) == preset("smoke")
    summary = json.load(open(os.path.join(wd, "summary.json")))
    assert len(summary["rows"]) == len(preset("smoke").qs) == len(out["points"])
    rows = list(csv.DictReader(io.StringIO(open(os.path.join(wd, "summary.csv")).read())))
    assert [r["N"] for r in rows] == [str(r["N"]) for r in summary["rows"]]
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    md = open(os.path.join(wd, "summary.md")).read()
    assert md.startswith("Seed 0") and "Noise matrix spectra" in md and "Gauss-Newton" in md
    assert all(_png(os.path.join(wd, f)) for f in ("extremal.png", "beyond_first_order.png"))
    assert "Shift beyond first order" in md
    for r in out["points"]:
        d = os.path.join(wd, f"N{r['N']:06d}")
        assert _png(os.path.join(d, "spectra.png"))
        assert json.load(open(os.path.join(d, "result.json")))["N"] == r["N"]
        for name in ("empirical", "heldout", "true", "ggn_true", "ggn_empirical", "ggn_heldout",
                     "residual_empirical", "residual_heldout"):
            s = load_spectrum(os.path.join(d, f"spectrum_{name}.json"))
            assert s.meta["hessian"] == name and abs(s.weights.sum() - 1) < 1e-6
            assert s.meta["ritz_residual_max"] >= 0 and s.meta["ritz_residual_min"] >= 0
        for which in ("train", "heldout"):
            comp = json.load(open(os.path.join(d, f"comparison_{which}.json")))
            assert comp["rows"][0]["quantity"] == "lambda_max"
            table = list(csv.DictReader(open(os.path.join(d, f"comparison_{which}.csv"))))
            assert table[0]["quantity"] == "lambda_max"
            assert open(os.path.join(d, f"comparison_{which}.md")).read().startswith("| quantity")
        assert not [n for n in os.listdir(d) if n.startswith(".lanczos")]  # cleaned up
    # the noise spectra were measured at the point nearest q = 1
    noisy = [r for r in out["points"] if r["noise_spectrum"]]
    assert len(noisy) == 1 and abs(noisy[0]["q"] - 1) < 0.01


def test_heldout_empirical_extremes_more_extreme_than_true_for_q_ge_1(study):
    """The paper's claim, where Theorem 1's premise holds: the empirical Hessian of N samples
    drawn independently of the weights has lambda'_min < lambda_min for q >= 1, and also
    lambda'_max > lambda_max for q >= 3 (the training-set Hessian at its own minimum is
    reported, not asserted: it is pulled towards PSD by the training, see the README).

    At q = 1 the predicted top shift q sigma^2 / lambda_1 is small against the sampling
    fluctuation of the top edge at N = 555, and with this seed the held-out top edge comes out
    1.7 % *below* the true one (1.159 vs 1.179, both converged: the same at m = 60), so the top
    edge is asserted only where the shift dominates."""
    rows = [r for r in study["out"]["rows"] if r["q"] >= 1]
    assert len(rows) >= 2
    for r in rows:
        assert r["heldout_lambda_min"] < r["true_lambda_min"], r
        if r["q"] >= 3:
            assert r["heldout_lambda_max"] > r["true_lambda_max"], r
            assert r["heldout_more_extreme"]


def test_sigma2_matches_the_sampling_scale_of_heldout_noise(study):
    # |(H_N - H_M) v|^2 / |v|^2 has mean (q + P/M) sigma^2 for independent samples
    for r in study["out"]["rows"]:
        assert 0.4 < r["direct_ratio_heldout"] < 2.5, r
        assert r["sigma2"] > 0 and r["sigma2_top"] > r["sigma2"]  # the top direction is noisier


def test_points_with_predictions_of_an_older_form_are_predicted_again(study, tmp_path):
    """A point finished before the predictions undid the True Hessian's own noise is not
    reused as it is: its predictions are made again from its saved weights and spectra."""
    wd = tmp_path / "copy"
    shutil.copytree(study["workdir"], wd)
    point = sorted(wd.glob("N*"))[0]
    old = json.loads((point / "result.json").read_text())
    stale = {**old, "pert_lambda_max": 123.0}
    del stale["predictions"]
    (point / "result.json").write_text(json.dumps(stale))
    again = run_study(preset("smoke"), str(wd), progress=False, quiet=True)
    redone = next(r for r in again["points"] if r["N"] == old["N"])
    assert redone["predictions"] == old["predictions"]
    assert redone["pert_lambda_max"] == pytest.approx(old["pert_lambda_max"], rel=1e-5)


def test_rerun_skips_finished_points_and_refuses_another_config(study):
    wd = study["workdir"]
    t = time.perf_counter()
    again = run_study(preset("smoke"), wd, progress=False, quiet=True)
    assert time.perf_counter() - t < 20
    assert summary_rows(again["points"]) == study["out"]["rows"]
    assert again["points"] == study["out"]["points"]
    with pytest.raises(ValueError, match="another config"):
        run_study(preset("smoke", seed=1), wd, progress=False, quiet=True)


def test_cli_overrides_reach_the_config(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("experiments.true_hessian.main.run_study",
                        lambda cfg, wd, **kw: seen.update(cfg=cfg, wd=wd, **kw))
    assert main(["--preset", "smoke", "--workdir", str(tmp_path), "--qs", "1", "10",
                 "--lanczos-steps", "7", "--no-progress"]) == 0
    assert seen["cfg"] == preset("smoke", qs=(1.0, 10.0), lanczos_steps=7)
    assert seen["wd"] == str(tmp_path) and seen["progress"] is False
    assert main(["--preset", "smoke", "--workdir", str(tmp_path), "--set", "qs=0.5,2",
                 "--set", "noise_spectrum_qs=[]", "--quiet"]) == 0
    assert seen["cfg"] == apply_overrides(preset("smoke"), ["qs=0.5,2", "noise_spectrum_qs=[]"])
    assert seen["cfg"].qs == (0.5, 2.0) and seen["cfg"].noise_spectrum_qs == ()
    assert seen["quiet"] is True
    # flags take their values as --set does: a bool false is false, one value is a list of one
    assert main(["--preset", "smoke", "--workdir", str(tmp_path), "--ggn", "false",
                 "--qs", "1"]) == 0
    assert seen["cfg"].ggn is False and seen["cfg"].qs == (1.0,)


@pytest.mark.parametrize("argv, words", [
    (["--seeds", "0"], "'seeds' must be an int > 0"),
    (["--qs", "-1"], "'qs' must be a non-empty tuple of finite floats > 0"),
    (["--ggn", "maybe"], "'ggn' needs true/false"),
    (["--train-steps", "0"], "'train_steps' must be an int > 0"),
    (["--noise-probes", "0"], "'noise_probes' must be an int > 0"),
    (["--hvp-batch-size", "6000"], "two batches of hvp_batch_size"),   # smoke: P = 555
    (["--true-ratio", "2"], "to exceed the largest N"),   # M = 1500, N = 1850 at q = 0.3
])
def test_cli_refuses_bad_values_before_writing(tmp_path, capsys, argv, words):
    """A value the study cannot run with fails at once, with its key named and no traceback,
    and writes nothing (these crashed after training, or ran with --ggn false as true)."""
    workdir = tmp_path / "w"
    with pytest.raises(SystemExit) as info:
        main(["--preset", "smoke", "--workdir", str(workdir)] + argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and words in err and "Traceback" not in err, err
    assert not workdir.exists()


def test_a_point_killed_mid_lanczos_resumes_and_reports_its_training_loss(tmp_path, monkeypatch):
    """A point killed after training (params.npz saved) and inside a Lanczos run: the rerun
    reloads the student, resumes Lanczos from its checkpoint, and reports the mini-batch loss
    of the original training (saved with the parameters, not None)."""
    import jaxspec
    from experiments.true_hessian import measure

    cfg = preset("smoke", qs=(2.0,), noise_spectrum_qs=(), per_sample_count=0, train_steps=20,
                 lanczos_steps=12, true_lanczos_steps=12, noise_probes=1, ggn=False,
                 coupling_samples=512)
    full = run_study(cfg, tmp_path / "full", progress=False, quiet=True)["points"][0]

    real, calls = jaxspec.slq_runs, []

    def dies_after_a_chunk(*args, hooks=None, **kw):  # the 2nd run (empirical Hessian) dies
        class Die(jaxspec.LanczosHook):
            def after_chunk(self, snapshot, step, num_steps):
                raise KeyboardInterrupt

        calls.append(1)
        return real(*args, hooks=(lambda i, n: [*hooks(i, n), Die()]) if len(calls) == 2
                    else hooks, **kw)

    monkeypatch.setattr(jaxspec, "slq_runs", dies_after_a_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, tmp_path / "resumed", progress=False, quiet=True)
    point = next((tmp_path / "resumed").glob("N*"))
    assert (point / "params.npz").exists() and not (point / "result.json").exists()
    assert list((point / ".lanczos_empirical").glob("lanczos_0.npz"))  # a checkpoint was left
    monkeypatch.setattr(jaxspec, "slq_runs", real)
    resumed = run_study(cfg, tmp_path / "resumed", progress=False, quiet=True)["points"][0]
    assert resumed["final_minibatch_loss"] == full["final_minibatch_loss"] is not None
    for k in ("emp_lambda_max", "emp_lambda_min", "true_lambda_max", "sigma2"):
        assert resumed[k] == pytest.approx(full[k], rel=1e-5), k
    assert measure.num_params(measure.make_mlp([8, 24, 12, 3], 0)[1]) == full["P"]


def test_predictors_and_gauss_newton_are_reported(study):
    """Every point carries the second-order predictions (finite, on the outer side of the true
    edge), the GGN's Wishart prediction, and the residual H - GGN; the GGN matrices are PSD up
    to Lanczos rounding, and at the interpolating point the residual of the training set is
    narrower than that of N held-out samples (the training-set Hessian is near its GGN)."""
    for r in study["out"]["points"]:
        # the top Ritz values have converged, so the Rayleigh bound holds for the top edges
        for pre in ("", "ggn_"):
            top = r[f"{pre}heldout_lambda_max"]
            assert top >= r[f"{pre}heldout_rayleigh_max"] - 1e-5 * top
        assert r["rq_pert_lambda_max"] > r["pert_lambda_max"]        # 1/N + 1/M > 1/N - 1/M
        assert r["bw_lambda_max"] > r["true_lambda_max"] > 0 > r["true_lambda_min"]
        assert r["bw_lambda_min"] < r["true_lambda_min"] and r["fluct_max"] > 0
        assert r["ggn_pred_lambda_max"] > r["ggn_true_lambda_max"] > 0
        for name in ("true", "empirical", "heldout"):
            assert r[f"ggn_{name}_lambda_min"] > -1e-4 * r[f"ggn_{name}_lambda_max"]
    rows = study["out"]["rows"]
    last = max(rows, key=lambda r: r["q"])
    assert last["train_acc"] > last["test_acc"]
    assert last["residual_empirical_lambda_min"] > last["residual_heldout_lambda_min"]
    assert all(r["ritz_rel_residual_max"] < 0.05 for r in rows)   # converged top Ritz values


def test_seeds_give_mean_and_spread(tmp_path):
    cfg = preset("smoke", qs=(2.0,), noise_spectrum_qs=(), per_sample_count=0, train_steps=20,
                 lanczos_steps=6, true_lanczos_steps=6, noise_probes=1, seeds=2,
                 coupling_samples=512, ggn=False)
    out = run_study(cfg, tmp_path, progress=False, quiet=True)
    assert sorted(r["seed"] for r in out["rows"]) == [0, 1]
    assert (tmp_path / "seed1" / "N000278" / "result.json").exists()
    a, b = out["points"]
    assert a["true_lambda_max"] != b["true_lambda_max"]        # other data, init and probe
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("Seeds: 0, 1 (2)") and " +- " in md


def _anisotropic_wishart_draws(num_draws, n, m, seed=0):
    """Draws of ``H_N`` and ``H_M`` for ``H = diag(levels)`` (a top level 1.0 above a bulk) plus
    the mean of ``i.i.d. X_i = b_i b_i^T - Sigma``, ``b_i ~ N(0, Sigma)``, ``Sigma`` diagonal and
    largest along the top eigenvector ``u = e_P``: the noise's coupling to ``u`` is
    ``c_j = E[(b_j b_u)^2] = Sigma_jj Sigma_uu``. Returns the levels, the couplings and, per draw,
    ``lambda_max(H_N)``, ``lambda_max(H_M)`` and ``u_M^T H_N u_M`` (u_M: H_M's top vector)."""
    rng = np.random.default_rng(seed)
    p = 80
    levels = np.append(rng.uniform(-0.1, 0.3, p - 1), 1.0)
    sigma = np.append(rng.uniform(0.02, 0.3, p - 1), 1.0)
    couplings = np.append(sigma[:-1] * sigma[-1], 2 * sigma[-1] ** 2)

    def draw(k):
        b = rng.standard_normal((k, p)) * np.sqrt(sigma)
        return np.diag(levels) + b.T @ b / k - np.diag(sigma)

    out = []
    for _ in range(num_draws):
        h_n, h_m = draw(n), draw(m)
        w_m, v_m = np.linalg.eigh(h_m)
        u = v_m[:, -1]
        out.append((np.linalg.eigvalsh(h_n)[-1], w_m[-1], u @ h_n @ u))
    return levels, couplings, np.array(out)


def test_the_shift_beyond_first_order_is_predicted_at_one_over_n_plus_one_over_m():
    """lambda(H_N) - u_M^T H_N u_M has mean s (1/N + 1/M) (s = sum_j c_j / (lambda - theta_j),
    the second-order coefficient) and scatters far less than lambda(H_N) - lambda(H_M), whose
    first-order terms do not cancel: theory.hessian_predictions(reference="rayleigh") against
    dense draws of an anisotropic Wishart noise (exact couplings)."""
    from experiments.true_hessian import theory

    n, m = 400, 2000
    levels, couplings, d = _anisotropic_wishart_draws(60, n, m)
    order = np.argsort(levels)
    pairs = {"top": {"values": levels[order]}}
    coup = {"top": {"couplings": couplings[order], "rest": 0.0}}
    predicted = theory.hessian_predictions(pairs, coup, n, m=m, reference="rayleigh",
                                           sides=("top",))["pert_lambda_max"] - 1.0
    beyond, eigen = d[:, 0] - d[:, 2], d[:, 0] - d[:, 1]
    assert (beyond >= -1e-12).all()                    # Rayleigh: lambda_max >= u^T H_N u
    stderr = beyond.std(ddof=1) / math.sqrt(len(beyond))
    assert abs(beyond.mean() - predicted) < 4 * stderr, (beyond.mean(), predicted, stderr)
    assert stderr < 0.04 * predicted                   # resolved to a few per cent by 60 draws
    assert beyond.std() < 0.2 * eigen.std()            # the first-order scatter is gone
    # 1/N alone, or 1/N - 1/M (the eigenvalue reference), would be many standard errors off
    for wrong in (1 / n, 1 / n - 1 / m):
        assert abs(beyond.mean() - predicted * wrong / (1 / n + 1 / m)) > 4 * stderr


def test_extremal_plot_error_bars_are_the_summary_tables_sample_std(tmp_path, monkeypatch):
    """Review finding: summary.md gives mean +- the sample standard deviation (ddof=1) over
    seeds, but extremal.png drew error bars of np.nanstd (ddof=0): with 2 seeds a factor
    sqrt(2) shorter than the spread the table reports for the same cells."""
    import matplotlib.axes

    from experiments.true_hessian.report import aggregate_cell, plot_extremal

    seen = {}
    real = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, *args, yerr=None, label=None, **kw):
        seen.setdefault(label, np.asarray(yerr, float))
        return real(self, x, y, *args, yerr=yerr, label=label, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    r = dict(q=1.0, emp_lambda_max=2.0, pred_lambda_max=1.5, heldout_lambda_max=1.8,
             true_lambda_min=-0.1, emp_lambda_min=-0.5, pred_lambda_min=-0.6,
             heldout_lambda_min=-0.4, s=0.5)
    results = [{**r, "true_lambda_max": 1.0, "seed": 0}, {**r, "true_lambda_max": 2.0, "seed": 1}]
    plot_extremal(results, str(tmp_path / "e.png"))
    table = aggregate_cell([1.0, 2.0])                        # '1.5 +- 0.71'
    assert float(seen["True (M fresh)"][0]) == pytest.approx(float(table.split("+-")[1]),
                                                            rel=0.02), (seen, table)


def _rayleigh_rows(measured, predicted):
    return [dict(true_lambda_max=1.0, heldout_lambda_max=1.0 + d, heldout_rayleigh_max=1.0,
                 rq_pert_lambda_max=1.0 + p) for d, p in zip(measured, predicted)]


def test_pooled_precision_includes_the_predicted_scatter():
    """Review finding: each seed is another network, so the predicted shift scatters too. Three
    seeds that measure the same D but predict 0.2x, 1x and 1.8x of it pool to 1, unresolved;
    and the default run's q = 0.1 top (per-seed ratios 0.63, 1.44, 0.83) has a delta-method
    s.e. of 0.28, where the measured mean alone said 0.15."""
    from experiments.true_hessian.report import pooled_shift_ratio

    ratio, err = pooled_shift_ratio(_rayleigh_rows([0.01] * 3, [0.002, 0.01, 0.018]), "pert",
                                    "max", reference="rayleigh")
    assert ratio == pytest.approx(1.0) and err == pytest.approx(0.008 / math.sqrt(3) / 0.01)
    ratio, err = pooled_shift_ratio(_rayleigh_rows([0.004604, 0.005177, 0.002988],
                                                   [0.002879, 0.007438, 0.002494]),
                                    "pert", "max", reference="rayleigh")
    assert ratio == pytest.approx(1.0, abs=0.01) and 0.25 < err < 0.32, err


@pytest.mark.parametrize("theta, s2, qn, qm, expected", [
    (1.0, 0.3, 1.0, 0.25, 0.3 * 1.25),                        # an outlier at N and at M
    (1.0, 1.5, 1.0, 0.05, 2 * math.sqrt(1.5) - 1 + 0.05 * 1.5),  # inside the bulk at N
])
def test_theorem_1_against_the_rayleigh_reference_undoes_the_reference_shift(theta, s2, qn, qm,
                                                                            expected):
    """Review finding: spiked GOE, large P: lambda(H_M) = theta + qM s2 / theta and
    E[u_M^T H_N u_M] = theta - qM s2 / theta, so E[D] = E[lambda(H_N)] - theta + qM s2 / theta
    (dense draws at P = 200: 0.3817 +- 0.0047 against the limit 0.375; 1.497 +- 0.017 against
    1.5245). Feeding lambda(H_M) to Theorem 1 at qN + qM was 7% and 6% low."""
    from experiments.true_hessian import theory

    lam_m = theta + qm * s2 / theta
    d = theory.theorem1_rayleigh(lam_m, p=100, n=100 / qn, m=100 / qm, sigma2=s2) - lam_m
    assert d == pytest.approx(expected, rel=1e-5)
    bottom = theory.theorem1_rayleigh(-lam_m, p=100, n=100 / qn, m=100 / qm, sigma2=s2,
                                      side="bottom") + lam_m
    assert bottom == pytest.approx(-expected, rel=1e-5)
