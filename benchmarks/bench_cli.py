"""Cold-start wall time of the main job, ``cmt-scale --target-flops 4G`` (target: <= 2 s on 2 cores).

Each command runs as a fresh process, interleaved round-robin; prints min and median over the runs, and
ratios to the interpreter's own start-up (the floor) and to merely importing torch + timm (what the main
job would cost if the analytic path imported them).

Usage: python benchmarks/bench_cli.py [--runs 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "cmt-scale --target-flops 4G": [shutil.which("cmt-scale") or "cmt-scale", "--target-flops", "4G"],
    "cmt-scale --target-params 25M --json": [shutil.which("cmt-scale") or "cmt-scale", "--target-params", "25M",
                                             "--json"],
    "python -c 'import torch, timm'": [sys.executable, "-c", "import torch, timm"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, cmd in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    main_job = statistics.median(times["cmt-scale --target-flops 4G"])
    print(f"{'command':40s} {'min s':>7s} {'median s':>9s} {'main job / this':>16s}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:40s} {min(values):7.3f} {med:9.3f} {main_job / med:16.2f}")


if __name__ == "__main__":
    main()
