"""Image-classification data: CIFAR-10/100 via tensorflow-datasets, local .npz, synthetic data.

Every loader returns an :class:`ImageDataset`: raw ``uint8`` images in NHWC layout and ``int32``
labels, on the host, plus the per-channel mean and standard deviation of the *full* training split
(in raw pixel units, 0..255). Images stay ``uint8`` until the last moment because the training loop
keeps the whole training set on the device (a quarter of the memory of ``float32``) and augments it
in raw pixel space, exactly as torchvision's ``RandomCrop(32, padding=4)`` -> ``ToTensor`` ->
``Normalize`` does; :func:`normalize` then gives the project-wide batch format
``{"image": float32 (B, 32, 32, 3) normalised, "label": int32 (B,)}``.

Reading CIFAR through tensorflow-datasets uses ``tfds.data_source`` (ArrayRecord files, decoded with
NumPy/PIL), so **TensorFlow is not needed at run time**. *Preparing* the data once (download and
convert) may need TensorFlow: install the ``data`` extra (``pip install -e .[data]``, which adds
``tensorflow-cpu``) on a machine with network access, run :func:`load_tfds` once with
``download=True``, and copy the ``data_dir``; or write the arrays to a ``.npz`` with
:func:`save_npz` and use :func:`load_npz` anywhere.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ImageDataset",
    "NUM_CLASSES",
    "channel_stats",
    "load_dataset",
    "load_npz",
    "load_tfds",
    "normalize",
    "normalized_split",
    "save_npz",
    "subsample",
    "subsample_indices",
    "synthetic_cifar",
    "validate_arrays",
]

#: Number of classes of the data sets known by name.
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}

_IMAGE_SHAPE = (32, 32, 3)
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class ImageDataset(NamedTuple):
    """A train/test image-classification data set held in host memory.

    Attributes:
      name: a label for logs (``"cifar10"``, a file name, ``"synthetic"``).
      x_train: ``uint8`` training images, ``(N, H, W, C)``.
      y_train: ``int32`` training labels, ``(N,)``, in ``[0, num_classes)``.
      x_test: ``uint8`` test images, ``(M, H, W, C)``.
      y_test: ``int32`` test labels, ``(M,)``.
      num_classes: number of classes.
      mean: ``float32`` ``(C,)`` per-channel mean of the full training split, pixel units 0..255.
      std: ``float32`` ``(C,)`` per-channel standard deviation of the full training split.

    A text data set (:mod:`jaxspec.text`) uses the same fields: token windows ``(N, T)`` for
    images, next tokens ``(N, T)`` for labels, ``mean`` and ``std`` ``None``.

    Example:
      >>> from jaxspec.data import synthetic_cifar
      >>> d = synthetic_cifar(num_train=6, num_test=3, num_classes=3)
      >>> d.name, d.num_classes, d.x_test.shape, d.mean.shape
      ('synthetic', 3, (3, 32, 32, 3), (3,))
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: np.ndarray
    std: np.ndarray


