"""Susceptibilities: devinterp 2.0.1's formula on the same draws, a closed-form Gaussian case, a tiny GPT-2.

devinterp is not a dependency: its computation (``compute_susceptibilities`` in
``devinterp/slt/susceptibilities.py`` of the 2.0.1 wheel) is transcribed below line by line, on dicts of
arrays instead of its xarray DataTrees, and slt must agree with it to float precision on identical draws.
"""

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import slt
from slt import masks
from slt.estimators.susceptibilities import (
    SAMPLING,
    SusceptibilityResult,
    susceptibilities_from_draws,
    susceptibilities_from_results,
    susceptibility,
)
from tests.tiny_transformers import tiny


def devinterp_2_0_1(wr_map, sampling_id, obs_ids):
    """devinterp 2.0.1 ``compute_susceptibilities``, its arithmetic verbatim, DataTrees replaced by dicts.

    ``wr_map[wr]`` holds ``loss_<id>`` arrays ``(chain, draw, batch, token_pos)`` and, for ``"full"``,
    ``init_loss`` ``(chain, token_pos)``. Returns ``{(wr, obs_id): sus}``, sus ``(batch, token_pos)``.
    """
    full = wr_map["full"]
    full_sampling_mean = float(full[f"loss_{sampling_id}"].mean())
    init_loss_mean = float(full["init_loss"].mean())
    full_delta = {}
    for obs_id in obs_ids:
        full_delta[obs_id] = full_sampling_mean - full[f"loss_{obs_id}"].mean(axis=(0, 1))
    results = {}
    for wr_name, ds in wr_map.items():
        if wr_name == "full":
            continue
        pt_loss = ds[f"loss_{sampling_id}"]  # (chain, draw, batch, token_pos)
        pt_mean = pt_loss.mean(axis=(-2, -1))  # (chain, draw)
        phi = pt_mean - init_loss_mean
        E_phi = float(phi.mean())
        E_phi_wr = float((phi * pt_mean).mean())
        for obs_id in obs_ids:
            probe = ds[f"loss_{obs_id}"]
            E_phi_probe = (phi[:, :, None, None] * probe).mean(axis=(0, 1))
            sus = E_phi_wr - E_phi_probe - E_phi * full_delta[obs_id]
            results[wr_name, obs_id] = sus
    return results


def random_runs(rng, chains=(3, 4, 2), draws=(20, 30, 25), tokens=5):
    """Draws of a full run and two restricted runs (different chain and draw counts), two probe sets."""
    runs = {}
    for name, c, d in zip(["full", "attn", "mlp"], chains, draws):
        common = rng.normal(
            size=(c, d, 1, 1)
        )  # a shared posterior fluctuation, so the covariances are not ~0
        runs[name] = {
            "sampling": 2.0 + 0.3 * common + 0.1 * rng.normal(size=(c, d, 6, tokens)),
            "code": 3.0 - 0.2 * common + 0.2 * rng.normal(size=(c, d, 4, tokens)),
            "prose": 1.0 + 0.5 * common + 0.1 * rng.normal(size=(c, d, 3, tokens)),
        }
    return runs


