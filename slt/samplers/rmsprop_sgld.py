r"""RMSProp-preconditioned SGLD (Li et al., 2016), as used for LLC estimation in devinterp.

The preconditioner is built from the minibatch *loss* gradient :math:`g = \nabla L_B(w)`:

.. math::

    v \leftarrow \alpha v + (1 - \alpha) g^2, \qquad
    G = 1 / (\sqrt{\hat v} + \delta), \qquad
    w \leftarrow w - \tfrac{\varepsilon}{2} G \odot \big[n\beta g + \gamma (w - w^*)\big]
        + \sqrt{\varepsilon G} \odot \xi

where :math:`\hat v = v / (1 - \alpha^t)` is the bias-corrected average (as in Adam), so the first
steps are not taken with the huge preconditioner :math:`1/\delta`. The derivative of :math:`G` with
respect to :math:`w` is neglected, as in the original method.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from slt.samplers.base import LocalPosterior, gaussian_noise, masked, potential_grad
from slt.samplers.kernel import Kernel

__all__ = ["RMSPropSGLDState", "init", "step", "preconditioner", "name", "kernel"]

name = "rmsprop_sgld"


class RMSPropSGLDState(NamedTuple):
    """State of a preconditioned chain: position, running mean of squared gradients, adaptation count."""

    position: Tensor
    square_avg: Tensor
    count: int


def init(position: Tensor) -> RMSPropSGLDState:
    """Start a chain at ``position`` with an empty squared-gradient average."""
    position = position.detach().clone()
    return RMSPropSGLDState(position=position, square_avg=torch.zeros_like(position), count=0)


def preconditioner(state: RMSPropSGLDState, *, alpha: float = 0.99, delta: float = 0.1) -> Tensor:
    r"""The diagonal preconditioner :math:`G = 1/(\sqrt{\hat v} + \delta)` of ``state``.

    Before any step (``count == 0``) it is :math:`1/\delta`. The step-size bias of a preconditioned chain
    scales with :math:`\sum_i G_i g_i^2`, not :math:`\lVert g\rVert^2`; the driver uses this to report
    it (see :func:`slt.tuning.bias_indicator`).
    """
    if state.count == 0:
        return torch.full_like(state.square_avg, 1.0 / delta)
    return torch.div(state.square_avg, 1 - alpha**state.count).sqrt_().add_(delta).reciprocal_()


def step(
    state: RMSPropSGLDState,
    loss_grad: Tensor,
    target: LocalPosterior,
    generator: torch.Generator | None,
    *,
    step_size: float,
    alpha: float = 0.99,
    delta: float = 0.1,
    adapt_steps: int | None = None,
) -> RMSPropSGLDState:
    r"""Advance one preconditioned SGLD step.

    Parameters
    ----------
    state : RMSPropSGLDState
        Current state.
    loss_grad : Tensor
        Gradient of the minibatch mean loss at ``state.position``.
    target : LocalPosterior
        The localized tempered posterior.
    generator : torch.Generator or None
        Source of the Gaussian noise.
    step_size : float
        The step size :math:`\varepsilon`.
    alpha : float
        Decay of the squared-gradient average.
    delta : float
        Damping :math:`\delta` added to :math:`\sqrt{\hat v}`; bounds the preconditioner by
        :math:`1/\delta`.
    adapt_steps : int, optional
        Steps after which the squared-gradient average stops changing (``None``: never stops). The
        estimators set it to the burn-in length, so the draws come from a fixed kernel.

    Returns
    -------
    RMSPropSGLDState
        The new state.
    """
    if adapt_steps is None or state.count < adapt_steps:
        count = state.count + 1
        square_avg = torch.mul(state.square_avg, alpha).addcmul_(loss_grad, loss_grad, value=1 - alpha)
    else:
        count, square_avg = state.count, state.square_avg
    precond = preconditioner(RMSPropSGLDState(state.position, square_avg, count), alpha=alpha, delta=delta)
    increment = potential_grad(state.position, loss_grad, target)
    increment.mul_(precond).mul_(-0.5 * step_size)
    noise = gaussian_noise(increment, generator)
    noise.mul_(precond.mul_(step_size).sqrt_())
    increment.add_(noise)
    masked(increment, target)
    return RMSPropSGLDState(position=torch.add(state.position, increment), square_avg=square_avg, count=count)


kernel = Kernel(name, init, step, preconditioner=preconditioner, adaptation_option="adapt_steps")
