"""Matrix kinds (Hessian, GGN, exact and Monte-Carlo Fisher, empirical Fisher) on the one operator.

Every kind's product against a dense matrix built independently of the product code: the Hessian
by jax.hessian, the GGN from the explicit Jacobian (jax.jacfwd of apply) J^T H_z J, the exact
Fisher by enumerating the classes' log-likelihood gradients, the empirical Fisher from explicit
per-sample gradients (jax.jacrev of the vector of per-sample losses); on an MLP, on an image net
behind the augmentation transform, and on a conv net with BatchNorm in both modes; through the
scan, host and mesh reductions. The Monte-Carlo Fisher is checked statistically against the exact
one with standard errors computed exactly (by enumeration).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from jaxspec import Categorical, FisherMC, SplitLoss, batch_dataset, curvature_operator
from jaxspec.augmented import Augmentation, augmented_batches, augmented_data
from jaxspec.models import SmallCNN, hessian_loss

REDUCTIONS = ["scan", "host", "mesh"]
DETERMINISTIC = ["hessian", "ggn", "fisher", "empirical_fisher"]
WD = 0.05


@pytest.fixture(autouse=True)
def strict_promotion(request):
    # Flax's BatchNorm mixes its float32 statistics with float64 inputs inside (its own
    # promotion), so the conv-net tests run under standard promotion; the rest, strict.
    mode = "standard" if "cnn" in request.node.name else "strict"
    with jax.numpy_dtype_promotion(mode):
        yield


# ---- models ----------------------------------------------------------------------------------


def ce(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def image_apply(params, batch):
    x = batch["image"].reshape(batch["image"].shape[0], -1).astype(params["w"].dtype)
    return jnp.tanh(x @ params["w"]) @ params["v"]


def image_output_loss(logits, batch):
    return ce(logits, batch["label"])


def image_plain_loss(params, batch):
    return image_output_loss(image_apply(params, batch), batch)


IMAGE = SplitLoss(image_apply, image_output_loss, predictive=Categorical("label"),
                  weight_decay=WD)


def augmented_case():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 4, 4, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, size=6).astype(np.int32)
    data = augmented_data(images, labels, mean=[127.0], std=[70.0],
                          variants=rng.integers(0, 18, size=(6, 2)), padding=1)
    params = {"w": jnp.asarray(0.2 * rng.normal(size=(16, 4))),
              "v": jnp.asarray(rng.normal(size=(4, 3)))}
    return params, augmented_batches(data, 5), Augmentation(data, padding=1)


# ---- dense references, built without the product code ----------------------------------------


def each_batch(batched, transform=None):
    out = [(float(w), jax.tree.map(lambda x: x[b], batched.batches))
           for b, w in enumerate(np.asarray(batched.weights)) if w]
    if batched.tail is not None:
        out.append((float(batched.tail_weight), batched.tail))
    return [(w, transform(b) if transform is not None else b) for w, b in out]


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def dense_batch(split, params, batch, label, hessian=True):
    """One batch's dense matrices of every kind (no weight decay), and J and softmax(z)."""
    flat, unravel = ravel_pytree(params)

    def apply(f):
        return split.apply(unravel(f), batch)

    def terms(f):  # the per-sample losses
        logp = jax.nn.log_softmax(apply(f))
        return -jnp.take_along_axis(logp, batch[label][:, None], axis=1)[:, 0]

    z = apply(flat)
    jac = jax.jacfwd(apply)(flat)                                       # (B, C, P)
    b, c = z.shape
    hz = jax.hessian(lambda z: split.output_loss(z, batch))(z)         # (B, C, B, C)
    probs = jax.nn.softmax(z)
    # the log-likelihood gradients of every class: d log p_c / dz_i = e_c - p_i
    g = jnp.einsum("icd,idp->icp", jnp.eye(c)[None] - probs[:, None, :], jac)
    per_sample = jax.jacrev(terms)(flat)                                # (B, P)
    full = jax.hessian(lambda f: split(unravel(f), batch))(flat) if hessian else jnp.nan
    return {"hessian": full,
            "ggn": jnp.einsum("icp,icjd,jdq->pq", jac, hz, jac),
            "fisher": jnp.einsum("ic,icp,icq->pq", probs, g, g) / b,
            "empirical_fisher": per_sample.T @ per_sample / b,
            "jac": jac, "probs": probs}


