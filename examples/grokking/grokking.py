"""Grokking on modular addition: train, save checkpoints, measure the LLC at each, flag the transitions.

The model and optimizer of DESIGN.md §5: (a + b) mod 53 from 30% of all pairs, a 12-dimensional embedding
of each operand, Linear(12→48) per operand summed, GELU, Linear(48→53); full-batch AdamW (lr 5e-3,
betas (0.9, 0.98)). Weight decay 1.0 groks; weight decay 0.3, the negative control, memorizes and does
not generalize within 10k steps.

λ̂ at every checkpoint comes from ``slt.analyze_checkpoints`` (results committed to an SQLite store as
they finish, so an interrupted sweep resumes), the events from ``slt.detect_transitions``.

The density of states (``slt.estimate_dos``) is drawn at a handful of checkpoints of the first seed's runs.

The runs (each weight decay of each seed) are independent and run side by side, one worker process per
run and CPU core, each on one torch thread (``--workers``). Run from the repository root (one seed, both
weight decays: about 7 minutes on two CPU cores):

    PYTHONPATH=. python examples/grokking/grokking.py --out grokking-output

Writes, per run, the checkpoints (``.safetensors``), ``slt-results.sqlite`` and ``metrics.json``
(accuracy and loss per checkpoint, the LLC curve, the detected events), and for the whole call
``grokking.png``, ``events.md``, ``study.md``, ``summary.json``, ``dos.png`` and ``dos.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import slt
from slt.dos.ladder import default_temperatures
from slt.sampling.settings import default_n_beta
from slt.sweeps.executors import process_pool
from slt.transitions import Transition, detect_transitions, plot_transitions, transitions_markdown

P = 53

#: The LLC settings of the stored 5-seed study (examples/grokking/README.md), set by hand before slt chose
#: them itself: γ = 100, one fixed step, full batch, short chains. ``--hand-set`` reproduces it.
HAND_SET_LLC = dict(
    localization=100.0,
    step_size=5e-3,
    num_chains=4,
    num_draws=200,
    num_burnin=100,
    batch_size=None,
    control_variate=False,
)
#: Checkpoints of the main job: 24 log-spaced steps merged with 25 evenly spaced ones (47 in all); the
#: hand-set study used 40 and 50 (86).
CHECKPOINTS = dict(num_log=24, num_linear=25)
HAND_SET_CHECKPOINTS = dict(num_log=40, num_linear=50)


class ModularMLP(nn.Module):
    """Embed each operand (12 dims), Linear(12→48) per operand, sum, GELU, Linear(48→p)."""

    def __init__(self, p: int = P, embed: int = 12, hidden: int = 48):
        super().__init__()
        self.embed = nn.Embedding(p, embed)
        self.left = nn.Linear(embed, hidden)
        self.right = nn.Linear(embed, hidden)
        self.out = nn.Linear(hidden, p)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        e = self.embed(pairs)
        return self.out(nn.functional.gelu(self.left(e[:, 0]) + self.right(e[:, 1])))


def modular_addition(p: int = P, train_fraction: float = 0.3, seed: int = 0):
    """All pairs (a, b) with labels (a + b) mod p, split at random: ((x_train, y_train), (x_test, y_test))."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    y = (x[:, 0] + x[:, 1]) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = int(train_fraction * p * p)
    train, test = perm[:n_train], perm[n_train:]
    return (x[train], y[train]), (x[test], y[test])


def checkpoint_steps(total: int, num_log: int = 40, num_linear: int = 50) -> list[int]:
    """Log-spaced steps from 1 to ``total`` merged with ``num_linear`` evenly spaced ones."""
    log_steps = np.unique(np.round(np.geomspace(1, total, num_log)).astype(int))
    linear_steps = np.round(np.linspace(total / num_linear, total, num_linear)).astype(int)
    return sorted({int(s) for s in np.concatenate([log_steps, linear_steps])})


