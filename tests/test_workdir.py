"""Work-directory lock and atomic writes under real concurrency (two processes, one directory)."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from jaxspec.atomic import replacing, write_text
from jaxspec.workdir import LOCK_FILE, WorkdirLockedError, workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Both modules use the standard library only: a child loads them by path and so starts in
# milliseconds (importing the jaxspec package would import JAX first).
LOAD = textwrap.dedent("""
    import importlib.util, os, sys

    def load(name):
        path = os.path.join("jaxspec", name + ".py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
""")

# A child that takes the lock when told to ("go" on stdin), reports, and holds it until stdin
# closes: the parent decides when both children try, so the race is real and not a timing guess.
LOCKER = LOAD + textwrap.dedent("""
    workdir = load("workdir")
    WorkdirLockedError, workdir_lock = workdir.WorkdirLockedError, workdir.workdir_lock
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        with workdir_lock(sys.argv[1]):
            print("acquired", os.getpid(), flush=True)
            sys.stdin.read()
    except WorkdirLockedError as e:
        print("refused", e.pid, str(e).replace("\\n", " "), flush=True)
""")

WRITER = LOAD + textwrap.dedent("""
    import json
    write_text = load("atomic").write_text
    path, tag = sys.argv[1], sys.argv[2]
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(100):
        write_text(path, json.dumps({"writer": tag, "i": i, "pad": [tag] * 5000}))
""")


def _spawn(code, *args):
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def test_two_processes_race_for_one_workdir(tmp_path):
    workdir = str(tmp_path / "run")
    procs = [_spawn(LOCKER, workdir) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        answers = [p.stdout.readline().split() for p in procs]
        kinds = sorted(a[0] for a in answers)
        assert kinds == ["acquired", "refused"], answers
        winner = next(p for p, a in zip(procs, answers) if a[0] == "acquired")
        loser = next(a for a in answers if a[0] == "refused")
        assert int(loser[1]) == winner.pid
        assert str(winner.pid) in " ".join(loser[2:])
        # While the winner holds it, this process is refused too.
        with pytest.raises(WorkdirLockedError, match=str(winner.pid)):
            with workdir_lock(workdir):
                pass
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    assert [p.returncode for p in procs] == [0, 0]
    # Released: the lock file is gone and the directory can be taken again.
    assert not os.path.exists(os.path.join(workdir, LOCK_FILE))
    with workdir_lock(workdir):
        pass


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    workdir = str(tmp_path / "run")
    p = _spawn(LOCKER, workdir)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline().split() == ["acquired", str(p.pid)]
    os.kill(p.pid, signal.SIGKILL)  # no clean-up: the lock file stays behind with its PID
    p.wait(timeout=60)
    p.stdin.close()
    with open(os.path.join(workdir, LOCK_FILE)) as f:
        assert str(p.pid) in f.read()
    with workdir_lock(workdir) as path:
        assert path == os.path.abspath(workdir)
        with open(os.path.join(workdir, LOCK_FILE)) as f:
            assert str(os.getpid()) in f.read()


def test_lock_in_one_process_and_clean_up(tmp_path):
    workdir = str(tmp_path / "new" / "run")
    with workdir_lock(workdir):
        assert os.listdir(workdir) == [LOCK_FILE]
        with pytest.raises(WorkdirLockedError, match=f"PID {os.getpid()}") as info:
            with workdir_lock(workdir):
                pass
        assert info.value.pid == os.getpid()
    # The lock created the directory and nothing else was written: nothing is left behind.
    assert not os.path.exists(workdir)
    os.makedirs(workdir)
    with workdir_lock(workdir):
        with open(os.path.join(workdir, "a"), "w"):
            pass
    assert os.listdir(workdir) == ["a"]


def test_concurrent_atomic_writes_never_tear_or_crash(tmp_path):
    path = str(tmp_path / "spectrum.json")
    write_text(path, json.dumps({"writer": "init", "i": -1}))
    procs = [_spawn(WRITER, path, tag) for tag in ("a", "b")]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    reads, torn = 0, []
    while any(p.poll() is None for p in procs):
        with open(path) as f:
            text = f.read()
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            torn.append(text[:60] + "..." + text[-60:])
            continue
        assert record["writer"] in ("init", "a", "b")
        reads += 1
    errors = [p.stderr.read() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert not torn, torn[:3]
    assert reads > 0
    assert json.loads(open(path).read())["i"] == 99
    assert os.listdir(tmp_path) == ["spectrum.json"]  # no temporary file left behind


def test_failed_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "a.npz")
    write_text(path, "old")
    with pytest.raises(RuntimeError):
        with replacing(path, suffix=".tmp.npz") as tmp:
            assert tmp.endswith(".tmp.npz") and os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed")
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["a.npz"]


def test_written_file_has_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = str(tmp_path / "config.json")
    write_text(path, "{}")  # a temporary file is private (0600) until it is renamed
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
