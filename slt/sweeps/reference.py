r"""Sampler settings chosen once for a whole sweep, at reference checkpoints, then held fixed.

Checkpoints of one run are comparable only when they are measured the same way: the same γ (the
target itself moves with it), the same step and the same chain lengths. And choosing them at every
checkpoint (a step pilot, a doubling length) costs more than the measurement. So, unless the user fixed
them, a sweep chooses:

* **γ** by :func:`slt.estimators.localization.choose_localization` over three probe checkpoints (a third
  of the way through the run, two thirds, and the last): the smallest γ of 1, 3, 10, 30, 100, 300, 1000
  whose chains climb at most a quarter of the way from :math:`L_n(w^*)` to the loss of zero weights at
  every probe. Early checkpoints of a network that memorizes need the strongest pull, the last the
  weakest; a regression passes γ = 1 at once;
* **the step size**: the smallest of the chosen γ's automatic steps at the probes (one step for all
  checkpoints must suit the stiffest: the step chosen at the last checkpoint alone made 17 of 39
  checkpoints of the grokking tutorial's run diverge while test accuracy climbed);
* **the chain lengths**: the longest of the chosen γ's automatic lengths at the probes.

A probe whose chains find lower loss than its weights (an early checkpoint, not yet at a minimum: λ̂ ≤ 0)
is left out of the step and the lengths, with a :class:`~slt.warnings.NotAMinimumWarning` (its gradient
makes the step small and its estimate never converges); when no probe is a minimum the warning says to
choose at a trained checkpoint.

The choice is recorded in the sweep's settings (``Trajectory.settings["reference"]``), which the store
hashes, and kept in the store under everything it depends on (data, settings, seed, model code, the
checkpoints' identities): a rerun reads it back instead of choosing again and skips the checkpoints it
finished. With the same seed the choice is the same anyway (the trials have no time budget). When only
the checkpoints changed (one added as training went on, one that no longer loads) and at least half of
those the choice was made at remain, the store's last choice for that training run (its folder) and
everything else the same is reused, with a warning: the finished checkpoints are kept, and every point
is measured the same way. A sweep that grows to :data:`~slt.sweeps.trajectory.AUTO_COMPILE_MIN_CHECKPOINTS`
checkpoints switches compilation on, which changes its settings, and chooses again.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from slt.estimators.localization import (
    DEFAULT_LOCALIZATIONS,
    MAX_GAP_FRACTION,
    LocalizationChoice,
    choose_localization,
)
from slt.sampling.rng import isolated_rng
from slt.sweeps.checkpoints import Checkpoint, build_model
from slt.sweeps.measures import checkpoint_seed
from slt.sweeps.store import ResultStore, settings_hash
from slt.warnings import CheckpointError, NotAMinimumWarning, SLTWarning

__all__ = [
    "probe_indices",
    "choose_sweep_settings",
    "choose_settings_at",
    "stored_choice",
    "loader",
    "CHOSEN_SETTINGS",
]

#: The LLC settings a sweep chooses at its reference checkpoints when they are not given.
CHOSEN_SETTINGS = ("localization", "step_size", "num_burnin", "num_draws")
#: Steps per chain of the reference run's first segment. Shorter than a single estimate's 500: every
#: checkpoint runs these lengths, and the doubling stops only when the last two segments agree, the
#: standard error is within 5% and the simulated time has reached 0.5/γ (on the grokking example's
#: model, 300 + 400 steps gave 0.672 at the last checkpoint against 0.690 from 500 + 1,000).
FIRST_SEGMENT = 100
#: Settings of :func:`slt.estimate_llc` that the trials pass through unchanged.
_PASSED = (
    "n_beta",
    "num_chains",
    "batch_size",
    "sampler",
    "sampler_options",
    "device",
    "mask",
    "n",
    "n_unit",
    "eval_samples",
    "model_mode",
    "compile",
)


def probe_indices(count: int) -> list[int]:
    """Indices of the probe checkpoints among ``count``: a third of the way, two thirds, and the last."""
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    return sorted({count // 3, (2 * count) // 3, count - 1} & set(range(count)))


def choose_sweep_settings(
    records: Sequence[Checkpoint],
    load: Callable[[Checkpoint], nn.Module],
    data: Any,
    loss_fn: Any,
    llc_settings: Mapping[str, Any],
    seed: int,
    *,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choose the sweep's γ, step size and lengths at its probe checkpoints (see the module docstring).

    Parameters
    ----------
    records : sequence of Checkpoint
        The sweep's checkpoints, in step order.
    load : callable
        ``load(checkpoint) -> nn.Module``: the checkpoint's weights in a fresh model.
    data, loss_fn
        As given to the sweep.
    llc_settings : dict
        The LLC settings the user gave; those among :data:`CHOSEN_SETTINGS` are kept, not chosen.
    seed : int
        The sweep's seed (the trials use the LLC seed of the last probe checkpoint).
    progress : bool
        Show a progress bar for each trial (labelled with its γ and probe), so that the minutes a choice
        can take are not silent.

    Returns
    -------
    fixed : dict
        The settings to add to every checkpoint's estimate (empty when nothing was chosen).
    record : dict
        JSON-able account of the choice: the rule, the probe steps, each trial, and what was chosen.
    """
    if _given_settings(llc_settings) == set(CHOSEN_SETTINGS):
        return {}, {}
    wanted = probe_indices(len(records))
    probes, models = _load_probes(records, wanted, load)
    if not models:
        return {}, {"skipped": "no checkpoint could be loaded to choose the settings at"}
    return choose_settings_at(
        models,
        [records[i].step for i in probes],
        data,
        loss_fn,
        llc_settings,
        seed,
        stacklevel=4,
        progress=progress,
    )


