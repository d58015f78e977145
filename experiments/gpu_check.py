"""GPU/TPU readiness in one command: HVP and Lanczos times and memory on the paper's big models.

    python -m experiments.gpu_check            # PreResNet-110 and VGG-16, each in a subprocess
    python -m experiments.gpu_check --models preresnet110 --n 2048 --m 20

For each model, on a random CIFAR-shaped subset of ``--n`` samples (batches of
``--batch-size``; BatchNorm with batch statistics, as the paper), it prints: one data-set HVP
with every product recomputed (``linearize=None``) and with each batch's product linearised once
(:meth:`jaxspec.CurvatureOperator.linearized`, budget ``"auto"``), the residuals' memory and
form (``residuals_kept``: ``"all"`` or ``"compact"``), and an
``--m``-step Lanczos run on the linearised operator with the compiled driver (one XLA program a
run) and the host driver (a Python loop of products), first run (with compilation) and warm. The
data-set times are also extrapolated to N = 50,000 (CIFAR-10's training set: the products are
linear in N), and the device's peak memory (the process's max RSS on CPU) is printed per model.
The defaults are sized to finish in a few minutes on one GPU; on CPU pass small sizes (it is
tested on CPU at a tiny size).

Each figure is printed (to stderr) as soon as it is measured, and ``--out`` writes the finished
rows as JSON after each model, so a run cut short still says how far it got. ``--model-timeout``
stops a model that runs past it and goes on with the next. ``--programs DIR`` keeps the compiled
programs on disk (:func:`jaxspec.compiler.cache_compilations`): a second run loads them, and its
"first" columns then time a load, not a compilation.

    python -m experiments.gpu_check --model-timeout 240 --out gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Callable

import jax
import numpy as np
from flax import nnx

import jaxspec
from experiments.timing import best_time, peak_memory
from jaxspec.atomic import write_text
from jaxspec.compiler import cache_compilations
from jaxspec.models import count_params, create_model, hessian_loss, model_names

FULL_N = 50_000  # CIFAR-10's training set


def _first_and_warm(fn) -> tuple[float, float]:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    return first, best_time(fn, repeats=1)


def measure(name: str, *, n: int, batch_size: int, m: int, num_classes: int = 10,
            repeat: int = 3, report: Callable[[str, object], None] | None = None) -> dict:
    """One row: the HVP (plain and linearised) and Lanczos (compiled and host drivers) times
    and the memory of model ``name`` on ``n`` random samples. ``report(key, value)`` is called
    with each entry as soon as it is measured.

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
    row = {}

    def put(key, value):
        row[key] = value
        if report is not None:
            report(key, value)

    for key, value in (("model", name), ("params", count_params(model)),
                       ("device", jax.devices()[0].device_kind), ("n", n), ("batch", batch_size),
                       ("m", m), ("linearize_s", linearize_s),
                       ("cached_batches", 0 if cached.linear is None else cached.linear.count),
                       ("residuals_kept",
                        "-" if cached.linear is None else str(cached.linear.residuals)),
                       ("residuals_gib",
                        0.0 if cached.linear is None else cached.linear.nbytes() / 2**30)):
        put(key, value)
    for key, op in (("hvp_plain", plain), ("hvp_cached", cached)):
        jax.block_until_ready(op.mv(v))  # compile + warm up
        put(f"{key}_s", best_time(op.mv, v, repeats=repeat))
    for driver, op in (("compiled", traced), ("host", cached)):
        first, warm = _first_and_warm(
            lambda: jaxspec.run_lanczos(op, v, m, driver=driver).alphas)  # noqa: B023
        put(f"lanczos_{driver}_first_s", first)
        put(f"lanczos_{driver}_warm_s", warm)
    scale = FULL_N / n
    put("hvp_cached_50k_s", row["hvp_cached_s"] * scale)
    put("lanczos_100_50k_min", min(row["lanczos_compiled_warm_s"],
                                   row["lanczos_host_warm_s"]) / m * 100 * scale / 60)
    peak, kind = peak_memory()
    put("peak_gib", peak / 2**30)
    put("peak_kind", kind)
    return row


COLUMNS = ["model", "params", "n", "cached_batches", "residuals_kept", "residuals_gib",
           "linearize_s", "hvp_plain_s", "hvp_cached_s", "lanczos_compiled_first_s",
           "lanczos_compiled_warm_s", "lanczos_host_first_s", "lanczos_host_warm_s",
           "hvp_cached_50k_s", "lanczos_100_50k_min", "peak_gib", "peak_kind"]


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


def _report(name: str):
    """A :func:`measure` ``report`` that prints ``name key value`` to stderr at once."""
    def report(key, value):
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        print(f"{name}  {key} {text}", file=sys.stderr, flush=True)
    return report


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line entry point (see the module docstring); returns the finished rows.

    Each model runs in its own subprocess (``--child``: one model in this process, its row
    printed as one JSON line), so that each peak memory is that model's alone; its figures
    reach stderr as they are measured.

    Example (a tiny run is ``tests/test_experiments.py``'s; an unknown model fails at once):
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
    ap.add_argument("--out", help="JSON file of the finished rows, written after each model")
    ap.add_argument("--model-timeout", type=float, default=None,
                    help="seconds a model may take before it is stopped (default: no limit)")
    ap.add_argument("--programs", help="directory of compiled programs kept between runs")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    knobs = dict(n=args.n, batch_size=args.batch_size, m=args.m, repeat=args.repeat)
    for name in args.models:
        if name not in model_names() and not name.startswith("preresnet"):
            raise ValueError(f"unknown model {name!r}")
    if args.child:
        if args.programs:  # before anything compiles
            cache_compilations(args.programs)
        rows = [measure(name, report=_report(name), **knobs) for name in args.models]
        for row in rows:
            print(json.dumps(row))
        return rows
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} "
          f"(backend {jax.default_backend()}); N = {FULL_N:,} extrapolated from n = {args.n}",
          flush=True)
    rows = []
    for name in args.models:
        cmd = [sys.executable, "-m", "experiments.gpu_check", "--child", "--models", name,
               "--n", str(args.n), "--batch-size", str(args.batch_size), "--m", str(args.m),
               "--repeat", str(args.repeat)] + (["--programs", args.programs]
                                                if args.programs else [])
        t = time.perf_counter()
        try:  # stderr is this process's: the child's figures show as they come
            out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True,
                                 timeout=args.model_timeout)
        except subprocess.TimeoutExpired:
            print(f"{name}: stopped after {args.model_timeout:g} s (--model-timeout)", flush=True)
            continue
        if out.returncode:
            print(f"{name}: failed (exit code {out.returncode}; its error is above)", flush=True)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
        if args.out:
            write_text(args.out, json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
