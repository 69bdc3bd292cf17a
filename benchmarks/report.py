"""Build benchmarks/results/REPORT.md from the JSON files the benchmarks wrote.

Run: python benchmarks/report.py [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

CONFIG_TITLES = {
    "slt_default": "slt default",
    "slt_rmsprop": "slt rmsprop (candidate default)",
    "slt_calibrate": "slt calibrate",
    "devinterp_default": "devinterp default",
    "devinterp_slt_settings": "devinterp @ slt settings",
    "devinterp_traces_slt_scoring": "devinterp traces, slt scoring",
}


#: The latest ``bench_defaults.py`` run of each oracle family at slt's current defaults, scored against the
#: exact finite-nβ target (issue 10's yardstick). Update when a change to the defaults is re-measured; a
#: family found in a later file replaces the same family from an earlier one.
CURRENT_DEFAULTS = (
    "defaults_lastsegment_dln.json",
    "defaults_minibatch_nc_reg.json",
    "defaults_reg_all.json",
    "defaults_lm_dln1e5.json",
)
#: Issue 10's bars per family against the exact target: (largest mean absolute error, largest one-run error).
DEFAULTS_BARS = {"dln": (0.05, 0.10), "normal_crossing": (0.05, 0.05), "regression": (0.03, 0.03)}
FAMILY_TITLES = {
    "dln": "deep linear networks",
    "normal_crossing": "normal crossings",
    "regression": "regressions",
    "dln_1e5": "deep linear network 8-8-8-8, n = 1e5 (reported, no bar)",
}


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def _f(x: Any, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, fmt)


def _pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:+.1%}"


def goals(acc, speed, scaling) -> list[str]:
    lines = ["## Goals", "", "| goal | measured | met? |", "|---|---|---|"]

    def verdict(ok: bool | None) -> str:
        return "–" if ok is None else ("yes" if ok else "**no**")

    speed_rows = (speed or {}).get("rows", [])

    def speed_goal(label: str, rows: list[dict[str, Any]], target: float) -> str:
        if not rows:
            return f"| {label} | devinterp not measured | – |"
        whole = min(r["speedup_vs_peer"] for r in rows)
        marginal = [r["marginal_speedup_vs_peer"] for r in rows if r.get("marginal_speedup_vs_peer")]
        per_step = min(marginal) if marginal else None
        text = "; ".join(
            f"{r['model']} {r['speedup_vs_peer']:.1f}× whole call"
            + (
                f", {r['marginal_speedup_vs_peer']:.1f}× per step"
                if r.get("marginal_speedup_vs_peer")
                else ""
            )
            for r in rows
        )
        if whole >= target and (per_step is None or per_step >= target):
            ok = "yes"
        elif whole >= target:
            ok = "**whole calls only**"
        else:
            ok = "**no**"
        return f"| {label} | {text} | {ok} |"

    small = [r for r in speed_rows if r.get("speedup_vs_peer") and r["parameters"] <= 12_000]
    lines.append(speed_goal("slt ≥ 5× devinterp throughput up to 10k parameters (CPU)", small, 5.0))
    big = [r for r in speed_rows if r.get("speedup_vs_peer") and 50_000 <= r["parameters"] <= 200_000]
    lines.append(speed_goal("slt ≥ 1.5× devinterp at 100k parameters (CPU)", big, 1.5))
    scale_rows = [r for r in (scaling or {}).get("parameters", []) if r.get("speedup_vs_peer")]
    if scale_rows:
        lines.append(
            "| (scaling sweep, short calls, for reference) | "
            + ", ".join(f"mlp {r['parameters']} {r['speedup_vs_peer']:.1f}×" for r in scale_rows)
            + " | – |"
        )
    floors = [
        (r["model"], r["ratio_slt_chains_to_floor"]) for r in speed_rows if r.get("ratio_slt_chains_to_floor")
    ]
    floors += [
        (f"mlp {r['parameters']} (scaling, sequential)", r["ratio_sequential_to_floor"])
        for r in (scaling or {}).get("parameters", [])
        if r.get("ratio_sequential_to_floor")
    ]
    if floors:
        worst = max(floors, key=lambda t: t[1])
        lines.append(
            "| slt within 1.25× of the floor (chain time per step) | "
            + ", ".join(f"{m} {v:.2f}" for m, v in floors)
            + f" | {verdict(worst[1] <= 1.25)} (worst {worst[0]}) |"
        )
    summary = (acc or {}).get("summary", {}).get("dln", {})
    if "slt_default" in summary:
        mare = summary["slt_default"]["mean_abs_rel_error"]
        when = (acc or {}).get("meta", {}).get("time", "?")
        lines.append(
            f"| DLN mean absolute relative error against Aoyagi's λ ≤ 10% (the defaults of {when}) | "
            f"{mare:.1%} (worst {summary['slt_default']['worst_abs_rel_error']:.1%}) | "
            f"{verdict(mare <= 0.10)} |"
        )
        if "devinterp_slt_settings" in summary:
            peer = summary["devinterp_slt_settings"]["mean_abs_rel_error"]
            lines.append(
                f"| … and below devinterp's at the same budget | slt {mare:.1%} vs devinterp {peer:.1%} "
                f"| {verdict(mare < peer)} |"
            )
    return [*lines, ""]


def current_defaults(folder: Path) -> list[dict[str, Any]]:
    """Per family, the summary of the latest run at the current defaults (see :data:`CURRENT_DEFAULTS`)."""
    found: dict[str, dict[str, Any]] = {}
    for name in CURRENT_DEFAULTS:
        payload = _load(folder, name)
        if payload is None:
            continue
        when = payload.get("environment", {}).get("time", "?")
        for family, summary in payload.get("summary", {}).items():
            if family in FAMILY_TITLES:
                found[family] = dict(family=family, source=name, time=when, **summary)
    return list(found.values())


def defaults_goals(rows: list[dict[str, Any]]) -> list[str]:
    """Goal-table rows for issue 10's bars: the defaults against exact finite-nβ targets."""
    lines = []
    for r in rows:
        if r["family"] not in DEFAULTS_BARS:
            continue
        mean_bar, worst_bar = DEFAULTS_BARS[r["family"]]
        mean, worst = r["mean_abs_error_vs_exact"], r["worst_abs_error_vs_exact"]
        if worst_bar == mean_bar:
            bar = f"every run within {worst_bar:.0%}"
        else:
            bar = f"mean ≤ {mean_bar:.0%}, worst ≤ {worst_bar:.0%}"
        ok = "yes" if mean <= mean_bar and worst <= worst_bar else "**no**"
        lines.append(
            f"| {FAMILY_TITLES[r['family']]}, defaults against the exact target: {bar} | mean {mean:.1%}, "
            f"worst {worst:.1%} over {r['runs']} runs ({r['source']}, {r['time']}) | {ok} |"
        )
    if rows:
        covered = sum(r["coverage"] * r["runs"] for r in rows) / sum(r["runs"] for r in rows)
        lines.append(
            f"| 95% interval covers the exact target in ≥ 90% of runs | {covered:.0%} of "
            f"{sum(r['runs'] for r in rows)} | {'yes' if covered >= 0.9 else '**no**'} |"
        )
    return lines


