"""The paper's runs, numbers, figures and commands, and the settings that are our own choices.

Granziol et al. (2020), "Towards understanding the true loss surface of deep neural networks
using random matrix theory and iterative spectral methods" (ICLR 2020 submission):

* :data:`PAPER`: the numbers it reports (Tables 1-3, sections 6.1-6.2), with their source;
* :data:`RUNS`: the training runs whose spectra the report compares with them;
* :data:`FIGURES`: every figure of the paper (1-33), mapped to the run, spectrum and epoch that
  regenerate it and to the file our commands write;
* :data:`OUR_CHOICES`: every setting the paper does not state (or that we read differently),
  with what we do and why; the full table with quotes is docs/fidelity.md;
* :func:`commands` / :func:`print_commands`: the shell commands that produce all of it.
"""

from __future__ import annotations

import os
import shlex
from typing import NamedTuple

__all__ = [
    "Choice",
    "FIGURES",
    "Figure",
    "OUR_CHOICES",
    "PAPER",
    "PaperNumbers",
    "PaperRun",
    "RUNS",
    "commands",
    "figure_path",
    "list_runs",
    "print_commands",
]


class PaperNumbers(NamedTuple):
    """One run's numbers as reported by Granziol et al. (2020).

    ``negative_*`` are ``(count, m, mass)``; ``top3_*`` the three largest-weight Ritz values
    ``(weight, value)``; ``None`` where the paper does not report the number. Accuracies and
    losses are the best over training (section 6: "include the best training and test
    accuracies and losses").

    Example:
      >>> from experiments.paper_runs import PAPER
      >>> ref = PAPER[("preresnet110", "cifar10", "normal")]
      >>> ref.lambda1_emp, ref.lambda1_aug, ref.test_acc, ref.negative_emp
      (6.82, 0.5825, 95.32, (35, 100, 0.09))
      >>> ref.top3_aug[0], PAPER[("preresnet110", "cifar10", "overfit")].negative_emp
      ((0.88, -3.87e-06), None)
    """

    lambda1_emp: float
    lambdan_emp: float
    lambda1_aug: float
    lambdan_aug: float
    test_acc: float
    train_acc: float
    test_loss: float
    train_loss: float
    negative_emp: tuple[int, int, float] | None
    negative_aug: tuple[int, int, float] | None
    top3_emp: tuple[tuple[float, float], ...]
    top3_aug: tuple[tuple[float, float], ...]
    source: str


# Granziol et al. (2020), ICLR 2020 submission (OpenReview). PreResNet-110,
# final weights; empirical N = 50,000, m = 100; augmented N = 1,500,000, m = 80.
#   Tables 1 (CIFAR-100) and 2 (CIFAR-10), appendix A: extremal eigenvalues, accuracies, losses.
#   Section 6.1 text: negative Ritz counts/masses of the Normal runs, and CIFAR-10 Normal's
#     augmented edges 0.5825 / -0.0061 (Table 2 repeats CIFAR-100's 3.025 / -0.014 there, a
#     copying error; the text and Figure 3 agree on 0.5825 / -0.0061).
#   Section 6.2 text: CIFAR-100 Overfit 43/100 (mass 0.032) -> 0 negative; CIFAR-10 Overfit
#     augmented: one negative Ritz value near the origin with weight 0.086, which "could also be
#     part of the spectral peak at the origin" (our origin rule puts it there: origin_margins).
#   Table 3: the three largest-weight Ritz values [weight, value].
#   Table 2's CIFAR-10 Overfit losses (1.85 / 0.026) equal Table 1's CIFAR-100 Overfit ones, as
#     printed.
PAPER: dict[tuple[str, str, str], PaperNumbers] = {
    ("preresnet110", "cifar100", "normal"): PaperNumbers(
        20.56, -6.54, 3.025, -0.014, 77.24, 99.85, 0.99, 0.021,
        (43, 100, 0.05), (5, 80, 0.00016),
        ((0.92, 0.0014), (0.05, -0.03), (0.018, 0.06)),
        ((0.84, 0.0017), (0.1, -0.0007), (0.045, 0.003)),
        "Table 1; section 6.1; Table 3"),
    ("preresnet110", "cifar100", "overfit"): PaperNumbers(
        281.32, -7.33, 45.68, 2e-5, 56.85, 99.62, 1.85, 0.026,
        (43, 100, 0.032), (0, 80, 0.0),
        ((0.65, -0.026), (0.34, 0.05), (0.006, 0.58)),
        ((0.86, 1.67e-5), (0.1, 0.0039), (0.019, 0.018)),
        "Table 1; section 6.2; Table 3"),
    ("preresnet110", "cifar10", "normal"): PaperNumbers(
        6.82, -1.37, 0.5825, -0.0061, 95.32, 99.98, 0.18, 0.0034,
        (35, 100, 0.09), (3, 80, 0.03),
        ((0.88, 0.007), (0.085, -0.01), (0.023, 0.02)),
        ((0.88, -3.87e-6), (0.073, 0.0006), (0.03, -0.0007)),
        "Table 2; section 6.1 (augmented edges); Table 3"),
    ("preresnet110", "cifar10", "overfit"): PaperNumbers(
        184.4, -2.9, 15.6, -9e-4, 86.46, 99.91, 1.85, 0.026,
        None, (1, 80, 0.086),
        ((0.77, 0.01), (0.22, -0.04), (0.005, 0.32)),
        ((0.89, 0.00013), (0.086, -0.00094), (0.016, 0.0058)),
        "Table 2; section 6.2; Table 3"),
}


