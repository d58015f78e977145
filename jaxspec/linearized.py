"""Cached linearisation of a curvature operator's per-batch products.

At fixed parameters every product ``A_b v`` of a batch repeats the same work that does not
depend on ``v``: the forward pass, the activations' derivatives, the parts of the backward pass
that only read the parameters. ``jax.linearize`` of the product as a function of ``v`` splits it
once into that work's results (the *residuals*, arrays) and a linear program of ``v`` that reads
them; applying the linear program is the same product at the cost of its ``v``-dependent part
only. The residuals take memory, so a budget decides how many batches are cached; the others are
recomputed at every product, as without a cache.

What a cached batch keeps is the operator's ``residuals`` choice: ``"all"`` keeps every value
the linear program reads (JAX's linearisation as it is), ``"compact"`` only the outputs of matrix
products, convolutions and functions with custom derivatives (``jax.nn.relu`` and the other
activations defined with ``jax.custom_jvp``), and the linear program recomputes the elementwise
work between them (normalisations, masks, other activations and the derivatives) at every
application: less memory for some recomputation (``python -m experiments.speed_residuals``
measures both; the README has its figures). ``"auto"`` keeps all where every batch fits the
budget so, and otherwise the compact form where it caches at least twice as many batches. It
is a ``jax.checkpoint`` policy (:func:`residual_policy`) applied to the product before
``jax.linearize``, so any of ``jax.checkpoint_policies`` can be given too.

:meth:`jaxspec.CurvatureOperator.linearized` builds the cache (the Lanczos drivers and
:func:`jaxspec.slq` call it, so a run pays the linearisation once); the host and ``lax.scan``
reductions apply it. The cache is a :class:`LinearCache`, a pytree of the residuals, so an
operator that holds one still goes into ``jax.jit`` as an argument.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.compiler import jit

__all__ = ["AUTO_FRACTION", "LinearCache", "RESIDUALS", "bare_operator", "free_bytes",
           "linearized", "memory_budget", "residual_bytes", "residual_policy"]

# The share of the free memory that linearize="auto" gives the residuals at most: the rest is
# left to the products' own buffers, the Krylov basis and whatever else runs.
AUTO_FRACTION = 0.4

#: The named choices of what a cached batch keeps (see the module docstring).
RESIDUALS = ("auto", "all", "compact")


def _compact(prim, *_, **__) -> bool:
    """The compact form's policy: keep the outputs of matrix products, convolutions and
    custom-derivative functions. An activation such as ``jax.nn.relu`` is the input of the next
    convolution, which the product materialises anyway: keeping it costs one array a layer and
    spares a pass that recomputes and writes it at every product."""
    return prim in (jax.lax.dot_general_p, jax.lax.conv_general_dilated_p) \
        or prim.name == "custom_jvp_call"


def residual_policy(residuals: Any) -> Any:
    """The ``jax.checkpoint`` policy that keeps ``residuals`` of a linearised product: None
    (no checkpoint: every value) for ``"all"``, the outputs of matrix products, convolutions
    and custom-derivative functions (activations) for ``"compact"``, a policy (a callable) as it
    is. ``"auto"`` is decided per operator by :func:`build_cache`; this raises for it and for
    anything else.

    Example:
      >>> import jax
      >>> from jaxspec.linearized import residual_policy
      >>> keep = residual_policy("compact")
      >>> residual_policy("all"), keep(jax.lax.conv_general_dilated_p), keep(jax.lax.add_p)
      (None, True, False)
    """
    if residuals == "all":
        return None
    if residuals == "compact":
        return _compact
    if callable(residuals):
        return residuals
    raise ValueError(f"residuals must be one of {RESIDUALS} or a jax.checkpoint policy, got "
                     f"{residuals!r}")


@dataclasses.dataclass(frozen=True)
class LinearCache:
    """The linearised products of the first ``count`` batches and, if cached, of the tail.

    Attributes:
      maps: the linear maps ``v -> A_b v`` (flat vectors) of batches ``0 .. count - 1``, each a
        ``jax.tree_util.Partial`` of its residuals: a tuple of ``count`` maps (host reduction)
        or one map whose residuals are stacked along a leading axis of ``count`` (``lax.scan``).
      tail: the tail batch's linear map, or None (not cached, or no tail).
      count: the number of cached batches (static).
      stacked: whether ``maps`` is one stacked map (static).
      residuals: what each map keeps, ``"all"``, ``"compact"`` or a ``jax.checkpoint`` policy
        (static; ``"auto"`` resolved).

    Example:
      >>> import jax.numpy as jnp, numpy as np, jaxspec
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 4), jnp.ones(2),
      ...                                 jaxspec.batch_dataset(np.ones(5), 2), reduce="host")
      >>> cache = op.linearized().linear
      >>> cache.count, cache.tail is not None, cache.maps[0](jnp.array([1.0, 0.0])).tolist()
      (2, True, [12.0, 0.0])
      >>> cache.residuals   # every batch fits the budget with all its residuals
      'all'
    """

    maps: Any
    tail: Any
    count: int
    stacked: bool
    residuals: Any = "all"

    def nbytes(self) -> int:
        """Bytes held by the residuals.

        Example:
          >>> import jax.numpy as jnp, numpy as np, jaxspec
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 4),
          ...                                 jnp.ones(3, jnp.float32),
          ...                                 jaxspec.batch_dataset(np.ones(4), 2))
          >>> op.linearized().linear.nbytes() > 0
          True
        """
        return int(sum(x.nbytes for x in jax.tree.leaves((self.maps, self.tail))))


jax.tree_util.register_dataclass(LinearCache, data_fields=["maps", "tail"],
                                 meta_fields=["count", "stacked", "residuals"])


def linearized(matvec: Any, /, rows: int | None = None) -> Any:
    """``matvec.linearized(rows)`` for a :class:`jaxspec.CurvatureOperator`, any other matvec as
    it is: what a loop of many products at one point (Lanczos, SLQ, a trace estimate) calls
    once. ``rows``: the vectors of the run's Krylov basis, the allowance of ``"auto"``
    (:func:`memory_budget`).

    Example:
      >>> import jax.numpy as jnp, jaxspec
      >>> from jaxspec.linearized import linearized
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 3),
      ...                                 jnp.ones(2), jaxspec.batch_dataset(jnp.ones(2), 2))
      >>> linearized(op).linear.count, linearized(abs) is abs
      (1, True)
    """
    build = getattr(matvec, "linearized", None)
    return build(rows) if callable(build) else matvec


def bare_operator(op):
    """``op`` as the programs that compute its per-batch products take it: without its data and
    cache (they go in as arguments or not at all), and without the fields a product does not
    read (``reduce``, ``linearize``), so that operators differing only in those share one trace
    and one compilation. Sizing the residuals (:func:`residual_bytes`, before and after the host
    reduction fixes its group size) and linearising then trace once: for a deep network,
    tracing its linearised product takes seconds.

    Example:
      >>> import jax.numpy as jnp, numpy as np, jaxspec
      >>> from jaxspec.linearized import bare_operator
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2), jnp.ones(2),
      ...                                 jaxspec.batch_dataset(np.ones(4), 2), reduce="host")
      >>> bare = bare_operator(op)
      >>> bare.data, bare.reduce, bare.batch_mv(np.ones(2), jnp.ones(2)).tolist()
      (None, None, [2.0, 2.0])
    """
    return dataclasses.replace(op, data=None, linear=None, reduce=None, linearize=None,
                               residuals=None)


def _linear_map(op, batch, policy=None):
    """The product on ``batch`` as a linear function of a flat vector, linearised; with a
    ``jax.checkpoint`` ``policy``, ``jax.linearize`` keeps only the values the policy saves as
    residuals and the linear program recomputes the others from them."""
    zero = jnp.zeros(op.size, op.dtype)
    product = lambda t: op.batch_mv(batch, op.unravel(t))  # noqa: E731
    if policy is not None:
        product = jax.checkpoint(product, policy=policy)
    return jax.linearize(product, zero)[1]


# Module level, so one compilation per (operator structure, shapes, policy) and, since jit
# returns the traced output structure of its cache, one linear program object: the maps built
# by repeated calls share it and so share the compilations of the programs that apply them.
@functools.partial(jit, static_argnums=3)
def _map_at(op, stacked, index, policy):
    return _linear_map(op, jax.tree.map(
        lambda x: jax.lax.dynamic_index_in_dim(x, index, keepdims=False), stacked), policy)


@functools.partial(jit, static_argnums=2)
def _stacked_maps(op, stacked, policy):
    return jax.lax.map(lambda batch: _linear_map(op, batch, policy), stacked)


_tail_map = jit(_linear_map, static_argnums=2)


@functools.partial(jit, donate_argnums=1)
def apply_maps(maps, acc, v, weights):
    """``acc + sum_j weights[j] maps[j](v)`` for a tuple of linear maps, unrolled (``acc``
    None: the sum alone, with no program to make the zeros it would start from).

    Example:
      >>> import jax.numpy as jnp, numpy as np, jaxspec
      >>> from jaxspec.linearized import apply_maps
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2), jnp.ones(1),
      ...                                 jaxspec.batch_dataset(np.ones(4), 2), reduce="host")
      >>> maps = op.linearized().linear.maps
      >>> apply_maps(maps, jnp.zeros(1), jnp.ones(1), np.array([0.5, 0.5])).tolist()
      [2.0]
      >>> apply_maps(maps, None, jnp.ones(1), np.array([0.5, 0.5])).tolist()
      [2.0]
    """
    for j, linear in enumerate(maps):
        out = linear(v)
        out = weights[j].astype(out.dtype) * out
        acc = out if acc is None else acc + out
    return acc


def residual_bytes(op, batch_like, residuals: Any = "all") -> int:
    """Bytes of the residuals of one batch's linearised product (shapes only, nothing run),
    keeping ``residuals`` (``"all"``, ``"compact"`` or a policy: :func:`residual_policy`).

    ``batch_like`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` shaped like one batch.

    Example:
      >>> import jax, jax.numpy as jnp, jaxspec
      >>> from jaxspec.linearized import residual_bytes
      >>> loss = lambda w, x: jnp.mean(jnp.tanh(x @ w) ** 2)
      >>> op = jaxspec.curvature_operator(loss, jnp.ones((3, 2)),
      ...                                 jaxspec.batch_dataset(jnp.ones((4, 3)), 4))
      >>> like = jax.ShapeDtypeStruct((4, 3), jnp.float64)
      >>> residual_bytes(op, like) > residual_bytes(op, like, "compact") > 0
      True
    """
    policy = residual_policy(residuals)
    shapes = jax.eval_shape(lambda bare, batch: _tail_map(bare, batch, policy),
                            bare_operator(op), batch_like)
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes)))


def free_bytes() -> int:
    """Free memory of the default device: the allocator's limit less what is in use where the
    device reports it (GPU, TPU), else the host's available memory (CPU).

    Example:
      >>> from jaxspec.linearized import free_bytes
      >>> free_bytes() > 0
      True
    """
    device = jax.local_devices()[0]  # this process's own: another's cannot be asked
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def memory_budget(linearize: Any, /, allowance: int | None = None) -> int:
    """The bytes of residuals that ``linearize`` allows.

    ``"auto"``: :data:`AUTO_FRACTION` of the device's free memory; on a CPU, whose memory is
    the host's, shared with everything else, also no more than ``allowance`` bytes (a Lanczos
    run passes the size of its Krylov basis or one call's activations,
    :data:`jaxspec.reduction.GROUP_BYTES`, whichever is more, so the cache takes no more than
    the run holds anyway: a small model's residuals fit, a CNN's activations on hundreds of
    images do not, and the run keeps the footprint of one batch's product at a time). An int:
    that many bytes, on any device; None, False or 0: no cache.

    Example:
      >>> import jax
      >>> from jaxspec.linearized import memory_budget
      >>> memory_budget(None), memory_budget(2**20)
      (0, 1048576)
      >>> jax.default_backend() != "cpu" or memory_budget("auto", allowance=1000) == 1000
      True
    """
    if linearize is None or linearize is False:
        return 0
    if linearize == "auto":
        free = int(AUTO_FRACTION * free_bytes())
        on_cpu = jax.local_devices()[0].platform == "cpu"
        return free if allowance is None or not on_cpu else min(free, int(allowance))
    if isinstance(linearize, (int, np.integer)) and not isinstance(linearize, bool) \
            and linearize >= 0:
        return int(linearize)
    raise ValueError(f"linearize must be 'auto', a number of bytes >= 0, or None; got "
                     f"{linearize!r}")


def _fitting(op, budget: int, like: Any, real: int, multiple: int, residuals: Any):
    """``(count, tail, unit)``: how many of the ``real`` full batches (shaped like ``like``) and
    whether the tail too fit in ``budget`` bytes with ``residuals`` kept, and the residual bytes
    of one full batch (of the tail where there is none)."""
    count, used, unit, tail = 0, 0, 0, op.data.tail
    if like is not None and real:
        unit = residual_bytes(op, like, residuals)
        count = min(real, budget // max(unit, 1))
        if count < real:
            count -= count % multiple
        used = count * unit
    if tail is None:
        return count, False, unit
    tail_bytes = residual_bytes(op, tail, residuals)
    return count, used + tail_bytes <= budget, unit or tail_bytes


def build_cache(op, budget: int, *, stacked: bool, multiple: int = 1) -> LinearCache | None:
    """The cache of ``op`` within ``budget`` bytes: its first full batches (as many as fit,
    rounded down to a multiple of ``multiple`` unless all fit), then the tail if it also fits.
    None if not even one batch fits. Padding (zero-weight) batches are never cached.

    ``op.residuals`` ``"auto"`` keeps all residuals where every batch fits so, else the
    ``"compact"`` form where that caches at least twice as many batches: a cached compact
    product saves between about half and all of what a cached full one saves over an uncached
    product (README, "What a cache keeps"), so twice the batches save at least as much. Sizing
    the compact form costs one more trace of the product, so it is skipped where it cannot
    double the count, or where the budget is under an eighth of one batch's full residuals
    (less than the compact form of any network measured keeps).

    Example:
      >>> import jax.numpy as jnp, numpy as np, jaxspec
      >>> from jaxspec.linearized import build_cache
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 4), jnp.ones(2),
      ...                                 jaxspec.batch_dataset(np.ones(7), 2), reduce="host")
      >>> build_cache(op, 10**9, stacked=False).count, build_cache(op, 0, stacked=False)
      (3, None)
    """
    data, bare = op.data, bare_operator(op)
    weights = np.asarray(data.weights)
    real = int(np.argmin(weights > 0)) if (weights <= 0).any() else weights.shape[0]
    like = None if data.batches is None else jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), data.batches)
    residuals = "all" if op.residuals == "auto" else op.residuals
    count, tail, unit = _fitting(op, budget, like, real, multiple, residuals)
    if op.residuals == "auto" and 2 * (count + tail) < real + (data.tail is not None) \
            and 8 * budget >= unit:
        compact = _fitting(op, budget, like, real, multiple, "compact")
        if compact[0] + compact[1] >= max(2 * (count + tail), 1):
            residuals, (count, tail, _) = "compact", compact
    if count == 0 and not tail:
        return None
    policy = residual_policy(residuals)
    tail = _tail_map(bare, jax.device_put(data.tail), policy) if tail else None
    maps = ()
    if count and stacked:
        maps = _stacked_maps(bare, jax.tree.map(lambda x: x[:count], data.batches), policy)
    elif count:
        on_device = all(isinstance(x, jax.Array) for x in jax.tree.leaves(data.batches))
        maps = tuple(_map_at(bare, data.batches, b, policy) if on_device else
                     _map_at(bare, jax.tree.map(lambda x: x[b:b + 1], data.batches), 0, policy)
                     for b in range(count))
    return LinearCache(maps, tail, int(count), stacked, residuals)


def scan_mean(op, v: jax.Array, /) -> jax.Array:
    """``sum_b w_b A_b v`` of an operator with a stacked cache, traceable: the cached batches by
    ``lax.scan`` over their maps, the others by ``lax.scan`` over the data.

    Example:
      >>> import jax.numpy as jnp, numpy as np, jaxspec
      >>> from jaxspec.linearized import scan_mean
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2), jnp.ones(1),
      ...                                 jaxspec.batch_dataset(np.ones(5), 2), reduce="scan")
      >>> scan_mean(op.linearized(), jnp.ones(1)).tolist()
      [2.0]
    """
    from jaxspec.batching import dataset_mean

    cache, data = op.linear, op.data
    weights = jnp.asarray(data.weights)
    total = jnp.zeros_like(v)
    if cache.count:
        def body(acc, xs):
            linear, w = xs
            out = linear(v)
            return acc + w.astype(out.dtype) * out, None

        total, _ = jax.lax.scan(body, total, (cache.maps, weights[:cache.count]))
    size = 0 if data.batches is None else jax.tree.leaves(data.batches)[0].shape[0]
    rest = data._replace(
        batches=jax.tree.map(lambda x: x[cache.count:], data.batches) if size > cache.count
        else None, weights=weights[cache.count:],
        tail=None if cache.tail is not None else data.tail)
    tangent = op.unravel(v)
    total = total + dataset_mean(lambda batch: op.batch_mv(batch, tangent), rest, v)
    if cache.tail is not None:
        out = cache.tail(v)
        total = total + jnp.asarray(data.tail_weight).astype(out.dtype) * out
    return total
