"""The curve, window and fit of slt.dos.analysis on exact densities and exact samples."""

import numpy as np
import pytest
from scipy.special import k0

from slt.dos.analysis import analyze, default_fit_window, fit_log_density
from tests.dos.test_mbar import quadratic_samples


def test_fit_recovers_lambda_and_m_from_the_exact_normal_crossing_density():
    """K = w1^2 w2^2 under N(0, I): v(t) = K0(sqrt t) / (pi sqrt t), λ = 1/2, m = 2."""
    t = np.geomspace(1e-14, 1e-2, 121)
    log_v = np.log(k0(np.sqrt(t)) / (np.pi * np.sqrt(t)))
    ones = np.ones_like(t)
    three = fit_log_density(t, log_v, ones, "log")
    assert three.llc == pytest.approx(0.4986, abs=1e-3)
    assert three.multiplicity == pytest.approx(1.960, abs=0.01)
    four = fit_log_density(t, log_v, ones, "log2")  # the next lower-order term removes most of the bias
    assert four.llc == pytest.approx(0.5, abs=1e-3) and four.multiplicity == pytest.approx(2.0, abs=0.02)
    power = fit_log_density(t, log_v, ones, "power")
    assert power.multiplicity == 1.0 and power.llc < 0.45  # ignoring the log term biases λ


def test_multiplicity_below_one_is_refitted_with_m_equal_one():
    t = np.geomspace(1e-4, 1e-2, 21)
    log_v = 4.0 * np.log(t) - 0.3 * np.log(-np.log(t))  # a free fit would give m = 0.7
    fit = fit_log_density(t, log_v, np.ones_like(t), "log")
    assert fit.multiplicity == 1.0
    assert fit.coefficients[2] == 0.0
    assert fit.llc == pytest.approx(fit_log_density(t, log_v, np.ones_like(t), "power").llc)


def test_too_few_bins_give_nan():
    fit = fit_log_density(np.array([1e-3, 2e-3]), np.array([0.0, 1.0]), np.ones(2), "log")
    assert np.isnan(fit.llc) and np.isnan(fit.multiplicity)


def test_analysis_of_exact_quadratic_samples_gives_slope_d_over_2_minus_1():
    x = np.geomspace(10, 1e6, 11)
    t = quadratic_samples(x, d=6, draws=4000, seed=4).reshape(len(x), 8, 500)
    a = analyze(t, x, num_bootstrap=30)
    assert a.slope == pytest.approx(2.0, abs=0.05)
    assert a.fit.llc == pytest.approx(3.0, abs=0.1)
    assert a.fit_window[1] <= 1e-2
    ok = np.isfinite(a.log_density_lower)
    assert np.all(a.log_density_lower[ok] <= a.log_density[ok] + 1e-12)
    assert np.all(a.log_density[ok] <= a.log_density_upper[ok] + 1e-12)
    assert 0 < a.llc_stderr < 0.1


def test_default_window_stops_at_the_hottest_rungs_mean_and_at_sparse_bins():
    x = np.array([10.0, 100.0])
    t = np.stack([np.full((2, 5), 0.05), np.full((2, 5), 1e-3)])
    centres = np.geomspace(1e-5, 1e-1, 13)
    counts = np.array([0, 0, 30, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200])
    lo, hi = default_fit_window(t, x, centres, counts, min_count=20)
    assert hi == 1e-2  # the hottest rung's mean (0.05) is capped at 1e-2
    assert lo == pytest.approx(centres[3])  # bins below 100 samples are left out when enough remain


def test_power_form_window_reaches_the_hottest_rungs_mean_without_the_small_t_cap():
    x = np.array([10.0, 100.0])
    t = np.stack([np.full((2, 5), 0.05), np.full((2, 5), 1e-3)])
    centres = np.geomspace(1e-5, 1e-1, 13)
    counts = np.full(13, 200)
    lo, hi = default_fit_window(t, x, centres, counts, min_count=20, form="power")
    assert hi == pytest.approx(0.05)
    assert lo == pytest.approx(centres[0])
    # a trained-network-like ladder: t ~ lambda / x far above 1e-2; the power fit reads the slope there
    rng = np.random.default_rng(0)
    x = np.geomspace(40, 400, 12)
    lam = 30.0
    t = rng.gamma(lam, 1.0 / x[:, None, None], size=(12, 4, 400))  # density t^(lam-1) e^{-x t}
    a = analyze(t, x, fit_form="power", num_bootstrap=0)
    assert a.fit_window[1] > 0.5
    assert a.fit.llc == pytest.approx(lam, rel=0.1)
