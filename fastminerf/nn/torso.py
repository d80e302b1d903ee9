"""``TorsoLayer``: what a head-space field cannot follow, the shoulders and the body below the neck, as one learned
RGBA image per identity in the camera's image, composited between the head and the static background.

In a talking-head video the head turns while the shoulders stay nearly still in the image; a field in head space
(the head fixed, the camera moving) would have to move the shoulders with every turn. AD-NeRF and ER-NeRF train a
second model for the torso; here it is a layer in image space (the camera of a prepared video is fixed), and the
head field keeps its box above a floor under the chin and, below the jaw, a neck column (``ModelConfig.torso``),
so the field holds the head and the layer the rest of the person. Memory: ``4 * resolution^2`` floats per identity
(64 KB at 64).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..data.rays import camera_rays
from ..ops.texture import texture_lookup

__all__ = ["SHIFT_SCALE", "TorsoLayer", "in_head_region", "last_frames_mean", "outside_head"]

SHIFT_SCALE = 0.01
"""Image fraction one unit of a frame's torso shift (``MINeRF.torso_shift``, ``ModelConfig.torso.frame_shift``) moves
the layer by. Adam moves a parameter by about its learning rate a step, so at the presets' 0.01 the layer moves by
at most 1e-4 of the image (0.03 px at 256 px) a step: a shift of a few pixels is learned over tens of steps, not
thrown about by one batch."""


class TorsoLayer(nn.Module):
    """Per-identity RGBA textures ``texture`` (I, R, R, 4) of logits over the image (u right, v down, in [0, 1]).

    Args:
        n_identities: I.
        resolution: R, texels a side.
        alpha_init: the opacity every texel starts from (the layer starts nearly transparent, so the head field is
            not beaten to the face by a static picture; it grows where the field cannot reach).
    """

    def __init__(self, n_identities: int, resolution: int, alpha_init: float = 0.02) -> None:
        super().__init__()
        if resolution < 2:
            raise ValueError(f"torso resolution must be >= 2, got {resolution}")
        if not 0.0 < alpha_init < 1.0:
            raise ValueError(f"alpha_init must lie in (0, 1), got {alpha_init}")
        self.alpha_init = float(alpha_init)
        self.alpha_logit = float(torch.logit(torch.tensor(alpha_init)))
        tex = torch.zeros(n_identities, resolution, resolution, 4)
        tex[..., 3] = self.alpha_logit
        self.texture = nn.Parameter(tex)

    @property
    def resolution(self) -> int:
        return int(self.texture.shape[1])

    def forward(self, identity: torch.Tensor, uv: torch.Tensor):
        """(rgb (N, 3), alpha (N,)) of identity ids (N,) at image coordinates uv (N, 2) in [0, 1]."""
        rgba = torch.sigmoid(texture_lookup(self.texture, identity, uv))
        return rgba[:, :3], rgba[:, 3]

    def over(self, identity: torch.Tensor, uv: torch.Tensor, background: torch.Tensor,
             shift: Optional[torch.Tensor] = None):
        """(colour (N, 3), alpha (N,)): the layer composited over ``background`` (N, 3), i.e. what shows behind the
        head field, and the layer's opacity. ``shift`` (N, 2): the layer moved by ``SHIFT_SCALE * shift`` of the image
        for each ray (a frame's torso shift), i.e. read at ``uv - SHIFT_SCALE * shift``."""
        if shift is not None:
            uv = uv - SHIFT_SCALE * shift.to(uv.dtype)
        rgb, alpha = self(identity, uv)
        return background + alpha[:, None] * (rgb - background), alpha

    @torch.no_grad()
    def start_from(self, identity: int, coverage: torch.Tensor, colour: torch.Tensor) -> None:
        """Start identity ``identity``'s texture from what its frames show outside the head region: ``coverage`` (R, R),
        the fraction of frames in which the person covers each texel there (the opacity, kept within
        [``alpha_init``, 0.98]), and ``colour`` (R, R, 3) in [0, 1] their mean colour (a texel never covered keeps
        grey)."""
        r = self.resolution
        if coverage.shape != (r, r) or colour.shape != (r, r, 3):
            raise ValueError(f"coverage must be ({r}, {r}) and colour ({r}, {r}, 3), got {tuple(coverage.shape)} and "
                             f"{tuple(colour.shape)}")
        alpha = coverage.to(self.texture).clamp(self.alpha_init, 0.98)
        rgb = torch.where(coverage[..., None] > 0, colour.to(self.texture), 0.5).clamp(0.02, 0.98)
        self.texture[identity, ..., :3] = torch.logit(rgb)
        self.texture[identity, ..., 3] = torch.logit(alpha)

    @torch.no_grad()
    def grow(self, n_new: int) -> None:
        """Append ``n_new`` identities (fresh, nearly transparent textures); build optimizers after calling this."""
        new = self.texture.new_zeros(n_new, *self.texture.shape[1:])
        new[..., 3] = self.alpha_logit
        self.texture = nn.Parameter(torch.cat([self.texture.detach(), new], 0))

    def extra_repr(self) -> str:
        return f"identities={self.texture.shape[0]}, resolution={self.resolution}"


def last_frames_mean(values: torch.Tensor, frame_identity: torch.Tensor, n_identities: int, last: int) -> torch.Tensor:
    """(I, C) mean of each identity's last ``last`` rows of ``values`` (B, C), its frames taken in the order of their
    rows (the training table's: as each identity's ``transforms_train.json`` lists them, a clip's frames in time where
    ``prepare`` or ``synth`` wrote it; no ``frame_index`` or ``time`` reorders them); ``last`` 0: all its rows. Zeros
    for an identity without frames.
    ``frame_identity`` (B,) int64 holds each row's identity."""
    b = frame_identity.numel()
    if last < 0:
        raise ValueError(f"last must be >= 0, got {last}")
    keep = torch.ones(b, dtype=torch.bool, device=values.device)
    if last > 0 and b:
        order = torch.argsort(frame_identity * b + torch.arange(b, device=frame_identity.device))  # by identity, in order
        counts = torch.bincount(frame_identity, minlength=n_identities)
        ident = frame_identity[order]
        rank = torch.arange(b, device=frame_identity.device) - (torch.cumsum(counts, 0) - counts)[ident]
        keep[order] = counts[ident] - rank <= last  # among the identity's last `last` frames
    sums = values.new_zeros(n_identities, values.shape[1]).index_add(0, frame_identity[keep], values[keep])
    n = torch.bincount(frame_identity[keep], minlength=n_identities).clamp(min=1).to(values.dtype)
    return sums / n[:, None]


def in_head_region(points: torch.Tensor, floor: float, neck_top: float, neck_width: float) -> torch.Tensor:
    """(M,) bool: head-space points (M, 3) the head field may hold when a torso layer takes the rest: above the
    floor ``y >= floor``, and below ``neck_top`` only the neck column ``|x| <= neck_width`` (shoulders, and hair
    hanging beside the neck, are the layer's)."""
    x, y = points[..., 0], points[..., 1]
    return (y >= floor) & ((y >= neck_top) | (x.abs() <= neck_width))


@torch.no_grad()
def outside_head(c2w: torch.Tensor, intrinsics: torch.Tensor, width: int, height: int, resolution: int,
                 floor: float, neck_top: float, neck_width: float) -> torch.Tensor:
    """(F, R, R) bool: the texels whose camera ray crosses the head's mid-plane (``z = 0`` in head space) outside
    :func:`in_head_region`, i.e. the part of the image the head field leaves to the layer, for F cameras c2w
    (F, 4, 4) and intrinsics (F, 4) [fx, fy, cx, cy] of images width x height."""
    k = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution
    v, u = torch.meshgrid(k * height, k * width, indexing="ij")  # texel centres in pixel units
    pixels = torch.stack([u.reshape(-1), v.reshape(-1)], 1) - 0.5  # camera_rays adds the half pixel back
    out = []
    for f in range(c2w.shape[0]):
        o, d = camera_rays(c2w[f].double(), intrinsics[f].double(), width, height, pixels)
        dz = torch.where(d[:, 2].abs() < 1e-9, torch.full_like(d[:, 2], 1e-9), d[:, 2])
        out.append(~in_head_region(o - (o[:, 2] / dz)[:, None] * d, floor, neck_top, neck_width))
    return torch.stack(out).reshape(-1, resolution, resolution)
