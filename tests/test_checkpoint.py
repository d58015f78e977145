"""jaxspec.io.LanczosCheckpoint on curvature operators: kill and resume with identical Ritz values
on both drivers, refusal to resume under another operator, unreadable files, missing folders."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints import recorded_saves
from hessians import make_data, mlp_loss, mlp_params
from jaxspec import batch_dataset, curvature_operator, ritz_pairs, run_lanczos
from jaxspec.io import LanczosCheckpoint, load_lanczos_state, slq_hooks

pytestmark = pytest.mark.usefixtures("strict_promotion")

STEPS = 9
DRIVERS = [("compiled", "scan"), ("host", "host")]


def operator(reduce, scale=1.0, n=37):
    params = jax.tree.map(lambda x: scale * x, mlp_params(jax.random.key(0)))
    return curvature_operator(mlp_loss, params, batch_dataset(make_data(jax.random.key(6), n), 8),
                              reduce=reduce)


def start(op):
    return jnp.asarray(np.random.default_rng(3).normal(size=op.size))


@pytest.mark.parametrize("driver,reduce", DRIVERS)
def test_kill_and_resume_gives_identical_ritz_values(tmp_path, driver, reduce):
    op = operator(reduce)
    v0 = start(op)
    path = tmp_path / "run.npz"
    kw = dict(driver=driver, chunk_size=3)
    with pytest.raises(KeyboardInterrupt), recorded_saves(die_after=2) as killed_at:
        run_lanczos(op, v0, STEPS, hooks=[LanczosCheckpoint(path)], **kw)
    assert killed_at == [3, 6] and int(load_lanczos_state(path).step) == 6
    with recorded_saves() as saved:
        resumed = run_lanczos(op, v0, STEPS, hooks=[LanczosCheckpoint(path)], **kw)
    assert saved == [9]  # it went on from step 6
    full = run_lanczos(op, v0, STEPS, **kw)
    np.testing.assert_array_equal(ritz_pairs(resumed).values, ritz_pairs(full).values)
    np.testing.assert_array_equal(np.asarray(resumed.alphas), np.asarray(full.alphas))
    np.testing.assert_array_equal(np.asarray(resumed.betas), np.asarray(full.betas))


@pytest.mark.parametrize("change", ["params", "data"])
def test_refuses_to_resume_under_another_operator(tmp_path, change):
    op = operator("scan")
    v0 = start(op)
    path = tmp_path / "run.npz"
    run_lanczos(op, v0, STEPS, hooks=[LanczosCheckpoint(path)], chunk_size=4)
    other = operator("scan", scale=1.01) if change == "params" else operator("scan", n=36)
    assert other.fingerprint() != op.fingerprint()
    with pytest.raises(ValueError, match="another operator.*fingerprint") as err:
        run_lanczos(other, v0, STEPS, hooks=[LanczosCheckpoint(path)])
    assert op.fingerprint() in str(err.value) and other.fingerprint() in str(err.value)
    assert str(path) in str(err.value)
    # the same matrix built again (other objects, same values) resumes
    again = run_lanczos(operator("scan"), v0, STEPS, hooks=[LanczosCheckpoint(path)])
    assert int(again.num_valid) == STEPS
    # an explicit fingerprint for a plain callable is checked too
    mv = jax.jit(lambda v: 2.0 * v)
    ours = tmp_path / "plain.npz"
    run_lanczos(mv, v0, 3, hooks=[LanczosCheckpoint(ours, fingerprint="model-a")])
    with pytest.raises(ValueError, match="fingerprint"):
        run_lanczos(mv, v0, 3, hooks=[LanczosCheckpoint(ours, fingerprint="model-b")])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_unreadable_checkpoint_names_the_file_and_the_way_out(tmp_path, damage):
    op = operator("scan")
    v0 = start(op)
    path = tmp_path / "run.npz"
    run_lanczos(op, v0, 4, hooks=[LanczosCheckpoint(path)])
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        np.savez(path, something=np.ones(3))
    with pytest.raises(ValueError) as err:
        run_lanczos(op, v0, 4, hooks=[LanczosCheckpoint(path)])
    message = str(err.value)
    assert str(path) in message and "delete it" in message, message


def test_checkpoint_in_a_missing_folder_fails_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LanczosCheckpoint(tmp_path / "nowhere" / "run.npz")
    hooks = slq_hooks(checkpoint_dir=tmp_path / "made")  # slq_hooks creates its folder
    assert os.path.isdir(tmp_path / "made") and len(hooks(0, 1)) == 1
