"""Byte-level text for language models: the English text of Python's documentation, offline.

The standard library ships the text of the reference manual's topics in ``pydoc_data.topics``
(the pages ``help("if")`` shows: about 80 topics, 0.47 MB of UTF-8), so every machine with Python
has it. :func:`pydoc_dataset` encodes it as bytes (vocabulary 256) and cuts it into windows of
``seq_len + 1`` bytes, consecutive windows sharing one byte: the input is a window's first
``seq_len`` bytes, the target its last ``seq_len`` (the next byte at each position).

**Held-out split by topic**: topics are taken in the order of their names and one is held out
whenever the held-out text, that topic included, stays within ``test_fraction`` of the text so
far; so at most that fraction of the bytes is held out, in whole topics: no test window
overlaps a training window and the test text is topics the model never saw.

The result is a :class:`jaxspec.data.ImageDataset` with token windows for images: ``x`` holds
``uint8`` tokens ``(N, seq_len)``, ``y`` the ``int32`` next tokens ``(N, seq_len)``,
``num_classes`` is 256 and ``mean``/``std`` are ``None`` (tokens are not normalised), so the
training loop (:mod:`train`) runs on it unchanged. :func:`token_split` gives the batch dict
``{"tokens", "label"}`` that :func:`jaxspec.models.hessian_loss` reads with
``input_key="tokens"``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxspec.data import ImageDataset

__all__ = ["VOCAB_SIZE", "byte_windows", "pydoc_dataset", "pydoc_topics", "token_split"]

#: Byte-level vocabulary.
VOCAB_SIZE = 256


def pydoc_topics() -> list[str]:
    """The texts of ``pydoc_data.topics``, sorted by topic name.

    Example:
      >>> topics = pydoc_topics()
      >>> len(topics) > 50 and all(isinstance(t, str) for t in topics)
      True
    """
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def byte_windows(text: bytes | np.ndarray, seq_len: int, /) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-byte targets of the windows of ``seq_len + 1`` bytes, stride ``seq_len``.

    Args:
      text: the bytes (or a ``uint8`` array).
      seq_len: tokens per window.

    Returns:
      ``(x, y)``: ``uint8`` ``(N, seq_len)`` and ``int32`` ``(N, seq_len)`` with
      ``y[i, t] = x[i, t + 1]`` inside a window and ``N = (len(text) - 1) // seq_len``; the
      bytes after the last whole window are dropped.

    Raises:
      ValueError: ``seq_len < 1``, or a text too short for one window.

    Example:
      >>> x, y = byte_windows(b"abcdefg", 3)
      >>> x.tolist(), y.tolist()   # "abc" -> "bcd", "def" -> "efg"
      ([[97, 98, 99], [100, 101, 102]], [[98, 99, 100], [101, 102, 103]])
    """
    if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
    data = np.frombuffer(text, np.uint8) if isinstance(text, bytes) else np.asarray(text, np.uint8)
    n = (data.size - 1) // seq_len
    if n < 1:
        raise ValueError(f"a text of {data.size} bytes holds no window of {seq_len + 1} bytes")
    starts = np.arange(n)[:, None] * seq_len
    x = data[starts + np.arange(seq_len)]
    y = data[starts + np.arange(1, seq_len + 1)].astype(np.int32)
    return x, y


def _windows(texts: Sequence[str], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    # Topics are joined with a blank line, as a reader would see consecutive pages.
    return byte_windows("\n\n".join(texts).encode("utf-8"), seq_len)


def pydoc_dataset(*, seq_len: int = 128, test_fraction: float = 0.1) -> ImageDataset:
    """Python's documentation as byte windows, with whole topics held out (module docstring).

    Args:
      seq_len: tokens per window (the model's context).
      test_fraction: about this fraction of the bytes is held out, in whole topics.

    Returns:
      An :class:`~jaxspec.data.ImageDataset` named ``"pydoc"`` of token windows.

    Example:
      >>> d = pydoc_dataset(seq_len=64)
      >>> d.x_train.shape[1], d.x_train.dtype, d.y_test.dtype, d.num_classes, d.mean
      (64, dtype('uint8'), dtype('int32'), 256, None)
      >>> 0.05 < len(d.x_test) / (len(d.x_train) + len(d.x_test)) < 0.15
      True
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    train, test = [], []
    seen = held = 0
    for topic in pydoc_topics():
        seen += len(topic)
        if held + len(topic) <= test_fraction * seen:
            test.append(topic)
            held += len(topic)
        else:
            train.append(topic)
    x_train, y_train = _windows(train, seq_len)
    x_test, y_test = _windows(test, seq_len)
    return ImageDataset("pydoc", x_train, y_train, x_test, y_test, VOCAB_SIZE, None, None)


def token_split(data: ImageDataset, /, split: str = "train") -> dict[str, np.ndarray]:
    """One split of a text data set as the batch dict ``{"tokens", "label"}`` (host memory).

    The input of :func:`jaxspec.models.hessian_loss` with ``input_key="tokens"``.

    Example:
      >>> x, y = byte_windows(b"abcdefg", 3)
      >>> d = ImageDataset("t", x, y, x[:1], y[:1], VOCAB_SIZE, None, None)
      >>> b = token_split(d, "test")
      >>> b["tokens"].tolist(), b["label"].dtype
      ([[97, 98, 99]], dtype('int32'))
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    return {"tokens": np.asarray(x, np.int32), "label": np.asarray(y, np.int32)}
