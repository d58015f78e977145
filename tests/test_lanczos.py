"""Lanczos against dense eigh on matrices with prescribed spectra, and its failure modes."""

import importlib
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxspec import (
    Spectrum,
    lanczos,
    lanczos_init,
    run_lanczos,
    slq,
)
from jaxspec.io import LanczosCheckpoint, load_lanczos_state
from checkpoints import recorded_saves
from spectra import matrix_with_spectrum, spectrum_of_kind

pytestmark = pytest.mark.usefixtures("strict_promotion")

KINDS = ["spread", "clustered", "negative", "near_degenerate"]


def _cluster_weights(eigs, proj2, nodes):
    """Weights that full-depth Lanczos should give: each eigenvalue's squared projection goes to
    its nearest node (eigenvalues closer than the breakdown threshold share one node)."""
    nearest = np.abs(eigs[:, None] - nodes[None, :]).argmin(axis=1)
    return np.bincount(nearest, weights=proj2, minlength=nodes.size)


# each example compiles a Lanczos run of its own size: fewer examples keep the suite fast
@settings(max_examples=12)
@given(kind=st.sampled_from(KINDS), n=st.integers(4, 40), seed=st.integers(0, 10_000))
def test_full_depth_recovers_eigenvalues_and_weights(kind, n, seed):
    eigs = spectrum_of_kind(kind, n, seed)
    A, Q = matrix_with_spectrum(eigs, seed)
    v0 = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(n))
    res = lanczos(lambda v: A @ v, v0, n)
    spec = Spectrum.from_lanczos(res)
    scale = np.abs(eigs).max()
    # every eigenvalue is a node and every node an eigenvalue (clusters below the breakdown
    # threshold collapse into one node, so compare as sets)
    d_eig = np.abs(eigs[:, None] - spec.nodes[None, :]).min(axis=1)
    d_node = np.abs(spec.nodes[:, None] - eigs[None, :]).min(axis=1)
    assert d_eig.max() <= 1e-7 * scale and d_node.max() <= 1e-7 * scale
    # weights are the squared projections of v0 / |v0| on the eigenvectors
    proj2 = (Q.T @ np.asarray(v0)) ** 2 / float(v0 @ v0)
    expected = _cluster_weights(eigs, proj2, spec.nodes)
    np.testing.assert_allclose(spec.weights, expected, atol=1e-7)
    if kind == "spread":  # distinct eigenvalues: no breakdown before the end
        assert int(res.num_valid) == n


@settings(max_examples=12)
@given(kind=st.sampled_from(KINDS), n=st.integers(20, 60), m=st.integers(2, 10),
       seed=st.integers(0, 10_000))
def test_partial_depth_matches_moments(kind, n, m, seed):
    eigs = spectrum_of_kind(kind, n, seed)
    A, _ = matrix_with_spectrum(eigs, seed)
    v = np.random.default_rng(seed + 2).standard_normal(n)
    spec = Spectrum.from_lanczos(lanczos(lambda x: A @ x, jnp.asarray(v), m))
    k_max = 2 * int(spec.nodes.size) - 1
    moments = spec.moments(k_max)
    An = np.asarray(A)
    scale = np.abs(eigs).max()
    x = v.copy()
    for k in range(k_max + 1):
        exact = float(v @ x) / float(v @ v)
        assert abs(moments[k] - exact) <= 1e-8 * max(1.0, scale) ** k, (k, moments[k], exact)
        x = An @ x


def test_lanczos_relation_and_orthogonality_float64():
    eigs = spectrum_of_kind("spread", 80, 3)
    A, _ = matrix_with_spectrum(eigs, 3)
    m = 30
    res = lanczos(lambda v: A @ v, jnp.ones(80), m, return_basis=True)
    Q = np.asarray(res.basis)  # rows q_0 .. q_m
    T = np.diag(res.alphas) + np.diag(res.betas[:-1], 1) + np.diag(res.betas[:-1], -1)
    # A Q_m^T = Q_m^T T + beta_{m-1} q_m e_m^T
    lhs = np.asarray(A) @ Q[:m].T
    rhs = Q[:m].T @ T
    rhs[:, -1] += float(res.betas[-1]) * Q[m]
    assert np.abs(lhs - rhs).max() <= 1e-10 * np.abs(eigs).max()
    assert np.abs(Q @ Q.T - np.eye(m + 1)).max() <= 1e-12


