"""The one script to run on a GPU machine: the streaming data path and the training path under CUDA.

Prepared for a session that is lent a GPU (about 15 minutes of device time in all, so it is sized to
finish in under 8): run it from the repository root, it writes ``gpu_check.json`` under ``--out``.

1. A streaming image-folder search: a few trials of CMT-Ti-sized members at 224 px over a generated
   JPEG folder (`bench_data.make_folder`), with a memory budget below the folder's decoded size, so every
   trial reads from disk through the DataLoader workers; bf16 autocast.
2. Training img/s of CMT-Ti and DeiT-Ti at 224 px in bf16 (channels-last, batch 128), streaming and in
   memory, with the share of each step the GPU waits for data.
3. Inference img/s of CMT-S (as built and fused) and DeiT-S at 224 px: fp32 and bf16 autocast, channels-last,
   eager and ``torch.compile`` (CUDA graphs at batch 1), batch 1 and 256, and for each eager forward the
   kernels it launches and the share of its wall time the GPU is busy: what limits CMT there.

4. (``--sections host-cpu``, not in the default) the machine's own CPU as 2-core machines side by side
   (`_host_cpu`): ``bench_model.py``, ``profile_model.py``, ``route_table.py``, ``bench_kernels.py``, the
   compiled rows and paired ``ab_rows.py`` runs, each job on two physical cores of its own; on an Intel Xeon
   with AMX (as the device machine's host was seen, family 6 model 207) these are the CPU-inference issue's
   Intel figures. About 6 minutes: ``--host-minutes 6``.

Inference runs first (it is what the CMT-on-GPUs issue asks for), and the JSON is rewritten after every row,
so a run stopped at its time limit still returns what it measured.

``--smoke`` runs every section on a handful of images on the CPU (CMT-Ti and DeiT-Ti), to check the script.

Usage: python benchmarks/gpu_check.py [--out gpu_out] [--sections route,inference,train,search|host-cpu]
                                     [--compile-minutes 4] [--resume gpu_check.json] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_kind, cpu_name  # noqa: E402
from bench_data import make_folder  # noqa: E402


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else cpu_name()


def search_section(root: Path, out: Path, device: str, smoke: bool) -> dict:
    from cmt_scale.proxy import ProxyProtocol
    from cmt_scale.search import run_search

    resolution = 64 if smoke else 224
    protocol = ProxyProtocol(dataset=f"imagefolder:{root}", resolution=resolution, val_size=64 if smoke else 1000,
                             train_size=128 if smoke else 8000, epochs=1, batch_size=32 if smoke else 128,
                             device=device, precision="bf16", workers=2 if smoke else 8, data_memory_gb=0.0,
                             augment="rrc-flip")
    space = {"family": "cmt_compound", "base": "cmt_ti", "sampler": "grid",
             "params": {"phi": {"type": "categorical", "choices": [-1.0, 0.0] if smoke else [-1.0, -0.5, 0.0]}}}
    start = time.perf_counter()
    summary = run_search(space, protocol, out / "search", backend=None, promotion=None)
    rows = [{k: r[k] for k in ("name", "macs", "top1_final", "wall_s", "train_img_per_s", "state", "error")}
            for r in summary.rows]
    return {"wall_s": time.perf_counter() - start, "trials": rows}


def train_section(root: Path, device: str, smoke: bool) -> list[dict]:
    from cmt_scale.proxy import ProxyProtocol, build_baseline, train_and_evaluate
    from scaling import PRESETS

    figures = []
    for name in ("cmt_ti", "deit_tiny"):
        for budget, path in ((0.0, "streaming"), (None, "in memory")):
            protocol = ProxyProtocol(dataset=f"imagefolder:{root}", resolution=64 if smoke else 224,
                                     val_size=64 if smoke else 512, train_size=128 if smoke else 6400, epochs=1,
                                     batch_size=32 if smoke else 128, device=device, precision="bf16",
                                     workers=2 if smoke else 8, data_memory_gb=budget)
            model = PRESETS[name] if name in PRESETS else build_baseline(name, 10, protocol.resolution)
            result = train_and_evaluate(model, protocol, progress=False, name=name)
            figures.append({"model": name, "path": path, "img_s": result.train_img_per_s,
                            "data_wait_share": result.data_time_share, "state": str(result.state),
                            "error": result.error})
            print(f"train {name} {path}: {result.train_img_per_s:.0f} img/s, waits for data "
                  f"{100 * result.data_time_share:.1f}% of each step")
    return figures


@contextlib.contextmanager
def _inference(device: str, dtype: str) -> Iterator[None]:
    """``torch.inference_mode``, with bf16 autocast on ``device`` when ``dtype`` is "bf16": the timed calls' context."""
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        yield


def _images(batch: int, device: str) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)


def _create(name: str, device: str) -> torch.nn.Module:
    """A timm model as users make it (``timm.create_model(...).eval()``), channels-last on ``device``."""
    import timm

    import scaling  # noqa: F401  (registers cmt_* with timm)

    return timm.create_model(name).eval().to(device).to(memory_format=torch.channels_last)


