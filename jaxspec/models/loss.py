"""Turn an NNX model into the pure ``loss_fn(params, batch)`` that the Hessian code takes.

A batch is the project-wide dict ``{"image": float (B, H, W, C), "label": int (B,)}``; the loss is
the mean softmax cross-entropy over the batch. A sequence model (the transformer language model)
reads ``{"tokens": int (B, T), "label": int (B, T)}`` (``input_key="tokens"``) and returns
logits ``(B, T, V)``; the loss is then the mean over every (sequence, position).

BatchNorm must be chosen explicitly for a Hessian (``bn_mode``):

* ``"batch"``: every batch is normalised with its own statistics, the function the network
  computes in training and the one whose Hessian Granziol et al. (2020) report. The running
  statistics are *not* updated: the loss is pure and the model is never touched.
* ``"running"``: the stored running statistics (eval mode), as PyHessian does; each sample's loss
  then depends on that sample alone, so the loss of a data set is the mean over its samples
  whatever the batching.

Dropout is always off (``deterministic=True`` and, for models that set it at call time, rate 0).

Training (for the training loop, not for Hessians) runs the model itself in training mode, with
NNX's stateful API: BatchNorm uses batch statistics and updates its running statistics in place,
dropout draws from the ``rngs`` the model was built with::

    model.train()  # BN batch statistics + running-average updates; dropout on
    optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, batch):
        grad_fn = nnx.value_and_grad(train_loss, has_aux=True)
        (loss, logits), grads = grad_fn(model, batch)
        optimizer.update(model, grads)  # running stats were already updated by the forward pass
        return loss

    model.eval()  # evaluate with the running statistics, dropout off

Weight decay for training belongs in the optimizer (``optax.add_decayed_weights``); the
``weight_decay`` of :func:`hessian_loss` is only there to reproduce the Hessian of a regularised
loss.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxspec.checks import check_labels
from jaxspec.kinds import Categorical, SplitLoss

__all__ = ["BNMode", "cross_entropy", "hessian_loss", "train_loss"]

BNMode = Literal["batch", "running"]
Batch = dict[str, jax.Array]
Forward = Callable[[nnx.Module, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels, computed in at least float32.

    Labels must lie in ``[0, num_classes)`` (``num_classes = logits.shape[-1]``); otherwise the
    plain cross-entropy returns NaN with finite gradients, or reads ``-1`` as the last class.
    Concrete labels out of range raise ``ValueError`` (:func:`jaxspec.checks.check_labels`);
    traced ones (under ``jit``, where nothing can be raised) make the loss and all its
    derivatives NaN, so a Lanczos run stops on them instead of returning a spectrum. Checking
    the data set once before the run gives the clearer message.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(cross_entropy(jnp.zeros((4, 10)), jnp.arange(4))), 4)  # log(10)
      2.3026
      >>> cross_entropy(jnp.zeros((2, 10)), jnp.array([3, 10]))
      Traceback (most recent call last):
      ...
      ValueError: labels: 1 of 2 labels out of range [0, 10) (num_classes=10): values 10 at index 1. A label >= num_classes makes the loss NaN while its gradients stay finite; a negative one is silently read as a class counted from the end.
    """
    num_classes = logits.shape[-1]
    if not isinstance(labels, jax.core.Tracer):
        check_labels(labels, num_classes)
    # bf16/f16 logits would lose the loss's low bits, which the Hessian is made of.
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    # Traced labels cannot raise: a factor of exactly 1 when all are valid (bit-identical
    # results), NaN otherwise, which a multiplication carries into every derivative too.
    valid = jnp.all((labels >= 0) & (labels < num_classes))
    logits = logits * jnp.where(valid, 1.0, jnp.nan).astype(logits.dtype)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_loss(model: nnx.Module, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy of ``model`` on ``batch`` in the model's current mode, and the logits.

    For training: with ``model.train()``, BatchNorm updates its running statistics in place and
    dropout is on; differentiate with ``nnx.value_and_grad(train_loss, has_aux=True)`` (see the
    module docstring). Not for Hessians: use :func:`hessian_loss`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxspec.models import MLP
      >>> model = MLP(3, in_features=4, hidden=(), rngs=nnx.Rngs(0))
      >>> batch = {"image": jnp.ones((2, 2, 2, 1), jnp.float32), "label": jnp.array([0, 1])}
      >>> loss, logits = train_loss(model, batch)
      >>> logits.shape
      (2, 3)
    """
    logits = model(batch["image"])
    return cross_entropy(logits, batch["label"]), logits


def _call(model: nnx.Module, images: jax.Array) -> jax.Array:
    return model(images)


def _label_cross_entropy(logits: jax.Array, batch: Batch) -> jax.Array:
    # Logits arrive as rows (N, C) (see hessian_loss's apply); labels (B,) or (B, T) follow.
    return cross_entropy(logits, batch["label"].reshape(-1))


class _ReadOnlyStat(nnx.BatchStat):
    """A running statistic in the loss's private copy of the model: reads as usual, writes dropped.

    BatchNorm in batch-statistics mode assigns new running averages on every call. Dropping the
    write keeps the loss pure by construction, and skips Flax's check of the traced value's
    sharding, for which JAX scans the whole jaxpr once per BatchNorm (tracing time quadratic in
    depth: a PreResNet-110 HVP traced in 27 s with the writes, 13 s without, on a 2-core CPU).
    The attempt is recorded in the metadata so that the adapter can check BatchNorm ran in the
    mode asked for.
    """

    def set_value(self, value: Any, **kwargs: Any) -> None:
        del value, kwargs
        self.set_metadata(jaxspec_written=True)


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _read_only_stats(state: nnx.State) -> nnx.State:
    return jax.tree.map(
        lambda v: _ReadOnlyStat.from_metadata(v.get_raw_value(), v.get_metadata())
        if isinstance(v, nnx.BatchStat)
        else v,
        state,
        is_leaf=_is_var,
    )


def _check_bn_mode(model: nnx.Module, bn_mode: BNMode) -> None:
    stats = jax.tree.leaves(nnx.state(model, nnx.BatchStat), is_leaf=_is_var)
    if not stats:
        return
    # A BatchNorm that normalises with batch statistics also writes new running averages.
    written = [bool(v.get_metadata().get("jaxspec_written", False)) for v in stats]
    if bn_mode == "running" and any(written):
        raise ValueError(
            "bn_mode='running' but the forward pass normalised with batch statistics; pass "
            "forward=lambda m, x: m(x, train=False) (or whatever the model's eval flag is)"
        )
    if bn_mode == "batch" and not any(written):
        raise ValueError(
            "bn_mode='batch' but no BatchNorm used batch statistics; pass "
            "forward=lambda m, x: m(x, train=True) (or whatever the model's train flag is)"
        )


def hessian_loss(
    model: nnx.Module,
    *,
    bn_mode: BNMode,
    weight_decay: float = 0.0,
    forward: Forward | None = None,
    input_key: str = "image",
) -> tuple[SplitLoss, nnx.State]:
    """A pure ``loss_fn(params, batch)`` of ``model`` and its parameters, for every matrix kind.

    Works for any NNX model mapping images to logits, with or without BatchNorm and dropout. The
    mode is set on a *view* of the model (``nnx.view(use_running_average=..., deterministic=True)``)
    so ``model`` itself keeps its mode and its state; the BatchNorm running statistics are
    read, never written, whatever ``bn_mode``. They are those of ``model`` when the loss is
    built: after more training, ``bn_mode="running"`` needs a new ``hessian_loss`` (passing new
    parameters, or ``with_params``, keeps the old statistics; ``"batch"`` has none to keep).

    Models that take a mode flag at call time (``model(x, train=...)``) pass ``forward``, e.g.
    ``forward=lambda m, x: m(x, train=False)`` with ``bn_mode="running"``. A call-time flag
    overrides the view, so the adapter checks while tracing that BatchNorm really used the
    statistics ``bn_mode`` asks for and raises ``ValueError`` otherwise; dropout is forced off
    by setting every ``nnx.Dropout`` rate to 0, which no flag overrides.

    Args:
      model: the network; not modified.
      bn_mode: ``"batch"`` (statistics of each batch, as the paper) or ``"running"`` (stored
        running statistics, as PyHessian). Required: the two give different Hessians.
      weight_decay: adds ``0.5 * weight_decay * sum(p ** 2)`` over all parameters (BatchNorm
        scales and biases included, as PyTorch's SGD weight decay); 0 (off) as in the paper.
        Its Hessian ``weight_decay * I`` is added to every matrix kind (GGN and Fisher kinds
        included: the curvature of the regularised objective); it is not in the logits.
      forward: ``forward(model, images) -> logits``; default ``model(images)``.
      input_key: the batch entry the model reads (``"tokens"`` for the transformer).

    Returns:
      ``(loss_fn, params)``: ``params`` is the ``nnx.Param`` state of ``model`` (a pytree;
      ``nnx.split(model, nnx.Param, ...)[1]``), ``loss_fn(params, batch)`` the mean
      cross-entropy of the batch dict ``{"image", "label"}``. Parameters of another dtype
      (e.g. a float64 copy) may be passed; the model computes in their dtype, unless it was
      built with a fixed computation ``dtype=`` (then in that one). ``loss_fn`` is
      a :class:`jaxspec.SplitLoss`: ``loss_fn.apply(params, batch)`` gives the logits,
      ``output_loss`` is the cross-entropy with ``batch["label"]``, ``predictive`` is
      ``jaxspec.Categorical("label")``, so ``kind="ggn"``, ``"fisher"``, ``"fisher_mc"`` and
      ``"empirical_fisher"`` work in both BatchNorm modes (in batch mode the per-sample terms
      of the Fisher kinds are those of the batch's loss, the batch and its statistics held
      fixed; see :mod:`jaxspec.kinds`). Logits of more than two axes, ``(B, T, V)`` of a
      sequence model, are returned by ``apply`` as rows ``(B * T, V)`` and the labels
      flattened to match: every (sequence, position) is one sample of those kinds, so the
      Fisher is the mean over all ``B * T`` predictions, as the loss is.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxspec import hvp
      >>> from jaxspec.models import SmallCNN
      >>> model = SmallCNN(10, widths=(4,), rngs=nnx.Rngs(0))
      >>> loss_fn, params = hessian_loss(model, bn_mode="batch")
      >>> batch = {"image": jnp.ones((4, 4, 4, 3), jnp.float32), "label": jnp.arange(4)}
      >>> hv = jax.jit(hvp, static_argnums=0)(loss_fn, params, batch, params)
      >>> jax.tree.structure(hv) == jax.tree.structure(params)
      True

    A language model (logits ``(B, T, V)``): the loss of uniform logits is ``log V``.

      >>> from jaxspec.models import Transformer
      >>> lm = Transformer(5, num_layers=1, width=8, num_heads=2, max_len=4,
      ...                  rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
      >>> lm_loss, lm_params = hessian_loss(lm, bn_mode="batch", input_key="tokens")
      >>> zero = jax.tree.map(jnp.zeros_like, lm_params)
      >>> tokens = jnp.zeros((2, 4), jnp.int32)
      >>> lm_loss.apply(zero, {"tokens": tokens}).shape
      (8, 5)
      >>> round(float(lm_loss(zero, {"tokens": tokens, "label": tokens})), 4)  # log(5)
      1.6094
    """
    if bn_mode not in ("batch", "running"):
        raise ValueError(f"bn_mode must be 'batch' or 'running', got {bn_mode!r}")
    forward = _call if forward is None else forward
    view = nnx.view(
        model,
        use_running_average=bn_mode == "running",
        deterministic=True,
        raise_if_not_found=False,  # models without BatchNorm or dropout
    )
    view = nnx.with_attributes(view, only=nnx.Dropout, rate=0.0, raise_if_not_found=False)
    graphdef, params, rest = nnx.split(view, nnx.Param, ...)
    rest = _read_only_stats(rest)

    def apply(params: Any, batch: Batch) -> jax.Array:
        # copy=True: fresh Variables, so whatever else the forward pass assigns lands in this
        # throw-away module, never in `rest` or `model`.
        m = nnx.merge(graphdef, params, rest, copy=True)
        logits = forward(m, batch[input_key])
        _check_bn_mode(m, bn_mode)
        return logits.reshape(-1, logits.shape[-1])

    loss_fn = SplitLoss(apply, _label_cross_entropy, predictive=Categorical("label"),
                        weight_decay=weight_decay)
    return loss_fn, params
