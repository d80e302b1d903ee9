"""The static background of a video: the temporal median of its background pixels, holes filled.

A pixel's background colour is the median of its colour over the frames in which segmentation calls it
background (the person's mask widened by :data:`MASK_GROW` pixels, so that hair fringes and motion blur do not
leak in). Pixels that are never background (behind a person who hardly moves) are filled by OpenCV's inpainting
(Telea's fast marching method) from the seen pixels around them.

Dimension letters: B frames, H and W pixels.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["FOREGROUND_THRESHOLD", "MASK_GROW", "median_background"]

FOREGROUND_THRESHOLD = 0.25
"""Person probability above which a pixel is left out of the background median (low: when in doubt, leave out)."""

MASK_GROW = 3
"""Pixels by which the person's mask is widened before the background median (at 256 px)."""

INPAINT_RADIUS = 5
"""Neighbourhood radius of the inpainting, pixels."""


def median_background(frames: np.ndarray, person: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Background image of a static camera from frames and person probabilities.

    Args:
        frames: ``(B, H, W, 3)`` uint8.
        person: ``(B, H, W)`` float person probability (or a mask in [0, 1]).

    Returns:
        ``background (H, W, 3)`` uint8 and ``seen (H, W)`` bool: pixels with at least one background observation
        (the others were inpainted).
    """
    import cv2

    b, h, w, _ = frames.shape
    grow = max(1, int(round(MASK_GROW * max(h, w) / 256)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    vals = frames.astype(np.float32)
    for i in range(b):
        fg = cv2.dilate((person[i] > FOREGROUND_THRESHOLD).astype(np.uint8), kernel) > 0
        vals[i][fg] = np.nan
    # Median ignoring NaN: np.sort puts NaN last, so the median of the n valid values sits at (n - 1) // 2.
    count = np.isfinite(vals[..., 0]).sum(axis=0)  # (H, W)
    vals.sort(axis=0)
    mid = np.maximum(count - 1, 0) // 2
    med = np.take_along_axis(vals, mid[None, :, :, None].repeat(3, axis=3), axis=0)[0]
    seen = count > 0
    bg = np.where(seen[..., None], np.nan_to_num(med), 0.0)
    bg = np.clip(np.rint(bg), 0, 255).astype(np.uint8)
    if not seen.all():
        holes = (~seen).astype(np.uint8)
        radius = max(1, int(round(INPAINT_RADIUS * max(h, w) / 256)))
        bg = cv2.inpaint(bg, holes, radius, cv2.INPAINT_TELEA) if seen.any() else bg
    return bg, seen
