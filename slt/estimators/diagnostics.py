"""Chain diagnostics: effective sample size, split R-hat, trends and divergences.

ESS and R-hat come from arviz (rank-normalized split R-hat and bulk ESS, Vehtari et al. 2021).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ChainDiagnostics",
    "diagnose",
    "trend_z",
    "trend_threshold",
    "import_arviz",
    "RHAT_MAX",
    "CALIBRATION_TREND_Z",
]

#: Split R-hat above which chains are said to disagree (Vehtari et al. 2021 recommend 1.01 for
#: publication-grade runs; 1.1 is the classic Gelman-Rubin screen, loose enough for short LLC chains).
RHAT_MAX = 1.1
#: ``|trend z|`` above which calibrate calls a setting unhealthy: a fixed screen, stricter than the
#: per-estimate :func:`trend_threshold` with few chains (7.5 at four chains), because calibrate compares
#: settings against each other and a drifting one must not be recommended.
CALIBRATION_TREND_Z = 4.0


@dataclass
class ChainDiagnostics:
    """Health of a set of chains.

    Attributes
    ----------
    ess : float
        Bulk effective sample size of the per-draw trace, pooled over healthy chains.
    rhat : float
        Rank-normalized split R-hat across healthy chains (NaN with one chain).
    trend_z : float
        Difference between the means of the last and first quarters of the draws, in units of its
        standard error. Large values mean the trace is still drifting: burn-in was too short.
    diverged : ndarray of bool, shape (chains,)
        Chains that hit a non-finite loss.
    divergence_step : ndarray of int, shape (chains,)
        Step (counting burn-in) where each chain first hit a non-finite loss; -1 when healthy.
    unstable : ndarray of bool, shape (chains,)
        Chains past the step's stability limit (:func:`slt.tuning.unstable_chains`): finite but left out of
        the estimate like diverged ones. Empty (none) for results stored before this check existed.
    """

    ess: float
    rhat: float
    trend_z: float
    diverged: np.ndarray
    divergence_step: np.ndarray
    unstable: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def excluded(self) -> np.ndarray:
        """Boolean per chain: left out of the estimate (diverged, or past the stability limit)."""
        unstable = np.asarray(self.unstable, dtype=bool)
        return self.diverged | unstable if unstable.shape == self.diverged.shape else self.diverged

    @property
    def healthy_chains(self) -> np.ndarray:
        """Indices of the chains in the estimate: neither diverged nor past the stability limit."""
        return np.flatnonzero(~self.excluded)


def _arviz_stat(name: str, trace: np.ndarray) -> float:
    if trace.shape[0] == 0 or trace.shape[1] < 4 or not np.all(np.isfinite(trace)):
        return float("nan")
    if name == "rhat" and trace.shape[0] < 2:
        return float("nan")
    az = import_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = az.rhat(trace) if name == "rhat" else az.ess(trace)
    return float(value)


def import_arviz():
    """Import arviz without its import-time ``FutureWarning`` about the 1.0 refactor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def trend_z(trace: np.ndarray) -> float:
    """Drift of a ``(chains, draws)`` trace: (last-quarter mean - first-quarter mean) / its standard error.

    The standard error uses the spread of the per-chain differences when there are several chains,
    else the within-quarter variance corrected by a crude autocorrelation time.
    """
    trace = np.asarray(trace, dtype=float)
    if trace.ndim != 2 or trace.shape[1] < 8 or trace.shape[0] == 0:
        return float("nan")
    q = trace.shape[1] // 4
    first, last = trace[:, :q], trace[:, -q:]
    diffs = last.mean(axis=1) - first.mean(axis=1)
    if trace.shape[0] >= 3:
        se = diffs.std(ddof=1) / np.sqrt(len(diffs))
    else:
        ess = max(_arviz_stat("ess", trace), 2.0)
        var = 0.5 * (first.var() + last.var())
        se = np.sqrt(2 * var / max(ess / 4, 1.0))
    mean_diff = diffs.mean()
    if se == 0:
        return 0.0 if mean_diff == 0 else float(np.sign(mean_diff) * np.inf)
    return float(mean_diff / se)


def trend_threshold(num_chains: int, p_value: float = 0.005) -> float:
    """``|trend_z|`` above which a drift is significant at two-sided level ``p_value``.

    With three or more chains ``trend_z`` is a t statistic with ``num_chains - 1`` degrees of freedom
    (four chains: 7.5; eight: 4.0; sixteen: 3.3); with fewer it is treated as normal (2.8).
    """
    from scipy import stats

    if num_chains >= 3:
        return float(stats.t.ppf(1 - p_value / 2, num_chains - 1))
    return float(stats.norm.ppf(1 - p_value / 2))


def diagnose(
    trace: np.ndarray, divergence_step: np.ndarray, unstable: np.ndarray | None = None
) -> ChainDiagnostics:
    """Compute :class:`ChainDiagnostics` for a ``(chains, draws)`` trace, over the chains kept.

    ``unstable`` (bool, shape (chains,)) marks chains to leave out besides the diverged ones.
    """
    divergence_step = np.asarray(divergence_step, dtype=np.int64)
    diverged = divergence_step >= 0
    unstable = np.zeros_like(diverged) if unstable is None else np.asarray(unstable, dtype=bool) & ~diverged
    healthy = trace[~(diverged | unstable)]
    return ChainDiagnostics(
        ess=_arviz_stat("ess", healthy),
        rhat=_arviz_stat("rhat", healthy),
        trend_z=trend_z(healthy),
        diverged=diverged,
        divergence_step=divergence_step,
        unstable=unstable,
    )
