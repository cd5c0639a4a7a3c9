"""The 1x1 projections' weights cast once under autocast inference (`scaling._autocast_weights`): the outputs
are autocast's own to the bit, the cast happens once per parameter state, and any change to the parameters,
the dtype or the mode is followed."""

from __future__ import annotations

import copy
import dataclasses
import io
import random

import pytest
import torch
import torch.nn as nn
from conftest import random_config

import scaling._autocast_weights as autocast_weights_module
import scaling._blocks as blocks
from scaling import build_cmt
from scaling._autocast_weights import kept_cast


@pytest.fixture(autouse=True)
def _shape_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sides route each projection by the fixed rule: the timed route keys on the weight dtype and could
    pick the other, equally valid, kernel for the cast copy."""
    monkeypatch.setenv("CMT_SCALE_POINTWISE_ROUTE", "rule")


def _random_eval_cmt(seed: int) -> tuple[nn.Module, torch.Tensor]:
    cfg = dataclasses.replace(random_config(random.Random(seed)), num_classes=7)
    model = build_cmt(cfg)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2)
    torch.manual_seed(seed)
    return model.eval(), torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)


def _projections(model: nn.Module) -> list[nn.Module]:
    """The modules whose weights are cast once: the 1x1 projections, the patch-merging convs, the classifier."""
    merging = [m.proj for m in model.modules() if isinstance(m, blocks.PatchMerging)]
    return [m for m in model.modules() if isinstance(m, blocks.PointwiseLinear)] + merging + [model.head]


def _autocasts_own(model: nn.Module, x: torch.Tensor, dtype: torch.dtype,
                   monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """The expectation: autocast casting every fp32 weight on every call, as it does with nothing kept."""
    with monkeypatch.context() as patch:
        patch.setattr(autocast_weights_module, "_ENABLED", False)
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
            return model(x)


def _under_autocast(model: nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                    grad_mode=torch.inference_mode) -> torch.Tensor:
    with grad_mode(), torch.autocast("cpu", dtype=dtype):
        return model(x)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_once_weights_give_autocasts_outputs_to_the_bit(seed: int, dtype: torch.dtype,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``inference_mode`` and under ``no_grad``, on the first call (which casts) and the second (which
    reuses): the same logits as autocast's per-call casts, to the bit."""
    model, x = _random_eval_cmt(seed)
    expected = _autocasts_own(model, x, dtype, monkeypatch)
    assert expected.dtype == dtype
    for grad_mode in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        assert torch.equal(_under_autocast(model, x, dtype, grad_mode), expected)


def test_each_projection_casts_once_and_keeps_its_copy_across_forwards() -> None:
    """After one autocast inference forward every projection holds bf16 copies of its weight and bias equal to
    their casts; a second forward uses the same tensors (no new cast)."""
    model, x = _random_eval_cmt(3)
    _under_autocast(model, x)
    projections = _projections(model)
    kept = [kept_cast(m) for m in projections]
    for module, (weight, bias) in zip(projections, kept, strict=True):
        assert weight.dtype == torch.bfloat16
        assert torch.equal(weight, module.weight.detach().to(torch.bfloat16))
        assert module.bias is None or torch.equal(bias, module.bias.detach().to(torch.bfloat16))
    _under_autocast(model, x)
    assert all(kept_cast(m)[0] is weight for m, (weight, _) in zip(projections, kept, strict=True))


def test_nothing_is_kept_outside_autocast_inference() -> None:
    """fp32 inference, autocast with grad on (training-style, eval mode) and autocast in training mode keep
    nothing: autocast's own cache serves there, and the weights may change."""
    model, x = _random_eval_cmt(4)
    with torch.inference_mode():
        model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().sum().backward()
        model.train()(x)
    assert not any(kept_cast(m) for m in _projections(model))


def test_parameters_made_under_inference_mode_are_cast_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference tensors track no version, so an in-place change could not be seen: nothing is kept for them,
    and the outputs are still autocast's own."""
    model, x = _random_eval_cmt(8)
    with torch.inference_mode():
        made_there = copy.deepcopy(model)
    assert made_there.head.weight.is_inference()
    assert torch.equal(_under_autocast(made_there, x), _autocasts_own(model, x, torch.bfloat16, monkeypatch))
    assert not any(kept_cast(m) for m in _projections(made_there))


def test_changed_weights_are_cast_again() -> None:
    """An in-place change (an optimizer step), ``load_state_dict`` and a replaced parameter each make the next
    forward follow the new weights: its logits equal those of a fresh model holding them."""
    model, x = _random_eval_cmt(5)
    other, _ = _random_eval_cmt(5)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * torch.randn_like(p))
    _under_autocast(model, x)
    model.load_state_dict(other.state_dict())
    assert torch.equal(_under_autocast(model, x), _under_autocast(copy.deepcopy(other), x))

    with torch.no_grad():  # an in-place step
        for p in model.parameters():
            p.mul_(0.9)
    fresh = copy.deepcopy(model)
    assert torch.equal(_under_autocast(model, x), _under_autocast(fresh, x))

    projection = _projections(model)[0]
    projection.weight = nn.Parameter(projection.weight.detach() * 2)
    fresh = copy.deepcopy(model)
    assert torch.equal(_under_autocast(model, x), _under_autocast(fresh, x))


def test_a_new_autocast_dtype_replaces_the_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _random_eval_cmt(6)
    _under_autocast(model, x, torch.bfloat16)
    assert torch.equal(_under_autocast(model, x, torch.float16), _autocasts_own(model, x, torch.float16, monkeypatch))
    assert all(kept_cast(m)[0].dtype == torch.float16 for m in _projections(model))


def test_training_mode_copies_and_pickles_drop_the_cast_copies() -> None:
    """The copy's memory goes back when the model trains, and copies and saved modules do not carry it; the
    parameters and state dict are untouched by it."""
    model, x = _random_eval_cmt(7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _under_autocast(model, x)
    assert all(kept_cast(m) for m in _projections(model))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for copied in (copy.deepcopy(model), loaded):
        assert not any(kept_cast(m) for m in _projections(copied))
        assert torch.equal(_under_autocast(copied, x), _under_autocast(model, x))
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    model.train()
    assert not any(kept_cast(m) for m in _projections(model))
