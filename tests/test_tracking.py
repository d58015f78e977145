"""Curvature tracking during training (train.tracking): records at the right steps, the right
eigenvalue and thresholds, warm starts, no recompilation, an unchanged trajectory, resumption,
and the edge-of-stability panel of train.curves."""

import dataclasses
import json
import os
import struct

import jax
import numpy as np
import pytest

from compiles import compilations

from train import TrainConfig, apply_overrides, load_checkpoint, paper_lr, train_and_evaluate
from train.metrics_io import read_curvature, read_metrics

# 64 images, batch 16: 4 steps an epoch, 12 in all; lambda_max after steps 2, 4, ..., 12. The
# third epoch has a lower rate (t / T = 2/3 > 0.5), so the thresholds change with the schedule.
RUN = TrainConfig(model="mlp", model_kwargs={"hidden": [8]}, dataset="synthetic",
                  synthetic_size=(64, 32), epochs=3, batch_size=16, eval_batch_size=32,
                  base_lr=0.05, prng_impl="rbg", progress=False, checkpoint_epochs=(1, 3),
                  track_curvature_every=2, track_curvature_samples=32)
OFF = dataclasses.replace(RUN, track_curvature_every=None)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tracked run, each measurement's compilations counted."""
    from train.tracking import CurvatureTracker

    workdir = str(tmp_path_factory.mktemp("tracked"))
    counts, measure = [], CurvatureTracker.measure

    def counted(self, *args, **kwargs):
        with compilations() as seen:
            out = measure(self, *args, **kwargs)
        counts.append(len(seen))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CurvatureTracker, "measure", counted)
        records = train_and_evaluate(RUN, workdir)
    return workdir, records, counts


def _params(workdir, epoch=None):
    from flax import nnx

    model, _, _ = load_checkpoint(workdir, epoch=epoch)
    return model, jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_records_at_the_right_steps_with_the_schedules_thresholds(tracked):
    workdir, records, counts = tracked
    assert [r["epoch"] for r in records] == [1, 2, 3] and records == read_metrics(workdir)
    curv = read_curvature(workdir)
    assert [r["step"] for r in curv] == [2, 4, 6, 8, 10, 12]
    assert [r["epoch"] for r in curv] == [1, 1, 2, 2, 3, 3]
    lrs = {r["epoch"]: r["lr"] for r in records}
    assert lrs[3] < lrs[1] == 0.05
    for r in curv:
        assert r["record"] == "curvature" and r["kind"] == "hessian" and r["samples"] == 32
        lr = paper_lr(r["epoch"] - 1, base_lr=0.05, total_epochs=3)
        assert r["lr"] == lr == lrs[r["epoch"]]
        assert r["lr_threshold"] == pytest.approx(2 / lr, rel=1e-12)
        assert r["lr_threshold_momentum"] == pytest.approx(2 * 1.9 / lr, rel=1e-12)
        assert r["converged"] and r["residual"] <= 1e-3 * r["lambda_max"]
        assert r["lambda_max"] > 0 and r["seconds"] > 0
    assert [r["warm"] for r in curv] == [False] + [True] * 5
    # Each epoch's curvature lines precede its epoch line in the file.
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [(r.get("record", "epoch"), r["epoch"]) for r in lines] == [
        ("curvature", 1), ("curvature", 1), ("epoch", 1), ("curvature", 2), ("curvature", 2),
        ("epoch", 2), ("curvature", 3), ("curvature", 3), ("epoch", 3)]
    # The operator is built and compiled once: no later measurement compiles anything.
    assert counts[0] > 0 and counts[1:] == [0] * 5, counts


def test_lambda_max_and_warm_start_against_a_cold_reference(tracked):
    """The last record (at the final parameters) against an independent cold eigsh: the same
    matrix built from the checkpoint, its own normalised data, a tight tolerance."""
    import jaxspec
    from jaxspec.data import normalized_split
    from jaxspec.models import hessian_loss
    from train.loop import load_data
    from train.tracking import MAX_RESTARTS, CurvatureTracker

    workdir, _, _ = tracked
    last = read_curvature(workdir)[-1]
    model, _ = _params(workdir)
    loss_fn, params = hessian_loss(model, bn_mode="batch", weight_decay=RUN.weight_decay)
    split = normalized_split(load_data(RUN))
    data = jaxspec.batch_dataset({k: v[:32] for k, v in split.items()}, 16)
    op = jaxspec.curvature_operator(loss_fn, params, data)
    # (placed as the tracker places its cold start: the two runs share their compilations)
    v0 = jax.device_put(np.ones(op.size, np.float32), jax.tree.leaves(op.params)[0].sharding)
    ref = jaxspec.eigsh(op, v0, 1, tol=1e-5)
    assert ref.converged[0]
    assert abs(last["lambda_max"] - ref.values[0]) <= 1e-3 * ref.values[0]
    assert abs(last["lambda_max"] - ref.values[0]) <= last["residual"] + ref.residuals[0]
    # A cold start at the same parameters (same tolerance, same restart budget) takes more
    # products than the tracked warm start did.
    cold = CurvatureTracker(loss_fn, data, tol=RUN.track_curvature_tol)
    first = cold.measure(params, step=0, epoch=0, lr=0.05)
    assert first["warm"] is False and MAX_RESTARTS >= first["num_restarts"]
    assert first["lambda_max"] == pytest.approx(last["lambda_max"], rel=2e-3)
    assert last["num_matvecs"] < first["num_matvecs"], (last, first)
    warm = [r["num_matvecs"] for r in read_curvature(workdir)[1:]]
    assert max(warm) < read_curvature(workdir)[0]["num_matvecs"], warm


