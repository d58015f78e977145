"""How a curvature operator sums its per-batch products: reduction strategies.

A strategy is a small frozen (hashable) object, a static field of
:class:`jaxspec.CurvatureOperator`, with two methods: ``prepare(op)`` places the operator's
arrays where the strategy reads them, once, when the operator is built; ``apply(op, v)``
returns ``sum_b w_b A_b v`` over the batches (weights ``batch size / N``: exact with a ragged
tail). All strategies give the same numbers up to the order of float additions.

* :class:`ScanReduce`: ``lax.scan`` over the stacked batches. Traceable: a whole Lanczos run
  is one XLA program. The default on one GPU/TPU, and on CPU for products with large activations
  (:data:`SCAN_BYTES`). (Convolutions inside ``lax.scan`` are as fast as outside on CPU:
  jaxspec's programs put them in the order XLA:CPU's fast kernels take,
  :mod:`jaxspec.convolutions`.)
* :class:`HostReduce`: a Python loop over groups of batches, each group one jitted call with
  the batches unrolled. NumPy batches stay in host memory and are copied group by group, so
  data sets larger than the device work. The default on CPU for products with small
  activations, where it pairs with the Lanczos host driver, whose steps read the basis in
  place. Not traceable: the Lanczos host driver calls it (``driver="auto"`` picks that driver
  for it).
* :class:`jaxspec.parallel.MeshReduce`: the batches split over a device mesh
  (``jax.shard_map``), one ``psum`` per product; one host or many. The default where one
  process has several GPUs or TPUs, and for data spread over several processes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.batching import dataset_mean
from jaxspec.compiler import jit
from jaxspec.linearized import (apply_maps, bare_operator, build_cache, free_bytes,
                                residual_bytes, scan_mean)

__all__ = ["GROUP_BYTES", "SCAN_BYTES", "HostReduce", "ScanReduce", "resolve_reduce"]

# The activations one call of the host loop may hold, by default: batches are grouped until
# their linearised products' residuals (the activations a product keeps for its backward pass)
# reach this. A call costs a dispatch and a pass over the P-vector it returns, so a small
# model's batches all go in one call, while a CNN's (hundreds of MiB each) go one at a time.
GROUP_BYTES = 64 * 2**20

# On a CPU, "auto" sums the batches in one compiled ``lax.scan`` (and Lanczos takes the compiled
# driver) when one batch's product keeps at least this much (a CNN's activations), and the host
# loop below it. Each call of a compiled program allocates its temporary buffer afresh, and
# glibc's malloc serves blocks this large (its mmap threshold stops growing at 32 MiB) with a
# fresh mapping whose every page faults on first touch: a host loop of such products pays that
# at every batch of every product, a loop inside one program once. Small products (an MLP's)
# stay on the host loop, whose driver reads the Krylov basis in place.
SCAN_BYTES = 32 * 2**20


@functools.partial(jit, inline=True)
def _scan_apply(op, v):
    if op.linear is not None:
        return scan_mean(op, v)
    tangent = op.unravel(v)
    return dataset_mean(lambda batch: op.batch_mv(batch, tangent), op.data, v)


@dataclasses.dataclass(frozen=True)
class ScanReduce:
    """Batches summed by ``lax.scan`` inside one program (traceable; the default on one GPU
    or TPU).

    Example:
      >>> import jax.numpy as jnp, jaxspec
      >>> from jaxspec.reduction import ScanReduce
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
      ...                                 jnp.ones(2), jaxspec.batch_dataset(jnp.arange(5.0), 2),
      ...                                 reduce=ScanReduce())
      >>> op.mv(jnp.ones(2)).tolist()   # 2 mean(x) v
      [4.0, 4.0]
    """

    driver = "compiled"

    def prepare(self, op):
        """Puts the parameters, data and transform on the default device, once.

        Example:
          >>> import jax, jax.numpy as jnp, numpy as np, jaxspec
          >>> from jaxspec.reduction import ScanReduce
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.sum(p ** 2), jnp.ones(1),
          ...                                 jaxspec.batch_dataset(np.ones(2), 2),
          ...                                 reduce=ScanReduce())
          >>> isinstance(op.data.batches, jax.Array)
          True
        """
        return jax.device_put(op)

    def apply(self, op, v: jax.Array, /) -> jax.Array:
        """``sum_b w_b A_b v`` in one compiled program (called eagerly: one cached program).

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> from jaxspec.reduction import ScanReduce
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
          ...                                 jnp.ones(1), jaxspec.batch_dataset(jnp.ones(3), 2))
          >>> ScanReduce().apply(op, jnp.ones(1)).tolist()
          [2.0]
        """
        return _scan_apply(op, v)

    def linearize(self, op, budget: int, /):
        """``op`` with the linearised products of the batches that fit in ``budget`` bytes, their
        residuals stacked (:mod:`jaxspec.linearized`).

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> from jaxspec.reduction import ScanReduce
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
          ...                                 jnp.ones(1), jaxspec.batch_dataset(jnp.ones(3), 2),
          ...                                 reduce="scan")
          >>> ScanReduce().linearize(op, 10**6).linear.count
          1
        """
        return dataclasses.replace(op, linear=build_cache(op, budget, stacked=True))


# Module level, one compilation per (operator structure, shapes): the operator goes in as an
# argument with its data left out (NumPy batches are passed group by group), and the running
# sum ``acc`` is donated, so it is updated in place group after group.
@functools.partial(jit, donate_argnums=1)
def _group_apply(op, acc, v, stacked, start, weights):
    """``acc + sum_j weights[j] A_{start + j} v`` over ``len(weights)`` consecutive batches of
    ``stacked``, unrolled (``acc`` None: the sum alone). The batches are cut out inside the
    program: a slice taken eagerly outside would cost a dispatch and a copy per array per
    batch."""
    tangent = op.unravel(v)
    for j in range(weights.shape[0]):
        batch = jax.tree.map(
            lambda x: jax.lax.dynamic_index_in_dim(x, start + j, keepdims=False), stacked)
        out = op.batch_mv(batch, tangent)
        out = weights[j].astype(out.dtype) * out
        acc = out if acc is None else acc + out
    return acc


@dataclasses.dataclass(frozen=True)
class HostReduce:
    """Batches summed by a Python loop over jitted groups of ``group_size`` batches.

    The CPU default for products with small activations (:func:`resolve_reduce`). Zero-weight
    (padding) batches are skipped. Batches already on the device are passed whole and cut out
    inside the compiled group; NumPy batches stay on the host and each group is copied to the
    device when it is used. One batch per call holds one batch's activations at a time (the
    least memory, as a PyTorch loop over batches; ``group_size=None`` groups batches up to
    :data:`GROUP_BYTES` of activations). More batches per group means fewer dispatches and
    XLA:CPU runs the group's products side by side, but each group holds the activations of all
    its batches at once and compiles longer: memory traded for fewer dispatches (docs/speed.md
    has the figures).

    Example:
      >>> import jax.numpy as jnp, numpy as np, jaxspec
      >>> from jaxspec.reduction import HostReduce
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
      ...                                 jnp.ones(2), jaxspec.batch_dataset(np.ones(5), 2),
      ...                                 reduce=HostReduce(group_size=2))
      >>> op.mv(jnp.array([1.0, 0.0])).tolist()
      [2.0, 0.0]
    """

    group_size: int | None = None
    driver = "host"

    def __post_init__(self):
        size = self.group_size
        if size is not None and not (isinstance(size, (int, np.integer)) and size >= 1):
            raise ValueError(f"group_size must be a positive int or None, got {size!r}")

    def resolved(self, op) -> "HostReduce":
        """The strategy with its group size fixed for ``op`` (itself if already fixed): as many
        batches per call as fit in :data:`GROUP_BYTES` of activations, at least one.

        Example:
          >>> import jax.numpy as jnp, numpy as np, jaxspec
          >>> from jaxspec.reduction import HostReduce
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
          ...                                 jnp.ones(2), jaxspec.batch_dataset(np.ones(6), 2))
          >>> op.reduce, HostReduce(2).resolved(op)   # small batches: all three in one call
          (HostReduce(group_size=3), HostReduce(group_size=2))
        """
        if self.group_size is not None:
            return self
        return HostReduce(_group_size(op, _batch_bytes(op)))

    def prepare(self, op):
        """Parameters and transform to the device; the data stays where it is; the weights go
        to the host (the loop reads them there).

        Example:
          >>> import jax.numpy as jnp, numpy as np, jaxspec
          >>> from jaxspec.reduction import HostReduce
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.sum(p ** 2), jnp.ones(1),
          ...                                 jaxspec.batch_dataset(np.ones(4), 2),
          ...                                 reduce=HostReduce())
          >>> type(op.data.batches).__name__
          'ndarray'
        """
        data = op.data._replace(weights=np.asarray(op.data.weights),
                                tail_weight=np.asarray(op.data.tail_weight))
        op = dataclasses.replace(op, params=_uncommitted(op.params),
                                 transform=_uncommitted(op.transform), data=data)
        return dataclasses.replace(op, reduce=self.resolved(op))

    def apply(self, op, v: jax.Array, /) -> jax.Array:
        """``sum_b w_b A_b v``, group by group (eager only).

        Example:
          >>> import jax.numpy as jnp, numpy as np, jaxspec
          >>> from jaxspec.reduction import HostReduce
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
          ...                                 jnp.ones(1), jaxspec.batch_dataset(np.ones(3), 2))
          >>> HostReduce().apply(op, jnp.ones(1)).tolist()
          [2.0]
        """
        if isinstance(v, jax.core.Tracer):
            raise TypeError(
                "an operator with the host reduction loops over batch groups in Python and "
                "cannot be traced (jit, vmap, lax loops); drive it from the host (the solvers' "
                "driver='host' or 'auto'), or take op.with_reduce('scan') (or a mesh)")
        data, cache = op.data, op.linear
        bare = bare_operator(op)
        acc = None  # the first group's program starts the sum: no program to make zeros
        weights = np.asarray(data.weights)
        on_device = all(isinstance(x, jax.Array) for x in jax.tree.leaves(data.batches))
        cached = 0 if cache is None else cache.count
        for start, stop in self.resolved(op)._groups(weights):
            if stop <= cached:  # the cache's count is a multiple of group_size, or all
                acc = apply_maps(cache.maps[start:stop], acc, v, weights[start:stop])
            elif on_device:
                acc = _group_apply(bare, acc, v, data.batches, start, weights[start:stop])
            else:
                group = jax.tree.map(lambda x: x[start:stop], data.batches)
                acc = _group_apply(bare, acc, v, group, 0, weights[start:stop])
        if cache is not None and cache.tail is not None:
            acc = apply_maps((cache.tail,), acc, v, np.asarray([data.tail_weight]))
        elif data.tail is not None:
            tail = jax.tree.map(lambda x: x[None], data.tail)
            acc = _group_apply(bare, acc, v, tail, 0, np.asarray([data.tail_weight]))
        return _zeros_like(v) if acc is None else acc  # None: every weight is zero

    def linearize(self, op, budget: int, /):
        """``op`` with the linearised products of the batches that fit in ``budget`` bytes
        (:mod:`jaxspec.linearized`), whole groups of ``group_size`` unless all fit.

        Example:
          >>> import jax.numpy as jnp, numpy as np, jaxspec
          >>> from jaxspec.reduction import HostReduce
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
          ...                                 jnp.ones(1), jaxspec.batch_dataset(np.ones(4), 2),
          ...                                 reduce=HostReduce())
          >>> HostReduce().linearize(op, 10**6).linear.count
          2
        """
        size = self.resolved(op).group_size
        return dataclasses.replace(op, linear=build_cache(op, budget, stacked=False,
                                                          multiple=size))

    def _groups(self, weights: np.ndarray) -> list[tuple[int, int]]:
        """``(start, stop)``: runs of consecutive nonzero-weight batches, cut into groups."""
        real = np.flatnonzero(weights)
        runs = np.split(real, np.flatnonzero(np.diff(real) != 1) + 1) if real.size else []
        size = self.group_size
        return [(int(run[k]), int(run[min(k + size, run.size) - 1]) + 1)
                for run in runs for k in range(0, run.size, size)]


# one dispatch (eager, jnp.zeros_like dispatches several small programs)
_zeros_like = jax.jit(jnp.zeros_like)


def _uncommitted(tree: Any) -> Any:
    """``tree`` on the default device, uncommitted (as the driver's own vectors are).

    A committed array (``device_put`` to a device, an Orbax restore) is another jit signature
    than an uncommitted one, and it makes every result computed from it committed: products of
    committed parameters with the driver's fresh vectors would compile once more at the second
    step. Copying such leaves once here keeps a whole run on one signature.
    """
    def place(x):
        if isinstance(x, jax.Array) and x.committed:
            return jnp.asarray(np.asarray(x))
        return jax.device_put(x)

    return jax.tree.map(place, tree)


def _batch_bytes(op) -> int:
    """Bytes of residuals of one stacked batch's product (0 without stacked batches)."""
    batches = op.data.batches
    if batches is None:
        return 0
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), batches)
    return residual_bytes(op, like)


