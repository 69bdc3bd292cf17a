r"""Replica exchange (parallel tempering) moves between neighbouring rungs of a temperature ladder.

Chains are laid out as ``(rungs, chains)``: rung ``k`` samples
:math:`p_k(w) \propto \exp(-x_k L(w) - \tfrac{\gamma}{2}\lVert w - w^*\rVert^2)`, the same localizer on
every rung. Swapping the states :math:`a` (at rung :math:`k`) and :math:`b` (at rung :math:`k+1`) of one
chain column is accepted with probability

.. math::

    \min\big(1, \exp[(x_{k+1} - x_k)(L(b) - L(a))]\big),

which keeps every rung's distribution invariant (the localizer cancels). Even pairs ``(0,1), (2,3), ...``
and odd pairs ``(1,2), (3,4), ...`` alternate so that each proposal touches a rung at most once.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["neighbour_swaps", "apply_permutation", "count_round_trips"]

#: Labels of :func:`count_round_trips`: where a replica was last seen at an end of the ladder.
UNSEEN, FROM_HOT, FROM_COLD = 0, 1, 2


def neighbour_swaps(
    loss: Tensor, n_betas: Tensor, generator: torch.Generator | None, *, parity: int
) -> tuple[Tensor, Tensor]:
    """Propose swaps between rungs ``(k, k+1)`` for every ``k`` of the given parity, per chain column.

    Parameters
    ----------
    loss : Tensor, shape (rungs, chains)
        Loss of the state currently at each rung and chain column.
    n_betas : Tensor, shape (rungs,)
        Inverse temperatures :math:`x_k` (any order).
    generator : torch.Generator or None
    parity : {0, 1}
        Which pairs to try.

    Returns
    -------
    source : Tensor of int64, shape (rungs, chains)
        ``source[k, c]`` is the rung whose state moves to rung ``k`` in column ``c``.
    accepted : Tensor of bool, shape (rungs - 1, chains)
        ``accepted[k, c]``: the pair ``(k, k+1)`` swapped in column ``c`` (False for pairs not tried).
    """
    rungs, chains = loss.shape
    source = torch.arange(rungs, device=loss.device).unsqueeze(-1).expand(rungs, chains).clone()
    accepted = torch.zeros(max(rungs - 1, 0), chains, dtype=torch.bool, device=loss.device)
    lower = torch.arange(parity, rungs - 1, 2, device=loss.device)
    if lower.numel() == 0:
        return source, accepted
    upper = lower + 1
    x = n_betas.to(loss.dtype)
    log_ratio = (x[upper] - x[lower]).unsqueeze(-1) * (loss[upper] - loss[lower])
    log_ratio = torch.nan_to_num(log_ratio, nan=-torch.inf)
    uniform = torch.rand(log_ratio.shape, generator=generator, dtype=loss.dtype, device=loss.device)
    swap = torch.log(uniform) < log_ratio
    source[lower] = torch.where(swap, upper.unsqueeze(-1), lower.unsqueeze(-1))
    source[upper] = torch.where(swap, lower.unsqueeze(-1), upper.unsqueeze(-1))
    accepted[lower] = swap
    return source, accepted


def apply_permutation(values: Tensor, source: Tensor) -> Tensor:
    """Reorder ``values`` of shape ``(rungs, chains, ...)`` so that rung ``k`` holds ``values[source[k]]``."""
    index = source.reshape(*source.shape, *([1] * (values.ndim - 2))).expand_as(values)
    return torch.gather(values, 0, index)


def count_round_trips(replica: Tensor, label: Tensor, trips: Tensor) -> tuple[Tensor, Tensor]:
    """Update round-trip counts after a step, for the replica-exchange diagnostic.

    A round trip is a replica going from the hottest rung (index 0) to the coldest (index ``-1``) and
    back; cold rungs have forgotten their start only once replicas make such trips.

    Parameters
    ----------
    replica : Tensor of int64, shape (rungs, chains)
        Which replica (``0 .. rungs - 1`` within its column) is at each rung; follow swaps with
        ``apply_permutation(replica, source)``.
    label : Tensor of int64, shape (rungs, chains)
        Per replica: :data:`UNSEEN`, :data:`FROM_HOT` (last end visited was the hottest rung) or
        :data:`FROM_COLD`.
    trips : Tensor of int64, shape (chains,)
        Completed round trips per column.

    Returns
    -------
    label, trips : Tensor
        Updated copies.
    """
    label, trips = label.clone(), trips.clone()
    hot = replica[0].unsqueeze(0)
    trips += (label.gather(0, hot) == FROM_COLD).squeeze(0).long()
    label.scatter_(0, hot, FROM_HOT)
    cold = replica[-1].unsqueeze(0)
    arrived = label.gather(0, cold) == FROM_HOT
    label.scatter_(0, cold, torch.where(arrived, FROM_COLD, label.gather(0, cold)))
    return label, trips
