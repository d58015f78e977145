"""Model zoo: exact parameter counts, shapes, structure, initialisation, a few training steps."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxspec.models import (
    abstract_model,
    count_params,
    create_model,
    model_names,
    param_count,
    preresnet_blocks,
    train_loss,
)

# The paper's models; counts of the SWA / PyTorch reference implementations.
EXACT_COUNTS = [
    ("preresnet110", 100, 1_169_972),
    ("preresnet110", 10, 1_146_842),
    ("vgg16", 100, 15_291_300),
    ("vgg16", 10, 15_245_130),
    ("vgg16bn", 100, 15_299_748),
    ("vgg16bn", 10, 15_253_578),
]


@pytest.mark.parametrize("name,num_classes,expected", EXACT_COUNTS)
def test_exact_param_counts(name: str, num_classes: int, expected: int) -> None:
    assert param_count(name, num_classes) == expected


def test_param_count_aliases_and_batchstats_excluded() -> None:
    assert param_count("PreResNet-20", 10) == param_count("preresnet20", 10)
    model = abstract_model("preresnet20", num_classes=10)
    n_stats = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    bns = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]
    n_bn_params = sum(math.prod(m.scale.shape) * 2 for m in bns)
    assert n_stats == n_bn_params > 0  # mean+var per channel, as many as scale+bias
    assert count_params(model) == param_count("preresnet20", 10)


@pytest.mark.parametrize("name", ["preresnet110", "vgg16", "vgg16bn"])
def test_big_models_forward_shape_abstract(name: str) -> None:
    model = abstract_model(name, num_classes=100)
    # Eval mode: the same shapes, and tracing skips the running-average writes.
    model = nnx.view(model, use_running_average=True, deterministic=True, raise_if_not_found=False)
    x = jax.ShapeDtypeStruct((128, 32, 32, 3), jnp.float32)
    out = nnx.eval_shape(lambda m, x: m(x), model, x)
    assert out.shape == (128, 100) and out.dtype == jnp.float32


def test_registry() -> None:
    names = model_names()
    for n in ["preresnet20", "preresnet110", "vgg16", "vgg16bn", "mlp", "smallcnn"]:
        assert n in names
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet50", num_classes=10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="9n \\+ 2"):
        param_count("preresnet50", 10)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        param_count("preresnet21", 10)


def test_preresnet_block_rules() -> None:
    assert preresnet_blocks(20) == ("basic", 3)
    assert preresnet_blocks(32) == ("basic", 5)
    assert preresnet_blocks(110) == ("bottleneck", 12)
    assert preresnet_blocks(164) == ("bottleneck", 18)
    model = abstract_model("preresnet110", num_classes=10)
    assert len(model.blocks) == 36
    # Downsample only where stride or width changes: first block of each stage (16 -> 64 too).
    assert [i for i, b in enumerate(model.blocks) if b.downsample is not None] == [0, 12, 24]
    assert model.blocks[12].conv2.strides == 2 and model.blocks[12].downsample.strides == 2
    assert model.fc.in_features == 256


@pytest.fixture(scope="module")
def resnet20() -> nnx.Module:
    """One freshly initialised PreResNet-20 for the module (eager init compiles per shape: slow)."""
    return create_model("preresnet20", num_classes=10, rngs=nnx.Rngs(0))


def test_structure_and_init(resnet20: nnx.Module) -> None:
    model = resnet20
    convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Conv)]
    bns = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]
    assert all(c.bias is None for c in convs)
    assert all(b.momentum == 0.9 and b.epsilon == 1e-5 for b in bns)
    assert all(np.all(b.scale[...] == 1) and np.all(b.bias[...] == 0) for b in bns)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # He-normal fan-out: std sqrt(2 / (3 * 3 * 64)) for a 3x3 64 -> 64 conv (36864 draws).
    w = np.asarray(model.blocks[-1].conv2.kernel[...])
    assert w.shape == (3, 3, 64, 64)
    assert abs(w.std() / math.sqrt(2 / (9 * 64)) - 1) < 0.03
    # PyTorch default Linear: weight and bias uniform on +-1/sqrt(fan_in).
    bound = 1 / math.sqrt(64)
    for p in (model.fc.kernel[...], model.fc.bias[...]):
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.5 * bound


def test_stride2_padding_matches_pytorch(resnet20: nnx.Module) -> None:
    # PyTorch pads a stride-2 3x3 conv by 1 on both sides; Flax's "SAME" would pad (0, 1).
    conv = resnet20.blocks[3].conv1
    assert conv.strides == 2
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 16), jnp.float32)
    ref = jax.lax.conv_general_dilated(
        x, conv.kernel[...], (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(conv(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "preresnet20"])
def test_small_models_train(name: str, resnet20: nnx.Module) -> None:
    if name == "preresnet20":
        model = nnx.clone(resnet20)  # the fixture stays at its initial values
    else:
        model = create_model(name, num_classes=10, hidden=(32,), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
    }
    stats0 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    optimizer = nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param)

    @nnx.jit
    def step(model: nnx.Module, optimizer: nnx.Optimizer, batch: dict) -> jax.Array:
        (loss, logits), grads = nnx.value_and_grad(train_loss, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, batch)) for _ in range(6)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    stats1 = nnx.state(model, nnx.BatchStat)
    if name != "mlp":  # BN running statistics were updated in place by the training forward
        changed = jax.tree.map(lambda a, b: not np.allclose(a, b), stats0, stats1)
        assert all(jax.tree.leaves(changed))
    model.eval()
    logits = model(batch["image"])
    assert logits.shape == (16, 10) and logits.dtype == jnp.float32
