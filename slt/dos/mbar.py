r"""Multistate reweighting (MBAR, equivalently binless WHAM) of samples pooled over a temperature ladder.

Rung :math:`k` has reduced potential :math:`u_k(w) = x_k\, t(w)` plus the localizer, which every rung
shares and which therefore cancels. The MBAR free energies :math:`f_k` solve

.. math::

    f_k = -\log \sum_n \frac{e^{-x_k t_n}}{\sum_l N_l\, e^{f_l - x_l t_n}},

the stationary point of the convex function
:math:`F(f) = \sum_n \log \sum_k N_k e^{f_k - x_k t_n} - \sum_k N_k f_k` (Shirts & Chodera 2008), which
this module minimizes by Newton's method with :math:`f_0 = 0`. Each sample then carries the weight
:math:`W_n = 1 / \sum_l N_l e^{f_l - x_l t_n}` under the localizer alone, so a histogram of :math:`t_n`
weighted by :math:`W_n` estimates the density of states :math:`v(t)` up to a constant.

Everything works on *binned* samples: ``t`` holds the mean of each fine bin and ``counts[k, g]`` the
number of rung-:math:`k` samples in bin :math:`g`. With bins much narrower than the spread of any rung
this equals binless MBAR (each sample its own bin is exactly binless), and it makes a bootstrap over
chains cheap: resampling chains only changes ``counts``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

__all__ = ["solve_free_energies", "log_weights", "overlap_matrix"]


def _log_terms(f: np.ndarray, log_n: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    r""":math:`\log N_k + f_k - x_k t_g`, shape ``(bins, rungs)``."""
    return log_n[None, :] + f[None, :] - np.outer(t, x)


def solve_free_energies(
    t: np.ndarray,
    counts: np.ndarray,
    temperatures: np.ndarray,
    *,
    initial: np.ndarray | None = None,
    tolerance: float = 1e-10,
    max_iterations: int = 200,
) -> np.ndarray:
    """MBAR free energies :math:`f_k` (with :math:`f_0 = 0`) from binned samples.

    Parameters
    ----------
    t : ndarray, shape (bins,)
        Value of :math:`t` representing each bin (the mean of its samples).
    counts : ndarray, shape (rungs, bins)
        Samples of each rung in each bin.
    temperatures : ndarray, shape (rungs,)
        Inverse temperatures :math:`x_k`.
    initial : ndarray, optional
        Starting free energies (a previous solution speeds up bootstrap resamples).

    Returns
    -------
    ndarray, shape (rungs,)
    """
    counts = np.asarray(counts, dtype=float)
    x = np.asarray(temperatures, dtype=float)
    occupied = counts.sum(0) > 0
    t, counts = np.asarray(t, dtype=float)[occupied], counts[:, occupied]
    n_k = counts.sum(1)
    if np.any(n_k <= 0):
        raise ValueError("every rung needs at least one finite sample for reweighting")
    multiplicity = counts.sum(0)
    log_n = np.log(n_k)
    if initial is None:
        # a cheap start: each rung's own mean of x t (exact for a quadratic potential up to constants)
        f = np.zeros(len(x))
        mean_t = (counts @ t) / n_k
        f = np.cumsum(np.concatenate([[0.0], np.diff(x) * 0.5 * (mean_t[1:] + mean_t[:-1])]))
    else:
        f = np.array(initial, dtype=float) - initial[0]
    objective = _objective(f, log_n, x, t, multiplicity, n_k)
    for _ in range(max_iterations):
        terms = _log_terms(f, log_n, x, t)
        p = np.exp(terms - logsumexp(terms, axis=1, keepdims=True))  # (bins, rungs)
        weighted = p * multiplicity[:, None]
        gradient = weighted.sum(0) - n_k
        hessian = np.diag(weighted.sum(0)) - p.T @ weighted
        g, h = gradient[1:], hessian[1:, 1:]
        if np.max(np.abs(g)) <= tolerance * max(n_k.sum(), 1.0):
            break
        h = h + 1e-12 * np.trace(h) / max(len(h), 1) * np.eye(len(h))
        try:
            direction = -np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            direction = -g / max(np.abs(np.diag(h)).max(), 1.0)
        decrement = -float(g @ direction)
        if decrement < 1e-12 * max(n_k.sum(), 1.0):  # Newton decrement: converged to rounding
            break
        step = 1.0
        while step > 1e-8:
            trial = f.copy()
            trial[1:] += step * direction
            value = _objective(trial, log_n, x, t, multiplicity, n_k)
            if value <= objective - 1e-4 * step * decrement:
                break
            step *= 0.5
        else:  # no decrease along the Newton direction: at the minimum up to rounding
            break
        f, objective = trial, value
    return f - f[0]


def _objective(f, log_n, x, t, multiplicity, n_k) -> float:
    terms = _log_terms(f, log_n, x, t)
    return float(multiplicity @ logsumexp(terms, axis=1) - n_k @ f)


def log_weights(f: np.ndarray, n_k: np.ndarray, temperatures: np.ndarray, t: np.ndarray) -> np.ndarray:
    r""":math:`\log W(t) = -\log \sum_l N_l e^{f_l - x_l t}`: the log weight of a sample at ``t``."""
    with np.errstate(divide="ignore"):
        log_n = np.log(np.asarray(n_k, dtype=float))
    return -logsumexp(
        _log_terms(np.asarray(f), log_n, np.asarray(temperatures, dtype=float), np.asarray(t)), axis=1
    )


def overlap_matrix(f: np.ndarray, t: np.ndarray, counts: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    r"""The MBAR overlap matrix between rungs.

    With :math:`w_{nk} = e^{f_k - x_k t_n} W_n` (the normalized weight of sample :math:`n` in state
    :math:`k`), :math:`O_{kl} = N_l \sum_n w_{nk} w_{nl}`; rows sum to one. Neighbouring rungs whose
    entry is below about 0.03 share too few samples for reweighting to be trusted (Klimovich, Shirts &
    Mobley 2015).
    """
    counts = np.asarray(counts, dtype=float)
    multiplicity = counts.sum(0)
    n_k = counts.sum(1)
    x = np.asarray(temperatures, dtype=float)
    log_w = log_weights(f, n_k, x, t)
    w = np.exp(np.asarray(f)[None, :] - np.outer(t, x) + log_w[:, None])  # (bins, rungs)
    return (w * multiplicity[:, None]).T @ w * n_k[None, :]