class Choice(NamedTuple):
    """A setting the paper does not state, or states ambiguously: what we do, and why.

    Example:
      >>> from experiments.paper_runs import OUR_CHOICES
      >>> c = OUR_CHOICES["wd"]
      >>> c.setting, c.ours
      ('weight decay', '3e-4 PreResNet, 5e-4 VGG (L2 on all parameters)')
    """

    setting: str
    paper: str
    ours: str


#: Our own choices, by short key (the report's "our choices" column). docs/fidelity.md has the
#: paper's words (quoted, with sections) and the reasons.
OUR_CHOICES: dict[str, Choice] = {
    "wd": Choice("weight decay", "not stated; VGG 'identical' to PreResNet but alpha0, T (app. I)",
                 "3e-4 PreResNet, 5e-4 VGG (L2 on all parameters)"),
    "batch": Choice("batch size", "not stated", "128"),
    "norm": Choice("input normalisation", "not stated",
                   "per-channel mean/std of the training split, after zero padding"),
    "lr-epoch": Choice("schedule granularity", "equation 11 in t/T",
                       "learning rate changed once per epoch"),
    "drop-last": Choice("last partial batch", "not stated",
                        "training drops N mod 128 images per epoch; HVPs use every image"),
    "bn-hess": Choice("BatchNorm in the Hessian", "not stated",
                      "batch statistics of fixed unshuffled batches of 128"),
    "no-wd-hess": Choice("weight decay in the Hessian", "not stated",
                         "excluded: Hessian of the data loss only"),
    "dropout": Choice("dropout", "not stated", "VGG classifier 0.5 in training, off in HVPs"),
    "aug-set": Choice("augmented set", "1,500,000 samples, flips + 4-pixel pad + 32x32 crops",
                      "K = 30 distinct fixed variants per image of the 162"),
    "origin-tol": Choice("'well separated' from the origin", "not quantified (section 5.3)",
                         "abs(theta - theta_0) > 1e-3 max abs(theta)"),
    "vgg-nobn": Choice("VGG-16 without BN", "text 'VGG-16' (P = 15,291,300); figures VGG16BN",
                       "both: vgg16 (no BN) runs and vgg16bn appendix runs"),
    "vgg-overfit": Choice("VGG-16 Overfit runs", "no such run", "our extension (alpha0 0.001, "
                          "T 1000)"),
    "epoch300": Choice("PreResNet 'epoch 300' (Figs 13, 31)", "T = 225 for the Normal schedule",
                       "the final weights, epoch 225"),
    "preset": Choice("CPU presets", "no such run", "MLP, 3,000 images, toy m and K"),
}

_COMMON = ("batch", "norm", "lr-epoch", "drop-last", "no-wd-hess", "aug-set", "origin-tol")


