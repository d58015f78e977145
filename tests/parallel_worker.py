"""Models, data and a worker for tests/test_parallel.py.

The test process has already started JAX with one CPU device, so the multi-device runs happen in
a fresh process: ``python tests/parallel_worker.py OUT.json 8 4`` asks XLA:CPU for 8 devices
before JAX starts, runs the curvature operators with the mesh reduction (MeshReduce) on a mesh
of 8 devices (every case, a Lanczos run with the basis replicated and one with it sharded) and
on a mesh of 4 (fewer cases), and writes the results as JSON. The test compares them with the
single-device core operators.
Importing this module (as the test and the doctest collector do) starts nothing.
"""

from __future__ import annotations

import json
import sys

import numpy as np

# (name, loss, N, batch size): uneven splits, padding-only devices, a tail-only data set, and a
# loss with batch statistics.
CASES = [
    ("mlp_uneven", "mlp", 1000, 64),  # 15 full batches + a tail of 40
    ("mlp_even", "mlp", 1024, 64),  # 16 full batches, no tail
    ("mlp_few", "mlp", 200, 64),  # 3 full batches + 8: some devices hold only padding
    ("mlp_tail_only", "mlp", 50, 64),  # no full batch at all
    ("bn_uneven", "bn", 1000, 64),  # BatchNorm-like normalisation over each batch
]
SMALL_MESH_CASES = ("mlp_uneven", "bn_uneven")  # the cases also run on the smaller meshes
NUM_STEPS = 30
IN, HIDDEN, CLASSES = 8, 16, 8  # 280 MLP parameters: the basis splits evenly over 8


def make_params(kind: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params = {"w1": rng.normal(size=(IN, HIDDEN)) / np.sqrt(IN),
              "w2": rng.normal(size=(HIDDEN, CLASSES)) / np.sqrt(HIDDEN),
              "b2": 0.1 * rng.normal(size=CLASSES)}
    if kind == "mlp":
        params["b1"] = 0.1 * rng.normal(size=HIDDEN)
    else:  # scale and shift of the normalisation
        params["gamma"] = 1.0 + 0.1 * rng.normal(size=HIDDEN)
        params["beta"] = 0.1 * rng.normal(size=HIDDEN)
    return params


def make_data(n: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, IN)), "y": rng.integers(0, CLASSES, size=n)}


def _cross_entropy(logits, y):
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def mlp_loss(params, batch):
    import jax.numpy as jnp

    h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    return _cross_entropy(h @ params["w2"] + params["b2"], batch["y"])


def bn_loss(params, batch):
    """A hidden layer normalised with the statistics of the batch, as BatchNorm in train mode."""
    import jax.numpy as jnp

    h = batch["x"] @ params["w1"]
    h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5) * params["gamma"] + params["beta"]
    return _cross_entropy(jnp.tanh(h) @ params["w2"] + params["b2"], batch["y"])


LOSSES = {"mlp": mlp_loss, "bn": bn_loss}


def probe(dim: int, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim)


COLLECTIVES = r"\b(psum\w*|all_gather\w*|all_to_all|ppermute|reduce_scatter|pmax|pmin)\b"


def resumed_after_kill(mesh) -> dict:
    """A padded, basis-sharded run killed after its second checkpoint, then resumed: the steps
    saved before the kill, those saved after (it must go on from step 8), the Ritz values."""
    import os
    import tempfile

    import jax.numpy as jnp

    from checkpoints import recorded_saves
    from jaxspec import Spectrum, run_lanczos
    from jaxspec.io import LanczosCheckpoint

    diag = lambda v: jnp.arange(1.0, 14.0) * v  # noqa: E731
    path = os.path.join(tempfile.mkdtemp(), "state.npz")
    args = dict(mesh=mesh, shard_basis=True, chunk_size=4)
    try:
        with recorded_saves(die_after=2) as killed_at:
            run_lanczos(diag, jnp.ones(13), 13, hooks=[LanczosCheckpoint(path)], **args)
    except KeyboardInterrupt:
        pass
    with recorded_saves() as resumed:
        res = run_lanczos(diag, jnp.ones(13), 13, hooks=[LanczosCheckpoint(path)], **args)
    return {"killed_at": killed_at, "resumed_saves": resumed,
            "ritz": Spectrum.from_lanczos(res).nodes.tolist()}


