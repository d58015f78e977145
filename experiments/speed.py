"""Speed of the core engine: dataset gradient vs HVP vs Lanczos, on a small CNN and an MLP.

    python -m experiments.speed                 # N = 512 CIFAR-shaped samples, batch 128, m = 50
    python -m experiments.speed --drivers host compiled --m 50 --n 512
    python -m experiments.speed --models mlp --drivers host --reorth full partial

For each model it prints the time of one dataset gradient (all batches in one jitted function),
one dataset HVP (host-driven, host-driven with every batch's product linearised once
(:meth:`jaxspec.CurvatureOperator.linearized`), compiled in a ``lax.scan``, and unrolled: all
batches in one jitted function, no XLA loop, the floor on CPU), their ratios, the Lanczos time per driver (first run,
with compilation, and warm) for each re-orthogonalisation method (``--reorth``: full, partial),
the Gram-Schmidt passes over the basis that run made, and Lanczos / (m x HVP): how much the
re-orthogonalisation and bookkeeping add on top of the HVPs. It also prints the floor of full
re-orthogonalisation: two reads of exactly the filled rows of the basis per step (the dots, then
the update), timed on this machine, and the ratio that floor alone gives (no step that
re-orthogonalises its vector before the next HVP can go below it; see the notes in
:mod:`jaxspec.lanczos`). Partial re-orthogonalisation reads the basis only at the steps that
count as passes, so it can go below that floor; what no run that allocates its basis avoids
is the time to allocate and zero it (on CPU, mostly the system clearing fresh pages), printed as
well. Last, the README's library snippet run as
written (default operator, ``slq`` with one probe) against the fastest warm Lanczos run with
the snippet's re-orthogonalisation (partial, ``slq``'s default).

Absolute times on a shared machine mean little (the load average is printed) and the load drifts
within seconds, so the HVP variants are timed in turn, round after round, and each warm Lanczos
run is paired with its own HVP timing. Peak memory: the process's max RSS on CPU, the device's
peak bytes in use on a GPU. Where a run's time goes, program by program, as JAX's profiler
records it: ``python -m experiments.speed_profile``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import jaxspec
from experiments.timing import best_time, header, peak_memory
from jaxspec.compiler import jit
from jaxspec.reorth import METHODS


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
    rows), and summed over the steps.

    Example:
      >>> import jax.numpy as jnp
      >>> from experiments.speed import reorth_floor
      >>> floor = reorth_floor(64, 3, jnp.float32)   # seconds, for 3 steps on 64 parameters
      >>> isinstance(floor, float) and floor > 0
      True
    """
    pass_ = jax.jit(lambda q, u: u - jnp.dot(jnp.dot(q, u, precision="highest"), q,
                                             precision="highest"))
    u = jnp.ones((dim,), dtype)
    ks = sorted({min(k, m + 1) for k in (4, 16, 32, 48)})
    ts = [_time(pass_, jnp.ones((k, dim), dtype), u) for k in ks]
    slope, icpt = np.polyfit(ks, ts, 1) if len(ks) > 1 else (ts[0] / ks[0], 0.0)
    return float(sum(max(icpt + slope * (i + 1), 0.0) for i in range(m)))  # a read is >= 0


def fresh_basis_time(dim: int, m: int, dtype, repeat: int = 3) -> float:
    """Seconds to allocate and zero a new ``(m + 1, dim)`` basis (the best of ``repeat``, each
    freed before the next): on CPU most of it is the system handing out and clearing fresh
    pages. A host-driven run pays it where no earlier run left a basis of its shapes
    (:func:`jaxspec.heap.take_spare`); later runs zero the kept one in place.

    Example:
      >>> import jax.numpy as jnp
      >>> from experiments.speed import fresh_basis_time
      >>> t = fresh_basis_time(64, 3, jnp.float32)   # seconds
      >>> isinstance(t, float) and t > 0
      True
    """
    return _time(jax.jit(lambda: jnp.zeros((m + 1, dim), dtype)), repeat=repeat)


