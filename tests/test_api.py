"""House rules that can be checked mechanically: a light core, and documented public API."""

import importlib
import inspect
import os
import subprocess
import sys

import pytest

import jaxspec
from layout import core_modules, jaxspec_modules

MODULES = jaxspec_modules()
CORE = core_modules()


def test_core_imports_no_flax_optax_tfds_or_tqdm():
    """At run time: importing jaxspec and its core modules loads none of the edge's libraries
    (tests/test_house_rules.py checks the import statements)."""
    core = ", ".join(f"jaxspec.{m}" for m in CORE)
    code = (f"import sys, jaxspec, jaxspec.compare, {core}; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('flax', 'optax', 'tensorflow_datasets', 'tensorflow', 'matplotlib', 'orbax', "
            "'tqdm')]; print(bad); sys.exit(1 if bad else 0)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", MODULES)
def test_public_api_has_docstrings_with_examples(name):
    module = importlib.import_module(name)
    missing = []
    for attr in module.__all__:
        obj = getattr(module, attr)
        if inspect.ismodule(obj) or getattr(obj, "__module__", "") == "typing":
            continue  # submodules and type aliases (e.g. Literal[...]) document themselves
        doc = inspect.getdoc(obj) or ""
        if inspect.isfunction(obj) or (inspect.isclass(obj) and not issubclass(obj, tuple)):
            if ">>>" not in doc:
                missing.append(attr)
        elif not doc:
            missing.append(attr)
    assert not missing, f"{name}: public names without a docstring example: {missing}"


def test_version():
    assert jaxspec.__version__
