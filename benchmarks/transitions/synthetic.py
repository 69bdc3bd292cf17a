"""Synthetic series with known transitions, and the scores of a detector on them.

Every series lives on a realistic checkpoint grid (log-spaced steps from 10 to 10^4, often merged with
linear-spaced ones, as training scripts save them) and carries heteroscedastic Gaussian noise whose s.d.
varies smoothly along the series by up to a factor of four. The stated error bars are either the true
s.d. (``errors="exact"``) or what four chains would report (``errors="chains"``: the true s.d. times
``sqrt(chi2_3 / 3)``, which scatters by about a factor of two).

Families
--------
``steps``
    Piecewise constant in log step: one or two jumps between neighbouring checkpoints.
``ramps``
    Piecewise linear in log step: plateaus joined by linear ramps spanning 2 to 8 checkpoint gaps.
``steps+drift``, ``ramps+drift``
    The same on top of a smooth drift of 1 to 4 noise units.
``null-flat``, ``null-linear``, ``null-saturating``, ``null-quadratic``, ``null-power``
    No transition: noise only, or a smooth monotone drift of 2 to 20 noise units over the series (linear
    in log step; saturating ``1 - exp(-u / tau)`` with ``tau`` down to a tenth of the range, as a loss
    curve; quadratic with its steep end at either side; a power law in step).

Jump sizes are in units of the local noise s.d. (the mean of the two checkpoints around the jump, or
the mean over the ramp). Levels stay within +-15 noise units, so the detector's default 10% gate on the
relative change never decides for jumps of 4 s.d. or more: the suite measures the statistical gates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

SIZES = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0)
SIGNAL_FAMILIES = ("steps", "ramps", "steps+drift", "ramps+drift")
NULL_FAMILIES = ("null-flat", "null-linear", "null-saturating", "null-quadratic", "null-power")
ERROR_MODES = ("exact", "chains")
#: Chains behind each stated error bar in the ``"chains"`` error model.
CHAINS = 4
#: A detection matches a true event of the same direction when its steepest step lies within this many
#: checkpoints of the true change (of its ramp, for ramps).
TOLERANCE = 2.0


@dataclass
class TrueEvent:
    """A planted transition: its gap positions (``i + 0.5`` between checkpoints i and i + 1)."""

    lo: float
    hi: float
    direction: int
    size: float

    @property
    def center(self) -> float:
        return 0.5 * (self.lo + self.hi)


@dataclass
class SyntheticSeries:
    family: str
    errors_mode: str
    steps: np.ndarray
    values: np.ndarray
    errors: np.ndarray
    sigma: np.ndarray
    truth: list[TrueEvent] = field(default_factory=list)


def checkpoint_grid(rng: np.random.Generator) -> np.ndarray:
    """Log-spaced steps from 10 to 10^4, merged half of the time with linear-spaced ones."""
    n_log = int(rng.choice([30, 50, 70]))
    n_lin = int(rng.choice([0, 0, 30, 50]))
    steps = np.geomspace(10, 1e4, n_log)
    if n_lin:
        steps = np.concatenate([steps, np.linspace(1e4 / n_lin, 1e4, n_lin)])
    return np.unique(np.round(steps).astype(int)).astype(float)


def noise_profile(u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth s.d. profile over ``u`` in [0, 1], geometric mean about 1, max/min up to 4."""
    log_sigma = rng.uniform(-0.45, 0.45) * (2 * u - 1) + rng.uniform(0, 0.25) * np.sin(
        2 * np.pi * rng.uniform(0.5, 2.0) * u + rng.uniform(0, 2 * np.pi)
    )
    return np.exp(log_sigma)


