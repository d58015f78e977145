"""The paper's experiments end to end: train -> spectra -> compare -> report.

    python -m experiments.paper --print-commands --runs-dir runs     # the GPU commands, all runs
    python -m experiments.paper --list                  # runs, figures, settings that are ours
    python -m experiments.paper --report --runs-dir runs             # runs/report.md from results
    python -m experiments.paper --preset cpu --npz cifar10.npz --out runs/cpu   # ~5-10 min, CPU
    python -m experiments.paper --preset smoke --out /tmp/smoke                 # ~1 min, tests
    python -m experiments.paper --preset cnn-cpu --npz cifar10.npz --out runs/cnn_cpu  # PreResNet-8

Granziol et al. (2020), "Towards understanding the true loss surface of deep neural networks using
random matrix theory and iterative spectral methods" (ICLR 2020 submission), section 6 and
appendix A: PreResNet-110 and VGG-16 on CIFAR-10/100 with the Normal and Overfit schedules; the
Empirical Hessian (training set, m = 100) and the Augmented Hessian (1.5M augmented samples,
m = 80) at the final weights. Their reported numbers (PreResNet-110 only; the paper gives no
VGG-16 table), the runs, every figure and the settings that are our own choices are in
:mod:`experiments.paper_runs` (the choices in full: docs/fidelity.md); the report puts ours next
to the paper's and flags, in every table, the choices of ours each row depends on.

``--preset cpu`` runs the whole chain at toy scale on a CPU: a 2x256 MLP trained for 10 epochs on
3,000 CIFAR-10 images (``--npz`` a local copy, else synthetic data), spectra with m = 30 / 24 and
K = 4 variants per image, the empirical spectra along training, the comparison and the report.
``--preset cnn-cpu`` is the chain on a convolutional network, as in the paper: a PreResNet-8 with
BatchNorm in batch mode trained on 2,000 real CIFAR-10 images (``--npz`` required), both Hessians
over the first 512 of them (K = 2 variants each for the augmented one). ``--preset smoke`` and
``--preset cnn-smoke`` are the chains in miniature, for tests.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

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
from experiments.paper_report import ReportEntry
from experiments.paper_report import build_report
from experiments.paper_report import collect_entries

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


# ---- the presets ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preset:
    """A toy-scale version of the whole chain.

    ``make_config(npz)`` gives the training config (synthetic data when ``npz`` is None, unless
    ``needs_npz``); the other fields set the spectra of :func:`run_preset`: Lanczos steps m of
    each, variants per image K, the Hessian-vector-product batch size (in BatchNorm batch mode,
    also the batch of the BatchNorm statistics), the epochs of the sweep and ``num_images``, the
    first this many training images that both Hessians are taken over (``None``: all) and the
    probes of the ``sigma^2`` estimate (``noise_probes``; 0: no Theorem 1).

    Example:
      >>> from experiments.paper import PRESETS
      >>> smoke = PRESETS["smoke"]
      >>> smoke.empirical_steps, smoke.augmented_steps, smoke.num_per_image, smoke.sweep_epochs
      (8, 6, 2, (0, 2))
      >>> config = smoke.make_config(None)
      >>> config.model, config.model_kwargs, config.dataset, config.epochs
      ('mlp', {'hidden': [16]}, 'synthetic', 2)
      >>> cnn = PRESETS["cnn-cpu"]
      >>> cnn.make_config("cifar10.npz").model, cnn.needs_npz, cnn.num_images
      ('preresnet8', True, 512)
    """

    name: str
    make_config: Callable[[str | None], Any]
    empirical_steps: int
    augmented_steps: int
    num_per_image: int
    hvp_batch_size: int
    sweep_epochs: tuple[int, ...]
    description: str
    model_label: str = "MLP"
    num_images: int | None = None
    needs_npz: bool = False
    noise_probes: int = 1


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


def _cnn_cpu_config(npz: str | None):
    from train import TrainConfig

    if npz is None:
        raise ValueError("preset 'cnn-cpu' trains on real CIFAR-10 images: pass --npz PATH, a "
                         ".npz with x_train, y_train, x_test, y_test (uint8 HWC images, "
                         "integer labels), at least 200 training and 50 test images per class")
    return TrainConfig(
        name="paper_cnn_cpu_preset", model="preresnet8", dataset="cifar10", npz_path=npz,
        train_per_class=200, test_per_class=50, epochs=8, base_lr=0.1, weight_decay=3e-4,
        batch_size=128, eval_batch_size=500, checkpoint_epochs=(0, 4, 8), prng_impl="rbg",
        progress=False)


def _cnn_smoke_config(npz: str | None):
    from train import TrainConfig

    real = npz is not None
    return TrainConfig(
        name="paper_cnn_smoke_preset", model="preresnet8", dataset="cifar10" if real else
        "synthetic", npz_path=npz, synthetic_size=(20, 10), train_per_class=2 if real else None,
        test_per_class=1 if real else None, epochs=1, base_lr=0.05, weight_decay=3e-4,
        batch_size=20, eval_batch_size=10, checkpoint_epochs=(1,), prng_impl="rbg",
        progress=False)


PRESETS: dict[str, Preset] = {
    "cpu": Preset("cpu", _cpu_config, empirical_steps=30, augmented_steps=24, num_per_image=4,
                  hvp_batch_size=128, sweep_epochs=(0, 5, 10),
                  description="2x256 MLP, 3,000 CIFAR-10 images (300 per class), 10 epochs; "
                              "m = 30 empirical / 24 augmented, K = 4 (12,000 samples)"),
    "smoke": Preset("smoke", _smoke_config, empirical_steps=8, augmented_steps=6,
                    num_per_image=2, hvp_batch_size=32, sweep_epochs=(0, 2),
                    description="1x16 MLP, 128 images, 2 epochs; m = 8 / 6, K = 2"),
    "cnn-cpu": Preset("cnn-cpu", _cnn_cpu_config, empirical_steps=20, augmented_steps=16,
                      num_per_image=2, hvp_batch_size=128, sweep_epochs=(8,),
                      description="PreResNet-8 (P = 77,850, BatchNorm in batch mode), 2,000 "
                                  "CIFAR-10 images (200 per class), 8 epochs; spectra over the "
                                  "first 512 training images: m = 20 empirical / 16 augmented, "
                                  "K = 2 (1,024 samples)",
                      model_label="PreResNet-8", num_images=512, needs_npz=True),
    "cnn-smoke": Preset("cnn-smoke", _cnn_smoke_config, empirical_steps=4, augmented_steps=3,
                        num_per_image=2, hvp_batch_size=20, sweep_epochs=(1,),
                        description="PreResNet-8, 20 images, 1 epoch; m = 4 / 3, K = 2, "
                                    "no sigma^2",
                        model_label="PreResNet-8", noise_probes=0),
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


def _checked_config(preset: Preset, npz: str | None):
    """The preset's training config; clear errors for a missing ``--npz`` file or argument."""
    if npz is not None and not os.path.isfile(npz):
        raise FileNotFoundError(f"--npz {npz}: no such file (a CIFAR-10 .npz with x_train, "
                                "y_train, x_test, y_test)")
    return preset.make_config(None if npz is None else os.path.abspath(npz))


