r"""The default step size: a short pilot sized by a predicted discretization bias.

The bias model: for SGLD on a quadratic potential with Hessian eigenvalues :math:`a_i`, the stationary
variance along :math:`i` is :math:`1 / (a_i (1 - \varepsilon a_i / 4))`, so each stiff direction inflates
:math:`\hat\lambda` by a factor :math:`\approx 1 + \varepsilon a_i / 4`. Summed, the absolute bias is about
:math:`(\varepsilon / 8)\, \mathbb{E}\lVert n\beta \nabla L_B\rVert^2`, minibatch gradient noise included
(Mandt, Hoffman & Blei 2017 for the stationary variance of constant-step SGD/SGLD).

That is the bias of the Euler step. SGLD's default Leimkuhler-Matthews noise (:mod:`slt.samplers.sgld`)
removes the full-gradient part exactly on quadratics and keeps only the minibatch part, so for it the
indicator is an upper bound; the rule still sizes the step by it, which keeps the step (and the chains'
stability) where it was and takes most of the bias away.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from slt.samplers import BoundKernel, Kernel
from slt.sampling import PosteriorSampler
from slt.sampling.driver import bind_kernel
from slt.warnings import ChainDivergenceError, ConvergenceWarning

__all__ = [
    "default_step_size",
    "top_curvature",
    "bias_indicator",
    "minibatch_bias",
    "thermostat_minibatch_bias",
    "unstable_chains",
    "STABILITY_LIMIT",
    "largest_preconditioner",
    "DEFAULT_TARGET_BIAS",
    "MAX_PILOT_FACTOR",
    "PILOT_CHAINS",
]

#: Predicted relative bias the default step size aims for.
DEFAULT_TARGET_BIAS = 0.05
#: A chain whose own bias indicator exceeds this has passed the step's stability limit: on a quadratic the
#: indicator is :math:`\varepsilon\,\overline{n\beta a}/4` (the mean curvature over the directions
#: that carry :math:`\hat\lambda`), below 0.5 while every direction has :math:`\varepsilon n\beta a < 2`.
STABILITY_LIMIT = 0.5
#: Times a pilot whose estimate is not positive is rerun four times longer before giving up.
PILOT_RETRIES = 2
#: Pilot chains of :func:`default_step_size` (on a compiled sampler, the run's own chain count).
PILOT_CHAINS = 2
#: Largest factor by which one pilot round may change the step size.
MAX_PILOT_FACTOR = 10.0


def top_curvature(posterior: PosteriorSampler, iterations: int = 12) -> float:
    """Largest Hessian eigenvalue of the loss at :math:`w^*`, by power iteration.

    Hessian-vector products are central differences of gradients on the first full-data batch, so any
    model that supports ``backward()`` works.
    """
    fm = posterior.flat_model
    batch = next(iter(posterior.data.full_batches()))
    center = fm.center
    generator = torch.Generator(device=center.device).manual_seed(12345)
    v = torch.randn(center.shape, generator=generator, dtype=center.dtype, device=center.device)
    v /= v.norm()
    scale = max(float(center.norm()) / math.sqrt(center.numel()), 1.0)
    h = (1e-3 if center.dtype == torch.float32 else 1e-5) * scale
    eigenvalue = 0.0
    try:
        for _ in range(iterations):
            fm.load(center + h * v)
            _, g_plus = fm.loss_and_grad(batch)
            g_plus = g_plus.clone()
            fm.load(center - h * v)
            _, g_minus = fm.loss_and_grad(batch)
            hv = (g_plus - g_minus) / (2 * h)
            eigenvalue = float(torch.dot(hv, v))
            norm = float(hv.norm())
            if not math.isfinite(norm) or norm == 0.0:
                break
            v = hv / norm
    finally:
        fm.load(center)
    return abs(eigenvalue) if math.isfinite(eigenvalue) else 0.0


def bias_indicator(step_size: float, n_beta: float, grad_norm_sq: np.ndarray, llc: float) -> float:
    r"""Predicted relative step-size bias of SGLD's Euler step.

    :math:`\varepsilon\, n\beta^2\, \mathbb{E}\lVert\nabla L_B\rVert^2 / (8 \hat\lambda)`.

    Exact to first order for quadratic losses (minibatch noise included); a rough guide for singular
    models. An upper bound for SGLD with Leimkuhler-Matthews noise (the default), whose first-order
    bias is the minibatch noise's share only: on a regression at twice the automatic step, +3.5% where
    the Euler step has +11% (``tests/estimators/test_llc.py``). For preconditioned samplers pass
    :math:`\sum_i G_i g_i^2` (what the driver records as ``grad_norm_sq``): their bias scales with the
    preconditioned energy, measured 5.5-6x the raw one on small deep linear networks. NaN entries
    (diverged chains) are ignored.
    """
    mean_sq = float(np.nanmean(grad_norm_sq)) if np.isfinite(grad_norm_sq).any() else float("nan")
    if not llc > 0:
        return float("nan")
    return step_size * n_beta**2 * mean_sq / (8.0 * llc)


def minibatch_bias(indicator: float, noise_share: float) -> float:
    r"""Predicted relative bias of SGLD from its minibatch gradient noise alone.

    :math:`b_{mb} = \varepsilon\, n\beta^2\, \mathrm{tr}\,C_B / (8 \hat\lambda)`, with
    :math:`\mathrm{tr}\,C_B` the trace of the minibatch gradient's covariance where the chains are,
    computed as ``indicator`` (:func:`bias_indicator`, the same formula with the whole gradient energy
    :math:`\mathbb{E}\lVert\nabla L_B\rVert^2`) times ``noise_share``, the noise's share of that
    energy (:func:`slt.sampling.checks.minibatch_gradient_noise`). On a quadratic the noise adds
    :math:`(\varepsilon/2)^2 n\beta^2 c_i` per step along direction :math:`i` to the injected
    :math:`\varepsilon`, raising its stationary variance by the factor
    :math:`1 + \varepsilon n\beta^2 c_i / (4 a_i)` and :math:`\hat\lambda` by
    :math:`\varepsilon n\beta^2 c_i / 8` wherever :math:`a_i \gg \gamma` (Mandt, Hoffman & Blei 2017 for
    the stationary variance of a noisy constant step). It is the whole first-order bias of SGLD with
    Leimkuhler-Matthews noise (the default), whose full-gradient part vanishes. NaN unless both
    arguments are finite (0 for full-batch chains, whose share is 0).
    """
    if not (math.isfinite(indicator) and math.isfinite(noise_share)):
        return float("nan")
    return indicator * noise_share


#: Floor of the factor :math:`1 - 2\hat\lambda/d` in :func:`thermostat_minibatch_bias`.
MIN_THERMOSTAT_ANISOTROPY = 0.25


def thermostat_minibatch_bias(
    indicator: float, noise_share: float, gain: float, llc: float, num_params: int
) -> float:
    r"""Predicted relative bias of a thermostatted sampler (SGNHT) from its minibatch gradient noise.

    :math:`g\, b_{mb}\,(1 - 2\hat\lambda/d)` with :math:`b_{mb}` = :func:`minibatch_bias`, :math:`g` the
    kernel's diffusion gain (:math:`2/A` for SGNHT: the noise :math:`\varepsilon^2 n\beta^2 c_i` per step
    against its injected :math:`2A\varepsilon`) and :math:`d` the sampled coordinates. The thermostat
    holds the kinetic energy averaged over all :math:`d` coordinates at its target, so direction
    :math:`i` runs at the temperature :math:`(A + \varepsilon n\beta^2 c_i/2)/(A + \varepsilon n\beta^2
    \bar c/2)`; with the noise in the :math:`2\hat\lambda` stiff directions that carry
    :math:`\hat\lambda`, their excess is the formula above to first order, and it vanishes for a regular
    model (:math:`2\hat\lambda = d`). The factor :math:`1 - 2\hat\lambda/d` is floored at
    :data:`MIN_THERMOSTAT_ANISOTROPY`: a step far too large inflates :math:`\hat\lambda` itself past
    :math:`d/2`, and the factor would then hide the bias that inflated it (the first segments of
    ``slt.calibrate`` with SGNHT on the deep linear network 10-5-10 rank 2: :math:`\hat\lambda` = 55-74
    for d = 100, prediction 0, step kept). Measured on 10-5-10 (rank 1, n = 1e4, batch 1086): predictions
    of 0.066, 0.15 and 0.30 against +9.3%, +13% and +15% (it saturates); a tanh MLP (41 parameters,
    batch 50 of 200): 0.073 against +7.5%. NaN unless every argument is finite and ``llc`` positive.
    """
    values = (indicator, noise_share, gain, llc)
    if not (all(math.isfinite(v) for v in values) and llc > 0 and num_params > 0):
        return float("nan")
    anisotropy = max(1.0 - 2.0 * llc / num_params, MIN_THERMOSTAT_ANISOTROPY)
    return gain * minibatch_bias(indicator, noise_share) * anisotropy


def unstable_chains(
    step_size: float, n_beta: float, grad_norm_sq: np.ndarray, trace: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    r"""Chains that have passed the step's stability limit, and each chain's own bias indicator.

    For each chain, :func:`bias_indicator` over the second half of its draws with its *own*
    :math:`\hat\lambda` (the mean of ``trace`` over the same draws). On a quadratic that is
    :math:`\varepsilon\,\overline{n\beta a}/4` over the directions that carry :math:`\hat\lambda`, below
    :data:`STABILITY_LIMIT` (0.5) while the step is stable in each of them (:math:`\varepsilon n\beta a < 2`);
    above it, a direction oscillates with growing amplitude until the loss's nonlinearity caps it, and the
    chain's loss settles far above the posterior's with every value finite, so no divergence is seen. On the
    deep linear network 5-5-5-5-5 (``benchmarks/bench_defaults.py``, seed 0) one chain of four reached such a
    place: own indicator 0.77 at :math:`\hat\lambda` 27 over the second half of its draws, against 7.9-9.2
    for the others and an exact target of 8.0; a full-batch chain at a third of the step, started from its
    last position, fell back to 7 within a simulated time of 0.005.

    A chain counts only when its :math:`\hat\lambda` is also above the median of the chains within the
    limit (over the same draws): the indicator divides by the chain's own :math:`\hat\lambda`, so a chain
    whose loss fell below the others' on a short run (own :math:`\hat\lambda` 0.52 against 5.1, indicator
    0.96, on a 16-unit classifier with BatchNorm at 200 draws) would otherwise be left out as oscillating.

    Never every chain: when every chain with a finite indicator is past the limit, none is (there is
    no stable chain to keep; the predicted bias of the whole run, :data:`MAX_BIAS_INDICATOR
    <slt.estimators.llc_guards.MAX_BIAS_INDICATOR>`, reports it).

    Parameters
    ----------
    step_size, n_beta : float
        The draws' step and nβ.
    grad_norm_sq : ndarray, shape (chains, draws)
        Squared norm of the minibatch gradient at each draw (NaN where not recorded or diverged).
    trace : ndarray, shape (chains, draws)
        Per-draw :math:`\hat\lambda` (:func:`slt.estimators.length.llc_trace`).

    Returns
    -------
    unstable : ndarray of bool, shape (chains,)
    indicators : ndarray, shape (chains,)
        Each chain's own bias indicator (NaN where it cannot be computed: no gradient norms, λ̂ ≤ 0).
    """
    grad_norm_sq = np.asarray(grad_norm_sq, dtype=float)
    trace = np.asarray(trace, dtype=float)
    chains = trace.shape[0]
    indicators = np.full(chains, np.nan)
    if grad_norm_sq.ndim != 2 or grad_norm_sq.shape[0] != chains or grad_norm_sq.shape[1] < 2:
        return np.zeros(chains, dtype=bool), indicators
    half = grad_norm_sq.shape[1] // 2
    own_llcs = np.full(chains, np.nan)
    for chain in range(chains):
        own = trace[chain, half:]
        if own.size and np.isfinite(own).all():
            own_llcs[chain] = float(own.mean())
            indicators[chain] = bias_indicator(step_size, n_beta, grad_norm_sq[chain, half:], own_llcs[chain])
    finite = np.isfinite(indicators)
    past = finite & (indicators > STABILITY_LIMIT)
    if past.sum() == finite.sum():
        return np.zeros(chains, dtype=bool), indicators
    # past the limit and above the chains within it: a chain whose own λ̂ is low is not oscillating
    stable_level = np.median(own_llcs[finite & ~past])
    return past & (own_llcs > stable_level), indicators


def largest_preconditioner(
    sampler: str | Kernel | BoundKernel, sampler_options: Mapping[str, Any] | None = None
) -> float:
    """The largest diagonal preconditioner ``sampler`` applies (its value before any gradient is seen).

    1 for kernels without a preconditioner (SGLD, SGNHT); ``1 / delta`` for RMSProp-SGLD.
    """
    return bind_kernel(sampler, sampler_options).largest_preconditioner()


def _pilot_run(posterior, n_beta, localization, step, sampler, options, length, seed, history, chains):
    """``chains`` pilot chains of ``length`` steps; on divergence the step is divided by 10 (up to 6 x)."""
    for _ in range(6):
        run = posterior.run(
            n_beta=n_beta,
            localization=localization,
            step_size=step,
            sampler=sampler,
            sampler_options=options,
            num_chains=chains,
            num_draws=length,
            num_burnin=0,
            seed=seed,
            record_grad_norm=True,
            control_variate=True,
        )
        if not run.diverged.any():
            return run, step
        step /= 10
        history.append(f"diverged, {step:.3g}")
    raise ChainDivergenceError(
        f"pilot chains diverged even at step size {step:.3g}; check that the loss is finite near the trained "
        "weights"
    )


def default_step_size(
    posterior: PosteriorSampler,
    *,
    n_beta: float,
    localization: float,
    sampler: str | Kernel | BoundKernel = "sgld",
    sampler_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    target_bias: float = DEFAULT_TARGET_BIAS,
    pilot_steps: int = 200,
    rounds: int = 2,
    run_chains: int | None = None,
) -> tuple[float, str]:
    r"""Choose a step size from a short pilot run.

    1. Start from :math:`0.1 / ((n\beta\, h_{max} + \gamma)\, G_{max})`, with :math:`h_{max}` the top
       Hessian eigenvalue of the loss at :math:`w^*` (2.5% bias along the stiffest direction of a
       quadratic) and :math:`G_{max}` the largest preconditioner the sampler can apply (1 for SGLD and
       SGNHT, :math:`1/\delta` for RMSProp-SGLD). A preconditioned sampler's pilot never raises the step
       above this start.
    2. Run :data:`PILOT_CHAINS` (2) pilot chains of ``pilot_steps`` steps (with the control variate, as
       :func:`slt.estimate_llc`); on divergence divide the step by 10 and retry; if the estimate is not
       positive (a small λ lost in noise), rerun four times longer, up to twice.
    3. Set the step so that :func:`bias_indicator` of the second half of the pilot equals
       ``target_bias`` (changing it by at most a factor of 10 per round); repeat ``rounds`` times. A
       pilot whose estimate is not positive keeps the step and warns.

    ``run_chains``, the chain count of the run the step is for, sets the pilot's on a compiled sampler
    (``compile=True``): the pilot then shares the run's compiled function instead of compiling its own, one
    compilation per chain count and batch shape (10-20 s each on one CPU core for the grokking example's
    MLP in a fresh process).

    Returns
    -------
    step_size : float
    source : str
        A one-line account of how the step was chosen, stored in the result's settings.
    """
    chains = run_chains if posterior.runs_compiled and run_chains is not None else PILOT_CHAINS
    curvature = top_curvature(posterior)
    gain = largest_preconditioner(sampler, sampler_options)
    step = 0.1 / ((n_beta * curvature + max(localization, 1e-12)) * gain)
    step = min(step, 1.0)
    # a preconditioned chain's pilot may shrink the step but not grow it past the start: where the
    # gradient vanishes at w* (normal crossings) its bias indicator is near zero and pushed the step up
    # tenfold per round into a blow-up that never turns non-finite (measured: λ̂ ~ 1e16). SGLD's pilot may
    # grow it (its start is conservative: 2.5% bias along the stiffest direction)
    ceiling = step if gain > 1 else math.inf
    history = [f"start {step:.3g} from curvature {curvature:.3g}"]
    if gain > 1:
        history[0] += f", preconditioner up to {gain:.3g}"
    for r in range(rounds):
        length = pilot_steps
        for attempt in range(PILOT_RETRIES + 1):
            pilot_seed = seed + 7919 * (r + 1)
            run, step = _pilot_run(
                posterior,
                n_beta,
                localization,
                step,
                sampler,
                sampler_options,
                length,
                pilot_seed,
                history,
                chains,
            )
            half = length // 2
            # the control variate (w*'s loss on the same minibatches) as in estimate_llc: without it the
            # minibatch noise swamps small learning coefficients (measured: a normal crossing with λ ≈ 0.36
            # at nβ ≈ 1086 gave negative pilot estimates, and the step was never sized)
            llc = n_beta * float(np.mean(run.loss_trace[:, half:] - run.reference_loss_trace[:, half:]))
            indicator = bias_indicator(step, n_beta, run.grad_norm_sq[:, half:], llc)
            if math.isfinite(indicator) and indicator > 0:
                break
            if attempt < PILOT_RETRIES:  # a small λ drowns in noise on a short pilot: look longer
                length *= 4
                history.append(f"pilot estimate not positive, {length} steps")
        else:
            history.append("pilot estimate not positive; kept")
            warnings.warn(
                f"the pilot run could not size the step: its estimate was not positive ({llc:.3g}) even over "
                f"{length} steps, so the step stays at {step:.3g}. The trained weights may not be a minimum, "
                "or the chains did not move; pass step_size or use slt.calibrate",
                ConvergenceWarning,
                stacklevel=3,
            )
            break
        # one round moves the step by at most MAX_PILOT_FACTOR: a single noisy pilot must not collapse it
        factor = min(max(target_bias / indicator, 1 / MAX_PILOT_FACTOR), MAX_PILOT_FACTOR)
        step = min(step * factor, ceiling)
        history.append(f"{step:.3g}")
    source = f"auto (pilot: predicted bias {target_bias:.0%}; " + " -> ".join(history) + ")"
    return float(step), source
