"""Parameter blocks: a restricted operator is exactly the dense sub-block H[S, S] of jax.hessian
(an MLP with dict params under random selections; a SmallCNN with BatchNorm in both modes; an
augmentation transform), through every reduction, jitted and eager; bad selections; one
compilation for all parameter values; block_spectra and its plot."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import jaxspec
from compiles import compilations
from hessians import mlp_loss, mlp_params
from jaxspec import batch_dataset, curvature_operator
from jaxspec.blocks import block_spectra, param_blocks, select_leaves
from jaxspec.models import SmallCNN, hessian_loss

REDUCTIONS = ["scan", "host", "mesh"]


# ---- helpers ------------------------------------------------------------------------------
def mlp_data(n=13, seed=1):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 3)), "y": rng.integers(0, 2, size=n).astype(np.int32)}


def flat_indices(params, block):
    """Positions in ravel_pytree(params) of the leaves ``block``."""
    sizes = [np.size(x) for x in jax.tree.leaves(params)]
    starts = np.cumsum([0, *sizes])
    return np.concatenate([np.arange(starts[i], starts[i + 1]) for i in block])


def dense_hessian(loss, params, batched):
    """sum_b w_b hessian(loss on batch b): the matrix every reduction computes (batch-mode
    BatchNorm included), from jax.hessian over the flat parameters."""
    flat, unravel = ravel_pytree(params)
    hess = jax.jit(jax.hessian(lambda f, b: loss(unravel(f), b)))
    batches = [jax.tree.map(lambda x: x[i], batched.batches) for i in range(len(batched.weights))]
    weights = list(np.asarray(batched.weights))
    if batched.tail is not None:
        batches.append(batched.tail)
        weights.append(float(batched.tail_weight))
    return sum(w * np.asarray(hess(flat, b)) for w, b in zip(weights, batches) if w)


def check_block(op, H, select, *, jitted, rng):
    sub = op.restrict(select)
    idx = flat_indices(op.params, sub.block)
    want = H[np.ix_(idx, idx)]
    assert sub.shape == want.shape and sub.dtype == jnp.float64
    V = rng.normal(size=(2, sub.size))
    tol = dict(rtol=1e-9, atol=1e-11 * max(np.abs(H).max(), 1.0))
    if jitted:
        got = jax.jit(jax.vmap(lambda v, op: op.mv(v), in_axes=(0, None)))(jnp.asarray(V), sub)
        np.testing.assert_allclose(got, V @ want, **tol)
    else:
        for v in V:
            np.testing.assert_allclose(sub.mv(jnp.asarray(v)), want @ v, **tol)
        tree = sub.mv(sub.unravel(jnp.asarray(V[0])))  # a pytree in, a pytree out
        np.testing.assert_allclose(ravel_pytree(tree)[0], want @ V[0], **tol)
    return sub


# ---- exactness ----------------------------------------------------------------------------
MLP_PARAMS = mlp_params(jax.random.key(0), sizes=(3, 4, 2))
MLP_BATCHED = batch_dataset(mlp_data(), 5)  # batches of 5, 5 and a tail of 3
MLP_H = dense_hessian(mlp_loss, MLP_PARAMS, MLP_BATCHED)
MLP_OPS = {r: curvature_operator(mlp_loss, MLP_PARAMS, MLP_BATCHED, reduce=r) for r in REDUCTIONS}
PATHS = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(MLP_PARAMS)]


@settings(max_examples=6)
@given(chosen=st.sets(st.integers(0, len(PATHS) - 1), min_size=1),
       as_regex=st.booleans(), reduce=st.sampled_from(REDUCTIONS), jitted=st.booleans())
def test_mlp_block_is_the_dense_sub_block(chosen, as_regex, reduce, jitted):
    if as_regex:  # an exact regex of the chosen paths
        select = "^(" + "|".join(PATHS[i].replace("[", r"\[").replace("]", r"\]")
                                 for i in sorted(chosen)) + ")$"
    else:
        select = lambda path, leaf: jax.tree_util.keystr(path) in {PATHS[i] for i in chosen}
    jitted = jitted and reduce != "host"  # the host loop cannot be traced
    sub = check_block(MLP_OPS[reduce], MLP_H, select, jitted=jitted,
                      rng=np.random.default_rng(len(chosen)))
    assert sub.block == tuple(sorted(chosen))


@functools.lru_cache(maxsize=None)
def cnn_case(bn_mode):
    """A one-stage SmallCNN (conv, BatchNorm, linear: 67 parameters) on 8 4x4 images in batches
    of 4, and its dense Hessian (shared by the tests below: jax.hessian compiles slowly)."""
    model = SmallCNN(3, widths=(2,), param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    loss, params = hessian_loss(model, bn_mode=bn_mode)
    rng = np.random.default_rng(2)
    data = {"image": rng.normal(size=(8, 4, 4, 3)), "label": (np.arange(8) % 3).astype(np.int32)}
    batched = batch_dataset(data, 4)  # batch statistics differ per batch
    return loss, params, batched, dense_hessian(loss, params, batched)


# one selection per case (each compiles a CNN product): every BatchNorm scale and bias by
# regex; the conv kernel and the linear bias by predicate
CNN_SELECTIONS = {"regex": "norms", "predicate": lambda path, x: x.ndim in (1, 4)
                  and "norms" not in jax.tree_util.keystr(path)}


@pytest.mark.parametrize("bn_mode,reduce,how,jitted", [
    ("batch", "scan", "regex", True), ("batch", "host", "predicate", False),
    ("batch", "mesh", "predicate", False), ("running", "scan", "predicate", False),
    ("running", "host", "regex", False), ("running", "mesh", "regex", True)])
def test_cnn_block_with_batchnorm_is_the_dense_sub_block(bn_mode, reduce, how, jitted):
    loss, params, batched, H = cnn_case(bn_mode)
    op = curvature_operator(loss, params, batched, reduce=reduce)
    sub = check_block(op, H, CNN_SELECTIONS[how], jitted=jitted, rng=np.random.default_rng(3))
    assert len(sub.block) == 2


def test_block_under_a_batch_transform():
    """The batch transform is applied inside the restricted products too."""
    scale = {"factor": jnp.asarray(np.random.default_rng(3).uniform(0.5, 2.0, size=(1, 3)))}

    class Scale:  # a pytree callable batch -> batch
        def __init__(self, factor):
            self.factor = factor

        def __call__(self, batch):
            return {"x": batch["x"] * self.factor, "y": batch["y"]}

    jax.tree_util.register_pytree_node(Scale, lambda s: ((s.factor,), None),
                                       lambda _, c: Scale(*c))
    data = mlp_data()
    transformed = {"x": data["x"] * np.asarray(scale["factor"]), "y": data["y"]}
    H = dense_hessian(mlp_loss, MLP_PARAMS, batch_dataset(transformed, 5))
    op = curvature_operator(mlp_loss, MLP_PARAMS, MLP_BATCHED, reduce="scan",
                            transform=Scale(scale["factor"]))
    check_block(op, H, "layer1", jitted=True, rng=np.random.default_rng(4))


# ---- the operator's protocol ----------------------------------------------------------------
def test_restricted_protocol_fingerprint_and_errors():
    op = MLP_OPS["scan"]
    sub = jaxspec.restrict(op, r"\['w'\]")
    assert sub.block == (1, 3) and sub.size == 3 * 4 + 4 * 2
    tree = sub.unravel(jnp.arange(sub.size, dtype=jnp.float64))
    assert tree["layer0"]["b"] is None and tree["layer1"]["w"].shape == (4, 2)
    np.testing.assert_array_equal(sub.ravel(tree), np.arange(sub.size))
    # restricting again keeps the leaves both select
    assert sub.restrict("layer1").block == (3,)
    with pytest.raises(ValueError, match="already restricted"):
        sub.restrict(r"\['b'\]")
    # fingerprints: the block is part of the matrix
    assert sub.fingerprint() != op.fingerprint()
    assert sub.fingerprint() != op.restrict("layer1").fingerprint()
    assert sub.fingerprint() == op.restrict(lambda p, x: x.ndim == 2).fingerprint()
    # with_params keeps the block
    moved = sub.with_params(jax.tree.map(lambda x: 2 * x, MLP_PARAMS))
    assert moved.block == sub.block and moved.fingerprint() != sub.fingerprint()
    with pytest.raises(ValueError, match="structure"):
        sub.with_params({"layer0": MLP_PARAMS["layer0"]})
    # bad vectors and bad selections
    with pytest.raises(TypeError, match="shape"):
        sub.mv(jnp.ones(op.size))
    with pytest.raises(TypeError, match="structure"):
        sub.mv(MLP_PARAMS)
    with pytest.raises(ValueError, match=r"selects no parameter.*\['layer0'\]\['b'\]"):
        op.restrict("conv")
    with pytest.raises(ValueError, match="not a valid regex"):
        op.restrict("(")
    for bad in (3, None, [r"\['w'\]"]):
        with pytest.raises(TypeError, match="regex .* or a predicate"):
            op.restrict(bad)
    with pytest.raises(TypeError, match="CurvatureOperator"):
        jaxspec.restrict(lambda v: v, "w")
    with pytest.raises(ValueError, match="selects no parameter"):
        select_leaves(MLP_PARAMS, lambda path, x: False)


def test_param_blocks():
    assert {k: select_leaves(MLP_PARAMS, s) for k, s in param_blocks(MLP_PARAMS).items()} == {
        "layer0": (0, 1), "layer1": (2, 3)}
    assert list(param_blocks(MLP_PARAMS, "leaf")) == ["layer0/b", "layer0/w", "layer1/b",
                                                      "layer1/w"]
    assert list(param_blocks(MLP_PARAMS, [r"\['w'\]", "layer1"])) == [r"\['w'\]", "layer1"]
    cnn = cnn_case("running")[1]
    blocks = param_blocks(cnn)
    assert list(blocks) == ["convs/0", "fc", "norms/0"]
    assert len(select_leaves(cnn, blocks["norms/0"])) == 2  # scale and bias
    assert param_blocks(jnp.ones(3)).keys() == {""}  # a bare array: one unnamed block
    with pytest.raises(ValueError, match="by must be"):
        param_blocks(MLP_PARAMS, "module")
    with pytest.raises(TypeError, match="by must be"):
        param_blocks(MLP_PARAMS, [3])
    with pytest.raises(ValueError, match="selects no parameter"):
        param_blocks(MLP_PARAMS, {"attention": "attn"})


@jax.jit
def apply(op, v):
    return op.mv(v)


def test_restricted_operator_compiles_once():
    """A second operator with other parameter values of the same shapes compiles nothing."""
    data = batch_dataset(mlp_data(11, seed=5), 4)
    sizes = (3, 7, 2)  # shapes of no other test here, so the first run does compile

    def run(seed, reduce):
        op = curvature_operator(mlp_loss, mlp_params(jax.random.key(seed), sizes), data,
                                reduce=reduce).restrict("layer1|layer0..'b'")
        v = jnp.ones(op.size)
        return np.asarray(op.mv(v) if reduce == "host" else apply(op, v) + op.mv(v))

    for reduce in ("scan", "host"):
        with compilations() as first:
            a = run(0, reduce)
        assert first, "the listener saw no compilation: the event name changed?"
        with compilations() as second:
            b = run(1, reduce)
        assert second == [], f"recompiled for new parameter values: {second}"
        assert not np.array_equal(a, b)


# ---- spectra per block ------------------------------------------------------------------------
def test_block_spectra_and_plot(tmp_path):
    loss, params, batched, H = cnn_case("batch")
    op = curvature_operator(loss, params, batched, reduce="scan")
    blocks = param_blocks(params)
    spectra = block_spectra(op, blocks, jax.random.key(0), 8)
    assert list(spectra) == list(blocks)
    sizes = [s.meta["block_size"] for s in spectra.values()]
    assert sum(sizes) == op.size and [s.meta["block"] for s in spectra.values()] == list(blocks)
    eig = np.linalg.eigvalsh(H)
    for name, s in spectra.items():  # Cauchy interlacing: a block's spectrum lies in H's range
        assert eig[0] - 1e-8 <= s.lambda_min and s.lambda_max <= eig[-1] + 1e-8, name
        assert s.nodes.size <= min(8, s.meta["block_size"])  # (early stop on a small rank)
    # a block's spectrum does not depend on which other blocks are listed
    alone = block_spectra(op, {"fc": blocks["fc"]}, jax.random.key(0), 8)["fc"]
    np.testing.assert_allclose(alone.nodes, spectra["fc"].nodes, rtol=1e-12)
    from jaxspec.plotting import block_spectra_plot

    path = tmp_path / "blocks.png"
    fig = block_spectra_plot(spectra, path=str(path), suptitle="SmallCNN")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(ax.get_visible() for ax in fig.axes) == len(spectra)


def test_masked_block_spectra_equal_restricted():
    # Masked full products from the restricted run's probe span the same Krylov space.
    op = MLP_OPS["host"]
    blocks = param_blocks(MLP_PARAMS)
    restricted = block_spectra(op, blocks, jax.random.key(0), 6, check=False)
    masked = block_spectra(op, blocks, jax.random.key(0), 6, masked=True, check=False)
    for name, s in restricted.items():
        np.testing.assert_allclose(masked[name].nodes, s.nodes, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(masked[name].weights, s.weights, rtol=1e-6, atol=1e-10)
    with pytest.raises(ValueError, match="one probe"):
        block_spectra(op, blocks, jax.random.key(0), 6, masked=True, num_vectors=2)
    with pytest.raises(ValueError, match="unrestricted"):
        block_spectra(op.restrict("layer0"), "layer", jax.random.key(0), 6, masked=True)
