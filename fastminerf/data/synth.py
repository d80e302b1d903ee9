"""Procedural talking-head datasets in the shared layout: the project's own ground truth.

:func:`generate` writes ``n_identities`` identity folders (``DATASET.md``) of stylised heads that differ in
head shape, skin, hair, eye colour and surface pattern (:mod:`fastminerf.data.heads`). Each identity has a
static background, a video in which it talks, blinks, glances and moves its head, and three splits:

- ``train``: the first frames of the video;
- ``val``: the last frames of the video (expressions of the kind the identity shows in ``train``);
- ``novel``: a short clip of the identity making the expression of its *withheld region*
  (:data:`REGIONS`), a combination of expression coefficients that it never shows in ``train`` or ``val``
  while the other identities do (each identity's video contains an episode of every region except its own).
  This is MI-NeRF's cross-identity expression transfer, with exact ground truth.

Frames are traced per pixel centre (exact for the layout's cameras), written as PNG with a mask
(``mask_path``) and a face box (``bbox``) per frame. ``audio.wav`` is a voiced sound that follows the video's mouth
(:func:`_voice`; the ``novel`` frames, a clip of their own, carry no ``time`` into it), so driven videos of the
heads have sound in sync with the driver's mouth. Generation is deterministic in ``seed``; identity ``k``
depends only on ``(seed, k)``.

:func:`contact_sheet` tiles a few frames of each identity into one PNG to look at.

Dimension letters: B frames, E expression size, I identities.
"""

from __future__ import annotations

import json
import math
import numbers
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..audio import Audio, write_wav
from ..config import ArgumentValueError, SynthConfig, check_fps
from .heads import EXPRESSION_NAMES, EXPRESSION_RANGES, TRACE_BOX, HeadModel, HeadParams
from .layout import (AUDIO_FILE, SYNTH_IDENTITY_MARKER, DatasetError, find_identity_dirs, is_identity_dir,
                     read_transforms)
from .writer import check_folder, folder_locked, frame_record, noted_on_interrupt, replaced_atomically, write_png, write_transforms

__all__ = [
    "REGIONS",
    "ExpressionRegion",
    "contact_sheet",
    "generate",
    "withheld_region",
]

PathLike = Union[str, Path]
ProgressFn = Callable[[int, int], None]

GENERATOR_NAME = "fastminerf.data.synth"
"""Value of ``generator`` in the files the generator writes (``synth.json``, ``synth_identity.json``)."""

FORMAT_VERSION = 1
"""Version of what the generator writes; bumped whenever the same seed would give different pixels."""

EXPRESSION_SPACE = f"procedural-heads-{len(EXPRESSION_NAMES)}"
"""``expression_space`` of every generated identity: the generator's own coefficients (``EXPRESSION_NAMES``), the
same for every head and seed, so that data in another space (a prepared video's) is refused by a model trained on
these heads."""

IDENTITY_MARKER = SYNTH_IDENTITY_MARKER
"""File in every identity folder the generator writes (its parameters); ``overwrite`` only replaces
folders that have it."""

_E = len(EXPRESSION_NAMES)
_IDX = {name: i for i, name in enumerate(EXPRESSION_NAMES)}

REGION_MARGIN = 0.02
"""Distance kept between a region's boundary and the expressions placed inside it (episodes and ``novel``)
or pushed out of it (an identity's own withheld region), so membership never depends on float round-off."""


@dataclass(frozen=True)
class ExpressionRegion:
    """A box in expression space: every listed coefficient within its ``(low, high)`` bounds."""

    name: str
    """Short name (``laugh``, ``wink_left``, ...)."""
    bounds: Tuple[Tuple[str, float, float], ...]
    """``(coefficient name, low, high)`` per constrained coefficient; the others are free."""
    prototype: Tuple[Tuple[str, float], ...]
    """A typical expression inside the region, per constrained coefficient."""

    def contains(self, expression: np.ndarray) -> np.ndarray:
        """Which expressions (B, E) lie in the region: (B,) bool."""
        e = np.asarray(expression, dtype=np.float64).reshape(-1, _E)
        inside = np.ones(e.shape[0], dtype=bool)
        for name, lo, hi in self.bounds:
            v = e[:, _IDX[name]]
            inside &= (v >= lo) & (v <= hi)
        return inside

    def to_json(self) -> Dict[str, object]:
        """A JSON-serialisable description."""
        return {"name": self.name, "bounds": {n: [lo, hi] for n, lo, hi in self.bounds}}


