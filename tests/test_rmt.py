"""Tests of jaxspec.rmt (semicircle, Lemma 3, Theorem 1, Marchenko-Pastur, the sigma^2 estimator)
and jaxspec.compare. Dense reference spectra use numpy.linalg.eigvalsh (LAPACK), which on CPU is
several times faster than jnp.linalg.eigvalsh for P ~ 1000."""

import csv
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxspec import rmt
from jaxspec.compare import compare_spectra
from jaxspec.slq import Spectrum

P_DENSE = 1000
SPIKES = (3.0, 2.0, 0.5, -0.7, -2.5)   # s = 1: two outliers on top, one at the bottom


def eigvalsh(m) -> np.ndarray:
    return np.linalg.eigvalsh(np.asarray(m, np.float64))


@pytest.fixture(scope="module")
def spiked_matrices():
    """A + B / sqrt(P) with A = SPIKES (s^2 = 1), for three seeds."""
    keys = jax.random.split(jax.random.key(1), 3)
    return [np.asarray(rmt.sample_spiked_goe(k, jnp.array(SPIKES), P_DENSE, s2=1.0))
            for k in keys]


@pytest.fixture(scope="module")
def spiked_spectra(spiked_matrices):
    return [eigvalsh(m) for m in spiked_matrices]


@pytest.fixture(scope="module")
def goe_matrix():
    """A GOE of element variance 2 (P = P_DENSE)."""
    return np.asarray(rmt.sample_goe(jax.random.key(3), P_DENSE, s2=2.0))


# ---- semicircle ------------------------------------------------------------------------------

def test_semicircle_density_normalised_and_matches_cdf():
    s2 = 2.5
    lo, hi = (float(e) for e in rmt.semicircle_edges(s2=s2))
    assert hi == pytest.approx(2 * math.sqrt(s2)) and lo == -hi
    x = np.linspace(lo, hi, 20001)
    rho = np.asarray(rmt.semicircle_density(x, s2=s2))
    assert np.trapezoid(rho, x) == pytest.approx(1.0, abs=1e-5)
    cdf = np.asarray(rmt.semicircle_cdf(x, s2=s2))
    np.testing.assert_allclose(np.gradient(cdf, x)[10:-10], rho[10:-10], atol=1e-2)
    assert float(rmt.semicircle_density(hi * 1.01, s2=s2)) == 0.0


def test_goe_sampler_convention(goe_matrix, spiked_matrices):
    w, p, s2 = goe_matrix, P_DENSE, 2.0
    np.testing.assert_array_equal(w, w.T)                              # exactly symmetric
    np.testing.assert_array_equal(spiked_matrices[0], spiked_matrices[0].T)
    off = w[np.triu_indices(p, 1)]
    assert off.var() * p == pytest.approx(s2, rel=0.03)
    assert np.diag(w).var() * p == pytest.approx(2 * s2, rel=0.2)


def test_semicircle_against_goe_histogram(goe_matrix):
    s2 = 2.0
    eig = eigvalsh(goe_matrix)
    lo, hi = (float(e) for e in rmt.semicircle_edges(s2=s2))
    edges = np.linspace(lo, hi, 21)
    counts, _ = np.histogram(eig, edges)
    expected = np.diff(np.asarray(rmt.semicircle_cdf(edges, s2=s2)))
    np.testing.assert_allclose(counts / eig.size, expected, atol=0.006)
    # density at bin centres vs the histogram's density
    dens = counts / (eig.size * np.diff(edges))
    centres = 0.5 * (edges[1:] + edges[:-1])
    np.testing.assert_allclose(dens[2:-2], rmt.semicircle_density(centres, s2=s2)[2:-2],
                               rtol=0.08)
    ecdf = np.arange(1, eig.size + 1) / eig.size
    assert np.max(np.abs(ecdf - np.asarray(rmt.semicircle_cdf(eig, s2=s2)))) < 0.01
    assert eig[-1] == pytest.approx(hi, rel=0.03) and eig[0] == pytest.approx(lo, rel=0.03)


