r"""Sampling a ladder of inverse temperatures :math:`x_1 < \dots < x_K` around the trained weights.

Every rung samples :math:`p_k(w) \propto \exp(-x_k L_n(w) - \tfrac{\gamma}{2}\lVert w - w^*\rVert^2)` and
records :math:`t = L_n(w) - L_n(w^*)` at each draw. Two back ends:

* :func:`run_exchange_ladder` (``sampler="mala"``): all rungs and chains advance together as one batch of
  Metropolis-adjusted Langevin chains on the *full-data* loss, with replica-exchange swaps between
  neighbouring rungs after every step. Exact for any step size; each rung's step adapts during burn-in
  to a target acceptance rate and is frozen afterwards.
* :func:`run_sgmcmc_ladder` (``sampler="sgld"``, ``"rmsprop_sgld"``, ``"sgnht"``): one
  :meth:`slt.sampling.PosteriorSampler.run` per rung on minibatches. :math:`t` is either the exact
  full-data loss at each draw (one pass over the data per draw, ``exact_loss=True``) or the minibatch
  loss minus the loss of :math:`w^*` on the same minibatch (the control variate).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from slt.samplers import Kernel, LocalPosterior, exchange, mala
from slt.sampling import PosteriorSampler
from slt.sampling.driver import chain_seeds
from slt.sampling.full_loss import full_loss_over_positions
from slt.sampling.progress import progress_bar
from slt.sampling.settings import default_n_beta

__all__ = [
    "LadderRun",
    "default_temperatures",
    "reference_temperature",
    "rung_step_sizes",
    "run_exchange_ladder",
    "run_sgmcmc_ladder",
    "DEFAULT_NUM_RUNGS",
    "DEFAULT_SPAN",
    "TARGET_ACCEPTANCE",
]

#: Rungs of the default ladder.
DEFAULT_NUM_RUNGS = 12
#: The default ladder runs from ``nβ*/DEFAULT_SPAN`` to ``DEFAULT_SPAN · nβ*``.
DEFAULT_SPAN = 30.0
#: MALA acceptance rate each rung's step size is adapted to during burn-in.
TARGET_ACCEPTANCE = 0.6
#: The largest step any rung takes, in units of ``1 / localization``.
MAX_STEP_TIMES_LOCALIZATION = 0.1


@dataclass
class LadderRun:
    """What a ladder of chains produced.

    Attributes
    ----------
    t : ndarray, shape (rungs, chains, draws)
        :math:`L_n(w) - L_n(w^*)` at each draw (NaN after a chain diverged).
    step_sizes : ndarray, shape (rungs,)
        Step size each rung used for its draws.
    acceptance : ndarray, shape (rungs,)
        Mean Metropolis acceptance probability over the draws (NaN for unadjusted samplers).
    swap_acceptance : ndarray, shape (rungs - 1,)
        Share of accepted replica swaps between rungs ``k`` and ``k+1`` (NaN without swaps).
    round_trips : ndarray, shape (chains,)
        Replica round trips hottest -> coldest -> hottest rung per chain column over the whole run,
        burn-in included (NaN without swaps).
    diverged : ndarray of bool, shape (rungs, chains)
        Chains that hit a non-finite loss.
    chain_mode : str
        How the chains ran: ``"vectorized"`` or ``"sequential"``.
    seconds : float
        Wall time of the sampling.
    """

    t: np.ndarray
    step_sizes: np.ndarray
    acceptance: np.ndarray
    swap_acceptance: np.ndarray
    round_trips: np.ndarray
    diverged: np.ndarray
    chain_mode: str
    seconds: float


def default_temperatures(
    n: int, num_rungs: int = DEFAULT_NUM_RUNGS, span: float = DEFAULT_SPAN
) -> np.ndarray:
    r"""A geometric ladder from :math:`n\beta^*/\text{span}` to :math:`\text{span}\cdot n\beta^*`.

    :math:`n\beta^* = n / \log n` is the inverse temperature of :func:`slt.estimate_llc`; with the defaults
    (12 rungs, span 30) neighbouring rungs differ by a factor :math:`900^{1/11} \approx 1.86`.
    """
    centre = default_n_beta(n)
    if num_rungs == 1:
        return np.array([centre])
    return centre * np.geomspace(1.0 / span, span, num_rungs)


def reference_temperature(temperatures: np.ndarray) -> float:
    r"""The reference rung of the step-size rule.

    The geometric centre of the positive temperatures, snapped to the nearest rung. The default ladder
    is centred on :math:`n\beta^*`, but with an even number of rungs (12) no rung sits there and the
    reference is the one beside it (197.2 for :math:`n\beta^*` = 144.8).
    """
    positive = temperatures[temperatures > 0]
    centre = math.exp(float(np.mean(np.log(positive))))
    return float(positive[np.argmin(np.abs(np.log(positive) - math.log(centre)))])


def rung_step_sizes(
    step_size: float, reference: float, temperatures: np.ndarray, localization: float
) -> np.ndarray:
    r"""The per-rung step-size rule: :math:`\varepsilon_k = \varepsilon\, x_{ref} / x_k`, capped.

    The loss term of the potential has curvature proportional to :math:`x_k`, so keeping
    :math:`\varepsilon_k x_k` fixed gives every rung the same predicted discretization bias (and, for
    MALA, roughly the same acceptance rate). Hotter rungs therefore take larger steps, up to
    ``0.1 / localization`` where the localizer's own curvature takes over (and for :math:`x_k = 0`).
    """
    cap = MAX_STEP_TIMES_LOCALIZATION / localization if localization > 0 else math.inf
    steps = np.empty(len(temperatures))
    for k, x in enumerate(temperatures):
        steps[k] = min(step_size * reference / x, cap) if x > 0 else cap
    if not np.all(np.isfinite(steps)):
        raise ValueError("a rung at temperature 0 needs localization > 0 (the prior must be normalizable)")
    return steps


# -- back end 1: Metropolis-adjusted Langevin with replica exchange ---------------------------


def run_exchange_ladder(
    posterior: PosteriorSampler,
    *,
    temperatures: np.ndarray,
    localization: float,
    step_sizes: np.ndarray,
    num_chains: int,
    num_draws: int,
    num_burnin: int,
    num_steps_bw_draws: int = 1,
    adapt: bool = True,
    target_acceptance: float = TARGET_ACCEPTANCE,
    swaps: bool = True,
    seed: int = 0,
    chain_mode: str = "auto",
    progress: bool = False,
) -> LadderRun:
    """All rungs at once: MALA on the full-data loss, replica swaps between neighbours after every step.

    During burn-in each rung's log step size moves by ``0.05 * (acceptance - target)`` per step (the
    mean acceptance probability over the rung's chains); the step used for the draws is the geometric
    mean over the second half of burn-in. Swaps alternate between even and odd pairs of rungs.
    """
    fm = posterior.flat_model
    rungs, chains = len(temperatures), num_chains
    rows = rungs * chains
    full_loss = full_loss_over_positions(posterior, chain_mode, rows)
    device, dtype = fm.center.device, fm.center.dtype
    x = torch.as_tensor(temperatures, dtype=dtype, device=device)
    x_rows = x.repeat_interleave(chains)
    target = LocalPosterior(
        n_beta=x_rows, localization=float(localization), center=fm.center, mask=fm.coordinate_mask
    )
    log_eps = torch.as_tensor(np.log(step_sizes), dtype=dtype, device=device)
    generator = torch.Generator(device=device).manual_seed(chain_seeds(seed, 1)[0])

    start = time.perf_counter()
    reference_loss, _ = full_loss(fm.center.unsqueeze(0).clone())
    positions = fm.center.expand(rows, -1).clone()
    loss, grad = full_loss(positions)
    state = mala.init(positions, loss, grad)
    total = num_burnin + num_draws * num_steps_bw_draws
    t_draws = torch.full((rungs, chains, num_draws), math.nan, dtype=torch.float64, device=device)
    accept_sum = torch.zeros(rungs, dtype=torch.float64, device=device)
    swap_sum = torch.zeros(max(rungs - 1, 0), dtype=torch.float64, device=device)
    swap_tries = torch.zeros(max(rungs - 1, 0), dtype=torch.float64, device=device)
    late_log_eps = torch.zeros_like(log_eps)
    late_count = 0
    replica = torch.arange(rungs, device=device).unsqueeze(-1).expand(rungs, chains).clone()
    label = torch.zeros(rungs, chains, dtype=torch.long, device=device)
    trips = torch.zeros(chains, dtype=torch.long, device=device)
    bar = progress_bar(progress, total, "DOS ladder")
    try:
        for step in range(total):
            eps_rows = log_eps.exp().repeat_interleave(chains)
            proposal = mala.propose(state, target, generator, step_size=eps_rows)
            proposal_loss, proposal_grad = full_loss(proposal)
            state, prob = mala.accept(
                state, proposal, proposal_loss, proposal_grad, target, generator, step_size=eps_rows
            )
            rung_prob = prob.reshape(rungs, chains).mean(-1).double()
            burning = step < num_burnin
            if burning and adapt:
                log_eps = log_eps + 0.05 * (rung_prob.to(dtype) - target_acceptance)
                if step >= num_burnin // 2:
                    late_log_eps += log_eps
                    late_count += 1
                if step == num_burnin - 1 and late_count:
                    log_eps = late_log_eps / late_count
            if swaps and rungs > 1:
                loss_grid = state.loss.reshape(rungs, chains)
                source, accepted = exchange.neighbour_swaps(loss_grid, x, generator, parity=step % 2)
                state = mala.MALAState(*(_swap(v, source, rungs, chains) for v in state))
                replica = exchange.apply_permutation(replica, source)
                label, trips = exchange.count_round_trips(replica, label, trips)
                if not burning:
                    tried = torch.arange(rungs - 1, device=device) % 2 == step % 2
                    swap_sum += accepted.double().mean(-1)
                    swap_tries += tried.double()
            if not burning:
                accept_sum += rung_prob
                k, rest = divmod(step - num_burnin, num_steps_bw_draws)
                if rest == 0:
                    t_draws[:, :, k] = (state.loss - reference_loss).reshape(rungs, chains).double()
            if bar is not None and (step + 1) % 64 == 0:
                bar.update(64)
    finally:
        if bar is not None:
            bar.update(total % 64)
            bar.close()
        fm.load(fm.center)
    sampled_steps = max(total - num_burnin, 1)
    swap_rate = (swap_sum / swap_tries.clamp(min=1)).cpu().numpy()
    if not swaps:
        swap_rate = np.full(max(rungs - 1, 0), math.nan)
    return LadderRun(
        t=t_draws.cpu().numpy(),
        step_sizes=log_eps.exp().double().cpu().numpy(),
        acceptance=(accept_sum / sampled_steps).cpu().numpy(),
        swap_acceptance=swap_rate,
        round_trips=trips.cpu().numpy().astype(float) if swaps and rungs > 1 else np.full(chains, math.nan),
        diverged=np.zeros((rungs, chains), dtype=bool),
        chain_mode=full_loss.mode,
        seconds=time.perf_counter() - start,
    )


def _swap(values: Tensor, source: Tensor, rungs: int, chains: int) -> Tensor:
    grid = values.reshape(rungs, chains, *values.shape[1:])
    return exchange.apply_permutation(grid, source).reshape(values.shape)


# -- back end 2: one set of SG-MCMC chains per rung -------------------------------------------


def run_sgmcmc_ladder(
    posterior: PosteriorSampler,
    *,
    temperatures: np.ndarray,
    localization: float,
    step_sizes: np.ndarray,
    sampler: str | Kernel,
    sampler_options: Mapping[str, Any] | None,
    num_chains: int,
    num_draws: int,
    num_burnin: int,
    num_steps_bw_draws: int = 1,
    exact_loss: bool = True,
    seed: int = 0,
    chain_mode: str = "auto",
    progress: bool = False,
) -> LadderRun:
    """One :meth:`~slt.sampling.PosteriorSampler.run` per rung (each with its own seed).

    With ``exact_loss`` the full-data loss is evaluated at every draw (as an observable); otherwise
    :math:`t` is the minibatch loss minus the loss of :math:`w^*` on the same minibatch.
    """
    observables = {"_full_loss": _full_data_loss(posterior)} if exact_loss else None
    seeds = chain_seeds(seed, len(temperatures))
    t, diverged, modes = [], [], set()
    start = time.perf_counter()
    for k, (x, eps) in enumerate(zip(temperatures, step_sizes)):
        run = posterior.run(
            n_beta=float(x),
            localization=localization,
            step_size=float(eps),
            sampler=sampler,
            sampler_options=sampler_options,
            num_chains=num_chains,
            num_draws=num_draws,
            num_burnin=num_burnin,
            num_steps_bw_draws=num_steps_bw_draws,
            seed=seeds[k],
            chain_mode=chain_mode,
            observables=observables,
            control_variate=not exact_loss,
            progress=f"DOS rung {k + 1}/{len(temperatures)}" if progress else False,
        )
        modes.add(run.chain_mode)
        if exact_loss:
            values = run.observables["_full_loss"] - posterior.init_loss
            values[np.isnan(run.loss_trace)] = np.nan
        else:
            values = run.loss_trace - run.reference_loss_trace
        t.append(values)
        diverged.append(run.diverged)
    rungs = len(temperatures)
    return LadderRun(
        t=np.stack(t),
        step_sizes=np.asarray(step_sizes, dtype=float),
        acceptance=np.full(rungs, math.nan),
        swap_acceptance=np.full(max(rungs - 1, 0), math.nan),
        round_trips=np.full(num_chains, math.nan),
        diverged=np.stack(diverged),
        chain_mode="vectorized" if modes == {"vectorized"} else "sequential",
        seconds=time.perf_counter() - start,
    )


def _full_data_loss(posterior: PosteriorSampler):
    """An observable ``fn(model) -> float``: the mean loss over the full data (as ``init_loss``)."""

    def full_loss(module: torch.nn.Module) -> float:
        return posterior.data.mean_over_batches(lambda batch: posterior.loss_fn(module, batch))[0]

    return full_loss


def as_temperatures(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Validate a user ladder: finite, non-negative, at least two distinct values; returned sorted."""
    array = np.asarray(values, dtype=float).ravel()
    if array.size < 2:
        raise ValueError(
            f"temperatures needs at least two inverse temperatures for reweighting, got {array.size}; "
            "leave it None for a geometric ladder around n/log n"
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"temperatures must be finite and >= 0, got {array.tolist()}")
    array = np.sort(array)
    if np.any(np.diff(array) <= 0):
        raise ValueError(f"temperatures must be distinct, got {array.tolist()}")
    if np.count_nonzero(array) == 0:
        raise ValueError("temperatures must include a positive inverse temperature")
    return array
