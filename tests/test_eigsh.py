"""eigsh (thick-restart Lanczos) against dense eigh: values, subspaces, certified residuals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxspec
from jaxspec import eigsh
from jaxspec.eigsh import _orthogonalise
from jaxspec.norms import norm
from mlp_problem import mlp_loss, mlp_problem
from spectra import matrix_with_spectrum

N = 80
M = 12  # basis size k + num_extra in every test on an N x N matrix: one compilation for all


def spectrum(kind):
    rng = np.random.default_rng(1)
    if kind == "clustered":  # four top eigenvalues 1e-3 apart, two bottom ones 1e-4 apart
        return np.concatenate([[-3.0, -3.0 + 1e-4], rng.uniform(0.0, 5.0, N - 6),
                               10.0 - 1e-3 * np.arange(4)])
    if kind == "negative":  # a bulk near zero, outliers at both ends
        bulk = 0.05 * rng.standard_normal(N)
        bulk[:4] = [-3.0, -1.5, 4.0, 12.0]
        return bulk
    return rng.uniform(-5.0, 10.0, N)


def matched(eigs, k, which):
    order = np.argsort(eigs)
    if which == "largest":
        return order[-k:]
    if which == "smallest":
        return order[:k]
    return np.concatenate([order[: k // 2], order[N - (k - k // 2):]])


def check_against_eigh(A, res, k, which, subspace_tol):
    lam, U = np.linalg.eigh(np.asarray(A))
    idx = np.sort(matched(lam, k, which))
    idx = idx[np.argsort(lam[idx])]
    assert res.converged.all()
    # every reported value within its measured residual of the matched eigenvalue
    assert np.all(np.abs(res.values - lam[idx]) <= res.residuals + 1e-12), (res.values, lam[idx])
    # principal angles between the returned and the true invariant subspace
    X = np.asarray(res.vectors)
    np.testing.assert_allclose(X @ X.T, np.eye(k), atol=1e-10)
    cosines = np.linalg.svd(U[:, idx].T @ X.T, compute_uv=False)
    assert np.sqrt(max(0.0, 1.0 - cosines.min() ** 2)) < subspace_tol
    # the residuals really are |A x - theta x|
    true_res = np.linalg.norm(X @ np.asarray(A) - res.values[:, None] * X, axis=1)
    np.testing.assert_allclose(res.residuals, true_res, rtol=1e-6, atol=1e-14)


@pytest.mark.parametrize("kind", ["spread", "clustered", "negative"])
@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_top_k_match_eigh(kind, which):
    A, _ = matrix_with_spectrum(spectrum(kind), seed=3)
    k = 4
    with jax.numpy_dtype_promotion("strict"):
        res = eigsh(lambda v: A @ v, jnp.ones(N), k, which=which, tol=1e-10, num_extra=M - k,
                    driver="host")
    # clusters are resolved as subspaces: the whole set is far from the rest of the spectrum
    check_against_eigh(A, res, k, which, subspace_tol=1e-6)


def test_compiled_driver_matches_host_driver():
    A, _ = matrix_with_spectrum(spectrum("spread"), seed=4)
    kw = dict(which="both", tol=1e-10, num_extra=M - 4)
    host = eigsh(lambda v: A @ v, jnp.ones(N), 4, driver="host", **kw)
    compiled = eigsh(lambda v: A @ v, jnp.ones(N), 4, driver="compiled", **kw)
    np.testing.assert_allclose(compiled.values, host.values, rtol=1e-10)
    check_against_eigh(A, compiled, 4, "both", subspace_tol=1e-6)
    # a cycle in several compiled calls: each call takes up the vector the last one left
    split = eigsh(lambda v: A @ v, jnp.ones(N), 4, driver="compiled", check_every=3, **kw)
    check_against_eigh(A, split, 4, "both", subspace_tol=1e-6)


def test_thick_restart_basis_smaller_than_matvecs_and_residuals_bound_errors():
    # a loose tolerance leaves macroscopic residuals: they must still bound the errors
    A, _ = matrix_with_spectrum(np.linspace(0.0, 1.0, N) ** 2, seed=5)
    k, extra = 3, M - 3
    for tol in (1e-3, 1e-8):
        with jax.numpy_dtype_promotion("strict"):
            res = eigsh(lambda v: A @ v, jnp.ones(N), k, tol=tol, num_extra=extra)
        assert res.converged.all()
        assert res.num_restarts > 0 and res.num_matvecs > 2 * (k + extra + 1)
        lam = np.linalg.eigvalsh(np.asarray(A))[-k:]
        assert np.all(np.abs(res.values - lam) <= res.residuals + 1e-14)
        assert np.all(res.residuals <= tol * 1.0)


def test_restarts_run_out_reports_unconverged():
    A, _ = matrix_with_spectrum(np.linspace(0.0, 1.0, N) ** 2, seed=5)
    res = eigsh(lambda v: A @ v, jnp.ones(N), 3, tol=1e-14, num_extra=M - 3, max_restarts=2)
    assert res.num_restarts == 2 and not res.converged.all()
    keep = 3 + (M - 3) // 2
    assert res.num_matvecs == M + 2 * (M - keep) + 3
    # a pair is converged only where its measured residual is within tol * ||A|| (||A|| = 1
    # here); after 4 to 6 restarts some residuals lie between tol and 10 tol
    for restarts in (4, 5, 6):
        res = eigsh(lambda v: A @ v, jnp.ones(N), 3, tol=1e-6, num_extra=M - 3,
                    max_restarts=restarts)
        assert np.all(res.residuals[res.converged] <= 1e-6), (res.residuals, res.converged)
        assert np.all(res.residuals[~res.converged] > 1e-6 * 0.99), (res.residuals, res.converged)


def test_warm_start_from_vector_and_block():
    A, _ = matrix_with_spectrum(spectrum("spread"), seed=6)
    mv = lambda v: A @ v  # noqa: E731
    cold = eigsh(mv, jnp.ones(N), 3, tol=1e-10, num_extra=M - 3)
    warm_one = eigsh(mv, cold.vectors[-1], 1, tol=1e-10, num_extra=M - 1)
    cold_one = eigsh(mv, jnp.ones(N), 1, tol=1e-10, num_extra=M - 1)
    assert warm_one.num_matvecs < cold_one.num_matvecs
    np.testing.assert_allclose(warm_one.values, cold.values[-1:], rtol=1e-10)
    warm_block = eigsh(mv, cold.vectors, 3, tol=1e-10, num_extra=M - 3)
    assert warm_block.num_matvecs < cold.num_matvecs
    # the block enters as the sum of its rows, whose first 3 Krylov vectors span them: one
    # cycle and the certificates, no restart (from one of its rows alone: 14 restarts)
    assert warm_block.num_restarts == 0 and warm_block.num_matvecs == M + 3
    check_against_eigh(A, warm_block, 3, "largest", subspace_tol=1e-6)


def test_invariant_start_space_is_not_mistaken_for_the_answer():
    # v0 is an eigenvector of the second-largest eigenvalue: the Krylov space breaks down at
    # once; the run must go on (a fresh direction) and find the largest
    A, Q = matrix_with_spectrum(spectrum("spread"), seed=7)
    lam = np.linalg.eigvalsh(np.asarray(A))
    second = Q[:, np.argsort(spectrum("spread"))[-2]]
    res = eigsh(lambda v: A @ v, jnp.asarray(second), 1, tol=1e-10, num_extra=M - 1)
    np.testing.assert_allclose(res.values, lam[-1:], rtol=1e-9)


_step = jax.jit(lambda V, w: _orthogonalise(V, w, norm(w))[:2])


@settings(max_examples=60, deadline=None)
@given(filled=st.integers(1, 12), log_distance=st.floats(-7.0, 1.0),
       log_scale=st.floats(-2.0, 3.0), seed=st.integers(0, 2**32 - 1), double=st.booleans())
def test_a_step_leaves_its_vector_orthogonal_to_working_precision(filled, log_distance,
                                                                   log_scale, seed, double):
    # w = (a vector in the span of the filled rows) + (one at a relative distance 10**log_distance
    # from it): however near the span, one step leaves it orthogonal to the basis to a few
    # rounding units, and the coefficients rebuild it: w = h V + q. A single pass leaves about
    # eps / distance; a second pass taken only below a tenth of the norm fails this bound.
    rng = np.random.default_rng(seed)
    dtype = np.float64 if double else np.float32
    eps, dim = np.finfo(dtype).eps, 3000
    V = np.zeros((13, dim))  # the unfilled rows of eigsh's basis are zero
    V[:filled] = np.linalg.qr(rng.standard_normal((dim, filled)))[0].T
    a = rng.standard_normal(filled) * 10.0 ** log_scale
    r = rng.standard_normal(dim)
    w = a @ V[:filled] + 10.0 ** log_distance * np.linalg.norm(a) * r / np.linalg.norm(r)
    V, w = V.astype(dtype), w.astype(dtype)
    q, h = (np.asarray(x, np.float64) for x in _step(jnp.asarray(V), jnp.asarray(w)))
    V64 = V.astype(np.float64)
    assert np.abs(V64 @ q).max() <= 8 * eps * np.linalg.norm(q)
    assert np.linalg.norm(w - h @ V64 - q) <= 2 * eps * np.linalg.norm(w)


def test_the_host_driver_does_not_stop_on_a_small_krylov_space():
    """Tested at every step from k + 1 vectors on, the 40 smallest of a spectrum over twelve
    decades "converged" at step 41 with 236 among them (the 41st smallest is 1.37); from 2k + 1
    vectors on, the pairs returned are the smallest but for at most one."""
    eigs = np.logspace(-8, 4, 60)
    A, _ = matrix_with_spectrum(eigs, 1)
    res = eigsh(lambda v: A @ v, jnp.ones(60), 40, which="smallest", tol=1e-10, driver="host")
    assert res.values.max() <= eigs[40] * (1 + 1e-6)


@pytest.mark.parametrize("driver", ["host", "compiled"])
def test_a_shift_moves_the_pairs(driver):
    """The top pairs of A + c I are A's plus c (float32, c = 1e4 against a spread of 1): the
    breakdown test is shift-invariant, so no step is taken for an invariant space."""
    eigs = np.concatenate([np.linspace(-1.0, 0.3, 97), [0.6, 0.8, 1.0]])
    A, _ = matrix_with_spectrum(eigs + 1e4, 3, dtype=np.float32)
    res = eigsh(lambda v: A @ v, jnp.ones(100, jnp.float32), 3, tol=1e-5, driver=driver)
    assert bool(res.converged.all())
    np.testing.assert_allclose(res.values - 1e4, [0.6, 0.8, 1.0], atol=5e-3)


@pytest.mark.parametrize("scale", [1e-25, 1e-19, 1e19, 1e25])
def test_certified_pairs_of_a_scaled_operator_are_eigenpairs(scale):
    """float32 matrices scaled past where the squares of their products' norms underflow
    (1e-19) or overflow (1e19): every pair converges, its measured residual is not zero, and
    each value lies within its residual of an eigenvalue of the same matrix (float64 eigh),
    the largest three. With the plain norms the residuals were flushed to zero at 1e-19 and
    1e-25, and eigsh certified 0.74e-19 for a largest eigenvalue of 1.9e-19."""
    A64, _ = matrix_with_spectrum(spectrum("spread"), seed=5)
    A = jnp.asarray(np.asarray(A64) * scale, jnp.float32)
    exact = np.linalg.eigvalsh(np.asarray(A, np.float64))[-3:]
    res = eigsh(lambda v: A @ v, jnp.ones(N, jnp.float32), 3, tol=1e-5, num_extra=M - 3)
    assert bool(res.converged.all()) and np.all(res.residuals > 0)
    assert np.all(np.abs(res.values - exact) <= res.residuals), (res.values / scale, exact / scale)


@pytest.mark.parametrize("exponent", [-83, -63, 66, 83])
def test_pairs_scale_exactly_with_the_operator(exponent):
    """On ``2^k A`` (about 1e-25 to 1e25) the values and residuals are ``2^k`` times those on
    ``A`` and the vectors the same, bit for bit (jaxspec.norms: the rescaled norms round as the
    plain ones)."""
    A, _ = matrix_with_spectrum(spectrum("negative"), seed=2, dtype=np.float32)
    scale = 2.0**exponent
    base, res = (eigsh(jax.tree_util.Partial(jnp.matmul, B), jnp.ones(N, jnp.float32), 2,
                       tol=1e-5, num_extra=M - 2, which="both")
                 for B in (A, A * np.float32(scale)))
    np.testing.assert_array_equal(res.values / scale, base.values)
    np.testing.assert_array_equal(res.residuals / scale, base.residuals)
    np.testing.assert_array_equal(res.vectors, base.vectors)
    assert res.num_matvecs == base.num_matvecs


@pytest.mark.parametrize("scale", [1e-33, 1e33])
def test_products_outside_the_supported_scales_raise(scale):
    A = jnp.asarray(np.diag(np.linspace(1.0, 2.0, N)) * scale, jnp.float32)
    with pytest.raises(FloatingPointError, match="outside the scales"):
        eigsh(lambda v: A @ v, jnp.ones(N, jnp.float32), 2, num_extra=M - 2)


def test_a_plain_callable_is_probed_for_symmetry():
    """As slq: one probe (three products, not counted in num_matvecs) of a plain callable,
    none with check=False (nor of a CurvatureOperator, symmetric by construction)."""
    B = jax.random.normal(jax.random.key(0), (N, N), jnp.float32)
    with pytest.raises(ValueError, match="not symmetric"):
        eigsh(lambda v: B @ v, jnp.ones(N, jnp.float32), 2, num_extra=M - 2)
    calls = []
    sym = B + B.T

    def counted(v):
        calls.append(1)
        return sym @ v

    for check, probe in [(None, 3), (False, 0)]:
        calls.clear()
        res = eigsh(counted, jnp.ones(N, jnp.float32), 2, num_extra=M - 2, driver="host",
                    check=check)
        assert len(calls) == res.num_matvecs + probe


def test_rejects_bad_arguments():
    mv = lambda v: 2.0 * v  # noqa: E731
    with pytest.raises(ValueError, match="which"):
        eigsh(mv, jnp.ones(5), 1, which="middle")
    with pytest.raises(ValueError, match="k must"):
        eigsh(mv, jnp.ones(5), 5)
    with pytest.raises(ValueError, match="P - 2"):  # k + 1 vectors and a residual need P > k + 1
        eigsh(mv, jnp.ones(5), 4)
    with pytest.raises(ValueError, match="tol"):
        eigsh(mv, jnp.ones(5), 1, tol=-1.0)
    with pytest.raises(TypeError, match="dtype"):  # the compiled driver checks before its loop
        eigsh(lambda v: (2.0 * v).astype(jnp.float32), jnp.ones(5, jnp.float64), 1,
              driver="compiled")
    with pytest.raises(ValueError, match="nonzero"):
        eigsh(mv, jnp.zeros(5), 1)
    with pytest.raises(TypeError, match="same"):
        eigsh(lambda v: v[:3], jnp.ones(5), 1)


def test_the_zero_operator_converges_in_one_cycle():
    """Every step of a zero operator breaks down; its pairs (0, any vector) are exact, so the
    first full cycle ends the run instead of max_restarts more (a frozen parameter block)."""
    res = eigsh(lambda v: 0.0 * v, jnp.ones(30), 2, num_extra=6)
    assert bool(res.converged.all()) and res.num_restarts == 0 and res.num_matvecs == 8 + 2
    np.testing.assert_array_equal(res.values, [0.0, 0.0])


@pytest.mark.parametrize("reduce", ["host", "scan"])
def test_curvature_operator_of_an_mlp(reduce):
    params, data, H = mlp_problem()
    op = jaxspec.curvature_operator(mlp_loss, params, jaxspec.batch_dataset(data, 20),
                                    reduce=reduce)
    res = eigsh(op, jax.tree.map(jnp.ones_like, params), 4, which="both", tol=1e-9)
    lam = np.linalg.eigvalsh(0.5 * (H + H.T))
    want = np.sort(np.concatenate([lam[:2], lam[-2:]]))
    assert np.all(np.abs(res.values - want) <= res.residuals + 1e-12)
    np.testing.assert_allclose(res.values, want, rtol=1e-7, atol=1e-10)
    tree = jax.vmap(op.unravel)(res.vectors)  # the vectors as pytrees like params
    assert tree["w1"].shape == (4, 3, 6)
