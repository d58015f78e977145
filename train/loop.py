"""The training loop: ``train_and_evaluate(config, workdir)`` and ``load_checkpoint(workdir)``.

A run lives in a work directory::

    config.json      the TrainConfig (checked on resumption)
    data.json        data set name, class count, sizes, normalisation mean/std, and its identity:
                     the .npz file (resolved path) and a SHA-256 digest of the four arrays
    metrics.jsonl    one line per finished epoch (train.metrics_io), and with
                     track_curvature_every set, curvature records (train.tracking)
    checkpoints/<e>  Orbax checkpoints after e epochs (0 = initialisation)
    .lock            while a run is live (jaxspec.workdir): a second run here is refused

**Nothing is written before the run is built.** The config, the data (labels checked against
the class count) and the model are all built first, and a resumption is checked against the
saved config and data identity, before the first file is written: a run that fails to start
(a typo in the model name, a batch larger than the data set) leaves no trace, and the
corrected command is not refused as "a different config". A resumption on other data (another
``npz_path``, or the same file with other contents) is refused, naming the differing fields.

**Nothing is lost.** Every ``checkpoint_every`` epochs (default 1) a checkpoint is written
(asynchronously, atomically: a half-written one is discarded on restart); the epochs named in
``checkpoint_epochs`` are kept, otherwise only the latest. The data order, augmentation and
dropout of epoch ``e`` are derived from ``(seed, e)`` (:func:`train.steps.epoch_key`), never from
an RNG state consumed along the way, and the checkpoint holds parameters, BatchNorm statistics
and the optimiser state (whose step count drives the schedule). So a run killed at any point and
restarted with the same command resumes from its latest checkpoint and follows the same
trajectory as an uninterrupted one.

The last ``N mod batch_size`` images of each epoch's permutation are not used (``drop_last``),
which keeps every step's shape static; the permutation changes every epoch, so no image is left
out systematically. Model, optimiser, devices and BatchNorm semantics: :mod:`train.steps`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxspec import data as data_lib
from jaxspec import text
from jaxspec.atomic import write_text
from jaxspec.checks import check_labels
from jaxspec.models import abstract_model
from jaxspec.workdir import workdir_lock
from train import metrics_io
from train.configs import RUN_CONTROL_FIELDS, TrainConfig
from train.schedules import paper_lr
from train.steps import (
    PERM_STREAM,
    TrainState,
    build_model,
    build_trainer,
    epoch_key,
    make_optimizer,
    model_kwargs,
)
from train.tracking import build_tracker

__all__ = ["SetupError", "data_digest", "load_checkpoint", "load_data", "read_config",
           "read_data_info", "train_and_evaluate"]

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
DATA_FILE = "data.json"


def load_data(config: TrainConfig, /) -> data_lib.ImageDataset:
    """The config's data set, subsampled as it asks.

    Example:
      >>> from train.configs import TrainConfig
      >>> from train.loop import load_data
      >>> load_data(TrainConfig(dataset="synthetic", synthetic_size=(40, 20))).x_train.shape
      (40, 32, 32, 3)
    """
    if config.dataset == "pydoc":
        if config.train_per_class is not None or config.test_per_class is not None:
            raise ValueError("train_per_class/test_per_class subsample images by class; the "
                             "text data set 'pydoc' has no classes to subsample")
        return text.pydoc_dataset(seq_len=config.seq_len)
    data = data_lib.load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        npz_path=config.npz_path,
        download=config.download,
        synthetic_size=tuple(config.synthetic_size),
        seed=config.seed,
    )
    if config.train_per_class is not None or config.test_per_class is not None:
        data = data_lib.subsample(
            data,
            train_per_class=config.train_per_class,
            test_per_class=config.test_per_class,
            seed=config.subsample_seed,
        )
    return data


def _pad_to(x: np.ndarray, multiple: int) -> np.ndarray:
    extra = -x.shape[0] % multiple
    if extra == 0:
        return x
    return np.concatenate([x, np.zeros((extra, *x.shape[1:]), x.dtype)])


def _checkpoint_manager(
    workdir: str, config: TrainConfig, *, read_only: bool = False
) -> ocp.CheckpointManager:
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        # Keep the named epochs forever, plus the most recent checkpoint for resumption.
        preservation_policy=policies.AnyPreservationPolicy(
            [policies.LatestN(1), policies.CustomSteps(list(config.checkpoint_epochs))]
        ),
        cleanup_tmp_directories=not read_only,  # half-written saves of a killed run
        read_only=read_only,
        create=not read_only,
        **({"save_interval_steps": 0} if read_only else {}),
    )
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    return ocp.CheckpointManager(directory, options=options)


def _check_config(workdir: str, config: TrainConfig) -> None:
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(path):
        saved = read_config(workdir).to_dict()
        current = config.to_dict()
        diff = {
            k: (saved.get(k), current.get(k))
            for k in current
            if k not in RUN_CONTROL_FIELDS and saved.get(k) != current.get(k)
        }
        if diff:
            raise ValueError(
                f"{workdir} holds a run with a different config; differing keys "
                f"(saved, given): {diff}. Use another --workdir, or the same settings to resume."
            )


def data_digest(data: data_lib.ImageDataset, /) -> str:
    """SHA-256 (hex) of a data set's four arrays, shapes and dtypes included: its identity.

    ``data.json`` of a run holds the digest of the arrays it trained and tested on (after
    subsampling); compare it with a data set loaded later to be sure it is the same one.
    Labels are hashed as ``int64``, so ``int32`` and ``int64`` copies agree.

    Example:
      >>> from jaxspec.data import synthetic_cifar
      >>> from train.loop import data_digest
      >>> a = synthetic_cifar(num_train=8, num_test=4, seed=0)
      >>> data_digest(a) == data_digest(a._replace(y_train=a.y_train.astype("int64")))
      True
      >>> data_digest(a) == data_digest(synthetic_cifar(num_train=8, num_test=4, seed=1))
      False
    """
    h = hashlib.sha256()
    for a in (data.x_train, data.y_train.astype(np.int64), data.x_test,
              data.y_test.astype(np.int64)):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _data_info(config: TrainConfig, data: data_lib.ImageDataset, *, loaded: bool) -> dict:
    # What a Hessian script needs to rebuild the model and feed it the same inputs, and what
    # identifies the data (a resumption must train on the same arrays).
    npz = os.path.realpath(config.npz_path) if loaded and config.npz_path is not None else None
    return {
        "name": data.name,
        "num_classes": data.num_classes,
        "num_train": int(data.x_train.shape[0]),
        "num_test": int(data.x_test.shape[0]),
        "mean": None if data.mean is None else [float(v) for v in data.mean],
        "std": None if data.std is None else [float(v) for v in data.std],
        "npz_path": npz,
        "digest": data_digest(data),
    }


def _check_data_info(workdir: str, info: dict) -> None:
    if not os.path.exists(os.path.join(workdir, DATA_FILE)):
        return
    saved = read_data_info(workdir)
    if "digest" in saved:
        diff = {k: (saved.get(k), info[k]) for k in ("npz_path", "digest", "num_classes")
                if saved.get(k) != info[k]}
    else:  # a run from before digests: its sizes and pixel statistics identify the data
        diff = {k: (saved.get(k), info[k])
                for k in ("num_classes", "num_train", "num_test", "mean", "std")
                if not np.allclose(saved.get(k, np.nan), info[k], rtol=1e-6, atol=0)}
    if diff:
        raise ValueError(
            f"{workdir} holds a run trained on other data; differing fields (saved, given): "
            f"{diff}. Resuming would continue on other images and normalise the earlier "
            "checkpoints' spectra with the wrong statistics. Use another --workdir, or the "
            "run's data set to resume."
        )


def read_data_info(workdir: str | os.PathLike, /) -> dict[str, Any]:
    """The ``data.json`` of a run: data set name, class count, split sizes, normalisation.

    ``mean`` and ``std`` (pixel units, per channel, of the full training split) are what the
    model was trained with; normalise Hessian data with them (:func:`jaxspec.data.normalize`).
    ``npz_path`` (the resolved path of the ``.npz`` it was read from, or ``None``) and
    ``digest`` (SHA-256 of the arrays used, after subsampling) identify the data.

    Example:
      >>> import tempfile
      >>> from train import TrainConfig, train_and_evaluate
      >>> from train.loop import read_data_info
      >>> d = tempfile.mkdtemp()
      >>> cfg = TrainConfig(model="mlp", model_kwargs={"hidden": [16]}, dataset="synthetic",
      ...                   synthetic_size=(64, 32), epochs=1, batch_size=32, progress=False)
      >>> _ = train_and_evaluate(cfg, d)
      >>> read_data_info(d)["num_classes"]
      10
    """
    with open(os.path.join(os.fspath(workdir), DATA_FILE)) as f:
        return json.load(f)


def read_config(workdir: str | os.PathLike, /) -> TrainConfig:
    """The :class:`TrainConfig` a run in ``workdir`` was trained with (its ``config.json``).

    Raises:
      FileNotFoundError: if ``workdir`` holds no run.

    Example:
      >>> import tempfile
      >>> from train import TrainConfig, train_and_evaluate
      >>> from train.loop import read_config
      >>> d = tempfile.mkdtemp()
      >>> cfg = TrainConfig(model="mlp", model_kwargs={"hidden": [16]}, dataset="synthetic",
      ...                   synthetic_size=(64, 32), epochs=1, batch_size=32, progress=False)
      >>> _ = train_and_evaluate(cfg, d)
      >>> read_config(d) == cfg
      True
    """
    workdir = os.path.abspath(os.fspath(workdir))
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir}: no {CONFIG_FILE}; not a training run directory")
    with open(path) as f:
        return TrainConfig.from_dict(json.load(f))


class SetupError(ValueError):
    """A run that cannot be set up from its config, its data or its work directory: an unknown
    model or data set, arguments the model does not take, labels out of range, a data set smaller
    than a batch, another run's config in the work directory. :func:`train_and_evaluate` raises
    it before writing anything; ``python -m train`` prints its message without a traceback (the
    original error is its ``__cause__``).

    Example:
      >>> import tempfile
      >>> from train import TrainConfig, train_and_evaluate
      >>> from train.loop import SetupError
      >>> cfg = TrainConfig(model="mlp", model_kwargs={"width": 8}, dataset="synthetic",
      ...                   synthetic_size=(64, 32), batch_size=32)
      >>> try:
      ...     train_and_evaluate(cfg, tempfile.mkdtemp())
      ... except SetupError as e:
      ...     print(type(e.__cause__).__name__, "-", e)
      TypeError - MLP.__init__() got an unexpected keyword argument 'width'
    """


def train_and_evaluate(
    config: TrainConfig,
    workdir: str | os.PathLike,
    /,
    *,
    data: data_lib.ImageDataset | None = None,
    mesh: Mesh | None = None,
) -> list[dict[str, Any]]:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint if there is one.

    Writes ``config.json``, ``metrics.jsonl`` (one line per epoch, see :mod:`train.metrics_io`;
    with ``config.track_curvature_every`` also the curvature records of :mod:`train.tracking`) and
    Orbax checkpoints under ``checkpoints/<epoch>`` (``0`` = the initialisation): the epochs in
    ``config.checkpoint_epochs`` are kept, and the latest one. Stops after
    ``config.stop_after`` epochs if set (the schedule still spans ``config.epochs``).

    Args:
      config: the run (:func:`train.configs.get_config`).
      workdir: the run's directory (created if needed).
      data: use this data set instead of loading ``config.dataset`` (tests, notebooks).
      mesh: device mesh; default all local devices.

    Returns:
      All epoch records of the run so far (earlier invocations included); the curvature
      records: :func:`train.metrics_io.read_curvature`.

    Raises:
      SetupError: (a ``ValueError``) if ``workdir`` holds a run with a different config
        (run-control fields such as ``stop_after`` may differ) or other data (``npz_path``,
        contents), if a label lies outside ``[0, num_classes)``, or if the run cannot be built
        (unknown model or data set, model arguments, data set smaller than a batch); nothing is
        written to ``workdir`` then.
      jaxspec.workdir.WorkdirLockedError: if another live process trains in ``workdir``.
      FloatingPointError: if a loss becomes NaN or infinite (that epoch is not saved).

    Example:
      >>> import tempfile
      >>> from train import TrainConfig, train_and_evaluate
      >>> cfg = TrainConfig(model="mlp", model_kwargs={"hidden": [16]}, dataset="synthetic",
      ...                   synthetic_size=(64, 32), epochs=1, batch_size=32, progress=False)
      >>> train_and_evaluate(cfg, tempfile.mkdtemp())[-1]["epoch"]
      1
    """
    with workdir_lock(workdir) as workdir:
        return _train(config, workdir, data=data, mesh=mesh)


