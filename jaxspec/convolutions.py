"""Convolutions in the forms XLA:CPU runs fast: :func:`fast_convolutions`.

XLA:CPU runs a convolution with Eigen's (multi-threaded, blocked) kernels only when its
dimensions are in the canonical order: input batch, spatial..., feature; kernel spatial...,
input feature, output feature; output like the input. Its ``ConvCanonicalization`` pass puts
other convolutions in that order with transposes, but it only visits the program's entry
computation. A convolution inside a loop body or a conditional branch (``lax.scan``,
``lax.fori_loop``, ``lax.cond``) keeps its order, and the gradients JAX builds for a
convolution are not in it: the kernel gradient correlates the input with the output's
cotangent over the batch (``dim_labels=f01b_i01o->01bf``), the input gradient reads the kernel
with its features swapped. XLA then emits a naive loop nest for them, and a CNN's gradient or
Hessian-vector product inside ``lax.scan`` runs many times slower than the same product outside
one (JAX issue #12868; docs/speed.md has the figures). Some it gets wrong: jaxlib 0.10 turns a
width-1 convolution whose operand is not batch-major into a dot and reads the rows in the wrong
order (``tests/test_convolutions`` has one, an input gradient).

A convolution whose window is larger than its input (VGG's 3x3 convolutions over 2x2 images)
goes to a loop nest anywhere in a program: XLA swaps its operands, the kernel taken as the
image, into an order (``01fb_o01i->f01b``) that its fast kernels do not take; for 512 channels
it runs tens of times slower than PyTorch's (docs/speed.md has the figures).

:func:`fast_convolutions` rewrites both cases in JAX, before XLA sees the program: it traces a
function to a jaxpr and evaluates it again with every non-canonical convolution inside a loop
or branch replaced by transposes around a canonical one (the same arithmetic, in the same order
as XLA's pass), and every convolution without groups whose input is smaller than its window
replaced by one matrix product over its window positions (im2col: the input padded, sliced at
each window offset and stacked, then contracted with the kernel; where the stack takes at most
4x the padded input, so a large window over a small image stays a convolution). Other convolutions outside
loops are left to XLA, and so is the body of a ``jax.shard_map`` (its axis names are bound
only inside it: apply the function to the body). :func:`jaxspec.compiler.jit` applies it to
every program jaxspec compiles on a CPU and the mesh reduction to its body, so the ``lax.scan``
reduction, the mesh reduction and the compiled Lanczos driver run a CNN's products at the
speed of the host loop, and VGG's products at PyTorch's. Deviations from XLA: none in what is
computed; the transposes are explicit operations that XLA may fuse differently, and the matrix
product sums the window in another order than a convolution kernel.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import math
from typing import Any, Callable

import jax
import numpy as np
from jax import lax
from jax.extend import core

__all__ = ["enclosing_rewrite", "fast_convolutions"]

_CONV = lax.conv_general_dilated_p

# Primitives whose jaxprs XLA inlines into the computation that calls them: a convolution in
# them is where the call is. Every other primitive with jaxprs (while, scan, cond, ...) lowers
# them to computations of their own, which XLA:CPU's canonicalisation does not visit.
_INLINED = frozenset({"jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint",
                      "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin"})
# Primitives whose bodies run under axis names they bind: their jaxprs can only be traced again
# inside them, so they are left as they are (apply fast_convolutions to the function
# given to jax.shard_map, as jaxspec's mesh reduction does).
_OPAQUE = frozenset({"shard_map", "xla_pmap"})
# Set while fast_convolutions traces a function (enclosing_rewrite).
_TRACING = contextvars.ContextVar("jaxspec_fast_convolutions_tracing", default=False)


def _orders(dn) -> tuple[tuple[int, ...], ...]:
    """The transposes that put a convolution's input, kernel and output in canonical order."""
    lhs = (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1])
    rhs = (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0])
    out = (dn.out_spec[0], *dn.out_spec[2:], dn.out_spec[1])
    return lhs, rhs, out


def _is_canonical(eqn) -> bool:
    return all(o == tuple(range(len(o))) for o in _orders(eqn.params["dimension_numbers"]))


def _canonical_conv(lhs, rhs, **params):
    """The convolution ``params`` describe, on transposed operands in canonical order."""
    to_lhs, to_rhs, to_out = _orders(params["dimension_numbers"])
    n = len(to_lhs)
    spatial = tuple(range(1, n - 1))
    dn = lax.ConvDimensionNumbers((0, n - 1, *spatial), (n - 1, n - 2, *range(n - 2)),
                                  (0, n - 1, *spatial))
    out = _CONV.bind(lax.transpose(lhs, to_lhs), lax.transpose(rhs, to_rhs),
                     **{**params, "dimension_numbers": dn})
    return lax.transpose(out, tuple(int(i) for i in np.argsort(to_out)))


