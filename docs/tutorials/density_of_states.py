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
# # Density of states: reading λ and its multiplicity from a curve
#
# The LLC is one number. The *density of states* (DOS) is the curve behind it: how the volume of weights
# with loss within $t$ of the minimum grows with $t$,
#
# $$ v(t) = \int \delta\big(t - K(w)\big)\,\varphi(w)\,dw \approx c\, t^{\lambda - 1} (-\log t)^{m-1}
# \quad (t \to 0), $$
#
# where $K(w) = L(w) - L(w^*)$ and $\varphi$ is the prior (here the Gaussian localizer). On log-log axes the
# small-$t$ slope is $\lambda - 1$; the multiplicity $m$ bends the line. `slt.estimate_dos` samples chains
# at a ladder of inverse temperatures $x_k$ (Metropolis-adjusted Langevin steps with swaps between
# neighbouring rungs), reweights the pooled samples with MBAR into $\ln \hat v(t)$ up to a constant, and
# fits $\ln v = \ln c + (\lambda - 1)\ln t + (m - 1)\ln(-\ln t)$ on the small-$t$ window.

# %%
import numpy as np
import torch
from torch import nn

import slt

torch.set_num_threads(1)

# %% [markdown]
# ## A normal crossing with a known answer
#
# $K(w) = w_1^2 w_2^2$ has $\lambda = 1/2$ and $m = 2$: the volume of near-optimal weights grows like
# $\sqrt{t}\,\log(1/t)$, faster than any regular model's. The "model" is a bare parameter vector and the
# loss ignores the data (one dummy row).

# %%
class Weights(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, dtype=torch.float64))

    def forward(self, x):
        return x


def crossing(model, batch):
    return (model.w**2).prod()


ladder = np.geomspace(1.0, 1e8, 17)  # t from about 1e-14 to 1
dos = slt.estimate_dos(Weights(2), torch.zeros(1, 1), loss_fn=crossing, temperatures=ladder,
                       num_chains=16, num_draws=1000, progress=False, seed=0)
dos

# %% [markdown]
# The left panel is $\ln \hat v(t)$ with its bootstrap band (resampling whole chains) and the fitted line
# on the shaded window; the right panel is $x\,\mathbb{E}_x[t]$ per rung — the LLC estimate
# `estimate_llc` would give at that temperature, which creeps towards $\lambda$ only logarithmically when
# $m > 1$.

# %%
fig = dos.plot()

# %%
dos.summary().T

# %% [markdown]
# ## Compare with a regular bowl
#
# For $K = \lVert w\rVert^2$ in $d = 4$ dimensions, $\lambda = d/2 = 2$ and $m = 1$: a straight line of
# slope 1.

# %%
def bowl(model, batch):
    return (model.w**2).sum()


regular = slt.estimate_dos(Weights(4), torch.zeros(1, 1), loss_fn=bowl, temperatures=ladder,
                           num_chains=8, num_draws=600, progress=False, seed=0)
print(f"regular bowl: λ = {regular.llc:.3f} ± {regular.llc_stderr:.3f}, m = {regular.multiplicity:.2f}")
print(f"crossing:     λ = {dos.llc:.3f} ± {dos.llc_stderr:.3f}, m = {dos.multiplicity:.2f} ± {dos.multiplicity_stderr:.2f}")

# %% [markdown]
# ## Reading a curve
#
# - **Slope** on the small-$t$ window: $\lambda - 1$ (for $m = 1$).
# - **Curvature** in log-log: a logarithmic factor, $m > 1$. Fitting a straight line to such a curve gives
#   an exponent that drifts with the window; the three-term fit separates the two.
# - **Where the power law stops** (large $t$): the localizer and the global shape of the loss take over;
#   only the small-$t$ end is about the singularity.
# - **Warnings**: `OverlapWarning` when neighbouring rungs share too few samples for reweighting (add
#   rungs), `FitWarning` when the fit window spans too few decades to tell λ from m (extend the ladder to
#   colder temperatures), `ConvergenceWarning` when replicas rarely travel between the hottest and coldest
#   rung.
#
# For trained networks, pass a ladder that reaches well below the loss scale you care about; the default
# ($n\beta^*/30$ to $30\,n\beta^*$) covers the temperatures an LLC estimate uses, which is often too narrow a
# window to separate $\lambda$ from $m$. There the default `fit_form="auto"` reports the power form's local
# slope ($m = 1$ assumed) instead of a three-term fit it cannot support, and its `FitWarning` gives the log
# form's numbers and says how much colder the ladder must go for them (`fit_form="log"` insists on them).
