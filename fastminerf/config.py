"""Typed, frozen configuration dataclasses: one per component.

Every component of fastminerf takes its settings from one frozen dataclass defined here, with a docstring
per field. Configs are plain data: the dataclasses read no files (:func:`load_config` reads the presets), and
derived values are computed where they are used, never written back into a config.

The field names of the data-layer configs (:class:`DataConfig`, :class:`SamplerConfig`, :class:`SynthConfig`)
match the keyword arguments of the function or class they configure, so such a config is applied with
``dataclasses.asdict``; the others are passed whole (``MINeRFField(cfg.model.field, E)``,
``train(cfg, data, out)``)::

    from dataclasses import asdict
    data = load_dataset(paths, **asdict(DataConfig(splits=("train", "val"))))
    sampler = RaySampler(data, "train", **asdict(SamplerConfig(batch_size=2048)))
    generate(out_dir, **asdict(SynthConfig(n_identities=2, n_frames=8, size=32)))

Components:

- :class:`DataConfig`: reading a dataset in the layout of ``DATASET.md`` (``fastminerf.data.load_dataset``).
- :class:`SamplerConfig`: drawing training rays (``fastminerf.data.RaySampler``).
- :class:`SynthConfig`: the procedural talking-head generator (``fastminerf.data.synth.generate``).
- :class:`PrepareConfig`: turning videos into the layout (``fastminerf.prepare.prepare``).
- :class:`SpeechConfig`: the speech-to-expression network (``fastminerf.speech``, ``fastminerf speech``).
- :class:`FieldConfig`, :class:`ModelConfig`, :class:`TrainConfig`: the MI-NeRF field, the model around it and
  the training loops; :class:`TorsoConfig`: the model's image-space torso layer; :class:`NeRFaceConfig`: the slow
  NeRFace backbone (``ModelConfig.backbone = "nerface"``), kept as the speed baseline; :class:`RunConfig` is the
  root of a run's config tree, read by :func:`load_config` from a preset in ``configs/`` (only the differences
  from the defaults) plus dotted ``key=value`` overrides, written by :func:`dump_config`.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

__all__ = [
    "ConfigError",
    "DataConfig",
    "FieldConfig",
    "ModelConfig",
    "NeRFaceConfig",
    "RunConfig",
    "SamplerConfig",
    "PrepareConfig",
    "SpeechConfig",
    "SynthConfig",
    "TorsoConfig",
    "TrainConfig",
    "dump_config",
    "apply_overrides",
    "config_from_dict",
    "flat_config",
    "load_config",
    "parse_config_text",
]


@dataclass(frozen=True)
class DataConfig:
    """How a dataset in the shared layout is read (keywords of ``load_dataset``)."""

    splits: Tuple[str, ...] = ("train",)
    """Splits to load; each names a ``transforms_<split>.json`` that every identity folder must have. A run's
    config holds ``train`` only: training and personalisation read that split (other values are refused)."""

    cache_frames: Optional[int] = 4096
    """Most decoded frames kept in memory at once (an image and its mask count as one frame); ``None`` for no count
    limit."""

    cache_bytes: Optional[int] = 2 * 1024**3
    """Most bytes of decoded frames kept in memory at once; ``None`` for no byte limit. Frames are uint8,
    so a 512x512 RGB frame takes 768 KiB. The least recently used frame is dropped first."""

    def __post_init__(self) -> None:
        # the frame cache refused them only once the run had loaded its data, as 'max_items' / 'max_bytes'
        for key in ("cache_frames", "cache_bytes"):
            if getattr(self, key) is not None and int(getattr(self, key)) < 0:
                raise ConfigError(f"data.{key} must be >= 0 or null, got {getattr(self, key)}")


@dataclass(frozen=True)
class SamplerConfig:
    """How training rays are drawn from a split (keywords of ``RaySampler`` after the dataset and split)."""

    batch_size: int = 4096
    """Rays per batch (N)."""

    seed: int = 0
    """Seed of the sampler's own random generator; the same seed gives the same batches."""

    face_fraction: float = 0.9
    """Share of each frame's rays drawn inside its face box (``bbox``), or inside its mask when the frame has
    no box; the rest are drawn uniformly over the whole image. NeRFace uses 0.9."""

    frames_per_batch: Optional[int] = 64
    """Distinct frames a batch draws its rays from (capped by the split size; with ``balance_identities`` an
    identity with fewer frames than the slots it drew fills them with its frames again); ``None`` lets every ray
    pick its own frame. Fewer frames per batch means fewer image decodes when the split does not fit the frame cache."""

    balance_identities: bool = False
    """Draw frames by picking an identity uniformly first, so identities with short videos are seen as
    often as long ones. When false every frame of the split is equally likely."""

    error_fraction: float = 0.0
    """Share of each frame's rays drawn where the model is wrong (error-map sampling, as instant-ngp does for
    images): each identity keeps a map of the recent squared error of its training rays over an
    ``error_resolution`` x ``error_resolution`` grid of image cells, and these rays pick a cell with probability
    proportional to it. ``face_fraction`` applies to the other rays. The loss does not reweight them: hard pixels
    are meant to be seen more often. 0 turns it off."""

    error_resolution: int = 32
    """Cells per side of each identity's error map (over the whole image, whatever its size): at most a cell per pixel
    of the frames' largest side (or this default, on smaller frames), checked once the data is read."""

    mouth_fraction: float = 0.0
    """Share of each frame's face rays drawn inside a box around its lips instead (lips, teeth, mouth interior: where
    a talking head changes most and its viewers look first), for frames with face landmarks (``landmarks.npz``,
    written by ``prepare``): the box holds the projections of the 40 lip landmarks, grown by
    :data:`fastminerf.data.rays.MOUTH_MARGIN` of its extent on each side. Frames without lip landmarks keep these
    rays in the face box; the error rays and the uniform rays do not change. 0 turns it off."""

    eye_fraction: float = 0.0
    """Share of each frame's face rays drawn inside the boxes around its eyes instead (lids, whites, irises: blinks and
    gaze), alternately right and left, from the same landmarks as ``mouth_fraction``: each eye's 16 lid points grown
    by :data:`fastminerf.data.rays.EYE_MARGIN` of its width on each side. An eye out of sight gives its rays to the
    other; frames without eye landmarks keep them in the face box. ``mouth_fraction + eye_fraction <= 1``. 0 turns it
    off."""

    pool_frames: Optional[int] = None
    """Frames the batches draw from at a time, for a split larger than the frame cache holds (``data.cache_frames``,
    ``data.cache_bytes``): batches draw from a pool of this many frames that turns over gradually (each step replaces
    :data:`fastminerf.data.rays.POOL_TURNOVER` of ``frames_per_batch`` of them, at least one), so a step decodes a few
    frames from disk instead of nearly every frame it draws, and every frame still comes round (nerfstudio's data
    managers draw from a changing subset of images likewise). ``None``: nine tenths of the frames the cache holds,
    and only when the split has more (a split that fits draws from all its frames, as with 0); 0: never a pool."""

    def __post_init__(self) -> None:
        # the sampler checks these too, but only once a run has loaded its data, and without the section's name (a
        # negative seed as numpy's 'expected non-negative integer', naming nothing)
        for key, least in (("batch_size", 1), ("seed", 0), ("error_resolution", 1)):
            if int(getattr(self, key)) < least:
                raise ConfigError(f"sampler.{key} must be >= {least}, got {getattr(self, key)}")
        if self.frames_per_batch is not None and int(self.frames_per_batch) < 1:
            raise ConfigError(f"sampler.frames_per_batch must be >= 1 or null, got {self.frames_per_batch}")
        if self.pool_frames is not None and int(self.pool_frames) < 0:
            raise ConfigError(f"sampler.pool_frames must be >= 0 or null, got {self.pool_frames}")
        for key in ("face_fraction", "error_fraction", "mouth_fraction", "eye_fraction"):
            if not 0.0 <= float(getattr(self, key)) <= 1.0:
                raise ConfigError(f"sampler.{key} must be in [0, 1], got {getattr(self, key)}")
        if float(self.mouth_fraction) + float(self.eye_fraction) > 1.0:
            raise ConfigError(f"sampler.mouth_fraction + sampler.eye_fraction must be <= 1, got "
                              f"{self.mouth_fraction} + {self.eye_fraction}")


