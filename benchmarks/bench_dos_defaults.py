"""``estimate_dos`` with its defaults on two small trained networks: time, λ, and λ̂ from ``estimate_llc``.

The networks of ``bench_guards.py``: an 8 -> 24 -> 1 tanh regression MLP (241 parameters, n = 1000) and a
6 -> 32 -> 3 ReLU classifier trained to near-zero cross-entropy (323 parameters, n = 600). Each row is
``slt.estimate_dos(model, data, loss_fn=...)`` with no other setting (the default ladder of 12 rungs from
nβ*/30 to 30 nβ*, MALA with replica exchange, 8 chains × 1000 draws, ``fit_form="auto"``), timed on one
CPU thread, beside ``slt.estimate_llc`` with its defaults on the same model (the DOS λ over the default
ladder's window is a local slope at the temperatures an LLC estimate uses, so the two should be close), and
the log form's own reading (``result.refit(fit_form="log")``) where ``"auto"`` reported the power form.

    PYTHONPATH=. python benchmarks/bench_dos_defaults.py   # ~3 min; results/dos_defaults.{json,md}
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_guards import trained_classifier, trained_mlp

import slt
from benchmarks.common import RESULTS, environment, write_json


def _quietly(fn: Any) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn()
    return value, sorted({w.category.__name__ for w in caught if issubclass(w.category, slt.SLTWarning)})


def measure(name: str, model: torch.nn.Module, data: Any, loss_fn: str) -> dict[str, Any]:
    started = time.perf_counter()
    dos, dos_warnings = _quietly(lambda: slt.estimate_dos(model, data, loss_fn=loss_fn, progress=False))
    dos_seconds = time.perf_counter() - started
    log = None
    if dos.fit_form != "log":
        log, _ = _quietly(lambda: dos.refit(fit_form="log"))
    llc, llc_warnings = _quietly(lambda: slt.estimate_llc(model, data, loss_fn=loss_fn, progress=False))
    return dict(
        case=name,
        params=sum(p.numel() for p in model.parameters()),
        n=len(data[0]),
        dos_seconds=dos_seconds,
        fit_form=dos.fit_form,
        dos_llc=dos.llc,
        dos_llc_stderr=dos.llc_stderr,
        fit_window=list(dos.fit_window),
        log_llc=None if log is None else log.llc,
        log_multiplicity=None if log is None else log.multiplicity,
        dos_warnings=dos_warnings,
        llc=llc.mean,
        llc_stderr=llc.stderr,
        llc_seconds=llc.seconds,
        llc_warnings=llc_warnings,
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | params | n | estimate_dos s | λ (form, window) | log form's λ, m | DOS warnings "
        "| estimate_llc λ̂ | LLC warnings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        log = "–" if r["log_llc"] is None else f"{r['log_llc']:.4g}, {r['log_multiplicity']:.3g}"
        lines.append(
            f"| {r['case']} | {r['params']} | {r['n']} | {r['dos_seconds']:.1f} | {r['dos_llc']:.4g} ± "
            f"{r['dos_llc_stderr']:.2g} ({r['fit_form']}, t in [{r['fit_window'][0]:.2g}, "
            f"{r['fit_window'][1]:.2g}]) | {log} | {', '.join(r['dos_warnings']) or '—'} | "
            f"{r['llc']:.4g} ± {r['llc_stderr']:.2g} | {', '.join(r['llc_warnings']) or '—'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)
    mlp, mlp_data = trained_mlp()
    clf, clf_data = trained_classifier()
    rows = [
        measure("tanh MLP 8-24-1", mlp, mlp_data, "mse"),
        measure("ReLU classifier 6-32-3, cross-entropy near zero", clf, clf_data, "cross_entropy"),
    ]
    write_json("dos_defaults.json", {"environment": environment("cpu"), "rows": rows})
    (RESULTS / "dos_defaults.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
