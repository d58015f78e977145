"""jaxspec.checks: labels out of range, and operators that are not deterministic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec import assert_symmetric, symmetry_error
from jaxspec.checks import check_labels


def test_check_labels_names_values_indices_and_range():
    labels = np.array([0, 10, 3, -1, 9, 10])
    with pytest.raises(ValueError) as info:
        check_labels(labels, 10)
    msg = str(info.value)
    assert "[0, 10)" in msg and "-1" in msg and "10" in msg
    assert "1, 3, 5" in msg  # the offending indices
    assert "3 of 6" in msg
    check_labels(np.arange(10), 10)
    check_labels(jnp.arange(10, dtype=jnp.int32), 10)  # a concrete device array is fine too
    with pytest.raises(ValueError, match="integer"):
        check_labels(np.array([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match=r"index \(1, 0\)"):  # stacked batches: (batch, row)
        check_labels(np.array([[0, 1], [2, 1]]), 2)
    with pytest.raises(TypeError, match="concrete"):
        jax.jit(lambda y: check_labels(y, 2))(jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="y_test"):
        check_labels(np.array([5]), 3, name="y_test")


def test_many_bad_labels_are_summarised():
    labels = np.full(10_000, 7)
    with pytest.raises(ValueError) as info:
        check_labels(labels, 5)
    msg = str(info.value)
    assert "10000 of 10000" in msg and len(msg) < 600


def _stochastic(A, scale):
    rng = np.random.default_rng(0)  # a fresh draw on every call, as dropout left on

    def matvec(v):
        Av = A @ np.asarray(v)
        noise = rng.standard_normal(Av.shape)
        return jnp.asarray(Av + scale * np.linalg.norm(Av) / np.sqrt(Av.size) * noise, v.dtype)

    return matvec


def test_slightly_stochastic_operator_is_reported():
    x = np.random.default_rng(1).standard_normal((30, 30))
    A = x + x.T
    matvec = _stochastic(A, 1e-4)
    # The symmetry error alone is below the tolerance: the probe would have passed.
    report = symmetry_error(matvec, jax.random.key(1), 30)
    assert report.relative_error < 1e-3
    assert report.repeat_error > 1e-5
    with pytest.raises(ValueError, match="not deterministic"):
        assert_symmetric(matvec, jax.random.key(1), 30)
    # A deterministic symmetric operator passes and reports no difference between repeats.
    ok = assert_symmetric(lambda v: jnp.asarray(A @ np.asarray(v), v.dtype), jax.random.key(1), 30)
    assert ok.repeat_error == 0.0


@pytest.mark.parametrize("scale", [1e-21, 1e21])
def test_the_probe_sees_through_the_scale_of_a_float32_operator(scale):
    """The probe's norms are scale-safe (jaxspec.norms): with plain ones the float32 norms of
    the products underflowed to 0 at 1e-21 and overflowed at 1e21, and the relative errors,
    0 / 0 and x / inf, passed a non-symmetric operator and a changing one."""
    B = jax.random.normal(jax.random.key(0), (30, 30), jnp.float32) * np.float32(scale)
    with pytest.raises(ValueError, match="not symmetric"):
        assert_symmetric(lambda v: B @ v, jax.random.key(1), 30)
    calls = iter(range(100))
    with pytest.raises(ValueError, match="not deterministic"):
        assert_symmetric(lambda v: (1.0 + 1e-3 * next(calls)) * ((B + B.T) @ v),
                         jax.random.key(1), 30)
    assert assert_symmetric(lambda v: (B + B.T) @ v, jax.random.key(1), 30).relative_error < 1e-6
