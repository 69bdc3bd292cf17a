"""Score ``slt.detect_transitions`` on the synthetic suite; write JSON and markdown results.

Run from the repository root:

    PYTHONPATH=. python benchmarks/transitions/run.py [--series 200] [--null-series 300] [--seed 0]
    PYTHONPATH=. python benchmarks/transitions/run.py --baseline     # plain piecewise-constant PELT

Writes ``benchmarks/results/transitions.{json,md}`` (or ``transitions_baseline.{json,md}``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks.transitions.synthetic import (
    ERROR_MODES,
    NULL_FAMILIES,
    SIGNAL_FAMILIES,
    SIZES,
    TOLERANCE,
    Scores,
    plain_pelt_detector,
    score,
    slt_detector,
)

RESULTS = Path(__file__).resolve().parents[1] / "results"


def run_suite(
    num_series: int, num_null: int, seed: int, detector_options: dict | None = None, baseline: bool = False
) -> dict:
    """Score every family under both error models; returns a JSON-ready dictionary."""
    detector = plain_pelt_detector() if baseline else slt_detector(**(detector_options or {}))
    out: dict = {"signal": {}, "null": {}}
    for m, mode in enumerate(ERROR_MODES):
        for f, family in enumerate(SIGNAL_FAMILIES):
            sc = score(detector, family, mode, num_series, seed + 1000 * m + 10 * f)
            out["signal"][f"{family}/{mode}"] = _signal_row(sc)
        for f, family in enumerate(NULL_FAMILIES):
            sc = score(detector, family, mode, num_null, seed + 1000 * m + 10 * f + 500)
            out["null"][f"{family}/{mode}"] = {
                "series": sc.series,
                "false_detections": sc.false_detections,
                "false_per_series": sc.false_per_series,
                "seconds": sc.seconds,
            }
    out["summary"] = summarize(out)
    return out


def _signal_row(sc: Scores) -> dict:
    return {
        "series": sc.series,
        "planted": {str(k): v for k, v in sorted(sc.planted.items())},
        "found": {str(k): sc.found.get(k, 0) for k in sorted(sc.planted)},
        "recall_by_size": {str(k): sc.recall(k, k) for k in sorted(sc.planted)},
        "recall_4sigma_or_more": sc.recall(4.0),
        "location_error_4sigma_or_more": sc.location_error(4.0),
        "location_errors_by_size": {str(k): float(np.mean(v)) for k, v in sorted(sc.location_errors.items())},
        "detections": sc.detections,
        "false_detections": sc.false_detections,
        "precision": sc.precision,
        "false_per_series": sc.false_per_series,
        "seconds": sc.seconds,
    }


def summarize(out: dict) -> dict:
    """Pooled numbers per error model: recall (>= 4 sigma and per size), precision, FP per null series."""
    summary = {}
    for mode in ERROR_MODES:
        rows = [r for k, r in out["signal"].items() if k.endswith("/" + mode)]
        planted = {s: sum(r["planted"].get(str(s), 0) for r in rows) for s in SIZES}
        found = {s: sum(r["found"].get(str(s), 0) for r in rows) for s in SIZES}
        big = [s for s in SIZES if s >= 4]
        errs = [
            (r["location_errors_by_size"][str(s)], r["found"][str(s)])
            for r in rows
            for s in big
            if str(s) in r["location_errors_by_size"]
        ]
        detections = sum(r["detections"] for r in rows)
        false = sum(r["false_detections"] for r in rows)
        drift = [
            r for k, r in out["null"].items() if k.endswith("/" + mode) and not k.startswith("null-flat")
        ]
        flat = [r for k, r in out["null"].items() if k.endswith("/" + mode) and k.startswith("null-flat")]
        summary[mode] = {
            "recall_4sigma_or_more": sum(found[s] for s in big) / sum(planted[s] for s in big),
            "recall_by_size": {str(s): found[s] / planted[s] if planted[s] else None for s in SIZES},
            "precision": 1 - false / detections if detections else None,
            "false_per_signal_series": false / sum(r["series"] for r in rows),
            "location_error_4sigma_or_more": sum(e * n for e, n in errs) / max(1, sum(n for _, n in errs)),
            "false_per_null_series_with_drift": sum(r["false_detections"] for r in drift)
            / sum(r["series"] for r in drift),
            "false_per_null_series_flat": sum(r["false_detections"] for r in flat)
            / sum(r["series"] for r in flat),
        }
    return summary


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [
        "# Transition detector on the synthetic suite",
        "",
        (
            "The baseline (piecewise-constant PELT on the values, breaks kept at 3 standard errors) on "
            if result.get("baseline")
            else f"`slt.detect_transitions` with {result['detector_options'] or 'its defaults'} "
            "(no bootstrap), "
        )
        + f"{result['num_series']} series per signal family and {result['num_null']} per null family and "
        "error "
        f"model, seed {result['seed']}; a detection counts when its steepest step lies within "
        f"±{TOLERANCE:g} checkpoints of the planted change (of its ramp) with the right direction. "
        f"Measured on {result['machine']} in {result['seconds']:.0f} s.",
        "",
        "## Summary",
        "",
        "| error bars | recall ≥4σ | precision | FP / signal series | FP / null series (drift) "
        "| FP / null series (flat) | location error ≥4σ (checkpoints) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in s.items():
        lines.append(
            f"| {mode} | {r['recall_4sigma_or_more']:.3f} | {r['precision']:.3f} | "
            f"{r['false_per_signal_series']:.3f} | {r['false_per_null_series_with_drift']:.3f} | "
            f"{r['false_per_null_series_flat']:.3f} | {r['location_error_4sigma_or_more']:.2f} |"
        )
    lines += ["", "## Recall by jump size (pooled over signal families)", ""]
    lines.append("| error bars | " + " | ".join(f"{k:g}σ" for k in SIZES) + " |")
    lines.append("|---|" + "---|" * len(SIZES))
    for mode, r in s.items():
        lines.append(f"| {mode} | " + " | ".join(f"{r['recall_by_size'][str(k)]:.2f}" for k in SIZES) + " |")
    lines += [
        "",
        "## Per family",
        "",
        "| family / error bars | recall ≥4σ | recall 4σ | recall 2σ | precision | FP / series "
        "| location error ≥4σ |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in result["signal"].items():
        lines.append(
            f"| {key} | {r['recall_4sigma_or_more']:.3f} | "
            f"{r['recall_by_size'].get('4.0', float('nan')):.2f} | "
            f"{r['recall_by_size'].get('2.0', float('nan')):.2f} | {r['precision']:.3f} | "
            f"{r['false_per_series']:.3f} | {r['location_error_4sigma_or_more']:.2f} |"
        )
    lines += [
        "",
        "| null family / error bars | series | false detections | FP / series |",
        "|---|---|---|---|",
    ]
    for key, r in result["null"].items():
        lines.append(f"| {key} | {r['series']} | {r['false_detections']} | {r['false_per_series']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=200, help="series per signal family and error model")
    parser.add_argument("--null-series", type=int, default=300, help="series per null family and error model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS), help="folder for transitions.json and transitions.md")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="detector option, for example --option min_snr=4 (repeatable)",
    )
    parser.add_argument(
        "--baseline", action="store_true", help="score the plain piecewise-constant PELT baseline instead"
    )
    args = parser.parse_args()
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    start = time.perf_counter()
    result = run_suite(args.series, args.null_series, args.seed, options, baseline=args.baseline)
    result.update(
        baseline=args.baseline,
        num_series=args.series,
        num_null=args.null_series,
        seed=args.seed,
        detector_options=options,
        seconds=time.perf_counter() - start,
        machine=f"{platform.machine()} {platform.system()}, Python {platform.python_version()}, 1 thread",
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "transitions_baseline" if args.baseline else "transitions"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
