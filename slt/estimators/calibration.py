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

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slt.estimators.diagnostics import CALIBRATION_TREND_Z, RHAT_MAX
from slt.estimators.llc import LLCSettings, summarize_run
from slt.results.base import JSONResult
from slt.results.plotting import panels
from slt.samplers import Kernel, get_kernel
from slt.sampling.driver import bind_kernel
from slt.sampling.flat import Mask
from slt.sampling.losses import LossFn
from slt.sampling.progress import progress_bar
from slt.sampling.settings import default_n_beta, validate_settings
from slt.sampling.setup import prepared_sampler
from slt.tuning import bias_indicator, default_step_size
from slt.warnings import ChainDivergenceError, ConvergenceWarning, Problem, emit

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
        Chain lengths that were long enough at the recommended step during calibration.
    llc_extrapolated : float
        Estimate extrapolated to step size 0 by a weighted linear fit over the healthy steps at the
        recommended localization no larger than twice the recommended step (NaN with fewer than two).
    llc_extrapolated_stderr : float
        Its standard error.
    table : list of dict
        One row per setting tried: ``step_size``, ``localization``, ``num_steps``, ``llc_mean``,
        ``llc_stderr``, ``rhat``, ``trend_z``, ``chains_diverged``, ``bias_estimate`` (relative
        change when the step halves, times two), ``healthy``, ``stable``, ``note``.
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

        Besides the step, localization, lengths and nβ, the sampler, its options and the batch size
        that calibration ran with, so the estimate runs the chains that were calibrated.
        """
        kwargs = {
            "step_size": self.step_size,
            "localization": self.localization,
            "num_burnin": self.num_burnin,
            "num_draws": self.num_draws,
            "n_beta": self.n_beta,
        }
        for key in ("sampler", "sampler_options", "batch_size"):
            if self.settings.get(key) is not None:
                kwargs[key] = self.settings[key]
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
    base_steps: int = 1000,
    max_steps: int = 64_000,
    check_length: bool = True,
    tolerance: float = 0.1,
    batch_size: int | None = None,
    sampler: str | Kernel = "sgld",
    sampler_options: Mapping[str, Any] | None = None,
    mask: Mask = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    chain_mode: str = "auto",
    progress: bool = True,
) -> CalibrationResult:
    """Recommend a step size, a chain length (and a localization) by running chains and measuring.

    Two stages, for each localization:

    1. **Chain length.** At a reference step (the pilot's :func:`default_step_size`, or the middle of
       ``step_sizes``), chains of ``base_steps`` steps (half burn-in, half draws) are compared with chains
       twice as long, doubling until the estimate moves by less than ``tolerance`` (plus one standard
       error), up to ``max_steps``. Chains that are too short underestimate: they have not yet spread from
       the trained weights into the flat directions of a singular model, and no within-run diagnostic
       reliably sees it (measured: 20-65% low on deep linear networks with R-hat below 1.06).
    2. **Step size.** Every step of the ladder runs for the same simulated time as the reference
       (``num_steps * step_size`` constant), so smaller steps are not penalized for mixing less. Each is
       judged by:

       a. **No divergence**: every chain keeps a finite loss.
       b. **Agreement between chains**: split R-hat of the per-draw estimates below 1.1.
       c. **Flat trace after burn-in**: the last quarter of the draws does not drift from the first
          (``|trend_z| < 4``).
       d. **Step-size stability**: halving the step moves the estimate by little. With bias linear in the
          step, twice the change is the bias of the larger step; a setting is *stable* when that bias plus
          one standard error of it is at most ``tolerance`` times the estimate (so a comparison drowned in
          noise never vouches for a step).

    The recommendation is the largest step that is healthy (a-c) and stable (d) at the smallest healthy
    localization, with the chain length used for it; if none is stable, the smallest healthy step, with a
    warning.

    Parameters
    ----------
    model, data, loss_fn, n_beta, batch_size, sampler, sampler_options, mask, seed, device, chain_mode
        As in :func:`slt.estimate_llc`.
    step_sizes : sequence of float, optional
        Steps to try. Default: a halving ladder of five steps from four times
        :func:`default_step_size` down to a quarter of it.
    localizations : sequence of float
        Localization strengths to try (each with every step size).
    num_chains : int
        Chains per setting.
    base_steps : int
        Shortest chain (burn-in plus draws) of the length check at the reference step.
    max_steps : int
        Longest chain the length check may try at the reference step.
    check_length : bool
        Run stage 1. Without it the reference step runs ``base_steps`` steps.
    tolerance : float
        Largest acceptable relative change, for both the length check and step stability.
    progress : bool
        Show a progress bar.

    Returns
    -------
    CalibrationResult
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
    if base_steps < 8:
        raise ValueError(f"base_steps must be at least 8, got {base_steps}")
    if max_steps < base_steps:
        raise ValueError(f"max_steps ({max_steps}) must be at least base_steps ({base_steps})")
    table: list[dict[str, Any]] = []
    length_converged = True
    with prepared_sampler(
        model, data, loss_fn, batch_size=batch_size, mask=mask, device=device, seed=seed
    ) as posterior:
        nb = float(n_beta) if n_beta is not None else default_n_beta(posterior.n)
        if step_sizes is None:
            reference, _ = default_step_size(
                posterior,
                n_beta=nb,
                localization=min(localizations),
                sampler=sampler,
                sampler_options=sampler_options,
                seed=seed,
            )
            steps_grid = [reference * 4 / 2**k for k in range(5)]
        else:
            steps_grid = sorted((float(s) for s in step_sizes), reverse=True)
            reference = steps_grid[len(steps_grid) // 2]

        def ladder_steps(length: int) -> int:
            return sum(max(8, round(length * reference / step)) for step in steps_grid)

        length_check_steps, k = 0, base_steps
        while check_length and k <= max_steps:
            length_check_steps, k = length_check_steps + k, 2 * k
        # the most a localization can take (the length check to max_steps, then the ladder at that length);
        # the total shrinks to what is left once a length check settles, so the ETA is an upper bound
        most_per_localization = num_chains * (length_check_steps + ladder_steps(max_steps))
        bar = progress_bar(progress, most_per_localization * len(localizations), "calibrate")

        def run(loc: float, step: float, num_steps: int, kind: str) -> dict[str, Any]:
            burn = num_steps // 2
            row = _try_setting(
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
            )
            row["kind"] = kind
            if bar is not None:
                bar.update(num_steps * num_chains)
            return row

        try:
            for loc in sorted(localizations):
                length, done = base_steps, {}
                if check_length:
                    length, rows, converged = _find_length(
                        run, loc, reference, base_steps, max_steps, tolerance
                    )
                    length_converged &= converged
                    table.extend(rows)
                    done[(reference, length)] = rows[-1]
                if bar is not None:
                    later = sorted(localizations).index(loc) + 1
                    reused = (
                        length if check_length else 0
                    )  # the reference step's rung reuses the length check
                    bar.total = (
                        bar.n
                        + num_chains * (ladder_steps(length) - reused)
                        + most_per_localization * (len(localizations) - later)
                    )
                    bar.refresh()
                for step in steps_grid:
                    num_steps = max(8, round(length * reference / step))
                    if (step, num_steps) in done:  # the length check already ran this setting
                        table.append(dict(done[(step, num_steps)], kind="step"))
                    else:
                        table.append(run(loc, step, num_steps, "step"))
        finally:
            if bar is not None:
                bar.close()
    problems = []
    if not length_converged:
        problems.append(
            Problem.of(
                ConvergenceWarning,
                f"calibrate: the estimate still moved by more than {tolerance:.0%} when the chains doubled "
                f"to max_steps={max_steps} steps at step size {reference:.3g}; the recommendation uses the "
                "longest chains tried. Raise max_steps, or expect the estimate to be biased low",
            )
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
            seed=seed,
            reference_step=reference,
            length_converged=length_converged,
        ),
    )
    result.problems = (*problems, *result.problems)
    emit(result.problems, stacklevel=2)
    return result


