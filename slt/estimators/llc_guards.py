r"""Guards of an LLC estimate: what is wrong with it, each with what to do about it.

:func:`llc_problems` turns a run's diagnostics and checks into typed :class:`~slt.warnings.Problem`\ s
(diverged or unstable chains, disagreement, drift, a short run, λ̂ above d/2, chains that left the basin,
an estimate the localization sets, a large predicted step bias, a loss that is not a mean per sample). The
thresholds below are module constants, each with the measurements that set it.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats

from slt.estimators.diagnostics import RHAT_MAX, ChainDiagnostics, trend_threshold
from slt.estimators.length import DEFAULT_PRECISION, min_simulated_time
from slt.estimators.llc_result import LLCChecks, LLCSettings, noise_gain, run_simulated_time
from slt.sampling.checks import gap_climbed
from slt.tuning import DEFAULT_TARGET_BIAS, STABILITY_LIMIT
from slt.warnings import (
    ConvergenceWarning,
    DivergenceWarning,
    LeftBasinWarning,
    LocalizationWarning,
    LossFunctionWarning,
    NotAMinimumWarning,
    Problem,
    ShortChainWarning,
    StepSizeWarning,
)

__all__ = [
    "llc_problems",
    "batch_size_problem",
    "MAX_BIAS_INDICATOR",
    "MAX_OVER_HALF_D",
    "MAX_LOCALIZATION_SHARE",
]


#: λ̂ above this multiple of d/2 is reported: no learning coefficient exceeds d/2, and a regular model's
#: estimate sits a few percent above it at an ordinary step (its discretization bias: +7.5% for a 10-d
#: quadratic at nβ = 145, ε = 1e-3), which is not worth an alarm.
MAX_OVER_HALF_D = 1.1
#: :attr:`LLCChecks.localization_share` (:math:`-d\ln\hat\lambda/d\ln\gamma`) significantly above this (by a
#: 95% Student-t margin over the chains) is reported: half or more of what confines the chains where they move
#: the loss is the pull towards w*. Measured (γ = 1 unless given): linear regression d = 4, 0.006 (closed form
#: 0.0059), and at γ = 100, 0.38 (0.373); deep linear network 10-5-10, 0.013; normal crossings w1²w2² 0.071
#: and w1²w2⁴ 0.17 (quadrature: 0.097 and 0.13); tanh regressions 0.03-0.05; a 6-32-3 classifier near zero
#: cross-entropy 0.15 ± 0.14; a 460-parameter CNN at γ = 10, 0.24 ± 0.04 (at 30, 0.44). The grokking example's
#: modular-addition MLP at its chosen γ = 100: 0.5 to 5 at most checkpoints, and doubling γ divided λ̂ by 1.8
#: at the memorization peak (share 0.85-0.92) and by 13 after grokking (share 2.8-3.4; finite difference 3.7).
MAX_LOCALIZATION_SHARE = 0.5
#: A predicted step-size bias (:attr:`LLCChecks.bias_indicator`) above this, four times what the automatic
#: step aims at, is reported. Measured with given steps of 2-6 times the automatic one (SGLD's defaults,
#: automatic length, seed 0; error against the exact target): normal crossing w1²w2² +3, +5, +9, +16% at
#: predictions of 12, 14, 21, 30%; a tanh regression MLP (the hyperparameters tutorial) 0% at 13%, +21% at
#: 31%, +48% at 44%; a 6-32-3 classifier near zero cross-entropy +4% at 12%, +6.5% at 20%, +40% at 44%
#: (one chain past the stability limit; the others kept it); a tanh MLP 8-24-1 +6% at 12%, +97% at 58%. A
#: linear regression stays within 1.5% even at 30% (its Gaussian posterior has no bias under
#: Leimkuhler-Matthews noise) and w1²w2⁴ within 5%: there the warning is a false alarm; of the others, all
#: but the two above 50% passed the old threshold (50%) silently. ``benchmarks/results/step_multiples.md``:
#: at 20%, 9 of 29 runs flagged, 4 false alarms, no run at or below it more than 10% off; at 50%, 2 flagged,
#: 2 such misses.
MAX_BIAS_INDICATOR = 0.2
#: For samplers that weigh the minibatch noise more than SGLD (SGNHT), a predicted minibatch bias
#: (``checks.minibatch_bias``) above this is reported. On the deep linear network 10-5-10 (rank 1,
#: n = 1e4, batch 1086, exact 20.25) SGNHT's estimate was +9%, +13%, +15% and +19% off at predictions
#: of 0.066, 0.15, 0.30 and 1.7 (it saturates), and +0.5% with full batches.
MAX_AMPLIFIED_NOISE_BIAS = 0.1
#: A loss whose value on a batch is this far from the mean over its halves is not a mean per sample.
MAX_BATCH_SIZE_DEPENDENCE = 1.5
#: How far from w* (relative to |w*|) the message calls the chains far. Not a condition of the warning:
#: on a grokked modular-addition MLP at γ = 10 the chains scored 4.21 nats against 3.97 for zero weights
#: (L(w*) = 0.46) while only 0.496 |w*| away, and the old requirement of 0.5 |w*| kept it quiet.
MIN_BASIN_DISTANCE = 0.5
#: ... and only where a trivial model is clearly worse than w*: L(0) - L(w*) above this fraction of L(w*).
#: Where noise dominates the loss (the deep linear networks of the tests: L(0) - L(w*) = 0.01 against
#: L(w*) = 5.0) the localized posterior legitimately reaches the zero-weights loss along its flat
#: directions, and the comparison tells nothing.
MIN_BASIN_CONTRAST = 0.1
#: The estimate over the second half of the draws exceeding the first half's by this much (and by two
#: standard errors) means the chains were still spreading from w*: λ̂ is biased low. Half the estimate:
#: with four chains two standard errors are a weak test, and 20% rises came by chance on a healthy
#: three-dimensional quadratic (the deep linear network 5-5-5-5-5 at defaults rose 66%).
MAX_HALVES_RISE = 0.5
#: A given length shorter than the automatic length's floor
#: (:func:`~slt.estimators.length.min_simulated_time`) whose chains still spread this close to free
#: diffusion (:attr:`LLCChecks.free_diffusion`) is flagged: many directions have not relaxed. The deep
#: linear network 5-5-5-5-5 (n = 1e4, exact 8.00) at its automatic step gave λ̂ 0.8-2.2 at
#: τ = 0.001-0.003 (0.97-1.03 of free diffusion), 3.5-3.6 at τ = 0.013-0.035 (0.72-0.78) and 5.1 at
#: τ = 0.05 (0.70), with R-hat and the halves test mostly quiet; a 49-parameter tanh regression gave 2.25
#: at τ = 0.1 (0.88) against 4.3 converged. A relaxed direction of curvature h contributes about 1/(hτ),
#: so strongly confined (regular) models fall well below it. It can flag a run whose λ̂ has settled while
#: directions the loss hardly constrains still spread: a 241-parameter tanh MLP at 200 + 200 steps
#: (τ = 0.35, 0.67) gave 17.4 ± 0.9 against 17.1 with the automatic length (its R-hat, 1.22, flagged it too).
#: The threshold was 0.5 until a reduced-rank regression (4-3-4, rank 1, n = 100, nβ = 2994, converged
#: λ̂ 6.08) gave 5.02-5.49 (-10 to -17%) at τ = 0.08 with 0.34-0.41 and every other check quiet; at
#: τ = 0.32 it gave -1 to -6% at 0.27. For d directions of one curvature h the fraction is
#: (1 - e^{-x})/x at x = hτ and λ̂ misses e^{-x} of its value: 0.5 allows 20% low, 0.3 about 4%.
MAX_FREE_DIFFUSION = 0.3


def _unstable_problem(
    d: ChainDiagnostics, trace: np.ndarray, indicators: np.ndarray, mean: float, s: LLCSettings
) -> Problem:
    bad = np.flatnonzero(d.unstable)
    half = trace.shape[1] // 2
    which = ", ".join(
        f"chain {c}: predicted bias {indicators[c]:.0%}, λ̂ {np.nanmean(trace[c, half:]):.4g}" for c in bad
    )
    kept = int(d.healthy_chains.size)
    return Problem.of(
        DivergenceWarning,
        f"{len(bad)} of {len(d.diverged)} chains passed the step's stability limit ({which}; the limit is "
        f"{STABILITY_LIMIT:.0%}): a stiff direction oscillates there and the loss sits far above the "
        f"posterior's without ever turning non-finite. They are left out like diverged chains; the estimate "
        f"({mean:.4g}) uses the other {kept}. A smaller step_size (now {s.step_size:.3g}) keeps every chain "
        "stable.",
    )


def llc_problems(
    d: ChainDiagnostics,
    mean: float,
    stderr: float,
    s: LLCSettings,
    checks: LLCChecks | None = None,
    init_loss: float = float("nan"),
    trace: np.ndarray | None = None,
) -> tuple[Problem, ...]:
    """What is wrong with an LLC estimate, each with what to do about it (empty when healthy).

    Checks: diverged chains; a significantly negative estimate (w* not a minimum); split R-hat above
    :data:`~slt.estimators.diagnostics.RHAT_MAX`; a trace still drifting during the draws; a single
    chain; an estimate above d/2 (impossible for a learning coefficient); a mean sampled loss above a
    trivial model's (the chains left the basin); a predicted step-size bias above
    :data:`MAX_BIAS_INDICATOR`; a loss that grows or shrinks with the batch size; an estimate still
    rising between the halves of the draws (``trace``, the per-draw estimates); a given length shorter than
    the automatic length's floor whose chains were still spreading almost freely
    (:class:`~slt.warnings.ShortChainWarning`); a loss that never moved from :math:`L_n(w^*)` (every
    draw of ``trace`` zero).
    """
    checks = checks or LLCChecks()
    healthy_trace = None if trace is None else np.asarray(trace)[d.healthy_chains]
    problems = list(_chain_problems(d, mean, stderr, s, healthy_trace))
    problems += _length_problems(s, checks, d)
    problems += _plausibility_problems(mean, stderr, s, checks, init_loss, int(d.healthy_chains.size))
    if any(p.category == ShortChainWarning.__name__ for p in problems):
        # chains still spreading from w* raise loss and distance together, which the share reads as a
        # dependence on γ: the short-chain warning is the one to act on
        problems = [p for p in problems if p.category != LocalizationWarning.__name__]
    if healthy_trace is not None and healthy_trace.size and not np.any(healthy_trace):
        # every draw's loss equal to L(w*): a loss_fn that does not depend on the sampled weights (a
        # cross-entropy over one class gave λ̂ = 0 ± 0 with only a length warning)
        problems = [p for p in problems if p.category != ConvergenceWarning.__name__]
        problems.append(
            Problem.of(
                LossFunctionWarning,
                "the loss never moved from L(w*) while the chains moved: every draw's loss equals it, so "
                "λ̂ = 0 measures nothing. loss_fn does not depend on the sampled weights (a cross-entropy "
                "over a single output is identically zero; a mask that samples only weights the loss does "
                "not use): check the loss and the model's outputs",
            )
        )
    # a loss that is not a mean per sample corrupts every other number (a summed loss gave λ̂ = -110 with
    # NotAMinimumWarning first): its warning leads
    problems.sort(key=lambda p: p.category != LossFunctionWarning.__name__)
    return tuple(problems)


def _chain_problems(
    d: ChainDiagnostics, mean: float, stderr: float, s: LLCSettings, trace: np.ndarray | None
) -> list[Problem]:
    problems = []
    if len(d.diverged) == 1:
        problems.append(
            Problem.of(
                ConvergenceWarning,
                "one chain: the estimate has no standard error and agreement between chains (R-hat) was "
                "never checked; run num_chains=4 or more",
            )
        )
    if d.diverged.any():
        bad = np.flatnonzero(d.diverged)
        where = ", ".join(f"chain {c} at step {d.divergence_step[c]}" for c in bad)
        problems.append(
            Problem.of(
                DivergenceWarning,
                f"{len(bad)} of {len(d.diverged)} chains diverged ({where}); the estimate uses the other "
                f"{d.healthy_chains.size}. A smaller step size (now {s.step_size:.3g}) usually helps.",
            )
        )
    threshold = 2 * stderr if math.isfinite(stderr) else 0.0
    if mean < -threshold:
        problems.append(
            Problem.of(
                NotAMinimumWarning,
                f"the estimated LLC is negative ({mean:.4g} ± {stderr:.2g}): the chains found lower loss "
                "than at the trained weights, so they are not a local minimum. Train longer, raise "
                "localization or lower the step size.",
            )
        )
    if math.isfinite(d.rhat) and d.rhat > RHAT_MAX:
        problems.append(
            Problem.of(
                ConvergenceWarning,
                f"chains disagree (split R-hat {d.rhat:.2f} > {RHAT_MAX}): run longer chains or use "
                "slt.calibrate",
            )
        )
    healthy = int((~d.excluded).sum())
    if math.isfinite(d.trend_z) and abs(d.trend_z) > trend_threshold(healthy):
        direction = "rising" if d.trend_z > 0 else "falling"
        problems.append(
            Problem.of(
                ConvergenceWarning,
                f"the estimate was still {direction} during the draws (trend z = {d.trend_z:.1f}): the "
                "chains had not reached equilibrium, so the estimate is biased "
                f"{'low' if d.trend_z > 0 else 'high'}. Run longer chains (more num_burnin and num_draws) "
                "or use slt.calibrate, which also checks the chain length",
            )
        )
    rise, z = _halves_rise(trace) if trace is not None else (math.nan, math.nan)
    if math.isfinite(rise) and rise > MAX_HALVES_RISE and z > 2:
        tau = run_simulated_time(s)
        problems.append(
            Problem.of(
                ConvergenceWarning,
                f"the estimate rose {rise:.0%} from the first half of the draws to the second (z = {z:.1f}): "
                "the chains were still spreading from the trained weights, so λ̂ is biased low. The run "
                f"covered a simulated time ε·steps = {tau:.3g}; singular models often need 0.2 to 1. Run "
                "longer chains (num_burnin, num_draws) or use slt.calibrate",
            )
        )
    return problems


def _length_problems(s: LLCSettings, checks: LLCChecks, d: ChainDiagnostics | None = None) -> list[Problem]:
    short = _short_chain_problems(s, checks) if s.length_source == "given" else []
    if s.converged is not False:
        return short
    change = checks.last_change
    estimates = checks.segment_estimates
    moved = (
        f"λ̂ moved from {estimates[-2]:.4g} to {estimates[-1]:.4g} over the last doubling"
        if math.isfinite(change)
        else "there were too few segments to compare"
    )
    unstable = [] if d is None else np.flatnonzero(np.asarray(d.unstable, dtype=bool)).tolist()
    if unstable and math.isfinite(change):
        # the segments are judged over every chain that did not diverge; the estimate leaves these out
        moved += (
            f" (over every chain that did not diverge, chain{'s' if len(unstable) > 1 else ''} "
            f"{', '.join(map(str, unstable))} included, which the estimate leaves out as past the "
            "step's stability limit)"
        )
    if estimates and checks.segment_stderrs and estimates[-1]:
        relative = checks.segment_stderrs[-1] / abs(estimates[-1])
        precision = s.precision if s.precision is not None else DEFAULT_PRECISION
        if relative > precision:
            moved += (
                f" and its standard error is {relative:.0%} of it (the automatic length asks for "
                f"{precision:.0%}; more chains, num_chains, shrink it too)"
            )
    budget = f"max_steps={s.max_steps}" + (f", max_seconds={s.max_seconds:g}" if s.max_seconds else "")
    gain = noise_gain(s)
    units = (
        f", {gain * s.simulated_time:.3g} in SGLD's units ({s.sampler} diffuses {gain:g}× as far per ε·steps)"
        if math.isfinite(gain) and gain != 1.0
        else ""
    )
    return [
        *short,
        Problem.of(
            ConvergenceWarning,
            f"the estimate had not settled when the budget ({budget}) stopped the chains: {moved}, after a "
            f"simulated time ε·steps = {s.simulated_time:.3g}{units} "
            "(singular models often need 0.2 to 1 at γ = 1). "
            "The interval includes that change, but the estimate is likely biased "
            f"{'low' if not change < 0 else 'high'}. Raise max_steps or max_seconds, or use slt.calibrate",
        ),
    ]


def _short_chain_problems(s: LLCSettings, checks: LLCChecks) -> list[Problem]:
    """A given length below the automatic length's floor whose chains were still spreading freely."""
    tau = run_simulated_time(s)
    floor = min_simulated_time(s.localization)
    if not (tau < floor and checks.free_diffusion > MAX_FREE_DIFFUSION):
        return []
    steps = math.ceil(floor / s.step_size) if s.step_size > 0 else 0
    return [
        Problem.of(
            ShortChainWarning,
            f"the chains were still spreading from w*: |w - w*|² reached {checks.free_diffusion:.0%} of what "
            f"diffusion with no drift reaches in the run's simulated time ε·steps = {tau:.3g}, so many "
            "directions had not relaxed to the posterior and λ̂ may not have reached its stationary value "
            "(it is usually low: a deep linear network gave 10-45% of its exact value at τ = 0.001-0.03, "
            "64% at 0.05, a reduced-rank regression 83-90% at 0.08; directions the loss hardly constrains "
            "spread longest, so λ̂ may also have settled already). The automatic length runs at "
            f"least τ = 0.5/γ = {floor:.3g}, here {steps} steps at step_size {s.step_size:.3g}: leave "
            "num_draws None for it, or give more num_burnin and num_draws",
        )
    ]


