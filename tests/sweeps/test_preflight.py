"""Fail fast (issue 14, item 6): a sweep whose factory, device, data or loss cannot work stops before
any checkpoint runs, with one error naming the setting, instead of one failed row per checkpoint."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slt import cli
from slt.sweeps.trajectory import analyze_checkpoints
from slt.warnings import SetupError
from tests.sweeps.fixtures import TINY, make_model, regression_data, train_and_save

ROOT = Path(__file__).resolve().parents[2]


def sweep(folder, factory=make_model, data=None, **kw):
    kw.setdefault("measures", "loss")
    return analyze_checkpoints(
        folder, factory, regression_data() if data is None else data, loss_fn=kw.pop("loss_fn", "mse"),
        progress=False, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    train_and_save(folder, count=12)
    return folder


@pytest.mark.parametrize(
    "factory, message",
    [
        (make_model(), r"model_factory must build a fresh model, got a Sequential instance"),
        ("make_model", r"model_factory must be a callable that returns a fresh model.*got str"),
        (lambda: None, r"model_factory\(\) must return a torch.nn.Module, got NoneType"),
        (lambda: 1 / 0, r"model_factory\(\) raised ZeroDivisionError"),
    ],
)
def test_a_broken_factory_fails_once_before_any_checkpoint(ckpts, tmp_path, factory, message):
    store = tmp_path / "r.sqlite"
    with pytest.raises(SetupError, match=message):
        sweep(ckpts, factory, store=store)
    assert not store.exists()  # no row was written, let alone twelve failed ones


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with a GPU can use device='cuda'")
def test_an_unavailable_device_is_named(ckpts):
    with pytest.raises(SetupError, match=r"device 'cuda' asks for CUDA, but .*use device='cpu'"):
        sweep(ckpts, measures="llc", store=None, device="cuda", **TINY)
    with pytest.raises(SetupError, match=r"device 'gpu' is not a device torch knows"):
        sweep(ckpts, store=None, device="gpu")


def test_data_or_a_loss_that_cannot_work_fails_once(ckpts):
    x, y = regression_data()
    failed = r"loss_fn on the first 64 samples of data failed: "
    with pytest.raises(SetupError, match=failed + r"RuntimeError: .*shapes"):
        sweep(ckpts, data=(x[:, :2], y), store=None)
    with pytest.raises(SetupError, match=failed + r"ValueError: loss_fn must return a scalar mean loss"):
        sweep(ckpts, store=None, loss_fn=lambda m, b: (m(b[0]) - b[1]) ** 2)
    with pytest.raises(SetupError, match=r"is not finite \(nan\) at the first checkpoint"):
        sweep(ckpts, store=None, loss_fn=lambda m, b: (m(b[0]) - b[1]).mean() * float("nan"))
    with pytest.raises(SetupError, match=r"test_data failed"):
        sweep(ckpts, store=None, test_data=(x[:, :2], y))


def test_a_first_checkpoint_that_does_not_load_does_not_stop_the_others(tmp_path):
    paths = train_and_save(tmp_path / "ckpts", count=3)
    paths[0].write_bytes(b"garbage")
    with pytest.warns(match="1 of 3 checkpoints failed"):
        trajectory = sweep(tmp_path / "ckpts", store=None)
    assert trajectory.ok.tolist() == [False, True, True]


def test_lightning_checkpoints_load_with_a_prefix_and_the_error_says_so(tmp_path):
    folder = tmp_path / "lightning"
    folder.mkdir()
    for step, path in enumerate(train_and_save(tmp_path / "plain", count=2)):
        state = torch.load(path)
        torch.save(
            {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": step}, folder / path.name
        )
    with pytest.warns(match="2 of 2 checkpoints failed") as caught:
        failed = sweep(folder, store=None)
    assert not any("the others completed" in str(w.message) for w in caught)  # there are none
    assert "pass state_dict_prefix='model.' (--state-dict-prefix model." in failed.failures[0].error
    assert sweep(folder, store=None, state_dict_prefix="model.").ok.all()
    with pytest.warns(match="2 of 2 checkpoints failed"):
        wrong = sweep(folder, store=None, state_dict_prefix="net.")
    assert "no weight of" in wrong.failures[0].error and "starts with state_dict_prefix 'net.'" in (
        wrong.failures[0].error
    )


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_a_blocked_malicious_pickle_is_named_as_such(tmp_path):
    from slt.sweeps.checkpoints import load_state_dict
    from slt.warnings import CheckpointError

    path = tmp_path / "step_10.pt"
    torch.save({"weight": torch.zeros(1), "payload": _Evil()}, path)
    message = r"blocked as a malicious pickle: it calls posix.system"
    with pytest.raises(CheckpointError, match=message) as info:
        load_state_dict(path)
    assert "corrupt" not in str(info.value)


def test_the_cli_exits_2_with_one_line_for_setup_errors(ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad_data.py").write_text("def load():\n    raise OSError('no such bucket\\nsecond line')\n")
    base = ["analyze", str(ckpts), "--model", "tests.sweeps.fixtures:make_model", "--loss", "mse",
            "--measures", "loss", "--no-progress", "--out", "r.sqlite"]  # fmt: skip
    assert cli.main([*base, "--data", "bad_data.py:load"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "slt analyze: error: --data: load() raised OSError: no such bucket second line"
    if not torch.cuda.is_available():
        assert cli.main([*base, "--data", "tests.sweeps.fixtures:regression_data", "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "asks for CUDA" in err
    assert cli.main([*base, "--data", "tests.sweeps.fixtures:held_out_data", "--model", "builtins:dict"]) == 2
    assert "model_factory() must return a torch.nn.Module" in capsys.readouterr().err
    assert not (tmp_path / "r.sqlite").exists()


PARENT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from slt.sweeps.executors import process_pool
from tests.sweeps.fixtures import sleep_and_pid
if __name__ == "__main__":
    pool = process_pool(2, threads_per_worker=1)
    ready = set()
    while len(ready) < 2:  # a worker that returned a task has finished starting (its watchdog runs)
        ready |= {f.result() for f in [pool.submit(sleep_and_pid, 0.5) for _ in range(2)]}
    futures = [pool.submit(sleep_and_pid, 120) for _ in range(2)]
    time.sleep(1.0)
    print(" ".join(str(pid) for pid in ready), flush=True)
    time.sleep(120)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited; only its entry is left for its (new) parent to collect
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_pool_workers_exit_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(ROOT)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    workers: list[int] = []
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "workers still running 5 s after their parent died"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
