"""``metrics.jsonl``: one JSON object per finished epoch, appended durably; no JAX needed to read.

With curvature tracking on (``TrainConfig.track_curvature_every``), the file also holds
curvature records, marked ``"record": "curvature"`` and written just before the line of the
epoch they were measured in (keys: :mod:`train.tracking`). :func:`read_metrics` returns the
epoch lines only, as before tracking existed; :func:`read_curvature` returns the others.

Keys of an epoch line: ``epoch`` (completed epochs, 1-based), ``lr`` (the rate used during that
epoch), ``train_loss``/``train_accuracy`` (running means over the epoch's augmented training
batches in training mode, as the SWA code base reports them), ``test_loss``/``test_accuracy``
(the whole test set, evaluation mode), ``epoch_time`` (seconds, evaluation and curvature
tracking included), ``train_images_per_s`` (tracking excluded), and ``elapsed`` (seconds of
training in this work directory, summed over resumptions).
"""

from __future__ import annotations

import json
import os
from typing import Any

from jaxspec.atomic import write_text

__all__ = ["CURVATURE_RECORD", "METRICS_FILE", "append_metrics", "read_curvature", "read_metrics",
           "truncate_metrics"]

METRICS_FILE = "metrics.jsonl"
CURVATURE_RECORD = "curvature"  # the "record" value of a curvature line


def read_metrics(workdir: str | os.PathLike, /) -> list[dict[str, Any]]:
    """The epoch records of ``workdir/metrics.jsonl`` in file order; ``[]`` if there is none.

    A last line cut short by a kill is ignored (it can only be the one being written). Lines
    with a ``"record"`` key (curvature tracking: :func:`read_curvature`) are left out.

    Example:
      >>> import tempfile
      >>> from train.metrics_io import append_metrics, read_metrics
      >>> d = tempfile.mkdtemp(); append_metrics(d, {"epoch": 1, "test_accuracy": 0.5})
      >>> append_metrics(d, {"record": "curvature", "epoch": 2, "step": 7, "lambda_max": 3.0})
      >>> read_metrics(d)
      [{'epoch': 1, 'test_accuracy': 0.5}]
    """
    return [r for r in _read_lines(workdir) if "record" not in r]


def read_curvature(workdir: str | os.PathLike, /) -> list[dict[str, Any]]:
    """The curvature records of ``workdir/metrics.jsonl`` (:mod:`train.tracking`), by step.

    Example:
      >>> import tempfile
      >>> from train.metrics_io import append_metrics, read_curvature
      >>> d = tempfile.mkdtemp(); append_metrics(d, {"epoch": 1, "test_accuracy": 0.5})
      >>> append_metrics(d, {"record": "curvature", "epoch": 2, "step": 7, "lambda_max": 3.0})
      >>> [(r["step"], r["lambda_max"]) for r in read_curvature(d)]
      [(7, 3.0)]
    """
    return [r for r in _read_lines(workdir) if r.get("record") == CURVATURE_RECORD]


def _read_lines(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    path = os.path.join(os.fspath(workdir), METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # a torn final write
            raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}") from None
    return records


def append_metrics(workdir: str | os.PathLike, record: dict[str, Any], /) -> None:
    """Append one record and fsync, so a finished epoch survives a crash right after.

    Example:
      >>> import tempfile
      >>> from train.metrics_io import append_metrics
      >>> append_metrics(tempfile.mkdtemp(), {"epoch": 1})
    """
    path = os.path.join(os.fspath(workdir), METRICS_FILE)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(workdir: str | os.PathLike, /, *, max_epoch: int) -> list[dict[str, Any]]:
    """Keep the records with ``epoch <= max_epoch`` (atomic rewrite); return the epoch records.

    Used on resumption: epochs after the restored checkpoint are trained again, so their old
    records (written before the kill) are dropped rather than duplicated; curvature records
    carry the (1-based) epoch they were measured in and are kept or dropped with it.

    Example:
      >>> import tempfile
      >>> from train.metrics_io import append_metrics, truncate_metrics
      >>> d = tempfile.mkdtemp()
      >>> for e in (1, 2, 3): append_metrics(d, {"epoch": e})
      >>> truncate_metrics(d, max_epoch=2)
      [{'epoch': 1}, {'epoch': 2}]
    """
    kept = [r for r in _read_lines(workdir) if r.get("epoch", 0) <= max_epoch]
    path = os.path.join(os.fspath(workdir), METRICS_FILE)
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept), fsync=True)
    return [r for r in kept if "record" not in r]
