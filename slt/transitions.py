r"""Phase-transition detection on any measure over training checkpoints.

:func:`detect_transitions` finds where a curve such as :math:`\hat\lambda(t)` jumps or ramps from one
level to another faster than it drifts around that place, and says where, how much and how sure. In short
(the docstring of :func:`detect_transitions` gives the details and the reasons for each default):

1. *Segmentation.* PELT (``ruptures``) splits the series into straight lines on the time axis
   (``log10(step)`` or ``step``) with a weighted least-squares cost, so residuals count in units of the
   per-checkpoint error bars.
2. *Candidates.* Every break, and every run of segments between two segments (its *flanks*), is a
   candidate change; it may reach two checkpoints into its flanks to fit the change best.
3. *Gates.* The change measured against straight lines through the nearest checkpoints of each flank,
   minus what the steeper flank trend explains, must be ``min_snr`` standard errors and
   ``min_rel_change`` of the level, and the run must move faster than its flanks. Drift whose slope
   changes smoothly has no stretch steeper than both of its sides, so it stays quiet.
4. *Location.* The steepest step is where a smoothed derivative peaks inside the event.
5. *Confidence.* The share of bootstrap resamples that find the event again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import numpy as np

__all__ = [
    "Transition",
    "Transitions",
    "detect_transitions",
    "plot_transitions",
    "transitions_frame",
    "transitions_markdown",
]

_AXES = ("log", "linear")
#: How far (in checkpoints) a candidate change may reach into its flank segments.
REFINE = 2
#: Signal-to-noise an event needs by default (``min_snr``); ``confidence`` counts resamples at least at it.
DEFAULT_MIN_SNR = 3.0
_VALUE_SUFFIXES = ("", "_mean", "_value")
_ERROR_SUFFIXES = ("_stderr", "_se", "_err", "_error", "_std_err")
_PER_CHAIN_SUFFIXES = ("_per_chain", "_chains")


@dataclass(frozen=True)
class Transition:
    """One detected transition.

    Attributes
    ----------
    start, end : float
        Steps of the last checkpoint before the change and of the first checkpoint after it. A window
        may reach up to two checkpoints further into either flank when that gives a larger snr (see
        :func:`detect_transitions`, *Candidates and their size*), so with noise even a one-step jump
        can be reported a checkpoint or two wider; ``step`` places it.
    step : float
        Where the change is steepest: the midpoint on the time axis (geometric mean of the two steps on
        the log axis) of the pair of neighbouring checkpoints with the steepest smoothed slope.
    direction : {"rise", "fall"}
        Sign of the change.
    delta : float
        Level after minus level before: fitted flank lines evaluated at ``end`` and ``start``.
    rel_delta : float
        ``delta / max(|level before|, |level after|)``: -1 means a fall to zero.
    peak_slope : float
        The smoothed slope at ``step``, in units of the measure per decade of steps (``axis="log"``) or
        per step (``axis="linear"``).
    snr : float
        The excess change (``delta`` minus what the flanks' own trends explain over the interval) divided
        by its standard error from the error bars.
    confidence : float
        Share of bootstrap resamples that detect an event of the same direction overlapping this one at a
        signal-to-noise of at least the default ``min_snr`` (3, or the one given if higher), so that an
        event found only because ``min_snr`` was lowered scores low (NaN when ``n_bootstrap=0``).
    start_index, end_index : int
        Positions of ``start`` and ``end`` among the checkpoints.
    step_index : float
        Position of ``step`` among the checkpoints (``i + 0.5`` between checkpoints ``i`` and ``i + 1``).
    level_before, level_after : float
        Fitted levels at ``start`` and ``end``.
    measure : str or None
        The measure the event was found on.
    axis : {"log", "linear"}
        The time axis used.
    """

    start: float
    end: float
    step: float
    direction: str
    delta: float
    rel_delta: float
    peak_slope: float
    snr: float
    confidence: float
    start_index: int
    end_index: int
    step_index: float
    level_before: float
    level_after: float
    measure: str | None = None
    axis: str = "log"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dictionary."""
        return asdict(self)

    def __str__(self) -> str:
        arrow = "rise" if self.direction == "rise" else "fall"
        conf = "" if math.isnan(self.confidence) else f", confidence {self.confidence:.0%}"
        name = f"{self.measure} " if self.measure else ""
        return (
            f"{name}{arrow} of {self.delta:+.4g} ({self.rel_delta:+.0%}) between steps {self.start:g} and "
            f"{self.end:g}, steepest at {self.step:.4g}, snr {self.snr:.1f}{conf}"
        )


# --------------------------------------------------------------------------------------------------
# input handling


@dataclass
class _Series:
    steps: np.ndarray
    values: np.ndarray
    errors: np.ndarray | None
    chains: np.ndarray | None
    measure: str | None


def _lookup(names: Sequence[str], table: Mapping[str, Any] | None, obj: Any) -> Any:
    for name in names:
        if table is not None and name in table:
            return table[name]
        if table is None and hasattr(obj, name):
            value = getattr(obj, name)
            if not callable(value):
                return value
    return None


def _as_series(series: Any, measure: str | None) -> _Series:
    """Turn arrays, a mapping, a DataFrame or a Trajectory-like object into plain arrays."""
    if isinstance(series, (tuple, list)):
        if len(series) not in (2, 3):
            raise ValueError(
                f"series given as a tuple must be (steps, values) or (steps, values, errors); got "
                f"{len(series)} items"
            )
        steps, values = series[0], series[1]
        errors = series[2] if len(series) == 3 else None
        values = np.asarray(values, dtype=float)
        chains = None
        if values.ndim == 2:
            if errors is not None:
                raise ValueError(
                    "values of shape (checkpoints, chains) carry their own error bars; pass (steps, values) "
                    "without errors"
                )
            chains = values
            values = chains.mean(axis=1)
        return _Series(
            np.asarray(steps, dtype=float),
            values,
            None if errors is None else np.asarray(errors, dtype=float),
            chains,
            measure,
        )

    table: Mapping[str, Any] | None = None
    obj = series
    if hasattr(series, "to_dataframe") and callable(series.to_dataframe):
        table = series.to_dataframe()
    elif isinstance(series, Mapping) or hasattr(series, "columns"):
        table = series
    if table is not None and hasattr(table, "columns"):
        frame = table
        if (
            "step" not in frame.columns
            and "steps" not in frame.columns
            and frame.index.name in ("step", "steps")
        ):
            frame = frame.reset_index()
        table = {str(c): frame[c].to_numpy() for c in frame.columns}
    if measure is None:
        raise ValueError("name the measure to analyze, for example measure='llc'")
    steps = _lookup(("step", "steps"), table, obj)
    values = _lookup([measure + s for s in _VALUE_SUFFIXES], table, obj)
    errors = _lookup([measure + s for s in _ERROR_SUFFIXES], table, obj)
    chains = _lookup([measure + s for s in _PER_CHAIN_SUFFIXES], table, obj)
    if steps is None:
        raise ValueError(
            f"cannot find the checkpoint steps in {type(series).__name__}: expected a 'step' column or a "
            "'steps' attribute; pass (steps, values, errors) arrays instead"
        )
    if values is None:
        available = (
            sorted(table)
            if table is not None
            else sorted(n for n in dir(obj) if not n.startswith("_") and not callable(getattr(obj, n, None)))
        )
        raise ValueError(
            f"measure {measure!r} not found in {type(series).__name__}; available: {', '.join(available)}"
        )
    values = np.asarray(values, dtype=float)
    if chains is None and table is not None:
        chains = _chains_from_results(getattr(obj, measure, None), len(values))
    if chains is not None:
        chains = np.asarray(chains, dtype=float)
        if chains.ndim != 2 or chains.shape[1] < 2 or len(chains) != len(values):
            chains = None
    return _Series(
        np.asarray(steps, dtype=float),
        values,
        None if errors is None else np.asarray(errors, dtype=float),
        chains,
        measure,
    )


def _chains_from_results(results: Any, n: int) -> np.ndarray | None:
    """Per-chain estimates of each checkpoint from result objects with ``per_chain`` (``Trajectory.llc``).

    Rows of checkpoints without a result are NaN. None unless every result has the same number of
    chains, all healthy.
    """
    if not isinstance(results, (list, tuple)) or len(results) != n:
        return None
    if not any(r is not None for r in results) or not all(
        r is None or hasattr(r, "per_chain") for r in results
    ):
        return None
    per_chain = [None if r is None else np.asarray(r.per_chain, dtype=float) for r in results]
    counts = {len(p) for p in per_chain if p is not None}
    if len(counts) != 1 or any(p is not None and not np.isfinite(p).all() for p in per_chain):
        return None
    width = counts.pop()
    return np.stack([np.full(width, np.nan) if p is None else p for p in per_chain])


def _validate(
    s: _Series, *, axis: str, min_size: int, dropna: bool, notes: list[str] | None = None
) -> _Series:
    steps, values, errors, chains = s.steps, s.values, s.errors, s.chains
    for name, arr in (("steps", steps), ("values", values)) + (
        (("errors", errors),) if errors is not None else ()
    ):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if len(values) != len(steps) or (errors is not None and len(errors) != len(steps)):
        sizes = f"{len(steps)} steps, {len(values)} values" + (
            f", {len(errors)} errors" if errors is not None else ""
        )
        raise ValueError(f"steps, values and errors must have the same length; got {sizes}")
    bad = ~np.isfinite(steps) | ~np.isfinite(values)
    if errors is not None:
        bad |= ~np.isfinite(errors)
    if bad.any():
        if not dropna:
            where = ", ".join(str(i) for i in np.flatnonzero(bad)[:5])
            raise ValueError(
                f"{int(bad.sum())} checkpoint(s) have a non-finite step, value or error (positions {where}); "
                "drop them (failed checkpoints, say) or pass dropna=True"
            )
        keep = ~bad
        if notes is not None:
            notes.append(f"{int(bad.sum())} checkpoint(s) without a finite value were left out (dropna=True)")
        steps, values = steps[keep], values[keep]
        errors = errors[keep] if errors is not None else None
        chains = chains[keep] if chains is not None else None
    if errors is not None and (errors < 0).any():
        raise ValueError(f"errors must be >= 0 (standard errors); got {errors.min():.3g}")
    if len(steps) > 1 and not (np.diff(steps) > 0).all():
        i = int(np.flatnonzero(np.diff(steps) <= 0)[0])
        raise ValueError(
            f"steps must be strictly increasing; step {steps[i + 1]:g} follows {steps[i]:g} at position "
            f"{i + 1}: sort the checkpoints and remove duplicates"
        )
    if axis == "log" and len(steps) and steps[0] < 0:
        raise ValueError(
            f"axis='log' needs non-negative steps, got {steps[0]:g}: shift the steps or use axis='linear'"
        )
    if axis == "log" and len(steps) and steps[0] == 0:
        # the first checkpoint is usually taken before training; it has no place on a log axis
        steps, values = steps[1:], values[1:]
        errors = errors[1:] if errors is not None else None
        chains = chains[1:] if chains is not None else None
        if notes is not None:
            notes.append("step 0 was left out: it has no place on the log axis (axis='linear' keeps it)")
    needed = 2 * min_size + 1
    if len(steps) < needed:
        raise ValueError(
            f"too few checkpoints: {len(steps)}; detecting a transition needs at least {needed} "
            f"(min_size={min_size} on each side of it and one more)"
        )
    return _Series(steps, values, errors, chains, s.measure)


# --------------------------------------------------------------------------------------------------
# noise model


def _interpolation_residuals(x: np.ndarray, y: np.ndarray, e: np.ndarray | None) -> np.ndarray:
    """Residual of each interior point from the line through its neighbours, in units of its s.d."""
    left, right = x[1:-1] - x[:-2], x[2:] - x[1:-1]
    a, b = right / (left + right), left / (left + right)  # weights of the left and right neighbours
    r = y[1:-1] - (a * y[:-2] + b * y[2:])
    if e is None:
        return r / np.sqrt(1 + a**2 + b**2)
    return r / np.sqrt(e[1:-1] ** 2 + (a * e[:-2]) ** 2 + (b * e[2:]) ** 2)


def _pooled(errors: np.ndarray, window: int) -> np.ndarray:
    """Root mean square of the errors over a centred window (the pooled standard error)."""
    if window <= 1:
        return errors.copy()
    half = window // 2
    padded = np.pad(errors**2, half, mode="reflect" if len(errors) > half else "edge")
    return np.sqrt(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1).mean(axis=1))


