"""Every result keeps the problems it was warned about: through JSON, on reload and on refit."""

import json
import warnings

import numpy as np
import pytest
import torch

import slt
from slt.dos import DOSResult
from slt.estimators.calibration import CalibrationResult
from slt.estimators.llc import LLCResult
from slt.results.serialize import from_jsonable, to_jsonable
from slt.warnings import Problem
from tests.conftest import Quadratic, quadratic_loss

DUMMY = torch.zeros(4, 1)


def recorded(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn()
    ours = [w for w in caught if issubclass(w.category, slt.SLTWarning)]
    return value, [(w.category.__name__, str(w.message)) for w in ours]


def as_pairs(problems):
    return [(p.category, p.message) for p in problems]


def off_minimum_model():
    model = Quadratic(3)
    with torch.no_grad():
        model.w.fill_(0.5)  # ||w||^2 is not at its minimum here: the chains find lower loss
    return model


def test_llc_problems_round_trip_and_are_emitted_again_on_reload(tmp_path):
    result, emitted = recorded(
        lambda: slt.estimate_llc(
            off_minimum_model(),
            DUMMY,
            loss_fn=quadratic_loss,
            n_beta=100.0,
            step_size=1e-3,
            num_draws=200,
            progress=False,
        )
    )
    assert "NotAMinimumWarning" in [p.category for p in result.problems]
    assert as_pairs(result.problems) == emitted
    assert "NotAMinimumWarning" in result.summary()["problems"].iloc[0]
    back = LLCResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.problems == result.problems
    np.testing.assert_array_equal(back.diagnostics.diverged, result.diagnostics.diverged)
    assert back.diagnostics.diverged.dtype == bool and back.diagnostics.divergence_step.dtype == np.int64
    assert back.settings == result.settings
    result.to_json(tmp_path / "llc.json")
    reloaded, again = recorded(lambda: LLCResult.from_json(tmp_path / "llc.json"))
    assert again == emitted and reloaded.problems == result.problems


def test_a_healthy_llc_has_no_problems():
    result, emitted = recorded(
        lambda: slt.estimate_llc(
            Quadratic(3),
            DUMMY,
            loss_fn=quadratic_loss,
            n_beta=100.0,
            step_size=1e-3,
            num_draws=400,
            progress=False,
        )
    )
    assert result.problems == () and emitted == []


def test_dos_refit_and_reload_show_the_same_warnings(tmp_path):
    settings = dict(
        temperatures=[10.0, 30.0, 100.0, 300.0],
        num_chains=4,
        num_draws=100,
        num_burnin=100,
        num_bootstrap=0,
        progress=False,
    )
    result, emitted = recorded(
        lambda: slt.estimate_dos(Quadratic(4), DUMMY, loss_fn=quadratic_loss, **settings)
    )
    assert as_pairs(result.problems) == emitted and "FitWarning" in [c for c, _ in emitted]
    # a window with no populated bins cannot be fitted: the refit says so and keeps saying so
    refit, refit_emitted = recorded(lambda: result.refit(fit_window=(1e-30, 2e-30)))
    assert np.isnan(refit.llc)
    assert any(c == "FitWarning" and "too few populated bins" in m for c, m in refit_emitted)
    assert as_pairs(refit.problems) == refit_emitted
    refit.to_json(tmp_path / "dos.json")
    reloaded, again = recorded(lambda: DOSResult.from_json(tmp_path / "dos.json"))
    assert again == refit_emitted and reloaded.problems == refit.problems
    assert reloaded.settings == refit.settings and reloaded.fit_window == refit.fit_window


def test_calibration_problems_round_trip(tmp_path):
    result, emitted = recorded(
        lambda: slt.calibrate(
            Quadratic(3),
            DUMMY,
            loss_fn=quadratic_loss,
            n_beta=100.0,
            step_sizes=[1e-2, 5e-3],
            num_chains=2,
            base_steps=40,
            max_steps=80,
            tolerance=1e-6,
            progress=False,
        )
    )
    assert emitted and as_pairs(result.problems) == emitted
    result.to_json(tmp_path / "cal.json")
    reloaded, again = recorded(lambda: CalibrationResult.from_json(tmp_path / "cal.json"))
    assert again == emitted and reloaded.problems == result.problems
    assert reloaded.estimate_kwargs() == result.estimate_kwargs()


def test_generic_round_trip_keeps_types():
    problem = Problem.of(slt.ConvergenceWarning, "m")
    assert from_jsonable(Problem, to_jsonable(problem)) == problem
    assert problem.warning_class is slt.ConvergenceWarning
    assert Problem("NoSuchWarning", "x").warning_class is slt.SLTWarning
    with pytest.raises(TypeError):
        from_jsonable(Problem, {"category": "x"})
