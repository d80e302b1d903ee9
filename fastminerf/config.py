"""Typed, frozen configuration dataclasses: one per component.

Every component of fastminerf takes its settings from one frozen dataclass defined here, with a docstring
per field. Configs are plain data: nothing here reads files, and derived values are computed where they are
used, never written back into a config.

The field names of each config match the keyword arguments of the function or class it configures, so a
config is applied with ``dataclasses.asdict``::

    from dataclasses import asdict
    data = load_dataset(paths, **asdict(DataConfig(splits=("train", "val"))))
    sampler = RaySampler(data, "train", **asdict(SamplerConfig(batch_size=2048)))
    generate(out_dir, **asdict(SynthConfig(n_identities=2, n_frames=8, size=32)))

Components (others are added here as the project grows):

- :class:`DataConfig`: reading a dataset in the layout of ``DATASET.md`` (``fastminerf.data.load_dataset``).
- :class:`SamplerConfig`: drawing training rays (``fastminerf.data.RaySampler``).
- :class:`SynthConfig`: the procedural talking-head generator (``fastminerf.data.synth.generate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["DataConfig", "SamplerConfig", "SynthConfig"]


@dataclass(frozen=True)
class DataConfig:
    """How a dataset in the shared layout is read (keywords of ``load_dataset``)."""

    splits: Tuple[str, ...] = ("train",)
    """Splits to load; each names a ``transforms_<split>.json`` that every identity folder must have."""

    cache_frames: Optional[int] = 4096
    """Most decoded frames (images and masks) kept in memory at once; ``None`` for no count limit."""

    cache_bytes: Optional[int] = 2 * 1024**3
    """Most bytes of decoded frames kept in memory at once; ``None`` for no byte limit. Frames are uint8,
    so a 512x512 RGB frame takes 768 KiB. The least recently used frame is dropped first."""


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
    """Distinct frames a batch draws its rays from (capped by the split size); ``None`` lets every ray pick its
    own frame. Fewer frames per batch means fewer image decodes when the split does not fit the frame cache."""

    balance_identities: bool = False
    """Draw frames by picking an identity uniformly first, so identities with short videos are seen as
    often as long ones. When false every frame of the split is equally likely."""


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

    overwrite: bool = False
    """Replace identity folders a previous run of the generator wrote in the same output folder. Folders
    the generator did not write are never touched."""

    png_compress_level: int = 1
    """zlib level of the written PNG files (0-9); low is fast, the pixels are the same at every level."""

    chunk_rays: int = 524288
    """Rays traced at once; bounds the renderer's memory (about 0.2 KiB per ray) without changing pixels."""
