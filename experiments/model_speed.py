"""Cost of one Hessian-vector product on the paper's models: trace, compile and run time, memory.

    python -m experiments.model_speed                        # CPU: preresnet20, preresnet110
    python -m experiments.model_speed --models vgg16 --bn-mode running --batch 64

Default models: PreResNet-20 and PreResNet-110 on CPU; PreResNet-110 and VGG-16 on a GPU. For each
model (in its own subprocess, so that peak memory is that model's alone) it prints the eager init
time, the trace and XLA compile time of ``jaxspec.compiler.jit(hvp)`` on one batch of the
adapted loss (:func:`jaxspec.models.hessian_loss`), and the best of ``--repeat`` timed HVPs.
Peak memory is the device's ``peak_bytes_in_use`` on a GPU, the process's max RSS on CPU.
Absolute times on a shared machine mean little; compare rows of one run.
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

from experiments.timing import best_time, peak_memory
from jaxspec import hvp
from jaxspec.compiler import jit
from jaxspec.models import count_params, create_model, hessian_loss


def measure(name: str, *, batch: int, num_classes: int, bn_mode: str, repeat: int) -> dict:
    """Times init, trace, compile and run of one HVP of model ``name``: a row of the table.

    Example:
      >>> from experiments.model_speed import measure
      >>> row = measure("mlp", batch=2, num_classes=10, bn_mode="batch", repeat=1)
      >>> row["model"], row["params"], row["batch"], row["bn_mode"]
      ('mlp', 1841162, 2, 'batch')
      >>> all(row[k] > 0 for k in ("init_s", "trace_s", "compile_s", "hvp_s", "peak_gib"))
      True
    """
    t = time.perf_counter()
    model = create_model(name, num_classes=num_classes, rngs=nnx.Rngs(0))
    jax.block_until_ready(nnx.state(model))
    init_s = time.perf_counter() - t

    loss_fn, params = hessian_loss(model, bn_mode=bn_mode)
    rng = np.random.default_rng(0)
    data = {
        "image": jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32),
    }
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    v = treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])

    fn = jit(lambda p, b, v: hvp(loss_fn, p, b, v))
    t = time.perf_counter()
    lowered = fn.lower(params, data, v)
    trace_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(compiled(params, data, v))  # first run: allocation, autotuning
    hvp_s = best_time(compiled, params, data, v, repeats=repeat)
    device = jax.devices()[0]
    peak, peak_kind = peak_memory()
    return {
        "model": name,
        "params": count_params(model),
        "device": device.device_kind,
        "bn_mode": bn_mode,
        "batch": batch,
        "init_s": init_s,
        "trace_s": trace_s,
        "compile_s": compile_s,
        "hvp_s": hvp_s,
        "peak_gib": peak / 2**30,
        "peak_kind": peak_kind,
    }


def _table(rows: list[dict]) -> str:
    cols = ["model", "params", "device", "bn_mode", "batch", "init_s", "trace_s", "compile_s",
            "hvp_s", "peak_gib", "peak_kind"]  # fmt: skip
    fmt = lambda x: f"{x:.2f}" if isinstance(x, float) else str(x)  # noqa: E731
    cells = [cols] + [[fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring).

    With ``--child`` it measures the one model in this process and prints its row as a JSON line
    (what each model's subprocess runs); without, it runs one such subprocess per model and
    prints the table.

    Example:
      >>> import contextlib, io, json
      >>> from experiments.model_speed import main
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     main(["--child", "--models", "mlp", "--batch", "2", "--num-classes", "10",
      ...           "--repeat", "1"])
      >>> row = json.loads(out.getvalue())
      >>> sorted(row)  # doctest: +NORMALIZE_WHITESPACE
      ['batch', 'bn_mode', 'compile_s', 'device', 'hvp_s', 'init_s', 'model', 'params',
       'peak_gib', 'peak_kind', 'trace_s']
      >>> row["model"], row["params"]
      ('mlp', 1841162)
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=None, help="registry names")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--bn-mode", choices=["batch", "running"], default="batch")
    parser.add_argument("--repeat", type=int, default=3, help="timed HVPs after a warm-up run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    knobs = {"batch": args.batch, "num_classes": args.num_classes, "bn_mode": args.bn_mode,
             "repeat": args.repeat}  # fmt: skip

    if args.child:  # one model, result as one JSON line
        print(json.dumps(measure(args.models[0], **knobs)))
        return

    on_gpu = jax.default_backend() == "gpu"
    default = ["preresnet110", "vgg16"] if on_gpu else ["preresnet20", "preresnet110"]
    models = args.models or default
    rows = []
    for name in models:
        cmd = [sys.executable, "-m", "experiments.model_speed", "--child", "--models", name,
               "--batch", str(args.batch), "--num-classes", str(args.num_classes),
               "--bn-mode", args.bn_mode, "--repeat", str(args.repeat)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}")
    print(_table(rows))


if __name__ == "__main__":
    main()
