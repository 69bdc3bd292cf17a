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
# # Many checkpoints: process pools, Ray and Slurm
#
# `slt.analyze_checkpoints` measures every checkpoint of a run as one task, commits each result to an
# SQLite store as soon as it is done, and skips finished work when run again. The same call runs the
# tasks in this process, on a local process pool, on Ray, or on Slurm through submitit.
#
# Workers import the model factory and the data function by name, so they live in a module — here a
# small file written next to the checkpoints, in a real project your own package.

# %%
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

import slt

torch.set_num_threads(1)
workdir = Path(tempfile.mkdtemp())
(workdir / "toyrun.py").write_text(textwrap.dedent('''
    import torch
    from torch import nn

    def make_model():
        return nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 1))

    def make_data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1000, 4, generator=g)
        y = torch.sin(x[:, :1]) + 0.1 * torch.randn(1000, 1, generator=g)
        return x, y
'''))
sys.path.insert(0, str(workdir))
# processes started by submitit (or a shell) find the module through PYTHONPATH
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))
import toyrun

# %% [markdown]
# Train briefly and save a checkpoint every 40 steps as safetensors (the step is read from the name).
# %%
from safetensors.torch import save_file

ckpt_dir = workdir / "checkpoints"
ckpt_dir.mkdir()
torch.manual_seed(0)
model = toyrun.make_model()
x, y = toyrun.make_data()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for step in range(1, 241):
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    if step % 40 == 0:
        save_file(model.state_dict(), ckpt_dir / f"step_{step}.safetensors")
sorted(p.name for p in ckpt_dir.iterdir())

# %% [markdown]
# ## In this process

# %%
settings = dict(loss_fn="mse", measures=("llc", "loss"), num_chains=2, num_draws=200, step_size=1e-4,
                progress=False)
start = time.perf_counter()
serial = slt.analyze_checkpoints(ckpt_dir, toyrun.make_model, (x, y), store=workdir / "serial.sqlite",
                                 **settings)
print(f"serial: {time.perf_counter() - start:.1f} s")
serial.to_dataframe()[["step", "llc_mean", "llc_stderr", "train_loss"]].round(3)

# %% [markdown]
# These chains are short on purpose, so that the page runs in seconds: 200 draws at ε = 1e-4 cover a
# simulated time far below the automatic length's floor, and every checkpoint carries a
# `ShortChainWarning` (the chains spread from $w^*$ almost as far as drift-free diffusion would), raised
# once per sweep and kept in `serial.warnings`. This page is about where the work runs; for numbers to report, leave `num_draws` and
# `step_size` out and let the sweep choose them once at a reference checkpoint.
#
# Run it again and nothing is recomputed: every checkpoint is already in the store. A sweep killed
# halfway resumes the same way.

# %%
start = time.perf_counter()
again = slt.analyze_checkpoints(ckpt_dir, toyrun.make_model, (x, y), store=workdir / "serial.sqlite",
                                **settings)
print(f"rerun: {time.perf_counter() - start:.2f} s, same numbers: {list(again.llc_mean) == list(serial.llc_mean)}")

# %% [markdown]
# ## A local process pool
#
# Each checkpoint's seed comes from the base seed and its step, so every executor gives the serial
# numbers.

# %%
with slt.process_pool(2) as pool:
    pooled = slt.analyze_checkpoints(ckpt_dir, toyrun.make_model, toyrun.make_data(), executor=pool,
                                     store=workdir / "pool.sqlite", **settings)
print("same as serial:", list(pooled.llc_mean) == list(serial.llc_mean))

# %% [markdown]
# ## Ray
#
# `executor="ray"` uses the cluster `ray.init` connects to — an initialized Ray, the address in
# `RAY_ADDRESS`, or a local Ray started for the sweep. `slt.RayExecutor(address, num_gpus=1)` reserves
# GPUs per task on a real cluster.

# %%
import ray

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
on_ray = slt.analyze_checkpoints(ckpt_dir, toyrun.make_model, toyrun.make_data(), executor="ray",
                                 store=workdir / "ray.sqlite", **settings)
ray.shutdown()
print("same as serial:", list(on_ray.llc_mean) == list(serial.llc_mean))

# %% [markdown]
# ## Slurm through submitit
#
# submitit's executors have the same `submit` method. On a Slurm cluster use
# `submitit.AutoExecutor(folder)` and set the partition and resources; `cluster="local"` below runs the
# same jobs as local processes, which is how to test a submission script before queueing it.
#
# ```python
# executor = submitit.AutoExecutor(folder="slurm-logs")
# executor.update_parameters(slurm_partition="gpu", gpus_per_node=1, timeout_min=60)
# slt.analyze_checkpoints(ckpt_dir, toyrun.make_model, data, executor=executor, device="cuda", ...)
# ```

# %%
import submitit

executor = submitit.AutoExecutor(folder=workdir / "submitit", cluster="local")
executor.update_parameters(timeout_min=10)
on_submitit = slt.analyze_checkpoints(ckpt_dir, toyrun.make_model, toyrun.make_data(), executor=executor,
                                      store=workdir / "submitit.sqlite", **settings)
# submitit's processes use torch's default thread count, so the last bits may differ from this process
difference = abs(on_submitit.llc_mean - serial.llc_mean).max()
print(f"largest difference from serial: {difference:.2g}")

# %% [markdown]
# ## From the command line
#
# The same sweep without writing Python: `--model` and `--data` name functions as `module:function`
# (or `file.py:function`), and `slt report` turns a store into plots, a CSV and a markdown table.
#
# ```bash
# slt analyze checkpoints/ --model toyrun:make_model --data toyrun:make_data --loss mse \
#     --out results.sqlite --workers 2 --num-chains 2 --num-draws 200 --step-size 1e-4
# # --threads 1 keeps torch to one thread per process: often fastest for small models or a busy machine
# slt report results.sqlite --out report/
# ```

# %%
import subprocess

run = subprocess.run(
    [sys.executable, "-m", "slt", "analyze", str(ckpt_dir), "--model", "toyrun:make_model",
     "--data", "toyrun:make_data", "--loss", "mse", "--out", str(workdir / "cli.sqlite"),
     # the settings of the Python sweeps above (without them the sweep chooses γ, the step size and the
     # chain lengths once, at reference checkpoints, and holds them fixed: --reference auto)
     "--num-chains", "2", "--num-draws", "200", "--step-size", "1e-4", "--threads", "1", "--no-progress"],
    cwd=workdir, capture_output=True, text=True,
)
print(run.stdout[-800:] or run.stderr[-800:])
report = subprocess.run([sys.executable, "-m", "slt", "report", str(workdir / "cli.sqlite"), "--out",
                         str(workdir / "report")], cwd=workdir, capture_output=True, text=True)
print(sorted(p.name for p in (workdir / "report").iterdir()))
