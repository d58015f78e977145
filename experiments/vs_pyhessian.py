"""jaxspec against PyHessian on the same workloads: the time and peak memory of one SLQ run.

    python -m experiments.vs_pyhessian --torch-python /path/to/torch-venv/bin/python
    python -m experiments.vs_pyhessian --models mlp --configs default low-memory --rounds 3

The workloads: ``--n`` CIFAR-shaped Gaussian images with random labels (the same seeded arrays
on both sides) in batches of 128, ``--m`` Lanczos steps, one probe, the mean cross-entropy's
Hessian over the whole set. PyHessian re-orthogonalises every vector fully; ``slq`` by default
partially (the same T to working precision, :mod:`jaxspec.reorth`), so the ``full`` config
times jaxspec with PyHessian's method.

* ``mlp``: a tanh MLP 3072-256-256-10 (855,050 parameters). Both sides start from the same
  weights, so their largest Ritz values must agree (a check that both compute one matrix).
* ``cnn``: PreAct-ResNet-20 (272,282 parameters), BatchNorm with running statistics (eval mode).
  Both sides start from jaxspec's initial weights (``nnx.Rngs(0)``, copied into PyTorch's names
  and layouts), so their largest Ritz values must agree too.

Each run is a subprocess of its own, so that its peak resident memory is its own:

* PyHessian (``hessian(model, criterion, dataloader=..., cuda=False).density(iter=m, n_v=1)``)
  under ``--torch-python``, an environment with ``torch`` and ``pyhessian`` (never this
  project's: ``python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch pyhessian``).
  PyHessian 0.1 calls ``torch.eig``, which PyTorch removed in 1.9; the child gives it an
  equivalent built on ``torch.linalg.eigh`` (T is symmetric).
* jaxspec, the README's snippet (``curvature_operator`` then ``slq``), under this Python, with
  each ``--configs`` entry (:data:`CONFIGS`): ``default`` (the snippet as written), ``full``
  (``slq(..., reorth="full")``), or ``low-memory`` (``reduce=HostReduce(1)``,
  ``linearize=None``: one batch at a time, nothing cached), ``cached`` (``linearize=2**32``:
  the products of all batches whose residuals fit in 4 GiB linearised once, memory traded for
  speed), ``compact`` (the same with ``residuals="compact"``: only the outputs of the matrix
  products, convolutions and activations kept, the rest recomputed at every product), or
  ``disk-cache`` (the snippet in a process that loads its compiled programs from
  :func:`jaxspec.compiler.cache_compilations`'s directory, which one process run before the
  rounds fills: a script's second run). It runs twice in its process: the first run includes
  compiling (or loading), the second is warm.

The runs take turns, round after round (the load of a shared machine drifts); the table keeps
each one's best round, and the ratios of PyHessian's time and peak to jaxspec's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from experiments.timing import load_average, machine

MODELS = ("mlp", "cnn")
CONFIGS = ("default", "full", "low-memory", "cached", "compact", "disk-cache")


def workload(n: int, seed: int = 0) -> dict:
    """The inputs both sides use: ``n`` NHWC float32 images drawn from N(0, 1) and int32 labels
    in 0..9, from ``numpy.random.default_rng(seed)``.

    Example:
      >>> from experiments.vs_pyhessian import workload
      >>> data = workload(3)
      >>> data["image"].shape, data["image"].dtype.name, data["label"].tolist()
      ((3, 32, 32, 3), 'float32', [6, 1, 9])
    """
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((n, 32, 32, 3)).astype(np.float32),
            "label": rng.integers(0, 10, n).astype(np.int32)}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _reset_peak() -> bool:
    """Resets the kernel's record of this process's peak RSS (``VmHWM``, Linux), so that the
    next :func:`_peak_since_reset` sees the peak of what runs after; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_since_reset() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _mlp_weights(path: str) -> None:
    """The MLP's starting weights (``experiments.speed.mlp_init`` with key 0) as an npz."""
    import jax

    from experiments.speed import mlp_init

    layers = mlp_init(jax.random.key(0))
    np.savez(path, **{f"{k}{i}": np.asarray(layer[k]) for i, layer in enumerate(layers)
                      for k in ("w", "b")})


