"""jaxspec.convolutions: convolutions in loops and branches rewritten to canonical order, and
convolutions whose input is smaller than their window rewritten to a matrix product, compute
the same values for any dimension order, stride, dilation, padding and grouping, in every kind
of loop and outside loops; XLA:CPU then compiles no non-canonical convolution in a loop, and
no convolution of a small input, where it did before."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxspec
from jaxspec.compiler import jit
from jaxspec.convolutions import fast_convolutions

CANONICAL = {3: "b0f_0io->b0f", 4: "b01f_01io->b01f"}  # by operand rank


def _dim_labels(hlo: str) -> set:
    return set(re.findall(r"convolution\(.*dim_labels=([^,\s]+)", hlo))


@st.composite
def convolutions(draw):
    """A random convolution: its dimension numbers (random orders of the three operands),
    window, strides, padding, dilations and feature groups, and operands to match."""
    nsp = draw(st.integers(1, 2))
    rank = nsp + 2
    lhs, rhs, out = (tuple(draw(st.permutations(range(rank)))) for _ in range(3))
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    window = [draw(st.integers(1, 3)) for _ in range(nsp)]
    size = [draw(st.integers(3, 6)) for _ in range(nsp)]
    lhs_dilation = [draw(st.integers(1, 2)) for _ in range(nsp)]
    padding = draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    if padding == "explicit" or max(lhs_dilation) > 1:  # JAX takes no string with dilation
        padding = [(draw(st.integers(0, 1)), draw(st.integers(0, 1))) for _ in range(nsp)]
    params = dict(
        window_strides=[draw(st.integers(1, 2)) for _ in range(nsp)], padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=[draw(st.integers(1, 2)) for _ in range(nsp)],
        dimension_numbers=jax.lax.ConvDimensionNumbers(lhs, rhs, out),
        feature_group_count=groups)
    # logical shapes (batch, feature, spatial...) and (out, in, spatial...) placed by the specs
    x_shape, w_shape = [0] * rank, [0] * rank
    for dim, n in zip(lhs, [2, cin, *size]):
        x_shape[dim] = n
    for dim, n in zip(rhs, [cout, cin // groups, *window]):
        w_shape[dim] = n
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return params, rng.standard_normal((3, *x_shape)), rng.standard_normal(w_shape)


def _hvp_in(loop: str, params: dict):
    """The HVP of a convolution's squared output with respect to its input and kernel
    together, summed over three inputs by ``loop``: its forward, input-gradient and
    kernel-gradient convolutions all run inside it. ``"none"``: the same sums in Python, the
    convolutions at the top of the program, where XLA canonicalises them itself."""
    def loss(x, w):
        return jnp.sum(jnp.tanh(jax.lax.conv_general_dilated(x, w, **params)) ** 2)

    def hvp(x, w):
        return jax.jvp(jax.grad(loss, argnums=(0, 1)), (x, w), (x, w))[1]

    def product(xs, w):
        if loop == "none":
            return jax.tree.map(lambda *t: sum(t), *[hvp(x, w) for x in xs])
        if loop == "scan":
            return jax.lax.scan(lambda c, x: (jax.tree.map(jnp.add, c, hvp(x, w)), None),
                                hvp(xs[0], w), xs[1:])[0]
        if loop == "fori":
            return jax.lax.fori_loop(1, 3, lambda i, c: jax.tree.map(jnp.add, c, hvp(xs[i], w)),
                                     hvp(xs[0], w))
        # a branch, and a jit inside a scan inside it
        scanned = jax.jit(lambda xs, w: jax.lax.scan(
            lambda c, x: (c + hvp(x, w)[1], None), jnp.zeros_like(w), xs)[0])
        return jax.lax.cond(jnp.sum(w) > -1e9, lambda: (hvp(xs[0], w)[0], scanned(xs, w)),
                            lambda: (jnp.zeros_like(xs[0]), jnp.zeros_like(w)))

    return product


@settings(max_examples=30, deadline=None)
@given(convolutions(), st.sampled_from(["scan", "fori", "cond", "none"]))
def test_fast_convolutions_compute_the_same_values(case, loop):
    """Against the same sums outside any loop, compiled by XLA alone, in float64 (XLA's loop
    nests, no fast kernels, so the rewrites alone are compared): the values agree to rounding.
    The random windows (dilated up to 5) are often larger than the inputs (3 to 6), where the
    convolutions become matrix products, in loops and outside ("none"). (XLA:CPU's own result
    in the loop is not the reference: see the next test.)"""
    params, xs, w = case
    got = jax.jit(fast_convolutions(_hvp_in(loop, params)))(xs, w)
    expected = jax.jit(_hvp_in("none", params))(xs, w)
    if loop == "cond":  # the first input's HVP in x, all three's in w
        hvps = [jax.jit(_hvp_in("none", params))(xs[i:i + 1], w) for i in range(3)]
        expected = (hvps[0][0], expected[1])
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10 * float(np.max(np.abs(e)) + 1))


def test_a_gradient_xla_cpu_computes_wrongly_in_a_loop_comes_out_right():
    """The input gradient of a width-1 convolution whose output is spatial-major: inside a
    ``lax.scan``, XLA:CPU (jaxlib 0.10) rewrites it to a dot and reads its rows in the wrong
    order (off by 3.8 here); the canonical form is exact. The reference is an einsum."""
    dn = jax.lax.ConvDimensionNumbers((0, 2, 1), (0, 1, 2), (1, 2, 0))  # out: (space, batch, c)
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, [1], "SAME", dimension_numbers=dn)  # noqa: E731
    rng = np.random.default_rng(0)
    xs, w, cts = rng.standard_normal((3, 2, 3, 1)), rng.standard_normal((2, 1, 1)), \
        rng.standard_normal((3, 3, 2, 2))

    def grads(xs, w, cts):
        return jax.lax.scan(lambda c, xc: (c, jax.vjp(lambda x: conv(x, w), xc[0])[1](xc[1])[0]),
                            0.0, (xs, cts))[1]

    expected = np.einsum("nsbo,oi->nbsi", cts, w[:, :, 0])
    np.testing.assert_allclose(jax.jit(fast_convolutions(grads))(xs, w, cts), expected,
                               rtol=1e-12, atol=1e-12)


def test_a_cnn_product_in_a_scan_compiles_only_canonical_convolutions():
    """The kernel and input gradients of a 2-D convolution, summed over batches by
    ``lax.scan``: jaxspec's jit on a CPU leaves no convolution in another order, where the
    plain jit leaves them to XLA's loop nests; the float32 values agree (the fast kernels sum
    in another order)."""
    if jax.default_backend() != "cpu":
        pytest.skip("jaxspec.compiler.jit canonicalises on a CPU only")
    params = dict(window_strides=(1, 1), padding="SAME",
                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((3, 2, 6, 6, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 4, 4)), jnp.float32) / 6
    fun = _hvp_in("scan", params)
    plain = jax.jit(fun).lower(xs, w).compile().as_text()
    ours = jit(fun).lower(xs, w).compile().as_text()
    assert _dim_labels(plain) - {CANONICAL[4]}, "XLA left this case canonical anyway"
    assert _dim_labels(ours) == {CANONICAL[4]}
    for g, e in zip(jax.tree.leaves(jit(fun)(xs, w)), jax.tree.leaves(jax.jit(fun)(xs, w))):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(e))))


def test_a_window_larger_than_its_input_becomes_a_matrix_product():
    """VGG's last convolutions: a 3x3 window over 2x2 images (and a 1x1 image). XLA swaps such
    a convolution's operands (the kernel as the image) into an order its fast kernels do not
    take, and runs it in a loop nest tens of times slower than the same sums as a matrix
    product. On a CPU the HVP of such a layer compiles to canonical convolutions only (the
    kernel gradients, whose window is the image) and gives XLA's own values."""
    if jax.default_backend() != "cpu":
        pytest.skip("rewritten on a CPU only")
    params = dict(window_strides=(1, 1), padding="SAME",
                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.standard_normal((3, 3, 8, 6)), jnp.float32) / 8
    fun = jax.jit(_hvp_in("none", params))
    ours = jit(_hvp_in("none", params))
    for size in (2, 1):
        xs = jnp.asarray(rng.standard_normal((1, 4, size, size, 8)), jnp.float32)
        assert _dim_labels(fun.lower(xs, w).compile().as_text()) - {CANONICAL[4]}
        assert _dim_labels(ours.lower(xs, w).compile().as_text()) == {CANONICAL[4]}
        for g, e in zip(jax.tree.leaves(ours(xs, w)), jax.tree.leaves(fun(xs, w))):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(e))))
    # a window of 9 over 4 samples padded by 8: its stacked positions would take 5.4x the
    # padded input, so it stays a convolution
    wide = jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1,), [(8, 8)]))
    assert "convolution(" in wide.lower(jnp.ones((2, 3, 4)), jnp.ones((5, 3, 9))).as_text("hlo")


