"""A sweep's γ, step size and lengths: chosen once at reference checkpoints, recorded, held fixed."""

import re
import warnings

import pytest
import torch
from torch import nn

from slt import analyze_checkpoints
from slt.sweeps.reference import probe_indices
from slt.sweeps.store import ResultStore
from slt.warnings import LocalizationWarning, SLTWarning
from tests.sweeps.fixtures import gaussian_nll, make_model, regression_data

#: These tests check what is chosen and held; two short chains on tiny models may be flagged as unmixed.
pytestmark = pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")

CLASSES = 4


def make_classifier() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 48), nn.ReLU(), nn.Linear(48, CLASSES))


def classification_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(256, 6, generator=g), torch.randint(0, CLASSES, (256,), generator=g)


def memorize_and_save(folder, steps=(300, 600, 900, 1200)) -> None:
    """Checkpoints of a classifier memorizing random labels (train loss about 0.01 at the first)."""
    folder.mkdir()
    x, y = classification_data()
    torch.manual_seed(0)
    model = make_classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(1, max(steps) + 1):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if step in steps:
            torch.save(model.state_dict(), folder / f"step_{step:05d}.pt")


def converged_regression(folder, count: int) -> list:
    """``count`` checkpoints, 50 steps apart, of make_model() trained to its minimum (from step 1500)."""
    folder.mkdir()
    x, y = regression_data()
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    paths = []
    for step in range(1, 1500 + 50 * (count - 1) + 1):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        if step >= 1500 and step % 50 == 0:
            paths.append(folder / f"step_{step:05d}.pt")
            torch.save(model.state_dict(), paths[-1])
    return paths


@pytest.mark.parametrize(
    "count, expected", [(1, [0]), (2, [0, 1]), (3, [1, 2]), (6, [2, 4, 5]), (86, [28, 57, 85])]
)
def test_probes_sit_a_third_two_thirds_and_at_the_end(count, expected):
    assert probe_indices(count) == expected


def test_a_classifier_sweep_chooses_a_stronger_pull_once_and_holds_every_setting(tmp_path, monkeypatch):
    memorize_and_save(tmp_path / "ckpts")
    store = tmp_path / "r.sqlite"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trajectory = analyze_checkpoints(
            tmp_path / "ckpts", make_classifier, classification_data(), loss_fn="cross_entropy",
            store=store, progress=False, num_chains=2,
        )  # fmt: skip
    reference = trajectory.settings["reference"]
    chosen = reference["chosen"]
    assert reference["probe_steps"] == [600, 900, 1200]
    assert chosen["localization"] > 1  # γ = 1 climbs past a quarter of the gap on a memorizing network
    failed = [t for t in reference["trials"] if not t["passed"]]
    assert failed and all(t["localization"] < chosen["localization"] for t in failed)
    assert all(t["gap_fraction"] > 0.25 for t in failed)
    assert set(chosen) == {"localization", "step_size", "num_burnin", "num_draws"}
    kept = [t for t in reference["trials"] if t["localization"] == chosen["localization"]]
    assert len(kept) == 3 and all(t["passed"] for t in kept)
    assert chosen["step_size"] == pytest.approx(min(t["step_size"] for t in kept), rel=1e-5)  # the stiffest
    assert chosen["num_draws"] == max(t["num_draws"] for t in kept)
    for result in trajectory.llc:
        s = result.settings
        assert (s.localization, s.step_size, s.num_burnin, s.num_draws) == (
            chosen["localization"], chosen["step_size"], chosen["num_burnin"], chosen["num_draws"],
        )  # fmt: skip
        assert s.step_size_source == "given" and s.length_source == "given"
    assert not any(w.category.__name__ == "LeftBasinWarning" for w in caught)
    # at the chosen pull the memorizing network's λ̂ is set by γ as much as by the loss, and it says so
    assert any(w.category is LocalizationWarning for w in caught)
    shares = [r.checks.localization_share for r in trajectory.llc]
    frame = trajectory.to_dataframe()
    assert max(shares) > 0.5 and "llc_localization_share" in frame.columns
    assert (frame["llc_localization_share_stderr"] > 0).all()

    # a rerun reads the choice back from the store (it does not choose again) and finds every checkpoint done
    def no_second_choice(*args, **kwargs):
        raise AssertionError("the rerun chose again")

    monkeypatch.setattr("slt.sweeps.reference.choose_localization", no_second_choice)
    with pytest.warns(LocalizationWarning):  # the stored results' warning, shown again
        again = analyze_checkpoints(
            tmp_path / "ckpts", make_classifier, classification_data(), loss_fn="cross_entropy",
            store=store, progress=False, num_chains=2,
        )  # fmt: skip
    assert again.settings_hash == trajectory.settings_hash
    assert again.llc_mean.tolist() == trajectory.llc_mean.tolist()
    with ResultStore(store) as opened:
        assert opened.count(trajectory.settings_hash, "done") == 4 and len(opened.runs()) == 1
    # another seed is another choice (the trials' chains differ), so it is chosen again
    with pytest.raises(AssertionError, match="the rerun chose again"):
        analyze_checkpoints(
            tmp_path / "ckpts", make_classifier, classification_data(), loss_fn="cross_entropy",
            store=store, progress=False, num_chains=2, seed=1,
        )  # fmt: skip


