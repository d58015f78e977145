"""The edge of the library: files and progress. The core never imports this module.

* Lanczos hooks (:class:`jaxspec.LanczosHook`) for :func:`jaxspec.run_lanczos` and
  :func:`jaxspec.slq`: :class:`LanczosCheckpoint` saves the state after every chunk and resumes
  from it, refusing a state made by another operator; :class:`ProgressBar` draws a bar.
* Spectra to and from ``.json`` / ``.npz`` (:func:`save_spectrum`, :func:`load_spectrum`).
* One JSON encoder (:func:`jsonable`, :func:`dumps`): strict JSON, NaN -> null.

Every file is written atomically (:mod:`jaxspec.atomic`): a run killed while saving
leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxspec.lanczos import LanczosHook, LanczosState
from jaxspec.reorth import omega_init
from jaxspec.slq import Spectrum
from jaxspec.atomic import replacing, write_text

__all__ = [
    "LanczosCheckpoint",
    "ProgressBar",
    "dumps",
    "jsonable",
    "load_lanczos_state",
    "load_spectrum",
    "save_lanczos_state",
    "save_spectrum",
    "slq_hooks",
    "spectrum_from_dict",
    "spectrum_to_dict",
]


# ---- JSON -----------------------------------------------------------------------------------


def jsonable(x: Any) -> Any:
    """A copy of ``x`` that strict JSON takes: NaN/Inf -> None, tuples -> lists, NumPy and JAX
    scalars and arrays -> Python numbers and lists.

    Example:
      >>> import numpy as np
      >>> from jaxspec.io import jsonable
      >>> jsonable({"q": float("nan"), "m": np.int64(3), "t": (np.float32(0.5), np.bool_(True))})
      {'q': None, 'm': 3, 't': [0.5, True]}
    """
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array)) and np.ndim(x) > 0:
        return jsonable(np.asarray(x).tolist())
    if isinstance(x, (np.ndarray, jax.Array)):
        x = np.asarray(x).item()
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def dumps(x: Any, /, *, indent: int | None = 1) -> str:
    """Strict JSON of :func:`jsonable` ``(x)``.

    Example:
      >>> from jaxspec.io import dumps
      >>> dumps({"a": float("inf")}, indent=None)
      '{"a": null}'
    """
    return json.dumps(jsonable(x), indent=indent, allow_nan=False)


# ---- spectra --------------------------------------------------------------------------------


def spectrum_to_dict(spectrum: Spectrum, /) -> dict[str, Any]:
    """A JSON-ready dict: nodes and weights at full float64 precision, meta and the summary.

    Example:
      >>> from jaxspec import Spectrum
      >>> from jaxspec.io import spectrum_to_dict
      >>> spectrum_to_dict(Spectrum([1.0], [1.0]))["nodes"]
      [1.0]
    """
    return jsonable({"nodes": spectrum.nodes.tolist(), "weights": spectrum.weights.tolist(),
                     "num_vectors": spectrum.num_vectors, "meta": spectrum.meta,
                     "summary": spectrum.summary()})


def spectrum_from_dict(d: dict[str, Any], /) -> Spectrum:
    """Inverse of :func:`spectrum_to_dict`.

    Example:
      >>> from jaxspec import Spectrum
      >>> from jaxspec.io import spectrum_from_dict, spectrum_to_dict
      >>> s = Spectrum([1.0, 2.0], [0.5, 0.5])
      >>> spectrum_from_dict(spectrum_to_dict(s)) == s
      True
    """
    return Spectrum(np.asarray(d["nodes"]), np.asarray(d["weights"]),
                    num_vectors=int(d.get("num_vectors", 1)), meta=dict(d.get("meta") or {}))


def save_spectrum(spectrum: Spectrum, path: str | os.PathLike, /) -> None:
    """Writes ``spectrum`` to ``.json`` (readable) or ``.npz`` (compact), atomically.

    Example:
      >>> import os, tempfile
      >>> from jaxspec import Spectrum
      >>> from jaxspec.io import load_spectrum, save_spectrum
      >>> p = os.path.join(tempfile.mkdtemp(), "s.json")
      >>> save_spectrum(Spectrum([1.0, 2.0], [0.5, 0.5], meta={"model": "mlp"}), p)
      >>> load_spectrum(p).meta
      {'model': 'mlp'}
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        with replacing(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, nodes=spectrum.nodes, weights=spectrum.weights,
                     num_vectors=spectrum.num_vectors, meta=dumps(spectrum.meta, indent=None))
    elif path.endswith(".json"):
        write_text(path, dumps(spectrum_to_dict(spectrum)))
    else:
        raise ValueError(f"unknown spectrum format for {path!r}: use .json or .npz")


