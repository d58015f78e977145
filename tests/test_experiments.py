"""Tests of experiments/: the whole paper chain at smoke scale, resume, commands and report."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
from checkpoints import recorded_saves

from experiments import paper
from experiments.spectrum import compute_spectrum, main as spectrum_main
from experiments.spectrum_settings import SpectrumSettings
from jaxspec import Spectrum
from jaxspec.io import load_spectrum, save_spectrum


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke preset's whole chain (train -> spectra -> epochs -> compare -> report)."""
    out = str(tmp_path_factory.mktemp("paper_smoke"))
    return paper.run_preset("smoke", out, verbose=False)


def _md_tables(text):
    """Markdown tables of a document as lists of rows of cells (header and rule dropped)."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = {"header": cells, "rows": []}
                tables.append(current)
            elif not all(set(c) <= {"-"} for c in cells):
                current["rows"].append(cells)
        else:
            current = None
    return tables


def test_smoke_chain_writes_every_artefact(smoke):
    spectra_dir = os.path.join(smoke["workdir"], "spectra")
    for mode in ("empirical", "augmented"):
        path = smoke["spectra"][mode]
        with open(path) as f:
            d = json.load(f)
        assert {"nodes", "weights", "meta", "summary"} <= set(d)
        meta = d["meta"]
        for key in ("mode", "model", "P", "N", "bn_mode", "time_s", "num_steps", "batch_size",
                    "epoch", "symmetry_relative_error", "driver"):
            assert key in meta, key
        assert meta["mode"] == mode and meta["bn_mode"] == "batch"
        assert len(d["nodes"]) == meta["num_steps"] == (8 if mode == "empirical" else 6)
        assert os.path.exists(path.replace(".json", ".png"))
    emp = load_spectrum(smoke["spectra"]["empirical"])
    aug = load_spectrum(smoke["spectra"]["augmented"])
    assert aug.meta["N"] == 2 * emp.meta["N"] == 2 * 128  # K x N
    assert aug.meta["num_per_image"] == 2 and "variants_sha1" in aug.meta
    assert emp.meta["sigma2"] > 0 and emp.meta["q"] == pytest.approx(emp.meta["P"] / 128)
    for ext in ("json", "md", "csv", "png"):
        assert os.path.exists(smoke["compare"][ext])
    for ext in ("json", "csv", "png"):
        assert os.path.exists(smoke["epochs"][ext])
    assert os.path.exists(os.path.join(spectra_dir, "empirical_e0000.png"))  # per-epoch figure
    assert not any(n.startswith(".lanczos") for n in os.listdir(spectra_dir))  # cleaned up

    # The comparison: the paper's table row, Table 3, negatives, claims, Theorem 1.
    with open(smoke["compare"]["json"]) as f:
        cmp = json.load(f)
    assert cmp["table"]["lambda1_emp"] == emp.lambda_max
    assert cmp["table"]["lambdan_aug"] == aug.lambda_min
    assert 0 <= cmp["table"]["test_acc"] <= 100
    assert len(cmp["top_weights"]["empirical"]) == 3
    assert set(cmp["claims"]) == {"narrower", "smaller_top", "smaller_bottom", "fewer_negative",
                                  "lighter_negative"}
    rows = {r["quantity"]: r for r in cmp["theorem1"]["rows"]}
    assert rows["lambda_max"]["predicted_empirical"] is not None  # sigma^2 was estimated

    # The report parses: every table row has its header's width, our numbers are numbers.
    with open(smoke["report"]) as f:
        text = f.read()
    tables = _md_tables(text)
    assert len(tables) >= 5
    for t in tables:
        assert all(len(r) == len(t["header"]) for r in t["rows"]), t["header"]
    main = tables[0]
    ours = [r for r in main["rows"] if r[1] == "ours"]
    assert len(ours) == 1
    values = [float(x) for x in ours[0][5:9]]
    assert values == pytest.approx([emp.lambda_max, emp.lambda_min, aug.lambda_max,
                                    aug.lambda_min], rel=1e-3)
    assert any(r[1] == "paper" and r[5] == "6.82" for r in main["rows"])
    for fig in ("compare_e0002.png", "epochs_empirical.png"):
        assert fig in text
    with open(smoke["report_json"]) as f:
        assert json.load(f)["entries"][0]["ours"]["claims"] == cmp["claims"]


def test_a_rerun_reuses_the_chain_and_says_so(smoke, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(os.path.dirname(smoke["report"]), out)
    paper.run_preset("smoke", str(out), verbose=False)
    preamble = (out / "report.md").read_text()
    assert ("this invocation (training, the empirical spectrum, the augmented spectrum reused "
            "from an earlier one)") in preamble
    assert "Wall time of the chain" in open(smoke["report"]).read()


def test_resume_after_kill_gives_the_same_ritz_values(smoke, tmp_path):
    workdir = smoke["workdir"]
    reference = load_spectrum(smoke["spectra"]["empirical"])  # uninterrupted, same settings
    settings = SpectrumSettings(mode="empirical", num_steps=8, batch_size=32, noise_probes=0,
                                checkpoint_every=3, progress=False)
    # the process dies right after its first checkpoint
    with pytest.raises(KeyboardInterrupt), recorded_saves(die_after=1) as killed_at:
        compute_spectrum(workdir, 2, settings, out_dir=str(tmp_path), plot=False)
    assert killed_at == [3]
    ckpt = tmp_path / ".lanczos_empirical_e0002"
    assert (ckpt / "lanczos_0.npz").exists()

    # Other settings must not resume that state.
    with pytest.raises(ValueError, match="other settings"):
        compute_spectrum(workdir, 2, SpectrumSettings(mode="empirical", num_steps=7,
                                                      batch_size=32, noise_probes=0,
                                                      progress=False),
                         out_dir=str(tmp_path), plot=False)
    resumed = compute_spectrum(workdir, 2, settings, out_dir=str(tmp_path), plot=False).spectrum
    assert resumed.meta["resumed"] is True and reference.meta["resumed"] is False
    np.testing.assert_allclose(resumed.nodes, reference.nodes, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(resumed.weights, reference.weights, rtol=1e-5, atol=1e-12)
    assert not ckpt.exists()


def test_a_run_that_failed_before_saving_blocks_nothing(smoke, tmp_path, monkeypatch):
    """A run that stops before its first Lanczos save (here: its symmetry probe fails) leaves
    only its settings in the state directory: the next run, with other settings, starts."""
    import jaxspec

    def run(steps):
        settings = SpectrumSettings(mode="empirical", num_steps=steps, batch_size=32,
                                    num_images=32, noise_probes=0, progress=False)
        return compute_spectrum(smoke["workdir"], 2, settings, out_dir=str(tmp_path),
                                plot=False)

    def failing_probe(*args, **kwargs):
        raise RuntimeError("probe failed")

    with monkeypatch.context() as m:
        m.setattr(jaxspec, "assert_symmetric", failing_probe)
        with pytest.raises(RuntimeError, match="probe failed"):
            run(6)
    state = tmp_path / ".lanczos_empirical_e0002"
    assert sorted(os.listdir(state)) == ["settings.json"]
    assert run(4).spectrum.nodes.size == 4


def test_spectrum_settings_are_checked_with_the_field_named(smoke, capsys):
    for kwargs, words in [({"num_steps": 0}, "num_steps"), ({"batch_size": 0}, "batch_size"),
                          ({"num_images": 0}, "num_images"), ({"noise_probes": -1}, "noise_probes"),
                          ({"top_k": 1.5}, "top_k"), ({"checkpoint_every": True}, "checkpoint_every"),
                          ({"num_per_image": 163}, "at most 162"), ({"blocks": ("(",)}, "regex")]:
        with pytest.raises(ValueError, match=words):
            SpectrumSettings(**kwargs)
    # The command line: the usage and the message, no traceback, nothing written.
    out = smoke["workdir"] + "/bad_settings"
    for extra, words in [(["--steps", "0"], "num_steps"), (["--epoch", "1"], "available: [0, 2]"),
                         (["--npz", out + ".npz"], "no such file"),
                         (["--mode", "augmented", "--num-per-image", "500"], "at most 162")]:
        with pytest.raises(SystemExit) as info:
            spectrum_main(["--workdir", smoke["workdir"], "--out", out] + extra)
        err = capsys.readouterr().err
        assert info.value.code == 2 and words in err and "Traceback" not in err, err
    assert not os.path.exists(out)
    # A comparison of spectra not computed yet names the missing file.
    from experiments.compare import main as compare_main

    with pytest.raises(SystemExit) as info:
        compare_main(["--workdir", smoke["workdir"], "--epoch", "0", "--spectra-dir", out])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "empirical_e0000.json" in err and "Traceback" not in err


def test_epoch_sweep_loads_the_training_set_once(smoke, tmp_path, monkeypatch):
    from experiments import epochs

    loads = []
    load = epochs.load_training_set
    monkeypatch.setattr(epochs, "load_training_set",
                        lambda *a, **k: loads.append(1) or load(*a, **k))
    settings = SpectrumSettings(mode="empirical", num_steps=4, batch_size=32, noise_probes=0,
                                progress=False)
    sweep = epochs.epoch_spectra(smoke["workdir"], (0, 2), settings, out_dir=str(tmp_path),
                                 verbose=False)
    assert sorted(sweep) == [0, 2] and len(loads) == 1
    assert sweep[0].meta["N"] == sweep[2].meta["N"] == 128
    # a rerun with other settings does not take those spectra for its own
    longer = SpectrumSettings(mode="empirical", num_steps=6, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="num_steps: 4 there, 6 here"):
        epochs.epoch_spectra(smoke["workdir"], (0, 2), longer, out_dir=str(tmp_path),
                             verbose=False)


def test_print_commands_cover_every_paper_run(capsys):
    assert paper.main(["--print-commands", "--runs-dir", "R"]) == 0
    out = capsys.readouterr().out
    assert len(paper.RUNS) == 8
    for run in paper.RUNS:
        assert f"python -m train --config {run.config} --workdir R/{run.config}" in out
        for mode in ("empirical", "augmented"):
            assert (f"python -m experiments.spectrum --workdir R/{run.config} --epoch "
                    f"{run.epoch} --mode {mode}") in out
        assert f"python -m experiments.compare --workdir R/{run.config} --epoch {run.epoch}" in out
    assert "python -m experiments.paper --report --runs-dir R" in out
    # The paper's constants, Table 1 / section 6.1.
    c100 = paper.PAPER[("preresnet110", "cifar100", "normal")]
    assert (c100.lambda1_emp, c100.lambdan_emp, c100.negative_emp) == (20.56, -6.54,
                                                                       (43, 100, 0.05))


def test_report_from_a_runs_directory(smoke, tmp_path):
    # One paper run "done" (our smoke comparison in its place), the others not run yet.
    run = paper.RUNS[0]
    sdir = tmp_path / run.config / "spectra"
    sdir.mkdir(parents=True)
    shutil.copy(smoke["compare"]["json"], sdir / f"compare_e{run.epoch:04d}.json")
    shutil.copy(smoke["compare"]["png"], sdir / f"compare_e{run.epoch:04d}.png")
    assert paper.main(["--report", "--runs-dir", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    main = _md_tables(text)[0]
    labels = {(r[0], r[1]) for r in main["rows"]}
    assert (run.label, "ours") in labels and (run.label, "paper") in labels
    assert ("VGG-16 CIFAR-10 Overfit", "ours") in labels  # no paper numbers: listed, not run
    assert f"{run.config}/spectra/compare_e{run.epoch:04d}.png" in text
    data = json.loads((tmp_path / "report.json").read_text())
    assert sum(e["ours"] is not None for e in data["entries"]) == 1


def test_spectrum_cli_skips_existing(smoke, capsys):
    argv = ["--workdir", smoke["workdir"], "--mode", "augmented", "--skip-existing"]
    same = ["--steps", "6", "--num-per-image", "2", "--batch-size", "32"]  # the smoke preset's
    assert spectrum_main(argv + same) == 0
    assert "exists" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the default settings differ: a usage error
        spectrum_main(argv)
    assert "num_steps: 6 there, 80 here" in capsys.readouterr().err
    # another curvature has files of its own, and a Hessian's file never stands in for it
    from experiments.spectrum import existing_spectrum
    (hessian,) = glob.glob(os.path.join(smoke["workdir"], "spectra", "augmented_e*.json"))
    ggn = SpectrumSettings(mode="augmented", num_steps=6, num_per_image=2, batch_size=32,
                           curvature="ggn")
    assert ggn.name == "augmented_ggn"
    with pytest.raises(ValueError, match="curvature: 'hessian' there, 'ggn' here"):
        existing_spectrum(hessian, ggn)


def test_compare_spectra_saved_without_metadata(tmp_path):
    """Spectra saved by hand (no N, P, model): the plot is drawn and no 'None' is written."""
    from experiments.compare import compare_paths

    for name, nodes in (("e", [-1.0, 0.0, 3.0]), ("a", [0.0, 2.0])):
        save_spectrum(Spectrum(nodes, np.full(len(nodes), 1.0 / len(nodes))),
                      str(tmp_path / f"{name}.json"))
    res = compare_paths(str(tmp_path / "e.json"), str(tmp_path / "a.json"), plot=True)
    assert os.path.getsize(res.paths["png"]) > 0
    with open(res.paths["md"]) as f:
        md = f.read()
    assert md.startswith("# Empirical vs Augmented Hessian: ? on ?, epoch ?") and "None" not in md
    with open(res.paths["json"]) as f:
        assert json.load(f)["q_empirical"] is None  # NaN written as null


def test_spectrum_of_another_kind_with_top_k_trace_and_blocks(smoke, tmp_path):
    """--curvature ggn --top-k 2 --trace --blocks: the files, their agreement with each other,
    and the Hessian's files left alone."""
    settings = SpectrumSettings(mode="empirical", num_steps=12, batch_size=32, num_images=32,
                                noise_probes=0, progress=False, curvature="ggn", top_k=2,
                                trace=True, blocks=(r"\[0\]", r"\[1\]"))
    r = compute_spectrum(smoke["workdir"], 2, settings, out_dir=str(tmp_path), plot=False)
    assert os.path.basename(r.json_path) == "empirical_ggn_e0002.json"
    s = load_spectrum(r.json_path)
    assert s.meta["curvature"] == "ggn" and s.lambda_min > -1e-5          # the GGN is PSD
    stem = str(tmp_path / "empirical_ggn_e0002")
    with open(stem + "_topk.json") as f:
        top = json.load(f)
    assert all(top["converged"]) and top["settings"]["curvature"] == "ggn"
    # the largest Ritz value of the spectrum is an eigenvalue to within the top pair's residual
    assert abs(top["values"][-1] - s.lambda_max) <= 1e-3 * top["values"][-1] + top["residuals"][-1]
    with open(stem + "_trace.json") as f:
        trace = json.load(f)
    moment = s.meta["dim"] * float(np.sum(s.weights * s.nodes))       # the probe's estimate
    assert abs(trace["value"] - moment) < 5 * trace["stderr"] + 0.5 * abs(moment)
    with open(stem + "_blocks.json") as f:
        blocks = json.load(f)["spectra"]
    assert len(blocks) == 2 and all(b["summary"]["lambda_max"] <= top["values"][-1] * (1 + 1e-6)
                                    + top["residuals"][-1] for b in blocks.values())
    assert not (tmp_path / "empirical_e0002.json").exists()


