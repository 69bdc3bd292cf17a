r"""Susceptibilities of weight-restricted posteriors to probe datasets, as devinterp 2.0.1 defines them.

Following ``devinterp.slt.susceptibilities.compute_susceptibilities`` of devinterp 2.0.1 (which cites
appendix C.4 of Baker et al. 2025, "Structural inference: interpreting small language models with
susceptibilities", arXiv:2504.18274), the posterior is sampled once with every weight free (the *full*
run) and once per component with only that component's weights free (a weight restriction, ``mask=``).
At every draw two kinds of loss are recorded on fixed samples: the *sampling-task* loss :math:`L_{pt}`
(devinterp's ``loss_{sampling_task}``: a fixed set of training sequences, averaged over sequences and
tokens) and the per-sample (per-token) loss :math:`\ell_{xy}` of every sample of each probe set. With
:math:`L_0` the loss of :math:`w^*` on the training data (devinterp's ``init_loss`` of the full run) and

.. math::

    \varphi(w) = L_{pt}(w) - L_0,

devinterp's susceptibility of component :math:`C` to probe token :math:`xy` is

.. math::

    \chi^C_{xy} = \mathbb{E}_C[\varphi L_{pt}] - \mathbb{E}_C[\varphi\,\ell_{xy}]
        - \mathbb{E}_C[\varphi]\,\big(\mathbb{E}_{\rm full}[L_{pt}] - \mathbb{E}_{\rm full}[\ell_{xy}]\big),

with :math:`\mathbb{E}_C` the mean over the draws (all chains stacked) of the run restricted to
:math:`C` and :math:`\mathbb{E}_{\rm full}` over those of the full run. Written out, devinterp's lines
are ``phi = pt_mean - init_loss_mean``, ``E_phi_wr = (phi * pt_mean).mean()``,
``E_phi_probe = (phi[:, :, None, None] * probe).mean(axis=(0, 1))``,
``full_delta = full_sampling_mean - full_probe.mean(axis=(0, 1))`` and
``sus = E_phi_wr - E_phi_probe - E_phi * full_delta``. Were the last mean taken under :math:`C` instead
of the full posterior, :math:`\chi` would be :math:`-\operatorname{cov}_C(\varphi, \ell_{xy} - L_{pt})`:
minus the covariance of the component's training-loss excursion with how much worse the probe token does
than the training data; devinterp centres the difference with the full posterior's mean. There is no nβ
factor and the sign is devinterp's.

The number reported per (component, probe set) is the mean of :math:`\chi^C_{xy}` over the probe set's
samples and tokens (which, the formula being linear in :math:`\ell`, is the same formula applied to the
probe set's mean loss); every per-token value is kept in :attr:`SusceptibilityResult.per_sample`.

**Standard errors** are leave-one-chain-out jackknife errors: chain ``i`` of every run (the full run and
each restricted one) is left out in turn, the susceptibility recomputed, and
:math:`\mathrm{SE}^2 = \frac{G-1}{G}\sum_i (\chi_{(i)} - \bar\chi_{(\cdot)})^2` over the :math:`G`
units. Chain ``i`` of every run is left out together because the runs share their seed (as devinterp's
runs share ``init_seed + chain``): chain ``i`` of one run may be correlated with chain ``i`` of another, while
chains of different indices are independent. Chains are the independent units of an MCMC run (draws within
a chain are autocorrelated), so
this needs no autocorrelation model, but with :math:`G` chains the error itself has about :math:`G-1`
degrees of freedom: two chains give a rough error bar; NaN with fewer than two.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slt.estimators.llc import LLCResult, estimate_llc
from slt.results.base import JSONResult
from slt.results.plotting import panels
from slt.sampling.counting import shifts_labels
from slt.sampling.flat import Mask
from slt.sampling.losses import LossFn
from slt.sampling.observables import PerSampleLoss, PerSampleLossFn
from slt.warnings import Problem

__all__ = [
    "SusceptibilityResult",
    "susceptibilities",
    "susceptibilities_from_draws",
    "susceptibilities_from_results",
    "susceptibility",
    "FULL",
    "SAMPLING",
]

#: Name of the unrestricted run (devinterp's required ``"full"`` weight restriction).
FULL = "full"
#: Name of the sampling-task observable (devinterp's ``loss_{sampling_task}``) in each run's observables.
SAMPLING = "sampling"
#: Training sequences whose loss is the sampling task by default (devinterp's ``batch_size`` 32 times
#: ``batches_per_draw`` 3).
DEFAULT_SAMPLING_SAMPLES = 96


def _draws(array: Any, what: str) -> np.ndarray:
    out = np.asarray(array, dtype=float)
    if out.ndim < 3:
        raise ValueError(
            f"{what} needs shape (chains, draws, samples[, tokens]), got {out.shape}; record it with "
            "slt.PerSampleLoss"
        )
    if out.shape[0] < 1 or out.shape[1] < 1 or out.size == 0:
        raise ValueError(f"{what} holds no draws (shape {out.shape})")
    if not np.isfinite(out).all():
        raise ValueError(
            f"{what} is not all finite (a diverged chain?); leave that chain out, or use "
            "susceptibilities_from_results, which keeps each run's healthy chains"
        )
    return out


def susceptibility(
    restricted_sampling: np.ndarray,
    restricted_probe: np.ndarray,
    full_sampling: np.ndarray,
    full_probe: np.ndarray,
    init_loss: float,
) -> np.ndarray:
    r"""The susceptibility (devinterp 2.0.1) of one weight restriction to each token of one probe set.

    The formula of ``compute_susceptibilities`` in ``devinterp/slt/susceptibilities.py`` (2.0.1), on
    arrays of draws (see the module docstring):
    :math:`\chi_{xy} = \mathbb{E}_C[\varphi L_{pt}] - \mathbb{E}_C[\varphi\ell_{xy}] -
    \mathbb{E}_C[\varphi](\mathbb{E}_{\rm full}[L_{pt}] - \mathbb{E}_{\rm full}[\ell_{xy}])` with
    :math:`\varphi = L_{pt} - L_0`, every expectation the mean over all chains and draws stacked.

    Parameters
    ----------
    restricted_sampling : ndarray, shape (chains, draws, samples[, tokens])
        Sampling-task losses (fixed training samples) at each draw of the weight-restricted run;
        averaged over everything after the draw axis, as devinterp's ``pt_loss.mean(axis=(-2, -1))``.
    restricted_probe : ndarray, shape (chains, draws, samples[, tokens])
        The probe set's per-sample (per-token) losses at the same draws.
    full_sampling, full_probe : ndarray
        The same two on the unrestricted run (its own chains and draws; the probe's trailing shape must
        match ``restricted_probe``'s).
    init_loss : float
        :math:`L_0`, the loss of :math:`w^*` on the training data (devinterp: the full run's
        ``init_loss``, averaged).

    Returns
    -------
    ndarray, shape (samples[, tokens])
        :math:`\chi_{xy}` for every probe sample (token), in squared loss units.

    Raises
    ------
    ValueError
        For arrays without a (chains, draws) pair of leading axes and a sample axis, non-finite values,
        restricted arrays whose chains and draws differ, probe arrays whose trailing shapes differ, or a
        non-finite ``init_loss``.
    """
    r_pt = _draws(restricted_sampling, "restricted_sampling")
    r_probe = _draws(restricted_probe, "restricted_probe")
    f_pt = _draws(full_sampling, "full_sampling")
    f_probe = _draws(full_probe, "full_probe")
    if r_pt.shape[:2] != r_probe.shape[:2]:
        raise ValueError(
            f"restricted_sampling has (chains, draws) {r_pt.shape[:2]} but restricted_probe "
            f"{r_probe.shape[:2]}; both must come from the same draws"
        )
    if f_pt.shape[:2] != f_probe.shape[:2]:
        raise ValueError(
            f"full_sampling has (chains, draws) {f_pt.shape[:2]} but full_probe {f_probe.shape[:2]}; both "
            "must come from the same draws"
        )
    if r_probe.shape[2:] != f_probe.shape[2:]:
        raise ValueError(
            f"the probe losses of the restricted run have shape {r_probe.shape[2:]} per draw but those of "
            f"the full run {f_probe.shape[2:]}; use the same probe set in both"
        )
    if not np.isfinite(init_loss):
        raise ValueError(f"init_loss must be finite, got {init_loss}")
    return _chi(r_pt, r_probe, f_pt, f_probe, float(init_loss))


def _chi(r_pt, r_probe, f_pt, f_probe, init_loss):
    pt_mean = r_pt.reshape(r_pt.shape[0], r_pt.shape[1], -1).mean(axis=2)  # (chains, draws)
    phi = pt_mean - init_loss
    e_phi = phi.mean()
    e_phi_wr = (phi * pt_mean).mean()
    tail = (1,) * (r_probe.ndim - 2)
    e_phi_probe = (phi.reshape(phi.shape + tail) * r_probe).mean(axis=(0, 1))
    full_delta = f_pt.mean() - f_probe.mean(axis=(0, 1))
    return e_phi_wr - e_phi_probe - e_phi * full_delta


@dataclass
class SusceptibilityResult(JSONResult):
    r"""Susceptibilities of weight-restricted posteriors (components) to probe sets.

    Attributes
    ----------
    values : ndarray, shape (components, probes)
        ``values[c, p]``: devinterp 2.0.1's susceptibility of component ``c`` to probe set ``p``, averaged
        over the probe set's samples and tokens (see :mod:`slt.estimators.susceptibilities`); in squared
        loss units, devinterp's sign.
    stderr : ndarray, shape (components, probes)
        Leave-one-chain-out jackknife standard errors (NaN with fewer than two chains in some run).
    components : list of str
        The weight restrictions, in order (the unrestricted run is not among them).
    probes : list of str
        The probe sets, in order.
    per_sample : dict of str to ndarray
        For each probe set, shape ``(components, samples)`` or ``(components, samples, tokens)``: the
        susceptibility of every probe sample (token), devinterp's per-token output.
    per_sample_stderr : dict of str to ndarray
        Their jackknife standard errors, the same shapes.
    init_loss : float
        :math:`L_0` used in :math:`\varphi = L_{pt} - L_0`.
    num_draws : dict of str to int
        Draws (chains times draws per chain) of each run, the full run under ``"full"``.
    problems : tuple of slt.warnings.Problem
        The warnings of the runs behind the numbers, each prefixed with its run's name; emitted again on
        reload.
    llc : dict of str to LLCResult
        The runs themselves (``"full"`` and every component), from :func:`susceptibilities`; not saved to
        JSON.
    """

    values: np.ndarray
    stderr: np.ndarray
    components: list[str]
    probes: list[str]
    per_sample: dict[str, np.ndarray]
    per_sample_stderr: dict[str, np.ndarray]
    init_loss: float
    num_draws: dict[str, int] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    llc: dict[str, LLCResult] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dictionary without the runs (``llc``); see :meth:`from_dict`."""
        out = super().to_dict()
        out.pop("llc", None)
        return out

    def __repr__(self) -> str:
        rows = []
        for c, name in enumerate(self.components):
            cells = ", ".join(
                f"{p}={self.values[c, k]:.3g}±{self.stderr[c, k]:.2g}" for k, p in enumerate(self.probes)
            )
            rows.append(f"{name}: {cells}")
        return f"SusceptibilityResult({'; '.join(rows)})"

    def to_pandas(self):
        """A pandas ``DataFrame``: ``component``, ``probe``, ``susceptibility``, ``stderr`` per pair."""
        import pandas as pd

        rows = [
            {
                "component": comp,
                "probe": probe,
                "susceptibility": float(self.values[c, p]),
                "stderr": float(self.stderr[c, p]),
            }
            for c, comp in enumerate(self.components)
            for p, probe in enumerate(self.probes)
        ]
        return pd.DataFrame(rows, columns=["component", "probe", "susceptibility", "stderr"])

    def to_xarray(self):
        """An ``xarray.Dataset`` with ``susceptibility`` and ``stderr``, dims ``(component, probe)``."""
        import xarray as xr

        coords = {"component": list(self.components), "probe": list(self.probes)}
        return xr.Dataset(
            {
                "susceptibility": (("component", "probe"), self.values),
                "stderr": (("component", "probe"), self.stderr),
            },
            coords=coords,
            attrs={"init_loss": self.init_loss, "definition": "devinterp 2.0.1"},
        )

    def plot(self, ax=None):
        """A bar chart per component: its susceptibility to each probe set, with ±2 standard errors.

        Returns
        -------
        matplotlib.figure.Figure
        """
        count = len(self.components)
        fig, axes = panels(ax, count, figsize=(3.2 * count + 0.8, 3.4))
        positions = np.arange(len(self.probes))
        low = float(np.nanmin(self.values - 2 * np.nan_to_num(self.stderr)))
        high = float(np.nanmax(self.values + 2 * np.nan_to_num(self.stderr)))
        pad = 0.08 * (high - low or 1.0)
        for c, (axis, name) in enumerate(zip(axes, self.components)):
            errors = np.where(np.isfinite(self.stderr[c]), 2 * self.stderr[c], 0.0)
            colors = [f"C{k % 10}" for k in range(len(self.probes))]
            axis.bar(positions, self.values[c], yerr=errors, color=colors, capsize=3)
            axis.axhline(0.0, color="k", lw=0.6)
            axis.set_xticks(positions, self.probes, rotation=30, ha="right")
            axis.set_ylim(min(low, 0.0) - pad, max(high, 0.0) + pad)
            axis.set_title(name)
        axes[0].set_ylabel("susceptibility (±2 SE)")
        return fig


def _jackknife(statistic, units: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """An array statistic with its leave-one-unit-out jackknife errors, and the same for its mean.

    The replicates of the mean are the means of the replicates.
    """
    whole = np.asarray(statistic(None), dtype=float)
    if units < 2:
        return whole, np.full_like(whole, np.nan), whole.mean(), float("nan")

    def se(replicates: np.ndarray) -> np.ndarray:
        return np.sqrt((units - 1) / units * ((replicates - replicates.mean(axis=0)) ** 2).sum(axis=0))

    loo = np.stack([np.asarray(statistic(i), dtype=float) for i in range(units)])
    means = loo.reshape(units, -1).mean(axis=1)
    return whole, se(loo), whole.mean(), float(se(means))


def _without(array: np.ndarray, chain: int | None) -> np.ndarray:
    if chain is None or chain >= array.shape[0]:
        return array
    return np.delete(array, chain, axis=0)


def susceptibilities_from_draws(
    full: Mapping[str, np.ndarray],
    restricted: Mapping[str, Mapping[str, np.ndarray]],
    *,
    init_loss: float,
    sampling: str = SAMPLING,
    probes: list[str] | None = None,
) -> SusceptibilityResult:
    r"""Susceptibilities of every component to every probe set from recorded draws (no sampling).

    Parameters
    ----------
    full : dict of str to ndarray
        The unrestricted run's observables: ``full[sampling]`` the sampling-task losses and ``full[p]``
        each probe set's per-sample losses, each ``(chains, draws, samples[, tokens])``.
    restricted : dict of str to dict of str to ndarray
        For each component, the same observables of its weight-restricted run.
    init_loss : float
        :math:`L_0`, the loss of :math:`w^*` on the training data.
    sampling : str
        The key of the sampling-task losses.
    probes : list of str, optional
        The probe sets, in order (default: every other key of ``full``, in its order).

    Returns
    -------
    SusceptibilityResult
        Values from :func:`susceptibility`, averaged over each probe set, with jackknife errors over
        chains (see the module docstring).

    Raises
    ------
    ValueError
        For no components, no probe sets, a key missing from a run, a component named ``"full"``, or as
        :func:`susceptibility`.
    """
    if not restricted:
        raise ValueError("no components: pass at least one weight-restricted run in restricted=")
    if FULL in restricted:
        raise ValueError(
            f"{FULL!r} names the unrestricted run, passed as full=; give the components other names"
        )
    if sampling not in full:
        raise ValueError(f"the full run has no sampling-task losses {sampling!r}; it has {sorted(full)}")
    names = [k for k in full if k != sampling] if probes is None else list(probes)
    if not names:
        raise ValueError("no probe sets: the runs hold only the sampling-task losses")
    if sampling in names:
        raise ValueError(f"{sampling!r} is the sampling task, not a probe set")
    runs = {FULL: full, **restricted}
    for run, observed in runs.items():
        missing = [k for k in [sampling, *names] if k not in observed]
        if missing:
            raise ValueError(f"run {run!r} lacks the observables {missing}; it has {sorted(observed)}")
    arrays = {
        run: {k: _draws(observed[k], f"{run}[{k!r}]") for k in [sampling, *names]}
        for run, observed in runs.items()
    }
    # checks of shapes (and of init_loss) once, on everything
    for comp in restricted:
        for probe in names:
            a, f = arrays[comp], arrays[FULL]
            susceptibility(
                a[sampling][:, :1], a[probe][:, :1], f[sampling][:, :1], f[probe][:, :1], init_loss
            )
    # jackknife units: chain i of every run that has one; every run needs two chains to lose one
    counts = [a[sampling].shape[0] for a in arrays.values()]
    units = max(counts) if min(counts) >= 2 else 1
    components = list(restricted)
    values = np.empty((len(components), len(names)))
    stderr = np.empty_like(values)
    per_sample: dict[str, np.ndarray] = {}
    per_sample_se: dict[str, np.ndarray] = {}
    for k, probe in enumerate(names):
        rows, row_se = [], []
        for c, comp in enumerate(components):
            a, f = arrays[comp], arrays[FULL]

            def statistic(drop: int | None, a=a, f=f, probe=probe):
                return _chi(
                    _without(a[sampling], drop),
                    _without(a[probe], drop),
                    _without(f[sampling], drop),
                    _without(f[probe], drop),
                    float(init_loss),
                )

            chi, chi_se, mean, mean_se = _jackknife(statistic, units)
            rows.append(chi)
            row_se.append(chi_se)
            values[c, k], stderr[c, k] = mean, mean_se
        per_sample[probe] = np.stack(rows)
        per_sample_se[probe] = np.stack(row_se)
    return SusceptibilityResult(
        values=values,
        stderr=stderr,
        components=components,
        probes=names,
        per_sample=per_sample,
        per_sample_stderr=per_sample_se,
        init_loss=float(init_loss),
        num_draws={run: int(a[sampling].shape[0] * a[sampling].shape[1]) for run, a in arrays.items()},
    )


def susceptibilities_from_results(
    full: LLCResult,
    restricted: Mapping[str, LLCResult],
    *,
    probes: list[str] | None = None,
    sampling: str = SAMPLING,
) -> SusceptibilityResult:
    r"""Susceptibilities from LLC runs that recorded the sampling-task and probe losses as observables.

    Each run is an :func:`slt.estimate_llc` result with ``observables={sampling: PerSampleLoss(training
    samples), probe: PerSampleLoss(probe set), ...}``, ``full`` without a mask and each of ``restricted``
    with its component's ``mask=``. Diverged chains are left out of each run. :math:`L_0` is
    ``full.init_loss`` (:math:`L_n(w^*)` over the whole training data; devinterp averages a few
    minibatches).

    Returns
    -------
    SusceptibilityResult
        As :func:`susceptibilities_from_draws`; ``problems`` holds the runs' problems, prefixed with the
        run's name, and ``llc`` the runs.

    Raises
    ------
    ValueError
        As :func:`susceptibilities_from_draws`.
    """

    def observed(result: LLCResult) -> dict[str, np.ndarray]:
        healthy = result.diagnostics.healthy_chains
        return {k: np.asarray(v)[healthy] for k, v in result.observables.items()}

    for run, result in {FULL: full, **restricted}.items():
        if not isinstance(result, LLCResult):
            raise TypeError(f"run {run!r} must be an slt.LLCResult, got {type(result).__name__}")
    out = susceptibilities_from_draws(
        observed(full),
        {name: observed(result) for name, result in restricted.items()},
        init_loss=full.init_loss,
        sampling=sampling,
        probes=probes,
    )
    out.problems = tuple(
        Problem(p.category, f"run {run!r}: {p.message}")
        for run, result in {FULL: full, **restricted}.items()
        for p in result.problems
    )
    out.llc = {FULL: full, **restricted}
    return out


def _probe_tuple(value: Any, what: str) -> tuple[torch.Tensor, ...]:
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, (tuple, list)) and value and all(isinstance(t, torch.Tensor) for t in value):
        return tuple(value)
    raise TypeError(
        f"{what} must be a tensor of token ids or a tuple of tensors with the samples along the first axis, "
        f"got {type(value).__name__}"
    )


def _default_sampling_probe(data: Any, size: int, causal: bool) -> tuple[torch.Tensor, ...]:
    if isinstance(data, Mapping):
        if not causal or "input_ids" not in data or not isinstance(data["input_ids"], torch.Tensor):
            raise ValueError(
                "with dict data, the default sampling task needs a causal language model and "
                "data['input_ids']; pass sampling_probe= (fixed training samples, as a probe tuple)"
            )
        tensors: tuple[torch.Tensor, ...] = (data["input_ids"],)
    elif isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        tensors = tuple(data)
        if causal:
            tensors = tensors[:1]
    else:
        raise ValueError(
            f"the default sampling task takes rows of in-memory tensors; with {type(data).__name__} data "
            "pass sampling_probe= (fixed training samples, as a probe tuple)"
        )
    rows = int(tensors[0].shape[0])
    # a fixed random subset, as devinterp's DeterministicShuffledSampler (seed 1337) picks
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(1337))[: min(size, rows)]
    return tuple(t[order.to(t.device)] for t in tensors)


