"""The automatic length: chains doubled until the estimate holds, a budget, and an honest interval."""

import math
import re
import warnings

import numpy as np
import pytest
import torch

import slt
from slt.estimators.length import LengthPolicy, run_until_converged
from slt.estimators.llc import llc_interval
from slt.estimators.llc_result import LLCChecks
from slt.oracles import deep_linear_network, linear_regression_data
from slt.samplers import get_kernel
from slt.sampling import PosteriorSampler
from slt.sampling.driver import stack_states, unstack_state
from slt.warnings import ConvergenceWarning
from tests.conftest import Quadratic, gaussian_nll, quadratic_loss

DUMMY = (torch.zeros(64, 1),)


def quadratic_target(d: int, n_beta: float, gamma: float) -> float:
    """Exact nβ E[L] for L = |w|^2 under exp(-nβ L - γ|w|^2/2): each coordinate has variance 1/(2nβ + γ)."""
    return n_beta * d / (2 * n_beta + gamma)


def test_default_length_runs_until_two_doublings_agree_on_a_quadratic():
    n_beta = 100.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = slt.estimate_llc(
            Quadratic(6), DUMMY, loss_fn=quadratic_loss, n_beta=n_beta, step_size=1e-3, progress=False
        )
    s, c = result.settings, result.checks
    assert s.length_source == "auto" and s.converged is True
    # doubling segments, the last one gives the draws and everything before is burn-in
    assert c.segment_steps[1:] == [2 * k for k in c.segment_steps[:-1]]
    assert s.num_draws == c.segment_steps[-1] and s.num_burnin == sum(c.segment_steps[:-1])
    assert s.num_chains == 16  # a tiny model: 16 stacked chains by default
    assert result.burnin_loss_trace.shape == (16, s.num_burnin)
    assert s.simulated_time == pytest.approx(1e-3 * sum(c.segment_steps))
    assert s.simulated_time >= 0.5  # the floor at γ = 1
    exact = quadratic_target(6, n_beta, 1.0)
    # SGLD at step ε holds each coordinate's variance at 1 / (h (1 - εh/4)), h = 2nβ + γ: +5.3% here
    at_this_step = exact / (1 - 1e-3 * (2 * n_beta + 1.0) / 4)
    assert result.mean == pytest.approx(at_this_step, rel=0.05)
    low, high = result.interval
    assert low < result.mean < high and low <= at_this_step <= high and low < 1.01 * exact


def test_a_budget_that_stops_the_chains_early_warns_with_the_simulated_time():
    model = deep_linear_network([5, 5, 5, 5, 5], 1)
    x, y = linear_regression_data(model, 2000)
    # on the full data (the default batch here) chains stopped this early also split R-hat: that warning
    # may come too
    with pytest.warns(ConvergenceWarning) as record:
        result = slt.estimate_llc(model, (x, y), loss_fn=gaussian_nll, max_steps=1500, progress=False)
    assert any(re.search("had not settled.*simulated time", str(w.message)) for w in record)
    assert any("max_steps=1500" in str(w.message) for w in record)
    assert result.settings.converged is False and result.settings.max_steps == 1500
    assert sum(result.checks.segment_steps) <= 1500
    assert any("had not settled" in str(p) for p in result.problems)
    # still rising: the interval reaches above the estimate by at least the last change
    assert result.checks.last_change > 0
    assert result.interval[1] >= result.mean + result.checks.last_change


def test_a_time_budget_stops_the_chains():
    model = deep_linear_network([5, 5, 5, 5, 5], 1)
    x, y = linear_regression_data(model, 2000)
    # a budget this short can also stop a run right after a step resize, where the halves of the draws
    # still rise: that warning may come too
    with pytest.warns(ConvergenceWarning) as record:
        result = slt.estimate_llc(model, (x, y), loss_fn=gaussian_nll, max_seconds=0.5, progress=False)
    assert any("max_seconds=0.5" in str(w.message) for w in record)
    assert result.settings.converged is False
    assert result.seconds < 5


def test_given_num_draws_keeps_the_fixed_length_and_refuses_a_lone_num_burnin():
    result = slt.estimate_llc(
        Quadratic(3),
        DUMMY,
        loss_fn=quadratic_loss,
        n_beta=100.0,
        step_size=1e-3,
        num_draws=1000,
        progress=False,
    )
    assert result.settings.length_source == "given" and result.settings.converged is None
    assert result.settings.num_burnin == 1000 and result.trace.shape == (result.settings.num_chains, 1000)
    with pytest.raises(ValueError, match="num_burnin goes with num_draws"):
        slt.estimate_llc(Quadratic(3), DUMMY, loss_fn=quadratic_loss, num_burnin=10, progress=False)


