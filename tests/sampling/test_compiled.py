"""Compiled gradients: eager chains' numbers, one compiled function per architecture, a clean fallback."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import slt
from slt.sampling import PosteriorSampler
from slt.sampling import compiled as compiled_module

RUN = dict(n_beta=50.0, localization=10.0, step_size=1e-3, num_chains=2, num_draws=60, num_burnin=20, seed=3)


def net(seed: int) -> nn.Module:
    """A small regression network with a batch-norm layer (its buffers must follow each checkpoint)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 1))
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(96, 1, generator=g)


def trained(seed: int, data) -> nn.Module:
    """``net(seed)`` fitted to ``data`` (in eval mode: the batch-norm layer is a fixed affine map)."""
    model = net(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(400):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(data[0]), data[1]).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model


def test_compiled_chains_match_eager_ones_and_checkpoints_share_one_compiled_function(data):
    compiled_module.clear_compiled_cache()
    first, second = net(0), net(1)  # the same architecture, different weights and running statistics
    eager_runs = [
        PosteriorSampler(m, data, "mse", batch_size=32).run(**RUN, chain_mode="sequential")
        for m in (first, second)
    ]
    compiled_runs = []
    for model in (first, second):
        sampler = PosteriorSampler(model, data, "mse", batch_size=32, compile=True)
        compiled_runs.append(sampler.run(**RUN, chain_mode="sequential"))
        assert sampler.compiled is not None
        assert sampler.compiled._entry is next(iter(compiled_module._CACHE.values()))
    assert len(compiled_module._CACHE) == 1  # the second checkpoint reused the first one's function
    for eager, compiled in zip(eager_runs, compiled_runs):
        assert compiled.compile == "compiled" and eager.compile == "off"
        # the same noise and batches: the traces differ only by floating-point reordering
        np.testing.assert_allclose(compiled.loss_trace, eager.loss_trace, rtol=1e-4)
    # and the second checkpoint ran on its own weights and buffers, not the template's
    assert not np.allclose(compiled_runs[0].loss_trace, compiled_runs[1].loss_trace, rtol=1e-2)


def test_vectorized_compiled_chains_match_eager_vectorized_ones(data):
    model = net(2)
    eager = PosteriorSampler(model, data, "mse", batch_size=32).run(**RUN, chain_mode="vectorized")
    sampler = PosteriorSampler(model, data, "mse", batch_size=32, compile=True)
    compiled = sampler.run(**RUN)  # "auto": compiled chains of a small model on in-memory data are stacked
    assert compiled.chain_mode == "vectorized" and compiled.compile == "compiled"
    np.testing.assert_allclose(compiled.loss_trace, eager.loss_trace, rtol=1e-4)


def lying_loss(model, batch):
    """A loss that is twice as large when traced by torch.compile: the check must catch it."""
    x, y = batch
    loss = ((model(x) - y) ** 2).mean()
    return loss * 2 if torch.compiler.is_compiling() else loss


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # short chains
def test_a_compiled_gradient_that_disagrees_falls_back_to_eager_and_says_why(data):
    model = trained(3, data)
    eager = slt.estimate_llc(
        model, data, loss_fn=lying_loss, step_size=1e-3, num_draws=50, num_chains=2, progress=False
    )
    result = slt.estimate_llc(
        model,
        data,
        loss_fn=lying_loss,
        step_size=1e-3,
        num_draws=50,
        num_chains=2,
        progress=False,
        compile=True,
    )
    assert result.settings.compile.startswith("eager: the compiled gradient disagrees")
    assert result.mean == eager.mean  # the chains reran eagerly, from the start
    assert eager.settings.compile == "off"


