"""Tiny GPT-2, Llama and GPT-NeoX models built from configs, for the tests of slt.masks (no downloads)."""

import torch
from torch import nn

HIDDEN, HEADS, KV_HEADS = 16, 4, 2


def tiny(kind: str, heads: int = HEADS) -> nn.Module:
    """A 2-layer model of ``kind`` with ``heads`` heads of size ``16 // heads``, in eval mode.

    Llama, Mistral and Qwen2 have grouped-query attention (``heads // 2`` key/value heads); Llama and
    Qwen2 have q/k/v biases.
    """
    torch.manual_seed(0)
    import transformers

    common = dict(vocab_size=32, bos_token_id=0, eos_token_id=0)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_head=heads, n_embd=HIDDEN, n_positions=16, **common)
        model = transformers.GPT2LMHeadModel(config)
    elif kind in ("llama", "mistral", "qwen2"):
        config_class, model_class = {
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        }[kind]
        config = config_class(
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=max(heads // 2, 1),
            hidden_size=HIDDEN,
            intermediate_size=32,
            max_position_embeddings=16,
            **common,
        )
        if kind == "llama":
            config.attention_bias = True
        model = model_class(config)
    else:
        config = transformers.GPTNeoXConfig(
            num_hidden_layers=2,
            num_attention_heads=heads,
            hidden_size=HIDDEN,
            intermediate_size=32,
            max_position_embeddings=16,
            **common,
        )
        model = transformers.GPTNeoXForCausalLM(config)
    with torch.no_grad():  # biases start at zero; give them values so that a wrong bias slice shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
    return model.eval()
