"""Hessian spectrum of a training checkpoint by SLQ: Empirical (training set) or Augmented.

    python -m experiments.spectrum --workdir runs/p110_c100_normal --epoch 225 --mode empirical
    python -m experiments.spectrum --workdir runs/p110_c100_normal --epoch 225 --mode augmented

Granziol et al. (2020), section 6:

* **Empirical Hessian** (``--mode empirical``): the training set without augmentation, ``m = 100``
  Lanczos steps.
* **Augmented Hessian** (``--mode augmented``): the training set times ``K`` fixed crop/flip
  variants per image (``--num-per-image``, default 30: CIFAR's 50,000 images give the paper's
  1,500,000 samples), ``m = 80``. The ``(N, K)`` variant table is drawn once from
  ``--variant-seed`` and every augmented batch is built on the device inside each HVP
  (:mod:`jaxspec.augmented`), so every HVP of the run sees the same matrix.

The data are those the run was trained on (its config, ``--npz`` to point at a local copy),
normalised with the run's own statistics (``data.json``). BatchNorm in ``--bn-mode batch`` (the
paper: statistics of fixed, unshuffled batches of ``--batch-size`` 128) or ``running``
(PyHessian's convention); dropout off; no weight-decay term. One probe vector
(``--probe-seed``), as the paper.

With more than one device the operator is data parallel over all of them
(:mod:`jaxspec.parallel`). A symmetry probe (two HVPs) runs first. The Lanczos state is
checkpointed every ``--checkpoint-every`` steps under ``<out>/.lanczos_<mode>_e<epoch>/``; a
killed run, restarted with the same command, resumes there and gives the same Ritz values. The
empirical run also estimates the per-sample Hessian noise variance ``sigma^2`` (two passes over
the data per ``--noise-probes``), which ``experiments.compare`` feeds to Theorem 1.

Writes ``<out>/<mode>_e<epoch>.json`` (nodes, weights, settings, model, P, N, BatchNorm mode,
times: :class:`jaxspec.Spectrum`) and its stem plot ``<mode>_e<epoch>.png``; ``<out>`` defaults
to ``<workdir>/spectra``. The times are this invocation's: a resumed run (``resumed``: true)
counts only the steps it ran itself in ``time_s``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

import jaxspec
import jaxspec.io
from jaxspec import augmented as aug_lib
from jaxspec.atomic import write_text
from jaxspec.data import ImageDataset, normalize
from jaxspec.linearized import linearized
from jaxspec.workdir import LOCK_FILE, workdir_lock

from experiments.spectrum_settings import (CURVATURES, MODES, SpectrumSettings,
                                          add_settings_arguments, settings_from_args)

__all__ = [
    "Operator",
    "SpectrumResult",
    "available_epochs",
    "build_operator",
    "compute_spectrum",
    "existing_spectrum",
    "format_summary",
    "load_training_set",
    "main",
    "resolve_epoch",
    "spectrum_path",
]

class SpectrumResult(NamedTuple):
    """What :func:`compute_spectrum` wrote: the spectrum and the paths of its JSON and plot.

    Example:
      >>> from jaxspec import Spectrum
      >>> from experiments.spectrum import SpectrumResult
      >>> r = SpectrumResult(Spectrum([-0.5, 1.0, 4.0], [0.1, 0.6, 0.3]),
      ...                    "spectra/empirical_e0002.json", "spectra/empirical_e0002.png")
      >>> r.spectrum.lambda_max, r.png_path
      (4.0, 'spectra/empirical_e0002.png')
      >>> spectrum, json_path, png_path = r
      >>> json_path
      'spectra/empirical_e0002.json'
    """

    spectrum: jaxspec.Spectrum
    json_path: str
    png_path: str


def spectrum_path(out_dir: str | os.PathLike, mode: str, epoch: int, ext: str = "json") -> str:
    """``<out_dir>/<mode>_e<epoch:04d>.<ext>``: where a spectrum and its plot are written.

    Example:
      >>> spectrum_path("runs/a/spectra", "augmented", 25)
      'runs/a/spectra/augmented_e0025.json'
    """
    return os.path.join(os.fspath(out_dir), f"{mode}_e{int(epoch):04d}.{ext}")


def existing_spectrum(path: str | os.PathLike, settings: SpectrumSettings, /
                      ) -> jaxspec.Spectrum | None:
    """The spectrum saved at ``path``, if any, once checked against ``settings``.

    A spectrum written by :func:`compute_spectrum` records its settings; one made with other
    settings (steps, probe, batch size, images, BatchNorm mode, variants) is refused with a
    ``ValueError`` rather than reused as if it were the one asked for. A spectrum saved without
    those records (by hand) is taken as it is.

    Example:
      >>> import os, tempfile
      >>> from jaxspec import Spectrum
      >>> from jaxspec.io import save_spectrum
      >>> from experiments.spectrum import existing_spectrum
      >>> from experiments.spectrum_settings import SpectrumSettings
      >>> path = os.path.join(tempfile.mkdtemp(), "empirical_e0002.json")
      >>> settings = SpectrumSettings(num_steps=8, batch_size=32)
      >>> existing_spectrum(path, settings) is None
      True
      >>> save_spectrum(Spectrum([1.0, 2.0], [0.5, 0.5], meta={"settings": settings.identity()}),
      ...               path)
      >>> existing_spectrum(path, settings).nodes.tolist()
      [1.0, 2.0]
      >>> existing_spectrum(path, SpectrumSettings(num_steps=30, batch_size=32))
      Traceback (most recent call last):
      ...
      ValueError: .../empirical_e0002.json was made with other settings (num_steps: 8 there, 30 here); delete it, write elsewhere, or do not skip existing spectra
    """
    if not os.path.exists(path):
        return None
    spectrum = jaxspec.io.load_spectrum(path)
    # compute_spectrum records the settings under "settings"; older files have them at the top
    # level, where "num_images" is the count used rather than the setting (None: all)
    recorded = spectrum.meta.get("settings")
    if recorded is None:
        recorded = {k: v for k, v in spectrum.meta.items() if k != "num_images"}
    recorded = {"curvature": "hessian", **recorded}  # a Hessian's file does not name it
    differ = [f"{k}: {recorded[k]!r} there, {v!r} here"
              for k, v in jaxspec.io.jsonable(settings.identity()).items()
              if k in recorded and recorded[k] != v]
    if differ:
        raise ValueError(f"{os.fspath(path)} was made with other settings ({'; '.join(differ)});"
                         " delete it, write elsewhere, or do not skip existing spectra")
    return spectrum


def resolve_epoch(parser, workdir: str, epoch: int | None) -> int:
    """``epoch``, or the latest checkpointed epoch of ``workdir``; a CLI error (usage, message,
    exit status 2) where ``workdir`` has no checkpoint or none at ``epoch``.

    Example:
      >>> import argparse, tempfile
      >>> from experiments.paper import trained_preset
      >>> from experiments.spectrum import resolve_epoch
      >>> parser = argparse.ArgumentParser(prog="spectrum")
      >>> workdir = trained_preset("smoke")  # checkpoints at epochs 0 and 2
      >>> resolve_epoch(parser, workdir, None), resolve_epoch(parser, workdir, 0)
      (2, 0)
      >>> resolve_epoch(parser, tempfile.mkdtemp(), None)  # prints the error to stderr
      Traceback (most recent call last):
        ...
      SystemExit: 2
      >>> resolve_epoch(parser, workdir, 1)  # "no checkpoint at epoch 1; available: [0, 2]"
      Traceback (most recent call last):
        ...
      SystemExit: 2
    """
    epochs = available_epochs(workdir)
    if not epochs:
        parser.error(f"{workdir} has no checkpoints")
    if epoch is not None and epoch not in epochs:
        parser.error(f"{workdir}: no checkpoint at epoch {epoch}; available: {epochs}")
    return epochs[-1] if epoch is None else epoch


def check_num_images(parser, workdir: str, num_images: int | None) -> None:
    """A CLI error where ``--num-images`` exceeds the run's training set (its ``data.json``),
    before a checkpoint is loaded."""
    if num_images is None:
        return
    from train.loop import read_data_info

    try:
        num_train = int(read_data_info(workdir)["num_train"])
    except (OSError, KeyError, ValueError):
        return  # no data.json: load_training_set says so later
    if not 1 <= num_images <= num_train:
        parser.error(f"--num-images {num_images}: num_images must be in [1, {num_train}] "
                     f"({workdir} was trained on {num_train} images)")


def available_epochs(workdir: str | os.PathLike, /) -> list[int]:
    """Epochs with a checkpoint in a training run's ``checkpoints/`` directory, ascending.

    Example:
      >>> import tempfile
      >>> available_epochs(tempfile.mkdtemp())
      []
    """
    from train.loop import CHECKPOINT_DIR

    d = os.path.join(os.fspath(workdir), CHECKPOINT_DIR)
    if not os.path.isdir(d):
        return []
    return sorted(int(n) for n in os.listdir(d)
                  if n.isdigit() and os.path.isdir(os.path.join(d, n)))


def load_training_set(workdir: str | os.PathLike, config: Any, /, *, npz: str | None = None,
                      num_images: int | None = None) -> tuple[ImageDataset, dict[str, Any]]:
    """The training set a run was trained on, and its ``data.json`` (normalisation statistics).

    Loads ``config``'s data set (``npz`` overrides its ``npz_path``), subsampled as in training,
    and checks it against ``data.json``: same size, same classes.

    Args:
      workdir: the training run.
      config: its :class:`train.TrainConfig`.
      npz: a local ``.npz`` copy of the data set instead of the config's source.
      num_images: keep the first ``num_images`` training images.

    Returns:
      ``(data, info)``.

    Example:
      >>> from experiments.paper import trained_preset
      >>> from experiments.spectrum import load_training_set
      >>> from train.loop import read_config
      >>> workdir = trained_preset("smoke")  # trained on 128 synthetic images
      >>> data, info = load_training_set(workdir, read_config(workdir), num_images=32)
      >>> data.x_train.shape[0], data.y_train.shape, info["num_train"]
      (32, (32,), 128)
      >>> data.num_classes == info["num_classes"]
      True
    """
    from train.loop import data_digest, load_data, read_data_info

    info = read_data_info(workdir)
    if npz is not None:
        config = dataclasses.replace(config, npz_path=os.fspath(npz))
    data = load_data(config)
    if data.x_train.shape[0] != info["num_train"] or data.num_classes != info["num_classes"]:
        raise ValueError(
            f"{workdir} was trained on {info['num_train']} images of {info['num_classes']} "
            f"classes, but the data loaded now has {data.x_train.shape[0]} of "
            f"{data.num_classes}: pass --npz with the run's data set")
    if info.get("digest") is not None and data_digest(data) != info["digest"]:
        raise ValueError(f"the data loaded now differs from the data {workdir} was trained on "
                         "(SHA-256 of the arrays, data.json 'digest'): pass --npz with the "
                         "run's data set")
    if num_images is not None:
        if not 1 <= num_images <= data.x_train.shape[0]:
            raise ValueError(f"num_images must be in [1, {data.x_train.shape[0]}]")
        data = data._replace(x_train=data.x_train[:num_images], y_train=data.y_train[:num_images])
    return data, info


class Operator(NamedTuple):
    """A Hessian operator ready for SLQ, with what the report needs about it.

    Attributes:
      operator: the :class:`jaxspec.CurvatureOperator` (its reduction picks the Lanczos driver).
      num_samples: N, the samples the Hessian averages over (``K N`` for the augmented set).
      meta: settings recorded with the spectrum (driver, devices, variant table digest, ...).
      batched: host (NumPy) :class:`jaxspec.Batched` of the empirical data (the ``sigma^2``
        estimate reads single batches from it), or None.

    Example:
      :func:`build_operator` makes them:

      >>> import jax.numpy as jnp, numpy as np, jaxspec
      >>> from experiments.spectrum import Operator
      >>> data = jaxspec.batch_dataset(np.ones(3), 3)
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
      ...                                 jnp.ones(2), data)
      >>> built = Operator(op, num_samples=3, meta={}, batched=data)
      >>> built.operator.mv(jnp.ones(2)).tolist(), built.num_samples
      ([2.0, 2.0], 3)
    """

    operator: jaxspec.CurvatureOperator
    num_samples: int
    meta: dict
    batched: Any


def _reduction(settings: "SpectrumSettings", num_devices: int) -> Any:
    """Several devices: the data-parallel mesh; one: the host loop or ``lax.scan`` by driver,
    the operator's own choice for ``"auto"``."""
    from jaxspec.parallel import MeshReduce, data_mesh
    from jaxspec.reduction import HostReduce, ScanReduce

    if num_devices > 1:
        return MeshReduce(data_mesh())
    return {"auto": "auto", "host": HostReduce(settings.group_size),
            "compiled": ScanReduce()}[settings.driver]


