"""The device machine's own CPU as a second CPU kind: benchmark scripts run side by side, each pinned to two
physical cores of its own.

Why: the device machine's host (an Intel Xeon with AMX when seen) is the only Intel kind some sessions reach,
and only for minutes. Its 16 logical CPUs hold several 2-core machines like the project's own: running the
scripts at once, each with two threads on two physical cores (no hyper-thread siblings shared), gives all the
figures in the time of the longest. Ratios are measured within one process, so what the neighbours cost in
shared cache and clock applies to both sides of each.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["core_pairs", "host_jobs", "run_side_by_side"]


def core_pairs() -> list[tuple[int, int]]:
    """Pairs of logical CPUs, each CPU on a physical core of its own and both on one socket (first sibling of
    each core only): ``lscpu -p``'s table, or one pair (0, 1) where it cannot be read."""
    try:
        table = subprocess.run(["lscpu", "-p=CPU,CORE,SOCKET"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [(0, 1)]
    first_of_core: dict[tuple[int, int], int] = {}
    for line in table.splitlines():
        if line and not line.startswith("#"):
            cpu, core, socket = (int(field or 0) for field in line.split(",")[:3])
            first_of_core.setdefault((socket, core), cpu)
    by_socket: dict[int, list[int]] = {}
    for (socket, _), cpu in sorted(first_of_core.items()):
        by_socket.setdefault(socket, []).append(cpu)
    return [(cpus[i], cpus[i + 1]) for cpus in by_socket.values() for i in range(0, len(cpus) - 1, 2)] or [(0, 1)]


def _ab(a: str, b: str, batch: int, pairs: int) -> list[str]:
    return ["benchmarks/ab_rows.py", a, b, "--batch-size", str(batch), "--pairs", str(pairs)]


def host_jobs(smoke: bool) -> dict[str, list[list[str]]]:
    """Each job: the scripts it runs one after another (arguments after the Python executable), seven jobs so
    that their logs and the JSON fit the eight files a device run returns. The paired runs put CMT-S as users
    build it against DeiT-S (fp32 and bf16, batch 1 and 8, and CMT-S's bf16 against its own fp32: the issue's
    targets), the timed projection routes against the fixed rule, the inference kernels against the plain
    path, weights cast once against per call, and the documented inference copies against DeiT-S."""
    batches, (b1, b8) = ("1", (5, 3)) if smoke else ("1,8", (200, 40))
    rounds = "1" if smoke else "2"
    deit, cmt = "deit_small_patch16_224", "cmt_s timm.create_model"

    def both(a: str, b: str) -> list[list[str]]:
        return [_ab(a, b, 1, b1), _ab(a, b, 8, b8)]

    return {
        "bench_model": [["benchmarks/bench_model.py", "--threads", "2", "--rounds", rounds, "--batch-sizes", batches]],
        "profile_model": [["benchmarks/profile_model.py", "--threads", "2", "--batch-sizes", batches, "--top", "20"]],
        "ab_targets": [*both(deit, cmt), *both("deit_small bf16", f"{cmt} bf16"), *both(cmt, f"{cmt} bf16")],
        "ab_routes": [*both(cmt, f"{cmt} shape rule"), *both(f"{cmt} bf16", f"{cmt} shape rule bf16")],
        "ab_parts": [*both(f"{cmt} plain path", cmt), _ab(f"{cmt} cast per call bf16", f"{cmt} bf16", 1, b1),
                     *both(deit, "cmt_s@224 fused"), _ab("deit_small bf16", "cmt_s@224 fused amp_dtype bf16", 1, b1)],
        "routes_kernels": [["benchmarks/route_table.py", "--batch-sizes", batches, "--calls", "3" if smoke else "11"],
                           ["benchmarks/bench_kernels.py", "--calls", "3" if smoke else "20"]],
        "compiled": [["benchmarks/bench_model.py", "--threads", "2", "--rounds", rounds, "--batch-sizes", batches,
                      "--compile", "--rows", "cmt_s@224 fused compiled"]],
    }


def run_side_by_side(jobs: dict[str, list[list[str]]], out: Path, minutes: float, pin: bool) -> dict:
    """Run each job on a core pair of its own (jobs wait for a free pair when there are more jobs than pairs),
    its output in ``out/host_<job>.txt``; a job still running after ``minutes`` is stopped, its output kept."""
    pairs = core_pairs()
    free = list(pairs)
    ready = threading.Condition()  # guards the free pairs and the figures
    deadline = time.monotonic() + 60 * minutes
    figures: dict = {"core_pairs": pairs}

    def run_scripts(scripts: list[list[str]], pair: tuple[int, int], sink) -> list[int | str]:
        """Each script's exit code in turn ("timed out" for the one the deadline stopped, and none after it)."""
        codes: list[int | str] = []
        for script in scripts:
            command = [*(["taskset", "-c", f"{pair[0]},{pair[1]}"] if pin else []), sys.executable, *script]
            sink.write(f"$ {' '.join(command)}\n")
            sink.flush()
            try:
                codes.append(subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT,
                                            timeout=max(1.0, deadline - time.monotonic())).returncode)
            except subprocess.TimeoutExpired:
                codes.append("timed out")
                break
        return codes

    def run(name: str, scripts: list[list[str]]) -> None:
        with ready:  # a job that found no free pair before the deadline does not start
            if not ready.wait_for(lambda: bool(free), timeout=max(0.0, deadline - time.monotonic())):
                figures[name] = {"exit": ["not started: no free cores before the deadline"]}
                return
            pair = free.pop(0)
        start = time.monotonic()
        try:
            with (out / f"host_{name}.txt").open("w") as sink:
                codes = run_scripts(scripts, pair, sink)
        except Exception as err:  # taskset missing, an unwritable folder: said in the figures, the pair freed
            codes = [repr(err)]
        finally:
            with ready:
                free.append(pair)
                ready.notify()
        with ready:
            figures[name] = {"exit": codes, "wall_s": round(time.monotonic() - start, 1), "cores": pair}
        print(f"host {name}: exit {codes} after {time.monotonic() - start:.0f} s on CPUs {pair}", flush=True)

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return figures
