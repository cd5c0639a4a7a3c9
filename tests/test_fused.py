"""The fused CPU kernels against PyTorch's own modules: values, gradients, running statistics, both dtypes.

The expectation is always the plain path, i.e. ``nn.GELU`` + ``nn.BatchNorm2d`` and ``nn.Conv2d`` run by
PyTorch on the same tensors; odd channel counts are there because they are why the kernels exist.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import warnings
from collections import Counter

import pytest
import torch
import torch.nn as nn
from conftest import random_config
from official_reference import official_forward, random_official_state_dict

from scaling import PRESETS, build_cmt, checkpoint_filter_fn
from scaling import _fused as fused
from scaling import _kernel_build as kernel_build

# Switched off on purpose (CMT_SCALE_FUSED_KERNELS=0) these tests have nothing to compare; otherwise a
# machine that cannot build the kernels fails here rather than passing on the plain path alone.
pytestmark = pytest.mark.skipif(not kernel_build._enabled(), reason="fused CPU kernels switched off by the environment")


@pytest.fixture(autouse=True)
def _kernels_on():
    fused.set_fused_kernels(True)
    fused.fused_kernels_available()  # builds and loads the ops, for the tests that call them directly
    yield
    fused.set_fused_kernels(True)


def test_the_kernels_build_on_this_machine() -> None:
    assert fused.fused_kernels_available(), "the fused CPU kernels did not build (see the warning above)"


def _run(fn, enabled: bool, x: torch.Tensor, grad: torch.Tensor):
    """fn(x) and its gradient with the kernels on or off; returns output and input gradient."""
    fused.set_fused_kernels(enabled)
    leaf = x.detach().clone().requires_grad_()
    out = fn(leaf)
    out.backward(grad)
    return out.detach(), leaf.grad


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Relative to the largest magnitude: a sum over thousands of rows is compared at its own scale."""
    scale = expected.abs().max().clamp_min(1e-12)
    assert ((actual.float() - expected.float()).abs().max() / scale).item() < rtol


def _close_parameter_grads(module: nn.Module, reference: nn.Module, rtol: float) -> None:
    """Every parameter gradient of ``module`` against the same parameter's in ``reference``."""
    for (name, param), ref_param in zip(module.named_parameters(), reference.parameters()):
        assert param.grad is not None and ref_param.grad is not None, name
        _close(param.grad, ref_param.grad, rtol)


@pytest.mark.parametrize("channels,size", [(165, 16), (46, 8), (1324, 2), (7, 5), (16, 3)])
@pytest.mark.parametrize("act", ["gelu", "none"])
def test_act_batch_norm_matches_the_modules(channels: int, size: int, act: str) -> None:
    torch.manual_seed(channels)
    bn = nn.BatchNorm2d(channels)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.normal_(bn.bias)
    ref_bn, ref_act = copy.deepcopy(bn), nn.GELU() if act == "gelu" else None
    x = torch.randn(4, size, size, channels) * 2 + 3  # a mean far from zero tests the variance's accuracy
    grad = torch.randn_like(x)
    out, dx = _run(lambda t: fused.act_batch_norm(t, ref_act, bn), True, x, grad)
    ref, ref_dx = _run(lambda t: fused.act_batch_norm(t, ref_act, ref_bn), False, x, grad)
    _close(out, ref, 1e-5)
    _close(dx, ref_dx, 1e-5)
    _close_parameter_grads(bn, ref_bn, 1e-5)
    _close(bn.running_mean, ref_bn.running_mean, 1e-5)
    _close(bn.running_var, ref_bn.running_var, 1e-5)
    assert bn.num_batches_tracked.item() == ref_bn.num_batches_tracked.item() == 1


def test_cumulative_running_average_when_momentum_is_none() -> None:
    bn = nn.BatchNorm2d(9, momentum=None)
    ref_bn = copy.deepcopy(bn)
    for seed in range(3):
        x = torch.randn(2, 4, 4, 9, generator=torch.Generator().manual_seed(seed))
        _run(lambda t: fused.act_batch_norm(t, None, bn), True, x, torch.ones_like(x))
        _run(lambda t: fused.act_batch_norm(t, None, ref_bn), False, x, torch.ones_like(x))
    _close(bn.running_mean, ref_bn.running_mean, 1e-6)
    _close(bn.running_var, ref_bn.running_var, 1e-6)


@pytest.mark.parametrize("channels,size", [(165, 16), (662, 4), (1324, 2), (5, 1), (3, 7)])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_depthwise_conv_matches_conv2d(channels: int, size: int, residual: bool, bias: bool) -> None:
    torch.manual_seed(size)
    conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=bias)
    ref_conv = copy.deepcopy(conv)
    x = torch.randn(3, size, size + 1, channels)  # a non-square map catches swapped axes
    grad = torch.randn_like(x)
    out, dx = _run(lambda t: fused.depthwise_conv3x3(t, conv, residual), True, x, grad)
    ref, ref_dx = _run(lambda t: fused.depthwise_conv3x3(t, ref_conv, residual), False, x, grad)
    _close(out, ref, 1e-5)
    _close(dx, ref_dx, 1e-5)
    _close_parameter_grads(conv, ref_conv, 1e-5)


