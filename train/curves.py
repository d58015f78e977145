"""Training curves (the paper's Figures 9-12) from a run's ``metrics.jsonl``.

``python -m train.curves --workdir <dir> [--out curves.png] [--title TEXT]`` draws test and
training accuracy (left) and loss (middle) against the epoch and, when the run tracked its
curvature (``track_curvature_every``, :mod:`train.tracking`), a third panel: the edge-of-stability
plot, ``lambda_max`` against the optimiser step with the thresholds ``2 / lr`` and
``2 (1 + momentum) / lr``. Only the files are read: curves can be drawn while the run is going,
and on a machine without JAX devices.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from train.metrics_io import read_curvature, read_metrics

__all__ = ["plot_curves", "main"]


def plot_curves(
    records: Sequence[dict[str, Any]], /, *, path: str | os.PathLike, title: str | None = None,
    curvature: Sequence[dict[str, Any]] = (),
) -> str:
    """Draw accuracy and loss curves of ``records`` (metrics.jsonl lines) to a PNG file.

    matplotlib is imported here (Agg backend), so importing this module stays cheap.

    Args:
      records: per-epoch records with ``epoch``, ``train_accuracy``, ``test_accuracy``,
        ``train_loss`` and ``test_loss``.
      path: output file.
      title: figure title.
      curvature: curvature records (:func:`train.metrics_io.read_curvature`); if any, a third
        panel draws ``lambda_max`` against the step, with ``2 / lr`` and the momentum-corrected
        threshold (log scale).

    Returns:
      ``path`` as a string.

    Example:
      >>> import os, tempfile
      >>> from train.curves import plot_curves
      >>> recs = [{"epoch": e, "train_accuracy": 0.1 * e, "test_accuracy": 0.08 * e,
      ...          "train_loss": 2.0 / e, "test_loss": 2.2 / e} for e in (1, 2, 3)]
      >>> out = plot_curves(recs, path=os.path.join(tempfile.mkdtemp(), "c.png"))
      >>> os.path.getsize(out) > 0
      True
      >>> curv = [{"step": s, "lambda_max": 5.0 * s, "lr": 0.1, "lr_threshold": 20.0,
      ...          "lr_threshold_momentum": 38.0} for s in (10, 20, 30)]
      >>> out = plot_curves(recs, path=out, curvature=curv)   # with the edge-of-stability panel
    """
    if not records:
        raise ValueError("no metrics records to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    panels = 3 if curvature else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    ax_acc, ax_loss = axes[:2]
    for split, style in (("test", "-"), ("train", "--")):
        ax_acc.plot(epochs, [100 * r[f"{split}_accuracy"] for r in records], style, label=split)
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in records], style, label=split)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Test and training accuracy")
    ax_loss.set(
        xlabel="epoch", ylabel="cross-entropy", title="Test and training loss", yscale="log"
    )
    if curvature:
        _stability_panel(axes[2], curvature)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)


def _stability_panel(ax: Any, curvature: Sequence[dict[str, Any]]) -> None:
    steps = [r["step"] for r in curvature]
    kind = curvature[0].get("kind", "hessian")
    name = {"hessian": "Hessian", "ggn": "GGN"}.get(kind, kind)
    ax.plot(steps, [r["lambda_max"] for r in curvature], "o-", ms=3, label=f"{name} lambda_max")
    for key, style, label in (("lr_threshold", "k-", "2 / lr"),
                              ("lr_threshold_momentum", "k--", "2 (1 + momentum) / lr")):
        values = [r.get(key) for r in curvature]
        if any(v is not None for v in values):
            ax.step(steps, [float("nan") if v is None else v for v in values], style,
                    where="post", lw=1, label=label)
    positive = all(r["lambda_max"] > 0 for r in curvature)
    ax.set(xlabel="step", ylabel="top eigenvalue", title="Edge of stability",
           yscale="log" if positive else "linear")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m train.curves --workdir <dir> [--out <png>]``.

    Example:
      >>> import json, os, tempfile
      >>> from train.curves import main
      >>> d = tempfile.mkdtemp()
      >>> with open(os.path.join(d, "metrics.jsonl"), "w") as f:
      ...     _ = f.write(json.dumps({"epoch": 1, "train_accuracy": 0.5, "test_accuracy": 0.4,
      ...                             "train_loss": 1.0, "test_loss": 1.2}) + "\\n")
      >>> main(["--workdir", d])  # doctest: +ELLIPSIS
      wrote .../curves.png
      0
    """
    parser = argparse.ArgumentParser(
        prog="python -m train.curves", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workdir", required=True, help="a run directory with metrics.jsonl")
    parser.add_argument("--out", help="output PNG (default <workdir>/curves.png)")
    parser.add_argument("--title", help="figure title (default: the config name)")
    args = parser.parse_args(argv)
    records = read_metrics(args.workdir)
    if not records:
        parser.error(f"{args.workdir}: no metrics.jsonl records")
    title = args.title
    if title is None:
        import json

        cfg = os.path.join(args.workdir, "config.json")
        if os.path.exists(cfg):
            with open(cfg) as f:
                title = json.load(f).get("name")
    out = args.out or os.path.join(args.workdir, "curves.png")
    path = plot_curves(records, path=out, title=title, curvature=read_curvature(args.workdir))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
