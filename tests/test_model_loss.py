"""Hessian-ready loss adapter: exact HVPs in both BatchNorm modes, purity, dropout off."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import jaxspec
from jaxspec import hvp
from jaxspec.models import MLP, SmallCNN, hessian_loss, train_loss

# conftest enables x64: compare in float64 then; the float32 fallback keeps the file runnable alone.
F64 = bool(jax.config.jax_enable_x64)
DTYPE = jnp.float64 if F64 else jnp.float32
TOL = {"rtol": 1e-9, "atol": 1e-11} if F64 else {"rtol": 2e-3, "atol": 1e-5}


def _batch(n: int, *, seed: int = 0, dtype: jnp.dtype = jnp.float32) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(n, 6, 6, 3)), dtype),
        "label": jnp.asarray(rng.integers(0, 3, n), jnp.int32),
    }


def _cnn(*, dropout: float = 0.0) -> nnx.Module:
    """A tiny conv net with BatchNorm (131 parameters) whose running statistics are not trivial."""
    model = SmallCNN(3, widths=(4,), dropout=dropout, rngs=nnx.Rngs(0))
    # One training-mode forward moves the running averages away from (0, 1).
    nnx.jit(lambda m, x: m(x))(model, _batch(32, seed=9)["image"] * 2.0 + 0.5)
    return model


def _cast(tree: object) -> object:
    return jax.tree.map(lambda x: x.astype(DTYPE), tree)


def _snapshot(model: nnx.Module) -> list[np.ndarray]:
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return [np.array(x) for x in jax.tree.leaves(state)]


# Jitted once for the module, keyed on the loss function: tests that share a loss function and
# shapes share the compilation (XLA:CPU compiles dominate this file's time).
_hvp = jax.jit(hvp, static_argnums=0)
_loss = jax.jit(lambda loss_fn, params, batch: loss_fn(params, batch), static_argnums=0)


@pytest.fixture(scope="module")
def cnn() -> dict:
    model = _cnn()
    out = {"model": model, "snapshot": _snapshot(model), "data": _batch(8, dtype=DTYPE)}
    for mode in ("batch", "running"):
        loss_fn, params = hessian_loss(model, bn_mode=mode)
        out[mode] = (loss_fn, _cast(params))
    return out


@pytest.mark.parametrize("bn_mode", ["batch", "running"])
def test_hvp_equals_dense_hessian(cnn: dict, bn_mode: str) -> None:
    loss_fn, params = cnn[bn_mode]
    batch = cnn["data"]
    flat, unravel = ravel_pytree(params)
    assert flat.size == 131 and flat.dtype == DTYPE
    dense = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat)
    v = jax.random.normal(jax.random.key(3), flat.shape, DTYPE)
    hv = _hvp(loss_fn, params, batch, unravel(v))
    np.testing.assert_allclose(ravel_pytree(hv)[0], dense @ v, **TOL)
    np.testing.assert_allclose(dense, dense.T, **TOL)


def test_modes_match_train_and_eval_forward(cnn: dict) -> None:
    batch = cnn["data"]
    values = {mode: float(_loss(*cnn[mode], batch)) for mode in ("batch", "running")}
    # "batch" is the training-mode function, "running" the eval-mode one (on copies of the model).
    train_copy, eval_copy = nnx.clone(cnn["model"]), nnx.clone(cnn["model"])
    train_copy.train()
    eval_copy.eval()
    forward = nnx.jit(lambda m, b: train_loss(m, b)[0])
    batch32 = {"image": batch["image"].astype(jnp.float32), "label": batch["label"]}
    np.testing.assert_allclose(values["batch"], forward(train_copy, batch32), rtol=1e-5)
    np.testing.assert_allclose(values["running"], forward(eval_copy, batch32), rtol=1e-5)
    assert abs(values["batch"] - values["running"]) > 1e-3


def test_the_modes_are_two_operators_with_two_fingerprints(cnn: dict) -> None:
    """Both modes' losses are closures named alike; a checkpoint of one must not resume the
    other, and a new model with the same weights and statistics gives the same digest."""
    data = jaxspec.batch_dataset(cnn["data"], 8)
    ops = {mode: jaxspec.curvature_operator(*cnn[mode], data, reduce="host")
           for mode in ("batch", "running")}
    assert ops["batch"].fingerprint() != ops["running"].fingerprint()
    again = jaxspec.curvature_operator(*hessian_loss(cnn["model"], bn_mode="running"), data,
                                       reduce="host")
    assert again.with_params(cnn["running"][1]).fingerprint() == ops["running"].fingerprint()


def test_running_mode_is_per_sample_batch_mode_is_not(cnn: dict) -> None:
    batch = cnn["data"]
    halves = [jax.tree.map(lambda x: x[:4], batch), jax.tree.map(lambda x: x[4:], batch)]
    for mode in ("running", "batch"):
        whole = _loss(*cnn[mode], batch)
        split = 0.5 * (_loss(*cnn[mode], halves[0]) + _loss(*cnn[mode], halves[1]))
        if mode == "running":
            np.testing.assert_allclose(whole, split, **TOL)
        else:  # each half is normalised with its own statistics
            assert abs(float(whole - split)) > 1e-4


def test_dropout_is_off(cnn: dict) -> None:
    model = _cnn(dropout=0.5)  # same init and statistics as cnn["model"], plus dropout
    loss_fn, params = hessian_loss(model, bn_mode="batch")
    params = _cast(params)
    a, b = _loss(loss_fn, params, cnn["data"]), _loss(loss_fn, params, cnn["data"])
    assert float(a) == float(b)
    np.testing.assert_allclose(a, _loss(*cnn["batch"], cnn["data"]), **TOL)
    assert model.dropout.deterministic is False and model.dropout.rate == 0.5  # model untouched


class FlagNet(nnx.Module):
    """A user model in the flag style: ``model(x, train=...)`` sets BatchNorm and dropout."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.inner = SmallCNN(3, widths=(4,), dropout=0.0, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for conv, bn in zip(self.inner.convs, self.inner.norms):
            x = jax.nn.relu(bn(conv(x), use_running_average=not train))
            x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = self.drop(jnp.mean(x, axis=(1, 2)), deterministic=not train)
        return self.inner.fc(x)


