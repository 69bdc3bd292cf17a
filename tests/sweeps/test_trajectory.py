"""analyze_checkpoints and Trajectory: crash safety, failures, executors, seeds, and the result object."""

import csv
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import slt
from slt.sweeps.measures import checkpoint_seed
from slt.sweeps.store import ResultStore
from slt.sweeps.trajectory import CheckpointFailedWarning, Trajectory, analyze_checkpoints
from tests.sweeps.fixtures import (
    TINY,
    gaussian_nll,
    held_out_data,
    make_model,
    make_model_slowly,
    make_wide_model,
    regression_data,
    train_and_save,
)

# the tiny chains used here are not converged and early checkpoints are not minima; those warnings are
# tested on their own (test_llc.py, test_warnings_name_the_steps below)
pytestmark = [
    pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::slt.warnings.NotAMinimumWarning"),
]

ROOT = str(Path(__file__).resolve().parents[2])
SWEEP = dict(loss_fn=gaussian_nll, measures=("llc", "loss"), progress=False, **TINY)


@pytest.fixture(scope="module")
def twenty(tmp_path_factory):
    """Twenty checkpoints of a small regression MLP and the uninterrupted serial sweep over them."""
    folder = tmp_path_factory.mktemp("ckpts")
    train_and_save(folder, count=20)
    start = time.perf_counter()
    reference = analyze_checkpoints(
        folder,
        make_model,
        regression_data(),
        test_data=held_out_data(),
        store=folder.parent / "reference.sqlite",
        **SWEEP,
    )
    reference.seconds_taken = time.perf_counter() - start
    return folder, reference


def _numbers(record):
    """Everything a result says about the checkpoint, without wall times."""
    llc = {k: v for k, v in record.payload["llc"].items() if k != "seconds"}
    return record.step, record.summary, llc, record.payload["seeds"]


def _assert_same_results(trajectory, reference):
    assert len(trajectory) == len(reference) == 20
    assert trajectory.ok.all()
    for got, want in zip(trajectory.records, reference.records):
        assert _numbers(got) == _numbers(want)


def test_reference_sweep_holds_twenty_results(twenty):
    _, reference = twenty
    assert len(reference) == 20 and reference.ok.all()
    np.testing.assert_array_equal(reference.steps, np.arange(0, 100, 5))
    assert np.isfinite(reference.llc_mean).all() and np.isfinite(reference.llc_stderr).all()
    assert np.isfinite(reference.test_loss).all()
    # training lowers the loss: the last checkpoint fits far better than the first
    assert reference.train_loss[-1] < 0.1 * reference.train_loss[0]
    llc_results = reference.llc
    assert all(isinstance(r, slt.LLCResult) for r in llc_results)
    assert llc_results[3].mean == reference.llc_mean[3]
    assert llc_results[3].settings.seed == checkpoint_seed(0, 15)
    assert llc_results[3].trace.shape == (TINY["num_chains"], TINY["num_draws"])
    assert reference.train_loss[3] == pytest.approx(llc_results[3].init_loss)


def test_sigkill_midway_then_rerun_completes_with_exactly_the_uninterrupted_results(twenty, tmp_path):
    folder, reference = twenty
    store_path = tmp_path / "killed.sqlite"
    script = (
        "import torch, warnings\n"
        "torch.set_num_threads(1)\n"
        "warnings.simplefilter('ignore')\n"
        "from tests.sweeps.fixtures import *\n"
        "import slt\n"
        f"slt.analyze_checkpoints({str(folder)!r}, make_model_slowly, regression_data(),\n"
        "    test_data=held_out_data(), loss_fn=gaussian_nll, measures=('llc', 'loss'),\n"
        f"    store={str(store_path)!r}, progress=False, **TINY)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stderr=subprocess.PIPE,
    )
    committed = 0
    deadline = time.monotonic() + 120
    try:
        while committed < 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the sweep committed nothing within two minutes"
            time.sleep(0.02)
            try:
                with sqlite3.connect(store_path) as reader:
                    committed = reader.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.OperationalError:  # the file or its tables do not exist yet
                continue
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    with ResultStore(store_path) as store:
        (run,) = store.runs()
        before = {r.checkpoint_id: r.finished for r in store.results(run.settings_hash)}
        assert all(status == "done" for status in store.statuses(run.settings_hash).values())
    assert 3 <= len(before) < 20, f"the kill did not land midway ({len(before)} results committed)"
    print(f"killed with {len(before)} of 20 results committed")

    resumed = analyze_checkpoints(
        folder, make_model_slowly, regression_data(), test_data=held_out_data(), store=store_path, **SWEEP
    )
    with ResultStore(store_path) as store:
        assert store.count() == 20
        rows = store.results(run.settings_hash)
        assert len({r.step for r in rows}) == 20 and len({r.checkpoint_id for r in rows}) == 20
        # the results committed before the kill were kept, not computed again
        assert {r.checkpoint_id: r.finished for r in rows if r.checkpoint_id in before} == before
    _assert_same_results(resumed, reference)
    _assert_same_results(Trajectory.load(store_path), reference)


