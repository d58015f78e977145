"""Named training configurations: the paper's runs and small CPU presets.

Every named config is a function returning a :class:`TrainConfig`; its docstring holds the exact
command. Paper runs (Granziol et al. 2020, section 6 and appendix I; DESIGN.md):

* SGD, momentum 0.9, batch 128, weight decay as L2 on all parameters (3e-4 PreResNet, 5e-4 VGG);
* learning rate by equation 11 (``r = 0.01``) once per epoch;
* Normal schedule ``alpha0 = 0.1, T = 225`` (VGG: ``alpha0 = 0.05, T = 300``, appendix I);
  Overfit schedule ``alpha0 = 0.001, T = 1000``;
* augmentation: random crop (4-pixel zero padding) and horizontal flip.

Times quoted in docstrings are ESTIMATES for one H100-class GPU (not measured end to end here):
PreResNet-110 about 12 s and VGG-16 about 6 s per CIFAR epoch; run ``experiments/train_speed.py``
on your machine for a measured throughput.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, Callable, Sequence

from jaxspec.data import NUM_CLASSES

__all__ = ["TrainConfig", "apply_overrides", "check_ints", "config_names", "get_config"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json`` in the work directory.

    Attributes:
      name: the config's name (for logs).
      model: a name of :func:`jaxspec.models.create_model`.
      model_kwargs: extra keyword arguments of the model (e.g. ``{"hidden": [256]}`` for the MLP).
      dataset: ``"cifar10"``, ``"cifar100"``, ``"synthetic"`` or ``"pydoc"`` (byte-level text
        of Python's documentation, :mod:`jaxspec.text`, for the ``"transformer"`` model).
      seq_len: tokens per training window of a text data set (at most the model's ``max_len``).
      npz_path: read the data from this local ``.npz`` instead of tensorflow-datasets.
      data_dir: tensorflow-datasets data directory.
      download: let tensorflow-datasets download and prepare CIFAR (may need TensorFlow).
      synthetic_size: ``(num_train, num_test)`` of the synthetic data set.
      train_per_class: keep this many training images per class (CPU presets); ``None``: all.
      test_per_class: keep this many test images per class; ``None``: all.
      subsample_seed: ``None`` keeps the first images of each class, an int a random subset.
      epochs: ``T``, the length of the schedule.
      base_lr: ``alpha0``.
      lr_ratio: ``r``, final learning rate over ``alpha0``.
      optimizer: ``"sgd"`` (the paper's) or ``"adam"`` (:func:`train.steps.make_optimizer`).
      momentum: SGD momentum (PyTorch semantics, no dampening, no Nesterov); Adam's ``b1``.
      weight_decay: L2 coefficient on all parameters, added to the gradient as PyTorch's SGD does.
      batch_size: global batch size, split over the local devices.
      eval_batch_size: batch size of the test-set evaluation.
      augment: random crop and flip of the training images.
      seed: seeds the initialisation, the data order, the augmentation and dropout.
      prng_impl: JAX PRNG implementation for all of those: ``"threefry2x32"`` (JAX's default:
        the same bits on every backend, JAX version and device count) or ``"rbg"`` (XLA's
        RngBitGenerator: compiles many times faster on XLA:CPU, where each threefry call takes
        seconds to compile, but its bits may change with the backend, the XLA version and the
        sharding). The CPU presets use ``"rbg"``.
      checkpoint_epochs: epochs whose checkpoints are kept (``0`` is the initialisation).
      checkpoint_every: save a checkpoint every this many epochs; only the latest of these is kept
        besides ``checkpoint_epochs``. Saving every epoch means a killed run loses at most one.
      stop_after: stop after this many epochs (the schedule still spans ``epochs``); ``None`` runs
        to the end. Rerun with a larger value, or ``None``, to continue.
      progress: show a progress bar per epoch.
      track_curvature_every: log the top eigenvalue of the curvature matrix every this many
        optimiser steps (global steps ``k, 2k, ...``) into ``metrics.jsonl``, for the
        edge-of-stability plot (:mod:`train.tracking`); ``None`` (default): off.
      track_curvature: the matrix tracked: ``"hessian"`` or ``"ggn"`` (Gauss-Newton).
      track_curvature_samples: the fixed evaluation set of the tracking: the first this many
        training images (normalised, not augmented), in batches of ``batch_size``.
      track_curvature_tol: relative residual ``|H x - lambda x| / ||H||`` at which the top
        eigenpair counts as converged.

    Example:
      >>> from train.configs import TrainConfig, get_config
      >>> c = get_config("cpu_synthetic")
      >>> c.name, c.model, c.dataset
      ('cpu_synthetic', 'smallcnn', 'synthetic')
      >>> TrainConfig(model="mlp", epochs=3).epochs
      3
    """

    name: str = "custom"
    model: str = "preresnet20"
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "cifar10"
    npz_path: str | None = None
    data_dir: str | None = None
    download: bool = False
    synthetic_size: tuple[int, int] = (512, 256)
    seq_len: int = 128
    train_per_class: int | None = None
    test_per_class: int | None = None
    subsample_seed: int | None = None
    epochs: int = 225
    base_lr: float = 0.1
    lr_ratio: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 3e-4
    batch_size: int = 128
    eval_batch_size: int = 1000
    augment: bool = True
    seed: int = 0
    prng_impl: str = "threefry2x32"
    checkpoint_epochs: tuple[int, ...] = ()
    checkpoint_every: int = 1
    stop_after: int | None = None
    progress: bool = True
    track_curvature_every: int | None = None
    track_curvature: str = "hessian"
    track_curvature_samples: int = 256
    track_curvature_tol: float = 1e-3

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists).

        Example:
          >>> TrainConfig(epochs=3).to_dict()["epochs"]
          3
        """
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``.

        Example:
          >>> TrainConfig.from_dict({"checkpoint_epochs": [0, 5]}).checkpoint_epochs
          (0, 5)
        """
        return dataclasses.replace(cls(), **{k: _coerce(cls, k, v) for k, v in d.items()})


