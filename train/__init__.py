"""Training runs with the paper's schedules: ``python -m train --config <name> --workdir <dir>``.

Importable pieces: :func:`train_and_evaluate` (one run, resumable), :func:`load_checkpoint` (a
model at a saved epoch, for Hessian spectra), :func:`build_trainer` (the jitted steps), the named
configs and the learning-rate schedule. Curves: ``python -m train.curves --workdir <dir>``;
curvature tracking during training (the edge of stability): :mod:`train.tracking`.

The names from :mod:`train.loop` and :mod:`train.steps` (which import Flax and Orbax) are loaded
on first use, so ``python -m train --help`` and ``python -m train.curves`` start quickly.
"""

import importlib
from typing import Any

from train.configs import TrainConfig
from train.configs import apply_overrides
from train.configs import config_names
from train.configs import get_config
from train.metrics_io import read_curvature
from train.metrics_io import read_metrics
from train.schedules import epoch_lr_schedule
from train.schedules import paper_lr

_LAZY = {
    "SetupError": "train.loop",
    "build_trainer": "train.steps",
    "load_checkpoint": "train.loop",
    "train_and_evaluate": "train.loop",
}

__all__ = [
    "SetupError",
    "TrainConfig",
    "apply_overrides",
    "build_trainer",
    "config_names",
    "epoch_lr_schedule",
    "get_config",
    "load_checkpoint",
    "paper_lr",
    "read_curvature",
    "read_metrics",
    "train_and_evaluate",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
