"""The transformer language model: shapes, causality, blocks, and its Hessian-ready loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxspec
from jaxspec.kinds import fisher_mv, ggn_mv
from jaxspec.models import Transformer, abstract_model, hessian_loss

V, T = 7, 6


@pytest.fixture(scope="module")
def lm():
    # rbg keys: threefry's initialisers take seconds each to compile on CPU.
    rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))
    return Transformer(V, num_layers=1, width=8, num_heads=2, max_len=T, rngs=rngs)


@pytest.fixture(scope="module")
def split(lm):
    loss_fn, params = hessian_loss(lm, bn_mode="batch", input_key="tokens")
    return loss_fn, params, jax.jit(loss_fn.apply)


@pytest.fixture(scope="module")
def tokens():
    return jnp.asarray(np.random.default_rng(1).integers(0, V, (3, T)), jnp.int32)


def test_shapes_and_errors(lm, split, tokens):
    # The model's own forward (lm(x)) and the loss's apply are one function; apply is jitted.
    _, params, apply = split
    assert apply(params, {"tokens": tokens}).shape == (3 * T, V)
    made = abstract_model("transformer", num_classes=V, num_layers=1, width=8, num_heads=2,
                          max_len=T)
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
    x = tokens[0]
    variants = jnp.stack([x.at[t + 1:].set((x[t + 1:] + 1) % V) for t in range(T - 1)])
    logits = apply(params, {"tokens": jnp.concatenate([x[None], variants])}).reshape(T, T, V)
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