def _find_length(run, loc, step, base_steps, max_steps, tolerance):
    """Double the chain length at ``step`` until the estimate moves by less than ``tolerance``.

    Returns the length whose estimate agreed with the one at half the length, the rows run, and whether
    such a length was found within ``max_steps`` (a divergence stops the search without blaming the
    length: the ladder then reports the step as unhealthy).
    """
    short = run(loc, step, base_steps, "length")
    rows, length = [short], base_steps
    while 2 * length <= max_steps:
        long = run(loc, step, 2 * length, "length")
        rows.append(long)
        if short["chains_diverged"] or long["chains_diverged"]:
            long["note"] = ", ".join(filter(None, [long["note"], "length check stopped by divergence"]))
            return 2 * length, rows, True  # not a length problem: the step itself is reported unhealthy
        change = abs(long["llc_mean"] - short["llc_mean"])
        noise = math.hypot(_nz(long["llc_stderr"]), _nz(short["llc_stderr"]))
        long["bias_estimate"] = (long["llc_mean"] - short["llc_mean"]) / long["llc_mean"]
        if change + noise <= tolerance * abs(long["llc_mean"]):
            long["stable"] = True
            return 2 * length, rows, True
        short, length = long, 2 * length
    return length, rows, False


def _try_setting(posterior, n_beta, loc, step, num_chains, burn, draws, sampler, options, seed, chain_mode):
    row: dict[str, Any] = {
        "step_size": step,
        "localization": loc,
        "num_steps": burn + draws,
        "llc_mean": float("nan"),
        "llc_stderr": float("nan"),
        "rhat": float("nan"),
        "trend_z": float("nan"),
        "chains_diverged": num_chains,
        "bias_indicator": float("nan"),
        "bias_estimate": float("nan"),
        "healthy": False,
        "stable": False,
        "note": "",
    }
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
    )
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
        chain_mode=run.chain_mode,
        num_params=posterior.num_params,
        device=str(posterior.device),
        control_variate=True,
    )
    row["chains_diverged"] = int(run.diverged.sum())
    if run.diverged.any():
        row["note"] = "diverged"
        if run.diverged.all():
            return row
    result = summarize_run(run, posterior, settings, warn=False)
    d = result.diagnostics
    row.update(
        llc_mean=result.mean,
        llc_stderr=result.stderr,
        rhat=d.rhat,
        trend_z=d.trend_z,
        bias_indicator=bias_indicator(step, n_beta, run.grad_norm_sq, result.mean),
    )
    problems = []
    if run.diverged.any():
        problems.append("diverged")
    if math.isfinite(d.rhat) and d.rhat > RHAT_MAX:
        problems.append(f"R-hat {d.rhat:.2f}")
    if math.isfinite(d.trend_z) and abs(d.trend_z) > CALIBRATION_TREND_Z:
        problems.append(f"trend z {d.trend_z:.1f}")
    if result.mean <= 0:
        problems.append("estimate not positive")
    row["healthy"] = not problems
    row["note"] = ", ".join(problems)
    return row


