"""Keep the caller's global state untouched: RNG streams of Python, numpy and torch."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["isolated_rng"]


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
