"""XLA:CPU flags against the CNN's gradient and HVP: which compiler options make convolutions faster.

    python -m experiments.cpu_flags                      # PreResNet-20, one batch of 128
    python -m experiments.cpu_flags --batch 32 --repeat 3

Each setting of ``XLA_FLAGS`` (see :data:`SETTINGS`: XNNPACK and oneDNN convolutions, fast
math, single-threaded Eigen) runs in its own subprocess, since XLA reads the flags once per
process. The settings take turns, round after round, so the drifting load of a shared machine
falls on all of them alike; each prints the best time of one jitted gradient and one HVP of
PreResNet-20 (BatchNorm with batch statistics) on one batch of CIFAR-shaped images, and the
ratio to the default setting in the same round. A setting this jaxlib does not know fails in
its subprocess and is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SETTINGS = {
    "default": "",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn convolutions": "--xla_cpu_use_xnnpack=true "
                        "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "ynn convolutions": "--xla_cpu_experimental_ynn_fusion_type="
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "fast math": "--xla_cpu_enable_fast_math=true",
    "no thunk runtime": "--xla_cpu_use_thunk_runtime=false",
}


def _measure(model: str, batch: int, repeat: int) -> dict:
    """Best seconds of one gradient and one HVP of ``model`` on one batch, in this process
    (``main``'s example runs it)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from experiments.timing import best_time
    from jaxspec import hvp
    from jaxspec.models import create_model, hessian_loss

    net = create_model(model, num_classes=10, rngs=nnx.Rngs(0))
    loss_fn, params = hessian_loss(net, bn_mode="batch")
    rng = np.random.default_rng(0)
    data = {"image": jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, batch), jnp.int32)}
    grad = jax.jit(jax.grad(loss_fn))
    prod = jax.jit(lambda p, b, v: hvp(loss_fn, p, b, v))
    jax.block_until_ready((grad(params, data), prod(params, data, params)))
    return {"grad_s": best_time(grad, params, data, repeats=repeat),
            "hvp_s": best_time(prod, params, data, params, repeats=repeat)}


def main(argv: list[str] | None = None) -> dict:
    """Command line entry point (see the module docstring); returns ``{setting: [rows]}``.

    Example (``--child`` measures in this process, with the flags it was started with):
      >>> import contextlib, io, json
      >>> from experiments.cpu_flags import main
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     _ = main(["--child", "--model", "mlp", "--batch", "2", "--repeat", "1"])
      >>> sorted(json.loads(out.getvalue()))
      ['grad_s', 'hvp_s']
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="preresnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        row = _measure(args.model, args.batch, args.repeat)
        print(json.dumps(row))
        return row
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    results: dict = {name: [] for name in args.settings}
    for _ in range(args.rounds):
        for name in args.settings:
            env = dict(os.environ, XLA_FLAGS=SETTINGS[name])
            out = subprocess.run([sys.executable, "-m", "experiments.cpu_flags", "--child",
                                  "--model", args.model, "--batch", str(args.batch),
                                  "--repeat", str(args.repeat)],
                                 capture_output=True, text=True, env=env)
            row = (json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0
                   else {"error": out.stderr.strip().splitlines()[-1][:120]})
            results[name].append(row)
            print(name, row, flush=True)
    base = results.get("default")
    print(f"\n{'setting':20s} {'grad s':>8s} {'hvp s':>8s}  grad / default per round")
    for name, rows in results.items():
        if "error" in rows[0]:
            print(f"{name:20s} failed: {rows[0]['error']}")
            continue
        ratio = "" if not base or "error" in base[0] else " ".join(
            f"{r['grad_s'] / b['grad_s']:.2f}" for r, b in zip(rows, base))
        print(f"{name:20s} {min(r['grad_s'] for r in rows):8.3f} "
              f"{min(r['hvp_s'] for r in rows):8.3f}  {ratio}")
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return results


if __name__ == "__main__":
    main()
