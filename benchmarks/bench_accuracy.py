"""Accuracy against known learning coefficients: slt and devinterp 2.0.1 on the same models and data.

Families (all sampled at a most-singular true parameter, Gaussian NLL ``0.5 * sum of squares`` per
sample in both libraries):

* deep linear networks (2-5 layers, widths 5-100, several ranks, n = 1e4 and 1e5) against Aoyagi's λ
  (:func:`slt.oracles.dln_lambda`);
* normal crossings ``f = x · w1 · w2^k`` against the *exact finite-β value* nβ·E[L_n(w) - L_n(0)] at
  nβ = n/log n and localization γ = 1, by quadrature (the w1 integral is Gaussian, one 1-D quadrature
  over w2 remains; see tests/test_accuracy.py);
* one-hidden-layer tanh networks at the zero function against :func:`slt.oracles.tanh_lambda`.

Configurations:

* ``slt default``: ``slt.estimate_llc(model, data, loss_fn=...)`` with nothing else set.
* ``slt rmsprop``: the same with ``sampler="rmsprop_sgld"``: a candidate default, measured at the
  same budget (see the report's recommendations).
* ``slt calibrate``: ``slt.calibrate(...)`` with its defaults, then ``estimate_llc(**estimate_kwargs())``
  (only on the cases marked ``calibrate``: calibration runs ~20x the default budget).
* ``devinterp default``: devinterp 2.0.1 as documented (see ``common.devinterp_default_settings``).
* ``devinterp @ slt settings``: devinterp with slt-default's step size, nβ, localization, batch size,
  chains, burn-in and draws: the same number of gradient evaluations of the chains (slt additionally
  spends a short pilot, reported as ``grad_evals``). devinterp's own estimate averages the burn-in in and
  takes L_n(w*) from 32 minibatches; the column ``devinterp traces, slt scoring`` re-scores the same
  traces without burn-in and with the full-data L_n(w*), to separate the sampler from the estimator.

Run: PYTHONPATH=. python benchmarks/bench_accuracy.py [--quick] [--cases NAME ...]
Writes benchmarks/results/accuracy.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from common import (
    RESULTS,
    collect,
    devinterp_default_settings,
    devinterp_llc,
    environment,
    gaussian_nll,
    peer_status,
    write_json,
)

import slt
from slt.oracles import (
    NormalCrossing,
    deep_linear_network,
    dln_lambda,
    linear_regression_data,
    normal_crossing_target,
    regression_data,
    tanh_lambda,
    tanh_network,
)

CONFIGS = ("slt_default", "slt_rmsprop", "slt_calibrate", "devinterp_default", "devinterp_slt_settings")


@dataclass
class Case:
    """One model with a known answer."""

    name: str
    family: str
    make: Callable[[], tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]]
    truth: float
    truth_kind: str
    n: int
    multiplicity: int | None = None
    calibrate: bool = True


def dln_case(widths: list[int], rank: int, n: int, calibrate: bool = True) -> Case:
    lam, m = dln_lambda(widths, rank)

    def make():
        model = deep_linear_network(widths, rank)
        return model, linear_regression_data(model, n)

    params = sum(a * b for a, b in itertools.pairwise(widths))
    name = f"dln {'-'.join(map(str, widths))} r={rank} n={n:.0e} ({params} params)"
    return Case(name, "dln", make, lam, "λ (Aoyagi)", n, m, calibrate)


def normal_crossing_exact(x: torch.Tensor, y: torch.Tensor, k: int, n_beta: float, gamma: float) -> float:
    """Exact nβ·E[L_n(w) - L_n(0)] for f = x·w1·w2^k with the Gaussian NLL: the library's quadrature."""
    return normal_crossing_target(x, y, n_beta, gamma, power=k, loss="gaussian_nll")


def normal_crossing_case(k: int, n: int, gamma: float = 1.0, calibrate: bool = True) -> Case:
    x, y = regression_data(n, seed=0)
    n_beta = n / math.log(n)
    exact = normal_crossing_exact(x, y, k, n_beta, gamma)
    lam, m = slt.oracles.normal_crossing_lambda([1, k])

    def make():
        return NormalCrossing([1, k]), (x, y)

    return Case(
        f"normal crossing w1²w2^{2 * k} n={n:.0e} (λ={lam:.3g}, m={m})",
        "normal_crossing",
        make,
        exact,
        f"exact finite-β (nβ=n/log n, γ={gamma:g})",
        n,
        m,
        calibrate,
    )