def channel_stats(images: np.ndarray, /) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``uint8`` NHWC images, in pixel units.

    The standard deviation is over all pixels of a channel (population std), the convention of
    torchvision's published CIFAR constants (0.2470, 0.2435, 0.2616 on the 0..1 scale). Sums are in
    float64 so 50,000 images add up exactly; the result is float32.

    Args:
      images: ``(N, H, W, C)`` array of raw pixels.

    Returns:
      ``(mean, std)``, each ``float32`` of shape ``(C,)``.

    Example:
      >>> import numpy as np
      >>> from jaxspec.data import channel_stats
      >>> x = np.zeros((2, 4, 4, 3), np.uint8); x[1] = 255
      >>> [v.tolist() for v in channel_stats(x)]
      [[127.5, 127.5, 127.5], [127.5, 127.5, 127.5]]
    """
    x = np.asarray(images).reshape(-1, images.shape[-1])
    # Chunked float64 sums: no (N*H*W, C) float64 copy of a 50,000-image set.
    total = np.zeros(x.shape[-1], np.float64)
    total_sq = np.zeros(x.shape[-1], np.float64)
    for start in range(0, x.shape[0], 1 << 20):
        chunk = x[start : start + (1 << 20)].astype(np.float64)
        total += chunk.sum(0)
        total_sq += (chunk * chunk).sum(0)
    mean = total / x.shape[0]
    var = np.maximum(total_sq / x.shape[0] - mean * mean, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def normalize(images: Any, /, *, mean: Any, std: Any) -> Any:
    """``(images - mean) / std`` as ``float32``, per channel (last axis).

    Works on NumPy and JAX arrays alike (it uses only operators and ``astype``), so it can run on
    the host or inside a jitted training step. Casting first keeps it valid under JAX's strict
    dtype promotion.

    Args:
      images: raw pixels (any real dtype), channels last.
      mean: per-channel mean, pixel units.
      std: per-channel standard deviation, pixel units.

    Returns:
      ``float32`` array of the shape of ``images``.

    Example:
      >>> import numpy as np
      >>> from jaxspec.data import normalize
      >>> half = np.full(3, 127.5)
      >>> normalize(np.full((1, 1, 3), 255, np.uint8), mean=half, std=half)
      array([[[1., 1., 1.]]], dtype=float32)
    """
    # astype keeps JAX arrays (traced or not) on the device; lists and scalars become NumPy.
    mean, std = (a.astype(np.float32) if hasattr(a, "astype") else np.asarray(a, np.float32)
                 for a in (mean, std))
    return (images.astype(np.float32) - mean) / std


def normalized_split(data: ImageDataset, /, split: str = "train") -> dict[str, np.ndarray]:
    """One split in the project-wide batch format, without augmentation.

    This is the input the Empirical Hessian is computed on.

    Args:
      data: the data set.
      split: ``"train"`` or ``"test"``.

    Returns:
      ``{"image": float32 (N, 32, 32, 3), "label": int32 (N,)}`` (NumPy, host memory).

    Example:
      >>> from jaxspec.data import normalized_split, synthetic_cifar
      >>> batch = normalized_split(synthetic_cifar(num_train=20, num_test=10), "test")
      >>> batch["image"].shape, batch["image"].dtype, batch["label"].dtype
      ((10, 32, 32, 3), dtype('float32'), dtype('int32'))
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    return {"image": normalize(x, mean=data.mean, std=data.std), "label": y.astype(np.int32)}


def validate_arrays(
    arrays: dict[str, Any],
    /,
    *,
    num_classes: int | None = None,
    image_shape: tuple[int, int, int] | None = _IMAGE_SHAPE,
    source: str = "arrays",
) -> int:
    """Check ``x_train, y_train, x_test, y_test`` and raise ``ValueError`` saying what is wrong.

    Args:
      arrays: mapping holding at least the four keys (extra keys are ignored).
      num_classes: labels must lie in ``[0, num_classes)``; ``None`` infers ``max label + 1``.
      image_shape: required ``(H, W, C)`` of one image; ``None`` accepts any 3-D image shape.
      source: the name used in error messages (a file name).

    Returns:
      The number of classes (given or inferred).

    Example:
      >>> import numpy as np
      >>> from jaxspec.data import validate_arrays
      >>> x = np.zeros((4, 32, 32, 3), np.uint8); y = np.array([0, 1, 2, 1])
      >>> validate_arrays({"x_train": x, "y_train": y, "x_test": x, "y_test": y})
      3
    """
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    if missing:
        raise ValueError(
            f"{source}: missing key(s) {missing}; expected {list(_NPZ_KEYS)} "
            f"(found {sorted(arrays)})"
        )
    max_label = -1
    for split in ("train", "test"):
        x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
        xk, yk = f"x_{split}", f"y_{split}"
        if x.ndim != 4:
            raise ValueError(
                f"{source}: {xk} must be 4-D (N, H, W, C) NHWC images, got shape {x.shape}"
            )
        if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
            hint = ""
            if tuple(x.shape[1:]) == (image_shape[2], image_shape[0], image_shape[1]):
                hint = " (this looks like NCHW; transpose with x.transpose(0, 2, 3, 1))"
            raise ValueError(
                f"{source}: {xk} must have shape (N, {', '.join(map(str, image_shape))}), "
                f"got {x.shape}{hint}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{source}: {xk} is empty")
        if x.dtype != np.uint8:
            raise ValueError(
                f"{source}: {xk} must be uint8 raw pixels 0..255 (normalisation is done by the "
                f"loader), got dtype {x.dtype}"
            )
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{source}: {yk} must be 1-D with one label per image ({x.shape[0]}), "
                f"got shape {y.shape}"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{source}: {yk} must hold integer class indices, got dtype {y.dtype}")
        if y.min() < 0:
            raise ValueError(f"{source}: {yk} has negative label {int(y.min())}")
        max_label = max(max_label, int(y.max()))
    if num_classes is None:
        num_classes = max_label + 1
    elif max_label >= num_classes:
        raise ValueError(
            f"{source}: label {max_label} out of range for num_classes={num_classes} "
            f"(labels must lie in [0, {num_classes}))"
        )
    return num_classes


