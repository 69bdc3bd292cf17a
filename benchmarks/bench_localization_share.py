"""How much of λ̂ the localization sets: the share measured from the draws against finite differences.

``checks.localization_share`` is -d ln λ̂ / d ln γ = γ·Cov(nβL, ½|w − w*|²)/λ̂ from one run's draws. Each
case runs ``estimate_llc`` with its defaults at γ and again at ``factor``·γ (same seed); the finite
difference -ln(λ̂(fγ)/λ̂(γ))/ln f is the share's average over that range (it grows with γ, so it lies
between the two runs' shares). Where a closed form or quadrature exists it is given too: the linear
regression's Σ aγ/(a+γ)² / Σ a/(a+γ) with a = nβ·(curvatures), the normal crossings' central
difference of their quadrature targets. A run whose share is above 0.5 by two standard errors raises a
``LocalizationWarning``.

    python benchmarks/bench_localization_share.py   # results/localization_share.{json,md}, ~5 minutes
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import slt
from benchmarks.bench_defaults import dln_cases, gaussian_nll, normal_crossing_cases
from benchmarks.bench_guards import trained_classifier, trained_mlp
from benchmarks.common import RESULTS, environment, write_json
from slt.oracles.exact import normal_crossing_target
from slt.oracles.models import linear_regression_data


def _run(model: nn.Module, data: Any, loss: Any, gamma: float, seed: int = 0) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = slt.estimate_llc(model, data, loss_fn=loss, localization=gamma, seed=seed, progress=False)
    return result, sorted({w.category.__name__ for w in caught if issubclass(w.category, slt.SLTWarning)})


def case(name: str, model: nn.Module, data: Any, loss: Any, gamma: float, factor: float, exact=None) -> dict:
    start = time.perf_counter()
    low, low_warnings = _run(model, data, loss, gamma)
    high, high_warnings = _run(model, data, loss, gamma * factor)
    row = dict(
        case=name,
        gamma=gamma,
        factor=factor,
        llc=low.mean,
        llc_stderr=low.stderr,
        share=low.checks.localization_share,
        share_stderr=low.checks.localization_share_stderr,
        llc_high=high.mean,
        share_high=high.checks.localization_share,
        share_high_stderr=high.checks.localization_share_stderr,
        finite_difference=-math.log(high.mean / low.mean) / math.log(factor)
        if low.mean > 0 and high.mean > 0
        else float("nan"),
        exact=exact(low.settings.n_beta, gamma) if exact else None,
        exact_high=exact(low.settings.n_beta, gamma * factor) if exact else None,
        warnings=low_warnings,
        warnings_high=high_warnings,
        seconds=time.perf_counter() - start,
    )
    print(row, flush=True)
    return row


def regression() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], Callable[[float, float], float]]:
    model = nn.Linear(4, 1, bias=False)
    x, y = linear_regression_data(model, 500, seed=0)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    curvatures = torch.linalg.eigvalsh(2 * x.T.double() @ x.double() / 500)

    def share(n_beta: float, gamma: float) -> float:
        a = n_beta * curvatures
        return float((a * gamma / (a + gamma) ** 2).sum() / (a / (a + gamma)).sum())

    return model, (x, y), share


def tanh_regression() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """49 parameters, little signal (the run theory.md's "How strong a pull" describes)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 4, generator=g)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    with torch.no_grad():
        y = model(x) + 0.3 * torch.randn(500, 1, generator=g)
    return model, (x, y)


def cnn() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """460-parameter CNN (BatchNorm, dropout), 75% train accuracy on 8x8 synthetic images."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(800, 1, 8, 8, generator=g)
    y = torch.einsum("nchw,kchw->nk", x, torch.randn(4, 1, 8, 8, generator=g)).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Dropout(0.1), nn.Linear(6 * 16, 4),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(1500):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, (x, y)


def markdown(rows: list[dict]) -> str:
    def num(v: Any, fmt: str = ".3f") -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    lines = [
        "| case | γ | λ̂ | share | closed form | ×f | λ̂ at f·γ | share at f·γ | closed form "
        "| finite difference | warnings at γ / at f·γ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['gamma']:g} | {r['llc']:.4g} ± {r['llc_stderr']:.2g} | {num(r['share'])} ± "
            f"{num(r['share_stderr'])} | {num(r['exact'])} | {r['factor']:g} | {r['llc_high']:.4g} | "
            f"{num(r['share_high'])} ± {num(r['share_high_stderr'])} | {num(r['exact_high'])} | "
            f"{num(r['finite_difference'])} | {', '.join(r['warnings']) or '—'} / "
            f"{', '.join(r['warnings_high']) or '—'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    model, data, share = regression()
    for gamma in (1.0, 100.0, 1000.0):
        rows.append(case("linear regression d=4 n=500", model, data, "mse", gamma, 3.0, share))
    for nc in normal_crossing_cases()[:2]:
        model, (x, y) = nc["make"]()
        power = 1 if "^2 " in nc["name"] else 2

        def nc_share(n_beta: float, gamma: float, x=x, y=y, power=power) -> float:
            target = lambda g: normal_crossing_target(x, y, n_beta, g, power=power, loss="gaussian_nll")  # noqa: E731
            return -(math.log(target(gamma * 1.05)) - math.log(target(gamma / 1.05))) / (2 * math.log(1.05))

        rows.append(case(nc["name"], model, (x, y), gaussian_nll, 1.0, 3.0, nc_share))
    dln = dln_cases()[0]
    model, data = dln["make"]()
    rows.append(case(dln["name"], model, data, gaussian_nll, 1.0, 3.0))
    rows.append(case("tanh regression 4-8-1 (49 params)", *tanh_regression(), "mse", 1.0, 3.0))
    rows.append(case("tanh MLP 8-24-1 (241 params)", *trained_mlp(), "mse", 1.0, 3.0))
    rows.append(
        case(
            "classifier 6-32-3 (323 params), near-zero loss", *trained_classifier(), "cross_entropy", 1.0, 3.0
        )
    )
    model, data = cnn()
    model.train()  # as a user hands it over; slt samples a copy in eval mode
    rows.append(case("CNN classifier (460 params)", model, data, "cross_entropy", 10.0, 3.0))
    payload = dict(environment=environment("cpu"), rows=rows)
    write_json("localization_share.json", payload)
    (RESULTS / "localization_share.md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