def tanh_case(hidden: int, n: int, calibrate: bool = True) -> Case:
    def make():
        return tanh_network(hidden), regression_data(n, seed=0)

    return Case(f"tanh H={hidden} n={n:.0e}", "tanh", make, tanh_lambda(hidden), "λ", n, None, calibrate)


def suite(quick: bool) -> list[Case]:
    if quick:
        return [
            dln_case([10, 5, 10], 1, 10_000),
            dln_case([5, 5, 5, 5, 5], 1, 10_000, calibrate=False),
            normal_crossing_case(2, 10_000, calibrate=False),
            tanh_case(2, 10_000, calibrate=False),
        ]
    return [
        dln_case([10, 5, 10], 1, 10_000),
        dln_case([10, 5, 10], 2, 10_000),
        dln_case([5, 5, 5, 5, 5], 1, 10_000),
        dln_case([8, 8, 8, 8], 2, 100_000),
        dln_case([5, 10, 10, 10, 10, 5], 1, 10_000),
        dln_case([20, 10, 20], 3, 100_000, calibrate=False),
        dln_case([40, 20, 20, 40], 4, 10_000, calibrate=False),
        dln_case([100, 50, 100], 10, 100_000, calibrate=False),
        normal_crossing_case(1, 10_000, calibrate=False),
        normal_crossing_case(2, 10_000),
        normal_crossing_case(3, 10_000, calibrate=False),
        normal_crossing_case(2, 100_000, calibrate=False),
        tanh_case(1, 10_000, calibrate=False),
        tanh_case(2, 10_000),
        tanh_case(4, 10_000, calibrate=False),
    ]


# -- the four configurations ------------------------------------------------------------------


def full_loss(model: nn.Module, data) -> float:
    with torch.no_grad():
        return float(gaussian_nll(model, data))


def _slt_row(result: slt.LLCResult, seconds: float, grad_evals: int, **extra: Any) -> dict[str, Any]:
    s = result.settings
    return {
        "estimate": result.mean,
        "stderr": result.stderr,
        "seconds": seconds,
        "grad_evals": grad_evals,
        "step_size": s.step_size,
        "step_size_source": s.step_size_source,
        "n_beta": s.n_beta,
        "localization": s.localization,
        "num_chains": s.num_chains,
        "num_burnin": s.num_burnin,
        "num_draws": s.num_draws,
        "batch_size": s.batch_size,
        "rhat": result.diagnostics.rhat,
        "ess": result.diagnostics.ess,
        "trend_z": result.diagnostics.trend_z,
        "chains_diverged": int(result.diagnostics.diverged.sum()),
        **extra,
    }


def run_slt_default(model, data, seed: int, **options: Any) -> dict[str, Any]:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = slt.estimate_llc(model, data, loss_fn=gaussian_nll, seed=seed, progress=False, **options)
    seconds = time.perf_counter() - start
    s = result.settings
    chain_steps = s.num_chains * (s.num_burnin + s.num_draws * s.num_steps_bw_draws)
    pilot = _pilot_evals(s.step_size_source)
    return _slt_row(result, seconds, chain_steps + pilot, warnings=_messages(caught))


def _pilot_evals(source: str) -> int:
    """Gradient evaluations of default_step_size's pilot: power iteration plus 2 chains x 200 per round."""
    rounds = source.count("->")
    retries = source.count("diverged")
    return 24 + 2 * 200 * (max(rounds, 1) + retries)


def run_slt_calibrate(model, data, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = slt.calibrate(model, data, loss_fn=gaussian_nll, seed=seed, progress=False)
        result = slt.estimate_llc(
            model, data, loss_fn=gaussian_nll, seed=seed, progress=False, **cal.estimate_kwargs()
        )
    seconds = time.perf_counter() - start
    s = result.settings
    calibration_evals = sum(row["num_steps"] for row in cal.table) * cal.settings.get("num_chains", 4)
    chain_steps = s.num_chains * (s.num_burnin + s.num_draws)
    return _slt_row(
        result,
        seconds,
        chain_steps + calibration_evals + _pilot_evals("->->"),
        calibration_criteria=cal.criteria,
        llc_extrapolated=cal.llc_extrapolated,
        warnings=_messages(caught),
    )


def run_peer(model, data, settings: dict[str, Any], seed: int) -> dict[str, Any]:
    est = devinterp_llc(
        model,
        data,
        "gaussian_nll",
        step_size=settings["step_size"],
        n_beta=settings["n_beta"],
        localization=settings["localization"],
        num_chains=settings["num_chains"],
        num_draws=settings["num_draws"],
        num_burnin=settings["num_burnin"],
        batch_size=settings["batch_size"],
        sampler=settings.get("sampler", "sgld"),
        full_init_loss=full_loss(model, data),
        seed=100 + seed,
    )
    return {
        "estimate": est.mean,
        "stderr": float(np.std(est.per_chain, ddof=1) / math.sqrt(len(est.per_chain))),
        "rescored": est.rescored,
        "peer_init_loss": est.init_loss,
        "seconds": est.seconds,
        "grad_evals": settings["num_chains"] * (settings["num_burnin"] + settings["num_draws"]),
        "failed_chains": est.failed_chains,
        **{k: settings[k] for k in ("step_size", "n_beta", "localization", "batch_size")},
        "num_chains": settings["num_chains"],
        "num_burnin": settings["num_burnin"],
        "num_draws": settings["num_draws"],
    }


def _messages(caught) -> list[str]:
    return sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught})