def test_the_same_seed_makes_the_same_choice_without_a_store(tmp_path):
    memorize_and_save(tmp_path / "ckpts", steps=(600, 1200))
    common = dict(loss_fn="cross_entropy", store=None, progress=False)
    warnings.simplefilter("ignore", LocalizationWarning)  # shown and tested above; pytest restores filters
    runs = [
        analyze_checkpoints(
            tmp_path / "ckpts", make_classifier, classification_data(), num_chains=2, **common
        )
        for _ in range(2)
    ]
    runs.append(
        analyze_checkpoints(
            tmp_path / "ckpts", make_classifier, classification_data(), measures="loss", **common
        )
    )
    assert runs[0].settings["reference"] == runs[1].settings["reference"]
    assert runs[0].settings_hash == runs[1].settings_hash
    assert "reference" not in runs[2].settings  # no LLC, nothing to choose


def test_a_regression_sweep_keeps_gamma_one_and_per_checkpoint_choice_is_still_there(tmp_path):
    converged_regression(tmp_path / "ckpts", count=4)
    common = dict(loss_fn=gaussian_nll, store=None, progress=False, num_chains=2)
    trajectory = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), **common)
    assert trajectory.settings["reference"]["chosen"]["localization"] == 1.0
    assert len({r.settings.step_size for r in trajectory.llc}) == 1
    own = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), reference=None, **common)
    assert "reference" not in own.settings
    assert all(r.settings.step_size_source.startswith("auto") for r in own.llc)
    with pytest.raises(ValueError, match='reference must be "auto" or None'):
        analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), reference="first", **common)


def test_settings_given_are_kept_and_nothing_is_chosen_when_all_are_given(tmp_path):
    converged_regression(tmp_path / "ckpts", count=3)
    common = dict(loss_fn=gaussian_nll, store=None, progress=False, num_chains=2, batch_size=32)
    fixed = dict(localization=5.0, step_size=1e-4, num_draws=20, num_burnin=5)
    trajectory = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), **common, **fixed)
    assert "reference" not in trajectory.settings
    some = analyze_checkpoints(
        tmp_path / "ckpts", make_model, regression_data(), **common, localization=5.0, num_draws=20
    )
    reference = some.settings["reference"]
    assert reference["rule"] == "γ = 5 as given" and reference["probe_steps"] == [1550, 1600]
    assert set(reference["chosen"]) == {"step_size"}
    assert all(r.settings.localization == 5.0 and r.settings.num_draws == 20 for r in some.llc)


def test_a_probe_that_cannot_be_loaded_is_replaced_by_its_nearest_neighbour(tmp_path):
    paths = converged_regression(tmp_path / "ckpts", count=6)
    paths[-1].write_bytes(paths[-1].read_bytes()[:300])  # the last checkpoint is truncated
    with pytest.warns(UserWarning, match="1 of 6 checkpoints failed"):
        trajectory = analyze_checkpoints(
            tmp_path / "ckpts", make_model, regression_data(), loss_fn=gaussian_nll, store=None,
            progress=False, num_chains=2,
        )  # fmt: skip
    assert trajectory.settings["reference"]["probe_steps"] == [1600, 1650, 1700]
    assert trajectory.ok.tolist() == [True] * 5 + [False]


