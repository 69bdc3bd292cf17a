"""Uniform access to the data an estimate runs on: tensors, datasets or data loaders.

:func:`as_data_source` wraps what the user passes into a :class:`DataSource` with two jobs: iterate the
whole data set exactly once (for :math:`L_n(w^*)` and the sample size :math:`n`) and draw an endless
stream of shuffled minibatches for the chains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["DataSource", "TensorData", "LoaderData", "as_data_source", "batch_length", "move_to"]

Batch = Any


def move_to(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor inside ``batch`` (nested tuples, lists, dicts) to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def batch_length(batch: Batch) -> int:
    """Number of samples in ``batch``: the leading size of the first tensor found in it."""
    if isinstance(batch, Tensor):
        if batch.ndim == 0:
            raise ValueError("a batch holds a 0-dimensional tensor; samples must be stacked on dimension 0")
        return int(batch.shape[0])
    values: Sequence[Any]
    if isinstance(batch, Mapping):
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = batch
    else:
        values = []
    for value in values:
        try:
            return batch_length(value)
        except TypeError:
            continue
    raise TypeError(f"cannot find a tensor in a batch of type {type(batch).__name__}")


class DataSource:
    """Interface of the wrappers returned by :func:`as_data_source`."""

    #: Leading-dimension tensors when the data is an in-memory tensor set, else ``None``.
    tensors: tuple[Tensor, ...] | None = None

    def full_batches(self) -> Iterator[Batch]:
        """Yield batches that together cover every sample exactly once."""
        raise NotImplementedError

    def stream(self, generator: torch.Generator, batch_size: int | None) -> Callable[[], Batch]:
        """Return a function that returns the next shuffled minibatch each time it is called."""
        raise NotImplementedError


class TensorData(DataSource):
    """A tuple of tensors sharing their first dimension, held on one device.

    Minibatches are drawn without replacement within an epoch (a fresh permutation each epoch); a
    batch size of at least ``n`` gives the full data every step, unshuffled.
    """

    def __init__(self, tensors: Sequence[Tensor], device: torch.device, eval_batch_size: int = 4096):
        if len(tensors) == 0:
            raise ValueError("data is an empty tuple; pass (inputs, targets) tensors")
        for t in tensors:
            if not isinstance(t, Tensor):
                raise TypeError(f"data tuples must hold tensors, got {type(t).__name__}")
            if t.ndim == 0:
                raise ValueError("data tensors must have a leading sample dimension; got a 0-d tensor")
        sizes = {int(t.shape[0]) for t in tensors}
        if len(sizes) != 1:
            raise ValueError(f"data tensors disagree on the number of samples: {sorted(sizes)}")
        self.n = sizes.pop()
        if self.n == 0:
            raise ValueError("data is empty (0 samples); pass at least one sample")
        self.tensors = tuple(t.to(device) for t in tensors)
        self.eval_batch_size = eval_batch_size

    def full_batches(self) -> Iterator[Batch]:
        for start in range(0, self.n, self.eval_batch_size):
            yield tuple(t[start : start + self.eval_batch_size] for t in self.tensors)

    def stream(self, generator: torch.Generator, batch_size: int | None) -> Callable[[], Batch]:
        tensors, n = self.tensors, self.n
        assert tensors is not None
        if batch_size is None or batch_size >= n:
            return lambda: tensors
        device = tensors[0].device
        state = {"perm": torch.randperm(n, generator=generator, device=device), "pos": 0}

        def next_batch() -> Batch:
            pos = state["pos"]
            if pos + batch_size > n:
                state["perm"] = torch.randperm(n, generator=generator, device=device)
                pos = 0
            idx = state["perm"][pos : pos + batch_size]
            state["pos"] = pos + batch_size
            return tuple(t[idx] for t in tensors)

        return next_batch

    def stacked_stream(
        self, generator: torch.Generator, batch_size: int | None, num_chains: int
    ) -> Callable[[], Batch]:
        """Like :meth:`stream`, but each call returns tensors of shape ``(num_chains, batch, ...)``.

        Every epoch draws one permutation and a random starting offset per chain, and chain ``c``
        reads the permutation cyclically from its offset. Each chain thus still sees every sample once
        per epoch (so minibatch noise in the loss averages out over an epoch, as in :meth:`stream`),
        chains see different batches at each step, and no per-chain sort is needed.
        """
        tensors, n = self.tensors, self.n
        assert tensors is not None
        if batch_size is None or batch_size >= n:
            stacked = tuple(t.unsqueeze(0).expand(num_chains, *t.shape) for t in tensors)
            return lambda: stacked
        device = tensors[0].device
        steps_per_epoch = n // batch_size
        window = torch.arange(batch_size, device=device)

        def new_epoch() -> dict[str, Any]:
            perm = torch.randperm(n, generator=generator, device=device)
            offsets = torch.randint(n, (num_chains, 1), generator=generator, device=device)
            return {"perm": perm, "start": offsets + window, "k": 0}

        state = new_epoch()

        def next_batch() -> Batch:
            nonlocal state
            if state["k"] == steps_per_epoch:
                state = new_epoch()
            idx = state["perm"][(state["start"] + state["k"] * batch_size) % n]
            state["k"] += 1
            return tuple(t[idx] for t in tensors)

        return next_batch


class LoaderData(DataSource):
    """Any map-style dataset or data loader, read batch by batch and moved to ``device``.

    A :class:`~torch.utils.data.DataLoader` is used as configured (its batch size, sampler and
    collate function). A :class:`~torch.utils.data.Dataset` is wrapped in shuffling loaders driven by
    the chain's own generator.
    """

    def __init__(
        self,
        data: Dataset | DataLoader,
        device: torch.device,
        batch_size: int | None,
        eval_batch_size: int = 1024,
    ):
        self.device = device
        if isinstance(data, DataLoader):
            if batch_size is not None:
                raise ValueError(
                    "batch_size applies to tensors and datasets; a DataLoader keeps its own batch size "
                    f"(got batch_size={batch_size}). Drop batch_size or pass the dataset instead."
                )
            self._loader: DataLoader | None = data
            self._dataset = None
        else:
            self._loader = None
            self._dataset = data
            try:
                size = len(data)  # type: ignore[arg-type]
            except TypeError:
                size = None
            if size == 0:
                raise ValueError("data is empty (the dataset has length 0); pass at least one sample")
        self.eval_batch_size = eval_batch_size

    def full_batches(self) -> Iterator[Batch]:
        if self._loader is not None:
            loader = self._loader
        else:
            loader = DataLoader(self._dataset, batch_size=self.eval_batch_size, shuffle=False)  # type: ignore[arg-type]
        for batch in loader:
            yield move_to(batch, self.device)

    def stream(self, generator: torch.Generator, batch_size: int | None) -> Callable[[], Batch]:
        if self._loader is not None:
            loader = self._loader
        else:
            cpu_generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
            loader = DataLoader(
                self._dataset,  # type: ignore[arg-type]
                batch_size=batch_size or 256,
                shuffle=True,
                generator=cpu_generator,
            )
        state = {"it": iter(loader)}

        def next_batch() -> Batch:
            try:
                batch = next(state["it"])
            except StopIteration:
                state["it"] = iter(loader)
                try:
                    batch = next(state["it"])
                except StopIteration:
                    raise ValueError("data is empty: the data loader yields no batches") from None
            return move_to(batch, self.device)

        return next_batch


def as_data_source(data: Any, device: torch.device, batch_size: int | None = None) -> DataSource:
    """Wrap ``data`` for sampling.

    Parameters
    ----------
    data : tuple of Tensor, TensorDataset, Dataset or DataLoader
        The training data. Tuples of tensors and ``TensorDataset`` are held in memory on ``device``
        (fastest, and the only form that allows vectorized chains); other datasets and loaders are
        read batch by batch.
    device : torch.device
        Where batches are placed.
    batch_size : int, optional
        Minibatch size for the chains (not allowed with a ``DataLoader``, which keeps its own).

    Returns
    -------
    DataSource
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(data, Tensor):
        return TensorData((data,), device)
    if isinstance(data, (tuple, list)):
        return TensorData(tuple(data), device)
    if isinstance(data, TensorDataset):
        return TensorData(data.tensors, device)
    if isinstance(data, (Dataset, DataLoader)):
        return LoaderData(data, device, batch_size)
    raise TypeError(
        "data must be a tuple of tensors (inputs, targets), a torch Dataset or a DataLoader; "
        f"got {type(data).__name__}"
    )
