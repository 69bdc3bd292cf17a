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


def _load_module(path, name="user_defs"):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FACTORY = """
from torch import nn
HIDDEN = {hidden}

def helper(x):
    return x * {scale}

def make_model():
    return nn.Sequential(nn.Linear(3, HIDDEN), nn.{act}(), nn.Linear(HIDDEN, 1))

def loss(model, batch):
    x, y = batch
    return helper(((model(x) - y) ** 2).mean())
"""


def test_code_fingerprints_follow_the_code_of_factories_losses_and_their_helpers(tmp_path):
    from slt.sweeps.measures import code_fingerprint

    def fingerprints(**fields):
        values = dict(hidden=8, scale=0.5, act="Tanh")
        values.update(fields)
        path = tmp_path / "defs.py"
        path.write_text(FACTORY.format(**values))
        module = _load_module(path)
        return code_fingerprint(module.make_model), code_fingerprint(module.loss)

    base = fingerprints()
    assert fingerprints() == base  # the same code, loaded again: the same fingerprints
    assert fingerprints(act="ReLU")[0] != base[0]  # the factory's body changed
    assert fingerprints(hidden=16)[0] != base[0]  # a module-level constant it uses changed
    assert fingerprints(scale=2.0)[1] != base[1]  # a helper of the loss changed
    assert fingerprints(act="ReLU")[1] == base[1]  # the loss did not change


def test_code_fingerprints_tell_partials_closures_and_defaults_apart():
    import functools

    from slt.sweeps.measures import code_fingerprint

    def scaled(model, batch, scale=1.0):
        return scale * gaussian_nll(model, batch)

    assert code_fingerprint(functools.partial(scaled, scale=2.0)) != code_fingerprint(
        functools.partial(scaled, scale=3.0)
    )

    def make(c):
        return lambda model, batch: c * gaussian_nll(model, batch)

    assert code_fingerprint(make(1.0)) != code_fingerprint(make(2.0))
    assert code_fingerprint(make(1.0)) == code_fingerprint(make(1.0))

    class Opaque:
        __slots__ = ()

    with pytest.raises(ValueError, match="cannot fingerprint loss_fn: it holds .*memory address"):
        code_fingerprint(functools.partial(scaled, scale=Opaque()), what="loss_fn")
