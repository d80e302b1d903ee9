"""Rendering frames and videos from a trained model: reconstruction, cross-identity expression transfer,
camera orbits, and evaluation against ground truth.

The pieces, each usable alone:

- :func:`neutral_frame`, :func:`expression_transfer`: which frame is an identity's "neutral" face, and how a
  driver's expressions map onto a target (a pure function).
- :class:`CameraPath`, :func:`drive_path`, :func:`speech_path`, :func:`orbit_path`, :func:`orbit_cameras`: what
  to render, frame by frame (cameras, intrinsics, expressions), without a model; :func:`relative_cameras` moves a
  target's head as a driver's moves (the default head poses of a driven video).
- :func:`render_rays`, :func:`render_frame`, :func:`render_sequence`: the model applied to rays, one frame or a
  path, without gradients (the model bounds its own memory: ``MINeRF`` renders in chunks of ``ModelConfig.chunk_rays`` rays).
- :func:`background_image`, :func:`straight_alpha`: what the person is composited over (their own background, a
  colour or an image; the model composites it as its own), and an RGBA frame's colour with straight alpha.
- :func:`write_video` (mp4 through imageio-ffmpeg, PNG frames on request; with a soundtrack when given; RGBA frames
  give RGBA PNGs and a matte video beside the mp4),
  :func:`render_video` (a driven video carries the driver's speech, cut to its frames by :mod:`fastminerf.audio`;
  at another fps it keeps the driver's clock, :meth:`CameraPath.at_fps`; ``beside_driver`` shows driver | render).
- :func:`side_by_side` and :func:`evaluate`: per-identity PSNR, SSIM and L1 (LPIPS where available) and
  prediction | ground truth | error images, captioned (identity, split, frame, PSNR) and enlarged.

The model is anything with ``render_rays(origins, directions, near, far, identity, expression, frame_code,
background) -> dict`` holding ``rgb (N, 3)`` (see :func:`render_rays`) and ``identity_names`` (the identity
name of each model identity id), and a keyword ``uv`` (each ray's image position) where it has a ``torso`` layer;
:class:`fastminerf.model.MINeRF` is one. Frames outside the model's training
set have no learned frame code: they are rendered with ``frame_code=None``, which the model answers with the
identity's mean training frame code.

Dimension letters: N rays, B frames, E expression size, H x W image size.
"""

from __future__ import annotations

import math
import operator
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .backend import machine
from .audio import Audio, AudioError, aac_rate, frame_soundtrack, frames_at_rate, identity_audio, read_recording, wav_seconds, write_wav
from .config import MAX_FPS, ArgumentValueError, PATHS_TAKEN, PATH_TAKEN, PATH_TYPES, as_list, as_paths, check_fps, counted, identity_index, identity_list, name_position, needs
from .data.dataset import MultiIdentityDataset, a_dataset, check_expression_space, expression_space_mismatch
from .data.rays import RayBatch, box_pixels, camera_rays, frame_rays, landmark_rays, pixel_uv, ray_aabb
from .data.layout import IDENTITY_PATHS, identity_splits, is_identity_dir, not_a_file, read_rgb
from .data.writer import (check_folder, folder_locked, noting_interrupt, remove_killed_writes, write_id, write_json,
                          write_png)
from .metrics import (RANGE_SLACK, SSIM_WINDOW, LandmarkDistance, eye_aspect_ratio, l1, landmark_status, lpips,
                      lpips_status, psnr, rotation_gap_deg, ssim)

__all__ = [
    "CameraPath",
    "ERROR_GAIN",
    "ORBIT_FRAMES",
    "ORBIT_MAX_FRAMES",
    "ORBIT_MIN_DEG",
    "OWN_BACKGROUND",
    "POSE_MODES",
    "RenderError",
    "VIDEO_OUT_SUFFIXES",
    "VideoInfo",
    "alpha_video_path",
    "check_render_size",
    "background_image",
    "drive_path",
    "driver_from_video",
    "evaluate",
    "expression_transfer",
    "identity_id",
    "load_driver",
    "load_target",
    "look_at_point",
    "mean_head_pose",
    "neutral_frame",
    "orbit_cameras",
    "orbit_path",
    "orbit_reach",
    "parse_drive",
    "pose_loop",
    "relative_cameras",
    "render_frame",
    "render_rays",
    "render_sequence",
    "set_render_steps",
    "render_video",
    "side_by_side",
    "speech_path",
    "split_fps",
    "straight_alpha",
    "to_float",
    "to_uint8",
    "training_basis",
    "view_angles",
    "write_video",
]

PathLike = Union[str, Path]
ProgressFn = Callable[[int, int], None]


ERROR_GAIN = 4.0
"""Factor applied to ``|prediction - truth|`` (mean over channels) in the error panel of :func:`side_by_side`,
so that errors of a few percent are visible; values above 1 after the gain are clipped."""

SIDE_BY_SIDE_MIN_PANEL = 128
"""eval's side-by-side panels are enlarged (nearest neighbour, by a whole factor) to at least this many pixels a side,
so that a 64 px frame can be judged by eye and the labels over its panels fit."""

SIDE_BY_SIDE_HEADER = 30
"""Height in pixels of the header of a captioned :func:`side_by_side` image: the caption, then a label over each
panel (a caption wider than the image wraps onto more lines, each adding :data:`fastminerf.drawing.LINE_HEIGHT`)."""

TRANSFER_MODES = ("delta", "absolute")
"""Modes of :func:`expression_transfer`."""

POSE_MODES = ("relative", "driver", "target", "still")
"""Head poses of a driven video (:func:`drive_path`): ``relative`` moves the target's head about its mean training
pose as the driver's head moves about its own mean (:func:`relative_cameras`), in the target's framing; ``driver``
takes the driver's cameras as they are (the driver's framing); ``target`` plays the target's own training head
poses; ``still`` holds the target's mean training pose."""


class RenderError(ValueError):
    """A render or evaluation request that cannot be met (unknown identity, missing split, bad size); the
    message names the thing."""


def _a_camera_path(path: "CameraPath") -> "CameraPath":
    """``path``, or TypeError (:func:`~fastminerf.config.needs`) when it is not a :class:`CameraPath`: the output
    file given where the cameras go (both are 'paths'), which failed with "'str' object has no attribute 'at_fps'"."""
    return needs(path, CameraPath, "path", "a camera path (fastminerf.orbit_path, drive_path or speech_path)")


# ------------------------------------------------------------------------------------------------ identities


def _a_model(model):
    """``model``, or TypeError (:func:`~fastminerf.config.needs`) when it is a run folder's or checkpoint's path (the
    commands take ``--run``) or :func:`fastminerf.load_run`'s whole result (a tuple), where its model goes: without it
    a path read as a model without identity names, or one that does not march rays, and the tuple as a list of names."""
    if isinstance(model, (str, os.PathLike, tuple)):
        needs(model, torch.nn.Module, "model", "a loaded model (fastminerf.load_run(RUN)[1])")
    return model


def _model_identity_names(model) -> List[str]:
    names = getattr(_a_model(model), "identity_names", None)
    if names is None:
        raise RenderError("the model has no 'identity_names': cannot map identity names to model identities")
    return list(names)


def identity_id(model_or_names, name: str) -> int:
    """The model's identity id of identity ``name``.

    Args:
        model_or_names: a model with ``identity_names``, or the list of names itself.
        name: identity name (its dataset folder name).

    Raises:
        RenderError: naming ``name`` and the identities the model knows.
    """
    as_names = isinstance(model_or_names, (list, tuple)) and all(isinstance(n, str) for n in model_or_names)
    names = list(model_or_names) if as_names else _model_identity_names(model_or_names)
    return identity_index(names, name, RenderError)


def _dataset_identity(dataset: MultiIdentityDataset, name: str) -> int:
    at = name_position(a_dataset(dataset, f"identity '{name}'").identities, name)
    if at is None:
        raise RenderError(f"identity '{name}' is not in the dataset; it has "
                          f"{identity_list(dataset.identities, near=name)}")
    return at


def _loaded_table(dataset: MultiIdentityDataset, split: str, asked: str):
    """``dataset.table(split)``; RenderError saying what was ``asked`` for and which splits are loaded when ``split``
    is not (the dataset's own KeyError says neither what was asked nor how to load it); TypeError for what is not a
    loaded dataset (:func:`~fastminerf.data.dataset.a_dataset`)."""
    if split not in a_dataset(dataset, asked).splits:
        raise RenderError(f"{asked}: split '{split}' is not loaded; loaded: {list(dataset.splits)} (load_dataset(..., "
                          f"splits=...) names the splits to load)")
    return dataset.table(split)


# ------------------------------------------------------------------------------------ expressions and paths


def neutral_frame(dataset: MultiIdentityDataset, identity: Union[int, str], split: str = "train", index: Optional[int] = None) -> int:
    """The flat index (into ``dataset.table(split)``) of an identity's neutral frame.

    "Neutral" is the frame whose expression has the smallest Euclidean norm among the identity's frames of
    ``split``: in a tracker's blendshape or 3DMM basis (and in the procedural heads), the zero vector is the
    rest face. ``index`` overrides the choice: the position of the frame among the identity's own frames of
    ``split`` in time order, as a driven video plays them (0 = its first frame; as stored where frames carry no time).

    Raises:
        RenderError: the identity has no frames in ``split``, or ``index`` is out of range.
    """
    ident = _dataset_identity(dataset, identity) if isinstance(identity, str) else int(identity)
    table = _loaded_table(dataset, split, f"no neutral frame of identity '{dataset.identities[ident]}'")
    frames = table.frames_of(ident)
    if frames.size == 0:
        raise RenderError(f"identity '{dataset.identities[ident]}' has no frames in split '{split}'")
    if index is not None:
        if not 0 <= index < frames.size:
            raise RenderError(
                f"neutral frame index {index} out of range: identity '{dataset.identities[ident]}' has "
                f"{frames.size} frames in split '{split}'"
            )
        return int(_time_ordered(table, frames)[index])  # a split need not be stored in time order (DATASET.md)
    norms = np.linalg.norm(table.expression[frames].astype(np.float64), axis=1)
    return int(frames[int(np.argmin(norms))])


def expression_transfer(
    target_neutral: np.ndarray,
    driver_neutral: np.ndarray,
    driver_expressions: np.ndarray,
    mode: str = "delta",
) -> np.ndarray:
    """Map a driver's expressions onto a target identity.

    .. math::
        e^{target}_b = \\begin{cases}
            n^{target} + (e^{driver}_b - n^{driver}) & \\text{delta} \\\\
            e^{driver}_b & \\text{absolute}
        \\end{cases}

    ``delta`` moves the target's own neutral face by the driver's change from *its* neutral face, so a
    driver whose rest face differs from the target's (a tracker's identity leakage into the expression
    coefficients) does not carry that difference over; ``absolute`` feeds the driver's coefficients as they
    are.

    Args:
        target_neutral: (E,) the target's neutral expression.
        driver_neutral: (E,) the driver's neutral expression (ignored by ``absolute``).
        driver_expressions: (B, E) the driver's expressions.
        mode: ``"delta"`` or ``"absolute"``.

    Returns:
        (B, E) float32 expressions for the target.

    Example:
        >>> expression_transfer(np.array([0.1, 0.0]), np.array([0.2, 0.0]), np.array([[0.7, 0.5]]))
        array([[0.6, 0.5]], dtype=float32)
    """
    if mode not in TRANSFER_MODES:
        raise RenderError(f"unknown transfer mode '{mode}': one of {list(TRANSFER_MODES)}")
    drv = np.asarray(driver_expressions, dtype=np.float64)
    tn = np.asarray(target_neutral, dtype=np.float64).reshape(-1)
    dn = np.asarray(driver_neutral, dtype=np.float64).reshape(-1)
    if drv.ndim != 2:
        raise RenderError(f"driver expressions must be (B, E), got {drv.shape}")
    e = drv.shape[1]
    if tn.shape != (e,) or dn.shape != (e,):
        raise RenderError(
            f"expression sizes differ: driver expressions have E={e}, target neutral {tn.shape[0]}, "
            f"driver neutral {dn.shape[0]}; identities must share one expression space"
        )
    if mode == "absolute":
        return drv.astype(np.float32)
    return (tn[None, :] + (drv - dn[None, :])).astype(np.float32)


DEFAULT_FPS = 25.0
"""The frame rate of frames that say neither their ``fps`` nor their ``time``, and of a video whose caller names
none (a :class:`CameraPath`'s, an orbit's, :func:`write_video`'s)."""

MIN_RENDER_SIZE = 8
"""The smallest longer side :meth:`CameraPath.at_size` (``render --size``) renders at, as ``synth --size``'s least."""

MAX_RENDER_SIZE = 8192
"""The largest longer side :meth:`CameraPath.at_size` (``render --size``) renders at: 8K, what H.264 levels go to
(a typo's 100000 px would allocate rays for 10^10 pixels before the first frame)."""


def check_render_size(size, name: str = "size") -> int:
    """``size`` (an output's longer side in pixels) as an int, or :class:`fastminerf.config.ArgumentValueError`
    naming ``name`` (a command line names its option for it) unless it is a whole number from
    :data:`MIN_RENDER_SIZE` to :data:`MAX_RENDER_SIZE`."""
    if isinstance(size, bool):
        raise ArgumentValueError(name, f"must be a whole number of pixels, got {size!r}")
    try:
        side = operator.index(size)
    except TypeError:
        raise ArgumentValueError(name, f"must be a whole number of pixels, got {size!r}") from None
    if side < MIN_RENDER_SIZE:
        raise ArgumentValueError(name, f"must be at least {MIN_RENDER_SIZE} pixels, got {side}")
    if side > MAX_RENDER_SIZE:
        raise ArgumentValueError(name, f"must be at most {MAX_RENDER_SIZE} pixels, got {side}")
    return int(side)


