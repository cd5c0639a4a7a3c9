"""Image folders: held in memory (decoded in parallel, cached on disk) or streamed from disk through timm's
pipeline; both train alike; unreadable files, empty folders and mismatched class folders are handled."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import cmt_scale.proxy._data as data_module
from cmt_scale.proxy import DEFAULT_PROTOCOL, ProxyData, ProxyProtocol, StreamedFolder, load_dataset, train_and_evaluate
from scaling import CMTConfig

SMALL_CMT = CMTConfig(img_size=32, stem_channels=8, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1),
                      num_heads=(1, 2, 2, 4), mlp_ratios=(2,) * 4, sr_ratios=(8, 4, 2, 1), fc_dim=64)
CLASSES = ("ant", "bee", "cow")


def _write_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> None:
    """JPEGs and PNGs of several sizes, in colour: each class a different mean colour, so it is learnable."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = rng.integers(18, 40, size=2)
                base = np.zeros(3)
                base[label] = 160
                pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                suffix = ".png" if i % 3 == 0 else ".jpg"
                Image.fromarray(pixels).save(root / split / name / f"{i}{suffix}")


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("CMT_SCALE_CACHE", str(tmp_path / "cache"))
    data_module._CACHE.clear()
    _write_folder(tmp_path / "images", {"train": 40, "val": 10})
    yield tmp_path / "images"
    data_module._CACHE.clear()


def _protocol(folder: Path, **changes) -> ProxyProtocol:
    base = ProxyProtocol(dataset=f"imagefolder:{folder}", resolution=32, val_size=30, epochs=1, batch_size=16,
                         threads=1, workers=1, eval_test=True, lr=3e-3)
    return base.replace(**changes)


def test_a_folder_over_the_memory_budget_streams_and_one_under_it_is_held(folder: Path) -> None:
    decoded = (120 + 30) * 3 * 16 * 16  # images x RGB x 16 x 16 bytes, by hand
    held = load_dataset(f"imagefolder:{folder}", load_size=16, memory_gb=decoded / 2**30)
    assert isinstance(held, ProxyData) and tuple(held.train_images.shape) == (120, 3, 16, 16)
    streamed = load_dataset(f"imagefolder:{folder}", load_size=16, memory_gb=(decoded - 1) / 2**30)
    assert isinstance(streamed, StreamedFolder) and len(streamed.train_labels) == 120
    assert streamed.num_classes == held.num_classes == 3
    assert torch.equal(streamed.train_labels, held.train_labels)
    # the same per-channel statistics on both paths (same sample), and they are the images' own
    assert np.allclose(streamed.mean, held.mean) and np.allclose(streamed.std, held.std)
    pixels = held.train_images.double() / 255
    assert np.allclose(held.mean, pixels.mean((0, 2, 3)).numpy(), atol=1e-6)


@pytest.mark.parametrize("augment", ["none", "crop-flip"])
def test_streamed_and_in_memory_train_to_the_same_result(folder: Path, augment: str) -> None:
    """Same protocol and seed: the same images in the same order with the same augmentation draws, whichever
    path holds them, so the accuracies are equal (not merely within seed noise)."""
    results = [train_and_evaluate(SMALL_CMT, _protocol(folder, augment=augment, data_memory_gb=budget),
                                  progress=False) for budget in (None, 0)]
    assert all(r.state == "complete" for r in results), [r.error for r in results]
    assert results[0].top1 == pytest.approx(results[1].top1, abs=1e-9)
    assert results[0].test_top1 == pytest.approx(results[1].test_top1, abs=1e-9)
    assert results[0].test_top1 > 100 / 3 + 15  # and it learned: well above chance on 3 colour classes


