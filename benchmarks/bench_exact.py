"""The exact finite-nβ targets of the benchmark deep linear networks, beside Aoyagi's λ (DESIGN.md §9).

Each network is built as in ``bench_accuracy.py``: ``deep_linear_network(widths, rank)`` (seed 0) is w*,
``linear_regression_data(model, n)`` the data (σ = 1), the loss the Gaussian NLL ``0.5 * sum of squares``
per sample, nβ = n / log n and γ = 1. :func:`slt.oracles.exact_llc_target` runs full-batch MALA chains
until successive doublings agree; the offset (T - λ)/λ is reported beside each.

Run: PYTHONPATH=. python benchmarks/bench_exact.py [--cases 10-5-10/r1 ...] [--max-steps N] [--chains C]
Writes benchmarks/results/exact_targets.json and exact_targets.md (merging with the cases already there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, environment, gaussian_nll, write_json

from slt.oracles import deep_linear_network, dln_lambda, exact_llc_target, linear_regression_data

#: name -> (widths, rank, n); DESIGN.md §9's five networks.
CASES = {
    "10-5-10/r1": ([10, 5, 10], 1, 10_000),
    "10-5-10/r2": ([10, 5, 10], 2, 10_000),
    "5-5-5-5-5/r1": ([5, 5, 5, 5, 5], 1, 10_000),
    "5-10-10-10-10-5/r1": ([5, 10, 10, 10, 10, 5], 1, 10_000),
    "8-8-8-8/r2": ([8, 8, 8, 8], 2, 100_000),
}
#: The values DESIGN.md §9 reports, for comparison.
DESIGN_VALUES = {
    "10-5-10/r1": 20.25,
    "10-5-10/r2": 24.57,
    "5-5-5-5-5/r1": 8.00,
    "5-10-10-10-10-5/r1": 10.49,
    "8-8-8-8/r2": 22.3,
}


def run_case(name: str, *, num_chains: int, max_steps: int, min_steps: int, seed: int) -> dict:
    widths, rank, n = CASES[name]
    model = deep_linear_network(widths, rank)
    data = linear_regression_data(model, n)
    lam, mult = dln_lambda(widths, rank)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = exact_llc_target(
            model,
            data,
            gaussian_nll,
            num_chains=num_chains,
            max_steps=max_steps,
            min_steps=min_steps,
            seed=seed,
        )
    seconds = time.perf_counter() - start
    return {
        "case": name,
        "widths": widths,
        "rank": rank,
        "n": n,
        "lambda": lam,
        "multiplicity": mult,
        "design_value": DESIGN_VALUES[name],
        "exact": result.value,
        "stderr": result.stderr,
        "offset_from_lambda": result.offset_from(lam),
        "converged": result.converged,
        "steps": result.steps,
        "burnin_steps": result.burnin_steps,
        "step_size": result.step_size,
        "acceptance": result.acceptance,
        "num_chains": num_chains,
        "seed": seed,
        "n_beta": result.n_beta,
        "history": [list(h) for h in result.history],
        "seconds": seconds,
        "warnings": [str(w.message) for w in caught],
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Exact finite-nβ targets of the benchmark deep linear networks",
        "",
        "nβ = n/log n, γ = 1, w* the true parameter, Gaussian NLL, σ = 1; full-batch MALA "
        "(`slt.oracles.exact_llc_target`), value over the last half of the draws. Written by "
        "`benchmarks/bench_exact.py`.",
        "",
        "| case | n | λ | exact T | ± se | (T-λ)/λ | DESIGN §9 | conv. | chains | steps | step | acc. | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['n']:.0e} | {r['lambda']:.4g} | {r['exact']:.3f} | {r['stderr']:.3f} | "
            f"{100 * r['offset_from_lambda']:+.1f}% | {r['design_value']} | {r['converged']} | "
            f"{r['num_chains']} | {r['burnin_steps']}+{r['steps']} | {r['step_size']:.3g} | "
            f"{r['acceptance']:.2f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--min-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS / "exact_targets.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: dict[str, dict] = {}
    if args.output.exists():
        rows = {r["case"]: r for r in json.loads(args.output.read_text()).get("rows", [])}
    for name in args.cases:
        row = run_case(
            name, num_chains=args.chains, max_steps=args.max_steps, min_steps=args.min_steps, seed=args.seed
        )
        print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
        rows[name] = row
        ordered = [rows[c] for c in CASES if c in rows]
        write_json(args.output.name, {"environment": environment("cpu"), "rows": ordered}, args.output.parent)
        args.output.with_suffix(".md").write_text(markdown(ordered))


if __name__ == "__main__":
    main()
