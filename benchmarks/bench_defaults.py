"""The defaults against two yardsticks: the exact finite-nβ target and the asymptotic λ.

Every row is ``slt.estimate_llc(model, data, loss_fn=gaussian_nll, seed=seed)`` with **no tuning
argument**: the pilot's step (re-sized as the chains spread), the automatic length (doublings until two
agree and ε·T ≥ 0.5/γ, budget 100,000 steps per chain), four chains (16 for tiny models), SGLD with its
default Leimkuhler-Matthews noise (``--euler``: the Euler step instead, devinterp's update, for
comparison; ``--sampler sgnht``: another registered sampler with its default options). Each estimate
is scored against

* the exact target nβ(E_w[L_n(w)] − L_n(w*)) at the same nβ, γ and data (what the estimator aims at):
  closed form for the regression, quadrature for the normal crossings, and for the deep linear networks
  the full-batch Metropolis-adjusted values of DESIGN.md §9 (``results/exact_targets.json`` from
  ``bench_exact.py`` when it holds the case);
* Aoyagi's / the normal crossing's λ, whose offset from the exact target (finite β, w* not a minimizer
  of L_n) is reported separately.

The ``nets`` cases are trained networks outside the oracle families (a classifier near zero
cross-entropy, a tanh regression MLP, a tiny transformer): no λ is known, and their exact target comes
from ``slt.oracles.exact_llc_target`` (full-batch MALA with a convergence check) at the nβ the first run
used, once per case.

It also reports whether the 95% interval (``LLCResult.interval``) covers the exact target, the gradient
evaluations (chains and pilot) and the warnings.

    PYTHONPATH=. python benchmarks/bench_defaults.py [--seeds 0 1] [--cases dln dln1e5 nc reg nets] [--euler]
        [--sampler sgnht] [--only 'n=5000'] [--precision 0.025] [--target-bias 0.025] [--batch-size 4096]
        [--max-steps 200000] [--batch-per-n-beta 4]

Writes ``results/defaults.json`` and ``results/defaults.md`` (``--name`` for another name).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_accuracy import _pilot_evals
from common import RESULTS, environment, gaussian_nll, write_json

import slt
from slt.oracles import (
    NormalCrossing,
    deep_linear_network,
    dln_lambda,
    exact_llc_target,
    linear_regression_data,
    linear_regression_target,
    normal_crossing_lambda,
    normal_crossing_target,
    regression_data,
)

#: Exact targets of the benchmark's deep linear networks (n = 1e4, γ = 1, nβ = n/log n, w* the true
#: parameter, data from ``linear_regression_data``), full-batch MALA, DESIGN.md §9.
DESIGN_DLN_TARGETS = {
    ((10, 5, 10), 1): 20.25,
    ((10, 5, 10), 2): 24.57,
    ((5, 5, 5, 5, 5), 1): 8.00,
    ((5, 10, 10, 10, 10, 5), 1): 10.49,
}


def dln_cases() -> list[dict[str, Any]]:
    stored = RESULTS / "exact_targets.json"
    measured = {}
    if stored.exists():
        for row in json.loads(stored.read_text()).get("rows", []):
            if "widths" in row and row.get("converged"):  # an unconverged reference is no yardstick
                measured[(tuple(row["widths"]), row["rank"])] = row["exact"]
    cases = []
    for (widths, rank), design_value in DESIGN_DLN_TARGETS.items():
        exact = measured.get((widths, rank), design_value)
        source = "bench_exact.py" if (widths, rank) in measured else "DESIGN.md §9"

        def make(widths=widths, rank=rank):
            model = deep_linear_network(list(widths), rank)
            return model, linear_regression_data(model, 10_000)

        cases.append(
            dict(
                name=f"dln {'-'.join(map(str, widths))} r={rank} n=1e4",
                family="dln",
                make=make,
                exact=exact,
                exact_source=source,
                lam=dln_lambda(list(widths), rank)[0],
            )
        )
    return cases


def dln_large_cases() -> list[dict[str, Any]]:
    """DESIGN.md §9's n = 1e5 network (8-8-8-8, rank 2; its exact target, about 22.3, is DESIGN's)."""

    def make() -> tuple[nn.Module, Any]:
        model = deep_linear_network([8, 8, 8, 8], 2)
        return model, linear_regression_data(model, 100_000)

    return [
        dict(
            name="dln 8-8-8-8 r=2 n=1e5",
            family="dln_1e5",
            make=make,
            exact=22.3,
            exact_source="DESIGN.md §9 (about 22.3)",
            lam=dln_lambda([8, 8, 8, 8], 2)[0],
        )
    ]


def normal_crossing_cases() -> list[dict[str, Any]]:
    cases = []
    for power, n in ((1, 10_000), (2, 10_000), (2, 5_000)):
        x, y = regression_data(n, seed=0)
        exact = normal_crossing_target(x, y, n / math.log(n), 1.0, power=power, loss="gaussian_nll")
        cases.append(
            dict(
                name=f"normal crossing w1²w2^{2 * power} n={n}",
                family="normal_crossing",
                make=lambda x=x, y=y, power=power: (NormalCrossing([1, power]), (x, y)),
                exact=exact,
                exact_source="quadrature",
                lam=normal_crossing_lambda([1, power])[0],
            )
        )
    return cases


def regression_cases() -> list[dict[str, Any]]:
    cases = []
    for n in (500, 501, 1000, 5001):  # 5001: above the whole-data cap (4096), minibatches of nβ = 588
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 4, generator=g, dtype=torch.float64)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]], dtype=torch.float64)
        y = y + torch.randn(n, 1, generator=g, dtype=torch.float64)
        model = nn.Linear(4, 1, bias=False).double()
        with torch.no_grad():
            model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
        exact = linear_regression_target(x, n / math.log(n), 1.0, loss="gaussian_nll")
        cases.append(
            dict(
                name=f"linear regression d=4 n={n}",
                family="regression",
                make=lambda model=model, x=x, y=y: (model, (x, y)),
                exact=exact,
                exact_source="closed form",
                lam=2.0,
            )
        )
    return cases


def net_cases() -> list[dict[str, Any]]:
    """Trained networks with no known λ; ``exact`` is filled in by :func:`run` at the first run's nβ."""
    from bench_guards import trained_classifier, trained_mlp
    from common import TinyTransformer, next_token_loss, token_problem

    def transformer() -> tuple[nn.Module, tuple[torch.Tensor]]:
        data = token_problem(500, vocab=16, ctx=8, seed=0)
        torch.manual_seed(0)
        model = TinyTransformer(vocab=16, d_model=16, heads=2, layers=1, ctx=8)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(3000):
            opt.zero_grad()
            next_token_loss(model, data).backward()
            opt.step()
        return model, data

    specs = (
        ("classifier 6-32-3 (323 params), cross-entropy near 0, n=600", trained_classifier, "cross_entropy"),
        ("tanh MLP 8-24-1 (241 params) n=1000", trained_mlp, "mse"),
        ("tiny transformer (3,984 params) 500 sequences x 8 tokens", transformer, next_token_loss),
    )
    return [
        dict(
            name=name,
            family="nets",
            make=make,
            loss=loss,
            exact=None,
            exact_source="exact_llc_target",
            lam=float("nan"),
        )
        for name, make, loss in specs
    ]


