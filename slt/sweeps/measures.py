"""What a sweep measures at one set of weights, and the per-checkpoint task that workers run.

Measures are registered values (:class:`Measure`, :func:`register_measure`): ``"llc"``, ``"dos"`` and
``"loss"`` ship with slt, and a new one registered here is taken by sweeps, the monitor and the CLI.
:func:`measure_model` takes the requested measures of a model.
:func:`measure_checkpoint` is the task a sweep submits per checkpoint: load the weights, build the
model, measure, and report success or the error; it never raises, so one bad checkpoint cannot stop a
sweep. Both the post-hoc sweep and the training-loop monitor use :func:`checkpoint_seed`, so the same
weights at the same step get the same numbers wherever they are measured.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import slt.warnings as slt_warnings
from slt.sampling.data import unwrap_tensors
from slt.sampling.rng import isolated_rng, preserved_generators
from slt.sweeps.checkpoints import Checkpoint, build_model, tensor_bytes

__all__ = [
    "MEASURES",
    "Measure",
    "MeasureInput",
    "MeasureSpec",
    "register_measure",
    "get_measure",
    "Outcome",
    "SweepJob",
    "checkpoint_seed",
    "validate_measures",
    "validate_llc_settings",
    "measure_model",
    "measure_checkpoint",
    "describe",
    "code_fingerprint",
    "code_identity",
    "data_fingerprint",
    "reemit_warnings",
]

#: Keyword arguments of ``estimate_llc`` that the sweep sets itself.
_RESERVED = {"model", "data", "loss_fn", "seed", "progress"}


def checkpoint_seed(seed: int, step: int, stream: int = 0) -> int:
    """The seed used at training step ``step`` of a sweep seeded with ``seed``.

    Derived with numpy's ``SeedSequence`` from ``(seed, step, stream)``, so it depends neither on the
    order in which checkpoints run nor on which worker runs them, and nearby steps get unrelated
    streams. ``stream`` separates measures (0 for the LLC, 1 for the DOS).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    words = np.random.SeedSequence([int(seed), int(step) % 2**63, int(stream)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@dataclass(frozen=True)
class MeasureInput:
    """What a measure gets besides the model: the sweep's data and loss, its own settings and seed.

    Attributes
    ----------
    data, loss_fn, test_data
        As given to the sweep (``test_data`` may be ``None``).
    settings : dict
        This measure's settings (validated by its ``validate`` before the sweep started).
    seed : int
        This measure's seed at this checkpoint (:func:`checkpoint_seed` with the measure's stream).
    device : str or None
        The device asked for (the ``device`` setting of the LLC), or ``None``.
    summary : dict
        Scalars that earlier measures of this checkpoint produced (read only), so a measure can reuse
        them (the ``"loss"`` measure reuses the LLC's train loss).
    """

    data: Any
    loss_fn: Any
    test_data: Any
    settings: Mapping[str, Any]
    seed: int
    device: str | None
    summary: Mapping[str, Any]


@dataclass(frozen=True)
class Measure:
    """A quantity a sweep or monitor takes at every checkpoint, as a registered value.

    Parameters
    ----------
    name : str
        Name used in ``measures=`` (and ``slt analyze --measures``).
    measure : callable
        ``measure(model, MeasureInput) -> (summary, payload)``: ``summary`` a dict of scalars (columns
        of :class:`~slt.sweeps.trajectory.Trajectory`, stored per checkpoint), ``payload`` anything
        JSON-able (the full result), or ``None``. Must leave ``model`` as it found it.
    validate : callable, optional
        ``validate(settings) -> settings``: called once before the sweep; raise ``ValueError`` naming
        what to change.
    defaults : callable, optional
        ``defaults() -> dict``: default settings, hashed with the given ones so that a changed default
        recomputes.
    load : callable, optional
        ``load(payload) -> result``: rebuilds the result object from a stored payload.
    stream : int, optional
        Seed stream (see :func:`checkpoint_seed`); by default derived from the name.
    """

    name: str
    measure: Callable[[nn.Module, MeasureInput], tuple[dict[str, Any], Any]]
    validate: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    defaults: Callable[[], dict[str, Any]] | None = None
    load: Callable[[Any], Any] | None = None
    stream: int | None = None

    def seed_stream(self) -> int:
        """The stream of :func:`checkpoint_seed` this measure draws from."""
        if self.stream is not None:
            return self.stream
        return int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:4], "little") + 2

    def check_settings(self, settings: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate ``settings`` (a copy is returned)."""
        settings = dict(settings or {})
        return self.validate(settings) if self.validate is not None else settings

    def default_settings(self) -> dict[str, Any]:
        """The measure's default settings (empty without ``defaults``)."""
        return self.defaults() if self.defaults is not None else {}


#: The registry of measures, in the order a checkpoint takes them; see :func:`register_measure`.
MEASURES: dict[str, Measure] = {}


def register_measure(measure: Measure, *, replace: bool = False) -> Measure:
    """Make ``measure`` available by name to sweeps, the monitor and ``slt analyze --measures``.

    Raises
    ------
    TypeError
        When ``measure`` is not a :class:`Measure`.
    ValueError
        When the name is taken and ``replace`` is false.
    """
    if not isinstance(measure, Measure):
        raise TypeError(f"register_measure takes a slt.sweeps.measures.Measure, got {type(measure).__name__}")
    if measure.name in MEASURES and MEASURES[measure.name] is not measure and not replace:
        raise ValueError(f"a measure named {measure.name!r} is registered already; pass replace=True")
    MEASURES[measure.name] = measure
    return measure


def get_measure(name: str | Measure) -> Measure:
    """The registered :class:`Measure` called ``name`` (a :class:`Measure` is returned as is).

    Raises
    ------
    ValueError
        For an unknown name, listing the registered ones.
    """
    if isinstance(name, Measure):
        return name
    try:
        return MEASURES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown measure {name!r}; choose among {', '.join(map(repr, MEASURES))} or register one "
            "with slt.sweeps.measures.register_measure"
        ) from None