def _mark_stability(table: list[dict[str, Any]], tolerance: float) -> None:
    ladder = [r for r in table if r.get("kind", "step") == "step"]
    for loc in {r["localization"] for r in ladder}:
        rows = sorted((r for r in ladder if r["localization"] == loc), key=lambda r: -r["step_size"])
        for big, small in itertools.pairwise(rows):
            if not (big["healthy"] and small["healthy"]):
                continue
            ratio = big["step_size"] / small["step_size"]
            factor = ratio / (ratio - 1)
            # bias linear in the step: bias(big) = (llc(big) - llc(small)) * ratio / (ratio - 1)
            bias = (big["llc_mean"] - small["llc_mean"]) * factor
            noise = factor * math.hypot(_nz(big["llc_stderr"]), _nz(small["llc_stderr"]))
            big["bias_estimate"] = bias / small["llc_mean"]
            # one-sigma upper bound on the bias: a noisy comparison cannot vouch for a step
            big["stable"] = abs(bias) + noise <= tolerance * abs(small["llc_mean"])


def _nz(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def _recommend(full_table, n_beta, tolerance, n, settings) -> CalibrationResult:
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
    lam0, lam0_se = _extrapolate([r for r in healthy if r["step_size"] <= 2 * chosen["step_size"]])
    burn = chosen["num_steps"] // 2
    return CalibrationResult(
        step_size=chosen["step_size"],
        localization=loc,
        num_burnin=burn,
        num_draws=chosen["num_steps"] - burn,
        llc_extrapolated=lam0,
        llc_extrapolated_stderr=lam0_se,
        table=full_table,
        criteria=criteria,
        n_beta=n_beta,
        settings={**settings, "n": n, "tolerance": tolerance},
        problems=tuple(problems),
    )


def _extrapolate(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Weighted least squares of llc = a + b * step over ``rows``; returns (a, stderr of a)."""
    if len(rows) < 2:
        return float("nan"), float("nan")
    x = np.array([r["step_size"] for r in rows])
    y = np.array([r["llc_mean"] for r in rows])
    se = np.array([r["llc_stderr"] for r in rows], dtype=float)
    se = np.where(np.isfinite(se) & (se > 0), se, np.nanmax(np.append(se[np.isfinite(se)], 1.0)))
    w = 1 / se**2
    design = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.pinv(design.T @ (design * w[:, None]))
    coef = cov @ design.T @ (w * y)
    return float(coef[0]), float(math.sqrt(max(cov[0, 0], 0.0)))
