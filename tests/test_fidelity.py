"""Fidelity to the paper: section 6.3's statistics on spectra with known answers, the origin rule
on the paper's own values, best-over-training metrics, every figure reachable, our choices
flagged, and section 5.2's speed comparison at tiny size."""

import os
import re

import numpy as np
import pytest

from experiments import paper, paper_runs
from experiments.compare import best_metrics
from experiments.statistics import ORIGIN_TOL, nearest_origin, origin_margins, skewness
from jaxspec import Spectrum

# Granziol et al. (2020) has 33 figures (captions "Figure 1:" to "Figure 33:").
PAPER_FIGURES = range(1, 34)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skewness_of_symmetric_spectra_is_zero(seed):
    rng = np.random.default_rng(seed)
    half = rng.uniform(0.1, 3.0, 7)
    w = rng.uniform(0.1, 1.0, 7)
    centre = rng.normal()
    nodes = np.concatenate([centre - half, [centre], centre + half])
    weights = np.concatenate([w, [0.5], w])
    assert skewness(Spectrum(nodes, weights / weights.sum())) == pytest.approx(0.0, abs=1e-9)


def test_skewness_matches_a_direct_computation_and_its_sign():
    rng = np.random.default_rng(3)
    nodes, weights = rng.normal(size=9), rng.uniform(size=9)
    weights /= weights.sum()
    mu = weights @ nodes
    direct = (weights @ (nodes - mu) ** 3) / (weights @ (nodes - mu) ** 2) ** 1.5
    assert skewness(Spectrum(nodes, weights)) == pytest.approx(direct, rel=1e-9)
    # A spike at the origin with an outlier on the right is right-skewed; mirrored, left-skewed.
    right = Spectrum([0.0, 0.1, 10.0], [0.9, 0.09, 0.01])
    left = Spectrum([-10.0, -0.1, 0.0], [0.01, 0.09, 0.9])
    assert skewness(right) > 0 and skewness(left) == pytest.approx(-skewness(right))
    # Two-point measure with weights p, 1 - p: skewness (1 - 2p) / sqrt(p (1 - p)).
    p = 0.2
    assert skewness(Spectrum([1.0, 5.0], [1 - p, p])) == pytest.approx(
        (1 - 2 * p) / np.sqrt(p * (1 - p)))


def test_nearest_origin_of_a_known_three_node_cluster():
    s = Spectrum([-3.0, -2e-4, 1e-5, 3e-4, 0.5, 7.0], [0.004, 0.3, 0.5, 0.19, 0.005, 0.001])
    r = nearest_origin(s)
    assert r["nodes"] == [1e-5, -2e-4, 3e-4]
    assert r["weights"] == [0.5, 0.3, 0.19]
    assert r["total_weight"] == pytest.approx(0.99)
    assert nearest_origin(s, 1)["total_weight"] == pytest.approx(0.5)


def test_origin_rule_reproduces_the_papers_classifications():
    rows = origin_margins(paper.PAPER, origin_tol=ORIGIN_TOL)
    assert len(rows) == 8  # every negative value of Table 3
    by = {(r["run"][1], r["run"][2], r["spectrum"], r["value"]): r for r in rows}
    # Counted by the paper as negative mass (sections 6.1-6.2): separated under our rule too.
    for key in (("cifar100", "normal", "empirical", -0.03), ("cifar10", "normal", "empirical",
                -0.01), ("cifar10", "normal", "augmented", -0.0007)):
        assert by[key]["paper_separated"] and by[key]["ours_separated"], key
    # The one value the paper counts but calls possibly "part of the spectral peak at the
    # origin" (section 6.2) is in our origin cluster: the only disagreement.
    odd = by[("cifar10", "overfit", "augmented", -0.00094)]
    assert odd["paper_separated"] and not odd["ours_separated"]
    assert [r for r in rows if r["agree"] is False] == [odd]
    # The tightest separated case clears the constant by 1.195 (|-0.0007 + 3.87e-6| / 0.5825).
    tight = by[("cifar10", "normal", "augmented", -0.0007)]
    assert tight["ratio"] == pytest.approx(abs(-0.0007 + 3.87e-6) / 0.5825 / ORIGIN_TOL)
    assert 1.1 < tight["ratio"] < 1.3
    # A larger constant loses the paper's 3/80 on CIFAR-10 Normal: the margin is real.
    assert not any(r["ours_separated"] for r in origin_margins(paper.PAPER, origin_tol=1.3e-3)
                   if r["run"][1:] == ("cifar10", "normal") and r["spectrum"] == "augmented")


def test_best_metrics_differ_from_the_last_epoch():
    recs = [{"epoch": e, "test_accuracy": a, "train_accuracy": t, "test_loss": l,
             "train_loss": tl}
            for e, a, t, l, tl in ((1, 0.5, 0.55, 1.4, 1.3), (2, 0.8, 0.9, 0.6, 0.2),
                                   (3, 0.7, 0.95, 0.9, 0.1))]
    b = best_metrics(recs)
    assert (b["test_acc"], b["train_acc"], b["test_loss"], b["train_loss"]) == (
        pytest.approx(80.0), pytest.approx(95.0), 0.6, 0.1)
    assert b["epochs"] == {"test_acc": 2, "train_acc": 3, "test_loss": 2, "train_loss": 3}


