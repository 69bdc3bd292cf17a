r"""Density-of-states curves: how the volume of near-optimal weights grows with the loss threshold.

:func:`estimate_dos` samples a ladder of temperatures around the trained weights, reweights the pooled
samples with MBAR and fits :math:`\ln v(t) = \ln c + (\lambda - 1)\ln t + (m - 1)\ln(-\ln t)` on the
small-:math:`t` window, returning a :class:`DOSResult`.

Modules: :mod:`~slt.dos.ladder` (temperatures, step-size rule, sampling), :mod:`~slt.dos.mbar`
(reweighting), :mod:`~slt.dos.analysis` (curve, fit, bootstrap), :mod:`~slt.dos.result`,
:mod:`~slt.dos.diagnostics` (warnings), :mod:`~slt.dos.estimate`.
"""

from slt.dos.diagnostics import FitWarning, OverlapWarning
from slt.dos.estimate import estimate_dos
from slt.dos.ladder import default_temperatures, rung_step_sizes
from slt.dos.result import DOSResult, DOSSettings

__all__ = [
    "estimate_dos",
    "DOSResult",
    "DOSSettings",
    "OverlapWarning",
    "FitWarning",
    "default_temperatures",
    "rung_step_sizes",
]