@pytest.mark.parametrize("channels,k,height,width", [(46, 8, 16, 16), (92, 4, 8, 8), (184, 2, 4, 4), (5, 3, 7, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_patch_conv_matches_a_strided_depthwise_conv2d(channels: int, k: int, height: int, width: int,
                                                       bias: bool) -> None:
    """The K/V reduction: k x k patches, stride k; (5, 3, 7, 8) leaves a row and two columns outside."""
    torch.manual_seed(k)
    conv = nn.Conv2d(channels, channels, k, k, groups=channels, bias=bias)
    ref_conv = copy.deepcopy(conv)
    x = torch.randn(3, height, width, channels)
    grad = torch.randn(3, height // k, width // k, channels)
    out, dx = _run(lambda t: fused.depthwise_patch_conv(t, conv), True, x, grad)
    ref, ref_dx = _run(lambda t: ref_conv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), False, x, grad)
    _close(out, ref, 1e-5)
    _close(dx, ref_dx, 1e-6)
    _close_parameter_grads(conv, ref_conv, 1e-5)


@pytest.mark.parametrize("in_chs,out_chs,k,height,width", [(46, 92, 2, 16, 16), (184, 368, 2, 4, 4), (5, 7, 3, 7, 8)])
def test_patch_linear_matches_a_strided_conv2d(in_chs: int, out_chs: int, k: int, height: int, width: int) -> None:
    """Patch merging as space-to-depth + GEMM: the conv's values and gradients, leftover rows ignored."""
    torch.manual_seed(k)
    conv = nn.Conv2d(in_chs, out_chs, k, k)
    ref_conv = copy.deepcopy(conv)
    x = torch.randn(3, in_chs, height, width).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, height // k, width // k, out_chs)
    out, dx = _run(lambda t: fused.patch_linear(t, conv), True, x, grad)
    ref, ref_dx = _run(lambda t: ref_conv(t).permute(0, 2, 3, 1), False, x, grad)
    _close(out, ref, 1e-5)
    _close(dx, ref_dx, 1e-5)
    _close_parameter_grads(conv, ref_conv, 1e-5)


@pytest.mark.parametrize("rows,channels", [(16384, 46), (300, 184), (7, 1324), (5, 3), (64, 16)])
def test_layer_norm_matches_the_module(rows: int, channels: int) -> None:
    torch.manual_seed(rows)
    ln = nn.LayerNorm(channels, eps=1e-6)
    nn.init.uniform_(ln.weight, 0.5, 1.5)
    nn.init.normal_(ln.bias)
    ref_ln = copy.deepcopy(ln)
    x = torch.randn(1, rows, 1, channels) * 3 + 5
    grad = torch.randn_like(x)
    out, dx = _run(lambda t: fused.layer_norm(t, ln), True, x, grad)
    ref, ref_dx = _run(lambda t: fused.layer_norm(t, ref_ln), False, x, grad)
    _close(out, ref, 1e-5)
    _close(dx, ref_dx, 1e-4)
    _close_parameter_grads(ln, ref_ln, 1e-5)


def _attention_in_float64(q, k, v, bias, heads):
    """softmax(q k^T / sqrt(d) + bias) v per head, written out in float64: the independent expectation."""
    batch, n, dim = q.shape
    d = dim // heads
    split = lambda t: t.double().reshape(batch, -1, heads, d).transpose(1, 2)  # noqa: E731
    logits = split(q) @ split(k).transpose(-2, -1) * d**-0.5 + bias.double()
    return (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(batch, n, dim)


@pytest.mark.parametrize("batch,queries,keys,heads,head_dim", [
    (2, 256, 4, 1, 46), (3, 16, 4, 4, 46), (2, 9, 7, 2, 17), (1, 5, 1, 3, 5), (2, 3, 40, 2, 16),
])
def test_lightweight_attention_matches_softmax_attention(batch, queries, keys, heads, head_dim) -> None:
    torch.manual_seed(queries + keys)
    dim = heads * head_dim
    q, k, v = (torch.randn(batch, n, dim, requires_grad=True) for n in (queries, keys, keys))
    bias = torch.randn(heads, queries, keys, requires_grad=True)
    grad = torch.randn(batch, queries, dim)
    out = fused._LightweightAttention.apply(q, k, v, bias, heads, head_dim**-0.5)
    grads = torch.autograd.grad(out, (q, k, v, bias), grad)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    ref = _attention_in_float64(*leaves, heads)
    ref_grads = torch.autograd.grad(ref, leaves, grad.double())
    _close(out, ref, 1e-5)
    for got, expected in zip(grads, ref_grads):
        _close(got, expected, 1e-5)


# Shapes for the inference kernel: CMT's own (49 keys, d = 64), more keys and channels than one register
# block holds (150 keys, d = 130), query counts that leave a partial tile of rows, one key, odd head widths.
@pytest.mark.parametrize("batch,queries,keys,heads,head_dim", [
    (2, 256, 4, 1, 46), (3, 16, 4, 4, 46), (2, 9, 7, 2, 17), (1, 5, 1, 3, 5), (2, 3, 40, 2, 16),
    (2, 49, 49, 8, 64), (1, 197, 49, 1, 64), (2, 10, 150, 2, 64), (1, 7, 70, 3, 130),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eval_attention_kernel_matches_softmax_attention(batch, queries, keys, heads, head_dim, dtype) -> None:
    """The forward-only inference kernel against softmax attention written out in float64: fp32 within 1e-5
    of the largest output, bf16 inputs and output within bf16 rounding."""
    torch.manual_seed(queries + keys + head_dim)
    dim = heads * head_dim
    q, k, v = (torch.randn(batch, n, dim) for n in (queries, keys, keys))
    bias = torch.randn(heads, queries, keys)
    out = torch.ops.cmt_scale.attention_inference(q.to(dtype), k.to(dtype), v.to(dtype), bias, heads,
                                                  head_dim**-0.5)
    assert out.dtype == dtype and out.shape == q.shape
    expected = _attention_in_float64(*(t.to(dtype) for t in (q, k, v)), bias, heads)
    _close(out, expected, 1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("batch,queries,keys,heads,head_dim", [(2, 49, 49, 8, 64), (3, 16, 4, 4, 46), (1, 5, 1, 3, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_eval_attention_kernel_reads_keys_and_values_as_halves_of_one_projection(batch, queries, keys, heads,
                                                                                     head_dim, dtype) -> None:
    """Keys and values passed as the two halves of a merged (B, M, 2C) projection (views with rows 2C apart,
    as `LightweightAttention.merge_key_value` makes them) give the contiguous operands' output to the bit;
    rows that are not contiguous in memory are refused by name."""
    torch.manual_seed(batch + queries + keys)
    dim = heads * head_dim
    q = torch.randn(batch, queries, dim).to(dtype)
    kv = torch.randn(batch, keys, 2 * dim).to(dtype)
    k, v = kv.chunk(2, dim=-1)
    assert k.stride(1) == 2 * dim  # rows 2C apart (a view that torch may still call contiguous when M = 1)
    bias = torch.randn(heads, queries, keys)
    views = torch.ops.cmt_scale.attention_inference(q, k, v, bias, heads, head_dim**-0.5)
    copies = torch.ops.cmt_scale.attention_inference(q, k.contiguous(), v.contiguous(), bias, heads, head_dim**-0.5)
    assert torch.equal(views, copies)
    _close(views, _attention_in_float64(q, k, v, bias, heads), 1e-5 if dtype == torch.float32 else 1e-2)
    if keys > 1:
        strided = torch.randn(batch, dim, keys).to(dtype).transpose(1, 2)  # channels `keys` apart
        with pytest.raises(RuntimeError, match="attention_inference: expected a 3-d tensor of contiguous rows"):
            torch.ops.cmt_scale.attention_inference(q, strided, v, bias, heads, head_dim**-0.5)


@pytest.mark.parametrize("sr_ratio", [4, 1])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_merging_the_key_and_value_projections_keeps_the_attention_output(sr_ratio: int, qkv_bias: bool) -> None:
    """`merge_key_value` stacks K's and V's weights into one projection: the same parameter count, ``kv`` in
    place of ``k`` and ``v``, and the unmerged module's output within float rounding, on the inference
    kernel and on the plain path (which splits the merged output the same way)."""
    from scaling._blocks import LightweightAttention

    torch.manual_seed(sr_ratio)
    attn = LightweightAttention(46, 2, sr_ratio, qkv_bias=qkv_bias).eval()
    if qkv_bias:
        nn.init.normal_(attn.k.bias)
        nn.init.normal_(attn.v.bias)
    merged = copy.deepcopy(attn)
    merged.merge_key_value()
    keys = 64 // sr_ratio**2
    bias, x = torch.randn(2, 64, keys), torch.randn(3, 8, 8, 46)
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in attn.parameters())
    names = set(merged.state_dict())
    assert {"kv.weight"} <= names and not {n for n in names if n.startswith(("k.", "v."))}
    assert ("kv.bias" in names) == qkv_bias
    for out, ref in zip(_both_paths(lambda t: merged(t, bias), x), _both_paths(lambda t: attn(t, bias), x)):
        _close(out, ref, 1e-5)


def test_the_eval_attention_module_equals_its_plain_path_and_keeps_it_with_gradients() -> None:
    """`LightweightAttention` in eval under no_grad takes the inference kernel and gives the explicit path's
    output; with gradients on it keeps the differentiable explicit path (no kernel op runs)."""
    from torch.profiler import ProfilerActivity, profile

    from scaling._blocks import LightweightAttention

    torch.manual_seed(0)
    attn = LightweightAttention(46, 2, 4, qkv_bias=True).eval()
    bias = torch.randn(2, 64, 4)
    x = torch.randn(3, 8, 8, 46)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out, ref = _both_paths(lambda t: attn(t, bias), x)
    assert sum(event.name == "cmt_scale::attention_inference" for event in prof.events()) == 1
    _close(out, ref, 1e-5)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        attn(x.requires_grad_(), bias).sum().backward()
    assert not [event.name for event in prof.events() if event.name.startswith("cmt_scale::attention")]


def test_the_attention_module_gives_the_same_step_with_the_kernels_on_and_off() -> None:
    from scaling._blocks import LightweightAttention

    torch.manual_seed(0)
    attn = LightweightAttention(46, 2, 4, qkv_bias=True).train()
    ref_attn = copy.deepcopy(attn)
    bias = torch.randn(2, 64, 4)
    x = torch.randn(3, 8, 8, 46)
    grad = torch.randn_like(x)
    out, dx = _run(lambda t: attn(t, bias), True, x, grad)
    ref, ref_dx = _run(lambda t: ref_attn(t, bias), False, x, grad)
    _close(out, ref, 1e-5)
    _close(dx, ref_dx, 1e-5)
    # Compared at the scale of the largest gradient: the key bias shifts every logit of a query alike, so its
    # true gradient is zero and both paths give rounding noise there.
    scale = max(p.grad.abs().max().item() for p in ref_attn.parameters())
    for p, ref_p in zip(attn.parameters(), ref_attn.parameters()):
        assert (p.grad - ref_p.grad).abs().max().item() < 1e-5 * scale


def test_bf16_kernels_stay_within_bf16_rounding_of_fp32() -> None:
    torch.manual_seed(0)
    bn, conv = nn.BatchNorm2d(165), nn.Conv2d(165, 165, 3, 1, 1, groups=165)
    x = torch.randn(4, 8, 8, 165)
    grad = torch.randn_like(x)

    ln = nn.LayerNorm(165)

    def block(t: torch.Tensor) -> torch.Tensor:
        return fused.layer_norm(fused.act_batch_norm(fused.depthwise_conv3x3(t, conv, True), nn.GELU(), bn), ln)

    out, dx = _run(block, True, x, grad)
    out16, dx16 = _run(block, True, x.bfloat16(), grad.bfloat16())
    assert out16.dtype == dx16.dtype == torch.bfloat16
    _close(out16, out, 3e-2)
    _close(dx16, dx, 5e-2)

    reduce = nn.Conv2d(165, 165, 4, 4, groups=165)
    out, dx = _run(lambda t: fused.depthwise_patch_conv(t, reduce), True, x, grad[:, ::4, ::4])
    out16, dx16 = _run(lambda t: fused.depthwise_patch_conv(t, reduce), True, x.bfloat16(),
                       grad[:, ::4, ::4].bfloat16())
    assert out16.dtype == dx16.dtype == torch.bfloat16
    _close(out16, out, 3e-2)
    _close(dx16, dx, 3e-2)

    rows = x.reshape(4, 64, 165)
    bias = torch.randn(5, 64, 64)
    out, dx = _run(lambda t: fused._LightweightAttention.apply(t, t, t, bias, 5, 33**-0.5), True, rows,
                   grad.view_as(rows))
    out16, dx16 = _run(lambda t: fused._LightweightAttention.apply(t, t, t, bias, 5, 33**-0.5), True, rows.bfloat16(),
                       grad.view_as(rows).bfloat16())
    assert out16.dtype == dx16.dtype == torch.bfloat16
    _close(out16, out, 3e-2)
    _close(dx16, dx, 5e-2)


def test_the_plain_path_is_taken_in_eval_mode_and_when_switched_off() -> None:
    bn = nn.BatchNorm2d(6).eval()
    x = torch.randn(2, 3, 3, 6)
    torch.testing.assert_close(fused.act_batch_norm(x, None, bn), bn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    fused.set_fused_kernels(False)
    assert not fused.fused_kernels_available()


def test_a_training_step_of_a_cmt_matches_the_official_reference_with_the_kernels() -> None:
    """Logits in training mode (batch statistics in every BN) equal the official layout's, and every
    parameter's gradient is as close to a float64 run of the plain path as the fp32 plain path's is.

    Against float64, not against the fp32 plain path: on random weights a deep stack of batch-3 BatchNorms
    amplifies rounding (which of two correct fp32 paths lands closer to the truth depends on the input)."""
    rng = random.Random(3)
    for seed in range(3):
        cfg = random_config(rng)
        sd = random_official_state_dict(cfg, seed)
        x = torch.randn(3, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(seed))
        grads = {}
        for key, enabled, dtype in (("kernels", True, torch.float32), ("plain", False, torch.float32),
                                    ("float64", False, torch.float64)):
            fused.set_fused_kernels(enabled)
            model = build_cmt(cfg).train()
            model.load_state_dict(checkpoint_filter_fn(sd, model))
            model = model.to(dtype)
            logits = model(x.to(dtype))
            if dtype == torch.float32:
                torch.testing.assert_close(logits, official_forward(sd, cfg, x, training=True), rtol=1e-4, atol=1e-4)
            logits.square().sum().backward()
            grads[key] = {name: p.grad.double() for name, p in model.named_parameters() if p.grad is not None}
        assert grads["kernels"].keys() == grads["plain"].keys() == grads["float64"].keys()
        scale = max(grad.abs().max().item() for grad in grads["float64"].values())
        for name, truth in grads["float64"].items():
            own = truth.abs().max().item()
            if own < 1e-6 * scale:  # biases in front of a BatchNorm: a true gradient of zero, rounding noise
                continue
            # Each parameter at its own scale: a wrong gradient is off by about its size, rounding (amplified
            # by the random weights) by 1e-7 to 1e-4 of it on either path, and up to 5e-4 for one LayerNorm
            # weight with AVX-512 (16-lane sums; the plain path was at 1e-4 there). Every kernel alone is within
            # rounding of float64 at these shapes (the tests above), so the floor sits between the two regimes.
            error = {key: (grads[key][name] - truth).abs().max().item() / own for key in ("kernels", "plain")}
            assert error["kernels"] <= max(4 * error["plain"], 1e-3), (name, error)


def _backward_nodes(loss: torch.Tensor) -> Counter:
    """How many autograd nodes of each kind the graph behind ``loss`` has."""
    seen, stack, kinds = set(), [loss.grad_fn], Counter()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kind = type(node).__name__
        if kind == "ConvolutionBackward0" and tuple(node._saved_weight.shape[-2:]) != (1, 1):
            kind = "spatial ConvolutionBackward0"  # 1x1 convs are projections, not what the kernels replace
        kinds[kind] += 1
        stack.extend(next_node for next_node, _ in node.next_functions)
    return kinds


def test_a_cmt_training_step_takes_every_fused_path() -> None:
    """The wiring, counted from the config: one attention kernel per block, two 3x3 depthwise kernels per
    block plus one K/V reduction per block with sr > 1, no spatial oneDNN convolution left but the stem's."""
    cfg = PRESETS["cmt_ti"].replace(img_size=32, num_classes=10)
    blocks = sum(cfg.depths)
    reduced = sum(depth for depth, ratio in zip(cfg.depths, cfg.sr_ratios) if ratio > 1)
    model = build_cmt(cfg).train()
    x = torch.randn(2, 3, 32, 32)
    kinds = _backward_nodes(model(x).sum())
    assert kinds["_LightweightAttentionBackward"] == blocks
    assert kinds["_DepthwiseConvBackward"] == 2 * blocks + reduced
    assert kinds["_LayerNormBackward"] == 2 * blocks + cfg.num_stages
    assert kinds["spatial ConvolutionBackward0"] == 3
    fused.set_fused_kernels(False)
    plain = _backward_nodes(model(x).sum())
    assert not any(name.startswith("_") for name in plain)
    # the stem, the depthwise convs, the K/V reductions and the merges are oneDNN convolutions again
    assert plain["spatial ConvolutionBackward0"] == 3 + 2 * blocks + reduced + cfg.num_stages


def test_a_bf16_autocast_step_with_the_kernels_is_as_close_to_fp32_as_the_plain_bf16_step() -> None:
    """Under CPU autocast the kernels see bf16 activations and an fp32 position bias. Two bf16 paths drift
    apart over 16 blocks of rounding, so each is measured against the fp32 step: the kernels' bf16 must be
    no further from it than PyTorch's own bf16 autocast step."""
    cfg = PRESETS["cmt_ti"].replace(img_size=32, num_classes=10)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    results = {}
    for key, enabled, bf16 in (("kernels", True, True), ("plain", False, True), ("fp32", False, False)):
        fused.set_fused_kernels(enabled)
        torch.manual_seed(0)
        model = build_cmt(cfg, drop_path_rate=0.0).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        logits.float().square().sum().backward()
        results[key] = logits.float(), {n: p.grad.float() for n, p in model.named_parameters()}
    ref_logits, ref_grads = results["fp32"]
    grad_scale = max(grad.abs().max().item() for grad in ref_grads.values())

    def distance(key: str) -> tuple[float, float]:
        logits, grads = results[key]
        logit_error = ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item()
        grad_error = max((grads[name] - grad).abs().max().item() for name, grad in ref_grads.items()) / grad_scale
        return logit_error, grad_error

    (kernel_logits, kernel_grads), (plain_logits, plain_grads) = distance("kernels"), distance("plain")
    assert kernel_logits <= max(2 * plain_logits, 2e-2), (kernel_logits, plain_logits)
    assert kernel_grads <= max(2 * plain_grads, 2e-2), (kernel_grads, plain_grads)


def test_kernels_are_deterministic_for_a_fixed_thread_count() -> None:
    bn = nn.BatchNorm2d(37)
    x = torch.randn(8, 9, 9, 37)
    runs = [_run(lambda t: fused.act_batch_norm(t, nn.GELU(), bn), True, x, torch.ones_like(x)) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])

    # The attention's bias gradient and the reduction's tap gradients are sums over threads' shares.
    q = torch.randn(8, 81, 37)
    bias = torch.randn(1, 81, 9, requires_grad=True)
    reduce = nn.Conv2d(37, 37, 3, 3, groups=37)
    grads = []
    for _ in range(2):
        kv = fused.depthwise_patch_conv(x, reduce).reshape(8, 9, 37)
        out = fused._LightweightAttention.apply(q, kv, kv, bias, 1, 37**-0.5)
        grads.append(torch.autograd.grad(out.square().sum(), (bias, reduce.weight)))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_a_failed_build_warns_once_and_training_takes_the_plain_path(tmp_path, monkeypatch) -> None:
    broken = tmp_path / "broken_kernels.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(kernel_build, "_SOURCE", broken)
    monkeypatch.setitem(kernel_build._state, "loaded", None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    with pytest.warns(RuntimeWarning, match="fused CPU kernels unavailable"):
        assert not fused.fused_kernels_available()
    bn = nn.BatchNorm2d(5)
    x = torch.randn(2, 3, 3, 5)
    expected = copy.deepcopy(bn)(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(fused.act_batch_norm(x, None, bn), expected)  # no second warning, no error


def test_a_build_the_compiler_refuses_falls_back_to_the_next_candidate(monkeypatch) -> None:
    """A build whose flags the compiler lacks (an old gcc without -mavx512bf16, say) is not the end: the next
    candidate (the plain AVX-512 build) loads, with no warning."""
    tried: list[str] = []

    def build(tag: str, cflags: list[str]) -> None:  # the library is loaded already: a second would clash
        tried.append(tag)
        if tag == "unsupported":
            raise RuntimeError("g++: error: unrecognized command-line option '-mno-such-flag'")

    candidates = [("unsupported", ["-mno-such-flag"]), *kernel_build._capability_flags()[-1:]]
    monkeypatch.setattr(kernel_build, "_capability_flags", lambda: candidates)
    monkeypatch.setattr(kernel_build, "_build_and_load", build)
    monkeypatch.setitem(kernel_build._state, "loaded", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fused.fused_kernels_available()
    assert tried == ["unsupported", candidates[1][0]]


def test_bf16_outputs_round_to_nearest_even_as_aten_does() -> None:
    """The kernels' bf16 stores (one instruction where the CPU has AVX512-BF16, ATen's portable form
    elsewhere) round as ATen's fp32 -> bf16 conversion: x + shift rounded once to fp32 either way, compared bit
    for bit, exact ties (half a bf16 step, which must go to the even neighbour) and the masked tail included."""
    torch.manual_seed(0)
    x = (torch.randn(64, 40) * 10).to(torch.bfloat16)  # 40 channels: two full vectors and a masked tail
    shift = torch.randn(40)
    shift[:16] = torch.ldexp(torch.ones(16), torch.frexp(x[0, :16].float())[1] - 9)  # half a step of x[0]: a tie
    shift[32:] = torch.ldexp(torch.ones(8), torch.frexp(x[0, 32:].float())[1] - 9)  # ties in the tail too
    out = torch.ops.cmt_scale.act_affine(x, torch.ones(40), shift, 0)
    expected = (x.float() + shift).to(torch.bfloat16)
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))


def test_a_double_backward_through_the_kernels_raises_instead_of_being_wrong() -> None:
    bn = nn.BatchNorm2d(4)
    x = torch.randn(2, 3, 3, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(fused.act_batch_norm(x, nn.GELU(), bn).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


# ------------------------------------------------------------------------------ inference (eval, no_grad)
def _eval_bn(channels: int, seed: int) -> nn.BatchNorm2d:
    """An eval-mode BatchNorm with running statistics and an affine far from the identity."""
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(channels).eval()
    bn.running_mean.normal_(0, 2)
    bn.running_var.uniform_(0.2, 3)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.normal_(bn.bias)
    return bn


def _both_paths(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(x) under no_grad with the kernels on, then off (the plain modules)."""
    with torch.no_grad():
        fused.set_fused_kernels(True)
        out = fn(x)
        fused.set_fused_kernels(False)
        ref = fn(x)
    fused.set_fused_kernels(True)
    return out, ref


@pytest.mark.parametrize("channels,size", [(165, 16), (46, 8), (1324, 2), (7, 5), (256, 56)])
@pytest.mark.parametrize("act", ["gelu", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eval_act_batch_norm_matches_the_modules(channels: int, size: int, act: str, dtype: torch.dtype) -> None:
    bn = _eval_bn(channels, channels).to(dtype)
    gelu = nn.GELU() if act == "gelu" else None
    x = (torch.randn(2, size, size, channels) * 3).to(dtype)
    out, ref = _both_paths(lambda t: fused.act_batch_norm(t, gelu, bn), x)
    assert out.dtype == ref.dtype == dtype and out.shape == ref.shape
    _close(out, ref, 1e-6 if dtype == torch.float32 else 1e-2)


def test_the_inference_gelu_is_exact_gelu_to_fp32_rounding_over_its_whole_range() -> None:
    """The inference kernels' GELU (a rational erf, no exponential) against GELU in float64: within 1.2e-6
    everywhere on [-30, 30] (ATen's fp32 GELU: 4e-7), and the tails, zeros, infinities and NaN exactly as
    ATen's fp32 GELU gives them, so that the error of the fit never grows with |v|. GELU(+inf) is +inf, as
    float64 and ATen's AVX2 and scalar fp32 paths give it; ATen's AVX-512 vector path returns NaN there."""
    def kernel_gelu(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fused.act_batch_norm(x.view(1, 1, -1, 1).clone(), nn.GELU(), nn.Identity().eval()).flatten()

    dense = torch.linspace(-30, 30, 2_000_001)
    error = (kernel_gelu(dense).double() - nn.functional.gelu(dense.double())).abs()
    assert error.max().item() < 1.2e-6
    assert error[dense.abs() < 1].max().item() < 2e-7  # where most activations are
    special = torch.tensor([0.0, -0.0, 5.6, -5.6, 100.0, -100.0, 1e30, -1e30, float("inf"), -float("inf"),
                            float("nan"), 1e-30, -1e-30])
    expected = torch.where(special == float("inf"), special, nn.functional.gelu(special))
    torch.testing.assert_close(kernel_gelu(special), expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("channels,size", [(165, 16), (662, 4), (1324, 2), (5, 1), (3, 7)])
@pytest.mark.parametrize("folded", [False, True])
def test_eval_depthwise_conv_act_bn_matches_the_modules(channels: int, size: int, folded: bool) -> None:
    """The IRFFN's middle, conv + residual + GELU + BN in one pass; ``folded``: the BN an Identity."""
    torch.manual_seed(size)
    conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels).eval()
    bn = nn.Identity() if folded else _eval_bn(channels, size)
    x = torch.randn(3, size, size + 1, channels)  # non-square: swapped axes show
    out, ref = _both_paths(lambda t: fused.depthwise_conv3x3_act_bn(t, conv, nn.GELU(), bn), x)
    _close(out, ref, 1e-6)


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eval_act_batch_norm_in_place_matches_the_modules_and_writes_into_its_input(folded: bool,
                                                                                   dtype: torch.dtype) -> None:
    """``overwrite=True`` (a conv's fresh output): the same values as the modules, written into ``x`` itself;
    an NHWC view that is not contiguous (an NCHW map permuted) gets a new tensor and is left as it was."""
    bn = nn.Identity().eval() if folded else _eval_bn(165, 3).to(dtype)  # eval: as fuse_for_inference leaves it
    x = (torch.randn(2, 7, 9, 165) * 3).to(dtype)
    ref = _both_paths(lambda t: fused.act_batch_norm(t.clone(), nn.GELU(), bn), x)[1]
    with torch.no_grad():
        target = x.clone()
        out = fused.act_batch_norm(target, nn.GELU(), bn, overwrite=True)
        assert out.data_ptr() == target.data_ptr()
        _close(target, ref, 1e-6 if dtype == torch.float32 else 1e-2)
        strided = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # NCHW storage, NHWC view
        before = strided.clone()
        out = fused.act_batch_norm(strided, nn.GELU(), bn, overwrite=True)
        assert torch.equal(strided, before) and out.data_ptr() != strided.data_ptr()
        _close(out, ref, 1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("affine", [True, False])
def test_bn_eval_affine_matches_torch_batch_norm(affine: bool) -> None:
    """The kernel op's per-channel scale and shift reproduce ``F.batch_norm`` in eval on any input."""
    bn = nn.BatchNorm2d(37, affine=affine, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.2, 3.0)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    bn.eval()
    x = torch.randn(4, 37, 3, 5)
    assert fused.fused_kernels_available()  # builds and loads them when this test runs alone
    scale, shift = fused._eval_affine(bn)
    torch.testing.assert_close(x * scale[:, None, None] + shift[:, None, None], bn(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels,size", [(64, 56), (662, 4), (5, 1), (3, 7)])
@pytest.mark.parametrize("residual", [True, False])
def test_eval_depthwise_conv_matches_the_module(channels: int, size: int, residual: bool) -> None:
    """The LPU in eval under no_grad: the kernel's conv (+ input) equals oneDNN's conv (+ input)."""
    torch.manual_seed(channels)
    conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels).eval()
    x = torch.randn(2, size, size + 2, channels)
    out, ref = _both_paths(lambda t: fused.depthwise_conv3x3(t, conv, residual=residual), x)
    _close(out, ref, 1e-6)


@pytest.mark.parametrize("channels,k,height,width", [(64, 8, 56, 56), (46, 4, 8, 8), (5, 3, 7, 8), (256, 2, 14, 14)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eval_patch_conv_matches_the_module(channels: int, k: int, height: int, width: int,
                                            dtype: torch.dtype) -> None:
    """The K/V reduction in CPU inference (the forward kernel, in the input's dtype) against the module's
    strided depthwise conv in fp32: within fp32 rounding, or bf16 rounding for bf16 input and output."""
    torch.manual_seed(channels + k)
    conv = nn.Conv2d(channels, channels, k, k, groups=channels).eval()
    x = torch.randn(2, height, width, channels)
    with torch.no_grad():
        out = fused.depthwise_patch_conv(x.to(dtype), conv)
        ref = conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert out is not None and out.dtype == dtype and out.shape == ref.shape
    _close(out, ref, 1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("rows,channels", [(3136, 64), (7, 1324), (5, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eval_layer_norm_matches_the_module_in_the_inputs_dtype(rows: int, channels: int,
                                                                dtype: torch.dtype) -> None:
    """LayerNorm in CPU inference against ``nn.LayerNorm`` in fp32: within fp32 rounding (ATen's own path), or
    bf16 rounding of the output for bf16 input (the forward kernel); under bf16 autocast it stays bf16."""
    torch.manual_seed(rows + channels)
    ln = nn.LayerNorm(channels, eps=1e-6).eval()
    nn.init.normal_(ln.weight)
    nn.init.normal_(ln.bias)
    x = torch.randn(2, rows, 1, channels) * 3 + 1
    with torch.no_grad():
        out = fused.layer_norm(x.to(dtype), ln)
        ref = ln(x.to(dtype).float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = fused.layer_norm(x.bfloat16(), ln)
    assert out.dtype == dtype and under_autocast.dtype == torch.bfloat16
    _close(out, ref, 1e-5 if dtype == torch.float32 else 1e-2)


def test_eval_batch_norm_without_running_statistics_keeps_batch_statistics() -> None:
    """``track_running_stats=False`` normalises by the batch even in eval: no running affine to apply."""
    bn = nn.BatchNorm2d(9, track_running_stats=False).eval()
    x = torch.randn(2, 4, 4, 9) * 2 + 1
    out, ref = _both_paths(lambda t: fused.act_batch_norm(t, nn.GELU(), bn), x)
    torch.testing.assert_close(out, ref)
    conv = nn.Conv2d(9, 9, 3, 1, 1, groups=9).eval()
    out, ref = _both_paths(lambda t: fused.depthwise_conv3x3_act_bn(t, conv, nn.GELU(), bn), x)
    torch.testing.assert_close(out, ref)


def _inference_kernel_calls(model: nn.Module, x: torch.Tensor, grad: bool = False) -> Counter:
    """How many times each of our inference ops ran in one eval forward (the profiler's op events)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.set_grad_enabled(grad), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    return Counter(event.name for event in prof.events() if event.name.startswith("cmt_scale::"))


def test_a_timm_created_cmt_takes_the_inference_kernels_in_eval() -> None:
    """Structural, from the config: ``timm.create_model(...).eval()`` under no_grad runs two fused depthwise
    passes per block (the LPU's conv + residual, the IRFFN's conv + residual + GELU + BN) and one activation +
    BN pass per stem layer, per IRFFN expansion, per IRFFN projection and per K/V reduction, each written
    into the conv's fresh output; after `fuse_for_inference` the BNs that fold are gone from those passes.
    With gradients on, the plain path (no kernel)."""
    import timm

    from scaling import fuse_for_inference
    from scaling._blocks import LightweightAttention

    model = timm.create_model("cmt_ti", img_size=64, num_classes=10).eval()
    cfg = model.cfg
    blocks = sum(cfg.depths)
    reduced = sum(depth for depth, ratio in zip(cfg.depths, cfg.sr_ratios) if ratio > 1)
    x = torch.randn(1, 3, 64, 64)
    calls = _inference_kernel_calls(model, x)
    assert calls["cmt_scale::dwconv3x3_forward"] == 2 * blocks  # the LPU and the IRFFN's middle
    assert calls["cmt_scale::attention_inference"] == blocks  # bias, softmax and both matmuls per block
    assert calls["cmt_scale::patch_conv_forward"] == reduced  # the K/V reduction conv
    assert "cmt_scale::layer_norm_forward" not in calls  # fp32: ATen's LayerNorm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_calls = _inference_kernel_calls(model, x)
    assert bf16_calls["cmt_scale::layer_norm_forward"] == 2 * blocks + len(cfg.depths)  # blocks' and merges'
    assert bf16_calls["cmt_scale::attention_inference"] == blocks
    # every activation + BN pass follows a conv or linear, so it writes into that fresh map (in place)
    assert calls["cmt_scale::act_affine_"] == len(model.stem) + 2 * blocks + reduced
    assert "cmt_scale::act_affine" not in calls
    fast = fuse_for_inference(model)
    attentions = [m for m in fast.modules() if isinstance(m, LightweightAttention)]
    assert len(attentions) == blocks and all(a.kv is not None and not hasattr(a, "k") for a in attentions)
    assert all(a.kv is None for a in model.modules() if isinstance(a, LightweightAttention))  # source untouched
    calls = _inference_kernel_calls(fast, x)
    assert calls["cmt_scale::dwconv3x3_forward"] == 2 * blocks
    assert calls["cmt_scale::attention_inference"] == blocks
    assert calls["cmt_scale::patch_conv_forward"] == reduced
    assert calls["cmt_scale::act_affine_"] == len(model.stem) + blocks  # projections' and K/V BNs folded
    assert not _inference_kernel_calls(model, x, grad=True)  # eval with gradients: differentiable plain path
    training = _inference_kernel_calls(model.train(), x)  # training mode: the training kernels instead
    assert training["cmt_scale::act_bn_forward"] > 0
    assert not {"cmt_scale::act_affine", "cmt_scale::act_affine_", "cmt_scale::attention_inference"} & set(training)


def _random_eval_cmt(seed: int, **changes):
    """A random config's CMT (with ``changes`` to the config) in eval mode with non-trivial BN running
    statistics (fresh ones are the identity)."""
    cfg = dataclasses.replace(random_config(random.Random(seed)), **changes)
    model = build_cmt(cfg)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2)
    return cfg, model.eval()


@pytest.mark.parametrize("seed", range(3))
def test_eval_outputs_with_the_inference_kernels_equal_the_plain_path(seed: int) -> None:
    """A random CMT with non-trivial BN statistics, as built and after `fuse_for_inference`: logits within
    1e-4 of the plain modules' (the official code's eval path is compared in test_model)."""
    from scaling import fuse_for_inference

    cfg, model = _random_eval_cmt(200 + seed)
    x = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    for candidate in (model, fuse_for_inference(model)):
        out, ref = _both_paths(candidate, x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# a stage one channel wide: its depthwise convs have groups == 1 too, and must stay fp32 for the kernels
_WIDTH_ONE_STAGE = {"img_size": 32, "embed_dims": (1, 8), "depths": (1, 1), "num_heads": (1, 1),
                    "mlp_ratios": (2.0, 2.0), "sr_ratios": (2, 1), "stem_channels": 4, "fc_dim": 16}


@pytest.mark.parametrize("changes", [{}, _WIDTH_ONE_STAGE], ids=["random", "width-one stage"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_mixed_precision_copy_gives_autocasts_outputs_to_the_bit(dtype: torch.dtype, changes: dict,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`fuse_for_inference(amp_dtype=...)` casts the convolutions' and linears' weights once: the expectation is
    autocast itself, casting the fp32 fused copy's weights on every call. The same operands give the same
    logits (classifier included), to the bit, with or without the caller's own autocast region, and the
    copy's dtype wins over a caller's region of the other dtype; ``forward_features`` + ``forward_head`` give
    the same. Depthwise taps and norms stay fp32 (as autocast leaves them for the kernels) and the source
    model is not touched. The shape rule routes both copies, since the timed route keys on the weight dtype
    and could pick another, equally valid, kernel."""
    from scaling import fuse_for_inference

    monkeypatch.setenv("CMT_SCALE_POINTWISE_ROUTE", "rule")
    cfg, model = _random_eval_cmt(11, num_classes=5, **changes)
    x = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    mixed = fuse_for_inference(model, amp_dtype=dtype)
    other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
    with torch.inference_mode():
        own_region = mixed(x)
        by_parts = mixed.forward_head(mixed.forward_features(x))
        with torch.autocast("cpu", dtype=other):
            inside_other = mixed(x)
        with torch.autocast("cpu", dtype=dtype):
            expected = fuse_for_inference(model)(x)
            nested = mixed(x)
    assert own_region.shape == (2, 5) and own_region.dtype == expected.dtype == dtype
    for got in (own_region, by_parts, inside_other, nested):
        assert torch.equal(got, expected)
    for name, module in mixed.named_modules():
        depthwise = isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels
        matmul = isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and not depthwise)
        if matmul or depthwise:
            assert module.weight.dtype == (dtype if matmul else torch.float32), name
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.dtype == torch.float32 for n, p in mixed.named_parameters() if "norm" in n)


@pytest.mark.parametrize("bad", [torch.float64, torch.float32, "bf16"])
def test_an_unsupported_amp_dtype_is_named_in_the_error(bad) -> None:
    from scaling import fuse_for_inference

    _, model = _random_eval_cmt(12)
    with pytest.raises(ValueError, match=f"amp_dtype={bad!r} is not allowed; allowed: torch.bfloat16, "
                                         f"torch.float16 or None".replace(".", r"\.")):
        fuse_for_inference(model, amp_dtype=bad)


@pytest.mark.slow
def test_the_compiled_frozen_inference_copy_equals_the_eval_model() -> None:
    """`fuse_for_inference(compile=True)` (torch.compile with freezing: the plain path, traced, weights made
    constants) gives the eval-mode model's logits within 1e-4 in fp32, and agrees with it on the top-1 class
    under bf16 autocast for nearly every input, as does the compiled mixed-precision copy (``amp_dtype``, its
    autocast region traced into the graph). Slow: each compilation takes half a minute."""
    from scaling import fuse_for_inference
    from scaling._autocast_weights import kept_cast
    from scaling._pointwise_route import chosen_routes

    cfg, model = _random_eval_cmt(7)
    x = torch.randn(16, cfg.in_chans, cfg.img_size, cfg.img_size)
    compiled = fuse_for_inference(model, compile=True)
    assert not compiled.training and not model.training
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = compiled(x).float()
        reference = model(x)
        mixed = fuse_for_inference(model, compile=True, amp_dtype=torch.bfloat16)(x)  # its own autocast, traced
    # each new call signature got its eager forward first: the bf16 trace found routes timed under autocast
    assert any(key[6] == torch.bfloat16 for key in chosen_routes())
    # that eager forward keeps no cast weights beside the frozen graph's own
    assert not any(kept_cast(m) for m in compiled.modules())
    assert mixed.dtype == torch.bfloat16
    for candidate in (low, mixed.float()):
        assert (candidate.argmax(-1) == reference.argmax(-1)).float().mean().item() >= 0.8
        _close(candidate, reference, 5e-2)


def test_a_training_mode_batch_norm_in_an_eval_model_keeps_batch_statistics() -> None:
    """BN re-estimation puts only the BNs in training mode under no_grad: they must normalise by the batch
    and update their running statistics, so the eval-only fused IRFFN middle must not be taken."""
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 12, 3, 1, 1, groups=12).eval()
    bn, ref_bn = _eval_bn(12, 1).train(), _eval_bn(12, 1).train()
    x = torch.randn(2, 5, 6, 12) * 2 + 1
    with torch.no_grad():
        fused.set_fused_kernels(True)
        out = fused.depthwise_conv3x3_act_bn(x, conv, nn.GELU(), bn)
        fused.set_fused_kernels(False)
        ref = fused.depthwise_conv3x3_act_bn(x, conv, nn.GELU(), ref_bn)
    _close(out, ref, 1e-5)
    assert bn.num_batches_tracked.item() == ref_bn.num_batches_tracked.item() == 1
    _close(bn.running_var, ref_bn.running_var, 1e-5)


def test_a_forward_mode_tangent_keeps_the_differentiable_path() -> None:
    """``no_grad`` does not switch off forward-mode AD: a dual input must get its tangent through."""
    import torch.autograd.forward_ad as fwAD

    bn = _eval_bn(8, 2)
    x, tangent = torch.randn(2, 4, 4, 8), torch.randn(2, 4, 4, 8)
    with torch.no_grad(), fwAD.dual_level():
        out = fused.act_batch_norm(fwAD.make_dual(x, tangent), nn.GELU(), bn)
        got = fwAD.unpack_dual(out).tangent
    assert got is not None and got.shape == x.shape
    # d/dx of bn(gelu(x)) is the BN scale times gelu'(x): checked against autograd on the plain modules
    leaf = x.clone().requires_grad_()
    expected = torch.autograd.grad(bn(nn.functional.gelu(leaf).permute(0, 3, 1, 2)).permute(0, 2, 3, 1), leaf,
                                   tangent)[0]
    torch.testing.assert_close(got, expected)


def _conv_ops(fn) -> set[str]:
    """The convolution ops (any aten conv) that ``fn()`` ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events() if "conv" in event.name}


@pytest.mark.parametrize("size,inference_takes_gemm", [(7, True), (8, True), (9, False), (14, False)])
def test_pointwise_linear_keeps_the_shape_rule_when_asked(size: int, inference_takes_gemm: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Structural: with ``CMT_SCALE_POINTWISE_ROUTE=rule`` CPU inference runs maps up to 8x8 as ``F.linear``
    (no convolution op) and larger ones as a 1x1 conv; training always keeps its rule (maps above 4x4 stay
    convolutions). Every path equals ``nn.Linear``'s own."""
    from scaling._blocks import PointwiseLinear

    monkeypatch.setenv("CMT_SCALE_POINTWISE_ROUTE", "rule")
    torch.manual_seed(size)
    layer = PointwiseLinear(48, 80)
    reference = nn.Linear(48, 80)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, size, size, 48)
    with torch.no_grad():
        expected = reference(x)
        layer.eval()
        assert bool(_conv_ops(lambda: layer(x))) != inference_takes_gemm
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        layer.train()
        monkeypatch.setenv("CMT_SCALE_POINTWISE_ROUTE", "timed")  # no effect on training
        assert _conv_ops(lambda: layer(x))  # training: the conv above 4x4, whatever the mode of autograd
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,autocast,takes_gemm", [(torch.float32, False, False), (torch.bfloat16, False, True),
                                                    (torch.float16, False, True), (torch.float32, True, True)])
def test_off_the_cpu_half_precision_projections_take_the_gemm(dtype: torch.dtype, autocast: bool, takes_gemm: bool,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Structural, on the ``meta`` device (no GPU needed): off the CPU a 1x1 projection in bf16/fp16, or under
    autocast, is one ``F.linear`` (cuBLAS puts the bias in its epilogue) on a map of any size, where the CPU rule
    would take the convolution; fp32 keeps the convolution (cuDNN's default TF32). Autocast on ``meta`` cannot be
    opened, so the device is reported as having one, open."""
    from scaling._blocks import PointwiseLinear

    if autocast:
        monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: device_type == "meta")
        monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: device_type == "meta")
        monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.bfloat16)
    layer = PointwiseLinear(48, 80).to(device="meta", dtype=dtype).eval()
    x = torch.empty(256, 56, 56, 48, device="meta", dtype=dtype)
    with torch.no_grad():
        assert bool(_conv_ops(lambda: layer(x))) != takes_gemm
        out = layer(x)
    assert out.shape == (256, 56, 56, 80) and out.dtype == dtype
    cpu_layer = PointwiseLinear(48, 80).to(dtype=dtype)
    assert _conv_ops(lambda: cpu_layer(torch.randn(1, 14, 14, 48, dtype=dtype)))  # the CPU keeps its rule


@pytest.fixture()
def fresh_routes(monkeypatch: pytest.MonkeyPatch):
    """The timed routing with no choice made yet in this process."""
    from scaling import _pointwise_route

    monkeypatch.setenv("CMT_SCALE_POINTWISE_ROUTE", "timed")
    monkeypatch.setattr(_pointwise_route, "_chosen", {})
    return _pointwise_route


@pytest.mark.parametrize("rule_takes_gemm", [True, False])
@pytest.mark.parametrize("slow", ["conv", "gemm"])
def test_the_timed_route_is_the_faster_one_and_is_timed_once_per_key(slow: str, rule_takes_gemm: bool,
                                                                      fresh_routes) -> None:
    """A candidate that sleeps 20 ms a call against one that does not: the other wins whatever the rule
    says, each runs once untimed and `_TIMED_ROUNDS` times timed on the first call with a key, and never
    again for that key."""
    import time

    calls = Counter()

    def candidate(name: str):
        def run() -> torch.Tensor:
            calls[name] += 1
            if name == slow:
                time.sleep(0.02)
            return torch.zeros(1)
        return run

    conv, gemm = candidate("conv"), candidate("gemm")
    for _ in range(2):
        assert fresh_routes.gemm_is_faster("key", conv, gemm, rule_takes_gemm) == (slow == "conv")
        assert calls == {"conv": 1 + fresh_routes._TIMED_ROUNDS, "gemm": 1 + fresh_routes._TIMED_ROUNDS}
    assert fresh_routes.chosen_routes() == {"key": "gemm" if slow == "conv" else "conv"}


@pytest.mark.parametrize("rule_takes_gemm", [True, False])
def test_near_equal_routes_keep_the_rule(rule_takes_gemm: bool, fresh_routes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Best times 1% apart (inside the margin, either way round): the rule's route stays, so noise cannot
    send a shape different ways in different processes."""
    for conv_time, gemm_time in ((1.00, 1.01), (1.01, 1.00)):
        monkeypatch.setattr(fresh_routes, "_best_times", lambda _candidates: [conv_time, gemm_time])
        fresh_routes._chosen.clear()
        assert fresh_routes.gemm_is_faster("key", None, None, rule_takes_gemm) == rule_takes_gemm


def test_a_layer_runs_the_route_chosen_for_its_shape(fresh_routes) -> None:
    """Structural: in CPU inference a layer's shape gets one timed choice (dtype, autocast and thread count in
    its key) and the forward then runs that route's op; both routes equal ``nn.Linear``'s output."""
    from scaling._blocks import PointwiseLinear

    torch.manual_seed(0)
    layer = PointwiseLinear(48, 80).eval()
    reference = nn.Linear(48, 80)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 14, 14, 48)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        (key, route), = fresh_routes.chosen_routes().items()
        assert key == fresh_routes.route_key((2, 14, 14, 48), x.stride(), torch.float32, (80, 48), torch.float32,
                                             torch.float32)
        assert torch.get_num_threads() in key
        assert bool(_conv_ops(lambda: layer(x))) == (route == "conv")
        for forced in (True, False):  # whichever the timing picks, the output is nn.Linear's
            fresh_routes._chosen[key] = forced
            assert bool(_conv_ops(lambda: layer(x))) != forced
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
    assert len(fresh_routes.chosen_routes()) == 2  # autocast's dtype is part of the key


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("timed", ["gemm", "conv", None])
def test_a_compiled_layer_takes_its_last_eager_route(timed: str | None, dynamic: bool, fresh_routes) -> None:
    """Structural, under ``torch.compile(fullgraph=True)`` (graph captured by a recording backend, nothing
    compiled; a graph break would raise), static or symbolic shapes: after an eager inference forward the
    traced graph holds the route that forward took (the timing's result set by hand here), and before any
    the shape rule (14x14: the conv)."""
    from scaling._blocks import PointwiseLinear

    layer = PointwiseLinear(48, 80).eval()
    x = torch.randn(1, 14, 14, 48)
    with torch.no_grad():
        if timed is not None:
            key = fresh_routes.route_key(tuple(x.shape), x.stride(), x.dtype, (80, 48), torch.float32, torch.float32)
            fresh_routes._chosen[key] = timed == "gemm"
            layer(x)
            assert layer.eager_route == (timed == "gemm")
        graphs: list[set[str]] = []

        def recording_backend(gm: torch.fx.GraphModule, _inputs):
            graphs.append({str(getattr(node.target, "__name__", node.target)) for node in gm.graph.nodes
                           if node.op == "call_function"})
            return gm

        torch.compiler.reset()
        out = torch.compile(layer, backend=recording_backend, fullgraph=True, dynamic=dynamic)(x)
        torch.compiler.reset()
        torch.testing.assert_close(out, nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    takes_gemm = timed == "gemm"
    assert len(graphs) == 1
    assert ("linear" in graphs[0]) == takes_gemm and ("conv2d" in graphs[0]) == (not takes_gemm)


def test_the_timing_runs_without_autocasts_cast_cache(fresh_routes) -> None:
    """Inside an autocast region the cache would spare ``F.linear``'s leaf weight its cast from the second call
    on, but not the conv's reshaped view: the candidates run with the cache off, and the region's own setting
    is back afterwards."""
    seen = []

    def candidate() -> torch.Tensor:
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                     torch.is_autocast_cache_enabled()))
        return torch.zeros(1)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh_routes.gemm_is_faster("key", candidate, candidate, True)
        assert torch.is_autocast_cache_enabled()
    assert set(seen) == {(True, torch.bfloat16, False)}


def test_an_unknown_route_mode_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from scaling._pointwise_route import timed_choice_enabled

    monkeypatch.setenv("CMT_SCALE_POINTWISE_ROUTE", "fastest")
    with pytest.raises(ValueError, match=r"CMT_SCALE_POINTWISE_ROUTE='fastest' is not one of: timed, rule"):
        timed_choice_enabled()
