"""Side-by-side comparison of an empirical and a reference spectrum through Theorem 1.

:func:`compare_spectra` takes the Empirical Hessian's spectrum and a reference (the True Hessian,
or its augmented-data proxy) and tabulates what a reader checks against the paper: measured
extremal eigenvalues of both, Theorem 1's prediction of the empirical ones from the reference,
the inverse prediction of the reference from the empirical ones, the ``sigma^2`` each end implies,
negative Ritz counts and masses, and the largest-weight Ritz values. The result exports as
Markdown, CSV and JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from jaxspec import rmt
from jaxspec.report import csv_cell, fmt, md_row
from jaxspec.slq import Spectrum

__all__ = ["SpectrumComparison", "compare_spectra"]

SPECTRUM_COLUMNS = ("quantity", "empirical", "reference", "predicted_empirical",
                    "inferred_reference", "note")
CSV_COLUMNS = ("section", "quantity", "empirical", "reference", "predicted_empirical",
               "inferred_reference", "value", "note")


def _as_spectrum(x: Any) -> Spectrum:
    """A Spectrum from a Spectrum, anything with ``.nodes``/``.weights``, or exact eigenvalues."""
    if isinstance(x, Spectrum):
        return x
    if hasattr(x, "nodes") and hasattr(x, "weights"):
        return Spectrum(np.asarray(x.nodes), np.asarray(x.weights))
    eig = np.asarray(x, np.float64).reshape(-1)
    return Spectrum(eig, np.full(eig.shape, 1.0 / eig.size))


def _num(x) -> float | None:
    """float, with NaN / None -> None (JSON null, empty CSV cell)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


