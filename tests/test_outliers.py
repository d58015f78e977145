"""Tests of jaxspec.outliers against analytic limits and dense simulations of small matrices.

Each check also shows that the wrong theory (Theorem 1, or the formula with a wrong sign or
factor) misses the simulation by more than the tolerance, so none of them passes vacuously.
"""

import numpy as np
import pytest

from jaxspec import rmt
from jaxspec.outliers import (outlier_equation, perturbative_edge, population_outlier,
                              spiked_covariance_edge, stieltjes)


def semicircle_quadrature(s2, n=4000):
    """Gauss quadrature of the semicircle of variance ``s2`` (Chebyshev-U nodes)."""
    a = np.arange(1, n + 1) * np.pi / (n + 1)
    return 2 * np.sqrt(s2) * np.cos(a), np.sin(a) ** 2


@pytest.mark.parametrize("s2", [0.25, 1.0, 4.0])
def test_outlier_equation_reduces_to_lemma_3_for_a_semicircle(s2):
    t, w = semicircle_quadrature(s2)
    s = np.sqrt(s2)
    thetas = s * np.array([1.2, 2.0, 5.0])
    for side, sign in (("top", 1.0), ("bottom", -1.0)):
        got = outlier_equation(sign * thetas, t, w, side=side)
        want = np.asarray(rmt.spiked_edge(sign * thetas, s2=s2, side=side), np.float64)
        np.testing.assert_allclose(got, want, rtol=2e-3)
        wrong = sign * thetas + 2 * s2 / (sign * thetas)  # a factor 2 on the variance
        assert np.all(np.abs(wrong - got) > 0.02 * np.abs(got))
    # below the transition the eigenvalue sticks to the edge 2 s (up to the atoms' spacing)
    assert outlier_equation(0.5 * s, t, w) == pytest.approx(2 * s, rel=2e-3)
    # G(z) against the closed form (z - sqrt(z^2 - 4 s^2)) / (2 s^2)
    z = 3 * s
    assert stieltjes(z, t, w) == pytest.approx((z - np.sqrt(z * z - 4 * s2)) / (2 * s2), rel=1e-6)


def test_outlier_equation_with_a_measured_skewed_noise_spectrum():
    """A spike plus a rotation-invariant noise whose law is *not* a semicircle (a centred
    Wishart: skewed, long right tail): the equation with the noise's own eigenvalues matches
    the dense eigenvalue; Lemma 3 with the same variance does not."""
    rng = np.random.default_rng(0)
    p, n = 300, 150
    g = rng.standard_normal((n, p))
    noise = g.T @ g / (4 * n) - np.eye(p) / 4          # MP law (gamma = 2), shifted to mean 0
    o, _ = np.linalg.qr(rng.standard_normal((p, p)))
    noise = o @ noise @ o.T
    mu = np.linalg.eigvalsh(noise)
    for theta, side in ((1.2, "top"), (-0.6, "bottom")):   # near the edges (1.16, -0.25)
        u = rng.standard_normal((4, p))                        # the mean over 4 spike directions
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        ev = [np.linalg.eigvalsh(noise + theta * np.outer(v, v)) for v in u]
        measured = np.mean([e[-1] if side == "top" else e[0] for e in ev])
        pred = float(outlier_equation(theta, mu, np.ones(p), side=side))
        assert pred == pytest.approx(measured, rel=0.02), (side, pred, measured)
        lemma3 = float(rmt.spiked_edge(theta, s2=float(np.mean(mu ** 2)), side=side))
        assert abs(lemma3 - measured) > 0.04 * abs(measured), (side, lemma3, measured)


def test_perturbative_edge_matches_a_sum_of_low_rank_indefinite_terms():
    """``H + (1/N) sum_i X_i`` with ``X_i = a a^T - b b^T - E[...]`` (rank 2, indefinite,
    anisotropic: strongly coupled to the top eigenvector): the mean top eigenvalue over dense
    simulations against perturbation theory with the coupling measured on fresh draws."""
    rng = np.random.default_rng(1)
    p, n, reps = 120, 40, 60
    levels = np.concatenate([[3.0, 2.0, 1.0], rng.uniform(-0.3, 0.3, p - 3)])
    scale = np.sqrt(np.concatenate([[1.0, 0.8, 0.5], np.full(p - 3, 0.1)]))
    # E[a a^T - b b^T] = 0 for a, b i.i.d.: the terms are zero-mean as they stand

    def noise(count):
        a, b = (rng.standard_normal((2, count, p)) * scale)
        return a, b

    tops = []
    for _ in range(reps):
        a, b = noise(n)
        tops.append(np.linalg.eigvalsh(np.diag(levels) + (a.T @ a - b.T @ b) / n)[-1])
    measured, stderr = np.mean(tops), np.std(tops) / np.sqrt(reps)
    a, b = noise(20000)                                  # fresh draws for the coupling
    xu = a * a[:, :1] - b * b[:, :1]                     # X_i e_1
    c = ((xu - xu.mean(0)) ** 2).mean(0)[1:]
    for sc in (False, True):
        pred = float(perturbative_edge(3.0, c, levels[1:], num_samples=n, self_consistent=sc))
        assert abs(pred - measured) < 3 * stderr + 0.01 * measured, (sc, pred, measured)
    for wrong in (float(perturbative_edge(3.0, 2 * c, levels[1:], num_samples=n)),
                  2 * 3.0 - pred):                     # a factor 2, the shift's sign flipped
        assert abs(wrong - measured) > 3 * stderr + 0.01 * measured, wrong
    sigma2 = float(np.mean(c) / np.mean(scale[1:] ** 2) * np.mean(scale ** 2) / p)
    thm1 = float(rmt.empirical_edge(3.0, q=p / n, sigma2=sigma2))
    assert measured - thm1 > 5 * (abs(pred - measured) + stderr)


