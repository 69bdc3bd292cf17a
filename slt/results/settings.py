"""The settings every chain-based estimate records, shared by the LLC and the density of states."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ChainSettings"]


@dataclass
class ChainSettings:
    """Settings of the chains behind an estimate, including those slt chose.

    Attributes
    ----------
    localization : float
        Strength γ of the pull towards the trained weights.
    step_size : float
        Step size ε of the sampler.
    step_size_source : str
        How the step was chosen (``"given"``, or an account of the automatic choice).
    sampler : str
        Registered name of the kernel.
    sampler_options : dict
        The kernel's options, defaults included.
    num_chains, num_draws, num_burnin, num_steps_bw_draws : int
        Chains, draws per chain, burn-in steps, and steps per draw.
    batch_size : int or None
        Minibatch size (a DataLoader's own; ``None`` for a loader's own batch sampler or full-batch samplers).
    seed : int
    chain_mode : str
        ``"sequential"`` or ``"vectorized"``: how the chains ran.
    num_params : int
        Sampled coordinates (after masking).
    device : str
    """

    localization: float
    step_size: float
    step_size_source: str
    sampler: str
    sampler_options: dict[str, Any]
    num_chains: int
    num_draws: int
    num_burnin: int
    num_steps_bw_draws: int
    batch_size: int | None
    seed: int
    chain_mode: str
    num_params: int
    device: str
