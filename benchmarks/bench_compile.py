"""Compiled against eager chains: per chain-step cost, the compilation's warm-up, and a whole sweep.

Part 1, per chain-step. ``PosteriorSampler.run`` (everything slt does per step: minibatch, forward,
backward, SGLD update, the loss recorded) with ``compile=False`` and ``compile=True``, sequential and
vectorized, 4 chains of 500 steps, alternating in one process, median of ``--repeats``. The models: the
grokking example's MLP (4,481 parameters, cross-entropy, batch 256), a 10k-parameter MLP and a deep linear
network of 100 parameters (MSE, batch 256), and a 110k-parameter transformer (next-token loss, batch 32).
Warm-up: the first compiled run's extra seconds over a warm one (the process's first compilation also
imports TorchInductor).

Part 2, a sweep. The grokking example's model trained by the example's ``train`` (seed 0, weight decay 1,
10,000 steps, 16 checkpoints), then ``slt.analyze_checkpoints`` with its defaults (slt chooses γ, the step
and the lengths once, at probe checkpoints), with and without ``compile=True``, each in a fresh store:
seconds per checkpoint (the choice included) and the largest difference of λ̂ in standard errors.

    python benchmarks/bench_compile.py                 # about 15 min on one core; results/compile.{json,md}
    python benchmarks/bench_compile.py --device cuda   # the same on a GPU: results/compile_cuda.{json,md}
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import slt
from benchmarks.common import (
    RESULTS,
    TinyTransformer,
    environment,
    median,
    mlp_with_params,
    next_token_loss,
    num_params,
    regression_problem,
    synchronize,
    token_problem,
    write_json,
)
from slt.oracles import deep_linear_network, linear_regression_data
from slt.sampling import PosteriorSampler
from slt.sampling.compiled import clear_compiled_cache

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "grokking"))
import grokking as g

CHAINS = 4


def problems() -> list[tuple[str, nn.Module, object, object, int]]:
    torch.manual_seed(0)
    (x, y), _ = g.modular_addition(seed=0)
    grok = g.ModularMLP()
    mlp = mlp_with_params(10_000)
    dln = deep_linear_network([10, 5, 10], rank=1, seed=0)
    transformer = TinyTransformer()
    return [
        ("grokking MLP", grok, (x, y), "cross_entropy", 256),
        ("mlp-10k", mlp, regression_problem(mlp, 4096), "mse", 256),
        ("dln-100", dln, linear_regression_data(dln, 4096), "mse", 256),
        ("transformer-110k", transformer, token_problem(1024), next_token_loss, 32),
    ]


DEVICE = "cpu"


def seconds(model, data, loss, batch, compile: bool, mode: str, steps: int) -> tuple[float, str]:
    sampler = PosteriorSampler(model, data, loss, batch_size=batch, compile=compile, device=DEVICE)
    synchronize(DEVICE)
    start = time.perf_counter()
    run = sampler.run(
        n_beta=100.0,
        localization=100.0,
        step_size=1e-6,
        num_chains=CHAINS,
        num_draws=steps,
        chain_mode=mode,
        seed=1,
    )
    synchronize(DEVICE)
    return time.perf_counter() - start, run.compile


def per_step(repeats: int, steps: int) -> list[dict]:
    rows = []
    for name, model, data, loss, batch in problems():
        clear_compiled_cache()
        row: dict = {"model": name, "parameters": num_params(model), "batch": batch, "chains": CHAINS}
        for mode in ("sequential", "vectorized"):
            first, status = seconds(model, data, loss, batch, True, mode, steps)
            eager, compiled = [], []
            for _ in range(repeats):
                eager.append(seconds(model, data, loss, batch, False, mode, steps)[0])
                compiled.append(seconds(model, data, loss, batch, True, mode, steps)[0])
            chain_steps = CHAINS * steps
            row[f"{mode}_eager_us"] = median(eager) / chain_steps * 1e6
            row[f"{mode}_compiled_us"] = median(compiled) / chain_steps * 1e6
            row[f"{mode}_ratio"] = median(compiled) / median(eager)
            row[f"{mode}_warmup_s"] = first - median(compiled)
            row[f"{mode}_status"] = status
        print(row, flush=True)
        rows.append(row)
    return rows


def sweep(folder: Path) -> dict:
    start = time.perf_counter()
    record = g.train(
        folder / "run", seed=0, weight_decay=1.0, steps=g.checkpoint_steps(10_000, num_log=8, num_linear=8)
    )
    train_seconds = time.perf_counter() - start
    (x, y), _ = g.modular_addition(seed=0)
    out: dict = {"checkpoints": len(record.steps), "train_seconds": train_seconds}
    curves = {}
    for compile in (False, True):
        clear_compiled_cache()
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trajectory = slt.analyze_checkpoints(
                folder / "run",
                g.ModularMLP,
                (x, y),
                loss_fn="cross_entropy",
                store=folder / f"compile_{compile}.sqlite",
                progress=False,
                compile=compile,
                device=DEVICE,
            )
        elapsed = time.perf_counter() - start
        key = "compiled" if compile else "eager"
        curves[key] = trajectory
        out[f"{key}_seconds_per_checkpoint"] = elapsed / len(record.steps)
        out[f"{key}_chosen"] = trajectory.settings.get("reference", {}).get("chosen")
        out[f"{key}_warnings"] = sorted({type(w.message).__name__ for w in caught})
        print(key, out[f"{key}_seconds_per_checkpoint"], flush=True)
    a, b = curves["eager"], curves["compiled"]
    se = np.sqrt(np.asarray(a.llc_stderr) ** 2 + np.asarray(b.llc_stderr) ** 2)
    diff = np.abs(np.asarray(a.llc_mean) - np.asarray(b.llc_mean))
    out["max_llc_difference_in_stderr"] = float(np.max(diff / se))
    out["max_llc_relative_difference"] = float(np.max(diff / np.abs(np.asarray(a.llc_mean))))
    out["llc_eager"] = [float(v) for v in a.llc_mean]
    out["llc_compiled"] = [float(v) for v in b.llc_mean]
    out["steps"] = [int(s) for s in a.steps]
    return out


def markdown(payload: dict) -> str:
    lines = [
        f"# Compiled against eager chains (`compile=True`), {payload['meta']['device']}, one torch thread",
        "",
        f"torch {payload['meta']['torch']}, {CHAINS} chains; µs per chain-step (median of "
        f"{payload['repeats']} alternating repeats); warm-up: the first compiled run's extra seconds.",
        "",
        "| model | params | batch | sequential eager | compiled | ratio | warm-up s | vectorized eager "
        "| compiled | ratio | warm-up s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["per_step"]:
        cells = [r["model"], r["parameters"], r["batch"]]
        for mode in ("sequential", "vectorized"):
            cells += [
                f"{r[mode + '_eager_us']:.0f}",
                f"{r[mode + '_compiled_us']:.0f}",
                f"{r[mode + '_ratio']:.2f}",
                f"{r[mode + '_warmup_s']:.1f}",
            ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    s = payload.get("sweep")
    if s:
        lines += [
            "",
            "## `analyze_checkpoints` with defaults on the grokking example's run "
            f"({s['checkpoints']} checkpoints)",
            "",
            "| | s / checkpoint (choice included) | chosen |",
            "|---|---|---|",
            f"| eager | {s['eager_seconds_per_checkpoint']:.2f} | {s['eager_chosen']} |",
            f"| compiled | {s['compiled_seconds_per_checkpoint']:.2f} | {s['compiled_chosen']} |",
            "",
            "Largest difference of λ̂ between the two: "
            f"{s['max_llc_difference_in_stderr']:.2g} standard errors "
            f"({s['max_llc_relative_difference']:.2g} relative).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--device", default="cpu", help="torch device (cuda for the GPU table)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    global DEVICE
    DEVICE = args.device
    rows = per_step(args.repeats, args.steps)
    payload = {"meta": environment(DEVICE), "repeats": args.repeats, "per_step": rows}
    if not args.no_sweep:
        with tempfile.TemporaryDirectory() as tmp:
            payload["sweep"] = sweep(Path(tmp))
    name = "compile" if DEVICE == "cpu" else f"compile_{DEVICE.split(':')[0]}"
    write_json(f"{name}.json", payload)
    (RESULTS / f"{name}.md").write_text(markdown(payload))
    print(markdown(payload))


if __name__ == "__main__":
    main()