REGIONS: Tuple[ExpressionRegion, ...] = (
    ExpressionRegion("laugh", (("jaw_open", 0.55, 1.0), ("smile", 0.55, 1.0)), (("jaw_open", 0.8), ("smile", 0.85))),
    ExpressionRegion("wink_left", (("blink_left", 0.75, 1.0), ("blink_right", 0.0, 0.25)), (("blink_left", 1.0), ("blink_right", 0.0))),
    ExpressionRegion("surprise", (("brow_raise", 0.55, 1.0), ("jaw_open", 0.55, 1.0)), (("brow_raise", 0.9), ("jaw_open", 0.75))),
    ExpressionRegion("kiss", (("pucker", 0.55, 1.0), ("cheek_puff", 0.55, 1.0)), (("pucker", 0.9), ("cheek_puff", 0.8))),
    ExpressionRegion("anger", (("brow_frown", 0.55, 1.0), ("smile", -1.0, -0.45)), (("brow_frown", 0.9), ("smile", -0.75))),
)
"""Withheld regions of expression space. Ordinary talking never enters any of them (the base motion keeps
jaw, smile, brows, pucker and puff below the bounds and blinks both eyes together); an identity's video
visits every region but its own in short episodes."""


def withheld_region(identity_index: int) -> ExpressionRegion:
    """The region identity ``identity_index`` never shows in ``train``/``val`` (and shows in ``novel``)."""
    return REGIONS[identity_index % len(REGIONS)]


# ----------------------------------------------------------------------------------------------------------
# Motion


def _smooth_noise(rng: np.random.Generator, n: int, every: float, lo: float, hi: float, sharp: bool = False) -> np.ndarray:
    """(n,) values from knots every ``every`` frames, uniform in [lo, hi], eased between knots (or held then
    switched quickly when ``sharp``, like saccades)."""
    every = max(float(every), 1.0)
    k = int(math.ceil(n / every)) + 2
    knots = rng.uniform(lo, hi, size=k)
    pos = np.arange(n) / every + rng.uniform(0.0, 1.0)
    i = np.floor(pos).astype(np.int64)
    f = pos - i
    if sharp:
        f = np.clip((f - 0.75) / 0.25, 0.0, 1.0)
    w = f * f * (3.0 - 2.0 * f)
    return knots[i] * (1.0 - w) + knots[i + 1] * w


