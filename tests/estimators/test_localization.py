"""choose_localization: the weakest γ that keeps the chains near w*, judged against the zero-weights loss."""

import math

import pytest
import torch
from torch import nn

import slt
from slt.estimators.localization import MAX_GAP_FRACTION, LocalizationChoice
from slt.warnings import LeftBasinWarning, NotAMinimumWarning


def memorizing_classifier() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A 532-parameter ReLU classifier that memorizes 256 random labels to a loss of about 0.002."""
    torch.manual_seed(0)
    x, y = torch.randn(256, 6), torch.randint(0, 4, (256,))
    model = nn.Sequential(nn.Linear(6, 48), nn.ReLU(), nn.Linear(48, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(1500):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, (x, y)


def regression() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    x = torch.randn(400, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3 * torch.randn(400, 1)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    for _ in range(400):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model, (x, y)


def test_a_memorizing_classifier_needs_a_stronger_pull_and_weak_trials_stop_early():
    model, data = memorizing_classifier()
    before = [p.detach().clone() for p in model.parameters()]
    choice = slt.choose_localization(model, data, loss_fn="cross_entropy", first_segment=100)
    gammas = [t.localization for t in choice.trials]
    assert choice.localization == gammas[-1] > 1
    weak = choice.trials[0]
    assert weak.localization == 1 and not weak.passed
    assert weak.gap_fraction > MAX_GAP_FRACTION and "climbed past 25% of the gap" in weak.reason
    assert not weak.converged and weak.num_burnin + weak.num_draws <= 300  # stopped within two segments
    chosen = choice.trials[-1]
    assert chosen.passed and chosen.gap_fraction <= MAX_GAP_FRACTION and chosen.converged
    assert chosen.llc < weak.llc and choice.problems == ()
    assert chosen.init_loss < 0.01 and chosen.zero_weights_loss == pytest.approx(math.log(4), rel=0.05)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert f"| 0 | {chosen.localization:g} | yes |" in choice.table()
    again = LocalizationChoice.from_dict(choice.to_dict())
    assert again.localization == choice.localization and len(again.trials) == len(choice.trials)


def test_a_regression_keeps_gamma_one_after_a_single_trial_per_model(capsys):
    model, data = regression()
    choice = slt.choose_localization([model, model], data, loss_fn="mse", first_segment=100, progress=True)
    assert "γ = 1, model 1" in capsys.readouterr().err  # each trial's progress bar names its γ and model
    assert choice.localization == 1.0
    assert [(t.model, t.localization, t.passed) for t in choice.trials] == [(0, 1.0, True), (1, 1.0, True)]
    assert all(t.gap_fraction < 0.01 for t in choice.trials)
    assert choice.problems == ()


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # the pilot cannot size a step there
def test_weights_that_are_not_a_minimum_pass_but_are_named():
    # the chains go downhill from untrained weights, so the climb test passes at γ = 1 whatever it is
    model, data = regression()
    with torch.no_grad():
        model.weight.zero_()
    with pytest.warns(NotAMinimumWarning, match=r"chains of model 0 \(λ̂ = -[\d.]+\) found lower loss"):
        choice = slt.choose_localization(model, data, loss_fn="mse", first_segment=100, progress=False)
    assert choice.localization == 1.0 and choice.trials[0].passed and choice.trials[0].llc < 0
    assert [p.category for p in choice.problems] == ["NotAMinimumWarning"]


def test_when_no_candidate_holds_the_chains_the_choice_says_so():
    model, data = memorizing_classifier()
    with pytest.warns(LeftBasinWarning, match="even at γ = 1"):
        choice = slt.choose_localization(
            model, data, loss_fn="cross_entropy", candidates=(1.0,), first_segment=100
        )
    assert choice.localization == 1.0
    (problem,) = choice.problems
    assert problem.category == "LeftBasinWarning" and "even at γ = 1" in problem.message


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(candidates=()), "increasing order"),
        (dict(candidates=(10.0, 1.0)), "increasing order"),
        (dict(candidates=(0.0, 1.0)), "positive"),
        (dict(max_gap_fraction=0.0), "max_gap_fraction"),
        (dict(max_gap_fraction=1.5), "max_gap_fraction"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    model, data = regression()
    with pytest.raises(ValueError, match=match):
        slt.choose_localization(model, data, loss_fn="mse", **kwargs)


def test_a_setting_it_does_not_take_is_refused_by_name():
    model, data = regression()
    with pytest.raises(TypeError, match="'num_draws'.*compile, eval_samples"):
        slt.choose_localization(model, data, loss_fn="mse", num_draws=100)


def test_no_models_is_refused():
    _, data = regression()
    with pytest.raises(ValueError, match="at least one model"):
        slt.choose_localization([], data, loss_fn="mse")
