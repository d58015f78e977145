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

The set enters a curvature operator as a batch transform, :class:`Augmentation`: the data are
batches of sample ids, and the transform builds their images inside every product, whatever the
reduction (``lax.scan``, the host loop, or a device mesh, where the images and table are
replicated and the batches of ids split).

The module imports only jax and numpy (and :mod:`jaxspec`'s own jax-only modules).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.augment import IDENTITY_VARIANT, PADDING, apply_variants, variant_count
from jaxspec.augment import choose_variants
from jaxspec.batching import Batched, batch_dataset
from jaxspec.data import normalize

__all__ = [
    "Augmentation",
    "AugmentedData",
    "augmented_batch",
    "augmented_batches",
    "augmented_data",
    "identity_variants",
    "num_augmented",
    "variants_digest",
]


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
    padding: int = PADDING,
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
      padding: the crop's zero padding, which sets the pool of
        :func:`jaxspec.augment.variant_count` variants the table is drawn from; pass the same
        to :class:`Augmentation`.

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
        key = jax.random.key(int(seed), impl="threefry2x32")
        variants = np.asarray(choose_variants(key, n, num_per_image=int(num_per_image),
                                              num_variants=variant_count(padding)))
    variants = np.asarray(variants, np.int32)
    if variants.ndim != 2 or variants.shape[0] != n or variants.shape[1] < 1:
        raise ValueError(f"variants must be (N, K) with N = {n}, got {variants.shape}")
    _check_table(variants, padding)
    channels = images_shape[-1]
    mean = np.broadcast_to(np.asarray(mean, np.float32), (channels,)).copy()
    std = np.broadcast_to(np.asarray(std, np.float32), (channels,)).copy()
    if isinstance(labels, np.ndarray) or not isinstance(labels, jax.Array):
        labels = np.asarray(labels, np.int32)
    else:
        labels = labels.astype(jnp.int32)
    return AugmentedData(images, labels, variants, mean, std)


def _check_table(variants: np.ndarray, padding: int) -> None:
    if variants.min() < 0 or variants.max() >= variant_count(padding):
        raise ValueError(
            f"variant indices must be in [0, {variant_count(padding)}) for padding={padding}; "
            f"the table holds {variants.min()} .. {variants.max()} (draw it with "
            f"augmented_data(..., padding={padding}), the padding the crops use)")


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


# ---- the batch transform -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The fixed augmented set as a batch transform of a curvature operator.

    A batch ``{"sample": int32 (B,)}`` of sample ids (:func:`augmented_batches`) becomes the
    augmented images and labels (:func:`augmented_batch`) inside every product, so the operator
    over the ``K N`` augmented samples is ``curvature_operator(loss_fn, params,
    augmented_batches(data, B), transform=Augmentation(data))``, with any reduction. A pytree:
    the images, labels and table are leaves (placed with the parameters: replicated on a
    mesh), ``padding`` is static.

    Attributes:
      data: the augmented set (:func:`augmented_data`).
      padding: zero padding before the crop (4 for CIFAR).

    Example:
      >>> import jax.numpy as jnp, numpy as np, jaxspec
      >>> from jaxspec.augmented import Augmentation, augmented_batches, augmented_data
      >>> x = np.full((3, 4, 4, 1), 2, np.uint8)
      >>> d = augmented_data(x, np.zeros(3, np.int32), mean=[0], std=[1],
      ...                    num_per_image=2, seed=0, padding=1)
      >>> loss = lambda w, b: jnp.mean(b["image"][:, 1, 1, 0]) * jnp.sum(w**2)
      >>> op = jaxspec.curvature_operator(loss, jnp.ones(2, jnp.float32), augmented_batches(d, 2),
      ...                                 transform=Augmentation(d, padding=1))
      >>> op.mv(jnp.array([1.0, 0.0], jnp.float32)).tolist()  # the centre pixel survives any crop
      [4.0, 0.0]
    """

    data: AugmentedData
    padding: int = PADDING

    def __post_init__(self):
        # a table drawn for another padding decodes to offsets the crop would clip: many
        # crops at one edge (JAX rebuilds the pytree with traced leaves: checked on NumPy only)
        if isinstance(getattr(self.data, "variants", None), np.ndarray):
            _check_table(self.data.variants, self.padding)

    def __call__(self, batch: Any) -> dict:
        """The augmented batch of the sample ids ``batch["sample"]``.

        Example:
          >>> import numpy as np
          >>> from jaxspec.augmented import Augmentation, augmented_data, identity_variants
          >>> x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
          >>> d = augmented_data(x, np.array([3, 7]), mean=[0, 0, 0], std=[1, 1, 1],
          ...                    variants=identity_variants(2))
          >>> Augmentation(d)({"sample": np.array([1])})["label"].tolist()
          [7]
        """
        return augmented_batch(self.data, batch["sample"], padding=self.padding)


jax.tree_util.register_dataclass(Augmentation, data_fields=["data"], meta_fields=["padding"])