def test_corrupt_and_mismatched_checkpoints_fail_clearly_while_the_others_complete(tmp_path):
    paths = train_and_save(tmp_path / "ckpts", count=6)
    paths[2].write_bytes(paths[2].read_bytes()[:300])  # truncated while being copied
    torch.manual_seed(0)
    torch.save(make_wide_model().state_dict(), paths[4])  # a checkpoint of another architecture
    store_path = tmp_path / "r.sqlite"
    with pytest.warns(CheckpointFailedWarning, match="2 of 6 checkpoints failed") as caught:
        trajectory = analyze_checkpoints(
            tmp_path / "ckpts", make_model, regression_data(), store=store_path, **SWEEP
        )
    (failed_warning,) = [w for w in caught if w.category is CheckpointFailedWarning]
    assert "the others completed" in str(failed_warning.message) and ".." not in str(failed_warning.message)
    assert trajectory.ok.tolist() == [True, True, False, True, False, True]
    corrupt, mismatched = trajectory.failures
    assert corrupt.step == 10 and mismatched.step == 20
    assert (
        corrupt.error.startswith("CheckpointError: could not read")
        and "corrupt or truncated" in corrupt.error
    )
    assert str(paths[2]) in corrupt.error
    assert "does not fit the model built by model_factory" in mismatched.error
    assert "size mismatch for 0.weight: checkpoint (16, 3) vs model (8, 3)" in mismatched.error
    assert (
        np.isnan(trajectory.llc_mean[[2, 4]]).all() and np.isfinite(trajectory.llc_mean[[0, 1, 3, 5]]).all()
    )
    with ResultStore(store_path) as store:
        key = trajectory.settings_hash
        assert store.count(key, "done") == 4 and store.count(key, "failed") == 2
        stored = {r.step: r.error for r in store.results(key) if not r.ok}
    assert stored == {10: corrupt.error, 20: mismatched.error}
    frame = trajectory.to_dataframe()
    assert frame.loc[frame.step == 20, "error"].item() == mismatched.error

    # after fixing the files, a rerun retries only the failures
    train_and_save(tmp_path / "fixed", count=6)
    for i in (2, 4):
        paths[i].write_bytes((tmp_path / "fixed" / paths[i].name).read_bytes())
    rerun = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), store=store_path, **SWEEP)
    assert rerun.ok.all()
    assert [r.finished for r in rerun.records if r.step not in (10, 20)] == [
        r.finished for r in trajectory.records if r.ok
    ]


def test_a_pickled_checkpoint_fails_naming_the_opt_in_and_loads_with_it(tmp_path):
    paths = train_and_save(tmp_path / "ckpts", count=3)
    torch.manual_seed(0)
    whole = make_model()
    whole.load_state_dict(torch.load(paths[1], weights_only=True))
    torch.save(whole, paths[1])  # the whole module pickled, not a state dict
    with pytest.warns(CheckpointFailedWarning):
        safe = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), store=None, **SWEEP)
    (failure,) = safe.failures
    assert failure.step == 5 and "allow_pickle=True" in failure.error and "arbitrary code" in failure.error
    with pytest.warns(slt.UnsafeCheckpointWarning, match="allow_pickle=True"):
        trusted = analyze_checkpoints(
            tmp_path / "ckpts", make_model, regression_data(), store=None, allow_pickle=True, **SWEEP
        )
    assert trusted.ok.all()
    unsafe = [step for step, category, _ in trusted.warnings if category == "UnsafeCheckpointWarning"]
    assert unsafe == [5]


