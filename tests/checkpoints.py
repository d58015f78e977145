"""Test helper: watching, and interrupting, the Lanczos checkpoints a run writes.

Importing this module starts nothing (the subprocess workers import it before JAX starts).
"""

from __future__ import annotations

import contextlib
import importlib


@contextlib.contextmanager
def recorded_saves(die_after: int | None = None):
    """Records the step of every Lanczos checkpoint written inside the block (the
    :class:`jaxspec.io.LanczosCheckpoint` hook saves through ``jaxspec.io.save_lanczos_state``);
    with ``die_after``, the run is "killed" (``KeyboardInterrupt``) right after that many
    checkpoints were completely written."""
    module = importlib.import_module("jaxspec.io")
    save, steps = module.save_lanczos_state, []

    def recording(path, state, **kwargs):
        save(path, state, **kwargs)
        steps.append(int(state.step))
        if die_after is not None and len(steps) == die_after:
            raise KeyboardInterrupt

    module.save_lanczos_state = recording
    try:
        yield steps
    finally:
        module.save_lanczos_state = save