# Fields that may differ between a run and its resumption: they do not change the trajectory.
# (npz_path too: the same file may be named by another relative path. Which file and which
# arrays were used is checked by content instead: train.loop compares data.json's identity.)
# The curvature tracking only reads the parameters between steps: it may be switched on, off or
# changed when a run is resumed.
RUN_CONTROL_FIELDS = frozenset({"stop_after", "progress", "data_dir", "download", "npz_path",
                                "track_curvature_every", "track_curvature",
                                "track_curvature_samples", "track_curvature_tol"})

PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
TRACK_KINDS = ("hessian", "ggn")
OPTIMIZERS = ("sgd", "adam")
DATASETS = (*NUM_CLASSES, "synthetic", "pydoc")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_ints(config: Any, rules: Sequence[tuple[str, int | None, bool]], /) -> None:
    """Refuses, with a ``ValueError`` naming the key, a field of ``config`` that is not an int
    at or above its smallest value; ``rules`` holds ``(key, smallest or None, None allowed)``.
    The one integer check of every script's config (:class:`TrainConfig`,
    ``experiments.true_hessian.StudyConfig``, ``experiments.spectrum_settings``).

    Example:
      >>> import types
      >>> from train.configs import check_ints
      >>> check_ints(types.SimpleNamespace(steps=3, limit=None), [("steps", 1, False),
      ...                                                          ("limit", 0, True)])
      >>> check_ints(types.SimpleNamespace(steps=0), [("steps", 1, False)])
      Traceback (most recent call last):
        ...
      ValueError: config key 'steps' must be an int > 0, got 0
    """
    for key, low, optional in rules:
        value = getattr(config, key)
        if (value is None and optional) or (_is_int(value) and (low is None or value >= low)):
            continue
        rule = "an int" + ("" if low is None else " > 0" if low == 1 else f" >= {low}")
        raise ValueError(f"config key {key!r} must be {'null or ' if optional else ''}{rule}, "
                         f"got {value!r}")


