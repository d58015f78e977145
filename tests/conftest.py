"""Test configuration: float64 enabled (comparisons with dense eigh are made in float64; tests of
float32 behaviour build float32 arrays explicitly), strict dtype promotion where asked for, and
a fast hypothesis profile for CI."""

import os

# two test processes share a GPU when there is one: neither may take most of its memory
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The suite is compile-bound: most of its time is XLA compiling small programs, most of that in
# LLVM, which compiles much faster at -O0. XLA's own passes (fusion, layouts, library calls) run
# as at the default level, so the programs are the same and their results differ only by
# floating-point rounding (LLVM's instruction choices). The worker processes of the multi-device
# tests take the same level (tests/workers.py). A level set in XLA_FLAGS wins, e.g.
# XLA_FLAGS=--xla_backend_optimization_level=2 tests at XLA's default.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)

settings.register_profile(
    "ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def strict_promotion():
    """Strict dtype promotion (as lineax's suite): no silent float32/float64 mixing in the core.

    Use it per module with ``pytestmark = pytest.mark.usefixtures("strict_promotion")``.
    """
    with jax.numpy_dtype_promotion("strict"):
        yield
