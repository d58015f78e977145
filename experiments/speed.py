"""Speed of the core engine: dataset gradient vs HVP vs Lanczos, on a small CNN and an MLP.

    python -m experiments.speed                 # N = 512 CIFAR-shaped samples, batch 128, m = 50
    python -m experiments.speed --drivers host compiled --m 50 --n 512

For each model it prints the time of one dataset gradient (all batches in one jitted function),
one dataset HVP (host-driven, compiled in a ``lax.scan``, and unrolled: all batches in one jitted
function, no XLA loop, the floor on CPU), their ratios, the Lanczos time per driver (first run,
with compilation, and warm), and Lanczos / (m x HVP): how much the re-orthogonalisation and
bookkeeping add on top of the HVPs. It also prints the re-orthogonalisation floor: two reads of
exactly the filled rows of the basis per step (the dots, then the update), timed on this machine,
and the ratio that floor alone gives (no step that re-orthogonalises its vector before the next
HVP can go below it; see the notes in :mod:`jaxspec.lanczos`).

Absolute times on a shared machine mean little (the load average is printed) and the load drifts
within seconds, so the HVP variants are timed in turn, round after round, and each warm Lanczos
run is paired with its own HVP timing. Peak memory: the process's max RSS on CPU, the device's
peak bytes in use on a GPU.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import jaxspec
from experiments._timing import best_time, peak_memory


def _time(fn, *args, repeat: int = 5) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    return best_time(fn, *args, repeats=repeat)


def _race(fns: dict, rounds: int = 7) -> dict:
    """The best time of each zero-argument function, timed in turn, round after round: on a
    shared machine the load drifts within seconds, and timing one function after the other
    would put the drift into their ratio."""
    for fn in fns.values():
        jax.block_until_ready(fn())  # compile + warm up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - t)
    return best


@jax.jit
def _normalise(u):
    return u / jnp.sqrt(jnp.dot(u, u, precision="highest"))


def reorth_floor(dim: int, m: int, dtype) -> float:
    """Seconds that full re-orthogonalisation cannot go below here: over m steps, one Gram-Schmidt
    pass (``h = Q u``, then ``u - h Q``: two reads) over exactly the ``i + 1`` filled rows of
    a contiguous basis. Timed for a few row counts, fitted by a line (the cost is linear in the
    rows), and summed over the steps."""
    pass_ = jax.jit(lambda q, u: u - jnp.dot(jnp.dot(q, u, precision="highest"), q,
                                             precision="highest"))
    u = jnp.ones((dim,), dtype)
    ks = sorted({min(k, m + 1) for k in (4, 16, 32, 48)})
    ts = [_time(pass_, jnp.ones((k, dim), dtype), u) for k in ks]
    slope, icpt = np.polyfit(ks, ts, 1) if len(ks) > 1 else (ts[0] / ks[0], 0.0)
    return float(sum(icpt + slope * (i + 1) for i in range(m)))


def cnn_init(key):
    ks = jax.random.split(key, 4)
    he = lambda k, shape: jax.random.normal(k, shape) * np.sqrt(2.0 / np.prod(shape[:-1]))  # noqa: E731
    return {
        "c1": he(ks[0], (3, 3, 3, 16)),
        "c2": he(ks[1], (3, 3, 16, 32)),
        "c3": he(ks[2], (3, 3, 32, 32)),
        "fc": {"w": he(ks[3], (32, 10)), "b": jnp.zeros(10)},
    }


def cnn_apply(p, x):
    conv = lambda x, w, s: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(conv(x, p["c1"], 1))
    h = jax.nn.relu(conv(h, p["c2"], 2))
    h = jax.nn.relu(conv(h, p["c3"], 2))
    return h.mean(axis=(1, 2)) @ p["fc"]["w"] + p["fc"]["b"]


def mlp_init(key, width=256):
    ks = jax.random.split(key, 3)
    dense = lambda k, a, b: {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}  # noqa: E731
    return [dense(ks[0], 3072, width), dense(ks[1], width, width), dense(ks[2], width, 10)]


def mlp_apply(p, x):
    h = x.reshape(x.shape[0], -1)
    for layer in p[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    return h @ p[-1]["w"] + p[-1]["b"]


def make_loss(apply):
    def loss(params, batch):
        logits = apply(params, batch["image"])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=1))

    return loss


def bench(name, init, apply, args):
    key = jax.random.key(0)
    params = init(key)
    flat, unravel = ravel_pytree(params)
    P = flat.size
    rng = np.random.default_rng(0)
    data = {"image": rng.standard_normal((args.n, 32, 32, 3)).astype(np.float32),
            "label": rng.integers(0, 10, args.n).astype(np.int32)}
    loss = make_loss(apply)
    batched = jaxspec.batch_dataset(jax.tree.map(jnp.asarray, data), args.batch_size)
    v = jax.random.normal(jax.random.key(1), (P,), flat.dtype)

    nb = batched.weights.shape[0]
    batches = [jax.tree.map(lambda x: x[i], batched.batches) for i in range(nb)]

    @jax.jit
    def dataset_grad(p, batches):  # one dataset gradient, all batches in one program (unrolled)
        acc = jax.tree.map(jnp.zeros_like, p)
        for i, b in enumerate(batches):
            acc = jax.tree.map(lambda a, g: a + batched.weights[i] * g, acc, jax.grad(loss)(p, b))
        return acc

    host_mv = jaxspec.host_hessian_matvec(loss, params, batched)
    scan_mv = jaxspec.hessian_matvec(loss, params, batched)
    apply = jax.jit(lambda op, v: op(v))  # one compilation of the scan HVP, used twice
    t_hvp_scan = _time(apply, scan_mv, v, repeat=2)  # slow on CPU convs

    @jax.jit
    def unrolled(v, params, batches):  # every batch in one program, no XLA loop: the CPU floor
        t = unravel(v)
        out = jnp.zeros_like(v)
        for i, b in enumerate(batches):
            out = out + batched.weights[i] * ravel_pytree(jaxspec.hvp(loss, params, b, t))[0]
        return out

    best = _race({"grad": lambda: dataset_grad(params, batches), "host": lambda: host_mv(v),
                  "unrolled": lambda: unrolled(v, params, batches)})
    t_grad, t_hvp_host, t_hvp_unrolled = best["grad"], best["host"], best["unrolled"]
    rows = [("P (parameters)", f"{P:,}"),
            ("dataset gradient", f"{t_grad * 1e3:9.1f} ms"),
            ("dataset HVP, host-driven", f"{t_hvp_host * 1e3:9.1f} ms"),
            ("dataset HVP, lax.scan", f"{t_hvp_scan * 1e3:9.1f} ms"),
            ("dataset HVP, unrolled (floor)", f"{t_hvp_unrolled * 1e3:9.1f} ms"),
            ("HVP(host) / gradient", f"{t_hvp_host / t_grad:9.2f}"),
            ("HVP(host) / HVP(unrolled)", f"{t_hvp_host / t_hvp_unrolled:9.2f}")]
    v0 = jax.random.normal(jax.random.key(2), (P,), flat.dtype)
    for driver in args.drivers:
        mv = host_mv if driver == "host" else scan_mv
        run = lambda: jaxspec.run_lanczos(mv, v0, args.m, driver=driver,  # noqa: E731
                                          block_size=args.block_size).alphas
        t = time.perf_counter()
        jax.block_until_ready(run())  # first run: includes compiling the step (or the loop)
        t_first = time.perf_counter() - t
        # Each warm run is paired with m chained HVPs (a power iteration: v <- Hv / |Hv|, Lanczos
        # without the re-orthogonalisation; each product waits for the last, as in Lanczos, and
        # neither waits on the host): both are averages over m products, taken seconds apart, so
        # neither the load drift nor a best-of-few bias gets into their ratio. The median round
        # is kept.
        hvp = mv if driver == "host" else functools.partial(apply, mv)
        rounds = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            u = v
            for _ in range(args.m):
                u = _normalise(hvp(u))
            jax.block_until_ready(u)
            t_hvps = time.perf_counter() - t
            t = time.perf_counter()
            jax.block_until_ready(run())
            rounds.append((time.perf_counter() - t, t_hvps))
        t_lz, t_hvps = sorted(rounds, key=lambda r: r[0] / r[1])[len(rounds) // 2]
        rows += [(f"Lanczos m={args.m}, {driver}, first", f"{t_first:9.2f} s"),
                 (f"Lanczos m={args.m}, {driver}, warm", f"{t_lz:9.2f} s"),
                 ("  m chained HVPs, same round", f"{t_hvps:9.2f} s"),
                 (f"  per step beyond the HVP, {driver}",
                  f"{(t_lz - t_hvps) / args.m * 1e3:9.1f} ms"),
                 (f"Lanczos / (m x HVP), {driver}",
                  f"{t_lz / t_hvps:9.2f}  (rounds: "
                  f"{' '.join(f'{a / b:.2f}' for a, b in rounds)})")]
    peak_bytes, peak_kind = peak_memory()  # before the floor's own test arrays are allocated
    floor = reorth_floor(P, args.m, flat.dtype)
    rows.append(("re-orth floor per step (2 reads)", f"{floor / args.m * 1e3:9.1f} ms"))
    if args.drivers:  # the best ratio any exact full re-orthogonalisation can reach here
        rows.append(("  Lanczos / (m x HVP) at the floor", f"{(t_hvps + floor) / t_hvps:9.2f}"))
    rows.append(("peak memory", f"{peak_kind} {peak_bytes / 2**20:.0f} MiB"))
    rows.append(("Krylov basis (m+1) x P floats", f"{(args.m + 1) * P * 4 / 2**20:9.1f} MiB"))
    print(f"\n== {name}  (N={args.n}, batch={args.batch_size}, backend={jax.default_backend()}, "
          f"devices={jax.device_count()})")
    for k, val in rows:
        print(f"  {k:34s} {val}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--m", type=int, default=50)
    ap.add_argument("--block-size", type=int, default=16,
                    help="basis rows per re-orthogonalisation block")
    ap.add_argument("--repeat", type=int, default=5,
                    help="warm Lanczos runs, each paired with an HVP timing (the machine is noisy)")
    ap.add_argument("--models", nargs="+", default=["cnn", "mlp"], choices=["cnn", "mlp"])
    ap.add_argument("--drivers", nargs="+", default=["host", "compiled"],
                    choices=["host", "compiled"])
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    models = {"cnn": (cnn_init, cnn_apply), "mlp": (mlp_init, mlp_apply)}
    for name in args.models:
        bench(name, *models[name], args)


if __name__ == "__main__":
    main()