def susceptibilities(
    model: nn.Module,
    data: Any,
    probes: Mapping[str, Any],
    components: Mapping[str, Mask],
    *,
    loss_fn: str | LossFn | None = None,
    per_sample_loss: str | PerSampleLossFn | None = None,
    sampling_probe: Any = None,
    sampling_samples: int = DEFAULT_SAMPLING_SAMPLES,
    probe_batch_size: int | None = None,
    **estimate_kwargs: Any,
) -> SusceptibilityResult:
    r"""Sample the full and each weight-restricted posterior and return devinterp 2.0.1's susceptibilities.

    Runs :func:`slt.estimate_llc` once without a mask (the full run) and once per component with its
    ``mask=``, all with the same settings, each recording the sampling-task loss (fixed training samples)
    and every probe set's per-sample losses at every draw; then applies
    :func:`susceptibilities_from_results`. Cost: ``1 + len(components)`` LLC runs, each evaluating the
    sampling task and every probe set at every draw of every chain. Settings slt chooses per run (the
    default step size, the automatic length) are chosen per run; pass ``step_size`` and ``num_draws`` for
    devinterp's one learning rate and length for all.

    Parameters
    ----------
    model, data, loss_fn
        As for :func:`slt.estimate_llc` (``loss_fn=None`` uses the model's own loss, e.g. a Hugging Face
        causal language model on ``{"input_ids": ids, "labels": ids}``). Left exactly as they were.
    probes : dict of str to Tensor or tuple of Tensor
        The probe sets by name: for a causal language model a tensor of token ids ``(samples, length)``,
        otherwise a tuple such as ``(x, y)``, as :class:`~slt.sampling.PerSampleLoss` takes.
    components : dict of str to mask
        The weight restrictions by name, e.g. ``{"L0H0": slt.masks.head(model, 0, 0)}``; any ``mask=`` of
        :func:`slt.estimate_llc`. ``"full"`` is reserved for the unrestricted run.
    per_sample_loss : {"mse", "cross_entropy", "causal_lm"} or callable, optional
        The per-sample loss of the probe sets and the sampling task (see
        :class:`~slt.sampling.PerSampleLoss`). Default: ``"causal_lm"`` (per-token next-token loss, as
        devinterp's ``compute_per_token_loss``) for a causal language model, else ``loss_fn`` when it is a
        name.
    sampling_probe : Tensor or tuple of Tensor, optional
        The fixed training samples whose mean loss is the sampling task :math:`L_{pt}`. Default: a fixed
        random subset (seed 1337) of ``sampling_samples`` rows of in-memory ``data`` (of a dict, its
        ``input_ids`` only, as devinterp: padding and ``-100`` labels are not looked at; pass
        ``sampling_probe=`` for such data).
    sampling_samples : int
        Rows in the default sampling task (default 96, devinterp's 32 x 3).
    probe_batch_size : int, optional
        Evaluate probe sets in chunks of this many samples.
    **estimate_kwargs
        Any other option of :func:`slt.estimate_llc` (``num_chains``, ``num_draws``, ``step_size``,
        ``n_beta``, ``seed``, ...), the same for every run; not ``mask`` or ``observables``.

    Returns
    -------
    SusceptibilityResult

    Warns
    -----
    slt.warnings.SLTWarning
        The runs' warnings are caught and raised again once per warning class, naming the runs; the
        messages are on ``result.problems``.

    Raises
    ------
    ValueError
        For no probe sets or components, a component named ``"full"``, a probe named ``"sampling"``, no
        per-sample loss to be had, data the default sampling task cannot take, or as
        :func:`slt.estimate_llc` and :class:`~slt.sampling.PerSampleLoss` (the observables are evaluated at
        :math:`w^*` first, so a bad probe set fails before any sampling).
    TypeError
        For ``mask``/``observables`` in ``estimate_kwargs`` or a probe set that is not tensors.
    """
    for reserved in ("mask", "observables"):
        if reserved in estimate_kwargs:
            raise TypeError(
                f"susceptibilities sets {reserved}= itself; call slt.estimate_llc and "
                "susceptibilities_from_results for other layouts"
            )
    if not probes:
        raise ValueError("no probe sets: pass probes={'name': probe_samples, ...}")
    if not components:
        raise ValueError(
            "no components: pass components={'name': mask, ...}, e.g. slt.masks.head(model, 0, 0)"
        )
    if FULL in components:
        raise ValueError(f"{FULL!r} is the unrestricted run, which is always sampled; rename that component")
    if SAMPLING in probes:
        raise ValueError(f"{SAMPLING!r} names the sampling task; rename that probe set")
    if not (isinstance(sampling_samples, int) and sampling_samples > 0):
        raise ValueError(f"sampling_samples must be a positive integer, got {sampling_samples!r}")
    causal = shifts_labels(model)
    if per_sample_loss is None:
        if causal:
            per_sample_loss = "causal_lm"
        elif isinstance(loss_fn, str):
            per_sample_loss = loss_fn
        else:
            raise ValueError(
                "pass per_sample_loss=: a callable loss_fn (or the model's own loss) gives the mean loss of "
                "a batch, and susceptibilities need the loss of each probe sample ('mse', 'cross_entropy', "
                "'causal_lm' or fn(model, batch) with reduction='none')"
            )
    probe_sets = {name: _probe_tuple(value, f"probe set {name!r}") for name, value in probes.items()}
    if sampling_probe is None:
        train = _default_sampling_probe(data, sampling_samples, causal)
    else:
        train = _probe_tuple(sampling_probe, "sampling_probe")

    def observables() -> dict[str, PerSampleLoss]:
        made = {SAMPLING: PerSampleLoss(train, per_sample_loss, batch_size=probe_batch_size)}
        for name, probe in probe_sets.items():
            made[name] = PerSampleLoss(probe, per_sample_loss, batch_size=probe_batch_size)
        return made

    runs: dict[str, LLCResult] = {}
    caught_by_class: dict[type[Warning], list[str]] = {}
    for run, mask in [(FULL, None), *components.items()]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs[run] = estimate_llc(
                model, data, loss_fn=loss_fn, mask=mask, observables=observables(), **estimate_kwargs
            )
        for w in caught:
            caught_by_class.setdefault(w.category, []).append(run)
    result = susceptibilities_from_results(runs[FULL], {k: runs[k] for k in components}, probes=list(probes))
    for category, where in caught_by_class.items():
        where = list(dict.fromkeys(where))
        warnings.warn(
            f"{len(where)} of {len(runs)} runs raised {category.__name__} ({', '.join(where)}); the messages "
            "are on result.problems and result.llc[run].problems",
            category,
            stacklevel=2,
        )
    return result
