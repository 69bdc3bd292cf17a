"""Scaling: time per chain-step against parameter count and against the number of chains.

1. **Parameters** (1e3 to 1e6; quick: to 1e5): two-hidden-layer ReLU MLPs, batch 256, 4 chains. slt with
   sequential chains, slt with vectorized chains, the floor (plain SGLD loop) and devinterp 2.0.1 (when
   installed), interleaved within each repeat.
2. **Chains** (1 to 16): for a 100-parameter deep linear network and MLPs of 1e3, 1e4 and 1e5 parameters,
   slt's sequential and vectorized chain modes side by side, with the mode ``chain_mode="auto"`` picks,
   so the rule in ``slt/sampling/driver.py`` (vectorize on CPU with at least
   ``VECTORIZE_CPU_MIN_CHAINS`` chains and parameters x batch at most ``VECTORIZE_CPU_MAX_WORK``) can be
   checked against the measured winner.

Times are slt's chain time (``LLCResult.seconds``: sampling only) per chain-step; devinterp's is its whole
``llc`` call (it has no separate chain timer).

Run: PYTHONPATH=. python benchmarks/bench_scaling.py [--quick] [--device cuda]
Writes benchmarks/results/scaling.json (or scaling_<device>.json).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_floor import floor_seconds_per_step
from common import (
    RESULTS,
    collect,
    devinterp_llc,
    environment,
    gaussian_nll,
    median,
    mlp_with_params,
    num_params,
    peer_status,
    regression_problem,
    synchronize,
    write_json,
)

import slt
from slt.oracles import deep_linear_network, linear_regression_data
from slt.sampling import (
    PosteriorSampler,
    driver,
)

N = 10_000
BATCH = 256
STEP = 1e-6


def slt_chain_seconds(
    model, data, chains: int, draws: int, mode: str, device: str, control_variate: bool = True
) -> float:
    synchronize(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = slt.estimate_llc(
            model,
            data,
            loss_fn=gaussian_nll,
            step_size=STEP,
            num_chains=chains,
            num_draws=draws,
            num_burnin=0,
            batch_size=BATCH,
            chain_mode=mode,
            device=device,
            control_variate=control_variate,
            progress=False,
        )
    synchronize(device)
    if result.settings.chain_mode != mode:
        raise RuntimeError(f"asked for {mode} chains, slt ran {result.settings.chain_mode}")
    return result.seconds


def draws_for(params: int, quick: bool) -> int:
    """Draws per chain: enough for a stable time, few enough for the budget."""
    if params <= 2_000:
        d = 300
    elif params <= 20_000:
        d = 200
    elif params <= 200_000:
        d = 40
    else:
        d = 8
    return max(4, d // 3) if quick else d


def parameter_sweep(sizes: list[int], quick: bool, repeats: int, device: str, peer: bool) -> list[dict]:
    rows = []
    chains = 4
    for target in sizes:
        model = mlp_with_params(target)
        data = regression_problem(model, N)
        n_beta = N / math.log(N)
        draws = draws_for(target, quick)
        steps = chains * draws
        runs: dict[str, list[float]] = {
            "sequential": [],
            "vectorized": [],
            "sequential_no_cv": [],
            "floor": [],
            "devinterp": [],
        }
        start = time.perf_counter()
        slt_chain_seconds(model, data, chains, 4, "sequential", device)  # warm up
        slt_chain_seconds(model, data, chains, 4, "vectorized", device)
        for r in range(repeats):
            order = ["sequential", "vectorized", "sequential_no_cv", "floor", "devinterp"]
            if r % 2:
                order.reverse()
            for who in order:
                collect()
                if who in ("sequential", "vectorized"):
                    runs[who].append(slt_chain_seconds(model, data, chains, draws, who, device) / steps)
                elif who == "sequential_no_cv":
                    seconds = slt_chain_seconds(model, data, chains, draws, "sequential", device, False)
                    runs[who].append(seconds / steps)
                elif who == "floor":
                    runs[who].append(
                        floor_seconds_per_step(model, data, BATCH, steps, STEP, n_beta, gaussian_nll, device)
                    )
                elif peer:
                    est = devinterp_llc(
                        model,
                        data,
                        "gaussian_nll",
                        step_size=STEP,
                        n_beta=n_beta,
                        localization=1.0,
                        num_chains=chains,
                        num_draws=draws,
                        batch_size=BATCH,
                        device=device,
                    )
                    runs[who].append(est.seconds / steps)
        row = {
            "parameters": num_params(model),
            "chains": chains,
            "draws": draws,
            "batch_size": BATCH,
            **{f"{k}_us_per_chain_step": median(v) * 1e6 for k, v in runs.items() if v},
            "ratio_sequential_to_floor": median([s / f for s, f in zip(runs["sequential"], runs["floor"])]),
            "ratio_vectorized_to_floor": median([s / f for s, f in zip(runs["vectorized"], runs["floor"])]),
        }
        if runs["devinterp"]:
            best = [min(s, v) for s, v in zip(runs["sequential"], runs["vectorized"])]
            row["speedup_vs_peer"] = median([p / b for p, b in zip(runs["devinterp"], best)])
        rows.append(row)
        print(
            f"[{time.perf_counter() - start:6.1f}s] {row['parameters']} params: "
            + ", ".join(f"{k} {median(v) * 1e6:.0f} µs" for k, v in runs.items() if v),
            flush=True,
        )
    return rows


def chain_sweep(quick: bool, repeats: int, device: str) -> list[dict]:
    chain_counts = [1, 2, 4, 8, 16]
    dln = deep_linear_network([10, 5, 10], 1)
    problems = [("dln-100", dln, linear_regression_data(dln, N))]
    for target in (1_000, 10_000, 100_000):
        model = mlp_with_params(target)
        problems.append((f"mlp-{target // 1000}k", model, regression_problem(model, N)))
    rows = []
    for name, model, data in problems:
        params = num_params(model)
        sampler = PosteriorSampler(model, data, gaussian_nll, batch_size=BATCH, device=device)
        draws = draws_for(params, quick)
        slt_chain_seconds(model, data, 2, 4, "vectorized", device)  # warm up
        start = time.perf_counter()
        for chains in chain_counts:
            d = max(4, draws // max(1, chains // 4)) if params > 20_000 else draws
            times: dict[str, list[float]] = {"sequential": [], "vectorized": []}
            for r in range(repeats):
                for mode in ("sequential", "vectorized") if r % 2 == 0 else ("vectorized", "sequential"):
                    collect()
                    times[mode].append(slt_chain_seconds(model, data, chains, d, mode, device) / (chains * d))
            seq, vec = median(times["sequential"]), median(times["vectorized"])
            winner = "vectorized" if vec < seq else "sequential"
            auto = sampler.choose_mode("auto", chains)
            rows.append(
                {
                    "model": name,
                    "parameters": params,
                    "chains": chains,
                    "draws": d,
                    "work": params * BATCH,
                    "sequential_us_per_chain_step": seq * 1e6,
                    "vectorized_us_per_chain_step": vec * 1e6,
                    "vectorized_speedup": seq / vec,
                    "winner": winner,
                    "auto_picks": auto,
                    "auto_right": auto == winner,
                    "auto_loss": (min(seq, vec) if auto == winner else max(seq, vec)) / min(seq, vec),
                }
            )
        print(f"[{time.perf_counter() - start:6.1f}s] chains sweep {name}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], choices=["parameters", "chains"])
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeats = args.repeats or (1 if args.quick else 2)
    peer, peer_note = peer_status(skip=args.no_peer)
    sizes = [1_000, 10_000, 100_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    payload: dict[str, Any] = {
        "meta": {**environment(args.device), "quick": args.quick, "repeats": repeats},
        "peer_note": peer_note,
        "rule": {
            "VECTORIZE_CPU_MIN_CHAINS": driver.VECTORIZE_CPU_MIN_CHAINS,
            "VECTORIZE_CPU_MAX_WORK": driver.VECTORIZE_CPU_MAX_WORK,
            "VECTORIZE_CUDA_MIN_CHAINS": driver.VECTORIZE_CUDA_MIN_CHAINS,
            "VECTORIZE_CUDA_MEMORY_SHARE": driver.VECTORIZE_CUDA_MEMORY_SHARE,
        },
    }
    if "parameters" not in args.skip:
        payload["parameters"] = parameter_sweep(sizes, args.quick, repeats, args.device, peer)
    if "chains" not in args.skip:
        payload["chains"] = chain_sweep(args.quick, repeats, args.device)
    name = "scaling.json" if args.device == "cpu" else f"scaling_{args.device.replace(':', '')}.json"
    path = Path(args.output) if args.output else RESULTS / name
    write_json(path.name, payload, path.parent)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
