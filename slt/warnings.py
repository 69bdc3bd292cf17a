"""Every warning and error class slt raises, and :class:`Problem`, a warning kept on a result.

Results carry their problems (``result.problems``): the same check that warned when the result was
computed travels with it through JSON, the result store and reports, and is emitted again when the
result is reloaded or refitted, so a number slt cannot vouch for never loses its warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "SLTWarning",
    "DivergenceWarning",
    "NotAMinimumWarning",
    "ConvergenceWarning",
    "ShortChainWarning",
    "OverlapWarning",
    "FitWarning",
    "LeftBasinWarning",
    "LocalizationWarning",
    "StepSizeWarning",
    "LossFunctionWarning",
    "DataWarning",
    "WBICWarning",
    "ConstantLossWarning",
    "UnsafeCheckpointWarning",
    "CheckpointFailedWarning",
    "ChainDivergenceError",
    "CheckpointError",
    "SetupError",
    "Problem",
    "emit",
]


class SLTWarning(UserWarning):
    """Base class of every warning slt emits."""


class DivergenceWarning(SLTWarning):
    """Some chains hit a non-finite loss; the estimate uses the others."""


class NotAMinimumWarning(SLTWarning):
    """The estimate is significantly negative: the trained weights are not a local minimum."""


class ConvergenceWarning(SLTWarning):
    """A diagnostic (R-hat, effective sample size, trend) says the chains have not converged."""


class ShortChainWarning(ConvergenceWarning):
    """The chains ran for less simulated time than the posterior needs to relax: they were still spreading."""


class OverlapWarning(SLTWarning):
    """Neighbouring rungs of the temperature ladder share too few samples for reweighting to be trusted."""


class FitWarning(SLTWarning):
    """The density of states could not be fitted on the window (too few populated bins)."""


class LeftBasinWarning(SLTWarning):
    """The chains left the neighbourhood of the trained weights: the estimate measures somewhere else."""


class LocalizationWarning(SLTWarning):
    """The estimate depends on the localization strength γ as much as on the loss.

    See :func:`slt.sampling.checks.localization_share`.
    """


class StepSizeWarning(SLTWarning):
    """The step size is too large for the estimate to be trusted (predicted bias, an impossible value)."""


class LossFunctionWarning(SLTWarning):
    """The loss does not behave as a mean loss per sample, which the estimator assumes."""


class DataWarning(SLTWarning):
    """The data is read differently from how it is likely meant (a loader that resamples with replacement)."""


class WBICWarning(SLTWarning):
    """A WBIC read from chains that were localized or not at nβ = n/log n: not Watanabe's WBIC."""


class ConstantLossWarning(SLTWarning):
    """Some per-sample losses did not vary over the draws: their correlations are undefined (set to 0)."""


class UnsafeCheckpointWarning(SLTWarning):
    """A checkpoint was unpickled with ``allow_pickle=True``: loading it could run arbitrary code."""


class CheckpointFailedWarning(SLTWarning):
    """Some checkpoints of a sweep failed; their errors are in the store and in ``Trajectory.failures``."""


class ChainDivergenceError(RuntimeError):
    """Every chain hit a non-finite loss."""


class CheckpointError(ValueError):
    """A checkpoint could not be found, read, or loaded into the model."""


class SetupError(ValueError):
    """A sweep cannot start: its model factory, data, loss or device fails before any checkpoint runs."""


@dataclass(frozen=True)
class Problem:
    """A warning kept on a result: its category (a class of this module) and its message.

    Attributes
    ----------
    category : str
        Name of the warning class, for example ``"ConvergenceWarning"``.
    message : str
        What is wrong and what to do about it.
    """

    category: str
    message: str

    @property
    def warning_class(self) -> type[Warning]:
        """The warning class named by ``category`` (:class:`SLTWarning` for an unknown name)."""
        found = globals().get(self.category)
        return found if isinstance(found, type) and issubclass(found, Warning) else SLTWarning

    @classmethod
    def of(cls, category: type[Warning], message: str) -> Problem:
        """A problem of warning class ``category``."""
        return cls(category.__name__, message)

    def __str__(self) -> str:
        return f"{self.category}: {self.message}"


def emit(problems: Iterable[Problem], stacklevel: int = 2) -> None:
    """Emit each problem as a warning of its class; ``stacklevel`` counts from the caller of ``emit``."""
    for problem in problems:
        warnings.warn(problem.message, problem.warning_class, stacklevel=stacklevel + 1)
