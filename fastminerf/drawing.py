"""Small drawing helpers (Pillow, which imageio brings) for the pictures fastminerf writes for a person to look at:
prepare's contact sheets and a run's training curve."""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

__all__ = ["CURVE_COLOURS", "LINE_HEIGHT", "plot_curves", "wrap_text"]

CURVE_COLOURS = ((230, 60, 60), (60, 200, 60), (80, 140, 255))
"""Colours of a plot's first, second and third curve (then again)."""

LINE_HEIGHT = 13
"""Pixels from one line of Pillow's default font to the next."""


def wrap_text(draw, text: str, width: float) -> List[str]:
    """``text`` broken at spaces into lines that each fit ``width`` pixels in ``draw``'s default font (a single word
    wider than that stays whole on its own line)."""
    lines: List[str] = []
    for word in text.split():
        if lines and draw.textlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def plot_curves(draw, box, series: np.ndarray, title: str, x: Optional[np.ndarray] = None,
                legend: Optional[Sequence[str]] = None) -> None:
    """Curves of ``series (B, C)`` in ``box = (x0, y0, x1, y1)`` of a Pillow ``ImageDraw``, each column a colour of
    :data:`CURVE_COLOURS`, with a zero line and the values' range at the top right. ``x`` (B,) places the points
    (default evenly) and writes its first and last value under the curves; ``legend`` names the columns in their
    colours after the title. Non-finite values are left out of the range and of the curves. The range goes on a line
    of its own, under the title, where the box is too narrow for both."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(90, 90, 90))
    draw.text((x0 + 4, y0 + 2), title, fill=(220, 220, 220))
    at = x0 + 4 + draw.textlength(title) + 10
    if legend:
        for c, name in enumerate(legend):
            draw.text((at, y0 + 2), name, fill=CURVE_COLOURS[c % len(CURVE_COLOURS)])
            at += draw.textlength(name) + 8
    series = np.asarray(series, dtype=np.float64).reshape(len(series), -1)
    finite = np.isfinite(series)
    if len(series) < 2 or not finite.any():
        return
    lo, hi = float(series[finite].min()), float(series[finite].max())
    span = max(hi - lo, 1e-6)
    limits = f"{lo:+.1f}..{hi:+.1f}"
    if at + draw.textlength(limits) <= x1 - 4:
        draw.text((x1 - 4 - draw.textlength(limits), y0 + 2), limits, fill=(180, 180, 180))
        top = y0 + 16
    else:  # under the title
        draw.text((x0 + 4, y0 + 2 + LINE_HEIGHT), limits, fill=(180, 180, 180))
        top = y0 + 16 + LINE_HEIGHT
    bottom = y1 - (16 if x is not None else 4)

    def ypos(v):
        return bottom - (v - lo) / span * (bottom - top)

    if lo < 0 < hi:
        draw.line([(x0, ypos(0.0)), (x1, ypos(0.0))], fill=(70, 70, 70))
    if x is None:
        xs = np.linspace(x0 + 2, x1 - 2, len(series))
    else:
        x = np.asarray(x, dtype=np.float64)
        xs = x0 + 2 + (x - x[0]) / max(float(x[-1] - x[0]), 1e-12) * (x1 - x0 - 4)
        draw.text((x0 + 4, y1 - 14), f"{x[0]:g}", fill=(180, 180, 180))
        last = f"{x[-1]:g}"
        draw.text((x1 - 4 - draw.textlength(last), y1 - 14), last, fill=(180, 180, 180))
    for c in range(series.shape[1]):
        pts = [(float(u), float(ypos(v))) for u, v, ok in zip(xs, series[:, c], finite[:, c]) if ok]
        if len(pts) > 1:
            draw.line(pts, fill=CURVE_COLOURS[c % len(CURVE_COLOURS)], width=1)