def test_orthogonality_float32_ill_conditioned():
    n, m = 400, 100
    eigs = np.logspace(-6, 3, n)  # condition number 1e9: plain Lanczos loses orthogonality
    A, _ = matrix_with_spectrum(eigs, 5, dtype=np.float32)
    v0 = jax.random.normal(jax.random.key(1), (n,), jnp.float32)
    res = lanczos(lambda v: A @ v, v0, m, return_basis=True)
    assert res.alphas.dtype == jnp.float32 and int(res.num_valid) == m
    Q = np.asarray(res.basis, np.float64)
    assert np.abs(Q @ Q.T - np.eye(m + 1)).max() <= 1e-5
    assert Spectrum.from_lanczos(res).lambda_max == pytest.approx(1e3, rel=1e-5)


@pytest.mark.parametrize("reorth", ["full", "partial"])
@pytest.mark.parametrize("dtype,shift", [(np.float32, 1e4), (np.float64, 1e8)])
def test_a_shift_moves_every_node_and_ends_nothing(dtype, shift, reorth):
    """Lanczos is shift-invariant: T(A + c I) = T(A) + c I. A spread of 1 under a shift of
    1e4 (float32) or 1e8 (float64) is far below sqrt(eps) of |A q|, which a breakdown test
    against |A q| alone took for an invariant space after one step (a single node); here every
    step runs and the nodes are A's plus c, to rounding of the shifted products."""
    eigs = np.linspace(-1.0, 1.0, 60)
    A, _ = matrix_with_spectrum(eigs, 2)
    v0 = jnp.asarray(np.random.default_rng(4).standard_normal(60), dtype)
    base = Spectrum.from_lanczos(lanczos(lambda v: A @ v, v0.astype(jnp.float64), 20))
    shifted = jnp.asarray(A + shift * np.eye(60), dtype)
    res = run_lanczos(lambda v: shifted @ v, v0, 20, reorth=reorth, driver="host")
    assert int(res.num_valid) == 20
    spec = Spectrum.from_lanczos(res)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(spec.nodes - shift, base.nodes, rtol=0, atol=1e3 * eps * shift)
    np.testing.assert_allclose(spec.weights, base.weights, atol=1e3 * eps * shift)


# the operator scaled by powers of two, about 1e-25, 1e-19, 1, 7e19 and 1e25: in float32 the
# squares of its products' norms underflow below 1e-19 and overflow above 1.8e19
SCALE_EXPONENTS = [-83, -63, 0, 66, 83]


@settings(max_examples=10)
@given(exponent=st.sampled_from(SCALE_EXPONENTS), kind=st.sampled_from(KINDS),
       seed=st.integers(0, 10_000), reorth=st.sampled_from(["full", "partial"]),
       driver=st.sampled_from(["host", "compiled"]))
def test_t_scales_exactly_with_the_operator(exponent, kind, seed, reorth, driver):
    """T of ``2^k A`` is ``2^k`` times T of ``A``, bit for bit: a power of two scales every
    product, sum and norm exactly where nothing over- or underflows, and the norms neither do
    nor, where they take their rescaled path, round differently from the plain one
    (jaxspec.norms). So the nodes scale and the weights stay, to the float64 rounding of the
    tridiagonal eigenproblem. The plain norms made the first step a breakdown below 1e-19 (one
    node) and an overflow error above 1.8e19."""
    n, m = 100, 30
    A, _ = matrix_with_spectrum(spectrum_of_kind(kind, n, seed), seed, dtype=np.float32)
    v0 = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(n), jnp.float32)
    scale = 2.0**exponent
    # a Partial of the matrix: the compiled driver takes it as an argument, one compilation
    base, res = (run_lanczos(jax.tree_util.Partial(jnp.matmul, B), v0, m, reorth=reorth,
                             driver=driver) for B in (A, A * np.float32(scale)))
    assert int(res.num_valid) == int(base.num_valid) == m
    for field in ("alphas", "betas"):
        np.testing.assert_array_equal(np.asarray(getattr(res, field), np.float64) / scale,
                                      np.asarray(getattr(base, field), np.float64))
    spec, ref = Spectrum.from_lanczos(res), Spectrum.from_lanczos(base)
    np.testing.assert_allclose(spec.nodes / scale, ref.nodes, rtol=0,
                               atol=1e-12 * np.abs(ref.nodes).max())
    np.testing.assert_allclose(spec.weights, ref.weights, rtol=0, atol=1e-12)


