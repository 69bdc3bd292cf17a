"""Bayesian influence functions: against np.corrcoef / np.cov over the same stacked draws."""

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import slt
from slt.sampling import PerSampleLoss
from slt.warnings import ConstantLossWarning

pytestmark = pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")

FAST = dict(num_chains=3, num_draws=40, num_burnin=20, step_size=1e-3, progress=False)


@pytest.fixture(scope="module")
def sampled():
    """An LLC run of a small MLP with the per-sample losses of 8 probe samples (sample 7 repeats sample 0)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    y = torch.tanh(x @ torch.tensor([[1.0], [-2.0], [0.5]])) + 0.1 * torch.randn(200, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    probe = (torch.cat([x[:7], x[:1]]), torch.cat([y[:7], y[:1]]))
    result = slt.estimate_llc(
        model, (x, y), loss_fn="mse", observables={"losses": PerSampleLoss(probe)}, **FAST
    )
    return result


def stacked(result):
    losses = result.observables["losses"]
    return losses.reshape(-1, losses.shape[2])  # (chains * draws, samples): the draws of every chain stacked


def test_bif_equals_np_corrcoef_over_the_stacked_draws(sampled):
    out = slt.bif(sampled)
    brute = np.corrcoef(stacked(sampled), rowvar=False)
    assert out.values.shape == (8, 8) and out.kind == "correlation"
    assert out.num_observations == 3 * 40 and out.chains.tolist() == [0, 1, 2]
    diff = np.abs(out.values - brute).max()
    print(f"BIF vs np.corrcoef: max abs diff {diff:.3g}")
    assert diff < 1e-12
    assert out.values[0, 7] == pytest.approx(1.0)  # a repeated sample is perfectly correlated with itself
    assert np.ptp(out.values[np.triu_indices(7, 1)]) > 0.1  # the influences differ from pair to pair
    assert not out.constant.any() and out.problems == ()


def test_covariance_equals_np_cov(sampled):
    out = slt.bif(sampled, covariance=True)
    assert out.kind == "covariance"
    np.testing.assert_allclose(out.values, np.cov(stacked(sampled), rowvar=False), rtol=1e-12, atol=1e-18)


def test_diverged_chains_are_left_out(sampled):
    import copy

    result = copy.deepcopy(sampled)
    result.diagnostics.diverged[1] = True
    out = slt.bif(result)
    kept = result.observables["losses"][[0, 2]].reshape(-1, 8)
    assert out.chains.tolist() == [0, 2] and out.num_observations == 80
    np.testing.assert_allclose(out.values, np.corrcoef(kept, rowvar=False), atol=1e-12)
    losses = result.observables["losses"].copy()
    losses[1, 30:] = np.nan
    with pytest.raises(ValueError, match=r"chains \[1\] are not all finite .*pass the LLCResult"):
        slt.bif(losses)


def test_per_token_bif_holds_every_token_pair():
    rng = np.random.default_rng(0)
    losses = rng.normal(size=(2, 50, 3, 4)) + rng.normal(size=(2, 50, 1, 1))  # a shared component
    out = slt.bif(losses)
    assert out.values.shape == (3, 3, 4, 4) and out.per_token
    brute = np.corrcoef(losses.reshape(100, 12), rowvar=False)  # column s * 4 + t
    for i, j, s, t in np.ndindex(3, 3, 4, 4):
        assert out.values[i, j, s, t] == pytest.approx(brute[i * 4 + s, j * 4 + t], abs=1e-12)
    per_sequence = slt.bif(losses, reduce_tokens=True)
    np.testing.assert_allclose(per_sequence.values, np.corrcoef(losses.mean(3).reshape(100, 3), rowvar=False))
    frame = out.to_pandas()
    assert len(frame) == 3 * 3 * 4 * 4 and set(frame.columns) >= {"sample_1", "token_2", "bif"}


def test_a_constant_loss_is_warned_about_and_set_to_zero():
    # only the weight is sampled; a probe sample with x = 0 has loss (b - y)^2 whatever the weight
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    x, y = torch.randn(100, 2), torch.randn(100, 1)
    with torch.no_grad():  # at the least-squares fit
        solution = torch.linalg.lstsq(torch.cat([x, torch.ones(100, 1)], 1), y).solution
        model.weight.copy_(solution[:2].T)
        model.bias.copy_(solution[2])
    probe = (torch.cat([x[:3], torch.zeros(1, 2)]), y[:4])
    with pytest.warns(ConstantLossWarning, match=r"samples 3 did not vary over the 80 draws.*set to 0"):
        out = slt.estimate_bif(
            model,
            (x, y),
            probe,
            loss_fn="mse",
            mask=["weight"],
            num_chains=2,
            num_draws=40,
            num_burnin=10,
            step_size=1e-3,
            progress=False,
        )
    assert out.constant.tolist() == [False, False, False, True]
    assert np.isfinite(out.values).all() and (out.values[3] == 0).all() and (out.values[:, 3] == 0).all()
    assert out.values[0, 0] == pytest.approx(1.0)
    assert [p.category for p in out.problems] == ["ConstantLossWarning"]
    assert isinstance(out.llc, slt.LLCResult) and out.observable == "per_sample_loss"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a covariance of a constant is 0 by definition: no warning
        cov = slt.bif(out.llc, covariance=True)
    assert (cov.values[3] == 0).all() and cov.constant[3]


def test_exports_plot_and_json(sampled, tmp_path):
    out = slt.bif(sampled)
    frame = out.to_pandas()
    assert frame.shape == (8, 8) and frame.loc[0, 7] == pytest.approx(1.0)
    array = out.to_xarray()
    assert array.dims == ("sample_1", "sample_2") and array.attrs["kind"] == "correlation"
    fig = out.plot()
    fig.savefig(tmp_path / "bif.png")
    assert (tmp_path / "bif.png").stat().st_size > 1000
    back = slt.BIFResult.from_dict(json.loads(json.dumps(out.to_dict())))
    np.testing.assert_array_equal(back.values, out.values)
    assert back.llc.mean == sampled.mean and back.constant.dtype == bool
    assert "correlation, 8x8" in repr(out)


def test_bad_input_is_refused_with_a_remedy(sampled):
    with pytest.raises(ValueError, match=r"need shape \(chains, draws, samples\).*got \(3, 40\)"):
        slt.bif(np.zeros((3, 40)))
    with pytest.raises(ValueError, match="at least two draws in all, got 1"):
        slt.bif(np.zeros((1, 1, 4)))
    with pytest.raises(ValueError, match=r"no observable named 'nope'; the result has \['losses'\]"):
        slt.bif(sampled, observable="nope")
    with pytest.raises(ValueError, match="no per-sample observable.*PerSampleLoss"):
        slt.bif(slt.LLCResult.from_dict({**sampled.to_dict(), "observables": {}}))
    two = slt.LLCResult.from_dict(sampled.to_dict())
    two.observables["again"] = two.observables["losses"]
    with pytest.raises(
        ValueError,
        match=r"several observables could hold per-sample losses \(\['losses', 'again'\]\); name one",
    ):
        slt.bif(two)
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="pass per_sample_loss="):
        slt.estimate_bif(nn.Linear(3, 1), (x, x[:, :1]), (x, x[:, :1]), loss_fn=lambda m, b: m(b[0]).mean())
