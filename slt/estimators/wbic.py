r"""The widely applicable Bayesian information criterion (WBIC) from the chains of an LLC estimate.

Watanabe (2013), "A widely applicable Bayesian information criterion", JMLR 14, 867-897, defines

.. math::

    \mathrm{WBIC} = \mathbb{E}_w^{\beta}\big[n L_n(w)\big], \qquad \beta = 1/\log n,

the expectation of the summed negative log likelihood :math:`n L_n(w) = -\sum_i \log p(y_i \mid x_i, w)`
over the tempered posterior :math:`p_\beta(w) \propto \varphi(w) \exp(-n\beta L_n(w))`. It estimates the
Bayes free energy :math:`F_n = -\log \int \varphi(w) \prod_i p(y_i \mid x_i, w)\, dw` to
:math:`O_p(\sqrt{\log n})`, for singular models too, and (his Theorem 4) behaves as

.. math::

    \mathrm{WBIC} = n L_n(w_0) + \lambda \log n + O_p(\sqrt{\log n}),

with :math:`\lambda` the (global) learning coefficient. This asymptotic form is a remark: slt does not
use it to compute anything.

The chains of :func:`slt.estimate_llc` sample the same kind of tempered posterior (localized), and the
LLC estimate is :math:`\hat\lambda = n\beta(\hat{\mathbb{E}}[L_n] - L_n(w^*))` with :math:`L_n(w^*)` exact,
so the same draws give, with no further forward pass,

.. math::

    \widehat{\mathrm{WBIC}} = n\,\hat{\mathbb{E}}[L_n(w)]
        = n L_n(w^*) + \frac{n}{n\beta}\,\hat\lambda
        \;\overset{n\beta = n/\log n}{=}\; n L_n(w^*) + \hat\lambda \log n ,

an identity of the estimator, exact draw by draw (not the asymptotic expansion above); its standard error
is :math:`(n / n\beta)` times that of :math:`\hat\lambda`.

What it needs to be Watanabe's WBIC:

* ``loss_fn`` must be the mean negative log likelihood per sample, normalizing constants included (for a
  Gaussian noise of variance :math:`\sigma^2`, :math:`\tfrac12\log(2\pi\sigma^2) + (y - f(x))^2/(2\sigma^2)`:
  :func:`gaussian_nll` builds it).
  ``"cross_entropy"`` is the NLL of a categorical model; ``"mse"`` is not an NLL (it is the NLL of a noise
  variance ½ less its constant :math:`\tfrac12\log\pi`), so its "WBIC" is off by a scale and a constant.
* :math:`n\beta = n / \log n` (slt's default).
* no localization (``localization=0``). With :math:`\gamma > 0` the chains sample
  :math:`\propto \exp(-n\beta L_n(w) - \tfrac{\gamma}{2}\lVert w - w^*\rVert^2)`: the WBIC of the prior
  :math:`\mathcal N(w^*, \gamma^{-1} I)` centred on the trained weights, restricted to the basin the
  chains explore. For a regular model that lowers the value by
  :math:`\tfrac{\log n}{2}\sum_i \gamma / (n\beta h_i + \gamma)` (:math:`h_i` the Hessian eigenvalues of
  :math:`L_n`), which vanishes as :math:`n` grows; for a singular model it is a *local* WBIC around
  :math:`w^*`, not the global one of the paper.

* every parameter sampled: with ``mask=`` the other weights stay at :math:`w^*`, and the value is the
  WBIC of the model restricted to the sampled ones.

Any other setting of nβ or γ is recorded on :attr:`WBICEstimate.notes` and emitted as a
:class:`~slt.warnings.WBICWarning` when :attr:`slt.LLCResult.wbic` is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from slt.sampling.losses import LossFn
from slt.warnings import Problem, WBICWarning, emit

__all__ = ["WBICEstimate", "wbic_from_llc", "gaussian_nll", "STANDARD_N_BETA_RTOL"]

#: nβ within this relative distance of n / log n counts as Watanabe's temperature.
STANDARD_N_BETA_RTOL = 1e-9


@dataclass(frozen=True)
class WBICEstimate:
    r"""A WBIC estimate, in nats (the summed negative log likelihood), with how it was sampled.

    Attributes
    ----------
    value : float
        :math:`\widehat{\mathrm{WBIC}} = n L_n(w^*) + (n/n\beta)\hat\lambda`, the mean over healthy chains.
    stderr : float
        Its standard error, :math:`(n/n\beta)` times that of :math:`\hat\lambda` (NaN with one chain).
    per_chain : ndarray, shape (chains,)
        Per-chain values (NaN for diverged chains).
    interval : tuple of float
        The LLC's 95% interval mapped the same way (see :func:`slt.estimators.llc.llc_interval`).
    n : int
        Number of training samples.
    n_beta : float
        The nβ the chains used.
    localization : float
        The γ the chains used.
    notes : tuple of str
        Why this is not Watanabe's WBIC, one sentence per reason (empty when nβ = n/log n and γ = 0).
    """

    value: float
    stderr: float
    per_chain: np.ndarray
    interval: tuple[float, float]
    n: int
    n_beta: float
    localization: float
    notes: tuple[str, ...] = ()

    @property
    def standard(self) -> bool:
        """Whether the chains ran at Watanabe's setting: nβ = n/log n and no localization."""
        return not self.notes

    def __repr__(self) -> str:
        flag = "" if self.standard else ", not standard: see .notes"
        return f"WBICEstimate(wbic={self.value:.6g} ± {self.stderr:.2g} (stderr), n={self.n}{flag})"