def _halves_rise(trace: np.ndarray) -> tuple[float, float]:
    """Relative rise of the mean from the first to the second half of the draws, and its z.

    NaN with fewer than three chains (no spread to judge by) or a non-positive first half.
    """
    if trace.ndim != 2 or trace.shape[0] < 3 or trace.shape[1] < 8:
        return math.nan, math.nan
    half = trace.shape[1] // 2
    first, second = trace[:, :half].mean(1), trace[:, half:].mean(1)
    if not first.mean() > 0:
        return math.nan, math.nan
    diffs = second - first
    se = diffs.std(ddof=1) / math.sqrt(len(diffs))
    z = diffs.mean() / se if se > 0 else math.copysign(math.inf, diffs.mean())
    return float(second.mean() / first.mean() - 1), float(z)


def _plausibility_problems(
    mean: float,
    stderr: float,
    s: LLCSettings,
    checks: LLCChecks,
    init_loss: float,
    chains: int | None = None,
) -> list[Problem]:
    """λ̂ above d/2, chains that left the basin, λ̂ set by the localization, a large step bias, a summed loss.

    ``chains`` is the number of chains the estimate uses (default ``s.num_chains``).
    """
    chains = s.num_chains if chains is None else chains
    problems = []
    margin = 2 * stderr if math.isfinite(stderr) else 0.0
    if mean - margin > MAX_OVER_HALF_D * s.num_params / 2:
        problems.append(
            Problem.of(
                StepSizeWarning,
                f"λ̂ = {mean:.4g} exceeds d/2 = {s.num_params / 2:g} ({s.num_params} sampled parameters) by "
                f"more than {MAX_OVER_HALF_D - 1:.0%}, which no learning coefficient can: the chains are not "
                "sampling the local posterior. Lower "
                f"step_size (now {s.step_size:.3g}), leave it None for the automatic choice, or use "
                "slt.calibrate",
            )
        )
    gap = checks.zero_weights_loss - init_loss
    implied = init_loss + mean / s.n_beta
    far = not checks.distance <= MIN_BASIN_DISTANCE * checks.center_norm  # NaN distance counts as far
    telling = math.isfinite(gap) and gap > MIN_BASIN_CONTRAST * abs(init_loss)
    if telling and gap_climbed(mean, s.n_beta, init_loss, checks.zero_weights_loss) > 1:
        problems.append(
            Problem.of(
                LeftBasinWarning,
                f"the chains left the basin of the trained weights: their mean loss L(w*) + λ̂/nβ = "
                f"{implied:.4g} is above {checks.zero_weights_loss:.4g}, the loss with the sampled weights "
                f"set to zero (L(w*) = {init_loss:.4g}), and they ended |w - w*| = {checks.distance:.3g} "
                f"from w* (|w*| = {checks.center_norm:.3g}{', far' if far else ''}). λ̂ then only measures "
                "that gap. Lower "
                f"step_size (now {s.step_size:.3g}) or raise localization (γ = {s.localization:g}); networks "
                "trained to near-zero cross-entropy often need γ in the tens to hundreds, and "
                "slt.choose_localization finds the smallest γ that keeps the chains within a quarter of "
                "that gap",
            )
        )
    share, share_stderr = checks.localization_share, checks.localization_share_stderr
    # needs two chains or more: one chain's share has no standard error to test it against. The margin is
    # Student's t over the chains (3.2 standard errors with four, 12.7 with two): with two chains a
    # transformer's share read 5.5 ± 2 where doubling γ changed λ̂ by 0.72 (s ≈ 0.5)
    if (
        math.isfinite(share_stderr)
        and chains > 1
        and share - float(scipy.stats.t.ppf(0.975, chains - 1)) * share_stderr > MAX_LOCALIZATION_SHARE
    ):
        problems.append(
            Problem.of(
                LocalizationWarning,
                f"λ̂ depends strongly on the localization: d ln λ̂ / d ln γ = {-share:.2g} ± "
                f"{share_stderr:.1g} (measured from the draws; near 0 where the loss alone confines the "
                "chains, -1 where the pull towards w* does, below -1 where the loss rises faster than "
                f"quadratically within the pull's reach), so doubling γ would change λ̂ by a factor of "
                f"about {2.0**-share:.2g}. At γ = {s.localization:g} and nβ = {s.n_beta:.4g} the estimate "
                "measures how far the pull lets the chains go as much as the loss: report γ with it and "
                "compare values only at one γ (a sweep does), or try a smaller γ where the chains stay in "
                "the basin (no LeftBasinWarning; slt.choose_localization's γ is already the smallest that "
                "keeps them within a quarter of the gap)",
            )
        )
    if math.isfinite(checks.bias_indicator) and checks.bias_indicator > MAX_BIAS_INDICATOR:
        aim = s.target_bias if s.target_bias else DEFAULT_TARGET_BIAS
        suggested = s.step_size * aim / checks.bias_indicator
        if s.step_size_source == "given":
            remedy = (
                f"Use about {suggested:.2g}, leave step_size None (the automatic step aims at {aim:.0%}), or "
                "check with slt.calibrate, which measures the bias by halving the step"
            )
        else:
            remedy = (
                f"The automatic step aimed at {aim:.0%} (target_bias) but the chains reached stiffer places "
                "than the run could re-size the step for: raise max_steps or max_seconds so that it can "
                f"shrink and still finish, lower target_bias, or give step_size={suggested:.2g}"
            )
        problems.append(
            Problem.of(
                StepSizeWarning,
                f"the step size {s.step_size:.3g} has a predicted discretization bias of "
                f"{checks.bias_indicator:.0%}: λ̂ may be inflated by about as much (given steps of 2-6 times "
                "the automatic one measured +9% to +48% against exact targets at predictions of 21% to 44% "
                "on small networks and normal crossings, though a linear regression was unaffected; a step "
                "near the stability limit also makes the chains disagree, widening the interval). " + remedy,
            )
        )
    noisy = checks.minibatch_bias
    if s.sampler != "sgld" and math.isfinite(noisy) and noisy > MAX_AMPLIFIED_NOISE_BIAS:
        suggested = s.step_size * 0.05 / noisy
        problems.append(
            Problem.of(
                StepSizeWarning,
                f"the minibatch gradient noise predicts a bias of {noisy:.0%} to first order for {s.sampler} "
                f"at step size {s.step_size:.3g} (batch {s.batch_size}): its thermostat absorbs that noise "
                "only on average over the coordinates, so the directions where the loss is stiff, which "
                "carry λ̂, run hot and λ̂ is likely inflated (a deep linear network measured +9% to +19% at "
                "predictions of 7% to 170%, +0.5% with full batches). Use a step of about "
                f"{suggested:.2g} (leave step_size None to have it chosen so), a larger batch_size, or "
                "sampler='sgld'",
            )
        )
    ratio = checks.batch_size_dependence
    scaled = batch_size_problem(ratio)
    if scaled:
        fix = "instead of summing" if ratio > 1 else "and divide by the batch size only once"
        problems.append(
            Problem.of(
                LossFunctionWarning,
                f"{scaled}, and λ̂ scales with the error. Average over the batch (reduction='mean') {fix}",
            )
        )
    return problems


def batch_size_problem(ratio: float) -> str | None:
    """What is wrong with a loss whose value on a batch is ``ratio`` × the mean over its halves, or None."""
    if not (math.isfinite(ratio) and not 1 / MAX_BATCH_SIZE_DEPENDENCE < ratio < MAX_BATCH_SIZE_DEPENDENCE):
        return None
    trend = "grows" if ratio > 1 else "shrinks"
    return (
        f"loss_fn {trend} with the batch size (on a batch it is {ratio:.3g}× the mean over its two halves): "
        "slt needs the mean loss per sample"
    )
