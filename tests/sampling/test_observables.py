"""Observables: checked at w* before sampling, per-sample losses on a probe set, per-token losses."""

import numpy as np
import pytest
import torch
from torch import nn

import slt
from slt.sampling import PerSampleLoss, PosteriorSampler
from slt.sampling.observables import per_sample_cross_entropy, per_sample_mse

pytestmark = pytest.mark.filterwarnings("ignore::slt.warnings.ConvergenceWarning")

RUN = dict(n_beta=50.0, localization=1.0, step_size=1e-3, num_chains=2, num_draws=7, num_burnin=3)


def regression(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-1.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=g)


def linear():
    torch.manual_seed(0)
    return nn.Linear(3, 1)


class Counting:
    """An observable that counts its calls and returns ``value``."""

    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self, model):
        self.calls += 1
        return self.value


@pytest.mark.parametrize(
    "value, message",
    [
        (
            {"a": 1.0, "b": 2.0},
            r"observable 'bad' returned a dict \(keys \['a', 'b'\]\).*one observable per entry",
        ),
        ("high", r"observable 'bad' returned str .*dtype <U4.*numeric array"),
        (None, r"observable 'bad' returned NoneType"),
        ([torch.zeros(2), torch.zeros(3)], r"observable 'bad' returned list.*not an array"),
    ],
)
def test_a_bad_observable_fails_at_once_with_its_name(value, message):
    bad = Counting(value)
    with pytest.raises(TypeError, match=message):
        slt.estimate_llc(
            linear(),
            regression(),
            loss_fn="mse",
            observables={"good": lambda m: 1.0, "bad": bad},
            num_chains=2,
            num_draws=500,
            num_burnin=0,
            step_size=1e-3,
            progress=False,
        )
    assert bad.calls == 1  # evaluated once at w*, never at a draw


def test_an_observable_that_raises_is_named_before_sampling():
    def broken(model):
        return model.no_such_layer

    sampler = PosteriorSampler(linear(), regression(), "mse")
    with pytest.raises(
        ValueError,
        match=r"observable 'probe' failed at the trained weights, before sampling: "
        r"AttributeError",
    ):
        sampler.run(observables={"probe": broken}, **RUN)
    with pytest.raises(TypeError, match=r"observable 'x' is a float, not a callable fn\(model\)"):
        sampler.run(observables={"x": 3.0}, **RUN)


def test_an_observable_whose_shape_changes_is_named_at_that_draw():
    calls = []

    def growing(model):
        calls.append(1)
        return torch.zeros(1 if len(calls) < 4 else 2)

    sampler = PosteriorSampler(linear(), regression(), "mse")
    with pytest.raises(
        ValueError,
        match=r"observable 'grow' returned shape \(2,\) at draw 2 of chain 0, but "
        r"\(1,\) at the trained weights",
    ):
        sampler.run(observables={"grow": growing}, chain_mode="sequential", **RUN)


@pytest.mark.parametrize("chain_mode", ["sequential", "vectorized"])
def test_per_sample_losses_are_stored_per_chain_draw_and_sample(chain_mode):
    x, y = regression()
    probe = (x[:8], y[:8])
    sampler = PosteriorSampler(linear(), (x, y), "mse", batch_size=16)
    run = sampler.run(
        observables={
            "losses": PerSampleLoss(probe, "mse", batch_size=3),  # chunks of 3, 3 and 2 samples
            "w": lambda m: torch.cat([m.weight.ravel(), m.bias]),
        },
        chain_mode=chain_mode,
        **RUN,
    )
    losses, w = run.observables["losses"], run.observables["w"]
    assert losses.shape == (2, 7, 8) and w.shape == (2, 7, 4)
    # the same per-sample losses recomputed by hand from the recorded weights
    xs, ys = probe[0].double().numpy(), probe[1].double().numpy()[:, 0]
    by_hand = (np.einsum("cdk,sk->cds", w[..., :3], xs) + w[..., 3:] - ys) ** 2
    np.testing.assert_allclose(losses, by_hand, rtol=1e-4, atol=1e-6)
    assert np.ptp(losses, axis=1).min() > 0  # they move from draw to draw


@torch.no_grad()
def test_per_sample_mse_and_cross_entropy_average_to_the_mean_losses():
    x, y = regression()
    model = nn.Linear(3, 2)
    y2 = torch.cat([y, -y], dim=1)
    assert per_sample_mse(model, (x, y2)).shape == (64,)
    assert per_sample_mse(model, (x, y2)).mean() == pytest.approx(nn.functional.mse_loss(model(x), y2).item())
    labels = torch.randint(0, 2, (64,))
    ce = per_sample_cross_entropy(model, (x, labels))
    assert ce.shape == (64,) and ce.mean() == pytest.approx(
        nn.functional.cross_entropy(model(x), labels).item()
    )


