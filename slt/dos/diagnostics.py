"""Health checks of a density-of-states estimate: pure functions returning :class:`slt.warnings.Problem`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from slt.dos.analysis import MAX_FIT_T, MIN_OVERLAP, analyze
from slt.warnings import (
    ChainDivergenceError,
    ConvergenceWarning,
    DivergenceWarning,
    FitWarning,
    NotAMinimumWarning,
    OverlapWarning,
    Problem,
)

__all__ = ["OverlapWarning", "FitWarning", "result_problems", "divergence_problems", "MIN_ROUND_TRIPS"]

#: Fit windows narrower than this many decades of t cannot separate λ from m.
MIN_FIT_DECADES = 2.0
#: Neighbouring rungs of a geometric ladder overlap when :math:`\ln(x_{k+1}/x_k)\sqrt{\lambda}` is at
#: most about this (the energy at rung :math:`x` has mean :math:`\lambda/x` and spread
#: :math:`\sqrt{\lambda}/x`). Measured on a 243-parameter ReLU classifier near zero cross-entropy
#: (:math:`x E_x[t]` from about 17 at the hottest rung to 50-70 at the coldest): 12 rungs over
#: :math:`n\beta/30` to :math:`30\,n\beta` (1.86 between rungs, 5.2 in these units at 70) overlapped
#: 0.004-0.016; 40 rungs (1.19, 1.5) all passed :data:`MIN_OVERLAP`.
OVERLAP_SPACING = 1.5
#: Median replica round trips (hottest -> coldest -> hottest rung) below which a warning is raised.
MIN_ROUND_TRIPS = 1


def divergence_problems(
    diverged: np.ndarray, temperatures: np.ndarray, step_sizes: np.ndarray
) -> tuple[Problem, ...]:
    """The problem of some diverged chains (empty when none did).

    Raises
    ------
    slt.warnings.ChainDivergenceError
        When every chain of a rung diverged.
    """
    for k in range(diverged.shape[0]):
        if diverged[k].all():
            raise ChainDivergenceError(
                f"all {diverged.shape[1]} chains of the rung at temperature {temperatures[k]:.4g} diverged "
                f"with step size {step_sizes[k]:.3g}; pass a smaller step_size (for example "
                f"{step_sizes[k] / 10:.3g} at that rung) or use sampler='mala'"
            )
    if not diverged.any():
        return ()
    rungs = ", ".join(f"{temperatures[k]:.4g}" for k in np.flatnonzero(diverged.any(1)))
    return (
        Problem.of(
            DivergenceWarning,
            f"{int(diverged.sum())} of {diverged.size} chains diverged (rungs at temperatures {rungs}); "
            "their draws after the divergence are left out. A smaller step size usually helps.",
        ),
    )


def result_problems(result: Any, unresolved: str = "") -> tuple[Problem, ...]:
    """Thin overlap between rungs, few replica round trips, samples below the trained loss, a failed fit.

    ``result`` is a :class:`slt.DOSResult`; each problem names what to change. ``unresolved``, the second
    value of :func:`analyze_with_form`, puts first the warning that the power form stands in for the log
    form, and why.
    """
    problems = [power_fallback_problem(unresolved, result)] if unresolved else []
    x = result.temperatures
    if len(x) > 1:
        overlap = result.neighbour_overlap
        poor = np.flatnonzero(overlap < MIN_OVERLAP)
        if poor.size:
            pairs = ", ".join(f"{x[k]:.4g}-{x[k + 1]:.4g} ({overlap[k]:.3g})" for k in poor)
            problems.append(
                Problem.of(
                    OverlapWarning,
                    "neighbouring rungs overlap too little for reweighting to be trusted "
                    f"(overlap < {MIN_OVERLAP}): {pairs}. Add rungs between them (temperatures=... or "
                    f"a larger num_rungs{_rungs_needed(result)}), or run longer chains; the curve between "
                    "those temperatures may be off by a constant.",
                )
            )
    trips = result.round_trips
    if np.isfinite(trips).any() and np.median(trips) < MIN_ROUND_TRIPS:
        problems.append(
            Problem.of(
                ConvergenceWarning,
                f"replicas made a median of {np.median(trips):g} round trips between the hottest and the "
                f"coldest rung (fewer than {MIN_ROUND_TRIPS}): the cold rungs may still remember their start "
                "at the trained weights, which biases the small-t end of the curve. Raise num_burnin and "
                "num_draws, or use fewer rungs.",
            )
        )
    below = result.rung_llc < -2 * np.nan_to_num(result.rung_llc_stderr, nan=0.0)
    if below.any():
        where = ", ".join(f"{x[k]:.4g}" for k in np.flatnonzero(below))
        problems.append(
            Problem.of(
                NotAMinimumWarning,
                "the chains found lower loss than the trained weights on average (x E_x[t] < 0 at "
                f"temperatures {where}; {result.nonpositive_share:.0%} of all draws have t <= 0): they are "
                "not a local minimum, and the curve covers only t > 0. Train longer or raise localization.",
            )
        )
    lo, hi = result.fit_window
    if not math.isfinite(result.llc):
        problems.append(
            Problem.of(
                FitWarning,
                f"too few populated bins in the fit window [{lo:.3g}, {hi:.3g}] to fit "
                f"{result.fit_form!r}; pass fit_window=(t_low, t_high) covering the curve (see result.t and "
                f"result.bin_counts), colder temperatures, or more draws{_log_form_out_of_reach(result)}",
            )
        )
    elif result.fit_form != "power" and (
        failure := _separation_failure(result.fit_window, result.multiplicity_stderr)
    ):
        problems.append(
            Problem.of(
                FitWarning,
                f"the fit window {failure} "
                f"(m = {result.multiplicity:.2f} ± {result.multiplicity_stderr:.2g}); extend the "
                "ladder to colder temperatures so that the curve reaches smaller t, or refit with "
                "fit_form='power' if m = 1 is expected (result.refit(fit_form='power'))",
            )
        )
    return tuple(problems)


def _separation_failure(window: tuple[float, float], multiplicity_stderr: float) -> str:
    """How a log-form window fails to tell λ from m (empty when it does not fail).

    Fewer than :data:`MIN_FIT_DECADES` decades of t, or a bootstrap standard error of m above 1 (not
    judged without a bootstrap, ``num_bootstrap=0``).
    """
    lo, hi = window
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    if decades < MIN_FIT_DECADES:
        return f"[{lo:.3g}, {hi:.3g}] spans {decades:.1f} decades of t, too few to tell λ from m"
    if multiplicity_stderr > 1:
        return f"[{lo:.3g}, {hi:.3g}] spans {decades:.1f} decades of t, yet leaves m undetermined"
    return ""


def log_form_unresolved(analysis: Any) -> str:
    """Why a ``"log"``-form analysis cannot be reported (empty when it can): no fit, or λ and m not separated.

    The conditions of the ``FitWarning`` of :func:`result_problems`.
    """
    lo, hi = analysis.fit_window
    fit = analysis.fit
    if not math.isfinite(fit.llc):
        return f"too few populated bins in its window [{lo:.3g}, {hi:.3g}] to fit it"
    failure = _separation_failure(analysis.fit_window, analysis.multiplicity_stderr)
    if failure:
        return (
            f"its window {failure} (it read λ = {fit.llc:.4g} ± {analysis.llc_stderr:.2g}, m = "
            f"{fit.multiplicity:.3g} ± {analysis.multiplicity_stderr:.2g})"
        )
    return ""


def analyze_with_form(
    samples: np.ndarray,
    temperatures: np.ndarray,
    fit_form: str,
    fit_window: tuple[float, float] | None,
    **options: Any,
) -> tuple[Any, str]:
    """:func:`slt.dos.analysis.analyze` with ``fit_form`` ``"auto"`` resolved; (analysis, why not log).

    ``"auto"``: the ``"log"`` form where :func:`log_form_unresolved` finds nothing wrong with it, else the
    ``"power"`` form where that one fits (the second value says why the log form was not reported; the
    caller turns it into a warning with :func:`power_fallback_problem`). A given window reaching t = 1,
    where only the power form holds, takes the power form. Other forms are analyzed as given, with ``""``.
    """

    def analyzed(form: str) -> Any:
        return analyze(samples, temperatures, fit_window=fit_window, fit_form=form, **options)

    if fit_form != "auto":
        return analyzed(fit_form), ""
    if fit_window is not None and fit_window[1] >= 1:
        return analyzed("power"), ""
    log = analyzed("log")
    unresolved = log_form_unresolved(log)
    if not unresolved:
        return log, ""
    power = analyzed("power")
    if not math.isfinite(power.fit.llc):  # the log form's own warning says what to change
        return log, ""
    return power, unresolved


def power_fallback_problem(unresolved: str, result: Any) -> Problem:
    """The ``FitWarning`` of ``fit_form="auto"`` reporting the power form: why, and how to get λ and m."""
    lo, hi = result.fit_window
    return Problem.of(
        FitWarning,
        f"the 'log' form (λ with its multiplicity m) could not be read from this ladder: {unresolved}. "
        f"Reported instead: the 'power' form's local slope over t in [{lo:.3g}, {hi:.3g}], λ = "
        f"{result.llc:.4g} ± {result.llc_stderr:.2g} with m = 1 assumed. To separate λ from m, rerun "
        f"estimate_dos with colder temperatures, so that the curve reaches t two decades below "
        f"{MAX_FIT_T:g}{_colder_ladder(result)} ('auto' then reports the log form), or pass fit_form='log' "
        "to insist on it here",
    )


def _coldest_rung(result: Any) -> tuple[float, float] | None:
    """(x, x·E_x[t]) of the coldest rung, or ``None`` where that rung's estimate is not positive."""
    x = np.asarray(result.temperatures, dtype=float)
    if not x.size:
        return None
    coldest = int(np.argmax(x))
    coldest_llc = float(np.asarray(result.rung_llc, dtype=float)[coldest])
    if not (x[coldest] > 0 and math.isfinite(coldest_llc) and coldest_llc > 0):
        return None
    return float(x[coldest]), coldest_llc


