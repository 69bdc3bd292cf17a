"""Silent wrong numbers, and whether slt now says so: one row per case, sampled loss against L(w*).

Each case is a model outside the test suite (a classifier trained to near-zero loss, a small MLP, a tiny
transformer trained on structured token sequences) run with the defaults and with the input that used to
return a confident wrong number with R-hat ≈ 1 and no warning. Every row records λ̂, L(w*), the chains'
implied mean loss L(w*) + λ̂/nβ, the loss with the sampled weights set to zero, how far the chains went,
the predicted step-size bias, and the warnings slt raised.

    python benchmarks/bench_guards.py            # writes results/guards.json and results/guards.md
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any

import torch
from torch import nn

import slt
from benchmarks.common import (
    RESULTS,
    TinyTransformer,
    environment,
    next_token_loss,
    token_problem,
    write_json,
)


def trained_classifier() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """6 -> 32 -> 3 ReLU classifier (323 parameters) trained to near-zero cross-entropy."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 6, generator=g)
    y = x[:, :3].argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    _fit(model, lambda: nn.functional.cross_entropy(model(x), y), 1500)
    return model, (x, y)


def trained_mlp() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """8 -> 24 -> 1 tanh regression MLP (241 parameters)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, 1, generator=g)) + 0.1 * torch.randn(1000, 1, generator=g)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 24), nn.Tanh(), nn.Linear(24, 1))
    _fit(model, lambda: nn.functional.mse_loss(model(x), y), 2000)
    return model, (x, y)


def trained_transformer(steps: int) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """A two-layer decoder-only transformer (about 105k parameters) on 2,000 noisy periodic sequences."""
    data = token_problem(2000, seed=0)
    torch.manual_seed(0)
    model = TinyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(2000, (64,), generator=g)
        opt.zero_grad()
        next_token_loss(model, (data[0][idx],)).backward()
        opt.step()
    return model, data


def _fit(model: nn.Module, loss: Any, steps: int) -> None:
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()


def row(case: str, fn: Any) -> dict[str, Any]:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn()
        except Exception as exc:  # a loud failure is an answer too
            return {
                "case": case,
                "raised": f"{type(exc).__name__}: {exc}",
                "seconds": time.perf_counter() - start,
            }
    ours = [w for w in caught if issubclass(w.category, slt.SLTWarning)]
    c = result.checks
    return {
        "case": case,
        "llc": result.mean,
        "llc_stderr": result.stderr,
        "d": result.settings.num_params,
        "n_beta": result.n_beta,
        "step_size": result.settings.step_size,
        "init_loss": result.init_loss,
        "implied_mean_loss": result.init_loss + result.mean / result.n_beta,
        "zero_weights_loss": c.zero_weights_loss,
        "distance": c.distance,
        "center_norm": c.center_norm,
        "bias_indicator": c.bias_indicator,
        "free_diffusion": c.free_diffusion,
        "rhat": result.diagnostics.rhat,
        "interval": list(result.interval),
        "simulated_time": result.settings.simulated_time,
        "converged": result.settings.converged,
        "steps_per_chain": result.settings.num_burnin
        + result.settings.num_draws * result.settings.num_steps_bw_draws,
        "warnings": sorted({w.category.__name__ for w in ours}),
        "messages": [str(w.message) for w in ours],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transformer-steps", type=int, default=1500)
    parser.add_argument(
        "--transformer-max-steps",
        type=int,
        default=8000,
        help="budget per chain of the automatic length on the transformer (the default 100,000 takes hours)",
    )
    parser.add_argument(
        "--reuse-transformer",
        action="store_true",
        help="keep the transformer rows of results/guards.json instead of rerunning them (~30 min); the "
        "reused rows are marked",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    clf, clf_data = trained_classifier()
    mlp, mlp_data = trained_mlp()
    half = trained_mlp()[0].to(torch.bfloat16)
    half_data = tuple(t.bfloat16() for t in mlp_data)
    budget = args.transformer_max_steps
    stored = []
    if args.reuse_transformer:
        previous = json.loads((RESULTS / "guards.json").read_text())["rows"]
        stored = [dict(r, reused=True) for r in previous if r["case"].startswith("transformer")]
    lm, tokens = trained_transformer(args.transformer_steps) if not stored else (None, None)

    def summed(m: nn.Module, b: Any) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).sum()

    cases: list[tuple[str, nn.Module, Any, Any, dict[str, Any]]] = [
        ("classifier, defaults", clf, clf_data, "cross_entropy", {}),
        ("classifier, step_size=0.1", clf, clf_data, "cross_entropy", {"step_size": 0.1}),
        ("MLP, defaults", mlp, mlp_data, "mse", {}),
        ("MLP, step_size=0.01", mlp, mlp_data, "mse", {"step_size": 0.01}),
        ("MLP, summed loss", mlp, mlp_data, summed, {}),
        ("MLP, num_chains=1", mlp, mlp_data, "mse", {"num_chains": 1}),
        ("MLP, bfloat16", half, half_data, "mse", {}),
        ("MLP, num_burnin=200, num_draws=200", mlp, mlp_data, "mse", {"num_burnin": 200, "num_draws": 200}),
        (f"transformer, max_steps={budget}", lm, tokens, next_token_loss, {"max_steps": budget}),
        (
            f"transformer, γ=100, max_steps={budget}",
            lm,
            tokens,
            next_token_loss,
            {"localization": 100.0, "max_steps": budget},
        ),
    ]
    if stored:
        cases = [c for c in cases if not c[0].startswith("transformer")]
    rows = [
        row(name, lambda m=m, d=d, f=f, kw=kw: slt.estimate_llc(m, d, loss_fn=f, progress=False, **kw))
        for name, m, d, f, kw in cases
    ] + stored
    write_json("guards.json", {"environment": environment("cpu"), "rows": rows})
    lines = [
        "| case | λ̂ | 95% interval | d | L(w*) | L(w*)+λ̂/nβ | L(0) | ‖w−w*‖ / ‖w*‖ | bias ind. | R-hat | ε·T "
        "| ‖w−w*‖² / dεT | warnings | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "raised" in r:
            lines.append(
                f"| {r['case']} | raised: {r['raised'][:80]} | | | | | | | | | | | | {r['seconds']:.0f} |"
            )
            continue
        lines.append(
            f"| {r['case']}{' (previous run)' if r.get('reused') else ''} | "
            f"{r['llc']:.4g} ± {r['llc_stderr']:.2g} | [{r['interval'][0]:.4g}, "
            f"{r['interval'][1]:.4g}] | {r['d']} | {r['init_loss']:.3g} | "
            f"{r['implied_mean_loss']:.3g} | {r['zero_weights_loss']:.3g} | {r['distance']:.3g} / "
            f"{r['center_norm']:.3g} | {r['bias_indicator']:.2g} | {r['rhat']:.3f} | "
            f"{r['simulated_time']:.3g} | {r.get('free_diffusion', float('nan')):.2g} | "
            f"{', '.join(r['warnings']) or '—'} | {r['seconds']:.0f} |"
        )
    (RESULTS / "guards.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
