"""Official checkpoints: the layout mapping reproduces the official logits; unsafe pickles are refused."""

from __future__ import annotations

import argparse
import pathlib

import pytest
import torch
from official_reference import official_forward, random_official_state_dict

from scaling import PRESETS, build_cmt, load_official_checkpoint, read_checkpoint

timm = pytest.importorskip("timm")


def _release_file(tmp_path: pathlib.Path, cfg, name: str = "cmt_tiny.pth") -> tuple[pathlib.Path, dict]:
    """A checkpoint shaped like the official training script's: model weights plus its argparse args."""
    sd = random_official_state_dict(cfg, seed=3)
    path = tmp_path / name
    args = argparse.Namespace(model="cmt_ti", input_size=cfg.img_size, lr=8e-4, drop_path=0.1)
    torch.save({"model": sd, "epoch": 799, "args": args}, path)
    return path, sd


def test_load_official_checkpoint_gives_official_logits(tmp_path) -> None:
    cfg = PRESETS["cmt_ti"]
    path, sd = _release_file(tmp_path, cfg)
    model = build_cmt(cfg).eval()
    load_official_checkpoint(model, path)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official_forward(sd, cfg, x), rtol=1e-4, atol=1e-4)


def test_timm_pretrained_from_file_gives_official_logits(tmp_path) -> None:
    cfg = PRESETS["cmt_ti"]
    path, sd = _release_file(tmp_path, cfg)
    model = timm.create_model("cmt_ti", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official_forward(sd, cfg, x), rtol=1e-4, atol=1e-4)


def test_pretrained_into_another_resolution_and_class_count(tmp_path) -> None:
    path, _ = _release_file(tmp_path, PRESETS["cmt_ti"])
    model = timm.create_model("cmt_ti", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              img_size=224, num_classes=10).eval()
    assert model.stages[0].relative_pos.shape == (1, 56 * 56, 7 * 7)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)


class _Payload:
    """Unpickling this would touch a file: the loader must refuse before any such code runs."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_checkpoint_that_needs_code_to_load_is_refused(tmp_path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.pth.: unpickling it would need \S+, "
                                         r"which is not allow-listed"):
        read_checkpoint(path)
    with pytest.raises(Exception):
        timm.create_model("cmt_ti", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()


def test_missing_checkpoint_file_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")


def test_our_own_state_dict_loads_back_unchanged(tmp_path) -> None:
    model = build_cmt(PRESETS["cmt_ti"]).eval()
    path = tmp_path / "ours.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    other = build_cmt(PRESETS["cmt_ti"]).eval()
    load_official_checkpoint(other, path)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x))
