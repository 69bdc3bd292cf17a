r"""Yardsticks: models whose learning coefficient is known, and the exact values the estimator targets.

* :mod:`slt.oracles.models`: closed-form learning coefficients λ (reduced-rank regression, deep linear
  networks, normal crossings, tanh networks) and factories for the models and data.
* :mod:`slt.oracles.exact`: the exact finite-nβ target :math:`n\beta(\mathbb{E}_w[L_n(w)] - L_n(w^*))`
  of :func:`slt.estimate_llc`, from full-batch Metropolis-adjusted chains or in closed form, to score
  estimates against; its offset from λ is reported separately (DESIGN.md §9).
"""

from slt.oracles.exact import (
    ExactTarget,
    exact_llc_target,
    linear_regression_target,
    normal_crossing_target,
    quadratic_target,
)
from slt.oracles.models import (
    NormalCrossing,
    deep_linear_network,
    dln_lambda,
    linear_regression_data,
    normal_crossing_lambda,
    regression_data,
    rrr_lambda,
    tanh_lambda,
    tanh_network,
)

__all__ = [
    "rrr_lambda",
    "dln_lambda",
    "normal_crossing_lambda",
    "tanh_lambda",
    "deep_linear_network",
    "linear_regression_data",
    "NormalCrossing",
    "regression_data",
    "tanh_network",
    "ExactTarget",
    "exact_llc_target",
    "quadratic_target",
    "linear_regression_target",
    "normal_crossing_target",
]
