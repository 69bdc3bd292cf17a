"""Warning categories slt emits, so they can be filtered or turned into errors one by one."""

__all__ = [
    "SLTWarning",
    "DivergenceWarning",
    "NotAMinimumWarning",
    "ConvergenceWarning",
    "OverlapWarning",
    "FitWarning",
    "ChainDivergenceError",
]


class SLTWarning(UserWarning):
    """Base class of every warning slt emits."""


class DivergenceWarning(SLTWarning):
    """Some chains hit a non-finite loss; the estimate uses the others."""


class NotAMinimumWarning(SLTWarning):
    """The estimate is significantly negative: the trained weights are not a local minimum."""


class ConvergenceWarning(SLTWarning):
    """A diagnostic (R-hat, effective sample size, trend) says the chains have not converged."""


class OverlapWarning(SLTWarning):
    """Neighbouring rungs of the temperature ladder share too few samples for reweighting to be trusted."""


class FitWarning(SLTWarning):
    """The density of states could not be fitted on the window (too few populated bins)."""


class ChainDivergenceError(RuntimeError):
    """Every chain hit a non-finite loss."""