def wbic_from_llc(
    *,
    llc_mean: float,
    llc_stderr: float,
    llc_per_chain: np.ndarray,
    llc_interval: tuple[float, float],
    init_loss: float,
    n: int,
    n_beta: float,
    localization: float,
    warn: bool = True,
) -> WBICEstimate:
    r"""The WBIC from the numbers of an LLC estimate (see the module docstring for the formula).

    Parameters
    ----------
    llc_mean, llc_stderr : float
        :math:`\hat\lambda` and its standard error.
    llc_per_chain : ndarray, shape (chains,)
        Per-chain :math:`\hat\lambda`.
    llc_interval : tuple of float
        The LLC's 95% interval.
    init_loss : float
        :math:`L_n(w^*)`, the exact mean loss per sample over the full data (nats per sample when the loss
        is a negative log likelihood).
    n : int
        Number of training samples.
    n_beta, localization : float
        nβ and γ of the chains.
    warn : bool
        Emit a :class:`~slt.warnings.WBICWarning` per note when the setting is not Watanabe's.

    Returns
    -------
    WBICEstimate

    Raises
    ------
    ValueError
        For ``n < 2`` or a non-positive nβ.
    """
    if not n >= 2:
        raise ValueError(f"the WBIC needs at least two samples (its temperature is 1/log n), got n = {n}")
    if not (math.isfinite(n_beta) and n_beta > 0):
        raise ValueError(f"n_beta must be a positive number, got {n_beta}")
    scale = n / n_beta
    notes = []
    standard_n_beta = n / math.log(n)
    if abs(n_beta - standard_n_beta) > STANDARD_N_BETA_RTOL * standard_n_beta:
        notes.append(
            f"the chains ran at nβ = {n_beta:.6g}, not n/log n = {standard_n_beta:.6g}: this is the mean "
            "summed NLL at that temperature, not Watanabe's WBIC (leave n_beta None for it)"
        )
    if localization != 0:
        notes.append(
            f"the chains were localized (γ = {localization:g}): this is the WBIC of a Gaussian prior "
            "N(w*, I/γ) centred on the trained weights, a local WBIC that differs from the unlocalized one "
            "by O(γ log n / (nβ h)) for a regular model (h the curvature); pass localization=0 for "
            "Watanabe's definition"
        )
    if warn and notes:
        emit([Problem.of(WBICWarning, note) for note in notes], stacklevel=3)
    base = n * init_loss
    per_chain = base + scale * np.asarray(llc_per_chain, dtype=float)
    low, high = llc_interval
    return WBICEstimate(
        value=float(base + scale * llc_mean),
        stderr=float(scale * llc_stderr),
        per_chain=per_chain,
        interval=(float(base + scale * low), float(base + scale * high)),
        n=int(n),
        n_beta=float(n_beta),
        localization=float(localization),
        notes=tuple(notes),
    )


def gaussian_nll(noise_std: float) -> LossFn:
    r"""``loss_fn(model, batch)``: the mean negative log likelihood per sample of Gaussian noise, in nats.

    For a batch ``(x, y)`` with outputs of m entries,

    .. math::

        \frac{1}{B}\sum_{i \le B} \Big[\frac{m}{2}\log(2\pi\sigma^2)
            + \frac{\lVert y_i - f(x_i)\rVert^2}{2\sigma^2}\Big],

    the loss whose WBIC is Watanabe's for a regression with known noise :math:`\sigma` (``"mse"`` is not:
    see the module docstring). Its gradient is that of ``"mse"`` times :math:`m / (2\sigma^2)`, so nβ's
    effect on the chains changes with σ.

    Parameters
    ----------
    noise_std : float
        σ > 0, the noise standard deviation, in the units of ``y``.

    Raises
    ------
    ValueError
        For σ <= 0 (when built) and, when called, batches that are not ``(x, y)`` or outputs whose shape
        differs from the targets'.
    """
    if not (isinstance(noise_std, (int, float)) and math.isfinite(noise_std) and noise_std > 0):
        raise ValueError(f"noise_std must be a positive number, got {noise_std!r}")
    sigma = float(noise_std)
    constant = 0.5 * math.log(2 * math.pi * sigma**2)

    def loss(model: nn.Module, batch: object) -> Tensor:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"gaussian_nll expects batches of (inputs, targets); got {type(batch).__name__}")
        x, y = batch
        out = model(x)
        if out.shape != y.shape:
            raise ValueError(
                f"gaussian_nll: the model's outputs have shape {tuple(out.shape)} but the targets "
                f"{tuple(y.shape)}; give the targets the outputs' shape"
            )
        residual = (y - out).reshape(out.shape[0], -1)
        entries = residual.shape[1]
        return entries * constant + (residual**2).sum(dim=1).mean() / (2 * sigma**2)

    loss.__name__ = f"gaussian_nll(sigma={sigma:g})"
    return loss
