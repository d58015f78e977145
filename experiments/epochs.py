"""Spectra of the checkpoints along a training run (the paper's appendix figures).

    python -m experiments.epochs --workdir runs/p110_c100_normal --epochs 0,25,50,75,125,150
    python -m experiments.epochs --workdir runs/p110_c100_normal --mode augmented \\
        --num-per-image 100 --steps 10            # appendix: 5 million samples, m = 10

Granziol et al. (2020), appendices H-K, plot the Empirical Hessian spectrum of PreResNet-110 and
VGG-16-BN (CIFAR-100) at epochs 0, 25, 50, 75, 125 and 150, and augmented spectra with 5 million
samples and m = 10. For every epoch (default: every checkpoint the run kept) this computes the
spectrum with ``experiments.spectrum`` (an epoch whose spectrum JSON exists is reused, so an
interrupted sweep continues where it stopped), which writes one stem plot per epoch, and then
draws the extremal Ritz values and the negative mass against the epoch:
``<out>/epochs_<mode>.{png,json,csv}``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from typing import Any, Sequence


from experiments.compare import negative_stats
from experiments.spectrum import (
    available_epochs,
    check_num_images,
    compute_spectrum,
    existing_spectrum,
    format_summary,
    load_training_set,
    spectrum_path,
)
from experiments.spectrum_settings import (
    CURVATURES,
    MODES,
    SpectrumSettings,
    add_settings_arguments,
    settings_from_args,
)
from jaxspec import Spectrum
from jaxspec.atomic import write_text

__all__ = ["epoch_rows", "epoch_spectra", "main", "plot_extremal", "write_summary"]


def epoch_spectra(workdir: str | os.PathLike, epochs: Sequence[int], settings: SpectrumSettings,
                  /, *, out_dir: str | None = None, npz: str | None = None,
                  skip_existing: bool = True, verbose: bool = True) -> dict[int, Spectrum]:
    """The spectrum (``settings.mode``) of each checkpoint in ``epochs``, computed or reused.

    Args:
      workdir: the training run.
      epochs: checkpoint epochs.
      settings: as for :func:`experiments.spectrum.compute_spectrum`.
      out_dir: default ``<workdir>/spectra``.
      npz: local ``.npz`` of the run's data.
      skip_existing: reuse a spectrum JSON already written for an epoch with these settings
        (one written with other settings raises ``ValueError``).
      verbose: print a line per epoch.

    Returns:
      ``{epoch: Spectrum}``.

    Example:
      An epoch whose spectrum JSON is already there (here a stand-in for epoch 0) is loaded,
      the others are computed:

      >>> import contextlib, io, tempfile
      >>> from jaxspec import Spectrum
      >>> from jaxspec.io import save_spectrum
      >>> from experiments.epochs import epoch_spectra
      >>> from experiments.paper import trained_preset
      >>> from experiments.spectrum import spectrum_path
      >>> from experiments.spectrum_settings import SpectrumSettings
      >>> workdir, out = trained_preset("smoke"), tempfile.mkdtemp()
      >>> save_spectrum(Spectrum([-1.0, 2.0], [0.5, 0.5]), spectrum_path(out, "empirical", 0))
      >>> settings = SpectrumSettings(num_steps=4, batch_size=32, num_images=32,
      ...                             noise_probes=0, progress=False)
      >>> with contextlib.redirect_stdout(io.StringIO()) as f:
      ...     sweep = epoch_spectra(workdir, (0, 2), settings, out_dir=out)
      >>> sweep[0].nodes.tolist(), sweep[2].nodes.size, sweep[2].meta["epoch"]
      ([-1.0, 2.0], 4, 2)
      >>> [line.split(":")[0] for line in f.getvalue().splitlines()]
      ['exists', 'empirical e2']
    """
    out_dir = os.path.join(os.fspath(workdir), "spectra") if out_dir is None else out_dir
    result = {}
    training_set = None  # loaded once, for the first epoch that needs it
    for epoch in epochs:
        path = spectrum_path(out_dir, settings.name, epoch)
        existing = existing_spectrum(path, settings) if skip_existing else None
        if existing is not None:
            result[epoch] = existing
            if verbose:
                print(f"exists: {path}")
            continue
        if training_set is None:
            from train.loop import read_config

            training_set = load_training_set(workdir, read_config(workdir), npz=npz,
                                             num_images=settings.num_images)
        r = compute_spectrum(workdir, epoch, settings, out_dir=out_dir, npz=npz,
                             training_set=training_set)
        if verbose:
            print(format_summary(r))
        result[epoch] = r.spectrum
    return result


def epoch_rows(spectra: dict[int, Spectrum], /) -> list[dict[str, Any]]:
    """One row per epoch: extremal Ritz values, negative count and mass, training metrics.

    Example:
      >>> from jaxspec import Spectrum
      >>> epoch_rows({3: Spectrum([-1.0, 0.0, 2.0], [0.1, 0.8, 0.1])})[0]["lambda_max"]
      2.0
    """
    rows = []
    for epoch in sorted(spectra):
        s = spectra[epoch]
        rec = s.meta.get("train_metrics") or {}
        rows.append({"epoch": int(epoch), "lambda_max": s.lambda_max, "lambda_min": s.lambda_min,
                     **negative_stats(s), "test_accuracy": rec.get("test_accuracy"),
                     "train_accuracy": rec.get("train_accuracy")})
    return rows


def plot_extremal(rows: Sequence[dict[str, Any]], path: str, /, *, title: str | None = None):
    """Extremal Ritz values against the epoch (left) and the negative mass (right).

    Example:
      >>> import os, tempfile
      >>> p = os.path.join(tempfile.mkdtemp(), "e.png")
      >>> plot_extremal([{"epoch": 0, "lambda_max": 3.0, "lambda_min": -1.0,
      ...                 "negative_mass": 0.1}], p)
      >>> os.path.exists(p)
      True
    """
    import matplotlib

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [r["lambda_max"] for r in rows], "o-", label=r"$\lambda_{max}$")
    a.plot(epochs, [r["lambda_min"] for r in rows], "s-", label=r"$\lambda_{min}$")
    a.axhline(0.0, color="0.6", lw=0.8)
    a.set_xlabel("epoch")
    a.set_ylabel("extremal Ritz value")
    a.legend()
    # a log axis has no 0: epochs without negative mass are left out and named below
    mass = [r["negative_mass"] if r["negative_mass"] > 0 else float("nan") for r in rows]
    b.plot(epochs, mass, "o-", color="C3")
    b.set_yscale("log")
    zero = [str(r["epoch"]) for r in rows if not r["negative_mass"] > 0]
    if zero:
        b.text(0.02, 0.02, f"0 at epoch {', '.join(zero)}", transform=b.transAxes, fontsize=8)
    b.set_xlabel("epoch")
    b.set_ylabel("separated negative mass")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(rows: Sequence[dict[str, Any]], out_dir: str, mode: str, /, *,
                  title: str | None = None) -> dict[str, str]:
    """Writes ``epochs_<mode>.{json,csv,png}`` (``mode``: the settings' name, e.g.
    ``empirical_ggn``) and returns their paths.

    Example:
      >>> import json, os, tempfile
      >>> from jaxspec import Spectrum
      >>> from experiments.epochs import epoch_rows, write_summary
      >>> rows = epoch_rows({0: Spectrum([-1.0, 0.5, 3.0], [0.2, 0.5, 0.3]),
      ...                    2: Spectrum([-0.5, 0.1, 6.0], [0.1, 0.7, 0.2])})
      >>> paths = write_summary(rows, tempfile.mkdtemp(), "empirical", title="MLP")
      >>> sorted(paths), os.path.basename(paths["png"])
      (['csv', 'json', 'png'], 'epochs_empirical.png')
      >>> with open(paths["json"]) as f:
      ...     [(r["epoch"], r["lambda_max"], r["negative_mass"]) for r in json.load(f)]
      [(0, 3.0, 0.2), (2, 6.0, 0.1)]
      >>> with open(paths["csv"]) as f:
      ...     f.readline().split(",")[:3]
      ['epoch', 'lambda_max', 'lambda_min']
    """
    paths = {ext: os.path.join(out_dir, f"epochs_{mode}.{ext}") for ext in ("json", "csv", "png")}
    write_text(paths["json"], json.dumps(list(rows), indent=1))
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(paths["csv"], out.getvalue())
    plot_extremal(rows, paths["png"], title=title)
    return paths


def _parse_epochs(text: str | None, workdir: str) -> list[int]:
    available = available_epochs(workdir)
    if text is None:
        return available
    try:
        epochs = [int(e) for e in text.replace(" ", "").split(",") if e]
    except ValueError:
        raise SystemExit(f"--epochs {text!r}: not a comma-separated list of integers") from None
    missing = sorted(set(epochs) - set(available))
    if missing:
        raise SystemExit(f"no checkpoint for epochs {missing} in {workdir}; available: {available}")
    return epochs


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m experiments.epochs --workdir RUN [--epochs 0,25,50]``.

    Example:
      >>> import contextlib, io, os, tempfile
      >>> from experiments.epochs import main
      >>> from experiments.paper import trained_preset
      >>> workdir, out = trained_preset("smoke"), tempfile.mkdtemp()
      >>> argv = ["--workdir", workdir, "--out", out, "--steps", "4", "--batch-size", "32",
      ...         "--num-images", "32", "--noise-probes", "0", "--no-progress"]
      >>> with contextlib.redirect_stdout(io.StringIO()) as f:
      ...     code = main(argv + ["--epochs", "2"])
      >>> lines = f.getvalue().splitlines()
      >>> code, [line.split(":")[0] for line in lines[:2]], lines[2].split()[0]
      (0, ['empirical e2', 'epoch     2'], 'wrote')
      >>> sorted(os.listdir(out))  # doctest: +NORMALIZE_WHITESPACE
      ['empirical_e0002.json', 'empirical_e0002.png', 'epochs_empirical.csv',
       'epochs_empirical.json', 'epochs_empirical.png']
      >>> with contextlib.redirect_stderr(io.StringIO()) as err:
      ...     try:
      ...         main(argv + ["--epochs", "1"])
      ...     except SystemExit as e:
      ...         code = e.code
      >>> code, err.getvalue().splitlines()[-1].split("error: ")[1].replace(workdir, "RUN")
      (2, 'no checkpoint for epochs [1] in RUN; available: [0, 2]')
    """
    parser = argparse.ArgumentParser(
        prog="python -m experiments.epochs",
        description="Hessian spectra of the checkpoints along a training run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workdir", required=True, help="training run directory")
    parser.add_argument("--epochs", default=None,
                        help="comma-separated checkpoint epochs (default: all kept)")
    parser.add_argument("--mode", choices=MODES, default="empirical")
    parser.add_argument("--out", default=None, help="output directory (default WORKDIR/spectra)")
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    try:
        epochs = _parse_epochs(args.epochs, args.workdir)
    except SystemExit as e:  # a bad or missing epoch: the usage and the message
        parser.error(str(e))
    if not epochs:
        parser.error(f"{args.workdir} has no checkpoints")
    if args.npz is not None and not os.path.isfile(args.npz):
        parser.error(f"--npz {args.npz}: no such file")
    check_num_images(parser, args.workdir, args.num_images)
    out = args.out or os.path.join(args.workdir, "spectra")
    settings = settings_from_args(parser, args, args.mode)
    for epoch in epochs:  # a spectrum there of other settings: refused before any work
        try:
            existing_spectrum(spectrum_path(out, settings.name, epoch), settings)
        except ValueError as e:
            parser.error(str(e))
    spectra = epoch_spectra(args.workdir, epochs, settings, out_dir=out, npz=args.npz)
    rows = epoch_rows(spectra)
    meta = spectra[epochs[-1]].meta
    paths = write_summary(rows, out, settings.name,
                          title=f"{args.mode} {CURVATURES[settings.curvature]} of "
                                f"{meta.get('model')} on "
                                f"{meta.get('dataset')} along training")
    for r in rows:
        print(f"epoch {r['epoch']:5d}: lambda_max={r['lambda_max']:.5g} "
              f"lambda_min={r['lambda_min']:.5g} negative={r['num_negative']}/{r['num_nodes']} "
              f"mass={r['negative_mass']:.3g}")
    print("wrote", ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    from jaxspec.compiler import cache_compilations

    cache_compilations()  # a later run loads the compiled programs from disk
    sys.exit(main())
