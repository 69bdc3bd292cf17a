"""Tuning the sampler: the default step size and the bias indicator it rests on."""

from slt.tuning.step_size import (
    DEFAULT_TARGET_BIAS,
    STABILITY_LIMIT,
    bias_indicator,
    default_step_size,
    largest_preconditioner,
    minibatch_bias,
    thermostat_minibatch_bias,
    top_curvature,
    unstable_chains,
)

__all__ = [
    "default_step_size",
    "top_curvature",
    "bias_indicator",
    "minibatch_bias",
    "thermostat_minibatch_bias",
    "unstable_chains",
    "STABILITY_LIMIT",
    "largest_preconditioner",
    "DEFAULT_TARGET_BIAS",
]