def build_operator(loss_fn: Callable, params: Any, data: ImageDataset, info: dict,
                   settings: SpectrumSettings, /) -> Operator:
    """The Empirical or Augmented Hessian operator for ``settings.mode`` over ``data.x_train``.

    One device: the host reduction (``driver="host"``), ``lax.scan`` (``"compiled"``) or the
    operator's default (``"auto"``); several devices: the mesh reduction over all of them. The
    augmented set is the fixed variant table as a batch transform
    (:class:`jaxspec.augmented.Augmentation`).

    Example:
      >>> import jaxspec
      >>> from jaxspec.models import hessian_loss
      >>> from experiments.paper import trained_preset
      >>> from experiments.spectrum import build_operator, load_training_set
      >>> from experiments.spectrum_settings import SpectrumSettings
      >>> from train import load_checkpoint
      >>> workdir = trained_preset("smoke")
      >>> model, config, _ = load_checkpoint(workdir, epoch=2)
      >>> data, info = load_training_set(workdir, config, num_images=32)
      >>> loss_fn, params = hessian_loss(model, bn_mode="batch")
      >>> settings = SpectrumSettings(batch_size=32, driver="host")
      >>> built = build_operator(loss_fn, params, data, info, settings)
      >>> built.meta["driver"], built.num_samples, jaxspec.num_samples(built.operator.data)
      ('host', 32, 32)
      >>> built.batched.batches["image"].shape[:2]  # one batch of 32 normalised images
      (1, 32)
    """
    num_devices = jax.device_count()
    reduce = _reduction(settings, num_devices)
    bs = settings.batch_size
    meta: dict[str, Any] = {}
    host_batched = transform = None
    if settings.mode == "empirical":
        images = normalize(data.x_train, mean=np.asarray(info["mean"]), std=np.asarray(info["std"]))
        batch = {"image": images, "label": data.y_train.astype(np.int32)}
        batched = host_batched = jaxspec.batch_dataset(batch, bs,
                                                       num_classes=int(info["num_classes"]))
        num_samples = int(data.x_train.shape[0])
    else:
        jaxspec.check_labels(data.y_train, int(info["num_classes"]), name="y_train")
        t = time.perf_counter()
        aug = aug_lib.augmented_data(
            data.x_train, data.y_train, mean=info["mean"], std=info["std"],
            num_per_image=settings.num_per_image, seed=settings.variant_seed)
        meta["variant_table_s"] = time.perf_counter() - t
        meta["variants_sha1"] = aug_lib.variants_digest(aug)
        num_samples = aug_lib.num_augmented(aug)
        batched = aug_lib.augmented_batches(aug, bs)
        transform = aug_lib.Augmentation(aug)
    op = jaxspec.curvature_operator(loss_fn, params, batched, kind=settings.curvature,
                                    reduce=reduce, transform=transform)
    meta.update({"driver": op.reduce.driver, "num_devices": num_devices})
    return Operator(op, num_samples, meta, host_batched)


