"""A jaxspec curvature operator in other JAX linear-algebra libraries: matfree's stochastic trace
estimators and Lanczos quadrature, and lineax's CG, against dense references.

They trace the operator (vmap, while loops), so it is built with the traceable scan reduction.
"""

import jax
import jax.numpy as jnp
import lineax  # the dev extra installs both: a missing one fails, it is not skipped
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from matfree import decomp, funm, stochtrace

from hessians import dense_hessian, make_data
from jaxspec import batch_dataset, curvature_operator

pytestmark = pytest.mark.usefixtures("strict_promotion")


def softmax_regression(params, batch):
    """Convex: its Hessian is positive semidefinite (CG needs H + lambda I definite)."""
    logits = batch["x"] @ params["w"] + params["b"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2))), "b": jnp.asarray(rng.normal(size=2))}
    data = make_data(jax.random.key(6), 37)
    op = curvature_operator(softmax_regression, params, batch_dataset(data, 8), reduce="scan")
    H = np.asarray(dense_hessian(softmax_regression, params, data))
    return op, H


def test_matfree_trace_estimator(case):
    op, H = case
    unravel = ravel_pytree(op.params)[1]
    dense = lambda v: unravel(jnp.asarray(H) @ ravel_pytree(v)[0])  # noqa: E731
    sampler = stochtrace.sampler_signs(op.params, num=64)  # pytree probes like the parameters
    estimate = stochtrace.estimator_monte_carlo(stochtrace.monte_carlo_trace(), sampler)
    key = jax.random.key(1)
    got = estimate(op.mv, key)
    want = estimate(dense, key)  # the same probes through the dense Hessian
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # and it estimates the trace: an unbiased estimate within a few standard errors
    offdiag = H - np.diag(np.diag(H))
    sem = np.sqrt(2 * np.sum(offdiag ** 2) / 64)
    assert abs(float(got) - np.trace(H)) <= 5 * sem + 1e-12


def test_matfree_lanczos_quadrature_of_a_matrix_function(case):
    op, H = case
    P = op.size
    integrand = funm.monte_carlo_funm_sym(funm.dense_funm_sym_eigh(jnp.exp),
                                          decomp.tridiag_sym(P))  # full depth: exact quadform
    sampler = stochtrace.sampler_normal(jnp.zeros(P), num=4)
    key = jax.random.key(2)
    got = stochtrace.estimator_monte_carlo(integrand, sampler)(op.mv, key)
    lam, Q = np.linalg.eigh(H)
    expm = (Q * np.exp(lam)) @ Q.T
    probes = np.asarray(sampler(key))
    want = np.mean([p @ expm @ p for p in probes])
    np.testing.assert_allclose(got, want, rtol=1e-8)


def test_lineax_cg_on_the_shifted_operator(case):
    op, H = case
    lam = 0.5
    b = jnp.asarray(np.random.default_rng(3).normal(size=op.size))
    A = lineax.FunctionLinearOperator(
        lambda v: op.mv(v) + lam * v, jax.eval_shape(lambda: b),
        tags=[lineax.symmetric_tag, lineax.positive_semidefinite_tag])
    sol = lineax.linear_solve(A, b, solver=lineax.CG(rtol=1e-12, atol=1e-12, max_steps=200))
    want = np.linalg.solve(H + lam * np.eye(op.size), np.asarray(b))
    np.testing.assert_allclose(sol.value, want, rtol=1e-8, atol=1e-10)