def test_train_mode_is_not_compiled_and_says_why(data):
    sampler = PosteriorSampler(net(4), data, "mse", batch_size=32, model_mode="train", compile=True)
    run = sampler.run(**RUN)
    assert run.compile.startswith("eager: model_mode='train'")


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # short chains
def test_estimate_llc_with_compile_leaves_the_model_and_global_rng_untouched(data):
    model = trained(5, data).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch_state = torch.get_rng_state()
    result = slt.estimate_llc(
        model, data, loss_fn="mse", step_size=1e-3, num_draws=40, num_chains=2, progress=False, compile=True
    )
    assert result.settings.compile == "compiled"
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch_state, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())


def test_batches_of_unequal_size_recompile_quietly_and_match_eager(data):
    x, y = data[0][:95], data[1][:95]  # three batches of 32, 32 and 31 samples
    model = net(6)
    for mode in ("sequential", "vectorized"):  # stacked chains share one size class per step
        run = dict(RUN, chain_mode=mode)
        eager = PosteriorSampler(model, (x, y), "mse", batch_size=32).run(**run)
        compiled = PosteriorSampler(model, (x, y), "mse", batch_size=32, compile=True).run(**run)
        assert compiled.chain_mode == mode and compiled.compile == "compiled"
        np.testing.assert_allclose(compiled.loss_trace, eager.loss_trace, rtol=1e-4)


