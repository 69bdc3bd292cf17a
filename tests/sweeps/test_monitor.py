"""LLCMonitor: measures during training without changing the run, and agrees with post-hoc sweeps."""

import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slt
from slt.sweeps.store import ResultStore
from slt.sweeps.trajectory import CheckpointFailedWarning
from tests.sweeps.fixtures import TINY, gaussian_nll, make_dropout_model, regression_data

pytestmark = [
    pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::slt.warnings.NotAMinimumWarning"),
]


def train(monitor=None, steps=30, snapshots=None):
    """A short run that draws from every global RNG: dropout, a shuffling loader, and noise."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    x, y = regression_data()
    model = make_dropout_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    batches = iter(loader)
    for step in range(1, steps + 1):
        try:
            xb, yb = next(batches)
        except StopIteration:
            batches = iter(loader)
            xb, yb = next(batches)
        xb = xb + 0.01 * torch.randn_like(xb) + 0.001 * float(np.random.randn()) * random.random()
        opt.zero_grad()
        nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
        if snapshots is not None and step % 10 == 0:
            snapshots.append((step, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        if monitor is not None:
            monitor(model, step)
    rng_after = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    return model, opt, rng_after


def _assert_bitwise_equal(a, b):
    model_a, opt_a, rng_a = a
    model_b, opt_b, rng_b = b
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(p, q), name
        assert torch.equal(p.grad, q.grad), name
    state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    for key in state_a:
        for field in state_a[key]:
            assert torch.equal(state_a[key][field], state_b[key][field])
    assert torch.equal(rng_a[0], rng_b[0]) and np.array_equal(rng_a[1], rng_b[1]) and rng_a[2] == rng_b[2]
    assert model_a.training and model_b.training


def test_the_monitor_leaves_a_training_run_bitwise_identical():
    plain = train()
    monitor = slt.LLCMonitor(
        regression_data(), loss_fn=gaussian_nll, every=10, measures=("llc", "loss"), **TINY
    )
    monitored = train(monitor)
    _assert_bitwise_equal(plain, monitored)
    assert [r.step for r in monitor.records] == [10, 20, 30]
    assert all(r.ok for r in monitor.records)
    assert np.isfinite(monitor.trajectory.llc_mean).all()


def test_monitor_numbers_equal_a_post_hoc_sweep_of_the_same_weights():
    snapshots = []
    monitor = slt.LLCMonitor(regression_data(), loss_fn=gaussian_nll, every=10, seed=3, **TINY)
    train(monitor, snapshots=snapshots)
    posthoc = slt.analyze_checkpoints(
        snapshots,
        make_dropout_model,
        regression_data(),
        loss_fn=gaussian_nll,
        store=None,
        progress=False,
        seed=3,
        **TINY,
    )
    live = monitor.trajectory
    np.testing.assert_array_equal(live.steps, posthoc.steps)
    np.testing.assert_array_equal(live.llc_mean, posthoc.llc_mean)
    np.testing.assert_array_equal(live.llc_stderr, posthoc.llc_stderr)
    for a, b in zip(live.llc, posthoc.llc):
        np.testing.assert_array_equal(a.trace, b.trace)


def test_every_accepts_an_interval_a_collection_or_a_callable():
    data = regression_data()
    assert [s for s in range(12) if slt.LLCMonitor(data, loss_fn="mse", every=5).due(s)] == [0, 5, 10]
    assert [s for s in range(12) if slt.LLCMonitor(data, loss_fn="mse", every=[1, 2, 4, 8]).due(s)] == [
        1,
        2,
        4,
        8,
    ]
    log_spaced = slt.LLCMonitor(data, loss_fn="mse", every=lambda s: s > 0 and (s & (s - 1)) == 0)
    assert [s for s in range(12) if log_spaced.due(s)] == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="every must be a positive integer"):
        slt.LLCMonitor(data, loss_fn="mse", every=0)
    with pytest.raises(ValueError, match="unknown estimator settings"):
        slt.LLCMonitor(data, loss_fn="mse", num_chain=2)
    torch.manual_seed(0)
    model = make_dropout_model()
    monitor = slt.LLCMonitor(data, loss_fn=gaussian_nll, every=100, **TINY)
    assert monitor(model, 7) is None and monitor.records == []
    assert monitor(model, 7, force=True).ok


def test_data_that_cannot_be_sampled_is_refused_when_the_monitor_is_made():
    x, y = regression_data()
    with pytest.raises(ValueError, match=r"disagree on the number of samples.*data\[1\] \(100, 1\)"):
        slt.LLCMonitor((x, y[:100]), loss_fn="mse")
    with pytest.raises(ValueError, match="empty"):
        slt.LLCMonitor((x, y), loss_fn="mse", test_data=(x[:0], y[:0]), measures=("llc", "loss"))
    bad = y.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match=r"\(targets\) holds 1 non-finite"):
        slt.LLCMonitor((x, bad), loss_fn="mse")


def test_a_restarted_run_reuses_the_stored_results(tmp_path):
    store = tmp_path / "monitor.sqlite"
    first = slt.LLCMonitor(regression_data(), loss_fn=gaussian_nll, every=10, store=store, **TINY)
    with warnings.catch_warnings(record=True) as measured:
        warnings.simplefilter("always")
        train(first, steps=20)
    first.close()
    again = slt.LLCMonitor(regression_data(), loss_fn=gaussian_nll, every=10, store=store, **TINY)
    with warnings.catch_warnings(record=True) as reused:
        warnings.simplefilter("always")
        train(again, steps=20)
    again.close()
    assert [r.finished for r in again.records] == [r.finished for r in first.records]
    # the stored numbers come back with the warnings they were measured with (20-draw chains)
    shown = sorted(str(w.message) for w in measured if issubclass(w.category, slt.warnings.SLTWarning))
    assert shown and sorted(str(w.message) for w in reused) == shown
    with ResultStore(store) as opened:
        assert opened.count() == 2
    loaded = slt.Trajectory.load(store)
    np.testing.assert_array_equal(loaded.llc_mean, first.trajectory.llc_mean)


def test_a_failing_measurement_warns_and_training_goes_on():
    def broken_loss(model, batch):
        return model(batch[0]).squeeze(-1)  # not a scalar

    monitor = slt.LLCMonitor(regression_data(), loss_fn=broken_loss, every=10, **TINY)
    with pytest.warns(
        CheckpointFailedWarning, match="could not measure step 10: ValueError: loss_fn must return"
    ):
        result = train(monitor, steps=10)
    _assert_bitwise_equal(train(steps=10), result)
    assert monitor.trajectory.failures[0].error.startswith("ValueError")
    strict = slt.LLCMonitor(regression_data(), loss_fn=broken_loss, every=10, on_error="raise", **TINY)
    with pytest.raises(ValueError, match="scalar"):
        train(strict, steps=10)


@pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*")
@pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")
def test_lightning_callback_measures_without_changing_training():
    lightning = pytest.importorskip("lightning")

    class Regressor(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = make_dropout_model()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def fit(callbacks):
        lightning.seed_everything(0, verbose=False)
        module = Regressor()
        x, y = regression_data()
        loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
        trainer = lightning.Trainer(
            max_steps=12,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
        )
        trainer.fit(module, loader)
        return module

    plain = fit([])
    monitor = slt.LLCMonitor(regression_data(), loss_fn=gaussian_nll, every=5, **TINY)
    watched = fit([monitor.lightning_callback()])
    assert [r.step for r in monitor.records] == [5, 10]
    assert all(r.ok for r in monitor.records)
    for (name, p), q in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(p, q), name


def test_a_loader_with_its_own_generator_is_left_where_it_was():
    """The monitor measures on the very loader the run trains from; its generator must not move."""

    def run(monitored):
        torch.manual_seed(0)
        x, y = regression_data()
        loader = DataLoader(
            TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(7)
        )
        model = make_dropout_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        settings = {k: v for k, v in TINY.items() if k != "batch_size"}
        monitor = slt.LLCMonitor(loader, loss_fn=gaussian_nll, every=2, **settings) if monitored else None
        for epoch in range(3):
            for step, (xb, yb) in enumerate(loader):
                opt.zero_grad()
                nn.functional.mse_loss(model(xb), yb).backward()
                opt.step()
                if monitor is not None and step % 4 == 0:
                    monitor(model, epoch * 100 + step, force=True)
        if monitor is not None:
            assert len(monitor.trajectory) == 6 and monitor.trajectory.ok.all()
        return model, loader.generator.get_state()

    plain, monitored = run(False), run(True)
    for p, q in zip(plain[0].parameters(), monitored[0].parameters()):
        assert torch.equal(p, q)
    assert torch.equal(plain[1], monitored[1])


CHOSEN = dict(num_chains=2, batch_size=32, localization=1.0)  # step size and lengths left to choose


def test_reference_first_chooses_once_at_the_first_step_and_holds_the_settings(monkeypatch):
    import slt.sweeps.reference as reference

    calls = []
    choose = reference.choose_localization
    monkeypatch.setattr(
        reference, "choose_localization", lambda *a, **k: calls.append(a[0]) or choose(*a, **k)
    )
    plain = train(steps=30)
    monitor = slt.LLCMonitor(regression_data(), loss_fn=gaussian_nll, every=10, reference="first", **CHOSEN)
    _assert_bitwise_equal(plain, train(monitor, steps=30))  # the choice disturbs nothing either
    assert len(calls) == 1 and len(calls[0]) == 1  # one probe, chosen once
    record = monitor.settings["reference"]
    chosen = record["chosen"]
    assert record["probe_steps"] == [10]
    assert set(chosen) == {"step_size", "num_burnin", "num_draws"}  # γ was given
    assert [r.step for r in monitor.records] == [10, 20, 30] and all(r.ok for r in monitor.records)
    for result in monitor.trajectory.llc:
        s = result.settings
        assert (s.step_size, s.num_burnin, s.num_draws) == (
            chosen["step_size"], chosen["num_burnin"], chosen["num_draws"],
        )  # fmt: skip
        assert s.step_size_source == "given" and s.length_source == "given"
    with pytest.raises(RuntimeError, match="already measured or chosen"):
        monitor.choose_settings(make_dropout_model())
    with pytest.raises(ValueError, match='reference must be None, "first" or a model'):
        slt.LLCMonitor(regression_data(), loss_fn=gaussian_nll, reference="last")


def fitted_reference() -> nn.Module:
    """The monitored architecture fitted to its minimum (full batch, dropout off): a model to choose at."""
    torch.manual_seed(1)
    model = make_dropout_model().eval()
    x, y = regression_data()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(1500):
        opt.zero_grad()
        gaussian_nll(model, (x, y)).backward()
        opt.step()
    return model.train()


def test_a_reference_model_is_chosen_at_once_and_a_restart_reads_the_choice_back(tmp_path, monkeypatch):
    trained = fitted_reference()
    store = tmp_path / "monitor.sqlite"
    first = slt.LLCMonitor(
        regression_data(), loss_fn=gaussian_nll, every=10, store=store, reference=trained, **CHOSEN
    )
    chosen = first.settings["reference"]["chosen"]
    assert first.settings["reference"]["probe_steps"] == [0] and chosen["step_size"] > 0
    train(first, steps=20)
    first.close()

    def no_second_choice(*args, **kwargs):
        raise AssertionError("the restart chose again")

    monkeypatch.setattr("slt.sweeps.reference.choose_localization", no_second_choice)
    again = slt.LLCMonitor(
        regression_data(), loss_fn=gaussian_nll, every=10, store=store, reference=trained, **CHOSEN
    )
    assert again.settings_hash == first.settings_hash
    train(again, steps=20)
    again.close()
    np.testing.assert_array_equal(again.trajectory.llc_mean, first.trajectory.llc_mean)
    assert [r.finished for r in again.records] == [r.finished for r in first.records]  # read, not rerun
