"""Bad input gets a clear error naming what to change (issue 14, item 8), before torch or numpy fail."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import slt
from slt.sampling import PosteriorSampler
from slt.sampling.driver import chain_seeds
from slt.sampling.settings import validate_settings

QUICK = dict(num_chains=2, num_draws=20, step_size=1e-3, progress=False)


def regression(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [0.5], [-1.0]])


@pytest.mark.parametrize("mode", ["sequential", "vectorized"])
def test_a_loss_of_shape_1_is_taken_as_the_scalar_it_holds(mode):
    def loss(model, batch):  # crashed inside expand before
        x, y = batch
        return ((model(x) - y) ** 2).mean().reshape(1)

    x, y = regression()
    sampler = PosteriorSampler(nn.Linear(3, 1), (x, y), loss, batch_size=10)
    run = sampler.run(
        n_beta=20.0,
        localization=1.0,
        step_size=1e-3,
        num_chains=2,
        num_draws=80,
        chain_mode=mode,
        control_variate=True,
    )
    assert run.loss_trace.shape == (2, 80) and np.isfinite(run.loss_trace).all()
    with pytest.raises(ValueError, match=r"shape \(2,\); reduce it with .mean\(\)"):
        PosteriorSampler(nn.Linear(3, 1), (x, y), lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(0).repeat(2))


def test_mse_refuses_targets_it_would_broadcast():
    x, y = regression()
    with pytest.raises(
        ValueError,
        match=r"outputs have shape \(40, 1\) but the targets have shape \(40,\).*"
        r"y.reshape\(-1, 1\)",
    ):
        slt.estimate_llc(nn.Linear(3, 1), (x, y[:, 0]), loss_fn="mse", **QUICK)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("which", [0, 1])
def test_non_finite_data_is_blamed_on_the_data(bad, which):
    data = list(regression())
    data[which] = data[which].clone()
    data[which][3, 0] = bad
    name = ["inputs", "targets"][which]
    message = rf"data\[{which}\] \({name}\) holds 1 non-finite values.*not the step size"
    with pytest.raises(ValueError, match=message):
        slt.estimate_llc(nn.Linear(3, 1), tuple(data), loss_fn="mse", **QUICK)


def test_non_finite_data_in_a_dataset_is_blamed_on_the_data():
    class Rows(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i], self.y[i]

    x, y = regression()
    x[5, 1] = math.inf
    with pytest.raises(ValueError, match=r"\(inputs\) holds 1 non-finite values \(0 NaN, 1 infinite\)"):
        PosteriorSampler(nn.Linear(3, 1), Rows(x, y), "mse")


def test_cross_entropy_names_float_class_labels():
    x = torch.randn(30, 4)
    y = torch.randint(0, 3, (30,))
    with pytest.raises(
        ValueError, match=r"targets are torch.float32 of shape \(30,\).*Class indices must be integers"
    ):
        slt.estimate_llc(nn.Linear(4, 3), (x, y.float()), loss_fn="cross_entropy", **QUICK)
    PosteriorSampler(
        nn.Linear(4, 3), (x, nn.functional.one_hot(y, 3).float()), "cross_entropy"
    )  # probabilities


def test_cross_entropy_refuses_ignored_labels_it_would_count_in_n():
    x = torch.randn(30, 4)
    y = torch.randint(0, 3, (30,))
    y[:4] = -100
    message = r"4 targets are -100, the label torch ignores.*counts every sample in n"
    with pytest.raises(ValueError, match=message):
        slt.estimate_llc(nn.Linear(4, 3), (x, y), loss_fn="cross_entropy", **QUICK)
    y[:4] = 0
    PosteriorSampler(nn.Linear(4, 3), (x, y), "cross_entropy")


def test_a_pruned_model_gets_the_remedy():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    message = r"pruned with torch.nn.utils.prune \(0.weight\).*prune.remove\(module, \"weight\"\)"
    with pytest.raises(ValueError, match=message):
        slt.estimate_llc(model, regression(), loss_fn="mse", **QUICK)
    prune.remove(model[0], "weight")
    PosteriorSampler(model, regression(), "mse")


@pytest.mark.parametrize("value", [True, False, np.True_])
def test_a_bool_number_of_chains_is_refused(value):
    with pytest.raises(ValueError, match="num_chains must be an integer >= 1"):
        validate_settings(num_chains=value)
    with pytest.raises(ValueError, match="num_chains must be an integer >= 1"):
        slt.estimate_llc(nn.Linear(3, 1), regression(), loss_fn="mse", **{**QUICK, "num_chains": value})


@pytest.mark.parametrize("seed", [-1, 2**64, 10**30])
def test_seeds_must_fit_in_64_bits(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer from 0 to 2\*\*64 - 1"):
        chain_seeds(seed, 2)
    with pytest.raises(ValueError, match=r"seed must be an integer from 0 to 2\*\*64 - 1"):
        slt.estimate_llc(nn.Linear(3, 1), regression(), loss_fn="mse", seed=seed, **QUICK)
    with pytest.raises(TypeError, match="seed must be an integer, got bool"):
        chain_seeds(True, 2)
    assert len(chain_seeds(2**64 - 1, 2)) == 2


@pytest.mark.parametrize("tolerance", [math.nan, math.inf, 0.0, -0.1, True])
def test_calibrate_refuses_a_tolerance_that_is_not_a_positive_number(tolerance):
    with pytest.raises(ValueError, match="tolerance must be a positive number"):
        slt.calibrate(nn.Linear(3, 1), regression(), loss_fn="mse", tolerance=tolerance, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_named_with_the_remedy():
    x, y = regression()
    with pytest.raises(ValueError, match=r"device 'cuda' asks for CUDA, but .*use device='cpu'"):
        slt.estimate_llc(nn.Linear(3, 1), (x, y), loss_fn="mse", device="cuda", **QUICK)


def test_a_float64_model_takes_float32_data():
    x, y = regression()
    model = nn.Linear(3, 1).double()
    sampler = PosteriorSampler(model, (x, y), "mse")
    assert sampler.data.tensors[0].dtype == torch.float64
    with torch.no_grad():
        expected = float(nn.functional.mse_loss(model(x.double()), y.double()))
    assert sampler.init_loss == pytest.approx(expected, rel=1e-12)  # the loss in float64, not float32


@pytest.mark.parametrize("row", [lambda x, y: {"x": x, "y": y}, lambda x, y: (x, y)])
def test_a_list_of_rows_is_refused_with_the_way_to_stack_them(row):
    x, y = torch.randn(6, 3), torch.randn(6, 1)
    rows = [row(a, b) for a, b in zip(x, y)]

    def loss(model, batch):
        inputs, targets = (batch["x"], batch["y"]) if isinstance(batch, dict) else batch
        return ((model(inputs) - targets) ** 2).mean()

    with pytest.raises(TypeError, match=r"list of 6 (dict|tuple)s.*default_collate\(rows\)"):
        PosteriorSampler(nn.Linear(3, 1), rows, loss)
    stacked = PosteriorSampler(nn.Linear(3, 1), torch.utils.data.default_collate(rows), loss)  # as told
    assert stacked.n == 6
