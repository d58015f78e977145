"""jaxspec: Hessian spectra of neural-network losses in JAX.

The core (``hvp``, ``lanczos``, ``slq``, ``rmt``) imports only jax and numpy; models, data and
plotting live at the edge (``jaxspec.models``, ``jaxspec.data``, ``jaxspec.augment``,
``jaxspec.plotting``); import those modules by name. ``jaxspec.parallel`` (data-parallel
operators) is core and its main functions are exported here.
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
from jaxspec.hvp import dataset_mean
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
from jaxspec.lanczos import resolve_driver
from jaxspec.lanczos import run_lanczos
from jaxspec.lanczos import save_lanczos_state
from jaxspec.parallel import data_mesh
from jaxspec.parallel import global_batched
from jaxspec.parallel import process_share
from jaxspec.parallel import shard_batched
from jaxspec.parallel import sharded_hessian_matvec
from jaxspec.parallel import sharded_lanczos
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
    "process_share",
    "random_probe",
    "rmt",
    "slq",
    "symmetry_error",
    "LanczosResult",
    "LanczosState",
    "batch_dataset",
    "compare_spectra",
    "data_mesh",
    "dataset_hvp",
    "dataset_loss",
    "dataset_mean",
    "global_batched",
    "hessian_matvec",
    "host_hessian_matvec",
    "hvp",
    "lanczos",
    "lanczos_continue",
    "lanczos_init",
    "lanczos_step",
    "load_lanczos_state",
    "num_samples",
    "resolve_driver",
    "run_lanczos",
    "save_lanczos_state",
    "shard_batched",
    "sharded_hessian_matvec",
    "sharded_lanczos",
]
