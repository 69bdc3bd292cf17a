r"""The exact finite-nβ value the LLC estimator targets, to score estimates against.

:func:`slt.estimate_llc` estimates

.. math::

    T = n\beta\,\big(\mathbb{E}_w[L_n(w)] - L_n(w^*)\big), \qquad
    p(w) \propto \exp\!\big(-n\beta\, L_n(w) - \tfrac{\gamma}{2}\lVert w - w^*\rVert^2\big),

the WBIC-style tempered posterior (Watanabe, 2013) localized at the trained weights :math:`w^*`, with
nβ = n / log n by default. T tends to the learning coefficient λ only as n grows, and at the sizes of the
benchmarks it sits 14-21% below Aoyagi's λ for deep linear networks (DESIGN.md §9, "The yardstick"): a
good estimator should be scored against T, and T against λ separately (:meth:`ExactTarget.offset_from`).

* :func:`exact_llc_target`: T for any model and data, from long full-batch Metropolis-adjusted Langevin
  chains (MALA; Roberts & Tweedie, 1996), exact for any step size, run until the estimate stops moving.
* :func:`quadratic_target` and :func:`linear_regression_target`: the closed form for a quadratic loss.
* :func:`normal_crossing_target`: the normal crossing :math:`f = x\, w_1 w_2^k`, by quadrature.

All values are in the units of λ (nats times nβ: dimensionless).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from slt.results.base import JSONResult
from slt.samplers import LocalPosterior, mala
from slt.sampling.driver import chain_seeds
from slt.sampling.flat import Mask
from slt.sampling.full_loss import full_loss_over_positions
from slt.sampling.losses import LossFn
from slt.sampling.progress import progress_bar
from slt.sampling.settings import default_n_beta, validate_settings
from slt.sampling.setup import prepared_sampler
from slt.warnings import ConvergenceWarning, Problem, emit

__all__ = [
    "ExactTarget",
    "exact_llc_target",
    "quadratic_target",
    "linear_regression_target",
    "normal_crossing_target",
    "TARGET_ACCEPTANCE",
]

#: Mean Metropolis acceptance probability the step size is adapted to during burn-in.
TARGET_ACCEPTANCE = 0.7
#: Below this mean acceptance over the draws the chains are not counted as converged.
MIN_ACCEPTANCE = 0.1
#: Change of the log step size per burn-in step, per unit of (acceptance - target).
ADAPT_GAIN = 0.1

RegressionLoss = Literal["mse", "gaussian_nll"]


@dataclass
class ExactTarget(JSONResult):
    r"""The exact finite-nβ target :math:`T = n\beta(\mathbb{E}_w[L_n(w)] - L_n(w^*))` and how it was found.

    Attributes
    ----------
    value : float
        T, the mean over chains of each chain's mean over the last half of its draws.
    stderr : float
        Standard error of ``value``: the spread of the per-chain values over the square root of their
        number (the chains are independent, so no autocorrelation estimate is needed).
    n_beta : float
        nβ, the inverse temperature times the sample size.
    localization : float
        γ, the strength of the localizing prior.
    steps : int
        MALA steps per chain after burn-in (the value uses the last half of them).
    burnin_steps : int
        Steps per chain during which the step size was adapted (not used in the value).
    step_size : float
        The frozen step size ε of the draws (:mod:`slt.samplers.mala`'s convention).
    acceptance : float
        Mean Metropolis acceptance probability over the draws.
    converged : bool
        Whether the last two quarters, and the last half against the quarter before it, agreed within
        ``tolerance`` relative plus two standard errors of their difference, the standard error was
        within ``tolerance`` relative, and the chains moved (a mean acceptance of at least 0.1).
    chain_values : ndarray, shape (chains,)
        Each chain's mean of :math:`n\beta(L_n(w) - L_n(w^*))` over the last half of its draws.
    history : tuple of (steps, value, stderr)
        The estimate at each doubling of the length.
    init_loss : float
        :math:`L_n(w^*)`, the full-data mean loss at the trained weights.
    n : int
        Number of samples in the data.
    seconds : float
        Wall time.
    problems : tuple of Problem
        A :class:`~slt.warnings.ConvergenceWarning` when the chains did not converge.
    """

    value: float
    stderr: float
    n_beta: float
    localization: float
    steps: int
    burnin_steps: int
    step_size: float
    acceptance: float
    converged: bool
    chain_values: np.ndarray = field(repr=False)
    history: tuple[tuple[int, float, float], ...] = ()
    init_loss: float = math.nan
    n: int = 0
    seconds: float = math.nan
    problems: tuple[Problem, ...] = ()

    def offset_from(self, lam: float) -> float:
        r"""Relative offset :math:`(T - \lambda) / \lambda` of the target from an asymptotic λ.

        Raises
        ------
        ValueError
            For λ = 0 (the offset is undefined).
        """
        if lam == 0:
            raise ValueError("the offset from lambda = 0 is undefined; compare the values directly")
        return (self.value - lam) / lam


def exact_llc_target(
    model: nn.Module,
    data: Any,
    loss_fn: str | LossFn,
    *,
    n_beta: float | None = None,
    localization: float = 1.0,
    mask: Mask = None,
    num_chains: int = 16,
    seed: int = 0,
    max_steps: int = 100_000,
    max_seconds: float | None = None,
    burnin_steps: int = 500,
    min_steps: int = 1000,
    tolerance: float = 0.01,
    target_acceptance: float = TARGET_ACCEPTANCE,
    chain_mode: str = "auto",
    progress: bool = False,
    device: torch.device | str | None = None,
) -> ExactTarget:
    r"""The exact finite-nβ target of :func:`slt.estimate_llc`, from full-batch Metropolis-adjusted chains.

    ``num_chains`` MALA chains (Roberts & Tweedie, 1996) start at :math:`w^*` and sample the localized
    tempered posterior :math:`p(w) \propto \exp(-n\beta L_n(w) - \tfrac{\gamma}{2}\lVert w-w^*\rVert^2)`
    with the loss over *all* the data at every step, so they are exact for any step size. During the
    first ``burnin_steps`` the step size's logarithm moves by ``0.1 * (acceptance - target_acceptance)``
    per step (the mean acceptance probability over chains); the draws use the geometric mean of the
    step over the second half of burn-in, frozen. The chains then run ``min_steps`` steps, and their
    length doubles until (a) the means over the last two quarters of the draws and (b) the mean over
    the last half against the quarter before it agree within ``tolerance`` relative plus two standard
    errors of the per-chain differences, and (c) the standard error of the value is within ``tolerance``
    relative (without it the test of (a) and (b) has too little power to see a slow drift), or until
    burn-in plus draws would exceed ``max_steps``, or the next doubling would end past ``max_seconds`` at the
    pace of the steps so far. The
    value is the mean over the last half of the draws (DESIGN.md §9: chains started at :math:`w^*`
    drift together for a long time, which comparing successive doublings detects).

    The model is copied (its weights, gradients and train/eval mode are left as they are) and the global
    random number generators are restored afterwards.

    Parameters
    ----------
    model : nn.Module
        The trained model; its weights are :math:`w^*`.
    data : tuple of Tensor, Dataset or DataLoader
        The training data, as for :func:`slt.estimate_llc`. In-memory tensors let the chains run as
        one ``torch.func.vmap`` batch; other data are iterated in full for every chain and step.
    loss_fn : str or callable
        ``"mse"``, ``"cross_entropy"`` or ``loss_fn(model, batch) -> scalar mean loss``.
    n_beta : float, optional
        nβ; default ``n / log n`` (:func:`slt.sampling.settings.default_n_beta`), as ``estimate_llc``.
    localization : float
        γ; default 1, as ``estimate_llc``.
    mask : optional
        Sample only part of the parameters (see :func:`slt.sampling.flat.select_parameters`).
    num_chains : int
        Independent chains, at least 2 (their spread gives the standard error).
    seed : int
        Seed of the chains' noise.
    max_steps : int
        Most steps per chain, burn-in included.
    max_seconds : float, optional
        Wall-time budget: no doubling starts that would end past it (measured from the call's start, at
        the pace of the steps run so far). Default none.
    burnin_steps : int
        Steps of step-size adaptation, discarded.
    min_steps : int
        Steps after burn-in before the first convergence check; each check doubles the length.
    tolerance : float
        Relative agreement required between successive windows (besides two standard errors), and the
        relative standard error required of the value.
    target_acceptance : float
        Acceptance rate of the step-size adaptation, in (0, 1).
    chain_mode : {"auto", "vectorized", "sequential"}
        Evaluate the chains' losses together through ``vmap`` (in-memory data) or one by one.
    progress : bool
        Show a progress bar.
    device : torch.device or str, optional
        Where to sample; default the model's device.

    Returns
    -------
    ExactTarget

    Raises
    ------
    ValueError
        For out-of-range settings, or as :class:`slt.sampling.PosteriorSampler` (empty data, a
        non-finite loss at :math:`w^*`).

    Warns
    -----
    ConvergenceWarning
        When the windows still disagree at ``max_steps``: raise ``max_steps`` (the message says to what).
    """
    validate_settings(n_beta=n_beta, localization=localization, num_chains=num_chains, seed=seed)
    if num_chains < 2:
        raise ValueError(f"num_chains must be at least 2 (their spread gives the error), got {num_chains}")
    for name, value, low in (("burnin_steps", burnin_steps, 0), ("min_steps", min_steps, 4)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(max_steps, int) or max_steps < burnin_steps + min_steps:
        raise ValueError(
            f"max_steps must be an integer >= burnin_steps + min_steps = {burnin_steps + min_steps}, "
            f"got {max_steps!r}"
        )
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance}")
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise ValueError(f"max_seconds must be a positive number of seconds or None, got {max_seconds!r}")
    if not 0 < target_acceptance < 1:
        raise ValueError(f"target_acceptance must lie in (0, 1), got {target_acceptance}")

    start = time.perf_counter()
    with prepared_sampler(model, data, loss_fn, mask=mask, device=device, seed=seed) as posterior:
        nb = float(n_beta) if n_beta is not None else default_n_beta(posterior.n)
        fm = posterior.flat_model
        full_loss = full_loss_over_positions(posterior, chain_mode, num_chains)
        target = LocalPosterior(
            n_beta=nb, localization=float(localization), center=fm.center, mask=fm.coordinate_mask
        )
        generator = torch.Generator(device=posterior.device).manual_seed(chain_seeds(seed, 1)[0])
        reference, _ = full_loss(fm.center.unsqueeze(0).clone())
        init_loss = float(reference[0])
        positions = fm.center.expand(num_chains, -1).clone()
        loss, grad = full_loss(positions)
        state = mala.init(positions, loss, grad)

        bar = progress_bar(progress, max_steps, "exact target")
        try:
            # -- burn-in: adapt the step to the target acceptance, then freeze it
            log_eps = -math.log(nb + localization + 1.0)
            late_sum, late_count = 0.0, 0
            for step in range(burnin_steps):
                state, prob = _mala_step(state, target, full_loss, generator, math.exp(log_eps))
                log_eps += ADAPT_GAIN * (float(prob.mean()) - target_acceptance)
                if step >= burnin_steps // 2:
                    late_sum += log_eps
                    late_count += 1
                if bar is not None:
                    bar.update(1)
            step_size = math.exp(late_sum / late_count) if late_count else math.exp(log_eps)

            # -- draws: double the length until successive windows agree
            pieces: list[Tensor] = []
            accept_sum = 0.0
            done = 0
            length = min_steps
            history: list[tuple[int, float, float]] = []
            converged = False
            stopped_by = ""
            draws_start = time.perf_counter()
            while True:
                for _ in range(length - done):
                    state, prob = _mala_step(state, target, full_loss, generator, step_size)
                    pieces.append(state.loss.detach())
                    accept_sum += float(prob.mean())
                    if bar is not None:
                        bar.update(1)
                done = length
                trace = nb * (torch.stack(pieces, dim=1).double().cpu().numpy() - init_loss)
                check = _windows(trace, tolerance)
                history.append((length, check.value, check.stderr))
                if check.agree:
                    converged = True
                    break
                if burnin_steps + 2 * length > max_steps:
                    stopped_by = f"max_steps={max_steps}"
                    break
                if max_seconds is not None:
                    pace = (time.perf_counter() - draws_start) / length
                    if time.perf_counter() - start + pace * length > max_seconds:
                        stopped_by = f"max_seconds={max_seconds:g}"
                        break
                length *= 2
        finally:
            if bar is not None:
                bar.close()
            fm.load(fm.center)

    acceptance = accept_sum / max(done, 1)
    if acceptance < MIN_ACCEPTANCE:  # chains that hardly move agree with each other trivially
        converged = False
        check.reason = (
            f"the chains hardly moved (mean acceptance {acceptance:.3g}, step size {step_size:.3g}); "
            "raise burnin_steps so that the step size can adapt"
        )
    problems: tuple[Problem, ...] = ()
    if not converged:
        stopper = f" ({stopped_by} stopped it)" if stopped_by else ""
        seconds = " and max_seconds" if stopped_by.startswith("max_seconds") else ""
        problems = (
            Problem.of(
                ConvergenceWarning,
                f"the exact target has not converged after {burnin_steps + done} steps per chain{stopper}: "
                f"{check.reason}. Raise max_steps (to at least {burnin_steps + 4 * done}){seconds} "
                "or the number of chains, and do not use this value as a reference until it converges",
            ),
        )
        emit(problems, stacklevel=2)
    return ExactTarget(
        value=check.value,
        stderr=check.stderr,
        n_beta=nb,
        localization=float(localization),
        steps=done,
        burnin_steps=burnin_steps,
        step_size=step_size,
        acceptance=acceptance,
        converged=converged,
        chain_values=check.chain_values,
        history=tuple(history),
        init_loss=init_loss,
        n=posterior.n,
        seconds=time.perf_counter() - start,
        problems=problems,
    )


def _mala_step(
    state: mala.MALAState, target: LocalPosterior, full_loss: Any, generator: torch.Generator, eps: float
) -> tuple[mala.MALAState, Tensor]:
    proposal = mala.propose(state, target, generator, step_size=eps)
    proposal_loss, proposal_grad = full_loss(proposal)
    return mala.accept(state, proposal, proposal_loss, proposal_grad, target, generator, step_size=eps)


@dataclass
class _Check:
    value: float
    stderr: float
    chain_values: np.ndarray
    agree: bool
    reason: str


def _windows(trace: np.ndarray, tolerance: float) -> _Check:
    """Value, error and agreement of the windows of ``trace`` (shape (chains, steps)), as described above."""
    chains, steps = trace.shape
    q = steps // 4
    second, third, fourth = (trace[:, k * q : (k + 1) * q].mean(1) for k in (1, 2, 3))
    last_half = trace[:, 2 * q :].mean(1)
    value = float(last_half.mean())
    stderr = float(last_half.std(ddof=1) / math.sqrt(chains))
    allowed = tolerance * abs(value)
    reasons = []
    if not stderr <= allowed:  # without this precision the windows' agreement says little (also NaN)
        reasons.append(f"the standard error {stderr:.3g} exceeds the tolerance ({allowed:.3g})")
    for label, diff in (
        ("the last two quarters differ by", fourth - third),
        ("the last half differs from the quarter before it by", last_half - second),
    ):
        gap = float(diff.mean())
        se = float(diff.std(ddof=1) / math.sqrt(chains))
        if not abs(gap) <= allowed + 2 * se:  # also false for NaN
            reasons.append(f"{label} {gap:+.4g} (allowed {allowed:.3g} + 2 x {se:.3g})")
    return _Check(value, stderr, last_half, not reasons, "; ".join(reasons))


# -- closed forms -------------------------------------------------------------------------------


def quadratic_target(hessian_eigenvalues: Any, n_beta: float, localization: float) -> float:
    r"""T for a loss that is exactly quadratic around its minimizer :math:`w^*`.

    With :math:`L_n(w) = L_n(w^*) + \tfrac12 (w-w^*)^\top H (w-w^*)` the localized tempered posterior is
    Gaussian with precision :math:`n\beta H + \gamma I`, so

    .. math::

        T = \tfrac{n\beta}{2}\operatorname{tr}\!\big(H (n\beta H + \gamma I)^{-1}\big)
          = \frac12 \sum_i \frac{n\beta\, h_i}{n\beta\, h_i + \gamma},

    which tends to d/2 (λ of a regular model) as nβ grows.

    Parameters
    ----------
    hessian_eigenvalues : array-like, shape (d,)
        Eigenvalues :math:`h_i \ge 0` of the Hessian of the *mean* loss :math:`L_n`.
    n_beta, localization : float
        nβ > 0 and γ >= 0 (γ = 0 needs every :math:`h_i > 0`).

    Raises
    ------
    ValueError
        For negative eigenvalues (beyond rounding), nβ <= 0, γ < 0, or a zero eigenvalue with γ = 0.
    """
    h = np.asarray(hessian_eigenvalues, dtype=float).ravel()
    if not (n_beta > 0 and localization >= 0):
        raise ValueError(f"need n_beta > 0 and localization >= 0, got {n_beta} and {localization}")
    scale = max(float(np.abs(h).max()) if h.size else 0.0, 1.0)
    if np.any(h < -1e-10 * scale):
        raise ValueError(f"the Hessian has a negative eigenvalue ({h.min():.3g}): w* is not a minimizer")
    h = np.clip(h, 0.0, None)
    denominator = n_beta * h + localization
    if np.any(denominator == 0):
        raise ValueError("a zero Hessian eigenvalue with localization 0 gives an improper posterior")
    return float(0.5 * np.sum(n_beta * h / denominator))


def linear_regression_target(
    x: Tensor | np.ndarray,
    n_beta: float,
    localization: float,
    *,
    outputs: int = 1,
    bias: bool = False,
    loss: RegressionLoss = "mse",
) -> float:
    r"""T for a linear regression :math:`y = W x (+ b)` at its least-squares fit, in closed form.

    At the least-squares solution the gradient vanishes and the loss is exactly quadratic, so
    :func:`quadratic_target` holds exactly, for every n and nβ. With the design :math:`X` (a column of
    ones appended when ``bias``) and :math:`G = X^\top X / n`:

    * ``loss="mse"`` (slt's built-in ``"mse"``, ``F.mse_loss``: :math:`\frac{1}{n m}\sum (y - Wx)^2`
      with m = ``outputs``): the Hessian is m copies of :math:`2G/m`;
    * ``loss="gaussian_nll"`` (:math:`\frac{1}{n}\sum_i \tfrac12\lVert y_i - Wx_i\rVert^2`, the Gaussian
      negative log-likelihood of the tests and benchmarks): m copies of :math:`G`.

    Parameters
    ----------
    x : Tensor or ndarray, shape (n, d_in)
        The inputs.
    n_beta, localization : float
        nβ and γ, as in :func:`slt.estimate_llc`.
    outputs : int
        Number of outputs m (rows of W).
    bias : bool
        Whether the model has a bias (it is sampled too).
    loss : {"mse", "gaussian_nll"}

    Raises
    ------
    ValueError
        For an unknown ``loss``, ``x`` not 2-D, ``outputs < 1``, or as :func:`quadratic_target`.
    """
    design = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if design.ndim != 2:
        raise ValueError(f"x must have shape (n, d_in), got {tuple(design.shape)}")
    if outputs < 1:
        raise ValueError(f"outputs must be at least 1, got {outputs}")
    if bias:
        design = torch.cat([design, torch.ones(design.shape[0], 1, dtype=torch.float64)], dim=1)
    gram = design.T @ design / design.shape[0]
    h = torch.linalg.eigvalsh(gram).numpy()
    scale = _loss_scale(loss, outputs)
    return outputs * quadratic_target(2 * scale * h, n_beta, localization)


def normal_crossing_target(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    n_beta: float,
    localization: float,
    *,
    power: int = 2,
    loss: RegressionLoss = "mse",
    grid: int = 400_001,
) -> float:
    r"""T for the normal crossing :math:`f(x) = x\, w_1 w_2^k` at :math:`w^* = 0`, by quadrature.

    The model is :class:`slt.oracles.NormalCrossing` ``([1, power])`` (:math:`K \propto w_1^2 w_2^{2k}`).
    With :math:`p = w_1 w_2^k`, :math:`A = \overline{x^2}`, :math:`B = \overline{xy}` and the loss
    :math:`s \cdot \overline{(y - xp)^2}` (:math:`s = 1` for ``"mse"``, ½ for ``"gaussian_nll"``),
    :math:`L_n(w) - L_n(0) = s(Ap^2 - 2Bp)`. Given :math:`w_2` (write :math:`c = w_2^k`) the posterior of
    :math:`w_1` is Gaussian with precision :math:`P = 2n\beta s A c^2 + \gamma` and mean
    :math:`\mu = 2n\beta s B c / P`, so the :math:`w_1` integral is closed-form:

    .. math::

        T = n\beta\, \frac{\int \mathbb{E}[L_n - L_n(0) \mid w_2]\, \rho(w_2)\, dw_2}{\int \rho(w_2)\, dw_2},
        \quad \log\rho = -\tfrac12\log P + \tfrac12 P\mu^2 - \tfrac{\gamma}{2} w_2^2,
        \quad \mathbb{E}[\cdot \mid w_2] = s\big(A c^2 (P^{-1} + \mu^2) - 2Bc\mu\big),

    and one trapezoidal quadrature over :math:`w_2 \in [-12/\sqrt\gamma, 12/\sqrt\gamma]` remains.

    Parameters
    ----------
    x, y : Tensor or ndarray, shape (n, 1) or (n,)
        The data (for example :func:`slt.oracles.regression_data`).
    n_beta, localization : float
        nβ > 0 and γ > 0 (the prior must make :math:`w_2` integrable).
    power : int
        k >= 0, the power of :math:`w_2`.
    loss : {"mse", "gaussian_nll"}
    grid : int
        Quadrature points.

    Raises
    ------
    ValueError
        For γ <= 0, nβ <= 0, k < 0, x and y of different sizes, or an unknown ``loss``.
    """
    if not (localization > 0 and n_beta > 0):
        raise ValueError(f"need n_beta > 0 and localization > 0, got {n_beta} and {localization}")
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    xs = np.asarray(torch.as_tensor(x).detach().cpu().double()).ravel()
    ys = np.asarray(torch.as_tensor(y).detach().cpu().double()).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"x and y must hold one value per sample, got {xs.size} and {ys.size}")
    s = _loss_scale(loss, 1)
    a = float(np.mean(xs**2))
    b = float(np.mean(xs * ys))
    gamma = float(localization)
    w2 = np.linspace(-12 / math.sqrt(gamma), 12 / math.sqrt(gamma), grid)
    c = w2**power
    precision = 2 * n_beta * s * a * c**2 + gamma
    linear = 2 * n_beta * s * b * c
    mean = linear / precision
    log_weight = -0.5 * np.log(precision) + 0.5 * linear**2 / precision - 0.5 * gamma * w2**2
    expected = s * (a * c**2 * (1 / precision + mean**2) - 2 * b * c * mean)
    weight = np.exp(log_weight - log_weight.max())
    return float(n_beta * np.trapezoid(weight * expected, w2) / np.trapezoid(weight, w2))


def _loss_scale(loss: str, outputs: int) -> float:
    """The factor s of ``loss = s * (sum over outputs of squared residuals), averaged over samples``."""
    if loss == "mse":
        return 1.0 / outputs
    if loss == "gaussian_nll":
        return 0.5
    raise ValueError(f"loss must be 'mse' or 'gaussian_nll', got {loss!r}")
