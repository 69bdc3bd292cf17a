"""``analyze_checkpoints`` with its defaults on grokking runs of a model other than the example's.

Modular *subtraction* (a - b) mod 47 from 40% of all pairs, a 16-dimensional embedding of each operand,
Linear(16→64) per operand, summed, GELU, Linear(64→47) (5,983 parameters; the example's model is addition
mod 53 with 12 and 48 dimensions, 4,481 parameters, trained on 30%); full-batch AdamW, lr 5e-3, betas
(0.9, 0.98), 6,000 steps, 39 checkpoints (20 log-spaced, 20 every 300 steps). Weight decay 1.0 on three
seeds (they grok between steps ~900 and ~2,500); weight decay 0.05 as the control (it memorizes by step 336
and never generalizes). (A version that concatenated the embeddings into a ReLU layer did not grok within
10,000 steps at weight decay 1.0: test accuracy 4%.) Every checkpoint is measured by
``slt.analyze_checkpoints(folder, model, data, loss_fn="cross_entropy")`` with no other setting: slt
chooses γ, the step size and the chain lengths once per run (``settings["reference"]``). Each row says
what slt chose, how long it took, whether any checkpoint's chains left the basin (``LeftBasinWarning``)
or raised any other warning, and whether ``detect_transitions`` (the example's settings) finds the
memorization rise and a λ̂ fall inside the climb of test accuracy from 10% to 90%, and lists every event
it flags beside the train loss's lowest and last values.

The control is not flat: once it memorizes, its train loss falls to ~1e-7 (the logits grow, and
cross-entropy flattens exponentially around the weights) and λ̂ falls with it by ~98%; from step ~1,800
the loss climbs back 500-fold (Adam at near-zero loss; a loss spike) and λ̂ rises with it. Rerun by hand
at steps 900, 1,200 and 2,700 with γ = 300 and the automatic step and length, λ̂ was 2.3, 1.0 and 60 as in
the sweep (2.4, 1.1, 61): the curve follows the loss. What separates the grokking runs is that their fall
comes with the climb of test accuracy (and the loss stays low after it); a λ̂ fall alone does not.

    python benchmarks/bench_grokking_defaults.py  # 5-15 min on one core; results/grokking_defaults.{json,md}
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import slt
from benchmarks.common import RESULTS, environment, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "grokking"))
import grokking as g

P = 47
TRAIN_FRACTION = 0.4
RUNS = [(0, 1.0), (1, 1.0), (2, 1.0), (0, 0.05)]
STEPS = g.checkpoint_steps(6_000, num_log=20, num_linear=20)


def subtraction_mlp() -> nn.Module:
    """The example's architecture (embed each operand, Linear per operand, sum, GELU, Linear) at p = 47,
    16 embedding and 64 hidden dimensions."""
    return g.ModularMLP(p=P, embed=16, hidden=64)


def modular_subtraction(seed: int):
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    y = (x[:, 0] - x[:, 1]) % P
    perm = torch.randperm(P * P, generator=torch.Generator().manual_seed(seed))
    cut = int(TRAIN_FRACTION * P * P)
    return (x[perm[:cut]], y[perm[:cut]]), (x[perm[cut:]], y[perm[cut:]])


def train(folder: Path, seed: int, weight_decay: float) -> g.RunRecord:
    (x, y), (xt, yt) = modular_subtraction(seed)
    torch.manual_seed(seed)
    model = subtraction_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=weight_decay, betas=(0.9, 0.98))
    record = g.RunRecord(seed=seed, weight_decay=weight_decay, folder=str(folder))
    folder.mkdir(parents=True)
    wanted = set(STEPS)
    for step in range(1, max(STEPS) + 1):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if step in wanted:
            torch.save(model.state_dict(), folder / f"step_{step:06d}.pt")
            with torch.no_grad():
                for data, acc_list, loss_list in (
                    ((x, y), record.train_acc, record.train_loss),
                    ((xt, yt), record.test_acc, record.test_loss),
                ):
                    logits = model(data[0])
                    acc_list.append(float((logits.argmax(-1) == data[1]).float().mean()))
                    loss_list.append(float(nn.functional.cross_entropy(logits, data[1])))
            record.steps.append(step)
    return record


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed, wd in RUNS:
            started = time.perf_counter()
            record = train(Path(tmp) / f"seed{seed}_wd{wd:g}", seed, wd)
            train_seconds = time.perf_counter() - started
            (x, y), _ = modular_subtraction(seed)
            started = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                trajectory = slt.analyze_checkpoints(
                    record.folder,
                    subtraction_mlp,
                    (x, y),
                    loss_fn="cross_entropy",
                    store=None,
                    progress=False,
                )
            sweep_seconds = time.perf_counter() - started
            record.llc = [float(v) for v in trajectory.llc_mean]
            record.llc_stderr = [float(v) for v in trajectory.llc_stderr]
            events = g.detect(record)
            reference = trajectory.settings["reference"]
            left = [w for w in trajectory.warnings if w[1] == "LeftBasinWarning"]
            other = sorted({w[1] for w in trajectory.warnings} - {"LeftBasinWarning"})
            peak = int(np.argmax(record.llc))
            row = dict(
                seed=seed,
                weight_decay=wd,
                checkpoints=len(record.steps),
                final_test_acc=record.test_acc[-1],
                chosen=reference["chosen"],
                trials=reference["trials"],
                train_seconds=train_seconds,
                sweep_seconds=sweep_seconds,
                seconds_per_checkpoint=sweep_seconds / len(record.steps),
                llc_first=record.llc[0],
                llc_peak=record.llc[peak],
                llc_peak_step=record.steps[peak],
                llc_last=record.llc[-1],
                rise=any(e.direction == "rise" and e.step <= record.steps[peak] for e in events),
                left_basin_steps=[s for s, _, _ in left],
                other_warnings=other,
                warnings_raised=sorted({w.category.__name__ for w in caught}),
                events=[e.to_dict() for e in events],
                steps=record.steps,
                llc=record.llc,
                llc_stderr=record.llc_stderr,
                test_acc=record.test_acc,
                train_acc=record.train_acc,
                train_loss=record.train_loss,
            )
            if wd == 1.0:
                row.update(g.check_grokking_claim(record, events))
            else:
                row.update(g.check_control_claim(record, events))
            rows.append(row)
            print(
                {
                    k: row[k]
                    for k in ("seed", "weight_decay", "chosen", "sweep_seconds", "rise", "left_basin_steps")
                }
            )
            print(
                {
                    k: row.get(k)
                    for k in ("grokked", "hit", "climb_steps", "final_test_acc", "llc_peak", "llc_last")
                }
            )
    write_json("grokking_defaults.json", {"environment": environment("cpu"), "rows": rows})
    lines = [
        "| seed | weight decay | final test acc | γ, step, burn-in + draws (slt's choice) "
        "| λ̂ first → peak (step) → last | rise | test acc 10%→90% climb | λ̂ fall inside it "
        "| left the basin | other warnings | s per checkpoint | every event flagged (λ̂ change at step) "
        "| train loss: lowest (step) → last |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["chosen"]
        climb = "–"
        fall = "–"
        if r.get("grokked"):
            climb = f"{r['climb_steps'][0]}–{r['climb_steps'][1]}"
            e = r.get("event")
            fall = f"yes: {e['rel_delta']:.0%} at step {e['step']:.0f}" if r["hit"] else "no"
        elif r["weight_decay"] == 1.0:
            climb = "never reaches 90%"
        lines.append(
            f"| {r['seed']} | {r['weight_decay']:g} | {r['final_test_acc']:.2f} | γ = {c['localization']:g}, "
            f"{c['step_size']:.3g}, {c['num_burnin']} + {c['num_draws']} | {r['llc_first']:.3g} → "
            f"{r['llc_peak']:.3g} ({r['llc_peak_step']}) → {r['llc_last']:.3g} | "
            f"{'yes' if r['rise'] else 'no'} | "
            f"{climb} | {fall} | {len(r['left_basin_steps'])} of {r['checkpoints']} | "
            f"{', '.join(r['other_warnings']) or '—'} | {r['seconds_per_checkpoint']:.1f} | "
            f"{_events_cell(r['events'])} | {_loss_cell(r)} |"
        )
    (RESULTS / "grokking_defaults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _events_cell(events: list[dict]) -> str:
    return "; ".join(f"{e['direction']} {e['rel_delta']:+.0%} at {e['step']:.0f}" for e in events) or "—"


def _loss_cell(row: dict) -> str:
    losses = row.get("train_loss")
    if not losses:
        return "–"
    lowest = int(np.argmin(losses))
    return f"{losses[lowest]:.2g} ({row['steps'][lowest]}) → {losses[-1]:.2g}"


if __name__ == "__main__":
    main()
