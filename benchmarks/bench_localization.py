"""The localization γ on a network trained to near-zero cross-entropy: what γ = 1, 10 and 100 give.

The grokking example's model (examples/grokking: modular addition mod 53, 4,481 parameters, n = 842,
nβ = n/log n = 125) trained with weight decay 1.0 for 10,000 steps, checkpoints from memorization (step
300, test accuracy 0.4%) to generalization (step 10,000, 91.5%). At each checkpoint and each γ,
``estimate_llc`` with every other setting at its default (automatic step and length, ``max_seconds=120``);
each row records λ̂, L(w*), the chains' mean loss L(w*) + λ̂/nβ, the zero-weights loss, |w - w*| against
|w*|, the simulated time and the warnings slt raised.

    python benchmarks/bench_localization.py   # ~6 minutes on one core; results/localization.{json,md}
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import slt
from benchmarks.common import RESULTS, environment, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "grokking"))
from grokking import load_checkpoint, modular_addition, train

CHECKPOINTS = [300, 1000, 2000, 3000, 4000, 6000, 10000]
LOCALIZATIONS = [1.0, 10.0, 100.0]


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        record = train(folder, seed=0, weight_decay=1.0, steps=CHECKPOINTS)
        (x, y), _ = modular_addition(seed=0)
        for i, step in enumerate(record.steps):
            for gamma in LOCALIZATIONS:
                if gamma == 1.0 and step != CHECKPOINTS[-1]:
                    continue  # γ = 1 leaves the basin at the last checkpoint already
                model = load_checkpoint(record.checkpoint(step))
                started = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    r = slt.estimate_llc(
                        model,
                        (x, y),
                        loss_fn="cross_entropy",
                        localization=gamma,
                        max_seconds=120,
                        progress=False,
                    )
                rows.append(
                    dict(
                        step=step,
                        test_acc=record.test_acc[i],
                        localization=gamma,
                        llc=r.mean,
                        llc_stderr=r.stderr,
                        init_loss=r.init_loss,
                        sampled_loss=r.init_loss + r.mean / r.settings.n_beta,
                        zero_weights_loss=r.checks.zero_weights_loss,
                        distance=r.checks.distance,
                        center_norm=r.checks.center_norm,
                        simulated_time=r.settings.simulated_time,
                        converged=r.settings.converged,
                        seconds=time.perf_counter() - started,
                        warnings=sorted({type(w.message).__name__ for w in caught}),
                    )
                )
                print(rows[-1], flush=True)
    write_json("localization.json", {"environment": environment("cpu"), "rows": rows})
    lines = [
        "| step | test acc | γ | λ̂ | L(w*) | sampled loss | L(0) | dist / norm(w*) | ε·T | s | warnings |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['test_acc']:.3f} | {r['localization']:g} "
            f"| {r['llc']:.4g} ± {r['llc_stderr']:.2g} "
            f"| {r['init_loss']:.3g} | {r['sampled_loss']:.3g} | {r['zero_weights_loss']:.3g} "
            f"| {r['distance'] / r['center_norm']:.2f} | {r['simulated_time']:.3g} | {r['seconds']:.0f} "
            f"| {', '.join(r['warnings']) or '—'} |"
        )
    (RESULTS / "localization.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
