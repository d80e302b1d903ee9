"""A one-image check of a prepared video: tracking, re-projection, masks, background and pose over time.

Row 1: frames spread over the video with the tracked landmarks (green), the person's neutral face projected
through the written camera (red: it should sit on the green points of the rigid parts of the face) and the head
axes (x red, y green, z blue), each tile labelled with its frame number, time and split. Row 2: the same frames with the segmentation mask (person tinted, background
darkened). Row 3: the background image, then head rotation (degrees about the camera's x, y, z axes) and the first
three expression coefficients over the video, one curve each, named in their colours. The header is wrapped to the
sheet's width (at prepare's --size 64 the sheet is 276 px wide).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..data.writer import replaced_atomically
from ..drawing import LINE_HEIGHT, plot_curves, wrap_text
from .pose import project

__all__ = ["write_contact_sheet"]

PathLike = Union[str, Path]

AXIS_LENGTH = 0.5
"""Length of the drawn head axes, head units."""

SHEET_MIN_TILE = 256
"""Frames smaller than this (pixels a side) are enlarged by a whole factor (nearest neighbour) on the sheet, so that
478 landmarks leave the face visible and a tile's label fits."""

_AXIS_COLOURS = ((230, 40, 40), (40, 200, 40), (60, 120, 255))


def _rotation_degrees(c2w: np.ndarray) -> np.ndarray:
    """(B, 3) rotation vector of each head-to-camera rotation, in degrees (about x, y, z; 0 = frontal)."""
    import cv2

    out = np.empty((len(c2w), 3))
    for i, m in enumerate(np.asarray(c2w, dtype=np.float64)):
        out[i] = np.degrees(cv2.Rodrigues(np.ascontiguousarray(m[:3, :3].T))[0].reshape(3))
    return out


def write_contact_sheet(
    out_png: PathLike,
    title: str,
    frames: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray],
    c2w_shown: Sequence[np.ndarray],
    neutral: np.ndarray,
    stable: np.ndarray,
    intrinsics: Sequence[float],
    background: np.ndarray,
    c2w_all: np.ndarray,
    expression: np.ndarray,
    labels: Optional[Sequence[str]] = None,
) -> Path:
    """Write the contact sheet of one prepared video.

    Args:
        out_png: output file.
        title: the identity name (drawn at the top).
        frames, masks, landmarks, c2w_shown: per shown frame: image ``(H, W, 3)`` uint8, mask ``(H, W)`` uint8,
            tracked landmarks ``(K, 3)`` in pixels, camera-to-head ``(4, 4)``.
        neutral: ``(K, 3)`` the person's neutral face, head space; ``stable`` its rigid landmarks.
        intrinsics: ``[fx, fy, cx, cy]``.
        background: ``(H, W, 3)`` uint8.
        c2w_all: ``(B, 4, 4)`` every frame's camera; expression: ``(B, E)`` every frame's coefficients.
        labels: per shown frame, a line written on its landmark tile (which frame it is).

    Frames under :data:`SHEET_MIN_TILE` px are enlarged. The header is wrapped to the sheet's width; each plot names its curves in their colours.
    """
    from PIL import Image, ImageDraw

    scale = max(1, -(-SHEET_MIN_TILE // max(frames[0].shape[:2])))
    if scale > 1:  # drawn on the enlarged pixels: landmarks and the camera's pixels scale alike
        def big(a):
            return np.repeat(np.repeat(np.asarray(a), scale, axis=0), scale, axis=1)

        frames, masks, background = [big(f) for f in frames], [big(m) for m in masks], big(background)
        landmarks = [np.concatenate([np.asarray(lm)[:, :2] * scale, np.asarray(lm)[:, 2:]], axis=1) for lm in landmarks]
        intrinsics = [float(v) * scale for v in intrinsics]
    h, w = frames[0].shape[:2]
    pad = 4
    cols = len(frames)
    width = pad + cols * (w + pad)
    text = (f"{title}: tracked landmarks (green), neutral face through the written camera (red), head axes "
            "(x red, y green, z blue); masks; background; pose and expression over time")
    lines = wrap_text(ImageDraw.Draw(Image.new("RGB", (1, 1))), text, width - 2 * pad)
    header = 4 + LINE_HEIGHT * len(lines) + 3
    height = header + 3 * (h + pad) + pad
    sheet = Image.new("RGB", (width, height), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(lines):
        draw.text((pad, 4 + LINE_HEIGHT * i), line, fill=(230, 230, 230))
    dot = max(1, w // 256)
    for c, (img, mask, lm, cam) in enumerate(zip(frames, masks, landmarks, c2w_shown)):
        x = pad + c * (w + pad)
        tile = Image.fromarray(np.ascontiguousarray(img[..., :3]))
        d = ImageDraw.Draw(tile)
        for u, v in np.asarray(lm)[:, :2]:
            d.rectangle([u - dot / 2, v - dot / 2, u + dot / 2, v + dot / 2], fill=(60, 230, 60))
        for u, v in project(neutral[stable], cam, intrinsics):
            d.rectangle([u - dot / 2, v - dot / 2, u + dot / 2, v + dot / 2], fill=(240, 50, 50))
        axes = project(np.vstack([np.zeros(3), AXIS_LENGTH * np.eye(3)]), cam, intrinsics)
        for a in range(3):
            d.line([tuple(axes[0]), tuple(axes[a + 1])], fill=_AXIS_COLOURS[a], width=max(2, w // 128))
        if labels is not None:  # bottom left, light on a dark backing
            box = d.textbbox((3, h - LINE_HEIGHT - 2), labels[c])
            d.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(20, 20, 20))
            d.text((3, h - LINE_HEIGHT - 2), labels[c], fill=(240, 240, 240))
        sheet.paste(tile, (x, header))
        m = (np.asarray(mask, dtype=np.float32) / 255.0)[..., None]
        tinted = img[..., :3] * (0.35 + 0.65 * m) + np.array([0.0, 60.0, 90.0]) * m * 0.4
        sheet.paste(Image.fromarray(np.clip(tinted, 0, 255).astype(np.uint8)), (x, header + h + pad))
    y = header + 2 * (h + pad)
    sheet.paste(Image.fromarray(np.ascontiguousarray(background[..., :3])), (pad, y))
    draw.text((pad + 4, y + 2), "bg.png", fill=(255, 255, 255))
    plots_x0 = pad + w + pad
    plots_w = width - plots_x0 - pad
    if plots_w > 40:
        half = (plots_w - pad) // 2
        plot_curves(draw, (plots_x0, y, plots_x0 + half, y + h), _rotation_degrees(c2w_all), "head rotation (deg)",
                    legend=("x", "y", "z"))
        plot_curves(draw, (plots_x0 + half + pad, y, plots_x0 + plots_w, y + h), np.asarray(expression)[:, :3],
                    "expression", legend=("0", "1", "2"))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(out) as tmp:  # whole or not at all: a failed save left an earlier sheet cut short
        sheet.save(tmp, format="PNG")
    return out
