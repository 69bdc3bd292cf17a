"""The chain driver: runs any kernel of :mod:`slt.samplers` over any model, data and loss.

:class:`PosteriorSampler` prepares once (copy of the model, data access, the exact full-data loss at
:math:`w^*`) and then runs as many sets of chains as asked (one per step size in a calibration, one per
temperature in a density-of-states ladder). Chains run one after another on the flat working copy
(``"sequential"``) or all at once through ``torch.func.vmap`` (``"vectorized"``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from slt.samplers import BoundKernel, Kernel, LocalPosterior, get_kernel
from slt.sampling.compiled import CompiledGradient, CompileFailed
from slt.sampling.counting import UnitCounter, check_n, resolve_n_unit
from slt.sampling.data import (
    DEFAULT_EVAL_SAMPLES,
    DataSource,
    Minibatches,
    TensorData,
    as_data_source,
    batch_length,
    batch_slice,
    check_finite,
)
from slt.sampling.flat import FlatModel, Mask
from slt.sampling.losses import LossFn, check_batch, check_scalar, cross_entropy, resolve_loss
from slt.sampling.progress import progress_bar
from slt.sampling.settings import check_seed, default_n_beta
from slt.sampling.vmap import (
    MissingBatchingRuleError,
    quiet_vmap_call,
    suppressed_batching_warnings,
    warn_missing_batching_rules,
)

__all__ = ["PosteriorSampler", "ChainRun", "chain_seeds", "bind_kernel", "observable_array", "CHAIN_MODES"]

CHAIN_MODES = ("auto", "sequential", "vectorized")
#: :attr:`PosteriorSampler.batch_size_source` when a DataLoader brings its own batches.
LOADER_BATCH_SOURCE = "the DataLoader's"
#: Steps between checks for non-finite losses (each check synchronizes with the device).
CHECK_EVERY = 64

Observable = Callable[[nn.Module], Any]


def chain_seeds(seed: int, count: int) -> list[int]:
    """Independent 63-bit seeds derived from ``seed`` (numpy ``SeedSequence``).

    Raises
    ------
    TypeError, ValueError
        Unless ``seed`` is an integer in ``[0, 2**64)`` (see :func:`slt.sampling.settings.check_seed`).
    """
    words = np.random.SeedSequence(check_seed(seed)).generate_state(2 * count, dtype=np.uint32)
    return [int(words[2 * i]) << 31 ^ int(words[2 * i + 1]) for i in range(count)]


@dataclass
class ChainRun:
    r"""What one set of chains produced.

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
    distance_sq_trace : ndarray, shape (chains, draws)
        Squared distance :math:`\lVert w - w^*\rVert^2` over the sampled coordinates at each draw, at the
        position whose loss ``loss_trace`` holds (NaN after divergence).
    divergence_step : ndarray of int, shape (chains,)
        First step (counting burn-in) whose loss was not finite; -1 for healthy chains.
    observables : dict of str to ndarray
        Per-draw values of each observable, shape ``(chains, draws, ...)``.
    chain_mode : str
        ``"sequential"`` or ``"vectorized"``: how the chains actually ran.
    seconds : float
        Wall time of the chains.
    compile : str
        ``"off"``, ``"compiled"`` (the gradient ran through ``torch.compile``), or ``"eager: <reason>"``
        when compilation was asked for and not used (see :mod:`slt.sampling.compiled`).
    final_positions : Tensor
        Flat positions of the chains after their last step, shape ``(chains, d)``.
    final_states : list
        Each chain's kernel state after its last step; pass it as ``initial_states`` to
        :meth:`PosteriorSampler.run` to continue the chains.
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
    final_states: list[Any] = field(default_factory=list, repr=False)
    compile: str = "off"
    distance_sq_trace: np.ndarray | None = field(default=None, repr=False)

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
        Minibatch size for tensors and datasets. By default ``min(n, 256)``, which the estimators then
        size for their temperature with :meth:`size_batch_for` (a larger batch when nβ is large).
    mask : optional
        Restricts sampling to part of the parameters (see :func:`slt.sampling.flat.select_parameters`).
    device : torch.device or str, optional
        Where to sample; defaults to the model's device.
    seed : int
        Seed of the partition of in-memory data into minibatches, shared by every chain and run.
    n : int, optional
        The sample size, in ``n_unit``; by default counted over the data. Required for a stream
        (``IterableDataset``), whose size cannot be counted.
    n_unit : {"auto", "samples", "tokens"}
        What ``n`` counts (see :mod:`slt.sampling.counting`): ``"samples"`` the rows of the data
        (sequences), ``"tokens"`` the tokens the loss averages over; ``"auto"`` counts tokens for token
        data (dict batches with ``input_ids``, or integer token ids of shape (sequences, positions), alone or
        with labels of their shape) and
        samples otherwise. :math:`L_n(w^*)` is the mean
        per unit (batches weighted by their tokens with ``"tokens"``).
    eval_samples : int
        For streams: how many samples the evaluation of :math:`L_n(w^*)` reads (finite data is read whole).
    model_mode : {"eval", "train"}
        The mode of the working copy while sampling (see :class:`~slt.sampling.flat.FlatModel`).
    compile : bool
        Run the loss and its gradient through ``torch.compile`` (see :mod:`slt.sampling.compiled`): one
        compiled function per architecture, shared by every chain and run of this sampler and by other
        samplers of the same architecture; checked against the eager pass at its first call, and eager
        (with the reason in :attr:`ChainRun.compile`) wherever it fails.

    Attributes
    ----------
    n : int
        The sample size, in :attr:`n_unit`.
    n_unit : str
        ``"samples"`` or ``"tokens"``.
    n_source : str
        ``"given"`` or ``"counted"``.
    num_samples : int
        Rows of the data evaluated for :attr:`init_loss` (all of it, or a stream's first ``eval_samples``).
    init_loss : float
        :math:`L_n(w^*)`, the mean loss over the *full* data (a stream: over its first ``eval_samples``).
    batching_rules_missing : bool
        Whether ``torch.func.vmap`` named ops without a batching rule on a vectorized run; ``"auto"``
        then runs chains sequentially (see :mod:`slt.sampling.vmap`).

    Raises
    ------
    ValueError
        For a stream without ``n``, an ``n`` that is not a positive integer, an unknown ``n_unit`` or
        ``model_mode``, empty data or a non-finite loss at :math:`w^*` (and see
        :func:`~slt.sampling.data.as_data_source`).
    """

    DEFAULT_BATCH_SIZE = 256
    #: Largest batch :meth:`size_batch_for` chooses, in samples.
    AUTO_BATCH_MAX = 4096
    #: Cap on batch × work per sample for :meth:`size_batch_for` (keeps a step's cost near a 4096-sample
    #: step of a 256-parameter dense model); see :meth:`work_per_unit`.
    AUTO_BATCH_WORK = 2**20
    #: Samples per unit of nβ in the batch :meth:`size_batch_for` chooses above the whole-data cap. Four
    #: was measured and not adopted (docs/theory.md, "How big a batch").
    BATCH_PER_N_BETA = 1
    #: Samples whose forward pass :meth:`work_per_unit` counts.
    FLOP_COUNT_SAMPLES = 8

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        loss_fn: str | LossFn | None,
        *,
        batch_size: int | None = None,
        mask: Mask = None,
        device: torch.device | str | None = None,
        seed: int = 0,
        n: int | None = None,
        n_unit: str = "auto",
        eval_samples: int = DEFAULT_EVAL_SAMPLES,
        model_mode: str = "eval",
        compile: bool = False,
    ):
        self.loss_fn = resolve_loss(loss_fn)
        check_not_pruned(model)
        check_n(n)
        resolve_n_unit(n_unit, None)
        self.flat_model = FlatModel(model, self.loss_fn, mask=mask, device=device, model_mode=model_mode)
        self.device = self.flat_model.device
        self.data: DataSource = as_data_source(
            data,
            self.device,
            batch_size,
            partition_seed=seed,
            dtype=self.flat_model.flat.dtype,
            eval_samples=eval_samples,
        )
        if self.data.bounded and n is None:
            raise ValueError(
                f"data is a stream ({type(data).__name__}: an IterableDataset or a loader of one): slt "
                "cannot count its samples without reading all of it (a streaming data set may never end), "
                "and n sets the temperature nβ and scales λ̂. Pass n=, the size of the training data in "
                "n_unit (sequences with n_unit='samples', tokens with n_unit='tokens'); L_n(w*) is then "
                f"evaluated on the stream's first eval_samples={eval_samples} samples"
            )
        self._counter = UnitCounter(n_unit, model, labels_per_position=self.loss_fn is cross_entropy)
        self.compiled = CompiledGradient(self.flat_model) if compile else None
        self.batching_rules_missing = False
        self._reference_tables: dict[int, _ReferenceLosses] = {}
        self._observable_shapes: dict[str, tuple[Observable, tuple[int, ...]]] = {}
        self.init_loss, counted = self._full_loss()
        self.n_unit = self._counter.unit
        self.n, self.n_source = (int(n), "given") if n is not None else (counted, "counted")
        if isinstance(data, DataLoader):
            batch_size = data.batch_size  # recorded in the settings (None for a batch sampler of its own)
            self.batch_size_source = LOADER_BATCH_SOURCE
        elif batch_size is None:
            batch_size = min(self.num_samples, self.DEFAULT_BATCH_SIZE)
            self.batch_size_source = "min(n, 256)"
        else:
            self.batch_size_source = "given"
        self.batch_size = batch_size
        self._default_batch = self.batch_size_source == "min(n, 256)"
        self._work_per_unit: tuple[int, str] | None = None

    def resolve_n_beta(self, n_beta: float | None) -> tuple[float, str]:
        """Resolve nβ (given, or ``n / log n``) and size the default batch for it.

        The one place ``estimate_llc``, ``calibrate`` and the localization trials turn their ``n_beta``
        argument into a temperature, so all three sample with the same nβ and the same batch.

        Parameters
        ----------
        n_beta : float or None
            The user's nβ, in units of ``n``; ``None`` for the default
            :func:`~slt.sampling.settings.default_n_beta`.

        Returns
        -------
        (float, str)
            nβ and its source, ``"given"`` or ``"n/log n"``; :attr:`batch_size` is then sized by
            :meth:`size_batch_for`.
        """
        if n_beta is None:
            value, source = default_n_beta(self.n), "n/log n"
        else:
            value, source = float(n_beta), "given"
        self.size_batch_for(value)
        return value, source

    def resolve_num_chains(self, num_chains: int | None, chain_mode: str = "auto") -> int:
        """The number of chains: ``num_chains`` if given, else 4, or 16 for a tiny stackable model.

        :data:`DEFAULT_NUM_CHAINS` (4) is raised to :data:`MANY_CHAINS` (16) when 16 chains would run
        stacked and parameters times batch size is at most :data:`MANY_CHAINS_MAX_WORK`, where 16 cost
        about what 4 do one after another. Call after :meth:`resolve_n_beta` (the batch size enters the
        rule). The rule is deterministic, so one seed gives the same chains on every run.
        """
        if num_chains is not None:
            return int(num_chains)
        if self.choose_mode(chain_mode, MANY_CHAINS) != "vectorized":
            return DEFAULT_NUM_CHAINS
        return MANY_CHAINS if self._step_work() <= MANY_CHAINS_MAX_WORK else DEFAULT_NUM_CHAINS

    def _step_work(self) -> int:
        """Parameters times batch size: the measure of a step's work the chain-mode rules use."""
        return self.flat_model.dim * min(self.batch_size or self.num_samples, self.num_samples)

    def size_batch_for(self, n_beta: float) -> int | None:
        r"""Size the default batch for the temperature nβ; a given batch or a loader's is kept.

        Minibatch gradient noise adds to the SGLD step a variance of about
        :math:`(\varepsilon/2)^2 n\beta^2\,\mathrm{tr}\,\Sigma / B` per step against the injected
        :math:`\varepsilon d`, so its share of the step-size bias grows as :math:`n\beta / B`
        (Welling & Teh, ICML 2011; Vollmer, Zygalakis & Teh, JMLR 2016). With
        :math:`B_{max} = \max(256, \min(4096, 2^{20} / c))` bounding a step's cost (:math:`c`, the work per
        unit of ``n``, :meth:`work_per_unit`: the parameters :math:`d` for a dense network, more for one whose
        forward pass costs more than :math:`2d` operations per sample), the default batch is
        therefore the whole data when :math:`n \le B_{max}` (no minibatch bias, at the
        cost of a step the rule accepts anyway: on a linear regression with n = 1,000 the error against
        the exact target went from +1.8% to +4.0% at batch 256 to −0.7% to +1.1% over four seeds,
        ``benchmarks/results/defaults_fullbatch_reg.md``), and otherwise
        :math:`B = \min(n, \max(256, \min(\lceil n\beta / u \rceil, B_{max})))`, with :math:`u` the
        units of ``n`` per sample (tokens per sequence, or 1); the automatic step then grows with the
        batch (``benchmarks/results/batch_rule.md``). Deterministic, so every run and checkpoint with the
        same nβ gets the same batch.

        Parameters
        ----------
        n_beta : float
            The inverse temperature times the sample size, in units of ``n``.

        Returns
        -------
        int or None
            :attr:`batch_size` after the call (a ``DataLoader``'s own, ``None`` for its own batch sampler).
        """
        if not self._default_batch:
            return self.batch_size
        units_per_sample = self._units_per_sample
        wanted = math.ceil(self.BATCH_PER_N_BETA * n_beta / max(units_per_sample, 1.0))
        n_units = self.num_samples * max(units_per_sample, 1.0)
        cap = self._batch_cap(self.num_params)
        # the forward pass is counted only where its work can change the batch (the first count in a
        # process imports torch._dynamo: 1.6 s on a slow 2-core machine)
        floor = self.DEFAULT_BATCH_SIZE
        counted = cap > floor and n_units > floor and (n_units <= cap or wanted > floor)
        work, basis = self.work_per_unit() if counted else (self.num_params, "parameters")
        cap = self._batch_cap(work)
        by = "" if basis == "parameters" else f", set by {basis}"
        if n_units <= cap:
            self.batch_size = self.num_samples
            self.batch_size_source = f"full data (n ≤ the batch cap {cap}{by})"
            return self.batch_size
        self.batch_size = min(self.num_samples, max(self.DEFAULT_BATCH_SIZE, min(wanted, cap)))
        per = "" if self.BATCH_PER_N_BETA == 1 else f"{self.BATCH_PER_N_BETA:g}·"
        self.batch_size_source = f"nβ rule ({per}nβ/{units_per_sample:.3g} samples, capped at {cap}{by})"
        return self.batch_size

    @property
    def _units_per_sample(self) -> float:
        """Units of ``n`` per sample: tokens per sequence when ``n`` was counted, else 1."""
        return self.n / self.num_samples if self.n_source == "counted" else 1.0

    def _batch_cap(self, work: int) -> int:
        return max(self.DEFAULT_BATCH_SIZE, min(self.AUTO_BATCH_MAX, self.AUTO_BATCH_WORK // max(work, 1)))

    def work_per_unit(self) -> tuple[int, str]:
        r"""The work of one unit of ``n`` in a step, in parameter-equivalents, and what set it.

        A dense network's forward pass costs about :math:`2d` floating-point operations per sample, so
        the parameters :math:`d` measure a step's work per sample; a convolution or attention reuses its
        weights across positions and costs more. The forward pass of the loss on the first
        :data:`FLOP_COUNT_SAMPLES` samples at :math:`w^*` is therefore counted once
        (:class:`torch.utils.flop_counter.FlopCounterMode`, which counts matrix products, convolutions
        and attention) and the work is :math:`\max(d, \text{FLOPs per unit} / 2)`. Measured on a
        416-parameter convolutional classifier of 8×8 images (1,500 samples, about 48,000 FLOPs per
        sample): the whole data cost about 49 ms per chain-step against 6.9 ms at batch 256; by parameters its
        cap was 2,520 samples, by FLOPs it is 256. Deterministic (no timing), so every run gets the same
        batch. Data not held as tensors (a ``Dataset`` read through a loader, a stream) and a forward pass
        the counter cannot run fall back to the parameters.

        Returns
        -------
        (int, str)
            The work per unit (at least :attr:`num_params`), and ``"parameters"`` or
            ``"the forward pass's FLOPs"``.
        """
        if self._work_per_unit is None:
            self._work_per_unit = self._count_work_per_unit()
        return self._work_per_unit

    def _count_work_per_unit(self) -> tuple[int, str]:
        params = (max(self.num_params, 1), "parameters")
        if not isinstance(self.data, TensorData):
            return params
        batch = next(iter(self.data.full_batches()))
        count = min(batch_length(batch), self.FLOP_COUNT_SAMPLES)
        units = count * self._units_per_sample
        fm = self.flat_model
        try:
            with FlopCounterMode(display=False) as counter, torch.no_grad(), fm.at(fm.center):
                fm.loss(batch_slice(batch, 0, count))
        except Exception:  # a custom op the counter cannot dispatch: the parameters still bound the work
            return params
        per_unit = math.ceil(counter.get_total_flops() / (2 * max(units, 1.0)))
        return (per_unit, "the forward pass's FLOPs") if per_unit > params[0] else params

    @property
    def runs_compiled(self) -> bool:
        """Whether chains run through the compiled gradient: asked for, and not fallen back to eager."""
        return self.compiled is not None and self.compiled.reason is None

    def enable_compile(self) -> None:
        """Run later chains through the compiled gradient (a no-op if compilation was already asked for).

        Chains already run keep their states; a run may call this between segments (see
        :func:`slt.estimators.length.run_until_converged`'s ``compile_from``).
        """
        if self.compiled is None:
            self.compiled = CompiledGradient(self.flat_model)

    def compile_pays(self, num_chains: int, chain_mode: str = "auto") -> bool:
        """Whether compiling would stack ``num_chains`` chains, where it measured 0.13-0.49x eager per step.

        The compiled rule of :meth:`choose_mode` (vectorized from 2 chains on in-memory data in eval mode,
        up to :data:`VECTORIZE_COMPILED_CPU_MAX_WORK` on CPU; on CUDA while the stacked state fits; never on
        other devices), for ``chain_mode`` ``"auto"`` or ``"vectorized"``. One chain after another, compiled
        chains measured 0.6-0.9x eager with warm-ups of 7-36 s, too little to turn compilation on without
        being asked.
        """
        # measured on CPU and CUDA only: elsewhere (MPS, ...) compile only when asked
        if chain_mode == "sequential" or self.device.type not in ("cpu", "cuda"):
            return False
        return self._stacks(num_chains, compiled=True)

    @property
    def compile_status(self) -> str:
        """``"off"`` (not asked for), ``"compiled"``, ``"eager: <reason>"`` or ``"not yet run"``."""
        return "off" if self.compiled is None else self.compiled.status

    @property
    def num_params(self) -> int:
        """Number of sampled coordinates (after masking)."""
        return self.flat_model.num_sampled

    @property
    def center(self) -> Tensor:
        """The trained weights :math:`w^*` as a flat vector."""
        return self.flat_model.center

    def _full_loss(self) -> tuple[float, int]:
        """:math:`L_n(w^*)` per unit over the data, and the units counted; sets :attr:`num_samples`."""
        fm = self.flat_model
        self.num_samples = 0

        def checked_loss(batch: Any) -> Tensor:
            check_batch(self.loss_fn, batch)
            self.num_samples += batch_length(batch)
            return fm.loss(batch)

        with fm.at(fm.center):
            init_loss, count = self.data.mean_over_batches(checked_loss, self._counter)
        if self.num_samples == 0:
            raise ValueError("data is empty: iterating it gave no samples; pass at least one sample")
        if count == 0:
            raise ValueError(
                "the data holds no tokens the loss counts (every label is -100, or every attention mask "
                "is 0); check the labels, or pass n_unit='samples'"
            )
        if not math.isfinite(init_loss):
            for batch in self.data.full_batches():  # blame the data when it is the data
                check_finite(batch, "a batch of the data: element ")
            raise ValueError(
                f"the loss at the trained weights is not finite ({init_loss}); check the model, the data "
                "and loss_fn before estimating"
            )
        return init_loss, count

    def full_loss_at(self, position: Tensor) -> float:
        """Exact mean loss over the full data at a flat ``position`` (per unit of :attr:`n_unit`)."""
        return self.full_loss_and_count(position)[0]

    def full_loss_and_count(self, position: Tensor) -> tuple[float, int]:
        """Exact mean loss over the full data at a flat ``position``, and the number of units."""
        with self.flat_model.at(position):
            return self.data.mean_over_batches(self.flat_model.loss, self._counter)

    def check_observables(self, observables: Mapping[str, Observable]) -> dict[str, tuple[int, ...]]:
        """Evaluate each observable once at :math:`w^*`, before any step, and return the shape of its value.

        A bad observable then fails at once, by name, instead of after the whole run. Each (name,
        function) pair is checked once per sampler.

        Raises
        ------
        TypeError
            For an observable that is not callable or returns something other than a number, a tensor or
            a numeric array (see :func:`observable_array`).
        ValueError
            Wrapping any exception the observable raises at :math:`w^*`, with its name.
        """
        shapes = {}
        fm = self.flat_model
        for name, fn in observables.items():
            known = self._observable_shapes.get(name)
            if known is not None and known[0] is fn:
                shapes[name] = known[1]
                continue
            if not callable(fn):
                raise TypeError(
                    f"observable {name!r} is a {type(fn).__name__}, not a callable fn(model); pass a "
                    "function of the sampled model (for per-sample losses, slt.sampling.PerSampleLoss)"
                )
            try:
                with fm.at(fm.center), torch.no_grad():
                    value = fn(fm.module)
            except Exception as error:
                raise ValueError(
                    f"observable {name!r} failed at the trained weights, before sampling: "
                    f"{type(error).__name__}: {error}"
                ) from error
            shapes[name] = observable_array(name, value).shape
            self._observable_shapes[name] = (fn, shapes[name])
        return shapes

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

        On CPU, one eager ``vmap`` call over all chains beats a Python loop only while per-step work is
        tiny; compiled, it wins from 2 chains up to a few million parameters times batch size (measured in
        ``benchmarks/``); on CUDA it wins from 3 chains on (measured on an H200, ``benchmarks/bench_gpu.py``)
        as long as the stacked chains' state fits in a share of the free device memory.
        """
        if chain_mode not in CHAIN_MODES:
            raise ValueError(f"chain_mode must be one of {CHAIN_MODES}, got {chain_mode!r}")
        if chain_mode != "auto":
            if chain_mode == "vectorized" and not isinstance(self.data, TensorData):
                raise ValueError(
                    "vectorized chains need in-memory data (a tuple or dict of tensors or a TensorDataset); "
                    "use chain_mode='sequential' with datasets and loaders"
                )
            if chain_mode == "vectorized" and self.flat_model.model_mode == "train":
                raise ValueError(
                    "vectorized chains run the model in eval mode only (dropout and batch statistics under "
                    "torch.func.vmap would be shared or fail); use chain_mode='sequential' with "
                    "model_mode='train'"
                )
            return chain_mode
        return "vectorized" if self._stacks(num_chains, self.runs_compiled) else "sequential"

    def _stacks(self, num_chains: int, compiled: bool) -> bool:
        """The automatic rule: whether ``num_chains`` chains, compiled or eager, run stacked."""
        if num_chains < 2 or not isinstance(self.data, TensorData) or self.flat_model.model_mode == "train":
            return False
        if self.batching_rules_missing:  # found on an earlier run: vmap would fall back op by op
            return False
        if self.device.type == "cuda":
            return num_chains >= VECTORIZE_CUDA_MIN_CHAINS and self._stacked_state_fits(num_chains)
        work = self._step_work()
        if compiled:
            return work <= VECTORIZE_COMPILED_CPU_MAX_WORK
        return num_chains >= VECTORIZE_CPU_MIN_CHAINS and work <= VECTORIZE_CPU_MAX_WORK

    def _stacked_state_fits(self, num_chains: int) -> bool:
        """Whether vectorized chains' state fits in a share of the free device memory.

        The state (position, gradient, noise, kernel state) is about ``STACKED_COPIES`` copies of the
        parameters per chain; it may take ``VECTORIZE_CUDA_MEMORY_SHARE`` of the free memory.
        """
        free, _ = torch.cuda.mem_get_info(self.device)
        element = torch.finfo(self.flat_model.state_dtype).bits // 8
        need = STACKED_COPIES * self.flat_model.dim * num_chains * element
        return need <= VECTORIZE_CUDA_MEMORY_SHARE * free

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
        initial_states: Sequence[Any] | None = None,
    ) -> ChainRun:
        """Run ``num_chains`` chains from :math:`w^*` and record the loss at every draw.

        Each chain takes ``num_burnin`` steps, then ``num_draws * num_steps_bw_draws`` steps, recording
        a draw before every ``num_steps_bw_draws``-th step. The loss recorded at a draw is the minibatch
        loss at that position on the minibatch used for the next gradient step. With
        ``control_variate``, the loss of :math:`w^*` on the same minibatch is recorded too; with
        ``record_grad_norm``, the squared norm of the minibatch gradient at each draw (else NaN).

        ``sampler`` is a registered name, a :class:`~slt.samplers.Kernel` (bound here with
        ``sampler_options``, adaptation ending at ``num_burnin``) or a :class:`~slt.samplers.BoundKernel`.
        ``initial_states`` (one kernel state per chain, a previous run's ``final_states``) continues
        chains instead of starting them at :math:`w^*`; ``progress`` may also be an open progress bar,
        which is advanced and left open.

        ``observables`` are evaluated once at :math:`w^*` first (see :meth:`check_observables`).

        Raises
        ------
        ValueError
            When ``initial_states`` does not hold one state per chain, an observable raises at :math:`w^*`,
            or its value changes shape at a draw.
        TypeError
            For an observable that is not callable or does not return numbers.
        """
        if initial_states is not None and len(initial_states) != num_chains:
            raise ValueError(f"initial_states holds {len(initial_states)} states for {num_chains} chains")
        kernel = bind_kernel(sampler, sampler_options, num_burnin)
        fm = self.flat_model
        target = LocalPosterior(
            n_beta=float(n_beta), localization=float(localization), center=fm.center, mask=fm.coordinate_mask
        )
        mode = self.choose_mode(chain_mode, num_chains)
        seeds = chain_seeds(seed, num_chains + 1)
        shapes = self.check_observables(observables or {})
        plan = _Plan(
            num_chains,
            num_burnin,
            num_draws,
            num_steps_bw_draws,
            step_size,
            observables or {},
            control_variate,
            record_grad_norm,
            shapes,
        )
        shared_bar = progress is not None and not isinstance(progress, (bool, str))
        bar = progress if shared_bar else progress_bar(progress, num_chains * plan.total, "sampling")
        done = bar.n if bar is not None else 0
        start = time.perf_counter()
        record = None
        strict = chain_mode != "auto"

        def rewind() -> None:
            if bar is not None:
                bar.n = done
                bar.refresh()

        def gradient(vectorized: bool) -> Any:
            if self.compiled is None:
                return None
            return self.compiled.vectorized() if vectorized else self.compiled.sequential()

        try:
            while record is None:
                try:
                    if mode == "vectorized":
                        try:
                            record = self._run_vectorized(
                                kernel, target, plan, seeds[-1], bar, initial_states, strict, gradient(True)
                            )
                        except CompileFailed:
                            raise
                        except Exception:
                            if strict:
                                raise
                            mode = "sequential"
                            rewind()
                    if record is None:
                        record = self._run_sequential(
                            kernel, target, plan, seeds[:num_chains], bar, initial_states, gradient(False)
                        )
                except CompileFailed:
                    # the compiled function failed or disagreed at its first call, before any state was
                    # kept: rerun eagerly, in the mode an eager run would choose
                    rewind()
                    mode = self.choose_mode(chain_mode, num_chains)
        finally:
            if bar is not None and not shared_bar:
                bar.close()
            fm.load(fm.center)
        return record.finish(plan, mode, time.perf_counter() - start, self.compile_status)

    # -- the two back ends -------------------------------------------------------------------

    def _run_sequential(
        self, kernel: BoundKernel, target, plan, seeds, bar, initial_states, gradient=None
    ) -> _Record:
        fm = self.flat_model
        record = _Record(plan, fm.state_dtype, self.device)
        for c in range(plan.num_chains):
            generator = torch.Generator(device=self.device).manual_seed(seeds[c])
            next_batch = self.data.stream(generator, self.batch_size)
            reference = self._references(next_batch)
            state = kernel.init(fm.center) if initial_states is None else initial_states[c]
            # the losses of the steps since the last check; appending is far cheaper than writing
            # into a tensor each step, and the window is flushed into the record every CHECK_EVERY steps
            losses: list[Tensor] = []
            references: list[Tensor] = []
            checked = 0
            for t in range(plan.total):
                batch = next_batch()
                if gradient is None:
                    fm.load(state.position)
                    loss, grad = fm.loss_and_grad(batch)
                else:
                    grad, loss = gradient(state.position, batch)
                if t == 0:
                    check_scalar(loss)
                if next_batch.weight != 1.0:  # batches of unequal size (see slt.sampling.data.Partition)
                    loss, grad = loss * next_batch.weight, grad * next_batch.weight
                losses.append(loss.detach())
                draw = plan.draw_index(t)
                if draw is not None:
                    if plan.record_grad_norm:
                        record.grad_sq[c, draw] = kernel.gradient_energy(state, grad)
                    record.distance_sq[c, draw] = squared_distance(state.position, target.center)
                    if gradient is not None and plan.observables:
                        fm.load(state.position)
                    for name, fn in plan.observables.items():
                        with torch.no_grad():
                            record.observe(name, c, fn(fm.module))
                    if plan.control_variate:
                        references.append(reference.single(next_batch, batch).detach())
                state = kernel.step(state, grad, target, generator, plan.step_size)
                if (t + 1) % CHECK_EVERY == 0 or t + 1 == plan.total:
                    if bar is not None:
                        bar.update(t + 1 - checked)
                    window = torch.stack(losses).reshape(1, -1)
                    record.put(
                        c, checked, window, torch.stack(references).reshape(1, -1) if references else None
                    )
                    losses.clear()
                    references.clear()
                    bad = _first_nonfinite(window[0])
                    if bad is not None:
                        record.divergence[c] = checked + bad
                        if bar is not None:
                            bar.update(plan.total - t - 1)
                        break
                    checked = t + 1
            record.finals.append(state.position)
            record.states.append(state)
        return record

    def _run_vectorized(
        self, kernel: BoundKernel, target, plan, seed, bar, initial_states, strict: bool = True, gradient=None
    ) -> _Record:
        fm = self.flat_model
        assert isinstance(self.data, TensorData)
        record = _Record(plan, fm.state_dtype, self.device)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        next_batch = self.data.stacked_stream(generator, self.batch_size, plan.num_chains)
        reference = self._references(next_batch)
        grad_and_loss = gradient or torch.func.vmap(torch.func.grad_and_value(fm.functional_loss()))
        if initial_states is None:
            state = kernel.init(fm.center.expand(plan.num_chains, fm.dim))
        else:
            state = stack_states(initial_states)
        checked = 0
        window = torch.full(
            (plan.num_chains, CHECK_EVERY), float("nan"), dtype=fm.state_dtype, device=self.device
        )
        references = torch.full_like(window, float("nan")) if plan.control_variate else None
        num_references = 0
        for t in range(plan.total):
            batch = next_batch()
            if t == 0 and gradient is None:
                (grad, loss), missing = quiet_vmap_call(grad_and_loss, state.position, batch)
                if missing:
                    self.batching_rules_missing = True
                    if not strict:
                        raise MissingBatchingRuleError(missing)
                    warn_missing_batching_rules(missing)
            else:
                with suppressed_batching_warnings():
                    grad, loss = grad_and_loss(state.position, batch)
            window[:, t - checked] = loss.detach()
            draw = plan.draw_index(t)
            if draw is not None:
                if plan.record_grad_norm:
                    record.grad_sq[:, draw] = kernel.gradient_energy(state, grad)
                record.distance_sq[:, draw] = squared_distance(state.position, target.center)
                if plan.observables:
                    with torch.no_grad():
                        for c in range(plan.num_chains):
                            fm.load(state.position[c])
                            for name, fn in plan.observables.items():
                                record.observe(name, c, fn(fm.module))
                if references is not None:
                    references[:, num_references] = reference.stacked(next_batch)
                    num_references += 1
            state = kernel.step(state, grad, target, generator, plan.step_size)
            if (t + 1) % CHECK_EVERY == 0 or t + 1 == plan.total:
                if bar is not None:
                    bar.update((t + 1 - checked) * plan.num_chains)
                filled = window[:, : t + 1 - checked]
                record.put(
                    slice(None),
                    checked,
                    filled,
                    references[:, :num_references] if references is not None else None,
                )
                num_references = 0
                if not bool(torch.isfinite(filled).all()):
                    for c in range(plan.num_chains):
                        bad = _first_nonfinite(filled[c])
                        if record.divergence[c] < 0 and bad is not None:
                            record.divergence[c] = checked + bad
                    if (record.divergence >= 0).all():
                        break
                checked = t + 1
        record.finals = list(state.position)
        record.states = unstack_state(state, plan.num_chains)
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
    observable_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

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
    """Buffers a set of chains fills, preallocated on the sampling device and copied out at the end.

    Only what the result exposes is kept: the loss at each burn-in step and at each draw (not at the
    steps between draws), the gradient energy and reference loss at each draw. The drivers hand over the
    losses of a window of steps at a time (:meth:`put`), so memory does not grow with the number of steps
    beyond these buffers.
    """

    def __init__(self, plan: _Plan, dtype: torch.dtype, device: torch.device):
        nan = float("nan")
        self.plan = plan
        chains = plan.num_chains
        self.burnin = torch.full((chains, plan.num_burnin), nan, dtype=dtype, device=device)
        self.draws = torch.full((chains, plan.num_draws), nan, dtype=dtype, device=device)
        self.grad_sq = torch.full((chains, plan.num_draws), nan, dtype=dtype, device=device)
        self.distance_sq = torch.full((chains, plan.num_draws), nan, dtype=dtype, device=device)
        self.reference = (
            torch.full((chains, plan.num_draws), nan, dtype=dtype, device=device)
            if plan.control_variate
            else None
        )
        self.divergence = np.full(chains, -1, dtype=np.int64)
        self.observed: dict[str, list[list[np.ndarray]]] = {
            k: [[] for _ in range(chains)] for k in plan.observables
        }
        self.finals: list[Tensor] = []
        self.states: list[Any] = []

    def observe(self, name: str, chain: int, value: Any) -> None:
        """Keep one draw's value of observable ``name``, refusing a type or shape unlike its value at w*."""
        array = observable_array(name, value)
        expected = self.plan.observable_shapes.get(name)
        if expected is not None and array.shape != expected:
            raise ValueError(
                f"observable {name!r} returned shape {array.shape} at draw {len(self.observed[name][chain])} "
                f"of chain {chain}, but {expected} at the trained weights; an observable must return the "
                "same shape at every draw"
            )
        self.observed[name][chain].append(array)

    def put(self, chains: int | slice, start: int, losses: Tensor, references: Tensor | None = None) -> None:
        """Keep the losses of steps ``start, start + 1, ...`` (shape ``(chains, steps)``) that are recorded.

        ``references`` holds the reference losses of the draws among these steps, in order.
        """
        plan = self.plan
        stop = start + losses.shape[1]
        if start < plan.num_burnin:
            end = min(stop, plan.num_burnin)
            self.burnin[chains, start:end] = losses[:, : end - start]
        first = plan.first_draw_at_or_after(start)
        offset = plan.num_burnin + first * plan.every - start
        if offset < losses.shape[1]:
            picked = losses[:, offset :: plan.every]
            self.draws[chains, first : first + picked.shape[1]] = picked
        if references is not None and references.shape[1] and self.reference is not None:
            self.reference[chains, first : first + references.shape[1]] = references

    def finish(self, plan: _Plan, mode: str, seconds: float, compile: str = "off") -> ChainRun:
        burnin = self.burnin.cpu().double().numpy()
        draws = self.draws.cpu().double().numpy()
        grad_sq = self.grad_sq.cpu().double().numpy()
        distance_sq = self.distance_sq.cpu().double().numpy()
        reference = self.reference.cpu().double().numpy() if self.reference is not None else None
        for c, step in enumerate(self.divergence):
            if step >= 0:  # everything from the first non-finite loss on is meaningless
                burnin[c, step:] = np.nan
                first = plan.first_draw_at_or_after(int(step))
                for trace in (draws, grad_sq, distance_sq, reference):
                    if trace is not None:
                        trace[c, first:] = np.nan
        return ChainRun(
            loss_trace=draws,
            burnin_loss_trace=burnin,
            grad_norm_sq=grad_sq,
            reference_loss_trace=reference,
            divergence_step=self.divergence,
            observables={
                k: _stack_observable(v, plan.num_draws, plan.observable_shapes.get(k))
                for k, v in self.observed.items()
            },
            chain_mode=mode,
            seconds=seconds,
            final_positions=torch.stack(self.finals) if self.finals else torch.empty(0),
            final_states=self.states,
            compile=compile,
            distance_sq_trace=distance_sq,
        )


def unstack_state(state: Any, num_chains: int) -> list[Any]:
    """One kernel state per chain from the state of ``num_chains`` vectorized chains (a ``NamedTuple``).

    Tensor fields are split along their first axis; other fields (step counters) are shared.
    """
    return [
        type(state)(*(f[c] if isinstance(f, Tensor) and f.ndim > 0 else f for f in state))
        for c in range(num_chains)
    ]


def stack_states(states: Sequence[Any]) -> Any:
    """The state of vectorized chains from one kernel state per chain (inverse of :func:`unstack_state`)."""
    fields = zip(*states)
    return type(states[0])(*(torch.stack(f) if isinstance(f[0], Tensor) else f[0] for f in fields))


#: Chains of an estimate when ``num_chains`` is not given.
DEFAULT_NUM_CHAINS = 4
#: Chains of an estimate of a tiny model (see :meth:`PosteriorSampler.resolve_num_chains`).
MANY_CHAINS = 16
#: Largest parameters times batch size at which 16 stacked chains replace 4. Measured on one CPU core
#: at batch 1086, per step, 16 chains stacked against 4 one after another: 0.78x for a normal crossing (2
#: parameters), 1.25x for a 16-parameter linear network, 1.8-2.7x from 100 parameters on. On normal
#: crossings (benchmarks/bench_defaults.py, 12 runs) 16 chains converged in all (4 chains: 5 of 12, the
#: rest stopped by max_steps with a standard error above 5%) in 65 s on average against 126 s, with the
#: same accuracy (mean absolute error against the exact target 5.1% against 5.3%).
MANY_CHAINS_MAX_WORK = 20_000
#: On CPU, ``vmap`` costs about a millisecond per step whatever the model, so it pays only with many
#: chains of a small model (measured: 2x faster at 16 chains of a 100-parameter network, 1.35x for a
#: 10k-parameter MLP with batch 256; slower at 4 chains). See ``benchmarks/``.
VECTORIZE_CPU_MIN_CHAINS = 8
VECTORIZE_CPU_MAX_WORK = 10_000_000  # parameters times batch size
#: Compiled, ``vmap`` over 4 chains costs 0.35-0.60x (a 100-parameter network) and 0.64-0.98x (a
#: 10k-parameter MLP, batch 256: work 2.6M) of the compiled chains one after another, and 1.04-1.11x on a
#: 110k-parameter transformer at batch 32 (work 3.5M), in two runs of ``benchmarks/bench_compile.py``.
VECTORIZE_COMPILED_CPU_MAX_WORK = 3_000_000
#: On CUDA, ``vmap`` over the chains wins from 3 chains on. Measured on an H200 (``benchmarks/bench_gpu.py``,
#: ``results/gpu.md``): per chain-step, vectorized against one chain after another, 0.57x at 4 chains,
#: 0.13x at 16 and 0.035x at 64 for a 10k-parameter MLP (batch 256); 0.79x at 4 and 0.25x at 16 chains
#: for a 3.4M-parameter transformer (batch 32 of 64 tokens); at 1 chain it is 2.2-2.5x slower. A
#: vectorized step cost about the same at 1 and 4 chains, 2.2-2.5 sequential steps, so the break-even
#: lies between 2 and 3 chains (interpolated; 2 and 3 chains were not measured). The limit is memory:
#: vectorize while the stacked state (about ``STACKED_COPIES`` copies of the parameters per chain) takes
#: at most ``VECTORIZE_CUDA_MEMORY_SHARE`` of the free device memory; the activations of all chains'
#: batches come on top.
VECTORIZE_CUDA_MIN_CHAINS = 3
VECTORIZE_CUDA_MEMORY_SHARE = 0.25
STACKED_COPIES = 8


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


def check_not_pruned(model: nn.Module) -> None:
    """Refuse a model pruned with ``torch.nn.utils.prune``, naming the remedy.

    Pruning replaces ``weight`` by ``weight_orig`` and ``weight_mask`` and recomputes ``weight`` in a
    forward pre-hook: such a model cannot be copied, and sampling ``weight_orig`` would move the pruned
    entries too.

    Raises
    ------
    ValueError
        Naming the pruned modules and parameters.
    """
    from torch.nn.utils import prune

    pruned = [
        f"{name or '(the model)'}.{hook._tensor_name}"
        for name, module in model.named_modules()
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, prune.BasePruningMethod)
    ]
    if pruned:
        raise ValueError(
            f"the model is pruned with torch.nn.utils.prune ({', '.join(pruned)}), so it cannot be copied "
            "and its pruned weights would move. Make the pruning permanent first: prune.remove(module, "
            '"weight") for each of them (the zeros stay; pass mask= to keep them fixed while sampling)'
        )


def squared_distance(position: Tensor, center: Tensor) -> Tensor:
    r""":math:`\lVert w - w^*\rVert^2` of a position ``(d,)`` or of stacked chains ``(chains, d)``."""
    return torch.sub(position, center).square_().sum(dim=-1)


def _first_nonfinite(values: Tensor) -> int | None:
    bad = (~torch.isfinite(values)).nonzero()
    return int(bad[0, 0]) if bad.numel() else None


def observable_array(name: str, value: Any) -> np.ndarray:
    """``value`` of observable ``name`` as a numeric numpy array, always a copy.

    A copy, because an observable may return a view of the working copy's weights (``m.weight[0]``),
    which the next step overwrites: without it every draw would read the last position.

    Raises
    ------
    TypeError
        Naming the observable, for a value that is not a number, a tensor or a numeric array (a dict, a
        string, ``None``, a list of tensors).
    """
    if isinstance(value, Tensor):
        value = value.detach()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.cpu().numpy().copy()
    if isinstance(value, Mapping):
        raise TypeError(
            f"observable {name!r} returned a dict (keys {list(value)[:5]}); an observable returns one number "
            "or array per draw: pass one observable per entry, for example "
            "{'a': lambda m: f(m)['a'], 'b': lambda m: f(m)['b']}"
        )
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"observable {name!r} returned {type(value).__name__}, which is not an array ({error}); return a "
            "number, a tensor or a numeric array"
        ) from error
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"observable {name!r} returned {type(value).__name__} (as an array: dtype {array.dtype}); "
            "return a number, a tensor or a numeric array (stack a list of tensors with torch.stack)"
        )
    return array.copy()


def _stack_observable(
    per_chain: list[list[np.ndarray]], num_draws: int, shape: tuple[int, ...] | None = None
) -> np.ndarray:
    if shape is None:
        shape = next((np.shape(v[0]) for v in per_chain if v), ())
    out = np.full((len(per_chain), num_draws, *shape), np.nan)
    for c, values in enumerate(per_chain):
        if values:
            out[c, : len(values)] = np.stack(values)
    return out
