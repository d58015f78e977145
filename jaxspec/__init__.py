"""jaxspec: curvature spectra of neural-network losses in JAX.

One operator, :func:`curvature_operator`, stands for a curvature matrix of a loss over a data set
(its kind, its batch reduction and its batch transform are fields); :func:`run_lanczos`,
:func:`slq`, :func:`ritz_pairs`, :func:`eigsh` (top-k eigenpairs) and the stochastic estimators
of ``jaxspec.trace`` (:func:`hutchinson`, :func:`hutch_plus_plus`, :func:`hutchinson_diagonal`,
:func:`logdet`) run on it, or on any plain ``v -> A v``.

The core (``compiler``, ``hvp``, ``kinds``, ``batching``, ``operator``, ``reduction``, ``blocks``,
``heterogeneity``, ``lanczos``, ``ritz``, ``slq``, ``eigsh``, ``trace``, ``rmt``, ``parallel``)
imports only jax and numpy (``trace`` also matfree); files and progress bars (``jaxspec.io``), models, data and
plotting live at the edge (``jaxspec.models``, ``jaxspec.data``, ``jaxspec.text``,
``jaxspec.augment``, ``jaxspec.augmented``, ``jaxspec.plotting``); import those by name.
"""

from jaxspec import blocks
from jaxspec import rmt
from jaxspec.batching import Batched
from jaxspec.batching import batch_dataset
from jaxspec.batching import dataset_loss
from jaxspec.batching import dataset_mean
from jaxspec.batching import num_samples
from jaxspec.blocks import block_spectra
from jaxspec.blocks import param_blocks
from jaxspec.blocks import restrict
from jaxspec.checks import SymmetryReport
from jaxspec.checks import assert_symmetric
from jaxspec.checks import check_labels
from jaxspec.checks import symmetry_error
from jaxspec.compare import SpectrumComparison
from jaxspec.compare import compare_spectra
from jaxspec.compiler import compiler_options
from jaxspec.compiler import jit_argument
from jaxspec.convolutions import fast_convolutions
from jaxspec.eigsh import EigshResult
from jaxspec.eigsh import eigsh
from jaxspec.heterogeneity import heterogeneity
from jaxspec.heterogeneity import js_distance
from jaxspec.heterogeneity import js_matrix
from jaxspec.hvp import hvp
from jaxspec.kinds import Categorical
from jaxspec.kinds import FisherMC
from jaxspec.kinds import SplitLoss
from jaxspec.lanczos import LanczosHook
from jaxspec.lanczos import LanczosResult
from jaxspec.lanczos import LanczosState
from jaxspec.lanczos import lanczos
from jaxspec.lanczos import lanczos_continue
from jaxspec.lanczos import lanczos_init
from jaxspec.lanczos import lanczos_state_sharding
from jaxspec.lanczos import lanczos_step
from jaxspec.lanczos import resolve_driver
from jaxspec.lanczos import run_lanczos
from jaxspec.operator import CurvatureOperator
from jaxspec.operator import curvature_operator
from jaxspec.parallel import data_mesh
from jaxspec.parallel import global_batched
from jaxspec.parallel import process_share
from jaxspec.parallel import shard_batched
from jaxspec.ritz import RitzPairs
from jaxspec.ritz import ritz_pairs
from jaxspec.slq import NegativeMass
from jaxspec.slq import Spectrum
from jaxspec.slq import random_probe
from jaxspec.slq import slq
from jaxspec.slq import slq_runs
from jaxspec.trace import TraceEstimate
from jaxspec.trace import hutch_plus_plus
from jaxspec.trace import hutchinson
from jaxspec.trace import hutchinson_diagonal
from jaxspec.trace import logdet
from jaxspec.trace import xtrace

__version__ = "0.1.0"

__all__ = [
    "Batched",
    "Categorical",
    "CurvatureOperator",
    "EigshResult",
    "FisherMC",
    "LanczosHook",
    "LanczosResult",
    "LanczosState",
    "NegativeMass",
    "RitzPairs",
    "Spectrum",
    "SplitLoss",
    "SpectrumComparison",
    "SymmetryReport",
    "TraceEstimate",
    "assert_symmetric",
    "batch_dataset",
    "block_spectra",
    "blocks",
    "fast_convolutions",
    "check_labels",
    "compare_spectra",
    "compiler_options",
    "curvature_operator",
    "data_mesh",
    "dataset_loss",
    "dataset_mean",
    "eigsh",
    "global_batched",
    "heterogeneity",
    "hutch_plus_plus",
    "hutchinson",
    "hutchinson_diagonal",
    "hvp",
    "jit_argument",
    "js_distance",
    "js_matrix",
    "lanczos",
    "lanczos_continue",
    "lanczos_init",
    "lanczos_state_sharding",
    "lanczos_step",
    "logdet",
    "num_samples",
    "param_blocks",
    "process_share",
    "random_probe",
    "resolve_driver",
    "restrict",
    "ritz_pairs",
    "rmt",
    "run_lanczos",
    "shard_batched",
    "slq",
    "slq_runs",
    "symmetry_error",
    "xtrace",
]