# ---- Lemma 3 ---------------------------------------------------------------------------------

def test_lemma3_outliers_and_edges_against_eigh(spiked_spectra):
    pred = np.asarray(rmt.spiked_eigenvalues(jnp.array(SPIKES), s2=1.0))
    np.testing.assert_allclose(pred, [3 + 1 / 3, 2.5, 2.0, -2.0, -2.5 - 1 / 2.5])
    for eig in spiked_spectra:
        # supercritical spikes: outliers at l + s^2 / l
        assert eig[-1] == pytest.approx(3 + 1 / 3, rel=0.03)
        assert eig[-2] == pytest.approx(2.5, rel=0.03)
        assert eig[0] == pytest.approx(-2.9, rel=0.03)
        # subcritical spikes (0.5, -0.7) are absorbed: the next eigenvalues sit at the bulk edges
        assert eig[-3] == pytest.approx(2.0, rel=0.03)
        assert eig[1] == pytest.approx(-2.0, rel=0.03)
        # the extremal-eigenvalue form of Lemma 3
        assert eig[-1] == pytest.approx(float(rmt.spiked_edge(max(SPIKES), s2=1.0)), rel=0.03)
        assert eig[0] == pytest.approx(
            float(rmt.spiked_edge(min(SPIKES), s2=1.0, side="bottom")), rel=0.03)


# ---- Theorem 1 -------------------------------------------------------------------------------

scales = st.floats(1e-3, 1e3)
beyond = st.floats(1.0 + 1e-6, 1e6)   # |l| / s


@given(q=st.floats(1e-2, 1e2), sigma2=scales, t=beyond, top=st.booleans())
def test_theorem1_inverse_of_forward_is_identity(q, sigma2, t, top):
    side = "top" if top else "bottom"
    s = math.sqrt(q * sigma2)
    l = t * s if top else -t * s
    lp = rmt.empirical_edge(l, q=q, sigma2=sigma2, side=side)
    assert abs(float(lp)) > 2 * s
    back = rmt.true_edge(lp, q=q, sigma2=sigma2, side=side)
    assert bool(back.identifiable)
    assert float(back.value) == pytest.approx(l, rel=1e-8)
    assert float(back.bound) == pytest.approx(s if top else -s)


@given(q=st.floats(1e-2, 1e2), sigma2=scales, t=st.floats(2.0 + 1e-9, 1e6), top=st.booleans())
def test_theorem1_forward_of_inverse_is_identity(q, sigma2, t, top):
    side = "top" if top else "bottom"
    s = math.sqrt(q * sigma2)
    lp = t * s if top else -t * s
    back = rmt.true_edge(lp, q=q, sigma2=sigma2, side=side)
    assert abs(float(back.value)) > s
    assert float(rmt.empirical_edge(back.value, q=q, sigma2=sigma2, side=side)) == \
        pytest.approx(lp, rel=1e-10)


@given(q=st.floats(1e-2, 1e2), sigma2=scales, t=st.floats(-3.0, 1.0), top=st.booleans())
def test_theorem1_below_transition_is_flagged(q, sigma2, t, top):
    side = "top" if top else "bottom"
    s = math.sqrt(q * sigma2)
    l = t * s if top else -t * s                     # |l| <= s on its side (or the wrong sign)
    lp = float(rmt.empirical_edge(l, q=q, sigma2=sigma2, side=side))
    assert lp == pytest.approx(2 * s if top else -2 * s)
    back = rmt.true_edge(lp, q=q, sigma2=sigma2, side=side)
    assert not bool(back.identifiable) and math.isnan(float(back.value))
    assert float(back.bound) == pytest.approx(s if top else -s)
    # inside the bulk (a finite-P edge a little short of 2s) is flagged too
    inside = rmt.true_edge(0.9 * lp, q=q, sigma2=sigma2, side=side)
    assert not bool(inside.identifiable) and math.isnan(float(inside.value))


