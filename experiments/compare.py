"""Empirical vs Augmented Hessian of one run: the paper's table rows, Theorem 1, side-by-side plots.

    python -m experiments.compare --workdir runs/p110_c100_normal --epoch 225
    python -m experiments.compare --empirical A.json --augmented B.json --out DIR

Reads the two spectra written by ``experiments.spectrum`` (``<workdir>/spectra/{empirical,
augmented}_e<epoch>.json``) and the run's ``metrics.jsonl``, and writes ``compare_e<epoch>.{md,
json,csv,png}`` next to them:

* the row of the paper's Table 1/2 (Granziol et al. 2020, appendix A): extremal Ritz values of
  both spectra ``[lambda'_1, lambda'_n]`` (empirical) and ``[lambda_1, lambda_n]`` (augmented),
  test/train accuracy and loss at the epoch of the spectra, and the best accuracies and losses
  over training (the paper's tables report the best: "include the best training and test
  accuracies and losses", section 6), each labelled;
* Table 3: the three largest-weight Ritz values ``[weight, value]`` of each;
* negative Ritz values: count / m and the mass of those well separated from the origin cluster
  (paper, section 5.3; the rule's constant is :data:`experiments.statistics.ORIGIN_TOL`);
* section 6.3: the three Ritz values closest to the origin with their weights (the paper: >= 0.99
  in total) and the skewness of each spectral measure (:mod:`experiments.statistics`);
* Theorem 1 (:func:`jaxspec.compare.compare_spectra`, with ``q = P / N`` of the empirical set and
  the ``sigma^2`` estimated by the empirical run): the empirical edges predicted from the
  augmented ones and the augmented edges inferred from the empirical ones;
* the paper's qualitative claims checked on these numbers (narrower augmented spectrum, fewer and
  lighter negative Ritz values);
* the two stem plots side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, NamedTuple, Sequence

from experiments.statistics import ORIGIN_TOL, spectrum_statistics
from jaxspec import Spectrum
from jaxspec.atomic import write_text
from jaxspec.compare import compare_spectra
from jaxspec.io import jsonable, load_spectrum
from jaxspec.report import fmt as _f
from jaxspec.report import md_row as _md

__all__ = [
    "CompareResult",
    "best_metrics",
    "claims",
    "compare_paths",
    "compare_run",
    "main",
    "negative_stats",
    "table_row",
    "to_markdown",
]


class CompareResult(NamedTuple):
    """The comparison (a JSON-ready dict) and the files written.

    ``data`` is what ``paths["json"]`` holds (there NaN is written as null); ``paths`` maps
    ``json``, ``md``, ``csv`` (and ``png`` if plotted) to the files.

    Example:
      >>> from experiments.compare import CompareResult
      >>> r = CompareResult({"epoch": 2}, {"md": "compare_e0002.md"})
      >>> r.data["epoch"], r.paths["md"]
      (2, 'compare_e0002.md')
    """

    data: dict[str, Any]
    paths: dict[str, str]


def negative_stats(s: Spectrum, /, *, origin_tol: float = ORIGIN_TOL) -> dict[str, Any]:
    """Negative Ritz values the paper's way: count of m, separated count, separated mass.

    Example:
      >>> from jaxspec import Spectrum
      >>> negative_stats(Spectrum([-1.0, -1e-6, 1e-6, 5.0], [0.1, 0.4, 0.4, 0.1]))
      {'num_negative': 2, 'num_nodes': 4, 'num_negative_separated': 1, 'negative_mass': 0.1}
    """
    neg = s.negative(origin_tol=origin_tol)
    return {"num_negative": neg.count, "num_nodes": int(s.nodes.size),
            "num_negative_separated": neg.count_separated, "negative_mass": neg.mass}


def _pct(x: Any) -> float | None:
    return None if x is None else 100.0 * float(x)


def table_row(empirical: Spectrum, augmented: Spectrum, record: dict | None, /) -> dict[str, Any]:
    """The paper's Table 1/2 row: extremal Ritz values of both spectra, accuracies (%) and losses.

    Example:
      >>> from jaxspec import Spectrum
      >>> row = table_row(Spectrum([-2.0, 5.0], [0.5, 0.5]), Spectrum([-0.1, 1.0], [0.5, 0.5]),
      ...                 {"test_accuracy": 0.9, "train_accuracy": 1.0, "test_loss": 0.3,
      ...                  "train_loss": 0.01})
      >>> row["lambda1_emp"], row["lambdan_aug"], row["test_acc"]
      (5.0, -0.1, 90.0)
    """
    r = record or {}
    return {
        "lambda1_emp": empirical.lambda_max, "lambdan_emp": empirical.lambda_min,
        "lambda1_aug": augmented.lambda_max, "lambdan_aug": augmented.lambda_min,
        "test_acc": _pct(r.get("test_accuracy")), "train_acc": _pct(r.get("train_accuracy")),
        "test_loss": r.get("test_loss"), "train_loss": r.get("train_loss"),
    }


def best_metrics(metrics: Sequence[dict] | None, /) -> dict[str, Any]:
    """The best accuracies (%) and losses over training, and the epoch of each, as the paper's
    Tables 1-2 report them (section 6: "the best training and test accuracies and losses").

    ``None`` for a metric no record has (e.g. spectra compared without their run).

    Example:
      >>> recs = [{"epoch": 1, "test_accuracy": 0.5, "train_accuracy": 0.6, "test_loss": 1.0,
      ...          "train_loss": 0.9},
      ...         {"epoch": 2, "test_accuracy": 0.4, "train_accuracy": 0.7, "test_loss": 1.2,
      ...          "train_loss": 0.5}]
      >>> b = best_metrics(recs)
      >>> b["test_acc"], b["train_acc"], b["test_loss"], b["train_loss"], b["epochs"]["test_acc"]
      (50.0, 70.0, 1.0, 0.5, 1)
      >>> best_metrics([])["test_acc"] is None
      True
    """
    out: dict[str, Any] = {"epochs": {}}
    for name, key, pick in (("test_acc", "test_accuracy", max),
                            ("train_acc", "train_accuracy", max),
                            ("test_loss", "test_loss", min), ("train_loss", "train_loss", min)):
        recs = [r for r in (metrics or []) if r.get(key) is not None]
        best = pick(recs, key=lambda r: r[key]) if recs else None
        value = None if best is None else best[key]
        out[name] = _pct(value) if name.endswith("acc") else value
        out["epochs"][name] = None if best is None else best.get("epoch")
    return out


def claims(empirical: Spectrum, augmented: Spectrum, /) -> dict[str, bool]:
    """The paper's qualitative claims, checked on one pair of spectra.

    * ``narrower``: the augmented spectrum spans a shorter interval;
    * ``smaller_top``: ``lambda_1 < lambda'_1``;
    * ``smaller_bottom``: ``|lambda_n| < |lambda'_n|`` (the bottom edge moves toward 0);
    * ``fewer_negative``: a smaller fraction of negative Ritz values (m differs: 100 vs 80);
    * ``lighter_negative``: less separated negative mass.

    Example:
      >>> from jaxspec import Spectrum
      >>> claims(Spectrum([-2.0, 0.0, 5.0], [0.2, 0.6, 0.2]),
      ...        Spectrum([0.0, 1.0], [0.9, 0.1]))["lighter_negative"]
      True
    """
    ne, na = negative_stats(empirical), negative_stats(augmented)
    return {
        "narrower": bool(augmented.lambda_max - augmented.lambda_min
                         < empirical.lambda_max - empirical.lambda_min),
        "smaller_top": bool(augmented.lambda_max < empirical.lambda_max),
        "smaller_bottom": bool(abs(augmented.lambda_min) < abs(empirical.lambda_min)),
        "fewer_negative": bool(na["num_negative"] / na["num_nodes"]
                               < ne["num_negative"] / ne["num_nodes"]),
        "lighter_negative": bool(na["negative_mass"] < ne["negative_mass"]),
    }


def _record(metrics: list[dict], epoch: int | None) -> dict | None:
    return next((r for r in metrics if r.get("epoch") == epoch), None)


def compare_paths(empirical_path: str, augmented_path: str, /, *, out_dir: str | None = None,
                  metrics: list[dict] | None = None, sigma2: float | None = None,
                  plot: bool = True, stem: str | None = None) -> CompareResult:
    """Compares two saved spectra (see :func:`compare_run`) and writes the tables and the plot.

    Args:
      empirical_path: the Empirical Hessian's spectrum JSON.
      augmented_path: the Augmented Hessian's spectrum JSON.
      out_dir: where to write (default: the empirical spectrum's directory).
      metrics: training metrics records (``metrics.jsonl``); default: read from the run
        recorded in the spectrum's metadata, if any.
      sigma2: per-sample Hessian noise variance for Theorem 1; default: the empirical run's
        estimate (``meta["sigma2"]``), else no predictions.
      plot: write the side-by-side stem plot.
      stem: file name stem (default ``compare_e<epoch>``).

    Returns:
      :class:`CompareResult`.

    Raises:
      ValueError: if the spectra differ in ``P``, ``epoch``, ``model``, ``bn_mode``, the run
        (``workdir``) or, with BatchNorm in batch mode, ``batch_size``.

    Example:
      >>> import os, tempfile
      >>> from jaxspec import Spectrum
      >>> from jaxspec.io import save_spectrum
      >>> from experiments.compare import compare_paths
      >>> d = tempfile.mkdtemp()
      >>> meta = {"epoch": 2, "P": 400, "model": "mlp", "dataset": "toy", "bn_mode": "train"}
      >>> emp, aug = os.path.join(d, "emp.json"), os.path.join(d, "aug.json")
      >>> save_spectrum(Spectrum([-2.0, 0.0, 2.5], [0.1, 0.8, 0.1],
      ...          meta={**meta, "N": 100, "sigma2": 0.25}), emp)
      >>> save_spectrum(Spectrum([0.0, 2.0], [0.9, 0.1], meta={**meta, "N": 1600}), aug)
      >>> r = compare_paths(emp, aug, plot=False)
      >>> sorted(os.path.relpath(p, d) for p in r.paths.values())
      ['compare_e0002.csv', 'compare_e0002.json', 'compare_e0002.md']
      >>> r.data["q_empirical"], r.data["table"]["lambda1_emp"], r.data["table"]["lambdan_aug"]
      (4.0, 2.5, 0.0)
      >>> r.data["negative"]["empirical"]["num_negative"], r.data["claims"]["lighter_negative"]
      (1, True)

      Theorem 1 with ``q = 400 / 100`` and ``sigma^2 = 0.25`` maps the augmented top edge 2 to
      ``2 + q sigma^2 / 2 = 2.5``:

      >>> top = r.data["theorem1"]["rows"][0]
      >>> top["quantity"], top["reference"], top["predicted_empirical"]
      ('lambda_max', 2.0, 2.5)
    """
    emp = load_spectrum(empirical_path)
    aug = load_spectrum(augmented_path)
    me, ma = emp.meta, aug.meta
    epoch = me.get("epoch")
    if metrics is None:
        metrics = []
        workdir = me.get("workdir")
        if workdir and os.path.isdir(workdir):
            from train.metrics_io import read_metrics

            metrics = read_metrics(workdir)
    record = _record(metrics, epoch) or me.get("train_metrics")
    sigma2 = me.get("sigma2") if sigma2 is None else sigma2
    p = me.get("P") or me.get("dim")
    n_emp = me.get("N")
    q = p / n_emp if p and n_emp else float("nan")
    comparison = compare_spectra(emp, aug, q=q, sigma2=sigma2)
    # the same run's weights and the same operator: in BatchNorm batch mode the HVP batch size
    # sets the statistics, so it defines the Hessian too
    keys = ("P", "epoch", "model", "bn_mode", "workdir",
            *(("batch_size",) if me.get("bn_mode") == "batch" else ()))
    for key in keys:
        if ma.get(key) != me.get(key):
            raise ValueError(f"the spectra differ in {key}: {me.get(key)!r} vs {ma.get(key)!r}")
    data = {
        "run": me.get("config"), "workdir": me.get("workdir"), "model": me.get("model"),
        "dataset": me.get("dataset"), "epoch": epoch, "P": p, "bn_mode": me.get("bn_mode"),
        "N_empirical": n_emp, "N_augmented": ma.get("N"), "num_images": ma.get("num_images"),
        "num_per_image": ma.get("num_per_image"), "m_empirical": int(emp.nodes.size),
        "m_augmented": int(aug.nodes.size), "q_empirical": q,
        "q_augmented": p / ma["N"] if p and ma.get("N") else None,
        "sigma2": sigma2, "sigma2_stderr": me.get("sigma2_stderr"),
        "time_s": {"empirical": me.get("time_s"), "augmented": ma.get("time_s")},
        "table": table_row(emp, aug, record),
        "best": best_metrics(metrics),
        "negative": {"empirical": negative_stats(emp), "augmented": negative_stats(aug)},
        "top_weights": {"empirical": [list(t) for t in emp.top_weights(3)],
                        "augmented": [list(t) for t in aug.top_weights(3)]},
        "claims": claims(emp, aug),
        "statistics": {"empirical": spectrum_statistics(emp),
                       "augmented": spectrum_statistics(aug)},
        "theorem1": comparison.to_dict(),
        "spectra": {"empirical": os.path.abspath(empirical_path),
                    "augmented": os.path.abspath(augmented_path)},
    }
    out_dir = os.path.dirname(os.path.abspath(empirical_path)) if out_dir is None else out_dir
    os.makedirs(out_dir, exist_ok=True)
    stem = stem or (f"compare_e{int(epoch):04d}" if epoch is not None else "compare")
    paths = {ext: os.path.join(out_dir, f"{stem}.{ext}") for ext in ("json", "md", "csv")}
    if plot:
        from jaxspec.plotting import stem_plots

        paths["png"] = os.path.join(out_dir, f"{stem}.png")
        # _f: a spectrum saved without its N or P (e.g. by hand) is plotted with "-" for it
        stem_plots({f"Empirical: N={_f(n_emp)}, m={emp.nodes.size}": emp,
                    f"Augmented: N={_f(ma.get('N'))}, m={aug.nodes.size}": aug},
                   path=paths["png"],
                   suptitle=f"{data['model'] or ''} {data['dataset'] or ''} epoch {_f(epoch)} "
                            f"(P={_f(p)}, BN {data['bn_mode'] or '-'})".strip())
    data["figures"] = {k: os.path.basename(v) for k, v in paths.items() if k == "png"}
    write_text(paths["json"], json.dumps(jsonable(data), indent=1, allow_nan=False))
    write_text(paths["csv"], comparison.to_csv())
    write_text(paths["md"], to_markdown(data, comparison_md=comparison.to_markdown()))
    return CompareResult(data, paths)


def compare_run(workdir: str | os.PathLike, epoch: int, /, *, spectra_dir: str | None = None,
                out_dir: str | None = None, sigma2: float | None = None,
                plot: bool = True) -> CompareResult:
    """Compares the empirical and augmented spectra of ``workdir`` at ``epoch``.

    Args:
      workdir: the training run.
      epoch: the checkpoint epoch both spectra were computed at.
      spectra_dir: where the spectra are (default ``<workdir>/spectra``).
      out_dir: where to write (default: ``spectra_dir``).
      sigma2: override the empirical run's ``sigma^2`` estimate.
      plot: write the side-by-side plot.

    Returns:
      :class:`CompareResult`; ``data["table"]`` is the paper's table row.

    In the example, two toy spectra stand in for those of :mod:`experiments.spectrum`; the
    accuracies come from the run's ``metrics.jsonl``.

    Example:
      >>> import os, tempfile
      >>> from jaxspec import Spectrum
      >>> from jaxspec.io import save_spectrum
      >>> from experiments.compare import compare_run
      >>> from experiments.paper import trained_preset
      >>> from experiments.spectrum import spectrum_path
      >>> from train.metrics_io import read_metrics
      >>> workdir = trained_preset("smoke")  # a 1x16 MLP trained for 2 epochs
      >>> sdir = tempfile.mkdtemp()
      >>> meta = {"epoch": 2, "P": 400, "model": "mlp", "bn_mode": "train"}
      >>> save_spectrum(Spectrum([-1.0, 0.0, 3.0], [0.1, 0.8, 0.1], meta={**meta, "N": 100}),
      ...               spectrum_path(sdir, "empirical", 2))
      >>> save_spectrum(Spectrum([0.0, 1.0], [0.9, 0.1], meta={**meta, "N": 400}),
      ...               spectrum_path(sdir, "augmented", 2))
      >>> r = compare_run(workdir, 2, spectra_dir=sdir, plot=False)
      >>> r.data["table"]["lambda1_emp"], r.data["table"]["lambda1_aug"]
      (3.0, 1.0)
      >>> record = read_metrics(workdir)[-1]
      >>> record["epoch"], r.data["table"]["test_acc"] == 100 * record["test_accuracy"]
      (2, True)
      >>> os.path.dirname(r.paths["md"]) == sdir
      True
    """
    from experiments.spectrum import spectrum_path
    from train.metrics_io import read_metrics

    if spectra_dir is None:
        spectra_dir = os.path.join(os.fspath(workdir), "spectra")
    return compare_paths(spectrum_path(spectra_dir, "empirical", epoch),
                         spectrum_path(spectra_dir, "augmented", epoch),
                         out_dir=out_dir or spectra_dir, metrics=read_metrics(workdir),
                         sigma2=sigma2, plot=plot)


def to_markdown(data: dict[str, Any], /, *, comparison_md: str | None = None) -> str:
    """The comparison as Markdown: Table 1/2 row, negative Ritz values, Table 3, claims, Thm 1.

    Example:
      >>> from jaxspec import Spectrum
      >>> e, a = Spectrum([-2.0, 0.0, 5.0], [0.2, 0.6, 0.2]), Spectrum([0.0, 1.0], [0.9, 0.1])
      >>> d = {"table": table_row(e, a, None), "claims": claims(e, a),
      ...      "negative": {"empirical": negative_stats(e), "augmented": negative_stats(a)},
      ...      "top_weights": {"empirical": e.top_weights(3), "augmented": a.top_weights(3)}}
      >>> to_markdown(d).splitlines()[4]
      '| at epoch ? | 5 | -2 | 1 | 0 | - | - | - | - |'

      With the run's metrics, a second row gives the best over training (the paper's tables
      report the best), and the section-6.3 statistics get their own table:

      >>> d["best"] = best_metrics([{"epoch": 3, "test_accuracy": 0.9, "train_accuracy": 1.0,
      ...                            "test_loss": 0.3, "train_loss": 0.01}])
      >>> d["statistics"] = {"empirical": spectrum_statistics(e),
      ...                    "augmented": spectrum_statistics(a)}
      >>> lines = to_markdown(d).splitlines()
      >>> lines[5].split(" | ")[4:]
      ['-', '90.00 (epoch 3)', '100.00 (epoch 3)', '0.3 (epoch 3)', '0.01 (epoch 3) |']
      >>> [line for line in lines if line.startswith("| augmented | [0, 0.9]")]
      ['| augmented | [0, 0.9] | [1, 0.1] | - | 1 | 2.667 |']
    """
    t = data["table"]
    def known(key: str) -> Any:  # absent, or saved as None
        return "?" if data.get(key) is None else data[key]

    title = (f"# Empirical vs Augmented Hessian: {known('model')} on {known('dataset')}, "
             f"epoch {known('epoch')}")
    lines = [title, "",
             _md(["metrics", "lambda'_1 (emp)", "lambda'_n (emp)", "lambda_1 (aug)",
                  "lambda_n (aug)", "test acc", "train acc", "test loss", "train loss"]),
             _md(["---"] * 9),
             _md([f"at epoch {known('epoch')}"]
                 + [_f(t[k]) for k in ("lambda1_emp", "lambdan_emp", "lambda1_aug", "lambdan_aug")]
                 + [_f(t["test_acc"], ".2f"), _f(t["train_acc"], ".2f"), _f(t["test_loss"]),
                    _f(t["train_loss"])])]
    best = data.get("best")
    if best is not None:
        cells = [f"{_f(best[k], '.2f' if k.endswith('acc') else '.4g')} (epoch "
                 f"{best['epochs'][k]})" if best[k] is not None else "-"
                 for k in ("test_acc", "train_acc", "test_loss", "train_loss")]
        lines.append(_md(["best over training", "-", "-", "-", "-", *cells]))
    lines.append("")
    if "P" in data:
        lines += [f"P = {_f(data['P'])}; empirical N = {_f(data.get('N_empirical'))} "
                  f"(q = {_f(data.get('q_empirical'))}), m = {data.get('m_empirical')}; "
                  f"augmented N = {_f(data.get('N_augmented'))} = {_f(data.get('num_images'))} x "
                  f"{_f(data.get('num_per_image'))} (q = {_f(data.get('q_augmented'))}), "
                  f"m = {data.get('m_augmented')}; BatchNorm {known('bn_mode')}; "
                  f"sigma^2 = {_f(data.get('sigma2'))}.", ""]
    lines += ["## Negative Ritz values", "",
              _md(["spectrum", "negative / m", "separated", "separated mass"]),
              _md(["---"] * 4)]
    for name in ("empirical", "augmented"):
        n = data["negative"][name]
        lines.append(_md([name, f"{n['num_negative']}/{n['num_nodes']}",
                          n["num_negative_separated"], _f(n["negative_mass"])]))
    lines += ["", "## Largest-weight Ritz values (Table 3) [weight, value]", "",
              _md(["spectrum", "[rho_0, lambda_0]", "[rho_1, lambda_1]", "[rho_2, lambda_2]"]),
              _md(["---"] * 4)]
    for name in ("empirical", "augmented"):
        tops = [f"[{w:.3g}, {v:.3g}]" for w, v in data["top_weights"][name]]
        lines.append(_md([name, *tops, *["-"] * (3 - len(tops))]))
    if data.get("statistics"):
        lines += ["", "## Section 6.3: Ritz values closest to the origin [value, weight], skewness",
                  "", _md(["spectrum", "closest", "2nd", "3rd", "total weight (paper: >= 0.99)",
                           "skewness"]), _md(["---"] * 6)]
        for name in ("empirical", "augmented"):
            st = data["statistics"][name]
            near = st["nearest_origin"]
            cells = [f"[{v:.3g}, {w:.3g}]" for v, w in zip(near["nodes"], near["weights"])]
            lines.append(_md([name, *cells, *["-"] * (3 - len(cells)),
                              _f(near["total_weight"]), _f(st["skewness"])]))
    lines += ["", "## The paper's claims on these spectra", "",
              _md(["claim", "holds"]), _md(["---"] * 2)]
    names = {"narrower": "augmented spectrum narrower",
             "smaller_top": "lambda_1 (aug) < lambda'_1 (emp)",
             "smaller_bottom": "abs(lambda_n (aug)) < abs(lambda'_n (emp))",
             "fewer_negative": "smaller fraction of negative Ritz values",
             "lighter_negative": "lighter separated negative mass"}
    for k, v in data["claims"].items():
        lines.append(_md([names.get(k, k), _f(v)]))
    if comparison_md:
        lines += ["", "## Theorem 1 (reference = augmented)", "", comparison_md.rstrip()]
    if data.get("figures", {}).get("png"):
        lines += ["", f"![empirical vs augmented]({data['figures']['png']})"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m experiments.compare --workdir RUN --epoch E``.

    Prints the Markdown comparison and the files written (with the side-by-side plot).

    Example:
      >>> import contextlib, io, os, tempfile
      >>> from jaxspec import Spectrum
      >>> from jaxspec.io import save_spectrum
      >>> from experiments.compare import main
      >>> d = tempfile.mkdtemp()
      >>> meta = {"epoch": 2, "P": 400, "model": "mlp", "dataset": "toy", "bn_mode": "train"}
      >>> emp, aug = os.path.join(d, "emp.json"), os.path.join(d, "aug.json")
      >>> save_spectrum(Spectrum([-2.0, 0.0, 2.5], [0.1, 0.8, 0.1], meta={**meta, "N": 100}),
      ...               emp)
      >>> save_spectrum(Spectrum([0.0, 2.0], [0.9, 0.1], meta={**meta, "N": 1600}), aug)
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     code = main(["--empirical", emp, "--augmented", aug, "--out", d])
      >>> code, out.getvalue().splitlines()[0]
      (0, '# Empirical vs Augmented Hessian: mlp on toy, epoch 2')
      >>> sorted(f for f in os.listdir(d) if f.startswith("compare"))
      ['compare_e0002.csv', 'compare_e0002.json', 'compare_e0002.md', 'compare_e0002.png']
    """
    parser = argparse.ArgumentParser(
        prog="python -m experiments.compare",
        description="Empirical vs Augmented Hessian spectra of one run: tables and plots.")
    parser.add_argument("--workdir", help="training run directory")
    parser.add_argument("--epoch", type=int, help="checkpoint epoch of both spectra")
    parser.add_argument("--spectra-dir", help="where the spectra are (default WORKDIR/spectra)")
    parser.add_argument("--empirical", help="an empirical spectrum JSON (instead of --workdir)")
    parser.add_argument("--augmented", help="an augmented spectrum JSON (instead of --workdir)")
    parser.add_argument("--out", help="output directory (default: the spectra's)")
    parser.add_argument("--sigma2", type=float, default=None,
                        help="noise variance for Theorem 1 (default: the empirical estimate)")
    args = parser.parse_args(argv)
    if args.sigma2 is not None and not (math.isfinite(args.sigma2) and args.sigma2 >= 0):
        parser.error(f"--sigma2 {args.sigma2}: sigma2 must be a finite number >= 0")
    try:
        if args.empirical and args.augmented:
            result = compare_paths(args.empirical, args.augmented, out_dir=args.out,
                                   sigma2=args.sigma2)
        elif args.workdir is not None:
            from experiments.spectrum import resolve_epoch

            # a given epoch needs its spectra, not its checkpoint (which may be deleted)
            epoch = (args.epoch if args.epoch is not None
                     else resolve_epoch(parser, args.workdir, None))
            result = compare_run(args.workdir, epoch, spectra_dir=args.spectra_dir,
                                 out_dir=args.out, sigma2=args.sigma2)
        else:
            parser.error("give --workdir (and --epoch), or --empirical and --augmented")
    except FileNotFoundError as e:  # a spectrum not computed yet: no traceback
        parser.error(f"{e.strerror}: {e.filename}")
    with open(result.paths["md"]) as f:
        print(f.read())
    print("wrote", ", ".join(result.paths.values()))
    return 0


if __name__ == "__main__":
    from jaxspec.compiler import cache_compilations

    cache_compilations()  # a later run loads the compiled programs from disk
    sys.exit(main())
