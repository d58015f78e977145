"""Model registry: build a model of the zoo by name, and count its parameters without building it.

Names (case-insensitive; ``-`` and ``_`` are ignored, so ``"PreResNet-110"`` works):

* ``"preresnet<depth>"`` for any valid depth (``"preresnet20"``, ``"preresnet110"``, ...);
* ``"vgg16"``, ``"vgg16bn"``, ``"vgg19"``, ``"vgg19bn"``;
* ``"mlp"`` and ``"smallcnn"`` (small CPU models);
* ``"transformer"`` (a small decoder-only language model: ``num_classes`` is the vocabulary
  size, inputs are integer tokens ``(B, T)``, logits ``(B, T, V)``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import jax
from flax import nnx

from jaxspec.models.preresnet import PreResNet
from jaxspec.models.small import MLP, SmallCNN
from jaxspec.models.transformer import Transformer
from jaxspec.models.vgg import VGG16, VGG16BN, VGG19, VGG19BN

__all__ = ["abstract_model", "count_params", "create_model", "model_names", "param_count"]

_FIXED: dict[str, Callable[..., nnx.Module]] = {
    "vgg16": VGG16,
    "vgg16bn": VGG16BN,
    "vgg19": VGG19,
    "vgg19bn": VGG19BN,
    "mlp": MLP,
    "smallcnn": SmallCNN,
    "transformer": Transformer,
}
_PRERESNET = re.compile(r"preresnet(\d+)")


def _canonical(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def model_names() -> list[str]:
    """The registered names (sorted); ``"preresnet<depth>"`` also takes any other valid depth.

    Example:
      >>> "preresnet110" in model_names() and "vgg16bn" in model_names()
      True
    """
    return sorted([*_FIXED, "preresnet20", "preresnet110", "preresnet164"])


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs, **kw: Any) -> nnx.Module:
    """Builds a model of the zoo by name, in training mode (see :mod:`jaxspec.models.small`).

    Args:
      name: a name from :func:`model_names`, or ``"preresnet<depth>"``.
      num_classes: number of outputs (10 for CIFAR-10, 100 for CIFAR-100).
      rngs: random keys for the initialisation (and dropout streams).
      **kw: forwarded to the model class (e.g. ``param_dtype``, ``dtype``, ``hidden`` for the MLP).

    Returns:
      The model; it maps float images ``(B, 32, 32, 3)`` to logits ``(B, num_classes)``.

    Raises:
      ValueError: for an unknown name or an invalid PreResNet depth.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> model = create_model("mlp", num_classes=10, hidden=(), rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((1, 32, 32, 3), jnp.float32)).shape
      (1, 10)
    """
    key = _canonical(name)
    if key in _FIXED:
        return _FIXED[key](num_classes, rngs=rngs, **kw)
    if m := _PRERESNET.fullmatch(key):
        return PreResNet(num_classes, depth=int(m.group(1)), rngs=rngs, **kw)
    raise ValueError(f"unknown model {name!r}; known: {model_names()} or 'preresnet<depth>'")


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (``nnx.Param``; BatchNorm running statistics excluded).

    Works on a real model and on an abstract one from ``nnx.eval_shape``.

    Example:
      >>> from flax import nnx
      >>> count_params(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      8
    """
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract_model(name: str, *, num_classes: int, **kw: Any) -> nnx.Module:
    """A registered model with ``jax.ShapeDtypeStruct`` in place of arrays: nothing is allocated.

    For shapes, parameter counts, ``nnx.eval_shape`` of a forward pass, or as the target of a
    checkpoint restore.

    Args:
      name: as for :func:`create_model`.
      num_classes: number of outputs.
      **kw: as for :func:`create_model`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> model = abstract_model("vgg16", num_classes=10)
      >>> x = jax.ShapeDtypeStruct((128, 32, 32, 3), jnp.float32)
      >>> nnx.eval_shape(lambda m, x: m(x), model, x).shape
      (128, 10)
    """

    def build(key: jax.Array) -> nnx.Module:
        # The key is a tracer, so every initialiser is only traced (no parameter is allocated);
        # under ensure_compile_time_eval the Rngs counters, which depend on no tracer, stay
        # concrete. Traced counters would make Flax's Variable.set_value probe `tracer.sharding`,
        # for which JAX builds an error message by scanning the whole jaxpr: quadratic in the
        # model size, ~10 s instead of ~1 s for PreResNet-110.
        with jax.ensure_compile_time_eval():
            return create_model(name, num_classes=num_classes, rngs=nnx.Rngs(key), **kw)

    return nnx.eval_shape(build, jax.random.key(0))


def param_count(name: str, num_classes: int, **kw: Any) -> int:
    """Parameter count of a registered model, from shapes alone (nothing is allocated or compiled).

    Args:
      name: as for :func:`create_model`.
      num_classes: number of outputs.
      **kw: as for :func:`create_model`.

    Example:
      >>> param_count("preresnet110", num_classes=10)
      1146842
    """
    return count_params(abstract_model(name, num_classes=num_classes, **kw))
