"""Training throughput (images/s) of the real training step: ``python -m experiments.train_speed``.

Times :func:`train.steps.build_trainer`'s jitted step (gather from the device-resident set,
augmentation, forward, backward, SGD update) on synthetic CIFAR-shaped data, after compilation.
Defaults: PreResNet-20 on a CPU, PreResNet-20 and PreResNet-110 on a GPU/TPU, batch 128, all
local devices.

    python -m experiments.train_speed                       # the default model for this machine
    python -m experiments.train_speed --model vgg16 --steps 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Sequence

__all__ = ["measure", "main"]


def measure(
    model: str,
    /,
    *,
    batch_size: int = 128,
    steps: int = 10,
    warmup: int = 2,
    num_classes: int = 10,
    prng_impl: str = "threefry2x32",
) -> dict[str, Any]:
    """Images per second of the training step of ``model`` (compilation excluded).

    Args:
      model: a :func:`jaxspec.models.create_model` name.
      batch_size: global batch size.
      steps: timed steps.
      warmup: untimed steps first (the first one compiles).
      num_classes: outputs of the model.
      prng_impl: JAX PRNG for augmentation and dropout.

    Returns:
      A dict: model, device kind and count, batch size, compile seconds, seconds per step,
      images per second.

    Example:
      >>> from experiments.train_speed import measure
      >>> r = measure("mlp", batch_size=32, steps=2, warmup=1, prng_impl="rbg")
      >>> r["images_per_s"] > 0
      True
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxspec.data import synthetic_cifar
    from train.configs import TrainConfig
    from train.steps import build_trainer, epoch_key

    num_train = batch_size * (warmup + steps)
    data = synthetic_cifar(num_train=num_train, num_test=8, num_classes=num_classes)
    config = TrainConfig(model=model, batch_size=batch_size, epochs=1, prng_impl=prng_impl)
    trainer = build_trainer(
        config, num_classes=num_classes, num_train=num_train, mean=data.mean, std=data.std
    )
    replicated = jax.sharding.NamedSharding(trainer.mesh, jax.sharding.PartitionSpec())
    x = jax.device_put(data.x_train, replicated)
    y = jax.device_put(data.y_train, replicated)
    perm = jnp.arange(num_train, dtype=jnp.int32)
    key = epoch_key(config, 0)
    state = trainer.init_state
    t0 = time.perf_counter()
    for s in range(warmup):
        state, out = trainer.train_step(state, x, y, perm, np.int32(s), key)
    jax.block_until_ready((state, out))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(warmup, warmup + steps):
        state, out = trainer.train_step(state, x, y, perm, np.int32(s), key)
    jax.block_until_ready((state, out))
    elapsed = time.perf_counter() - t0
    device = jax.local_devices()[0]
    return {
        "model": model,
        "device": device.device_kind,
        "platform": device.platform,
        "devices": len(jax.local_devices()),
        "batch_size": batch_size,
        "warmup_s": round(compile_s, 2),
        "s_per_step": elapsed / steps,
        "images_per_s": batch_size * steps / elapsed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; prints one JSON line per model.

    Example:
      >>> from experiments.train_speed import main
      >>> main(["--model", "mlp", "--steps", "1", "--batch-size", "16"])  # doctest: +ELLIPSIS
      {"model": "mlp", ...}
      0
    """
    parser = argparse.ArgumentParser(
        prog="python -m experiments.train_speed", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", action="append", help="model name (repeatable); default per platform"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--prng-impl", default=None, help="default: rbg on CPU, threefry2x32 elsewhere"
    )
    args = parser.parse_args(argv)

    import jax

    cpu = jax.default_backend() == "cpu"
    models = args.model or (["preresnet20"] if cpu else ["preresnet20", "preresnet110"])
    prng = args.prng_impl or ("rbg" if cpu else "threefry2x32")
    for m in models:
        r = measure(
            m, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, prng_impl=prng
        )
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
