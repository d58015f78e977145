"""Hessian-vector products, for one batch and for a whole data set.

Everything here is a pure function of ``loss_fn(params, batch) -> scalar`` (the mean loss over
``batch``), where ``params`` and ``batch`` are arbitrary pytrees. Nothing is jitted behind the
caller's back: every function can be traced by ``jax.jit``, except :func:`host_hessian_matvec`,
which is the host-driven operator and jit-compiles its per-batch HVP itself.

Two operators over a data set:

* :func:`hessian_matvec` reduces the batches with ``lax.scan``: traceable, so a whole Lanczos run
  compiles to one XLA program (the GPU/TPU default).
* :func:`host_hessian_matvec` loops over the batches in Python and calls a jitted HVP on each group
  of batches. XLA:CPU runs convolutions inside loop bodies many times slower than outside a loop
  (JAX issue #12868), so this is the CPU default; it also streams data sets that do not fit on the
  device, because the batches may stay in host memory as NumPy arrays.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = [
    "Batched",
    "batch_dataset",
    "dataset_hvp",
    "dataset_loss",
    "dataset_mean",
    "hessian_matvec",
    "host_hessian_matvec",
    "hvp",
    "num_samples",
]

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


class Batched(NamedTuple):
    """A data set cut into equal batches stacked along a leading axis, plus a ragged tail.

    Attributes:
      batches: pytree whose leaves have shape ``(num_batches, batch_size, ...)``.
      weights: ``(num_batches,)`` weight of each batch in the data-set mean: ``batch_size / N``,
        or 0 for a padding batch (added so the batches split evenly over devices).
      tail: pytree of the last, smaller batch (leaves ``(r, ...)``, ``0 < r < batch_size``), or
        ``None`` when the batch size divides N.
      tail_weight: ``r / N`` (0 when there is no tail).

    The data-set loss is ``sum_b weights[b] * loss(batches[b]) + tail_weight * loss(tail)``, which
    equals the mean over all N samples exactly, including when the last batch is smaller.

    Example:
      >>> import numpy as np
      >>> from jaxspec import batch_dataset
      >>> b = batch_dataset({"x": np.arange(10.0)}, 4)
      >>> b.batches["x"].shape, b.tail["x"].tolist(), float(b.tail_weight)
      ((2, 4), [8.0, 9.0], 0.2)
      >>> round(float(b.weights.sum() + b.tail_weight), 6)
      1.0
    """

    batches: Any
    weights: jax.Array
    tail: Any
    tail_weight: jax.Array


def batch_dataset(data: Any, batch_size: int, /, *, num_shards: int = 1) -> Batched:
    """Cuts a data set into stacked batches for :func:`hessian_matvec` and friends.

    Samples keep their order: batch ``b`` holds samples ``b * batch_size ...``. When the number
    of full batches is not a multiple of ``num_shards`` (the number of devices the batches will be
    split over), zero-weight copies of the first batch are appended, so no sample is dropped or
    counted twice. Arrays stay where they are (NumPy arrays stay on the host).

    Args:
      data: pytree of arrays sharing a leading sample axis of length N.
      batch_size: samples per batch (BatchNorm in batch mode takes its statistics over these).
      num_shards: make the number of stacked batches divisible by this.

    Returns:
      A :class:`Batched`.

    Example:
      >>> import numpy as np
      >>> from jaxspec import batch_dataset
      >>> b = batch_dataset({"x": np.zeros((10, 2))}, 4)
      >>> b.batches["x"].shape, b.tail["x"].shape, [float(w) for w in b.weights]
      ((2, 4, 2), (2, 2), [0.4, 0.4])
    """
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("batch_dataset: `data` has no arrays")
    n = int(np.shape(leaves[0])[0])
    for leaf in leaves:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != n:
            raise ValueError(
                "batch_dataset: every array in `data` needs the same leading (sample) axis; got "
                f"shapes {[np.shape(x) for x in leaves]}"
            )
    if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
        raise ValueError(f"batch_dataset: batch_size must be a positive int, got {batch_size!r}")
    if num_shards < 1:
        raise ValueError(f"batch_dataset: num_shards must be >= 1, got {num_shards}")
    if n == 0:
        raise ValueError("batch_dataset: the data set is empty")
    num_full, rest = divmod(n, batch_size)
    num_pad = (-num_full) % num_shards if num_full else 0
    take = num_full * batch_size

    def stack(x):
        full = x[:take].reshape((num_full, batch_size) + tuple(np.shape(x)[1:]))
        if num_pad:
            lib = np if isinstance(x, np.ndarray) else jnp
            full = lib.concatenate([full, lib.repeat(full[:1], num_pad, axis=0)], axis=0)
        return full

    # float64 on the host: jnp.asarray narrows it to float32 unless x64 is on, so a float64
    # Hessian is not rounded through a float32 weight.
    weights = np.concatenate([np.full(num_full, batch_size / n), np.zeros(num_pad)])
    tail = jax.tree.map(lambda x: x[take:], data) if rest else None
    return Batched(
        batches=jax.tree.map(stack, data) if num_full else None,
        weights=weights,
        tail=tail,
        tail_weight=np.float64(rest / n),
    )


def num_samples(batched: Batched, /) -> int:
    """Number N of real samples in a :class:`Batched` (padding batches not counted).

    Example:
      >>> import numpy as np
      >>> from jaxspec import batch_dataset, num_samples
      >>> num_samples(batch_dataset(np.zeros((10, 3)), 4, num_shards=4))
      10
    """
    n = 0
    if batched.batches is not None:
        size = int(np.shape(jax.tree.leaves(batched.batches)[0])[1])
        n += size * int(np.count_nonzero(np.asarray(batched.weights)))
    if batched.tail is not None:
        n += int(np.shape(jax.tree.leaves(batched.tail)[0])[0])
    return n


def dataset_mean(per_batch: Callable[[Any], Any], batched: Batched, like: Any, /) -> Any:
    """The data-set mean of a per-batch quantity: ``sum_b w_b per_batch(batch_b)``.

    ``per_batch`` maps one batch to a pytree shaped like ``like`` that is the mean over that
    batch's samples (a loss, a gradient, an HVP); the batch weights ``w_b`` (size over N) make
    the sum the mean over all N samples, exactly, with a ragged tail. The stacked batches are
    reduced with ``lax.scan``, so under ``jax.jit`` it is one XLA program.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import batch_dataset, dataset_mean
      >>> b = batch_dataset({"x": jnp.arange(10.0)}, 4)  # batches of 4, 4 and a tail of 2
      >>> float(dataset_mean(lambda batch: batch["x"].mean(), b, jnp.zeros(())))
      4.5
    """
    total = jax.tree.map(jnp.zeros_like, like)
    if batched.batches is not None:

        def body(acc, xs):
            batch, w = xs
            out = per_batch(batch)
            return jax.tree.map(lambda a, o: a + w.astype(o.dtype) * o, acc, out), None

        total, _ = jax.lax.scan(body, total, (batched.batches, jnp.asarray(batched.weights)))
    if batched.tail is not None:
        out = per_batch(batched.tail)
        tw = jnp.asarray(batched.tail_weight)
        total = jax.tree.map(lambda a, o: a + tw.astype(o.dtype) * o, total, out)
    return total


def dataset_hvp(loss_fn: LossFn, params: Any, batched: Batched, v: Any, /) -> Any:
    """Hessian of the data-set mean loss times ``v``, batches reduced with ``lax.scan``.

    Traceable: under ``jax.jit`` the whole reduction is one XLA program.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean over ``batch``.
      params: pytree of parameters.
      batched: the data set, from :func:`batch_dataset`.
      v: pytree like ``params``.

    Returns:
      ``H v`` for ``H`` the Hessian of the mean loss over all N samples, structured like ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import batch_dataset, dataset_hvp
      >>> loss = lambda w, x: 0.5 * jnp.mean(x[:, 0]) * jnp.sum(w**2)
      >>> data = batch_dataset(jnp.arange(5.0)[:, None], 2)  # mean of x is 2
      >>> dataset_hvp(loss, jnp.ones(2), data, jnp.ones(2)).tolist()
      [2.0, 2.0]
    """
    return dataset_mean(lambda b: hvp(loss_fn, params, b, v), batched, params)


def dataset_loss(loss_fn: LossFn, params: Any, batched: Batched, /) -> jax.Array:
    """The data-set mean loss, reduced like :func:`dataset_hvp` (exact with a ragged tail).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import batch_dataset, dataset_loss
      >>> float(dataset_loss(lambda p, x: jnp.mean(x) * p, 1.0, batch_dataset(jnp.arange(5.0), 2)))
      2.0
    """
    like = jnp.zeros((), jnp.result_type(*jax.tree.leaves(params)))
    return dataset_mean(lambda b: loss_fn(params, b), batched, like)


def _flat_dataset_hvp(loss_fn: LossFn, params: Any, batched: Batched, v: jax.Array) -> jax.Array:
    unravel = ravel_pytree(params)[1]
    return ravel_pytree(dataset_hvp(loss_fn, params, batched, unravel(v)))[0]


def hessian_matvec(loss_fn: LossFn, params: Any, batched: Batched, /) -> Callable:
    """The data-set Hessian as a traceable matvec on flat vectors.

    The returned function maps a flat vector of length ``P`` (the number of parameters, in
    ``ravel_pytree`` order) to ``H v``, flat. It can be jitted, vmapped, and called inside
    ``lax.fori_loop``, so a whole :func:`jaxspec.lanczos` run is one program. It is a
    ``jax.tree_util.Partial``: a pytree whose leaves are ``params`` and the data, so it can be
    passed *into* a jitted function as an argument instead of being closed over (closed-over
    arrays become constants of the compiled program: slow to compile, and a copy of the data
    set); :func:`jaxspec.run_lanczos` does this.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import batch_dataset, hessian_matvec
      >>> loss = lambda p, x: jnp.mean(x) * jnp.sum(p["a"] ** 2)
      >>> mv = hessian_matvec(loss, {"a": jnp.ones(2)}, batch_dataset(jnp.ones(3), 2))
      >>> mv(jnp.array([1.0, 0.0])).tolist()
      [2.0, 0.0]
    """
    return jax.tree_util.Partial(functools.partial(_flat_dataset_hvp, loss_fn), params, batched)


# Module-level jit, loss_fn static: operators with the same loss_fn and shapes share one
# compilation (a jit made per host_hessian_matvec call recompiled for every new operator).
# ``acc`` is donated: the running sum is updated in place, group after group.
@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _group_hvp(loss_fn, acc, v, params, stacked, start, weights):
    """``acc + sum_j weights[j] H_{start + j} v`` over ``len(weights)`` consecutive batches of
    ``stacked``. The batches are cut out inside the program (``dynamic_index_in_dim``): a
    slice taken eagerly outside would cost a dispatch and a copy per array per batch."""
    tangent = ravel_pytree(params)[1](v)
    for j in range(weights.shape[0]):  # unrolled: no XLA loop around the convolutions
        batch = jax.tree.map(
            lambda x: jax.lax.dynamic_index_in_dim(x, start + j, keepdims=False), stacked)
        out = ravel_pytree(hvp(loss_fn, params, batch, tangent))[0]
        acc = acc + weights[j].astype(out.dtype) * out
    return acc


def host_hessian_matvec(
    loss_fn: LossFn, params: Any, batched: Batched, /, *, group_size: int = 4
) -> Callable:
    """The data-set Hessian as a host-driven matvec: a Python loop over jitted batch HVPs.

    Each call loops over the batches in groups of ``group_size`` consecutive batches (unrolled
    inside one jitted function, so no convolution runs inside an XLA loop) and accumulates
    ``w_b H_b v`` on the device. Batches already on the device are passed whole and cut out
    inside the compiled function. NumPy batches stay in host memory: each group is copied to the
    device when it is used, so data sets larger than device memory work. Zero-weight (padding)
    batches are skipped. Not traceable; use it with ``driver="host"`` in
    :func:`jaxspec.run_lanczos` / :func:`jaxspec.slq`.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: pytree of parameters.
      batched: the data set, from :func:`batch_dataset`.
      group_size: batches per compiled call. More batches: fewer dispatches, and on CPU XLA
        runs the independent batch HVPs of a call side by side (measured on 2 cores: 4 batches
        per call 1.2-1.5x faster than 1); but the compile time grows with it.

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> from jaxspec import batch_dataset, host_hessian_matvec
      >>> loss = lambda p, x: jnp.mean(x) * jnp.sum(p ** 2)
      >>> mv = host_hessian_matvec(loss, jnp.ones(2), batch_dataset(np.ones(3, np.float32), 2))
      >>> mv(jnp.array([1.0, 0.0])).tolist()
      [2.0, 0.0]
    """
    if not (isinstance(group_size, (int, np.integer)) and group_size >= 1):
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    flat = ravel_pytree(params)[0]
    # params and data are arguments, not closed-over constants of the compiled function
    group_hvp = functools.partial(_group_hvp, loss_fn)

    weights = np.asarray(batched.weights)
    # (start, stop): runs of consecutive nonzero-weight batches, cut into groups of group_size
    real = np.flatnonzero(weights)
    runs = np.split(real, np.flatnonzero(np.diff(real) != 1) + 1) if real.size else []
    groups = [(int(run[k]), int(run[min(k + group_size, run.size) - 1]) + 1)
              for run in runs for k in range(0, run.size, group_size)]
    on_device = all(isinstance(x, jax.Array) for x in jax.tree.leaves(batched.batches))
    tail = None
    if batched.tail is not None:  # a stack of one batch, made once
        tail = jax.tree.map(lambda x: x[None], batched.tail)
        tail_weight = np.asarray([batched.tail_weight])

    def matvec(v):
        acc = jnp.zeros_like(flat)
        for start, stop in groups:
            if on_device:
                acc = group_hvp(acc, v, params, batched.batches, start, weights[start:stop])
            else:
                group = jax.tree.map(lambda x: x[start:stop], batched.batches)
                acc = group_hvp(acc, v, params, group, 0, weights[start:stop])
        if tail is not None:
            acc = group_hvp(acc, v, params, tail, 0, tail_weight)
        return acc

    return matvec
