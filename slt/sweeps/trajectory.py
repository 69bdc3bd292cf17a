"""Geometry over training: measure many checkpoints, resumably and in parallel, and look at the result.

:func:`analyze_checkpoints` runs one task per checkpoint (in this process, on any
``concurrent.futures``-style executor, or on Ray), commits each result to an SQLite
:class:`~slt.sweeps.store.ResultStore` as it arrives, and skips what a previous run already finished.
:class:`Trajectory` holds the per-checkpoint results in step order, as arrays, a data frame and a
figure.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from slt.sampling.losses import LossFn
from slt.sweeps.checkpoints import Checkpoint, resolve_checkpoints
from slt.sweeps.executors import iter_completed, resolve_executor
from slt.sweeps.measures import (
    MeasureSpec,
    Outcome,
    SweepJob,
    code_identity,
    describe,
    format_error,
    get_measure,
    measure_checkpoint,
    reemit_warnings,
    validate_measures,
)
from slt.sweeps.preflight import preflight
from slt.sweeps.reference import choose_sweep_settings, loader, stored_choice
from slt.sweeps.store import ResultStore, StoredResult
from slt.warnings import CheckpointFailedWarning

__all__ = [
    "analyze_checkpoints",
    "Trajectory",
    "CheckpointFailedWarning",
    "run_key",
    "compiles_by_default",
    "AUTO_COMPILE_MIN_CHECKPOINTS",
]

#: Checkpoints from which a sweep compiles its LLC chains unless ``compile`` is given (measured break-even
#: on the grokking example's MLP: about 11 checkpoints; see :func:`compiles_by_default`).
AUTO_COMPILE_MIN_CHECKPOINTS = 24


def analyze_checkpoints(
    checkpoints: Any,
    model_factory: Callable[[], nn.Module],
    data: Any,
    *,
    loss_fn: str | LossFn,
    measures: str | Sequence[str] = ("llc",),
    store: str | os.PathLike[str] | ResultStore | None = "slt-results.sqlite",
    executor: Any = None,
    test_data: Any = None,
    seed: int = 0,
    progress: bool = True,
    dos_settings: Mapping[str, Any] | None = None,
    measure_settings: Mapping[str, Mapping[str, Any]] | None = None,
    allow_pickle: bool = False,
    state_dict_key: str | None = None,
    state_dict_prefix: str | None = None,
    identity: str = "stat",
    retry_failed: bool = True,
    run: str | None = None,
    reference: str | None = "auto",
    **estimator_settings: Any,
) -> Trajectory:
    """Measure every checkpoint of a training run, committing each result as soon as it is done.

    Parameters
    ----------
    checkpoints : str, PathLike, list or dict
        A folder, a glob pattern, files, state dicts or ``(step, path_or_state_dict)`` pairs (see
        :func:`slt.sweeps.checkpoints.resolve_checkpoints`). Steps of files come from their names.
    model_factory : callable
        ``model_factory()`` returns a fresh model of the checkpoints' architecture. With a process
        pool or a cluster it must be importable (defined at module level), like ``data`` and
        ``loss_fn``.
    data : tuple of Tensor, Dataset or DataLoader
        Training data, as for :func:`slt.estimate_llc`.
    loss_fn : str or callable
        ``"mse"``, ``"cross_entropy"`` or ``loss_fn(model, batch) -> scalar mean loss``.
    measures : sequence of {"llc", "dos", "loss"} or registered measures
        ``"llc"``: :func:`slt.estimate_llc` (its result also gives the train loss at :math:`w^*`);
        ``"dos"``: :func:`slt.estimate_dos` with ``dos_settings``; ``"loss"``: the train loss at
        :math:`w^*`, and the test loss when ``test_data`` is given; any name registered with
        :func:`slt.sweeps.measures.register_measure`, with its settings in ``measure_settings``.
    store : str, PathLike, ResultStore or None
        SQLite file that receives every result as it finishes; a rerun with the same settings skips
        finished checkpoints. ``None`` keeps results in memory only.
    executor : None, "ray", "ray:ADDRESS" or executor
        ``None`` runs checkpoints one after another in this process. An object with a
        ``concurrent.futures``-style ``submit`` (a ``ProcessPoolExecutor``, see
        :func:`slt.sweeps.executors.process_pool`; submitit; Dask) runs one task per checkpoint on it.
        ``"ray"`` runs Ray tasks on the cluster ``ray.init`` connects to (an initialized Ray, else
        ``RAY_ADDRESS``, else a local one); use :class:`slt.sweeps.executors.RayExecutor` to reserve GPUs.
    test_data : optional
        Held-out data for the test loss (with ``"loss"`` in ``measures``).
    seed : int
        Base seed. Checkpoint ``step`` uses :func:`slt.sweeps.measures.checkpoint_seed` ``(seed, step)``, so
        serial, pooled and Ray runs give identical numbers, whatever the order (bit for bit when the
        processes use the same number of torch threads: multi-threaded reductions of large models
        can differ in the last bits).
    progress : bool
        Show a progress bar (with ETA) over checkpoints, and one for each trial while the settings are
        chosen at reference checkpoints (which can take minutes).
    dos_settings : dict, optional
        Keyword arguments of :func:`slt.estimate_dos`. Its ``fit_form`` defaults to ``"power"`` here (the
        local slope over the fit window, the same form at every checkpoint, so ``dos_multiplicity`` is 1;
        ``estimate_dos``'s own ``"auto"`` could switch forms between checkpoints); each checkpoint's stored
        result can be refitted.
    measure_settings : dict of str to dict, optional
        Settings of other registered measures, by name.
    allow_pickle : bool
        Allow checkpoints that pickle arbitrary objects (runs any code they contain; see
        :func:`slt.sweeps.checkpoints.load_state_dict`).
    state_dict_key : str, optional
        Key of the model's state dict inside checkpoint dictionaries.
    state_dict_prefix : str, optional
        Keep only the weights whose names start with this prefix, without it (``"model."`` for
        Lightning checkpoints of a module that holds the network as ``self.model``).
    identity : {"stat", "content"}
        How files are recognised across reruns: path, size and modification time, or a hash of the
        bytes (survives moving the folder; reads each file once more).
    retry_failed : bool
        Try checkpoints that failed in an earlier run again.
    run : str, optional
        Name of the training run the checkpoints come from, stored with every row so that one store
        can hold several runs analysed with the same settings without mixing them (see
        :meth:`Trajectory.load`). Default: the folder holding the checkpoint files (see :func:`run_key`).
    reference : {"auto", None}
        ``"auto"`` (default): the LLC's γ (``localization``), ``step_size`` and chain lengths
        (``num_burnin``, ``num_draws``), where not given, are chosen once, at reference checkpoints, and
        held fixed for every checkpoint, so that the points are comparable (see
        :mod:`slt.sweeps.reference`: γ is the smallest of 1, 3, 10, 30, 100, 300, 1000 whose chains stay
        within a quarter of the way from L(w*) to the zero-weights loss at three probe checkpoints; the
        step is the smallest and the lengths the longest of its automatic ones there). The choice is in
        ``Trajectory.settings["reference"]``. ``None``: each checkpoint chooses its own step and length
        by :func:`slt.estimate_llc`'s defaults, at γ = 1 unless given.
    **estimator_settings
        Keyword arguments of :func:`slt.estimate_llc` (``num_chains``, ``num_draws``,
        ``step_size``, ``n_beta``, ``batch_size``, ``sampler``, ...). Those given are used as they are.
        ``compile``, when not given, is ``True`` for sweeps of :data:`AUTO_COMPILE_MIN_CHECKPOINTS` (24)
        checkpoints or more (:func:`compiles_by_default`; one compiled function serves every checkpoint)
        and :func:`slt.estimate_llc`'s default below (``None``: only a checkpoint's long run of stacked
        chains compiles); pass ``compile=False`` to keep the chains eager.

    Returns
    -------
    Trajectory
        The results of these checkpoints, in step order; failed checkpoints hold their error.

    Raises
    ------
    slt.warnings.SetupError
        Before any checkpoint runs, when the model factory, the device, the data or the loss cannot
        work (see :func:`slt.sweeps.preflight.preflight`).

    Warns
    -----
    CheckpointFailedWarning
        When some checkpoints failed (the others are complete).
    SLTWarning subclasses
        Warnings of the estimators (unconverged chains, ...), one per category, naming the steps: of
        every checkpoint the trajectory holds, those read back from the store on a rerun included.
    """
    spec = sweep_spec(measures, loss_fn, data, test_data, estimator_settings, dos_settings, measure_settings)
    records = resolve_checkpoints(checkpoints)
    if compiles_by_default(spec.names, estimator_settings, len(records)):
        estimator_settings = {**estimator_settings, "compile": True}
        spec = sweep_spec(
            measures, loss_fn, data, test_data, estimator_settings, dos_settings, measure_settings
        )
    if run is not None and (not isinstance(run, str) or not run):
        raise ValueError(f"run must be a non-empty string naming the training run, got {run!r}")
    run = run or run_key(records)
    preflight(
        model_factory,
        spec,
        records[0] if records else None,
        allow_pickle=allow_pickle,
        state_dict_key=state_dict_key,
        state_dict_prefix=state_dict_prefix,
    )
    if reference not in ("auto", None):
        raise ValueError(f'reference must be "auto" or None, got {reference!r}')
    ids = [c.identity(identity) for c in records]
    result_store, owns_store = _open_store(store)
    try:
        # the code's identity does not change with the numbers a reference choice adds: computed once
        code = code_identity({"model_factory": model_factory, **spec.code_to_hash()})

        def run_settings(measured: MeasureSpec) -> dict[str, Any]:
            described = {
                **measured.description(),
                "seed": seed,
                "model_factory": describe(model_factory),
                "state_dict_key": state_dict_key,
                "code": code,
            }
            if state_dict_prefix:  # absent otherwise, so that stores written before it keep their hash
                described["state_dict_prefix"] = state_dict_prefix
            return described

        chosen: dict[str, Any] = {}
        if reference == "auto" and "llc" in spec.names:
            request = {**run_settings(spec), "checkpoints": ids}
            load = loader(
                model_factory,
                allow_pickle=allow_pickle,
                state_dict_key=state_dict_key,
                state_dict_prefix=state_dict_prefix,
            )
            fixed, chosen = stored_choice(
                result_store,
                request,
                lambda: choose_sweep_settings(
                    records, load, data, loss_fn, spec.llc_settings, seed, progress=progress
                ),
                run=run,
            )
            if fixed:
                estimator_settings = {**estimator_settings, **fixed}
                spec = sweep_spec(
                    measures, loss_fn, data, test_data, estimator_settings, dos_settings, measure_settings
                )
        job = SweepJob(
            model_factory,
            spec,
            seed,
            allow_pickle=allow_pickle,
            state_dict_key=state_dict_key,
            state_dict_prefix=state_dict_prefix,
        )
        settings = run_settings(spec)
        if chosen:
            settings["reference"] = chosen
        key = result_store.register_run(settings)
        statuses = result_store.statuses(key)
        skip = {"done", "failed"} if not retry_failed else {"done"}
        todo = [(c, i) for c, i in zip(records, ids) if statuses.get(i) not in skip]
        done_now = _run(todo, job, key, result_store, executor, progress, len(records), run)
        trajectory = Trajectory(
            records=_latest_per_step(result_store.results(key, ids)),
            settings=settings,
            settings_hash=key,
            store_path=None if result_store.path == ":memory:" else result_store.path,
            run=run,
        )
    finally:
        if owns_store:
            result_store.close()
    # every result the trajectory holds, the stored ones included: a resumed sweep's numbers carry
    # the same problems as when they were measured
    held = trajectory.records
    reemit_warnings([(r.step, r.payload.get("warnings", [])) for r in held if r.ok], stacklevel=3)
    failed = [r for r in held if not r.ok]
    if failed:
        steps = ", ".join(str(r.step) for r in failed[:10]) + (" ..." if len(failed) > 10 else "")
        new = {r.checkpoint_id for r in done_now}
        earlier = sum(r.checkpoint_id not in new for r in failed)
        again = (
            f" {earlier} failed in an earlier run; retry_failed=True measures them again." if earlier else ""
        )
        others = "; the others completed" if len(failed) < len(records) else ""
        warnings.warn(
            f"{len(failed)} of {len(records)} checkpoints failed (steps {steps}){others}. First error "
            f"(step {failed[0].step}): {failed[0].error.rstrip('.')}. See Trajectory.failures.{again}",
            CheckpointFailedWarning,
            stacklevel=2,
        )
    return trajectory


def sweep_spec(
    measures: Any,
    loss_fn: Any,
    data: Any,
    test_data: Any,
    estimator_settings: Mapping[str, Any],
    dos_settings: Mapping[str, Any] | None,
    measure_settings: Mapping[str, Mapping[str, Any]] | None,
) -> MeasureSpec:
    """The validated :class:`MeasureSpec` of a sweep or monitor (fails before any checkpoint runs).

    ``estimator_settings`` are the LLC's (``device`` also sets where the other measures run).
    """
    names = validate_measures(measures)
    unused = sorted(set(estimator_settings) - {"device"})
    if "llc" not in names and unused:
        raise ValueError(f'estimator settings {unused} apply to the "llc" measure, which was not requested')
    if test_data is not None and "loss" not in names:
        raise ValueError('test_data is used by the "loss" measure; add "loss" to measures')
    settings = dict(measure_settings or {})
    for name, given in (("llc", estimator_settings if "llc" in names else None), ("dos", dos_settings)):
        if given:
            if settings.get(name):
                raise ValueError(f'settings of "{name}" given twice (also in measure_settings)')
            settings[name] = given
    return MeasureSpec.build(
        measures,
        loss_fn=loss_fn,
        data=data,
        test_data=test_data,
        settings=settings,
        device=estimator_settings.get("device"),
    )


def compiles_by_default(
    measures: Sequence[str], estimator_settings: Mapping[str, Any], num_checkpoints: int
) -> bool:
    """Whether a sweep compiles its LLC chains when ``compile`` is not given.

    It does from :data:`AUTO_COMPILE_MIN_CHECKPOINTS` checkpoints on.

    One compiled function serves every checkpoint of an architecture, so its warm-up (seconds to tens of
    seconds per process) is spread over the sweep: on the grokking example's MLP (one CPU core, defaults)
    11 checkpoints took 28.1 s compiled against 28.7 s eagerly, 47 took 45.4 s against 64.8 s (and
    96.3 s against 123.0 s for the control run). Where compilation fails the chains fall back to eager,
    and ``settings.compile`` of each result says why (:mod:`slt.sampling.compiled`).
    """
    return (
        "llc" in measures
        and "compile" not in estimator_settings
        and num_checkpoints >= AUTO_COMPILE_MIN_CHECKPOINTS
    )


def _open_store(store: Any, readonly: bool = False) -> tuple[ResultStore, bool]:
    if isinstance(store, ResultStore):
        return store, False
    if store is None:
        return ResultStore(":memory:"), True
    return (ResultStore(store, readonly=True) if readonly else ResultStore(store)), True


def _select_run(
    rows: list[StoredResult], run: str | None, key: str, path: str
) -> tuple[str | None, list[StoredResult]]:
    """The rows of one training run: the one named by ``run``, or the only one; never a mix."""
    by_run: dict[str, list[StoredResult]] = {}
    for row in rows:
        by_run.setdefault(row.run, []).append(row)
    if run is None and len(by_run) <= 1:
        return (next(iter(by_run)) if by_run else None), rows
    if run is not None:
        matches = (
            [name for name in by_run if name == run]
            or [name for name in by_run if os.path.basename(name) == run]
            or [name for name in by_run if run in name]
        )
        if len(matches) == 1:
            return matches[0], by_run[matches[0]]
    listing = "; ".join(
        f"{name or '(unnamed)'!r}: {len(found)} rows, steps {min(r.step for r in found)}-"
        f"{max(r.step for r in found)}"
        for name, found in by_run.items()
    )
    if run is None:
        problem = f"holds {len(by_run)} training runs analysed with settings {key}"
    else:
        problem = f"has {'no' if not matches else 'several'} runs matching {run!r} for settings {key}"
    raise ValueError(
        f"the result store {path} {problem}: {listing}. Choose one with run= (slt report --run NAME); "
        "their results are not mixed"
    )


def _run(
    todo: list[tuple[Checkpoint, str]],
    job: SweepJob,
    key: str,
    store: ResultStore,
    executor: Any,
    progress: bool,
    total: int,
    run: str = "",
) -> list[StoredResult]:
    """Run the pending checkpoints and commit each outcome as it arrives; the only writer."""
    from tqdm.auto import tqdm

    skipped = total - len(todo)
    bar = tqdm(
        total=len(todo),
        desc="checkpoints" + (f" ({skipped} already done)" if skipped else ""),
        unit="ckpt",
        disable=not progress,
        dynamic_ncols=True,
    )
    written: list[StoredResult] = []

    def commit(checkpoint: Checkpoint, cid: str, outcome: Outcome) -> None:
        row = StoredResult(
            checkpoint_id=cid,
            settings_hash=key,
            step=checkpoint.step,
            source=checkpoint.source,
            status=outcome.status,
            error=outcome.error,
            summary=outcome.summary,
            payload={**outcome.payload, "run": run},
            seconds=outcome.seconds,
        )
        store.record(row)
        written.append(row)
        bar.update(1)
        if outcome.status != "done":
            bar.set_postfix(failed=sum(not r.ok for r in written))

    pool, owned = resolve_executor(executor)
    try:
        if pool is None:
            for checkpoint, cid in todo:
                commit(checkpoint, cid, measure_checkpoint(checkpoint, job))
        elif todo:
            futures = {
                pool.submit(measure_checkpoint, checkpoint, job): (checkpoint, cid)
                for checkpoint, cid in todo
            }
            try:
                for future in iter_completed(list(futures)):
                    checkpoint, cid = futures[future]
                    try:
                        outcome = future.result()
                    except Exception as exc:  # the worker itself died or could not run the task
                        outcome = Outcome(status="failed", error=_worker_failure(exc))
                    commit(checkpoint, cid, outcome)
            except BaseException:
                for future in futures:
                    cancel = getattr(future, "cancel", None)
                    if cancel is not None:
                        cancel()
                raise
    finally:
        bar.close()
        if owned:
            pool.shutdown()
    return written


def _worker_failure(exc: BaseException) -> str:
    message = f"the worker failed: {format_error(exc)}"
    if "pickle" in message.lower():
        message += (
            "; with worker processes, model_factory, data and loss_fn must be picklable (functions defined "
            "at module level in an importable module, not lambdas or local functions)"
        )
    return message


def run_key(records: Sequence[Checkpoint]) -> str:
    """The default name of the training run a set of checkpoints comes from.

    The deepest folder holding every checkpoint file (``/abs/runs/a`` for ``runs/a/step_*.pt``), or
    ``"state dicts in memory"`` for weights passed in memory.
    """
    folders = [str(c.path.resolve().parent) for c in records if c.path is not None]
    in_memory = len(folders) < len(records)
    if not folders:
        return "state dicts in memory"
    common = os.path.commonpath(folders)
    return common + (" and state dicts in memory" if in_memory else "")


def not_a_minimum_note(count: int) -> str:
    """The note saying how many checkpoints λ̂'s transitions left out for not being a minimum."""
    return f"{count} not-a-minimum checkpoint(s) were left out"