def test_equals_the_transcribed_devinterp_computation_on_the_same_draws():
    rng = np.random.default_rng(0)
    runs = random_runs(rng)
    init_loss = rng.normal(1.9, 0.01, size=(3, 5))  # devinterp's full-run init_loss, (chain, token_pos)
    wr_map = {wr: {f"loss_{k}": v for k, v in obs.items()} for wr, obs in runs.items()}
    wr_map["full"]["init_loss"] = init_loss
    reference = devinterp_2_0_1(wr_map, "sampling", ["code", "prose"])
    out = susceptibilities_from_draws(
        runs["full"], {"attn": runs["attn"], "mlp": runs["mlp"]}, init_loss=float(init_loss.mean())
    )
    assert out.components == ["attn", "mlp"] and out.probes == ["code", "prose"]
    assert out.num_draws == {"full": 60, "attn": 120, "mlp": 50}
    worst = 0.0
    for c, wr in enumerate(out.components):
        for p, probe in enumerate(out.probes):
            ref = reference[wr, probe]
            assert out.per_sample[probe][c].shape == ref.shape
            worst = max(worst, float(np.abs(out.per_sample[probe][c] - ref).max() / np.abs(ref).max()))
            # the reported value is devinterp's per-token susceptibility averaged over the probe set
            assert out.values[c, p] == pytest.approx(ref.mean(), rel=1e-12, abs=1e-15)
            direct = susceptibility(
                runs[wr]["sampling"],
                runs[wr][probe],
                runs["full"]["sampling"],
                runs["full"][probe],
                float(init_loss.mean()),
            )
            np.testing.assert_array_equal(direct, out.per_sample[probe][c])
    print(f"slt vs transcribed devinterp 2.0.1: max relative difference {worst:.2g}")
    assert worst < 1e-12
    assert np.abs(out.values).min() > 1e-3  # the comparison is not between zeros
    # three-axis losses (one loss per sample) are the same formula with a token axis of one
    flat = {run: {k: v[..., 0] for k, v in obs.items()} for run, obs in runs.items()}
    out3 = susceptibilities_from_draws(flat["full"], {"attn": flat["attn"]}, init_loss=1.9)
    wr3 = {wr: {f"loss_{k}": v[..., None] for k, v in obs.items()} for wr, obs in flat.items() if wr != "mlp"}
    wr3["full"]["init_loss"] = np.full((1, 1), 1.9)
    ref3 = devinterp_2_0_1(wr3, "sampling", ["code"])["attn", "code"][:, 0]
    np.testing.assert_allclose(out3.per_sample["code"][0], ref3, rtol=1e-12)


def test_jackknife_errors_match_the_spread_over_independent_replicates():
    """The leave-one-chain-out standard error against the actual spread of the estimate over 400 repeats."""
    rng = np.random.default_rng(1)
    estimates, errors = [], []
    for _ in range(400):
        runs = random_runs(rng, chains=(6, 6, 6), draws=(30, 30, 30), tokens=2)
        out = susceptibilities_from_draws(
            runs["full"], {"attn": runs["attn"]}, init_loss=2.0, probes=["code"]
        )
        estimates.append(out.values[0, 0])
        errors.append(out.stderr[0, 0])
        assert out.per_sample_stderr["code"].shape == (1, 4, 2)
    spread, typical = np.std(estimates), np.sqrt(np.mean(np.square(errors)))
    print(f"spread over replicates {spread:.4g}, rms jackknife error {typical:.4g}")
    assert 0.8 < typical / spread < 1.25
    one_chain = susceptibilities_from_draws(
        {k: v[:1] for k, v in runs["full"].items()}, {"attn": runs["attn"]}, init_loss=2.0
    )
    assert np.isnan(one_chain.stderr).all() and np.isfinite(one_chain.values).all()


# --- a posterior known in closed form: linear regression, Gaussian in the weights ---------------------------


def gaussian_moments(H, L0, A, b, k, cov, mean):
    """For w ~ N(mean, cov): E[L], Var[L], E[q], Cov(L, q) with L(w) = (w - mean)' H (w - mean) + L0 (a
    minimum at mean) and q(w) = w' A w - 2 b' w + k. Gaussian identities: E[q] = tr(A cov) + q(mean),
    Cov(q1, q2) = 2 tr(A1 cov A2 cov) + grad1' cov grad2."""
    e_l = np.trace(H @ cov) + L0
    var_l = 2 * np.trace(H @ cov @ H @ cov)
    e_q = np.trace(A @ cov) + mean @ A @ mean - 2 * b @ mean + k
    cov_lq = 2 * np.trace(H @ cov @ A @ cov)  # L's gradient at its minimum is 0
    return e_l, var_l, e_q, cov_lq


