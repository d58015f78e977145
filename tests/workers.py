"""Worker subprocesses for the multi-device tests (tests/test_parallel.py, tests/test_fsdp.py).

A test process has already started JAX with one CPU device, so runs on several simulated devices
happen in fresh processes, which write their results as JSON. Of the test process's
``XLA_FLAGS`` they get only its LLVM optimisation level (tests/conftest.py: -O0, since every
program is checked for its values, not its speed), not, e.g., a device count.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Workers:
    """Worker processes that write JSON; :meth:`result` waits for one and reads its file."""

    def __init__(self, tmp: str, timeout: float):
        self.tmp = tmp
        self.procs: dict = {}
        self.timeout = timeout  # seconds for all of them together
        self.deadline = time.monotonic() + timeout
        self.env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        level = re.search(r"--xla_backend_optimization_level=\S+", os.environ.get("XLA_FLAGS", ""))
        # The checkout under test first: a worker's sys.path[0] is tests/, so `import jaxspec`
        # would otherwise find whatever jaxspec is installed (another checkout, an old version).
        path = os.pathsep.join(filter(None, [ROOT, os.path.join(ROOT, "tests"),
                                             os.environ.get("PYTHONPATH")]))
        self.env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=level.group(0) if level else "",
                        PYTHONPATH=path)

    def start(self, name: str, args: list[str], out: str, env: dict | None = None) -> None:
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env={**self.env, **(env or {})})
        self.procs[name] = (proc, out, log.name)
        log.close()  # the child holds its own copy of the descriptor

    def result(self, name: str) -> dict:
        proc, out, log = self.procs[name]
        try:
            rc = proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"{name} did not finish within {self.timeout} s:\n{self._tail(log)}")
        if rc != 0 or not os.path.exists(out):
            pytest.fail(f"{name} exited with {rc}:\n{self._tail(log)}")
        with open(out) as f:
            return json.load(f)

    @staticmethod
    def _tail(log: str) -> str:
        with open(log) as f:  # without XLA's native stack traces
            lines = [x for x in f.read().splitlines() if not x.lstrip().startswith("@")]
        return "\n".join(lines[-30:])

    def kill_all(self) -> None:
        for proc, _, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
