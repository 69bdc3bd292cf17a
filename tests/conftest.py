import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


def gaussian_nll(model, batch):
    """Negative log-likelihood per sample of unit-variance Gaussian noise (up to a constant)."""
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).sum(-1).mean()


class Quadratic(nn.Module):
    """A bare parameter vector; pair with ``quadratic_loss`` for L(w) = ||w||^2."""

    def __init__(self, d: int, dtype=torch.float64):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, dtype=dtype))

    def forward(self, x):
        return x


def quadratic_loss(model, batch):
    return (model.w**2).sum()


def least_squares_regression(n: int, d: int, seed: int = 0):
    """A bias-free linear model at the least-squares fit of ``y = x w + N(0, 1)`` (exact LLC target known)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g) + torch.randn(n, 1, generator=g)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, x, y


@pytest.fixture
def tiny_regression():
    """A small trained-looking MLP on synthetic regression data."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(200, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return model, x, y


def finished_run(loss_trace, grad_norm_sq, dim: int):
    """A finished ``ChainRun`` of chains started at w* = 0 that never diverged, from given draws."""
    import numpy as np

    from slt.sampling.driver import ChainRun

    chains = loss_trace.shape[0]
    return ChainRun(
        loss_trace=loss_trace,
        burnin_loss_trace=np.empty((chains, 0)),
        grad_norm_sq=grad_norm_sq,
        reference_loss_trace=None,
        divergence_step=np.full(chains, -1),
        observables={},
        chain_mode="sequential",
        seconds=0.0,
        final_positions=torch.zeros(chains, dim, dtype=torch.float64),
    )
