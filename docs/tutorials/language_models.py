# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tiny language model: LLC, per-head LLCs, influence and susceptibilities
#
# We build a 2-layer GPT-2 from a config (no download), train it briefly on a synthetic language, and
# read its loss landscape four ways: the LLC of the whole model, the LLC of each attention head, the
# Bayesian influence between probe sequences, and the susceptibilities of two heads to two probe sets.
# Everything runs on one CPU core in about a minute.

# %%
import time
import warnings

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging

import slt

torch.set_num_threads(1)
logging.set_verbosity_error()
started = time.perf_counter()

# %% [markdown]
# ## A synthetic language
#
# A Markov chain over 32 tokens in which every token has exactly two equally likely successors. After the
# first token every next token is a fair coin flip between two candidates, so the best possible loss per
# predicted token is $\log 2 \approx 0.693$ nats.

# %%
VOCAB, LENGTH = 32, 16
generator = torch.Generator().manual_seed(0)
successors = torch.randint(0, VOCAB, (VOCAB, 2), generator=generator)


def markov_sequences(count: int) -> torch.Tensor:
    ids = torch.empty(count, LENGTH, dtype=torch.long)
    ids[:, 0] = torch.randint(0, VOCAB, (count,), generator=generator)
    for t in range(1, LENGTH):
        ids[:, t] = successors[ids[:, t - 1], torch.randint(0, 2, (count,), generator=generator)]
    return ids


ids = markov_sequences(256)
data = {"input_ids": ids, "labels": ids}  # the layout of a tokenizer's output

# %% [markdown]
# ## A tiny GPT-2, trained briefly
#
# 600 steps of AdamW on fresh batches of 32 sequences from the language (one pass over a stream, as a
# language model is trained), then the loss on the 256 sequences above, which the model never saw, and on
# which everything below is measured.