@pytest.mark.slow  # about 10 s: two fresh worker processes import torch and arviz
def test_process_pool_gives_the_serial_results(twenty, tmp_path):
    folder, reference = twenty
    with slt.process_pool(2) as pool:
        start = time.perf_counter()
        pooled = analyze_checkpoints(
            folder,
            make_model,
            regression_data(),
            test_data=held_out_data(),
            store=tmp_path / "pool.sqlite",
            executor=pool,
            **SWEEP,
        )
        seconds = time.perf_counter() - start
    _assert_same_results(pooled, reference)
    print(f"serial {reference.seconds_taken:.2f} s, process pool (2 workers) {seconds:.2f} s")


class _PollingExecutor:
    """Executor-like object whose futures are not concurrent.futures ones (as with submitit)."""

    class Job:
        def __init__(self, value):
            self._value = value
            self._polls = 0

        def done(self):
            self._polls += 1
            return self._polls > 1

        def result(self):
            return self._value

    def submit(self, fn, *args):
        return self.Job(fn(*args))


def test_any_executor_like_object_works_and_order_does_not_change_numbers(twenty):
    folder, reference = twenty
    trajectory = analyze_checkpoints(
        folder,
        make_model,
        regression_data(),
        test_data=held_out_data(),
        store=None,
        executor=_PollingExecutor(),
        **SWEEP,
    )
    _assert_same_results(trajectory, reference)
    # a subset in another order measures each checkpoint exactly as the full sweep did
    subset = sorted(Path(folder).glob("*.pt"))[::-3]
    partial = analyze_checkpoints(
        subset, make_model, regression_data(), test_data=held_out_data(), store=None, **SWEEP
    )
    wanted = {r.step: _numbers(r) for r in reference.records}
    assert all(_numbers(r) == wanted[r.step] for r in partial.records)


@pytest.mark.slow
def test_ray_gives_the_serial_results(twenty, tmp_path):
    ray = pytest.importorskip("ray")
    folder, reference = twenty
    start = time.perf_counter()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}},
    )
    started = time.perf_counter()
    try:
        on_ray = analyze_checkpoints(
            folder,
            make_model,
            regression_data(),
            test_data=held_out_data(),
            store=tmp_path / "ray.sqlite",
            executor="ray",
            **SWEEP,
        )
        assert ray.is_initialized()  # a Ray the caller started is left running
    finally:
        ray.shutdown()
    done = time.perf_counter()
    _assert_same_results(on_ray, reference)
    print(f"ray.init {started - start:.1f} s, sweep on Ray {done - started:.1f} s")


def test_rerun_skips_finished_work_and_new_settings_get_new_rows(tmp_path):
    train_and_save(tmp_path / "ckpts", count=4)
    store_path = tmp_path / "r.sqlite"
    first = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), store=store_path, **SWEEP)
    again = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), store=store_path, **SWEEP)
    assert [r.finished for r in again.records] == [r.finished for r in first.records]
    other = analyze_checkpoints(
        tmp_path / "ckpts", make_model, regression_data(), store=store_path, **{**SWEEP, "seed": 1}
    )
    assert other.settings_hash != first.settings_hash
    assert not np.array_equal(other.llc_mean, first.llc_mean)
    with ResultStore(store_path) as store:
        assert store.count() == 8 and len(store.runs()) == 2
    # the latest settings are the default; older ones stay reachable by hash
    np.testing.assert_array_equal(Trajectory.load(store_path).llc_mean, other.llc_mean)
    np.testing.assert_array_equal(
        Trajectory.load(store_path, first.settings_hash[:8]).llc_mean, first.llc_mean
    )


