"""estimate_dos: accuracy on potentials with a known density of states, API, non-intrusiveness, bad input."""

import json
import math
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slt
from slt import oracles
from slt.dos import DOSResult, OverlapWarning
from tests.conftest import Quadratic, gaussian_nll, quadratic_loss
from tests.estimators.test_llc import Recorder, _assert_same, _snapshot

# the short ladders used for API checks make too few replica round trips; that warning is tested on its
# own, and the accuracy tests below turn every slt warning into an error
pytestmark = [
    pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::slt.dos.FitWarning"),
]


class Product(nn.Module):
    """A bare parameter vector w; pair with ``product_loss`` for K(w) = prod_i w_i^2 (normal crossing)."""

    def __init__(self, d: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, dtype=torch.float64))

    def forward(self, x):
        return x


def product_loss(model, batch):
    return (model.w**2).prod()


#: The ladder of the toy potentials: 17 rungs, x = 1 to 1e8 (t from about 1e-14 to 1).
TOY_LADDER = np.geomspace(1.0, 1e8, 17)
#: Rows of dummy data (the toy losses ignore the batch).
DUMMY = torch.zeros(4, 1)
FAST = dict(
    temperatures=[10.0, 30.0, 100.0, 300.0],
    num_chains=4,
    num_draws=100,
    num_burnin=100,
    num_bootstrap=20,
    progress=False,
)


# -- Must show: accuracy against analytic densities ------------------------------------------


@pytest.mark.slow
def test_quadratic_slope_is_half_the_dimension_minus_one():
    """L = ||w||^2, d = 10, Gaussian localizer: v(t) ∝ t^(d/2 - 1) e^(-t/2), slope 4 at small t."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", slt.SLTWarning)
        # a single bowl: every rung equilibrates on its own (checked through x E_x[t] below), so the
        # replica round-trip heuristic (0 trips here: swap acceptance ~0.08 at this spacing) does not apply
        warnings.filterwarnings("ignore", "replicas made a median", slt.ConvergenceWarning)
        result = slt.estimate_dos(
            Quadratic(10),
            DUMMY,
            loss_fn=quadratic_loss,
            temperatures=TOY_LADDER,
            num_chains=16,
            num_draws=1000,
            progress=False,
        )
    assert result.fit_window[1] <= 1e-2
    assert result.in_fit_window.sum() >= 30  # the fit spans several decades of t
    assert abs(result.slope - 4.0) < 0.1
    assert result.slope_stderr < 0.05
    # the three-term fit finds no logarithmic correction and the same exponent
    assert abs(result.llc - 5.0) < 0.2
    assert abs(result.multiplicity - 1.0) < 1.0 + 2 * result.multiplicity_stderr
    # per-rung x E_x[t] -> d/2 (2x/(2x + 1) exactly, from the localizer)
    expected = 5.0 * 2 * TOY_LADDER / (2 * TOY_LADDER + 1)
    assert np.all(np.abs(result.rung_llc - expected) < 4 * result.rung_llc_stderr + 0.02)


@pytest.mark.slow
def test_two_term_normal_crossing_gives_lambda_one_half_and_multiplicity_two():
    """K = w1^2 w2^2 with the localizer as prior: λ = 1/2, m = 2 (v(t) = K0(√t)/(π√t))."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", slt.SLTWarning)
        result = slt.estimate_dos(
            Product(2),
            DUMMY,
            loss_fn=product_loss,
            temperatures=TOY_LADDER,
            num_chains=32,
            num_draws=2000,
            progress=False,
        )
    assert abs(result.llc - 0.5) < 0.05
    assert abs(result.multiplicity - 2.0) < 0.3
    # the error bars are honest: the truth lies within about three of them
    assert abs(result.llc - 0.5) < 3 * result.llc_stderr + 0.01
    # the sampler is exact: x E_x[t] matches quadrature of the exact density (0.3542 at x = 100,
    # 0.4123 at x = 1e4)
    rung = {float(x): (v, s) for x, v, s in zip(result.temperatures, result.rung_llc, result.rung_llc_stderr)}
    for x, exact in ((100.0, 0.3542), (1e4, 0.4123)):
        value, stderr = rung[x]
        assert abs(value - exact) < 4 * stderr


