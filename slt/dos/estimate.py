"""``estimate_dos``: the density of states of :math:`t = L_n(w) - L_n(w^*)` near a model's trained weights."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from slt.dos.analysis import FIT_FORMS
from slt.dos.diagnostics import (
    analyze_with_form,
    divergence_problems,
    result_problems,
)
from slt.dos.ladder import (
    DEFAULT_NUM_RUNGS,
    as_temperatures,
    default_temperatures,
    reference_temperature,
    run_exchange_ladder,
    run_sgmcmc_ladder,
    rung_step_sizes,
)
from slt.dos.result import DOSResult, DOSSettings, build_result
from slt.samplers import Kernel, kernel_names
from slt.sampling.data import TensorData
from slt.sampling.flat import Mask
from slt.sampling.losses import LossFn
from slt.sampling.settings import validate_settings
from slt.sampling.setup import prepared_sampler
from slt.warnings import emit

__all__ = ["estimate_dos", "dos_samplers", "FULL_BATCH_WORK"]

#: ``sampler="auto"`` uses full-data MALA while samples times parameters stays below this.
FULL_BATCH_WORK = 20_000_000
#: ``exact_loss=None`` evaluates the full-data loss at every draw while this is affordable.
EXACT_LOSS_WORK = 20_000_000


def estimate_dos(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: str | LossFn,
    temperatures: Sequence[float] | np.ndarray | None = None,
    num_rungs: int = DEFAULT_NUM_RUNGS,
    localization: float = 1.0,
    step_size: float | None = None,
    num_chains: int = 8,
    num_draws: int = 1000,
    num_burnin: int | None = None,
    num_steps_bw_draws: int = 1,
    batch_size: int | None = None,
    sampler: str | Kernel = "auto",
    sampler_options: Mapping[str, Any] | None = None,
    swaps: bool = True,
    adapt_step_size: bool = True,
    exact_loss: bool | None = None,
    mask: Mask = None,
    fit_window: tuple[float, float] | None = None,
    fit_form: str = "auto",
    bins_per_decade: int = 10,
    min_count: int = 20,
    num_bootstrap: int = 200,
    seed: int = 0,
    device: torch.device | str | None = None,
    chain_mode: str = "auto",
    compile: bool = False,
    progress: bool = True,
) -> DOSResult:
    r"""Estimate the density of states of the loss near ``model``'s weights, and read λ and m from it.

    Chains run at a ladder of inverse temperatures :math:`x_k`, all with the Gaussian localizer
    :math:`N(w^*, I/\gamma)`, and record :math:`t = L_n(w) - L_n(w^*)`. MBAR reweighting of the pooled
    samples gives :math:`\ln \hat v(t)` up to a constant; a fit of
    :math:`\ln v = \ln c + (\lambda - 1)\ln t + (m - 1)\ln(-\ln t)` on the small-:math:`t` window gives
    :math:`\lambda` and its multiplicity :math:`m`. Bootstrap over whole chains gives bands and errors.

    Parameters
    ----------
    model : nn.Module
        The trained model; its weights are :math:`w^*`. It is copied and left exactly as it was, as are
        the global RNG states.
    data : tuple of Tensor, Dataset or DataLoader
        Training data (in-memory tensors are fastest and allow vectorized chains).
    loss_fn : str or callable
        ``"mse"``, ``"cross_entropy"`` or ``loss_fn(model, batch) -> scalar mean loss``.
    temperatures : sequence of float, optional
        The ladder :math:`x_k = n\beta_k` (sorted for you; 0 samples the localizer alone). Default
        :func:`slt.dos.ladder.default_temperatures`: ``num_rungs`` rungs spaced geometrically from
        :math:`n\beta^*/30` to :math:`30\, n\beta^*`, :math:`n\beta^* = n/\log n`.
    num_rungs : int
        Rungs of the default ladder (ignored with ``temperatures``). Neighbouring rungs overlap when
        their ratio is at most about :math:`\exp(1.5/\sqrt{\lambda})`, so the default 12 rungs over a
        factor of 900 suit :math:`\lambda` up to about 6; a trained network's is usually larger (a
        243-parameter classifier near zero loss: :math:`x E_x[t]` from 17 at the hottest rung to
        52-78 at the coldest, 33-41 rungs over that span, densest at the cold end; 40 evenly spaced
        passed). That rule is a design rule with margin; the :class:`~slt.dos.OverlapWarning` fires on
        the overlap measured between neighbours, below 0.03, and says how many rungs the span needs (a
        linear regression with :math:`\lambda = 12` on the default ladder measured at least 0.19 and
        gave 11.83 ± 0.27, with no ``OverlapWarning``). ``result.rung_llc`` gives :math:`x E_x[t]` per
        rung.
    localization : float
        :math:`\gamma`, shared by every rung.
    step_size : float, optional
        Step at the reference rung (the geometric centre of the ladder, :math:`n\beta^*` by default);
        rung :math:`k` uses ``step_size * x_ref / x_k``, capped at ``0.1 / localization``
        (:func:`slt.dos.ladder.rung_step_sizes`). Default: for MALA
        :math:`1 / ((x_{ref} h + \gamma)\, d^{1/3})` with :math:`h` the top Hessian eigenvalue at
        :math:`w^*`, then adapted; for SG-MCMC :func:`slt.tuning.default_step_size` at
        :math:`x_{ref}`.
    num_chains : int
        Chains per rung (independent replica columns with ``swaps``).
    num_draws : int
        Draws per chain that enter the estimate.
    num_burnin : int, optional
        Steps discarded at the start of each chain (MALA adapts its steps during them); default
        ``num_draws * num_steps_bw_draws``.
    num_steps_bw_draws : int
        Sampler steps per recorded draw.
    batch_size : int, optional
        Minibatch size of the SG-MCMC samplers (default ``min(n, 256)``); MALA always uses the full data.
    sampler : {"auto", "mala", "sgld", "rmsprop_sgld", "sgnht"} or module
        ``"mala"``: Metropolis-adjusted Langevin on the full-data loss with replica swaps between
        neighbouring rungs (exact at any step size). The others run one set of minibatch chains per
        rung through :class:`slt.sampling.PosteriorSampler`: cheaper per step on large data, but biased
        by the step size and without swaps, so cold rungs of singular models stay near :math:`w^*`
        (measured on :math:`K = w_1^2 w_2^2`: per-rung :math:`x\,\mathbb{E}_x[t]` fell to 0.006 at
        :math:`x = 10^8` against 0.45 exact; on reduced-rank regression with :math:`\lambda = 6` the fit
        gave 3.9). ``"auto"`` picks ``"mala"`` for in-memory data with
        ``n * num_params <= FULL_BATCH_WORK``, else ``"sgld"``.
    sampler_options : dict, optional
        Extra keyword arguments of an SG-MCMC kernel's ``step``.
    swaps : bool
        Replica-exchange swaps between neighbouring rungs (MALA only).
    adapt_step_size : bool
        Adapt each rung's MALA step to an acceptance rate of 0.6 during burn-in (then frozen).
    exact_loss : bool, optional
        SG-MCMC only: record the exact full-data loss at each draw (one pass over the data per draw)
        instead of the minibatch loss minus the loss of :math:`w^*` on the same minibatch. Default:
        exact while ``n * num_params <= EXACT_LOSS_WORK``. The paired minibatch difference is unbiased
        but noisy where it matters: at a trained minimum the minibatch gradient at :math:`w^*` is not
        zero, so the noise shrinks like :math:`\sqrt t` while :math:`t` shrinks like :math:`t`. On a
        33-parameter MLP (n = 500, batch 50, same chains) its median relative error grew from 12% on
        the hottest rung to 80% on the coldest, and λ from a power-law fit fell from 5.4 to 4.1.
    mask : list of str or dict of str to bool Tensor, optional
        Sample only these parameters (the weight-restricted density of states).
    fit_window : (float, float), optional
        ``(t_low, t_high)`` of the fit; default :func:`slt.dos.analysis.default_fit_window`.
    fit_form : {"auto", "log", "log2", "power"}
        ``"log"``: :math:`\ln c + (\lambda-1)\ln t + (m-1)\ln(-\ln t)`; ``"log2"`` adds the next
        lower-order term :math:`b/(-\ln t)`; ``"power"`` fixes :math:`m = 1`, and its default window
        is not capped at :math:`t = 10^{-2}`, so it also reads the local slope of a trained network whose
        ladder samples :math:`t \approx \lambda / x` well above that. ``"auto"`` (default): ``"log"``
        where its window spans at least two decades of :math:`t` and pins :math:`m` (a bootstrap standard
        error at most 1; not judged with ``num_bootstrap=0``), otherwise ``"power"`` with a ``FitWarning``
        that gives the log form's numbers and the colder ladder that would reach them; ``"power"`` without
        a warning for a given ``fit_window`` reaching :math:`t = 1`, where only it holds. On a 241-parameter
        tanh MLP (LLC 17.1) the default ladder's log fit read λ = 83.7, m = 291 ± 62 over 0.3 decades; the
        power form read 17.75 ± 0.11 (``benchmarks/results/dos_defaults.md``).
    bins_per_decade : int
        Output bins per decade of :math:`t`.
    min_count : int
        Bins with fewer samples are left out of the curve and the fit.
    num_bootstrap : int
        Bootstrap resamples over chains for bands and standard errors (0 to skip).
    seed : int
        Seed of every random choice; the same seed gives the same numbers on the same machine.
    device : torch.device or str, optional
        Where to sample; default the model's device.
    chain_mode : {"auto", "sequential", "vectorized"}
        Batch the chains with ``torch.func.vmap`` or loop over them.
    compile : bool
        Run the loss and its gradient through ``torch.compile``, as in :func:`slt.estimate_llc` (for
        MALA, the full-data pass of every rung's chains at once; see :mod:`slt.sampling.compiled`).
        ``settings.compile`` records whether it ran compiled, or why not.
    progress : bool
        Show progress bars.

    Returns
    -------
    DOSResult

    Raises
    ------
    ValueError
        On empty data, a non-scalar or non-finite loss at :math:`w^*`, a model without trainable
        parameters, an empty mask, a bad ladder, or out-of-range settings.
    slt.warnings.ChainDivergenceError
        When every chain of a rung diverges.

    Warns
    -----
    slt.dos.OverlapWarning
        When neighbouring rungs share too few samples for reweighting.
    slt.warnings.NotAMinimumWarning
        When more than 5% of the reweighted volume lies below the trained loss.
    slt.dos.FitWarning
        When the fit window holds too few populated bins, or (``fit_form="auto"``) when the log form
        could not tell λ from m and the power form's λ is reported.
    """
    validate_settings(
        localization=localization,
        step_size=step_size,
        num_chains=num_chains,
        num_draws=num_draws,
        num_burnin=num_burnin,
        num_steps_bw_draws=num_steps_bw_draws,
    )
    _validate_dos_settings(
        num_rungs, fit_form, bins_per_decade, min_count, num_bootstrap, fit_window, sampler
    )
    if num_burnin is None:
        num_burnin = num_draws * num_steps_bw_draws
    with prepared_sampler(
        model, data, loss_fn, batch_size=batch_size, mask=mask, device=device, seed=seed, compile=compile
    ) as posterior:
        if temperatures is None:
            ladder = default_temperatures(posterior.n, num_rungs)
            ladder_source = f"geometric, {num_rungs} rungs around n/log n"
        else:
            ladder, ladder_source = as_temperatures(temperatures), "given"
        if np.any(ladder == 0) and localization <= 0:
            raise ValueError(
                "a rung at temperature 0 needs localization > 0 (the prior must be normalizable)"
            )
        reference = reference_temperature(ladder)
        work = posterior.n * posterior.num_params
        name = sampler if isinstance(sampler, str) else getattr(sampler, "name", "custom")
        if name == "auto":
            name = "mala" if isinstance(posterior.data, TensorData) and work <= FULL_BATCH_WORK else "sgld"
        use_mala = name == "mala"
        if step_size is None:
            step_value, step_source = _default_step(
                posterior, use_mala, reference, localization, sampler, seed
            )
        else:
            step_value, step_source = float(step_size), "given"
        steps = rung_step_sizes(step_value, reference, ladder, localization)
        if use_mala:
            exact = True
            run = run_exchange_ladder(
                posterior,
                temperatures=ladder,
                localization=localization,
                step_sizes=steps,
                num_chains=num_chains,
                num_draws=num_draws,
                num_burnin=num_burnin,
                num_steps_bw_draws=num_steps_bw_draws,
                adapt=adapt_step_size,
                swaps=swaps,
                seed=seed,
                chain_mode=chain_mode,
                progress=progress,
            )
        else:
            exact = work <= EXACT_LOSS_WORK if exact_loss is None else bool(exact_loss)
            run = run_sgmcmc_ladder(
                posterior,
                temperatures=ladder,
                localization=localization,
                step_sizes=steps,
                sampler=sampler if not isinstance(sampler, str) or sampler != "auto" else name,
                sampler_options=sampler_options,
                num_chains=num_chains,
                num_draws=num_draws,
                num_burnin=num_burnin,
                num_steps_bw_draws=num_steps_bw_draws,
                exact_loss=exact,
                seed=seed,
                chain_mode=chain_mode,
                progress=progress,
            )
    sampling_problems = divergence_problems(run.diverged, ladder, run.step_sizes)
    analysis, unresolved = analyze_with_form(
        run.t,
        ladder,
        fit_form,
        fit_window,
        bins_per_decade=bins_per_decade,
        min_count=min_count,
        num_bootstrap=num_bootstrap,
        seed=seed,
    )
    settings = DOSSettings(
        temperatures_source=ladder_source,
        reference_temperature=reference,
        localization=float(localization),
        step_size=float(step_value),
        step_size_source=step_source,
        sampler=name,
        sampler_options=dict(sampler_options or {}),
        num_chains=num_chains,
        num_draws=num_draws,
        num_burnin=num_burnin,
        num_steps_bw_draws=num_steps_bw_draws,
        batch_size=None if use_mala else posterior.batch_size,
        exact_loss=exact,
        swaps=bool(swaps and use_mala),
        adapt_step_size=bool(adapt_step_size and use_mala),
        bins_per_decade=bins_per_decade,
        fit_form=fit_form,
        min_count=min_count,
        num_bootstrap=num_bootstrap,
        seed=seed,
        chain_mode=run.chain_mode,
        num_params=posterior.num_params,
        device=str(posterior.device),
        compile=posterior.compile_status,
    )
    result = build_result(
        analysis,
        run.t,
        ladder,
        run.step_sizes,
        run.acceptance,
        run.swap_acceptance,
        run.round_trips,
        posterior.init_loss,
        posterior.n,
        settings,
        run.seconds,
    )
    result = dataclasses.replace(result, problems=sampling_problems + result_problems(result, unresolved))
    emit(result.problems, stacklevel=2)
    return result


def dos_samplers() -> tuple[str, ...]:
    """Sampler names :func:`estimate_dos` takes: ``"auto"``, ``"mala"`` and every registered kernel."""
    return ("auto", "mala", *kernel_names())


def _default_step(posterior, use_mala, reference, localization, sampler, seed) -> tuple[float, str]:
    from slt.tuning import default_step_size, top_curvature

    if use_mala:
        curvature = top_curvature(posterior)
        dim = max(posterior.num_params, 1)
        step = 1.0 / ((reference * curvature + max(localization, 1e-12)) * dim ** (1 / 3))
        return step, f"auto (1/((x_ref h + γ) d^(1/3)) from curvature {curvature:.3g}, then adapted)"
    kernel = sampler if not (isinstance(sampler, str) and sampler == "auto") else "sgld"
    step, source = default_step_size(
        posterior, n_beta=reference, localization=localization, sampler=kernel, seed=seed
    )
    return step, source + " at the reference rung"


def _validate_dos_settings(
    num_rungs, fit_form, bins_per_decade, min_count, num_bootstrap, fit_window, sampler
) -> None:
    for label, value, low in (
        ("num_rungs", num_rungs, 2),
        ("bins_per_decade", bins_per_decade, 1),
        ("min_count", min_count, 1),
        ("num_bootstrap", num_bootstrap, 0),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    if fit_form not in ("auto", *FIT_FORMS):
        raise ValueError(f"fit_form must be one of {('auto', *FIT_FORMS)}, got {fit_form!r}")
    if fit_window is not None:
        try:
            lo, hi = (float(v) for v in fit_window)
        except (TypeError, ValueError):
            raise ValueError(f"fit_window must be a pair (t_low, t_high), got {fit_window!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            raise ValueError(f"fit_window must satisfy 0 < t_low < t_high, got {fit_window!r}")
        if fit_form not in ("power", "auto") and hi >= 1:
            raise ValueError(
                f"fit_window reaches t = {hi:g} >= 1, where ln(-ln t) is undefined; keep t_high < 1 or use "
                "fit_form='power'"
            )
    if isinstance(sampler, str) and sampler not in dos_samplers():
        names = ", ".join(map(repr, dos_samplers()))
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {names}")
