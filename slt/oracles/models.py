r"""Models whose learning coefficient is known in closed form, and small factories for them.

Tests, benchmarks and tutorials share these as one source of truth.

* Two-layer reduced-rank regression (Aoyagi & Watanabe, 2005): :func:`rrr_lambda`.
* Deep linear networks (Aoyagi, 2024): :func:`dln_lambda`, :func:`deep_linear_network`.
* Normal crossings :math:`K(w) = \prod_i w_i^{2k_i}`: :func:`normal_crossing_lambda`,
  :class:`NormalCrossing`.
* One-hidden-layer tanh networks with zero true function: :func:`tanh_lambda`, :func:`tanh_network`.

The values the estimator targets at a finite nβ are in :mod:`slt.oracles.exact`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import Tensor, nn

__all__ = [
    "rrr_lambda",
    "dln_lambda",
    "normal_crossing_lambda",
    "tanh_lambda",
    "deep_linear_network",
    "linear_regression_data",
    "NormalCrossing",
    "regression_data",
    "tanh_network",
]


def _as_number(value: Fraction) -> float:
    return float(value)


def rrr_lambda(m_in: int, hidden: int, n_out: int, rank: int) -> tuple[float, int]:
    """Learning coefficient and multiplicity of two-layer reduced-rank regression.

    The model is :math:`y = BAx` with input size ``m_in`` (M), hidden size ``hidden`` (H), output size
    ``n_out`` (N), and the true product of rank ``rank`` (r) (Aoyagi & Watanabe, 2005).

    Returns
    -------
    (lambda, m) : tuple of float and int
    """
    M, H, N, r = m_in, hidden, n_out, rank
    _check_widths([M, H, N], r)
    if N + r > M + H:
        return (H * M - H * r + N * r) / 2, 1
    if M + r > N + H:
        return (H * N - H * r + M * r) / 2, 1
    if H + r > M + N:
        return M * N / 2, 1
    base = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
    if (M + H + N + r) % 2 == 0:
        return base / 8, 1
    return (base + 1) / 8, 2


def dln_lambda(widths: Sequence[int], rank: int) -> tuple[float, int]:
    r"""Learning coefficient and multiplicity of a deep linear network (Aoyagi, 2024).

    Parameters
    ----------
    widths : sequence of int
        Layer widths :math:`H_0` (input), :math:`H_1, \dots, H_L` (output); at least two.
    rank : int
        Rank r of the true end-to-end matrix, at most the smallest width.

    Returns
    -------
    (lambda, m) : tuple of float and int
        Values for the *global* learning coefficient, attained at the most singular points of the
        true parameter set (every layer of rank ``rank``).

    Notes
    -----
    With :math:`M_j = H_j - r`, :math:`\Sigma` is the set of the :math:`\ell + 1` smallest :math:`M_j`
    satisfying :math:`\max_\Sigma M < \min_{\bar\Sigma} M`, :math:`\sum_\Sigma M \ge \ell \max_\Sigma M`
    and :math:`\sum_\Sigma M < \ell \min_{\bar\Sigma} M`. With :math:`S = \sum_\Sigma M_j`,
    :math:`\bar M = \lceil S/\ell \rceil`, :math:`a = S - (\bar M - 1)\ell`:

    .. math::

        \lambda = \frac{r(H_0 + H_L) - r^2}{2} + \frac{a(\ell - a)}{4\ell}
            - \frac{\ell(\ell - 1)}{4}\Big(\frac{S}{\ell}\Big)^2
            + \frac12 \sum_{i < j \in \Sigma} M_i M_j, \qquad m = a(\ell - a) + 1.
    """
    widths = [int(w) for w in widths]
    if len(widths) < 2:
        raise ValueError("a deep linear network needs at least an input and an output width")
    _check_widths(widths, rank)
    if len(widths) == 2:  # a single linear map: regular, d = H0*H1, but only rank-r maps are true
        h0, h1 = widths
        return (rank * (h0 + h1) - rank**2) / 2, 1
    slack = sorted(w - rank for w in widths)
    for size in range(2, len(slack) + 1):
        sigma, rest = slack[:size], slack[size:]
        ell = size - 1
        total = sum(sigma)
        if rest and not max(sigma) < min(rest):
            continue
        if total < ell * max(sigma):
            continue
        if rest and not total < ell * min(rest):
            continue
        mbar = -(-total // ell)
        a = total - (mbar - 1) * ell
        pairs = sum(sigma[i] * sigma[j] for i in range(size) for j in range(i + 1, size))
        value = (
            Fraction(rank * (widths[0] + widths[-1]) - rank**2, 2)
            + Fraction(a * (ell - a), 4 * ell)
            - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
            + Fraction(pairs, 2)
        )
        return _as_number(value), a * (ell - a) + 1
    raise AssertionError(f"no admissible set found for widths {widths} and rank {rank}")  # pragma: no cover


def _check_widths(widths: Sequence[int], rank: int) -> None:
    if any(w < 1 for w in widths):
        raise ValueError(f"widths must be positive, got {list(widths)}")
    if not 0 <= rank <= min(widths):
        raise ValueError(f"rank must lie in [0, {min(widths)}] for widths {list(widths)}, got {rank}")


def normal_crossing_lambda(
    powers: Sequence[int], prior_powers: Sequence[float] | None = None
) -> tuple[float, int]:
    r"""Learning coefficient of a normal crossing.

    :math:`K(w) = \prod_i w_i^{2k_i}` with prior density :math:`\propto \prod_i |w_i|^{h_i}`.

    :math:`\lambda = \min_i (h_i + 1) / (2 k_i)`, and m is the number of indices attaining the minimum.
    Coordinates with :math:`k_i = 0` do not enter :math:`K` and are skipped.
    """
    h = list(prior_powers) if prior_powers is not None else [0.0] * len(powers)
    if len(h) != len(powers):
        raise ValueError("powers and prior_powers must have the same length")
    ratios = [Fraction(hi).limit_denominator() + 1 for hi in h]
    values = [r / (2 * k) for r, k in zip(ratios, powers) if k > 0]
    if not values:
        raise ValueError("at least one power must be positive")
    best = min(values)
    return float(best), sum(1 for v in values if v == best)


def tanh_lambda(hidden: int) -> float:
    r"""Learning coefficient of :math:`f(x) = \sum_{h \le H} a_h \tanh(b_h x)` at the true function 0.

    :math:`\lambda = (H + i^2 + i) / (4i + 2)` with :math:`i = \lfloor\sqrt{H}\rfloor`.
    """
    if hidden < 1:
        raise ValueError("hidden must be at least 1")
    i = math.isqrt(hidden)
    return (hidden + i * i + i) / (4 * i + 2)


# -- model factories -----------------------------------------------------------------------


def deep_linear_network(
    widths: Sequence[int], rank: int, *, seed: int = 0, scale: float = 1.0, dtype: torch.dtype = torch.float32
) -> nn.Sequential:
    """A bias-free deep linear network at a most singular point of rank ``rank``.

    Every layer is a random matrix truncated to rank ``rank`` (so each layer and the end-to-end map
    have rank exactly ``rank``, where the global learning coefficient :func:`dln_lambda` is attained).
    """
    _check_widths(widths, rank)
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for h_in, h_out in itertools.pairwise(widths):
        layer = nn.Linear(h_in, h_out, bias=False)
        weight = torch.randn(h_out, h_in, generator=generator, dtype=torch.float64) * scale / math.sqrt(h_in)
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        s[rank:] = 0.0
        layer.weight.data = ((u * s) @ vh).to(dtype)
        layers.append(layer)
    return nn.Sequential(*layers)


def linear_regression_data(
    model: nn.Module, n: int, *, noise: float = 1.0, seed: int = 0, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """Data ``(X, y)`` with ``y = model(X) + noise * N(0, I)`` and ``X ~ N(0, I)``.

    The input size is read from the first layer's weight.
    """
    first = next(p for p in model.parameters() if p.ndim == 2)
    dtype = dtype or first.dtype
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, first.shape[1], generator=generator, dtype=dtype)
    with torch.no_grad():
        y = model(x)
    y = y + noise * torch.randn(y.shape, generator=generator, dtype=dtype)
    return x, y


class NormalCrossing(nn.Module):
    r"""Regression model :math:`f(x, w) = x \prod_i w_i^{k_i}`, initialized at the true parameter w = 0.

    With data :math:`y = \text{noise}` and mean-squared loss, :math:`K(w) \propto \prod_i w_i^{2k_i}`.
    """

    def __init__(
        self, powers: Sequence[int], init: Sequence[float] | None = None, dtype: torch.dtype = torch.float32
    ):
        super().__init__()
        self.powers = tuple(int(k) for k in powers)
        start = (
            torch.zeros(len(self.powers), dtype=dtype) if init is None else torch.tensor(init, dtype=dtype)
        )
        self.w = nn.Parameter(start)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` times the product of the weights raised to their powers."""
        product = torch.ones((), dtype=self.w.dtype, device=self.w.device)
        for i, k in enumerate(self.powers):
            product = product * self.w[i] ** k
        return x * product


def regression_data(
    n: int, *, noise: float = 1.0, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Scalar data for :class:`NormalCrossing` and :func:`tanh_network`.

    ``x ~ U[-1, 1]`` and ``y = noise * N(0, 1)``: the true function is 0.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator, dtype=dtype) * 2 - 1
    y = noise * torch.randn(n, 1, generator=generator, dtype=dtype)
    return x, y


def tanh_network(hidden: int, *, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    r""":math:`f(x) = \sum_h a_h \tanh(b_h x)` at the most singular true parameter (all weights 0)."""
    net = nn.Sequential(nn.Linear(1, hidden, bias=False), nn.Tanh(), nn.Linear(hidden, 1, bias=False)).to(
        dtype
    )
    for p in net.parameters():
        nn.init.zeros_(p)
    return net
