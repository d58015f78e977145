"""jaxspec.heap: free C-heap memory goes back to the system, and the Lanczos drivers ask for it
where a large basis is about to be allocated."""

import ctypes

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxspec.heap as heap
from jaxspec import Spectrum, eigsh, run_lanczos

pytestmark = pytest.mark.usefixtures("strict_promotion")


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(heap._malloc_trim() is None, reason="the C library has no malloc_trim")
def test_release_returns_free_heap_pages_to_the_system():
    """128 MiB in 64 KiB blocks (below glibc's mmap threshold: from the heap), touched, then
    freed but for the last, which pins the top of the heap: free() cannot return the rest,
    release_freed_memory must."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 64 * 1024, 2048
    blocks = [libc.malloc(size) for _ in range(count)]
    try:
        for b in blocks:
            ctypes.memset(b, 1, size)
        for b in blocks[:-1]:
            libc.free(b)
        before = _rss_bytes()
        assert heap.release_freed_memory()
        released = before - _rss_bytes()
    finally:
        libc.free(blocks[-1])
    assert released > 0.5 * size * count, f"released {released / 2**20:.1f} MiB of 128"


@pytest.fixture
def releases(monkeypatch):
    """The trims release_before makes (replaced by a counter that returns True), from a state in
    which it has never trimmed."""
    calls = []
    monkeypatch.setattr(heap, "_trim", lambda: calls.append(1) or True)
    monkeypatch.setattr(heap, "_programs_at_trim", None)
    return calls


def test_small_allocations_do_not_walk_the_heap(releases):
    assert not heap.release_before(heap.TRIM_BYTES - 1) and not releases
    assert heap.release_before(heap.TRIM_BYTES) == (jax.default_backend() == "cpu")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="only the CPU keeps arrays in the heap")
def test_the_heap_is_walked_again_only_after_a_program_is_compiled(releases):
    assert heap.release_before(heap.TRIM_BYTES) and len(releases) == 1
    # nothing compiled since: what is free is the last run's, which the next one reuses
    assert not heap.release_before(heap.TRIM_BYTES) and len(releases) == 1
    jax.jit(lambda x: x * 3.25 - 1.5)(np.float32(2.0)).block_until_ready()  # a new program
    assert heap.release_before(heap.TRIM_BYTES) and len(releases) == 2


@pytest.mark.parametrize("driver, chunk_size, expected", [
    # before the basis and after the first step (which compiles); the next runs compile nothing
    ("host", None, (2, 2, 2)),
    ("host", 2, (2, 2, 2)),
    # before the basis; the first run compiles its programs after that, so the second run
    # walks the heap once more, for the memory those compilations freed
    ("compiled", None, (1, 2, 2)),
])
def test_drivers_release_before_the_basis_with_the_same_result(monkeypatch, releases, driver,
                                                               chunk_size, expected):
    A = jnp.diag(jnp.arange(1.0, 31.0))
    v0 = jnp.ones(30)
    matvec = jax.jit(lambda v: A @ v)  # a new program: the first run compiles it
    monkeypatch.setattr(heap, "TRIM_BYTES", 0)  # every basis counts as large
    runs, counts = [], []
    for _ in range(3):
        runs.append(run_lanczos(matvec, v0, 6, driver=driver, chunk_size=chunk_size))
        counts.append(len(releases))
    assert tuple(counts) == (expected if jax.default_backend() == "cpu" else (0, 0, 0))
    for run in runs[1:]:
        np.testing.assert_array_equal(Spectrum.from_lanczos(run).nodes,
                                      Spectrum.from_lanczos(runs[0]).nodes)


def test_eigsh_releases_before_its_basis_with_the_same_result(monkeypatch, releases):
    A = jnp.diag(jnp.arange(1.0, 31.0))
    plain = eigsh(lambda v: A @ v, jnp.ones(30), 2, driver="host")  # too small: none
    monkeypatch.setattr(heap, "TRIM_BYTES", 0)
    monkeypatch.setattr(heap, "_programs_at_trim", None)
    released = eigsh(lambda v: A @ v, jnp.ones(30), 2, driver="host")
    assert len(releases) == (1 if jax.default_backend() == "cpu" else 0)
    np.testing.assert_array_equal(released.values, plain.values)


def _spare_pointers() -> list:
    return [a.unsafe_buffer_pointer() for arrays in heap._spare.values() for a in arrays]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the spare basis is the CPU's")
def test_the_next_run_writes_the_last_runs_basis_in_place():
    """The host driver keeps a finished run's blocks; the next run of the same shapes zeroes
    them in place (the same buffers: donated, and written by a where XLA cannot fold) with the
    same results as fresh blocks, also where it stops early and leaves rows unwritten."""
    heap.release_freed_memory()
    full = jnp.diag(jnp.arange(1.0, 41.0))
    few = jnp.diag(jnp.repeat(jnp.array([1.0, 2.0, 3.0]), jnp.array([10, 15, 15]),
                              total_repeat_length=40))  # three eigenvalues: stops at step 3
    v0 = jnp.linspace(1.0, 2.0, 40)

    def run(A):
        return run_lanczos(jax.jit(lambda v: A @ v), v0, 20, driver="host", block_size=8,
                           return_basis=True)

    fresh = run(few)
    assert int(fresh.num_valid) == 3
    run(full)  # fills every row of the blocks it leaves behind
    kept = _spare_pointers()
    assert len(kept) == 3  # 21 rows in blocks of 8
    reused = run(few)
    assert _spare_pointers() == kept
    run_lanczos(jax.jit(lambda v: few @ v), np.asarray(v0), 20, driver="host", block_size=8)
    assert _spare_pointers() == kept  # a NumPy start vector: the same device, the same blocks
    for a, b in zip(reused, fresh):
        if a is not None:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    run_lanczos(jax.jit(lambda v: full @ v), v0, 12, driver="host", block_size=8)
    assert _spare_pointers() != kept  # other shapes: new blocks
    # one block, filled exactly: the basis a run returns is still its own after the next run
    one = run_lanczos(jax.jit(lambda v: full @ v), v0, 7, driver="host", block_size=8,
                      return_basis=True)
    copy = np.array(one.basis)
    run_lanczos(jax.jit(lambda v: few @ v), v0, 7, driver="host", block_size=8)
    np.testing.assert_array_equal(np.asarray(one.basis), copy)
    heap.release_freed_memory()
    assert not heap._spare
