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
# # Quickstart: the LLC of a trained MLP
#
# We train a small classifier, estimate its local learning coefficient (LLC) and read the result and
# its diagnostics. Everything runs on a laptop CPU in well under a minute.

# %%
import torch
from torch import nn

import slt

torch.set_num_threads(1)
torch.manual_seed(0)

# %% [markdown]
# A synthetic three-class problem and a small MLP trained to fit it.

# %%
n = 3000
x = torch.randn(n, 6)
logits = x @ torch.randn(6, 3) + 0.5 * torch.sin(3 * x[:, :3])
y = logits.argmax(dim=1)

model = nn.Sequential(nn.Linear(6, 24), nn.GELU(), nn.Linear(24, 3))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-3)
for _step in range(1500):
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
accuracy = (model(x).argmax(1) == y).float().mean().item()
print(f"{sum(p.numel() for p in model.parameters())} parameters, train loss {loss.item():.3f}, accuracy {accuracy:.3f}")

# %% [markdown]
# ## Estimate
#
# `estimate_llc` takes the model, the data (a tuple of tensors, a `Dataset` or a `DataLoader`) and the
# loss. Every other setting has a default: $n\beta = n/\log n$, localization $\gamma = 1$, four SGLD
# chains, a step size chosen from a short pilot run, and an automatic length: the chains run in segments
# of doubling length, each continuing the last, until the estimate over the last segment agrees with the
# one before (within 5% plus two standard errors), its standard error is within 5%, split R-hat within 1.1,
# and the simulated time $\varepsilon \cdot T$ has reached $0.5/\gamma$. The last segment gives the draws, everything before it is burn-in. Chains started at $w^*$
# all drift the same way, so R-hat cannot see a run that is too short; comparing doublings can. A budget
# (`max_steps`, default 100,000 steps per chain, and `max_seconds`) stops the run with a warning that says
# how far it got; pass `num_draws` for a fixed length.

# %%
result = slt.estimate_llc(model, (x, y), loss_fn="cross_entropy", progress=False, seed=0)
result

# %% [markdown]
# `summary()` is one pandas row with the estimate, its errors and the settings that produced it:

# %%
result.summary().T

# %% [markdown]
# What the fields mean:
#
# - `llc_mean` is $\hat\lambda$, the mean of the per-chain estimates `result.per_chain`; `llc_stderr` is
#   the standard error across chains.
# - `llc_low`, `llc_high` are a 95% interval for the value the estimator targets (at this $n\beta$,
#   $\gamma$ and data): Student's t over the chains, widened upwards by the change over the last
#   doubling if the estimate was still rising and downwards by the predicted step-size bias.
# - `simulated_time` and `converged` say how long the chains ran and whether the last two doublings
#   agreed within the budget.
# - `ess` and `rhat` are the effective sample size and split R-hat of the per-draw estimates (from arviz).
#   R-hat well above 1.01-1.1 means chains disagree: run longer.
# - `trend_z` compares the last quarter of the draws with the first; a large value means burn-in was too
#   short.
# - `settings.step_size_source` says how the step was chosen:

# %%
print(result.settings.step_size_source)
print("per-chain estimates:", result.per_chain.round(2))
print("diverged chains:", result.diagnostics.diverged)

# %% [markdown]
# ## Look at the chains
#
# The left panel shows the loss of each chain on its batch (here the whole data: 3,000 samples fit under
# the default batch's cap, `result.settings.batch_size_source`; burn-in shaded); the right panel the running
# estimate of each chain. Healthy chains rise from $L_n(w^*)$ during burn-in, then fluctuate around a
# common level.

# %%
fig = result.plot()

# %% [markdown]
# The traces are also available as arrays (`result.trace` is chains × draws of per-draw $\hat\lambda$)
# and as an arviz `InferenceData` for the usual MCMC tooling:

# %%
import arviz as az

az.summary(result.to_inference_data(), var_names=["llc"])

# %% [markdown]
# Results round-trip through JSON (`to_json` / `LLCResult.from_json`), so an analysis can be saved and
# plotted later. The model itself was never modified: `estimate_llc` works on a copy and restores the
# global random number generators, so a training run can call it mid-training without changing.
