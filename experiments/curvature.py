"""What ``experiments.spectrum`` computes beside the SLQ spectrum: the noise variance ``sigma^2``
of Theorem 1, top-k eigenpairs, the trace, and the spectra of parameter blocks (``--top-k``,
``--trace``, ``--blocks``).

Each is written next to the spectrum, with the spectrum's settings, as ``<name>_topk.json``,
``<name>_trace.json`` and ``<name>_blocks.{json,png}``, and summarised in the spectrum's meta.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import jaxspec
from jaxspec import rmt
from jaxspec.atomic import write_text
from jaxspec.blocks import block_spectra
from jaxspec.compiler import jit
from jaxspec.io import dumps, spectrum_to_dict
from jaxspec.trace import hutch_plus_plus

__all__ = ["curvature_extras", "estimate_sigma2"]


def curvature_extras(op: jaxspec.CurvatureOperator, key: jax.Array, prefix: str, /, *,
                     top_k: int = 0, trace: bool = False, blocks: Sequence[str] = (),
                     num_steps: int = 30, tol: float = 1e-4, trace_matvecs: int = 30,
                     settings: dict | None = None, plot: bool = True) -> dict[str, Any]:
    """Computes and writes the extras asked for; returns their summary for the spectrum's meta.

    Args:
      op: the curvature operator of the spectrum.
      key: PRNG key (split for the eigensolver's start, the trace probes, the block probes).
      prefix: path prefix of the files (the spectrum's path without ``.json``).
      top_k: the ``top_k`` largest eigenpairs by thick-restart Lanczos (:func:`jaxspec.eigsh`,
        relative residual ``tol``); 0: none.
      trace: the trace by Hutch++ with ``trace_matvecs`` products
        (:func:`jaxspec.trace.hutch_plus_plus`).
      blocks: regexes over parameter paths: one SLQ spectrum of ``num_steps`` steps for the
        diagonal block of the parameters each matches (:func:`jaxspec.blocks.block_spectra`).
      settings: recorded in every file.
      plot: draw the block spectra side by side (``<prefix>_blocks.png``).

    Example:
      >>> import jax, jax.numpy as jnp, os, tempfile, jaxspec
      >>> from experiments.curvature import curvature_extras
      >>> loss = lambda p, x: jnp.mean(x) * (jnp.sum(p["a"] ** 2) + 3 * jnp.sum(p["b"] ** 2))
      >>> op = jaxspec.curvature_operator(loss, {"a": jnp.ones(3), "b": jnp.ones(2)},
      ...                                 jaxspec.batch_dataset(jnp.ones(4), 2))
      >>> prefix = os.path.join(tempfile.mkdtemp(), "empirical_e0002")
      >>> out = curvature_extras(op, jax.random.key(0), prefix, top_k=1, trace=True,
      ...                        blocks=["a", "b"], trace_matvecs=15, plot=False)
      >>> # 15 products over P = 5: Hutch++'s sketch spans everything, its trace is exact
      >>> [round(v, 4) for v in out["top_k"]["values"]], round(out["trace"]["value"], 4)
      ([6.0], 18.0)
      >>> {k: round(v, 4) for k, v in out["blocks"]["lambda_max"].items()}
      {'a': 2.0, 'b': 6.0}
    """
    k_eig, k_trace, k_blocks = jax.random.split(key, 3)
    out: dict[str, Any] = {}
    settings = dict(settings or {})
    if top_k:
        t = time.perf_counter()
        v0 = jax.random.normal(k_eig, (op.size,), op.dtype)
        res = jaxspec.eigsh(op, v0, int(top_k), which="largest", tol=tol)
        out["top_k"] = {"values": res.values.tolist(), "residuals": res.residuals.tolist(),
                        "converged": res.converged.tolist(), "num_matvecs": res.num_matvecs,
                        "tol": tol, "time_s": time.perf_counter() - t}
        write_text(prefix + "_topk.json", dumps({**out["top_k"], "settings": settings}))
    if trace:
        t = time.perf_counter()
        est = hutch_plus_plus(op, k_trace, op.size, num_matvecs=int(trace_matvecs))
        out["trace"] = {"value": float(est.value), "stderr": float(est.stderr),
                        "num_matvecs": int(est.num_matvecs), "method": "hutch++",
                        "time_s": time.perf_counter() - t}
        write_text(prefix + "_trace.json", dumps({**out["trace"], "settings": settings}))
    if blocks:
        t = time.perf_counter()
        spectra = block_spectra(op, list(blocks), k_blocks, int(num_steps))
        out["blocks"] = {"regexes": list(blocks), "time_s": time.perf_counter() - t,
                         "lambda_max": {n: s.lambda_max for n, s in spectra.items()},
                         "lambda_min": {n: s.lambda_min for n, s in spectra.items()}}
        write_text(prefix + "_blocks.json", dumps(
            {"settings": settings, "spectra": {n: spectrum_to_dict(s) for n, s in spectra.items()}}))
        if plot:
            from jaxspec.plotting import block_spectra_plot

            block_spectra_plot(spectra, path=prefix + "_blocks.png")
    return out


def estimate_sigma2(loss_fn: Callable, params: Any, batched: Any, full_matvec: Callable,
                    key: jax.Array, /, *, num_probes: int = 1) -> dict[str, Any] | None:
    """Per-sample Hessian noise variance ``sigma^2`` from the batch HVPs of the empirical set.

    :func:`jaxspec.rmt.estimate_noise_variance` over the full batches of ``batched`` (host
    NumPy), with ``full_matvec`` as ``H_N v``: ``num_probes`` x (one pass + one HVP). With
    BatchNorm in batch mode a "sample" is a batch's contribution; the estimate is still the
    variance that enters Theorem 1 for these batches. ``None`` with fewer than 2 full batches.

    Example:
      A quadratic loss whose per-sample Hessians ``E_i`` are Wigner matrices (``sigma^2 = 1``):

      >>> import jax, jax.numpy as jnp, numpy as np
      >>> import jaxspec
      >>> from experiments.curvature import estimate_sigma2
      >>> E = np.random.default_rng(0).normal(size=(64, 40, 40)).astype(np.float32)
      >>> E = np.triu(E) + np.swapaxes(np.triu(E, 1), 1, 2)
      >>> loss = lambda w, b: 0.5 * jnp.mean(jnp.einsum("i,nij,j->n", w, b["E"], w))
      >>> batched = jaxspec.batch_dataset({"E": E}, 8)  # 8 batches of 8
      >>> full = lambda v: E.mean(0) @ v  # H_N v
      >>> r = estimate_sigma2(loss, jnp.zeros(40), batched, full, jax.random.key(0),
      ...                     num_probes=4)
      >>> r["sigma2_batches"], r["sigma2_probes"], bool(abs(r["sigma2"] - 1.0) < 0.15)
      (8, 4, True)
      >>> one_batch = jaxspec.batch_dataset({"E": E}, 64)
      >>> print(estimate_sigma2(loss, jnp.zeros(40), one_batch, full, jax.random.key(0)))
      None
    """
    weights = np.asarray(batched.weights)
    full = [b for b in range(weights.shape[0] if batched.batches is not None else 0)
            if weights[b] != 0]
    if len(full) < 2 or num_probes < 1:
        return None
    flat, unravel = ravel_pytree(params)
    bs = int(np.shape(jax.tree.leaves(batched.batches)[0])[1])
    n = jaxspec.num_samples(batched)
    one = jit(lambda p, b, v: ravel_pytree(jaxspec.hvp(loss_fn, p, b, unravel(v)))[0])

    def hvp_on_batch(i, v):
        return one(params, jax.tree.map(lambda x: x[full[i]], batched.batches), v)

    probes = jax.random.normal(key, (num_probes, flat.shape[0]), flat.dtype)
    t = time.perf_counter()
    def full_hvp(v):
        # Via the host: a data-parallel product lives on every device, the batch HVPs on one.
        return jnp.asarray(np.asarray(full_matvec(v)))

    res = rmt.estimate_noise_variance(hvp_on_batch, probes, num_batches=len(full),
                                      batch_size=bs, num_samples=n, full_hvp=full_hvp)
    stderr = float(res.stderr)
    return {"sigma2": float(res.sigma2), "sigma2_stderr": None if np.isnan(stderr) else stderr,
            "sigma2_probes": int(num_probes), "sigma2_batches": len(full),
            "sigma2_s": time.perf_counter() - t}
