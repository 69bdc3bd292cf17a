import math

import torch

from slt.samplers import LocalPosterior, mala


def _quadratic(position):
    """L(w) = ||w||^2 per chain, and its gradient."""
    return position.square().sum(-1), 2 * position


def test_mala_is_exact_at_a_step_where_sgld_is_badly_biased():
    """Target N(0, 1/a) per coordinate with a = 2x + γ; SGLD at ε a = 1 would inflate the variance by 4/3."""
    x, gamma, d, chains = 10.0, 1.0, 3, 400
    a = 2 * x + gamma
    eps = 1.0 / a
    center = torch.zeros(d, dtype=torch.float64)
    target = LocalPosterior(n_beta=x, localization=gamma, center=center)
    g = torch.Generator().manual_seed(0)
    position = torch.zeros(chains, d, dtype=torch.float64)
    state = mala.init(position, *_quadratic(position))
    draws, accepted = [], []
    for step in range(1500):
        proposal = mala.propose(state, target, g, step_size=eps)
        state, prob = mala.accept(state, proposal, *_quadratic(proposal), target, g, step_size=eps)
        accepted.append(prob.mean())
        if step >= 300:
            draws.append(state.position)
    variance = torch.stack(draws).var().item()
    assert abs(variance * a - 1.0) < 0.03
    sgld_inflation = 1 / (1 - eps * a / 4)
    assert sgld_inflation - 1 > 10 * 0.03  # the bias MALA removes is far outside the tolerance
    assert 0.5 < float(torch.stack(accepted).mean()) < 1.0


def test_per_chain_temperatures_and_steps_broadcast():
    x = torch.tensor([1.0, 100.0], dtype=torch.float64)
    eps = 0.5 / (2 * x + 1)
    target = LocalPosterior(n_beta=x, localization=1.0, center=torch.zeros(2, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    position = torch.zeros(2, 2, dtype=torch.float64)
    state = mala.init(position, *_quadratic(position))
    samples = []
    for _ in range(4000):
        proposal = mala.propose(state, target, g, step_size=eps)
        state, _ = mala.accept(state, proposal, *_quadratic(proposal), target, g, step_size=eps)
        samples.append(state.position)
    variance = torch.stack(samples[500:]).var(dim=(0, 2))
    assert torch.allclose(variance * (2 * x + 1), torch.ones(2, dtype=torch.float64), rtol=0.15)


def test_steps_are_pure_and_non_finite_proposals_are_rejected():
    center = torch.tensor([0.5, -1.0], dtype=torch.float64)
    target = LocalPosterior(
        n_beta=3.0, localization=1.0, center=center, mask=torch.tensor([1.0, 0.0], dtype=torch.float64)
    )
    position = center.expand(4, 2).clone()
    state = mala.init(position, *_quadratic(position))
    before = [v.clone() for v in state]
    g = torch.Generator().manual_seed(2)
    proposal = mala.propose(state, target, g, step_size=0.1)
    assert torch.equal(proposal[:, 1], position[:, 1])  # the masked coordinate never moves
    assert not torch.equal(proposal[:, 0], position[:, 0])
    bad_loss = torch.full((4,), math.nan, dtype=torch.float64)
    new, prob = mala.accept(state, proposal, bad_loss, 2 * proposal, target, g, step_size=0.1)
    assert torch.equal(prob, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(new.position, position)
    for b, v in zip(before, state):
        assert torch.equal(b, v)
