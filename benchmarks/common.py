"""Shared pieces of the benchmarks: models, losses, the devinterp adapter, timing and result files.

devinterp 2.0.1 is optional. It lives in its own environment (it pulls transformers, datasets, zarr and
pydantic); :func:`peer_status` says whether it can be imported here, and every benchmark skips its peer
columns with that note when it cannot.

devinterp 2.x accepts only language-model style data: a dataset whose items hold an ``input_ids`` row and
a ``loss_fn(model, input_ids) -> per-token loss (batch, seq - 1)``. Regression data is handed to it as
rows ``[sample index, 0]`` (one "predicted token" per row), and the loss looks the samples up by index:
the same Gaussian negative log-likelihood per sample as slt's, on the same tensors. Token data for the
transformer is passed as it is, with devinterp's own next-token cross-entropy.
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

RESULTS = Path(__file__).parent / "results"
PEER = "devinterp 2.0.1"

# -- losses (identical for both libraries) ------------------------------------------------------


def gaussian_nll(model: nn.Module, batch: Any) -> torch.Tensor:
    """Negative log-likelihood per sample of unit-variance Gaussian noise, up to a constant."""
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).sum(-1).mean()


def next_token_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean next-token cross-entropy over every predicted position (devinterp's default loss)."""
    (tokens,) = batch
    logits = model(tokens)[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


LOSSES: dict[str, Callable[[nn.Module, Any], torch.Tensor]] = {
    "gaussian_nll": gaussian_nll,
    "next_token": next_token_loss,
}

# -- models --------------------------------------------------------------------------------------


def mlp(widths: list[int], *, seed: int = 0) -> nn.Sequential:
    """A ReLU MLP with the given layer widths (input first)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mlp_with_params(target: int, *, d_in: int = 32, seed: int = 0) -> nn.Sequential:
    """A two-hidden-layer MLP ``d_in -> h -> h -> 1`` with about ``target`` parameters."""
    # params = d_in*h + h + h*h + h + h + 1 = h^2 + (d_in + 3) h + 1
    b = d_in + 3
    h = max(1, round((-b + math.sqrt(b * b + 4 * (target - 1))) / 2))
    return mlp([d_in, h, h, 1], seed=seed)


def regression_problem(model: nn.Module, n: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``N(0, I)`` and targets ``model(x) + N(0, 1)``: the model sits at the true parameter."""
    first = next(p for p in model.parameters() if p.ndim == 2)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, first.shape[1], generator=g)
    with torch.no_grad():
        y = model(x)
    return x, y + torch.randn(y.shape, generator=g)


class TinyTransformer(nn.Module):
    """A decoder-only transformer: token and position embeddings, pre-norm causal attention blocks."""

    def __init__(self, vocab: int = 64, d_model: int = 64, heads: int = 4, layers: int = 2, ctx: int = 16):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(ctx + 1, d_model)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(d_model),
                    "qkv": nn.Linear(d_model, 3 * d_model),
                    "out": nn.Linear(d_model, d_model),
                    "ln2": nn.LayerNorm(d_model),
                    "up": nn.Linear(d_model, 4 * d_model),
                    "down": nn.Linear(4 * d_model, d_model),
                }
            )
            for _ in range(layers)
        )
        self.ln = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        h = self.embed(tokens) + self.pos(torch.arange(t, device=tokens.device))
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](h)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + blk["out"](a.transpose(1, 2).reshape(b, t, -1))
            h = h + blk["down"](F.gelu(blk["up"](blk["ln2"](h))))
        return self.unembed(self.ln(h))


def token_problem(n: int, *, vocab: int = 64, ctx: int = 16, seed: int = 0) -> tuple[torch.Tensor]:
    """Sequences of ``ctx + 1`` tokens from a noisy periodic rule, so the data has structure."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(vocab, (n, 1), generator=g)
    stride = torch.randint(1, 5, (n, 1), generator=g)
    seq = (start + stride * torch.arange(ctx + 1)) % vocab
    flip = torch.rand(seq.shape, generator=g) < 0.1
    seq = torch.where(flip, torch.randint(vocab, seq.shape, generator=g), seq)
    return (seq,)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- the peer ------------------------------------------------------------------------------------


def peer_status(skip: bool = False) -> tuple[bool, str]:
    """Whether devinterp 2.0.1 can be imported (and is not skipped by ``--no-peer``), with a note."""
    if skip:
        return False, "devinterp skipped (--no-peer)"
    try:
        from importlib.metadata import version

        import devinterp  # noqa: F401

        found = version("devinterp")
    except Exception as exc:  # ImportError, or a broken install
        return False, (
            f"devinterp is not installed in this environment ({type(exc).__name__}); peer columns are "
            "skipped. See benchmarks/README.md to create its environment."
        )
    if found != "2.0.1":
        return True, f"devinterp {found} found; these benchmarks were written against 2.0.1"
    return True, f"devinterp {found}"


class _IndexRows(torch.utils.data.Dataset):
    """Rows ``[i, 0]``: the sample index as devinterp's ``input_ids`` (one predicted position)."""

    def __init__(self, n: int):
        self.rows = torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)], 1)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i]}