@pytest.mark.slow
def test_three_term_normal_crossing_gives_multiplicity_three():
    """K = w1^2 w2^2 w3^2: m = 3 (the three-term form itself gives about 2.7 on the exact density)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", slt.SLTWarning)
        result = slt.estimate_dos(
            Product(3),
            DUMMY,
            loss_fn=product_loss,
            temperatures=TOY_LADDER,
            num_chains=32,
            num_draws=2000,
            progress=False,
        )
    assert abs(result.multiplicity - 3.0) < 0.5
    assert abs(result.llc - 0.5) < 0.05


@pytest.mark.slow
def test_reduced_rank_regression_matches_aoyagi_and_estimate_llc():
    """y = BAx with M = 4, H = 3, N = 4, true rank 1, at a most singular true parameter: λ = 6, m = 1.

    Noise-free data make t = L_n(w) - L_n(w*) = K_n(w) >= 0 exactly. The ladder reaches t ~ 1e-6; the
    LLC is estimated at the ladder's centre with the automatic step and length (5.85 ± 0.12 against the
    ladder's 5.80 ± 0.05 on an AMD EPYC; a given 4,000 + 4,000 steps at ε = 1e-5, τ = 0.08, gave 5.34 ±
    0.18 there, the chains not yet relaxed).
    """
    lam, mult = oracles.rrr_lambda(4, 3, 4, 1)
    assert (lam, mult) == (6.0, 1)
    model = oracles.deep_linear_network([4, 3, 4], rank=1, seed=0, dtype=torch.float64)
    x, y = oracles.linear_regression_data(model, 100, noise=0.0, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", slt.SLTWarning)
        dos = slt.estimate_dos(
            model,
            (x, y),
            loss_fn=gaussian_nll,
            temperatures=np.geomspace(30, 3e5, 16),
            num_chains=8,
            num_draws=2000,
            progress=False,
        )
        llc = slt.estimate_llc(
            model,
            (x, y),
            loss_fn=gaussian_nll,
            n_beta=dos.settings.reference_temperature,
            num_chains=8,
            progress=False,
        )
    assert np.median(dos.round_trips) >= 1
    assert abs(dos.llc - lam) < 0.15 * lam
    assert abs(dos.llc - llc.mean) < 2 * math.hypot(dos.llc_stderr, llc.stderr)
    assert dos.fit_window[1] / dos.fit_window[0] > 100  # the fit spans at least two decades of t


@pytest.mark.slow
def test_cumulative_volume_is_absolute_with_a_rung_at_temperature_zero():
    """With x = 0 on the ladder the weights are normalized by the localizer itself: for L = ||w||^2 in
    d = 4 with γ = 1, V(ε) = P(χ²_4 < ε), over ten decades of V."""
    from scipy.stats import chi2

    result = slt.estimate_dos(
        Quadratic(4),
        DUMMY,
        loss_fn=quadratic_loss,
        temperatures=[0, 1, 3, 10, 30, 100, 300, 1000],
        num_chains=8,
        num_draws=500,
        num_bootstrap=0,
        progress=False,
    )
    upper = result.bin_edges[1:]
    check = (upper >= 2e-4) & (upper <= 20)
    assert check.sum() >= 40
    exact = np.log(chi2.cdf(upper[check], 4))
    assert np.max(np.abs(result.log_volume[check] - exact)) < 0.2


# -- API ---------------------------------------------------------------------------------------


def test_result_holds_curve_bands_volume_fit_and_per_rung_table():
    result = slt.estimate_dos(Quadratic(4), DUMMY, loss_fn=quadratic_loss, **FAST)
    bins = len(result.t)
    assert result.bin_edges.shape == (bins + 1,)
    assert np.allclose(result.t, np.sqrt(result.bin_edges[1:] * result.bin_edges[:-1]))
    for name in ("log_density", "log_density_lower", "log_density_upper", "log_volume", "bin_counts"):
        assert getattr(result, name).shape == (bins,), name
    ok = np.isfinite(result.log_density) & np.isfinite(result.log_density_lower)
    assert ok.sum() >= 5
    assert np.all(result.log_density_lower[ok] <= result.log_density_upper[ok])
    # cumulative volume: non-decreasing, ends at the total reweighted mass (1)
    assert np.all(np.diff(result.log_volume) >= -1e-12)
    assert result.log_volume[-1] == pytest.approx(0.0, abs=1e-9)
    assert result.samples.shape == (4, 4, 100)
    assert result.bin_counts.sum() == np.isfinite(result.samples).sum()
    assert result.temperatures.tolist() == FAST["temperatures"]
    assert result.rung_llc == pytest.approx(result.temperatures * result.samples.mean(axis=(1, 2)))
    assert result.acceptance.shape == (4,) and np.all((result.acceptance > 0.2) & (result.acceptance < 0.95))
    assert result.swap_acceptance.shape == (3,) and np.all(result.swap_acceptance > 0)
    assert result.overlap.shape == (4, 4) and np.allclose(result.overlap.sum(1), 1.0)
    assert result.settings.sampler == "mala" and result.settings.exact_loss
    lo, hi = result.fit_window
    assert lo < hi and result.in_fit_window.sum() >= 3
    row = result.summary()
    assert row.shape[0] == 1 and float(row["llc"].iloc[0]) == result.llc
    table = result.rung_table()
    assert list(table["temperature"]) == FAST["temperatures"]
    assert "llc=" in repr(result)


def test_step_sizes_follow_the_documented_rule_without_adaptation():
    result = slt.estimate_dos(
        Quadratic(4), DUMMY, loss_fn=quadratic_loss, step_size=1e-3, adapt_step_size=False, **FAST
    )
    ref = result.settings.reference_temperature
    expected = np.minimum(1e-3 * ref / result.temperatures, 0.1 / result.settings.localization)
    assert result.step_sizes == pytest.approx(expected)
    assert slt.dos.rung_step_sizes(1e-3, 100.0, np.array([0.0, 10.0, 100.0, 1e3]), 1.0) == pytest.approx(
        [0.1, 0.01, 1e-3, 1e-4]
    )


def test_default_ladder_is_geometric_around_n_over_log_n():
    x = slt.dos.default_temperatures(1000)
    n_beta = 1000 / math.log(1000)
    assert len(x) == 12
    assert x[0] == pytest.approx(n_beta / 30) and x[-1] == pytest.approx(30 * n_beta)
    assert np.allclose(np.diff(np.log(x)), np.log(900) / 11)


@pytest.mark.filterwarnings("ignore::slt.SLTWarning")
def test_defaults_just_work_on_a_trained_network(tiny_regression):
    model, x, y = tiny_regression
    result = slt.estimate_dos(model, (x, y), loss_fn="mse", num_draws=100, num_bootstrap=10, progress=False)
    assert len(result.temperatures) == 12
    assert result.settings.temperatures_source.startswith("geometric")
    assert result.settings.sampler == "mala"
    assert np.isfinite(result.log_density).sum() >= 5
    assert np.all(np.isfinite(result.rung_llc))


@pytest.mark.parametrize("mode", ["sequential", "vectorized"])
def test_same_seed_same_numbers_and_other_seeds_differ(mode):
    kw = dict(FAST, chain_mode=mode)
    a = slt.estimate_dos(Quadratic(3), DUMMY, loss_fn=quadratic_loss, seed=5, **kw)
    b = slt.estimate_dos(Quadratic(3), DUMMY, loss_fn=quadratic_loss, seed=5, **kw)
    c = slt.estimate_dos(Quadratic(3), DUMMY, loss_fn=quadratic_loss, seed=6, **kw)
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.log_density, b.log_density)
    assert a.llc == b.llc or (math.isnan(a.llc) and math.isnan(b.llc))
    assert not np.array_equal(a.samples, c.samples)
    assert a.settings.chain_mode == mode


def test_sequential_and_vectorized_chains_sample_the_same_distribution():
    kw = dict(FAST, num_draws=400)
    a = slt.estimate_dos(Quadratic(3), DUMMY, loss_fn=quadratic_loss, chain_mode="sequential", **kw)
    b = slt.estimate_dos(Quadratic(3), DUMMY, loss_fn=quadratic_loss, chain_mode="vectorized", **kw)
    expected = 1.5 * 2 * a.temperatures / (2 * a.temperatures + 1)
    for r in (a, b):
        assert np.all(np.abs(r.rung_llc - expected) < 5 * r.rung_llc_stderr + 0.05)


@pytest.mark.filterwarnings("ignore::slt.SLTWarning")
def test_sgld_ladder_with_exact_and_control_variate_losses(tiny_regression):
    model, x, y = tiny_regression
    kw = dict(FAST, sampler="sgld", step_size=1e-4, batch_size=50)
    exact = slt.estimate_dos(model, (x, y), loss_fn="mse", exact_loss=True, **kw)
    paired = slt.estimate_dos(model, (x, y), loss_fn="mse", exact_loss=False, **kw)
    assert exact.settings.sampler == "sgld" and exact.settings.exact_loss
    assert not paired.settings.exact_loss and paired.settings.batch_size == 50
    assert np.all(np.isnan(exact.acceptance)) and np.all(np.isnan(exact.swap_acceptance))
    # the same chains (same seed): the exact loss differs from the minibatch estimate only by noise
    assert np.corrcoef(exact.samples.ravel(), paired.samples.ravel())[0, 1] > 0.5


def test_json_round_trip_refit_and_plot(tmp_path):
    result = slt.estimate_dos(Quadratic(4), DUMMY, loss_fn=quadratic_loss, **FAST)
    back = DOSResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.settings == result.settings
    assert back.fit_window == result.fit_window and back.fit_form == result.fit_form
    for name in ("t", "log_density", "log_density_lower", "samples", "overlap", "rung_llc", "step_sizes"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name), err_msg=name)
    assert back.llc == result.llc or (math.isnan(back.llc) and math.isnan(result.llc))
    path = tmp_path / "dos.json"
    result.to_json(path)
    assert DOSResult.from_json(path).multiplicity == pytest.approx(result.multiplicity, nan_ok=True)
    refit = back.refit(fit_form="power", fit_window=(result.t[2], result.t[-3]))
    assert refit.fit_form == "power" and refit.multiplicity == 1.0
    assert refit.fit_window == (result.t[2], result.t[-3])
    np.testing.assert_array_equal(refit.log_density, result.log_density)
    fig = result.plot()
    fig.savefig(tmp_path / "dos.png")
    assert (tmp_path / "dos.png").stat().st_size > 5000


# -- warnings ----------------------------------------------------------------------------------


def quadratic_dos_warning(category, dim, temperatures, num_draws, **options):
    """estimate_dos on ||w||^2 in ``dim`` dimensions (λ = dim/2), and the one message of ``category``."""
    with warnings.catch_warnings(record=True) as found:
        warnings.simplefilter("always")
        result = slt.estimate_dos(
            Quadratic(dim),
            DUMMY,
            loss_fn=quadratic_loss,
            temperatures=temperatures,
            num_chains=4,
            num_draws=num_draws,
            num_bootstrap=0,
            progress=False,
            **options,
        )
    (message,) = [str(w.message) for w in found if w.category is category]
    return result, message


@pytest.mark.filterwarnings("ignore::slt.dos.FitWarning")
def test_the_overlap_warning_says_how_many_rungs_the_span_needs():
    # λ = 5: neighbouring rungs overlap at a ratio of about exp(1.5/√5) ≈ 1.96, so the three decades
    # from 10 to 1e4 need ⌈ln(1000)·√λ/1.5⌉ + 1 ≈ 12 rungs, not 3
    result, message = quadratic_dos_warning(OverlapWarning, 10, [10.0, 100.0, 1e4], num_draws=200)
    lam = result.rung_llc
    assert lam == pytest.approx([5.0, 5.0, 5.0], rel=0.2)
    # each gap split so that ln(ratio)·√λ ≤ 1.5, λ the larger of the pair's: 10→100 and 100→1e4
    pair = np.maximum(lam[:-1], lam[1:])
    needed = sum(math.ceil(math.log(r) * math.sqrt(p) / 1.5) for r, p in zip((10.0, 100.0), pair)) + 1
    assert 11 <= needed <= 13
    assert f"x·E[t] runs from {lam.min():.3g} to {lam.max():.3g}" in message
    assert f"about {needed} rungs over this span" in message


def test_a_log_fit_without_a_ladder_cold_enough_says_how_cold_or_to_fit_the_power_form():
    # λ = 20 sampled down to x = 1000 only: t ≈ 20/x stays near 2e-2, never a decade below the 1e-2
    # under which the log form holds (a 243-parameter classifier near zero loss did this at defaults)
    ladder = np.geomspace(10, 1000, 9)
    result, message = quadratic_dos_warning(slt.dos.FitWarning, 40, ladder, num_draws=300, fit_form="log")
    assert math.isnan(result.llc)
    coldest = float(result.rung_llc[-1])
    assert "too few populated bins" in message and "The coldest rung (x = 1000) samples t ≈ 0.0" in message
    assert "on average, above the 0.01 under which the 'log' form's ln(-ln t) term holds" in message
    assert f"reaching t = 0.0001 takes x ≈ {coldest / 1e-4:.3g}" in message
    assert "result.refit(fit_form='power')" in message
    assert coldest == pytest.approx(20.0, rel=0.15)
    assert result.refit(fit_form="power").llc == pytest.approx(20.0, rel=0.15)
    # by default the power form is reported, with the log form's failure and the way to reach it
    result, message = quadratic_dos_warning(slt.dos.FitWarning, 40, ladder, num_draws=300)
    assert result.fit_form == "power" and result.llc == pytest.approx(20.0, rel=0.15)
    assert message.startswith(
        "the 'log' form (λ with its multiplicity m) could not be read from this ladder: "
    )
    assert "too few populated bins" in message and f"λ = {result.llc:.4g}" in message
    assert "rerun estimate_dos with colder temperatures" in message
    assert f"reaching t = 0.0001 takes x ≈ {float(result.rung_llc[-1]) / 1e-4:.3g}" in message
    # a refit keeps "auto" (decided afresh, with its warning); a form asked for is fitted as asked
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = result.refit()
        log = result.refit(fit_form="log")
    assert again.fit_form == "power" and again.settings.fit_form == "auto" and again.llc == result.llc
    assert again.problems == result.problems
    assert log.fit_form == "log" and log.settings.fit_form == "log" and math.isnan(log.llc)
    assert next(str(w.message) for w in caught if w.category is slt.dos.FitWarning) == message


@pytest.mark.filterwarnings("ignore::slt.dos.FitWarning")
def test_rungs_that_barely_overlap_warn():
    with pytest.warns(OverlapWarning, match=r"overlap too little.*10-1e\+04"):
        slt.estimate_dos(
            Quadratic(10),
            DUMMY,
            loss_fn=quadratic_loss,
            temperatures=[10.0, 1e4],
            num_chains=4,
            num_draws=200,
            num_bootstrap=0,
            progress=False,
        )


def test_well_spaced_long_enough_ladder_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = slt.estimate_dos(
            Quadratic(4),
            DUMMY,
            loss_fn=quadratic_loss,
            temperatures=np.geomspace(10, 1e4, 8),
            num_chains=4,
            num_draws=800,
            num_bootstrap=30,
            progress=False,
        )
    assert np.median(result.round_trips) >= 1


def test_narrow_fit_window_warns_that_lambda_and_m_are_not_separable():
    with pytest.warns(slt.dos.FitWarning, match="too few to tell λ from m"):
        result = slt.estimate_dos(Quadratic(4), DUMMY, loss_fn=quadratic_loss, fit_form="log", **FAST)
    assert np.log10(result.fit_window[1] / result.fit_window[0]) < 2
    # by default the power form's slope is reported instead, with the same reason (λ = 2 here)
    with pytest.warns(
        slt.dos.FitWarning, match="too few to tell λ from m.*Reported instead: the 'power' form"
    ):
        auto = slt.estimate_dos(Quadratic(4), DUMMY, loss_fn=quadratic_loss, **FAST)
    assert auto.fit_form == "power" and auto.multiplicity == 1.0
    assert auto.llc == pytest.approx(2.0, rel=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error", slt.dos.FitWarning)
        slt.estimate_dos(Quadratic(4), DUMMY, loss_fn=quadratic_loss, fit_form="power", **FAST)


def test_too_few_replica_round_trips_warn():
    with pytest.warns(slt.ConvergenceWarning, match=r"median of 0 round trips"):
        result = slt.estimate_dos(
            Quadratic(4),
            DUMMY,
            loss_fn=quadratic_loss,
            temperatures=np.geomspace(10, 1e4, 10),
            num_chains=4,
            num_draws=30,
            num_burnin=0,
            num_bootstrap=0,
            progress=False,
        )
    assert result.round_trips.shape == (4,) and np.all(result.round_trips == 0)


@pytest.mark.filterwarnings("ignore::slt.dos.FitWarning")
def test_weights_that_are_not_a_minimum_warn():
    model = Quadratic(3)
    with torch.no_grad():
        model.w.fill_(0.3)
    with pytest.warns(slt.NotAMinimumWarning, match="lower loss than the trained weights"):
        result = slt.estimate_dos(model, DUMMY, loss_fn=quadratic_loss, **FAST)
    assert result.nonpositive_share > 0.5
    model.w.data.fill_(3.0)
    with pytest.raises(ValueError, match=r"no sample has a loss above the loss at the trained weights"):
        slt.estimate_dos(model, DUMMY, loss_fn=quadratic_loss, **FAST)


class Cliff(nn.Module):
    """A quadratic bowl whose loss is NaN beyond w = 0.3: unadjusted chains that wander there diverge."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x):
        return x