def run_case(case: Case, configs: tuple[str, ...], peer: bool, seed: int = 0) -> dict[str, Any]:
    model, data = case.make()
    row: dict[str, Any] = {
        "case": case.name,
        "family": case.family,
        "truth": case.truth,
        "truth_kind": case.truth_kind,
        "multiplicity": case.multiplicity,
        "n": case.n,
        "params": sum(p.numel() for p in model.parameters()),
        "results": {},
    }
    results = row["results"]
    if "slt_default" in configs:
        results["slt_default"] = run_slt_default(model, data, seed)
        collect()
    if "slt_rmsprop" in configs:
        results["slt_rmsprop"] = run_slt_default(model, data, seed, sampler="rmsprop_sgld")
        collect()
    if "slt_calibrate" in configs and case.calibrate:
        results["slt_calibrate"] = run_slt_calibrate(model, data, seed)
        collect()
    if peer and "devinterp_default" in configs:
        results["devinterp_default"] = run_peer(model, data, devinterp_default_settings(), seed)
        collect()
    if peer and "devinterp_slt_settings" in configs and "slt_default" in results:
        ours = results["slt_default"]
        matched = {k: ours[k] for k in ("step_size", "n_beta", "localization", "num_chains", "num_burnin")}
        matched.update(num_draws=ours["num_draws"], batch_size=ours["batch_size"], sampler="sgld")
        results["devinterp_slt_settings"] = run_peer(model, data, matched, seed)
        collect()
    for _name, r in results.items():
        r["rel_error"] = (r["estimate"] - case.truth) / case.truth
        if "rescored" in r:
            r["rescored_rel_error"] = (r["rescored"] - case.truth) / case.truth
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean absolute relative error and worst case per family and configuration."""
    out: dict[str, Any] = {}
    for family in sorted({r["family"] for r in rows}):
        fam = [r for r in rows if r["family"] == family]
        out[family] = {}
        for config in (*CONFIGS, "devinterp_traces_slt_scoring"):
            key, source = (
                ("rescored_rel_error", "devinterp_slt_settings")
                if config.startswith("devinterp_traces")
                else ("rel_error", config)
            )
            errors = [
                (abs(r["results"][source][key]), r["case"])
                for r in fam
                if source in r["results"]
                and r["results"][source].get(key) is not None
                and math.isfinite(r["results"][source][key])
            ]
            if not errors:
                continue
            worst = max(errors)
            out[family][config] = {
                "mean_abs_rel_error": float(np.mean([e for e, _ in errors])),
                "median_abs_rel_error": float(np.median([e for e, _ in errors])),
                "worst_abs_rel_error": worst[0],
                "worst_case": worst[1],
                "cases": len(errors),
            }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small suite in a few minutes")
    parser.add_argument("--cases", nargs="*", help="only cases whose name contains one of these strings")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS / "accuracy.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    peer, peer_note = peer_status()
    cases = suite(args.quick)
    if args.cases:
        cases = [c for c in cases if any(s in c.name for s in args.cases)]
    rows = []
    for case in cases:
        start = time.perf_counter()
        row = run_case(case, tuple(args.configs), peer, seed=args.seed)
        rows.append(row)
        errors = ", ".join(
            f"{k} {v['estimate']:.4g} ({v['rel_error']:+.1%})" for k, v in row["results"].items()
        )
        print(
            f"[{time.perf_counter() - start:6.1f}s] {case.name}: truth {case.truth:.4g}; {errors}", flush=True
        )
    payload = {
        "meta": {**environment("cpu"), "quick": args.quick, "configs": args.configs, "seed": args.seed},
        "peer_note": peer_note,
        "rows": rows,
        "summary": summarize(rows),
    }
    path = Path(args.output)
    write_json(path.name, payload, path.parent)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
