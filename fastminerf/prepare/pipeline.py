"""Orchestration of ``fastminerf prepare``: stages, per-video isolation of failures, resume.

For each video, into ``ROOT/<video name>/``:

1. **track** (:mod:`.tracking`): find the face in the first frames (in tiles when it is small: a wide shot), then
   decode at a constant frame rate and run mediapipe's face mesh on every frame, in the whole frame or, for a
   small face, in a square region around it. Cached as ``.prepare/track.npz``.
2. **frames**: choose one square crop for the whole video (head and shoulders of every frame, clamped to the
   frame), decode again cropped and resized by ffmpeg, segment each frame with a face, write ``frames/NNNNN.png``
   and ``masks/NNNNN.png``, the median background ``bg.png`` (:mod:`.background`) and ``audio.wav``. Marked done
   by ``.prepare/frames.json``.

Then, once for all videos: the shared face model (:mod:`.expression`, :mod:`.pose`): loaded from
``ROOT/expression_basis.npz`` when an earlier prepare wrote it, else fitted on every video that got this far.

3. **cameras**: each frame's head pose (perspective PnP of the person's neutral face, smoothed over time), its
   expression coefficients and face box; ``transforms_{train,val,test}.json`` (the last frames are ``val`` then
   ``test``), ``contact_sheet.png``, and last ``prepare.json``, the marker of a finished video.

Every marker and cache is written atomically, and each records the settings it was made with: an interrupted
prepare, run again, continues from the last finished stage of each video; a finished video is skipped. A video
that fails (unreadable, too few frames with a face) is reported with its error and the others go on; nothing
another video finished is touched. Folders that prepare did not write are never modified.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..audio import wav_seconds
from ..config import ArgumentValueError, PrepareConfig, as_paths, check_fps, counted
from ..data.layout import AUDIO_FILE, LANDMARKS_FILE, NPZ_ERRORS, PREPARE_DONE_FILE, PREPARE_FAILED_FILE, PREPARE_WORK_DIR
from ..data.writer import LOCK_NAME, check_folder, folder_locked, frame_record, make_folder, remove_if_unused, noted_on_interrupt, replaced_atomically, write_json, write_landmarks, write_png, write_transforms
from ..metrics import rotation_gap_deg
from . import background as _background
from .contact_sheet import write_contact_sheet
from .expression import BASIS_FILE, FIT_FRAMES_PER_VIDEO, ExpressionBasis, fit_basis
from .pose import (
    CHIN,
    FOREHEAD,
    FRAME_CHUNK,
    camera_to_head,
    evenly_spaced,
    fit_canonical,
    identity_neutral,
    landmark_visibility,
    project,
    scene_box,
    smooth_poses,
    solve_poses,
)
from .tracking import N_LANDMARKS, FaceTracker, Segmenter, find_face, require_mediapipe, track_frames
from .video import (TONE_MAP_COMMAND, VIDEO_SUFFIXES, VideoError, VideoInfo, extract_audio, probe, read_frames,
                    require_file, tone_maps, video_stream_seconds)

__all__ = ["PrepareError", "PrepareResult", "VideoResult", "check_prepare", "prepare"]

PathLike = Union[str, Path]
ProgressFn = Callable[[str, str, int, int], None]
"""``progress(stage, video_name, done, total)``; stage is ``track``, ``frames``, ``cameras`` or ``basis``;
``total`` is 0 while unknown."""

PREPARE_VERSION = 4
"""Version of what prepare writes; part of every stage's fingerprint, bumped when the output would change. (Faces
that fill the frame are tracked as before the tracking region existed, and ``track_region_scale`` is in the
fingerprint itself: still 2.) 3 and 4: as :data:`VERSION_CHANGES` says; a folder of an older version is refused until
``overwrite`` (:func:`_check_folder`), and a video prepared beside one is told (:func:`_older_folders`)."""

VERSION_CHANGES = {
    3: "limited-range video (nearly every camera's and phone's) is read 2 levels brighter, at the picture's own level, "
       "HDR video is tone-mapped to SDR and video of more than 8 bits keeps its colours at any crop",
    4: "the first frames of the video, and of each stretch after frames without a face, are tracked again once the "
       "tracker is warm (their landmarks and head poses came from the face detector's rougher start)",
}
"""What the output of each :data:`PREPARE_VERSION` shows otherwise than that of the version before it (said to the
user of an older folder, :func:`changes_since`)."""


def changes_since(version: object) -> str:
    """What today's prepare writes otherwise than prepare ``version`` did: the :data:`VERSION_CHANGES` after it."""
    older = version if isinstance(version, int) else 0
    return "; ".join(text for v, text in sorted(VERSION_CHANGES.items()) if v > older)


WORK_DIR = PREPARE_WORK_DIR
"""Hidden folder of per-stage caches inside each identity folder."""

DONE_FILE = PREPARE_DONE_FILE
"""Marker of a finished video: settings, counts, crop, timings. Written last; while it is missing the dataset
reader refuses the folder (:func:`fastminerf.data.layout.find_identity_dirs`)."""

CROP_SHIFT_DOWN = 0.15
"""The crop centre sits this many face heights below the face centre: room for neck and shoulders."""

CROP_COVER_MARGIN = 0.25
"""The crop also covers every frame's face box grown by this many face heights on each side."""

BBOX_MARGIN = 0.08
"""Face box = the landmarks' 2D extent grown by this fraction of its size on each side."""

SEARCH_FRAMES = (0, 12, 25, 50, 100)
"""Frames (at the output rate) in which the face is searched before tracking, until it is found."""

SHEET_COLUMNS = 4
"""Frames shown in each contact sheet."""

FACE_IN_CROP = 0.5
"""A frame whose crop holds less than this share of its face's landmarks counts as a frame without a face: the
person is leaving the picture (mediapipe keeps tracking a face mostly outside it, or outside the one fixed crop),
and the written frame would show little or none of the face under a head pose fitted to points off the image."""

LANDMARK_DEPTH_GAP = 0.05
"""A landmark counts as hidden behind another that projects onto it and lies this many face heights nearer."""

FACE_JUMP = 1.0
"""A tracked face whose centre moves more than this many face heights between two frames with a face at most
:data:`FACE_JUMP_SECONDS` apart is taken for another face (prepare says so): mediapipe, having lost the person it
tracked (hidden for a moment, turned away), found someone else in the picture and stays with them; or the video cuts
to another framing. A head moves far less from frame to frame: 0.045 at most in clip 05 and its dark, noisy, 4K,
60 fps and occluded variants, 0.11 across a cut from it to clip 03; 1.4 where the track jumped from clip 05 to clip 03
side by side."""

FACE_JUMP_SECONDS = 0.5
"""Frames with a face further apart than this (the person left the picture and came back) are not compared
(:data:`FACE_JUMP`)."""

CUT_SIGNATURE = 32
"""Frames are compared for cuts as grey thumbnails of this many pixels a side (of the tracked view)."""

CUT_RATIO = 4.0
"""A cut (an edit: another camera, another take) starts at a frame whose mean grey-level change from the frame before
is this many times the largest change between any other two neighbouring frames within :data:`CUT_WINDOW` frames,
and at least :data:`CUT_MIN_CHANGE` levels: one sudden change in a video that otherwise changes slowly. Head motion,
a pan or a fade changes over several frames; frames repeated by ``--fps`` above the video's rate change by nothing
between repeats, which the window looks past. Measured (32 px thumbnails of the whole frame): the nine real clips
reach 2.1, variants of clip 05 made dark, noisy, at 60 fps, interlaced or with a box over the mouth for a second
2.8; a cut from clip 05 to clip 03 14, from a black second to clip 05 47. A jump cut inside one shot (clip 05 from
2 s to 5 s: 2.5) is not found, and need not be: its head moves no more than in fast motion."""