@dataclass
class RunRecord:
    """One training run: where its checkpoints are and what was measured at each."""

    seed: int
    weight_decay: float
    folder: str
    steps: list[int] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_seconds: float = float("nan")
    llc: list[float] = field(default_factory=list)
    llc_stderr: list[float] = field(default_factory=list)
    llc_seconds: float = float("nan")
    llc_reference: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    dos: list[dict] = field(default_factory=list)

    def checkpoint(self, step: int) -> Path:
        return Path(self.folder) / f"step_{step:06d}.safetensors"

    def save(self) -> None:
        (Path(self.folder) / "metrics.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> RunRecord:
        return cls(**json.loads((Path(folder) / "metrics.json").read_text()))


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = model(x)
    return float((logits.argmax(1) == y).float().mean()), float(nn.functional.cross_entropy(logits, y))


def train(
    folder: str | Path,
    *,
    seed: int,
    weight_decay: float,
    total_steps: int = 10_000,
    steps: list[int] | None = None,
    lr: float = 5e-3,
) -> RunRecord:
    """Train one run and save a checkpoint and its accuracies and losses at each of ``steps``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    steps = steps if steps is not None else checkpoint_steps(total_steps, **CHECKPOINTS)
    (x_train, y_train), (x_test, y_test) = modular_addition(seed=seed)
    torch.manual_seed(seed)
    model = ModularMLP()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    record = RunRecord(seed=seed, weight_decay=weight_decay, folder=str(folder))
    wanted = set(steps)
    start = time.perf_counter()
    for step in range(1, max(steps) + 1):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        optimizer.step()
        if step in wanted:
            save_file({k: v.detach().clone() for k, v in model.state_dict().items()}, record.checkpoint(step))
            train_acc, train_loss = _evaluate(model, x_train, y_train)
            test_acc, test_loss = _evaluate(model, x_test, y_test)
            record.steps.append(step)
            record.train_acc.append(train_acc)
            record.test_acc.append(test_acc)
            record.train_loss.append(train_loss)
            record.test_loss.append(test_loss)
    record.train_seconds = time.perf_counter() - start
    record.save()
    return record


def load_checkpoint(path: str | Path) -> ModularMLP:
    model = ModularMLP()
    model.load_state_dict(load_file(str(path)))
    return model


def llc_curve(record: RunRecord, **settings) -> slt.Trajectory:
    """λ̂ and its standard error at every checkpoint of ``record``, by ``slt.analyze_checkpoints``.

    With no ``settings`` the library chooses: γ, the step size and the chain lengths once for the run, at
    reference checkpoints, held fixed at every checkpoint (``trajectory.settings["reference"]``, kept in
    ``metrics.json`` as ``llc_reference``). ``settings`` (``HAND_SET_LLC`` for the stored study) are passed
    to ``analyze_checkpoints`` as they are. Results go to ``slt-results.sqlite`` beside the checkpoints as
    each finishes, so an interrupted sweep resumes where it stopped. Returns the trajectory; ``record``
    gets its λ̂ column.
    """
    (x_train, y_train), _ = modular_addition(seed=record.seed)
    start = time.perf_counter()
    trajectory = slt.analyze_checkpoints(
        record.folder,
        ModularMLP,
        (x_train, y_train),
        loss_fn="cross_entropy",
        measures=("llc",),
        store=Path(record.folder) / "slt-results.sqlite",
        seed=record.seed,
        progress=False,
        **settings,
    )
    if [int(s) for s in trajectory.steps] != record.steps or not trajectory.ok.all():
        raise RuntimeError(f"the sweep of {record.folder} is incomplete: {trajectory!r}")
    record.llc = [float(v) for v in trajectory.llc_mean]
    record.llc_stderr = [float(v) for v in trajectory.llc_stderr]
    record.llc_seconds = time.perf_counter() - start
    record.llc_reference = trajectory.settings.get("reference", {})
    record.save()
    return trajectory


#: Density-of-states settings for a handful of checkpoints (examples/grokking/README.md): estimate_dos's
#: default sampler for in-memory data (MALA on the full-batch loss with replica exchange), 17 rungs spaced
#: geometrically from nβ*/3 to 3 nβ* (neighbours 1.16x apart, so that they overlap even where λ ≈ 130),
#: the localization of the λ̂ curve, and the power-law fit, whose slope is the local exponent of the
#: volume over the t the ladder samples (the log-corrected forms need t far below what it reaches here).
DOS_SETTINGS = dict(
    temperatures=[float(x) for x in default_temperatures(int(0.3 * P * P), num_rungs=17, span=3.0)],
    localization=100.0,
    num_chains=2,
    num_draws=200,
    num_bootstrap=50,
    fit_form="power",
)


def dos_checkpoints(record: RunRecord) -> list[int]:
    """Where to draw the DOS: the λ̂ peak after memorizing, the ends of the climb of test accuracy (or,
    without one, where the train loss settles), and the last checkpoint. Returns checkpoint indices."""
    window = grokking_window(record)
    middle = list(window) if window is not None else [loss_settled_at(record)]
    return sorted({int(np.argmax(record.llc)), *middle, len(record.steps) - 1})


def dos_at(record: RunRecord, indices: list[int], **settings) -> list[slt.DOSResult]:
    """The density of states at the checkpoints ``indices`` of ``record``, by ``slt.analyze_checkpoints``
    (its own store, ``slt-dos.sqlite``). ``record.dos`` gets one row per checkpoint."""
    (x_train, y_train), _ = modular_addition(seed=record.seed)
    chosen = record.llc_reference.get("chosen", {})  # the γ of the λ̂ curve, where slt chose it
    settings = {
        **DOS_SETTINGS,
        "localization": chosen.get("localization", DOS_SETTINGS["localization"]),
        **settings,
    }
    trajectory = slt.analyze_checkpoints(
        [(record.steps[i], record.checkpoint(record.steps[i])) for i in indices],
        ModularMLP,
        (x_train, y_train),
        loss_fn="cross_entropy",
        measures=("dos",),
        dos_settings=settings,
        store=Path(record.folder) / "slt-dos.sqlite",
        seed=record.seed,
        progress=False,
    )
    if not trajectory.ok.all():
        raise RuntimeError(f"the DOS of {record.folder} failed: {[f.error for f in trajectory.failures]}")
    results = trajectory.dos
    ladder = np.asarray(settings["temperatures"])
    reference = int(np.argmin(np.abs(np.log(ladder / default_n_beta(len(x_train))))))
    record.dos = [
        {
            "step": record.steps[i],
            "test_acc": record.test_acc[i],
            "llc": record.llc[i] if record.llc else float("nan"),
            "dos_llc": float(r.llc),
            "dos_llc_stderr": float(r.llc_stderr),
            "fit_window": [float(v) for v in r.fit_window],
            "n_beta": float(r.temperatures[reference]),
            "x_mean_t": float(r.rung_llc[reference]),
            "seconds": float(r.seconds),
        }
        for i, r in zip(indices, results)
    ]
    record.save()
    return results


def crossing(steps: list[int], values: list[float], level: float) -> float:
    """First step where ``values`` reaches ``level`` (linear interpolation in log step); NaN if never."""
    v = np.asarray(values)
    above = np.flatnonzero(v >= level)
    if len(above) == 0:
        return float("nan")
    i = int(above[0])
    if i == 0:
        return float(steps[0])
    x0, x1 = math.log(steps[i - 1]), math.log(steps[i])
    t = (level - v[i - 1]) / (v[i] - v[i - 1])
    return float(math.exp(x0 + t * (x1 - x0)))


def grokking_window(record: RunRecord) -> tuple[int, int] | None:
    """Checkpoint positions (index before, index after) bracketing test accuracy's climb 10% → 90%.

    Returns the index of the last checkpoint below 10% and of the first at or above 90% (after it), or
    None when the run never reaches 90%.
    """
    acc = np.asarray(record.test_acc)
    reached = np.flatnonzero(acc >= 0.9)
    if len(reached) == 0:
        return None
    hi = int(reached[0])
    below = np.flatnonzero(acc[:hi] < 0.1)
    lo = int(below[-1]) if len(below) else 0
    return lo, hi


def memorized_at(record: RunRecord, threshold: float = 0.99) -> int | None:
    """Index of the first checkpoint with train accuracy at or above ``threshold``."""
    idx = np.flatnonzero(np.asarray(record.train_acc) >= threshold)
    return int(idx[0]) if len(idx) else None


#: How the example reads transitions off the λ̂ curve: on the log step axis, on log λ̂ (λ̂ falls by two
#: to three decades over a run, so a fall from 10 to 1 should weigh like one from 100 to 10), with error
#: bars known to come from 4 chains (estimate_llc's default, and HAND_SET_LLC's).
DETECT_SETTINGS = dict(axis="log", value_scale="log", error_dof=HAND_SET_LLC["num_chains"] - 1)


def detect(record: RunRecord, **options) -> list[Transition]:
    """Transitions of λ̂ over the checkpoints of ``record`` (also kept in ``record.events``)."""
    options = {**DETECT_SETTINGS, **options}
    events = detect_transitions((record.steps, record.llc, record.llc_stderr), measure="llc", **options)
    record.events = [e.to_dict() for e in events]
    return events


def check_grokking_claim(record: RunRecord, events: list[Transition]) -> dict:
    """Is there a falling-λ̂ event whose steepest step lies in the 10%→90% climb (± one checkpoint)?"""
    window = grokking_window(record)
    if window is None:
        return {"grokked": False, "hit": None}
    lo, hi = window
    hits = [e for e in events if e.direction == "fall" and lo - 1 <= e.step_index <= hi + 1]
    hits.sort(key=lambda e: e.rel_delta)  # the largest relative fall first
    return {
        "grokked": True,
        "climb_steps": (record.steps[lo], record.steps[hi]),
        "test_acc_10": crossing(record.steps, record.test_acc, 0.1),
        "test_acc_90": crossing(record.steps, record.test_acc, 0.9),
        "hit": bool(hits),
        "event": hits[0].to_dict() if hits else None,
    }


def loss_settled_at(record: RunRecord, factor: float = 10.0) -> int:
    """Index of the first checkpoint whose train loss is within ``factor`` of the run's lowest."""
    loss = np.asarray(record.train_loss)
    return int(np.flatnonzero(loss <= factor * loss.min())[0])


def check_control_claim(record: RunRecord, events: list[Transition]) -> dict:
    """Falling-λ̂ events of the control after it memorized (train accuracy ≥ 99%), and after its train
    loss settled (within 10x of its lowest value)."""
    memorized = memorized_at(record)
    settled = loss_settled_at(record)
    falls = [e for e in events if e.direction == "fall"]
    after_memorizing = [e for e in falls if memorized is not None and e.step_index > memorized]
    return {
        "memorized_step": record.steps[memorized] if memorized is not None else None,
        "loss_settled_step": record.steps[settled],
        "falls_after_memorizing": [e.to_dict() for e in after_memorizing],
        "falls_after_loss_settled": [e.to_dict() for e in falls if e.step_index > settled],
        "ok": memorized is not None and not after_memorizing,
    }


def plot_runs(runs: list[tuple[RunRecord, list[Transition]]], path: str | Path) -> None:
    """One column per run: accuracies, losses, and λ̂ ± stderr with the flagged events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        3, len(runs), figsize=(5.2 * len(runs), 8.4), sharex=True, squeeze=False, constrained_layout=True
    )
    for col, (rec, events) in enumerate(runs):
        steps = np.asarray(rec.steps)
        ax = axes[0, col]
        ax.plot(steps, rec.train_acc, label="train", color="C0")
        ax.plot(steps, rec.test_acc, label="test", color="C1")
        ax.set(ylabel="accuracy", xscale="log", title=f"seed {rec.seed}, weight decay {rec.weight_decay:g}")
        ax.legend(fontsize=8, loc="center left")
        ax = axes[1, col]
        ax.plot(steps, rec.train_loss, label="train", color="C0")
        ax.plot(steps, rec.test_loss, label="test", color="C1")
        ax.set(ylabel="cross-entropy", yscale="log")
        ax.legend(fontsize=8)
        ax = axes[2, col]
        llc, err = np.asarray(rec.llc), np.asarray(rec.llc_stderr)
        ax.plot(steps, llc, color="k", lw=1)
        ax.fill_between(steps, llc - err, llc + err, color="0.6", alpha=0.5, lw=0)
        ax.set(ylabel=r"$\hat\lambda$ ± stderr (log scale, as analyzed)", xlabel="step")
        if (llc > 0).all():
            ax.set_yscale("log")
        for row in range(3):
            plot_transitions(axes[row, col], events, annotate=row == 2)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_dos(runs: list[tuple[RunRecord, list[slt.DOSResult]]], path: str | Path) -> None:
    """One row per run: the DOS curves at its chosen checkpoints, and x·E_x[t] against x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(runs), 2, figsize=(11, 3.9 * len(runs)), squeeze=False, constrained_layout=True
    )
    for row, (rec, results) in enumerate(runs):
        for entry, result in zip(rec.dos, results):
            result.plot(ax=axes[row], label=f"step {entry['step']} (test acc {entry['test_acc']:.0%})")
        axes[row, 0].set_title(f"seed {rec.seed}, weight decay {rec.weight_decay:g}: density of states")
        axes[row, 1].set_title(r"$x\,E_x[t]$ per rung")
        axes[row, 1].set_yscale("log")  # λ falls by two decades over a grokking run
        for ax in axes[row]:
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dos_markdown(records: list[RunRecord]) -> str:
    """Per run and chosen checkpoint: λ̂ from the curve, the DOS slope, and x·E_x[t] at nβ*."""
    lines = [
        "# Density of states at a handful of checkpoints",
        "",
        "`DOS_SETTINGS`: MALA with replica exchange, 17 rungs from nβ*/3 to 3 nβ*, γ = 100, power-law fit. "
        "λ (DOS) is the slope + 1 of ln v̂ against ln t over the fit window; x·E_x[t] is the per-rung LLC "
        "at the rung nearest nβ* = n / log n (exact MALA chains), beside the SGLD λ̂ of the curve.",
        "",
        "| run | step | test acc | λ̂ (SGLD curve) | λ (DOS slope) | fit window t | x·E_x[t] at nβ* "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        for d in rec.dos:
            lo, hi = d["fit_window"]
            lines.append(
                f"| seed {rec.seed}, wd {rec.weight_decay:g} | {d['step']} | {d['test_acc']:.2f} | "
                f"{d['llc']:.3g} | {d['dos_llc']:.3g} ± {d['dos_llc_stderr']:.2g} | {lo:.2g}–{hi:.2g} | "
                f"{d['x_mean_t']:.3g} | {d['seconds']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def analyze_run(
    folder: str | Path,
    *,
    seed: int,
    weight_decay: float,
    steps: list[int],
    reuse: bool = False,
    llc_settings: dict | None = None,
    dos: bool = True,
) -> tuple[RunRecord, dict, list[Transition], list[slt.DOSResult]]:
    """One run end to end: train (or, with ``reuse``, load a finished run), λ̂ at every checkpoint, its
    events and the check of the claim for its weight decay, and with ``dos`` the density of states at a
    handful of checkpoints. ``main`` runs one call per run, side by side in worker processes.

    Returns the record (also in ``folder/metrics.json``), the claim check, the events and the DOS results
    (empty without ``dos``).
    """
    folder = Path(folder)
    name = f"seed {seed}, weight decay {weight_decay:g}"
    if reuse and (folder / "metrics.json").exists():
        record = RunRecord.load(folder)
    else:
        record = train(folder, seed=seed, weight_decay=weight_decay, steps=steps)
        print(f"{name}: trained, {len(record.steps)} checkpoints in {record.train_seconds:.0f} s", flush=True)
    if not (reuse and len(record.llc) == len(record.steps)):
        llc_curve(record, **(llc_settings or {}))
        print(f"{name}: λ̂ at every checkpoint in {record.llc_seconds:.0f} s", flush=True)
    events = detect(record)
    record.save()
    check = (
        check_grokking_claim(record, events) if weight_decay == 1.0 else check_control_claim(record, events)
    )
    results = []
    if dos:
        start = time.perf_counter()
        results = dos_at(record, dos_checkpoints(record))
        print(
            f"{name}: density of states at {len(results)} checkpoints in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    return record, check, events, results


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="grokking-output", help="output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    parser.add_argument("--steps", type=int, default=10_000, help="training steps")
    parser.add_argument("--control-weight-decay", type=float, default=0.3)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse finished training runs; finished LLC results are always reused",
    )
    parser.add_argument(
        "--no-dos", action="store_true", help="skip the density of states at a handful of checkpoints"
    )
    parser.add_argument(
        "--hand-set",
        action="store_true",
        help="the stored study's hand-set LLC settings (HAND_SET_LLC) and 86 checkpoints, instead of the "
        "settings slt chooses and 47 checkpoints",
    )
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="run the LLC's chains eagerly; by default they run compiled (compile=True: 78 s against 95 s "
        "for the sweep of the grokking run, 141 s against 201 s for the control's; the density of states "
        "runs eagerly, where compiling measured no gain; docs/speed.md)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes running the training runs side by side, one torch thread each (default: one per "
        "run, at most one per available CPU core; 1 runs everything in this process)",
    )
    args = parser.parse_args()
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    spacing = HAND_SET_CHECKPOINTS if args.hand_set else CHECKPOINTS
    llc_settings = {**(HAND_SET_LLC if args.hand_set else {}), "compile": not args.no_compile}
    jobs = [
        dict(
            folder=out / f"seed{seed}_wd{wd:g}",
            seed=seed,
            weight_decay=wd,
            steps=checkpoint_steps(args.steps, **spacing),
            reuse=args.reuse,
            llc_settings=llc_settings,
            dos=not args.no_dos and seed == args.seeds[0],  # the DOS for the first seed's runs only
        )
        for seed in args.seeds
        for wd in (1.0, args.control_weight_decay)
    ]
    workers = args.workers if args.workers is not None else min(len(jobs), available_cores())
    if workers > 1:  # the runs are independent: one worker process per core, each on one torch thread
        with process_pool(workers, threads_per_worker=1) as pool:
            futures = [pool.submit(analyze_run, **job) for job in jobs]
            outcomes = [future.result() for future in futures]
    else:
        outcomes = [analyze_run(**job) for job in jobs]

    summary = []
    figure_runs = []
    dos_runs = []
    tables = []
    for record, check, events, dos_results in outcomes:
        row = {
            "seed": record.seed,
            "weight_decay": record.weight_decay,
            "checkpoints": len(record.steps),
            "train_seconds": record.train_seconds,
            "llc_seconds": record.llc_seconds,
            **check,
        }
        summary.append(row)
        print(json.dumps(row, default=str), flush=True)
        tables.append(
            f"### seed {record.seed}, weight decay {record.weight_decay:g}\n\n" + transitions_markdown(events)
        )
        if record.seed == args.seeds[0]:
            figure_runs.append((record, events))
            if dos_results:
                dos_runs.append((record, dos_results))
    plot_runs(figure_runs, out / "grokking.png")
    if dos_runs:
        plot_dos(dos_runs, out / "dos.png")
        (out / "dos.md").write_text(dos_markdown([rec for rec, _ in dos_runs]))
        print((out / "dos.md").read_text())
    header = (
        "# Transitions of the LLC\n\nDetected on log10 λ̂ against log10 step (`DETECT_SETTINGS`): delta and "
        "levels in λ̂ units, peak slope in decades of λ̂ per decade of steps.\n\n"
    )
    (out / "events.md").write_text(header + "\n".join(tables))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "study.md").write_text(study_markdown(summary))
    print(study_markdown(summary))
    written = ["grokking.png", "events.md", "study.md", "summary.json"]
    written += ["dos.png", "dos.md"] if dos_runs else []
    print("wrote " + ", ".join(str(out / name) for name in written))
    print(f"{len(jobs)} runs in {time.perf_counter() - started:.0f} s on {workers} worker process(es)")


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def study_markdown(summary: list[dict]) -> str:
    """Per-seed table: when each run groks, where λ̂ falls, and what the control does."""
    grok = [r for r in summary if r["weight_decay"] == 1.0]
    ctrl = [r for r in summary if r["weight_decay"] != 1.0]
    lines = [
        "## Grokking runs (weight decay 1.0)",
        "",
        "| seed | test acc 10% | test acc 90% | climb between checkpoints | steepest λ̂ fall | λ̂ fall (rel.) "
        "| snr | confidence | hit | train s | LLC s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in grok:
        ev = r.get("event") or {}
        climb = r.get("climb_steps")
        hit_text = ("yes" if r["hit"] else "no") if r["grokked"] else "–"
        lines.append(
            f"| {r['seed']} | {_fmt(r.get('test_acc_10'))} | {_fmt(r.get('test_acc_90'))} | "
            f"{f'{climb[0]}–{climb[1]}' if climb else 'never reaches 90%'} | {_fmt(ev.get('step'))} | "
            f"{_fmt(ev.get('rel_delta'), '+.0%')} | {_fmt(ev.get('snr'), '.1f')} | "
            f"{_fmt(ev.get('confidence'), '.0%')} | {hit_text} | "
            f"{r['train_seconds']:.0f} | {r['llc_seconds']:.0f} |"
        )
    hits = sum(bool(r.get("hit")) for r in grok)
    lines += [
        "",
        f"Falling-λ̂ event in the 10%→90% climb (± one checkpoint): {hits} of {len(grok)} seeds.",
        "",
    ]
    lines += [
        "## Controls (no grokking)",
        "",
        "| seed | memorized (train acc ≥ 99%) | loss settled | falls after memorizing (steepest step, rel.) "
        "| falls after the loss settled | train s | LLC s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ctrl:
        after = (
            ", ".join(f"{e['step']:.0f} ({e['rel_delta']:+.0%})" for e in r["falls_after_memorizing"])
            or "none"
        )
        settled = ", ".join(f"{e['step']:.0f} ({e['rel_delta']:+.0%})" for e in r["falls_after_loss_settled"])
        lines.append(
            f"| {r['seed']} | {r['memorized_step']} | {r['loss_settled_step']} | {after} | "
            f"{settled or 'none'} | "
            f"{r['train_seconds']:.0f} | {r['llc_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