def _latest_per_step(rows: Iterable[StoredResult]) -> list[StoredResult]:
    """One row per step: the latest (a step can have several rows when its file was replaced)."""
    latest: dict[int, StoredResult] = {}
    for row in rows:
        current = latest.get(row.step)
        if current is None or row.finished >= current.finished:
            latest[row.step] = row
    return [latest[s] for s in sorted(latest)]


@dataclass
class Trajectory:
    """Per-checkpoint results of a sweep, in step order.

    Arrays have one entry per checkpoint; failed checkpoints and measures that were not taken hold
    NaN. ``records`` keeps each checkpoint's full stored row.

    Attributes
    ----------
    records : list of StoredResult
        One row per checkpoint, sorted by step.
    settings : dict
        Description of the settings (hashed into ``settings_hash``).
    settings_hash : str or None
        Key of these settings in the store.
    store_path : str or None
        The SQLite file the results live in.
    run : str or None
        The training run the checkpoints come from (see :func:`run_key`).
    """

    records: list[StoredResult]
    settings: dict[str, Any] = field(default_factory=dict)
    settings_hash: str | None = None
    store_path: str | None = None
    run: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        done = int(self.ok.sum())
        span = f"steps {self.steps[0]}..{self.steps[-1]}" if len(self) else "empty"
        return f"Trajectory({len(self)} checkpoints, {span}, {done} done, {len(self) - done} failed)"

    # -- columns ----------------------------------------------------------------------------------

    @property
    def steps(self) -> np.ndarray:
        """Training step of each checkpoint."""
        return np.array([r.step for r in self.records], dtype=np.int64)

    @property
    def ok(self) -> np.ndarray:
        """Whether each checkpoint was measured."""
        return np.array([r.ok for r in self.records], dtype=bool)

    def column(self, name: str) -> np.ndarray:
        """A summary scalar per checkpoint (``"llc_mean"``, ``"train_loss"``, ...), NaN where missing."""
        values = []
        for r in self.records:
            value = r.summary.get(name) if r.ok else None
            values.append(math.nan if value is None else float(value))
        return np.array(values, dtype=float)

    @property
    def llc_mean(self) -> np.ndarray:
        """λ̂ (the LLC estimate) per checkpoint."""
        return self.column("llc_mean")

    @property
    def llc_stderr(self) -> np.ndarray:
        """Standard error of λ̂ (over chains) per checkpoint."""
        return self.column("llc_stderr")

    @property
    def llc_std(self) -> np.ndarray:
        """Standard deviation of the per-chain estimates per checkpoint."""
        return self.column("llc_std")

    @property
    def train_loss(self) -> np.ndarray:
        """Full-data training loss at each checkpoint's weights."""
        return self.column("train_loss")

    @property
    def test_loss(self) -> np.ndarray:
        """Test loss per checkpoint (NaN without test data)."""
        return self.column("test_loss")

    def results(self, measure: str) -> list[Any]:
        """The full result of ``measure`` at each checkpoint (``None`` where not measured).

        Rebuilt from the stored payload by the measure's ``load`` (the payload itself without one).

        Raises
        ------
        ValueError
            For a measure that is not registered.
        """
        load = get_measure(measure).load or (lambda payload: payload)
        return [load(r.payload[measure]) if r.ok and measure in r.payload else None for r in self.records]

    @property
    def llc(self) -> list[Any]:
        """The full :class:`slt.LLCResult` of each checkpoint (``None`` where not measured)."""
        return self.results("llc")

    @property
    def dos(self) -> list[Any]:
        """The :class:`slt.DOSResult` of each checkpoint (``None`` where not measured)."""
        return self.results("dos")

    @property
    def not_a_minimum(self) -> np.ndarray:
        """Whether each checkpoint's λ̂ says its weights are not a local minimum.

        True where the estimate raised a ``NotAMinimumWarning`` or λ̂ is significantly below zero (by
        more than two standard errors; by any amount without one): there the number does not estimate
        a learning coefficient, and plots and reports keep it off the scale.
        """
        flags = []
        for r, value, err in zip(self.records, self.llc_mean, self.llc_stderr):
            warned = any(w.get("category") == "NotAMinimumWarning" for w in r.payload.get("warnings", []))
            margin = 2 * err if np.isfinite(err) else 0.0
            flags.append(bool(r.ok and (warned or (np.isfinite(value) and value < -margin))))
        return np.array(flags, dtype=bool)

    @property
    def failures(self) -> list[StoredResult]:
        """The checkpoints that failed, each with its ``error`` message."""
        return [r for r in self.records if not r.ok]

    @property
    def warnings(self) -> list[tuple[int, str, str]]:
        """``(step, category, message)`` of every warning raised while measuring."""
        return [
            (r.step, w["category"], w["message"]) for r in self.records for w in r.payload.get("warnings", [])
        ]

    def to_dataframe(self):
        """One row per checkpoint: step, status, source, every summary scalar, error and seconds."""
        import pandas as pd

        names: list[str] = []
        for r in self.records:
            names.extend(k for k in r.summary if k not in names)
        rows = []
        for r in self.records:
            row: dict[str, Any] = {"step": r.step, "status": r.status}
            for name in names:
                value = r.summary.get(name)
                row[name] = math.nan if value is None else value
            row.update(error=r.error, seconds=r.seconds, source=r.source)
            rows.append(row)
        columns = ["step", "status", *names, "error", "seconds", "source"]
        return pd.DataFrame(rows, columns=columns)

    def transitions(self, measure: str = "llc", **options: Any) -> list[Any]:
        """Rises and falls of ``measure`` over the checkpoints, by :func:`slt.detect_transitions`.

        ``measure`` is ``"llc"`` (λ̂, with its standard errors and per-chain estimates), or any summary
        column (``"train_loss"``, ``"test_loss"``, ``"dos_llc"``, ...). Failed checkpoints are left
        out, and for ``"llc"`` so are those that are not a minimum (:attr:`not_a_minimum`: their λ̂ is
        not a learning coefficient, and a jump between two of them, -64.6 to -13.1 on an early tanh MLP,
        was reported as a rise), as in ``slt report``; the result's ``notes`` say how many. Pass the
        result to :meth:`plot` as ``events`` to mark them.
        """
        import dataclasses

        from slt.transitions import Transitions, detect_transitions

        options.setdefault("dropna", True)
        off = self.not_a_minimum if measure == "llc" else np.zeros(len(self.records), dtype=bool)
        if not off.any():
            return detect_transitions(self, measure=measure, **options)
        kept = dataclasses.replace(self, records=[r for r, bad in zip(self.records, off) if not bad])
        events = detect_transitions(kept, measure=measure, **options)
        return Transitions(list(events), [not_a_minimum_note(int(off.sum())), *events.notes])

    # -- loading ----------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        store: str | os.PathLike[str] | ResultStore,
        settings_hash: str | None = None,
        run: str | None = None,
    ) -> Trajectory:
        """Read a trajectory back from a result store: the latest result of each step.

        Parameters
        ----------
        store : str, PathLike or ResultStore
            The SQLite file a sweep wrote.
        settings_hash : str, optional
            Which settings (hash or prefix; see ``ResultStore.runs()``) when the store holds several;
            default the most recently used.
        run : str, optional
            Which training run (its name, or a unique part of it such as the folder's name) when
            several runs were analysed with these settings. Without it, a store holding several runs
            is refused rather than mixed; the error lists them.
        """
        if not isinstance(store, ResultStore) and not os.path.exists(store):
            raise ValueError(f"no result store at {os.fspath(store)}")
        opened, owns = _open_store(store, readonly=True)
        try:
            info = opened.resolve_run(settings_hash)
            rows = opened.results(info.settings_hash)
        finally:
            if owns:
                opened.close()
        chosen, rows = _select_run(rows, run, info.settings_hash, opened.path)
        return cls(
            records=_latest_per_step(rows),
            settings=info.settings,
            settings_hash=info.settings_hash,
            store_path=opened.path,
            run=chosen,
        )

    # -- plotting ---------------------------------------------------------------------------------

    def plot(self, events: Iterable[Any] | None = None, *, axes: Any = None):
        """λ̂ ± standard error against step on linear and logarithmic axes, beside the loss curves.

        Checkpoints that are not a local minimum (:attr:`not_a_minimum`: λ̂ below zero) and failed
        checkpoints are marked along the bottom of the λ̂ panels (triangles and crosses with dotted
        lines) and kept off the scale, which follows the trustworthy estimates. On the log-step panels
        a step-0 checkpoint is drawn at a position left of the first positive step, labelled ``0``.

        Parameters
        ----------
        events : iterable, optional
            Transitions to mark: steps (numbers), or objects with a ``step`` attribute and optionally
            ``start``/``end`` (shaded) and ``direction`` (``"rise"`` or ``"fall"``) such as the events
            of a transition detector.
        axes : array of 4 matplotlib Axes, optional
            Where to draw (λ̂ linear, λ̂ log, loss linear, loss log); a new figure by default.

        Returns
        -------
        matplotlib.figure.Figure
        """
        import matplotlib.pyplot as plt

        if axes is None:
            fig, grid = plt.subplots(2, 2, figsize=(11, 6.5), sharex="col", constrained_layout=True)
            axes = grid.ravel()
        else:
            axes = np.ravel(axes)
            fig = axes[0].figure
        events = list(events) if events is not None else []
        steps = self.steps.astype(float)
        positive = steps[steps > 0]
        # on a log axis, step 0 sits a factor of four left of the first positive step
        zero_at = float(positive.min()) / 4 if positive.size else 1.0
        llc, err = self.llc_mean, self.llc_stderr
        dos_llc = self.column("dos_llc")
        losses = {"train loss": self.train_loss, "test loss": self.test_loss}
        off_scale = self.not_a_minimum
        failed = ~self.ok
        for col, scale in enumerate(("linear", "log")):
            ax_llc, ax_loss = axes[col], axes[2 + col]
            x = steps if scale == "linear" else np.where(steps > 0, steps, zero_at)
            good = np.isfinite(llc) & ~off_scale
            if good.any():
                # gaps where a checkpoint is missing from the scale: the line does not bridge them
                band = np.where(np.isfinite(err), err, 0.0)
                shown = np.where(good, llc, np.nan)
                ax_llc.plot(x, shown, "o-", ms=3, lw=1.2, color="C0", label=r"$\hat\lambda$ (SGLD)")
                ax_llc.fill_between(
                    x, shown - band, shown + band, where=good, color="C0", alpha=0.25, lw=0, label="± stderr"
                )
            if np.isfinite(dos_llc).any():
                keep = np.isfinite(dos_llc)
                ax_llc.plot(
                    x[keep], dos_llc[keep], "s--", ms=3, lw=1, color="C3", label=r"$\lambda$ (DOS fit)"
                )
            bottom = ax_llc.get_xaxis_transform()  # x in steps, y in axes fractions: off the scale
            if off_scale.any():
                ax_llc.plot(
                    x[off_scale], np.full(int(off_scale.sum()), 0.03), "v", ms=6, color="C1",
                    transform=bottom, clip_on=False, label=r"not a minimum ($\hat\lambda<0$, off scale)",
                )  # fmt: skip
            if failed.any():
                for s in x[failed]:
                    ax_llc.axvline(s, color="C3", lw=0.6, ls=":", alpha=0.6)
                ax_llc.plot(
                    x[failed], np.full(int(failed.sum()), 0.03), "x", ms=6, color="C3", transform=bottom,
                    clip_on=False, label="failed",
                )  # fmt: skip
            ax_llc.set(ylabel=r"$\hat\lambda$", title=rf"$\hat\lambda$ against step ({scale} steps)")
            for i, (name, values) in enumerate(losses.items()):
                keep = np.isfinite(values)
                if keep.any():
                    ax_loss.plot(x[keep], values[keep], "-", lw=1.2, color=f"C{i + 1}", label=name)
            if any(np.isfinite(v).any() for v in losses.values()):
                finite = np.concatenate([v[np.isfinite(v)] for v in losses.values()])
                if finite.size and (finite > 0).all():
                    ax_loss.set_yscale("log")
            ax_loss.set(xlabel="step", ylabel="loss", title=f"loss ({scale} steps)")
            if scale == "log":
                for ax in (ax_llc, ax_loss):
                    ax.set_xscale("log")
                if (steps <= 0).any():
                    _label_step_zero(ax_loss, zero_at)
            for ax in (ax_llc, ax_loss):
                _mark_events(ax, events, zero_at if scale == "log" else None)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7, loc="best")
        return fig