def _set_up(config: TrainConfig, workdir: str, *, data: data_lib.ImageDataset | None,
            mesh: Mesh | None) -> tuple:
    # Everything that can fail on a bad config or bad data, before the first write.
    _check_config(workdir, config)
    loaded = data is None
    data = load_data(config) if loaded else data
    check_labels(data.y_train, data.num_classes, name="y_train")
    check_labels(data.y_test, data.num_classes, name="y_test")
    info = _data_info(config, data, loaded=loaded)
    _check_data_info(workdir, info)
    trainer = build_trainer(
        config, num_classes=data.num_classes, num_train=data.x_train.shape[0], mean=data.mean,
        std=data.std, mesh=mesh,
    )
    tracker = (None if config.track_curvature_every is None
               else build_tracker(config, model=trainer.model, data=data))
    return data, info, trainer, tracker


def _train(config: TrainConfig, workdir: str, *, data: data_lib.ImageDataset | None,
           mesh: Mesh | None) -> list[dict[str, Any]]:
    try:
        data, info, trainer, tracker = _set_up(config, workdir, data=data, mesh=mesh)
    except (ValueError, TypeError) as e:  # TypeError: model arguments the model does not take
        raise SetupError(str(e)) from e
    write_text(os.path.join(workdir, CONFIG_FILE), json.dumps(config.to_dict(), indent=2))
    write_text(os.path.join(workdir, DATA_FILE), json.dumps(info, indent=2))
    replicated = NamedSharding(trainer.mesh, P())
    eval_bs = trainer.eval_batch_size
    num_train, every = data.x_train.shape[0], config.track_curvature_every
    x_train = jax.device_put(data.x_train, replicated)
    y_train = jax.device_put(data.y_train.astype(np.int32), replicated)
    n_test = data.x_test.shape[0]
    x_test = jax.device_put(_pad_to(data.x_test, eval_bs), replicated)
    y_test = jax.device_put(_pad_to(data.y_test.astype(np.int32), eval_bs), replicated)

    mngr = _checkpoint_manager(workdir, config)
    state = trainer.init_state
    start = mngr.latest_step()
    if start is None:
        start = 0
        records = metrics_io.truncate_metrics(workdir, max_epoch=0)
        if 0 in config.checkpoint_epochs:
            mngr.save(0, args=ocp.args.StandardSave(state))
    else:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        state = mngr.restore(start, args=ocp.args.StandardRestore(abstract))
        records = metrics_io.truncate_metrics(workdir, max_epoch=start)
    elapsed = records[-1]["elapsed"] if records else 0.0
    end = config.epochs if config.stop_after is None else min(config.epochs, config.stop_after)
    steps = trainer.steps_per_epoch

    from tqdm.auto import tqdm  # the edge: only the interactive loop needs it

    try:
        for epoch in range(start, end):
            t0 = time.perf_counter()
            key = epoch_key(config, epoch)
            perm_key = jax.random.fold_in(key, PERM_STREAM)
            perm = jax.random.permutation(perm_key, num_train).astype(jnp.int32)
            lr = paper_lr(epoch, base_lr=config.base_lr, total_epochs=config.epochs,
                          ratio=config.lr_ratio)
            outs, curvature, tracking_time = [], [], 0.0
            bar = tqdm(
                range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                disable=not config.progress, unit="step",
            )
            for s in bar:
                state, out = trainer.train_step(state, x_train, y_train, perm, np.int32(s), key)
                outs.append(out)
                done_steps = epoch * steps + s + 1
                if tracker is not None and done_steps % every == 0:
                    # Before the next step, which donates these parameters.
                    jax.block_until_ready(state.params)
                    curvature.append(tracker.measure(state.params, step=done_steps,
                                                     epoch=epoch + 1, lr=lr))
                    tracking_time += curvature[-1]["seconds"]
            # One transfer per epoch: the steps run asynchronously until here.
            losses, correct = jax.device_get(jax.tree.map(lambda *a: jnp.stack(a), *outs))
            train_time = time.perf_counter() - t0 - tracking_time
            test_loss, test_acc = _evaluate_test(trainer, state, x_test, y_test, n_test, eval_bs)
            _check_finite(losses, test_loss, epoch, config, mngr.latest_step())
            epoch_time = time.perf_counter() - t0
            elapsed += epoch_time
            record = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": float(np.mean(losses)),
                "train_accuracy": float(np.sum(correct)) / (steps * config.batch_size),
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                "epoch_time": epoch_time,
                "train_images_per_s": steps * config.batch_size / train_time,
                "elapsed": elapsed,
            }
            # Metrics first, checkpoint second: a kill in between re-trains this epoch on resume
            # and truncate_metrics drops the stale lines. Curvature records go just before
            # their epoch's line, and like it only once the epoch's losses are finite.
            for r in curvature:
                metrics_io.append_metrics(workdir, r)
            metrics_io.append_metrics(workdir, record)
            records.append(record)
            done = epoch + 1
            named = done in config.checkpoint_epochs
            if named or done % config.checkpoint_every == 0 or done == end:
                mngr.save(done, args=ocp.args.StandardSave(state))
            msg = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
            )
            if config.progress:
                tqdm.write(f"[{config.name}] {msg}")
    finally:
        mngr.wait_until_finished()
        mngr.close()
    return records


