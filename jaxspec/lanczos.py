"""Lanczos tridiagonalisation with full re-orthogonalisation, compiled or host-driven.

The step mathematics lives in one function, :func:`lanczos_step`; two drivers call it:

* the compiled driver (:func:`lanczos`, :func:`lanczos_continue`): ``lax.fori_loop`` over steps,
  the matvec traced into the loop body, so a run (or a chunk of one) is a single XLA program:
  the right choice on GPU/TPU;
* the host driver (``driver="host"`` in :func:`run_lanczos`): a Python loop over steps that calls
  the matvec eagerly and a jitted :func:`lanczos_step`: the right choice on CPU, where XLA runs
  convolutions inside loop bodies 25-40x slower than outside (JAX issue #12868), and for
  matvecs that stream data from host memory.

:func:`run_lanczos` drives either in chunks of steps, with a progress bar and a checkpoint of the
state after every chunk, from which an interrupted run resumes with identical results.

Deviations from the textbook algorithm, and why:

* Every new vector goes through the three-term recurrence and is then orthogonalised against the
  whole basis by classical Gram-Schmidt; a second pass runs only where the first removed more than
  half of ``|w|^2`` (the Daniel-Gragg-Kaufman-Stewart test, under a ``lax.cond``; ``|w|^2``
  before the pass comes from Pythagoras, ``|h|^2 + |w'|^2``). A step that passes the test reads
  the basis twice (the coefficients ``h = Q w``, then ``w - h Q``) instead of four times.
  Without the second pass where it is due, the Ritz values of a long run in float32 grow
  spurious copies ("ghosts") and the quadrature weights are wrong. The passes use
  ``Precision.HIGHEST`` so that GPUs do not drop to TF32, and every reduction is a dot (on
  XLA:CPU a reduce first materialises its input: one more pass over ``P`` floats).
* Those two reads of the filled rows are the floor of a step: the dots must all be done before
  the update starts, and XLA does not fuse a ``Q w`` and an ``h Q`` into one pass over ``Q``
  (a column-tiled ``fori_loop`` that does both per tile ran 1.3-1.7x *slower* on XLA:CPU than
  the two passes). ``python -m experiments.speed`` prints that floor next to the real step.
* The basis is read in blocks of ``block_size`` rows, so a step costs O(i P), not O(m P). The
  compiled driver reads every block of the state's ``(rows, P)`` basis as a static slice under
  a ``lax.cond`` on whether it holds a filled row (one compilation for all steps; on a GPU a
  slice of contiguous rows feeding a GEMM is cheap). The host driver keeps the blocks as
  separate arrays and passes the step only those that hold a filled row, so XLA:CPU reads them
  in place with no ``lax.cond`` (one compilation per block count, ``ceil((m + 1) / block_size)``
  in all). It allocates a block when its first row is written, writes each new row in place
  (donated), and assembles the ``(rows, P)`` basis only for checkpoints and ``return_basis``.
* ``alpha_i`` is the sum of all the Gram-Schmidt coefficients on ``q_i`` and ``beta_i`` is the
  norm after re-orthogonalisation, so T matches the re-orthogonalised basis.
* Breakdown (``beta_i <= tol * |A q_i|``: the Krylov space is invariant) is masked: the remaining
  steps leave the state untouched, and ``num_valid`` says how much of T to use. A matvec that
  returns NaN or Inf (or a vector whose norm overflows the dtype) is treated the same way and
  reported in ``nonfinite_step``.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec._atomic import replacing

__all__ = [
    "LanczosResult",
    "LanczosState",
    "lanczos",
    "lanczos_continue",
    "lanczos_init",
    "lanczos_step",
    "load_lanczos_state",
    "resolve_driver",
    "run_lanczos",
    "save_lanczos_state",
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


def _default_tol(dtype) -> float:
    return float(np.sqrt(np.finfo(dtype).eps))


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_v0(v0) -> None:
    if not isinstance(v0, (jax.Array, np.ndarray)) or v0.ndim != 1:
        raise ValueError(f"v0 must be a 1-D array (a flat vector), got {type(v0).__name__} "
                         f"with shape {getattr(v0, 'shape', None)}")
    if not jnp.issubdtype(v0.dtype, jnp.floating):
        raise TypeError(f"v0 must be a real floating-point vector, got dtype {v0.dtype}")
    if v0.shape[0] == 0:
        raise ValueError("v0 is empty")
    if _is_concrete(v0):
        arr = np.asarray(v0)
        if not np.all(np.isfinite(arr)):
            raise ValueError("v0 contains NaN or Inf")
        if not np.any(arr):
            raise ValueError("v0 is the zero vector; Lanczos needs a nonzero start vector")


def _clamp_steps(num_steps: int, dim: int) -> int:
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if num_steps > dim:
        warnings.warn(
            f"num_steps={num_steps} exceeds the dimension {dim}; clamped to {dim} "
            "(a Krylov space cannot be larger than the space it lives in)",
            stacklevel=3,
        )
        return dim
    return int(num_steps)


def _check_matvec(matvec: Callable, v0: jax.Array) -> None:
    try:
        out = jax.eval_shape(matvec, jax.ShapeDtypeStruct(v0.shape, v0.dtype))
    except Exception as err:  # re-raised with context: the user's matvec failed to trace
        raise TypeError(f"the matvec could not be evaluated on a vector like v0 "
                        f"(shape {v0.shape}, dtype {v0.dtype}): {err}") from err
    if not hasattr(out, "shape") or out.shape != v0.shape or out.dtype != v0.dtype:
        got = (getattr(out, "shape", type(out).__name__), getattr(out, "dtype", None))
        raise TypeError(f"the matvec must map a vector of shape {v0.shape} and dtype {v0.dtype} "
                        f"to the same shape and dtype; it returned shape {got[0]}, dtype {got[1]}")


def lanczos_init(v0: jax.Array, num_steps: int, /, *, block_size: int = 16) -> LanczosState:
    """The state before the first step: ``q_0 = v0 / |v0|``, everything else zero.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import lanczos_init
      >>> s = lanczos_init(jnp.array([3.0, 4.0]), 2, block_size=4)
      >>> s.basis.shape, [round(x, 6) for x in s.basis[0].tolist()]
      ((4, 2), [0.6, 0.8])
    """
    _check_v0(v0)
    return _fresh_state(_first_rows(v0, _num_rows(num_steps, block_size)), num_steps, v0.dtype)


def _num_rows(num_steps: int, block_size: int) -> int:
    return -(-(num_steps + 1) // block_size) * block_size


@functools.partial(jax.jit, static_argnums=1)
def _first_rows(v0: jax.Array, rows: int) -> jax.Array:
    """``(rows, P)`` zeros with ``v0 / |v0|`` in row 0, written in one pass (jitted: eagerly,
    ``.at[0].set`` would copy the whole array once more)."""
    return jnp.zeros((rows, v0.shape[0]), v0.dtype).at[0].set(v0 / jnp.linalg.norm(v0))


def _fresh_state(basis, num_steps: int, dtype) -> LanczosState:
    zeros = lambda: jnp.zeros((num_steps,), dtype)  # noqa: E731  (distinct buffers: donated)
    i32 = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    return LanczosState(basis, zeros(), zeros(), i32(0), i32(0), jnp.asarray(False), i32(-1))


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


def _project_out(blocks: list, w: jax.Array, count: jax.Array | None):
    """One classical Gram-Schmidt pass, ``w - Q^T (Q w)``, against rows ``0 .. count-1``.

    ``blocks`` are readers from :func:`_block_readers`. With a traced ``count`` each block is
    read under a ``lax.cond`` on whether it holds a filled row, so the pass reads the filled
    blocks only, with one compilation for every step (the compiled driver). ``count=None`` means
    that every block given holds a filled row (the host driver passes just those), and no
    ``lax.cond`` is needed. Each block is read as a whole array: on XLA:CPU a slice of an
    operand, static or dynamic, is copied before a dot; a block that is a whole argument is
    not. Returns the new ``w`` and ``h = Q w``.
    """
    if count is None:
        h = [jnp.dot(read(), w, precision=_HIGHEST) for read in blocks]
        for read, hk in zip(blocks, h):
            w = w - jnp.dot(hk, read(), precision=_HIGHEST)
        return w, jnp.concatenate(h)
    h = []
    for k, read in enumerate(blocks):
        rows = jax.eval_shape(read).shape[0]
        h.append(jax.lax.cond(k * rows < count,
                              lambda read=read: jnp.dot(read(), w, precision=_HIGHEST),
                              lambda rows=rows: jnp.zeros((rows,), w.dtype)))
    for k, (read, hk) in enumerate(zip(blocks, h)):
        w = jax.lax.cond(k * hk.shape[0] < count,
                         lambda w, hk, read=read: w - jnp.dot(hk, read(), precision=_HIGHEST),
                         lambda w, hk: w, w, hk)
    return w, jnp.concatenate(h)


def _advance(state: LanczosState, w: jax.Array, q_prev: jax.Array, q_cur: jax.Array,
             blocks: list, tol: float | None, all_filled: bool = False
             ) -> tuple[jax.Array, LanczosState]:
    """The step mathematics, shared by both drivers: folds ``w = A q_i`` into the state.

    ``blocks`` hold the basis (``all_filled``: only blocks that hold a filled row). Returns
    ``q_{i+1}`` (zero if the step is masked) and the state with everything updated but the
    basis, which each driver writes in its own layout.
    """
    tol = _default_tol(w.dtype) if tol is None else tol
    i = state.step
    active = _active(state)
    # Every reduction is a dot: on XLA:CPU a dot streams its operands once, where a reduce
    # materialises its input first. |w|^2 also tells whether w is finite (a NaN or Inf entry,
    # or a norm that overflows). A masked step's w is not zeroed: nothing it touches is kept.
    w_norm = jnp.sqrt(jnp.dot(w, w, precision=_HIGHEST))
    finite = jnp.isfinite(w_norm)
    keep = active & finite
    # the three-term recurrence (alpha's first part: the Gram-Schmidt pass adds the rest) ...
    beta_prev = jnp.where(i > 0, state.betas[jnp.maximum(i - 1, 0)], 0)
    a0 = jnp.dot(q_cur, w, precision=_HIGHEST)
    w = w - beta_prev * q_prev - a0 * q_cur
    # ... then one Gram-Schmidt pass against the filled basis, and a second one only where the
    # first removed more than half of |w|^2 (Daniel-Gragg-Kaufman-Stewart), that is where
    # |h|^2 > |w - Q^T h|^2 (Pythagoras: no norm of w before the pass is needed)
    count = None if all_filled else i + 1
    w, h1 = _project_out(blocks, w, count)
    after = jnp.dot(w, w, precision=_HIGHEST)
    w, h2, after = jax.lax.cond(
        after >= jnp.dot(h1, h1, precision=_HIGHEST),
        lambda w: (w, jnp.zeros_like(h1), after),
        lambda w: (lambda w, h: (w, h, jnp.dot(w, w, precision=_HIGHEST)))(
            *_project_out(blocks, w, count)),
        w)
    alpha = a0 + h1[i] + h2[i]
    beta = jnp.sqrt(after)
    go_on = keep & (beta > tol * w_norm)
    q_next = jnp.where(go_on, w / jnp.where(go_on, beta, 1.0), jnp.zeros_like(w))
    zero = jnp.zeros((), w.dtype)
    return q_next, state._replace(
        alphas=state.alphas.at[i].set(jnp.where(keep, alpha, zero)),
        betas=state.betas.at[i].set(jnp.where(go_on, beta, zero)),
        step=i + 1,
        num_valid=jnp.where(keep, i + 1, state.num_valid).astype(jnp.int32),
        broken_down=state.broken_down | (keep & ~go_on),
        nonfinite_step=jnp.where(active & ~finite, i, state.nonfinite_step).astype(jnp.int32),
    )


def lanczos_step(
    state: LanczosState, w: jax.Array, /, *, tol: float | None = None, block_size: int = 16
) -> LanczosState:
    """Folds ``w = A q_i`` (``i = state.step``) into the state: one Lanczos step.

    Shared by both drivers. ``w`` goes through the three-term recurrence and is then
    re-orthogonalised against the filled basis (classical Gram-Schmidt over blocks of
    ``block_size`` rows, the value given to :func:`lanczos_init`; a second pass where the first
    removed more than half of ``|w|^2``), ``alpha_i`` and ``beta_i`` are recorded, and
    ``q_{i+1} = w / beta_i`` is written. If the run has already broken down, or ``|w|`` is not
    finite (a NaN or Inf entry, or an overflow), or ``beta_i`` is at or below ``tol * |w|``
    (default ``sqrt(eps)`` of the dtype), the step is masked: nothing that follows uses it, and
    no NaN enters the state.

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
                             tol)
    return state._replace(basis=state.basis.at[i + 1].set(q_next, mode="drop"))

