"""Data-parallel operators (jaxspec.parallel) against the single-device core operators.

This process started JAX with one CPU device, so the runs on 8 and 4 devices and the
two-process run happen in subprocesses (tests/parallel_worker.py, tests/multihost_worker.py),
launched when the module starts (if a test marked ``slow`` is selected) so that they compile
while the in-process tests run; all of them are killed at the end of the module, pass or fail.
Their results are compared here with the core operator with the scan reduction and ``lanczos`` on
one device (the scan reduction), in float64.
"""

from __future__ import annotations

import functools
import os
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import parallel_worker as pw
from checkpoints import recorded_saves
from jaxspec import Spectrum, batch_dataset, curvature_operator, lanczos, run_lanczos
from jaxspec.io import LanczosCheckpoint
from jaxspec.parallel import (
    MeshReduce,
    data_mesh,
    global_batched,
    initialize,
    process_share,
    shard_batched,
)
from workers import ROOT, Workers

pytestmark = pytest.mark.usefixtures("strict_promotion")
CASES = {name: (kind, n, b) for name, kind, n, b in pw.CASES}


# ---- subprocesses ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def workers(request, tmp_path_factory):
    # Started before the first test so they compile while the in-process tests run, and only
    # if a test that reads them (marked slow) was selected.
    if not any(getattr(item, "module", None) is request.module  # doctests have none
               and item.get_closest_marker("slow")
               for item in request.session.items):
        yield None
        return
    w = Workers(str(tmp_path_factory.mktemp("parallel")), timeout=240)
    try:
        out = os.path.join(w.tmp, "devices.json")
        w.start("devices", [os.path.join("tests", "parallel_worker.py"), out, "8", "4"], out)
        port = _free_port()
        out = os.path.join(w.tmp, "multihost.json")  # written by process 0
        for i in range(2):
            w.start(f"host{i}", [os.path.join("tests", "multihost_worker.py"), out], out,
                    {"JAXSPEC_COORDINATOR": f"127.0.0.1:{port}", "JAXSPEC_NUM_PROCESSES": "2",
                     "JAXSPEC_PROCESS_ID": str(i)})
        yield w
    finally:
        w.kill_all()


# ---- single-device references ---------------------------------------------------------------


def run_compiled(f, *args):
    return jax.jit(f)(*args)


def case(name: str, batch_size: int | None = None):
    kind, n, b = CASES[name]
    params = jax.tree.map(jnp.asarray, pw.make_params(kind))
    v = jnp.asarray(pw.probe(ravel_pytree(params)[0].size))
    data = pw.make_data(n)
    op = curvature_operator(pw.LOSSES[kind], params, batch_dataset(data, batch_size or b),
                            reduce="scan")
    return pw.LOSSES[kind], params, data, batch_size or b, v, op


@functools.cache
def references() -> dict:
    """Core single-device ``H v`` of every case (one program), and of the BN loss at half batch."""
    keys = [(name, None) for name in CASES] + [("bn_uneven", CASES["bn_uneven"][2] // 2)]
    cases = [case(*k) for k in keys]
    out = run_compiled(lambda ops, vs: [op(v) for op, v in zip(ops, vs)],
                       [c[5] for c in cases], [c[4] for c in cases])
    return {k: np.asarray(x) for k, x in zip(keys, out)}


@functools.cache
def reference_ritz(name: str) -> np.ndarray:
    *_, v, op = case(name)
    res = run_compiled(lambda op, v: lanczos(op, v, pw.NUM_STEPS), op, v)
    return Spectrum.from_lanczos(res).nodes


def assert_hvp_close(got, name: str) -> None:
    want = references()[(name, None)]
    got = np.asarray(got)
    assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want), name
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max(),
                               err_msg=name)


def assert_ritz_close(got, name: str) -> None:
    want = reference_ritz(name)
    got = np.asarray(got)
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=name)


# ---- in this process (one device), while the workers run ------------------------------------


@given(n=st.integers(1, 500), batch_size=st.integers(1, 40), count=st.integers(1, 5))
def test_process_share_splits_whole_batches_exactly(n, batch_size, count):
    shares = [process_share(n, batch_size, process_index=p, process_count=count)
              for p in range(count)]
    num_full = n // batch_size
    # contiguous, disjoint, whole batches, every full batch once
    assert shares[0].batches.start == 0
    for a, b in zip(shares[:-1], shares[1:]):
        assert a.batches.stop == b.batches.start
    assert shares[-1].batches.stop == num_full * batch_size
    assert all((s.batches.stop - s.batches.start) % batch_size == 0 for s in shares)
    sizes = [s.batches.stop - s.batches.start for s in shares]
    assert max(sizes) - min(sizes) <= batch_size  # balanced to within one batch
    for s in shares:  # every process loads the same global tail
        assert s.tail == (slice(num_full * batch_size, n) if n % batch_size else None)