def _time_forward(runner, x: torch.Tensor, dtype: str, device: str, warmup: int, rounds: int) -> float:
    """Seconds per forward: ``warmup`` calls first (compilation, CUDA-graph capture, cuDNN's choice), then the mean
    of ``rounds``, the device synchronised at both ends so the figure is the GPU's time, not the launches'."""
    with _inference(device, dtype):
        for _ in range(warmup):
            runner(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(rounds):
            runner(x)
        _sync(device)
    return (time.perf_counter() - start) / rounds


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _kernel_profile(model, x: torch.Tensor, dtype: str, device: str, seconds: float) -> dict:
    """What one eager forward asks of the GPU: how many kernels it launches and how long they run together,
    against the forward's wall time. A GPU busy for a small share of the forward is waiting on the host's
    launches (CMT's many small ops), not on arithmetic."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        with _inference(device, dtype):
            model(x)
        _sync(device)
    averages = prof.key_averages()
    kernels = [k for k in averages if k.device_type == DeviceType.CUDA]
    busy_us = sum(k.self_device_time_total for k in kernels)
    top = sorted(kernels, key=lambda k: -k.self_device_time_total)[:8]
    return {"kernel_launches": sum(k.count for k in kernels), "kernels_ms": busy_us / 1000,
            "forward_ms": 1000 * seconds, "gpu_busy_share": busy_us / 1e6 / seconds if seconds else None,
            "aten_ops": sum(k.count for k in averages if k.key.startswith("aten::")),
            "top_kernels": [{"name": k.key[:90], "count": k.count, "ms": k.self_device_time_total / 1000}
                            for k in top]}


def _inference_models(device: str, smoke: bool) -> list[tuple[str, str, object]]:
    """CMT-S as users build it (``timm.create_model(...).eval()``), its ``fuse_for_inference`` copy, and DeiT-S,
    all channels-last on ``device``."""
    from scaling import fuse_for_inference

    cmt, deit = ("cmt_ti", "deit_tiny_patch16_224") if smoke else ("cmt_s", "deit_small_patch16_224")
    built = _create(cmt, device)
    fused = fuse_for_inference(built, tune_allocator=False)
    baseline = _create(deit, device)
    return [(cmt, "as built", built), (cmt, "fused", fused), (deit, "as built", baseline)]


def inference_section(device: str, smoke: bool, deadline: float, save, done: list[dict]) -> list[dict]:
    """Eager rows for every model, batch and dtype with a kernel profile each; then compiled rows (``torch.compile``;
    at batch 1 with CUDA graphs, ``mode="reduce-overhead"``, the cure for launch-bound forwards) while
    ``deadline`` allows, most telling first. ``save`` is called after every row, so a run cut short keeps its rows;
    rows in ``done`` (an earlier run's, ``--resume``) are kept and not measured again."""
    figures: list[dict] = list(done)
    measured = {(r["model"], r["variant"], r["compiled"].split(" ")[0], r["batch"], r["dtype"]) for r in done}
    models = _inference_models(device, smoke)
    batches = (1, 8) if smoke else (1, 256)
    warmup, rounds = (2, 2) if smoke else (10, 30)

    def record(name: str, variant: str, compiled: str, batch: int, dtype: str, seconds: float, **extra) -> None:
        row = {"model": name, "variant": variant, "compiled": compiled, "batch": batch, "dtype": dtype,
               "img_s": batch / seconds, "ms": 1000 * seconds, **extra}
        figures.append(row)
        save(figures)
        print(f"infer {name} {variant} {compiled} batch {batch} {dtype}: {row['img_s']:.0f} img/s "
              f"({row['ms']:.2f} ms)" + (f", {extra['profile']['kernel_launches']} kernels, GPU busy "
                                         f"{100 * (extra['profile']['gpu_busy_share'] or 0):.0f}%"
                                         if "profile" in extra else ""), flush=True)

    for batch in batches:
        for dtype in ("fp32", "bf16"):
            x = _images(batch, device)
            for name, variant, model in models:
                if (name, variant, "eager", batch, dtype) in measured:
                    continue
                seconds = _time_forward(model, x, dtype, device, warmup, rounds)
                record(name, variant, "eager", batch, dtype, seconds,
                       profile=_kernel_profile(model, x, dtype, device, seconds))
    order = [(dtype, batch) for dtype in ("bf16", "fp32") for batch in reversed(batches)]
    for dtype, batch in order:
        for name, variant, model in models:
            if variant == "fused" or (name, variant, "compiled", batch, dtype) in measured:
                continue  # Inductor folds and fuses on its own; the as-built model is what users compile
            if time.monotonic() > deadline:
                print(f"skipped compiled {name} batch {batch} {dtype}: past the time allowed", flush=True)
                continue
            mode = "reduce-overhead" if batch == 1 and device == "cuda" else "default"
            torch._dynamo.reset()
            runner = torch.compile(model, mode=mode)
            x = _images(batch, device)
            start = time.monotonic()
            with _inference(device, dtype):
                runner(x)
            compile_s = time.monotonic() - start
            seconds = _time_forward(runner, x, dtype, device, warmup, rounds)
            record(name, variant, f"compiled ({mode})", batch, dtype, seconds, compile_s=compile_s)
    return figures


def route_section(device: str, smoke: bool, save) -> list[dict]:
    """CMT-S's 1x1 projections in bf16 autocast as cuBLAS GEMMs (bias in the epilogue; the default off the CPU in
    bf16 and fp16) against cuDNN 1x1 convolutions (bias as a separate add), interleaved in one process, with the
    logits' largest difference. (fp32 keeps the convolution: there cuDNN has TF32 by default and the GEMM not.)"""
    from scaling import _blocks

    model = _create("cmt_ti" if smoke else "cmt_s", device)
    dtype = "bf16"
    figures: list[dict] = []
    for batch in (1, 8) if smoke else (1, 256):
        x = _images(batch, device)
        row: dict = {"batch": batch, "dtype": dtype}
        logits = {}
        for _ in range(2):  # two rounds, routes alternating: drift shows as a spread between rounds
            for route, gemm in (("conv", False), ("gemm", True)):
                _blocks._GEMM_OFF_CPU = gemm
                ms = 1000 * _time_forward(model, x, dtype, device, 3 if smoke else 10, 2 if smoke else 30)
                row.setdefault(f"{route}_ms", []).append(ms)
                with _inference(device, dtype):
                    logits[route] = model(x).float()
        _blocks._GEMM_OFF_CPU = True
        row["max_abs_diff"] = (logits["conv"] - logits["gemm"]).abs().max().item()
        row["speedup"] = min(row["conv_ms"]) / min(row["gemm_ms"])
        figures.append(row)
        save(figures)
        print(f"route batch {batch} {dtype}: conv {min(row['conv_ms']):.2f} ms, gemm {min(row['gemm_ms']):.2f} ms "
              f"({row['speedup']:.2f}x), logits differ by {row['max_abs_diff']:.2e}", flush=True)
    return figures


def host_cpu_section(out: Path, smoke: bool, minutes: float) -> dict:
    """The device machine's own CPU (an Intel Xeon, family 6 model 207 when seen: Emerald Rapids, with AMX) as
    the CPU-inference issue's Intel kind: the jobs of `_host_cpu.host_jobs`, side by side, each pinned to two
    physical cores with two threads, as on the 2-vCPU machines, their output written beside the JSON. All stop
    after ``minutes``; output so far is kept."""
    from _host_cpu import host_jobs, run_side_by_side

    figures: dict = {"cpu": cpu_name(), "kind": cpu_kind()}
    figures.update(run_side_by_side(host_jobs(smoke), out, minutes, pin=not smoke))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_out")
    parser.add_argument("--root", help="the generated JPEG folder (default: in the temp dir)")
    parser.add_argument("--smoke", action="store_true", help="a few images on the CPU: checks the script")
    parser.add_argument("--sections", default="route,inference,train,search")
    parser.add_argument("--compile-minutes", type=float, default=4.0,
                        help="start no torch.compile row after this many minutes from the start (default 4)")
    parser.add_argument("--host-minutes", type=float, default=4.0,
                        help="host-cpu section: minutes for its scripts, run side by side (default 4)")
    parser.add_argument("--resume", type=Path, help="an earlier run's gpu_check.json: its inference rows are kept "
                                                    "and only the missing ones measured")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", args.out)) if not args.smoke else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.smoke else "cuda"
    report: dict = {"device": _device_name(device), "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"),
                    "torch": torch.__version__}

    def save(section: str):
        def write(rows) -> None:
            report[section] = rows
            (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        return write

    deadline = time.monotonic() + 60 * args.compile_minutes
    sections = args.sections.split(",")
    if "host-cpu" in sections:
        save("host_cpu")(host_cpu_section(out, args.smoke, args.host_minutes))
    if "route" in sections:
        route_section(device, args.smoke, save("route"))
    if "inference" in sections:
        done = json.loads(args.resume.read_text()).get("inference", []) if args.resume else []
        save("inference")(inference_section(device, args.smoke, deadline, save("inference"), done))
    if {"train", "search"} & set(sections):
        root = make_folder(Path(args.root or Path(tempfile.gettempdir()) / "cmt_scale_bench_folder"),
                           *((400, 100) if args.smoke else (16_000, 4_000)))
        if "train" in sections:
            save("train")(train_section(root, device, args.smoke))
        if "search" in sections:  # its trial folders stay in the temp dir: only the JSON comes back
            save("search")(search_section(root, Path(tempfile.mkdtemp()), device, args.smoke))
    print(f"written: {out / 'gpu_check.json'}")


if __name__ == "__main__":
    sys.exit(main())
