"""Tests of jaxspec.augmented: the fixed augmented set, and the curvature operator over it
(``transform=Augmentation(data)``) with each reduction."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxspec
from jaxspec import augment
from jaxspec import augmented as A
from jaxspec.data import normalize

pytestmark = pytest.mark.usefixtures("strict_promotion")

N, K, B, H = 10, 3, 4, 6  # 30 samples: 7 full batches of 4 and a tail of 2
MEAN, STD = np.array([120.0, 115.0, 100.0]), np.array([60.0, 61.0, 66.0])
# One compiled program instead of a dozen eagerly compiled ops (slow on XLA:CPU).
_augmented_batch = jax.jit(A.augmented_batch)


def loss_fn(params, batch):
    """A tiny classifier normalised with batch statistics (BatchNorm in batch mode): its Hessian
    depends on how the samples are grouped into batches, so batching errors show."""
    x = batch["image"].reshape(batch["image"].shape[0], -1)
    h = x @ params["w1"]
    h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-3)
    logits = jnp.tanh(h) @ params["w2"] + params["b"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=1))


def make_case(variants=None):
    """Raw images, labels, float32 parameters and the augmented set (also used by the worker)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, H, H, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=N).astype(np.int32)
    params = {"w1": (0.1 * rng.normal(size=(H * H * 3, 5))).astype(np.float32),
              "w2": rng.normal(size=(5, 4)).astype(np.float32),
              "b": (0.1 * rng.normal(size=4)).astype(np.float32)}
    params = jax.tree.map(jnp.asarray, params)
    data = A.augmented_data(images, labels, mean=MEAN, std=STD, num_per_image=K, seed=3,
                            variants=variants)
    return data, params


@pytest.fixture(scope="module")
def setup():
    data, params = make_case()
    return data.images, data.labels, params, data


def _ref_variant(img, index, p=augment.PADDING):
    """NumPy reference of one crop/flip variant: pad with raw 0, crop, then mirror."""
    dy, dx, flip = augment.variant_params(int(index))
    h, w = img.shape[:2]
    crop = np.pad(img, ((p, p), (p, p), (0, 0)))[dy:dy + h, dx:dx + w]
    return crop[:, ::-1] if flip else crop


def _all_samples(batched):
    w = np.asarray(batched.weights)
    parts = [np.asarray(batched.batches["sample"])[w != 0].reshape(-1)]
    if batched.tail is not None:
        parts.append(np.asarray(batched.tail["sample"]))
    return np.concatenate(parts)