# PyTorch's names for the parts of jaxspec's PreResNet (the others are the same)
_TORCH_NAMES = {"scale": "weight", "mean": "running_mean", "var": "running_var",
                "kernel": "weight", "downsample": "down"}


def _cnn_weights(path: str) -> None:
    """PreAct-ResNet-20's starting weights as the jaxspec side builds them (``nnx.Rngs(0)``), under
    PyTorch's names and in its layouts (kernels OIHW, the linear weight (out, in)), as an npz."""
    from flax import nnx

    from jaxspec.models import create_model

    net = create_model("preresnet20", num_classes=10, rngs=nnx.Rngs(0))
    arrays = {}
    for keys, variable in nnx.to_flat_state(nnx.state(net)):
        x = np.asarray(variable[...])
        x = x.transpose(3, 2, 0, 1) if x.ndim == 4 else x.T if x.ndim == 2 else x
        arrays[".".join(_TORCH_NAMES.get(str(k), str(k)) for k in keys)] = x
    np.savez(path, **arrays)


def _jaxspec_run(model: str, config: str, n: int, m: int, batch_size: int,
                 weights: str | None, warm: bool = True, programs: str | None = None) -> dict:
    """The README's snippet on ``model`` with ``config``, twice if ``warm``: the runs' seconds,
    the largest Ritz value, the peak RSS and the RSS once the model and data are built (main's
    example). ``programs``: the directory of compiled programs (``disk-cache``)."""
    import jax

    import jaxspec
    from experiments.speed import make_loss, mlp_apply, mlp_init
    from jaxspec.compiler import cache_compilations
    from jaxspec.reduction import HostReduce

    if programs:  # before anything compiles
        cache_compilations(programs)

    if model == "mlp":
        params = mlp_init(jax.random.key(0))
        if weights:
            w = np.load(weights)
            params = [{"w": jax.numpy.asarray(w[f"w{i}"]), "b": jax.numpy.asarray(w[f"b{i}"])}
                      for i in range(len(params))]
        loss_fn = make_loss(mlp_apply)
    else:
        from flax import nnx

        from jaxspec.models import create_model, hessian_loss

        # the weights _cnn_weights gives the PyTorch side
        net = create_model("preresnet20", num_classes=10, rngs=nnx.Rngs(0))
        loss_fn, params = hessian_loss(net, bn_mode="running")
    # the options to curvature_operator, to slq
    options, slq_options = {"default": ({}, {}), "disk-cache": ({}, {}),
                            "full": ({}, {"reorth": "full"}),
                            "low-memory": ({"reduce": HostReduce(1), "linearize": None}, {}),
                            "cached": ({"linearize": 2**32}, {}),
                            "compact": ({"linearize": 2**32, "residuals": "compact"}, {})}[config]
    data = jaxspec.batch_dataset(workload(n), batch_size)
    setup = _peak_rss()

    def snippet():
        H = jaxspec.curvature_operator(loss_fn, params, data, **options)
        return jaxspec.slq(H, jax.random.key(0), H.size, m, **slq_options)

    t = time.perf_counter()
    spectrum = snippet()  # compiles
    first = time.perf_counter() - t
    if not warm:
        return {"first_s": first, "lambda_max": spectrum.lambda_max, "peak_bytes": _peak_rss(),
                "setup_bytes": setup}
    resettable = _reset_peak()  # the warm run's own peak, apart from the compilations'
    t = time.perf_counter()
    spectrum = snippet()
    warm = time.perf_counter() - t
    return {"first_s": first, "warm_s": warm, "lambda_max": spectrum.lambda_max,
            "peak_bytes": _peak_rss(), "setup_bytes": setup,
            "warm_peak_bytes": _peak_since_reset() if resettable else None}


