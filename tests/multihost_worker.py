"""One process of the two-process test in tests/test_parallel.py.

``JAXSPEC_COORDINATOR=127.0.0.1:PORT JAXSPEC_NUM_PROCESSES=2 JAXSPEC_PROCESS_ID=I
python tests/multihost_worker.py OUT.json``: joins the run through
:func:`jaxspec.parallel.initialize` with two CPU devices and gloo collectives, loads only its
share of the data set (:func:`jaxspec.parallel.process_share`), builds the global data set with
:func:`jaxspec.parallel.global_batched`, the operator with ``reduce="mesh"`` (and with
``"auto"``, which must choose the same), and runs Lanczos over all four devices. Process 0 writes the results as JSON. Importing this module starts
nothing.
"""

from __future__ import annotations

import json
import sys

CASE = ("mlp_uneven", "mlp", 1000, 64)


def run() -> dict:
    import jax

    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    import parallel_worker as pw
    from jaxspec import Spectrum, curvature_operator, run_lanczos
    from jaxspec.parallel import data_mesh, global_batched, initialize, process_share

    assert initialize(initialization_timeout=60)
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    _, kind, n, batch_size = CASE
    mesh = data_mesh()
    share = process_share(n, batch_size)
    data = pw.make_data(n)  # a real run would read only these slices from disk
    local = {k: x[share.batches] for k, x in data.items()}
    tail = {k: x[share.tail] for k, x in data.items()}
    batched = global_batched(local, mesh, batch_size=batch_size, num_samples=n, tail=tail)
    params = jax.tree.map(jnp.asarray, pw.make_params(kind))
    mv = curvature_operator(pw.LOSSES[kind], params, batched, reduce="mesh")  # every device
    v = jnp.asarray(pw.probe(ravel_pytree(params)[0].size))
    import jaxspec

    out = {"process": jax.process_index(), "local_samples": int(local["x"].shape[0]),
           "jaxspec": jaxspec.__file__,
           "hvp": np.asarray(mv(v)).tolist()}
    auto = curvature_operator(pw.LOSSES[kind], params, batched)  # reduce="auto"
    out["auto_reduce"] = [type(auto.reduce).__name__, auto.reduce.mesh.size,
                          auto.reduce.axis_name]
    out["auto_hvp"] = np.asarray(auto(v)).tolist()
    res = run_lanczos(mv, v, pw.NUM_STEPS)  # auto: the compiled driver, for the mesh
    out["ritz"] = Spectrum.from_lanczos(res).nodes.tolist()
    res = run_lanczos(mv, v, pw.NUM_STEPS, mesh=mesh, shard_basis=True)
    out["ritz_sharded_basis"] = Spectrum.from_lanczos(res).nodes.tolist()
    return out


if __name__ == "__main__":
    result = run()
    import jax

    if jax.process_index() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)
    jax.distributed.shutdown()
