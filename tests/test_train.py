"""Tests of train/: the schedule, the optimiser, configs, and resumable runs on mock CIFAR."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import TrainConfig, apply_overrides, config_names, get_config, load_checkpoint
from train import paper_lr, read_metrics, train_and_evaluate
from train.configs import describe
from train.schedules import epoch_lr_schedule
from train.steps import make_optimizer

# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    "base_lr, total, expected",
    [
        # Normal: alpha0 0.1 at t/T = 0, 0.5, 0.7, 0.9, 1 (T = 10 puts them on whole epochs).
        (0.1, 10, [0.1, 0.1, 0.1 * (1 - 0.99 * 0.5), 0.001, 0.001]),
        # Overfit: alpha0 0.001, T = 1000.
        (0.001, 1000, [0.001, 0.001, 0.001 * (1 - 0.99 * 0.5), 1e-5, 1e-5]),
    ],
)
def test_schedule_exact_values(base_lr, total, expected):
    epochs = [round(f * total) for f in (0.0, 0.5, 0.7, 0.9, 1.0)]
    got = [paper_lr(t, base_lr=base_lr, total_epochs=total) for t in epochs]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # The traced version (inside the optimiser) agrees in float32.
    traced = paper_lr(jnp.asarray(epochs), base_lr=base_lr, total_epochs=total)
    assert traced.dtype == jnp.float32
    np.testing.assert_allclose(traced, expected, rtol=1e-6)


def test_schedule_branches_on_paper_configs():
    # T = 225: epoch 112 (t/T <= 0.5) is the last at alpha0; epoch 203 (> 0.9) is at alpha0 r.
    lr = lambda t: paper_lr(t, base_lr=0.1, total_epochs=225)  # noqa: E731
    assert lr(112) == 0.1 and lr(113) < 0.1
    assert lr(202) > 0.001 and lr(203) == pytest.approx(0.001)
    s = epoch_lr_schedule(base_lr=0.1, total_epochs=225, steps_per_epoch=390)
    assert float(s(112 * 390 + 389)) == pytest.approx(0.1)
    assert float(s(113 * 390)) == pytest.approx(lr(113), rel=1e-6)


def test_optimizer_matches_pytorch_sgd():
    # torch.optim.SGD(lr, momentum=0.9, weight_decay=wd): d = g + wd p; b = 0.9 b + d (b = d at
    # the first step); p -= lr * b, with lr changed once per epoch.
    cfg = TrainConfig(base_lr=0.1, epochs=4, weight_decay=0.01, momentum=0.9)
    tx = make_optimizer(cfg, steps_per_epoch=2)
    p = {"w": jnp.array([1.0, -2.0], jnp.float32)}
    state = tx.init(p)
    p_ref, buf = np.array([1.0, -2.0]), None
    for step in range(8):
        g = {"w": 2.0 * p["w"] ** 3}
        updates, state = tx.update(g, state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
        d = 2.0 * p_ref**3 + 0.01 * p_ref
        buf = d if buf is None else 0.9 * buf + d
        p_ref = p_ref - paper_lr(step // 2, base_lr=0.1, total_epochs=4) * buf
        np.testing.assert_allclose(p["w"], p_ref, rtol=2e-5)
    assert p["w"].dtype == jnp.float32


# --------------------------------------------------------------------------- configs


def test_paper_configs():
    names = config_names()
    for model in ("preresnet110", "vgg16"):
        for data in ("cifar10", "cifar100"):
            for sched in ("normal", "overfit"):
                name = f"{model}_{data}_{sched}"
                assert name in names
                c = get_config(name)
                assert (c.model, c.dataset, c.batch_size, c.momentum) == (model, data, 128, 0.9)
                assert c.weight_decay == (5e-4 if model == "vgg16" else 3e-4)
                if sched == "overfit":
                    assert (c.base_lr, c.epochs) == (0.001, 1000)
                else:
                    normal = (0.05, 300) if model == "vgg16" else (0.1, 225)
                    assert (c.base_lr, c.epochs) == normal
                assert 0 in c.checkpoint_epochs and c.epochs in c.checkpoint_epochs
                doc = getattr(__import__("train.configs", fromlist=[name]), name).__doc__
                assert f"python -m train --config {name} --workdir" in doc and "estimate" in doc
    for name in names:
        assert describe(name) and get_config(name).name == name


def test_overrides_and_json_roundtrip():
    c = apply_overrides(
        get_config("cpu_synthetic"),
        ["epochs=7", "base_lr=1", "checkpoint_epochs=[0, 7]", "model_kwargs={\"widths\": [4]}",
         "augment=false", "stop_after=null", "npz_path=/x.npz"],
    )
    assert (c.epochs, c.base_lr, c.checkpoint_epochs, c.augment) == (7, 1.0, (0, 7), False)
    assert isinstance(c.base_lr, float) and c.model_kwargs == {"widths": [4]}
    assert c.npz_path == "/x.npz"
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    for bad in (["nope=1"], ["epochs"], ["epochs=1.5"], ["augment=maybe"]):
        with pytest.raises(ValueError):
            apply_overrides(c, bad)


def test_cli_list_show_and_errors(capsys):
    from train.__main__ import main

    assert main(["--list"]) == 0
    assert "vgg16_cifar100_overfit" in capsys.readouterr().out
    assert main(["--config", "cpu_synthetic", "--show", "--set", "epochs=2"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 2
    with pytest.raises(SystemExit):
        main(["--config", "cpu_synthetic", "--workdir", "x", "--set", "bogus=1"])
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "preresnet110_cifar100_normal" in capsys.readouterr().out


# --------------------------------------------------------------------------- runs on mock CIFAR

# A tiny CNN with BatchNorm and dropout on 64 mock CIFAR-10 images: every piece of state a real
# run carries (parameters, BN statistics, momentum, step count, dropout and augmentation keys).
RUN = TrainConfig(
    name="test",
    model="smallcnn",
    model_kwargs={"widths": [4], "dropout": 0.5},
    dataset="cifar10",
    epochs=3,
    base_lr=0.05,
    batch_size=16,
    eval_batch_size=32,
    checkpoint_epochs=(0, 3),
    prng_impl="rbg",
    progress=False,
)
SET = [
    "model=smallcnn", 'model_kwargs={"widths": [4], "dropout": 0.5}', "dataset=cifar10",
    "epochs=3", "base_lr=0.05", "batch_size=16", "eval_batch_size=32", "checkpoint_epochs=0,3",
    "prng_impl=rbg", "progress=false", "weight_decay=0.0003", "synthetic_size=512,256",
]


@pytest.fixture(scope="module")
def mock_cifar():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=64):
        yield


@pytest.fixture(scope="module")
def full_run(mock_cifar, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("full"))
    return workdir, train_and_evaluate(RUN, workdir)


def _params(workdir, epoch=None):
    model, _, _ = load_checkpoint(workdir, epoch=epoch)
    from flax import nnx

    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return jax.tree.map(np.asarray, nnx.to_pure_dict(state))


def test_run_writes_config_metrics_and_checkpoints(full_run):
    workdir, records = full_run
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records == read_metrics(workdir)
    for key in ("lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_time"):
        assert np.isfinite(records[-1][key])
    assert records[0]["lr"] == 0.05 and records[2]["lr"] < 0.05
    with open(os.path.join(workdir, "config.json")) as f:
        assert TrainConfig.from_dict(json.load(f)) == RUN
    # Named epochs 0 and 3 are kept; the intermediate latest ones are not.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["0", "3"]
    model, config, metrics = load_checkpoint(workdir)
    assert config == RUN and len(metrics) == 3
    logits = model(jnp.zeros((2, 32, 32, 3), jnp.float32))
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert len(load_checkpoint(workdir, epoch=0)[2]) == 0
    with pytest.raises(ValueError, match="available: \\[0, 3\\]"):
        load_checkpoint(workdir, epoch=2)


def test_load_checkpoint_traces_the_model_once(full_run):
    """A sweep over checkpoints builds the model template once, and each load is its own."""
    from train import loop

    workdir, _ = full_run
    loop._model_template.cache_clear()
    first, last = _params(workdir, epoch=0), _params(workdir, epoch=3)
    info = loop._model_template.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    differs = jax.tree.map(lambda a, b: not np.array_equal(a, b), first, last)
    assert any(jax.tree.leaves(differs))
    assert loop.read_config(workdir) == RUN


def test_killed_run_resumes_on_the_same_trajectory(full_run, tmp_path, capsys):
    from train.__main__ import main

    workdir, records = full_run
    resumed = str(tmp_path / "resumed")
    # First leg through the command line: one epoch, as if killed after epoch 1 of 3.
    assert main(["--config", "cpu_synthetic", "--workdir", resumed, "--set", "name=test",
                 "--set", "stop_after=1", *sum((["--set", s] for s in SET), [])]) == 0
    assert "epoch 1/3" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["0", "1"]
    assert [r["epoch"] for r in read_metrics(resumed)] == [1]
    # A kill between writing epoch 2's metrics and its checkpoint leaves a stale line.
    with open(os.path.join(resumed, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"epoch": 2, "train_loss": -1.0}) + "\n")
    # A different config cannot resume here.
    with pytest.raises(ValueError, match="base_lr"):
        train_and_evaluate(apply_overrides(RUN, ["base_lr=0.1"]), resumed)
    again = train_and_evaluate(RUN, resumed)
    assert [r["epoch"] for r in again] == [1, 2, 3]
    for a, b in zip(again, records):
        for key in ("lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert a[key] == b[key], key
    full, part = _params(workdir), _params(resumed)
    jax.tree.map(np.testing.assert_array_equal, part, full)  # bitwise
    # A finished run is not trained further.
    assert train_and_evaluate(RUN, resumed) == again


def test_curves(full_run, tmp_path):
    from train.curves import main

    workdir, _ = full_run
    out = str(tmp_path / "c.png")
    assert main(["--workdir", workdir, "--out", out]) == 0
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- no silent failures

# A tiny run on synthetic data: compiled once per process, a fraction of a second per epoch.
TINY = TrainConfig(model="mlp", model_kwargs={"hidden": [8]}, dataset="synthetic",
                   synthetic_size=(64, 32), epochs=2, batch_size=32, eval_batch_size=32,
                   prng_impl="rbg", progress=False)


def test_config_values_are_checked_with_the_key_named(tmp_path, capsys):
    from train.__main__ import main

    c = get_config("cpu_synthetic")
    for bad, words in [
        ("epochs=abc", ["epochs", "int", "abc"]), ("epochs=-1", ["epochs", ">= 0"]),
        ("batch_size=0", ["batch_size", "> 0"]), ("eval_batch_size=-4", ["eval_batch_size"]),
        ("checkpoint_every=0", ["checkpoint_every"]), ("stop_after=-2", ["stop_after"]),
        ("base_lr=NaN", ["base_lr", "finite"]), ("momentum=1.5", ["momentum"]),
        ("weight_decay=-1", ["weight_decay"]), ("synthetic_size=0,5", ["synthetic_size"]),
        ("checkpoint_epochs=0,x", ["checkpoint_epochs", "int", "x"]),
        ("checkpoint_epochs=-1", ["checkpoint_epochs"]), ("train_per_class=0", ["train_per_class"]),
        ("prng_impl=nope", ["prng_impl", "threefry2x32"]), ("base_lr=fast", ["base_lr", "float"]),
        ("dataset=cifar11", ["dataset", "cifar100", "pydoc", "cifar11"]),
    ]:
        with pytest.raises(ValueError) as info:
            apply_overrides(c, [bad])
        assert all(w in str(info.value) for w in words), (bad, str(info.value))
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    workdir = str(tmp_path / "w")
    with pytest.raises(SystemExit) as info:
        main(["--config", "cpu_synthetic", "--workdir", workdir, "--set", "epochs=-1"])
    assert info.value.code != 0 and "epochs" in capsys.readouterr().err
    assert not os.path.exists(workdir)
    assert apply_overrides(c, ["epochs=0"]).epochs == 0  # a run that only saves its initialisation


def test_failed_first_start_writes_nothing(tmp_path, capsys):
    from train.__main__ import main
    from train.loop import SetupError

    workdir = str(tmp_path / "w")
    with pytest.raises(SetupError, match="nosuchmodel"):
        train_and_evaluate(dataclasses.replace(TINY, model="nosuchmodel"), workdir)
    assert not os.path.exists(workdir) or os.listdir(workdir) == []
    with pytest.raises(SetupError, match="unexpected keyword argument 'width'") as info:
        train_and_evaluate(dataclasses.replace(TINY, model_kwargs={"width": 8}), workdir)
    assert isinstance(info.value.__cause__, TypeError)
    assert not os.path.exists(workdir) or os.listdir(workdir) == []
    # The command line prints the message, not a traceback, and writes nothing either.
    for setting, words in (("model=nosuchmodel", "unknown model 'nosuchmodel'"),
                           ('model_kwargs={"width": 8}', "keyword argument 'width'")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--config", "cpu_synthetic", "--workdir", workdir, "--set", setting])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and words in err and "Traceback" not in err, err
        assert not os.path.exists(workdir) or os.listdir(workdir) == []
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_and_evaluate(dataclasses.replace(TINY, batch_size=128), workdir)
    assert not os.path.exists(workdir) or os.listdir(workdir) == []
    # The corrected command is not refused as "a different config".
    assert [r["epoch"] for r in train_and_evaluate(TINY, workdir)] == [1, 2]


def test_resume_on_other_data_is_refused(tmp_path):
    from jaxspec.data import save_npz, synthetic_cifar

    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    save_npz(synthetic_cifar(num_train=64, num_test=32, seed=1), a)
    save_npz(synthetic_cifar(num_train=64, num_test=32, seed=2), b)
    workdir = str(tmp_path / "w")
    first = dataclasses.replace(TINY, npz_path=a, stop_after=1)
    train_and_evaluate(first, workdir)
    info = open(os.path.join(workdir, "data.json")).read()
    with pytest.raises(ValueError, match="npz_path") as err:
        train_and_evaluate(dataclasses.replace(first, npz_path=b, stop_after=None), workdir)
    assert "digest" in str(err.value)
    # The same path with other contents.
    os.replace(b, a)
    with pytest.raises(ValueError, match="digest"):
        train_and_evaluate(dataclasses.replace(first, stop_after=None), workdir)
    # Data passed in directly is checked the same way.
    with pytest.raises(ValueError, match="digest"):
        train_and_evaluate(dataclasses.replace(TINY, stop_after=None), workdir,
                           data=synthetic_cifar(num_train=64, num_test=32, seed=3))
    assert open(os.path.join(workdir, "data.json")).read() == info
    assert [r["epoch"] for r in read_metrics(workdir)] == [1]


def test_labels_out_of_range_are_refused_before_training(tmp_path):
    from jaxspec.data import synthetic_cifar

    data = synthetic_cifar(num_train=64, num_test=32, seed=1)
    y = data.y_train.copy()
    y[5] = 10
    workdir = str(tmp_path / "w")
    with pytest.raises(ValueError, match=r"y_train.*\[0, 10\)"):
        train_and_evaluate(TINY, workdir, data=data._replace(y_train=y))
    y = data.y_test.copy()
    y[0] = -1
    with pytest.raises(ValueError, match="y_test"):
        train_and_evaluate(TINY, workdir, data=data._replace(y_test=y))
    assert not os.path.exists(workdir)


def test_nan_loss_stops_the_run(tmp_path):
    workdir = str(tmp_path / "w")
    with pytest.raises(FloatingPointError, match="epoch 1"):
        train_and_evaluate(dataclasses.replace(TINY, base_lr=1e30), workdir)
    assert read_metrics(workdir) == []  # the diverged epoch is neither recorded nor saved
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) in ([], ["0"])


def test_a_live_run_holds_its_workdir(tmp_path, capsys):
    from jaxspec.workdir import WorkdirLockedError, workdir_lock
    from train.__main__ import main

    workdir = str(tmp_path / "w")
    with workdir_lock(workdir):
        with pytest.raises(WorkdirLockedError, match=str(os.getpid())):
            train_and_evaluate(TINY, workdir)
        assert main(["--config", "cpu_synthetic", "--workdir", workdir]) == 1
    assert f"PID {os.getpid()}" in capsys.readouterr().err
