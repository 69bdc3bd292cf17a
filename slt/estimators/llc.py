r"""The local learning coefficient estimator.

.. math::

    \hat\lambda(w^*) = n\beta \big( \mathbb{E}_w[L_n(w)] - L_n(w^*) \big)

with the expectation over the localized tempered posterior, approximated per chain by the mean
minibatch loss over the draws after burn-in. :math:`L_n(w^*)` is computed exactly over the full data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.stats
import torch
from torch import nn

from slt.estimators.diagnostics import RHAT_MAX, ChainDiagnostics, diagnose, import_arviz, trend_threshold
from slt.estimators.length import (
    AUTO_COMPILE_MIN_STEPS,
    DEFAULT_MAX_STEPS,
    DEFAULT_PRECISION,
    LengthPolicy,
    LengthReport,
    llc_trace,
    min_simulated_time,
    noise_at_chain_ends,
    run_until_converged,
)
from slt.estimators.wbic import WBICEstimate, wbic_from_llc
from slt.results.base import JSONResult
from slt.results.plotting import panels
from slt.results.settings import ChainSettings
from slt.samplers import Kernel, get_kernel
from slt.sampling import PosteriorSampler
from slt.sampling.checks import (
    batch_size_dependence,
    gap_climbed,
    localization_share,
    zero_weights_loss,
)
from slt.sampling.data import DEFAULT_EVAL_SAMPLES
from slt.sampling.driver import ChainRun, Observable, bind_kernel
from slt.sampling.flat import Mask
from slt.sampling.losses import LossFn
from slt.sampling.settings import (
    validate_settings,
)
from slt.sampling.setup import prepared_sampler
from slt.tuning import (
    DEFAULT_TARGET_BIAS,
    STABILITY_LIMIT,
    bias_indicator,
    default_step_size,
    minibatch_bias,
    thermostat_minibatch_bias,
    unstable_chains,
)
from slt.warnings import (
    ChainDivergenceError,
    ConvergenceWarning,
    DivergenceWarning,
    LeftBasinWarning,
    LocalizationWarning,
    LossFunctionWarning,
    NotAMinimumWarning,
    Problem,
    ShortChainWarning,
    StepSizeWarning,
    emit,
)

__all__ = [
    "estimate_llc",
    "LLCResult",
    "LLCSettings",
    "summarize_run",
    "first_order_bias",
]


@dataclass
class LLCSettings(ChainSettings):
    r"""Every setting an LLC estimate used, including those slt chose (see :class:`ChainSettings`).

    Attributes
    ----------
    n_beta : float
        Inverse temperature times sample size, nβ.
    n_beta_source : str
        ``"given"`` or ``"n/log n"``.
    n_unit : str
        What n counts: ``"samples"`` (rows of the data: sequences for token data) or ``"tokens"`` (the
        tokens the loss averages over).
    n_source : str
        ``"counted"`` (over the data) or ``"given"`` (the ``n`` argument).
    model_mode : str
        ``"eval"`` or ``"train"``: the mode of the working copy while sampling.
    control_variate : bool
        Whether each draw's loss was paired with the loss of w* on the same minibatch.
    length_source : str
        ``"given"`` (``num_draws`` set by the caller) or ``"auto"`` (run until the estimate held; see
        :mod:`slt.estimators.length`).
    simulated_time : float
        :math:`\varepsilon \cdot` steps over the whole run, burn-in included.
    converged : bool or None
        With the automatic length, whether the last two doublings agreed within the budget; ``None``
        for a given length.
    max_steps, max_seconds : int, float or None
        The budget of the automatic length.
    precision : float or None
        With the automatic length, the largest standard error relative to :math:`\hat\lambda` it accepts
        as converged; ``None`` for a given length.
    target_bias : float or None
        Predicted relative step-size bias (:func:`slt.tuning.bias_indicator`) the automatic step aimed at
        and was rechecked against; ``None`` for a given step.
    compile : str
        ``"off"``, ``"compiled"`` (from the first step: ``compile=True``, or a given length the default
        compiled), ``"compiled from step N"`` (the default ``compile=None`` switched an automatic length to
        the compiled gradient after N steps per chain) or ``"eager: <reason>"`` (compilation tried and not
        used).
    batch_size_source : str
        ``"given"``, ``"the DataLoader's"``, or the rule that sized the default batch for nβ
        (:meth:`slt.sampling.driver.PosteriorSampler.size_batch_for`).
    """

    n_beta: float
    n_beta_source: str
    n_unit: str = "samples"
    n_source: str = "counted"
    model_mode: str = "eval"
    control_variate: bool = False
    length_source: str = "given"
    simulated_time: float = float("nan")
    converged: bool | None = None
    max_steps: int | None = None
    max_seconds: float | None = None
    precision: float | None = None
    target_bias: float | None = None
    compile: str = "off"
    batch_size_source: str = "given"


@dataclass
class LLCChecks:
    r"""What slt measured besides the chains, to vouch for an estimate (NaN where not measured).

    Attributes
    ----------
    zero_weights_loss : float
        :math:`L_n` with the sampled weights set to zero (a trivial model; see
        :func:`slt.sampling.checks.zero_weights_loss`).
    batch_size_dependence : float
        Loss on a batch over the mean loss of its halves at w*: 1 for a mean per sample, 2 for a sum.
    distance : float
        Mean over healthy chains of :math:`\lVert w_T - w^*\rVert` at the last step.
    center_norm : float
        :math:`\lVert w^* \rVert` over the sampled coordinates.
    bias_indicator : float
        Predicted relative step-size bias :func:`slt.tuning.bias_indicator` over the draws.
    minibatch_noise : float
        Share of the minibatch gradient's energy that is noise, measured at the last positions of the
        chains that did not diverge (:func:`slt.sampling.checks.minibatch_gradient_noise`; 0 for
        full-batch chains).
    minibatch_bias : float
        Predicted relative bias from that noise alone, ``bias_indicator * minibatch_noise``
        (:func:`slt.tuning.minibatch_bias`) for SGLD; for SGNHT, whose one thermostat absorbs the noise
        only on average over the coordinates so that stiff directions run hot,
        :func:`slt.tuning.thermostat_minibatch_bias`; NaN for other samplers.
    free_diffusion : float
        Mean over healthy chains of :math:`\lVert w_T - w^*\rVert^2 / (d\,\varepsilon T)`: the squared
        distance the chains travelled over the one free diffusion (no drift) would reach in the same
        simulated time :math:`\varepsilon T`. Near 1 the chains still spread as if the posterior had no
        shape; once a direction of curvature :math:`h` has relaxed it contributes about
        :math:`1/(h\varepsilon T)`. SGLD only (NaN for other samplers).
    localization_share, localization_share_stderr : float
        :math:`-d\ln\hat\lambda/d\ln\gamma` measured from the draws and its standard error
        (:func:`slt.sampling.checks.localization_share`): near 0 the loss confines the chains, near 1 the
        pull towards :math:`w^*` does and :math:`\hat\lambda \propto 1/\gamma`; above 1 where the loss
        rises faster than quadratically within the pull's reach. NaN standard error with one chain.
    segment_steps, segment_estimates, segment_stderrs : list
        With the automatic length: steps per chain, :math:`\hat\lambda` and its standard error over each
        doubling segment (the last one is the draws).
    step_history : list of str
        Step-size changes made during the run (the recheck after the first segment).
    """

    zero_weights_loss: float = float("nan")
    batch_size_dependence: float = float("nan")
    distance: float = float("nan")
    center_norm: float = float("nan")
    bias_indicator: float = float("nan")
    minibatch_noise: float = float("nan")
    minibatch_bias: float = float("nan")
    free_diffusion: float = float("nan")
    localization_share: float = float("nan")
    localization_share_stderr: float = float("nan")
    segment_steps: list[int] = field(default_factory=list)
    segment_estimates: list[float] = field(default_factory=list)
    segment_stderrs: list[float] = field(default_factory=list)
    step_history: list[str] = field(default_factory=list)

    @property
    def last_change(self) -> float:
        r""":math:`\hat\lambda` of the last segment minus the one before (NaN without two segments)."""
        if len(self.segment_estimates) < 2:
            return float("nan")
        return self.segment_estimates[-1] - self.segment_estimates[-2]


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


@dataclass
class LLCResult(JSONResult):
    r"""A local learning coefficient estimate with its traces and diagnostics.

    Attributes
    ----------
    mean : float
        :math:`\hat\lambda`, the mean of the per-chain estimates over healthy chains.
    std : float
        Standard deviation of the per-chain estimates (NaN with one healthy chain).
    stderr : float
        Standard error of ``mean``: ``std / sqrt(healthy chains)``.
    per_chain : ndarray, shape (chains,)
        Per-chain estimates (NaN for chains left out: diverged, or past the stability limit).
    trace : ndarray, shape (chains, draws)
        Per-draw estimates :math:`n\beta (L_B(w_t) - L_n(w^*))`.
    loss_trace : ndarray, shape (chains, draws)
        Minibatch loss at each draw.
    burnin_loss_trace : ndarray, shape (chains, burn-in steps)
        Minibatch loss during burn-in (not used in the estimate).
    init_loss : float
        :math:`L_n(w^*)` over the full data.
    n : int
        The sample size: samples or tokens, as ``settings.n_unit`` says.
    settings : LLCSettings
        Every setting used.
    diagnostics : ChainDiagnostics
        ESS, split R-hat, trend and divergences.
    observables : dict of str to ndarray
        Per-draw observables, shape ``(chains, draws, ...)``.
    seconds : float
        Wall time of the sampling.
    problems : tuple of slt.warnings.Problem
        What the checks found wrong (each was emitted as a warning, and is again on reload); empty
        for a healthy run.
    checks : LLCChecks
        The measurements behind the checks that are not chain diagnostics.
    interval : tuple of float
        A 95% interval for the value the estimator targets, :math:`n\beta(\mathbb{E}_w L_n - L_n(w^*))`
        at this nβ, γ and data, widened by what the run measured of its own bias (see
        :func:`llc_interval`); NaN with fewer than two healthy chains.
    """

    mean: float
    std: float
    stderr: float
    per_chain: np.ndarray
    trace: np.ndarray
    loss_trace: np.ndarray
    burnin_loss_trace: np.ndarray
    init_loss: float
    n: int
    settings: LLCSettings
    diagnostics: ChainDiagnostics
    observables: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = float("nan")
    problems: tuple[Problem, ...] = ()
    checks: LLCChecks = field(default_factory=LLCChecks)
    interval: tuple[float, float] = (float("nan"), float("nan"))

    def __repr__(self) -> str:
        d = self.diagnostics
        corrected = f", corrected={self.corrected:.4g}" if self.corrected != self.mean else ""
        return (
            f"LLCResult(llc={self.mean:.4g} ± {self.stderr:.2g} (stderr){corrected}, 95% interval "
            f"[{self.interval[0]:.4g}, {self.interval[1]:.4g}], chains={len(self.per_chain)}, "
            f"diverged={int(d.diverged.sum())}, rhat={d.rhat:.3f}, ess={d.ess:.0f})"
        )

    @property
    def n_beta(self) -> float:
        """The inverse temperature times sample size used."""
        return self.settings.n_beta

    @property
    def corrected(self) -> float:
        r"""The estimate with its predicted first-order step-size bias removed: :math:`\hat\lambda / (1 + b)`.

        For SGLD with its default Leimkuhler-Matthews noise, :math:`b` is ``checks.minibatch_bias``: the
        noise scheme removes the full-gradient part of the bias, and what is left comes from the
        minibatch gradient's noise, :math:`\varepsilon\, n\beta^2\, \mathrm{tr}\,C_B / (8\hat\lambda)`
        (:func:`slt.tuning.minibatch_bias`), with the noise's share of the gradient energy measured at
        the chains' last positions. For the Euler step (``sampler_options={"leimkuhler_matthews":
        False}``) :math:`b` is ``checks.bias_indicator``, the whole first-order bias (Vollmer, Zygalakis &
        Teh 2016, JMLR 17(159)). Other samplers, an unknown :math:`b` and a non-positive estimate give
        ``mean`` (:func:`first_order_bias`). The correction lies inside :attr:`interval`, whose lower end
        allows for the same bias. It does not fix chains that have not mixed.

        Measured with the defaults against exact finite-nβ targets (``benchmarks/results/
        defaults_minibatch_nc_reg.md``, ``defaults_minibatch_dln.md``): mean absolute error 1.4% → 0.8%
        on twelve linear regressions, 3.0% → 2.8% on twelve normal crossings (:math:`w_1^2 w_2^2`: +5.0%
        on average → +2.2%; :math:`w_1^2 w_2^4`: −0.3% → −3.0%, an overshoot, worst −8.2%) and
        4.3% → 3.4% on eight deep linear networks (worst +18.2% → +10.5%, a run the budget stopped).
        Earlier, for the Euler step: 8.9% → 3.2% on eight deep-linear-network runs at n = 1e4 and
        7.1% → 2.0% on linear regressions (``defaults_batchrule*.md``). See docs/theory.md, "How long,
        and how sure".
        """
        b = first_order_bias(self.settings, self.checks)
        if not (math.isfinite(b) and b > 0 and self.mean > 0):
            return self.mean
        return self.mean / (1.0 + b)

    @property
    def wbic(self) -> WBICEstimate:
        r"""The WBIC of Watanabe (2013) from the same draws: :math:`n L_n(w^*) + (n/n\beta)\hat\lambda`.

        That is :math:`n\,\hat{\mathbb{E}}_w[L_n(w)]`, in nats when ``loss_fn`` is the mean negative log
        likelihood per sample (normalizing constants included). It is Watanabe's WBIC only at
        nβ = n/log n (the default) with ``localization=0``; otherwise a
        :class:`~slt.warnings.WBICWarning` says what the number is instead, and
        :attr:`WBICEstimate.notes` keeps it. See :mod:`slt.estimators.wbic`.

        Raises
        ------
        ValueError
            For fewer than two training samples.
        """
        return wbic_from_llc(
            llc_mean=self.mean,
            llc_stderr=self.stderr,
            llc_per_chain=self.per_chain,
            llc_interval=self.interval,
            init_loss=self.init_loss,
            n=self.n,
            n_beta=self.settings.n_beta,
            localization=self.settings.localization,
        )

    def summary(self):
        r"""One row of a pandas ``DataFrame`` with the estimate, its errors and its main settings.

        Besides the estimate and its diagnostics it shows how local the sampled posterior was:
        ``sampled_loss`` (:math:`L_n(w^*) + \hat\lambda/n\beta`, the chains' mean loss),
        ``zero_weights_loss`` (:math:`L_n` with the sampled weights set to zero), ``gap_climbed``
        (the share of the way from :math:`L_n(w^*)` to that loss the chains climbed; above 1, where
        the gap exceeds a tenth of :math:`L_n(w^*)`, it raises :class:`~slt.warnings.LeftBasinWarning`),
        ``distance`` and ``w_star_norm``
        (:math:`\lVert w_T - w^*\rVert` and :math:`\lVert w^*\rVert`), ``free_diffusion``, and
        ``localization_share`` with its standard error, :math:`-d\ln\hat\lambda/d\ln\gamma` from the draws
        (how much of the estimate the localization sets; see
        :func:`slt.sampling.checks.localization_share`).
        """
        import pandas as pd

        s, d, c = self.settings, self.diagnostics, self.checks
        row = {
            "llc_mean": self.mean,
            "llc_corrected": self.corrected,
            "llc_std": self.std,
            "llc_stderr": self.stderr,
            "llc_low": self.interval[0],
            "llc_high": self.interval[1],
            "ess": d.ess,
            "rhat": d.rhat,
            "trend_z": d.trend_z,
            "chains_diverged": int(d.diverged.sum()),
            "chains_unstable": int(np.asarray(d.unstable, dtype=bool).sum()),
            "init_loss": self.init_loss,
            "sampled_loss": self.init_loss + self.mean / s.n_beta,
            "zero_weights_loss": c.zero_weights_loss,
            "gap_climbed": gap_climbed(self.mean, s.n_beta, self.init_loss, c.zero_weights_loss),
            "distance": c.distance,
            "w_star_norm": c.center_norm,
            "free_diffusion": c.free_diffusion,
            "localization_share": c.localization_share,
            "localization_share_stderr": c.localization_share_stderr,
            "n": self.n,
            "n_unit": s.n_unit,
            "n_beta": s.n_beta,
            "localization": s.localization,
            "step_size": s.step_size,
            "sampler": s.sampler,
            "num_chains": s.num_chains,
            "num_draws": s.num_draws,
            "num_burnin": s.num_burnin,
            "simulated_time": s.simulated_time,
            "converged": s.converged,
            "seconds": self.seconds,
            "problems": "; ".join(map(str, self.problems)),
        }
        return pd.DataFrame([row])

    def to_inference_data(self):
        """An arviz ``InferenceData`` with ``llc`` and ``loss`` (and observables) in its posterior group."""
        az = import_arviz()
        posterior = {"llc": self.trace, "loss": self.loss_trace}
        for name, values in self.observables.items():
            posterior[name] = values
        return az.from_dict(posterior=posterior, attrs={"init_loss": self.init_loss, "n_beta": self.n_beta})

    def plot(self, ax=None):
        """Trace figure: loss per chain (burn-in shaded) and the running per-chain estimate.

        Returns
        -------
        matplotlib.figure.Figure
        """
        fig, axes = panels(ax, 2, figsize=(10, 3.6))
        burn = self.burnin_loss_trace.shape[1]
        every = self.settings.num_steps_bw_draws
        for c in range(self.loss_trace.shape[0]):
            color = f"C{c % 10}"
            steps = burn + every * np.arange(self.loss_trace.shape[1])
            if burn:
                axes[0].plot(np.arange(burn), self.burnin_loss_trace[c], color=color, alpha=0.35, lw=0.8)
            axes[0].plot(steps, self.loss_trace[c], color=color, lw=0.8, label=f"chain {c}")
            running = np.cumsum(self.trace[c]) / np.arange(1, self.trace.shape[1] + 1)
            axes[1].plot(steps, running, color=color, lw=1.0)
        if burn:
            axes[0].axvspan(0, burn, color="0.9", zorder=-1, label="burn-in")
        axes[0].axhline(self.init_loss, color="k", ls="--", lw=0.8, label="$L_n(w^*)$")
        axes[0].set(xlabel="step", ylabel="minibatch loss", title="loss trace")
        axes[0].legend(fontsize=7, loc="best")
        axes[1].axhline(self.mean, color="k", ls="--", lw=0.8)
        axes[1].set(
            xlabel="step",
            ylabel=r"running $\hat\lambda$",
            title=rf"$\hat\lambda$ = {self.mean:.3g} ± {self.stderr:.2g}"
            + (f" (corrected {self.corrected:.3g})" if self.corrected != self.mean else ""),
        )
        return fig


def summarize_run(
    run: ChainRun,
    sampler: PosteriorSampler,
    settings: LLCSettings,
    *,
    warn: bool = True,
    checks: LLCChecks | None = None,
) -> LLCResult:
    """Turn a :class:`~slt.sampling.ChainRun` into an :class:`LLCResult`, warning about unhealthy chains.

    ``checks`` carries what was measured before sampling (the zero-weights loss, the loss's batch-size
    dependence, and after the run the minibatch noise's share of the gradient energy); the distance the
    chains travelled, the bias indicator and, for SGLD, the minibatch share of the bias are added here.
    """
    trace = llc_trace(run, settings.n_beta, sampler.init_loss)
    unstable, own_indicators = unstable_chains(settings.step_size, settings.n_beta, run.grad_norm_sq, trace)
    diagnostics = diagnose(trace, run.divergence_step, unstable)
    healthy = diagnostics.healthy_chains
    if healthy.size == 0:
        steps = ", ".join(str(int(s)) for s in run.divergence_step)
        at_once = (
            "; every chain did so within its first few steps, which also happens when loss_fn is not "
            "finite just beside the trained weights (a log or square root of something that turns "
            "negative, a division by zero): check the loss there first"
            if ((run.divergence_step >= 0) & (run.divergence_step <= 5)).all()
            else ""
        )
        ratio = checks.batch_size_dependence if checks is not None else math.nan
        # a loss that grows with the batch (a sum) has a gradient about batch-size times too large
        summed = _batch_size_problem(ratio) if ratio > MAX_BATCH_SIZE_DEPENDENCE else None
        batch = f" ({settings.batch_size})" if settings.batch_size else ""
        raise ChainDivergenceError(
            f"all {len(run.divergence_step)} chains diverged (non-finite loss at steps {steps}) with "
            f"step_size={settings.step_size:.3g}; "
            + (
                f"first fix the loss, which is likely why: {summed}. Average over the batch "
                "(reduction='mean') instead of summing: a summed loss's gradient is about batch-size"
                f"{batch} times too large for the step"
                if summed
                else f"try a smaller step size (for example {settings.step_size / 10:.3g}) or use "
                f"slt.calibrate{at_once}"
            )
        )
    per_chain = np.full(trace.shape[0], np.nan)
    per_chain[healthy] = trace[healthy].mean(axis=1)
    mean = float(per_chain[healthy].mean())
    std = float(per_chain[healthy].std(ddof=1)) if healthy.size > 1 else float("nan")
    stderr = std / math.sqrt(healthy.size) if healthy.size > 1 else float("nan")
    checks = checks or LLCChecks()
    indicator = bias_indicator(settings.step_size, settings.n_beta, run.grad_norm_sq[healthy], mean)
    share, share_stderr = (
        localization_share(trace[healthy], run.distance_sq_trace[healthy], settings.localization, mean)
        if run.distance_sq_trace is not None
        else (float("nan"), float("nan"))
    )
    checks = dataclasses.replace(
        checks,
        distance=float((run.final_positions[healthy] - sampler.center).norm(dim=-1).mean())
        if run.final_positions.numel()
        else float("nan"),
        center_norm=float(sampler.center.norm()),
        free_diffusion=free_diffusion_fraction(run.final_positions[healthy], sampler.center, settings),
        bias_indicator=indicator,
        minibatch_bias=_minibatch_bias(settings, indicator, checks.minibatch_noise, mean),
        localization_share=share,
        localization_share_stderr=share_stderr,
    )
    problems = llc_problems(diagnostics, mean, stderr, settings, checks, sampler.init_loss, trace)
    problems = (*sampler.data.problems, *problems)  # how the data is read (a resampling loader)
    if diagnostics.unstable.any():
        problems = (_unstable_problem(diagnostics, trace, own_indicators, mean, settings), *problems)
    interval = llc_interval(
        mean, stderr, int(healthy.size), checks, trace[healthy], step_bias=first_order_bias(settings, checks)
    )
    if warn:
        emit(problems, stacklevel=3)
    return LLCResult(
        mean=mean,
        std=std,
        stderr=stderr,
        per_chain=per_chain,
        trace=trace,
        loss_trace=run.loss_trace,
        burnin_loss_trace=run.burnin_loss_trace,
        init_loss=sampler.init_loss,
        n=sampler.n,
        settings=settings,
        diagnostics=diagnostics,
        observables=run.observables,
        seconds=run.seconds,
        problems=problems,
        checks=checks,
        interval=interval,
    )


def _minibatch_bias(settings: LLCSettings, indicator: float, share: float, llc: float) -> float:
    """The predicted bias from minibatch noise alone: SGLD's, a thermostatted kernel's, or NaN."""
    gain = _noise_gain(settings)
    if gain == 1.0:
        return minibatch_bias(indicator, share)
    return thermostat_minibatch_bias(indicator, share, gain, llc, settings.num_params)


def _noise_gain(settings: LLCSettings) -> float:
    """How many times SGLD's weight the run's sampler gives the minibatch noise (NaN where not known).

    1 for SGLD; a registered kernel's ``diffusion_gain`` where it defines one (SGNHT: 2/A); NaN for
    others (the preconditioned kernel's bias was not derived).
    """
    if settings.sampler == "sgld":
        return 1.0
    try:
        kernel = get_kernel(settings.sampler)
    except (ValueError, TypeError):
        return float("nan")
    if kernel.diffusion_gain is None:
        return float("nan")
    return kernel.bind(settings.sampler_options).diffusion_gain()


def first_order_bias(settings: LLCSettings, checks: LLCChecks) -> float:
    r"""The relative first-order step-size bias predicted for this run's sampler (NaN where unknown).

    SGLD's Euler step: ``checks.bias_indicator`` (:func:`slt.tuning.bias_indicator`); SGLD with its
    default Leimkuhler-Matthews noise: ``checks.minibatch_bias``, the minibatch noise's share
    (:func:`slt.tuning.minibatch_bias`); other samplers: NaN (the first-order form was derived and
    measured for SGLD only). Results saved before the noise option existed were Euler steps.
    """
    if settings.sampler != "sgld":
        return float("nan")
    if (settings.sampler_options or {}).get("leimkuhler_matthews", False):
        return checks.minibatch_bias
    return checks.bias_indicator


def run_simulated_time(s: LLCSettings) -> float:
    r"""Simulated time :math:`\varepsilon T` of a run, burn-in included (as recorded if the step changed)."""
    if math.isfinite(s.simulated_time):
        return s.simulated_time
    return s.step_size * (s.num_burnin + s.num_draws * s.num_steps_bw_draws)


def free_diffusion_fraction(final_positions: torch.Tensor, center: torch.Tensor, s: LLCSettings) -> float:
    r"""Mean :math:`\lVert w_T - w^*\rVert^2` over free diffusion's :math:`d\,\varepsilon T` (SGLD only).

    SGLD's noise adds :math:`\varepsilon` per coordinate and step (also with the Leimkuhler-Matthews
    average, whose terms telescope), so chains no drift has acted on reach
    :math:`\mathbb{E}\lVert w_T - w^*\rVert^2 = d\,\varepsilon T`. NaN for other samplers, without
    positions, or with a zero simulated time.
    """
    tau = run_simulated_time(s)
    if s.sampler != "sgld" or not final_positions.numel() or not tau > 0:
        return float("nan")
    squared = (final_positions.double() - center.double()).pow(2).sum(dim=-1).mean()
    return float(squared / (center.numel() * tau))


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


def llc_interval(
    mean: float,
    stderr: float,
    num_healthy: int,
    checks: LLCChecks,
    trace: np.ndarray | None = None,
    step_bias: float = float("nan"),
) -> tuple[float, float]:
    r"""A 95% interval for the exact finite-nβ target, widened by the bias the run measured.

    Three parts, added:

    - sampling error: Student's t quantile with (chains - 1) degrees of freedom times ``stderr``
      (3.18 standard errors with four chains, not 1.96: the spread of four chain means is itself uncertain);
    - non-stationarity: the change of :math:`\hat\lambda` over the last doubling of the run
      (``checks.segment_estimates``) or, for a given length, between the halves of the draws (``trace``,
      shape (healthy chains, draws)); a rise widens the interval upwards (the chains were still spreading
      from :math:`w^*`), a fall downwards;
    - step size: the predicted relative discretization bias times :math:`\hat\lambda` widens it
      downwards (a finite step inflates the estimate): ``step_bias`` where finite
      (:func:`first_order_bias`: the minibatch share ``checks.minibatch_bias`` for SGLD's default
      Leimkuhler-Matthews noise, the whole ``checks.bias_indicator`` for the Euler step, where DESIGN §9
      measured +5 to +7% at a 5% prediction), else ``checks.bias_indicator``, an upper bound. On the 32
      default runs of ``benchmarks/results/defaults_minibatch_*.md`` the minibatch share narrowed the
      intervals from 22.6% to 19.2% of the exact target on average and they covered it as often (31 of
      32; the miss is a run the budget stopped, with its ``ConvergenceWarning``).

    Returns ``(nan, nan)`` with fewer than two healthy chains.
    """
    from scipy.stats import t as student_t

    if num_healthy < 2 or not math.isfinite(stderr):
        return float("nan"), float("nan")
    half_width = float(student_t.ppf(0.975, num_healthy - 1)) * stderr
    change = checks.last_change
    if not math.isfinite(change) and trace is not None and trace.ndim == 2 and trace.shape[1] >= 8:
        half = trace.shape[1] // 2
        change = float(trace[:, half:].mean() - trace[:, :half].mean())
    change = change if math.isfinite(change) else 0.0
    fraction = step_bias if math.isfinite(step_bias) else checks.bias_indicator
    widening = fraction * mean if math.isfinite(fraction) and mean > 0 else 0.0
    low = mean - half_width - max(widening, 0.0) - max(-change, 0.0)
    high = mean + half_width + max(change, 0.0)
    return float(low), float(high)


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
    (:class:`~slt.warnings.ShortChainWarning`).
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
    gain = _noise_gain(s)
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


def _compile_record(status: str, report: LengthReport | None) -> str:
    """``settings.compile``: the run's compile status, with the step a long automatic run switched at."""
    if report is not None and report.compiled_from is not None and status == "compiled":
        return f"compiled from step {report.compiled_from}"
    return status


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
    scaled = _batch_size_problem(ratio)
    if scaled:
        fix = "instead of summing" if ratio > 1 else "and divide by the batch size only once"
        problems.append(
            Problem.of(
                LossFunctionWarning,
                f"{scaled}, and λ̂ scales with the error. Average over the batch (reduction='mean') {fix}",
            )
        )
    return problems


def _batch_size_problem(ratio: float) -> str | None:
    """What is wrong with a loss whose value on a batch is ``ratio`` × the mean over its halves, or None."""
    if not (math.isfinite(ratio) and not 1 / MAX_BATCH_SIZE_DEPENDENCE < ratio < MAX_BATCH_SIZE_DEPENDENCE):
        return None
    trend = "grows" if ratio > 1 else "shrinks"
    return (
        f"loss_fn {trend} with the batch size (on a batch it is {ratio:.3g}× the mean over its two halves): "
        "slt needs the mean loss per sample"
    )


def estimate_llc(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: str | LossFn | None = None,
    n: int | None = None,
    n_unit: str = "auto",
    eval_samples: int = DEFAULT_EVAL_SAMPLES,
    model_mode: str = "eval",
    n_beta: float | None = None,
    localization: float = 1.0,
    step_size: float | None = None,
    num_chains: int | None = None,
    num_draws: int | None = None,
    num_burnin: int | None = None,
    num_steps_bw_draws: int = 1,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    max_seconds: float | None = None,
    precision: float = DEFAULT_PRECISION,
    target_bias: float = DEFAULT_TARGET_BIAS,
    batch_size: int | None = None,
    sampler: str | Kernel = "sgld",
    sampler_options: Mapping[str, Any] | None = None,
    mask: Mask = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    chain_mode: str = "auto",
    compile: bool | None = None,
    observables: Mapping[str, Observable] | None = None,
    control_variate: bool = True,
    progress: bool = True,
) -> LLCResult:
    r"""Estimate the local learning coefficient of ``model`` at its current weights.

    Parameters
    ----------
    model : nn.Module
        The trained model; its weights are :math:`w^*`. It is copied and left exactly as it was
        (weights, gradients, train/eval mode, ``requires_grad``), as are the global RNG states.
    data : tuple or dict of Tensor, Dataset, IterableDataset or DataLoader
        Training data. In-memory tensors are fastest; a dict (a tokenizer's ``BatchEncoding`` of
        ``input_ids``, ``attention_mask``, ``labels``) gives dict batches. Floating-point data is cast to
        the model's dtype, integer data (token ids, labels) is left as it is. A stream
        (``IterableDataset``, e.g. a streaming Hugging Face dataset) needs ``n``. The minibatches of a
        dataset, or of a ``DataLoader`` with its default sampler (its batch size kept), hold samples drawn
        independently from all of it (see :class:`slt.sampling.data.LoaderData`).
    loss_fn : str, callable or None
        ``"mse"``, ``"cross_entropy"`` or ``loss_fn(model, batch)`` returning the scalar mean loss, a
        dict with ``"loss"`` or an output with ``.loss`` (a Hugging Face ``ModelOutput``). ``None`` (the
        default) uses the loss the model computes itself: ``model(**batch).loss`` for dict batches,
        ``model(*batch)`` for tuples (for Hugging Face models, the batch must hold ``labels``). The mean
        negative log-likelihood per sample (or per token) is what the theory assumes.
    n : int, optional
        The sample size, in ``n_unit``; default: counted over the data. Required for a stream.
    n_unit : {"auto", "samples", "tokens"}
        What n counts. ``"samples"``: rows of the data (sequences); ``"tokens"``: the tokens the loss
        averages over (``labels`` other than -100, without each sequence's first for causal language
        models; else the attention mask). ``"auto"`` counts tokens for token data (dict batches with
        ``input_ids``, or integer ``(sequences, positions)`` ids alone or with labels of their shape;
        ids alone, or labels equal to them, lose each sequence's first) and samples otherwise: n·L_n is then
        the negative log-likelihood of the data, as the tempered posterior needs (see the docs page on n
        for sequence data). Recorded in ``settings.n_unit``.
    eval_samples : int
        For a stream only: the samples read to evaluate L_n(w*) (finite data is read whole).
    model_mode : {"eval", "train"}
        The mode of the working copy while sampling. ``"eval"`` (default): dropout off and batch-norm
        statistics frozen, so L_n(w) is a deterministic function of w, as the theory defines it.
        ``"train"``: dropout on (devinterp's choice), L_n(w*) and the control variate in train mode too;
        chains then run sequentially. The caller's model keeps its modes either way.
    n_beta : float, optional
        Inverse temperature times sample size; default ``n / log n``.
    localization : float
        Strength :math:`\gamma` of the pull towards :math:`w^*`.
    step_size : float, optional
        Sampler step size. By default chosen from the curvature of the loss at :math:`w^*` (see
        :func:`slt.tuning.default_step_size`); :func:`slt.calibrate` chooses more carefully.
    num_chains : int, optional
        Independent chains, all started at :math:`w^*`. Default 4, or 16 for a tiny model whose chains
        run stacked (parameters times batch size at most
        :data:`~slt.sampling.driver.MANY_CHAINS_MAX_WORK`), where 16 cost about what 4 do one after
        another (:meth:`~slt.sampling.PosteriorSampler.resolve_num_chains`); recorded in
        ``settings.num_chains``.
    num_draws : int, optional
        Draws per chain that enter the estimate. By default (``None``) the length is automatic: the
        chains run in doubling segments until the estimate over the last segment agrees with the one
        before (within 5% plus two standard errors), the last segment giving the draws and the rest
        burn-in, once the standard error is within 5% of the estimate and the simulated time
        :math:`\varepsilon T` has reached :math:`0.5/\max(\gamma, 1)` (see :mod:`slt.estimators.length`);
        a budget stops it with a warning.
    num_burnin : int, optional
        With ``num_draws``: steps discarded at the start of each chain (default
        ``num_draws * num_steps_bw_draws``). Not allowed with the automatic length.
    num_steps_bw_draws : int
        Sampler steps per recorded draw.
    max_steps : int or None
        Budget of steps per chain for the automatic length (``None``: unlimited).
    max_seconds : float or None
        Budget of wall time for the chains of the automatic length (``None``: unlimited).
    precision : float
        Largest standard error of :math:`\hat\lambda` across chains, relative to it, that the automatic
        length accepts as converged (default 5%). Halving it costs about four times the draws.
    target_bias : float
        Relative step-size bias the automatic step aims at, as predicted by
        :func:`slt.tuning.bias_indicator` (default 5%; an upper bound, reached on normal crossings).
        Halving it halves the step and about doubles the steps the run needs: on the normal crossing
        :math:`w_1^2 w_2^2` (n = 10,000) 2.5% moved the mean error over four seeds against the exact
        target from +4.9% to 0.0% (``benchmarks/results/defaults_target_bias_nc.md``). Ignored with a
        given ``step_size``.
    batch_size : int, optional
        Minibatch size; not allowed with a ``DataLoader``. By default the whole data when n is at most
        the cap (4096 samples and 2^20 / the work per sample: the parameters, or half the forward pass's
        FLOPs when more, as for convolutions), otherwise sized for nβ: at least 256, up to nβ
        samples and the cap, since minibatch noise in the step grows as nβ / batch (see
        :meth:`~slt.sampling.driver.PosteriorSampler.size_batch_for`); recorded in
        ``settings.batch_size_source``.
    sampler : {"sgld", "rmsprop_sgld", "sgnht"}, any registered name, or Kernel
        The kernel; see :mod:`slt.samplers` and :func:`slt.samplers.register_kernel`.
    sampler_options : dict, optional
        The kernel's options (``alpha``, ``delta``, ``adapt_steps`` of ``"rmsprop_sgld"``, ``diffusion``
        of ``"sgnht"``); an unknown name raises. A kernel that adapts (RMSProp-SGLD) stops adapting at
        the end of burn-in unless told otherwise, which keeps the draws from a fixed kernel.
    mask : list of str or dict of str to bool Tensor, optional
        Sample only these parameters (names or module prefixes) or entries: the weight-restricted LLC.
    seed : int
        Seed of every random choice; the same seed gives the same numbers on the same machine.
    device : torch.device or str, optional
        Where to sample; default the model's device.
    chain_mode : {"auto", "sequential", "vectorized"}
        Run chains one after another or batched with ``torch.func.vmap``; ``"auto"`` picks the faster
        for the model size and device.
    compile : bool or None
        Run the loss and its gradient through ``torch.compile`` (see :mod:`slt.sampling.compiled`). It
        costs seconds of compilation once per architecture and process (tens of seconds for the first),
        then runs each step in 0.2-0.9x the eager time on small networks (``benchmarks/bench_compile.py``):
        worth it for long runs and sweeps, which reuse the compiled function across checkpoints. The
        compiled gradient is checked against the eager one at its first call; where compilation fails or
        disagrees, the chains run eagerly and ``settings.compile`` says why. ``True`` compiles from the
        first step, ``False`` never. ``None`` (the default) compiles only what is long and gains most: from
        :data:`~slt.estimators.length.AUTO_COMPILE_MIN_STEPS` steps per chain on (the automatic length's
        first segment that long; a given length that long as a whole), where compiled chains would run
        stacked (:meth:`slt.sampling.PosteriorSampler.compile_pays`); ``settings.compile`` then reads
        ``"compiled from step N"`` (an automatic length) or ``"compiled"`` (a given length). The rule
        counts steps, not seconds, so a seed gives the same run.
    observables : dict of str to callable, optional
        ``fn(model)`` evaluated on the sampled model at every draw, returning a number, tensor or numeric
        array of a fixed shape; stored in ``result.observables`` as ``(chains, draws, ...)``. Each is
        evaluated once at :math:`w^*` before sampling, so a bad one fails at once, by name.
        :class:`slt.sampling.PerSampleLoss` records per-sample losses on a probe set (for :func:`slt.bif`).
    control_variate : bool
        Subtract the loss of :math:`w^*` *on the same minibatch* at each draw instead of
        :math:`L_n(w^*)`. Both are unbiased; the paired difference cancels the minibatch-to-minibatch
        noise of the loss, which otherwise dominates the variance (it is multiplied by
        :math:`n\beta`). Costs one forward pass per draw.
    progress : bool
        Show a progress bar.

    Returns
    -------
    LLCResult

    Raises
    ------
    ValueError
        On empty data, a non-scalar or non-finite loss at :math:`w^*`, an output without a loss, a
        model without trainable parameters, an empty mask, a device this process cannot use, a stream
        without ``n``, out-of-range settings, or an observable that raises at :math:`w^*`.
    TypeError
        For an observable that is not callable or returns something other than numbers (a dict, ...).
    slt.warnings.ChainDivergenceError
        When every chain diverges.
    """
    validate_settings(
        n_beta=n_beta,
        localization=localization,
        step_size=step_size,
        precision=precision,
        target_bias=target_bias,
        num_chains=num_chains,
        num_draws=num_draws,
        num_burnin=num_burnin,
        num_steps_bw_draws=num_steps_bw_draws,
    )
    auto_length = num_draws is None
    if auto_length:
        if num_burnin is not None:
            raise ValueError("num_burnin goes with num_draws; leave both None for the automatic length")
        policy = LengthPolicy(
            max_steps=max_steps,
            max_seconds=max_seconds,
            min_simulated_time=min_simulated_time(localization),
            precision=precision,
        )
        num_burnin = policy.first_segment
    elif num_burnin is None:
        num_burnin = num_draws * num_steps_bw_draws
    kernel = bind_kernel(sampler, sampler_options, num_burnin)
    report = None
    with prepared_sampler(
        model,
        data,
        loss_fn,
        batch_size=batch_size,
        mask=mask,
        device=device,
        seed=seed,
        n=n,
        n_unit=n_unit,
        eval_samples=eval_samples,
        model_mode=model_mode,
        compile=bool(compile),
    ) as posterior:
        checks = LLCChecks(
            zero_weights_loss=zero_weights_loss(posterior),
            batch_size_dependence=batch_size_dependence(posterior),
        )
        n_beta_value, n_beta_source = posterior.resolve_n_beta(n_beta)
        num_chains = posterior.resolve_num_chains(num_chains, chain_mode)
        if step_size is None:
            # the pilot adapts throughout (it is short), with the user's other options
            step_size, step_size_source = default_step_size(
                posterior,
                n_beta=n_beta_value,
                localization=localization,
                sampler=get_kernel(sampler).bind(sampler_options),
                seed=seed,
                target_bias=target_bias,
                run_chains=num_chains,
            )
        else:
            step_size_source = "given"
        if auto_length:
            run, report = run_until_converged(
                posterior,
                kernel=kernel,
                n_beta=n_beta_value,
                localization=localization,
                step_size=step_size,
                num_chains=num_chains,
                seed=seed,
                policy=policy,
                num_steps_bw_draws=num_steps_bw_draws,
                chain_mode=chain_mode,
                observables=observables,
                control_variate=control_variate,
                recheck_step=step_size_source != "given",
                target_bias=target_bias,
                progress="LLC" if progress else False,
                compile_from=AUTO_COMPILE_MIN_STEPS if compile is None else None,
            )
            if report.step_history:
                step_size_source += "; rechecked: " + "; ".join(report.step_history)
            step_size = report.step_size
            num_draws = run.loss_trace.shape[1]
            num_burnin = sum(report.segment_steps) - num_draws * num_steps_bw_draws
        else:
            total = num_burnin + num_draws * num_steps_bw_draws
            long_run = compile is None and total >= AUTO_COMPILE_MIN_STEPS
            if long_run and posterior.compile_pays(num_chains, chain_mode):
                posterior.enable_compile()
            run = posterior.run(
                n_beta=n_beta_value,
                localization=localization,
                step_size=step_size,
                sampler=kernel,
                num_chains=num_chains,
                num_draws=num_draws,
                num_burnin=num_burnin,
                num_steps_bw_draws=num_steps_bw_draws,
                seed=seed,
                chain_mode=chain_mode,
                observables=observables,
                control_variate=control_variate,
                record_grad_norm=True,
                progress="LLC" if progress else False,
            )
        checks = dataclasses.replace(checks, minibatch_noise=noise_at_chain_ends(posterior, run, seed=seed))
    settings = LLCSettings(
        n_beta=n_beta_value,
        n_beta_source=n_beta_source,
        n_unit=posterior.n_unit,
        n_source=posterior.n_source,
        model_mode=model_mode,
        localization=float(localization),
        step_size=float(step_size),
        step_size_source=step_size_source,
        sampler=kernel.name,
        sampler_options=kernel.settings(),
        num_chains=num_chains,
        num_draws=num_draws,
        num_burnin=num_burnin,
        num_steps_bw_draws=num_steps_bw_draws,
        batch_size=posterior.batch_size,
        batch_size_source=posterior.batch_size_source,
        seed=seed,
        chain_mode=run.chain_mode,
        num_params=posterior.num_params,
        device=str(posterior.device),
        compile=_compile_record(run.compile, report),
        control_variate=control_variate,
        length_source="auto" if auto_length else "given",
        simulated_time=report.simulated_time
        if report
        else step_size * (num_burnin + num_draws * num_steps_bw_draws),
        converged=report.converged if report else None,
        max_steps=max_steps if auto_length else None,
        max_seconds=max_seconds if auto_length else None,
        precision=precision if auto_length else None,
        target_bias=float(target_bias) if step_size_source != "given" else None,
    )
    if report is not None:
        checks = dataclasses.replace(
            checks,
            segment_steps=report.segment_steps,
            segment_estimates=report.segment_estimates,
            segment_stderrs=report.segment_stderrs,
            step_history=report.step_history,
        )
    return summarize_run(run, posterior, settings, checks=checks)
