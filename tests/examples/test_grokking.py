"""The grokking example end to end on one seed: train, λ̂ at every checkpoint, detect, check, plot."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from examples.grokking import grokking as g


@pytest.mark.slow
def test_one_seed_groks_and_the_llc_falls_while_test_accuracy_climbs(tmp_path):
    # the example's own budget: how soon a seed groks depends on the processor's floating point (on one
    # machine seed 0 passed 90% test accuracy by step 5,000, on another only by step 7,000)
    steps = g.checkpoint_steps(10_000, num_log=16, num_linear=20)
    record = g.train(tmp_path / "run", seed=0, weight_decay=1.0, steps=steps)
    assert len(record.steps) == len(steps) and len(list((tmp_path / "run").glob("*.safetensors"))) == len(
        steps
    )
    # memorizes early, then groks: test accuracy climbs from 10% to 90% between steps 1000 and 10,000
    assert record.train_acc[g.memorized_at(record)] >= 0.99 and record.steps[g.memorized_at(record)] <= 600
    window = g.grokking_window(record)
    assert window is not None
    lo, hi = window
    assert 1000 <= record.steps[lo] < record.steps[hi] <= 10_000

    # the main job's path: every setting chosen by the library once for the run and held fixed
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")  # a checkpoint may be flagged (unconverged, γ-dependent): kept below
        trajectory = g.llc_curve(record)
    assert (tmp_path / "run" / "slt-results.sqlite").exists() and len(trajectory) == len(steps)
    chosen_settings = record.llc_reference["chosen"]
    assert chosen_settings["localization"] >= 10 and chosen_settings["num_draws"] >= 100
    assert [w for w in trajectory.warnings if w[1] in ("LeftBasinWarning", "NotAMinimumWarning")] == []
    llc = np.asarray(record.llc)
    assert np.isfinite(llc).all() and (np.asarray(record.llc_stderr) > 0).all()
    np.testing.assert_array_equal(llc, trajectory.llc_mean)
    events = g.detect(record, n_bootstrap=20)
    check = g.check_grokking_claim(record, events)
    assert check["hit"], (window, [str(e) for e in events])
    event = check["event"]
    assert event["direction"] == "fall" and event["rel_delta"] < -0.5
    assert lo - 1 <= event["step_index"] <= hi + 1
    # the memorization rise is flagged too, before the fall
    assert any(e.direction == "rise" and e.step < event["step"] for e in events)
    # read straight off the trajectory (per-chain estimates, chain bootstrap), the same events
    direct = trajectory.transitions(value_scale="log", n_bootstrap=20)
    assert [(e.direction, e.step_index) for e in direct] == [(e.direction, e.step_index) for e in events]

    record.save()
    saved = g.RunRecord.load(tmp_path / "run")
    assert saved.llc == record.llc and saved.events == [e.to_dict() for e in events]
    g.plot_runs([(record, events)], tmp_path / "grokking.png")
    assert (tmp_path / "grokking.png").stat().st_size > 10_000

    # the density of states at the λ̂ peak and at the last checkpoint: it falls as λ̂ does
    chosen = g.dos_checkpoints(record)
    assert chosen[0] == int(np.argmax(record.llc)) and chosen[-1] == len(steps) - 1
    assert lo in chosen and hi in chosen
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few draws: the replicas may not make a round trip
        results = g.dos_at(record, [chosen[0], chosen[-1]], num_draws=60, num_bootstrap=10)
    peak, last = g.RunRecord.load(tmp_path / "run").dos
    assert [peak["step"], last["step"]] == [record.steps[chosen[0]], record.steps[-1]]
    assert np.isfinite([peak["dos_llc"], last["dos_llc"], peak["x_mean_t"], last["x_mean_t"]]).all()
    assert last["dos_llc"] < 0.2 * peak["dos_llc"] and last["x_mean_t"] < 0.2 * peak["x_mean_t"]
    assert last["fit_window"][1] < peak["fit_window"][0]  # the late curve lives at much smaller t
    n = len(g.modular_addition(seed=0)[0][0])
    assert peak["n_beta"] == pytest.approx(n / np.log(n), rel=0.1)  # the rung nearest nβ* = n / log n
    g.plot_dos([(record, results)], tmp_path / "dos.png")
    assert (tmp_path / "dos.png").stat().st_size > 10_000
    assert "| seed 0, wd 1 |" in g.dos_markdown([record])


RESULTS = Path(g.__file__).parent / "results"


def _stored(seed: int, weight_decay: str) -> g.RunRecord:
    return g.RunRecord(**json.loads((RESULTS / f"seed{seed}_wd{weight_decay}.json").read_text()))


def test_stored_five_seed_study_reproduces_with_the_current_detector():
    """The λ̂ curves measured by the 5-seed study (examples/grokking/results) give the reported events."""
    hits = 0
    grok_slopes, control_slopes = [], []
    for seed in range(5):
        run = _stored(seed, "1")
        events = g.detect(run, n_bootstrap=0)
        check = g.check_grokking_claim(run, events)
        if check["grokked"]:
            hits += check["hit"]
            grok_slopes.append(-check["event"]["peak_slope"])
            assert min(run.llc[-5:]) < 0.1 * max(run.llc)  # λ̂ ends near zero after grokking
        control = _stored(seed, "0.3")
        control_events = g.detect(control, n_bootstrap=0)
        falls = [e for e in control_events if e.direction == "fall"]
        control_slopes += [-e.peak_slope for e in falls]
        # measured, and reported: the control's λ̂ also falls after memorizing (train loss still falling),
        # but it levels off at a fifth or more of its peak and has no fall once the loss has settled
        peak = int(np.argmax(control.llc))
        assert min(control.llc[peak:]) > 0.15 * control.llc[peak]
        assert all(e.end <= 2000 for e in falls)
    assert hits >= 4
    # in decades of λ̂ per decade of steps, every grokking fall is steeper than every control fall
    assert min(grok_slopes) > 2 * max(control_slopes)


def test_main_runs_the_runs_side_by_side_and_reports_them_in_order(tmp_path):
    """The main job's runs go to two worker processes and come back in order (stored λ̂ curves, --reuse)."""
    for weight_decay in ("1", "0.3"):
        record = _stored(0, weight_decay)
        record.folder = str(tmp_path / f"seed0_wd{weight_decay}")
        Path(record.folder).mkdir()
        record.save()
    done = subprocess.run(
        [sys.executable, g.__file__, "--out", str(tmp_path), "--reuse", "--no-dos", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "2 runs in" in done.stdout and "on 2 worker process(es)" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(row["seed"], row["weight_decay"]) for row in summary] == [(0, 1.0), (0, 0.3)]
    # the same claims as the example's functions give in this process
    grokking, control = _stored(0, "1"), _stored(0, "0.3")
    expected = g.check_grokking_claim(grokking, g.detect(grokking))
    assert summary[0]["hit"] == expected["hit"] and summary[0]["climb_steps"] == list(expected["climb_steps"])
    assert summary[0]["event"]["step"] == pytest.approx(expected["event"]["step"])
    assert summary[1]["memorized_step"] == g.check_control_claim(control, g.detect(control))["memorized_step"]
    events = (tmp_path / "events.md").read_text()
    assert events.index("### seed 0, weight decay 1\n") < events.index("### seed 0, weight decay 0.3\n")
    assert (tmp_path / "grokking.png").stat().st_size > 10_000
    assert not (tmp_path / "dos.md").exists()
