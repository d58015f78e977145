"""One curvature operator: a curvature matrix of a loss over a data set, as a pytree.

:func:`curvature_operator` builds a :class:`CurvatureOperator` from a loss
``loss_fn(params, batch) -> scalar`` (the mean over ``batch``), the parameters at which the
matrix is taken, and the data (a :class:`jaxspec.Batched`). Three things are fields, not
separate constructors:

* ``kind``: which matrix: ``"hessian"``, ``"ggn"``, ``"fisher"``, ``"fisher_mc"``,
  ``"empirical_fisher"`` (the per-batch products live in :mod:`jaxspec.hvp` and
  :mod:`jaxspec.kinds`; all but the Hessian need a :class:`jaxspec.SplitLoss`);
* ``reduce``: how the batches are summed (:mod:`jaxspec.reduction`): ``lax.scan`` in one
  program, a host loop over jitted groups of batches, or a device mesh with one ``psum``;
* ``transform``: a batch transform applied inside every product (e.g. the fixed augmentation
  table of :class:`jaxspec.augmented.Augmentation`);
* ``block``: a restriction to some of the parameters (:meth:`CurvatureOperator.restrict`), the
  diagonal block ``A[S, S]``;
* ``linearize``: a memory budget for caching each batch's product linearised at the fixed
  parameters (:mod:`jaxspec.linearized`), built by :meth:`CurvatureOperator.linearized`, which
  the Lanczos drivers and :func:`jaxspec.slq` call; ``residuals``: what each cached batch keeps.

The operator is a pytree in the spirit of lineax's operators: its arrays (parameters, data,
transform) are leaves and the rest is static, so it can be passed *into* ``jax.jit`` as an
argument rather than closed over (closed-over arrays become constants of the compiled program,
and arrays spanning several processes cannot be closed over at all). Called eagerly, ``mv`` runs
one cached compiled program, so a Python loop of products (the host Lanczos driver) never
retraces. It accepts flat vectors of length ``P`` (``ravel_pytree`` order of ``params``) or
pytrees shaped like ``params``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxspec.batching import Batched
from jaxspec.hvp import hvp
from jaxspec.kinds import (FisherMC, SplitLoss, check_kind, empirical_fisher_mv, fisher_mv,
                           ggn_mv)
from jaxspec.linearized import memory_budget, residual_policy
from jaxspec import reduction
from jaxspec.reduction import resolve_reduce

__all__ = ["KINDS", "CurvatureOperator", "curvature_operator"]

# The per-batch product of each matrix kind: ``product(loss_fn, params, batch, tangent)``, and
# for the Monte-Carlo kinds ``product(loss_fn, params, batch, tangent, key)``.
KINDS: dict[str, Callable] = {"hessian": hvp, "ggn": ggn_mv, "fisher": fisher_mv,
                              "fisher_mc": FisherMC(), "empirical_fisher": empirical_fisher_mv}


@dataclasses.dataclass(frozen=True, eq=False)
class CurvatureOperator:
    """A curvature matrix of a mean loss over a data set, applied by :meth:`mv`.

    Build it with :func:`curvature_operator`. Attributes (``params``, ``data``, ``transform``,
    ``key`` and ``linear`` are the pytree's leaves, the rest is static):

    Attributes:
      params: the point at which the matrix is taken (a pytree of float arrays, one dtype).
      data: the data set, a :class:`jaxspec.Batched`.
      transform: a pytree callable ``batch -> batch`` applied inside every product, or None.
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean over ``batch`` (a
        :class:`jaxspec.SplitLoss` for the kinds other than the Hessian).
      kind: the matrix, a key of :data:`KINDS` or a :class:`jaxspec.FisherMC`.
      reduce: the reduction strategy (:mod:`jaxspec.reduction`).
      key: the PRNG key data (uint32) of a Monte-Carlo kind, fixed for the operator (a leaf of
        the pytree, like the first three), or None.
      block: the selected parameter leaves (``jax.tree.leaves(params)`` indices, ascending) of
        a restriction (:meth:`restrict`), or None for all parameters.
      linearize: the residuals' memory budget of :meth:`linearized`: ``"auto"``, bytes, or None.
      residuals: what a cached batch keeps: ``"auto"``, ``"all"``, ``"compact"`` or a
        ``jax.checkpoint`` policy (:mod:`jaxspec.linearized`).
      linear: the cached linearised products (a :class:`jaxspec.linearized.LinearCache`), or
        None; built by :meth:`linearized`, dropped by :meth:`with_params` and :meth:`restrict`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxspec
      >>> loss = lambda p, x: jnp.mean(x) * jnp.sum(p["a"] ** 2)
      >>> op = jaxspec.curvature_operator(loss, {"a": jnp.ones(2)},
      ...                                 jaxspec.batch_dataset(jnp.ones(3), 2), reduce="scan")
      >>> op.shape, op.mv(jnp.array([1.0, 0.0])).tolist()
      ((2, 2), [2.0, 0.0])
      >>> jax.jit(lambda op, v: op.mv(v))(op, jnp.ones(2)).tolist()  # an argument of jit
      [2.0, 2.0]
    """

    params: Any
    data: Batched | None
    transform: Any
    loss_fn: Callable
    kind: Any = "hessian"
    reduce: Any = None
    key: Any = None
    block: tuple[int, ...] | None = None
    linearize: Any = "auto"
    linear: Any = None
    residuals: Any = "auto"

    def __repr__(self) -> str:
        """What the operator applies, without its arrays: JAX calls ``str()`` on a callable object
        it traces (``jax.eval_shape(op, v)``, ``jax.jit(op)``), and a repr printing every
        parameter, batch and residual array would make that slow for a deep network.

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> jaxspec.curvature_operator(lambda p, x: jnp.sum(p ** 2), jnp.ones(3, jnp.float32),
          ...                            jaxspec.batch_dataset(jnp.ones(5), 2), reduce="scan")
          CurvatureOperator(kind='hessian', size=3, dtype=float32, batches=2 + tail of 1, reduce=ScanReduce(), linear=None)
        """
        data = self.data
        if data is None:
            batches = "none"
        else:
            count = int(np.shape(data.weights)[0])
            tail = jax.tree.leaves(data.tail)
            batches = f"{count}" + (f" + tail of {len(tail[0])}" if tail else "")
        linear = None if self.linear is None else (
            f"{self.linear.count} batches" + (" + tail" if self.linear.tail is not None else "")
            + f", residuals={self.linear.residuals!r}")
        return (f"CurvatureOperator(kind={self.kind!r}, size={self.size}, dtype={self.dtype}, "
                f"batches={batches}, reduce={self.reduce!r}, linear={linear})")

    # ---- linear-operator protocol ---------------------------------------------------------
    @property
    def size(self) -> int:
        """The number of parameters P (of the selected ones, for a restricted operator).

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> jaxspec.curvature_operator(lambda p, x: jnp.sum(p["w"] ** 2), {"w": jnp.ones(3)},
          ...                            jaxspec.batch_dataset(jnp.ones(2), 2)).size
          3
        """
        return int(sum(np.size(x) for x in self._selected_leaves()))

    @property
    def shape(self) -> tuple[int, int]:
        """``(P, P)``.

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> jaxspec.curvature_operator(lambda p, x: jnp.sum(p ** 2), jnp.ones(4),
          ...                            jaxspec.batch_dataset(jnp.ones(2), 2)).shape
          (4, 4)
        """
        return (self.size, self.size)

    @property
    def dtype(self) -> jnp.dtype:
        """The dtype of the parameters, of the vectors ``mv`` takes and returns.

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> jaxspec.curvature_operator(lambda p, x: jnp.sum(p ** 2), jnp.ones(2, jnp.float32),
          ...                            jaxspec.batch_dataset(jnp.ones(2), 2)).dtype
          dtype('float32')
        """
        return jnp.dtype(self._selected_leaves()[0].dtype)

    def mv(self, v: Any, /) -> Any:
        """The matrix times ``v``: a flat ``(P,)`` vector, or a pytree like ``params``.

        Traceable unless the reduction is the host loop; called eagerly it runs one cached
        compiled program (for the host loop: one per group of batches).

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p["w"] ** 2),
          ...                                 {"w": jnp.ones(2)},
          ...                                 jaxspec.batch_dataset(jnp.full(3, 2.0), 2))
          >>> op.mv({"w": jnp.array([1.0, 2.0])})["w"].tolist()   # a pytree in, a pytree out
          [4.0, 8.0]
        """
        if isinstance(v, (jax.Array, np.ndarray)) and np.ndim(v) == 1:
            return self.reduce.apply(self, self._check_vector(v))
        flat = self.ravel(v)
        return self.unravel(self.reduce.apply(self, flat))

    __call__ = mv

    def batch_mv(self, batch: Any, tangent: Any, /) -> jax.Array:
        """The product on one batch (the batch transform applied first), flat: what a reduction
        strategy sums with the batch weights. ``tangent`` is a pytree like ``params`` (for a
        restricted operator: like :meth:`unravel`'s, the selected leaves and None elsewhere).

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 2),
          ...                                 jnp.ones(2), jaxspec.batch_dataset(jnp.ones(2), 2))
          >>> op.batch_mv(jnp.full(2, 3.0), jnp.ones(2)).tolist()
          [6.0, 6.0]
        """
        if self.transform is not None:
            batch = self.transform(batch)
        product = KINDS[self.kind] if isinstance(self.kind, str) else self.kind
        extra = () if self.key is None else (self.key,)  # the Monte-Carlo kinds' fixed key
        loss_fn, params = self.loss_fn, self.params
        if self.block is not None:  # differentiate the selected leaves only, the rest frozen
            loss_fn, params = self._restricted_loss(), self._selected_leaves()
            tangent = tuple(jax.tree.leaves(tangent))
        out = product(loss_fn, params, batch, tangent, *extra)
        return ravel_pytree(out)[0]

    # ---- helpers --------------------------------------------------------------------------
    def ravel(self, tree: Any, /) -> jax.Array:
        """A pytree like ``params`` as a flat ``(P,)`` vector (``ravel_pytree`` order); for a
        restricted operator a pytree like :meth:`unravel`'s.

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> op = jaxspec.curvature_operator(lambda p, x: 0.0 * p["a"].sum(),
          ...                                 {"a": jnp.ones(1), "b": jnp.ones(2)},
          ...                                 jaxspec.batch_dataset(jnp.ones(2), 2))
          >>> op.ravel({"a": jnp.array([1.0]), "b": jnp.array([2.0, 3.0])}).tolist()
          [1.0, 2.0, 3.0]
        """
        if jax.tree.structure(tree) != jax.tree.structure(self._space()):
            like = "params" if self.block is None else "op.unravel's (None at frozen leaves)"
            raise TypeError(f"the vector must be flat (P,) or a pytree like {like}; got structure "
                            f"{jax.tree.structure(tree)}")
        for (path, x), like in zip(jax.tree_util.tree_leaves_with_path(tree),
                                   jax.tree.leaves(self._space())):
            if np.shape(x) != np.shape(like) or jnp.result_type(x) != jnp.result_type(like):
                raise TypeError(
                    f"the vector's leaf {jax.tree_util.keystr(path)} has shape {np.shape(x)} and "
                    f"dtype {jnp.result_type(x)}; the parameter's are {np.shape(like)} and "
                    f"{jnp.result_type(like)}")
        return ravel_pytree(tree)[0]

    def unravel(self, flat: jax.Array, /) -> Any:
        """A flat ``(P,)`` vector as a pytree like ``params`` (e.g. a Ritz vector); for a
        restricted operator, ``params`` with None in place of the frozen leaves.

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> op = jaxspec.curvature_operator(lambda p, x: 0.0 * p["a"].sum(),
          ...                                 {"a": jnp.ones(1), "b": jnp.ones(2)},
          ...                                 jaxspec.batch_dataset(jnp.ones(2), 2))
          >>> op.unravel(jnp.array([1.0, 2.0, 3.0]))["b"].tolist()
          [2.0, 3.0]
        """
        return ravel_pytree(self._space())[1](flat)

    def with_params(self, params: Any, /) -> "CurvatureOperator":
        """The same matrix kind, data and reduction at other parameters (e.g. during training).

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 3),
          ...                                 jnp.ones(1), jaxspec.batch_dataset(jnp.ones(2), 2))
          >>> op.with_params(jnp.full(1, 2.0)).mv(jnp.ones(1)).tolist()   # 6 p
          [12.0]
        """
        _check_params(params)
        if self.block is not None and jax.tree.structure(params) != jax.tree.structure(self.params):
            raise ValueError("a restricted operator's new params must have the structure of its "
                             "params (its block indexes their leaves)")
        return self.reduce.prepare(dataclasses.replace(self, params=params, linear=None))

    def with_reduce(self, reduce: Any, /) -> "CurvatureOperator":
        """The same matrix with another batch reduction (``reduce`` as in
        :func:`curvature_operator`), e.g. ``"scan"`` for a program that traces or vmaps the
        operator, which the host reduction cannot be.

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 3),
          ...                                 jnp.ones(1), jaxspec.batch_dataset(jnp.ones(2), 2),
          ...                                 reduce="host")
          >>> scan = op.with_reduce("scan")
          >>> scan.reduce, scan.mv(jnp.ones(1)).tolist() == op.mv(jnp.ones(1)).tolist()
          (ScanReduce(), True)
        """
        op = dataclasses.replace(self, reduce=None, linear=None)
        strategy = resolve_reduce(reduce, op)
        return strategy.prepare(dataclasses.replace(op, reduce=strategy))

    def fingerprint(self) -> str:
        """SHA-1 of what the operator applies: parameters, data, transform, loss, kind and block.

        Two operators with the same fingerprint are the same matrix; a Lanczos checkpoint
        records it (:class:`jaxspec.io.LanczosCheckpoint`) so that a run is never resumed under
        another matrix. The loss is hashed as the program it computes on one batch (its jaxpr,
        with the constants it closes over, such as BatchNorm statistics), not by its Python
        name: two closures of one factory are told apart, and the digest is the same in every
        process. The zero-weight batches a mesh reduction appends are left out, so one process
        gets the same digest on any number of devices (a run resumes on fewer GPUs). Arrays on
        other processes' devices are hashed by their local shards.

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> data = jaxspec.batch_dataset(jnp.ones(2), 2)
          >>> loss = lambda p, x: jnp.sum(p ** 2)
          >>> a = jaxspec.curvature_operator(loss, jnp.ones(2), data)
          >>> a.fingerprint() == a.with_params(jnp.ones(2)).fingerprint()
          True
          >>> a.fingerprint() == a.with_params(2 * jnp.ones(2)).fingerprint()
          False
        """
        cached = self.__dict__.get("_fingerprint")
        if cached is not None:  # hashing the data is the cost; every probe's checkpoint asks
            return cached
        h = hashlib.sha1()
        h.update(_without_addresses(repr((
            getattr(self.loss_fn, "__qualname__", repr(self.loss_fn)), self.kind,
            type(self.transform).__name__))).encode())
        arrays = (self.params, _unpadded(self.data), self.transform)
        if self.key is not None:
            arrays += (self.key,)
        leaves, treedef = jax.tree.flatten(arrays)
        h.update(_without_addresses(str(treedef)).encode())  # a Partial's function, say
        if self.block is not None:  # hashed only when set: restriction is its own matrix
            h.update(repr(("block", self.block)).encode())
        program = self._loss_program()
        h.update(_without_addresses(str(program.jaxpr)).encode())
        for leaf in leaves + list(program.consts):
            for part in _local_parts(leaf):
                h.update(str((part.dtype, part.shape)).encode())
                h.update(np.ascontiguousarray(part).tobytes())
        object.__setattr__(self, "_fingerprint", h.hexdigest())  # arrays are immutable
        return self._fingerprint

    def _loss_program(self) -> Any:
        """The jaxpr of the loss on one batch's shapes, the transform applied first: what the
        operator differentiates, whatever Python objects define it."""
        batches, tail = self.data.batches, self.data.tail
        like = (jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), batches)
                if batches is not None else
                jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tail))

        def loss(params, transform, batch):
            return self.loss_fn(params, batch if transform is None else transform(batch))

        return jax.make_jaxpr(loss)(self.params, self.transform, like)

    def restrict(self, select: Any, /) -> "CurvatureOperator":
        """The operator on a block of parameters: the sub-matrix ``A[S, S]``, the rest frozen.

        ``select`` picks leaves of ``params`` by path (:func:`jaxspec.blocks.select_leaves`): a
        regex searched in ``jax.tree_util.keystr(path)`` or a predicate ``(path, leaf) ->
        bool``. The result acts on flat vectors of the selected parameters only and
        differentiates with respect to them only; every kind, reduction and transform carries
        over. Restricting a restricted operator keeps the leaves both select.

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> loss = lambda p, x: jnp.mean(x) * (jnp.sum(p["a"] ** 2) + p["a"][0] * p["b"][0])
          >>> op = jaxspec.curvature_operator(loss, {"a": jnp.ones(2), "b": jnp.ones(1)},
          ...                                 jaxspec.batch_dataset(jnp.ones(2), 2))
          >>> sub = op.restrict("a")          # a regex over the paths: ['a']
          >>> sub.shape, sub.mv(jnp.array([1.0, 0.0])).tolist()   # H[a, a] = 2 I
          ((2, 2), [2.0, 0.0])
          >>> sub.unravel(jnp.ones(2))["b"] is None
          True
        """
        from jaxspec.blocks import select_leaves

        block = select_leaves(self.params, select)
        if self.block is not None:
            block = tuple(i for i in block if i in self.block)
            if not block:
                raise ValueError(f"{select!r} selects none of the leaves this operator is "
                                 "already restricted to")
        return dataclasses.replace(self, block=block, linear=None)

    def linearized(self, rows: int | None = None) -> "CurvatureOperator":
        """The operator with each batch's product linearised once at its fixed parameters: the
        same matrix, each product then recomputes only the part that depends on the vector.

        ``jax.linearize`` of the per-batch product keeps the work that depends only on the
        parameters and the batch (forward pass, activation derivatives) as residual arrays;
        the batches whose residuals fit in the ``linearize`` budget are cached, the others
        recomputed at every product (:mod:`jaxspec.linearized`). Under ``"auto"`` on a CPU,
        ``rows`` parameter vectors (a Lanczos run's basis, ``num_steps + 1``: what the drivers
        pass) or one call's activations (:data:`jaxspec.reduction.GROUP_BYTES`), whichever is
        more, bound the budget (:func:`jaxspec.linearized.memory_budget`). The operator
        itself if it already holds a cache, if the budget is None or 0, or if its reduction
        has no cache (a device mesh). Worth it when many products are taken at one point
        (Lanczos, SLQ).

        Example:
          >>> import jax.numpy as jnp, jaxspec
          >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 3),
          ...                                 jnp.ones(2), jaxspec.batch_dataset(jnp.ones(4), 2))
          >>> fast = op.linearized()
          >>> fast.linear.count, fast.mv(jnp.array([1.0, 0.0])).tolist()   # 6 p v
          (2, [6.0, 0.0])
        """
        build = getattr(self.reduce, "linearize", None)
        basis = None if rows is None else rows * self.size * jnp.dtype(self.dtype).itemsize
        budget = memory_budget(self.linearize, allowance=None if basis is None else
                               max(basis, reduction.GROUP_BYTES))
        if self.linear is not None or build is None or budget == 0:
            return self
        op = build(self, budget)
        if "_fingerprint" in self.__dict__:  # the same matrix
            object.__setattr__(op, "_fingerprint", self._fingerprint)
        return op

    def _selected_leaves(self) -> tuple:
        leaves = jax.tree.leaves(self.params)
        return tuple(leaves) if self.block is None else tuple(leaves[i] for i in self.block)

    def _space(self) -> Any:
        """A pytree of the vectors' space: params, None at leaves outside the block."""
        if self.block is None:
            return self.params
        leaves, treedef = jax.tree.flatten(self.params)
        kept = set(self.block)
        return treedef.unflatten([x if i in kept else None for i, x in enumerate(leaves)])

    def _merged(self, selected: tuple) -> Any:
        """``params`` with the selected leaves replaced by ``selected``."""
        leaves, treedef = jax.tree.flatten(self.params)
        for i, x in zip(self.block, selected):
            leaves[i] = x
        return treedef.unflatten(leaves)

    def _restricted_loss(self) -> Any:
        """``loss_fn`` of the selected leaves, the others held at their values in ``params``; a
        :class:`jaxspec.SplitLoss` stays one (its model restricted), so every kind carries over."""
        loss_fn, merged = self.loss_fn, self._merged
        if isinstance(loss_fn, SplitLoss):
            return dataclasses.replace(loss_fn, apply=lambda sel, batch: loss_fn.apply(
                merged(sel), batch))
        return lambda sel, batch: loss_fn(merged(sel), batch)

    def _check_vector(self, v: Any) -> jax.Array:
        if isinstance(v, np.ndarray):  # a host vector in the dtype JAX would give it
            v = jnp.asarray(v)
        if v.shape != (self.size,) or v.dtype != self.dtype:
            raise TypeError(f"the operator acts on vectors of shape ({self.size},) and dtype "
                            f"{self.dtype}; got shape {v.shape}, dtype {v.dtype}")
        return v


