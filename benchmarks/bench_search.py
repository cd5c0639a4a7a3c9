"""Driver overhead of a search: Optuna against Ray Tune on the same tiny search, in one process.

The overhead of a trial is everything but its own work: sampling, study/experiment bookkeeping,
writing its row and the results table. It is the run's wall time minus the sum of the trials' own wall
times (each row's ``wall_s``: building the candidate and training it), with trials run one at a time.
Ray's fixed cost (start and stop of a local Ray) is reported apart from its per-trial cost. The
per-trial overhead is also put against a default-protocol trial's time (measured on the same machine,
``--default-trial-s``) to check the <= 5% target.

Usage: python benchmarks/bench_search.py [--trials 6] [--default-trial-s 80]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def _run(backend: str, trials: int, out: Path) -> tuple[float, float, int]:
    from cmt_scale.proxy import ProxyProtocol
    from cmt_scale.search import OptunaBackend, RayBackend, run_search

    protocol = ProxyProtocol(dataset="digits", train_size=300, val_size=200, resolution=32, epochs=1, threads=1)
    start = time.perf_counter()
    engine = RayBackend(num_cpus=1, cpus_per_trial=1) if backend == "ray" else OptunaBackend()
    summary = run_search("cmt_compound", protocol, out, trials, backend=engine, promotion=None)  # one rung
    wall = time.perf_counter() - start
    own = sum(float(r["wall_s"] or 0.0) for r in summary.rows)
    return wall, own, len(summary.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--default-trial-s", type=float, default=80.0,
                        help="wall time of one default-protocol CMT-Ti trial on this machine")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from cmt_scale.proxy import load_dataset

    load_dataset("digits")  # both backends then start from data in memory
    root = Path(tempfile.mkdtemp(prefix="benchsearch"))
    try:
        results = {b: _run(b, args.trials, root / b) for b in ("optuna", "ray")}
        import ray

        start = time.perf_counter()  # Ray's fixed cost: a local start and stop, no trial
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=str(root / "r"))
        ray.shutdown()
        ray_fixed = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ntiny search: cmt_compound on digits, {args.trials} trials, 1 epoch, one trial at a time")
    print(f"{'backend':8s} {'wall s':>8s} {'trials own s':>13s} {'overhead s':>11s} {'per trial s':>12s} "
          f"{'vs Optuna':>10s}")
    base = (results["optuna"][0] - results["optuna"][1]) / results["optuna"][2]
    for backend, (wall, own, n) in results.items():
        per_trial = (wall - own) / n
        print(f"{backend:8s} {wall:8.1f} {own:13.1f} {wall - own:11.1f} {per_trial:12.2f} {per_trial / base:10.1f}x")
    wall, own, n = results["ray"]
    print(f"\nRay fixed cost (local start + stop): {ray_fixed:.1f} s; per trial without it: "
          f"{(wall - own - ray_fixed) / n:.2f} s ({(wall - own - ray_fixed) / n / base:.1f}x Optuna's)")
    print(f"\nOptuna driver overhead per trial: {base:.2f} s = {100 * base / args.default_trial_s:.2f}% of a "
          f"{args.default_trial_s:.0f} s default-protocol trial (target <= 5%)")


if __name__ == "__main__":
    main()
