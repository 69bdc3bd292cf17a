"""A given step some times the automatic one: the predicted bias against the measured error.

Each case runs ``slt.estimate_llc`` once with no tuning argument (its automatic step ε₀ and length), then
with ``step_size = m·ε₀`` for m = 2, 3, 4, 6 (automatic length, the same seed), and records the predicted
step-size bias (``checks.bias_indicator``), the error against the exact finite-nβ target, the relative
standard error and the warnings. It measures where ``MAX_BIAS_INDICATOR`` (the threshold of the
``StepSizeWarning``) should sit: low enough that a step whose estimate is visibly inflated warns, high
enough that the automatic step (aimed at 5%) never does.

Exact targets: closed form (regression), quadrature (normal crossings), and for the two trained networks
the full-batch MALA values of ``results/defaults_nets.json`` (``slt.oracles.exact_llc_target`` at the same
nβ, γ and data), computed here when that file lacks them.

    PYTHONPATH=. python benchmarks/bench_step_multiples.py [--only 'w1²w2^2'] [--multiples 2 3 4 6]

Writes ``results/step_multiples.{json,md}`` (about 6 minutes on one core).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_defaults import net_cases, normal_crossing_cases, regression_cases
from common import RESULTS, environment, gaussian_nll, write_json

import slt
from slt.estimators.llc_guards import MAX_BIAS_INDICATOR
from slt.oracles import exact_llc_target

#: The StepSizeWarning's threshold before this benchmark (0.5), for comparison.
FORMER_THRESHOLD = 0.5


def cases() -> list[dict[str, Any]]:
    stored = RESULTS / "defaults_nets.json"
    known = {}
    if stored.exists():
        known = {r["case"]: r["exact"] for r in json.loads(stored.read_text())["rows"] if "exact" in r}
    nets = [dict(c, exact=known.get(c["name"])) for c in net_cases()[:2]]  # classifier, tanh MLP
    return regression_cases()[1:2] + normal_crossing_cases() + nets


def run_case(case: dict[str, Any], multiples: list[float], seed: int = 0) -> list[dict[str, Any]]:
    rows, base = [], None
    for m in [1.0, *(m for m in multiples if m != 1)]:  # the automatic step first: it sets ε₀
        model, data = case["make"]()
        loss_fn = case.get("loss", gaussian_nll)
        kwargs = {} if base is None else dict(step_size=base * m)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = slt.estimate_llc(model, data, loss_fn=loss_fn, seed=seed, progress=False, **kwargs)
            except Exception as exc:
                rows.append(dict(case=case["name"], multiple=m, raised=f"{type(exc).__name__}: {exc}"[:200]))
                if base is None:
                    return rows
                continue
        if base is None:
            base = result.settings.step_size
        if case["exact"] is None:
            target = exact_llc_target(model, data, loss_fn, n_beta=result.settings.n_beta, num_chains=16)
            case["exact"] = target.value
        rows.append(
            dict(
                case=case["name"],
                multiple=m,
                step_size=result.settings.step_size,
                predicted_bias=result.checks.bias_indicator,
                llc=result.mean,
                stderr=result.stderr,
                exact=case["exact"],
                error_vs_exact=result.mean / case["exact"] - 1,
                simulated_time=result.settings.simulated_time,
                seconds=time.perf_counter() - start,
                warnings=sorted({w.category.__name__ for w in caught}),
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], threshold: float = MAX_BIAS_INDICATOR) -> str:
    lines = [
        "| case | step × automatic | step | predicted bias | λ̂ | exact | vs exact | warnings |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "raised" in r:
            lines.append(f"| {r['case']} | {r['multiple']:g} | – | – | raised: {r['raised'][:60]} | | | |")
            continue
        lines.append(
            f"| {r['case']} | {r['multiple']:g} | {r['step_size']:.3g} | {r['predicted_bias']:.0%} | "
            f"{r['llc']:.4g} ± {_float(r['stderr']):.2g} | {r['exact']:.4g} | {r['error_vs_exact']:+.1%} | "
            f"{', '.join(r['warnings']) or '—'} |"
        )
    done = [r for r in rows if "raised" not in r]
    lines.append("")
    for level in dict.fromkeys([threshold, FORMER_THRESHOLD]):
        flagged = [r for r in done if r["predicted_bias"] > level]
        missed = [r for r in done if r["predicted_bias"] <= level and abs(r["error_vs_exact"]) > 0.1]
        false_alarms = [r for r in flagged if abs(r["error_vs_exact"]) <= 0.05]
        name = "the warning's threshold" if level == threshold else "the former threshold"
        lines.append(
            f"At {level:.0%} ({name}): {len(flagged)} of {len(done)} runs above it, {len(false_alarms)} of "
            f"those within 5% of the exact target (false alarms); {len(missed)} runs at or below it more "
            "than 10% off (misses)."
        )
        lines.append("")
    return "\n".join(lines) + "\n"


def _float(value: float | None) -> float:
    """A number read back from JSON, where NaN was written as null."""
    return float("nan") if value is None else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="")
    parser.add_argument("--multiples", type=float, nargs="+", default=[2, 3, 4, 6])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for case in cases():
        if args.only in case["name"]:
            rows += run_case(case, args.multiples)
            write_json("step_multiples.json", dict(environment=environment("cpu"), rows=rows))
            (RESULTS / "step_multiples.md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
