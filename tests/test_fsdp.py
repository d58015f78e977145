"""Parameters sharded over a model axis (``MeshReduce(mesh, model_axis=...)``) against one device.

The 8-device runs happen in one subprocess (tests/fsdp_worker.py), started when the module
starts (if a test marked ``slow`` is selected) so that it compiles while the in-process tests
run. It computes, in float64, the Ritz values of each model's Hessian on one device and on a 2 x 4
or 1 x 8 mesh with the parameters and the Krylov basis split, and the per-device memory of a
compiled Lanczos step with and without the sharding.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fsdp_worker as fw
from jaxspec import batch_dataset, curvature_operator
from jaxspec.parallel import MeshReduce, data_mesh, param_shardings
from workers import ROOT, Workers


@pytest.fixture(scope="module", autouse=True)
def worker(request, tmp_path_factory):
    if not any(item.module is request.module and item.get_closest_marker("slow")
               for item in request.session.items):
        yield None
        return
    w = Workers(str(tmp_path_factory.mktemp("fsdp")), timeout=600)  # on a loaded 2-core machine
    out = os.path.join(w.tmp, "fsdp.json")
    w.start("fsdp", [os.path.join("tests", "fsdp_worker.py"), out], out)
    try:
        yield w
    finally:
        w.kill_all()


# ---- in this process (one device) -----------------------------------------------------------


def test_param_shardings_split_one_divisible_dimension():
    mesh = data_mesh(model_devices=1)
    params = {"w": jnp.ones((3, 8)), "conv": jnp.ones((3, 3, 4, 4)), "s": jnp.ones(())}
    specs = {k: s.spec for k, s in param_shardings(params, mesh).items()}
    # the largest dimension (the first of equal ones); a scalar has none: replicated
    assert specs == {"w": jax.P(None, "model"), "conv": jax.P(None, None, "model", None),
                     "s": jax.P()}


def test_model_mesh_and_reduce_check_their_axes():
    assert dict(data_mesh(model_devices=1).shape) == {"data": jax.device_count(), "model": 1}
    with pytest.raises(ValueError, match="divisor"):
        data_mesh(model_devices=jax.device_count() + 1)
    with pytest.raises(ValueError, match="no axis"):
        MeshReduce(data_mesh(), model_axis="model")
    with pytest.raises(ValueError, match="must differ"):
        MeshReduce(data_mesh(model_devices=1), model_axis="data")


def test_one_device_model_axis_equals_core_operator():
    loss, params, data = fw.wide_mlp()
    ops = [curvature_operator(loss, params, batch_dataset(data, 6), reduce=r)
           for r in ("scan", MeshReduce(data_mesh(model_devices=1), model_axis="model"))]
    v = jnp.asarray(fw.probe(ops[0].size))
    want, got = (np.asarray(op.mv(v)) for op in ops)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())


# ---- 8 devices ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model,mesh", [(m, "x".join(map(str, s))) for m in fw.MODELS
                                        for s in fw.MESHES[m]])
def test_sharded_ritz_values_equal_one_device(worker, model, mesh):
    out = worker.result("fsdp")
    assert out["jaxspec"] == os.path.join(ROOT, "jaxspec", "__init__.py")
    want = np.asarray(out[model]["ritz_one_device"])
    got = np.asarray(out[model][mesh]["ritz"])
    assert got.shape == want.shape == (fw.NUM_STEPS,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max())
    model_devices = int(mesh.split("x")[1])
    for shape, shard in out[model][mesh]["param_shards"]:
        # each weight split along one dimension over the model devices, or whole if none divides
        split = [a // b for a, b in zip(shape, shard) if a != b]
        assert split == [model_devices] or (split == [] and all(
            n % model_devices for n in shape if n >= model_devices)), (shape, shard)
    # about P / model_devices parameters per device (the replicated leaves are small)
    held = sum(math.prod(s) for _, s in out[model][mesh]["param_shards"])
    assert held <= 1.1 * out[model]["size"] / model_devices + 64


@pytest.mark.slow
def test_sharded_lanczos_step_memory_per_device(worker):
    mem = worker.result("fsdp")["wide_mlp"]["memory"]
    size, rows, devices = mem["size"], mem["rows"], fw.MEMORY_MESH[1]
    total = {k: sum(mem[k][f] for f in ("argument", "output", "temp"))
             for k in ("sharded", "replicated")}
    # The state (the (rows, P) basis, read and written) is split over the 8 devices: the
    # output is the new state, rows x ceil(P / 8) floats and a few scalars per device.
    shard_bytes = rows * math.ceil(size / devices) * 8
    assert shard_bytes <= mem["sharded"]["output"] <= shard_bytes + 1024
    assert mem["replicated"]["output"] >= rows * size * 8
    # Parameters and basis fill this model's memory: the sharded step needs little more than
    # 1 / 8 of it per device (the rest: a gathered vector and the gathered weights).
    assert total["sharded"] < 0.25 * total["replicated"]
