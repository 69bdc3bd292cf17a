r"""Bayesian influence functions (BIF): how the losses of two samples co-vary over the local posterior.

Following devinterp 2.0.1 (``devinterp.slt.bif``; Kreer et al. 2025, "Bayesian influence functions for
Hessian-free data attribution"), the influence of sample ``i`` on sample ``j`` is the
correlation across posterior draws of their losses,

.. math::

    \mathrm{BIF}(i, j) = \operatorname{corr}_{w \sim p}\big(\ell_i(w), \ell_j(w)\big)
    \quad\text{or, with ``covariance=True``,}\quad
    \operatorname{cov}_{w \sim p}\big(\ell_i(w), \ell_j(w)\big),

with :math:`p` the localized tempered posterior the LLC chains sample and the draws of every chain stacked
into one sample (devinterp's ``reduce_chain_dimension_method="stack"``, its recommended default). The
covariance uses the unbiased ``1 / (draws - 1)`` normalization, as ``numpy.cov`` and devinterp do. The
covariance form is the one tied to the classical influence function: to first order in a small
up-weighting :math:`\epsilon` of sample ``j`` in the posterior
:math:`\propto e^{-n\beta L_n(w)}`, :math:`\mathbb{E}[\ell_i]` moves by
:math:`-\epsilon\beta\operatorname{cov}(\ell_i, \ell_j)`.

For per-token losses (a sequence model; shape ``(chains, draws, samples, tokens)``) the result holds
every token pair, ``(samples, samples, tokens, tokens)`` (devinterp's ``correlation_method="token"``);
``reduce_tokens=True`` first averages each sequence's token losses (its ``"sequence"`` method).

**Constant losses.** A sample whose loss does not vary over the draws (a sample no sampled weight touches,
or a saturated loss) has no defined correlation. slt sets every correlation involving it to **0** (its
diagonal entry too: it shows no influence), records it in :attr:`BIFResult.constant` and emits a
:class:`~slt.warnings.ConstantLossWarning` naming it; never a silent NaN. Covariances involving it are 0
by definition and need no warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slt.estimators.llc import LLCResult, estimate_llc
from slt.results.base import JSONResult
from slt.results.plotting import panels
from slt.sampling.losses import LossFn
from slt.sampling.observables import PerSampleLoss, PerSampleLossFn
from slt.warnings import ConstantLossWarning, Problem, emit

__all__ = ["BIFResult", "bif", "estimate_bif", "CONSTANT_RTOL"]

#: A loss whose standard deviation over the draws is at most this fraction of its mean magnitude (or
#: exactly 0) counts as constant: float64 rounding of identical values leaves about 1e-16.
CONSTANT_RTOL = 1e-12


@dataclass
class BIFResult(JSONResult):
    r"""Bayesian influence functions between the samples (or tokens) of a probe set.

    Attributes
    ----------
    values : ndarray, shape (samples, samples) or (samples, samples, tokens, tokens)
        ``values[i, j]`` (``values[i, j, s, t]``: token ``s`` of sample ``i`` with token ``t`` of sample
        ``j``): the correlation, dimensionless in [-1, 1], or the covariance, in squared loss units.
        Symmetric.
    kind : str
        ``"correlation"`` or ``"covariance"``.
    num_observations : int
        Draws the statistic is over: healthy chains times draws per chain.
    chains : ndarray of int, shape (used chains,)
        The chains whose draws were stacked (diverged chains are left out).
    constant : ndarray of bool, shape (samples,) or (samples, tokens)
        Losses that did not vary over the draws (their correlations set to 0).
    observable : str
        Name of the per-sample-loss observable the losses came from (``""`` for a bare array).
    problems : tuple of slt.warnings.Problem
        What was wrong (constant losses), emitted as warnings when computed and again on reload.
    llc : LLCResult or None
        The LLC estimate of the same chains (from :func:`estimate_bif`).
    """

    values: np.ndarray
    kind: str
    num_observations: int
    chains: np.ndarray
    constant: np.ndarray
    observable: str = ""
    problems: tuple[Problem, ...] = ()
    llc: LLCResult | None = field(default=None, repr=False)

    @property
    def per_token(self) -> bool:
        """Whether ``values`` holds token pairs, shape ``(samples, samples, tokens, tokens)``."""
        return self.values.ndim == 4

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.values.shape))
        return (
            f"BIFResult({self.kind}, {shape}, over {self.num_observations} draws of "
            f"{len(self.chains)} chains, constant={int(self.constant.sum())})"
        )

    def to_xarray(self):
        """An ``xarray.DataArray`` ``"bif"``, dims ``sample_1, sample_2`` (and ``token_1, token_2``)."""
        import xarray as xr

        dims = ["sample_1", "sample_2"] + (["token_1", "token_2"] if self.per_token else [])
        coords = {d: np.arange(n) for d, n in zip(dims, self.values.shape)}
        return xr.DataArray(
            self.values,
            dims=dims,
            coords=coords,
            name="bif",
            attrs={
                "kind": self.kind,
                "num_observations": self.num_observations,
                "observable": self.observable,
            },
        )

    def to_pandas(self):
        """A pandas ``DataFrame``: samples by samples, or one row per token pair for per-token values."""
        import pandas as pd

        if not self.per_token:
            index = pd.RangeIndex(self.values.shape[0], name="sample_1")
            columns = pd.RangeIndex(self.values.shape[1], name="sample_2")
            return pd.DataFrame(self.values, index=index, columns=columns)
        return self.to_xarray().to_dataframe().reset_index()

    def plot(self, ax=None, *, annotate: bool | None = None):
        """Heat map of the influences (per-token values as a (samples x tokens) square, samples outlined).

        ``annotate`` writes each value in its cell (default: for at most 12 samples).

        Returns
        -------
        matplotlib.figure.Figure
        """
        fig, axes = panels(ax, 1, figsize=(5.2, 4.4))
        axis = axes[0]
        matrix = self.values
        if self.per_token:
            s, _, t, _ = matrix.shape
            matrix = matrix.transpose(0, 2, 1, 3).reshape(s * t, s * t)
        if self.kind == "correlation":
            vmax = 1.0
        else:
            vmax = float(np.abs(matrix).max()) or 1.0
        image = axis.imshow(matrix, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        fig.colorbar(image, ax=axis, label=self.kind)
        if self.per_token:
            for k in range(1, s):
                axis.axhline(k * t - 0.5, color="k", lw=0.5)
                axis.axvline(k * t - 0.5, color="k", lw=0.5)
            axis.set(xlabel="sample x token", ylabel="sample x token")
        else:
            axis.set(xlabel="sample j", ylabel="sample i")
            if annotate is None:
                annotate = matrix.shape[0] <= 12
            if annotate:
                for (i, j), v in np.ndenumerate(matrix):
                    axis.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
        axis.set_title(f"Bayesian influence ({self.kind}, {self.num_observations} draws)")
        return fig


def bif(
    losses: LLCResult | np.ndarray,
    *,
    observable: str | None = None,
    covariance: bool = False,
    reduce_tokens: bool = False,
    warn: bool = True,
) -> BIFResult:
    r"""Bayesian influence functions from per-sample losses recorded at every draw.

    Parameters
    ----------
    losses : LLCResult or ndarray, shape (chains, draws, samples) or (chains, draws, samples, tokens)
        An :class:`~slt.LLCResult` whose ``observables`` hold per-sample losses (a
        :class:`~slt.sampling.PerSampleLoss` passed to :func:`slt.estimate_llc`), or the array itself. With
        a result, diverged chains are left out; an array must be finite.
    observable : str, optional
        Which observable of the result holds the losses; needed only when several have three or more axes.
    covariance : bool
        Return covariances (``ddof=1``) instead of correlations.
    reduce_tokens : bool
        With per-token losses, average each sample's tokens first (one value per sample pair).
    warn : bool
        Emit a :class:`~slt.warnings.ConstantLossWarning` for losses that never varied.

    Returns
    -------
    BIFResult

    Raises
    ------
    ValueError
        For an array of the wrong number of axes, fewer than two draws in all, non-finite losses in an
        array, a result without per-sample observables, or an unknown or ambiguous ``observable``.
    """
    name = ""
    llc = None
    if isinstance(losses, LLCResult):
        llc = losses
        name, array = _pick_observable(losses.observables, observable)
        chains = losses.diagnostics.healthy_chains
        array = array[chains]
    else:
        if observable is not None:
            raise ValueError("observable= names an observable of an LLCResult; pass the array alone")
        array = np.asarray(losses, dtype=float)
        chains = np.arange(array.shape[0]) if array.ndim else np.arange(0)
    if array.ndim not in (3, 4):
        raise ValueError(
            f"per-sample losses need shape (chains, draws, samples) or (chains, draws, samples, tokens), got "
            f"{array.shape}; record them with observables={{'losses': slt.sampling.PerSampleLoss(probe)}}"
        )
    array = np.asarray(array, dtype=float)
    if not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array).reshape(array.shape[0], -1).all(axis=1))
        raise ValueError(
            f"the per-sample losses of chains {bad.tolist()} are not all finite (a diverged chain?); drop "
            "those chains (losses[healthy]) or pass the LLCResult, which leaves diverged chains out"
        )
    if reduce_tokens and array.ndim == 4:
        array = array.mean(axis=3)
    num_chains, num_draws = array.shape[:2]
    observations = num_chains * num_draws
    if observations < 2:
        raise ValueError(
            f"a correlation over draws needs at least two draws in all, got {observations} "
            f"({num_chains} chains x {num_draws} draws); raise num_draws"
        )
    item_shape = array.shape[2:]
    flat = array.reshape(observations, -1)
    centered = flat - flat.mean(axis=0)
    matrix = centered.T @ centered / (observations - 1)
    std = np.sqrt(np.clip(np.diag(matrix), 0.0, None))
    constant = (std == 0) | (std <= CONSTANT_RTOL * np.abs(flat.mean(axis=0)))
    matrix[constant, :] = 0.0
    matrix[:, constant] = 0.0
    problems: tuple[Problem, ...] = ()
    if not covariance:
        scale = np.where(constant, 1.0, std)
        matrix = matrix / scale[:, None] / scale[None, :]
        np.clip(matrix, -1.0, 1.0, out=matrix)
        if constant.any():
            where = [tuple(int(v) for v in np.unravel_index(k, item_shape)) for k in np.flatnonzero(constant)]
            listed = ", ".join(str(w[0]) if len(w) == 1 else str(w) for w in where[:10])
            more = f" and {len(where) - 10} more" if len(where) > 10 else ""
            label = "samples" if len(item_shape) == 1 else "(sample, token) pairs"
            problems = (
                Problem.of(
                    ConstantLossWarning,
                    f"the losses of {label} {listed}{more} did not vary over the {observations} draws, so "
                    "their correlations are undefined; they are set to 0 (no influence). Check that the "
                    "sampled weights reach these samples (mask=), or use covariance=True",
                ),
            )
    values = matrix.reshape(item_shape + item_shape)
    if values.ndim == 4:
        values = values.transpose(
            0, 2, 1, 3
        )  # (sample, token, sample, token) -> (sample, sample, token, token)
    if warn:
        emit(problems, stacklevel=2)
    return BIFResult(
        values=values,
        kind="covariance" if covariance else "correlation",
        num_observations=observations,
        chains=np.asarray(chains, dtype=np.int64),
        constant=constant.reshape(item_shape),
        observable=name,
        problems=problems,
        llc=llc,
    )


def _pick_observable(observables: Mapping[str, np.ndarray], name: str | None) -> tuple[str, np.ndarray]:
    candidates = [k for k, v in observables.items() if np.ndim(v) >= 3]
    if name is not None:
        if name not in observables:
            raise ValueError(f"no observable named {name!r}; the result has {sorted(observables)}")
        return name, observables[name]
    if len(candidates) == 1:
        return candidates[0], observables[candidates[0]]
    if not candidates:
        raise ValueError(
            "the result has no per-sample observable (one with shape (chains, draws, samples)); run "
            "slt.estimate_llc with observables={'losses': slt.sampling.PerSampleLoss(probe)}, or use "
            "slt.estimate_bif"
        )
    raise ValueError(
        f"several observables could hold per-sample losses ({candidates}); name one: observable="
    )


def estimate_bif(
    model: nn.Module,
    data: Any,
    probe: Sequence[torch.Tensor],
    *,
    loss_fn: str | LossFn,
    per_sample_loss: str | PerSampleLossFn | None = None,
    covariance: bool = False,
    reduce_tokens: bool = False,
    probe_batch_size: int | None = None,
    **llc_options: Any,
) -> BIFResult:
    r"""Sample the local posterior and return the Bayesian influence functions of the probe samples.

    Runs :func:`slt.estimate_llc` with a :class:`~slt.sampling.PerSampleLoss` observable on ``probe``
    (every draw evaluates the whole probe set: cost grows with its size) and applies :func:`bif`. The LLC
    of the same chains is on ``result.llc``.

    Parameters
    ----------
    model, data, loss_fn
        As :func:`slt.estimate_llc`: the posterior is that of ``loss_fn`` on ``data``.
    probe : tuple of Tensor
        The samples whose influences are wanted, for example ``(x[:8], y[:8])`` (training samples,
        held-out samples, or both).
    per_sample_loss : {"mse", "cross_entropy"} or callable, optional
        The loss of each probe sample (see :class:`~slt.sampling.PerSampleLoss`); defaults to ``loss_fn``
        when that is a name.
    covariance, reduce_tokens
        As :func:`bif`.
    probe_batch_size : int, optional
        Evaluate the probe set in chunks of this many samples.
    **llc_options
        Any other option of :func:`slt.estimate_llc` (``num_chains``, ``num_draws``, ``step_size``, ...).

    Returns
    -------
    BIFResult

    Raises
    ------
    ValueError
        Without ``per_sample_loss`` for a callable ``loss_fn``, with ``observables`` in ``llc_options``,
        or as :func:`slt.estimate_llc`, :class:`~slt.sampling.PerSampleLoss` and :func:`bif`.
    """
    if per_sample_loss is None:
        if not isinstance(loss_fn, str):
            raise ValueError(
                "a callable loss_fn gives the mean loss of a batch; pass per_sample_loss=fn(model, batch) "
                "returning one loss per probe sample (the same loss with reduction='none')"
            )
        per_sample_loss = loss_fn
    if "observables" in llc_options:
        raise ValueError("estimate_bif sets the observables itself; use estimate_llc and bif() to add others")
    observable = PerSampleLoss(probe, per_sample_loss, batch_size=probe_batch_size)
    result = estimate_llc(
        model, data, loss_fn=loss_fn, observables={"per_sample_loss": observable}, **llc_options
    )
    return bif(result, observable="per_sample_loss", covariance=covariance, reduce_tokens=reduce_tokens)
