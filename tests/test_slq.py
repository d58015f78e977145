"""Spectrum summaries, persistence and SLQ on operators with known spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec import Spectrum, assert_symmetric, random_probe, slq, symmetry_error
from jaxspec.io import load_spectrum, save_spectrum, slq_hooks, spectrum_from_dict
from jaxspec.io import spectrum_to_dict
from jaxspec.plotting import stem_plot, stem_plots
from spectra import matrix_with_spectrum, spectrum_of_kind

pytestmark = pytest.mark.usefixtures("strict_promotion")


def test_from_tridiagonal_matches_eigh():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(12), rng.standard_normal(11)
    T = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
    theta, vecs = np.linalg.eigh(T)
    s = Spectrum.from_tridiagonal(a, b)
    np.testing.assert_allclose(s.nodes, theta, rtol=1e-12)
    np.testing.assert_allclose(s.weights, vecs[0] ** 2, rtol=1e-10)
    assert s.weights.sum() == pytest.approx(1.0)


def test_spectrum_validates():
    with pytest.raises(ValueError, match="sum to 1"):
        Spectrum([1.0, 2.0], [0.5, 0.6])
    with pytest.raises(ValueError, match="shape"):
        Spectrum([1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        Spectrum([np.nan], [1.0])


def test_negative_mass_rule():
    # origin cluster split into three nodes around 0 (one slightly negative), one real negative
    s = Spectrum([-2.0, -1e-4, 0.0, 2e-4, 50.0], [0.02, 0.3, 0.4, 0.27, 0.01])
    neg = s.negative(origin_tol=1e-3)
    assert neg.count == 2 and neg.count_separated == 1 and neg.mass == pytest.approx(0.02)
    assert s.summary()["origin_weight"] == pytest.approx(0.97)
    # a stricter tolerance splits the origin cluster
    assert s.negative(origin_tol=1e-7).count_separated == 2
    # no node at the origin, no cluster: the node nearest zero is negative mass like any other
    assert Spectrum([-1.0, 5.0], [0.5, 0.5]).negative() == (1, 1, 0.5)
    assert Spectrum([-3.0, -2.0, -1.0], [0.25, 0.25, 0.5]).negative().mass == 1.0
    assert Spectrum([-1.0, 5.0], [0.5, 0.5]).summary()["origin_weight"] == 0.0


def test_origin_cluster_extends_origin_tol_times_the_largest_node():
    """The documented rule's reach: ``|theta - theta_0| <= origin_tol * max|theta|`` (here
    0.05), centred on the node nearest zero, not on zero; nodes at 0.8 of that width are in
    the cluster, nodes beyond it are separated negative mass."""
    s = Spectrum([-0.06, -0.03, 0.01, 0.05, 50.0], [0.1, 0.2, 0.4, 0.2, 0.1])
    assert s.origin_cluster(origin_tol=1e-3).tolist() == [False, True, True, True, False]
    neg = s.negative(origin_tol=1e-3)
    assert neg.count == 2 and neg.count_separated == 1 and neg.mass == pytest.approx(0.1)
    assert s.summary(origin_tol=1e-3)["origin_weight"] == pytest.approx(0.8)


def test_top_weights_and_moments():
    s = Spectrum([3.0, -1.0, 0.0], [0.2, 0.1, 0.7])
    assert s.top_weights(3) == [(0.7, 0.0), (0.2, 3.0), (0.1, -1.0)]
    np.testing.assert_allclose(s.moments(2), [1.0, 0.5, 1.9])


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_save_load_roundtrip(tmp_path, suffix):
    s = Spectrum.from_tridiagonal([1.0, 2.0, 3.0], [0.5, 0.25], meta={"model": "x", "N": 3})
    path = tmp_path / f"s{suffix}"
    save_spectrum(s, path)
    t = load_spectrum(path)
    assert t == s and t.meta == {"model": "x", "N": 3}
    assert spectrum_from_dict(spectrum_to_dict(s)) == s
    with pytest.raises(ValueError, match="format"):
        save_spectrum(s, tmp_path / "s.txt")


def test_density_integrates_to_one():
    s = Spectrum([-1.0, 0.0, 2.0], [0.25, 0.5, 0.25])
    grid = np.linspace(-5, 6, 4001)
    assert np.trapezoid(s.density(grid, sigma=0.1), grid) == pytest.approx(1.0, abs=1e-6)
    # one node: the default width scales with it (1% of |theta|), not an absolute 1e-14
    grid = np.linspace(4, 6, 2001)
    assert np.trapezoid(Spectrum([5.0], [1.0]).density(grid), grid) == pytest.approx(1.0)


def test_slq_several_vectors_average_the_per_probe_quadratures():
    n = 200
    eigs = spectrum_of_kind("negative", n, 1)
    A, _ = matrix_with_spectrum(eigs, 1)
    s = slq(lambda v: A @ v, jax.random.key(0), n, 20, num_vectors=8, dtype=jnp.float64)
    assert s.num_vectors == 8 and s.nodes.size == 8 * 20
    assert s.weights.sum() == pytest.approx(1.0)
    assert s.lambda_max == pytest.approx(eigs.max(), rel=1e-8)
    assert s.lambda_min == pytest.approx(eigs.min(), rel=1e-8)
    # the averaged quadrature is the mean over the probes of v^T A^k v / v^T v (k <= 2m - 1)
    probes = [np.asarray(random_probe(k, n, dtype=jnp.float64))
              for k in jax.random.split(jax.random.key(0), 8)]
    An = np.asarray(A)
    for k in (1, 2, 5):
        Ak = np.linalg.matrix_power(An, k)
        expected = np.mean([v @ Ak @ v / (v @ v) for v in probes])
        assert s.moments(k)[k] == pytest.approx(expected, rel=1e-9)


def test_average_pools_spectra_by_their_probe_counts():
    """Merging an 8-probe and a 2-probe spectrum gives the 10-probe average: each spectrum
    counts by its probes, not as one (the moments are the mean over all ten probes)."""
    n = 60
    A, _ = matrix_with_spectrum(spectrum_of_kind("negative", n, 1), 1)
    mv = lambda v: A @ v  # noqa: E731
    big = slq(mv, jax.random.key(0), n, 8, num_vectors=8, dtype=jnp.float64)
    small = slq(mv, jax.random.key(1), n, 8, num_vectors=2, dtype=jnp.float64)
    merged = Spectrum.average([big, small])
    assert merged.num_vectors == 10 and merged.weights.sum() == pytest.approx(1.0)
    for k in (1, 2, 3):
        expected = (8 * big.moments(k)[k] + 2 * small.moments(k)[k]) / 10
        assert merged.moments(k)[k] == pytest.approx(expected, rel=1e-12)
    s = Spectrum.average([Spectrum([0.0, 1.0], [0.5, 0.5], num_vectors=3),
                          Spectrum([4.0], [1.0], num_vectors=1)])
    assert s.num_vectors == 4 and s.weights.tolist() == [0.375, 0.375, 0.25]


def test_slq_checkpoints_per_vector(tmp_path):
    A = jnp.diag(jnp.linspace(-1.0, 4.0, 30))
    d = tmp_path / "ckpt"  # created by slq_hooks
    s1 = slq(lambda v: A @ v, jax.random.key(1), 30, 10, num_vectors=2,
             hooks=slq_hooks(checkpoint_dir=d, progress="test"), dtype=jnp.float64)
    assert sorted(p.name for p in d.iterdir()) == ["lanczos_0.npz", "lanczos_1.npz"]
    s2 = slq(lambda v: A @ v, jax.random.key(1), 30, 10, num_vectors=2,
             hooks=slq_hooks(checkpoint_dir=d), dtype=jnp.float64)
    assert s1 == s2


def test_random_probe_distributions():
    v = random_probe(jax.random.key(0), 1000, distribution="rademacher")
    assert set(np.unique(np.asarray(v))) == {-1.0, 1.0}
    assert random_probe(jax.random.key(0), 5, dtype=jnp.float64).dtype == jnp.float64
    with pytest.raises(ValueError):
        random_probe(jax.random.key(0), 5, distribution="uniform")


def test_symmetry_probe():
    A = jax.random.normal(jax.random.key(0), (20, 20), jnp.float32)  # float32 probes by default
    sym = A + A.T
    assert symmetry_error(lambda v: sym @ v, jax.random.key(1), 20).relative_error < 1e-6
    sym64 = sym.astype(jnp.float64)
    assert assert_symmetric(lambda v: sym64 @ v, jax.random.key(1), 20, dtype=jnp.float64)
    with pytest.raises(ValueError, match="not symmetric"):
        assert_symmetric(lambda v: A @ v, jax.random.key(1), 20)
    # slq probes a plain callable by default (only a CurvatureOperator is exempt)
    with pytest.raises(ValueError, match="not symmetric"):
        slq(lambda v: A @ v, jax.random.key(1), 20, 5)
    assert slq(lambda v: A @ v, jax.random.key(1), 20, 5, check=False).nodes.size == 5
    # the probes follow a matvec's own dtype (a float64 operator), else float32
    A64 = type("A64", (), {"dtype": jnp.float64, "__call__": lambda self, v: sym64 @ v})()
    assert slq(A64, jax.random.key(1), 20, 5).meta["dtype"] == "float64"
    assert slq(lambda v: sym @ v, jax.random.key(1), 20, 5).meta["dtype"] == "float32"
    # a dim that does not fit the matvec fails before any product, naming the vector it tried
    with pytest.raises(TypeError, match=r"evaluated on a vector of shape \(21,\)"):
        slq(lambda v: sym @ v, jax.random.key(1), 21, 5)


@pytest.mark.parametrize("scale", [1e-25, 1e-19, 1e19, 1e25])
def test_slq_of_a_scaled_operator_has_its_eigenvalues_and_weights(scale):
    """A float32 matrix scaled by a decimal power, past where the squares of its products'
    norms underflow (1e-19) or overflow (1e19 with eigenvalues up to 10), at full depth: every
    node is an eigenvalue (float64 eigh of the same float32 matrix) to a few rounding units of
    ``|A|`` (T is the projection of a matrix within rounding of ``A``, the partial method's
    semi-orthogonality suffices: jaxspec.reorth; at full depth every node has converged, so
    Weyl's bound applies), and the weights are the squared components of the probe on the
    eigenvectors, to rounding over the smallest gap (an eigenvector's sensitivity). The plain
    norms gave one node at 1e-19 and 1e-25 (a breakdown at the first step) and an overflow
    error at 1e19 and 1e25."""
    n = 40
    eigs = spectrum_of_kind("spread", n, 0)
    A64, _ = matrix_with_spectrum(eigs, 0)
    A = jnp.asarray(np.asarray(A64) * scale, jnp.float32)
    v0 = jnp.asarray(np.random.default_rng(0).standard_normal(n), jnp.float32)
    spec = slq(lambda v: A @ v, jax.random.key(0), n, n, v0=v0)  # the symmetry probe, too
    exact, vectors = np.linalg.eigh(np.asarray(A, np.float64))
    weights = (vectors.T @ np.asarray(v0, np.float64)) ** 2 / float(np.sum(np.asarray(v0,
                                                                                np.float64) ** 2))
    eps, norm = float(np.finfo(np.float32).eps), float(np.abs(exact).max())
    assert spec.nodes.size == n
    np.testing.assert_allclose(spec.nodes, exact, rtol=0, atol=8 * eps * norm)
    gap = float(np.diff(exact).min())
    np.testing.assert_allclose(spec.weights, weights, rtol=0, atol=8 * eps * norm / gap)


def test_stem_plots_write_files(tmp_path):
    s = Spectrum.from_tridiagonal([1.0, -2.0, 3.0], [0.5, 0.25])
    stem_plot(s, path=str(tmp_path / "a.png"), title="one")
    stem_plots({"empirical": s, "true": s}, path=str(tmp_path / "b.pdf"))
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.pdf").stat().st_size > 1000
