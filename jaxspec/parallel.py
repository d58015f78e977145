"""Data parallelism over a device mesh, on one host or many: placement and the mesh reduction.

The data set, stacked into equal batches by :func:`jaxspec.batch_dataset`, is split over a 1-D
device mesh along the batch axis (the ``weights`` with it). With :class:`MeshReduce` as a
curvature operator's reduction (``curvature_operator(..., reduce=mesh)``) each device reduces its
own batches with ``lax.scan`` and the partial sums meet in one ``psum`` per product. This is
written with ``jax.shard_map``: ``jax.pmap`` is in maintenance mode in current JAX and is itself
implemented on ``shard_map``.

Semantics, independent of the number of devices (up to the order of float additions):

* **Batches are never split across devices.** A device always sees whole batches, so a loss that
  uses per-batch statistics (BatchNorm in batch mode) is normalised over the same ``batch_size``
  samples whatever the device count: the batch, not the device, defines the statistics.
* **Uneven splits are exact.** When the number of full batches does not divide evenly,
  zero-weight copies pad it; a device skips a zero-weight batch (``lax.cond``) instead of
  computing and discarding it. No sample is dropped or counted twice.
* **The ragged tail** (the last ``N mod batch_size`` samples) is one smaller batch, replicated,
  and computed only on the last device of the mesh, which holds the padding batches (if any),
  so it usually has a free slot. Its weight ``r / N`` is exact.

The whole Lanczos run stays one compiled program: the operator is traceable and takes a
replicated (or parameter-sharded) vector. ``jaxspec.run_lanczos(..., mesh=mesh,
shard_basis=True)`` also shards the Krylov basis along the parameter axis.

Many hosts: run the same program in every process after :func:`initialize`. Each process loads
only its share of the data (:func:`process_share`) and :func:`global_batched` assembles the global
data set from the per-process shards. Only full batches are distributed; the global tail (fewer
than ``batch_size`` samples) is loaded by every process and replicated, so the rule stays exact.
The operator is a pytree and must be passed into jitted functions as an argument, never closed
over: JAX refuses to close over arrays that live on other processes' devices.
``jaxspec.run_lanczos`` (hence ``jaxspec.slq``) does this.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxspec.batching import Batched, dataset_mean
from jaxspec.compiler import jit
from jaxspec.convolutions import fast_convolutions

__all__ = [
    "MeshReduce",
    "ProcessShare",
    "data_mesh",
    "global_batched",
    "initialize",
    "param_shardings",
    "process_share",
    "replicate",
    "shard_batched",
]


# ---- meshes and placement -------------------------------------------------------------------


def data_mesh(devices: Sequence[jax.Device] | None = None, /, *, axis_name: str = "data",
              model_devices: int | None = None, model_axis: str = "model") -> Mesh:
    """A mesh over ``devices`` (default: every device of every process): 1-D for data
    parallelism, or 2-D ``(data, model)`` for parameters sharded over a model axis.

    The axes are of type ``Auto``: arrays sharded on them (data, parameters, a Krylov basis) can
    be used in ordinary ``jit``-ed code and the compiler inserts the collectives. (JAX's
    ``make_mesh`` defaults to ``Explicit`` axes, where such code must spell out every sharding.)

    Args:
      devices: the devices, in mesh order; default ``jax.devices()``.
      axis_name: the name of the data axis.
      model_devices: with a number, a 2-D mesh ``(len(devices) // model_devices,
        model_devices)`` whose second axis, ``model_axis``, the parameters are split over
        (:func:`param_shardings`, :class:`MeshReduce` ``(model_axis=...)``); devices next to
        each other in ``devices`` share a data slice.
      model_axis: the name of the model axis.

    Returns:
      A :class:`jax.sharding.Mesh` of shape ``(len(devices),)`` or ``(data, model)``.

    Example:
      >>> from jaxspec.parallel import data_mesh
      >>> mesh = data_mesh()
      >>> mesh.axis_names, mesh.size >= 1
      (('data',), True)
      >>> dict(data_mesh(model_devices=1).shape) == {"data": mesh.size, "model": 1}
      True
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh: no devices given")
    if model_devices is None:
        return jax.make_mesh((len(devices),), (axis_name,), axis_types=(AxisType.Auto,),
                             devices=devices)
    if not (isinstance(model_devices, (int, np.integer)) and model_devices >= 1
            and len(devices) % model_devices == 0):
        raise ValueError(f"data_mesh: model_devices={model_devices!r} must be a positive "
                         f"divisor of the {len(devices)} devices")
    shape = (len(devices) // int(model_devices), int(model_devices))
    return jax.make_mesh(shape, (axis_name, model_axis), axis_types=(AxisType.Auto,) * 2,
                         devices=devices)


def param_shardings(params: Any, mesh: Mesh, /, *, axis_name: str = "model") -> Any:
    """FSDP-style shardings of ``params`` over the ``axis_name`` axis of ``mesh``: a pytree of
    ``NamedSharding`` like ``params``.

    Each leaf is split along its largest dimension that the axis size divides (the first of
    equal ones) and replicated over the other mesh axes; a leaf no dimension of which divides
    (a bias of odd length, a scalar) is replicated. Every device then holds about
    ``P / model_devices`` parameters; the compiler gathers a weight where it is used.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.parallel import data_mesh, param_shardings
      >>> mesh = data_mesh(model_devices=1)
      >>> specs = param_shardings({"w": jnp.ones((3, 4)), "s": jnp.ones(())}, mesh)
      >>> specs["w"].spec, specs["s"].spec
      (P(None, 'model'), P())
    """
    size = _axis_size(mesh, axis_name)

    def sharding(x):
        shape = np.shape(x)
        dims = [d for d in range(len(shape)) if shape[d] % size == 0 and shape[d] >= size]
        if not dims:
            return NamedSharding(mesh, P())
        dim = max(dims, key=lambda d: (shape[d], -d))
        return NamedSharding(mesh, P(*[axis_name if d == dim else None
                                       for d in range(len(shape))]))

    return jax.tree.map(sharding, params)


def _axis_size(mesh: Mesh, axis_name: str) -> int:
    if axis_name not in mesh.shape:
        raise ValueError(f"mesh has no axis {axis_name!r} (axes: {mesh.axis_names})")
    return int(mesh.shape[axis_name])


def _canonical(x: Any) -> Any:
    """Host copy in the dtype JAX will use (float64 narrows to float32 unless x64 is on)."""
    if isinstance(x, jax.Array):
        return x
    x = np.asarray(x)
    return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)