def load_spectrum(path: str | os.PathLike, /) -> Spectrum:
    """Reads a spectrum written by :func:`save_spectrum`.

    Example:
      >>> import os, tempfile
      >>> from jaxspec import Spectrum
      >>> from jaxspec.io import load_spectrum, save_spectrum
      >>> p = os.path.join(tempfile.mkdtemp(), "s.npz")
      >>> save_spectrum(Spectrum([1.0], [1.0]), p)
      >>> load_spectrum(p).nodes.tolist()
      [1.0]
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path) as f:
            return Spectrum(f["nodes"], f["weights"], num_vectors=int(f["num_vectors"]),
                            meta=json.loads(str(f["meta"])))
    with open(path) as f:
        return spectrum_from_dict(json.load(f))


# ---- Lanczos states -------------------------------------------------------------------------


def save_lanczos_state(path: str | os.PathLike, state: LanczosState, /, *,
                       fingerprint: str | None = None) -> None:
    """Writes a :class:`jaxspec.LanczosState` (and the operator's fingerprint) to ``.npz``,
    atomically.

    Example:
      >>> import jax.numpy as jnp, tempfile, os
      >>> from jaxspec import lanczos_init
      >>> from jaxspec.io import load_lanczos_state, save_lanczos_state
      >>> path = os.path.join(tempfile.mkdtemp(), "state.npz")
      >>> save_lanczos_state(path, lanczos_init(jnp.ones(3), 2))
      >>> int(load_lanczos_state(path).step)
      0
    """
    arrays = {k: np.asarray(v) for k, v in state._asdict().items()}
    if fingerprint is not None:
        arrays["fingerprint"] = np.asarray(fingerprint)
    with replacing(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _read(path) -> tuple[LanczosState, str | None]:
    try:
        with np.load(os.fspath(path)) as f:
            missing = set(LanczosState._fields) - set(f.files)
            if missing - {"omega", "passes", "unit"}:
                raise ValueError(f"{path} is not a Lanczos checkpoint (missing {sorted(missing)}); "
                                 "delete it or use another path")
            fingerprint = str(f["fingerprint"]) if "fingerprint" in f.files else None
            arrays = {k: f[k] for k in LanczosState._fields if k in f.files}
        if missing - {"unit"}:  # written before the state held the estimates: every vector
            step, num_steps = int(arrays["step"]), arrays["alphas"].shape[0]  # had full passes
            arrays["omega"] = np.asarray(omega_init(num_steps, arrays["alphas"].dtype, step))
            arrays["passes"] = np.int32(step)  # at least one pass a step; the second not counted
        if "unit" in missing:  # written before the unit was measured: the recurrence's default
            arrays["unit"] = np.finfo(arrays["alphas"].dtype).eps
        return LanczosState(**arrays), fingerprint
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as err:
        if isinstance(err, ValueError) and "not a Lanczos checkpoint" in str(err):
            raise
        raise ValueError(f"the Lanczos checkpoint {path} is unreadable ({type(err).__name__}: "
                         f"{err}); delete it (or rerun with --restart) to start the run afresh"
                         ) from err


def load_lanczos_state(path: str | os.PathLike, /) -> LanczosState:
    """Reads a state written by :func:`save_lanczos_state`, as NumPy arrays.

    Example:
      >>> import jax.numpy as jnp, tempfile, os
      >>> from jaxspec import lanczos_init
      >>> from jaxspec.io import load_lanczos_state, save_lanczos_state
      >>> path = os.path.join(tempfile.mkdtemp(), "state.npz")
      >>> save_lanczos_state(path, lanczos_init(jnp.ones(3), 2))
      >>> load_lanczos_state(path).basis.shape
      (16, 3)
    """
    return _read(path)[0]


class LanczosCheckpoint(LanczosHook):
    """Saves the Lanczos state to ``path`` after every chunk; a rerun resumes from it.

    The saved state is checked against the run before it is used: its shape, dtype and number
    of steps, the start vector, and the *fingerprint* of the operator
    (:meth:`jaxspec.CurvatureOperator.fingerprint`, or the ``fingerprint`` string given here
    for other matvecs). A state made with other weights or data is refused, never mixed in.

    Args:
      path: the ``.npz`` file; its folder must exist.
      fingerprint: what the run applies: ``"auto"`` (the operator's fingerprint; not checked
        for a plain callable), a string of the caller's, or None (not checked).

    Example:
      >>> import jax.numpy as jnp, os, tempfile
      >>> from jaxspec import run_lanczos
      >>> from jaxspec.io import LanczosCheckpoint
      >>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
      >>> A = jnp.diag(jnp.arange(1.0, 7.0))
      >>> a = run_lanczos(lambda v: A @ v, jnp.ones(6), 6, hooks=[LanczosCheckpoint(path)])
      >>> b = run_lanczos(lambda v: A @ v, jnp.ones(6), 6, hooks=[LanczosCheckpoint(path)])
      >>> bool((a.alphas == b.alphas).all())   # the second run resumed the finished state
      True
    """

    def __init__(self, path: str | os.PathLike, /, *, fingerprint: str | None = "auto"):
        self.path = os.fspath(path)
        self.fingerprint = fingerprint
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"the folder of the Lanczos checkpoint {self.path} does not "
                                    "exist; create it first")

    def resume(self, v0, num_steps: int, block_size: int, matvec) -> LanczosState | None:
        """The saved state, checked against this run, or None if there is none.

        Example:
          >>> import os, tempfile
          >>> from jaxspec.io import LanczosCheckpoint
          >>> ckpt = LanczosCheckpoint(os.path.join(tempfile.mkdtemp(), "none.npz"))
          >>> ckpt.resume(None, 3, 16, None) is None
          True
        """
        if self.fingerprint == "auto":
            fp = getattr(matvec, "fingerprint", None)
            self.fingerprint = fp() if callable(fp) else None
        if not os.path.exists(self.path):
            return None
        if v0 is None:
            raise ValueError(f"resuming {self.path} needs the start vector in this process")
        state, saved_fp = _read(self.path)
        rows = -(-(num_steps + 1) // block_size) * block_size
        if (state.basis.shape != (rows, v0.shape[0]) or state.basis.dtype != v0.dtype
                or state.num_steps != num_steps):
            raise ValueError(f"checkpoint {self.path} holds a run of another shape or dtype "
                             f"({state.num_steps} steps, basis {state.basis.shape} "
                             f"{state.basis.dtype}); delete it or use another path")
        q0 = np.asarray(v0, np.float64) / np.linalg.norm(np.asarray(v0, np.float64))
        if not np.allclose(np.asarray(state.basis[0], np.float64), q0, atol=1e-6):
            raise ValueError(f"checkpoint {self.path} was made from another start vector; delete "
                             "it or use another path")
        if self.fingerprint is not None and saved_fp != self.fingerprint:
            raise ValueError(
                f"checkpoint {self.path} was made by another operator (fingerprint "
                f"{saved_fp} here, {self.fingerprint} for this run: other weights, data, loss "
                "or matrix kind); resuming would mix two matrices. Delete it, or use another path")
        return state

    def after_chunk(self, snapshot: Callable[[], LanczosState], step: int,
                    num_steps: int) -> None:
        """Saves the state (atomically).

        Example:
          >>> import jax.numpy as jnp, os, tempfile
          >>> from jaxspec import lanczos_init
          >>> from jaxspec.io import LanczosCheckpoint
          >>> ckpt = LanczosCheckpoint(os.path.join(tempfile.mkdtemp(), "s.npz"), fingerprint=None)
          >>> ckpt.after_chunk(lambda: lanczos_init(jnp.ones(3), 2), 0, 2)
          >>> os.path.exists(ckpt.path)
          True
        """
        fp = self.fingerprint if self.fingerprint != "auto" else None
        save_lanczos_state(self.path, snapshot(), fingerprint=fp)


class ProgressBar(LanczosHook):
    """A tqdm progress bar over Lanczos steps, labelled ``label``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec import run_lanczos
      >>> from jaxspec.io import ProgressBar
      >>> res = run_lanczos(lambda v: 2 * v, jnp.ones(3), 1, hooks=[ProgressBar("demo")])
      >>> int(res.num_valid)
      1
    """

    def __init__(self, label: str = "lanczos", /):
        self.label = label
        self.bar = None

    def start(self, step: int, num_steps: int) -> None:
        """Opens the bar at ``step`` of ``num_steps``.

        Example:
          >>> from jaxspec.io import ProgressBar
          >>> bar = ProgressBar("x"); bar.start(0, 2); bar.close()
        """
        from tqdm.auto import tqdm

        self.bar = tqdm(total=num_steps, initial=step, desc=self.label, unit="step")

    def after_chunk(self, snapshot, step: int, num_steps: int) -> None:
        """Moves the bar to ``step``.

        Example:
          >>> from jaxspec.io import ProgressBar
          >>> bar = ProgressBar("x"); bar.start(0, 2); bar.after_chunk(None, 2, 2); bar.close()
        """
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        """Closes the bar.

        Example:
          >>> from jaxspec.io import ProgressBar
          >>> ProgressBar().close()
        """
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def slq_hooks(*, checkpoint_dir: str | os.PathLike | None = None, progress: bool | str = False,
              fingerprint: str | None = "auto") -> Callable[[int, int], Sequence[LanczosHook]]:
    """Hooks for every probe of :func:`jaxspec.slq`: a checkpoint ``lanczos_<i>.npz`` per probe
    in ``checkpoint_dir`` (created if needed) and a progress bar (``progress``: its label).

    Example:
      >>> import jax, jax.numpy as jnp, os, tempfile
      >>> from jaxspec import slq
      >>> from jaxspec.io import slq_hooks
      >>> d = os.path.join(tempfile.mkdtemp(), "ckpt")
      >>> s = slq(lambda v: 2 * v, jax.random.key(0), 4, 2, num_vectors=2,
      ...         hooks=slq_hooks(checkpoint_dir=d))
      >>> sorted(os.listdir(d))
      ['lanczos_0.npz', 'lanczos_1.npz']
    """
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)

    def hooks(i: int, num_vectors: int) -> list[LanczosHook]:
        out: list[LanczosHook] = []
        if checkpoint_dir is not None:
            out.append(LanczosCheckpoint(os.path.join(os.fspath(checkpoint_dir),
                                                      f"lanczos_{i}.npz"),
                                         fingerprint=fingerprint))
        if progress:
            label = progress if isinstance(progress, str) else "slq"
            out.append(ProgressBar(f"{label} {i + 1}/{num_vectors}" if num_vectors > 1
                                   else label))
        return out

    return hooks