@given(q=st.floats(1e-2, 1e2), sigma2=scales, t=st.floats(-5.0, 1e4), top=st.booleans())
def test_implied_sigma2_round_trip(q, sigma2, t, top):
    side = "top" if top else "bottom"
    s = math.sqrt(q * sigma2)
    l = t * s if top else -t * s
    lp = rmt.empirical_edge(l, q=q, sigma2=sigma2, side=side)
    assert float(rmt.implied_sigma2(l, lp, q=q, side=side)) == pytest.approx(sigma2, rel=1e-7)


@given(q=st.floats(1e-2, 1e2), sigma2=scales, t=st.floats(-5.0, 1e4),
       fraction=st.floats(0.0, 0.99), top=st.booleans())
def test_theorem1_through_a_noisy_reference(q, sigma2, t, fraction, top):
    """A reference on M samples and an empirical matrix on N are both Theorem 1 images of one
    true edge: the map between them, and the sigma^2 it implies, hold on every branch."""
    side, q_ref = ("top" if top else "bottom"), fraction * q
    s = math.sqrt(q * sigma2)
    true = t * s if top else -t * s
    ref = rmt.empirical_edge(true, q=q_ref, sigma2=sigma2, side=side)
    emp = float(rmt.empirical_edge(true, q=q, sigma2=sigma2, side=side))
    assert float(rmt.empirical_edge(ref, q=q, sigma2=sigma2, side=side, reference_q=q_ref)) \
        == pytest.approx(emp, rel=1e-7)
    assert float(rmt.implied_sigma2(ref, emp, q=q, side=side, reference_q=q_ref)) \
        == pytest.approx(sigma2, rel=1e-6)
    # a reference noisier than the empirical matrix: no true edge below its own bulk edge
    assert math.isnan(float(rmt.implied_sigma2(ref, emp, q=q, side=side, reference_q=2 * q)))


def test_a_noisy_reference_against_spiked_goe_draws():
    """Spiked GOEs with the reference's own noise at P / M: the expected shift of the edge from
    the M-sample matrix to the N-sample one is predicted with reference_q, and over-predicted by
    q / (q - P/M) without it (dense eigenvalues; the first-order term u^T W u set to 0)."""
    rng = np.random.default_rng(0)
    p, q_ref, sigma2 = 600, 0.1, 1.0

    def top_eigenvalue(spike, q):
        g = rng.standard_normal((p, p))
        w = (g + g.T) * math.sqrt(q * sigma2 / (2 * p))
        w[0, 0] = spike
        return np.linalg.eigvalsh(w)[-1]

    for q in (0.3, 1.0):
        spike = 3 * math.sqrt(q * sigma2)
        ref, emp = (np.array([top_eigenvalue(spike, qq) for _ in range(4)]) for qq in (q_ref, q))
        measured = np.mean(emp - ref)
        with_ref = np.mean([float(rmt.empirical_edge(r, q=q, sigma2=sigma2, reference_q=q_ref))
                            for r in ref]) - ref.mean()
        without = np.mean([float(rmt.empirical_edge(r, q=q, sigma2=sigma2)) for r in ref]) \
            - ref.mean()
        assert with_ref / measured == pytest.approx(1.0, abs=0.06), (q, with_ref, measured)
        assert without / measured == pytest.approx(q / (q - q_ref), rel=0.1)


