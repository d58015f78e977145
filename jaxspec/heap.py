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

Fresh host memory has a cost of its own: the system faults in and clears every 4 KiB page on
first touch and unmaps it on release, which for a basis of hundreds of megabytes is a
noticeable part of a run whose products are cheap. So the host
Lanczos driver keeps a finished run's basis (:func:`keep_spare`) and the next run of the same
shapes takes it (:func:`take_spare`) and writes it in place: repeated runs (an SLQ's probes,
spectra during training) hold one basis between runs, as XLA's allocator holds freed memory on
a GPU. :func:`release_freed_memory` drops it.
"""

from __future__ import annotations

import ctypes
import functools
import sys

import jax

__all__ = ["TRIM_BYTES", "keep_spare", "release_before", "release_freed_memory", "take_spare"]

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


_spare: dict = {}  # key -> the arrays kept for reuse (at most one entry)


def keep_spare(key, arrays) -> None:
    """Keeps ``arrays``, buffers a finished computation no longer reads, for the next
    :func:`take_spare` of ``key``, in place of whatever was kept: written again in place, a
    buffer costs no page faults, which fresh host memory costs on every 4 KiB page.
    :func:`release_freed_memory` drops them.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.heap import keep_spare, take_spare
      >>> keep_spare("basis", [jnp.zeros(3)])
      >>> take_spare("other") is None, take_spare("basis")   # a miss drops what was kept
      (True, None)
    """
    _spare.clear()
    _spare[key] = list(arrays)


def take_spare(key):
    """The arrays kept under ``key`` (:func:`keep_spare`), handed over once; else None, and
    what was kept under another key is dropped (its memory freed before the caller allocates).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.heap import keep_spare, take_spare
      >>> keep_spare(("basis", 3), [jnp.zeros(3)])
      >>> [a.shape for a in take_spare(("basis", 3))], take_spare(("basis", 3))
      ([(3,)], None)
    """
    found = _spare.pop(key, None)
    _spare.clear()
    return found


def _trim() -> bool:
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def release_freed_memory() -> bool:
    """Returns the free memory of the C heap to the system (glibc's ``malloc_trim(0)``, which
    also releases the free pages inside the heap), after dropping the arrays kept by
    :func:`keep_spare`. True if any memory was returned; False where none was or the C library
    cannot (not glibc).

    Example:
      >>> from jaxspec.heap import release_freed_memory
      >>> isinstance(release_freed_memory(), bool)
      True
    """
    _spare.clear()
    return _trim()


def release_before(nbytes: int) -> bool:
    """:func:`release_freed_memory` before allocating ``nbytes``, if they are at least
    :data:`TRIM_BYTES`, the default backend keeps its arrays in host memory (the CPU), and JAX
    has compiled or loaded a program since the last such release (or there was none); else
    nothing (False). The arrays :func:`keep_spare` holds are kept.

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
    return _trim()  # what keep_spare holds stays: the allocation to come may be its reuse
