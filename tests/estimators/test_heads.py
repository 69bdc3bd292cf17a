"""Per-head LLCs of every head of tiny 2-layer GPT-2, Llama and GPT-NeoX models, in one call each."""

import copy
import math
import re
import warnings

import pytest
import torch

import slt
from slt import masks
from tests.tiny_transformers import tiny

pytest.importorskip("transformers")

#: Short fixed runs keep the test fast; the step is fixed because the default step's curvature pilot
#: costs more than these chains on these models. The estimates are not accurate: the test is about
#: the plumbing (which weights, which settings, what is reported).
SETTINGS = dict(num_chains=2, num_draws=30, step_size=0.01, seed=0, progress=False)


def loss_fn(model, batch):
    return model(input_ids=batch[0], labels=batch[0]).loss


def trained(kind):
    """A 2-layer, 2-head model of ``kind`` trained to count modulo 32, and its data ``(input_ids,)``."""
    model = tiny(kind, heads=2).train()
    start = torch.randint(0, 32, (32, 1), generator=torch.Generator().manual_seed(0))
    ids = (start + torch.arange(8)) % 32
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        loss_fn(model, (ids,)).backward()
        opt.step()
    return model, (ids,)


def per_head(model, data, **kwargs):
    """``slt.llc_per_head`` and the warnings it raised again (each head's were caught)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table, results = slt.llc_per_head(
            model, data, loss_fn=loss_fn, return_results=True, **SETTINGS, **kwargs
        )
    return table, results, caught


def check_table(table, results, caught, model):
    assert list(zip(table["layer"], table["head"])) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(math.isfinite(x) for x in table["llc_mean"])
    assert (table["llc_low"] <= table["llc_mean"]).all() and (table["llc_mean"] <= table["llc_high"]).all()
    assert sorted(results) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for (i, h), result in results.items():
        row = table[(table["layer"] == i) & (table["head"] == h)].iloc[0]
        assert row["llc_mean"] == result.mean and row["sampled"] == result.settings.num_params
        assert row["sampled"] == sum(int(m.sum()) for m in masks.head(model, i, h).values())
        assert (result.settings.num_draws, result.settings.seed, result.settings.step_size) == (30, 0, 0.01)
    # each warning class raised again once, naming exactly the heads whose column holds it
    for w in caught:
        named = set(re.findall(r"L(\d)H(\d)", str(w.message)))
        holding = {
            (str(i), str(h))
            for i, h, text in zip(table["layer"], table["head"], table["warnings"])
            if f"{w.category.__name__}:" in text
        }
        assert named == holding, (w.message, holding)
    assert len({w.category for w in caught}) == len(caught)


def test_gpt2_per_head_llcs_match_estimates_made_one_head_at_a_time_and_leave_the_model_alone():
    model, data = trained("gpt2")
    model.transformer.h[1].attn.c_proj.weight.grad = torch.full((16, 16), 3.0)
    model.transformer.wpe.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    table, results, caught = per_head(model, data)
    check_table(table, results, caught, model)
    # the same as estimate_llc with that head's mask and the same settings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", slt.SLTWarning)
        alone = slt.estimate_llc(model, data, loss_fn=loss_fn, mask=masks.head(model, 1, 0), **SETTINGS)
    assert alone.mean == table["llc_mean"].iloc[2]
    # the model is as it was: weights, gradients, mode, requires_grad
    assert model.training and not model.transformer.wpe.weight.requires_grad
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(model.transformer.h[1].attn.c_proj.weight.grad, torch.full((16, 16), 3.0))


@pytest.mark.parametrize("kind", ["llama", "gpt_neox"])
def test_every_head_of_a_two_layer_model_gets_its_llc(kind):
    model, data = trained(kind)
    table, results, caught = per_head(model, data, layers=[0, 1], parts=("q", "k", "v", "o"))
    check_table(table, results, caught, model)


def test_per_head_refuses_a_mask_and_bad_layers_before_sampling():
    model = tiny("gpt2", heads=2)
    data = (torch.zeros(4, 8, dtype=torch.long),)
    with pytest.raises(TypeError, match="sets each head's mask itself"):
        slt.llc_per_head(model, data, loss_fn=loss_fn, mask=["transformer.h.0"])
    with pytest.raises(ValueError, match="layer 3 is out of range: the model has 2 layers"):
        slt.llc_per_head(model, data, loss_fn=loss_fn, layers=[0, 3])
    with pytest.raises(ValueError, match="layers is empty"):
        slt.llc_per_head(model, data, loss_fn=loss_fn, layers=[])
    with pytest.raises(ValueError, match=r"unknown head parts \['out'\]"):
        slt.llc_per_head(model, data, loss_fn=loss_fn, parts=["q", "out"])
    with pytest.raises(ValueError, match="no Hugging Face config.*matching"):
        slt.llc_per_head(torch.nn.Linear(2, 2), data, loss_fn=loss_fn)
