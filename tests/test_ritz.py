"""Ritz pairs against dense eigh: values, residual norms as error bounds, orthonormal vectors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessians import dense_hessian, make_data, mlp_loss, mlp_params
from jaxspec import batch_dataset, curvature_operator, lanczos, ritz_pairs, run_lanczos
from spectra import matrix_with_spectrum, spectrum_of_kind

pytestmark = pytest.mark.usefixtures("strict_promotion")


def check_pairs(A, pairs, eigs):
    """The residual norms are the true residuals and bound the distance to the spectrum."""
    A = np.asarray(A)
    Y = np.asarray(pairs.vectors, np.float64)
    scale = np.abs(eigs).max()
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1.0, atol=1e-10)
    np.testing.assert_allclose(Y @ Y.T, np.eye(len(Y)), atol=1e-10)  # orthonormal
    true = np.linalg.norm(Y @ A - pairs.values[:, None] * Y, axis=1)
    np.testing.assert_allclose(pairs.residuals, true, rtol=0, atol=1e-10 * scale)
    nearest = np.abs(pairs.values[:, None] - eigs[None, :]).min(axis=1)
    assert np.all(nearest <= pairs.residuals + 1e-10 * scale)
    np.testing.assert_allclose(pairs.weights.sum(), 1.0, rtol=1e-12)


@settings(max_examples=8)
@given(kind=st.sampled_from(["spread", "negative"]), seed=st.integers(0, 10_000),
       m=st.sampled_from([5, 12, 30]))
def test_ritz_pairs_of_a_partial_run(kind, seed, m):
    n = 30
    eigs = spectrum_of_kind(kind, n, seed)
    A, _ = matrix_with_spectrum(eigs, seed)
    v0 = jnp.asarray(np.random.default_rng(seed).standard_normal(n))
    res = lanczos(lambda v: A @ v, v0, m, return_basis=True)
    pairs = ritz_pairs(res, vectors=True)
    assert pairs.values.shape == (int(res.num_valid),)
    check_pairs(A, pairs, eigs)
    if int(res.num_valid) == n:  # full depth: the Ritz values are the eigenvalues
        np.testing.assert_allclose(pairs.values, np.linalg.eigh(np.asarray(A))[0],
                                   atol=1e-9 * np.abs(eigs).max())


@pytest.mark.parametrize("driver,reduce", [("compiled", "scan"), ("host", "host")])
def test_ritz_pairs_of_a_curvature_operator_at_full_depth(driver, reduce):
    params = mlp_params(jax.random.key(0))
    data = make_data(jax.random.key(6), 37)
    op = curvature_operator(mlp_loss, params, batch_dataset(data, 8), reduce=reduce)
    H = np.asarray(dense_hessian(mlp_loss, params, data))
    eigs = np.linalg.eigh(H)[0]
    v0 = jnp.asarray(np.random.default_rng(1).standard_normal(op.size))
    res = run_lanczos(op, v0, op.size, driver=driver, return_basis=True)
    pairs = ritz_pairs(res, vectors=True)
    check_pairs(H, pairs, eigs)
    # every Ritz value is an eigenvalue (a Hessian may have repeated or zero eigenvalues, which
    # Lanczos sees once: compare as sets)
    assert np.abs(pairs.values[:, None] - eigs[None, :]).min(axis=1).max() <= 1e-9
    top = ritz_pairs(res, vectors=[-1])
    np.testing.assert_allclose(top.vectors[0], pairs.vectors[-1], atol=1e-12)
    np.testing.assert_allclose(top.values[-1], eigs[-1], atol=1e-9)


def test_ritz_pairs_need_the_basis_for_vectors():
    res = lanczos(lambda v: 2.0 * v, jnp.ones(3), 2)
    assert ritz_pairs(res).vectors is None
    with pytest.raises(ValueError, match="return_basis"):
        ritz_pairs(res, vectors=True)


def test_ritz_residual_bounds_the_error_of_a_converged_float32_pair():
    """ritz.py: theta_j lies within its residual of an eigenvalue. A converged float32 pair gets
    the recurrence estimate beta_k |e_k^T s_j| = 0.0, yet theta is ~1e-7 off (measured residual
    ~1.7e-7): the reported 'error bound' is below the rounding floor."""
    d = np.linspace(1.0, 2.0, 200).astype(np.float32)
    d[-1] = 10.0
    res = run_lanczos(lambda v: jnp.asarray(d) * v, jnp.ones(200, jnp.float32), 60,
                      return_basis=True)
    pairs = ritz_pairs(res, vectors=[-1])
    y = np.asarray(pairs.vectors[0], np.float64)
    measured = np.linalg.norm(d * y - pairs.values[-1] * y)
    assert abs(pairs.values[-1] - 10.0) <= pairs.residuals[-1]
    assert pairs.residuals[-1] >= 0.5 * measured
