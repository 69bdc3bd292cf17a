"""The GPU table: slt against devinterp 2.0.1 and the floor on CUDA, 1 to 64 chains, with peak memory.

Models: a 10k-parameter MLP (regression, batch 256, n = 10,000) and a 3.4M-parameter decoder-only
transformer (4 layers, d_model 256, vocabulary 512, 64 tokens; next-token loss, batch 32, n = 4,096).

Phase 1, eager. For each model and each chain count (1, 4, 16, 64), one after another in one process:
slt's ``estimate_llc`` in each chain mode (``sequential`` and ``vectorized``; which one
``chain_mode="auto"`` picks is recorded, so the rule can be checked against the winner), devinterp 2.0.1's
``llc`` with the same settings (step, nβ, γ, chains, draws, batch, no burn-in), and the floor: a plain
SGLD loop on one fixed batch (``bench_floor.floor_seconds_per_step``) times the number of chains.
Phase 2, compiled (``compile=True``, ``chain_mode="auto"``) at a few chain counts: the first call (with
compilation) and a second one.

Each cell is timed once (a GPU lease is short), after a warm-up of every library on each model. Reported:
whole-call seconds, slt's chain seconds (``LLCResult.seconds``), µs per chain-step, and the peak CUDA memory
a call allocated above what was allocated before it (``torch.cuda.max_memory_allocated``). A time budget
(``--max-seconds``) skips the cells that would not fit and says so; the results are written after every
cell, so a run cut short keeps what it measured.

    python benchmarks/bench_gpu.py --out benchmarks/results      # results/gpu.{json,md}
    python benchmarks/bench_gpu.py --device cpu --quick          # a dry run of the script on CPU
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
    LOSSES,
    RESULTS,
    TinyTransformer,
    collect,
    devinterp_llc,
    environment,
    mlp_with_params,
    num_params,
    peer_status,
    regression_problem,
    token_problem,
    write_json,
)

import slt
from slt.sampling import driver

CHAINS = (1, 4, 16, 64)
COMPILED_CHAINS = (4, 64)


def models(quick: bool) -> list[dict[str, Any]]:
    """The two models of the table, with their data, loss, batch and draws per chain."""
    mlp = mlp_with_params(10_000)
    if quick:
        transformer = TinyTransformer(vocab=64, d_model=32, heads=4, layers=1, ctx=16)
        tokens = token_problem(512, vocab=64, ctx=16)
    else:
        torch.manual_seed(0)
        transformer = TinyTransformer(vocab=512, d_model=256, heads=8, layers=4, ctx=64)
        tokens = token_problem(4096, vocab=512, ctx=64)
    return [
        {
            "name": "mlp-10k",
            "model": mlp,
            "data": regression_problem(mlp, 10_000),
            "loss": "gaussian_nll",
            "batch_size": 256,
            "step_size": 1e-6,
            "draws": 40 if quick else 300,
        },
        {
            "name": "transformer-3.4M" if not quick else "transformer-quick",
            "model": transformer,
            "data": tokens,
            "loss": "next_token",
            "batch_size": 32,
            "step_size": 1e-7,
            "draws": 20 if quick else 100,
        },
    ]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Peak:
    """Peak CUDA memory allocated inside the block, above what was allocated when it began (MiB)."""

    def __init__(self, device: str):
        self.device = device
        self.mib = float("nan")

    def __enter__(self) -> Peak:
        if self.device.startswith("cuda"):
            sync(self.device)
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.startswith("cuda"):
            sync(self.device)
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20


def run_slt(case: dict, chains: int, draws: int, device: str, **options: Any) -> dict[str, Any]:
    n = len(case["data"][0])
    collect()
    with Peak(device) as peak, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        result = slt.estimate_llc(
            case["model"],
            case["data"],
            loss_fn=LOSSES[case["loss"]],
            n_beta=n / math.log(n),
            localization=1.0,
            step_size=case["step_size"],
            num_chains=chains,
            num_draws=draws,
            num_burnin=0,
            batch_size=case["batch_size"],
            device=device,
            progress=False,
            **options,
        )
        sync(device)
        wall = time.perf_counter() - start
    steps = chains * draws
    return {
        "seconds": wall,
        "chain_seconds": result.seconds,
        "us_per_chain_step": result.seconds / steps * 1e6,
        "call_us_per_chain_step": wall / steps * 1e6,
        "chain_mode": result.settings.chain_mode,
        "compile": result.settings.compile,
        "llc": result.mean,
        "peak_mib": peak.mib,
    }


def run_peer(case: dict, chains: int, draws: int, device: str) -> dict[str, Any]:
    n = len(case["data"][0])
    collect()
    with Peak(device) as peak:
        estimate = devinterp_llc(
            case["model"],
            case["data"],
            case["loss"],
            step_size=case["step_size"],
            n_beta=n / math.log(n),
            localization=1.0,
            num_chains=chains,
            num_draws=draws,
            num_burnin=0,
            batch_size=case["batch_size"],
            device=device,
        )
    steps = chains * draws
    return {
        "seconds": estimate.seconds,
        "call_us_per_chain_step": estimate.seconds / steps * 1e6,
        "llc": estimate.mean,
        "peak_mib": peak.mib,
    }


def run_floor(case: dict, chains: int, draws: int, device: str) -> dict[str, Any]:
    n = len(case["data"][0])
    collect()
    with Peak(device) as peak:
        per_step = floor_seconds_per_step(
            case["model"],
            case["data"],
            case["batch_size"],
            min(chains * draws, 2000),
            case["step_size"],
            n / math.log(n),
            LOSSES[case["loss"]],
            device,
        )
    return {"us_per_chain_step": per_step * 1e6, "seconds": per_step * chains * draws, "peak_mib": peak.mib}


class Budget:
    """Skips a cell whose predicted seconds would not fit in what is left of ``--max-seconds``."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.end - time.perf_counter()

    def allows(self, what: str, predicted: float, reserve: float = 0.0) -> bool:
        """Whether ``predicted`` seconds fit, keeping ``reserve`` seconds for later cells."""
        if predicted < self.left() - reserve:
            return True
        self.skipped.append(
            f"{what} (predicted {predicted:.0f} s, {max(self.left() - reserve, 0):.0f} s left)"
        )
        print(f"skipped: {self.skipped[-1]}", flush=True)
        return False


