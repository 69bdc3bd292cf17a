r"""How long to run the chains: until the estimate holds, measured in simulated time.

SG-MCMC chains started at :math:`w^*` approach the localized posterior over a *simulated time*
:math:`\tau = \varepsilon \cdot T` (step size times steps), not over a number of steps: on deep linear
networks :math:`\hat\lambda` reaches 61% of its stationary value at :math:`\tau = 0.013`, 89% at 0.11 and
97% at 0.85 (DESIGN §9). Every chain starts at :math:`w^*` and drifts the same way, so split R-hat and a
trend test within one run do not see the shortfall; comparing the estimate over successive doublings of
the length does.

:func:`run_until_converged` therefore runs the chains in segments of doubling length, each continuing
where the last ended. After each segment it compares the estimate over that segment with the estimate
over the one before (the run's second half against the quarter before it) and stops when they agree
within ``tolerance`` plus two standard errors, the standard error of the last is within ``precision`` of
it, its split R-hat is within :data:`~slt.estimators.diagnostics.RHAT_MAX` (chains that disagree have not
mixed), and the simulated time is at least ``min_simulated_time``;
the last segment (about half the run) gives the draws, everything before it is burn-in. A budget
(``max_steps`` per chain, ``max_seconds``) stops it earlier, and the result then says it did not converge.

After every segment an automatically chosen step is checked again with :func:`slt.tuning.bias_indicator`
at the chains' current spread (posterior curvature away from :math:`w^*` measured 2-700× the curvature at
it) and shrunk if its predicted bias grew past twice the target, or, in the first segments, grown up to 2×
if it is below half the target; the comparison of segments then starts again from that point. For a
kernel that weighs the minibatch gradient noise more than SGLD does (SGNHT, by :math:`2/A`; see
:class:`slt.samplers.Kernel`'s ``diffusion_gain``) the prediction is also that noise's bias, measured
at the chains' positions (:func:`slt.tuning.thermostat_minibatch_bias`), whichever is larger; such a
kernel's velocity and thermostat restart at the chains' positions when the step changes, and the
simulated time the run must reach counts from there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from slt.estimators.diagnostics import RHAT_MAX, diagnose
from slt.samplers import BoundKernel
from slt.sampling import PosteriorSampler
from slt.sampling.checks import minibatch_gradient_noise
from slt.sampling.driver import ChainRun, Observable
from slt.sampling.progress import progress_bar
from slt.tuning import DEFAULT_TARGET_BIAS, bias_indicator, thermostat_minibatch_bias

__all__ = [
    "LengthPolicy",
    "LengthReport",
    "run_until_converged",
    "llc_trace",
    "noise_at_chain_ends",
    "min_simulated_time",
    "DEFAULT_MAX_STEPS",
    "AUTO_COMPILE_MIN_STEPS",
]

#: Largest relative standard error of the estimate the automatic length accepts as converged.
DEFAULT_PRECISION = 0.05
#: Default budget of steps per chain for the automatic length.
DEFAULT_MAX_STEPS = 100_000
#: Steps per chain from which ``slt.estimate_llc``'s default (``compile=None``) runs stacked chains through
#: the compiled gradient: the automatic length's first segment that long (after 7,500 steps) or a given
#: length that long. Measured on one CPU core (see ``benchmarks/results/compile.md``): stacked compiled
#: chains take 0.13x (16 chains of a normal crossing: 121 against 915 µs per step) to 0.49x eager per step
#: after a warm-up of 2-4 s per architecture and about 11 s for the first compilation of a process; at this
#: length the saving pays the first warm-up of a process on the smallest models.
AUTO_COMPILE_MIN_STEPS = 8_000
#: Segments within which an automatic step may grow; it shrinks after any segment whose predicted bias
#: exceeds twice the target (on 5-10-10-10-10-5 the chains kept spreading into stiffer places: the
#: predicted bias rose from 5% to 49% over six doublings and λ̂ came out +93% when only the first segment
#: was checked).
MAX_RECHECKS = 3
#: When the step must shrink and the budget cannot pay for another segment of the same length, what is
#: left of it is run at the smaller step if it is at least 1/this of a segment: draws from a shorter
#: segment at the right step, rather than the last one at a step the chains outgrew.
MIN_LAST_SEGMENT_SHARE = 4
#: Share of the target bias a kernel's amplified minibatch noise may predict (see ``diffusion_gain`` of
#: :class:`slt.samplers.Kernel`). SGNHT's prediction is the bias itself, not an upper bound like SGLD's
#: indicator, and it falls short on deep networks: a tanh MLP's +7.5% was predicted 7.3%, but the deep
#: linear network 10-5-10 measured +9.3% and +13% at predictions of 6.6% and 15%, and at half the
#: target its rank-2 case came out +6-7%.
AMPLIFIED_NOISE_TARGET_SHARE = 0.25
#: Simulated time a run must reach at γ = 1 before it may stop; :math:`\tau_{min} = 0.5 / \max(\gamma, 1)`
#: (the localizing pull relaxes flat directions over a time 2/γ; DESIGN §9 measured 95% of the stationary
#: value at τ = 0.43 on 10-5-10 r=1 and 90% at 0.39 on 5-5-5-5-5).
MIN_SIMULATED_TIME = 0.5


def min_simulated_time(localization: float) -> float:
    r"""Simulated time a run at localization :math:`\gamma` must reach: :math:`0.5 / \max(\gamma, 1)`."""
    return MIN_SIMULATED_TIME / max(float(localization), 1.0)


@dataclass(frozen=True)
class LengthPolicy:
    r"""When to stop doubling the chains.

    Attributes
    ----------
    first_segment : int
        Steps of the first segment (from :math:`w^*`); later segments double.
    tolerance : float
        Relative change between the estimates of two successive segments accepted as converged (on top
        of two standard errors of that change).
    min_simulated_time : float
        Simulated time :math:`\varepsilon T` the run must reach before it may stop (singular models
        relax over :math:`\tau \approx 0.1`-1 at :math:`\gamma = 1`), in SGLD's units: a kernel that
        diffuses :math:`g` times as far per step (``diffusion_gain``, SGNHT's :math:`2/A`) reaches it at
        :math:`\varepsilon T = \tau / g`.
    max_steps : int or None
        Budget of steps per chain (``None``: no limit).
    max_seconds : float or None
        Budget of wall time for the chains (``None``: no limit).
    precision : float
        Largest standard error (across chains) of the last segment's estimate, relative to it, accepted
        as converged: without it a noisy estimate passes the comparison of segments by its two standard
        errors alone (normal crossings stopped at τ ≈ 0.6 with errors of -64% to +43%).
    """

    first_segment: int = 500
    tolerance: float = 0.05
    min_simulated_time: float = 0.0
    max_steps: int | None = DEFAULT_MAX_STEPS
    max_seconds: float | None = None
    precision: float = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        if not (isinstance(self.first_segment, int) and self.first_segment >= 16):
            raise ValueError(f"first_segment must be an integer >= 16, got {self.first_segment!r}")
        if not self.tolerance > 0:
            raise ValueError(f"tolerance must be positive, got {self.tolerance!r}")
        if self.max_steps is not None and self.max_steps < 2 * self.first_segment:
            raise ValueError(
                f"max_steps must allow two segments (at least {2 * self.first_segment}), got {self.max_steps}"
            )
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds!r}")


@dataclass
class LengthReport:
    r"""How the automatic length went.

    Attributes
    ----------
    converged : bool
        Whether the last two segments agreed before the budget ran out.
    reason : str
        Why the run stopped, in words.
    segment_steps : list of int
        Steps per chain of each segment.
    segment_estimates : list of float
        :math:`\hat\lambda` over each segment (healthy chains).
    segment_stderrs : list of float
        Standard error across chains of each segment's estimate.
    simulated_time : float
        :math:`\sum_k \varepsilon_k T_k` over the whole run.
    segment_step_sizes : list of float
        Step size of each segment.
    step_size : float
        The step of the draws (smaller than the one given if the recheck shrank it).
    step_history : list of str
        Step-size changes, in words.
    compiled_from : int or None
        Steps per chain after which the chains ran through the compiled gradient (``compile_from``), or
        ``None`` where the run did not switch.
    """

    converged: bool
    reason: str
    segment_steps: list[int] = field(default_factory=list)
    segment_estimates: list[float] = field(default_factory=list)
    segment_stderrs: list[float] = field(default_factory=list)
    segment_step_sizes: list[float] = field(default_factory=list)
    simulated_time: float = 0.0
    step_size: float = float("nan")
    step_history: list[str] = field(default_factory=list)
    compiled_from: int | None = None


def _step_factor(indicator: float, target_bias: float) -> float:
    """How much to resize the step given its predicted bias: 1 unless it is off by more than 2×.

    Shrinks by up to 10× when the bias is above twice the target; grows by at most 2× when it is below
    half the target (the pilot measures λ̂ before the chains spread, which inflates its prediction).
    """
    if not math.isfinite(indicator) or indicator <= 0:
        return 1.0
    if indicator > 2 * target_bias:
        return max(target_bias / indicator, 0.1)
    if indicator < target_bias / 2:
        return min(target_bias / indicator, 2.0)
    return 1.0


def noise_at_chain_ends(
    posterior: PosteriorSampler, run: ChainRun, chains: np.ndarray | None = None, seed: int = 0
) -> float:
    """:func:`slt.sampling.checks.minibatch_gradient_noise` at the last positions of ``chains``.

    ``chains`` is a boolean mask over the run's chains; by default those that did not diverge.
    """
    keep = ~run.diverged if chains is None else chains
    ends = run.final_positions[torch.as_tensor(keep)] if run.final_positions.numel() else run.final_positions
    return minibatch_gradient_noise(posterior, ends, seed=seed)


def _amplified_noise_bias(
    posterior: PosteriorSampler, run: ChainRun, healthy: np.ndarray, indicator: float, gain: float, llc: float
) -> float:
    """:func:`slt.tuning.thermostat_minibatch_bias` with the noise measured at the healthy chains' ends."""
    share = noise_at_chain_ends(posterior, run, healthy)
    return thermostat_minibatch_bias(indicator, share, gain, llc, posterior.num_params)


def llc_trace(run: ChainRun, n_beta: float, init_loss: float) -> np.ndarray:
    r"""Per-draw estimates :math:`n\beta (L_B(w_t) - L_{ref})`, shape (chains, draws).

    The reference is the loss of :math:`w^*` on each draw's minibatch when the run recorded it (the
    control variate), else ``init_loss`` (:math:`L_n(w^*)`). NaN after a chain diverged.
    """
    reference = run.reference_loss_trace if run.reference_loss_trace is not None else init_loss
    return n_beta * (run.loss_trace - reference)


def _out_of_budget(policy: LengthPolicy, steps_done: int, seconds: float, next_length: int) -> str | None:
    """Why running ``next_length`` more steps per chain would break the budget, or ``None``."""
    if policy.max_steps is not None and steps_done + next_length > policy.max_steps:
        return f"max_steps={policy.max_steps} reached"
    if policy.max_seconds is not None and seconds * (1 + next_length / steps_done) > policy.max_seconds:
        return f"max_seconds={policy.max_seconds:g} would be exceeded by the next segment"
    return None


def _steps_left(policy: LengthPolicy, steps_done: int, seconds: float) -> int:
    """Steps per chain the budget still allows (the wall-time budget at the rate so far)."""
    left = math.inf
    if policy.max_steps is not None:
        left = policy.max_steps - steps_done
    if policy.max_seconds is not None and seconds > 0:
        left = min(left, (policy.max_seconds - seconds) * steps_done / seconds)
    return max(int(left), 0) if math.isfinite(left) else 2**62


def _agree(previous: np.ndarray, current: np.ndarray, tolerance: float) -> tuple[bool, float]:
    """Whether two segments' per-chain estimates agree, and the standard error of their change."""
    healthy = np.isfinite(previous) & np.isfinite(current)
    if healthy.sum() == 0:
        return False, float("nan")
    diffs = current[healthy] - previous[healthy]
    se = float(diffs.std(ddof=1) / math.sqrt(diffs.size)) if diffs.size > 1 else 0.0
    level = abs(float(current[healthy].mean()))
    return abs(float(diffs.mean())) <= tolerance * level + 2 * se, se


def run_until_converged(
    posterior: PosteriorSampler,
    *,
    kernel: BoundKernel,
    n_beta: float,
    localization: float,
    step_size: float,
    num_chains: int,
    seed: int,
    policy: LengthPolicy,
    num_steps_bw_draws: int = 1,
    chain_mode: str = "auto",
    observables: Mapping[str, Observable] | None = None,
    control_variate: bool = True,
    recheck_step: bool = True,
    target_bias: float = DEFAULT_TARGET_BIAS,
    progress: bool | str | Any = False,
    stop: Callable[[float], str | None] | None = None,
    compile_from: int | None = None,
) -> tuple[ChainRun, LengthReport]:
    """Run chains in doubling segments until two successive segments agree (see the module docstring).

    ``progress`` may be an open progress bar (then advanced, not closed) instead of a flag or a label.
    ``stop(estimate)``, called with each segment's estimate, ends the run early when it returns a reason
    (the report's ``reason``; ``converged`` stays ``False``). ``compile_from``: steps per chain from which a
    segment of at least that length runs through the compiled gradient, where compiling would stack the
    chains (:meth:`~slt.sampling.PosteriorSampler.compile_pays`); the chain mode is then chosen again, and
    the report's ``compiled_from`` says when it switched (not after a chain diverged). ``None`` never
    switches. The first compilation (seconds) counts against ``max_seconds`` like any other step.

    Returns
    -------
    run : ChainRun
        The last segment as the draws, every earlier segment's (thinned) losses as burn-in.
    report : LengthReport

    The kernel must already be bound (its adaptation, if any, ends within the first segment).
    """
    every = num_steps_bw_draws
    first = max(policy.first_segment // every, 8) * every
    gain = kernel.diffusion_gain()
    shared_bar = progress is not None and not isinstance(progress, (bool, str))
    bar = (
        progress
        if shared_bar
        else progress_bar(progress, policy.max_steps * num_chains if policy.max_steps else None, "LLC")
    )
    report = LengthReport(converged=False, reason="", step_size=step_size)
    burnin: list[np.ndarray] = []
    run: ChainRun | None = None
    previous: np.ndarray | None = None
    states = None
    diverged_at = np.full(num_chains, -1, dtype=np.int64)
    steps_done, seconds, length, segment = 0, 0.0, first, 0
    requested_mode = chain_mode
    # simulated time that counts towards the floor: all of it, or since the last restart of the states
    since_restart = 0.0
    try:
        while True:
            if (
                compile_from is not None
                and posterior.compiled is None
                and length >= compile_from
                and not (diverged_at >= 0).any()  # a diverged chain's state is not a point to check at
                and posterior.compile_pays(num_chains, requested_mode)
            ):
                posterior.enable_compile()
                chain_mode = requested_mode  # chosen again, now for compiled chains
                report.compiled_from = steps_done
            started = time.perf_counter()
            run = posterior.run(
                n_beta=n_beta,
                localization=localization,
                step_size=step_size,
                sampler=kernel,
                num_chains=num_chains,
                num_draws=length // every,
                num_burnin=0,
                num_steps_bw_draws=every,
                seed=seed + 7_368_787 * segment,
                chain_mode=chain_mode,
                observables=observables,
                control_variate=control_variate,
                record_grad_norm=True,
                progress=bar if bar is not None else False,
                initial_states=states,
            )
            chain_mode = run.chain_mode
            seconds += time.perf_counter() - started
            newly = (diverged_at < 0) & (run.divergence_step >= 0)
            diverged_at[newly] = steps_done + run.divergence_step[newly]
            steps_done += length
            segment += 1
            states = run.final_states
            report.simulated_time += step_size * length
            since_restart += step_size * length
            trace = llc_trace(run, n_beta, posterior.init_loss)
            current = trace.mean(axis=1)  # NaN for diverged chains
            healthy = np.isfinite(current)
            estimate = float(current[healthy].mean()) if healthy.any() else float("nan")
            report.segment_steps.append(length)
            report.segment_step_sizes.append(step_size)
            report.segment_estimates.append(estimate)
            report.segment_stderrs.append(
                float(current[healthy].std(ddof=1) / math.sqrt(healthy.sum()))
                if healthy.sum() > 1
                else math.nan
            )
            if not healthy.any():
                report.reason = "every chain diverged"
                break
            stopped = stop(estimate) if stop is not None else None
            if stopped is not None:
                report.reason = stopped
                break
            if recheck_step and estimate > 0:
                half = run.grad_norm_sq.shape[1] // 2
                indicator = bias_indicator(step_size, n_beta, run.grad_norm_sq[healthy, half:], estimate)
                aim = indicator
                if gain != 1.0:
                    # this prediction is the bias itself, not an upper bound: aim it well below the target
                    amplified = _amplified_noise_bias(posterior, run, healthy, indicator, gain, estimate)
                    aim = max(indicator, amplified / AMPLIFIED_NOISE_TARGET_SHARE)
                    indicator = max(indicator, amplified)
                factor = _step_factor(aim, target_bias)
                if factor > 1.0 and segment > MAX_RECHECKS:
                    factor = 1.0  # grow only early; shrink whenever the chains reach stiffer places
                if factor != 1.0:
                    # the chains reached stiffer (or flatter) places than w*: resize the step, count from here
                    # (within the budget: a shrunk step gets what is left of it, at least a quarter segment;
                    # otherwise this segment stays the draws, flagged unconverged)
                    reason = _out_of_budget(policy, steps_done, seconds, length)
                    if reason is not None:
                        left = _steps_left(policy, steps_done, seconds) // every * every
                        if factor > 1.0 or left < max(first, length // MIN_LAST_SEGMENT_SHARE):
                            report.reason = reason
                            break
                        length = left
                    step_size *= factor
                    if gain != 1.0:
                        # a velocity and a thermostat balanced for the old step would heat, then freeze,
                        # the chains (the thermostat relaxes by about ε per step): restart them in place
                        states = [kernel.init(state.position) for state in states]
                        since_restart = 0.0
                    report.step_history.append(
                        f"predicted bias {indicator:.1%} after {steps_done} steps: step -> {step_size:.3g}"
                    )
                    burnin.append(run.loss_trace)
                    previous = None
                    continue
            if previous is not None:
                agree, _ = _agree(previous, current, policy.tolerance)
                relative_se = report.segment_stderrs[-1] / abs(estimate) if estimate else math.inf
                precise = not relative_se > policy.precision  # NaN (one chain) cannot be judged
                mixed = not diagnose(trace, run.divergence_step).rhat > RHAT_MAX
                if agree and precise and mixed and gain * since_restart >= policy.min_simulated_time:
                    report.converged = True
                    report.reason = (
                        f"the last two segments agree within {policy.tolerance:.0%} plus two standard "
                        f"errors, the standard error is within {policy.precision:.0%} and split R-hat "
                        f"within {RHAT_MAX}"
                    )
                    break
            previous = current
            next_length = 2 * length
            reason = _out_of_budget(policy, steps_done, seconds, next_length)
            if reason is not None:
                report.reason = reason
                break
            burnin.append(run.loss_trace)
            length = next_length
    finally:
        if bar is not None and not shared_bar:
            bar.close()
    assert run is not None
    report.step_size = step_size
    combined = ChainRun(
        loss_trace=run.loss_trace,
        burnin_loss_trace=np.concatenate(burnin, axis=1) if burnin else np.empty((num_chains, 0)),
        grad_norm_sq=run.grad_norm_sq,
        reference_loss_trace=run.reference_loss_trace,
        divergence_step=diverged_at,
        observables=run.observables,
        chain_mode=run.chain_mode,
        seconds=seconds,
        final_positions=run.final_positions,
        final_states=run.final_states,
        compile=run.compile,
        distance_sq_trace=run.distance_sq_trace,
    )
    return combined, report
