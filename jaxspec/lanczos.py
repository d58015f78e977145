"""Lanczos tridiagonalisation with full or partial re-orthogonalisation, compiled or host-driven.

The step mathematics lives in one function, :func:`lanczos_step`; two drivers call it:

* the compiled driver (:func:`lanczos`, :func:`lanczos_continue`): ``lax.fori_loop`` over steps,
  the matvec traced into the loop body, so a run (or a chunk of one) is a single XLA program:
  the right choice on GPU/TPU;
* the host driver (``driver="host"`` in :func:`run_lanczos`): a Python loop over steps that calls
  the matvec eagerly and a jitted :func:`lanczos_step`: the CPU default for small products (its
  steps read the basis blocks in place, where XLA:CPU copies a slice of an operand before a
  dot), and the one for matvecs that stream data from host memory. A CNN's products run at full
  speed in the compiled driver on CPU too (:mod:`jaxspec.convolutions`), faster than called one
  by one (:data:`jaxspec.reduction.SCAN_BYTES`), so an operator takes it there by default.

:func:`run_lanczos` drives either in chunks of steps; between chunks it calls hooks
(:class:`LanczosHook`: the checkpoints and progress bars of :mod:`jaxspec.io`), and an
interrupted run resumes from a saved state with identical results. With a device mesh the
compiled driver keeps the state on the mesh, the basis optionally split along the parameter
axis.

Deviations from the textbook algorithm, and why:

* Every new vector goes through the three-term recurrence and is then orthogonalised against the
  whole basis by classical Gram-Schmidt (with ``reorth="partial"`` only at the steps where the
  omega recurrence estimates a loss of orthogonality above ``sqrt(eps)``: :mod:`jaxspec.reorth`,
  which holds both methods; the estimates are part of the state); a second pass runs only where
  the first removed more than half of ``|w|^2`` (the Daniel-Gragg-Kaufman-Stewart test, under a
  ``lax.cond``; ``|w|^2`` before the pass comes from Pythagoras, ``|h|^2 + |w'|^2``). A step that
  passes the test reads the basis twice (the coefficients ``h = Q w``, then ``w - h Q``) instead
  of four times. Without the second pass where it is due, the Ritz values of a long run in float32
  grow spurious copies ("ghosts") and the quadrature weights are wrong. The passes use
  ``Precision.HIGHEST`` so that GPUs do not drop to TF32, and every reduction is a dot (on XLA:CPU
  a reduce first materialises its input: one more pass over ``P`` floats).
* Those two reads of the filled rows are the floor of a step: the dots must all be done before
  the update starts, and XLA does not fuse a ``Q w`` and an ``h Q`` into one pass over ``Q``
  (a column-tiled ``fori_loop`` that does both per tile ran 1.3-1.7x *slower* on XLA:CPU than
  the two passes). ``python -m experiments.speed`` prints that floor next to the real step.
* The basis is read in blocks of ``block_size`` rows, each under a ``lax.cond`` on whether it
  holds a filled row, so a step costs O(i P), not O(m P), and one compilation serves every
  step. The compiled driver reads the blocks of the state's ``(rows, P)`` basis as static
  slices (on a GPU a slice of contiguous rows feeding a GEMM is cheap). The host driver keeps
  the blocks as separate arrays, each a whole argument of the step, so XLA:CPU reads them in
  place (a slice would be copied first); it writes each new row into its block in place
  (donated) and assembles the ``(rows, P)`` basis only for checkpoints and ``return_basis``.
* ``alpha_i`` is the sum of all the Gram-Schmidt coefficients on ``q_i`` and ``beta_i`` is the
  norm after re-orthogonalisation, so T matches the re-orthogonalised basis.
* Breakdown (the Krylov space is invariant) is masked: the remaining steps leave the state
  untouched, and ``num_valid`` says how much of T to use. The test is shift-invariant, as the
  algorithm is: ``beta_i <= tol * beta_{i-1}`` (a coupling that collapses at one step; ``tol``
  defaults to ``sqrt(eps)``), or ``beta_i <= BREAKDOWN_UNITS * eps * |A q_i|`` (rounding level,
  the only test at the first step). Comparing ``beta_i`` with ``|A q_i|`` alone would end a run
  on ``A + c I`` whose spread is small against ``c`` (a damped operator) after one step, with
  one node where the spectrum has many. ``|A q_i|`` is taken from T's column,
  ``sqrt(beta_{i-1}^2 + alpha_i^2 + beta_i^2)`` (its value on the orthogonalised basis), so the
  step does not read the product once more for its norm. A matvec that returns NaN or Inf, or
  products outside the scales :mod:`jaxspec.norms` supports (the run's largest ``|A q_i|``
  under about ``1e-30 sqrt(P / 100)`` or over ``4e31`` in float32), is treated the same way and
  reported in ``nonfinite_step``.
* Every norm is :func:`jaxspec.norms.norm`: the plain ``sqrt(w . w)`` where ``w . w`` is a
  finite normal number, ``s |w / s|`` (``s`` a power of two near ``max |w|``, under a
  ``lax.cond``) where it over- or underflows; both give the same number where both can, so T
  of ``2^k A`` is ``2^k`` times T of ``A``, bit for bit, over the whole supported range.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspec.checks import check_matvec, check_start_vector, clamp_steps
from jaxspec.compiler import jit, jit_argument
from jaxspec.heap import keep_spare, release_before, take_spare
from jaxspec.linearized import linearized
from jaxspec.norms import describe_range, hypot, in_range, norm
from jaxspec.reorth import check_method, omega_init, orthogonalise

__all__ = [
    "LanczosHook",
    "LanczosResult",
    "LanczosState",
    "lanczos",
    "lanczos_continue",
    "lanczos_init",
    "lanczos_state_sharding",
    "lanczos_step",
    "resolve_driver",
    "run_lanczos",
]

_HIGHEST = jax.lax.Precision.HIGHEST


class LanczosState(NamedTuple):
    """The state of a Lanczos run between steps (a pytree; save it to resume a run).

    Attributes:
      basis: ``(rows, P)`` Krylov basis, ``rows >= num_steps + 1`` (a multiple of the block size);
        row ``i`` is ``q_i``, rows not yet reached are zero.
      alphas: ``(num_steps,)`` diagonal of T.
      betas: ``(num_steps,)`` off-diagonal of T (``betas[i]`` couples steps ``i`` and ``i + 1``).
      step: number of steps taken.
      num_valid: number of valid steps; stops growing at breakdown or at a non-finite matvec.
      broken_down: whether the Krylov space became invariant (``beta ~ 0``): the run is complete.
      nonfinite_step: the first step whose matvec returned NaN/Inf, or -1.
      omega: ``(2, num_steps + 1)`` estimated loss of orthogonality of the last two basis rows
        (:mod:`jaxspec.reorth`; ``reorth="partial"`` decides by it when to re-orthogonalise).
      passes: Gram-Schmidt passes over the basis made in steps 1 to `step`.
      unit: the omega recurrence's rounding unit (``eps`` at the start; :mod:`jaxspec.reorth`
        raises it under ``reorth="partial"`` where the products are less accurate).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import lanczos_init
      >>> s = lanczos_init(jnp.ones(3), 2, block_size=4)  # advance with lanczos_continue
      >>> int(s.step), int(s.num_valid), bool(s.broken_down), int(s.nonfinite_step)
      (0, 0, False, -1)
      >>> s.num_steps, s.basis.shape
      (2, (4, 3))
    """

    basis: jax.Array
    alphas: jax.Array
    betas: jax.Array
    step: jax.Array
    num_valid: jax.Array
    broken_down: jax.Array
    nonfinite_step: jax.Array
    omega: jax.Array
    passes: jax.Array
    unit: jax.Array

    @property
    def num_steps(self) -> int:
        """The number of steps the state was allocated for.

        Example:
          >>> import jax.numpy as jnp
          >>> from jaxspec import lanczos_init
          >>> s = lanczos_init(jnp.ones(3), 5)
          >>> s.num_steps, int(s.step)   # allocated for 5 steps, none taken yet
          (5, 0)
        """
        return self.alphas.shape[0]


class LanczosResult(NamedTuple):
    """The outcome of a Lanczos run.

    Attributes:
      alphas: ``(num_steps,)`` diagonal of the tridiagonal T; entries past ``num_valid`` are 0.
      betas: ``(num_steps,)`` off-diagonal; T uses ``betas[:num_valid - 1]``.
      num_valid: number of valid steps (less than ``num_steps`` after a breakdown).
      nonfinite_step: first step whose matvec returned NaN/Inf, or -1.
      basis: ``(num_steps + 1, P)`` orthonormal basis rows, or ``None`` unless asked for.
      passes: Gram-Schmidt passes over the basis the run made (``num_valid`` or more with
        ``reorth="full"``, fewer with ``"partial"``).
      unit: the rounding unit of the orthogonality estimates at the end (``eps`` of the dtype
        unless ``reorth="partial"`` measured less accurate products, :mod:`jaxspec.reorth`).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import lanczos
      >>> res = lanczos(lambda v: jnp.array([1.0, 3.0]) * v, jnp.ones(2), 2, return_basis=True)
      >>> int(res.num_valid), int(res.nonfinite_step), res.basis.shape
      (2, -1, (3, 2))
      >>> [round(a, 4) for a in res.alphas.tolist()], round(float(res.betas[0]), 4)
      ([2.0, 2.0], 1.0)
    """

    alphas: jax.Array
    betas: jax.Array
    num_valid: jax.Array
    nonfinite_step: jax.Array
    basis: jax.Array | None = None
    passes: jax.Array | None = None
    unit: jax.Array | None = None


BREAKDOWN_UNITS = 10
"""A ``beta_i`` at or below this many rounding units of ``|A q_i|`` is a breakdown."""


def _default_tol(dtype) -> float:
    return float(np.sqrt(np.finfo(dtype).eps))


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def lanczos_init(v0: jax.Array, num_steps: int, /, *, block_size: int = 16) -> LanczosState:
    """The state before the first step: ``q_0 = v0 / |v0|``, everything else zero.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import lanczos_init
      >>> s = lanczos_init(jnp.array([3.0, 4.0]), 2, block_size=4)
      >>> s.basis.shape, [round(x, 6) for x in s.basis[0].tolist()]
      ((4, 2), [0.6, 0.8])
    """
    check_start_vector(v0)
    return _fresh_state(_first_rows(v0, _num_rows(num_steps, block_size)), num_steps, v0.dtype)


def _check_block_size(block_size: int) -> None:
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")


def _num_rows(num_steps: int, block_size: int) -> int:
    _check_block_size(block_size)
    return -(-(num_steps + 1) // block_size) * block_size


@functools.partial(jax.jit, static_argnums=1)
def _first_rows(v0: jax.Array, rows: int) -> jax.Array:
    """``(rows, P)`` zeros with ``v0 / |v0|`` in row 0, written in one pass (jitted: eagerly,
    ``.at[0].set`` would copy the whole array once more)."""
    return jnp.zeros((rows, v0.shape[0]), v0.dtype).at[0].set(v0 / norm(v0))


def _fresh_state(basis, num_steps: int, dtype) -> LanczosState:
    zeros = lambda: jnp.zeros((num_steps,), dtype)  # noqa: E731  (distinct buffers: donated)
    i32 = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    return LanczosState(basis, zeros(), zeros(), i32(0), i32(0), jnp.asarray(False), i32(-1),
                        omega_init(num_steps, dtype), i32(0), jnp.asarray(jnp.finfo(dtype).eps,
                                                                          dtype))


def _active(state: LanczosState) -> jax.Array:
    return ~state.broken_down & (state.nonfinite_step < 0)


def _block_readers(basis, block: int) -> list:
    """Zero-argument functions returning the ``(block, P)`` blocks of the basis, in row order.

    A ``(rows, P)`` array (the state's basis; the compiled driver) is read by static slices, a
    tuple of ``(block, P)`` arrays (the host driver's basis) block by block, as is.
    """
    if isinstance(basis, (tuple, list)):
        return [lambda b=b: b for b in basis]
    return [lambda k=k: basis[k * block:(k + 1) * block] for k in range(basis.shape[0] // block)]


def _project_out(blocks: list, w: jax.Array, count: jax.Array):
    """One classical Gram-Schmidt pass, ``w - Q^T (Q w)``, against rows ``0 .. count-1``.

    ``blocks`` are readers from :func:`_block_readers`, in row order. Each block is read under a
    ``lax.cond`` on whether it holds a filled row, so the pass reads the filled blocks only,
    with one compilation for every step. Each block is read as a whole array: on XLA:CPU a
    slice of an operand, static or dynamic, is copied before a dot; a block that is a whole
    argument (the host driver's) is not, and a ``lax.cond`` passes it to its branch in place.
    Returns the new ``w`` and ``h = Q w``.
    """
    rows = [jax.eval_shape(read).shape[0] for read in blocks]
    starts = np.cumsum([0] + rows[:-1]).tolist()  # the last block may be shorter
    h = [jax.lax.cond(start < count,
                      lambda read=read: jnp.dot(read(), w, precision=_HIGHEST),
                      lambda n=n: jnp.zeros((n,), w.dtype))
         for read, start, n in zip(blocks, starts, rows)]
    for read, start, hk in zip(blocks, starts, h):
        w = jax.lax.cond(start < count,
                         lambda w, hk, read=read: w - jnp.dot(hk, read(), precision=_HIGHEST),
                         lambda w, hk: w, w, hk)
    return w, jnp.concatenate(h)


def _advance(state: LanczosState, w: jax.Array, q_prev: jax.Array, q_cur: jax.Array,
             blocks: list, tol: float | None, reorth: str = "full"
             ) -> tuple[jax.Array, LanczosState]:
    """The step mathematics, shared by both drivers: folds ``w = A q_i`` into the state.

    ``blocks`` hold the basis (readers, :func:`_block_readers`). Returns
    ``q_{i+1}`` (zero if the step is masked) and the state with everything updated but the
    basis, which each driver writes in its own layout.
    """
    tol = _default_tol(w.dtype) if tol is None else tol
    i = state.step
    active = _active(state)
    # the three-term recurrence (alpha's first part), then re-orthogonalisation against the
    # filled basis by the method asked for (jaxspec.reorth: every step, or where the estimated
    # loss of orthogonality calls for it). Every reduction is a dot: on XLA:CPU a dot streams
    # its operands once, where a reduce materialises its input first.
    beta_prev = jnp.where(i > 0, state.betas[jnp.maximum(i - 1, 0)], 0)
    a0 = jnp.dot(q_cur, w, precision=_HIGHEST)
    w = w - beta_prev * q_prev - a0 * q_cur

    # the largest |A q_k| of the steps before, to within a factor sqrt(3): T's largest entry
    earlier = jnp.maximum(jnp.max(jnp.abs(state.alphas)), jnp.max(state.betas))

    def outcome(alpha, beta):
        # |A q_i| from T's column, A q_i = beta_{i-1} q_{i-1} + alpha_i q_i + beta_i q_{i+1} on
        # the (re-)orthogonalised basis: no read of the product for its norm, and no square
        # that over- or underflows (jaxspec.norms). It is finite where the product is (a NaN
        # or Inf entry reaches alpha and beta). A run whose products are outside the scales
        # jaxspec.norms supports is stopped as a non-finite one. A masked step's w is not
        # zeroed: nothing it touches is kept.
        product = hypot(alpha, beta_prev, beta)
        keep = active & in_range(jnp.maximum(product, earlier), w.dtype, w.shape[0])
        floor = jnp.maximum(tol * beta_prev, BREAKDOWN_UNITS * jnp.finfo(w.dtype).eps * product)
        return keep, keep & (beta > floor)

    def finish(w, alpha, beta):  # q_{i+1}, made where the last w is (jaxspec.reorth)
        _, go_on = outcome(alpha, beta)
        return jnp.where(go_on, w / jnp.where(go_on, beta, 1.0), jnp.zeros_like(w))

    q_next, alpha, beta, omega, passes, unit = orthogonalise(
        reorth, lambda w: _project_out(blocks, w, i + 1), w, i, a0, state.omega, state.alphas,
        state.betas, state.unit, finish)
    keep, go_on = outcome(alpha, beta)
    return q_next, state._replace(
        alphas=state.alphas.at[i].set(jnp.where(keep, alpha, 0)),
        betas=state.betas.at[i].set(jnp.where(go_on, beta, 0)),
        step=i + 1,
        num_valid=jnp.where(keep, i + 1, state.num_valid).astype(jnp.int32),
        broken_down=state.broken_down | (keep & ~go_on),
        nonfinite_step=jnp.where(active & ~keep, i, state.nonfinite_step).astype(jnp.int32),
        omega=jnp.where(go_on, omega, state.omega),
        passes=state.passes + jnp.where(keep, passes, 0),
        unit=jnp.where(go_on, unit, state.unit),
    )


def lanczos_step(
    state: LanczosState, w: jax.Array, /, *, tol: float | None = None, block_size: int = 16,
    reorth: str = "full",
) -> LanczosState:
    """Folds ``w = A q_i`` (``i = state.step``) into the state: one Lanczos step.

    Shared by both drivers. ``w`` goes through the three-term recurrence and is then
    re-orthogonalised against the filled basis (classical Gram-Schmidt over blocks of
    ``block_size`` rows, the value given to :func:`lanczos_init`; a second pass where the first
    removed more than half of ``|w|^2``; with ``reorth="partial"`` only where the estimated loss
    of orthogonality exceeds ``sqrt(eps)``, see :mod:`jaxspec.reorth`), ``alpha_i`` and ``beta_i``
    are recorded, and ``q_{i+1} = w / beta_i`` is written. If the run has already broken down, or
    ``|w|`` is not finite (a NaN or Inf entry), or the products are outside the scales
    :mod:`jaxspec.norms` supports, or ``beta_i`` is at or below
    ``tol * beta_{i-1}`` (default ``sqrt(eps)`` of the dtype) or a few rounding units of
    ``|A q_i|`` (a breakdown: see the module docstring), the step is masked: nothing that follows
    uses it, and no NaN enters the state.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import lanczos_init, lanczos_step
      >>> A = jnp.diag(jnp.array([1.0, 2.0]))
      >>> s = lanczos_init(jnp.array([1.0, 1.0]), 2)
      >>> s = lanczos_step(s, A @ s.basis[0])
      >>> round(float(s.alphas[0]), 5), round(float(s.betas[0]), 5)
      (1.5, 0.5)
    """
    if state.basis.shape[0] % block_size:
        raise ValueError(f"block_size={block_size} does not divide the basis rows "
                         f"({state.basis.shape[0]}); pass the block_size given to lanczos_init")
    i = state.step
    q_cur = state.basis[i]
    q_prev = state.basis[jnp.maximum(i - 1, 0)]
    q_next, state = _advance(state, w, q_prev, q_cur, _block_readers(state.basis, block_size),
                             tol, reorth=check_method(reorth))
    return state._replace(basis=state.basis.at[i + 1].set(q_next, mode="drop"))

def lanczos_continue(
    matvec: Callable[[jax.Array], jax.Array],
    state: LanczosState,
    num_new_steps,
    /,
    *,
    tol: float | None = None,
    block_size: int = 16,
    reorth: str = "full",
) -> LanczosState:
    """Takes ``num_new_steps`` more steps in one ``lax.fori_loop`` (the compiled driver).

    Traceable: ``num_new_steps`` may be a traced integer, so one compiled chunk serves every chunk
    length. After a breakdown the matvec is skipped (``lax.cond``). Steps beyond the allocated
    ``num_steps`` are not taken.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import lanczos_init, lanczos_continue
      >>> A = jnp.diag(jnp.arange(1.0, 5.0))
      >>> s = lanczos_init(jnp.ones(4), 4)
      >>> s = jax.jit(lambda s, k: lanczos_continue(lambda v: A @ v, s, k))(s, 2)
      >>> int(s.step), int(s.num_valid)
      (2, 2)
    """
    stop = jnp.minimum(state.step + num_new_steps, state.num_steps)

    def body(_, s):
        q = s.basis[s.step]
        w = jax.lax.cond(_active(s), matvec, jnp.zeros_like, q)
        return lanczos_step(s, w, tol=tol, block_size=block_size, reorth=reorth)

    return jax.lax.fori_loop(state.step, stop, body, state)


def _result(state: LanczosState, num_steps: int, return_basis: bool, dim=None) -> LanczosResult:
    return LanczosResult(state.alphas, state.betas, state.num_valid, state.nonfinite_step,
                         state.basis[: num_steps + 1, :dim] if return_basis else None,
                         state.passes, state.unit)


def _stop(state: LanczosState) -> bool:
    """Waits for ``state``'s flags (one transfer; evaluated eagerly, :func:`_active` would
    compile three programs): raises on a NaN/Inf, True at a breakdown."""
    nonfinite_step, broken_down = jax.device_get((state.nonfinite_step, state.broken_down))
    _raise_if_nonfinite(nonfinite_step, state.alphas.dtype)
    return bool(broken_down)


def _raise_if_nonfinite(step, dtype) -> None:
    step = int(step)
    if step >= 0:
        raise FloatingPointError(
            f"the matvec returned NaN or Inf at Lanczos step {step} (0-based), or a vector "
            f"whose norm is outside the scales Lanczos supports (|A q| {describe_range(dtype)}, "
            "P the dimension: jaxspec.norms; rescale the operator by a power of two); the steps "
            "before it are valid. Check the loss at these parameters, or the data of that HVP."
        )


def lanczos(
    matvec: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    num_steps: int,
    /,
    *,
    tol: float | None = None,
    block_size: int = 16,
    return_basis: bool = False,
    reorth: str = "full",
) -> LanczosResult:
    """Lanczos tridiagonalisation of a symmetric operator, with full or partial
    re-orthogonalisation.

    Runs ``num_steps`` steps from ``v0`` in one ``lax.fori_loop``. Can be called inside
    ``jax.jit`` (then check ``result.nonfinite_step`` yourself) and vmapped over ``v0``.
    Outside a trace, a NaN/Inf from the matvec, or products outside the scales
    :mod:`jaxspec.norms` supports, raise ``FloatingPointError`` naming the step.

    Args:
      matvec: ``v -> A v`` for a symmetric ``A``, on flat vectors like ``v0``; traceable.
      v0: the start vector (nonzero, finite); its dtype is the working precision.
      num_steps: number of steps m; larger than ``len(v0)`` is clamped to it, with a warning.
      tol: breakdown where ``beta_i <= tol * beta_{i-1}`` (default ``sqrt(eps)``; also at a
        few rounding units of ``|A q_i|``, see the module docstring).
      block_size: rows of the basis read per block when re-orthogonalising.
      return_basis: also return the ``(m + 1, P)`` orthonormal basis.
      reorth: ``"full"`` (every step) or ``"partial"`` (where the omega recurrence asks for
        it, keeping ``|Q^T Q - I| <= sqrt(eps)``: the same Ritz values and quadrature weights
        with fewer passes over the basis); :mod:`jaxspec.reorth`.

    Returns:
      A :class:`LanczosResult`. T is ``diag(alphas[:k]) + offdiag(betas[:k-1])`` with
      ``k = num_valid``; :meth:`jaxspec.Spectrum.from_lanczos` builds the spectrum from it.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import lanczos
      >>> A = jnp.diag(jnp.array([1.0, 2.0, 2.0, 5.0]))  # three distinct eigenvalues
      >>> res = lanczos(lambda v: A @ v, jnp.ones(4), 4)
      >>> int(res.num_valid)
      3
    """
    check_start_vector(v0)
    num_steps = clamp_steps(num_steps, v0.shape[0])
    check_matvec(matvec, v0)
    state = lanczos_init(v0, num_steps, block_size=block_size)
    state = lanczos_continue(matvec, state, num_steps, tol=tol, block_size=block_size,
                             reorth=reorth)
    if _is_concrete(state.nonfinite_step):
        _raise_if_nonfinite(state.nonfinite_step, state.alphas.dtype)
    return _result(state, num_steps, return_basis)


class LanczosHook:
    """Base class of the hooks :func:`run_lanczos` calls between chunks (all methods no-ops).

    Checkpoints and progress bars are hooks from the edge (:mod:`jaxspec.io`), so this module
    holds only the algorithm. ``resume`` returns a saved state (NumPy arrays) to continue from,
    or None; ``start`` is called once with the first step and the total; ``after_chunk`` after
    every chunk, with a function that assembles the whole state on the host (call it only if
    the state is needed: it copies the basis); ``close`` at the end, also after an error.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import LanczosHook, run_lanczos
      >>> class Steps(LanczosHook):
      ...     seen = []
      ...     def after_chunk(self, snapshot, step, num_steps):
      ...         self.seen.append(step)
      >>> _ = run_lanczos(lambda v: v, jnp.arange(1.0, 6.0), 5, chunk_size=2, hooks=[Steps()])
      >>> Steps.seen
      [1]
    """

    def resume(self, v0, num_steps: int, block_size: int, matvec) -> LanczosState | None:
        """A saved state to continue from (NumPy arrays), or None.

        Example:
          >>> from jaxspec import LanczosHook
          >>> LanczosHook().resume(None, 3, 16, None) is None
          True
        """
        return None

    def start(self, step: int, num_steps: int) -> None:
        """Called once before the first chunk.

        Example:
          >>> from jaxspec import LanczosHook
          >>> LanczosHook().start(0, 10)
        """

    def after_chunk(self, snapshot: Callable[[], LanczosState], step: int,
                    num_steps: int) -> None:
        """Called after every chunk; ``snapshot()`` is the whole state on the host.

        Example:
          >>> from jaxspec import LanczosHook
          >>> LanczosHook().after_chunk(lambda: None, 5, 10)
        """

    def close(self) -> None:
        """Called at the end of the run, also after an error.

        Example:
          >>> from jaxspec import LanczosHook
          >>> LanczosHook().close()
        """


def resolve_driver(driver: str = "auto", matvec: Callable | None = None, /) -> str:
    """The Lanczos driver that ``driver`` stands for, for ``matvec`` on this backend.

    ``"auto"``: the driver the operator's reduction is made for (``"host"`` for the host loop,
    ``"compiled"`` for ``lax.scan`` and the mesh); for any other matvec ``"host"`` on CPU (it
    calls any callable, traceable or not, and its steps read the basis in place) and
    ``"compiled"`` elsewhere.
    ``"host"`` and ``"compiled"`` are returned as they are.

    Example:
      >>> import jax
      >>> from jaxspec import resolve_driver
      >>> resolve_driver("auto") == ("host" if jax.default_backend() == "cpu" else "compiled")
      True
      >>> resolve_driver("compiled")
      'compiled'
    """
    if driver == "auto":
        preferred = getattr(getattr(matvec, "reduce", None), "driver", None)
        if preferred is not None:
            return preferred
        return "host" if jax.default_backend() == "cpu" else "compiled"
    if driver not in ("compiled", "host"):
        raise ValueError(f"driver must be 'auto', 'compiled' or 'host', got {driver!r}")
    return driver


def lanczos_state_sharding(mesh: Mesh, /, *, shard_basis: bool = False,
                           axis_name: str | tuple[str, ...] = "data") -> LanczosState:
    """Shardings for a :class:`LanczosState` on ``mesh`` (a pytree of ``NamedSharding``).

    Everything is replicated, except, with ``shard_basis=True``, the ``(rows, P)`` Krylov basis,
    which is split along the parameter axis: ``P(None, axis_name)`` (``axis_name`` one mesh
    axis or a tuple of them: split over their product).

    Example:
      >>> from jaxspec import lanczos_state_sharding
      >>> from jaxspec.parallel import data_mesh
      >>> lanczos_state_sharding(data_mesh(), shard_basis=True).basis.spec
      P(None, 'data')
    """
    whole = NamedSharding(mesh, PartitionSpec())
    basis = NamedSharding(mesh, PartitionSpec(None, axis_name)) if shard_basis else whole
    return LanczosState(basis, *[whole] * (len(LanczosState._fields) - 1))


@functools.lru_cache(maxsize=32)
def _compiled_programs(mesh: Mesh | None, shard_basis: bool, axis_name: str, num_steps: int,
                       dim: int, pad: int, tol: float | None, block_size: int, reorth: str):
    """The jitted init and chunk of the compiled driver, made once per configuration (made per
    call, every call, e.g. every probe of an SLQ run, would recompile the whole run).

    The matvec is an argument of the chunk: a pytree operator's arrays go in as arguments, not
    as constants of the program (arrays on other processes' devices cannot be closed over), and
    a plain function travels as a leafless ``Partial``, hashed by identity. With a mesh the
    state is created and kept with :func:`lanczos_state_sharding`. A sharded axis must divide
    evenly: the vectors are padded with ``pad`` zeros; the padding coordinates of ``v0`` and of
    every product are 0, so T and the Ritz values are those of the unpadded operator."""
    shardings = None if mesh is None else lanczos_state_sharding(
        mesh, shard_basis=shard_basis, axis_name=axis_name)

    def init(v):
        return lanczos_init(jnp.pad(v, (0, pad)) if pad else v, num_steps, block_size=block_size)

    def chunk(mv, state, num_new_steps):
        def padded(v):
            return jnp.pad(mv(v[:dim]), (0, pad)) if pad else mv(v)

        return lanczos_continue(padded, state, num_new_steps, tol=tol, block_size=block_size,
                                reorth=reorth)

    # Donating the state lets the new basis reuse the old one's memory (else every chunk copies
    # the (m + 1) x P basis); XLA:CPU cannot donate sharded buffers.
    donate = (1,) if mesh is None or jax.default_backend() != "cpu" else ()
    return (jax.jit(init, out_shardings=shardings),
            jit(chunk, out_shardings=shardings, donate_argnums=donate), shardings)


def _host_advance(state: LanczosState, w, q_prev, q_cur, tol, reorth="full"):
    """:func:`lanczos_step` on the host driver's layout: ``state.basis`` is the tuple of the
    basis's blocks, each a whole argument (read in place), the unfilled ones skipped by
    ``lax.cond``: one compilation serves every step of a run. The new row is written into its
    block in place (the state is donated, and each block's output is its input), so the step
    is the only program between two products."""
    blocks = state.basis
    q_next, state = _advance(state, w, q_prev, q_cur, _block_readers(blocks, 0), tol,
                             reorth=reorth)
    row, n = state.step, blocks[0].shape[0]  # row i + 1 <= num_steps: in block row // n
    return q_next, state._replace(basis=tuple(jax.lax.cond(
        row // n == k, lambda b: jax.lax.dynamic_update_index_in_dim(b, q_next, row % n, 0),
        lambda b: b, block) for k, block in enumerate(blocks)))


# The host driver's step, shared by all runs (a jit made inside run_lanczos would be recompiled,
# seconds on a loaded CPU, on every call).
_host_step = jax.jit(_host_advance, static_argnames=("tol", "reorth"), donate_argnames="state")


@functools.partial(jax.jit, static_argnums=1)
def _host_blocks(v0: jax.Array, shapes: tuple) -> tuple:
    return tuple(jnp.zeros(shape, v0.dtype) for shape in shapes)  # on v0's device


@functools.partial(jax.jit, static_argnums=1, donate_argnums=2)
def _host_init(v0: jax.Array, num_steps: int, blocks: tuple, zero):
    """The host driver's blocks zeroed in place, ``v0 / |v0|`` in row 0, then ``q_0`` and the
    state without its basis. ``zero`` is True: a ``where`` on a flag XLA cannot fold writes
    into the donated blocks, where constant zeros would be given fresh buffers."""
    blocks = [jnp.where(zero, jnp.zeros((), b.dtype), b) for b in blocks]
    first = blocks[0].at[0].set(v0 / norm(v0))
    return (first, *blocks[1:]), first[0], _fresh_state((), num_steps, v0.dtype)


class _HostBasis:
    """The host driver's basis: separate ``(block, P)`` arrays, the last rows ``q_{i-1}, q_i``.

    All blocks are allocated at the start (the memory the run ends with); the last holds only
    the rows a run writes (``num_steps + 1`` in all), so no memory goes to rows that stay zero.
    The step writes each new row into its block in place. The ``(rows, P)`` basis of the
    compiled driver's layout (rows a multiple of the block) is only assembled for a checkpoint
    or ``return_basis``. On the CPU a finished run's blocks are kept for the next run of the
    same shapes (:func:`jaxspec.heap.keep_spare`) and zeroed in place: fresh memory costs a
    page fault per 4 KiB page, and its release the unmapping.
    """

    def __init__(self, blocks: list, q_prev: jax.Array, q_cur: jax.Array, block: int):
        self.blocks, self.block = blocks, block
        self.q_prev, self.q_cur = q_prev, q_cur

    @classmethod
    def fresh(cls, v0: jax.Array, num_steps: int, block: int) -> tuple["_HostBasis", LanczosState]:
        """The basis and the state before the first step: the blocks kept from the last run
        of these shapes, else new ones, made ready by one compiled program (built eagerly,
        the zeros, the first row and the orthogonality estimates would each compile a small
        program of their own)."""
        v0, rows = jnp.asarray(v0), num_steps + 1  # v0 on its device: the blocks' device
        shapes = tuple((min(block, rows - k), v0.shape[0]) for k in range(0, rows, block))
        blocks = take_spare((shapes, v0.dtype, v0.sharding)) or _host_blocks(v0, shapes)
        blocks, q0, state = _host_init(v0, num_steps, tuple(blocks), True)
        return cls(list(blocks), q0, q0, block), state

    def keep(self) -> None:
        """Keeps the blocks for the next run of their shapes, dtype and device
        (:func:`jaxspec.heap.keep_spare`; the CPU only: elsewhere XLA's allocator keeps freed
        memory itself)."""
        b = self.blocks[0]
        if all(d.platform == "cpu" for d in b.devices()):
            keep_spare((tuple(x.shape for x in self.blocks), b.dtype, b.sharding), self.blocks)

    @classmethod
    def resume(cls, basis: jax.Array, step: int, num_steps: int, block: int) -> "_HostBasis":
        rows = num_steps + 1  # the blocks of a fresh run's shapes: the same sums, bit for bit
        blocks = [basis[k:min(k + block, rows)] for k in range(0, rows, block)]
        return cls(blocks, basis[max(step - 1, 0)], basis[step], block)

    def step(self, state: LanczosState, w: jax.Array, tol, reorth: str) -> LanczosState:
        """Folds ``w = A q_i`` into ``state`` (which the step consumes) and the blocks."""
        q_next, state = _host_step(state._replace(basis=tuple(self.blocks)), w, self.q_prev,
                                   self.q_cur, tol=tol, reorth=reorth)
        self.blocks, self.q_prev, self.q_cur = list(state.basis), self.q_cur, q_next
        return state._replace(basis=())

    def basis(self, as_numpy: bool = False):
        """The ``(rows, P)`` basis, rows a multiple of the block (rows not written are zero): a
        new array, not a block, which may go on to the next run (:meth:`keep`)."""
        xp = np if as_numpy else jnp
        return xp.concatenate([xp.pad(xp.asarray(b), ((0, self.block - len(b)), (0, 0)))
                               for b in self.blocks])


def _host_advance_fn(matvec: Callable, host: _HostBasis, v0: jax.Array, tol: float | None,
                     reorth: str, release: Callable[[], bool], first: int):
    """The host driver's chunk: ``advance(state, n)`` takes up to ``n`` steps in Python and
    calls ``release`` after step ``first``, the run's first (whose calls compiled the product
    and the step)."""

    def advance(state, n):
        before = int(state.step)
        for i in range(before, before + n):
            # The product is dispatched before the last step's flags are read: the wait for
            # them then overlaps the Python work of the dispatch. After a breakdown or a NaN
            # that one product (of the zero vector) is thrown away.
            w = matvec(host.q_cur)
            if i > before and _stop(state):
                break
            if w.shape != v0.shape or w.dtype != v0.dtype:
                raise TypeError(f"the matvec must map shape {v0.shape} {v0.dtype} to the same; "
                                f"it returned {w.shape} {w.dtype}")
            state = host.step(state, w, tol, reorth)
            if i == first:
                release()
        else:
            _stop(state)
        return state

    return advance


def _drive(state: LanczosState, num_steps: int, chunk_size: int,
           advance: Callable[[LanczosState, int], LanczosState], hooks: Sequence[LanczosHook],
           snapshot: Callable[[LanczosState], LanczosState]) -> LanczosState:
    """The chunk loop of both drivers: ``advance(state, n)`` takes up to ``n`` more steps; after
    each chunk a NaN raises and the hooks run. Stops after ``num_steps`` steps or at a
    breakdown."""
    try:
        for hook in hooks:
            hook.start(int(state.step), num_steps)
        while int(state.step) < num_steps and not _stop(state):
            state = advance(state, min(chunk_size, num_steps - int(state.step)))
            _raise_if_nonfinite(state.nonfinite_step, state.alphas.dtype)
            for hook in hooks:
                hook.after_chunk(functools.partial(snapshot, state), int(state.step), num_steps)
    finally:
        for hook in hooks:
            hook.close()
    return state


def run_lanczos(
    matvec: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    num_steps: int,
    /,
    *,
    driver: str = "auto",
    mesh: Mesh | None = None,
    shard_basis: bool = False,
    axis_name: str | tuple[str, ...] = "data",
    chunk_size: int | None = None,
    hooks: Sequence[LanczosHook] = (),
    tol: float | None = None,
    block_size: int = 16,
    return_basis: bool = False,
    reorth: str = "full",
) -> LanczosResult:
    """Runs Lanczos: the driver for the operator, chunks of steps, hooks, the basis on a mesh.

    Two drivers share :func:`lanczos_step`:

    * ``"compiled"``: each chunk is one jitted :func:`lanczos_continue` (the matvec must be
      traceable; a :class:`jaxspec.CurvatureOperator` goes in as an argument, so its arrays
      are not baked into the program). With ``mesh`` the state lives on the mesh, and with
      ``shard_basis=True`` the ``(m + 1) x P`` basis is split along the parameter axis
      (``jit`` inserts the reductions of the Gram-Schmidt dots and one all-gather of the new
      vector per step): for models whose basis does not fit on one device.
    * ``"host"``: a Python loop over steps; the matvec is called eagerly (an operator with the
      host reduction, or any jitted function) and the step mathematics is jitted.

    ``"auto"`` takes the driver the operator's reduction is made for (see
    :func:`resolve_driver`; with a ``mesh``, the compiled one), so no operator runs on a driver
    that is slow for it. ``hooks``
    (:mod:`jaxspec.io`: checkpoints, progress bars) run between chunks; a checkpoint hook's
    saved state is resumed from, with the same result as an uninterrupted run.

    Args:
      matvec: ``v -> A v`` on flat vectors like ``v0``: a :class:`jaxspec.CurvatureOperator`
        or any callable.
      v0: the start vector (the same in every process).
      num_steps: number of steps m (clamped to ``len(v0)`` with a warning).
      driver: ``"auto"``, ``"compiled"`` or ``"host"``.
      mesh, shard_basis, axis_name: the compiled driver's state on ``mesh``, the basis split
        along ``axis_name`` if ``shard_basis``: one mesh axis, or a tuple of axes (e.g.
        ``("data", "model")``: over every device of a 2-D mesh, for an operator whose
        parameters are split over the model axis, :class:`jaxspec.parallel.MeshReduce`).
      chunk_size: steps between hook calls (default: all at once, 10 with a hook).
      hooks: :class:`LanczosHook` objects.
      tol, block_size, return_basis, reorth: as in :func:`lanczos`.

    Returns:
      A :class:`LanczosResult` (on the host driver, ``num_valid`` stops early at breakdown).

    Raises:
      FloatingPointError: the matvec returned NaN/Inf, or products outside the scales
        :mod:`jaxspec.norms` supports; the message names the step.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import run_lanczos, Spectrum
      >>> A = jnp.diag(jnp.arange(1.0, 11.0))
      >>> res = run_lanczos(lambda v: A @ v, jnp.ones(10), 10, driver="host")
      >>> Spectrum.from_lanczos(res).nodes.round(6).tolist() == list(range(1, 11))
      True
    """
    check_start_vector(v0)
    num_steps, reorth = clamp_steps(num_steps, v0.shape[0]), check_method(reorth)
    matvec = linearized(matvec, num_steps + 1)  # an operator's products, once for the run
    # the basis on a mesh is the compiled driver's
    driver = "compiled" if driver == "auto" and mesh is not None else resolve_driver(driver,
                                                                                      matvec)
    hooks = tuple(hooks)
    chunk_size = (10 if hooks else num_steps) if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _check_block_size(block_size)
    if shard_basis and mesh is None:  # first: with driver="auto" the next check would say
        raise ValueError("shard_basis=True needs a mesh to shard the basis over")  # "driver"
    if driver == "host" and (mesh is not None or shard_basis):
        raise ValueError("mesh and shard_basis need driver='compiled'")
    dim = int(v0.shape[0])
    axes = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    if mesh is not None and not set(axes) <= set(mesh.shape):
        raise ValueError(f"mesh has no axis {axis_name!r} (axes: {mesh.axis_names})")
    axis_name = axes[0] if len(axes) == 1 else axes  # hashable: a key of _compiled_programs
    pad = (-dim) % math.prod(int(mesh.shape[a]) for a in axes) if shard_basis else 0
    if hooks and jax.process_count() > 1 and mesh is not None:
        raise ValueError("hooks that save the state need every device of the mesh in one "
                         f"process; this run has {jax.process_count()} processes")
    local = not isinstance(v0, jax.Array) or v0.is_fully_addressable
    # the start vector on the host, for the hooks to check a saved state against
    host_v0 = np.pad(np.asarray(v0), (0, pad)) if local and hooks else None
    saved = None
    for hook in hooks:
        saved = hook.resume(host_v0, num_steps, block_size, matvec) if saved is None else saved
    # the C heap's free memory (what XLA's compilations left) goes back to the system before
    # the basis is allocated and, on the host driver, after the run's first step, whose calls
    # compile the product and the step (jaxspec.heap)
    release = functools.partial(release_before, (num_steps + 1) * (dim + pad) * v0.dtype.itemsize)
    release()
    if driver == "host":  # the basis lives in host.blocks; the state carries the rest
        if saved is None:
            host, state = _HostBasis.fresh(v0, num_steps, block_size)
        else:
            saved = jax.tree.map(jnp.asarray, saved)
            host = _HostBasis.resume(saved.basis, int(saved.step), num_steps, block_size)
            state = saved._replace(basis=())
        advance = _host_advance_fn(matvec, host, v0, tol, reorth, release, int(state.step))
        state = _drive(state, num_steps, chunk_size, advance, hooks,
                       lambda s: s._replace(basis=host.basis(as_numpy=True)))
        state = state._replace(basis=host.basis() if return_basis else None)
        host.keep()
        return _result(state, num_steps, return_basis)
    check_matvec(matvec, v0)
    init, chunk, shardings = _compiled_programs(mesh, bool(shard_basis), axis_name, num_steps,
                                                dim, pad, tol, block_size, reorth)
    if saved is not None:
        state = jax.device_put(saved, shardings) if mesh is not None else jax.tree.map(
            jnp.asarray, saved)
    else:
        from jaxspec.parallel import replicate

        state = init(v0 if mesh is None else replicate(v0, mesh))
    mv = jit_argument(matvec)
    state = _drive(state, num_steps, chunk_size, functools.partial(chunk, mv), hooks,
                   lambda s: jax.tree.map(np.asarray, s))
    return _result(state, num_steps, return_basis, dim)