class TinyLM(nn.Module):
    def __init__(self, vocab=5, width=4):
        super().__init__()
        self.embed, self.out = nn.Embedding(vocab, width), nn.Linear(width, vocab)

    def forward(self, tokens):
        return self.out(torch.tanh(self.embed(tokens)))


def test_per_token_losses_of_a_sequence_model_are_stored_per_token():
    torch.manual_seed(0)
    tokens = torch.randint(0, 5, (40, 6))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    model = TinyLM()

    def lm_loss(m, batch):
        logits = m(batch[0])
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch[1].flatten())

    probe = PerSampleLoss((inputs[:3], targets[:3]), "cross_entropy")
    full = lambda m: lm_loss(m, (inputs[:3], targets[:3]))  # noqa: E731
    run = PosteriorSampler(model, (inputs, targets), lm_loss).run(
        observables={"tokens": probe, "mean": full}, **RUN
    )
    assert run.observables["tokens"].shape == (2, 7, 3, 5)
    np.testing.assert_allclose(
        run.observables["tokens"].mean(axis=(2, 3)), run.observables["mean"], rtol=1e-5
    )


def test_per_sample_loss_refuses_bad_probes_and_losses():
    x, y = regression()
    with pytest.raises(TypeError, match="probe must be a non-empty tuple of tensors"):
        PerSampleLoss(x)
    with pytest.raises(ValueError, match=r"same number of samples .*\[\(64, 3\), \(10, 1\)\]"):
        PerSampleLoss((x, y[:10]))
    with pytest.raises(ValueError, match="unknown per-sample loss 'l1'"):
        PerSampleLoss((x, y), "l1")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        PerSampleLoss((x, y), batch_size=0)
    mean_loss = PerSampleLoss((x, y), lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]))
    sampler = PosteriorSampler(linear(), (x, y), "mse")
    with pytest.raises(
        ValueError, match=r"observable 'l'.*returned \(\) for 64 probe samples.*reduction='none'"
    ):
        sampler.run(observables={"l": mean_loss}, **RUN)


@pytest.mark.parametrize("chain_mode", ["sequential", "vectorized"])
def test_an_observable_returning_a_view_of_the_weights_records_each_draw(chain_mode):
    # m.weight[0, 0] is a view of the working copy, overwritten by the next step; it used to record the
    # last position (w*, reloaded at the end) at every draw
    sampler = PosteriorSampler(linear(), regression(), "mse")
    run = sampler.run(
        observables={
            "view": lambda m: m.weight[0, 0],
            "numpy_view": lambda m: m.weight.detach().numpy()[0, 0],
            "copy": lambda m: m.weight[0, 0].clone(),
        },
        chain_mode=chain_mode,
        **RUN,
    )
    np.testing.assert_array_equal(run.observables["view"], run.observables["copy"])
    np.testing.assert_array_equal(run.observables["numpy_view"], run.observables["copy"])
    assert np.ptp(run.observables["copy"], axis=1).min() > 0


def test_causal_lm_per_token_loss_averages_to_the_models_own_loss():
    pytest.importorskip("transformers")
    from tests.tiny_transformers import tiny

    model = tiny("gpt2", heads=2)
    ids = torch.randint(0, 32, (5, 9), generator=torch.Generator().manual_seed(0))
    observable = PerSampleLoss((ids,), "causal_lm")
    losses = observable(model)
    assert losses.shape == (5, 8)  # one loss per predicted position
    with torch.no_grad():
        own = model(input_ids=ids, labels=ids).loss
    assert float(losses.mean()) == pytest.approx(float(own), rel=1e-6)
    with pytest.raises(ValueError, match=r'"causal_lm" expects a probe set \(input_ids,\) of integer'):
        PerSampleLoss((torch.randn(5, 9),), "causal_lm")(model)
    with pytest.raises(ValueError, match=r"shape \(samples, length >= 2\); got \(5, 1\)"):
        PerSampleLoss((ids[:, :1],), "causal_lm")(model)
    with pytest.raises(ValueError, match=r"expected logits of shape \(5, 9\) \+ \(vocabulary,\)"):
        PerSampleLoss((ids,), "causal_lm")(nn.Sequential(nn.Embedding(32, 4), nn.Flatten()))