def _label_step_zero(ax: Any, zero_at: float) -> None:
    """Label the position of step 0 on a log axis ``0`` (the panels share their x axis)."""
    ax.figure.canvas.draw_idle()
    lo, hi = ax.get_xlim()
    ax.set_xlim(min(lo, zero_at / 2), hi)
    ticks = [t for t in ax.get_xticks() if zero_at * 2 < t <= hi]
    labels = [f"$10^{{{round(np.log10(t))}}}$" if np.isclose(np.log10(t) % 1, 0) else f"{t:g}" for t in ticks]
    ax.set_xticks([zero_at, *ticks], ["0", *labels])
    ax.set_xticks([], minor=True)


def _mark_events(ax: Any, events: Iterable[Any] | None, zero_at: float | None = None) -> None:
    if not events:
        return

    def place(value: Any) -> float:
        value = float(value)
        return zero_at if zero_at is not None and value <= 0 else value

    for event in events:
        if isinstance(event, (int, float, np.integer, np.floating)):
            ax.axvline(place(event), color="k", lw=0.9, ls="--", alpha=0.7)
            continue
        direction = getattr(event, "direction", None)
        color = {"rise": "C2", "fall": "C3"}.get(direction, "k")
        start, end = getattr(event, "start", None), getattr(event, "end", None)
        if start is not None and end is not None:
            ax.axvspan(place(start), place(end), color=color, alpha=0.12, lw=0)
        step = getattr(event, "step", None)
        if step is not None:
            ax.axvline(place(step), color=color, lw=0.9, ls="--", alpha=0.8)
