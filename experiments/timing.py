"""Timing and peak memory, shared by the speed scripts."""

from __future__ import annotations

import resource
import time


def best_time(fn, *args, repeats: int) -> float:
    """The best of ``repeats`` timed calls of ``fn(*args)``, each waited for (warm it up first).

    Example:
      >>> import jax.numpy as jnp
      >>> from experiments.timing import best_time
      >>> best_time(jnp.sin, jnp.ones(3), repeats=2) >= 0
      True
    """
    import jax

    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def peak_memory() -> tuple[int, str]:
    """``(bytes, kind)``: the device's peak bytes in use where it reports them (GPU, TPU), else
    the process's maximum resident set size (CPU).

    Example:
      >>> from experiments.timing import peak_memory
      >>> nbytes, kind = peak_memory()
      >>> nbytes > 0 and kind in ("device peak", "process max RSS")
      True
    """
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak"
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"
