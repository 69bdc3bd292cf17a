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
# # Coming from devinterp
#
# slt estimates the same quantity as devinterp's `llc` (2.x) and `estimate_learning_coeff_with_summary`
# (1.x). The names map as follows.
#
# | devinterp | slt | note |
# |---|---|---|
# | `estimate_learning_coeff_with_summary(model, loader, ...)` / `llc(...)` | `slt.estimate_llc(model, data, loss_fn=...)` | `data` may be tensors, a `Dataset` or a `DataLoader` |
# | `evaluate=` / `evaluate_mse` / `evaluate_ce` | `loss_fn=` callable `(model, batch) -> loss`, or `"mse"` / `"cross_entropy"` | |
# | a dataset with an `input_ids` column (2.x) | a dict of tensors (`{"input_ids": ids, "labels": ids}`) or a loader of dicts, no `loss_fn` | the model's own `.loss`; n counts tokens (`n_unit`) |
# | chains in `model.train()` mode | `model_mode="train"` | slt's default is eval mode (dropout off) |
# | `sampling_method=SGLD` / `SGMCMC.sgld` | `sampler="sgld"` | slt averages consecutive noise draws (Leimkuhler-Matthews), which removes most of the step-size bias at no cost; `sampler_options={"leimkuhler_matthews": False}` is devinterp's update |
# | `SGMCMC.rmsprop_sgld` | `sampler="rmsprop_sgld"` | slt freezes the preconditioner after burn-in |
# | `SGNHT` / `SGMCMC.sgnht` | `sampler="sgnht"` | same learning-rate parametrization |
# | `optimizer_kwargs=dict(lr=...)` | `step_size=` | default chosen by a pilot; `slt.calibrate` to tune |
# | `nbeta=` (`default_nbeta` = batch size / log batch size) | `n_beta=` (default n / log n, n the dataset size) | |
# | `localization=` | `localization=` | same γ |
# | `num_chains`, `num_draws` | `num_chains`, `num_draws` | slt's `num_draws=None` (default) runs until the estimate holds |
# | `num_burnin_steps` (2.0.1 averages burn-in into the estimate) | `num_burnin` (never in the estimate) | |
# | `num_steps_bw_draws` | `num_steps_bw_draws` | |
# | `init_loss` from a few minibatches | `result.init_loss` on the full data | its error is multiplied by nβ |
# | `llc/mean`, `llc/std`, `llc-chain/{i}`, `loss/trace` | `result.mean`, `result.std`, `result.per_chain[i]`, `result.loss_trace` | plus `stderr`, `trace`, diagnostics |
# | `OnlineLLCEstimator` callbacks | `observables={"name": fn(model)}` | per-draw values in `result.observables` |
# | restricted / "refined" LLC via masks | `mask=["layer.weight", ...]` or `{name: bool tensor}` | |
#
# What differs in the numbers:
#
# - **nβ**: devinterp's default uses the *batch* size; slt the *dataset* size, as in the papers. Pass
#   `n_beta=` explicitly to reproduce a devinterp run.
# - **Mode**: devinterp samples in train mode (dropout on); slt in eval mode unless `model_mode="train"`.
# - **n for sequence data**: slt counts the tokens the loss averages over (see "What slt computes").
# - **Burn-in**: excluded from the estimate in slt.
# - **L_n(w\*)**: computed on the full data in slt, so the reported error bar includes everything.
# - **Divergences**: a chain with a non-finite loss is excluded with a warning naming it; if all diverge,
#   slt raises and suggests a smaller step.
#
# A devinterp 1.x call and its slt equivalent:
#
# ```python
# # devinterp 1.x
# stats = estimate_learning_coeff_with_summary(
#     model, loader, evaluate=evaluate_ce, sampling_method=SGLD,
#     optimizer_kwargs=dict(lr=1e-4, localization=100.0, nbeta=default_nbeta(loader)),
#     num_chains=4, num_draws=200, num_burnin_steps=100,
# )
# stats["llc/mean"], stats["llc/std"]
# ```

# %%
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slt

torch.set_num_threads(1)
torch.manual_seed(0)
x, y = torch.randn(1024, 10), torch.randint(0, 4, (1024,))
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)

batch_nbeta = 64 / torch.log(torch.tensor(64.0)).item()  # devinterp's default_nbeta(loader)
result = slt.estimate_llc(
    model, loader, loss_fn="cross_entropy", step_size=1e-4, localization=100.0, n_beta=batch_nbeta,
    num_chains=4, num_draws=200, num_burnin=100, progress=False,
)
result.mean, result.std

# %% [markdown]
# (The model above is untrained, so its estimate is not meaningful; the call shapes are what matter. A
# side-by-side benchmark against devinterp lives in `benchmarks/`.)