def test_each_architecture_has_dynamos_recompile_limit_to_itself_and_untraced_runs_say_eager(data):
    """Dynamo runs a function untraced, silently, once it has compiled ``recompile_limit`` versions of its
    code. Every architecture's function has a code object of its own (before, all shared functorch's, and
    the ninth architecture of a process ran eagerly labelled "compiled"); past the limit the run says so."""
    with torch._dynamo.config.patch(recompile_limit=1):
        compiled_module.clear_compiled_cache()
        run = dict(RUN, chain_mode="sequential")
        for width in (5, 7):  # with one shared code object the second would exceed a limit of one version
            torch.manual_seed(width)
            model = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 1))
            assert (
                PosteriorSampler(model, data, "mse", batch_size=32, compile=True).run(**run).compile
                == "compiled"
            )
        # a second batch shape (32 and 31 samples) is a second version of one function: past a limit of one
        x, y = data[0][:95], data[1][:95]
        eager = PosteriorSampler(model, (x, y), "mse", batch_size=32).run(**run)
        untraced = PosteriorSampler(model, (x, y), "mse", batch_size=32, compile=True).run(**run)
        assert untraced.compile.startswith("eager: torch.compile ran the function untraced")
        assert "recompile_limit = 1" in untraced.compile
        np.testing.assert_allclose(untraced.loss_trace, eager.loss_trace, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # short chains
def test_the_step_size_pilot_shares_the_runs_compiled_function(data):
    """On a compiled sampler the pilot that sizes the step runs as many chains as the run, so one
    compilation serves both (before: two pilot chains compiled a function of their own, 28 s of a 65 s
    first compiled estimate on the grokking example's MLP)."""
    from torch._dynamo.utils import counters

    model = trained(12, data)
    compiled_module.clear_compiled_cache()  # a function of its own, compiled afresh
    before = counters["stats"]["unique_graphs"]
    result = slt.estimate_llc(
        model, data, loss_fn="mse", batch_size=32, num_draws=40, num_burnin=10, seed=0, progress=False,
        compile=True,
    )  # fmt: skip
    assert result.settings.compile == "compiled" and result.settings.step_size_source.startswith("auto")
    assert counters["stats"]["unique_graphs"] - before == 1  # 96 samples: one batch shape, one chain count


def test_estimate_dos_runs_its_full_data_pass_compiled_with_eager_numbers(data):
    model = trained(7, data)
    settings = dict(
        loss_fn="mse",
        temperatures=[10.0, 30.0, 100.0],
        num_chains=2,
        num_draws=40,
        num_burnin=40,
        num_bootstrap=0,
        progress=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", slt.SLTWarning)  # a ladder this short warns of its round trips
        eager = slt.estimate_dos(model, data, **settings)
        compiled = slt.estimate_dos(model, data, **settings, compile=True)
    assert eager.settings.sampler == "mala" and eager.settings.compile == "off"
    assert compiled.settings.compile == "compiled"
    np.testing.assert_allclose(compiled.rung_llc, eager.rung_llc, rtol=1e-3)


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # fixed, short chains
def test_stacked_compiled_estimates_agree_with_eager_ones_and_repeat_exactly(data):
    model = trained(8, data)
    settings = dict(
        loss_fn="mse",
        localization=10.0,
        step_size=1e-3,
        num_chains=4,  # 4 eager chains run one after another
        num_draws=400,
        num_burnin=100,
        progress=False,
    )
    eager = slt.estimate_llc(model, data, **settings)
    compiled = slt.estimate_llc(model, data, **settings, compile=True)
    again = slt.estimate_llc(model, data, **settings, compile=True)
    assert eager.settings.chain_mode == "sequential" and compiled.settings.chain_mode == "vectorized"
    # other noise (stacked chains draw it in another order): agreement within sampling error
    assert abs(compiled.mean - eager.mean) < 4 * np.hypot(compiled.stderr, eager.stderr)
    # the same seed in the same mode: the same numbers
    np.testing.assert_array_equal(again.loss_trace, compiled.loss_trace)


class ModularMLP(nn.Module):
    """The grokking example's architecture, small: embed both operands, add, GELU, read out the sum."""

    def __init__(self, p: int, embed: int = 8, hidden: int = 32):
        super().__init__()
        self.embed = nn.Embedding(p, embed)
        self.left = nn.Linear(embed, hidden)
        self.right = nn.Linear(embed, hidden)
        self.out = nn.Linear(hidden, p)

    def forward(self, pairs):
        e = self.embed(pairs)
        return self.out(nn.functional.gelu(self.left(e[:, 0]) + self.right(e[:, 1])))


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # short chains
def test_a_classifier_at_near_zero_loss_runs_compiled():
    """At a memorized minimum the gradient is of the order of float32 rounding: compiled and eager passes
    differ by more than 1e-3 relative (0.0028 measured here, which made slt fall back to eager before),
    while each is as close as the other to a float64 pass. The compiled pass must be kept."""
    compiled_module.clear_compiled_cache()
    p = 13
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1)], 1)
    y = (x[:, 0] + x[:, 1]) % p
    torch.manual_seed(0)
    model = ModularMLP(p)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(1500):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert nn.functional.cross_entropy(model(x), y).item() < 1e-4
    result = slt.estimate_llc(
        model, (x, y), loss_fn="cross_entropy", step_size=1e-5, num_draws=40, num_burnin=10, num_chains=2,
        progress=False, compile=True,
    )  # fmt: skip
    assert result.settings.compile == "compiled"
    # a loss that lies under compilation still falls back at such a minimum (the float64 pass catches it)
    lying = slt.estimate_llc(
        model, (x, y), loss_fn=lying_classifier_loss, step_size=1e-5, num_draws=40, num_burnin=10,
        num_chains=2, progress=False, compile=True,
    )  # fmt: skip
    assert lying.settings.compile.startswith("eager: the compiled gradient disagrees")
    assert "further than the eager pass from a float64 pass" in lying.settings.compile


