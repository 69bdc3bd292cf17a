"""The chain driver on its own: schedules, records, modes, divergence and the model left untouched."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from slt.samplers import get_kernel
from slt.sampling import PosteriorSampler
from slt.sampling.driver import bind_kernel, chain_seeds
from tests.conftest import Quadratic, quadratic_loss

DUMMY = torch.zeros(6, 1)


def regression(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [0.5], [-1.0]])


def test_the_schedule_records_draws_after_burn_in_every_k_steps():
    sampler = PosteriorSampler(Quadratic(3), DUMMY, quadratic_loss)
    run = sampler.run(
        n_beta=10.0,
        localization=1.0,
        step_size=1e-3,
        num_chains=2,
        num_draws=7,
        num_burnin=5,
        num_steps_bw_draws=3,
        chain_mode="sequential",
    )
    assert run.loss_trace.shape == (2, 7) and run.burnin_loss_trace.shape == (2, 5)
    assert run.final_positions.shape == (2, 3) and (run.divergence_step == -1).all()
    assert run.chain_mode == "sequential" and run.reference_loss_trace is None
    # the chains start at w* = 0, whose loss is 0; afterwards the loss is positive
    assert run.burnin_loss_trace[:, 0].tolist() == [0.0, 0.0] and (run.loss_trace > 0).all()


def test_sequential_and_vectorized_chains_agree_in_distribution():
    model = nn.Linear(3, 1)
    data = regression()
    sampler = PosteriorSampler(model, data, "mse", batch_size=10)
    kw = dict(n_beta=20.0, localization=1.0, step_size=1e-3, num_chains=8, num_draws=300, num_burnin=100)
    seq = sampler.run(chain_mode="sequential", **kw)
    vec = sampler.run(chain_mode="vectorized", **kw)
    assert seq.chain_mode == "sequential" and vec.chain_mode == "vectorized"
    a, b = seq.loss_trace.mean(1), vec.loss_trace.mean(1)
    assert abs(a.mean() - b.mean()) < 4 * np.hypot(a.std(ddof=1), b.std(ddof=1)) / np.sqrt(8)


def test_the_same_seed_gives_the_same_chains():
    sampler = PosteriorSampler(nn.Linear(3, 1), regression(), "mse", batch_size=8)
    kw = dict(n_beta=20.0, localization=1.0, step_size=1e-3, num_chains=2, num_draws=50, seed=4)
    np.testing.assert_array_equal(sampler.run(**kw).loss_trace, sampler.run(**kw).loss_trace)
    assert not np.array_equal(sampler.run(**kw).loss_trace, sampler.run(**{**kw, "seed": 5}).loss_trace)
    assert len(set(chain_seeds(0, 16))) == 16


def test_a_chain_that_diverges_is_cut_at_its_first_non_finite_loss():
    sampler = PosteriorSampler(Quadratic(3), DUMMY, quadratic_loss)
    run = sampler.run(
        n_beta=1e3, localization=1.0, step_size=10.0, num_chains=2, num_draws=200, chain_mode="sequential"
    )
    assert run.diverged.all()
    for c in range(2):
        step = run.divergence_step[c]
        assert np.isfinite(run.loss_trace[c, :step]).all() and np.isnan(run.loss_trace[c, step:]).all()


def test_control_variate_records_the_loss_of_w_star_on_the_same_batch():
    model = nn.Linear(3, 1)
    data = regression()
    sampler = PosteriorSampler(model, data, "mse", batch_size=10)
    run = sampler.run(
        n_beta=20.0, localization=1.0, step_size=1e-9, num_chains=1, num_draws=8, control_variate=True
    )
    # at a vanishing step the chain stays at w*, so each draw's loss equals its reference loss
    np.testing.assert_allclose(run.loss_trace, run.reference_loss_trace, rtol=2e-3)
    # each reference is the loss of w* on one of the batches (4 per partition), which average to L_n(w*)
    partition = sampler.data.partition(sampler.batch_size)
    with torch.no_grad():
        batches = [partition.batch(k) for k in range(partition.num_batches)]
        at_center = [float(nn.functional.mse_loss(model(bx), by)) for bx, by in batches]
    assert all(min(abs(r - c) for c in at_center) < 1e-6 for r in run.reference_loss_trace[0])
    assert np.mean(at_center) == pytest.approx(sampler.init_loss, rel=1e-5)


def test_observables_and_gradient_energy_are_recorded_per_draw():
    sampler = PosteriorSampler(Quadratic(3), DUMMY, quadratic_loss)
    run = sampler.run(
        n_beta=10.0,
        localization=1.0,
        step_size=1e-3,
        num_chains=2,
        num_draws=6,
        observables={"norm": lambda m: m.w.norm()},
        record_grad_norm=True,
    )
    assert run.observables["norm"].shape == (2, 6) and np.isfinite(run.grad_norm_sq).all()
    np.testing.assert_allclose(run.observables["norm"] ** 2 * 4, run.grad_norm_sq, rtol=1e-6)


def test_the_model_is_never_modified():
    model = nn.Linear(3, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PosteriorSampler(model, regression(), "mse").run(
        n_beta=20.0, localization=1.0, step_size=1e-2, num_chains=2, num_draws=20
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bound_kernels_pass_through_and_refuse_extra_options():
    bound = get_kernel("rmsprop_sgld").bind({"delta": 0.5})
    assert bind_kernel(bound, None) is bound
    with pytest.raises(ValueError, match="not with a BoundKernel"):
        bind_kernel(bound, {"delta": 0.1})
    assert bind_kernel("rmsprop_sgld", None, num_burnin=12).options["adapt_steps"] == 12


def test_empty_data_and_bad_modes_are_refused():
    with pytest.raises(ValueError, match="data is empty"):
        PosteriorSampler(nn.Linear(3, 1), (torch.zeros(0, 3), torch.zeros(0, 1)), "mse")
    sampler = PosteriorSampler(Quadratic(2), DUMMY, quadratic_loss)
    with pytest.raises(ValueError, match="chain_mode must be one of"):
        sampler.run(n_beta=1.0, localization=1.0, step_size=1e-3, chain_mode="parallel")


@pytest.mark.parametrize("mode", ["sequential", "vectorized"])
def test_thinned_records_are_the_burn_in_steps_and_every_kth_step_after(mode):
    # the chains take the same steps whatever is recorded, so a thinned run keeps a subset of an unthinned one
    sampler = PosteriorSampler(nn.Linear(3, 1), regression(), "mse", batch_size=10)
    kw = dict(
        n_beta=20.0,
        localization=1.0,
        step_size=1e-3,
        num_chains=2,
        seed=3,
        chain_mode=mode,
        control_variate=True,
    )
    every = sampler.run(num_draws=5 + 3 * 70, **kw)  # windows of CHECK_EVERY steps are crossed
    thinned = sampler.run(num_draws=70, num_burnin=5, num_steps_bw_draws=3, **kw)
    np.testing.assert_array_equal(thinned.burnin_loss_trace, every.loss_trace[:, :5])
    np.testing.assert_array_equal(thinned.loss_trace, every.loss_trace[:, 5::3])
    np.testing.assert_array_equal(thinned.reference_loss_trace, every.reference_loss_trace[:, 5::3])


def test_memory_does_not_grow_with_the_number_of_steps():
    # the driver kept one tensor per step until the run returned (about 1.7 KB a step); now it keeps the
    # preallocated traces and a window of CHECK_EVERY steps
    import tracemalloc

    sampler = PosteriorSampler(nn.Linear(3, 1), regression(), "mse", batch_size=10)
    kw = dict(
        n_beta=20.0,
        localization=1.0,
        step_size=1e-4,
        num_chains=1,
        chain_mode="sequential",
        num_burnin=0,
        num_steps_bw_draws=20,
    )
    sampler.run(num_draws=10, **kw)
    peaks = []
    for draws in (50, 500):
        tracemalloc.start()
        sampler.run(num_draws=draws, **kw)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # 9000 more steps: a list of per-step tensors costs > 200 bytes a step in Python objects alone
    assert peaks[1] - peaks[0] < 200_000, peaks


def test_on_cuda_auto_vectorizes_from_three_chains_while_the_stacked_state_fits(monkeypatch):
    from slt.sampling import driver

    x = torch.randn(64, 3)
    sampler = PosteriorSampler(nn.Linear(3, 1), (x, x[:, :1]), "mse", batch_size=16)
    sampler.device = torch.device("cuda")  # the rule only; nothing runs on the device
    free = 10 * 2**20
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 4 * free))
    assert [sampler.choose_mode("auto", c) for c in (1, 2, 3, 64)] == [
        "sequential",
        "sequential",
        "vectorized",
        "vectorized",
    ]
    # 4 parameters x 8 copies x 4 bytes per chain: the share of 10 MiB holds about 20k chains, not 100k
    bytes_per_chain = driver.STACKED_COPIES * 4 * 4
    assert (
        sampler.choose_mode("auto", int(driver.VECTORIZE_CUDA_MEMORY_SHARE * free / bytes_per_chain))
        == "vectorized"
    )
    assert sampler.choose_mode("auto", 100_000) == "sequential"


def _regression(n: int, features: int = 4) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return nn.Linear(features, 1), (x, x.sum(1, keepdim=True))


def test_the_default_batch_grows_with_n_beta_up_to_its_caps():
    model, data = _regression(20_000)
    posterior = PosteriorSampler(model, data, "mse")
    assert posterior.batch_size == 256 and posterior.batch_size_source == "min(n, 256)"
    assert posterior.size_batch_for(100.0) == 256  # never below the former default
    assert posterior.size_batch_for(1000.4) == 1001
    assert posterior.batch_size_source.startswith("nβ rule")
    assert posterior.size_batch_for(2000.0) == 2000  # sized again from the default, not from the last call
    assert posterior.size_batch_for(1e6) == PosteriorSampler.AUTO_BATCH_MAX
    small = PosteriorSampler(model, (data[0][:500], data[1][:500]), "mse")
    assert small.size_batch_for(1e6) == 500  # never more than the data


def test_the_samples_per_unit_of_n_beta_can_be_set_for_a_comparison(monkeypatch):
    model, data = _regression(20_000)
    monkeypatch.setattr(PosteriorSampler, "BATCH_PER_N_BETA", 4)
    posterior = PosteriorSampler(model, data, "mse")
    assert posterior.size_batch_for(250.1) == 1001
    assert posterior.batch_size_source == "nβ rule (4·nβ/1 samples, capped at 4096)"


def test_the_default_batch_is_the_whole_data_when_it_fits_under_the_cap():
    model, data = _regression(4096)
    posterior = PosteriorSampler(model, data, "mse")
    assert posterior.size_batch_for(100.0) == 4096 == PosteriorSampler.AUTO_BATCH_MAX
    assert posterior.batch_size_source == "full data (n ≤ the batch cap 4096)"
    bigger = PosteriorSampler(model, _regression(4097)[1], "mse")
    assert bigger.size_batch_for(100.0) == 256 and bigger.batch_size_source.startswith("nβ rule")
    x = torch.randn(600, 64, generator=torch.Generator().manual_seed(0))
    mlp = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 1))  # 2,113 parameters: cap 496
    assert PosteriorSampler(mlp, (x, x[:, :1]), "mse").size_batch_for(100.0) == 256


def test_the_default_batch_is_capped_by_the_work_of_a_step():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, 64, generator=g)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 1))  # 2,113 parameters
    posterior = PosteriorSampler(model, (x, x[:, :1]), "mse")
    assert posterior.size_batch_for(5000.0) == 2**20 // 2113 == 496


def test_the_cap_counts_the_forward_pass_of_a_model_that_reuses_its_weights():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1500, 1, 8, 8, generator=g), torch.randint(0, 2, (1500,), generator=g)
    cnn = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    )  # 404 parameters: by them the cap would be 2,595 samples and the default the whole data
    posterior = PosteriorSampler(cnn, (x, y), "cross_entropy")
    work, basis = posterior.work_per_unit()
    # each 8×8 output position costs a multiply-add per weight: (54 + 324) × 64 + 12 per sample
    assert (work, basis) == (24_204, "the forward pass's FLOPs")
    assert posterior.size_batch_for(205.0) == 256
    assert (
        posterior.batch_size_source
        == "nβ rule (nβ/1 samples, capped at 256, set by the forward pass's FLOPs)"
    )
    dense = PosteriorSampler(nn.Linear(4, 1), _regression(2000)[1], "mse")
    assert dense.work_per_unit() == (5, "parameters")  # a dense model's forward pass costs 2 × its weights


def test_a_given_batch_or_a_loaders_own_is_kept():
    model, data = _regression(5000)
    given = PosteriorSampler(model, data, "mse", batch_size=64)
    assert given.size_batch_for(1e4) == 64 and given.batch_size_source == "given"
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=32)
    from_loader = PosteriorSampler(model, loader, "mse")
    assert from_loader.size_batch_for(1e4) == 32 and from_loader.batch_size_source == "the DataLoader's"


def test_token_data_sizes_the_batch_in_sequences():
    class Bigram(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(8, 8)

        def forward(self, input_ids):
            return self.table(input_ids)

    def loss(model, batch):
        logits = model(batch["input_ids"][:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, 8), batch["input_ids"][:, 1:].reshape(-1))

    ids = torch.randint(0, 8, (3000, 11), generator=torch.Generator().manual_seed(0))
    posterior = PosteriorSampler(Bigram(), {"input_ids": ids}, loss)
    units = posterior.n / posterior.num_samples
    assert units > 1
    assert posterior.size_batch_for(4000.0) == math.ceil(4000.0 / units)


def test_resolve_n_beta_gives_the_default_temperature_and_sizes_the_batch_for_it():
    model, data = _regression(20_000)
    posterior = PosteriorSampler(model, data, "mse")
    n_beta, source = posterior.resolve_n_beta(None)
    assert source == "n/log n" and n_beta == pytest.approx(20_000 / math.log(20_000))
    assert posterior.batch_size == math.ceil(n_beta)
    assert posterior.resolve_n_beta(300) == (300.0, "given") and posterior.batch_size == 300


def test_tiny_models_get_16_stacked_chains_by_default_and_others_4():
    from torch.utils.data import DataLoader, TensorDataset

    from slt.oracles.models import NormalCrossing, regression_data

    x, y = regression_data(10_000, seed=0)
    tiny = PosteriorSampler(NormalCrossing([1, 2]), (x, y), "mse")
    tiny.resolve_n_beta(None)  # batch 1086: 2 parameters x 1086 is below the threshold
    assert tiny.resolve_num_chains(None) == 16
    assert tiny.resolve_num_chains(None, "sequential") == 4  # 16 would run one after another
    assert tiny.resolve_num_chains(3) == 3
    _, data = _regression(10_000)  # 4 features
    wider = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))  # 193 parameters x 256
    assert PosteriorSampler(wider, data, "mse").resolve_num_chains(None) == 4
    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    assert PosteriorSampler(NormalCrossing([1, 2]), loader, "mse").resolve_num_chains(None) == 4
