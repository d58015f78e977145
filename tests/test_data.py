"""Tests of jaxspec.data: statistics, normalisation, subsampling, the npz and tfds loaders."""

import os

import numpy as np
import pytest

from jaxspec import data as D


def _arrays(n=20, m=10, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(n) % classes,
        "x_test": rng.integers(0, 256, size=(m, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(m) % classes,
    }


def _save(tmp_path, name="d.npz", **arrays):
    path = os.path.join(tmp_path, name)
    np.savez(path, **arrays)
    return path


def test_channel_stats_match_numpy():
    x = _arrays()["x_train"]
    mean, std = D.channel_stats(x)
    assert mean.dtype == np.float32 and std.dtype == np.float32
    np.testing.assert_allclose(mean, x.reshape(-1, 3).astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, x.reshape(-1, 3).astype(np.float64).std(0), rtol=1e-5)


def test_normalize_numpy_and_jax():
    import jax.numpy as jnp

    x = _arrays()["x_train"][:2]
    mean, std = np.array([120.0, 110.0, 100.0]), np.array([60.0, 50.0, 40.0])
    out = D.normalize(x, mean=mean, std=std)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (x.astype(np.float64) - mean) / std, rtol=1e-5, atol=1e-5)
    out_j = D.normalize(jnp.asarray(x), mean=jnp.asarray(mean), std=std)
    assert out_j.dtype == jnp.float32  # float32 even with x64 enabled
    np.testing.assert_allclose(out_j, out, rtol=1e-6)


def test_synthetic_is_deterministic_and_balanced():
    a = D.synthetic_cifar(num_train=50, num_test=20, seed=3)
    b = D.synthetic_cifar(num_train=50, num_test=20, seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int32
    assert np.bincount(a.y_train).tolist() == [5] * 10
    assert a.mean.shape == (3,) and a.num_classes == 10


def test_normalized_split_is_the_batch_format():
    d = D.synthetic_cifar(num_train=30, num_test=10)
    batch = D.normalized_split(d, "train")
    assert batch["image"].shape == (30, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    # Normalised with the training statistics: about zero mean, unit variance per channel.
    np.testing.assert_allclose(batch["image"].mean((0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(batch["image"].std((0, 1, 2)), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="split"):
        D.normalized_split(d, "val")


def test_subsample_first_and_random():
    labels = np.array([0, 1, 0, 1, 0, 1, 2, 2, 2])
    assert D.subsample_indices(labels, num_per_class=2).tolist() == [0, 1, 2, 3, 6, 7]
    r1 = D.subsample_indices(labels, num_per_class=2, seed=1)
    assert r1.tolist() == D.subsample_indices(labels, num_per_class=2, seed=1).tolist()
    assert np.bincount(labels[r1]).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="fewer than num_per_class"):
        D.subsample_indices(labels, num_per_class=4)
    d = D.synthetic_cifar(num_train=100, num_test=50)
    s = D.subsample(d, train_per_class=3, test_per_class=2)
    assert s.x_train.shape[0] == 30 and s.x_test.shape[0] == 20
    np.testing.assert_array_equal(s.mean, d.mean)  # statistics of the full split are kept


def test_npz_roundtrip(tmp_path):
    d = D.synthetic_cifar(num_train=20, num_test=10)
    path = os.path.join(tmp_path, "s.npz")
    D.save_npz(d, path)
    e = D.load_npz(path)
    np.testing.assert_array_equal(e.x_train, d.x_train)
    np.testing.assert_array_equal(e.y_test, d.y_test)
    assert e.num_classes == 10 and e.y_train.dtype == np.int32
    # int64 labels and extra arrays (like the class names of a real file) are accepted.
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"].astype(np.int64)
    path = _save(tmp_path, y_names=np.array(["a", "b"]), **arrays)
    assert D.load_npz(path, num_classes=10).num_classes == 10


@pytest.mark.parametrize(
    "change, message",
    [
        ({"x_test": None}, r"missing key\(s\) \['x_test'\]"),
        ({"x_train": np.zeros((4, 3, 32, 32), np.uint8)}, "looks like NCHW"),
        ({"x_train": np.zeros((4, 28, 28, 3), np.uint8)}, r"shape \(N, 32, 32, 3\)"),
        ({"x_train": np.zeros((4, 32, 32), np.uint8)}, "must be 4-D"),
        ({"x_train": np.zeros((20, 32, 32, 3), np.float32)}, "must be uint8"),
        ({"y_train": np.arange(19)}, "one label per image"),
        ({"y_train": np.zeros((20, 1), np.int64)}, "one label per image"),
        ({"y_train": np.zeros(20, np.float32)}, "integer class indices"),
        ({"y_train": np.full(20, -1)}, "negative label"),
        ({"y_test": np.full(10, 10)}, "out of range for num_classes=10"),
        (
            {"x_train": np.zeros((0, 32, 32, 3), np.uint8), "y_train": np.zeros(0, np.int64)},
            "is empty",
        ),
    ],
)
def test_npz_rejects_malformed_files(tmp_path, change, message):
    arrays = {**_arrays(), **change}
    path = _save(tmp_path, **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(ValueError, match=message):
        D.load_npz(path, num_classes=10)


def test_npz_rejects_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        D.load_npz(os.path.join(tmp_path, "nope.npz"))
    bad = os.path.join(tmp_path, "bad.npz")
    with open(bad, "w") as f:
        f.write("not an archive")
    with pytest.raises(ValueError, match="cannot be read as an .npz"):
        D.load_npz(bad)
    npy = os.path.join(tmp_path, "a.npy")
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz archive"):
        D.load_npz(npy)
    objects = np.array([None] * 20, dtype=object)
    obj = _save(tmp_path, "obj.npz", **{**_arrays(), "y_train": objects})
    with pytest.raises(ValueError, match="object arrays"):
        D.load_npz(obj)


def test_tfds_path_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        c10 = D.load_tfds("cifar10")
        c100 = D.load_dataset("cifar100")
    assert c10.x_train.shape == (12, 32, 32, 3) and c10.x_train.dtype == np.uint8
    assert c10.y_train.dtype == np.int32 and c10.num_classes == 10
    assert c100.num_classes == 100 and c100.x_test.shape == (12, 32, 32, 3)
    assert c100.y_train.max() < 100
    with pytest.raises(ValueError, match="unknown data set"):
        D.load_tfds("mnist")


def test_load_dataset_dispatch(tmp_path):
    assert D.load_dataset("synthetic", synthetic_size=(20, 10)).x_test.shape[0] == 10
    path = _save(tmp_path, **_arrays(classes=3))
    # A named data set read from a local file takes its class count from the name.
    assert D.load_dataset("cifar100", npz_path=path).num_classes == 100
    with pytest.raises(ValueError, match="unknown data set"):
        D.load_dataset("imagenet")
