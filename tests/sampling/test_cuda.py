"""The GPU path: every estimator on CUDA, against closed forms, without host syncs in the chain loop.

These tests run where ``torch.cuda.is_available()`` and skip elsewhere (CI has no GPU; the numbers of the
last GPU run are in ``benchmarks/results/gpu.md``). ``SLT_TEST_DEVICE=cpu`` runs the same tests on CPU,
except the one that counts host syncs, which needs CUDA's sync debug mode.
"""

import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import slt
from slt.oracles import linear_regression_target
from slt.sampling import PosteriorSampler
from slt.sampling import driver as driver_module
from tests.conftest import gaussian_nll, least_squares_regression

DEVICE = os.environ.get("SLT_TEST_DEVICE", "cuda")

pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device in this process"
)


@pytest.fixture(scope="module")
def regression():
    """A least-squares linear fit on n = 1000 (not a multiple of the batch), on the test device."""
    model, x, y = least_squares_regression(1000, 6)
    return model.to(DEVICE), (x.to(DEVICE), y.to(DEVICE))


@pytest.fixture(scope="module")
def mlp_problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 4, generator=g)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(512, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(500):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.to(DEVICE), (x.to(DEVICE), y.to(DEVICE))


FIXED = dict(n_beta=200.0, localization=10.0, step_size=1e-3, num_chains=4, num_draws=600, num_burnin=400)


def snapshot(model):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return state, rng, cuda_rng, model.training


def assert_untouched(model, before):
    state, rng, cuda_rng, training = before
    for k, v in model.state_dict().items():
        assert v.device == state[k].device
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    if cuda_rng:
        assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda_rng))
    assert model.training == training


def test_llc_on_the_device_matches_the_closed_form_and_leaves_the_model_alone(regression):
    model, data = regression
    before = snapshot(model)
    result = slt.estimate_llc(
        model,
        data,
        loss_fn=gaussian_nll,
        step_size=3e-4,
        num_draws=2000,
        num_burnin=500,
        progress=False,
        seed=0,
    )
    target = linear_regression_target(
        data[0], result.settings.n_beta, result.settings.localization, loss="gaussian_nll"
    )
    assert result.settings.device.startswith(DEVICE)
    assert abs(result.mean - target) < 0.05 * target + 3 * result.stderr, (result.mean, target)
    assert_untouched(model, before)


def test_same_seed_same_numbers_on_the_device(mlp_problem):
    model, data = mlp_problem
    runs = [slt.estimate_llc(model, data, loss_fn="mse", seed=5, progress=False, **FIXED) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].loss_trace, runs[1].loss_trace)


@pytest.mark.parametrize("compile", [False, True])
def test_chain_modes_agree_within_sampling_error(mlp_problem, compile):
    model, data = mlp_problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own notices while compiling
        results = {
            mode: slt.estimate_llc(
                model, data, loss_fn="mse", chain_mode=mode, compile=compile, seed=2, progress=False, **FIXED
            )
            for mode in ("sequential", "vectorized")
        }
    seq, vec = results["sequential"], results["vectorized"]
    assert vec.settings.chain_mode == "vectorized"
    if compile:
        assert seq.settings.compile == "compiled" and vec.settings.compile == "compiled"
    spread = np.hypot(seq.stderr, vec.stderr)
    assert abs(seq.mean - vec.mean) < 4 * spread + 0.02 * abs(seq.mean), (seq.mean, vec.mean, spread)


def sync_count(sampler, steps):
    """Host syncs during one ``run`` of ``steps`` steps per chain (CUDA's sync debug mode, as warnings)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            sampler.run(
                n_beta=200.0,
                localization=10.0,
                step_size=2e-4,
                num_chains=4,
                num_draws=steps,
                num_burnin=0,
                seed=0,
                chain_mode="vectorized",
            )
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="counts CUDA host syncs")
def test_the_chain_loop_syncs_with_the_host_only_at_its_periodic_checks(mlp_problem):
    model, data = mlp_problem
    sampler = PosteriorSampler(model, data, "mse", batch_size=128)
    sync_count(sampler, 64)  # warm-up: the reference losses of every batch are computed once
    short, long = sync_count(sampler, 128), sync_count(sampler, 128 + 8 * driver_module.CHECK_EVERY)
    # each check of CHECK_EVERY steps may sync a few times (the finite test, the progress bar); no step may
    assert long - short <= 8 * 4, (short, long)


def test_density_of_states_on_the_device(regression):
    model, data = regression
    before = snapshot(model)
    result = slt.estimate_dos(
        model,
        data,
        loss_fn=gaussian_nll,
        num_rungs=6,
        num_draws=300,
        num_chains=4,
        fit_form="power",
        seed=0,
        progress=False,
    )
    assert np.isfinite(result.llc) and result.llc > 0
    # a regular model with d = 6: the volume's log-log slope is d/2 = 3
    assert abs(result.llc - 3.0) < 0.3 + 3 * result.llc_stderr, (result.llc, result.llc_stderr)
    assert_untouched(model, before)


def test_checkpoints_analyzed_on_the_device(tmp_path, mlp_problem):
    model, data = mlp_problem
    for step in (10, 20):
        torch.save(model.state_dict(), tmp_path / f"step{step}.pt")

    def factory():
        return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    trajectory = slt.analyze_checkpoints(
        tmp_path,
        factory,
        data,
        loss_fn="mse",
        store=None,
        progress=False,
        device=DEVICE,
        reference=None,
        **{**FIXED, "num_draws": 1500, "num_burnin": 500},
    )
    assert trajectory.steps.tolist() == [10, 20]
    assert trajectory.ok.all()
    assert np.isfinite(trajectory.llc_mean).all()
