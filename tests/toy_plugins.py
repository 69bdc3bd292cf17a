"""A toy sampler and a toy measure, each defined and registered here and nowhere else.

Importing this module (as ``slt analyze --model tests.toy_plugins:make_model`` does) registers both.
"""

import math
from typing import NamedTuple

import torch

from slt.samplers import Kernel, register_kernel
from slt.samplers.base import gaussian_noise, masked
from slt.sweeps.measures import Measure, register_measure
from tests.sweeps.fixtures import make_model, regression_data  # noqa: F401  (re-exported for the CLI)

#: Every step any chain of the toy kernel took, so tests can see that it really ran.
STEPS_TAKEN = [0]


class ToyState(NamedTuple):
    position: torch.Tensor


def toy_init(position):
    return ToyState(position.detach().clone())


def toy_step(state, loss_grad, target, generator, *, step_size, noise_scale=1.0):
    """SGLD with its noise scaled by ``noise_scale`` (1 is plain SGLD)."""
    STEPS_TAKEN[0] += 1
    drift = torch.mul(loss_grad, target.n_beta)
    drift.add_(state.position - target.center, alpha=target.localization)
    update = drift.mul_(-0.5 * step_size)
    update.add_(gaussian_noise(update, generator), alpha=noise_scale * math.sqrt(step_size))
    return ToyState(state.position + masked(update, target))


TOY_KERNEL = register_kernel(Kernel("toy_sgld", toy_init, toy_step), replace=True)


def parameter_norm(model, given):
    """The Euclidean norm of every parameter together, and the settings it was given."""
    norm = math.sqrt(sum(float(p.detach().square().sum()) for p in model.parameters()))
    scale = given.settings.get("scale", 1.0)
    return {"param_norm": scale * norm}, {"norm": norm, "seed": given.seed}


def check_scale(settings):
    if not settings.get("scale", 1.0) > 0:
        raise ValueError(f"scale must be positive, got {settings['scale']}")
    return dict(settings)


TOY_MEASURE = register_measure(
    Measure("param_norm", parameter_norm, validate=check_scale, load=lambda p: p["norm"]), replace=True
)