def run_preset(name: str, out_dir: str, /, *, npz: str | None = None,
               verbose: bool = True) -> dict[str, Any]:
    """Runs the whole chain of preset ``name`` in ``out_dir``; returns the artefacts and timings.

    ``out_dir/run`` holds the training run and ``run/spectra`` its spectra, plots and
    comparison; ``out_dir/report.md`` (and ``report.json``) is the report. Rerunning reuses what
    exists (training resumes, spectra are skipped).

    Raises:
      ValueError: if ``name`` is not one of :data:`PRESETS`, or the preset needs real images
        (``cnn-cpu``) and ``npz`` is None.
      FileNotFoundError: if ``npz`` names no file.

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
      ValueError: unknown preset 'tiny'; choose from ['cnn-cpu', 'cnn-smoke', 'cpu', 'smoke']
      >>> run_preset("cnn-cpu", tempfile.mkdtemp(), npz="missing.npz")
      Traceback (most recent call last):
      ...
      FileNotFoundError: --npz missing.npz: no such file (a CIFAR-10 .npz with x_train, y_train, x_test, y_test)
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    from experiments.compare import compare_run
    from experiments.epochs import epoch_rows, epoch_spectra, write_summary
    from experiments.spectrum import compute_spectrum, existing_spectrum, spectrum_path
    from experiments.spectrum_settings import SpectrumSettings
    from train import read_metrics, train_and_evaluate

    preset = PRESETS[name]
    config = _checked_config(preset, npz)
    workdir = os.path.join(out_dir, "run")
    spectra_dir = os.path.join(workdir, "spectra")
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    def log(msg: str) -> None:
        if verbose:
            print(f"[{name} {time.perf_counter() - t_all:6.1f}s] {msg}", flush=True)

    reused = []  # the parts an earlier invocation made, which this one only reads
    done = read_metrics(workdir)
    if done and done[-1]["epoch"] >= config.epochs:
        reused.append("training")
    t = time.perf_counter()
    log(f"training {config.model} {config.model_kwargs} on {config.dataset} for {config.epochs} "
        "epochs")
    records = train_and_evaluate(config, workdir)
    times["train"] = time.perf_counter() - t
    final = config.epochs
    log(f"trained: test accuracy {records[-1]['test_accuracy']:.4f}")
    common = dict(batch_size=preset.hvp_batch_size, num_images=preset.num_images,
                  progress=verbose)
    settings = {
        "empirical": SpectrumSettings(mode="empirical", num_steps=preset.empirical_steps,
                                      noise_probes=preset.noise_probes, **common),
        "augmented": SpectrumSettings(mode="augmented", num_steps=preset.augmented_steps,
                                      num_per_image=preset.num_per_image, **common),
    }
    for mode, s in settings.items():
        t = time.perf_counter()
        if existing_spectrum(spectrum_path(spectra_dir, mode, final), s) is None:
            r = compute_spectrum(workdir, final, s)
            log(f"{mode}: lambda_max {r.spectrum.lambda_max:.4g}, lambda_min "
                f"{r.spectrum.lambda_min:.4g}")
        else:
            reused.append(f"the {mode} spectrum")
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
    entry = ReportEntry(f"{name} preset: {preset.model_label}, {data_txt}", cmp.data, None,
                        (cmp.paths["png"], epoch_paths["png"]),
                        choices=("preset", "wd", "batch", "norm", "lr-epoch", "drop-last",
                                 "no-wd-hess", "aug-set", "origin-tol"))
    context = ReportEntry("PreResNet-110 CIFAR-10 Normal (paper, for scale)", None,
                          PAPER[ref_key])
    import jax

    timed = ("Wall time of the chain" if not reused else
             f"Wall time of this invocation ({', '.join(reused)} reused from an earlier one)")
    preamble = (f"Preset `{name}`: {preset.description}. Data: {data_txt}. "
                f"{timed}: {times['total']:.0f} s on {jax.default_backend()} "
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
    """Command line: ``--print-commands``, ``--list``, ``--report`` or ``--preset NAME``.

    Example:
      >>> import contextlib, io, os, tempfile
      >>> from experiments.paper import main
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     code = main(["--print-commands", "--runs-dir", "R"])
      >>> code, out.getvalue().splitlines()[-1]
      (0, 'python -m experiments.paper --report --runs-dir R')
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     code = main(["--list"])
      >>> code, out.getvalue().splitlines()[-1].endswith("[ours]")
      (0, True)
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
                      help="print the commands of every paper run and figure")
    what.add_argument("--list", action="store_true",
                      help="list the runs, their figures and the settings that are ours")
    what.add_argument("--report", action="store_true",
                      help="write the report from the runs under --runs-dir")
    what.add_argument("--preset", choices=sorted(PRESETS),
                      help="run a toy-scale chain (cnn-cpu needs --npz)")
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
    if args.list:
        print(list_runs())
        return 0
    if args.report:
        out = args.out or os.path.join(args.runs_dir, "report.md")
        entries = collect_entries(args.runs_dir)
        build_report(entries, out, runs_dir=args.runs_dir)
        done = sum(e.ours is not None for e in entries)
        print(f"wrote {out} ({done}/{len(entries)} runs with results)")
        return 0
    out = args.out or os.path.join("runs", f"paper_{args.preset}")
    try:
        _checked_config(PRESETS[args.preset], args.npz)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    result = run_preset(args.preset, out, npz=args.npz)
    with open(result["report"]) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    from jaxspec.compiler import cache_compilations

    cache_compilations()  # a later run loads the compiled programs from disk
    sys.exit(main())
