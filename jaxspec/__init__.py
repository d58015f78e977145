"""jaxspec: Hessian spectra of neural-network losses in JAX.

The core (``hvp``, ``lanczos``, ``slq``, ``rmt``) imports only jax and numpy; models, data and
plotting live at the edge (``jaxspec.models``, ``jaxspec.data``, ``jaxspec.augment``,
``jaxspec.plotting``, ``jaxspec.parallel``); import those modules by name.
"""

from jaxspec import rmt
from jaxspec.checks import SymmetryReport
from jaxspec.checks import assert_symmetric
from jaxspec.checks import symmetry_error
from jaxspec.compare import SpectrumComparison
from jaxspec.compare import compare_spectra
from jaxspec.hvp import Batched
from jaxspec.hvp import batch_dataset
from jaxspec.hvp import dataset_hvp
from jaxspec.hvp import dataset_loss
from jaxspec.hvp import hessian_matvec
from jaxspec.hvp import host_hessian_matvec
from jaxspec.hvp import hvp
from jaxspec.hvp import num_samples
from jaxspec.lanczos import LanczosResult
from jaxspec.lanczos import LanczosState
from jaxspec.lanczos import lanczos
from jaxspec.lanczos import lanczos_continue
from jaxspec.lanczos import lanczos_init
from jaxspec.lanczos import lanczos_step
from jaxspec.lanczos import load_lanczos_state
from jaxspec.lanczos import run_lanczos
from jaxspec.lanczos import save_lanczos_state
from jaxspec.slq import NegativeMass
from jaxspec.slq import Spectrum
from jaxspec.slq import random_probe
from jaxspec.slq import slq

__version__ = "0.1.0"

__all__ = [
    "Batched",
    "NegativeMass",
    "Spectrum",
    "SpectrumComparison",
    "SymmetryReport",
    "assert_symmetric",
    "random_probe",
    "rmt",
    "slq",
    "symmetry_error",
    "LanczosResult",
    "LanczosState",
    "batch_dataset",
    "compare_spectra",
    "dataset_hvp",
    "dataset_loss",
    "hessian_matvec",
    "host_hessian_matvec",
    "hvp",
    "lanczos",
    "lanczos_continue",
    "lanczos_init",
    "lanczos_step",
    "load_lanczos_state",
    "num_samples",
    "run_lanczos",
    "save_lanczos_state",
]