def test_a_step_too_large_for_where_the_chains_go_is_shrunk_after_the_first_segment():
    posterior = PosteriorSampler(Quadratic(20), DUMMY, quadratic_loss)
    kernel = get_kernel("sgld").bind()
    # at nβ = 1000 a step of 4e-4 predicts (εnβ²E|g|²/8)/λ ≈ 20% bias on |w|^2, four times the 5% target
    run, report = run_until_converged(
        posterior,
        kernel=kernel,
        n_beta=1000.0,
        localization=1.0,
        step_size=4e-4,
        num_chains=4,
        seed=0,
        policy=LengthPolicy(first_segment=200, max_steps=6400),
    )
    assert report.step_history and "step ->" in report.step_history[0]
    assert report.step_size < 4e-4
    # the draws come from the resized step's segments only
    assert run.loss_trace.shape[1] == report.segment_steps[-1]


def test_chains_continue_from_given_states_in_both_modes():
    posterior = PosteriorSampler(Quadratic(3), DUMMY, quadratic_loss)
    start = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    kernel = get_kernel("sgld").bind()
    states = unstack_state(kernel.init(start), 2)
    assert torch.equal(stack_states(states).position, start)
    for mode in ("sequential", "vectorized"):
        run = posterior.run(
            n_beta=10.0,
            localization=1.0,
            step_size=1e-6,
            num_chains=2,
            num_draws=1,
            chain_mode=mode,
            initial_states=states,
        )
        np.testing.assert_allclose(run.loss_trace[:, 0], [1.0, 4.0])  # L = |w|^2 at the given positions
        assert len(run.final_states) == 2
    with pytest.raises(ValueError, match="1 states for 2 chains"):
        posterior.run(n_beta=10.0, localization=1.0, step_size=1e-6, num_chains=2, initial_states=states[:1])


def test_interval_adds_sampling_error_drift_and_step_bias():
    checks = LLCChecks(segment_estimates=[8.0, 10.0], bias_indicator=0.05)
    low, high = llc_interval(10.0, 0.5, 4, checks)
    t = 3.1824463  # Student's t, 3 degrees of freedom, 97.5%
    assert high == pytest.approx(10 + t * 0.5 + 2.0)  # still rising by 2: the target may be higher
    assert low == pytest.approx(10 - t * 0.5 - 0.5)  # a 5% predicted step bias: it may be lower
    # the sampler's own first-order bias where known (the minibatch share for Leimkuhler-Matthews noise)
    low, _ = llc_interval(10.0, 0.5, 4, checks, step_bias=0.02)
    assert low == pytest.approx(10 - t * 0.5 - 0.2)
    falling = LLCChecks(segment_estimates=[12.0, 10.0])
    low, high = llc_interval(10.0, 0.5, 4, falling)
    assert low == pytest.approx(10 - t * 0.5 - 2.0) and high == pytest.approx(10 + t * 0.5)
    assert all(math.isnan(v) for v in llc_interval(10.0, float("nan"), 1, checks))


def test_resizing_the_step_never_runs_past_the_budget():
    posterior = PosteriorSampler(Quadratic(20), DUMMY, quadratic_loss)
    # a target bias far below what any step reaches here makes every segment ask for a smaller step
    run, report = run_until_converged(
        posterior,
        kernel=get_kernel("sgld").bind(),
        n_beta=1000.0,
        localization=1.0,
        step_size=4e-4,
        num_chains=4,
        seed=0,
        policy=LengthPolicy(first_segment=200, max_steps=600),
        target_bias=1e-4,
    )
    assert len(report.step_history) >= 2
    assert sum(report.segment_steps) <= 600
    assert not report.converged and report.reason == "max_steps=600 reached"
    assert run.loss_trace.shape[1] == report.segment_steps[-1]