def test_one_set_of_loader_workers_serves_training_and_evaluation(folder: Path) -> None:
    """A streamed folder's batches come from one loader: the evaluation passes run on the training pass's
    persistent workers (no second set forked from the trainer), and each pass yields its split's images,
    the training epoch in the trainer generator's order and the evaluation splits in order."""
    psutil = pytest.importorskip("psutil")
    from cmt_scale.proxy._batches import make_source

    protocol = _protocol(folder, data_memory_gb=0, workers=2, batch_size=16)
    data = load_dataset(f"imagefolder:{folder}", load_size=32, memory_gb=0)
    assert isinstance(data, StreamedFolder)
    train_idx, val_idx = torch.arange(100), torch.arange(100, 120)
    source = make_source(data, protocol, train_idx, val_idx, 3, torch.device("cpu"))
    me = psutil.Process()
    try:
        workers_seen, labels = [], {}
        for phase, batches in (("train", source.train_batches(torch.Generator().manual_seed(5))),
                               ("val", source.eval_batches("val")), ("test", source.eval_batches("test")),
                               ("train again", source.train_batches(torch.Generator().manual_seed(5)))):
            got = [(x.shape, y) for x, y in batches]  # the whole pass
            workers_seen.append({child.pid for child in me.children()})
            labels[phase] = torch.cat([y for _, y in got])
            assert all(shape[1:] == (3, 32, 32) for shape, _ in got)
        assert len(workers_seen[0]) == 2 and all(seen == workers_seen[0] for seen in workers_seen), workers_seen
        order = torch.randperm(100, generator=torch.Generator().manual_seed(5))
        assert torch.equal(labels["train"], data.train_labels[train_idx][order])
        assert torch.equal(labels["train again"], labels["train"])
        assert torch.equal(labels["val"], data.train_labels[val_idx])
        assert torch.equal(labels["test"], data.test_labels)
        assert source.steps_per_epoch() == 7  # 100 images in batches of 16
    finally:
        source.close()