@pytest.mark.slow  # ~10 s: 16 chains, so the jackknife errors are tight enough to test the value
def test_a_gaussian_posterior_gives_the_closed_form_susceptibility():
    """y = x w with mean squared error and full batches: SGLD's chain is a Gaussian autoregression whose
    stationary law is known exactly (the discretized tempered posterior, step bias included), in the full
    run and in the restricted one (only w_0 free), and devinterp's formula is a polynomial in its moments."""
    g = torch.Generator().manual_seed(0)
    n = 100
    mix = torch.tensor([[1.0, 0.6], [0.0, 0.8]], dtype=torch.float64)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) @ mix
    noise = 0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-0.5]], dtype=torch.float64) + noise
    model = nn.Linear(2, 1, bias=False).double()
    w_star = torch.linalg.lstsq(x, y).solution  # the exact minimum, so L_n(w) - L_n(w*) is a quadratic
    with torch.no_grad():
        model.weight.copy_(w_star.T)
    # two probe sets, fitted exactly at w*: one far more sensitive to w_0 than the training data, one that
    # w_0 barely touches (only w_1 moves its loss, and w_1 is held at w* in the restricted run)
    steep = torch.tensor([[3.0, 0.0], [-2.5, 0.5], [2.0, -1.0]], dtype=torch.float64)
    aside = torch.tensor([[0.0, 1.0], [0.0, -1.5], [0.2, 1.0]], dtype=torch.float64)
    probes = {"steep": (steep, steep @ w_star), "aside": (aside, aside @ w_star)}
    n_beta, gamma, step = 40.0, 1.0, 4e-3  # step x largest precision 0.52: a step bias of ~15%, modelled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", slt.SLTWarning)
        out = slt.susceptibilities(
            model,
            (x, y),
            probes,
            {"w0": {"weight": torch.tensor([[True, False]])}},
            loss_fn="mse",
            sampling_probe=(x, y),
            n_beta=n_beta,
            localization=gamma,
            step_size=step,
            num_chains=16,
            num_draws=300,
            num_burnin=100,
            num_steps_bw_draws=2,
            batch_size=n,
            chain_mode="vectorized",
            seed=0,
            progress=False,
        )
    X, Y, w = x.numpy(), y.numpy()[:, 0], w_star.numpy()[:, 0]
    H = X.T @ X / n  # L_n(w) = (w - w*)' H (w - w*) + L0
    L0 = float(np.mean((X @ w - Y) ** 2))
    # SGLD: w <- w - (step/2) P (w - w*) + sqrt(step) (xi_t + xi_t+1)/2, P = 2 nβ H + γ I: with the
    # Leimkuhler-Matthews noise the stationary covariance is P^-1 exactly, the tempered posterior's
    # (the Euler step's would be step (I - M^2)^-1, M = I - (step/2) P)
    P = 2 * n_beta * H + gamma * np.eye(2)
    full_cov = np.linalg.inv(P)
    restricted_cov = np.zeros((2, 2))
    restricted_cov[0, 0] = 1 / P[0, 0]
    exact = {}
    for name, (xp, yp) in probes.items():
        A, b = xp.numpy().T @ xp.numpy() / 3, xp.numpy().T @ yp.numpy()[:, 0] / 3
        k = float(np.mean(yp.numpy() ** 2))
        e_l_r, var_l_r, e_q_r, cov_lq_r = gaussian_moments(H, L0, A, b, k, restricted_cov, w)
        e_l_f, _, e_q_f, _ = gaussian_moments(H, L0, A, b, k, full_cov, w)
        # E_r[phi L] - E_r[phi q] - E_r[phi] (E_f[L] - E_f[q]), phi = L - L0
        e_phi = e_l_r - L0
        exact[name] = (var_l_r + e_phi * e_l_r) - (cov_lq_r + e_phi * e_q_r) - e_phi * (e_l_f - e_q_f)
    for p, name in enumerate(out.probes):
        value, se = out.values[0, p], out.stderr[0, p]
        print(f"Gaussian, probe {name}: {value:.4g} ± {se:.2g} (jackknife), exact {exact[name]:.4g}")
        assert abs(exact[name]) > 5 * se  # the sign is decided by the data
        assert abs(value - exact[name]) < 4 * se
    # the sign: negative for the probe that w_0 moves more than it moves the training loss, positive for
    # the one it leaves alone
    assert out.values[0, 0] < 0 < out.values[0, 1]
    assert out.init_loss == pytest.approx(L0, rel=1e-9)


# --- a tiny GPT-2 end to end ------------------------------------------------------------------------------


def loss_fn(model, batch):
    return model(input_ids=batch[0], labels=batch[0]).loss


