"""The grokking example end to end on one seed: train, λ̂ at every checkpoint, detect, check, plot."""

import json
import warnings

import numpy as np
import pytest

from examples.grokking import grokking as g


@pytest.mark.slow
def test_one_seed_groks_and_the_llc_falls_while_test_accuracy_climbs(tmp_path):
    steps = g.checkpoint_steps(5000, num_log=16, num_linear=20)
    record = g.train(tmp_path / "run", seed=0, weight_decay=1.0, steps=steps)
    assert len(record.steps) == len(steps) and len(list((tmp_path / "run").glob("*.safetensors"))) == len(
        steps
    )
    # memorizes early, then groks: test accuracy climbs from 10% to 90% between steps 1000 and 5000
    assert record.train_acc[g.memorized_at(record)] >= 0.99 and record.steps[g.memorized_at(record)] <= 600
    window = g.grokking_window(record)
    assert window is not None
    lo, hi = window
    assert 1000 <= record.steps[lo] < record.steps[hi] <= 5000

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short chains at early checkpoints may be flagged as unconverged
        record = g.llc_curve(record, num_draws=100, num_burnin=50)
    llc = np.asarray(record.llc)
    assert np.isfinite(llc).all() and (np.asarray(record.llc_stderr) > 0).all()
    events = g.detect(record, n_bootstrap=20)
    check = g.check_grokking_claim(record, events)
    assert check["hit"], (window, [str(e) for e in events])
    event = check["event"]
    assert event["direction"] == "fall" and event["rel_delta"] < -0.5
    assert lo - 1 <= event["step_index"] <= hi + 1
    # the memorization rise is flagged too, before the fall
    assert any(e.direction == "rise" and e.step < event["step"] for e in events)

    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["llc"] == record.llc and len(saved["events"]) == len(events)
    g.plot_runs([(record, events)], tmp_path / "grokking.png")
    assert (tmp_path / "grokking.png").stat().st_size > 10_000