def cnn_init(key):
    """Parameters of the small CNN of the benchmark: three 3x3 convolutions (16, 32 and 32
    channels; the last two with stride 2) and a dense layer to 10 classes, He-normal weights.

    Example:
      >>> import jax
      >>> from experiments.speed import cnn_init
      >>> p = jax.eval_shape(cnn_init, jax.random.key(0))   # shapes only, nothing computed
      >>> p["c2"].shape, p["fc"]["w"].shape, sum(x.size for x in jax.tree.leaves(p))
      ((3, 3, 16, 32), (32, 10), 14586)
    """
    ks = jax.random.split(key, 4)
    he = lambda k, shape: jax.random.normal(k, shape) * np.sqrt(2.0 / np.prod(shape[:-1]))  # noqa: E731
    return {
        "c1": he(ks[0], (3, 3, 3, 16)),
        "c2": he(ks[1], (3, 3, 16, 32)),
        "c3": he(ks[2], (3, 3, 32, 32)),
        "fc": {"w": he(ks[3], (32, 10)), "b": jnp.zeros(10)},
    }


def cnn_apply(p, x):
    """Logits of the small CNN (:func:`cnn_init`) on NHWC images: ReLU convolutions, global
    average pooling, a dense layer.

    Example:
      >>> import jax
      >>> from experiments.speed import cnn_apply, cnn_init
      >>> p = jax.eval_shape(cnn_init, jax.random.key(0))   # shapes only, nothing computed
      >>> x = jax.ShapeDtypeStruct((2, 32, 32, 3), p["c1"].dtype)
      >>> jax.eval_shape(cnn_apply, p, x).shape
      (2, 10)
    """
    conv = lambda x, w, s: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(conv(x, p["c1"], 1))
    h = jax.nn.relu(conv(h, p["c2"], 2))
    h = jax.nn.relu(conv(h, p["c3"], 2))
    return h.mean(axis=(1, 2)) @ p["fc"]["w"] + p["fc"]["b"]


def mlp_init(key, width=256):
    """Parameters of the benchmark's tanh MLP on flattened 32x32x3 images: two hidden layers of
    ``width``, 10 outputs; weights ``N(0, 1/fan_in)``, zero biases.

    Example:
      >>> import jax
      >>> from experiments.speed import mlp_init
      >>> [layer["w"].shape for layer in mlp_init(jax.random.key(0))]
      [(3072, 256), (256, 256), (256, 10)]
    """
    ks = jax.random.split(key, 3)
    dense = lambda k, a, b: {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}  # noqa: E731
    return [dense(ks[0], 3072, width), dense(ks[1], width, width), dense(ks[2], width, 10)]


