r"""From pooled ladder samples of :math:`t = L_n(w) - L_n(w^*)` to a density-of-states curve and its fit.

Pure numpy: :func:`analyze` takes the samples of a :class:`~slt.dos.ladder.LadderRun` and returns a
:class:`DOSAnalysis`. Steps:

1. Bin every sample on a fine grid (``subdivisions`` fine bins per output bin, log-spaced for
   :math:`t > 0`, linear for :math:`t \le 0`) per chain and rung.
2. Solve MBAR (:mod:`slt.dos.mbar`) on the fine bins; each sample's weight under the localizer alone
   is :math:`W(t) = 1/\sum_l N_l e^{f_l - x_l t}`.
3. :math:`\hat v(t)` on log-spaced output bins (``bins_per_decade`` per decade) is the summed weight in
   the bin divided by its width, normalized so that the weights of all samples sum to one; the
   cumulative volume :math:`\hat V(\epsilon)` sums the weights of samples with :math:`t < \epsilon`.
4. Fit :math:`\ln \hat v = \ln c + (\lambda - 1)\ln t + (m - 1)\ln(-\ln t)` with :math:`m \ge 1` (see
   :func:`fit_log_density`) on the fit window (see :func:`default_fit_window`), weighting each bin by
   its effective number of samples, capped at 100.
5. Bootstrap over whole chains (chain columns are resampled with replacement, MBAR re-solved) for
   confidence bands and standard errors of :math:`\lambda` and :math:`m`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from slt.dos.mbar import log_weights, overlap_matrix, solve_free_energies

__all__ = [
    "DOSAnalysis",
    "FitResult",
    "FIT_FORMS",
    "analyze",
    "fit_log_density",
    "default_fit_window",
    "MIN_OVERLAP",
    "MAX_FIT_T",
]

#: Fit forms: the terms besides ``ln c + (λ - 1) ln t``.
FIT_FORMS = ("log", "log2", "power")
#: Neighbouring rungs whose MBAR overlap is below this share too few samples (Klimovich et al. 2015).
MIN_OVERLAP = 0.03
#: Upper end of the default fit window: the log term needs :math:`-\ln t` well above 0.
MAX_FIT_T = 1e-2
#: Samples per bin the default fit window asks for (see :func:`default_fit_window`).
FIT_MIN_COUNT = 100
#: Effective samples in a bin beyond which it gets no more weight in the fit.
FIT_WEIGHT_CAP = 100.0
_MIN_BINS = {"power": 3, "log": 4, "log2": 5}
_BOOTSTRAP_CHUNK = 25


@dataclass
class FitResult:
    r"""A least-squares fit of :math:`\ln\hat v` on the fit window.

    Attributes
    ----------
    llc : float
        :math:`\lambda`: one plus the coefficient of :math:`\ln t`.
    multiplicity : float
        :math:`m`: one plus the coefficient of :math:`\ln(-\ln t)` (exactly 1 for ``form="power"``).
    coefficients : ndarray
        ``[ln c, λ - 1]``, then ``m - 1`` for ``"log"`` and ``"log2"``, then ``b`` for ``"log2"``.
    form : str
    """

    llc: float
    multiplicity: float
    coefficients: np.ndarray
    form: str


def design_matrix(t: np.ndarray, form: str) -> np.ndarray:
    r"""Fit columns: ``1, ln t`` (``"power"``), ``+ ln(-ln t)`` (``"log"``), ``+ 1/(-ln t)`` (``"log2"``).

    ``"log2"`` adds the next lower-order term of the expansion:
    :math:`\ln[(-\ln t)^{m-1}(1 + b'/(-\ln t) + \dots)] = (m-1)\ln(-\ln t) + b'/(-\ln t) + \dots`,
    which absorbs most of the bias of the three-term form when :math:`m \ge 3`.
    """
    if form not in FIT_FORMS:
        raise ValueError(f"fit_form must be one of {FIT_FORMS}, got {form!r}")
    log_t = np.log(t)
    columns = [np.ones_like(log_t), log_t]
    if form in ("log", "log2"):
        columns.append(np.log(-log_t))
    if form == "log2":
        columns.append(1.0 / (-log_t))
    return np.stack(columns, axis=1)


def fit_log_density(
    t: np.ndarray, log_density: np.ndarray, weights: np.ndarray, form: str = "log"
) -> FitResult:
    r"""Weighted least squares of ``log_density`` on :func:`design_matrix` columns, with :math:`m \ge 1`.

    The multiplicity is a positive integer in theory; when the free fit gives :math:`m < 1` (it does
    when the window is too short to tell :math:`\ln t` from :math:`\ln(-\ln t)`, as on regular or
    :math:`m = 1` models), the fit is repeated with :math:`m = 1` fixed.

    Parameters
    ----------
    t : ndarray
        Bin centres (all below 1 for the log forms).
    log_density : ndarray
        :math:`\ln \hat v` at ``t`` (any additive constant).
    weights : ndarray
        Non-negative weights (inverse variances of ``log_density``, up to a factor).
    form : {"log", "log2", "power"}
    """
    t, y, w = (np.asarray(a, dtype=float) for a in (t, log_density, weights))
    keep = np.isfinite(y) & (w > 0) & (t > 0)
    if form != "power":
        keep &= t < 1
    size = 2 + (form != "power") + (form == "log2")
    if keep.sum() < _MIN_BINS[form]:
        return FitResult(math.nan, math.nan, np.full(size, math.nan), form)
    x = design_matrix(t[keep], form)
    root = np.sqrt(w[keep])
    coefficients = _lstsq(x, y[keep], root)
    if form != "power" and coefficients[2] < 0:  # m < 1: refit with the ln(-ln t) column dropped (m = 1)
        free = [i for i in range(size) if i != 2]
        coefficients = np.zeros(size)
        coefficients[free] = _lstsq(x[:, free], y[keep], root)
    multiplicity = 1.0 + coefficients[2] if form != "power" else 1.0
    return FitResult(1.0 + float(coefficients[1]), float(multiplicity), coefficients, form)


def _lstsq(x: np.ndarray, y: np.ndarray, root_weights: np.ndarray) -> np.ndarray:
    solution, *_ = np.linalg.lstsq(x * root_weights[:, None], y * root_weights, rcond=None)
    return solution


@dataclass
class DOSAnalysis:
    """Everything :func:`analyze` derives from the samples (see :class:`slt.dos.DOSResult`)."""

    t: np.ndarray
    bin_edges: np.ndarray
    log_density: np.ndarray
    log_density_lower: np.ndarray
    log_density_upper: np.ndarray
    log_volume: np.ndarray
    bin_counts: np.ndarray
    effective_counts: np.ndarray
    fit_window: tuple[float, float]
    fit_form: str
    fit: FitResult
    llc_stderr: float
    multiplicity_stderr: float
    slope: float
    slope_stderr: float
    free_energies: np.ndarray
    overlap: np.ndarray
    nonpositive_share: float
    num_bootstrap: int
    bootstrap_llc: np.ndarray
    bootstrap_multiplicity: np.ndarray


def _fine_edges(t: np.ndarray, bins_per_decade: int, subdivisions: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Fine bin edges over all finite samples, and the coarse (output) edges for :math:`t > 0`.

    Returns ``(fine_edges, coarse_edges, first_positive)``: fine bins ``first_positive + i*subdivisions``
    to ``first_positive + (i+1)*subdivisions - 1`` make up coarse bin ``i``.
    """
    positive = t[t > 0]
    if positive.size == 0:
        raise ValueError(
            "no sample has a loss above the loss at the trained weights (t > 0), so there is no density "
            "of states to estimate; check that the model is at a minimum of loss_fn"
        )
    low = math.floor(math.log10(positive.min()) * bins_per_decade) / bins_per_decade
    high = math.ceil(math.log10(positive.max()) * bins_per_decade + 1e-9) / bins_per_decade
    n_coarse = max(round((high - low) * bins_per_decade), 1)
    coarse = np.logspace(low, low + n_coarse / bins_per_decade, n_coarse + 1)
    fine_positive = np.logspace(low, low + n_coarse / bins_per_decade, n_coarse * subdivisions + 1)
    nonpositive = t[t <= 0]
    if nonpositive.size:
        start = nonpositive.min()
        linear = np.linspace(start, 0.0, 101) if start < 0 else np.array([-1e-300, 0.0])
        # bins (.., 0] then (0, first positive edge): samples at exactly 0 go with the non-positive ones
        fine = np.concatenate([linear[:-1], [0.0], fine_positive])
        first_positive = len(linear)
    else:
        fine, first_positive = fine_positive, 0
    return fine, coarse, first_positive