def test_parallel_decode_equals_serial_and_the_cache_serves_the_second_load(folder: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    import cmt_scale.proxy._folder as folder_module

    serial = load_dataset(f"imagefolder:{folder}", load_size=16, workers=0)
    cached = list((tmp_path / "cache" / "data").glob("*-16px-v*"))
    assert len(cached) == 1 and (cached[0] / "train.npy").is_file()
    data_module._CACHE.clear()
    with monkeypatch.context() as patch:
        patch.setattr(folder_module, "_decode_into", lambda *a, **k: pytest.fail("decoded although cached"))
        again = load_dataset(f"imagefolder:{folder}", load_size=16, workers=2)
    assert torch.equal(serial.train_images, again.train_images) and torch.equal(serial.test_images, again.test_images)
    shutil_free = tmp_path / "cache2"
    monkeypatch.setenv("CMT_SCALE_CACHE", str(shutil_free))
    data_module._CACHE.clear()
    parallel = load_dataset(f"imagefolder:{folder}", load_size=16, workers=2)  # decoded afresh, two workers
    assert torch.equal(serial.train_images, parallel.train_images)
    # a changed file changes the folder's key: the stale copy is not served
    first = sorted((folder / "train" / "ant").glob("*.jpg"))[0]
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(first)
    os.utime(first, ns=(1, 1))
    data_module._CACHE.clear()
    load_dataset(f"imagefolder:{folder}", load_size=16)
    assert len(list((shutil_free / "data").glob("*-16px-v*"))) == 2


def test_worker_processes_decode_both_splits_in_one_pass_exactly_as_one_process(tmp_path: Path, monkeypatch,
                                                                                caplog) -> None:
    """Above 256 images the folder goes to worker processes, whose shares cross from train into val; the
    arrays, the skipped files (one unreadable in each split) and their warnings equal one process's."""
    from cmt_scale.proxy._folder import decode_folder, index_folder

    _write_folder(tmp_path / "big", {"train": 70, "val": 30})  # 210 + 90 images
    broken = [tmp_path / "big" / "train" / "cow" / "broken.jpg", tmp_path / "big" / "val" / "ant" / "broken.png"]
    for path in broken:
        path.write_bytes(b"not an image")
    index = index_folder(tmp_path / "big")
    caplog.set_level(logging.WARNING, logger="cmt_scale.data")
    logger = logging.getLogger("cmt_scale.data")
    logger.addHandler(caplog.handler)
    try:
        results = {}
        for workers in (0, 2, 3):
            monkeypatch.setenv("CMT_SCALE_CACHE", str(tmp_path / f"cache{workers}"))
            caplog.clear()
            results[workers] = decode_folder(index, 12, workers=workers)
            assert sorted(results[workers]["skipped"]) == sorted(map(str, broken))
            assert all(any(str(path) in r.getMessage() for r in caplog.records) for path in broken)
    finally:
        logger.removeHandler(caplog.handler)
    serial = results[0]
    assert serial["train_images"].shape == (210, 3, 12, 12) and serial["test_images"].shape == (90, 3, 12, 12)
    for workers in (2, 3):
        for key in ("train_images", "test_images", "train_labels", "test_labels"):
            assert np.array_equal(serial[key], results[workers][key]), (workers, key)
        assert serial["mean"] == results[workers]["mean"] and serial["std"] == results[workers]["std"]


def test_workers_shares_are_equal_contiguous_and_may_cross_a_split() -> None:
    from cmt_scale.proxy._folder import _worker_segments

    # rows 0-9 of job 0 then 0-4 of job 1, laid end to end (15 rows) and cut at 5 and 10 for three workers
    assert _worker_segments([10, 5], 3) == [[(0, 0, 5)], [(0, 5, 10)], [(1, 0, 5)]]
    assert _worker_segments([10, 5], 2) == [[(0, 0, 7)], [(0, 7, 10), (1, 0, 5)]]
    assert _worker_segments([0, 4], 2) == [[(1, 0, 2)], [(1, 2, 4)]]  # an empty job takes no segment
    assert _worker_segments([1], 3) == [[(0, 0, 1)]]  # more workers than rows: no empty worker


def test_channel_statistics_equal_a_float64_reference() -> None:
    from cmt_scale.proxy._folder import channel_stats

    images = np.random.default_rng(3).integers(0, 256, (150, 3, 9, 7), dtype=np.uint8)
    images[:, 2] //= 4  # channels with different spreads
    mean, std = channel_stats(images)
    reference = torch.as_tensor(images).double().div(255).transpose(0, 1).reshape(3, -1)
    assert np.allclose(mean, reference.mean(1).numpy(), rtol=0, atol=1e-12)
    assert np.allclose(std, reference.std(1).numpy(), rtol=0, atol=1e-12)
    assert channel_stats(torch.as_tensor(images)) == (mean, std)  # tensors too


def test_an_unreadable_image_is_skipped_named_and_counted_on_both_paths(folder: Path, caplog) -> None:
    bad = folder / "train" / "bee" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    caplog.set_level(logging.WARNING, logger="cmt_scale.data")
    logger = logging.getLogger("cmt_scale.data")  # the CLI's handler may stop propagation to the root
    logger.addHandler(caplog.handler)
    try:
        _check_unreadable_is_skipped(folder, bad, caplog)
    finally:
        logger.removeHandler(caplog.handler)


def _check_unreadable_is_skipped(folder: Path, bad: Path, caplog) -> None:
    held = load_dataset(f"imagefolder:{folder}", load_size=16)
    assert held.skipped == (str(bad),) and len(held.train_labels) == 120
    assert any(str(bad) in record.getMessage() for record in caplog.records)
    caplog.clear()
    result = train_and_evaluate(SMALL_CMT, _protocol(folder, data_memory_gb=0), progress=False)
    assert result.state == "complete" and result.skipped_images == 1
    assert any(str(bad) in record.getMessage() for record in caplog.records)
    # and a search's rows (and its table) carry the count
    from cmt_scale.search import read_rows, run_search

    run_dir = folder.parent / "search"
    run_search("cmt_compound", _protocol(folder, data_memory_gb=0), run_dir, trials=1, promotion=None)
    assert [r["skipped_images"] for r in read_rows(run_dir)] == [1]
    assert pd.read_csv(run_dir / "results.csv")["skipped_images"].tolist() == [1]


def test_a_folder_without_images_or_with_mismatched_classes_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "ant").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"imagefolder:.*empty holds no images; allowed: a folder of class folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    _write_folder(tmp_path / "two", {"train": 2, "val": 2})
    (tmp_path / "two" / "val" / "cow").rename(tmp_path / "two" / "val" / "cat")
    with pytest.raises(ValueError, match=r"class folders of train and val differ \(only in train: \['cow'\]; only in "
                                         r"val: \['cat'\]\)"):
        load_dataset(f"imagefolder:{tmp_path / 'two'}")
    # an empty class folder, in a single folder or in val only, would be a class nothing teaches or tests
    _write_folder(tmp_path / "one", {".": 2})
    (tmp_path / "one" / "yak").mkdir()
    with pytest.raises(ValueError, match=r"one: class folder\(s\) 'yak' hold no images; allowed: class folders each"):
        load_dataset(f"imagefolder:{tmp_path / 'one'}")
    _write_folder(tmp_path / "three", {"train": 2, "val": 2})
    for image in (tmp_path / "three" / "val" / "cow").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"val: class folder\(s\) 'cow' hold no images"):
        load_dataset(f"imagefolder:{tmp_path / 'three'}")


