import math

import pytest
import torch

import slt
from slt.samplers import LocalPosterior, sgld
from tests.conftest import Quadratic, quadratic_loss


@pytest.mark.parametrize("mode", ["vectorized", "sequential"])
@pytest.mark.parametrize("averaged", [True, False], ids=["leimkuhler-matthews", "euler"])
def test_isotropic_quadratic_matches_the_exact_discretized_expectation(mode, averaged):
    """L = ||w||^2, d = 10, nβ = 145, γ = 1, ε = 1e-3, full batch (DESIGN.md §2).

    The Euler step's stationary variance is 1/(a(1 - εa/4)) per coordinate, 7.8% above the continuous
    1/a here; the Leimkuhler-Matthews noise makes it exactly 1/a at any stable step.
    """
    d, n_beta, gamma, eps = 10, 145.0, 1.0, 1e-3
    a = 2 * n_beta + gamma
    continuous = (d / 2) * (2 * n_beta / a)
    expected = continuous if averaged else continuous / (1 - eps * a / 4)
    result = slt.estimate_llc(
        Quadratic(d),
        torch.zeros(100, 1),
        loss_fn=quadratic_loss,
        n_beta=n_beta,
        localization=gamma,
        step_size=eps,
        sampler_options={"leimkuhler_matthews": averaged},
        num_chains=16,
        num_draws=5000,
        num_burnin=500,
        chain_mode=mode,
        progress=False,
    )
    assert result.settings.chain_mode == mode
    assert result.settings.sampler_options == {"leimkuhler_matthews": averaged}
    assert result.mean == pytest.approx(expected, rel=0.02)
    assert (
        abs(result.mean - expected) < 4 * result.stderr + 1e-9
        or abs(result.mean - expected) < 0.01 * expected
    )
    # the other scheme's value is 7.8% away and excluded
    other = continuous / (1 - eps * a / 4) if averaged else continuous
    assert abs(result.mean - other) > 0.04 * expected
    # the first-order correction applies to the Euler step only
    if averaged:
        assert result.corrected == result.mean
    else:
        assert result.corrected < result.mean


@pytest.mark.parametrize("averaged", [True, False])
def test_step_is_pure_and_follows_the_update_rule(averaged):
    center = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    target = LocalPosterior(n_beta=10.0, localization=2.0, center=center)
    state = sgld.init(center + 1.0)
    before = state.position.clone()
    grad = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    g1 = torch.Generator().manual_seed(5)
    new = sgld.step(state, grad, target, g1, step_size=0.01, leimkuhler_matthews=averaged)
    assert torch.equal(state.position, before)
    assert torch.equal(state.noise, torch.zeros(3, dtype=torch.float64))
    noise = torch.randn(3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    drift = 10.0 * grad + 2.0 * (before - center)
    # averaged: the first step pairs its draw with the zeros of init, so it carries half of it
    scale = 0.5 if averaged else 1.0
    assert torch.allclose(new.position, before - 0.005 * drift + scale * math.sqrt(0.01) * noise)
    assert torch.equal(new.noise, noise if averaged else torch.zeros(3, dtype=torch.float64))


def test_mask_freezes_coordinates():
    center = torch.zeros(4)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    target = LocalPosterior(1.0, 1.0, center, mask)
    state = sgld.init(center)
    for _ in range(20):
        state = sgld.step(state, torch.ones(4), target, None, step_size=0.1)
    assert torch.all(state.position[mask == 0] == 0)
    assert torch.all(state.position[mask == 1] != 0)


def test_batched_positions_step_independently():
    center = torch.zeros(3)
    target = LocalPosterior(1.0, 1.0, center)
    state = sgld.init(torch.zeros(5, 3))
    new = sgld.step(state, torch.zeros(5, 3), target, torch.Generator().manual_seed(0), step_size=0.1)
    assert new.position.shape == (5, 3)
    assert not torch.allclose(new.position[0], new.position[1])
