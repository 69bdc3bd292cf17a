r"""Stochastic gradient Nosé-Hoover thermostat (Ding et al., 2014).

Written in the learning-rate parametrization of SGHMC (Chen et al., 2014) that devinterp also uses,
with velocity :math:`v`, thermostat :math:`\xi`, diffusion :math:`A` and step size :math:`\varepsilon`:

.. math::

    v &\leftarrow v - \varepsilon \nabla U(w) - \xi v + \sqrt{2 A \varepsilon}\, \eta \\
    w &\leftarrow w + v \\
    \xi &\leftarrow \xi + \lVert v \rVert^2 / d - \varepsilon

where :math:`U(w) = n\beta L_B(w) + \tfrac{\gamma}{2}\lVert w - w^*\rVert^2` and :math:`d` is the number
of coordinates that move. The thermostat adapts the friction so that the kinetic energy matches the
temperature, absorbing the unknown minibatch-gradient noise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from slt.samplers.base import LocalPosterior, gaussian_noise, masked, potential_grad
from slt.samplers.kernel import Kernel

__all__ = ["SGNHTState", "init", "step", "diffusion_gain", "name", "kernel"]

name = "sgnht"


class SGNHTState(NamedTuple):
    """State of an SGNHT chain: position, velocity and thermostat (one per chain)."""

    position: Tensor
    velocity: Tensor
    thermostat: Tensor


def init(position: Tensor) -> SGNHTState:
    """Start a chain at ``position`` at rest; :func:`step` sets the thermostat on its first call."""
    position = position.detach().clone()
    thermostat = torch.full(position.shape[:-1], float("nan"), dtype=position.dtype, device=position.device)
    return SGNHTState(position=position, velocity=torch.zeros_like(position), thermostat=thermostat)


def step(
    state: SGNHTState,
    loss_grad: Tensor,
    target: LocalPosterior,
    generator: torch.Generator | None,
    *,
    step_size: float,
    diffusion: float = 0.01,
) -> SGNHTState:
    r"""Advance one SGNHT step.

    Parameters
    ----------
    state : SGNHTState
        Current state. A thermostat of NaN (fresh from :func:`init`) starts at ``diffusion``.
    loss_grad : Tensor
        Gradient of the minibatch mean loss at ``state.position``.
    target : LocalPosterior
        The localized tempered posterior.
    generator : torch.Generator or None
        Source of the Gaussian noise.
    step_size : float
        The step size (learning rate) :math:`\varepsilon`.
    diffusion : float
        The diffusion factor :math:`A` (also the thermostat's initial value).

    Returns
    -------
    SGNHTState
        The new state.
    """
    thermostat = torch.nan_to_num(state.thermostat, nan=diffusion)
    force = potential_grad(state.position, loss_grad, target)
    velocity = torch.mul(state.velocity, 1.0 - thermostat.unsqueeze(-1))
    velocity.sub_(force, alpha=step_size)
    velocity.add_(gaussian_noise(velocity, generator), alpha=math.sqrt(2.0 * diffusion * step_size))
    masked(velocity, target)
    active = velocity.shape[-1] if target.mask is None else float(target.mask.sum())
    kinetic = velocity.square().sum(-1).div_(active)
    return SGNHTState(
        position=torch.add(state.position, velocity),
        velocity=velocity,
        thermostat=thermostat + kinetic - step_size,
    )


def diffusion_gain(*, diffusion: float = 0.01) -> float:
    r"""SGLD-equivalent simulated time per unit of :math:`\varepsilon T`: :math:`2/A`.

    The velocity's stationary variance is :math:`\varepsilon` per coordinate and it decorrelates over
    :math:`1/A` steps, so with no force a coordinate's variance grows by :math:`2\varepsilon/A` per step
    where SGLD's grows by :math:`\varepsilon`; the minibatch noise :math:`\varepsilon^2 n\beta^2 c_i` per
    step weighs :math:`2/A` times more against the injected :math:`2A\varepsilon` than against SGLD's
    :math:`\varepsilon`. Valid while the thermostat stays near :math:`A`.
    """
    return 2.0 / diffusion


kernel = Kernel(name, init, step, diffusion_gain=diffusion_gain)