def test_a_replaced_file_is_measured_again_and_loading_shows_the_latest(tmp_path):
    paths = train_and_save(tmp_path / "ckpts", count=2)
    store_path = tmp_path / "r.sqlite"
    first = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), store=store_path, **SWEEP)
    torch.manual_seed(1)
    torch.save(make_model().state_dict(), paths[1])  # the run was restarted and overwrote step 5
    later = time.time() + 5
    os.utime(paths[1], (later, later))
    second = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), store=store_path, **SWEEP)
    assert second.records[0].finished == first.records[0].finished
    assert second.records[1].finished > first.records[1].finished
    assert second.llc_mean[1] != first.llc_mean[1]
    with ResultStore(store_path) as store:
        assert store.count() == 3
    loaded = Trajectory.load(store_path)
    np.testing.assert_array_equal(loaded.steps, [0, 5])
    np.testing.assert_array_equal(loaded.llc_mean, second.llc_mean)


def test_a_serial_sweep_leaves_the_callers_random_streams_alone(tmp_path):
    train_and_save(tmp_path / "ckpts", count=2)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), store=None, **SWEEP)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_trajectory_plot_marks_events_and_dataframe_has_one_row_per_checkpoint(twenty, tmp_path):
    _, reference = twenty
    frame = reference.to_dataframe()
    assert list(frame.step) == list(range(0, 100, 5))
    assert {"llc_mean", "llc_stderr", "train_loss", "test_loss", "status", "error"} <= set(frame.columns)
    np.testing.assert_array_equal(frame.llc_mean.to_numpy(), reference.llc_mean)

    class Event:
        start, end, step, direction = 20, 40, 30, "fall"

    fig = reference.plot(events=[Event(), 60])
    axes = fig.axes
    assert len(axes) == 4
    # step 0 is on the log axis, at a position labelled 0 (not on a symlog axis with negative ticks)
    assert axes[1].get_xscale() == "log" and axes[0].get_xscale() == "linear"
    _, y = axes[0].lines[0].get_data()
    # not-a-minimum estimates are kept off the scale (gaps in the line)
    np.testing.assert_array_equal(y, np.where(reference.not_a_minimum, np.nan, reference.llc_mean))
    markers = ("not a minimum", "failed")  # off-scale markers along the bottom, not events
    marked = [line.get_xdata()[0] for line in axes[0].lines[1:] if not line.get_label().startswith(markers)]
    assert marked == [30.0, 60.0]
    fig.savefig(tmp_path / "trajectory.png")
    assert (tmp_path / "trajectory.png").stat().st_size > 10_000
    assert "20 checkpoints" in repr(reference)


