"""What n counts on a tiny language model: λ̂ with n in sequences or tokens, and in eval or train mode.

A 2-layer GPT-2 (hidden 32, vocabulary 32, dropout 0.1, built from a config: no download) is trained on
256 sequences of 16 tokens from a random Markov language, then estimated with 4 chains of 500 draws after
500 burn-in steps, batch 32, the default step. Needs ``transformers``; about 10 minutes on one core.
Measured (docs/theory.md, "What n counts"):

    n_unit='samples'                        n=256   nβ=46.2   λ̂=154.8 ± 1.0  chains left the basin
    n_unit='tokens'                         n=3840  nβ=465.3  λ̂=283.4 ± 5.4
    n_unit='tokens', model_mode='train'     n=3840  nβ=465.3  λ̂=413.8 ± 2.5
    n_unit='tokens', n_beta=3840/log(256)   n=3840  nβ=692.5  λ̂=295.3 ± 5.9

Run: ``python benchmarks/bench_lm_n_unit.py``.
"""

import math
import time
import warnings

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging

import slt

VOCAB, LENGTH, SEQUENCES = 32, 16, 256


def markov_language(generator: torch.Generator) -> torch.Tensor:
    """Sequences where each token has two equally likely successors."""
    successors = torch.randint(0, VOCAB, (VOCAB, 2), generator=generator)
    ids = torch.empty(SEQUENCES, LENGTH, dtype=torch.long)
    ids[:, 0] = torch.randint(0, VOCAB, (SEQUENCES,), generator=generator)
    for t in range(1, LENGTH):
        ids[:, t] = successors[ids[:, t - 1], torch.randint(0, 2, (SEQUENCES,), generator=generator)]
    return ids


def main() -> None:
    torch.set_num_threads(1)
    logging.set_verbosity_error()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    ids = markov_language(generator)
    data = {"input_ids": ids, "labels": ids}
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=LENGTH, bos_token_id=None,
        eos_token_id=None, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(600):
        rows = torch.randint(0, SEQUENCES, (32,), generator=generator)
        loss = model(input_ids=ids[rows], labels=ids[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    tokens = SEQUENCES * (LENGTH - 1)
    warnings.simplefilter("ignore")
    for options in (
        dict(n_unit="samples"),
        dict(n_unit="tokens"),
        dict(n_unit="tokens", model_mode="train"),
        dict(n_unit="tokens", n_beta=tokens / math.log(SEQUENCES)),
    ):
        start = time.perf_counter()
        r = slt.estimate_llc(
            model, data, num_chains=4, num_draws=500, num_burnin=500, batch_size=32, progress=False, **options
        )
        flags = "; ".join(p.message[:50] for p in r.problems) or "no problem"
        print(
            f"{options}: n={r.n} nβ={r.n_beta:.1f} λ̂={r.mean:.1f} ± {r.stderr:.1f} ({flags}) "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
