"""Curvature-matrix-vector products on one batch.

Everything here is a pure function of ``loss_fn(params, batch) -> scalar`` (the mean loss over
``batch``), where ``params`` and ``batch`` are arbitrary pytrees; nothing is jitted behind the
caller's back, and every function can be traced, vmapped and jitted. The data-set operator
(:mod:`jaxspec.operator`) reduces these products over batches.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

__all__ = ["hvp"]

LossFn = Callable[[Any, Any], jax.Array]


def hvp(loss_fn: LossFn, params: Any, batch: Any, v: Any, /) -> Any:
    """Hessian-vector product of ``loss_fn`` at ``params`` on one batch, forward over reverse.

    Computes ``H v`` with ``H = d^2 loss_fn(params, batch) / d params^2`` as
    ``jax.jvp(jax.grad(loss_fn), (params,), (v,))``: one forward-mode pass through the gradient,
    about the cost of two to three gradients, and never forms ``H``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: the point at which the Hessian is taken (any pytree of float arrays).
      batch: the data, held fixed (any pytree).
      v: the direction, a pytree with the structure and dtypes of ``params``.

    Returns:
      ``H v``, with the structure of ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import hvp
      >>> loss = lambda p, x: 0.5 * jnp.sum(x * p["w"] ** 2)
      >>> hvp(loss, {"w": jnp.ones(3)}, jnp.array([1.0, 2.0, 3.0]), {"w": jnp.ones(3)})["w"].tolist()
      [1.0, 2.0, 3.0]
    """
    grad_fn = jax.grad(lambda p: loss_fn(p, batch))
    return jax.jvp(grad_fn, (params,), (v,))[1]


