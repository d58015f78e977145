"""Data-parallel Hessian speed over devices: ``python -m experiments.speed_devices``.

Times one data-set HVP of a :func:`jaxspec.curvature_operator` with the mesh reduction (compiled,
after a warm-up) on meshes of 1, 2, 4, ... devices and prints each time and the speed-up over one device.
On a CPU the devices are simulated: each count runs in its own process with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``, and all of them share the machine's cores,
so the speed-up is bounded by the number of cores, not the number of devices. On GPUs/TPUs the
meshes are the first k local devices. With ``--preresnet`` (the default when an accelerator is
present) it also times, on one device, one HVP and a Lanczos run of PreResNet-110 (CIFAR-100
head, BatchNorm in batch mode) over N = 50,000 synthetic CIFAR-shaped images.

    python -m experiments.speed_devices                          # CPU: MLP, 1 / 2 / 4 devices
    python -m experiments.speed_devices --devices 1 2 4 8 --num-samples 4096
    python -m experiments.speed_devices --preresnet --lanczos-steps 10   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Sequence

from experiments.timing import best_time

__all__ = ["main", "measure", "measure_in_subprocess"]


def measure(
    model: str = "mlp",
    *,
    num_devices: int = 1,
    num_samples: int = 2048,
    batch_size: int = 128,
    num_classes: int = 10,
    repeats: int = 3,
    lanczos_steps: int = 0,
) -> dict[str, Any]:
    """Times the data-parallel HVP (and optionally Lanczos) of ``model`` on ``num_devices``.

    The data are synthetic CIFAR-shaped images (:func:`jaxspec.data.synthetic_cifar`), the loss
    is :func:`jaxspec.models.hessian_loss` with BatchNorm in batch mode, in float32. The mesh is
    the first ``num_devices`` devices of this process.

    Args:
      model: a :func:`jaxspec.models.create_model` name.
      num_devices: devices in the mesh.
      num_samples: N.
      batch_size: samples per batch (the batch BatchNorm normalises over).
      num_classes: outputs of the model.
      repeats: timed HVPs (the best is reported).
      lanczos_steps: if positive, also time a compiled Lanczos run of this many steps.

    Returns:
      A dict: device kind and count, P, N, seconds to compile and to run one HVP, and with
      ``lanczos_steps``, seconds to compile and run Lanczos.

    Example:
      >>> from experiments.speed_devices import measure
      >>> r = measure("mlp", num_samples=16, batch_size=16, repeats=1, lanczos_steps=2)
      >>> r["hvp_s"] > 0 and r["lanczos_s"] > 0
      True
    """
    import jax
    from flax import nnx
    from jax.flatten_util import ravel_pytree

    from jaxspec import batch_dataset, curvature_operator, lanczos_continue, lanczos_init
    from jaxspec.compiler import jit
    from jaxspec.data import normalized_split, synthetic_cifar
    from jaxspec.models import create_model, hessian_loss
    from jaxspec.parallel import data_mesh

    devices = jax.devices()[:num_devices]
    if len(devices) < num_devices:
        raise ValueError(f"asked for {num_devices} devices, this process has {len(devices)}")
    mesh = data_mesh(devices)
    net = create_model(model, num_classes=num_classes, rngs=nnx.Rngs(0))
    loss_fn, params = hessian_loss(net, bn_mode="batch")
    data = normalized_split(
        synthetic_cifar(num_train=num_samples, num_test=1, num_classes=num_classes), "train")
    matvec = curvature_operator(loss_fn, params, batch_dataset(data, batch_size), reduce=mesh)
    flat = ravel_pytree(params)[0]
    v = jax.random.normal(jax.random.key(0), flat.shape, flat.dtype)

    hvp = jit(lambda op, v: op.mv(v))  # the operator goes in as an argument, not a constant
    t = time.perf_counter()
    compiled = hvp.lower(matvec, v).compile()
    out = {"model": model, "device": devices[0].device_kind, "num_devices": num_devices,
           "num_params": int(flat.size), "num_samples": num_samples, "batch_size": batch_size,
           "hvp_compile_s": time.perf_counter() - t}
    jax.block_until_ready(compiled(matvec, v))  # warm-up
    out["hvp_s"] = best_time(compiled, matvec, v, repeats=repeats)
    if lanczos_steps > 0:
        state = lanczos_init(v, lanczos_steps)
        run = jit(lambda op, s: lanczos_continue(op, s, lanczos_steps))
        t = time.perf_counter()
        compiled = run.lower(matvec, state).compile()
        out["lanczos_compile_s"] = time.perf_counter() - t
        t = time.perf_counter()
        final = jax.block_until_ready(compiled(matvec, state))
        out["lanczos_s"] = time.perf_counter() - t
        out["lanczos_steps"] = int(final.num_valid)
    return out


def measure_in_subprocess(num_devices: int, /, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure` in a fresh process with ``num_devices`` simulated CPU devices.

    Example:
      >>> from experiments.speed_devices import measure_in_subprocess
      >>> r = measure_in_subprocess(2, model="mlp", num_samples=32, batch_size=16,
      ...                           repeats=1)
      >>> r["num_devices"]
      2
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
    code = ("import json, sys; from experiments.speed_devices import measure; "
            f"print(json.dumps(measure(num_devices={num_devices}, **json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], env=env,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"the {num_devices}-device run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the comparison and prints one JSON line per measurement, then the ratios.

    Example:
      >>> from experiments.speed_devices import main
      >>> rows = main(["--devices", "1", "--model", "mlp", "--num-samples", "16",
      ...              "--batch-size", "16", "--repeats", "1", "--no-preresnet"])
      ... # doctest: +ELLIPSIS
      {...}
      ...
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=None,
                        help="device counts (default: 1 2 4 on CPU, 1 2 4 .. all otherwise)")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--num-samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preresnet", dest="preresnet", action="store_true", default=None,
                        help="also time PreResNet-110 at N=50,000 on one device "
                             "(default: when an accelerator is present)")
    parser.add_argument("--no-preresnet", dest="preresnet", action="store_false")
    parser.add_argument("--preresnet-samples", type=int, default=50_000)
    parser.add_argument("--lanczos-steps", type=int, default=10,
                        help="Lanczos steps timed for PreResNet-110 (the paper uses 100)")
    args = parser.parse_args(argv)

    import jax

    on_cpu = jax.default_backend() == "cpu"
    counts = args.devices
    if counts is None:
        counts = [1, 2, 4] if on_cpu else [k for k in (1, 2, 4, 8, 16, 32, 64)
                                           if k <= jax.local_device_count()]
    kwargs = dict(model=args.model, num_samples=args.num_samples, batch_size=args.batch_size,
                  repeats=args.repeats)
    rows = []
    for k in counts:
        row = measure_in_subprocess(k, **kwargs) if on_cpu else measure(num_devices=k, **kwargs)
        print(json.dumps(row), flush=True)
        rows.append(row)
    base = next((r["hvp_s"] for r in rows if r["num_devices"] == 1), rows[0]["hvp_s"])
    for r in rows:
        print(f"{r['num_devices']:>3} device(s): HVP {r['hvp_s'] * 1e3:9.1f} ms   "
              f"speed-up {base / r['hvp_s']:.2f}x", flush=True)
    if args.preresnet if args.preresnet is not None else not on_cpu:
        row = measure("preresnet110", num_devices=1, num_samples=args.preresnet_samples,
                      batch_size=128, num_classes=100, repeats=args.repeats,
                      lanczos_steps=args.lanczos_steps)
        print(json.dumps(row), flush=True)
        per_step = row["lanczos_s"] / max(row["lanczos_steps"], 1)
        print(f"PreResNet-110, N={row['num_samples']}, 1 {row['device']}: "
              f"HVP {row['hvp_s']:.2f} s, Lanczos {row['lanczos_steps']} steps "
              f"{row['lanczos_s']:.1f} s "
              f"({per_step:.2f} s/step; 100 steps ~ {100 * per_step / 60:.1f} min)", flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