def test_cnn_preset_chain_on_a_local_npz(tmp_path):
    # The CNN chain in miniature through the same code path as `--preset cnn-cpu --npz`: a real
    # .npz file (synthetic images in it), a PreResNet-8, BatchNorm in batch mode.
    from flax import nnx

    from jaxspec.data import save_npz, synthetic_cifar
    from jaxspec.models import PreResNet, count_params

    npz = str(tmp_path / "tiny.npz")
    save_npz(synthetic_cifar(num_train=20, num_test=10), npz)
    out = paper.run_preset("cnn-smoke", str(tmp_path / "out"), npz=npz, verbose=False)
    emp = load_spectrum(out["spectra"]["empirical"])
    aug = load_spectrum(out["spectra"]["augmented"])
    p = count_params(nnx.eval_shape(lambda: PreResNet(10, depth=8, rngs=nnx.Rngs(0))))
    for s, n, m in ((emp, 20, 4), (aug, 40, 3)):  # N = 2 per class; augmented K x N
        assert s.meta["model"] == "preresnet8" and s.meta["bn_mode"] == "batch"
        assert (s.meta["P"], s.meta["N"], len(s.nodes)) == (p, n, m)
        assert np.sum(s.weights) == pytest.approx(1.0, abs=1e-4)
        assert np.all(np.isfinite(s.nodes))
    with open(out["report"]) as f:
        text = f.read()
    assert "cnn-smoke preset: PreResNet-8, cifar10 from tiny.npz" in text
    assert set(out["claims"]) == {"narrower", "smaller_top", "smaller_bottom",
                                  "fewer_negative", "lighter_negative"}