@pytest.mark.parametrize("driver", ["compiled", "host"])
@pytest.mark.parametrize("scale", [1e-33, 1e33])
def test_products_outside_the_supported_scales_raise(scale, driver):
    """Below ``tiny sqrt(P) / eps`` (1e-30 at P = 100 in float32) the rounding of the entries
    is flushed to zero, above ``eps max`` (4e31) the sums have no headroom: the run stops at
    its first step and says so, rather than return numbers it cannot vouch for; under jit the
    step is reported as a non-finite one."""
    A = jnp.asarray(np.diag(np.linspace(1.0, 2.0, 100)) * scale, jnp.float32)
    v0 = jnp.ones(100, jnp.float32)
    with pytest.raises(FloatingPointError, match=r"step 0 .*outside the scales.*float32"):
        run_lanczos(lambda v: A @ v, v0, 10, driver=driver)
    res = jax.jit(lambda v: lanczos(lambda x: A @ x, v, 10))(v0)
    assert int(res.nonfinite_step) == 0 and int(res.num_valid) == 0


def test_breakdown_gives_exactly_the_distinct_eigenvalues():
    distinct = np.array([-2.0, 0.5, 1.0, 3.0, 10.0])
    eigs = np.repeat(distinct, 10)  # n = 50, five distinct eigenvalues
    A, Q = matrix_with_spectrum(eigs, 7)
    v0 = jnp.asarray(np.random.default_rng(0).standard_normal(50))
    for driver in ("compiled", "host"):
        res = run_lanczos(lambda v: A @ v, v0, 20, driver=driver)
        assert int(res.num_valid) == 5
        assert np.all(np.asarray(res.alphas[5:]) == 0) and np.all(np.asarray(res.betas[4:]) == 0)
        spec = Spectrum.from_lanczos(res)
        np.testing.assert_allclose(spec.nodes, distinct, atol=1e-10)
        proj2 = (Q.T @ np.asarray(v0)) ** 2 / float(v0 @ v0)
        np.testing.assert_allclose(spec.weights, _cluster_weights(eigs, proj2, distinct),
                                   atol=1e-10)


def test_jit_and_vmap():
    A, _ = matrix_with_spectrum(spectrum_of_kind("spread", 30, 1), 1)
    mv = lambda v: A @ v  # noqa: E731
    v0 = jnp.asarray(np.random.default_rng(3).standard_normal(30))
    eager = lanczos(mv, v0, 12)
    jitted = jax.jit(lambda v: lanczos(mv, v, 12))(v0)
    np.testing.assert_allclose(jitted.alphas, eager.alphas, rtol=1e-12)
    batched = jax.vmap(lambda v: lanczos(mv, v, 12))(jnp.stack([v0, 2 * v0]))
    np.testing.assert_allclose(batched.alphas[1], eager.alphas, rtol=1e-10)


