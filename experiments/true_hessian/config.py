"""Settings of the True-Hessian study: :class:`StudyConfig` and its named presets.

Each preset is a function returning a :class:`StudyConfig`, with the exact command in its
docstring (the Flax-examples layout); :func:`get_config` looks one up by name and
:func:`apply_overrides` (``train.configs.apply_overrides``, the one override parser of every
script) applies ``key=value`` strings (``--set`` on the command line).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from train.configs import apply_overrides, check_ints

__all__ = ["StudyConfig", "apply_overrides", "config_names", "default", "full", "get_config",
           "gpu", "preset", "smoke"]


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Settings of the study (saved as ``config.json``; a rerun must use the same ones).

    Attributes:
      seed: master seed (teacher, data pools, student inits, probes).
      input_dim: ``d``, inputs ``x ~ N(0, I_d)``.
      num_classes: ``K``.
      teacher_widths: hidden widths of the teacher MLP.
      teacher_scale: logit multiplier of the teacher (larger: more confident labels, lower
        Bayes error).
      student_widths: hidden widths of the student MLP (sets ``P``).
      qs: the targeted ``q = P / N``; ``N = round(P / q)``.
      true_ratio: ``M / P`` for the True Hessian (rounded up to whole noise batches).
      train_steps: Adam steps, the same for every N.
      train_batch_size: mini-batch size (batches are drawn from reshuffled epochs).
      learning_rate: peak Adam learning rate (cosine decay to 0 over ``train_steps``).
      train_input_noise: std of Gaussian jitter added to the inputs of every training batch
        (an augmentation; 0: none). The Hessians are always of the clean samples, so with
        jitter the weights do not minimise the loss whose Hessian is measured, as in the paper
        (trained with augmentation, Hessian of the un-augmented training set).
      lanczos_steps: ``m`` for the empirical and held-out Hessians.
      true_lanczos_steps: ``m`` for the True Hessian.
      num_vectors: SLQ probe vectors per spectrum (the paper: 1).
      noise_probes: probe vectors for the sigma^2 estimate and the direct noise check.
      noise_spectrum_qs: the q (nearest point) at which the noise matrices ``H_emp - H_true`` and
        ``H_heldout - H_true`` get their own SLQ (costly: an M-sample HVP per step).
      noise_lanczos_steps: ``m`` for those.
      per_sample_count: fresh samples for the per-sample statistics (0: skip).
      hvp_batch_size: samples per HVP batch, and the mini-batch size of the sigma^2 estimate.
        Every data set is zero-weight padded to whole batches
        (:func:`experiments.true_hessian.measure.padded`), so all HVPs share one compilation.
      coupling_samples: fresh samples whose per-sample HVPs give the noise couplings of the
        second-order predictor (rounded down to whole chunks of 512).
      ggn: also measure the Gauss-Newton matrices (true, empirical, held-out) and the residual
        ``H - GGN`` on the training and held-out sets.
      seeds: independent repetitions (seeds ``seed, seed + 1, ...``: data pools, student
        initialisation and training order, probe vectors; the teacher stays the one of
        ``seed``); the summary gives their mean and spread.
      driver: Lanczos driver, ``"auto"`` (the operators' default reduction picks it:
        :func:`jaxspec.reduction.resolve_reduce`), ``"host"``, ``"compiled"``; it also picks
        the operators' batch reduction (host loop or ``lax.scan``).

    Example:
      >>> from experiments.true_hessian.config import StudyConfig
      >>> c = StudyConfig(qs=(1.0, 10.0), lanczos_steps=10)
      >>> c.qs, c.lanczos_steps, c.true_lanczos_steps   # unset fields keep their defaults
      ((1.0, 10.0), 10, 30)
    """

    seed: int = 0
    input_dim: int = 16
    num_classes: int = 4
    teacher_widths: tuple[int, ...] = (32,)
    teacher_scale: float = 4.0
    student_widths: tuple[int, ...] = (48, 24)
    qs: tuple[float, ...] = (0.1, 0.316, 1.0, 3.16, 10.0)
    true_ratio: float = 20.0
    train_steps: int = 1000
    train_batch_size: int = 256
    learning_rate: float = 3e-3
    train_input_noise: float = 0.0
    lanczos_steps: int = 30
    true_lanczos_steps: int = 30
    num_vectors: int = 1
    noise_probes: int = 2
    noise_spectrum_qs: tuple[float, ...] = (1.0,)
    noise_lanczos_steps: int = 30
    per_sample_count: int = 2048
    hvp_batch_size: int = 2000
    coupling_samples: int = 4096
    ggn: bool = True
    seeds: int = 1
    driver: str = "auto"

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def num_params(self) -> int:
        """``P``, the student's parameter count.

        Example:
          >>> from experiments.true_hessian.config import StudyConfig
          >>> StudyConfig().num_params   # 16-48-24-4 with biases
          2092
        """
        widths = [self.input_dim, *self.student_widths, self.num_classes]
        return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))

    def num_samples(self, q: float, /) -> int:
        """``N = round(P / q)`` (at least 2), the training and held-out sets' size at ``q``.

        Example:
          >>> from experiments.true_hessian.config import StudyConfig
          >>> StudyConfig().num_samples(0.1), StudyConfig().num_samples(10.0)
          (20920, 209)
        """
        return max(2, int(round(self.num_params / q)))

    @property
    def true_samples(self) -> int:
        """``M``: ``true_ratio * P`` rounded up to whole batches of ``hvp_batch_size``.

        Example:
          >>> from experiments.true_hessian.config import StudyConfig
          >>> StudyConfig().true_samples   # 20 x 2092 -> 21 batches of 2000
          42000
        """
        b = self.hvp_batch_size
        return int(math.ceil(self.true_ratio * self.num_params / b)) * b

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists).

        Example:
          >>> from experiments.true_hessian.config import StudyConfig
          >>> StudyConfig().to_dict()["student_widths"]
          [48, 24]
        """
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudyConfig":
        """Inverse of :meth:`to_dict` (unknown keys rejected).

        Example:
          >>> from experiments.true_hessian.config import StudyConfig
          >>> c = StudyConfig(qs=(1.0, 10.0))
          >>> StudyConfig.from_dict(c.to_dict()) == c
          True
        """
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _validate(c: StudyConfig) -> None:
    # Checked when a config is made (a preset, flags, --set, config.json), so a bad value fails
    # before a work directory is touched, with the field named.
    def bad(key: str, rule: str) -> None:
        raise ValueError(f"config key {key!r} must be {rule}, got {getattr(c, key)!r}")

    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    def is_float(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    check_ints(c, [(key, low, False) for key, low in (
        ("seed", None), ("input_dim", 1), ("num_classes", 2), ("train_steps", 1),
        ("train_batch_size", 1), ("lanczos_steps", 1), ("true_lanczos_steps", 1),
        ("num_vectors", 1), ("noise_probes", 1), ("noise_lanczos_steps", 1),
        ("per_sample_count", 0), ("hvp_batch_size", 1), ("coupling_samples", 0), ("seeds", 1))])
    for key in ("teacher_widths", "student_widths"):
        value = getattr(c, key)
        if not (isinstance(value, tuple) and all(is_int(w) and w >= 1 for w in value)):
            bad(key, "a tuple of ints >= 1")
    for key, strict in (("teacher_scale", False), ("learning_rate", False),
                        ("train_input_noise", False), ("true_ratio", True)):
        value = getattr(c, key)
        if not is_float(value) or value < 0 or (strict and value == 0):
            bad(key, f"a finite float {'>' if strict else '>='} 0")
    for key, empty_ok in (("qs", False), ("noise_spectrum_qs", True)):
        value = getattr(c, key)
        if not (isinstance(value, tuple) and (value or empty_ok)
                and all(is_float(q) and q > 0 for q in value)):
            bad(key, ("a" if empty_ok else "a non-empty") + " tuple of finite floats > 0")
    if not isinstance(c.ggn, bool):
        bad("ggn", "true or false")
    if c.driver not in ("auto", "host", "compiled"):
        bad("driver", "'auto', 'host' or 'compiled'")
    # The True Hessian's M fresh samples: several noise batches (the sigma^2 estimate compares
    # them), and more samples than any empirical set (its own noise is undone, theory.py).
    m, n = c.true_samples, max(c.num_samples(q) for q in c.qs)
    if m < 2 * c.hvp_batch_size:
        bad("true_ratio", f"large enough for two batches of hvp_batch_size ({c.hvp_batch_size}) "
                          f"in M = true_ratio * P (P = {c.num_params}; M = {m})")
    if m <= n:
        bad("true_ratio", f"large enough for M = true_ratio * P (P = {c.num_params}; M = {m}) "
                          f"to exceed the largest N ({n}, at q = {min(c.qs):g})")


def default() -> StudyConfig:
    """The README's study: P = 2,092, M = 42,000, five q from 0.1 to 10, m = 30, three seeds.

    About 3 minutes of CPU on 2 cores (the seeds share every compilation). Command::

        python -m experiments.true_hessian --workdir runs/true_hessian

    Example:
      >>> from experiments.true_hessian.config import default
      >>> default().qs, default().seeds
      ((0.1, 0.316, 1.0, 3.16, 10.0), 3)
    """
    return StudyConfig(seeds=3)


def smoke() -> StudyConfig:
    """What the tests run: P = 555, M = 6,000, q = 0.3, 1, 3, m = 20; about 30 s on 2 cores.

    Command::

        python -m experiments.true_hessian --preset smoke --workdir runs/true_hessian_smoke

    Example:
      >>> from experiments.true_hessian.config import smoke
      >>> smoke().student_widths, smoke().lanczos_steps
      ((24, 12), 20)
    """
    return StudyConfig(input_dim=8, num_classes=3, teacher_widths=(16,), student_widths=(24, 12),
                       qs=(0.3, 1.0, 3.0), true_ratio=10.0, train_steps=300, lanczos_steps=20,
                       true_lanczos_steps=20, noise_spectrum_qs=(1.0,), noise_lanczos_steps=20,
                       per_sample_count=512, coupling_samples=1024, hvp_batch_size=500)


def full() -> StudyConfig:
    """The full figure on CPU: the default model at nine q, five seeds, m = 60, 8,192 coupling
    samples (about 5 seeds x 2-3 times the default's time). Command::

        python -m experiments.true_hessian --preset full --workdir runs/true_hessian_full

    Example:
      >>> from experiments.true_hessian.config import full
      >>> full().seeds, len(full().qs), full().lanczos_steps
      (5, 9, 60)
    """
    return StudyConfig(qs=(0.1, 0.178, 0.316, 0.562, 1.0, 1.78, 3.16, 5.62, 10.0), seeds=5,
                       lanczos_steps=60, true_lanczos_steps=60, coupling_samples=8192)


def gpu() -> StudyConfig:
    """One GPU (not yet run on one): P = 50,826, M = 2.55 M (50 P), nine q, m = 80, 3 probes.

    Command::

        python -m experiments.true_hessian --preset gpu --workdir runs/true_hessian_gpu

    Example:
      >>> from experiments.true_hessian.config import gpu
      >>> gpu().num_vectors, len(gpu().qs)
      (3, 9)
    """
    return StudyConfig(input_dim=64, num_classes=10, teacher_widths=(128,),
                       student_widths=(256, 128),
                       qs=(0.1, 0.178, 0.316, 0.562, 1.0, 1.78, 3.16, 5.62, 10.0),
                       true_ratio=50.0, train_steps=4000, train_batch_size=512, lanczos_steps=80,
                       true_lanczos_steps=80, num_vectors=3, noise_probes=4,
                       noise_spectrum_qs=(0.1, 1.0, 10.0), noise_lanczos_steps=40,
                       per_sample_count=2048, hvp_batch_size=50000)


_CONFIGS: dict[str, Callable[[], StudyConfig]] = {"default": default, "smoke": smoke, "gpu": gpu,
                                                  "full": full}


def config_names() -> list[str]:
    """The names :func:`get_config` knows.

    Example:
      >>> from experiments.true_hessian.config import config_names
      >>> config_names()
      ['default', 'full', 'gpu', 'smoke']
    """
    return sorted(_CONFIGS)


def get_config(name: str = "default", /) -> StudyConfig:
    """The named preset.

    Example:
      >>> from experiments.true_hessian.config import get_config
      >>> get_config("smoke").true_ratio
      10.0
    """
    if name not in _CONFIGS:
        raise ValueError(f"unknown preset {name!r}; choose from {config_names()}")
    return _CONFIGS[name]()


def preset(name: str, /, **overrides: Any) -> StudyConfig:
    """The named preset with ``overrides`` (field values) applied.

    Example:
      >>> from experiments.true_hessian.config import preset
      >>> preset("smoke", seed=3).seed, preset("smoke").student_widths
      (3, (24, 12))
    """
    return dataclasses.replace(get_config(name), **overrides)