class _TokenRows(torch.utils.data.Dataset):
    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i]}


@dataclass
class PeerEstimate:
    """What one devinterp ``llc`` call gave, and the same traces re-scored the slt way."""

    mean: float  # devinterp's llc_mean as returned
    per_chain: list[float]
    seconds: float  # wall time of the llc() call
    rescored: float  # burn-in dropped, full-data L_n(w*) subtracted
    init_loss: float  # devinterp's init loss (from num_init_loss_batches minibatches)
    failed_chains: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def devinterp_llc(
    model: nn.Module,
    data: tuple[torch.Tensor, ...],
    loss: str,
    *,
    step_size: float,
    n_beta: float,
    localization: float,
    num_chains: int,
    num_draws: int,
    num_burnin: int = 0,
    batch_size: int = 32,
    sampler: str = "sgld",
    full_init_loss: float | None = None,
    seed: int = 100,
    device: str = "cpu",
    num_init_loss_batches: int = 32,
) -> PeerEstimate:
    """Run ``devinterp.slt.llc.llc`` on the given model and data (see the module docstring)."""
    from devinterp.slt.llc import compute_llc
    from devinterp.slt.sampling import sample

    device_data = tuple(t.to(device) for t in data)
    if loss == "gaussian_nll":
        x, y = device_data
        dataset: torch.utils.data.Dataset = _IndexRows(len(x))

        def loss_fn(m: nn.Module, ids: torch.Tensor) -> torch.Tensor:
            i = ids[:, 0]
            return 0.5 * ((m(x[i]) - y[i]) ** 2).sum(-1, keepdim=True)

    elif loss == "next_token":
        dataset = _TokenRows(data[0])
        loss_fn = None  # devinterp's own next-token cross-entropy
    else:
        raise ValueError(f"unknown loss {loss!r}")
    method = {"sgld": "sgmcmc_sgld", "rmsprop_sgld": "rmsprop_sgld"}[sampler]
    folder = tempfile.mkdtemp(prefix="devinterp-bench-")
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught, _quiet_tqdm(), _keep_rng():
            warnings.simplefilter("always")
            start = time.perf_counter()
            tree = sample(
                model=model,
                dataset=dataset,
                observables={},
                lr=step_size,
                n_beta=n_beta,
                localization=localization,
                num_chains=num_chains,
                num_draws=num_draws,
                num_burnin_steps=num_burnin,
                batch_size=batch_size,
                num_init_loss_batches=num_init_loss_batches,
                sampling_method=method,
                init_seed=seed,
                device=device,
                loss_fn=loss_fn,
                output_path=os.path.join(folder, "samples.zarr"),
            )
            result = compute_llc(tree)
            seconds = time.perf_counter() - start
        trace = np.asarray(result["loss_trace"].values, dtype=np.float64)  # (chain, step)
        per_chain = [float(v) for v in np.asarray(result["llc_per_chain"].values)]
        draws = trace[:, num_burnin:]
        reference = full_init_loss if full_init_loss is not None else float(result["init_loss"])
        rescored = n_beta * float(np.nanmean(draws.mean(axis=1)) - reference)
        failed = sum("Chain failed" in str(w.message) for w in caught)
        return PeerEstimate(
            mean=float(result["llc_mean"]),
            per_chain=per_chain,
            seconds=seconds,
            rescored=rescored,
            init_loss=float(result["init_loss"]),
            failed_chains=failed,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _quiet_tqdm() -> Iterator[None]:
    """Hide devinterp's per-chain progress bars (tqdm writes them to stderr)."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def _keep_rng() -> Iterator[None]:
    """devinterp reseeds the global RNGs; restore them so the benchmark's own draws are unaffected."""
    import random

    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()  # noqa: NPY002 - restoring the legacy global state
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def devinterp_default_settings(batch_size: int = 32) -> dict[str, Any]:
    """devinterp 2.0.1 as documented: its defaults, the README's ``lr`` and ``default_nbeta(batch)``.

    ``llc()`` has no default for ``lr`` or ``n_beta``. The README's examples use ``lr=0.001``;
    ``devinterp.utils.default_nbeta`` (the library's named default for the inverse temperature) gives
    ``b / log b`` for batch size ``b``. Everything else is ``sample()``'s default: 4 chains, 200 draws,
    no burn-in, batch size 32, no localization, ``L_n(w*)`` from 32 minibatches.
    """
    return {
        "step_size": 1e-3,
        "n_beta": batch_size / math.log(batch_size),
        "localization": 0.0,
        "num_chains": 4,
        "num_draws": 200,
        "num_burnin": 0,
        "batch_size": batch_size,
        "sampler": "sgld",
    }


# -- timing and files ----------------------------------------------------------------------------


def collect() -> None:
    """Free memory between timed runs, outside the timed region."""
    gc.collect()


def median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else float("nan")


def environment(device: str) -> dict[str, Any]:
    """Where the numbers were measured."""
    peer_ok, peer_note = peer_status()
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device,
        "peer": peer_note,
        "peer_available": peer_ok,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def write_json(name: str, payload: dict[str, Any], folder: Path = RESULTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(_clean(payload), indent=1, allow_nan=False))
    return path


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _clean(value.item())
    return value
