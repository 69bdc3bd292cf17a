"""The ``slt`` command line: analyse a folder of checkpoints, and report on the results.

::

    slt analyze CKPT_DIR --model module:factory --data module:function --loss mse --out results.sqlite
    slt report results.sqlite --out report/

``module:name`` arguments name a function in an importable module or in a Python file
(``path/to/file.py:name``). **Both import and run that code**, as ``python file.py`` would: name only
files you trust. Files are loaded by path, under a name unique to the path (two ``defs.py`` in different
folders do not collide). The current folder is searched for modules, but after the standard library
and the installed packages, so a stray ``arviz.py`` or ``concurrent.py`` in it is never imported in
their place, in this process or in worker processes. (``python -m slt`` lets Python put the current
folder first before slt starts; use the ``slt`` command, or ``python -P -m slt``.) ``--data`` and
``--test-data`` functions are called with no arguments and return the data (a tuple of tensors, a
dataset or a data loader); ``--model`` is called with no arguments for every checkpoint and returns a
fresh model.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "import_object"]


def import_object(spec: str, what: str) -> Any:
    """Import ``module:name`` or ``path/to/file.py:name``; raise a clear ``ValueError`` otherwise.

    Files are loaded by path under a unique module name (see :mod:`slt.sweeps.user_code`); modules
    are imported by name with the current folder searched last.
    """
    from slt.sweeps import user_code

    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} must look like module:name or path/to/file.py:name, got {spec!r}")
    sys.path[:] = user_code.safe_path(sys.path)
    try:
        if module_name.endswith(".py"):
            try:
                module = user_code.load_file(module_name)
            except ValueError as exc:
                raise ValueError(f"{what}: {exc}") from None
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what}: cannot import {module_name!r} ({exc})") from exc
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ValueError(f"{what}: {module_name!r} has no attribute {attr!r}") from None
    return obj


def call_user(fn: Any, what: str) -> Any:
    """Call a user function given on the command line; what it raises becomes a one-line ``ValueError``."""
    if not callable(fn):
        raise ValueError(f"{what} must name a function that returns the data, got {type(fn).__name__}")
    try:
        return fn()
    except Exception as exc:
        raise ValueError(f"{what}: {_qualname(fn)}() raised {type(exc).__name__}: {exc}") from exc


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to an option's help unless its help says it or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if (
            (action.help and "default" in action.help)
            or action.required
            or action.default is None
            or action.default is False
        ):
            return action.help
        return super()._get_help_string(action)


def _qualname(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``slt`` command."""
    parser = argparse.ArgumentParser(
        prog="slt",
        description="Singular learning theory for torch models: local learning coefficients over training.",
    )
    parser.add_argument("--version", action="version", version=f"slt {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    analyze = commands.add_parser(
        "analyze",
        help="estimate the LLC (and losses) at every checkpoint; resumable",
        description=(
            "Estimate the local learning coefficient at every checkpoint in a folder (or glob) and "
            "commit each result to an SQLite store as it finishes. Rerunning skips finished checkpoints. "
            "--model, --data, --test-data and a MODULE:FUNCTION --loss IMPORT AND RUN Python code (a "
            "module, or a file given as path/to/file.py:name): pass only code you trust. The current "
            "folder is searched after the standard library and installed packages."
        ),
        formatter_class=_DefaultsHelpFormatter,
    )
    analyze.add_argument("checkpoints", metavar="CKPT_DIR", help="folder or glob pattern of checkpoint files")
    analyze.add_argument(
        "--model",
        required=True,
        metavar="MODULE:FACTORY",
        help="function returning a fresh model of the checkpoints' architecture (imports and runs that code)",
    )
    analyze.add_argument(
        "--data",
        required=True,
        metavar="MODULE:FUNCTION",
        help="function returning the training data (imports and runs that code)",
    )
    analyze.add_argument(
        "--loss",
        required=True,
        metavar="LOSS",
        help="mse, cross_entropy, or MODULE:FUNCTION taking (model, batch) (imports and runs that code)",
    )
    analyze.add_argument("--out", default="slt-results.sqlite", metavar="STORE", help="SQLite result store")
    analyze.add_argument(
        "--test-data",
        metavar="MODULE:FUNCTION",
        help="function returning held-out data (imports and runs that code)",
    )
    analyze.add_argument(
        "--measures",
        default="llc,loss",
        help="comma-separated measures: llc, dos, loss, or one the --model module registers with "
        "slt.sweeps.measures.register_measure",
    )
    where = analyze.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=int, default=1, metavar="N", help="local worker processes (1: run in this process)"
    )
    where.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: the cluster at ADDRESS, or RAY_ADDRESS, or a local Ray",
    )
    sampling = analyze.add_argument_group("estimator settings (see slt.estimate_llc)")
    sampling.add_argument(
        "--num-chains", type=int, default=None, help="default: 4, or 16 stacked chains for a tiny model"
    )
    sampling.add_argument(
        "--num-draws", type=int, default=None, help="default: automatic (doubled until the estimate holds)"
    )
    sampling.add_argument("--num-burnin", type=int, default=None, help="with --num-draws; default: num-draws")
    sampling.add_argument(
        "--max-steps", type=int, default=None, help="budget per chain of the automatic length"
    )
    sampling.add_argument(
        "--max-seconds", type=float, default=None, help="time budget of the automatic length"
    )
    sampling.add_argument(
        "--step-size",
        type=float,
        default=None,
        help="fixed step size (default: chosen once, at three probe checkpoints; see --reference)",
    )
    sampling.add_argument("--n-beta", type=float, default=None, help="default: n / log n")
    sampling.add_argument(
        "--localization",
        type=float,
        default=None,
        help="γ (default: the smallest of 1, 3, 10, 30, 100, 300, 1000 that keeps the chains near w* at "
        "three probe checkpoints; see --reference)",
    )
    sampling.add_argument(
        "--reference",
        choices=("auto", "none"),
        default="auto",
        help="auto: choose γ, step size and chain lengths not given once, at reference checkpoints, and "
        "hold them fixed; none: each checkpoint chooses its own step and length, at γ = 1 unless given",
    )
    sampling.add_argument("--batch-size", type=int, default=None)
    sampling.add_argument(
        "--sampler",
        default="sgld",
        help="a registered kernel: sgld, rmsprop_sgld, sgnht, or one the --model module registers "
        "with slt.samplers.register_kernel",
    )
    sampling.add_argument("--device", default=None, help="torch device (default: cpu)")
    sampling.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the loss and its gradient through torch.compile, one compiled function reused by every "
        "checkpoint (seconds to compile once; pays on sweeps of small models, see slt.estimate_llc); "
        "default: on from 24 checkpoints (slt.sweeps.trajectory.compiles_by_default), below that only for "
        "long runs of stacked chains (slt.estimate_llc's compile=None); --no-compile keeps the chains eager",
    )
    analyze.add_argument(
        "--seed", type=int, default=0, help="base seed; the same seed gives the same numbers on this machine"
    )
    analyze.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load checkpoints that pickle arbitrary objects (runs their code: trusted files only)",
    )
    analyze.add_argument(
        "--state-dict-key", default=None, help="key of the state dict inside checkpoint dicts"
    )
    analyze.add_argument(
        "--state-dict-prefix",
        default=None,
        metavar="PREFIX",
        help="keep only the weights whose names start with PREFIX, without it ('model.' for Lightning)",
    )
    analyze.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads of this process (default: torch's choice, every core); 1 is often fastest "
        "for small models and on a busy machine",
    )
    analyze.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    analyze.set_defaults(handler=_analyze)

    report = commands.add_parser(
        "report",
        help="write plots, a CSV and a markdown table from a result store",
        description="Write trajectory.png, trajectory.csv and trajectory.md from an slt result store.",
        formatter_class=_DefaultsHelpFormatter,
    )
    report.add_argument("store", metavar="STORE", help="SQLite result store written by slt analyze")
    report.add_argument("--out", required=True, metavar="DIR", help="folder for the report (created)")
    report.add_argument(
        "--settings",
        default=None,
        metavar="HASH",
        help="settings hash when the store holds several runs (default: the latest)",
    )
    report.add_argument(
        "--run",
        default=None,
        metavar="NAME",
        help="training run (its checkpoint folder, or a unique part of it) when several were analysed "
        "with the same settings into one store; they are never mixed",
    )
    report.set_defaults(handler=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``slt`` command; returns the exit status.

    0 success, 1 some checkpoints failed, 2 an error, 130 interrupted with Ctrl-C.
    """
    from slt.sweeps.user_code import safe_path

    parser = build_parser()
    args = parser.parse_args(argv)
    sys.path[:] = safe_path(sys.path)  # the current folder never shadows installed modules
    try:
        return int(args.handler(args))
    except (ValueError, ImportError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception's text holds
        print(f"slt {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every finished checkpoint is already committed to the store
        resume = (
            f"; every finished checkpoint is kept in {args.out}: run the same command again to resume"
            if args.command == "analyze"
            else ""
        )
        print(f"slt {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


def _analyze(args: argparse.Namespace) -> int:
    import warnings

    from slt.sweeps.executors import RayExecutor, process_pool
    from slt.sweeps.trajectory import CheckpointFailedWarning, analyze_checkpoints

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    model_factory = import_object(args.model, "--model")
    data = call_user(import_object(args.data, "--data"), "--data")
    test_data = (
        call_user(import_object(args.test_data, "--test-data"), "--test-data") if args.test_data else None
    )
    loss: Any = args.loss if args.loss in ("mse", "cross_entropy") else import_object(args.loss, "--loss")
    measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    if test_data is not None and "loss" not in measures:
        measures.append("loss")
    settings = {
        "num_chains": args.num_chains,
        "num_draws": args.num_draws,
        "num_burnin": args.num_burnin,
        "max_steps": args.max_steps,
        "max_seconds": args.max_seconds,
        "step_size": args.step_size,
        "n_beta": args.n_beta,
        "localization": args.localization,
        "batch_size": args.batch_size,
        "sampler": args.sampler,
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    if args.device:
        settings["device"] = args.device
    if args.compile is not None:
        settings["compile"] = args.compile
    if "llc" not in measures:
        settings = {k: v for k, v in settings.items() if k == "device"}
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    executor: Any = None
    if args.ray is not None:
        executor = RayExecutor(args.ray or None)
    elif args.workers > 1:
        executor = process_pool(args.workers)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trajectory = analyze_checkpoints(
                args.checkpoints,
                model_factory,
                data,
                loss_fn=loss,
                measures=measures,
                store=args.out,
                executor=executor,
                test_data=test_data,
                seed=args.seed,
                progress=not args.no_progress,
                allow_pickle=args.allow_pickle,
                state_dict_key=args.state_dict_key,
                state_dict_prefix=args.state_dict_prefix,
                reference=None if args.reference == "none" else "auto",
                **settings,
            )
    except KeyboardInterrupt:  # leave at once: queued checkpoints are cancelled, the workers end with us
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            executor = None
        raise
    finally:
        if executor is not None:
            executor.shutdown()
    for w in caught:
        if not issubclass(w.category, CheckpointFailedWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    done = int(trajectory.ok.sum())
    print(f"{len(trajectory)} checkpoints in {args.out}: {done} done, {len(trajectory) - done} failed")
    for row in trajectory.failures:
        print(f"  failed step {row.step} ({row.source}): {row.error}", file=sys.stderr)
    line = llc_settings_line(trajectory.settings)
    if line:
        print(f"LLC settings: {line}")
    print(f"settings hash {trajectory.settings_hash}; next: slt report {args.out} --out DIR")
    return 0 if not trajectory.failures else 1


def llc_settings_line(settings: Any) -> str | None:
    """One line saying how a sweep's LLC was measured: γ, step, lengths, nβ, chains, and what was chosen.

    Reads the sweep's stored ``settings`` (``settings["llc"]`` and, when the sweep chose settings at
    reference checkpoints, ``settings["reference"]``); ``None`` when the sweep did not measure the LLC.
    """
    llc = settings.get("llc") if isinstance(settings, dict) else None
    if not isinstance(llc, dict):
        return None
    reference = settings.get("reference") if isinstance(settings.get("reference"), dict) else {}
    chosen = set(reference.get("chosen") or {})

    def mark(name: str) -> str:
        return " (chosen)" if name in chosen else ""

    gamma = llc.get("localization")
    step = llc.get("step_size")
    burnin, draws = llc.get("num_burnin"), llc.get("num_draws")
    n_beta, chains = llc.get("n_beta"), llc.get("num_chains")
    parts = [
        f"γ = {float(gamma):g}{mark('localization')}" if gamma is not None else "γ = 1",
        f"step {float(step):.3g}{mark('step_size')}" if step is not None else "step chosen per checkpoint",
        f"{burnin} burn-in + {draws} draws per chain{mark('num_draws')}"
        if draws is not None
        else "automatic length per checkpoint",
        f"nβ = {float(n_beta):g}" if n_beta is not None else "nβ = n/log n",
        f"{chains} chains" if chains is not None else "default chains",
        f"sampler {llc.get('sampler', 'sgld')}",
    ]
    if reference.get("probe_steps"):
        parts.append("chosen at steps " + ", ".join(str(s) for s in reference["probe_steps"]))
    if reference.get("skipped"):
        parts.append(f"no settings chosen ({reference['skipped']})")
    return "; ".join(parts)


def _report(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slt.sweeps.trajectory import Trajectory

    trajectory = Trajectory.load(args.store, settings_hash=args.settings, run=args.run)
    events, notes = _transitions(trajectory)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        frame = trajectory.to_dataframe()
        frame.insert(2, "not_a_minimum", trajectory.not_a_minimum)
        frame["warnings"] = [
            "; ".join(f"{w['category']}: {w['message']}" for w in r.payload.get("warnings", []))
            for r in trajectory.records
        ]
        frame.to_csv(out / "trajectory.csv", index=False)
        (out / "trajectory.md").write_text(markdown_report(trajectory, args.store, events, notes))
        fig = trajectory.plot(events=events)
        fig.savefig(out / "trajectory.png", dpi=120)
        plt.close(fig)
    except OSError as exc:
        raise ValueError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    print(f"wrote {out / 'trajectory.png'}, {out / 'trajectory.csv'} and {out / 'trajectory.md'}")
    if args.settings is None:
        from slt.sweeps.store import ResultStore

        with ResultStore(args.store, readonly=True) as store:
            others = [
                r for r in store.runs() if r.settings_hash != trajectory.settings_hash and r.num_done > 0
            ]
        if others:
            listing = ", ".join(f"{r.settings_hash[:16]} ({r.num_done} done)" for r in others[:5])
            print(
                f"the store also holds results under {len(others)} other set(s) of settings: {listing}; "
                f"this report is of the latest used, {trajectory.settings_hash[:16]}. --settings HASH "
                "reports another",
                file=sys.stderr,
            )
    return 0


def _transitions(trajectory: Any) -> tuple[list[Any], list[str]]:
    """The λ̂ transitions of a trajectory and notes on them (why none, or why they were not sought)."""
    import dataclasses

    from slt.sweeps.trajectory import not_a_minimum_note

    done = [r for r in trajectory.records if r.ok]
    notes = [f"{len(trajectory.failures)} failed checkpoint(s) were left out"] if trajectory.failures else []
    kept = dataclasses.replace(trajectory, records=done)
    off = kept.not_a_minimum
    left = [not_a_minimum_note(int(off.sum()))] if off.any() else []
    if off.all():
        return [], [*notes, *left, "no transitions sought: no checkpoint has a usable λ̂"]
    try:  # Trajectory.transitions leaves out the not-a-minimum checkpoints and notes how many
        events = kept.transitions("llc")
    except ValueError as exc:
        return [], [*notes, *left, f"no transitions sought: {exc}"]
    return list(events), [*notes, *getattr(events, "notes", [])]


def markdown_report(
    trajectory: Any, store: str, events: Sequence[Any] = (), notes: Sequence[str] = ()
) -> str:
    """A markdown page: settings hash, counts, one row per checkpoint, transitions and warnings.

    Text that comes from the store (errors, warnings, the run's name) is escaped: terminal control
    sequences are removed and HTML and table syntax are neutralised.
    """
    from slt.transitions import transitions_markdown

    has_test = bool((~_isnan(trajectory.test_loss)).any())
    header = (
        ["step", "status", "λ̂", "± stderr", "train loss"] + (["test loss"] if has_test else []) + ["note"]
    )
    off = trajectory.not_a_minimum
    lines = [
        f"# slt trajectory: {_md(os.path.basename(store))}",
        "",
        f"{len(trajectory)} checkpoints, {int(trajectory.ok.sum())} done, {len(trajectory.failures)} failed, "
        f"{int(off.sum())} not a minimum (settings hash `{trajectory.settings_hash}`"
        + (f", run {_md(trajectory.run)}" if trajectory.run else "")
        + ").",
        "",
        *([f"LLC settings: {_md(line)}.", ""] if (line := llc_settings_line(trajectory.settings)) else []),
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if h not in ("status", "note") else "---" for h in header) + "|",
    ]
    for row, llc, err, train, test, bad in zip(
        trajectory.records,
        trajectory.llc_mean,
        trajectory.llc_stderr,
        trajectory.train_loss,
        trajectory.test_loss,
        off,
    ):
        note = _md(row.error or "", limit=160)
        status = "not a minimum" if bad else row.status
        if bad and not note:
            note = "λ̂ < 0: the weights are not a local minimum; not a learning coefficient"
        cells = [str(row.step), status, _fmt(llc), _fmt(err), _fmt(train)]
        if has_test:
            cells.append(_fmt(test))
        cells.append(note)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Transitions of λ̂", ""]
    if events:
        lines.append(transitions_markdown(events).rstrip("\n"))
    else:
        lines.append("None found.")
    if notes:
        lines += ["", *[f"- {_md(n)}" for n in notes]]
    warned = [(s, c, m) for s, c, m in trajectory.warnings]
    lines += ["", "## Warnings", ""]
    if warned:
        lines += [f"- step {s}: {_md(c)}: {_md(m, limit=300)}" for s, c, m in warned]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


#: Terminal control sequences (colours, cursor moves, titles) and other control characters.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|[\x00-\x08\x0b-\x1f\x7f]")


def _md(text: Any, limit: int | None = None) -> str:
    """``text`` safe inside a markdown table cell: no control sequences, HTML or table syntax."""
    import html

    clean = _CONTROL.sub("", str(text)).replace("\r", " ").replace("\n", " ")
    clean = html.escape(clean, quote=False).replace("|", "\\|").replace("`", "\\`")
    if limit is not None and len(clean) > limit:
        clean = clean[: limit - 3] + "..."
    return clean


def _fmt(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4g}"


def _isnan(values: Any) -> Any:
    import numpy as np

    return np.isnan(np.asarray(values, dtype=float))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slt")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