ENLARGED_NOTE = 1.5
"""A video whose crop is enlarged more than this many times to the frames' size (a small webcam video's 120 px crop
to 256 px: 2.1x) gets a note: its frames are softer than their size says."""

CUT_SHORT_SECONDS = 0.5
"""A video whose picture decodes to this many seconds (and two frames) less than its video stream's header gives is
said to be cut short (:func:`_cut_short`)."""

CUT_WINDOW = 5
"""Frames on each side over which a cut's change is compared (:data:`CUT_RATIO`)."""

CUT_MIN_CHANGE = 2.0
"""Least mean change in grey levels (of 255) between two frames counted as a cut (:data:`CUT_RATIO`)."""


class PrepareError(ValueError):
    """A video cannot be prepared (too few usable frames, a folder prepare did not write, a settings clash).
    The message names the video."""


class PrepareSettingError(PrepareError, ArgumentValueError):
    """A bad :class:`PrepareConfig` setting: the message is '<field> <reason>' (``fps must be positive, got -1``), and
    ``fastminerf prepare`` names its option for the field instead (``--fps``)."""


@dataclass
class VideoResult:
    """What happened to one video."""

    name: str
    """Identity name (the video's file name without suffix) and folder name under the root."""
    video: Path
    """The source video."""
    status: str
    """``done`` (prepared now), ``skipped`` (finished by an earlier run with the same settings) or ``failed``."""
    error: Optional[str] = None
    """Why it failed."""
    out_dir: Optional[Path] = None
    """The identity folder (None when it failed before writing)."""
    frames_total: int = 0
    """Frames decoded (after frame-rate resampling and ``max_frames``)."""
    frames_used: int = 0
    """Frames with a face, written."""
    frames_dropped: int = 0
    """Frames without a face (or with one mostly outside the crop), dropped."""
    splits: Dict[str, int] = field(default_factory=dict)
    """Frames per split."""
    crop: Optional[Tuple[int, int, int]] = None
    """``(x0, y0, side)`` of the square crop, in source pixels."""
    notes: List[str] = field(default_factory=list)
    """Things a person should know (the crop was clamped to the frame, no audio, ...)."""
    fps: Optional[float] = None
    """Frame rate of the written frames."""
    seconds: Dict[str, float] = field(default_factory=dict)
    """Wall time of each stage run now."""
    contact_sheet: Optional[Path] = None
    """The contact sheet PNG."""
    pose_gaps: Dict[str, float] = field(default_factory=dict)
    """Per held-out split (``val``, ``test``): the mean angle in degrees from its frames' head poses to the nearest
    ``train`` one (:func:`fastminerf.metrics.rotation_gap_deg`). Large, the split shows the head from a side the
    training frames never do: its PSNR measures a new view, not only new expressions."""


@dataclass
class PrepareResult:
    """What :func:`prepare` did."""

    root: Path
    """The output folder."""
    videos: List[VideoResult]
    """One entry per video, in the order given."""
    basis: Optional[Path]
    """The shared face model file (None when no video got far enough to fit it)."""
    basis_reused: bool
    """Whether the face model was fitted by an earlier prepare on other videos (loaded from the root, or given): not
    when a rerun of the same videos (a resumed prepare) loads the one fitted on them."""
    expression_dim: int = 0
    """E."""
    expression_space: Optional[str] = None
    """The basis' :attr:`~.expression.ExpressionBasis.space_id` (``expression_space`` of every transforms file)."""

    @property
    def failed(self) -> List[VideoResult]:
        """The videos that failed."""
        return [v for v in self.videos if v.status == "failed"]


# ------------------------------------------------------------------------------------------------ helpers


