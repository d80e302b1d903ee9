"""Small drawing helpers (Pillow, which imageio brings) for the pictures fastminerf writes for a person to look at:
prepare's contact sheets and a run's training curve."""

from __future__ import annotations

from array import array
from typing import Iterable, List, Optional, Sequence

import numpy as np

from .config import plain_number

__all__ = ["CURVE_COLOURS", "LINE_HEIGHT", "plot_curves", "training_curve", "wrap_text"]

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
    series = np.asarray(series, dtype=np.float64)
    if len(series) < 2:  # no curve (and numpy cannot reshape an empty series to (0, -1))
        return
    series = series.reshape(len(series), -1)
    finite = np.isfinite(series)
    if not finite.any():
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
        draw.text((x0 + 4, y1 - 14), plain_number(x[0]), fill=(180, 180, 180))
        last = plain_number(x[-1])
        draw.text((x1 - 4 - draw.textlength(last), y1 - 14), last, fill=(180, 180, 180))
    for c in range(series.shape[1]):
        pts = [(float(u), float(ypos(v))) for u, v, ok in zip(xs, series[:, c], finite[:, c]) if ok]
        if len(pts) > 1:
            draw.line(pts, fill=CURVE_COLOURS[c % len(CURVE_COLOURS)], width=1)


def training_curve(records: Iterable[dict], name: str):
    """A run's training log as a picture (a Pillow image, 640 px wide): the loss (log10) and the training PSNR against
    the step, one plot each, a grey line where a personalisation's code-only phase ends, and a title with ``name``,
    the last step, training seconds, loss and PSNR. ``records``: the log's records (step, loss, psnr, seconds,
    phase), in order, read once (an iterator of a long log's records is not held: only the numbers drawn are)."""
    from PIL import Image, ImageDraw

    width, plot_h, pad, header = 640, 200, 6, 22
    img = Image.new("RGB", (width, header + 2 * (plot_h + pad) + pad), (30, 30, 30))
    draw = ImageDraw.Draw(img)

    def number(r, key):
        return float("nan") if r.get(key) is None else float(r[key])

    steps, losses, psnrs, phase, last = array("d"), array("d"), array("d"), [], None
    names: dict = {}  # one string a phase, not one a record
    for last in records:
        steps.append(float(last["step"]))
        losses.append(number(last, "loss"))
        psnrs.append(number(last, "psnr"))
        ph = str(last.get("phase", "train"))
        phase.append(names.setdefault(ph, ph))
    x, loss, psnr = (np.frombuffer(a, dtype=np.float64) if len(a) else np.zeros(0) for a in (steps, losses, psnrs))
    if last is not None:
        title = (f"{name}: step {plain_number(x[-1])}, {number(last, 'seconds'):.0f} s of training; last loss "
                 f"{loss[-1]:.4g}, train PSNR {psnr[-1]:.2f} dB")
    else:
        title = f"{name}: nothing logged yet"
    draw.text((pad, 5), title, fill=(235, 235, 235))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_loss = np.log10(loss)
    for k, (series, what) in enumerate(((log_loss, "loss (log10) against the step"),
                                        (psnr, "train PSNR (dB) against the step"))):
        y0 = header + k * (plot_h + pad)
        box = (pad, y0, width - pad, y0 + plot_h)
        plot_curves(draw, box, series[:, None], what, x=x if len(x) > 1 else None)
        for i in range(1, len(phase)):
            if phase[i] != phase[i - 1]:  # a personalisation's code-only phase ends
                u = box[0] + 2 + (x[i] - x[0]) / max(float(x[-1] - x[0]), 1e-12) * (box[2] - box[0] - 4)
                draw.line([(u, y0 + 16), (u, y0 + plot_h - 16)], fill=(150, 150, 150))
                draw.text((u + 3, y0 + 18), f"{phase[i - 1]} | {phase[i]}", fill=(150, 150, 150))
    return img