def test_drivers_agree():
    A, _ = matrix_with_spectrum(spectrum_of_kind("negative", 60, 2), 2)
    v0 = jnp.asarray(np.random.default_rng(4).standard_normal(60))
    a = run_lanczos(lambda v: A @ v, v0, 25, driver="compiled", chunk_size=7)
    b = run_lanczos(jax.jit(lambda v: A @ v), v0, 25, driver="host")
    np.testing.assert_allclose(Spectrum.from_lanczos(a).nodes, Spectrum.from_lanczos(b).nodes,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block_size", [16, 4])
def test_host_resume_from_checkpoint_is_identical(tmp_path, block_size):
    """Block 16: the kill falls in the first block; block 4: past two block boundaries, so the
    host driver's lazily allocated blocks are saved and rebuilt."""
    A, _ = matrix_with_spectrum(spectrum_of_kind("spread", 50, 9), 9)
    v0 = jnp.asarray(np.random.default_rng(5).standard_normal(50))
    path = tmp_path / "state.npz"
    calls = {"n": 0}

    def dying(v):  # the process "dies" during the 3rd chunk
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return A @ v

    ckpt = lambda: [LanczosCheckpoint(path)]  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        run_lanczos(dying, v0, 20, driver="host", chunk_size=4, hooks=ckpt(),
                    block_size=block_size)
    assert int(load_lanczos_state(path).step) == 8
    with pytest.raises(ValueError, match="another shape"):  # another run: refused
        run_lanczos(lambda v: A @ v, v0, 30, driver="host", hooks=ckpt(), block_size=block_size)
    with pytest.raises(ValueError, match="start vector"):
        run_lanczos(lambda v: A @ v, 2 * v0 + 1, 20, driver="host", hooks=ckpt(),
                    block_size=block_size)
    resumed = run_lanczos(lambda v: A @ v, v0, 20, driver="host", chunk_size=4, hooks=ckpt(),
                          block_size=block_size, return_basis=True)
    full = run_lanczos(lambda v: A @ v, v0, 20, driver="host", block_size=block_size,
                       return_basis=True)
    np.testing.assert_array_equal(np.asarray(resumed.alphas), np.asarray(full.alphas))
    np.testing.assert_array_equal(np.asarray(resumed.betas), np.asarray(full.betas))
    np.testing.assert_array_equal(np.asarray(resumed.basis), np.asarray(full.basis))


def test_compiled_resume_after_interrupt(tmp_path):
    """Kill the compiled driver right after its second checkpoint, then resume."""
    A, _ = matrix_with_spectrum(spectrum_of_kind("spread", 40, 11), 11)
    v0 = jnp.asarray(np.random.default_rng(6).standard_normal(40))
    path = tmp_path / "state.npz"
    with pytest.raises(KeyboardInterrupt), recorded_saves(die_after=2) as killed_at:
        run_lanczos(lambda v: A @ v, v0, 15, driver="compiled", chunk_size=4,
                    hooks=[LanczosCheckpoint(path)])
    assert killed_at == [4, 8] and int(load_lanczos_state(path).step) == 8
    resumed = run_lanczos(lambda v: A @ v, v0, 15, driver="compiled", chunk_size=4,
                          hooks=[LanczosCheckpoint(path)])
    full = run_lanczos(lambda v: A @ v, v0, 15, driver="compiled", chunk_size=4)
    np.testing.assert_array_equal(np.asarray(resumed.alphas), np.asarray(full.alphas))
    np.testing.assert_array_equal(np.asarray(resumed.betas), np.asarray(full.betas))


# ---- bad input -------------------------------------------------------------------------------

def test_bad_start_vectors():
    mv = lambda v: v  # noqa: E731
    with pytest.raises(ValueError, match="zero vector"):
        lanczos(mv, jnp.zeros(5), 3)
    with pytest.raises(ValueError, match="NaN or Inf"):
        lanczos(mv, jnp.array([1.0, jnp.nan]), 2)
    with pytest.raises(ValueError, match="1-D"):
        lanczos(mv, jnp.ones((2, 2)), 2)
    with pytest.raises(TypeError, match="floating"):
        lanczos(mv, jnp.ones(3, jnp.int32), 2)
    with pytest.raises(ValueError, match="positive int"):
        lanczos(mv, jnp.ones(3), 0)
    for driver in ("host", "compiled"):
        with pytest.raises(ValueError, match="block_size"):
            run_lanczos(mv, jnp.ones(3), 2, block_size=0, driver=driver)


def test_num_steps_larger_than_dim_is_clamped_with_warning():
    A = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
    with pytest.warns(UserWarning, match="clamped to 3"):
        res = lanczos(lambda v: A @ v, jnp.ones(3), 10)
    assert res.alphas.shape == (3,)
    np.testing.assert_allclose(Spectrum.from_lanczos(res).nodes, [1, 2, 3], atol=1e-12)
    B = jnp.diag(jnp.arange(1.0, 5.0))   # another shape: the check runs when a step is traced
    with pytest.warns(UserWarning, match="clamped to 4"):   # the spectrum records the steps taken
        s = slq(lambda v: B @ v, jax.random.key(0), 4, 10, dtype=B.dtype)
    assert s.meta["num_steps"] == 4


def test_matvec_with_wrong_shape_or_dtype():
    with pytest.raises(TypeError, match="shape"):
        lanczos(lambda v: jnp.concatenate([v, v]), jnp.ones(3), 2)
    with pytest.raises(TypeError, match="dtype"):
        lanczos(lambda v: v.astype(jnp.float32), jnp.ones(3, jnp.float64), 2)
    with pytest.raises(TypeError, match="returned"):
        run_lanczos(lambda v: v[:2], jnp.ones(3), 2, driver="host")


@pytest.mark.parametrize("driver", ["compiled", "host"])
def test_nonfinite_matvec_names_the_step(driver):
    A = jnp.diag(jnp.arange(1.0, 11.0))
    if driver == "compiled":
        # the product turns non-finite once the iterate's last coordinate exceeds 0.9
        def flaky(v):
            return jnp.where(jnp.abs(v[-1]) > 0.9, jnp.inf, 1.0) * (A @ v)

        v0 = jnp.zeros(10).at[0].set(1.0).at[-1].set(0.1)
        with pytest.raises(FloatingPointError, match="step 1"):
            run_lanczos(flaky, v0, 8, driver=driver)
        res = jax.jit(lambda v: lanczos(flaky, v, 8))(v0)  # under jit: reported, not raised
        assert int(res.nonfinite_step) == 1 and int(res.num_valid) == 1
        assert np.all(np.isfinite(np.asarray(res.alphas)))
    else:
        calls = {"n": 0}

        def flaky(v):  # the fourth product is NaN
            calls["n"] += 1
            return A @ v if calls["n"] != 4 else jnp.full_like(v, jnp.nan)

        with pytest.raises(FloatingPointError, match="step 3"):
            run_lanczos(flaky, jnp.ones(10), 8, driver=driver)


def test_no_warning_for_normal_use():
    A = jnp.diag(jnp.arange(1.0, 6.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lanczos(lambda v: A @ v, jnp.ones(5), 5)


def test_init_pads_basis_to_block_multiple():
    s = lanczos_init(jnp.ones(7), 20, block_size=8)
    assert s.basis.shape == (24, 7)


def test_host_driver_orthogonality_float32_ill_conditioned():
    """The host driver (basis in separate blocks, one Gram-Schmidt pass unless DGKS asks for a
    second) keeps float32 orthogonality and agrees with the compiled driver."""
    n, m = 400, 100
    A, _ = matrix_with_spectrum(np.logspace(-6, 3, n), 5, dtype=np.float32)
    v0 = jax.random.normal(jax.random.key(1), (n,), jnp.float32)
    host = run_lanczos(lambda v: A @ v, v0, m, driver="host", block_size=8, return_basis=True)
    Q = np.asarray(host.basis, np.float64)
    assert Q.shape == (m + 1, n) and int(host.num_valid) == m
    assert np.abs(Q @ Q.T - np.eye(m + 1)).max() <= 1e-5
    comp = run_lanczos(lambda v: A @ v, v0, m, driver="compiled", block_size=8)
    np.testing.assert_allclose(host.alphas, comp.alphas, rtol=1e-4, atol=1e-6)


def test_second_gram_schmidt_pass_where_the_first_removed_most():
    """A w whose old-basis component dwarfs its new direction (1e6 against 1e3 in float32, still
    above the breakdown threshold sqrt(eps) |w|): one Gram-Schmidt pass leaves 1.3e-4 of q_0 in
    q_next; the DGKS test must call the second pass, in both drivers' layouts."""
    lz = importlib.import_module("jaxspec.lanczos")
    n = 1000
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((n, 3)))
    q0, q1, r = (jnp.asarray(q[:, k], jnp.float32) for k in range(3))
    # after step 0 with beta_0 = 0: the three-term recurrence leaves the q_0 component alone
    state = lanczos_init(q0, 4, block_size=4)
    state = state._replace(basis=state.basis.at[1].set(q1), step=jnp.int32(1))
    w = 1e6 * q0 + 3.0 * q1 + 1e3 * r

    def check(q_next, alpha, beta):
        assert abs(float(jnp.dot(q_next, q0))) < 1e-5
        assert abs(float(jnp.dot(q_next, q1))) < 1e-5
        np.testing.assert_allclose(float(jnp.linalg.norm(q_next)), 1.0, rtol=1e-6)
        # w itself carries float32 rounding of eps * 1e6 / sqrt(n) ~ 2e-3 per entry
        np.testing.assert_allclose(float(jnp.dot(q_next, r)), 1.0, rtol=1e-4)
        np.testing.assert_allclose(float(beta), 1e3, rtol=1e-4)
        np.testing.assert_allclose(float(alpha), 3.0, rtol=1e-2)

    s = lz.lanczos_step(state, w, block_size=4)  # compiled layout: (rows, P) basis, lax.cond
    check(s.basis[2], s.alphas[1], s.betas[1])
    host = state._replace(basis=(state.basis[:4],))  # host layout: the filled blocks only
    q_next, s = lz._host_step(host, w, q0, q1, tol=None)
    check(q_next, s.alphas[1], s.betas[1])


def _computations(hlo: str) -> dict:
    """The computations of an HLO module's text, by name: their lines."""
    comps, name = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            name = line.split(" ")[1] if line.startswith("ENTRY") else line.split(" ")[0]
            comps[name] = []
        elif name is not None:
            comps[name].append(line)
    return comps


@pytest.mark.parametrize("reorth", ["full", "partial"])
def test_a_step_copies_no_vector_outside_its_passes(reorth):
    """The compiled host step, read as XLA optimised it: outside the Gram-Schmidt passes (a
    while loop) nothing copies a vector of P floats or a block of the basis. A conditional
    that hands its operand back out makes XLA copy it unless the operand is donated: the step
    without a pass normalises ``w`` inside the branch (jaxspec.reorth's ``finish``), and the
    blocks, donated, come back out of the conditionals that write the new row in place. Every
    vector copied is a write and a read of P floats in a step whose work beyond the product is
    a handful of such streams; a block copied, sixteen."""
    lz = importlib.import_module("jaxspec.lanczos")
    P = 1237  # a size nothing else in the step has
    v = jnp.ones(P, jnp.float32)
    host, state = lz._HostBasis.fresh(v, 40, 16)
    hlo = lz._host_step.lower(state._replace(basis=tuple(host.blocks)), v, v, v, tol=None,
                              reorth=reorth).compile().as_text()
    comps = _computations(hlo)
    entry = next(k for k in comps if f"ENTRY {k} " in hlo)
    # the entry and the branches of its conditionals that run no pass (no while loop): the
    # path of a step without a pass; a pass's own loop may copy its carried vector
    checked, branches = [entry], []
    for line in comps[entry]:
        for called in re.findall(r"branch_computations=\{([^}]*)\}", line):
            branches += [c.strip() for c in called.split(",")]
    checked += [b for b in branches if not any(" while(" in line for line in comps[b])]
    copies = [line.strip()[:80] for name in checked for line in comps[name]  # P or (rows, P)
              if re.search(rf"= f32\[(\d+,)?{P}\]\{{(1,)?0\}} copy\(", line)]
    assert copies == []
    # the row writes' branches (one per block), and partial's branch without a pass and the
    # two of its norm of w before the estimates (jaxspec.norms: the plain one, the rescaled)
    assert len(checked) == 1 + 2 * len(host.blocks) + 3 * (reorth == "partial")