@pytest.fixture(scope="module")
def gpt2_run():
    model = tiny("gpt2", heads=2).train()
    start = torch.randint(0, 32, (32, 1), generator=torch.Generator().manual_seed(0))
    ids = (start + torch.arange(8)) % 32  # counting modulo 32
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        loss_fn(model, (ids,)).backward()
        opt.step()
    model.eval()
    g = torch.Generator().manual_seed(1)
    probes = {
        "counting": (torch.randint(0, 32, (6, 1), generator=g) + torch.arange(8)) % 32,
        "random": torch.randint(0, 32, (6, 8), generator=g),
    }
    components = {"L0H0": masks.head(model, 0, 0), "L1H1": masks.head(model, 1, 1)}
    model.transformer.wpe.weight.grad = torch.full_like(model.transformer.wpe.weight, 2.0)
    before = copy.deepcopy(model.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = slt.susceptibilities(
            model,
            {"input_ids": ids, "labels": ids},
            probes,
            components,
            num_chains=2,
            num_draws=40,
            num_burnin=40,
            step_size=0.003,
            seed=0,
            progress=False,
        )
    return model, ids, probes, components, before, out, caught


def test_tiny_gpt2_two_heads_two_probe_sets(gpt2_run):
    model, ids, probes, components, before, out, caught = gpt2_run
    print(out)
    print(out.to_pandas().to_string())
    assert out.components == ["L0H0", "L1H1"] and out.probes == ["counting", "random"]
    assert out.values.shape == out.stderr.shape == (2, 2)
    assert np.isfinite(out.values).all() and (out.stderr > 0).all()
    # random tokens, which the model predicts badly and whose loss the heads move most, are more negatively
    # susceptible than sequences of the training language, by more than their errors, for both heads
    gap = out.values[:, 0] - out.values[:, 1]
    assert (gap > 3 * np.hypot(out.stderr[:, 0], out.stderr[:, 1])).all()
    # per token: 6 probe sequences, 7 predicted positions each, recorded at every draw of every run
    for run in out.llc.values():
        assert all(run.observables[name].shape == (2, 40, len(p), 7) for name, p in probes.items())
    assert out.per_sample["counting"].shape == out.per_sample["random"].shape == (2, 6, 7)
    np.testing.assert_allclose(
        out.values, [[out.per_sample[p][c].mean() for p in out.probes] for c in range(2)]
    )
    # the runs: one unrestricted, one per head, sampling exactly the head's weights, in tokens
    assert sorted(out.llc) == ["L0H0", "L1H1", "full"]
    assert out.llc["full"].settings.num_params == sum(p.numel() for p in model.parameters())
    for name, mask in components.items():
        assert out.llc[name].settings.num_params == sum(int(m.sum()) for m in mask.values())
        assert out.llc[name].settings.n_unit == "tokens" and out.llc[name].n == 32 * 7
    # the sampling task: the per-token losses of the training sequences (32 < 96: all of them) ...
    sampled = out.llc["full"].observables[SAMPLING]
    assert sampled.shape == (2, 40, 32, 7)
    # ... whose mean at w* is L_n(w*): the same loss as the model's own
    with torch.no_grad():
        own = float(loss_fn(model, (ids,)))
    assert out.init_loss == pytest.approx(own, rel=1e-5)
    # the same draws through the transcribed devinterp computation give the same numbers
    wr_map = {
        run: {f"loss_{k}": np.asarray(v, dtype=float) for k, v in result.observables.items()}
        for run, result in out.llc.items()
    }
    wr_map["full"]["init_loss"] = np.full((1, 7), out.init_loss)
    reference = devinterp_2_0_1(wr_map, SAMPLING, ["counting", "random"])
    for c, comp in enumerate(out.components):
        for probe in out.probes:
            np.testing.assert_allclose(
                out.per_sample[probe][c], reference[comp, probe], rtol=1e-9, atol=1e-12
            )
    # the model is as it was
    assert not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(model.transformer.wpe.weight.grad, torch.full_like(model.transformer.wpe.weight, 2.0))
    # the runs' warnings come back once per class, naming the runs, and stay on the result
    assert len({w.category for w in caught}) == len(caught)
    for w in caught:
        assert issubclass(w.category, slt.SLTWarning) and "runs raised" in str(w.message)
    assert all(p.message.startswith("run '") for p in out.problems)


def test_exports_plot_and_json(gpt2_run, tmp_path):
    out = gpt2_run[5]
    frame = out.to_pandas()
    assert list(frame.columns) == ["component", "probe", "susceptibility", "stderr"]
    assert frame["susceptibility"].tolist() == out.values.ravel().tolist()
    data = out.to_xarray()
    assert data["susceptibility"].sel(component="L1H1", probe="random") == out.values[1, 1]
    assert data["stderr"].dims == ("component", "probe")
    fig = out.plot()
    assert len(fig.axes) == 2 and [a.get_title() for a in fig.axes] == ["L0H0", "L1H1"]
    assert len(fig.axes[0].patches) == 2  # one bar per probe set
    path = tmp_path / "sus.json"
    out.to_json(path)
    json.loads(path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", slt.SLTWarning)  # the runs' problems are emitted again on reload
        back = SusceptibilityResult.from_json(path)
    np.testing.assert_array_equal(back.values, out.values)
    np.testing.assert_array_equal(back.per_sample["random"], out.per_sample["random"])
    assert back.components == out.components and back.problems == out.problems and back.llc == {}


def test_bad_input_is_refused_with_a_message(gpt2_run):
    model, ids, probes, components = gpt2_run[:4]
    data = {"input_ids": ids, "labels": ids}
    call = dict(num_chains=1, num_draws=2, step_size=1e-3, progress=False)
    with pytest.raises(ValueError, match="no probe sets"):
        slt.susceptibilities(model, data, {}, components, **call)
    with pytest.raises(ValueError, match="no components"):
        slt.susceptibilities(model, data, probes, {}, **call)
    with pytest.raises(ValueError, match="'full' is the unrestricted run"):
        slt.susceptibilities(model, data, probes, {"full": components["L0H0"]}, **call)
    with pytest.raises(ValueError, match="'sampling' names the sampling task"):
        slt.susceptibilities(model, data, {"sampling": probes["random"]}, components, **call)
    with pytest.raises(TypeError, match="sets mask= itself"):
        slt.susceptibilities(model, data, probes, components, mask=components["L0H0"], **call)
    with pytest.raises(TypeError, match="probe set 'bad' must be a tensor"):
        slt.susceptibilities(model, data, {"bad": [[1, 2, 3]]}, components, **call)
    with pytest.raises(ValueError, match='"causal_lm" expects a probe set'):  # found at w*, before sampling
        slt.susceptibilities(model, data, {"floats": torch.randn(3, 8)}, components, **call)
    mlp = nn.Linear(2, 1)
    xy = (torch.randn(8, 2), torch.randn(8, 1))
    with pytest.raises(ValueError, match="pass per_sample_loss="):
        slt.susceptibilities(
            mlp, xy, {"p": xy}, {"w": ["weight"]}, loss_fn=lambda m, b: m(b[0]).sum(), **call
        )
    with pytest.raises(ValueError, match="pass sampling_probe="):
        slt.susceptibilities(
            mlp, torch.utils.data.TensorDataset(*xy), {"p": xy}, {"w": ["weight"]}, loss_fn="mse", **call
        )
    # the pure functions
    rng = np.random.default_rng(0)
    runs = random_runs(rng)
    with pytest.raises(ValueError, match="needs shape"):
        susceptibility(
            np.zeros((2, 3)), runs["attn"]["code"], runs["full"]["sampling"], runs["full"]["code"], 1.0
        )
    with pytest.raises(ValueError, match="same probe set in both"):
        susceptibility(
            runs["attn"]["sampling"],
            runs["attn"]["code"],
            runs["full"]["sampling"],
            runs["full"]["prose"],
            1.0,
        )
    with pytest.raises(ValueError, match="both must come from the same draws"):
        susceptibility(
            runs["attn"]["sampling"], runs["mlp"]["code"], runs["full"]["sampling"], runs["full"]["code"], 1.0
        )
    with pytest.raises(ValueError, match="init_loss must be finite"):
        susceptibility(
            runs["attn"]["sampling"],
            runs["attn"]["code"],
            runs["full"]["sampling"],
            runs["full"]["code"],
            math.nan,
        )
    nan = {k: v.copy() for k, v in runs["attn"].items()}
    nan["code"][1, 3] = np.nan
    with pytest.raises(ValueError, match=r"attn\['code'\] is not all finite"):
        susceptibilities_from_draws(runs["full"], {"attn": nan}, init_loss=1.0)
    with pytest.raises(ValueError, match=r"run 'attn' lacks the observables \['prose'\]"):
        susceptibilities_from_draws(
            runs["full"], {"attn": {k: runs["attn"][k] for k in ("sampling", "code")}}, init_loss=1.0
        )
    with pytest.raises(ValueError, match="'full' names the unrestricted run"):
        susceptibilities_from_draws(runs["full"], {"full": runs["attn"]}, init_loss=1.0)
    with pytest.raises(ValueError, match="no components"):
        susceptibilities_from_draws(runs["full"], {}, init_loss=1.0)
    with pytest.raises(TypeError, match="must be an slt.LLCResult"):
        susceptibilities_from_results(gpt2_run[5].llc["full"], {"attn": runs["attn"]})
