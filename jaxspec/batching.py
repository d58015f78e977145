"""A data set as equal batches plus a ragged tail, and exact data-set means over it.

Every curvature operator (:mod:`jaxspec.operator`) reads its data as a :class:`Batched`: the
batches stacked along a leading axis, each weighted by its size over N, so that a mean over the
batches is the mean over all N samples exactly, however N splits.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.checks import check_labels

__all__ = ["Batched", "batch_dataset", "dataset_loss", "dataset_mean", "num_samples"]


class Batched(NamedTuple):
    """A data set cut into equal batches stacked along a leading axis, plus a ragged tail.

    Attributes:
      batches: pytree whose leaves have shape ``(num_batches, batch_size, ...)``.
      weights: ``(num_batches,)`` weight of each batch in the data-set mean: ``batch_size / N``,
        or 0 for a padding batch (added so the batches split evenly over devices).
      tail: pytree of the last, smaller batch (leaves ``(r, ...)``, ``0 < r < batch_size``), or
        ``None`` when the batch size divides N.
      tail_weight: ``r / N`` (0 when there is no tail).

    The data-set loss is ``sum_b weights[b] * loss(batches[b]) + tail_weight * loss(tail)``, which
    equals the mean over all N samples exactly, including when the last batch is smaller.

    Example:
      >>> import numpy as np
      >>> from jaxspec import batch_dataset
      >>> b = batch_dataset({"x": np.arange(10.0)}, 4)
      >>> b.batches["x"].shape, b.tail["x"].tolist(), float(b.tail_weight)
      ((2, 4), [8.0, 9.0], 0.2)
      >>> round(float(b.weights.sum() + b.tail_weight), 6)
      1.0
    """

    batches: Any
    weights: jax.Array
    tail: Any
    tail_weight: jax.Array


def batch_dataset(data: Any, batch_size: int, /, *, num_shards: int = 1,
                  num_classes: int | None = None, label_key: str = "label") -> Batched:
    """Cuts a data set into stacked batches: the data of a :func:`jaxspec.curvature_operator`.

    Samples keep their order: batch ``b`` holds samples ``b * batch_size ...``. When the number
    of full batches is not a multiple of ``num_shards`` (the number of devices the batches will be
    split over), zero-weight copies of the first batch are appended, so no sample is dropped or
    counted twice. Arrays stay where they are (NumPy arrays stay on the host).

    Args:
      data: pytree of arrays sharing a leading sample axis of length N.
      batch_size: samples per batch (BatchNorm in batch mode takes its statistics over these).
      num_shards: make the number of stacked batches divisible by this.
      num_classes: with a class count, ``data[label_key]`` is checked to lie in
        ``[0, num_classes)`` (:func:`jaxspec.checks.check_labels`): an out-of-range label would
        make the loss NaN, or silently pick another class.
      label_key: where ``data`` holds the labels.

    Returns:
      A :class:`Batched`.

    Example:
      >>> import numpy as np
      >>> from jaxspec import batch_dataset
      >>> b = batch_dataset({"x": np.zeros((10, 2))}, 4)
      >>> b.batches["x"].shape, b.tail["x"].shape, [float(w) for w in b.weights]
      ((2, 4, 2), (2, 2), [0.4, 0.4])
      >>> batch_dataset({"x": np.zeros(3), "label": np.array([0, 2, 3])}, 2, num_classes=3)
      Traceback (most recent call last):
      ...
      ValueError: ...
    """
    if num_classes is not None:
        if not isinstance(data, dict) or label_key not in data:
            raise ValueError(f"batch_dataset: num_classes given, but data has no {label_key!r}")
        check_labels(np.asarray(data[label_key]), num_classes, name=f"data[{label_key!r}]")
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("batch_dataset: `data` has no arrays")
    shapes = [np.shape(x) for x in leaves]
    if any(not shape for shape in shapes) or len({shape[0] for shape in shapes}) > 1:
        raise ValueError("batch_dataset: every array in `data` needs the same leading (sample) "
                         f"axis; got shapes {shapes}")
    n = int(shapes[0][0])
    if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
        raise ValueError(f"batch_dataset: batch_size must be a positive int, got {batch_size!r}")
    if num_shards < 1:
        raise ValueError(f"batch_dataset: num_shards must be >= 1, got {num_shards}")
    if n == 0:
        raise ValueError("batch_dataset: the data set is empty")
    num_full, rest = divmod(n, batch_size)
    num_pad = (-num_full) % num_shards if num_full else 0
    take = num_full * batch_size

    def stack(x):
        full = x[:take].reshape((num_full, batch_size) + tuple(np.shape(x)[1:]))
        if num_pad:
            lib = np if isinstance(x, np.ndarray) else jnp
            full = lib.concatenate([full, lib.repeat(full[:1], num_pad, axis=0)], axis=0)
        return full

    # float64 on the host: jnp.asarray narrows it to float32 unless x64 is on, so a float64
    # Hessian is not rounded through a float32 weight.
    weights = np.concatenate([np.full(num_full, batch_size / n), np.zeros(num_pad)])
    tail = jax.tree.map(lambda x: x[take:], data) if rest else None
    return Batched(
        batches=jax.tree.map(stack, data) if num_full else None,
        weights=weights,
        tail=tail,
        tail_weight=np.float64(rest / n),
    )


def num_samples(batched: Batched, /) -> int:
    """Number N of real samples in a :class:`Batched` (padding batches not counted).

    Example:
      >>> import numpy as np
      >>> from jaxspec import batch_dataset, num_samples
      >>> num_samples(batch_dataset(np.zeros((10, 3)), 4, num_shards=4))
      10
    """
    n = 0
    if batched.batches is not None:
        size = int(np.shape(jax.tree.leaves(batched.batches)[0])[1])
        n += size * int(np.count_nonzero(np.asarray(batched.weights)))
    if batched.tail is not None:
        n += int(np.shape(jax.tree.leaves(batched.tail)[0])[0])
    return n


def dataset_mean(per_batch: Callable[[Any], Any], batched: Batched, like: Any, /) -> Any:
    """The data-set mean of a per-batch quantity: ``sum_b w_b per_batch(batch_b)``.

    ``per_batch`` maps one batch to a pytree shaped like ``like`` that is the mean over that
    batch's samples (a loss, a gradient, an HVP); the batch weights ``w_b`` (size over N) make
    the sum the mean over all N samples, exactly, with a ragged tail. The stacked batches are
    reduced with ``lax.scan``, so under ``jax.jit`` it is one XLA program.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import batch_dataset, dataset_mean
      >>> b = batch_dataset({"x": jnp.arange(10.0)}, 4)  # batches of 4, 4 and a tail of 2
      >>> float(dataset_mean(lambda batch: batch["x"].mean(), b, jnp.zeros(())))
      4.5
    """
    total = jax.tree.map(jnp.zeros_like, like)
    if batched.batches is not None:

        def body(acc, xs):
            batch, w = xs
            out = per_batch(batch)
            return jax.tree.map(lambda a, o: a + w.astype(o.dtype) * o, acc, out), None

        total, _ = jax.lax.scan(body, total, (batched.batches, jnp.asarray(batched.weights)))
    if batched.tail is not None:
        out = per_batch(batched.tail)
        tw = jnp.asarray(batched.tail_weight)
        total = jax.tree.map(lambda a, o: a + tw.astype(o.dtype) * o, total, out)
    return total


def dataset_loss(loss_fn: Callable[[Any, Any], jax.Array], params: Any, batched: Batched,
                 /) -> jax.Array:
    """The data-set mean loss, reduced like :func:`dataset_mean` (exact with a ragged tail).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import batch_dataset, dataset_loss
      >>> float(dataset_loss(lambda p, x: jnp.mean(x) * p, 1.0, batch_dataset(jnp.arange(5.0), 2)))
      2.0
    """
    like = jnp.zeros((), jnp.result_type(*jax.tree.leaves(params)))
    return dataset_mean(lambda b: loss_fn(params, b), batched, like)


