"""No recompilation per Lanczos step, nor per operator: a first run compiles only in its first
step, and a second run on a NEW operator with the same shapes (other parameter values, as during
training) compiles nothing. The regression test for "the README's library snippet must not
retrace or recompile per Lanczos step"."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compiles import compilations
from hessians import make_data, mlp_loss, mlp_params
from jaxspec import LanczosHook, batch_dataset, curvature_operator, run_lanczos, slq

# shapes used by no other test module (sizes 3-6-2: 38 parameters), so the first run compiles
SIZES = (3, 6, 2)
STEPS = 20  # two blocks of the basis (block_size 16)


def run(seed, reduce, how):
    """The README's library snippet: build the operator, run SLQ (or run_lanczos)."""
    params = mlp_params(jax.random.key(seed), SIZES)
    data = batch_dataset(make_data(jax.random.key(6), 37), 8)
    op = curvature_operator(mlp_loss, params, data, **({} if reduce == "auto" else
                                                       {"reduce": reduce}))
    if how == "slq":
        spectrum = slq(op, jax.random.key(seed), op.size, STEPS, num_vectors=2, dtype=op.dtype)
        return spectrum.nodes
    v0 = jnp.asarray(np.random.default_rng(seed).normal(size=op.size))
    return np.asarray(run_lanczos(op, v0, STEPS, driver="host").alphas)


@pytest.mark.parametrize("reduce,how", [("auto", "slq"), ("scan", "host_driver"),
                                        ("scan", "slq")])
def test_second_run_on_a_new_operator_compiles_nothing(reduce, how):
    with compilations() as first:
        a = run(0, reduce, how)
    assert first, "the listener saw no compilation: the event name changed?"
    with compilations() as second:
        b = run(1, reduce, how)
    assert second == [], f"recompiled for new parameter values: {second}"
    assert not np.array_equal(a, b)  # another matrix, really


class CompilesPerStep(LanczosHook):
    """Records, after every step (chunks of one step), how many compilations ``seen`` holds."""

    def __init__(self, seen):
        self.seen, self.counts = seen, []

    def after_chunk(self, snapshot, step, num_steps):
        self.counts.append(len(self.seen))


@pytest.mark.parametrize("reduce,driver", [("auto", "auto"), ("scan", "compiled")])
def test_a_first_run_compiles_in_its_first_step_only(reduce, driver):
    # 30 steps in blocks of 8: four blocks of the basis, filled one after another, all read by
    # the one program of the step; no other test of this module runs 30 steps
    params = mlp_params(jax.random.key(3), SIZES)
    data = batch_dataset(make_data(jax.random.key(6), 37), 8)
    v0 = jnp.asarray(np.random.default_rng(3).normal(size=38))
    with compilations() as seen:
        op = curvature_operator(mlp_loss, params, data, reduce=reduce)
        hook = CompilesPerStep(seen)
        run_lanczos(op, v0, 30, driver=driver, hooks=[hook], chunk_size=1, block_size=8)
    assert len(hook.counts) == 30 and hook.counts[0] > 0
    assert hook.counts[-1] == hook.counts[0], f"compiled after the first step: {seen}"



def test_committed_parameters_compile_in_the_first_step_only():
    # parameters placed on a device explicitly (an Orbax restore, device_put) are committed
    # arrays: a different jit signature from the driver's fresh vectors, which must not make
    # the second step compile again
    params = jax.device_put(mlp_params(jax.random.key(4), SIZES), jax.devices()[0])
    data = batch_dataset(make_data(jax.random.key(6), 37), 8)
    v0 = jnp.asarray(np.random.default_rng(4).normal(size=38))
    with compilations() as seen:
        op = curvature_operator(mlp_loss, params, data, reduce="host")
        hook = CompilesPerStep(seen)
        run_lanczos(op, v0, 12, driver="host", hooks=[hook], chunk_size=1)
    assert hook.counts[-1] == hook.counts[0], f"compiled after the first step: {seen}"
    np.testing.assert_array_equal(op.mv(jax.device_put(v0, jax.devices()[0])), op.mv(v0))