def test_theorem1_values_vectorised_and_paper_example():
    # Paper's CIFAR-100 Normal: lambda_P(aug) = -0.014, lambda'_P = -6.54, bottom side.
    r = rmt.true_edge(jnp.array([-6.54, -1.0]), q=1.0, sigma2=1.0, side="bottom")
    assert r.value.shape == (2,) and r.identifiable.tolist() == [True, False]
    assert float(r.value[0]) == pytest.approx((-6.54 - math.sqrt(6.54**2 - 4)) / 2)
    # a positive bottom eigenvalue (the paper's 2e-5) maps to the bottom edge -2s
    assert float(rmt.empirical_edge(2e-5, q=4.0, sigma2=1.0, side="bottom")) == -4.0
    assert float(rmt.spiked_edge(0.8, s2=1.0)) == 2.0
    assert float(rmt.spiked_edge(-0.9, s2=1.0, side="bottom")) == -2.0
    # no noise: the identity on the outlier side
    np.testing.assert_allclose(rmt.empirical_edge(jnp.array([0.5, 3.0]), q=1.0, sigma2=0.0),
                               [0.5, 3.0])
    assert float(rmt.true_edge(2.0, q=1.0, sigma2=1.0).identifiable) == 0   # exactly at 2s
    with pytest.raises(ValueError):
        rmt.empirical_edge(1.0, q=1.0, sigma2=1.0, side="up")
    with pytest.raises(ValueError):
        rmt.true_edge(1.0, q=1.0, sigma2=-1.0)


@pytest.mark.parametrize("call", [
    lambda: rmt.semicircle_density(0.0, s2=0.0), lambda: rmt.semicircle_density(0.0, s2=-1.0),
    lambda: rmt.semicircle_cdf(0.0, s2=-1.0), lambda: rmt.semicircle_edges(s2=-1.0),
    lambda: rmt.marchenko_pastur_edges(ratio=-1.0),
    lambda: rmt.marchenko_pastur_edges(ratio=1.0, variance=-1.0),
    lambda: rmt.marchenko_pastur_density(1.0, ratio=0.0),
    lambda: rmt.implied_sigma2(1.0, 1.5, q=0.0)])
def test_parameters_outside_their_laws_are_refused(call):
    """NaN, silent zeros, or inf were the answers before; a law's parameters have a domain."""
    with pytest.raises(ValueError, match="must be"):
        call()


def test_theorem1_jit_and_float32():
    f = jax.jit(lambda l, s2: rmt.true_edge(rmt.empirical_edge(l, q=2.0, sigma2=s2), q=2.0,
                                            sigma2=s2).value)
    assert float(f(3.0, 0.5)) == pytest.approx(3.0)
    x32 = jnp.array([3.0], jnp.float32)
    assert rmt.empirical_edge(x32, q=1.0, sigma2=1.0).dtype == jnp.float32
    assert rmt.true_edge(x32, q=1.0, sigma2=1.0).value.dtype == jnp.float32


# ---- Marchenko-Pastur ------------------------------------------------------------------------

def _bin_masses(edges, ratio, variance):
    masses = []
    for a, b in zip(edges[:-1], edges[1:]):
        x = np.linspace(a, b, 2001)
        masses.append(np.trapezoid(np.asarray(rmt.marchenko_pastur_density(
            x, ratio=ratio, variance=variance)), x))
    return np.array(masses)


def test_marchenko_pastur_against_wishart_histogram():
    p, n, var = 800, 1600, 2.0
    ratio = p / n
    w = np.asarray(rmt.sample_wishart(jax.random.key(5), p, n, variance=var))
    np.testing.assert_array_equal(w, w.T)
    eig = eigvalsh(w)
    a, b = (float(e) for e in rmt.marchenko_pastur_edges(ratio=ratio, variance=var))
    assert a == pytest.approx(var * (1 - math.sqrt(ratio)) ** 2)
    edges = np.linspace(a, b, 21)
    counts, _ = np.histogram(eig, edges)
    np.testing.assert_allclose(counts / p, _bin_masses(edges, ratio, var), atol=0.01)
    assert _bin_masses(np.array([a, b]), ratio, var)[0] == pytest.approx(1.0, abs=2e-3)
    assert eig[0] == pytest.approx(a, rel=0.05) and eig[-1] == pytest.approx(b, rel=0.03)
    assert np.mean(eig) == pytest.approx(var, rel=0.02)


