"""Training curves (the paper's Figures 9-12) from a run's ``metrics.jsonl``.

``python -m train.curves --workdir <dir> [--out curves.png] [--title TEXT]`` draws test and
training accuracy (left) and loss (right) against the epoch. Only the files are read: curves can
be drawn while the run is going, and on a machine without JAX devices.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from train.metrics_io import read_metrics

__all__ = ["plot_curves", "main"]


def plot_curves(
    records: Sequence[dict[str, Any]], /, *, path: str | os.PathLike, title: str | None = None
) -> str:
    """Draw accuracy and loss curves of ``records`` (metrics.jsonl lines) to a PNG file.

    matplotlib is imported here (Agg backend), so importing this module stays cheap.

    Args:
      records: per-epoch records with ``epoch``, ``train_accuracy``, ``test_accuracy``,
        ``train_loss`` and ``test_loss``.
      path: output file.
      title: figure title.

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
    """
    if not records:
        raise ValueError("no metrics records to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("test", "-"), ("train", "--")):
        ax_acc.plot(epochs, [100 * r[f"{split}_accuracy"] for r in records], style, label=split)
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in records], style, label=split)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Test and training accuracy")
    ax_loss.set(
        xlabel="epoch", ylabel="cross-entropy", title="Test and training loss", yscale="log"
    )
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)


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
    print(f"wrote {plot_curves(records, path=out, title=title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
