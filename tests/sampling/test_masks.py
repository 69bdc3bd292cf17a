"""Masks by name: every head mask holds exactly the weights that head's output depends on.

Tiny GPT-2, Llama (grouped-query attention, with biases) and GPT-NeoX models are built from configs;
nothing is downloaded. The correctness checks do not reuse the builders' layout knowledge: they hook
the input of each model's output projection, which is the heads' outputs side by side, and perturb
weights to see which heads move.
"""

import copy
import re
import types

import pytest
import torch
from torch import nn

from slt import masks
from slt.sampling.flat import select_parameters
from tests.tiny_transformers import HEADS, HIDDEN, KV_HEADS, tiny

pytest.importorskip("transformers")

D = HIDDEN // HEADS


#: Each model's attention module and its output projection, written out here rather than taken from slt.
ATTENTION = {
    "gpt2": ("transformer.h.{}.attn", "c_proj"),
    "llama": ("model.layers.{}.self_attn", "o_proj"),
    "mistral": ("model.layers.{}.self_attn", "o_proj"),
    "qwen2": ("model.layers.{}.self_attn", "o_proj"),
    "gpt_neox": ("gpt_neox.layers.{}.attention", "dense"),
}
KINDS = sorted(ATTENTION)
GROUPED = ("llama", "mistral", "qwen2")  # built with grouped-query attention
TOKENS = torch.randint(0, 32, (2, 7), generator=torch.Generator().manual_seed(1))


def head_outputs(model, kind, layer, zero_heads=()):
    """Per-head attention outputs of ``layer`` (batch, seq, heads, head_dim) and the projected output.

    ``zero_heads`` are zeroed on their way into the output projection.
    """
    attn_name, out_name = ATTENTION[kind]
    out_proj = model.get_submodule(f"{attn_name.format(layer)}.{out_name}")
    seen = {}

    def before(module, args):
        x = args[0].clone()
        seen["heads"] = x.reshape(*x.shape[:-1], HEADS, D).clone()
        for h in zero_heads:
            x[..., h * D : (h + 1) * D] = 0
        return (x,)

    def after(module, args, output):
        seen["out"] = output.detach().clone()

    handles = [out_proj.register_forward_pre_hook(before), out_proj.register_forward_hook(after)]
    try:
        with torch.no_grad():
            model(input_ids=TOKENS)
    finally:
        for handle in handles:
            handle.remove()
    return seen["heads"], seen["out"]


def perturbed(model, entries: dict[str, torch.Tensor], scale=0.5):
    """A copy of ``model`` with random noise added at the ``True`` entries of ``entries``."""
    other = copy.deepcopy(model)
    params = dict(other.named_parameters())
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, m in entries.items():
            params[name].add_(scale * torch.randn(m.shape, generator=g) * m)
    return other


def moved_heads(before, after, tol=1e-6):
    change = (after - before).abs().amax(dim=(0, 1, 3))
    return {h for h in range(HEADS) if change[h] > tol}