def test_marchenko_pastur_atom_when_ratio_above_one():
    p, n = 600, 300
    ratio = p / n
    eig = eigvalsh(rmt.sample_wishart(jax.random.key(6), p, n))
    assert rmt.marchenko_pastur_atom(ratio=ratio) == 0.5
    zero = np.abs(eig) < 1e-8 * eig[-1]
    assert zero.mean() == pytest.approx(0.5, abs=1e-12)
    a, b = (float(e) for e in rmt.marchenko_pastur_edges(ratio=ratio))
    edges = np.linspace(a, b, 16)
    counts, _ = np.histogram(eig[~zero], edges)
    masses = _bin_masses(edges, ratio, 1.0)
    assert masses.sum() == pytest.approx(1 / ratio, abs=2e-3)
    np.testing.assert_allclose(counts / p, masses, atol=0.012)


# ---- sigma^2 estimator -----------------------------------------------------------------------

def _per_sample_noise(rng, n, p, sigma2, profile=None):
    """n i.i.d. symmetric matrices; every element (diagonal included) of variance sigma2, or of
    variance profile[j, k] if given."""
    g = rng.standard_normal((n, p, p)) * np.sqrt(sigma2 if profile is None else profile)
    return np.triu(g) + np.swapaxes(np.triu(g, 1), 1, 2)