def _validate(c: TrainConfig) -> None:
    # Checked when a config is made (named, overridden or read back), so a typo fails before a
    # work directory is touched, with the key named.
    def bad(key: str, rule: str) -> None:
        raise ValueError(f"config key {key!r} must be {rule}, got {getattr(c, key)!r}")

    check_ints(c, [("epochs", 0, False), ("batch_size", 1, False), ("eval_batch_size", 1, False),
                   ("checkpoint_every", 1, False), ("seed", None, False),
                   ("track_curvature_samples", 1, False), ("seq_len", 1, False),
                   ("stop_after", 0, True), ("train_per_class", 1, True),
                   ("test_per_class", 1, True), ("subsample_seed", None, True),
                   ("track_curvature_every", 1, True)])
    for key, low, high in (("base_lr", 0.0, math.inf), ("lr_ratio", 0.0, math.inf),
                           ("momentum", 0.0, 1.0), ("weight_decay", 0.0, math.inf)):
        value = getattr(c, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value) or not low <= value < high:
            bad(key, f"a finite float >= {low:g}" + (f" and < {high:g}" if high < math.inf else ""))
    size = c.synthetic_size
    if not (isinstance(size, tuple) and len(size) == 2 and all(_is_int(n) and n > 0 for n in size)):
        bad("synthetic_size", "two ints > 0 (num_train, num_test)")
    if not (isinstance(c.checkpoint_epochs, tuple)
            and all(_is_int(e) and e >= 0 for e in c.checkpoint_epochs)):
        bad("checkpoint_epochs", "a tuple of ints >= 0")
    if c.prng_impl not in PRNG_IMPLS:
        bad("prng_impl", f"one of {list(PRNG_IMPLS)}")
    if c.optimizer not in OPTIMIZERS:
        bad("optimizer", f"one of {list(OPTIMIZERS)}")
    if c.track_curvature not in TRACK_KINDS:
        bad("track_curvature", f"one of {list(TRACK_KINDS)}")
    tol = c.track_curvature_tol
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0 < tol < 1:
        bad("track_curvature_tol", "a float > 0 and < 1")
    for key in ("name", "model", "dataset"):
        if not isinstance(getattr(c, key), str):
            bad(key, "a string")
    if c.dataset not in DATASETS:
        bad("dataset", f"one of {list(DATASETS)}")
    if not isinstance(c.model_kwargs, dict):
        bad("model_kwargs", "a JSON object")


def _coerce(cls: type, key: str, value: Any) -> Any:
    types = typing.get_type_hints(cls)
    if key not in types:
        raise ValueError(f"unknown config key {key!r}; keys: {sorted(types)}")
    hint = types[key]
    args = typing.get_args(hint)
    if value is None:
        if type(None) not in args:
            raise ValueError(f"config key {key!r} cannot be None")
        return None
    optional = bool(args) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    origin = typing.get_origin(base)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if isinstance(value, (int, float)):  # one value: a list of one (qs=1)
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} needs a list (e.g. 0,5,10), got {value!r}")
        inner = typing.get_args(base)[0]
        return tuple(_scalar(key, inner, v, each=True) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} needs a JSON object, got {value!r}")
        return dict(value)
    return _scalar(key, base, value)


def _scalar(key: str, base: type, value: Any, *, each: bool = False) -> Any:
    article = "an " if base is int else "a "
    what = f"{'a list of ' if each else article}{base.__name__}{'s' if each else ''}"
    if base is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config key {key!r} needs true/false, got {value!r}")
            return value.lower() in ("true", "1")
        return bool(value)
    if base in (int, float):
        if isinstance(value, str):
            try:
                value = json.loads(value.strip())
            except json.JSONDecodeError:
                raise ValueError(f"config key {key!r} needs {what}, got {value!r}") from None
        fractional = isinstance(value, float) and not value.is_integer()
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or (base is int and (fractional or not math.isfinite(value))):
            raise ValueError(f"config key {key!r} needs {what}, got {value!r}")
        return base(value)
    return str(value)