def test_one_device_operators_equal_core_operator():
    loss, params, data, batch_size, v, _ = case("bn_uneven")
    mesh = data_mesh()
    share = process_share(len(data["y"]), batch_size)
    glob = global_batched({k: x[share.batches] for k, x in data.items()}, mesh,
                          batch_size=batch_size, num_samples=len(data["y"]),
                          tail={k: x[share.tail] for k, x in data.items()})
    ops = [curvature_operator(loss, params, batch_dataset(data, batch_size), reduce=mesh),
           curvature_operator(loss, params, glob, reduce=MeshReduce(mesh))]
    # the operators are pytrees: they go into jit as arguments (as multi-process runs need)
    for hv in run_compiled(lambda ops, v: [op(v) for op in ops], ops, v):
        assert_hvp_close(hv, "bn_uneven")


def test_batch_statistics_are_those_of_the_batch():
    # The BatchNorm-like loss depends on how the data is batched, so the multi-device runs,
    # which must match the single-device operator, check that no batch was split.
    full = references()[("bn_uneven", None)]
    half = references()[("bn_uneven", CASES["bn_uneven"][2] // 2)]
    assert np.linalg.norm(half - full) > 1e-3 * np.linalg.norm(full)


def test_global_batched_checks_the_share():
    mesh = data_mesh()
    data = np.zeros((100, 2))
    with pytest.raises(ValueError, match="full batches"):
        global_batched(data[:50], mesh, batch_size=8, num_samples=100, tail=data[96:])
    with pytest.raises(ValueError, match="tail"):
        global_batched(data[:96], mesh, batch_size=8, num_samples=100)
    # a 2-D mesh: refused with the way out (it counted a process's devices over every axis)
    grid = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    with pytest.raises(ValueError, match="1-D mesh.*MeshReduce"):
        global_batched(data[:96], grid, batch_size=8, num_samples=100, tail=data[96:])


def test_run_lanczos_checks_its_mesh_arguments():
    mesh = data_mesh()
    with pytest.raises(ValueError, match="nonzero"):
        run_lanczos(lambda v: v, jnp.zeros(3), 2, mesh=mesh, shard_basis=True)
    with pytest.raises(ValueError, match="needs a mesh"):
        run_lanczos(lambda v: v, jnp.ones(3), 2, shard_basis=True)
    with pytest.raises(ValueError, match="driver='compiled'"):
        run_lanczos(lambda v: v, jnp.ones(3), 2, mesh=mesh, driver="host")
    with pytest.raises(ValueError, match="no axis"):
        run_lanczos(lambda v: v, jnp.ones(3), 2, mesh=mesh, axis_name="model")
    with pytest.raises(ValueError, match="no axis"):
        MeshReduce(mesh, axis_name="model")


def test_sharded_lanczos_resumes_from_a_checkpoint(tmp_path, monkeypatch):
    """Killed right after its second checkpoint, the run resumes to the uninterrupted result."""
    rng = np.random.default_rng(0)
    m = rng.normal(size=(40, 40))
    a = jnp.asarray(m + m.T)
    v0 = jnp.asarray(rng.normal(size=40))
    matvec = lambda v: a @ v  # noqa: E731
    mesh = data_mesh()
    kw = dict(mesh=mesh, shard_basis=True)
    full = run_lanczos(matvec, v0, 25, return_basis=True, **kw)
    path = str(tmp_path / "state.npz")
    ckpt = lambda: [LanczosCheckpoint(path)]  # noqa: E731
    with pytest.raises(KeyboardInterrupt), recorded_saves(die_after=2) as killed_at:
        run_lanczos(matvec, v0, 25, chunk_size=4, hooks=ckpt(), **kw)
    assert killed_at == [4, 8]
    with pytest.raises(ValueError, match="another start vector"):
        run_lanczos(matvec, 2 * v0 + 1, 25, hooks=ckpt(), **kw)
    with pytest.raises(ValueError, match="another shape"):
        run_lanczos(matvec, v0, 30, hooks=ckpt(), **kw)
    with recorded_saves() as saved:
        resumed = run_lanczos(matvec, v0, 25, chunk_size=4, hooks=ckpt(), return_basis=True,
                              **kw)
    assert saved == [12, 16, 20, 24, 25]  # it went on from step 8
    for field in ("alphas", "betas", "num_valid", "basis"):
        np.testing.assert_array_equal(np.asarray(getattr(resumed, field)),
                                      np.asarray(getattr(full, field)))
    assert resumed.basis.sharding.spec == jax.P(None, "data")
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="one process"):
        run_lanczos(matvec, v0, 25, hooks=ckpt(), **kw)


def test_initialize_reads_the_environment(monkeypatch):
    for var in ("JAXSPEC_COORDINATOR", "JAXSPEC_NUM_PROCESSES", "JAXSPEC_PROCESS_ID",
                "JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE",
                "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert initialize() is False  # nothing to join: a single-process run
    monkeypatch.setenv("JAXSPEC_COORDINATOR", "127.0.0.1:1")
    with pytest.raises(ValueError, match="all of"):
        initialize()


def test_shard_batched_places_whole_batches():
    mesh = data_mesh()
    b = shard_batched(batch_dataset(pw.make_data(100), 32, num_shards=mesh.size), mesh)
    assert b.batches["x"].sharding.spec == jax.P("data")
    assert b.tail["x"].sharding.is_fully_replicated


# ---- 8 and 4 devices, two processes ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("devices", [8, 4])
def test_sharded_hvp_equals_single_device(workers, devices):
    assert workers.result("devices")["jaxspec"] == os.path.join(ROOT, "jaxspec", "__init__.py")
    out = workers.result("devices")[str(devices)]
    expected = list(CASES) if devices == 8 else list(pw.SMALL_MESH_CASES)
    assert sorted(out["hvp"]) == sorted(expected)
    for name, got in out["hvp"].items():
        assert_hvp_close(got, name)
    assert out["uneven_refused"]


@pytest.mark.slow
def test_fingerprint_is_the_same_on_any_number_of_devices(workers):
    """The zero-weight batches that pad 3 batches to 4 or 8 devices leave the fingerprint as
    it is on one device: a checkpoint resumes on another number of devices."""
    core = curvature_operator(pw.mlp_loss, jax.tree.map(jnp.asarray, pw.make_params("mlp")),
                              batch_dataset(pw.make_data(200), 64), reduce="scan")
    for devices in (8, 4):
        assert workers.result("devices")[str(devices)]["fingerprint_few"] == core.fingerprint()


@pytest.mark.slow
@pytest.mark.parametrize("devices", [8, 4])
def test_ritz_values_equal_single_device(workers, devices):
    out = workers.result("devices")[str(devices)]
    assert_ritz_close(out["ritz"]["mlp_uneven"], "mlp_uneven")


@pytest.mark.slow
@pytest.mark.parametrize("devices", [8, 4])
def test_one_collective_per_hvp(workers, devices):
    found = workers.result("devices")[str(devices)]["collectives_per_hvp"]
    assert len(found) == 1 and found[0].startswith("psum"), found


@pytest.mark.slow
def test_parameter_sharded_krylov_basis(workers):
    out = workers.result("devices")["8"]
    assert out["basis_spec"] == "P(None, 'data')"
    assert out["basis_shard_shape"] == [pw.NUM_STEPS + 1, 280 // 8]  # P / devices columns
    assert_ritz_close(out["ritz_sharded_basis"], "mlp_uneven")
    np.testing.assert_allclose(out["ritz_padded_diag"], np.arange(1.0, 14.0), atol=1e-10)
    resumed = out["resumed_padded_diag"]  # killed after two chunks of 4 steps, then resumed
    assert resumed["killed_at"] == [4, 8] and resumed["resumed_saves"] == [12, 13]
    np.testing.assert_allclose(resumed["ritz"], np.arange(1.0, 14.0), atol=1e-10)


@pytest.mark.slow
def test_two_processes_equal_one(workers):
    out = workers.result("host0")
    workers.result("host1")  # process 1 must exit cleanly too
    assert out["jaxspec"] == os.path.join(ROOT, "jaxspec", "__init__.py")
    assert out["local_samples"] == 512  # 8 of the 15 full batches; the other process has 7
    assert_hvp_close(out["hvp"], "mlp_uneven")
    assert out["auto_reduce"] == ["MeshReduce", 4, "data"]  # "auto": the data's own mesh
    assert_hvp_close(out["auto_hvp"], "mlp_uneven")
    assert_ritz_close(out["ritz"], "mlp_uneven")
    assert_ritz_close(out["ritz_sharded_basis"], "mlp_uneven")
