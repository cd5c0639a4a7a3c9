"""Resizing CMT's relative position bias to another token grid.

The bias of a stage is one learnable tensor of shape ``heads x N x M``: for each query token (of the
``H x W`` grid, ``N = H*W``) a bias over each key token (of the ``H/k x W/k`` reduced grid, ``M``). It
is tied to the grid it was built for, which is why the official code refuses any other input size. Both
of its token axes are 2-D grids, so it can be resampled like an image on each: first over the key grid,
then over the query grid. That lets a model built (or trained) at 224 run at 256, and lets a checkpoint
be loaded into a model of another resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["resize_position_bias"]


def resize_position_bias(
    bias: torch.Tensor,
    query_grid: tuple[int, int],
    key_grid: tuple[int, int],
    new_query_grid: tuple[int, int],
    new_key_grid: tuple[int, int],
    mode: str = "bicubic",
) -> torch.Tensor:
    """Resample a ``heads x (Hq*Wq) x (Hk*Wk)`` bias to ``heads x (Hq'*Wq') x (Hk'*Wk')``.

    Differentiable, so a model can also be trained at a resolution other than the one it was built for.
    Returns ``bias`` itself when both grids are unchanged.
    """
    if tuple(query_grid) == tuple(new_query_grid) and tuple(key_grid) == tuple(new_key_grid):
        return bias
    heads = bias.shape[0]
    (hq, wq), (hk, wk) = query_grid, key_grid
    (nhq, nwq), (nhk, nwk) = new_query_grid, new_key_grid
    if bias.shape[1:] != (hq * wq, hk * wk):
        raise ValueError(
            f"position bias of shape {tuple(bias.shape)} does not match query grid {query_grid} and key grid {key_grid}"
        )
    orig_dtype = bias.dtype
    x = bias.float()
    if (hk, wk) != (nhk, nwk):  # key axis: one image of hk x wk per (head, query)
        x = x.reshape(heads, hq * wq, hk, wk)
        x = F.interpolate(x, size=(nhk, nwk), mode=mode, align_corners=False)
    x = x.reshape(heads, hq * wq, nhk * nwk)
    if (hq, wq) != (nhq, nwq):  # query axis: one image of hq x wq per (head, key)
        x = x.transpose(1, 2).reshape(heads, nhk * nwk, hq, wq)
        x = F.interpolate(x, size=(nhq, nwq), mode=mode, align_corners=False)
        x = x.reshape(heads, nhk * nwk, nhq * nwq).transpose(1, 2)
    return x.contiguous().to(orig_dtype)