def run(
    case: dict[str, Any],
    seed: int,
    sampler_options: dict[str, Any] | None = None,
    sampler: str = "sgld",
    estimate_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    model, data = case["make"]()
    loss_fn = case.get("loss", gaussian_nll)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = slt.estimate_llc(
                model,
                data,
                loss_fn=loss_fn,
                seed=seed,
                progress=False,
                sampler=sampler,
                sampler_options=sampler_options,
                **(estimate_kwargs or {}),
            )
        except Exception as exc:
            return dict(case=case["name"], seed=seed, raised=f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start
    s = result.settings
    steps = s.num_burnin + s.num_draws * s.num_steps_bw_draws
    if case["exact"] is None:  # once per case, at the nβ the estimator used (tokens for token data)
        target = exact_llc_target(model, data, loss_fn, n_beta=s.n_beta, num_chains=16, max_steps=40_000)
        case["exact"] = target.value
        case["exact_source"] = f"exact_llc_target ± {target.stderr:.2g}, {target.steps} steps" + (
            "" if target.converged else ", NOT converged"
        )
    exact, lam = case["exact"], case["lam"]
    low, high = result.interval
    return dict(
        case=case["name"],
        family=case["family"],
        seed=seed,
        llc=result.mean,
        stderr=result.stderr,
        interval=[low, high],
        covers=bool(low <= exact <= high),
        exact=exact,
        exact_source=case["exact_source"],
        error_vs_exact=result.mean / exact - 1,
        corrected=result.corrected,
        error_corrected_vs_exact=result.corrected / exact - 1,
        lam=lam,
        error_vs_lambda=result.mean / lam - 1,
        exact_offset_from_lambda=exact / lam - 1,
        sampler=s.sampler,
        step_size=s.step_size,
        step_size_source=s.step_size_source,
        precision=s.precision,
        target_bias=s.target_bias,
        simulated_time=s.simulated_time,
        converged=s.converged,
        steps_per_chain=steps,
        batch_size=s.batch_size,
        grad_evals=s.num_chains * steps + _pilot_evals(s.step_size_source),
        bias_indicator=result.checks.bias_indicator,
        minibatch_noise_share=result.checks.minibatch_noise,
        minibatch_bias=result.checks.minibatch_bias,
        seconds=seconds,
        compile=s.compile,
        chain_mode=s.chain_mode,
        warnings=sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught}),
    )