def _input_within_window(eqn) -> bool:
    """Whether a convolution without groups has an input smaller than its window in some
    spatial dimension (both dilated), as a 3x3 window over a 2x2 or 1x1 image, and its window
    positions stacked (the matrix product's operand) take at most 4x its padded input."""
    p = eqn.params
    if p["feature_group_count"] != 1 or p["batch_group_count"] != 1:
        return False
    dn = p["dimension_numbers"]
    lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    sizes = [(lhs[i] - 1) * ld + 1 for i, ld in zip(dn.lhs_spec[2:], p["lhs_dilation"])]
    windows = [(rhs[k] - 1) * rd + 1 for k, rd in zip(dn.rhs_spec[2:], p["rhs_dilation"])]
    out = [eqn.outvars[0].aval.shape[i] for i in dn.out_spec[2:]]
    padded = [n + lo + hi for n, (lo, hi) in zip(sizes, p["padding"])]
    stacked = math.prod(rhs[k] for k in dn.rhs_spec[2:]) * math.prod(out)
    return (any(n < w for n, w in zip(sizes, windows)) and min(out, default=1) > 0
            and stacked <= 4 * math.prod(padded))


def _conv_as_dot(lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation,
                 dimension_numbers, precision, preferred_element_type, **_):
    """The convolution as one matrix product: the input padded (and dilated), its window
    positions sliced out and stacked next to its features (im2col), contracted with the
    kernel. Only for convolutions without groups (:func:`_input_within_window`)."""
    dn = dimension_numbers
    x = lax.transpose(lhs, tuple(dn.lhs_spec))  # (batch, feature, spatial...)
    w = lax.transpose(rhs, tuple(dn.rhs_spec))  # (out feature, in feature, window...)
    d = x.ndim - 2
    x = lax.pad(x, lax.convert_element_type(0, x.dtype),
                [(0, 0, 0), (0, 0, 0)] + [(lo, hi, ld - 1)
                                          for (lo, hi), ld in zip(padding, lhs_dilation)])
    window = w.shape[2:]
    out = [(x.shape[2 + i] - (window[i] - 1) * rhs_dilation[i] - 1) // window_strides[i] + 1
           for i in range(d)]
    columns = []
    for offset in itertools.product(*map(range, window)):
        start = [0, 0, *(k * r for k, r in zip(offset, rhs_dilation))]
        stop = [*x.shape[:2], *((n - 1) * s + b + 1
                                for n, s, b in zip(out, window_strides, start[2:]))]
        columns.append(lax.slice(x, start, stop, [1, 1, *window_strides]))
    patches = lax.concatenate([lax.expand_dims(c, (2,)) for c in columns], 2)
    y = lax.dot_general(patches, w.reshape(*w.shape[:2], -1), (((1, 2), (1, 2)), ((), ())),
                        precision=precision, preferred_element_type=preferred_element_type)
    # y is (batch, spatial..., out feature); the output's dimension numbers place them
    roles = (0, d + 1, *range(1, d + 1))
    order = [0] * y.ndim
    for role, position in enumerate(dn.out_spec):
        order[position] = roles[role]
    return lax.transpose(y, tuple(order))


def _replacement(eqn, in_loop: bool) -> Callable | None:
    """What a convolution is rewritten to (None: left as it is): a matrix product where its
    input is smaller than its window, which XLA:CPU runs in a loop nest anywhere in a program;
    canonical order where it is not canonical inside a loop or branch."""
    if eqn.primitive is not _CONV:
        return None
    if _input_within_window(eqn):
        return _conv_as_dot
    if in_loop and not _is_canonical(eqn):
        return _canonical_conv
    return None


def _inner(eqn, in_loop: bool) -> bool | None:
    """Whether the jaxprs of ``eqn``'s parameters run inside a loop or branch; None where they
    are left alone (:data:`_OPAQUE`)."""
    if eqn.primitive.name in _OPAQUE:
        return None
    return in_loop or eqn.primitive.name not in _INLINED


def _rewrites(jaxpr, in_loop: bool) -> bool:
    """Whether ``jaxpr`` (open) has a convolution to rewrite (:func:`_replacement`)."""
    for eqn in jaxpr.eqns:
        if _replacement(eqn, in_loop) is not None:
            return True
        inner = _inner(eqn, in_loop)
        if inner is not None and any(_rewrites(j, inner)
                                     for j in core.jaxprs_in_params(eqn.params)):
            return True
    return False


