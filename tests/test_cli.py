"""The slt command: analyze then report end to end, help on every command, clear errors."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slt import cli
from slt.sweeps.trajectory import Trajectory
from tests.sweeps.fixtures import TINY, train_and_save

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
TINY_ARGS = [
    "--num-chains", str(TINY["num_chains"]), "--num-draws", str(TINY["num_draws"]),
    "--num-burnin", str(TINY["num_burnin"]), "--step-size", str(TINY["step_size"]),
    "--batch-size", str(TINY["batch_size"]), "--localization", str(TINY["localization"]),
]  # fmt: skip


def run_slt(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "slt", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # three fresh Python processes, each importing torch
def test_analyze_then_report_end_to_end_in_a_subprocess(tmp_path):
    train_and_save(tmp_path / "ckpts", count=6)
    (tmp_path / "ckpts" / "step_00010.pt").write_bytes(b"corrupted by a crash")
    analyzed = run_slt(
        "analyze", "ckpts",
        "--model", "tests.sweeps.fixtures:make_model",
        "--data", "tests.sweeps.fixtures:regression_data",
        "--test-data", "tests.sweeps.fixtures:held_out_data",
        "--loss", "tests.sweeps.fixtures:gaussian_nll",
        "--out", "results.sqlite", "--no-progress", "--threads", "1", *TINY_ARGS,
        cwd=tmp_path,
    )  # fmt: skip
    assert analyzed.returncode == 1, analyzed.stderr  # one checkpoint failed, the others completed
    assert "6 checkpoints in results.sqlite: 5 done, 1 failed" in analyzed.stdout
    given = (
        f"LLC settings: γ = {TINY['localization']:g}; step {TINY['step_size']:.3g}; "
        f"{TINY['num_burnin']} burn-in + {TINY['num_draws']} draws per chain; nβ = n/log n; "
        f"{TINY['num_chains']} chains; sampler sgld"
    )
    assert given in analyzed.stdout
    assert "failed step 10" in analyzed.stderr and "corrupt or truncated" in analyzed.stderr

    reported = run_slt("report", "results.sqlite", "--out", "report", cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr
    report = tmp_path / "report"
    assert (report / "trajectory.png").stat().st_size > 10_000
    assert (report / "trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    trajectory = Trajectory.load(tmp_path / "results.sqlite")
    with open(report / "trajectory.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 5, 10, 15, 20, 25]
    assert [r["status"] for r in rows] == ["done", "done", "failed", "done", "done", "done"]
    csv_llc = np.array([float(r["llc_mean"]) if r["llc_mean"] else np.nan for r in rows])
    np.testing.assert_allclose(csv_llc, trajectory.llc_mean, rtol=1e-12, equal_nan=True)
    assert np.isfinite([float(r["test_loss"]) for r in rows if r["status"] == "done"]).all()

    markdown = (report / "trajectory.md").read_text()
    assert "6 checkpoints, 5 done, 1 failed" in markdown
    assert given + "." in markdown
    assert "| step | status | λ̂ | ± stderr | train loss | test loss | note |" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ") and "status" not in line]
    assert len(table) == 6
    # the untrained step-0 model may sit off a minimum; the report says so instead of "done"
    status = "not a minimum" if trajectory.not_a_minimum[0] else "done"
    assert table[0].startswith(
        f"| 0 | {status} | {trajectory.llc_mean[0]:.4g} | {trajectory.llc_stderr[0]:.4g} |"
    )
    assert "| 10 | failed |" in table[2] and "corrupt or truncated" in table[2]

    # a rerun finds everything done except the still-broken checkpoint
    again = run_slt(
        "analyze", "ckpts", "--model", "tests.sweeps.fixtures:make_model",
        "--data", "tests.sweeps.fixtures:regression_data",
        "--test-data", "tests.sweeps.fixtures:held_out_data",
        "--loss", "tests.sweeps.fixtures:gaussian_nll", "--out", "results.sqlite", *TINY_ARGS,
        cwd=tmp_path,
    )  # fmt: skip
    assert "(5 already done)" in again.stderr
    np.testing.assert_array_equal(Trajectory.load(tmp_path / "results.sqlite").llc_mean, trajectory.llc_mean)


def test_help_on_every_command(capsys):
    for argv in (["--help"], ["analyze", "--help"], ["report", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith("usage: slt")
    with pytest.raises(SystemExit):
        cli.main(["analyze", "--help"])
    analyze_help = capsys.readouterr().out
    for option in (
        "--model",
        "--data",
        "--loss",
        "--out",
        "--workers",
        "--ray",
        "--num-draws",
        "--allow-pickle",
    ):
        assert option in analyze_help
    flat = " ".join(analyze_help.split())  # argparse wraps lines
    assert "(default: None)" not in flat and "(default: False)" not in flat
    assert "torch device (default: cpu) --" in flat  # said once, not twice
    assert "(default: slt-results.sqlite)" in flat  # a plain default is still shown
    shell = subprocess.run(
        [sys.executable, "-m", "slt", "--help"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shell.returncode == 0 and "analyze" in shell.stdout and "report" in shell.stdout


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")  # standard library from Python 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["slt"] == "slt.cli:main"
    module, _, name = project["scripts"]["slt"].partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is cli.main
    assert {"ray", "lightning"} <= set(project["optional-dependencies"])


def test_bad_arguments_give_a_clear_error_and_status_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_and_save(tmp_path / "ckpts", count=1)
    base = [
        "analyze",
        "ckpts",
        "--data",
        "tests.sweeps.fixtures:regression_data",
        "--loss",
        "mse",
        "--no-progress",
    ]
    assert cli.main([*base, "--model", "tests.sweeps.fixtures:no_such_factory"]) == 2
    assert "has no attribute 'no_such_factory'" in capsys.readouterr().err
    assert cli.main([*base, "--model", "no_such_module:f"]) == 2
    assert "cannot import 'no_such_module'" in capsys.readouterr().err
    assert cli.main([*base, "--model", "make_model"]) == 2
    assert "module:name" in capsys.readouterr().err
    assert cli.main([*base, "--model", "tests.sweeps.fixtures:make_model", "--threads", "0"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err
    assert cli.main(["report", "missing.sqlite", "--out", "r"]) == 2
    assert "no result store at missing.sqlite" in capsys.readouterr().err
    assert not (tmp_path / "slt-results.sqlite").exists()


def test_model_from_a_python_file_and_a_pickled_checkpoint_needs_allow_pickle(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_model.py").write_text(
        "from torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))\n"
    )
    paths = train_and_save(tmp_path / "ckpts", count=2)
    from tests.sweeps.fixtures import make_model

    torch.manual_seed(0)
    torch.save(make_model(), paths[1])
    argv = [
        "analyze", "ckpts", "--model", "my_model.py:build", "--data", "tests.sweeps.fixtures:regression_data",
        "--loss", "mse", "--measures", "loss", "--out", "r.sqlite", "--no-progress",
    ]  # fmt: skip
    assert cli.main(argv) == 1
    assert "--allow-pickle" in capsys.readouterr().err
    assert cli.main([*argv, "--allow-pickle"]) == 0
    assert "unpickling" in capsys.readouterr().err  # the opt-in still warns


@pytest.mark.slow  # starts a local Ray (the process pool is compared in test_trajectory.py)
def test_the_ray_option_gives_the_serial_results(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    train_and_save(tmp_path / "ckpts", count=4)
    argv = [
        "analyze", "ckpts", "--model", "tests.sweeps.fixtures:make_model",
        "--data", "tests.sweeps.fixtures:regression_data", "--loss", "tests.sweeps.fixtures:gaussian_nll",
        "--no-progress", *TINY_ARGS,
    ]  # fmt: skip
    assert cli.main([*argv, "--out", "serial.sqlite"]) == 0
    assert cli.main([*argv, "--out", "ray.sqlite", "--ray"]) == 0  # a local Ray, stopped afterwards
    import ray

    assert not ray.is_initialized()
    serial = Trajectory.load("serial.sqlite")
    assert np.isfinite(serial.llc_mean).all()
    on_ray = Trajectory.load("ray.sqlite")
    np.testing.assert_array_equal(on_ray.llc_mean, serial.llc_mean)
    np.testing.assert_array_equal(on_ray.llc_stderr, serial.llc_stderr)


SHADOW = "open({marker!r}, 'a').write({name!r} + '\\n')\n"
DEFS = """
import torch
from torch import nn