def cliff_loss(model, batch):
    w = model.w[0]
    return torch.where(w > 0.3, torch.tensor(float("nan"), dtype=w.dtype), w**2)


def test_diverging_sgld_chains_are_reported_and_left_out():
    kw = dict(
        temperatures=[1.0, 2.0],
        localization=0.0,
        sampler="sgld",
        step_size=2e-3,
        num_chains=8,
        num_draws=150,
        num_burnin=50,
        num_bootstrap=0,
        progress=False,
    )
    with pytest.warns(slt.DivergenceWarning, match="chains diverged"):
        result = slt.estimate_dos(Cliff(), DUMMY, loss_fn=cliff_loss, **kw)
    assert np.isnan(result.samples).any() and np.isfinite(result.samples).any()
    assert np.all(np.isfinite(result.rung_llc))
    with pytest.raises(slt.ChainDivergenceError, match="all 8 chains of the rung at temperature"):
        slt.estimate_dos(Cliff(), DUMMY, loss_fn=cliff_loss, **dict(kw, step_size=50.0))


def test_mala_rejects_the_non_finite_region_instead_of_diverging():
    with warnings.catch_warnings():
        warnings.simplefilter("error", slt.DivergenceWarning)
        result = slt.estimate_dos(
            Cliff(),
            DUMMY,
            loss_fn=cliff_loss,
            temperatures=[0.3, 1.0, 3.0],
            num_chains=8,
            num_draws=300,
            num_bootstrap=0,
            progress=False,
        )
    assert np.all(np.isfinite(result.samples))  # proposals into the NaN region are simply rejected
    assert np.all(result.acceptance > 0.3)


