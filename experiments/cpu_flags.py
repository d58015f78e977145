"""XLA:CPU flags against the CNN's gradient and HVP: which compiler options make convolutions faster.

    python -m experiments.cpu_flags                      # PreResNet-20, one batch of 128
    python -m experiments.cpu_flags --batch 32 --repeat 3

Each setting of ``XLA_FLAGS`` (see :data:`SETTINGS`: ``default`` is XLA's own choice, ``jaxspec``
the options jaxspec compiles its programs with, :data:`jaxspec.compiler.CPU_OPTIONS`, which
leave convolutions to XLA instead of YNNPACK; then XNNPACK and oneDNN convolutions, fast math,
the older runtime) runs in its own subprocess, since XLA reads the flags once per process. The
settings take turns, round after round, so the drifting load of a shared machine falls on all
of them alike; each prints the best time of one jitted gradient and one HVP of PreResNet-20
(BatchNorm with batch statistics) on one batch of CIFAR-shaped images, and the ratio to the
default setting in the same round. A setting this jaxlib does not know fails in its
subprocess and is reported as such.

With each setting it also times the three parts of one 3x3 convolution's gradient at each stage
of the network (:func:`conv_ops`: forward, gradient to the input, gradient to the kernel): with
XLA's default YNNPACK convolutions, the kernel gradient is where XLA:CPU loses to PyTorch (see
docs/speed.md). And it counts who runs the HVP's convolutions in the compiled
program (:func:`convolution_runners`: XLA itself or a library), so a flag that does not reach
them shows as such.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

from experiments.timing import load_average, machine
from jaxspec.compiler import CPU_OPTIONS

SETTINGS = {
    "default": "",
    "jaxspec": " ".join(f"--{name}={value}" for name, value in CPU_OPTIONS.items()),
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn convolutions": "--xla_cpu_use_xnnpack=true "
                        "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "ynn convolutions": "--xla_cpu_experimental_ynn_fusion_type="
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "onednn convolutions": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type="
                           "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
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
    # compiled ahead of time, once: the same executable is timed and read for its convolutions
    prod = jax.jit(lambda p, b, v: hvp(loss_fn, p, b, v)).lower(params, data, params).compile()
    jax.block_until_ready((grad(params, data), prod(params, data, params)))
    hlo = prod.as_text()
    return {"grad_s": best_time(grad, params, data, repeats=repeat),
            "hvp_s": best_time(prod, params, data, params, repeats=repeat),
            "convolutions": convolution_runners(hlo),
            **(conv_ops(batch, repeat) if model != "mlp" else {})}  # the convolutions' parts


def convolution_runners(hlo: str) -> dict:
    """Who runs the convolutions of a compiled program (``compile().as_text()``): how many
    XLA runs itself (``"xla"``) and how many each library fusion (``"__ynn_fusion"``, ...) or
    custom call holds. A flag that names a library but leaves every convolution with ``"xla"``
    did not reach them.

    Example:
      >>> import jax, numpy as np
      >>> from experiments.cpu_flags import convolution_runners
      >>> x, w = np.ones((1, 4, 4, 2), np.float32), np.ones((3, 3, 2, 2), np.float32)
      >>> conv = lambda x, w: jax.lax.conv_general_dilated(
      ...     x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
      >>> sum(convolution_runners(jax.jit(conv).lower(x, w).compile().as_text()).values())
      1
    """
    bodies = dict(re.findall(r"^(?:ENTRY )?(%\S+) .*?\{\n(.*?)\n\}", hlo, re.S | re.M))
    libraries = dict(re.findall(r'calls=(%[^,\s]+).*?"fusion_config":\{"kind":"(__\w+)"', hlo))
    runners: dict = {}
    for name, body in bodies.items():
        count = len(re.findall(r"= \S+ convolution\(", body))
        if count:
            runner = libraries.get(name, "xla")
            runners[runner] = runners.get(runner, 0) + count
    for target in re.findall(r'custom_call_target="([^"]*conv[^"]*)"', hlo, re.I):
        runners[target] = runners.get(target, 0) + 1
    return runners


def conv_ops(batch: int, repeat: int, stages=((16, 32), (32, 16), (64, 8))) -> dict:
    """Milliseconds of the three parts of a 3x3 convolution's gradient at each stage of
    PreResNet-20 (``(channels, size)``: 16 x 32 x 32, 32 x 16 x 16, 64 x 8 x 8, NHWC): the
    forward pass (``fwd``), the gradient with respect to the input (``dx``, a transposed
    convolution) and to the kernel (``dw``, a correlation of the input with the output's
    gradient, summed over the batch and the image), each one jitted call.

    Example:
      >>> from experiments.cpu_flags import conv_ops
      >>> sorted(conv_ops(2, 1, stages=((4, 8),)))
      ['c4_dw_ms', 'c4_dx_ms', 'c4_fwd_ms']
    """
    import jax
    import numpy as np

    from experiments.timing import best_time

    rng = np.random.default_rng(0)
    out = {}
    for c, size in stages:
        x, g = (rng.standard_normal((batch, size, size, c)).astype(np.float32) for _ in range(2))
        w = rng.standard_normal((3, 3, c, c)).astype(np.float32)
        conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        parts = {"fwd": (jax.jit(conv), (x, w)),
                 "dx": (jax.jit(lambda w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]), (w, g)),
                 "dw": (jax.jit(lambda x, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]), (x, g))}
        for name, (fn, args) in parts.items():
            jax.block_until_ready(fn(*args))
            out[f"c{c}_{name}_ms"] = 1e3 * best_time(fn, *args, repeats=repeat)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Command line entry point (see the module docstring); returns ``{setting: [rows]}``.

    Example (``--child`` measures in this process, with the flags it was started with):
      >>> import contextlib, io, json
      >>> from experiments.cpu_flags import main
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     _ = main(["--child", "--model", "mlp", "--batch", "2", "--repeat", "1"])
      >>> sorted(json.loads(out.getvalue()))[-2:]
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
    print(f"{machine()}; {load_average()}")
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
    ops = [k for k in next(iter(results.values()))[0] if k.endswith("_ms")]
    print(f"\n{'setting':20s} {'grad s':>8s} {'hvp s':>8s}  "
          + " ".join(f"{k[:-3]:>9s}" for k in ops) + "  grad / default per round")
    for name, rows in results.items():
        if "error" in rows[0]:
            print(f"{name:20s} failed: {rows[0]['error']}")
            continue
        ratio = "" if not base or "error" in base[0] else " ".join(
            f"{r['grad_s'] / b['grad_s']:.2f}" for r, b in zip(rows, base))
        print(f"{name:20s} {min(r['grad_s'] for r in rows):8.3f} "
              f"{min(r['hvp_s'] for r in rows):8.3f}  "
              + " ".join(f"{min(r.get(k, float('nan')) for r in rows):9.1f}" for k in ops)
              + f"  {ratio}")
    print("\nwho runs the HVP's convolutions (a setting that leaves them all to 'xla' names a "
          "library that did not take them):")
    for name, rows in results.items():
        if "error" not in rows[0]:
            print(f"{name:20s} {rows[0]['convolutions']}")
    print(load_average())
    return results


if __name__ == "__main__":
    main()
