"""Estimators that turn chains into numbers: the LLC, its calibration and the chain diagnostics.

The WBIC (:mod:`slt.estimators.wbic`) and Bayesian influence functions (:mod:`slt.estimators.bif`) come
from the same chains as the LLC; susceptibilities (:mod:`slt.estimators.susceptibilities`) from LLC chains
of weight-restricted posteriors.

The density of states, a second estimator, lives in :mod:`slt.dos`.
"""

from slt.estimators.bif import BIFResult, estimate_bif
from slt.estimators.calibration import CalibrationResult, calibrate
from slt.estimators.diagnostics import ChainDiagnostics
from slt.estimators.llc import LLCResult, LLCSettings, estimate_llc
from slt.estimators.susceptibilities import SusceptibilityResult
from slt.estimators.wbic import WBICEstimate

__all__ = [
    "estimate_llc",
    "LLCResult",
    "LLCSettings",
    "WBICEstimate",
    "estimate_bif",
    "BIFResult",
    "SusceptibilityResult",
    "calibrate",
    "CalibrationResult",
    "ChainDiagnostics",
]