@dataclass(frozen=True)
class CameraPath:
    """What to render, frame by frame, for one identity: B cameras and expressions at one image size."""

    c2w: np.ndarray
    """(B, 4, 4) float32 camera-to-head transforms (OpenGL convention)."""
    intrinsics: np.ndarray
    """(B, 4) float32 ``[fx, fy, cx, cy]`` in pixels."""
    expression: np.ndarray
    """(B, E) float32 expressions."""
    width: int
    """W in pixels."""
    height: int
    """H in pixels."""
    fps: float = DEFAULT_FPS
    """Frame rate of a video of this path."""
    audio: Optional[Path] = None
    """The recording whose sound goes with these frames (a driver's ``audio.wav``, a :func:`speech_path`'s recording),
    or None."""
    times: Optional[np.ndarray] = None
    """(B,) seconds of each frame in ``audio`` (NaN where unknown), or None."""
    expression_space: Optional[str] = None
    """The space of ``expression`` (the driver's ``expression_space``), or None when unknown; a model trained in
    another space refuses the path."""
    sources: Optional[np.ndarray] = None
    """(B,) the image file of the driver frame each frame was taken from (a driven path's), or None; what
    :func:`render_video`'s ``beside_driver`` shows."""

    def __post_init__(self) -> None:
        b = self.c2w.shape[0]
        if self.c2w.shape != (b, 4, 4) or self.intrinsics.shape != (b, 4) or self.expression.ndim != 2 or self.expression.shape[0] != b:
            raise RenderError(
                f"CameraPath needs c2w (B, 4, 4), intrinsics (B, 4), expression (B, E) with one B; got "
                f"{self.c2w.shape}, {self.intrinsics.shape}, {self.expression.shape}"
            )
        if self.times is not None and np.shape(self.times) != (b,):
            raise RenderError(f"CameraPath times must be ({b},), got {np.shape(self.times)}")
        if self.sources is not None and np.shape(self.sources) != (b,):
            raise RenderError(f"CameraPath sources must be ({b},), got {np.shape(self.sources)}")
        object.__setattr__(self, "fps", check_fps(self.fps))  # orbit_path(fps=nan) failed only in write_video

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def __repr__(self) -> str:
        """One line, what a notebook shows of a path: its arrays printed whole are a screenful (a 60-frame orbit's
        cameras, intrinsics and expressions are each under numpy's 1,000 numbers, printed in full)."""
        extra = [f"expression_space={self.expression_space!r}"] if self.expression_space is not None else []
        if self.audio is not None:
            extra.append(f"audio={str(self.audio)!r}")
        if self.sources is not None:
            extra.append("with driver frames")
        return (f"CameraPath({len(self)} frames, {self.width}x{self.height}, {self.fps:g} fps, "
                f"E={self.expression.shape[1]}{''.join(', ' + e for e in extra)})")

    def head(self, n: int) -> "CameraPath":
        """The first ``n`` frames of the path (cameras, expressions and times alike)."""
        return self.take(slice(0, n))

    def take(self, frames) -> "CameraPath":
        """The frames ``frames`` (a slice, an index array or a boolean mask) of the path, cameras, expressions and
        times alike."""
        return CameraPath(self.c2w[frames], self.intrinsics[frames], self.expression[frames], self.width, self.height,
                          self.fps, self.audio, None if self.times is None else self.times[frames], self.expression_space,
                          None if self.sources is None else self.sources[frames])

    def at_fps(self, fps: Optional[float]) -> "CameraPath":
        """The path shown at ``fps`` in real time (itself when ``fps`` is None or its own rate): a path whose frames
        have a clock (``times``, a driven video or a recording's) keeps its speed and its length in seconds, frames
        repeated or dropped (:func:`fastminerf.audio.frames_at_rate`), so that its sound plays on unbroken; a path
        without one (an orbit) is the same frames played at ``fps``."""
        if fps is None:
            return self
        fps = check_fps(fps)  # before frames_at_rate: at 1e9 fps it repeated frames until memory ran out
        if fps == float(self.fps):
            return self
        if self.times is None:
            return CameraPath(self.c2w, self.intrinsics, self.expression, self.width, self.height, float(fps),
                              self.audio, None, self.expression_space, self.sources)
        try:
            rows, times = frames_at_rate(len(self), self.fps, float(fps), self.times)
        except AudioError as exc:
            raise RenderError(str(exc)) from None
        return CameraPath(self.c2w[rows], self.intrinsics[rows], self.expression[rows], self.width, self.height,
                          float(fps), self.audio, times, self.expression_space,
                          None if self.sources is None else self.sources[rows])

    def at_size(self, size: Optional[int]) -> "CameraPath":
        """The path rendered with ``size`` pixels on its longer side (itself when ``size`` is None or its own), the
        other side in proportion (rounded to whole pixels): a NeRF renders at any resolution, e.g. a 512 px video of
        a model trained on 256 px frames. The cameras, expressions, rate and sound are the path's; each axis's focal
        length and principal point scale by that axis's factor (pixel ``(i, j)``'s ray passes through
        ``(i + 0.5, j + 0.5)``, so the image plane scales as a whole: a 2x render averaged over 2x2 blocks is the
        1x render supersampled).

        Raises:
            fastminerf.config.ArgumentValueError: ``size`` is not a whole number from :data:`MIN_RENDER_SIZE` to
                :data:`MAX_RENDER_SIZE` (:func:`check_render_size`).
        """
        if size is None:
            return self
        side = check_render_size(size)
        longer = max(self.width, self.height)
        width, height = (max(1, round(n * side / longer)) for n in (self.width, self.height))
        if (width, height) == (self.width, self.height):
            return self
        scale = np.asarray([width / self.width, height / self.height] * 2, dtype=np.float64)
        return replace(self, intrinsics=(self.intrinsics.astype(np.float64) * scale).astype(np.float32),
                       width=width, height=height)

    def silent_reason(self, recording: Optional[str] = None) -> str:
        """Why a video of this path has no sound ("" when it can have some); ``recording``: what to call the
        recording in it (default its file; e.g. the driver video an audio.wav was extracted from)."""
        if self.audio is None:
            return "no audio.wav"
        what = not_a_file(self.audio)
        if what is not None:  # a folder, a link that loops: not 'no audio.wav', which the user sees is there
            return f"{self.audio} {what}"
        if self.times is None or not np.all(np.isfinite(self.times)):
            return "its frames carry no 'time'"
        late, seconds = self._past_end()
        if late.size and late.size == len(self):
            return (f"its frames, from {self.times.min():.2f} s on, lie past the end of {recording or self.audio} "
                    f"({seconds:.2f} s)")
        return ""

    def _past_end(self) -> Tuple[np.ndarray, float]:
        """The frames whose time lies at or past the end of the recording (heard as silence), and its seconds; none
        when the recording is not a PCM WAV file (another format is decoded only when played). The length is the
        header's: the recording is read whole only to be played."""
        try:
            seconds = wav_seconds(self.audio)  # type: ignore[arg-type]
        except AudioError:
            return np.zeros(0, np.int64), 0.0
        return np.flatnonzero(np.asarray(self.times) >= seconds), seconds

    def past_recording(self, recording: Optional[str] = None) -> str:
        """Which frames lie past the end of the recording, silent in the video ("" when none or when it has no
        sound at all for another reason, :meth:`silent_reason`): the recording is shorter than the frames it goes
        with (a video whose sound track ends before its picture). ``recording`` as for :meth:`silent_reason`."""
        if self.audio is None or not_a_file(self.audio) is not None or self.times is None \
                or not np.all(np.isfinite(self.times)):
            return ""
        late, seconds = self._past_end()
        if not late.size:
            return ""
        if late.size == len(self):
            return self.silent_reason(recording)
        return (f"{late.size} of {counted(len(self), 'frame')}, from {self.times[late].min():.2f} s on, lie past the "
                f"end of {recording or self.audio} ({seconds:.2f} s): silent there")

    def soundtrack(self, fps: Optional[float] = None) -> Optional[Audio]:
        """The sound of a video of this path played at ``fps`` (default the path's), or None when
        :meth:`silent_reason` says why there is none.

        The recording is played as it is, at its own rate and with its channels (:func:`fastminerf.audio.read_recording`:
        a PCM WAV file, or any file ffmpeg reads, e.g. the mp3 of a :func:`speech_path`), not as the speech model
        hears it (16 kHz mono).

        Raises:
            AudioError: the recording cannot be read (the file named).
        """
        if self.silent_reason():
            return None
        sound = read_recording(self.audio)  # type: ignore[arg-type]
        return frame_soundtrack(sound, self.times, self.fps if fps is None else fps)  # type: ignore[arg-type]


