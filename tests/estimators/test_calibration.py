import json
import warnings

import numpy as np
import pytest
import torch

import slt
from slt.estimators.calibration import CalibrationResult
from slt.estimators.llc_guards import MAX_BIAS_INDICATOR
from slt.sampling import PosteriorSampler
from slt.tuning import STABILITY_LIMIT, bias_indicator, top_curvature, unstable_chains
from tests.conftest import Quadratic, finished_run, quadratic_loss

DUMMY = torch.zeros(4, 1)


def quadratic_bias(step: float, n_beta: float, gamma: float = 1.0) -> float:
    a = 2 * n_beta + gamma
    return 1 / (1 - step * a / 4) - 1


def calibrate_euler_quadratic(**kwargs):
    """``calibrate`` on L = ||w||² (d = 10, nβ = 100) with the Euler step, whose bias :func:`quadratic_bias`
    gives in closed form (SGLD's default Leimkuhler-Matthews noise has none on a quadratic)."""
    return slt.calibrate(
        Quadratic(10),
        DUMMY,
        loss_fn=quadratic_loss,
        n_beta=100.0,
        sampler_options={"leimkuhler_matthews": False},
        progress=False,
        **kwargs,
    )


def test_recommends_the_largest_step_whose_measured_bias_is_within_tolerance():
    """On L = ||w||² the Euler step's bias is known: 5.3% at ε = 1e-3, 11.2% at 2e-3, 25% at 4e-3 (nβ = 100).

    (SGLD's default Leimkuhler-Matthews noise has none on a quadratic, so the Euler step is asked for.)
    """
    assert quadratic_bias(1e-3, 100) == pytest.approx(0.0531, abs=1e-3)
    assert quadratic_bias(2e-3, 100) == pytest.approx(0.1117, abs=1e-3)
    cal = calibrate_euler_quadratic(
        step_sizes=[4e-3, 2e-3, 1e-3, 5e-4], num_chains=16, base_steps=2000, tolerance=0.1
    )
    assert cal.step_size == 1e-3
    ladder = [r for r in cal.table if r["kind"] == "step"]
    length_check = [r for r in cal.table if r["kind"] == "length"]
    # the length stage at the middle step (1e-3) stops once a doubled segment (4000 steps) agrees with the
    # first; the ladder continues those equilibrated chains for the simulated time of the last segment
    assert [(r["step_size"], r["num_steps"]) for r in length_check] == [(1e-3, 2000), (1e-3, 4000)]
    assert length_check[-1]["stable"] and cal.settings["length_converged"]
    assert [r["num_steps"] for r in ladder] == [1000, 2000, 4000, 8000]  # the same simulated time
    rows = {r["step_size"]: r for r in ladder}
    assert all(r["healthy"] for r in ladder)
    # the bias measured by halving tracks the exact one
    assert rows[4e-3]["bias_estimate"] == pytest.approx(2 * (1.25 - 1.1117) / 1.1117, abs=0.05)
    assert not rows[4e-3]["stable"] and not rows[2e-3]["stable"] and rows[1e-3]["stable"]
    # extrapolation to step 0 recovers the continuous-time value (d/2)(2nβ/(2nβ+1)) = 4.975
    assert cal.llc_extrapolated == pytest.approx(4.975, rel=0.03)
    assert cal.settings["extrapolation"].startswith("weighted line through 3 steps")
    assert "largest step" in cal.criteria
    assert (cal.num_burnin, cal.num_draws) == (2000, 4000)  # to equilibrate from w*; the last segment
    assert cal.estimate_kwargs() == {  # the estimate sizes its own length at that step
        "step_size": 1e-3,
        "localization": 1.0,
        "n_beta": 100.0,
        "sampler": "sgld",
        "sampler_options": {"leimkuhler_matthews": False},
        "batch_size": 4,
    }


