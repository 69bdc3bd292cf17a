r"""Stochastic gradient Langevin dynamics (Welling & Teh, 2011) with a localizing prior.

One step, with step size :math:`\varepsilon` and :math:`\xi_t \sim N(0, I)` drawn afresh each step:

.. math::

    w_{t+1} = w_t - \tfrac{\varepsilon}{2}\big[n\beta \nabla L_B(w_t) + \gamma (w_t - w^*)\big]
        + \sqrt{\varepsilon}\, \tfrac{1}{2}(\xi_t + \xi_{t+1})

By default the noise is the average of this step's draw and the last one: the Leimkuhler-Matthews
scheme (Leimkuhler & Matthews 2013, "Rational construction of stochastic numerical methods for
molecular sampling", AMRX 2013(1); the high-friction limit of BAOAB). It costs one extra vector per
chain and no extra gradient, and its stationary distribution is exact for a Gaussian target at any
stable step (the Euler scheme's variance is :math:`1/(a(1 - \varepsilon a/4))` along curvature
:math:`a`) and accurate to second order in :math:`\varepsilon` otherwise (Leimkuhler, Matthews &
Stoltz 2016, IMA J. Numer. Anal. 36(1)). What remains of the first-order bias is the minibatch
gradient noise's. With ``leimkuhler_matthews=False`` the noise is :math:`\sqrt{\varepsilon}\,\xi_{t+1}`:
the Euler-Maruyama step of Welling & Teh (and devinterp), whose estimate carries the whole first-order
bias that :func:`slt.tuning.bias_indicator` predicts.
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
    r"""State of an SGLD chain (or batch of chains).

    Attributes
    ----------
    position : Tensor
        The weights, shape ``(d,)`` or ``(chains, d)``.
    noise : Tensor
        The last step's standard normal draw :math:`\xi_t`, same shape (zeros before the first step;
        unused, and left at zeros, with ``leimkuhler_matthews=False``).
    """

    position: Tensor
    noise: Tensor


def init(position: Tensor) -> SGLDState:
    """Start a chain at ``position`` (copied, so the caller's tensor is never touched)."""
    position = position.detach().clone()
    return SGLDState(position=position, noise=torch.zeros_like(position))


def step(
    state: SGLDState,
    loss_grad: Tensor,
    target: LocalPosterior,
    generator: torch.Generator | None,
    *,
    step_size: float,
    leimkuhler_matthews: bool = True,
) -> SGLDState:
    r"""Advance one SGLD step.

    Parameters
    ----------
    state : SGLDState
        Current state.
    loss_grad : Tensor
        Gradient of the minibatch mean loss at ``state.position``, shape of ``state.position``.
    target : LocalPosterior
        The localized tempered posterior.
    generator : torch.Generator or None
        Source of the Gaussian noise.
    step_size : float
        The step size :math:`\varepsilon`.
    leimkuhler_matthews : bool
        Average this step's noise with the last one's (the default; see the module docstring), or
        draw it afresh (the Euler-Maruyama step of Welling & Teh 2011).

    Returns
    -------
    SGLDState
        The new state; ``state`` is left unchanged.
    """
    # w - (eps/2) * (n_beta * g + gamma * (w - w*)) + sqrt(eps) * noise, in as few tensor ops as possible
    increment = torch.mul(loss_grad, -0.5 * step_size * target.n_beta)
    if target.localization:
        increment.add_(torch.sub(state.position, target.center), alpha=-0.5 * step_size * target.localization)
    xi = gaussian_noise(increment, generator)
    if leimkuhler_matthews:
        half = 0.5 * math.sqrt(step_size)
        increment.add_(xi, alpha=half).add_(state.noise, alpha=half)
    else:
        increment.add_(xi, alpha=math.sqrt(step_size))
    masked(increment, target)
    position = increment.add_(state.position)
    return SGLDState(position=position, noise=xi if leimkuhler_matthews else state.noise)


kernel = Kernel(name, init, step)
