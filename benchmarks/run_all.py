"""Run every benchmark and write benchmarks/results/*.json and REPORT.md.

    python benchmarks/run_all.py            # full run, about 30-40 minutes on a 2-core CPU
    python benchmarks/run_all.py --quick    # a few minutes
    python benchmarks/run_all.py --device cuda --only speed scaling   # on a GPU

Run it with the interpreter of an environment that has devinterp 2.0.1 installed to get the peer columns
(see benchmarks/README.md); without devinterp every benchmark still runs and the report says the peer
was skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_accuracy  # noqa: E402
import bench_scaling  # noqa: E402
import bench_speed  # noqa: E402
import report  # noqa: E402
import torch  # noqa: E402

PARTS = ("accuracy", "speed", "scaling")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small versions of every benchmark")
    parser.add_argument("--device", default="cpu", help="device for the speed and scaling benchmarks")
    parser.add_argument("--only", nargs="*", choices=PARTS, default=list(PARTS))
    parser.add_argument("--no-peer", action="store_true", help="skip devinterp even if it is installed")
    parser.add_argument(
        "--results", default=str(HERE / "results"), help="folder for the JSON files and report"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    common = ["--quick"] if args.quick else []
    results = Path(args.results)
    suffix = "" if args.device == "cpu" else "_" + args.device.replace(":", "")
    peer = ["--no-peer"] if args.no_peer else []
    start = time.perf_counter()
    if "accuracy" in args.only:
        print("== accuracy ==", flush=True)
        configs = [c for c in bench_accuracy.CONFIGS if not (args.no_peer and c.startswith("devinterp"))]
        bench_accuracy.main([*common, "--configs", *configs, "--output", str(results / "accuracy.json")])
    if "speed" in args.only:
        print("== speed ==", flush=True)
        out = str(results / f"speed{suffix}.json")
        bench_speed.main([*common, *peer, "--device", args.device, "--output", out])
    if "scaling" in args.only:
        print("== scaling ==", flush=True)
        out = str(results / f"scaling{suffix}.json")
        bench_scaling.main([*common, *peer, "--device", args.device, "--output", out])
    report.main(["--results", str(results)])
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
