"""Where checkpoint tasks run: in this process, a local process pool, any executor, or a Ray cluster.

A sweep submits one task per checkpoint with ``executor.submit(fn, *args)`` and commits results as
the returned futures finish. Anything with that ``submit`` method works: a
:class:`concurrent.futures.ProcessPoolExecutor` (see :func:`process_pool`), submitit's
``AutoExecutor`` for Slurm, Dask's ``client.get_executor()``, or :class:`RayExecutor`. Futures need
``done()`` and ``result()``; standard-library futures are waited on without polling.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["RayExecutor", "process_pool", "resolve_executor", "iter_completed"]


def process_pool(max_workers: int, *, threads_per_worker: int | None = None) -> cf.ProcessPoolExecutor:
    """A local pool of fresh worker processes ready to run slt tasks.

    Workers are started with ``spawn`` (no forked copies of torch's thread pools), see this process's
    ``sys.path`` (so model factories defined in local modules can be imported) and the Python files
    loaded by path (:func:`slt.sweeps.user_code.load_file`), and use ``threads_per_worker`` torch
    threads (default: the CPU cores divided among the workers). Each worker exits within about a second
    when the process that made the pool dies (killed, crashed), instead of finishing its task for nobody.
    """
    from slt.sweeps import user_code

    if not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"the number of workers must be a positive integer, got {max_workers!r}")
    if threads_per_worker is None:
        threads_per_worker = max(1, (os.cpu_count() or 1) // max_workers)
    return cf.ProcessPoolExecutor(
        max_workers=max_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(list(sys.path), threads_per_worker, user_code.loaded_files(), os.getpid()),
    )


#: How often a pool worker checks that the process that made the pool is still alive.
PARENT_CHECK_SECONDS = 0.5


def _init_worker(
    path: list[str], threads: int, files: dict[str, str] | None = None, parent: int | None = None
) -> None:
    import torch

    from slt.sweeps import user_code

    # Ctrl-C reaches every process of the terminal's foreground group: the parent stops the sweep (and
    # says how to resume), and a worker would only print its own KeyboardInterrupt traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.path[:] = path
    user_code.install(files or {})
    torch.set_num_threads(threads)
    if parent is not None:
        watch_parent(parent)


def watch_parent(parent: int, every: float = PARENT_CHECK_SECONDS) -> threading.Thread:
    """Start a daemon thread that ends this process as soon as process ``parent`` is gone.

    A worker whose parent died is re-parented (its ``os.getppid()`` changes); it then exits at once with
    status 1, whatever task it is running, since nobody will read the result.
    """

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(every)

    thread = threading.Thread(target=watch, name="slt-parent-watchdog", daemon=True)
    thread.start()
    return thread


class RayExecutor:
    """Run tasks on a Ray cluster through a ``concurrent.futures``-style ``submit``.

    Parameters
    ----------
    address : str, optional
        Cluster address for ``ray.init`` (``"auto"``, ``"ray://head:10001"``). Without one, an already
        initialized Ray is used, else the cluster named by ``RAY_ADDRESS``, else a local Ray started for
        this executor (and stopped by :meth:`shutdown`), whose workers get this process's import path.
        On a remote cluster, ship your code with ``init_kwargs={"runtime_env": {"working_dir": ...}}``
        (or install it there): workers import the model factory, data and loss functions by name.
    num_cpus : float
        CPUs reserved per task.
    num_gpus : float
        GPUs reserved per task (set ``device="cuda"`` in the estimator settings to use them).
    init_kwargs : dict, optional
        Extra keyword arguments of ``ray.init`` (``runtime_env``, ``num_cpus`` of a local Ray, ...).

    Notes
    -----
    Large arguments shared by every task (the data, the settings) are put in Ray's object store once.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: float = 1,
        num_gpus: float = 0,
        init_kwargs: dict[str, Any] | None = None,
    ):
        self.address = address or None
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.init_kwargs = dict(init_kwargs or {})
        self._ray: Any = None
        self._started_ray = False
        self._remote: dict[Callable[..., Any], Any] = {}
        self._shared: dict[int, tuple[Any, Any]] = {}
        self._pending: set[_RayTaskFuture] = set()

    def _connect(self) -> Any:
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError as exc:
            raise ImportError(
                'executor="ray" needs Ray: pip install "slt[ray]" (or pip install "ray>=2.9")'
            ) from exc
        if not ray.is_initialized():
            kwargs = dict(self.init_kwargs)
            if self.address is None and not os.environ.get("RAY_ADDRESS"):
                kwargs["runtime_env"] = _with_local_path(kwargs.get("runtime_env"))
            ray.init(address=self.address, **kwargs)
            self._started_ray = True
        self._ray = ray
        return ray

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` as a Ray task; returns a :class:`concurrent.futures.Future`."""
        ray = self._connect()
        _ship_user_files(ray)
        remote = self._remote.get(fn)
        if remote is None:
            remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(fn)
            self._remote[fn] = remote
        refs = [self._shared_ref(a) for a in args]
        future = _RayTaskFuture(ray, remote.remote(*refs, **kwargs))
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def _shared_ref(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        cached = self._shared.get(id(value))
        if cached is None or cached[0] is not value:
            cached = (value, self._ray.put(value))
            self._shared[id(value)] = cached
        return cached[1]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Forget shared objects, and stop Ray if this executor started it.

        With ``cancel_futures``, the tasks not yet finished are cancelled on the cluster first (a
        cluster this executor only connected to would otherwise run them for nobody).
        """
        if cancel_futures:
            for future in list(self._pending):
                future.cancel()
        self._shared.clear()
        self._remote.clear()
        if self._ray is not None and self._started_ray:
            self._ray.shutdown()
        self._ray = None
        self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class _RayTaskFuture(cf.Future):
    """The future of one Ray task; cancelling it cancels the task on the cluster.

    The future of ``ObjectRef.future()`` only stops waiting: the task itself would still run (or wait in
    the cluster's queue) after an interrupted sweep, on a cluster this process merely connected to.
    """

    def __init__(self, ray: Any, ref: Any):
        super().__init__()
        self._ray, self._ref = ray, ref
        ref.future().add_done_callback(self._settle)

    def _settle(self, inner: cf.Future) -> None:
        if self.done():  # cancelled meanwhile
            return
        try:
            if inner.cancelled():
                super().cancel()
            elif inner.exception() is not None:
                self.set_exception(inner.exception())
            else:
                self.set_result(inner.result())
        except cf.InvalidStateError:  # cancelled between the check and the setting
            pass

    def cancel(self) -> bool:
        """Cancel the Ray task (queued or running) and this future; False once it has finished."""
        if self.done():
            return self.cancelled()
        try:
            self._ray.cancel(self._ref)
        except Exception:  # the task finished meanwhile, or the cluster is gone: nothing left to stop
            pass
        return super().cancel()


def _ship_user_files(ray: Any) -> None:
    """Send the code of files loaded by path to Ray workers by value (they cannot import them by name)."""
    from slt.sweeps import user_code

    for name in user_code.loaded_files():
        module = sys.modules.get(name)
        if module is not None:
            ray.cloudpickle.register_pickle_by_value(module)


def _with_local_path(runtime_env: dict[str, Any] | None) -> dict[str, Any]:
    """Give the workers of a local Ray this process's import path (as :func:`process_pool` does)."""
    runtime_env = dict(runtime_env or {})
    env_vars = dict(runtime_env.get("env_vars", {}))
    if "PYTHONPATH" not in env_vars:
        paths = [os.path.abspath(p or os.curdir) for p in sys.path]
        env_vars["PYTHONPATH"] = os.pathsep.join(p for p in dict.fromkeys(paths) if os.path.isdir(p))
        runtime_env["env_vars"] = env_vars
    return runtime_env


def resolve_executor(executor: Any) -> tuple[Any, bool]:
    """Return ``(executor, owned)``: ``None`` for in-process runs, and whether slt must shut it down."""
    if executor is None:
        return None, False
    if isinstance(executor, str):
        if executor == "ray":
            return RayExecutor(), True
        if executor.startswith("ray:") and not executor.startswith("ray://"):
            return RayExecutor(executor[4:] or None), True
        if executor.startswith("ray://"):
            return RayExecutor(executor), True
        raise ValueError(f'unknown executor {executor!r}; use "ray", "ray:ADDRESS" or an executor object')
    if not callable(getattr(executor, "submit", None)):
        raise TypeError(
            "executor must be None, 'ray' or an object with a concurrent.futures-style submit(fn, *args) "
            f"method (ProcessPoolExecutor, submitit, Dask); got {type(executor).__name__}"
        )
    return executor, False


def iter_completed(futures: Sequence[Any], poll_seconds: float = 0.5) -> Iterator[Any]:
    """Yield futures as they finish: ``concurrent.futures`` ones without polling, others by ``done()``."""
    if all(isinstance(f, cf.Future) for f in futures):
        yield from cf.as_completed(futures)
        return
    pending = list(futures)
    while pending:
        still = []
        for future in pending:
            if future.done():
                yield future
            else:
                still.append(future)
        pending = still
        if pending:
            time.sleep(poll_seconds)
