"""The density-of-states result: curve, bands, cumulative volume, fit, per-rung table, plots, JSON."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np

from slt.dos.analysis import DOSAnalysis, design_matrix
from slt.dos.diagnostics import analyze_with_form, result_problems
from slt.results.base import JSONResult
from slt.results.plotting import panels
from slt.results.settings import ChainSettings
from slt.warnings import DivergenceWarning, Problem, emit

__all__ = ["DOSResult", "DOSSettings"]


@dataclass
class DOSSettings(ChainSettings):
    """Every setting a density-of-states estimate used, including those slt chose.

    Besides :class:`~slt.results.settings.ChainSettings`: how the ladder of inverse temperatures was
    chosen and its reference rung, whether :math:`t` used exact full-data losses, replica swaps and
    step adaptation (MALA), the binning and fit of the analysis, and ``compile`` (``"off"``,
    ``"compiled"`` or ``"eager: <reason>"``).
    """

    temperatures_source: str
    reference_temperature: float
    exact_loss: bool
    swaps: bool
    adapt_step_size: bool
    bins_per_decade: int
    fit_form: str
    min_count: int
    num_bootstrap: int
    compile: str = "off"


@dataclass
class DOSResult(JSONResult):
    r"""A density-of-states curve :math:`\hat v(t)` of :math:`t = L_n(w) - L_n(w^*)` near the trained weights.

    :math:`v(t) = \int \delta(t - [L_n(w) - L_n(w^*)])\, \varphi(w)\, dw` with :math:`\varphi` the Gaussian
    localizer :math:`N(w^*, I/\gamma)`. As :math:`t \to 0`,
    :math:`v(t) \approx c\, t^{\lambda - 1} (-\ln t)^{m - 1}`.

    Attributes
    ----------
    t : ndarray, shape (bins,)
        Geometric centres of the log-spaced bins.
    bin_edges : ndarray, shape (bins + 1,)
    log_density : ndarray, shape (bins,)
        :math:`\ln \hat v(t)` up to a constant (weights of all samples sum to one); NaN where a bin
        has fewer than ``settings.min_count`` samples.
    log_density_lower, log_density_upper : ndarray, shape (bins,)
        2.5% and 97.5% bootstrap percentiles (whole chains resampled; each resampled curve aligned to
        the estimate over the fit window, so the band shows the uncertainty of the shape).
    log_volume : ndarray, shape (bins,)
        :math:`\ln \hat V(\epsilon)` at each bin's upper edge: the reweighted share of the localizer's
        mass with :math:`t < \epsilon`, relative to the sampled range (absolute when the ladder includes
        temperature 0).
    bin_counts, effective_counts : ndarray, shape (bins,)
        Raw samples per bin, and their effective number under the reweighting.
    llc, multiplicity : float
        :math:`\lambda` and :math:`m` from the fit of ``fit_form`` on ``fit_window`` (``m = 1`` for
        ``"power"``).
    llc_stderr, multiplicity_stderr : float
        Bootstrap standard deviations.
    fit_window : (float, float)
    fit_form : str
        The form fitted (``"log"``, ``"log2"`` or ``"power"``); ``settings.fit_form`` keeps the one asked
        for, which may be ``"auto"``.
    fit_coefficients : ndarray
        See :class:`slt.dos.analysis.FitResult`.
    slope, slope_stderr : float
        Slope of a straight line through :math:`\ln\hat v` against :math:`\ln t` on the fit window
        (:math:`\lambda - 1` when :math:`m = 1`).
    temperatures : ndarray, shape (rungs,)
        Inverse temperatures :math:`x_k = n\beta_k` of the ladder.
    rung_llc, rung_llc_stderr : ndarray, shape (rungs,)
        :math:`x_k\, \mathbb{E}_{x_k}[t]` per rung (what :func:`slt.estimate_llc` would report at
        :math:`n\beta = x_k`) and its standard error over chains.
    step_sizes, acceptance : ndarray, shape (rungs,)
        Step each rung used, and its mean Metropolis acceptance (NaN for unadjusted samplers).
    swap_acceptance : ndarray, shape (rungs - 1,)
        Accepted share of replica swaps between neighbours (NaN without swaps).
    round_trips : ndarray, shape (chains,)
        Replica round trips between the hottest and coldest rungs per chain column (NaN without
        swaps); fewer than one means the cold rungs may still remember their start at :math:`w^*`.
    overlap : ndarray, shape (rungs, rungs)
        MBAR overlap matrix (rows sum to 1).
    free_energies : ndarray, shape (rungs,)
        MBAR :math:`f_k = -\ln Z(x_k)/Z(x_1)`.
    nonpositive_share : float
        Share of all draws with :math:`t \le 0` (loss at or below that of the trained weights).
    samples : ndarray, shape (rungs, chains, draws)
        Every :math:`t` drawn; :meth:`refit` re-analyzes them.
    init_loss : float
        :math:`L_n(w^*)`.
    n : int
        Number of training samples.
    settings : DOSSettings
    seconds : float
        Wall time of the sampling.
    problems : tuple of slt.warnings.Problem
        What the health checks found (thin overlap, few round trips, a failed fit, ...); emitted as
        warnings when the result is made, refitted or reloaded.
    """

    t: np.ndarray
    bin_edges: np.ndarray
    log_density: np.ndarray
    log_density_lower: np.ndarray
    log_density_upper: np.ndarray
    log_volume: np.ndarray
    bin_counts: np.ndarray
    effective_counts: np.ndarray
    llc: float
    llc_stderr: float
    multiplicity: float
    multiplicity_stderr: float
    fit_window: tuple[float, float]
    fit_form: str
    fit_coefficients: np.ndarray
    slope: float
    slope_stderr: float
    temperatures: np.ndarray
    rung_llc: np.ndarray
    rung_llc_stderr: np.ndarray
    step_sizes: np.ndarray
    acceptance: np.ndarray
    swap_acceptance: np.ndarray
    round_trips: np.ndarray
    overlap: np.ndarray
    free_energies: np.ndarray
    nonpositive_share: float
    samples: np.ndarray
    init_loss: float
    n: int
    settings: DOSSettings
    seconds: float = float("nan")
    problems: tuple[Problem, ...] = ()

    def __repr__(self) -> str:
        lo, hi = self.fit_window
        return (
            f"DOSResult(llc={self.llc:.4g} ± {self.llc_stderr:.2g}, multiplicity={self.multiplicity:.3g} ± "
            f"{self.multiplicity_stderr:.2g}, fit on t in [{lo:.2g}, {hi:.2g}] ({self.fit_form}), "
            f"rungs={len(self.temperatures)}, chains={self.settings.num_chains})"
        )

    @property
    def neighbour_overlap(self) -> np.ndarray:
        """Overlap between rungs ``k`` and ``k+1``: the smaller of the two off-diagonal entries."""
        k = np.arange(len(self.temperatures) - 1)
        return np.minimum(self.overlap[k, k + 1], self.overlap[k + 1, k])

    @property
    def in_fit_window(self) -> np.ndarray:
        """Boolean per bin: True for the bins the fit used."""
        lo, hi = self.fit_window
        return (self.t >= lo * (1 - 1e-12)) & (self.t <= hi * (1 + 1e-12)) & np.isfinite(self.log_density)

    def fitted_log_density(self, t: np.ndarray | None = None) -> np.ndarray:
        r"""The fitted :math:`\ln v` at ``t`` (default: the bin centres)."""
        t = self.t if t is None else np.asarray(t, dtype=float)
        return design_matrix(t, self.fit_form) @ self.fit_coefficients

    # -- tables ------------------------------------------------------------------------------

    def summary(self):
        """One row of a pandas ``DataFrame``: λ and m with their errors, the fit window and main settings."""
        import pandas as pd

        s = self.settings
        row = {
            "llc": self.llc,
            "llc_stderr": self.llc_stderr,
            "multiplicity": self.multiplicity,
            "multiplicity_stderr": self.multiplicity_stderr,
            "slope": self.slope,
            "slope_stderr": self.slope_stderr,
            "fit_t_low": self.fit_window[0],
            "fit_t_high": self.fit_window[1],
            "fit_form": self.fit_form,
            "fit_bins": int(self.in_fit_window.sum()),
            "median_round_trips": float(np.median(self.round_trips)),
            "min_neighbour_overlap": (
                float(self.neighbour_overlap.min()) if len(self.temperatures) > 1 else math.nan
            ),
            "nonpositive_share": self.nonpositive_share,
            "init_loss": self.init_loss,
            "n": self.n,
            "rungs": len(self.temperatures),
            "temperature_low": float(self.temperatures.min()),
            "temperature_high": float(self.temperatures.max()),
            "sampler": s.sampler,
            "num_chains": s.num_chains,
            "num_draws": s.num_draws,
            "num_burnin": s.num_burnin,
            "seconds": self.seconds,
        }
        return pd.DataFrame([row])

    def rung_table(self):
        r"""One row per rung: temperature, step, acceptance, :math:`x\,\mathbb{E}_x[t]`, overlaps."""
        import pandas as pd

        rungs = len(self.temperatures)
        overlap = np.append(self.neighbour_overlap, np.nan) if rungs > 1 else np.array([np.nan])
        swaps = np.append(self.swap_acceptance, np.nan) if rungs > 1 else np.array([np.nan])
        return pd.DataFrame(
            {
                "temperature": self.temperatures,
                "step_size": self.step_sizes,
                "acceptance": self.acceptance,
                "x_mean_t": self.rung_llc,
                "x_mean_t_stderr": self.rung_llc_stderr,
                "mean_t": self.rung_llc / np.where(self.temperatures > 0, self.temperatures, np.nan),
                "overlap_with_next": overlap,
                "swap_acceptance_with_next": swaps,
                "free_energy": self.free_energies,
            }
        )

    # -- refitting ---------------------------------------------------------------------------

    def refit(
        self,
        *,
        fit_window: tuple[float, float] | None = None,
        fit_form: str | None = None,
        bins_per_decade: int | None = None,
        min_count: int | None = None,
        num_bootstrap: int | None = None,
    ) -> DOSResult:
        """Re-analyze the stored samples with another fit window, fit form or binning (no new sampling).

        ``fit_form`` ``None`` keeps what was asked for: ``"auto"`` is decided afresh on the new window (see
        :func:`slt.estimate_dos`), any other form is kept. The new result's problems are checked afresh
        (those of the sampling, such as diverged chains, are kept) and emitted as warnings.
        """
        s = self.settings
        requested = fit_form or (s.fit_form if s.fit_form == "auto" else self.fit_form)
        analysis, unresolved = analyze_with_form(
            self.samples,
            self.temperatures,
            requested,
            fit_window,
            bins_per_decade=bins_per_decade or s.bins_per_decade,
            min_count=min_count or s.min_count,
            num_bootstrap=s.num_bootstrap if num_bootstrap is None else num_bootstrap,
            seed=s.seed,
        )
        settings = dataclasses.replace(
            s,
            bins_per_decade=bins_per_decade or s.bins_per_decade,
            fit_form=requested,
            min_count=min_count or s.min_count,
            num_bootstrap=s.num_bootstrap if num_bootstrap is None else num_bootstrap,
        )
        refitted = build_result(
            analysis,
            self.samples,
            self.temperatures,
            self.step_sizes,
            self.acceptance,
            self.swap_acceptance,
            self.round_trips,
            self.init_loss,
            self.n,
            settings,
            self.seconds,
        )
        kept = tuple(p for p in self.problems if p.category == DivergenceWarning.__name__)
        refitted = dataclasses.replace(refitted, problems=kept + result_problems(refitted, unresolved))
        emit(refitted.problems, stacklevel=2)
        return refitted

    # -- plots -------------------------------------------------------------------------------

    def plot(self, ax=None, *, label: str | None = None):
        r"""Plot the curve and the per-rung estimates.

        Left: :math:`\ln\hat v` against :math:`t` (log-log, bootstrap band, fitted line over the
        window); right: :math:`x\,\mathbb{E}_x[t]` against :math:`x` with the fitted :math:`\lambda`.

        Parameters
        ----------
        ax : sequence of two matplotlib axes, optional
        label : str, optional
            Legend label of the curve. With a label the fitted lines take the curve's colour, so that
            several results can share the same two axes.

        Returns
        -------
        matplotlib.figure.Figure
        """
        fig, axes = panels(ax, 2, figsize=(10, 3.8))
        ok = np.isfinite(self.log_density)
        log10e = 1 / math.log(10)
        color = axes[0]._get_lines.get_next_color()
        axes[0].plot(
            self.t[ok],
            self.log_density[ok] * log10e,
            "o-",
            ms=2.5,
            lw=1,
            color=color,
            label=label or r"$\log_{10}\hat v(t)$",
        )
        band = ok & np.isfinite(self.log_density_lower) & np.isfinite(self.log_density_upper)
        if band.any():
            axes[0].fill_between(
                self.t[band],
                self.log_density_lower[band] * log10e,
                self.log_density_upper[band] * log10e,
                color=color,
                alpha=0.25,
                lw=0,
            )
        window = self.in_fit_window
        if window.any() and np.all(np.isfinite(self.fit_coefficients)):
            tt = np.geomspace(self.t[window].min(), self.t[window].max(), 100)
            fit_label = rf"fit: $\lambda$={self.llc:.3g}"
            if self.fit_form != "power":
                fit_label += f", m={self.multiplicity:.2f}"
            # black on a lone curve; the curve's own colour when several share the axes (``label`` given)
            fit_color = color if label else "k"
            fitted = self.fitted_log_density(tt) * log10e
            axes[0].plot(tt, fitted, "--", color=fit_color, lw=1.2, label=fit_label)
            axes[0].axvspan(self.t[window].min(), self.t[window].max(), color="0.92", zorder=-1)
        axes[0].set_xscale("log")
        axes[0].set(
            xlabel=r"$t = L_n(w) - L_n(w^*)$",
            ylabel=r"$\log_{10} \hat v(t)$ + const",
            title="density of states",
        )
        axes[0].legend(fontsize=8, loc="best")
        positive = self.temperatures > 0
        axes[1].errorbar(
            self.temperatures[positive],
            self.rung_llc[positive],
            yerr=self.rung_llc_stderr[positive],
            fmt="o-",
            ms=3,
            lw=1,
            color=color,
            label=label or r"$x\,\mathbb{E}_x[t]$",
        )
        if math.isfinite(self.llc):
            fit_label = rf"DOS fit $\lambda$={self.llc:.3g}"
            axes[1].axhline(self.llc, color=color if label else "k", ls="--", lw=1, label=fit_label)
        axes[1].set_xscale("log")
        axes[1].set(
            xlabel=r"inverse temperature $x = n\beta$",
            ylabel=r"$x\,\mathbb{E}_x[t]$",
            title="per-rung estimate",
        )
        axes[1].legend(fontsize=8, loc="best")
        return fig


def rung_estimates(samples: np.ndarray, temperatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r""":math:`x_k \mathbb{E}_{x_k}[t]` per rung (mean of per-chain means) and its standard error."""
    with warnings.catch_warnings():  # chains or rungs without finite draws give NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        per_chain = np.nanmean(np.where(np.isfinite(samples), samples, np.nan), axis=2)  # (rungs, chains)
        mean = np.nanmean(per_chain, axis=1)
        count = np.isfinite(per_chain).sum(1)
        std = np.array([np.nanstd(row, ddof=1) if c > 1 else np.nan for row, c in zip(per_chain, count)])
    return temperatures * mean, temperatures * std / np.sqrt(np.maximum(count, 1))


def build_result(
    analysis: DOSAnalysis,
    samples: np.ndarray,
    temperatures: np.ndarray,
    step_sizes: np.ndarray,
    acceptance: np.ndarray,
    swap_acceptance: np.ndarray,
    round_trips: np.ndarray,
    init_loss: float,
    n: int,
    settings: DOSSettings,
    seconds: float,
) -> DOSResult:
    """Assemble a :class:`DOSResult` from an analysis and the run that produced its samples."""
    rung_llc, rung_se = rung_estimates(samples, temperatures)
    a = analysis
    return DOSResult(
        t=a.t,
        bin_edges=a.bin_edges,
        log_density=a.log_density,
        log_density_lower=a.log_density_lower,
        log_density_upper=a.log_density_upper,
        log_volume=a.log_volume,
        bin_counts=a.bin_counts.astype(float),
        effective_counts=a.effective_counts,
        llc=a.fit.llc,
        llc_stderr=a.llc_stderr,
        multiplicity=a.fit.multiplicity,
        multiplicity_stderr=a.multiplicity_stderr,
        fit_window=a.fit_window,
        fit_form=a.fit_form,
        fit_coefficients=np.asarray(a.fit.coefficients, dtype=float),
        slope=a.slope,
        slope_stderr=a.slope_stderr,
        temperatures=np.asarray(temperatures, dtype=float),
        rung_llc=rung_llc,
        rung_llc_stderr=rung_se,
        step_sizes=np.asarray(step_sizes, dtype=float),
        acceptance=np.asarray(acceptance, dtype=float),
        swap_acceptance=np.asarray(swap_acceptance, dtype=float),
        round_trips=np.asarray(round_trips, dtype=float),
        overlap=a.overlap,
        free_energies=a.free_energies,
        nonpositive_share=a.nonpositive_share,
        samples=samples,
        init_loss=float(init_loss),
        n=int(n),
        settings=settings,
        seconds=float(seconds),
    )
