"""Checks of the estimation problem itself, made once before sampling.

Does the loss average over samples, and what does a trivial model score. And one check made after
sampling: how much of the minibatch gradient is noise where the chains ended
(:func:`minibatch_gradient_noise`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from slt.sampling.data import batch_length, batch_slice
from slt.sampling.driver import PosteriorSampler

__all__ = [
    "batch_size_dependence",
    "zero_weights_loss",
    "gap_climbed",
    "localization_share",
    "minibatch_gradient_noise",
    "NOISE_BATCHES",
]

#: Minibatch gradients per position that :func:`minibatch_gradient_noise` draws.
NOISE_BATCHES = 16


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


def gap_climbed(llc: float, n_beta: float, init_loss: float, zero_loss: float) -> float:
    r"""Share of the way from :math:`L_n(w^*)` to the zero-weights loss the chains' mean loss climbed.

    The chains' mean loss is :math:`L_n(w^*) + \hat\lambda/n\beta`, so the share is
    :math:`(\hat\lambda/n\beta) / (L_n(0) - L_n(w^*))`, with ``zero_loss`` from
    :func:`zero_weights_loss`. Above 1 the chains predict worse than weights set to zero. NaN unless the
    gap is positive.
    """
    gap = zero_loss - init_loss
    return llc / n_beta / gap if gap > 0 else float("nan")


def localization_share(
    trace: np.ndarray, distance_sq: np.ndarray, localization: float, llc: float
) -> tuple[float, float]:
    r"""How fast :math:`\hat\lambda` falls as :math:`\gamma` rises, measured from the draws.

    Under :math:`p_\gamma(w) \propto \exp(-n\beta L_n(w) - \tfrac{\gamma}{2}\lVert w-w^*\rVert^2)`,
    differentiating an expectation in :math:`\gamma` gives
    :math:`d\,\mathbb{E}[f]/d\gamma = -\mathrm{Cov}(f, \tfrac12\lVert w-w^*\rVert^2)` (the exponential
    family identity), so with :math:`f = n\beta(L_n(w) - L_n(w^*))`

    .. math::

        s = -\frac{d\ln\hat\lambda}{d\ln\gamma}
          = \frac{\gamma\,\mathrm{Cov}\big(n\beta L_n(w), \tfrac12\lVert w-w^*\rVert^2\big)}{\hat\lambda}.

    For a quadratic loss of curvatures :math:`h_i` it is the mean over directions of
    :math:`\gamma/(n\beta h_i + \gamma)`, the localization's share of the posterior precision, weighted
    by each direction's part of :math:`\hat\lambda`: near 0 the loss alone confines the chains where
    they move the loss, and the estimate hardly depends on :math:`\gamma`; at 1 the pull towards
    :math:`w^*` does, and :math:`\hat\lambda \propto 1/\gamma`.

    Parameters
    ----------
    trace : ndarray, shape (chains, draws)
        Per-draw :math:`n\beta(L(w) - L_n(w^*))` of the chains to use (healthy ones); with the control
        variate, :math:`n\beta` times the draw's minibatch loss minus :math:`w^*`'s on the same batch,
        whose covariance with the distance has the same expectation (each draw's batch is independent).
    distance_sq : ndarray, shape (chains, draws)
        :math:`\lVert w - w^*\rVert^2` at the same draws.
    localization, llc : float
        :math:`\gamma` and :math:`\hat\lambda`.

    Returns
    -------
    (share, stderr) : tuple of float
        The covariance is taken within each chain and averaged (chains still drifting add to it; short,
        strongly correlated chains pull it towards 0); the standard error is the spread of the chains'
        values over the square root of their number (NaN with one chain). Both NaN without a
        positive ``llc``, without draws or where the traces are not finite.
    """
    trace = np.asarray(trace, dtype=float)
    distance_sq = np.asarray(distance_sq, dtype=float)
    if trace.shape != distance_sq.shape or trace.ndim != 2 or trace.shape[1] < 2 or not llc > 0:
        return math.nan, math.nan
    centred_f = trace - trace.mean(axis=1, keepdims=True)
    centred_g = 0.5 * (distance_sq - distance_sq.mean(axis=1, keepdims=True))
    per_chain = localization * (centred_f * centred_g).mean(axis=1) / llc
    if not np.isfinite(per_chain).all():
        return math.nan, math.nan
    chains = per_chain.size
    stderr = float(per_chain.std(ddof=1) / math.sqrt(chains)) if chains > 1 else math.nan
    return float(per_chain.mean()), stderr


def minibatch_gradient_noise(
    posterior: PosteriorSampler, positions: torch.Tensor, *, batches: int = NOISE_BATCHES, seed: int = 0
) -> float:
    r"""Share of the minibatch gradient's energy that is noise, where the chains are.

    At each position (a flat vector over the sampled coordinates, for example a chain's last draw) it
    draws ``batches`` minibatches the way a chain does (independent, uniform batch ids of the sampler's
    partition, each gradient times its batch weight). Summed over positions and coordinates, the sample
    variance of these gradients estimates :math:`\mathrm{tr}\,C_B = \mathbb{E}\lVert\nabla L_B -
    \nabla L_n\rVert^2`, the noise SGLD adds beyond its injected Gaussian, and their mean square
    :math:`\mathbb{E}\lVert\nabla L_B\rVert^2`; the result is the first over the second, in
    :math:`[0, 1]`. As a ratio of two sums over the same gradients it varies far less between runs than
    the trace alone (on the normal crossing :math:`w_1^2 w_2^2` at the chains' ends, seeds 0-3: shares
    0.48-0.62 where the trace varied two-fold). Times :func:`slt.tuning.bias_indicator` (the gradient
    energy over every draw) it gives the minibatch share of the step-size bias,
    :func:`slt.tuning.minibatch_bias`.

    A data loader's batches are drawn as the chains draw them (:class:`slt.sampling.data.LoaderData`).
    It uses its own generator, so the global RNGs
    are untouched, and it puts the working copy's weights back. Coordinates outside a mask are left out.

    Parameters
    ----------
    posterior : PosteriorSampler
    positions : Tensor, shape (positions, sampled coordinates)
    batches : int
        Minibatches per position (at least 2).
    seed : int
        Seed of the batch draws.

    Returns
    -------
    float
        The share; 0.0 when one batch holds all the data (full-batch chains have no noise); NaN without
        positions, with fewer than two batches, a zero gradient everywhere, or a non-finite gradient.
    """
    if positions.numel() == 0 or batches < 2:
        return math.nan
    fm = posterior.flat_model
    generator = torch.Generator(device=posterior.device).manual_seed(int(seed))
    stream = posterior.data.stream(generator, posterior.batch_size)
    partition = getattr(stream, "partition", None)
    if partition is not None and partition.num_batches == 1:
        return 0.0
    mask = None if fm.coordinate_mask is None else fm.coordinate_mask.double()
    noise, energy = 0.0, 0.0
    for position in positions:
        grads = []
        with fm.at(position.to(fm.center)):
            for _ in range(batches):
                _, grad = fm.loss_and_grad(stream())
                grads.append(grad.double() * float(stream.weight))
        stacked = torch.stack(grads) if mask is None else torch.stack(grads) * mask
        noise += float(stacked.var(dim=0, unbiased=True).sum())
        energy += float(stacked.square().sum(dim=-1).mean())
    if not (math.isfinite(noise) and math.isfinite(energy)) or energy <= 0:
        return math.nan
    return min(noise / energy, 1.0)