def with_correction(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with ``LLCResult.corrected`` and its error, from its stored λ̂ and bias indicator where a
    run from before the correction existed lacks them (the property's own formula, SGLD only)."""
    if "raised" in row or "corrected" in row:
        return row
    b = row["bias_indicator"]
    corrected = row["llc"] / (1 + b) if math.isfinite(b) and b > 0 and row["llc"] > 0 else row["llc"]
    return {**row, "corrected": corrected, "error_corrected_vs_exact": corrected / row["exact"] - 1}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [with_correction(r) for r in rows]
    out = {}
    for family in sorted({r["family"] for r in rows if "family" in r}):
        ok = [r for r in rows if r.get("family") == family]
        errors = np.abs([r["error_vs_exact"] for r in ok])
        corrected = np.abs([r["error_corrected_vs_exact"] for r in ok])
        out[family] = dict(
            runs=len(ok),
            mean_abs_error_vs_exact=float(errors.mean()),
            worst_abs_error_vs_exact=float(errors.max()),
            corrected_mean_abs_error_vs_exact=float(corrected.mean()),
            corrected_worst_abs_error_vs_exact=float(corrected.max()),
            coverage=float(np.mean([r["covers"] for r in ok])),
            max_grad_evals=int(max(r["grad_evals"] for r in ok)),
            unconverged=int(sum(r["converged"] is False for r in ok)),
        )
    every = [r for r in rows if "covers" in r]
    out["all"] = dict(runs=len(every), coverage=float(np.mean([r["covers"] for r in every])))
    return out


def _lambda_columns(row: dict[str, Any]) -> str:
    """λ, λ̂ against λ and the exact target against λ, or dashes where no λ is known (the nets)."""
    if not math.isfinite(row["lam"]):
        return "— | — | —"
    return f"{row['lam']:.4g} | {row['error_vs_lambda']:+.1%} | {row['exact_offset_from_lambda']:+.1%}"


def _bias_column(row: dict[str, Any]) -> str:
    """The predicted step-size bias and, where measured, its minibatch share (rows from before: b only)."""
    b, b_mb = row.get("bias_indicator", float("nan")), row.get("minibatch_bias", float("nan"))
    if b_mb is None or not math.isfinite(b_mb):
        return f"{b:.1%}"
    return f"{b:.1%} ({b_mb:.1%})"


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        "| case | seed | λ̂ | 95% interval | exact | vs exact | corrected vs exact | b (b_mb) | λ | vs λ "
        "| exact vs λ | ε·T | batch | grad evals | s | warnings |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in map(with_correction, rows):
        if "raised" in r:
            lines.append(f"| {r['case']} | {r['seed']} | raised: {r['raised'][:100]} |" + " |" * 12)
            continue
        flag = "" if r["covers"] else " ✗"
        lines.append(
            f"| {r['case']} | {r['seed']} | {r['llc']:.4g} ± {r['stderr']:.2g} | "
            f"[{r['interval'][0]:.4g}, {r['interval'][1]:.4g}]{flag} | {r['exact']:.4g} | "
            f"{r['error_vs_exact']:+.1%} | {r['error_corrected_vs_exact']:+.1%} | {_bias_column(r)} | "
            f"{_lambda_columns(r)} | "
            f"{r['simulated_time']:.2g} | {r.get('batch_size') or '—'} | {r['grad_evals']:,} | "
            f"{r['seconds']:.0f} | {'; '.join(w.split(':')[0] for w in r['warnings']) or '—'} |"
        )
    lines += [
        "",
        "| family | runs | mean abs error vs exact | worst | corrected: mean abs | worst | interval coverage "
        "| max grad evals | unconverged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for family, s in summary.items():
        if family == "all":
            continue
        lines.append(
            f"| {family} | {s['runs']} | {s['mean_abs_error_vs_exact']:.1%} | "
            f"{s['worst_abs_error_vs_exact']:.1%} | {s['corrected_mean_abs_error_vs_exact']:.1%} | "
            f"{s['corrected_worst_abs_error_vs_exact']:.1%} "
            f"| {s['coverage']:.0%} | {s['max_grad_evals']:,} | {s['unconverged']} |"
        )
    lines.append(
        f"\nInterval coverage over all runs: {summary['all']['coverage']:.0%} of {summary['all']['runs']}. "
        "Corrected: `LLCResult.corrected`, λ̂ / (1 + predicted first-order step-size bias): b_mb, the "
        "minibatch noise's share (measured at the chains' ends), for SGLD's default Leimkuhler-Matthews "
        "noise; b, the whole indicator, for the Euler step. Rows from before b_mb existed show b only."
    )
    samplers = sorted({r.get("sampler", "sgld") for r in rows if "raised" not in r})
    if samplers != ["sgld"]:
        lines.append(
            f"\nSampler: {', '.join(samplers)}. For SGNHT b_mb is its thermostat's minibatch bias "
            "(`slt.tuning.thermostat_minibatch_bias`), and `corrected` is λ̂ itself."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--cases", nargs="+", default=["reg", "nc", "dln"], choices=["reg", "nc", "dln", "dln1e5", "nets"]
    )
    parser.add_argument("--name", default="defaults", help="results file name (results/NAME.json, .md)")
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this text")
    parser.add_argument(
        "--euler",
        action="store_true",
        help="SGLD's Euler step (sampler_options={'leimkuhler_matthews': False}) instead of the default",
    )
    parser.add_argument("--sampler", default="sgld", help="a registered sampler (its default options)")
    parser.add_argument("--precision", type=float, help="estimate_llc's precision (default 0.05)")
    parser.add_argument("--target-bias", type=float, help="estimate_llc's target_bias (default 0.05)")
    parser.add_argument("--batch-size", type=int, help="estimate_llc's batch_size (default: its batch rule)")
    parser.add_argument("--max-steps", type=int, help="estimate_llc's max_steps (default 100,000)")
    parser.add_argument(
        "--batch-per-n-beta",
        type=float,
        help="samples per unit of nβ in the default batch (PosteriorSampler.BATCH_PER_N_BETA, default 1)",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="rewrite defaults.md and the summary from defaults.json, no runs",
    )
    args = parser.parse_args(argv)
    if args.render:
        payload = json.loads((RESULTS / "defaults.json").read_text())
        payload["rows"] = [with_correction(r) for r in payload["rows"]]
        payload["summary"] = summarize(payload["rows"])
        write_json("defaults.json", payload)
        (RESULTS / "defaults.md").write_text(markdown(payload["rows"], payload["summary"]))
        return payload
    torch.set_num_threads(1)
    if args.batch_per_n_beta is not None:
        from slt.sampling.driver import PosteriorSampler

        PosteriorSampler.BATCH_PER_N_BETA = args.batch_per_n_beta
    builders = {
        "reg": regression_cases,
        "nc": normal_crossing_cases,
        "dln": dln_cases,
        "dln1e5": dln_large_cases,
        "nets": net_cases,
    }
    cases = [c for key in args.cases for c in builders[key]() if args.only is None or args.only in c["name"]]
    given = {
        "precision": args.precision,
        "target_bias": args.target_bias,
        "batch_size": args.batch_size,
        "max_steps": args.max_steps,
    }
    tuning = {name: value for name, value in given.items() if value is not None}
    rows = []
    for case in cases:
        for seed in args.seeds:
            options = {"leimkuhler_matthews": False} if args.euler else None
            rows.append(run(case, seed, options, args.sampler, tuning))
            r = rows[-1]
            if "raised" in r:
                print(f"{r['case']} seed {seed}: raised {r['raised']}", flush=True)
            else:
                print(
                    f"{r['case']} seed {seed}: {r['llc']:.4g} "
                    f"[{r['interval'][0]:.4g}, {r['interval'][1]:.4g}] "
                    f"exact {r['exact']:.4g} ({r['error_vs_exact']:+.1%}) covers={r['covers']} "
                    f"τ={r['simulated_time']:.2g} {r['seconds']:.0f}s {r['warnings']}",
                    flush=True,
                )
    summary = summarize(rows)
    payload = {"environment": environment("cpu"), "rows": rows, "summary": summary}
    if args.batch_per_n_beta is not None:
        payload["batch_per_n_beta"] = args.batch_per_n_beta
    write_json(f"{args.name}.json", payload)
    (RESULTS / f"{args.name}.md").write_text(markdown(rows, summary))
    print(markdown(rows, summary))
    return payload


if __name__ == "__main__":
    main()