def test_every_figure_of_the_paper_is_in_the_printed_commands(capsys):
    assert paper.main(["--print-commands", "--runs-dir", "R"]) == 0
    out = capsys.readouterr().out
    assert set(paper_runs.FIGURES) == set(PAPER_FIGURES)
    for n in PAPER_FIGURES:
        line = next((x for x in out.splitlines() if x.startswith(f"# Figure {n}:")), None)
        assert line is not None, n
        path = line.split(" -> ")[1].split(" (")[0]
        f = paper_runs.FIGURES[n]
        # The file is made by a printed command on that run's workdir.
        wd = f"R/{f.config}"
        assert path.startswith(wd + "/")
        if f.kind == "curves":
            assert f"python -m train.curves --workdir {wd}" in out
        elif f.kind == "augmented_5m":
            assert re.search(rf"experiments.spectrum --workdir {wd} --epoch {f.epoch} --mode "
                             rf"augmented --num-per-image 100 --steps 10", out)
        else:
            def makes(x):
                if f"--workdir {wd} " not in x:
                    return False
                if "experiments.epochs" in x:
                    return str(f.epoch) in x.split("--epochs ")[1].split(",")
                return f"--epoch {f.epoch} --mode {f.kind}" in x

            made = [x for x in out.splitlines() if makes(x)]
            assert made, n
    # Training curves (Figures 9-12) are the four PreResNet runs'.
    assert {paper_runs.FIGURES[n].kind for n in (9, 10, 11, 12)} == {"curves"}
    assert (paper_runs.FIGURES[30].config, paper_runs.FIGURES[30].epoch) == (
        "preresnet110_cifar10_normal", 50)
    assert [(paper_runs.FIGURES[n].config, paper_runs.FIGURES[n].epoch) for n in (32, 33)] == [
        ("vgg16bn_cifar10_normal", 0), ("vgg16bn_cifar10_normal", 300)]
    assert "docs/paper.md" not in out


def test_list_marks_our_choices_and_docs_cover_them(capsys):
    assert paper.main(["--list"]) == 0
    out = capsys.readouterr().out
    for key in paper_runs.OUR_CHOICES:
        assert any(line.startswith(key + " ") and line.endswith("[ours]")
                   for line in out.splitlines()), key
    for run in paper.RUNS:
        line = next(x for x in out.splitlines() if x.startswith(run.config + " "))
        assert "wd=" in line and "[ours]" in line and "ours: " + ", ".join(run.choices) in line
    overfit = [r for r in paper.RUNS if r.model == "vgg16" and r.schedule == "overfit"]
    assert overfit and all("vgg-overfit" in r.choices for r in overfit)
    docs = os.path.join(os.path.dirname(__file__), "..", "docs", "fidelity.md")
    with open(docs) as f:
        text = f.read()
    for key in paper_runs.OUR_CHOICES:
        assert f"| `{key}` |" in text, key
    for n in PAPER_FIGURES:
        assert re.search(rf"\b{n}\b", text), n


def test_report_flags_our_choices_caveats_and_indexes_figures(tmp_path):
    entries = paper.collect_entries(str(tmp_path))
    paper.build_report(entries, str(tmp_path / "report.md"), runs_dir=str(tmp_path))
    text = (tmp_path / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| VGG-16 CIFAR-10 Overfit |")]
    assert rows and all("vgg-overfit" in r for r in rows)
    caveat = next(line for line in text.splitlines()
                  if line.startswith("| PreResNet-110 CIFAR-10 Overfit | paper | - | - | 1/80"))
    assert "0.086" in caveat and "-0.00094" in caveat and "spectral peak at the origin" in caveat
    for n in PAPER_FIGURES:
        assert re.search(rf"^\| {n} \| .* \| not run yet \|$", text, re.M), n


def test_speed_slq_counts_matvecs_at_equal_resolution():
    from experiments.speed_slq import compare_methods, extremal_estimate

    r = compare_methods(120, tol=1e-2, num_vectors=3, seeds=1, repeats=1, max_steps=60)
    s, k = r["single"], r["smoothed"]
    assert s["steps"] is not None and k["steps"] is not None
    assert (s["matvecs"], k["matvecs"]) == (s["steps"], 3 * k["steps"])
    assert r["matvec_ratio"] == pytest.approx(k["matvecs"] / s["matvecs"])
    # The smoothed estimate of an isolated node is the node; a pair closer than sigma merges.
    spec = Spectrum([-1.0, 0.0, 5.0, 5.01], [0.1, 0.7, 0.1, 0.1])
    lo, hi = extremal_estimate(spec, sigma=0.1)
    assert lo == pytest.approx(-1.0, abs=0.01) and hi == pytest.approx(5.005, abs=0.01)
