"""Test helpers: symmetric matrices with prescribed spectra."""

import jax.numpy as jnp
import numpy as np


def random_orthogonal(seed: int, n: int, dtype=np.float64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(dtype)


def matrix_with_spectrum(eigs, seed: int = 0, dtype=np.float64):
    """``(A, Q)`` with ``A = Q diag(eigs) Q^T`` for a random orthogonal ``Q`` (columns)."""
    eigs = np.asarray(eigs, np.float64)
    q = random_orthogonal(seed, eigs.shape[0])
    a = (q * eigs) @ q.T
    a = 0.5 * (a + a.T)
    return jnp.asarray(a, dtype), q


def spectrum_of_kind(kind: str, n: int, seed: int) -> np.ndarray:
    """Eigenvalues: 'spread', 'clustered', 'negative' (outliers both sides), 'near_degenerate'."""
    rng = np.random.default_rng(seed)
    if kind == "spread":
        return np.sort(rng.uniform(-5.0, 10.0, n))
    if kind == "clustered":
        centres = np.array([-2.0, 0.0, 1.0, 7.0])
        return np.sort(centres[rng.integers(0, 4, n)] + 1e-3 * rng.standard_normal(n))
    if kind == "negative":
        bulk = 0.05 * rng.standard_normal(n)
        bulk[:2] = [-3.0, -1.5]
        bulk[-2:] = [12.0, 4.0]
        return np.sort(bulk)
    if kind == "near_degenerate":
        base = np.sort(rng.uniform(-3.0, 3.0, (n + 1) // 2))
        pairs = np.concatenate([base, base + 1e-5])[:n]
        return np.sort(pairs)
    raise ValueError(kind)
