"""The report of the paper's runs: ours next to Granziol et al. (2020), table by table.

:func:`build_report` writes Markdown (and JSON): Tables 1-2 (extremal eigenvalues, and the
accuracies and losses both at the spectra's epoch and best over training), the negative Ritz
values (with the paper's own caveats under our origin rule), Table 3, section 6.3's statistics,
the qualitative claims, Theorem 1, the origin rule on the paper's Ritz values, our choices and
the figure index. ``python -m experiments.paper --report`` calls it through
:func:`collect_entries`.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, Sequence

from jaxspec.io import jsonable
from jaxspec.report import fmt as _f
from jaxspec.report import md_row as _md
from experiments.paper_runs import FIGURES
from experiments.paper_runs import OUR_CHOICES
from experiments.paper_runs import RUNS
from experiments.paper_runs import PaperNumbers
from experiments.paper_runs import figure_path

__all__ = ["ReportEntry", "build_report", "collect_entries"]


class ReportEntry(NamedTuple):
    """A run in the report: its label, our comparison (or None), the paper's numbers (or None).

    ``choices``: keys of :data:`OUR_CHOICES` its numbers depend on (flagged in every table).

    Example:
      >>> from experiments.paper_runs import PAPER
      >>> from experiments.paper_report import ReportEntry
      >>> e = ReportEntry("PreResNet-110 CIFAR-10 Normal", None,
      ...                 PAPER[("preresnet110", "cifar10", "normal")])
      >>> e.ours, e.reference.lambdan_aug, e.figures, e.note, e.choices
      (None, -0.0061, (), '', ())
    """

    label: str
    ours: dict[str, Any] | None
    reference: PaperNumbers | None
    figures: tuple[str, ...] = ()
    note: str = ""
    choices: tuple[str, ...] = ()


def collect_entries(runs_dir: str, /) -> list[ReportEntry]:
    """One :class:`ReportEntry` per paper run, with our comparison where it has been computed.

    Reads ``<runs_dir>/<config>/spectra/compare_e<epoch>.json`` (written by
    :func:`experiments.compare.compare_run`) of each of :data:`RUNS`.

    Example:
      >>> import json, os, tempfile
      >>> from experiments.paper_report import collect_entries
      >>> from experiments.paper_runs import RUNS
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
                                   "" if run.reference else "the paper reports no numbers",
                                   run.choices))
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


def _flags(e: ReportEntry) -> str:
    return ", ".join(e.choices) or "-"


def _caveats(ref: PaperNumbers) -> str:
    """The paper's negative Ritz values that our origin rule puts in the origin cluster."""
    from experiments.statistics import ORIGIN_TOL, origin_margins

    return "; ".join(
        f"{r['spectrum']}: the paper counts {r['value']:g} (weight {r['weight']:g}) as negative; "
        f"it lies {1 / r['ratio']:.1f}x inside our origin cluster (origin_tol {ORIGIN_TOL:g}), "
        "and the paper says it 'could also be part of the spectral peak at the origin' "
        "(section 6.2), so ours counts it at the origin"
        for r in origin_margins({"run": ref}) if r["agree"] is False) or "-"


def _metric_cells(m: dict[str, Any]) -> list[str]:
    return [_f(m["test_acc"], ".2f"), _f(m["train_acc"], ".2f"), _f(m["test_loss"]),
            _f(m["train_loss"])]