def apply_overrides(config: Any, assignments: Sequence[str], /) -> Any:
    """Apply ``key=value`` strings (``--set`` on the command line) to a config.

    The one override parser of every script's config: ``config`` is any frozen dataclass
    (:class:`TrainConfig`, ``experiments.true_hessian.StudyConfig``); each value is converted
    to its field's type hint.

    Values are parsed as JSON where possible (``3``, ``0.05``, ``true``, ``null``, ``[0, 5]``,
    ``{"hidden": [64]}``), else taken as strings, then converted to the field's type; tuples also
    take ``0,5,10``.

    Args:
      config: the base config.
      assignments: ``["epochs=3", "model=mlp", ...]``.

    Returns:
      The new config.

    Example:
      >>> from train.configs import apply_overrides, get_config
      >>> c = apply_overrides(get_config("cpu_synthetic"), ["epochs=2", "checkpoint_epochs=0,2"])
      >>> c.epochs, c.checkpoint_epochs
      (2, (0, 2))
    """
    changes = {}
    for a in assignments:
        if "=" not in a:
            raise ValueError(f"override {a!r} is not of the form key=value")
        key, raw = a.split("=", 1)
        key = key.strip()
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = {"None": None, "True": True, "False": False}.get(raw, raw)
        changes[key] = _coerce(type(config), key, value)
    return dataclasses.replace(config, **changes)


# ----------------------------------------------------------------------------------------------
# The paper's runs.

_NORMAL_CKPTS = tuple(range(0, 226, 25))  # 0, 25, ..., 225: the appendix's spectra epochs
_VGG_NORMAL_CKPTS = tuple(range(0, 301, 25))
_OVERFIT_CKPTS = (0, 25, 50, 75, 125, 150, *range(100, 1001, 100))


def _paper(model: str, dataset: str, schedule: str) -> TrainConfig:
    vgg = model.startswith("vgg")
    if schedule == "normal":
        lr, epochs = (0.05, 300) if vgg else (0.1, 225)
        ckpts = _VGG_NORMAL_CKPTS if vgg else _NORMAL_CKPTS
    else:
        lr, epochs, ckpts = 0.001, 1000, tuple(sorted(set(_OVERFIT_CKPTS)))
    return TrainConfig(
        name=f"{model}_{dataset}_{schedule}",
        model=model,
        dataset=dataset,
        epochs=epochs,
        base_lr=lr,
        weight_decay=5e-4 if vgg else 3e-4,
        batch_size=128,
        checkpoint_epochs=ckpts,
    )


def preresnet110_cifar10_normal() -> TrainConfig:
    """PreResNet-110, CIFAR-10, Normal schedule (alpha0 0.1, T 225, wd 3e-4). Paper: 95.32% test.

    Command::

        python -m train --config preresnet110_cifar10_normal --workdir runs/p110_c10_normal

    Expected time on one GPU: about 45 minutes (estimate: ~12 s/epoch x 225 epochs).

    Example:
      >>> from train.configs import preresnet110_cifar10_normal
      >>> c = preresnet110_cifar10_normal()
      >>> c.model, c.dataset, c.epochs, c.base_lr, c.weight_decay
      ('preresnet110', 'cifar10', 225, 0.1, 0.0003)
    """
    return _paper("preresnet110", "cifar10", "normal")


def preresnet110_cifar10_overfit() -> TrainConfig:
    """PreResNet-110, CIFAR-10, Overfit schedule (alpha0 0.001, T 1000). Paper: 86.46% test.

    Command::

        python -m train --config preresnet110_cifar10_overfit --workdir runs/p110_c10_overfit

    Expected time on one GPU: about 3.5 hours (estimate: ~12 s/epoch x 1000 epochs).

    Example:
      >>> from train.configs import preresnet110_cifar10_overfit
      >>> c = preresnet110_cifar10_overfit()
      >>> c.dataset, c.epochs, c.base_lr, c.checkpoint_epochs[-2:]
      ('cifar10', 1000, 0.001, (900, 1000))
    """
    return _paper("preresnet110", "cifar10", "overfit")


