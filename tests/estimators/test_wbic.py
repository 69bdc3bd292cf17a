"""WBIC (Watanabe 2013) from the LLC's chains, against the closed form of a linear regression."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import slt
from slt.estimators.wbic import gaussian_nll as gaussian_nll_loss
from slt.oracles.exact import linear_regression_target
from slt.warnings import WBICWarning

pytestmark = pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")

SIGMA = 0.5
N, D = 1000, 3


def gaussian_nll(model, batch):
    """Mean negative log likelihood per sample of Gaussian noise with variance SIGMA**2, constant included."""
    x, y = batch
    residual = (y - model(x)).squeeze(-1)
    return (0.5 * math.log(2 * math.pi * SIGMA**2) + residual**2 / (2 * SIGMA**2)).mean()


@pytest.fixture(scope="module")
def fitted_regression():
    """A linear regression at its exact least-squares fit (float64), where the NLL is exactly quadratic."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-0.5], [0.25]], dtype=torch.float64)
    y = y + SIGMA * torch.randn(N, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, x, y


def closed_form_wbic(model, x, y, n_beta, localization, step_size):
    r"""E[n L_n(w)] over the Gaussian tempered posterior, and under SGLD's stationary law at ``step_size``.

    At the least-squares fit n L_n(w) = n L_n(w*) + (n/2) (w-w*)^T H (w-w*), H = X^T X / (n σ²), so
    E[n L_n] = n L_n(w*) + (n/nβ) T with T = (1/2) Σ nβ h_i/(nβ h_i + γ) (slt.oracles.exact). Full-batch
    SGLD at step ε has the stationary variance 1/(a(1 - εa/4)) per eigen-direction (a = nβ h + γ).
    """
    with torch.no_grad():
        base = N * gaussian_nll(model, (x, y)).item()
    target = linear_regression_target(x / SIGMA, n_beta, localization, loss="gaussian_nll")
    h = np.linalg.eigvalsh((x.T @ x).numpy() / (N * SIGMA**2))
    a = n_beta * h + localization
    sgld = 0.5 * np.sum(n_beta * h / (a * (1 - step_size * a / 4)))
    return base + N / n_beta * target, base + N / n_beta * sgld


RUN = dict(num_chains=8, num_draws=600, num_burnin=100, batch_size=N, progress=False)


@pytest.mark.parametrize("localization", [0.0, 20.0])
def test_wbic_matches_the_closed_form_of_a_gaussian_posterior(fitted_regression, localization):
    model, x, y = fitted_regression
    step = 5e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WBICWarning)
        result = slt.estimate_llc(
            model, (x, y), loss_fn=gaussian_nll, localization=localization, step_size=step, **RUN
        )
        wbic = result.wbic
    n_beta = N / math.log(N)
    exact, sgld = closed_form_wbic(model, x, y, n_beta, localization, step)
    if localization == 0:
        # at γ = 0 and nβ = n/log n the closed form is n L_n(ŵ) + (d/2) log n, the asymptotic form made exact
        assert exact == pytest.approx(N * result.init_loss + D / 2 * math.log(N), rel=1e-12)
    assert wbic.n == N and wbic.n_beta == pytest.approx(n_beta)
    # the normalizing constant is in the value: n L_n(ŵ) ≈ n (log(2πσ²)/2 + 1/2) for a well-specified model
    assert N * result.init_loss == pytest.approx(N * (0.5 * math.log(2 * math.pi * SIGMA**2) + 0.5), rel=0.05)
    # the sampler's own stationary law is matched within sampling error; Watanabe's value within that plus
    # SGLD's step bias (sgld - exact: +7.8% of the λ log n part at this step)
    print(f"γ={localization}: WBIC {wbic.value:.4f} ± {wbic.stderr:.4f}, exact {exact:.4f}, SGLD {sgld:.4f}")
    assert abs(wbic.value - sgld) < 4 * wbic.stderr
    assert abs(wbic.value - exact) < 4 * wbic.stderr + (sgld - exact)
    assert wbic.stderr < 0.08 * (exact - N * result.init_loss)  # the test can fail: the error bar is tight
    assert wbic.interval[0] <= wbic.value <= wbic.interval[1]


