r"""Choosing the localization strength γ: the weakest pull that keeps the chains near :math:`w^*`.

The localized posterior :math:`\propto \exp(-n\beta L_n(w) - \tfrac{\gamma}{2}\|w - w^*\|^2)` confines the
chains by the likelihood along the directions the data determine and by γ along the rest. On regression
models and deep linear networks the likelihood confines almost every direction and γ = 1 changes little.
Networks trained to near-zero cross-entropy are different: most directions are nearly flat at
:math:`w^*`, the chains spread to the localization's own radius :math:`\sqrt{d/\gamma}`, and at γ = 1 they
reach weights that predict worse than weights set to zero. λ̂ then measures that gap, not the basin
(``benchmarks/results/localization.md``: the grokking example's model sampled a mean loss of 4.33 at γ = 1
against 3.97 for zero weights; γ = 100 stayed within a quarter of the gap at every checkpoint and its λ̂
fell 103 → 0.69 as the model generalized).

:func:`choose_localization` states the rule and measures it: the smallest γ of ``candidates`` (1, 3, 10,
30, 100, 300, 1000) at which the chains' mean loss rises above :math:`L_n(w^*)` by at most
``max_gap_fraction`` (a quarter) of the gap :math:`L_n(0) - L_n(w^*)` between the trained weights and zero
weights, at every model it is given. It is meant for a sweep: chosen once over a few checkpoints, then
held fixed so that the checkpoints are comparable (γ is part of what is measured: the target falls as γ
grows, −13% at γ = 10 and −45% at γ = 100 on 10-5-10 deep linear networks). Where the gap is too small to
tell (below 10% of :math:`L_n(w^*)`, as for a regression whose zero-weights prediction is nearly as good),
the first candidate is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from slt.estimators.length import DEFAULT_MAX_STEPS, LengthPolicy, min_simulated_time, run_until_converged
from slt.results.base import JSONResult
from slt.samplers import get_kernel
from slt.sampling.checks import gap_climbed, zero_weights_loss
from slt.sampling.driver import bind_kernel
from slt.sampling.losses import LossFn
from slt.sampling.setup import prepared_sampler
from slt.tuning import default_step_size
from slt.warnings import (
    ChainDivergenceError,
    DivergenceWarning,
    LeftBasinWarning,
    NotAMinimumWarning,
    Problem,
    emit,
)

__all__ = [
    "choose_localization",
    "LocalizationChoice",
    "LocalizationTrial",
    "DEFAULT_LOCALIZATIONS",
    "MAX_GAP_FRACTION",
]

#: The γ tried, weakest first.
DEFAULT_LOCALIZATIONS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
#: Largest share of the gap :math:`L_n(0) - L_n(w^*)` the chains' mean loss may climb.
MAX_GAP_FRACTION = 0.25
#: The gap tells only when it exceeds this fraction of :math:`L_n(w^*)` (as for ``LeftBasinWarning``).
MIN_GAP_CONTRAST = 0.1
#: Times a trial whose chains diverged is run again with a tenth of the step.
DIVERGENCE_RETRIES = 2
#: Wall-time budget of one trial, in seconds.
TRIAL_SECONDS = 120.0
#: The settings :func:`choose_localization` passes on to the sampler (as :func:`slt.estimate_llc` takes them).
SAMPLER_SETTINGS = frozenset({"mask", "n", "n_unit", "eval_samples", "model_mode", "compile"})


@dataclass
class LocalizationTrial:
    r"""One γ tried on one model.

    Attributes
    ----------
    model : int
        Index of the model among those given.
    localization : float
        γ.
    passed : bool
        Whether the chains stayed within the allowed share of the gap.
    gap_fraction : float
        :math:`(\bar L - L_n(w^*)) / (L_n(0) - L_n(w^*))` over the last segment, with :math:`\bar L` the
        chains' mean loss (NaN where the gap does not tell).
    llc : float
        λ̂ over the last segment (what the estimate would be at this γ, when ``passed``).
    init_loss, zero_weights_loss : float
        :math:`L_n(w^*)` and :math:`L_n(0)`.
    n_beta : float
    step_size : float
        The automatic step, after the length stage's rechecks.
    num_burnin, num_draws : int
        Steps per chain before the last segment, and the last segment's steps (the lengths the
        automatic length chose; only meaningful when the run converged).
    converged : bool
        Whether the automatic length converged (a trial stopped because the chains climbed too far has
        not).
    reason : str
        Why the trial ended, in words.
    """

    model: int
    localization: float
    passed: bool
    gap_fraction: float
    llc: float
    init_loss: float
    zero_weights_loss: float
    n_beta: float
    step_size: float
    num_burnin: int
    num_draws: int
    converged: bool
    reason: str


@dataclass
class LocalizationChoice(JSONResult):
    """The γ :func:`choose_localization` chose, and every trial behind it.

    Attributes
    ----------
    localization : float
        The chosen γ.
    rule : str
        The rule, in words (stored with a sweep's settings).
    trials : list of LocalizationTrial
        Every γ tried, in order.
    seconds : float
        Wall time of the choice.
    problems : tuple of Problem
        When no candidate passed: a ``LeftBasinWarning`` (the chains climbed too far even at the last γ), or
        a ``DivergenceWarning`` (they diverged there even at a hundredth of the automatic step).
    """

    localization: float
    rule: str
    trials: list[LocalizationTrial] = field(default_factory=list)
    seconds: float = math.nan
    problems: tuple[Problem, ...] = ()

    def table(self) -> str:
        """The trials as a Markdown table."""
        lines = [
            "| model | γ | passed | share of gap | λ̂ | L(w*) | L(0) | step | burn-in + draws | reason |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for t in self.trials:
            lines.append(
                f"| {t.model} | {t.localization:g} | {'yes' if t.passed else 'no'} | {t.gap_fraction:.3g} | "
                f"{t.llc:.4g} | {t.init_loss:.4g} | {t.zero_weights_loss:.4g} | {t.step_size:.3g} | "
                f"{t.num_burnin} + {t.num_draws} | {t.reason} |"
            )
        return "\n".join(lines)


def choose_localization(
    models: nn.Module | Sequence[nn.Module],
    data: Any,
    *,
    loss_fn: str | LossFn | None = None,
    candidates: Sequence[float] = DEFAULT_LOCALIZATIONS,
    max_gap_fraction: float = MAX_GAP_FRACTION,
    n_beta: float | None = None,
    num_chains: int | None = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    max_seconds: float | None = TRIAL_SECONDS,
    first_segment: int = LengthPolicy.first_segment,
    batch_size: int | None = None,
    sampler: str = "sgld",
    sampler_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: Any = None,
    progress: bool = False,
    **sampler_settings: Any,
) -> LocalizationChoice:
    r"""The smallest γ of ``candidates`` whose chains stay near :math:`w^*` at every one of ``models``.

    At each γ, weakest first, and each model in turn, chains run as :func:`slt.estimate_llc` runs them
    (automatic step, automatic length) and are judged by the share of the gap
    :math:`L_n(0) - L_n(w^*)` their mean loss climbs, :math:`(\hat\lambda / n\beta) / (L_n(0) - L_n(w^*))`.
    A trial ends as soon as a segment climbs past ``max_gap_fraction``, so a γ that is too weak costs
    one or two short segments. The first γ that passes at every model is chosen. A model whose gap does
    not tell (below 10% of :math:`L_n(w^*)`) passes any γ.

    Parameters
    ----------
    models : nn.Module or sequence of nn.Module
        The trained weights to check (for a sweep, a few checkpoints spread over training: early,
        memorizing checkpoints need the strongest pull). Each is copied, never changed.
    data, loss_fn, n_beta, num_chains, batch_size, sampler, sampler_options, seed, device
        As for :func:`slt.estimate_llc`; ``sampler_settings`` takes its ``mask``, ``n``, ``n_unit``,
        ``eval_samples``, ``model_mode`` and ``compile``.
    candidates : sequence of float
        The γ to try, in increasing order.
    max_gap_fraction : float
        Largest share of the gap the chains' mean loss may climb (default ¼; the chains have left the
        basin, and ``LeftBasinWarning`` fires, at 1).
    max_steps, max_seconds : int or float, optional
        Budget of each trial's automatic length.
    first_segment : int
        Steps per chain of a trial's first segment (later segments double; see
        :class:`slt.estimators.length.LengthPolicy`).
    progress : bool
        Show a progress bar for each trial, labelled with its γ and model.

    Returns
    -------
    LocalizationChoice
        ``.localization`` (the last candidate, with a problem, when none passes) and every trial, whose
        step sizes and lengths a sweep reuses.

    Warns
    -----
    LeftBasinWarning
        When no candidate keeps the chains within ``max_gap_fraction`` of the gap.
    DivergenceWarning
        When the chains at the last candidate diverge even at a hundredth of the automatic step (a trial
        whose chains diverge is rerun at a tenth of its step, up to twice).
    NotAMinimumWarning
        When a model's chains at the chosen γ found lower loss than its weights (λ̂ ≤ 0): it passes any γ,
        which says nothing about it (also in the returned choice's ``problems``).

    Raises
    ------
    ValueError
        For empty or unsorted candidates, a non-positive candidate, or ``max_gap_fraction`` outside (0, 1].
    TypeError
        For a keyword argument it does not take (``sampler_settings`` beyond those listed above).
    """
    unknown = sorted(set(sampler_settings) - SAMPLER_SETTINGS)
    if unknown:
        raise TypeError(
            f"choose_localization() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"besides its own parameters it takes {', '.join(sorted(SAMPLER_SETTINGS))} (as estimate_llc)"
        )
    candidates = [float(c) for c in candidates]
    if not candidates or any(not c > 0 for c in candidates) or candidates != sorted(candidates):
        raise ValueError(f"candidates must be positive γ in increasing order, got {candidates!r}")
    if not 0 < max_gap_fraction <= 1:
        raise ValueError(f"max_gap_fraction must be in (0, 1], got {max_gap_fraction!r}")
    if isinstance(models, nn.Module):
        models = [models]
    models = list(models)
    if not models:
        raise ValueError("choose_localization needs at least one model")
    rule = (
        f"the smallest γ of {', '.join(f'{c:g}' for c in candidates)} at which the chains' mean loss climbs "
        f"at most {max_gap_fraction:.0%} of the gap L(0) - L(w*) at each of {len(models)} model(s)"
    )
    started = time.perf_counter()
    trials: list[LocalizationTrial] = []
    trial = _Trial(
        data=data,
        loss_fn=loss_fn,
        max_fraction=max_gap_fraction,
        n_beta=n_beta,
        num_chains=num_chains,
        policy=dict(max_steps=max_steps, max_seconds=max_seconds, first_segment=first_segment),
        batch_size=batch_size,
        sampler=sampler,
        sampler_options=sampler_options,
        seed=seed,
        device=device,
        options=sampler_settings,
        progress=progress,
    )
    for gamma in candidates:
        if all(trial.passes(trials, i, gamma, model) for i, model in enumerate(models)):
            problems = _not_minima(trials, gamma)
            emit(problems, stacklevel=2)
            return LocalizationChoice(gamma, rule, trials, time.perf_counter() - started, problems)
    last = [t for t in trials if t.localization == candidates[-1]]
    diverged = [t for t in last if not math.isfinite(t.gap_fraction) and not t.passed]
    if diverged:
        problem = Problem.of(
            DivergenceWarning,
            f"at γ = {candidates[-1]:g} the chains of model {diverged[0].model} diverged even at a hundredth "
            f"of the automatic step ({diverged[0].reason}); check that the loss is finite near the weights, "
            "or pass localization and step_size",
        )
    else:
        worst = max((t.gap_fraction for t in last), default=math.nan)
        problem = Problem.of(
            LeftBasinWarning,
            f"even at γ = {candidates[-1]:g} the chains' mean loss climbed {worst:.0%} of the way from L(w*) "
            "to the loss of zero weights: λ̂ will mostly measure that climb. Try a smaller step, a larger "
            "γ (candidates=...), or check that the weights are a trained minimum",
        )
    emit((problem,), stacklevel=2)
    return LocalizationChoice(candidates[-1], rule, trials, time.perf_counter() - started, (problem,))


def _not_minima(trials: list[LocalizationTrial], gamma: float) -> tuple[Problem, ...]:
    """A warning for the models whose chains found lower loss than their weights at ``gamma``.

    Their gap fraction is negative, so they pass any γ: the pass says nothing about them (an untrained
    regression MLP passed γ = 1 at λ̂ = -50.6, silently).
    """
    below = [t for t in trials if t.localization == gamma and t.llc <= 0]
    if not below:
        return ()
    where = ", ".join(f"model {t.model} (λ̂ = {t.llc:.3g})" for t in below)
    return (
        Problem.of(
            NotAMinimumWarning,
            f"at γ = {gamma:g} the chains of {where} found lower loss than the given weights: they are not a "
            "minimum, so passing the climb test says nothing about them. Train further, or choose γ at "
            "trained weights",
        ),
    )


@dataclass(frozen=True)
class _Trial:
    """The settings every trial of one :func:`choose_localization` call shares."""

    data: Any
    loss_fn: Any
    max_fraction: float
    n_beta: float | None
    num_chains: int | None
    policy: Mapping[str, Any]
    batch_size: int | None
    sampler: str
    sampler_options: Any
    seed: int
    device: Any
    options: Mapping[str, Any]
    progress: bool = False

    def passes(self, trials: list[LocalizationTrial], index: int, gamma: float, model: nn.Module) -> bool:
        """Run one trial, append it to ``trials`` and say whether it passed."""
        mask = self.options.get("mask")
        extra = {k: v for k, v in self.options.items() if k != "mask"}
        with prepared_sampler(
            model,
            self.data,
            self.loss_fn,
            batch_size=self.batch_size,
            mask=mask,
            device=self.device,
            seed=self.seed,
            **extra,
        ) as posterior:
            init, zero = posterior.init_loss, zero_weights_loss(posterior)
            gap = zero - init
            nb, _ = posterior.resolve_n_beta(self.n_beta)
            num_chains = posterior.resolve_num_chains(self.num_chains)
            common = dict(model=index, localization=gamma, init_loss=init, zero_weights_loss=zero, n_beta=nb)
            telling = math.isfinite(gap) and gap > MIN_GAP_CONTRAST * abs(init)
            limit = self.max_fraction * gap * nb  # the λ̂ at which the chains climbed too far
            try:
                step, _ = default_step_size(
                    posterior,
                    n_beta=nb,
                    localization=gamma,
                    sampler=get_kernel(self.sampler).bind(self.sampler_options),
                    seed=self.seed,
                    run_chains=num_chains,
                )
                policy = LengthPolicy(min_simulated_time=min_simulated_time(gamma), **self.policy)
                retries: list[str] = []
                for _ in range(DIVERGENCE_RETRIES + 1):
                    run, report = run_until_converged(
                        posterior,
                        kernel=bind_kernel(self.sampler, self.sampler_options, policy.first_segment),
                        n_beta=nb,
                        localization=gamma,
                        step_size=step,
                        num_chains=num_chains,
                        seed=self.seed,
                        policy=policy,
                        progress=f"γ = {gamma:g}, model {index}" if self.progress else False,
                        stop=(
                            lambda estimate: (
                                f"λ̂ = {estimate:.4g} climbed past {self.max_fraction:.0%} of the gap "
                                f"({limit:.4g})"
                                if estimate > limit
                                else None
                            )
                        )
                        if telling
                        else None,
                    )
                    if not (run.divergence_step >= 0).any():
                        break
                    # a step problem, not a verdict on γ: the pilot sized the step at w*, and the chains
                    # reached stiffer places
                    retries.append(f"chains diverged at step size {step:.3g}")
                    step /= 10
                else:
                    raise ChainDivergenceError("; ".join(retries))
            except ChainDivergenceError as exc:
                trials.append(
                    LocalizationTrial(
                        **common,
                        passed=False,
                        gap_fraction=math.nan,
                        llc=math.nan,
                        step_size=math.nan,
                        num_burnin=0,
                        num_draws=0,
                        converged=False,
                        reason=f"chains diverged: {exc}",
                    )
                )
                return False
        estimate = report.segment_estimates[-1]
        fraction = gap_climbed(estimate, nb, init, zero) if telling else math.nan
        draws = report.segment_steps[-1]
        passed = not telling or (math.isfinite(fraction) and fraction <= self.max_fraction)
        reason = (
            report.reason
            if telling
            else f"the gap L(0) - L(w*) = {gap:.3g} is too small to tell; " + report.reason
        )
        if retries:
            reason = "; ".join(retries) + f", retried at a tenth each time; {reason}"
        trials.append(
            LocalizationTrial(
                **common,
                passed=passed,
                gap_fraction=fraction,
                llc=estimate,
                step_size=report.step_size,
                num_burnin=sum(report.segment_steps) - draws,
                num_draws=draws,
                converged=report.converged,
                reason=reason,
            )
        )
        return passed
