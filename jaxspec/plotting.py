"""Figures: stem plots of discrete spectra in the paper's style (matplotlib, imported lazily)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

__all__ = ["block_heterogeneity_plot", "block_spectra_plot", "stem_plot", "stem_plots"]


def _pyplot():
    import matplotlib

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def stem_plot(spectrum, /, *, ax=None, title: str | None = None, path: str | None = None,
              color: str = "C0", min_weight: float = 1e-12):
    """Stem plot of a :class:`jaxspec.Spectrum`: weights on a log scale against Ritz values.

    The extremal Ritz values are marked and labelled, as in the paper's figures. Weights below
    ``min_weight`` are drawn at ``min_weight`` so the log scale stays finite.

    Args:
      spectrum: the spectrum.
      ax: a matplotlib Axes to draw on (a new figure otherwise).
      title: the axes title.
      path: save the figure there (``.png`` or ``.pdf``).
      color: stem colour.
      min_weight: floor of the log scale.

    Returns:
      The matplotlib Axes.

    Example:
      >>> import os, tempfile
      >>> from jaxspec import Spectrum
      >>> from jaxspec.plotting import stem_plot
      >>> p = os.path.join(tempfile.mkdtemp(), "s.png")
      >>> _ = stem_plot(Spectrum([-1.0, 0.0, 5.0], [0.1, 0.8, 0.1]), path=p)
      >>> os.path.getsize(p) > 0
      True
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    w = np.maximum(spectrum.weights, min_weight)
    ax.vlines(spectrum.nodes, min_weight, w, color=color, lw=1.2)
    ax.plot(spectrum.nodes, w, "o", color=color, ms=3)
    ax.set_yscale("log")
    ax.set_ylim(min_weight if min_weight > w.min() / 10 else w.min() / 10, 1.5)
    ax.set_xlabel("Ritz value (eigenvalue)")
    ax.set_ylabel("weight")
    for x, name in ((spectrum.lambda_min, r"$\lambda_{min}$"), (spectrum.lambda_max, r"$\lambda_{max}$")):
        ax.axvline(x, color="0.6", ls=":", lw=1)
        ax.annotate(f"{name}={x:.4g}", (x, 1.0), textcoords="offset points", xytext=(2, -10),
                    fontsize=8, ha="right" if x == spectrum.lambda_max else "left")
    if title:
        ax.set_title(title, fontsize=10)
    if path is not None:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=120)
        plt.close(ax.figure)
    return ax


