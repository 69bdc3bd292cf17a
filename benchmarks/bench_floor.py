"""slt's per-step cost against the floor: a hand-written SGLD loop on the same model and batch size.

The floor does only what any SGLD implementation must: forward, backward, and the update
w <- w - (eps/2)(n_beta * grad + gamma (w - w*)) + sqrt(eps) * noise, parameter by parameter, on one
fixed minibatch (no data loading, nothing recorded). slt additionally draws a fresh minibatch every step,
records the loss, checks for divergence and (with the control variate) evaluates w* on each draw's batch.

Both run alternately in one process; the report gives the median ratio over repeats.

Run: PYTHONPATH=. python benchmarks/bench_floor.py [--repeats 5] [--steps 1500]
Writes benchmarks/results/floor.json and floor.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import slt
from slt.oracles import deep_linear_network, linear_regression_data

RESULTS = Path(__file__).parent / "results"


def mlp_10k() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 100), nn.ReLU(), nn.Linear(100, 80), nn.ReLU(), nn.Linear(80, 1))
    x = torch.randn(10_000, 20)
    y = torch.randn(10_000, 1)
    return model, (x, y)


def dln_100() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    model = deep_linear_network([10, 5, 10], rank=1)
    return model, linear_regression_data(model, 10_000)


def _mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def floor_seconds_per_step(
    model: nn.Module,
    data,
    batch_size: int,
    steps: int,
    step_size: float,
    n_beta: float,
    loss_fn=_mse,
    device: str | torch.device | None = None,
) -> float:
    """A plain SGLD loop on a copy of the model: the least work any implementation can do.

    ``loss_fn(model, batch)`` defaults to the mean squared error; ``data`` is a tuple of tensors whose
    first ``batch_size`` rows form the one fixed batch. On CUDA the clock stops after a synchronize.
    """
    import copy

    model = copy.deepcopy(model)
    if device is not None:
        model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    center = [p.detach().clone() for p in params]
    batch = tuple(t[:batch_size].to(params[0].device) for t in data)
    sqrt_eps = math.sqrt(step_size)
    cuda = params[0].device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model, batch)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, c in zip(params, grads, center):
                drift = g * n_beta + (p - c)
                p.add_(drift, alpha=-step_size / 2).add_(torch.randn_like(p), alpha=sqrt_eps)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def gradient_seconds_per_step(
    model: nn.Module,
    data,
    batch_size: int,
    steps: int,
    loss_fn=_mse,
    device: str | torch.device | None = None,
    compiled: bool = False,
    chains: int = 1,
) -> float:
    """One chain's gradient alone on one fixed batch: the compute floor of a step, in seconds per chain.

    Forward and backward and nothing else (no update, no noise, no new batch, nothing recorded). Eager:
    ``torch.autograd.grad`` of ``loss_fn(model, batch)``. ``compiled``: slt's compiled gradient of the
    flat weights (:class:`slt.sampling.compiled.CompiledGradient`), the fastest gradient slt has: one
    chain, or with ``chains`` > 1 that many stacked (its vectorized function, time divided by ``chains``);
    its compilation is paid before the clock starts. Every SGLD step of any implementation pays at
    least a gradient, so ``peer seconds per step / this`` bounds the per-step speedup any sampler built
    on this gradient can reach over the peer on this model and machine. On CUDA the clock stops after a
    synchronize. NaN where the compiled gradient is not available (it failed, disagreed with the eager
    pass, or ran untraced): eager numbers must not be reported as compiled ones.
    """
    import copy

    from slt.sampling.compiled import CompileFailed
    from slt.sampling.setup import prepared_sampler

    model = copy.deepcopy(model)
    if device is not None:
        model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    batch = tuple(t[:batch_size].to(params[0].device) for t in data)
    if compiled:
        with prepared_sampler(
            model, data, loss_fn, batch_size=batch_size, device=device, compile=True
        ) as post:
            position = post.flat_model.center.clone()
            compiled_gradient = post.compiled.sequential() if chains == 1 else post.compiled.vectorized()
            if compiled_gradient is None:
                return math.nan
            if chains > 1:
                position = position.expand(chains, -1).clone()
                batch = tuple(t.expand(chains, *t.shape).clone() for t in batch)
            try:
                seconds = _time_per_call(lambda: compiled_gradient(position, batch), steps, batch[0].device)
            except CompileFailed:
                return math.nan
            return seconds / chains if post.compiled.reason is None else math.nan
    return _time_per_call(lambda: torch.autograd.grad(loss_fn(model, batch), params), steps, batch[0].device)


def _time_per_call(call, steps: int, device: torch.device) -> float:
    steps = max(int(steps), 1)
    for _ in range(3):  # compilation and lazy initialization before the clock
        call()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        call()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def slt_seconds_per_step(model, data, batch_size, steps, step_size, n_beta, chains, control_variate):
    start = time.perf_counter()
    result = slt.estimate_llc(
        model,
        data,
        loss_fn="mse",
        n_beta=n_beta,
        step_size=step_size,
        num_chains=chains,
        num_draws=steps,
        num_burnin=0,
        batch_size=batch_size,
        chain_mode="sequential",
        control_variate=control_variate,
        progress=False,
    )
    total = time.perf_counter() - start
    return result.seconds / (chains * steps), total / (chains * steps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, factory in (("mlp-10k", mlp_10k), ("dln-100", dln_100)):
        model, data = factory()
        n_params = sum(p.numel() for p in model.parameters())
        n_beta = data[0].shape[0] / math.log(data[0].shape[0])
        floors, plain, with_cv, whole = [], [], [], []
        for _ in range(args.repeats):
            floors.append(floor_seconds_per_step(model, data, args.batch_size, args.steps, 1e-6, n_beta))
            chains_only, call = slt_seconds_per_step(
                model, data, args.batch_size, args.steps // args.chains, 1e-6, n_beta, args.chains, False
            )
            plain.append(chains_only)
            whole.append(call)
            with_cv.append(
                slt_seconds_per_step(
                    model, data, args.batch_size, args.steps // args.chains, 1e-6, n_beta, args.chains, True
                )[0]
            )
        row = {
            "model": name,
            "parameters": n_params,
            "batch_size": args.batch_size,
            "floor_us_per_step": statistics.median(floors) * 1e6,
            "slt_us_per_chain_step": statistics.median(plain) * 1e6,
            "slt_control_variate_us_per_chain_step": statistics.median(with_cv) * 1e6,
            "slt_whole_call_us_per_chain_step": statistics.median(whole) * 1e6,
            "ratio_to_floor": statistics.median(p / f for p, f in zip(plain, floors)),
            "ratio_to_floor_control_variate": statistics.median(c / f for c, f in zip(with_cv, floors)),
            "ratio_whole_call_to_floor": statistics.median(w / f for w, f in zip(whole, floors)),
        }
        rows.append(row)
        print(json.dumps(row, indent=1))
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "steps": args.steps,
    }
    (RESULTS / "floor.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# slt against the floor (plain SGLD loop), CPU, one thread",
        "",
        "| model | params | floor µs/step | slt µs/chain-step | ratio "
        "| with control variate | ratio | whole call ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters']} | {r['floor_us_per_step']:.0f} "
            f"| {r['slt_us_per_chain_step']:.0f} "
            f"| {r['ratio_to_floor']:.2f} | {r['slt_control_variate_us_per_chain_step']:.0f} "
            f"| {r['ratio_to_floor_control_variate']:.2f} | {r['ratio_whole_call_to_floor']:.2f} |"
        )
    lines += ["", f"median of {args.repeats} alternating repeats; torch {torch.__version__}"]
    (RESULTS / "floor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
