"""Stochastic trace, diagonal and log-determinant estimators against dense linear algebra.

The statistical tests use many seeds and can fail by chance; their thresholds (4-5 standard
errors, a factor between mean squared errors that is ~50 in expectation) make that rare.
"""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matfree import stochtrace

import jaxspec
from jaxspec import hutch_plus_plus, hutchinson, hutchinson_diagonal, logdet, xtrace
from compiles import compilations
from mlp_problem import mlp_loss, mlp_problem
from spectra import random_orthogonal

P = 60


@functools.lru_cache(maxsize=None)
def low_rank_plus_noise():
    """Five dominant eigenvalues over a small PSD bulk: where Hutch++ shines."""
    rng = np.random.default_rng(0)
    U = random_orthogonal(1, P)[:, :5]
    W = rng.standard_normal((P, P))
    A = (U * np.array([50.0, 40.0, 30.0, 20.0, 10.0])) @ U.T + 0.05 * W @ W.T / P
    return jnp.asarray(0.5 * (A + A.T))


def matvec_of(A):
    return lambda v: A @ v


def test_hutchinson_and_hutch_plus_plus_unbiased_and_hutch_plus_plus_better():
    A = low_rank_plus_noise()
    truth = float(jnp.trace(A))
    mv = matvec_of(A)
    seeds = range(100)
    budget = 18
    with jax.numpy_dtype_promotion("strict"):
        plain = np.array([hutchinson(mv, jax.random.key(s), P, num_probes=budget,
                                     dtype=jnp.float64).value for s in seeds])
        plus = [hutch_plus_plus(mv, jax.random.key(s), P, num_matvecs=budget, dtype=jnp.float64)
                for s in seeds]
    plus_values = np.array([e.value for e in plus])
    assert all(e.num_matvecs == budget for e in plus)
    n = len(seeds)
    for values in (plain, plus_values):  # unbiased: the mean over seeds within 4.5 SE
        assert abs(values.mean() - truth) <= 4.5 * values.std(ddof=1) / np.sqrt(n)
    mse_plain = np.mean((plain - truth) ** 2)
    mse_plus = np.mean((plus_values - truth) ** 2)
    assert mse_plus < 0.2 * mse_plain, (mse_plus, mse_plain)
    # the reported standard errors are honest on average (z-scores of spread ~1)
    z = (plus_values - truth) / np.array([e.stderr for e in plus])
    assert 0.5 < np.std(z) < 2.0


def test_hutchinson_standard_error_and_batches():
    A = low_rank_plus_noise()
    mv = matvec_of(A)
    key = jax.random.key(3)
    whole = hutchinson(mv, key, P, num_probes=20, dtype=jnp.float64)
    for batch_size in (1, 10):  # probe i comes from key i: the batches change nothing
        other = hutchinson(mv, key, P, num_probes=20, batch_size=batch_size, dtype=jnp.float64)
        assert other.value == pytest.approx(whole.value, rel=1e-12)
        assert other.stderr == pytest.approx(whole.stderr, rel=1e-9)
    normal = hutchinson(mv, key, P, num_probes=20, distribution="normal", dtype=jnp.float64)
    assert abs(normal.value - float(jnp.trace(A))) < 5 * normal.stderr
    with pytest.raises(ValueError, match="distribution"):
        hutchinson(mv, key, P, distribution="uniform", dtype=jnp.float64)


def test_diagonal_converges_to_diag():
    A = low_rank_plus_noise()
    d = np.asarray(jnp.diag(A))
    errors = []
    for num in (50, 2000):
        est = hutchinson_diagonal(matvec_of(A), jax.random.key(1), P, num_probes=num,
                                  batch_size=500, dtype=jnp.float64)
        assert est.value.shape == (P,) and est.num_matvecs == num
        err = np.abs(np.asarray(est.value) - d)
        assert np.mean(err <= 4 * np.asarray(est.stderr)) > 0.95
        errors.append(np.linalg.norm(err))
    assert errors[1] < 0.3 * errors[0]  # ~ 1/sqrt(40) in expectation


