"""Running chains over models: the flat working copy and the chain driver."""

from slt.sampling.driver import CHAIN_MODES, ChainRun, PosteriorSampler, chain_seeds
from slt.sampling.flat import FlatModel, select_parameters
from slt.sampling.observables import PerSampleLoss

__all__ = [
    "PosteriorSampler",
    "ChainRun",
    "FlatModel",
    "PerSampleLoss",
    "select_parameters",
    "chain_seeds",
    "CHAIN_MODES",
]
