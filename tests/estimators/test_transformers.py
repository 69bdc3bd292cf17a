"""estimate_llc on tiny Hugging Face language models built from configs (no downloads).

Each model has 2 layers, hidden size 32 and a vocabulary of 64; the runs are a few steps long: these
check the plumbing (no loss_fn, dict data, streams, what n counts, the modes, vmap), not the estimate.
"""

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

import slt

transformers = pytest.importorskip("transformers")
transformers.utils.logging.set_verbosity_error()  # config notices go to the log, not warnings

pytestmark = pytest.mark.filterwarnings("ignore::slt.warnings.SLTWarning")

VOCAB, SEQ, ROWS = 64, 8, 32
RUN = dict(num_chains=2, num_draws=4, num_burnin=2, step_size=1e-5, progress=False)


def gpt2(dropout: float = 0.0):
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ, bos_token_id=None,
        eos_token_id=None, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def llama():
    config = transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=SEQ, bos_token_id=None,
        eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def neox():
    config = transformers.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        vocab_size=VOCAB, max_position_embeddings=SEQ, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return transformers.GPTNeoXForCausalLM(config)


def tokens(rows: int = ROWS, seed: int = 0) -> dict:
    ids = torch.randint(0, VOCAB, (rows, SEQ), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@pytest.mark.parametrize("build", [gpt2, llama, neox], ids=["gpt2", "llama", "gpt-neox"])
def test_a_language_model_is_estimated_with_no_loss_fn_on_dict_data(build):
    torch.manual_seed(0)
    model = build()
    data = tokens()
    result = slt.estimate_llc(model, data, **RUN)
    assert result.settings.n_unit == "tokens" and result.settings.n_source == "counted"
    assert result.n == ROWS * (SEQ - 1)  # causal LMs predict every token but each sequence's first
    # L_n(w*) is the model's own loss over the data: the mean cross-entropy per predicted token
    with torch.no_grad():
        assert result.init_loss == pytest.approx(float(model(**data).loss), rel=1e-5)
    assert result.n_beta == pytest.approx(result.n / torch.log(torch.tensor(float(result.n))).item())
    assert torch.isfinite(torch.tensor(result.mean))


def test_sequences_or_tokens_is_an_explicit_recorded_choice(tmp_path):
    torch.manual_seed(0)
    model, data = gpt2(), tokens()
    by_samples = slt.estimate_llc(model, data, n_unit="samples", **RUN)
    assert by_samples.n == ROWS and by_samples.settings.n_unit == "samples"
    assert by_samples.summary()["n_unit"].iloc[0] == "samples"
    by_samples.to_json(tmp_path / "result.json")
    assert slt.LLCResult.from_json(tmp_path / "result.json").settings.n_unit == "samples"
    given = slt.estimate_llc(model, data, n=10_000, n_unit="tokens", **RUN)
    assert given.n == 10_000 and given.settings.n_source == "given" and given.settings.n_unit == "tokens"
    # -100 labels are left out of the loss, and so out of the token count
    masked = dict(data, labels=data["labels"].clone())
    masked["labels"][:, SEQ // 2 :] = -100
    result = slt.estimate_llc(model, masked, **RUN)
    assert result.n == ROWS * (SEQ // 2 - 1)
    with pytest.raises(ValueError, match="n_unit must be one of"):
        slt.estimate_llc(model, data, n_unit="sequences", **RUN)


def test_a_callable_may_return_the_model_output_and_a_loader_of_dicts_works():
    torch.manual_seed(0)
    model, data = gpt2(), tokens()
    rows = [{k: v[i] for k, v in data.items()} for i in range(ROWS)]
    loader = DataLoader(rows, batch_size=8)
    result = slt.estimate_llc(model, loader, loss_fn=lambda m, b: m(**b), **RUN)
    in_memory = slt.estimate_llc(model, data, **RUN)
    assert result.n == in_memory.n == ROWS * (SEQ - 1)
    assert result.init_loss == pytest.approx(in_memory.init_loss, rel=1e-5)


class Stream(IterableDataset):
    """An endless stream of token sequences, like a streaming Hugging Face dataset."""

    def __iter__(self):
        generator = torch.Generator().manual_seed(0)
        while True:
            ids = torch.randint(0, VOCAB, (SEQ,), generator=generator)
            yield {"input_ids": ids, "labels": ids}


def test_an_endless_stream_needs_n_and_is_evaluated_on_a_bounded_set():
    torch.manual_seed(0)
    model = gpt2()
    with pytest.raises(ValueError, match=r"data is a stream .*Pass n="):
        slt.estimate_llc(model, Stream(), **RUN)
    result = slt.estimate_llc(model, Stream(), n=5_000, eval_samples=24, batch_size=8, **RUN)
    assert result.n == 5_000 and result.settings.n_source == "given"
    # L_n(w*) over the stream's first 24 sequences, exactly
    first = DataLoader(Stream(), batch_size=24)
    with torch.no_grad():
        assert result.init_loss == pytest.approx(float(model(**next(iter(first))).loss), rel=1e-5)


def test_train_mode_turns_dropout_on_in_the_copy_only():
    torch.manual_seed(0)
    model = gpt2(dropout=0.1)
    model.eval()
    model.transformer.h[0].train()  # a mixed-mode model
    modes = {name: m.training for name, m in model.named_modules()}
    seen = {"dropout on": lambda m: float(m.transformer.drop.training)}
    trained = slt.estimate_llc(model, tokens(), model_mode="train", observables=seen, **RUN)
    evaluated = slt.estimate_llc(model, tokens(), observables=seen, **RUN)
    assert trained.observables["dropout on"].min() == 1.0 and trained.settings.model_mode == "train"
    assert evaluated.observables["dropout on"].max() == 0.0 and evaluated.settings.model_mode == "eval"
    assert trained.settings.chain_mode == "sequential"
    assert {name: m.training for name, m in model.named_modules()} == modes
    with pytest.raises(ValueError, match="model_mode must be 'eval'"):
        slt.estimate_llc(model, tokens(), model_mode="training", **RUN)


def test_auto_chains_avoid_vmap_where_batching_rules_are_missing():
    torch.manual_seed(0)
    data = tokens()
    del data["attention_mask"]  # with a mask, vmap fails outright (data-dependent masking) and falls back
    sampler = slt.sampling.PosteriorSampler(gpt2(), data, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not one performance warning
        run = sampler.run(n_beta=10.0, localization=1.0, step_size=1e-5, num_chains=8, num_draws=2)
    assert sampler.choose_mode("auto", 8) == "sequential" and run.chain_mode == "sequential"
    assert sampler.batching_rules_missing  # vmap was tried, and left: attention has no batching rule


def test_explicit_vectorized_chains_warn_once():
    torch.manual_seed(0)
    data = tokens()
    del data["attention_mask"]
    with pytest.warns(UserWarning, match="no batching rule for .*scaled_dot_product") as caught:
        result = slt.estimate_llc(gpt2(), data, chain_mode="vectorized", **RUN)
    batching = [w for w in caught if "batching rule" in str(w.message)]
    assert len(batching) == 1 and result.settings.chain_mode == "vectorized"


def test_a_model_without_labels_gets_told_to_add_them():
    data = tokens()
    del data["labels"]
    with pytest.raises(ValueError, match=r"without a loss .*add 'labels'.*labels = input_ids"):
        slt.estimate_llc(gpt2(), data, **RUN)