def test_convolutions_outside_loops_are_left_to_xla():
    """A program without loops whose inputs are not smaller than their windows is traced once
    more and otherwise unchanged: XLA canonicalises its convolutions itself."""
    params = dict(window_strides=(1,), padding="SAME", dimension_numbers=("NCH", "OIH", "NCH"))
    x, w = jnp.ones((2, 3, 5)), jnp.ones((4, 3, 3))
    loss = lambda x, w: jnp.sum(jax.lax.conv_general_dilated(x, w, **params) ** 2)  # noqa: E731
    grad = jax.grad(loss, argnums=1)
    assert (jax.jit(fast_convolutions(grad)).lower(x, w).as_text()
            == jax.jit(grad).lower(x, w).as_text())


def test_static_arguments_and_pytrees_pass_through():
    """Python objects (a static argument, a string) stay constants, arrays in pytrees are
    traced, and the output keeps its structure."""
    def f(tree, n, how="twice"):
        return {"y": tree["a"] * n + (tree["b"] if how == "twice" else 0), "n": jnp.asarray(n)}

    g = jax.jit(fast_convolutions(f), static_argnums=1, static_argnames="how")
    out = g({"a": jnp.ones(2), "b": np.full(2, 3.0)}, 2, how="twice")
    assert out["y"].tolist() == [5.0, 5.0] and int(out["n"]) == 2


