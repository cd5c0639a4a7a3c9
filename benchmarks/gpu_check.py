"""The one script to run on a GPU machine: the streaming data path and the training path under CUDA.

Prepared for a session that is lent a GPU (about 15 minutes of device time in all, so it is sized to
finish in under 8): run it from the repository root, it writes ``gpu_check.json`` under ``--out``.

1. A streaming image-folder search: a few trials of CMT-Ti-sized members at 224 px over a generated
   JPEG folder (`bench_data.make_folder`), with a memory budget below the folder's decoded size, so every
   trial reads from disk through the DataLoader workers; bf16 autocast.
2. Training img/s of CMT-Ti and DeiT-Ti at 224 px in bf16 (channels-last, batch 128), streaming and in
   memory, with the share of each step the GPU waits for data.
3. Inference img/s of CMT-S and DeiT-S at 224 px: fp32 and bf16 autocast, channels-last, eager and
   ``torch.compile``, batch 1 and 256 (issue: CMT on GPUs), and the op count that limits CMT there.

``--smoke`` runs every section on a handful of images on the CPU, to check the script itself.

Usage: python benchmarks/gpu_check.py [--out gpu_out] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_name  # noqa: E402
from bench_data import make_folder  # noqa: E402


def _device_name(device: str) -> str:
    import torch

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


def inference_section(device: str, smoke: bool) -> list[dict]:
    import timm
    import torch

    import scaling  # noqa: F401  (registers cmt_* with timm)

    figures = []
    for name in ("cmt_s", "deit_small_patch16_224"):
        model = timm.create_model(name).eval().to(device).to(memory_format=torch.channels_last)
        for compiled in (False,) if smoke else (False, True):  # compiling on a CPU takes minutes
            runner = torch.compile(model) if compiled else model
            for batch in (1, 8) if smoke else (1, 256):
                for dtype in ("fp32", "bf16"):
                    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
                    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                        for _ in range(2 if smoke else 10):
                            runner(x)
                        if device == "cuda":
                            torch.cuda.synchronize()
                        rounds = 2 if smoke else 30
                        start = time.perf_counter()
                        for _ in range(rounds):
                            runner(x)
                        if device == "cuda":
                            torch.cuda.synchronize()
                        seconds = (time.perf_counter() - start) / rounds
                    figures.append({"model": name, "compiled": compiled, "batch": batch, "dtype": dtype,
                                    "img_s": batch / seconds, "ms": 1000 * seconds})
                    print(f"infer {name} {'compiled' if compiled else 'eager'} batch {batch} {dtype}: "
                          f"{batch / seconds:.0f} img/s ({1000 * seconds:.2f} ms)")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_out")
    parser.add_argument("--root", help="the generated JPEG folder (default: in the temp dir)")
    parser.add_argument("--smoke", action="store_true", help="a few images on the CPU: checks the script")
    parser.add_argument("--sections", default="search,train,inference")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", args.out)) if not args.smoke else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.smoke else "cuda"
    root = make_folder(Path(args.root or Path(tempfile.gettempdir()) / "cmt_scale_bench_folder"),
                       *((400, 100) if args.smoke else (16_000, 4_000)))
    report: dict = {"device": _device_name(device), "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d")}
    sections = args.sections.split(",")
    if "search" in sections:
        report["search"] = search_section(root, out, device, args.smoke)
    if "train" in sections:
        report["train"] = train_section(root, device, args.smoke)
    if "inference" in sections:
        report["inference"] = inference_section(device, args.smoke)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"written: {out / 'gpu_check.json'}")


if __name__ == "__main__":
    sys.exit(main())