class PaperRun(NamedTuple):
    """One of the paper's runs: the training config, the epoch of its spectra, its numbers.

    ``choices`` are the keys of :data:`OUR_CHOICES` its results depend on.

    Example:
      >>> from experiments.paper_runs import RUNS
      >>> run = RUNS[0]
      >>> run.config, run.label, run.epoch, run.reference.lambda1_emp
      ('preresnet110_cifar100_normal', 'PreResNet-110 CIFAR-100 Normal', 225, 20.56)
      >>> [(r.config, r.epoch) for r in RUNS if r.reference is None][:2]
      [('vgg16_cifar100_normal', 300), ('vgg16_cifar100_overfit', 1000)]
      >>> RUNS[-1].choices[-2:]
      ('vgg-nobn', 'vgg-overfit')
    """

    config: str
    label: str
    model: str
    dataset: str
    schedule: str
    epoch: int
    reference: PaperNumbers | None
    choices: tuple[str, ...] = ()


def _runs() -> list[PaperRun]:
    from train.configs import get_config

    runs = []
    for model, label in (("preresnet110", "PreResNet-110"), ("vgg16", "VGG-16")):
        for dataset, dlabel in (("cifar100", "CIFAR-100"), ("cifar10", "CIFAR-10")):
            for schedule in ("normal", "overfit"):
                name = f"{model}_{dataset}_{schedule}"
                vgg = model == "vgg16"
                choices = ("wd", *_COMMON, *(("dropout", "vgg-nobn") if vgg else ("bn-hess",)),
                           *(("vgg-overfit",) if vgg and schedule == "overfit" else ()))
                runs.append(PaperRun(name, f"{label} {dlabel} {schedule.capitalize()}", model,
                                     dataset, schedule, get_config(name).epochs,
                                     PAPER.get((model, dataset, schedule)), choices))
    return runs


#: The eight runs of the report (PreResNet-110 and VGG-16 x CIFAR-100/10 x Normal/Overfit).
RUNS: list[PaperRun] = _runs()


class Figure(NamedTuple):
    """One figure of the paper: its caption, and the run, kind and epoch that regenerate it.

    ``kind`` is ``empirical`` / ``augmented`` (a spectrum's stem plot), ``augmented_5m`` (5M
    samples, m = 10: appendices H-I) or ``curves`` (training curves, ``train.curves``).

    Example:
      >>> from experiments.paper_runs import FIGURES
      >>> FIGURES[4].caption, FIGURES[4].config, FIGURES[4].kind, FIGURES[4].epoch
      ('Augmented Hessian, CIFAR-100 SGD', 'preresnet110_cifar100_normal', 'augmented', 225)
    """

    caption: str
    config: str
    kind: str
    epoch: int | None
    note: str = ""


def _figures() -> dict[int, Figure]:
    p = "preresnet110_cifar{}_{}"
    figs = {
        1: Figure("Empirical Hessian, CIFAR-100 SGD", p.format(100, "normal"), "empirical", 225),
        2: Figure("Empirical Hessian, CIFAR-10 SGD", p.format(10, "normal"), "empirical", 225),
        3: Figure("Augmented Hessian, CIFAR-10 SGD", p.format(10, "normal"), "augmented", 225),
        4: Figure("Augmented Hessian, CIFAR-100 SGD", p.format(100, "normal"), "augmented", 225),
        5: Figure("Empirical Hessian, C100 OverFit", p.format(100, "overfit"), "empirical", 1000),
        6: Figure("Empirical Hessian, C10 OverFit", p.format(10, "overfit"), "empirical", 1000),
        7: Figure("Augmented Hessian, C100 OverFit", p.format(100, "overfit"), "augmented", 1000),
        8: Figure("Augmented Hessian, C10 OverFit", p.format(10, "overfit"), "augmented", 1000),
        13: Figure("Augmented CIFAR-100 PreResNet-110, epoch 300, 5M samples, m = 10",
                   p.format(100, "normal"), "augmented_5m", 225,
                   "epoch 300 > T = 225: our final weights (epoch300)"),
        30: Figure("CIFAR-10 PreResNet-110, epoch 50", p.format(10, "normal"), "empirical", 50),
        31: Figure("CIFAR-10 PreResNet-110, epoch 300", p.format(10, "normal"), "empirical", 225,
                   "epoch 300 > T = 225: our final weights, the spectrum of Figure 2 (epoch300)"),
        21: Figure("CIFAR-100 VGG16BN, epoch 300", "vgg16bn_cifar100_normal", "empirical", 300),
        22: Figure("Augmented CIFAR-100 VGG16BN, epoch 300, 5M samples, m = 10",
                   "vgg16bn_cifar100_normal", "augmented_5m", 300),
        32: Figure("CIFAR-10 VGG16BN, epoch 0", "vgg16bn_cifar10_normal", "empirical", 0),
        33: Figure("CIFAR-10 VGG16BN, epoch 300", "vgg16bn_cifar10_normal", "empirical", 300),
    }
    for n, (dataset, schedule) in enumerate(((100, "normal"), (10, "normal"), (100, "overfit"),
                                             (10, "overfit")), start=9):
        figs[n] = Figure(f"training curves, CIFAR-{dataset} {schedule.capitalize()}",
                         p.format(dataset, schedule), "curves", None)
    for n, epoch in zip(range(14, 21), (0, 25, 50, 75, 125, 150, 150)):
        figs[n] = Figure(f"CIFAR-100 PreResNet-110, epoch {epoch}", p.format(100, "normal"),
                         "empirical", epoch, "as printed, a repeat of Figure 19" if n == 20 else "")
    for n, epoch in zip(range(23, 30), (0, 25, 50, 75, 125, 150, 150)):
        figs[n] = Figure(f"CIFAR-100 VGG16BN, epoch {epoch}", "vgg16bn_cifar100_normal",
                         "empirical", epoch,
                         "as printed, Figure 19's plot (PreResNet axis values)" if n == 29 else "")
    return dict(sorted(figs.items()))


