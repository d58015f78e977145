"""The curvature operator: every reduction, with and without a batch transform, against a dense
jax.hessian reference; the operator's protocol and its bad-input errors."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import jaxspec
from hessians import dense_hessian, make_data, mlp_loss, mlp_params
from jaxspec import batch_dataset, curvature_operator
from jaxspec.augmented import Augmentation, augmented_batches, augmented_data
from jaxspec.parallel import MeshReduce, data_mesh
from jaxspec.reduction import HostReduce, ScanReduce, resolve_reduce

pytestmark = pytest.mark.usefixtures("strict_promotion")

REDUCTIONS = ["scan", "host", "mesh"]
N_IMAGES, K, SIDE, CLASSES = 6, 2, 4, 3  # 12 augmented samples: batches of 5, 5 and a tail of 2


def image_loss(params, batch):
    x = batch["image"].reshape(batch["image"].shape[0], -1).astype(params["w"].dtype)
    logits = jnp.tanh(x @ params["w"]) @ params["v"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=1))


def augmented_case():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N_IMAGES, SIDE, SIDE, 1), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, size=N_IMAGES).astype(np.int32)
    data = augmented_data(images, labels, mean=[127.0], std=[70.0],
                          variants=rng.integers(0, 18, size=(N_IMAGES, K)), padding=1)
    params = {"w": jnp.asarray(0.2 * rng.normal(size=(SIDE * SIDE, 4))),
              "v": jnp.asarray(rng.normal(size=(4, CLASSES)))}
    transform = Augmentation(data, padding=1)
    everything = transform({"sample": np.arange(N_IMAGES * K, dtype=np.int32)})
    return image_loss, params, augmented_batches(data, 5), transform, everything


def plain_case():
    params = mlp_params(jax.random.key(0))
    data = make_data(jax.random.key(6), 37)  # 4 full batches of 8 and a tail of 5
    return mlp_loss, params, batch_dataset(data, 8), None, data


@pytest.mark.parametrize("transform", [False, True], ids=["plain", "augmented"])
@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_every_reduction_is_the_dense_hessian(reduce, transform):
    loss, params, batched, tf, everything = augmented_case() if transform else plain_case()
    H = np.asarray(dense_hessian(loss, params, everything))  # over all samples at once
    op = curvature_operator(loss, params, batched, reduce=reduce, transform=tf)
    assert op.shape == H.shape and op.dtype == jnp.float64
    rng = np.random.default_rng(1)
    V = jnp.asarray(rng.normal(size=(2, H.shape[0])))
    for v in V:
        np.testing.assert_allclose(op.mv(v), H @ np.asarray(v), rtol=1e-10,
                                   atol=1e-12 * np.abs(H).max())
    # a pytree in, a pytree out
    tree = op.mv(op.unravel(V[0]))
    assert jax.tree.structure(tree) == jax.tree.structure(params)
    np.testing.assert_allclose(ravel_pytree(tree)[0], H @ np.asarray(V[0]), rtol=1e-10,
                               atol=1e-12 * np.abs(H).max())
    if reduce == "host":
        with pytest.raises(TypeError, match="cannot be traced"):
            jax.jit(lambda op, v: op.mv(v))(op, V[0])
    else:  # traceable: an argument of jit, and vmapped
        got = jax.jit(jax.vmap(lambda v, op: op.mv(v), in_axes=(0, None)))(V, op)
        np.testing.assert_allclose(got, np.asarray(V) @ H, rtol=1e-10,
                                   atol=1e-12 * np.abs(H).max())


def test_transform_is_fixed_across_calls_and_operators():
    """The same table in every product: two calls, and a fresh operator, give identical bits."""
    loss, params, batched, tf, _ = augmented_case()
    v = jnp.asarray(np.random.default_rng(2).normal(size=ravel_pytree(params)[0].size))
    a = curvature_operator(loss, params, batched, reduce="scan", transform=tf)
    b = curvature_operator(loss, params, batched, reduce="scan", transform=tf)
    first = np.asarray(a.mv(v))
    np.testing.assert_array_equal(first, np.asarray(a.mv(v)))
    np.testing.assert_array_equal(first, np.asarray(b.mv(v)))


def test_resolve_reduce_and_driver():
    from jaxspec.reduction import resolve_reduce

    loss, params, batched, _, _ = plain_case()
    op = curvature_operator(loss, params, batched, reduce="scan")
    assert isinstance(resolve_reduce("mesh", op), MeshReduce)
    mesh = data_mesh()
    assert resolve_reduce(mesh, op) == MeshReduce(mesh)
    with pytest.raises(ValueError, match="reduce must be"):
        resolve_reduce("pmap", op)
    with pytest.raises(TypeError, match="reduce must be"):
        resolve_reduce(3, op)
    for reduce, driver in (("scan", "compiled"), ("host", "host"), ("mesh", "compiled")):
        op = curvature_operator(loss, params, batched, reduce=reduce)
        assert jaxspec.resolve_driver("auto", op) == driver
    with pytest.raises(ValueError, match="driver"):
        jaxspec.resolve_driver("fast")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's choice")
def test_auto_reduce_on_cpu_scans_large_activations_whose_data_fit(monkeypatch):
    """On a CPU, "auto" takes the host loop for a product with small activations and lax.scan
    (the compiled driver) for one whose batch keeps >= SCAN_BYTES, unless the data's copy on
    the device would take over a quarter of the free memory. Shapes only: nothing is run."""
    import jaxspec.reduction as reduction

    small_loss, small_params, small_data, _, _ = plain_case()
    assert isinstance(curvature_operator(small_loss, small_params, small_data).reduce,
                      HostReduce)

    def wide_loss(w, x):  # a batch of 8192 keeps 8192 x 1024 activations and more: >= 32 MiB
        return jnp.mean(jnp.tanh(x @ w))

    w = jnp.zeros((4, 1024), jnp.float32)
    x = np.ones((2 * 8192 + 5, 4), np.float32)
    data = batch_dataset(x, 8192)
    op = curvature_operator(wide_loss, w, data)
    assert op.reduce == ScanReduce() and jaxspec.resolve_driver("auto", op) == "compiled"
    assert isinstance(op.data.batches, jax.Array)
    already_placed = batch_dataset(jnp.asarray(x), 8192)  # no copy to make: the scan
    monkeypatch.setattr(reduction, "free_bytes", lambda: 3 * x.nbytes)
    assert curvature_operator(wide_loss, w, data).reduce == HostReduce(1)
    assert curvature_operator(wide_loss, w, already_placed).reduce == ScanReduce()


def test_auto_reduce_spreads_over_the_devices_of_one_process_off_cpu(monkeypatch):
    """Off CPU, "auto" is the mesh reduction over every device where one process has several
    (data parallel), lax.scan where it has one. The platform is patched for the choice only:
    nothing runs while it is."""
    loss, params, batched, _, data = plain_case()
    op = curvature_operator(loss, params, batched, reduce="scan")
    choices = {}
    for count in (1, 4):
        with monkeypatch.context() as patch:
            patch.setattr(jax, "default_backend", lambda: "gpu")
            patch.setattr(jax, "local_device_count", lambda: count)
            choices[count] = resolve_reduce("auto", op)
    assert choices[1] == ScanReduce()
    assert isinstance(choices[4], MeshReduce) and choices[4].mesh.axis_names == ("data",)
    mesh_op = curvature_operator(loss, params, batched, reduce=choices[4])
    v = jnp.ones(op.size)
    np.testing.assert_allclose(mesh_op.mv(v), op.mv(v), rtol=1e-12)


def test_with_params_and_fingerprint():
    loss, params, batched, _, data = plain_case()
    op = curvature_operator(loss, params, batched, reduce="scan")
    other = jax.tree.map(lambda x: 1.5 * x, params)
    moved = op.with_params(other)
    v = jnp.ones(op.size)
    np.testing.assert_allclose(moved.mv(v), dense_hessian(loss, other, data) @ v, rtol=1e-10,
                               atol=1e-12)
    assert op.fingerprint() == op.with_params(params).fingerprint()
    assert op.fingerprint() != moved.fingerprint()
    fewer = curvature_operator(loss, params, batch_dataset(make_data(jax.random.key(6), 36), 8))
    assert op.fingerprint() != fewer.fingerprint()


def _scaled(scale):
    def loss(params, batch):
        return scale * mlp_loss(params, batch)
    return loss


def test_fingerprint_tells_losses_of_one_name_apart():
    """Two closures of one factory are two matrices: the fingerprint hashes the loss's program
    (its jaxpr and constants), not its Python name."""
    _, params, batched, _, _ = plain_case()
    one, hundred = (curvature_operator(_scaled(s), params, batched, reduce="scan")
                    for s in (1.0, 100.0))
    assert _scaled(1.0).__qualname__ == _scaled(100.0).__qualname__
    assert one.fingerprint() != hundred.fingerprint()
    assert one.fingerprint() == curvature_operator(_scaled(1.0), params, batched).fingerprint()


_FINGERPRINT = """
import functools, sys, jax, jax.numpy as jnp, numpy as np, jaxspec
# 64-bit off: a NumPy float64 array and a Python float are float32 parameters, not a mixture
mixed = {"w": np.ones(3), "s": 1.0}
data = jaxspec.batch_dataset(np.ones((4, 3), np.float32), 2)
print(jaxspec.curvature_operator(lambda p, x: p["s"] * jnp.mean(x @ p["w"]), mixed, data).dtype)
jax.config.update("jax_enable_x64", True)
def loss(scale, p, x):
    return scale * jnp.mean((x @ p) ** 2)
