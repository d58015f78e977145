"""Test helper: the package's modules, and which of them are the light core.

The core is every module of ``jaxspec`` except the edge: the modules that may import flax,
optax, tensorflow-datasets, tqdm, matplotlib or orbax (data sets, file I/O and progress, plots,
the Flax models). A new module is core unless it is named here."""

from __future__ import annotations

import os
import pkgutil

import jaxspec

EDGE = ("data", "io", "plotting", "models", "augmented", "text")  # the last two read data sets


def jaxspec_modules() -> list[str]:
    """Dotted names of ``jaxspec`` and all its modules and subpackages."""
    root = os.path.dirname(jaxspec.__file__)
    return ["jaxspec"] + sorted(f"jaxspec.{m.name}" for m in
                                pkgutil.walk_packages([root], prefix="")
                                if not m.name.startswith("_"))


def core_modules() -> list[str]:
    """Short names (``"lanczos"``) of the top-level core modules."""
    root = os.path.dirname(jaxspec.__file__)
    return sorted(m.name for m in pkgutil.iter_modules([root])
                  if not m.name.startswith("_") and m.name not in EDGE)
