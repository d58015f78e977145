"""CIFAR augmentation in JAX: random crops and flips from a key, and the 162 deterministic variants.

The paper's augmentation is torchvision's ``RandomCrop(32, padding=4)`` then
``RandomHorizontalFlip()``: pad each side with 4 zero pixels, cut a 32x32 window at an offset
``(dy, dx)`` drawn uniformly from ``{0, ..., 8}^2``, and mirror left-right with probability 1/2.

**Where the zeros go.** torchvision pads the raw image, *before* ``ToTensor``/``Normalize``, so a
padded pixel is raw 0 (black), which after normalisation is ``-mean / std`` per channel, not 0.
This module pads with ``fill`` (default 0) in whatever space the images are in:

* raw ``uint8`` images, ``fill=0`` (what :mod:`train` does): identical to torchvision;
* already normalised images: pass ``fill=-mean / std`` (per channel) for the same result;
  ``fill=0`` there would pad with the mean colour, a different augmentation.

One function family serves two uses, so that training and the Augmented Hessian see the same
transformations:

* :func:`random_crop_flip` draws ``(dy, dx, flip)`` per image from a key (training);
* :func:`apply_variants` takes a variant index per image in ``[0, 162)`` = 9 x 9 crop offsets x
  2 flips, decoded by :func:`variant_params` (a FIXED augmented set for the Augmented Hessian:
  the same indices in every Hessian-vector product).

Both reduce to :func:`crop_flip`, which is vectorised over the batch (a gather, no Python loop),
and everything here can be jitted, vmapped and run on any device. Variant ``80`` =
:data:`IDENTITY_VARIANT` (offset ``(4, 4)``, no flip) returns the image unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "IDENTITY_VARIANT",
    "NUM_VARIANTS",
    "PADDING",
    "apply_variants",
    "choose_variants",
    "crop_flip",
    "flip_horizontal",
    "pad",
    "random_crop_flip",
    "variant_count",
    "variant_params",
]

#: Zero padding on each side (torchvision ``RandomCrop(32, padding=4)``).
PADDING = 4
#: Number of deterministic variants: (2 * PADDING + 1) ** 2 offsets x 2 flips.
NUM_VARIANTS = (2 * PADDING + 1) ** 2 * 2
#: The variant that leaves an image unchanged: offset (PADDING, PADDING), no flip.
IDENTITY_VARIANT = ((PADDING * (2 * PADDING + 1)) + PADDING) * 2


def variant_count(padding: int = PADDING, /) -> int:
    """The number of deterministic variants with ``padding``: ``(2 padding + 1)^2`` crop offsets
    times 2 flips; variant indices lie in ``[0, variant_count(padding))``.

    Example:
      >>> from jaxspec.augment import variant_count
      >>> variant_count(), variant_count(1)
      (162, 18)
    """
    return 2 * (2 * int(padding) + 1) ** 2


def pad(images: jax.Array, /, *, padding: int = PADDING, fill: Any = 0) -> jax.Array:
    """Pad the two spatial axes of NHWC ``images`` with ``fill`` on every side.

    Args:
      images: ``(B, H, W, C)``.
      padding: pixels added on each side.
      fill: pad value, a scalar or a per-channel ``(C,)`` array (e.g. ``-mean / std`` for
        normalised images); cast to the images' dtype.

    Returns:
      ``(B, H + 2 padding, W + 2 padding, C)``, same dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.augment import pad
      >>> pad(jnp.ones((1, 2, 2, 1)), padding=1)[0, :, :, 0].tolist()
      [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    b, h, w, c = images.shape
    fill = jnp.broadcast_to(jnp.asarray(fill).astype(images.dtype), (c,))
    canvas = jnp.broadcast_to(fill, (b, h + 2 * padding, w + 2 * padding, c))
    return jax.lax.dynamic_update_slice(canvas, images, (0, padding, padding, 0))


def flip_horizontal(images: jax.Array, flip: jax.Array, /) -> jax.Array:
    """Mirror left-right the images of a NHWC batch where ``flip`` is true.

    Args:
      images: ``(B, H, W, C)``.
      flip: ``(B,)`` booleans.

    Returns:
      ``(B, H, W, C)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.augment import flip_horizontal
      >>> x = jnp.arange(3.0).reshape(1, 1, 3, 1)
      >>> flip_horizontal(x, jnp.array([True]))[0, 0, :, 0].tolist()
      [2.0, 1.0, 0.0]
    """
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def crop_flip(
    images: jax.Array,
    dy: jax.Array,
    dx: jax.Array,
    flip: jax.Array,
    /,
    *,
    padding: int = PADDING,
    fill: Any = 0,
) -> jax.Array:
    """Pad, crop at per-image offsets ``(dy, dx)``, then flip where ``flip``: the common core.

    The order (crop, then flip) is torchvision's; offsets index the padded image, so
    ``(padding, padding)`` is the centred, unshifted crop.

    Args:
      images: ``(B, H, W, C)``, any dtype.
      dy: ``(B,)`` integer row offsets in ``[0, 2 padding]``.
      dx: ``(B,)`` integer column offsets in ``[0, 2 padding]``.
      flip: ``(B,)`` booleans.
      padding: pixels of padding on each side.
      fill: pad value (see :func:`pad`).

    Returns:
      ``(B, H, W, C)``, the dtype of ``images``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.augment import crop_flip
      >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
      >>> crop_flip(x, jnp.array([0]), jnp.array([1]), jnp.array([False]), padding=1)[0, :, :, 0].tolist()
      [[0.0, 0.0], [0.0, 1.0]]
    """
    b, h, w, c = images.shape
    padded = pad(images, padding=padding, fill=fill)
    # Clip like dynamic_slice would, so an offset out of range cannot read outside the canvas.
    dy = jnp.clip(jnp.asarray(dy), 0, 2 * padding).astype(jnp.int32)
    dx = jnp.clip(jnp.asarray(dx), 0, 2 * padding).astype(jnp.int32)
    zero = jnp.zeros((), jnp.int32)

    def one(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (y, x, zero), (h, w, c))

    cropped = jax.vmap(one)(padded, dy, dx)
    return flip_horizontal(cropped, jnp.asarray(flip, bool))


def random_crop_flip(
    key: jax.Array, images: jax.Array, /, *, padding: int = PADDING, fill: Any = 0
) -> jax.Array:
    """torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` on a batch.

    Each image gets its own offset, uniform on ``{0, ..., 2 padding}^2``, and flip, probability
    1/2, all drawn from ``key``: the same key gives the same batch. They are drawn as one uniform
    variant index per image (:func:`variant_params`), which makes the three independent and
    uniform, as torchvision's, and costs one PRNG call (XLA:CPU compiles each threefry call
    slowly).

    Args:
      key: a JAX PRNG key.
      images: ``(B, H, W, C)``; raw pixels with ``fill=0`` match torchvision exactly.
      padding: pixels of padding on each side.
      fill: pad value (see :func:`pad`).

    Returns:
      ``(B, H, W, C)``, the dtype of ``images``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec.augment import random_crop_flip
      >>> random_crop_flip(jax.random.key(0), jnp.zeros((5, 32, 32, 3), jnp.uint8)).shape
      (5, 32, 32, 3)
    """
    indices = jax.random.randint(key, (images.shape[0],), 0, variant_count(padding),
                                 dtype=jnp.int32)
    return apply_variants(images, indices, padding=padding, fill=fill)


def variant_params(index: Any, /, *, padding: int = PADDING) -> tuple[Any, Any, Any]:
    """Decode a variant index into ``(dy, dx, flip)``.

    ``index = (dy * (2 padding + 1) + dx) * 2 + flip``, so indices ``2k`` and ``2k + 1`` share an
    offset and differ by the flip. Works elementwise on Python ints, NumPy or JAX integer arrays
    (traceable).

    Args:
      index: integer(s) in ``[0, 2 (2 padding + 1)^2)`` (``[0, 162)`` for ``padding=4``).
      padding: pixels of padding on each side.

    Returns:
      ``(dy, dx, flip)``: offsets into the padded image and the flip as a boolean.

    Example:
      >>> from jaxspec.augment import IDENTITY_VARIANT, variant_params
      >>> variant_params(IDENTITY_VARIANT), variant_params(161)
      ((4, 4, False), (8, 8, True))
    """
    side = 2 * padding + 1
    offset, flip = divmod(index, 2)
    dy, dx = divmod(offset, side)
    return dy, dx, flip == 1


def apply_variants(
    images: jax.Array, indices: jax.Array, /, *, padding: int = PADDING, fill: Any = 0
) -> jax.Array:
    """Apply deterministic variant ``indices[i]`` (see :func:`variant_params`) to ``images[i]``.

    Jittable and vmappable: an Augmented-Hessian operator can keep the un-augmented images and a
    fixed ``(N, K)`` index table on the device and build each augmented batch inside the HVP.

    Args:
      images: ``(B, H, W, C)``.
      indices: ``(B,)`` integers in ``[0, NUM_VARIANTS)``.
      padding: pixels of padding on each side.
      fill: pad value (see :func:`pad`); ``-mean / std`` for normalised images.

    Returns:
      ``(B, H, W, C)``, the dtype of ``images``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.augment import IDENTITY_VARIANT, apply_variants
      >>> x = jnp.arange(12.0).reshape(1, 2, 2, 3)
      >>> bool((apply_variants(x, jnp.array([IDENTITY_VARIANT])) == x).all())
      True
    """
    dy, dx, flip = variant_params(jnp.asarray(indices, jnp.int32), padding=padding)
    return crop_flip(images, dy, dx, flip, padding=padding, fill=fill)


def choose_variants(
    key: jax.Array, num_images: int, /, *, num_per_image: int, num_variants: int = NUM_VARIANTS
) -> jax.Array:
    """A fixed table of distinct variant indices per image, for a FIXED augmented data set.

    Draw it once per run (from a seeded key) and reuse it in every Hessian-vector product:
    Lanczos needs the same matrix at every step.

    Args:
      key: a JAX PRNG key.
      num_images: rows of the table.
      num_per_image: ``K`` distinct variants per image (the paper: K = 30).
      num_variants: size of the pool (162).

    Returns:
      ``(num_images, num_per_image)`` ``int32`` indices, distinct within a row.

    Example:
      >>> import jax
      >>> from jaxspec.augment import choose_variants
      >>> choose_variants(jax.random.key(0), 4, num_per_image=30).shape
      (4, 30)
    """
    if not 1 <= num_per_image <= num_variants:
        raise ValueError(f"num_per_image must be in [1, {num_variants}] (distinct variants of "
                         f"a pool of {num_variants}), got {num_per_image}")
    keys = jax.random.split(key, num_images)

    def row(k: jax.Array) -> jax.Array:
        return jax.random.permutation(k, num_variants)[:num_per_image].astype(jnp.int32)

    return jax.vmap(row)(keys)
