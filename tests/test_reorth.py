"""Partial re-orthogonalisation (``reorth="partial"``) against plain Lanczos, full
re-orthogonalisation and dense eigh, on a float32 matrix with four outliers, with exact products
and with products whose input is rounded as a TF32 or bfloat16 matmul rounds it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec import Spectrum, lanczos_init, lanczos_step, ritz_pairs, run_lanczos
from jaxspec.io import LanczosCheckpoint
from jaxspec.reorth import CALIBRATION_STEPS, orthogonalise
from checkpoints import recorded_saves
from spectra import matrix_with_spectrum

pytestmark = pytest.mark.usefixtures("strict_promotion")

N, M, BLOCK = 300, 60, 32
SPIKES = np.array([10.0, 20.0, 50.0, 100.0])
EPS = float(np.finfo(np.float32).eps)


def _problem():
    rng = np.random.default_rng(0)
    eigs = np.concatenate([rng.uniform(0.0, 1.0, N - SPIKES.size), SPIKES])
    A, Q = matrix_with_spectrum(eigs, 1, dtype=np.float32)
    return A, Q, jnp.asarray(rng.standard_normal(N), jnp.float32)


A, EIGVECS, V0 = _problem()


def matvec(v):  # one function for every run: the compiled driver's program is reused
    return A @ v


def _run(driver, reorth, **kwargs):
    return run_lanczos(matvec, V0, M, driver=driver, reorth=reorth, block_size=BLOCK, **kwargs)


@pytest.fixture(scope="module")
def runs():
    return {(r, d): _run(d, r, return_basis=True)
            for r, d in [("partial", "host"), ("partial", "compiled"), ("full", "host")]}


def _plain_lanczos_ritz_values(A, v, m):
    """Ritz values of Lanczos without any re-orthogonalisation (float32, like the runs)."""
    A, q = np.asarray(A), np.asarray(v) / np.linalg.norm(np.asarray(v))
    q_prev, beta, alphas, betas = np.zeros_like(q), np.float32(0), [], []
    for _ in range(m):
        w = A @ q - beta * q_prev
        alpha = q @ w
        w = w - alpha * q
        beta = np.linalg.norm(w)
        alphas.append(alpha)
        betas.append(beta)
        q_prev, q = q, w / beta
    T = np.diag(alphas) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)
    return np.linalg.eigvalsh(T.astype(np.float64))


def _copies(values):
    return [int(np.sum(np.abs(values - s) < 1e-3 * s)) for s in SPIKES]


def test_no_ghosts_where_plain_lanczos_has_them(runs):
    plain = _copies(_plain_lanczos_ritz_values(A, V0, M))
    assert max(plain) >= 2, plain  # the failure partial re-orthogonalisation must prevent
    v = np.asarray(V0, np.float64)
    proj2 = (EIGVECS.T @ v) ** 2 / float(v @ v)  # exact weights of v on the eigenvectors
    for driver in ("host", "compiled"):
        pairs = ritz_pairs(runs["partial", driver])
        assert _copies(pairs.values) == [1] * SPIKES.size
        nearest = np.abs(pairs.values[:, None] - SPIKES[None, :]).argmin(axis=0)
        np.testing.assert_allclose(pairs.values[nearest], SPIKES, rtol=10 * EPS)
        np.testing.assert_allclose(pairs.weights[nearest], proj2[-SPIKES.size:], atol=1e-6)


def test_semi_orthogonal_with_fewer_passes_and_the_ritz_values_of_full(runs):
    full, partial = runs["full", "host"], runs["partial", "host"]
    Q = np.asarray(partial.basis, np.float64)
    assert np.abs(Q @ Q.T - np.eye(M + 1)).max() <= np.sqrt(EPS)
    assert int(full.passes) >= M and 0 < int(partial.passes) < M
    a, b = ritz_pairs(full), ritz_pairs(partial)
    # the same T up to float32 rounding: every Ritz value, converged or not, and every weight
    np.testing.assert_allclose(b.values, a.values, rtol=0, atol=10 * EPS * SPIKES.max())
    np.testing.assert_allclose(b.weights, a.weights, atol=1e-5)
    comp = runs["partial", "compiled"]
    assert int(comp.passes) == int(partial.passes)
    np.testing.assert_allclose(comp.alphas, partial.alphas, rtol=1e-6)


def test_moments_up_to_2m_minus_1_are_exact(runs):
    spec = Spectrum.from_lanczos(runs["partial", "host"])
    k_max = 2 * int(spec.nodes.size) - 1
    assert k_max == 2 * M - 1
    moments = spec.moments(k_max)
    An, v = np.asarray(A, np.float64), np.asarray(V0, np.float64)
    x = v.copy()
    for k in range(k_max + 1):  # v^T A^k v / |v|^2 of the float32 matrix, in float64
        exact = float(v @ x) / float(v @ v)
        # float32 rounding of T, grown at most linearly with the power
        assert abs(moments[k] - exact) <= (k + 1) * EPS * SPIKES.max() ** k, (k, moments[k])
        x = An @ x


@pytest.mark.parametrize("driver", ["host", "compiled"])
def test_resume_is_identical(tmp_path, runs, driver):
    """Killed after its second checkpoint and resumed: the same T, basis and passes as the run
    that was never interrupted (the omega estimates are part of the saved state)."""
    path = tmp_path / "state.npz"
    with pytest.raises(KeyboardInterrupt), recorded_saves(die_after=2) as saved:
        _run(driver, "partial", chunk_size=16, hooks=[LanczosCheckpoint(path)])
    assert saved == [16, 32]
    resumed = _run(driver, "partial", chunk_size=16, hooks=[LanczosCheckpoint(path)],
                   return_basis=True)
    whole = runs["partial", driver]
    for field in ("alphas", "betas", "basis", "passes"):
        np.testing.assert_array_equal(np.asarray(getattr(resumed, field)),
                                      np.asarray(getattr(whole, field)))


def _rounded(v, bits):
    """``v`` with its float32 mantissa cut to ``bits`` bits (TF32 keeps 10, bfloat16 7)."""
    mask = np.uint32((0xFFFFFFFF << (23 - bits)) & 0xFFFFFFFF)
    return jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(v, jnp.uint32) & mask,
                                        jnp.float32)


@pytest.mark.parametrize("bits", [16, 10])
def test_coarse_products_keep_the_accuracy_of_full(runs, bits):
    """A product ``A round(v)`` errs by about ``2^-bits |A|``, far above the ``eps |T|`` of
    Simon's model: with the unit fixed at eps the estimates trail the real loss of
    orthogonality and T grows ghosts of the outliers. The calibration passes and the measured
    unit keep the run semi-orthogonal, ghost-free, and as close to full re-orthogonalisation's
    Ritz values and weights as the products' own accuracy allows. At TF32's 10 bits the unit
    rises and nearly every step takes a pass."""
    coarse = jax.jit(lambda v: A @ _rounded(v, bits))
    part = run_lanczos(coarse, V0, M, reorth="partial", block_size=BLOCK, return_basis=True)
    full = run_lanczos(coarse, V0, M, reorth="full", block_size=BLOCK)
    Q = np.asarray(part.basis, np.float64)
    assert np.abs(Q @ Q.T - np.eye(M + 1)).max() <= 2 * np.sqrt(EPS)
    a, b = ritz_pairs(full), ritz_pairs(part)
    assert _copies(b.values) == [1] * SPIKES.size
    err = 2.0 ** -bits  # the products' relative accuracy bounds the comparison
    np.testing.assert_allclose(b.values, a.values, rtol=0, atol=10 * err * SPIKES.max())
    np.testing.assert_allclose(b.weights, a.weights, atol=err)
    exact = runs["partial", "host"]
    assert float(exact.unit) == EPS  # exact products: the estimates were never exceeded
    if bits == 10:
        assert float(part.unit) > 10 * EPS and int(part.passes) > int(exact.passes) + M // 3


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="reorth must be one of"):
        run_lanczos(matvec, V0, 3, reorth="selective")


def test_checkpoint_without_estimates_resumes_a_full_run(tmp_path, runs):
    """A checkpoint that holds no omega estimates (written before the state had them) is taken
    as a fully re-orthogonalised run, and resumes it exactly."""
    path = tmp_path / "state.npz"
    with pytest.raises(KeyboardInterrupt), recorded_saves(die_after=2):
        _run("host", "full", chunk_size=16, hooks=[LanczosCheckpoint(path)])
    with np.load(path) as f:
        old = {k: f[k] for k in f.files if k not in ("omega", "passes", "unit")}
    np.savez(path, **old)
    resumed = _run("host", "full", chunk_size=16, hooks=[LanczosCheckpoint(path)],
                   return_basis=True)
    whole = runs["full", "host"]
    for field in ("alphas", "betas", "basis"):
        np.testing.assert_array_equal(np.asarray(getattr(resumed, field)),
                                      np.asarray(getattr(whole, field)))


def _passes_after_a_pass(beta, older_fresh=False):
    """Passes ``orthogonalise`` makes at step 5 for a ``w`` orthogonal to the basis (``|w| =
    beta``) whose estimates are far under the threshold, where ``q_5``'s row is fresh (step 4
    re-orthogonalised it) and ``q_4``'s is fresh too or not (``older_fresh``)."""
    n, i, size = 12, 5, 11
    Q = jnp.eye(n, dtype=jnp.float32)[:i + 1]
    k = np.arange(size)
    fresh = np.where(k < i, EPS, np.where(k == i, 1, 0))
    spread = 1 if older_fresh else 1 + k / 10  # equal entries: the row a pass leaves
    older = np.where(k < i - 1, EPS * spread, np.where(k == i - 1, 1, 0))
    ones = jnp.ones(size - 1, jnp.float32)
    *_, passes, _ = orthogonalise(
        "partial", lambda w: (w - (Q @ w) @ Q, Q @ w), beta * jnp.eye(n, dtype=jnp.float32)[-1],
        i, jnp.float32(1), jnp.asarray(np.stack([older, fresh]), jnp.float32), ones, ones)
    return int(passes)


