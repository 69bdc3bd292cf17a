"""Estimators that turn chains into numbers: the LLC, its calibration and the chain diagnostics.

The density of states, a second estimator, lives in :mod:`slt.dos`.
"""

from slt.estimators.calibration import CalibrationResult, calibrate
from slt.estimators.diagnostics import ChainDiagnostics
from slt.estimators.llc import LLCResult, LLCSettings, estimate_llc

__all__ = ["estimate_llc", "LLCResult", "LLCSettings", "calibrate", "CalibrationResult", "ChainDiagnostics"]
