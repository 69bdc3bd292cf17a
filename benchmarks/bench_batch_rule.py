"""Why the default batch grows with nβ: the automatic step, the cost of a step, simulated time per second.

For each case and batch size (256, 1024, 4096, the rule's choice, the full data) it measures

* the automatic step ``slt.tuning.default_step_size`` picks (the pilot sizes the step so that the
  predicted step-size bias, minibatch noise included, is 2.5%);
* the seconds per chain-step of four SGLD chains at that step (after a warm-up);
* the simulated time ε·T reached per 1,000 steps and per second, which is what the automatic length
  needs (it runs until ε·T ≥ 0.5/γ and two doublings agree).

The batch rule (``PosteriorSampler.size_batch_for``) is ``min(n, max(256, min(nβ, 4096, 2^20 / d)))``.

    PYTHONPATH=. python benchmarks/bench_batch_rule.py

Writes ``results/batch_rule.json`` and ``results/batch_rule.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, environment, gaussian_nll, write_json

from slt.oracles import NormalCrossing, deep_linear_network, linear_regression_data, regression_data
from slt.sampling.settings import default_n_beta
from slt.sampling.setup import prepared_sampler
from slt.tuning import default_step_size

TIMED_STEPS = 300


def cases() -> list[tuple[str, Any]]:
    def crossing():
        x, y = regression_data(10_000, seed=0)
        return NormalCrossing([1, 2]), (x, y)

    def dln():
        model = deep_linear_network([10, 5, 10], 1)
        return model, linear_regression_data(model, 10_000)

    def dln_large():
        model = deep_linear_network([8, 8, 8, 8], 2)
        return model, linear_regression_data(model, 100_000)

    return [
        ("normal crossing w1²w2^4 n=1e4", crossing),
        ("dln 10-5-10 r=1 n=1e4", dln),
        ("dln 8-8-8-8 r=2 n=1e5", dln_large),
    ]


def measure(name: str, make) -> list[dict[str, Any]]:
    model, data = make()
    rows = []
    with prepared_sampler(model, data, gaussian_nll) as probe:
        n, d = probe.n, probe.num_params
        n_beta = default_n_beta(n)
        rule = probe.size_batch_for(n_beta)
    for batch in sorted({256, 1024, 4096, rule, n}):
        with prepared_sampler(model, data, gaussian_nll, batch_size=batch) as posterior:
            step, _ = default_step_size(posterior, n_beta=n_beta, localization=1.0, seed=0)
            kwargs = dict(
                n_beta=n_beta, localization=1.0, step_size=step, num_chains=4, seed=0, control_variate=True
            )
            posterior.run(num_draws=20, num_burnin=0, **kwargs)  # warm-up
            start = time.perf_counter()
            run = posterior.run(num_draws=TIMED_STEPS, num_burnin=0, **kwargs)
            per_step = (time.perf_counter() - start) / (4 * TIMED_STEPS)
        rows.append(
            dict(
                case=name,
                n=n,
                num_params=d,
                n_beta=n_beta,
                batch_size=batch,
                rule=batch == rule,
                step_size=step,
                seconds_per_chain_step=per_step,
                simulated_time_per_1000_steps=1000 * step,
                simulated_time_per_second=step / per_step,
                diverged=int(run.diverged.sum()),
            )
        )
        r = rows[-1]
        print(
            f"{name} batch {batch}{' (rule)' if r['rule'] else ''}: step {step:.3g}, "
            f"{per_step * 1e3:.3f} ms/chain-step, τ/s {r['simulated_time_per_second']:.3g}",
            flush=True,
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | d | nβ | batch | automatic step | ms per chain-step | ε·T per 1,000 steps | ε·T per second "
        "| vs batch 256 (per second) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = next(b for b in rows if b["case"] == r["case"] and b["batch_size"] == 256)
        gain = r["simulated_time_per_second"] / base["simulated_time_per_second"]
        batch = f"{r['batch_size']:,}" + (" (rule)" if r["rule"] else "")
        batch += " (all)" if r["batch_size"] == r["n"] else ""
        lines.append(
            f"| {r['case']} | {r['num_params']} | {r['n_beta']:.0f} | {batch} | {r['step_size']:.3g} | "
            f"{r['seconds_per_chain_step'] * 1e3:.3f} | {r['simulated_time_per_1000_steps']:.3g} | "
            f"{r['simulated_time_per_second']:.3g} | {gain:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)
    rows = [row for name, make in cases() for row in measure(name, make)]
    write_json("batch_rule.json", {"environment": environment("cpu"), "rows": rows})
    (RESULTS / "batch_rule.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
