"""Measure the learning coefficient during training, without changing the training run.

:class:`LLCMonitor` is called as ``monitor(model, step)`` at every step of any training loop and
measures the model every ``every`` steps. It works on a copy of the model and restores the global
random number generators and those of the data loaders it iterates (``DataLoader(generator=...)`` and
its sampler), so the training run (weights, gradients, optimizer, data order) is bit for
bit what it would have been without it. :meth:`LLCMonitor.lightning_callback` wraps it as a PyTorch
Lightning callback. Results go to the same SQLite store as post-hoc sweeps, and steps measured with
the same seed give the same numbers as :func:`slt.analyze_checkpoints` on the saved weights.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from slt.sampling.data import check_data
from slt.sampling.losses import LossFn
from slt.sampling.rng import isolated_rng, preserved_generators
from slt.sampling.settings import check_device
from slt.sweeps.checkpoints import state_dict_fingerprint
from slt.sweeps.measures import (
    captured,
    checkpoint_seed,
    code_identity,
    format_error,
    measure_model,
    reemit_warnings,
)
from slt.sweeps.reference import choose_settings_at, stored_choice
from slt.sweeps.store import ResultStore, StoredResult, settings_hash
from slt.sweeps.trajectory import CheckpointFailedWarning, Trajectory, sweep_spec

__all__ = ["LLCMonitor", "make_lightning_callback"]


class LLCMonitor:
    """Estimate the LLC (and other measures) of a model being trained, every few steps.

    Parameters
    ----------
    data : tuple of Tensor, Dataset or DataLoader
        Training data, as for :func:`slt.estimate_llc`.
    loss_fn : str or callable
        ``"mse"``, ``"cross_entropy"`` or ``loss_fn(model, batch) -> scalar mean loss``.
    every : int, collection of int, or callable
        Measure when ``step % every == 0``, when ``step`` is in the collection (for example steps
        spaced logarithmically), or when ``every(step)`` is true.
    store : str, PathLike or ResultStore, optional
        SQLite file receiving each result as it is measured. A restarted run that reaches the same
        weights at the same step reuses the stored result instead of measuring again, and shows the
        warnings it was measured with.
    measures : sequence of {"llc", "dos", "loss"} or registered measures
        What to measure (see :func:`slt.analyze_checkpoints`).
    test_data : optional
        Held-out data for the test loss (with ``"loss"``).
    seed : int
        Base seed; step ``s`` uses :func:`slt.sweeps.measures.checkpoint_seed` ``(seed, s)``.
    dos_settings : dict, optional
        Keyword arguments of :func:`slt.estimate_dos` (``fit_form`` defaults to ``"power"``, as in
        :func:`slt.analyze_checkpoints`).
    measure_settings : dict of str to dict, optional
        Settings of other registered measures, by name.
    on_error : {"warn", "raise"}
        A failed measurement warns (:class:`~slt.sweeps.trajectory.CheckpointFailedWarning`) and training
        goes on, or raises. An unavailable ``device``, and in-memory data that cannot be sampled
        (tensors disagreeing on the number of samples, empty or non-finite data), raise when the
        monitor is made.
    run : str
        Name of the training run, stored with each row: give each run monitored into one store its
        own name, so that :meth:`slt.Trajectory.load` keeps them apart.
    reference : {None, "first"} or nn.Module
        Where the LLC settings a sweep chooses (γ, ``step_size``, ``num_burnin`` and ``num_draws``,
        those not given) are chosen, once, then held fixed so that every step is measured the same way
        (:mod:`slt.sweeps.reference`; recorded in ``settings["reference"]``). ``None``: each step
        chooses its own step size and length, at γ = 1 unless given (points measured differently are
        not strictly comparable, and the choice costs more than the measurement). ``"first"``: at the
        first measured step, so that step should come after the loss has fallen (a model at its random
        initialization keeps γ = 1 and the initialization's step). A model (for example the trained
        model of an earlier run, or the pretrained model being fine-tuned): at that model, when the
        monitor is made. :meth:`choose_settings` chooses at a model of your choice during training.
        With a ``store``, the choice is stored under the settings, the seed and the reference
        weights, and a restarted run reads it back.
    **estimator_settings
        Keyword arguments of :func:`slt.estimate_llc`. Without ``num_draws`` and ``step_size`` each
        measurement runs the automatic length, which stops only when the estimate holds to a 5% standard
        error: on a model still training that costs as much as a full estimate at every point (the
        monitoring tutorial's 147-parameter classifier on 2,000 samples: 40-102 s per point, 16,000-32,000
        draws per chain, against 0.75 s for its whole training run). For a cheap curve give ``num_draws``
        and ``step_size`` (the tutorial: 8 points in 7 s, with a ``ShortChainWarning`` saying the values
        show the curve's shape, not converged LLCs); a ``max_steps`` budget alone saves less (4,000 steps:
        11-13 s per point, each still choosing its own step).

    Examples
    --------
    >>> monitor = slt.LLCMonitor((x, y), loss_fn="mse", every=100, num_draws=200)  # doctest: +SKIP
    >>> for step in range(steps):  # doctest: +SKIP
    ...     train_step(model)
    ...     monitor(model, step)
    >>> monitor.trajectory.plot()  # doctest: +SKIP
    """

    def __init__(
        self,
        data: Any,
        *,
        loss_fn: str | LossFn,
        every: int | Collection[int] | Callable[[int], bool] = 100,
        store: str | os.PathLike[str] | ResultStore | None = None,
        measures: str | Sequence[str] = ("llc",),
        test_data: Any = None,
        seed: int = 0,
        dos_settings: Mapping[str, Any] | None = None,
        measure_settings: Mapping[str, Mapping[str, Any]] | None = None,
        on_error: str = "warn",
        run: str = "LLCMonitor",
        reference: str | nn.Module | None = None,
        **estimator_settings: Any,
    ):
        if on_error not in ("warn", "raise"):
            raise ValueError(f'on_error must be "warn" or "raise", got {on_error!r}')
        if isinstance(every, bool) or (isinstance(every, int) and every < 1):
            raise ValueError(
                f"every must be a positive integer, a collection of steps or a callable, got {every!r}"
            )
        if not (isinstance(every, int) or callable(every) or isinstance(every, Collection)):
            raise TypeError(
                f"every must be an int, a collection of steps or a callable, got {type(every).__name__}"
            )
        checkpoint_seed(seed, 0)  # validates the seed
        if not (reference is None or reference == "first" or isinstance(reference, nn.Module)):
            raise ValueError(f'reference must be None, "first" or a model, got {reference!r}')
        self._spec_arguments = (measures, loss_fn, data, test_data, dict(estimator_settings))
        self._other_settings = (dos_settings, measure_settings)
        self.spec = sweep_spec(
            measures, loss_fn, data, test_data, estimator_settings, dos_settings, measure_settings
        )
        if self.spec.device is not None:
            check_device(self.spec.device)
        check_data(data)  # in-memory data that cannot be sampled is refused now, not at every step
        if test_data is not None:
            check_data(test_data)
        self.every = frozenset(int(s) for s in every) if isinstance(every, Collection) else every
        self.seed = seed
        self.on_error = on_error
        if not isinstance(run, str) or not run:
            raise ValueError(f"run must be a non-empty string naming the training run, got {run!r}")
        self.run = run
        self.settings = {
            **self.spec.description(),
            "seed": seed,
            "model_factory": "LLCMonitor",
            "code": code_identity(self.spec.code_to_hash()),
        }
        if store is None:
            self.store: ResultStore | None = None
            self.settings_hash = settings_hash(self.settings)
        else:
            self.store = store if isinstance(store, ResultStore) else ResultStore(store)
            self.settings_hash = self.store.register_run(self.settings)
        self._owns_store = store is not None and not isinstance(store, ResultStore)
        self.records: list[StoredResult] = []
        self._choose_at_first = reference == "first" and "llc" in self.spec.names
        if isinstance(reference, nn.Module):
            self.choose_settings(reference)

    def due(self, step: int) -> bool:
        """Whether ``step`` is one of the steps to measure."""
        if isinstance(self.every, int):
            return step % self.every == 0
        if isinstance(self.every, frozenset):
            return step in self.every
        return bool(self.every(step))

    def __call__(self, model: nn.Module, step: int, *, force: bool = False) -> StoredResult | None:
        """Measure ``model`` if ``step`` is due (or ``force``); returns the stored row, else ``None``.

        The model, its gradients, its mode and the global RNG states are left exactly as they were.
        """
        step = int(step)
        if not (force or self.due(step)):
            return None
        if self._choose_at_first:
            self.choose_settings(model, step)
        cid = f"step={step}|monitor"
        if self.store is not None:
            cid = f"step={step}|weights-sha256={state_dict_fingerprint(model.state_dict())}"
            stored = self.store.results(self.settings_hash, [cid])
            if stored and stored[0].ok:
                self.records.append(stored[0])
                # the stored numbers carry the problems they were measured with
                reemit_warnings([(step, stored[0].payload.get("warnings", []))], stacklevel=3)
                return stored[0]
        row = self._measure(model, step, cid)
        if self.store is not None:
            self.store.record(row)
        self.records.append(row)
        if row.ok:
            reemit_warnings([(step, row.payload.get("warnings", []))], stacklevel=3)
        elif self.on_error == "warn":
            warnings.warn(
                f"LLCMonitor could not measure step {step}: {row.error}; training goes on",
                CheckpointFailedWarning,
                stacklevel=2,
            )
        return row

    def choose_settings(self, model: nn.Module, step: int = 0) -> dict[str, Any]:
        """Choose the LLC settings at ``model`` now and hold them for every later measurement.

        γ, ``step_size``, ``num_burnin`` and ``num_draws`` (those not given to the monitor) are chosen
        by :func:`slt.sweeps.reference.choose_settings_at` with ``model`` as the only probe, recorded in
        ``settings["reference"]`` (with ``step``), and the settings' hash changes with them. The model,
        its gradients, its mode and the global RNG states are left exactly as they were.

        Parameters
        ----------
        model : nn.Module
            The model to choose at (a trained one: at a random initialization γ stays 1).
        step : int
            Its training step (recorded; it also seeds the trials).

        Returns
        -------
        dict
            The settings chosen (empty when every one was given, or when the trials failed: then
            ``settings["reference"]["skipped"]`` says why and each step chooses its own).

        Raises
        ------
        RuntimeError
            When the monitor has measured already or has chosen before: the points would not be
            measured the same way.
        """
        if self.records or "reference" in self.settings:
            raise RuntimeError(
                "the monitor has already measured or chosen its settings; choose them before the first "
                "measurement (reference= when making the monitor), so that every step is measured the "
                "same way"
            )
        self._choose_at_first = False
        if "llc" not in self.spec.names:
            return {}
        measures, loss_fn, data, test_data, given = self._spec_arguments
        devices = tuple({p.device for p in model.parameters()})
        seed, step = self.seed, int(step)

        def choose() -> tuple[dict[str, Any], dict[str, Any]]:
            with isolated_rng(checkpoint_seed(seed, step), devices), preserved_generators(data, test_data):
                return choose_settings_at([model], [step], data, loss_fn, self.spec.llc_settings, seed)

        if self.store is None:
            fixed, record = choose()
        else:
            fingerprint = state_dict_fingerprint(model.state_dict())
            request = {**self.settings, "reference_weights": fingerprint, "reference_step": step}
            fixed, record = stored_choice(self.store, request, choose)
        if not record:
            return {}
        self.spec = sweep_spec(measures, loss_fn, data, test_data, {**given, **fixed}, *self._other_settings)
        self.settings = {**self.settings, **self.spec.description(), "reference": record}
        if self.store is None:
            self.settings_hash = settings_hash(self.settings)
        else:
            self.settings_hash = self.store.register_run(self.settings)
        return dict(fixed)

    def _measure(self, model: nn.Module, step: int, cid: str) -> StoredResult:
        import time

        start = time.perf_counter()
        devices = tuple({p.device for p in model.parameters()})
        row = StoredResult(
            checkpoint_id=cid,
            settings_hash=self.settings_hash,
            step=step,
            source=f"{type(model).__name__} at step {step}",
            status="done",
        )
        with (
            warnings.catch_warnings(record=True) as caught,
            isolated_rng(checkpoint_seed(self.seed, step), devices),
            preserved_generators(self.spec.data, self.spec.test_data),
        ):
            warnings.simplefilter("always")
            try:
                row.summary, row.payload = measure_model(model, self.spec, self.seed, step)
            except Exception as exc:
                if self.on_error == "raise":
                    raise
                row.status, row.error = "failed", format_error(exc)
        row.payload["warnings"] = captured(caught)
        row.payload["run"] = self.run
        row.seconds = time.perf_counter() - start
        return row

    @property
    def trajectory(self) -> Trajectory:
        """The measurements so far, one per step (the latest measurement of a repeated step)."""
        by_step: dict[int, StoredResult] = {}
        for row in self.records:
            by_step[row.step] = row
        return Trajectory(
            records=[by_step[s] for s in sorted(by_step)],
            settings=self.settings,
            settings_hash=self.settings_hash,
            store_path=None if self.store is None else self.store.path,
            run=self.run,
        )

    def close(self) -> None:
        """Close the store if the monitor opened it (results are already committed)."""
        if self._owns_store and self.store is not None:
            self.store.close()

    def lightning_callback(self) -> Any:
        """The monitor as a PyTorch Lightning callback (see :func:`make_lightning_callback`)."""
        return make_lightning_callback(self)


def make_lightning_callback(monitor: LLCMonitor) -> Any:
    """A Lightning ``Callback`` calling ``monitor(pl_module, trainer.global_step)`` after each batch.

    Only the global-zero process measures in distributed training. Needs ``lightning`` (or the older
    ``pytorch_lightning``): ``pip install "slt[lightning]"``.
    """
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError as exc:
            raise ImportError(
                'the Lightning callback needs PyTorch Lightning: pip install "slt[lightning]"'
            ) from exc

    class LLCMonitorCallback(Callback):
        """Calls an :class:`slt.LLCMonitor` after every training batch."""

        def __init__(self, monitor: LLCMonitor):
            self.monitor = monitor

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            if getattr(trainer, "is_global_zero", True):
                with torch.enable_grad():
                    self.monitor(pl_module, trainer.global_step)

    return LLCMonitorCallback(monitor)
