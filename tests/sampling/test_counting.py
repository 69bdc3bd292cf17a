"""What n counts: samples or tokens."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from slt.sampling import PosteriorSampler
from slt.sampling.counting import (
    UnitCounter,
    check_n,
    count_tokens,
    labels_are_inputs,
    resolve_n_unit,
    shifts_labels,
)


def test_tokens_are_the_labels_the_loss_keeps_else_the_mask_else_every_id():
    ids = torch.ones(3, 5, dtype=torch.long)
    labels = ids.clone()
    labels[0, 3:] = -100
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    assert count_tokens({"input_ids": ids, "labels": labels, "attention_mask": mask}) == 13
    assert count_tokens({"input_ids": ids, "labels": labels}, shift=True) == 10  # 4 + 4 + 4 - 2
    assert count_tokens({"input_ids": ids, "attention_mask": mask}) == 13
    assert count_tokens({"input_ids": ids}) == 15
    assert count_tokens((torch.zeros(3, 2), labels)) == 13  # per-token targets of a pair
    with pytest.raises(ValueError, match=r"cannot tell how many tokens.*Pass n= yourself, or n_unit="):
        count_tokens(torch.zeros(3, 2))


def test_auto_counts_tokens_for_token_data_only():
    assert resolve_n_unit("auto", {"input_ids": torch.ones(2, 3)}) == "tokens"
    assert resolve_n_unit("auto", (torch.ones(2, 3), torch.ones(2))) == "samples"
    ids = torch.ones(2, 3, dtype=torch.long)
    assert resolve_n_unit("auto", (ids, ids)) == "tokens"  # a hand-written language model's pair
    assert resolve_n_unit("auto", [ids, ids.clone()]) == "tokens"
    assert resolve_n_unit("auto", (ids, ids[:, 0])) == "samples"  # a classifier of integer inputs
    assert resolve_n_unit("auto", (ids, ids.float())) == "samples"  # float targets: a regression
    assert resolve_n_unit("auto", (ids[:, :1], ids[:, :1])) == "samples"  # one position: rows
    assert resolve_n_unit("auto", (ids,)) == "tokens"  # ids alone, as devinterp's language models take them
    assert resolve_n_unit("auto", (ids.float(),)) == "samples"
    assert resolve_n_unit("auto", {"x": torch.ones(2, 3)}) == "samples"
    assert resolve_n_unit("samples", {"input_ids": torch.ones(2, 3)}) == "samples"
    with pytest.raises(ValueError, match="n_unit must be one of"):
        resolve_n_unit("sequences", None)


class TinyForCausalLM(nn.Module):
    def forward(self, input_ids, labels):
        return {"loss": torch.zeros(())}


def test_causal_language_models_lose_each_sequences_first_label():
    assert shifts_labels(TinyForCausalLM()) and not shifts_labels(nn.Linear(2, 2))
    counter = UnitCounter("auto", TinyForCausalLM())
    ids = torch.ones(4, 6, dtype=torch.long)
    assert counter({"input_ids": ids, "labels": ids}) == 20 and counter.unit == "tokens"


class TinyLM(nn.Module):
    """A hand-written language model: embedding then a per-position readout, its loss done by the caller."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(8, 4)
        self.readout = nn.Linear(4, 8)

    def forward(self, ids):
        return self.readout(self.embed(ids))


def next_token_loss(model, batch):
    ids, labels = batch
    logits = model(ids)[:, :-1]
    return nn.functional.cross_entropy(logits.reshape(-1, 8), labels[:, 1:].reshape(-1))


def per_position_loss(model, batch):
    ids, targets = batch
    return nn.functional.cross_entropy(model(ids).reshape(-1, 8), targets.reshape(-1))


def test_a_pair_of_token_sequences_counts_tokens_and_labels_equal_to_the_ids_lose_the_first():
    ids = torch.randint(0, 8, (40, 6), generator=torch.Generator().manual_seed(0))
    shifted_inside = PosteriorSampler(TinyLM(), (ids, ids), next_token_loss)
    assert shifted_inside.n_unit == "tokens" and shifted_inside.n == 40 * 5  # the loss predicts 5 per row
    shifted_outside = PosteriorSampler(TinyLM(), (ids[:, :-1], ids[:, 1:]), per_position_loss)
    assert shifted_outside.n_unit == "tokens" and shifted_outside.n == 40 * 5
    alone = PosteriorSampler(TinyLM(), ids, lambda m, b: next_token_loss(m, (b[0], b[0])))
    assert alone.n_unit == "tokens" and alone.n == 40 * 5
    by_rows = PosteriorSampler(TinyLM(), (ids, ids), next_token_loss, n_unit="samples")
    assert by_rows.n_unit == "samples" and by_rows.n == 40
    classifier_rows = (ids[:, :2], ids[:, 2])  # (a, b) -> c, as in modular arithmetic: one label per row
    classifier = PosteriorSampler(TinyLM(), classifier_rows, lambda m, b: m(b[0])[:, -1].logsumexp(-1).mean())
    assert classifier.n_unit == "samples" and classifier.n == 40


def test_the_built_in_cross_entropy_counts_every_position_of_labels_equal_to_the_ids():
    # slt's "cross_entropy" compares each position with its own label (a copying model), so no position
    # is unused: labels equal to the ids do not mean a shift there (n was 40 * 5, 17% short)
    ids = torch.randint(0, 8, (40, 6), generator=torch.Generator().manual_seed(0))
    copying = PosteriorSampler(TinyLM(), (ids, ids), "cross_entropy")
    assert copying.n_unit == "tokens" and copying.n == 40 * 6
    assert PosteriorSampler(TinyLM(), (ids, ids), next_token_loss).n == 40 * 5


def test_dict_labels_equal_to_the_ids_lose_each_sequences_first_whatever_the_class_name():
    ids = torch.ones(4, 6, dtype=torch.long)
    assert labels_are_inputs({"input_ids": ids, "labels": ids.clone()})
    masked = ids.clone()
    masked[:, 0] = -100
    assert not labels_are_inputs({"input_ids": ids, "labels": masked})
    counter = UnitCounter("auto", nn.Linear(2, 2))
    assert counter({"input_ids": ids, "labels": ids}) == 20 and counter.shift
    other = UnitCounter("auto", nn.Linear(2, 2))
    assert other({"input_ids": ids, "labels": masked}) == 20 and not other.shift  # 24 - the 4 masked


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "100"])
def test_n_must_be_a_positive_integer(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        check_n(n)


def test_a_given_n_replaces_the_count_and_the_loss_is_a_mean_per_token():
    class Scorer(nn.Module):
        """Loss = mean over the labelled tokens of w * label, so the per-token mean is checkable."""

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, input_ids, labels):
            keep = labels != -100
            return {"loss": (self.w * labels * keep).sum() / keep.sum()}

    labels = torch.tensor([[1, 1, 1, 1], [3, -100, -100, -100]])
    rows = [{"input_ids": torch.zeros(4, dtype=torch.long), "labels": row} for row in labels]
    loader = DataLoader(rows, batch_size=1)  # one sequence per batch: 1 over 4 tokens, 3 over 1
    sampler = PosteriorSampler(Scorer(), loader, None)
    assert sampler.n == 5 and sampler.n_unit == "tokens" and sampler.n_source == "counted"
    assert sampler.init_loss == pytest.approx(7 / 5)  # per token over the data, not the mean of 1 and 3
    by_rows = PosteriorSampler(Scorer(), loader, None, n_unit="samples", n=1000)
    assert by_rows.n == 1000 and by_rows.n_source == "given" and by_rows.init_loss == pytest.approx(2.0)
