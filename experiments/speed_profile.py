"""Where a Lanczos run's time goes, as JAX's profiler records it: the time each compiled program
had an operation running.

    python -m experiments.speed_profile                       # the MLP of experiments.speed
    python -m experiments.speed_profile --model cnn --reorth full --runs 3

``experiments.speed`` times whole runs against chained products; on a shared machine its rounds
swing by more than the few percent a change to the step makes (docs/speed.md has figures).
The profiler's record of each operation does not swing with the load on the
other programs, so this script takes the run apart instead. It makes the workload of
``experiments.speed`` (the model, ``--n`` random images in batches of ``--batch-size``, the
linearised host-driven operator), runs ``jaxspec.run_lanczos`` once to compile, then ``--runs``
warm runs under ``jax.profiler.trace``, each inside a ``jax.profiler.TraceAnnotation``. An
execution of a program lasts from the start of its first operation to the end of its last (the
profiler records operations, not programs; an operation split over the thread pool ends with
its last task, which the profiler marks apart). For each run it prints the wall time, the time some
program was executing ("busy") and the rest ("idle": Python, dispatch, the hand-over between
dependent programs), each program's time and number of executions, the Lanczos step's
executions split into those that ran a Gram-Schmidt pass (a while loop) and those that did not
(medians), and the run's wall time over its products' time.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
from typing import NamedTuple

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

import jaxspec
from experiments.speed import MODELS, workload
from experiments.timing import header
from jaxspec.reorth import METHODS

RUN = "jaxspec lanczos run"  # the annotation around each profiled run

STEP = "_host_advance"  # the host driver's step program (jaxspec.lanczos)


class RunProfile(NamedTuple):
    """One run as the profiler saw it; times in seconds (``programs``: the sum over a program's
    executions, and their number)."""

    wall: float
    busy: float
    programs: dict  # program name -> (seconds, executions)
    plain_steps: list  # seconds of each step that ran no pass
    pass_steps: list  # ... and of each that ran one


def _union(intervals) -> float:
    """Total length covered by ``(start, end)`` intervals (overlaps counted once)."""
    total, end = 0, None
    for lo, hi in sorted(intervals):
        if end is None or lo > end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return float(total)


def _completed(ops: list, done: dict) -> list:
    """``ops`` (``[start, end, ..., name]`` lists) sorted by start, each ending when its work
    did. An operation's event covers its work on the thread that started it; one split into
    tasks over the thread pool (a large loop fusion, e.g. a product's last sum) finishes when
    its last task does, which the executor marks with an ``end: <name>`` event on that task's
    thread, naming no program. ``done`` maps a name to the times its end marks end; the k-th
    operation of a name is paired with its k-th end mark.

    Example:
      >>> from experiments.speed_profile import _completed
      >>> ops = [[50, 60, "sum"], [0, 10, "sum"]]   # the second task of the first ended at 18
      >>> _completed(ops, {"sum": [62, 18]})
      [[0, 18, 'sum'], [50, 62, 'sum']]
    """
    ops, done = sorted(ops), {name: sorted(ends) for name, ends in done.items()}
    seen = {}
    for op in ops:
        k = seen[op[-1]] = seen.get(op[-1], -1) + 1
        if k < len(done.get(op[-1], ())):
            op[1] = max(op[1], done[op[-1]][k])
    return ops


def read_profile(directory: str, annotation: str = RUN) -> list[RunProfile]:
    """The runs recorded in a ``jax.profiler.trace`` directory: one :class:`RunProfile` for each
    ``TraceAnnotation`` named ``annotation``, in order (from the directory's latest trace). A
    program is named by its module (``jit_<function>``, the ``jit_`` dropped); its operations
    are the trace's events that carry an ``hlo_module``, an execution those with one
    ``run_id``, timed from its first operation's start to its last one's end.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from experiments.speed_profile import read_profile
      >>> @jax.jit
      ... def double(x):
      ...     return 2 * x
      >>> x = double(jnp.ones(1000)).block_until_ready()
      >>> with tempfile.TemporaryDirectory() as d:
      ...     with jax.profiler.trace(d):
      ...         with jax.profiler.TraceAnnotation("twice"):
      ...             _ = double(double(x)).block_until_ready()
      ...     [run] = read_profile(d, "twice")
      >>> run.programs["double"][1], run.busy <= run.wall
      (2, True)
    """
    from jax.profiler import ProfileData

    # each trace writes a new file under the directory: the last one is this profile's
    path = max(glob.glob(f"{directory}/**/*.xplane.pb", recursive=True), key=os.path.getmtime)
    marks, ops, done = [], [], {}  # done: op name -> the times its "end: <name>" events end
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            for ev in line.events:
                if ev.name == annotation:
                    marks.append((ev.start_ns, ev.start_ns + ev.duration_ns))
                    continue
                stats = dict(ev.stats)
                if "hlo_module" in stats:
                    ops.append([ev.start_ns, ev.start_ns + ev.duration_ns,
                                stats["hlo_module"].removeprefix("jit_"),
                                stats.get("run_id"), ev.name])
                elif ev.name.startswith("end: "):
                    done.setdefault(ev.name[5:], []).append(ev.start_ns + ev.duration_ns)
    ops = _completed(ops, done)
    runs = []
    for lo, hi in sorted(marks):
        inside = [op for op in ops if lo <= op[0] <= hi]
        executions = {}  # (program, run id) -> [first start, last end, ran a while loop]
        for start, end, program, run_id, name in inside:
            ex = executions.setdefault((program, run_id), [start, end, False])
            ex[0], ex[1] = min(ex[0], start), max(ex[1], end)
            ex[2] |= name.startswith("while")
        programs = {}
        for (program, _), (start, end, _) in executions.items():
            t, n = programs.get(program, (0.0, 0))
            programs[program] = (t + (end - start) / 1e9, n + 1)
        steps = [((end - start) / 1e9, loop)
                 for (program, _), (start, end, loop) in executions.items() if program == STEP]
        runs.append(RunProfile(
            wall=(hi - lo) / 1e9, busy=_union(ex[:2] for ex in executions.values()) / 1e9,
            programs=programs, plain_steps=[t for t, loop in steps if not loop],
            pass_steps=[t for t, loop in steps if loop]))
    return runs


def profile_lanczos(matvec, v0, num_steps: int, runs: int, reorth: str = "partial",
                    directory: str | None = None) -> list[RunProfile]:
    """``runs`` warm host-driven Lanczos runs of ``matvec`` under the profiler, one compiling run
    before them. ``directory`` keeps the trace (default: a temporary one, removed).

    Example:
      >>> import jax.numpy as jnp
      >>> from experiments.speed_profile import profile_lanczos
      >>> A = jnp.linspace(1.0, 2.0, 200)
      >>> [run] = profile_lanczos(lambda v: A * v, jnp.ones(200), 8, runs=1)
      >>> run.programs["_host_advance"][1], len(run.plain_steps) + len(run.pass_steps)
      (8, 8)
    """
    def lanczos():
        return jaxspec.run_lanczos(matvec, v0, num_steps, driver="host", reorth=reorth)

    jax.block_until_ready(lanczos().alphas)  # compile
    with tempfile.TemporaryDirectory() as tmp:
        directory = directory or tmp
        with jax.profiler.trace(directory):
            for _ in range(runs):
                with jax.profiler.TraceAnnotation(RUN):
                    jax.block_until_ready(lanczos().alphas)
        return read_profile(directory)


def table(runs: list[RunProfile], products: tuple[str, ...]) -> list[str]:
    """The printed lines: per-run figures as medians over the runs (ms), programs by time;
    ``products`` name the programs that compute the matrix's products.

    Example:
      >>> from experiments.speed_profile import RunProfile, table
      >>> run = RunProfile(1.0, 0.9, {"apply": (0.8, 10), "_host_advance": (0.1, 10)},
      ...                  [0.01] * 9, [0.02])
      >>> print("\\n".join(table([run], ("apply",))))   # doctest: +NORMALIZE_WHITESPACE
      run (wall)                        1000.0 ms
        busy / idle                      900.0 / 100.0 ms
        apply                            800.0 ms  x10
        _host_advance                    100.0 ms  x10
      steps without a pass (median)       10.00 ms  x9
      steps with a pass (median)          20.00 ms  x1
      products / wall                     0.80
      run / products                      1.25
    """
    if not runs:
        return []

    def median(f):
        return float(np.median([f(r) for r in runs]))

    names = sorted({p for r in runs for p in r.programs},
                   key=lambda p: -median(lambda r: r.programs.get(p, (0, 0))[0]))
    lines = [f"run (wall)                     {median(lambda r: r.wall) * 1e3:9.1f} ms",
             f"  busy / idle                  {median(lambda r: r.busy) * 1e3:9.1f} / "
             f"{median(lambda r: r.wall - r.busy) * 1e3:.1f} ms"]
    for p in names:
        t = median(lambda r: r.programs.get(p, (0, 0))[0])
        n = int(median(lambda r: r.programs.get(p, (0, 0))[1]))
        lines.append(f"  {p:27s}  {t * 1e3:9.1f} ms  x{n}")
    for label, pick in (("without", lambda r: r.plain_steps), ("with", lambda r: r.pass_steps)):
        steps = [t for r in runs for t in pick(r)]
        if steps:
            lines.append(f"steps {label} a pass (median)".ljust(30)
                         + f" {np.median(steps) * 1e3:9.2f} ms  x{len(steps) // len(runs)}")
    product = median(lambda r: sum(r.programs.get(p, (0, 0))[0] for p in products))
    if product > 0:
        lines.append(f"products / wall                {product / median(lambda r: r.wall):9.2f}")
        lines.append(f"run / products                 {median(lambda r: r.wall) / product:9.2f}")
    return lines


def main(argv=None):
    """Command line entry point (see the module docstring).

    Example:
      >>> import contextlib, io
      >>> from experiments.speed_profile import main
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     main(["--n", "4", "--batch-size", "4", "--m", "3", "--runs", "1"])
      >>> lines = out.getvalue().splitlines()
      >>> lines[1].startswith("== mlp  (N=4, batch=4, m=3, partial, 1 runs;")
      True
      >>> any(line.split()[0] == "_host_advance" and line.endswith("x3") for line in lines)
      True
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--m", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3, help="profiled warm runs (medians printed)")
    ap.add_argument("--reorth", default="partial", choices=list(METHODS))
    ap.add_argument("--trace-dir", default=None,
                    help="keep the trace here (for TensorBoard or Perfetto); default: not kept")
    args = ap.parse_args(argv)
    init, apply = MODELS[args.model]
    loss, params, batched = workload(init, apply, args.n, args.batch_size)
    op = jaxspec.curvature_operator(loss, params, batched, reduce="host").linearized(args.m + 1)
    flat, _ = ravel_pytree(params)
    v0 = jax.random.normal(jax.random.key(2), flat.shape, flat.dtype)
    runs = profile_lanczos(op, v0, args.m, args.runs, args.reorth, args.trace_dir)
    print(header())
    print(f"== {args.model}  (N={args.n}, batch={args.batch_size}, m={args.m}, {args.reorth}, "
          f"{args.runs} runs; P={flat.size:,})")
    # the products: the host reduction's programs (jaxspec.reduction, jaxspec.linearized)
    products = ("apply_maps", "_group_apply")
    for line in table(runs, products):
        print("  " + line)


if __name__ == "__main__":
    main()
