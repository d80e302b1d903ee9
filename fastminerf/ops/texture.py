"""Bilinear lookup in a stack of per-identity 2D textures (the torso layer's image-space RGBA).

Pure PyTorch on purpose: a few gathers per ray (not per sample), so it costs nothing next to the field, and autograd
gives the backward (a scatter-add into the four texels of each lookup).
"""
from __future__ import annotations

import torch

from ._checks import check_integers

__all__ = ["texture_lookup"]


def texture_lookup(texture: torch.Tensor, layer: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of ``texture`` (T, R_y, R_x, C) at ``uv`` (N, 2) in [0, 1]^2 (u across the columns, v down
    the rows; texel centres at ``(k + 0.5) / R``, clamped at the border) in layer ``layer`` (N,) int64 -> (N, C).

    Equals ``torch.nn.functional.grid_sample(texture[layer[n]].permute(2, 0, 1)[None], 2 * uv[n] - 1,
    mode="bilinear", padding_mode="border", align_corners=False)`` ray by ray (pinned by the tests), without
    copying a texture per ray.
    """
    if texture.dim() != 4:
        raise ValueError(f"texture must be (T, R_y, R_x, C), got {tuple(texture.shape)}")
    if uv.dim() != 2 or uv.shape[1] != 2 or layer.shape != uv.shape[:1]:
        raise ValueError(f"uv must be (N, 2) and layer (N,), got {tuple(uv.shape)} and {tuple(layer.shape)}")
    check_integers("layer", layer)
    if not texture.is_floating_point():
        raise ValueError(f"texture must be floating point, got {texture.dtype}: convert it with .float() first")
    t, ry, rx, c = texture.shape
    # texel positions in float32 at least: in a half-precision type a 512 px row's last position (511) rounds to 512
    pos = uv.to(torch.promote_types(texture.dtype, torch.float32))
    # a NaN coordinate reads the first texel of its axis, as grid_sample's border padding does (the clamp keeps NaN)
    x = (pos[:, 0] * rx - 0.5).clamp(0.0, rx - 1.0).nan_to_num(0.0)
    y = (pos[:, 1] * ry - 0.5).clamp(0.0, ry - 1.0).nan_to_num(0.0)
    x0, y0 = x.floor(), y.floor()
    fx, fy = (x - x0)[:, None].to(texture.dtype), (y - y0)[:, None].to(texture.dtype)
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=rx - 1), (y0 + 1).clamp(max=ry - 1)
    base = layer.long() * (ry * rx)
    flat = texture.reshape(t * ry * rx, c)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        # the rows and columns are clamped: only a layer outside 0..T-1 reads outside the texture. Named when torch
        # raises (on the CPU), not checked ahead: a range check on a CUDA tensor's values would wait for the GPU
        try:
            return flat.index_select(0, base + yy * rx + xx)
        except IndexError:
            raise IndexError(f"layer must be in 0..{t - 1} (the texture's {t} layers), got values from "
                             f"{int(layer.min())} to {int(layer.max())}") from None

    top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx
    return top * (1.0 - fy) + bottom * fy
