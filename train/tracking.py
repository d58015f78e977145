"""The top curvature eigenvalue during training, for the edge-of-stability plot.

With ``TrainConfig.track_curvature_every = k``, :func:`train.train_and_evaluate` measures the
largest eigenvalue ``lambda_max`` of the Hessian (or the Gauss-Newton matrix,
``track_curvature="ggn"``) after the global optimiser steps ``k, 2k, 3k, ...`` and writes one
curvature record per measurement into ``metrics.jsonl`` (:func:`train.metrics_io.read_curvature`
reads them back; ``python -m train.curves`` draws them against the stability threshold).

What is measured, and how:

* **The matrix** is that of the objective SGD descends: the mean cross-entropy plus the L2 term
  ``weight_decay / 2 * |p|^2`` (so ``weight_decay`` is added to every eigenvalue), on a FIXED
  evaluation set: the first ``track_curvature_samples`` training images, normalised as in
  training, never augmented, in batches of ``batch_size``. Dropout is off. BatchNorm normalises
  with each batch's statistics (``bn_mode="batch"`` of :func:`jaxspec.models.hessian_loss`: the
  function the network computes in training, and the one the paper's Hessians are of); the
  running statistics are not used, which is also why they need not follow the training.
* **Cheaply:** the operator is built once, at the first measurement, and moved to new
  parameters with :meth:`jaxspec.CurvatureOperator.with_params`, which reuses its compiled
  programs; :func:`jaxspec.eigsh` (``k = 1``, at most :data:`MAX_RESTARTS` thick restarts) starts
  from the previous measurement's eigenvector, so when the top eigenvector moves little
  between measurements it converges in a few products. The first measurement of a process
  starts from a fixed random vector (the run's seed): the vector is not checkpointed, so a
  resumed run starts cold once. The tracking only reads the parameters between two steps, so
  the training trajectory is the same with it on or off (its fields are run-control fields).
* **The stability threshold.** Gradient descent with rate ``lr`` on a quadratic diverges along
  an eigenvector once its eigenvalue exceeds ``2 / lr``; with heavy-ball momentum ``beta``
  (the update of :mod:`train.steps`: ``b = beta b + g``, ``p -= lr b``) the threshold is
  ``2 (1 + beta) / lr``. Both are recorded.

Keys of a curvature record: ``record`` (``"curvature"``), ``step`` (global optimiser steps taken,
1-based), ``epoch`` (the 1-based epoch the step belongs to: the record is kept or dropped with
that epoch on a resume), ``kind``, ``lambda_max`` (the Rayleigh quotient of the returned vector),
``residual`` (the measured ``|H x - lambda_max x|``: ``lambda_max`` lies within it of an
eigenvalue), ``converged`` (``residual <= track_curvature_tol * ||H||``), ``num_matvecs``
(products with the matrix, the certificate's included), ``num_restarts``, ``warm`` (started from
the previous vector), ``lr`` (the rate of the step that produced these parameters),
``lr_threshold`` (``2 / lr``), ``lr_threshold_momentum`` (``2 (1 + momentum) / lr``; both
``None`` when ``lr`` is 0), ``samples`` and ``seconds`` (wall time of the measurement).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from jaxspec import data as data_lib
from jaxspec.batching import Batched, batch_dataset, num_samples
from jaxspec.eigsh import eigsh
from jaxspec.models import hessian_loss
from jaxspec.operator import curvature_operator
from train.configs import TrainConfig
from train.metrics_io import CURVATURE_RECORD

__all__ = ["MAX_RESTARTS", "CurvatureTracker", "build_tracker", "stability_thresholds"]

MAX_RESTARTS = 3  # thick restarts per measurement; an unconverged one says so in its record


def stability_thresholds(lr: float, momentum: float = 0.0) -> tuple[float | None, float | None]:
    """``(2 / lr, 2 (1 + momentum) / lr)``: the largest curvature SGD with rate ``lr`` is stable
    on, without and with heavy-ball momentum; ``(None, None)`` for ``lr == 0``.

    Example:
      >>> from train.tracking import stability_thresholds
      >>> stability_thresholds(0.25, 0.5)
      (8.0, 12.0)
    """
    if lr == 0:
        return None, None
    return 2.0 / lr, 2.0 * (1.0 + momentum) / lr


class CurvatureTracker:
    """Measures ``lambda_max`` of a curvature matrix at successive parameters, warm-started.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (a :class:`jaxspec.SplitLoss` for ``"ggn"``).
      data: the fixed evaluation set, a :class:`jaxspec.Batched`.
      kind: ``"hessian"`` or ``"ggn"`` (any kind of :func:`jaxspec.curvature_operator` that
        needs no key).
      tol: relative residual of convergence (:func:`jaxspec.eigsh`).
      momentum: SGD momentum, for the momentum-corrected threshold.
      seed: seeds the cold-start vector.
      reduce: the operator's reduction (``"auto"``: the host loop on CPU, ``lax.scan`` elsewhere).

    Attributes:
      vector: the last top eigenvector (flat), the next measurement's start; ``None`` before
        the first.

    Example:
      >>> import jax.numpy as jnp, numpy as np, jaxspec
      >>> from train.tracking import CurvatureTracker
      >>> d = jnp.arange(1.0, 31.0)   # Hessian diag(d) * mean(batch)
      >>> loss = lambda p, b: 0.5 * jnp.mean(b) * jnp.sum(d * p ** 2)
      >>> t = CurvatureTracker(loss, jaxspec.batch_dataset(np.ones(4, np.float32), 2),
      ...                      kind="hessian", tol=1e-4, momentum=0.5)
      >>> r = t.measure(jnp.zeros(30), step=10, epoch=1, lr=0.25)
      >>> round(r["lambda_max"], 3), r["warm"], r["lr_threshold"], r["lr_threshold_momentum"]
      (30.0, False, 8.0, 12.0)
      >>> t.measure(jnp.ones(30), step=20, epoch=1, lr=0.25)["warm"]
      True
    """

    def __init__(self, loss_fn: Any, data: Batched, /, *, kind: str = "hessian",
                 tol: float = 1e-3, momentum: float = 0.0, seed: int = 0,
                 reduce: Any = "auto") -> None:
        self.loss_fn, self.data, self.kind, self.tol = loss_fn, data, kind, tol
        self.momentum, self.seed, self.reduce = momentum, seed, reduce
        self.vector: jax.Array | None = None
        self._op = None

    def measure(self, params: Any, /, *, step: int, epoch: int, lr: float) -> dict[str, Any]:
        """``lambda_max`` at ``params``, as a curvature record (keys: :mod:`train.tracking`).

        The first call builds (and compiles) the operator; later calls move it to ``params``
        (same structure, shapes and placement: nothing is recompiled) and start from the
        previous vector. Blocks until the result is on the host.

        Example:
          >>> import jax.numpy as jnp, numpy as np, jaxspec
          >>> from train.tracking import CurvatureTracker
          >>> loss = lambda p, b: jnp.mean(b) * jnp.sum(jnp.cos(p))   # Hessian -diag(cos p)
          >>> t = CurvatureTracker(loss, jaxspec.batch_dataset(np.ones(2, np.float32), 2))
          >>> p = jnp.linspace(0.0, 3.0, 40)
          >>> round(t.measure(p, step=1, epoch=1, lr=0.1)["lambda_max"], 3)  # -cos(3)
          0.99
        """
        t0 = time.perf_counter()
        if self._op is None:
            self._op = curvature_operator(self.loss_fn, params, self.data, kind=self.kind,
                                          reduce=self.reduce)
        else:
            self._op = self._op.with_params(params)
        warm = self.vector is not None
        if warm:
            v0 = self.vector
        else:
            rng = np.random.default_rng(self.seed)
            v0 = rng.standard_normal(self._op.size).astype(self._op.dtype)
            # Placed as the parameters (e.g. replicated over the training mesh), as the warm
            # vectors will be: the cold and warm runs then share their compiled programs.
            v0 = jax.device_put(v0, jax.tree.leaves(self._op.params)[0].sharding)
        res = eigsh(self._op, v0, 1, which="largest", tol=self.tol, max_restarts=MAX_RESTARTS,
                    check_every=1)
        self.vector = res.vectors[0]
        threshold, threshold_momentum = stability_thresholds(lr, self.momentum)
        return {
            "record": CURVATURE_RECORD,
            "step": int(step),
            "epoch": int(epoch),
            "kind": self.kind,
            "lambda_max": float(res.values[0]),
            "residual": float(res.residuals[0]),
            "converged": bool(res.converged[0]),
            "num_matvecs": int(res.num_matvecs),
            "num_restarts": int(res.num_restarts),
            "warm": warm,
            "lr": float(lr),
            "lr_threshold": threshold,
            "lr_threshold_momentum": threshold_momentum,
            "samples": num_samples(self.data),
            "seconds": time.perf_counter() - t0,
        }


def build_tracker(config: TrainConfig, /, *, model: Any,
                  data: data_lib.ImageDataset) -> CurvatureTracker:
    """The :class:`CurvatureTracker` of a run: its model, its fixed evaluation set and kind.

    Args:
      config: the run's config (``track_curvature*`` fields, ``batch_size``,
        ``weight_decay``, ``momentum``, ``seed``).
      model: the run's NNX model (its structure; the parameters come with each measurement).
      data: the run's data set; the first ``track_curvature_samples`` training images (or
        token windows) are used.

    Example:
      >>> import jax
      >>> from jaxspec.data import synthetic_cifar
      >>> from train.configs import TrainConfig
      >>> from train.steps import build_model
      >>> from train.tracking import build_tracker
      >>> c = TrainConfig(model="mlp", model_kwargs={"hidden": [4]}, batch_size=8,
      ...                 track_curvature_every=5, track_curvature_samples=16)
      >>> data = synthetic_cifar(num_train=32, num_test=8)
      >>> t = build_tracker(c, model=build_model(c, num_classes=10), data=data)
      >>> t.data.batches["image"].shape, t.kind
      ((2, 8, 32, 32, 3), 'hessian')
    """
    n = min(config.track_curvature_samples, int(data.x_train.shape[0]))
    if data.mean is None:  # token windows (jaxspec.text) go to the model as they are
        key, inputs = "tokens", np.asarray(data.x_train[:n], np.int32)
    else:
        key, inputs = "image", data_lib.normalize(data.x_train[:n], mean=data.mean, std=data.std)
    batched = batch_dataset({key: inputs, "label": np.asarray(data.y_train[:n], np.int32)},
                            min(config.batch_size, n), num_classes=data.num_classes)
    # On the device once: moving the operator to new parameters then moves no data.
    batched = jax.device_put(batched)
    loss_fn, _ = hessian_loss(model, bn_mode="batch", weight_decay=config.weight_decay,
                              input_key=key)
    return CurvatureTracker(loss_fn, batched, kind=config.track_curvature,
                            tol=config.track_curvature_tol, momentum=config.momentum,
                            seed=config.seed)
