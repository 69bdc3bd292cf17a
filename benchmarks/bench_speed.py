"""Speed: slt against devinterp 2.0.1 and against the floor, on the same model, data and settings.

For each model, every repeat runs slt's ``estimate_llc`` and devinterp's ``llc`` with identical
hyperparameters (step size, nβ, localization, chains, draws, batch size, no burn-in), alternating which
goes first, and times the whole call of each. The ratio devinterp / slt is taken per pair and the median
over repeats is reported (pairs share the machine's momentary load, so the ratio is steadier than
either time). The floor is a plain SGLD loop on one fixed batch (``bench_floor.floor_seconds_per_step``):
slt's chain time per step against it, and slt's whole call per step against it.

Models: a ~1k-parameter MLP, a ~10k-parameter MLP, the 100-parameter deep linear network 10→5→10 and
a ~110k-parameter decoder-only transformer (2 layers, d_model 64, 16 tokens, next-token loss).

With ``--compile`` slt runs its chains compiled (``compile=True``; the chain mode stays automatic): the
first (warm-up) call pays for the compilation, which is reported apart (``slt_warmup_seconds``), and the
timed calls reuse the compiled function, as every call after the first in a process does.

Run: PYTHONPATH=. python benchmarks/bench_speed.py [--quick] [--device cuda] [--repeats 5] [--compile]
Writes benchmarks/results/speed.json (or speed_<device>.json for a non-CPU device; ``_compiled`` added
with ``--compile``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_floor import floor_seconds_per_step, gradient_seconds_per_step
from common import (
    LOSSES,
    RESULTS,
    TinyTransformer,
    collect,
    devinterp_llc,
    environment,
    median,
    mlp_with_params,
    num_params,
    peer_status,
    regression_problem,
    synchronize,
    token_problem,
    write_json,
)

import slt
from slt.oracles import deep_linear_network, linear_regression_data


def models(quick: bool) -> list[dict[str, Any]]:
    """The benchmark models with their data, loss and batch size."""
    n = 10_000
    dln = deep_linear_network([10, 5, 10], 1)
    small, medium = mlp_with_params(1_000), mlp_with_params(10_000)
    return [
        {
            "name": "mlp-1k",
            "model": small,
            "data": regression_problem(small, n),
            "loss": "gaussian_nll",
            "batch_size": 256,
        },
        {
            "name": "mlp-10k",
            "model": medium,
            "data": regression_problem(medium, n),
            "loss": "gaussian_nll",
            "batch_size": 256,
        },
        {
            "name": "dln-100",
            "model": dln,
            "data": linear_regression_data(dln, n),
            "loss": "gaussian_nll",
            "batch_size": 256,
        },
        {
            "name": "transformer-110k",
            "model": TinyTransformer(),
            "data": token_problem(2048),
            "loss": "next_token",
            "batch_size": 64,
        },
    ]


def time_slt(case: dict[str, Any], settings: dict[str, Any], device: str) -> tuple[float, float, str]:
    """Whole-call seconds, chain-only seconds and the chain mode of one ``estimate_llc`` call."""
    synchronize(device)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = slt.estimate_llc(
            case["model"],
            case["data"],
            loss_fn=LOSSES[case["loss"]],
            n_beta=settings["n_beta"],
            localization=settings["localization"],
            step_size=settings["step_size"],
            num_chains=settings["num_chains"],
            num_draws=settings["num_draws"],
            num_burnin=0,
            batch_size=case["batch_size"],
            device=device,
            compile=settings.get("compile", False),
            progress=False,
        )
    synchronize(device)
    if settings.get("compile") and result.settings.compile != "compiled":
        raise RuntimeError(f"slt did not run compiled: {result.settings.compile}")
    return time.perf_counter() - start, result.seconds, result.settings.chain_mode


def time_peer(case: dict[str, Any], settings: dict[str, Any], device: str) -> float:
    synchronize(device)
    est = devinterp_llc(
        case["model"],
        case["data"],
        case["loss"],
        step_size=settings["step_size"],
        n_beta=settings["n_beta"],
        localization=settings["localization"],
        num_chains=settings["num_chains"],
        num_draws=settings["num_draws"],
        num_burnin=0,
        batch_size=case["batch_size"],
        device=device,
    )
    synchronize(device)
    return est.seconds


def measure(
    case: dict[str, Any],
    *,
    draws: int,
    chains: int,
    repeats: int,
    device: str,
    peer: bool,
    compile: bool = False,
):
    """Time slt, devinterp (when ``peer``) and the floor on one model; see the module docstring."""
    if draws < 2:
        raise ValueError(f"draws must be at least 2 (a long and a short run are compared), got {draws}")
    n = len(case["data"][0])
    settings = {
        "n_beta": n / math.log(n),
        "localization": 1.0,
        "step_size": 1e-7 if case["loss"] == "next_token" else 1e-6,
        "num_chains": chains,
        "num_draws": draws,
        "compile": compile,
    }
    steps = chains * draws
    # warm up both libraries and the floor (first calls pay for lazy initialization)
    warm = {**settings, "num_draws": 20}
    slt_warmup = time_slt(case, warm, device)[0]
    if peer:
        time_peer(case, warm, device)
    loss = LOSSES[case["loss"]]
    floor_seconds_per_step(case["model"], case["data"], case["batch_size"], 20, 1e-6, 1.0, loss, device)
    # a short run beside each long one separates the per-step cost from the fixed cost of a call
    short = {**settings, "num_draws": max(1, draws // 5)}
    short_steps = chains * short["num_draws"]
    slt_wall, slt_chain, peer_wall, floors, ratios, mode = [], [], [], [], [], ""
    slt_short, peer_short, marginal_ratios = [], [], []
    gradients_eager: list[float] = []
    gradients_compiled: list[float] = []
    gradients_stacked: list[float] = []
    for r in range(repeats):
        order = ("slt", "peer") if r % 2 == 0 else ("peer", "slt")
        times: dict[str, float] = {}
        for who in order:
            collect()
            if who == "slt":
                wall, chain, mode = time_slt(case, settings, device)
                slt_wall.append(wall)
                slt_chain.append(chain)
                times["slt"] = wall
                collect()
                slt_short.append(time_slt(case, short, device)[0])
            elif peer:
                times["peer"] = time_peer(case, settings, device)
                peer_wall.append(times["peer"])
                collect()
                peer_short.append(time_peer(case, short, device))
        if peer:
            marginal_ratios.append(
                (peer_wall[-1] - peer_short[-1]) / max(slt_wall[-1] - slt_short[-1], 1e-12)
            )
        collect()
        floors.append(
            floor_seconds_per_step(
                case["model"],
                case["data"],
                case["batch_size"],
                steps,
                settings["step_size"],
                settings["n_beta"],
                loss,
                device,
            )
        )
        if "peer" in times:
            ratios.append(times["peer"] / times["slt"])
        # the compute floor: one chain's gradient alone, eager and compiled (no update, noise or bookkeeping)
        # (one chain, and the run's chains stacked: the faster per chain is the floor)
        for compiled_gradient, stacked, into in (
            (False, 1, gradients_eager),
            (True, 1, gradients_compiled),
            (True, chains, gradients_stacked),
        ):
            collect()
            into.append(
                gradient_seconds_per_step(
                    case["model"],
                    case["data"],
                    case["batch_size"],
                    max(steps // 4 // stacked, 5),
                    loss,
                    device,
                    compiled=compiled_gradient,
                    chains=stacked,
                )
            )
    fastest_gradient = float(
        np.nanmin([median(gradients_eager), median(gradients_compiled), median(gradients_stacked)])
    )
    row = {
        "model": case["name"],
        "parameters": num_params(case["model"]),
        "batch_size": case["batch_size"],
        "chains": chains,
        "draws": draws,
        "repeats": repeats,
        "slt_chain_mode": mode,
        "slt_compile": compile,
        "slt_warmup_seconds": slt_warmup,
        "slt_seconds": median(slt_wall),
        "slt_us_per_chain_step": median(slt_chain) / steps * 1e6,
        "slt_whole_call_us_per_chain_step": median(slt_wall) / steps * 1e6,
        "floor_us_per_step": median(floors) * 1e6,
        "ratio_slt_chains_to_floor": median([c / steps / f for c, f in zip(slt_chain, floors)]),
        "ratio_slt_call_to_floor": median([w / steps / f for w, f in zip(slt_wall, floors)]),
        "gradient_eager_us": median(gradients_eager) * 1e6,
        "gradient_compiled_us": median(gradients_compiled) * 1e6,
        "gradient_stacked_us": median(gradients_stacked) * 1e6,
        # the fastest of the three (NaN where compilation was not available)
        "gradient_floor_us": fastest_gradient * 1e6,
        "ratio_slt_chains_to_gradient_floor": median(slt_chain) / steps / fastest_gradient,
        "slt_seconds_all": slt_wall,
        "floor_us_all": [f * 1e6 for f in floors],
    }
    extra = max(steps - short_steps, 1)  # draws >= 2 keeps this positive
    slt_marginal = median([(w - s) / extra for w, s in zip(slt_wall, slt_short)])
    row.update(
        slt_marginal_us_per_chain_step=slt_marginal * 1e6,
        slt_fixed_seconds=median([s - (w - s) / extra * short_steps for w, s in zip(slt_wall, slt_short)]),
        short_draws=short["num_draws"],
    )
    best_gradient = row["gradient_floor_us"] * 1e-6
    if peer:
        peer_marginal = median([(w - s) / extra for w, s in zip(peer_wall, peer_short)])
        row.update(
            peer_marginal_us_per_chain_step=peer_marginal * 1e6,
            peer_fixed_seconds=median(
                [s - (w - s) / extra * short_steps for w, s in zip(peer_wall, peer_short)]
            ),
            marginal_speedup_vs_peer=median(marginal_ratios),
            peer_seconds=median(peer_wall),
            # the best any sampler built on slt's compiled gradient could do against the peer: per step,
            # and for the whole call with no fixed cost at all
            ceiling_per_step_vs_peer=peer_marginal / best_gradient,
            ceiling_whole_call_vs_peer=median(peer_wall) / (steps * best_gradient),
            peer_us_per_chain_step=median(peer_wall) / steps * 1e6,
            speedup_vs_peer=median(ratios),
            speedup_vs_peer_all=ratios,
            peer_seconds_all=peer_wall,
        )
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--draws", type=int, default=None, help="draws per chain (default 500, quick 100)")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--models", nargs="*", help="only models whose name contains one of these")
    parser.add_argument("--no-peer", action="store_true", help="skip devinterp even if installed")
    parser.add_argument("--output", default=None)
    parser.add_argument("--compile", action="store_true", help="slt's chains compiled (compile=True)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeats = args.repeats or (3 if args.quick else 5)
    draws = args.draws or (100 if args.quick else 500)
    peer, peer_note = peer_status(skip=args.no_peer)
    rows = []
    for case in models(args.quick):
        if args.models and not any(s in case["name"] for s in args.models):
            continue
        start = time.perf_counter()
        # the transformer costs ~30x more per step than the others: fewer draws and repeats keep the budget
        heavy = case["name"].startswith("transformer")
        row = measure(
            case,
            draws=max(10, draws // 5) if heavy else draws,
            chains=args.chains,
            repeats=max(2, repeats - 2) if heavy else repeats,
            device=args.device,
            peer=peer,
            compile=args.compile,
        )
        rows.append(row)
        vs_peer = f", {row['speedup_vs_peer']:.2f}x devinterp" if peer else ""
        print(
            f"[{time.perf_counter() - start:6.1f}s] {row['model']} ({row['parameters']} params): "
            f"slt {row['slt_us_per_chain_step']:.0f} µs/chain-step, floor {row['floor_us_per_step']:.0f}, "
            f"ratio to floor {row['ratio_slt_chains_to_floor']:.2f}{vs_peer}",
            flush=True,
        )
    payload = {
        "meta": {**environment(args.device), "quick": args.quick, "slt_compile": args.compile},
        "peer_note": peer_note,
        "rows": rows,
    }
    name = "speed" + ("" if args.device == "cpu" else "_" + args.device.replace(":", ""))
    name += "_compiled.json" if args.compile else ".json"
    path = Path(args.output) if args.output else RESULTS / name
    write_json(path.name, payload, path.parent)
    path.with_suffix(".md").write_text(markdown(payload))
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    return payload


def markdown(payload: dict[str, Any]) -> str:
    """The rows of one run as a table: µs per chain-step, the ratios to the floor and to devinterp."""
    meta = payload["meta"]
    compiled = meta.get("slt_compile", False)
    lines = [
        f"# slt {'compiled' if compiled else 'eager'} against devinterp and the floor "
        f"({meta.get('device', 'cpu')}, {meta.get('time', '')})",
        "",
        f"torch {meta.get('torch', '')}; {payload.get('peer_note', '')}. Whole calls of the same work "
        "(chains x draws, no burn-in, the same step, nβ, γ and batch), alternating slt and devinterp; "
        "median over repeats. "
        "Per step: the difference between a long and a short call, per chain-step. Floor: a plain eager SGLD "
        "loop on one fixed batch."
        + (" The first (warm-up) call's seconds include slt's compilation." if compiled else ""),
        "",
        "| model | params | batch | chains x draws | chain mode | warm-up s | slt µs/chain-step | floor µs | "
        "slt / floor | devinterp µs/chain-step | whole call vs devinterp | per step vs devinterp |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| {r['model']} | {r['parameters']} | {r['batch_size']} | {r['chains']} x {r['draws']} | "
            f"{r['slt_chain_mode']} | {r.get('slt_warmup_seconds', float('nan')):.1f} | "
            f"{r['slt_us_per_chain_step']:.0f} | {r['floor_us_per_step']:.0f} | "
            f"{r['ratio_slt_chains_to_floor']:.2f} | {r.get('peer_us_per_chain_step', float('nan')):.0f} | "
            f"{r.get('speedup_vs_peer', float('nan')):.1f}x | "
            f"{r.get('marginal_speedup_vs_peer', float('nan')):.1f}x |"
        )
    if any("gradient_compiled_us" in r for r in payload["rows"]):
        nan = float("nan")
        lines += [
            "",
            "## The compute floor: what a step cannot avoid",
            "",
            "The gradient alone per chain on one fixed batch (forward and backward; no update, noise, "
            "new batch or bookkeeping): eager (`torch.autograd.grad`, one chain) and slt's compiled "
            "gradient, one chain and the run's chains stacked (`vmap`); the fastest of the three is the "
            "compute floor. devinterp's per step is the difference between its long and short calls. The "
            "ceilings are the most any sampler built on that gradient could gain over devinterp here: per "
            "step, devinterp's per step over the floor; whole call, devinterp's call over the floor times "
            "the chain-steps, with no fixed cost at all.",
            "",
            "| model | gradient eager µs | compiled, 1 chain µs | compiled, stacked µs "
            "| slt chains µs/chain-step | slt / compute floor | devinterp per step µs "
            "| per step vs devinterp | ceiling per step | whole call vs devinterp | ceiling whole call |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in payload["rows"]:
            if "gradient_compiled_us" not in r:
                continue
            lines.append(
                f"| {r['model']} | {r['gradient_eager_us']:.0f} | {r['gradient_compiled_us']:.0f} | "
                f"{r.get('gradient_stacked_us', nan):.0f} | "
                f"{r['slt_us_per_chain_step']:.0f} | {r['ratio_slt_chains_to_gradient_floor']:.2f} | "
                f"{r.get('peer_marginal_us_per_chain_step', nan):.0f} | "
                f"{r.get('marginal_speedup_vs_peer', nan):.1f}x | "
                f"{r.get('ceiling_per_step_vs_peer', nan):.1f}x | "
                f"{r.get('speedup_vs_peer', nan):.1f}x | {r.get('ceiling_whole_call_vs_peer', nan):.1f}x |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
