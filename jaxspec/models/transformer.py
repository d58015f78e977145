"""A small decoder-only transformer language model (GPT-style, pre-LayerNorm, causal attention).

The model maps integer tokens ``(B, T)`` to next-token logits ``(B, T, V)``; ``num_classes`` is
the vocabulary size ``V`` (256 for byte-level text, :mod:`jaxspec.text`). Position ``t``'s
logits depend on tokens ``0..t`` only.

Every weight matrix is its own ``nnx.Linear`` (attention query, key, value and output
projections, the two MLP layers, the head), so :func:`jaxspec.param_blocks` with ``by="layer"``
names the blocks of Zhang et al. (2024), "Why Transformers Need Adam: A Hessian Perspective":
``embed``, ``pos``, ``layers/<i>/{norm1, query, key, value, out, norm2, fc1, fc2}``, ``norm``
and ``head``. All kernels are two-dimensional ``(in, out)``.

Initialisation as GPT-2: weights and embeddings ``N(0, 0.02^2)``, the projections that write
into the residual stream (``out``, ``fc2``) ``N(0, (0.02 / sqrt(2 L))^2)`` for ``L`` layers,
biases 0, LayerNorm scale 1 and bias 0. No dropout, so the model is deterministic in every mode.

:func:`jaxspec.models.hessian_loss` takes it with ``input_key="tokens"`` (the batch dict of
:mod:`jaxspec.text`); its loss is the mean next-token cross-entropy over every (sequence,
position), each position a sample of the GGN and Fisher kinds.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["Transformer", "TransformerBlock"]

_STD = 0.02


def _linear(n_in: int, n_out: int, std: float, *, rngs: nnx.Rngs, param_dtype: Any,
            dtype: Any) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, kernel_init=nnx.initializers.normal(std),
                      bias_init=nnx.initializers.zeros, param_dtype=param_dtype, dtype=dtype,
                      rngs=rngs)


def _norm(width: int, *, rngs: nnx.Rngs, param_dtype: Any, dtype: Any) -> nnx.LayerNorm:
    return nnx.LayerNorm(width, epsilon=1e-5, param_dtype=param_dtype, dtype=dtype, rngs=rngs)


class TransformerBlock(nnx.Module):
    """One pre-LayerNorm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Causal multi-head self-attention (:func:`jax.nn.dot_product_attention` with
    ``is_causal=True``, its softmax differentiated by :func:`jax.nn.softmax`'s own rule, which
    JAX's ``softmax_custom_jvp`` option turns on) and a GELU MLP of width ``mlp_ratio * width``.

    Args:
      width: the residual stream's width (divisible by ``num_heads``).
      num_heads: attention heads.
      mlp_ratio: the MLP's hidden width over ``width``.
      residual_std: initial standard deviation of ``out`` and ``fc2``.
      param_dtype: dtype of the parameters.
      dtype: computation dtype (``None``: from the inputs and parameters).
      rngs: random keys for the initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))  # compiles faster than threefry on CPU
      >>> block = TransformerBlock(8, num_heads=2, rngs=rngs)
      >>> block(jnp.ones((1, 5, 8))).shape
      (1, 5, 8)
    """

    def __init__(self, width: int, *, num_heads: int, mlp_ratio: int = 4,
                 residual_std: float = _STD, param_dtype: Any = jnp.float32, dtype: Any = None,
                 rngs: nnx.Rngs) -> None:
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        self.num_heads = num_heads
        self.norm1 = _norm(width, **kw)
        self.query = _linear(width, width, _STD, **kw)
        self.key = _linear(width, width, _STD, **kw)
        self.value = _linear(width, width, _STD, **kw)
        self.out = _linear(width, width, residual_std, **kw)
        self.norm2 = _norm(width, **kw)
        self.fc1 = _linear(width, mlp_ratio * width, _STD, **kw)
        self.fc2 = _linear(mlp_ratio * width, width, residual_std, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, w = x.shape
        h = self.norm1(x)
        heads = lambda a: a.reshape(b, t, self.num_heads, w // self.num_heads)  # noqa: E731
        q, k, v = heads(self.query(h)), heads(self.key(h)), heads(self.value(h))
        # jax.nn.softmax with its own derivative rule (a JAX option, off by default): the
        # same derivatives, whose tangent reads the probabilities alone; a curvature product
        # recomputes less of the attention at every step than with the rule JAX derives
        with jax.softmax_custom_jvp(True):
            attended = _causal_attention(q, k, v)
        x = x + self.out(attended.reshape(b, t, w))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x))))


def _causal_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal attention over ``(batch, time, heads, head width)``:
    :func:`jax.nn.dot_product_attention`, which computes its softmax in float32 whatever its
    inputs; wider inputs (a float64 model, the tests' dense references) take the same attention
    written out in their dtype."""
    if jnp.finfo(q.dtype).bits <= 32:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True)
    logits = jnp.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(q.shape[-1])
    t = q.shape[1]
    logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, jnp.finfo(logits.dtype).min)
    return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, axis=-1), v)


class Transformer(nnx.Module):
    """Decoder-only transformer LM: token and learned position embeddings, blocks, norm, head.

    Args:
      num_classes: vocabulary size ``V`` (tokens lie in ``[0, V)``; logits have ``V`` entries).
      num_layers: transformer blocks.
      width: embedding and residual width.
      num_heads: attention heads per block.
      mlp_ratio: MLP hidden width over ``width``.
      max_len: longest sequence (rows of the position embedding).
      param_dtype: dtype of the parameters.
      dtype: computation dtype (``None``: from the parameters).
      rngs: random keys for the initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxspec.models import param_count
      >>> param_count("transformer", num_classes=256)   # the defaults
      875520
      >>> rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))  # compiles faster than threefry on CPU
      >>> model = Transformer(256, num_layers=1, width=16, num_heads=2, max_len=8, rngs=rngs)
      >>> model(jnp.zeros((2, 8), jnp.int32)).shape
      (2, 8, 256)
    """

    def __init__(self, num_classes: int = 256, *, num_layers: int = 4, width: int = 128,
                 num_heads: int = 4, mlp_ratio: int = 4, max_len: int = 128,
                 param_dtype: Any = jnp.float32, dtype: Any = None, rngs: nnx.Rngs) -> None:
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        init = nnx.initializers.normal(_STD)
        self.max_len, self.dtype = max_len, dtype
        self.embed = nnx.Embed(num_classes, width, embedding_init=init, **kw)
        self.pos = nnx.Embed(max_len, width, embedding_init=init, **kw)
        residual_std = _STD / math.sqrt(2 * num_layers)
        self.layers = nnx.List([
            TransformerBlock(width, num_heads=num_heads, mlp_ratio=mlp_ratio,
                             residual_std=residual_std, **kw) for _ in range(num_layers)])
        self.norm = _norm(width, **kw)
        self.head = _linear(width, num_classes, _STD, **kw)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integers of shape (batch, time), got "
                             f"{tokens.dtype} {tokens.shape}")
        t = tokens.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence of {t} tokens is longer than max_len={self.max_len}")
        # the tables read in their own dtype (nnx.Embed fixes its dtype when it is built, so a
        # float64 copy of a float32 model would look its embeddings up in float32)
        x = self.embed.embedding[...][tokens] + self.pos.embedding[...][:t][None]
        if self.dtype is not None:
            x = x.astype(self.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))
