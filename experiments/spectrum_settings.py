"""What a spectrum of :mod:`experiments.spectrum` depends on, and its command-line options.

:class:`SpectrumSettings` checks every field when it is made, so a bad value fails before a
checkpoint is loaded or a file written, with the field named; :func:`add_settings_arguments`
and :func:`settings_from_args` give the experiment scripts the same options and report a bad
value as a command-line error (``python -m experiments.spectrum --steps 0``: usage, the message,
exit status 2), not a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

from jaxspec.augment import variant_count
from train.configs import check_ints

__all__ = [
    "CURVATURES",
    "DEFAULT_NUM_PER_IMAGE",
    "DEFAULT_STEPS",
    "MODES",
    "SpectrumSettings",
    "add_settings_arguments",
    "settings_from_args",
]

#: Lanczos steps m of the paper (Granziol et al. 2020, section 6): 100 for the Empirical Hessian
#: on the 50,000 training images, 80 for the Augmented Hessian on 1,500,000 samples.
DEFAULT_STEPS = {"empirical": 100, "augmented": 80}
#: K: 30 variants per image turn CIFAR's 50,000 training images into the paper's 1,500,000.
DEFAULT_NUM_PER_IMAGE = 30
MODES = ("empirical", "augmented")
#: The curvature matrices a spectrum can take, with the names their titles give them.
CURVATURES = {"hessian": "Hessian", "ggn": "GGN", "fisher": "Fisher",
              "empirical_fisher": "empirical Fisher"}


# The integer fields: (name, smallest value or None, whether None is allowed).
_INTS = (("num_steps", 1, True), ("num_per_image", 1, False), ("variant_seed", None, False),
         ("probe_seed", None, False), ("batch_size", 1, False), ("num_images", 1, True),
         ("checkpoint_every", 1, False), ("group_size", 1, True), ("noise_probes", 0, False),
         ("top_k", 0, False))


@dataclasses.dataclass(frozen=True)
class SpectrumSettings:
    """What a spectrum depends on besides the checkpoint (recorded in its JSON).

    Attributes:
      mode: ``"empirical"`` or ``"augmented"``.
      num_steps: Lanczos steps m; ``None``: the paper's (:data:`DEFAULT_STEPS`).
      num_per_image: ``K`` variants per image (augmented mode).
      variant_seed: seed of the variant table (augmented mode).
      probe_seed: seed of the SLQ probe vector.
      bn_mode: ``"batch"`` (the paper) or ``"running"`` (PyHessian).
      batch_size: HVP batch size (the BatchNorm statistics in batch mode).
      num_images: use the first ``num_images`` training images; ``None``: all.
      driver: Lanczos driver, ``"auto"`` (the operator's default reduction picks it:
        :func:`jaxspec.reduction.resolve_reduce`), ``"host"`` or ``"compiled"``.
      checkpoint_every: Lanczos steps between checkpoints of its state.
      group_size: batches per jitted call of the host-driven HVP (``driver="host"``); None:
        as many as fit in :data:`jaxspec.reduction.GROUP_BYTES` of activations.
      noise_probes: probes of the ``sigma^2`` estimate (empirical mode; 0: skip it).
      progress: progress bar over Lanczos steps.
      curvature: the matrix: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``
        (:data:`jaxspec.operator.KINDS`); files of another kind than the Hessian are named
        ``<mode>_<curvature>_e<epoch>``.
      top_k: also the ``top_k`` largest eigenpairs (:mod:`experiments.curvature`); 0: none.
      trace: also the trace (Hutch++).
      blocks: also one spectrum per parameter block, a regex each.

    Example:
      >>> from experiments.spectrum_settings import SpectrumSettings
      >>> s = SpectrumSettings(mode="augmented", num_per_image=2, batch_size=32)
      >>> s.steps, s.num_per_image, s.bn_mode
      (80, 2, 'batch')
      >>> SpectrumSettings(mode="train")
      Traceback (most recent call last):
        ...
      ValueError: mode must be one of ('empirical', 'augmented'), got 'train'
      >>> SpectrumSettings(group_size=2)   # the host loop's groups: only with driver="host"
      Traceback (most recent call last):
        ...
      ValueError: group_size sets the host loop's groups: it needs driver='host'
      >>> SpectrumSettings(num_steps=0)
      Traceback (most recent call last):
        ...
      ValueError: config key 'num_steps' must be null or an int > 0, got 0
    """

    mode: str = "empirical"
    num_steps: int | None = None
    num_per_image: int = DEFAULT_NUM_PER_IMAGE
    variant_seed: int = 0
    probe_seed: int = 0
    bn_mode: str = "batch"
    batch_size: int = 128
    num_images: int | None = None
    driver: str = "auto"
    checkpoint_every: int = 5
    group_size: int | None = None
    noise_probes: int = 1
    progress: bool = True
    curvature: str = "hessian"
    top_k: int = 0
    trace: bool = False
    blocks: tuple[str, ...] = ()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.bn_mode not in ("batch", "running"):
            raise ValueError(f"bn_mode must be 'batch' or 'running', got {self.bn_mode!r}")
        if self.driver not in ("auto", "host", "compiled"):
            raise ValueError(f"driver must be auto, host or compiled, got {self.driver!r}")
        if self.group_size is not None and self.driver != "host":
            raise ValueError("group_size sets the host loop's groups: it needs driver='host'")
        if self.curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {tuple(CURVATURES)}, got "
                             f"{self.curvature!r}")
        check_ints(self, _INTS)
        if self.num_per_image > variant_count():
            raise ValueError(f"num_per_image must be at most {variant_count()} (the distinct "
                             f"crop/flip variants of an image), got {self.num_per_image}")
        if not isinstance(self.blocks, tuple):
            raise ValueError(f"blocks must be a tuple of regexes, got {self.blocks!r}")
        for pattern in self.blocks:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                raise ValueError(f"blocks: {pattern!r} is not a valid regex ({e})") from None

    @property
    def name(self) -> str:
        """The files' stem: the mode, and the curvature if it is not the Hessian.

        Example:
          >>> from experiments.spectrum_settings import SpectrumSettings
          >>> SpectrumSettings().name, SpectrumSettings(curvature="ggn").name
          ('empirical', 'empirical_ggn')
        """
        return self.mode if self.curvature == "hessian" else f"{self.mode}_{self.curvature}"

    @property
    def steps(self) -> int:
        """``num_steps``, or the paper's m for the mode.

        Example:
          >>> from experiments.spectrum_settings import SpectrumSettings
          >>> SpectrumSettings().steps, SpectrumSettings(mode="augmented").steps
          (100, 80)
          >>> SpectrumSettings(num_steps=8).steps
          8
        """
        return DEFAULT_STEPS[self.mode] if self.num_steps is None else int(self.num_steps)

    def identity(self) -> dict[str, Any]:
        """The settings that define the operator and the probe (a resumed run must match them).

        Example:
          >>> import dataclasses
          >>> from experiments.spectrum_settings import SpectrumSettings
          >>> s = SpectrumSettings(num_steps=8, batch_size=32)
          >>> s.identity()  # doctest: +NORMALIZE_WHITESPACE
          {'mode': 'empirical', 'num_steps': 8, 'probe_seed': 0, 'bn_mode': 'batch',
           'batch_size': 32, 'num_images': None}
          >>> s.identity() == dataclasses.replace(s, driver="host", progress=False).identity()
          True
          >>> SpectrumSettings(mode="augmented").identity()["num_per_image"]
          30
        """
        d = dataclasses.asdict(self)
        for k in ("driver", "checkpoint_every", "group_size", "noise_probes", "progress",
                  "top_k", "trace", "blocks"):
            d.pop(k)
        if self.curvature == "hessian":  # as recorded before there were other kinds
            d.pop("curvature")
        d["num_steps"] = self.steps
        if self.mode == "empirical":
            d.pop("num_per_image")
            d.pop("variant_seed")
        return d


def add_settings_arguments(parser: argparse.ArgumentParser, /) -> None:
    """The :class:`SpectrumSettings` options, shared by the experiment scripts.

    Example:
      >>> import argparse
      >>> from experiments.spectrum_settings import add_settings_arguments
      >>> parser = argparse.ArgumentParser()
      >>> add_settings_arguments(parser)
      >>> args = parser.parse_args(["--steps", "8", "--bn-mode", "running", "--no-progress"])
      >>> args.steps, args.bn_mode, args.no_progress, args.batch_size, args.npz
      (8, 'running', True, 128, None)
    """
    parser.add_argument("--steps", type=int, default=None,
                        help="Lanczos steps m (default: 100 empirical, 80 augmented, as the paper)")
    parser.add_argument("--num-per-image", type=int, default=DEFAULT_NUM_PER_IMAGE,
                        help="K variants per image in augmented mode (30: CIFAR -> 1.5M samples)")
    parser.add_argument("--variant-seed", type=int, default=0, help="seed of the variant table")
    parser.add_argument("--probe-seed", type=int, default=0, help="seed of the SLQ probe vector")
    parser.add_argument("--bn-mode", choices=("batch", "running"), default="batch",
                        help="BatchNorm statistics: of each batch (the paper) or running")
    parser.add_argument("--batch-size", type=int, default=128, help="HVP batch size")
    parser.add_argument("--num-images", type=int, default=None,
                        help="use only the first N training images (default: all)")
    parser.add_argument("--driver", choices=("auto", "host", "compiled"), default="auto",
                        help="Lanczos driver (auto: the operator's default reduction picks it)")
    parser.add_argument("--checkpoint-every", type=int, default=5,
                        help="Lanczos steps between checkpoints of its state")
    parser.add_argument("--group-size", type=int, default=None,
                        help="batches per jitted call of the host-driven HVP (--driver host; "
                             "default: as many as fit in 64 MiB of activations)")
    parser.add_argument("--noise-probes", type=int, default=1,
                        help="probes of the sigma^2 estimate (empirical mode; 0 skips it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--curvature", choices=tuple(CURVATURES), default="hessian",
                        help="the matrix (ggn, fisher: the model's outputs and cross-entropy)")
    parser.add_argument("--top-k", type=int, default=0,
                        help="also the K largest eigenpairs, certified by their residuals")
    parser.add_argument("--trace", action="store_true", help="also the trace (Hutch++)")
    parser.add_argument("--blocks", nargs="+", default=[], metavar="REGEX",
                        help="also one spectrum per parameter block (a regex over paths each)")
    parser.add_argument("--npz", default=None,
                        help="local .npz copy of the run's data set (else the run's config)")


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace,
                       mode: str) -> SpectrumSettings:
    """:class:`SpectrumSettings` from the options of :func:`add_settings_arguments`.

    Example:
      >>> import argparse
      >>> from experiments.spectrum_settings import add_settings_arguments, settings_from_args
      >>> parser = argparse.ArgumentParser()
      >>> add_settings_arguments(parser)
      >>> args = parser.parse_args(["--num-per-image", "2", "--batch-size", "32",
      ...                           "--no-progress"])
      >>> s = settings_from_args(parser, args, "augmented")
      >>> s.mode, s.steps, s.num_per_image, s.batch_size, s.progress
      ('augmented', 80, 2, 32, False)
      >>> settings_from_args(parser, parser.parse_args(["--batch-size", "0"]), "empirical")
      Traceback (most recent call last):
        ...
      SystemExit: 2
    """
    try:
        return SpectrumSettings(
            mode=mode, num_steps=args.steps, num_per_image=args.num_per_image,
            variant_seed=args.variant_seed, probe_seed=args.probe_seed, bn_mode=args.bn_mode,
            batch_size=args.batch_size, num_images=args.num_images, driver=args.driver,
            checkpoint_every=args.checkpoint_every, group_size=args.group_size,
            noise_probes=args.noise_probes, progress=not args.no_progress,
            curvature=args.curvature, top_k=args.top_k, trace=args.trace,
            blocks=tuple(args.blocks))
    except ValueError as e:  # a bad value: the usage and the message, no traceback
        parser.error(str(e))