def _torch_run(model: str, n: int, m: int, batch_size: int, weights: str | None) -> dict:
    """PyHessian's density on ``model``, in a Python with torch and pyhessian."""
    import torch
    import torch.nn.functional as F
    from pyhessian import hessian
    from torch import nn

    def eig(T, eigenvectors=False):  # torch.eig's (values as (re, im) rows, vectors) shape
        values, vectors = torch.linalg.eigh(T)
        return torch.stack([values, torch.zeros_like(values)], 1), vectors

    torch.eig = eig
    torch.manual_seed(0)

    class Block(nn.Module):  # pre-activation basic block, as jaxspec.models.preresnet
        def __init__(self, c_in, planes, stride):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(planes)
            self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.down = (nn.Conv2d(c_in, planes, 1, stride, bias=False)
                         if stride != 1 or c_in != planes else None)

        def forward(self, x):
            out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
            return out + (x if self.down is None else self.down(x))

    class PreResNet20(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            blocks, c = [], 16
            for width, stride in ((16, 1), (32, 2), (64, 2)):
                for i in range(3):
                    blocks.append(Block(c, width, stride if i == 0 else 1))
                    c = width
            self.blocks = nn.Sequential(*blocks)
            self.bn, self.fc = nn.BatchNorm2d(64), nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(F.relu(self.bn(self.blocks(self.conv1(x)))).mean((2, 3)))

    if model == "mlp":
        net = nn.Sequential(nn.Flatten(), nn.Linear(3072, 256), nn.Tanh(), nn.Linear(256, 256),
                            nn.Tanh(), nn.Linear(256, 10))
        if weights:
            w = np.load(weights)
            with torch.no_grad():
                for i, layer in enumerate(net[1::2]):
                    layer.weight.copy_(torch.from_numpy(w[f"w{i}"].T.copy()))
                    layer.bias.copy_(torch.from_numpy(w[f"b{i}"]))
    else:
        net = PreResNet20()
        if weights:
            w = np.load(weights)
            missing, unexpected = net.load_state_dict(
                {k: torch.from_numpy(w[k]) for k in w.files}, strict=False)
            if unexpected or not all(k.endswith("num_batches_tracked") for k in missing):
                raise ValueError(f"the CNN's weights do not fit: missing {missing}, "
                                 f"unexpected {unexpected}")
    net.eval()
    data = workload(n)
    # NCHW for the CNN; the MLP flattens its input, so it keeps jaxspec's NHWC order and with
    # it the meaning of the shared first-layer weights
    images = torch.from_numpy(data["image"] if model == "mlp" else
                              data["image"].transpose(0, 3, 1, 2).copy())
    labels = torch.from_numpy(data["label"].astype(np.int64))
    loader = [(images[i:i + batch_size], labels[i:i + batch_size])
              for i in range(0, n, batch_size)]
    setup = _peak_rss()
    t = time.perf_counter()
    nodes, _ = hessian(net, nn.CrossEntropyLoss(), dataloader=loader, cuda=False).density(
        iter=m, n_v=1)
    return {"first_s": time.perf_counter() - t, "lambda_max": float(max(nodes[0])),
            "peak_bytes": _peak_rss(), "setup_bytes": setup}


def _child(python: str, side: str, model: str, args, weights: str | None,
           programs: str | None = None) -> dict:
    cmd = [python, "-m", "experiments.vs_pyhessian", "--child", side, "--models", model,
           "--n", str(args.n), "--m", str(args.m), "--batch-size", str(args.batch_size),
           "--warm" if args.warm else "--no-warm"]
    if weights:
        cmd += ["--weights", weights]
    if programs and side == "jaxspec-disk-cache":
        cmd += ["--programs", programs]
    out = subprocess.run(cmd, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:160]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _warm_peak(row: dict) -> int:
    return row.get("warm_peak_bytes") or row["peak_bytes"]


def table(results: dict) -> list[str]:
    """The printed table: for every model, each run's best round (first and warm seconds, peak
    memory of the whole process and of the warm run alone, set-up memory, largest Ritz value),
    then each jaxspec run against PyHessian: the speed-ups (PyHessian's seconds over jaxspec's
    first and warm runs) and the ratios of peaks (jaxspec's over PyHessian's).

    Example:
      >>> from experiments.vs_pyhessian import table
      >>> row = lambda s, p: {"first_s": s, "warm_s": s, "peak_bytes": p, "setup_bytes": p // 2,
      ...                     "lambda_max": 1.0}
      >>> lines = table({"mlp": {"pyhessian": [row(3.0, 2 << 30)], "default": [row(1.0, 1 << 30)]}})
      >>> lines[-1].split()
      ['default', '3.00', '3.00', '0.50', '0.50']
    """
    lines = []
    for model, runs in results.items():
        lines.append(f"\n== {model}")
        lines.append(f"  {'run':12s} {'first s':>8s} {'warm s':>8s} {'peak MiB':>9s} "
                     f"{'warm peak':>9s} {'setup MiB':>9s} {'lambda_max':>11s}")
        best = {}
        for name, rows in runs.items():
            ok = [r for r in rows if "error" not in r]
            if not ok:
                lines.append(f"  {name:12s} failed: {rows[0]['error']}")
                continue
            r = best[name] = min(ok, key=lambda r: r.get("warm_s", r["first_s"]))
            lines.append(f"  {name:12s} {r['first_s']:8.2f} {r.get('warm_s', r['first_s']):8.2f} "
                         f"{r['peak_bytes'] / 2**20:9.0f} {_warm_peak(r) / 2**20:9.0f} "
                         f"{r['setup_bytes'] / 2**20:9.0f} {r['lambda_max']:11.5g}")
        ref = best.get("pyhessian")
        if ref:  # speed-ups: PyHessian's seconds over jaxspec's; memory: jaxspec's over PyHessian's
            lines.append(f"  {'against PyHessian':17s} {'speed-up first':>14s} {'warm':>6s} "
                         f"{'peak / peak':>11s} {'warm peak / peak':>16s}")
            for name, r in best.items():
                if name != "pyhessian":
                    lines.append(f"  {name:17s} {ref['first_s'] / r['first_s']:14.2f} "
                                 f"{ref['first_s'] / r.get('warm_s', r['first_s']):6.2f} "
                                 f"{r['peak_bytes'] / ref['peak_bytes']:11.2f} "
                                 f"{_warm_peak(r) / ref['peak_bytes']:16.2f}")
    return lines


def main(argv: list[str] | None = None) -> dict:
    """Command line entry point (see the module docstring); returns ``{model: {run: [rows]}}``.

    Example (``--child jaxspec`` runs one side in this process and prints its JSON row):
      >>> import contextlib, io, json
      >>> from experiments.vs_pyhessian import main
      >>> out = io.StringIO()
      >>> with contextlib.redirect_stdout(out):
      ...     _ = main(["--child", "jaxspec-default", "--models", "mlp", "--n", "4", "--m", "2",
      ...               "--batch-size", "4"])
      >>> sorted(json.loads(out.getvalue()))[:2]
      ['first_s', 'lambda_max']
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument("--torch-python", default=None,
                    help="a Python with torch and pyhessian (without it, jaxspec runs alone)")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--m", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--warm", action=argparse.BooleanOptionalAction, default=True,
                    help="time a second, warm jaxspec run (--no-warm: the first only, for "
                         "workloads where compiling is a small part)")
    ap.add_argument("--child", choices=("pyhessian", *(f"jaxspec-{c}" for c in CONFIGS)),
                    help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--programs", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        model = args.models[0]
        row = (_torch_run(model, args.n, args.m, args.batch_size, args.weights)
               if args.child == "pyhessian" else
               _jaxspec_run(model, args.child.removeprefix("jaxspec-"), args.n, args.m,
                            args.batch_size, args.weights, args.warm, args.programs))
        print(json.dumps(row))
        return row
    print(f"{machine()}; {load_average()}; N={args.n}, batch={args.batch_size}, m={args.m}, "
          "one probe")
    runs = ([("pyhessian", args.torch_python, "pyhessian")] if args.torch_python else [])
    runs += [(c, sys.executable, f"jaxspec-{c}") for c in args.configs]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = {model: os.path.join(tmp, f"{model}.npz") for model in args.models}
        for model, save in (("mlp", _mlp_weights), ("cnn", _cnn_weights)):
            if model in args.models:
                save(weights[model])
        programs = os.path.join(tmp, "programs")
        for model in args.models:
            results[model] = {name: [] for name, _, _ in runs}
            if "disk-cache" in args.configs:  # one first run fills the directory of programs
                fill = argparse.Namespace(**{**vars(args), "warm": False})
                _child(sys.executable, "jaxspec-disk-cache", model, fill, weights[model], programs)
            for _ in range(args.rounds):
                for name, python, side in runs:
                    row = _child(python, side, model, args, weights[model], programs)
                    results[model][name].append(row)
                    print(model, name, row, flush=True)
    print("\n".join(table(results)))
    print(load_average())
    return results


if __name__ == "__main__":
    main()