def _check_finite(losses: np.ndarray, test_loss: float, epoch: int, config: TrainConfig,
                  saved: int | None) -> None:
    # Checked once per epoch, on the losses fetched anyway: no per-step synchronisation.
    bad = ~np.isfinite(losses)
    if not bad.any() and np.isfinite(test_loss):
        return
    step = int(np.argmax(bad))
    where = (f"training loss {float(losses[step])} at step {step + 1}/{losses.size}"
             if bad.any() else f"test loss {test_loss} after the last step")
    lr = paper_lr(epoch, base_lr=config.base_lr, total_epochs=config.epochs, ratio=config.lr_ratio)
    latest = "no checkpoint yet" if saved is None else f"the latest checkpoint is epoch {saved}"
    raise FloatingPointError(
        f"training diverged: {where} of epoch {epoch + 1} (learning rate {lr:g}). This epoch is "
        f"neither recorded nor saved ({latest}). Lower base_lr, or check the data for NaN/Inf."
    )


def _evaluate_test(
    trainer: Any, state: TrainState, x: jax.Array, y: jax.Array, n: int, eval_bs: int
) -> tuple[float, float]:
    outs = [
        trainer.eval_step(state, x, y, np.int32(start), np.int32(min(eval_bs, n - start)))
        for start in range(0, n, eval_bs)
    ]
    loss_sum, correct = 0.0, 0.0
    for l, c in jax.device_get(outs):
        loss_sum += float(l)
        correct += float(c)
    return loss_sum / n, correct / n