def _place(x: Any, sharding: NamedSharding) -> jax.Array:
    """Puts ``x`` (the full value, the same in every process) on ``sharding``'s devices.

    One process: ``device_put``. Several: every process copies only the slices its own devices
    hold, so no process needs the others' devices.
    """
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # a global array already: a resharding in jit
    host = np.asarray(_canonical(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicate(tree: Any, mesh: Mesh, /) -> Any:
    """Places a pytree (parameters, a probe vector) whole on every device of ``mesh``.

    With several processes every process must pass the same values (e.g. parameters restored
    from the same checkpoint, a probe drawn from the same key).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.parallel import data_mesh, replicate
      >>> p = replicate({"w": jnp.ones(3)}, data_mesh())
      >>> p["w"].sharding.is_fully_replicated
      True
    """
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: _place(x, sharding), tree)


def _num_batches(batched: Batched) -> int:
    return 0 if batched.batches is None else int(np.shape(batched.weights)[0])


def shard_batched(batched: Batched, /, mesh: Mesh | None = None, *,
                  axis_name: str = "data") -> Batched:
    """Places a :class:`jaxspec.Batched` on a mesh: batches and weights split, the tail replicated.

    The stacked batches (leading axis ``num_batches``) and their weights are sharded along
    ``axis_name`` with ``NamedSharding(mesh, P(axis_name))``, so each device holds
    ``num_batches / num_devices`` whole batches; the ragged tail and its weight are replicated.
    Make ``batched`` with ``batch_dataset(data, batch_size, num_shards=mesh.size)``, which pads
    with zero-weight batches so the split is even.

    Every process must pass the whole data set; for per-process shards use
    :func:`global_batched`.

    Args:
      batched: from :func:`jaxspec.batch_dataset` (NumPy or JAX arrays).
      mesh: the mesh (replicated over any axis but ``axis_name``); default :func:`data_mesh`.
      axis_name: the mesh axis to split the batches over.

    Returns:
      The same :class:`jaxspec.Batched`, with every array a global ``jax.Array`` on ``mesh``.

    Example:
      >>> import numpy as np
      >>> from jaxspec import batch_dataset
      >>> from jaxspec.parallel import data_mesh, shard_batched
      >>> mesh = data_mesh()
      >>> b = shard_batched(batch_dataset(np.ones((10, 2)), 4, num_shards=mesh.size), mesh)
      >>> b.batches.shape, b.batches.sharding.spec
      ((2, 4, 2), P('data',))
    """
    mesh = data_mesh() if mesh is None else mesh
    num_devices = _axis_size(mesh, axis_name)
    num = _num_batches(batched)
    if num % num_devices:
        raise ValueError(
            f"shard_batched: {num} stacked batches do not split evenly over {num_devices} "
            f"devices; make them with batch_dataset(data, batch_size, num_shards={num_devices})")
    split = NamedSharding(mesh, P(axis_name))
    whole = NamedSharding(mesh, P())
    return Batched(
        batches=None if batched.batches is None
        else jax.tree.map(lambda x: _place(x, split), batched.batches),
        weights=_place(batched.weights, split) if num else batched.weights,
        tail=None if batched.tail is None
        else jax.tree.map(lambda x: _place(x, whole), batched.tail),
        tail_weight=_place(batched.tail_weight, whole),
    )


# ---- the mesh reduction ---------------------------------------------------------------------


def _vary(x: jax.Array, axis_name: str) -> jax.Array:
    """Marks a device-invariant value as varying over ``axis_name`` (shard_map's type system
    requires both branches of a ``cond`` and a ``scan`` carry to agree)."""
    mat = getattr(jax.typeof(x), "manual_axis_type", None)
    if mat is not None and axis_name in mat.varying:
        return x
    return jax.lax.pcast(x, (axis_name,), to="varying")


def _pad_batches(batched: Batched, num_shards: int) -> Batched:
    """Appends zero-weight copies of the first batch until the batches split into ``num_shards``
    (a padding batch is skipped, never computed)."""
    num = _num_batches(batched)
    pad = (-num) % num_shards
    if not pad:
        return batched

    def stack(x):
        lib = np if isinstance(x, np.ndarray) else jnp
        return lib.concatenate([x, lib.repeat(x[:1], pad, axis=0)], axis=0)

    weights = np.concatenate([np.asarray(batched.weights), np.zeros(pad)])
    return batched._replace(batches=jax.tree.map(stack, batched.batches), weights=weights)


@jit
def _mesh_apply(op, v):
    reduce = op.reduce
    axis_name = reduce.axis_name
    last = _axis_size(reduce.mesh, axis_name) - 1
    data = op.data
    has_batches, has_tail = data.batches is not None, data.tail is not None
    if reduce.model_axis is not None and last == 0:
        # One data slice: nothing to split over it, so no shard_map (and XLA's SPMD
        # partitioner refuses a psum over a manual axis of size 1 beside an auto axis);
        # the batches are scanned as ScanReduce does, the parameters split over the model axis.
        tangent = op.unravel(v)
        return dataset_mean(lambda batch: op.batch_mv(batch, tangent), data, v)

    def local(params, transform, key, batches, weights, tail, tail_weight, v):
        # Params and v are replicated (invariant over the axis). Differentiating an invariant
        # value used with per-device data makes shard_map sum its cotangent over devices (an
        # all-reduce inside every batch's product). Marking them per-device keeps each device's
        # products local, and the one psum below does the sum.
        here = dataclasses.replace(op, params=jax.tree.map(lambda x: _vary(x, axis_name), params),
                                   transform=transform, key=key, data=None)
        v = _vary(v, axis_name)
        tangent = here.unravel(v)
        zeros = _vary(jnp.zeros_like(v), axis_name)
        acc = zeros

        def unless(pred, product):
            # ``product()`` where ``pred``, else zeros. Without a model axis a ``lax.cond``
            # skips the work. With one, the product holds collectives over the model axis (the
            # gathers of weights), which every device of the program must join, so a branch
            # that some data slices take and others do not would deadlock: the product is
            # computed everywhere and selected.
            if reduce.model_axis is None:
                return jax.lax.cond(pred, lambda: _vary(product(), axis_name), lambda: zeros)
            return jnp.where(pred, product(), zeros)

        if has_batches:

            def body(acc, xs):
                batch, w = xs
                # Zero-weight batches are padding: skipped rather than multiplied by 0.
                out = unless(w != 0, lambda: w.astype(v.dtype) * here.batch_mv(batch, tangent))
                return acc + out, None

            acc, _ = jax.lax.scan(body, acc, (batches, weights))
        if has_tail:
            # The tail is replicated; only the last device (which holds the padding, if any)
            # counts it, so it is counted once.
            acc = acc + unless(jax.lax.axis_index(axis_name) == last,
                               lambda: tail_weight.astype(v.dtype) * here.batch_mv(tail, tangent))
        return jax.lax.psum(acc, axis_name)

    split, whole = P(axis_name), P()
    # With a model axis only the data axis is manual: the parameters keep their sharding over
    # the model axis inside, and the compiler places the gathers of weights and the
    # reduce-scatters of products (sharding propagation from the parameters).
    manual = {} if reduce.model_axis is None else {"axis_names": frozenset({axis_name})}
    # on a CPU the convolutions in the scan and branches below in XLA:CPU's fast forms (inside
    # the body, where its axis names are bound: jaxspec.convolutions)
    body = fast_convolutions(local) if jax.default_backend() == "cpu" else local
    mapped = jax.shard_map(body, mesh=reduce.mesh,
                           in_specs=(whole, whole, whole, split, split, whole, whole, whole),
                           out_specs=whole, **manual)
    return mapped(op.params, op.transform, op.key, data.batches,
                  data.weights if has_batches else None, data.tail,
                  data.tail_weight if has_tail else None, v)


@dataclasses.dataclass(frozen=True)
class MeshReduce:
    """Batches split over a device mesh (``jax.shard_map``), one ``psum`` per product.

    Each device scans over its own whole batches, skipping zero-weight padding; the last device
    also takes the ragged tail. The result is the same for any number of devices (up to float
    summation order). Traceable: a whole Lanczos run is one program. Data from
    :func:`global_batched` (several processes) is used as it is; otherwise it is padded to
    split evenly and placed with :func:`shard_batched`.

    Parameters are replicated, or, with ``model_axis`` (a 2-D mesh from
    ``data_mesh(model_devices=...)``), split over that axis by :func:`param_shardings`
    (FSDP-style): the batches are split over ``axis_name`` only, each data slice of the mesh
    computes its batches' products with the weights split over its model devices, and one
    product is still one compiled program. Pair it with ``run_lanczos(..., mesh=mesh,
    shard_basis=True, axis_name=(data, model))`` so the Krylov basis is split too: a device
    then holds about ``P / model_devices`` parameters and ``(m + 1) P / mesh.size`` basis
    entries.

    Attributes:
      mesh: the mesh (see :func:`data_mesh`).
      axis_name: the mesh axis the batches are split over.
      model_axis: the mesh axis the parameters are split over, or None (replicated).

    Example:
      >>> import jax.numpy as jnp, jaxspec
      >>> from jaxspec.parallel import MeshReduce, data_mesh
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
      ...                                 jnp.ones(2), jaxspec.batch_dataset(jnp.ones(5), 2),
      ...                                 reduce=MeshReduce(data_mesh()))
      >>> op.mv(jnp.array([1.0, 0.0])).tolist()
      [2.0, 0.0]
      >>> fsdp = MeshReduce(data_mesh(model_devices=1), model_axis="model")
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
      ...                                 jnp.ones(2), jaxspec.batch_dataset(jnp.ones(5), 2),
      ...                                 reduce=fsdp)
      >>> op.mv(jnp.array([1.0, 0.0])).tolist()   # the parameters split over "model"
      [2.0, 0.0]
    """

    mesh: Mesh
    axis_name: str = "data"
    model_axis: str | None = None
    driver = "compiled"

    def __post_init__(self):
        _axis_size(self.mesh, self.axis_name)
        if self.model_axis is not None:
            _axis_size(self.mesh, self.model_axis)
            if self.model_axis == self.axis_name:
                raise ValueError("MeshReduce: the model axis must differ from the data axis")

    def prepare(self, op):
        """Pads and shards the batches; replicates the tail, transform and key, and the
        parameters (split over the model axis instead, if there is one).

        Example:
          >>> import jax.numpy as jnp, numpy as np, jaxspec
          >>> from jaxspec.parallel import MeshReduce, data_mesh
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.sum(p ** 2), jnp.ones(1),
          ...                                 jaxspec.batch_dataset(np.ones(8), 2),
          ...                                 reduce=MeshReduce(data_mesh()))
          >>> op.data.batches.sharding.spec
          P('data',)
        """
        data = _pad_batches(op.data, _axis_size(self.mesh, self.axis_name))
        if self.model_axis is None:
            params = replicate(op.params, self.mesh)
        else:
            params = jax.tree.map(_place, op.params,
                                  param_shardings(op.params, self.mesh, axis_name=self.model_axis))
        return dataclasses.replace(
            op, data=shard_batched(data, self.mesh, axis_name=self.axis_name), params=params,
            transform=replicate(op.transform, self.mesh), key=replicate(op.key, self.mesh))

    def apply(self, op, v: jax.Array, /) -> jax.Array:
        """``sum_b w_b A_b v`` over the mesh (called eagerly: one cached program).

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> from jaxspec.parallel import MeshReduce, data_mesh
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
          ...                                 jnp.ones(1), jaxspec.batch_dataset(jnp.ones(3), 2),
          ...                                 reduce=MeshReduce(data_mesh()))
          >>> op.reduce.apply(op, jnp.ones(1)).tolist()
          [2.0]
        """
        return _mesh_apply(op, v)

# ---- many processes -------------------------------------------------------------------------


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    /,
    *,
    auto: bool | None = None,
    **kwargs: Any,
) -> bool:
    """Joins a multi-process run (``jax.distributed.initialize``), if there is one.

    The arguments default to the environment variables ``JAXSPEC_COORDINATOR`` (``host:port`` of
    process 0), ``JAXSPEC_NUM_PROCESSES`` and ``JAXSPEC_PROCESS_ID``. If none of them is set
    either, JAX's own detection is used: ``jax.distributed.initialize()`` with no arguments, which
    reads SLURM (more than one task), Open MPI, Cloud TPU and ``JAX_COORDINATOR_ADDRESS``
    settings. It is called only when one of those environments is visible (``auto=None``), or
    always (``auto=True``, for a cluster JAX detects by other means); otherwise this is a
    single-process run and nothing is done. Call it before anything else touches JAX's devices.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator.
      num_processes: total number of processes.
      process_id: this process's index, ``0 .. num_processes - 1``.
      auto: without explicit settings: ``None`` detects a cluster environment, ``True`` always
        calls ``jax.distributed.initialize()``, ``False`` never does.
      **kwargs: passed on to ``jax.distributed.initialize`` (e.g. ``local_device_ids``,
        ``initialization_timeout``).

    Returns:
      True if a multi-process run was joined (or had been already), False if single-process.

    Example:
      >>> from jaxspec.parallel import initialize
      >>> initialize(auto=False)  # no JAXSPEC_* settings here: nothing to join
      False
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAXSPEC_COORDINATOR") or None
    if num_processes is None and env.get("JAXSPEC_NUM_PROCESSES"):
        num_processes = int(env["JAXSPEC_NUM_PROCESSES"])
    if process_id is None and env.get("JAXSPEC_PROCESS_ID"):
        process_id = int(env["JAXSPEC_PROCESS_ID"])
    if jax.distributed.is_initialized():
        return True
    explicit = (coordinator_address, num_processes, process_id)
    if any(x is not None for x in explicit):
        if any(x is None for x in explicit):
            raise ValueError(
                "initialize: give all of coordinator_address, num_processes and process_id "
                "(or JAXSPEC_COORDINATOR, JAXSPEC_NUM_PROCESSES, JAXSPEC_PROCESS_ID), or none")
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
        return True
    if auto or (auto is None and _cluster_detected(env)):
        jax.distributed.initialize(**kwargs)
        return True
    return False


def _cluster_detected(env) -> bool:
    """Whether JAX's auto-detection has something to detect (else it would raise)."""
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return True  # a single task (an interactive shell in a job) has nothing to join
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):  # a multi-host TPU slice
        return True
    return "JAX_COORDINATOR_ADDRESS" in env