@dataclass(frozen=True)
class SynthConfig:
    """The procedural talking-head generator (keywords of ``fastminerf.data.synth.generate``)."""

    n_identities: int = 8
    """Number of identities (I), each written as its own identity folder."""

    n_frames: int = 100
    """Frames of each identity's video, split into ``train`` (the first frames) and ``val`` (the last)."""

    size: int = 128
    """Width and height of every frame in pixels."""

    seed: int = 0
    """Seed of everything random: identities, expressions, head motion and backgrounds."""

    first_identity: int = 0
    """Number of the first identity written: ``first_identity = K`` writes ``idK ...`` (``id004`` for 4), the heads
    that a generation of more identities with the same seed and settings would write under those names. A second
    dataset of new people (a person to personalise a model of ``id000 ... id003`` for) is ``n_identities=1,
    first_identity=4``: another head, of a name the first dataset does not have (a second generation from 0 writes
    ``id000`` again, which ``personalize`` takes for the model's own ``id000``)."""

    val_fraction: float = 0.1
    """Share of each video (its last frames) held out as the ``val`` split; at least one frame when
    ``n_frames >= 2``."""

    novel_frames: Optional[int] = None
    """Frames per identity in the ``novel`` split (expressions the identity never shows in ``train``);
    ``None`` for ``max(1, n_frames // 10)``."""

    camera_distance: float = 3.8
    """Distance from the camera to the head centre, in head units."""

    focal_factor: float = 1.65
    """Focal length in units of the image size (fx = fy = focal_factor * size); 1.65 frames the head
    (radius about 1 head unit) with a small margin at ``camera_distance`` 3.8."""

    max_yaw_deg: float = 18.0
    """Largest head turn left/right over a video, in degrees."""

    max_pitch_deg: float = 12.0
    """Largest head nod up/down over a video, in degrees."""

    max_roll_deg: float = 8.0
    """Largest head tilt towards a shoulder over a video, in degrees."""

    fps: float = 25.0
    """Frame rate written to the layout (``fps`` and each frame's ``time``); it sets how fast people talk
    and blink in frames."""

    expression_style: float = 0.0
    """Per-person expressiveness: identity k's face moves by ``g_k`` times its recorded expression coefficients, ``g_k``
    drawn uniformly in ``[1 - expression_style, 1]`` (from a stream of its own: 0 writes the same heads as ever). Real
    people show the same tracked expression differently; at 0 every head moves alike for the same coefficients, so
    a conditioning additive in expression and identity is exact there."""

    novel_poses: str = "own"
    """Head poses of the ``novel`` frames: ``own``, a head motion of their own (as ever; it can turn the head up to the
    ``max_*_deg`` limits, beyond what the identity's training frames show: a new view as well as a new expression),
    or ``train``, the poses of a stretch of the identity's own training frames, so that the expression is all that is
    new. The expressions and everything else are the same either way."""

    overwrite: bool = False
    """Replace identity folders a previous run of the generator wrote in the same output folder (one stopped part
    way, without its synth.json, is redone without it). Folders the generator did not write are never touched."""

    png_compress_level: int = 1
    """zlib level of the written PNG files (0-9); low is fast, the pixels are the same at every level."""

    chunk_rays: int = 524288
    """Rays traced at once; bounds the renderer's memory (about 0.2 KiB per ray) without changing pixels."""


@dataclass(frozen=True)
class PrepareConfig:
    """Turning talking-face videos into the shared layout (``fastminerf.prepare.prepare``)."""

    size: int = 256
    """Width and height of the written frames in pixels (a square crop of each video, resized)."""

    fps: Optional[float] = None
    """Frame rate the videos are resampled to (ffmpeg's ``fps`` filter, which also turns a variable frame rate
    into a constant one); None for each video's own average rate."""

    max_frames: Optional[int] = None
    """Use only the first N frames of each video (after resampling); None for all."""

    val_fraction: float = 0.1
    """Share of each video's usable frames, just before the ``test`` frames, written as the ``val`` split."""

    test_fraction: float = 0.1
    """Share of each video's usable frames, its last ones, written as the ``test`` split."""

    crop_scale: float = 2.4
    """Side of the square crop in units of the face height (forehead to chin), so that hair, neck and
    shoulders fit; the crop is clamped to the frame when the video is tighter than that."""

    track_max_side: int = 720
    """Frames are tracked at their own resolution (or that of the tracking region), downscaled so that the longer
    side is at most this."""

    basis: Optional[str] = None
    """An ``expression_basis.npz`` (a str or path) from an earlier prepare (of the data a model was trained on) to put
    these videos in the same expression space when ``out`` is another folder; None fits one, or reuses ``out``'s."""

    track_region_scale: float = 5.0
    """Where the face found in the first frames (searched in tiles when the detector misses it in the whole
    frame) is smaller than ``1 / track_region_scale`` of the frame's shorter side, tracking runs in a square of
    this many face sizes around it instead of the whole frame: a wide shot then works without cropping by hand,
    and its face is tracked at more pixels. 0 tracks the whole frame always."""

    min_detection_confidence: float = 0.5
    """mediapipe face detector threshold (a new face is searched when tracking is lost)."""

    min_tracking_confidence: float = 0.5
    """mediapipe face-mesh tracking threshold (below it the detector runs again)."""

    min_frames: int = 10
    """A video with fewer usable frames (a face found) than this fails with an error naming it."""

    expression_dim: int = 32
    """E, coefficients of the shared expression basis (PCA of the landmark deformations of all videos prepared
    together); ignored when the output folder already holds a basis (it is reused)."""

    focal_factor: float = 1.65
    """Focal length in units of ``size`` (fx = fy = focal_factor * size, principal point at the centre): the
    framing of the procedural heads (``SynthConfig.focal_factor``), a 34 degree field of view across the crop.
    Set it when the camera is known (a phone held close: shorter; a studio or TV camera far away: longer). On the
    nine real clips (``video`` preset, 3,000 steps, held-out PSNR) 1.2 / 1.65 / 2.2 / 3.3 / 6.6 gave
    24.66 / 24.71 / 24.57 / 24.51 / 24.53 dB, although longer focal lengths fit the tracked landmarks closer (median
    re-projection error 20-40 % lower at 6.6): mediapipe's mesh is regressed near-orthographically."""

    face_height: float = 1.2
    """Height of the canonical face (forehead landmark to chin landmark) in head units; sets the head's scale
    (the procedural heads have a radius of about 1 unit)."""

    stable_fraction: float = 0.5
    """Share of the 478 landmarks, the ones that move least relative to the face, used for the rigid (pose)
    alignment; the others (lips, jaw, eyelids, irises) carry the expression."""

    pose_smoothing: float = 1.0
    """Standard deviation, in frames, of the Gaussian that smooths head rotation and translation over time;
    0 for none."""

    segmentation_model: int = 0
    """mediapipe selfie segmentation model: 0 general (256x256), 1 landscape (144x256, faster)."""

    background_frames: int = 120
    """Frames, evenly spread over the video, whose background pixels give the median background image."""

    png_compress_level: int = 1
    """zlib level of the written PNG files (0-9); low is fast, the pixels are the same at every level."""

    audio_rate: int = 16000
    """Sample rate of the written ``audio.wav`` (mono, 16-bit)."""

    overwrite: bool = False
    """Prepare again the videos whose folders an earlier prepare wrote with other settings (otherwise that is an
    error). Folders that prepare did not write are never touched."""

    def __post_init__(self) -> None:
        # A script names the basis as a Path (root / 'expression_basis.npz'): kept as one, it reached prepare.json's
        # settings at the very end and failed the whole batch there ('PosixPath is not JSON serializable').
        if self.basis is not None and not isinstance(self.basis, str):
            object.__setattr__(self, "basis", os.fspath(self.basis))


