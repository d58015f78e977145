"""Speed of the estimators beyond SLQ, per product, against an SLQ run on the same operator.

    python -m experiments.speed_estimators                     # both models, N = 512, batch 128
    python -m experiments.speed_estimators --models mlp --rounds 5

For each model of :mod:`experiments.speed` (a small CNN, an MLP) the operator is built as the
README builds it (``jaxspec.curvature_operator`` with its defaults), and each estimator is called
as a user calls it, with its defaults: ``slq`` (one probe, ``--m`` steps: the reference),
``eigsh`` (the ``--k`` largest pairs), ``hutchinson``, ``hutchinson_diagonal`` (``--probes``
probes each), ``hutch_plus_plus`` (``--matvecs`` products) and, where the operator can be
traced (not the host loop), ``xtrace`` (``--probes / 2`` probes, at least 2; two products each).
Each is timed warm, one after another in every round; the table gives its time per product and
the median over the rounds of its ratio to SLQ's time per product in the same round (the load
drifts between rounds). A ratio
near 1 means the estimator's products run as fast as a Lanczos run's; what it adds beyond them
(drawing probes, eigsh's re-orthogonalisation against its whole basis, moments) shows above 1.
"""

from __future__ import annotations

import time

import jax
import numpy as np

import jaxspec
from experiments.speed import run_models, workload, workload_parser
from jaxspec.trace import hutch_plus_plus, hutchinson, hutchinson_diagonal, xtrace


def estimators(op, args) -> dict:
    """``{name: (run, products)}``: each estimator on ``op`` as a zero-argument call returning
    what it computed, and the number of products it takes (eigsh's is known after a run and is
    filled in by :func:`bench`).

    Example:
      >>> import argparse, jax.numpy as jnp, jaxspec
      >>> from experiments.speed_estimators import estimators
      >>> op = jaxspec.curvature_operator(lambda p, x: jnp.mean(x) * jnp.sum(p ** 4),
      ...                                 jnp.ones(40), jaxspec.batch_dataset(jnp.ones(4), 2))
      >>> args = argparse.Namespace(m=5, k=2, probes=4, matvecs=6)
      >>> runs = estimators(op, args)
      >>> list(runs), runs["hutch++"][1], float(runs["hutchinson"][0]().value)
      (['slq', 'eigsh', 'hutchinson', 'hutchinson_diagonal', 'hutch++'], 6, 480.0)
    """
    key, v0 = jax.random.key(0), jax.random.normal(jax.random.key(1), (op.size,), op.dtype)
    runs = {
        "slq": (lambda: jaxspec.slq(op, key, op.size, args.m).nodes, args.m),
        "eigsh": (lambda: jaxspec.eigsh(op, v0, args.k), None),
        "hutchinson": (lambda: hutchinson(op, key, op.size, num_probes=args.probes),
                       args.probes),
        "hutchinson_diagonal": (
            lambda: hutchinson_diagonal(op, key, op.size, num_probes=args.probes), args.probes),
        "hutch++": (lambda: hutch_plus_plus(op, key, op.size, num_matvecs=args.matvecs),
                    args.matvecs),
    }
    if op.reduce.driver != "host":  # XTrace traces the operator: not the host loop
        probes = max(2, args.probes // 2)
        runs["xtrace"] = (lambda: xtrace(op, key, op.size, num_probes=probes), 2 * probes)
    return runs


def bench(name, init, apply, args) -> list[tuple[str, float, float]]:
    """Times the estimators on one model and prints its table (see the module docstring);
    returns ``(estimator, seconds per product, median ratio to slq)`` rows.

    Example:
      >>> import argparse, contextlib, io
      >>> from experiments.speed_estimators import bench
      >>> from experiments.speed import MODELS
      >>> args = argparse.Namespace(n=4, batch_size=4, m=3, k=1, probes=2, matvecs=3, rounds=1)
      >>> with contextlib.redirect_stdout(io.StringIO()):
      ...     rows = bench("mlp", *MODELS["mlp"], args)
      >>> [row[0] for row in rows], rows[0][2]
      (['slq', 'eigsh', 'hutchinson', 'hutchinson_diagonal', 'hutch++'], 1.0)
    """
    loss, params, batched = workload(init, apply, args.n, args.batch_size)
    op = jaxspec.curvature_operator(loss, params, batched)
    runs = estimators(op, args)
    products = {}
    for label, (run, count) in runs.items():  # compile and warm up; eigsh's count of products
        out = run()
        jax.block_until_ready(out)
        products[label] = out.num_matvecs if count is None else count
    seconds = {label: [] for label in runs}
    for _ in range(args.rounds):
        for label, (run, _) in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(run())
            seconds[label].append((time.perf_counter() - t) / products[label])
    rows = []
    for label in runs:
        ratios = [a / b for a, b in zip(seconds[label], seconds["slq"])]
        rows.append((label, min(seconds[label]), float(np.median(ratios))))
    print(f"\n== {name}  (N={args.n}, batch={args.batch_size}, P={op.size:,}, "
          f"reduce={type(op.reduce).__name__}, backend={jax.default_backend()})")
    print(f"  {'estimator':22s} {'products':>8s} {'s / product':>12s} {'/ slq':>7s}")
    for label, t, ratio in rows:
        print(f"  {label:22s} {products[label]:8d} {t:12.4f} {ratio:7.2f}")
    return rows


def main(argv=None):
    """Command line entry point (see the module docstring).

    Example:
      >>> import contextlib, io
      >>> from experiments.speed_estimators import main
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     main(["--models", "mlp", "--n", "4", "--batch-size", "4", "--m", "3", "--k", "1",
      ...           "--probes", "2", "--matvecs", "3", "--rounds", "1"])
      >>> lines = out.getvalue().splitlines()
      >>> lines[0].startswith("jax "), lines[2].startswith("== mlp  (N=4, batch=4,")
      (True, True)
    """
    ap = workload_parser(__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=20, help="SLQ's Lanczos steps")
    ap.add_argument("--k", type=int, default=3, help="eigsh's number of pairs")
    ap.add_argument("--probes", type=int, default=16, help="Hutchinson's probes")
    ap.add_argument("--matvecs", type=int, default=30, help="Hutch++'s products")
    ap.add_argument("--rounds", type=int, default=3)
    run_models(bench, ap.parse_args(argv))


if __name__ == "__main__":
    main()