def mlp_apply(p, x):
    """Logits of the MLP (:func:`mlp_init`); the images are flattened first.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from experiments.speed import mlp_apply, mlp_init
      >>> mlp_apply(mlp_init(jax.random.key(0)), jnp.ones((2, 32, 32, 3))).shape
      (2, 10)
    """
    h = x.reshape(x.shape[0], -1)
    for layer in p[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    return h @ p[-1]["w"] + p[-1]["b"]


# the benchmark's models by name: (init, apply)
MODELS = {"cnn": (cnn_init, cnn_apply), "mlp": (mlp_init, mlp_apply)}


def workload_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the workload's options, shared by the speed scripts:
    ``--models`` (of :data:`MODELS`), ``--n`` samples, ``--batch-size``.

    Example:
      >>> from experiments.speed import workload_parser
      >>> args = workload_parser("demo").parse_args(["--models", "mlp", "--n", "8"])
      >>> args.models, args.n, args.batch_size
      (['mlp'], 8, 128)
    """
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=128)
    return ap


def run_models(bench, args) -> None:
    """Prints :func:`experiments.timing.header`, then runs ``bench(name, init, apply, args)``
    for each model named in ``args.models``.

    Example:
      >>> import argparse, contextlib, io
      >>> from experiments.speed import run_models
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     run_models(lambda name, init, apply, args: print(name), argparse.Namespace(
      ...         models=["mlp", "cnn"]))
      >>> out.getvalue().splitlines()[1:]
      ['mlp', 'cnn']
    """
    print(header())
    for name in args.models:
        bench(name, *MODELS[name], args)


def make_loss(apply):
    """The mean cross-entropy ``loss(params, batch)`` of the model ``apply(params, images)`` on
    a batch ``{"image", "label"}``: the loss whose gradient, HVP and Lanczos are timed.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from experiments.speed import make_loss, mlp_apply, mlp_init
      >>> p = mlp_init(jax.random.key(0))
      >>> p[-1]["w"] = jnp.zeros_like(p[-1]["w"])    # all logits 0: the loss is log 10
      >>> batch = {"image": jnp.ones((2, 32, 32, 3)), "label": jnp.array([0, 3])}
      >>> round(float(make_loss(mlp_apply)(p, batch)), 4)
      2.3026
    """
    def loss(params, batch):
        logits = apply(params, batch["image"])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=1))

    return loss


def workload(init, apply, n: int, batch_size: int):
    """``(loss, params, batched)``: the benchmark's problem, ``n`` random CIFAR-shaped images with
    random labels in batches of ``batch_size``, the model ``init(key(0))`` / ``apply``.

    Example:
      >>> from experiments.speed import mlp_apply, mlp_init, workload
      >>> loss, params, batched = workload(mlp_init, mlp_apply, 6, 4)
      >>> batched.batches["image"].shape, float(loss(params, batched.tail)) > 0
      ((1, 4, 32, 32, 3), True)
    """
    rng = np.random.default_rng(0)
    data = {"image": rng.standard_normal((n, 32, 32, 3)).astype(np.float32),
            "label": rng.integers(0, 10, n).astype(np.int32)}
    return (make_loss(apply), init(jax.random.key(0)),
            jaxspec.batch_dataset(jax.tree.map(jnp.asarray, data), batch_size))


def bench(name, init, apply, args):
    """Times one model and prints its table (see the module docstring): ``init(key)`` and
    ``apply(params, images)`` define it, ``args`` are :func:`main`'s parsed options (``n``,
    ``batch_size``, ``m``, ``block_size``, ``repeat``, ``drivers``, ``reorth``).

    Example:
      >>> import argparse, contextlib, io
      >>> from experiments.speed import bench, mlp_apply, mlp_init
      >>> args = argparse.Namespace(n=4, batch_size=4, m=2, block_size=16, repeat=1,
      ...                           drivers=["host"], reorth=["full"])
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     bench("mlp", mlp_init, mlp_apply, args)
      >>> lines = out.getvalue().splitlines()
      >>> lines[1].startswith("== mlp  (N=4, batch=4,")
      True
      >>> rows = {line[2:36].strip(): line[37:].strip() for line in lines[2:]}
      >>> len(rows), rows["P (parameters)"], rows["Krylov basis (m+1) x P floats"]
      (24, '855,050', '9.8 MiB')
    """
    loss, params, batched = workload(init, apply, args.n, args.batch_size)
    flat, unravel = ravel_pytree(params)
    P = flat.size
    v = jax.random.normal(jax.random.key(1), (P,), flat.dtype)

    nb = batched.weights.shape[0]
    batches = [jax.tree.map(lambda x: x[i], batched.batches) for i in range(nb)]

    @jit
    def dataset_grad(p, batches):  # one dataset gradient, all batches in one program (unrolled)
        acc = jax.tree.map(jnp.zeros_like, p)
        for i, b in enumerate(batches):
            acc = jax.tree.map(lambda a, g: a + batched.weights[i] * g, acc, jax.grad(loss)(p, b))
        return acc

    host_mv = jaxspec.curvature_operator(loss, params, batched, reduce="host")
    scan_mv = jaxspec.curvature_operator(loss, params, batched, reduce="scan")
    t_hvp_scan = _time(scan_mv.mv, v, repeat=2)

    @jit
    def unrolled(v, params, batches):  # every batch in one program, no XLA loop: the CPU floor
        t = unravel(v)
        out = jnp.zeros_like(v)
        for i, b in enumerate(batches):
            out = out + batched.weights[i] * ravel_pytree(jaxspec.hvp(loss, params, b, t))[0]
        return out

    cached_mv = host_mv.linearized()  # every batch's product linearised once
    best = _race({"grad": lambda: dataset_grad(params, batches), "host": lambda: host_mv(v),
                  "cached": lambda: cached_mv(v), "unrolled": lambda: unrolled(v, params, batches)})
    t_grad, t_hvp_host, t_hvp_unrolled = best["grad"], best["host"], best["unrolled"]
    rows = [("P (parameters)", f"{P:,}"),
            ("dataset gradient", f"{t_grad * 1e3:9.1f} ms"),
            ("dataset HVP, host-driven", f"{t_hvp_host * 1e3:9.1f} ms"),
            ("dataset HVP, host, linearised", f"{best['cached'] * 1e3:9.1f} ms"),
            ("dataset HVP, lax.scan", f"{t_hvp_scan * 1e3:9.1f} ms"),
            ("dataset HVP, unrolled (floor)", f"{t_hvp_unrolled * 1e3:9.1f} ms"),
            ("HVP(host) / gradient", f"{t_hvp_host / t_grad:9.2f}"),
            ("HVP(linearised) / gradient", f"{best['cached'] / t_grad:9.2f}"),
            ("HVP(host) / HVP(linearised)", f"{t_hvp_host / best['cached']:9.2f}"),
            ("linearisation residuals", f"{cached_mv.linear.nbytes() / 2**20:9.1f} MiB"),
            ("HVP(host) / HVP(unrolled)", f"{t_hvp_host / t_hvp_unrolled:9.2f}")]
    v0 = jax.random.normal(jax.random.key(2), (P,), flat.dtype)
    fastest = []  # (warm Lanczos seconds, driver, run)
    for driver, reorth in [(d, r) for d in args.drivers for r in args.reorth]:
        # the operators as run_lanczos uses them (linearised), so the chained HVPs below are
        # the same products as the run's
        mv = (host_mv if driver == "host" else scan_mv).linearized()

        def run(mv=mv, driver=driver, reorth=reorth):  # bound now: readme_rows runs it later
            return jaxspec.run_lanczos(mv, v0, args.m, driver=driver,
                                       block_size=args.block_size, reorth=reorth)

        t = time.perf_counter()
        passes = int(run().passes)  # first run: includes compiling the step (or the loop)
        t_first = time.perf_counter() - t
        # Each warm run is paired with m chained HVPs (a power iteration: v <- Hv / |Hv|, Lanczos
        # without the re-orthogonalisation; each product waits for the last, as in Lanczos, and
        # neither waits on the host): both are averages over m products, taken seconds apart, so
        # neither the load drift nor a best-of-few bias gets into their ratio. The median round
        # is kept.
        hvp = mv.mv
        rounds = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            u = v
            for _ in range(args.m):
                u = _normalise(hvp(u))
            jax.block_until_ready(u)
            t_hvps = time.perf_counter() - t
            t = time.perf_counter()
            jax.block_until_ready(run().alphas)
            rounds.append((time.perf_counter() - t, t_hvps))
        t_lz, t_hvps = sorted(rounds, key=lambda r: r[0] / r[1])[len(rounds) // 2]
        how = f"{driver}, {reorth}"
        fastest.append((min(r[0] for r in rounds), how, reorth, run))
        rows += [(f"Lanczos m={args.m}, {how}, first", f"{t_first:9.2f} s"),
                 (f"Lanczos m={args.m}, {how}, warm", f"{t_lz:9.2f} s"),
                 ("  m chained HVPs, same round", f"{t_hvps:9.2f} s"),
                 ("  Gram-Schmidt passes over the basis", f"{passes:9d}"),
                 (f"  per step beyond the HVP, {how}",
                  f"{(t_lz - t_hvps) / args.m * 1e3:9.1f} ms"),
                 (f"Lanczos / (m x HVP), {how}",
                  f"{t_lz / t_hvps:9.2f}  (rounds: "
                  f"{' '.join(f'{a / b:.2f}' for a, b in rounds)})")]
    # the README's snippet runs slq's re-orthogonalisation (partial): its fastest run is the
    # path to match; another method is a choice of algorithm, not of execution
    same = [f for f in fastest if f[2] == "partial"] or fastest
    if same:
        _, how, _, run = min(same, key=lambda f: f[0])
        rows += readme_rows(loss, params, batched, args.m, how, run, args.repeat)
    peak_bytes, peak_kind = peak_memory()  # before the floor's own test arrays are allocated
    floor = reorth_floor(P, args.m, flat.dtype)
    rows.append(("re-orth floor per step (2 reads)", f"{floor / args.m * 1e3:9.1f} ms"))
    if args.drivers:  # the best ratio any exact full re-orthogonalisation can reach here
        rows.append(("  Lanczos / (m x HVP) at the floor", f"{(t_hvps + floor) / t_hvps:9.2f}"))
    fresh = fresh_basis_time(P, args.m, flat.dtype)
    rows.append(("fresh basis (a first run's)", f"{fresh * 1e3:9.1f} ms "
                 f"({fresh / args.m * 1e3:.1f} ms a step)"))
    rows.append(("peak memory", f"{peak_kind} {peak_bytes / 2**20:.0f} MiB"))
    rows.append(("Krylov basis (m+1) x P floats", f"{(args.m + 1) * P * 4 / 2**20:9.1f} MiB"))
    print(f"\n== {name}  (N={args.n}, batch={args.batch_size}, backend={jax.default_backend()}, "
          f"devices={jax.device_count()})")
    for k, val in rows:
        print(f"  {k:34s} {val}")


def readme_rows(loss, params, batched, m, how, fastest, repeat):
    """Rows timing the README's library snippet as written (the default operator, built anew
    each run as the snippet does, and ``slq`` with its defaults: one probe, in the operator's
    dtype) against the fastest
    Lanczos run ``fastest()`` (``how``: its driver and method): the two are timed in turn,
    ``repeat`` rounds, and the median of the rounds' ratios is kept (the load drifts between
    rounds). The snippet builds its operator's cache in every run; ``fastest`` is handed a
    cached one.

    Example:
      >>> import jax, jax.numpy as jnp, jaxspec
      >>> from experiments.speed import readme_rows
      >>> loss = lambda p, x: jnp.mean(x) * jnp.sum(p ** 4)
      >>> data = jaxspec.batch_dataset(jnp.ones(4), 2)
      >>> op = jaxspec.curvature_operator(loss, jnp.ones(3), data)
      >>> rows = readme_rows(loss, jnp.ones(3), data, 2, "host",
      ...                    lambda: jaxspec.run_lanczos(op, jnp.ones(3), 2).alphas, 1)
      >>> [name for name, _ in rows]
      ['README snippet (slq, 1 probe), warm', 'README snippet / fastest Lanczos (host)']
    """
    def readme():
        H = jaxspec.curvature_operator(loss, params, batched)
        return jaxspec.slq(H, jax.random.key(0), H.size, m).nodes

    times = {"readme": [], "fastest": []}
    for fn in (readme, fastest):
        jax.block_until_ready(fn())  # compile + warm up
    for _ in range(repeat):
        for name, fn in (("readme", readme), ("fastest", fastest)):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t)
    ratios = sorted(a / b for a, b in zip(times["readme"], times["fastest"]))
    return [("README snippet (slq, 1 probe), warm", f"{min(times['readme']):9.2f} s"),
            (f"README snippet / fastest Lanczos ({how})",
             f"{ratios[len(ratios) // 2]:9.2f}  (rounds: {' '.join(f'{r:.2f}' for r in ratios)})")]


def main(argv=None):
    """Command line entry point (see the module docstring): the version line, then
    :func:`bench`'s table for each model.

    Example:
      >>> import contextlib, io
      >>> from experiments.speed import main
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     main(["--models", "mlp", "--n", "4", "--batch-size", "4", "--m", "2",
      ...           "--repeat", "1", "--drivers", "host", "--reorth", "partial"])
      >>> lines = out.getvalue().splitlines()
      >>> lines[0].startswith("jax "), lines[2].startswith("== mlp  (N=4, batch=4,")
      (True, True)
      >>> [line.split()[-1] for line in lines[3:] if line.startswith("  P (parameters)")]
      ['855,050']
      >>> [line[2:36].strip() for line in lines if line.startswith("  Lanczos m=")]
      ['Lanczos m=2, host, partial, first', 'Lanczos m=2, host, partial, warm']
    """
    ap = workload_parser(__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=50)
    ap.add_argument("--block-size", type=int, default=16,
                    help="basis rows per re-orthogonalisation block")
    ap.add_argument("--repeat", type=int, default=5,
                    help="warm Lanczos runs, each paired with an HVP timing (the machine is noisy)")
    ap.add_argument("--drivers", nargs="+", default=["host", "compiled"],
                    choices=["host", "compiled"])
    ap.add_argument("--reorth", nargs="+", default=["full", "partial"],
                    choices=list(METHODS),
                    help="re-orthogonalisation methods to time (jaxspec.reorth)")
    run_models(bench, ap.parse_args(argv))


if __name__ == "__main__":
    main()
