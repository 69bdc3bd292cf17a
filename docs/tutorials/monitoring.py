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
# # Monitoring during training
#
# `slt.LLCMonitor` measures the LLC every few steps inside any training loop. It works on a copy of the
# model and restores the global random number generators, so the training run — weights, gradients,
# optimizer state, data order — is bit for bit the run you would have had without it.

# %%
import copy
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slt

torch.set_num_threads(1)
workdir = Path(tempfile.mkdtemp())

torch.manual_seed(0)
x = torch.randn(2000, 5)
y = (x[:, :2].sum(1) > 0).long() + (x[:, 2] > 1).long()
initial = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))

# %% [markdown]
# ## A plain loop
#
# Call the monitor with the model and the step after each optimizer step. `every` takes an interval, an
# explicit collection of steps (spaced logarithmically here, where early training changes fastest) or a
# predicate. Estimator settings are passed through; a fixed step size keeps the measurements comparable.

# %%
def train(monitor=None, steps=300, seed=0):
    torch.manual_seed(seed)
    model = copy.deepcopy(initial)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True)
    step = 0
    while step < steps:
        for xb, yb in loader:
            model.train()
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
            step += 1
            if monitor is not None:
                monitor(model, step)
            if step == steps:
                break
    return model


log_steps = sorted({int(s) for s in torch.logspace(0.5, 2.48, 9).tolist()})
monitor = slt.LLCMonitor((x, y), loss_fn="cross_entropy", every=log_steps, store=workdir / "monitor.sqlite",
                         measures=("llc", "loss"), num_chains=2, num_draws=200, step_size=1e-4)
monitored = train(monitor)
plain = train(None)
print("steps measured:", log_steps)
print("identical final weights:", all(torch.equal(a, b) for a, b in zip(monitored.state_dict().values(),
                                                                      plain.state_dict().values())))

# %% [markdown]
# Here the step size is fixed by hand. To have slt choose the settings once and hold them, pass
# `reference=`: a trained model (for example the final model of an earlier run, or the pretrained model
# you fine-tune) or `"first"` (the first measured step, which should come after the loss has fallen). γ,
# the step size and the chain lengths you did not give are then chosen at that model by the rule
# `slt.analyze_checkpoints` uses, recorded in `monitor.settings["reference"]` and used at every step:
#
# ```python
# monitor = slt.LLCMonitor((x, y), loss_fn="cross_entropy", every=log_steps, reference=pilot_model)
# ```
#
# Choosing costs a few of these measurements (two minutes for this classifier, whose pilot run has not
# settled, so its lengths are still chosen per step); `reference=None`, the default, lets each step choose
# its own step size and length. Either way a step whose length is left to slt runs the automatic length,
# which stops only when the estimate holds to a 5% standard error: 40-102 s per point on this classifier
# (16,000-32,000 draws per chain), against 0.75 s for the whole training run. The fixed `num_draws` and
# `step_size` above measure the 8 steps in about 7 s.
#
# The first measurements come with warnings: a few steps into training the weights are not a local
# minimum, the chains find lower loss and the estimate is negative. slt records these numbers and says so
# (`NotAMinimumWarning`) rather than hiding them; they are informative about how far from a minimum the
# run still is. Every measurement also carries a `ShortChainWarning`: 200 burn-in steps and 200 draws at
# ε = 1e-4 cover a simulated time of 0.04, a twelfth of the automatic length's floor, and the chains
# spread from $w^*$ nearly as far as drift-free diffusion would (78-127% of it). Such numbers show the shape
# of the curve cheaply, not the LLC's value; `reference=` above chooses lengths that relax. The results are
# a `Trajectory`, the same object a post-hoc sweep returns:

# %%
trajectory = monitor.trajectory
trajectory.to_dataframe()[["step", "llc_mean", "llc_stderr", "train_loss"]].round(3)

# %%
fig = trajectory.plot()

# %% [markdown]
# Every measurement was committed to the SQLite store as it was taken, so a crashed run loses nothing and
# `slt.Trajectory.load(path)` reads it back later.
#
# ## PyTorch Lightning
#
# `monitor.lightning_callback()` wraps the same monitor as a Lightning callback that runs after each
# training batch with `trainer.global_step`.

# %%
import lightning as L


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = copy.deepcopy(initial)

    def forward(self, inputs):
        return self.net(inputs)

    def training_step(self, batch, batch_idx):
        xb, yb = batch
        return nn.functional.cross_entropy(self.net(xb), yb)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


# the monitor calls model(x): the LightningModule's forward delegates to the network
lightning_monitor = slt.LLCMonitor((x, y), loss_fn="cross_entropy", every=50, num_chains=2, num_draws=200,
                                   step_size=1e-4)
trainer = L.Trainer(max_steps=200, callbacks=[lightning_monitor.lightning_callback()], logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    accelerator="cpu", devices=1)
torch.manual_seed(0)
trainer.fit(Classifier(), DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True))
lightning_monitor.trajectory.to_dataframe()[["step", "llc_mean", "llc_stderr"]].round(3)