def test_xtrace_from_matfree():
    A = low_rank_plus_noise()
    est = xtrace(matvec_of(A), jax.random.key(0), P, num_probes=9, dtype=jnp.float64)
    assert est.num_matvecs == 18
    assert abs(est.value - float(jnp.trace(A))) < 0.5  # the bulk's trace is ~3, its spread less


@pytest.mark.parametrize("num_probes", [5, 7, 10, 12])
def test_xtrace_with_as_many_products_as_the_dimension_is_exact(num_probes):
    """From 2 num_probes >= dim on, XTrace is the dense trace (matfree's exact branch,
    differentiated by jax.jacfwd through the one-at-a-time products); more probes than the
    dimension take the same branch."""
    A = low_rank_plus_noise()[:10, :10]
    est = xtrace(matvec_of(A), jax.random.key(0), 10, num_probes=num_probes, dtype=jnp.float64)
    assert est.num_matvecs == 10 and est.stderr == 0.0
    assert abs(est.value - float(jnp.trace(A))) < 1e-12 * float(jnp.abs(A).max())


def test_logdet_matches_slogdet_within_its_standard_error():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((P, P // 2))
    A = jnp.asarray(W @ W.T / P)  # PSD, rank P/2: half the eigenvalues are zero
    shift = 0.3
    sign, truth = np.linalg.slogdet(np.asarray(A) + shift * np.eye(P))
    assert sign == 1
    with jax.numpy_dtype_promotion("strict"):
        est = logdet(matvec_of(A), jax.random.key(0), P, 25, shift=shift, num_probes=20,
                     dtype=jnp.float64, driver="compiled")
    assert est.num_matvecs <= 20 * 25
    assert abs(est.value - truth) <= 4 * est.stderr, (est, truth)
    with pytest.raises(ValueError, match="positive semi-definite"):
        logdet(matvec_of(A - jnp.eye(P)), jax.random.key(0), P, 10, shift=0.1, num_probes=2,
               dtype=jnp.float64)


def test_rejects_bad_counts_and_dimensions():
    mv = matvec_of(jnp.eye(4))
    with pytest.raises(ValueError, match="num_probes"):
        hutchinson(mv, jax.random.key(0), 4, num_probes=0, dtype=jnp.float64)
    with pytest.raises(ValueError, match="num_matvecs"):
        hutch_plus_plus(mv, jax.random.key(0), 4, num_matvecs=2, dtype=jnp.float64)
    # a wrong dimension or matvec fails before any product, a NaN product after them
    for estimate in (hutchinson, hutchinson_diagonal, hutch_plus_plus, xtrace):
        with pytest.raises(TypeError, match="could not be evaluated on a vector"):
            estimate(mv, jax.random.key(0), 5, dtype=jnp.float64)
        with pytest.raises(TypeError, match="returned shape"):
            estimate(lambda v: v[:3], jax.random.key(0), 4, dtype=jnp.float64)
        with pytest.raises(FloatingPointError, match="not finite"):
            estimate(lambda v: v * jnp.nan, jax.random.key(0), 4, dtype=jnp.float64)


def mlp_operator(reduce):
    params, data, H = mlp_problem()
    op = jaxspec.curvature_operator(mlp_loss, params, jaxspec.batch_dataset(data, 20),
                                    reduce=reduce)
    return op, H


def test_host_reduced_mlp_operator_probe_by_probe():
    op, H = mlp_operator("host")  # not traceable: probes applied one by one, host Lanczos
    key = jax.random.key(0)
    tr = hutchinson(op, key, op.size, num_probes=60)
    assert abs(tr.value - np.trace(H)) <= 5 * tr.stderr
    diag = hutchinson_diagonal(op, key, op.size, num_probes=60)
    assert np.mean(np.abs(np.asarray(diag.value) - np.diag(H)) <= 5 * diag.stderr) > 0.9
    shift = 1.0 - min(0.0, np.linalg.eigvalsh(H)[0])  # H + shift I positive definite
    truth = np.linalg.slogdet(H + shift * np.eye(op.size))[1]
    ld = logdet(op, key, op.size, 20, shift=shift, num_probes=8)
    assert abs(ld.value - truth) <= 5 * ld.stderr + 1e-8
    # XTrace vmaps its products: the same matrix by lax.scan, the same estimate as from scan
    xt = xtrace(op, key, op.size, num_probes=5)
    assert xt.value == pytest.approx(xtrace(op.with_reduce("scan"), key, op.size,
                                            num_probes=5).value, rel=1e-12)
    assert abs(xt.value - np.trace(H)) <= 5 * xt.stderr


def test_scan_reduced_mlp_operator_vmapped():
    op, H = mlp_operator("scan")
    key = jax.random.key(0)
    tr = hutchinson(op, key, op.size, num_probes=60, batch_size=30)
    assert abs(tr.value - np.trace(H)) <= 5 * tr.stderr
    # Hutch++ with a budget of three times the dimension sketches the whole space: exact
    full = hutch_plus_plus(op, key, op.size, num_matvecs=3 * op.size, batch_size=45)
    assert full.value == pytest.approx(np.trace(H), rel=1e-9, abs=1e-9)


def test_estimates_of_an_operator_linearise_it_once_and_blocks_share_one_program(monkeypatch):
    op, H = mlp_operator("scan")
    key = jax.random.key(0)
    whole = hutchinson(op, key, op.size, num_probes=20)
    diagonal = hutchinson_diagonal(op, key, op.size, num_probes=20)
    built = []
    real = jaxspec.CurvatureOperator.linearized

    def counted(self, rows=None):
        out = real(self, rows)
        built.append(out.linear)
        return out

    monkeypatch.setattr(jaxspec.CurvatureOperator, "linearized", counted)
    trace = importlib.import_module("jaxspec.trace")
    # blocks of 7 probes: 7 + 7 + 6, the last one padded, all through one compiled loop
    monkeypatch.setattr(trace, "_BLOCK_BYTES", 7 * op.size * 8)
    with compilations() as seen:
        blocked = hutchinson(op, key, op.size, num_probes=20)
    assert [name for name in seen if "_mapped" in name] == ["jit(_mapped)"]
    assert blocked.value == pytest.approx(whole.value, rel=1e-12)
    assert blocked.stderr == pytest.approx(whole.stderr, rel=1e-9)
    np.testing.assert_allclose(
        hutchinson_diagonal(op, key, op.size, num_probes=20).value, diagonal.value, rtol=1e-12)
    hutch_plus_plus(op, key, op.size, num_matvecs=12)
    xtrace(op, key, op.size, num_probes=5)
    jaxspec.eigsh(op, jnp.ones(op.size), 2)
    # every estimator linearised the operator once, and its cache holds the whole data set
    assert len(built) == 5 and all(cache is not None and cache.count == 2 for cache in built)


def test_rademacher_probes_take_one_bit_of_a_random_word_each():
    signs = np.asarray(jaxspec.random_probe(jax.random.key(0), 32 * 4096 + 5,
                                            distribution="rademacher"))
    assert signs.shape == (32 * 4096 + 5,) and set(np.unique(signs)) == {-1.0, 1.0}
    bits = signs[:32 * 4096].reshape(4096, 32)  # row: one word, column: one bit position
    # every bit position a fair coin, neighbouring bits uncorrelated (5 standard errors)
    assert np.all(np.abs(bits.mean(axis=0)) < 5 / np.sqrt(4096))
    assert np.all(np.abs(np.mean(bits[:, 1:] * bits[:, :-1], axis=0)) < 5 / np.sqrt(4096))
    other = np.asarray(jaxspec.random_probe(jax.random.key(1), 64, distribution="rademacher"))
    assert not np.array_equal(other, signs[:64])


def test_xtrace_applies_vmapped_products_one_after_another_and_compiles_once():
    op, H = mlp_operator("scan")
    trace = importlib.import_module("jaxspec.trace")
    one_at_a_time = jax.tree_util.Partial(trace._one_at_a_time, op)
    block = jnp.ones((3, op.size))
    jaxpr = str(jax.make_jaxpr(jax.vmap(one_at_a_time))(block))
    assert "length=3" in jaxpr  # lax.map: a loop over the three vectors, not a batch of three
    np.testing.assert_allclose(jax.vmap(one_at_a_time)(block), block @ H, rtol=1e-10)
    key = jax.random.key(0)
    first = xtrace(op, key, op.size, num_probes=5)
    with compilations() as seen:
        again = xtrace(op, jax.random.key(1), op.size, num_probes=5)
    assert seen == [] and first.num_matvecs == again.num_matvecs == 10
    # the same numbers as matfree's estimator with its own vmap over the probes
    sampler = stochtrace.sampler_normal(jnp.zeros(op.size, op.dtype), num=5)
    mean, sem = jax.jit(stochtrace.estimator_leave_one_out_mean_and_sem(
        stochtrace.leave_one_out_xtrace(), sampler))(op, key)
    assert first.value == pytest.approx(float(mean), rel=1e-9)
    assert first.stderr == pytest.approx(float(sem), rel=1e-9)


def test_values_and_standard_errors_are_the_documented_sample_statistics():
    """Each estimate is the mean of its per-probe samples and its standard error
    ``std(samples, ddof=1) / sqrt(n)``; logdet's sample is ``v^T log(A + shift I) v`` with the
    probe's own ``|v|^2`` (normal probes: not ``P``), exact at full depth. Few probes, so a
    ``ddof=0`` or a ``P`` in place of ``|v|^2`` is far outside the tolerances."""
    A = np.asarray(low_rank_plus_noise())
    key, n, shift = jax.random.key(5), 4, 0.1
    keys = jax.random.split(key, n)

    def probes(distribution):
        return [np.asarray(jaxspec.random_probe(k, P, dtype=jnp.float64,
                                                distribution=distribution)) for k in keys]

    def check(est, samples):
        samples = np.asarray(samples)
        np.testing.assert_allclose(est.value, samples.mean(axis=0), rtol=1e-10)
        np.testing.assert_allclose(est.stderr, samples.std(axis=0, ddof=1) / np.sqrt(n),
                                   rtol=1e-8)

    rademacher = probes("rademacher")
    check(hutchinson(matvec_of(jnp.asarray(A)), key, P, num_probes=n, dtype=jnp.float64),
          [v @ A @ v for v in rademacher])
    check(hutchinson_diagonal(matvec_of(jnp.asarray(A)), key, P, num_probes=n,
                              dtype=jnp.float64), [v * (A @ v) for v in rademacher])
    lam, U = np.linalg.eigh(A)
    log_shifted = (U * np.log(lam + shift)) @ U.T
    est = logdet(matvec_of(jnp.asarray(A)), key, P, P, shift=shift, num_probes=n,
                 distribution="normal", dtype=jnp.float64)
    check(est, [v @ log_shifted @ v for v in probes("normal")])


def test_hutch_plus_plus_is_the_documented_estimator():
    """``s = num_matvecs // 3`` sketch probes from the first ``s`` keys, ``g = num_matvecs - 2 s``
    Hutchinson probes from the rest, deflated by ``Q = orth(A S)``: the estimate and its
    standard error against the same computation done densely in float64."""
    A = np.asarray(low_rank_plus_noise())
    key, budget = jax.random.key(2), 14
    s, g = budget // 3, budget - 2 * (budget // 3)
    probes = np.stack([np.asarray(jaxspec.random_probe(k, P, dtype=jnp.float64,
                                                       distribution="rademacher"))
                       for k in jax.random.split(key, s + g)])
    Q = np.linalg.qr((probes[:s] @ A).T)[0].T
    G = probes[s:] - (probes[s:] @ Q.T) @ Q
    samples = np.einsum("ij,jk,ik->i", G, A, G)
    est = hutch_plus_plus(matvec_of(jnp.asarray(A)), key, P, num_matvecs=budget,
                          dtype=jnp.float64)
    assert est.value == pytest.approx(np.trace(Q @ A @ Q.T) + samples.mean(), rel=1e-10)
    assert est.stderr == pytest.approx(samples.std(ddof=1) / np.sqrt(g), rel=1e-8)
    assert est.num_matvecs == budget