def defaults_section(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## The defaults against exact finite-nβ targets (current code)",
        "",
        "`PYTHONPATH=. python benchmarks/bench_defaults.py`: `estimate_llc` with no tuning arguments, scored "
        "against the exact expectation it targets (same nβ, γ, data; quadrature, closed form or full-batch "
        "MALA). Each run's table, with λ beside it, is in the named file's `.md`.",
        "",
        "| family | runs | mean abs error | worst | 95% interval coverage | max grad evals | unconverged | "
        "source (measured) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {FAMILY_TITLES[r['family']]} | {r['runs']} | {r['mean_abs_error_vs_exact']:.1%} | "
            f"{r['worst_abs_error_vs_exact']:.1%} | {r['coverage']:.0%} | {r['max_grad_evals']:,} | "
            f"{r['unconverged']} | {r['source']} ({r['time']}) |"
        )
    return [*lines, ""]


def accuracy_section(acc: dict[str, Any]) -> list[str]:
    configs = [c for c in CONFIG_TITLES if c != "devinterp_traces_slt_scoring"]
    present = [c for c in configs if any(c in r["results"] for r in acc["rows"])]
    lines = [
        "## Accuracy against known learning coefficients",
        "",
        f"Peer: {acc.get('peer_note', '')}",
        "",
        "Estimate (relative error) per case. DLN truth: Aoyagi's λ; normal crossings: the exact finite-β "
        "value at nβ = n/log n, γ = 1 (quadrature); tanh: λ. "
        "`devinterp traces, slt scoring` re-scores devinterp's chains at slt's settings with burn-in "
        "dropped and the full-data L_n(w*).",
        "",
        "| case | params | truth | "
        + " | ".join(CONFIG_TITLES[c] for c in present)
        + (" | devinterp traces, slt scoring |" if "devinterp_slt_settings" in present else " |"),
        "|---|---|---|" + "---|" * (len(present) + ("devinterp_slt_settings" in present)),
    ]
    for r in acc["rows"]:
        cells = []
        for c in present:
            v = r["results"].get(c)
            cells.append("–" if v is None else f"{_f(v['estimate'], '.4g')} ({_pct(v['rel_error'])})")
        if "devinterp_slt_settings" in present:
            v = r["results"].get("devinterp_slt_settings")
            cells.append(
                "–" if v is None else f"{_f(v['rescored'], '.4g')} ({_pct(v['rescored_rel_error'])})"
            )
        lines.append(f"| {r['case']} | {r['params']} | {_f(r['truth'], '.4g')} | " + " | ".join(cells) + " |")
    lines += ["", "Mean / median absolute relative error (worst case) per family:", ""]
    summary = acc.get("summary", {})
    cols = [c for c in CONFIG_TITLES if any(c in summary.get(f, {}) for f in summary)]
    lines += ["| family | " + " | ".join(CONFIG_TITLES[c] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for family, by in summary.items():
        cells = [
            f"{by[c]['mean_abs_rel_error']:.1%} / {by[c].get('median_abs_rel_error', float('nan')):.1%} "
            f"({by[c]['worst_abs_rel_error']:.0%})"
            if c in by
            else "–"
            for c in cols
        ]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Settings and cost of every estimate (grad evals: chain steps plus pilot or calibration):",
        "",
    ]
    lines += [
        "| case | config | step size | nβ | γ | chains × (burn-in + draws) | grad evals | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in acc["rows"]:
        for c, v in r["results"].items():
            lines.append(
                f"| {r['case']} | {CONFIG_TITLES.get(c, c)} | {_f(v.get('step_size'))} "
                f"| {_f(v.get('n_beta'), '.4g')} "
                f"| {_f(v.get('localization'))} "
                f"| {v.get('num_chains')} × ({v.get('num_burnin')} + {v.get('num_draws')}) "
                f"| {v.get('grad_evals')} | {_f(v.get('seconds'), '.1f')} |"
            )
    return [*lines, ""]


def speed_section(speed: dict[str, Any], title: str) -> list[str]:
    lines = [
        f"## {title}",
        "",
        f"Peer: {speed.get('peer_note', '').rstrip('.')}. Device: {speed['meta'].get('device')}"
        + (f" ({speed['meta']['gpu']})" if speed["meta"].get("gpu") else "")
        + f"; load average at start {speed['meta'].get('load_average')}.",
        "",
        "Same model, data, step size, nβ, γ, chains and draws; slt and devinterp alternate within each "
        "repeat. *Whole call*: devinterp's `llc()` time / slt's `estimate_llc()` time (median of per-pair "
        "ratios). *Per step*: the same ratio for the marginal cost of one more chain-step (from a second run "
        "with a fifth of the draws): what long runs see. Floor ratio: slt's chain time per step / a plain "
        "SGLD loop's time per step.",
        "",
        "| model | params | batch | chains × draws | slt µs/chain-step | devinterp µs/chain-step "
        "| speedup, whole call | speedup, per step | fixed cost per call slt / devinterp (s) "
        "| floor µs/step | slt / floor | slt whole call / floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in speed["rows"]:
        lines.append(
            f"| {r['model']} | {r['parameters']} | {r['batch_size']} | {r['chains']} × {r['draws']} "
            f"| {_f(r['slt_whole_call_us_per_chain_step'], '.0f')} "
            f"| {_f(r.get('peer_us_per_chain_step'), '.0f')} "
            f"| {_f(r.get('speedup_vs_peer'), '.2f')} | {_f(r.get('marginal_speedup_vs_peer'), '.2f')} "
            f"| {_f(r.get('slt_fixed_seconds'), '.2f')} / {_f(r.get('peer_fixed_seconds'), '.2f')} "
            f"| {_f(r['floor_us_per_step'], '.0f')} | {_f(r['ratio_slt_chains_to_floor'], '.2f')} "
            f"| {_f(r['ratio_slt_call_to_floor'], '.2f')} |"
        )
    return [*lines, "", *compute_floor_table(speed["rows"])]


def compute_floor_table(rows: list[dict[str, Any]]) -> list[str]:
    """The gradient alone against slt and devinterp, and the ceilings it sets (rows that measured it)."""
    rows = [r for r in rows if r.get("gradient_compiled_us")]
    if not rows:
        return []
    lines = [
        "The compute floor: the gradient alone per chain on one fixed batch (forward and backward, nothing "
        "else), eager, and slt's compiled gradient for one chain and for the run's chains stacked; the "
        "fastest of the three is the floor. The ceilings are the most any sampler built on that gradient "
        "could gain over devinterp: per step, devinterp's per step over the floor; whole call, devinterp's "
        "whole call over the floor times the chain-steps.",
        "",
        "| model | gradient eager µs | compiled, 1 chain µs | compiled, stacked µs "
        "| slt chains only µs/chain-step "
        "| slt / compute floor | devinterp per step µs | per step vs devinterp (ceiling) "
        "| whole call vs devinterp (ceiling) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {_f(r['gradient_eager_us'], '.0f')} | {_f(r['gradient_compiled_us'], '.0f')} "
            f"| {_f(r.get('gradient_stacked_us'), '.0f')} "
            f"| {_f(r['slt_us_per_chain_step'], '.0f')} "
            f"| {_f(r['ratio_slt_chains_to_gradient_floor'], '.2f')} "
            f"| {_f(r.get('peer_marginal_us_per_chain_step'), '.0f')} "
            f"| {_f(r.get('marginal_speedup_vs_peer'), '.1f')}× "
            f"({_f(r.get('ceiling_per_step_vs_peer'), '.1f')}×) "
            f"| {_f(r.get('speedup_vs_peer'), '.1f')}× ({_f(r.get('ceiling_whole_call_vs_peer'), '.1f')}×) |"
        )
    return [*lines, ""]


def compiled_goals(compiled: dict[str, Any] | None) -> list[str]:
    """Issue 11's bars for compiled chains on CPU, from ``speed_compiled.json``, with the ceilings."""
    rows = (compiled or {}).get("rows", [])
    if not rows:
        return []

    def ceiling(r: dict[str, Any], key: str) -> str:
        return f" (ceiling {r[key]:.1f}×)" if r.get(key) else ""

    lines = []
    small = [r for r in rows if r.get("speedup_vs_peer") and r["parameters"] <= 10_000]
    if small:
        ok = all(r["speedup_vs_peer"] >= 10 and r.get("marginal_speedup_vs_peer", 0) >= 5 for r in small)
        text = "; ".join(
            f"{r['model']} {r['speedup_vs_peer']:.1f}×{ceiling(r, 'ceiling_whole_call_vs_peer')} whole call, "
            f"{_f(r.get('marginal_speedup_vs_peer'), '.1f')}×"
            f"{ceiling(r, 'ceiling_per_step_vs_peer')} per step"
            for r in small
        )
        lines.append(
            "| compiled, ≤ 10k parameters: ≥ 10× devinterp whole call, ≥ 5× per step (CPU) "
            f"| {text} | {'yes' if ok else '**no**'} |"
        )
    big = [r for r in rows if r.get("speedup_vs_peer") and 50_000 <= r["parameters"] <= 200_000]
    for r in big:
        lines.append(
            f"| compiled, {r['model']}: ≥ 2× devinterp whole call (CPU) "
            f"| {r['speedup_vs_peer']:.1f}×{ceiling(r, 'ceiling_whole_call_vs_peer')} "
            f"| {'yes' if r['speedup_vs_peer'] >= 2 else '**no**'} |"
        )
    for r in rows:
        if r["model"] == "mlp-10k" and r.get("ratio_slt_chains_to_floor"):
            lines.append(
                "| compiled, mlp-10k: ≤ 0.5× the eager floor per chain-step (CPU) "
                f"| {r['ratio_slt_chains_to_floor']:.2f} (the compiled gradient alone: "
                f"{_f(r.get('gradient_floor_us', math.nan) / r['floor_us_per_step'], '.2f')}) "
                f"| {'yes' if r['ratio_slt_chains_to_floor'] <= 0.5 else '**no**'} |"
            )
    return lines


def scaling_section(scaling: dict[str, Any], title: str) -> list[str]:
    lines = [f"## {title}", ""]
    if scaling.get("parameters"):
        lines += [
            "Time per chain-step against parameter count (two-hidden-layer MLP, batch 256, 4 chains):",
            "",
            "| params | draws | slt sequential µs | slt vectorized µs "
            "| slt sequential, no control variate µs "
            "| floor µs | devinterp µs | seq / floor | vec / floor | speedup vs devinterp |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in scaling["parameters"]:
            lines.append(
                f"| {r['parameters']} | {r['draws']} | {_f(r.get('sequential_us_per_chain_step'), '.0f')} "
                f"| {_f(r.get('vectorized_us_per_chain_step'), '.0f')} "
                f"| {_f(r.get('sequential_no_cv_us_per_chain_step'), '.0f')} "
                f"| {_f(r.get('floor_us_per_chain_step'), '.0f')} "
                f"| {_f(r.get('devinterp_us_per_chain_step'), '.0f')} "
                f"| {_f(r.get('ratio_sequential_to_floor'), '.2f')} "
                f"| {_f(r.get('ratio_vectorized_to_floor'), '.2f')} | {_f(r.get('speedup_vs_peer'), '.1f')} |"
            )
        lines.append("")
    if scaling.get("chains"):
        rule = scaling.get("rule", {})
        lines += [
            "Sequential against vectorized chains (µs per chain-step; batch 256). "
            "The auto rule vectorizes on CPU "
            f"with ≥ {rule.get('VECTORIZE_CPU_MIN_CHAINS')} chains and params × batch ≤ "
            f"{_f(rule.get('VECTORIZE_CPU_MAX_WORK'), '.0e')}.",
            "",
            "| model | params | chains | sequential | vectorized | vec speedup | winner | auto picks "
            "| auto cost |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in scaling["chains"]:
            mark = "" if r["auto_right"] else " ✗"
            lines.append(
                f"| {r['model']} | {r['parameters']} | {r['chains']} "
                f"| {_f(r['sequential_us_per_chain_step'], '.0f')} "
                f"| {_f(r['vectorized_us_per_chain_step'], '.0f')} | {_f(r['vectorized_speedup'], '.2f')} "
                f"| {r['winner']} | {r['auto_picks']}{mark} | {_f(r['auto_loss'], '.2f')}× |"
            )
        wrong = [r for r in scaling["chains"] if not r["auto_right"] and r["auto_loss"] > 1.1]
        lines += [
            "",
            f"auto picked the slower mode by more than 10% in {len(wrong)} of {len(scaling['chains'])} cells"
            + (
                ": "
                + "; ".join(f"{r['model']} × {r['chains']} chains ({r['auto_loss']:.2f}×)" for r in wrong)
                if wrong
                else "."
            ),
            "",
        ]
    return lines


def build(folder: Path = RESULTS) -> str:
    acc = _load(folder, "accuracy.json")
    speed = _load(folder, "speed.json")
    scaling = _load(folder, "scaling.json")
    lines = [
        "# slt benchmarks",
        "",
        "Generated by `python benchmarks/report.py` from the JSON files beside this report. "
        "Reproduce with `python benchmarks/run_all.py` (see benchmarks/README.md).",
        "",
    ]
    meta = next((d["meta"] for d in (acc, speed, scaling) if d), None)
    if meta:
        lines += [
            f"Measured {meta.get('time')} on {meta.get('machine')} with {meta.get('cpu_count')} CPUs, "
            f"{meta.get('threads')} torch thread(s), Python {meta.get('python')}, torch {meta.get('torch')}; "
            f"peer: {str(meta.get('peer')).rstrip('.')}. Quick mode: {meta.get('quick')}.",
            "",
        ]
    defaults = current_defaults(folder)
    goal_lines = goals(acc, speed, scaling)
    compiled = _load(folder, "speed_compiled.json")
    lines += goal_lines[:-1] + compiled_goals(compiled) + defaults_goals(defaults) + [""]
    if defaults:
        lines += defaults_section(defaults)
    if acc:
        lines += accuracy_section(acc)
    if speed:
        lines += speed_section(speed, "Speed against devinterp and the floor (CPU)")
    for extra in sorted(folder.glob("speed_*.json")):
        lines += speed_section(json.loads(extra.read_text()), f"Speed ({extra.stem.split('_', 1)[1]})")
    if scaling:
        lines += scaling_section(scaling, "Scaling (CPU)")
    for extra in sorted(folder.glob("scaling_*.json")):
        lines += scaling_section(json.loads(extra.read_text()), f"Scaling ({extra.stem.split('_', 1)[1]})")
    notes = folder / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    folder = Path(args.results)
    path = folder / "REPORT.md"
    path.write_text(build(folder))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
