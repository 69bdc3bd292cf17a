"""Models, data and checkpoints shared by the trajectory tests and by the processes they start.

Everything here is importable by name, so worker processes (a process pool, Ray) and subprocesses
(the command line, a sweep that gets killed) can rebuild the same objects.
"""

import time
from pathlib import Path

import torch
from torch import nn

#: Estimator settings small enough to keep every test fast.
TINY = dict(num_chains=2, num_draws=20, num_burnin=5, step_size=2e-5, batch_size=32, localization=1.0)


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


def make_wide_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))


def make_model_slowly() -> nn.Module:
    """Like make_model, but takes a quarter of a second: a sweep that can be killed midway."""
    time.sleep(0.25)
    return make_model()


def regression_data(n: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def held_out_data():
    return regression_data(64, seed=1)


def gaussian_nll(model, batch):
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).sum(-1).mean()


def train_and_save(folder, count: int = 20, every: int = 5, suffix: str = ".pt") -> list[Path]:
    """Train make_model() with Adam, saving a state dict every ``every`` steps as step_XXXXX files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = regression_data()
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    paths = []
    for step in range(count * every):
        if step % every == 0:
            path = folder / f"step_{step:05d}{suffix}"
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if suffix == ".safetensors":
                from safetensors.torch import save_file

                save_file(state, str(path))
            else:
                torch.save(state, path)
            paths.append(path)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return paths


def make_dropout_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Tanh(), nn.Linear(8, 1))


def sleep_and_pid(seconds: float) -> int:
    """A pool task: sleep, then say which process ran it."""
    import os

    time.sleep(seconds)
    return os.getpid()