def build_report(entries: Sequence[ReportEntry], path: str, /, *, title: str | None = None,
                 preamble: str = "", runs_dir: str | None = None) -> dict[str, Any]:
    """Writes the Markdown report (and ``<path>.json`` beside it); returns the JSON content.

    Every table has a ``paper`` row (the reported numbers) and ``ours`` rows per run; the
    last column of each names the choices of ours (:data:`OUR_CHOICES`) a row depends on. With
    ``runs_dir``, a figure index maps every figure of the paper to our file.

    Example:
      >>> import os, tempfile
      >>> from jaxspec import Spectrum
      >>> from jaxspec.io import save_spectrum
      >>> from experiments.compare import compare_paths
      >>> from experiments.paper_report import ReportEntry, build_report
      >>> from experiments.paper_runs import PAPER
      >>> d = tempfile.mkdtemp()
      >>> meta = {"epoch": 2, "P": 400, "model": "mlp", "bn_mode": "train"}
      >>> emp, aug = os.path.join(d, "emp.json"), os.path.join(d, "aug.json")
      >>> save_spectrum(Spectrum([-2.0, 0.0, 2.5], [0.1, 0.8, 0.1], meta={**meta, "N": 100}),
      ...               emp)
      >>> save_spectrum(Spectrum([0.0, 2.0], [0.9, 0.1], meta={**meta, "N": 1600}), aug)
      >>> ours = compare_paths(emp, aug, plot=False).data
      >>> ref = PAPER[("preresnet110", "cifar10", "normal")]
      >>> data = build_report([ReportEntry("toy MLP", ours, None, choices=("preset",)),
      ...                      ReportEntry("PreResNet-110 CIFAR-10 Normal", None, ref)],
      ...                     os.path.join(d, "report.md"))
      >>> [(r["label"], r["ours"] is not None, r["paper"] is not None) for r in data["entries"]]
      [('toy MLP', True, False), ('PreResNet-110 CIFAR-10 Normal', False, True)]
      >>> with open(os.path.join(d, "report.md")) as f:
      ...     lines = f.read().splitlines()
      >>> ours_rows = [r.split(" | ") for r in lines if r.startswith("| toy MLP | ours |")]
      >>> len(ours_rows), ours_rows[0][3:9]  # Tables 1/2, negatives, Table 3 x 2; N, m, edges
      (6, ['100 / 1,600', '3 / 2', '2.5', '-2', '2', '0'])
      >>> ours_rows[0][-1]  # the choices of ours the row depends on
      'preset |'
      >>> sum(r.startswith("| PreResNet-110 CIFAR-10 Normal | paper |") for r in lines)
      6
    """
    from experiments.statistics import ORIGIN_TOL, origin_margins
    from jaxspec.atomic import write_text

    out_dir = os.path.dirname(os.path.abspath(path))
    title = title or "Empirical vs Augmented Hessian spectra: ours next to Granziol et al. (2020)"
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble.rstrip(), ""]
    lines += ["Paper: PreResNet-110, final weights, empirical N = 50,000 (m = 100), augmented "
              "N = 1,500,000 (m = 80); Tables 1-3 and section 6 of Granziol et al. (2020). "
              "lambda' = Empirical Hessian, lambda = Augmented Hessian; accuracies in %. "
              "The last column of every table names the settings of ours (not stated in the "
              "paper) a row depends on: see 'Our choices' below and docs/fidelity.md.", "",
              "## Extremal eigenvalues, accuracy and loss (Tables 1 and 2)", "",
              "The paper's accuracies and losses are the best over training (section 6: "
              "\"include the best training and test accuracies and losses\"); ours are given at "
              "the epoch of the spectra (`ours`) and best over training (`ours, best`).", "",
              _md(["run", "source", "epoch", "N emp / aug", "m emp / aug", "lambda'_1",
                   "lambda'_n", "lambda_1", "lambda_n", "test acc", "train acc", "test loss",
                   "train loss", "our choices"]),
              _md(["---"] * 14)]
    records = []
    for e in entries:
        ref, ours = e.reference, e.ours
        if ref is not None:
            lines.append(_md([e.label, "paper", "final (metrics: best)", "50,000 / 1,500,000",
                              "100 / 80", *[_f(getattr(ref, k)) for k in
                                            ("lambda1_emp", "lambdan_emp", "lambda1_aug",
                                             "lambdan_aug")],
                              *_metric_cells(ref._asdict()), "-"]))
        if ours is not None:
            t = ours["table"]
            lines.append(_md([e.label, "ours", ours.get("epoch"),
                              f"{_f(ours.get('N_empirical'))} / {_f(ours.get('N_augmented'))}",
                              f"{ours.get('m_empirical')} / {ours.get('m_augmented')}",
                              *[_f(t[k]) for k in
                                ("lambda1_emp", "lambdan_emp", "lambda1_aug", "lambdan_aug")],
                              *_metric_cells(t), _flags(e)]))
            if ours.get("best"):
                lines.append(_md([e.label, "ours, best", "best over training", "-", "-", "-",
                                  "-", "-", "-", *_metric_cells(ours["best"]), _flags(e)]))
        elif ref is None:
            lines.append(_md([e.label, "ours", "not run"] + ["-"] * 10 + [_flags(e)]))
        records.append({"label": e.label, "ours": ours, "choices": list(e.choices),
                        "paper": None if ref is None else ref._asdict(), "note": e.note})

    lines += ["", "## Negative Ritz values (section 6)", "",
              f"Separated mass: negative Ritz values with |theta - theta_0| > {ORIGIN_TOL:g} "
              "max|theta| (theta_0: the Ritz value of smallest magnitude), our reading of the "
              "paper's 'well separated' (section 5.3).", "",
              _md(["run", "source", "emp negative / m", "emp separated mass",
                   "aug negative / m", "aug separated mass", "note / our choices"]),
              _md(["---"] * 7)]
    for e in entries:
        if e.reference is not None:
            lines.append(_md([e.label, "paper", *_neg(e.reference.negative_emp),
                              *_neg(e.reference.negative_aug), _caveats(e.reference)]))
        if e.ours is not None:
            lines.append(_md([e.label, "ours", *_neg(e.ours["negative"]["empirical"]),
                              *_neg(e.ours["negative"]["augmented"]), _flags(e)]))

    lines += ["", "## Largest-weight Ritz values [weight, value] (Table 3)", "",
              _md(["run", "source", "spectrum", "[rho_0, lambda_0]", "[rho_1, lambda_1]",
                   "[rho_2, lambda_2]", "our choices"]), _md(["---"] * 7)]
    for e in entries:
        for spec, key_ref in (("empirical", "top3_emp"), ("augmented", "top3_aug")):
            if e.reference is not None:
                lines.append(_md([e.label, "paper", spec,
                                  *_tops(getattr(e.reference, key_ref)), "-"]))
            if e.ours is not None:
                lines.append(_md([e.label, "ours", spec,
                                  *_tops(e.ours["top_weights"][spec]), _flags(e)]))

    lines += ["", "## Rank degeneracy and right skew (section 6.3)", "",
              "The three Ritz values closest to the origin [value, weight] and their total "
              "weight (the paper: \"the 3 closest weights (>= 0.99) to the origin\"), and the "
              "skewness of the spectral measure from its moments (the paper: \"as we move from "
              "the q >> 1 regime to q < 1, we move from having a symmetric to right skew bulk\"; "
              "PreResNet-110's q is about 23 empirical, 0.78 augmented). Ours is the skewness of "
              "the whole measure, outliers included, where the paper describes the bulk.", "",
              _md(["run", "source", "spectrum", "closest", "2nd", "3rd", "total weight",
                   "skewness", "our choices"]), _md(["---"] * 9)]
    for e in entries:
        for spec in ("empirical", "augmented"):
            if e.reference is not None:
                shape = ("symmetric bulk (q = P/N >> 1)" if spec == "empirical"
                         else "right-skewed bulk (q < 1)")
                lines.append(_md([e.label, "paper", spec, "-", "-", "-", ">= 0.99", shape, "-"]))
            st = (e.ours or {}).get("statistics", {}).get(spec)
            if st is not None:
                near = st["nearest_origin"]
                cells = [f"[{v:.3g}, {w:.3g}]" for v, w in zip(near["nodes"], near["weights"])]
                lines.append(_md([e.label, "ours", spec, *cells, *["-"] * (3 - len(cells)),
                                  _f(near["total_weight"]), _f(st["skewness"]), _flags(e)]))

    lines += ["", "## The paper's qualitative claims on our spectra", "",
              _md(["run", "augmented narrower", "lambda_1 < lambda'_1",
                   "abs(lambda_n) < abs(lambda'_n)", "fewer negative (fraction)",
                   "lighter negative mass", "our choices"]), _md(["---"] * 7)]
    for e in entries:
        if e.ours is not None:
            c = e.ours["claims"]
            lines.append(_md([e.label, *[_f(c[k]) for k in
                                         ("narrower", "smaller_top", "smaller_bottom",
                                          "fewer_negative", "lighter_negative")], _flags(e)]))

    lines += ["", "## Theorem 1 (augmented taken as the True Hessian)", "",
              _md(["run", "q = P/N", "sigma^2 (estimated)", "lambda'_1 measured",
                   "lambda'_1 predicted", "lambda'_n measured", "lambda'_n predicted",
                   "implied sigma^2 (top / bottom)", "our choices"]), _md(["---"] * 9)]
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
                          f"{_f(params.get('implied_sigma2_bottom'))}", _flags(e)]))

    if any(e.reference is not None for e in entries):
        lines += ["", "## The origin rule on the paper's own Ritz values", "",
                  f"Every negative value of Table 3, its distance from theta_0 over max|theta| "
                  f"and that over origin_tol = {ORIGIN_TOL:g} (> 1: separated under our rule).",
                  "", _md(["run", "spectrum", "value", "weight", "theta_0", "distance",
                           "distance / origin_tol", "ours: separated", "paper: separated"]),
                  _md(["---"] * 9)]
        for r in origin_margins():
            lines.append(_md(["/".join(r["run"]), r["spectrum"], f"{r['value']:g}",
                              f"{r['weight']:g}", f"{r['theta0']:g}", f"{r['distance']:.3g}",
                              f"{r['ratio']:.3g}", _f(r["ours_separated"]),
                              _f(r["paper_separated"])]))

    used = [k for k in OUR_CHOICES if any(k in e.choices for e in entries)]
    if used:
        lines += ["", "## Our choices (not stated in the paper; docs/fidelity.md)", "",
                  _md(["key", "setting", "ours", "paper"]), _md(["---"] * 4)]
        lines += [_md([k, OUR_CHOICES[k].setting, OUR_CHOICES[k].ours, OUR_CHOICES[k].paper])
                  for k in used]

    if runs_dir is not None:
        lines += ["", "## The paper's figures and ours", "",
                  _md(["figure", "paper caption", "our file", "status"]), _md(["---"] * 4)]
        for n, fig in FIGURES.items():
            f = figure_path(n, runs_dir)
            rel = os.path.relpath(os.path.abspath(f), out_dir)
            status = f"[present]({rel})" if os.path.exists(f) else "not run yet"
            lines.append(_md([n, fig.caption + (f" ({fig.note})" if fig.note else ""),
                              f"`{rel}`", status]))

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
