r"""The local learning coefficient estimator.

.. math::

    \hat\lambda(w^*) = n\beta \big( \mathbb{E}_w[L_n(w)] - L_n(w^*) \big)

with the expectation over the localized tempered posterior, approximated per chain by the mean
minibatch loss over the draws after burn-in. :math:`L_n(w^*)` is computed exactly over the full data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from slt.estimators.diagnostics import diagnose
from slt.estimators.length import (
    AUTO_COMPILE_MIN_STEPS,
    DEFAULT_MAX_STEPS,
    DEFAULT_PRECISION,
    LengthPolicy,
    LengthReport,
    llc_trace,
    min_simulated_time,
    noise_at_chain_ends,
    run_until_converged,
)
from slt.estimators.llc_guards import (
    MAX_BATCH_SIZE_DEPENDENCE,
    MAX_BIAS_INDICATOR,
    _unstable_problem,
    batch_size_problem,
    llc_problems,
)
from slt.estimators.llc_result import (
    LLCChecks,
    LLCResult,
    LLCSettings,
    first_order_bias,
    noise_gain,
    run_simulated_time,
)
from slt.samplers import Kernel, get_kernel
from slt.sampling import PosteriorSampler
from slt.sampling.checks import batch_size_dependence, localization_share, zero_weights_loss
from slt.sampling.data import DEFAULT_EVAL_SAMPLES
from slt.sampling.driver import ChainRun, Observable, bind_kernel
from slt.sampling.flat import Mask
from slt.sampling.losses import LossFn
from slt.sampling.settings import validate_settings
from slt.sampling.setup import prepared_sampler
from slt.tuning import (
    DEFAULT_TARGET_BIAS,
    bias_indicator,
    default_step_size,
    minibatch_bias,
    thermostat_minibatch_bias,
    unstable_chains,
)
from slt.warnings import ChainDivergenceError, emit

__all__ = [
    "estimate_llc",
    "LLCResult",
    "LLCSettings",
    "LLCChecks",
    "summarize_run",
    "first_order_bias",
    "run_simulated_time",
    "llc_interval",
    "llc_problems",
    "MAX_BIAS_INDICATOR",
]


def summarize_run(
    run: ChainRun,
    sampler: PosteriorSampler,
    settings: LLCSettings,
    *,
    warn: bool = True,
    checks: LLCChecks | None = None,
) -> LLCResult:
    """Turn a :class:`~slt.sampling.ChainRun` into an :class:`LLCResult`, warning about unhealthy chains.

    ``checks`` carries what was measured before sampling (the zero-weights loss, the loss's batch-size
    dependence, and after the run the minibatch noise's share of the gradient energy); the distance the
    chains travelled, the bias indicator and, for SGLD, the minibatch share of the bias are added here.
    """
    trace = llc_trace(run, settings.n_beta, sampler.init_loss)
    unstable, own_indicators = unstable_chains(settings.step_size, settings.n_beta, run.grad_norm_sq, trace)
    diagnostics = diagnose(trace, run.divergence_step, unstable)
    healthy = diagnostics.healthy_chains
    if healthy.size == 0:
        steps = ", ".join(str(int(s)) for s in run.divergence_step)
        at_once = (
            "; every chain did so within its first few steps, which also happens when loss_fn is not "
            "finite just beside the trained weights (a log or square root of something that turns "
            "negative, a division by zero): check the loss there first"
            if ((run.divergence_step >= 0) & (run.divergence_step <= 5)).all()
            else ""
        )
        ratio = checks.batch_size_dependence if checks is not None else math.nan
        # a loss that grows with the batch (a sum) has a gradient about batch-size times too large
        summed = batch_size_problem(ratio) if ratio > MAX_BATCH_SIZE_DEPENDENCE else None
        batch = f" ({settings.batch_size})" if settings.batch_size else ""
        raise ChainDivergenceError(
            f"all {len(run.divergence_step)} chains diverged (non-finite loss at steps {steps}) with "
            f"step_size={settings.step_size:.3g}; "
            + (
                f"first fix the loss, which is likely why: {summed}. Average over the batch "
                "(reduction='mean') instead of summing: a summed loss's gradient is about batch-size"
                f"{batch} times too large for the step"
                if summed
                else f"try a smaller step size (for example {settings.step_size / 10:.3g}) or use "
                f"slt.calibrate{at_once}"
            )
        )
    per_chain = np.full(trace.shape[0], np.nan)
    per_chain[healthy] = trace[healthy].mean(axis=1)
    mean = float(per_chain[healthy].mean())
    std = float(per_chain[healthy].std(ddof=1)) if healthy.size > 1 else float("nan")
    stderr = std / math.sqrt(healthy.size) if healthy.size > 1 else float("nan")
    checks = checks or LLCChecks()
    indicator = bias_indicator(settings.step_size, settings.n_beta, run.grad_norm_sq[healthy], mean)
    share, share_stderr = (
        localization_share(trace[healthy], run.distance_sq_trace[healthy], settings.localization, mean)
        if run.distance_sq_trace is not None
        else (float("nan"), float("nan"))
    )
    checks = dataclasses.replace(
        checks,
        distance=float((run.final_positions[healthy] - sampler.center).norm(dim=-1).mean())
        if run.final_positions.numel()
        else float("nan"),
        center_norm=float(sampler.center.norm()),
        free_diffusion=free_diffusion_fraction(run.final_positions[healthy], sampler.center, settings),
        bias_indicator=indicator,
        minibatch_bias=_minibatch_bias(settings, indicator, checks.minibatch_noise, mean),
        localization_share=share,
        localization_share_stderr=share_stderr,
    )
    problems = llc_problems(diagnostics, mean, stderr, settings, checks, sampler.init_loss, trace)
    problems = (*sampler.data.problems, *problems)  # how the data is read (a resampling loader)
    if diagnostics.unstable.any():
        problems = (_unstable_problem(diagnostics, trace, own_indicators, mean, settings), *problems)
    interval = llc_interval(
        mean, stderr, int(healthy.size), checks, trace[healthy], step_bias=first_order_bias(settings, checks)
    )
    if warn:
        emit(problems, stacklevel=3)
    return LLCResult(
        mean=mean,
        std=std,
        stderr=stderr,
        per_chain=per_chain,
        trace=trace,
        loss_trace=run.loss_trace,
        burnin_loss_trace=run.burnin_loss_trace,
        init_loss=sampler.init_loss,
        n=sampler.n,
        settings=settings,
        diagnostics=diagnostics,
        observables=run.observables,
        seconds=run.seconds,
        problems=problems,
        checks=checks,
        interval=interval,
    )


def _minibatch_bias(settings: LLCSettings, indicator: float, share: float, llc: float) -> float:
    """The predicted bias from minibatch noise alone: SGLD's, a thermostatted kernel's, or NaN."""
    gain = noise_gain(settings)
    if gain == 1.0:
        return minibatch_bias(indicator, share)
    return thermostat_minibatch_bias(indicator, share, gain, llc, settings.num_params)


def free_diffusion_fraction(final_positions: torch.Tensor, center: torch.Tensor, s: LLCSettings) -> float:
    r"""Mean :math:`\lVert w_T - w^*\rVert^2` over free diffusion's :math:`d\,\varepsilon T` (SGLD only).

    SGLD's noise adds :math:`\varepsilon` per coordinate and step (also with the Leimkuhler-Matthews
    average, whose terms telescope), so chains no drift has acted on reach
    :math:`\mathbb{E}\lVert w_T - w^*\rVert^2 = d\,\varepsilon T`. NaN for other samplers, without
    positions, or with a zero simulated time.
    """
    tau = run_simulated_time(s)
    if s.sampler != "sgld" or not final_positions.numel() or not tau > 0:
        return float("nan")
    squared = (final_positions.double() - center.double()).pow(2).sum(dim=-1).mean()
    return float(squared / (center.numel() * tau))


def llc_interval(
    mean: float,
    stderr: float,
    num_healthy: int,
    checks: LLCChecks,
    trace: np.ndarray | None = None,
    step_bias: float = float("nan"),
) -> tuple[float, float]:
    r"""A 95% interval for the exact finite-nβ target, widened by the bias the run measured.

    Three parts, added:

    - sampling error: Student's t quantile with (chains - 1) degrees of freedom times ``stderr``
      (3.18 standard errors with four chains, not 1.96: the spread of four chain means is itself uncertain);
    - non-stationarity: the change of :math:`\hat\lambda` over the last doubling of the run
      (``checks.segment_estimates``) or, for a given length, between the halves of the draws (``trace``,
      shape (healthy chains, draws)); a rise widens the interval upwards (the chains were still spreading
      from :math:`w^*`), a fall downwards;
    - step size: the predicted relative discretization bias times :math:`\hat\lambda` widens it
      downwards (a finite step inflates the estimate): ``step_bias`` where finite
      (:func:`first_order_bias`: the minibatch share ``checks.minibatch_bias`` for SGLD's default
      Leimkuhler-Matthews noise, the whole ``checks.bias_indicator`` for the Euler step, where DESIGN §9
      measured +5 to +7% at a 5% prediction), else ``checks.bias_indicator``, an upper bound. On the 32
      default runs of ``benchmarks/results/defaults_minibatch_*.md`` the minibatch share narrowed the
      intervals from 22.6% to 19.2% of the exact target on average and they covered it as often (31 of
      32; the miss is a run the budget stopped, with its ``ConvergenceWarning``).

    Returns ``(nan, nan)`` with fewer than two healthy chains.
    """
    from scipy.stats import t as student_t

    if num_healthy < 2 or not math.isfinite(stderr):
        return float("nan"), float("nan")
    half_width = float(student_t.ppf(0.975, num_healthy - 1)) * stderr
    change = checks.last_change
    if not math.isfinite(change) and trace is not None and trace.ndim == 2 and trace.shape[1] >= 8:
        half = trace.shape[1] // 2
        change = float(trace[:, half:].mean() - trace[:, :half].mean())
    change = change if math.isfinite(change) else 0.0
    fraction = step_bias if math.isfinite(step_bias) else checks.bias_indicator
    widening = fraction * mean if math.isfinite(fraction) and mean > 0 else 0.0
    low = mean - half_width - max(widening, 0.0) - max(-change, 0.0)
    high = mean + half_width + max(change, 0.0)
    return float(low), float(high)


def _compile_record(status: str, report: LengthReport | None) -> str:
    """``settings.compile``: the run's compile status, with the step a long automatic run switched at."""
    if report is not None and report.compiled_from is not None and status == "compiled":
        return f"compiled from step {report.compiled_from}"
    return status