def lying_classifier_loss(model, batch):
    """Cross-entropy that is ten times as large when traced by torch.compile: its gradient is off by 900%,
    far beyond the eager pass's own rounding (a few percent of the gradient at such a minimum; a lie smaller
    than that rounding cannot be told from it, and changes the numbers no more than the rounding does)."""
    x, y = batch
    loss = nn.functional.cross_entropy(model(x), y)
    return loss * 10 if torch.compiler.is_compiling() else loss


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # short chains
def test_the_default_compiles_only_long_runs_whose_compiled_chains_would_stack(data, monkeypatch):
    """``compile=None``: a given length of at least AUTO_COMPILE_MIN_STEPS steps per chain runs compiled
    (stacked), a shorter one eagerly, and ``compile=False`` never compiles."""
    from slt.estimators import llc as llc_module

    monkeypatch.setattr(llc_module, "AUTO_COMPILE_MIN_STEPS", 200)
    model = trained(8, data)
    settings = dict(loss_fn="mse", localization=10.0, step_size=1e-3, num_chains=4, seed=1, progress=False)
    long = slt.estimate_llc(model, data, num_draws=150, num_burnin=50, **settings)
    short = slt.estimate_llc(model, data, num_draws=149, num_burnin=50, **settings)
    never = slt.estimate_llc(model, data, num_draws=150, num_burnin=50, compile=False, **settings)
    assert (long.settings.compile, long.settings.chain_mode) == ("compiled", "vectorized")
    assert (short.settings.compile, short.settings.chain_mode) == ("off", "sequential")
    assert (never.settings.compile, never.settings.chain_mode) == ("off", "sequential")
    # one chain after another: compiling would not stack them, so a long run stays eager
    alone = slt.estimate_llc(model, data, num_draws=150, num_burnin=50, chain_mode="sequential", **settings)
    assert alone.settings.compile == "off"


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # a budget of a few segments
def test_a_long_automatic_run_switches_to_compiled_chains_mid_run_and_keeps_its_estimate(data, monkeypatch):
    from slt.estimators import llc as llc_module

    monkeypatch.setattr(llc_module, "AUTO_COMPILE_MIN_STEPS", 1000)
    model = trained(8, data)
    settings = dict(loss_fn="mse", localization=10.0, num_chains=4, seed=2, max_steps=3500, progress=False)
    switched = slt.estimate_llc(model, data, **settings)
    again = slt.estimate_llc(model, data, **settings)
    eager = slt.estimate_llc(model, data, compile=False, **settings)
    # segments of 500, 1000 and 2000 steps: the second is the first that long, after 500 steps
    assert switched.checks.segment_steps[:2] == [500, 1000]
    assert switched.settings.compile == "compiled from step 500"
    assert switched.settings.chain_mode == "vectorized" and eager.settings.chain_mode == "sequential"
    assert eager.settings.compile == "off"
    # stacked chains draw their noise in another order: agreement within sampling error, not equality
    assert abs(switched.mean - eager.mean) < 4 * np.hypot(switched.stderr, eager.stderr)
    # the rule counts steps, not seconds: the same seed gives the same numbers
    np.testing.assert_array_equal(again.loss_trace, switched.loss_trace)


def test_compile_pays_only_where_compiled_chains_would_stack(data):
    model = trained(8, data)
    sampler = PosteriorSampler(model, data, "mse")
    assert sampler.compile_pays(4)
    assert not sampler.compile_pays(1)  # nothing to stack
    assert not sampler.compile_pays(4, chain_mode="sequential")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=32)
    assert not PosteriorSampler(model, loader, "mse").compile_pays(4)  # stacked chains need in-memory data
    assert not PosteriorSampler(model, data, "mse", model_mode="train").compile_pays(4)


@pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")  # short chains
def test_models_alike_but_for_a_plain_attribute_never_share_a_compiled_function():
    """Two normal crossings differ only in ``powers``, a plain attribute: same parameters, buffers and
    repr. A compiled function kept for the first must not serve the second (it once did, silently:
    w1²w2⁴ came out 0.376 against 0.216 eagerly, the value of w1²w2²)."""
    from slt.oracles import NormalCrossing, regression_data

    compiled_module.clear_compiled_cache()
    x, y = regression_data(400, seed=0)
    settings = dict(
        loss_fn="mse",
        n_beta=50.0,
        step_size=1e-3,
        num_chains=4,
        num_draws=100,
        seed=0,
        chain_mode="vectorized",
    )
    for powers in ([1, 1], [1, 2]):
        eager = slt.estimate_llc(NormalCrossing(powers), (x, y), compile=False, progress=False, **settings)
        compiled = slt.estimate_llc(NormalCrossing(powers), (x, y), compile=True, progress=False, **settings)
        assert compiled.settings.compile == "compiled"
        assert compiled.mean == pytest.approx(eager.mean, rel=1e-4)


