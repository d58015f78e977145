"""Norms of Krylov vectors that neither overflow nor underflow, and the operator scales the Krylov
methods (:mod:`jaxspec.lanczos`, :mod:`jaxspec.reorth`, :mod:`jaxspec.eigsh`) support.

A norm taken as ``sqrt(w . w)`` squares the scale of ``w``. In float32 (largest finite number
``3.4e38``, smallest normal ``1.2e-38``) the square overflows for ``|w|`` above ``1.8e19``, and
below ``1.1e-19`` it underflows: XLA flushes subnormal numbers to zero on CPU and GPU, so the norm
of a vector of norm ``1e-20`` comes out 0. A Lanczos run then sees a breakdown at its first step
(one node where the spectrum has many), and :func:`jaxspec.eigsh` certified a wrong eigenvalue
with a residual of 0. :func:`norm` takes the plain dot product ``x . x``, the one pass over ``x``
a step pays anyway, and only where that is not a finite number above ``P tiny / eps`` (below it
the squares flushed to zero could weigh more than a rounding unit) recomputes the norm as
``s |x / s|`` with ``s`` the power of two at most ``max |x|`` and over half of it, under a
``lax.cond``: two more passes over ``x``, on the rare path only. :func:`hypot` does the same for
a few scalars. Both paths give the same number where both can (a power of two scales exactly),
so a Krylov run on ``2^k A`` is that on ``A`` scaled by ``2^k``, bit for bit, over the range
below.

Supported scales (:func:`scale_range`): with the norms safe, the Krylov methods are invariant
under scaling of the operator, to rounding, as long as the norms of its products ``|A q|`` (unit
``q``; the run's largest, which is ``|A|`` to within the spectrum the run has seen) lie in::

    tiny sqrt(P) / eps  <=  |A q|  <=  eps max

(``tiny``, ``eps``, ``max``: ``jnp.finfo(dtype)``; float32 with ``P = 100``: ``9.9e-31`` to
``4.1e31``; ``P = 855,050``: ``9.1e-29`` to ``4.1e31``; float64 from ``1e-292 sqrt(P)`` to
``4e292``; float16 has next to none, ``0.06 sqrt(P)`` to ``64``: use float32). Below it, the entries of a vector of
norm ``|A q|`` are so small that their rounding errors, ``eps |A q| / sqrt(P)``, fall under the
smallest normal number: flushed to zero, they make errors larger than a rounding unit of
``|A q|`` (as do the breakdown test's ``eps |A q|`` and the orthogonality estimates' rounding
term near the bottom of the range). Above it, the sums inside a product and in the recurrences
(a few times ``|A|``, or up to ``sqrt(P) |A|`` for the sums of ``|A_ij q_j|``) leave no headroom
to the overflow. Outside the range the methods raise (:func:`describe_range` says the range in
the message) instead of returning numbers they cannot vouch for; an exactly zero operator is in
range. Rescale such an operator by a power of two, which is exact, and its spectrum back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["describe_range", "hypot", "in_range", "norm", "scale_range"]

_HIGHEST = jax.lax.Precision.HIGHEST


def _plain_is_exact(sum_sq: jax.Array, size: int) -> jax.Array:
    """Whether ``sqrt(x . x)`` is as accurate as the rescaled norm: finite, and far enough above
    the underflow that the squares flushed to zero (each below ``tiny``) weigh less than a
    rounding unit of the sum."""
    info = jnp.finfo(sum_sq.dtype)
    floor = float(info.tiny) * size / float(info.eps)
    return (sum_sq >= floor) & (sum_sq <= info.max)  # False for NaN and Inf too


def _rescaled(x: jax.Array) -> jax.Array:
    """``s |x / s|`` with ``s`` the power of two in ``(max |x| / 2, max |x|]``: the entries of
    ``x / s`` are under 2, so no square overflows and only squares far under ``eps`` of the
    largest underflow. Scaling by a power of two is exact, and so is the square root's scaling
    by its square: where the plain ``sqrt(x . x)`` neither over- nor underflows, this is the
    same number, bit for bit, and the norm of ``2^k x`` is ``2^k`` times that of ``x``. 0 for
    the zero vector; NaN or Inf where ``x`` holds one."""
    top = jnp.max(jnp.abs(x))
    ok = (top > 0) & jnp.isfinite(top)
    mantissa, _ = jnp.frexp(top)  # top = mantissa 2^e, mantissa in [1/2, 1)
    scale = jnp.where(ok, top / (2 * mantissa), jnp.ones_like(top))  # 2^(e - 1), exactly
    y = x / scale
    return jnp.where(ok, scale * jnp.sqrt(jnp.dot(y, y, precision=_HIGHEST)), top)


@jax.jit  # called eagerly too (a start vector, a residual): one compilation per shape
def norm(x: jax.Array) -> jax.Array:
    """The 2-norm of a vector, without overflow or underflow of its square.

    One dot product ``x . x`` (``Precision.HIGHEST``) where it is a finite number above
    ``P tiny / eps``; elsewhere (under a ``lax.cond``, so the common path costs nothing more)
    ``s |x / s|`` with ``s`` a power of two near ``max |x|``. NaN or Inf where ``x`` holds
    one.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.norms import norm
      >>> float(norm(jnp.array([3.0, 4.0])))
      5.0
      >>> x = jnp.array([3.0, 4.0], jnp.float32) * 2.0**-70   # 3e-21, 4e-21: squares flushed
      >>> float(jnp.sqrt(jnp.dot(x, x))), float(norm(x)) * 2.0**70
      (0.0, 5.0)
      >>> y = jnp.array([3.0, 4.0], jnp.float32) * 2.0**70    # 3.5e21, 4.7e21: they overflow
      >>> float(jnp.sqrt(jnp.dot(y, y))), float(norm(y)) * 2.0**-70
      (inf, 5.0)
    """
    sum_sq = jnp.dot(x, x, precision=_HIGHEST)
    return jax.lax.cond(_plain_is_exact(sum_sq, x.shape[0]), lambda _: jnp.sqrt(sum_sq),
                        _rescaled, x)


def hypot(*xs: jax.Array) -> jax.Array:
    """``sqrt(sum x^2)`` over the entries of a few scalars or short vectors, as ``s |x / s|``
    with ``s`` the largest ``|x|``: no square overflows or underflows, and scaling every ``x``
    by ``2^k`` scales the result by ``2^k`` exactly. Always rescaled (for a handful of numbers
    a second pass costs nothing). NaN or Inf where an entry is one.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.norms import hypot
      >>> float(hypot(jnp.float32(3 * 2.0**-100), jnp.float32(4 * 2.0**-100))) * 2.0**100
      5.0
    """
    x = jnp.concatenate([jnp.ravel(x) for x in jnp.broadcast_arrays(*xs)])
    top = jnp.max(jnp.abs(x))
    ok = (top > 0) & jnp.isfinite(top)
    y = x / jnp.where(ok, top, jnp.ones_like(top))
    return jnp.where(ok, top * jnp.sqrt(jnp.dot(y, y, precision=_HIGHEST)), top)


def scale_range(dtype, size: int, /) -> tuple[float, float]:
    """``(low, high)``: the norms ``|A q|`` of an operator's products, on vectors of ``size``
    entries in ``dtype``, that the Krylov methods support (see the module docstring):
    ``tiny sqrt(size) / eps`` and ``eps max``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.norms import scale_range
      >>> [f"{x:.1e}" for x in scale_range(jnp.float32, 100)]
      ['9.9e-31', '4.1e+31']
    """
    info = jnp.finfo(dtype)
    return (float(info.tiny) * float(np.sqrt(size)) / float(info.eps),
            float(info.eps) * float(info.max))


def in_range(scale, dtype, size: int, /):
    """Whether an operator whose products have norms up to ``scale`` is in :func:`scale_range`
    (or is zero there: ``scale == 0``). False for NaN and Inf. Works on traced scalars and on
    floats alike.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.norms import in_range
      >>> [bool(in_range(s, jnp.float32, 100)) for s in (0.0, 1e-32, 1e-19, 1e25, 1e33)]
      [True, False, True, True, False]
    """
    low, high = scale_range(dtype, size)
    return (scale == 0) | ((scale >= low) & (scale <= high))


def describe_range(dtype, /) -> str:
    """The range of :func:`scale_range` in words, for error messages.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.norms import describe_range
      >>> describe_range(jnp.float32)
      'between 9.9e-32 * sqrt(P) and 4.1e+31 in float32'
    """
    low, high = scale_range(dtype, 1)
    return f"between {low:.2g} * sqrt(P) and {high:.2g} in {jnp.dtype(dtype).name}"