def estimate_llc(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: str | LossFn | None = None,
    n: int | None = None,
    n_unit: str = "auto",
    eval_samples: int = DEFAULT_EVAL_SAMPLES,
    model_mode: str = "eval",
    n_beta: float | None = None,
    localization: float = 1.0,
    step_size: float | None = None,
    num_chains: int | None = None,
    num_draws: int | None = None,
    num_burnin: int | None = None,
    num_steps_bw_draws: int = 1,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    max_seconds: float | None = None,
    precision: float = DEFAULT_PRECISION,
    target_bias: float = DEFAULT_TARGET_BIAS,
    batch_size: int | None = None,
    sampler: str | Kernel = "sgld",
    sampler_options: Mapping[str, Any] | None = None,
    mask: Mask = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    chain_mode: str = "auto",
    compile: bool | None = None,
    observables: Mapping[str, Observable] | None = None,
    control_variate: bool = True,
    progress: bool = True,
) -> LLCResult:
    r"""Estimate the local learning coefficient of ``model`` at its current weights.

    Parameters
    ----------
    model : nn.Module
        The trained model; its weights are :math:`w^*`. It is copied and left exactly as it was
        (weights, gradients, train/eval mode, ``requires_grad``), as are the global RNG states.
    data : tuple or dict of Tensor, Dataset, IterableDataset or DataLoader
        Training data. In-memory tensors are fastest; a dict (a tokenizer's ``BatchEncoding`` of
        ``input_ids``, ``attention_mask``, ``labels``) gives dict batches. Floating-point data is cast to
        the model's dtype, integer data (token ids, labels) is left as it is. A stream
        (``IterableDataset``, e.g. a streaming Hugging Face dataset) needs ``n``. The minibatches of a
        dataset, or of a ``DataLoader`` with its default sampler (its batch size kept), hold samples drawn
        independently from all of it (see :class:`slt.sampling.data.LoaderData`).
    loss_fn : str, callable or None
        ``"mse"``, ``"cross_entropy"`` or ``loss_fn(model, batch)`` returning the scalar mean loss, a
        dict with ``"loss"`` or an output with ``.loss`` (a Hugging Face ``ModelOutput``). ``None`` (the
        default) uses the loss the model computes itself: ``model(**batch).loss`` for dict batches,
        ``model(*batch)`` for tuples (for Hugging Face models, the batch must hold ``labels``). The mean
        negative log-likelihood per sample (or per token) is what the theory assumes.
    n : int, optional
        The sample size, in ``n_unit``; default: counted over the data. Required for a stream.
    n_unit : {"auto", "samples", "tokens"}
        What n counts. ``"samples"``: rows of the data (sequences); ``"tokens"``: the tokens the loss
        averages over (``labels`` other than -100, without each sequence's first for causal language
        models; else the attention mask). ``"auto"`` counts tokens for token data (dict batches with
        ``input_ids``, or integer ``(sequences, positions)`` ids alone or with labels of their shape;
        ids alone, or labels equal to them, lose each sequence's first) and samples otherwise: n·L_n is then
        the negative log-likelihood of the data, as the tempered posterior needs (see the docs page on n
        for sequence data). Recorded in ``settings.n_unit``.
    eval_samples : int
        For a stream only: the samples read to evaluate L_n(w*) (finite data is read whole).
    model_mode : {"eval", "train"}
        The mode of the working copy while sampling. ``"eval"`` (default): dropout off and batch-norm
        statistics frozen, so L_n(w) is a deterministic function of w, as the theory defines it.
        ``"train"``: dropout on (devinterp's choice), L_n(w*) and the control variate in train mode too;
        chains then run sequentially. The caller's model keeps its modes either way.
    n_beta : float, optional
        Inverse temperature times sample size; default ``n / log n``.
    localization : float
        Strength :math:`\gamma` of the pull towards :math:`w^*`.
    step_size : float, optional
        Sampler step size. By default chosen from the curvature of the loss at :math:`w^*` (see
        :func:`slt.tuning.default_step_size`); :func:`slt.calibrate` chooses more carefully.
    num_chains : int, optional
        Independent chains, all started at :math:`w^*`. Default 4, or 16 for a tiny model whose chains
        run stacked (parameters times batch size at most
        :data:`~slt.sampling.driver.MANY_CHAINS_MAX_WORK`), where 16 cost about what 4 do one after
        another (:meth:`~slt.sampling.PosteriorSampler.resolve_num_chains`); recorded in
        ``settings.num_chains``.
    num_draws : int, optional
        Draws per chain that enter the estimate. By default (``None``) the length is automatic: the
        chains run in doubling segments until the estimate over the last segment agrees with the one
        before (within 5% plus two standard errors), the last segment giving the draws and the rest
        burn-in, once the standard error is within 5% of the estimate and the simulated time
        :math:`\varepsilon T` has reached :math:`0.5/\max(\gamma, 1)` (see :mod:`slt.estimators.length`);
        a budget stops it with a warning.
    num_burnin : int, optional
        With ``num_draws``: steps discarded at the start of each chain (default
        ``num_draws * num_steps_bw_draws``). Not allowed with the automatic length.
    num_steps_bw_draws : int
        Sampler steps per recorded draw.
    max_steps : int or None
        Budget of steps per chain for the automatic length (``None``: unlimited).
    max_seconds : float or None
        Budget of wall time for the chains of the automatic length (``None``: unlimited).
    precision : float
        Largest standard error of :math:`\hat\lambda` across chains, relative to it, that the automatic
        length accepts as converged (default 5%). Halving it costs about four times the draws.
    target_bias : float
        Relative step-size bias the automatic step aims at, as predicted by
        :func:`slt.tuning.bias_indicator` (default 5%; an upper bound, reached on normal crossings).
        Halving it halves the step and about doubles the steps the run needs: on the normal crossing
        :math:`w_1^2 w_2^2` (n = 10,000) 2.5% moved the mean error over four seeds against the exact
        target from +4.9% to 0.0% (``benchmarks/results/defaults_target_bias_nc.md``). Ignored with a
        given ``step_size``.
    batch_size : int, optional
        Minibatch size; not allowed with a ``DataLoader``. By default the whole data when n is at most
        the cap (4096 samples and 2^20 / the work per sample: the parameters, or half the forward pass's
        FLOPs when more, as for convolutions), otherwise sized for nβ: at least 256, up to nβ
        samples and the cap, since minibatch noise in the step grows as nβ / batch (see
        :meth:`~slt.sampling.driver.PosteriorSampler.size_batch_for`); recorded in
        ``settings.batch_size_source``.
    sampler : {"sgld", "rmsprop_sgld", "sgnht"}, any registered name, or Kernel
        The kernel; see :mod:`slt.samplers` and :func:`slt.samplers.register_kernel`.
    sampler_options : dict, optional
        The kernel's options (``alpha``, ``delta``, ``adapt_steps`` of ``"rmsprop_sgld"``, ``diffusion``
        of ``"sgnht"``); an unknown name raises. A kernel that adapts (RMSProp-SGLD) stops adapting at
        the end of burn-in unless told otherwise, which keeps the draws from a fixed kernel.
    mask : list of str or dict of str to bool Tensor, optional
        Sample only these parameters (names or module prefixes) or entries: the weight-restricted LLC.
    seed : int
        Seed of every random choice; the same seed gives the same numbers on the same machine.
    device : torch.device or str, optional
        Where to sample; default the model's device.
    chain_mode : {"auto", "sequential", "vectorized"}
        Run chains one after another or batched with ``torch.func.vmap``; ``"auto"`` picks the faster
        for the model size and device.
    compile : bool or None
        Run the loss and its gradient through ``torch.compile`` (see :mod:`slt.sampling.compiled`). It
        costs seconds of compilation once per architecture and process (tens of seconds for the first),
        then runs each step in 0.2-0.9x the eager time on small networks (``benchmarks/bench_compile.py``):
        worth it for long runs and sweeps, which reuse the compiled function across checkpoints. The
        compiled gradient is checked against the eager one at its first call; where compilation fails or
        disagrees, the chains run eagerly and ``settings.compile`` says why. ``True`` compiles from the
        first step, ``False`` never. ``None`` (the default) compiles only what is long and gains most: from
        :data:`~slt.estimators.length.AUTO_COMPILE_MIN_STEPS` steps per chain on (the automatic length's
        first segment that long; a given length that long as a whole), where compiled chains would run
        stacked (:meth:`slt.sampling.PosteriorSampler.compile_pays`); ``settings.compile`` then reads
        ``"compiled from step N"`` (an automatic length) or ``"compiled"`` (a given length). The rule
        counts steps, not seconds, so a seed gives the same run.
    observables : dict of str to callable, optional
        ``fn(model)`` evaluated on the sampled model at every draw, returning a number, tensor or numeric
        array of a fixed shape; stored in ``result.observables`` as ``(chains, draws, ...)``. Each is
        evaluated once at :math:`w^*` before sampling, so a bad one fails at once, by name.
        :class:`slt.sampling.PerSampleLoss` records per-sample losses on a probe set (for :func:`slt.bif`).
    control_variate : bool
        Subtract the loss of :math:`w^*` *on the same minibatch* at each draw instead of
        :math:`L_n(w^*)`. Both are unbiased; the paired difference cancels the minibatch-to-minibatch
        noise of the loss, which otherwise dominates the variance (it is multiplied by
        :math:`n\beta`). Costs one forward pass per draw.
    progress : bool
        Show a progress bar.

    Returns
    -------
    LLCResult

    Raises
    ------
    ValueError
        On empty data, a non-scalar or non-finite loss at :math:`w^*`, an output without a loss, a
        model without trainable parameters, an empty mask, a device this process cannot use, a stream
        without ``n``, out-of-range settings, or an observable that raises at :math:`w^*`.
    TypeError
        For an observable that is not callable or returns something other than numbers (a dict, ...).
    slt.warnings.ChainDivergenceError
        When every chain diverges.
    """
    validate_settings(
        n_beta=n_beta,
        localization=localization,
        step_size=step_size,
        precision=precision,
        target_bias=target_bias,
        num_chains=num_chains,
        num_draws=num_draws,
        num_burnin=num_burnin,
        num_steps_bw_draws=num_steps_bw_draws,
    )
    auto_length = num_draws is None
    if auto_length:
        if num_burnin is not None:
            raise ValueError("num_burnin goes with num_draws; leave both None for the automatic length")
        policy = LengthPolicy(
            max_steps=max_steps,
            max_seconds=max_seconds,
            min_simulated_time=min_simulated_time(localization),
            precision=precision,
        )
        num_burnin = policy.first_segment
    elif num_burnin is None:
        num_burnin = num_draws * num_steps_bw_draws
    kernel = bind_kernel(sampler, sampler_options, num_burnin)
    report = None
    with prepared_sampler(
        model,
        data,
        loss_fn,
        batch_size=batch_size,
        mask=mask,
        device=device,
        seed=seed,
        n=n,
        n_unit=n_unit,
        eval_samples=eval_samples,
        model_mode=model_mode,
        compile=bool(compile),
    ) as posterior:
        checks = LLCChecks(
            zero_weights_loss=zero_weights_loss(posterior),
            batch_size_dependence=batch_size_dependence(posterior),
        )
        n_beta_value, n_beta_source = posterior.resolve_n_beta(n_beta)
        num_chains = posterior.resolve_num_chains(num_chains, chain_mode)
        if step_size is None:
            # the pilot adapts throughout (it is short), with the user's other options
            step_size, step_size_source = default_step_size(
                posterior,
                n_beta=n_beta_value,
                localization=localization,
                sampler=get_kernel(sampler).bind(sampler_options),
                seed=seed,
                target_bias=target_bias,
                run_chains=num_chains,
            )
        else:
            step_size_source = "given"
        if auto_length:
            run, report = run_until_converged(
                posterior,
                kernel=kernel,
                n_beta=n_beta_value,
                localization=localization,
                step_size=step_size,
                num_chains=num_chains,
                seed=seed,
                policy=policy,
                num_steps_bw_draws=num_steps_bw_draws,
                chain_mode=chain_mode,
                observables=observables,
                control_variate=control_variate,
                recheck_step=step_size_source != "given",
                target_bias=target_bias,
                progress="LLC" if progress else False,
                compile_from=AUTO_COMPILE_MIN_STEPS if compile is None else None,
            )
            if report.step_history:
                step_size_source += "; rechecked: " + "; ".join(report.step_history)
            step_size = report.step_size
            num_draws = run.loss_trace.shape[1]
            num_burnin = sum(report.segment_steps) - num_draws * num_steps_bw_draws
        else:
            total = num_burnin + num_draws * num_steps_bw_draws
            long_run = compile is None and total >= AUTO_COMPILE_MIN_STEPS
            if long_run and posterior.compile_pays(num_chains, chain_mode):
                posterior.enable_compile()
            run = posterior.run(
                n_beta=n_beta_value,
                localization=localization,
                step_size=step_size,
                sampler=kernel,
                num_chains=num_chains,
                num_draws=num_draws,
                num_burnin=num_burnin,
                num_steps_bw_draws=num_steps_bw_draws,
                seed=seed,
                chain_mode=chain_mode,
                observables=observables,
                control_variate=control_variate,
                record_grad_norm=True,
                progress="LLC" if progress else False,
            )
        checks = dataclasses.replace(checks, minibatch_noise=noise_at_chain_ends(posterior, run, seed=seed))
    settings = LLCSettings(
        n_beta=n_beta_value,
        n_beta_source=n_beta_source,
        n_unit=posterior.n_unit,
        n_source=posterior.n_source,
        model_mode=model_mode,
        localization=float(localization),
        step_size=float(step_size),
        step_size_source=step_size_source,
        sampler=kernel.name,
        sampler_options=kernel.settings(),
        num_chains=num_chains,
        num_draws=num_draws,
        num_burnin=num_burnin,
        num_steps_bw_draws=num_steps_bw_draws,
        batch_size=posterior.batch_size,
        batch_size_source=posterior.batch_size_source,
        seed=seed,
        chain_mode=run.chain_mode,
        num_params=posterior.num_params,
        device=str(posterior.device),
        compile=_compile_record(run.compile, report),
        control_variate=control_variate,
        length_source="auto" if auto_length else "given",
        simulated_time=report.simulated_time
        if report
        else step_size * (num_burnin + num_draws * num_steps_bw_draws),
        converged=report.converged if report else None,
        max_steps=max_steps if auto_length else None,
        max_seconds=max_seconds if auto_length else None,
        precision=precision if auto_length else None,
        target_bias=float(target_bias) if step_size_source != "given" else None,
    )
    if report is not None:
        checks = dataclasses.replace(
            checks,
            segment_steps=report.segment_steps,
            segment_estimates=report.segment_estimates,
            segment_stderrs=report.segment_stderrs,
            step_history=report.step_history,
        )
    return summarize_run(run, posterior, settings, checks=checks)
