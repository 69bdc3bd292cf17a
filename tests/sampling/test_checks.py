"""The minibatch gradient noise measured where the chains are, and the share of the gap to zero weights
the chains climbed (slt.sampling.checks)."""

import math

import numpy as np
import pytest
import torch

from slt.sampling import PosteriorSampler
from slt.sampling.checks import gap_climbed, localization_share, minibatch_gradient_noise
from tests.conftest import gaussian_nll, least_squares_regression


def exact_share(posterior: PosteriorSampler, position: torch.Tensor) -> float:
    """The noise share over every batch of the sampler's partition, which chains draw uniformly."""
    partition = posterior.data.partition(posterior.batch_size)
    fm = posterior.flat_model
    grads = []
    with fm.at(position):
        for k in range(partition.num_batches):
            _, grad = fm.loss_and_grad(partition.batch(k))
            grads.append(grad.double() * partition.weight(k))
    stacked = torch.stack(grads)
    noise = stacked.var(dim=0, unbiased=False).sum()
    return float(noise / stacked.square().sum(dim=-1).mean())


def regression_sampler(batch_size: int | None = 64) -> PosteriorSampler:
    model, x, y = least_squares_regression(300, 4)
    return PosteriorSampler(model.double(), (x.double(), y.double()), gaussian_nll, batch_size=batch_size)


def test_the_share_matches_the_partition_and_falls_away_from_the_minimum():
    posterior = regression_sampler()
    center = posterior.center
    # at the least-squares fit the full gradient vanishes: the minibatch gradient is all noise
    at_fit = minibatch_gradient_noise(posterior, center[None], batches=400)
    assert 0.9 < at_fit <= 1.0
    assert abs(at_fit - exact_share(posterior, center)) < 0.05
    # away from it the full gradient dominates
    away = center + 1.0
    far = minibatch_gradient_noise(posterior, away[None], batches=400)
    assert abs(far / exact_share(posterior, away) - 1) < 0.2, (far, exact_share(posterior, away))
    assert far < 0.1
    # several positions pool their sums
    both = minibatch_gradient_noise(posterior, torch.stack([center, away]), batches=16)
    assert far < both < at_fit


def test_full_batch_chains_have_no_noise_and_bad_input_gives_nan():
    assert minibatch_gradient_noise(regression_sampler(batch_size=300), torch.zeros(1, 4)) == 0.0
    posterior = regression_sampler()
    assert torch.isnan(torch.tensor(minibatch_gradient_noise(posterior, torch.zeros(0, 4))))
    assert torch.isnan(torch.tensor(minibatch_gradient_noise(posterior, posterior.center[None], batches=1)))


def test_the_measurement_is_seeded_and_leaves_the_global_rng_and_weights_alone():
    posterior = regression_sampler()
    center = posterior.center.clone()
    state = torch.get_rng_state()
    first = minibatch_gradient_noise(posterior, center[None] + 0.1, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(posterior.center, center)
    assert first == minibatch_gradient_noise(posterior, center[None] + 0.1, seed=3)
    assert first != minibatch_gradient_noise(posterior, center[None] + 0.1, seed=4)


def test_gap_climbed_is_the_share_of_the_way_to_the_zero_weights_loss():
    # the CNN of docs/theory.md at γ = 10: λ̂ = 71.2 at nβ = 119.68, L(w*) = 0.6557, L(0) = 1.386
    assert gap_climbed(71.2, 119.68, 0.6557, 1.386) == pytest.approx(0.8147, abs=1e-3)
    assert gap_climbed(2 * 119.68, 119.68, 0.5, 1.5) == 2.0  # twice the gap: worse than zero weights
    assert math.isnan(gap_climbed(10.0, 100.0, 1.0, 1.0))  # no gap to climb
    assert math.isnan(gap_climbed(10.0, 100.0, 1.0, 0.5))


def test_localization_share_is_gamma_times_the_covariance_over_the_estimate_and_nan_where_undefined():
    g = np.random.default_rng(0)
    half_sq = g.exponential(1.0, size=(4, 5000))
    trace = 3.0 * half_sq + g.normal(size=(4, 5000))  # Cov(f, ½D²) = 3 Var(½D²) = 3
    share, stderr = localization_share(trace, 2 * half_sq, 0.5, 6.0)
    assert share == pytest.approx(0.5 * 3.0 / 6.0, rel=0.1) and 0 < stderr < 0.05
    assert math.isnan(localization_share(trace[:1], 2 * half_sq[:1], 0.5, 6.0)[1])  # one chain
    assert all(math.isnan(v) for v in localization_share(trace, 2 * half_sq, 0.5, 0.0))  # λ̂ not positive
    assert all(math.isnan(v) for v in localization_share(trace, half_sq[:, :10], 0.5, 6.0))  # shapes differ
    trace[0, 3] = np.nan
    assert all(math.isnan(v) for v in localization_share(trace, 2 * half_sq, 0.5, 6.0))
