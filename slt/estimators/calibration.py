r"""Choosing the step size (and localization): a cheap default and a careful calibration.

Two tools:

* :func:`default_step_size` — what :func:`slt.estimate_llc` uses when no step size is given. A short
  pilot measures how strongly the minibatch gradient pushes the chain and picks the step whose
  *predicted* discretization bias is about 5% (exact for quadratic losses, see below). Cheap, but only
  a first guess: on a small MLP the measured bias at that step was still about 10%, and it cannot see
  slow mixing.
* :func:`calibrate` — runs chains over a halving ladder of step sizes, each for the same simulated time
  (``steps * step_size`` fixed), and recommends the largest step whose estimate barely moves when the
  step halves.

The bias model behind both: for SGLD on a quadratic potential with Hessian eigenvalues :math:`a_i`,
the stationary variance along :math:`i` is :math:`1 / (a_i (1 - \varepsilon a_i / 4))`, so each stiff
direction inflates :math:`\hat\lambda` by a factor :math:`\approx 1 + \varepsilon a_i / 4`. Summed, the
absolute bias is about :math:`(\varepsilon / 8)\, \mathbb{E}\lVert n\beta \nabla L_B\rVert^2`, minibatch
gradient noise included. Singular models are not quadratic, which is why :func:`calibrate` measures the
bias instead of predicting it.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slt.estimators.diagnostics import CALIBRATION_TREND_Z, RHAT_MAX
from slt.estimators.length import (
    AUTO_COMPILE_MIN_STEPS,
    DEFAULT_MAX_STEPS,
    LengthPolicy,
    LengthReport,
    min_simulated_time,
    run_until_converged,
)
from slt.estimators.llc import summarize_run
from slt.estimators.llc_guards import MAX_BIAS_INDICATOR
from slt.estimators.llc_result import LLCSettings
from slt.results.base import JSONResult
from slt.results.plotting import panels
from slt.samplers import Kernel, get_kernel
from slt.sampling.driver import LOADER_BATCH_SOURCE, bind_kernel
from slt.sampling.flat import Mask
from slt.sampling.losses import LossFn
from slt.sampling.progress import progress_bar
from slt.sampling.settings import validate_settings
from slt.sampling.setup import prepared_sampler
from slt.tuning import default_step_size
from slt.warnings import ChainDivergenceError, ConvergenceWarning, Problem, StepSizeWarning, emit

__all__ = ["calibrate", "CalibrationResult"]


@dataclass
class CalibrationResult(JSONResult):
    """What :func:`calibrate` tried and what it recommends.

    Attributes
    ----------
    step_size : float
        Recommended step size.
    localization : float
        Recommended localization.
    num_burnin, num_draws : int
        The lengths calibration's own chains took to converge, scaled to the recommended step (the same
        simulated times). For information: :meth:`estimate_kwargs` leaves the lengths to the estimate's
        automatic length, since these, fixed and run with another seed, often fail split R-hat.
    llc_extrapolated : float
        Estimate extrapolated to step size 0 by a weighted linear fit over the healthy steps at the
        recommended localization no larger than twice the recommended step; NaN where it was not done,
        with the reason in ``settings["extrapolation"]`` (fewer than three such steps; no measurable
        dependence on the step, a slope within two standard errors of zero, where the rungs agree and the
        recommended step's estimate is the one to use; or a line that reaches a negative value).
    llc_extrapolated_stderr : float
        Its standard error.
    table : list of dict
        One row per setting tried: ``step_size``, ``localization``, ``num_steps``, ``llc_mean``,
        ``llc_stderr``, ``rhat``, ``trend_z``, ``chains_diverged``, ``chains_unstable`` (chains past the
        step's stability limit, :func:`slt.tuning.unstable_chains`; any makes the step unhealthy),
        ``bias_indicator`` (the predicted step bias, :func:`slt.tuning.bias_indicator`; above
        :data:`~slt.estimators.llc_guards.MAX_BIAS_INDICATOR`, where ``estimate_llc`` warns, the step is
        unhealthy),
        ``bias_estimate`` (relative change when the step halves, times two), ``healthy``, ``stable``,
        ``note``; ``per_chain`` (the chains' estimates) and ``doublings`` (how many times stage 3 of
        :func:`calibrate` doubled the rung's draws) where they apply.
    criteria : str
        The rule that made the recommendation.
    n_beta : float
    settings : dict
        What calibration ran with (sampler, its options, batch size, seed, reference step, ...).
    problems : tuple of slt.warnings.Problem
        Chains that never converged in length, no stable step, ...; emitted as warnings when made and
        when reloaded.
    """

    step_size: float
    localization: float
    num_burnin: int
    num_draws: int
    llc_extrapolated: float
    llc_extrapolated_stderr: float
    table: list[dict[str, Any]]
    criteria: str
    n_beta: float = float("nan")
    settings: dict[str, Any] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()

    def summary(self):
        """The table of every setting tried, as a pandas ``DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.table)

    def estimate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`slt.estimate_llc` with the recommended settings.

        The step, localization and nβ, and the sampler, its options and the batch size that calibration
        ran with, so the estimate runs the chains that were calibrated. Not the lengths: the estimate
        sizes its own by the automatic length at that step (and checks it converged). The lengths
        calibration's chains took (``num_burnin``, ``num_draws``) were a first passage of its convergence
        test, and reused as fixed lengths with other seeds they failed split R-hat in 5 and 4 of 6 runs
        on a 41-parameter tanh regression and a 131-parameter classifier (2 of 6 each when doubled); the
        automatic length at the calibrated step failed in none, at 2-4 times the steps.
        """
        kwargs = {
            "step_size": self.step_size,
            "localization": self.localization,
            "n_beta": self.n_beta,
        }
        for key in ("sampler", "sampler_options", "batch_size"):
            if self.settings.get(key) is not None:
                kwargs[key] = self.settings[key]
        if self.settings.get("batch_size_source") == LOADER_BATCH_SOURCE:  # the loader brings its own again
            kwargs.pop("batch_size", None)
        if self.settings.get("compile", "off") != "off":  # compilation was asked for: keep it on
            kwargs["compile"] = True
        return kwargs

    def plot(self, ax=None):
        r""":math:`\hat\lambda` against step size for each localization, the recommendation marked."""
        fig, (ax,) = panels(ax, 1, figsize=(5.5, 3.8))
        ladder = [r for r in self.table if r.get("kind", "step") == "step"]
        for i, loc in enumerate(sorted({row["localization"] for row in ladder})):
            rows = sorted((r for r in ladder if r["localization"] == loc), key=lambda r: r["step_size"])
            x = np.array([r["step_size"] for r in rows])
            y = np.array([r["llc_mean"] for r in rows], dtype=float)
            e = np.array([r["llc_stderr"] for r in rows], dtype=float)
            ax.errorbar(
                x, y, yerr=np.nan_to_num(e), marker="o", color=f"C{i}", capsize=3, label=f"γ = {loc:g}"
            )
            bad = np.array([not r["healthy"] for r in rows])
            if bad.any():
                ax.scatter(
                    x[bad], y[bad], marker="x", color="k", zorder=3, label="unhealthy" if i == 0 else None
                )
        ax.axvline(self.step_size, color="k", ls="--", lw=0.8, label="recommended")
        if math.isfinite(self.llc_extrapolated):
            ax.axhline(self.llc_extrapolated, color="0.4", ls=":", lw=1, label="extrapolated to ε→0")
        ax.set(xscale="log", xlabel="step size ε", ylabel=r"$\hat\lambda$", title="calibration")
        ax.legend(fontsize=7)
        return fig

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationResult:
        """Rebuild from :meth:`to_dict` output (its problems kept, not emitted)."""
        result = super().from_dict(data)
        result.table = [
            {k: (float("nan") if v is None else v) for k, v in row.items()} for row in result.table
        ]
        return result


def calibrate(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: str | LossFn,
    n_beta: float | None = None,
    step_sizes: Sequence[float] | None = None,
    localizations: Sequence[float] = (1.0,),
    num_chains: int = 4,
    base_steps: int = 100,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    max_seconds: float | None = None,
    check_length: bool = True,
    tolerance: float = 0.1,
    ladder_doublings: int = 3,
    batch_size: int | None = None,
    sampler: str | Kernel = "sgld",
    sampler_options: Mapping[str, Any] | None = None,
    mask: Mask = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    chain_mode: str = "auto",
    compile: bool | None = None,
    progress: bool = True,
) -> CalibrationResult:
    r"""Recommend a step size, chain lengths (and a localization) by running chains and measuring.

    Two stages, for each localization:

    1. **Length, to an equilibrated state.** At a reference step (the pilot's :func:`default_step_size`,
       or the middle of ``step_sizes``) the chains run from :math:`w^*` by the automatic length of
       :func:`slt.estimate_llc` (:func:`slt.estimators.length.run_until_converged`: segments of doubling
       length, from ``base_steps``, until two successive segments agree within 5% plus two standard
       errors, the standard error is within 5%, split R-hat within 1.1 and the simulated time has
       reached :math:`0.5/\max(\gamma, 1)`). An automatic reference step is re-checked with the bias
       indicator after every segment, so the ladder is centred on a step judged where the chains *are*,
       not at :math:`w^*` (posterior curvature measured 2-700× the curvature at :math:`w^*` on deep linear
       networks). Chains that are too short underestimate, and no within-run diagnostic reliably sees it.
    2. **Step size, from that state.** Every step of the ladder continues the equilibrated chains for the
       simulated time of the last segment (``num_steps * step_size`` constant; the first quarter, a
       re-equilibration at the new step, is burn-in). Each is judged by:

       a. **No divergence**: every chain keeps a finite loss.
       b. **Agreement between chains**: split R-hat of the per-draw estimates below 1.1, for chains that
          started at :math:`w^*` (``check_length=False``); continued equilibrated chains are not judged by
          it (their spread is in the standard error).
       c. **Flat trace after burn-in**: the last quarter of the draws does not drift from the first
          (``|trend_z| < 4``).
       d. **Step-size stability**: halving the step moves the estimate by little. With bias linear in the
          step, twice the change is the bias of the larger step; a setting is *stable* when that bias plus
          one standard error of it is at most ``tolerance`` times the estimate (so a comparison drowned in
          noise never vouches for a step). The rungs continue the same chains, so the change is measured
          chain by chain (the standard error of the per-chain differences, which cancels what a chain's
          rungs share; compared as independent estimates, rungs with 3-5% standard errors could never
          certify 10%).

    3. **Longer rungs where the comparison is too noisy.** When no step is stable but some pair of
       healthy rungs measured a bias within ``tolerance`` (only its standard error stood in the way),
       every healthy rung continues from where it ended for as many steps again (fresh noise, the same
       for every rung, so the comparisons stay paired) and its draws are pooled with the earlier ones;
       up to ``ladder_doublings`` times, and never past ``max_seconds``. On the tanh regression of the
       hyperparameters tutorial the first ladder certified no step (measured biases −3%, −11%, +9%, each
       with a standard error of 10-15% of the estimate); see ``settings["ladder_doublings"]``.

    The recommendation is the largest step that is healthy (a-c) and stable (d) at the smallest healthy
    localization, with chain lengths for the same simulated times as the reference (burn-in: what the
    chains needed to equilibrate from :math:`w^*`; draws: the last segment); if none is stable, the
    smallest healthy step, with a warning. :meth:`CalibrationResult.estimate_kwargs` carries the choices
    (step, localization, nβ, sampler, its options, batch size) into :func:`slt.estimate_llc`, which sizes
    its own length at that step.

    ``llc_extrapolated`` (the estimate extrapolated to step 0) is given only where it measurably helps:
    a weighted line through at least three healthy steps no larger than twice the recommended one whose
    slope differs from zero by more than two standard errors and whose intercept is positive; otherwise
    NaN, with the reason in ``settings["extrapolation"]``. Where it is given and differs from the
    recommended step's estimate by more than ``tolerance`` plus two standard errors (the bias grows
    faster below the step than one halving measured), a ``StepSizeWarning`` in ``problems`` says so.

    Parameters
    ----------
    model, data, loss_fn, n_beta, batch_size, sampler, sampler_options, mask, seed, device
        As in :func:`slt.estimate_llc`.
    chain_mode, compile
        As in :func:`slt.estimate_llc` (``compile=None``: the length stage's first segment of
        :data:`~slt.estimators.length.AUTO_COMPILE_MIN_STEPS` steps per chain or more switches to compiled
        stacked chains where they stack, and the ladder after it stays compiled);
        :meth:`CalibrationResult.estimate_kwargs` keeps ``compile`` on once it ran compiled.
    step_sizes : sequence of float, optional
        Steps to try. Default: a halving ladder of five steps from four times the reference step down to
        a quarter of it.
    localizations : sequence of float
        Localization strengths to try (each with every step size).
    num_chains : int
        Chains per setting.
    base_steps : int
        Steps of the first segment of the length stage (at least 16); later segments double until the
        length stage converges. Default 100 (measured on the quickstart's MLP, one run each: 37 s and a
        step certified with a measured bias of 0.9%, against 53 s and no step certified from 500).
    max_steps : int or None
        Budget of steps per chain for the length stage (``None``: unlimited); it stops unconverged, with a
        warning.
    max_seconds : float or None
        Budget of wall time for the whole calibration (``None``: unlimited). The length stage stops when it
        would be exceeded, and so does the ladder (its remaining steps are not run, with a warning).
    check_length : bool
        Run stage 1. Without it the reference step runs ``base_steps`` steps from :math:`w^*` (half
        burn-in), and so does every step of the ladder, for the same simulated time.
    tolerance : float
        Largest acceptable relative step-size bias.
    ladder_doublings : int
        How many times the rungs may double their length when their comparisons are too noisy to certify
        a step (stage 3; 0 turns it off). Needs ``check_length``.
    progress : bool
        Show a progress bar; its total is an upper bound (the budget) until the length stage settles,
        then exact.

    Returns
    -------
    CalibrationResult

    Raises
    ------
    ValueError
        On out-of-range settings, or the errors of :func:`slt.estimate_llc` on bad data and models.
    slt.warnings.ChainDivergenceError
        When every setting tried diverged.
    """
    validate_settings(n_beta=n_beta, num_chains=num_chains, seed=seed)
    if (
        not isinstance(tolerance, (int, float, np.integer, np.floating))
        or isinstance(tolerance, bool)
        or not (math.isfinite(tolerance) and tolerance > 0)
    ):
        raise ValueError(
            "tolerance must be a positive number (a fraction of the estimate, such as 0.1), "
            f"got {tolerance!r}"
        )
    if not localizations:
        raise ValueError("localizations is empty; pass at least one value such as (1.0,)")
    for loc in localizations:
        validate_settings(localization=loc)
    if step_sizes is not None:
        if len(step_sizes) == 0:
            raise ValueError("step_sizes is empty; pass at least one or leave it None")
        for s in step_sizes:
            validate_settings(step_size=s)
    if not (
        isinstance(ladder_doublings, int) and not isinstance(ladder_doublings, bool) and ladder_doublings >= 0
    ):
        raise ValueError(f"ladder_doublings must be a non-negative integer, got {ladder_doublings!r}")
    if not (isinstance(base_steps, int) and base_steps >= 16):
        raise ValueError(f"base_steps must be an integer of at least 16, got {base_steps!r}")
    if max_steps is not None and max_steps < 2 * base_steps:
        raise ValueError(
            f"max_steps ({max_steps}) must allow two segments of the length stage (2 * base_steps = "
            f"{2 * base_steps}); raise it or lower base_steps"
        )
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    started = time.perf_counter()
    table: list[dict[str, Any]] = []
    problems: list[Problem] = []
    lengths: dict[float, _Lengths] = {}
    skipped: list[str] = []
    doublings: dict[str, int] = {}
    with prepared_sampler(
        model,
        data,
        loss_fn,
        batch_size=batch_size,
        mask=mask,
        device=device,
        seed=seed,
        compile=bool(compile),
    ) as posterior:
        nb, _ = posterior.resolve_n_beta(n_beta)
        if step_sizes is None:
            first_reference, _ = default_step_size(
                posterior,
                n_beta=nb,
                localization=min(localizations),
                sampler=sampler,
                sampler_options=sampler_options,
                seed=seed,
                run_chains=num_chains,
            )
        else:
            given = sorted((float(s) for s in step_sizes), reverse=True)
            first_reference = given[len(given) // 2]

        def grid_for(reference: float) -> list[float]:
            return given if step_sizes is not None else [reference * 4 / 2**k for k in range(5)]

        def ladder_steps(reference: float, length: int) -> int:
            return sum(max(8, round(length * reference / step)) for step in grid_for(reference))

        # an upper bound per localization: the length stage to its budget, then the ladder at half of it
        longest = (max_steps or 64 * base_steps) if check_length else base_steps
        most_per_localization = num_chains * (
            (longest if check_length else 0)
            + ladder_steps(first_reference, longest // 2 if check_length else longest)
        )
        bar = progress_bar(progress, most_per_localization * len(localizations), "calibrate")

        def seconds_left() -> float | None:
            return None if max_seconds is None else max_seconds - (time.perf_counter() - started)

        try:
            for index, loc in enumerate(sorted(localizations)):
                if check_length:
                    left = seconds_left()
                    if left is not None and left <= 0:
                        skipped.append(f"γ={loc:g}")
                        continue
                    stage = _length_stage(
                        posterior,
                        nb,
                        loc,
                        first_reference,
                        num_chains,
                        base_steps,
                        max_steps,
                        left,
                        sampler,
                        sampler_options,
                        seed,
                        chain_mode,
                        recheck=step_sizes is None,
                        bar=bar,
                        compile_from=AUTO_COMPILE_MIN_STEPS if compile is None else None,
                    )
                    table.extend(stage.rows)
                    if not stage.report.converged:
                        reason = stage.report.reason
                        if reason.startswith("max_seconds="):  # it got what was left of the budget
                            reason = f"max_seconds={max_seconds:g} would be exceeded by the next segment"
                        problems.append(
                            Problem.of(
                                ConvergenceWarning,
                                f"calibrate: at γ={loc:g} the length stage stopped before the estimate "
                                f"held ({reason}; simulated time "
                                f"{stage.report.simulated_time:.3g}); the ladder started from chains that "
                                "may not have equilibrated. Raise max_steps or max_seconds",
                            )
                        )
                    reference, draws_steps = stage.report.step_size, stage.report.segment_steps[-1]
                    states, burn_fraction = _healthy_states(stage.run), 0.25
                    lengths[loc] = _Lengths(
                        reference, draws_steps, stage.report.simulated_time, stage.report.converged
                    )
                    # the reference step runs again from the equilibrated states like every rung, so that
                    # chain c of every rung starts at the same place (paired comparisons); the length
                    # stage's last segment stands in only when the time budget runs out
                    done = {reference: stage.reference_row}
                else:
                    reference, draws_steps, states, burn_fraction, done = (
                        first_reference,
                        base_steps,
                        None,
                        0.5,
                        {},
                    )
                    lengths[loc] = _Lengths(reference, base_steps // 2, reference * base_steps, None)
                steps_grid = grid_for(reference)
                if bar is not None:
                    remaining = ladder_steps(reference, draws_steps)
                    later = len(localizations) - index - 1
                    bar.total = bar.n + num_chains * remaining + most_per_localization * later
                    bar.refresh()
                per_step_seconds = None
                rungs: list[_Rung] = []
                for step in steps_grid:
                    num_steps = max(8, round(draws_steps * reference / step))
                    left = seconds_left()
                    if (
                        left is not None
                        and per_step_seconds is not None
                        and num_steps * per_step_seconds > left
                    ):
                        if step in done:  # out of time: the length stage's last segment stands in
                            table.append(dict(done[step], kind="step"))
                        else:
                            skipped.append(f"ε={step:.3g} at γ={loc:g}")
                        continue
                    burn = int(num_steps * burn_fraction)
                    clock = time.perf_counter()
                    row, run = _try_setting(
                        posterior,
                        nb,
                        loc,
                        step,
                        num_chains,
                        burn,
                        num_steps - burn,
                        sampler,
                        sampler_options,
                        seed,
                        chain_mode,
                        initial_states=states,
                    )
                    per_step_seconds = (time.perf_counter() - clock) / num_steps
                    row["kind"] = "step"
                    table.append(row)
                    rungs.append(_Rung(row, _healthy_states(run), num_steps - burn))
                    if bar is not None:
                        bar.update(num_steps * num_chains)
                if check_length and ladder_doublings:
                    doublings[f"{loc:g}"] = _lengthen_rungs(
                        posterior,
                        nb,
                        loc,
                        rungs,
                        table,
                        tolerance,
                        ladder_doublings,
                        num_chains,
                        sampler,
                        sampler_options,
                        seed,
                        chain_mode,
                        per_step_seconds,
                        seconds_left,
                        skipped,
                        bar,
                    )
        finally:
            if bar is not None:
                bar.close()
    if skipped:
        problems.append(
            Problem.of(
                ConvergenceWarning,
                f"calibrate: max_seconds={max_seconds:g} ran out before {', '.join(skipped)}; the "
                "recommendation uses the settings that ran. Raise max_seconds for the full ladder",
            )
        )
    if not any(r.get("kind") == "step" for r in table):
        raise RuntimeError(
            f"calibrate: max_seconds={max_seconds:g} ran out before any step of the ladder ran; raise it"
        )
    _mark_stability(table, tolerance)
    result = _recommend(
        table,
        nb,
        tolerance,
        posterior.n,
        dict(
            sampler=get_kernel(sampler).name,
            sampler_options=dict(sampler_options or {}),
            batch_size=posterior.batch_size,
            batch_size_source=posterior.batch_size_source,
            seed=seed,
            reference_step={f"{loc:g}": lengths[loc].reference for loc in lengths},
            length_converged=all(v.converged is not False for v in lengths.values()),
            simulated_time={f"{loc:g}": lengths[loc].simulated_time for loc in lengths},
            max_steps=max_steps,
            max_seconds=max_seconds,
            ladder_doublings=doublings,
            compile=posterior.compile_status,
            seconds=time.perf_counter() - started,
        ),
        lengths,
    )
    result.problems = (*posterior.data.problems, *problems, *result.problems)
    emit(result.problems, stacklevel=2)
    return result


def _healthy_states(run) -> list[Any] | None:
    """The chains' final states, a diverged chain's replaced by a copy of a healthy one (None if none)."""
    healthy = [i for i, d in enumerate(run.divergence_step) if d < 0]
    if not healthy:
        return None
    return [
        state if run.divergence_step[i] < 0 else copy.deepcopy(run.final_states[healthy[i % len(healthy)]])
        for i, state in enumerate(run.final_states)
    ]


@dataclass(frozen=True)
class _Lengths:
    """What the length stage found at one localization: its step, draws and total simulated time."""

    reference: float
    draws_steps: int
    simulated_time: float
    converged: bool | None

    def at(self, step: float) -> tuple[int, int]:
        """(burn-in, draws) for ``step`` covering the same simulated times as the reference."""
        draws = max(8, round(self.draws_steps * self.reference / step))
        burn = max(0, round((self.simulated_time - self.draws_steps * self.reference) / step))
        return burn, draws


@dataclass
class _LengthStage:
    run: Any
    report: LengthReport
    rows: list[dict[str, Any]]
    reference_row: dict[str, Any]


def _length_stage(
    posterior,
    n_beta,
    loc,
    step,
    num_chains,
    base_steps,
    max_steps,
    max_seconds,
    sampler,
    options,
    seed,
    chain_mode,
    *,
    recheck,
    bar,
    compile_from=None,
) -> _LengthStage:
    """The automatic length of :func:`slt.estimate_llc` at ``step``: chains equilibrated from w*."""
    policy = LengthPolicy(
        first_segment=base_steps,
        min_simulated_time=min_simulated_time(loc),
        max_steps=max_steps,
        max_seconds=max_seconds,
    )
    kernel = bind_kernel(sampler, options, policy.first_segment)
    run, report = run_until_converged(
        posterior,
        kernel=kernel,
        n_beta=n_beta,
        localization=loc,
        step_size=step,
        num_chains=num_chains,
        seed=seed,
        policy=policy,
        chain_mode=chain_mode,
        control_variate=True,
        recheck_step=recheck,
        progress=bar if bar is not None else False,
        compile_from=compile_from,
    )
    rows = [
        {
            "kind": "length",
            "step_size": seg_step,
            "localization": loc,
            "num_steps": seg_steps,
            "llc_mean": estimate,
            "llc_stderr": stderr,
            "note": "",
        }
        for seg_step, seg_steps, estimate, stderr in zip(
            report.segment_step_sizes,
            report.segment_steps,
            report.segment_estimates,
            report.segment_stderrs,
            strict=True,
        )
    ]
    rows[-1]["stable"] = report.converged
    rows[-1]["note"] = report.reason
    draws = report.segment_steps[-1]
    reference_row = _row_from_run(
        run,
        posterior,
        n_beta,
        loc,
        report.step_size,
        num_chains,
        draws,
        0,  # the draws continue the previous segment's chains: no burn-in of their own
        kernel,
        seed,
        chain_mode=run.chain_mode,
    )
    return _LengthStage(run, report, rows, reference_row)


def _try_setting(
    posterior,
    n_beta,
    loc,
    step,
    num_chains,
    burn,
    draws,
    sampler,
    options,
    seed,
    chain_mode,
    initial_states=None,
):
    """Run one rung of the ladder (from ``initial_states`` or w*) and judge it: (table row, run)."""
    kernel = bind_kernel(sampler, options, burn)
    run = posterior.run(
        n_beta=n_beta,
        localization=loc,
        step_size=step,
        sampler=kernel,
        num_chains=num_chains,
        num_draws=draws,
        num_burnin=burn,
        seed=seed,
        chain_mode=chain_mode,
        control_variate=True,
        record_grad_norm=True,
        initial_states=initial_states,
    )
    row = _row_from_run(
        run,
        posterior,
        n_beta,
        loc,
        step,
        num_chains,
        draws,
        burn,
        kernel,
        seed,
        run.chain_mode,
        equilibrated=initial_states is not None,
    )
    return row, run


@dataclass
class _Rung:
    """One rung of the ladder: its (pooled) table row, its chains' final states and its draws so far."""

    row: dict[str, Any]
    states: list[Any] | None
    draws: int


#: Offset between the seeds of successive doublings of the ladder's rungs (every rung of one doubling
#: shares its seed, so chain c of every rung gets the same noise and the comparisons stay paired).
DOUBLING_SEED_STRIDE = 1_000_003


def _could_certify(rows: list[dict[str, Any]], tolerance: float) -> bool:
    """No rung is stable, but a healthy pair measured a bias within ``tolerance``: more draws may certify."""
    if any(r["stable"] for r in rows):
        return False
    return any(
        big["healthy"] and small["healthy"] and abs(big["bias_estimate"]) <= tolerance
        for big, small in itertools.pairwise(rows)
    )


def _lengthen_rungs(
    posterior,
    n_beta,
    loc,
    rungs,
    table,
    tolerance,
    max_doublings,
    num_chains,
    sampler,
    options,
    seed,
    chain_mode,
    per_step_seconds,
    seconds_left,
    skipped,
    bar,
) -> int:
    """Stage 3 of :func:`calibrate`: double the healthy rungs' draws while that may certify a step.

    Each doubling continues every healthy rung from its chains' final states for as many steps as it has
    drawn so far (no burn-in: the chains are already at this step's stationary state) and pools the
    per-chain estimates, weighted by draws; the row's standard error is then the spread of the pooled
    per-chain estimates. Returns the number of doublings run.
    """
    for doubling in range(1, max_doublings + 1):
        rows = [r.row for r in rungs]
        _mark_stability(rows, tolerance)
        if not _could_certify(rows, tolerance):
            return doubling - 1
        todo = [r for r in rungs if r.row["healthy"] and r.states is not None]
        cost = sum(r.draws for r in todo)
        left = seconds_left()
        if left is not None and per_step_seconds is not None and cost * per_step_seconds > left:
            skipped.append(f"doubling {doubling} of the ladder at γ={loc:g}")
            return doubling - 1
        if bar is not None:
            bar.total += cost * num_chains
            bar.refresh()
        for rung in todo:
            more, run = _try_setting(
                posterior,
                n_beta,
                loc,
                rung.row["step_size"],
                num_chains,
                0,  # no burn-in: the chains are already at this step's stationary state
                rung.draws,
                sampler,
                options,
                seed + doubling * DOUBLING_SEED_STRIDE,
                chain_mode,
                initial_states=rung.states,
            )
            pooled = _pool_rows(rung.row, rung.draws, more, rung.draws)
            table[next(i for i, r in enumerate(table) if r is rung.row)] = pooled
            if bar is not None:
                bar.update(rung.draws * num_chains)
            rung.row, rung.states, rung.draws = pooled, _healthy_states(run), 2 * rung.draws
    return max_doublings


def _pool_rows(
    first: dict[str, Any], first_draws: int, more: dict[str, Any], more_draws: int
) -> dict[str, Any]:
    """One row for a rung run in two parts: per-chain estimates pooled by draws, health from both.

    The estimate is the mean of the pooled per-chain estimates and its standard error their spread over
    the square root of their number, as in :func:`slt.estimate_llc`. A chain missing from either part
    (diverged) is missing from the pool; a problem of either part makes the row unhealthy.
    """
    a, b = first.get("per_chain"), more.get("per_chain")
    per_chain = None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        total = first_draws + more_draws
        per_chain = [
            (x * first_draws + y * more_draws) / total if x is not None and y is not None else None
            for x, y in zip(a, b, strict=True)
        ]
    values = np.array([v for v in per_chain or [] if v is not None], dtype=float)
    notes = [n for n in (first["note"], more["note"]) if n]
    pooled = dict(
        first,
        num_steps=first["num_steps"] + more["num_steps"],
        chains_diverged=max(first["chains_diverged"], more["chains_diverged"]),
        chains_unstable=max(first["chains_unstable"], more["chains_unstable"]),
        rhat=more["rhat"],
        trend_z=more["trend_z"],
        bias_indicator=more["bias_indicator"],
        per_chain=per_chain,
        llc_mean=float(values.mean()) if values.size else float("nan"),
        llc_stderr=float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan"),
        healthy=bool(first["healthy"] and more["healthy"] and values.size > 0),
        note=", ".join(dict.fromkeys(notes)),
        doublings=first.get("doublings", 0) + 1,
    )
    if pooled["healthy"] and pooled["llc_mean"] <= 0:
        pooled.update(healthy=False, note=", ".join([*notes, "estimate not positive"]))
    return pooled


def _row_from_run(
    run, posterior, n_beta, loc, step, num_chains, draws, burn, kernel, seed, chain_mode, equilibrated=False
):
    """A table row for a finished run: its estimate, diagnostics, predicted bias and health.

    Split R-hat judges health only for chains started at w*: chains continued from equilibrated states
    are already draws of the posterior, and a high R-hat there only says the run is short against the
    slow directions, which the standard error across chains already carries (on the README quickstart's
    MLP the rungs below the reference step had R-hat 1.1-1.26 with estimates within 6% of each other).
    """
    row: dict[str, Any] = {
        "step_size": step,
        "localization": loc,
        "num_steps": burn + draws,
        "llc_mean": float("nan"),
        "llc_stderr": float("nan"),
        "rhat": float("nan"),
        "trend_z": float("nan"),
        "chains_diverged": int(np.sum(run.divergence_step >= 0)),
        "chains_unstable": 0,
        "bias_indicator": float("nan"),
        "bias_estimate": float("nan"),
        "healthy": False,
        "stable": False,
        "note": "",
    }
    if row["chains_diverged"] == num_chains:
        row["note"] = "diverged"
        return row
    settings = LLCSettings(
        n_beta=n_beta,
        n_beta_source="",
        n_unit=posterior.n_unit,
        n_source=posterior.n_source,
        localization=loc,
        step_size=step,
        step_size_source="calibrate",
        sampler=kernel.name,
        sampler_options=kernel.settings(),
        num_chains=num_chains,
        num_draws=draws,
        num_burnin=burn,
        num_steps_bw_draws=1,
        batch_size=posterior.batch_size,
        seed=seed,
        chain_mode=chain_mode,
        num_params=posterior.num_params,
        device=str(posterior.device),
        control_variate=True,
    )
    result = summarize_run(run, posterior, settings, warn=False)
    d = result.diagnostics
    row.update(
        llc_mean=result.mean,
        llc_stderr=result.stderr,
        rhat=d.rhat,
        trend_z=d.trend_z,
        bias_indicator=result.checks.bias_indicator,  # over the healthy chains, as estimate_llc judges it
        per_chain=[float(v) if math.isfinite(v) else None for v in result.per_chain],
    )
    row["chains_unstable"] = int(np.sum(d.unstable)) if d.unstable.shape == d.diverged.shape else 0
    problems = []
    if row["chains_diverged"]:
        problems.append("diverged")
    if row["chains_unstable"]:  # finite, but past the step's stability limit: the step is too large
        problems.append(f"{row['chains_unstable']} chain(s) past the stability limit")
    if math.isfinite(d.rhat) and d.rhat > RHAT_MAX and not equilibrated:
        problems.append(f"R-hat {d.rhat:.2f}")
    if math.isfinite(d.trend_z) and abs(d.trend_z) > CALIBRATION_TREND_Z:
        problems.append(f"trend z {d.trend_z:.1f}")
    if result.mean <= 0:
        problems.append("estimate not positive")
    if row["bias_indicator"] > MAX_BIAS_INDICATOR:  # estimate_llc would warn at this step (StepSizeWarning)
        problems.append(f"predicted step bias {row['bias_indicator']:.0%} > {MAX_BIAS_INDICATOR:.0%}")
    row["healthy"] = not problems
    row["note"] = ", ".join(problems)
    return row


def _mark_stability(table: list[dict[str, Any]], tolerance: float) -> None:
    ladder = [r for r in table if r.get("kind", "step") == "step"]
    for loc in {r["localization"] for r in ladder}:
        rows = sorted((r for r in ladder if r["localization"] == loc), key=lambda r: -r["step_size"])
        for row in rows:  # judged afresh: a rung lengthened since may have changed
            row.update(stable=False, bias_estimate=float("nan"))
        for big, small in itertools.pairwise(rows):
            if not (big["healthy"] and small["healthy"]):
                continue
            ratio = big["step_size"] / small["step_size"]
            factor = ratio / (ratio - 1)
            # bias linear in the step: bias(big) = (llc(big) - llc(small)) * ratio / (ratio - 1)
            bias = (big["llc_mean"] - small["llc_mean"]) * factor
            noise = factor * _difference_stderr(big, small)
            big["bias_estimate"] = bias / small["llc_mean"]
            # one-sigma upper bound on the bias: a noisy comparison cannot vouch for a step
            big["stable"] = abs(bias) + noise <= tolerance * abs(small["llc_mean"])


def _difference_stderr(big: dict[str, Any], small: dict[str, Any]) -> float:
    """Standard error of ``llc(big) - llc(small)``: paired by chain where both rows have per-chain values.

    The rungs of the ladder continue the same chains (chain ``c`` of every rung starts where chain ``c``
    of the length stage ended), so their estimates share each chain's slow components; the standard
    error of the per-chain differences keeps that shared part out of the comparison. Paired differences
    of independent chains are a valid standard error whether or not the rungs are correlated. Rows
    without per-chain values (or fewer than two chains healthy in both) fall back to the two standard
    errors combined as if independent.
    """
    a, b = big.get("per_chain"), small.get("per_chain")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        diffs = np.array([x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None])
        if diffs.size >= 2:
            return float(diffs.std(ddof=1) / math.sqrt(diffs.size))
    return math.hypot(_nz(big["llc_stderr"]), _nz(small["llc_stderr"]))


def _nz(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def _recommend(full_table, n_beta, tolerance, n, settings, lengths) -> CalibrationResult:
    problems = []
    table = [r for r in full_table if r.get("kind", "step") == "step"]
    usable = [r for r in table if r["chains_diverged"] == 0]
    if not usable:
        raise ChainDivergenceError(
            "every setting tried had diverging chains ("
            + "; ".join(f"ε={r['step_size']:.2g}, γ={r['localization']:g}" for r in table)
            + "); try smaller step sizes or a larger localization"
        )
    healthy_locs = sorted({r["localization"] for r in usable if r["healthy"]})
    loc = healthy_locs[0] if healthy_locs else min(r["localization"] for r in usable)
    rows = sorted((r for r in table if r["localization"] == loc), key=lambda r: -r["step_size"])
    stable = [r for r in rows if r["healthy"] and r["stable"]]
    healthy = [r for r in rows if r["healthy"]]
    if stable:
        chosen = stable[0]
        criteria = (
            f"largest step at γ={loc:g} that is healthy and whose estimated bias (from halving the step), "
            f"plus one standard error, is within {tolerance:.0%}"
        )
    else:
        chosen = healthy[-1] if healthy else [r for r in rows if r["chains_diverged"] == 0][-1]
        if healthy:
            criteria = (
                f"no step was stable within {tolerance:.0%}; "
                f"recommending the smallest healthy step at γ={loc:g}"
            )
            advice = "Try smaller steps or longer chains (base_steps)."
        else:
            criteria = (
                f"no setting was healthy; recommending the smallest step that did not diverge at γ={loc:g}"
            )
            advice = f"Its chains were not converged ({chosen['note']}): raise base_steps."
        problems.append(
            Problem.of(ConvergenceWarning, f"calibrate: {criteria} ({chosen['step_size']:.3g}). {advice}")
        )
    # the bias is linear in the step only for small steps: fit the recommendation, the steps below it
    # and one halving above it
    lam0, lam0_se, extrapolation = _extrapolate(
        [r for r in healthy if r["step_size"] <= 2 * chosen["step_size"]]
    )
    problems.extend(_extrapolation_disagrees(chosen, lam0, lam0_se, tolerance, rows))
    burn, draws = lengths[loc].at(chosen["step_size"])
    return CalibrationResult(
        step_size=chosen["step_size"],
        localization=loc,
        num_burnin=burn,
        num_draws=draws,
        llc_extrapolated=lam0,
        llc_extrapolated_stderr=lam0_se,
        table=full_table,
        criteria=criteria,
        n_beta=n_beta,
        settings={**settings, "n": n, "tolerance": tolerance, "extrapolation": extrapolation},
        problems=tuple(problems),
    )


def _extrapolation_disagrees(
    chosen: dict[str, Any], lam0: float, lam0_se: float, tolerance: float, rows: list[dict[str, Any]]
) -> list[Problem]:
    """A ``StepSizeWarning`` where the recommended step's estimate and the extrapolation to step 0 differ.

    The recommendation is certified by one halving of the step; the extrapolation fits every healthy rung
    at or below twice it. Where the two disagree by more than ``tolerance`` of the extrapolated value plus
    two standard errors of the difference, the bias keeps growing below the halving (it is not linear
    there) and the recommended step's estimate carries more of it than the halving measured.
    """
    if not math.isfinite(lam0):
        return []
    gap = chosen["llc_mean"] - lam0
    noise = math.hypot(_nz(chosen["llc_stderr"]), _nz(lam0_se))
    if abs(gap) - 2 * noise <= tolerance * abs(lam0):
        return []
    smaller = [r["step_size"] for r in rows if r["healthy"] and r["step_size"] < chosen["step_size"]]
    advice = (
        f"pass step_size={max(smaller):.3g} (the next healthy step below it) to estimate_llc"
        if smaller
        else "calibrate with smaller step_sizes"
    )
    return [
        Problem.of(
            StepSizeWarning,
            f"calibrate: the recommended step's estimate {chosen['llc_mean']:.4g} is {gap / lam0:+.0%} from "
            f"the estimate extrapolated to step 0 ({lam0:.4g} ± {lam0_se:.2g}), beyond the tolerance of "
            f"{tolerance:.0%} plus two standard errors: the step's bias is larger than halving it measured. "
            f"Report llc_extrapolated, or {advice}.",
        )
    ]


def _extrapolate(rows: list[dict[str, Any]]) -> tuple[float, float, str]:
    """Weighted least squares of llc = a + b * step over ``rows``: (a, stderr of a, what was done).

    Only where it measurably helps: at least three steps, a slope more than two standard errors from zero
    (otherwise the step's bias is not measurable and the line only adds noise) and a positive intercept
    (a line drawn to a negative value extrapolates past where the bias is linear). Otherwise NaN.
    """
    if len(rows) < 3:
        return (
            float("nan"),
            float("nan"),
            f"not done: {len(rows)} healthy steps at or below twice the chosen one",
        )
    x = np.array([r["step_size"] for r in rows])
    y = np.array([r["llc_mean"] for r in rows])
    se = np.array([r["llc_stderr"] for r in rows], dtype=float)
    se = np.where(np.isfinite(se) & (se > 0), se, np.nanmax(np.append(se[np.isfinite(se)], 1.0)))
    w = 1 / se**2
    design = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.pinv(design.T @ (design * w[:, None]))
    coef = cov @ design.T @ (w * y)
    slope_z = abs(coef[1]) / math.sqrt(max(cov[1, 1], 1e-300))
    if slope_z <= 2:
        return (
            float("nan"),
            float("nan"),
            f"not done: no measurable step dependence (slope z = {slope_z:.2g})",
        )
    if not coef[0] > 0:
        return float("nan"), float("nan"), f"not done: the line reaches {coef[0]:.3g} at step 0"
    return (
        float(coef[0]),
        float(math.sqrt(max(cov[0, 0], 0.0))),
        f"weighted line through {len(rows)} steps (slope z = {slope_z:.2g})",
    )
