"""Tests of jaxspec.augment: shapes, flips, crops inside the padded image, determinism, variants."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec import augment
from jaxspec.data import normalize

B = 6


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.integers(1, 256, size=(B, 32, 32, 3), dtype=np.uint8))


def _padded_np(x, p=augment.PADDING):
    return np.pad(np.asarray(x), ((0, 0), (p, p), (p, p), (0, 0)))


def test_constants():
    assert augment.NUM_VARIANTS == 162
    assert augment.variant_params(augment.IDENTITY_VARIANT) == (4, 4, False)


def test_variant_params_is_a_bijection():
    triples = {augment.variant_params(i) for i in range(augment.NUM_VARIANTS)}
    expected = set(itertools.product(range(9), range(9), (False, True)))
    assert triples == expected
    # Traceable and equal to the Python decoding.
    decoded = jax.jit(augment.variant_params)(jnp.arange(162, dtype=jnp.int32))
    dy, dx, flip = map(np.asarray, decoded)
    assert [(int(a), int(b), bool(c)) for a, b, c in zip(dy, dx, flip)] == [
        augment.variant_params(i) for i in range(162)
    ]


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.float32])
def test_shape_and_dtype(images, dtype):
    x = images.astype(dtype)
    out = augment.random_crop_flip(jax.random.key(1), x)
    assert out.shape == x.shape and out.dtype == dtype
    out = augment.apply_variants(x, jnp.arange(B, dtype=jnp.int32))
    assert out.shape == x.shape and out.dtype == dtype


def test_flip_twice_is_identity(images):
    flip = jnp.array([True, False, True, True, False, True])
    once = augment.flip_horizontal(images, flip)
    assert not np.array_equal(once, images)
    np.testing.assert_array_equal(augment.flip_horizontal(once, flip), images)


def test_identity_variant_returns_the_image(images):
    idx = jnp.full((B,), augment.IDENTITY_VARIANT, jnp.int32)
    np.testing.assert_array_equal(augment.apply_variants(images, idx), images)


def test_variants_match_padded_windows_and_are_distinct(images):
    x = images[:1]
    all_v = jax.jit(jax.vmap(lambda i: augment.apply_variants(x, i[None])[0]))(
        jnp.arange(162, dtype=jnp.int32)
    )
    padded = _padded_np(x)[0]
    for i in range(162):
        dy, dx, flip = augment.variant_params(i)
        window = padded[dy : dy + 32, dx : dx + 32]
        np.testing.assert_array_equal(all_v[i], window[:, ::-1] if flip else window)
    flat = np.asarray(all_v).reshape(162, -1)
    assert len({row.tobytes() for row in flat}) == 162


def test_random_crops_lie_inside_the_padded_image(images):
    out = np.asarray(augment.random_crop_flip(jax.random.key(2), images))
    padded = _padded_np(images)
    for b in range(B):
        candidates = []
        for i in range(162):
            dy, dx, flip = augment.variant_params(i)
            w = padded[b, dy : dy + 32, dx : dx + 32]
            candidates.append(w[:, ::-1] if flip else w)
        assert any(np.array_equal(out[b], c) for c in candidates)


def test_same_key_same_batch_different_key_different(images):
    a = augment.random_crop_flip(jax.random.key(3), images)
    b = augment.random_crop_flip(jax.random.key(3), images)
    c = augment.random_crop_flip(jax.random.key(4), images)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_params_cover_offsets_and_flips():
    # The draw is one uniform variant index: all offsets, and flips about half the time.
    idx = jax.random.randint(jax.random.key(5), (4000,), 0, 162, dtype=jnp.int32)
    dy, dx, flip = augment.variant_params(np.asarray(idx))
    assert set(dy.tolist()) == set(range(9)) and set(dx.tolist()) == set(range(9))
    assert 0.45 < flip.mean() < 0.55


def test_fill_in_normalised_space_matches_torchvision_order(images):
    # torchvision pads raw pixels with 0 and then normalises; on normalised images the same result
    # needs fill = -mean / std.
    mean = np.array([125.3, 123.0, 113.9], np.float32)
    std = np.array([63.0, 62.1, 66.7], np.float32)
    idx = jnp.array([0, 17, 80, 100, 160, 161], jnp.int32)
    torch_order = normalize(augment.apply_variants(images, idx), mean=mean, std=std)
    ours = augment.apply_variants(
        normalize(images, mean=mean, std=std), idx, fill=jnp.asarray(-mean / std)
    )
    np.testing.assert_allclose(ours, torch_order, rtol=1e-6, atol=1e-6)
    zero_fill = augment.apply_variants(normalize(images, mean=mean, std=std), idx)
    assert not np.allclose(zero_fill, torch_order)


def test_vmap_over_variant_tables(images):
    table = augment.choose_variants(jax.random.key(6), B, num_per_image=5)
    assert table.shape == (B, 5) and table.dtype == jnp.int32
    assert all(len(set(row.tolist())) == 5 for row in np.asarray(table))
    out = jax.jit(jax.vmap(lambda col: augment.apply_variants(images, col), in_axes=1))(table)
    assert out.shape == (5, B, 32, 32, 3)
    np.testing.assert_array_equal(out[2], augment.apply_variants(images, table[:, 2]))