def _make_dataset(name: str, arrays: dict[str, Any], num_classes: int) -> ImageDataset:
    x_train = np.ascontiguousarray(arrays["x_train"], dtype=np.uint8)
    mean, std = channel_stats(x_train)
    return ImageDataset(
        name=name,
        x_train=x_train,
        y_train=np.asarray(arrays["y_train"]).astype(np.int32),
        x_test=np.ascontiguousarray(arrays["x_test"], dtype=np.uint8),
        y_test=np.asarray(arrays["y_test"]).astype(np.int32),
        num_classes=int(num_classes),
        mean=mean,
        std=std,
    )


def load_npz(
    path: str | os.PathLike,
    /,
    *,
    num_classes: int | None = None,
    image_shape: tuple[int, int, int] | None = _IMAGE_SHAPE,
) -> ImageDataset:
    """Load a local ``.npz`` holding ``x_train, y_train, x_test, y_test``.

    Images must be ``uint8`` NHWC raw pixels, labels integer class indices; extra arrays (class
    names, file names) are ignored. A malformed file raises ``ValueError`` naming the problem.
    Nothing is pickled (``allow_pickle=False``).

    Args:
      path: the file.
      num_classes: labels must lie in ``[0, num_classes)``; ``None`` infers ``max label + 1``
        (pass it for a subset that may miss the last classes).
      image_shape: required shape of one image; ``None`` accepts any.

    Returns:
      The :class:`ImageDataset`, normalisation statistics from its training split.

    Example:
      >>> import os, tempfile
      >>> from jaxspec.data import load_npz, save_npz, synthetic_cifar
      >>> path = os.path.join(tempfile.mkdtemp(), "tiny.npz")
      >>> save_npz(synthetic_cifar(num_train=20, num_test=10), path)
      >>> load_npz(path, num_classes=10).x_train.shape
      (20, 32, 32, 3)
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source}: no such file")
    try:
        f = np.load(source, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{source}: cannot be read as an .npz archive ({e})") from e
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{source}: not an .npz archive (a single .npy array?)")
    with f:
        keys = list(f.files)
        try:
            arrays = {k: f[k] for k in keys if k in _NPZ_KEYS}
        except ValueError as e:  # numpy refuses object arrays without allow_pickle
            raise ValueError(
                f"{source}: holds object arrays; x_* must be uint8 and y_* integer arrays ({e})"
            ) from e
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    if missing:
        raise ValueError(
            f"{source}: missing key(s) {missing}; expected {list(_NPZ_KEYS)} (found {sorted(keys)})"
        )
    num_classes = validate_arrays(
        arrays, num_classes=num_classes, image_shape=image_shape, source=source
    )
    name = os.path.splitext(os.path.basename(source))[0]
    return _make_dataset(name, arrays, num_classes)


def save_npz(data: ImageDataset, path: str | os.PathLike, /) -> None:
    """Write the four arrays of ``data`` to a compressed ``.npz`` readable by :func:`load_npz`.

    Use it to take prepared CIFAR to a machine without network access or TensorFlow.

    Args:
      data: the data set.
      path: the output file.

    Example:
      >>> import os, tempfile
      >>> from jaxspec.data import save_npz, synthetic_cifar
      >>> path = os.path.join(tempfile.mkdtemp(), "a.npz")
      >>> save_npz(synthetic_cifar(num_train=20, num_test=10), path)
    """
    np.savez_compressed(
        path, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test
    )


def _read_split(source: Any) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    images = np.empty((n, *_IMAGE_SHAPE), np.uint8)
    labels = np.empty((n,), np.int32)
    chunk = 1024
    for start in range(0, n, chunk):
        keys = list(range(start, min(start + chunk, n)))
        try:
            records = source.__getitems__(keys)  # one batched ArrayRecord read
        except (AttributeError, TypeError):
            # tfds.testing.mock_data's data source has no working __getitems__.
            records = [source[k] for k in keys]
        for k, r in zip(keys, records):
            images[k] = r["image"]
            labels[k] = r["label"]
    return images, labels


def load_tfds(
    name: str,
    /,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> ImageDataset:
    """Load CIFAR-10 or CIFAR-100 with ``tfds.data_source`` (random access, no TensorFlow).

    The whole train and test splits are read into host memory (50,000 + 10,000 images, 180 MB).
    For CIFAR-100 the label is the fine (100-class) label.

    Preparing the data (``download=True`` the first time) downloads CIFAR and converts it to
    ArrayRecord files under ``data_dir``; that step may need TensorFlow
    (``pip install -e .[data]``).
    Reading prepared data does not.

    Args:
      name: ``"cifar10"`` or ``"cifar100"``.
      data_dir: tensorflow-datasets data directory (default ``~/tensorflow_datasets`` or
        ``$TFDS_DATA_DIR``).
      download: download and prepare the data if it is not in ``data_dir``.

    Returns:
      The :class:`ImageDataset`.

    Example:
      >>> import tensorflow_datasets as tfds
      >>> from jaxspec.data import load_tfds
      >>> with tfds.testing.mock_data(num_examples=8):
      ...     load_tfds("cifar10").x_train.shape
      (8, 32, 32, 3)
    """
    if name not in NUM_CLASSES:
        raise ValueError(
            f"unknown data set {name!r}; tensorflow-datasets names: {sorted(NUM_CLASSES)}"
        )
    import tensorflow_datasets as tfds  # the edge: only this loader needs it

    try:
        sources = tfds.data_source(
            name,
            split=["train", "test"],
            data_dir=None if data_dir is None else os.fspath(data_dir),
            download=download,
            # data_source needs random-access ArrayRecord files, not the default TFRecord.
            builder_kwargs={"file_format": "array_record"},
        )
    except Exception as e:  # tfds raises several types for "not prepared"
        raise RuntimeError(
            f"could not open {name} with tfds.data_source ({type(e).__name__}: {e}). "
            f"Prepare it once with jaxspec.data.load_tfds({name!r}, download=True) (may need "
            f"`pip install -e .[data]` for TensorFlow), or use a local .npz "
            f"(x_train, y_train, x_test, y_test) with load_npz / npz_path."
        ) from e
    x_train, y_train = _read_split(sources[0])
    x_test, y_test = _read_split(sources[1])
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    validate_arrays(arrays, num_classes=NUM_CLASSES[name], source=f"tfds:{name}")
    return _make_dataset(name, arrays, NUM_CLASSES[name])


def synthetic_cifar(
    *,
    num_train: int = 512,
    num_test: int = 256,
    num_classes: int = 10,
    noise: float = 40.0,
    seed: int = 0,
) -> ImageDataset:
    """A tiny CIFAR-shaped data set for tests and demos: learnable, generated in milliseconds.

    Each class has a smooth random prototype image (a 4x4 colour pattern upsampled to 32x32);
    an example is its class prototype plus Gaussian pixel noise of standard deviation ``noise``,
    clipped to ``uint8``. Labels cycle through the classes, so every class is represented.

    Args:
      num_train: number of training images.
      num_test: number of test images.
      num_classes: number of classes.
      noise: pixel noise standard deviation (0..255 scale); larger is harder.
      seed: NumPy seed; the same seed gives the same data.

    Returns:
      The :class:`ImageDataset` named ``"synthetic"``.

    Example:
      >>> from jaxspec.data import synthetic_cifar
      >>> d = synthetic_cifar(num_train=30, num_test=10, num_classes=3)
      >>> d.x_train.shape, d.x_train.dtype, d.y_train[:4].tolist()
      ((30, 32, 32, 3), dtype('uint8'), [0, 1, 2, 0])
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(30.0, 225.0, size=(num_classes, 4, 4, 3))
    prototypes = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = (np.arange(n) % num_classes).astype(np.int32)
        x = prototypes[labels] + rng.normal(0.0, noise, size=(n, *_IMAGE_SHAPE))
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), labels

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    return _make_dataset("synthetic", arrays, num_classes)


