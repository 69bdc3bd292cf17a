r"""Shared pieces of the SG-MCMC kernels: the target posterior and the kernel protocol.

Every kernel in :mod:`slt.samplers` samples the localized, tempered posterior

.. math::

    p(w) \propto \exp\big(-n\beta\, L_n(w) - \tfrac{\gamma}{2}\lVert w - w^*\rVert^2\big)

over a *flat* parameter vector (shape ``(d,)`` for one chain or ``(chains, d)`` for a batch of chains).
Kernels are pure functions in the style of blackjax: ``init`` builds a state ``NamedTuple`` and
``step(state, loss_grad, target, generator, **hyper)`` returns a new state without mutating its inputs.
They know nothing of ``torch.nn.Module``: the driver in :mod:`slt.sampling` turns a model into flat vectors.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

__all__ = ["LocalPosterior", "Kernel", "potential_grad", "gaussian_noise"]


class LocalPosterior(NamedTuple):
    r"""The target of every kernel: a tempered posterior localized at ``center``.

    Attributes
    ----------
    n_beta : float
        Inverse temperature times sample size, :math:`n\beta` (the weight on the mean loss).
    localization : float
        Strength :math:`\gamma` of the Gaussian pull towards ``center``.
    center : Tensor
        The trained weights :math:`w^*` as a flat vector of shape ``(d,)``.
    mask : Tensor or None
        Optional 0/1 vector of shape ``(d,)``: coordinates with 0 never move.
    """

    n_beta: float
    localization: float
    center: Tensor
    mask: Tensor | None = None


def potential_grad(position: Tensor, loss_grad: Tensor, target: LocalPosterior) -> Tensor:
    r"""Gradient of the potential :math:`U(w) = n\beta L(w) + \tfrac{\gamma}{2}\lVert w - w^*\rVert^2`.

    Parameters
    ----------
    position : Tensor
        Current position, shape ``(d,)`` or ``(chains, d)``.
    loss_grad : Tensor
        Gradient of the minibatch mean loss at ``position``, same shape.
    target : LocalPosterior
        The posterior being sampled.

    Returns
    -------
    Tensor
        A new tensor holding :math:`n\beta \nabla L + \gamma (w - w^*)`.
    """
    drift = torch.sub(position, target.center)
    drift.mul_(target.localization)
    drift.add_(loss_grad, alpha=target.n_beta)
    return drift


def gaussian_noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``like``, drawn from ``generator``."""
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


def masked(update: Tensor, target: LocalPosterior) -> Tensor:
    """Zero the coordinates of ``update`` that the target's mask freezes (in place, returns it)."""
    if target.mask is not None:
        update.mul_(target.mask)
    return update


class Kernel(Protocol):
    """What the driver needs from a sampler module: a name, ``init`` and ``step``."""

    name: str

    def init(self, position: Tensor, **hyper: Any) -> Any:  # pragma: no cover - protocol
        """Build the state of a chain starting at ``position``."""

    def step(
        self,
        state: Any,
        loss_grad: Tensor,
        target: LocalPosterior,
        generator: torch.Generator | None,
        **hyper: Any,
    ) -> Any:  # pragma: no cover - protocol
        """Advance one step, returning a new state."""