def mean_head_pose(c2w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The mean head pose seen by cameras ``(B, 4, 4)`` (camera-to-head): the chordal mean of the head-to-camera
    rotations and the mean position of the head's origin in camera coordinates, ``(3, 3)`` and ``(3,)`` float64."""
    return _mean_pose(np.linalg.inv(np.asarray(c2w, dtype=np.float64)))


def _mean_pose(w2c: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`mean_head_pose` of head-to-camera transforms ``(B, 4, 4)``."""
    from .prepare.pose import nearest_rotation

    return nearest_rotation(w2c[:, :3, :3].mean(axis=0)), w2c[:, :3, 3].mean(axis=0)


def relative_cameras(driver_c2w: np.ndarray, target_c2w: np.ndarray) -> np.ndarray:
    """Cameras that move the target's head as the driver's head moves: each driver frame's head pose relative to
    the driver's mean pose (:func:`mean_head_pose` of ``driver_c2w``), applied to the target's mean pose (of
    ``target_c2w``, e.g. its training frames).

    With head-to-camera poses ``[R_b | t_b]`` and means ``(R_d, t_d)``, ``(R_t, t_t)``, frame ``b`` becomes
    ``[R_b R_d^T R_t | t_t + t_b - t_d]``: the driver's rotation about its head's centre and its shift in head units,
    both in camera coordinates (a nod stays a nod), while the framing (how far and where the head sits in the
    picture) stays the target's, so the head stays on the target's shoulders and in front of its background.
    A driver driving itself gets its own cameras back.

    Args:
        driver_c2w: (B, 4, 4) the driver's camera-to-head transforms, one per frame to render.
        target_c2w: (T, 4, 4) the target's, e.g. its training frames.

    Returns:
        (B, 4, 4) float32 camera-to-head transforms.
    """
    w2c = np.linalg.inv(np.asarray(driver_c2w, dtype=np.float64))
    rd, td = _mean_pose(w2c)
    rt, tt = mean_head_pose(target_c2w)
    out = np.zeros_like(w2c)
    out[:, :3, :3] = w2c[:, :3, :3] @ (rd.T @ rt)
    out[:, :3, 3] = tt[None] + w2c[:, :3, 3] - td[None]
    out[:, 3, 3] = 1.0
    return np.linalg.inv(out).astype(np.float32)


def drive_path(
    target: MultiIdentityDataset,
    target_identity: str,
    driver: MultiIdentityDataset,
    driver_split: str,
    driver_identity: Optional[str] = None,
    mode: str = "delta",
    neutral_split: str = "train",
    target_neutral_index: Optional[int] = None,
    driver_neutral_index: Optional[int] = None,
    pose: str = "relative",
) -> CameraPath:
    """The path that renders ``target_identity`` with the (transferred) expressions and the head motion of a
    driver's frames: cross-identity expression transfer.

    Expressions are :func:`expression_transfer` of the driver's, with neutrals from :func:`neutral_frame` over each
    identity's ``neutral_split`` (default ``train``; the ``*_neutral_index`` arguments pick a frame instead).
    Head poses follow ``pose`` (:data:`POSE_MODES`): ``relative`` (default, :func:`relative_cameras` against the
    target's ``neutral_split`` frames), ``target`` (the target's own ``neutral_split`` head poses in time order at
    its video's speed, :func:`pose_loop` when the driver is longer), ``still`` (the target's mean pose there): all
    three with the target's intrinsics and image size, so the head sits where the target's shoulders and background
    expect it; ``driver``: the driver's cameras, intrinsics and image size as they are, which frames another person's
    head (its distance and place in the picture) over the target's torso. Frame rate, times and sound are the driver's;
    the driver's frames play in time order (as stored where they carry no time).

    Args:
        target: a dataset holding the target identity with ``neutral_split`` loaded.
        target_identity: the target's name.
        driver: a dataset with ``driver_split`` (and, for ``delta``, ``neutral_split``) loaded.
        driver_split: the driver's split whose frames drive the video.
        driver_identity: the driver's name; may be omitted when ``driver`` holds one identity.
        mode: ``"delta"`` or ``"absolute"``.
        pose: one of :data:`POSE_MODES`.

    Raises:
        RenderError: naming the missing identity or split, an unknown ``pose``, or a driver in another expression space
            than the target's data (both known).
        DatasetError: a driver whose expressions have another length than the target's, naming its file.
    """
    if pose not in POSE_MODES:
        raise RenderError(f"unknown pose mode '{pose}': one of {list(POSE_MODES)}")
    if driver_identity is None:
        if len(driver.identities) != 1:
            raise RenderError(f"the driver dataset holds {len(driver.identities)} identities {driver.identities}; name one")
        driver_identity = driver.identities[0]
    d_id = _dataset_identity(driver, driver_identity)
    t_id = _dataset_identity(target, target_identity)
    # before the transfer, whose sizes check could not say which spaces differ nor what to do
    why = expression_space_mismatch(target.expression_space, driver.expression_space, f"the driver '{driver_identity}'",
                                    f"that of '{target_identity}'")
    if why is not None:
        raise RenderError(why)
    # a length the target's does not have, in no named space: refused before any frame, naming the driver's file
    check_expression_space(None, driver, f"the driver '{driver_identity}'", f"the target '{target_identity}'",
                           target.expression_dim)
    if driver_split not in driver.splits:
        raise RenderError(f"driver split '{driver_split}' is not loaded; loaded: {list(driver.splits)}")
    table = driver.table(driver_split)
    frames = _time_ordered(table, table.frames_of(d_id))  # a split need not be stored in time order (DATASET.md)
    if frames.size == 0:
        raise RenderError(f"driver '{driver_identity}' has no frames in split '{driver_split}'")
    needs = [(driver, "driver")] if mode == "delta" else []
    needs += [(target, "target")] if mode == "delta" or pose != "driver" else []
    for ds, what in needs:
        if neutral_split not in ds.splits:
            raise RenderError(f"the {what} dataset lacks split '{neutral_split}' (needed for its neutral frame and poses)")
    e_drv = table.expression[frames]
    if mode == "delta":
        t_ntab, d_ntab = target.table(neutral_split), driver.table(neutral_split)
        tn = t_ntab.expression[neutral_frame(target, t_id, neutral_split, target_neutral_index)]
        dn = d_ntab.expression[neutral_frame(driver, d_id, neutral_split, driver_neutral_index)]
    else:
        tn = dn = np.zeros(e_drv.shape[1], np.float32)
    expr = expression_transfer(tn, dn, e_drv, mode)
    fps = split_fps(driver, driver_split, d_id)
    audio, times = identity_audio(driver.identity_dirs[d_id], any_kind=True), table.time[frames].astype(np.float64)
    sources = np.array([table.image_paths[i] for i in frames.tolist()], dtype=object)
    if pose == "driver":
        return _rows_path(table, frames, expr, fps, audio, times, driver.expression_space, sources)
    own_table = target.table(neutral_split)
    own = _time_ordered(own_table, own_table.frames_of(t_id))
    if own.size == 0:
        raise RenderError(f"target '{target_identity}' has no frames in split '{neutral_split}' to take head poses from")
    if pose == "target":  # at the target's own speed: its frame at each driven frame's time
        step = split_fps(target, neutral_split, t_id) / fps
        return _rows_path(own_table, own[pose_loop(own.size, frames.size, step)], expr, fps, audio, times,
                          driver.expression_space, sources)
    if pose == "relative":
        c2w = relative_cameras(table.c2w[frames], own_table.c2w[own])
    else:  # still: the target's mean pose, every frame
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = mean_head_pose(own_table.c2w[own])
        c2w = np.repeat(np.linalg.inv(w2c)[None].astype(np.float32), frames.size, axis=0)
    width, height = own_table.size_of(own[0])
    return CameraPath(c2w=c2w, intrinsics=np.repeat(own_table.intrinsics[own[:1]], frames.size, axis=0).astype(np.float32),
                      expression=expr, width=width, height=height, fps=fps, audio=audio,
                      times=times, expression_space=driver.expression_space, sources=sources)


def split_fps(dataset: MultiIdentityDataset, split: str, identity: int) -> float:
    """The frame rate of an identity's frames in a split: its transforms file's ``fps``; where it has none, the
    frames' ``time`` steps (their median, so that dropped frames do not count), else :data:`DEFAULT_FPS`. Frames
    that carry their times but not their rate (another tool's layout) are played at their own speed, and their
    sound with them, not at 25 fps.

    Raises:
        RenderError: the times give a rate above :data:`fastminerf.config.MAX_FPS` (steps under 1 ms), naming the
            identity, the split and ``time``.
    """
    fps = dataset.split_meta(split, identity).fps
    if fps:
        return float(fps)
    table = dataset.table(split)
    t = np.sort(table.time[table.frames_of(identity)].astype(np.float64))
    steps = np.diff(t[np.isfinite(t)])
    steps = steps[steps > 1e-6]
    if not steps.size:
        return DEFAULT_FPS
    rate = round(float(1.0 / np.median(steps)), 3)  # 1/(1/30) is not quite 30
    if rate > MAX_FPS:  # 10000 was refused later as 'fps must be at most 1000', naming neither the data nor 'time'
        raise RenderError(f"{dataset.identities[identity]}'s '{split}' frames have no fps and their 'time' values are "
                          f"{float(np.median(steps)):g} s apart: {rate:g} frames a second, above {MAX_FPS:g}; "
                          "times are in seconds (or give the transforms file's fps)")
    return rate


def _time_ordered(table, rows: np.ndarray) -> np.ndarray:
    """``rows`` of a frame table sorted by their frames' times (as they are where a time is missing)."""
    if rows.size and np.all(np.isfinite(table.time[rows])):
        return rows[np.argsort(table.time[rows], kind="stable")]
    return rows


def _rows_path(table, rows: np.ndarray, expression: np.ndarray, fps: float, audio: Optional[Path],
               times: Optional[np.ndarray], expression_space: Optional[str],
               sources: Optional[np.ndarray] = None) -> CameraPath:
    """A :class:`CameraPath` with the cameras, intrinsics and image size of rows ``rows`` of a frame table (one
    identity's: one size)."""
    width, height = table.size_of(rows[0])
    return CameraPath(c2w=table.c2w[rows].astype(np.float32), intrinsics=table.intrinsics[rows].astype(np.float32),
                      expression=expression, width=width, height=height, fps=fps, audio=audio, times=times,
                      expression_space=expression_space, sources=sources)


def pose_loop(n_source: int, n: int, step: float = 1.0) -> np.ndarray:
    """Indices ``(n,)`` into ``n_source`` frames that play them forward, then backward, and so on (a loop without a
    jump), for a video longer than its source of head poses. ``step`` is source frames per video frame (the source's
    frame rate over the video's), so the head keeps its own speed at another rate: video frame ``k`` takes source frame
    ``k * step`` (the nearest; halves to the later)."""
    if n_source < 1:
        raise RenderError("no frame to take head poses from")
    if not (np.isfinite(step) and step > 0):
        raise RenderError(f"pose_loop step must be positive, got {step}")
    if n_source == 1:
        return np.zeros(n, np.int64)
    k = np.floor(np.arange(n) * float(step) + 0.5).astype(np.int64) % (2 * n_source - 2)
    return np.where(k < n_source, k, 2 * n_source - 2 - k).astype(np.int64)


def speech_path(
    target: MultiIdentityDataset,
    target_identity: str,
    speech_model,
    speech: PathLike,
    pose_split: str = "train",
    fps: Optional[float] = None,
    heard: Optional[Audio] = None,
) -> CameraPath:
    """The path that renders ``target_identity`` saying a recording (lip sync): expressions from
    :func:`fastminerf.speech.predict_expressions`, head poses and intrinsics from the target's own ``pose_split``
    frames in time order at their video's speed whatever ``fps`` (:func:`pose_loop` when the recording outlasts
    them), the recording as the soundtrack. The path carries the speech model's expression space, so
    :func:`render_sequence` refuses a model trained in another.

    Args:
        target: a dataset holding the target identity with ``pose_split`` loaded.
        target_identity: the target's name.
        speech_model: a :class:`fastminerf.speech.SpeechModel`.
        speech: the recording: any file :func:`fastminerf.speech.load_speech` reads (a WAV at any rate, mp3, m4a, a
            video's sound track); it is the path's soundtrack too.
        pose_split: the target's split whose head poses are played.
        fps: the video's frame rate (default: the target's).
        heard: ``load_speech(speech)``, when the caller has read it already (not read again).

    Raises:
        RenderError: naming the missing identity or split.
        SpeechError: a speech model of another expression space or size than the target's
            (:func:`fastminerf.speech.check_speech_space`), or a recording that cannot be read.
    """
    from .speech import a_speech_model, check_speech_space, load_speech, predict_expressions

    a_speech_model(speech_model, "speech_model")
    ident = _dataset_identity(target, target_identity)
    _loaded_table(target, pose_split, f"no head poses of '{target_identity}'")
    check_speech_space(speech_model, target, f"the target '{target_identity}'")
    table = target.table(pose_split)
    frames = table.frames_of(ident)
    own_fps = split_fps(target, pose_split, ident)
    fps = own_fps if fps is None else check_fps(fps)
    expr, times = predict_expressions(speech_model, load_speech(speech) if heard is None else heard, fps)
    order = _time_ordered(table, frames)  # the head at its own speed: its frame at each video frame's time
    return _rows_path(table, order[pose_loop(len(order), len(expr), own_fps / fps)], expr, fps, Path(speech), times,
                      speech_model.expression_space)


def parse_drive(spec: str, default_split: str = "train") -> Tuple[Path, str]:
    """Split a ``PATH[:SPLIT]`` driver spec (the CLI's ``--drive``) into a folder and a split name.

    A spec that names an existing path as a whole is a path (so a folder whose name holds a colon still
    works); otherwise the text after the last colon is the split.

    Raises:
        RenderError: an empty spec or split, or a path that does not exist (named).
    """
    text = str(spec).strip()
    if not text:
        raise RenderError("--drive is empty: give PATH or PATH:SPLIT")
    if Path(text).exists():
        return Path(text), default_split
    path, sep, split = text.rpartition(":")
    if not sep or "/" in split:  # no colon, or the last one inside the path ('a:b/c'): a missing folder, not a split
        raise RenderError(f"--drive: no such folder '{text}'")
    if not split:
        raise RenderError(f"--drive '{text}': '{split}' is not a split name (PATH:SPLIT, e.g. data/id001:val)")
    if not path or not Path(path).exists():
        raise RenderError(f"--drive: no such folder '{path}' (from '{text}')")
    return Path(path), split


def load_driver(path: PathLike, split: str, identity: Optional[str] = None) -> Tuple[MultiIdentityDataset, str]:
    """Load a driver: its ``split`` (and ``train``, for its neutral face) from an identity folder or a root.

    Returns:
        ``(dataset, driver identity name)``.

    Raises:
        RenderError: naming the missing split (and the splits the folder has), or the identity when a root
            holds several and none (or an unknown one) is named.
    """
    from .data.layout import find_identity_dirs, identity_splits

    dirs = find_identity_dirs(path)
    names = [d.name for d in dirs]
    if identity is None:
        if len(dirs) != 1:
            raise RenderError(f"the driver {path} holds {len(dirs)} identities {names}; name one (--driver-identity)")
        chosen = dirs[0]
    else:
        at = name_position(names, identity)
        if at is None:
            raise RenderError(f"driver identity '{identity}' is not in {path}; it has {names}")
        chosen = dirs[at]
    have = identity_splits(chosen)
    for need in dict.fromkeys(("train", split)):
        if need not in have:
            raise RenderError(f"the driver {chosen} has no split '{need}' (transforms_{need}.json); it has {have}")
    from .data.dataset import load_dataset

    data = load_dataset([chosen], splits=tuple(dict.fromkeys(("train", split))))
    return data, chosen.name


def training_basis(data_paths: Union[PathLike, Sequence[PathLike]]) -> Path:
    """The ``expression_basis.npz`` that ``prepare`` wrote for a run's training data (one path or several, as
    :func:`fastminerf.load_dataset` takes them): in a data path given as a root, or in the folder above one given as
    an identity folder.

    Raises:
        RenderError: none of the paths has one (data not made by ``prepare``, or moved), naming the paths; no paths.
        TypeError: ``data_paths`` is not paths (None included).
    """
    from .prepare.expression import BASIS_FILE

    # None is 'no paths' to as_paths (an optional list), but a basis needs data to sit beside: the error said '()'
    paths = as_paths(needs(data_paths, (str, os.PathLike, Iterable), "data_paths", f"{IDENTITY_PATHS} {PATHS_TAKEN}"),
                     "data_paths", IDENTITY_PATHS)
    if not paths:
        raise RenderError("no data paths given: the expression basis is looked for beside the run's training data")
    for p in paths:
        for candidate in (p / BASIS_FILE, p.parent / BASIS_FILE):
            if candidate.is_file():
                return candidate
    raise RenderError(f"no {BASIS_FILE} next to the run's training data ({', '.join(map(str, paths))}): a video "
                      f"can drive a model only in the expression space it was trained in; prepare the driver yourself "
                      f"with that basis (fastminerf prepare VIDEO --out DIR --basis ...) and drive with DIR")


_REPEATS_NOTE = re.compile(r"^(?P<fps>\S+) fps \(--fps\) is above the video's own rate \((?P<own>\S+) fps\): ffmpeg "
                           r"repeats its pictures to fill it, (?P<share>\d+%) of the frames a copy of the one before")
"""The start of prepare's note of a rate above the video's own (:func:`fastminerf.prepare.prepare`), worded for data."""


def driver_notes(identity_dir: PathLike) -> List[str]:
    """What prepare noted of a driver video it prepared into ``identity_dir`` (:func:`fastminerf.data.layout.prepare_notes`),
    for a render: its note of a rate above the video's own, which speaks of training data (nothing new to learn), is
    said of the render (poses and expressions held over repeated frames, the motion no smoother)."""
    from .data.layout import prepare_notes

    notes = []
    for note in prepare_notes(identity_dir):
        m = _REPEATS_NOTE.match(note)
        if m is not None:
            note = (f"--fps {m['fps']} is above the driver video's own rate ({m['own']} fps): {m['share']} of the "
                    f"rendered frames repeat the pose and expression of the one before (the motion is no smoother "
                    f"than at {m['own']} fps, and takes longer to render); --fps {m['own']} or below renders each of "
                    f"its pictures at most once")
        notes.append(note)
    return notes


def _driver_config(video: PathLike, basis: PathLike, size: int, max_frames: Optional[int] = None,
                   fps: Optional[float] = None):
    """The :class:`fastminerf.config.PrepareConfig` :func:`driver_from_video` prepares ``video`` with."""
    from .config import PrepareConfig
    from .prepare.video import VideoError, probe

    for value, asked, what in ((video, "video", "the driver's video file"), (basis, "basis", "the training data's "
                               "expression_basis.npz")):
        needs(value, PATH_TYPES, asked, f"{what} {PATH_TAKEN}")
    # prepare refuses a video of fewer than 3 frames: a driver of 1 or 2 is prepared with 3 and cut by the caller
    take = None if max_frames is None else max(3, int(max_frames))
    # prepare's 10-frame minimum is for training data (val and test frames), which a driver has none of: a video with
    # fewer frames at the rate it is read (a short clip, or a low fps) drives with all of them, as --frames N of a
    # longer one does; a longer one whose face is found in fewer frames is still refused with the detector's account
    try:
        info = probe(video, fps)
        held = int(info.duration * float(fps or info.fps) + 1e-6) if info.duration > 0 else None
    except VideoError:  # prepare says what is wrong with the file
        held = None
    min_frames = max(3, min([PrepareConfig.min_frames] + [n for n in (take, held) if n is not None]))
    return PrepareConfig(size=int(size), fps=None if fps is None else float(fps), max_frames=take, val_fraction=0.0,
                         test_fraction=0.0, basis=str(basis), min_frames=min_frames,
                         overwrite=True)  # the cache is ours: other settings replace it


def finished_driver(video: PathLike, basis: PathLike, out_root: PathLike, size: int,
                    max_frames: Optional[int] = None, fps: Optional[float] = None,
                    digests: Optional[Dict[str, str]] = None) -> Optional[Path]:
    """The driver :func:`driver_from_video` with these arguments finds done in ``out_root`` (prepared earlier with
    the same video and settings), read without writing anything (a shared run's ``RUN/drivers`` that this user cannot
    write); None when it would prepare it. ``digests``: the video's content hash, read from and added to (the same
    dict given to a :func:`driver_from_video` after it reads the video once: :func:`fastminerf.prepare.prepare`)."""
    from .prepare.pipeline import finished_folder

    cfg = _driver_config(video, basis, size, max_frames, fps)
    return finished_folder(video, needs(out_root, PATH_TYPES, "out_root", f"the driver's folder {PATH_TAKEN}"), cfg,
                           digests)


def driver_from_video(video: PathLike, basis: PathLike, out_root: PathLike, size: int,
                      max_frames: Optional[int] = None, progress=None, fps: Optional[float] = None,
                      digests: Optional[Dict[str, str]] = None) -> Path:
    """Prepare a raw video as a driver in a trained model's expression space: :func:`fastminerf.prepare.prepare`
    with the training data's ``basis`` and every frame in ``train`` (the first ``max_frames``, at least 3: prepare's
    minimum; at ``fps``, default the video's own rate; a video of fewer than prepare's 10 frames at that rate with
    all of them), into ``out_root`` (a cache: a second call with the same video and settings finds it done, and
    reads it without writing, :func:`finished_driver`). The video's bytes are hashed once (the cache's check and
    prepare's share the digest; ``digests`` as :func:`finished_driver`'s). Returns the driver's identity folder.

    Raises:
        RenderError: the video could not be prepared (prepare's error, naming it).
    """
    from .prepare import MediapipeMissing, prepare
    from .prepare.pipeline import finished_folder

    cfg = _driver_config(video, basis, size, max_frames, fps)
    needs(out_root, PATH_TYPES, "out_root", f"the folder to prepare the driver in {PATH_TAKEN}")
    digests = {} if digests is None else digests  # the cache's check and prepare's own: one read of the video
    done = finished_folder(video, out_root, cfg, digests)  # read where it is: a shared run's cache this user cannot write
    if done is not None:
        return done
    try:
        result = prepare([video], out_root, cfg, progress=progress, digests=digests)
    except MediapipeMissing as exc:
        raise RenderError(f"preparing the driver video {video} needs mediapipe: {exc}") from None
    v = result.videos[0]
    if v.status == "failed" or v.out_dir is None:
        raise RenderError(f"cannot use {video} as a driver: {v.error}")
    return v.out_dir


def load_target(data_paths: Sequence[PathLike], identity: str, splits: Sequence[str] = ("train",)) -> MultiIdentityDataset:
    """The dataset of one target identity, found by name among ``data_paths`` (a run's training folders).

    Raises:
        RenderError: naming ``identity`` and the identities the paths hold.
    """
    from .data.dataset import load_dataset
    from .data.layout import find_identity_dirs

    dirs = find_identity_dirs(list(data_paths)) if data_paths else []
    at = name_position([d.name for d in dirs], identity)
    match = [] if at is None else [dirs[at]]
    if not match:
        raise RenderError(
            f"no data for identity '{identity}' in {[str(p) for p in data_paths]} (identities there: "
            f"{[d.name for d in dirs]}); its training folder is needed for its neutral face and background"
        )
    return load_dataset(match, splits=tuple(splits))


def look_at_point(c2w: np.ndarray) -> np.ndarray:
    """Where a set of cameras looks: the mean over cameras of the point on its optical axis closest to the
    head-space origin.

    The layout puts the head at the origin (``DATASET.md``), so each camera's axis passes near it; the
    closest point says where the framing is centred (e.g. a little above the head centre). This is robust
    for nearly parallel axes (a talking-head video), where intersecting the axes in the least-squares sense
    is ill-conditioned along the viewing direction.

    Args:
        c2w: (B, 4, 4) camera-to-head transforms, B >= 1.

    Returns:
        (3,) float64.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    centres = c2w[:, :3, 3]
    fwd = -c2w[:, :3, 2]
    fwd = fwd / np.linalg.norm(fwd, axis=1, keepdims=True)
    t = -np.einsum("bi,bi->b", centres, fwd)  # distance along each axis to the point nearest the origin
    return (centres + t[:, None] * fwd).mean(axis=0)


def view_angles(c2w: np.ndarray, look_at: Sequence[float] = (0.0, 0.0, 0.0)) -> Tuple[np.ndarray, np.ndarray]:
    """Where cameras ``(B, 4, 4)`` (camera-to-head) sit around ``look_at`` in head space, in degrees: yaw (about +y,
    0 in front of the face on +z, positive towards +x) and elevation (positive above), each ``(B,)`` float64 (the
    angles :func:`orbit_cameras` places its cameras at)."""
    v = np.asarray(c2w, dtype=np.float64)[:, :3, 3] - np.asarray(look_at, dtype=np.float64)[None]
    yaw = np.degrees(np.arctan2(v[:, 0], v[:, 2]))
    elevation = np.degrees(np.arctan2(v[:, 1], np.hypot(v[:, 0], v[:, 2])))
    return yaw, elevation


def orbit_cameras(
    n_frames: int,
    distance: float,
    yaw_deg: float = 30.0,
    pitch_deg: float = 10.0,
    look_at: Sequence[float] = (0.0, 0.0, 0.0),
    centre_yaw_deg: float = 0.0,
    centre_elevation_deg: float = 0.0,
) -> np.ndarray:
    """Cameras on a sphere around ``look_at``, swinging the head left-right once while nodding twice.

    Frame ``b`` (``s = b / n_frames``) sits at yaw ``centre_yaw_deg + yaw_deg * sin(2 pi s)`` and elevation
    ``centre_elevation_deg + pitch_deg * sin(4 pi s)`` (:func:`view_angles`): at ``look_at + R (0, 0, distance)``
    with ``R = R_y(yaw) R_x(-elevation)``, looking at ``look_at`` down its -z axis, +y up (OpenGL). Yaw 0,
    elevation 0 is the frontal view from +z, as in the procedural heads. The path is closed: it loops without a
    jump.

    Returns:
        (B, 4, 4) float32 camera-to-head transforms.

    Raises:
        RenderError: no frames or more than :data:`ORBIT_MAX_FRAMES`, a distance that is not positive, or a swing
            that is not a finite number of degrees or swings farther than 180 (yaw) or 90 (pitch) degrees each way.
    """
    if n_frames < 1:
        raise RenderError(f"an orbit needs at least one frame, got {n_frames}")
    if n_frames > ORBIT_MAX_FRAMES:  # 1e9 ended in numpy's MemoryError (a (B, 4, 4) array of 128 GB)
        raise RenderError(f"an orbit's n_frames (--frames) must be at most {ORBIT_MAX_FRAMES}, got {n_frames}: "
                          f"{ORBIT_MAX_FRAMES} is an hour at {DEFAULT_FPS:g} fps for one swing of the head")
    if not distance > 0:
        raise RenderError(f"orbit distance must be positive, got {distance}")
    for name, swing in (("yaw_deg", yaw_deg), ("pitch_deg", pitch_deg)):  # NaN cameras rendered the background alone
        if not math.isfinite(swing):
            raise RenderError(f"an orbit's swing {name} (--{name[:-4]}) must be a finite number of degrees, got {swing}")
        # 1e300 was taken: cameras wherever sin(1e300 radians) put them. 180 each way goes all round the head, 90
        # up-down looks straight down on it; more turns the same circle over again
        most = 180 if name == "yaw_deg" else 90
        if abs(swing) > most:
            raise RenderError(f"an orbit's swing {name} (--{name[:-4]}) must be at most {most} degrees each way, got "
                              f"{swing:g}")
    centre = np.asarray(look_at, dtype=np.float64)
    out = np.zeros((n_frames, 4, 4))
    for b in range(n_frames):
        s = b / n_frames
        yaw = math.radians(centre_yaw_deg + yaw_deg * math.sin(2 * math.pi * s))
        pitch = -math.radians(centre_elevation_deg + pitch_deg * math.sin(4 * math.pi * s))
        cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        r = ry @ rx
        out[b, :3, :3] = r
        out[b, :3, 3] = centre + r @ np.array([0.0, 0.0, distance])
        out[b, 3, 3] = 1.0
    return out.astype(np.float32)


ORBIT_FRAMES = 60
"""Frames of an orbit (:func:`orbit_path`, ``render --orbit`` without ``--frames``): 2.4 s at 25 fps."""

ORBIT_MAX_FRAMES = 90_000
"""The most frames of an orbit (:func:`orbit_cameras`): an hour at 25 fps for one swing of the head, slower than any
orbit anyone renders (and hours of rendering); more are refused, not run out of memory on."""

ORBIT_MIN_DEG = 2.0
"""The smallest swing of a data-framed orbit (:func:`orbit_path` without angles), for a video whose head hardly moves."""

ORBIT_REACH_PERCENTILE = 90.0
"""A data-framed orbit swings as far from the mean view as this percentile of the training views' angles from it
(not the largest: one turned frame would set it)."""


def _training_views(dataset: MultiIdentityDataset, identity: str, split: str):
    """``(identity id, table, its frames, look-at point, yaw, elevation)`` of an identity's cameras in ``split``
    (:func:`look_at_point`, :func:`view_angles` about it)."""
    ident = _dataset_identity(dataset, identity)
    table = _loaded_table(dataset, split, f"no views of identity '{identity}'")
    frames = table.frames_of(ident)
    if frames.size == 0:
        raise RenderError(f"identity '{identity}' has no frames in split '{split}'")
    centre = look_at_point(table.c2w[frames])
    return (ident, table, frames, centre, *view_angles(table.c2w[frames], centre))


def _reach(angles: np.ndarray) -> float:
    """How far a data-framed orbit swings each way for views at ``angles`` (degrees) about their mean."""
    return max(ORBIT_MIN_DEG, float(np.percentile(np.abs(angles - angles.mean()), ORBIT_REACH_PERCENTILE)))


def orbit_reach(dataset: MultiIdentityDataset, identity: str, split: str = "train") -> Tuple[float, float]:
    """How far an identity's ``split`` views reach from their mean view, ``(yaw, pitch)`` in degrees each way: the
    swing of :func:`orbit_path` without angles (:data:`ORBIT_REACH_PERCENTILE` of the views' angles, at least
    :data:`ORBIT_MIN_DEG`). An orbit that swings farther shows views the model has to guess."""
    *_, yaw, elevation = _training_views(dataset, identity, split)
    return _reach(yaw), _reach(elevation)


def orbit_path(
    dataset: MultiIdentityDataset,
    identity: str,
    n_frames: int = ORBIT_FRAMES,
    split: str = "train",
    yaw_deg: Optional[float] = None,
    pitch_deg: Optional[float] = None,
    expression: Optional[np.ndarray] = None,
    fps: float = DEFAULT_FPS,
) -> CameraPath:
    """A camera orbit around an identity, framed like its own video.

    The orbit centre is :func:`look_at_point` of the identity's cameras in ``split``, its radius their mean
    distance to that point, the intrinsics and size those of the split; it swings about the mean view of those
    cameras (:func:`view_angles`), by ``yaw_deg`` / ``pitch_deg`` each way, by default as far as they reach
    (:data:`ORBIT_REACH_PERCENTILE` of their angles from the mean view, at least :data:`ORBIT_MIN_DEG`): a NeRF of a monocular video has seen
    the head only from that cone (a few degrees for a talking-head clip, +-18 / 12 for the procedural heads), and
    beyond it draws a view it has to guess. The expression is the identity's neutral one (:func:`neutral_frame`)
    unless given (E,).
    """
    ident, table, frames, centre, yaw, elevation = _training_views(dataset, identity, split)
    c2w = table.c2w[frames]
    distance = float(np.linalg.norm(c2w[:, :3, 3] - centre[None], axis=1).mean())
    if yaw_deg is None:
        yaw_deg = _reach(yaw)
    if pitch_deg is None:
        pitch_deg = _reach(elevation)
    cams = orbit_cameras(n_frames, distance, yaw_deg, pitch_deg, centre, float(yaw.mean()), float(elevation.mean()))
    if expression is None:
        expression = table.expression[neutral_frame(dataset, ident, split)]
    expression = np.asarray(expression, dtype=np.float32).reshape(1, -1)
    if expression.shape[1] != dataset.expression_dim:
        raise RenderError(f"expression has {expression.shape[1]} coefficients, the dataset {dataset.expression_dim}")
    return CameraPath(
        c2w=cams,
        intrinsics=np.repeat(table.intrinsics[frames[:1]], n_frames, axis=0).astype(np.float32),
        expression=np.repeat(expression, n_frames, axis=0),
        width=table.size_of(frames[0])[0],
        height=table.size_of(frames[0])[1],
        fps=fps,
        expression_space=dataset.expression_space,
    )


# ----------------------------------------------------------------------------------------------- rendering


RENDER_STEPS_PER_CELL = 4
""":func:`max_render_steps`: the finest ray-marching step is a quarter of a cell of the field's finest grid."""


def max_render_steps(model) -> int:
    """The most ray-marching steps across the box :func:`set_render_steps` takes for ``model``:
    :data:`RENDER_STEPS_PER_CELL` steps a cell of its field's finest grid (``model.field.finest_resolution`` cells
    an axis, ``sqrt(3)`` times that along the box diagonal). A finer step samples no detail the field holds (it
    interpolates its grids' cells), and only costs time."""
    cfg = _a_model(model).cfg
    return math.ceil(RENDER_STEPS_PER_CELL * math.sqrt(3) * int(cfg.field.finest_resolution))


def set_render_steps(model, steps: int) -> None:
    """Render ``model`` (outside training) with ray-marching steps of the box diagonal / ``steps``: its
    ``model.eval_render_steps``. Fewer steps render faster and a little softer: on the nine real clips the `video`
    preset's 256 against training's 128 is 2x the time for +0.06 dB (README, *Rendering speed*).

    Raises:
        RenderError: ``steps`` is not positive or above :func:`max_render_steps`, or the model does not march rays (the ``nerface`` backbone samples
            a fixed number of points a ray).
    """
    if int(steps) < 1:
        raise RenderError(f"render steps must be >= 1, got {steps}")
    cfg = getattr(_a_model(model), "cfg", None)
    if not hasattr(cfg, "eval_render_steps"):
        raise RenderError(f"{type(model).__name__} does not march rays: render steps do not apply to it")
    if getattr(cfg, "backbone", "fast") != "fast":  # every ModelConfig has eval_render_steps; nerface ignores it
        raise RenderError(f"the {cfg.backbone} backbone does not march rays (it samples a fixed number of points a "
                          "ray): render steps do not apply to it")
    most = max_render_steps(model)  # 1e9 was taken and marched for minutes
    if int(steps) > most:
        raise RenderError(f"render steps must be at most {most} for this model ({RENDER_STEPS_PER_CELL} steps a cell "
                          f"of its field's finest grid, model.field.finest_resolution {cfg.field.finest_resolution}, "
                          f"along the box diagonal: a finer step samples no more of the field), got {steps}")
    model.cfg = replace(cfg, eval_render_steps=int(steps))


def render_rays(
    model,
    origins: torch.Tensor,
    directions: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    identity: torch.Tensor,
    expression: torch.Tensor,
    background: torch.Tensor,
    frame: Optional[torch.Tensor] = None,
    uv: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """Apply ``model.render_rays`` to N rays without gradients (the model chunks them to bound its memory), in eval
    mode (``model.eval_render_steps``, as :func:`fastminerf.train.load_run` gives it) whatever mode the caller left the
    model in; the caller's mode is given back.

    Args:
        origins, directions: (N, 3) head space, unit directions.
        near, far: (N,) sampling interval.
        identity: (N,) int64 model identity ids.
        expression: (N, E).
        background: (N, 3) colour behind each ray.
        frame: (N,) int64 indices of the model's training frames whose learned codes to use (passed as
            ``frame_code``), or None for the model's default code (frames it was not trained on).
        uv: (N, 2) image position of each ray in [0, 1]^2 (:func:`fastminerf.data.pixel_uv`), passed on to a model
            with a torso layer (which needs it).

    Returns:
        The model's per-ray outputs on the CPU: at least ``rgb (N, 3)``.
    """
    n = origins.shape[0]
    device = _model_device(model)
    extra = {}
    if getattr(model, "torso", None) is not None:
        if uv is None:
            raise RenderError("this model has a torso layer: rendering needs each ray's image position (uv)")
        extra["uv"] = uv.to(device)
    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:  # a model between training steps marches with the training step otherwise
        model.eval()
    try:
        with torch.no_grad():
            res = model.render_rays(
                origins=origins.to(device),
                directions=directions.to(device),
                near=near.to(device),
                far=far.to(device),
                identity=identity.to(device),
                expression=expression.to(device),
                frame_code=None if frame is None else frame.to(device),
                background=background.to(device),
                **extra,
            )
    finally:
        if was_training:
            model.train()
    outs = {k: v.detach().to("cpu") for k, v in res.items()
            if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n}
    if "rgb" not in outs:
        raise RenderError("model.render_rays returned no per-ray 'rgb'")
    return outs


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


BackgroundLike = Union[None, str, Path, np.ndarray]
"""What a render is composited over (:func:`background_image`): None or ``"own"``, a colour, an image file or an image."""

OWN_BACKGROUND = "own"
"""The ``background`` of :func:`background_image` (and ``render --background``) that keeps the person's own."""


def background_image(background: BackgroundLike, own: Optional[np.ndarray], width: int, height: int) -> np.ndarray:
    """What a render of ``width`` x ``height`` is composited over, as one helper for the library and ``render
    --background``: (H, W, 3) float32 in [0, 1].

    Args:
        background: None or :data:`OWN_BACKGROUND` (``"own"``): ``own`` (``"own"`` without it is refused; None
            without it is white); a colour, a CSS name (white, black, grey,
            green, ...; CSS's green is #008000, a green screen's #00FF00 is ``lime``) or ``#RRGGBB``; an image file
            (read as :func:`fastminerf.data.layout.read_rgb` reads frames, resized bilinearly to the frame, antialiased when it shrinks, its aspect not
            kept); or an (h, w, 3) image, uint8 or float in [0, 1], resized likewise.
        own: the person's own background (h, w, 3), resized to the frame; None for white.

    Raises:
        RenderError: a text that is neither a colour nor an existing image file, or an image that cannot be read
            (each named); an image of another type or range (named); ``"own"`` without ``own``.
    """
    if _is_own(background):
        if background is not None and own is None:  # 'own' said, none given: not white without a word
            raise RenderError(f"background '{OWN_BACKGROUND}': no background of the person's own is given here (a "
                              "path has none); pass the image, e.g. dataset.background(identity), or None for white")
        return _background_image(own, width, height).numpy()
    if isinstance(background, (str, Path)):
        text = str(background).strip()
        if Path(text).is_file():
            try:
                image = read_rgb(text, upright=True)  # a picture, as every viewer shows it
            except (OSError, ValueError, SyntaxError) as exc:
                raise RenderError(f"cannot read the background image {text}: {exc}") from None
            return _background_image(image, width, height).numpy()
        from PIL import ImageColor

        try:
            rgb = ImageColor.getrgb(text)[:3]
        except ValueError:
            what = not_a_file(text) if Path(text).exists() else None
            if what is not None:  # a folder, a link that loops: the user sees the name there
                raise RenderError(f"background {text} {what}: give an image file, a colour or '{OWN_BACKGROUND}'") from None
            if Path(text).suffix or "/" in text or "\\" in text:  # meant as a file
                raise RenderError(f"background image {text}: no such file") from None
            raise RenderError(f"background '{text}' is neither a colour (a name such as white, black, lime, or "
                              f"#RRGGBB) nor an image file (no such file); '{OWN_BACKGROUND}' keeps the person's own") from None
        colour = np.asarray(rgb, dtype=np.float32) / 255.0
        return np.ascontiguousarray(np.broadcast_to(colour, (height, width, 3)))
    image = np.asarray(background)
    if image.ndim != 3 or image.shape[2] != 3:
        raise RenderError(f"a background image must be (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise RenderError(f"a background image must be uint8 or float in [0, 1], got {image.dtype}")
    if image.dtype != np.uint8 and image.size:  # 0..255 as float would render white wherever the person is not
        low, high = float(image.min()), float(image.max())  # NaN when any value is
        if not (low >= -RANGE_SLACK and high <= 1 + RANGE_SLACK):
            raise RenderError(f"a background image must be uint8 or float in [0, 1], got {image.dtype} values from "
                              f"{low:.4g} up to {high:.4g} (divide 8-bit values by 255)")
        image = np.clip(image, 0.0, 1.0)
    return _background_image(image, width, height).numpy()


def _is_own(background: BackgroundLike) -> bool:
    """Whether ``background`` keeps the person's own background (None or ``"own"``)."""
    return background is None or (isinstance(background, str) and background.strip().lower() == OWN_BACKGROUND)


def _person_alpha(out: Mapping[str, torch.Tensor]) -> Optional[torch.Tensor]:
    """Each ray's opacity of the whole person from a model's outputs: the head field over the torso layer
    (``person_opacity``) with a torso layer, the head field's ``opacity`` without one; None from a model that gives
    neither (``rgb`` alone)."""
    return out.get("person_opacity", out.get("opacity"))


def straight_alpha(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The person of an RGBA frame rendered over ``background`` (``render_sequence(..., alpha=True)``: colour the
    composite, alpha the person's opacity) with straight (unassociated) alpha, as PNG holds it: the background taken
    out of the colour, ``(rgb - (1 - a) * background) / a``, so that a compositor's ``a * colour + (1 - a) * B`` puts
    the person over any ``B`` without a fringe of the render's background. Colour 0 where ``a`` is under half an
    8-bit step (nothing of the person there). (H, W, 4) float32 in [0, 1]."""
    f = np.asarray(frame, dtype=np.float32)
    a = f[..., 3:4]
    person = f[..., :3] - (1.0 - a) * np.asarray(background, dtype=np.float32)
    seen = a >= 0.5 / 255.0
    colour = np.where(seen, person / np.where(seen, a, 1.0), 0.0)
    return np.concatenate([np.clip(colour, 0.0, 1.0), a], axis=-1).astype(np.float32)


def _background_image(background: Optional[np.ndarray], width: int, height: int) -> torch.Tensor:
    """(H, W, 3) float32 in [0, 1] from uint8/float (h, w, 3), resized when the size differs: bilinear, antialiased
    when it shrinks (each pixel the mean of those it covers: a 1080 px picture or a 384 px bg.png behind a 128 px
    preview, not point-sampled); white when None."""
    if background is None:
        return torch.ones(height, width, 3)
    bg = torch.from_numpy(np.array(background))  # a copy: dataset images are read-only
    bg = bg.float() / 255.0 if bg.dtype == torch.uint8 else bg.float()
    if bg.shape[:2] != (height, width):
        bg = torch.nn.functional.interpolate(bg.permute(2, 0, 1)[None], size=(height, width), mode="bilinear", align_corners=False,
                                             antialias=True)[0].permute(1, 2, 0)
    return bg.contiguous()


def render_frame(
    model,
    source: Union[MultiIdentityDataset, RayBatch],
    split: Optional[str] = None,
    index: Optional[int] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    use_frame_codes: bool = False,
    outputs: bool = False,
    expression: Optional[np.ndarray] = None,
    background: BackgroundLike = None,
):
    """Render one frame.

    Two sources:

    - a dataset with ``split`` and ``index`` (flat frame index): the frame's own camera, expression and
      background, its identity mapped to the model's by name;
    - a :class:`RayBatch` of ``height * width`` rays in row-major pixel order whose ``identity`` already holds
      model identity ids.

    Args:
        use_frame_codes: pass each ray's ``frame`` as the model's training-frame index, so the model uses
            that frame's learned code. Only right when ``dataset.table(split)`` is, row for row, the table the
            model was trained on; by default (false) every frame gets the model's default code, as frames
            outside training must.
        outputs: also return the model's per-ray outputs reshaped to (H, W, ...), with ``alpha`` (H, W) where the
            model gives an opacity: the person's (the head field over the torso layer), what the image holds of them.
        expression: ``(E,)``, rendered instead of the frame's own expression (e.g. one predicted from speech).
        background: what the person is composited over (:func:`background_image`): None or ``"own"`` the frame's
            own background (a dataset's) or the batch's; a colour, an image file or an image instead. The model
            composites it as its own (the torso layer over it, the head over that), so the image is
            ``person + (1 - alpha) * background``.

    Returns:
        ``(H, W, 3)`` float32 numpy image in [0, 1]; with ``outputs``, ``(image, dict)``.
    """
    if isinstance(source, MultiIdentityDataset):
        if split is None or index is None:
            raise RenderError("render_frame from a dataset needs split and index")
        table = _loaded_table(source, split, f"cannot render frame {index} of split '{split}'")
        try:
            index = operator.index(index)  # int, numpy's, a 0-d torch integer: what indexes a table
        except TypeError:
            needs(index, int, "index", f"a frame's flat index in split '{split}' (int: "
                  f"dataset.table('{split}').frames_of(identity) gives an identity's)")
        if not 0 <= index < len(table):  # the flat index over every identity's frames of the split
            counts = ", ".join(f"{n}: {len(table.frames_of(i))}" for i, n in enumerate(source.identities))
            raise RenderError(f"cannot render frame {index} of split '{split}': it has {len(table)} frames, indexed "
                              f"0 to {len(table) - 1} over its identities in order ({counts})")
        rays = frame_rays(source, split, index)
        width, height = table.size_of(index)
        name = source.identities[int(table.identity[index])]
        rays.identity = torch.full_like(rays.identity, identity_id(model, name))
    elif isinstance(source, RayBatch):
        rays = source
        if height is None or width is None or height * width != len(rays):
            raise RenderError(f"a RayBatch of {len(rays)} rays needs height * width equal to it, got {height} x {width}")
    else:
        raise RenderError(f"render_frame renders a MultiIdentityDataset or a RayBatch, got {type(source).__name__}")
    if expression is not None:
        e = torch.as_tensor(np.asarray(expression, np.float32))
        if e.shape != rays.expression.shape[1:]:
            raise RenderError(f"expression of shape {tuple(e.shape)} given for rays with {rays.expression.shape[1]} "
                              "coefficients")
        rays = replace(rays, expression=e.expand_as(rays.expression).contiguous())
    if not _is_own(background):
        bg = torch.from_numpy(background_image(background, None, width, height)).reshape(-1, 3)
        rays = replace(rays, background=bg.to(rays.background.dtype))
    out = render_rays(
        model,
        rays.origins,
        rays.directions,
        rays.near,
        rays.far,
        rays.identity,
        rays.expression,
        rays.background,
        frame=rays.frame if use_frame_codes else None,
        uv=rays.uv,
    )
    image = out["rgb"].reshape(height, width, 3).clamp(0, 1).numpy().astype(np.float32)
    if outputs:
        person = _person_alpha(out)
        if person is not None:  # a model that gives rgb alone has no alpha to give
            out["alpha"] = person
        return image, {k: v.reshape(height, width, *v.shape[1:]) for k, v in out.items()}
    return image


def render_sequence(
    model,
    path: CameraPath,
    identity: Union[int, str],
    background: BackgroundLike = None,
    aabb: Optional[Sequence[float]] = None,
    near_far: Optional[Tuple[float, float]] = None,
    progress: Optional[ProgressFn] = None,
    alpha: bool = False,
) -> Iterator[np.ndarray]:
    """Render every frame of a path for one identity, one frame at a time (a generator). A frame with the camera and
    expression of the one before it (a path at a higher rate than its driver's repeats frames, :meth:`CameraPath.at_fps`)
    is given that one's picture again, not rendered twice.

    Each ray is sampled inside ``aabb`` (``ray_aabb``), or over ``near_far`` when given; exactly one of the two.

    Args:
        model: the model.
        path: cameras and expressions.
        identity: model identity id, or its name.
        background: what the person is composited over (:func:`background_image`): an (h, w, 3) uint8 or float
            image, resized to the path's size when it differs, a colour or an image file; white when None (a path
            has no background of its own).
        aabb: ``[xmin, ymin, zmin, xmax, ymax, zmax]`` head box in head space.
        near_far: a fixed sampling interval instead.
        progress: called as ``progress(frames_done, frames_total)``.
        alpha: yield RGBA frames: the colour as without it (the person over ``background``), the alpha the person's
            opacity (the head field over the torso layer); :func:`straight_alpha` takes the background out.

    Yields:
        ``(H, W, 3)`` float32 frames in [0, 1]; ``(H, W, 4)`` with ``alpha``.
    """
    _a_camera_path(path)
    if (aabb is None) == (near_far is None):
        raise RenderError("render_sequence needs exactly one of aabb and near_far")
    why = expression_space_mismatch(getattr(model, "expression_space", None), path.expression_space,
                                    "the driver", None)
    if why is not None:
        raise RenderError(why)
    ident = identity_id(model, identity) if isinstance(identity, str) else int(identity)
    w, h = path.width, path.height
    n = w * h
    bg = torch.from_numpy(background_image(background, None, w, h)).reshape(n, 3)
    ids = torch.full((n,), ident, dtype=torch.int64)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    uv = pixel_uv(torch.stack([cols.reshape(-1), rows.reshape(-1)], 1), w, h)
    if progress is not None:
        progress(0, len(path))
    last: Optional[np.ndarray] = None  # the frame before, given again for a repeat of it (at_fps at a higher rate)
    for b in range(len(path)):
        if last is not None and all(np.array_equal(x[b], x[b - 1]) for x in (path.c2w, path.intrinsics, path.expression)):
            yield last.copy()
            if progress is not None:
                progress(b + 1, len(path))
            continue
        o, d = camera_rays(torch.from_numpy(path.c2w[b]), torch.from_numpy(path.intrinsics[b]), w, h)
        if aabb is not None:
            near, far = ray_aabb(o, d, torch.as_tensor(aabb, dtype=torch.float32))
        else:
            near = torch.full((n,), float(near_far[0]))  # type: ignore[index]
            far = torch.full((n,), float(near_far[1]))  # type: ignore[index]
        ex = torch.from_numpy(np.ascontiguousarray(path.expression[b])).float().expand(n, -1)
        out = render_rays(model, o, d, near, far, ids, ex, bg, frame=None, uv=uv)
        rgb = out["rgb"].reshape(h, w, 3)
        if alpha:
            person = _person_alpha(out)
            if person is None:
                raise RenderError("the model returned no per-ray 'opacity': no alpha to give")
            rgb = torch.cat([rgb, person.reshape(h, w, 1).to(rgb.dtype)], dim=2)
        last = rgb.clamp(0, 1).numpy().astype(np.float32)
        yield last.copy()
        if progress is not None:
            progress(b + 1, len(path))


# ------------------------------------------------------------------------------------------------- video


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(…, 3) float in [0, 1] (clipped) or uint8 -> uint8, rounding to nearest."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a
    return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_float(image: np.ndarray) -> np.ndarray:
    """(…, C) uint8 (divided by 255) or float -> float32, the other way round from :func:`to_uint8`."""
    a = np.asarray(image)
    return a.astype(np.float32) / np.float32(255.0) if a.dtype == np.uint8 else a.astype(np.float32, copy=False)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`write_video` wrote."""

    path: Optional[Path]
    """The mp4, or None when only PNG frames were written."""
    n_frames: int
    """Frames written."""
    width: int
    """Width of the frames (the mp4 is padded to an even width; see :func:`write_video`)."""
    height: int
    """Height of the frames."""
    png_dir: Optional[Path]
    """Folder of ``00000.png ...`` when PNG frames were requested."""
    audio_seconds: float = 0.0
    """Seconds of sound in the mp4 (0 when it is silent)."""
    alpha_path: Optional[Path] = None
    """The grey matte video of RGBA frames' alpha beside the mp4 (:func:`alpha_video_path`), or None."""


PNG_LEVEL = 6
"""zlib level of the PNGs render and eval write (a frame folder, side-by-side images): imageio's own default, which
they were written with before :func:`fastminerf.data.writer.write_png` wrote them whole or not at all."""


VIDEO_OUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi")
"""Suffixes of the files :func:`write_video` writes (containers that hold H.264 video and AAC sound; ffmpeg picks the
container by the suffix)."""

SRGB_VIDEO_PARAMS = ["-vf", "scale=out_color_matrix=bt709:out_range=tv:flags=accurate_rnd,setparams=range=tv:"
                     "colorspace=bt709:color_primaries=bt709:color_trc=iec61966-2-1"]
"""ffmpeg's output options of :func:`write_video`: the frames are sRGB, converted to yuv420p with the BT.709 matrix
(tv range) and tagged so (BT.709 primaries, which sRGB's are, sRGB's transfer): a player turns them back into RGB
with the matrix the video names; untagged, players guess (browsers BT.709 for HD, others BT.601), and ffmpeg's
default conversion is BT.601, which a BT.709 guess shows with skin a few levels off and saturated colours 15-40."""

NTSC_RATE_SLACK = 0.005
"""How far (frames/s) a rate may be from an NTSC rate ``N * 1000 / 1001`` to be read as it: ffmpeg lists those rates
to two decimals (29.97, 23.98, 59.94), and people write 23.976."""


def video_rate(fps: float) -> Fraction:
    """The exact frame rate :func:`write_video` writes for ``fps``: an NTSC rate given in decimals (29.97, 23.976,
    23.98, 59.94: within :data:`NTSC_RATE_SLACK` of ``N * 1000 / 1001``, as ffmpeg lists a phone's or a
    camcorder's 30000/1001 video, and as prepare reads a driver's rate) is that fraction, the rate editors' timelines
    and players run such video at; any other rate is its nearest fraction (25, 25/2, 30)."""
    rate = Fraction(float(fps)).limit_denominator(1_000_000)
    ntsc = round(float(fps) * 1.001)
    if rate.denominator != 1 and ntsc > 0 and abs(float(fps) - ntsc * 1000 / 1001) <= NTSC_RATE_SLACK:
        return Fraction(ntsc * 1000, 1001)
    return rate


FASTSTART_SUFFIXES = (".mp4", ".m4v", ".mov")
"""The QuickTime-family containers, whose index (``moov``) :func:`write_video` puts before the pictures (ffmpeg's
``+faststart``; its default is after them), so that a browser or phone plays the video while it downloads."""


def alpha_video_path(path: PathLike) -> Path:
    """The matte video :func:`write_video` writes beside ``path`` for RGBA frames: ``OUT_alpha.mp4`` for
    ``OUT.mp4`` (the same container)."""
    path = Path(path)
    return path.with_name(f"{path.stem}_alpha{path.suffix}")


def _part_path(out: Path) -> Path:
    """Where :func:`write_video` writes the video ``out``: beside it, renamed at the end, so that an interrupted
    render leaves an earlier video of that name whole; a name of this write's own (:func:`write_id`), so that two
    renders to ``out`` at once do not encode into one file (the last one to end stays)."""
    return out.with_name(f".{out.stem}.{write_id()}.part{out.suffix}")


def _check_video_out(out: Path) -> None:
    """Refuse a video file name ffmpeg would only fail on once it had every frame (a folder, a suffix that is no
    video container, a folder that cannot be written), and make its folder."""
    if out.is_dir():
        raise RenderError(f"{out} is a folder: give the video's file name (e.g. {out / 'video.mp4'})")
    if out.suffix.lower() not in VIDEO_OUT_SUFFIXES:
        # ffmpeg picks the container by the suffix: none failed after the first frames; .webm, .gif or .png wrote an
        # empty or broken file in place of an earlier one and reported nothing
        raise RenderError(f"{out}: a video needs the suffix {', '.join(VIDEO_OUT_SUFFIXES)} (H.264 with AAC sound), "
                          f"not '{out.suffix}'")
    if not out.parent.is_dir():  # made when the video is written (write_video)
        check_folder(out.parent, f"the video {out.name}", RenderError)
        return
    part = _part_path(out)
    try:  # before any frame is rendered: ffmpeg would only fail once it had them all
        part.touch()
        part.unlink()
    except OSError as exc:
        raise RenderError(f"{out}: cannot write the video there ({exc.strerror or exc})") from None


def _check_png_dir(pngs: Path) -> None:
    """Refuse a PNG folder in or under a dataset's identity folder (one holding a ``transforms_<split>.json``): the
    numbered frames (``00000.png`` on, the names ``prepare`` gives an identity's ``frames/``) would overwrite its
    frames, and the clean-up of frames past the video's end remove the rest."""
    for folder in (pngs, *pngs.parents):
        if is_identity_dir(folder):
            raise RenderError(f"{pngs}: PNG frames would go into the dataset identity folder {folder} (it holds "
                              f"transforms_{identity_splits(folder)[0]}.json), where numbered frames overwrite or "
                              "remove its images; give a folder outside the dataset")


def check_outputs(out: Optional[PathLike], png_dir: Optional[PathLike] = None, alpha: bool = False) -> None:
    """Refuse what :func:`write_video` would refuse of its outputs, for a caller to call before any work (``render``
    before it reads the model or prepares a driver): a video name that is a folder, whose suffix is no video container
    or whose folder cannot be written; with ``alpha`` the matte's name beside it (:func:`alpha_video_path`) alike; a
    ``png_dir`` that is a file or cannot be made, or lies in or under a dataset's identity folder. Nothing is made
    (:func:`write_video` makes the folders)."""
    if out is not None:
        _check_video_out(Path(out))
        if alpha:
            _check_video_out(alpha_video_path(out))
    if png_dir is not None:
        _check_png_dir(Path(png_dir).resolve())
        check_folder(png_dir, "the PNG frames", RenderError)


def check_eval_out(out_dir: PathLike) -> None:
    """Refuse an :func:`evaluate` ``out_dir`` that is a file or cannot be made, naming it (evaluate does, before any
    frame; ``eval`` calls it before it reads the runs); evaluate makes it when it writes there."""
    check_folder(out_dir, "metrics.json and the side-by-side images", RenderError)


def write_video(
    frames: Iterable[np.ndarray],
    path: Optional[PathLike],
    fps: float = DEFAULT_FPS,
    png_dir: Optional[PathLike] = None,
    quality: float = 8.0,
    audio: Optional[Audio] = None,
    rendered_over: Optional[np.ndarray] = None,
) -> VideoInfo:
    """Write frames to an H.264 mp4 (through the ffmpeg that imageio-ffmpeg ships) and/or PNG files.

    Frames stream through: the iterable is consumed once and never held in memory. The mp4 is yuv420p, which
    needs even sizes: an odd width or height is padded by one replicated column or row (never resized). An mp4, .mov
    or .m4v has its index before the pictures (:data:`FASTSTART_SUFFIXES`): a browser plays it as it downloads.

    RGBA frames (``render_sequence(..., alpha=True)``): the mp4 shows their colour, and beside it a grey matte video
    of their alpha, :func:`alpha_video_path` (``OUT_alpha.mp4``: H.264 in yuv420p has no alpha channel; an editor
    uses it as a luma matte; RGB frames into the same mp4 remove an earlier render's matte, which no longer matches); the PNG frames are RGBA with straight (unassociated) alpha, what PNG holds and
    compositors expect: with ``rendered_over``, the background their colour was composited over is taken out of it
    (:func:`straight_alpha`); without it their colour is written as it is.

    Args:
        frames: (H, W, 3) or (H, W, 4) float in [0, 1] or uint8, all one size and shape.
        path: the mp4 to write (its folder is created; or .mov, .m4v, .mkv, .avi: :data:`VIDEO_OUT_SUFFIXES`), or None
            for PNG frames only.
        fps: frame rate (an NTSC rate given in decimals, 29.97, is written as its exact fraction: :func:`video_rate`).
        png_dir: also write each frame as ``png_dir/00000.png, 00001.png, ...`` (numbered frames past this video's
            end, left there by an earlier render, are removed).
        quality: imageio-ffmpeg quality, 1 (worst) to 10 (best): x264's crf ``int((1 - quality / 10) * 51)``, the
            default 8 crf 10 (42 dB against the frames of a real-clip render); above 9.8 crf 0, lossless coding
            of the yuv420p pictures (whose chroma is still halved) in x264's High 4:4:4 Predictive profile, which
            browsers, QuickTime and phones do not play. The exact frames are ``png_dir``'s.
        audio: a soundtrack for the mp4 (AAC, at its rate and channels; a rate AAC lacks at the next AAC rate above
            it, 96 kHz at most: :func:`fastminerf.audio.aac_rate`), as long as the video should be
            (:func:`fastminerf.audio.frame_soundtrack`).
        rendered_over: (H, W, 3) float in [0, 1], the background the colour of RGBA frames was rendered over.

    Returns:
        A :class:`VideoInfo`.

    Raises:
        RenderError: no frames, frames of different sizes or channels, an ``fps`` that is not a positive number, a
            ``quality`` out of its range, a ``path`` that is a folder, whose suffix is not a video container or whose
            folder cannot be written, a ``png_dir`` that is a file, cannot be made or lies in or under a dataset's
            identity folder (these before any frame is asked for), or ffmpeg failed (an earlier file at ``path`` is
            then left as it was).
    """
    import imageio_ffmpeg

    if path is None and png_dir is None:
        raise RenderError("write_video needs an mp4 path, a png_dir, or both")
    if not 0 < fps < math.inf:  # ffmpeg wrote 0 as 16 fps and failed on a negative rate at the end
        raise RenderError(f"write_video: fps must be a positive number, got {fps}")
    if not 1 <= quality <= 10:  # imageio-ffmpeg's range; it asserts it at the first frame
        raise RenderError(f"write_video: quality {quality} is out of its range, 1 (worst) to 10 (best)")
    out = Path(path) if path is not None else None
    pngs = Path(png_dir) if png_dir is not None else None
    check_outputs(out, pngs)
    for folder in [f for f in (out and out.parent, pngs) if f is not None]:
        folder.mkdir(parents=True, exist_ok=True)
    # the video, and for RGBA frames its matte: [final name, temporary name, writer, ffmpeg process]
    videos: List[list] = []
    size: Optional[Tuple[int, int]] = None
    channels = 3
    count = 0
    png_count = 0  # PNG frames written: one ahead of count while that frame goes to ffmpeg
    wav = None
    if out is not None and audio is not None and len(audio.samples):
        try:  # a temporary file of ours for ffmpeg to read: a failure is the video's (a full disk)
            wav = write_wav(out.with_name(f".{out.name}.{write_id()}.audio.wav"), audio)
        except OSError as exc:
            raise RenderError(f"{out}: cannot write the video there ({exc.strerror or exc})") from None

    rate = video_rate(fps)

    def start(final: Path, sound: Optional[Path]) -> None:
        tmp = _part_path(final)
        even = (size[1] + size[1] % 2, size[0] + size[0] % 2)  # type: ignore[index]
        writer = imageio_ffmpeg.write_frames(  # -r (the last one ffmpeg is given wins): the exact rate
            str(tmp), even, fps=float(rate), input_params=["-r", str(rate)], quality=quality, macro_block_size=2,
            ffmpeg_log_level="error",
            audio_path=None if sound is None else str(sound), audio_codec=None if sound is None else "aac",
            output_params=SRGB_VIDEO_PARAMS + (["-movflags", "+faststart"] if final.suffix.lower() in FASTSTART_SUFFIXES
                                               else []) + ([] if sound is None else ["-ar", str(aac_rate(audio.rate))]),
        )
        writer.send(None)
        videos.append([final, tmp, writer, _ffmpeg_process(writer)])

    try:
        for frame in frames:
            img = to_uint8(frame)
            if img.ndim != 3 or img.shape[2] not in (3, 4):
                raise RenderError(f"video frames must be (H, W, 3) or (H, W, 4), frame {count} is {img.shape}")
            if size is None:
                size, channels = (img.shape[0], img.shape[1]), img.shape[2]
                if out is not None:
                    if channels == 4:  # its matte's name, checked as the video's before any frame is encoded
                        _check_video_out(alpha_video_path(out))
                    start(out, wav)
                    if channels == 4:
                        start(alpha_video_path(out), None)
            elif img.shape[:2] != size:
                raise RenderError(f"frame {count} is {img.shape[1]}x{img.shape[0]}, the video is {size[1]}x{size[0]}")
            elif img.shape[2] != channels:
                raise RenderError(f"frame {count} has {img.shape[2]} channels, the frames before it {channels}")
            if pngs is not None:
                png = img
                if channels == 4 and rendered_over is not None:
                    png = to_uint8(straight_alpha(to_float(frame), rendered_over))
                write_png(pngs / f"{count:05d}.png", png, PNG_LEVEL)
                png_count = count + 1
            pictures = [img[..., :3], np.repeat(img[..., 3:], 3, axis=2)] if channels == 4 else [img]
            for video, picture in zip(videos, pictures):
                padded = np.pad(picture, ((0, picture.shape[0] % 2), (0, picture.shape[1] % 2), (0, 0)), mode="edge")
                try:
                    video[2].send(np.ascontiguousarray(padded))
                except OSError:  # ffmpeg quit before taking every frame (imageio-ffmpeg: a broken pipe)
                    video[2] = None  # the generator has ended, and waited for ffmpeg
                    raise _encode_error(video[0], video[1], video[3], count) from None
            count += 1
        for video in videos:
            video[2].close()  # waits for ffmpeg, whose exit status imageio-ffmpeg does not check
            video[2] = None
            failed = _encode_error(video[0], video[1], video[3], count, at_end=True)
            if failed is not None:
                raise failed
        for video in videos:
            video[1].replace(video[0])
        if videos and channels == 3:  # an earlier RGBA render's matte of OUT.mp4 matches this one no more
            alpha_video_path(out).unlink(missing_ok=True)
        for video in videos:  # part files and soundtracks that renders killed mid-write left beside it
            final = video[0]
            remove_killed_writes(final.parent, f".{final.stem}.", f".part{final.suffix}")
            remove_killed_writes(final.parent, f".{final.name}.", ".audio.wav")
    except KeyboardInterrupt as exc:  # what the command prints after 'interrupted': the video is not there
        exc.args = (_interrupted_note(out, pngs, png_count),)
        raise
    finally:
        for video in videos:
            if video[2] is not None:
                video[2].close()
            video[1].unlink(missing_ok=True)
        if wav is not None:
            wav.unlink(missing_ok=True)
    if size is None:
        raise RenderError("write_video got no frames")
    if pngs is not None:  # frames past this video's end, left by an earlier, longer render into the same folder
        for stale in pngs.glob("[0-9][0-9][0-9][0-9][0-9]*.png"):  # five digits or more: 100000.png on
            if stale.stem.isdigit() and int(stale.stem) >= count:
                stale.unlink()
    seconds = audio.seconds if wav is not None else 0.0
    matte = alpha_video_path(out) if out is not None and channels == 4 else None
    return VideoInfo(path=out, n_frames=count, width=size[1], height=size[0], png_dir=pngs, audio_seconds=seconds,
                     alpha_path=matte)


def _interrupted_note(out: Optional[Path], pngs: Optional[Path], count: int) -> str:
    """What a :func:`write_video` stopped after writing ``count`` PNG frames leaves: no video (its part file is
    removed; an earlier file of that name is kept as it was), the PNG frames written so far, and any an earlier
    render left after them."""
    said = []
    if out is not None:
        said.append(f"before the video {out} was written" + (" (the file there is an earlier one, left as it was)"
                                                             if out.exists() else ""))
    if pngs is not None:
        if count:
            said.append(f"{counted(count, 'PNG frame')} of this render written to {pngs} (00000.png to {count - 1:05d}.png)")
        else:
            said.append(f"no PNG frame written to {pngs}")
        if any(p.stem.isdigit() and int(p.stem) >= count for p in pngs.glob("[0-9][0-9][0-9][0-9][0-9]*.png")):
            said.append("the frames after them there are an earlier render's")
    return "; ".join(said)


def _ffmpeg_process(writer) -> Optional["subprocess.Popen"]:
    """The ffmpeg process behind a started ``imageio_ffmpeg.write_frames`` generator (its local ``p``), whose exit
    status imageio-ffmpeg never checks; None if this imageio-ffmpeg keeps it under another name."""
    import subprocess

    frame = getattr(writer, "gi_frame", None)
    proc = frame.f_locals.get("p") if frame is not None else None
    return proc if isinstance(proc, subprocess.Popen) else None


def _encode_error(out: Path, part: Path, encoder, count: int, at_end: bool = False) -> Optional[RenderError]:
    """The error of an ffmpeg that failed to write ``part`` (the video's temporary name), naming ``out``; None when
    it exited with status 0 and wrote a file (``at_end``: once it had every frame)."""
    status = encoder.poll() if encoder is not None else None
    wrote = part.is_file() and part.stat().st_size > 0
    if at_end and wrote and status in (0, None):
        return None
    how = f"exit status {status}" if status not in (0, None) else "it stopped taking frames" if wrote else "no file"
    when = f"after {count} frames" if at_end else f"at frame {count}"
    kept = f"; the earlier {out.name} is kept as it was" if out.exists() else ""
    return RenderError(f"{out}: ffmpeg failed to encode the video {when} ({how}; its message is above){kept}")


def render_video(
    model,
    path: CameraPath,
    identity: Union[int, str],
    out: Optional[PathLike],
    background: BackgroundLike = None,
    aabb: Optional[Sequence[float]] = None,
    near_far: Optional[Tuple[float, float]] = None,
    png_dir: Optional[PathLike] = None,
    fps: Optional[float] = None,
    progress: Optional[ProgressFn] = None,
    audio: bool = True,
    beside_driver: bool = False,
    caption: Optional[str] = None,
    alpha: bool = False,
    size: Optional[int] = None,
) -> VideoInfo:
    """:func:`render_sequence` streamed into :func:`write_video` (``fps`` defaults to the path's; another rate shows
    the path in real time, :meth:`CameraPath.at_fps`).

    With ``beside_driver`` each video frame is ``driver | render`` (the driver frame the path took it from,
    :attr:`CameraPath.sources`, scaled to the render's height), both enlarged to at least
    :data:`SIDE_BY_SIDE_MIN_PANEL` px, under a header with ``caption`` and a label over each half; a path without
    driver frames (an orbit, a recording's) is refused.

    With ``audio`` (default) and a path that has a recording and frame times (a driven path whose driver has
    ``audio.wav``, a :func:`speech_path`'s recording), the mp4 carries the sound of each frame at its own time
    (:meth:`CameraPath.soundtrack`), the recording at its own rate and channels, so the target speaks with the
    driver's voice in sync with the driver's mouth (or says the recording).

    ``background`` is what the person is composited over (:func:`background_image`: an image, a colour or an image
    file; white when None). With ``alpha`` the frames carry the person's opacity too (:func:`write_video`: PNG frames
    RGBA with straight alpha, and a grey matte video ``OUT_alpha.mp4`` beside the mp4); not with ``beside_driver``,
    whose driver half has no alpha.

    ``size``: the video's longer side in pixels (:meth:`CameraPath.at_size`; default the path's size); an image
    ``background`` is resized to it, the driver half of ``beside_driver`` scaled to its height.
    """
    path = _a_camera_path(path).at_size(size).at_fps(fps)
    if beside_driver and path.sources is None:
        raise RenderError("beside_driver: this path has no driver frames to show (an orbit's or a recording's)")
    if beside_driver and alpha:
        raise RenderError("alpha and beside_driver: the driver's frame beside the render has no alpha; render the "
                          "person alone for compositing")
    bg = background_image(background, None, path.width, path.height)
    sound = path.soundtrack() if audio and out is not None else None
    frames = render_sequence(model, path, identity, bg, aabb, near_far, progress, alpha=alpha)
    if beside_driver:
        # the frames first: zip then resumes the render past its last frame, which reports it done
        frames = (_beside_driver(source, frame, caption) for frame, source in zip(frames, path.sources))
    return write_video(frames, out, path.fps, png_dir, audio=sound, rendered_over=bg if alpha else None)


def _beside_driver(source, frame: np.ndarray, caption: Optional[str]) -> np.ndarray:
    """``driver | render`` of one video frame (uint8), the driver frame read from ``source`` and scaled to the
    render's height, both enlarged to at least :data:`SIDE_BY_SIDE_MIN_PANEL` px, under a labelled header."""
    from PIL import Image

    render = to_uint8(frame)
    h, w = render.shape[:2]
    try:
        driver = read_rgb(source)
    except (OSError, ValueError, SyntaxError) as exc:
        raise RenderError(f"cannot read the driver frame {source}: {exc}") from None
    if driver.shape[0] != h:
        size = (max(1, round(driver.shape[1] * h / driver.shape[0])), h)
        driver = np.asarray(Image.fromarray(driver).resize(size, Image.BILINEAR))
    scale = max(1, -(-SIDE_BY_SIDE_MIN_PANEL // max(1, min(h, w))))
    img = np.concatenate([driver, render], axis=1)
    if scale > 1:
        img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    return _with_header(img, caption or "", ("driver", "render"), (0, driver.shape[1] * scale))


# -------------------------------------------------------------------------------------------- evaluation


def side_by_side(pred: np.ndarray, target: np.ndarray, error_gain: float = ERROR_GAIN, caption: Optional[str] = None,
                 min_panel: int = 1) -> np.ndarray:
    """``prediction | ground truth | error`` as one uint8 image (H, 3W, 3), of two (H, W, 3) images float in [0, 1]
    or uint8 (a dataset's frame, ``dataset.image(split, index)``).

    The error panel is grey: ``min(1, error_gain * mean_c |pred - target|)``. The panels are enlarged (nearest
    neighbour, by the smallest whole factor) to at least ``min_panel`` pixels a side. With a ``caption`` the image
    has a dark header of :data:`SIDE_BY_SIDE_HEADER` rows on top: the caption, then a label over each panel
    (``render``, ``truth``, the error and its gain): (SIDE_BY_SIDE_HEADER + H', 3W', 3), a caption wider than the
    image wrapping onto more lines (the header :data:`fastminerf.drawing.LINE_HEIGHT` rows taller for each).
    """
    p, t = to_float(pred), to_float(target)
    if p.shape != t.shape or p.ndim != 3:
        raise RenderError(f"side_by_side needs two (H, W, 3) images of one size, got {p.shape} and {t.shape}")
    err = np.clip(error_gain * np.abs(p - t).mean(axis=2, keepdims=True), 0.0, 1.0)
    img = to_uint8(np.concatenate([np.clip(p, 0, 1), np.clip(t, 0, 1), np.repeat(err, 3, axis=2)], axis=1))
    scale = max(1, -(-int(min_panel) // max(1, min(p.shape[:2]))))
    if scale > 1:
        img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    if caption is None:
        return img
    panel = p.shape[1] * scale
    return _with_header(img, caption, ("render", "truth", f"|render - truth| x{error_gain:g}"),
                        (0, panel, 2 * panel))


def _with_header(img: np.ndarray, caption: str, labels: Sequence[str], starts: Sequence[int]) -> np.ndarray:
    """``img`` (uint8) under a dark header of :data:`SIDE_BY_SIDE_HEADER` rows: ``caption``, then each label over
    its panel (``starts``: the panels' first columns). A caption wider than ``img`` wraps at spaces onto more lines,
    the header growing by :data:`fastminerf.drawing.LINE_HEIGHT` rows for each."""
    from PIL import Image, ImageDraw

    from .drawing import LINE_HEIGHT, wrap_text

    # a caption wider than the image (two long identity names over 128 px panels) wraps onto more lines
    lines = wrap_text(ImageDraw.Draw(Image.new("RGB", (1, 1))), caption, img.shape[1] - 8) or [""]
    extra = (len(lines) - 1) * LINE_HEIGHT
    head = Image.new("RGB", (img.shape[1], SIDE_BY_SIDE_HEADER + extra), (30, 30, 30))
    draw = ImageDraw.Draw(head)
    for k, line in enumerate(lines):
        draw.text((4, 2 + k * LINE_HEIGHT), line, fill=(235, 235, 235))
    for x, label in zip(starts, labels):
        draw.text((x + 4, SIDE_BY_SIDE_HEADER // 2 + 1 + extra), label, fill=(200, 200, 200))
    return np.concatenate([np.asarray(head), img], axis=0)


LANDMARK_EVAL_RAYS = 512
"""Rays through tracked landmarks per identity for :func:`evaluate`'s geometry check."""


def _remove_frame_images(folder: Path, keep: Sequence[str] = ()) -> None:
    """Remove the side-by-side images :func:`evaluate` numbers by frame (``0000.png``; four digits or more: a split of
    over 10,000 frames numbers its images ``10000.png`` on) from ``folder``, but those named in ``keep``."""
    for stale in folder.glob("[0-9][0-9][0-9][0-9]*.png"):
        if stale.stem.isdigit() and stale.name not in keep:
            stale.unlink()


def _landmark_depth_error(model, dataset: MultiIdentityDataset, split: str, name: str, frames: np.ndarray) -> Optional[float]:
    """Median distance (head units) between the rendered depth and the tracked landmarks (``landmarks.npz``) along
    :data:`LANDMARK_EVAL_RAYS` rays through visible landmarks of ``frames`` (a fixed draw), or None without any."""
    drawn = landmark_rays(dataset, split, frames, LANDMARK_EVAL_RAYS, torch.Generator().manual_seed(0))
    if drawn is None:
        return None
    rays, target = drawn
    identity = torch.full_like(rays.identity, identity_id(model, name))
    out = render_rays(model, rays.origins, rays.directions, rays.near, rays.far, identity, rays.expression,
                      rays.background, uv=rays.uv)
    return float((out["depth"] - target).abs().median())


def _box_psnr(pred: np.ndarray, truth: np.ndarray, *boxes: Sequence[float]) -> float:
    """PSNR over the pixels of one box or the union of several, each ``[y0, y1, x0, x1]`` in fractions of the image
    (:func:`fastminerf.data.rays.box_pixels`)."""
    inside = np.zeros(truth.shape[:2], dtype=bool)
    for box in boxes:
        y0, y1, x0, x1 = box_pixels(box, truth.shape[0], truth.shape[1]).tolist()
        inside[y0:y1, x0:x1] = True
    return float(psnr(np.asarray(pred)[inside][None], truth[inside][None]))  # the pixels as one (1, M, 3) image


def _eval_render_steps(model) -> Optional[int]:
    """Ray-marching steps across the head box ``model`` renders with outside training (``eval_render_steps``, else
    ``render_steps``), or None for a model that does not march rays."""
    if getattr(getattr(model, "cfg", None), "backbone", "fast") != "fast":
        return None  # the nerface backbone samples a fixed number of points a ray
    steps = getattr(model, "eval_steps", None)  # MINeRF's own rule (a stand-in model has none)
    return None if steps is None else int(steps)


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN where none is), without NumPy's empty-slice warning."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate(
    model,
    dataset: MultiIdentityDataset,
    split: str,
    out_dir: Optional[PathLike] = None,
    identities: Optional[Sequence[str]] = None,
    max_frames: Optional[int] = None,
    with_lpips: bool = True,
    with_lmd: bool = True,
    expressions: Optional[np.ndarray] = None,
    expressions_from: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
    models_from: Optional[Mapping[str, str]] = None,
) -> Dict[str, object]:
    """Render every frame of a split and compare it with the ground truth.

    Each frame is rendered from its own camera, expression and background (:func:`render_frame`); PSNR,
    SSIM and L1 (and LPIPS when :func:`fastminerf.metrics.lpips_status` allows it) are computed per frame,
    averaged over each identity's frames, and ``mean`` is the unweighted mean over identities (every
    identity counts alike, however long its video); SSIM is NaN for frames smaller than its 11-pixel window. Where frames have a face box (``bbox``), ``face_psnr`` is
    the PSNR inside it (the full frame's PSNR is mostly background and torso); where mediapipe is installed,
    ``mouth_psnr`` is the PSNR in a box around the real frame's lips (mediapipe's landmarks, grown by
    :data:`fastminerf.data.rays.MOUTH_MARGIN`: lips, teeth and mouth interior), and ``lmd`` the lip-landmark distance
    in pixels (:class:`fastminerf.metrics.LandmarkDistance`), averaged over the frames where a face is found in
    both the render and the truth (``lmd_frames`` of them); likewise the eyes: ``eye_psnr`` in the boxes around the real
    frame's eyes (:data:`fastminerf.data.rays.EYE_MARGIN`: lids, whites, irises) and ``ear_error``, the mean absolute
    difference between the render's and the truth's eye aspect ratios (:func:`fastminerf.metrics.eye_aspect_ratio`,
    both eyes: an eye rendered open where the person blinks, or half shut, counts about 0.2).

    Args:
        model: the model, rendering where it is (LPIPS runs there too; the scores come back as floats); every
            evaluated identity name must be one of its ``identity_names``. Or a dict of models
            by identity name, each identity rendered by its own (e.g. runs that :func:`fastminerf.train.personalize`
            fine-tuned for one identity each); ``mean`` is then over identities as always.
        dataset: ground truth with ``split`` loaded.
        split: split to evaluate.
        out_dir: when given, writes ``out_dir/metrics.json`` (the returned dict) and
            ``out_dir/side_by_side/<identity>/<k>.png`` (prediction | truth | error, captioned with the identity,
            split, frame and PSNR, panels of at least :data:`SIDE_BY_SIDE_MIN_PANEL` px; k the frame's position
            in the identity's split; numbered images of an evaluated identity's frames not rendered now, left by an
            earlier evaluation into the folder, are removed, and its metrics.json and numbered images of identities
            not evaluated now as soon as rendering starts, so an evaluation stopped part way leaves no scores beside
            the images it replaced, and the folder holds one evaluation's images).
        identities: names to evaluate, or one name (default all of the dataset's).
        max_frames: evaluate only the first ``max_frames`` frames of each identity.
        with_lpips: compute LPIPS when available.
        with_lmd: compute LMD when mediapipe is installed.
        expressions: ``(N, E)``, one row per row of the split's table, rendered instead of the tracked expressions
            (e.g. :func:`fastminerf.speech.split_expressions`: lip sync measured against the real frames).
        expressions_from: what ``expressions`` are, recorded as the result's ``expressions`` ("tracked" without
            them, "given" by default with them).
        progress: called as ``progress(frames_done, frames_total)``.
        models_from: where each identity's model came from (e.g. ``{name: run folder}``, what ``fastminerf eval``
            gives), recorded as the result's ``runs`` for the evaluated identities: which run scored whom, read later.

    Returns:
        ``{"split", "expressions", "frames", "metrics": [...], "lpips": status text, "lmd": status text, "identities": {name:
        {"frames", "psnr", "ssim", "l1"[, "lpips"][, "face_psnr"][, "mouth_psnr", "eye_psnr", "lmd", "ear_error", "lmd_frames"]
        [, "landmark_depth"][, "pose_gap"], "width", "height"}},
        "mean": {...}[, "render_steps": {name: ray-marching steps it was rendered with}], "machine": where it ran
        (:func:`fastminerf.backend.machine` of the model's device: CPU, threads, versions, GPU, as benchmark records
        have it)[, "runs": ``models_from`` of the evaluated identities]}`` (a metric without any frame of an identity is NaN there, null in metrics.json; the mean skips it). ``width`` and ``height`` are the
        identity's frame size in pixels, the unit of its ``lmd`` (people of several sizes evaluate together). ``landmark_depth`` (where the dataset has
        ``landmarks.npz``) is the median distance in head units between the rendered depth and the tracked
        landmarks along rays through them: whether the geometry sits where the face is (NaN for identities
        without landmarks; the mean skips them). ``pose_gap`` (where ``dataset`` has its ``train`` split loaded)
        is the mean angle in degrees from each evaluated frame's head pose to the nearest of the identity's
        training head poses (:func:`fastminerf.metrics.rotation_gap_deg`; 0 on ``train`` itself): a frame far
        from them shows the head from a side its clip never did, a view the field extrapolates.

    Raises:
        RenderError: an identity unknown to the dataset or the model (named), a split not loaded, or an ``out_dir``
            that is a file or cannot be made (named, before any frame is rendered), or that another evaluation
            writes now (it holds ``out_dir/.lock`` while it writes; named with its process).
        DatasetError: the data is in another expression space than the model, or has another expression length
            (both named).
    """
    table = _loaded_table(dataset, split, "cannot evaluate")
    names = list(dataset.identities) if identities is None else as_list(identities)  # one name: that identity
    models = dict(model) if isinstance(model, Mapping) else {name: model for name in names}
    for m in {id(m): m for m in models.values()}.values():
        check_expression_space(getattr(m, "expression_space", None), dataset, "the evaluated data", "the model",
                               getattr(m, "expression_dim", None))
    for name in names:
        _dataset_identity(dataset, name)
        if name not in models:
            raise RenderError(f"no model given for identity '{name}'; given: {sorted(models)}")
        identity_id(models[name], name)
    if expressions is not None and np.shape(expressions) != table.expression.shape:
        raise RenderError(f"expressions for split '{split}' must be {table.expression.shape}, got {np.shape(expressions)}")
    lp_ok, lp_why = lpips_status(build=True) if with_lpips else (False, "not requested")
    lmd_ok, lmd_why = landmark_status() if with_lmd else (False, "not requested")
    has_box = any(bool(table.has_bbox[table.frames_of(dataset.identities.index(n))].any()) for n in names)
    metric_names = (["psnr", "ssim", "l1"] + (["lpips"] if lp_ok else []) + (["face_psnr"] if has_box else [])
                    + (["mouth_psnr", "eye_psnr", "lmd", "ear_error"] if lmd_ok else []))
    plan: List[Tuple[str, np.ndarray]] = []
    for name in names:
        frames = table.frames_of(dataset.identities.index(name))
        plan.append((name, frames if max_frames is None else frames[:max_frames]))
    total = int(sum(f.size for _, f in plan))
    done = 0
    if progress is not None:
        progress(0, total)
    out = Path(out_dir) if out_dir is not None else None
    held = ExitStack()
    written = 0  # side-by-side images of this evaluation, for what a stopped one says it leaves
    if out is not None:  # held from the clean-up to metrics.json: another evaluation into it would mix with this one
        check_eval_out(out)
        held.enter_context(noting_interrupt(lambda: f"before {out / 'metrics.json'} was written; "
                                            f"{counted(written, 'side-by-side image')} of this evaluation written to "
                                            f"{out / 'side_by_side'}"))
        # checked, and the call's refusals are behind it: made to be locked (and removed if it is left with only that)
        held.enter_context(folder_locked(out, lambda holder: RenderError(
            f"{out} is in use by another evaluation{holder}: wait for it to end, or give another --out folder"), make=True))
    with held:
        if out is not None:  # an earlier evaluation's scores: beside images this one replaces, they would read as theirs
            (out / "metrics.json").unlink(missing_ok=True)
            # and its images of people this one does not score (their folders go when nothing else is in them)
            others = [d for d in (out / "side_by_side").glob("*") if d.is_dir() and d.name not in names]
            for folder in others:
                _remove_frame_images(folder)
                if not any(folder.iterdir()):
                    folder.rmdir()
        per_identity: Dict[str, Dict[str, float]] = {}
        marks = LandmarkDistance() if lmd_ok else None
        try:
            for name, frames in plan:
                values: Dict[str, List[float]] = {m: [] for m in metric_names}
                for index in frames.tolist():
                    pred = render_frame(models[name], dataset, split, index,
                                        expression=None if expressions is None else expressions[index])
                    truth = dataset.image(split, index).astype(np.float32) / 255.0
                    values["psnr"].append(float(psnr(pred, truth)))
                    small = min(truth.shape[:2]) < SSIM_WINDOW  # no window fits: SSIM undefined (NaN), the rest stands
                    values["ssim"].append(float("nan") if small else float(ssim(pred, truth)))
                    values["l1"].append(float(l1(pred, truth)))
                    if lp_ok:  # the network runs where its images are: where the model renders (a GPU), not the CPU
                        device = _model_device(models[name])
                        values["lpips"].append(float(lpips(torch.from_numpy(pred).to(device),
                                                           torch.from_numpy(truth).to(device))))
                    box = table.bbox_or_none(index)
                    if box is not None:
                        values["face_psnr"].append(_box_psnr(pred, truth, box))
                    if marks is not None:
                        real = marks.landmarks(truth)
                        if real is not None:  # the mouth and the eyes as the real frame has them
                            values["mouth_psnr"].append(_box_psnr(pred, truth, marks.mouth_box(real, *truth.shape[:2])))
                            values["eye_psnr"].append(_box_psnr(pred, truth, *marks.eye_boxes(real, *truth.shape[:2])))
                            found = marks.landmarks(pred)
                            if found is not None:
                                values["lmd"].append(marks.distance(found, real))
                                values["ear_error"].append(float(np.abs(eye_aspect_ratio(found) - eye_aspect_ratio(real)).mean()))
                    if out is not None:
                        folder = out / "side_by_side" / name
                        folder.mkdir(parents=True, exist_ok=True)
                        k = int(table.frame_in_identity[index])
                        caption = f"{name}  {split} frame {k}  PSNR {values['psnr'][-1]:.2f} dB"
                        write_png(folder / f"{k:04d}.png",
                                  side_by_side(pred, truth, caption=caption, min_panel=SIDE_BY_SIDE_MIN_PANEL), PNG_LEVEL)
                        written += 1
                    dataset.release(split, index)  # read once (rays and truth): kept, every frame would stay
                    done += 1
                    if progress is not None:
                        progress(done, total)
                if out is not None:  # images an earlier evaluation into this folder left of frames not rendered now
                    _remove_frame_images(out / "side_by_side" / name,
                                         {f"{int(table.frame_in_identity[i]):04d}.png" for i in frames.tolist()})
                per_identity[name] = {"frames": len(frames), **{m: float(np.mean(v)) if v else float("nan") for m, v in values.items()}}
                if frames.size:  # the size its pixels (LMD's unit) are of: people of several sizes evaluate together
                    per_identity[name]["width"], per_identity[name]["height"] = (int(v) for v in table.size_of(int(frames[0])))
                if marks is not None:
                    per_identity[name]["lmd_frames"] = len(values["lmd"])
                depth = _landmark_depth_error(models[name], dataset, split, name, frames)
                if depth is not None:
                    per_identity[name]["landmark_depth"] = depth
            if any("landmark_depth" in v for v in per_identity.values()):
                metric_names.append("landmark_depth")
                for v in per_identity.values():
                    v.setdefault("landmark_depth", float("nan"))
        finally:
            if marks is not None:
                marks.close()
        if "train" in dataset.splits:  # how far each evaluated head pose is from the poses the model was trained on
            train = dataset.table("train")
            for name, frames in plan:
                reference = train.c2w[train.frames_of(dataset.identities.index(name))][:, :3, :3]
                gaps = rotation_gap_deg(table.c2w[frames][:, :3, :3], reference)
                per_identity[name]["pose_gap"] = float(np.mean(gaps)) if gaps.size else float("nan")
            metric_names.append("pose_gap")
        mean = {m: _nanmean([per_identity[n][m] for n in names]) for m in metric_names}
        steps = {n: _eval_render_steps(models[n]) for n in names}  # what two evaluations at other steps differ by
        result: Dict[str, object] = {
            "split": split,
            "expressions": "tracked" if expressions is None else (expressions_from or "given"),
            "frames": total,
            "metrics": metric_names,
            "lpips": lp_why if lp_ok else f"unavailable: {lp_why}",
            "lmd": lmd_why if lmd_ok else f"unavailable: {lmd_why}",
            "identities": per_identity,
            "mean": mean,
        }
        if all(v is not None for v in steps.values()):
            result["render_steps"] = steps
        if models_from is not None:
            result["runs"] = {n: str(models_from[n]) for n in names if n in models_from}
        result["machine"] = machine(_model_device(models[names[0]]) if names else None)  # as benchmark records have it
        if out is not None:
            write_json(out / "metrics.json", result)
        return result