def predicted(previous: dict[str, Any] | None, chains: int) -> float:
    """Seconds of a cell from the same kind of cell at fewer chains (linear in chains, a safe upper bound)."""
    if previous is None:
        return 0.0
    return previous["seconds"] * chains / previous["chains"] * 1.2


def markdown(payload: dict[str, Any]) -> str:
    meta = payload["meta"]
    lines = [
        f"# slt on {meta.get('gpu', meta['device'])}: against devinterp 2.0.1 and the floor",
        "",
        f"torch {meta['torch']}, {meta['peer']}. One timing per cell, after a warm-up. µs per chain-step: "
        "slt's chain time (sampling only) and whole call; devinterp's whole call; the floor's plain "
        "SGLD loop. Peak: CUDA memory a call allocated above what was allocated before it, MiB.",
        "",
        "| model | params | chains | draws | slt sequential | slt vectorized | auto picks | slt call (auto) "
        "| devinterp call | floor | devinterp / slt (calls) | slt / floor | peak slt MiB "
        "| peak devinterp MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["eager"]:
        seq, vec = row.get("sequential", {}), row.get("vectorized", {})
        auto = row.get(row.get("auto_mode", ""), {})
        peer, floor = row.get("peer", {}), row.get("floor", {})
        nan = float("nan")
        speedup = peer.get("seconds", nan) / auto.get("seconds", nan) if auto else nan
        to_floor = auto.get("us_per_chain_step", nan) / floor.get("us_per_chain_step", nan) if auto else nan
        lines.append(
            f"| {row['model']} | {row['parameters']:,} | {row['chains']} | {row['draws']} "
            f"| {seq.get('us_per_chain_step', nan):.0f} | {vec.get('us_per_chain_step', nan):.0f} "
            f"| {row.get('auto_mode', '')} | {auto.get('call_us_per_chain_step', nan):.0f} "
            f"| {peer.get('call_us_per_chain_step', nan):.0f} | {floor.get('us_per_chain_step', nan):.0f} "
            f"| {speedup:.2f} | {to_floor:.2f} | {auto.get('peak_mib', nan):.0f} "
            f"| {peer.get('peak_mib', nan):.0f} |"
        )
    if payload["compiled"]:
        lines += [
            "",
            '## Compiled (`compile=True`, `chain_mode="auto"`)',
            "",
            "| model | chains | mode | compile | first call s | second call s | µs per chain-step | eager µs "
            "(same mode) | ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in payload["compiled"]:
            second = row.get("second", {})
            nan = float("nan")
            eager = row.get("eager_us_per_chain_step", nan)
            step = second.get("us_per_chain_step", nan)
            lines.append(
                f"| {row['model']} | {row['chains']} | {second.get('chain_mode', '')} "
                f"| {second.get('compile', row.get('error', ''))} "
                f"| {row.get('first', {}).get('seconds', nan):.1f} "
                f"| {second.get('seconds', nan):.2f} | {step:.0f} | {eager:.0f} | {step / eager:.2f} |"
            )
    if payload["skipped"]:
        lines += ["", "Skipped for the time budget: " + "; ".join(payload["skipped"]) + "."]
    if payload["errors"]:
        lines += ["", "Errors: " + "; ".join(payload["errors"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny models and few draws: a dry run")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument(
        "--compiled-share", type=float, default=0.35, help="share of the budget kept for phase 2"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--models", nargs="*", help="only these models (by name)")
    parser.add_argument("--chains", type=int, nargs="*", default=list(CHAINS))
    parser.add_argument("--compiled-chains", type=int, nargs="*", default=list(COMPILED_CHAINS))
    parser.add_argument("--name", default=None, help="results file name (default gpu)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budget = Budget(args.max_seconds)
    peer, _ = peer_status(args.no_peer)
    name = args.name or ("gpu" if args.device.startswith("cuda") else f"gpu_dryrun_{args.device}")
    payload: dict[str, Any] = {
        "meta": {
            **environment(args.device),
            "quick": args.quick,
            "vectorize_cuda_memory_share": driver.VECTORIZE_CUDA_MEMORY_SHARE,
        },
        "eager": [],
        "compiled": [],
        "skipped": budget.skipped,
        "errors": [],
    }

    def save() -> None:
        write_json(f"{name}.json", payload, args.out)
        (args.out / f"{name}.md").write_text(markdown(payload))

    cases = [c for c in models(args.quick) if not args.models or c["name"] in args.models]
    reserve = args.compiled_share * args.max_seconds  # kept for the compiled phase
    for case in cases:
        case["model"].to(args.device)
        case["data"] = tuple(t.to(args.device) for t in case["data"])
        start = time.perf_counter()
        for mode in ("sequential", "vectorized"):
            run_slt(case, 4, 5, args.device, chain_mode=mode)
        if peer:
            try:
                run_peer(case, 2, 5, args.device)
            except Exception as exc:  # a peer that fails on this machine leaves the slt columns intact
                payload["errors"].append(f"devinterp on {case['name']}: {type(exc).__name__}: {exc}")
                peer = False
        run_floor(case, 1, 20, args.device)
        print(f"{case['name']}: warm-up {time.perf_counter() - start:.1f} s", flush=True)

    for case in cases:
        previous: dict[str, dict | None] = {
            "sequential": None,
            "vectorized": None,
            "peer": None,
            "floor": None,
        }
        for chains in args.chains:
            draws = case["draws"]
            row: dict[str, Any] = {
                "model": case["name"],
                "parameters": num_params(case["model"]),
                "batch_size": case["batch_size"],
                "chains": chains,
                "draws": draws,
            }
            for mode in ("sequential", "vectorized"):
                if budget.allows(
                    f"{case['name']} {mode} x{chains}", predicted(previous[mode], chains), reserve
                ):
                    try:
                        row[mode] = run_slt(case, chains, draws, args.device, chain_mode=mode)
                        previous[mode] = {**row[mode], "chains": chains}
                    except Exception as exc:  # out of memory, say: record it and go on
                        payload["errors"].append(
                            f"slt {mode} {case['name']} x{chains}: {type(exc).__name__}: {exc}"
                        )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sampler = slt.sampling.PosteriorSampler(
                    case["model"],
                    case["data"],
                    LOSSES[case["loss"]],
                    batch_size=case["batch_size"],
                    device=args.device,
                )
                row["auto_mode"] = sampler.choose_mode("auto", chains)
            if peer and budget.allows(
                f"devinterp {case['name']} x{chains}", predicted(previous["peer"], chains), reserve
            ):
                try:
                    row["peer"] = run_peer(case, chains, draws, args.device)
                    previous["peer"] = {**row["peer"], "chains": chains}
                except Exception as exc:
                    payload["errors"].append(
                        f"devinterp {case['name']} x{chains}: {type(exc).__name__}: {exc}"
                    )
            if budget.allows(f"floor {case['name']} x{chains}", 0.0, reserve):
                row["floor"] = run_floor(case, chains, draws, args.device)
            payload["eager"].append(row)
            save()
            print(row, flush=True)

    for case in cases:
        for chains in args.compiled_chains:
            eager_rows = [r for r in payload["eager"] if r["model"] == case["name"] and r["chains"] == chains]
            first_guess = 60.0 + (
                eager_rows[0].get(eager_rows[0].get("auto_mode", ""), {}).get("seconds", 0.0)
                if eager_rows
                else 0.0
            )
            if not budget.allows(f"compiled {case['name']} x{chains}", first_guess):
                continue
            row = {"model": case["name"], "chains": chains}
            try:
                row["first"] = run_slt(case, chains, case["draws"], args.device, compile=True)
                row["second"] = run_slt(case, chains, case["draws"], args.device, compile=True)
                mode = row["second"]["chain_mode"]
                if eager_rows and mode in eager_rows[0]:
                    row["eager_us_per_chain_step"] = eager_rows[0][mode]["us_per_chain_step"]
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                payload["errors"].append(f"compiled {case['name']} x{chains}: {row['error']}")
            payload["compiled"].append(row)
            save()
            print(row, flush=True)
    save()
    return payload


if __name__ == "__main__":
    main()
