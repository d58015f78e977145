"""Jensen-Shannon distances between block spectra: hand-computed cases, scipy, invariances."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from jaxspec import Spectrum, heterogeneity, js_distance, js_matrix
from jaxspec.heterogeneity import block_densities


def test_js_distance_by_hand():
    # p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4),
    # KL(p|m) = 1/2 log2(2/3) + 1/2 log2(2), KL(q|m) = log2(4/3); JS = sqrt of their mean.
    by_hand = np.sqrt(0.5 * (0.5 * np.log2(2 / 3) + 0.5) + 0.5 * np.log2(4 / 3))
    assert js_distance([0.5, 0.5], [1.0, 0.0]) == pytest.approx(by_hand, rel=1e-12)
    assert js_distance([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.5579, abs=1e-4)
    assert js_distance([2.0, 0.0], [0.0, 5.0]) == 1.0  # disjoint; inputs normalised
    assert js_distance([1.0, 2.0], [1.0, 2.0]) == 0.0
    rng = np.random.default_rng(0)
    p, q = rng.random(50), rng.random(50) * (rng.random(50) > 0.3)
    assert js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), rel=1e-10)
    assert js_distance(p, q) == js_distance(q, p)
    for bad in ([1.0, -1.0], [0.0, 0.0], [np.nan, 1.0]):
        with pytest.raises(ValueError, match="non-negative"):
            js_distance(bad, [1.0, 1.0])
    with pytest.raises(ValueError, match="same length"):
        js_distance([1.0], [1.0, 1.0])


def test_block_measure():
    a = Spectrum([0.0, 1.0, 5.0], [0.5, 0.3, 0.2])
    b = Spectrum([-0.1, 0.01, 0.02], [0.2, 0.5, 0.3])
    far = Spectrum([1e3], [1.0])
    names, d = js_matrix({"a": a, "a2": a, "b": b})
    assert names == ["a", "a2", "b"]
    assert d[0, 1] == 0.0 and d[0, 2] == d[2, 0] > 0.5 and np.all(np.diag(d) == 0)
    assert heterogeneity({"a": a, "a2": a, "b": b}) == pytest.approx((0 + 2 * d[0, 2]) / 3)
    # Scaling every block by c > 0 (the whole Hessian) changes no distance.
    scaled = {k: Spectrum(s.nodes * 37.0, s.weights) for k, s in {"a": a, "b": b}.items()}
    assert heterogeneity(scaled) == pytest.approx(heterogeneity({"a": a, "b": b}), abs=1e-12)
    # Point masses decades apart on the log scale do not overlap.
    assert heterogeneity({"a": Spectrum([1.0], [1.0]), "far": far}) == pytest.approx(1.0, abs=1e-3)
    lam, dens = block_densities({"a": a, "far": far})
    assert lam[np.argmax(dens["far"])] == pytest.approx(1e3, rel=0.05)
    with pytest.raises(ValueError, match="at least two"):
        heterogeneity({"a": a})
