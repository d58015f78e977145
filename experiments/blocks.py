"""Hessian spectra of a small CNN's parameter blocks, side by side, in one figure.

    python -m experiments.blocks --out docs/block_spectra.png

A :class:`jaxspec.models.SmallCNN` (two conv stages with BatchNorm, a linear classifier) is
trained for ``--train-steps`` Adam steps on synthetic CIFAR-shaped data
(:func:`jaxspec.data.synthetic_cifar`); then SLQ (one probe, ``--lanczos-steps`` steps) runs on
the Empirical Hessian restricted to each layer's parameters (:func:`jaxspec.param_blocks`,
``by="layer"``: each convolution's kernel, each BatchNorm's scale and bias, the classifier's
kernel and bias) and, for reference, on all of them. BatchNorm uses the statistics of each batch
(``--bn-mode batch``, the paper's convention). Writes the figure
(:func:`jaxspec.plotting.block_spectra_plot`) and ``<out>.json`` with each block's summary.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Sequence

import jax
import numpy as np
import optax
from flax import nnx

import jaxspec
from jaxspec.data import normalized_split, synthetic_cifar
from jaxspec.models import SmallCNN, hessian_loss, train_loss
from jaxspec.plotting import block_spectra_plot

__all__ = ["main", "train"]


def train(model: nnx.Module, data: dict, /, *, steps: int, batch_size: int = 64,
          learning_rate: float = 3e-3, seed: int = 0) -> float:
    """Trains ``model`` in place with Adam on random mini-batches; returns the last batch loss.

    Example:
      >>> import numpy as np
      >>> from flax import nnx
      >>> from jaxspec.models import SmallCNN
      >>> from experiments.blocks import train
      >>> model = SmallCNN(3, widths=(2,), rngs=nnx.Rngs(0))
      >>> data = {"image": np.ones((8, 4, 4, 3), np.float32), "label": np.arange(8) % 3}
      >>> loss = train(model, data, steps=2, batch_size=4)
      >>> bool(np.isfinite(loss))
      True
    """
    model.train()
    optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch):
        (loss, _), grads = nnx.value_and_grad(train_loss, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    n = len(data["label"])
    loss = np.nan
    for _ in range(steps):
        idx = rng.choice(n, size=min(batch_size, n), replace=False)
        loss = float(step(model, optimizer, {k: v[idx] for k, v in data.items()}))
    model.eval()
    return loss


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m experiments.blocks --out docs/block_spectra.png``.

    Example (tiny: an untrained one-stage CNN, 8 images of 32x32):
      >>> import contextlib, io, json, os, tempfile
      >>> from experiments.blocks import main
      >>> out = os.path.join(tempfile.mkdtemp(), "blocks.png")
      >>> argv = ["--out", out, "--widths", "2", "--num-train", "8", "--hessian-samples", "8",
      ...         "--batch-size", "4", "--train-steps", "0", "--lanczos-steps", "3"]
      >>> with contextlib.redirect_stdout(io.StringIO()):
      ...     code = main(argv)
      >>> code, os.path.getsize(out) > 0
      (0, True)
      >>> sorted(json.load(open(out[:-4] + ".json"))["blocks"])
      ['all', 'convs/0', 'fc', 'norms/0']
    """
    parser = argparse.ArgumentParser(
        prog="python -m experiments.blocks",
        description="SLQ spectra of a small CNN's per-layer Hessian blocks, in one figure.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="docs/block_spectra.png", help="the figure (.png)")
    parser.add_argument("--widths", default="8,16", help="channels of the conv stages")
    parser.add_argument("--num-train", type=int, default=1024, help="synthetic training images")
    parser.add_argument("--train-steps", type=int, default=200, help="Adam steps (0: untrained)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="batch size of training and of the Hessian's batches")
    parser.add_argument("--hessian-samples", type=int, default=256,
                        help="training images the Hessian is taken over")
    parser.add_argument("--lanczos-steps", type=int, default=30, help="SLQ steps per block")
    parser.add_argument("--bn-mode", choices=["batch", "running"], default="batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    widths = tuple(int(w) for w in args.widths.split(","))
    data = normalized_split(synthetic_cifar(num_train=args.num_train, num_test=1, seed=args.seed))
    model = SmallCNN(10, widths=widths, rngs=nnx.Rngs(args.seed))
    loss = train(model, data, steps=args.train_steps, batch_size=args.batch_size, seed=args.seed)
    trained = time.perf_counter() - start
    print(f"trained {args.train_steps} steps in {trained:.1f}s (last batch loss {loss:.3f})")

    loss_fn, params = hessian_loss(model, bn_mode=args.bn_mode)
    subset = {k: v[:args.hessian_samples] for k, v in data.items()}
    op = jaxspec.curvature_operator(loss_fn, params, jaxspec.batch_dataset(subset,
                                                                         args.batch_size))
    blocks = {**jaxspec.param_blocks(params, by="layer"), "all": ".*"}
    spectra = jaxspec.block_spectra(op, blocks, jax.random.key(args.seed), args.lanczos_steps)
    for name, s in spectra.items():
        print(f"{name:>10}: P={s.meta['block_size']:>6}  lambda_min={s.lambda_min:+.4g}  "
              f"lambda_max={s.lambda_max:.4g}")
    title = (f"Hessian blocks of SmallCNN{list(widths)}, {args.train_steps} Adam steps on "
             f"synthetic CIFAR (N={len(subset['label'])}, BN {args.bn_mode}, "
             f"m={args.lanczos_steps})")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    block_spectra_plot(spectra, path=args.out, suptitle=title)
    elapsed = time.perf_counter() - start
    record = {"settings": vars(args), "seconds": round(elapsed, 1), "train_loss": loss,
              "blocks": {name: {"size": s.meta["block_size"], **s.summary()}
                         for name, s in spectra.items()}}
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {args.out} in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
