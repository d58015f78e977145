"""Model, optimiser and the jitted train/eval steps of a run.

**Optimiser.** ``optax.chain(add_decayed_weights(wd), sgd(schedule, momentum=0.9))`` is PyTorch's
``SGD(lr, momentum=0.9, weight_decay=wd)`` step for step: the L2 term ``wd * p`` is added to the
gradient of *every* parameter (BatchNorm scales and biases included), the momentum buffer is
``b = 0.9 b + g`` (no dampening, first buffer = first gradient), and the rate multiplies the buffer,
so changing the rate between epochs does not rescale the history. The rate follows equation 11
once per epoch (:mod:`train.schedules`), as a function of the optimiser's step count.

**Data in the step.** The whole training set stays on the device as ``uint8`` (150 MB for CIFAR,
a quarter of ``float32``). A step gathers its batch by index from the epoch's permutation,
augments it in raw pixel space (zero padding, as torchvision) and normalises it, all inside one
jitted program, so only a step counter crosses from the host.

**Devices.** Data parallel over all local devices with ``jax.jit`` and shardings: a 1-D mesh
``("batch",)``; each batch is sharded along it, parameters and optimiser state are replicated.
(Not ``jax.pmap``: it is in maintenance mode and now implemented on ``shard_map``.)
BatchNorm semantics: the model computes batch statistics as a mean over the *global* batch axis
and XLA inserts the cross-device reduction, so the statistics cover all 128 images of a step
whatever the number of devices, i.e. synchronised BatchNorm. That is the paper's single-GPU
PyTorch training, and results do not depend on the device count; ``pmap``-style per-device
BatchNorm would instead normalise each device's ``128 / n`` images on their own.

**Randomness.** Augmentation and dropout of epoch ``e``, step ``s`` use keys
``fold_in(fold_in(epoch_key(seed, e), stream), s)``; every RNG stream of the model is re-seeded
from such a key at each step, so nothing random is carried from step to step.

The jitted steps are module-level functions whose static argument holds the model's graph and the
hyperparameters, so runs with the same model and shapes in one process (a resumed run, tests,
sweeps in a notebook) reuse the compiled programs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxspec import augment as augment_lib
from jaxspec import data as data_lib
from jaxspec.compiler import jit
from jaxspec.models import create_model, cross_entropy
from train.configs import TrainConfig
from train.schedules import epoch_lr_schedule

__all__ = [
    "TrainState",
    "Trainer",
    "build_model",
    "build_trainer",
    "epoch_key",
    "make_mesh",
    "make_optimizer",
    "model_kwargs",
]

# fold_in tags separating the random streams derived from the seed.
_INIT, _DATA = 0, 1
PERM_STREAM, AUGMENT_STREAM, DROPOUT_STREAM = 0, 1, 2


class TrainState(NamedTuple):
    """What a checkpoint holds (all arrays; the epoch is the checkpoint's step number).

    Attributes:
      params: ``nnx.Param`` state of the model.
      batch_stats: ``nnx.BatchStat`` state (BatchNorm running statistics; empty without BN).
      opt_state: the optax state (momentum buffers, step count).

    Example:
      >>> import jax, numpy as np
      >>> from train.configs import TrainConfig
      >>> from train.steps import build_trainer
      >>> t = build_trainer(TrainConfig(model="mlp", batch_size=8), num_classes=10, num_train=20,
      ...                   mean=np.zeros(3), std=np.ones(3))
      >>> s = t.init_state  # an MLP: parameters, no BatchNorm statistics
      >>> sum(x.size for x in jax.tree.leaves(s.params)), len(jax.tree.leaves(s.batch_stats))
      (1841162, 0)
    """

    params: Any
    batch_stats: Any
    opt_state: Any


class Trainer(NamedTuple):
    """The pieces of a run built by :func:`build_trainer`.

    Attributes:
      init_state: the initial :class:`TrainState`, replicated over the mesh.
      train_step: ``(state, x, y, perm, step, epoch_key) -> (state, (loss, correct))``, jitted;
        ``x, y`` the device-resident training set (``uint8`` images, ``int32`` labels; or
        token windows and their next tokens), ``perm`` the epoch's permutation, ``step`` the
        step within the epoch. ``state`` is donated. ``correct`` (float) sums over the batch
        each example's fraction of correct predictions (a sequence: over its positions).
      eval_step: ``(state, x, y, start, count) -> (loss_sum, correct)``, jitted, over
        ``x[start:start + eval_batch_size]`` of which the first ``count`` rows count; an
        example's loss is the mean over its positions for a sequence model.
      model: the initial model (its Variables are not updated by the steps).
      steps_per_epoch: optimiser steps per epoch (``N // batch_size``; the rest is dropped).
      eval_batch_size: rows per ``eval_step`` (a multiple of the device count).
      mesh: the device mesh.

    Example:
      >>> import numpy as np
      >>> from train.configs import TrainConfig
      >>> from train.steps import build_trainer
      >>> t = build_trainer(TrainConfig(model="mlp", batch_size=8), num_classes=10, num_train=20,
      ...                   mean=np.zeros(3), std=np.ones(3))
      >>> t.steps_per_epoch, t.eval_batch_size, t.mesh.axis_names, type(t.model).__name__
      (2, 1000, ('batch',), 'MLP')
    """

    init_state: TrainState
    train_step: Callable[..., Any]
    eval_step: Callable[..., Any]
    model: nnx.Module
    steps_per_epoch: int
    eval_batch_size: int
    mesh: Mesh


def make_mesh(devices: Any = None, /) -> Mesh:
    """A 1-D mesh ``("batch",)`` over ``devices`` (default: all local devices).

    Example:
      >>> from train.steps import make_mesh
      >>> make_mesh().axis_names
      ('batch',)
    """
    devices = jax.local_devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))


def _optimizer(
    name: str, base_lr: float, epochs: int, ratio: float, momentum: float, weight_decay: float,
    steps: int
) -> optax.GradientTransformation:
    schedule = epoch_lr_schedule(
        base_lr=base_lr, total_epochs=epochs, steps_per_epoch=steps, ratio=ratio
    )
    if name == "adam":
        # L2 into the gradient, as for SGD (torch's Adam(weight_decay=...)); b1 is the momentum.
        return optax.chain(optax.add_decayed_weights(weight_decay),
                           optax.adam(schedule, b1=momentum))
    return optax.chain(
        optax.add_decayed_weights(weight_decay),  # into the gradient, before momentum: torch SGD
        optax.sgd(schedule, momentum=momentum),
    )


def make_optimizer(config: TrainConfig, /, *, steps_per_epoch: int) -> optax.GradientTransformation:
    """PyTorch-equivalent SGD with momentum, L2 weight decay and the equation-11 schedule.

    With ``config.optimizer == "adam"``: Adam (``b1 = config.momentum``) on the gradient plus
    the L2 term, as PyTorch's ``Adam(weight_decay=...)``, with the same schedule.

    Example:
      >>> import jax.numpy as jnp
      >>> from train.configs import TrainConfig
      >>> from train.steps import make_optimizer
      >>> tx = make_optimizer(TrainConfig(weight_decay=0.0), steps_per_epoch=10)
      >>> params = {"w": jnp.zeros(2, jnp.float32)}
      >>> updates, _ = tx.update({"w": jnp.ones(2, jnp.float32)}, tx.init(params), params)
      >>> updates["w"]  # -lr * g at the first step
      Array([-0.1, -0.1], dtype=float32)
    """
    return _optimizer(
        config.optimizer, config.base_lr, config.epochs, config.lr_ratio, config.momentum, config.weight_decay,
        steps_per_epoch,
    )


def base_key(config: TrainConfig, /) -> jax.Array:
    """The run's root PRNG key: ``jax.random.key(seed, impl=config.prng_impl)``.

    Example:
      >>> from train.configs import TrainConfig
      >>> from train.steps import base_key
      >>> base_key(TrainConfig(seed=3)).shape
      ()
    """
    return jax.random.key(config.seed, impl=config.prng_impl)


def epoch_key(config: TrainConfig, epoch: int, /) -> jax.Array:
    """The key of epoch ``epoch`` (0-based): data order, augmentation and dropout derive from it.

    Example:
      >>> import jax
      >>> from train.configs import TrainConfig
      >>> from train.steps import epoch_key
      >>> c = TrainConfig(seed=0)
      >>> bool((jax.random.key_data(epoch_key(c, 1)) == jax.random.key_data(epoch_key(c, 1))).all())
      True
    """
    return jax.random.fold_in(jax.random.fold_in(base_key(config), _DATA), epoch)


def build_model(config: TrainConfig, /, *, num_classes: int) -> nnx.Module:
    """The config's model (:func:`jaxspec.models.create_model`), initialised from the seed.

    Example:
      >>> from train.configs import TrainConfig
      >>> from train.steps import build_model
      >>> config = TrainConfig(model="mlp", model_kwargs={"hidden": [8]})
      >>> type(build_model(config, num_classes=10)).__name__
      'MLP'
    """
    rngs = nnx.Rngs(jax.random.fold_in(base_key(config), _INIT))
    return create_model(config.model, num_classes=num_classes, rngs=rngs, **model_kwargs(config))


def model_kwargs(config: TrainConfig, /) -> dict[str, Any]:
    """The config's ``model_kwargs`` as the model classes take them (JSON lists as tuples).

    Example:
      >>> from train.configs import TrainConfig
      >>> from train.steps import model_kwargs
      >>> model_kwargs(TrainConfig(model="mlp", model_kwargs={"hidden": [8, 8]}))
      {'hidden': (8, 8)}
    """
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.model_kwargs.items()}


def _fresh_rngs(template: Any, key: jax.Array) -> Any:
    # Every RNG stream of the model (dropout) restarts from fold_in(key, i): masks are a function
    # of (seed, epoch, step) and no RNG state is carried or checkpointed.
    leaves, treedef = jax.tree.flatten(template)
    new = [
        jax.random.fold_in(key, i)
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        else jnp.zeros_like(leaf)
        for i, leaf in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, new)


class _TrainSpec(NamedTuple):
    # Static (hashable) part of the train step: equal specs share one compiled program.
    graphdef: Any
    batch_size: int
    augment: bool
    optimizer: tuple[str, float, int, float, float, float, int]
    batch_sharding: NamedSharding


class _EvalSpec(NamedTuple):
    graphdef: Any
    batch_size: int
    batch_sharding: NamedSharding


@functools.partial(jit, static_argnums=0, donate_argnums=1)
def _train_step(spec: _TrainSpec, state: TrainState, consts: Any, x, y, perm, step, key):
    rngs, rest, mean, std = consts
    bs = spec.batch_size
    idx = jax.lax.dynamic_slice_in_dim(perm, step * bs, bs)
    images = jax.lax.with_sharding_constraint(x[idx], spec.batch_sharding)
    labels = jax.lax.with_sharding_constraint(y[idx], spec.batch_sharding)
    if spec.augment:
        aug_key = jax.random.fold_in(jax.random.fold_in(key, AUGMENT_STREAM), step)
        images = augment_lib.random_crop_flip(aug_key, images)  # raw pixels: zero padding
    if mean is not None:  # tokens (text data) are not normalised
        images = data_lib.normalize(images, mean=mean, std=std)
    step_rngs = _fresh_rngs(rngs, jax.random.fold_in(jax.random.fold_in(key, DROPOUT_STREAM), step))

    def loss_fn(params):
        # copy=True: the forward pass's BatchNorm assignments land in a throw-away module.
        m = nnx.merge(spec.graphdef, params, state.batch_stats, step_rngs, rest, copy=True)
        logits = m(images)
        return cross_entropy(logits, labels), (logits, nnx.state(m, nnx.BatchStat))

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    tx = _optimizer(*spec.optimizer)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    correct = jnp.sum(_row_mean(jnp.argmax(logits, -1) == labels))
    return TrainState(params, new_stats, opt_state), (loss.astype(jnp.float32), correct)


def _row_mean(x: jax.Array) -> jax.Array:
    """Per example (leading axis), the float32 mean over its other axes: the positions of a
    sequence model's ``(B, T)`` predictions; a classifier's ``(B,)`` is returned as is."""
    return jnp.mean(x.reshape(x.shape[0], -1).astype(jnp.float32), axis=1)


@functools.partial(jit, static_argnums=0)
def _eval_step(spec: _EvalSpec, state: TrainState, consts: Any, x, y, start, count):
    rngs, rest, mean, std = consts
    images = jax.lax.dynamic_slice_in_dim(x, start, spec.batch_size)
    labels = jax.lax.dynamic_slice_in_dim(y, start, spec.batch_size)
    images = jax.lax.with_sharding_constraint(images, spec.batch_sharding)
    if mean is not None:
        images = data_lib.normalize(images, mean=mean, std=std)
    m = nnx.merge(spec.graphdef, state.params, state.batch_stats, rngs, rest, copy=True)
    logits = m(images).astype(jnp.float32)
    losses = _row_mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    valid = jnp.arange(spec.batch_size) < count
    loss_sum = jnp.sum(jnp.where(valid, losses, 0.0))
    correct = jnp.sum(jnp.where(valid, _row_mean(jnp.argmax(logits, -1) == labels), 0.0))
    return loss_sum, correct


def build_trainer(
    config: TrainConfig,
    /,
    *,
    num_classes: int,
    num_train: int,
    mean: Any,
    std: Any,
    mesh: Mesh | None = None,
) -> Trainer:
    """Build the model, the initial state and the jitted train and eval steps of a run.

    Args:
      config: the run's config.
      num_classes: outputs of the model.
      num_train: training-set size (fixes the steps per epoch).
      mean: per-channel pixel mean used for normalisation; ``None`` for tokens (text data),
        which are fed to the model as they are.
      std: per-channel pixel standard deviation (``None`` with ``mean``).
      mesh: device mesh; default all local devices.

    Returns:
      A :class:`Trainer`.

    Raises:
      ValueError: if the batch sizes do not split over the devices, the data set is smaller
        than one batch, or augmentation is asked for tokens.

    Example:
      >>> import numpy as np
      >>> from train.configs import TrainConfig
      >>> from train.steps import build_trainer
      >>> build_trainer(TrainConfig(model="mlp", batch_size=8), num_classes=10, num_train=5,
      ...               mean=np.zeros(3), std=np.ones(3))
      Traceback (most recent call last):
      ...
      ValueError: 5 training images are fewer than one batch of 8
    """
    if mean is None and config.augment:
        raise ValueError("augment=True crops and flips images; text data (mean=None) needs "
                         "augment=False")
    mesh = make_mesh() if mesh is None else mesh
    n_dev = mesh.devices.size
    if config.batch_size % n_dev:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {n_dev} devices")
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{num_train} training images are fewer than one batch of {config.batch_size}"
        )
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("batch"))

    model = build_model(config, num_classes=num_classes)
    # Views set the mode on copies of the graph; `model` keeps its mode and its Variables.
    train_view = nnx.view(
        model, use_running_average=False, deterministic=False, raise_if_not_found=False
    )
    eval_view = nnx.view(
        model, use_running_average=True, deterministic=True, raise_if_not_found=False
    )
    filters = (nnx.Param, nnx.BatchStat, nnx.RngState, ...)
    graph_train, params, batch_stats, rngs, rest = nnx.split(train_view, *filters)
    graph_eval = nnx.split(eval_view, *filters)[0]

    opt_args = (
        config.optimizer, config.base_lr, config.epochs, config.lr_ratio, config.momentum, config.weight_decay,
        steps_per_epoch,
    )
    state = TrainState(params, batch_stats, _optimizer(*opt_args).init(params))
    # a copy: the train step donates its state, and on one device an aliasing put would hand
    # it `model`'s own arrays, which the curvature tracker and any later use of `model` read
    state = jax.device_put(state, replicated, may_alias=False)
    consts = (rngs, rest, *(None if a is None else np.asarray(a, np.float32) for a in (mean, std)))
    consts = jax.device_put(consts, replicated)
    train_spec = _TrainSpec(
        graph_train, config.batch_size, config.augment, opt_args, batch_sharding
    )
    eval_bs = -(-config.eval_batch_size // n_dev) * n_dev
    eval_spec = _EvalSpec(graph_eval, eval_bs, batch_sharding)

    def train_step(state, x, y, perm, step, key):
        return _train_step(train_spec, state, consts, x, y, perm, step, key)

    def eval_step(state, x, y, start, count):
        return _eval_step(eval_spec, state, consts, x, y, start, count)

    return Trainer(
        init_state=state,
        train_step=train_step,
        eval_step=eval_step,
        model=model,
        steps_per_epoch=steps_per_epoch,
        eval_batch_size=eval_bs,
        mesh=mesh,
    )