#: Every figure of the paper, by number.
FIGURES: dict[int, Figure] = _figures()


def figure_path(number: int, runs_dir: str = "runs", /) -> str:
    """The file our commands write for figure ``number`` (a PNG under ``runs_dir``).

    Example:
      >>> figure_path(1, "R")
      'R/preresnet110_cifar100_normal/spectra/empirical_e0225.png'
      >>> figure_path(9, "R")
      'R/preresnet110_cifar100_normal/curves.png'
      >>> figure_path(22, "R")
      'R/vgg16bn_cifar100_normal/spectra_5m/augmented_e0300.png'
    """
    f = FIGURES[number]
    wd = os.path.join(runs_dir, f.config)
    if f.kind == "curves":
        return os.path.join(wd, "curves.png")
    sub, mode = ("spectra_5m", "augmented") if f.kind == "augmented_5m" else ("spectra", f.kind)
    return os.path.join(wd, sub, f"{mode}_e{f.epoch:04d}.png")


def _figures_of(config: str) -> list[int]:
    return [n for n, f in FIGURES.items() if f.config == config]


def _nums(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers)) if numbers else "none (not in the paper)"


def commands(run: PaperRun, runs_dir: str = "runs", /, *, epochs_sweep: bool = False) -> list[str]:
    """The shell commands of one run: train, both spectra, compare, curves (and the sweep).

    Example:
      >>> commands(RUNS[0], "runs")[1].split()[3:]
      ['--workdir', 'runs/preresnet110_cifar100_normal', '--epoch', '225', '--mode', 'empirical']
      >>> commands(RUNS[0], "runs")[4]
      'python -m train.curves --workdir runs/preresnet110_cifar100_normal'
    """
    wd = shlex.quote(os.path.join(runs_dir, run.config))
    cmds = [
        f"python -m train --config {run.config} --workdir {wd}",
        f"python -m experiments.spectrum --workdir {wd} --epoch {run.epoch} --mode empirical",
        f"python -m experiments.spectrum --workdir {wd} --epoch {run.epoch} --mode augmented",
        f"python -m experiments.compare --workdir {wd} --epoch {run.epoch}",
        f"python -m train.curves --workdir {wd}",
    ]
    if epochs_sweep:
        cmds.append(f"python -m experiments.epochs --workdir {wd} --epochs 0,25,50,75,125,150")
    return cmds


