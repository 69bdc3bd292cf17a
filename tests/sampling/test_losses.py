"""Loss functions: outputs reduced to their loss, the model's own loss as the default."""

import pickle
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from slt.sampling.losses import cross_entropy, extract_loss, model_loss, mse, resolve_loss


class Output(OrderedDict):
    """Like a Hugging Face ModelOutput: a mapping whose fields are also attributes."""

    def __getattr__(self, name):
        return self.get(name)


def test_the_loss_is_found_in_a_tensor_a_dict_an_output_and_an_attribute():
    loss = torch.tensor(1.5)
    assert extract_loss(loss) is loss
    assert extract_loss({"loss": loss, "logits": torch.zeros(2)}) is loss
    assert extract_loss(Output(loss=loss, logits=torch.zeros(2))) is loss
    assert extract_loss(SimpleNamespace(loss=loss)) is loss


def test_an_output_without_a_loss_is_told_to_add_labels():
    with pytest.raises(ValueError, match=r"returned a Output without a loss \(fields: logits\).*'labels'"):
        extract_loss(Output(logits=torch.zeros(2)))
    with pytest.raises(ValueError, match="must return a scalar tensor, a dict with a 'loss' entry"):
        extract_loss(3.0)


class SelfScoring(nn.Module):
    """Computes its own loss from (x, y), or from x=..., y=... keywords."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x, y):
        return {"loss": ((self.lin(x) - y) ** 2).mean()}


def test_without_a_loss_fn_the_model_scores_tuples_and_dicts_itself():
    model, x, y = SelfScoring(), torch.randn(5, 2), torch.randn(5, 1)
    assert resolve_loss(None) is model_loss and resolve_loss("model") is model_loss
    expected = ((model.lin(x) - y) ** 2).mean()
    assert torch.equal(model_loss(model, (x, y)), expected)
    assert torch.equal(model_loss(model, {"x": x, "y": y}), expected)


def test_a_model_that_returns_predictions_needs_a_loss_fn():
    mlp = nn.Linear(2, 1)
    with pytest.raises(TypeError, match=r"called model\(\*batch\).*loss_fn='mse'"):
        model_loss(mlp, (torch.randn(4, 2), torch.randn(4, 1)))
    with pytest.raises(ValueError, match=r"returned a tensor of shape \(4, 1\) \(predictions\?\)"):
        model_loss(mlp, torch.randn(4, 2))


def _output_of(model, batch):
    x, y = batch
    return {"loss": ((model(x) - y) ** 2).mean(), "extra": 1}


def test_a_callable_returning_an_output_is_wrapped_and_still_pickles():
    loss_fn = resolve_loss(_output_of)
    model, batch = nn.Linear(2, 1), (torch.randn(4, 2), torch.randn(4, 1))
    assert torch.equal(loss_fn(model, batch), mse(model, batch))
    assert resolve_loss(loss_fn) is loss_fn and resolve_loss("mse") is mse
    assert torch.equal(pickle.loads(pickle.dumps(loss_fn))(model, batch), mse(model, batch))


class _DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return {"hidden": x, "logits": self.linear(x)}


class _TupleOutput(_DictOutput):
    def forward(self, x):
        return self.linear(x), x


def test_a_string_loss_on_a_model_that_returns_a_dict_or_tuple_says_to_pick_the_outputs():
    x, labels = torch.randn(8, 3), torch.randint(0, 2, (8,))
    picked = r'returned a dict \(fields: hidden, logits\).*\["logits"\], batch\[1\]'
    with pytest.raises(TypeError, match=picked):
        resolve_loss("cross_entropy")(_DictOutput(), (x, labels))
    with pytest.raises(TypeError, match=r"returned a tuple of length 2.*mse_loss\(model\(batch\[0\]\)\[0\]"):
        resolve_loss("mse")(_TupleOutput(), (x, torch.randn(8, 2)))
    # through the estimator: the same message before any sampling
    import slt

    with pytest.raises(TypeError, match='loss_fn="cross_entropy" needs a model that returns a tensor'):
        slt.estimate_llc(_DictOutput(), (x, labels), loss_fn="cross_entropy", num_draws=10, progress=False)


def test_cross_entropy_over_a_single_output_is_refused_with_what_to_use():
    # it is identically zero: an estimate with it read λ̂ = 0 ± 0 and only a length warning
    model = nn.Linear(3, 1)
    with pytest.raises(ValueError, match=r'single output \(logits of shape \(8, 1\)\).*loss_fn="mse"'):
        resolve_loss("cross_entropy")(model, (torch.randn(8, 3), torch.randn(8, 1)))


class PerPosition(nn.Module):
    """Logits for every position of a token sequence: (N, L) ids -> (N, L, vocab)."""

    def __init__(self, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, vocab)

    def forward(self, ids):
        return self.embed(ids)


def test_cross_entropy_reads_sequence_logits_with_the_classes_last_or_second():
    torch.manual_seed(0)
    model = PerPosition(10)
    ids = torch.randint(0, 10, (5, 8))
    flat = nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
    assert torch.allclose(cross_entropy(model, (ids, ids)), flat)  # (N, L, C) against (N, L)
    second = nn.Sequential(model, Transpose())  # torch's (N, C, L) against (N, L)
    assert torch.allclose(cross_entropy(second, (ids, ids)), flat)
    linear = nn.Linear(3, 4)
    x, y = torch.randn(6, 3), torch.randint(0, 4, (6,))
    assert torch.allclose(cross_entropy(linear, (x, y)), nn.functional.cross_entropy(linear(x), y))


class Transpose(nn.Module):
    def forward(self, logits):
        return logits.transpose(1, 2)


def test_cross_entropy_refuses_sequence_logits_it_cannot_read_one_way():
    # ten positions over ten classes: torch's layout read the positions as classes, 5.33 against 0.0038
    ids = torch.randint(0, 10, (5, 10))
    with pytest.raises(ValueError, match=r"\(5, 10, 10\) against labels of shape \(5, 10\) fit both layouts"):
        cross_entropy(PerPosition(10), (ids, ids))
    unfit = r"do not fit labels of shape \(5, 9\).*\(ids\[:, :-1\], ids\[:, 1:\]\)"
    with pytest.raises(ValueError, match=unfit):
        cross_entropy(PerPosition(10), (ids, ids[:, 1:]))
    probabilities = torch.softmax(torch.randn(5, 10, 10), -1)
    with pytest.raises(ValueError, match="leave it open which dimension holds the classes"):
        cross_entropy(PerPosition(10), (ids, probabilities))