def _talking(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """(n, E) expressions of ordinary talking: the jaw moves with syllables and pauses, slow smiles and brow
    moves, blinks of both eyes together, glances. Stays outside every region of :data:`REGIONS`."""
    s = fps / 25.0  # knot spacings below are in frames at 25 fps
    e = np.zeros((n, _E))
    speech = np.clip(_smooth_noise(rng, n, 20 * s, -0.5, 1.5), 0.0, 1.0)
    e[:, _IDX["jaw_open"]] = np.clip(_smooth_noise(rng, n, 3 * s, -0.25, 0.5), 0.0, 0.5) * speech
    e[:, _IDX["smile"]] = _smooth_noise(rng, n, 25 * s, -0.3, 0.45)
    e[:, _IDX["brow_raise"]] = _smooth_noise(rng, n, 30 * s, -0.35, 0.45)
    e[:, _IDX["brow_frown"]] = np.clip(_smooth_noise(rng, n, 30 * s, -0.3, 0.35), 0.0, None)
    e[:, _IDX["cheek_puff"]] = np.clip(_smooth_noise(rng, n, 40 * s, -0.3, 0.25), 0.0, None)
    e[:, _IDX["pucker"]] = np.clip(_smooth_noise(rng, n, 20 * s, -0.2, 0.35), 0.0, None)
    e[:, _IDX["mouth_shift"]] = _smooth_noise(rng, n, 30 * s, -0.3, 0.3)
    e[:, _IDX["gaze_x"]] = _smooth_noise(rng, n, 12 * s, -0.6, 0.6, sharp=True)
    e[:, _IDX["gaze_y"]] = _smooth_noise(rng, n, 12 * s, -0.4, 0.4, sharp=True)
    e[:, _IDX["squint"]] = np.clip(_smooth_noise(rng, n, 30 * s, -0.3, 0.3), 0.0, None)
    blink = np.zeros(n)
    profile = np.array([0.35, 0.9, 1.0, 0.6, 0.2])
    t = int(rng.integers(3, max(4, int(30 * s))))
    while t < n:
        m = min(len(profile), n - t)
        blink[t : t + m] = np.maximum(blink[t : t + m], profile[:m])
        t += max(1, int(rng.integers(int(40 * s), int(90 * s) + 1)))  # below 25/40 fps the gap can round to 0
    e[:, _IDX["blink_left"]] = blink
    e[:, _IDX["blink_right"]] = blink
    return e


def _inside_target(rng: np.random.Generator, region: ExpressionRegion) -> Dict[int, float]:
    """A jittered expression inside ``region`` (a value per constrained coefficient)."""
    proto = dict(region.prototype)
    out = {}
    for name, lo, hi in region.bounds:
        v = proto[name] + rng.uniform(-0.08, 0.08)
        out[_IDX[name]] = float(np.clip(v, lo + REGION_MARGIN, hi - REGION_MARGIN))
    return out


def _add_episodes(rng: np.random.Generator, e: np.ndarray, n_train: int, shown: Sequence[ExpressionRegion]) -> None:
    """Blend an episode of each shown region into the first ``n_train`` frames of ``e`` (in place): a ramp in,
    at least one frame fully inside the region, a ramp out."""
    m = min(len(shown), n_train)
    if m == 0:
        return
    order = rng.permutation(len(shown))[:m]
    span = n_train // m
    for slot, r in enumerate(order):
        start = slot * span
        hold = max(1, span // 4)
        ramp = max(0, min(4, (span - hold) // 2))
        centre = start + (span - hold) // 2
        target = _inside_target(rng, shown[r])
        for t in range(max(0, centre - ramp), min(n_train, centre + hold + ramp)):
            if centre <= t < centre + hold:
                w = 1.0
            elif t < centre:
                w = (t - (centre - ramp) + 1) / (ramp + 1)
            else:
                w = (centre + hold + ramp - t) / (ramp + 1)
            for dim, v in target.items():
                e[t, dim] = e[t, dim] + w * (v - e[t, dim])


def _push_out(e: np.ndarray, region: ExpressionRegion) -> None:
    """Move the expressions (B, E) inside ``region`` just outside it (in place), across its nearest face."""
    inside = region.contains(e)
    for b in np.flatnonzero(inside):
        best = None
        for name, lo, hi in region.bounds:
            dim = _IDX[name]
            rlo, rhi = EXPRESSION_RANGES[dim]
            for edge, target in ((lo, lo - REGION_MARGIN), (hi, hi + REGION_MARGIN)):
                if not rlo <= target <= rhi:
                    continue  # that face is the end of the coefficient's range: nothing lies beyond it
                dist = abs(e[b, dim] - edge)
                if best is None or dist < best[0]:
                    best = (dist, dim, target)
        assert best is not None, f"region {region.name} covers a whole coefficient range"
        e[b, best[1]] = best[2]


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


_LOOK_AT = np.array([0.0, 0.1, 0.0])
"""Point the cameras look at: a little above the head centre, to frame hair and chin evenly."""


def _poses(rng: np.random.Generator, n: int, fps: float, distance: float, yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(n, 4, 4) float32 camera-to-head transforms of a smoothly moving head (shown as a moving camera)."""
    s = fps / 25.0
    angles = [
        np.deg2rad(amp) * _smooth_noise(rng, n, every * s, -1.0, 1.0)
        for amp, every in ((yaw, 35), (pitch, 45), (roll, 50))
    ]
    shift = np.stack([_smooth_noise(rng, n, 40 * s, -0.04, 0.04) for _ in range(2)], axis=1)
    dist = distance + _smooth_noise(rng, n, 50 * s, -0.05, 0.05)
    out = np.zeros((n, 4, 4))
    for b in range(n):
        r = _rotation(angles[0][b], angles[1][b], angles[2][b])
        out[b, :3, :3] = r
        out[b, :3, 3] = _LOOK_AT + r @ np.array([shift[b, 0], shift[b, 1], dist[b]])
        out[b, 3, 3] = 1.0
    return out.astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A static background: a soft two-colour gradient with a faint pattern, uint8 (S, S, 3)."""
    hue = rng.uniform(0, 1)
    base = np.array([0.6 + 0.2 * math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)])
    other = np.clip(base + rng.uniform(-0.25, 0.25, size=3), 0.05, 0.95)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = rng.uniform(0, 2 * math.pi)
    g = np.clip(0.5 + 0.7 * ((xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle)), 0, 1)
    img = base[None, None] * (1 - g[..., None]) + other[None, None] * g[..., None]
    kind = int(rng.integers(3))
    freq = rng.uniform(5, 10)
    if kind == 0:
        pattern = np.sin(2 * math.pi * freq * (xx + yy))
    elif kind == 1:
        pattern = np.sin(2 * math.pi * freq * xx) * np.sin(2 * math.pi * freq * yy)
    else:
        pattern = np.sin(2 * math.pi * freq * np.hypot(xx - 0.3, yy - 0.7))
    img = np.clip(img + 0.05 * pattern[..., None], 0, 1)
    return np.rint(img * 255).astype(np.uint8)


def _face_boxes(params: HeadParams, c2w: np.ndarray, focal: float, size: int, jaw: np.ndarray) -> np.ndarray:
    """(B, 4) face boxes [y0, y1, x0, x1] as image fractions: the projection of a box around the face."""
    top = params.eye_y + 0.42  # the forehead, below the hairline
    out = np.zeros((c2w.shape[0], 4), dtype=np.float32)
    for b in range(c2w.shape[0]):
        chin = params.mouth_y - 0.32 - 0.1 * jaw[b]
        corners = np.array([[x, y, z, 1.0] for x in (-0.55, 0.55) for y in (chin, top) for z in (0.2, 0.85)])
        cam = (np.linalg.inv(c2w[b].astype(np.float64)) @ corners.T).T
        u = focal * cam[:, 0] / -cam[:, 2] + 0.5 * size
        v = -focal * cam[:, 1] / -cam[:, 2] + 0.5 * size
        out[b] = np.clip([v.min() / size, v.max() / size, u.min() / size, u.max() / size], 0.0, 1.0)
    return out


# ----------------------------------------------------------------------------------------------------------
# Generation

_SYNTH = SynthConfig()


def _plan_identity(k: int, seed: int, n_frames: int, n_val: int, n_novel: int, cfg: Dict[str, float]):
    """Parameters, background, cameras and expressions of identity ``k`` (depends on (seed, k) only)."""
    rng = np.random.default_rng([seed, k])
    params = HeadParams.random(rng, k)
    bg = _background(rng, int(cfg["size"]))
    n_train = n_frames - n_val
    fps = cfg["fps"]
    own = withheld_region(k)
    shown = [r for r in REGIONS if r.name != own.name]
    video = _talking(rng, n_frames, fps)
    _add_episodes(rng, video, n_train, shown)
    _push_out(video, own)
    novel = _talking(rng, n_novel, fps)
    for b in range(n_novel):
        for dim, v in _inside_target(rng, own).items():
            novel[b, dim] = v
    pose_args = (cfg["camera_distance"], cfg["max_yaw_deg"], cfg["max_pitch_deg"], cfg["max_roll_deg"])
    video_c2w = _poses(rng, n_frames, fps, *pose_args)
    novel_c2w = _poses(rng, n_novel, fps, *pose_args)  # drawn either way: the stream after it stays the same
    if cfg.get("novel_poses", "own") == "train":  # a stretch of its own training poses: only the expression is new
        start = int(np.random.default_rng([seed, k, 3]).integers(0, max(1, n_train - n_novel + 1)))
        novel_c2w = video_c2w[(start + np.arange(n_novel)) % max(1, n_train)].copy()
    lo = np.array([r[0] for r in EXPRESSION_RANGES])
    hi = np.array([r[1] for r in EXPRESSION_RANGES])
    video = np.clip(video, lo, hi).astype(np.float32)
    novel = np.clip(novel, lo, hi).astype(np.float32)
    assert not own.contains(video).any() and own.contains(novel).all()
    return params, bg, own, video, video_c2w, novel, novel_c2w


def _mark(folder: Path, marker: Dict[str, object], finished: bool = False) -> None:
    """Write ``folder``'s :data:`IDENTITY_MARKER` (atomically) with ``finished``."""
    with replaced_atomically(folder / IDENTITY_MARKER) as tmp:
        tmp.write_text(json.dumps(dict(marker, finished=finished), indent=1))


def _generated(out: Path) -> List[Path]:
    """The identity folders in ``out`` the generator made (a link to a folder is not one made here, and rmtree
    refuses links), in name order (as the readers take them: a refusal names the first)."""
    return sorted(c for c in out.iterdir() if c.is_dir() and not c.is_symlink() and (c / IDENTITY_MARKER).is_file())


def _refuse_foreign(out: Path, names: Sequence[str]) -> None:
    """Refuse an ``out`` that is a file, or holds an identity folder the generator did not write under one of
    ``names``: before anything is written there (its lock included), the user's data is left as it is."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    ours = _generated(out)
    clash = [c for c in out.iterdir() if c.is_dir() and is_identity_dir(c) and c not in ours and c.name in names]
    if clash:
        raise FileExistsError(f"{clash[0]} holds a dataset the generator did not write; refusing to replace it")


def _check_out_dir(out: Path, names: Sequence[str], overwrite: bool) -> None:
    """Refuse to write over data; with ``overwrite`` remove only what an earlier run of the generator wrote, and so
    without it when that run was stopped part way (no ``synth.json``, which it writes last): then only the folders
    of ``names``, the ones this call writes (generated identities gathered here under other names are refused)."""
    _refuse_foreign(out, names)
    if not out.exists():
        return
    ours = _generated(out)
    finished = (out / "synth.json").is_file()  # written last: without it, a generation that was stopped part way
    if ours and finished and not overwrite:
        raise FileExistsError(f"{out} already holds a generated dataset ({ours[0].name}, ...); pass overwrite=True (--overwrite) to replace it")
    others = [c for c in ours if c.name not in names]
    if others and not overwrite:  # generated identities gathered here (copied, renamed), not a generation of this call
        raise FileExistsError(f"{others[0]} is a generated identity folder but not one this call writes ({names[0]}, "
                              f"...), and {out} has no synth.json: refusing to remove it; pass overwrite=True "
                              "(--overwrite) to replace it, or choose another folder")
    for c in ours:
        shutil.rmtree(c)
    for f in ("synth.json", "contact_sheet.png"):
        if (out / f).is_file() and overwrite:
            (out / f).unlink()


@noted_on_interrupt("before {out_dir}/synth.json was written: rerun the same command to generate it again")
def generate(
    out_dir: PathLike,
    n_identities: int = _SYNTH.n_identities,
    n_frames: int = _SYNTH.n_frames,
    size: int = _SYNTH.size,
    seed: int = _SYNTH.seed,
    first_identity: int = _SYNTH.first_identity,
    val_fraction: float = _SYNTH.val_fraction,
    novel_frames: Optional[int] = _SYNTH.novel_frames,
    camera_distance: float = _SYNTH.camera_distance,
    focal_factor: float = _SYNTH.focal_factor,
    max_yaw_deg: float = _SYNTH.max_yaw_deg,
    max_pitch_deg: float = _SYNTH.max_pitch_deg,
    max_roll_deg: float = _SYNTH.max_roll_deg,
    fps: float = _SYNTH.fps,
    expression_style: float = _SYNTH.expression_style,
    novel_poses: str = _SYNTH.novel_poses,
    overwrite: bool = _SYNTH.overwrite,
    png_compress_level: int = _SYNTH.png_compress_level,
    chunk_rays: int = _SYNTH.chunk_rays,
    progress: Optional[ProgressFn] = None,
) -> List[Path]:
    """Write a procedural multi-identity talking-head dataset in the shared layout.

    Writes ``out_dir/id000 ... id<I-1>`` (from ``id<first_identity>`` on when it is given; each with ``transforms_{train,val,novel}.json``, ``bg.png``,
    ``audio.wav``, frames and masks under ``train/``, ``val/``, ``novel/`` and ``synth_identity.json``) and
    ``out_dir/synth.json``
    (the settings, the expression names, the regions and each identity's withheld region). Settings are
    those of :class:`fastminerf.config.SynthConfig` (same names, same meaning).

    The ``novel`` guarantee (each identity's withheld region is shown in ``train`` by every identity that
    does not withhold it too) needs at least 2 identities and 4 training frames per identity (one episode
    per region shown); with fewer, the episodes that fit are kept.

    Args:
        out_dir: output folder (created when missing).
        progress: called as ``progress(frames_done, frames_total)`` while frames are written.

    Returns:
        The identity folders, in identity order.

    Raises:
        FileExistsError: ``out_dir`` already holds a generated dataset and ``overwrite`` is false, or holds
            an identity folder the generator did not write.
        BlockingIOError: another generation writes ``out_dir`` now (it holds ``out_dir/.lock`` while it writes).
    """
    if n_identities < 1:
        raise ArgumentValueError("n_identities", f"must be >= 1, got {n_identities}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:  # numpy's words, once begun
        raise ArgumentValueError("seed", f"must be a whole number >= 0, got {seed}")
    if isinstance(first_identity, bool) or not isinstance(first_identity, numbers.Integral) or first_identity < 0:
        raise ArgumentValueError("first_identity", f"must be a whole number >= 0, got {first_identity}")
    if n_frames < 1:
        raise ArgumentValueError("n_frames", f"must be >= 1, got {n_frames}")
    if size < 8:
        raise ArgumentValueError("size", f"must be >= 8 pixels, got {size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ArgumentValueError("val_fraction", f"must be in [0, 1), got {val_fraction}")
    if not 0.0 <= expression_style < 1.0:
        raise ArgumentValueError("expression_style", f"must be in [0, 1), got {expression_style}")
    if novel_poses not in ("own", "train"):
        raise ArgumentValueError("novel_poses", f"must be 'own' or 'train', got {novel_poses!r}")
    # Checked here, not left to the renderer: fps <= 0 never ends drawing blinks (a gap of 0 frames), a focal
    # length <= 0 writes transforms the loader refuses, a camera distance <= 0 sees no head.
    check_fps(fps)  # positive, finite, and at most what a render of the data takes
    if not (math.isfinite(focal_factor) and focal_factor > 0):
        raise ArgumentValueError("focal_factor", f"must be positive, got {focal_factor}")
    if not (math.isfinite(camera_distance) and camera_distance > 0):
        raise ArgumentValueError("camera_distance", f"must be positive, got {camera_distance}")
    n_val = 0 if n_frames < 2 else max(1, int(round(val_fraction * n_frames)))
    n_val = min(n_val, n_frames - 1)
    n_novel = max(1, n_frames // 10) if novel_frames is None else int(novel_frames)
    if n_novel < 1:
        raise ArgumentValueError("novel_frames", f"must be >= 1, got {novel_frames}")
    out = Path(out_dir)
    indices = range(first_identity, first_identity + n_identities)  # identity k is the same head in any generation
    names = [f"id{k:03d}" for k in indices]
    _refuse_foreign(out, names)  # the user's data: refused before the lock is written among it
    check_folder(out, "the dataset", PermissionError)  # a read-only place: before the progress bar, in words
    try:  # held before its own folders are looked at: a generation into it that has not ended looks stopped part way
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FileExistsError(f"{out} exists and is not a folder") from None
    with folder_locked(out, lambda holder: BlockingIOError(
            f"{out} is in use by another synth{holder}: wait for it to end, or generate into another folder")):
        _check_out_dir(out, names, overwrite)

        focal = focal_factor * size
        intrinsics = [focal, focal, 0.5 * size, 0.5 * size]
        # Every head point lies within `reach` of the origin, so camera distance -/+ reach bounds every ray.
        reach = math.sqrt(sum(max(abs(TRACE_BOX[i]), abs(TRACE_BOX[i + 3])) ** 2 for i in range(3)))
        cfg = dict(
            size=size, fps=fps, camera_distance=camera_distance, max_yaw_deg=max_yaw_deg, max_pitch_deg=max_pitch_deg,
            max_roll_deg=max_roll_deg, novel_poses=novel_poses,
        )
        settings = dict(
            n_identities=n_identities, n_frames=n_frames, size=size, seed=seed, first_identity=first_identity,
            val_fraction=val_fraction,
            novel_frames=n_novel, camera_distance=camera_distance, focal_factor=focal_factor, max_yaw_deg=max_yaw_deg,
            max_pitch_deg=max_pitch_deg, max_roll_deg=max_roll_deg, fps=fps, expression_style=expression_style,
            novel_poses=novel_poses,
        )
        per_identity = n_frames + n_novel
        total = n_identities * per_identity
        done = 0
        if progress is not None:
            progress(0, total)
        dirs: List[Path] = []
        summary = []
        # every identity marked first, unfinished until its transforms are all written: stopped anywhere, the root is
        # refused as data (find_identity_dirs), not read as the identities written so far, and a rerun replaces it
        for k, name in zip(indices, names):
            (out / name).mkdir(exist_ok=True)
            _mark(out / name, {"generator": GENERATOR_NAME, "format": FORMAT_VERSION, "identity": name, "index": k})
        for k, name in zip(indices, names):
            params, bg, own, video, video_c2w, novel, novel_c2w = _plan_identity(k, seed, n_frames, n_val, n_novel, cfg)
            d = out / name
            for split in ("train", "val", "novel"):
                (d / split).mkdir(parents=True, exist_ok=True)
            write_png(d / "bg.png", bg, png_compress_level)
            head = HeadModel(params)
            c2w = np.concatenate([video_c2w, novel_c2w])
            expr = np.concatenate([video, novel])  # what the layout records
            gain = 1.0 - expression_style * float(np.random.default_rng([seed, k, 1]).uniform())
            moved = (expr * gain).astype(expr.dtype)  # what the face does
            marker = {"generator": GENERATOR_NAME, "format": FORMAT_VERSION, "identity": name, "index": k,
                      "withheld_region": own.name, "expressiveness": gain, "params": params.to_json()}
            _mark(d, marker)
            boxes = _face_boxes(params, c2w, focal, size, moved[:, _IDX["jaw_open"]])
            write_wav(d / AUDIO_FILE, _voice(moved[:n_frames], fps, np.random.default_rng([seed, k, 2])))
            splits = ["train"] * (n_frames - n_val) + ["val"] * n_val + ["novel"] * n_novel
            local = list(range(n_frames - n_val)) + list(range(n_val)) + list(range(n_novel))
            source_index = list(range(n_frames)) + list(range(n_novel))
            frames: Dict[str, List[Dict[str, object]]] = {"train": [], "val": [], "novel": []}
            per_chunk = max(1, chunk_rays // (size * size))
            for a in range(0, per_identity, per_chunk):
                b = min(per_identity, a + per_chunk)
                rgb, hit = head.render_frames(
                    torch.from_numpy(c2w[a:b]), torch.tensor(intrinsics), size, size, torch.from_numpy(moved[a:b]), chunk_rays
                )
                rgb8 = np.rint(rgb.numpy() * 255.0).astype(np.uint8)
                hit_np = hit.numpy()
                for j in range(b - a):
                    f = a + j
                    img = np.where(hit_np[j][..., None], rgb8[j], bg)
                    rel = f"{splits[f]}/{local[f]:04d}.png"
                    mask_rel = f"{splits[f]}/{local[f]:04d}_mask.png"
                    write_png(d / rel, img, png_compress_level)
                    write_png(d / mask_rel, hit_np[j].astype(np.uint8) * 255, png_compress_level)
                    frames[splits[f]].append(
                        frame_record(rel, c2w[f], expr[f], mask_path=mask_rel, bbox=boxes[f], frame_index=source_index[f],
                                     time=source_index[f] / fps if splits[f] != "novel" else None)
                    )
                done += b - a
                if progress is not None:
                    progress(done, total)
            centre_dist = np.linalg.norm(c2w[:, :3, 3].astype(np.float64), axis=1)
            for split, frs in frames.items():
                if not frs:
                    continue
                in_split = np.array([sp == split for sp in splits])
                near = max(0.05, float(centre_dist[in_split].min()) - reach)
                far = float(centre_dist[in_split].max()) + reach
                write_transforms(d, split, frs, intrinsics=intrinsics, width=size, height=size, near=near, far=far,
                                 aabb=TRACE_BOX, background="bg.png", expression_names=EXPRESSION_NAMES, fps=fps,
                                 expression_space=EXPRESSION_SPACE)
            _mark(d, marker, finished=True)
            summary.append({"name": name, "withheld_region": own.name, "hair_style": params.hair_style, "pattern": params.pattern,
                            "expressiveness": gain})
            dirs.append(d)
        with replaced_atomically(out / "synth.json") as tmp:  # the mark of a finished generation: whole or absent
            tmp.write_text(
                json.dumps(
                    {"generator": GENERATOR_NAME, "format": FORMAT_VERSION, "settings": settings,
                     "expression_names": list(EXPRESSION_NAMES), "regions": [r.to_json() for r in REGIONS],
                     "identities": summary},
                    indent=1,
                )
            )
        return dirs


VOICE_RATE = 16000
"""Sample rate of the procedural heads' ``audio.wav``."""


def _voice(moved: np.ndarray, fps: float, rng: np.random.Generator) -> Audio:
    """A voiced sound that follows a head's mouth over its video (``audio.wav``), so that a driven video of the
    procedural heads can be judged by ear as a real one can: loud while the jaw is open, silent while it is
    closed, its vowel changing with the mouth (the first formant rises as the jaw opens, the second with a smile
    and falls with a pucker, as in speech). A harmonic source at the head's own pitch (95-240 Hz, a slow vibrato),
    each harmonic weighted by two formant bumps; frame values interpolated to the samples. Not speech.

    Args:
        moved: (n, E) the expressions the face makes in the video frames, in time order.
        fps: the video's frame rate.
        rng: the head's own generator for its pitch (kept apart from the one that draws the pixels).
    """
    n = len(moved)
    t = np.arange(int(round(n * VOICE_RATE / fps))) / VOICE_RATE
    frame_t = np.arange(n) / fps
    jaw = np.interp(t, frame_t, np.clip(moved[:, _IDX["jaw_open"]], 0.0, 1.0))
    smile = np.interp(t, frame_t, moved[:, _IDX["smile"]])
    pucker = np.interp(t, frame_t, np.clip(moved[:, _IDX["pucker"]], 0.0, 1.0))
    f0 = float(rng.uniform(95.0, 240.0)) * (1.0 + 0.015 * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / VOICE_RATE
    f1 = 300.0 + 500.0 * jaw
    f2 = 1300.0 + 600.0 * smile - 500.0 * pucker
    out = np.zeros_like(t)
    for h in range(1, int(4000 // f0.min()) + 1):
        fh = h * f0
        weight = np.exp(-(((fh - f1) / 180.0) ** 2)) + 0.5 * np.exp(-(((fh - f2) / 250.0) ** 2)) + 0.05 / h
        out += weight * np.sin(h * phase)
    loud = np.clip((jaw - 0.04) / 0.3, 0.0, 1.0)
    out *= loud / max(1e-6, float(np.abs(out).max()))
    return Audio(np.rint(12000.0 * out).astype(np.int16), VOICE_RATE)


# ----------------------------------------------------------------------------------------------------------
# Contact sheet


def _spread(expr: np.ndarray, count: int) -> List[int]:
    """Indices of ``count`` expressions (B, E) far apart (farthest-point order from the most neutral one)."""
    b = expr.shape[0]
    if b <= count:
        return list(range(b))
    chosen = [int(np.argmin(np.abs(expr).sum(axis=1)))]
    dist = np.linalg.norm(expr - expr[chosen[0]], axis=1)
    while len(chosen) < count:
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(expr - expr[i], axis=1))
    return sorted(chosen)


def contact_sheet(
    paths: Union[PathLike, Sequence[PathLike]],
    out_png: PathLike,
    train_columns: int = 6,
    novel_columns: int = 2,
    max_rows: int = 8,
    min_tile: int = 96,
) -> Path:
    """Tile frames of several identities into one PNG: a row per identity, ``train_columns`` training frames
    chosen for varied expressions (fewer when no identity has as many), then (after a gap) the first
    ``novel_columns`` frames of the ``novel`` split when there is one, under their header. Works on any identity folders of the layout (the frames of a row must share
    one size). Small frames are enlarged to ``min_tile`` pixels (nearest neighbour).

    Returns:
        ``out_png``.
    """
    import imageio.v3 as iio
    from PIL import Image, ImageDraw

    dirs = find_identity_dirs(paths)[:max_rows]
    rows = []
    for d in dirs:
        train = read_transforms(d / "transforms_train.json", d)
        picks = [train.image_paths[i] for i in _spread(train.expression, train_columns)]
        novel: List[str] = []
        if (d / "transforms_novel.json").is_file():
            novel = list(read_transforms(d / "transforms_novel.json", d).image_paths[:novel_columns])
        rows.append((d.name, picks, novel))
    train_columns = max(len(r[1]) for r in rows)  # short videos have fewer frames than columns
    first = np.asarray(iio.imread(rows[0][1][0]))
    h, w = first.shape[:2]
    scale = max(1, int(math.ceil(min_tile / max(h, w))))
    th, tw = h * scale, w * scale
    pad, gap, label_w, header = 4, 16, 64, 18
    n_cols = train_columns + (novel_columns if any(r[2] for r in rows) else 0)
    width = label_w + n_cols * (tw + pad) + (gap if n_cols > train_columns else 0) + pad
    height = header + len(rows) * (th + pad) + pad
    sheet = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    draw.text((label_w + pad, 3), "train (varied expressions)", fill=(230, 230, 230))
    if n_cols > train_columns:
        draw.text((label_w + train_columns * (tw + pad) + gap + pad, 3), "novel (withheld)", fill=(255, 210, 120))
    for r, (name, picks, novel) in enumerate(rows):
        y = header + r * (th + pad) + pad
        draw.text((4, y + th // 2 - 6), name, fill=(230, 230, 230))
        for c, path in list(enumerate(picks)) + [(train_columns + j, p) for j, p in enumerate(novel)]:
            x = label_w + c * (tw + pad) + (gap if c >= train_columns else 0) + pad
            img = np.asarray(iio.imread(path))
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            img = img[..., :3]
            if img.shape[:2] != (h, w):
                raise DatasetError(f"image is {img.shape[1]}x{img.shape[0]}, the sheet's tiles are {w}x{h}", file=path)
            if scale > 1:
                img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
            sheet.paste(Image.fromarray(np.ascontiguousarray(img)), (x, y))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(out) as tmp:  # whole or not at all: a failed save left an earlier sheet cut short
        sheet.save(tmp, format="PNG")
    return out
