"""The chain driver: runs any kernel of :mod:`slt.samplers` over any model, data and loss.

:class:`PosteriorSampler` prepares once (copy of the model, data access, the exact full-data loss at
:math:`w^*`) and then runs as many sets of chains as asked (one per step size in a calibration, one per
temperature in a density-of-states ladder). Chains run one after another on the flat working copy
(``"sequential"``) or all at once through ``torch.func.vmap`` (``"vectorized"``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from slt.samplers import BoundKernel, Kernel, LocalPosterior, get_kernel
from slt.sampling.data import DataSource, Minibatches, TensorData, as_data_source
from slt.sampling.flat import FlatModel, Mask
from slt.sampling.losses import LossFn, check_scalar, resolve_loss
from slt.sampling.progress import progress_bar

__all__ = ["PosteriorSampler", "ChainRun", "chain_seeds", "bind_kernel", "CHAIN_MODES"]

CHAIN_MODES = ("auto", "sequential", "vectorized")
#: Steps between checks for non-finite losses (each check synchronizes with the device).
CHECK_EVERY = 64

Observable = Callable[[nn.Module], Any]


def chain_seeds(seed: int, count: int) -> list[int]:
    """Independent 63-bit seeds derived from ``seed`` (numpy ``SeedSequence``)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    words = np.random.SeedSequence(int(seed)).generate_state(2 * count, dtype=np.uint32)
    return [int(words[2 * i]) << 31 ^ int(words[2 * i + 1]) for i in range(count)]


@dataclass
class ChainRun:
    """What one set of chains produced.

    Attributes
    ----------
    loss_trace : ndarray, shape (chains, draws)
        Minibatch loss at each draw (NaN after a chain diverged).
    burnin_loss_trace : ndarray, shape (chains, burn-in steps)
        Minibatch loss at each burn-in step.
    grad_norm_sq : ndarray, shape (chains, draws)
        Squared norm of the minibatch loss gradient at each draw, weighted by the kernel's
        preconditioner when it has one (NaN after divergence; recorded on request).
    reference_loss_trace : ndarray or None, shape (chains, draws)
        Loss of :math:`w^*` on each draw's minibatch (with ``control_variate=True``).
    divergence_step : ndarray of int, shape (chains,)
        First step (counting burn-in) whose loss was not finite; -1 for healthy chains.
    observables : dict of str to ndarray
        Per-draw values of each observable, shape ``(chains, draws, ...)``.
    chain_mode : str
        ``"sequential"`` or ``"vectorized"``: how the chains actually ran.
    seconds : float
        Wall time of the chains.
    final_positions : Tensor
        Flat positions of the chains after their last step, shape ``(chains, d)``.
    """

    loss_trace: np.ndarray
    burnin_loss_trace: np.ndarray
    grad_norm_sq: np.ndarray
    reference_loss_trace: np.ndarray | None
    divergence_step: np.ndarray
    observables: dict[str, np.ndarray]
    chain_mode: str
    seconds: float
    final_positions: Tensor = field(repr=False)

    @property
    def diverged(self) -> np.ndarray:
        """Boolean per chain: whether the chain hit a non-finite loss."""
        return self.divergence_step >= 0