def test_off_leaves_metrics_and_trajectory_unchanged_and_resume_restarts_cold(tracked, tmp_path):
    workdir, records, _ = tracked
    other = str(tmp_path / "w")
    # Tracking off for the first epoch: no curvature lines, the same losses.
    first = train_and_evaluate(dataclasses.replace(OFF, stop_after=1), other)
    assert read_curvature(other) == []
    with open(os.path.join(other, "metrics.jsonl")) as f:
        assert all("record" not in json.loads(line) for line in f)
    assert first[0]["train_loss"] == records[0]["train_loss"]
    # Switched on when resuming (a run-control field): records from the resumed epoch on,
    # the first one a cold start, and the parameters bitwise those of the tracked run.
    again = train_and_evaluate(RUN, other)
    assert [r["epoch"] for r in again] == [1, 2, 3]
    curv = read_curvature(other)
    assert [r["step"] for r in curv] == [6, 8, 10, 12]
    assert [r["warm"] for r in curv] == [False, True, True, True]
    tracked_curv = {r["step"]: r["lambda_max"] for r in read_curvature(workdir)}
    for r in curv:
        assert r["lambda_max"] == pytest.approx(tracked_curv[r["step"]], rel=2e-3)
    for epoch in (1, 3):
        jax.tree.map(np.testing.assert_array_equal, _params(other, epoch)[1],
                     _params(workdir, epoch)[1])
    # A resumption drops the curvature lines of the epochs it trains again.
    from train.metrics_io import truncate_metrics

    truncate_metrics(other, max_epoch=2)
    assert [r["step"] for r in read_curvature(other)] == [6, 8]


def test_curves_draw_the_edge_of_stability_panel(tracked, tmp_path):
    from train.curves import main

    workdir, _, _ = tracked

    def width(path):
        with open(path, "rb") as f:
            head = f.read(24)
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        return struct.unpack(">I", head[16:20])[0]

    with_panel, without = str(tmp_path / "c.png"), str(tmp_path / "plain.png")
    assert main(["--workdir", workdir, "--out", with_panel]) == 0
    from train.curves import plot_curves

    plot_curves(read_metrics(workdir), path=without)
    assert width(with_panel) == 3 * width(without) // 2  # three panels instead of two


def test_tracking_fields_are_checked_and_run_control():
    from train.configs import RUN_CONTROL_FIELDS

    c = apply_overrides(OFF, ["track_curvature_every=20", "track_curvature=ggn"])
    assert (c.track_curvature_every, c.track_curvature) == (20, "ggn")
    for bad in ("track_curvature_every=0", "track_curvature=fisher", "track_curvature_tol=0",
                "track_curvature_samples=0", "track_curvature_tol=2"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            apply_overrides(OFF, [bad])
    assert {f.name for f in dataclasses.fields(TrainConfig)
            if f.name.startswith("track_")} <= RUN_CONTROL_FIELDS
    assert TrainConfig().track_curvature_every is None


def test_a_fresh_tracked_run_of_a_batchnorm_model_measures(tmp_path):
    """The train step donates its state, and the tracker's loss holds the model's BatchNorm
    statistics: on one device the first state must not alias the model's arrays, or the first
    step deletes them and the first measurement fails ("Array has been deleted")."""
    cfg = dataclasses.replace(RUN, model="smallcnn", model_kwargs={"widths": [2]}, epochs=1,
                              synthetic_size=(32, 16), checkpoint_epochs=(1,),
                              track_curvature_samples=16)
    train_and_evaluate(cfg, str(tmp_path))
    curv = read_curvature(str(tmp_path))
    assert [r["step"] for r in curv] == [2] and np.isfinite(curv[0]["lambda_max"])


def test_ggn_tracking_and_a_batchnorm_model():
    """GGN tracking (nonnegative, converged) of the MLP; for a CNN with BatchNorm and dropout,
    the training state's parameters have the structure of the tracker's loss (batch-mode BN)."""
    from jaxspec.data import synthetic_cifar
    from jaxspec.operator import curvature_operator
    from train.steps import build_trainer
    from train.tracking import build_tracker

    data = synthetic_cifar(num_train=16, num_test=8)
    cfg = apply_overrides(RUN, ["batch_size=8", "track_curvature=ggn",
                                "track_curvature_samples=12"])
    trainer = build_trainer(cfg, num_classes=10, num_train=16, mean=data.mean, std=data.std)
    tracker = build_tracker(cfg, model=trainer.model, data=data)
    assert tracker.data.batches["image"].shape[:2] == (1, 8) and tracker.data.tail is not None
    r = tracker.measure(trainer.init_state.params, step=2, epoch=1, lr=0.1)
    assert r["kind"] == "ggn" and r["samples"] == 12 and r["converged"] and r["lambda_max"] > 0

    cnn = dataclasses.replace(cfg, model="smallcnn", model_kwargs={"widths": [2], "dropout": 0.5})
    trainer = build_trainer(cnn, num_classes=10, num_train=16, mean=data.mean, std=data.std)
    tracker = build_tracker(cnn, model=trainer.model, data=data)
    params = trainer.init_state.params
    assert len(trainer.init_state.batch_stats) > 0  # the model has BatchNorm
    op = curvature_operator(tracker.loss_fn, params, tracker.data, kind="ggn")
    assert jax.tree.structure(op.params) == jax.tree.structure(params)
