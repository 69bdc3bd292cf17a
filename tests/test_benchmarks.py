"""The benchmark code itself works: tiny configurations, without devinterp, in a few seconds."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_accuracy  # noqa: E402
import bench_scaling  # noqa: E402
import bench_speed  # noqa: E402
import common  # noqa: E402
import report  # noqa: E402

from slt.oracles import regression_data  # noqa: E402
from tests.test_accuracy import normal_crossing_exact as reference_quadrature  # noqa: E402


@pytest.fixture
def no_devinterp(monkeypatch):
    """Make ``import devinterp`` fail, as in an environment without it."""
    monkeypatch.setitem(sys.modules, "devinterp", None)


def test_peer_status_says_devinterp_is_missing(no_devinterp):
    available, note = common.peer_status()
    assert available is False
    assert "not installed" in note and "skipped" in note


def test_normal_crossing_quadrature_matches_the_accuracy_tests_and_sits_below_lambda():
    x, y = regression_data(10_000, seed=0)
    n_beta = 10_000 / math.log(10_000)
    ours = bench_accuracy.normal_crossing_exact(x, y, 2, n_beta, 4.0)
    assert ours == pytest.approx(reference_quadrature(x, y, n_beta, 4.0), rel=1e-12)
    # K = w1² w2² (λ = 1/2, m = 2) at finite β lies below λ; so does w1² w2⁶ (λ = 1/6)
    assert 0 < bench_accuracy.normal_crossing_exact(x, y, 1, n_beta, 1.0) < 0.5
    assert 0 < bench_accuracy.normal_crossing_exact(x, y, 3, n_beta, 1.0) < 1 / 6


def test_mlp_with_params_hits_the_target_size():
    for target in (1_000, 10_000, 100_000):
        assert abs(common.num_params(common.mlp_with_params(target)) - target) / target < 0.05


def test_tiny_transformer_and_token_loss():
    (tokens,) = common.token_problem(8)
    model = common.TinyTransformer()
    assert 100_000 < common.num_params(model) < 120_000
    assert model(tokens).shape == (8, 17, 64)
    loss = common.next_token_loss(model, (tokens,))
    assert loss.ndim == 0 and math.isfinite(float(loss.detach()))


def test_accuracy_case_runs_and_scores_relative_error(no_devinterp):
    case = bench_accuracy.dln_case([3, 2, 3], 1, 500, calibrate=False)
    row = bench_accuracy.run_case(case, ("slt_default", "slt_calibrate", "devinterp_default"), peer=False)
    assert set(row["results"]) == {"slt_default"}  # no calibration here, no peer without devinterp
    r = row["results"]["slt_default"]
    assert r["rel_error"] == pytest.approx((r["estimate"] - case.truth) / case.truth)
    assert r["grad_evals"] > 4 * 2000
    summary = bench_accuracy.summarize([row])
    assert summary["dln"]["slt_default"]["mean_abs_rel_error"] == pytest.approx(abs(r["rel_error"]))


def test_speed_and_scaling_measure_without_the_peer(tmp_path, no_devinterp):
    torch.set_num_threads(1)
    case = next(c for c in bench_speed.models(quick=True) if c["name"] == "dln-100")
    row = bench_speed.measure(case, draws=5, chains=2, repeats=1, device="cpu", peer=False)
    assert row["parameters"] == 100 and row["floor_us_per_step"] > 0
    assert row["ratio_slt_chains_to_floor"] > 0 and "speedup_vs_peer" not in row
    sweep = bench_scaling.parameter_sweep([1_000], quick=True, repeats=1, device="cpu", peer=False)
    assert sweep[0]["sequential_us_per_chain_step"] > 0 and sweep[0]["vectorized_us_per_chain_step"] > 0
    assert "devinterp_us_per_chain_step" not in sweep[0]

    meta = common.environment("cpu")
    common.write_json("speed.json", {"meta": meta, "peer_note": "skipped", "rows": [row]}, tmp_path)
    common.write_json("scaling.json", {"meta": meta, "parameters": sweep}, tmp_path)
    assert json.loads((tmp_path / "speed.json").read_text())["rows"][0]["model"] == "dln-100"
    text = report.build(tmp_path)
    assert "## Goals" in text and "| dln-100 | 100 |" in text
    assert "devinterp not measured" in text
    # the compute floor: the gradient alone, eager and compiled, beside slt's full step
    assert row["gradient_eager_us"] > 0 and row["gradient_compiled_us"] > 0 and row["gradient_stacked_us"] > 0
    assert row["gradient_floor_us"] == min(row["gradient_compiled_us"], row["gradient_stacked_us"])
    assert "| dln-100 | " + format(row["gradient_eager_us"], ".0f") + " | " in text


def test_compiled_goals_score_issue_11s_bars_with_the_ceilings():
    def row(model, parameters, whole, per_step, ceiling_whole, ceiling_step, floor_ratio=0.6):
        return {
            "model": model,
            "parameters": parameters,
            "speedup_vs_peer": whole,
            "marginal_speedup_vs_peer": per_step,
            "ceiling_whole_call_vs_peer": ceiling_whole,
            "ceiling_per_step_vs_peer": ceiling_step,
            "ratio_slt_chains_to_floor": floor_ratio,
            "gradient_floor_us": 200.0,
            "floor_us_per_step": 400.0,
        }

    lines = report.compiled_goals(
        {"rows": [row("mlp-1k", 1027, 17.0, 12.0, 90.0, 12.0), row("mlp-10k", 9997, 6.4, 3.4, 7.0, 3.7)]}
    )
    small = next(line for line in lines if line.startswith("| compiled, ≤ 10k"))
    assert "mlp-10k 6.4× (ceiling 7.0×) whole call, 3.4× (ceiling 3.7×) per step" in small
    assert small.endswith("| **no** |")
    floor = next(line for line in lines if "0.5× the eager floor" in line)
    assert "0.60 (the compiled gradient alone: 0.50)" in floor and floor.endswith("| **no** |")
    lines = report.compiled_goals({"rows": [row("transformer-110k", 109440, 2.1, 1.5, 3.0, 1.6)]})
    assert lines == [
        "| compiled, transformer-110k: ≥ 2× devinterp whole call (CPU) | 2.1× (ceiling 3.0×) | yes |"
    ]
    assert report.compiled_goals(None) == []


def test_batch_rule_table_scores_each_batch_against_256():
    import bench_batch_rule

    def row(batch, per_second, rule=False):
        return dict(
            case="c",
            n=10_000,
            num_params=2,
            n_beta=1086.0,
            batch_size=batch,
            rule=rule,
            step_size=1e-3,
            seconds_per_chain_step=1e-3,
            simulated_time_per_1000_steps=1.0,
            simulated_time_per_second=per_second,
        )

    table = bench_batch_rule.markdown([row(256, 0.5), row(1086, 2.0, rule=True), row(10_000, 1.0)])
    lines = table.splitlines()
    assert lines[2].endswith("| 1.00× |")
    assert "1,086 (rule)" in lines[3] and lines[3].endswith("| 4.00× |")
    assert "10,000 (all)" in lines[4] and lines[4].endswith("| 2.00× |")


def test_report_scores_the_current_defaults_against_issue_10s_bars(tmp_path):
    def family(worst, mean=0.02, coverage=1.0):
        return dict(
            runs=4,
            mean_abs_error_vs_exact=mean,
            worst_abs_error_vs_exact=worst,
            coverage=coverage,
            max_grad_evals=1000,
            unconverged=0,
        )

    env = {"time": "2026-12-03 10:00:00"}
    summary = {"dln": family(0.09, coverage=0.75)}
    common.write_json("defaults_lastsegment_dln.json", {"environment": env, "summary": summary}, tmp_path)
    summary = {"normal_crossing": family(0.077), "regression": family(0.02, mean=0.01)}
    common.write_json("defaults_minibatch_nc_reg.json", {"environment": env, "summary": summary}, tmp_path)
    later = {"regression": family(0.011, mean=0.005)}  # a later run of one family replaces its row
    common.write_json("defaults_reg_all.json", {"environment": env, "summary": later}, tmp_path)
    large = {"dln_1e5": family(0.031, mean=0.03)}  # reported beside the others, with no bar of its own
    common.write_json("defaults_lm_dln1e5.json", {"environment": env, "summary": large}, tmp_path)
    lines = report.build(tmp_path).splitlines()
    large_title = "| deep linear network 8-8-8-8, n = 1e5 (reported, no bar)"
    assert not any(line.startswith(f"{large_title}, defaults") for line in lines)
    assert any(line.startswith(f"{large_title} | 4 | 3.0% | 3.1% |") for line in lines)

    def goal(title):
        return next(line for line in lines if line.startswith(f"| {title}, defaults"))

    assert goal("deep linear networks").endswith("| yes |")
    crossing = goal("normal crossings")
    assert "every run within 5%" in crossing and "worst 7.7%" in crossing and crossing.endswith("| **no** |")
    regressions = goal("regressions")
    assert "worst 1.1%" in regressions and "defaults_reg_all.json" in regressions
    assert regressions.endswith("| yes |")
    assert sum(line.startswith("| regressions, defaults") for line in lines) == 1
    # coverage pooled over runs, the family without a bar included: (3 + 4 + 4 + 4) / 16
    assert "| 94% of 16 | yes |" in "\n".join(lines)
    assert "## The defaults against exact finite-nβ targets (current code)" in lines


def test_calibrate_table_shows_how_many_times_the_ladder_doubled():
    import bench_calibrate

    row = dict(
        case="dln 10-5-10 r=1 n=1e4",
        calibrate_seconds=95.3,
        ladder_doublings={"1": 1},
        step_size=4.33e-5,
        calibrated_lengths=[6350, 6400],
        estimate_seconds=12.4,
        num_burnin=7500,
        num_draws=8000,
        llc=20.23,
        stderr=0.32,
        interval=[18.64, 22.64],
        exact=20.25,
        error_vs_exact=-0.001,
        llc_extrapolated=19.05,
        warnings=["ConvergenceWarning: calibrate: no step was stable"],
    )
    # calibration's own lengths, then the estimate's seconds and its automatic length at the calibrated step
    others = dict(row, ladder_doublings={}, warnings=[], llc_extrapolated=None)  # NaN is null in the JSON
    lines = bench_calibrate.markdown([row, others]).splitlines()
    assert lines[2].startswith(
        "| dln 10-5-10 r=1 n=1e4 | 95 | γ=1: 1 | 4.33e-05 | 6350 + 6400 | 12 | 7500 + 8000 | 20.23 ± 0.3"
    )
    assert lines[2].endswith("| -0.1% | 19.05 | ConvergenceWarning |")
    assert "| 95 | 0 |" in lines[3] and lines[3].endswith("| nan | — |")


def test_step_multiples_table_counts_false_alarms_and_misses_at_the_threshold():
    import bench_step_multiples

    base = dict(case="nc", step_size=1e-3, llc=1.0, stderr=0.01, exact=1.0, warnings=[])
    rows = [
        dict(base, multiple=1, predicted_bias=0.05, error_vs_exact=0.01),
        dict(base, multiple=4, predicted_bias=0.25, error_vs_exact=0.02, warnings=["StepSizeWarning"]),
        dict(base, multiple=6, predicted_bias=0.35, error_vs_exact=0.30, warnings=["StepSizeWarning"]),
        dict(base, multiple=3, predicted_bias=0.15, error_vs_exact=0.12),
        dict(case="nc", multiple=8, raised="ChainDivergenceError: all 4 chains diverged"),
    ]
    text = bench_step_multiples.markdown(rows, threshold=0.2)
    assert "| nc | 4 | 0.001 | 25% | 1 ± 0.01 | 1 | +2.0% | StepSizeWarning |" in text
    assert "raised: ChainDivergenceError" in text
    assert "At 20% (the warning's threshold): 2 of 4 runs above it, 1 of those within 5% of the exact" in text
    assert (
        "At 50% (the former threshold): 0 of 4 runs above it, 0 of those" in text and "2 runs at or" in text
    )


def test_auto_compile_table_compares_the_default_with_eager_chains():
    import bench_auto_compile

    row = dict(
        case="nc",
        seed=0,
        exact=0.36,
        eager=dict(llc=0.37, stderr=0.01, seconds=20.0, steps_per_chain=32000, warnings=[]),
        default=dict(llc=0.371, stderr=0.01, seconds=8.0, steps_per_chain=32000, warnings=[]),
        ratio=0.4,
        difference_in_stderrs=0.07,
        compile="compiled from step 7500",
        chain_mode=("vectorized", "vectorized"),
    )
    raised = dict(case="broken", seed=0, exact=math.nan, eager=dict(raised="ValueError: x"), default={})
    text = bench_auto_compile.markdown([row, raised], {"torch": "2.13", "device": "cpu"})
    assert "| nc | 32,000 / 32,000 | 20.0 | 8.0 | 0.40 | compiled from step 7500 |" in text
    assert "raised: ValueError: x" in text
    assert "All cases: 20 s eager, 8 s with the default (0.40×); 1 of 2 switched" in text


def test_dos_defaults_table_shows_the_form_used_and_the_log_forms_reading():
    import bench_dos_defaults

    row = dict(
        case="tanh MLP 8-24-1",
        params=241,
        n=1000,
        dos_seconds=46.6,
        fit_form="power",
        dos_llc=17.75,
        dos_llc_stderr=0.11,
        fit_window=[0.0045, 1.9],
        log_llc=83.68,
        log_multiplicity=291.0,
        dos_warnings=["ConvergenceWarning", "FitWarning"],
        llc=17.14,
        llc_stderr=0.17,
        llc_seconds=7.0,
        llc_warnings=[],
    )
    resolved = dict(row, fit_form="log", log_llc=None, log_multiplicity=None, dos_warnings=[])
    lines = bench_dos_defaults.markdown([row, resolved]).splitlines()
    assert lines[2] == (
        "| tanh MLP 8-24-1 | 241 | 1000 | 46.6 | 17.75 ± 0.11 (power, t in [0.0045, 1.9]) | 83.68, 291 "
        "| ConvergenceWarning, FitWarning | 17.14 ± 0.17 | — |"
    )
    assert "| 17.75 ± 0.11 (log, t in [0.0045, 1.9]) | – | — |" in lines[3]
