"""Model zoo (Flax NNX) and the Hessian-ready loss adapter.

Models follow the SWA code base the paper used (PreResNet, VGG) plus small CPU models; all take
NHWC float images ``(B, 32, 32, 3)`` and return logits, except the transformer language model
(integer tokens ``(B, T)`` to logits ``(B, T, V)``). :func:`hessian_loss` turns any NNX
classifier into the pure ``loss_fn(params, batch)`` of :mod:`jaxspec.hvp`.

Example:
  >>> from flax import nnx
  >>> from jaxspec.models import create_model, hessian_loss, param_count
  >>> param_count("vgg16", num_classes=10)
  15245130
  >>> model = create_model("mlp", num_classes=10, hidden=(16,), rngs=nnx.Rngs(0))
  >>> loss_fn, params = hessian_loss(model, bn_mode="running")
"""

from jaxspec.models.loss import BNMode
from jaxspec.models.loss import cross_entropy
from jaxspec.models.loss import hessian_loss
from jaxspec.models.loss import train_loss
from jaxspec.models.preresnet import PreResNet
from jaxspec.models.preresnet import PreResNet20
from jaxspec.models.preresnet import PreResNet110
from jaxspec.models.preresnet import PreResNet164
from jaxspec.models.preresnet import preresnet_blocks
from jaxspec.models.registry import abstract_model
from jaxspec.models.registry import count_params
from jaxspec.models.registry import create_model
from jaxspec.models.registry import model_names
from jaxspec.models.registry import param_count
from jaxspec.models.small import MLP
from jaxspec.models.small import SmallCNN
from jaxspec.models.transformer import Transformer
from jaxspec.models.transformer import TransformerBlock
from jaxspec.models.vgg import VGG
from jaxspec.models.vgg import VGG16
from jaxspec.models.vgg import VGG16BN
from jaxspec.models.vgg import VGG19
from jaxspec.models.vgg import VGG19BN

__all__ = [
    "BNMode",
    "MLP",
    "PreResNet",
    "PreResNet110",
    "PreResNet164",
    "PreResNet20",
    "SmallCNN",
    "Transformer",
    "TransformerBlock",
    "VGG",
    "VGG16",
    "VGG16BN",
    "VGG19",
    "VGG19BN",
    "abstract_model",
    "count_params",
    "create_model",
    "cross_entropy",
    "hessian_loss",
    "model_names",
    "param_count",
    "preresnet_blocks",
    "train_loss",
]
