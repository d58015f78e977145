"""Byte-level text of Python's documentation: windows, targets and the held-out split."""

import numpy as np
import pytest

from jaxspec.text import VOCAB_SIZE, byte_windows, pydoc_dataset, pydoc_topics, token_split


def test_windows_and_targets():
    text = bytes(range(50))
    x, y = byte_windows(text, 7)
    assert x.shape == y.shape == ((50 - 1) // 7, 7)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])        # the next byte in a window
    np.testing.assert_array_equal(y[:-1, -1], x[1:, 0])        # windows share their edge byte
    np.testing.assert_array_equal(x.ravel(), np.arange(x.size))
    with pytest.raises(ValueError, match="no window"):
        byte_windows(b"abc", 3)
    with pytest.raises(ValueError, match="seq_len"):
        byte_windows(b"abc", 0)


def test_pydoc_split_holds_out_whole_topics():
    d = pydoc_dataset(seq_len=32, test_fraction=0.1)
    assert d.num_classes == VOCAB_SIZE and d.mean is None and d.std is None
    total = sum(len(t.encode()) for t in pydoc_topics())
    n_train, n_test = d.x_train.size, d.x_test.size
    assert 0.05 < n_test / (n_train + n_test) <= 0.1 and n_train + n_test > 0.95 * total
    # The windows of a split, concatenated, are its text: every topic is in exactly one of them.
    train_text, test_text = bytes(d.x_train.ravel()), bytes(d.x_test.ravel())
    held = 0
    for topic in pydoc_topics():
        head = topic.encode()[:300]
        assert (head in train_text) != (head in test_text)
        held += head in test_text
    assert held >= 3
    batch = token_split(d, "test")
    assert batch["tokens"].shape == batch["label"].shape == d.x_test.shape
    with pytest.raises(ValueError, match="test_fraction"):
        pydoc_dataset(test_fraction=1.0)
