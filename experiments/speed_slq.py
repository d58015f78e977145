"""Section 5.2's speed claim: one probe without smoothing against ten probes with a Gaussian kernel.

    python -m experiments.speed_slq                        # n = 2,000, 3 seeds: ~2 min, 2 cores
    python -m experiments.speed_slq --dim 300 --seeds 2    # a few seconds

Granziol et al. (2020), section 5.2: other works average SLQ over "a set of random vectors,
typically 10" and smooth the result with a Gaussian kernel; the paper uses a single vector and a
stem plot, avoiding "the x10 increased computational cost". Since one probe and ten probes give
the same kind of estimate only if they are asked for the same thing, the comparison fixes what
both must deliver.

**Equal resolution of the extremal eigenvalues.** Both methods must place the largest and the
smallest eigenvalue within ``tol * (lambda_max - lambda_min)`` of the truth, for every one of
``seeds`` probe seeds:

* *single* (the paper): one probe, ``m`` Lanczos steps; the estimates are the outermost Ritz
  values (the stem plot's outermost nodes).
* *smoothed* (Papyan 2018, Ghorbani et al. 2019): ``num_vectors`` probes of ``m`` steps each,
  merged by :func:`jaxspec.slq`, smoothed by :meth:`jaxspec.Spectrum.density` with a kernel of
  width ``sigma = tol * (lambda_max - lambda_min)`` (a wider kernel cannot resolve the edges to
  ``tol``) on a grid of spacing ``sigma / 10``; the estimates are the outermost local maxima of
  the density, where a reader of the smoothed plot sees the outliers' peaks.

For each method the smallest ``m`` meeting the tolerance is found by bisection (an outermost
Ritz value moves monotonically outwards as ``m`` grows). Each probe runs SLQ once, for
``max_steps`` steps; its ``m``-step spectrum for every smaller ``m`` is the leading block of the
same Lanczos matrix, rebuilt from the nodes and weights (:func:`jacobi_matrix`), so the search
compiles nothing per ``m``. The cost is the number of
matrix-vector products, ``num_vectors * m``, and the wall time of the SLQ call (and of the
density) at that ``m``, compiled, the best of ``repeats`` runs. The matrix is dense with a
prescribed, Hessian-like spectrum (:func:`hessian_like_eigenvalues`: a spike at the origin, a
bulk, and outliers on both sides), so the truth is known; the matvec is a jitted ``A @ v``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "compare_methods",
    "extremal_estimate",
    "hessian_like_eigenvalues",
    "jacobi_matrix",
    "main",
    "prescribed_matrix",
    "steps_needed",
    "to_markdown",
]


def hessian_like_eigenvalues(dim: int, /, *, seed: int = 0) -> np.ndarray:
    """A spectrum shaped like the paper's: 70% near the origin, a bulk, outliers on both sides.

    Four positive outliers (20, 9, 5, 3.5) and one negative (-2.5); 70% of the rest within
    1e-3 of 0, the others on a semicircle over [-0.5, 1.5].

    Example:
      >>> ev = hessian_like_eigenvalues(100)
      >>> ev.shape, float(ev.max()), float(ev.min())
      ((100,), 20.0, -2.5)
    """
    rng = np.random.default_rng(seed)
    outliers = np.array([20.0, 9.0, 5.0, 3.5, -2.5])
    rest = dim - outliers.size
    n_zero = int(0.7 * rest)
    zero = rng.normal(0.0, 3e-4, n_zero).clip(-1e-3, 1e-3)
    r = np.sqrt(rng.uniform(0.0, 1.0, rest - n_zero))  # semicircle: radius sqrt(U), angle U
    bulk = 0.5 + np.cos(np.pi * rng.uniform(0.0, 1.0, rest - n_zero)) * r
    return np.sort(np.concatenate([outliers, zero, bulk]))


def prescribed_matrix(eigenvalues: Any, /, *, seed: int = 0) -> np.ndarray:
    """``Q diag(eigenvalues) Q^T`` with ``Q`` a random orthogonal matrix (float64).

    Example:
      >>> A = prescribed_matrix([1.0, 2.0, 3.0])
      >>> np.allclose(A, A.T), np.round(np.linalg.eigvalsh(A), 6).tolist()
      (True, [1.0, 2.0, 3.0])
    """
    ev = np.asarray(eigenvalues, np.float64)
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(ev.size, ev.size)))
    q = q * np.sign(np.diag(r))
    return (q * ev) @ q.T


def extremal_estimate(spectrum: Any, /, *, sigma: float | None = None) -> tuple[float, float]:
    """``(lambda_min, lambda_max)`` read off a spectrum: outermost nodes, or smoothed peaks.

    Without ``sigma``: the outermost Ritz values. With it: the outermost local maxima of
    ``spectrum.density`` on a grid of spacing ``sigma / 10``.

    Example:
      >>> from jaxspec import Spectrum
      >>> s = Spectrum([-1.0, 0.0, 0.01, 4.0, 4.02], [0.05, 0.45, 0.4, 0.05, 0.05])
      >>> extremal_estimate(s)
      (-1.0, 4.02)
      >>> lo, hi = extremal_estimate(s, sigma=0.05)  # the two top nodes merge into one peak
      >>> round(lo, 3), round(hi, 3)
      (-1.0, 4.01)
    """
    nodes = np.asarray(spectrum.nodes, np.float64)
    if sigma is None:
        return float(nodes.min()), float(nodes.max())
    grid = np.arange(nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, sigma / 10)
    d = spectrum.density(grid, sigma=sigma)
    peak = (d[1:-1] > d[:-2]) & (d[1:-1] >= d[2:]) & (d[1:-1] > 0)
    where = grid[1:-1][peak]
    return float(where.min()), float(where.max())


def jacobi_matrix(nodes: Any, weights: Any, /) -> tuple[np.ndarray, np.ndarray]:
    """The Lanczos tridiagonal ``(alphas, betas)`` of a discrete measure (inverse of SLQ).

    Lanczos on ``diag(nodes)`` from ``sqrt(weights)`` (full re-orthogonalisation, float64)
    rebuilds the tridiagonal ``T`` whose Gauss rule the measure is. The leading ``m x m`` block
    of ``T`` is the ``m``-step Lanczos matrix of the same probe, so one SLQ run of ``M`` steps
    gives the spectra of every ``m <= M``.

    Example:
      >>> a, b = jacobi_matrix([1.0, 2.0, 4.0], [0.2, 0.5, 0.3])
      >>> T = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
      >>> ev, vec = np.linalg.eigh(T)
      >>> np.round(ev, 12).tolist(), np.round(vec[0] ** 2, 12).tolist()
      ([1.0, 2.0, 4.0], [0.2, 0.5, 0.3])
    """
    theta = np.asarray(nodes, np.float64)
    w = np.asarray(weights, np.float64)
    basis = np.zeros((theta.size, theta.size))
    q = np.sqrt(w / w.sum())
    alphas, betas = [], []
    for k in range(theta.size):
        basis[k] = q
        z = theta * q
        alphas.append(float(q @ z))
        for _ in range(2):  # two Gram-Schmidt passes: the measure's nodes may be very close
            z = z - basis[: k + 1].T @ (basis[: k + 1] @ z)
        beta = float(np.linalg.norm(z))
        if k == theta.size - 1 or beta <= 1e-12 * max(1.0, float(np.abs(theta).max())):
            break
        betas.append(beta)
        q = z / beta
    return np.array(alphas), np.array(betas)


def _leading(alphas: np.ndarray, betas: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    m = min(m, alphas.size)
    t = np.diag(alphas[:m]) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)
    ev, vec = np.linalg.eigh(t)
    return ev, vec[0] ** 2


def _probe_runs(matvec: Callable, dim: int, max_steps: int, keys: Sequence[Any]) -> list:
    import jax.numpy as jnp

    from jaxspec import slq

    return [jacobi_matrix(s.nodes, s.weights) for s in
            (slq(matvec, k, dim, max_steps, dtype=jnp.float32) for k in keys)]


def _estimate(runs: list, m: int, sigma: float | None) -> tuple[float, float]:
    from jaxspec import Spectrum

    parts = [_leading(a, b, m) for a, b in runs]
    nodes = np.concatenate([p[0] for p in parts])
    weights = np.concatenate([p[1] for p in parts]) / len(parts)
    return extremal_estimate(Spectrum(nodes, weights), sigma=sigma)


def steps_needed(runs: Sequence[list], truth: tuple[float, float], /, *, tol: float,
                 smooth: bool = False) -> int | None:
    """The smallest ``m`` with both edges within ``tol * range`` for every seed (None: none).

    ``runs[i]`` holds seed ``i``'s probes as :func:`jacobi_matrix` tridiagonals of one SLQ run
    each (one probe: the paper's method; several and ``smooth``: the smoothed one).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import slq
      >>> ev = hessian_like_eigenvalues(120)
      >>> A = jnp.asarray(prescribed_matrix(ev), jnp.float32)
      >>> s = slq(jax.jit(lambda v: A @ v), jax.random.key(0), 120, 60, dtype=jnp.float32)
      >>> m = steps_needed([[jacobi_matrix(s.nodes, s.weights)]], (ev.min(), ev.max()), tol=1e-2)
      >>> 2 <= m <= 60
      True
    """
    lo_true, hi_true = float(truth[0]), float(truth[1])
    width = hi_true - lo_true
    sigma = tol * width if smooth else None

    def ok(m: int) -> bool:
        for probes in runs:
            lo, hi = _estimate(probes, m, sigma)
            if max(abs(lo - lo_true), abs(hi - hi_true)) > tol * width:
                return False
        return True

    top = min(a.size for probes in runs for a, _ in probes)
    if not ok(top):
        return None
    low, high = 0, top  # ok(high) holds; the smallest such m, by bisection
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def compare_methods(dim: int = 2000, /, *, tol: float = 1e-3, num_vectors: int = 10,
                    seeds: int = 3, repeats: int = 3, max_steps: int = 100,
                    seed: int = 0) -> dict[str, Any]:
    """Steps, matvecs and wall time of both methods at equal resolution; their ratios.

    Example:
      >>> r = compare_methods(120, tol=1e-2, num_vectors=3, seeds=1, repeats=1, max_steps=60)
      >>> r["single"]["matvecs"] == r["single"]["steps"]
      True
      >>> r["smoothed"]["matvecs"] == 3 * r["smoothed"]["steps"]
      True
      >>> r["matvec_ratio"] > 1
      True
    """
    import jax
    import jax.numpy as jnp

    from jaxspec import slq

    ev = hessian_like_eigenvalues(dim, seed=seed)
    a = jnp.asarray(prescribed_matrix(ev, seed=seed), jnp.float32)
    matvec = jax.jit(lambda v: a @ v)
    truth = (float(ev.min()), float(ev.max()))
    sigma = tol * (truth[1] - truth[0])
    out: dict[str, Any] = {"dim": dim, "tol": tol, "num_vectors": num_vectors, "seeds": seeds,
                           "truth": truth, "sigma": sigma}
    keys = jax.random.split(jax.random.key(seed), seeds * num_vectors).reshape(seeds, -1)
    probes = [_probe_runs(matvec, dim, max_steps, ks) for ks in keys]
    for name, nv, smooth in (("single", 1, False), ("smoothed", num_vectors, True)):
        m = steps_needed([p[:nv] for p in probes], truth, tol=tol, smooth=smooth)
        row: dict[str, Any] = {"steps": m, "matvecs": None if m is None else nv * m,
                               "time_s": None}
        if m is not None:
            def once(m=m, nv=nv, smooth=smooth):
                spec = slq(matvec, jax.random.key(seed), dim, m, num_vectors=nv,
                           dtype=jnp.float32)
                return extremal_estimate(spec, sigma=sigma if smooth else None)

            once()  # compiles for this m
            row["time_s"] = _best_time(once, repeats)
        out[name] = row
    s, k = out["single"], out["smoothed"]
    out["matvec_ratio"] = (k["matvecs"] / s["matvecs"]
                           if s["matvecs"] and k["matvecs"] else None)
    out["time_ratio"] = k["time_s"] / s["time_s"] if s["time_s"] and k["time_s"] else None
    return out


def to_markdown(result: dict[str, Any], /) -> str:
    """The comparison as a Markdown table.

    Example:
      >>> r = {"dim": 10, "tol": 0.01, "num_vectors": 10, "seeds": 1, "truth": (-1.0, 2.0),
      ...      "sigma": 0.03, "single": {"steps": 5, "matvecs": 5, "time_s": 0.01},
      ...      "smoothed": {"steps": 4, "matvecs": 40, "time_s": 0.08},
      ...      "matvec_ratio": 8.0, "time_ratio": 8.0}
      >>> to_markdown(r).splitlines()[-1]
      '| ratio (smoothed / single) | - | 8 | 8 |'
    """
    from jaxspec.report import fmt, md_row as row

    lines = [f"P = {result['dim']:,}; both edges within tol = {result['tol']:g} x range of the "
             f"truth {result['truth'][0]:.4g} .. {result['truth'][1]:.4g} for {result['seeds']} "
             f"probe seed(s); kernel sigma = {result['sigma']:.3g}", "",
             row(["method", "steps m per probe", "matvecs", "wall time (s)"]),
             row(["---"] * 4)]
    for name, label in (("single", "1 probe, no smoothing (paper)"),
                        ("smoothed", f"{result['num_vectors']} probes + Gaussian kernel")):
        r = result[name]
        lines.append(row([label, fmt(r["steps"]), fmt(r["matvecs"]), fmt(r["time_s"], ".3g")]))
    lines.append(row(["ratio (smoothed / single)", "-", fmt(result["matvec_ratio"], ".3g"),
                      fmt(result["time_ratio"], ".3g")]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m experiments.speed_slq [--dim N] [--tol T] ...``.

    Example:
      >>> import contextlib, io
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     code = main(["--dim", "120", "--tol", "0.01", "--num-vectors", "3", "--seeds", "1",
      ...                  "--repeats", "1", "--max-steps", "60"])
      >>> code, out.getvalue().splitlines()[-1].startswith("| ratio (smoothed / single) |")
      (0, True)
    """
    parser = argparse.ArgumentParser(
        prog="python -m experiments.speed_slq",
        description="One SLQ probe without smoothing vs several probes with a Gaussian kernel, "
                    "at equal resolution of the extremal eigenvalues (paper, section 5.2).")
    parser.add_argument("--dim", type=int, default=2000, help="matrix size P")
    parser.add_argument("--tol", type=float, default=1e-3,
                        help="tolerance on both edges, as a fraction of the spectral range")
    parser.add_argument("--num-vectors", type=int, default=10, help="probes of the smoothed SLQ")
    parser.add_argument("--seeds", type=int, default=3, help="probe seeds that must all pass")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best taken)")
    parser.add_argument("--max-steps", type=int, default=100,
                        help="steps of each probe's SLQ run (the largest m tried)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the matrix and probes")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    result = compare_methods(args.dim, tol=args.tol, num_vectors=args.num_vectors,
                             seeds=args.seeds, repeats=args.repeats, max_steps=args.max_steps,
                             seed=args.seed)
    if args.json:
        from jaxspec.atomic import write_text
        from jaxspec.io import jsonable

        write_text(args.json, json.dumps(jsonable(result), indent=1))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    from jaxspec.compiler import cache_compilations

    cache_compilations()  # a later run loads the compiled programs from disk
    sys.exit(main())
