"""Test helpers: a small MLP loss, data, and dense Hessian references (jax.hessian)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def mlp_params(key, sizes=(3, 5, 2)):
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        k1, k2, key = jax.random.split(key, 3)
        params[f"layer{i}"] = {"w": jax.random.normal(k1, (a, b)) / np.sqrt(a),
                               "b": 0.1 * jax.random.normal(k2, (b,))}
    return params


def mlp_loss(params, batch):
    h = batch["x"].astype(params["layer0"]["w"].dtype)
    layers = [params[k] for k in sorted(params)]
    for i, layer in enumerate(layers):
        h = h @ layer["w"] + layer["b"]
        if i < len(layers) - 1:
            h = jnp.tanh(h)
    logp = jax.nn.log_softmax(h)
    return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))


def make_data(key, n):
    kx, ky = jax.random.split(key)
    return {"x": jax.random.normal(kx, (n, 3)), "y": jax.random.randint(ky, (n,), 0, 2)}


def dense_hessian(loss, params, batch):
    """The dense Hessian of ``loss(params, batch)`` with respect to the flat parameters."""
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda f: loss(unravel(f), batch))(flat)
