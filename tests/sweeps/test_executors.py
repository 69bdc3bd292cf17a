"""Executors: naming them, Ray without Ray installed, waiting on any kind of future, pool failures."""

import concurrent.futures as cf
import os
import sys
import time

import pytest

from slt.sweeps.executors import RayExecutor, _with_local_path, iter_completed, process_pool, resolve_executor
from slt.sweeps.trajectory import CheckpointFailedWarning, analyze_checkpoints
from tests.sweeps.fixtures import make_model, regression_data, train_and_save


def test_executors_are_named_or_passed():
    assert resolve_executor(None) == (None, False)
    ray_default, owned = resolve_executor("ray")
    assert isinstance(ray_default, RayExecutor) and owned and ray_default.address is None
    assert resolve_executor("ray:auto")[0].address == "auto"
    assert resolve_executor("ray://head:10001")[0].address == "ray://head:10001"
    pool = cf.ThreadPoolExecutor(1)
    assert resolve_executor(pool) == (pool, False)
    pool.shutdown()
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        resolve_executor("dask")
    with pytest.raises(TypeError, match="submit"):
        resolve_executor(object())
    with pytest.raises(ValueError, match="positive integer"):
        process_pool(0)


def test_ray_missing_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes "import ray" fail
    with pytest.raises(ImportError, match=r'pip install "slt\[ray\]"'):
        RayExecutor().submit(print, 1)


def test_a_local_ray_gets_this_process_import_path():
    env = _with_local_path({"env_vars": {"OMP_NUM_THREADS": "1"}, "pip": ["x"]})
    assert env["pip"] == ["x"] and env["env_vars"]["OMP_NUM_THREADS"] == "1"
    paths = env["env_vars"]["PYTHONPATH"].split(os.pathsep)
    assert os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")) in paths
    assert _with_local_path({"env_vars": {"PYTHONPATH": "/mine"}})["env_vars"]["PYTHONPATH"] == "/mine"


class _Job:
    def __init__(self, value, ready_after):
        self.value, self.ready_at = value, time.monotonic() + ready_after

    def done(self):
        return time.monotonic() >= self.ready_at

    def result(self):
        return self.value


def test_iter_completed_yields_in_finishing_order_for_any_future():
    jobs = [_Job("slow", 0.3), _Job("fast", 0.0)]
    assert [j.value for j in iter_completed(jobs, poll_seconds=0.01)] == ["fast", "slow"]
    with cf.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(time.sleep, 0.2), pool.submit(lambda: "quick")]
        assert next(iter_completed(futures)).result() == "quick"


def test_unpicklable_settings_fail_with_a_hint_on_worker_processes(tmp_path):
    train_and_save(tmp_path / "ckpts", count=1)
    with process_pool(1) as pool, pytest.warns(CheckpointFailedWarning):
        trajectory = analyze_checkpoints(
            tmp_path / "ckpts",
            lambda: make_model(),  # works here, but a lambda cannot be sent to a worker process
            regression_data(),
            loss_fn="mse",
            measures="loss",
            store=None,
            executor=pool,
            progress=False,
        )
    (failure,) = trajectory.failures
    assert failure.error.startswith("the worker failed:") and "module level" in failure.error


def test_a_pool_worker_leaves_ctrl_c_to_the_parent():
    # Ctrl-C reaches the whole foreground group: each worker printed its own KeyboardInterrupt traceback
    import signal

    import torch

    from slt.sweeps.executors import _init_worker

    before = signal.getsignal(signal.SIGINT), list(sys.path), torch.get_num_threads()
    try:
        _init_worker(list(sys.path), before[2])
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before[0])
        sys.path[:] = before[1]


class _FakeRay:
    """Just enough of Ray for RayExecutor.submit: tasks finish when told to, and cancels are recorded."""

    class cloudpickle:
        @staticmethod
        def register_pickle_by_value(module):
            pass

    def __init__(self):
        self.cancelled, self.refs = [], []

    def remote(self, **resources):
        fake = self

        class Ref:
            def __init__(self):
                self.inner = cf.Future()
                fake.refs.append(self)

            def future(self):
                return self.inner

        class Remote:
            def __init__(self, fn):
                self.fn = fn

            def remote(self, *args, **kwargs):
                return Ref()

        return Remote

    def put(self, value):
        return value

    def cancel(self, ref):
        self.cancelled.append(ref)
        ref.inner.cancel()


def test_cancelling_a_ray_future_cancels_its_task_on_the_cluster():
    executor = RayExecutor("ray://head:10001")
    executor._ray = fake = _FakeRay()  # connected to a cluster it did not start
    finished, queued, stopped = (executor.submit(print, i) for i in range(3))
    fake.refs[0].inner.set_result("done")
    assert finished.result(timeout=1) == "done" and not finished.cancel() and fake.cancelled == []
    assert queued.cancel() and queued.cancelled() and fake.cancelled == [fake.refs[1]]
    executor.shutdown(wait=False, cancel_futures=True)  # what an interrupted slt analyze calls
    assert stopped.cancelled() and fake.cancelled == [fake.refs[1], fake.refs[2]]