def test_the_cli_reports_a_bad_folder_in_one_line(tmp_path: Path, capsys) -> None:
    from cmt_scale.cli import main

    (tmp_path / "empty" / "ant").mkdir(parents=True)
    assert main(["search", "--space", "cmt_compound", "--dataset", f"imagefolder:{tmp_path / 'empty'}",
                 "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no images" in err and len(err.splitlines()) == 1 and not (tmp_path / "never").exists()


def test_timm_augmentations_and_mixup_train_and_enter_the_hash(folder: Path) -> None:
    protocol = _protocol(folder, augment="rand-m9-mstd0.5", mixup=0.4, cutmix=0.4, data_memory_gb=0)
    result = train_and_evaluate(SMALL_CMT, protocol, progress=False)
    assert result.state == "complete", result.error
    assert result.top1[0] > 100 / 3  # mixed soft targets still learn the colours
    assert protocol.protocol_hash != protocol.replace(mixup=0.0).protocol_hash
    assert protocol.protocol_hash != protocol.replace(augment="rrc-flip").protocol_hash
    assert protocol.protocol_hash == protocol.replace(workers=3, data_memory_gb=None).protocol_hash  # speed only


def test_protocols_recorded_before_mixup_existed_keep_their_hash() -> None:
    recorded = json.loads(Path("docs/recorded/baselines/run.json").read_text())
    protocol = ProxyProtocol.from_dict({k: v for k, v in recorded["protocol"].items()})
    assert protocol.protocol_hash == recorded["protocol_hash"]
    assert DEFAULT_PROTOCOL.replace(recipes=protocol.recipes).protocol_hash == recorded["protocol_hash"]


@pytest.mark.parametrize("change, message", [
    (dict(augment="sharpen"), "augment='sharpen' is not allowed; allowed: none, crop, crop-flip, rrc-flip or a timm"),
    # timm would skip an option without a value and train plain RandAugment / AugMix: a typo, refused
    (dict(augment="rand-foo"), "augment='rand-foo' is not allowed"),
    (dict(augment="augmix-m5-wide"), "augment='augmix-m5-wide' is not allowed"),
    (dict(mixup=-1.0), "mixup=-1.0 is not allowed"), (dict(workers=-1), "workers=-1 is not allowed"),
    (dict(data_memory_gb=-2), "data_memory_gb=-2 is not allowed"),
])
def test_new_protocol_fields_are_checked(change, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        DEFAULT_PROTOCOL.replace(**change)


@pytest.mark.parametrize(("capability", "machine", "warned"), [("AVX2", "x86_64", True), ("AVX512", "x86_64", False),
                                                             ("DEFAULT", "aarch64", False)])
def test_bf16_on_a_cpu_that_emulates_it_warns_once(monkeypatch, caplog, capability, machine, warned) -> None:
    """On x86 below AVX-512, bf16 autocast is emulated and slower than fp32: one warning, then training goes on."""
    import platform

    from cmt_scale.proxy import _train, resolve_device

    _train._warn_if_bf16_is_emulated.cache_clear()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(_train.log, "propagate", False)  # one handler sees it, whatever a CLI test configured
    _train.log.addHandler(caplog.handler)
    try:
        for _ in range(2):
            assert resolve_device(DEFAULT_PROTOCOL.replace(precision="bf16", device="cpu")).type == "cpu"
    finally:
        _train.log.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if "bf16 by emulation" in r.getMessage()]
    assert len(lines) == (1 if warned else 0)
    if warned:
        assert f"torch reports {capability}" in lines[0] and "precision='fp32'" in lines[0]
    _train._warn_if_bf16_is_emulated.cache_clear()


def test_fp16_is_refused_on_a_cpu() -> None:
    from cmt_scale.proxy import resolve_device

    with pytest.raises(ValueError, match="precision='fp16' is not allowed on cpu"):
        resolve_device(DEFAULT_PROTOCOL.replace(precision="fp16", device="cpu"))


@pytest.mark.slow  # starts a local Ray (5-15 s)
def test_ray_refuses_gpus_per_trial_on_a_cluster_without_gpus(tmp_path: Path, monkeypatch) -> None:
    """Tune would wait forever for a GPU no node has: the request fails at once with one line."""
    from cmt_scale.search import RayBackend, run_search

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match=r"gpus_per_trial=0.5 is not allowed on this Ray cluster: it has 0 GPUs"):
        run_search("cmt_compound", ProxyProtocol(dataset="digits", train_size=100, val_size=100, threads=1),
                   tmp_path / "run", trials=1, backend=RayBackend(num_cpus=1, gpus_per_trial=0.5), promotion=None)
    assert not list((tmp_path / "run").glob("trials/*.json"))
    with pytest.raises(ValueError, match=r"gpus_per_trial=1.5 is not allowed; allowed: 0, a fraction"):
        RayBackend(gpus_per_trial=1.5)
