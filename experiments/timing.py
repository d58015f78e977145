"""Timing and peak memory, shared by the speed scripts."""

from __future__ import annotations

import os
import platform
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


def machine() -> str:
    """The host in a few words: the CPU's model, the logical CPUs, and its widest x86 vector
    unit where ``/proc/cpuinfo`` names one (times of the same program differ between an AVX2
    and an AVX-512 host far more than between runs).

    Example:
      >>> from experiments.timing import machine
      >>> "CPUs" in machine()
      True
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            info = {key.strip(): value.strip()
                    for key, value in (line.split(":", 1) for line in f if ":" in line)}
        model, flags = info.get("model name", model), set(info.get("flags", "").split())
    except OSError:  # not Linux
        pass
    vector = ["AVX-512"] if "avx512f" in flags else ["AVX2"] if "avx2" in flags else []
    return ", ".join([model, f"{os.cpu_count()} CPUs", *vector])


def load_average() -> str:
    """The system's load averages over 1, 5 and 15 minutes, for a script's output.

    Example:
      >>> from experiments.timing import load_average
      >>> load_average().startswith("load average ")
      True
    """
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def header() -> str:
    """The first line of a speed script's output: JAX's version, the device, the host
    (:func:`machine`) and the load (:func:`load_average`).

    Example:
      >>> from experiments.timing import header
      >>> header().startswith("jax ") and "load average" in header()
      True
    """
    import jax

    return (f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({machine()}); "
            f"{load_average()}")