def test_augmented_set_is_exactly_k_times_n(setup):
    images, labels, _, data = setup
    assert A.num_augmented(data) == K * N
    for shards in (1, 3):
        batched = A.augmented_batches(data, B, num_shards=shards)
        assert jaxspec.num_samples(batched) == K * N
        ids = _all_samples(batched)
        np.testing.assert_array_equal(np.sort(ids), np.arange(K * N))  # each sample once
        total = np.asarray(batched.weights).sum() + float(batched.tail_weight)
        assert total == pytest.approx(1.0)
    # The generated batch equals a NumPy reference built from the table, (image, copy) for all.
    batch = _augmented_batch(data, np.arange(K * N))
    pairs = [(s % N, data.variants[s % N, s // N]) for s in range(K * N)]
    assert sorted(pairs) == sorted((i, v) for i in range(N) for v in data.variants[i])
    ref = np.stack([_ref_variant(images[i], v) for i, v in pairs])
    np.testing.assert_allclose(batch["image"], normalize(ref, mean=MEAN, std=STD), rtol=1e-6)
    np.testing.assert_array_equal(batch["label"], labels[[i for i, _ in pairs]])
    assert batch["image"].dtype == jnp.float32


def test_variant_table_is_seeded_and_distinct(setup):
    images, labels, _, data = setup
    again = A.augmented_data(images, labels, mean=MEAN, std=STD, num_per_image=K, seed=3)
    other = A.augmented_data(images, labels, mean=MEAN, std=STD, num_per_image=K, seed=4)
    np.testing.assert_array_equal(data.variants, again.variants)
    assert A.variants_digest(data) == A.variants_digest(again) != A.variants_digest(other)
    assert data.variants.shape == (N, K) and data.variants.dtype == np.int32
    assert data.variants.min() >= 0 and data.variants.max() < augment.NUM_VARIANTS
    assert all(len(set(row)) == K for row in data.variants.tolist())  # distinct per image
    with pytest.raises(TypeError, match="uint8"):
        A.augmented_data(images.astype(np.float32), labels, mean=MEAN, std=STD,
                         num_per_image=1, seed=0)


def test_the_table_is_drawn_for_the_padding_the_crops_use(setup):
    """With padding 1 the pool is 18 variants (3 x 3 offsets, 2 flips): a table drawn from the
    162 of padding 4 decodes to offsets up to 26, which the crop clips to 2 (most crops at one
    edge), so it is refused; drawn for padding 1, every row holds distinct in-range variants."""
    images, labels, _, data = setup
    with pytest.raises(ValueError, match="padding=1"):
        A.Augmentation(data, padding=1)
    small = A.augmented_data(images, labels, mean=MEAN, std=STD, num_per_image=18, seed=0,
                             padding=1)
    assert sorted(small.variants[0].tolist()) == list(range(18))  # the whole pool, once
    A.Augmentation(small, padding=1)
    with pytest.raises(ValueError, match=r"\[1, 18\]"):
        A.augmented_data(images, labels, mean=MEAN, std=STD, num_per_image=19, seed=0,
                         padding=1)


def test_the_162_variants_are_distinct():
    img = np.random.default_rng(1).integers(1, 256, size=(1, 8, 8, 3), dtype=np.uint8)
    table = np.arange(augment.NUM_VARIANTS, dtype=np.int32)[None, :]
    data = A.augmented_data(img, np.zeros(1, np.int32), mean=0.0, std=1.0, variants=table)
    out = np.asarray(_augmented_batch(data, np.arange(augment.NUM_VARIANTS))["image"])
    assert len({x.tobytes() for x in out}) == augment.NUM_VARIANTS == 162
    decoded = {augment.variant_params(i) for i in range(augment.NUM_VARIANTS)}
    assert len(decoded) == 162
    np.testing.assert_array_equal(out[augment.IDENTITY_VARIANT], img[0])


def _vec(dim, seed):
    # NumPy, not jax.random: XLA:CPU compiles every threefry call for seconds.
    return jnp.asarray(np.random.default_rng(seed).normal(size=dim), jnp.float32)


def operator(params, data, reduce, num_shards=1):
    """The curvature operator over the augmented set: batches of sample ids plus the transform."""
    return jaxspec.curvature_operator(loss_fn, params,
                                      A.augmented_batches(data, B, num_shards=num_shards),
                                      reduce=reduce, transform=A.Augmentation(data))


@pytest.fixture(scope="module")
def host_hv(setup):
    """The host-reduced augmented operator and its value at a fixed vector (shared)."""
    _, _, params, data = setup
    host = operator(params, data, "host")
    v = _vec(ravel_pytree(params)[0].shape[0], 0)
    return host, v, np.asarray(host.mv(v))


def test_hvp_repeatable_and_reductions_agree(setup, host_hv):
    _, _, params, data = setup
    host, v, h1 = host_hv
    apply = jax.jit(lambda op, x: op.mv(x))
    h2 = np.asarray(host.mv(v))
    np.testing.assert_array_equal(h1, h2)  # same variants in every HVP: the same matrix
    assert h1.dtype == np.float32
    for reduce in ("scan", "mesh"):
        op = operator(params, data, reduce)
        c1, c2 = np.asarray(apply(op, v)), np.asarray(apply(op, v))
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_allclose(h1, c1, rtol=2e-4, atol=1e-5 * np.abs(c1).max(),
                                   err_msg=reduce)
    w = _vec(v.shape[0], 1)
    hw = np.asarray(host.mv(w))
    # Symmetric, as a Hessian must be: w^T H v = v^T H w.
    assert float(np.dot(w, h1)) == pytest.approx(float(np.dot(v, hw)), rel=1e-4)


def test_k1_identity_equals_empirical_hessian(setup):
    images, labels, params, _ = setup
    data = A.augmented_data(images, labels, mean=MEAN, std=STD,
                            variants=A.identity_variants(N))
    emp = {"image": normalize(images, mean=MEAN, std=STD), "label": labels}
    emp_op = jaxspec.curvature_operator(loss_fn, params, jaxspec.batch_dataset(emp, B),
                                        reduce="scan")
    aug_host = operator(params, data, "host")
    apply = jax.jit(lambda op, x: op.mv(x))
    for seed in range(2):
        v = _vec(ravel_pytree(params)[0].shape[0], seed)
        ref = np.asarray(apply(emp_op, v))
        np.testing.assert_allclose(aug_host.mv(v), ref, rtol=1e-4,
                                   atol=1e-6 * np.abs(ref).max())


_SHARDED = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=3"
    sys.path.insert(0, sys.argv[1])
    import jax, jax.numpy as jnp, numpy as np
    import test_augmented as t
    from jaxspec.parallel import MeshReduce, data_mesh
    assert jax.device_count() == 3
    data, params = t.make_case(np.load(sys.argv[4]))
    mesh = data_mesh()
    v = jnp.asarray(np.load(sys.argv[2]))
    ops = [t.operator(params, data, MeshReduce(mesh), num_shards=3),  # padded by batch_dataset
           t.operator(params, data, mesh)]  # padded by MeshReduce
    out = jax.jit(lambda ops, x: [op.mv(x) for op in ops])(ops, v)
    np.save(sys.argv[3], np.stack([np.asarray(o) for o in out]))
""")


def test_mesh_on_3_devices_matches_single_device(setup, host_hv, tmp_path):
    # 30 samples in batches of 4 over 3 devices: 7 full batches padded to 9, the tail of 2 on
    # the last device.
    _, v, ref = host_hv
    np.save(tmp_path / "v.npy", np.asarray(v))
    np.save(tmp_path / "table.npy", setup[3].variants)  # no threefry compile in the worker
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)  # this checkout's jaxspec, not an installed one
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", _SHARDED, here, str(tmp_path / "v.npy"),
                          str(tmp_path / "out.npy"), str(tmp_path / "table.npy")],
                         capture_output=True, text=True,
                         timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    for got in np.load(tmp_path / "out.npy"):
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-5 * np.abs(ref).max())
