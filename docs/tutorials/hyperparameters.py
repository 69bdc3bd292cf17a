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
# whose bias, plus one standard error, is within 10%; where no step can be certified only because the
# comparisons are too noisy, the rungs are lengthened first (below). `max_seconds` caps the whole
# calibration.

# %%
calibration = slt.calibrate(model, (x, y), loss_fn="mse", progress=False)
calibration.summary()[["kind", "step_size", "num_steps", "llc_mean", "llc_stderr", "rhat", "bias_estimate", "healthy", "stable", "note"]]

# %%
print(calibration.criteria)
print(calibration.estimate_kwargs())
fig = calibration.plot()

# %% [markdown]
# In this run the first ladder certified no rung: the biases measured by halving the step (−3%, −11%,
# +9%) each came with a standard error too large to certify one below 10%. `calibrate` then continued
# every healthy rung from where it ended for as many steps again and pooled the draws (`num_steps` counts
# them all; `settings["ladder_doublings"]` says how many doublings ran: one here). With twice the draws,
# the step 8.7e-4 measured a bias of −3% with a standard error small enough to certify it, so it is
# recommended: twice the automatic step (4.4e-4) at which the length stage ran. The top rung, 1.7e-3, is
# unhealthy: three of its four chains passed the step's stability limit, and its predicted step bias is
# above 20%, where `estimate_llc` would warn (a rung it would warn about is never recommended).
#
# Every rung continues the same four chains, so chain `c` of one rung and chain `c` of the next share
# where they started: calibrate compares rungs chain by chain (the standard error of the per-chain
# differences), which cancels that shared part. Compared as independent estimates, rungs with standard
# errors of 3-5% could never certify a bias below 10%.
#
# Use the recommendation as keyword arguments of `estimate_llc`. They carry the step, γ, nβ, sampler and
# batch, not the lengths: at that step the estimate sizes its chains by its own automatic length (here
# 1,000 draws), which checks that they converged.

# %%
result = slt.estimate_llc(model, (x, y), loss_fn="mse", progress=False, **calibration.estimate_kwargs())
result.summary()[["llc_mean", "llc_stderr", "rhat", "ess", "step_size", "num_draws"]]

# %% [markdown]
# ## What a bad chain looks like
#
# **Step too large.** At 1.5 times the recommended step, run from $w^*$ for 500 draws, the estimate reads
# 15.8 against 13.2 at the recommended step, and its standard error is six times larger (2.4 against
# 0.41): the chains disagree far more, and the interval is wide (2.8 to 23.3). The step's predicted bias,
# measured from the draws' gradients, is 31% (10% at the recommended step), above the 20% at which
# `estimate_llc` warns (`StepSizeWarning`) and suggests a smaller step.
# At twice the recommended step, the ladder's top rung, every chain diverges from $w^*$ and `estimate_llc`
# raises a `ChainDivergenceError` that names a smaller step.

# %%
import warnings

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    too_large = slt.estimate_llc(model, (x, y), loss_fn="mse", step_size=calibration.step_size * 1.5,
                                 num_draws=500, progress=False)
print(too_large)
for w in caught:
    print(type(w.message).__name__, ":", w.message)

# %% [markdown]
# **Step too small.** At a fiftieth of the recommended step the chains are still climbing when the draws
# begin: the running estimates keep rising, R-hat (2.3) flags the disagreement, and the chains have spread
# from $w^*$ as if the posterior had no shape. Its 500 draws (and burn-in) cover less simulated time
# $\varepsilon T$ than the automatic length's floor (0.5 at γ = 1) while the chains travelled 94% of
# drift-free diffusion's squared distance from $w^*$ (more than 30%), so many directions had not relaxed:
# a `ShortChainWarning` (see "How long, and how sure" in the theory page).

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
axes[0, 0].set_title("step ×1.5: loss trace")
axes[1, 0].set_title("step ÷50: loss trace")

# %% [markdown]
# ## What to change
#
# | symptom | likely cause | what to try |
# |---|---|---|
# | chains diverge (`DivergenceWarning`) | step too large | a smaller `step_size`, or `calibrate` |
# | a chain passed the step's stability limit (`DivergenceWarning`, left out of the estimate) | step too large where that chain went | a smaller `step_size` |
# | predicted bias above 20% (`StepSizeWarning`) | step too large | the step the warning suggests, or `calibrate` |
# | estimate moves when the step halves | step-size bias | the step `calibrate` recommends |
# | R-hat > 1.1, large `trend_z` | chains too short for the step | more `num_burnin`/`num_draws`, a larger step |
# | chains still spreading (`ShortChainWarning`) | a given length too short to relax | `num_draws=None` (the automatic length), or more steps |
# | negative estimate (`NotAMinimumWarning`) | $w^*$ is not a local minimum | train longer; raise `localization` |
# | estimate changes with `localization` | the posterior leaves the basin | compare a few values with `calibrate(localizations=[...])` |
#
# `calibrate(localizations=[1, 10, 100])` also runs every step size at several localizations and
# recommends the smallest localization whose chains are healthy.
