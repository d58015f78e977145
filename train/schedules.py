"""The paper's learning-rate schedule (Granziol et al. 2020, equation 11), per epoch.

With ``t`` the epoch index (0-based), ``T`` the number of epochs and ``r = 0.01``::

    alpha(t) = alpha0                                     if t / T <= 0.5
               alpha0 * (1 - (1 - r) (t / T - 0.5) / 0.4) if 0.5 < t / T <= 0.9
               alpha0 * r                                 otherwise

The rate is constant within an epoch, as in the SWA code base (``learning_rate_schedule`` called
once per epoch). It is continuous: at ``t / T = 0.9`` the middle branch equals ``alpha0 * r``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

__all__ = ["epoch_lr_schedule", "paper_lr"]


def paper_lr(epoch: Any, /, *, base_lr: float, total_epochs: int, ratio: float = 0.01) -> Any:
    """Equation 11: the learning rate of epoch ``epoch`` (0-based).

    Python numbers give a Python float (computed in float64); JAX integer arrays give a
    ``float32`` array, so the function can run inside a jitted optimiser. The branch is chosen with
    exact integer arithmetic (``2 t <= T``, ``10 t <= 9 T``), so boundaries do not depend on
    floating-point rounding of ``t / T``.

    Args:
      epoch: epoch index ``t`` (int or integer array).
      base_lr: ``alpha0``.
      total_epochs: ``T``.
      ratio: ``r``, the final learning rate as a fraction of ``alpha0``.

    Returns:
      The learning rate.

    Example:
      >>> from train.schedules import paper_lr
      >>> [round(paper_lr(t, base_lr=0.1, total_epochs=10), 6) for t in (0, 5, 7, 9, 10)]
      [0.1, 0.1, 0.0505, 0.001, 0.001]
    """
    # 1 - (1 - r)(t/T - 0.5)/0.4 == r + (1 - r)(9T - 10t)/(4T): the same value, but with an exact
    # integer numerator, so float32 does not cancel catastrophically near t/T = 0.9.
    if isinstance(epoch, int):
        if 2 * epoch <= total_epochs:
            return float(base_lr)
        if 10 * epoch <= 9 * total_epochs:
            frac = (9 * total_epochs - 10 * epoch) / (4 * total_epochs)
            return base_lr * (ratio + (1.0 - ratio) * frac)
        return base_lr * ratio
    t = jnp.asarray(epoch)
    frac = (9 * total_epochs - 10 * t).astype(jnp.float32) / jnp.float32(4 * total_epochs)
    middle = jnp.float32(base_lr) * (jnp.float32(ratio) + jnp.float32(1.0 - ratio) * frac)
    lr = jnp.where(
        2 * t <= total_epochs,
        jnp.float32(base_lr),
        jnp.where(10 * t <= 9 * total_epochs, middle, jnp.float32(base_lr * ratio)),
    )
    return lr.astype(jnp.float32)


def epoch_lr_schedule(
    *, base_lr: float, total_epochs: int, steps_per_epoch: int, ratio: float = 0.01
) -> Any:
    """An ``optax`` schedule (step count -> rate) applying :func:`paper_lr` once per epoch.

    Because the rate is a function of the optimiser's own step count, it is part of the
    checkpointed optimiser state, and a resumed run continues the schedule exactly.

    Args:
      base_lr: ``alpha0``.
      total_epochs: ``T``.
      steps_per_epoch: optimiser steps in one epoch.
      ratio: ``r``.

    Returns:
      ``schedule(count) -> float32 learning rate``.

    Example:
      >>> from train.schedules import epoch_lr_schedule
      >>> s = epoch_lr_schedule(base_lr=0.1, total_epochs=10, steps_per_epoch=3)
      >>> round(float(s(20)), 6), round(float(s(29)), 6)  # epochs 6 and 9
      (0.07525, 0.001)
    """

    def schedule(count: Any) -> Any:
        epoch = jnp.asarray(count) // steps_per_epoch
        return paper_lr(epoch, base_lr=base_lr, total_epochs=total_epochs, ratio=ratio)

    return schedule