def lanczos_continue(
    matvec: Callable[[jax.Array], jax.Array],
    state: LanczosState,
    num_new_steps,
    /,
    *,
    tol: float | None = None,
    block_size: int = 16,
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
        return lanczos_step(s, w, tol=tol, block_size=block_size)

    return jax.lax.fori_loop(state.step, stop, body, state)


def _result(state: LanczosState, num_steps: int, return_basis: bool) -> LanczosResult:
    return LanczosResult(
        alphas=state.alphas,
        betas=state.betas,
        num_valid=state.num_valid,
        nonfinite_step=state.nonfinite_step,
        basis=state.basis[: num_steps + 1] if return_basis else None,
    )


def _stop(state: LanczosState) -> bool:
    """Waits for ``state``'s flags (one transfer): raises on a NaN/Inf, True at a breakdown."""
    nonfinite_step, broken_down = jax.device_get((state.nonfinite_step, state.broken_down))
    _raise_if_nonfinite(nonfinite_step)
    return bool(broken_down)


def _raise_if_nonfinite(step) -> None:
    step = int(step)
    if step >= 0:
        raise FloatingPointError(
            f"the matvec returned NaN or Inf at Lanczos step {step} (0-based); the steps before "
            "it are valid. Check the loss at these parameters, or the data of that HVP."
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
) -> LanczosResult:
    """Lanczos tridiagonalisation of a symmetric operator, with full re-orthogonalisation.

    Runs ``num_steps`` steps from ``v0`` in one ``lax.fori_loop``. Can be called inside
    ``jax.jit`` (then check ``result.nonfinite_step`` yourself) and vmapped over ``v0``.
    Outside a trace, a NaN/Inf from the matvec raises ``FloatingPointError`` naming the step.

    Args:
      matvec: ``v -> A v`` for a symmetric ``A``, on flat vectors like ``v0``; traceable.
      v0: the start vector (nonzero, finite); its dtype is the working precision.
      num_steps: number of steps m; larger than ``len(v0)`` is clamped to it, with a warning.
      tol: relative breakdown threshold (default ``sqrt(eps)``).
      block_size: rows of the basis read per block when re-orthogonalising.
      return_basis: also return the ``(m + 1, P)`` orthonormal basis.

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
    _check_v0(v0)
    num_steps = _clamp_steps(num_steps, v0.shape[0])
    _check_matvec(matvec, v0)
    state = lanczos_init(v0, num_steps, block_size=block_size)
    state = lanczos_continue(matvec, state, num_steps, tol=tol, block_size=block_size)
    if _is_concrete(state.nonfinite_step):
        _raise_if_nonfinite(state.nonfinite_step)
    return _result(state, num_steps, return_basis)


def save_lanczos_state(path: str | os.PathLike, state: LanczosState, /) -> None:
    """Writes a :class:`LanczosState` to ``path`` (``.npz``), atomically.

    The write goes to a temporary file that is then renamed, so a run killed while saving leaves
    the previous checkpoint intact.

    Example:
      >>> import jax.numpy as jnp, tempfile, os
      >>> from jaxspec import lanczos_init, save_lanczos_state, load_lanczos_state
      >>> path = os.path.join(tempfile.mkdtemp(), "state.npz")
      >>> save_lanczos_state(path, lanczos_init(jnp.ones(3), 2))
      >>> int(load_lanczos_state(path).step)
      0
    """
    with replacing(path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, **{k: np.asarray(v) for k, v in state._asdict().items()})


def load_lanczos_state(path: str | os.PathLike, /) -> LanczosState:
    """Reads a state written by :func:`save_lanczos_state` (onto the default device).

    Example:
      >>> import jax.numpy as jnp, tempfile, os
      >>> from jaxspec import lanczos_init, save_lanczos_state, load_lanczos_state
      >>> path = os.path.join(tempfile.mkdtemp(), "state.npz")
      >>> save_lanczos_state(path, lanczos_init(jnp.ones(3), 2))
      >>> load_lanczos_state(path).basis.shape
      (16, 3)
    """
    return jax.tree.map(jnp.asarray, _read_state(path))


def _is_pytree_operator(matvec) -> bool:
    """True for a matvec that is a pytree of arrays plus static code (e.g. a ``Partial``)."""
    leaves = jax.tree.leaves(matvec)
    return bool(leaves) and all(isinstance(x, (jax.Array, np.ndarray, np.generic))
                                for x in leaves)


def resolve_driver(driver: str = "auto", /) -> str:
    """The Lanczos driver that ``driver`` stands for on this backend.

    ``"auto"`` is ``"host"`` on CPU (XLA:CPU runs convolutions inside loops very slowly) and
    ``"compiled"`` elsewhere; ``"host"`` and ``"compiled"`` are returned as they are.

    Example:
      >>> import jax
      >>> from jaxspec import resolve_driver
      >>> resolve_driver("auto") == ("host" if jax.default_backend() == "cpu" else "compiled")
      True
      >>> resolve_driver("compiled")
      'compiled'
    """
    if driver == "auto":
        return "host" if jax.default_backend() == "cpu" else "compiled"
    if driver not in ("compiled", "host"):
        raise ValueError(f"driver must be 'auto', 'compiled' or 'host', got {driver!r}")
    return driver


def _read_state(path) -> LanczosState:
    """The state saved at ``path``, as NumPy arrays (not yet on a device)."""
    with np.load(os.fspath(path)) as f:
        missing = set(LanczosState._fields) - set(f.files)
        if missing:
            raise ValueError(f"{path} is not a Lanczos checkpoint (missing {sorted(missing)})")
        return LanczosState(**{k: f[k] for k in LanczosState._fields})


def _resume(path, v0, num_steps, block_size) -> LanczosState | None:
    """The checkpoint at ``path`` (on the host: each driver places it), checked against the run,
    or ``None`` if there is none."""
    if path is None or not os.path.exists(path):
        return None
    state = _read_state(path)
    rows = -(-(num_steps + 1) // block_size) * block_size
    if (state.basis.shape != (rows, v0.shape[0]) or state.basis.dtype != v0.dtype
            or state.num_steps != num_steps):
        raise ValueError(f"checkpoint {path} holds a run of another shape or dtype "
                         f"({state.num_steps} steps, basis {state.basis.shape} "
                         f"{state.basis.dtype}); delete it or use another path")
    q0 = np.asarray(v0, np.float64) / np.linalg.norm(np.asarray(v0, np.float64))
    if not np.allclose(np.asarray(state.basis[0], np.float64), q0, atol=1e-6):
        raise ValueError(f"checkpoint {path} was made from another start vector; delete it or "
                         "use another path")
    return state


def _host_advance(state: LanczosState, w, q_prev, q_cur, tol):
    """:func:`lanczos_step` on the host driver's layout: ``state.basis`` is a tuple of the blocks
    that hold a filled row (rows ``0 .. step``); their number is static, so a step reads exactly
    those blocks with no ``lax.cond``, at the price of one compilation per block count."""
    q_next, state = _advance(state, w, q_prev, q_cur, _block_readers(state.basis, 0), tol,
                             all_filled=True)
    return q_next, state._replace(basis=())  # the blocks are not returned: that would copy them


# The compiled driver's chunk, one jit for all runs: a jit made inside run_lanczos recompiled the
# whole Lanczos program on every call (every probe of an SLQ run). A pytree operator is an
# argument; any other matvec is static (hashed by identity: pass the same function to reuse).
@functools.partial(jax.jit, static_argnames=("matvec", "tol", "block_size"), donate_argnums=0)
def _compiled_chunk(state, num_new_steps, operator, *, matvec, tol, block_size):
    return lanczos_continue(matvec if operator is None else operator, state, num_new_steps,
                            tol=tol, block_size=block_size)


# The host driver's jitted pieces, shared by all runs (a jit made inside run_lanczos would be
# recompiled, seconds on a loaded CPU, on every call). The blocks are read, not written, by the
# step; the new row is written into its block in place by _write_row (donated).
_host_step = jax.jit(_host_advance, static_argnames="tol")
_write_row = jax.jit(lambda block, q, r: jax.lax.dynamic_update_index_in_dim(block, q, r, 0),
                     donate_argnums=0)


class _HostBasis:
    """The host driver's basis: separate ``(block, P)`` arrays, the last rows ``q_{i-1}, q_i``.

    Blocks are allocated when their first row is written, and the ``(rows, P)`` basis is only
    assembled for a checkpoint or ``return_basis``.
    """

    def __init__(self, blocks: list, q_prev: jax.Array, q_cur: jax.Array):
        self.blocks = blocks
        self.q_prev, self.q_cur = q_prev, q_cur
        first = blocks[0]
        self.block, self.dim, self.dtype = first.shape[0], first.shape[1], first.dtype

    @classmethod
    def fresh(cls, v0: jax.Array, num_rows: int, block: int) -> "_HostBasis":
        first = _first_rows(v0, block)  # only the first block exists
        return cls([first] + [None] * (num_rows // block - 1), first[0], first[0])

    @classmethod
    def resume(cls, basis: jax.Array, step: int, block: int) -> "_HostBasis":
        blocks = [basis[k:k + block] for k in range(0, basis.shape[0], block)]
        return cls(blocks, basis[max(step - 1, 0)], basis[step])

    def filled(self, i: int) -> tuple:
        """The blocks that hold a filled row when ``q_i`` is the newest row."""
        return tuple(self.blocks[: i // self.block + 1])

    def push(self, i: int, q_next: jax.Array) -> None:
        """Writes ``q_{i+1}`` (row ``i + 1``)."""
        k, r = divmod(i + 1, self.block)
        if k < len(self.blocks):
            if self.blocks[k] is None:
                self.blocks[k] = jnp.zeros((self.block, self.dim), self.dtype)
            self.blocks[k] = _write_row(self.blocks[k], q_next, r)
        self.q_prev, self.q_cur = self.q_cur, q_next

    def basis(self, as_numpy: bool = False):
        """The ``(rows, P)`` basis (rows not yet written are zero)."""
        blocks = [np.zeros((self.block, self.dim), self.dtype) if b is None else b
                  for b in self.blocks]
        if as_numpy:
            return np.concatenate([np.asarray(b) for b in blocks])
        return jnp.concatenate([jnp.asarray(b) for b in blocks])


def _drive(state: LanczosState, num_steps: int, chunk_size: int | None,
           advance: Callable[[LanczosState, int], LanczosState], /, *,
           checkpoint: str | os.PathLike | None = None, progress: bool | str = False,
           snapshot: Callable[[LanczosState], LanczosState] | None = None) -> LanczosState:
    """The chunk loop of every driver: ``advance(state, n)`` takes up to ``n`` more steps; after
    each chunk a NaN raises, ``snapshot(state)`` (default: ``state``) is saved to ``checkpoint``
    and the progress bar (``progress``: True or its label) moves. Stops after ``num_steps``
    steps or at a breakdown. ``chunk_size=None``: all steps at once, 10 with a checkpoint."""
    if chunk_size is None:
        chunk_size = 10 if checkpoint is not None else num_steps
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        label = progress if isinstance(progress, str) else "lanczos"
        bar = tqdm(total=num_steps, initial=int(state.step), desc=label, unit="step")
    try:
        while int(state.step) < num_steps and bool(_active(state)):
            before = int(state.step)
            state = advance(state, min(chunk_size, num_steps - before))
            _raise_if_nonfinite(state.nonfinite_step)
            if checkpoint is not None:
                save_lanczos_state(checkpoint, state if snapshot is None else snapshot(state))
            if bar is not None:
                bar.update(int(state.step) - before)
    finally:
        if bar is not None:
            bar.close()
    return state


def run_lanczos(
    matvec: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    num_steps: int,
    /,
    *,
    driver: str = "auto",
    chunk_size: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool | str = False,
    tol: float | None = None,
    block_size: int = 16,
    return_basis: bool = False,
) -> LanczosResult:
    """Runs Lanczos in chunks of steps, with progress, checkpoints and resume.

    Two drivers share :func:`lanczos_step`:

    * ``"compiled"``: each chunk is one jitted :func:`lanczos_continue` (the matvec must be
      traceable). The GPU/TPU default.
    * ``"host"``: a Python loop over steps; the matvec is called eagerly (it may be a
      :func:`jaxspec.host_hessian_matvec`, or any jitted function) and the step mathematics is
      jitted. The CPU default, because XLA:CPU runs convolutions inside loops very slowly.

    ``"auto"`` picks ``"host"`` on CPU and ``"compiled"`` elsewhere. With ``checkpoint`` set, the
    state is saved there after every chunk, and a run started with the same arguments resumes
    from it and gives the same result as an uninterrupted run.

    Args:
      matvec: ``v -> A v`` on flat vectors like ``v0``.
      v0: the start vector.
      num_steps: number of steps m (clamped to ``len(v0)`` with a warning).
      driver: ``"auto"``, ``"compiled"`` or ``"host"``.
      chunk_size: steps between checkpoints / progress updates of the compiled driver
        (default: all at once without a checkpoint, 10 with one).
      checkpoint: path of an ``.npz`` file for the state; resumed from if it exists.
      progress: show a progress bar (a string is used as its label).
      tol, block_size, return_basis: as in :func:`lanczos`.

    Returns:
      A :class:`LanczosResult` (on the host driver, ``num_valid`` stops early at breakdown).

    Raises:
      FloatingPointError: the matvec returned NaN/Inf; the message names the step.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import run_lanczos, Spectrum
      >>> A = jnp.diag(jnp.arange(1.0, 11.0))
      >>> res = run_lanczos(lambda v: A @ v, jnp.ones(10), 10, driver="host")
      >>> Spectrum.from_lanczos(res).nodes.round(6).tolist() == list(range(1, 11))
      True
    """
    _check_v0(v0)
    num_steps = _clamp_steps(num_steps, v0.shape[0])
    driver = resolve_driver(driver)
    if driver == "compiled":
        _check_matvec(matvec, v0)
    state = _resume(checkpoint, v0, num_steps, block_size)
    if state is not None:
        state = jax.tree.map(jnp.asarray, state)
    host = None
    if driver == "host":  # the basis lives in host.blocks; the state carries the rest
        if state is None:
            host = _HostBasis.fresh(v0, _num_rows(num_steps, block_size), block_size)
            state = _fresh_state((), num_steps, v0.dtype)
        else:
            host = _HostBasis.resume(state.basis, int(state.step), block_size)
            state = state._replace(basis=())
    elif state is None:
        state = lanczos_init(v0, num_steps, block_size=block_size)
    # The state is donated: without it every step would copy the (m + 1) x P basis.
    if driver == "compiled":
        # A pytree operator (hessian_matvec returns a jax.tree_util.Partial) is passed as an
        # argument, so its parameters and data are not baked into the program as constants.
        pytree = _is_pytree_operator(matvec)
        advance = functools.partial(_compiled_chunk, operator=matvec if pytree else None,
                                    matvec=None if pytree else matvec, tol=tol,
                                    block_size=block_size)
    else:
        def advance(state, n):
            before = int(state.step)
            for i in range(before, before + n):
                # The HVP is dispatched before the last step's flags are read: the wait for
                # them then overlaps the Python work of the dispatch. After a breakdown or a
                # NaN that one HVP (of the zero vector) is thrown away.
                w = matvec(host.q_cur)
                if i > before and _stop(state):
                    break
                if w.shape != v0.shape or w.dtype != v0.dtype:
                    raise TypeError(
                        f"the matvec must map shape {v0.shape} {v0.dtype} to the same; it "
                        f"returned {w.shape} {w.dtype}")
                q_next, state = _host_step(state._replace(basis=host.filled(i)), w,
                                           host.q_prev, host.q_cur, tol=tol)
                host.push(i, q_next)
            else:
                _stop(state)
            return state

    state = _drive(state, num_steps, chunk_size, advance, checkpoint=checkpoint,
                   progress=progress,
                   snapshot=None if host is None
                   else lambda s: s._replace(basis=host.basis(as_numpy=True)))
    if host is not None:
        state = state._replace(basis=host.basis() if return_basis else None)
    return _result(state, num_steps, return_basis)
