"""slt: singular learning theory for torch models.

Estimate the local learning coefficient (LLC) of any trained ``torch.nn.Module`` with SG-MCMC samplers,
choose hyperparameters, and check the answer against models whose learning coefficient is known.
"""

from slt import oracles, samplers
from slt.calibration import CalibrationResult, calibrate, default_step_size
from slt.diagnostics import ChainDiagnostics
from slt.llc import LLCResult, LLCSettings, default_n_beta, estimate_llc
from slt.transitions import Transition, detect_transitions, plot_transitions
from slt.warnings import (
    ChainDivergenceError,
    ConvergenceWarning,
    DivergenceWarning,
    NotAMinimumWarning,
    SLTWarning,
)

__version__ = "0.1.0"

__all__ = [
    "estimate_llc",
    "LLCResult",
    "LLCSettings",
    "calibrate",
    "CalibrationResult",
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
    "ChainDivergenceError",
]