def dense(split, params, batched, transform=None, label="label", hessian=True):
    """Dense (P, P) matrices of every kind: the weighted sum of the per-batch references."""
    out = {}
    for w, batch in each_batch(batched, transform):
        mats = dense_batch(split, params, batch, label, hessian)
        for k in DETERMINISTIC:
            out[k] = out.get(k, 0.0) + w * np.asarray(mats[k])
    for k in ("ggn", "fisher", "empirical_fisher"):
        out[k] += split.weight_decay * np.eye(out[k].shape[0])
    return out


def check_mv(op, matrix, num=2, seed=1):
    rng = np.random.default_rng(seed)
    scale = np.abs(matrix).max()
    for v in rng.normal(size=(num, matrix.shape[0])):
        np.testing.assert_allclose(op.mv(jnp.asarray(v)), matrix @ v, rtol=1e-9,
                                   atol=1e-11 * scale)


def mc_errors(split, params, batched, v, exact, transform, num_samples, keys, hessian):
    """The MC Fisher's errors on ``v`` (one per key) and the exact variance of one draw per
    input, per coordinate (by enumerating the labels; the inputs draw independently, so the
    variances of their terms add up)."""
    batches = each_batch(batched, transform)
    n = sum(np.shape(b["label"])[0] for _, b in batches)
    var = 0.0  # per coordinate, of one draw per input
    for _, batch in batches:
        ref = dense_batch(split, params, batch, "label", hessian)  # (compiled already)
        jac, probs = np.asarray(ref["jac"]), np.asarray(ref["probs"])
        g = np.einsum("icd,idp->icp", np.eye(probs.shape[1])[None] - probs[:, None, :], jac)
        z = g * (g @ v)[..., None] / n                                  # (B, C, P): each label
        p = probs[..., None]
        var = var + ((p * z**2).sum(1) - (p * z).sum(1) ** 2).sum(0)
    op = curvature_operator(split, params, batched, kind=FisherMC(num_samples), key=keys[0],
                            reduce="scan", transform=transform)
    # another key is a leaf, not a static field: the same compiled program
    errors = [np.asarray(dataclasses.replace(op, key=jax.random.key_data(k)).mv(jnp.asarray(v)))
              - exact for k in keys]
    return np.stack(errors), var


# ---- the tests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp():
    """An MLP on images behind the fixed augmentation table: 12 samples, batches of 5, 5, 2."""
    params, batched, tf = augmented_case()
    return params, batched, tf, dense(IMAGE, params, batched, tf)


def test_every_kind_every_reduction(mlp):
    params, batched, tf, mats = mlp
    assert not np.allclose(mats["ggn"], mats["hessian"])  # a real test of the kind
    np.testing.assert_allclose(mats["fisher"], mats["ggn"], atol=1e-12)  # CE: Fisher = GGN
    for kind in ("ggn", "fisher", "empirical_fisher"):  # PSD (+ the weight decay)
        assert np.linalg.eigvalsh(mats[kind]).min() >= WD - 1e-10
    v = jnp.asarray(np.random.default_rng(5).normal(size=mats["ggn"].shape[0]))
    mc = {}
    for reduce in REDUCTIONS:  # (FisherMC(4): the other tests' compilation, with scan)
        # the Hessian through every reduction is tests/test_operator.py's business
        for kind in DETERMINISTIC if reduce == "scan" else DETERMINISTIC[1:]:
            op = curvature_operator(IMAGE, params, batched, kind=kind, reduce=reduce,
                                    transform=tf)
            check_mv(op, mats[kind], num=1 if reduce != "scan" else 2)
        op = curvature_operator(IMAGE, params, batched, kind=FisherMC(4),
                                key=jax.random.key(0), reduce=reduce, transform=tf)
        mc[reduce] = np.asarray(op.mv(v))
    for reduce in REDUCTIONS[1:]:  # the same draws, hence the same matrix, in every reduction
        np.testing.assert_allclose(mc[reduce], mc["scan"], rtol=1e-12, atol=1e-14)


def test_compact_caches_of_every_kind_are_the_dense_matrices(mlp):
    """Every kind's products linearised with compact residuals (the outputs of matrix products
    and activations kept, the rest recomputed at each product; behind the augmentation
    transform) are the dense matrix, and the Monte-Carlo Fisher's the same draws as uncached."""
    params, batched, tf, mats = mlp
    for kind in DETERMINISTIC + [FisherMC(4)]:
        key = jax.random.key(0) if isinstance(kind, FisherMC) else None
        op = curvature_operator(IMAGE, params, batched, kind=kind, key=key, reduce="scan",
                                transform=tf, residuals="compact")
        fast = op.linearized()
        assert (fast.linear.count, fast.linear.residuals) == (2, "compact")
        assert fast.linear.tail is not None
        if key is None:
            check_mv(fast, mats[kind], num=1)
        else:
            v = jnp.asarray(np.random.default_rng(2).normal(size=op.size))
            np.testing.assert_allclose(fast.mv(v), op.mv(v), rtol=1e-12, atol=1e-14)