def test_the_vector_after_a_pass_is_reorthogonalised_where_a_clean_pair_lasts():
    assert _passes_after_a_pass(1.0) == 1  # growth ~ |T| / beta ~ 3 a step: Simon's second pass
    assert _passes_after_a_pass(1.0, older_fresh=True) == 0  # already a pair: no third pass
    assert _passes_after_a_pass(0.02) == 0  # growth in the hundreds: the estimates decide


def test_second_passes_come_in_pairs_and_keep_the_accuracy_of_full():
    """On a spectrum decaying exponentially the estimates grow slowly from a clean pair: every
    pass after the calibration is followed by a second, then several steps without, where the
    estimates alone made a pass every other step (19 passes in 60 steps against 13)."""
    n, m = 400, 60
    B, _ = matrix_with_spectrum(np.exp(-np.arange(n) / 40), 1, dtype=np.float32)
    v0 = jnp.asarray(np.random.default_rng(0).standard_normal(n), jnp.float32)
    step = jax.jit(lambda s, w: lanczos_step(s, w, reorth="partial"))
    state, made = lanczos_init(v0, m), []
    for i in range(m):
        before = int(state.passes)
        state = step(state, B @ state.basis[i])
        made.append(int(state.passes) > before)
    runs_of_passes = "".join("1" if p else "0" for p in made[CALIBRATION_STEPS:]).split("0")
    assert all(len(r) != 1 for r in runs_of_passes), made
    assert 0 < sum(made) < m // 4
    Q = np.asarray(state.basis[:m + 1], np.float64)
    assert np.abs(Q @ Q.T - np.eye(m + 1)).max() <= 2 * np.sqrt(EPS)
    full = run_lanczos(lambda v: B @ v, v0, m, reorth="full")
    np.testing.assert_allclose(Spectrum.from_lanczos(state).nodes,
                               Spectrum.from_lanczos(full).nodes, rtol=1e-4, atol=1e-6)


