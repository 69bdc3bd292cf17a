"""Per-checkpoint seeds, measure selection, and the descriptions of settings and data that get hashed."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from slt.sweeps.measures import checkpoint_seed, data_fingerprint, describe, validate_measures
from tests.sweeps.fixtures import gaussian_nll


def test_checkpoint_seeds_are_deterministic_and_distinct():
    seeds = [checkpoint_seed(0, step) for step in range(1000)]
    assert seeds == [checkpoint_seed(0, step) for step in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert checkpoint_seed(1, 5) != checkpoint_seed(0, 5) != checkpoint_seed(0, 5, stream=1)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            checkpoint_seed(bad, 0)


def test_measures_are_checked_and_deduplicated():
    assert validate_measures("llc") == ("llc",)
    assert validate_measures(["loss", "llc", "loss"]) == ("loss", "llc")
    for bad, message in (([], "non-empty selection"), (["llc", "hessian"], "unknown measure 'hessian'")):
        with pytest.raises(ValueError, match=message):
            validate_measures(bad)


def test_describe_names_callables_and_hashes_tensors():
    assert describe(gaussian_nll) == "tests.sweeps.fixtures:gaussian_nll"
    assert describe({"b": 1.0, "a": [np.float32(0.5), None, float("nan")]}) == {
        "a": [0.5, None, "nan"],
        "b": 1.0,
    }
    a, b = describe(torch.zeros(3)), describe(torch.ones(3))
    assert a != b and a["shape"] == [3] and describe(torch.zeros(3)) == a


def test_data_fingerprints_follow_the_contents_of_tensors():
    x, y = torch.zeros(4, 2), torch.ones(4, 1)
    assert data_fingerprint((x, y)) == data_fingerprint(TensorDataset(x, y))
    assert data_fingerprint((x, y)) != data_fingerprint((x, y + 1))
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    assert (
        data_fingerprint(loader) == "DataLoader(torch.utils.data.dataset:TensorDataset, len=4, batch_size=2)"
    )