def subsample_indices(
    labels: np.ndarray, /, *, num_per_class: int, seed: int | None = None
) -> np.ndarray:
    """Indices of ``num_per_class`` examples of every class, in increasing order.

    With ``seed=None`` the first ``num_per_class`` of each class in data order are taken
    (reproducible without a seed); with a seed, a random subset of each class.

    Args:
      labels: ``(N,)`` integer labels.
      num_per_class: examples to keep per class present in ``labels``.
      seed: NumPy seed for a random choice; ``None`` for the first ones.

    Returns:
      Sorted ``int64`` indices into ``labels``.

    Raises:
      ValueError: if a class has fewer than ``num_per_class`` examples.

    Example:
      >>> import numpy as np
      >>> from jaxspec.data import subsample_indices
      >>> subsample_indices(np.array([0, 1, 0, 1, 0, 1]), num_per_class=2).tolist()
      [0, 1, 2, 3]
    """
    labels = np.asarray(labels)
    rng = None if seed is None else np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < num_per_class:
            raise ValueError(
                f"class {int(c)} has {idx.size} examples, fewer than num_per_class={num_per_class}"
            )
        if rng is not None:
            idx = rng.choice(idx, size=num_per_class, replace=False)
        chosen.append(idx[:num_per_class])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros((0,), np.int64)