def test_empirical_fisher_of_a_plain_loss(mlp):
    """A plain loss_fn (a mean of per-sample terms): gradients of batches of one, vmapped."""
    params, batched, tf, mats = mlp
    op = curvature_operator(image_plain_loss, params, batched, kind="empirical_fisher",
                            reduce="scan", transform=tf)
    check_mv(op, mats["empirical_fisher"] - WD * np.eye(op.size))


def test_mc_fisher_is_one_fixed_matrix(mlp):
    params, batched, tf, _ = mlp
    kind, key = FisherMC(4), jax.random.key(7)
    op = curvature_operator(IMAGE, params, batched, kind=kind, key=key, reduce="scan",
                            transform=tf)
    v = jnp.asarray(np.random.default_rng(3).normal(size=op.size))
    first = np.asarray(op.mv(v))
    np.testing.assert_array_equal(op.mv(v), first)                       # the same bits
    np.testing.assert_array_equal(op.with_params(params).mv(v), first)   # the key is kept
    other = curvature_operator(IMAGE, params, batched, kind=kind, key=jax.random.key(8),
                               reduce="scan", transform=tf)
    assert not np.allclose(other.mv(v), first)                           # another matrix
    assert other.fingerprint() != op.fingerprint()


def test_mc_fisher_converges_to_the_exact_fisher(mlp):
    """The expectation over the drawn labels is the exact Fisher: with S draws per input the
    error is within a few exact standard errors, and it shrinks like 1/sqrt(S) (S = 4, and 64
    as the mean of 16 independent S = 4 estimates)."""
    params, batched, tf, mats = mlp
    v = np.random.default_rng(4).normal(size=mats["fisher"].shape[0])
    keys = list(jax.random.split(jax.random.key(11), 16))
    errors, var = mc_errors(IMAGE, params, batched, v, mats["fisher"] @ v, tf, 4, keys, True)
    for err, s in ((errors[0], 4), (errors.mean(0), 64)):
        z = err / np.sqrt(var / s)
        assert np.mean(z**2) < 3.0 and np.max(np.abs(z)) < 5.0, (s, z)
    # RMS over the 16 estimates: 4x the error of their mean in expectation
    assert np.linalg.norm(errors.mean(0)) < 0.5 * np.sqrt(np.mean(np.sum(errors**2, 1)))


@pytest.fixture(scope="module")
def cnn():
    model = SmallCNN(3, widths=(4,), param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    stats = nnx.state(model, nnx.BatchStat)  # Flax keeps them float32 whatever param_dtype
    nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.float64), stats))
    # one training-mode forward moves the running statistics away from (0, 1)
    nnx.jit(lambda m, x: m(x))(model, jnp.asarray(2.0 * rng.normal(size=(16, 6, 6, 3)) + 0.5))
    data = {"image": rng.normal(size=(8, 6, 6, 3)), "label": rng.integers(0, 3, 8).astype(np.int32)}
    return model, batch_dataset(data, 4)


@pytest.mark.parametrize("bn_mode", ["batch", "running"])
def test_cnn_batchnorm_every_kind(cnn, bn_mode):
    model, batched = cnn
    split, params = hessian_loss(model, bn_mode=bn_mode, weight_decay=0.01)
    assert isinstance(split, SplitLoss) and "0x" not in repr(split)  # stable fingerprints
    mats = dense(split, params, batched, hessian=False)  # its Hessian: test_model_loss.py
    np.testing.assert_allclose(mats["fisher"], mats["ggn"], atol=1e-12)
    for kind in ("ggn", "empirical_fisher"):
        assert np.linalg.eigvalsh(mats[kind]).min() >= 0.01 - 1e-10
    # (the fisher product equals the GGN's, shown above; run it once, in batch mode)
    for kind in ("ggn", "empirical_fisher") + (("fisher",) if bn_mode == "batch" else ()):
        check_mv(curvature_operator(split, params, batched, kind=kind, reduce="scan"),
                 mats[kind], num=1)
    # the convolutions' and BatchNorm's products cached with compact residuals
    fast = curvature_operator(split, params, batched, kind="ggn", residuals="compact").linearized()
    assert fast.linear.residuals == "compact"
    check_mv(fast, mats["ggn"], num=1)
    v = jnp.asarray(np.random.default_rng(7).normal(size=fast.size))
    hessian = curvature_operator(split, params, batched, residuals="compact")
    cached, plain = hessian.linearized(), np.asarray(hessian.mv(v))
    assert cached.linear.residuals == "compact"
    np.testing.assert_allclose(cached.mv(v), plain, rtol=1e-10, atol=1e-13 * np.abs(plain).max())
    if bn_mode == "batch":
        # the MC Fisher, the batch statistics held fixed, still averages to the exact Fisher
        v = np.random.default_rng(6).normal(size=mats["fisher"].shape[0])
        errors, var = mc_errors(split, params, batched, v, mats["fisher"] @ v, None, 16,
                                [jax.random.key(1)], False)
        z = errors[0] / np.sqrt(var / 16)
        assert np.mean(z**2) < 3.0 and np.max(np.abs(z)) < 5.0, z