def _bin(t: np.ndarray, fine: np.ndarray, first_positive: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and sums of ``t`` (shape ``(rungs, chains, draws)``) per chain, rung and fine bin."""
    rungs, chains, _ = t.shape
    n_fine = len(fine) - 1
    counts = np.zeros((chains, rungs, n_fine))
    sums = np.zeros((chains, rungs, n_fine))
    for k in range(rungs):
        for c in range(chains):
            values = t[k, c]
            values = values[np.isfinite(values)]
            index = np.searchsorted(fine, values, side="right") - 1
            if first_positive:  # t == 0 exactly belongs to the last non-positive bin
                index = np.where(values <= 0, np.minimum(index, first_positive - 1), index)
            index = np.clip(index, 0, n_fine - 1)
            counts[c, k] = np.bincount(index, minlength=n_fine)
            sums[c, k] = np.bincount(index, weights=values, minlength=n_fine)
    return counts, sums


def _curve(f, counts, t_bar, temperatures, first_positive, subdivisions, widths):
    """Per-coarse-bin log density (normalized so all weights sum to one), effective counts, log volume."""
    n_k = counts.sum(1)
    multiplicity = counts.sum(0)
    with np.errstate(divide="ignore"):
        log_mass = np.log(multiplicity) + log_weights(f, n_k, temperatures, t_bar)  # per fine bin
        log_mass2 = np.log(multiplicity) + 2 * log_weights(f, n_k, temperatures, t_bar)
    log_total = _lse(log_mass)
    positive = log_mass[first_positive:].reshape(-1, subdivisions)
    positive2 = log_mass2[first_positive:].reshape(-1, subdivisions)
    log_bin = _lse(positive, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        effective = np.exp(2 * log_bin - _lse(positive2, axis=1))
    log_density = log_bin - log_total - np.log(widths)
    cumulative = np.logaddexp.accumulate(np.concatenate([[_lse(log_mass[:first_positive])], log_bin]))[1:]
    log_volume = cumulative - log_total
    effective = np.where(np.isfinite(effective), effective, 0.0)
    return log_density, effective, log_volume


def _lse(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return np.float64(-np.inf)
    top = np.max(values, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(values - top), axis=axis, keepdims=True)) + top
    return out.squeeze() if axis is None else np.squeeze(out, axis=axis)


def default_fit_window(
    t: np.ndarray,
    temperatures: np.ndarray,
    centres: np.ndarray,
    bin_counts: np.ndarray,
    min_count: int,
    form: str = "log",
) -> tuple[float, float]:
    r"""The default small-:math:`t` fit window ``(t_lo, t_hi)``.

    * ``t_hi`` is the mean :math:`t` of the hottest rung (beyond it the curve is sampled only by that
      rung's upper tail); for the forms with a log term (``"log"``, ``"log2"``) at most
      :data:`MAX_FIT_T` (they need :math:`-\ln t` well above 1: at :math:`t = 10^{-2}` the next
      correction, of order :math:`1/(-\ln t)`, is about 0.2). The ``"power"`` form has no such term and
      no cap, so that it also reads the local slope of trained networks, whose ladders sample
      :math:`t \approx \lambda / x` far above :math:`10^{-2}` when :math:`\lambda` is large;
    * ``t_lo`` is the centre of the lowest bin from which every bin up to ``t_hi`` holds at least
      :data:`FIT_MIN_COUNT` samples (``min_count`` when fewer than five bins do). Sparser bins lie in
      the far lower tail of the coldest rungs, where draws are strongly correlated: on
      :math:`K = w_1^2 w_2^2` (32 chains x 2000 draws) including them doubled the bootstrap error of
      :math:`m` (0.15 against 0.08).
    """
    mean_t = float(np.nanmean(t[int(np.argmin(temperatures))]))
    cap = math.inf if form == "power" else MAX_FIT_T
    t_hi = min(mean_t, cap) if mean_t > 0 else MAX_FIT_T
    below = np.flatnonzero(centres <= t_hi)
    if below.size == 0:
        return float(centres[0]), t_hi
    top = below[-1]
    for threshold in (max(FIT_MIN_COUNT, min_count), min_count):
        bottom = top
        while bottom - 1 >= 0 and bin_counts[bottom - 1] >= threshold:
            bottom -= 1
        if bin_counts[bottom] < threshold:
            bottom = top
        if top - bottom + 1 >= 5:
            break
    return float(centres[bottom]), float(t_hi)


def analyze(
    t: np.ndarray,
    temperatures: np.ndarray,
    *,
    bins_per_decade: int = 10,
    subdivisions: int = 10,
    fit_window: tuple[float, float] | None = None,
    fit_form: str = "log",
    min_count: int = 20,
    num_bootstrap: int = 200,
    seed: int = 0,
) -> DOSAnalysis:
    """Density of states, cumulative volume, fit and bootstrap bands from ladder samples.

    Parameters
    ----------
    t : ndarray, shape (rungs, chains, draws)
        :math:`L_n(w) - L_n(w^*)` per draw; NaN entries (diverged chains) are ignored.
    temperatures : ndarray, shape (rungs,)
    bins_per_decade : int
        Output bins per decade of :math:`t`.
    subdivisions : int
        Fine MBAR bins per output bin.
    fit_window : (float, float), optional
        ``(t_lo, t_hi)``; bins whose centres lie inside are fitted. Default :func:`default_fit_window`.
    fit_form : {"log", "log2", "power"}
        See :func:`design_matrix`.
    min_count : int
        Bins with fewer raw samples are left out of the curve (NaN) and of the fit.
    num_bootstrap : int
        Bootstrap resamples over chains (0 to skip: bands and standard errors are then NaN).
    seed : int
        Seed of the bootstrap.
    """
    if fit_form not in FIT_FORMS:
        raise ValueError(f"fit_form must be one of {FIT_FORMS}, got {fit_form!r}")
    t = np.asarray(t, dtype=float)
    temperatures = np.asarray(temperatures, dtype=float)
    finite = t[np.isfinite(t)]
    fine, coarse, first_positive = _fine_edges(finite, bins_per_decade, subdivisions)
    counts, sums = _bin(t, fine, first_positive)
    total_counts = counts.sum(0)  # (rungs, fine)
    multiplicity = total_counts.sum(0)
    midpoints = 0.5 * (fine[:-1] + fine[1:])
    t_bar = np.where(multiplicity > 0, sums.sum((0, 1)) / np.maximum(multiplicity, 1), midpoints)
    f = solve_free_energies(t_bar, total_counts, temperatures)
    centres = np.sqrt(coarse[:-1] * coarse[1:])
    widths = np.diff(coarse)
    log_density, effective, log_volume = _curve(
        f, total_counts, t_bar, temperatures, first_positive, subdivisions, widths
    )
    raw = multiplicity[first_positive:].reshape(-1, subdivisions).sum(1)
    reliable = raw >= min_count
    log_density = np.where(reliable, log_density, np.nan)
    if fit_window is None:
        window = default_fit_window(t, temperatures, centres, np.where(reliable, raw, 0), min_count, fit_form)
    else:
        window = (float(fit_window[0]), float(fit_window[1]))
    in_window = (centres >= window[0] * (1 - 1e-12)) & (centres <= window[1] * (1 + 1e-12)) & reliable
    fit_weights = np.where(in_window, np.minimum(effective, FIT_WEIGHT_CAP), 0.0)
    fit = fit_log_density(centres, log_density, fit_weights, fit_form)
    line = fit_log_density(centres, log_density, fit_weights, "power")
    overlap = overlap_matrix(f, t_bar[multiplicity > 0], total_counts[:, multiplicity > 0], temperatures)

    lower = upper = np.full_like(log_density, np.nan)
    boot_llc = boot_m = np.full(0, np.nan)
    llc_se = m_se = slope_se = math.nan
    if num_bootstrap > 0 and t.shape[1] > 1:
        rng = np.random.default_rng(seed)
        chains = t.shape[1]
        curves, boot_llc, boot_m, boot_slope = [], [], [], []
        picks = rng.multinomial(chains, np.full(chains, 1.0 / chains), size=num_bootstrap)
        flat_counts = counts.reshape(chains, -1)
        for b in range(num_bootstrap):
            if b % _BOOTSTRAP_CHUNK == 0:  # resampled counts of a chunk of resamples in one product
                block = (picks[b : b + _BOOTSTRAP_CHUNK] @ flat_counts).reshape(-1, *counts.shape[1:])
            resampled = block[b % _BOOTSTRAP_CHUNK]
            if np.any(resampled.sum(1) == 0):
                continue
            f_b = solve_free_energies(t_bar, resampled, temperatures, initial=f)
            curve_b, *_ = _curve(f_b, resampled, t_bar, temperatures, first_positive, subdivisions, widths)
            curve_b = np.where(reliable, curve_b, np.nan)
            shift_mask = in_window & np.isfinite(curve_b)
            if shift_mask.any():
                curve_b = curve_b - np.average(
                    curve_b[shift_mask] - log_density[shift_mask], weights=fit_weights[shift_mask] + 1e-12
                )
            curves.append(curve_b)
            fb = fit_log_density(centres, curve_b, fit_weights, fit_form)
            boot_llc.append(fb.llc)
            boot_m.append(fb.multiplicity)
            boot_slope.append(fit_log_density(centres, curve_b, fit_weights, "power").llc - 1)
        if curves:
            stack = np.array(curves)
            stack = np.where(np.isfinite(stack), stack, np.nan)
            with np.errstate(invalid="ignore"), _quiet_nan_warnings():
                lower = np.nanpercentile(stack, 2.5, axis=0)
                upper = np.nanpercentile(stack, 97.5, axis=0)
            boot_llc, boot_m = np.array(boot_llc), np.array(boot_m)
            llc_se = _nanstd(boot_llc)
            m_se = _nanstd(boot_m) if fit_form != "power" else 0.0
            slope_se = _nanstd(np.array(boot_slope))
    return DOSAnalysis(
        t=centres,
        bin_edges=coarse,
        log_density=log_density,
        log_density_lower=lower,
        log_density_upper=upper,
        log_volume=log_volume,
        bin_counts=raw,
        effective_counts=effective,
        fit_window=window,
        fit_form=fit_form,
        fit=fit,
        llc_stderr=llc_se,
        multiplicity_stderr=m_se,
        slope=line.llc - 1.0,
        slope_stderr=slope_se,
        free_energies=f,
        overlap=overlap,
        nonpositive_share=float(np.mean(finite <= 0)),
        num_bootstrap=len(boot_llc),
        bootstrap_llc=np.asarray(boot_llc, dtype=float),
        bootstrap_multiplicity=np.asarray(boot_m, dtype=float),
    )


def _nanstd(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.std(ddof=1)) if values.size > 1 else math.nan


class _quiet_nan_warnings:
    """Silence numpy's "All-NaN slice" warning for bins no resample reached."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