def subsample(
    data: ImageDataset,
    /,
    *,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int | None = None,
) -> ImageDataset:
    """A class-balanced subset, for CPU presets; the normalisation statistics are kept.

    Keeping the full training split's mean and std means a model trained on the subset sees the
    same input scaling as one trained on the full set.

    Args:
      data: the data set.
      train_per_class: training examples per class (``None`` keeps the split whole).
      test_per_class: test examples per class (``None`` keeps the split whole).
      seed: ``None`` takes the first examples of each class, an int a seeded random choice.

    Returns:
      The smaller :class:`ImageDataset`.

    Example:
      >>> from jaxspec.data import subsample, synthetic_cifar
      >>> subsample(synthetic_cifar(num_train=100, num_test=50), train_per_class=3).x_train.shape
      (30, 32, 32, 3)
    """
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    if train_per_class is not None:
        i = subsample_indices(y_train, num_per_class=train_per_class, seed=seed)
        x_train, y_train = x_train[i], y_train[i]
    if test_per_class is not None:
        i = subsample_indices(y_test, num_per_class=test_per_class, seed=seed)
        x_test, y_test = x_test[i], y_test[i]
    return data._replace(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def load_dataset(
    name: str,
    /,
    *,
    data_dir: str | os.PathLike | None = None,
    npz_path: str | os.PathLike | None = None,
    download: bool = False,
    synthetic_size: tuple[int, int] = (512, 256),
    seed: int = 0,
) -> ImageDataset:
    """Load a data set by name: ``"cifar10"``, ``"cifar100"`` or ``"synthetic"``.

    Args:
      name: the data set; with ``npz_path`` it only fixes the number of classes.
      data_dir: tensorflow-datasets data directory.
      npz_path: read this local ``.npz`` instead of tensorflow-datasets.
      download: let tensorflow-datasets download and prepare missing data.
      synthetic_size: ``(num_train, num_test)`` for ``"synthetic"``.
      seed: seed of the synthetic data.

    Returns:
      The :class:`ImageDataset`.

    Example:
      >>> from jaxspec.data import load_dataset
      >>> load_dataset("synthetic", synthetic_size=(40, 20)).num_classes
      10
    """
    if name == "synthetic":
        if npz_path is not None:
            return load_npz(npz_path)
        return synthetic_cifar(num_train=synthetic_size[0], num_test=synthetic_size[1], seed=seed)
    if name not in NUM_CLASSES:
        raise ValueError(f"unknown data set {name!r}; choose from {[*NUM_CLASSES, 'synthetic']}")
    if npz_path is not None:
        return load_npz(npz_path, num_classes=NUM_CLASSES[name])
    return load_tfds(name, data_dir=data_dir, download=download)
