"""Reports of the True-Hessian study: JSON files, the sweep table, comparison tables, figures.

Everything here reads the numbers :mod:`experiments.true_hessian.measure` produced (the result
dict of each point) and writes files; nothing is measured here.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Sequence

import numpy as np

from jaxspec import Spectrum
from jaxspec.compare import SpectrumComparison
from jaxspec.io import dumps

__all__ = ["SUMMARY_COLUMNS", "format_value", "plot_extremal", "plot_point", "summary_rows",
           "write_comparison", "write_json", "write_summary"]

SUMMARY_COLUMNS = (
    "q", "N", "train_acc", "test_acc", "sigma2", "s", "sigma2_top", "sigma2_bottom",
    "true_lambda_max", "emp_lambda_max", "heldout_lambda_max", "pred_lambda_max",
    "pred_dir_lambda_max",
    "true_lambda_min", "emp_lambda_min", "heldout_lambda_min", "pred_lambda_min",
    "pred_dir_lambda_min",
    "direct_ratio_train", "direct_ratio_heldout", "more_extreme", "heldout_more_extreme",
)

_HEADERS = (
    "q", "N", "train acc", "test acc", "sigma^2", "s=sqrt(q)sigma", "sigma^2 top dir",
    "sigma^2 bottom dir",
    "lambda_max true", "lambda'_max emp", "lambda'_max held-out", "lambda'_max Thm1",
    "lambda'_max Thm1 dir",
    "lambda_min true", "lambda'_min emp", "lambda'_min held-out", "lambda'_min Thm1",
    "lambda'_min Thm1 dir",
    "eps ratio train", "eps ratio held-out", "emp more extreme", "held-out more extreme",
)


def write_json(path: str | os.PathLike, obj: Any, /) -> None:
    """Strict JSON of ``obj`` (:func:`jaxspec.io.dumps`: NaN -> null), written atomically (a
    temporary file renamed over ``path``), so a killed run never leaves half a file.

    Example:
      >>> import json, os, tempfile
      >>> from experiments.true_hessian.report import write_json
      >>> p = os.path.join(tempfile.mkdtemp(), "r.json")
      >>> write_json(p, {"x": float("nan"), "n": (1, 2)})
      >>> json.load(open(p))
      {'x': None, 'n': [1, 2]}
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(dumps(obj))
    os.replace(tmp, path)


def write_comparison(comparison: SpectrumComparison, base: str, /) -> None:
    """``base.md``, ``base.csv`` and ``base.json`` of a :func:`jaxspec.compare_spectra` result.

    Example:
      >>> import os, tempfile
      >>> from jaxspec import Spectrum, compare_spectra
      >>> from experiments.true_hessian.report import write_comparison
      >>> s = Spectrum([-0.1, 0.0, 1.0], [0.1, 0.8, 0.1])
      >>> base = os.path.join(tempfile.mkdtemp(), "comparison_train")
      >>> write_comparison(compare_spectra(s, s, q=1.0, sigma2=0.01), base)
      >>> open(base + ".md").read().startswith("| quantity")
      True
    """
    for ext, text in (("md", comparison.to_markdown()), ("csv", comparison.to_csv()),
                      ("json", comparison.to_json())):
        with open(f"{base}.{ext}", "w") as f:
            f.write(text)


def _pyplot():
    import matplotlib

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_point(spectra: dict[str, Spectrum], path: str, /, *, title: str) -> None:
    """Stem plots of one point's empirical, held-out and true spectra side by side.

    Example:
      >>> import os, tempfile
      >>> from jaxspec import Spectrum
      >>> from experiments.true_hessian.report import plot_point
      >>> s = Spectrum([-0.1, 0.0, 1.0], [0.1, 0.8, 0.1], meta={"num_samples": 10})
      >>> p = os.path.join(tempfile.mkdtemp(), "spectra.png")
      >>> plot_point({"empirical": s, "heldout": s, "true": s}, p, title="q = 1")
      >>> os.path.getsize(p) > 0
      True
    """
    from jaxspec.plotting import stem_plots

    items = [(f"Empirical (train, N = {spectra['empirical'].meta.get('num_samples', '?')})",
              spectra["empirical"]),
             ("Held-out empirical (N fresh)", spectra["heldout"]),
             (f"True (M = {spectra['true'].meta.get('num_samples', '?')} fresh)",
              spectra["true"])]
    stem_plots(items, path=path, suptitle=title)


