"""GPU/TPU readiness in one command: HVP and Lanczos times and memory on the paper's big models.

    python -m experiments.gpu_check            # PreResNet-110 and VGG-16, each in a subprocess
    python -m experiments.gpu_check --models preresnet110 --n 2048 --m 20

For each model, on a random CIFAR-shaped subset of ``--n`` samples (batches of
``--batch-size``; BatchNorm with batch statistics, as the paper), it prints: one data-set HVP
with every product recomputed (``linearize=None``) and with each batch's product linearised once
(:meth:`jaxspec.CurvatureOperator.linearized`, budget ``"auto"``), the residuals' memory, and an
``--m``-step Lanczos run on the linearised operator with the compiled driver (one XLA program a
run) and the host driver (a Python loop of products), first run (with compilation) and warm. The
data-set times are also extrapolated to N = 50,000 (CIFAR-10's training set: the products are
linear in N), and the device's peak memory (the process's max RSS on CPU) is printed per model.
The defaults are sized to finish in a few minutes on one GPU; on CPU pass small sizes (it is
tested on CPU at a tiny size).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxspec
from experiments.timing import best_time, peak_memory
from jaxspec.models import count_params, create_model, hessian_loss, model_names

FULL_N = 50_000  # CIFAR-10's training set


def _first_and_warm(fn) -> tuple[float, float]:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    return first, best_time(fn, repeats=1)


def measure(name: str, *, n: int, batch_size: int, m: int, num_classes: int = 10,
            repeat: int = 3) -> dict:
    """One row: the HVP (plain and linearised) and Lanczos (compiled and host drivers) times
    and the memory of model ``name`` on ``n`` random samples.

    Example:
      >>> from experiments.gpu_check import measure
      >>> row = measure("mlp", n=4, batch_size=4, m=2, repeat=1)
      >>> row["model"], row["n"], row["cached_batches"], row["lanczos_host_warm_s"] > 0
      ('mlp', 4, 1, True)
    """
    model = create_model(name, num_classes=num_classes, rngs=nnx.Rngs(0))
    loss_fn, params = hessian_loss(model, bn_mode="batch")
    rng = np.random.default_rng(0)
    data = jaxspec.batch_dataset(
        {"image": rng.normal(size=(n, 32, 32, 3)).astype(np.float32),
         "label": rng.integers(0, num_classes, n).astype(np.int32)}, batch_size)
    plain = jaxspec.curvature_operator(loss_fn, params, data, linearize=None)
    t = time.perf_counter()
    cached = jaxspec.curvature_operator(loss_fn, params, data).linearized()
    jax.block_until_ready(cached.linear)
    linearize_s = time.perf_counter() - t
    # the compiled driver traces the products: the lax.scan reduction (the default off CPU)
    traced = cached if cached.reduce.driver == "compiled" else jaxspec.curvature_operator(
        loss_fn, params, data, reduce="scan").linearized()
    v = jax.random.normal(jax.random.key(1), (plain.size,), plain.dtype)
    row = {"model": name, "params": count_params(model), "device": jax.devices()[0].device_kind,
           "n": n, "batch": batch_size, "m": m, "linearize_s": linearize_s,
           "cached_batches": 0 if cached.linear is None else cached.linear.count,
           "residuals_gib": 0.0 if cached.linear is None else cached.linear.nbytes() / 2**30}
    for key, op in (("hvp_plain", plain), ("hvp_cached", cached)):
        jax.block_until_ready(op.mv(v))  # compile + warm up
        row[f"{key}_s"] = best_time(op.mv, v, repeats=repeat)
    for driver, op in (("compiled", traced), ("host", cached)):
        first, warm = _first_and_warm(
            lambda: jaxspec.run_lanczos(op, v, m, driver=driver).alphas)  # noqa: B023
        row[f"lanczos_{driver}_first_s"], row[f"lanczos_{driver}_warm_s"] = first, warm
    scale = FULL_N / n
    row["hvp_cached_50k_s"] = row["hvp_cached_s"] * scale
    row["lanczos_100_50k_min"] = min(row["lanczos_compiled_warm_s"],
                                     row["lanczos_host_warm_s"]) / m * 100 * scale / 60
    peak, row["peak_kind"] = peak_memory()
    row["peak_gib"] = peak / 2**30
    return row


COLUMNS = ["model", "params", "n", "cached_batches", "residuals_gib", "linearize_s",
           "hvp_plain_s", "hvp_cached_s", "lanczos_compiled_first_s", "lanczos_compiled_warm_s",
           "lanczos_host_first_s", "lanczos_host_warm_s", "hvp_cached_50k_s",
           "lanczos_100_50k_min", "peak_gib", "peak_kind"]


def table(rows: list[dict]) -> str:
    """The rows as a text table, one line per model (numbers to three significant digits).

    Example:
      >>> from experiments.gpu_check import COLUMNS, table
      >>> print(table([dict.fromkeys(COLUMNS, 1.23456)]).splitlines()[1].split()[:2])
      ['1.23', '1.23']
    """
    fmt = lambda x: f"{x:.3g}" if isinstance(x, float) else str(x)  # noqa: E731
    cells = [COLUMNS] + [[fmt(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line entry point (see the module docstring); returns the rows.

    Each model runs in its own subprocess (``--child``: one model in this process, its row
    printed as one JSON line), so that each peak memory is that model's alone.

    Example (a measurement is :func:`measure`'s example; an unknown model fails at once):
      >>> from experiments.gpu_check import main
      >>> main(["--child", "--models", "resnet-1"])
      Traceback (most recent call last):
        ...
      ValueError: unknown model 'resnet-1'
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["preresnet110", "vgg16"])
    ap.add_argument("--n", type=int, default=1024, help="samples measured (a subset of 50,000)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--m", type=int, default=10, help="Lanczos steps of the timed runs")
    ap.add_argument("--repeat", type=int, default=3, help="timed HVPs after a warm-up")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    knobs = dict(n=args.n, batch_size=args.batch_size, m=args.m, repeat=args.repeat)
    for name in args.models:
        if name not in model_names() and not name.startswith("preresnet"):
            raise ValueError(f"unknown model {name!r}")
    if args.child:
        rows = [measure(name, **knobs) for name in args.models]
        for row in rows:
            print(json.dumps(row))
        return rows
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} "
          f"(backend {jax.default_backend()}); N = {FULL_N:,} extrapolated from n = {args.n}")
    rows = []
    for name in args.models:
        cmd = [sys.executable, "-m", "experiments.gpu_check", "--child", "--models", name,
               "--n", str(args.n), "--batch-size", str(args.batch_size), "--m", str(args.m),
               "--repeat", str(args.repeat)]
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