def {fn}():
    {body}
"""


@pytest.mark.slow  # two fresh Python processes and a pool of two workers
def test_files_in_the_current_folder_never_run_and_files_load_by_path(tmp_path):
    train_and_save(tmp_path / "ckpts", count=3)
    marker = tmp_path / "shadows-ran.txt"
    for name in ("arviz", "concurrent", "numpy"):  # modules slt imports in this process or in workers
        (tmp_path / f"{name}.py").write_text(SHADOW.format(marker=str(marker), name=name))
    # two files with the same stem in different folders
    for folder, fn, body in (
        ("a", "make_model", "return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))"),
        ("b", "data", "from tests.sweeps.fixtures import regression_data\n    return regression_data()"),
    ):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "defs.py").write_text(DEFS.format(fn=fn, body=body))
    (tmp_path / "bin").mkdir()  # what the installed `slt` console script does
    entry = tmp_path / "bin" / "slt"
    script = "import sys\nfrom slt.cli import main\n\nif __name__ == '__main__':\n    sys.exit(main())\n"
    entry.write_text(script)
    common = [
        "analyze", "ckpts", "--model", "a/defs.py:make_model", "--data", "b/defs.py:data",
        "--loss", "tests.sweeps.fixtures:gaussian_nll", "--no-progress", "--threads", "1", *TINY_ARGS,
    ]  # fmt: skip
    for extra in (["--out", "serial.sqlite"], ["--out", "pool.sqlite", "--workers", "2"]):
        done = subprocess.run(
            [sys.executable, str(entry), *common, *extra],
            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "3 checkpoints" in done.stdout and "3 done, 0 failed" in done.stdout
    assert not marker.exists(), f"shadow modules ran: {marker.read_text()}"
    serial, pool = Trajectory.load(tmp_path / "serial.sqlite"), Trajectory.load(tmp_path / "pool.sqlite")
    np.testing.assert_array_equal(serial.llc_mean, pool.llc_mean)


def test_help_says_that_model_and_data_run_code(capsys):
    with pytest.raises(SystemExit):
        cli.main(["analyze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "IMPORT AND RUN Python code" in text and "pass only code you trust" in text
    assert text.count("imports and runs that code") >= 3


def _store_with_bad_points(path):
    """A run from step 0 with a jump in λ̂, three not-a-minimum points and one failure with hostile text."""
    from slt.sweeps.store import ResultStore, StoredResult

    steps = [0, *range(10, 300, 10)]
    rng = np.random.default_rng(0)
    with ResultStore(path) as store:
        key = store.register_run({"seed": 0})
        for i, step in enumerate(steps):
            llc = (2.0 if step < 150 else 5.0) + 0.05 * rng.standard_normal()
            warns = []
            if step in (10, 20, 30):
                llc = {10: -251.0, 20: -197.0, 30: -55.0}[step]
                warns = [{"category": "NotAMinimumWarning", "message": f"λ̂ = {llc} is negative"}]
            summary = {"llc_mean": llc, "llc_stderr": 0.05, "train_loss": 1 / (1 + i)}
            status, error = "done", None
            if step == 100:
                status, summary = "failed", {}
                error = "ValueError: \x1b[31mred\x1b[0m <script>alert(1)</script> | pipe"
            payload = {"warnings": warns, "run": "/runs/a"}
            store.record(StoredResult(f"c{step}", key, step, f"/runs/a/step_{step}.pt", status, error,
                                      summary, payload))  # fmt: skip
    return steps


def test_report_marks_bad_points_handles_step_zero_and_lists_warnings_and_transitions(tmp_path, capsys):
    import matplotlib.pyplot as plt

    store = tmp_path / "r.sqlite"
    _store_with_bad_points(store)
    assert cli.main(["report", str(store), "--out", str(tmp_path / "rep")]) == 0, capsys.readouterr().err
    text = (tmp_path / "rep" / "trajectory.md").read_text()
    assert "30 checkpoints, 29 done, 1 failed, 3 not a minimum" in text
    assert text.count("| not a minimum |") == 3
    assert "\x1b" not in text and "<script>" not in text and "&lt;script&gt;" in text and "\\| pipe" in text
    assert "## Transitions of λ̂" in text and "| llc | rise |" in text
    assert "step 0 was left out: it has no place on the log axis" in text
    assert "- step 20: NotAMinimumWarning: λ̂ = -197.0 is negative" in text
    assert "- 3 not-a-minimum checkpoint(s) were left out" in text
    with open(tmp_path / "rep" / "trajectory.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["not_a_minimum"] for r in rows[:5]] == ["False", "True", "True", "True", "False"]
    assert rows[1]["warnings"] == "NotAMinimumWarning: λ̂ = -251.0 is negative"

    trajectory = Trajectory.load(store)
    # in Python as in the report: the not-a-minimum points are left out (-251 -> -55 would read as a rise)
    events = trajectory.transitions()
    assert [(e.direction, 100 < e.step < 200) for e in events] == [("rise", True)]
    assert "3 not-a-minimum checkpoint(s) were left out" in events.notes
    fig = trajectory.plot(events=events)
    lin, log = fig.axes[0], fig.axes[1]
    assert lin.get_ylim()[0] > 1.0  # -251, -197 and -55 do not set the scale
    assert log.get_xscale() == "log" and fig.axes[3].get_xscale() == "log"
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[3].get_xticklabels()]
    assert labels[0] == "0" and not any(label.startswith(("−", "-")) for label in labels)
    legend = [t.get_text() for t in lin.get_legend().get_texts()]
    assert any("not a minimum" in t for t in legend) and "failed" in legend
    plt.close(fig)


def test_the_report_says_when_the_store_holds_other_settings(tmp_path, capsys):
    from slt.sweeps.store import ResultStore, StoredResult

    store = tmp_path / "r.sqlite"
    _store_with_bad_points(store)
    assert cli.main(["report", str(store), "--out", str(tmp_path / "one")]) == 0
    assert "other set(s) of settings" not in capsys.readouterr().err
    with ResultStore(store) as opened:  # later, the same run measured again with other settings
        key = opened.register_run({"seed": 1})
        for step in (10, 20):
            opened.record(StoredResult(f"c{step}", key, step, f"/runs/a/step_{step}.pt", "done", None,
                                       {"llc_mean": 3.0, "llc_stderr": 0.1}, {"run": "/runs/a"}))  # fmt: skip
    assert cli.main(["report", str(store), "--out", str(tmp_path / "two")]) == 0
    err = capsys.readouterr().err
    assert "also holds results under 1 other set(s) of settings" in err and "(29 done)" in err
    assert "--settings HASH" in err


def test_an_unwritable_report_folder_exits_2_with_one_line(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    _store_with_bad_points(store)
    (tmp_path / "a-file").write_text("not a folder")
    assert cli.main(["report", str(store), "--out", str(tmp_path / "a-file" / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slt report: error: cannot write the report to ") and err.count("\n") == 1


@pytest.mark.parametrize(("flag", "expected"), [([], None), (["--compile"], True), (["--no-compile"], False)])
def test_compile_is_left_to_the_sweep_unless_a_flag_says(flag, expected, tmp_path, monkeypatch):
    from slt.sweeps import trajectory

    seen = {}

    def capture(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("captured")

    monkeypatch.setattr(trajectory, "analyze_checkpoints", capture)
    train_and_save(tmp_path / "ckpts", count=1)
    argv = [
        "analyze", str(tmp_path / "ckpts"), "--model", "tests.sweeps.fixtures:make_model",
        "--data", "tests.sweeps.fixtures:regression_data", "--loss", "mse",
        "--out", str(tmp_path / "r.sqlite"), "--no-progress", *flag,
    ]  # fmt: skip
    with pytest.raises(RuntimeError, match="captured"):
        cli.main(argv)
    assert seen.get("compile") is expected


def test_ctrl_c_exits_130_with_one_line_that_says_how_to_resume(tmp_path, monkeypatch, capsys):
    # a KeyboardInterrupt printed torch's whole traceback; every finished checkpoint is already committed
    from slt.sweeps import trajectory

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trajectory, "analyze_checkpoints", interrupted)
    train_and_save(tmp_path / "ckpts", count=1)
    store = str(tmp_path / "r.sqlite")
    argv = [
        "analyze", str(tmp_path / "ckpts"), "--model", "tests.sweeps.fixtures:make_model",
        "--data", "tests.sweeps.fixtures:regression_data", "--loss", "mse", "--out", store, "--no-progress",
    ]  # fmt: skip
    try:
        status = cli.main(argv)
    except KeyboardInterrupt:  # else pytest would stop the whole session here
        pytest.fail("Ctrl-C escaped cli.main")
    assert status == 130
    err = capsys.readouterr().err
    assert err.strip() == (
        f"slt analyze: interrupted; every finished checkpoint is kept in {store}: run the same command "
        "again to resume"
    )


def test_the_settings_line_says_what_the_sweep_chose_and_where():
    settings = {
        "llc": {"localization": 100.0, "step_size": 0.00208, "num_burnin": 300, "num_draws": 400,
                "n_beta": None, "num_chains": None, "sampler": "sgld"},
        "reference": {"chosen": {"localization": 100.0, "step_size": 0.00208, "num_burnin": 300,
                                 "num_draws": 400}, "probe_steps": [961, 1800, 6000]},
    }  # fmt: skip
    assert cli.llc_settings_line(settings) == (
        "γ = 100 (chosen); step 0.00208 (chosen); 300 burn-in + 400 draws per chain (chosen); nβ = n/log n; "
        "default chains; sampler sgld; chosen at steps 961, 1800, 6000"
    )
    skipped = {"llc": {"localization": None, "step_size": None, "num_draws": None, "num_burnin": None},
               "reference": {"skipped": "ChainDivergenceError: every chain diverged"}}  # fmt: skip
    assert cli.llc_settings_line(skipped) == (
        "γ = 1; step chosen per checkpoint; automatic length per checkpoint; nβ = n/log n; default chains; "
        "sampler sgld; no settings chosen (ChainDivergenceError: every chain diverged)"
    )
    assert cli.llc_settings_line({"measures": ["loss"]}) is None