class PosteriorSampler:
    """Sample the localized tempered posterior of a model around its current weights.

    Parameters
    ----------
    model : nn.Module
        The trained model; its weights are :math:`w^*`. It is copied, never modified.
    data : tuple of Tensor, Dataset or DataLoader
        Training data (see :func:`slt.sampling.data.as_data_source`).
    loss_fn : str or callable
        ``"mse"``, ``"cross_entropy"`` or ``loss_fn(model, batch) -> scalar mean loss``.
    batch_size : int, optional
        Minibatch size for tensors and datasets (default ``min(n, 256)``).
    mask : optional
        Restricts sampling to part of the parameters (see :func:`slt.sampling.flat.select_parameters`).
    device : torch.device or str, optional
        Where to sample; defaults to the model's device.
    seed : int
        Seed of the partition of in-memory data into minibatches, shared by every chain and run.

    Attributes
    ----------
    n : int
        Number of training samples.
    init_loss : float
        :math:`L_n(w^*)`, the mean loss over the *full* data.
    """

    DEFAULT_BATCH_SIZE = 256

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        loss_fn: str | LossFn,
        *,
        batch_size: int | None = None,
        mask: Mask = None,
        device: torch.device | str | None = None,
        seed: int = 0,
    ):
        self.loss_fn = resolve_loss(loss_fn)
        self.flat_model = FlatModel(model, self.loss_fn, mask=mask, device=device)
        self.device = self.flat_model.device
        self.data: DataSource = as_data_source(data, self.device, batch_size, partition_seed=seed)
        self._reference_tables: dict[int, _ReferenceLosses] = {}
        self.init_loss, self.n = self._full_loss()
        if batch_size is None and not isinstance(data, DataLoader):
            batch_size = min(self.n, self.DEFAULT_BATCH_SIZE)
        self.batch_size = batch_size

    @property
    def num_params(self) -> int:
        """Number of sampled coordinates (after masking)."""
        return self.flat_model.num_sampled

    @property
    def center(self) -> Tensor:
        """The trained weights :math:`w^*` as a flat vector."""
        return self.flat_model.center

    def _full_loss(self) -> tuple[float, int]:
        init_loss, count = self.full_loss_and_count(self.flat_model.center)
        if count == 0:
            raise ValueError("data is empty: iterating it gave no samples; pass at least one sample")
        if not math.isfinite(init_loss):
            raise ValueError(
                f"the loss at the trained weights is not finite ({init_loss}); check the model, the data "
                "and loss_fn before estimating"
            )
        return init_loss, count

    def full_loss_at(self, position: Tensor) -> float:
        """Exact mean loss over the full data at a flat ``position``."""
        return self.full_loss_and_count(position)[0]

    def full_loss_and_count(self, position: Tensor) -> tuple[float, int]:
        """Exact mean loss over the full data at a flat ``position``, and the number of samples."""
        with self.flat_model.at(position):
            return self.data.mean_over_batches(self.flat_model.loss)

    def _references(self, stream: Minibatches) -> _ReferenceLosses:
        """The reference-loss table of ``stream``'s partition (a fresh one for data loaders)."""
        partition = stream.partition
        if partition is None:
            return _ReferenceLosses(self.flat_model, 0)
        table = self._reference_tables.get(id(partition))
        if table is None:
            table = self._reference_tables[id(partition)] = _ReferenceLosses(
                self.flat_model, partition.num_batches
            )
        return table

    def choose_mode(self, chain_mode: str, num_chains: int) -> str:
        """Resolve ``chain_mode="auto"``: vectorize small models on in-memory data.

        On CPU, one ``vmap`` call over all chains beats a Python loop only while per-step work is tiny
        (measured in ``benchmarks/``); on CUDA, vectorizing keeps the device busy and wins widely.
        """
        if chain_mode not in CHAIN_MODES:
            raise ValueError(f"chain_mode must be one of {CHAIN_MODES}, got {chain_mode!r}")
        if chain_mode != "auto":
            if chain_mode == "vectorized" and not isinstance(self.data, TensorData):
                raise ValueError(
                    "vectorized chains need in-memory data (a tuple of tensors or a TensorDataset); "
                    "use chain_mode='sequential' with datasets and loaders"
                )
            return chain_mode
        if num_chains < 2 or not isinstance(self.data, TensorData):
            return "sequential"
        if not self.data.partition(self.batch_size).equal:  # batches of unequal size cannot be stacked
            return "sequential"
        if self.device.type == "cuda":
            return "vectorized" if self.flat_model.dim * num_chains <= VECTORIZE_CUDA_PARAMS else "sequential"
        work = self.flat_model.dim * min(self.batch_size or self.n, self.n)
        if num_chains >= VECTORIZE_CPU_MIN_CHAINS and work <= VECTORIZE_CPU_MAX_WORK:
            return "vectorized"
        return "sequential"

    def run(
        self,
        *,
        n_beta: float,
        localization: float,
        step_size: float,
        sampler: str | Kernel | BoundKernel = "sgld",
        sampler_options: Mapping[str, Any] | None = None,
        num_chains: int = 4,
        num_draws: int = 200,
        num_burnin: int = 0,
        num_steps_bw_draws: int = 1,
        seed: int = 0,
        chain_mode: str = "auto",
        observables: Mapping[str, Observable] | None = None,
        control_variate: bool = False,
        record_grad_norm: bool = False,
        progress: bool | Any = False,
    ) -> ChainRun:
        """Run ``num_chains`` chains from :math:`w^*` and record the loss at every draw.

        Each chain takes ``num_burnin`` steps, then ``num_draws * num_steps_bw_draws`` steps, recording
        a draw before every ``num_steps_bw_draws``-th step. The loss recorded at a draw is the minibatch
        loss at that position on the minibatch used for the next gradient step. With
        ``control_variate``, the loss of :math:`w^*` on the same minibatch is recorded too; with
        ``record_grad_norm``, the squared norm of the minibatch gradient at each draw (else NaN).

        ``sampler`` is a registered name, a :class:`~slt.samplers.Kernel` (bound here with
        ``sampler_options``, adaptation ending at ``num_burnin``) or a :class:`~slt.samplers.BoundKernel`.
        """
        kernel = bind_kernel(sampler, sampler_options, num_burnin)
        fm = self.flat_model
        target = LocalPosterior(
            n_beta=float(n_beta), localization=float(localization), center=fm.center, mask=fm.coordinate_mask
        )
        mode = self.choose_mode(chain_mode, num_chains)
        seeds = chain_seeds(seed, num_chains + 1)
        plan = _Plan(
            num_chains,
            num_burnin,
            num_draws,
            num_steps_bw_draws,
            step_size,
            observables or {},
            control_variate,
            record_grad_norm,
        )
        bar = progress_bar(progress, num_chains * plan.total, "sampling")
        start = time.perf_counter()
        record = None
        try:
            if mode == "vectorized":
                try:
                    record = self._run_vectorized(kernel, target, plan, seeds[-1], bar)
                except Exception:
                    if chain_mode != "auto":
                        raise
                    mode = "sequential"
                    if bar is not None:
                        bar.reset()
            if record is None:
                record = self._run_sequential(kernel, target, plan, seeds[:num_chains], bar)
        finally:
            if bar is not None:
                bar.close()
            fm.load(fm.center)
        return record.finish(plan, mode, time.perf_counter() - start)

    # -- the two back ends -------------------------------------------------------------------

    def _run_sequential(self, kernel: BoundKernel, target, plan, seeds, bar) -> _Record:
        fm = self.flat_model
        record = _Record(plan, fm.state_dtype, self.device)
        for c in range(plan.num_chains):
            generator = torch.Generator(device=self.device).manual_seed(seeds[c])
            next_batch = self.data.stream(generator, self.batch_size)
            reference = self._references(next_batch)
            state = kernel.init(fm.center)
            losses: list[Tensor] = []  # appending is far cheaper than writing into a tensor each step
            references: list[Tensor] = []
            checked = 0
            for t in range(plan.total):
                fm.load(state.position)
                batch = next_batch()
                loss, grad = fm.loss_and_grad(batch)
                if t == 0:
                    check_scalar(loss)
                if next_batch.weight != 1.0:  # batches of unequal size (see slt.sampling.data.Partition)
                    loss, grad = loss * next_batch.weight, grad * next_batch.weight
                losses.append(loss)
                draw = plan.draw_index(t)
                if draw is not None:
                    if plan.record_grad_norm:
                        record.grad_sq[c, draw] = kernel.gradient_energy(state, grad)
                    for name, fn in plan.observables.items():
                        with torch.no_grad():
                            record.observed[name][c].append(_to_numpy(fn(fm.module)))
                    if plan.control_variate:
                        references.append(reference.single(next_batch, batch))
                state = kernel.step(state, grad, target, generator, plan.step_size)
                if (t + 1) % CHECK_EVERY == 0 or t + 1 == plan.total:
                    if bar is not None:
                        bar.update(t + 1 - checked)
                    bad = _first_nonfinite(torch.stack(losses[checked : t + 1]))
                    if bad is not None:
                        record.divergence[c] = checked + bad
                        if bar is not None:
                            bar.update(plan.total - t - 1)
                        break
                    checked = t + 1
            record.losses[c, : len(losses)] = torch.stack(losses)
            if references:
                record.reference[c, : len(references)] = torch.stack(references)
            record.finals.append(state.position)
        return record

    def _run_vectorized(self, kernel: BoundKernel, target, plan, seed, bar) -> _Record:
        fm = self.flat_model
        assert isinstance(self.data, TensorData)
        record = _Record(plan, fm.state_dtype, self.device)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        next_batch = self.data.stacked_stream(generator, self.batch_size, plan.num_chains)
        reference = self._references(next_batch)
        grad_and_loss = torch.func.vmap(torch.func.grad_and_value(fm.functional_loss()))
        state = kernel.init(fm.center.expand(plan.num_chains, fm.dim))
        checked = 0
        for t in range(plan.total):
            batch = next_batch()
            grad, loss = grad_and_loss(state.position, batch)
            record.losses[:, t] = loss
            draw = plan.draw_index(t)
            if draw is not None:
                if plan.record_grad_norm:
                    record.grad_sq[:, draw] = kernel.gradient_energy(state, grad)
                if plan.observables:
                    with torch.no_grad():
                        for c in range(plan.num_chains):
                            fm.load(state.position[c])
                            for name, fn in plan.observables.items():
                                record.observed[name][c].append(_to_numpy(fn(fm.module)))
                if plan.control_variate:
                    record.reference[:, draw] = reference.stacked(next_batch)
            state = kernel.step(state, grad, target, generator, plan.step_size)
            if (t + 1) % CHECK_EVERY == 0 or t + 1 == plan.total:
                if bar is not None:
                    bar.update((t + 1 - checked) * plan.num_chains)
                window = record.losses[:, checked : t + 1]
                if not bool(torch.isfinite(window).all()):
                    for c in range(plan.num_chains):
                        bad = _first_nonfinite(window[c])
                        if record.divergence[c] < 0 and bad is not None:
                            record.divergence[c] = checked + bad
                    if (record.divergence >= 0).all():
                        break
                checked = t + 1
        record.finals = list(state.position)
        return record