def print_commands(runs_dir: str = "runs", /) -> str:
    """All the paper's commands, one block per run, the figure index, then the report.

    Example:
      >>> from experiments.paper_runs import print_commands
      >>> lines = print_commands("runs").splitlines()
      >>> sum(line.startswith("python -m train ") for line in lines)  # 8 runs, 2 VGG-16-BN
      10
      >>> fig30 = next(line for line in lines if line.startswith("# Figure 30:"))
      >>> caption, path = fig30.split(" -> ")
      >>> caption
      '# Figure 30: CIFAR-10 PreResNet-110, epoch 50'
      >>> path
      'runs/preresnet110_cifar10_normal/spectra/empirical_e0050.png'
      >>> lines[-1]
      'python -m experiments.paper --report --runs-dir runs'
    """
    q = shlex.quote
    lines = ["# Granziol et al. (2020), section 6: train -> spectra -> compare, per run.",
             "# Times are ESTIMATES for one H100 (README, 'Expected times'); spectra use every "
             "GPU. Settings the paper does not state are ours: docs/fidelity.md.", ""]
    for run in RUNS:
        lines.append(f"# {run.label} (spectra at epoch {run.epoch}); paper figures "
                     f"{_nums(_figures_of(run.config))}; our choices: {', '.join(run.choices)}")
        # The appendix sweeps (figures 14-20) are of the CIFAR-100 Normal PreResNet run.
        lines += commands(run, runs_dir, epochs_sweep=run.config == RUNS[0].config)
        if run.config == "preresnet110_cifar10_normal":  # Figure 30 (Figure 31: epoch 225)
            lines.append(f"python -m experiments.spectrum --workdir "
                         f"{q(os.path.join(runs_dir, run.config))} --epoch 50 --mode empirical")
        lines.append("")
    p110 = q(os.path.join(runs_dir, "preresnet110_cifar100_normal"))
    for bn, epochs in (("vgg16bn_cifar100_normal", "0,25,50,75,125,150,300"),
                       ("vgg16bn_cifar10_normal", "0,300")):
        wd = q(os.path.join(runs_dir, bn))
        lines += [f"# Appendices I and K: {bn} along training; paper figures "
                  f"{_nums(_figures_of(bn))}; our choices: wd, {', '.join(_COMMON)}, bn-hess",
                  f"python -m train --config {bn} --workdir {wd}",
                  f"python -m train.curves --workdir {wd}",
                  f"python -m experiments.epochs --workdir {wd} --epochs {epochs}"]
        if bn == "vgg16bn_cifar100_normal":
            lines.append(f"python -m experiments.spectrum --workdir {wd} --epoch 300 --mode "
                         f"augmented --num-per-image 100 --steps 10 --out {wd}/spectra_5m")
        lines.append("")
    lines += ["# Appendix H: 5M-sample augmented spectrum (K = 100), m = 10, PreResNet-110 "
              "CIFAR-100 (figure 13; our choices: epoch300)",
              f"python -m experiments.spectrum --workdir {p110} --epoch 225 --mode augmented "
              f"--num-per-image 100 --steps 10 --out {p110}/spectra_5m", "",
              "# Figure index: every figure of the paper -> the file the commands above write"]
    for n, f in FIGURES.items():
        note = f" ({f.note})" if f.note else ""
        lines.append(f"# Figure {n}: {f.caption} -> {figure_path(n, runs_dir)}{note}")
    lines += ["", f"python -m experiments.paper --report --runs-dir {q(runs_dir)}"]
    return "\n".join(lines)


def list_runs() -> str:
    """The runs with their settings, figures and our choices, then the choices themselves.

    What ``python -m experiments.paper --list`` prints.

    Example:
      >>> text = list_runs()
      >>> text.splitlines()[2].split()[:2]
      ['preresnet110_cifar100_normal', 'PreResNet-110']
      >>> [line.split()[0] for line in text.splitlines() if line.endswith("[ours]")][:3]
      ['wd', 'batch', 'norm']
    """
    from train.configs import get_config

    lines = ["# The paper's runs (config, label, schedule, spectra epoch, paper figures, choices "
             "of ours they depend on)", ""]
    for run in RUNS:
        c = get_config(run.config)
        lines.append(f"{run.config:30s} {run.label:32s} alpha0={c.base_lr} T={c.epochs} "
                     f"wd={c.weight_decay} [ours] batch={c.batch_size} [ours] epoch={run.epoch} "
                     f"figures: {_nums(_figures_of(run.config))}; "
                     f"{'numbers: ' + run.reference.source if run.reference else 'no numbers'}; "
                     f"ours: {', '.join(run.choices)}")
    lines += ["", "# Our choices: settings the paper does not state (full table, quotes and "
              "reasons: docs/fidelity.md)", ""]
    for key, ch in OUR_CHOICES.items():
        lines.append(f"{key:12s} {ch.setting}: {ch.ours} (paper: {ch.paper}) [ours]")
    return "\n".join(lines)
