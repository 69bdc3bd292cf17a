r"""Metropolis-adjusted Langevin algorithm (MALA) with a localizing prior, one inverse temperature per chain.

A Langevin proposal followed by a Metropolis-Hastings test samples the localized tempered posterior
*exactly*, whatever the step size (the step only sets how fast the chain mixes). With
:math:`U(w) = n\beta\, L(w) + \tfrac{\gamma}{2}\lVert w - w^*\rVert^2`, step size :math:`\varepsilon`
and :math:`\xi \sim N(0, I)`:

.. math::

    w' = w - \tfrac{\varepsilon}{2}\nabla U(w) + \sqrt{\varepsilon}\, \xi, \qquad
    \log\alpha = U(w) - U(w') + \log q(w \mid w') - \log q(w' \mid w),

with the Langevin proposal density
:math:`q(b \mid a) \propto \exp(-\lVert b - a + \tfrac{\varepsilon}{2}\nabla U(a)\rVert^2 / 2\varepsilon)`.
The test needs the *exact* loss at both points, so MALA runs on the full data (a minibatch loss in
the test would bias the chain).

Unlike the kernels of :mod:`slt.samplers` driven by :class:`slt.sampling.PosteriorSampler`, a MALA step
needs the loss and gradient at the proposal, so it is split into two pure functions:
:func:`propose` and :func:`accept`. ``n_beta`` and ``step_size`` may be tensors of shape
``(chains, 1)``, so that one batch of chains can hold a whole temperature ladder.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from slt.samplers.base import LocalPosterior, gaussian_noise

__all__ = ["MALAState", "init", "propose", "accept", "potential", "name"]

name = "mala"

Scalar = float | Tensor


class MALAState(NamedTuple):
    """State of a batch of MALA chains.

    Attributes
    ----------
    position : Tensor, shape (chains, d) or (d,)
    loss : Tensor, shape (chains,) or ()
        Exact (full-data) mean loss at ``position``.
    loss_grad : Tensor, same shape as ``position``
        Its gradient.
    """

    position: Tensor
    loss: Tensor
    loss_grad: Tensor


def init(position: Tensor, loss: Tensor, loss_grad: Tensor) -> MALAState:
    """Start chains at ``position`` whose loss and gradient are known (tensors are copied)."""
    return MALAState(position.detach().clone(), loss.detach().clone(), loss_grad.detach().clone())


def potential(position: Tensor, loss: Tensor, target: LocalPosterior) -> Tensor:
    r""":math:`U(w) = n\beta L(w) + \tfrac{\gamma}{2}\lVert w - w^*\rVert^2` per chain."""
    offset = _masked(position - target.center, target)
    n_beta = _per_chain(target.n_beta, loss)
    return n_beta * loss + 0.5 * target.localization * offset.square().sum(-1)


def _drift(state_position: Tensor, loss_grad: Tensor, target: LocalPosterior) -> Tensor:
    n_beta = target.n_beta
    if isinstance(n_beta, Tensor) and n_beta.ndim == 1:
        n_beta = n_beta.unsqueeze(-1)
    grad = n_beta * loss_grad + target.localization * (state_position - target.center)
    return _masked(grad, target)


def propose(
    state: MALAState, target: LocalPosterior, generator: torch.Generator | None, *, step_size: Scalar
) -> Tensor:
    r"""The Langevin proposal :math:`w - \tfrac{\varepsilon}{2}\nabla U(w) + \sqrt{\varepsilon}\xi`.

    Parameters
    ----------
    state : MALAState
    target : LocalPosterior
        ``n_beta`` may be a float or a tensor of shape ``(chains,)`` or ``(chains, 1)``.
    generator : torch.Generator or None
    step_size : float or Tensor of shape (chains, 1)

    Returns
    -------
    Tensor
        New positions; frozen coordinates (``target.mask``) do not move.
    """
    eps = _column(step_size, state.position)
    noise = _masked(gaussian_noise(state.position, generator), target)
    drift = _drift(state.position, state.loss_grad, target)
    return state.position - 0.5 * eps * drift + _sqrt(eps) * noise


def accept(
    state: MALAState,
    proposal: Tensor,
    proposal_loss: Tensor,
    proposal_grad: Tensor,
    target: LocalPosterior,
    generator: torch.Generator | None,
    *,
    step_size: Scalar,
) -> tuple[MALAState, Tensor]:
    r"""Metropolis-Hastings test of ``proposal`` against ``state``.

    A proposal whose loss is not finite is always rejected.

    Returns
    -------
    state : MALAState
        The new state (proposal where accepted, else the old state); inputs are not modified.
    accept_prob : Tensor, shape (chains,)
        :math:`\min(1, \alpha)` per chain (0 for non-finite proposals).
    """
    eps = _column(step_size, state.position)
    forward = proposal - state.position + 0.5 * eps * _drift(state.position, state.loss_grad, target)
    backward = state.position - proposal + 0.5 * eps * _drift(proposal, proposal_grad, target)
    eps_flat = eps.squeeze(-1) if isinstance(eps, Tensor) and eps.ndim > 0 else eps
    log_q_forward = -_masked(forward, target).square().sum(-1) / (2 * eps_flat)
    log_q_backward = -_masked(backward, target).square().sum(-1) / (2 * eps_flat)
    log_alpha = (
        potential(state.position, state.loss, target)
        - potential(proposal, proposal_loss, target)
        + log_q_backward
        - log_q_forward
    )
    finite = torch.isfinite(log_alpha) & torch.isfinite(proposal_grad).all(-1)
    log_alpha = torch.where(finite, log_alpha, torch.full_like(log_alpha, -math.inf))
    uniform = torch.rand(log_alpha.shape, generator=generator, dtype=log_alpha.dtype, device=log_alpha.device)
    take = torch.log(uniform) < log_alpha
    prob = torch.exp(torch.clamp(log_alpha, max=0.0))
    new = MALAState(
        position=torch.where(take.unsqueeze(-1), proposal, state.position),
        loss=torch.where(take, proposal_loss, state.loss),
        loss_grad=torch.where(take.unsqueeze(-1), proposal_grad, state.loss_grad),
    )
    return new, prob


def _masked(values: Tensor, target: LocalPosterior) -> Tensor:
    return values * target.mask if target.mask is not None else values


def _per_chain(value: Scalar, like: Tensor) -> Scalar:
    if isinstance(value, Tensor) and value.ndim > like.ndim:
        return value.reshape(like.shape)
    return value


def _column(value: Scalar, position: Tensor) -> Scalar:
    """Shape a per-chain tensor as ``(chains, 1)`` so it broadcasts over coordinates."""
    if isinstance(value, Tensor) and value.ndim == 1 and position.ndim == 2:
        return value.unsqueeze(-1)
    return value


def _sqrt(value: Scalar) -> Scalar:
    return value.sqrt() if isinstance(value, Tensor) else math.sqrt(value)
