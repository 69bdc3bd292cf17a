"""Keep the caller's global state untouched: RNG streams of Python, numpy and torch."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

__all__ = ["isolated_rng", "preserved_generators", "data_generators"]


@contextmanager
def isolated_rng(seed: int, devices: tuple[torch.device, ...] = ()) -> Iterator[None]:
    """Run a block with the global RNGs seeded from ``seed``, restoring their states afterwards.

    slt draws its own noise from private generators; the global streams are seeded only so that code
    outside slt's control (a user's ``DataLoader`` shuffling, say) is reproducible, and restored so
    that the caller's training run continues exactly as if slt had never been called.

    Parameters
    ----------
    seed : int
        Seed for Python's ``random``, numpy's global generator and torch's CPU generator.
    devices : tuple of torch.device
        CUDA devices whose generator states are saved, seeded and restored too.
    """
    cuda_indices = sorted({d.index or 0 for d in devices if d.type == "cuda"})
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = [torch.cuda.get_rng_state(i) for i in cuda_indices]
    try:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)
        for i in cuda_indices:
            torch.cuda.default_generators[i].manual_seed(seed)
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        for i, state in zip(cuda_indices, cuda_states):
            torch.cuda.set_rng_state(state, i)


def data_generators(*data: Any) -> list[torch.Generator]:
    """The private generators of data loaders and samplers inside ``data`` (each generator once).

    A ``DataLoader(..., generator=g)`` draws from ``g`` every time it is iterated (its base seed, and
    its ``RandomSampler``'s order); samplers may hold generators of their own.
    """
    found: dict[int, torch.Generator] = {}

    def visit(obj: Any, depth: int = 0) -> None:
        if obj is None or depth > 3:
            return
        generator = getattr(obj, "generator", None)
        if isinstance(generator, torch.Generator):
            found.setdefault(id(generator), generator)
        for name in ("sampler", "batch_sampler"):
            inner = getattr(obj, name, None)
            if inner is not None and inner is not obj:
                visit(inner, depth + 1)

    for item in data:
        visit(item)
    return list(found.values())


@contextmanager
def preserved_generators(*data: Any) -> Iterator[None]:
    """Run a block and put the generators of :func:`data_generators` back in their states afterwards.

    Measuring with the user's data loader then leaves the loader's shuffling stream where it was, so a
    training run that iterates the same loader continues exactly as without the measurement.
    """
    generators = data_generators(*data)
    states = [g.get_state() for g in generators]
    try:
        yield
    finally:
        for g, state in zip(generators, states):
            g.set_state(state)