class _ReferenceLosses:
    """Loss of :math:`w^*` on each minibatch, computed once per batch id and kept for every later chain.

    With in-memory data the batches form a fixed partition shared by all chains and runs of a
    :class:`PosteriorSampler`, so the control variate costs one forward pass per batch of the partition in
    all; with loaders (no batch ids) it costs one forward pass per draw.
    """

    def __init__(self, flat_model: FlatModel, num_batches: int):
        self.fm = flat_model
        self.table = torch.full(
            (num_batches,), float("nan"), dtype=flat_model.state_dtype, device=flat_model.device
        )
        self.known: set[int] = set()
        self.num_batches = num_batches

    def _at_center(self, batch: Any) -> Tensor:
        # the caller reloads the chain's position before its next forward pass
        self.fm.load(self.fm.center)
        return self.fm.loss(batch)

    def single(self, stream: Minibatches, batch: Any) -> Tensor:
        """Reference loss of the batch ``stream`` returned last, times the batch's weight."""
        index = stream.index
        if index is None:
            return self._at_center(batch) * stream.weight
        if index not in self.known:
            self.table[index] = self._at_center(batch) * stream.weight
            self.known.add(index)
        return self.table[index]

    def stacked(self, stream: Minibatches) -> Tensor:
        """Reference losses of the stacked batches ``stream`` returned last, one per chain."""
        ids = stream.index
        if len(self.known) < self.num_batches:
            for k in set(ids.tolist()) - self.known:
                self.table[k] = self._at_center(stream.batch(k))
                self.known.add(k)
        return self.table[ids]


