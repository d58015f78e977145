"""Small CPU models for tests and quick experiments, and the layer helpers the zoo shares.

Models take NHWC float images ``(B, H, W, C)`` and return logits ``(B, num_classes)``.

Initialisation (kept identical across the zoo so the models match the PyTorch code bases the paper
used):

* Linear layers use PyTorch's default ``nn.Linear`` init: weight and bias both uniform on
  ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` (``kaiming_uniform(a=sqrt(5))`` for the weight).
* Convolutions use He-normal with fan-out, ``std = sqrt(2 / (k * k * out_channels))``, the init
  of the SWA code base's PreResNet and VGG; conv biases (where present) start at 0.
* BatchNorm scale 1, bias 0, ``momentum=0.9`` (PyTorch's ``momentum=0.1``: Flax keeps ``0.9`` of
  the old running statistic, PyTorch takes ``0.1`` of the new one), ``epsilon=1e-5``.

Models are built in training mode (batch statistics, dropout on), like a fresh PyTorch module;
switch with ``model.eval()`` / ``model.train()`` or ``nnx.view``. The Hessian loss adapter in
:mod:`jaxspec.models.loss` picks its own mode and never changes the model.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["MLP", "SmallCNN", "conv_init", "torch_batch_norm", "torch_conv", "torch_linear"]

# Weights N(0, 1/fan_in), untruncated (LeCun normal without the truncation), biases 0.
_normal_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")

# He-normal, fan-out: for a kernel (k, k, in, out) jax's fan_out is k * k * out, as in SWA's
# ``n = k * k * out_channels; normal_(0, sqrt(2 / n))``. "normal" is untruncated, like torch.
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _torch_bias_init(fan_in: int) -> Any:
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear(
    in_features: int, out_features: int, *, rngs: nnx.Rngs, param_dtype: Any, dtype: Any
) -> nnx.Linear:
    """``nnx.Linear`` with PyTorch's default initialisation (see the module docstring).

    Example:
      >>> from flax import nnx
      >>> layer = nnx.eval_shape(lambda: torch_linear(512, 10, rngs=nnx.Rngs(0),
      ...                                             param_dtype=jnp.float32, dtype=None))
      >>> layer.kernel.shape, layer.bias.shape
      ((512, 10), (10,))
    """
    return nnx.Linear(
        in_features,
        out_features,
        # variance_scaling(1/3, fan_in, uniform): limit sqrt(3 * (1/3) / fan_in) = 1/sqrt(fan_in).
        kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=_torch_bias_init(in_features),
        param_dtype=param_dtype,
        dtype=dtype,
        rngs=rngs,
    )


def torch_conv(
    in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 1,
    use_bias: bool = True, rngs: nnx.Rngs, param_dtype: Any, dtype: Any
) -> nnx.Conv:
    """``nnx.Conv`` as PyTorch's ``Conv2d(padding=(k - 1) // 2)``, He-initialised (``conv_init``).

    The padding is explicit and symmetric: Flax's ``"SAME"`` pads (0, 1) for a stride-2 3x3
    convolution of an even input where PyTorch pads (1, 1), and the outputs would differ. The
    bias, if any, starts at zero, as in the SWA code the paper trains with.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> conv = torch_conv(3, 16, stride=2, rngs=nnx.Rngs(0), param_dtype=jnp.float32,
      ...                   dtype=None)
      >>> conv.kernel.shape, conv.padding, conv(jnp.ones((1, 32, 32, 3))).shape
      ((3, 3, 3, 16), ((1, 1), (1, 1)), (1, 16, 16, 16))
    """
    pad = (kernel_size - 1) // 2
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=conv_init,
        param_dtype=param_dtype,
        dtype=dtype,
        rngs=rngs,
    )


def torch_batch_norm(
    features: int, *, rngs: nnx.Rngs, param_dtype: Any, dtype: Any
) -> nnx.BatchNorm:
    """``nnx.BatchNorm`` equivalent to PyTorch's ``BatchNorm2d`` defaults (momentum 0.1, eps 1e-5).

    Example:
      >>> from flax import nnx
      >>> bn = nnx.eval_shape(lambda: torch_batch_norm(16, rngs=nnx.Rngs(0),
      ...                                              param_dtype=jnp.float32, dtype=None))
      >>> bn.momentum, bn.epsilon, bn.scale.shape
      (0.9, 1e-05, (16,))
    """
    return nnx.BatchNorm(
        features, momentum=0.9, epsilon=1e-5, param_dtype=param_dtype, dtype=dtype, rngs=rngs
    )


class MLP(nnx.Module):
    """Fully connected network on flattened inputs (ReLU and PyTorch's init by default).

    Args:
      num_classes: number of outputs.
      in_features: length of a flattened input (``32 * 32 * 3`` for CIFAR).
      hidden: widths of the hidden layers.
      activation: the hidden layers' nonlinearity (e.g. ``jax.nn.tanh``).
      init: ``"torch"`` (PyTorch's ``nn.Linear`` default, see the module docstring) or
        ``"normal"`` (weights ``N(0, 1/fan_in)``, untruncated; biases 0: the classic init of a
        tanh network, whose pre-activations then have unit variance).
      param_dtype: dtype of the parameters.
      dtype: computation dtype (``None``: from the inputs and parameters).
      rngs: random keys for the initialisation.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> model = MLP(10, in_features=12, hidden=(8,), rngs=nnx.Rngs(0))
      >>> model(jnp.ones((5, 2, 2, 3), jnp.float32)).shape
      (5, 10)
      >>> tanh = MLP(2, in_features=3, hidden=(5,), activation=jax.nn.tanh, init="normal",
      ...            rngs=nnx.Rngs(0))
      >>> float(jnp.abs(tanh.layers[0].bias[...]).max())
      0.0
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_features: int = 32 * 32 * 3,
        hidden: Sequence[int] = (512, 512),
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        init: str = "torch",
        param_dtype: Any = jnp.float32,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ) -> None:
        if init not in ("torch", "normal"):
            raise ValueError(f"init must be 'torch' or 'normal', got {init!r}")
        widths = [in_features, *hidden, num_classes]
        if init == "torch":
            layers = [torch_linear(a, b, rngs=rngs, param_dtype=param_dtype, dtype=dtype)
                      for a, b in zip(widths[:-1], widths[1:])]
        else:
            layers = [nnx.Linear(a, b, kernel_init=_normal_init, param_dtype=param_dtype,
                                 dtype=dtype, rngs=rngs)  # nnx.Linear's bias starts at 0
                      for a, b in zip(widths[:-1], widths[1:])]
        self.layers = nnx.List(layers)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class SmallCNN(nnx.Module):
    """Tiny CNN: ``[conv3x3 - (BN) - ReLU - maxpool2]`` per width, mean pool, dropout, Linear.

    Fast enough for dense Hessians in tests (1,586 parameters with the defaults) while
    exercising every piece the big models have: convolutions, BatchNorm and dropout.

    Args:
      num_classes: number of outputs.
      widths: channels of the conv stages.
      in_channels: channels of the input images.
      batch_norm: whether each conv is followed by BatchNorm (then the conv has no bias).
      dropout: dropout rate before the classifier (0 disables it).
      param_dtype: dtype of the parameters.
      dtype: computation dtype (``None``: from the inputs and parameters).
      rngs: random keys for the initialisation (and the dropout stream).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> model = SmallCNN(10, widths=(4,), rngs=nnx.Rngs(0))
      >>> nnx.jit(lambda m, x: m(x))(model, jnp.ones((2, 4, 4, 3), jnp.float32)).shape
      (2, 10)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        widths: Sequence[int] = (8, 16),
        in_channels: int = 3,
        batch_norm: bool = True,
        dropout: float = 0.0,
        param_dtype: Any = jnp.float32,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ) -> None:
        convs, norms = [], []
        c_in = in_channels
        for c in widths:
            convs.append(
                # a bias before BatchNorm is redundant
                torch_conv(c_in, c, use_bias=not batch_norm, rngs=rngs, param_dtype=param_dtype,
                           dtype=dtype)
            )
            if batch_norm:
                norms.append(torch_batch_norm(c, rngs=rngs, param_dtype=param_dtype, dtype=dtype))
            c_in = c
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.fc = torch_linear(c_in, num_classes, rngs=rngs, param_dtype=param_dtype, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if len(self.norms):
                x = self.norms[i](x)
            x = nnx.max_pool(jax.nn.relu(x), (2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))
        return self.fc(self.dropout(x))