def preresnet110_cifar100_normal() -> TrainConfig:
    """PreResNet-110, CIFAR-100, Normal schedule (alpha0 0.1, T 225). Paper: 77.24% test.

    Command::

        python -m train --config preresnet110_cifar100_normal --workdir runs/p110_c100_normal

    Expected time on one GPU: about 45 minutes (estimate: ~12 s/epoch x 225 epochs).

    Example:
      >>> from train.configs import preresnet110_cifar100_normal
      >>> c = preresnet110_cifar100_normal()
      >>> c.model, c.dataset, c.epochs, c.base_lr
      ('preresnet110', 'cifar100', 225, 0.1)
    """
    return _paper("preresnet110", "cifar100", "normal")


def preresnet110_cifar100_overfit() -> TrainConfig:
    """PreResNet-110, CIFAR-100, Overfit schedule (alpha0 0.001, T 1000). Paper: 56.85% test.

    Command::

        python -m train --config preresnet110_cifar100_overfit --workdir runs/p110_c100_overfit

    Expected time on one GPU: about 3.5 hours (estimate: ~12 s/epoch x 1000 epochs).

    Example:
      >>> from train.configs import preresnet110_cifar100_overfit
      >>> c = preresnet110_cifar100_overfit()
      >>> c.dataset, c.epochs, c.base_lr, c.weight_decay
      ('cifar100', 1000, 0.001, 0.0003)
    """
    return _paper("preresnet110", "cifar100", "overfit")


def vgg16_cifar10_normal() -> TrainConfig:
    """VGG-16 (no BN), CIFAR-10, Normal schedule for VGG (alpha0 0.05, T 300, wd 5e-4).

    Command::

        python -m train --config vgg16_cifar10_normal --workdir runs/vgg16_cifar10_normal

    Expected time on one GPU: about 30 minutes (estimate: ~6 s/epoch x 300 epochs).

    Example:
      >>> from train.configs import vgg16_cifar10_normal
      >>> c = vgg16_cifar10_normal()
      >>> c.model, c.dataset, c.epochs, c.base_lr, c.weight_decay
      ('vgg16', 'cifar10', 300, 0.05, 0.0005)
    """
    return _paper("vgg16", "cifar10", "normal")


def vgg16_cifar10_overfit() -> TrainConfig:
    """VGG-16 (no BN), CIFAR-10, Overfit schedule (alpha0 0.001, T 1000, wd 5e-4).

    Command::

        python -m train --config vgg16_cifar10_overfit --workdir runs/vgg16_cifar10_overfit

    Expected time on one GPU: about 1.7 hours (estimate: ~6 s/epoch x 1000 epochs).

    Example:
      >>> from train.configs import vgg16_cifar10_overfit
      >>> c = vgg16_cifar10_overfit()
      >>> c.model, c.dataset, c.epochs, c.base_lr, c.weight_decay
      ('vgg16', 'cifar10', 1000, 0.001, 0.0005)
    """
    return _paper("vgg16", "cifar10", "overfit")


def vgg16_cifar100_normal() -> TrainConfig:
    """VGG-16 (no BN), CIFAR-100, Normal schedule for VGG (alpha0 0.05, T 300, wd 5e-4).

    Command::

        python -m train --config vgg16_cifar100_normal --workdir runs/vgg16_cifar100_normal

    Expected time on one GPU: about 30 minutes (estimate: ~6 s/epoch x 300 epochs).

    Example:
      >>> from train.configs import vgg16_cifar100_normal
      >>> c = vgg16_cifar100_normal()
      >>> c.model, c.dataset, c.epochs, c.base_lr, c.checkpoint_epochs[-1]
      ('vgg16', 'cifar100', 300, 0.05, 300)
    """
    return _paper("vgg16", "cifar100", "normal")


def vgg16_cifar100_overfit() -> TrainConfig:
    """VGG-16 (no BN), CIFAR-100, Overfit schedule (alpha0 0.001, T 1000, wd 5e-4).

    Command::

        python -m train --config vgg16_cifar100_overfit --workdir runs/vgg16_cifar100_overfit

    Expected time on one GPU: about 1.7 hours (estimate: ~6 s/epoch x 1000 epochs).

    Example:
      >>> from train.configs import vgg16_cifar100_overfit
      >>> c = vgg16_cifar100_overfit()
      >>> c.model, c.dataset, c.epochs, c.base_lr
      ('vgg16', 'cifar100', 1000, 0.001)
    """
    return _paper("vgg16", "cifar100", "overfit")