def test_warnings_name_the_steps_and_are_kept_per_checkpoint(tmp_path):
    train_and_save(tmp_path / "ckpts", count=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trajectory = analyze_checkpoints(
            tmp_path / "ckpts", make_model, regression_data(), store=None, **SWEEP
        )
    per_checkpoint = trajectory.warnings
    assert per_checkpoint, "tiny unconverged chains should raise convergence warnings"
    categories = {c for _, c, _ in per_checkpoint}
    emitted = [w for w in caught if issubclass(w.category, slt.SLTWarning)]
    assert {w.category.__name__ for w in emitted} == categories
    assert len(emitted) == len(categories)  # one warning per category, not one per checkpoint
    assert all("checkpoints (steps" in str(w.message) or "step" in str(w.message) for w in emitted)
    assert all(w.filename == __file__ for w in emitted)


def test_bad_arguments_fail_before_any_work(tmp_path):
    train_and_save(tmp_path / "ckpts", count=1)
    data = regression_data()
    with pytest.raises(ValueError, match=r"unknown estimator settings \['num_chain'\]"):
        analyze_checkpoints(tmp_path / "ckpts", make_model, data, loss_fn="mse", store=None, num_chain=2)
    with pytest.raises(ValueError, match="set by the sweep itself"):
        analyze_checkpoints(
            tmp_path / "ckpts",
            make_model,
            data,
            loss_fn="mse",
            store=None,
            progress=False,
            seed=1,
            **{"model": None},
        )
    with pytest.raises(ValueError, match="unknown measure .hessian."):
        analyze_checkpoints(
            tmp_path / "ckpts", make_model, data, loss_fn="mse", store=None, measures=("hessian",)
        )
    with pytest.raises(ValueError, match='add "loss" to measures'):
        analyze_checkpoints(tmp_path / "ckpts", make_model, data, loss_fn="mse", store=None, test_data=data)
    with pytest.raises(ValueError, match="num_draws must be"):
        analyze_checkpoints(tmp_path / "ckpts", make_model, data, loss_fn="mse", store=None, num_draws=0)
    with pytest.raises(ValueError, match=r"apply to the \"llc\" measure"):
        analyze_checkpoints(
            tmp_path / "ckpts", make_model, data, loss_fn="mse", store=None, measures="loss", num_draws=5
        )
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        analyze_checkpoints(tmp_path / "ckpts", make_model, data, loss_fn="mse", store=None, seed=-1)
    with pytest.raises(TypeError, match=r"concurrent\.futures-style submit"):
        analyze_checkpoints(tmp_path / "ckpts", make_model, data, loss_fn="mse", store=None, executor=4)
    assert not (tmp_path / "slt-results.sqlite").exists()


def test_loss_only_sweep_measures_train_and_test_loss(tmp_path):
    train_and_save(tmp_path / "ckpts", count=3)
    trajectory = analyze_checkpoints(
        tmp_path / "ckpts",
        make_model,
        regression_data(),
        loss_fn=gaussian_nll,
        measures="loss",
        test_data=held_out_data(),
        store=None,
        progress=False,
    )
    state = torch.load(tmp_path / "ckpts" / "step_00005.pt", weights_only=True)
    model = make_model()
    model.load_state_dict(state)
    with torch.no_grad():
        assert trajectory.train_loss[1] == pytest.approx(
            gaussian_nll(model, regression_data()).item(), rel=1e-6
        )
        assert trajectory.test_loss[1] == pytest.approx(gaussian_nll(model, held_out_data()).item(), rel=1e-6)
    assert np.isnan(trajectory.llc_mean).all() and trajectory.llc == [None, None, None]


def test_dos_results_are_stored_per_checkpoint_through_estimate_dos(tmp_path, monkeypatch):
    train_and_save(tmp_path / "ckpts", count=2)
    calls = []
    real_estimate_dos = slt.estimate_dos

    def recording_estimate_dos(model, data, *, loss_fn, seed, progress=True, **settings):
        calls.append((seed, settings, progress))
        return real_estimate_dos(model, data, loss_fn=loss_fn, seed=seed, progress=progress, **settings)

    monkeypatch.setattr(slt.dos, "estimate_dos", recording_estimate_dos)
    settings = {"num_chains": 2, "num_draws": 40}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short ladders may warn about overlap: this checks the plumbing only
        trajectory = analyze_checkpoints(
            tmp_path / "ckpts",
            make_model,
            regression_data(),
            loss_fn=gaussian_nll,
            measures=("llc", "dos"),
            dos_settings=settings,
            store=tmp_path / "dos.sqlite",
            progress=False,
            **TINY,
        )
    # one fit form at every checkpoint unless the settings give one
    swept = {**settings, "fit_form": "power"}
    assert calls == [(checkpoint_seed(0, s, 1), swept, False) for s in (0, 5)]
    assert all(d.fit_form == "power" for d in trajectory.dos)
    assert trajectory.ok.all(), trajectory.failures
    results = trajectory.dos
    assert all(isinstance(d, slt.DOSResult) for d in results)
    np.testing.assert_array_equal(trajectory.column("dos_llc"), [d.llc for d in results])
    assert all(np.isfinite(d.rung_llc).all() for d in results)
    assert np.isfinite(trajectory.llc_mean).all()
    reloaded = slt.Trajectory.load(tmp_path / "dos.sqlite")
    np.testing.assert_array_equal(reloaded.dos[1].log_density, results[1].log_density)


USER_DEFS = """
from torch import nn

def make_model():
    return nn.Sequential(nn.Linear(3, 8), nn.{act}(), nn.Linear(8, 1))

def loss(model, batch):
    x, y = batch
    return {scale} * ((model(x) - y) ** 2).sum(-1).mean()
"""


def test_an_edited_factory_or_loss_is_computed_again_not_read_from_the_store(tmp_path):
    import importlib.util

    train_and_save(tmp_path / "ckpts", count=2)
    store_path = tmp_path / "r.sqlite"
    sweep = {k: v for k, v in SWEEP.items() if k != "loss_fn"}

    def run(act, scale):
        (tmp_path / "defs.py").write_text(USER_DEFS.format(act=act, scale=scale))
        spec = importlib.util.spec_from_file_location("defs", tmp_path / "defs.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        # ReLU and Tanh agree on the saved weights' shapes: only the code tells the runs apart
        return analyze_checkpoints(
            tmp_path / "ckpts", module.make_model, regression_data(), loss_fn=module.loss, store=store_path,
            **sweep,
        )  # fmt: skip

    tanh = run("Tanh", 0.5)
    relu = run("ReLU", 0.5)
    assert relu.settings_hash != tanh.settings_hash
    assert not np.array_equal(relu.train_loss, tanh.train_loss)
    heavier = run("ReLU", 1.0)  # the loss body changed
    assert heavier.settings_hash != relu.settings_hash
    np.testing.assert_allclose(heavier.train_loss, 2 * relu.train_loss, rtol=1e-6)
    assert run("ReLU", 1.0).settings_hash == heavier.settings_hash  # unchanged code: results reused
    with ResultStore(store_path) as store:
        assert len(store.runs()) == 3 and store.count() == 6


def test_two_training_runs_in_one_store_stay_apart_in_load_and_the_report(tmp_path, capsys):
    from slt import cli

    train_and_save(tmp_path / "a", count=3)
    (tmp_path / "b").mkdir()
    for step in (0, 5, 10):  # another run: the same steps, other weights
        torch.manual_seed(100 + step)
        torch.save(make_model().state_dict(), tmp_path / "b" / f"step_{step:05d}.pt")
    store_path = tmp_path / "r.sqlite"
    run_a = analyze_checkpoints(tmp_path / "a", make_model, regression_data(), store=store_path, **SWEEP)
    run_b = analyze_checkpoints(tmp_path / "b", make_model, regression_data(), store=store_path, **SWEEP)
    assert run_a.settings_hash == run_b.settings_hash  # the same settings
    assert run_a.run == str((tmp_path / "a").resolve()) and run_b.run == str((tmp_path / "b").resolve())
    assert not np.array_equal(run_a.train_loss, run_b.train_loss)

    with pytest.raises(ValueError, match=r"holds 2 training runs .*steps 0-10.*run="):
        Trajectory.load(store_path)
    for name, want in (("a", run_a), ("b", run_b), (str(tmp_path / "b"), run_b)):
        loaded = Trajectory.load(store_path, run=name)
        assert loaded.run == want.run
        np.testing.assert_array_equal(loaded.steps, [0, 5, 10])
        np.testing.assert_array_equal(loaded.llc_mean, want.llc_mean)
        np.testing.assert_array_equal(loaded.train_loss, want.train_loss)

    assert cli.main(["report", str(store_path), "--out", str(tmp_path / "mixed")]) == 2
    assert "holds 2 training runs" in capsys.readouterr().err
    assert not (tmp_path / "mixed").exists()
    assert cli.main(["report", str(store_path), "--out", str(tmp_path / "rep"), "--run", "b"]) == 0
    with open(tmp_path / "rep" / "trajectory.csv") as fh:
        llc = [float(r["llc_mean"]) for r in csv.DictReader(fh)]
    np.testing.assert_allclose(llc, run_b.llc_mean, rtol=1e-12)


@pytest.fixture
def read_only(tmp_path):
    """Make a folder and its files unwritable (chattr +i as root, chmod otherwise); undone afterwards."""
    locked = []

    def lock(folder):
        paths = [*folder.iterdir(), folder]
        if os.geteuid() == 0:
            done = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"cannot make files read-only here: {done.stderr.decode().strip()}")
        else:
            for p in paths:
                os.chmod(p, 0o555 if p.is_dir() else 0o444)
        locked.extend(paths)
        try:
            (folder / "probe").write_text("x")
        except OSError:
            return
        pytest.skip("this file system lets the owner write read-only files")

    yield lock
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", *map(str, locked)], capture_output=True)
    else:
        for p in locked:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)


