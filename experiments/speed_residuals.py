"""What a cached batch keeps: the memory and speed of a linearised product with all residuals
against compact ones (``residuals="compact"``), and against the product recomputed.

    python -m experiments.speed_residuals                   # mlp, cnn, preresnet20, transformer
    python -m experiments.speed_residuals --models preresnet20 --rounds 7

For each model, one batch (``--batch-size`` CIFAR-shaped images; for the transformer
``--batch-size / 4`` windows of 128 bytes) and three operators on it, built as a user builds them
(``jaxspec.curvature_operator``): ``linearize=None`` (the product recomputed: forward, backward
and their tangents), and a cache of every batch with ``residuals="all"`` and ``"compact"``. Each
product is timed warm, one after another in every round; the table gives the residual bytes of
the batch, the time of one product, and the medians over the rounds of the ratios to the
all-residual product's time in the same round (the load drifts between rounds).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import jaxspec
from experiments.speed import MODELS, make_loss
from experiments.vs_pyhessian import workload
from experiments.timing import header

NAMES = ("mlp", "cnn", "preresnet20", "transformer", "vgg16")


def problem(name: str, batch_size: int) -> tuple:
    """``(loss_fn, params, batch)`` of model ``name``: :data:`experiments.speed.MODELS`' MLP and
    small CNN, or a registry model (:func:`jaxspec.models.create_model`, BatchNorm with its
    running statistics) on random images or byte windows.

    Example:
      >>> from experiments.speed_residuals import problem
      >>> loss_fn, params, batch = problem("mlp", 4)
      >>> batch["image"].shape, float(loss_fn(params, batch)) > 0
      ((4, 32, 32, 3), True)
    """
    if name in MODELS:
        init, apply = MODELS[name]
        return make_loss(apply), init(jax.random.key(0)), workload(batch_size)
    from flax import nnx

    from jaxspec.models import create_model, hessian_loss

    rng = np.random.default_rng(0)
    if name == "transformer":
        net = create_model(name, num_classes=256, rngs=nnx.Rngs(0))
        windows = max(1, batch_size // 4)
        batch = {"tokens": rng.integers(0, 256, (windows, 128)).astype(np.uint8),
                 "label": rng.integers(0, 256, (windows, 128)).astype(np.int32)}
        return (*hessian_loss(net, bn_mode="running", input_key="tokens"), batch)
    net = create_model(name, num_classes=10, rngs=nnx.Rngs(0))
    return (*hessian_loss(net, bn_mode="running"), workload(batch_size))


def bench(name: str, batch_size: int, rounds: int) -> dict:
    """One model's row: residual MiB and product seconds of each form, and the ratios.

    Example:
      >>> from experiments.speed_residuals import bench
      >>> row = bench("mlp", 8, 1)
      >>> row["all_mib"] > row["compact_mib"] > 0, sorted(row["ratio"])
      (True, ['compact', 'recomputed'])
    """
    loss_fn, params, batch = problem(name, batch_size)
    n = len(jax.tree.leaves(batch)[0])
    data = jaxspec.batch_dataset(batch, n)
    ops = {"recomputed": jaxspec.curvature_operator(loss_fn, params, data, linearize=None)}
    for kept in ("all", "compact"):
        op = jaxspec.curvature_operator(loss_fn, params, data, linearize=2**40, residuals=kept)
        ops[kept] = op.linearized()
    v = jax.random.normal(jax.random.key(1), (ops["all"].size,), ops["all"].dtype)
    for op in ops.values():
        op.mv(v).block_until_ready()  # compiles
    reps = max(1, int(0.2 / max(_time(ops["all"], v, 1), 1e-4)))  # about 0.2 s a sample
    times = {k: [] for k in ops}
    for _ in range(rounds):
        for k, op in ops.items():
            times[k].append(_time(op, v, reps))
    ratio = {k: float(np.median(np.array(times[k]) / np.array(times["all"])))
             for k in ("recomputed", "compact")}
    return {"model": name, "params": ops["all"].size, "batch": n,
            "all_mib": ops["all"].linear.nbytes() / 2**20,
            "compact_mib": ops["compact"].linear.nbytes() / 2**20,
            "seconds": {k: float(np.median(t)) for k, t in times.items()}, "ratio": ratio}


def _time(op, v, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        out = op.mv(v)
    out.block_until_ready()
    return (time.perf_counter() - t) / reps


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line entry point (see the module docstring); returns the rows.

    Example:
      >>> import contextlib, io
      >>> from experiments.speed_residuals import main
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     rows = main(["--models", "mlp", "--batch-size", "8", "--rounds", "1"])
      >>> out.getvalue().splitlines()[1].split()[:3]
      ['model', 'params', 'batch']
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(NAMES[:4]), choices=NAMES)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    print(header())
    print(f"{'model':12} {'params':>9} {'batch':>5} {'all MiB':>8} {'compact MiB':>11} "
          f"{'all s':>7} {'compact/all':>11} {'recomputed/all':>14}")
    rows = []
    for name in args.models:
        row = bench(name, args.batch_size, args.rounds)
        rows.append(row)
        print(f"{name:12} {row['params']:9d} {row['batch']:5d} {row['all_mib']:8.1f} "
              f"{row['compact_mib']:11.1f} {row['seconds']['all']:7.3f} "
              f"{row['ratio']['compact']:11.2f} {row['ratio']['recomputed']:14.2f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