def test_wbic_is_n_times_the_mean_sampled_loss(fitted_regression):
    model, x, y = fitted_regression
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WBICWarning)
        for control_variate in (False, True):
            result = slt.estimate_llc(
                model,
                (x, y),
                loss_fn=gaussian_nll,
                localization=0.0,
                step_size=5e-5,
                control_variate=control_variate,
                num_chains=2,
                num_draws=50,
                num_burnin=10,
                batch_size=100,
                progress=False,
            )
            wbic = result.wbic
            assert wbic.value == pytest.approx(N * result.init_loss + math.log(N) * result.mean, rel=1e-12)
            assert wbic.per_chain == pytest.approx(N * result.init_loss + math.log(N) * result.per_chain)
            assert wbic.stderr == pytest.approx(math.log(N) * result.stderr)
            if not control_variate:  # without the control variate it is literally n × the mean minibatch loss
                assert wbic.value == pytest.approx(N * result.loss_trace.mean(), rel=1e-12)


def test_wbic_at_the_standard_setting_is_quiet_and_says_so(fitted_regression):
    model, x, y = fitted_regression
    result = slt.estimate_llc(
        model,
        (x, y),
        loss_fn=gaussian_nll,
        localization=0.0,
        step_size=2e-4,
        num_chains=2,
        num_draws=20,
        num_burnin=5,
        progress=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wbic = result.wbic
    assert wbic.standard and wbic.notes == ()
    assert "not standard" not in repr(wbic)


def test_localized_or_retempered_wbic_warns_and_records_why(fitted_regression):
    model, x, y = fitted_regression
    common = dict(
        loss_fn=gaussian_nll, step_size=2e-4, num_chains=2, num_draws=20, num_burnin=5, progress=False
    )
    localized = slt.estimate_llc(model, (x, y), localization=1.0, **common)
    with pytest.warns(WBICWarning, match=r"localized \(γ = 1\).*localization=0"):
        wbic = localized.wbic
    assert not wbic.standard and len(wbic.notes) == 1
    hot = slt.estimate_llc(model, (x, y), localization=0.0, n_beta=50.0, **common)
    with pytest.warns(WBICWarning, match=r"nβ = 50, not n/log n = 144\.7.*leave n_beta None"):
        wbic = hot.wbic
    assert wbic.notes and "not standard" in repr(wbic)
    # the value is still n × the mean sampled loss at that temperature
    assert wbic.value == pytest.approx(N * hot.init_loss + N / 50.0 * hot.mean, rel=1e-12)


def test_wbic_survives_the_json_round_trip(fitted_regression):
    model, x, y = fitted_regression
    result = slt.estimate_llc(
        model,
        (x, y),
        loss_fn=gaussian_nll,
        localization=0.0,
        step_size=2e-4,
        num_chains=2,
        num_draws=20,
        num_burnin=5,
        progress=False,
    )
    back = slt.LLCResult.from_dict(result.to_dict())
    assert back.wbic.value == result.wbic.value


def test_gaussian_nll_is_the_per_sample_nll_with_its_constant(fitted_regression):
    model, x, y = fitted_regression
    loss = gaussian_nll_loss(SIGMA)
    with torch.no_grad():
        assert loss(model, (x, y)).item() == pytest.approx(gaussian_nll(model, (x, y)).item(), rel=1e-12)
        two = nn.Linear(D, 2, bias=False).double()
        y2 = torch.cat([y, 2 * y], dim=1)
        expected = torch.distributions.Normal(two(x), SIGMA).log_prob(y2).sum(1).mean().neg()
        assert loss(two, (x, y2)).item() == pytest.approx(expected.item(), rel=1e-12)
    with pytest.raises(ValueError, match="noise_std must be a positive number, got 0"):
        gaussian_nll_loss(0)
    with pytest.raises(ValueError, match=r"outputs have shape \(1000, 1\) but the targets \(1000,\)"):
        loss(model, (x, y[:, 0]))