# -- non-intrusiveness -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::slt.SLTWarning")
@pytest.mark.parametrize("sampler", ["mala", "sgld"])
def test_estimating_leaves_model_optimizer_and_global_rng_untouched(sampler):
    torch.manual_seed(0)
    np.random.seed(1)
    random.seed(2)
    model = Recorder()
    model.train()
    model.bn.eval()
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    before = _snapshot(model, optimizer)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    kw = dict(FAST, sampler=sampler, num_draws=30, num_burnin=10)
    slt.estimate_dos(model, loader, loss_fn="mse", **kw)
    slt.estimate_dos(model, (x, y), loss_fn="mse", **kw)
    _assert_same(before, _snapshot(model, optimizer))


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("temperatures", [100.0], "at least two inverse temperatures"),
        ("temperatures", [10.0, -1.0], "finite and >= 0"),
        ("temperatures", [10.0, 10.0], "must be distinct"),
        ("temperatures", [0.0, 0.0], "must be distinct"),
        ("num_rungs", 1, "num_rungs must be an integer >= 2"),
        ("fit_form", "cubic", "fit_form must be one of"),
        ("fit_window", (1e-2, 1e-4), "0 < t_low < t_high"),
        ("sampler", "hmc", "unknown sampler 'hmc'"),
        ("num_bootstrap", -1, "num_bootstrap must be an integer >= 0"),
        ("step_size", 0.0, "step_size must be a positive number"),
        ("num_chains", 0, "num_chains must be an integer >= 1"),
        ("localization", -1.0, "localization must be >= 0"),
    ],
)
def test_out_of_range_settings_are_rejected(setting, value, message):
    kwargs = dict(FAST)
    kwargs[setting] = value
    with pytest.raises(ValueError, match=message):
        slt.estimate_dos(Quadratic(2), DUMMY, loss_fn=quadratic_loss, **kwargs)