def validate_measures(measures: str | Measure | Sequence[str | Measure]) -> tuple[str, ...]:
    """Check the requested measures and return their names as a tuple without repeats.

    Raises
    ------
    ValueError
        For an empty selection or an unknown name.
    """
    if isinstance(measures, (str, Measure)):
        measures = (measures,)
    names = tuple(dict.fromkeys(get_measure(m).name if isinstance(m, Measure) else m for m in measures))
    if not names:
        raise ValueError(f"measures must be a non-empty selection of {tuple(MEASURES)}, got []")
    for name in names:
        get_measure(name)
    return names


def validate_llc_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Check that every key is a setting of :func:`slt.estimate_llc` the sweep passes through.

    The sampler and its options are checked too (an unknown sampler or option fails here, once,
    instead of at every checkpoint).
    """
    from slt.estimators.llc import estimate_llc
    from slt.sampling.driver import bind_kernel
    from slt.sampling.settings import validate_settings

    allowed = set(inspect.signature(estimate_llc).parameters) - _RESERVED
    unknown = sorted(set(settings) - allowed)
    if unknown:
        reserved = sorted(set(unknown) & _RESERVED)
        hint = f" ({', '.join(reserved)} are set by the sweep itself)" if reserved else ""
        raise ValueError(
            f"unknown estimator settings {unknown}{hint}; estimate_llc accepts {sorted(allowed)}"
        )
    validate_settings(
        **{k: settings[k] for k in settings if k in inspect.signature(validate_settings).parameters}
    )
    bind_kernel(settings.get("sampler", "sgld"), settings.get("sampler_options"))
    return dict(settings)


def llc_defaults() -> dict[str, Any]:
    """Default values of the :func:`slt.estimate_llc` settings a sweep passes through."""
    from slt.estimators.llc import estimate_llc
    from slt.samplers import KERNELS

    defaults = {
        name: p.default
        for name, p in inspect.signature(estimate_llc).parameters.items()
        if name not in _RESERVED and p.default is not inspect.Parameter.empty
    }
    # a kernel's option defaults change the numbers too (SGLD's noise scheme, for one)
    defaults["kernel_option_defaults"] = {
        name: dict(KERNELS[name].options) for name in ("sgld", "rmsprop_sgld", "sgnht")
    }
    return defaults


def _measure_llc(model: nn.Module, given: MeasureInput) -> tuple[dict[str, Any], Any]:
    from slt.estimators.llc import estimate_llc

    result = estimate_llc(
        model, given.data, loss_fn=given.loss_fn, seed=given.seed, progress=False, **given.settings
    )
    summary = {
        "llc_mean": result.mean,
        "llc_corrected": result.corrected,
        "llc_std": result.std,
        "llc_stderr": result.stderr,
        "llc_ess": result.diagnostics.ess,
        "llc_rhat": result.diagnostics.rhat,
        "llc_low": result.interval[0],
        "llc_high": result.interval[1],
        "llc_chains_diverged": int(result.diagnostics.diverged.sum()),
        "llc_chains_unstable": int(np.asarray(result.diagnostics.unstable, dtype=bool).sum()),
        "llc_localization_share": result.checks.localization_share,
        "llc_localization_share_stderr": result.checks.localization_share_stderr,
        "step_size": result.settings.step_size,
        "train_loss": result.init_loss,
    }
    return summary, result.to_dict()


def _load_llc(payload: Any) -> Any:
    from slt.estimators.llc import LLCResult

    return LLCResult.from_dict(payload)


def _measure_loss(model: nn.Module, given: MeasureInput) -> tuple[dict[str, Any], Any]:
    from slt.sampling import PosteriorSampler

    def full_loss(data: Any) -> float:
        return PosteriorSampler(model, data, given.loss_fn, device=given.device).init_loss

    summary: dict[str, Any] = {}
    if "train_loss" not in given.summary:
        summary["train_loss"] = full_loss(given.data)
    if given.test_data is not None:
        summary["test_loss"] = full_loss(given.test_data)
    return summary, None


def _check_no_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    if settings:
        raise ValueError(f'the "loss" measure takes no settings, got {sorted(settings)}')
    return {}


#: The density of states' fit form in sweeps unless ``dos_settings`` gives one: the local power-law slope
#: (m = 1) over the fit window, read the same way at every checkpoint.
SWEEP_DOS_FIT_FORM = "power"


def _measure_dos(model: nn.Module, given: MeasureInput) -> tuple[dict[str, Any], Any]:
    from slt.dos import estimate_dos

    kwargs = dict(given.settings)
    kwargs.setdefault("progress", False)
    # one form at every checkpoint, so that the column compares like with like ("auto" could switch between
    # the log and the power form from one checkpoint to the next); each stored result can be refitted
    kwargs.setdefault("fit_form", SWEEP_DOS_FIT_FORM)
    dos = estimate_dos(model, given.data, loss_fn=given.loss_fn, seed=given.seed, **kwargs)
    return {"dos_llc": float(dos.llc), "dos_multiplicity": float(dos.multiplicity)}, dos.to_dict()


def _load_dos(payload: Any) -> Any:
    from slt.dos import DOSResult

    return DOSResult.from_dict(payload)


register_measure(
    Measure(
        "llc", _measure_llc, validate=validate_llc_settings, defaults=llc_defaults, load=_load_llc, stream=0
    )
)
register_measure(Measure("dos", _measure_dos, load=_load_dos, stream=1))
register_measure(Measure("loss", _measure_loss, validate=_check_no_settings))
_BUILT_IN = dict(MEASURES)


@dataclass(frozen=True)
class MeasureSpec:
    """Everything that is measured at a set of weights, apart from the weights.

    Attributes
    ----------
    measures : tuple of Measure
        What to measure, in order.
    loss_fn : str or callable
        ``"mse"``, ``"cross_entropy"`` or ``loss_fn(model, batch)``.
    data : Any
        Training data (tensors, a dataset or a data loader).
    test_data : Any
        Held-out data for the test loss, or ``None``.
    settings : dict of str to dict
        Each measure's settings, by measure name.
    device : str or None
        Where to measure (the LLC's ``device`` setting); ``None`` for the model's device.
    """

    measures: tuple[Measure, ...]
    loss_fn: Any
    data: Any
    test_data: Any = None
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    device: str | None = None

    @classmethod
    def build(
        cls,
        measures: str | Measure | Sequence[str | Measure],
        *,
        loss_fn: Any,
        data: Any,
        test_data: Any = None,
        settings: Mapping[str, Mapping[str, Any] | None] | None = None,
        device: str | None = None,
    ) -> MeasureSpec:
        """Resolve and validate the measures and their settings once, before a sweep.

        Raises
        ------
        ValueError
            For an unknown measure, settings of a measure that was not requested, or settings a
            measure's ``validate`` refuses.
        """
        if isinstance(measures, (str, Measure)):
            measures = (measures,)
        resolved = tuple({m.name: m for m in map(get_measure, measures)}.values())
        if not resolved:
            raise ValueError(f"measures must be a non-empty selection of {tuple(MEASURES)}, got []")
        names = [m.name for m in resolved]
        given = {k: v for k, v in (settings or {}).items() if v}
        stray = sorted(set(given) - set(names))
        if stray:
            raise ValueError(f"settings for {stray}, which were not requested (measures: {names})")
        checked = {m.name: m.check_settings(given.get(m.name)) for m in resolved}
        return cls(resolved, loss_fn, data, test_data, checked, None if device is None else str(device))

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the measures."""
        return tuple(m.name for m in self.measures)

    @property
    def llc_settings(self) -> dict[str, Any]:
        """Settings of the ``"llc"`` measure (empty when it is not taken)."""
        return dict(self.settings.get("llc", {}))

    def code_to_hash(self) -> dict[str, Any]:
        """The callables whose code changes the numbers: the loss, callable settings, custom measures.

        Passed to :func:`code_identity`; slt's own measures are named by the description instead.
        """
        custom = {m.name: m.measure for m in self.measures if m is not _BUILT_IN.get(m.name)}
        return {"loss_fn": self.loss_fn, **self.settings, "measures": custom}

    def description(self) -> dict[str, Any]:
        """JSON-able description of everything that changes the numbers (hashed by the store)."""
        out: dict[str, Any] = {
            "measures": sorted(self.names),
            "loss_fn": describe(self.loss_fn),
            "data": data_fingerprint(self.data),
        }
        for m in self.measures:
            if m.name == "loss":
                continue
            out[m.name] = describe({**m.default_settings(), **self.settings.get(m.name, {})})
        if "loss" in self.names and self.test_data is not None:
            out["test_data"] = data_fingerprint(self.test_data)
        return out


def measure_model(
    model: nn.Module, spec: MeasureSpec, seed: int, step: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Take every measure of ``spec`` of ``model`` at its current weights.

    Returns
    -------
    summary : dict
        Scalars of every measure: ``llc_mean``, ``llc_corrected`` (:attr:`LLCResult.corrected`),
        ``llc_std``, ``llc_stderr``, ``llc_ess``, ``llc_rhat``,
        ``llc_low``, ``llc_high`` (the 95% interval), ``llc_chains_diverged``,
        ``llc_chains_unstable`` (left out past the step's stability limit), ``llc_localization_share``
        (minus d ln λ̂ / d ln γ, :attr:`slt.estimators.llc_result.LLCChecks.localization_share`) and
        ``llc_localization_share_stderr`` (its standard error over chains: the warning needs the share
        above 0.5 by a Student-t margin of it),
        ``step_size``, ``train_loss``,
        ``test_loss``, ``dos_llc``,
        ``dos_multiplicity`` for the built-in ones (those that were measured).
    payload : dict
        Full results by measure name (``payload["llc"]`` is ``LLCResult.to_dict()``), and
        ``payload["seeds"]``, the seed of each measure.
    """
    summary: dict[str, Any] = {}
    payload: dict[str, Any] = {"seeds": {}}
    for m in spec.measures:
        measure_seed = checkpoint_seed(seed, step, m.seed_stream())
        given = MeasureInput(
            data=spec.data,
            loss_fn=spec.loss_fn,
            test_data=spec.test_data,
            settings=spec.settings.get(m.name, {}),
            seed=measure_seed,
            device=spec.device,
            summary=dict(summary),
        )
        scalars, result = m.measure(model, given)
        summary.update(scalars)
        if result is not None:
            payload[m.name] = result
            payload["seeds"][m.name] = measure_seed
    return summary, payload


@dataclass
class Outcome:
    """What measuring one checkpoint gave: numbers, or the error that stopped it."""

    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = float("nan")


@dataclass(frozen=True)
class SweepJob:
    """The part of a sweep that every checkpoint task shares (sent to each worker)."""

    model_factory: Callable[[], nn.Module]
    spec: MeasureSpec
    seed: int
    allow_pickle: bool = False
    state_dict_key: str | None = None
    state_dict_prefix: str | None = None


def measure_checkpoint(checkpoint: Checkpoint, job: SweepJob) -> Outcome:
    """Load one checkpoint, measure it, and return the outcome; never raises on a bad checkpoint.

    The global RNGs are seeded from the checkpoint's seed while the model is built and restored
    afterwards, so results do not depend on the process the task runs in, and a sweep run in the
    caller's process leaves the caller's random streams untouched.
    """
    start = time.perf_counter()
    seed = checkpoint_seed(job.seed, checkpoint.step)
    with (
        warnings.catch_warnings(record=True) as caught,
        preserved_generators(job.spec.data, job.spec.test_data),  # every checkpoint starts alike
    ):
        warnings.simplefilter("always")
        try:
            with isolated_rng(seed):
                state_dict = checkpoint.load_state_dict(
                    allow_pickle=job.allow_pickle,
                    state_dict_key=job.state_dict_key,
                    state_dict_prefix=job.state_dict_prefix,
                )
                model = build_model(job.model_factory, state_dict, checkpoint.source)
            summary, payload = measure_model(model, job.spec, job.seed, checkpoint.step)
        except Exception as exc:
            return Outcome(
                status="failed",
                error=format_error(exc),
                payload={"warnings": captured(caught), "traceback": traceback.format_exc(limit=8)},
                seconds=time.perf_counter() - start,
            )
    payload["warnings"] = captured(caught)
    return Outcome(status="done", summary=summary, payload=payload, seconds=time.perf_counter() - start)


def format_error(exc: BaseException) -> str:
    """``"TypeName: message"`` of an exception, as stored for failed checkpoints."""
    return f"{type(exc).__name__}: {exc}"


def captured(records: Sequence[warnings.WarningMessage]) -> list[dict[str, str]]:
    """Warnings caught while measuring, as JSON-able ``{"category", "message"}`` records."""
    return [{"category": w.category.__name__, "message": str(w.message)} for w in records]


def reemit_warnings(
    per_step: Sequence[tuple[int, Sequence[Mapping[str, str]]]], *, stacklevel: int = 3
) -> None:
    """Re-raise caught warnings in the caller's process: one warning per category, naming the steps."""
    by_category: dict[str, list[tuple[int, str]]] = {}
    for step, records in per_step:
        for record in records:
            by_category.setdefault(record["category"], []).append((step, record["message"]))
    total = len(per_step)
    for name, hits in by_category.items():
        category = _warning_class(name)
        steps = sorted({s for s, _ in hits})
        shown = ", ".join(map(str, steps[:10])) + (" ..." if len(steps) > 10 else "")
        if total == 1:
            text = f"step {steps[0]}: {hits[0][1]}"
        else:
            text = (
                f"{name} at {len(steps)} of {total} checkpoints (steps {shown}); "
                f"at step {hits[0][0]}: {hits[0][1]}"
            )
        warnings.warn(text, category, stacklevel=stacklevel)


def _warning_class(name: str) -> type[Warning]:
    """The warning class of a caught warning's name: slt's own, a built-in one, else ``UserWarning``."""
    import builtins

    for found in (getattr(slt_warnings, name, None), getattr(builtins, name, None)):
        if isinstance(found, type) and issubclass(found, Warning):
            return found
    return UserWarning


# -- describing settings for the store's hash ---------------------------------------------------


def describe(value: Any) -> Any:
    """A JSON-able description of a setting: callables by import name, tensors by content hash."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (np.integer, np.floating)):
        return describe(value.item())
    if isinstance(value, Tensor):
        return {"tensor_sha256": hashlib.sha256(tensor_bytes(value)).hexdigest(), "shape": list(value.shape)}
    if isinstance(value, ModuleType):
        return getattr(value, "name", value.__name__)
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, torch.device):
        return str(value)
    if callable(value):
        module = getattr(value, "__module__", None) or type(value).__module__
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        return f"{module}:{name}"
    return repr(value)


def data_fingerprint(data: Any) -> str:
    """Identify a data set: a content hash for tensors, the type and length for other datasets.

    Changes inside a custom ``Dataset`` or ``DataLoader`` of the same length are not detected; a
    sweep over changed data of that kind should use a new store or seed.
    """
    data = unwrap_tensors(data)
    if isinstance(data, (tuple, list)) and all(isinstance(t, Tensor) for t in data):
        digest = hashlib.sha256()
        for t in data:
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(tensor_bytes(t))
        return f"tensors-sha256:{digest.hexdigest()}"
    if isinstance(data, DataLoader):
        dataset = describe(type(data.dataset))
        return f"DataLoader({dataset}, len={_length(data.dataset)}, batch_size={data.batch_size})"
    if isinstance(data, Dataset):
        return f"{describe(type(data))}(len={_length(data)})"
    return repr(type(data))


def _length(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


# -- fingerprinting the code of callables for the store's hash -------------------------------------


def code_identity(named: Mapping[str, Any]) -> dict[str, str]:
    """``{name: code fingerprint}`` of every callable in ``named`` and inside its setting values.

    Modules (samplers given as modules) and strings (``"mse"``) are named by the settings already and
    left out; every other callable, at any depth of a mapping or sequence, gets a
    :func:`code_fingerprint`, so editing a model factory, a loss function or a callable setting changes
    the settings hash and the store computes fresh results instead of returning the old ones.
    """
    out: dict[str, str] = {}

    def visit(name: str, value: Any) -> None:
        if isinstance(value, (str, bytes, ModuleType, Tensor)) or value is None:
            return
        if callable(value):
            out[name] = code_fingerprint(value, what=name)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                visit(f"{name}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(f"{name}[{i}]", v)

    for name, value in named.items():
        visit(name, value)
    return out


def code_fingerprint(fn: Callable[..., Any], *, what: str = "callable") -> str:
    """A hash of what a callable computes: its code, constants, defaults, closures and arguments.

    Functions are hashed by their byte code and constants (nested functions included), default
    arguments, the values their closures capture, and the module-level names they use: constants
    (numbers, strings, tensors) by value and functions and classes of non-library modules by their own
    code, so an edited helper counts too. Classes are hashed by the code of their methods,
    ``functools.partial`` objects by the function and the bound arguments, callable objects by their
    class and attributes. Library code (the standard library and installed packages) is identified by
    name only.

    Raises
    ------
    ValueError
        When part of the callable cannot be identified across processes (an object whose only
        description is its memory address); the message names it and says what to pass instead.
    """
    digest = hashlib.sha256()
    _Fingerprinter(digest, what).feed(fn)
    return "code-sha256:" + digest.hexdigest()[:32]


class _Fingerprinter:
    """Feeds a callable and everything it depends on into a hash, visiting each object once."""

    _MAX_DEPTH = 40

    def __init__(self, digest: Any, what: str):
        self.digest = digest
        self.what = what
        self.seen: set[int] = set()
        self.depth = 0

    def put(self, *parts: Any) -> None:
        for part in parts:
            data = part if isinstance(part, bytes) else str(part).encode()
            self.digest.update(len(data).to_bytes(8, "little"))
            self.digest.update(data)

    def feed(self, obj: Any) -> None:
        """Feed any value: plain data by value, callables by code."""
        import functools
        import types

        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            self.put(type(obj).__name__, repr(obj))
            return
        if isinstance(obj, (np.integer, np.floating, np.bool_)):
            self.put("np", repr(obj.item()))
            return
        if isinstance(obj, Tensor):
            self.put("tensor", obj.dtype, tuple(obj.shape), hashlib.sha256(tensor_bytes(obj)).hexdigest())
            return
        if isinstance(obj, np.ndarray):
            content = hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()
            self.put("ndarray", obj.dtype, obj.shape, content)
            return
        if isinstance(obj, (torch.device, torch.dtype)):
            self.put(type(obj).__name__, str(obj))
            return
        if isinstance(obj, ModuleType):
            self.put("module", obj.__name__)
            return
        if isinstance(obj, types.CodeType):
            self._code(obj)
            return
        if id(obj) in self.seen:
            self.put("seen", _qualified_name(obj))
            return
        self.seen.add(id(obj))
        self.depth += 1
        try:
            if self.depth > self._MAX_DEPTH:
                raise ValueError(
                    f"cannot fingerprint {self.what}: its objects nest more than {self._MAX_DEPTH} deep"
                )
            if isinstance(obj, (list, tuple, set, frozenset)):
                items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
                self.put(type(obj).__name__, len(items))
                for item in items:
                    self.feed(item)
            elif isinstance(obj, Mapping):
                self.put("mapping", len(obj))
                for key in sorted(obj, key=repr):
                    self.feed(key)
                    self.feed(obj[key])
            elif isinstance(obj, functools.partial):
                self.put("partial")
                self.feed(obj.func)
                self.feed(obj.args)
                self.feed(dict(obj.keywords))
            elif isinstance(obj, types.MethodType):
                self.put("method")
                self.feed(obj.__func__)
                self.feed(obj.__self__)
            elif isinstance(obj, types.FunctionType):
                self._function(obj)
            elif isinstance(obj, type):
                self._class(obj)
            elif isinstance(obj, (staticmethod, classmethod)):
                self.feed(obj.__func__)
            elif isinstance(obj, property):
                for part in (obj.fget, obj.fset, obj.fdel):
                    self.feed(part)
            elif isinstance(obj, (types.BuiltinFunctionType, types.MethodWrapperType)):
                self.put("builtin", _qualified_name(obj))
            elif isinstance(obj, nn.Module):
                from slt.sweeps.checkpoints import state_dict_fingerprint

                self.put("nn.Module")
                self.feed(type(obj))
                self.put(state_dict_fingerprint(obj.state_dict()))
            elif hasattr(obj, "__dict__") and not _is_library(type(obj)):
                self.put("object")
                self.feed(type(obj))
                self.feed(dict(vars(obj)))
            else:
                text = repr(obj)
                if " at 0x" in text:
                    raise ValueError(
                        f"cannot fingerprint {self.what}: it holds {text[:80]}, which is known only by its "
                        "memory address, so the store could not tell a changed setting from an unchanged "
                        "one. Pass a module-level function (or functools.partial with plain arguments)."
                    )
                self.put("repr", _qualified_name(type(obj)), text)
        finally:
            self.depth -= 1

    def _code(self, code: Any) -> None:
        import types

        self.put("code", code.co_name, code.co_argcount, code.co_kwonlyargcount, code.co_flags, code.co_code)
        self.put(*code.co_names, *code.co_freevars)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self._code(const)
            else:
                self.put(type(const).__name__, repr(const))

    def _function(self, fn: Any) -> None:
        self.put("function", _qualified_name(fn))
        if _is_library(fn):
            return
        self._code(fn.__code__)
        self.feed(fn.__defaults__)
        self.feed(fn.__kwdefaults__)
        for cell in fn.__closure__ or ():
            try:
                self.feed(cell.cell_contents)
            except ValueError:  # an empty cell
                self.put("empty cell")
        namespace = fn.__globals__
        for name in sorted(_global_names(fn.__code__)):
            if name in namespace:
                value = namespace[name]
                if callable(value) and not isinstance(value, nn.Module):
                    self.put("global", name)
                    try:
                        self.feed(value)
                    except ValueError:  # a helper object known only by address: identified by name
                        self.put("unidentified global", name)
                elif isinstance(value, (bool, int, float, str, bytes, Tensor, np.ndarray, tuple, list, dict)):
                    self.put("global", name)
                    self.feed(value)
                elif isinstance(value, ModuleType):
                    self.put("global module", name, value.__name__)

    def _class(self, cls: type) -> None:
        self.put("class", _qualified_name(cls))
        if _is_library(cls):
            return
        for base in cls.__mro__[1:]:
            self.feed(base)
        for name in sorted(vars(cls)):
            value = vars(cls)[name]
            if name in ("__dict__", "__weakref__", "__module__", "__qualname__", "__doc__"):
                continue
            self.put("attribute", name)
            if isinstance(value, (staticmethod, classmethod, property)) or callable(value):
                self.feed(value)
            elif isinstance(value, (bool, int, float, str, bytes, tuple, list, dict, type(None))):
                self.feed(value)


def _global_names(code: Any) -> set[str]:
    import types

    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _qualified_name(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__qualname__
    return f"{module}:{name}"


def _is_library(obj: Any) -> bool:
    """Whether ``obj`` comes from the standard library or an installed package (identified by name)."""
    import sys
    import sysconfig

    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    if module is None or path is None:
        return module is not None  # a built-in module; unknown modules are hashed in full
    path = os.path.realpath(path)
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(path.startswith(os.path.realpath(r) + os.sep) for r in roots if r) or (
        "site-packages" in path.split(os.sep) or "dist-packages" in path.split(os.sep)
    )
