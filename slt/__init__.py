"""slt: singular learning theory for torch models.

Estimate the local learning coefficient (LLC) of any trained ``torch.nn.Module`` with SG-MCMC samplers,
choose hyperparameters, and check the answer against models whose learning coefficient is known.
"""

from slt import oracles, samplers
from slt.dos import DOSResult, estimate_dos
from slt.estimators.bif import BIFResult, bif, estimate_bif
from slt.estimators.calibration import CalibrationResult, calibrate
from slt.estimators.diagnostics import ChainDiagnostics
from slt.estimators.heads import llc_per_head
from slt.estimators.llc import LLCResult, LLCSettings, estimate_llc
from slt.estimators.localization import LocalizationChoice, choose_localization
from slt.estimators.susceptibilities import SusceptibilityResult, susceptibilities
from slt.estimators.wbic import WBICEstimate
from slt.sampling import masks
from slt.sampling.observables import PerSampleLoss
from slt.sampling.settings import default_n_beta
from slt.sweeps.checkpoints import (
    CheckpointError,
    UnsafeCheckpointWarning,
    load_state_dict,
    resolve_checkpoints,
)
from slt.sweeps.executors import RayExecutor, process_pool
from slt.sweeps.monitor import LLCMonitor
from slt.sweeps.store import ResultStore
from slt.sweeps.trajectory import CheckpointFailedWarning, Trajectory, analyze_checkpoints
from slt.transitions import Transition, detect_transitions, plot_transitions
from slt.tuning import default_step_size
from slt.warnings import (
    ChainDivergenceError,
    ConvergenceWarning,
    DivergenceWarning,
    FitWarning,
    NotAMinimumWarning,
    OverlapWarning,
    ShortChainWarning,
    SLTWarning,
)

__version__ = "0.1.0"

__all__ = [
    "estimate_llc",
    "llc_per_head",
    "masks",
    "estimate_dos",
    "DOSResult",
    "LLCResult",
    "LLCSettings",
    "WBICEstimate",
    "PerSampleLoss",
    "bif",
    "estimate_bif",
    "BIFResult",
    "susceptibilities",
    "SusceptibilityResult",
    "calibrate",
    "CalibrationResult",
    "choose_localization",
    "LocalizationChoice",
    "default_step_size",
    "default_n_beta",
    "ChainDiagnostics",
    "detect_transitions",
    "Transition",
    "plot_transitions",
    "oracles",
    "samplers",
    "SLTWarning",
    "DivergenceWarning",
    "NotAMinimumWarning",
    "ConvergenceWarning",
    "ShortChainWarning",
    "OverlapWarning",
    "FitWarning",
    "ChainDivergenceError",
    "analyze_checkpoints",
    "Trajectory",
    "ResultStore",
    "LLCMonitor",
    "RayExecutor",
    "process_pool",
    "resolve_checkpoints",
    "load_state_dict",
    "CheckpointError",
    "CheckpointFailedWarning",
    "UnsafeCheckpointWarning",
]