def test_flag_model_via_forward(cnn: dict) -> None:
    net = FlagNet(rngs=nnx.Rngs(0))
    nnx.update(net.inner, nnx.state(cnn["model"]))  # same weights and running statistics
    batch = cnn["data"]
    for mode, train in (("batch", True), ("running", False)):
        forward = lambda m, x, t=train: m(x, train=t)  # noqa: E731
        loss_fn, params = hessian_loss(net, bn_mode=mode, forward=forward)
        # Dropout is forced off although train=True asks for it.
        np.testing.assert_allclose(
            _loss(loss_fn, _cast(params), batch), _loss(*cnn[mode], batch), **TOL
        )
    with pytest.raises(ValueError, match="bn_mode='running'"):
        fn, p = hessian_loss(net, bn_mode="running", forward=lambda m, x: m(x, train=True))
        jax.eval_shape(fn, p, batch)  # the check runs while tracing
    with pytest.raises(ValueError, match="bn_mode='batch'"):
        fn, p = hessian_loss(net, bn_mode="batch", forward=lambda m, x: m(x, train=False))
        jax.eval_shape(fn, p, batch)


def test_no_batchnorm_weight_decay_and_bad_mode() -> None:
    model = MLP(3, in_features=6 * 6 * 3, hidden=(), rngs=nnx.Rngs(0))
    batch = _batch(8, dtype=DTYPE)
    fb, params = hessian_loss(model, bn_mode="batch")
    fr, _ = hessian_loss(model, bn_mode="running")
    fwd, _ = hessian_loss(model, bn_mode="running", weight_decay=0.1)
    params = _cast(params)
    assert float(_loss(fb, params, batch)) == float(_loss(fr, params, batch))
    sq = sum(float(jnp.sum(p**2)) for p in jax.tree.leaves(params))
    expected = _loss(fr, params, batch) + 0.05 * sq
    np.testing.assert_allclose(_loss(fwd, params, batch), expected, **TOL)
    hv = ravel_pytree(_hvp(fwd, params, batch, params))[0]
    hv0 = ravel_pytree(_hvp(fr, params, batch, params))[0]
    np.testing.assert_allclose(hv, hv0 + 0.1 * ravel_pytree(params)[0], **TOL)
    with pytest.raises(ValueError, match="bn_mode"):
        hessian_loss(model, bn_mode="train")  # type: ignore[arg-type]


def test_model_untouched_by_hessian_computations(cnn: dict) -> None:
    # Last in the file: by now every test above has computed losses and HVPs of cnn["model"].
    loss_fn, params = cnn["batch"]
    jax.block_until_ready(_hvp(loss_fn, params, cnn["data"], params))  # compiled already
    after = _snapshot(cnn["model"])
    assert len(after) == len(cnn["snapshot"]) == 7
    for a, b in zip(cnn["snapshot"], after):
        np.testing.assert_array_equal(a, b)
    bns = [m for _, m in nnx.iter_graph(cnn["model"]) if isinstance(m, nnx.BatchNorm)]
    modes = [m.use_running_average for m in bns]
    assert modes == [False]  # still in training mode, as built


@pytest.mark.parametrize("bad", [3, -1])
def test_labels_out_of_range_are_never_a_silent_number(bad):
    """A label == num_classes made the loss NaN while the HVP stayed finite, and -1 was taken as
    the last class: eagerly it is a ValueError; under jit loss and HVP are NaN, never finite."""
    model = MLP(3, in_features=4, hidden=(), rngs=nnx.Rngs(0))
    loss_fn, params = hessian_loss(model, bn_mode="running")
    batch = {"image": jnp.ones((4, 2, 2, 1), jnp.float32), "label": jnp.array([0, 1, bad, 2])}
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss_fn(params, batch)
    with pytest.raises(ValueError, match="index 2"):
        train_loss(model, batch)
    loss = jax.jit(loss_fn)(params, batch)
    hv = jax.jit(hvp, static_argnums=0)(loss_fn, params, batch, params)
    assert np.isnan(float(loss))
    assert all(np.isnan(np.asarray(x)).all() for x in jax.tree.leaves(hv))
    # Valid labels: untouched.
    good = dict(batch, label=jnp.array([0, 1, 2, 2]))
    assert np.isfinite(float(jax.jit(loss_fn)(params, good)))