def test_a_window_up_to_t_one_is_refused_by_the_log_forms_and_fitted_by_the_power_form():
    for form in ("log", "log2"):
        with pytest.raises(ValueError, match="ln\\(-ln t\\) is undefined"):
            slt.estimate_dos(
                Quadratic(2), DUMMY, loss_fn=quadratic_loss, fit_window=(1e-4, 2.0), fit_form=form
            )
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = slt.estimate_dos(Quadratic(2), DUMMY, loss_fn=quadratic_loss, fit_window=(1e-4, 2.0), **FAST)
    assert result.fit_form == "power" and result.settings.fit_form == "auto"


def test_temperature_zero_needs_a_localizer():
    with pytest.raises(ValueError, match="temperature 0 needs localization > 0"):
        slt.estimate_dos(
            Quadratic(2),
            DUMMY,
            loss_fn=quadratic_loss,
            **dict(FAST, temperatures=[0.0, 10.0]),
            localization=0.0,
        )


def test_data_and_model_errors_match_estimate_llc(tiny_regression):
    model, x, y = tiny_regression
    with pytest.raises(ValueError, match="data is empty"):
        slt.estimate_dos(model, (torch.zeros(0, 3), torch.zeros(0, 1)), loss_fn="mse", **FAST)
    with pytest.raises(ValueError, match=r"scalar mean loss.*\.mean\(\)"):
        slt.estimate_dos(model, (x, y), loss_fn=lambda m, b: (m(b[0]) - b[1]) ** 2, **FAST)
    with pytest.raises(ValueError, match="no trainable parameters"):
        slt.estimate_dos(nn.Linear(3, 1).requires_grad_(False), (x, y), loss_fn="mse", **FAST)
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        slt.estimate_dos(model, (x, y), loss_fn="mse", mask=["decoder"], **FAST)
    bad = y.clone()
    bad[0] = float("nan")
    with pytest.raises(ValueError, match="loss at the trained weights is not finite"):
        slt.estimate_dos(model, (x, bad), loss_fn="mse", **FAST)


def test_mask_restricts_sampling(tiny_regression):
    model, x, y = tiny_regression
    result = slt.estimate_dos(model, (x, y), loss_fn="mse", mask=["2"], **FAST)
    assert result.settings.num_params == 9