def stem_plots(spectra: Mapping[str, object] | Sequence[tuple[str, object]], /, *,
               path: str | None = None, sharex: bool = True, suptitle: str | None = None):
    """Several spectra side by side (e.g. empirical vs augmented or true), one panel each.

    Example:
      >>> import os, tempfile
      >>> from jaxspec import Spectrum
      >>> from jaxspec.plotting import stem_plots
      >>> p = os.path.join(tempfile.mkdtemp(), "two.png")
      >>> s = Spectrum([-1.0, 0.0, 5.0], [0.1, 0.8, 0.1])
      >>> _ = stem_plots({"empirical": s, "true": s}, path=p)
      >>> os.path.exists(p)
      True
    """
    plt = _pyplot()
    items = list(spectra.items()) if isinstance(spectra, Mapping) else list(spectra)
    fig, axes = plt.subplots(1, len(items), figsize=(5 * len(items), 3.6), sharex=sharex,
                             squeeze=False)
    for j, (ax, (name, s)) in enumerate(zip(axes[0], items)):
        stem_plot(s, ax=ax, title=name, color=f"C{j}")
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def block_spectra_plot(spectra: Mapping[str, object], /, *, path: str | None = None,
                       ncols: int | None = None, suptitle: str | None = None,
                       sharex: bool = False):
    """The spectra of parameter blocks (:func:`jaxspec.block_spectra`) as small multiples.

    One stem-plot panel per block in one figure (``ncols`` panels a row; default at most 4,
    in balanced rows),
    each titled with the block's name and size (``meta["block_size"]``, when recorded). The
    x axes are separate by default: blocks' scales differ by orders of magnitude.

    Args:
      spectra: ``{block name: Spectrum}``.
      path: save the figure there (``.png`` or ``.pdf``).
      ncols: panels per row.
      suptitle: the figure's title.
      sharex: one x axis for all panels.

    Returns:
      The matplotlib Figure.

    Example:
      >>> import os, tempfile
      >>> from jaxspec import Spectrum
      >>> from jaxspec.plotting import block_spectra_plot
      >>> p = os.path.join(tempfile.mkdtemp(), "blocks.png")
      >>> s = Spectrum([-1.0, 0.0, 5.0], [0.1, 0.8, 0.1], meta={"block_size": 3})
      >>> fig = block_spectra_plot({"conv1": s, "bn1": s, "fc": s}, path=p)
      >>> len(fig.axes), os.path.getsize(p) > 0
      (3, True)
    """
    plt = _pyplot()
    items = list(spectra.items())
    if not items:
        raise ValueError("block_spectra_plot: no spectra to draw")
    if ncols is None:  # at most 4 a row, the rows balanced (6 panels: 2 rows of 3)
        ncols = -(-len(items) // -(-len(items) // 4))
    ncols = int(ncols)
    nrows = -(-len(items) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), sharex=sharex,
                             squeeze=False)
    for j, (ax, (name, s)) in enumerate(zip(axes.flat, items)):
        size = s.meta.get("block_size")
        stem_plot(s, ax=ax, title=name if size is None else f"{name} (P={size:,})",
                  color=f"C{j % 10}")
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
        if j % ncols:
            ax.set_ylabel("")
    for ax in list(axes.flat)[len(items):]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def block_heterogeneity_plot(models: Mapping[str, Mapping[str, object]], /, *,
                             path: str | None = None, suptitle: str | None = None):
    """Block spectra of several models side by side: densities and Jensen-Shannon distances.

    One row per model: on the left every block's spectral density (one row of the image per
    block, :func:`jaxspec.heterogeneity.block_densities`, on an ``asinh`` eigenvalue axis), on
    the right the matrix of Jensen-Shannon distances between the blocks
    (:func:`jaxspec.heterogeneity.js_matrix`), titled with their mean over pairs.

    Args:
      models: ``{model name: {block name: Spectrum}}``.
      path: save the figure there (``.png`` or ``.pdf``).
      suptitle: the figure's title.

    Returns:
      The matplotlib Figure.

    Example:
      >>> from jaxspec import Spectrum
      >>> from jaxspec.plotting import block_heterogeneity_plot
      >>> a, b = Spectrum([0.0, 1.0], [0.5, 0.5]), Spectrum([2.0], [1.0])
      >>> fig = block_heterogeneity_plot({"m": {"a": a, "b": b}})
      >>> len(fig.axes)   # densities, distances, one colour bar
      3
    """
    from jaxspec.heterogeneity import block_densities, js_matrix

    plt = _pyplot()
    if not models:
        raise ValueError("block_heterogeneity_plot: no models")
    rows = [max(len(s), 4) for s in models.values()]
    fig, axes = plt.subplots(len(models), 2, figsize=(13, 0.16 * sum(rows) + 1.6 * len(models)),
                             squeeze=False, gridspec_kw={"height_ratios": rows,
                                                         "width_ratios": [1.6, 1]})
    for (left, right), (model, spectra) in zip(axes, models.items()):
        lam, dens = block_densities(spectra)
        names, dist = js_matrix(spectra)
        image = np.log10(np.stack([dens[n] for n in names]) + 1e-8)
        left.imshow(image, aspect="auto", cmap="viridis", interpolation="nearest",
                    extent=(0, lam.size, len(names) - 0.5, -0.5), vmin=-6)
        ticks = np.linspace(0, lam.size - 1, 7).astype(int)  # the grid is uniform in asinh
        left.set_xticks(ticks, [f"{lam[i]:.2g}" for i in ticks], fontsize=7)
        left.set_yticks(range(len(names)), names, fontsize=6)
        left.set_xlabel("eigenvalue (asinh scale)", fontsize=8)
        left.set_title(f"{model}: block densities (log10 weight per bin)", fontsize=9)
        im = right.imshow(dist, cmap="magma", vmin=0, vmax=1)
        right.set_xticks([])
        right.set_yticks(range(len(names)), names, fontsize=6)
        mean = dist[np.triu_indices(len(names), k=1)].mean() if len(names) > 1 else 0.0
        right.set_title(f"{model}: JS distance between blocks (mean {mean:.3f})", fontsize=9)
    fig.colorbar(im, ax=axes[:, 1].tolist(), shrink=0.6)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    return fig
