"""jaxspec.compiler: the CPU options reach the outermost program, nested calls work, results
are the default compilation's to float32 rounding, and XLA_FLAGS wins."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxspec
from experiments.cpu_flags import convolution_runners
from jaxspec.compiler import CPU_OPTIONS, compiler_options, jit


def _conv_loss(w, x):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.mean(jnp.tanh(y) ** 2)


def _problem():
    rng = np.random.default_rng(0)
    # 32 channels: XLA:CPU gives smaller convolutions to its own kernels anyway
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 32)), jnp.float32) / 17
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 32)), jnp.float32)
    return w, x


def _hvp(w, x, v):
    return jax.jvp(lambda u: jax.grad(_conv_loss)(u, x), (w,), (v,))[1]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_the_options_reach_the_compiled_convolutions():
    if not compiler_options():
        pytest.skip("this jaxlib has no YNNPACK fusion option")
    assert compiler_options() == CPU_OPTIONS
    w, x = _problem()
    text = jit(_hvp).lower(w, x, w).compile().as_text()
    assert set(convolution_runners(text)) == {"xla"}
    # XLA's default hands them to YNNPACK (what the options undo)
    default = jax.jit(_hvp).lower(w, x, w).compile().as_text()
    assert "__ynn_fusion" in convolution_runners(default)
    # jaxspec.compiler_options() passed to a plain jit compiles the same program
    own = jax.jit(_hvp, compiler_options=jaxspec.compiler_options()).lower(w, x, w)
    assert own.compile().as_text().count("convolution(") == text.count("convolution(")


def test_products_match_the_default_compilation():
    w, x = _problem()
    v = jnp.asarray(np.random.default_rng(1).standard_normal(w.shape), jnp.float32)
    ours, plain = jit(_hvp)(w, x, v), jax.jit(_hvp)(w, x, v)
    np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(plain))))


def test_nested_under_other_transformations():
    """Called inside another jit, eval_shape or vmap it is the plain jit (JAX refuses compiler
    options on a nested jit)."""
    w, x = _problem()
    f = jit(_hvp)
    inner = jax.jit(lambda w, v: 2 * f(w, x, v))(w, w)  # compiled with the outer jit's options
    plain = 2 * jax.jit(_hvp)(w, x, w)
    np.testing.assert_allclose(inner, plain, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(plain))))
    assert jax.eval_shape(f, w, x, w).shape == w.shape
    assert jax.vmap(f, in_axes=(None, None, 0))(w, x, jnp.stack([w, w])).shape == (2, *w.shape)


def test_xla_flags_setting_the_fusions_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert compiler_options.__wrapped__() == {}


_CACHED_RUN = """
import sys
import jax
from jax import monitoring
from jaxspec.compiler import cache_compilations
hits = []
monitoring.register_event_listener(
    lambda event, **_: hits.append(event) if event.endswith("/cache_hits") else None)
cache_compilations(sys.argv[1])
import jax.numpy as jnp
import jaxspec
A = jnp.diag(jnp.linspace(0.5, 3.0, 40))
r = jaxspec.run_lanczos(lambda v: A @ v, jnp.ones(40), 12)
print(len(hits), r.alphas.tolist())
"""


def test_a_later_process_loads_the_compiled_programs_from_the_cache(tmp_path):
    """cache_compilations: the first process writes its programs (even those compiled in well
    under JAX's one-second default threshold), the next one loads them, with the same results."""
    import subprocess
    import sys

    def run():
        out = subprocess.run([sys.executable, "-c", _CACHED_RUN, str(tmp_path)], check=True,
                             capture_output=True, text=True).stdout.split(maxsplit=1)
        return int(out[0]), out[1]

    hits, alphas = run()
    assert hits == 0 and len(list(tmp_path.iterdir())) >= 3  # the step, init, the product, ...
    hits_again, alphas_again = run()
    assert hits_again >= 3 and alphas_again == alphas
