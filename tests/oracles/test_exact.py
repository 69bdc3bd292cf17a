"""Exact finite-nβ targets: the Metropolis-adjusted reference against closed forms and quadrature."""

import json
import math
import random

import numpy as np
import pytest
import torch

from slt.oracles import (
    ExactTarget,
    NormalCrossing,
    deep_linear_network,
    exact_llc_target,
    linear_regression_data,
    linear_regression_target,
    normal_crossing_lambda,
    normal_crossing_target,
    quadratic_target,
    regression_data,
)
from slt.warnings import ConvergenceWarning
from tests.conftest import gaussian_nll


def fitted_regression(n: int, d_in: int = 5, outputs: int = 1, seed: int = 0):
    """A linear model with bias at the least-squares fit of noisy data, in float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    beta = torch.randn(d_in, outputs, generator=g, dtype=torch.float64)
    y = x @ beta + torch.randn(n, outputs, generator=g, dtype=torch.float64)
    design = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution
    model = torch.nn.Linear(d_in, outputs).double()
    with torch.no_grad():
        model.weight.copy_(solution[:d_in].T)
        model.bias.copy_(solution[d_in])
    return model, (x, y)


# -- closed forms --------------------------------------------------------------------------------


def test_quadratic_target_limits():
    h = np.array([1.0, 2.0, 0.0])
    assert quadratic_target(h, 1e9, 1.0) == pytest.approx(1.0, rel=1e-6)  # d_eff / 2, the zero mode absent
    assert quadratic_target(h, 1.0, 1.0) == pytest.approx(0.5 * (1 / 2 + 2 / 3))
    with pytest.raises(ValueError, match="negative eigenvalue"):
        quadratic_target([-1.0, 1.0], 10.0, 1.0)
    with pytest.raises(ValueError, match="improper"):
        quadratic_target([0.0, 1.0], 10.0, 0.0)


def test_linear_regression_target_follows_the_loss_convention():
    # "mse" (mean over samples and outputs, no 1/2) at nβ equals the Gaussian NLL (1/2 sum over
    # outputs) at 2nβ/m: the same posterior, written with the Hessian 2G/m instead of G
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for outputs in (1, 3):
        mse = linear_regression_target(x, 50.0, 1.0, outputs=outputs, loss="mse")
        nll = linear_regression_target(x, 2 * 50.0 / outputs, 1.0, outputs=outputs, loss="gaussian_nll")
        assert mse == pytest.approx(nll, rel=1e-12)
    assert linear_regression_target(x, 1e12, 1.0, outputs=3, bias=True) == pytest.approx(3 * 5 / 2, rel=1e-6)
    with pytest.raises(ValueError, match="loss"):
        linear_regression_target(x, 50.0, 1.0, loss="l1")  # type: ignore[arg-type]


def test_normal_crossing_quadrature_regular_limit_and_below_lambda():
    x, y = regression_data(10_000, seed=0)
    n_beta = 10_000 / math.log(10_000)
    # with a huge prior width the w1-direction alone gives 1/2 at every w2 far from 0
    assert 0 < normal_crossing_target(x, y * 0, n_beta, 1e-6, loss="gaussian_nll") < 0.5
    # at finite β the value lies below λ: K = w1² w2^2k has λ = 1/(2k) (1/2 with multiplicity 2 for k=1)
    for k in (1, 2, 3):
        value = normal_crossing_target(x, y, n_beta, 1.0, power=k, loss="gaussian_nll")
        assert 0 < value < normal_crossing_lambda([1, k])[0]
    # "mse" at nβ is the Gaussian NLL at 2nβ
    assert normal_crossing_target(x, y, n_beta, 4.0, loss="mse") == pytest.approx(
        normal_crossing_target(x, y, 2 * n_beta, 4.0, loss="gaussian_nll"), rel=1e-12
    )
    with pytest.raises(ValueError, match="localization"):
        normal_crossing_target(x, y, n_beta, 0.0)


# -- the Metropolis-adjusted reference -----------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "loss", "num_chains", "min_steps"),
    [(501, "mse", 32, 2000), (4100, "gaussian_nll", 16, 1000)],  # 4100: full-data chunks of 4096 + 4
)
def test_mala_reference_matches_the_linear_regression_closed_form(n, loss, num_chains, min_steps):
    model, (x, y) = fitted_regression(n)
    loss_fn = "mse" if loss == "mse" else gaussian_nll
    result = exact_llc_target(
        model, (x, y), loss_fn, num_chains=num_chains, min_steps=min_steps, seed=1, tolerance=0.02
    )
    exact = linear_regression_target(x, n / math.log(n), 1.0, bias=True, loss=loss)
    # measured (seed 1): n=501 2.952 ± 0.015 against 2.981 (-1.0%); n=4100 2.998 ± 0.027 against 2.994 (+0.1%)
    assert result.converged and result.problems == ()
    assert result.n_beta == pytest.approx(n / math.log(n))
    assert result.stderr < 0.01 * exact
    assert result.value == pytest.approx(exact, rel=0.02)
    assert 0.55 < result.acceptance < 0.85
    assert result.chain_values.shape == (num_chains,)


def test_mala_reference_matches_the_normal_crossing_quadrature():
    # K = w1² w2⁴ at a small n (cheap chains) and a large nβ (the singular regime)
    x, y = regression_data(100, seed=0, dtype=torch.float64)
    n_beta, gamma = 300.0, 4.0
    model = NormalCrossing([1, 2], dtype=torch.float64)
    result = exact_llc_target(
        model,
        (x, y),
        gaussian_nll,
        n_beta=n_beta,
        localization=gamma,
        num_chains=256,
        min_steps=4000,
        tolerance=0.02,
    )
    exact = normal_crossing_target(x, y, n_beta, gamma, power=2, loss="gaussian_nll")
    # measured: 0.09635 ± 0.0017 against 0.09618 (+0.2%)
    assert result.converged
    assert result.value == pytest.approx(exact, rel=0.03)
    assert abs(result.value - exact) < 3 * result.stderr
    assert result.offset_from(0.25) == pytest.approx((result.value - 0.25) / 0.25)
    assert result.offset_from(0.25) < 0  # the finite-β target sits below λ = 1/4


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # 150 steps: too short on purpose
def test_the_model_its_grads_mode_and_the_global_rng_are_left_as_they_were():
    model, (x, y) = fitted_regression(200)
    model.train()
    model(x).pow(2).mean().backward()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    exact_llc_target(model, (x, y), "mse", num_chains=4, burnin_steps=50, min_steps=100, max_steps=150)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))


def test_too_few_steps_warn_with_what_to_do_and_round_trip_through_json(tmp_path):
    # a deep linear network at a singular w*: its chains still drift after 16 steps
    model = deep_linear_network([4, 3, 4], 1, dtype=torch.float64)
    data = linear_regression_data(model, 200)
    with pytest.warns(ConvergenceWarning, match=r"Raise max_steps \(to at least 84\)"):
        result = exact_llc_target(
            model, data, gaussian_nll, num_chains=4, burnin_steps=20, min_steps=16, max_steps=36, tolerance=0
        )
    assert not result.converged and result.steps == 16
    assert [p.category for p in result.problems] == ["ConvergenceWarning"]
    assert "(max_steps=36 stopped it)" in result.problems[0].message
    path = tmp_path / "exact.json"
    result.to_json(path)
    json.loads(path.read_text())
    with pytest.warns(ConvergenceWarning):
        again = ExactTarget.from_json(path)
    assert again.value == result.value and again.stderr == result.stderr
    assert again.converged is False and again.steps == result.steps
    np.testing.assert_array_equal(again.chain_values, result.chain_values)
    assert again.history == result.history


def test_a_time_budget_stops_the_doublings_and_says_so():
    model = deep_linear_network([4, 3, 4], 1, dtype=torch.float64)
    data = linear_regression_data(model, 200)
    with pytest.warns(ConvergenceWarning, match=r"\(max_seconds=0.001 stopped it\).*and max_seconds"):
        result = exact_llc_target(
            model,
            data,
            gaussian_nll,
            num_chains=4,
            burnin_steps=20,
            min_steps=16,
            tolerance=0,
            max_seconds=1e-3,
        )
    assert not result.converged and result.steps == 16  # the first window only: no doubling fits


def test_bad_settings_are_refused():
    model, data = fitted_regression(50)
    with pytest.raises(ValueError, match="num_chains"):
        exact_llc_target(model, data, "mse", num_chains=1)
    with pytest.raises(ValueError, match="max_steps"):
        exact_llc_target(model, data, "mse", burnin_steps=100, min_steps=100, max_steps=150)
    with pytest.raises(ValueError, match="target_acceptance"):
        exact_llc_target(model, data, "mse", target_acceptance=1.0)
    with pytest.raises(ValueError, match="max_seconds"):
        exact_llc_target(model, data, "mse", max_seconds=0)