def test_the_mesh_reduction_and_the_compiled_driver_run_canonical_convolutions():
    """The mesh reduction's scan runs inside ``jax.shard_map``, whose body the outer rewrite
    leaves alone (its axis names are bound only there): the reduction rewrites it itself. The
    compiled Lanczos driver runs the products in its ``fori_loop``. Both compile only
    canonical convolutions on a CPU."""
    from experiments.speed import cnn_apply, cnn_init, workload
    from jaxspec.parallel import data_mesh

    if jax.default_backend() != "cpu":
        pytest.skip("canonicalised on a CPU only")
    loss, params, batched = workload(cnn_init, cnn_apply, 4, 2)
    params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    v = jnp.ones(sum(p.size for p in jax.tree.leaves(params)), jnp.float32)
    mesh = jaxspec.curvature_operator(loss, params, batched, reduce=data_mesh(), linearize=None)
    text = jit(lambda op, v: op.mv(v)).lower(mesh, v).compile().as_text()
    assert _dim_labels(text) == {CANONICAL[4]}
    scan = jaxspec.curvature_operator(loss, params, batched, reduce="scan")
    state = jaxspec.lanczos_init(v, 3)
    run = jit(lambda op, s: jaxspec.lanczos_continue(op, s, 3))
    assert _dim_labels(run.lower(scan.linearized(), state).compile().as_text()) == {CANONICAL[4]}


def test_a_users_own_jit_around_an_operator_runs_canonical_convolutions():
    """A plain ``jax.jit`` of the user's (around ``op.mv``, as matfree's or lineax's solvers
    trace it) takes no rewrite of its own: the operator's programs rewrite their convolutions
    when they are traced inside it, so its scan compiles only canonical ones on a CPU."""
    from experiments.speed import cnn_apply, cnn_init, workload

    if jax.default_backend() != "cpu":
        pytest.skip("canonicalised on a CPU only")
    loss, params, batched = workload(cnn_init, cnn_apply, 4, 2)
    params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    op = jaxspec.curvature_operator(loss, params, batched, reduce="scan", linearize=None)
    v = jnp.ones(op.size, jnp.float32)
    text = jax.jit(lambda op, v: op.mv(v)).lower(op, v).compile().as_text()
    assert _dim_labels(text) == {CANONICAL[4]}


def test_scan_reduction_on_a_cnn_matches_the_host_loop():
    """The operator with the ``lax.scan`` reduction (its convolutions in the loop, rewritten)
    gives the host loop's product on a small CNN."""
    from experiments.speed import cnn_apply, cnn_init, workload

    loss, params, batched = workload(cnn_init, cnn_apply, 6, 2)
    params = jax.tree.map(lambda p: p.astype(jnp.float32), params)  # the suite runs in x64
    host = jaxspec.curvature_operator(loss, params, batched, reduce="host", linearize=None)
    scan = jaxspec.curvature_operator(loss, params, batched, reduce="scan", linearize=None)
    v = jax.random.normal(jax.random.key(0), (host.size,), host.dtype)
    np.testing.assert_allclose(scan.mv(v), host.mv(v), rtol=1e-4,
                               atol=1e-5 * float(jnp.max(jnp.abs(host.mv(v)))))
