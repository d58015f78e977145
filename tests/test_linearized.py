"""The cached linearisation (jaxspec.linearized): the same matrix as the plain operator and as a
dense jax.hessian, whole or partly cached, with all or compact residuals, on the host and
lax.scan reductions; dropped when the parameters or the block change; a bad budget or residuals
choice fails at construction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessians import dense_hessian, make_data, mlp_loss, mlp_params
from jaxspec import batch_dataset, curvature_operator
from jaxspec.linearized import memory_budget, residual_bytes
from jaxspec.reduction import HostReduce, ScanReduce

# 4 full batches of 8 and a tail of 5; shapes shared with test_operator's plain case
PARAMS = mlp_params(jax.random.key(0))
DATA = make_data(jax.random.key(6), 37)
BATCHED = batch_dataset(DATA, 8)
DENSE = np.asarray(dense_hessian(mlp_loss, PARAMS, DATA))
VECTORS = np.random.default_rng(1).normal(size=(3, DENSE.shape[0]))
PLAIN = curvature_operator(mlp_loss, PARAMS, BATCHED, linearize=None)
PER_BATCH, COMPACT = (residual_bytes(PLAIN, jax.tree.map(lambda x: x[0], BATCHED.batches), kept)
                      for kept in ("all", "compact"))


def products(op):
    return np.stack([np.asarray(op.mv(jnp.asarray(v))) for v in VECTORS])


HOST = HostReduce(group_size=2)


@pytest.mark.parametrize("reduce,budget,residuals,count,tail,kept", [
    (HOST, "auto", "auto", 4, True, "all"),           # every batch and the tail, all kept
    (ScanReduce(), 2 * PER_BATCH, "all", 2, False, "all"),  # two; two and the tail recomputed
    # all residuals fit two batches, compact ones four but not the tail: "auto" takes the
    # compact form (the sizes this case needs are asserted below)
    (ScanReduce(), 2 * PER_BATCH, "auto", 4, False, "compact"),
    (HOST, "auto", "compact", 4, True, "compact"),
    (HOST, "auto", jax.checkpoint_policies.nothing_saveable, 4, True, None),  # any policy
], ids=["host-all", "scan-part", "scan-auto-compact", "host-compact", "host-policy"])
def test_cached_products_are_the_plain_and_dense_ones(reduce, budget, residuals, count, tail,
                                                      kept):
    compact_tail = residual_bytes(PLAIN, BATCHED.tail, "compact")
    assert 4 * COMPACT <= 2 * PER_BATCH < 4 * COMPACT + compact_tail
    plain = curvature_operator(mlp_loss, PARAMS, BATCHED, reduce=reduce, linearize=None)
    assert plain.linearized() is plain  # no budget, no cache
    op = curvature_operator(mlp_loss, PARAMS, BATCHED, reduce=reduce, linearize=budget,
                            residuals=residuals)
    assert op.linear is None  # built only when asked
    fast = op.linearized()
    assert (fast.linear.count, fast.linear.tail is not None) == (count, tail)
    assert fast.linear.residuals == (residuals if kept is None else kept)
    assert fast.linearized() is fast and fast.fingerprint() == plain.fingerprint()
    got = products(fast)
    np.testing.assert_allclose(got, products(plain), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(got, VECTORS @ DENSE, rtol=1e-12, atol=1e-13)
    if isinstance(reduce, ScanReduce):  # a pytree: into jit as an argument
        jitted = jax.jit(lambda o, v: o.mv(v))(fast, jnp.asarray(VECTORS[0]))
        np.testing.assert_allclose(jitted, got[0], rtol=1e-13, atol=1e-14)


def test_new_parameters_or_block_drop_the_cache():
    fast = curvature_operator(mlp_loss, PARAMS, BATCHED, reduce=HOST).linearized()
    moved = jax.tree.map(lambda x: 1.5 * x, PARAMS)
    assert fast.with_params(moved).linear is None
    np.testing.assert_allclose(
        products(fast.with_params(moved).linearized()),
        VECTORS @ np.asarray(dense_hessian(mlp_loss, moved, DATA)), rtol=1e-12, atol=1e-13)
    assert fast.restrict("layer1").linear is None  # another vector space


@pytest.mark.parametrize("bad", ["fast", -1, 1.5, True])
def test_a_bad_budget_or_residuals_choice_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="linearize must be"):
        curvature_operator(mlp_loss, PARAMS, BATCHED, linearize=bad)
    assert memory_budget(0) == 0
    with pytest.raises(ValueError, match="residuals must be"):
        curvature_operator(mlp_loss, PARAMS, BATCHED, residuals=bad)


def test_auto_caches_up_to_the_krylov_basis_of_the_run(monkeypatch):
    # under "auto" on a CPU, a run's basis of `rows` parameter vectors, or one call's
    # activations (GROUP_BYTES) if more, bounds the residuals: the cache at most doubles what
    # the run holds anyway (the suite runs on CPU)
    import jaxspec.reduction

    assert jax.default_backend() == "cpu"
    op = curvature_operator(mlp_loss, PARAMS, BATCHED, reduce=HOST, residuals="all")
    monkeypatch.setattr(jaxspec.reduction, "GROUP_BYTES", 4 * PER_BATCH)
    assert op.linearized(1).linear.count == 4  # a one-row basis, four batches' activations
    monkeypatch.setattr(jaxspec.reduction, "GROUP_BYTES", 0)
    vector = op.size * jnp.dtype(op.dtype).itemsize
    rows = -(-2 * PER_BATCH // vector)  # room for one group of two batches, not two groups
    assert op.linearized(rows).linear.count == 2
    assert vector < PER_BATCH and op.linearized(1).linear is None
    assert op.linearized().linear.count == 4  # no run: a share of the free memory
    assert memory_budget("auto", allowance=rows * vector) == rows * vector
    # a number of bytes is taken as given, whatever the run
    fixed = curvature_operator(mlp_loss, PARAMS, BATCHED, reduce=HOST, linearize=2 * PER_BATCH,
                               residuals="all")
    assert fixed.linearized(10**6).linear.count == fixed.linearized(1).linear.count == 2


@pytest.mark.parametrize("batches_of_room,group", [(0, 1), (2, 2), (3, 3), (100, 4)])
def test_default_groups_hold_what_fits_in_group_bytes(monkeypatch, batches_of_room, group):
    """``HostReduce()`` puts in one call as many batches as their activations (residual bytes)
    fit in ``GROUP_BYTES``, at least one, at most all; the operator holds the resolved
    strategy, and the products are the dense ones whatever the group."""
    import jaxspec.reduction

    monkeypatch.setattr(jaxspec.reduction, "GROUP_BYTES", batches_of_room * PER_BATCH)
    op = curvature_operator(mlp_loss, PARAMS, BATCHED, reduce="host")
    assert op.reduce == HostReduce(group)
    np.testing.assert_allclose(products(op), VECTORS @ DENSE.T, rtol=1e-10, atol=1e-12)


def test_sizing_and_linearising_share_one_trace():
    """The host reduction sizes its groups by the residuals before its group size is fixed, the
    cache sizes them again after: one trace of the linearised product serves both, and the tail's
    sizing serves its linearisation (a deep network's product takes seconds to trace)."""
    traces = []

    def loss(p, x):
        traces.append(None)  # runs once per trace, never when a compiled program runs
        return jnp.mean(x) * jnp.sum(jnp.tanh(p) ** 4)

    op = curvature_operator(loss, jnp.ones(3), batch_dataset(np.ones(5), 2), reduce="host")
    assert op.reduce.group_size == 2  # fixed by the residuals' size, one trace
    before = len(traces)
    like = jax.ShapeDtypeStruct((2,), jnp.float64)
    assert residual_bytes(op, like) > 0 and len(traces) == before
    fast = op.linearized()
    assert fast.linear.tail is not None and fast.linear.count == 2
    assert len(traces) == before + 2  # the tail's size (then linearised), the full batches'


def test_auto_sizes_the_compact_residuals_only_where_they_can_pay(monkeypatch):
    """Under residuals="auto" sizing the compact form costs one more trace of the product, taken
    only where it could cache twice the batches that all residuals do: not where all fit or
    where doubling is out of reach, not under an eighth of one batch's residuals; where it is
    taken, it wins with twice the batches."""
    import jaxspec.linearized

    loss = lambda p, x: jnp.mean(x) * jnp.sum(jnp.tanh(p) ** 4)  # noqa: E731
    data = batch_dataset(np.ones((9, 4)), 2)  # four full batches and a tail of one
    plain = curvature_operator(loss, jnp.ones(64), data, linearize=None)
    like = jax.ShapeDtypeStruct((2, 4), jnp.float64)
    full, compact = residual_bytes(plain, like), residual_bytes(plain, like, "compact")
    tail, compact_tail = (residual_bytes(plain, data.tail, kept) for kept in ("all", "compact"))
    sized = []
    monkeypatch.setattr(jaxspec.linearized, "residual_bytes",
                        lambda op, like, kept="all": sized.append(kept) or residual_bytes(
                            op, like, kept))

    def cache(budget):
        sized.clear()
        op = curvature_operator(loss, jnp.ones(64), data, reduce=HOST, linearize=budget)
        linear = op.linearized(10).linear
        return (None if linear is None else (linear.count, linear.tail is not None,
                                             linear.residuals)), "compact" in sized

    assert cache(4 * full + tail) == ((4, True, "all"), False)  # all fit
    assert cache(3 * full) == ((2, True, "all"), False)  # 3 of 5: doubling is out of reach
    assert cache(full // 8 - 1) == (None, False)  # under an eighth of a batch: not sized
    # all residuals: the tail alone (the full batches go in groups of two); compact: everything
    budget = full + full // 2
    assert tail <= budget < 2 * full and 4 * compact + compact_tail <= budget
    assert cache(budget) == ((4, True, "compact"), True)


ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu,
               "softplus": jax.nn.softplus, "silu": jax.nn.silu}
POLICIES = {"compact": "compact", "all": "all",
            "dots_saveable": jax.checkpoint_policies.dots_saveable,
            "nothing_saveable": jax.checkpoint_policies.nothing_saveable}


@settings(max_examples=10)
@given(activation=st.sampled_from(sorted(ACTIVATIONS)), kept=st.sampled_from(sorted(POLICIES)),
       conv=st.booleans(), norm=st.booleans(), seed=st.integers(0, 2**16))
def test_any_residuals_give_the_dense_hessian(activation, kept, conv, norm, seed):
    """Whatever a cache keeps (the named forms, any jax.checkpoint policy), over random small
    networks (a 1-D convolution or not, a normalisation or not, five activations, two of them
    with custom derivatives), its products are the dense jax.hessian's."""
    act = ACTIVATIONS[activation]
    rng = np.random.default_rng(seed)
    params = {"k": jnp.asarray(rng.normal(size=(3, 2, 3))),
              "w": jnp.asarray(rng.normal(size=(6, 3)) / 3),
              "v": jnp.asarray(rng.normal(size=(3, 2)))}
    data = {"x": rng.normal(size=(10, 6)), "y": rng.integers(0, 2, 10).astype(np.int32)}

    def loss(p, batch):
        h = batch["x"]
        if conv:  # (N, 3, 2) -> (N, 3, 3): a 'SAME' convolution over 3 positions
            h = jax.lax.conv_general_dilated(h.reshape(-1, 3, 2), p["k"], (1,), "SAME",
                                             dimension_numbers=("NWC", "WIO", "NWC"))
            h = act(h).reshape(-1, 9)[:, :6]
        h = act(h @ p["w"])
        if norm:
            h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 0.1)
        logp = jax.nn.log_softmax(h @ p["v"])
        return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))

    dense = np.asarray(dense_hessian(loss, params, data))
    op = curvature_operator(loss, params, batch_dataset(data, 4), residuals=POLICIES[kept])
    fast = op.linearized()
    assert fast.linear.count == 2 and fast.linear.tail is not None
    assert fast.linear.residuals == POLICIES[kept]
    v = rng.normal(size=dense.shape[0])
    np.testing.assert_allclose(fast.mv(jnp.asarray(v)), dense @ v, rtol=1e-9,
                               atol=1e-11 * np.abs(dense).max())