def test_bad_kinds(mlp):
    params, batched, _, _ = mlp
    with pytest.raises(TypeError, match="SplitLoss"):
        curvature_operator(image_plain_loss, params, batched, kind="ggn")
    with pytest.raises(TypeError, match="SplitLoss"):
        curvature_operator(image_plain_loss, params, batched, kind="fisher")
    bare = SplitLoss(image_apply, image_output_loss)
    with pytest.raises(TypeError, match="predictive"):
        curvature_operator(bare, params, batched, kind="fisher")
    with pytest.raises(TypeError, match="predictive"):
        curvature_operator(bare, params, batched, kind="fisher_mc", key=jax.random.key(0))
    with pytest.raises(TypeError, match="key"):
        curvature_operator(IMAGE, params, batched, kind="fisher_mc")
    with pytest.raises(TypeError, match="no key"):
        curvature_operator(IMAGE, params, batched, kind="ggn", key=jax.random.key(0))
    with pytest.raises(ValueError, match="kind"):
        curvature_operator(IMAGE, params, batched, kind="gauss_newton")
    with pytest.raises(ValueError, match="num_samples"):
        FisherMC(0)
    assert repr(FisherMC(np.int64(2))) == "FisherMC(num_samples=2)"
    with pytest.raises(TypeError, match="PRNG key"):
        curvature_operator(IMAGE, params, batched, kind="fisher_mc", key=3)
    with pytest.raises(TypeError, match="implementation"):  # its data would be misread
        curvature_operator(IMAGE, params, batched, kind="fisher_mc",
                           key=jax.random.key(0, impl="rbg"))
    with pytest.raises(TypeError, match="callable"):
        SplitLoss(image_apply, None)
    # hashable by value (functions by identity): equal SplitLoss objects share compilations
    assert SplitLoss(image_apply, image_output_loss) == bare
    assert hash(SplitLoss(image_apply, image_output_loss)) == hash(bare)


def test_restricted_kinds_are_the_dense_sub_blocks(mlp):
    """A parameter block of every kind (the SplitLoss restricted with it) is the dense
    sub-block A[S, S], also with the Monte-Carlo Fisher's fixed draws."""
    params, batched, tf, mats = mlp
    leaves = jax.tree_util.tree_leaves_with_path(params)
    sizes = [int(np.size(x)) for _, x in leaves]
    chosen = [i for i, (path, _) in enumerate(leaves) if "v" in jax.tree_util.keystr(path)]
    assert 0 < len(chosen) < len(leaves)
    starts = np.cumsum([0] + sizes)
    index = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in chosen])
    for kind in DETERMINISTIC:
        op = curvature_operator(IMAGE, params, batched, kind=kind, reduce="scan", transform=tf)
        sub = op.restrict(lambda path, leaf: "v" in jax.tree_util.keystr(path))
        assert sub.size == index.size
        check_mv(sub, mats[kind][np.ix_(index, index)])
    full = curvature_operator(IMAGE, params, batched, kind=FisherMC(2), key=jax.random.key(3),
                              reduce="scan", transform=tf)
    sub = full.restrict(lambda path, leaf: "v" in jax.tree_util.keystr(path))
    u = np.random.default_rng(0).normal(size=index.size)
    padded = np.zeros(full.size)
    padded[index] = u
    np.testing.assert_allclose(sub.mv(jnp.asarray(u)),
                               np.asarray(full.mv(jnp.asarray(padded)))[index],
                               rtol=1e-9, atol=1e-12)