def _group_size(op, per_batch: int) -> int:
    """As many of ``op``'s batches as fit in :data:`GROUP_BYTES` of residuals, at least one."""
    batches = op.data.batches
    if batches is None:
        return 1
    count = jax.tree.leaves(batches)[0].shape[0]
    return int(min(count, max(1, GROUP_BYTES // max(per_batch, 1))))


def _auto(op) -> Any:
    """``"auto"``'s strategy for ``op``: for batches spread over several processes
    (:func:`jaxspec.parallel.global_batched`), the mesh reduction over the mesh and axis they
    are split on; off CPU, the mesh reduction over every device when one process has several
    (data parallel: each device sums its share of the batches), else :class:`ScanReduce`; on a
    CPU, ``ScanReduce`` where a batch's product keeps at least :data:`SCAN_BYTES` and the data's
    copy on the device (NumPy batches are copied whole) takes at most a quarter of the free
    memory, else :class:`HostReduce` (its group size fixed)."""
    from jaxspec.parallel import MeshReduce, data_mesh

    leaves = jax.tree.leaves((op.data.batches, op.data.tail))
    spread = [x for x in leaves if isinstance(x, jax.Array) and not x.is_fully_addressable]
    if spread:  # arrays over several processes: no one copy of them to scan
        laid_out = spread[0].sharding  # global_batched's: the batches split over a mesh axis
        if isinstance(laid_out, jax.sharding.NamedSharding) and laid_out.spec \
                and isinstance(laid_out.spec[0], str):
            return MeshReduce(laid_out.mesh, axis_name=laid_out.spec[0])
        return HostReduce()
    if jax.default_backend() != "cpu":
        if jax.process_count() == 1 and jax.local_device_count() > 1:
            return MeshReduce(data_mesh())
        return ScanReduce()
    per_batch = _batch_bytes(op)
    copied = sum(np.size(x) * np.dtype(x.dtype).itemsize for x in leaves
                 if not isinstance(x, jax.Array))
    if per_batch >= SCAN_BYTES and 4 * copied <= free_bytes():
        return ScanReduce()
    return HostReduce(_group_size(op, per_batch))


def resolve_reduce(reduce: Any, op: Any, /) -> Any:
    """The strategy that ``reduce`` names, for the operator ``op`` (not yet placed).

    ``"auto"``: for batches spread over processes (:func:`jaxspec.parallel.global_batched`),
    the mesh reduction they are laid out for; on GPU/TPU, :class:`ScanReduce` on one device and
    the mesh reduction over all of them when a process has several; on a CPU, ``ScanReduce``
    for products that keep large activations (:data:`SCAN_BYTES` a batch: a CNN's), unless the
    data's copy would take more than a quarter of the free memory, and :class:`HostReduce`
    otherwise (an MLP's);
    ``"host"``, ``"scan"``; ``"mesh"``: :class:`jaxspec.parallel.MeshReduce` over every device;
    a :class:`jax.sharding.Mesh`: ``MeshReduce`` over it; a strategy object is returned as is.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, jaxspec
      >>> from jaxspec.reduction import HostReduce, ScanReduce, resolve_reduce
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
      ...                                 jnp.ones(2), jaxspec.batch_dataset(np.ones(8), 4))
      >>> resolve_reduce("scan", op), resolve_reduce(HostReduce(2), op)
      (ScanReduce(), HostReduce(group_size=2))
      >>> # a tiny product: the host loop on a CPU
      >>> jax.default_backend() != "cpu" or resolve_reduce("auto", op) == HostReduce(2)
      True
    """
    from jaxspec.parallel import MeshReduce, data_mesh

    if isinstance(reduce, str):
        if reduce == "auto":
            return _auto(op)
        if reduce == "scan":
            return ScanReduce()
        if reduce == "host":
            return HostReduce()
        if reduce == "mesh":
            return MeshReduce(data_mesh())
        raise ValueError(f"reduce must be 'auto', 'scan', 'host', 'mesh', a Mesh or a strategy; "
                         f"got {reduce!r}")
    if isinstance(reduce, jax.sharding.Mesh):
        return MeshReduce(reduce)
    if hasattr(reduce, "prepare") and hasattr(reduce, "apply"):
        return reduce
    raise TypeError(f"reduce must be a name, a Mesh or a strategy; got {type(reduce).__name__}")
