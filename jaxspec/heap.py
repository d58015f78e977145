"""The host's C heap: memory that XLA has freed, handed back to the system before a large
allocation.

On the CPU, XLA's compilations and the programs' buffers are allocated with the C library's
``malloc``. glibc keeps what is freed in its heap: it returns only the top of the heap to the
system, and once a block of some megabytes is freed it raises its ``mmap`` threshold, so that
later blocks of that size come from the heap too. A process's resident memory therefore stays
near its high-water mark after XLA compiles a model's product, though that memory is free. A
Lanczos run's Krylov basis (``(m + 1) x P`` floats) is allocated afresh beside it, and the two
add up. :func:`release_freed_memory` asks glibc to return the free memory (``malloc_trim``);
:func:`release_before` does so where the allocation to come is large and lives in host memory.
The Lanczos drivers call it before they allocate the basis and once the first step's programs
are compiled; :func:`jaxspec.eigsh` before it allocates its basis. It trims only where JAX has
compiled or loaded a program since the last trim: otherwise what the heap holds free is what
the last run's products freed, which this run's products reuse (a trim would walk the heap for
milliseconds and hand those pages back, to be faulted in again). Where the C library has no
``malloc_trim`` (macOS, musl) nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
import sys

import jax

__all__ = ["TRIM_BYTES", "release_before", "release_freed_memory"]

# Allocations from this size up are worth a trim: the trim walks the heap (milliseconds), which
# a step of a Lanczos run on a basis this large outlasts many times.
TRIM_BYTES = 64 * 2**20


# JAX's event for each program it compiles or loads from its disk cache
# (jax._src.dispatch.BACKEND_COMPILE_EVENT)
_PROGRAM_EVENT = "/jax/core/compile/backend_compile_duration"

_programs = 0  # programs compiled or loaded since the listener below was registered
_programs_at_trim = None  # ... when release_before last trimmed (None: it never did)


@functools.cache
def _count_programs() -> None:
    """Registers (once) the listener that counts the programs JAX compiles or loads."""
    def listener(event, duration, **kwargs):
        global _programs
        if event == _PROGRAM_EVENT:
            _programs += 1

    jax.monitoring.register_event_duration_secs_listener(listener)


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process runs on
    except (OSError, AttributeError):  # no malloc_trim: not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Returns the free memory of the C heap to the system (glibc's ``malloc_trim(0)``, which
    also releases the free pages inside the heap). True if any memory was returned; False where
    none was or the C library cannot (not glibc).

    Example:
      >>> from jaxspec.heap import release_freed_memory
      >>> isinstance(release_freed_memory(), bool)
      True
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def release_before(nbytes: int) -> bool:
    """:func:`release_freed_memory` before allocating ``nbytes``, if they are at least
    :data:`TRIM_BYTES`, the default backend keeps its arrays in host memory (the CPU), and JAX
    has compiled or loaded a program since the last such release (or there was none); else
    nothing (False).

    Example:
      >>> from jaxspec.heap import release_before
      >>> release_before(1024)   # too small to be worth the walk over the heap
      False
    """
    global _programs_at_trim
    if nbytes < TRIM_BYTES or jax.default_backend() != "cpu":
        return False
    _count_programs()
    if _programs_at_trim == _programs:  # the free memory is the last run's, reused by this one
        return False
    _programs_at_trim = _programs
    return release_freed_memory()