def _effective_errors(
    x: np.ndarray,
    y: np.ndarray,
    errors: np.ndarray | None,
    *,
    error_smoothing: int,
    rescale_errors: bool,
    error_floor: float | None,
) -> np.ndarray:
    """The error bars the detector uses: pooled, scaled up if the values scatter more, floored."""
    span = float(np.ptp(y))
    reference = max(span, float(np.max(np.abs(y)))) or 1.0  # a constant zero series still gets a scale
    floor = max(error_floor if error_floor is not None else 1e-3 * span, 1e-9 * reference)
    if errors is None:
        # noise estimated from the scatter about the line through each point's neighbours (robust to jumps)
        z = _interpolation_residuals(x, y, None)
        sigma = _trimmed_scale(z) if len(z) else 0.0
        return np.full_like(y, max(sigma, floor))
    e = _pooled(errors, error_smoothing)
    scale = 1.0
    if rescale_errors and len(y) >= 8:
        z = _interpolation_residuals(x, y, np.maximum(e, floor))
        # scatter beyond what sampling noise of the scale estimate explains (2.5 standard errors)
        scale = max(1.0, _trimmed_scale(z) - 2.5 * 0.8 / math.sqrt(len(z)))
    return np.maximum(e * scale, floor)


def _trimmed_scale(z: np.ndarray, keep: float = 0.9) -> float:
    """Standard deviation of ``z`` from the smallest ``keep`` share of ``|z|``, ignoring jumps.

    Consistent for normal data, with a standard error of about ``0.8 / sqrt(len(z))``.
    """
    from scipy import stats

    k = math.ceil(keep * len(z))
    kept = np.sort(np.abs(z))[:k]
    p = k / len(z)
    q = stats.norm.ppf(0.5 + 0.5 * p) if p < 1 else math.inf
    mean_square = (stats.chi2.cdf(q * q, 3) if math.isfinite(q) else 1.0) / p
    return float(np.sqrt(np.mean(kept**2) / mean_square))