def test_after_a_pass_the_estimates_cover_what_the_pass_left():
    """A pass against a semi-orthogonal basis (pairwise loss ~1e-4) removes a component spread
    over 30 rows (|h|_1 = 3 |w'|, |h|_2 = 0.55 |w'|: no DGKS second pass): the vector keeps
    ~1e-4 of the basis. The estimates must not say less than the loss left (the unit would say
    1e-7, 1000x under it); here the bound calls for a second pass, which leaves ~1e-8."""
    rng = np.random.default_rng(0)
    n, i = 200, 29
    Q0, _ = np.linalg.qr(rng.standard_normal((n, i + 2)))
    Q0, r = Q0.T[:i + 1], Q0.T[i + 1]  # orthonormal rows, and a unit vector orthogonal to them
    S = rng.uniform(-1e-4, 1e-4, (i + 1, i + 1))
    Q = (np.eye(i + 1) + (S + S.T) / 2) @ Q0  # semi-orthogonal: |Q Q^T - I| ~ 2e-4
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    assert 1e-5 < np.abs(Q @ Q.T - np.eye(i + 1)).max() < np.sqrt(EPS)
    w = jnp.asarray(0.1 * Q.sum(0) + r, jnp.float32)
    Qj = jnp.asarray(Q, jnp.float32)
    size = i + 2
    ones = jnp.ones(size - 1, jnp.float32)
    loss = jnp.asarray(np.where(np.arange(size) <= i, 1e-2, 0), jnp.float32)  # over: a pass
    w, _, norm2, omega, passes, _ = orthogonalise(
        "partial", lambda w: (w - (Qj @ w) @ Qj, Qj @ w), w, i, jnp.float32(1),
        jnp.stack([loss, loss]), ones, ones)
    left = np.abs(Q @ np.asarray(w, np.float64)) / np.sqrt(float(norm2))
    assert left.max() <= np.asarray(omega[1][:i + 1]).min() and int(passes) == 2