def test_a_read_only_store_can_be_loaded_and_reported(tmp_path, read_only, capsys):
    from slt import cli

    train_and_save(tmp_path / "ckpts", count=3)
    (tmp_path / "ro").mkdir()
    store_path = tmp_path / "ro" / "r.sqlite"
    swept = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), store=store_path, **SWEEP)
    before = store_path.read_bytes()
    read_only(tmp_path / "ro")
    loaded = Trajectory.load(store_path)
    np.testing.assert_array_equal(loaded.llc_mean, swept.llc_mean)
    assert cli.main(["report", str(store_path), "--out", str(tmp_path / "report")]) == 0, capsys.readouterr()
    assert (tmp_path / "report" / "trajectory.csv").exists()
    assert store_path.read_bytes() == before


def test_another_applications_sqlite_file_is_refused_untouched(tmp_path, capsys):
    from slt import cli

    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('ada')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for opener in (lambda: Trajectory.load(path), lambda: ResultStore(path)):
        with pytest.raises(ValueError, match=r"not an slt result store \(its tables: users\); slt left it"):
            opener()
    assert cli.main(["report", str(path), "--out", str(tmp_path / "report")]) == 2
    assert "not an slt result store" in capsys.readouterr().err
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["app.db"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert {n for (n,) in conn.execute("SELECT name FROM sqlite_master")} == {"users"}


def test_long_sweeps_compile_the_llc_chains_unless_told(tmp_path, monkeypatch):
    from slt.sweeps import trajectory as trajectory_module
    from slt.sweeps.trajectory import AUTO_COMPILE_MIN_CHECKPOINTS, compiles_by_default

    assert compiles_by_default(("llc",), {}, AUTO_COMPILE_MIN_CHECKPOINTS)
    assert not compiles_by_default(("llc",), {}, AUTO_COMPILE_MIN_CHECKPOINTS - 1)
    assert not compiles_by_default(("llc",), {"compile": False}, 1000)
    assert not compiles_by_default(("loss", "dos"), {}, 1000)

    train_and_save(tmp_path, count=3)
    monkeypatch.setattr(trajectory_module, "AUTO_COMPILE_MIN_CHECKPOINTS", 3)
    sweep = dict(SWEEP, measures=("llc",), store=None)
    chosen = analyze_checkpoints(tmp_path, make_model, regression_data(), **sweep)
    assert chosen.settings["llc"]["compile"] is True
    told = analyze_checkpoints(tmp_path, make_model, regression_data(), compile=False, **sweep)
    assert told.settings["llc"]["compile"] is False
    # "compiled", or "eager: <reason>" where this machine cannot compile
    assert all(r.payload["llc"]["settings"]["compile"] != "off" for r in chosen.records)
    assert {r.payload["llc"]["settings"]["compile"] for r in told.records} == {"off"}
    monkeypatch.setattr(trajectory_module, "AUTO_COMPILE_MIN_CHECKPOINTS", 4)
    short = analyze_checkpoints(tmp_path, make_model, regression_data(), **sweep)
    # below the threshold estimate_llc's own default holds: compile only long stacked runs (these are short)
    assert short.settings["llc"]["compile"] is None
    assert {r.payload["llc"]["settings"]["compile"] for r in short.records} == {"off"}


def test_a_resumed_sweep_shows_the_warnings_its_stored_results_carry(tmp_path):
    train_and_save(tmp_path / "ckpts", count=2)
    store_path = tmp_path / "r.sqlite"
    runs = []
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trajectory = analyze_checkpoints(
                tmp_path / "ckpts", make_model, regression_data(), store=store_path, **SWEEP
            )
        runs.append((trajectory, sorted(str(w.message) for w in caught)))
    (first, measured), (resumed, shown) = runs
    assert [r.finished for r in resumed.records] == [r.finished for r in first.records]  # nothing re-run
    assert measured and shown == measured  # 20-draw chains: flagged, then and now