def plot_extremal(results: Sequence[dict[str, Any]], path: str, /, *, dpi: int = 110) -> None:
    """Measured vs Theorem-1-predicted extremal eigenvalues against q (log x), top and bottom.

    Example:
      >>> import os, tempfile
      >>> from experiments.true_hessian.report import plot_extremal
      >>> r = dict(q=1.0, true_lambda_max=1.0, emp_lambda_max=2.0, pred_lambda_max=1.5,
      ...          heldout_lambda_max=1.8, true_lambda_min=-0.1, emp_lambda_min=-0.5,
      ...          pred_lambda_min=-0.6, heldout_lambda_min=-0.4, s=0.5)
      >>> p = os.path.join(tempfile.mkdtemp(), "e.png")
      >>> plot_extremal([r, {**r, "q": 10.0}], p)
      >>> os.path.getsize(p) > 0
      True
    """
    plt = _pyplot()
    rs = sorted(results, key=lambda r: r["q"])
    q = np.array([r["q"] for r in rs])

    def get(k):
        return np.array([np.nan if r.get(k) is None else r[k] for r in rs], float)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    for ax, side, sign in ((axes[0], "max", 1.0), (axes[1], "min", -1.0)):
        # the bottom panel shows -lambda_P on the same log scale (values >= 0 are left out)
        def y(k):
            return np.where(sign * get(k) > 0, sign * get(k), np.nan)

        ax.plot(q, y(f"true_lambda_{side}"), "k-o", ms=4, label="True (M fresh)")
        ax.plot(q, y(f"emp_lambda_{side}"), "C3-s", ms=5, label="Empirical (train), measured")
        ax.plot(q, y(f"heldout_lambda_{side}"), "C1:^", ms=5,
                label="Empirical (held-out), measured")
        ax.plot(q, y(f"pred_lambda_{side}"), "C0--D", ms=4,
                label=r"Theorem 1 (True, mean $\sigma^2$)")
        ax.plot(q, y(f"pred_dir_lambda_{side}"), "C2--v", ms=4,
                label=r"Theorem 1 (True, $\sigma^2$ along its eigenvector)")
        ax.plot(q, 2 * get("s"), color="0.6", ls="-.", lw=1,
                label=r"GOE bulk edge $2\sqrt{q}\sigma$")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(q, [f"{v:.3g}" for v in q])
        ax.minorticks_off()
        ax.set_xlabel("q = P / N")
        ax.set_title(r"top eigenvalue $\lambda_1$" if side == "max"
                     else r"bottom eigenvalue, $-\lambda_P$", fontsize=10)
        ax.grid(True, which="major", alpha=0.25)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def summary_rows(results: Sequence[dict[str, Any]], /) -> list[dict[str, Any]]:
    """One row per point: the sweep table (``SUMMARY_COLUMNS``), sorted by q.

    ``direct_ratio_*`` is ``|(H_N - H_M) v|^2 / |v|^2`` over its sampling-model value
    ``(q + P/M) sigma^2`` (1 if the noise has the CLT scale). ``more_extreme`` is the paper's
    qualitative claim for the training-set Hessian, ``lambda'_max > lambda_max`` and
    ``lambda'_min < lambda_min``; ``heldout_more_extreme`` the same for the held-out one.
    ``pred_dir_*`` is Theorem 1 with the noise variance measured along the true extremal
    eigenvector (``sigma2_top``, ``sigma2_bottom``) instead of the mean element variance.

    Example:
      >>> from experiments.true_hessian.report import summary_rows
      >>> r = dict(q=2.0, N=5, train_acc=1.0, test_acc=0.7, sigma2=0.1, s=0.45,
      ...          true_lambda_max=1.0, emp_lambda_max=2.0, pred_lambda_max=1.2,
      ...          heldout_lambda_max=1.9, true_lambda_min=-0.1, emp_lambda_min=-0.5,
      ...          pred_lambda_min=-0.9, heldout_lambda_min=-0.04, direct_s2_train=0.3,
      ...          direct_s2_heldout=0.2, direct_s2_model=0.2)
      >>> row = summary_rows([r])[0]
      >>> row["more_extreme"], row["heldout_more_extreme"], row["direct_ratio_heldout"]
      (True, False, 1.0)
    """
    rows = []
    for r in sorted(results, key=lambda r: r["q"]):
        row = {k: r.get(k) for k in SUMMARY_COLUMNS}
        row["direct_ratio_train"] = r["direct_s2_train"] / r["direct_s2_model"]
        row["direct_ratio_heldout"] = r["direct_s2_heldout"] / r["direct_s2_model"]
        for col, pre in (("more_extreme", "emp"), ("heldout_more_extreme", "heldout")):
            row[col] = bool(r[f"{pre}_lambda_max"] > r["true_lambda_max"]
                            and r[f"{pre}_lambda_min"] < r["true_lambda_min"])
        rows.append(row)
    return rows