@dataclass(frozen=True)
class SpectrumComparison:
    """The result of :func:`compare_spectra`.

    Attributes:
      rows: spectrum rows, dicts with keys ``quantity, empirical, reference,
        predicted_empirical, inferred_reference, note`` (numbers or None).
      parameters: dicts with keys ``quantity, value, note``: ``q``, ``sigma2``, ``s``, the
        semicircle edge ``2 s``, the ``sigma^2`` implied by each end, ...
      top_weights: ``{"empirical": [(weight, value), ...], "reference": [...]}``.

    Example:
      >>> from jaxspec import compare_spectra
      >>> c = compare_spectra([-1.0, 0.0, 3.0], [0.0, 2.0], q=1.0, sigma2=1.0)
      >>> c.row("lambda_max")["empirical"], c.to_markdown().startswith("|")
      (3.0, True)
    """

    rows: list[dict[str, Any]]
    parameters: list[dict[str, Any]]
    top_weights: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def row(self, quantity: str, /) -> dict[str, Any]:
        """The spectrum or parameter row named ``quantity``.

        Example:
          >>> from jaxspec.compare import compare_spectra
          >>> c = compare_spectra([-1.0, 0.0, 3.0], [0.0, 2.0], q=1.0, sigma2=1.0)
          >>> c.row("lambda_max")["predicted_empirical"]
          2.5
        """
        for r in (*self.rows, *self.parameters):
            if r["quantity"] == quantity:
                return r
        raise KeyError(quantity)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"rows": ..., "parameters": ..., "top_weights": ...}``; NaN -> None.

        Example:
          >>> from jaxspec.compare import compare_spectra
          >>> sorted(compare_spectra([-1.0, 3.0], None, q=1.0, sigma2=1.0).to_dict())
          ['parameters', 'rows', 'top_weights']
        """
        return {"rows": [dict(r) for r in self.rows],
                "parameters": [dict(r) for r in self.parameters],
                "top_weights": {k: [list(t) for t in v] for k, v in self.top_weights.items()}}

    def to_json(self, *, indent: int | None = 1) -> str:
        """Strict JSON (no NaN tokens) of :meth:`to_dict`.

        Example:
          >>> import json
          >>> from jaxspec.compare import compare_spectra
          >>> d = json.loads(compare_spectra([-1.0, 3.0], [2.0], q=1.0, sigma2=1.0).to_json())
          >>> d["rows"][0]["quantity"]
          'lambda_max'
        """
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_csv(self) -> str:
        """One rectangular CSV table: spectrum rows (``section=spectrum``), then parameters
        (``section=parameter``, number in ``value``); empty cell = not applicable / NaN.

        Example:
          >>> import csv, io
          >>> from jaxspec.compare import compare_spectra
          >>> text = compare_spectra([-1.0, 3.0], [2.0], q=1.0, sigma2=1.0).to_csv()
          >>> next(csv.DictReader(io.StringIO(text)))["quantity"]
          'lambda_max'
        """
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({"section": "spectrum",
                        **{k: csv_cell(r.get(k)) for k in SPECTRUM_COLUMNS}})
        for r in self.parameters:
            w.writerow({"section": "parameter", "quantity": r["quantity"],
                        "value": csv_cell(r["value"]), "note": r.get("note") or ""})
        return out.getvalue()

    def to_markdown(self) -> str:
        """Two Markdown tables (spectra; parameters) and the largest-weight Ritz values.

        Example:
          >>> from jaxspec.compare import compare_spectra
          >>> md = compare_spectra([-1.0, 3.0], [2.0], q=1.0, sigma2=1.0).to_markdown()
          >>> print(md.splitlines()[2])
          | lambda_max | 3 | 2 | 2.5 | 2.61803 |  |
        """
        head = ("quantity", "empirical", "reference", "predicted empirical (Thm 1)",
                "inferred reference (Thm 1 inverse)", "note")
        lines = [md_row(head), md_row(["---"] * len(head))]
        for r in self.rows:
            lines.append(md_row([r["quantity"]]
                                + [fmt(r[k], ".6g") for k in SPECTRUM_COLUMNS[1:5]]
                                 + [r.get("note") or ""]))
        lines += ["", md_row(("parameter", "value", "note")), md_row(["---"] * 3)]
        for r in self.parameters:
            lines.append(md_row((r["quantity"], fmt(r["value"], ".6g"), r.get("note") or "")))
        for name, tops in self.top_weights.items():
            pairs = ", ".join(f"[{w:.4g}, {v:.4g}]" for w, v in tops)
            lines += ["", f"Largest-weight Ritz values ({name}) [weight, value]: {pairs}"]
        return "\n".join(lines) + "\n"


def compare_spectra(empirical: Any, reference: Any | None, /, *, q: float,
                    sigma2: float | None = None, reference_q: float = 0.0, top_k: int = 3,
                    origin_tol: float = 1e-3) -> SpectrumComparison:
    """Compares an empirical spectrum with a reference one through Theorem 1.

    Rows (``empirical`` / ``reference`` columns are measured on each spectrum):

    * ``lambda_max``, ``lambda_min``: extremal Ritz values; ``predicted_empirical`` is Theorem 1
      applied to the reference's (:func:`jaxspec.rmt.empirical_edge`); ``inferred_reference`` is
      the inverse applied to the empirical's (:func:`jaxspec.rmt.true_edge`), None with a note
      where the empirical edge is inside the noise bulk and so not identifiable. Both need
      ``sigma2``. A reference measured on ``M`` samples (``reference_q = P / M``) is noisy
      too: the prediction undoes its noise first, and the inferred reference is the true edge
      seen through that noise (see :func:`jaxspec.rmt.empirical_edge`).
    * ``num_nodes``, ``num_negative``, ``num_negative_separated``, ``negative_mass``,
      ``origin_weight``: as :meth:`jaxspec.Spectrum.negative` and
      :meth:`jaxspec.Spectrum.origin_cluster` (paper, section 5.3).
    * ``top{i}_weight``, ``top{i}_value``: the ``top_k`` largest-weight Ritz values.

    Parameters: ``q``, ``sigma2``, ``s = sqrt(q sigma2)`` (the BBP threshold), the semicircle
    edge ``2 s``, and the ``sigma^2`` implied by each end (:func:`jaxspec.rmt.implied_sigma2`;
    unequal values at the two ends mean the symmetric-noise model does not fit both).

    Args:
      empirical: the Empirical Hessian's spectrum: a :class:`jaxspec.Spectrum`, anything with
        ``nodes`` and ``weights``, or a 1-D array of exact eigenvalues (equal weights).
      reference: the same for the reference (true / augmented) Hessian, or None.
      q: ``P / N`` of the empirical Hessian.
      sigma2: per-sample Hessian element variance (:func:`jaxspec.rmt.noise_variance`); None
        skips the predictions.
      reference_q: ``P / M`` where the reference is a mean over ``M`` samples (a True Hessian
        on ``M`` fresh samples); 0: an exact reference.
      top_k: how many largest-weight Ritz values to list.
      origin_tol: the origin-cluster tolerance of :meth:`jaxspec.Spectrum.negative`.

    Returns:
      :class:`SpectrumComparison` (``to_markdown``, ``to_csv``, ``to_json``, ``to_dict``).

    Example:
      >>> from jaxspec.compare import compare_spectra
      >>> c = compare_spectra([-2.0, 0.0, 2.5], [0.0, 0.0, 2.0], q=4.0, sigma2=0.25)
      >>> r = c.row("lambda_max")
      >>> r["empirical"], r["reference"], r["predicted_empirical"], r["inferred_reference"]
      (2.5, 2.0, 2.5, 2.0)
      >>> c.row("lambda_min")["note"]
      'empirical edge inside the noise bulk (>= -2s): lambda_P >= -s = -1'
    """
    # The Theorem 1 maps run in float64 whatever the global setting: a report shows exact values.
    with jax.enable_x64(True):
        return _compare(empirical, reference, q=q, sigma2=sigma2, reference_q=reference_q,
                        top_k=top_k, origin_tol=origin_tol)


def _compare(empirical, reference, *, q, sigma2, reference_q, top_k,
             origin_tol) -> SpectrumComparison:
    emp = _as_spectrum(empirical)
    ref = None if reference is None else _as_spectrum(reference)
    have_pred = sigma2 is not None

    rows: list[dict[str, Any]] = []

    def add(quantity, e, r=None, pred=None, inferred=None, note=""):
        rows.append({"quantity": quantity, "empirical": e, "reference": r,
                     "predicted_empirical": pred, "inferred_reference": inferred, "note": note})

    for quantity, side, attr in (("lambda_max", "top", "lambda_max"),
                                 ("lambda_min", "bottom", "lambda_min")):
        e = getattr(emp, attr)
        r = None if ref is None else getattr(ref, attr)
        pred = inferred = None
        note = ""
        if have_pred:
            if r is not None:
                pred = _num(rmt.empirical_edge(np.float64(r), q=q, sigma2=sigma2, side=side,
                                               reference_q=reference_q))
            te = rmt.true_edge(np.float64(e), q=q, sigma2=sigma2, side=side)
            if bool(te.identifiable):
                inferred = _num(te.value if not reference_q else rmt.empirical_edge(
                    te.value, q=reference_q, sigma2=sigma2, side=side))
            else:
                inside, claim = (("<= 2s", "lambda_1 <= s") if side == "top"
                                 else (">= -2s", "lambda_P >= -s"))
                note = (f"empirical edge inside the noise bulk ({inside}): "
                        f"{claim} = {float(te.bound):.6g}")
        add(quantity, e, r, pred, inferred, note)

    spectra = {"empirical": emp, **({} if ref is None else {"reference": ref})}
    summ = {}
    for name, sp in spectra.items():
        neg = sp.negative(origin_tol=origin_tol)
        summ[name] = {
            "num_nodes": int(sp.nodes.size),
            "num_negative": int(neg.count),
            "num_negative_separated": int(neg.count_separated),
            "negative_mass": float(neg.mass),
            "origin_weight": float(sp.weights[sp.origin_cluster(origin_tol=origin_tol)].sum()),
        }
    for quantity in summ["empirical"]:
        add(quantity, summ["empirical"][quantity],
            None if ref is None else summ["reference"][quantity])

    tops = {name: [(float(w), float(v)) for w, v in sp.top_weights(top_k)]
            for name, sp in spectra.items()}
    for i in range(top_k):
        for part, j in (("weight", 0), ("value", 1)):
            ev = tops["empirical"][i][j] if i < len(tops["empirical"]) else None
            rv = (tops["reference"][i][j] if ref is not None and i < len(tops["reference"])
                  else None)
            add(f"top{i + 1}_{part}", ev, rv)

    params: list[dict[str, Any]] = [{"quantity": "q", "value": float(q), "note": "P / N"}]
    if reference_q:
        params.append({"quantity": "reference_q", "value": float(reference_q),
                       "note": "P / M: the reference's own noise"})
    if have_pred:
        s = math.sqrt(q * sigma2)
        params += [
            {"quantity": "sigma2", "value": float(sigma2),
             "note": "per-sample Hessian element variance"},
            {"quantity": "s", "value": s, "note": "sqrt(q sigma2): BBP threshold"},
            {"quantity": "bulk_edge", "value": 2.0 * s, "note": "semicircle edge 2s"},
        ]
    if ref is not None:
        for side, attr in (("top", "lambda_max"), ("bottom", "lambda_min")):
            v = _num(rmt.implied_sigma2(np.float64(getattr(ref, attr)),
                                        np.float64(getattr(emp, attr)), q=q, side=side,
                                        reference_q=reference_q))
            params.append({"quantity": f"implied_sigma2_{side}", "value": v,
                           "note": ("sigma2 making Theorem 1 map reference to empirical"
                                    if v is not None else
                                    "none: empirical edge inside the reference's")})
    return SpectrumComparison(rows, params, tops)
