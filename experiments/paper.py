"""The paper's experiments end to end: train -> spectra -> compare -> report.

    python -m experiments.paper --print-commands --runs-dir runs     # the GPU commands, all runs
    python -m experiments.paper --report --runs-dir runs             # runs/report.md from results
    python -m experiments.paper --preset cpu --npz cifar10.npz --out runs/cpu   # ~5-10 min, CPU
    python -m experiments.paper --preset smoke --out /tmp/smoke                 # ~1 min, tests

Granziol et al. (2020), "Towards understanding the true loss surface of deep neural networks using
random matrix theory and iterative spectral methods" (ICLR 2020 submission), section 6 and
appendix A: PreResNet-110 and VGG-16 on CIFAR-10/100 with the Normal and Overfit schedules; the
Empirical Hessian (training set, m = 100) and the Augmented Hessian (1.5M augmented samples,
m = 80) at the final weights. Their reported numbers (PreResNet-110 only; the paper gives no
VGG-16 table) are copied below as constants, with the table or section they come from, and the
report puts ours next to them.

``--preset cpu`` runs the whole chain at toy scale on a CPU: a 2x256 MLP trained for 10 epochs on
3,000 CIFAR-10 images (``--npz`` a local copy, else synthetic data), spectra with m = 30 / 24 and
K = 4 variants per image, the empirical spectra along training, the comparison and the report.
``--preset smoke`` is the same chain in miniature, for tests.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple, Sequence

from experiments._markdown import fmt as _f
from experiments._markdown import jsonable
from experiments._markdown import row as _md
from experiments.paper_runs import FIGURES
from experiments.paper_runs import OUR_CHOICES
from experiments.paper_runs import PAPER
from experiments.paper_runs import RUNS
from experiments.paper_runs import PaperNumbers
from experiments.paper_runs import PaperRun
from experiments.paper_runs import commands
from experiments.paper_runs import figure_path
from experiments.paper_runs import list_runs
from experiments.paper_runs import print_commands

__all__ = [
    "FIGURES",
    "OUR_CHOICES",
    "PAPER",
    "PRESETS",
    "PaperNumbers",
    "PaperRun",
    "Preset",
    "RUNS",
    "ReportEntry",
    "build_report",
    "collect_entries",
    "commands",
    "figure_path",
    "list_runs",
    "main",
    "print_commands",
    "run_preset",
    "trained_preset",
]


# ---- the report -----------------------------------------------------------------------------


class ReportEntry(NamedTuple):
    """A run in the report: its label, our comparison (or None), the paper's numbers (or None).

    Example:
      >>> from experiments.paper import PAPER, ReportEntry
      >>> e = ReportEntry("PreResNet-110 CIFAR-10 Normal", None,
      ...                 PAPER[("preresnet110", "cifar10", "normal")])
      >>> e.ours, e.reference.lambdan_aug, e.figures, e.note
      (None, -0.0061, (), '')
    """

    label: str
    ours: dict[str, Any] | None
    reference: PaperNumbers | None
    figures: tuple[str, ...] = ()
    note: str = ""


def collect_entries(runs_dir: str, /) -> list[ReportEntry]:
    """One :class:`ReportEntry` per paper run, with our comparison where it has been computed.

    Reads ``<runs_dir>/<config>/spectra/compare_e<epoch>.json`` (written by
    :func:`experiments.compare.compare_run`) of each of :data:`RUNS`.

    Example:
      >>> import json, os, tempfile
      >>> from experiments.paper import RUNS, collect_entries
      >>> runs = tempfile.mkdtemp()
      >>> sdir = os.path.join(runs, RUNS[0].config, "spectra"); os.makedirs(sdir)
      >>> with open(os.path.join(sdir, f"compare_e{RUNS[0].epoch:04d}.json"), "w") as f:
      ...     json.dump({"epoch": RUNS[0].epoch}, f)  # a stand-in for compare_run's JSON
      >>> entries = collect_entries(runs)
      >>> len(entries), entries[0].label, entries[0].ours, entries[1].ours
      (8, 'PreResNet-110 CIFAR-100 Normal', {'epoch': 225}, None)
      >>> entries[0].reference.lambda1_emp, entries[-1].reference, entries[-1].note
      (20.56, None, 'the paper reports no numbers')
    """
    entries = []
    for run in RUNS:
        sdir = os.path.join(runs_dir, run.config, "spectra")
        path = os.path.join(sdir, f"compare_e{run.epoch:04d}.json")
        ours, figures = None, []
        if os.path.exists(path):
            with open(path) as f:
                ours = json.load(f)
            figures = [os.path.join(sdir, n) for n in (f"compare_e{run.epoch:04d}.png",
                                                       "epochs_empirical.png")]
        entries.append(ReportEntry(run.label, ours, run.reference,
                                   tuple(p for p in figures if os.path.exists(p)),
                                   "" if run.reference else "the paper reports no numbers"))
    return entries


def _neg(n: Any) -> tuple[str, str]:
    if n is None:
        return "-", "-"
    if isinstance(n, dict):
        return f"{n['num_negative']}/{n['num_nodes']}", _f(n["negative_mass"], ".3g")
    return f"{n[0]}/{n[1]}", _f(n[2], ".3g")


def _tops(t: Any) -> list[str]:
    cells = [f"[{w:.3g}, {v:.3g}]" for w, v in (t or [])][:3]
    return cells + ["-"] * (3 - len(cells))


def build_report(entries: Sequence[ReportEntry], path: str, /, *, title: str | None = None,
                 preamble: str = "") -> dict[str, Any]:
    """Writes the Markdown report (and ``<path>.json`` beside it); returns the JSON content.

    Every table has a ``paper`` row (the reported numbers) and an ``ours`` row per run.

    Example:
      >>> import os, tempfile
      >>> from jaxspec import Spectrum
      >>> from experiments.compare import compare_paths
      >>> from experiments.paper import PAPER, ReportEntry, build_report
      >>> d = tempfile.mkdtemp()
      >>> meta = {"epoch": 2, "P": 400, "model": "mlp", "bn_mode": "train"}
      >>> emp, aug = os.path.join(d, "emp.json"), os.path.join(d, "aug.json")
      >>> Spectrum([-2.0, 0.0, 2.5], [0.1, 0.8, 0.1], meta={**meta, "N": 100}).save(emp)
      >>> Spectrum([0.0, 2.0], [0.9, 0.1], meta={**meta, "N": 1600}).save(aug)
      >>> ours = compare_paths(emp, aug, plot=False).data
      >>> ref = PAPER[("preresnet110", "cifar10", "normal")]
      >>> data = build_report([ReportEntry("toy MLP", ours, None),
      ...                      ReportEntry("PreResNet-110 CIFAR-10 Normal", None, ref)],
      ...                     os.path.join(d, "report.md"))
      >>> [(r["label"], r["ours"] is not None, r["paper"] is not None) for r in data["entries"]]
      [('toy MLP', True, False), ('PreResNet-110 CIFAR-10 Normal', False, True)]
      >>> with open(os.path.join(d, "report.md")) as f:
      ...     lines = f.read().splitlines()
      >>> ours_rows = [r.split(" | ") for r in lines if r.startswith("| toy MLP | ours |")]
      >>> len(ours_rows), ours_rows[0][3:9]  # Tables 1/2, negatives, Table 3 x 2; N, m, edges
      (4, ['100 / 1,600', '3 / 2', '2.5', '-2', '2', '0'])
      >>> sum(r.startswith("| PreResNet-110 CIFAR-10 Normal | paper |") for r in lines)
      4
    """
    from jaxspec._atomic import write_text

    out_dir = os.path.dirname(os.path.abspath(path))
    title = title or "Empirical vs Augmented Hessian spectra: ours next to Granziol et al. (2020)"
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble.rstrip(), ""]
    lines += ["Paper: PreResNet-110, final weights, empirical N = 50,000 (m = 100), augmented "
              "N = 1,500,000 (m = 80); Tables 1-3 and section 6 of Granziol et al. (2020). "
              "lambda' = Empirical Hessian, lambda = Augmented Hessian; accuracies in %.", "",
              "## Extremal eigenvalues, accuracy and loss (Tables 1 and 2)", "",
              _md(["run", "source", "epoch", "N emp / aug", "m emp / aug", "lambda'_1",
                   "lambda'_n", "lambda_1", "lambda_n", "test acc", "train acc", "test loss",
                   "train loss"]),
              _md(["---"] * 13)]
    records = []
    for e in entries:
        ref, ours = e.reference, e.ours
        if ref is not None:
            lines.append(_md([e.label, "paper", "final", "50,000 / 1,500,000", "100 / 80",
                              *[_f(getattr(ref, k)) for k in
                                ("lambda1_emp", "lambdan_emp", "lambda1_aug", "lambdan_aug")],
                              _f(ref.test_acc, ".2f"), _f(ref.train_acc, ".2f"),
                              _f(ref.test_loss), _f(ref.train_loss)]))
        if ours is not None:
            t = ours["table"]
            lines.append(_md([e.label, "ours", ours.get("epoch"),
                              f"{_f(ours.get('N_empirical'))} / {_f(ours.get('N_augmented'))}",
                              f"{ours.get('m_empirical')} / {ours.get('m_augmented')}",
                              *[_f(t[k]) for k in
                                ("lambda1_emp", "lambdan_emp", "lambda1_aug", "lambdan_aug")],
                              _f(t["test_acc"], ".2f"), _f(t["train_acc"], ".2f"),
                              _f(t["test_loss"]), _f(t["train_loss"])]))
        elif ref is None:
            lines.append(_md([e.label, "ours", "not run"] + ["-"] * 10))
        records.append({"label": e.label, "ours": ours,
                        "paper": None if ref is None else ref._asdict(), "note": e.note})

    lines += ["", "## Negative Ritz values (section 6)", "",
              _md(["run", "source", "emp negative / m", "emp separated mass",
                   "aug negative / m", "aug separated mass"]), _md(["---"] * 6)]
    for e in entries:
        if e.reference is not None:
            lines.append(_md([e.label, "paper", *_neg(e.reference.negative_emp),
                              *_neg(e.reference.negative_aug)]))
        if e.ours is not None:
            lines.append(_md([e.label, "ours", *_neg(e.ours["negative"]["empirical"]),
                              *_neg(e.ours["negative"]["augmented"])]))

    lines += ["", "## Largest-weight Ritz values [weight, value] (Table 3)", "",
              _md(["run", "source", "spectrum", "[rho_0, lambda_0]", "[rho_1, lambda_1]",
                   "[rho_2, lambda_2]"]), _md(["---"] * 6)]
    for e in entries:
        for spec, key_ref, key_ours in (("empirical", "top3_emp", "empirical"),
                                        ("augmented", "top3_aug", "augmented")):
            if e.reference is not None:
                lines.append(_md([e.label, "paper", spec,
                                  *_tops(getattr(e.reference, key_ref))]))
            if e.ours is not None:
                lines.append(_md([e.label, "ours", spec,
                                  *_tops(e.ours["top_weights"][key_ours])]))

    lines += ["", "## The paper's qualitative claims on our spectra", "",
              _md(["run", "augmented narrower", "lambda_1 < lambda'_1",
                   "abs(lambda_n) < abs(lambda'_n)", "fewer negative (fraction)",
                   "lighter negative mass"]), _md(["---"] * 6)]
    for e in entries:
        if e.ours is not None:
            c = e.ours["claims"]
            lines.append(_md([e.label, *[_f(c[k]) for k in
                                         ("narrower", "smaller_top", "smaller_bottom",
                                          "fewer_negative", "lighter_negative")]]))

    lines += ["", "## Theorem 1 (augmented taken as the True Hessian)", "",
              _md(["run", "q = P/N", "sigma^2 (estimated)", "lambda'_1 measured",
                   "lambda'_1 predicted", "lambda'_n measured", "lambda'_n predicted",
                   "implied sigma^2 (top / bottom)"]), _md(["---"] * 8)]
    for e in entries:
        if e.ours is None:
            continue
        rows = {r["quantity"]: r for r in e.ours["theorem1"]["rows"]}
        params = {r["quantity"]: r["value"] for r in e.ours["theorem1"]["parameters"]}
        lines.append(_md([e.label, _f(e.ours.get("q_empirical")), _f(e.ours.get("sigma2")),
                          _f(rows["lambda_max"]["empirical"]),
                          _f(rows["lambda_max"]["predicted_empirical"]),
                          _f(rows["lambda_min"]["empirical"]),
                          _f(rows["lambda_min"]["predicted_empirical"]),
                          f"{_f(params.get('implied_sigma2_top'))} / "
                          f"{_f(params.get('implied_sigma2_bottom'))}"]))

    figs = [(e.label, f) for e in entries for f in e.figures]
    if figs:
        lines += ["", "## Figures", ""]
        for label, f in figs:
            rel = os.path.relpath(os.path.abspath(f), out_dir)
            lines += [f"**{label}**: `{os.path.basename(f)}`", "", f"![{label}]({rel})", ""]
    text = "\n".join(lines).rstrip() + "\n"
    write_text(path, text)
    data = {"title": title, "entries": records}
    json_path = os.path.splitext(path)[0] + ".json"
    write_text(json_path, json.dumps(jsonable(data), indent=1, allow_nan=False))  # NaN -> null
    return data


# ---- the presets ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preset:
    """A toy-scale version of the whole chain.

    ``make_config(npz)`` gives the training config (synthetic data when ``npz`` is None); the
    other fields set the spectra of :func:`run_preset`: Lanczos steps m of each, variants per
    image K, the Hessian-vector-product batch size and the epochs of the sweep.

    Example:
      >>> from experiments.paper import PRESETS
      >>> smoke = PRESETS["smoke"]
      >>> smoke.empirical_steps, smoke.augmented_steps, smoke.num_per_image, smoke.sweep_epochs
      (8, 6, 2, (0, 2))
      >>> config = smoke.make_config(None)
      >>> config.model, config.model_kwargs, config.dataset, config.epochs
      ('mlp', {'hidden': [16]}, 'synthetic', 2)
    """

    name: str
    make_config: Callable[[str | None], Any]
    empirical_steps: int
    augmented_steps: int
    num_per_image: int
    hvp_batch_size: int
    sweep_epochs: tuple[int, ...]
    description: str


def _cpu_config(npz: str | None):
    from train import TrainConfig

    real = npz is not None
    return TrainConfig(
        name="paper_cpu_preset", model="mlp", model_kwargs={"hidden": [256, 256]},
        dataset="cifar10" if real else "synthetic", npz_path=npz,
        synthetic_size=(3000, 1000), train_per_class=300 if real else None,
        test_per_class=100 if real else None, epochs=10, base_lr=0.05, weight_decay=5e-4,
        batch_size=128, eval_batch_size=500, checkpoint_epochs=(0, 5, 10), prng_impl="rbg",
        progress=False)


def _smoke_config(npz: str | None):
    from train import TrainConfig

    real = npz is not None
    return TrainConfig(
        name="paper_smoke_preset", model="mlp", model_kwargs={"hidden": [16]},
        dataset="cifar10" if real else "synthetic", npz_path=npz, synthetic_size=(128, 64),
        train_per_class=13 if real else None, test_per_class=7 if real else None,
        epochs=2, base_lr=0.05, weight_decay=5e-4, batch_size=32, eval_batch_size=64,
        checkpoint_epochs=(0, 2), prng_impl="rbg", progress=False)


PRESETS: dict[str, Preset] = {
    "cpu": Preset("cpu", _cpu_config, empirical_steps=30, augmented_steps=24, num_per_image=4,
                  hvp_batch_size=128, sweep_epochs=(0, 5, 10),
                  description="2x256 MLP, 3,000 CIFAR-10 images (300 per class), 10 epochs; "
                              "m = 30 empirical / 24 augmented, K = 4 (12,000 samples)"),
    "smoke": Preset("smoke", _smoke_config, empirical_steps=8, augmented_steps=6,
                    num_per_image=2, hvp_batch_size=32, sweep_epochs=(0, 2),
                    description="1x16 MLP, 128 images, 2 epochs; m = 8 / 6, K = 2"),
}


@functools.lru_cache(maxsize=None)
def trained_preset(name: str = "smoke", /) -> str:
    """Trains preset ``name`` on synthetic data once per process; returns the run's workdir.

    For examples and quick looks at the experiment functions, which take a training run's
    workdir: the run goes to a temporary directory, removed when the process exits, and later
    calls with the same name return the same workdir. ``"smoke"`` (a 1x16 MLP, 128 images, two
    epochs, checkpoints at epochs 0 and 2) takes seconds on a CPU.

    Example:
      >>> from experiments.paper import trained_preset
      >>> workdir = trained_preset("smoke")
      >>> sorted(os.listdir(os.path.join(workdir, "checkpoints")))
      ['0', '2']
      >>> trained_preset("smoke") == workdir
      True
    """
    from train import train_and_evaluate

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    root = tempfile.mkdtemp(prefix=f"jaxspec-{name}-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    workdir = os.path.join(root, "run")
    train_and_evaluate(PRESETS[name].make_config(None), workdir)
    return workdir


def run_preset(name: str, out_dir: str, /, *, npz: str | None = None,
               verbose: bool = True) -> dict[str, Any]:
    """Runs the whole chain of preset ``name`` in ``out_dir``; returns the artefacts and timings.

    ``out_dir/run`` holds the training run and ``run/spectra`` its spectra, plots and
    comparison; ``out_dir/report.md`` (and ``report.json``) is the report. Rerunning reuses what
    exists (training resumes, spectra are skipped).

    Raises:
      ValueError: if ``name`` is not one of :data:`PRESETS`.

    The ``smoke`` chain takes about a minute on a CPU, so the example shows only its settings
    and the error for an unknown name (``tests/test_experiments.py`` runs the chain).

    Example:
      >>> import tempfile
      >>> from experiments.paper import PRESETS, run_preset
      >>> PRESETS["smoke"].description
      '1x16 MLP, 128 images, 2 epochs; m = 8 / 6, K = 2'
      >>> run_preset("tiny", tempfile.mkdtemp())
      Traceback (most recent call last):
      ...
      ValueError: unknown preset 'tiny'; choose from ['cpu', 'smoke']
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    from experiments.compare import compare_run
    from experiments.epochs import epoch_rows, epoch_spectra, write_summary
    from experiments.spectrum import (SpectrumSettings, compute_spectrum, existing_spectrum,
                                      spectrum_path)
    from train import train_and_evaluate

    preset = PRESETS[name]
    config = preset.make_config(None if npz is None else os.path.abspath(npz))
    workdir = os.path.join(out_dir, "run")
    spectra_dir = os.path.join(workdir, "spectra")
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    def log(msg: str) -> None:
        if verbose:
            print(f"[{name} {time.perf_counter() - t_all:6.1f}s] {msg}", flush=True)

    t = time.perf_counter()
    log(f"training {config.model} {config.model_kwargs} on {config.dataset} for {config.epochs} "
        "epochs")
    records = train_and_evaluate(config, workdir)
    times["train"] = time.perf_counter() - t
    final = config.epochs
    log(f"trained: test accuracy {records[-1]['test_accuracy']:.4f}")
    common = dict(batch_size=preset.hvp_batch_size, progress=verbose)
    settings = {
        "empirical": SpectrumSettings(mode="empirical", num_steps=preset.empirical_steps,
                                      **common),
        "augmented": SpectrumSettings(mode="augmented", num_steps=preset.augmented_steps,
                                      num_per_image=preset.num_per_image, **common),
    }
    for mode, s in settings.items():
        t = time.perf_counter()
        if existing_spectrum(spectrum_path(spectra_dir, mode, final), s) is None:
            r = compute_spectrum(workdir, final, s)
            log(f"{mode}: lambda_max {r.spectrum.lambda_max:.4g}, lambda_min "
                f"{r.spectrum.lambda_min:.4g}")
        times[f"spectrum_{mode}"] = time.perf_counter() - t
    t = time.perf_counter()
    sweep = epoch_spectra(workdir, preset.sweep_epochs, settings["empirical"], verbose=False)
    epoch_paths = write_summary(epoch_rows(sweep), spectra_dir, "empirical",
                                title=f"Empirical Hessian along training ({name} preset)")
    times["epochs"] = time.perf_counter() - t
    log("epoch sweep done")
    t = time.perf_counter()
    cmp = compare_run(workdir, final)
    times["compare"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t_all
    ref_key = ("preresnet110", "cifar10", "normal")
    data_txt = (f"{config.dataset} from {os.path.basename(npz)}" if npz else "synthetic data")
    entry = ReportEntry(f"{name} preset: MLP, {data_txt}", cmp.data, None,
                        (cmp.paths["png"], epoch_paths["png"]))
    context = ReportEntry("PreResNet-110 CIFAR-10 Normal (paper, for scale)", None,
                          PAPER[ref_key])
    import jax

    preamble = (f"Preset `{name}`: {preset.description}. Data: {data_txt}. "
                f"Wall time of the chain: {times['total']:.0f} s on {jax.default_backend()} "
                f"({os.cpu_count()} cores; train {times['train']:.0f} s, empirical "
                f"{times['spectrum_empirical']:.0f} s, augmented {times['spectrum_augmented']:.0f}"
                f" s, epoch sweep {times['epochs']:.0f} s). At this scale only the paper's "
                "qualitative claims can be checked; the paper's row is its PreResNet-110 "
                "CIFAR-10 Normal run, for scale.")
    report_path = os.path.join(out_dir, "report.md")
    build_report([entry, context], report_path,
                 title=f"Empirical vs Augmented Hessian: {name} preset", preamble=preamble)
    log(f"report: {report_path}")
    return {"report": report_path, "report_json": os.path.splitext(report_path)[0] + ".json",
            "workdir": workdir, "compare": cmp.paths, "epochs": epoch_paths, "times": times,
            "spectra": {m: spectrum_path(spectra_dir, m, final) for m in settings},
            "claims": cmp.data["claims"], "table": cmp.data["table"]}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--print-commands``, ``--report`` or ``--preset cpu|smoke``.

    Example:
      >>> import contextlib, io, os, tempfile
      >>> from experiments.paper import main
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     code = main(["--print-commands", "--runs-dir", "R"])
      >>> code, out.getvalue().splitlines()[-1]
      (0, 'python -m experiments.paper --report --runs-dir R')
      >>> runs, out = tempfile.mkdtemp(), io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     code = main(["--report", "--runs-dir", runs])
      >>> code, out.getvalue().strip().split("(")[-1], sorted(os.listdir(runs))
      (0, '0/8 runs with results)', ['report.json', 'report.md'])
    """
    parser = argparse.ArgumentParser(
        prog="python -m experiments.paper",
        description="Granziol et al. (2020): commands, CPU presets, and the report.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--print-commands", action="store_true",
                      help="print the commands of every paper run")
    what.add_argument("--report", action="store_true",
                      help="write the report from the runs under --runs-dir")
    what.add_argument("--preset", choices=sorted(PRESETS), help="run a toy-scale chain")
    parser.add_argument("--runs-dir", default="runs", help="where the paper runs live")
    parser.add_argument("--out", default=None,
                        help="report path (--report; default RUNS_DIR/report.md) or preset "
                             "directory (--preset; default runs/paper_<preset>)")
    parser.add_argument("--npz", default=None,
                        help="local CIFAR-10 .npz for --preset (default: synthetic data)")
    args = parser.parse_args(argv)
    if args.print_commands:
        print(print_commands(args.runs_dir))
        return 0
    if args.report:
        out = args.out or os.path.join(args.runs_dir, "report.md")
        entries = collect_entries(args.runs_dir)
        build_report(entries, out)
        done = sum(e.ours is not None for e in entries)
        print(f"wrote {out} ({done}/{len(entries)} runs with results)")
        return 0
    out = args.out or os.path.join("runs", f"paper_{args.preset}")
    result = run_preset(args.preset, out, npz=args.npz)
    with open(result["report"]) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
