r"""Stochastic gradient Langevin dynamics (Welling & Teh, 2011) with a localizing prior.

One step, with step size :math:`\varepsilon` and :math:`\xi \sim N(0, I)`:

.. math::

    w \leftarrow w - \tfrac{\varepsilon}{2}\big[n\beta \nabla L_B(w) + \gamma (w - w^*)\big]
        + \sqrt{\varepsilon}\, \xi
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from slt.samplers.base import LocalPosterior, gaussian_noise, masked
from slt.samplers.kernel import Kernel

__all__ = ["SGLDState", "init", "step", "name", "kernel"]

name = "sgld"


class SGLDState(NamedTuple):
    """State of an SGLD chain (or batch of chains): only the position."""

    position: Tensor


def init(position: Tensor) -> SGLDState:
    """Start a chain at ``position`` (copied, so the caller's tensor is never touched)."""
    return SGLDState(position=position.detach().clone())


def step(
    state: SGLDState,
    loss_grad: Tensor,
    target: LocalPosterior,
    generator: torch.Generator | None,
    *,
    step_size: float,
) -> SGLDState:
    r"""Advance one SGLD step.

    Parameters
    ----------
    state : SGLDState
        Current state.
    loss_grad : Tensor
        Gradient of the minibatch mean loss at ``state.position``.
    target : LocalPosterior
        The localized tempered posterior.
    generator : torch.Generator or None
        Source of the Gaussian noise.
    step_size : float
        The step size :math:`\varepsilon`.

    Returns
    -------
    SGLDState
        The new state; ``state`` is left unchanged.
    """
    # w - (eps/2) * (n_beta * g + gamma * (w - w*)) + sqrt(eps) * xi, in as few tensor ops as possible
    increment = torch.mul(loss_grad, -0.5 * step_size * target.n_beta)
    if target.localization:
        increment.add_(torch.sub(state.position, target.center), alpha=-0.5 * step_size * target.localization)
    increment.add_(gaussian_noise(increment, generator), alpha=math.sqrt(step_size))
    masked(increment, target)
    return SGLDState(position=increment.add_(state.position))


kernel = Kernel(name, init, step)
