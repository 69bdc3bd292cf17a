"""Density of states of a small trained network next to a model whose learning coefficient is known.

Left column: a tanh MLP trained on noisy regression data. Right column: two-layer reduced-rank regression
y = BAx (input 4, hidden 3, output 4, true rank 1) at a most singular true parameter, where Aoyagi's formula
gives λ = 6 and m = 1. Both ladders reach far colder temperatures than the default (n β* / 30 to 30 n β*),
so that the curve covers several decades of small t: with the default ladder the MLP's fit window spans
less than a decade (t above 2e-3), too little to tell λ from m, and slt says so with a FitWarning.

Run: python examples/dos_example.py [--out DIR] [--quick]
"""

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import slt
from slt import oracles

COLUMNS = [
    "llc",
    "llc_stderr",
    "multiplicity",
    "multiplicity_stderr",
    "fit_t_low",
    "fit_t_high",
    "median_round_trips",
    "seconds",
]


def gaussian_nll(model, batch):
    """Negative log-likelihood per sample of unit-variance Gaussian noise (up to a constant)."""
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).sum(-1).mean()


def trained_mlp(n: int = 500, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 4 - 2
    y = torch.sin(x[:, :1]) * torch.cos(x[:, 1:]) + 0.3 * torch.randn(n, 1, generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3000):
        opt.zero_grad()
        gaussian_nll(model, (x, y)).backward()
        opt.step()
    # polish with full-batch L-BFGS so the weights sit at a minimum (t >= 0 near them)
    lbfgs = torch.optim.LBFGS(
        model.parameters(), max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure():
        lbfgs.zero_grad()
        loss = gaussian_nll(model, (x, y))
        loss.backward()
        return loss

    lbfgs.step(closure)
    return model, x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for dos_example.png")
    parser.add_argument("--quick", action="store_true", help="fewer draws (a rough picture in a few seconds)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    draws = 300 if args.quick else 1000

    start = time.perf_counter()
    model, x, y = trained_mlp()
    n_beta = slt.default_n_beta(len(x))
    ladder = np.geomspace(n_beta / 10, 1000 * n_beta, 18)
    mlp = slt.estimate_dos(
        model,
        (x, y),
        loss_fn=gaussian_nll,
        temperatures=ladder,
        num_draws=draws,
        num_burnin=2 * draws,
        progress=False,
    )
    print(f"trained MLP ({mlp.settings.num_params} parameters, n = {mlp.n}):")
    print(mlp.summary()[COLUMNS].to_string(index=False))

    rrr = oracles.deep_linear_network([4, 3, 4], rank=1, seed=0, dtype=torch.float64)
    rx, ry = oracles.linear_regression_data(rrr, 100, noise=0.0, seed=1)
    known = slt.estimate_dos(
        rrr,
        (rx, ry),
        loss_fn=gaussian_nll,
        temperatures=np.geomspace(30, 3e5, 16),
        num_draws=2 * draws,
        progress=False,
    )
    lam, mult = oracles.rrr_lambda(4, 3, 4, 1)
    print(f"\nreduced-rank regression (Aoyagi: λ = {lam:g}, m = {mult}):")
    print(known.summary()[COLUMNS].to_string(index=False))

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    mlp.plot(ax=axes[:, 0], label="trained MLP")
    known.plot(ax=axes[:, 1], label="reduced-rank regression")
    axes[1, 1].axhline(lam, color="C3", ls=":", lw=1.2, label=rf"Aoyagi $\lambda$ = {lam:g}")
    axes[1, 1].legend(fontsize=8)
    axes[0, 0].set_title("trained tanh MLP")
    axes[0, 1].set_title("reduced-rank regression, known λ = 6")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "dos_example.png"
    fig.savefig(path, dpi=120)
    print(f"\nsaved {path} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