def _rewrite_param(value: Any, in_loop: bool) -> Any:
    """A primitive's parameter with its jaxprs rewritten (closed, open, or a tuple of closed);
    anything else as it is."""
    if isinstance(value, core.ClosedJaxpr):
        if not _rewrites(value.jaxpr, in_loop):
            return value
        return jax.make_jaxpr(functools.partial(_evaluate, value.jaxpr, value.consts, in_loop))(
            *[v.aval for v in value.jaxpr.invars])
    if isinstance(value, core.Jaxpr):
        closed = _rewrite_param(core.ClosedJaxpr(value, ()), in_loop)
        return value if closed.consts else closed.jaxpr  # constants have no place there
    if isinstance(value, tuple) and value and all(isinstance(x, core.ClosedJaxpr) for x in value):
        return tuple(_rewrite_param(x, in_loop) for x in value)
    return value


def _evaluate(jaxpr, consts, in_loop: bool, *args) -> list:
    """``jaxpr`` evaluated on ``args`` (in the current trace), its convolutions rewritten
    (:func:`_replacement`)."""
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    read = lambda v: v.val if isinstance(v, core.Literal) else env[v]  # noqa: E731
    for eqn in jaxpr.eqns:
        args_in = [read(v) for v in eqn.invars]
        replacement = _replacement(eqn, in_loop)
        if replacement is not None:
            outs = [replacement(*args_in, **eqn.params)]
        else:
            inner = _inner(eqn, in_loop)
            params = eqn.params if inner is None else {
                k: _rewrite_param(v, inner) for k, v in eqn.params.items()}
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*args_in, **eqn.primitive.get_bind_params(params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update((v, x) for v, x in zip(eqn.outvars, outs) if not isinstance(v, core.DropVar))
    return [read(v) for v in jaxpr.outvars]


def enclosing_rewrite() -> bool:
    """Whether :func:`fast_convolutions` is tracing a function here: what that function calls
    need not rewrite its own convolutions, the enclosing pass reaches into it
    (:func:`jaxspec.compiler.jit` then skips its own).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.convolutions import enclosing_rewrite, fast_convolutions
      >>> seen = []
      >>> _ = fast_convolutions(lambda x: seen.append(enclosing_rewrite()) or x)(jnp.ones(1))
      >>> enclosing_rewrite(), seen
      (False, [True])
    """
    return _TRACING.get()


def fast_convolutions(fun: Callable) -> Callable:
    """``fun`` with the convolutions inside its loops and branches in canonical order, and those
    whose input is smaller than their window as matrix products: the same results, and on
    XLA:CPU fast kernels (see the module docstring).

    Arguments that are JAX arrays or tracers are traced; the others (static arguments of an
    enclosing ``jax.jit``, Python objects) are constants of the trace. Use it under ``jax.jit``
    (``jax.jit(fast_convolutions(f))``): called eagerly it traces ``fun`` at every call.
    :func:`jaxspec.compiler.jit` applies it on a CPU.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec.convolutions import fast_convolutions
      >>> def kernel_grads(w, xs):   # the kernel gradient of a convolution, in a scan
      ...     loss = lambda w, x: jnp.sum(jax.lax.conv_general_dilated(
      ...         x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)
      ...     return jax.lax.scan(lambda c, x: (c + jax.grad(loss)(w, x), None), 0 * w, xs)[0]
      >>> w, xs = jnp.ones((3, 3, 2, 2)), jnp.ones((4, 1, 5, 5, 2))
      >>> hlo = jax.jit(fast_convolutions(kernel_grads)).lower(w, xs).as_text("hlo")
      >>> sorted({l.split("dim_labels=")[1].split(",")[0] for l in hlo.splitlines()
      ...         if "convolution(" in l})   # the kernel gradient's f01b_i01o->01bf is gone
      ['b01f_01io->b01f']
      >>> bool(jnp.array_equal(fast_convolutions(kernel_grads)(w, xs), kernel_grads(w, xs)))
      True
    """

    @functools.wraps(fun)
    def canonical(*args, **kwargs):
        leaves, tree = jax.tree.flatten((args, kwargs))
        traced = [isinstance(x, (jax.Array, jax.core.Tracer)) for x in leaves]

        def rebuilt(*arrays):
            it = iter(arrays)
            full = [next(it) if t else x for x, t in zip(leaves, traced)]
            args, kwargs = jax.tree.unflatten(tree, full)
            return fun(*args, **kwargs)

        arrays = [x for x, t in zip(leaves, traced) if t]
        token = _TRACING.set(True)
        try:
            closed, shape = jax.make_jaxpr(rebuilt, return_shape=True)(*arrays)
        finally:
            _TRACING.reset(token)
        outs = _evaluate(closed.jaxpr, closed.consts, False, *arrays)
        return jax.tree.unflatten(jax.tree.structure(shape), outs)

    return canonical