def test_calibrating_on_a_data_loader_hands_estimate_llc_kwargs_it_accepts():
    """The loader's batch size is recorded, not passed back: estimate_llc refuses batch_size with a loader.
    A loader that resamples with replacement keeps its DataWarning on the calibration too."""
    x = torch.randn(200, 3)
    y = x @ torch.tensor([[1.0], [0.5], [-1.0]]) + 0.1 * torch.randn(200, 1)
    dataset = torch.utils.data.TensorDataset(x, y)
    model = torch.nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
        model.bias.zero_()
    kw = dict(loss_fn="mse", step_sizes=[2e-4, 1e-4], base_steps=40, check_length=False, num_chains=2)
    loader = torch.utils.data.DataLoader(dataset, batch_size=50, shuffle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", slt.warnings.ConvergenceWarning)
        cal = slt.calibrate(model, loader, progress=False, **kw)
        assert cal.settings["batch_size"] == 50 and "batch_size" not in cal.estimate_kwargs()
        result = slt.estimate_llc(model, loader, loss_fn="mse", progress=False, **cal.estimate_kwargs())
    assert result.settings.batch_size == 50
    resampling = torch.utils.data.DataLoader(
        dataset, batch_size=50, sampler=torch.utils.data.RandomSampler(dataset, True, 100)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = slt.calibrate(model, resampling, progress=False, **kw)
    assert "DataWarning" in {p.category for p in cal.problems}
    assert any(w.category is slt.warnings.DataWarning for w in caught)


def test_a_rung_estimate_llc_would_warn_about_is_never_healthy():
    """A rung whose predicted step bias is above MAX_BIAS_INDICATOR (where estimate_llc raises a
    StepSizeWarning) is unhealthy, so calibrate cannot recommend a step the estimate then warns about.
    L = ||w||², Euler step, nβ = 100: the exact bias at 6e-3 is 43%, its prediction 30%."""
    assert quadratic_bias(6e-3, 100) == pytest.approx(0.43, abs=0.01)
    cal = calibrate_euler_quadratic(step_sizes=[6e-3, 3e-3, 1.5e-3, 7.5e-4], num_chains=16, base_steps=1000)
    rows = {r["step_size"]: r for r in cal.table if r["kind"] == "step"}
    assert rows[6e-3]["bias_indicator"] > MAX_BIAS_INDICATOR and not rows[6e-3]["healthy"]
    assert "predicted step bias" in rows[6e-3]["note"] and rows[6e-3]["chains_diverged"] == 0
    assert all(rows[e]["healthy"] and rows[e]["bias_indicator"] <= MAX_BIAS_INDICATOR for e in (3e-3, 1.5e-3))
    assert cal.step_size == 1.5e-3


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # short chains: no stable step
def test_result_table_plot_and_json_round_trip(tmp_path):
    cal = slt.calibrate(
        Quadratic(4),
        DUMMY,
        loss_fn=quadratic_loss,
        n_beta=50.0,
        step_sizes=[2e-3, 1e-3],
        localizations=[1.0, 10.0],
        num_chains=4,
        base_steps=200,
        check_length=False,
        progress=False,
    )
    frame = cal.summary()
    assert len(frame) == 4 and set(frame["localization"]) == {1.0, 10.0}
    assert {"llc_mean", "llc_stderr", "rhat", "bias_estimate", "healthy", "stable", "note"} <= set(
        frame.columns
    )
    back = CalibrationResult.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back.step_size == cal.step_size and back.localization == cal.localization
    assert len(back.table) == 4
    fig = cal.plot()
    fig.savefig(tmp_path / "cal.png")
    assert (tmp_path / "cal.png").stat().st_size > 1000


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # short chains: no stable step
def test_smallest_healthy_localization_is_recommended():
    cal = slt.calibrate(
        Quadratic(4),
        DUMMY,
        loss_fn=quadratic_loss,
        n_beta=50.0,
        step_sizes=[1e-3, 5e-4],
        localizations=[10.0, 1.0],
        num_chains=4,
        base_steps=400,
        check_length=False,
        progress=False,
    )
    assert cal.localization == 1.0


def test_chains_too_short_to_converge_are_reported():
    # relaxation takes about 2 / (ε a) = 1000 steps here; the length check may only go to 64
    with pytest.warns(slt.ConvergenceWarning) as caught:
        cal = slt.calibrate(
            Quadratic(4),
            DUMMY,
            loss_fn=quadratic_loss,
            n_beta=100.0,
            step_sizes=[1e-5],
            num_chains=4,
            base_steps=16,
            max_steps=64,
            progress=False,
        )
    messages = [str(w.message) for w in caught]
    stopped = "the length stage stopped before the estimate held (max_steps=64 reached"
    assert any(stopped in m for m in messages)
    assert not cal.settings["length_converged"]
    assert [r["num_steps"] for r in cal.table if r["kind"] == "length"] == [16, 32]


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")
def test_default_grid_brackets_the_pilot_step(tiny_regression):
    model, x, y = tiny_regression
    posterior = PosteriorSampler(model, (x, y), "mse")
    guess, source = slt.default_step_size(posterior, n_beta=50.0, localization=1.0)
    cal = slt.calibrate(
        model,
        (x, y),
        loss_fn="mse",
        n_beta=50.0,
        num_chains=2,
        base_steps=40,
        check_length=False,
        progress=False,
    )
    steps = sorted(r["step_size"] for r in cal.table)
    assert steps == pytest.approx([guess / 4, guess / 2, guess, guess * 2, guess * 4])
    assert source.startswith("auto (pilot")


def test_all_settings_diverging_raises():
    class Cliff(Quadratic):
        pass

    def cliff_loss(model, batch):
        return torch.where(
            model.w.abs().max() > 0.05, torch.tensor(float("nan"), dtype=torch.float64), (model.w**2).sum()
        )

    with pytest.raises(slt.ChainDivergenceError, match="every setting tried had diverging chains"):
        slt.calibrate(
            Cliff(3),
            DUMMY,
            loss_fn=cliff_loss,
            n_beta=1.0,
            localizations=[0.0],
            step_sizes=[1.0, 0.5],
            num_chains=2,
            base_steps=50,
            progress=False,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step_sizes": []}, "step_sizes is empty"),
        ({"step_sizes": [1e-3, -1.0]}, "step_size must be a positive number"),
        ({"localizations": []}, "localizations is empty"),
        ({"localizations": [-1.0]}, "localization must be >= 0"),
        ({"base_steps": 4}, "base_steps must be an integer of at least 16"),
        ({"base_steps": 100, "max_steps": 150}, "max_steps \\(150\\) must allow two segments"),
        ({"max_seconds": 0}, "max_seconds must be positive"),
        ({"num_chains": 0}, "num_chains must be an integer >= 1"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        slt.calibrate(Quadratic(2), DUMMY, loss_fn=quadratic_loss, progress=False, **kwargs)


def test_top_curvature_and_bias_indicator_on_a_quadratic():
    posterior = PosteriorSampler(Quadratic(5), DUMMY, quadratic_loss)
    assert top_curvature(posterior) == pytest.approx(2.0, rel=1e-3)  # Hessian of ||w||² is 2I
    # E|∇L|² = 4 E|w|² = 4 d/a for a = 2nβ + γ; predicted bias ε nβ² E|∇L|²/(8 λ) ≈ ε a/4 on a quadratic
    n_beta, step, d = 100.0, 1e-3, 5
    a = 2 * n_beta + 1
    grad_sq = np.full((2, 10), 4 * d / a)
    llc = n_beta * d / a
    assert bias_indicator(step, n_beta, grad_sq, llc) == pytest.approx(step * 2 * n_beta / 4, rel=1e-9)
    assert np.isnan(bias_indicator(step, n_beta, grad_sq, -1.0))


def test_unstable_chains_are_those_whose_own_indicator_passes_the_stability_limit():
    # on a quadratic each chain's own indicator is ε a / 4 (a = 2nβ + γ): 0.05 at ε = 1e-3, nβ = 100;
    # a chain whose gradients are 60× larger at 4× the loss has 15× that: past the limit (0.5)
    n_beta, step, d = 100.0, 1e-3, 5
    a = 2 * n_beta + 1
    grad_sq = np.full((4, 20), 4 * d / a)
    trace = np.full((4, 20), n_beta * d / a)
    grad_sq[2] *= 60
    trace[2] *= 4
    unstable, own = unstable_chains(step, n_beta, grad_sq, trace)
    assert unstable.tolist() == [False, False, True, False]
    assert own[0] == pytest.approx(step * n_beta / 2, rel=1e-9)  # ≈ ε a / 4
    assert own[2] == pytest.approx(15 * own[0], rel=1e-9) and own[2] > STABILITY_LIMIT
    # only the second half of the draws counts: a chain that was unstable early and recovered is kept
    early = grad_sq.copy()
    early[1, :10] *= 100
    assert unstable_chains(step, n_beta, early, trace)[0].tolist() == [False, False, True, False]
    # a chain past the limit only because its own λ̂ is low (its loss below the others') is kept
    low = trace.copy()
    low[0] /= 20
    flags, own = unstable_chains(step, n_beta, grad_sq, low)
    assert own[0] > STABILITY_LIMIT and flags.tolist() == [False, False, True, False]
    # the level is that of the chains within the limit: three oscillating chains high above the fourth
    # are all left out, though each is below the median of the other three
    many = trace.copy()
    many[1:] *= np.array([[20.0], [25.0], [30.0]]) / 4
    grads = grad_sq.copy()
    grads[1:] *= 100
    assert unstable_chains(step, n_beta, grads, many)[0].tolist() == [False, True, True, True]
    # every chain past the limit: none is left out (the run's own step warning speaks for it)
    assert not unstable_chains(step, n_beta, grad_sq * 60, trace)[0].any()
    # no gradient norms recorded (NaN), or a chain whose λ̂ is not positive: nothing to judge
    nan_grads = np.full_like(grad_sq, np.nan)
    flags, own = unstable_chains(step, n_beta, nan_grads, trace)
    assert not flags.any() and np.isnan(own).all()
    negative = trace.copy()
    negative[2] = -1.0
    assert not unstable_chains(step, n_beta, grad_sq, negative)[0].any()


def _normal_crossing_w1sq_w2pow4():
    import math

    from slt.oracles import NormalCrossing, regression_data
    from tests.conftest import gaussian_nll
    from tests.test_accuracy import normal_crossing_exact

    x, y = regression_data(10_000, seed=0)
    exact = normal_crossing_exact(x, y, 10_000 / math.log(10_000), 1.0)
    return NormalCrossing([1, 2]), (x, y), gaussian_nll, exact


def test_default_step_pilot_sizes_the_step_where_lambda_is_small():
    # K = w1^2 w2^4, λ = 1/4 at nβ ≈ 1086: without the control variate the pilot's estimate was minibatch
    # noise, came out negative, and the step was never sized (a warning on every such model)
    model, data, loss, exact = _normal_crossing_w1sq_w2pow4()
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the former default length: this test is about the pilot (the automatic length asks for a 5%
        # standard error, which on this λ ≈ 0.2 takes ~80,000 steps per chain, so R-hat over these 1,000
        # draws may pass 1.1 and warn; that warning is not the pilot's)
        result = slt.estimate_llc(model, data, loss_fn=loss, seed=0, num_draws=1000, progress=False)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "pilot" in m or "step size" in m], messages
    source = result.settings.step_size_source
    # the step was sized (a short pilot may be rerun longer when the estimate drowns in noise)
    assert "not positive; kept" not in source and source.count("->") >= 2
    assert result.settings.step_size < 0.01
    assert result.mean > 0 and abs(result.mean - exact) < 3 * result.stderr


def test_preconditioned_pilot_never_raises_the_step_past_its_start():
    from slt.tuning import largest_preconditioner

    assert largest_preconditioner("sgld") == 1.0
    assert largest_preconditioner("rmsprop_sgld") == pytest.approx(10.0)
    assert largest_preconditioner("rmsprop_sgld", {"delta": 0.5}) == pytest.approx(2.0)
    # the gradient vanishes at w*: the bias indicator is tiny and used to push the step up tenfold per
    # round (measured: 0.1 -> 0.99 -> 9.9 and λ̂ ~ 1e16); the start is now 0.1 / (γ · 1/δ) and the ceiling
    model, data, loss, _ = _normal_crossing_w1sq_w2pow4()
    posterior = PosteriorSampler(model, data, loss, batch_size=256)
    step, source = slt.tuning.default_step_size(
        posterior, n_beta=1086.0, localization=1.0, sampler="rmsprop_sgld"
    )
    assert step <= 0.01 * (1 + 1e-9)
    assert "preconditioner up to 10" in source


class RecordingBar:
    """Stands in for tqdm: keeps the totals calibrate announces and the steps it reports."""

    def __init__(self, total):
        self.n, self.total, self.totals = 0, total, [total]

    def update(self, k):
        self.n += k

    def refresh(self):
        self.totals.append(self.total)

    def close(self):
        pass


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # short chains: no stable step
def test_calibrate_progress_has_a_total_that_bounds_the_work_and_ends_exact(monkeypatch):
    bars = []

    def recording(enabled, total, description, unit="step"):
        bars.append(RecordingBar(total))
        return bars[-1]

    monkeypatch.setattr("slt.estimators.calibration.progress_bar", recording)
    slt.calibrate(
        Quadratic(3),
        DUMMY,
        loss_fn=quadratic_loss,
        n_beta=50.0,
        step_sizes=[2e-3, 1e-3],
        num_chains=2,
        base_steps=100,
        max_steps=800,
        progress=True,
    )
    (bar,) = bars
    assert bar.totals[0] is not None and bar.totals[0] >= bar.n  # an upper bound from the start (an ETA)
    assert bar.total == bar.n  # once the length check settled, the total is what was left


def test_a_time_budget_stops_the_length_stage_and_the_ladder_and_says_so():
    # the first segment always runs; any further work would exceed 50 ms
    with pytest.warns(slt.ConvergenceWarning) as caught:
        cal = slt.calibrate(
            Quadratic(10),
            DUMMY,
            loss_fn=quadratic_loss,
            n_beta=100.0,
            step_sizes=[4e-3, 2e-3, 1e-3, 5e-4],
            num_chains=4,
            base_steps=2000,
            max_seconds=0.05,
            progress=False,
        )
    messages = " | ".join(str(w.message) for w in caught)
    assert "max_seconds=0.05 would be exceeded" in messages  # the length stage
    assert "max_seconds=0.05 ran out before ε=0.002 at γ=1, ε=0.0005 at γ=1" in messages
    assert [r["num_steps"] for r in cal.table if r["kind"] == "length"] == [2000]
    # the first rung ran (its cost was unknown), the reference rung is the length stage's segment
    assert [r["step_size"] for r in cal.table if r["kind"] == "step"] == [4e-3, 1e-3]
    assert not cal.settings["length_converged"] and cal.settings["max_seconds"] == 0.05


def test_extrapolation_is_refused_where_the_step_makes_no_measurable_difference():
    from slt.estimators.calibration import _extrapolate

    flat = [
        {"step_size": s, "llc_mean": 5.0 + d, "llc_stderr": 0.2} for s, d in [(4, 0.1), (2, -0.1), (1, 0.05)]
    ]
    value, stderr, why = _extrapolate(flat)
    assert np.isnan(value) and np.isnan(stderr) and why.startswith("not done: no measurable step dependence")
    steep = [{"step_size": s, "llc_mean": 1.0 + 2.0 * s, "llc_stderr": 0.01} for s in (4, 2, 1)]
    value, _, why = _extrapolate([dict(r, llc_mean=r["llc_mean"] - 3.0) for r in steep])
    assert np.isnan(value) and why == "not done: the line reaches -2 at step 0"
    value, _, why = _extrapolate(steep)
    assert value == pytest.approx(1.0) and why.startswith("weighted line through 3 steps")
    assert np.isnan(_extrapolate(steep[:2])[0])  # two points never make a line to trust


def _ladder_row(step: float, llc: float, stderr: float = 0.05) -> dict:
    return {
        "kind": "step",
        "step_size": step,
        "localization": 1.0,
        "llc_mean": llc,
        "llc_stderr": stderr,
        "chains_diverged": 0,
        "healthy": True,
    }


def _recommend_from(rows: list[dict], tolerance: float = 0.1) -> CalibrationResult:
    from slt.estimators.calibration import _Lengths, _mark_stability, _recommend

    _mark_stability(rows, tolerance)
    lengths = {1.0: _Lengths(reference=1e-3, draws_steps=1000, simulated_time=2.0, converged=True)}
    return _recommend(rows, 100.0, tolerance, 1000, {}, lengths)


def test_an_extrapolation_far_from_the_recommended_step_is_flagged():
    """One halving certifies 4e-3 (a measured bias of 8%), but the rungs below keep falling: 8.6 at step 0."""
    curved = [_ladder_row(s, v) for s, v in [(8e-3, 12.0), (4e-3, 10.4), (2e-3, 10.0), (1e-3, 8.5)]]
    cal = _recommend_from(curved)
    assert cal.step_size == 4e-3 and [r["step_size"] for r in curved if r["stable"]] == [4e-3]
    assert cal.llc_extrapolated == pytest.approx(8.565, abs=0.01)
    [problem] = cal.problems
    assert problem.category == "StepSizeWarning"
    assert "the recommended step's estimate 10.4 is +21% from the estimate extrapolated to step 0" in str(
        problem.message
    )
    assert "Report llc_extrapolated, or pass step_size=0.002 (the next healthy step below it)" in str(
        problem.message
    )
    # a straight line through the same recommendation: the halving measured the bias it has, no warning
    linear = [_ladder_row(s, 10.0 + 100 * s) for s in (8e-3, 4e-3, 2e-3, 1e-3)]
    cal = _recommend_from(linear)
    assert cal.step_size == 8e-3  # its bias, 8%, is within the tolerance of 10%
    assert cal.llc_extrapolated == pytest.approx(10.0, rel=1e-6) and cal.problems == ()


def test_rungs_are_compared_chain_by_chain():
    """Chains that continue the same states share their slow part: the paired difference sees through it."""
    from slt.estimators.calibration import _difference_stderr

    shared = [10.0, 14.0, 12.0, 16.0]  # each chain's own level, common to both rungs
    big = {"per_chain": [v + 0.5 for v in shared], "llc_stderr": float(np.std(shared, ddof=1) / 2)}
    small = {
        "per_chain": [v + d for v, d in zip(shared, [0.1, -0.1, 0.0, 0.2])],
        "llc_stderr": big["llc_stderr"],
    }
    paired = _difference_stderr(big, small)
    assert paired == pytest.approx(np.std([0.4, 0.6, 0.5, 0.3], ddof=1) / 2)
    assert paired < 0.05 * np.hypot(big["llc_stderr"], small["llc_stderr"])
    # a diverged chain (None) is left out of the pairs; without per-chain values, the independent form
    small["per_chain"][0] = None
    assert _difference_stderr(big, small) == pytest.approx(np.std([0.6, 0.5, 0.3], ddof=1) / np.sqrt(3))
    assert _difference_stderr({"llc_stderr": 0.3}, {"llc_stderr": 0.4}) == pytest.approx(0.5)


def test_a_calibration_step_with_a_chain_past_the_stability_limit_is_unhealthy():
    """The same chains as in the estimate's test: one at 4x the loss and 60x the gradients. The estimate
    leaves it out; calibrate must not certify the step that produced it."""
    from slt.estimators.calibration import _row_from_run
    from slt.sampling.driver import bind_kernel

    d, n_beta, step = 10, 100.0, 1e-3
    posterior = PosteriorSampler(Quadratic(d), torch.zeros(4, 1), quadratic_loss)
    a = 2 * n_beta + 1
    rng = np.random.default_rng(0)
    losses = d / a * (1 + 0.05 * rng.standard_normal((4, 400)))
    grad_sq = 4 * d / a * (1 + 0.05 * rng.standard_normal((4, 400)))

    def row(excess: bool) -> dict:
        run = finished_run(
            losses * np.array([[1], [1], [1], [4 if excess else 1]]),
            grad_sq * np.array([[1], [1], [1], [60 if excess else 1]]),
            d,
        )
        kernel = bind_kernel("sgld", None, 0)
        return _row_from_run(run, posterior, n_beta, 1.0, step, 4, 400, 0, kernel, 0, "sequential")

    clean, past = row(False), row(True)
    assert clean["healthy"] and clean["chains_unstable"] == 0
    assert not past["healthy"] and past["chains_unstable"] == 1
    assert "1 chain(s) past the stability limit" in past["note"]
    assert past["llc_mean"] == pytest.approx(clean["llc_mean"], rel=0.02)  # chain 3 is left out of it


def test_rungs_too_noisy_to_certify_a_step_are_lengthened_until_one_is():
    """On L = ||w||² with the Euler step (bias 5.3% at ε = 1e-3, 11.2% at 2e-3) short rungs measure
    biases whose standard errors are too large to certify any step; doubling them certifies 1e-3."""
    kwargs = dict(step_sizes=[4e-3, 2e-3, 1e-3, 5e-4], num_chains=4, base_steps=100)
    with pytest.warns(slt.ConvergenceWarning, match="no step was stable within 10%"):
        short = calibrate_euler_quadratic(ladder_doublings=0, **kwargs)
    assert short.step_size == 5e-4 and short.settings["ladder_doublings"] == {}
    cal = calibrate_euler_quadratic(**kwargs)
    assert not cal.problems and cal.step_size == 1e-3 and "largest step" in cal.criteria
    ladder = [r for r in cal.table if r["kind"] == "step"]
    doublings = cal.settings["ladder_doublings"]["1"]
    assert doublings >= 1 and all(r["doublings"] == doublings for r in ladder)
    # every rung ran its first draws 2^k times over (burn-in once), each the same simulated time
    for first, now in zip([r for r in short.table if r["kind"] == "step"], ladder, strict=True):
        burn = first["num_steps"] // 4
        assert now["num_steps"] == burn + (first["num_steps"] - burn) * 2**doublings
    assert [r["stable"] for r in ladder] == [False, False, True, False]
    assert -0.05 < ladder[2]["bias_estimate"] < 0.1
    assert ladder[1]["bias_estimate"] > 0.05  # 2e-3's bias (11.2%) is still seen
    assert all(len(r["per_chain"]) == 4 for r in ladder)


def test_pooled_rungs_weigh_per_chain_estimates_by_draws_and_keep_every_problem():
    from slt.estimators.calibration import _could_certify, _pool_rows

    base = dict(step_size=1e-3, num_steps=400, chains_diverged=0, chains_unstable=0, rhat=1.0, trend_z=0.0)
    base.update(bias_indicator=0.05)
    first = dict(base, per_chain=[10.0, 12.0, None, 14.0], healthy=True, note="", llc_mean=12.0)
    more = dict(base, num_steps=300, per_chain=[13.0, 12.0, 11.0, 8.0], healthy=True, note="", llc_mean=11.0)
    pooled = _pool_rows(first, 300, more, 600)
    assert pooled["per_chain"] == [pytest.approx(12.0), pytest.approx(12.0), None, pytest.approx(10.0)]
    assert pooled["llc_mean"] == pytest.approx(34 / 3)
    assert pooled["llc_stderr"] == pytest.approx(np.std([12.0, 12.0, 10.0], ddof=1) / np.sqrt(3))
    assert pooled["num_steps"] == 700 and pooled["doublings"] == 1 and pooled["healthy"]
    sick = _pool_rows(first, 300, dict(more, healthy=False, note="trend z 5.0", chains_unstable=1), 300)
    assert not sick["healthy"] and sick["note"] == "trend z 5.0" and sick["chains_unstable"] == 1
    # more draws can certify only where a healthy pair measured a bias within the tolerance
    rows = [
        dict(healthy=True, stable=False, bias_estimate=0.08),
        dict(healthy=True, stable=False, bias_estimate=float("nan")),
    ]
    assert _could_certify(rows, 0.1)
    assert not _could_certify([dict(rows[0], bias_estimate=0.2), rows[1]], 0.1)
    assert not _could_certify([dict(rows[0], stable=True), rows[1]], 0.1)
    assert not _could_certify([dict(rows[0], healthy=False), rows[1]], 0.1)


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # a budget of three segments
def test_a_long_length_stage_switches_to_compiled_chains_by_default(monkeypatch):
    """``compile=None``: the length stage's first segment of AUTO_COMPILE_MIN_STEPS steps or more runs
    compiled, the ladder after it stays so, and estimate_kwargs keeps compile on; ``False`` never."""
    from slt.estimators import calibration as calibration_module

    monkeypatch.setattr(calibration_module, "AUTO_COMPILE_MIN_STEPS", 400)
    settings = dict(
        loss_fn=quadratic_loss,
        n_beta=50.0,
        step_sizes=[2e-3, 1e-3],
        localizations=[1.0],
        num_chains=4,
        base_steps=200,
        max_steps=1400,
        progress=False,
    )
    cal = slt.calibrate(Quadratic(4), DUMMY, **settings)
    assert cal.settings["compile"] == "compiled"
    assert cal.estimate_kwargs()["compile"] is True
    eager = slt.calibrate(Quadratic(4), DUMMY, compile=False, **settings)
    assert eager.settings["compile"] == "off" and "compile" not in eager.estimate_kwargs()
