"""Pre-activation ResNet for CIFAR, as in the SWA code base (``models/preresnet.py``) the paper used.

Structure (He et al. 2016, "Identity mappings in deep residual networks"): a bias-free 3x3 conv to
16 channels, three stages of ``n`` blocks with widths 16/32/64 (strides 1/2/2), then BN - ReLU -
global average pool (the 8x8 ``AvgPool2d(8)`` of the reference for 32x32 inputs) - Linear.

* depth >= 44: bottleneck blocks (1x1 - 3x3 - 1x1, expansion 4), ``depth = 9n + 2``
  (PreResNet-110: n = 12, PreResNet-164: n = 18);
* otherwise basic blocks (3x3 - 3x3), ``depth = 6n + 2`` (PreResNet-20: n = 3).

Every block is pre-activation (BN - ReLU - conv); the shortcut is the identity, or a bias-free
1x1 conv applied to the block's *un-normalised* input when the stride or channel count changes.

Initialisation, as the reference: convs He-normal fan-out ``std = sqrt(2 / (k * k * out))``,
BN scale 1 / bias 0 (``momentum=0.9`` in Flax terms == PyTorch's 0.1, ``epsilon=1e-5``), the final
Linear PyTorch's default (uniform ``+-1/sqrt(fan_in)`` for weight and bias).

One known difference: Flax's BatchNorm updates the running variance with the biased batch variance,
PyTorch with the unbiased one (a factor ``m / (m - 1)`` with ``m = B * H * W`` >= 8192 at batch 128:
negligible). Batch-statistics forward passes, and so "batch"-mode Hessians, are identical.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspec.models.small import torch_batch_norm, torch_conv, torch_linear

__all__ = ["PreResNet", "PreResNet20", "PreResNet110", "PreResNet164"]


def _conv(c_in: int, c_out: int, k: int, stride: int, rngs: nnx.Rngs, **dt: Any) -> nnx.Conv:
    return torch_conv(c_in, c_out, k, stride=stride, use_bias=False, rngs=rngs, **dt)


class _BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, *, rngs: nnx.Rngs, **dt: Any) -> None:
        self.bn1 = torch_batch_norm(c_in, rngs=rngs, **dt)
        self.conv1 = _conv(c_in, planes, 3, stride, rngs, **dt)
        self.bn2 = torch_batch_norm(planes, rngs=rngs, **dt)
        self.conv2 = _conv(planes, planes, 3, 1, rngs, **dt)
        c_out = planes * self.expansion
        self.downsample = (
            _conv(c_in, c_out, 1, stride, rngs, **dt) if stride != 1 or c_in != c_out else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.conv1(jax.nn.relu(self.bn1(x)))
        out = self.conv2(jax.nn.relu(self.bn2(out)))
        return out + (x if self.downsample is None else self.downsample(x))


class _Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, *, rngs: nnx.Rngs, **dt: Any) -> None:
        self.bn1 = torch_batch_norm(c_in, rngs=rngs, **dt)
        self.conv1 = _conv(c_in, planes, 1, 1, rngs, **dt)
        self.bn2 = torch_batch_norm(planes, rngs=rngs, **dt)
        self.conv2 = _conv(planes, planes, 3, stride, rngs, **dt)  # stride on the 3x3, as reference
        self.bn3 = torch_batch_norm(planes, rngs=rngs, **dt)
        c_out = planes * self.expansion
        self.conv3 = _conv(planes, c_out, 1, 1, rngs, **dt)
        self.downsample = (
            _conv(c_in, c_out, 1, stride, rngs, **dt) if stride != 1 or c_in != c_out else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.conv1(jax.nn.relu(self.bn1(x)))
        out = self.conv2(jax.nn.relu(self.bn2(out)))
        out = self.conv3(jax.nn.relu(self.bn3(out)))
        return out + (x if self.downsample is None else self.downsample(x))


def preresnet_blocks(depth: int) -> tuple[str, int]:
    """Block type and blocks per stage for a PreResNet depth, with the reference's rules.

    Args:
      depth: total number of weighted layers.

    Returns:
      ``("bottleneck", n)`` for depth >= 44 (``depth = 9n + 2``), else ``("basic", n)``
      (``depth = 6n + 2``).

    Raises:
      ValueError: when the depth fits neither rule.

    Example:
      >>> preresnet_blocks(110), preresnet_blocks(20)
      (('bottleneck', 12), ('basic', 3))
    """
    if depth >= 44:
        if (depth - 2) % 9:
            raise ValueError(f"PreResNet depth {depth} >= 44 must be 9n + 2 (bottleneck blocks)")
        return "bottleneck", (depth - 2) // 9
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"PreResNet depth {depth} < 44 must be 6n + 2 with n >= 1 (basic blocks)")
    return "basic", (depth - 2) // 6


class PreResNet(nnx.Module):
    """Pre-activation ResNet of any valid depth (see the module docstring).

    Args:
      num_classes: number of outputs.
      depth: ``6n + 2`` (< 44, basic blocks) or ``9n + 2`` (>= 44, bottleneck blocks).
      param_dtype: dtype of the parameters.
      dtype: computation dtype (``None``: from the inputs and parameters).
      rngs: random keys for the initialisation.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxspec.models import count_params
      >>> model = nnx.eval_shape(lambda: PreResNet(10, depth=20, rngs=nnx.Rngs(0)))  # shapes only
      >>> count_params(model), len(model.blocks)
      (272282, 9)
      >>> x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
      >>> nnx.eval_shape(lambda m, x: m(x), model, x).shape
      (2, 10)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        depth: int = 110,
        param_dtype: Any = jnp.float32,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ) -> None:
        kind, n = preresnet_blocks(depth)
        block = _Bottleneck if kind == "bottleneck" else _BasicBlock
        dt = {"param_dtype": param_dtype, "dtype": dtype}
        self.depth = depth
        self.conv1 = _conv(3, 16, 3, 1, rngs, **dt)
        blocks, c_in = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(block(c_in, planes, stride if i == 0 else 1, rngs=rngs, **dt))
                c_in = planes * block.expansion
        self.blocks = nnx.List(blocks)
        self.bn = torch_batch_norm(c_in, rngs=rngs, **dt)
        self.fc = torch_linear(c_in, num_classes, rngs=rngs, **dt)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        x = jax.nn.relu(self.bn(x))
        return self.fc(jnp.mean(x, axis=(1, 2)))  # == AvgPool2d(8) on the 8x8 map of a 32x32 input


def PreResNet20(num_classes: int, *, rngs: nnx.Rngs, **kw: Any) -> PreResNet:
    """PreResNet-20 (basic blocks, 3 per stage): the small CPU-sized ResNet.

    Example:
      >>> from jaxspec.models import param_count
      >>> param_count("preresnet20", num_classes=10)
      272282
    """
    return PreResNet(num_classes, depth=20, rngs=rngs, **kw)


def PreResNet110(num_classes: int, *, rngs: nnx.Rngs, **kw: Any) -> PreResNet:
    """PreResNet-110 (bottleneck blocks, 12 per stage), the paper's ResNet.

    Example:
      >>> from jaxspec.models import param_count
      >>> param_count("preresnet110", num_classes=100)
      1169972
    """
    return PreResNet(num_classes, depth=110, rngs=rngs, **kw)


def PreResNet164(num_classes: int, *, rngs: nnx.Rngs, **kw: Any) -> PreResNet:
    """PreResNet-164 (bottleneck blocks, 18 per stage), the SWA code base's other ResNet.

    Example:
      >>> preresnet_blocks(164)
      ('bottleneck', 18)
    """
    return PreResNet(num_classes, depth=164, rngs=rngs, **kw)