@pytest.mark.parametrize("batch_size", [16, 128])
def test_noise_variance_recovers_sigma2_disjoint_batches(batch_size):
    """H_i = H + E_i with H fixed (low rank) and E_i of known variance; per-sample HVPs built
    explicitly, batches = one shuffled pass. b = N/2 tests the finite-population factor."""
    n, p, k, sigma2 = 256, 100, 8, 0.3
    rng = np.random.default_rng(batch_size)
    u = rng.standard_normal((p, 3))
    h = u @ np.diag([5.0, 1.0, -2.0]) @ u.T / p
    e = _per_sample_noise(rng, n, p, sigma2)
    v = rng.standard_normal((k, p))
    per_sample = (v @ h)[:, None, :] + np.einsum("nij,kj->kni", e, v)    # (k, n, p): H_i v
    groups = rng.permutation(n).reshape(n // batch_size, batch_size)
    batch_hvps = per_sample[:, groups, :].mean(axis=2)                    # (k, m, p)
    full = per_sample.mean(axis=1)                                         # (k, p)
    est = rmt.noise_variance(batch_hvps, full, v, batch_size=batch_size, num_samples=n)
    assert float(est.sigma2) == pytest.approx(sigma2, rel=0.1)
    assert est.per_probe.shape == (k,) and np.all(np.isfinite(est.per_probe))
    assert 0 < float(est.stderr) < 0.1 * sigma2
    # the convenience, with H_N v the mean of the batches (they partition the data)
    h_batch = h + e[groups].mean(axis=1)                                   # (m, p, p)
    conv = rmt.estimate_noise_variance(lambda i, x: h_batch[i] @ x, v,
                                       num_batches=n // batch_size, batch_size=batch_size,
                                       num_samples=n)
    assert float(conv.sigma2) == pytest.approx(float(est.sigma2), rel=1e-8)
    np.testing.assert_allclose(conv.per_probe, est.per_probe, rtol=1e-8)
    assert 0 < float(conv.stderr) < 0.1 * sigma2                         # Helmert contrasts


def test_noise_variance_finite_population_correction_is_exact():
    """Unbiasedness over many small replicates (one batch each) with b = N/3, where the
    without-replacement factor 1/b - 1/N differs from 1/b by a third; and with replacement."""
    n, p, b, sigma2, reps = 12, 20, 4, 0.7, 1500
    rng = np.random.default_rng(0)
    u = np.einsum("rnij,rj->rni", _per_sample_noise(rng, reps * n, p, sigma2).reshape(
        reps, n, p, p), v := rng.standard_normal((reps, p)))                 # E_i v
    full = u.mean(axis=1)
    idx = np.argsort(rng.random((reps, n)), axis=1)[:, :b]                   # without replacement
    batch = np.take_along_axis(u, idx[:, :, None], axis=1).mean(axis=1)
    # replicates as "probes": per_probe holds one estimate per replicate
    wo = rmt.noise_variance(batch[:, None], full, v, batch_size=b, num_samples=n).per_probe
    idx_r = rng.integers(0, n, (reps, b))                                    # with replacement
    batch_r = np.take_along_axis(u, idx_r[:, :, None], axis=1).mean(axis=1)
    wr = rmt.noise_variance(batch_r[:, None], full, v, batch_size=b, num_samples=n,
                            replace=True).per_probe
    # one replicate has relative sd ~ sqrt(2 / P) = 0.32: the mean of 1500 has sd ~ 0.008
    assert float(jnp.mean(wo)) == pytest.approx(sigma2, rel=0.04)
    assert float(jnp.mean(wr)) == pytest.approx(sigma2, rel=0.04)


def test_noise_variance_with_full_hvp_callable_and_unequal_variances():
    """Unequal element variances: random probes estimate the mean variance over all P^2 elements."""
    n, p, b = 200, 100, 20
    rng = np.random.default_rng(21)
    prof = rng.uniform(0.1, 1.0, (p, p))
    prof = 0.5 * (prof + prof.T)
    e = _per_sample_noise(rng, n, p, None, profile=prof)
    e_batch = e.reshape(n // b, b, p, p).mean(axis=1)
    e_full = e.mean(axis=0)
    v = rng.standard_normal((6, p))
    est = rmt.estimate_noise_variance(lambda i, x: e_batch[i] @ x, v, num_batches=n // b,
                                      batch_size=b, num_samples=n, full_hvp=lambda x: e_full @ x)
    assert float(est.sigma2) == pytest.approx(prof.mean(), rel=0.1)
    direct = rmt.noise_variance(np.einsum("mij,kj->kmi", e_batch, v), v @ e_full, v,
                                batch_size=b, num_samples=n)
    for got, want in zip(est, direct):
        np.testing.assert_allclose(got, want, rtol=1e-10)


def test_noise_variance_validation():
    v = jnp.ones(3)
    with pytest.raises(ValueError):
        rmt.noise_variance(jnp.ones((2, 3)), jnp.zeros(3), v, batch_size=4, num_samples=4)
    with pytest.raises(ValueError):
        rmt.noise_variance(jnp.ones((2, 3)), jnp.zeros(4), v, batch_size=1, num_samples=4)
    with pytest.raises(ValueError):
        rmt.estimate_noise_variance(lambda i, x: x, v, num_batches=3, batch_size=2,
                                    num_samples=8)
    with pytest.raises(ValueError, match="nonzero"):  # was sigma2 = inf
        rmt.noise_variance(jnp.ones((2, 3)), jnp.zeros(3), jnp.zeros(3), batch_size=1,
                           num_samples=4)


# ---- compare_spectra -------------------------------------------------------------------------

def test_compare_spectra_predictions_and_exports():
    q, sigma2 = 4.0, 0.25                                          # s = 1
    ref = Spectrum([-0.01, 0.0, 3.0], [0.1, 0.85, 0.05])
    emp = Spectrum([-2.5, -1.9, -1e-7, 1e-7, 3.5], [0.02, 0.03, 0.45, 0.45, 0.05])
    c = compare_spectra(emp, ref, q=q, sigma2=sigma2)
    top, bot = c.row("lambda_max"), c.row("lambda_min")
    assert top["empirical"] == 3.5 and top["reference"] == 3.0
    assert top["predicted_empirical"] == pytest.approx(3.0 + 1.0 / 3.0)
    assert top["inferred_reference"] == pytest.approx((3.5 + math.sqrt(3.5**2 - 4)) / 2)
    assert bot["predicted_empirical"] == pytest.approx(-2.0)        # -0.01 is subcritical
    assert bot["inferred_reference"] == pytest.approx((-2.5 - math.sqrt(2.5**2 - 4)) / 2)
    assert c.row("num_negative")["empirical"] == 3
    assert c.row("num_negative_separated")["empirical"] == 2
    assert c.row("negative_mass")["empirical"] == pytest.approx(0.05)
    assert c.row("top1_weight")["reference"] == 0.85 and c.row("top1_value")["reference"] == 0.0
    assert c.row("s")["value"] == 1.0 and c.row("bulk_edge")["value"] == 2.0
    assert c.row("implied_sigma2_top")["value"] == pytest.approx(3.0 * 0.5 / q)
    assert c.row("implied_sigma2_bottom")["value"] == pytest.approx(2.5**2 / 4 / q)

    d = json.loads(c.to_json())
    assert d == json.loads(json.dumps(c.to_dict()))
    assert [r["quantity"] for r in d["rows"]][:2] == ["lambda_max", "lambda_min"]
    assert d["top_weights"]["empirical"][0] == [0.45, -1e-7]

    rows = list(csv.DictReader(io.StringIO(c.to_csv())))
    by_name = {r["quantity"]: r for r in rows}
    assert float(by_name["lambda_max"]["predicted_empirical"]) == top["predicted_empirical"]
    assert float(by_name["q"]["value"]) == q and by_name["q"]["section"] == "parameter"
    assert len(rows) == len(c.rows) + len(c.parameters)

    md = c.to_markdown().splitlines()
    table = [ln for ln in md[: md.index("")]]
    assert all(ln.startswith("| ") and ln.endswith(" |") for ln in table)
    assert len({ln.count(" | ") for ln in table}) == 1
    assert table[2].split(" | ")[0] == "| lambda_max"

    # A reference on M = 4 N samples: its top edge 3 + (1/4) / 3 is the true edge 3 seen through
    # its own noise; the prediction and the inferred reference both account for it.
    noisy = Spectrum([-0.01, 0.0, 3.0 + 0.25 / 3.0], [0.1, 0.85, 0.05])
    c = compare_spectra(emp, noisy, q=q, sigma2=sigma2, reference_q=q / 4)
    top = c.row("lambda_max")
    assert top["predicted_empirical"] == pytest.approx(3.0 + 1.0 / 3.0)
    inferred = (3.5 + math.sqrt(3.5**2 - 4)) / 2
    assert top["inferred_reference"] == pytest.approx(inferred + 0.25 / inferred)
    implied = c.row("implied_sigma2_top")["value"]   # maps the noisy reference's 3 + 1/12 to 3.5
    assert float(rmt.empirical_edge(3.0 + 0.25 / 3.0, q=q, sigma2=implied,
                                    reference_q=q / 4)) == pytest.approx(3.5)
    assert c.row("reference_q")["value"] == 1.0


def test_compare_spectra_not_identifiable_duck_typed_and_partial():
    class Raw:                                                        # only nodes and weights
        nodes = np.array([-1.5, 0.0, 1.9])
        weights = np.array([0.1, 0.8, 0.1])

    c = compare_spectra(Raw(), np.array([0.0, 0.5]), q=1.0, sigma2=1.0)
    top = c.row("lambda_max")
    assert top["inferred_reference"] is None and "lambda_1 <= s = 1" in top["note"]
    assert json.loads(c.to_json())["rows"][0]["inferred_reference"] is None
    assert c.row("lambda_max")["reference"] == 0.5

    alone = compare_spectra(Raw(), None, q=1.0)                       # no reference, no sigma2
    assert alone.row("lambda_max")["predicted_empirical"] is None
    assert alone.row("num_negative")["reference"] is None
    assert [r["quantity"] for r in alone.parameters] == ["q"]
    json.loads(alone.to_json())
    list(csv.DictReader(io.StringIO(alone.to_csv())))


def test_compare_spectra_on_dense_spiked_matrix(spiked_spectra):
    """Exact spectra of A and A + GOE: Theorem 1 predicts the measured empirical edges."""
    eig = spiked_spectra[0]
    ref = np.concatenate([np.array(SPIKES), np.zeros(P_DENSE - len(SPIKES))])
    q = 2.0
    c = compare_spectra(eig, ref, q=q, sigma2=1.0 / q)                # s^2 = 1
    for name in ("lambda_max", "lambda_min"):
        r = c.row(name)
        assert r["empirical"] == pytest.approx(r["predicted_empirical"], rel=0.03)
        assert r["inferred_reference"] == pytest.approx(r["reference"], rel=0.06)


def test_noise_variance_stderr_not_zero_when_batches_partition_the_data():
    """Review finding: with ``full_hvp`` the mean of batches that partition the data set (what
    experiments/curvature.py passes whenever N is a multiple of the batch size, e.g. the smoke and
    cnn-cpu presets), the deviations H_B v - H_N v sum to zero, so the m terms of ``stderr`` are
    not independent. With m = 2 they are equal and ``stderr`` is exactly 0, although sigma2 then
    scatters by ~17% (P = 60; scratch/rev_exp/stderr_sim.py). The honest answer from 2 batches is
    one degree of freedom: NaN (no error bar), as the Helmert-contrast path without ``full_hvp``
    gives, or a positive value."""
    n, p, b, sigma2 = 8, 60, 4, 1.0
    rng = np.random.default_rng(0)
    e = _per_sample_noise(rng, n, p, sigma2)
    v = rng.standard_normal(p)
    h_batch = e.reshape(2, b, p, p).mean(axis=1)
    h_full = e.mean(axis=0)
    with_full = rmt.estimate_noise_variance(lambda i, x: h_batch[i] @ x, v, num_batches=2,
                                            batch_size=b, num_samples=n,
                                            full_hvp=lambda x: h_full @ x)
    without = rmt.estimate_noise_variance(lambda i, x: h_batch[i] @ x, v, num_batches=2,
                                          batch_size=b, num_samples=n)
    assert float(with_full.sigma2) == pytest.approx(float(without.sigma2), rel=1e-5)
    assert math.isnan(float(without.stderr))
    stderr = float(with_full.stderr)
    assert math.isnan(stderr) or stderr > 0.01 * float(with_full.sigma2), stderr


@pytest.mark.parametrize("num_batches", [3, 4])
def test_noise_variance_stderr_is_calibrated_when_batches_partition_the_data(num_batches):
    """Over many draws of the per-sample noise, the reported standard error (the Helmert
    contrasts of the deviations, since the batches cover the data) matches the actual scatter
    of sigma2: the dependent per-batch terms gave 0.62 (m = 3) and 0.79 (m = 4) of it. The
    streaming estimate (with and without full_hvp) gives the same numbers as the array one."""
    n_draws, b, p, sigma2 = 300, 4, 20, 1.0
    n = num_batches * b
    rng = np.random.default_rng(num_batches)
    v = rng.standard_normal((2, p))
    estimates, errors = [], []
    for draw in range(n_draws):
        e = _per_sample_noise(rng, n, p, sigma2)
        hb = np.einsum("mbij,kj->kmi", e.reshape(num_batches, b, p, p) / b, v)
        r = rmt.noise_variance(hb, hb.mean(axis=1), v, batch_size=b, num_samples=n)
        estimates.append(float(r.sigma2))
        errors.append(float(r.stderr))
        if draw == 0:
            h_batch = e.reshape(num_batches, b, p, p).mean(axis=1)
            for full in (lambda x: e.mean(axis=0) @ x, None):
                s = rmt.estimate_noise_variance(lambda i, x: h_batch[i] @ np.asarray(x), v,
                                                num_batches=num_batches, batch_size=b,
                                                num_samples=n, full_hvp=full)
                assert float(s.sigma2) == pytest.approx(float(r.sigma2), rel=1e-5)
                assert float(s.stderr) == pytest.approx(float(r.stderr), rel=1e-4)
    actual = np.std(estimates, ddof=1)
    rms_reported = math.sqrt(np.mean(np.square(errors)))
    assert np.mean(estimates) == pytest.approx(sigma2, abs=3 * actual / math.sqrt(n_draws))
    assert rms_reported == pytest.approx(actual, rel=0.12), (rms_reported, actual)