def choose_settings_at(
    models: Sequence[nn.Module],
    steps: Sequence[int],
    data: Any,
    loss_fn: Any,
    llc_settings: Mapping[str, Any],
    seed: int,
    *,
    stacklevel: int = 2,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choose γ, step size and lengths at ``models`` (the probes), by the rule of the module docstring.

    Parameters
    ----------
    models : sequence of nn.Module
        The probe models, in step order (left exactly as they were).
    steps : sequence of int
        Their training steps (recorded, and the last seeds the trials).
    data, loss_fn, llc_settings, seed, progress
        As for :func:`choose_sweep_settings`.

    Returns
    -------
    fixed, record : dict
        As for :func:`choose_sweep_settings`. When the trials fail (every chain diverges, a bad loss),
        ``fixed`` is empty, ``record`` holds ``"skipped"`` with the reason, and an
        :class:`~slt.warnings.SLTWarning` says that each measurement chooses its own settings.

    Raises
    ------
    ValueError
        On a bad ``seed``, or when ``models`` and ``steps`` differ in length or are empty.
    """
    given = _given_settings(llc_settings)
    if given == set(CHOSEN_SETTINGS):
        return {}, {}
    if not models or len(models) != len(steps):
        raise ValueError(f"need one step per probe model, got {len(models)} models and {len(steps)} steps")
    choose_gamma = "localization" not in given
    passed = {k: llc_settings[k] for k in _PASSED if k in llc_settings}
    trial_seed = checkpoint_seed(seed, int(steps[-1]))  # a bad seed fails here, loudly
    try:
        choice = _choose(
            list(models), data, loss_fn, choose_gamma, llc_settings, passed, trial_seed, progress
        )
    except (ValueError, RuntimeError) as exc:  # ChainDivergenceError is a RuntimeError
        reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"the settings could not be chosen at reference checkpoints ({reason}); each checkpoint "
            "chooses its own step and length, at γ = 1 unless given",
            SLTWarning,
            stacklevel=stacklevel,
        )
        return {}, {"skipped": reason}
    fixed, record = _fixed_settings(choice, given, choose_gamma, llc_settings, [int(s) for s in steps])
    for message in record["problems"][len(choice.problems) :]:  # choose_localization warned of its own
        warnings.warn(message, NotAMinimumWarning, stacklevel=stacklevel)
    return fixed, record


def _given_settings(llc_settings: Mapping[str, Any]) -> set[str]:
    """The settings of :data:`CHOSEN_SETTINGS` the user gave (giving either length gives both)."""
    given = {k for k in CHOSEN_SETTINGS if k in llc_settings}
    if "num_draws" in llc_settings or "num_burnin" in llc_settings:
        given |= {"num_draws", "num_burnin"}
    return given


def _choose(
    models: list[nn.Module],
    data: Any,
    loss_fn: Any,
    choose_gamma: bool,
    llc_settings: Mapping[str, Any],
    passed: Mapping[str, Any],
    seed: int,
    progress: bool = False,
) -> LocalizationChoice:
    return choose_localization(
        models,
        data,
        loss_fn=loss_fn,
        candidates=DEFAULT_LOCALIZATIONS if choose_gamma else (float(llc_settings["localization"]),),
        max_gap_fraction=MAX_GAP_FRACTION if choose_gamma else 1.0,
        seed=seed,
        max_seconds=None,  # a time budget would make the choice depend on the machine's speed
        first_segment=FIRST_SEGMENT,
        progress=progress,
        **passed,
    )


def _fixed_settings(
    choice: LocalizationChoice,
    given: set[str],
    choose_gamma: bool,
    llc_settings: Mapping[str, Any],
    probe_steps: list[int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    fixed: dict[str, Any] = {}
    if choose_gamma:
        fixed["localization"] = choice.localization
    chosen_trials = [t for t in choice.trials if t.localization == choice.localization]
    usable = [t for t in chosen_trials if t.passed and math.isfinite(t.step_size)]
    if not usable:  # the given γ leaves the basin: its trial still sized the step and the length
        usable = [t for t in chosen_trials if math.isfinite(t.step_size)]
    problems = [p.message for p in choice.problems]
    # a probe whose chains found lower loss than its weights is not at a minimum (an early checkpoint): its
    # gradient makes the automatic step small and its estimate drifts down without converging, so it would
    # set a small step and leave every checkpoint's length to itself (measured: a tanh MLP's step-100
    # checkpoint, λ̂ = -1.84, gave a step 5.3x smaller than its trained probes' and an unconverged length)
    at_minimum = [t for t in usable if t.llc > 0]
    not_minima = [t for t in usable if not t.llc > 0]
    if not_minima:
        where = ", ".join(f"step {probe_steps[t.model]} (λ̂ = {t.llc:.3g})" for t in not_minima)
        if at_minimum:
            usable = at_minimum
            kept = ", ".join(str(probe_steps[t.model]) for t in at_minimum)
            problems.append(
                f"the probe checkpoint at {where} is not a minimum (its chains found lower loss than its "
                f"weights) and was left out of the choice of step size and lengths, which the probes at "
                f"step {kept} made"
            )
        else:
            problems.append(
                f"no probe checkpoint is a minimum ({where}: the chains found lower loss than the weights), "
                "so the step size and lengths were chosen where the chains drift downhill and may not suit "
                "trained checkpoints: choose them at a trained checkpoint (reference= a later one), or give "
                "step_size, num_burnin and num_draws"
            )
    if "step_size" not in given and usable:
        fixed["step_size"] = float(min(t.step_size for t in usable))
    converged = [t for t in usable if t.converged]
    if "num_draws" not in given and converged and len(converged) == len(usable):
        every = int(llc_settings.get("num_steps_bw_draws", 1))
        fixed["num_burnin"] = int(max(t.num_burnin for t in converged))
        fixed["num_draws"] = max(int(max(t.num_draws for t in converged)) // every, 1)
    record = {
        "rule": choice.rule if choose_gamma else f"γ = {llc_settings['localization']:g} as given",
        "probe_steps": probe_steps,
        "chosen": fixed,
        "trials": [
            {
                "step": probe_steps[t.model],
                "localization": t.localization,
                "passed": t.passed,
                "gap_fraction": _rounded(t.gap_fraction),
                "llc": _rounded(t.llc),
                "step_size": _rounded(t.step_size),
                "num_burnin": t.num_burnin,
                "num_draws": t.num_draws,
                "converged": t.converged,
            }
            for t in choice.trials
        ],
        "problems": problems,
    }
    if "num_draws" not in given and "num_draws" not in fixed:
        unsettled = [t for t in usable if not t.converged]
        why = f" ({unsettled[0].reason})" if unsettled else ""
        record["lengths"] = f"each checkpoint chooses its own length: a reference run did not converge{why}"
    return fixed, record


def stored_choice(
    store: ResultStore,
    request: Mapping[str, Any],
    choose: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
    *,
    run: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The choice stored for ``request``, else ``choose()``, stored for the next time.

    ``request`` holds everything the choice depends on (data, settings, seed, model code, checkpoints).
    A choice that was skipped is not stored (and one that chose nothing is never reused). Given the
    training ``run`` the checkpoints belong to, when ``request["checkpoints"]`` differs from the last
    choice the store made for that run with everything else the same (a checkpoint added as training
    went on, one that no longer loads, a file replaced) while at least half of the checkpoints it was made
    at are still there, that choice is reused, with an
    :class:`~slt.warnings.SLTWarning` saying so: the finished checkpoints are then kept rather than
    measured again, and every point of the run is measured the same way.
    """
    key = "reference:" + settings_hash(dict(request))
    found = store.get_note(key)
    if found is not None:
        return dict(found["fixed"]), dict(found["record"])
    latest_key = None
    if run is not None and "checkpoints" in request:
        family = {k: v for k, v in request.items() if k != "checkpoints"}
        latest_key = "reference-latest:" + settings_hash({**family, "run": run})
        earlier = store.get_note(latest_key)
        if earlier is not None and _mostly_kept(earlier["checkpoints"], request["checkpoints"]):
            _warn_reused(earlier, list(request["checkpoints"]), store)
            store.put_note(key, {"fixed": earlier["fixed"], "record": earlier["record"]})
            return dict(earlier["fixed"]), dict(earlier["record"])
    fixed, record = choose()
    if "skipped" not in record:
        store.put_note(key, {"fixed": fixed, "record": record})
        if latest_key is not None and fixed:
            store.put_note(
                latest_key, {"fixed": fixed, "record": record, "checkpoints": list(request["checkpoints"])}
            )
    return fixed, record


def _mostly_kept(before: Sequence[str], now: Sequence[str]) -> bool:
    """Whether at least half of the checkpoints a choice was made at are still there (the same files)."""
    return 2 * len(set(before) & set(now)) >= len(set(before))


def _warn_reused(earlier: Mapping[str, Any], checkpoints: list[str], store: ResultStore) -> None:
    """Say that the reference settings chosen for another set of checkpoints are reused, and how not to."""
    before, now = set(earlier["checkpoints"]), set(checkpoints)
    chosen = ", ".join(f"{name} = {value:g}" for name, value in earlier["fixed"].items())
    warnings.warn(
        f"the checkpoints differ from those the store {store.path} chose its reference settings at "
        f"({len(now - before)} added, {len(before - now)} gone); the settings chosen then ({chosen}) are "
        "reused, so finished checkpoints are kept and every point is measured the same way. To choose "
        "again at the new checkpoints, write to a new store, or pass the settings yourself.",
        SLTWarning,
        stacklevel=4,
    )


def _load_probes(
    records: Sequence[Checkpoint], wanted: Sequence[int], load: Callable[[Checkpoint], nn.Module]
) -> tuple[list[int], list[nn.Module]]:
    """Load the wanted probes; one that fails to load is replaced by the nearest that loads (earlier first).

    A checkpoint that fails here fails again, with its error stored, when the sweep reaches it.
    """
    probes: list[int] = []
    models: list[nn.Module] = []
    for index in wanted:
        for candidate in sorted(range(len(records)), key=lambda i: (abs(i - index), i)):
            if candidate in probes:
                continue
            try:
                models.append(load(records[candidate]))
            except CheckpointError:
                continue
            probes.append(candidate)
            break
    order = sorted(range(len(probes)), key=lambda k: probes[k])
    return [probes[k] for k in order], [models[k] for k in order]


def _rounded(value: float) -> float | None:
    """A float kept to 6 significant digits (``None`` for NaN), so the stored settings read cleanly."""
    return float(f"{value:.6g}") if math.isfinite(value) else None


def loader(
    model_factory: Callable[[], nn.Module],
    *,
    allow_pickle: bool,
    state_dict_key: str | None,
    state_dict_prefix: str | None,
) -> Callable[[Checkpoint], nn.Module]:
    """``load(checkpoint)``: the checkpoint's weights in a model built by ``model_factory``."""

    def load(checkpoint: Checkpoint) -> nn.Module:
        with isolated_rng(0):  # a factory that draws random numbers leaves the caller's streams alone
            state_dict = checkpoint.load_state_dict(
                allow_pickle=allow_pickle, state_dict_key=state_dict_key, state_dict_prefix=state_dict_prefix
            )
            return build_model(model_factory, state_dict, checkpoint.source)

    return load