class ProcessShare(NamedTuple):
    """The samples one process loads for :func:`global_batched`.

    Attributes:
      batches: the slice of sample indices of this process's full batches (whole batches only;
        the processes' slices are contiguous, disjoint and balanced to within one batch).
      tail: the slice of the global tail (the last ``N mod batch_size`` samples), which every
        process loads; ``None`` when ``batch_size`` divides N.

    Example:
      >>> import numpy as np
      >>> from jaxspec.parallel import process_share
      >>> shares = [process_share(10, 4, process_index=p, process_count=2) for p in range(2)]
      >>> [np.arange(10)[s.batches].tolist() for s in shares], shares[1].tail
      ([[0, 1, 2, 3], [4, 5, 6, 7]], slice(8, 10, None))
      >>> process_share(8, 4, process_index=0, process_count=2).tail is None
      True
    """

    batches: slice
    tail: slice | None


def process_share(num_samples: int, batch_size: int, /, *, process_index: int | None = None,
                  process_count: int | None = None) -> ProcessShare:
    """Which samples this process loads: its share of the full batches, and the global tail.

    Args:
      num_samples: N, the size of the whole data set.
      batch_size: samples per batch.
      process_index: default ``jax.process_index()``.
      process_count: default ``jax.process_count()``.

    Returns:
      A :class:`ProcessShare`.

    Example:
      >>> from jaxspec.parallel import process_share
      >>> process_share(1000, 64, process_index=1, process_count=2)
      ProcessShare(batches=slice(512, 960, None), tail=slice(960, 1000, None))
    """
    p = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= p < count:
        raise ValueError(f"process_index {p} not in [0, {count})")
    if batch_size < 1 or num_samples < 1:
        raise ValueError("num_samples and batch_size must be positive")
    num_full, rest = divmod(int(num_samples), int(batch_size))
    base, extra = divmod(num_full, count)
    first = p * base + min(p, extra)
    mine = base + (p < extra)
    return ProcessShare(
        batches=slice(first * batch_size, (first + mine) * batch_size),
        tail=slice(num_full * batch_size, int(num_samples)) if rest else None,
    )


