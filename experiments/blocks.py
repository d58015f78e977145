"""Block heterogeneity of the Hessian: a transformer language model against a CNN (Zhang et al.).

    python -m experiments.blocks --out docs/block_spectra.png

Reproduces, at CPU scale, the block spectra of Zhang et al. (2024), "Why Transformers Need Adam:
A Hessian Perspective": the SLQ spectrum of every parameter block
(:func:`jaxspec.param_blocks`, ``by="layer"``) of

* the transformer language model (:class:`jaxspec.models.Transformer`: token and position
  embeddings, each layer's two LayerNorms, attention query/key/value/output and two MLP
  layers, the final norm and the head), trained by :mod:`train` on byte-level text of Python's
  documentation (config ``cpu_transformer_pydoc``, shortened by ``--lm-epochs`` and
  ``--lm-seq-len``; the held-out loss is reported), the Hessian over ``--lm-hessian-windows``
  training windows;
* PreResNet-20 trained by :mod:`train` (config ``cpu_preresnet20_cifar10``, shortened by
  ``--cnn-epochs``; ``--lm-set``/``--cnn-set KEY=VALUE`` override anything else) on ``--cnn-train`` synthetic CIFAR-shaped images, which need no download, or
  with ``--npz`` on that many real CIFAR-10 images (``--cnn-train / 10`` per class) of a local
  file; every convolution, BatchNorm and the classifier are blocks; the Hessian over
  ``--cnn-hessian-images`` training images, BatchNorm in batch mode.

Each block gets one probe and ``--lanczos-steps`` steps (masked full products: one compiled
program per model, :func:`jaxspec.block_spectra` with ``masked=True``). Heterogeneity is the
Jensen-Shannon distance between block densities averaged over pairs
(:mod:`jaxspec.heterogeneity`). Training runs live in ``--workdir`` (checkpointed every epoch:
an interrupted run resumes, a finished one is reused). Writes the figure
(:func:`jaxspec.plotting.block_heterogeneity_plot`), ``<out>.json`` (every block's summary and
distances) and ``<out>.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Sequence

import jax

import jaxspec
from jaxspec.atomic import write_text
from jaxspec.data import normalized_split
from jaxspec.models import count_params, hessian_loss
from jaxspec.plotting import block_heterogeneity_plot
from jaxspec.text import token_split
from train.configs import apply_overrides, get_config
from train.loop import load_checkpoint, load_data, train_and_evaluate

__all__ = ["main", "markdown_table", "model_spectra"]


def model_spectra(workdir: str, batch: dict, key: jax.Array, num_steps: int, /, *,
                  input_key: str) -> tuple[dict[str, jaxspec.Spectrum], dict[str, Any]]:
    """Block spectra of the Hessian of the latest checkpoint in ``workdir`` over ``batch``.

    Returns ``({block: Spectrum}, info)``, ``info`` holding the model's name, parameter count
    and last epoch record.

    Example:
      >>> import contextlib, io, tempfile, jax, numpy as np
      >>> from train import TrainConfig, train_and_evaluate
      >>> from experiments.blocks import model_spectra
      >>> d = tempfile.mkdtemp()
      >>> cfg = TrainConfig(model="mlp", model_kwargs={"hidden": [4]}, dataset="synthetic",
      ...                   synthetic_size=(32, 8), epochs=1, batch_size=16, progress=False)
      >>> _ = train_and_evaluate(cfg, d)
      >>> batch = {"image": np.zeros((4, 32, 32, 3), np.float32), "label": np.arange(4)}
      >>> with contextlib.redirect_stdout(io.StringIO()):
      ...     spectra, info = model_spectra(d, batch, jax.random.key(0), 3, input_key="image")
      >>> list(spectra), info["params"]
      (['layers/0', 'layers/1'], 12342)
    """
    model, config, metrics = load_checkpoint(workdir)
    loss_fn, params = hessian_loss(model, bn_mode="batch", input_key=input_key)
    n = len(batch["label"])
    op = jaxspec.curvature_operator(loss_fn, params, jaxspec.batch_dataset(batch, n))
    spectra = {}
    for name, select in jaxspec.param_blocks(params).items():  # one at a time, for progress
        t0 = time.perf_counter()
        spectra.update(jaxspec.block_spectra(op, {name: select}, key, num_steps, masked=True))
        print(f"  {name}: P={spectra[name].meta['block_size']}, "
              f"lambda_max={spectra[name].lambda_max:.4g} ({time.perf_counter() - t0:.1f}s)",
              flush=True)
    return spectra, {"model": config.model, "params": count_params(model),
                     "metrics": metrics[-1] if metrics else None}


def markdown_table(results: dict[str, dict], /) -> str:
    """The table of ``main``'s record: one line per model, then one per block.

    Example:
      >>> r = {"m": {"params": 10, "heterogeneity": 0.5, "metrics": None, "hessian_samples": 4,
      ...            "blocks": {"a": {"size": 10, "lambda_min": -1.0, "lambda_max": 2.0,
      ...                             "mean_js": 0.5}}}}
      >>> print(markdown_table(r).splitlines()[2])
      | m | 10 | 1 | 0.500 | - | 4 |
    """
    lines = ["| model | parameters | blocks | mean JS distance | held-out loss | Hessian samples |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        m = r["metrics"]
        held = "-" if m is None else f"{m['test_loss']:.3f}"
        lines.append(f"| {name} | {r['params']:,} | {len(r['blocks'])} | "
                     f"{r['heterogeneity']:.3f} | {held} | {r['hessian_samples']} |")
    lines += ["", "| model | block | size | lambda_min | lambda_max | mean JS to the others |",
              "|---|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        for block, b in r["blocks"].items():
            lines.append(f"| {name} | {block} | {b['size']:,} | {b['lambda_min']:.3g} | "
                         f"{b['lambda_max']:.3g} | {b['mean_js']:.3f} |")
    return "\n".join(lines) + "\n"


def _record(spectra: dict, info: dict, samples: int) -> dict:
    names, dist = jaxspec.js_matrix(spectra)
    mean_js = dist.sum(axis=1) / max(len(names) - 1, 1)
    # Ritz values and weights too, so the distances can be recomputed with other smoothing.
    blocks = {n: {"size": spectra[n].meta["block_size"], **spectra[n].summary(),
                  "mean_js": float(mean_js[i]), "nodes": spectra[n].nodes.tolist(),
                  "weights": spectra[n].weights.tolist()} for i, n in enumerate(names)}
    return {**info, "hessian_samples": samples, "heterogeneity": jaxspec.heterogeneity(spectra),
            "blocks": blocks, "js_matrix": dist.round(4).tolist()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.blocks",
        description="Block spectra and their heterogeneity: transformer LM against PreResNet-20.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="docs/block_spectra.png", help="the figure (.png)")
    p.add_argument("--workdir", default="runs/blocks", help="the two training runs")
    p.add_argument("--lm-epochs", type=int, default=1, help="transformer epochs")
    p.add_argument("--lm-seq-len", type=int, default=64, help="bytes per training window")
    p.add_argument("--lm-hessian-windows", type=int, default=8,
                   help="training windows the transformer's Hessian is taken over")
    p.add_argument("--cnn-epochs", type=int, default=2, help="PreResNet-20 epochs")
    p.add_argument("--cnn-train", type=int, default=2000, help="CNN training images")
    p.add_argument("--cnn-hessian-images", type=int, default=32,
                   help="training images the CNN's Hessian is taken over")
    p.add_argument("--npz", default=None,
                   help="CIFAR-10 .npz (x_train, y_train, x_test, y_test) instead of synthetic")
    p.add_argument("--lanczos-steps", type=int, default=10, help="SLQ steps per block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lm-set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other override of the transformer's training config (repeatable)")
    p.add_argument("--cnn-set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other override of the CNN's training config (repeatable)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m experiments.blocks --out docs/block_spectra.png``.

    Example:
      >>> import contextlib, io
      >>> from experiments.blocks import main
      >>> with contextlib.redirect_stdout(io.StringIO()) as out:
      ...     try:
      ...         main(["--help"])
      ...     except SystemExit as e:
      ...         code = e.code
      >>> code, "--lanczos-steps" in out.getvalue()
      (0, True)
      >>> with contextlib.redirect_stderr(io.StringIO()) as err:
      ...     try:
      ...         main(["--lanczos-steps", "0"])
      ...     except SystemExit as e:
      ...         code = e.code
      >>> code, "--lanczos-steps 0: must be >= 1" in err.getvalue()
      (2, True)
    """
    parser = _parser()
    args = parser.parse_args(argv)
    for flag in ("lm_epochs", "lm_seq_len", "lm_hessian_windows", "cnn_epochs", "cnn_train",
                 "cnn_hessian_images", "lanczos_steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    if args.cnn_hessian_images > args.cnn_train:
        parser.error(f"--cnn-hessian-images {args.cnn_hessian_images}: more than the "
                     f"{args.cnn_train} training images (--cnn-train)")
    if args.npz and not os.path.exists(args.npz):
        parser.error(f"--npz {args.npz}: no such file")
    if not args.out.endswith(".png"):
        parser.error(f"--out {args.out}: the figure's path must end in .png")
    start = time.perf_counter()
    key = jax.random.key(args.seed)
    seq = args.lm_seq_len
    lm = apply_overrides(get_config("cpu_transformer_pydoc"), [
        f"epochs={args.lm_epochs}", f"seq_len={seq}", f"seed={args.seed}",
        f"checkpoint_epochs=0,{args.lm_epochs}", f"model_kwargs={json.dumps({'max_len': seq})}",
        *args.lm_set])
    data = {"dataset=cifar10", f"npz_path={args.npz}", f"train_per_class={args.cnn_train // 10}",
            "test_per_class=100"} if args.npz else {
        "dataset=synthetic", f"synthetic_size=[{args.cnn_train}, 500]"}
    cnn = apply_overrides(get_config("cpu_preresnet20_cifar10"), [
        f"epochs={args.cnn_epochs}", f"seed={args.seed}", f"checkpoint_epochs=0,{args.cnn_epochs}",
        "train_per_class=null", "test_per_class=null", *sorted(data), *args.cnn_set])

    results, spectra = {}, {}
    for run, config, input_key, samples in (
            ("transformer", lm, "tokens", args.lm_hessian_windows),
            ("cnn", cnn, "image", args.cnn_hessian_images)):
        workdir, name = os.path.join(args.workdir, run), config.model
        t0 = time.perf_counter()
        records = train_and_evaluate(config, workdir)
        print(f"{name}: trained ({time.perf_counter() - t0:.0f}s): {records[-1]}", flush=True)
        dataset = load_data(config)
        split = token_split(dataset) if input_key == "tokens" else normalized_split(dataset)
        batch = {k: v[:samples] for k, v in split.items()}
        t0 = time.perf_counter()
        spectra[name], info = model_spectra(workdir, batch, key, args.lanczos_steps,
                                            input_key=input_key)
        results[name] = _record(spectra[name], info, samples)
        print(f"{name}: {len(spectra[name])} block spectra ({time.perf_counter() - t0:.0f}s), "
              f"mean JS distance {results[name]['heterogeneity']:.3f}", flush=True)

    data_name = "CIFAR-10" if args.npz else "synthetic CIFAR"
    title = (f"Hessian blocks: transformer LM ({lm.epochs} epoch(s) on pydoc text, "
             f"{args.lm_hessian_windows}x{seq} tokens) vs {cnn.model} ({cnn.epochs} epochs, "
             f"{args.cnn_train} {data_name} images, N={args.cnn_hessian_images}); "
             f"m={args.lanczos_steps}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    block_heterogeneity_plot(spectra, path=args.out, suptitle=title)
    stem = os.path.splitext(args.out)[0]
    elapsed = time.perf_counter() - start
    write_text(stem + ".json", json.dumps(
        {"settings": vars(args), "seconds": round(elapsed, 1), "models": results}, indent=1))
    write_text(stem + ".md", f"{title}\n\n{markdown_table(results)}")
    print(f"wrote {args.out}, {stem}.json, {stem}.md in {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    from jaxspec.compiler import cache_compilations

    cache_compilations()  # a later run loads the compiled programs from disk
    raise SystemExit(main())
