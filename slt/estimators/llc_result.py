r"""What an LLC estimate returns: its settings, the checks slt measured besides the chains, and the result.

:class:`LLCResult` carries the estimate :math:`\hat\lambda`, its traces, interval and diagnostics;
:class:`LLCSettings` every setting the run used; :class:`LLCChecks` the measurements that vouch for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from slt.estimators.diagnostics import ChainDiagnostics, import_arviz
from slt.estimators.wbic import WBICEstimate, wbic_from_llc
from slt.results.base import JSONResult
from slt.results.plotting import panels
from slt.results.settings import ChainSettings
from slt.samplers import get_kernel
from slt.sampling.checks import gap_climbed
from slt.warnings import Problem

__all__ = ["LLCSettings", "LLCChecks", "LLCResult", "first_order_bias", "noise_gain", "run_simulated_time"]


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


def noise_gain(settings: LLCSettings) -> float:
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


def run_simulated_time(s: LLCSettings) -> float:
    r"""Simulated time :math:`\varepsilon T` of a run, burn-in included (as recorded if the step changed)."""
    if math.isfinite(s.simulated_time):
        return s.simulated_time
    return s.step_size * (s.num_burnin + s.num_draws * s.num_steps_bw_draws)
