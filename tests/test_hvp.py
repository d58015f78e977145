"""Hessian-vector products against dense jax.hessian, and the data-set operator's batching."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

from hessians import dense_hessian, make_data, mlp_loss, mlp_params
from jaxspec import (
    batch_dataset,
    curvature_operator,
    dataset_loss,
    dataset_mean,
    hvp,
    num_samples,
)
from jaxspec.reduction import HostReduce

pytestmark = pytest.mark.usefixtures("strict_promotion")


def test_hvp_matches_dense_hessian_nested_params(key):
    params = mlp_params(key)
    batch = make_data(jax.random.key(1), 16)
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(jax.random.key(2), flat.shape)
    H = dense_hessian(mlp_loss, params, batch)
    out = hvp(mlp_loss, params, batch, unravel(v))
    assert jax.tree.structure(out) == jax.tree.structure(params)
    np.testing.assert_allclose(ravel_pytree(out)[0], H @ v, rtol=1e-10, atol=1e-12)


@functools.lru_cache(maxsize=1)
def _per_sample(num=40):
    """40 samples with each one's dense Hessian and loss (computed once: the examples below
    then compile only the operator under test)."""
    params = mlp_params(jax.random.key(0))
    data = make_data(jax.random.key(7), num)
    flat, unravel = ravel_pytree(params)
    one = lambda f, x, y: mlp_loss(unravel(f), {"x": x[None], "y": y[None]})  # noqa: E731
    hessians = jax.jit(jax.vmap(jax.hessian(one), (None, 0, 0)))(flat, data["x"], data["y"])
    losses = jax.jit(jax.vmap(one, (None, 0, 0)))(flat, data["x"], data["y"])
    return params, data, np.asarray(hessians), np.asarray(losses)


# every example has new shapes, so new compilations: fewer examples keep the suite fast
@settings(max_examples=12)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 12), num_shards=st.integers(1, 4))
def test_dataset_operator_equals_full_data_hessian(n, batch_size, num_shards):
    params, all_data, hessians, losses = _per_sample()
    data = jax.tree.map(lambda x: x[:n], all_data)
    flat, _ = ravel_pytree(params)
    v = jax.random.normal(jax.random.key(3), flat.shape)
    H = hessians[:n].mean(0)  # the mean loss's Hessian is the mean of the per-sample ones
    batched = batch_dataset(data, batch_size, num_shards=num_shards)
    assert num_samples(batched) == n
    if batched.batches is not None:
        assert batched.weights.shape[0] % num_shards == 0
    op = curvature_operator(mlp_loss, params, batched, reduce="scan")
    # the operator is an argument of jit, not a constant of the program
    np.testing.assert_allclose(jax.jit(lambda op, v: op.mv(v))(op, v), H @ v, rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(dataset_loss(mlp_loss, params, batched), losses[:n].mean(),
                               rtol=1e-12)


def test_host_operator_streams_numpy_batches():
    params = mlp_params(jax.random.key(0))
    data = jax.tree.map(np.asarray, make_data(jax.random.key(5), 37))  # ragged: 37 = 4*8 + 5
    batched = batch_dataset(data, 8)
    assert isinstance(batched.batches["x"], np.ndarray)  # stays on the host
    flat, _ = ravel_pytree(params)
    v = jax.random.normal(jax.random.key(4), flat.shape)
    H = dense_hessian(mlp_loss, params, jax.tree.map(jnp.asarray, data))
    for group in (1, 3):
        op = curvature_operator(mlp_loss, params, batched, reduce=HostReduce(group_size=group))
        assert isinstance(op.data.batches["x"], np.ndarray)  # not copied to the device whole
        np.testing.assert_allclose(op.mv(v), H @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("num_shards", [1, 3])
def test_host_operator_on_device_batches(num_shards):
    """Device batches are passed whole and cut out inside the compiled group HVP; zero-weight
    padding batches (num_shards) are skipped, groups do not run past them."""
    params = mlp_params(jax.random.key(0))
    data = make_data(jax.random.key(6), 37)  # 4 full batches of 8 (+ 2 padding at 3 shards)
    batched = batch_dataset(data, 8, num_shards=num_shards)
    assert isinstance(batched.batches["x"], jax.Array)
    flat, _ = ravel_pytree(params)
    v = jax.random.normal(jax.random.key(7), flat.shape)
    H = dense_hessian(mlp_loss, params, data)
    for group in (1, 3, 4, 10):
        op = curvature_operator(mlp_loss, params, batched, reduce=HostReduce(group_size=group))
        np.testing.assert_allclose(op.mv(v), H @ v, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="group_size"):
        HostReduce(group_size=0)


@pytest.mark.parametrize("reduce", ["scan", "host", "mesh"])
def test_ragged_tail_is_exact_not_averaged_per_batch(reduce):
    # a loss whose Hessian depends on the data only through its mean: 1/num_batches weighting of
    # a ragged tail would give a visibly different answer
    loss = lambda w, x: 0.5 * jnp.mean(x) * jnp.sum(w**2)  # noqa: E731
    x = jnp.arange(1.0, 11.0)  # mean 5.5; batches of 4: [1..4], [5..8], [9, 10]
    op = curvature_operator(loss, jnp.ones(2), batch_dataset(x, 4), reduce=reduce)
    np.testing.assert_allclose(op.mv(jnp.ones(2)), [5.5, 5.5], rtol=1e-12)


def test_batch_weights_are_exact():
    b = batch_dataset({"x": np.zeros((10, 2))}, 4, num_shards=3)
    # 2 full batches of 4 padded to 3 with a zero-weight copy, a tail of 2
    np.testing.assert_array_equal(np.asarray(b.weights), [0.4, 0.4, 0.0])
    assert float(b.tail_weight) == 0.2 and b.tail["x"].shape == (2, 2)
    assert num_samples(b) == 10


def test_batch_dataset_rejects_bad_input():
    with pytest.raises(ValueError, match="leading"):
        batch_dataset({"x": np.zeros((4, 2)), "y": np.zeros(5)}, 2)
    with pytest.raises(ValueError, match="leading"):  # a scalar first: no sample axis to read
        batch_dataset({"t": np.float64(1.0), "x": np.zeros((4, 2))}, 2)
    with pytest.raises(ValueError, match="batch_size"):
        batch_dataset(np.zeros(4), 0)
    with pytest.raises(ValueError, match="empty"):
        batch_dataset(np.zeros((0, 3)), 2)
    with pytest.raises(ValueError, match="no arrays"):
        batch_dataset({}, 2)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 12), num_shards=st.integers(1, 3))
def test_dataset_mean_is_the_mean_over_all_samples(n, batch_size, num_shards):
    """Any split into batches (ragged tail, shard padding) gives the plain mean of a pytree."""
    x = np.random.default_rng(n).standard_normal((n, 3))
    batched = batch_dataset({"x": x}, batch_size, num_shards=num_shards)
    like = {"m": jnp.zeros(3), "s": jnp.zeros(())}
    got = jax.jit(lambda b: dataset_mean(
        lambda batch: {"m": batch["x"].mean(0), "s": (batch["x"] ** 2).mean()}, b, like))(batched)
    np.testing.assert_allclose(got["m"], x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["s"], (x ** 2).mean(), rtol=1e-12)
