"""Running chains over models: the flat working copy and the chain driver."""

from slt.sampling.driver import CHAIN_MODES, ChainRun, PosteriorSampler, chain_seeds
from slt.sampling.flat import FlatModel, select_parameters

__all__ = ["PosteriorSampler", "ChainRun", "FlatModel", "select_parameters", "chain_seeds", "CHAIN_MODES"]
