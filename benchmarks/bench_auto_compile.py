"""``estimate_llc``'s default compile rule (``compile=None``) against eager chains (``compile=False``).

The default compiles only long runs whose compiled chains would be stacked: the automatic length's first
segment of at least ``AUTO_COMPILE_MIN_STEPS`` steps per chain switches to the compiled gradient (see
``slt.estimators.length``). Each case runs ``slt.estimate_llc`` with no tuning argument twice, same seed,
``compile=False`` first and then the default, in one process: the first compilation of the process (it
imports TorchInductor) falls on the first case that switches, as it would for a user. Reported: wall
seconds of each, their ratio, both estimates (and against the exact target where one is known), and the
compile status and chain mode the default ended with. Where the default stacks chains that eager runs one
after another, the two draw different noise and agree only within their standard errors.

    PYTHONPATH=. python benchmarks/bench_auto_compile.py [--cases nc reg dln nets] [--seed 0]

Writes ``results/auto_compile.json`` and ``results/auto_compile.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from bench_defaults import dln_cases, net_cases, normal_crossing_cases, regression_cases, run
from common import RESULTS, environment, write_json

from slt.estimators.length import AUTO_COMPILE_MIN_STEPS

CASES = {"nc": normal_crossing_cases, "reg": regression_cases, "dln": dln_cases, "nets": net_cases}


def compare(case: dict[str, Any], seed: int) -> dict[str, Any]:
    if case["exact"] is None:
        case["exact"] = math.nan  # no exact target here: the comparison is eager against the default
    eager = run(case, seed, estimate_kwargs={"compile": False})
    default = run(case, seed)
    row: dict[str, Any] = dict(case=case["name"], seed=seed, exact=case["exact"])
    for label, r in (("eager", eager), ("default", default)):
        if "raised" in r:
            row[label] = dict(raised=r["raised"])
            continue
        row[label] = {k: r[k] for k in ("llc", "stderr", "seconds", "steps_per_chain", "warnings")}
        row[label]["error_vs_exact"] = r["error_vs_exact"]
    if "raised" not in eager and "raised" not in default:
        row["ratio"] = default["seconds"] / eager["seconds"]
        row["difference_in_stderrs"] = (default["llc"] - eager["llc"]) / math.hypot(
            default["stderr"], eager["stderr"]
        )
        row["compile"] = default.get("compile")
        row["chain_mode"] = (eager.get("chain_mode"), default.get("chain_mode"))
    return row


def markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = [
        "# The default compile rule against eager chains",
        "",
        f"torch {env.get('torch')}, {env.get('device')}, one torch thread; `estimate_llc` with no tuning "
        "argument, `compile=False` then the default (`compile=None`: compiled from the first segment of "
        f"{AUTO_COMPILE_MIN_STEPS:,} steps per chain where the compiled chains stack), same seed, one "
        "process (the first switch pays the process's first compilation).",
        "",
        "| case | steps per chain | eager s | default s | ratio | default's compile "
        "| chain mode (eager → default) | λ̂ eager | λ̂ default | difference / stderr | exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        e, d = row["eager"], row["default"]
        if "raised" in e or "raised" in d:
            lines.append(f"| {row['case']} | raised: {e.get('raised') or d.get('raised')} |" + " |" * 9)
            continue
        exact = row["exact"]
        lines.append(
            f"| {row['case']} | {e['steps_per_chain']:,} / {d['steps_per_chain']:,} | {e['seconds']:.1f} | "
            f"{d['seconds']:.1f} | {row['ratio']:.2f} | {row['compile']} | {row['chain_mode'][0]} → "
            f"{row['chain_mode'][1]} | {e['llc']:.4g} ± {e['stderr']:.2g} | "
            f"{d['llc']:.4g} ± {d['stderr']:.2g} | "
            f"{row['difference_in_stderrs']:+.1f} | {'—' if math.isnan(exact) else f'{exact:.4g}'} |"
        )
    eager_total = sum(r["eager"]["seconds"] for r in rows if "seconds" in r["eager"])
    default_total = sum(r["default"]["seconds"] for r in rows if "seconds" in r["default"])
    switched = [r for r in rows if str(r.get("compile", "")).startswith("compiled")]
    lines += [
        "",
        f"All cases: {eager_total:.0f} s eager, {default_total:.0f} s with the default "
        f"({default_total / eager_total:.2f}×); {len(switched)} of {len(rows)} switched to compiled chains.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["nc", "reg", "dln", "nets"], choices=sorted(CASES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this text")
    parser.add_argument("--name", default="auto_compile")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    env = environment("cpu")
    rows = []
    for family in args.cases:
        for case in CASES[family]():
            if args.only and args.only not in case["name"]:
                continue
            if "transformer" in case["name"]:
                continue  # minutes per run twice over; the speed benchmarks cover transformers
            row = compare(case, args.seed)
            print(row, flush=True)
            rows.append(row)
    payload = dict(environment=env, auto_compile_min_steps=AUTO_COMPILE_MIN_STEPS, rows=rows)
    write_json(RESULTS / f"{args.name}.json", payload)
    (RESULTS / f"{args.name}.md").write_text(markdown(rows, env))
    return payload


if __name__ == "__main__":
    main()
