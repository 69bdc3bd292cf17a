"""Checks of the estimation problem itself, made once before sampling.

Does the loss average over samples, and what does a trivial model score.
"""

from __future__ import annotations

import math

import torch

from slt.sampling.data import batch_length, batch_slice
from slt.sampling.driver import PosteriorSampler

__all__ = ["batch_size_dependence", "zero_weights_loss"]


def batch_size_dependence(posterior: PosteriorSampler) -> float:
    """Ratio of the loss on one batch to the size-weighted mean of the losses on its two halves, at w*.

    1 for a mean loss per sample (what the estimator assumes), about 2 for a sum over the batch. NaN
    when it cannot be told: a batch of one sample, or losses too close to zero to compare.
    """
    batch = next(iter(posterior.data.full_batches()))
    size = batch_length(batch)
    if size < 2:
        return math.nan
    half = size // 2
    fm = posterior.flat_model
    with fm.at(fm.center):
        whole = float(fm.loss(batch))
        first = float(fm.loss(batch_slice(batch, 0, half)))
        second = float(fm.loss(batch_slice(batch, half, size)))
    mean = (half * first + (size - half) * second) / size
    if not (math.isfinite(whole) and math.isfinite(mean)) or abs(mean) < 1e-12 or abs(whole) < 1e-12:
        return math.nan
    return whole / mean


def zero_weights_loss(posterior: PosteriorSampler) -> float:
    r""":math:`L_n` with every sampled weight set to zero: the score of a trivial model.

    With weights zero a classifier's logits are constant (cross-entropy :math:`\ln C` for balanced
    classes) and a regression predicts a constant; restricted to part of the model (``mask``), it is the
    loss with that part removed. A chain whose mean loss is worse than this has left the basin of w*.
    """
    fm = posterior.flat_model
    zero = torch.zeros_like(fm.center)
    if fm.coordinate_mask is not None:
        zero = fm.center * (1 - fm.coordinate_mask)
    return posterior.full_loss_at(zero)
