"""Matrix kinds beyond the Hessian: the loss split at the model outputs, and per-batch products.

The Hessian needs only ``loss_fn(params, batch)``. The Gauss-Newton and Fisher matrices need the
model's outputs: a :class:`SplitLoss` holds ``apply(params, batch) -> outputs`` and
``output_loss(outputs, batch) -> scalar`` (the mean over the batch) and is itself callable as
``loss_fn(params, batch)``, so one object serves every kind. With ``z = apply(params, batch)`` of
leading (sample) axis ``B``, ``J = dz/dparams`` and the mean loss ``L(z) = (1/B) sum_i l_i(z_i)``:

* ``"ggn"`` (:func:`ggn_mv`): ``J^T H_z J``, ``H_z`` the Hessian of ``output_loss`` in ``z``;
  positive semi-definite when ``output_loss`` is convex in ``z`` (cross-entropy, squared error);
* ``"fisher"`` (:func:`fisher_mv`): ``(1/B) sum_i J_i^T F_i J_i`` with ``F_i =
  E_{y ~ p(y|z_i)} [g_y g_y^T]``, ``g_y = d log p(y|z_i) / dz_i``, the exact Fisher of the model's
  predictive distribution (``SplitLoss.predictive``); for softmax cross-entropy it equals the GGN;
* ``"fisher_mc"`` (:class:`FisherMC`): the same expectation by Monte Carlo, ``num_samples``
  labels per input drawn from the model with a key that is fixed for the operator;
* ``"empirical_fisher"`` (:func:`empirical_fisher_mv`): ``(1/B) sum_i g_i g_i^T``, ``g_i`` the
  gradient of sample ``i``'s loss term at its true target.

Each product costs one linearisation of ``apply`` (a forward pass plus a JVP), a cheap
output-space computation and one transposed JVP (a VJP); ``J`` is never formed. The Fisher kinds
and the empirical Fisher assume that ``output_loss`` is a mean of per-sample terms, term ``i``
reading only ``outputs[i]`` (leading axis); ``apply`` may mix samples (BatchNorm with batch
statistics), and the per-sample terms are then those of the batch's loss, the batch held fixed.

A ``SplitLoss.weight_decay`` adds ``0.5 * weight_decay * |params|^2`` to the loss; its Hessian
``weight_decay * I`` is added to every kind (it is positive definite, and the curvature of the
regularised objective). All products are pure and traceable; :mod:`jaxspec.operator` reduces them
over batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Categorical", "FisherMC", "SplitLoss", "check_kind", "empirical_fisher_mv",
           "fisher_mv", "ggn_mv"]


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", type(fn).__name__)


@dataclasses.dataclass(frozen=True)
class Categorical:
    """The predictive distribution of a softmax classifier: ``y ~ Categorical(softmax(logits))``.

    The ``predictive`` of a :class:`SplitLoss` whose outputs are logits ``(B, C)`` and whose
    targets are integer labels in ``batch[label_key]`` (a dict batch). Hashable (a static field).

    Attributes:
      label_key: where the batch holds the labels.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import Categorical
      >>> d = Categorical("y")
      >>> d.sample(jnp.array([[0.0, 50.0]]), {"y": jnp.array([0])}, jax.random.key(0))["y"].tolist()
      [1]
    """

    label_key: str = "label"

    def sample(self, outputs: jax.Array, batch: dict, key: jax.Array, /) -> dict:
        """``batch`` with its labels replaced by draws from ``softmax(outputs)``, one per row.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from jaxspec import Categorical
          >>> b = Categorical().sample(jnp.zeros((3, 2)), {"label": jnp.zeros(3, jnp.int32)},
          ...                          jax.random.key(1))
          >>> b["label"].shape, b["label"].dtype
          ((3,), dtype('int32'))
        """
        labels = jax.random.categorical(key, outputs, axis=-1)
        return {**batch, self.label_key: labels.astype(batch[self.label_key].dtype)}

    def fisher_mv(self, outputs: jax.Array, u: jax.Array, /) -> jax.Array:
        """Row by row, ``F_i u_i`` with ``F_i = E_{y ~ p_i} [g_y g_y^T]``, ``g_y = d log p_y / dz``.

        Computed as the expectation it is, over every class: with ``K`` the Jacobian of
        ``z -> log softmax(z)`` (its rows are the ``g_y``), ``F u = K^T diag(p) K u``, one JVP
        and one VJP. (Equal to ``diag(p) - p p^T``, the cross-entropy's Hessian in the logits.)

        Example:
          >>> import jax.numpy as jnp
          >>> from jaxspec import Categorical
          >>> Categorical().fisher_mv(jnp.zeros((1, 2)), jnp.array([[1.0, 0.0]])).tolist()
          [[0.25, -0.25]]
        """
        def log_probs(z):
            return jax.nn.log_softmax(z, axis=-1)

        logp, ku = jax.jvp(log_probs, (outputs,), (u,))
        _, vjp = jax.vjp(log_probs, outputs)
        return vjp(jnp.exp(logp) * ku)[0]


@dataclasses.dataclass(frozen=True)
class SplitLoss:
    """A loss split at the model outputs: ``output_loss(apply(params, batch), batch)``.

    Callable as ``loss_fn(params, batch)``, so the ``"hessian"`` kind takes it unchanged; the
    ``"ggn"``, ``"fisher"``, ``"fisher_mc"`` kinds need it. Frozen and hashable (functions hash
    by identity), so it is a static field of :class:`jaxspec.CurvatureOperator` and a static
    argument of ``jit``; define ``apply`` and ``output_loss`` once, not in a loop, or every
    operator compiles anew. :func:`jaxspec.models.hessian_loss` returns one for NNX classifiers.

    Attributes:
      apply: ``apply(params, batch) -> outputs`` (an array, or a pytree of arrays, with a leading
        sample axis of the batch size).
      output_loss: ``output_loss(outputs, batch) -> scalar``, the mean over the batch of
        per-sample terms, term ``i`` reading only ``outputs[i]``.
      predictive: the model's predictive distribution (e.g. :class:`Categorical`) with
        ``sample(outputs, batch, key) -> batch`` (the batch with targets drawn from the model,
        where ``output_loss`` reads them) and ``fisher_mv(outputs, u)`` (row ``i``: the Fisher
        of the distribution at ``outputs[i]`` times ``u[i]``); needed by the Fisher kinds only.
      weight_decay: adds ``0.5 * weight_decay * sum(params ** 2)`` to the loss, hence
        ``weight_decay * v`` to every kind's product.

    Example:
      >>> import jax.numpy as jnp, numpy as np, jaxspec
      >>> def apply(w, b): return b["x"] @ w
      >>> def mse(z, b): return 0.5 * jnp.mean(jnp.sum((z - b["y"]) ** 2, -1))
      >>> loss = jaxspec.SplitLoss(apply, mse)
      >>> b = {"x": np.eye(2), "y": np.zeros((2, 1))}
      >>> float(loss(jnp.ones((2, 1)), b))   # the mean loss
      0.5
      >>> op = jaxspec.curvature_operator(loss, jnp.ones((2, 1)), jaxspec.batch_dataset(b, 2),
      ...                                 kind="ggn")
      >>> op.mv(jnp.array([1.0, 0.0])).tolist()   # J^T J / B: the Hessian of least squares
      [0.5, 0.0]
    """

    apply: Callable[[Any, Any], Any]
    output_loss: Callable[[Any, Any], jax.Array]
    predictive: Any = None
    weight_decay: float = 0.0

    def __post_init__(self):
        if not (callable(self.apply) and callable(self.output_loss)):
            raise TypeError("SplitLoss(apply, output_loss): both must be callable")
        object.__setattr__(self, "weight_decay", float(self.weight_decay))

    def __call__(self, params: Any, batch: Any, /) -> jax.Array:
        """The loss ``output_loss(apply(params, batch), batch)`` (plus the weight decay).

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> loss = jaxspec.SplitLoss(lambda p, b: b * p, lambda z, b: jnp.mean(z),
          ...                          weight_decay=2.0)
          >>> float(loss(jnp.float32(3.0), jnp.ones(4)))   # 3 + 0.5 * 2 * 9
          12.0
        """
        loss = self.output_loss(self.apply(params, batch), batch)
        if self.weight_decay:
            loss = loss + 0.5 * self.weight_decay * sum(
                jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))
        return loss

    def __repr__(self) -> str:  # stable across processes: it enters operator fingerprints
        return (f"SplitLoss({_name(self.apply)}, {_name(self.output_loss)}, "
                f"predictive={self.predictive!r}, weight_decay={self.weight_decay!r})")


# ---- the per-batch products ------------------------------------------------------------------


def _split(loss_fn: Any, kind: str) -> SplitLoss:
    if not isinstance(loss_fn, SplitLoss):
        raise TypeError(
            f"kind={kind!r} needs the model outputs: pass loss_fn=jaxspec.SplitLoss(apply, "
            "output_loss) with apply(params, batch) -> outputs and output_loss(outputs, batch) -> "
            "mean loss (jaxspec.models.hessian_loss returns one for Flax NNX classifiers); got "
            f"{type(loss_fn).__name__}")
    return loss_fn


def _linearized(split: SplitLoss, params: Any, batch: Any):
    """``(z, jvp, vjp)``: the outputs and the two linear maps of ``apply`` at ``params``; one
    forward pass serves both (``linear_transpose`` of the linearised JVP is the VJP)."""
    outputs, jvp = jax.linearize(lambda p: split.apply(p, batch), params)
    transpose = jax.linear_transpose(jvp, params)
    return outputs, jvp, lambda cotangent: transpose(cotangent)[0]


def _with_decay(split: SplitLoss, out: Any, v: Any) -> Any:
    if not split.weight_decay:
        return out
    return jax.tree.map(lambda a, b: a + split.weight_decay * b, out, v)


def _num_rows(outputs: Any) -> int:
    return jax.tree.leaves(outputs)[0].shape[0]


def _row_dots(a: Any, b: Any) -> jax.Array:
    """``(B,)``: per sample (leading axis), the inner product of two output pytrees."""
    parts = [jnp.sum((x * y).reshape(x.shape[0], -1), axis=1)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return sum(parts[1:], parts[0])


def _scale_rows(s: jax.Array, tree: Any) -> Any:
    return jax.tree.map(lambda x: s.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype) * x, tree)


def ggn_mv(loss_fn: SplitLoss, params: Any, batch: Any, v: Any, /) -> Any:
    """Generalised Gauss-Newton times ``v`` on one batch: ``J^T H_z J v``.

    ``J v`` by the linearised ``apply``, ``H_z (J v)`` by forward-over-reverse of
    ``output_loss`` in the outputs, then the transposed JVP. Never forms ``J``.

    Args:
      loss_fn: a :class:`SplitLoss`.
      params: the point (a pytree of float arrays).
      batch: the data, held fixed.
      v: a pytree like ``params``.

    Returns:
      ``G v`` (plus ``weight_decay * v``), shaped like ``params``.

    Example:
      >>> import jax.numpy as jnp, jaxspec
      >>> from jaxspec.kinds import ggn_mv
      >>> loss = jaxspec.SplitLoss(lambda w, x: jnp.tanh(x * w), lambda z, x: jnp.mean(z ** 2))
      >>> float(ggn_mv(loss, jnp.float32(0.0), jnp.ones(3), jnp.float32(1.0)))   # 2 (dz/dw)^2
      2.0
    """
    split = _split(loss_fn, "ggn")
    outputs, jvp, vjp = _linearized(split, params, batch)
    grad_z = jax.grad(lambda z: split.output_loss(z, batch))
    hu = jax.jvp(grad_z, (outputs,), (jvp(v),))[1]
    return _with_decay(split, vjp(hu), v)


def _predictive(split: SplitLoss, kind: str, method: str) -> Any:
    if not callable(getattr(split.predictive, method, None)):
        raise TypeError(
            f"kind={kind!r} needs the model's predictive distribution: give the SplitLoss a "
            f"predictive with a {method}() method, e.g. SplitLoss(apply, output_loss, "
            "predictive=jaxspec.Categorical('label')) for softmax cross-entropy")
    return split.predictive


def fisher_mv(loss_fn: SplitLoss, params: Any, batch: Any, v: Any, /) -> Any:
    """Exact Fisher of the model's predictive distribution times ``v`` on one batch.

    ``(1/B) sum_i J_i^T F_i J_i v`` with ``F_i`` from ``loss_fn.predictive.fisher_mv``; for
    softmax cross-entropy with :class:`Categorical` it equals the GGN.

    Example:
      >>> import jax.numpy as jnp, numpy as np, jaxspec
      >>> from jaxspec.kinds import fisher_mv, ggn_mv
      >>> from jaxspec.models import cross_entropy
      >>> loss = jaxspec.SplitLoss(lambda w, b: b["x"] @ w, lambda z, b: cross_entropy(z, b["y"]),
      ...                          predictive=jaxspec.Categorical("y"))
      >>> b = {"x": np.eye(2, dtype=np.float32), "y": np.array([0, 1])}
      >>> w, v = jnp.eye(2), jnp.array([[1.0, 0.0], [0.0, 0.0]])
      >>> bool(jnp.allclose(fisher_mv(loss, w, b, v), ggn_mv(loss, w, b, v)))
      True
    """
    split = _split(loss_fn, "fisher")
    predictive = _predictive(split, "fisher", "fisher_mv")
    outputs, jvp, vjp = _linearized(split, params, batch)
    fu = predictive.fisher_mv(outputs, jvp(v))
    scale = 1.0 / _num_rows(outputs)
    return _with_decay(split, vjp(jax.tree.map(lambda x: scale * x, fu)), v)


def _outer_mv(split: SplitLoss, grads: Any, u: Any) -> Any:
    """Cotangent ``B g_i (g_i . u_i)`` of the per-sample outer products, from the gradients
    ``grads`` of the *mean* output loss (row ``i`` is ``g_i / B``)."""
    b = _num_rows(grads)
    return _scale_rows(b * _row_dots(grads, u), grads)


def empirical_fisher_mv(loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any,
                        v: Any, /) -> Any:
    """Empirical Fisher times ``v`` on one batch: ``(1/B) sum_i g_i (g_i . v)``.

    ``g_i`` is the gradient of sample ``i``'s loss term at its true target. With a
    :class:`SplitLoss` it is ``J_i^T dl_i/dz_i``, taken in output space (one JVP and one VJP of
    ``apply``; with BatchNorm in batch mode ``l_i`` is sample ``i``'s term of the batch's loss,
    the batch held fixed), and the weight decay adds ``weight_decay * v``. With a plain
    ``loss_fn`` the loss must be a mean of per-sample terms: ``l_i`` is ``loss_fn`` on a batch
    of the one sample (every leaf of ``batch`` has the sample axis first), vmapped; a
    regulariser inside ``loss_fn`` then enters every ``g_i``, and a loss that mixes samples
    (BatchNorm in batch mode) is evaluated on batches of one, a different function: use a
    :class:`SplitLoss` there. Never forms the per-sample gradients.

    Example:
      >>> import jax.numpy as jnp, jaxspec
      >>> from jaxspec.kinds import empirical_fisher_mv
      >>> loss = lambda w, x: jnp.mean(x * w)      # g_i = x_i
      >>> x = jnp.array([1.0, 3.0])
      >>> float(empirical_fisher_mv(loss, jnp.float32(0.0), x, jnp.float32(1.0)))   # mean x^2
      5.0
    """
    if isinstance(loss_fn, SplitLoss):
        outputs, jvp, vjp = _linearized(loss_fn, params, batch)
        grads = jax.grad(lambda z: loss_fn.output_loss(z, batch))(outputs)
        return _with_decay(loss_fn, vjp(_outer_mv(loss_fn, grads, jvp(v))), v)

    def per_sample(p):
        one = lambda sample: loss_fn(p, jax.tree.map(lambda x: x[None], sample))  # noqa: E731
        return jax.vmap(one)(batch)

    losses, jvp = jax.linearize(per_sample, params)
    s = jvp(v)
    return jax.linear_transpose(jvp, params)(s / s.shape[0])[0]


def _batch_hash(batch: Any) -> jax.Array:
    """A uint32 digest of the batch's contents (a weighted sum of its bits, wrapping), so each
    batch draws its own labels and the same batch the same labels in every product."""
    h = jnp.uint32(0)
    for leaf in jax.tree.leaves(batch):
        x = jnp.asarray(leaf)
        if jnp.issubdtype(x.dtype, jnp.floating):
            x = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
        x = x.astype(jnp.uint32).ravel()
        mult = (2 * jnp.arange(x.size, dtype=jnp.uint32) + 1) * jnp.uint32(0x9E3779B1)
        h = h * jnp.uint32(0x01000193) + jnp.sum(x * mult, dtype=jnp.uint32)
    return h


@dataclasses.dataclass(frozen=True)
class FisherMC:
    """Monte-Carlo Fisher kind: ``num_samples`` labels per input drawn from the model.

    ``(1/B) sum_i J_i^T [(1/S) sum_s g_is g_is^T] J_i``, ``g_is`` the gradient of ``l_i`` in
    ``z_i`` at a target drawn by ``loss_fn.predictive.sample``; its expectation over the draws is
    the exact Fisher (:func:`fisher_mv`). The draws come from the operator's ``key`` folded with
    a digest of the batch's contents: distinct batches draw independently, and every product
    applies the *same* matrix (Lanczos needs one fixed matrix). Pass it as the kind with a key::

        op = jaxspec.curvature_operator(split_loss, params, data,
                                        kind=jaxspec.FisherMC(num_samples=4), key=jax.random.key(0))

    ``kind="fisher_mc"`` is ``FisherMC(num_samples=1)``. Another key is another matrix.

    Attributes:
      num_samples: ``S``, labels drawn per input.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, jaxspec
      >>> from jaxspec.models import cross_entropy
      >>> loss = jaxspec.SplitLoss(lambda w, b: b["x"] @ w, lambda z, b: cross_entropy(z, b["y"]),
      ...                          predictive=jaxspec.Categorical("y"))
      >>> data = jaxspec.batch_dataset({"x": np.eye(3), "y": np.arange(3)}, 3)
      >>> op = jaxspec.curvature_operator(loss, jnp.zeros((3, 3)), data,
      ...                                 kind=jaxspec.FisherMC(8), key=jax.random.key(0))
      >>> v = jnp.ones(9)
      >>> bool(jnp.array_equal(op.mv(v), op.mv(v)))   # one fixed matrix
      True
    """

    num_samples: int = 1

    def __post_init__(self):
        if not (isinstance(self.num_samples, (int, np.integer))
                and not isinstance(self.num_samples, bool) and self.num_samples >= 1):
            raise ValueError(f"num_samples must be a positive int, got {self.num_samples!r}")
        object.__setattr__(self, "num_samples", int(self.num_samples))  # one repr, one hash

    def __call__(self, loss_fn: SplitLoss, params: Any, batch: Any, v: Any, key: jax.Array,
                 /) -> Any:
        split = _split(loss_fn, "fisher_mc")
        predictive = _predictive(split, "fisher_mc", "sample")
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)
        outputs, jvp, vjp = _linearized(split, params, batch)
        outputs = jax.lax.stop_gradient(outputs)
        u = jvp(v)
        keys = jax.random.split(jax.random.fold_in(key, _batch_hash(batch)), self.num_samples)

        def one_draw(k):
            drawn = predictive.sample(outputs, batch, k)
            grads = jax.grad(lambda z: split.output_loss(z, drawn))(outputs)
            return _outer_mv(split, grads, u)

        cot = jax.tree.map(lambda x: jnp.mean(x, axis=0), jax.vmap(one_draw)(keys))
        return _with_decay(split, vjp(cot), v)


def check_kind(kind: Any, product: Callable, loss_fn: Any, key: Any, /) -> None:
    """Raises a clear error when ``loss_fn`` or ``key`` does not fit the kind's product.

    :func:`jaxspec.curvature_operator` calls it, so a mismatch fails when the operator is built
    rather than in the first product. ``"ggn"``, ``"fisher"``, ``"fisher_mc"`` need a
    :class:`SplitLoss` (the Fisher kinds with a ``predictive``); :class:`FisherMC` needs a
    ``key``, which no other kind takes.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.kinds import check_kind, ggn_mv
      >>> check_kind("ggn", ggn_mv, lambda p, b: jnp.sum(p), None)
      Traceback (most recent call last):
      ...
      TypeError: kind='ggn' needs the model outputs: pass loss_fn=jaxspec.SplitLoss(...
    """
    name = kind if isinstance(kind, str) else type(kind).__name__
    if product in (ggn_mv, fisher_mv) or isinstance(product, FisherMC):
        split = _split(loss_fn, name)
        if product is fisher_mv:
            _predictive(split, name, "fisher_mv")
        elif product is not ggn_mv:
            _predictive(split, name, "sample")
    if isinstance(product, FisherMC):
        if key is None:
            raise TypeError(f"kind={kind!r} draws labels: pass key= (e.g. jax.random.key(0)); "
                            "it is fixed for the operator, so every product is the same matrix")
        typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        if not typed and not (isinstance(key, (jax.Array, np.ndarray))
                              and key.dtype == np.uint32):
            raise TypeError(f"key must be a PRNG key such as jax.random.key(0) (or its uint32 "
                            f"key data); got {type(key).__name__}")
        default = jax.random.key_impl(jax.random.key(0))
        if typed and str(jax.random.key_impl(key)) != str(default):
            raise TypeError(f"key has the PRNG implementation {jax.random.key_impl(key)}, not "
                            f"this JAX's default {default} (with which the operator redraws "
                            "its labels from the key's data): make it with jax.random.key(seed)")
    elif key is not None:
        raise TypeError(f"kind={kind!r} is deterministic and takes no key (only Monte-Carlo "
                        "kinds such as 'fisher_mc' do)")