def vgg16bn_cifar100_normal() -> TrainConfig:
    """VGG-16-BN, CIFAR-100, Normal schedule for VGG (alpha0 0.05, T 300): the appendix-I run.

    Command::

        python -m train --config vgg16bn_cifar100_normal --workdir runs/vgg16bn_cifar100_normal

    Expected time on one GPU: about 35 minutes (estimate: ~7 s/epoch x 300 epochs).

    Example:
      >>> from train.configs import vgg16bn_cifar100_normal
      >>> c = vgg16bn_cifar100_normal()
      >>> c.model, c.dataset, c.epochs, c.base_lr, c.weight_decay
      ('vgg16bn', 'cifar100', 300, 0.05, 0.0005)
    """
    return _paper("vgg16bn", "cifar100", "normal")


def vgg16bn_cifar10_normal() -> TrainConfig:
    """VGG-16-BN, CIFAR-10, Normal schedule for VGG (alpha0 0.05, T 300): appendix figures 32-33.

    Command::

        python -m train --config vgg16bn_cifar10_normal --workdir runs/vgg16bn_cifar10_normal

    Expected time on one GPU: about 35 minutes (estimate: ~7 s/epoch x 300 epochs).

    Example:
      >>> from train.configs import vgg16bn_cifar10_normal
      >>> c = vgg16bn_cifar10_normal()
      >>> c.model, c.dataset, c.epochs, c.base_lr
      ('vgg16bn', 'cifar10', 300, 0.05)
    """
    return _paper("vgg16bn", "cifar10", "normal")


# ----------------------------------------------------------------------------------------------
# Small presets for a CPU.


def cpu_preresnet20_cifar10() -> TrainConfig:
    """PreResNet-20 on 2,500 CIFAR-10 training images (250 per class), 1,000 test images, 6 epochs.

    The Normal schedule shortened to T = 6; checkpoints at 0, 3 and 6 for Hessian spectra.
    Needs CIFAR-10 prepared for tensorflow-datasets, or a local copy::

        python -m train --config cpu_preresnet20_cifar10 --workdir runs/cpu_preresnet20
        python -m train --config cpu_preresnet20_cifar10 --workdir runs/cpu_preresnet20 \\
            --set npz_path=/path/to/cifar10.npz

    Expected time: about 7 minutes on a 2-core CPU (estimate: ~50 images/s for training, measured
    by experiments/train_speed.py on a busy 2-core machine, plus evaluation and compilation).

    Example:
      >>> from train.configs import cpu_preresnet20_cifar10
      >>> c = cpu_preresnet20_cifar10()
      >>> c.model, c.train_per_class, c.test_per_class, c.epochs, c.checkpoint_epochs
      ('preresnet20', 250, 100, 6, (0, 3, 6))
    """
    return TrainConfig(
        name="cpu_preresnet20_cifar10",
        prng_impl="rbg",
        model="preresnet20",
        dataset="cifar10",
        train_per_class=250,
        test_per_class=100,
        epochs=6,
        base_lr=0.1,
        weight_decay=3e-4,
        eval_batch_size=500,
        checkpoint_epochs=(0, 3, 6),
    )


def cpu_mlp_cifar10() -> TrainConfig:
    """A 2x512 MLP on 5,000 CIFAR-10 training images (500 per class), 10 epochs.

    Command::

        python -m train --config cpu_mlp_cifar10 --workdir runs/cpu_mlp \\
            --set npz_path=/path/to/cifar10.npz

    Expected time: about 1 minute on a 2-core CPU (estimate).

    Example:
      >>> from train.configs import cpu_mlp_cifar10
      >>> c = cpu_mlp_cifar10()
      >>> c.model, c.train_per_class, c.epochs, c.base_lr, c.prng_impl
      ('mlp', 500, 10, 0.05, 'rbg')
    """
    return TrainConfig(
        name="cpu_mlp_cifar10",
        prng_impl="rbg",
        model="mlp",
        dataset="cifar10",
        train_per_class=500,
        test_per_class=100,
        epochs=10,
        base_lr=0.05,
        weight_decay=5e-4,
        eval_batch_size=500,
        checkpoint_epochs=(0, 5, 10),
    )