@pytest.mark.parametrize("argv, message", [
    (["--preset", "cnn-cpu"], "preset 'cnn-cpu' trains on real CIFAR-10 images: pass --npz"),
    (["--preset", "cnn-cpu", "--npz", "no/such.npz"], "--npz no/such.npz: no such file"),
    (["--preset", "cpu", "--npz", "no/such.npz"], "--npz no/such.npz: no such file"),
])
def test_preset_without_its_data_is_a_clear_error(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        paper.main([*argv, "--out", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # refused before anything is written


def test_speed_times_the_readme_snippet_against_the_method_it_names(monkeypatch):
    """With several methods timed, the run readme_rows compares the snippet with is the
    partial one it names (a closure over the loop's variables would run the last method)."""
    import argparse
    import contextlib
    import io

    from experiments import speed

    ran = []

    def rows(loss, params, batched, m, how, fastest, repeat):
        ran.append((how, int(fastest().passes)))
        return []

    monkeypatch.setattr(speed, "readme_rows", rows)
    args = argparse.Namespace(n=4, batch_size=4, m=8, block_size=16, repeat=1,
                              drivers=["host"], reorth=["partial", "full"])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        speed.bench("mlp", speed.mlp_init, speed.mlp_apply, args)
    passes = dict(zip(args.reorth, (int(line.split()[-1]) for line in
                                    out.getvalue().splitlines() if "Gram-Schmidt passes" in line)))
    assert ran == [("host, partial", passes["partial"])] and passes["partial"] < passes["full"]


def test_speed_profile_splits_the_steps_by_their_passes():
    """Every step of a fully re-orthogonalised run runs a pass; a partial one passes at its
    calibration steps at least, and the two kinds together are the run's steps."""
    import jax.numpy as jnp

    from experiments.speed_profile import profile_lanczos
    from jaxspec.reorth import CALIBRATION_STEPS

    A = jnp.linspace(1.0, 2.0, 300)
    [full] = profile_lanczos(lambda v: A * v, jnp.ones(300), 10, runs=1, reorth="full")
    [part] = profile_lanczos(lambda v: A * v, jnp.ones(300), 10, runs=1, reorth="partial")
    assert (len(full.pass_steps), len(full.plain_steps)) == (10, 0)
    assert len(part.pass_steps) >= CALIBRATION_STEPS
    assert len(part.pass_steps) + len(part.plain_steps) == 10
    assert full.programs["_host_advance"][1] == 10


def test_speed_profile_reads_the_latest_trace_of_a_kept_directory(tmp_path):
    """``--trace-dir`` reused: each profile writes another trace there, and each run reads its
    own (the latest), not the first nor a mix."""
    import jax.numpy as jnp

    from experiments.speed_profile import profile_lanczos

    A = jnp.linspace(1.0, 2.0, 100)
    first = profile_lanczos(lambda v: A * v, jnp.ones(100), 4, runs=1, directory=str(tmp_path))
    second = profile_lanczos(lambda v: A * v, jnp.ones(100), 6, runs=2,
                             directory=str(tmp_path))
    assert [r.programs["_host_advance"][1] for r in first + second] == [4, 6, 6]


def test_gpu_check_reports_each_figure_as_it_comes_and_stops_a_model_past_its_time(tmp_path,
                                                                                   capfd):
    """A model's figures reach stderr one by one and its row the ``--out`` file; a model that
    runs past ``--model-timeout`` is stopped and left out."""
    from experiments.gpu_check import main

    out = tmp_path / "rows.json"
    rows = main(["--models", "mlp", "--n", "4", "--batch-size", "4", "--m", "2", "--repeat",
                 "1", "--out", str(out)])
    printed = capfd.readouterr()
    assert json.loads(out.read_text()) == rows and [r["model"] for r in rows] == ["mlp"]
    assert "mlp  hvp_plain_s " in printed.err and "mlp  peak_gib " in printed.err
    assert "mlp: " in printed.out and rows[0]["lanczos_host_warm_s"] > 0
    # vgg16's child cannot even import JAX in a second
    assert main(["--models", "vgg16", "--n", "4", "--batch-size", "4", "--m", "2",
                 "--model-timeout", "1"]) == []
    assert "vgg16: stopped after 1 s (--model-timeout)" in capfd.readouterr().out


def test_compare_refuses_spectra_of_different_runs_or_operators(tmp_path):
    """Review finding: compare_paths checks only P, epoch, model and bn_mode, so an empirical
    spectrum of one training run (or BatchNorm batch size, which defines the Hessian in batch
    mode) is silently compared with the augmented spectrum of another. Expected: a ValueError
    naming the field, as for P / epoch / model / bn_mode."""
    from experiments.compare import compare_paths

    meta = {"epoch": 2, "P": 400, "model": "preresnet8", "bn_mode": "batch"}
    emp, aug = str(tmp_path / "e.json"), str(tmp_path / "a.json")
    save_spectrum(Spectrum([-1.0, 0.0, 3.0], [0.1, 0.8, 0.1],
                           meta={**meta, "N": 100, "workdir": "/runs/a", "batch_size": 128}), emp)
    for other in ({"workdir": "/runs/b", "batch_size": 128},
                  {"workdir": "/runs/a", "batch_size": 32}):
        save_spectrum(Spectrum([0.0, 2.0], [0.9, 0.1], meta={**meta, "N": 200, **other}), aug)
        with pytest.raises(ValueError, match="differ"):
            compare_paths(emp, aug, plot=False)


def test_compare_factorises_the_augmented_n_by_its_own_image_count(tmp_path):
    """Review finding: the Markdown line 'augmented N = N_aug = images x K' took the image count
    from the empirical spectrum, so an empirical spectrum over the first 64 images next to an
    augmented one over all 128 (K = 2) printed 'augmented N = 256 = 64 x 2'."""
    from experiments.compare import compare_paths

    meta = {"epoch": 2, "P": 400, "model": "mlp", "bn_mode": "batch"}
    emp, aug = str(tmp_path / "e.json"), str(tmp_path / "a.json")
    save_spectrum(Spectrum([-1.0, 0.0, 3.0], [0.1, 0.8, 0.1],
                           meta={**meta, "N": 64, "num_images": 64}), emp)
    save_spectrum(Spectrum([0.0, 2.0], [0.9, 0.1],
                           meta={**meta, "N": 256, "num_images": 128, "num_per_image": 2}), aug)
    res = compare_paths(emp, aug, plot=False)
    text = open(res.paths["md"]).read()
    assert "augmented N = 256 = 128 x 2" in text, text


def test_bad_command_lines_are_usage_errors_before_any_work(smoke, capsys):
    """Review finding: these inputs gave a traceback (some after loading the checkpoint), where
    the scripts' other bad inputs give the usage and the message with exit status 2."""
    from experiments.compare import main as compare_main
    from experiments.epochs import main as epochs_main

    wd = smoke["workdir"]
    out = wd + "/bad_cli"
    cases = [
        (spectrum_main, ["--workdir", wd, "--out", out, "--num-images", "100000"], "num_images"),
        (epochs_main, ["--workdir", wd, "--out", out, "--epochs", "2,a"], "--epochs"),
        (epochs_main, ["--workdir", wd, "--out", out, "--npz", out + ".npz"], "no such file"),
        # the smoke chain's own spectra, asked for with other settings
        (epochs_main, ["--workdir", wd, "--steps", "3"], "other settings"),
        (compare_main, ["--workdir", wd, "--epoch", "2", "--out", out, "--sigma2", "-1"],
         "sigma2"),
        (compare_main, ["--workdir", wd, "--epoch", "2", "--out", out, "--sigma2", "nan"],
         "sigma2"),
    ]
    for main, argv, words in cases:
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and words in err and "Traceback" not in err, (argv, err)
    assert not os.path.exists(out)


def test_a_run_killed_before_its_plot_leaves_no_spectrum_to_skip(smoke, tmp_path, monkeypatch):
    """Review finding: compute_spectrum wrote the spectrum JSON, then the plot, then cleared the
    Lanczos state. A kill in between (scratch/rev_exp/killer.py, SIGKILL 1.5 s after the first
    state save) left the JSON without its PNG next to the full Lanczos state ((m + 1) x P
    floats); --skip-existing, run_preset and experiments.epochs then took the JSON as done and
    never drew the plot nor removed the state. The JSON, what 'done' is judged by, comes last."""
    import jaxspec.plotting

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jaxspec.plotting, "stem_plot", killed)
    settings = SpectrumSettings(num_steps=4, batch_size=32, num_images=32, noise_probes=0,
                                progress=False)
    with pytest.raises(KeyboardInterrupt):
        compute_spectrum(smoke["workdir"], 2, settings, out_dir=str(tmp_path))
    assert not os.path.exists(tmp_path / "empirical_e0002.json"), os.listdir(tmp_path)
