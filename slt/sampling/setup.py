"""The setup every estimator shares: the device, the caller's RNG kept apart, the prepared sampler."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from slt.sampling.driver import PosteriorSampler
from slt.sampling.flat import Mask
from slt.sampling.losses import LossFn
from slt.sampling.rng import isolated_rng
from slt.sampling.settings import check_seed, resolve_device

__all__ = ["prepared_sampler"]


@contextmanager
def prepared_sampler(
    model: nn.Module,
    data: Any,
    loss_fn: str | LossFn | None,
    *,
    batch_size: int | None = None,
    mask: Mask = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    **options: Any,
) -> Iterator[PosteriorSampler]:
    """A :class:`PosteriorSampler` of ``model`` on its device, with the global RNGs isolated.

    Inside the block the global torch, numpy and Python RNGs (and the device's) are seeded from
    ``seed``; after it they are exactly as the caller left them, so estimating never changes a training
    run's random stream. Gradients are on inside the block, also when the caller is in
    :func:`torch.no_grad` or :func:`torch.inference_mode` (an evaluation block of a training loop); the
    caller's grad mode is back after it. The model itself is copied by the sampler and never modified.
    ``options`` (``n``, ``n_unit``, ``eval_samples``, ``model_mode``) go to :class:`PosteriorSampler`.

    Raises
    ------
    ValueError
        As :class:`PosteriorSampler` (empty data, a non-finite loss at :math:`w^*`, a model without
        parameters, an empty mask), or a seed that is negative or does not fit in 64 bits.
    TypeError
        For a seed that is not an integer.
    """
    seed = check_seed(seed)
    device = resolve_device(model, device)
    with torch.inference_mode(False), torch.enable_grad(), isolated_rng(seed, (device,)):
        yield PosteriorSampler(
            model, data, loss_fn, batch_size=batch_size, mask=mask, device=device, seed=seed, **options
        )