def qkv_params(model, kind, layer):
    attn_name, out_name = ATTENTION[kind]
    prefix = attn_name.format(layer) + "."
    return {
        n: p
        for n, p in model.named_parameters()
        if n.startswith(prefix) and not n.startswith(prefix + out_name + ".")
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layer", [0, 1])
def test_the_qkv_part_of_a_head_mask_is_exactly_what_that_head_reads(kind, layer):
    model = tiny(kind)
    assert masks.architecture(model) == kind
    base, _ = head_outputs(model, kind, layer)
    group = HEADS // KV_HEADS if kind in GROUPED else 1
    for h in range(HEADS):
        m = masks.head(model, layer, h, parts=("q", "k", "v"))
        assert set(m) <= set(qkv_params(model, kind, layer))
        # the masked entries move this head (and, through the shared key/value head, its group) and no other
        moved = moved_heads(base, head_outputs(perturbed(model, m), kind, layer)[0])
        members = set(range(h // group * group, (h // group + 1) * group))
        assert moved == members, (h, moved)
        only_q = masks.head(model, layer, h, parts="q")
        assert moved_heads(base, head_outputs(perturbed(model, only_q), kind, layer)[0]) == {h}
        # every other entry of the q/k/v projections leaves this head exactly as it was
        rest = {
            n: ~m.get(n, torch.zeros_like(p, dtype=torch.bool))
            for n, p in qkv_params(model, kind, layer).items()
        }
        assert h not in moved_heads(base, head_outputs(perturbed(model, rest), kind, layer)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_the_o_part_of_a_head_mask_is_exactly_the_output_weights_of_that_head(kind):
    model, layer = tiny(kind), 1
    attn_name, out_name = ATTENTION[kind]
    weight = f"{attn_name.format(layer)}.{out_name}.weight"
    for h in range(HEADS):
        m = masks.head(model, layer, h, parts="o")
        assert list(m) == [weight]  # the output bias is shared by all heads: never in a head's mask
        others = [g for g in range(HEADS) if g != h]
        alone = head_outputs(model, kind, layer, zero_heads=others)[1]
        # with only head h feeding the projection, its masked weights move the output, the rest do not
        assert not torch.allclose(head_outputs(perturbed(model, m), kind, layer, zero_heads=others)[1], alone)
        rest = perturbed(model, {weight: ~m[weight]})
        torch.testing.assert_close(head_outputs(rest, kind, layer, zero_heads=others)[1], alone)
        # with head h silenced, its masked weights do nothing
        silenced = head_outputs(model, kind, layer, zero_heads=[h])[1]
        torch.testing.assert_close(
            head_outputs(perturbed(model, m), kind, layer, zero_heads=[h])[1], silenced
        )


@pytest.mark.parametrize("kind", KINDS)
def test_the_heads_of_a_layer_cover_its_attention_and_overlap_only_through_shared_key_values(kind):
    model = tiny(kind)
    everything = masks.heads(model)
    assert sorted(everything) == [(i, h) for i in range(2) for h in range(HEADS)]
    attention = masks.attention(model, 1)
    covered = masks.union(*(everything[(1, h)] for h in range(HEADS)))
    out_bias = [n for n in attention if n.endswith(ATTENTION[kind][1] + ".bias")]
    assert sorted(covered) == sorted(set(attention) - set(out_bias))
    for name, m in covered.items():
        assert bool(m.all()), name
    if kind not in GROUPED:  # without grouped-query attention the heads are disjoint
        total = sum(int(m.sum()) for h in range(HEADS) for m in everything[(1, h)].values())
        assert total == sum(int(m.sum()) for m in covered.values())
    else:  # query and output weights are disjoint; each key/value head is shared by its group
        q = sum(int(everything[(1, h)]["model.layers.1.self_attn.q_proj.weight"].sum()) for h in range(HEADS))
        assert q == HEADS * D * HIDDEN


@pytest.mark.parametrize("kind", KINDS)
def test_layer_mlp_and_embedding_masks_hold_whole_parameters_by_module(kind):
    model = tiny(kind)
    names = [n for n, _ in model.named_parameters()]
    block = {"gpt2": "transformer.h.1.", "gpt_neox": "gpt_neox.layers.1."}.get(kind, "model.layers.1.")
    assert sorted(masks.layer(model, 1)) == sorted(n for n in names if n.startswith(block))
    assert sorted(masks.mlp(model, 1)) == sorted(n for n in names if n.startswith(block + "mlp."))
    expected = {
        "gpt2": ["transformer.wpe.weight", "transformer.wte.weight"],
        "gpt_neox": ["gpt_neox.embed_in.weight"],
    }.get(kind, ["model.embed_tokens.weight"])
    assert sorted(masks.embeddings(model)) == expected
    with_output = sorted(masks.embeddings(model, unembedding=True))
    assert with_output == (
        expected if kind == "gpt2" else sorted([*expected, "lm_head.weight"])
    )  # GPT-2 ties
    for m in [masks.layer(model, 0), masks.mlp(model, 0), masks.embeddings(model)]:
        assert all(bool(v.all()) for v in m.values())


def test_describe_counts_what_the_estimator_samples():
    model = tiny("gpt2")
    table = masks.describe(model, masks.head(model, 0, 2))
    assert list(table["parameter"]) == [
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_attn.bias",
        "transformer.h.0.attn.c_proj.weight",
        "total",
    ]
    assert list(table["sampled"]) == [3 * D * HIDDEN, 3 * D, D * HIDDEN, 3 * D * HIDDEN + 3 * D + D * HIDDEN]
    assert list(table["shape"][:3]) == [(HIDDEN, 3 * HIDDEN), (3 * HIDDEN,), (HIDDEN, HIDDEN)]
    total = sum(p.numel() for p in model.parameters())
    assert table["size"].iloc[-1] == total
    assert table["fraction"].iloc[-1] == pytest.approx(table["sampled"].iloc[-1] / total)
    assert table["fraction"].iloc[0] == pytest.approx(1 / HEADS)
    # any mask the estimator accepts: a module prefix samples whole parameters
    by_prefix = masks.describe(model, ["transformer.h.1.mlp"])
    assert list(by_prefix["fraction"][:-1]) == [1.0] * 4


def test_matching_selects_whole_parameters_by_glob_or_regex():
    model = tiny("gpt2")
    ln = masks.matching(model, "*.ln_[12].*")
    assert len(ln) == 8 and all(n.split(".")[3] in ("ln_1", "ln_2") for n in ln)
    regex = masks.matching(model, re.compile(r"h\.1\.mlp"))
    assert sorted(regex) == sorted(masks.mlp(model, 1))
    assert sorted(masks.matching(model, "*.wpe.*", "*.ln_f.*")) == [
        "transformer.ln_f.bias",
        "transformer.ln_f.weight",
        "transformer.wpe.weight",
    ]
    # any module: the fallback needs no config
    plain = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    assert sorted(masks.matching(plain, "2.*")) == ["2.bias", "2.weight"]


def test_union_joins_entries_and_the_estimators_accept_the_result():
    model = tiny("llama")
    a, b = masks.head(model, 0, 0), masks.head(model, 0, 1)  # heads 0 and 1 share a key/value head
    both = masks.union(a, b, masks.mlp(model, 1))
    k = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(both[k], a[k]) and torch.equal(a[k], b[k])
    assert int(both["model.layers.0.self_attn.q_proj.weight"].sum()) == 2 * D * HIDDEN
    names, partial = select_parameters(list(model.named_parameters()), both)
    assert "model.layers.1.mlp.up_proj.weight" in names and "model.layers.1.mlp.up_proj.weight" not in partial


def test_builders_leave_the_model_as_it_was():
    model = tiny("gpt2").train()
    model.transformer.h[0].attn.c_attn.weight.grad = torch.ones(HIDDEN, 3 * HIDDEN)
    before = copy.deepcopy(model.state_dict())
    masks.heads(model), masks.layer(model, 0), masks.embeddings(model, unembedding=True)
    masks.describe(model, masks.mlp(model, 0)), masks.matching(model, "*")
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight.grad, torch.ones(HIDDEN, 3 * HIDDEN))


def test_bad_input_is_refused_with_what_to_try():
    model = tiny("gpt2")
    with pytest.raises(ValueError, match=r"layer 2 is out of range: the model has 2 layers, numbered 0 to 1"):
        masks.head(model, 2, 0)
    with pytest.raises(ValueError, match=r"layer -1 is out of range"):
        masks.mlp(model, -1)
    with pytest.raises(ValueError, match=r"head 4 is out of range: layer 0 has 4 heads, numbered 0 to 3"):
        masks.head(model, 0, 4)
    with pytest.raises(ValueError, match=r"unknown head parts \['x'\]"):
        masks.head(model, 0, 0, parts=("q", "x"))
    with pytest.raises(ValueError, match=r"parts is empty"):
        masks.head(model, 0, 0, parts=())
    with pytest.raises(ValueError, match=r"no Hugging Face config.*slt\.masks\.matching"):
        masks.head(nn.Linear(2, 2), 0, 0)
    other = nn.Linear(2, 2)
    other.config = types.SimpleNamespace(model_type="bert")
    with pytest.raises(ValueError, match=r"no head/layer layout is known for model_type 'bert'.*matching"):
        masks.layer(other, 0)
    with pytest.raises(
        ValueError, match=r"pattern 'h\.0\.mlp' matches no trainable parameter.*'\*h\.0\.mlp\*'"
    ):
        masks.matching(model, "h.0.mlp")
    with pytest.raises(ValueError, match=r"at least one pattern"):
        masks.matching(model)
    with pytest.raises(TypeError, match=r"union takes dict masks"):
        masks.union(["transformer.wte"])
    frozen = tiny("gpt2")
    frozen.transformer.h[0].attn.requires_grad_(False)
    with pytest.raises(ValueError, match=r"head 0 of layer 0 \(q/k/v/o\) selects no trainable .*frozen"):
        masks.head(frozen, 0, 0)
    assert "transformer.h.0.attn.c_attn.weight" not in masks.layer(frozen, 0)  # only what can be sampled
    with pytest.raises(ValueError, match=r"the mask selects no parameter entries"):
        masks.describe(model, {"transformer.wte.weight": torch.zeros(32, HIDDEN, dtype=torch.bool)})


def test_a_model_inside_a_wrapper_is_found_through_its_config():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = tiny("gpt_neox")

    wrapped = Wrapper()
    m = masks.head(wrapped, 1, 3)
    assert sorted(m) == ["lm.gpt_neox.layers.1.attention.dense.weight"] + [
        f"lm.gpt_neox.layers.1.attention.query_key_value.{p}" for p in ("bias", "weight")
    ]
    assert sorted(masks.embeddings(wrapped)) == ["lm.gpt_neox.embed_in.weight"]
