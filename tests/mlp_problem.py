"""Test helper: a small tanh MLP, its data and its dense Hessian (jax.hessian), built once."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def mlp_loss(params, batch):
    h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    logp = jax.nn.log_softmax(h @ params["w2"] + params["b2"])
    return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))


@functools.lru_cache(maxsize=None)
def mlp_problem():
    """``(params, data, H)``: 45 float64 parameters, 40 samples, the symmetrised Hessian."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    params = {"w1": jax.random.normal(k1, (3, 6)) / np.sqrt(3), "b1": jnp.zeros(6),
              "w2": jax.random.normal(k2, (6, 3)) / np.sqrt(6), "b2": 0.1 * jnp.ones(3)}
    data = {"x": jax.random.normal(k3, (40, 3)), "y": jax.random.randint(k4, (40,), 0, 3)}
    flat, unravel = ravel_pytree(params)
    H = np.asarray(jax.jit(jax.hessian(lambda f: mlp_loss(unravel(f), data)))(flat))
    return params, data, 0.5 * (H + H.T)