def cpu_synthetic() -> TrainConfig:
    """A small CNN on the synthetic CIFAR-shaped data set: needs no download; seconds on a CPU.

    Command::

        python -m train --config cpu_synthetic --workdir runs/cpu_synthetic

    Expected time: about 20 seconds on a 2-core CPU, compilation included (estimate).

    Example:
      >>> from train.configs import cpu_synthetic
      >>> c = cpu_synthetic()
      >>> c.model, c.dataset, c.synthetic_size, c.epochs
      ('smallcnn', 'synthetic', (1024, 256), 4)
    """
    return TrainConfig(
        name="cpu_synthetic",
        prng_impl="rbg",
        model="smallcnn",
        dataset="synthetic",
        synthetic_size=(1024, 256),
        epochs=4,
        base_lr=0.05,
        weight_decay=5e-4,
        eval_batch_size=256,
        checkpoint_epochs=(0, 2, 4),
    )


def cpu_transformer_pydoc() -> TrainConfig:
    """A 4-layer byte-level transformer LM on Python's documentation, Adam; about 0.9M parameters.

    The ``"transformer"`` model (4 layers, width 128, 4 heads) on windows of 128 bytes of
    ``pydoc_data.topics`` (:mod:`jaxspec.text`; every 10th topic held out as the test set),
    batch 32, Adam at 3e-3 with the equation-11 decay over 3 epochs, no weight decay. Needs no
    download::

        python -m train --config cpu_transformer_pydoc --workdir runs/cpu_transformer

    ``test_loss`` in ``metrics.jsonl`` is the held-out mean next-byte cross-entropy (nats),
    ``test_accuracy`` the fraction of next bytes predicted exactly.

    Example:
      >>> from train.configs import cpu_transformer_pydoc
      >>> c = cpu_transformer_pydoc()
      >>> c.model, c.dataset, c.optimizer, c.seq_len, c.augment
      ('transformer', 'pydoc', 'adam', 128, False)
    """
    return TrainConfig(
        name="cpu_transformer_pydoc",
        prng_impl="rbg",
        model="transformer",
        dataset="pydoc",
        seq_len=128,
        augment=False,
        optimizer="adam",
        epochs=3,
        base_lr=3e-3,
        lr_ratio=0.1,
        weight_decay=0.0,
        batch_size=32,
        eval_batch_size=128,
        checkpoint_epochs=(0, 3),
    )


_CONFIGS: dict[str, Callable[[], TrainConfig]] = {
    f.__name__: f
    for f in (
        preresnet110_cifar10_normal,
        preresnet110_cifar10_overfit,
        preresnet110_cifar100_normal,
        preresnet110_cifar100_overfit,
        vgg16_cifar10_normal,
        vgg16_cifar10_overfit,
        vgg16_cifar100_normal,
        vgg16_cifar100_overfit,
        vgg16bn_cifar10_normal,
        vgg16bn_cifar100_normal,
        cpu_preresnet20_cifar10,
        cpu_mlp_cifar10,
        cpu_synthetic,
        cpu_transformer_pydoc,
    )
}


def config_names() -> list[str]:
    """Names accepted by :func:`get_config`, in registry order.

    Example:
      >>> "preresnet110_cifar100_normal" in config_names()
      True
    """
    return list(_CONFIGS)


def get_config(name: str, /) -> TrainConfig:
    """The named config (see :func:`config_names`).

    Example:
      >>> get_config("vgg16_cifar100_normal").base_lr
      0.05
    """
    if name not in _CONFIGS:
        raise ValueError(f"unknown config {name!r}; known: {config_names()}")
    return _CONFIGS[name]()


def describe(name: str, /) -> str:
    """First line of a config's docstring (for ``--help``).

    Example:
      >>> describe("cpu_synthetic").startswith("A small CNN")
      True
    """
    return (_CONFIGS[name].__doc__ or "").strip().splitlines()[0]
