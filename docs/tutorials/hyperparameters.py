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
# # Choosing hyperparameters
#
# SGLD estimates depend on the step size $\varepsilon$: too large and the chain samples a distribution
# wider than the posterior (the estimate is biased upwards, or the chain diverges); too small and the
# chain does not move far enough in the steps it has (the estimate is too low and the chains disagree).
# `slt.calibrate` finds the step in between by measuring, not guessing.

# %%
import matplotlib.pyplot as plt
import torch
from torch import nn

import slt

torch.set_num_threads(1)
torch.manual_seed(1)

n = 4000
x = torch.randn(n, 8)
y = torch.tanh(x @ torch.randn(8, 1)) + 0.1 * torch.randn(n, 1)
model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(1500):
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()

# %% [markdown]
# ## Calibrate
#
# `calibrate` first runs the chains from the trained weights with `estimate_llc`'s automatic length
# (the `length` rows: doubling segments until the estimate holds), so they are equilibrated. From there
# it continues them over a halving ladder of step sizes (the `step` rows). Each step size runs for the
# *same simulated time* (half the step, twice the steps), so small steps are not penalized for moving
# less. With a bias linear in the step, halving the step changes the estimate by half the bias of the
# larger step: `bias_estimate` is that measured bias. The recommendation is the largest healthy step
# whose bias, plus one standard error, is within 10%; `max_seconds` caps the whole calibration.

# %%
calibration = slt.calibrate(model, (x, y), loss_fn="mse", progress=False)
calibration.summary()[["kind", "step_size", "num_steps", "llc_mean", "llc_stderr", "rhat", "bias_estimate", "healthy", "stable", "note"]]

# %%
print(calibration.criteria)
print(calibration.estimate_kwargs())
fig = calibration.plot()

# %% [markdown]
# In this run no rung passes, and `calibrate` says so with a `ConvergenceWarning`: from 8.7e-4 down to
# 1.1e-4 the rungs' estimates stay within 12.2-13.1, but the biases measured from halving the step (−3%,
# −11%, +9%) each come with a standard error too large to certify one below 10%. It then recommends its smallest
# healthy step, the cautious choice (the slowest, with the smallest bias); longer rungs (`base_steps`)
# would narrow that noise.
#
# Every rung continues the same four chains, so chain `c` of one rung and chain `c` of the next share
# where they started: calibrate compares rungs chain by chain (the standard error of the per-chain
# differences), which cancels that shared part. Compared as independent estimates, rungs with standard
# errors of 3-5% could never certify a bias below 10%.
#
# Use the recommendation as keyword arguments of `estimate_llc`:

# %%
result = slt.estimate_llc(model, (x, y), loss_fn="mse", progress=False, **calibration.estimate_kwargs())
result.summary()[["llc_mean", "llc_stderr", "rhat", "ess", "step_size", "num_draws"]]

# %% [markdown]
# ## What a bad chain looks like
#
# **Step too large.** At the top of the ladder (four times the recommended step here) the loss climbs
# far above the level the calibrated chains settle at, and the estimate is inflated (or the chains
# diverge, which slt reports and excludes):

# %%
import warnings

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    too_large = slt.estimate_llc(model, (x, y), loss_fn="mse", step_size=calibration.step_size * 4,
                                 num_draws=500, progress=False)
print(too_large)
for w in caught:
    print(type(w.message).__name__, ":", w.message)

# %% [markdown]
# Both bad runs below also raise a `ShortChainWarning`: their 500 draws (and burn-in) at these steps
# cover less simulated time $\varepsilon T$ than the automatic length's floor (0.5 at γ = 1), and the chains
# travelled more than 30% of drift-free diffusion's squared distance from $w^*$, so many directions had not
# relaxed (see "How long, and how sure" in the theory page).
#
# **Step too small.** The chains are still climbing when the draws begin: the running estimates keep
# rising, the trend statistic is large, R-hat flags the disagreement, and the chains have spread from
# $w^*$ as if the posterior had no shape (99% of free diffusion's distance, a `ShortChainWarning`).

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    too_small = slt.estimate_llc(model, (x, y), loss_fn="mse", step_size=calibration.step_size / 50,
                                 num_draws=500, progress=False)
print(too_small, "trend z =", round(too_small.diagnostics.trend_z, 1))
for w in caught:
    print(type(w.message).__name__, ":", w.message)

# %%
fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), constrained_layout=True)
too_large.plot(ax=axes[0])
too_small.plot(ax=axes[1])
axes[0, 0].set_title("step ×4: loss trace")
axes[1, 0].set_title("step ÷50: loss trace")

# %% [markdown]
# ## What to change
#
# | symptom | likely cause | what to try |
# |---|---|---|
# | chains diverge (`DivergenceWarning`) | step too large | a smaller `step_size`, or `calibrate` |
# | a chain passed the step's stability limit (`DivergenceWarning`, left out of the estimate) | step too large where that chain went | a smaller `step_size` |
# | estimate moves when the step halves | step-size bias | the step `calibrate` recommends |
# | R-hat > 1.1, large `trend_z` | chains too short for the step | more `num_burnin`/`num_draws`, a larger step |
# | chains still spreading (`ShortChainWarning`) | a given length too short to relax | `num_draws=None` (the automatic length), or more steps |
# | negative estimate (`NotAMinimumWarning`) | $w^*$ is not a local minimum | train longer; raise `localization` |
# | estimate changes with `localization` | the posterior leaves the basin | compare a few values with `calibrate(localizations=[...])` |
#
# `calibrate(localizations=[1, 10, 100])` also runs every step size at several localizations and
# recommends the smallest localization whose chains are healthy.