def test_perturbative_edge_bottom_is_the_mirror_and_rejects_levels_beyond_the_edge():
    top = perturbative_edge(1.0, [0.5, 0.2], [0.2, -0.1], num_samples=4)
    bottom = perturbative_edge(-1.0, [0.5, 0.2], [-0.2, 0.1], num_samples=4, side="bottom")
    assert float(bottom) == pytest.approx(-float(top), rel=1e-12)
    z = float(top)   # the root of z = l + (1/N) sum c / (z - theta)
    assert z == pytest.approx(1.0 + (0.5 / (z - 0.2) + 0.2 / (z + 0.1)) / 4, rel=1e-12)
    with pytest.raises(ValueError, match="above the top"):
        perturbative_edge(1.0, [0.5], [2.0], num_samples=4)


@pytest.mark.parametrize("rank", [1, 3])
def test_wishart_outlier_matches_simulated_sample_covariances(rank):
    """Sample second-moment matrix ``(1/N) sum_i sum_{c <= rank} a_ic a_ic^T`` of Gaussian
    ``a ~ N(0, S)``, ``S`` a spike at 6 over a two-level bulk (4 and 0.5): its top eigenvalue
    against Baik-Silverstein in the units of ``E[sum_c a a^T] = rank S`` with
    ``gamma = P / (N rank)``; the isotropic BBP formula (mean bulk level as sigma^2), a factor
    2 on gamma, or the spike's shift with the wrong sign miss it."""
    rng = np.random.default_rng(2 + rank)
    p, n_vectors, reps = 200, 400, 4
    n = n_vectors // rank
    bulk = np.where(np.arange(p - 1) < (p - 1) // 4, 4.0, 0.5)
    pop = np.concatenate([[6.0], bulk])
    tops = [np.linalg.eigvalsh((lambda g: g.T @ g / n)(
        rng.standard_normal((n * rank, p)) * np.sqrt(pop)))[-1] for _ in range(reps)]
    measured = np.mean(tops)
    gamma = p / (n * rank)
    pred = float(population_outlier(6.0 * rank, rank * bulk, np.ones(p - 1), gamma=gamma))
    assert pred == pytest.approx(measured, rel=0.03)
    iso = float(spiked_covariance_edge(6.0 * rank, gamma=gamma, sigma2=rank * bulk.mean()))
    double = float(population_outlier(6.0 * rank, rank * bulk, np.ones(p - 1), gamma=2 * gamma))
    for wrong in (iso, double, 2 * 6.0 * rank - pred):
        assert abs(wrong - measured) > 0.03 * measured, wrong


def test_baik_silverstein_reduces_to_bbp_and_gives_the_mp_edge_below_the_transition():
    ls = np.array([0.5, 1.5, 2.0, 3.0, 8.0])
    for gamma in (0.25, 1.0, 3.0):
        np.testing.assert_allclose(population_outlier(ls, [2.0], [1.0], gamma=gamma),
                                   spiked_covariance_edge(ls, gamma=gamma, sigma2=2.0),
                                   rtol=1e-9)
    assert float(spiked_covariance_edge(0.5, gamma=4.0)) == pytest.approx(9.0)  # (1 + 2)^2
    with pytest.raises(ValueError, match="negative"):
        population_outlier(1.0, [-1.0, 1.0], [1.0, 1.0], gamma=1.0)


def test_atoms_of_weight_zero_are_not_in_the_support():
    """A histogram's empty top bins are no part of the law: the semicircle's quadrature with
    atoms of weight 0 beyond its edge gives the same outliers as without them."""
    t, w = semicircle_quadrature(1.0)
    padded_t, padded_w = np.append(t, [2.5, 2.95]), np.append(w, [0.0, 0.0])
    for theta in (0.5, 1.5, 2.0):   # below (the edge 2) and above the transition
        assert float(outlier_equation(theta, padded_t, padded_w)) == \
            pytest.approx(float(outlier_equation(theta, t, w)), rel=1e-12)
    assert float(outlier_equation(1.5, padded_t, padded_w)) == pytest.approx(1.5 + 1 / 1.5,
                                                                            rel=2e-3)
    # Baik-Silverstein: an empty atom at 3 above the population's 1 (BBP: 2.5 + 1 * 1 / 1.5)
    assert float(population_outlier(2.5, [1.0, 3.0], [1.0, 0.0], gamma=1.0)) == \
        pytest.approx(float(spiked_covariance_edge(2.5, gamma=1.0, sigma2=1.0)))
