"""Measured inputs of the scaling plan (docs/scaling.md): ``python -m experiments.scaling``.

Two measurements, on CPU, of small versions of the transformer LM (:mod:`jaxspec.models`):

* **FLOPs of one compiled HVP** (``compiled.cost_analysis()["flops"]``) of the next-token loss
  on a batch of ``B x T`` tokens, for several widths and depths, next to the FLOPs of the loss
  and of its gradient. The ratio ``flops / (P x tokens)`` is the constant the plan extrapolates
  with (``2`` for a forward pass, ``6`` for forward and backward, in the usual accounting; the
  attention scores add a term in ``T`` that is small when ``T`` is much less than ``6 width``).
* **Per-device memory of one compiled Lanczos step** (``memory_analysis()``) on 8 simulated CPU
  devices, a 1 x 8 mesh, with the parameters and the Krylov basis split over the devices
  (:class:`jaxspec.parallel.MeshReduce` with a model axis) and with both replicated.

Prints one JSON line per measurement and writes them all to ``--out`` (default
``scaling.json``), which the doc's tables quote. It takes about two minutes of CPU time.

    python -m experiments.scaling
    python -m experiments.scaling --out docs/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

__all__ = ["hvp_flops", "lanczos_step_memory", "main"]

# (layers, width) of the transformers whose HVP FLOPs are measured; 4 heads, MLP 4 x width.
SIZES = [(1, 32), (2, 32), (2, 64), (4, 64), (4, 128)]


def _lm(num_layers: int, width: int, *, vocab: int, seq_len: int, dtype: Any):
    from flax import nnx

    from jaxspec.models import Transformer, hessian_loss

    model = Transformer(vocab, num_layers=num_layers, width=width, num_heads=4,
                        max_len=seq_len, param_dtype=dtype, rngs=nnx.Rngs(0))
    return hessian_loss(model, bn_mode="batch", input_key="tokens")


def _batch(batch_size: int, seq_len: int, vocab: int, num: int | None = None) -> dict:
    import numpy as np

    tokens = np.random.default_rng(0).integers(0, vocab, size=(num or batch_size, seq_len + 1))
    return {"tokens": tokens[:, :-1], "label": tokens[:, 1:]}


def hvp_flops(num_layers: int, width: int, *, batch_size: int = 8, seq_len: int = 64,
              vocab: int = 256) -> dict:
    """FLOPs of the compiled loss, gradient and HVP of one batch (XLA's cost analysis).

    Example:
      >>> from experiments.scaling import hvp_flops
      >>> row = hvp_flops(1, 8, batch_size=1, seq_len=4, vocab=16)
      >>> row["params"], row["hvp_flops"] > row["grad_flops"] > row["loss_flops"] > 0
      (1192, True)
    """
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from jaxspec import hvp

    loss, params = _lm(num_layers, width, vocab=vocab, seq_len=seq_len, dtype=jnp.float32)
    batch = jax.tree.map(jnp.asarray, _batch(batch_size, seq_len, vocab))

    def flops(f, *args):
        cost = jax.jit(f).lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older JAX: one per device
        return float(cost["flops"])

    size = int(ravel_pytree(params)[0].size)
    tokens = batch_size * seq_len
    row = {"layers": num_layers, "width": width, "params": size, "tokens": tokens,
           "loss_flops": flops(loss, params, batch),
           "grad_flops": flops(jax.grad(loss), params, batch),
           "hvp_flops": flops(lambda p, b, t: hvp(loss, p, b, t), params, batch, params)}
    row["hvp_per_param_token"] = row["hvp_flops"] / (size * tokens)
    row["grad_per_param_token"] = row["grad_flops"] / (size * tokens)
    return row


def lanczos_step_memory(num_layers: int = 2, width: int = 64, *, num_devices: int = 8,
                        num_steps: int = 32, batch_size: int = 4, seq_len: int = 32,
                        vocab: int = 256) -> dict:
    """Per-device bytes of one compiled Lanczos step on a ``1 x num_devices`` mesh, parameters
    and basis split over the model axis, and both replicated (``memory_analysis()``).

    JAX must see ``num_devices`` devices (on CPU: ``jax_num_cpu_devices``, set before JAX
    starts; :func:`main` does it).

    Example:
      >>> import jax
      >>> from experiments.scaling import lanczos_step_memory
      >>> row = lanczos_step_memory(1, 8, num_devices=jax.device_count(), num_steps=2,
      ...                           batch_size=1, seq_len=4, vocab=16)
      >>> row["sharded"]["output"] <= row["replicated"]["output"]
      True
    """
    import jax
    import jax.numpy as jnp

    from jaxspec import (batch_dataset, curvature_operator, lanczos_continue, lanczos_init,
                         lanczos_state_sharding)
    from jaxspec.parallel import MeshReduce, data_mesh

    mesh = data_mesh(jax.devices()[:num_devices], model_devices=num_devices)
    loss, params = _lm(num_layers, width, vocab=vocab, seq_len=seq_len, dtype=jnp.float32)
    data = batch_dataset(_batch(batch_size, seq_len, vocab, num=2 * batch_size), batch_size)
    out: dict = {"layers": num_layers, "width": width, "devices": num_devices,
                 "steps": num_steps}
    for sharded in (True, False):
        op = curvature_operator(loss, params, data, reduce=MeshReduce(
            mesh, model_axis="model" if sharded else None))
        dim = op.size
        pad = (-dim) % num_devices if sharded else 0
        shapes = jax.eval_shape(lambda: lanczos_init(jnp.ones(dim + pad, jnp.float32),
                                                     num_steps))
        shardings = lanczos_state_sharding(mesh, shard_basis=sharded,
                                           axis_name=("data", "model"))
        state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                             shapes, shardings)

        def step(op, state, dim=dim, pad=pad):  # the padded product, as run_lanczos makes it
            return lanczos_continue(lambda v: jnp.pad(op.mv(v[:dim]), (0, pad)), state, 1)

        stats = jax.jit(step).lower(op, state).compile().memory_analysis()
        out["params"], out["rows"] = dim, shapes.basis.shape[0]
        out["sharded" if sharded else "replicated"] = {
            k: int(getattr(stats, f"{k}_size_in_bytes"))
            for k in ("argument", "output", "temp", "alias")}
    return out


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Runs both measurements and writes them to ``--out``.

    Example:
      >>> from experiments.scaling import main
      >>> callable(main)   # python -m experiments.scaling runs it (minutes)
      True
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="scaling.json")
    parser.add_argument("--devices", type=int, default=8,
                        help="simulated CPU devices for the memory measurement")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)  # the CPU backend's; set first
    rows = []
    for layers, width in SIZES:
        rows.append({"measure": "hvp_flops", **hvp_flops(layers, width)})
        print(json.dumps(rows[-1]), flush=True)
    rows.append({"measure": "lanczos_step_memory",
                 **lanczos_step_memory(num_devices=min(args.devices, jax.device_count()))})
    print(json.dumps(rows[-1]), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    from jaxspec.atomic import write_text

    write_text(args.out, json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
