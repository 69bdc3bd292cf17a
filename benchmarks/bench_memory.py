"""Peak memory of a long chain: what sampling keeps beyond its traces.

Each configuration runs in a fresh Python process (so the peak resident set size belongs to it alone):
the model, data and sampler are built and warmed up, the resident set is read, then one chain of
``--draws`` draws of a ~10k-parameter MLP runs through :class:`slt.sampling.driver.PosteriorSampler`.
The growth of the peak resident set over the warmed-up one, minus the size of the traces the result
holds (8 bytes per draw and trace), is what the sampler kept on the side. ``tracemalloc`` is left off
during the timed run (it slows every allocation); a second, shorter run with it on counts the Python
objects still alive at the peak.

Usage::

    python benchmarks/bench_memory.py            # 1e5 draws, writes benchmarks/results/memory.json
    python benchmarks/bench_memory.py --draws 2000 --no-write
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
#: What the issue allows beyond the traces themselves.
BUDGET_MB = 100.0


def child(draws: int, mode: str, trace_python: bool) -> dict[str, Any]:
    """Run one chain in this process and return its memory numbers (called in a fresh process)."""
    import time
    import tracemalloc

    import torch
    from torch import nn

    from slt.sampling.driver import PosteriorSampler

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(20, 100), nn.Tanh(), nn.Linear(100, 80), nn.Tanh(), nn.Linear(80, 1))
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1000, 20)
    y = torch.randn(1000, 1)
    sampler = PosteriorSampler(model, (x, y), "mse", batch_size=100)
    settings = dict(n_beta=100.0, localization=1.0, step_size=1e-6, num_chains=1, chain_mode=mode)
    sampler.run(num_draws=200, **settings)  # warm up allocators and caches
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace_python:
        tracemalloc.start()
    start = time.perf_counter()
    result = sampler.run(num_draws=draws, control_variate=True, record_grad_norm=True, **settings)
    seconds = time.perf_counter() - start
    python_peak = tracemalloc.get_traced_memory()[1] if trace_python else None
    if trace_python:
        tracemalloc.stop()
    rss_after_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    traces = sum(
        a.nbytes
        for a in (
            result.loss_trace,
            result.burnin_loss_trace,
            result.grad_norm_sq,
            result.reference_loss_trace,
        )
        if a is not None
    )
    growth = (rss_after_kb - rss_before_kb) * 1024
    return {
        "params": params,
        "draws": draws,
        "chain_mode": result.chain_mode,
        "seconds": seconds,
        "us_per_step": 1e6 * seconds / draws,
        "peak_rss_growth_mb": growth / 2**20,
        "traces_mb": traces / 2**20,
        "beyond_traces_mb": max(0.0, growth - traces) / 2**20,
        "python_peak_mb": None if python_peak is None else python_peak / 2**20,
    }


def measure(draws: int, mode: str, trace_python: bool = False) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter and return its numbers."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
        "import bench_memory as b;"
        "print(json.dumps(b.child(int(sys.argv[3]), sys.argv[4], sys.argv[5] == '1')))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(root),
            str(Path(__file__).resolve().parent),
            str(draws),
            mode,
            "1" if trace_python else "0",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure both chain modes and write ``benchmarks/results/memory.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=100_000)
    parser.add_argument("--python-draws", type=int, default=20_000, help="draws of the tracemalloc run")
    parser.add_argument(
        "--modes", nargs="+", default=["sequential"], choices=["sequential", "vectorized"], help="chain modes"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for mode in args.modes:
        row = measure(args.draws, mode)
        row["python_objects"] = measure(args.python_draws, mode, trace_python=True)["python_peak_mb"]
        row["python_objects_draws"] = args.python_draws
        rows.append(row)
        print(
            f"{mode:>10}: {row['params']} parameters, {row['draws']} draws, "
            f"{row['us_per_step']:.0f} us/step; "
            f"peak RSS +{row['peak_rss_growth_mb']:.1f} MB, traces {row['traces_mb']:.1f} MB, "
            f"beyond traces {row['beyond_traces_mb']:.1f} MB (budget {BUDGET_MB:.0f} MB); "
            f"python objects at peak {row['python_objects']:.2f} MB over {args.python_draws} draws"
        )
    report = {
        "budget_mb": BUDGET_MB,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "rows": rows,
    }
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