@functools.lru_cache(maxsize=8)
def _model_template(model: str, kwargs_json: str, seed: int, prng_impl: str,
                    num_classes: int) -> tuple:
    """``(graphdef, abstract params, abstract batch stats, other_init)`` of a model, cached per
    model so that a sweep over checkpoints traces it once. ``other_init()`` is jitted and returns
    fresh arrays of the model's remaining state (its RNG streams); the parameter initialisers are
    dead code there, so it costs neither their compilation nor their compute."""
    config = TrainConfig(model=model, model_kwargs=json.loads(kwargs_json), seed=seed,
                         prng_impl=prng_impl)
    # abstract_model traces the initialisers with concrete RNG counters: 2.0 s instead of 5.6 s
    # for PreResNet-110 on CPU. The structure does not depend on the seed.
    abstract = abstract_model(model, num_classes=num_classes, **model_kwargs(config))
    graphdef, params, batch_stats, _ = nnx.split(abstract, nnx.Param, nnx.BatchStat, ...)
    create = lambda: build_model(config, num_classes=num_classes)  # noqa: E731
    other_init = jax.jit(lambda: nnx.state(create(), nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat))))
    return graphdef, params, batch_stats, other_init


def load_checkpoint(
    workdir: str | os.PathLike, /, *, epoch: int | None = None
) -> tuple[nnx.Module, TrainConfig, list[dict[str, Any]]]:
    """Load the model saved at ``epoch`` (default: the latest) of the run in ``workdir``.

    For Hessian spectra at checkpoints: the returned model holds the trained parameters and
    BatchNorm running statistics and is in training mode, like a freshly built model; pass it to
    :func:`jaxspec.models.hessian_loss`, which chooses its own BatchNorm mode.

    Args:
      workdir: a directory written by :func:`train_and_evaluate`.
      epoch: completed epochs at the checkpoint (``0``: initialisation); ``None``: the latest.

    Returns:
      ``(model, config, metrics)``; ``metrics`` are the records up to and including ``epoch``.

    Raises:
      FileNotFoundError: if ``workdir`` holds no run or no checkpoint.
      ValueError: if there is no checkpoint at ``epoch`` (the message lists the available ones).

    Example:
      >>> import tempfile
      >>> from train import TrainConfig, load_checkpoint, train_and_evaluate
      >>> d = tempfile.mkdtemp()
      >>> cfg = TrainConfig(model="mlp", model_kwargs={"hidden": [16]}, dataset="synthetic",
      ...                   synthetic_size=(64, 32), epochs=1, batch_size=32, progress=False)
      >>> _ = train_and_evaluate(cfg, d)
      >>> model, config, metrics = load_checkpoint(d, epoch=1)
      >>> len(metrics), config.model
      (1, 'mlp')
    """
    workdir = os.path.abspath(os.fspath(workdir))
    config = read_config(workdir)
    if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
        raise FileNotFoundError(f"{workdir}: no checkpoints")
    mngr = _checkpoint_manager(workdir, config, read_only=True)
    try:
        steps = list(mngr.all_steps())
        if not steps:
            raise FileNotFoundError(f"{workdir}: no checkpoints")
        step = max(steps) if epoch is None else epoch
        if step not in steps:
            raise ValueError(
                f"{workdir}: no checkpoint at epoch {epoch}; available: {sorted(steps)}"
            )
        num_classes = int(read_data_info(workdir)["num_classes"])
        graphdef, params, batch_stats, other_init = _model_template(
            config.model, json.dumps(config.model_kwargs, sort_keys=True), config.seed,
            config.prng_impl, num_classes)
        tx = make_optimizer(config, steps_per_epoch=1)  # the schedule is not state
        target = TrainState(params, batch_stats, jax.eval_shape(tx.init, params))
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), target
        )
        state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    finally:
        mngr.close()
    model = nnx.merge(graphdef, state.params, state.batch_stats, other_init())
    metrics = [r for r in metrics_io.read_metrics(workdir) if r.get("epoch", 0) <= step]
    return model, config, metrics