def test_a_cached_compiled_function_is_checked_against_each_new_models_eager_pass(data, monkeypatch):
    """A difference the signature cannot see (here: a signature made blind) is caught by the first call on
    each new sampler, which then runs eagerly and says why."""
    compiled_module.clear_compiled_cache()
    model = trained(8, data)
    PosteriorSampler(model, data, "mse", compile=True).run(**RUN)
    (key,) = compiled_module._CACHE
    other = trained(9, data)  # same architecture, other weights: shares the entry and must still match
    run = PosteriorSampler(other, data, "mse", compile=True).run(**RUN)
    assert run.compile == "compiled"
    monkeypatch.setattr(compiled_module, "_signature", lambda fm: key)  # force a wrong sharing
    wrong = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Sigmoid(), nn.Linear(6, 1)).eval()
    run = PosteriorSampler(wrong, data, "mse", compile=True).run(**RUN)
    assert run.compile.startswith("eager: the compiled function")


def test_the_signature_reads_odd_attributes_without_failing():
    """A repr that raises, a self-containing list, a sparse tensor: compared by identity, never an error."""

    class Odd:
        def __repr__(self):
            raise RuntimeError("no repr")

    def odd_net():
        model = net(0)
        model.odd = Odd()
        model.loop = [1]
        model.loop.append(model.loop)
        model.sparse = torch.eye(3).to_sparse()
        model.powers = (1, 2)
        return model

    first, second = odd_net(), odd_net()
    signature = compiled_module._plain_attributes(first)
    assert signature == compiled_module._plain_attributes(first)  # stable for one model
    assert signature != compiled_module._plain_attributes(second)  # other objects: never shared by accident
    plain = net(0)
    plain.powers = (1, 2)
    other = net(0)
    other.powers = (1, 3)
    assert compiled_module._plain_attributes(plain) != compiled_module._plain_attributes(other)


def test_the_signature_sees_underscored_attributes_arrays_and_loose_modules_and_holds_identities():
    def variant(**attributes):
        model = net(0)
        for name, value in attributes.items():
            setattr(model, name, value)
        return compiled_module._plain_attributes(model)

    assert variant(_powers=(1, 1)) != variant(_powers=(1, 2))
    big = np.zeros(2000)
    changed = big.copy()
    changed[1500] = 1.0  # numpy's repr would elide it
    assert variant(table=big) != variant(table=changed)
    assert variant(table=big) == variant(table=big.copy())
    torch.manual_seed(0)
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    assert variant(helpers=[a]) != variant(helpers=[b])  # same architecture, other weights
    # an object compared by identity stays referenced by the signature: its address cannot be reused
    signature = variant(config=object())
    import gc

    gc.collect()
    assert signature != variant(config=object())


def test_a_nonfinite_stacked_chain_does_not_fail_the_first_call_check(data):
    model = trained(8, data)
    sampler = PosteriorSampler(model, data, "mse", compile=True)
    gradient = torch.func.vmap(torch.func.grad_and_value(sampler.flat_model.functional_loss()))
    position = sampler.flat_model.center.expand(3, -1).clone()
    position[1] = float("nan")
    batch = tuple(t[:32].expand(3, *t[:32].shape) for t in data)
    grad, loss = gradient(position, batch)
    assert sampler.compiled._compare(position, batch, grad, loss, "vectorized") is None
    grad[2] += 1.0  # a finite chain that disagrees is still caught
    assert sampler.compiled._compare(position, batch, grad, loss, "vectorized") is not None
