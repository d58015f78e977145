"""Test configuration: float64 enabled (comparisons with dense eigh are made in float64; tests of
float32 behaviour build float32 arrays explicitly), strict dtype promotion where asked for, and
a fast hypothesis profile for CI."""

import os

# two test processes share a GPU when there is one: neither may take most of its memory
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The suite is compile-bound: about two thirds of its time is XLA compiling small programs,
# mostly in LLVM. LLVM at -O0 halves that; XLA's own passes (fusion, layouts, library calls)
# run as at the default level, so the programs are the same and their results differ only by
# floating-point rounding (LLVM's instruction choices). Worker processes inherit it. Set the level in
# XLA_FLAGS to test at another one, e.g. --xla_backend_optimization_level=2.
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