def run(device_counts: list[int]) -> dict:
    """Measurements on meshes of each of ``device_counts`` devices (JAX must not have started).

    The largest count is the number of CPU devices; the smaller meshes use the first devices.
    """
    import re

    import jax

    jax.config.update("jax_num_cpu_devices", max(device_counts))
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from jaxspec import Spectrum, batch_dataset, curvature_operator, run_lanczos
    from jaxspec.parallel import MeshReduce, data_mesh, shard_batched

    # All the products of one mesh in one compiled program: XLA:CPU compiles slowly.
    products = jax.jit(lambda ops, vs: [op(v) for op, v in zip(ops, vs)])
    import jaxspec

    results = {"jaxspec": jaxspec.__file__}  # the checkout under test, not an installed copy
    for num_devices in device_counts:
        mesh = data_mesh(jax.devices()[:num_devices])
        full = num_devices == max(device_counts)
        out = results[str(num_devices)] = {"hvp": {}, "ritz": {}}
        ops, vs, names = [], [], []
        for name, kind, n, batch_size in CASES:
            if not full and name not in SMALL_MESH_CASES:
                continue
            params = jax.tree.map(jnp.asarray, make_params(kind))
            # unpadded NumPy batches: MeshReduce pads them to split evenly and places them
            batched = batch_dataset(make_data(n), batch_size)
            ops.append(curvature_operator(LOSSES[kind], params, batched,
                                          reduce=MeshReduce(mesh)))
            vs.append(jnp.asarray(probe(ravel_pytree(params)[0].size)))
            names.append(name)
        for name, hv in zip(names, products(ops, vs)):
            out["hvp"][name] = np.asarray(hv).tolist()
        mv, v = ops[0], vs[0]  # mlp_uneven
        # One collective per product, outside every loop and branch: the psum of the partial
        # sums (a psum inside a batch's HVP would also deadlock when devices skip padding).
        out["collectives_per_hvp"] = re.findall(COLLECTIVES, str(jax.make_jaxpr(mv)(v)))
        res = run_lanczos(mv, v, NUM_STEPS, chunk_size=NUM_STEPS // 2)  # auto: compiled
        out["ritz"]["mlp_uneven"] = Spectrum.from_lanczos(res).nodes.tolist()
        if full:
            res = run_lanczos(mv, v, NUM_STEPS, mesh=mesh, shard_basis=True,
                              return_basis=True)
            out["ritz_sharded_basis"] = Spectrum.from_lanczos(res).nodes.tolist()
            out["basis_spec"] = str(res.basis.sharding.spec)
            out["basis_shard_shape"] = list(res.basis.addressable_shards[0].data.shape)
            # A dimension the device count does not divide: the basis is padded, not the
            # spectrum.
            res = run_lanczos(lambda v: jnp.arange(1.0, 14.0) * v, jnp.ones(13), 13,
                              mesh=mesh, shard_basis=True)
            out["ritz_padded_diag"] = Spectrum.from_lanczos(res).nodes.tolist()
            out["resumed_padded_diag"] = resumed_after_kill(mesh)
        # 3 full batches padded to 4 or 8: the same matrix, the same fingerprint (a run
        # resumes on another number of devices)
        few = curvature_operator(mlp_loss, jax.tree.map(jnp.asarray, make_params("mlp")),
                                 batch_dataset(make_data(200), 64), reduce=MeshReduce(mesh))
        out["fingerprint_few"] = few.fingerprint()
        try:  # a stack of batches that does not split evenly is refused, not truncated
            shard_batched(batch_dataset(make_data(1000), 64), mesh)
            out["uneven_refused"] = 15 % num_devices == 0
        except ValueError:
            out["uneven_refused"] = True
    return results


if __name__ == "__main__":
    result = run([int(x) for x in sys.argv[2:]])
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
