"""Test helper: counting XLA compilations (the "compile once" tests)."""

from __future__ import annotations

import contextlib

import jax

# JAX's event for every XLA backend compilation (jax._src.dispatch.BACKEND_COMPILE_EVENT)
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compilations():
    """The backend compilations made inside the block (one entry per compiled program)."""
    seen = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            seen.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