def test_a_checkpoint_added_later_reuses_the_stored_choice_and_keeps_the_finished_ones(tmp_path):
    paths = converged_regression(tmp_path / "ckpts", count=4)
    common = dict(loss_fn=gaussian_nll, store=tmp_path / "results.sqlite", progress=False, num_chains=2)
    first = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), **common)
    (tmp_path / "ckpts" / "step_01700.pt").write_bytes(paths[-1].read_bytes())  # training went on
    with pytest.warns(SLTWarning, match=r"\(1 added, 0 gone\).*reused") as caught:
        second = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), **common)
    assert "localization = 1" in str(caught[0].message)
    # the same settings, so the four finished checkpoints were read back, not measured again
    assert second.settings_hash == first.settings_hash
    assert second.settings["reference"] == first.settings["reference"]
    assert second.steps.tolist() == [1500, 1550, 1600, 1650, 1700]
    assert second.llc_mean[:4].tolist() == first.llc_mean.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the choice is now stored for this set of checkpoints too
        third = analyze_checkpoints(tmp_path / "ckpts", make_model, regression_data(), **common)
    assert third.settings_hash == first.settings_hash


def test_another_run_in_the_same_store_or_a_retrained_folder_chooses_its_own_settings(tmp_path):
    paths = converged_regression(tmp_path / "a", count=3)
    converged_regression(tmp_path / "b", count=3)
    common = dict(loss_fn=gaussian_nll, store=tmp_path / "results.sqlite", progress=False, num_chains=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analyze_checkpoints(tmp_path / "a", make_model, regression_data(), **common)
        analyze_checkpoints(tmp_path / "b", make_model, regression_data(), **common)  # another run
        for path in paths:  # run a trained again into its folder: every file replaced
            path.write_bytes(path.read_bytes())
        analyze_checkpoints(tmp_path / "a", make_model, regression_data(), **common)
    assert not [w for w in caught if "reused" in str(w.message)]


def test_a_probe_that_is_not_a_minimum_is_left_out_of_the_step_and_lengths_and_said_so():
    from slt.sweeps.reference import choose_settings_at
    from slt.warnings import NotAMinimumWarning

    x, y = regression_data()
    torch.manual_seed(0)
    trained = make_model()
    optimizer = torch.optim.Adam(trained.parameters(), lr=0.01)
    for _ in range(1500):
        optimizer.zero_grad()
        nn.functional.mse_loss(trained(x), y).backward()
        optimizer.step()
    torch.manual_seed(1)
    untrained = make_model()  # the chains go downhill from its weights: λ̂ < 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fixed, record = choose_settings_at(
            [untrained, trained], [1, 1500], (x, y), gaussian_nll, {"num_chains": 2}, seed=0
        )
    said = [str(w.message) for w in caught if w.category is NotAMinimumWarning]
    assert any(re.search(r"step 1 \(λ̂ = -[\d.]+\) is not a minimum.*at step 1500 made", m) for m in said)
    assert any("chains of model 0" in m for m in said)  # choose_localization names it too
    early, late = record["trials"]
    assert early["llc"] < 0 < late["llc"]
    # measured: the untrained probe's automatic step was 5.7x smaller and its length 300 + 400 steps
    assert early["step_size"] < late["step_size"] / 2
    assert fixed["step_size"] == pytest.approx(late["step_size"], rel=1e-5)
    assert (fixed["num_burnin"], fixed["num_draws"]) == (late["num_burnin"], late["num_draws"])
    assert "left out of the choice" in record["problems"][-1]
    # with no minimum among the probes the choice stands, and the warning says where to choose instead
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fixed, record = choose_settings_at([untrained], [1], (x, y), gaussian_nll, {"num_chains": 2}, seed=0)
    said = [str(w.message) for w in caught if w.category is NotAMinimumWarning]
    assert any(re.search("no probe checkpoint is a minimum.*a trained checkpoint", m) for m in said)
    assert fixed["step_size"] == pytest.approx(early["step_size"], rel=1e-5)
