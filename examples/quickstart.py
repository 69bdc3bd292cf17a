"""Quickstart: train a small MLP, estimate the LLC with the defaults, print the table, save the plot.

Run: python examples/quickstart.py [--out DIR] [--calibrate]

The defaults choose the step from a pilot run and the length by running until the estimate holds;
``--calibrate`` also runs :func:`slt.calibrate` (a step-size ladder at equal simulated time) as a cross-check.
"""

import argparse
from pathlib import Path

import torch
from torch import nn

import slt


def make_data(n: int = 4000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    teacher = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))
    for p in teacher.parameters():
        p.data = torch.randn(p.shape, generator=g)
    with torch.no_grad():
        y = teacher(x) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def train(x, y, steps: int = 1500, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="quickstart-output", help="folder for the figure and JSON result")
    parser.add_argument("--calibrate", action="store_true", help="also run slt.calibrate as a cross-check")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    x, y = make_data()
    model = train(x, y)
    print(
        f"trained: {sum(p.numel() for p in model.parameters())} parameters, "
        f"train MSE {nn.functional.mse_loss(model(x), y).item():.4f}"
    )

    result = slt.estimate_llc(model, (x, y), loss_fn="mse")
    print(result.summary().drop(columns="problems").T.to_string(header=False))
    print("problems:", "; ".join(map(str, result.problems)) or "none")
    result.plot().savefig(out / "llc_trace.png", dpi=120)
    result.to_json(out / "llc.json")
    written = [out / "llc_trace.png", out / "llc.json"]

    if args.calibrate:
        calibration = slt.calibrate(model, (x, y), loss_fn="mse")
        columns = [
            "kind",
            "step_size",
            "num_steps",
            "llc_mean",
            "llc_stderr",
            "rhat",
            "bias_estimate",
            "stable",
        ]
        print("\ncalibration (each step size run for the same simulated time):")
        print(calibration.summary()[columns].to_string(index=False))
        print(f"recommended step size {calibration.step_size:.3g}: {calibration.criteria}")
        calibration.plot().savefig(out / "calibration.png", dpi=120)
        written.append(out / "calibration.png")
    print("\nwrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