def drift(
    u: np.ndarray, steps: np.ndarray, kind: str, amplitude: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth monotone curve over ``u`` in [0, 1] that moves by ``amplitude`` in total."""
    sign = rng.choice([-1.0, 1.0])
    if kind == "linear":
        shape = u
    elif kind == "saturating":
        tau = rng.uniform(0.1, 0.5)
        shape = (1 - np.exp(-u / tau)) / (1 - np.exp(-1 / tau))
    elif kind == "quadratic":
        shape = u**2 if rng.random() < 0.5 else 1 - (1 - u) ** 2
    elif kind == "power":
        alpha = rng.uniform(-0.5, -0.2)
        shape = (steps**alpha - steps[0] ** alpha) / (steps[-1] ** alpha - steps[0] ** alpha)
    else:
        raise ValueError(f"unknown drift {kind!r}")
    return sign * amplitude * (shape - 0.5)


def _plant_events(
    n: int, sigma: np.ndarray, ramps: bool, rng: np.random.Generator, sizes: Sequence[float]
) -> tuple[np.ndarray, list[TrueEvent]]:
    count = int(rng.integers(1, 3))
    signal = np.zeros(n)
    level = rng.uniform(-5, 5)
    signal[:] = level
    events: list[TrueEvent] = []
    margin = 6
    # positions: the first checkpoint after the jump (or of the ramp's end); spaced at least 12 apart
    for _ in range(50):
        starts = np.sort(rng.integers(margin, n - margin - (8 if ramps else 0), size=count))
        if count == 1 or np.diff(starts).min() >= 12:
            break
    else:
        starts = starts[:1]
    for k in starts:
        k = int(k)
        width = int(rng.integers(2, 9)) if ramps else 1
        end = min(k + width - 1, n - margin)  # the change happens over gaps k-1 .. end-1
        size = float(rng.choice(sizes))
        local = float(sigma[k - 1 : end + 1].mean())
        amount = size * local
        options = [d for d in (-1, 1) if abs(level + d * amount) <= 12]
        direction = int(rng.choice(options)) if options else (-1 if level > 0 else 1)
        new_level = level + direction * amount
        if ramps:
            idx = np.arange(k - 1, end + 1)
            frac = (idx - (k - 1)) / (end - (k - 1))
            signal[k - 1 : end + 1] = level + direction * amount * frac
            signal[end + 1 :] = new_level
        else:
            signal[k:] = new_level
        events.append(TrueEvent(lo=k - 0.5, hi=end - 0.5, direction=direction, size=size))
        level = new_level
    return signal, events


def make_series(
    family: str, errors_mode: str, rng: np.random.Generator, sizes: Sequence[float] = SIZES
) -> SyntheticSeries:
    """One random series of ``family`` with stated errors of kind ``errors_mode``."""
    if errors_mode not in ERROR_MODES:
        raise ValueError(f"errors_mode must be one of {ERROR_MODES}")
    steps = checkpoint_grid(rng)
    n = len(steps)
    u = (np.log10(steps) - np.log10(steps[0])) / (np.log10(steps[-1]) - np.log10(steps[0]))
    sigma = noise_profile(u, rng)
    truth: list[TrueEvent] = []
    if family in SIGNAL_FAMILIES:
        signal, truth = _plant_events(n, sigma, family.startswith("ramps"), rng, sizes)
        if family.endswith("+drift"):
            kind = str(rng.choice(["linear", "saturating", "quadratic", "power"]))
            signal = signal + drift(u, steps, kind, rng.uniform(1, 4), rng)
    elif family in NULL_FAMILIES:
        kind = family.removeprefix("null-")
        signal = np.full(n, rng.uniform(-5, 5))
        if kind != "flat":
            signal = signal + drift(u, steps, kind, rng.uniform(2, 20), rng)
    else:
        raise ValueError(f"unknown family {family!r}")
    values = signal + sigma * rng.standard_normal(n)
    errors = (
        sigma if errors_mode == "exact" else sigma * np.sqrt(rng.chisquare(CHAINS - 1, size=n) / (CHAINS - 1))
    )
    return SyntheticSeries(family, errors_mode, steps, values, errors, sigma, truth)


@dataclass
class Scores:
    """Counts from which recall, precision and location error follow."""

    found: dict[float, int] = field(default_factory=dict)
    planted: dict[float, int] = field(default_factory=dict)
    location_errors: dict[float, list[float]] = field(default_factory=dict)
    detections: int = 0
    false_detections: int = 0
    series: int = 0
    seconds: float = 0.0

    def recall(self, min_size: float = 0.0, max_size: float = np.inf) -> float:
        keys = [s for s in self.planted if min_size <= s <= max_size]
        planted = sum(self.planted[s] for s in keys)
        return sum(self.found.get(s, 0) for s in keys) / planted if planted else float("nan")

    def location_error(self, min_size: float = 0.0) -> float:
        errs = [e for s, v in self.location_errors.items() if s >= min_size for e in v]
        return float(np.mean(errs)) if errs else float("nan")

    @property
    def precision(self) -> float:
        return 1 - self.false_detections / self.detections if self.detections else float("nan")

    @property
    def false_per_series(self) -> float:
        return self.false_detections / self.series if self.series else float("nan")


def match(
    truth: Sequence[TrueEvent], positions: Sequence[float], directions: Sequence[int]
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching of detections to planted events: (truth index, detection index, error)."""
    pairs = []
    for t, ev in enumerate(truth):
        for d, (pos, direction) in enumerate(zip(positions, directions)):
            if direction == ev.direction and ev.lo - TOLERANCE <= pos <= ev.hi + TOLERANCE:
                pairs.append((abs(pos - ev.center), t, d))
    used_t: set[int] = set()
    used_d: set[int] = set()
    out = []
    for err, t, d in sorted(pairs):
        if t not in used_t and d not in used_d:
            used_t.add(t)
            used_d.add(d)
            out.append((t, d, err))
    return out


Detector = Callable[[SyntheticSeries], tuple[list[float], list[int]]]


def slt_detector(**kwargs) -> Detector:
    """``slt.detect_transitions`` on the log axis (no bootstrap unless asked), as a benchmark detector."""
    from slt.transitions import detect_transitions

    kwargs.setdefault("n_bootstrap", 0)

    def detect(s: SyntheticSeries) -> tuple[list[float], list[int]]:
        options = dict(kwargs)
        if s.errors_mode == "chains":
            options.setdefault("error_dof", CHAINS - 1)  # the error bars come from 4 chains, and it is said
        events = detect_transitions((s.steps, s.values, s.errors), measure="synthetic", **options)
        return [e.step_index for e in events], [1 if e.direction == "rise" else -1 for e in events]

    return detect


def plain_pelt_detector(min_snr: float = 3.0) -> Detector:
    """The baseline: piecewise-constant PELT (``ruptures``, L2 cost, BIC-like penalty) on the values,
    every break kept when its jump between segment means is ``min_snr`` standard errors.

    What one would write first; it has no notion of drift, which is what the suite's null families
    probe.
    """
    import ruptures

    def detect(s: SyntheticSeries) -> tuple[list[float], list[int]]:
        n = len(s.values)
        sigma2 = float(np.median(s.errors**2))
        bounds = [
            0,
            *ruptures.Pelt(model="l2", min_size=2, jump=1).fit(s.values).predict(pen=2 * sigma2 * np.log(n)),
        ]
        positions, directions = [], []
        for a, b, c in zip(bounds[:-2], bounds[1:-1], bounds[2:]):
            left, right = s.values[a:b], s.values[b:c]
            var = np.sum(s.errors[a:b] ** 2) / (b - a) ** 2 + np.sum(s.errors[b:c] ** 2) / (c - b) ** 2
            jump = right.mean() - left.mean()
            if abs(jump) >= min_snr * np.sqrt(var):
                positions.append(b - 0.5)
                directions.append(1 if jump > 0 else -1)
        return positions, directions

    return detect


def score(
    detector: Detector,
    family: str,
    errors_mode: str,
    num_series: int,
    seed: int,
    sizes: Sequence[float] = SIZES,
) -> Scores:
    """Run ``detector`` on ``num_series`` seeded series of one family and count hits and false alarms."""
    rng = np.random.default_rng(seed)
    sc = Scores()
    start = time.perf_counter()
    for _ in range(num_series):
        s = make_series(family, errors_mode, rng, sizes)
        positions, directions = detector(s)
        pairs = match(s.truth, positions, directions)
        sc.series += 1
        sc.detections += len(positions)
        sc.false_detections += len(positions) - len(pairs)
        for ev in s.truth:
            sc.planted[ev.size] = sc.planted.get(ev.size, 0) + 1
        for t, _, err in pairs:
            size = s.truth[t].size
            sc.found[size] = sc.found.get(size, 0) + 1
            sc.location_errors.setdefault(size, []).append(err)
    sc.seconds = time.perf_counter() - start
    return sc