jax.tree_util.register_dataclass(CurvatureOperator,
                                 data_fields=["params", "data", "transform", "key", "linear"],
                                 meta_fields=["loss_fn", "kind", "reduce", "block", "linearize",
                                              "residuals"])


def _without_addresses(text: str) -> str:
    """``text`` without the memory addresses that reprs of functions carry (`` at 0x7f..``),
    which differ from one process to the next."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def _unpadded(data: Any) -> Any:
    """``data`` without trailing zero-weight batches (the padding of a mesh reduction, which
    depends on the device count), where its arrays are all on this process."""
    weights = np.asarray(data.weights, np.float64)
    real = int(np.flatnonzero(weights)[-1]) + 1 if weights.any() else 0
    local = all(not isinstance(x, jax.Array) or x.is_fully_addressable
                for x in jax.tree.leaves(data.batches))
    if data.batches is None or real == weights.size or not local:
        return data
    return data._replace(batches=jax.tree.map(lambda x: x[:real], data.batches),
                         weights=weights[:real])


def _local_parts(leaf: Any) -> list[np.ndarray]:
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)  # a key a loss closes over
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return [np.asarray(s.data) for s in leaf.addressable_shards]
    return [np.asarray(leaf)]


def _check_params(params: Any) -> None:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError("params has no arrays")

    # the dtype JAX computes in: a Python float, or a NumPy float64 array with x64 off, is a
    # float32 next to float32 arrays, not a mixture
    def dtype_of(x):
        return jnp.dtype(jnp.result_type(x))

    dtypes = {dtype_of(x) for _, x in leaves}
    for path, x in leaves:
        dtype = dtype_of(x)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"params{jax.tree_util.keystr(path)} has dtype {dtype}: curvature is "
                            "taken with respect to float parameters; keep integer state out of "
                            "params (close over it in loss_fn)")
        if dtype in (jnp.bfloat16, jnp.float16):
            raise TypeError(f"params{jax.tree_util.keystr(path)} has dtype {dtype}: Lanczos needs "
                            "float32 or float64 vectors; cast the parameters, e.g. "
                            "jax.tree.map(lambda x: x.astype(jnp.float32), params)")
    if len(dtypes) > 1:
        raise TypeError(f"params mixes dtypes {sorted(map(str, dtypes))}; cast them to one")


def curvature_operator(loss_fn: Callable[[Any, Any], jax.Array], params: Any, data: Batched, /,
                       *, kind: Any = "hessian", reduce: Any = "auto",
                       transform: Any = None, key: Any = None,
                       linearize: Any = "auto", residuals: Any = "auto") -> CurvatureOperator:
    """The curvature matrix ``kind`` of the mean of ``loss_fn`` over ``data``, at ``params``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean over ``batch``.
      params: pytree of float arrays of one dtype (float32 or float64).
      data: the data set, from :func:`jaxspec.batch_dataset` (or
        :func:`jaxspec.parallel.global_batched` with several processes).
      kind: ``"hessian"`` (of ``loss_fn``); with a :class:`jaxspec.SplitLoss` also ``"ggn"``
        (Gauss-Newton ``J^T H_z J``), ``"fisher"`` (exact Fisher of the predictive
        distribution), ``"fisher_mc"`` or :class:`jaxspec.FisherMC` ``(num_samples)``
        (Monte-Carlo Fisher, needs ``key``) and ``"empirical_fisher"`` (also for a plain
        ``loss_fn`` that is a mean of per-sample terms); see :mod:`jaxspec.kinds`.
      reduce: ``"auto"`` (``lax.scan``; the mesh over every device where one process has
        several GPUs or TPUs; on a CPU the host loop for products with small activations:
        :func:`jaxspec.reduction.resolve_reduce`), ``"scan"``, ``"host"``,
        ``"mesh"`` (every device), a :class:`jax.sharding.Mesh`, or a strategy from
        :mod:`jaxspec.reduction` / :class:`jaxspec.parallel.MeshReduce`.
      transform: a pytree callable ``batch -> batch`` applied inside every product (e.g.
        :class:`jaxspec.augmented.Augmentation`), or None.
      key: a PRNG key (``jax.random.key``) for a Monte-Carlo kind, fixed for the operator:
        every product applies the same matrix. Stored as its key data.
      linearize: memory for caching the per-batch products linearised at ``params``
        (:meth:`CurvatureOperator.linearized`, :mod:`jaxspec.linearized`), which makes each
        product cheaper: ``"auto"`` (a share of the free memory of an accelerator; on a CPU,
        in a Lanczos run, also no more than its Krylov basis takes), a number of bytes (the
        knob that trades memory for speed), or None (no cache, every product recomputed).
      residuals: what each cached batch keeps: ``"all"`` (every value its linear program
        reads), ``"compact"`` (the outputs of matrix products, convolutions and activations
        only, the elementwise work between them recomputed at each product: less memory for
        some recomputation, README "What a cache keeps"), ``"auto"`` (all where every batch
        fits the budget so, else the compact form where it caches at least twice as many
        batches), or a ``jax.checkpoint`` policy.

    Returns:
      A :class:`CurvatureOperator`, its arrays placed as the reduction needs them.

    Example:
      >>> import jax.numpy as jnp, numpy as np, jaxspec
      >>> loss = lambda w, b: 0.5 * jnp.mean((b["x"] @ w - b["y"]) ** 2)
      >>> x = np.random.default_rng(0).normal(size=(10, 3))
      >>> op = jaxspec.curvature_operator(loss, jnp.zeros(3),
      ...                                 jaxspec.batch_dataset({"x": x, "y": np.ones(10)}, 4))
      >>> dense = np.stack([np.asarray(op.mv(e)) for e in np.eye(3)])
      >>> bool(np.allclose(dense, x.T @ x / 10, atol=1e-5))   # the least-squares Hessian
      True
    """
    product = kind if isinstance(kind, FisherMC) else KINDS.get(kind) if isinstance(
        kind, str) else None
    if product is None:
        raise ValueError(f"kind must be one of {sorted(KINDS)} or a jaxspec.FisherMC, got {kind!r}")
    if not isinstance(data, Batched):
        raise TypeError("data must be a jaxspec.Batched (from jaxspec.batch_dataset), got "
                        f"{type(data).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable: loss_fn(params, batch) -> scalar")
    if transform is not None and (not callable(transform) or jax.tree_util.treedef_is_leaf(
            jax.tree.structure(transform))):
        raise TypeError("transform must be a callable pytree, which enters compiled programs as "
                        "an argument (jax.tree_util.Partial(fn, *arrays), or "
                        f"jaxspec.augmented.Augmentation); got {type(transform).__name__}")
    check_kind(kind, product, loss_fn, key)
    if key is not None and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)  # plain uint32: placed and hashed like any array
    _check_params(params)
    memory_budget(linearize)  # a bad budget fails here, not at the first Lanczos run
    if residuals != "auto":
        residual_policy(residuals)  # likewise a bad residuals choice
    op = CurvatureOperator(params, data, transform, loss_fn, kind, None, key,
                           linearize=linearize, residuals=residuals)
    strategy = resolve_reduce(reduce, op)
    return strategy.prepare(dataclasses.replace(op, reduce=strategy))
