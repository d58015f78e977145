"""Models and a worker for tests/test_fsdp.py: parameters sharded over a model axis.

The test process has already started JAX with one CPU device, so the runs on 8 devices happen
in a fresh process: ``python tests/fsdp_worker.py OUT.json`` asks XLA:CPU for 8 devices before
JAX starts and, in float64, for every model of :data:`MODELS`, computes the Ritz values of the
Hessian on one device, and on its meshes in :data:`MESHES` with the parameters split over the
model axis (``MeshReduce(mesh, model_axis="model")``) and the Krylov basis over every device.
It also compiles one Lanczos step of each model of :data:`MEMORY_MODELS` on the 1 x 8 mesh with
and without that sharding and records ``memory_analysis()`` of both programs. The results go to
OUT.json.
Importing this module (as the test and the doctest collector do) starts nothing.
"""

from __future__ import annotations

import json
import sys

import numpy as np

# (data, model) devices of each model's runs: between them both mesh shapes (the 1 x 8 mesh
# takes the path without shard_map) and both models, one run each to keep the test short
MESHES = {"cnn": [(1, 8)], "transformer": [(2, 4)]}
MEMORY_MESH = (1, 8)
NUM_STEPS = 12


def cnn():
    """A two-stage SmallCNN with BatchNorm (batch statistics) on 8x8 images: 1,586 parameters,
    a classifier bias of 10 that neither 4 nor 8 divides (replicated); 20 images: a tail of 4."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxspec.models import SmallCNN, hessian_loss

    model = SmallCNN(10, widths=(8, 16), param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    loss, params = hessian_loss(model, bn_mode="batch")
    rng = np.random.default_rng(1)
    data = {"image": rng.normal(size=(20, 8, 8, 3)), "label": rng.integers(0, 10, 20)}
    return loss, params, data


def wide_mlp():
    """A one-hidden-layer MLP of 19,210 parameters on 16 samples: the parameters and the basis,
    not the activations, fill the memory (the case the sharding is for)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    params = {"w1": rng.normal(size=(64, 256)) / 8, "b1": np.zeros(256),
              "w2": rng.normal(size=(256, 10)) / 16, "b2": np.zeros(10)}

    def loss(p, batch):
        logits = jnp.tanh(batch["x"] @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))

    data = {"x": rng.normal(size=(16, 64)), "y": rng.integers(0, 10, 16)}
    return loss, jax.tree.map(jnp.asarray, params), data


def transformer():
    """A one-layer transformer LM (width 16, 2 heads, vocabulary 16, 8 positions): 3,968
    parameters; 10 sequences of 8 tokens in batches of 4: a tail of 2."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxspec.models import Transformer, hessian_loss

    model = Transformer(16, num_layers=1, width=16, num_heads=2, max_len=8,
                        param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    loss, params = hessian_loss(model, bn_mode="batch", input_key="tokens")
    tokens = np.random.default_rng(4).integers(0, 16, size=(10, 9))
    return loss, params, {"tokens": tokens[:, :-1], "label": tokens[:, 1:]}


MODELS = {"cnn": cnn, "transformer": transformer}
MEMORY_MODELS = {"wide_mlp": wide_mlp}
BATCH_SIZES = {"cnn": 8, "transformer": 4, "wide_mlp": 8}


def probe(dim: int) -> np.ndarray:
    return np.random.default_rng(2).normal(size=dim)


def step_memory(op, mesh, sharded: bool) -> dict:
    """``memory_analysis()`` of one compiled Lanczos step of ``op`` on ``mesh`` (per device):
    the basis split over every device if ``sharded``, else replicated."""
    import jax
    import jax.numpy as jnp

    from jaxspec import lanczos_continue, lanczos_init, lanczos_state_sharding

    dim = op.size
    pad = (-dim) % mesh.size if sharded else 0
    shapes = jax.eval_shape(lambda: lanczos_init(jnp.ones(dim + pad), NUM_STEPS))
    shardings = lanczos_state_sharding(mesh, shard_basis=sharded, axis_name=("data", "model"))
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                         shapes, shardings)

    def step(op, state):  # the padded product, as run_lanczos makes it
        return lanczos_continue(lambda v: jnp.pad(op.mv(v[:dim]), (0, pad)), state, 1)

    stats = jax.jit(step).lower(op, state).compile().memory_analysis()
    return {k: int(getattr(stats, f"{k}_size_in_bytes"))
            for k in ("argument", "output", "temp", "alias")}


def run() -> dict:
    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import jaxspec
    from jaxspec import Spectrum, batch_dataset, curvature_operator, run_lanczos
    from jaxspec.parallel import MeshReduce, data_mesh

    results = {"jaxspec": jaxspec.__file__}  # the checkout under test, not an installed copy
    for name, make in MODELS.items():
        loss, params, data = make()
        out = results[name] = {}
        batched = batch_dataset(data, BATCH_SIZES[name])
        single = curvature_operator(loss, params, batched, reduce="scan")
        out["size"] = single.size
        v0 = jnp.asarray(probe(single.size))
        out["ritz_one_device"] = Spectrum.from_lanczos(
            run_lanczos(single, v0, NUM_STEPS)).nodes.tolist()
        for shape in MESHES[name]:
            mesh = data_mesh(model_devices=shape[1])
            op = curvature_operator(loss, params, batched,
                                    reduce=MeshReduce(mesh, model_axis="model"))
            res = run_lanczos(op, v0, NUM_STEPS, mesh=mesh, shard_basis=True,
                              axis_name=("data", "model"))
            out["x".join(map(str, shape))] = {
                "ritz": Spectrum.from_lanczos(res).nodes.tolist(),
                "param_shards": [[list(x.shape), list(x.addressable_shards[0].data.shape)]
                                 for x in jax.tree.leaves(op.params)],
            }
    mesh = data_mesh(model_devices=MEMORY_MESH[1])
    for name, make in MEMORY_MODELS.items():
        loss, params, data = make()
        ops = {sharded: curvature_operator(loss, params, batch_dataset(data, BATCH_SIZES[name]),
                                           reduce=MeshReduce(mesh, model_axis="model"
                                                             if sharded else None))
               for sharded in (True, False)}
        results.setdefault(name, {})["memory"] = {
            "size": ops[True].size, "rows": -(-(NUM_STEPS + 1) // 16) * 16,
            "sharded": step_memory(ops[True], mesh, True),
            "replicated": step_memory(ops[False], mesh, False)}
    return results


if __name__ == "__main__":
    result = run()
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