# --------------------------------------------------------------------------------------------------
# segmentation


def _cumulative(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    sums = np.stack([w, w * x, w * x * x, w * y, w * x * y, w * y * y])
    return np.concatenate([np.zeros((6, 1)), np.cumsum(sums, axis=1)], axis=1)


def _line_fit(c: np.ndarray, start: int, end: int) -> tuple[float, float, float, float, float, float]:
    """Weighted least-squares line on points ``[start, end)``.

    Returns (mean x, level at mean x, slope, variance of that level, variance of the slope, chi-square).
    """
    s0, sx, sxx, sy, sxy, syy = c[:, end] - c[:, start]
    mx, my = sx / s0, sy / s0
    vxx = sxx - sx * mx
    vxy = sxy - sx * my
    vyy = syy - sy * my
    slope = vxy / vxx if vxx > 0 else 0.0
    chi2 = max(vyy - slope * vxy, 0.0)
    return mx, my, slope, 1.0 / s0, (1.0 / vxx if vxx > 0 else math.inf), chi2


def _make_cost(min_size: int):
    from ruptures.base import BaseCost

    class WeightedLinearCost(BaseCost):
        """Chi-square of a weighted straight-line fit: columns of the signal are (x, y, 1/error^2)."""

        model = "weighted_linear"

        def __init__(self) -> None:
            self.min_size = min_size
            self.signal: np.ndarray | None = None
            self._c: np.ndarray | None = None

        def fit(self, signal: np.ndarray) -> WeightedLinearCost:
            self.signal = signal
            self._c = _cumulative(signal[:, 0], signal[:, 1], signal[:, 2])
            return self

        def error(self, start: int, end: int) -> float:
            return _line_fit(self._c, start, end)[5]  # type: ignore[arg-type]

    return WeightedLinearCost()


def _segment(x: np.ndarray, y: np.ndarray, e: np.ndarray, *, penalty: float, min_size: int) -> list[int]:
    import ruptures

    signal = np.column_stack([x, y, 1.0 / e**2])
    algo = ruptures.Pelt(custom_cost=_make_cost(min_size), min_size=min_size, jump=1)
    return [0, *algo.fit(signal).predict(pen=penalty)]


# --------------------------------------------------------------------------------------------------
# events


@dataclass
class _Event:
    i0: int
    i1: int
    direction: int
    delta: float
    before: float
    after: float
    snr: float
    excess: float
    background: float

    @property
    def level(self) -> float:
        return max(abs(self.before), abs(self.after))


@dataclass
class _Fit:
    bounds: list[int]
    lines: list[tuple[float, float, float, float, float, float]]
    curve: np.ndarray
    sums: np.ndarray


def _fitted_line(c: np.ndarray, start: int, end: int) -> tuple[float, float, float, float, float, float]:
    """:func:`_line_fit` with its variances scaled up by the reduced chi-square when that exceeds 1.

    A line that does not fit its points (curvature) knows its level and slope less well.
    """
    mx, my, slope, var_level, var_slope, chi2 = _line_fit(c, start, end)
    misfit = max(1.0, chi2 / (end - start - 2)) if end - start > 2 else 1.0
    return mx, my, slope, var_level * misfit, var_slope * misfit, chi2


def _fit_segments(x: np.ndarray, y: np.ndarray, e: np.ndarray, penalty: float, min_size: int) -> _Fit:
    bounds = _segment(x, y, e, penalty=penalty, min_size=min_size)
    c = _cumulative(x, y, 1.0 / e**2)
    lines = [_fitted_line(c, a, b) for a, b in pairwise(bounds)]
    curve = np.empty_like(y)
    for (a, b), (mx, my, slope, *_rest) in zip(pairwise(bounds), lines):
        curve[a:b] = my + slope * (x[a:b] - mx)
    return _Fit(bounds, lines, curve, c)


def _level(line: tuple[float, ...], at: float) -> tuple[float, float]:
    mx, my, slope, var_level, var_slope, _ = line
    return my + slope * (at - mx), var_level + (at - mx) ** 2 * var_slope


def _find_events(
    x: np.ndarray,
    y: np.ndarray,
    e: np.ndarray,
    *,
    penalty: float,
    min_size: int,
    min_snr: float,
    min_rel_change: float,
    flank_window: int,
    log_values: bool = False,
) -> tuple[list[_Event], _Fit]:
    fit = _fit_segments(x, y, e, penalty, min_size)
    bounds, lines = fit.bounds, fit.lines
    k = len(lines)
    candidates: list[_Event] = []
    for left in range(k - 1):
        for right in range(left + 1, k):
            lo, hi = bounds[left], bounds[right + 1]
            base0, base1 = bounds[left + 1] - 1, bounds[right]
            best: _Event | None = None
            # the change may start up to REFINE checkpoints before the left flank ends and end up to REFINE
            # after the right flank starts: breaks often leave a checkpoint of a ramp in a flank
            for s0 in range(REFINE + 1):
                for s1 in range(REFINE + 1):
                    i0, i1 = base0 - s0, base1 + s1
                    if i0 < lo + 2 or i1 > hi - 3:
                        continue
                    cand = _evaluate(x, fit.sums, i0, i1, lo, hi, flank_window)
                    if cand is not None and (best is None or cand.snr > best.snr):
                        best = cand
            if best is None or best.snr < min_snr:
                continue
            # relative size of the excess change, in the measure's own units
            rel = 1 - 10 ** -abs(best.excess) if log_values else abs(best.excess) / max(best.level, 1e-300)
            if rel < min_rel_change:
                continue
            if not _inside_moves_along(lines, left, right, best.direction, best.background):
                continue
            candidates.append(best)
    chosen: list[_Event] = []
    for cand in sorted(candidates, key=lambda ev: -ev.snr):
        if any(c.direction == cand.direction and min(c.i1, cand.i1) > max(c.i0, cand.i0) for c in chosen):
            continue
        chosen.append(cand)
    return sorted(chosen, key=lambda ev: ev.i0), fit


def _evaluate(
    x: np.ndarray, sums: np.ndarray, i0: int, i1: int, lo: int, hi: int, window: int
) -> _Event | None:
    """Score a change from checkpoint ``i0`` to checkpoint ``i1``.

    The levels before and after are read at ``x[i0]`` and ``x[i1]`` off lines through up to ``window``
    checkpoints ending at ``i0`` (not before ``lo``) and starting at ``i1`` (before ``hi``).
    """
    a, b = max(lo, i0 + 1 - window), min(hi, i1 + window)
    if i0 + 1 - a < 3 or b - i1 < 3:
        return None
    left_line, right_line = _fitted_line(sums, a, i0 + 1), _fitted_line(sums, i1, b)
    before, var_before = _level(left_line, x[i0])
    after, var_after = _level(right_line, x[i1])
    delta = after - before
    if delta == 0:
        return None
    d = 1 if delta > 0 else -1
    width = x[i1] - x[i0]
    # background: the steeper flank trend in the direction of the change (none if neither moves so)
    flank = max((left_line, right_line), key=lambda line: d * line[2])
    background = d * max(0.0, d * flank[2])
    var_background = flank[4] if background != 0.0 else 0.0
    excess = delta - background * width
    var = var_before + var_after + var_background * width**2
    snr = d * excess / math.sqrt(var) if var > 0 else math.inf
    return _Event(i0, i1, d, delta, before, after, snr, excess, background)


def _inside_moves_along(lines: list, left: int, right: int, d: int, background: float) -> bool:
    """Every segment strictly inside the run is steeper than the background by one standard error."""
    for j in range(left + 1, right):
        slope, var_slope = lines[j][2], lines[j][4]
        if d * slope - d * background < math.sqrt(var_slope):
            return False
    return True


def _smoothed_slopes(x: np.ndarray, y: np.ndarray, e: np.ndarray, half_window: int = 2) -> np.ndarray:
    """Weighted local-linear slope across each gap (i, i+1), fitted on ``half_window`` points each side."""
    n = len(x)
    w = 1.0 / e**2
    slopes = np.empty(n - 1)
    for i in range(n - 1):
        lo, hi = max(0, i - half_window + 1), min(n, i + 1 + half_window)
        xs, ys, ws = x[lo:hi], y[lo:hi], w[lo:hi]
        mx = np.sum(ws * xs) / np.sum(ws)
        my = np.sum(ws * ys) / np.sum(ws)
        slopes[i] = np.sum(ws * (xs - mx) * (ys - my)) / np.sum(ws * (xs - mx) ** 2)
    return slopes


def student_threshold(min_snr: float, dof: float) -> float:
    """The Student-t quantile with ``dof`` degrees of freedom that has the normal tail of ``min_snr``.

    An snr computed with estimated error bars is t- rather than normally distributed; gating it at this
    threshold keeps the false-alarm rate that ``min_snr`` promises for exact error bars.
    """
    from scipy import stats

    return float(stats.t.isf(stats.norm.sf(min_snr), dof))


def default_penalty(n: int) -> float:
    """The default segmentation penalty, ``5 log n`` in chi-square units (see :func:`detect_transitions`)."""
    return 5.0 * math.log(n)


def detect_transitions(
    series: Any,
    *,
    measure: str | None = "llc",
    axis: str = "log",
    min_snr: float = DEFAULT_MIN_SNR,
    min_rel_change: float = 0.1,
    value_scale: str = "linear",
    penalty: float | None = None,
    min_size: int = 3,
    flank_window: int = 16,
    n_bootstrap: int = 100,
    drop_fraction: float = 0.1,
    error_smoothing: int = 11,
    rescale_errors: bool = True,
    error_floor: float | None = None,
    error_dof: float | None = None,
    dropna: bool = False,
    seed: int = 0,
) -> list[Transition]:
    """Find rises and falls of a measure over training that stand out from its noise and its drift.

    Parameters
    ----------
    series : tuple of arrays, DataFrame, mapping or Trajectory-like object
        ``(steps, values, errors)`` with per-checkpoint standard errors; ``(steps, values)``, the noise
        then being estimated from the scatter of the values; ``(steps, per_chain)`` with ``per_chain`` of
        shape ``(checkpoints, chains)`` (errors from the spread of the chains, confidence from resampling
        chains); or an object with ``to_dataframe()`` (a ``Trajectory``), a ``DataFrame`` or a mapping,
        read by column name: ``step`` (or ``steps``, or the index), values from ``measure``,
        ``measure_mean`` or ``measure_value``, errors from ``measure_stderr`` (or ``_se``, ``_err``,
        ``_error``, ``_std_err``), per-chain values from ``measure_per_chain`` or, for a
        :class:`slt.Trajectory`, from its per-checkpoint results (``trajectory.llc[i].per_chain``): the
        chains then set ``error_dof`` and the bootstrap resamples them. Objects without
        ``to_dataframe`` are read through attributes of those names (``steps``, ``llc``, ...). Failed
        checkpoints of a trajectory hold NaN: pass ``dropna=True`` (as :meth:`slt.Trajectory.transitions`
        does).
    measure : str, optional
        Which measure of a table or object to analyze (``"llc"``, ``"train_loss"``, ...); with arrays it
        only labels the events.
    axis : {"log", "linear"}
        Time axis on which segments are straight lines and slopes are measured: ``log10(step)``, the
        default, because training changes on a logarithmic clock and checkpoints are usually spaced that
        way; or ``step``. The axis moves the steepest point; say which one you used.
    min_snr : float
        Minimum excess change over its standard error. With 3 (and the other defaults) the synthetic suite
        of ``benchmarks/transitions`` finds over 90% of jumps of 4 noise units or more within two
        checkpoints, with under 0.05 false events per drifting null series.
    min_rel_change : float
        Minimum excess change relative to ``max(|level before|, |level after|)``: tiny error bars make
        tiny changes significant, and 0.1 ignores changes under 10% of the level. Use 0 for measures that
        hover near zero.
    value_scale : {"linear", "log"}
        ``"log"`` analyzes ``log10(values)`` (errors by the delta method), for positive measures that span
        decades, such as λ̂ over a whole training run or losses: a fall from 10 to 1 then weighs as much as
        one from 100 to 10. ``delta`` and the levels are still reported in the measure's units,
        ``peak_slope`` in decades of the measure per unit of the time axis.
    penalty : float, optional
        Segmentation penalty per segment in chi-square units; default ``5 log n``. The BIC value for a
        line and its break would be ``3 log n``; on the synthetic suite that lets the curvature of
        drifting series place breaks whose ends pass the gates (false events on 5% of the drifting
        null series with exact error bars, 12% with error bars from four chains), while ``5 log n``
        keeps both under 4% at the cost of one or two points of recall.
    min_size : int
        Minimum checkpoints per segment (at least 2). An event needs three checkpoints on each side, so a
        change at the very start or end of the series is not flagged.
    flank_window : int
        Checkpoints of each flank used to measure the level beside a change. Lines through a whole long
        flank are precise but, on a curved flank, biased at its end, which turns curvature into false
        jumps; 16 balances the two on the suite.
    n_bootstrap : int
        Resamples for ``confidence``; 0 skips the bootstrap (``confidence`` is NaN).
    drop_fraction : float
        Share of checkpoints left out of each resample, which tests that no event rests on one point.
    error_smoothing : int
        Window of checkpoints over which the stated errors are pooled (root mean square; 1 disables).
        Standard errors from a few chains scatter widely (from four chains, by about a factor of two),
        and one lucky tiny error bar would pin the fit; pooling 11 gives each about ten times the degrees
        of freedom.
    rescale_errors : bool
        Scale the errors up when the values scatter about the line through their neighbours more than
        the errors say, by the robust excess over what chance explains. Never scales down.
    error_floor : float, optional
        Smallest error bar used; default 0.1% of the range of the values (keeps noiseless inputs such as
        accuracies well defined).
    error_dof : float, optional
        Degrees of freedom of each stated error (chains minus one for a standard error over chains; set
        automatically for per-chain input). The snr gate then uses the Student-t threshold with the same
        tail as ``min_snr`` for the pooled degrees of freedom, since estimated error bars make the snr
        heavier-tailed than normal.
    dropna : bool
        Leave out checkpoints with a non-finite value or error (failed checkpoints) instead of raising.
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    Transitions
        A list of :class:`Transition` sorted by position, whose ``notes`` say which checkpoints were
        left out (a step-0 checkpoint on the log axis, which has no place there; failed checkpoints with
        ``dropna``) and, when the list is empty, why nothing passed.

    Raises
    ------
    ValueError
        On mismatched lengths, non-finite or negative inputs, unsorted or negative steps (log axis),
        non-positive values with ``value_scale="log"``, too few checkpoints, an unknown measure or axis, or
        out-of-range settings.

    Notes
    -----
    *Segments.* PELT finds the exact optimum of the chi-square of straight-line fits plus ``penalty``
    per segment (a custom ``ruptures`` cost; the flank lines are also fitted this way).

    *Candidates and their size.* For each pair of segments (left flank, right flank), the change runs
    from the last checkpoint of the left flank to the first of the right one; it may also reach up to
    two checkpoints further into either flank, keeping the placement with the largest snr (breaks often
    leave a checkpoint of a ramp in a flank). The levels before and after come from straight lines through the
    ``flank_window`` checkpoints of each flank nearest the change (their variances scaled up by the
    reduced chi-square of the fit when above 1). The *background* is the steeper flank slope in the
    change's direction (zero if neither flank moves that way); the *excess* is the change minus the
    background times the width of the change, and the snr is the excess over its standard error.

    *Gates.* snr at least ``min_snr``; excess at least ``min_rel_change`` of the level; every segment
    inside the run steeper than the background by one standard error (so that two separate events
    with a plateau between them are not merged). Among overlapping events of one direction, the one
    with the larger snr is kept.

    *Steepest step.* The slope across each gap is the weighted least-squares slope of the two
    checkpoints on either side (a four-point smoothed derivative on the time axis); ``step`` is the
    midpoint of the gap inside the event where it is steepest in the event's direction.

    *Confidence.* Each resample leaves out ``drop_fraction`` of the checkpoints at random and redraws
    the values: around the fitted segments, within the (pooled) error bars; or, with per-chain input,
    by resampling the chains of each checkpoint. An event counts as found again when a resample has an
    event of the same direction overlapping it.
    """
    if axis not in _AXES:
        raise ValueError(f"axis must be 'log' or 'linear', got {axis!r}")
    if value_scale not in ("linear", "log"):
        raise ValueError(f"value_scale must be 'linear' or 'log', got {value_scale!r}")
    if not (isinstance(min_size, (int, np.integer)) and min_size >= 2):
        raise ValueError(f"min_size must be an integer >= 2, got {min_size!r}")
    if not (isinstance(flank_window, (int, np.integer)) and flank_window >= 3):
        raise ValueError(f"flank_window must be an integer >= 3, got {flank_window!r}")
    if not (math.isfinite(min_snr) and min_snr > 0):
        raise ValueError(f"min_snr must be a positive number, got {min_snr}")
    if not (math.isfinite(min_rel_change) and min_rel_change >= 0):
        raise ValueError(f"min_rel_change must be >= 0, got {min_rel_change}")
    if penalty is not None and not (math.isfinite(penalty) and penalty > 0):
        raise ValueError(f"penalty must be a positive number, got {penalty}; leave it None for 5 log n")
    if not (isinstance(n_bootstrap, (int, np.integer)) and n_bootstrap >= 0):
        raise ValueError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
    if not (0 <= drop_fraction < 0.5):
        raise ValueError(f"drop_fraction must be in [0, 0.5), got {drop_fraction}")
    if error_floor is not None and not (math.isfinite(error_floor) and error_floor >= 0):
        raise ValueError(f"error_floor must be >= 0, got {error_floor}")
    if error_dof is not None and not (math.isfinite(error_dof) and error_dof > 0):
        raise ValueError(f"error_dof must be a positive number (chains - 1), got {error_dof}")

    notes: list[str] = []
    data = _validate(
        _as_series(series, measure), axis=axis, min_size=int(min_size), dropna=dropna, notes=notes
    )
    steps, y, errors, chains = data.steps, data.values, data.errors, data.chains
    if chains is not None:
        if errors is None:
            errors = chains.std(axis=1, ddof=1) / math.sqrt(chains.shape[1])
        if error_dof is None:
            error_dof = chains.shape[1] - 1
    log_values = value_scale == "log"
    if log_values:
        if (y <= 0).any():
            i = int(np.flatnonzero(y <= 0)[0])
            raise ValueError(
                f"value_scale='log' needs positive values; checkpoint {i} (step {steps[i]:g}) has "
                f"{y[i]:.4g}: "
                "use value_scale='linear'"
            )
        errors = None if errors is None else errors / (y * math.log(10))
        y = np.log10(y)
        chains = None  # resample within the error bars instead: a chain mean can leave the positive axis
    x = np.log10(steps) if axis == "log" else steps.copy()
    # fit on a unit-free axis for numerical stability; slopes are converted back when reported
    xscale = float(x[-1] - x[0])
    u = (x - x[0]) / xscale
    e = _effective_errors(
        u,
        y,
        errors,
        error_smoothing=int(error_smoothing),
        rescale_errors=rescale_errors,
        error_floor=error_floor,
    )
    threshold = min_snr
    if error_dof is not None and errors is not None:
        threshold = student_threshold(min_snr, error_dof * max(1, int(error_smoothing)))
    settings = dict(
        penalty=default_penalty(len(y)) if penalty is None else float(penalty),
        min_size=int(min_size),
        min_snr=threshold,
        min_rel_change=min_rel_change,
        flank_window=int(flank_window),
        log_values=log_values,
    )
    events, fit = _find_events(u, y, e, **settings)
    edge = _edge_jump(steps, y, e, events, threshold=threshold, min_size=int(min_size), log_values=log_values)
    if not events:
        notes.append(_why_nothing(u, y, e, fit, settings, min_snr=threshold, min_rel_change=min_rel_change))
        return Transitions([], [*notes, *edge])
    notes += edge
    confidence = np.full(len(events), np.nan)
    if n_bootstrap > 0:
        # resamples count an event found at the default signal-to-noise or the given one if higher: with
        # min_snr lowered nearly every resample finds *some* overlapping change, and an event at snr 0.41
        # (a fall where the values rose) scored 96%
        floor = DEFAULT_MIN_SNR
        if error_dof is not None and errors is not None:
            floor = student_threshold(DEFAULT_MIN_SNR, error_dof * max(1, int(error_smoothing)))
        resampled = {**settings, "min_snr": max(threshold, floor)}
        confidence = _bootstrap_confidence(
            events, u, y, e, fit.curve, chains, resampled, n_bootstrap, drop_fraction, seed
        )
    slopes = _smoothed_slopes(u, y, e) / xscale
    return Transitions(
        [
            _to_transition(ev, conf, steps, x, slopes, axis=axis, log_values=log_values, measure=data.measure)
            for ev, conf in zip(events, confidence)
        ],
        notes,
    )


class Transitions(list):
    """The events found (a list of :class:`Transition`), with ``notes`` on how the series was read.

    ``notes`` says which checkpoints were left out (step 0 on the log axis, failed checkpoints) and,
    when nothing was found, why: no change of slope at all, or the strongest change and the threshold
    it missed.
    """

    def __init__(self, events: Sequence[Transition] = (), notes: Sequence[str] = ()):
        super().__init__(events)
        self.notes = list(notes)


def _edge_jump(
    steps: np.ndarray,
    y: np.ndarray,
    e: np.ndarray,
    events: list,
    *,
    threshold: float,
    min_size: int,
    log_values: bool,
) -> list[str]:
    """A note on a jump between neighbours too near an end of the series for an event to be tested there.

    An event needs ``min_size`` checkpoints on each side, so a change between the first (or last)
    ``min_size`` checkpoints is never flagged; the note names the largest such jump when it exceeds the
    signal-to-noise ``threshold`` and no event covers it (empty list otherwise).
    """
    n = len(y)
    if n < 2:
        return []
    gaps = [i for i in range(n - 1) if i + 1 < min_size or n - 1 - i < min_size]
    gaps = [i for i in gaps if not any(ev.i0 <= i < ev.i1 for ev in events)]
    if not gaps:
        return []
    z = np.array([abs(y[i + 1] - y[i]) / math.hypot(e[i], e[i + 1]) for i in gaps])
    k = int(np.nanargmax(z)) if np.isfinite(z).any() else -1
    if k < 0 or not z[k] >= threshold:
        return []
    i = gaps[k]
    a, b = (10 ** y[i], 10 ** y[i + 1]) if log_values else (y[i], y[i + 1])
    side = "start" if i + 1 < min_size else "end"
    more = f"before step {steps[i]:g}" if side == "start" else f"after step {steps[i + 1]:g}"
    return [
        f"the change from {a:.4g} to {b:.4g} between steps {steps[i]:g} and {steps[i + 1]:g} "
        f"({z[k]:.1f} standard errors) lies within min_size={min_size} checkpoints of the series' {side}, "
        f"where no event can be tested (each side needs {min_size}): measure checkpoints {more} to test it"
    ]


def _why_nothing(
    u: np.ndarray,
    y: np.ndarray,
    e: np.ndarray,
    fit: Any,
    settings: dict[str, Any],
    *,
    min_snr: float,
    min_rel_change: float,
) -> str:
    """One sentence on why no event passed: no break in the fit, or the best change's shortfall."""
    if len(fit.lines) < 2:
        return (
            f"no transition: the segmentation found no change of slope in {len(y)} checkpoints (the series "
            f"is one straight line within its noise at penalty {settings['penalty']:.3g})"
        )
    loose, _ = _find_events(u, y, e, **{**settings, "min_snr": 0.0, "min_rel_change": 0.0})
    if not loose:
        return (
            f"no transition: the segmentation found {len(fit.lines)} straight pieces, but no change between "
            "them stands out from the trend of its flanks"
        )
    best = max(loose, key=lambda ev: ev.snr)
    log_values = settings.get("log_values", False)
    rel = 1 - 10 ** -abs(best.excess) if log_values else abs(best.excess) / max(best.level, 1e-300)
    return (
        f"no transition: the strongest change has signal-to-noise {best.snr:.2f} (needed {min_snr:.2f}) and "
        f"relative size {rel:.1%} (needed {min_rel_change:.0%}); lower min_snr or min_rel_change to see it "
        "(its confidence then counts the resamples that find it at the default signal-to-noise)"
    )


def _to_transition(
    ev: _Event,
    confidence: float,
    steps: np.ndarray,
    x: np.ndarray,
    slopes: np.ndarray,
    *,
    axis: str,
    log_values: bool,
    measure: str | None,
) -> Transition:
    gaps = np.arange(ev.i0, ev.i1)
    j = int(gaps[np.argmax(ev.direction * slopes[gaps])])
    mid = 0.5 * (x[j] + x[j + 1])
    before, after = (10**ev.before, 10**ev.after) if log_values else (ev.before, ev.after)
    level = max(abs(before), abs(after))
    return Transition(
        start=float(steps[ev.i0]),
        end=float(steps[ev.i1]),
        step=float(10**mid if axis == "log" else mid),
        direction="rise" if ev.direction > 0 else "fall",
        delta=float(after - before),
        rel_delta=float((after - before) / level) if level > 0 else float(ev.direction * math.inf),
        peak_slope=float(slopes[j]),
        snr=float(ev.snr),
        confidence=float(confidence),
        start_index=int(ev.i0),
        end_index=int(ev.i1),
        step_index=j + 0.5,
        level_before=float(before),
        level_after=float(after),
        measure=measure,
        axis=axis,
    )


def _bootstrap_confidence(
    events: list[_Event],
    u: np.ndarray,
    y: np.ndarray,
    e: np.ndarray,
    curve: np.ndarray,
    chains: np.ndarray | None,
    settings: dict[str, Any],
    n_bootstrap: int,
    drop_fraction: float,
    seed: int,
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(y)
    hits = np.zeros(len(events))
    needed = 2 * settings["min_size"] + 1
    for _ in range(n_bootstrap):
        keep = rng.random(n) >= drop_fraction
        if keep.sum() < needed:
            keep[:] = True
        idx = np.flatnonzero(keep)
        if chains is not None:
            c = chains.shape[1]
            pick = rng.integers(0, c, size=(n, c))
            y_star = np.take_along_axis(chains, pick, axis=1).mean(axis=1)
        else:
            y_star = curve + e * rng.standard_normal(n)
        found, _ = _find_events(u[idx], y_star[idx], e[idx], **settings)
        for k, ev in enumerate(events):
            for f in found:
                a, b = idx[f.i0], idx[f.i1]
                if f.direction == ev.direction and min(b, ev.i1) > max(a, ev.i0):
                    hits[k] += 1
                    break
    return hits / n_bootstrap


# --------------------------------------------------------------------------------------------------
# reporting


def transitions_frame(transitions: Sequence[Transition]):
    """The events as a pandas ``DataFrame``, one row each."""
    import pandas as pd

    columns = list(Transition.__dataclass_fields__)
    return pd.DataFrame([t.to_dict() for t in transitions], columns=columns)


def transitions_markdown(transitions: Sequence[Transition], *, digits: int = 3) -> str:
    """A markdown table of the events, one row each."""
    columns = ["measure", "direction", "start", "end", "steepest step", "delta", "rel. change", "peak slope"]
    columns += ["snr", "confidence"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for t in transitions:
        conf = "n/a" if math.isnan(t.confidence) else f"{t.confidence:.0%}"
        cells = [t.measure or "", t.direction, f"{t.start:g}", f"{t.end:g}", f"{t.step:.{digits + 1}g}"]
        cells += [f"{t.delta:+.{digits}g}", f"{t.rel_delta:+.0%}", f"{t.peak_slope:+.{digits}g}"]
        cells += [f"{t.snr:.1f}", conf]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_transitions(
    ax: Any, transitions: Sequence[Transition], *, annotate: bool = True, alpha: float = 0.15
) -> list:
    """Mark events on a matplotlib axis whose x axis is the training step.

    Each event gets a shaded span from ``start`` to ``end`` (green for a rise, red for a fall) and a
    dashed line at its steepest step, labelled with the relative change and the confidence.

    Returns
    -------
    list
        The matplotlib artists added.
    """
    artists = []
    for t in transitions:
        color = "tab:green" if t.direction == "rise" else "tab:red"
        artists.append(ax.axvspan(t.start, t.end, color=color, alpha=alpha, lw=0))
        artists.append(ax.axvline(t.step, color=color, ls="--", lw=1.0))
        if annotate:
            conf = "" if math.isnan(t.confidence) else f" ({t.confidence:.0%})"
            label = f"{'↑' if t.direction == 'rise' else '↓'}{abs(t.rel_delta):.0%}{conf}"
            artists.append(
                ax.annotate(
                    label,
                    xy=(t.step, 1.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(2, -2),
                    textcoords="offset points",
                    ha="left",
                    va="top",
                    fontsize=7,
                    color=color,
                )
            )
    return artists
