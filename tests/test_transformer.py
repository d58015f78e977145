"""The transformer language model: shapes, causality, blocks, and its Hessian-ready loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import jaxspec
from jaxspec.kinds import fisher_mv, ggn_mv
from jaxspec.models import Transformer, abstract_model, hessian_loss

# One model shape for every test (the tiny training run included): each shape compiles anew.
V, T = 256, 6
KW = {"num_layers": 1, "width": 8, "num_heads": 2, "max_len": T}


@pytest.fixture(scope="module")
def lm():
    # rbg keys: each threefry initialiser takes seconds to compile on CPU.
    return Transformer(V, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")), **KW)


@pytest.fixture(scope="module")
def split(lm):
    loss_fn, params = hessian_loss(lm, bn_mode="batch", input_key="tokens")
    return loss_fn, params, jax.jit(loss_fn.apply)


@pytest.fixture(scope="module")
def tokens():
    return jnp.asarray(np.random.default_rng(1).integers(0, V, (T, T)), jnp.int32)


def test_shapes_and_errors(lm, split, tokens):
    # The model's own forward (lm(x)) and the loss's apply are one function; apply is jitted.
    _, params, apply = split
    assert apply(params, {"tokens": tokens}).shape == (T * T, V)
    made = abstract_model("transformer", num_classes=V, **KW)
    assert jax.tree.map(jnp.shape, nnx.state(made, nnx.Param)) == jax.tree.map(jnp.shape, params)
    with pytest.raises(ValueError, match="longer than max_len"):
        lm(jnp.zeros((1, T + 1), jnp.int32))
    with pytest.raises(ValueError, match="integers"):
        lm(jnp.zeros((1, T), jnp.float32))
    with pytest.raises(ValueError, match="divisible"):
        abstract_model("transformer", num_classes=V, width=6, num_heads=4)


def test_causal(split, tokens):
    # Row t of the batch changes every token after position t: the logits at positions <= t
    # stay, those at t + 1 change (the model does read its input). One forward pass for all.
    _, params, apply = split
    batch = np.tile(np.asarray(tokens[0]), (T, 1))  # T rows: the shape of `tokens`
    for t in range(T - 1):
        batch[t + 1, t + 1:] = (batch[t + 1, t + 1:] + 1) % V
    logits = np.asarray(apply(params, {"tokens": jnp.asarray(batch)})).reshape(T, T, V)
    base, other = logits[0], logits[1:]
    for t in range(T - 1):
        np.testing.assert_allclose(other[t, :t + 1], base[:t + 1], rtol=1e-6, atol=1e-6)
        assert not np.allclose(other[t, t + 1], base[t + 1], atol=1e-6)


def test_blocks_are_the_named_layers(split):
    names = list(jaxspec.param_blocks(split[1], by="layer"))
    per_layer = ["norm1", "query", "key", "value", "out", "norm2", "fc1", "fc2"]
    expected = {"embed", "pos", "norm", "head",
                *(f"layers/{i}/{n}" for i in range(1) for n in per_layer)}
    assert set(names) == expected


def test_loss_is_mean_over_positions_and_fisher_is_ggn(split, tokens):
    loss_fn, params, apply = split
    batch = {"tokens": tokens, "label": jnp.roll(tokens, -1, axis=1)}
    logp = jax.nn.log_softmax(apply(params, batch))
    manual = -jnp.mean(jnp.take_along_axis(logp, batch["label"].reshape(-1, 1), axis=-1))
    np.testing.assert_allclose(jax.jit(loss_fn)(params, batch), manual, rtol=1e-6)
    # For softmax cross-entropy the exact Fisher equals the GGN only when the Fisher's
    # per-sample average runs over the same B * T predictions the loss averages over.
    rng = np.random.default_rng(2)
    v = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    both = jax.jit(lambda p, b, v: (ggn_mv(loss_fn, p, b, v), fisher_mv(loss_fn, p, b, v)))
    g, f = both(params, batch, v)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(f)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def dense_problem():
    """A float64 model with a vocabulary of 8, so that jax.hessian of the flat loss is small:
    ``(loss_fn, params, batch, flat Hessian)``."""
    vocab = 8
    model = Transformer(vocab, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")),
                        param_dtype=jnp.float64, **KW)
    loss_fn, params = hessian_loss(model, bn_mode="batch", input_key="tokens")
    toks = np.random.default_rng(3).integers(0, vocab, (4, T)).astype(np.int32)
    batch = {"tokens": toks, "label": np.roll(toks, -1, axis=1)}
    flat, unravel = ravel_pytree(params)
    return loss_fn, params, batch, jax.hessian(lambda f: loss_fn(unravel(f), batch))(flat)


@pytest.mark.parametrize("residuals", ["all", "compact"])
def test_curvature_products_are_the_dense_hessian(dense_problem, residuals):
    # The attention's softmax takes JAX's own derivative rule (the model turns it on), whose
    # second derivatives the linearised products use; a float64 model computes its attention
    # in float64 (jax.nn.dot_product_attention's softmax would be float32)
    loss_fn, params, batch, dense = dense_problem
    assert "custom_jvp_call" in str(jax.make_jaxpr(loss_fn)(params, batch))  # the softmax's rule
    op = jaxspec.curvature_operator(loss_fn, params, jaxspec.batch_dataset(batch, 2),
                                    linearize=2**30, residuals=residuals).linearized()
    assert op.linear.residuals == residuals and op.linear.count == 2
    v = np.random.default_rng(4).standard_normal(op.size)
    want = dense @ v
    np.testing.assert_allclose(op.mv(jnp.asarray(v)), want, rtol=1e-10,
                               atol=1e-12 * np.abs(want).max())


def test_a_float64_copy_computes_in_float64(dense_problem):
    """The parameters' dtype sets the computation's: a float32-built model given the float64
    model's parameters has the same float64 Hessian (its embedding tables were looked up in
    float32, its attention's softmax computed in float32: 1e-5 apart)."""
    loss_fn, params, batch, dense = dense_problem
    model32 = Transformer(8, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")), **KW)
    loss32, _ = hessian_loss(model32, bn_mode="batch", input_key="tokens")
    flat, unravel = ravel_pytree(params)
    v = np.random.default_rng(5).standard_normal(flat.size)
    hv = jax.jvp(jax.grad(lambda f: loss32(unravel(f), batch)), (flat,), (jnp.asarray(v),))[1]
    assert hv.dtype == jnp.float64
    np.testing.assert_allclose(hv, dense @ v, rtol=1e-10, atol=1e-12 * np.abs(dense @ v).max())


def test_tiny_training_run(tmp_path, split):
    # Through train like the CNNs: the loss goes down, the held-out loss the loop reports is
    # the mean next-token cross-entropy of the checkpoint (recomputed here by hessian_loss).
    from jaxspec.data import ImageDataset
    from jaxspec.text import byte_windows, pydoc_topics, token_split
    from train import TrainConfig, load_checkpoint, train_and_evaluate

    topics = pydoc_topics()
    x, y = byte_windows("".join(topics[:3]).encode()[:4000], T)
    xt, yt = byte_windows(topics[3].encode()[:T * T + 1], T)  # T windows
    data = ImageDataset("pydoc", x, y, xt, yt, 256, None, None)
    config = TrainConfig(model="transformer", model_kwargs=KW, dataset="pydoc", seq_len=T, augment=False, optimizer="adam",
                         base_lr=1e-2, weight_decay=0.0, epochs=2, batch_size=64,
                         eval_batch_size=64, prng_impl="rbg", progress=False)
    records = train_and_evaluate(config, tmp_path, data=data)
    assert records[1]["train_loss"] < records[0]["train_loss"] < np.log(256)
    model, _, _ = load_checkpoint(tmp_path)
    test = token_split(data, "test")
    assert len(test["tokens"]) == T  # the whole held-out set, in the fixture's shape
    logits = split[2](nnx.state(model, nnx.Param), test)
    labels = test["label"].reshape(-1, 1)
    held_out = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels, axis=-1))
    np.testing.assert_allclose(records[-1]["test_loss"], held_out, rtol=1e-5)
    with pytest.raises(ValueError, match="augment"):
        train_and_evaluate(TrainConfig(model="transformer", dataset="pydoc"), tmp_path / "x",
                           data=data)
