"""VGG for CIFAR, as in the SWA code base the paper used (``models/vgg.py``).

``features``: 3x3 convs (padding 1, with bias) per the config, each followed by (BatchNorm and)
ReLU, 2x2 max pools at the ``"M"`` entries; for 32x32 inputs the result is 1x1x512, flattened.
``classifier``: Dropout(0.5) - Linear(512, 512) - ReLU - Dropout(0.5) - Linear(512, 512) - ReLU -
Linear(512, num_classes).

Initialisation, as the reference: convs He-normal fan-out ``std = sqrt(2 / (k * k * out))`` with
bias 0; BatchNorm scale 1 / bias 0 (``momentum=0.9`` in Flax terms == PyTorch's 0.1,
``epsilon=1e-5``); Linear layers PyTorch's default (uniform ``+-1/sqrt(fan_in)`` for weight and
bias; the reference leaves them at the default).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspec.models.small import torch_batch_norm, torch_conv, torch_linear

__all__ = ["VGG", "VGG16", "VGG16BN", "VGG19", "VGG19BN", "VGG_CFG"]

VGG_CFG: dict[int, tuple[int | str, ...]] = {
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}  # fmt: skip


class VGG(nnx.Module):
    """VGG-16/19 with or without BatchNorm (see the module docstring).

    Args:
      num_classes: number of outputs.
      depth: 16 or 19 (a key of :data:`VGG_CFG`), unless ``cfg`` is given.
      batch_norm: BatchNorm after every conv.
      cfg: a custom layer config (channel counts and ``"M"`` for max pool).
      dropout: the classifier's dropout rate.
      param_dtype: dtype of the parameters.
      dtype: computation dtype (``None``: from the inputs and parameters).
      rngs: random keys for the initialisation (and the dropout stream).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> model = nnx.eval_shape(lambda: VGG(10, batch_norm=True, rngs=nnx.Rngs(0)))  # shapes only
      >>> len(model.convs), len(model.norms), model.fc3.kernel.shape
      (13, 13, (512, 10))
      >>> x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
      >>> nnx.eval_shape(lambda m, x: m(x), model, x).shape
      (2, 10)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        depth: int = 16,
        batch_norm: bool = False,
        cfg: Sequence[int | str] | None = None,
        dropout: float = 0.5,
        param_dtype: Any = jnp.float32,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ) -> None:
        dt = {"param_dtype": param_dtype, "dtype": dtype}
        self.cfg = tuple(VGG_CFG[depth] if cfg is None else cfg)
        convs, norms, c_in = [], [], 3
        for v in self.cfg:
            if v == "M":
                continue
            convs.append(torch_conv(c_in, int(v), rngs=rngs, **dt))
            if batch_norm:
                norms.append(torch_batch_norm(int(v), rngs=rngs, **dt))
            c_in = int(v)
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.drop1 = nnx.Dropout(dropout, rngs=rngs)
        self.fc1 = torch_linear(512, 512, rngs=rngs, **dt)  # 512: flattened 1x1x512 for 32x32
        self.drop2 = nnx.Dropout(dropout, rngs=rngs)
        self.fc2 = torch_linear(512, 512, rngs=rngs, **dt)
        self.fc3 = torch_linear(512, num_classes, rngs=rngs, **dt)

    def __call__(self, x: jax.Array) -> jax.Array:
        i = 0
        for v in self.cfg:
            if v == "M":
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
                continue
            x = self.convs[i](x)
            if len(self.norms):
                x = self.norms[i](x)
            x = jax.nn.relu(x)
            i += 1
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.fc1(self.drop1(x)))
        x = jax.nn.relu(self.fc2(self.drop2(x)))
        return self.fc3(x)


def VGG16(num_classes: int, *, rngs: nnx.Rngs, **kw: Any) -> VGG:
    """VGG-16 without BatchNorm, the paper's VGG.

    Example:
      >>> from jaxspec.models import param_count
      >>> param_count("vgg16", num_classes=100)
      15291300
    """
    return VGG(num_classes, depth=16, batch_norm=False, rngs=rngs, **kw)


def VGG16BN(num_classes: int, *, rngs: nnx.Rngs, **kw: Any) -> VGG:
    """VGG-16 with BatchNorm after every conv.

    Example:
      >>> from jaxspec.models import param_count
      >>> param_count("vgg16bn", num_classes=100)
      15299748
    """
    return VGG(num_classes, depth=16, batch_norm=True, rngs=rngs, **kw)


def VGG19(num_classes: int, *, rngs: nnx.Rngs, **kw: Any) -> VGG:
    """VGG-19 without BatchNorm.

    Example:
      >>> from jaxspec.models import param_count
      >>> param_count("vgg19", num_classes=10) > param_count("vgg16", num_classes=10)
      True
    """
    return VGG(num_classes, depth=19, batch_norm=False, rngs=rngs, **kw)


def VGG19BN(num_classes: int, *, rngs: nnx.Rngs, **kw: Any) -> VGG:
    """VGG-19 with BatchNorm after every conv.

    Example:
      >>> from jaxspec.models import param_count
      >>> param_count("vgg19bn", num_classes=10) > param_count("vgg19", num_classes=10)
      True
    """
    return VGG(num_classes, depth=19, batch_norm=True, rngs=rngs, **kw)