def format_value(x: Any, /) -> str:
    """A table cell: 4 significant digits, ``yes``/``no`` for booleans, empty for None.

    Example:
      >>> from experiments.true_hessian.report import format_value
      >>> format_value(0.000123456), format_value(True), format_value(None), format_value(7)
      ('0.0001235', 'yes', '', '7')
    """
    if x is None:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.4g}"


def _markdown(results: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    lines += ["| " + " | ".join(format_value(row[k]) for k in SUMMARY_COLUMNS) + " |"
              for row in rows]
    ordered = sorted(results, key=lambda r: r["q"])
    noise = [f"| {r['q']:.3g} | {name} - true | {d['lambda_min']:.4g} | {d['lambda_max']:.4g} "
             f"| +-{d['semicircle_edge']:.4g} | {d['bottom_over_edge']:.3g} | "
             f"{d['top_over_edge']:.3g} | {d['skewness']:.3g} |"
             for r in ordered for name, d in (r.get("noise_spectrum") or {}).items()]
    if noise:
        lines += ["", "Noise matrix spectra (SLQ of H_N - H_M; a GOE would give ratios 1 and "
                  "skewness 0):", "",
                  "| q | matrix | lambda_min | lambda_max | semicircle edges | "
                  "-lambda_min / 2s | lambda_max / 2s | skewness |", "|---" * 8 + "|", *noise]
    per_sample = [(r["q"], r["per_sample"]) for r in ordered if r.get("per_sample")]
    if per_sample:
        lines += ["", "Per-sample noise u_i = H_i v (one probe): Gaussian elements would give "
                  "excess kurtosis 0 and a top-1% share of about 0.01.", "",
                  "| q | samples | sigma^2 (per-sample) | excess kurtosis (median over "
                  "coordinates) | variance share of top 1% samples |", "|---|---|---|---|---|"]
        lines += [f"| {q:.3g} | {d['count']} | {d['sigma2_per_sample']:.4g} | "
                  f"{d['excess_kurtosis_median']:.3g} | {d['top1pct_variance_share']:.3g} |"
                  for q, d in per_sample]
    return "\n".join(lines) + "\n"


def write_summary(results: Sequence[dict[str, Any]], workdir: str, config: dict[str, Any],
                  /) -> list[dict[str, Any]]:
    """``summary.json`` (config, rows, every point's result), ``summary.csv`` (the rows) and
    ``summary.md`` (the table, the noise spectra, the per-sample statistics); returns the rows.

    Example:
      >>> import os, tempfile
      >>> from experiments.true_hessian.report import write_summary
      >>> r = dict(q=2.0, N=5, true_lambda_max=1.0, emp_lambda_max=2.0, heldout_lambda_max=1.9,
      ...          true_lambda_min=-0.1, emp_lambda_min=-0.5, heldout_lambda_min=-0.04,
      ...          direct_s2_train=0.3, direct_s2_heldout=0.2, direct_s2_model=0.2)
      >>> d = tempfile.mkdtemp()
      >>> rows = write_summary([r], d, {"seed": 0})
      >>> sorted(os.listdir(d)), open(os.path.join(d, "summary.md")).read()[:9]
      (['summary.csv', 'summary.json', 'summary.md'], '| q | N |')
    """
    rows = summary_rows(results)
    write_json(os.path.join(workdir, "summary.json"),
               {"config": config, "rows": rows, "points": list(results)})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in SUMMARY_COLUMNS})
    with open(os.path.join(workdir, "summary.csv"), "w") as f:
        f.write(out.getvalue())
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(_markdown(results, rows))
    return rows