# %%
torch.manual_seed(0)
config = GPT2Config(
    n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=LENGTH,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
)  # fmt: skip
model = GPT2LMHeadModel(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
for _step in range(600):
    batch = markov_sequences(32)
    loss = model(input_ids=batch, labels=batch).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
model.eval()
with torch.no_grad():
    data_loss = model(**data).loss.item()
print(
    f"{sum(p.numel() for p in model.parameters()):,} parameters; loss {data_loss:.3f} nats per token on the "
    f"256 sequences (the best possible is log 2 = {np.log(2):.3f}); {time.perf_counter() - started:.0f} s so far"
)

# %% [markdown]
# ## The LLC, with the model's own loss
#
# A Hugging Face causal LM computes its own loss when the batch holds `labels`, so `estimate_llc` needs no
# `loss_fn`: the data is the dict, and every minibatch is `model(**batch).loss`, the mean cross-entropy
# per predicted token.
#
# **What n counts.** With token data `n_unit="auto"` counts *tokens*: the positions the loss averages
# over, here 256 sequences × 15 predicted tokens = 3,840 (the first token of each sequence is never
# predicted). Then $n L_n(w)$ is the negative log-likelihood of the data, as the tempered posterior
# $\propto e^{-n\beta L_n(w)}$ needs, and $n\beta = n / \log n$. Counting sequences instead would make the
# posterior 15 times hotter (see "What n counts" in the theory page).
#
# We also record, at every draw, the per-token losses of 8 probe sequences (4 from the language, 4 of
# random tokens) with a `PerSampleLoss` observable: the Bayesian influence functions below come from the
# same chains. `"causal_lm"` is the per-token next-token loss, shape `(sequences, 15)`. Minibatches hold 32
# sequences (the default, 256 rows, would be the whole data at every step: exact but eight times slower);
# 4 chains of 200 draws after 200 burn-in steps keep the run short (far shorter than slt's automatic
# length, `num_draws=None`, would run), with a step size from slt's default pilot.

# %%
probe_ids = torch.cat([markov_sequences(4), torch.randint(0, VOCAB, (4, LENGTH), generator=generator)])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = slt.estimate_llc(
        model,
        data,
        num_chains=4,
        num_draws=200,
        batch_size=32,
        observables={"probe": slt.PerSampleLoss((probe_ids,), "causal_lm")},
        seed=0,
        progress=False,
    )
print(result)
print(f"n = {result.n:,} {result.settings.n_unit}, nβ = {result.n_beta:.1f}, step {result.settings.step_size:.3g}")
print(f"{time.perf_counter() - started:.0f} s so far")
for w in caught:
    print(f"{w.category.__name__}: {w.message}")

# %% [markdown]
# ### Sampled loss against $L_n(w^*)$
#
# The chains should hover a little above $L_n(w^*)$: $\hat\lambda = n\beta\,(\mathbb{E}[L_n(w)] - L_n(w^*))$,
# so the mean excess of the sampled loss over $L_n(w^*)$ is $\hat\lambda / n\beta$ nats per token. The
# dashed line in the left panel is $L_n(w^*)$.

# %%
excess = result.loss_trace.mean() - result.init_loss
print(
    f"L_n(w*) = {result.init_loss:.4f}; mean sampled minibatch loss = {result.loss_trace.mean():.4f} "
    f"(excess {excess:.4f} nats; nβ × excess = {result.n_beta * excess:.1f}, λ̂ = {result.mean:.1f})"
)
fig = result.plot()

# %% [markdown]
# **Reading it.** The sampled loss sits well above $L_n(w^*) \approx \log 2$ (about 1.1 nats against 0.69
# when this was written), and nβ times that excess is λ̂ (the estimator pairs each draw with the loss of
# $w^*$ on the same minibatch, which changes the noise, not the mean). λ̂ ≈ 200 against d/2 = 13,504:
# the trained transformer is very far from a regular model of its size.
#
# **The warnings.** slt raised a `ConvergenceWarning`: split R-hat is above 1.1, so the four chains have not
# settled on the same distribution; and a `ShortChainWarning`: in the run's simulated time ($\varepsilon T$
# = 0.05 when this was written, a tenth of the automatic length's floor) the chains spread from $w^*$ 96%
# as far as drift-free diffusion would, so most directions had not relaxed. Both are right: these chains
# are short on purpose (with 100 draws instead of 200 the estimate was about 177, so λ̂ is still growing
# with the length). For a number to report, leave
# `num_draws` at its default (`None`: the chains run in doubling segments until the estimate stops moving,
# within a `max_steps`/`max_seconds` budget) or choose the step with `slt.calibrate` (its
# `estimate_kwargs()` keep the automatic length). The warning stays on `result.problems`, and in the JSON
# of the result.

# %% [markdown]
# ## One LLC per attention head
#
# `slt.llc_per_head` samples one head at a time (its slices of the fused q/k/v projection `c_attn` and of
# the output projection `c_proj`; `slt.masks.head`) with the rest of the model held at $w^*$. We reuse the
# step size of the full run and shorter chains; the heads' warnings are collected into the table's
# `warnings` column and raised once per kind.

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    heads = slt.llc_per_head(
        model, data, num_chains=2, num_draws=60, batch_size=32, step_size=result.settings.step_size, seed=0,
        progress=False,
    )  # fmt: skip
print(heads[["layer", "head", "sampled", "llc_mean", "llc_stderr", "llc_low", "llc_high"]].to_string(index=False))
print(f"{time.perf_counter() - started:.0f} s so far")
for w in caught:
    print(f"{w.category.__name__}: {w.message}")

# %% [markdown]
# **Reading it.** Each head owns 2,096 weights (its 16 columns of each of q, k and v with their biases, and
# its 16 rows of the output projection). The two heads of layer 0 carry a larger weight-restricted LLC than
# those of layer 1 (about 16 and 14 against 4 and 3 here). Together they are a small part of the whole
# model's ≈ 200, which also counts the MLPs, embeddings and layer norms (and restricted LLCs need not add
# up to the LLC of their union).
# The warnings say that none of these numbers is converged: every head raised the same R-hat
# `ConvergenceWarning`, and the intervals of L0H1 and L1H1 reach below zero, because two chains of 60 draws
# disagree. Before ranking heads, rerun with more chains and `num_draws=None`.

# %% [markdown]
# ## Bayesian influence between probe sequences
#
# `slt.bif` turns the recorded per-token losses into the correlation, across the posterior draws of all
# chains, of every pair of probe sequences' losses (devinterp 2.0.1's Bayesian influence function;
# `reduce_tokens=True` first averages each sequence's tokens). Sequences 0-3 come from the language,
# 4-7 are random tokens.

# %%
influence = slt.bif(result, observable="probe", reduce_tokens=True)
print(influence)
print(influence.to_pandas().round(2).to_string())
fig = influence.plot()

# %% [markdown]
# **Reading it.** The four random-token sequences (4-7) mostly rise and fall together across the draws
# (five of their six pairs correlate by 0.14 to 0.43 here): a perturbation that changes how the model spreads probability outside
# the language's two successors moves all of them alike. The language sequences (0-3) are nearly
# uncorrelated with each other (|r| ≤ 0.16): each depends on its own path through the chain. Mind the
# noise: the 800 draws are strongly autocorrelated (ESS ≈ 19 for λ̂), so correlations of ±0.2 are
# within chance; longer chains sharpen the map.

# %% [markdown]
# ## Susceptibilities of two heads to two probe sets
#
# `slt.susceptibilities` follows devinterp 2.0.1: it samples the full posterior once and each component's
# weight-restricted posterior once, recording at every draw the loss of fixed training sequences
# ($L_{pt}$, the "sampling task") and the per-token losses of each probe set ($\ell_{xy}$). With
# $\varphi = L_{pt} - L_n(w^*)$ the susceptibility of component $C$ to a probe token is
#
# $$\chi^C_{xy} = \mathbb{E}_C[\varphi L_{pt}] - \mathbb{E}_C[\varphi\,\ell_{xy}]
#   - \mathbb{E}_C[\varphi]\,(\mathbb{E}_\text{full}[L_{pt}] - \mathbb{E}_\text{full}[\ell_{xy}]),$$
#
# roughly $-\mathrm{cov}_C(\varphi, \ell_{xy} - L_{pt})$: **negative** when the directions in which the
# component raises the training loss raise the probe's loss even more (the component matters more for
# the probe than for the training data), **positive** when they raise the probe's loss less. The bar
# chart shows each component's value per probe set, averaged over its tokens, with ±2 jackknife standard
# errors over chains.

# %%
components = {"L0H0": slt.masks.head(model, 0, 0), "L1H0": slt.masks.head(model, 1, 0)}
probes = {
    "language": markov_sequences(8),
    "random tokens": torch.randint(0, VOCAB, (8, LENGTH), generator=generator),
}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    sus = slt.susceptibilities(
        model, data, probes, components,
        num_chains=2, num_draws=80, batch_size=32, step_size=result.settings.step_size, sampling_samples=32,
        seed=0, progress=False,
    )  # fmt: skip
print(sus.to_pandas().to_string(index=False))
print(f"{time.perf_counter() - started:.0f} s so far")
for w in caught:
    print(f"{w.category.__name__}: {w.message}")
fig = sus.plot()

# %% [markdown]
# **Reading it.** The language probe is the control: its sequences come from the training distribution, so
# their loss moves with the training loss and its susceptibility is close to zero for both heads (within
# about one and a half standard errors here). Random tokens are clearly (about twelve standard errors)
# negative for L0H0: where the posterior restricted to that head raises the training loss, the loss on
# random tokens rises more. For L1H0 the value on random tokens is small and within its error of zero:
# this run cannot tell. The same `ConvergenceWarning` as above came from all three runs (it names them),
# and with two chains each jackknife error has a single degree of freedom: read these errors as rough and
# use more chains (`num_chains`) and longer runs for anything you report.
#
# slt's numbers are devinterp 2.0.1's on the same draws: `sus.llc` holds the three runs, and
# `slt.estimators.susceptibilities.susceptibility` applied to their recorded losses is devinterp's
# arithmetic line for line (the test suite checks it against a transcription, and against devinterp's own
# function when its source is at hand). `sus.per_sample[probe]` keeps every token's value,
# `sus.to_xarray()` and `sus.to_json(path)` export them.

# %%
print(f"the whole tutorial ran in {time.perf_counter() - started:.0f} s")