def global_batched(
    local_data: Any,
    /,
    mesh: Mesh | None = None,
    *,
    batch_size: int,
    num_samples: int,
    tail: Any = None,
    axis_name: str = "data",
) -> Batched:
    """The global :class:`jaxspec.Batched` from each process's own share of the data.

    Every process calls it (after :func:`initialize`) with the samples
    ``process_share(num_samples, batch_size).batches`` of the data set as ``local_data``, and the
    global tail ``process_share(...).tail`` as ``tail`` (the same in every process). The full
    batches stay on the devices of the process that loaded them; each process pads its batches
    with zero-weight copies to a count the processes agree on without communicating
    (``ceil(num_full / num_devices)`` per device); the tail is replicated. Weights are
    ``batch_size / N`` for the global N, so the operator is the Hessian of the mean over the
    whole data set, exactly. Also works with one process.

    Args:
      local_data: pytree of arrays with leading axis ``k * batch_size`` (this process's
        ``k`` full batches, in order), as loaded from ``process_share(...).batches``.
      mesh: a 1-D mesh over all processes' devices; default :func:`data_mesh`.
      batch_size: samples per batch.
      num_samples: N, the size of the whole data set (all processes).
      tail: the global tail (``N mod batch_size`` samples), the same in every process, or None
        when ``batch_size`` divides N.
      axis_name: the mesh axis.

    Returns:
      A :class:`jaxspec.Batched` of global arrays, ready for a :func:`jaxspec.curvature_operator` with ``reduce=mesh``.

    Example:
      >>> import numpy as np
      >>> from jaxspec.parallel import data_mesh, global_batched, process_share
      >>> x = np.arange(10.0)[:, None]
      >>> share = process_share(10, 4)
      >>> b = global_batched(x[share.batches], data_mesh(), batch_size=4, num_samples=10,
      ...                    tail=x[share.tail])
      >>> b.batches.shape, b.tail.shape, round(float(b.tail_weight), 6)
      ((2, 4, 1), (2, 1), 0.2)
    """
    mesh = data_mesh() if mesh is None else mesh
    if mesh.devices.ndim != 1:  # a process's devices would be counted over the other axes too
        raise ValueError(
            f"global_batched needs a 1-D mesh (data_mesh()), got axes {mesh.axis_names}: place "
            "the data on data_mesh() and give the 2-D mesh to MeshReduce(mesh, model_axis=...)")
    num_devices = _axis_size(mesh, axis_name)
    me = jax.process_index()
    local_devices = sum(d.process_index == me for d in mesh.devices.flat)
    if local_devices == 0:
        raise ValueError("global_batched: this process has no device in the mesh")
    if num_devices % local_devices:
        raise ValueError("global_batched: every process needs the same number of mesh devices")
    share = process_share(num_samples, batch_size, process_index=me,
                          process_count=num_devices // local_devices)
    num_full, rest = divmod(int(num_samples), int(batch_size))
    mine = (share.batches.stop - share.batches.start) // batch_size
    leaves = jax.tree.leaves(local_data)
    if not leaves or any(np.shape(x)[0] != mine * batch_size for x in leaves):
        raise ValueError(
            f"global_batched: process {me} must pass its {mine} full batches "
            f"({mine * batch_size} samples, process_share(num_samples, batch_size).batches); "
            f"got leading axes {[np.shape(x)[0] for x in leaves]}")
    if (tail is None) != (rest == 0):
        raise ValueError(f"global_batched: the global tail has {rest} samples; pass it as `tail` "
                         "(process_share(...).tail) in every process" if rest
                         else "global_batched: batch_size divides N: there is no tail")
    if tail is not None and any(np.shape(x)[0] != rest for x in jax.tree.leaves(tail)):
        raise ValueError(f"global_batched: the tail must hold the last {rest} samples")

    per_device = math.ceil(num_full / num_devices)
    slots = per_device * local_devices

    def stack(x):
        x = np.asarray(_canonical(x))
        full = x.reshape((mine, batch_size) + x.shape[1:])
        # Pad with zero-weight batches (copies of a real one, so they are finite; they are
        # skipped anyway). A process without a full batch (N < processes x batch) pads zeros.
        pad = (np.repeat(full[:1], slots - mine, axis=0) if mine
               else np.zeros((slots, batch_size) + x.shape[1:], x.dtype))
        full = np.concatenate([full, pad], axis=0)
        return jax.make_array_from_process_local_data(
            NamedSharding(mesh, P(axis_name)), full,
            (per_device * num_devices,) + full.shape[1:])

    whole = NamedSharding(mesh, P())
    weights = _canonical(np.concatenate([np.full(mine, batch_size / num_samples),
                                         np.zeros(slots - mine)]))
    return Batched(
        batches=jax.tree.map(stack, local_data) if num_full else None,
        weights=jax.make_array_from_process_local_data(
            NamedSharding(mesh, P(axis_name)), weights, (per_device * num_devices,))
        if num_full else np.zeros(0),
        tail=None if tail is None else jax.tree.map(lambda x: _place(x, whole), tail),
        tail_weight=_place(np.float64(rest / num_samples), whole),
    )
