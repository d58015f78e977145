"""The Augmented Hessian: the Hessian over a FIXED augmented data set, built inside every HVP.

Granziol et al. (2020, section 6) approximate the True Hessian by the Hessian of the loss over an
augmented data set: every training image times ``K`` crop/flip variants (``K = 30`` turns CIFAR's
50,000 images into the paper's 1,500,000 samples), with ``m = 80`` Lanczos steps. Lanczos needs the
*same* matrix at every step, so the variants are drawn once, as an ``(N, K)`` table of indices
into the 162 deterministic variants of :mod:`jaxspec.augment`, and reused by every Hessian-vector
product.

Only the raw ``uint8`` images and the integer table live on the device; the augmented images are
never stored. Each batch is built inside the HVP: gather the images, pad with raw 0 (black, as
torchvision's ``RandomCrop(32, padding=4)`` and the training loop), crop, flip, normalise with the
training statistics. That is ``K`` times less memory than materialising the set (1.5M CIFAR images
would be 18 GB in float32) and costs a gather and a slice per batch.

**Order of the samples.** Augmented sample ``s`` in ``[0, K N)`` is image ``s mod N`` under variant
``variants[s mod N, s div N]``: the set is ``K`` passes over the training set in its order, pass
``k`` using column ``k`` of the table. Batches are consecutive runs of ``batch_size`` samples
(:func:`augmented_batches`), so with BatchNorm in batch mode every batch's statistics are those of
``batch_size`` augmented images, as in the paper's fixed, unshuffled batches of 128; with ``K = 1``
and the identity variant the batches are exactly those of the plain training set.

Three operators, as for the plain data set (:mod:`jaxspec.hvp`, :mod:`jaxspec.parallel`):

* :func:`augmented_hessian_matvec`: ``lax.scan`` over batches; traceable, a ``Partial`` pytree
  whose leaves are the parameters, images, table and sample ids (so a jitted Lanczos takes them
  as arguments, not as constants baked into the program). The GPU/TPU default.
* :func:`host_augmented_hessian_matvec`: a Python loop over groups of batches, each group one
  jitted call (XLA:CPU runs convolutions inside loops very slowly, JAX issue #12868). The CPU
  default.
* :func:`sharded_augmented_hessian_matvec`: data parallel over a 1-D device mesh with
  ``jax.shard_map``; the images and table are replicated, the batches of sample ids split, one
  ``psum`` per product. Same result for any device count (up to float summation order).

The module imports only jax and numpy (and :mod:`jaxspec`'s own jax-only modules).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from jaxspec.augment import IDENTITY_VARIANT, NUM_VARIANTS, PADDING, apply_variants
from jaxspec.augment import choose_variants
from jaxspec.data import normalize
from jaxspec.hvp import Batched, batch_dataset, dataset_mean, hvp

__all__ = [
    "AugmentedData",
    "augmented_batch",
    "augmented_batches",
    "augmented_data",
    "augmented_hessian_matvec",
    "host_augmented_hessian_matvec",
    "identity_variants",
    "num_augmented",
    "sharded_augmented_hessian_matvec",
    "variants_digest",
]

LossFn = Callable[[Any, Any], jax.Array]


class AugmentedData(NamedTuple):
    """A fixed augmented data set: raw images, labels, the variant table, the normalisation.

    A pytree of arrays (put it on a device once with ``jax.device_put``).

    Attributes:
      images: ``uint8`` ``(N, H, W, C)`` raw pixels (0..255), un-augmented.
      labels: ``int32`` ``(N,)``.
      variants: ``int32`` ``(N, K)``: row ``i`` lists the ``K`` variants of image ``i``
        (indices in ``[0, 162)``, see :func:`jaxspec.augment.variant_params`).
      mean: ``float32`` ``(C,)`` per-channel mean used in training, pixel units.
      std: ``float32`` ``(C,)`` per-channel standard deviation used in training, pixel units.

    Example:
      >>> import jax
      >>> import numpy as np
      >>> from jaxspec.augmented import AugmentedData, identity_variants, num_augmented
      >>> images, labels = np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1], np.int32)
      >>> d = AugmentedData(images, labels, identity_variants(2, 3),
      ...                   mean=np.zeros(3, np.float32), std=np.ones(3, np.float32))
      >>> num_augmented(d), len(jax.tree.leaves(d))   # 2 images x 3 variants; 5 array leaves
      (6, 5)
    """

    images: Any
    labels: Any
    variants: Any
    mean: Any
    std: Any


def augmented_data(
    images: Any,
    labels: Any,
    /,
    *,
    mean: Any,
    std: Any,
    num_per_image: int | None = None,
    seed: int | None = None,
    variants: Any | None = None,
) -> AugmentedData:
    """Builds an :class:`AugmentedData`, drawing the variant table from ``seed`` unless given.

    The table is drawn by :func:`jaxspec.augment.choose_variants` from
    ``jax.random.key(seed, impl="threefry2x32")`` (the same bits on every backend and JAX
    version): ``num_per_image`` distinct variants per image. Draw it once per run; the same seed
    gives the same table.

    Args:
      images: ``uint8`` ``(N, H, W, C)`` raw training images (NumPy or JAX).
      labels: ``(N,)`` integer labels.
      mean: per-channel training mean (pixel units), e.g. from ``train.loop.read_data_info``.
      std: per-channel training standard deviation (pixel units).
      num_per_image: ``K``; required unless ``variants`` is given.
      seed: seed of the table; required unless ``variants`` is given.
      variants: an explicit ``(N, K)`` table instead (e.g. :func:`identity_variants`).

    Returns:
      The :class:`AugmentedData` (arrays stay where they were; the table is NumPy ``int32``).

    Example:
      >>> import numpy as np
      >>> from jaxspec.augmented import augmented_data, num_augmented
      >>> x = np.zeros((5, 8, 8, 3), np.uint8)
      >>> d = augmented_data(x, np.arange(5), mean=[0, 0, 0], std=[1, 1, 1],
      ...                    num_per_image=3, seed=0)
      >>> d.variants.shape, num_augmented(d)
      ((5, 3), 15)
    """
    images_shape = np.shape(images)
    if len(images_shape) != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images_shape}")
    if np.dtype(getattr(images, "dtype", np.float32)) != np.uint8:
        raise TypeError("images must be the raw uint8 pixels: the padding is raw 0 (black) and the "
                        "training normalisation is applied after the crop, as in training")
    n = images_shape[0]
    if np.shape(labels) != (n,):
        raise ValueError(f"labels must have shape ({n},), got {np.shape(labels)}")
    if variants is None:
        if num_per_image is None or seed is None:
            raise ValueError("give num_per_image and seed, or an explicit variants table")
        if not 1 <= num_per_image <= NUM_VARIANTS:
            raise ValueError(f"num_per_image must be in [1, {NUM_VARIANTS}], got {num_per_image}")
        key = jax.random.key(int(seed), impl="threefry2x32")
        variants = np.asarray(choose_variants(key, n, num_per_image=int(num_per_image)))
    variants = np.asarray(variants, np.int32)
    if variants.ndim != 2 or variants.shape[0] != n or variants.shape[1] < 1:
        raise ValueError(f"variants must be (N, K) with N = {n}, got {variants.shape}")
    if variants.min() < 0 or variants.max() >= NUM_VARIANTS:
        raise ValueError(f"variant indices must be in [0, {NUM_VARIANTS})")
    channels = images_shape[-1]
    mean = np.broadcast_to(np.asarray(mean, np.float32), (channels,)).copy()
    std = np.broadcast_to(np.asarray(std, np.float32), (channels,)).copy()
    if isinstance(labels, np.ndarray) or not isinstance(labels, jax.Array):
        labels = np.asarray(labels, np.int32)
    else:
        labels = labels.astype(jnp.int32)
    return AugmentedData(images, labels, variants, mean, std)


def identity_variants(num_images: int, /, num_per_image: int = 1) -> np.ndarray:
    """A table whose every entry is the identity variant (the un-augmented image).

    With ``num_per_image=1`` the augmented Hessian is the Empirical Hessian (a check). The
    identity is :data:`jaxspec.augment.IDENTITY_VARIANT`, defined for the default padding 4.

    Example:
      >>> from jaxspec.augmented import identity_variants
      >>> identity_variants(2).tolist()
      [[80], [80]]
    """
    return np.full((num_images, num_per_image), IDENTITY_VARIANT, np.int32)


def variants_digest(data: AugmentedData, /) -> str:
    """SHA-1 of the variant table (record it with a result; a resumed run must see the same).

    Example:
      >>> from jaxspec.augmented import AugmentedData, identity_variants, variants_digest
      >>> import numpy as np
      >>> d = AugmentedData(None, None, identity_variants(3), None, None)
      >>> len(variants_digest(d))
      40
    """
    table = np.ascontiguousarray(np.asarray(data.variants, np.int32))
    return hashlib.sha1(table.tobytes() + str(table.shape).encode()).hexdigest()


def num_augmented(data: AugmentedData, /) -> int:
    """Number of augmented samples, ``K N``.

    Example:
      >>> from jaxspec.augmented import AugmentedData, identity_variants, num_augmented
      >>> num_augmented(AugmentedData(None, None, identity_variants(4, 30), None, None))
      120
    """
    n, k = np.shape(data.variants)
    return int(n) * int(k)


def augmented_batches(data: AugmentedData, batch_size: int, /, *, num_shards: int = 1) -> Batched:
    """The augmented set's sample ids ``0 .. K N - 1``, cut by :func:`jaxspec.batch_dataset`.

    A batch is ``{"sample": int32 (batch_size,)}``; :func:`augmented_batch` turns it into images
    inside the HVP. Weights are ``batch_size / (K N)``, the ragged tail exact, and zero-weight
    padding batches make the count divisible by ``num_shards``, as for a plain data set.

    Example:
      >>> from jaxspec.augmented import AugmentedData, augmented_batches, identity_variants
      >>> b = augmented_batches(AugmentedData(None, None, identity_variants(5, 2), None, None), 4)
      >>> b.batches["sample"].tolist(), b.tail["sample"].tolist()
      ([[0, 1, 2, 3], [4, 5, 6, 7]], [8, 9])
    """
    ids = np.arange(num_augmented(data), dtype=np.int32)
    return batch_dataset({"sample": ids}, batch_size, num_shards=num_shards)


def augmented_batch(data: AugmentedData, samples: Any, /, *, padding: int = PADDING) -> dict:
    """The batch of augmented samples ``samples``, in the project-wide format.

    Sample ``s`` is image ``i = s mod N`` under variant ``variants[i, s div N]``, cropped and
    flipped in raw pixel space (padding with raw 0, as training) and then normalised with the
    training ``mean``/``std``. Traceable; runs on whatever device holds ``data``.

    Args:
      data: the augmented set.
      samples: ``(B,)`` integer sample ids in ``[0, K N)``.
      padding: pixels of zero padding before the crop (4 for CIFAR).

    Returns:
      ``{"image": float32 (B, H, W, C), "label": int32 (B,)}``.

    Example:
      >>> import numpy as np
      >>> from jaxspec.augmented import augmented_batch, augmented_data, identity_variants
      >>> x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
      >>> d = augmented_data(x, np.array([3, 7]), mean=[0, 0, 0], std=[1, 1, 1],
      ...                    variants=identity_variants(2))
      >>> b = augmented_batch(d, np.array([1, 0]))
      >>> b["label"].tolist(), bool((b["image"][0] == x[1]).all())
      ([7, 3], True)
    """
    n = data.variants.shape[0]
    samples = jnp.asarray(samples, jnp.int32)
    image_ids = samples % n
    copies = samples // n
    variant = jnp.asarray(data.variants)[image_ids, copies]
    images = jnp.asarray(data.images)[image_ids]
    images = apply_variants(images, variant, padding=padding, fill=0)
    return {"image": normalize(images, mean=jnp.asarray(data.mean), std=jnp.asarray(data.std)),
            "label": jnp.asarray(data.labels)[image_ids].astype(jnp.int32)}


# ---- operators ------------------------------------------------------------------------------


def _batch_hvp_flat(loss_fn, padding, params, data, samples, tangent):
    batch = augmented_batch(data, samples, padding=padding)
    return ravel_pytree(hvp(loss_fn, params, batch, tangent))[0]


def _flat_augmented_hvp(loss_fn, padding, params, data, batched, v):
    tangent = ravel_pytree(params)[1](v)

    def per_batch(b):
        return _batch_hvp_flat(loss_fn, padding, params, data, b["sample"], tangent)

    return dataset_mean(per_batch, batched, v)


def augmented_hessian_matvec(loss_fn: LossFn, params: Any, data: AugmentedData,
                             batched: Batched, /, *, padding: int = PADDING) -> Callable:
    """The augmented-set Hessian as a traceable matvec on flat vectors (``lax.scan`` over batches).

    The counterpart of :func:`jaxspec.hessian_matvec`: a ``jax.tree_util.Partial`` whose leaves
    are ``params``, ``data`` and ``batched``, so ``run_lanczos(driver="compiled")`` passes them
    into the compiled program as arguments. Put ``data`` on the device first
    (``jax.device_put``); it is read, never copied per batch.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean over the batch dict
        ``{"image", "label"}``.
      params: the parameters (pytree).
      data: the augmented set (:func:`augmented_data`).
      batched: from :func:`augmented_batches`.
      padding: zero padding before the crop.

    Returns:
      ``matvec(v) -> H v`` for ``H`` the Hessian of the mean loss over all ``K N`` samples.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from jaxspec.augmented import (augmented_batches, augmented_data,
      ...                                augmented_hessian_matvec)
      >>> x = np.random.default_rng(0).integers(0, 255, (6, 4, 4, 1), dtype=np.uint8)
      >>> d = augmented_data(x, np.zeros(6, np.int32), mean=[128], std=[64],
      ...                    num_per_image=2, seed=0)
      >>> loss = lambda w, b: 0.5 * jnp.mean(jnp.sum(b["image"], (1, 2, 3)) ** 2) * jnp.sum(w**2)
      >>> mv = augmented_hessian_matvec(loss, jnp.ones(2, jnp.float32), d,
      ...                               augmented_batches(d, 4), padding=1)
      >>> jax.jit(lambda op, v: op(v))(mv, jnp.ones(2, jnp.float32)).shape
      (2,)
    """
    return jax.tree_util.Partial(functools.partial(_flat_augmented_hvp, loss_fn, int(padding)),
                                 params, data, batched)


# Module-level jit (loss_fn and padding static, the accumulator donated), as hvp._group_hvp: a
# jit made per operator recompiled for every new operator (new parameters, say).
@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def _group_augmented_hvp(loss_fn, padding, acc, v, params, data, groups, weights):
    tangent = ravel_pytree(params)[1](v)
    for j, samples in enumerate(groups):  # unrolled: no XLA loop around the convolutions
        out = _batch_hvp_flat(loss_fn, padding, params, data, samples, tangent)
        acc = acc + weights[j].astype(out.dtype) * out
    return acc


def host_augmented_hessian_matvec(loss_fn: LossFn, params: Any, data: AugmentedData,
                                  batched: Batched, /, *, group_size: int = 4,
                                  padding: int = PADDING) -> Callable:
    """The augmented-set Hessian as a host-driven matvec (Python loop over jitted groups).

    The counterpart of :func:`jaxspec.host_hessian_matvec` for ``driver="host"``: ``data`` is put
    on the default device once; each call loops over the batches of sample ids in groups of
    ``group_size`` (one jitted call per group, no XLA loop around the convolutions) and
    accumulates ``w_b H_b v`` on the device. Not traceable.

    Args:
      loss_fn, params, data, batched, padding: as :func:`augmented_hessian_matvec`.
      group_size: batches per compiled call.

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> from jaxspec.augmented import (augmented_batches, augmented_data,
      ...                                host_augmented_hessian_matvec)
      >>> x = np.full((3, 4, 4, 1), 2, np.uint8)
      >>> d = augmented_data(x, np.zeros(3, np.int32), mean=[0], std=[1],
      ...                    num_per_image=1, seed=0)
      >>> loss = lambda w, b: jnp.mean(b["image"][:, 1, 1, 0]) * jnp.sum(w**2)
      >>> mv = host_augmented_hessian_matvec(loss, jnp.ones(2, jnp.float32), d,
      ...                                    augmented_batches(d, 2), padding=1)
      >>> mv(jnp.array([1.0, 0.0], jnp.float32)).tolist()  # the centre pixel survives any crop
      [4.0, 0.0]
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    flat = ravel_pytree(params)[0]
    data = jax.device_put(data)
    group_hvp = functools.partial(_group_augmented_hvp, loss_fn, int(padding))
    num_batches = 0 if batched.batches is None else int(np.shape(batched.weights)[0])
    weights = np.asarray(batched.weights)
    real = [b for b in range(num_batches) if weights[b] != 0]
    groups = [real[i: i + group_size] for i in range(0, len(real), group_size)]
    samples = None if batched.batches is None else np.asarray(batched.batches["sample"])

    def matvec(v):
        acc = jnp.zeros_like(flat)
        for g in groups:
            acc = group_hvp(acc, v, params, data, tuple(samples[b] for b in g),
                            weights[np.asarray(g)])
        if batched.tail is not None:
            acc = group_hvp(acc, v, params, data, (np.asarray(batched.tail["sample"]),),
                            np.asarray([batched.tail_weight]))
        return acc

    return matvec