def _video_digest(video: Path, digests: Optional[Dict[str, str]] = None) -> str:
    """The SHA-256 (hex) of the video file's bytes (reading it all, about a second per GB), from ``digests`` (by the
    path as given) when it is there, and added to it: a caller that looks for a finished folder and then prepares
    passes one dict to both (:func:`finished_folder`, :func:`prepare`), and the video is read once."""
    key = str(video)
    if digests is not None and key in digests:
        return digests[key]
    with open(video, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digests is not None:
        digests[key] = digest
    return digest


def _fingerprints(cfg: PrepareConfig, video: Path, digests: Optional[Dict[str, str]] = None) -> Dict[str, dict]:
    """The settings each stage depends on (cumulative), with the source file's size and content hash (not its
    modification time: a copied or re-downloaded file with the same bytes keeps what was prepared from it; hashing
    reads the file once, about a second per GB; :func:`_video_digest` with ``digests``)."""
    digest = _video_digest(video, digests)
    track = {"version": PREPARE_VERSION, "video_bytes": video.stat().st_size, "video_sha256": digest,
             "fps": cfg.fps, "max_frames": cfg.max_frames, "track_max_side": cfg.track_max_side,
             "track_region_scale": cfg.track_region_scale,
             "min_detection_confidence": cfg.min_detection_confidence,
             "min_tracking_confidence": cfg.min_tracking_confidence}
    frames = dict(track, size=cfg.size, crop_scale=cfg.crop_scale, segmentation_model=cfg.segmentation_model,
                  background_frames=cfg.background_frames, audio_rate=cfg.audio_rate)
    cameras = dict(frames, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, min_frames=cfg.min_frames,
                   focal_factor=cfg.focal_factor, pose_smoothing=cfg.pose_smoothing)
    return {"track": track, "frames": frames, "cameras": cameras}


def _read_json(path: Path) -> Optional[dict]:
    """A marker file's JSON object, or None when it is missing or cannot be one of prepare's markers (not JSON, not an
    object, a ``fingerprint`` that is no object): the stage it marks is then redone."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("fingerprint", {}), dict) else None


def _read_track(path: Path) -> Optional[np.ndarray]:
    """The landmarks (F, N_LANDMARKS, 3) of a track file, or None when it is missing or unreadable (cut short, damaged,
    another file in its place): the tracking stage is then redone, as for a video never tracked."""
    try:
        with np.load(path, allow_pickle=False) as z:
            lm = np.asarray(z["landmarks"])
    except (KeyError,) + NPZ_ERRORS:
        return None
    ok = lm.ndim == 3 and len(lm) > 0 and lm.shape[1:] == (N_LANDMARKS, 3) and lm.dtype.kind == "f"
    return lm if ok else None


def _ours(folder: Path) -> bool:
    return (folder / WORK_DIR).is_dir() or (folder / DONE_FILE).is_file()


def _clear(folder: Path) -> None:
    """Remove what prepare writes in an identity folder (only that)."""
    for sub in ("frames", "masks", WORK_DIR):
        if (folder / sub).is_dir():
            shutil.rmtree(folder / sub)
    for f in list(folder.glob("transforms_*.json")) + [folder / n for n in ("bg.png", AUDIO_FILE, "contact_sheet.png", LANDMARKS_FILE, DONE_FILE)]:
        if f.is_file():
            f.unlink()


def _refuse_foreign(folder: Path) -> bool:
    """Refuse a ``folder`` that is a file or holds files prepare did not write (before anything is written there, its
    lock included); whether it holds anything of prepare's (False: missing, empty, or the lock of a prepare alone)."""
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise PrepareError(f"{folder} exists and is not a folder")
    if not any(f.name != LOCK_NAME for f in folder.iterdir()):  # empty, or the lock of a prepare alone
        return False
    if not _ours(folder):
        raise PrepareError(f"{folder} holds files that fastminerf prepare did not write; refusing to write into it "
                           f"(choose another --out)")
    return True


def _check_folder(folder: Path, fp: Dict[str, dict], overwrite: bool) -> None:
    """Refuse folders prepare did not write; clear ours when it was made with other settings and ``overwrite``."""
    if not _refuse_foreign(folder):
        return
    stored = [(_read_json(folder / WORK_DIR / "track.json"), "track"), (_read_json(folder / WORK_DIR / "frames.json"), "frames"),
              (_read_json(folder / DONE_FILE), "cameras")]
    clash = [stage for data, stage in stored if data is not None and data.get("fingerprint") != fp[stage]]
    if clash:
        old = next(d for d, s in stored if s == clash[0])["fingerprint"]
        diff = sorted(k for k in set(old) | set(fp[clash[0]]) if old.get(k) != fp[clash[0]].get(k))
        if diff == ["version"] and stored[2][0] is None:  # an older prepare stopped in it: nothing trains, redo it
            overwrite = True
        if not overwrite:
            if diff == ["version"]:  # the same settings and file, an older reading of it: kept as it is (still data)
                raise PrepareError(f"{folder} was prepared by an older fastminerf (prepare version {old.get('version')}; "
                                   f"this one writes version {PREPARE_VERSION}: {changes_since(old.get('version'))}); it is kept as it is "
                                   f"and still trains as before; pass overwrite (--overwrite) to prepare it again as "
                                   f"today's (runs trained on its old frames will not resume on the new ones)")
            if "video_sha256" in diff:  # --overwrite would replace another video's (another person's) dataset
                raise PrepareError(f"{folder} was prepared from another video file of the same name; rename this "
                                   f"video or choose another --out (--overwrite would replace what is there)")
            raise PrepareError(f"{folder} was prepared with other settings or from another file ({', '.join(diff)} "
                               f"differ); pass overwrite (--overwrite) to prepare it again, or choose another --out")
        _clear(folder)


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> Dict[str, int]:
    n_test = 0 if test_fraction <= 0 else max(1, int(round(test_fraction * n)))
    n_val = 0 if val_fraction <= 0 else max(1, int(round(val_fraction * n)))
    # Rounded up, the held-out splits of a short video can take every frame (8 frames at 0.44 / 0.44: 4 + 4), and a
    # folder without transforms_train.json is no dataset: give frames back from the larger one, each keeping one
    # (n >= min_frames >= 3 leaves a training frame then).
    while n_val + n_test >= n and max(n_val, n_test) > 1:
        if n_val > n_test:
            n_val -= 1
        else:
            n_test -= 1
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


# ------------------------------------------------------------------------------------------------ stages


def _tracking_region(info: VideoInfo, fps: float, cfg: PrepareConfig) -> Tuple[Optional[Tuple[int, int, int]], Optional[str]]:
    """Where to track: ``(None, None)`` for the whole frame, or a square ``(x0, y0, side)`` in source pixels around
    a face that is small in the frame, with a note saying so.

    The face is looked for (:func:`.tracking.find_face`, whole frame then tiles) in the :data:`SEARCH_FRAMES`, at the
    video's own resolution, until it is found; a face found nowhere leaves the whole frame (tracking then reports
    the frames without one)."""
    if cfg.track_region_scale <= 0:
        return None, None
    want = set(SEARCH_FRAMES if cfg.max_frames is None else [k for k in SEARCH_FRAMES if k < cfg.max_frames])
    face = None
    for k, rgb in enumerate(read_frames(info.path, fps, max_frames=max(want) + 1 if want else 1)):
        if k in want:
            face = find_face(rgb, cfg.track_max_side, min_detection_confidence=cfg.min_detection_confidence)
            if face is not None:
                break
    if face is None:
        return None, None
    lo, hi = face[:, :2].min(axis=0), face[:, :2].max(axis=0)
    size = float(np.max(hi - lo))
    side = int(round(cfg.track_region_scale * size))
    side -= side % 2
    if side >= min(info.width, info.height) or side < 64:
        return None, None
    centre = (lo + hi) / 2
    x0 = int(round(min(max(centre[0] - side / 2, 0), info.width - side)))
    y0 = int(round(min(max(centre[1] - side / 2, 0), info.height - side)))
    note = (f"the face is small in the frame ({size:.0f} px in {info.width}x{info.height}, found in frame {k}): "
            f"tracked in a {side} px square around it at ({x0}, {y0})")
    return (x0, y0, side), note


def _track(info: VideoInfo, fps: float, cfg: PrepareConfig, work: Path, name: str, progress: Optional[ProgressFn]) -> dict:
    """Stage 1: landmarks of every frame (NaN where no face), in source pixels. Cached in ``track.npz``."""
    if progress is not None:
        progress("track", name, 0, 0)
    region, note = _tracking_region(info, fps, cfg)
    x0, y0 = (0, 0) if region is None else region[:2]
    sw, sh = (info.width, info.height) if region is None else (region[2], region[2])
    scale = min(1.0, cfg.track_max_side / max(sw, sh))
    tw, th = sw, sh
    if scale < 1.0:
        tw, th = max(2, int(round(sw * scale / 2)) * 2), max(2, int(round(sh * scale / 2)) * 2)
    expected = int(math.ceil(info.duration * fps)) if info.duration > 0 else 0
    if cfg.max_frames is not None:
        expected = min(expected, cfg.max_frames) if expected else cfg.max_frames
    signatures = []

    def each(i: int, rgb: np.ndarray) -> None:
        signatures.append(_signature(rgb))
        if progress is not None and (i % 10 == 0):
            progress("track", name, i + 1, max(expected, i + 1))

    with FaceTracker(cfg.min_detection_confidence, cfg.min_tracking_confidence) as tracker:
        found = track_frames(read_frames(info.path, fps, crop=region, size=None if scale == 1.0 else (tw, th),
                                         max_frames=cfg.max_frames), tracker, each=each)
    n = len(found)
    if n == 0:
        raise PrepareError(f"{info.path}: ffmpeg decoded no frames")
    lm = np.full((n, N_LANDMARKS, 3), np.nan, dtype=np.float32)
    for i, f in enumerate(found):
        if f is not None:
            lm[i] = f
    del found
    # Normalised coordinates of the tracked view -> source pixels (z scales like x); in place, no copy of every frame
    lm *= np.array([sw, sh, sw], dtype=np.float32)
    lm += np.array([x0, y0, 0], dtype=np.float32)
    with replaced_atomically(work / "track.npz", ".tmp.npz") as tmp:
        np.savez(tmp, landmarks=lm)
    if progress is not None:
        progress("track", name, n, n)
    face = np.isfinite(lm[:, 0, 0])  # a cut from or to frames without a face (a black start) parts no poses
    cuts = [k for k in _cuts(np.stack(signatures)) if face[:k].any() and face[k:].any()]
    notes = [note] if note else []
    short = _cut_short(info, n, fps, cfg.max_frames)
    if short:
        notes.append(short)
    if cuts:
        notes.append(f"the video cuts (a new shot starts) at frame{'s' if len(cuts) > 1 else ''} "
                     f"{', '.join(map(str, cuts))}: head poses are smoothed within each shot, not across")
    return {"frames": n, "region": None if region is None else list(region), "notes": notes, "cuts": cuts,
            "cut_short": short}


def _cut_short(info: VideoInfo, n: int, fps: float, max_frames: Optional[int]) -> Optional[str]:
    """A note when the ``n`` frames decoded at ``fps`` stop short of the length the video stream's header gives
    (:func:`.video.video_stream_seconds`) by more than :data:`CUT_SHORT_SECONDS` and two frames: the file was cut off
    (an interrupted download or copy), and ffmpeg decodes what is there without an error; None otherwise."""
    if max_frames is not None and n >= max_frames:
        return None
    whole = video_stream_seconds(info.path)
    decoded = n / fps
    if whole is None or whole - decoded <= max(CUT_SHORT_SECONDS, 2.0 / fps):
        return None
    return (f"the file is cut short (an interrupted download or copy?): its picture decodes to {decoded:.2f} s of its "
            f"{whole:.2f} s (the length its video stream's header gives); the {counted(n, 'frame')} that decode are "
            f"prepared")


def _signature(rgb: np.ndarray) -> np.ndarray:
    """A frame's grey thumbnail (:data:`CUT_SIGNATURE` px a side, float32), to find cuts."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (CUT_SIGNATURE, CUT_SIGNATURE), interpolation=cv2.INTER_AREA).astype(np.float32)


def _cuts(signatures: np.ndarray) -> List[int]:
    """The frames at which a new shot starts (:data:`CUT_RATIO`), from the frames' :func:`_signature`."""
    change = np.abs(np.diff(signatures, axis=0)).mean(axis=(1, 2))  # change[k]: frame k to frame k + 1
    cuts = []
    for k, c in enumerate(change):
        around = np.r_[change[max(0, k - CUT_WINDOW):k], change[k + 1:k + 1 + CUT_WINDOW]]
        usual = float(around.max()) if len(around) else 0.0
        if c >= CUT_MIN_CHANGE and c >= CUT_RATIO * usual:
            cuts.append(k + 1)
    return cuts


def _choose_crop(lm: np.ndarray, width: int, height: int, crop_scale: float) -> Tuple[Tuple[int, int, int], Optional[str]]:
    """One square crop ``(x0, y0, side)`` in source pixels for the whole video, and a note when it had to be
    clamped to the frame."""
    ok = np.isfinite(lm[:, 0, 0])
    pts = lm[ok, :, :2]
    lo, hi = pts.min(axis=1), pts.max(axis=1)  # (B, 2) face boxes
    face_h = np.linalg.norm(pts[:, FOREHEAD] - pts[:, CHIN], axis=1)
    h = float(np.percentile(face_h, 90))
    centre = np.median((lo + hi) / 2, axis=0) + np.array([0.0, CROP_SHIFT_DOWN * h])
    side = crop_scale * h
    # Also every frame's face box with a margin (a head that moves a lot).
    need_lo = lo.min(axis=0) - CROP_COVER_MARGIN * h
    need_hi = hi.max(axis=0) + CROP_COVER_MARGIN * h
    side = max(side, 2 * float(np.max(np.maximum(centre - need_lo, need_hi - centre))))
    wanted = side
    note = None
    side = int(min(round(side), width, height))
    side -= side % 2
    if wanted > min(width, height) + 1:  # the frame limits it (not the rounding down to even pixels)
        note = (f"the video frames the face more tightly than head and shoulders (a {wanted:.0f} px square was wanted "
                f"in a {width}x{height} frame): cropped to the largest square that fits")
    x0 = int(round(min(max(centre[0] - side / 2, 0), width - side)))
    y0 = int(round(min(max(centre[1] - side / 2, 0), height - side)))
    return (x0, y0, side), note


def _face_in_crop(lm: np.ndarray, crop: Sequence[int]) -> np.ndarray:
    """``(B,)`` bool: the frames with a face of which at least :data:`FACE_IN_CROP` of the landmarks (source pixels,
    NaN where no face) lie inside the square ``crop`` ``(x0, y0, side)``: the frames that are written."""
    x0, y0, side = crop
    p = lm[:, :, :2].astype(np.float64) - np.array([x0, y0], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        inside = ((p >= 0) & (p <= side)).all(axis=2).mean(axis=1)
    return np.isfinite(lm[:, 0, 0]) & (inside >= FACE_IN_CROP)


def _frames(info: VideoInfo, fps: float, cfg: PrepareConfig, out: Path, lm: np.ndarray, name: str,
            progress: Optional[ProgressFn]) -> dict:
    """Stage 2: crop, segment and write frames, masks, background and audio (frames whose face is mostly outside the
    crop are not written: :func:`_face_in_crop`)."""
    crop, note = _choose_crop(lm, info.width, info.height, cfg.crop_scale)
    ok = _face_in_crop(lm, crop)
    outside = int(np.isfinite(lm[:, 0, 0]).sum() - ok.sum())
    if ok.sum() < cfg.min_frames:
        raise PrepareError(f"{info.path}: the face lies inside the crop ({crop[2]} px at ({crop[0]}, {crop[1]})) in "
                           f"only {int(ok.sum())} of {len(lm)} frames (at least {cfg.min_frames} needed; it is elsewhere "
                           f"in {outside}): the person moves too far across the picture for one fixed crop; cut the "
                           f"video to the part where they stay in place")
    used = np.flatnonzero(ok)
    bg_pick = set(used[evenly_spaced(len(used), cfg.background_frames)].tolist())
    size = cfg.size
    for sub in ("frames", "masks"):
        (out / sub).mkdir(exist_ok=True)
    bg_frames, bg_masks = [], []
    done = 0
    with Segmenter(cfg.segmentation_model) as segment:
        for i, rgb in enumerate(read_frames(info.path, fps, crop=crop, size=(size, size), max_frames=len(lm))):
            if i >= len(lm) or not ok[i]:
                continue
            person = segment(rgb)
            mask = np.clip(np.rint(person * 255.0), 0, 255).astype(np.uint8)
            write_png(out / "frames" / f"{i:05d}.png", rgb, cfg.png_compress_level)
            write_png(out / "masks" / f"{i:05d}.png", mask, cfg.png_compress_level)
            if i in bg_pick:
                bg_frames.append(rgb.copy())
                bg_masks.append(person)
            done += 1
            if progress is not None and done % 10 == 0:
                progress("frames", name, done, len(used))
    missing = [int(i) for i in used if not (out / "frames" / f"{i:05d}.png").is_file()]
    if missing:
        raise PrepareError(f"{info.path}: the second decode gave fewer frames than the first (frame {missing[0]} "
                           f"missing); the file may be damaged")
    bg, seen = _background.median_background(np.stack(bg_frames), np.stack(bg_masks))
    write_png(out / "bg.png", bg, cfg.png_compress_level)
    notes = [note] if note else []
    if size > ENLARGED_NOTE * crop[2]:  # softer frames than the size says: detail a smaller video never held
        notes.append(f"its {crop[2]} px crop (of a {info.width}x{info.height} video) is enlarged "
                     f"{size / crop[2]:.1f}x to {size} px frames (--size): they hold no more detail than the crop, "
                     f"softer than frames of a larger video at that size; prepare a larger video of the person, or this "
                     f"one at --size {crop[2]} or below, for frames as sharp as their size")
    if outside:
        notes.append(f"{counted(outside, 'frame')} where the face lies outside the crop (mostly out of the picture) "
                     f"{'was' if outside == 1 else 'were'} dropped")
    if info.has_audio:
        try:
            extract_audio(info.path, out / AUDIO_FILE, cfg.audio_rate, duration=len(lm) / fps)
        except VideoError as exc:  # the pictures are a dataset without their sound; speech needs it, training not
            notes.append(f"its audio track could not be decoded, no audio.wav ({exc})")
        else:  # a sound track that stops before the picture: the frames after it have no sound (frame i at i / fps)
            heard = wav_seconds(out / AUDIO_FILE)  # from its header: the samples are not needed
            mute = used[used / fps >= heard]
            if mute.size:
                notes.append(f"its sound track ends at {heard:.2f} s, before the picture: {counted(mute.size, 'frame')} "
                             f"(from {mute[0] / fps:.2f} s on) {'has' if mute.size == 1 else 'have'} no sound (speech leaves them out, a driven video "
                             f"is silent there)")
    else:
        notes.append("the video has no audio track: no audio.wav")
    if progress is not None:
        progress("frames", name, len(used), len(used))
    return {"crop": list(crop), "notes": notes, "background_seen": float(seen.mean())}


def _reprojection_px(points: np.ndarray, c2w: np.ndarray, intrinsics: Sequence[float], tracked: np.ndarray) -> np.ndarray:
    """``(B, K)`` pixel distances between head-space ``points`` (``(K, 3)`` for every frame, or ``(B, K, 3)`` each
    frame's own) seen through the frames' cameras ``c2w (B, 4, 4)`` and the ``tracked (B, K, 2)`` ones, computed
    :data:`~.pose.FRAME_CHUNK` frames at a time (a long video's projection is several copies of its landmarks)."""
    err = np.empty(tracked.shape[:2], dtype=np.float64)
    for s in range(0, len(err), FRAME_CHUNK):
        pts = points if points.ndim == 2 else points[s:s + FRAME_CHUNK]
        uv = project(pts, c2w[s:s + FRAME_CHUNK].astype(np.float64), intrinsics)
        err[s:s + FRAME_CHUNK] = np.linalg.norm(uv - tracked[s:s + FRAME_CHUNK], axis=2)
    return err


def _landmarks_in_crop(lm: np.ndarray, crop: Sequence[int], size: int) -> np.ndarray:
    """Source-pixel landmarks ``(B, K, 3)`` to pixels of the written frames (u, v, and w scaled like u)."""
    x0, y0, side = crop
    out = lm.astype(np.float64)  # the one copy, then in place
    out -= np.array([x0, y0, 0.0])
    out *= size / side
    return out


def _cameras(out: Path, name: str, lm: np.ndarray, frame_ids: np.ndarray, fps: float, cfg: PrepareConfig,
             basis: ExpressionBasis, neutral: np.ndarray, aligned: np.ndarray, cuts: Sequence[int] = ()) -> dict:
    """Stage 3: poses, expressions, face boxes, transforms files and the contact sheet. ``lm`` holds the used
    frames' landmarks in pixels of the written frames; ``cuts`` the frames at which a new shot starts (poses are
    smoothed within each shot)."""
    import imageio.v3 as iio

    size = cfg.size
    focal = cfg.focal_factor * size
    intrinsics = [focal, focal, 0.5 * size, 0.5 * size]
    poses = solve_poses(lm, neutral, basis.stable, intrinsics)
    shot = np.searchsorted(np.asarray(cuts, np.int64), frame_ids, side="right")
    poses = smooth_poses(poses, frame_ids, cfg.pose_smoothing, shot)
    c2w = camera_to_head(poses)
    expr = basis.coefficients(aligned, neutral)
    lo, hi = lm[:, :, :2].min(axis=1), lm[:, :, :2].max(axis=1)
    grow = BBOX_MARGIN * (hi - lo)
    lo, hi = np.clip((lo - grow) / size, 0, 1), np.clip((hi + grow) / size, 0, 1)
    bbox = np.stack([lo[:, 1], hi[:, 1], lo[:, 0], hi[:, 0]], axis=1)
    aabb = scene_box(c2w, intrinsics, size, basis.canonical, basis.face_height)
    # float32 values, so that what is written is what is read back
    c2w32, expr32, bbox32 = c2w.astype(np.float32), expr.astype(np.float32), bbox.astype(np.float32)
    sizes = _split_sizes(len(frame_ids), cfg.val_fraction, cfg.test_fraction)
    start = 0
    pose_gaps = {}  # held-out split -> mean angle of its head poses to the nearest training one
    for split in ("train", "val", "test"):
        n = sizes[split]
        stale = out / f"transforms_{split}.json"
        if n == 0:
            stale.unlink(missing_ok=True)
            continue
        recs = [frame_record(f"frames/{i:05d}.png", c2w32[j], expr32[j], mask_path=f"masks/{i:05d}.png",
                             bbox=bbox32[j], frame_index=int(i), time=float(i) / fps)
                for j, i in ((j, frame_ids[j]) for j in range(start, start + n))]
        write_transforms(out, split, recs, intrinsics=intrinsics, width=size, height=size, aabb=aabb,
                         expression_names=basis.names, fps=fps, background="bg.png", expression_space=basis.space_id)
        if split != "train" and sizes["train"]:
            pose_gaps[split] = float(rotation_gap_deg(c2w32[start:start + n, :3, :3], c2w32[:sizes["train"], :3, :3]).mean())
        start += n
    # Re-projection of the neutral face's rigid landmarks through the written cameras: the tracking check.
    err = _reprojection_px(neutral[basis.stable], c2w32, intrinsics, lm[:, basis.stable, :2])
    # Every frame's own landmarks (pose removed, expression kept) in head space: training's depth prior.
    visible = landmark_visibility(aligned, c2w32, intrinsics, LANDMARK_DEPTH_GAP * basis.face_height)
    write_landmarks(out, frame_ids, aligned, visible)
    lm_err = _reprojection_px(aligned, c2w32, intrinsics, lm[:, :, :2])
    show = evenly_spaced(len(frame_ids), SHEET_COLUMNS)
    sheet = write_contact_sheet(
        out / "contact_sheet.png", name,
        [np.asarray(iio.imread(out / "frames" / f"{frame_ids[j]:05d}.png")) for j in show],
        [np.asarray(iio.imread(out / "masks" / f"{frame_ids[j]:05d}.png")) for j in show],
        [lm[j] for j in show], [c2w[j] for j in show], neutral, basis.stable, intrinsics,
        np.asarray(iio.imread(out / "bg.png")), c2w, expr,
        labels=[f"frame {frame_ids[j]:05d}, {frame_ids[j] / fps:.1f} s, "
                f"{'train' if j < sizes['train'] else 'val' if j < sizes['train'] + sizes['val'] else 'test'}"
                for j in show],
    )
    return {"splits": sizes, "pose_gaps": pose_gaps, "aabb": aabb, "intrinsics": intrinsics, "contact_sheet": str(sheet.name),
            "reprojection_px": {"median": float(np.median(err)), "p95": float(np.percentile(err, 95))},
            "landmarks": {"file": LANDMARKS_FILE, "visible": float(visible.mean()),
                          "reprojection_px": {"median": float(np.median(lm_err)), "p95": float(np.percentile(lm_err, 95))}}}


# ------------------------------------------------------------------------------------------------ prepare


def _names(videos: Sequence[Path]) -> List[str]:
    names = [v.stem for v in videos]
    seen: Dict[str, Path] = {}
    for v, n in zip(videos, names):
        if n in seen:
            raise PrepareError(f"{v} and {seen[n]} would both become identity '{n}'; rename one of them")
        seen[n] = v
    return names


def _basis_id(basis: ExpressionBasis) -> dict:
    """What a finished video's marker records of the root's basis its cameras were fitted with."""
    return {"file": BASIS_FILE, "canonical_sum": float(np.abs(basis.canonical).sum()), "dim": basis.dim,
            "space": basis.space_id}


def finished_folder(video: PathLike, out_dir: PathLike, cfg: PrepareConfig = PrepareConfig(),
                    digests: Optional[Dict[str, str]] = None) -> Optional[Path]:
    """The identity folder of ``video`` in ``out_dir`` when an earlier :func:`prepare` finished it with ``cfg``'s
    settings, from the same file and with ``out_dir``'s basis (what prepare would skip as ``skipped``), else None.
    Reads only: a folder the caller cannot write (a shared, read-only run's cached driver) is found all the same.
    ``digests``: as :func:`prepare`'s (the video's content hash, read from it and added to it)."""
    try:
        path = Path(video)
        out = Path(out_dir) / _names([path])[0]
        done = _read_json(out / DONE_FILE)
        if done is None or not (Path(out_dir) / BASIS_FILE).is_file() or not (out / LANDMARKS_FILE).is_file():
            return None
        basis = ExpressionBasis.load(out_dir)
        if cfg.basis is not None and ExpressionBasis.load(cfg.basis).space_id != basis.space_id:
            return None
        same = done.get("fingerprint") == _fingerprints(cfg, path, digests)["cameras"] and done.get("basis") == _basis_id(basis)
    except (PrepareError, OSError, ValueError):
        return None
    return out if same else None


def check_prepare(videos: Union[PathLike, Sequence[PathLike]], out_dir: PathLike,
                  cfg: PrepareConfig = PrepareConfig()) -> Tuple[List[Path], List[str], Optional[ExpressionBasis]]:
    """What :func:`prepare` refuses before any work, for a caller to check first (``fastminerf prepare`` before it
    opens its log in ``out_dir`` and draws its progress): the settings, mediapipe, the videos' names, an ``out_dir``
    that is a file, and ``cfg.basis`` (read, and of the space a basis in ``out_dir`` is in). Writes nothing.

    Returns:
        The videos' paths, their identity names and the basis ``cfg.basis`` names (None without one).

    Raises:
        MediapipeMissing, PrepareError: as :func:`prepare`.
    """
    if cfg.size < 16:
        raise PrepareSettingError("size", f"must be at least 16 pixels, got {cfg.size}")
    for name in ("val_fraction", "test_fraction"):
        if not getattr(cfg, name) >= 0:  # NaN too
            raise PrepareSettingError(name, f"must be a number >= 0, got {getattr(cfg, name)}")
        if not getattr(cfg, name) < 0.9:  # too large alone: this share's, not the other's (the sum's check below)
            raise PrepareSettingError(name, f"must be below 0.9, got {getattr(cfg, name)}")
    if not cfg.val_fraction + cfg.test_fraction < 0.9:  # frames left to train on
        raise PrepareSettingError("test_fraction", f"must be below 0.9 minus the val fraction ({cfg.val_fraction}), "
                                  f"got {cfg.test_fraction}")
    if cfg.min_frames < 3:
        raise PrepareSettingError("min_frames", f"must be at least 3 (train, val and test frames), got {cfg.min_frames}")
    # Checked here, once: ffmpeg would refuse a bad rate in every video with a screenful of its log, and take a
    # negative frame limit for none.
    if cfg.fps is not None:  # 1e9 tracked on, ffmpeg asked for a billion frames a second
        try:
            check_fps(cfg.fps)
        except ArgumentValueError as exc:
            raise PrepareSettingError(exc.name, f"{exc.reason} (or None for each video's own)") from None
    if cfg.max_frames is not None and cfg.max_frames < 1:
        raise PrepareSettingError("max_frames", f"must be at least 1 (or None for all frames), got {cfg.max_frames}")
    # Used only after tracking (the crop) or once every video is written (the basis, the cameras): a bad value
    # failed there, after the work, or wrote broken cameras.
    if cfg.expression_dim < 1:
        raise PrepareSettingError("expression_dim", f"must be at least 1, got {cfg.expression_dim}")
    if cfg.audio_rate < 1:  # extract_audio would read no rate as the sound's own
        raise PrepareSettingError("audio_rate", f"must be at least 1 Hz, got {cfg.audio_rate}")
    for name in ("focal_factor", "crop_scale"):
        if not (getattr(cfg, name) > 0 and math.isfinite(getattr(cfg, name))):
            raise PrepareSettingError(name, f"must be a positive number, got {getattr(cfg, name)}")
    # NaN or infinity failed a video once its face was found (the region's side, int(round(scale x face size))); a
    # negative scale tracked the whole frame, as 0 asks, silently
    if not (cfg.track_region_scale >= 0 and math.isfinite(cfg.track_region_scale)):
        raise PrepareSettingError("track_region_scale", f"must be a number >= 0 (0 tracks the whole frame), got "
                                  f"{cfg.track_region_scale}")
    paths = as_paths(videos, "videos", "video files")  # one path (str or Path) is one video
    require_mediapipe()  # fail once, before any video, when it is missing
    if not paths:
        raise PrepareError("no videos given")
    names = _names(paths)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():  # e.g. the video's name typed for the folder's: mkdir's bare 'File exists'
        raise PrepareError(f"{root} is a file, not a folder: give the folder the dataset goes in (--out), one identity "
                           "folder per video")
    check_folder(root, "the dataset", PrepareError)  # a read-only place: before its log is opened, in words
    given = None
    if cfg.basis is not None:
        try:
            given = ExpressionBasis.load(cfg.basis)
        except ValueError as exc:
            raise PrepareError(f"--basis: {exc}") from None
        held = ExpressionBasis.load(root).space_id if (root / BASIS_FILE).is_file() else given.space_id
        if held != given.space_id:
            raise PrepareError(f"{root / BASIS_FILE} (space {held}) is not the basis given ({cfg.basis}, space "
                               f"{given.space_id}): one folder holds one expression space")
    return paths, names, given


@noted_on_interrupt("with the stages each video finished kept in {out_dir}: rerun the same command to continue from them")
def prepare(
    videos: Union[PathLike, Sequence[PathLike]],
    out_dir: PathLike,
    cfg: PrepareConfig = PrepareConfig(),
    progress: Optional[ProgressFn] = None,
    digests: Optional[Dict[str, str]] = None,
) -> PrepareResult:
    """Turn talking-face videos into identity folders of the shared layout, with one shared expression space.

    Args:
        videos: video files (mp4, mov, webm, ...), or one (a str or Path); each becomes
            ``out_dir/<file name without suffix>/``.
        out_dir: the dataset root (created when missing). An ``expression_basis.npz`` already there is reused.
        cfg: settings (:class:`fastminerf.config.PrepareConfig`).
        progress: ``progress(stage, video_name, done, total)``.
        digests: the videos' SHA-256 (hex), by path as given, that a caller has already read (the skip check hashes
            each video, about a second per GB): each found there is not read again, each read is added. One dict
            passed to :func:`finished_folder` and then here reads a video once.

    Returns:
        A :class:`PrepareResult`: per video ``done``, ``skipped`` (finished earlier) or ``failed`` with the error.

    Raises:
        MediapipeMissing: mediapipe 0.10.21 is not installed (the message says how to install it).
        PrepareError: two videos would get the same name, settings are invalid, or ``out_dir`` is a file.
    """
    paths, names, given = check_prepare(videos, out_dir, cfg)
    root = Path(out_dir)
    made = make_folder(root)
    if given is not None and not (root / BASIS_FILE).is_file():
        given.save(root)
    results = [VideoResult(n, p, "pending") for n, p in zip(names, paths)]
    state: Dict[str, dict] = {}
    with ExitStack() as held:  # the identity folders this call writes, locked until it ends
        held.callback(remove_if_unused, made)  # a root made for videos that all failed at once (no such file): gone
        # Stages 1 and 2, each video on its own.
        for res in results:
            try:
                state[res.name] = _prepare_frames(res, root, cfg, progress, held, digests)
            except (PrepareError, VideoError, OSError) as exc:
                _failed(res, str(exc))

        # The shared face model.
        basis_path = root / BASIS_FILE
        stored = basis_path.is_file()
        ready = [r for r in results if r.status == "pending"]
        if not ready:  # a basis already there is named as it is (its size, its space)
            kept = ExpressionBasis.load(root) if stored else None
            return PrepareResult(root, results, basis_path if stored else None, stored,
                                 kept.dim if kept is not None else 0, kept.space_id if kept is not None else None)
        t0 = time.perf_counter()
        basis = None
        if not stored:
            if progress is not None:
                progress("basis", "", 0, 1)
            fitted = _fit_basis(ready, state, cfg)
            try:
                fitted.save(root, exclusive=True)
                basis, reused = fitted, False
            except FileExistsError:  # another prepare into this root (a thread, a job) saved its own meanwhile: use it
                pass
            if progress is not None:
                progress("basis", "", 1, 1)
        if basis is None:
            basis = ExpressionBasis.load(root)
            reused = not basis.fitted_on or not {r.name for r in ready} <= set(basis.fitted_on)
        basis_seconds = time.perf_counter() - t0
        basis_id = _basis_id(basis)

        # Stage 3 per video.
        for res in ready:
            st = state[res.name]
            try:
                if progress is not None:
                    progress("cameras", res.name, 0, 1)
                t0 = time.perf_counter()
                fp = st["fingerprints"]["cameras"]
                done = _read_json(st["out"] / DONE_FILE)
                if (done is not None and done.get("fingerprint") == fp and done.get("basis") == basis_id
                        and (st["out"] / LANDMARKS_FILE).is_file()):  # folders of older versions gain their landmarks
                    res.status = "skipped"
                    info = done
                else:
                    # not finished until written again: stopped part way, the folder must not read as data
                    (st["out"] / DONE_FILE).unlink(missing_ok=True)
                    neutral, aligned = identity_neutral(st["lm"], basis.canonical, basis.stable)
                    info = _cameras(st["out"], res.name, st["lm"], st["ids"], st["fps"], cfg, basis, neutral, aligned,
                                    st["cuts"])
                    res.status = "done"
                    res.seconds["cameras"] = time.perf_counter() - t0 + basis_seconds / len(ready)
                    info = dict(info, fingerprint=fp, basis=basis_id, name=res.name, video=str(res.video), fps=st["fps"],
                                frames_total=st["frames_total"], frames_used=len(st["ids"]),
                                frames_dropped=st["frames_total"] - len(st["ids"]), crop=st["crop"], notes=st["notes"],
                                settings=asdict(cfg), expression_dim=basis.dim)
                    write_json(st["out"] / DONE_FILE, info)
                res.splits = dict(info["splits"])
                res.pose_gaps = dict(info.get("pose_gaps", {}))  # folders of older versions have none
                res.contact_sheet = st["out"] / info["contact_sheet"]
                if progress is not None:
                    progress("cameras", res.name, 1, 1)
            except (PrepareError, OSError, ValueError) as exc:
                _failed(res, str(exc))
        return PrepareResult(root, results, basis_path, reused, basis.dim, basis.space_id)


def _failed(res: VideoResult, error: str) -> None:
    """Mark ``res`` failed with ``error``, and its folder, when prepare began it, as one it failed on (the dataset
    reader then leaves it out of its root instead of refusing the root as a prepare stopped part way)."""
    res.status, res.error = "failed", error
    work = None if res.out_dir is None else res.out_dir / WORK_DIR
    if work is not None and work.is_dir() and not (res.out_dir / DONE_FILE).is_file():
        try:
            write_json(work / PREPARE_FAILED_FILE, {"error": error})
        except OSError:  # a full disk: the folder reads as stopped, which a rerun mends too
            pass


def repeats_note(fps: float, own_fps: float) -> Optional[str]:
    """prepare's note of a video read at ``fps`` above its own rate ``own_fps`` (ffmpeg's fps filter fills the higher
    rate with repeats of its pictures: nothing new in them), or None when under 1 % of the frames are copies (not one
    in a thousand: --fps 30 of a 29.97 fps phone video, which the note would say as 0%). Render words it for a driver
    (:func:`fastminerf.render.driver_notes` recognises it)."""
    repeated = 1 - own_fps / fps
    if repeated < 0.01:
        return None
    return (f"{fps:g} fps (--fps) is above the video's own rate ({own_fps:g} fps): ffmpeg repeats its pictures to fill "
            f"it, {repeated:.0%} of the frames a copy of the one before (no motion, nothing new to learn); --fps "
            f"{own_fps:g} or below reads each picture at most once")


def _prepare_frames(res: VideoResult, root: Path, cfg: PrepareConfig, progress: Optional[ProgressFn],
                    held: ExitStack, digests: Optional[Dict[str, str]] = None) -> dict:
    """Stages 1 and 2 of one video (each skipped when its marker matches); returns what stage 3 needs. Its identity
    folder is locked (:func:`folder_locked`) until ``held`` closes, before it is looked at: another prepare writing it
    now fails this video (by name and process) instead of writing the folder with it."""
    require_file(res.video)  # before the name's suffix: a missing 'clip.txt' is missing
    if res.video.suffix.lower() not in VIDEO_SUFFIXES:
        raise PrepareError(f"{res.video}: not a video file name (expected one of {', '.join(VIDEO_SUFFIXES)})")
    info = probe(res.video, cfg.fps)
    out = root / res.name
    fp = _fingerprints(cfg, res.video, digests)
    _refuse_foreign(out)  # before the lock: a folder prepare did not write (or a file) is never touched
    out.mkdir(parents=True, exist_ok=True)
    held.enter_context(folder_locked(out, lambda holder: PrepareError(
        f"{out} is being written by another prepare{holder}: wait for it to end, then rerun this one (it "
        "continues from what is there), or prepare into another --out")))
    _check_folder(out, fp, cfg.overwrite)
    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    (work / PREPARE_FAILED_FILE).unlink(missing_ok=True)  # begun again: stopped now, it is a stopped prepare
    res.out_dir = out
    fps = float(cfg.fps) if cfg.fps else info.fps
    if not cfg.fps:  # a high-speed camera's 1200 fps was written as the data's fps, which its reader then refused
        try:
            check_fps(fps)
        except ArgumentValueError as exc:
            raise PrepareError(f"{res.video}: the video's frame rate {exc.reason}: give fps (--fps), e.g. 25, to read "
                               "it at that rate") from None
    res.fps = fps

    track = _read_json(work / "track.json")
    lm = _read_track(work / "track.npz") if track is not None and track.get("fingerprint") == fp["track"] else None
    if lm is None:
        t0 = time.perf_counter()
        track = dict(_track(info, fps, cfg, work, res.name, progress), fingerprint=fp["track"])
        write_json(work / "track.json", track)
        res.seconds["track"] = time.perf_counter() - t0
        with np.load(work / "track.npz") as z:
            lm = z["landmarks"]
    ok = np.isfinite(lm[:, 0, 0])
    res.frames_total, res.frames_used = int(len(lm)), int(ok.sum())
    res.frames_dropped = res.frames_total - res.frames_used
    short = f"; {track['cut_short']}" if track.get("cut_short") else ""  # not a short video: a file cut off
    if res.frames_used < cfg.min_frames and res.frames_used == res.frames_total:
        own = f"the video's own rate: {info.fps:g} fps; " if fps != info.fps else ""  # the rate --fps made them at
        raise PrepareError(f"{res.video}: only {res.frames_total} frames at {fps:g} fps ({own}at least {cfg.min_frames} "
                           f"needed; a face was found in every one){short}")
    if res.frames_used < cfg.min_frames:
        raise PrepareError(
            f"{res.video}: a face was found in only {res.frames_used} of {res.frames_total} frames (at least "
            f"{cfg.min_frames} needed). mediapipe's bundled detector is short-range: the face must fill a good part of "
            f"the frame (about a fifth of its height or more); crop the video around the face and try again{short}")

    frames = _read_json(work / "frames.json")
    if frames is None or frames.get("fingerprint") != fp["frames"]:
        t0 = time.perf_counter()
        frames = dict(_frames(info, fps, cfg, out, lm, res.name, progress), fingerprint=fp["frames"])
        write_json(work / "frames.json", frames)
        res.seconds["frames"] = time.perf_counter() - t0
    res.crop = tuple(frames["crop"])
    res.notes = list(track.get("notes", [])) + list(frames["notes"])
    repeats = repeats_note(fps, info.fps)
    if repeats is not None:
        res.notes.append(repeats)
    if info.transfer is not None:  # the frames' colours are not the file's code values: say what was done to them
        hdr = f"the video is HDR ({'PQ' if info.transfer == 'smpte2084' else 'HLG'}, {info.transfer}, as phones record " \
              "by default)"
        if tone_maps():
            res.notes.append(f"{hdr}: its frames were tone-mapped to BT.709 SDR by ffmpeg (zscale, tonemap=mobius), "
                             "HDR's reference white (203 nits) as white, brighter highlights rolled off")
        else:
            res.notes.append(f"{hdr}: its frames are NOT converted to BT.709 SDR (the ffmpeg imageio-ffmpeg runs, "
                             "IMAGEIO_FFMPEG_EXE's, has no zscale / tonemap filter) and look grey and washed out; make "
                             f"an SDR copy with imageio-ffmpeg's ffmpeg and prepare it with --overwrite: {TONE_MAP_COMMAND}")
    faceless = _no_face_note(np.flatnonzero(~np.isfinite(lm[:, 0, 0])), fps)
    if faceless:
        res.notes.append(faceless)
    jump = _face_jump(lm, fps)
    if jump is not None:  # the frames of the face outside the crop are dropped: which person this is, is a choice
        k, a, b, heights = jump
        x0, y0, side = frames["crop"]
        res.notes.append(
            f"the tracked face jumps at frame {k} from ({a[0]:.0f}, {a[1]:.0f}) to ({b[0]:.0f}, {b[1]:.0f}) px "
            f"({heights:.1f} face heights): another person in the picture (mediapipe lost the one it tracked, hidden "
            f"or turned away, and found them) or a cut to another framing. This identity is the face inside the crop "
            f"({side} px at ({x0}, {y0})); if that is the wrong person, crop the video to the right one "
            f"(ffmpeg -vf crop=W:H:X:Y) and prepare it again with --overwrite")
    older = _older_folders(root, res.name)
    if older:  # one root, two readings of colour: the people would differ by how they were read, not how they look
        res.notes.append(f"{root} holds identities prepared by an older fastminerf ({', '.join(f'{n} (version {v})' for n, v in older.items())}), "
                         f"whose frames were read or tracked otherwise than this one's (version {PREPARE_VERSION}: "
                         f"{changes_since(min(older.values()))}); "
                         f"for one reading, prepare {', '.join(older)} again with --overwrite")
    sizes = _other_sizes(root, res.name)
    other = {n: s for n, s in sizes.items() if s != cfg.size}
    if other:  # a forgotten --size: they train together, each person at its own size, which may not be meant
        # the size most people have, this one included (the smallest of a tie): those at another size would differ
        every = list(sizes.values()) + [cfg.size]
        common = max(sorted(set(every)), key=every.count)
        rest = [n for n, s in other.items() if s != common]
        if common == cfg.size:
            fix = f"prepare {', '.join(rest)} again with --size {common} --overwrite"
        else:
            fix = (f"prepare this video again with --size {common} --overwrite"
                   + (f", and {', '.join(rest)} likewise" if rest else ""))
        res.notes.append(f"{root} holds identities prepared at another size ({', '.join(f'{n} ({s} px)' for n, s in other.items())}) "
                         f"than this one ({cfg.size} px): they train and evaluate together, each at its own size; "
                         f"for one size, {fix}")
    ok = _face_in_crop(lm, frames["crop"])  # the frames stage wrote these
    res.frames_used = int(ok.sum())
    res.frames_dropped = res.frames_total - res.frames_used
    ids = np.flatnonzero(ok)
    return {"out": out, "fps": fps, "lm": _landmarks_in_crop(lm[ids], frames["crop"], cfg.size), "ids": ids,
            "frames_total": int(len(lm)), "crop": frames["crop"], "notes": res.notes, "fingerprints": fp,
            "cuts": list(track.get("cuts", []))}  # a track cache of an earlier version has none


def _no_face_note(missing: np.ndarray, fps: float, shown: int = 5) -> Optional[str]:
    """A note naming the frames (indices ``missing``, sorted) where no face was found, as ranges with their times
    (the first ``shown`` ranges, and how many more); None when there are none."""
    if not len(missing):
        return None
    breaks = np.flatnonzero(np.diff(missing) > 1)
    starts = np.concatenate([missing[:1], missing[breaks + 1]])
    ends = np.concatenate([missing[breaks], missing[-1:]])
    spans = [f"{a} ({a / fps:.2f} s)" if a == b else f"{a}-{b} ({a / fps:.2f}-{b / fps:.2f} s)"
             for a, b in zip(starts.tolist(), ends.tolist())]
    more = f", and {len(spans) - shown} more stretches" if len(spans) > shown else ""
    one = len(missing) == 1
    return (f"{len(missing)} frame{'' if one else 's'} with no face found {'was' if one else 'were'} dropped (a dark "
            f"or blurred picture, the face turned away, covered or out of the picture): frame{'' if one else 's'} "
            f"{', '.join(spans[:shown])}{more}")


def _face_jump(lm: np.ndarray, fps: float) -> Optional[Tuple[int, np.ndarray, np.ndarray, float]]:
    """The first frame whose face lies :data:`FACE_JUMP` face heights or more from the face of the frame with a face
    before it (at most :data:`FACE_JUMP_SECONDS` earlier), with both faces' centres (source pixels) and the distance
    in face heights; None when the track follows one face. ``lm``: ``(B, K, 3)`` source pixels, NaN where no face."""
    ids = np.flatnonzero(np.isfinite(lm[:, 0, 0]))
    centre = lm[ids, :, :2].astype(np.float64).mean(axis=1)
    height = np.linalg.norm(lm[ids, FOREHEAD, :2].astype(np.float64) - lm[ids, CHIN, :2], axis=1)
    near = np.diff(ids) <= max(1.0, FACE_JUMP_SECONDS * fps)
    moved = np.linalg.norm(np.diff(centre, axis=0), axis=1) / np.maximum(np.maximum(height[:-1], height[1:]), 1e-6)
    far = np.flatnonzero(near & (moved > FACE_JUMP))
    if not len(far):
        return None
    j = int(far[0])
    return int(ids[j + 1]), centre[j], centre[j + 1], float(moved[j])


def _others_done(root: Path, name: str) -> Dict[str, dict]:
    """The identity folders of ``root`` other than ``name`` that prepare finished, with their ``prepare.json``."""
    found = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name != name):
        done = _read_json(d / DONE_FILE) if _ours(d) else None
        if isinstance(done, dict):
            found[d.name] = done
    return found


def _other_sizes(root: Path, name: str) -> Dict[str, int]:
    """The identity folders of ``root`` other than ``name`` that prepare finished, with their frame sizes."""
    sizes = {n: done.get("settings", {}).get("size") for n, done in _others_done(root, name).items()}
    return {n: s for n, s in sizes.items() if isinstance(s, int)}


def _older_folders(root: Path, name: str) -> Dict[str, int]:
    """The identity folders of ``root`` other than ``name`` that a prepare of an older version finished, with that
    version (from their ``prepare.json``'s fingerprint)."""
    versions = {n: done.get("fingerprint", {}).get("version") for n, done in _others_done(root, name).items()}
    return {n: v for n, v in versions.items() if isinstance(v, int) and v < PREPARE_VERSION}


def _fit_basis(ready: Sequence[VideoResult], state: Dict[str, dict], cfg: PrepareConfig) -> ExpressionBasis:
    """The shared face model from the videos that reached stage 3."""
    shapes = [state[r.name]["lm"] for r in ready]
    canonical, stable = fit_canonical(shapes, cfg.face_height, cfg.stable_fraction)
    deformations = []
    for s in shapes:
        neutral, aligned = identity_neutral(s, canonical, stable)
        # the frames fit_basis reads (it picks the same ones of these), not a copy of every frame of every video
        deformations.append(aligned[evenly_spaced(len(aligned), FIT_FRAMES_PER_VIDEO)] - neutral)
    dim = min(cfg.expression_dim, sum(len(d) for d in deformations))
    components, scale, explained = fit_basis(deformations, dim)
    return ExpressionBasis(canonical, stable.astype(np.int64), components, scale, explained, cfg.face_height,
                           tuple(r.name for r in ready))
