"""An independent, functional CMT in the official release's layout: the ground truth for our model.

Written from the paper and the release's documented structure (its state-dict names and shapes,
NCHW/(B, N, C) tensors, explicit attention, ``q k^T * scale + bias``), not from our modules: it shares
no code with ``scaling`` except the config. Tests fill a state dict in the official layout, run it
here, load it into our model through ``checkpoint_filter_fn``, and compare logits. A mistake in our
architecture, our names or the mapping makes them differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scaling import CMTConfig

BN_EPS = 1e-5
BLOCK_LN_EPS = 1e-6
MERGE_LN_EPS = 1e-5


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,)}


def official_shapes(cfg: CMTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the official state dict for ``cfg`` (parameters and BN running stats), with its shape."""
    s, shapes = cfg.stem_channels, {}
    for i, c_in in enumerate((cfg.in_chans, s, s), start=1):
        shapes[f"stem_conv{i}.weight"] = (s, c_in, 3, 3)
        shapes[f"stem_conv{i}.bias"] = (s,)
        shapes.update(_bn(f"stem_norm{i}", s))
    c_in = s
    for i, letter in enumerate("abcdefgh"[: cfg.num_stages]):
        c, hd, k, heads = cfg.embed_dims[i], cfg.hidden_dims[i], cfg.sr_ratios[i], cfg.num_heads[i]
        shapes[f"patch_embed_{letter}.proj.weight"] = (c, c_in, 2, 2)
        shapes[f"patch_embed_{letter}.proj.bias"] = (c,)
        shapes[f"patch_embed_{letter}.norm.weight"] = (c,)
        shapes[f"patch_embed_{letter}.norm.bias"] = (c,)
        n = cfg.grid_size(i) ** 2
        shapes[f"relative_pos_{letter}"] = (heads, n, n // k // k)
        for j in range(cfg.depths[i]):
            b = f"blocks_{letter}.{j}"
            shapes[f"{b}.proj.weight"], shapes[f"{b}.proj.bias"] = (c, 1, 3, 3), (c,)
            for norm in ("norm1", "norm2"):
                shapes[f"{b}.{norm}.weight"], shapes[f"{b}.{norm}.bias"] = (c,), (c,)
            for name in ("q", "k", "v"):
                shapes[f"{b}.attn.{name}.weight"] = (c, c)
                if cfg.qkv_bias:
                    shapes[f"{b}.attn.{name}.bias"] = (c,)
            shapes[f"{b}.attn.proj.weight"], shapes[f"{b}.attn.proj.bias"] = (c, c), (c,)
            if k > 1:
                shapes[f"{b}.attn.sr.0.weight"], shapes[f"{b}.attn.sr.0.bias"] = (c, 1, k, k), (c,)
                shapes.update(_bn(f"{b}.attn.sr.1", c))
            shapes[f"{b}.mlp.conv1.0.weight"], shapes[f"{b}.mlp.conv1.0.bias"] = (hd, c, 1, 1), (hd,)
            shapes.update(_bn(f"{b}.mlp.conv1.2", hd))
            shapes[f"{b}.mlp.proj.weight"], shapes[f"{b}.mlp.proj.bias"] = (hd, 1, 3, 3), (hd,)
            shapes.update(_bn(f"{b}.mlp.proj_bn", hd))
            shapes[f"{b}.mlp.conv2.0.weight"], shapes[f"{b}.mlp.conv2.0.bias"] = (c, hd, 1, 1), (c,)
            shapes.update(_bn(f"{b}.mlp.conv2.1", c))
        c_in = c
    shapes["_fc.weight"], shapes["_fc.bias"] = (cfg.fc_dim, c_in, 1, 1), (cfg.fc_dim,)
    shapes.update(_bn("_bn", cfg.fc_dim))
    if cfg.num_classes:
        shapes["head.weight"], shapes["head.bias"] = (cfg.num_classes, cfg.fc_dim), (cfg.num_classes,)
    return shapes


def official_param_count(cfg: CMTConfig) -> int:
    """Learnable parameters of the official model: every tensor but BatchNorm's running statistics."""
    return sum(math.prod(shape) for key, shape in official_shapes(cfg).items() if "running_" not in key)


def random_official_state_dict(cfg: CMTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official layout, scaled so activations stay O(1) through deep models."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in official_shapes(cfg).items():
        if key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("running_mean") or key.endswith("bias"):
            out[key] = 0.1 * torch.randn(shape, generator=gen)
        elif "norm" in key or "_bn" in key or ".sr.1." in key or key.endswith("conv1.2.weight"):
            out[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif key.startswith("relative_pos"):
            out[key] = torch.randn(shape, generator=gen)
        else:
            fan_in = math.prod(shape[1:])
            out[key] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    return out


_TRAINING = {"on": False}  # batch statistics instead of running ones (set by official_forward)


def _batch_norm(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{prefix}.running_mean"].clone(), sd[f"{prefix}.running_var"].clone(),
                        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training=_TRAINING["on"], eps=BN_EPS)


def _layer_norm(x: torch.Tensor, sd: dict, prefix: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def _tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.transpose(1, 2).reshape(b, c, h, w)


def _attention(x, sd, b, cfg, i, h, w, rel_pos):
    bsz, n, c = x.shape
    heads, k = cfg.num_heads[i], cfg.sr_ratios[i]
    d = c // heads
    bias = lambda name: sd.get(f"{b}.attn.{name}.bias")  # noqa: E731
    q = F.linear(x, sd[f"{b}.attn.q.weight"], bias("q")).reshape(bsz, n, heads, d).permute(0, 2, 1, 3)
    kv = x
    if k > 1:
        m = F.conv2d(_tokens_to_map(x, h, w), sd[f"{b}.attn.sr.0.weight"], sd[f"{b}.attn.sr.0.bias"], stride=k,
                     groups=c)
        kv = _batch_norm(m, sd, f"{b}.attn.sr.1").reshape(bsz, c, -1).transpose(1, 2)
    key = F.linear(kv, sd[f"{b}.attn.k.weight"], bias("k")).reshape(bsz, -1, heads, d).permute(0, 2, 1, 3)
    val = F.linear(kv, sd[f"{b}.attn.v.weight"], bias("v")).reshape(bsz, -1, heads, d).permute(0, 2, 1, 3)
    attn = (q @ key.transpose(-2, -1)) * d**-0.5 + rel_pos
    out = (attn.softmax(-1) @ val).transpose(1, 2).reshape(bsz, n, c)
    return F.linear(out, sd[f"{b}.attn.proj.weight"], sd[f"{b}.attn.proj.bias"])


def _irffn(x, sd, b, h, w):
    m = _tokens_to_map(x, h, w)
    m = _batch_norm(F.gelu(F.conv2d(m, sd[f"{b}.mlp.conv1.0.weight"], sd[f"{b}.mlp.conv1.0.bias"])), sd,
                    f"{b}.mlp.conv1.2")
    m = F.conv2d(m, sd[f"{b}.mlp.proj.weight"], sd[f"{b}.mlp.proj.bias"], padding=1, groups=m.shape[1]) + m
    m = _batch_norm(F.gelu(m), sd, f"{b}.mlp.proj_bn")
    m = _batch_norm(F.conv2d(m, sd[f"{b}.mlp.conv2.0.weight"], sd[f"{b}.mlp.conv2.0.bias"]), sd, f"{b}.mlp.conv2.1")
    return m.flatten(2).transpose(1, 2)


@torch.no_grad()
def official_forward(sd: dict[str, torch.Tensor], cfg: CMTConfig, x: torch.Tensor, training: bool = False
                     ) -> torch.Tensor:
    """Logits of the official CMT with state dict ``sd`` for input ``x`` at the config's size.

    ``training=True`` normalises with batch statistics, as BatchNorm does in training mode (no dropout).
    """
    _TRAINING["on"] = training
    for i in (1, 2, 3):
        x = F.conv2d(x, sd[f"stem_conv{i}.weight"], sd[f"stem_conv{i}.bias"], stride=2 if i == 1 else 1, padding=1)
        x = _batch_norm(F.gelu(x), sd, f"stem_norm{i}")
    for i, letter in enumerate("abcdefgh"[: cfg.num_stages]):
        x = F.conv2d(x, sd[f"patch_embed_{letter}.proj.weight"], sd[f"patch_embed_{letter}.proj.bias"], stride=2)
        h, w = x.shape[-2:]
        x = _layer_norm(x.flatten(2).transpose(1, 2), sd, f"patch_embed_{letter}.norm", MERGE_LN_EPS)
        for j in range(cfg.depths[i]):
            b = f"blocks_{letter}.{j}"
            m = _tokens_to_map(x, h, w)
            x = (F.conv2d(m, sd[f"{b}.proj.weight"], sd[f"{b}.proj.bias"], padding=1, groups=m.shape[1]) + m)
            x = x.flatten(2).transpose(1, 2)
            x = x + _attention(_layer_norm(x, sd, f"{b}.norm1", BLOCK_LN_EPS), sd, b, cfg, i, h, w,
                               sd[f"relative_pos_{letter}"])
            x = x + _irffn(_layer_norm(x, sd, f"{b}.norm2", BLOCK_LN_EPS), sd, b, h, w)
        x = _tokens_to_map(x, h, w)
    x = _batch_norm(F.conv2d(x, sd["_fc.weight"], sd["_fc.bias"]), sd, "_bn")
    x = (x * torch.sigmoid(x)).mean((2, 3))
    return F.linear(x, sd["head.weight"], sd["head.bias"]) if cfg.num_classes else x