def _clear_state(path: str) -> None:
    """Removes the files of the state directory ``path`` but the lock this run holds."""
    for name in set(os.listdir(path)) - {LOCK_FILE}:
        os.remove(os.path.join(path, name))


def _prepare_checkpoint(path: str, identity: dict, *, restart: bool) -> bool:
    """Creates the Lanczos checkpoint directory, or checks that the one there is for ``identity``.

    Returns whether a run is being resumed.
    """
    settings_file = os.path.join(path, "settings.json")
    if os.path.isdir(path) and restart:
        _clear_state(path)
    if os.path.exists(settings_file):
        with open(settings_file) as f:
            saved = json.load(f)
        state = any(n.startswith("lanczos_") for n in os.listdir(path))
        if saved == identity:
            return state
        if state:  # a run that failed or stopped before its first save left nothing to keep
            raise ValueError(
                f"{path} holds the Lanczos state of a run with other settings "
                f"(saved {saved}, now {identity}); rerun with --restart to discard it")
    os.makedirs(path, exist_ok=True)
    write_text(settings_file, json.dumps(identity, indent=1, sort_keys=True))
    return False


def compute_spectrum(workdir: str | os.PathLike, epoch: int, settings: SpectrumSettings, /, *,
                     out_dir: str | os.PathLike | None = None, npz: str | None = None,
                     restart: bool = False, keep_checkpoint: bool = False,
                     plot: bool = True,
                     training_set: tuple[ImageDataset, dict[str, Any]] | None = None
                     ) -> SpectrumResult:
    """Computes, saves and plots the spectrum of the checkpoint ``epoch`` of the run ``workdir``.

    Args:
      workdir: a training run directory (``python -m train``).
      epoch: the checkpoint (completed epochs; 0 = initialisation).
      settings: mode, m, K, seeds, BatchNorm mode, ...
      out_dir: where to write; default ``<workdir>/spectra``.
      npz: a local ``.npz`` of the run's data set (overrides the config's source).
      restart: discard a Lanczos checkpoint left by an interrupted run instead of resuming.
      keep_checkpoint: keep the Lanczos state after success (it is ``(m + 1) x P`` floats).
      plot: write the stem plot.
      training_set: ``load_training_set(workdir, config, npz=npz,
        num_images=settings.num_images)``, loaded once by a caller that computes several
        spectra of the run (:func:`experiments.epochs.epoch_spectra`); default: loaded here.

    Returns:
      :class:`SpectrumResult`.

    Example:
      >>> import os, tempfile
      >>> from jaxspec.io import load_spectrum
      >>> from experiments.paper import trained_preset
      >>> from experiments.spectrum import compute_spectrum
      >>> from experiments.spectrum_settings import SpectrumSettings
      >>> workdir = trained_preset("smoke")  # 1x16 MLP, checkpoints at epochs 0 and 2
      >>> settings = SpectrumSettings(num_steps=4, batch_size=32, num_images=32,
      ...                             noise_probes=0, progress=False)
      >>> r = compute_spectrum(workdir, 2, settings, out_dir=tempfile.mkdtemp(), plot=False)
      >>> s = r.spectrum
      >>> s.nodes.size, s.meta["N"], s.meta["num_steps"], s.meta["epoch"], s.meta["resumed"]
      (4, 32, 4, 2, False)
      >>> bool(s.lambda_min < s.lambda_max), round(float(s.weights.sum()), 5)
      (True, 1.0)
      >>> bool(s.meta["symmetry_relative_error"] < 1e-4), s.meta["q"] == s.meta["P"] / 32
      (True, True)
      >>> os.path.basename(r.json_path), os.path.exists(r.png_path)  # plot=False: no PNG
      ('empirical_e0002.json', False)
      >>> load_spectrum(r.json_path).nodes.tolist() == s.nodes.tolist()
      True
    """
    from jaxspec.models import hessian_loss
    from train import load_checkpoint

    t_start = time.perf_counter()
    workdir = os.path.abspath(os.fspath(workdir))
    out_dir = os.path.join(workdir, "spectra") if out_dir is None else os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    model, config, metrics = load_checkpoint(workdir, epoch=epoch)
    if training_set is None:
        training_set = load_training_set(workdir, config, npz=npz, num_images=settings.num_images)
    data, info = training_set
    loss_fn, params = hessian_loss(model, bn_mode=settings.bn_mode)
    flat = ravel_pytree(params)[0]
    dim, dtype = int(flat.shape[0]), flat.dtype
    built = build_operator(loss_fn, params, data, info, settings)
    op = built.operator

    identity = {**settings.identity(), "workdir": workdir, "epoch": int(epoch), "P": dim,
                "N": built.num_samples, **({"variants_sha1": built.meta["variants_sha1"]}
                                           if "variants_sha1" in built.meta else {})}
    ckpt = os.path.join(out_dir, f".lanczos_{settings.name}_e{int(epoch):04d}")
    # One live run per Lanczos state: a second one is refused, naming the holder's PID.
    with workdir_lock(ckpt):
        resumed = _prepare_checkpoint(ckpt, identity, restart=restart)

        key = jax.random.key(settings.probe_seed)
        k_probe, k_sym, k_noise = jax.random.split(key, 3)
        # Linearised once, before the symmetry probe: its two products and the Lanczos run's
        # then share one cache and one compiled product (slq keeps an operator that has one).
        t = time.perf_counter()
        op = linearized(op, settings.steps + 1)
        linearize_s = time.perf_counter() - t
        t = time.perf_counter()
        sym = jaxspec.assert_symmetric(op.mv, k_sym, dim, dtype=dtype)
        symmetry_s = time.perf_counter() - t
        label = f"{settings.mode} e{epoch}" if settings.progress else False
        t = time.perf_counter()
        # slq draws its probe from split(k_probe, 1)[0]: a restarted run gets the same v0.
        # The checkpoint refuses a saved state of another operator (its fingerprint).
        spectrum = jaxspec.slq(op, k_probe, dim, settings.steps, dtype=dtype,
                               hooks=jaxspec.io.slq_hooks(checkpoint_dir=ckpt, progress=label),
                               chunk_size=settings.checkpoint_every, check=False)  # probed above
        lanczos_s = time.perf_counter() - t

        noise = None  # sigma^2 of Theorem 1: the Hessian's per-sample noise
        if settings.mode == "empirical" and settings.curvature == "hessian" \
                and settings.noise_probes > 0:
            from experiments.curvature import estimate_sigma2

            noise = estimate_sigma2(loss_fn, params, built.batched, op.mv, k_noise,
                                    num_probes=settings.noise_probes)
        extras = {}
        if settings.top_k or settings.trace or settings.blocks:
            from experiments.curvature import curvature_extras

            stem = os.path.splitext(spectrum_path(out_dir, settings.name, epoch))[0]
            extras = curvature_extras(op, jax.random.fold_in(k_noise, 1), stem,
                                      top_k=settings.top_k, trace=settings.trace,
                                      blocks=settings.blocks, num_steps=settings.steps,
                                      settings=settings.identity(), plot=plot)

        record = next((r for r in metrics if r.get("epoch") == epoch), None)
        meta = {
            **spectrum.meta,
            **identity,
            "settings": settings.identity(),  # read by existing_spectrum
            "model": config.model,
            "model_kwargs": config.model_kwargs,
            "config": config.name,
            "dataset": info.get("name", config.dataset),
            "num_classes": int(info["num_classes"]),
            "num_images": int(data.x_train.shape[0]),
            "q": dim / built.num_samples,
            "symmetry_relative_error": float(sym.relative_error),
            "resumed": resumed,
            "time_s": lanczos_s,
            "linearize_s": linearize_s,
            "symmetry_s": symmetry_s,
            "total_time_s": time.perf_counter() - t_start,
            "train_metrics": record,
            "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind,
            "jax_version": jax.__version__,
            "host": platform.node(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "curvature": settings.curvature,
            **built.meta,
            **(noise or {}),
            **extras,
        }
        spectrum = jaxspec.Spectrum(spectrum.nodes, spectrum.weights,
                                    num_vectors=spectrum.num_vectors, meta=jaxspec.io.jsonable(meta))
        json_path = spectrum_path(out_dir, settings.name, epoch)
        png_path = spectrum_path(out_dir, settings.name, epoch, "png")
        if plot:
            from jaxspec.plotting import stem_plot

            n = built.num_samples
            n_txt = (f"N={n:,}" if settings.mode == "empirical" else
                     f"N={data.x_train.shape[0]:,}x{settings.num_per_image}={n:,}")
            stem_plot(spectrum, path=png_path,
                      title=f"{settings.mode.capitalize()} {CURVATURES[settings.curvature]}, "
                            f"{config.model}, epoch {epoch}, "
                            f"{n_txt}, m={settings.steps}, BN {settings.bn_mode}")
        # The JSON last: a run killed before it leaves nothing that --skip-existing, run_preset
        # or experiments.epochs would take as done (the plot and the cleared state with it).
        jaxspec.io.save_spectrum(spectrum, json_path)
        if not keep_checkpoint:  # under the lock: a run that takes it next keeps its own state
            _clear_state(ckpt)
    if not keep_checkpoint:
        with contextlib.suppress(OSError):  # not empty: another run holds it now
            os.rmdir(ckpt)
    return SpectrumResult(spectrum, json_path, png_path)


def format_summary(result: SpectrumResult, /) -> str:
    """One line: extremal Ritz values, negative count and mass, time.

    Example:
      >>> from jaxspec import Spectrum
      >>> from experiments.spectrum import SpectrumResult, format_summary
      >>> meta = {"mode": "empirical", "epoch": 2, "P": 3, "N": 8, "time_s": 1.5}
      >>> s = Spectrum([-0.5, 1e-6, 4.0], [0.1, 0.6, 0.3], meta=meta)
      >>> result = SpectrumResult(s, "out/empirical_e0002.json", "out/empirical_e0002.png")
      >>> print(format_summary(result))  # doctest: +NORMALIZE_WHITESPACE
      empirical e2: lambda_max=4 lambda_min=-0.5 negative=1/3 (separated 1, mass 0.1)
      P=3 N=8 time=1.5s -> out/empirical_e0002.json
    """
    s = result.spectrum
    neg = s.negative()
    m = s.meta
    return (f"{m.get('mode')} e{m.get('epoch')}: lambda_max={s.lambda_max:.6g} "
            f"lambda_min={s.lambda_min:.6g} negative={neg.count}/{s.nodes.size} "
            f"(separated {neg.count_separated}, mass {neg.mass:.3g}) P={m.get('P')} "
            f"N={m.get('N')} time={m.get('time_s', 0):.1f}s -> {result.json_path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m experiments.spectrum --workdir RUN --epoch E --mode MODE``.

    Example:
      >>> import contextlib, io, os, tempfile
      >>> from experiments.paper import trained_preset
      >>> from experiments.spectrum import main
      >>> workdir, out = trained_preset("smoke"), tempfile.mkdtemp()
      >>> argv = ["--workdir", workdir, "--out", out, "--steps", "4", "--batch-size", "32",
      ...         "--num-images", "32", "--noise-probes", "0", "--no-progress"]
      >>> with contextlib.redirect_stdout(io.StringIO()) as f:
      ...     code = main(argv)  # the latest epoch, 2
      >>> code, f.getvalue().startswith("empirical e2: lambda_max=")
      (0, True)
      >>> sorted(os.listdir(out))  # the Lanczos checkpoint is gone
      ['empirical_e0002.json', 'empirical_e0002.png']
      >>> with contextlib.redirect_stdout(io.StringIO()) as f:
      ...     code = main(argv + ["--skip-existing"])
      >>> code, f.getvalue().split() == ["exists:", os.path.join(out, "empirical_e0002.json")]
      (0, True)
    """
    parser = argparse.ArgumentParser(
        prog="python -m experiments.spectrum",
        description="Empirical or Augmented Hessian spectrum (SLQ) of a training checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workdir", required=True, help="training run directory")
    parser.add_argument("--epoch", type=int, default=None,
                        help="checkpoint epoch (default: the latest)")
    parser.add_argument("--mode", choices=MODES, default="empirical")
    parser.add_argument("--out", default=None, help="output directory (default WORKDIR/spectra)")
    parser.add_argument("--restart", action="store_true",
                        help="discard the Lanczos checkpoint of an interrupted run")
    parser.add_argument("--keep-checkpoint", action="store_true",
                        help="keep the Lanczos state after success")
    parser.add_argument("--skip-existing", action="store_true",
                        help="do nothing if the spectrum JSON exists (made with the same "
                             "settings; one made with others is an error)")
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    epoch = resolve_epoch(parser, args.workdir, args.epoch)
    if args.npz is not None and not os.path.isfile(args.npz):
        parser.error(f"--npz {args.npz}: no such file")
    check_num_images(parser, args.workdir, args.num_images)
    out = args.out or os.path.join(args.workdir, "spectra")
    settings = settings_from_args(parser, args, args.mode)
    if args.skip_existing:
        try:
            found = existing_spectrum(spectrum_path(out, settings.name, epoch), settings)
        except ValueError as e:
            parser.error(str(e))
        if found is not None:
            print(f"exists: {spectrum_path(out, settings.name, epoch)}")
            return 0
    result = compute_spectrum(args.workdir, epoch, settings,
                              out_dir=out, npz=args.npz, restart=args.restart,
                              keep_checkpoint=args.keep_checkpoint)
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    from jaxspec.compiler import cache_compilations

    cache_compilations()  # a later run loads the compiled programs from disk
    sys.exit(main())
