"""Tuning the sampler: the default step size and the bias indicator it rests on."""

from slt.tuning.step_size import (
    DEFAULT_TARGET_BIAS,
    bias_indicator,
    default_step_size,
    largest_preconditioner,
    top_curvature,
)

__all__ = [
    "default_step_size",
    "top_curvature",
    "bias_indicator",
    "largest_preconditioner",
    "DEFAULT_TARGET_BIAS",
]