@dataclass(frozen=True)
class SpeechConfig:
    """How the speech-to-expression network of :mod:`fastminerf.speech` is built and trained (``fastminerf speech --set
    key=value``)."""

    context: int = 20
    """Mel columns (10 ms each) either side of a frame's time that the network hears."""
    width: int = 64
    """Channels of the convolutions."""
    hidden: int = 128
    """Width of the hidden linear layer."""
    dropout: float = 0.2
    """Dropout before the last layer while training."""
    steps: int = 1500
    """Optimisation steps."""
    batch: int = 256
    """Frames per step."""
    lr: float = 2e-3
    """Adam's learning rate at the start; cosine decay to a tenth of it."""
    weight_decay: float = 1e-4
    """Adam's (decoupled) weight decay."""
    noise: float = 0.3
    """Standard deviation of Gaussian noise added to the normalised bands while training."""
    jitter: int = 2
    """Largest random shift (mel columns) of a training window."""
    smooth: float = 0.04
    """Standard deviation (seconds) of the Gaussian that smooths predicted expressions over time, the same at any
    frame rate (one frame at 25 fps); 0: none; at most 1 s (one of a second already flattens every syllable)."""
    calibrate: int = 3
    """Folds of the calibration that measures how far each coefficient can be predicted (see
    :func:`fastminerf.speech.train_speech`; each fold costs one more network); 0: no calibration (one network, gains
    of 1)."""
    block: float = 1.0
    """Seconds of each stretch of a clip that goes whole into one calibration fold."""
    seed: int = 0
    """Seed of the weights and of the batches."""

    def __post_init__(self) -> None:
        for key in ("context", "width", "hidden", "steps", "batch"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"speech config '{key}' must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "block", "noise", "smooth", "weight_decay"):  # NaN and inf pass the comparisons below
            if not abs(float(getattr(self, key))) < float("inf"):
                raise ConfigError(f"speech config '{key}' must be a finite number, got {getattr(self, key)}")
        for key in ("dropout", "noise", "smooth", "weight_decay"):
            if not float(getattr(self, key)) >= 0:
                raise ConfigError(f"speech config '{key}' must be >= 0, got {getattr(self, key)}")
        if self.smooth > 1:  # milliseconds typed for seconds (40 for 0.04) held the lips still; 1e9 ran out of memory
            raise ConfigError(f"speech config 'smooth' must be at most 1 second (it is seconds: 0.04 is 40 ms), got "
                              f"{self.smooth}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"speech config 'dropout' must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ConfigError(f"speech config 'lr' must be > 0, got {self.lr}")
        if self.calibrate < 0 or self.calibrate == 1:
            raise ConfigError(f"speech config 'calibrate' must be 0 (off) or >= 2 folds, got {self.calibrate}")
        if self.block <= 0:
            raise ConfigError(f"speech config 'block' must be > 0, got {self.block}")
        if self.jitter < 0:
            raise ConfigError(f"speech config 'jitter' must be >= 0, got {self.jitter}")
        _check_seed("speech config 'seed'", self.seed)  # beyond it, the training's torch.manual_seed failed, naming none


# ----------------------------------------------------------------------------------------------------------
# Model and training


MAX_FINEST_RESOLUTION = 2**31
"""Largest ``model.field.finest_resolution``: the kernels hold each level's resolution as a 32-bit unsigned integer."""


def _check_choice(key: str, value, choices: tuple) -> None:
    if value not in choices:
        names = [repr(c) for c in choices]
        either = f"{', '.join(names[:-1])} or {names[-1]}"
        raise ConfigError(f"{key} must be {'one of ' if len(names) > 2 else ''}{either}, got {value!r}")


def _check_number(key: str, value, least: Optional[float] = None) -> None:
    """A :class:`ConfigError` naming ``key`` unless ``value`` is a finite number (NaN and infinity pass comparisons
    such as ``value < 0``) at least ``least``."""
    if not abs(float(value)) < float("inf") or (least is not None and float(value) < least):
        raise ConfigError(f"{key} must be a finite number{f' >= {least:g}' if least is not None else ''}, got {value}")


MAX_OCTAVES = 24
"""Most octaves of a frequency encoding (``model.field.deform_frequencies``, ``model.nerface.position_frequencies``
and ``direction_frequencies``): ``sin(2^k x)`` of float32 coordinates of order 1 is rounding noise beyond it (their
spacing is 2^-24), and from k = 128 on 2^k overflows float32, turning the encoding into NaN."""


def _check_octaves(key: str, value) -> None:
    """A :class:`ConfigError` naming ``key`` when ``value`` is above MAX_OCTAVES (the callers refuse negative ones)."""
    if int(value) > MAX_OCTAVES:
        raise ConfigError(f"{key} must be in 0..{MAX_OCTAVES}, got {value} (finer octaves than float32 coordinates hold "
                          "are rounding noise, and from 128 on they overflow to NaN)")


def _check_seed(key: str, value) -> None:
    """A :class:`ConfigError` naming ``key`` unless ``value`` is a 64-bit integer, a seed torch's generators take
    (also plus the 2 that personalisation adds): beyond it torch's 'Overflow when unpacking long long' names nothing."""
    if not -(2**63) <= int(value) <= 2**63 - 1:
        raise ConfigError(f"{key} must be a 64-bit integer (-2**63 .. 2**63 - 1), got {value}")


def _check_backend(key: str, value) -> None:
    from .backend import BACKENDS  # torch's module; fastminerf's __init__ has imported it before this one

    _check_choice(key, value, BACKENDS)


@dataclass(frozen=True)
class FieldConfig:
    """The MI-NeRF field shared by all identities (``fastminerf.field.MINeRFField``): hash grid, conditioning
    module and the small density and colour heads."""

    n_levels: int = 16
    """L, levels of the hash grid."""

    n_features_per_level: int = 2
    """F, features per level (1, 2, 4 or 8)."""

    log2_hashmap_size: int = 19
    """log2 of the largest table size T per level. Grid memory is ``4 * F * sum_l T_l`` bytes, shared by
    every identity."""

    base_resolution: int = 16
    """Coarsest grid resolution N_min (cells per axis over the head box)."""

    finest_resolution: int = 2048
    """Finest grid resolution, at most 2**31; the per-level scale is derived from it, ``base_resolution`` and
    ``n_levels``."""

    identity_levels: int = 0
    """The finest this many levels are identity levels: their hash includes the identity id, so each person's fine
    detail gets its own rows of the one shared table, while the coarser levels (shape, shared by everyone) stay
    common. The table does not grow with identities; tiny-cuda-nn cannot run such a grid (the native kernels do).
    0 for a grid shared at every level."""

    density_levels: int = 0
    """The density head reads only the coarsest this many levels of the shared grid (0: all ``n_levels``), while
    the colour head gets the fine detail from its own identity levels (needs ``identity_levels > 0`` and
    ``identity_levels_for: colour``): a smoother geometry and fewer lookups (15-25 % faster steps in the ``cpu``
    preset at no loss in PSNR; it does not remove the speckle of views far from the training ones)."""

    identity_levels_for: str = "all"
    """What reads the identity levels: ``all`` (they are the finest levels of the one grid both heads read) or
    ``colour`` (the grid stays shared at every level for the density head, and a second lookup of the finest
    ``identity_levels`` levels, hashed with the identity, feeds only the colour head: per-person texture, shared
    geometry; one more lookup of those levels per sample)."""

    conditioning: str = "multiplicative"
    """``multiplicative``: ``m = (A e) * (B i) + C e + D i + b`` (MI-NeRF); ``concat``: ``m = C e + D i + b``, a
    linear map of ``[e, i]`` with no product term (the paper's ablation baseline, same width)."""

    conditioning_degree: int = 2
    """Polynomial degree of the multiplicative module (2: one product term; n > 2 stacks the Pi-net
    recursion ``x_n = (U_n z) * x_(n-1) + x_(n-1)`` with ``z = [e, i]``). Ignored by ``concat``."""

    conditioning_dim: int = 32
    """C, width of the conditioning vector m fed to the heads."""

    identity_code_dim: int = 32
    """Length of the learned identity code i (one row per identity; besides it only the frame codes and, with a torso
    layer, its image are per identity)."""

    frame_code_dim: int = 16
    """Length of the learned per-frame latent code (NeRFace uses 32), zero-initialised; 0 disables it."""

    frame_code_from_last: int = 0
    """Frames outside training (held-out frames, driven videos, orbits) take the mean code of their identity's last
    this-many training frames; 0: of all its training frames (every preset). Last in the order its
    ``transforms_train.json`` lists them (the frame codes' order), not by frame_index or time: ``prepare`` and ``synth``
    list a clip's frames in time order, so there they are its latest (docs/DATASET.md). As the torso layer's
    ``shift_from_last``, the last frames' state holds for frames right after them (a clip continued): on the real
    clips trained up to their test frames, the last 5 / 10 gave +0.15 / +0.12 dB (most of it on one clip, 07: +1.2 /
    +0.8), where stop 22 had measured no gain with 20 `val` frames in between (docs/experiments.md, stop 47)."""

    expression_scale: float = 1.0
    """Expressions are multiplied by this before the module (NeRFace scales its 76 coefficients by 1/3)."""

    hidden_dim: int = 64
    """Width of the hidden layers of both heads (a head of one hidden layer runs the native fused kernel up to 128
    units; wider, the same function unfused)."""

    density_layers: int = 1
    """Hidden layers of the density head (grid features + m + frame code -> density and a geometry feature)."""

    color_layers: int = 2
    """Hidden layers of the colour head (geometry feature + view direction + m + frame code -> rgb)."""

    geo_feature_dim: int = 15
    """Width of the geometry feature passed from the density head to the colour head."""

    sh_degree: int = 4
    """Spherical-harmonics degree of the view-direction encoding (``sh_degree**2`` values); 0 ignores the
    view direction."""

    deform_layers: int = 0
    """Hidden layers of the conditioned deformation: a small MLP on the sample point (frequency-encoded) and the
    per-ray conditioning moves the point before the grid lookups, ``x' = x + D(x, c)`` (its last layer starts at
    zero: the identity map), so an expression can move detail (an iris, a lid, the lips) instead of the heads
    repainting it. 0: no deformation."""

    deform_frequencies: int = 4
    """Octaves of the deformation's point encoding (``sin``/``cos`` of ``2^k pi x``, k < this), at most 24."""

    modulate: bool = False
    """Also scale the first hidden layer of each head per ray, ``h = (W_x x) * (1 + W_s c) + W_c c`` (FiLM): the
    conditioning selects which shared features a head reads, not only shifts them."""

    texture_flow: float = 0.0
    """Largest displacement (in box units, points live in [0, 1]^3) of the colour head's own grid lookup
    (``identity_levels_for: colour``): the density head also outputs a flow ``d = texture_flow * tanh(.)`` from the
    shared geometry features and the per-ray conditioning, and the per-person texture is read at ``x + d``, so an
    expression can move a person's lips or lids instead of repainting them. 0: no flow."""

    density_bias: float = -1.0
    """Added to the raw density before ``exp``: a small initial density so that the early occupancy grid is
    neither empty nor saturated."""

    backend: str = "auto"
    """Backend of the hash encoding and the fused heads (``fastminerf.backend``): auto, native, torch, tcnn (CUDA
    only, and not with ``identity_levels``; a run trained with it is evaluated and rendered with auto)."""

    def __post_init__(self) -> None:
        # values the field's own checks miss: they crash deep in the grid or the heads without naming the key
        # (ZeroDivisionError, RuntimeError), which the command line shows as a traceback; negative sizes the field
        # took as none, silently; and values it refuses only once a run has loaded its data, naming no key ('a head
        # needs at least one hidden layer', 'the multiplicative module needs degree >= 2')
        for key, least in (("base_resolution", 1), ("hidden_dim", 1), ("frame_code_dim", 0), ("frame_code_from_last", 0),
                           ("conditioning_dim", 0),
                           ("identity_code_dim", 0), ("geo_feature_dim", 0), ("deform_layers", 0),
                           ("deform_frequencies", 0), ("density_layers", 1), ("color_layers", 1)):
            if int(getattr(self, key)) < least:
                raise ConfigError(f"model.field.{key} must be >= {least}, got {getattr(self, key)}")
        _check_octaves("model.field.deform_frequencies", self.deform_frequencies)
        if self.conditioning == "multiplicative" and int(self.conditioning_degree) < 2:  # concat ignores the degree
            raise ConfigError(f"model.field.conditioning_degree must be >= 2, got {self.conditioning_degree}")
        # values the field refuses, but only once a run has loaded its data, some without the section's name
        levels = int(self.n_levels)
        for key, low, high in (("n_levels", 1, 32), ("log2_hashmap_size", 1, 30), ("density_levels", 0, levels),
                               ("identity_levels", 0, levels), ("sh_degree", 0, 4)):
            if not low <= int(getattr(self, key)) <= high:
                raise ConfigError(f"model.field.{key} must be in {low}..{high}, got {getattr(self, key)}")
        # NaN or infinity trained a model of NaN colours and wrote it as trained; a negative flow was refused only
        # once the data had loaded
        for key, least in (("expression_scale", None), ("density_bias", None), ("texture_flow", 0)):
            _check_number(f"model.field.{key}", getattr(self, key), least)
        if int(self.finest_resolution) < int(self.base_resolution):
            raise ConfigError(f"model.field.finest_resolution must be >= model.field.base_resolution "
                              f"({self.base_resolution}), got {self.finest_resolution}")
        # the kernels hold a level's resolution as a uint32 (computed in float32, so rounded up to 256 above the value):
        # beyond, the grid refused it only once the data had loaded, naming 'per_level_scale', which no config holds
        if int(self.finest_resolution) > MAX_FINEST_RESOLUTION:
            raise ConfigError(f"model.field.finest_resolution must be in {self.base_resolution}..{MAX_FINEST_RESOLUTION} "
                              f"(model.field.base_resolution..2**31: the kernels hold a level's resolution in 32 bits), "
                              f"got {self.finest_resolution}")
        _check_choice("model.field.n_features_per_level", self.n_features_per_level, (1, 2, 4, 8))
        _check_choice("model.field.conditioning", self.conditioning, ("multiplicative", "concat"))
        _check_choice("model.field.identity_levels_for", self.identity_levels_for, ("all", "colour"))
        _check_backend("model.field.backend", self.backend)


@dataclass(frozen=True)
class TorsoConfig:
    """The torso layer (``fastminerf.nn.TorsoLayer``): one learned RGBA image per identity in the camera's image,
    between the head field and the background, for the shoulders and body that stay still while the head turns."""

    resolution: int = 0
    """Texels a side of each identity's layer (at least 2); 0 for no layer (the head field holds the whole person)."""

    floor: float = -0.8
    """With a layer, the head field's box ends at this head-space ``y`` (head units): below it the person is the
    layer's. ``prepare`` puts the chin at ``y = -0.6`` (face height 1.2), so -0.8 keeps the chin and the top of
    the neck in the field."""

    neck_top: float = -0.55
    """Below this head-space ``y`` the field keeps only the neck column ``|x| <= neck_width``: the shoulders (which
    stay still while the head turns) and hair hanging beside the neck are the layer's. ``prepare``'s jaw is about
    0.3 wide at the chin."""

    neck_width: float = 0.4
    """Half-width of the neck column (head units); at least the head box's half-width for no column."""

    alpha_init: float = 0.02
    """Opacity every texel starts from: nearly transparent, so that the layer grows where the field cannot reach
    instead of painting a still face behind it."""

    frame_shift: bool = False
    """Learn a 2D shift of the layer for every training frame (``MINeRF.torso_shift``, two numbers a frame): in a
    real video the body drifts and sways a few pixels while the head talks, which one still image a person blurs
    over. Frames outside training (held-out frames, driven videos, orbits) take :attr:`shift_from_last`'s shift.
    Off in every preset: it pays for frames that continue a clip right after its training frames, not for frames
    further on, where the body may have moved anywhere (``configs/video.yaml``)."""

    shift_from_last: int = 10
    """With :attr:`frame_shift`, frames outside training take the mean shift of their identity's last this-many
    training frames, the body where the clip left it; 0: of all its training frames, the body where it usually is.
    Last in the order its ``transforms_train.json`` lists them (the frame shifts' order), not by frame_index or time:
    ``prepare`` and ``synth`` list a clip's frames in time order, so there they are its latest (docs/DATASET.md).
    The last frames' place holds only for frames right after them (a clip continued): on the real clips the last 10
    gave +0.43 dB at 3,000 steps to test frames that follow training, and cost 0.46 dB at 15 minutes where 20 `val`
    frames lay between, during which one speaker's body moved; all frames' mean cost 0.19 there (docs/experiments.md,
    stop 37)."""

    def __post_init__(self) -> None:
        # NaN or infinite bounds trained without a word (a NaN compares false with every point); the layer refused
        # alpha_init only once the data had loaded, without its section
        for key in ("floor", "neck_top", "neck_width"):
            _check_number(f"model.torso.{key}", getattr(self, key))
        # a negative resolution was no layer, silently; a negative shift_from_last was refused once the data had loaded
        for key in ("resolution", "shift_from_last"):
            if int(getattr(self, key)) < 0:
                raise ConfigError(f"model.torso.{key} must be >= 0, got {getattr(self, key)}")
        if int(self.resolution) == 1:  # the layer refused it only once the data had loaded, naming no key
            raise ConfigError(f"model.torso.resolution must be 0 (no layer) or >= 2, got {self.resolution}")
        if not 0 < float(self.alpha_init) < 1:
            raise ConfigError(f"model.torso.alpha_init must be in (0, 1), got {self.alpha_init}")


@dataclass(frozen=True)
class NeRFaceConfig:
    """The NeRFace backbone MI-NeRF was built on (``fastminerf.nerface``), used when ``ModelConfig.backbone`` is
    ``nerface``: positional encodings, an 8x256 MLP, coarse + fine sampling. The conditioning (module, identity
    and frame codes, expression scale) is ``FieldConfig``'s; the hash-grid and head fields are ignored."""

    width: int = 256
    """Width of the MLP layers on the point encoding."""

    depth: int = 8
    """Layers of the MLP on the point encoding (ReLU)."""

    skip_layer: int = 4
    """The point encoding and the conditioning are concatenated again to the input of this layer (NeRF's skip)."""

    color_width: int = 128
    """Width of the view-dependent colour layer (feature + direction encoding -> rgb)."""

    position_frequencies: int = 10
    """Frequencies of the positional encoding of the sample point (0..24)."""

    direction_frequencies: int = 4
    """Frequencies of the positional encoding of the view direction (0..24)."""

    coarse_samples: int = 64
    """N_c: stratified samples per ray between near and far, evaluated by the coarse network."""

    fine_samples: int = 64
    """N_f: samples per ray drawn from the coarse weights (inverse CDF); the fine network evaluates these and the
    coarse ones (N_c + N_f)."""

    perturb: bool = True
    """Jitter the stratified samples while training (evaluation uses bin centres and deterministic fine samples)."""

    def __post_init__(self) -> None:
        # refused by the backbone only once a run had loaded its data (depth 0 as a bad skip_layer), or not at all
        for key, least in (("width", 1), ("depth", 2), ("color_width", 1), ("coarse_samples", 1), ("fine_samples", 0),
                           ("position_frequencies", 0), ("direction_frequencies", 0)):
            if int(getattr(self, key)) < least:
                raise ConfigError(f"model.nerface.{key} must be >= {least}, got {getattr(self, key)}")
        for key in ("position_frequencies", "direction_frequencies"):
            _check_octaves(f"model.nerface.{key}", getattr(self, key))
        if not 1 <= int(self.skip_layer) <= int(self.depth) - 1:
            raise ConfigError(f"model.nerface.skip_layer must be in 1..model.nerface.depth - 1 ({int(self.depth) - 1}), "
                              f"got {self.skip_layer}")


@dataclass(frozen=True)
class ModelConfig:
    """The model around the field (``fastminerf.model.MINeRF``): occupancy grid, ray marching and compositing."""

    field: FieldConfig = FieldConfig()
    """The shared field."""

    backbone: str = "fast"
    """``fast``: the hash-grid field with occupancy-grid marching (``fastminerf.field``); ``nerface``: the NeRFace
    backbone MI-NeRF used (``fastminerf.nerface``, settings in ``nerface``), with the same conditioning, for
    speed comparisons. The occupancy-grid and marching fields below apply to ``fast`` only."""

    nerface: NeRFaceConfig = NeRFaceConfig()
    """Settings of the ``nerface`` backbone."""

    torso: TorsoConfig = TorsoConfig()
    """The image-space torso layer (off by default)."""

    aabb: Optional[Tuple[float, ...]] = None
    """Head box ``[xmin, ymin, zmin, xmax, ymax, zmax]`` the grid and the occupancy grid cover; None for the
    data's ``aabb`` (a cube of side 3 at the origin by default)."""

    grid_resolution: int = 64
    """Cells per axis of the occupancy grid (one grid per model, for every identity and expression)."""

    grid_levels: int = 1
    """Cascades of the occupancy grid (with more than one, ``grid_resolution`` must be a multiple of 4)."""

    grid_backend: str = "auto"
    """Occupancy-grid / marcher backend: auto, native, torch, nerfacc (CUDA only; a run trained with it is evaluated
    and rendered with auto); the compositing of the marched samples follows
    it (native, or torch with ``torch`` or without a build: nerfacc's samples are composited by our own op)."""

    render_steps: int = 256
    """Ray-marching step = the box diagonal divided by this (``sqrt(3) * side / render_steps``)."""

    eval_render_steps: int = 0
    """The same outside training (the model in eval mode: evaluation, rendering, the demo); 0: ``render_steps``. A
    finer step than training's (with ``train.ray_jitter``, which trains the field between the training lattice's
    points) integrates each ray more exactly at the cost of more samples a ray."""

    cone_angle: float = 0.0
    """Step growth with distance (0: fixed step)."""

    max_samples_per_ray: int = 0
    """Cap on samples per ray after skipping empty space; 0 for no cap."""

    transmittance_threshold: float = 1e-3
    """Early ray termination: samples behind a transmittance below this get no weight."""

    prune_samples: bool = True
    """Evaluate densities without gradients first and drop the samples behind early termination before the full
    (differentiable) pass (nerfacc's trick), in training and rendering; the result is the same up to float
    rounding, the cost lower once surfaces form."""

    prune_stages: Tuple[int, ...] = ()
    """Run the density pass of ``prune_samples`` front to back in stages, e.g. ``[8, 32]``: samples at positions
    ``< 8`` of their ray first, then ``< 32`` on the rays still transparent, then the rest, so a ray that turned
    opaque is not evaluated behind its surface (same samples kept). It pays once surfaces are sharp; on the soft
    densities of minutes of CPU training (rays stay transparent for ~40 samples) the extra passes cost more than
    they save (training step 0.101 s staged vs 0.085 s in one pass, measured), hence off by default."""

    occ_threshold: float = 0.01
    """Opacity (density x step) above which an occupancy cell counts as occupied."""

    occ_ema_decay: float = 0.95
    """EMA decay of the occupancy values (nerfacc's rule: ``occ = max(decay * occ, new)``)."""

    occ_carve: bool = True
    """Before training, exclude the occupancy cells that every training frame's mask shows as background (the
    union of the frames' visual hulls, each cell dilated by its size), so no step samples the empty box; needs a
    ``mask_path`` on every frame (otherwise nothing is carved). Personalisation restores the cells a new
    identity's hull needs."""

    occ_update_every: int = 16
    """Steps between occupancy updates."""

    occ_warmup_steps: int = 256
    """Steps during which every cell is updated (afterwards a quarter of the cells per update)."""

    chunk_rays: int = 8192
    """Rays rendered at once without gradients (inference); bounds memory, does not change pixels."""

    def __post_init__(self) -> None:
        # ZeroDivisionError / range() step 0; the occupancy grid's 'resolution must be a positive int' once the data
        # had loaded; negative counts taken silently as none ('training's steps', 'no cap')
        for key, least in (("render_steps", 1), ("occ_update_every", 1), ("chunk_rays", 1), ("grid_resolution", 1),
                           ("eval_render_steps", 0), ("max_samples_per_ray", 0), ("occ_warmup_steps", 0)):
            if int(getattr(self, key)) < least:
                raise ConfigError(f"model.{key} must be >= {least}, got {getattr(self, key)}")
        # values the model refuses, but only once a run has loaded its data, some naming no key ('levels must be in
        # 1..16', "unknown backend 'cuda'")
        if not 1 <= int(self.grid_levels) <= 16:
            raise ConfigError(f"model.grid_levels must be in 1..16, got {self.grid_levels}")
        if int(self.grid_levels) > 1 and int(self.grid_resolution) % 4:  # the grid refused it after the data, no key
            raise ConfigError(f"model.grid_resolution must be a multiple of 4 with model.grid_levels={self.grid_levels} "
                              f"cascades, got {self.grid_resolution}")
        # a NaN occupancy threshold trained to NaN; a negative one marked every cell occupied, a decay above 1 grew a
        # cell's value for ever (max(decay * occ, new)); the compositing refused a bad transmittance threshold only
        # once the data had loaded, without its section
        for key in ("cone_angle", "occ_threshold", "transmittance_threshold"):
            _check_number(f"model.{key}", getattr(self, key), 0)
        if not 0 <= float(self.occ_ema_decay) <= 1:
            raise ConfigError(f"model.occ_ema_decay must be in [0, 1], got {self.occ_ema_decay}")
        _check_choice("model.backbone", self.backbone, ("fast", "nerface"))
        _check_backend("model.grid_backend", self.grid_backend)
        if self.backbone == "fast" and self.field.backend == "tcnn" and int(self.field.identity_levels) > 0:
            # density levels and the texture flow need the colour head's own identity levels: the field is not built
            also = "".join(f" and model.field.{key}=0" for key in ("density_levels", "texture_flow")
                           if float(getattr(self.field, key)))
            raise ConfigError(f"model.field.backend=tcnn cannot run the {self.field.identity_levels} identity levels "
                              f"(tiny-cuda-nn's HashGrid hashes no identity): set model.field.identity_levels=0{also}, "
                              "or backend auto (tiny-cuda-nn where it can run the grid, else native) or native")
        own = int(self.field.identity_levels) > 0 and self.field.identity_levels_for == "colour"
        needing = [key for key in ("density_levels", "texture_flow") if float(getattr(self.field, key))]
        if self.backbone == "fast" and needing and not own:  # the field refused it only once the data had loaded
            why = {"density_levels": "model.field.density_levels needs the colour head's own fine levels",
                   "texture_flow": "model.field.texture_flow moves the colour head's own grid lookup"}
            raise ConfigError(f"{' and '.join(why[key] for key in needing)} (model.field.identity_levels "
                              f"{self.field.identity_levels}, identity_levels_for {self.field.identity_levels_for}): "
                              f"set model.field.identity_levels > 0 and model.field.identity_levels_for=colour, or "
                              f"{' and '.join(f'model.field.{key}=0' for key in needing)}")
        box = self.aabb
        if box is not None and (len(box) != 6 or any(float(lo) >= float(hi) for lo, hi in zip(box[:3], box[3:]))):
            raise ConfigError(f"model.aabb must be [xmin, ymin, zmin, xmax, ymax, zmax] with min < max (or null for the "
                              f"data's), got {list(box)}")
        stages = [int(k) for k in self.prune_stages]  # out of order, a stage counts densities of an earlier one twice
        if any(k < 1 for k in stages) or any(b <= a for a, b in zip(stages, stages[1:])):
            raise ConfigError(f"model.prune_stages must be increasing positive sample positions, got {list(stages)}")


@dataclass(frozen=True)
class TrainConfig:
    """The training and personalisation loops (``fastminerf.train``)."""

    steps: int = 4000
    """Optimisation steps (the learning-rate schedule is laid over this many steps)."""

    max_seconds: Optional[float] = None
    """Stop after this much training time in all (summed over resumed runs); None for no time limit."""

    lr: float = 1e-2
    """Adam learning rate of the field (hash grid and heads)."""

    code_lr: float = 1e-2
    """Adam learning rate of the per-identity state: identity and frame codes, torso layer textures."""

    lr_final_factor: float = 0.1
    """The learning rate decays exponentially from the first step to ``lr * lr_final_factor`` at ``steps`` (the
    warm-up multiplies it: :func:`fastminerf.train.lr_factor`)."""

    warmup_lr_steps: int = 50
    """Linear learning-rate warm-up steps."""

    distortion_weight: float = 0.0
    """Weight of mip-NeRF 360's distortion loss (mean over the batch's rays, distances in units of the box
    diagonal): it pulls each ray's weight into one short interval, so surfaces turn sharp and opaque sooner and
    early termination skips more samples. 0 disables it."""

    mask_weight: float = 0.0
    """Weight of the mask loss ``mean((opacity - mask)^2)`` over the rays whose frame has a foreground mask: the
    person is opaque, the space around it empty, from the first steps (surfaces otherwise stay half transparent for
    thousands of steps, and rays march through the whole head). With a torso layer the opacity is the person's, the
    head field's over the layer's (the mask holds the shoulders too, which are the layer's). 0 disables it."""

    ema_decay: float = 0.0
    """Keep an exponential moving average of the weights, updated after every step with the decay
    ``min(ema_decay, (1 + n) / (10 + n))`` at update n (so it follows the fast start of a run); checkpoints hold it
    beside the weights, and :func:`fastminerf.load_run` (rendering, evaluation, personalisation's start) and the
    result of training use it. 0 disables it."""

    ray_jitter: bool = False
    """Stratified marching: each training ray's sample lattice starts a random fraction of a marching step past
    its near bound (drawn from the run's seeded generator), so the field is trained on every depth between the
    lattice points instead of the same ones (the fast backbone; NeRFace perturbs its own samples)."""

    frame_code_reg: float = 5e-3
    """Weight of the L2 penalty on the frame codes (NeRFace: 0.005)."""

    landmark_depth_weight: float = 0.0
    """Weight of the landmark depth prior: each step, ``landmark_rays`` rays from the batch's cameras through tracked
    face landmarks (``landmarks.npz``, written by ``prepare``) pull the head's depth along them to the landmark's
    distance (Huber, ``landmark_depth_tolerance``, weighted by the ray's opacity). It pins the face's geometry, which
    a monocular video of a few head poses leaves loose (new poses then show ghosts). 0 disables it; datasets without
    landmarks train without it."""

    landmark_rays: int = 128
    """Landmark rays a step when ``landmark_depth_weight > 0``."""

    landmark_depth_tolerance: float = 0.02
    """Depth error (head units) under which the landmark prior is quadratic, linear above (tracker noise)."""

    seed: int = 0
    """Seed of the model initialisation, the occupancy updates and the rays' jitter. The batches are drawn by the
    sampler's own generator, seeded with ``sampler.seed``: change both for a run that differs in everything."""

    log_every: int = 25
    """Steps between lines of ``log.jsonl`` and progress reports."""

    checkpoint_every: int = 500
    """Steps between checkpoints (one is always written at the end); 0 turns this trigger off."""

    checkpoint_seconds: float = 60.0
    """Also write a checkpoint when this many seconds passed since the last one; 0 turns this trigger off."""

    threads: Optional[int] = None
    """torch CPU threads of training and personalisation (``train`` and ``personalize`` give the caller's count back
    when they return); None leaves torch's default."""

    device: str = "auto"
    """Where training runs: ``auto`` (the first CUDA GPU when torch sees one, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:K``. Checkpoints are device-independent (loaded on the CPU)."""

    personalize_steps: int = 600
    """Steps of ``personalize`` (codes first, then all weights)."""

    personalize_code_fraction: float = 0.05
    """Share of the personalisation steps that train only the new identity and frame codes (where its
    ``max_seconds`` would end the run before those steps, this share of the limit, the rest left to the second
    phase)."""

    personalize_tune: str = "grid"
    """Shared weights the second personalisation phase fine-tunes: ``grid`` (the hash-grid tables only: the heads
    and the conditioning module keep the expression-to-face mapping every generic identity taught them) or ``all``.
    Measured on a held-out procedural head from 30 frames (benchmarks/train_targets.py): ``grid`` keeps improving
    on held-out frames while ``all`` peaks early and overfits (20.0 vs 18.6 dB after 900 steps). The ``nerface``
    backbone has no grid: it always tunes ``all``."""

    personalize_lr_factor: float = 2.0
    """Learning rate of the shared weights during personalisation, relative to ``lr`` (2.0 suits ``grid``; about
    0.3 suits ``all``)."""

    def __post_init__(self) -> None:
        if int(self.log_every) < 1:  # the loop logs every log_every-th step (step % log_every)
            raise ConfigError(f"train.log_every must be >= 1, got {self.log_every}")
        # fewer than 0 steps trained none and wrote the run as trained; a negative warm-up was none, silently
        for key in ("steps", "personalize_steps", "warmup_lr_steps"):
            if int(getattr(self, key)) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        # above 1 every personalisation step trained the codes only; below 0 or NaN, none did, as 0 asks, silently
        if not 0 <= float(self.personalize_code_fraction) <= 1:
            raise ConfigError(f"train.personalize_code_fraction must be in [0, 1], got {self.personalize_code_fraction}")
        # lr_final_factor: a negative base to a fractional power, a complex learning rate; a negative landmark weight
        # pushed the depth away from the landmarks, negative landmark rays drew none; a negative (or NaN, infinite)
        # learning rate or loss weight trained to a worse model or to NaN and wrote it as trained
        for key in ("lr_final_factor", "landmark_depth_weight", "landmark_rays", "landmark_depth_tolerance", "lr",
                    "code_lr", "personalize_lr_factor", "mask_weight", "distortion_weight", "frame_code_reg",
                    "checkpoint_every", "checkpoint_seconds"):
            if not 0 <= float(getattr(self, key)) < float("inf"):
                raise ConfigError(f"train.{key} must be a finite number >= 0, got {getattr(self, key)}")
        # a negative decay silently kept no average; one >= 1 was refused only once the run had loaded its data
        if not 0 <= float(self.ema_decay) < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1) (0 disables the average), got {self.ema_decay}")
        if self.max_seconds is not None and not float(self.max_seconds) >= 0:  # trained none, written as trained
            raise ConfigError(f"train.max_seconds must be >= 0 or null (no time limit), got {self.max_seconds}")
        # beyond torch's seeds train wrote RUN/config.yaml, then stopped on 'Overflow when unpacking long long'
        _check_seed("train.seed", self.seed)
        if self.threads is not None and int(self.threads) < 0:  # 0, like None, leaves torch's default
            raise ConfigError(f"train.threads must be >= 0 or None, got {self.threads}")
        check_device(self.device)


def check_device(name: str, option: str = "train.device") -> None:
    """Refuse a ``train.device`` (or the device ``option`` names: render's and eval's ``--device``) fastminerf cannot
    run on: its kernels (native, torch reference, tiny-cuda-nn, nerfacc) run on CPU and CUDA tensors only. torch knows
    ``meta``, ``mps``, ``xla`` and more, which failed deep inside training; whether a CUDA device is there is checked
    where the device is resolved (``train.resolve_device``: when training starts, and before a run is loaded on it,
    ``load_run(device=...)``, which render, eval and the demo use)."""
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", str(name)):
        raise ConfigError(f"{option} must be auto, cpu, cuda or cuda:N (N a GPU's index; fastminerf runs on CPU "
                          f"and CUDA devices only), got {name!r}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run uses: the root of the config tree, saved as ``RUN/config.yaml``."""

    data: DataConfig = DataConfig()
    """Reading the dataset (the ``train`` split is always loaded)."""

    sampler: SamplerConfig = SamplerConfig()
    """Drawing training rays."""

    model: ModelConfig = ModelConfig()
    """The model."""

    train: TrainConfig = TrainConfig()
    """The training loop."""


class ConfigError(ValueError):
    """A config file or override names an unknown key or a value of the wrong type."""


class ArgumentValueError(ValueError):
    """A bad value of the function argument ``name``: the message is ``'<name> <reason>'``, and a command-line tool
    names its own option for the argument with ``reason`` (the CLI's ``--frames`` for ``n_frames``)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name} {reason}")
        self.name, self.reason = name, reason


MAX_FPS = 1000.0
"""The highest frame rate fastminerf renders or prepares at (:func:`check_fps`): a high-speed camera's. render --fps
1e9 repeated a driven video's frames a billion times a second until it ran out of memory."""


def check_fps(fps, name: str = "fps") -> float:
    """``fps`` as a float, or :class:`ArgumentValueError` naming ``name`` (a command line names its option for it)
    unless it is a frame rate: positive, finite and at most :data:`MAX_FPS` (NaN and infinity pass comparisons such
    as ``fps > 0``)."""
    try:
        rate = float(fps)
    except (TypeError, ValueError):
        raise ArgumentValueError(name, f"must be a number of frames a second, got {fps!r}") from None
    if not rate > 0:
        raise ArgumentValueError(name, f"must be positive, got {rate:g}")
    if rate == math.inf:
        raise ArgumentValueError(name, f"must be finite, got {rate:g}")
    if rate > MAX_FPS:
        raise ArgumentValueError(name, f"must be at most {MAX_FPS:g} frames a second, got {rate:g}")
    return rate


def _config_dir() -> Path:
    """The presets live in the repository's ``configs/``; a non-editable install carries them inside the package,
    as ``fastminerf/configs`` (setup.py maps the package ``fastminerf.configs`` to ``configs/``)."""
    package = Path(__file__).resolve().parent
    source = package.parent / "configs"
    in_checkout = source.is_dir() and (package.parent / "setup.py").is_file()  # not another site-packages/configs
    return source if in_checkout else package / "configs"


CONFIG_DIR = _config_dir()
"""Folder of the named presets (``tiny``, ``cpu``, ``video``, ``gpu``, ``nerface``)."""

DEFAULT_PRESET = "cpu"
"""The preset used when none is named."""


def _hints(cls) -> dict:
    import typing

    return typing.get_type_hints(cls)


def _all_keys(cls, prefix: str = "", sections: bool = False) -> list:
    """The dotted keys of ``cls``'s fields, with the dotted names of its sections too when ``sections``."""
    from dataclasses import fields as _fields, is_dataclass

    keys = []
    hints = _hints(cls)
    for f in _fields(cls):
        t = hints[f.name]
        if is_dataclass(t):
            keys.extend(([f"{prefix}{f.name}"] if sections else []) + _all_keys(t, f"{prefix}{f.name}.", sections))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _coerce(value, typ, key: str):
    """Convert a YAML value to the field type ``typ`` (int, float, bool, str, Optional[...], Tuple[...])."""
    import typing

    origin = typing.get_origin(typ)
    if origin is typing.Union:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if origin in (tuple, Tuple):
        args = typing.get_args(typ)
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if isinstance(value, bool) or not isinstance(value, (list, tuple, int, float)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        value = as_list(value, single=(int, float))  # one number (YAML's 8 of --set ...=8) is a list of one
        inner = args[0] if args else str
        return tuple(_coerce(v.strip() if isinstance(v, str) and inner is not str else v, inner, key) for v in value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # YAML reads 1 and 0 as integers, never as the strings below
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
            try:  # YAML 1.1 reads 1e4 (no dot) as a string, where 1.0e4 is a float, accepted above
                number = float(value)
            except ValueError:
                pass
            else:
                if number.is_integer():
                    return int(number)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if typ is str:
        if value is None or isinstance(value, (list, tuple, dict)):  # str() would make a key left empty "None"
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {typ}")


def _unknown(key: str, valid: list) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    leaf = key.rsplit(".", 1)[-1]
    close += [k for k in valid if k.rsplit(".", 1)[-1] == leaf and k not in close]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def config_from_dict(data: dict, base=None, cls=None, prefix: str = ""):
    """A config of class ``cls`` (default :class:`RunConfig`) from nested plain data, on top of ``base``
    (default: the class defaults). Raises :class:`ConfigError` for unknown keys or badly typed values."""
    from dataclasses import fields as _fields, is_dataclass, replace

    cls = cls or (type(base) if base is not None else RunConfig)
    base = base if base is not None else cls()
    if data is None:
        return base
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in _fields(cls)}
    changes = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            # sections too: a misspelt section ('trian:') is answered with the section, not with one of its keys
            raise _unknown(full, _all_keys(RunConfig if cls is RunConfig or prefix else cls, sections=True))
        typ = hints[key]
        if is_dataclass(typ):
            changes[key] = config_from_dict(value, getattr(base, key), typ, f"{full}.")
        else:
            changes[key] = _coerce(value, typ, full)
    return replace(base, **changes)


def as_list(value, single=(str,)) -> list:
    """A list of what a library call takes as "one or many": a sequence, None (empty), or one item of a ``single`` type
    (a string is one name, override or split, not its characters; with ``Path`` in ``single`` one path is one path)."""
    if value is None:
        return []
    return [value] if isinstance(value, single) else list(value)


def needs(value, types, asked: str, what: str):
    """``value``, or TypeError '``asked``: needs ``what``, got <type> <value>' when it is not of ``types`` (a library
    call's entry check of an argument, where the value given would fail deep inside, naming neither the argument nor
    what it takes: 'str' object has no attribute 'splits', 'MultiIdentityDataset' object is not iterable)."""
    if not isinstance(value, types):
        raise TypeError(f"{asked}: needs {what}, got {type(value).__name__} {str(value)[:200]!r}")
    return value


def a_run_config(cfg, asked: str = "cfg") -> "RunConfig":
    """``cfg``, or TypeError (:func:`needs`) when it is not a :class:`RunConfig`: a preset name or YAML path given where
    :func:`load_config`'s result goes (the commands take names: "'str' object has no attribute 'train'")."""
    return needs(cfg, RunConfig, asked, "a RunConfig (fastminerf.load_config(preset name or YAML path))")


PATHS_TAKEN = "(str or pathlib.Path, one or a list)"
PATH_TAKEN = "(str or pathlib.Path)"
"""What a call taking one file or folder takes, for its TypeError (:func:`needs`)."""
PATH_TYPES = (str, os.PathLike)


def as_paths(value, asked: str, what: str) -> list:
    """:func:`as_list` of paths, each a :class:`Path`: one path (``str`` or ``os.PathLike``), an iterable of them (a
    generator too) or None (empty); TypeError naming ``asked`` (:func:`needs`, ``what`` and :data:`PATHS_TAKEN`) for
    anything else, such as a loaded dataset given where its folders go."""
    from collections.abc import Iterable

    single = (str, os.PathLike)
    items = as_list(value, single) if value is None or isinstance(value, (Iterable,) + single) else [value]
    return [Path(needs(item, single, asked, f"{what} {PATHS_TAKEN}")) for item in items]


def some_of(items, shown: int = 8) -> str:
    """``items`` joined by commas, the first ``shown`` of them and how many more (for messages and notes about many
    people: 1,000 of them would be a page)."""
    items = [str(i) for i in items]
    return ", ".join(items[:shown]) + (f", and {len(items) - shown} more" if len(items) > shown else "")


def plain_number(v: float) -> str:
    """A number as text for a person: a whole one in full (a step, a limit in seconds: '%g' wrote 1234567 as
    '1.23457e+06'), any other as the shortest text that reads back as it (a limit as given: '%g' wrote 86400.25 as
    '86400.2'; 1e-09 stays)."""
    v = float(v)
    return f"{v:.0f}" if v.is_integer() else repr(v)


def counted(n: int, word: str, plural: Optional[str] = None) -> str:
    """``n`` and ``word``, in the plural (``plural``, default ``word + 's'``) unless ``n`` is one: '1 frame',
    '3 frames', '1 identity' (for summary lines and notes, which said '1 frames')."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def identity_list(names, shown: int = 8, near: Optional[str] = None) -> str:
    """Identity names for a message: their list (``['a', 'b']``) when there are at most ``shown``; past that how many,
    the first ``shown`` and, with ``near`` (a name asked for), the names closest to it, so that a message about a
    model or data of 1,000 people stays a line instead of naming them all."""
    names = [str(n) for n in names]
    if len(names) <= shown:
        return repr(names)
    text = f"{len(names)} identities ({some_of(names, shown)})"
    close = difflib.get_close_matches(near, names, n=3) if near is not None else []
    return text + (f"; closest to '{near}': {', '.join(close)}" if close else "")


def name_position(names, name: str) -> Optional[int]:
    """The position of identity ``name`` in ``names``, or None: the name as spelt, else one equal to it in Unicode's
    composed form (NFC), so that 'Zoë' copied from macOS Finder (decomposed, NFD) finds the 'Zoë' typed composed, one
    name to the eye (a dataset refuses two names that differ only so: :func:`fastminerf.data.layout.find_identity_dirs`).
    The stored names are left as they are. Every lookup of an identity by a name the user gives uses it."""
    names = list(names)
    if name in names:
        return names.index(name)
    wanted = unicodedata.normalize("NFC", str(name))
    return next((i for i, n in enumerate(names) if unicodedata.normalize("NFC", str(n)) == wanted), None)


def identity_index(names, name: str, error: type = KeyError) -> int:
    """The position of identity ``name`` in a model's ``names`` (its identity id; :func:`name_position`), or ``error``
    naming it and the identities the model knows (:func:`identity_list`: a few of 1,000). The one lookup of
    ``MINeRF.identity_index`` (KeyError) and ``fastminerf.render.identity_id`` (RenderError)."""
    names = list(names)
    at = name_position(names, name)
    if at is None:
        raise error(f"unknown identity '{name}': the model knows {identity_list(names, near=name)}")
    return at


def _kept_as_typed(value, raw: str, cls, key: str):
    """The override ``key=raw`` of a config class ``cls`` as YAML read it (``value``), or the text as typed where YAML
    read a boolean (on, yes) for a field that is no boolean, or a number (0x10, 1.10) for a string field: the field
    then takes the text, or refuses it in the words the user typed ('got 'yes'', not 'got True')."""
    import typing

    if not isinstance(value, (bool, int, float)):
        return value
    *sections, leaf = key.split(".")
    for name in sections:
        cls = _hints(cls)[name]
    typ = _hints(cls).get(leaf)
    kinds = typing.get_args(typ) if typing.get_origin(typ) is typing.Union else (typ,)
    if (isinstance(value, bool) and bool not in kinds) or str in kinds:
        return raw.strip()
    return value


def apply_overrides(cfg: "RunConfig", overrides) -> "RunConfig":
    """Apply ``key=value`` strings with dotted keys (``model.field.conditioning=concat``); values are parsed as
    YAML, then typed by the dataclass field. One string is one override; of a key given twice the last wins. They are
    applied and checked together, so that the order of the overrides does not matter (one at a time, a valid pair
    such as a finer ``model.field.n_levels`` and a ``density_levels`` above the old one was refused in one order)."""
    import yaml

    overrides = as_list(overrides)
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.steps=1000)")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if key not in _all_keys(RunConfig):
            if key in _all_keys(RunConfig, sections=True):  # a section: it exists, but takes no value of its own
                inside = [k for k in _all_keys(RunConfig) if k.startswith(key + ".")]
                raise ConfigError(f"'{key}' is a section of the config, not a setting: set its keys one at a time "
                                  f"(e.g. {inside[0]}=...; its keys: {some_of(inside)})")
            raise _unknown(key, _all_keys(RunConfig))
        value = _kept_as_typed(value, raw, RunConfig, key)  # YAML's reading of on / yes / 0x10 / 1.10 as a boolean
        # or a number, where the field takes no such value: the text typed
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    cfg = config_from_dict(nested, cfg)
    return check_run(cfg) if overrides else cfg  # once, on the result (no override: a saved run as it is)


PERSONALIZE_TUNES = ("grid", "all")
"""The values of ``train.personalize_tune``."""


def check_run(cfg: "RunConfig") -> "RunConfig":
    """``cfg``, or a :class:`ConfigError` for a setting that only a later command reads, so that a generic run does
    not train for minutes before ``personalize`` refuses it. Checked where presets and overrides are read, not in
    the dataclass: a run saved with such a value still loads (``render``, ``eval``, ``personalize --set``)."""
    if cfg.train.personalize_tune not in PERSONALIZE_TUNES:
        raise ConfigError(f"train.personalize_tune must be 'grid' or 'all', got {cfg.train.personalize_tune!r}")
    if tuple(cfg.data.splits) != ("train",):  # accepted and ignored, it would look like training on the others too
        raise ConfigError(f"data.splits: a run trains on each identity's 'train' split only, got {list(cfg.data.splits)} "
                          "(to train on every frame of a video, prepare it with --val-fraction 0)")
    return cfg


def flat_config(cls, overrides=()):
    """A config of a flat dataclass ``cls`` (no nested configs, e.g. :class:`SpeechConfig`) from ``key=value``
    strings; values are parsed as YAML, then typed by the field. Raises :class:`ConfigError` naming an unknown key,
    a malformed override or a bad value."""
    from dataclasses import fields as _fields

    import yaml

    data = {}
    for item in as_list(overrides):
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. steps=1000)")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        data[key] = _kept_as_typed(value, raw, cls, key) if key in {f.name for f in _fields(cls)} else value
    return config_from_dict(data, cls=cls)


def preset_path(name_or_path) -> Path:
    """The YAML file of a preset name (``tiny``, ``cpu``, ``video``, ``gpu``, ``nerface``) or a path (``~`` is the
    home folder: a path in a config file's ``extends`` is expanded by no shell)."""
    p = Path(str(name_or_path)).expanduser()
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if p.is_dir() and p.suffix not in (".yaml", ".yml") and candidate.is_file():
        return candidate  # a folder named like a preset (data made by `synth tiny`) is not a config file
    if p.suffix in (".yaml", ".yml") or p.exists():
        if p.is_dir():
            raise ConfigError(f"config {p} is a folder, not a YAML file or a preset name")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    if not candidate.is_file():
        names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown config preset '{name_or_path}'; presets: {', '.join(names)} (or a YAML path)")
    return candidate


def load_config(name_or_path=None, overrides=()) -> "RunConfig":
    """The run config of a preset name or YAML file (holding only differences from the defaults, or from the preset
    it names with ``extends: NAME``), then the dotted ``key=value`` overrides (a list, or one string). ``None`` means
    the default preset (:data:`DEFAULT_PRESET`).

    Example:
        >>> cfg = load_config("tiny", ["model.field.conditioning=concat", "train.steps=50"])
        >>> cfg.model.field.conditioning
        'concat'
    """
    if name_or_path is None:
        name_or_path = DEFAULT_PRESET
    needs(name_or_path, (str, os.PathLike), "name_or_path", "a preset name or a YAML file's path (str or pathlib.Path)")
    return apply_overrides(_load_preset(name_or_path, ()), overrides)


@functools.lru_cache(maxsize=None)
def _unique_key_loader():
    """yaml's SafeLoader, refusing a key given twice in one mapping (plain YAML keeps the last: a second ``train:``
    section silently dropped every setting of the first)."""
    from collections.abc import Hashable

    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor': its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    continue  # SafeLoader's own error names it
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key '{key}' (the second would replace the first)", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return Loader


def _load_preset(name_or_path, chain: Tuple[str, ...]) -> "RunConfig":
    """A preset file's config; ``extends: NAME`` in it starts from that preset instead of the defaults."""
    import yaml

    path = preset_path(name_or_path)
    if str(path.resolve()) in chain:
        raise ConfigError(f"{path}: presets extend each other in a cycle ({' -> '.join(chain + (str(path.resolve()),))})")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_key_loader()) or {}
    except yaml.YAMLError as exc:
        for mark in (getattr(exc, "context_mark", None), getattr(exc, "problem_mark", None)):
            if mark is not None:  # parsed from the file's text: YAML names it "<unicode string>"
                mark.name = str(path)
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    except UnicodeDecodeError as exc:  # another file given as the config, or YAML saved as UTF-16
        raise ConfigError(f"cannot parse config file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    base = None
    if isinstance(data, dict) and "extends" in data:
        parent = data.pop("extends")
        if isinstance(parent, str) and not Path(parent).expanduser().is_absolute() and Path(parent).suffix in (".yaml", ".yml"):
            parent = str(path.parent / parent)  # a file next to this one
        try:  # a parent that is not there: say which file names it (errors inside the parent name the parent)
            parent = preset_path(parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: extends: {exc}") from None
        base = _load_preset(parent, chain + (str(path.resolve()),))
    try:
        return check_run(config_from_dict(data, base=base))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_to_dict(cfg) -> dict:
    """Nested plain data (lists for tuples) of a config."""
    from dataclasses import fields as _fields, is_dataclass

    out = {}
    for f in _fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            out[f.name] = config_to_dict(v)
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        else:
            out[f.name] = v
    return out


def dump_config(cfg) -> str:
    """The full config as YAML text (every field); ``config_from_dict(yaml.safe_load(text))`` gives it back.
    TypeError (:func:`a_run_config`) for anything but a :class:`RunConfig` (a preset name: load it first)."""
    import yaml

    return yaml.safe_dump(config_to_dict(a_run_config(cfg)), sort_keys=False)


def parse_config_text(text: str) -> "RunConfig":
    """A :class:`RunConfig` from YAML text written by :func:`dump_config`; :class:`ConfigError` (one line) when the
    text is not YAML."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not YAML: {' '.join(str(exc).split())}") from None
    return config_from_dict(data or {})