#: The t the log form's window should reach: :data:`MIN_FIT_DECADES` decades below its cap.
LOG_FORM_TARGET_T = MAX_FIT_T / 10**MIN_FIT_DECADES


def _colder_ladder(result: Any) -> str:
    """``": the coldest rung ... takes x ≈ N"``: the x at which t reaches :data:`LOG_FORM_TARGET_T`."""
    coldest = _coldest_rung(result)
    if coldest is None:
        return ""
    x, llc = coldest
    return (
        f": the coldest rung (x = {x:.4g}) samples t ≈ {llc / x:.3g}, and since t ≈ x·E[t]/x ≈ "
        f"{llc:.3g}/x, reaching t = {LOG_FORM_TARGET_T:g} takes x ≈ {llc / LOG_FORM_TARGET_T:.3g}"
    )


def _rungs_needed(result: Any) -> str:
    r"""``"; about N rungs over this span"`` from the rungs' :math:`x E_x[t]` (empty when unknown).

    Each gap between neighbours is split so that :math:`\ln(x_{k+1}/x_k)\sqrt{\lambda}` stays within
    :data:`OVERLAP_SPACING`, with :math:`\lambda` the larger :math:`x E_x[t]` of the pair (it grows toward
    the cold end, where rungs must be densest).
    """
    x = np.asarray(result.temperatures, dtype=float)
    llc = np.asarray(result.rung_llc, dtype=float)
    positive = (x > 0) & np.isfinite(llc) & (llc > 0)
    if positive.sum() < 2:
        return ""
    xs, lams = x[positive], llc[positive]
    order = np.argsort(xs)
    xs, lams = xs[order], lams[order]
    pair_lam = np.maximum(lams[:-1], lams[1:])
    gaps = np.log(xs[1:] / xs[:-1]) * np.sqrt(pair_lam) / OVERLAP_SPACING
    rungs = int(np.ceil(gaps - 1e-9).clip(min=1).sum()) + 1
    if rungs <= len(x):
        return ""
    top = float(pair_lam.max())
    return (
        f"; the rungs' x·E[t] runs from {float(lams.min()):.3g} to {float(lams.max()):.3g}, and rungs "
        f"overlap when neighbours differ by a factor of about exp({OVERLAP_SPACING}/√(x·E[t])), "
        f"{math.exp(OVERLAP_SPACING / math.sqrt(top)):.3g} where it is largest: about {rungs} rungs over "
        "this span, densest there, or a narrower span"
    )


def _log_form_out_of_reach(result: Any) -> str:
    """Why a ``"log"`` form found no window: the coldest rung never samples t far below 1e-2."""
    coldest = _coldest_rung(result) if result.fit_form != "power" else None
    if coldest is None:
        return ""
    x, llc = coldest
    coldest_t = llc / x
    if not coldest_t > LOG_FORM_TARGET_T:
        return ""
    where = "above" if coldest_t > MAX_FIT_T else f"less than {MIN_FIT_DECADES:g} decades below"
    return (
        f". The coldest rung (x = {x:.4g}) samples t ≈ {coldest_t:.3g} on average, {where} the "
        f"{MAX_FIT_T:g} under which the {result.fit_form!r} form's ln(-ln t) term holds: since "
        f"t ≈ x·E[t]/x ≈ {llc:.3g}/x, reaching t = {LOG_FORM_TARGET_T:g} takes x ≈ "
        f"{llc / LOG_FORM_TARGET_T:.3g}. For the local slope at the t this ladder samples, refit with "
        "fit_form='power' (result.refit(fit_form='power'))"
    )
