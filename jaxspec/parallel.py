"""Data-parallel Hessian operators over a device mesh, on one host or many.

The data set, stacked into equal batches by :func:`jaxspec.batch_dataset`, is split over a 1-D
device mesh along the batch axis (the ``weights`` with it). Each device reduces its own batches
with ``lax.scan`` and the partial sums meet in one ``psum`` per Hessian-vector product. This is
written with ``jax.shard_map``: ``jax.pmap`` is in maintenance mode in current JAX and is itself
implemented on ``shard_map``.

Semantics, independent of the number of devices (up to the order of float additions):

* **Batches are never split across devices.** A device always sees whole batches, so a loss that
  uses per-batch statistics (BatchNorm in batch mode) is normalised over the same ``batch_size``
  samples whatever the device count: the batch, not the device, defines the statistics.
* **Uneven splits are exact.** When the number of full batches does not divide evenly,
  zero-weight copies pad it (``batch_dataset(..., num_shards=num_devices)``); a device skips
  a zero-weight batch (``lax.cond``) instead of computing and discarding it. No sample is
  dropped or counted twice.
* **The ragged tail** (the last ``N mod batch_size`` samples) is one smaller batch, replicated,
  and computed only on the last device of the mesh, which holds the padding batches (if any),
  so it usually has a free slot. Its weight ``r / N`` is exact.

The whole Lanczos run stays one compiled program: the matvec is traceable, works inside
``lanczos_continue``'s ``fori_loop`` under ``jit``, and takes a replicated (or parameter-sharded)
vector. The Krylov basis is replicated on every device by default: it is ``(m + 1) x P`` floats,
e.g. 101 x 1.17M x 4 B = 470 MB for PreResNet-110, which fits every accelerator, and then
re-orthogonalisation needs no communication at all. For large models (VGG-16: 101 x 15.3M x 4 B
= 6.2 GB) :func:`sharded_lanczos` with ``shard_basis=True`` shards the basis along the parameter
axis (``P(None, "data")``): ``jit`` (GSPMD) then inserts the reductions of the Gram-Schmidt dot
products (a few floats per block) and one all-gather of the new Lanczos vector per step.

Many hosts: run the same program in every process after :func:`initialize`. Each process loads
only its share of the data (:func:`process_share`) and :func:`global_batched` assembles the global
operator from the per-process shards. Only full batches are distributed; the global tail (fewer
than ``batch_size`` samples) is loaded by every process and replicated, so the rule stays exact.
The operator is a pytree (``jax.tree_util.Partial``) and must be passed into jitted functions as
an argument, never closed over: JAX refuses to close over arrays that live on other processes'
devices. ``jaxspec.run_lanczos`` (hence ``jaxspec.slq``) and :func:`sharded_lanczos` do this.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxspec.hvp import Batched, hvp
from jaxspec.lanczos import (
    LanczosResult,
    LanczosState,
    _drive,
    _resume,
    lanczos_continue,
    lanczos_init,
)

__all__ = [
    "ProcessShare",
    "data_mesh",
    "global_batched",
    "initialize",
    "lanczos_state_sharding",
    "process_share",
    "replicate",
    "shard_batched",
    "sharded_hessian_matvec",
    "sharded_lanczos",
]

LossFn = Callable[[Any, Any], jax.Array]


# ---- meshes and placement -------------------------------------------------------------------


def data_mesh(devices: Sequence[jax.Device] | None = None, /, *,
              axis_name: str = "data") -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process) for data parallelism.

    The axis is of type ``Auto``: arrays sharded on it (data, or a parameter-sharded Krylov basis)
    can be used in ordinary ``jit``-ed code and the compiler inserts the collectives. (JAX's
    ``make_mesh`` defaults to ``Explicit`` axes, where such code must spell out every sharding.)

    Args:
      devices: the devices, in mesh order; default ``jax.devices()``.
      axis_name: the name of the mesh axis.

    Returns:
      A :class:`jax.sharding.Mesh` of shape ``(len(devices),)``.

    Example:
      >>> from jaxspec.parallel import data_mesh
      >>> mesh = data_mesh()
      >>> mesh.axis_names, mesh.size >= 1
      (('data',), True)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh: no devices given")
    return jax.make_mesh((len(devices),), (axis_name,), axis_types=(AxisType.Auto,),
                         devices=devices)


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
      mesh: a 1-D mesh; default :func:`data_mesh`.
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


def _mesh_of(batched: Batched) -> Mesh | None:
    for leaf in jax.tree.leaves((batched.batches, batched.weights)):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and isinstance(sharding.mesh, Mesh):
            return sharding.mesh
    return None


# ---- the data-parallel operator -------------------------------------------------------------


def _vary(x: jax.Array, axis_name: str) -> jax.Array:
    """Marks a device-invariant value as varying over ``axis_name`` (shard_map's type system
    requires both branches of a ``cond`` and a ``scan`` carry to agree)."""
    mat = getattr(jax.typeof(x), "manual_axis_type", None)
    if mat is not None and axis_name in mat.varying:
        return x
    return jax.lax.pcast(x, (axis_name,), to="varying")


def sharded_hessian_matvec(
    loss_fn: LossFn,
    params: Any,
    batched: Batched,
    /,
    *,
    mesh: Mesh | None = None,
    axis_name: str = "data",
) -> Callable[[jax.Array], jax.Array]:
    """The data-set Hessian as a data-parallel, traceable matvec on flat vectors.

    The data-parallel counterpart of :func:`jaxspec.hessian_matvec`, with the same result for
    any number of devices (up to float summation order). Built on ``jax.shard_map`` (``jax.pmap``
    is in maintenance mode and is itself implemented on ``shard_map``): each device scans over
    its own whole batches, skipping zero-weight padding, the last device also takes the ragged
    tail, and one ``psum`` per product adds the partial sums. Batches are never split across
    devices, so per-batch statistics (BatchNorm in batch mode) are those of ``batch_size``
    samples, whatever the device count.

    The matvec takes and returns a flat vector of length ``P`` (``ravel_pytree`` order); its
    input may be replicated or sharded (it is all-gathered), its output is replicated. It can be
    called eagerly (one cached compiled program: the per-device code is jitted, since an eager
    ``shard_map`` would recompile at every call), jitted, vmapped, and called inside
    ``lax.fori_loop``, so a whole :func:`jaxspec.lanczos` / ``run_lanczos(driver="compiled")``
    run is one program. Like :func:`jaxspec.hessian_matvec` it is a ``jax.tree_util.Partial``
    whose leaves are the parameters and the data: pass it *into* jitted functions as an
    argument (``jax.jit(lambda op, v: op(v))(matvec, v)``; ``run_lanczos`` and
    :func:`sharded_lanczos` do) rather than closing over it. With several processes this is
    required: JAX refuses to close over arrays on other processes' devices.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean over ``batch``.
      params: the point at which the Hessian is taken; replicated on the mesh.
      batched: from :func:`jaxspec.batch_dataset` with ``num_shards`` = the number of devices
        (placed with :func:`shard_batched` if it is not already), or from
        :func:`global_batched` with several processes.
      mesh: a 1-D mesh; default the mesh ``batched`` is on, else :func:`data_mesh`.
      axis_name: the mesh axis the batches are split over.

    Returns:
      ``matvec(v) -> H v`` for ``H`` the Hessian of the mean loss over all N samples.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import batch_dataset
      >>> from jaxspec.parallel import data_mesh, sharded_hessian_matvec
      >>> mesh = data_mesh()
      >>> loss = lambda p, x: jnp.mean(x) * jnp.sum(p["a"] ** 2)
      >>> data = batch_dataset(jnp.ones(5), 2, num_shards=mesh.size)
      >>> mv = jax.jit(sharded_hessian_matvec(loss, {"a": jnp.ones(2)}, data, mesh=mesh))
      >>> mv(jnp.array([1.0, 0.0])).tolist()
      [2.0, 0.0]
    """
    if mesh is None:
        mesh = _mesh_of(batched) or data_mesh()

    def batch_hvp(params, _, batch, tangent):
        return ravel_pytree(hvp(loss_fn, params, batch, tangent))[0]

    return _sharded_operator(batch_hvp, params, None, batched, mesh=mesh, axis_name=axis_name)


def _sharded_operator(batch_hvp: Callable, params: Any, extra: Any, batched: Batched, /, *,
                      mesh: Mesh, axis_name: str) -> Callable[[jax.Array], jax.Array]:
    """The shard_map reduction behind :func:`sharded_hessian_matvec` and
    :func:`jaxspec.augmented.sharded_augmented_hessian_matvec`.

    ``batch_hvp(params, extra, batch, tangent) -> flat H_b v`` for one batch; ``extra`` is a
    replicated pytree (e.g. the images an augmented batch indexes into), or None.
    """
    last = _axis_size(mesh, axis_name) - 1
    batched = shard_batched(batched, mesh, axis_name=axis_name)
    _, unravel = ravel_pytree(params)
    params = replicate(params, mesh)
    extra = replicate(extra, mesh)
    has_batches = batched.batches is not None
    has_tail = batched.tail is not None

    def local(params, extra, batches, weights, tail, tail_weight, v):
        # Params and v are replicated (invariant over the axis). Differentiating an invariant
        # value used with per-device data makes shard_map sum its cotangent over devices (an
        # all-reduce inside every batch's HVP). Marking them per-device keeps each device's
        # HVPs local, and the one psum below does the sum.
        params = jax.tree.map(lambda x: _vary(x, axis_name), params)
        v = _vary(v, axis_name)
        tangent = unravel(v)

        def one(batch):
            return batch_hvp(params, extra, batch, tangent)

        zeros = jnp.zeros_like(v)
        acc = _vary(zeros, axis_name)
        if has_batches:

            def body(acc, xs):
                batch, w = xs
                # Zero-weight batches are padding: skip them rather than multiply them by 0.
                out = jax.lax.cond(
                    w != 0,
                    lambda: _vary(w.astype(v.dtype) * one(batch), axis_name),
                    lambda: _vary(zeros, axis_name),
                )
                return acc + out, None

            acc, _ = jax.lax.scan(body, acc, (batches, weights))
        if has_tail:
            # The tail is replicated; only the last device (which holds the padding, if any)
            # computes it, so it is counted once.
            on_last = jax.lax.axis_index(axis_name) == last
            acc = acc + jax.lax.cond(
                on_last,
                lambda: _vary(tail_weight.astype(v.dtype) * one(tail), axis_name),
                lambda: _vary(zeros, axis_name),
            )
        return jax.lax.psum(acc, axis_name)

    split, whole = P(axis_name), P()
    mapped = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(whole, whole, split, split, whole, whole, whole),
        out_specs=whole,
    )
    # A Partial is a pytree whose leaves are the arrays: a jitted driver can take the matvec as
    # an argument instead of closing over it, which arrays spanning several processes require.
    # The jit makes eager calls (driver="host") one cached program; an eager shard_map would be
    # compiled again at every call. Inside an outer jit it is inlined.
    return jax.tree_util.Partial(
        jax.jit(mapped), params, extra, batched.batches,
        batched.weights if has_batches else None,
        batched.tail, batched.tail_weight if has_tail else None)


# ---- Lanczos with the basis on the mesh -----------------------------------------------------


def lanczos_state_sharding(mesh: Mesh, /, *, shard_basis: bool = False,
                           axis_name: str = "data") -> LanczosState:
    """Shardings for a :class:`jaxspec.LanczosState` on ``mesh`` (a pytree of ``NamedSharding``).

    Everything is replicated, except, with ``shard_basis=True``, the ``(rows, P)`` Krylov basis,
    which is split along the parameter axis: ``P(None, axis_name)``.

    Example:
      >>> from jaxspec.parallel import data_mesh, lanczos_state_sharding
      >>> lanczos_state_sharding(data_mesh(), shard_basis=True).basis.spec
      P(None, 'data')
    """
    whole = NamedSharding(mesh, P())
    basis = NamedSharding(mesh, P(None, axis_name)) if shard_basis else whole
    return LanczosState(basis, whole, whole, whole, whole, whole, whole)


@functools.lru_cache(maxsize=16)
def _sharded_programs(mesh: Mesh, shard_basis: bool, axis_name: str, num_steps: int, dim: int,
                      pad: int, tol: float | None, block_size: int):
    """The jitted init and run of :func:`sharded_lanczos`, made once per configuration (made per
    call, every call recompiled the whole run)."""
    shardings = lanczos_state_sharding(mesh, shard_basis=shard_basis, axis_name=axis_name)
    init = jax.jit(lambda v: lanczos_init(jnp.pad(v, (0, pad)), num_steps,
                                          block_size=block_size),
                   out_shardings=shardings)

    def steps(mv, state, num_new_steps):
        def padded(v):
            return jnp.pad(mv(v[:dim]), (0, pad)) if pad else mv(v)

        return lanczos_continue(padded, state, num_new_steps, tol=tol, block_size=block_size)

    # The matvec is an argument (a pytree, see sharded_hessian_matvec), not a closure: arrays on
    # other processes' devices cannot be closed over. Donating the state lets the output basis
    # reuse the input's memory (XLA:CPU cannot donate).
    donate = (1,) if jax.default_backend() != "cpu" else ()
    return init, jax.jit(steps, out_shardings=shardings, donate_argnums=donate), shardings


def sharded_lanczos(
    matvec: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    num_steps: int,
    /,
    *,
    mesh: Mesh | None = None,
    shard_basis: bool = False,
    axis_name: str = "data",
    tol: float | None = None,
    block_size: int = 16,
    return_basis: bool = False,
    chunk_size: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool | str = False,
) -> LanczosResult:
    """:func:`jaxspec.lanczos` with its state on a mesh, the basis optionally sharded.

    The state is created directly with its sharding (the basis is never whole on one device) and
    the run is one jitted :func:`jaxspec.lanczos_continue` whose output keeps that sharding.
    With ``shard_basis=False`` the basis is replicated: re-orthogonalisation needs no
    communication, and ``run_lanczos(driver="compiled")`` gives the same result with chunks,
    checkpoints and progress. With ``shard_basis=True`` each device holds ``P / num_devices``
    columns of the basis; the Gram-Schmidt dot products are reduced across devices by the
    compiler and the new vector is all-gathered for the next product. Use it when
    ``(num_steps + 1) x P`` floats do not fit next to the model (VGG-16, 100 steps: 6.2 GB).

    As in :func:`jaxspec.run_lanczos`, the run can go in chunks of steps (one compiled program
    serves every chunk length) with a progress bar, and with ``checkpoint`` set the state is
    saved there after every chunk (gathered to the host: ``(m + 1) x P`` floats of host memory)
    and a run started with the same arguments resumes from it, with the same result as an
    uninterrupted run and the basis sharded as before. Checkpoints need every device of the mesh
    in this process: with several processes a ``checkpoint`` is refused.

    Args:
      matvec: traceable ``v -> A v``, e.g. from :func:`sharded_hessian_matvec`.
      v0: the start vector (the same in every process).
      num_steps: number of steps m (at most ``len(v0)``).
      mesh: the mesh; default :func:`data_mesh`.
      shard_basis: split the basis along the parameter axis.
      axis_name: the mesh axis.
      tol, block_size, return_basis: as in :func:`jaxspec.lanczos`.
      chunk_size: steps between checkpoints / progress updates (default: all at once without a
        checkpoint, 10 with one).
      checkpoint: path of an ``.npz`` file for the state; resumed from if it exists.
      progress: show a progress bar (a string is used as its label).

    Returns:
      A :class:`jaxspec.LanczosResult`. The basis, if returned, is ``(m + 1, P)`` and stays on
      the mesh.

    Raises:
      FloatingPointError: the matvec returned NaN/Inf; the message names the step.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import Spectrum
      >>> from jaxspec.parallel import sharded_lanczos
      >>> A = jnp.diag(jnp.arange(1.0, 9.0))
      >>> res = sharded_lanczos(lambda v: A @ v, jnp.ones(8), 8, shard_basis=True)
      >>> Spectrum.from_lanczos(res).nodes.round(5).tolist() == list(range(1, 9))
      True
    """
    mesh = data_mesh() if mesh is None else mesh
    _axis_size(mesh, axis_name)
    host = np.asarray(v0) if not isinstance(v0, jax.Array) or v0.is_fully_addressable else None
    if host is not None:
        if host.ndim != 1 or not np.all(np.isfinite(host)) or not np.any(host):
            raise ValueError("v0 must be a finite, nonzero 1-D vector")
    if not (isinstance(num_steps, (int, np.integer)) and 1 <= num_steps <= np.shape(v0)[0]):
        raise ValueError(f"num_steps must be an int in [1, len(v0)], got {num_steps!r}")
    num_steps = int(num_steps)
    dim = int(np.shape(v0)[0])
    # A sharded axis must divide evenly: pad the vectors with zeros up to a multiple of the
    # device count. The padding coordinates of v0 and of every product are 0, so the Krylov
    # space, T and the Ritz values are those of the unpadded operator.
    pad = (-dim) % _axis_size(mesh, axis_name) if shard_basis else 0
    if checkpoint is not None and jax.process_count() > 1:
        raise ValueError("a checkpoint of sharded_lanczos needs every device of the mesh in one "
                         f"process; this run has {jax.process_count()} processes")
    init, run, shardings = _sharded_programs(mesh, shard_basis, axis_name, num_steps, dim, pad,
                                             tol, block_size)
    # A checkpoint is checked against the padded start vector, then placed from the host shard
    # by shard (the basis is never whole on one device).
    state = None if checkpoint is None else _resume(checkpoint, np.pad(host, (0, pad)),
                                                    num_steps, block_size)
    state = init(_place(v0, NamedSharding(mesh, P()))) if state is None else jax.device_put(
        state, shardings)
    mv = matvec if isinstance(matvec, jax.tree_util.Partial) else jax.tree_util.Partial(matvec)
    state = _drive(state, num_steps, chunk_size, functools.partial(run, mv),
                   checkpoint=checkpoint, progress=progress)
    return LanczosResult(state.alphas, state.betas, state.num_valid, state.nonfinite_step,
                         state.basis[: num_steps + 1, :dim] if return_basis else None)


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
      A :class:`jaxspec.Batched` of global arrays, ready for :func:`sharded_hessian_matvec`.

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