def sharded_augmented_hessian_matvec(loss_fn: LossFn, params: Any, data: AugmentedData,
                                     batched: Batched, /, *, mesh: Mesh | None = None,
                                     axis_name: str = "data",
                                     padding: int = PADDING) -> Callable:
    """The augmented-set Hessian, data parallel over a 1-D mesh (``jax.shard_map``).

    Same semantics as :func:`jaxspec.parallel.sharded_hessian_matvec`: the batches of sample ids
    are split over the devices (make them with ``augmented_batches(data, B,
    num_shards=mesh.size)``), whole batches per device, zero-weight padding skipped, the ragged
    tail computed once on the last device, one ``psum`` per product. ``params`` and ``data``
    (images, table) are replicated: any device can build any augmented image. Traceable; wrap
    in ``jax.jit`` to call it eagerly.

    Args:
      loss_fn, params, data, batched, padding: as :func:`augmented_hessian_matvec`.
      mesh: a 1-D mesh; default :func:`jaxspec.parallel.data_mesh`.
      axis_name: the mesh axis.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from jaxspec.augmented import (augmented_batches, augmented_data,
      ...                                sharded_augmented_hessian_matvec)
      >>> from jaxspec.parallel import data_mesh
      >>> mesh = data_mesh()
      >>> x = np.full((3, 4, 4, 1), 2, np.uint8)
      >>> d = augmented_data(x, np.zeros(3, np.int32), mean=[0], std=[1],
      ...                    num_per_image=2, seed=0)
      >>> loss = lambda w, b: jnp.mean(b["image"][:, 1, 1, 0]) * jnp.sum(w**2)
      >>> mv = sharded_augmented_hessian_matvec(
      ...     loss, jnp.ones(2, jnp.float32), d,
      ...     augmented_batches(d, 2, num_shards=mesh.size), mesh=mesh, padding=1)
      >>> jax.jit(lambda op, v: op(v))(mv, jnp.array([1.0, 0.0], jnp.float32)).tolist()
      [4.0, 0.0]
    """
    from jaxspec.parallel import _sharded_operator, data_mesh

    mesh = data_mesh() if mesh is None else mesh
    if axis_name not in mesh.shape:
        raise ValueError(f"mesh has no axis {axis_name!r} (axes: {mesh.axis_names})")
    pad = int(padding)

    def batch_hvp(params, data, batch, tangent):
        return _batch_hvp_flat(loss_fn, pad, params, data, batch["sample"], tangent)

    return _sharded_operator(batch_hvp, params, data, batched, mesh=mesh, axis_name=axis_name)