def shift(s, x):
    return x + s
data = jaxspec.batch_dataset(np.arange(12.0).reshape(4, 3), 2)
op = jaxspec.curvature_operator(functools.partial(loss, 2.0), jnp.ones(3), data,
                                transform=jax.tree_util.Partial(shift, jnp.ones(3)))
print(op.fingerprint())
"""


def test_fingerprint_is_the_same_in_another_process():
    """A loss that is a functools.partial and a transform that is a Partial carry functions
    whose reprs hold memory addresses; the digest must not, or no run resumes elsewhere."""
    runs = [subprocess.run([sys.executable, "-c", _FINGERPRINT], capture_output=True, text=True,
                           check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
            for _ in range(2)]
    digests = [run.stdout.split()[-1] for run in runs]
    assert digests[0] == digests[1] and len(digests[0]) == 40
    assert runs[0].stdout.split()[0] == "float32"


def test_bad_inputs():
    loss, params, batched, _, _ = plain_case()
    op = curvature_operator(loss, params, batched, reduce="scan")
    with pytest.raises(TypeError, match="shape"):
        op.mv(jnp.ones(op.size + 1))
    with pytest.raises(TypeError, match="dtype"):
        op.mv(jnp.ones(op.size, jnp.float32))
    with pytest.raises(TypeError, match="structure"):
        op.mv({"a": jnp.ones(3)})
    # a pytree vector leaf by leaf: the same total size in other shapes, or another dtype
    transposed = jax.tree.map(lambda x: jnp.ones(x.shape[::-1], x.dtype), params)
    assert any(np.shape(x) != np.shape(y) for x, y in
               zip(jax.tree.leaves(transposed), jax.tree.leaves(params)))
    with pytest.raises(TypeError, match="leaf .* has shape"):
        op.mv(transposed)
    with pytest.raises(TypeError, match="dtype float32"):
        op.mv(jax.tree.map(lambda x: x.astype(jnp.float32), params))
    with pytest.raises(TypeError, match="callable pytree"):
        curvature_operator(loss, params, batched, transform=lambda batch: batch)
    with pytest.raises(TypeError, match="integer state"):
        curvature_operator(loss, {"w": jnp.ones(2), "n": jnp.ones(2, jnp.int32)}, batched)
    with pytest.raises(TypeError, match="float32 or float64"):
        curvature_operator(loss, jnp.ones(2, jnp.bfloat16), batched)
    with pytest.raises(TypeError, match="mixes dtypes"):
        curvature_operator(loss, {"a": jnp.ones(2), "b": jnp.ones(2, jnp.float32)}, batched)
    with pytest.raises(ValueError, match="no arrays"):
        curvature_operator(loss, {}, batched)
    with pytest.raises(TypeError, match="Batched"):
        curvature_operator(loss, params, {"x": np.ones(3)})
    with pytest.raises(ValueError, match="kind"):
        curvature_operator(loss, params, batched, kind="gauss_newton")
    with pytest.raises(TypeError, match="callable"):
        curvature_operator(None, params, batched)


def test_removed_names_are_gone():
    """Issue 13 removed the old constructors outright (no aliases)."""
    import jaxspec.augmented
    import jaxspec.hvp
    import jaxspec.parallel

    for module, names in (
        (jaxspec, ["hessian_matvec", "host_hessian_matvec", "dataset_hvp", "save_lanczos_state",
                   "load_lanczos_state", "sharded_hessian_matvec"]),
        (jaxspec.hvp, ["hessian_matvec", "host_hessian_matvec", "dataset_hvp"]),
        (jaxspec.parallel, ["sharded_hessian_matvec", "sharded_lanczos",
                            "lanczos_state_sharding"]),
        (jaxspec.augmented, ["augmented_hessian_matvec", "host_augmented_hessian_matvec",
                             "sharded_augmented_hessian_matvec"]),
    ):
        assert not [n for n in names if hasattr(module, n)], module.__name__
    for name in ("save", "load", "to_dict", "from_dict"):
        assert not hasattr(jaxspec.Spectrum, name)


@given(weights=st.lists(st.sampled_from([0.0, 0.1]), max_size=30),
       group_size=st.integers(1, 6))
def test_host_groups_cover_every_real_batch_once(weights, group_size):
    """The host loop's groups: runs of consecutive nonzero-weight batches, at most group_size
    long; every real batch in exactly one group, no padding batch in any."""
    groups = HostReduce(group_size=group_size)._groups(np.asarray(weights))
    covered = [i for start, stop in groups for i in range(start, stop)]
    assert covered == [i for i, w in enumerate(weights) if w]
    assert all(0 < stop - start <= group_size for start, stop in groups)


@settings(max_examples=20)
@given(index=st.integers(0, 16), delta=st.sampled_from([1e-12, 1e-3, -2.0]))
def test_fingerprint_sees_any_change_of_a_parameter(index, delta):
    loss, params, batched, _, _ = plain_case_cached()
    op = curvature_operator(loss, params, batched, reduce="host")
    flat, unravel = ravel_pytree(params)
    assert op.fingerprint() == op.with_params(unravel(flat + 0.0)).fingerprint()
    assert op.fingerprint() != op.with_params(unravel(flat.at[index].add(delta))).fingerprint()


@functools.cache
def plain_case_cached():
    return plain_case()


def test_repr_names_the_operator_without_its_arrays():
    """The repr is a line, however many arrays the operator holds: JAX calls ``str()`` on a
    callable object it traces (``jax.eval_shape(op, v)``, as ``run_lanczos`` checks a matvec),
    and the dataclass's default repr prints every parameter, batch and residual."""
    from jaxspec.checks import check_matvec

    op = curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(jnp.tanh(p) ** 4),
                            jnp.ones(10_000), batch_dataset(np.ones((7, 300)), 2),
                            reduce="scan").linearized()
    text = repr(op)
    assert text.startswith("CurvatureOperator(kind='hessian', size=10000") and len(text) < 200
    assert "linear=3 batches" in text and "batches=3 + tail of 1" in text
    check_matvec(op, jnp.ones(10_000, op.dtype))