@dataclass
class _Plan:
    """The schedule of one set of chains."""

    num_chains: int
    num_burnin: int
    num_draws: int
    every: int
    step_size: float
    observables: Mapping[str, Observable]
    control_variate: bool
    record_grad_norm: bool

    @property
    def total(self) -> int:
        return self.num_burnin + self.num_draws * self.every

    def draw_index(self, t: int) -> int | None:
        """Index of the draw taken at step ``t``, or ``None`` if ``t`` is not a draw."""
        if t < self.num_burnin:
            return None
        k, rest = divmod(t - self.num_burnin, self.every)
        return k if rest == 0 else None

    def first_draw_at_or_after(self, step: int) -> int:
        return max(0, -(-(step - self.num_burnin) // self.every))


class _Record:
    """Buffers a set of chains fills, on the sampling device until the end."""

    def __init__(self, plan: _Plan, dtype: torch.dtype, device: torch.device):
        nan = float("nan")
        self.losses = torch.full((plan.num_chains, plan.total), nan, dtype=dtype, device=device)
        self.grad_sq = torch.full((plan.num_chains, plan.num_draws), nan, dtype=dtype, device=device)
        self.reference = (
            torch.full((plan.num_chains, plan.num_draws), nan, dtype=dtype, device=device)
            if plan.control_variate
            else None
        )
        self.divergence = np.full(plan.num_chains, -1, dtype=np.int64)
        self.observed: dict[str, list[list[np.ndarray]]] = {
            k: [[] for _ in range(plan.num_chains)] for k in plan.observables
        }
        self.finals: list[Tensor] = []

    def finish(self, plan: _Plan, mode: str, seconds: float) -> ChainRun:
        losses = self.losses.cpu().double().numpy()
        grad_sq = self.grad_sq.cpu().double().numpy()
        reference = self.reference.cpu().double().numpy() if self.reference is not None else None
        for c, step in enumerate(self.divergence):
            if step >= 0:  # everything from the first non-finite loss on is meaningless
                losses[c, step:] = np.nan
                first = plan.first_draw_at_or_after(int(step))
                grad_sq[c, first:] = np.nan
                if reference is not None:
                    reference[c, first:] = np.nan
        draws = losses[:, plan.num_burnin :][:, :: plan.every][:, : plan.num_draws]
        return ChainRun(
            loss_trace=draws.copy(),
            burnin_loss_trace=losses[:, : plan.num_burnin].copy(),
            grad_norm_sq=grad_sq,
            reference_loss_trace=reference,
            divergence_step=self.divergence,
            observables={k: _stack_observable(v, plan.num_draws) for k, v in self.observed.items()},
            chain_mode=mode,
            seconds=seconds,
            final_positions=torch.stack(self.finals) if self.finals else torch.empty(0),
        )


#: On CPU, ``vmap`` costs about a millisecond per step whatever the model, so it pays only with many
#: chains of a small model (measured: 2x faster at 16 chains of a 100-parameter network, 1.35x for a
#: 10k-parameter MLP with batch 256; slower at 4 chains). See ``benchmarks/``.
VECTORIZE_CPU_MIN_CHAINS = 8
VECTORIZE_CPU_MAX_WORK = 10_000_000  # parameters times batch size
#: On CUDA, vectorize unless the stacked parameters of all chains get large.
VECTORIZE_CUDA_PARAMS = 50_000_000


def bind_kernel(
    sampler: str | Kernel | BoundKernel, options: Mapping[str, Any] | None, num_burnin: int = 0
) -> BoundKernel:
    """A :class:`~slt.samplers.BoundKernel` from a name or kernel and its options (see ``Kernel.bind``).

    Raises
    ------
    ValueError
        For an unknown sampler or option, or options given with an already bound kernel.
    """
    if isinstance(sampler, BoundKernel):
        if options:
            raise ValueError("sampler_options go with a sampler name or Kernel, not with a BoundKernel")
        return sampler
    return get_kernel(sampler).bind(options, num_burnin=num_burnin)


def _first_nonfinite(values: Tensor) -> int | None:
    bad = (~torch.isfinite(values)).nonzero()
    return int(bad[0, 0]) if bad.numel() else None


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _stack_observable(per_chain: list[list[np.ndarray]], num_draws: int) -> np.ndarray:
    shape = next((np.shape(v[0]) for v in per_chain if v), ())
    out = np.full((len(per_chain), num_draws, *shape), np.nan)
    for c, values in enumerate(per_chain):
        if values:
            out[c, : len(values)] = np.stack(values)
    return out