def test_sgnht_defaults_size_the_step_for_its_minibatch_noise_and_land_on_the_exact_target():
    # deep linear network 10-5-10 (rank 2, n = 1e4, batch 1086; exact 24.57 by full-batch MALA). The
    # rule for SGLD's step left SGNHT where its scalar thermostat let the minibatch noise heat the stiff
    # directions: 36.9 (+50%, interval [34.8, 37.6]) and no warning; on rank 1, 24.13 (+19%). Sizing the
    # step for that noise (slt.tuning.thermostat_minibatch_bias), restarting the velocity and thermostat
    # at each change and counting the floor on the simulated time from the last restart, in SGLD's
    # units, gave 24.93 and 25.58 (seeds 0-1; without the restart, rank 1 gave 7.0 for 20.25)
    model = deep_linear_network([10, 5, 10], 2)
    data = linear_regression_data(model, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = slt.estimate_llc(model, data, loss_fn=gaussian_nll, sampler="sgnht", seed=0, progress=False)
    assert result.mean == pytest.approx(24.57, rel=0.07)
    assert result.settings.converged and "rechecked" in result.settings.step_size_source
    assert result.settings.step_size < 1e-6
    assert 0 < result.checks.minibatch_bias < 0.03


def test_a_step_shrunk_near_the_end_of_the_budget_gets_what_is_left_of_it(monkeypatch):
    from slt.estimators import length

    posterior = PosteriorSampler(Quadratic(5), DUMMY, quadratic_loss)

    def run_with_late_stiffening(max_steps):
        # the chains reach stiffer places during the third segment: its predicted bias is 20 times the target
        predicted = iter([0.05, 0.05, 1.0] + [0.05] * 10)
        monkeypatch.setattr(length, "bias_indicator", lambda *args: next(predicted))
        return run_until_converged(
            posterior,
            kernel=get_kernel("sgld").bind(),
            n_beta=100.0,
            localization=1.0,
            step_size=1e-3,
            num_chains=2,
            seed=0,
            policy=LengthPolicy(first_segment=100, max_steps=max_steps, tolerance=1e-9, precision=1e-12),
        )

    run, report = run_with_late_stiffening(900)
    # 100 + 200 + 400 steps, then not the 400 a same-length segment needs but the 200 left, at 1/20 the step
    assert report.segment_steps == [100, 200, 400, 200]
    assert report.segment_step_sizes == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4])  # at most 10x smaller
    assert run.loss_trace.shape[1] == 200 and report.step_size == pytest.approx(1e-4)
    assert not report.converged and report.reason == "max_steps=900 reached"
    # less than a quarter of the segment left: the last segment stays the draws, flagged by the budget
    _, short = run_with_late_stiffening(790)
    assert short.segment_steps == [100, 200, 400] and short.step_size == pytest.approx(1e-3)


def test_a_tighter_precision_and_target_bias_are_met_and_recorded():
    n_beta = 100.0
    exact = quadratic_target(6, n_beta, 1.0)
    kwargs = dict(loss_fn=quadratic_loss, n_beta=n_beta, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        default = slt.estimate_llc(Quadratic(6), DUMMY, **kwargs)
        tight = slt.estimate_llc(Quadratic(6), DUMMY, precision=0.01, target_bias=0.0125, **kwargs)
    assert (default.settings.precision, default.settings.target_bias) == (0.05, 0.05)
    assert (tight.settings.precision, tight.settings.target_bias) == (0.01, 0.0125)
    assert tight.settings.converged
    # the last segment (the draws) meets the asked-for precision, at a step about a quarter of the default's
    assert tight.checks.segment_stderrs[-1] <= 0.01 * tight.mean
    assert tight.settings.step_size < 0.5 * default.settings.step_size
    assert tight.checks.bias_indicator < 2 * 0.0125
    assert abs(tight.mean - exact) < max(0.03 * exact, 3 * tight.stderr)
    # a given step has no target; a given length no precision
    given = slt.estimate_llc(Quadratic(6), DUMMY, step_size=1e-3, num_draws=200, **kwargs)
    assert given.settings.target_bias is None and given.settings.precision is None


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [("precision", 0.0, "precision must be"), ("precision", True, "precision must be"),
     ("target_bias", 0.5, "target_bias must be"), ("target_bias", float("nan"), "0.025 halves the step")],
)  # fmt: skip
def test_out_of_range_precision_or_target_bias_is_refused(setting, value, words):
    with pytest.raises(ValueError, match=words):
        slt.estimate_llc(Quadratic(2), DUMMY, loss_fn=quadratic_loss, progress=False, **{setting: value})
