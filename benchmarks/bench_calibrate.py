"""``slt.calibrate`` with its defaults, then ``estimate_llc(**estimate_kwargs())``, against exact targets.

On the deep linear networks of ``bench_defaults.py`` (n = 1e4, γ = 1, nβ = n/log n), each scored against the
exact finite-nβ target, with calibrate's own time, the step it chose, its criteria and warnings, and the
estimate with the settings it carried (the estimate sizes its own length at that step: the burn-in +
draws column is the estimate's).

    PYTHONPATH=. python benchmarks/bench_calibrate.py [--cases "10-5-10 r=1" ...]   # results/calibrate.*
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

import slt
from benchmarks.bench_defaults import dln_cases
from benchmarks.common import RESULTS, environment, gaussian_nll, write_json


def run(case: dict, seed: int = 0) -> dict:
    model, data = case["make"]()
    row: dict = dict(case=case["name"], exact=case["exact"], lam=case["lam"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.perf_counter()
        cal = slt.calibrate(model, data, loss_fn=gaussian_nll, seed=seed, progress=False)
        row["calibrate_seconds"] = time.perf_counter() - started
        kwargs = cal.estimate_kwargs()
        started = time.perf_counter()
        result = slt.estimate_llc(model, data, loss_fn=gaussian_nll, seed=seed, progress=False, **kwargs)
        row["estimate_seconds"] = time.perf_counter() - started
    row.update(
        step_size=cal.step_size,
        reference_step=cal.settings["reference_step"],
        criteria=cal.criteria,
        calibrated_lengths=[cal.num_burnin, cal.num_draws],  # calibration's own, not carried (a6df39e)
        num_burnin=result.settings.num_burnin,  # the estimate's automatic length at the calibrated step
        num_draws=result.settings.num_draws,
        llc=result.mean,
        stderr=result.stderr,
        interval=list(result.interval),
        error_vs_exact=result.mean / case["exact"] - 1,
        covers=bool(result.interval[0] <= case["exact"] <= result.interval[1]),
        llc_extrapolated=cal.llc_extrapolated,
        extrapolation=cal.settings["extrapolation"],
        ladder_doublings=cal.settings["ladder_doublings"],
        ladder=[
            (r["step_size"], r["llc_mean"], r["llc_stderr"], r["bias_estimate"], r["healthy"], r["stable"])
            for r in cal.table
            if r["kind"] == "step"
        ],
        warnings=sorted({f"{w.category.__name__}: {str(w.message)[:140]}" for w in caught}),
    )
    return row


def _number(value: float | None) -> float:
    """A number from JSON, where NaN was written as null."""
    return float("nan") if value is None else value


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | calibrate s | ladder doublings | step | calibration's burn-in + draws | estimate s "
        "| estimate's burn-in + draws | λ̂ (calibrated) | 95% interval | exact | vs exact | extrapolated "
        "| warnings |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        doublings = ", ".join(f"γ={k}: {v}" for k, v in r.get("ladder_doublings", {}).items()) or "0"
        own = " + ".join(map(str, r["calibrated_lengths"])) if "calibrated_lengths" in r else "—"
        warned = "; ".join(w.split(":")[0] for w in r["warnings"]) or "—"
        lines.append(
            f"| {r['case']} | {r['calibrate_seconds']:.0f} | {doublings} | {r['step_size']:.3g} "
            f"| {own} | {r['estimate_seconds']:.0f} "
            f"| {r['num_burnin']} + {r['num_draws']} | {r['llc']:.4g} ± {r['stderr']:.2g} "
            f"| [{r['interval'][0]:.4g}, {r['interval'][1]:.4g}] | {r['exact']:.4g} "
            f"| {r['error_vs_exact']:+.1%} "
            f"| {_number(r['llc_extrapolated']):.4g} | {warned} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", nargs="*", default=["10-5-10 r=1", "10-5-10 r=2", "5-5-5-5-5"])
    parser.add_argument("--render", action="store_true", help="rewrite calibrate.md from calibrate.json")
    args = parser.parse_args()
    if args.render:
        (RESULTS / "calibrate.md").write_text(
            markdown(json.loads((RESULTS / "calibrate.json").read_text())["rows"])
        )
        return
    torch.set_num_threads(1)
    rows = []
    for case in dln_cases():
        if any(name in case["name"] for name in args.cases):
            rows.append(run(case))
            print(rows[-1], flush=True)
            # written after every case, so a long run keeps what it finished
            write_json("calibrate.json", {"environment": environment("cpu"), "rows": rows})
            (RESULTS / "calibrate.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
