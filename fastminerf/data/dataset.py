"""Many identities read as one dataset: flat per-split frame tables, and frames decoded lazily into a
bounded cache.

Metadata (every JSON) is read and validated when the dataset is loaded; pixels are decoded on first use
and kept in a least-recently-used cache bounded in frames and in bytes, so a dataset larger than memory
streams from disk. Frames stay uint8.

Dimension letters: B frames of a split (all identities), I identities, E expression size.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..config import DataConfig, as_list, needs, some_of
from .layout import (
    DatasetError,
    Landmarks,
    SplitMeta,
    find_identity_dirs,
    identity_splits,
    image_size,
    not_a_file,
    read_landmarks,
    read_mask,
    read_rgb,
    read_transforms,
)

__all__ = ["FrameCache", "FrameTable", "LandmarkTable", "MultiIdentityDataset", "check_expression_space",
           "expression_space_mismatch", "load_dataset"]

PathLike = Union[str, Path]

_DATA = DataConfig()


def _check_bound(name: str, value: Optional[int]) -> None:
    """Refuse a negative bound of the frame cache, naming the argument ``name`` it was given as."""
    if value is not None and value < 0:
        raise ValueError(f"{name} must be >= 0 or None, got {value}")


class FrameCache:
    """A thread-safe LRU cache of decoded arrays, bounded in item count and in bytes.

    An array larger than ``max_bytes`` on its own is returned without being cached. Cached arrays are made
    read-only so that no caller can change what another caller gets.

    Args:
        max_items: most arrays kept (each counted as :meth:`get` says); None for no count limit.
        max_bytes: most bytes kept; None for no byte limit.
    """

    def __init__(self, max_items: Optional[int] = _DATA.cache_frames, max_bytes: Optional[int] = _DATA.cache_bytes) -> None:
        _check_bound("max_items", max_items)
        _check_bound("max_bytes", max_bytes)
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: "OrderedDict[Hashable, np.ndarray]" = OrderedDict()
        self._counts: Dict[Hashable, int] = {}  # what each array counts against max_items
        self._followers: Dict[Hashable, set] = {}  # arrays dropped with the one they follow (get's follows)
        self._follows: Dict[Hashable, Hashable] = {}  # and the other way round
        self._bytes = 0
        self._count = 0
        self._lock = threading.Lock()
        self.hits = 0
        """Lookups answered from the cache."""
        self.misses = 0
        """Lookups that had to load."""

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._items.clear()
            self._counts.clear()
            self._followers.clear()
            self._follows.clear()
            self._bytes = 0
            self._count = 0

    def discard(self, key: Hashable) -> None:
        """Drop the array cached under ``key``, if any."""
        with self._lock:
            self._drop(key)

    def _drop(self, key: Hashable) -> None:
        """Drop ``key`` and the arrays that follow it (under the lock)."""
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= int(old.nbytes)
            self._count -= self._counts.pop(key)
        leader = self._follows.pop(key, None)
        if leader in self._followers:
            self._followers[leader].discard(key)
            if not self._followers[leader]:
                del self._followers[leader]
        for follower in list(self._followers.pop(key, ())):
            self._drop(follower)

    def get(self, key: Hashable, load: Callable[[], np.ndarray], keep: bool = True, count: int = 1,
            follows: Optional[Hashable] = None) -> np.ndarray:
        """The array cached under ``key``, calling ``load()`` (outside the lock) on a miss; with ``keep=False`` what
        ``load()`` returns is not cached. ``count``: what the array counts against ``max_items``. ``follows``: the
        key of the array this one goes with (a frame's mask follows its image): it counts 0 while that one is cached
        (1 on its own) and is dropped with it, never left behind uncounted."""
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return arr
            self.misses += 1
        arr = load()
        arr.setflags(write=False)
        size = int(arr.nbytes)
        if not keep or (self.max_items is not None and self.max_items == 0) or (
                self.max_bytes is not None and size > self.max_bytes):
            return arr
        with self._lock:
            if key in self._items:  # loaded meanwhile by another thread
                self._items.move_to_end(key)
                return self._items[key]
            if follows is not None:
                count = 0 if follows in self._items else 1
                self._followers.setdefault(follows, set()).add(key)
                self._follows[key] = follows
            self._items[key], self._counts[key] = arr, int(count)
            self._bytes += size
            self._count += int(count)
            for follower in self._followers.get(key, ()):  # cached before this one, on their own: now they go with it
                self._count -= self._counts[follower]
                self._counts[follower] = 0
            while (self.max_items is not None and self._count > self.max_items) or (
                self.max_bytes is not None and self._bytes > self.max_bytes
            ):
                self._drop(next(iter(self._items)))
        return arr


@dataclass(frozen=True, eq=False)
class FrameTable:
    """Every frame of one split over all identities, as flat arrays over B frames.

    Frame ``b`` belongs to identity ``identity[b]`` and is frame ``frame_in_identity[b]`` of that identity's
    ``transforms_<split>.json``. Frames are ordered by identity, then by their order in the file. Each frame has
    its own image size (:attr:`widths`, :attr:`heights`; one per transforms file): people prepared at different
    sizes train together.
    """

    split: str
    """Split name."""
    identity: np.ndarray
    """(B,) int64 identity id (index into ``MultiIdentityDataset.identities``)."""
    frame_in_identity: np.ndarray
    """(B,) int64 position of the frame in its identity's ``frames`` list."""
    c2w: np.ndarray
    """(B, 4, 4) float32 camera-to-head transforms (OpenGL convention)."""
    expression: np.ndarray
    """(B, E) float32 expressions."""
    intrinsics: np.ndarray
    """(B, 4) float32 ``[fx, fy, cx, cy]`` in pixels."""
    widths: np.ndarray
    """(B,) int64 image width W of each frame in pixels (one per identity's transforms file)."""
    heights: np.ndarray
    """(B,) int64 image height H of each frame in pixels."""
    near: np.ndarray
    """(B,) float32 layout ``near``; where not given, the closest distance from the camera to the ``aabb``."""
    far: np.ndarray
    """(B,) float32 layout ``far``; where not given, the farthest distance from the camera to the ``aabb``."""
    explicit_near_far: np.ndarray
    """(B,) bool, whether the layout gave ``near``/``far``; when false rays clip to the ``aabb`` instead."""
    aabb: np.ndarray
    """(B, 6) float32 head box ``[xmin, ymin, zmin, xmax, ymax, zmax]``."""
    bbox: np.ndarray
    """(B, 4) float32 face box ``[y0, y1, x0, x1]`` as image fractions; ``[0, 1, 0, 1]`` where absent."""
    has_bbox: np.ndarray
    """(B,) bool, whether the frame has a face box."""
    image_paths: Tuple[str, ...]
    """(B,) image file per frame."""
    mask_paths: Tuple[Optional[str], ...]
    """(B,) mask file per frame, or None."""
    frame_index: np.ndarray
    """(B,) int64 index of the frame in its source video (``frame_index``, else its position in the file)."""
    time: np.ndarray
    """(B,) float64 seconds since the start of the source video, NaN where the layout gives none."""
    files: Tuple[Path, ...]
    """(I,) the transforms JSON of each identity for this split."""

    def __len__(self) -> int:
        return int(self.identity.shape[0])

    def size_of(self, index: int) -> Tuple[int, int]:
        """``(W, H)``, the image size of frame ``index``."""
        return int(self.widths[index]), int(self.heights[index])

    @property
    def width(self) -> int:
        """W, the one image width of a split whose frames all have one size (:meth:`size_of` gives each frame's).

        Raises:
            ValueError: the split's identities have images of different sizes (named).
        """
        return self._one_size()[0]

    @property
    def height(self) -> int:
        """H, the one image height of a split whose frames all have one size (see :attr:`width`)."""
        return self._one_size()[1]

    def _one_size(self) -> Tuple[int, int]:
        sizes: Dict[Tuple[int, int], str] = {}  # each size, with the first identity that has it
        for b in np.flatnonzero(np.diff(self.identity, prepend=-1)).tolist():  # each identity's first frame
            sizes.setdefault(self.size_of(b), self.files[int(self.identity[b])].parent.name)
        if len(sizes) != 1:
            said = ", ".join(f"{name} {w}x{h}" for (w, h), name in sizes.items())
            raise ValueError(f"the frames of split '{self.split}' have no one size ({said or 'no frames'}): "
                             f"use size_of(frame)")
        return next(iter(sizes))

    def frames_of(self, identity: int) -> np.ndarray:
        """Flat indices of one identity's frames, in file order."""
        return np.flatnonzero(self.identity == identity)

    def bbox_or_none(self, index: int) -> Optional[Tuple[float, float, float, float]]:
        """The face box ``(y0, y1, x0, x1)`` of one frame, or None when it has none."""
        return tuple(float(v) for v in self.bbox[index]) if self.has_bbox[index] else None  # type: ignore[return-value]


@dataclass(frozen=True)
class LandmarkTable:
    """The landmarks (``landmarks.npz``, :class:`fastminerf.data.layout.Landmarks`) of a split's B frames."""

    points: np.ndarray
    """(B, K, 3) float32 head-space points; zeros where the frame has none."""
    visible: np.ndarray
    """(B, K) bool; all false where the frame has none."""

    @property
    def has(self) -> np.ndarray:
        """(B,) bool: frames with at least one visible landmark."""
        return self.visible.any(axis=1)


def _box_distance_bounds(c2w: np.ndarray, aabb: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Closest and farthest distance from each camera centre to its box. c2w (B,4,4), aabb (B,6) -> (B,), (B,)."""
    centre = c2w[:, :3, 3].astype(np.float64)
    lo, hi = aabb[:, :3].astype(np.float64), aabb[:, 3:].astype(np.float64)
    nearest = np.clip(centre, lo, hi)
    near = np.linalg.norm(centre - nearest, axis=1)
    farthest = np.where(np.abs(centre - lo) > np.abs(centre - hi), lo, hi)
    far = np.linalg.norm(centre - farthest, axis=1)
    return near.astype(np.float32), far.astype(np.float32)


class MultiIdentityDataset:
    """Identity folders of the shared layout read as one dataset.

    Build it with :func:`load_dataset`. Identities are sorted by name; an identity's id is its index in
    :attr:`identities`. Per split, :meth:`table` gives a flat frame table; :meth:`image`, :meth:`mask` and
    :meth:`background` decode pixels on demand through a bounded LRU cache.
    """

    def __init__(
        self,
        identity_dirs: Sequence[Path],
        metas: Dict[str, List[SplitMeta]],
        cache: FrameCache,
    ) -> None:
        self.identity_dirs: List[Path] = list(identity_dirs)
        """(I,) identity folders, in id order."""
        self.identities: List[str] = [d.name for d in self.identity_dirs]
        """(I,) identity names, sorted; the index is the identity id."""
        self.cache = cache
        """The cache of decoded frames and masks (inspect ``len``, ``nbytes``, ``hits``, ``misses``)."""
        self._metas = metas
        self.splits: Tuple[str, ...] = tuple(metas)
        """Loaded split names."""
        first = metas[self.splits[0]][0]
        self.expression_dim: int = first.expression_dim
        """E, the expression length shared by every frame of every identity."""
        names = next((m.expression_names for ms in metas.values() for m in ms if m.expression_names), None)
        self.expression_names: Optional[Tuple[str, ...]] = names
        """A name per expression coefficient when the layout gives them, else None."""
        space = next((m.expression_space for ms in metas.values() for m in ms if m.expression_space), None)
        self.expression_space: Optional[str] = space
        """The expression space every identity's coefficients are in (``expression_space`` of the layout: the id
        of the basis ``prepare`` fitted, or the procedural heads' space), None when no file says."""
        said = {i for ms in metas.values() for i, m in enumerate(ms) if m.expression_space}
        self.unnamed_space: List[str] = [n for i, n in enumerate(self.identities) if space and i not in said]
        """Identities whose transforms files name no ``expression_space`` while others' name one: taken to be in
        :attr:`expression_space` with their length alone checked (DATASET.md), which a run records for them too."""
        self._tables: Dict[str, FrameTable] = {s: self._build_table(s, ms) for s, ms in metas.items()}
        self._backgrounds: Dict[Tuple[Optional[Path], int, int], np.ndarray] = {}
        self._bg_lock = threading.Lock()
        self._landmarks: Dict[str, Optional[LandmarkTable]] = {}

    # -- tables

    @staticmethod
    def _build_table(split: str, metas: List[SplitMeta]) -> FrameTable:
        assert all(m.width is not None and m.height is not None for m in metas)  # resolved by load_dataset
        ident = np.concatenate([np.full(len(m), i, dtype=np.int64) for i, m in enumerate(metas)])
        c2w = np.concatenate([m.c2w for m in metas])
        aabb = np.concatenate([np.tile(np.asarray(m.aabb, np.float32), (len(m), 1)) for m in metas])
        box_near, box_far = _box_distance_bounds(c2w, aabb)
        explicit = np.concatenate([np.full(len(m), m.near is not None) for m in metas])
        near = np.concatenate([np.full(len(m), m.near if m.near is not None else np.nan, np.float32) for m in metas])
        far = np.concatenate([np.full(len(m), m.far if m.far is not None else np.nan, np.float32) for m in metas])
        near = np.where(explicit, near, box_near).astype(np.float32)
        far = np.where(explicit, far, box_far).astype(np.float32)
        intr = np.concatenate([m.frame_cameras(m.width, m.height).astype(np.float32) for m in metas])
        return FrameTable(
            split=split,
            identity=ident,
            frame_in_identity=np.concatenate([np.arange(len(m), dtype=np.int64) for m in metas]),
            c2w=c2w,
            expression=np.concatenate([m.expression for m in metas]),
            intrinsics=intr,
            widths=np.concatenate([np.full(len(m), m.width, dtype=np.int64) for m in metas]),
            heights=np.concatenate([np.full(len(m), m.height, dtype=np.int64) for m in metas]),
            near=near,
            far=far,
            explicit_near_far=explicit,
            aabb=aabb,
            bbox=np.concatenate([m.bbox for m in metas]),
            has_bbox=np.concatenate([m.has_bbox for m in metas]),
            image_paths=tuple(p for m in metas for p in m.image_paths),
            mask_paths=tuple(p for m in metas for p in m.mask_paths),
            frame_index=np.concatenate([m.frame_index for m in metas]),
            time=np.concatenate([m.time for m in metas]),
            files=tuple(m.file for m in metas),
        )

    def table(self, split: str) -> FrameTable:
        """The flat frame table of a loaded split."""
        try:
            return self._tables[split]
        except KeyError:
            raise KeyError(f"split '{split}' is not loaded; loaded splits: {list(self.splits)}") from None

    def frames_held(self, split: str) -> Optional[int]:
        """How many frames of ``split`` (their images and masks) the frame cache holds at once, at the split's largest
        frame size; None when the cache is unbounded."""
        t = self.table(split)
        counts = [] if self.cache.max_items is None else [self.cache.max_items]  # a mask is not counted
        if self.cache.max_bytes is not None and len(t):
            masks = any(p is not None for p in t.mask_paths)
            counts.append(self.cache.max_bytes // (int((t.widths * t.heights).max()) * (4 if masks else 3)))
        return min(counts) if counts else None

    def num_frames(self, split: str) -> int:
        """B, the number of frames of a split over all identities."""
        return len(self.table(split))

    def split_meta(self, split: str, identity: int) -> SplitMeta:
        """The validated transforms file of one identity and split."""
        return self._metas[split][identity]

    def landmarks(self, split: str) -> Optional[LandmarkTable]:
        """The split's face landmarks from the identities' ``landmarks.npz`` (matched by ``frame_index``; read on
        first use), or None when no identity has any.

        Raises:
            DatasetError: a file is malformed, or two identities have different numbers of landmarks.
        """
        if split in self._landmarks:
            return self._landmarks[split]
        t = self.table(split)
        found: List[Tuple[int, Landmarks]] = [(i, lm) for i, d in enumerate(self.identity_dirs)
                                              if (lm := read_landmarks(d)) is not None]
        table = None
        if found:
            k = found[0][1].points.shape[1]
            points = np.zeros((len(t), k, 3), dtype=np.float32)
            visible = np.zeros((len(t), k), dtype=bool)
            for i, lm in found:
                if lm.points.shape[1] != k:
                    raise DatasetError(f"has {lm.points.shape[1]} landmarks a frame, {found[0][1].file} has {k}",
                                       file=lm.file, key="points")
                rows = t.frames_of(i)
                where = {int(f): j for j, f in enumerate(lm.frame_index)}
                pos = np.array([where.get(int(f), -1) for f in t.frame_index[rows]], dtype=np.int64)
                hit = pos >= 0
                points[rows[hit]] = lm.points[pos[hit]]
                visible[rows[hit]] = lm.visible[pos[hit]]
            table = LandmarkTable(points, visible)
        self._landmarks[split] = table
        return table

    # -- pixels

    def _where(self, split: str, index: int) -> Tuple[FrameTable, SplitMeta, int]:
        t = self.table(split)
        if not 0 <= index < len(t):
            raise IndexError(f"frame {index} out of range for split '{split}' with {len(t)} frames")
        return t, self._metas[split][int(t.identity[index])], int(t.frame_in_identity[index])

    def background(self, identity: int, split: Optional[str] = None) -> np.ndarray:
        """The identity's static background, uint8 (H, W, 3), read-only; white when the layout has none.

        Uses the ``background`` of the identity's transforms file for ``split`` (default: the first loaded
        split). Backgrounds are decoded once and kept (one image per identity).
        """
        split = self.splits[0] if split is None else split
        meta = self._metas[split][identity]
        width, height = meta.width, meta.height
        key = (meta.background, width, height)
        with self._bg_lock:
            bg = self._backgrounds.get(key)
        if bg is not None:
            return bg
        if meta.background is None:
            bg = np.full((height, width, 3), 255, dtype=np.uint8)
        else:
            try:
                bg = read_rgb(meta.background)
            except (OSError, ValueError) as exc:
                raise DatasetError(f"cannot read background image {meta.background}: {exc}", file=meta.file, key="background") from None
            if bg.shape[:2] != (height, width):
                raise DatasetError(
                    f"background image {meta.background} is {bg.shape[1]}x{bg.shape[0]} but the frames of split "
                    f"'{split}' are {width}x{height}",
                    file=meta.file,
                    key="background",
                )
        bg.setflags(write=False)
        with self._bg_lock:
            self._backgrounds[key] = bg
        return bg

    def image(self, split: str, index: int) -> np.ndarray:
        """Frame ``index`` of ``split`` as uint8 (H, W, 3), read-only; RGBA is composited over the identity's
        background. Decoded on first use and cached.

        Raises:
            DatasetError: naming the transforms file, the frame and ``file_path`` when the image cannot be
                decoded or has the wrong size.
        """
        t, meta, k = self._where(split, index)
        path = t.image_paths[index]
        identity = int(t.identity[index])

        def load() -> np.ndarray:
            try:
                img = read_rgb(path, background=lambda: self.background(identity, split))
            except DatasetError:
                raise  # a bad background, already located
            except (OSError, ValueError, SyntaxError) as exc:
                raise DatasetError(f"cannot read image {path}: {exc}", file=meta.file, frame=k, key="file_path") from None
            if img.shape[:2] != (meta.height, meta.width):
                raise DatasetError(
                    f"image {path} is {img.shape[1]}x{img.shape[0]} but the file's images are {meta.width}x{meta.height} "
                    f"(its first image, or its w and h)",
                    file=meta.file,
                    frame=k,
                    key="file_path",
                )
            return img

        return self.cache.get(("image", split, index), load)

    def mask(self, split: str, index: int, cached: bool = True) -> Optional[np.ndarray]:
        """The frame's foreground mask as bool (H, W), read-only, or None when it has no ``mask_path``.

        ``cached=False``: from the cache when it is there, else decoded and not kept: a pass over every frame (the
        occupancy carving before training) would only push out the frames training draws, and keeping masks
        between its large temporary arrays grew the process by about 2 MB a frame at 512 px (heap
        fragmentation)."""
        t, meta, k = self._where(split, index)
        path = t.mask_paths[index]
        if path is None:
            return None

        def load() -> np.ndarray:
            try:
                m = read_mask(path)
            except (OSError, ValueError, SyntaxError) as exc:
                raise DatasetError(f"cannot read mask {path}: {exc}", file=meta.file, frame=k, key="mask_path") from None
            if m.shape != (meta.height, meta.width):
                raise DatasetError(
                    f"mask {path} is {m.shape[1]}x{m.shape[0]} but the file's images are {meta.width}x{meta.height}",
                    file=meta.file,
                    frame=k,
                    key="mask_path",
                )
            return m

        return self.cache.get(("mask", split, index), load, keep=cached, follows=("image", split, index))

    def release(self, split: str, index: int) -> None:
        """Drop frame ``index`` of ``split`` (its image and mask) from the frame cache: for a pass that uses each
        frame once (:func:`fastminerf.render.evaluate`), which would otherwise fill the cache, up to its bounds, with
        frames it never reads again."""
        for kind in ("image", "mask"):
            self.cache.discard((kind, split, index))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}: {len(t)} frames " + "/".join(sorted({f"{w}x{h}" for w, h in zip(t.widths.tolist(), t.heights.tolist())}))
                          for s, t in self._tables.items())
        return f"MultiIdentityDataset({len(self.identities)} identities, E={self.expression_dim}, {sizes})"


def a_dataset(dataset: MultiIdentityDataset, asked: str) -> MultiIdentityDataset:
    """``dataset``, or TypeError saying what was ``asked`` for when it is not a loaded dataset (a folder's path given
    where :func:`load_dataset`'s result goes: 'str' object has no attribute 'splits')."""
    return needs(dataset, MultiIdentityDataset, asked, "a loaded dataset (fastminerf.load_dataset(path))")


def load_dataset(
    paths: Union[PathLike, Sequence[PathLike]],
    splits: Optional[Sequence[str]] = _DATA.splits,
    cache_frames: Optional[int] = _DATA.cache_frames,
    cache_bytes: Optional[int] = _DATA.cache_bytes,
) -> MultiIdentityDataset:
    """Read identity folders of the shared layout (``DATASET.md``) as one dataset.

    Reads and validates every transforms file now (keys, shapes, finite values, files exist, one expression
    length across frames and identities, each file's image size from its first image and its ``w``/``h`` keys:
    identities may differ in size, a file's frames may not); pixels are decoded later, on demand.

    Args:
        paths: identity folders and/or roots holding identity folders (a folder is an identity folder when it
            holds a ``transforms_<split>.json``).
        splits: splits to load (or one split's name), each required for every identity; None for the splits the first
            identity has.
        cache_frames, cache_bytes: bounds of the frame cache (see :class:`fastminerf.config.DataConfig`,
            whose fields these keywords are).

    Returns:
        The dataset; its identities sorted by folder name.

    Raises:
        DatasetError: naming the file, the frame and the key.

    Example:
        A tiny procedural dataset (2 identities, 6 frames each, 16 px) in a temporary folder, read back:

        >>> import tempfile
        >>> from fastminerf.data.synth import generate
        >>> root = tempfile.TemporaryDirectory()
        >>> _ = generate(root.name, n_identities=2, n_frames=6, size=16, seed=0)
        >>> data = load_dataset([root.name], splits=("train", "val"))
        >>> data.identities, data.expression_dim, data.num_frames("train")
        (['id000', 'id001'], 12, 10)
        >>> data
        MultiIdentityDataset(2 identities, E=12, train: 10 frames 16x16, val: 2 frames 16x16)
        >>> root.cleanup()
    """
    _check_bound("cache_frames", cache_frames)  # before any file is read, by the names the caller typed
    _check_bound("cache_bytes", cache_bytes)
    dirs = find_identity_dirs(paths)
    if splits is None:
        splits = identity_splits(dirs[0])
    splits = tuple(as_list(splits))  # one split's name: that split
    if not splits:
        raise DatasetError(f"no split to load: splits must name at least one (those of {dirs[0]}: "
                           f"{identity_splits(dirs[0])})")
    metas: Dict[str, List[SplitMeta]] = {}
    ref: Optional[SplitMeta] = None  # the first file read: the reference expression length
    said: Dict[str, SplitMeta] = {}  # per key, the first file that gives it
    for split in splits:
        per_identity: List[SplitMeta] = []
        for d in dirs:
            file = d / f"transforms_{split}.json"
            what = not_a_file(file)
            if what == "does not exist":
                raise DatasetError(f"identity '{d.name}' has no split '{split}' (file missing)", file=file)
            if what is not None:  # a folder, a link that loops: the user sees the name in the folder
                raise DatasetError(f"identity '{d.name}': the file of split '{split}' {what}", file=file)
            m = read_transforms(file, d)
            ref = _check_one_space(m, ref, said)
            # Image size: the first image's header, checked against w/h (each identity may have its own).
            first = m.image_paths[0]
            try:
                w, h = image_size(first)
            except (OSError, ValueError, SyntaxError) as exc:
                raise DatasetError(f"cannot read image {first}: {exc}", file=file, frame=0, key="file_path") from None
            for key, given, actual in (("w", m.width, w), ("h", m.height, h)):
                if given is not None and given != actual:
                    raise DatasetError(
                        f"says {given} but image {first} is {w}x{h}", file=file, key=key
                    )
            _check_camera(m, w, h)
            per_identity.append(_with_size(m, w, h))
        metas[split] = per_identity
    cache = FrameCache(max_items=cache_frames, max_bytes=cache_bytes)
    return MultiIdentityDataset(dirs, metas, cache)


MAX_FIELD_OF_VIEW_DEG = 160.0
"""Widest field of view (across the image, either axis) a camera of the layout may have: no face camera comes near it,
while intrinsics normalised by the image size (``[fx/w, fy/h, cx/w, cy/h]``, a common way to write them) read as
pixels give a focal length of a pixel or two and a field of view near 180 degrees."""


def _check_camera(meta: SplitMeta, width: int, height: int) -> None:
    """Refuse a camera wider than :data:`MAX_FIELD_OF_VIEW_DEG` for images of this size, or whose principal point is
    not inside them (intrinsics of the frames before a converter resized them), naming the file and key (and the
    frame, for a frame's own ``intrinsics``)."""
    cams = meta.frame_cameras(width, height)
    outside = np.flatnonzero((cams[:, 2] <= 0) | (cams[:, 2] >= width) | (cams[:, 3] <= 0) | (cams[:, 3] >= height))
    if outside.size:
        i = int(outside[0])
        own = meta.frame_intrinsics is not None and not np.isnan(meta.frame_intrinsics[i, 0])
        raise DatasetError(f"the principal point ({cams[i, 2]:.4g}, {cams[i, 3]:.4g}) is not inside the {width}x{height} "
                           f"images: intrinsics of the frames at another size (resized without their camera)? fx, fy, "
                           f"cx, cy are in pixels of the stored images", file=meta.file, frame=i if own else None,
                           key="intrinsics")
    fov = np.degrees(np.maximum(2 * np.arctan(0.5 * width / cams[:, 0]), 2 * np.arctan(0.5 * height / cams[:, 1])))
    i = int(np.argmax(fov))
    if fov[i] <= MAX_FIELD_OF_VIEW_DEG:
        return
    fx, fy = float(cams[i, 0]), float(cams[i, 1])
    own = meta.frame_intrinsics is not None and not np.isnan(meta.frame_intrinsics[i, 0])
    wide = (f"a field of view of {fov[i]:.0f} degrees across the {width}x{height} images, wider than any face camera's "
            f"({MAX_FIELD_OF_VIEW_DEG:.0f} at most)")
    if own or meta.intrinsics is not None:
        raise DatasetError(f"{wide}: focal lengths of {fx:.4g}, {fy:.4g} pixels. Normalised by the image size? fx, fy, "
                           f"cx, cy are in pixels of the stored images (multiply fx and cx by w, fy and cy by h)",
                           file=meta.file, frame=i if own else None, key="intrinsics")
    raise DatasetError(f"{wide}: camera_angle_x is in radians", file=meta.file, key="camera_angle_x")


def _check_one_space(m: SplitMeta, ref: Optional[SplitMeta], said: Dict[str, SplitMeta]) -> SplitMeta:
    """Refuse transforms file ``m`` when its expressions differ in length from those of ``ref`` (the first file read;
    None: ``m`` is the first), or in ``expression_names`` / ``expression_space`` from the first file that gave them
    (``said``, filled here), naming the file and key; returns the reference file."""
    name = m.identity_dir.name
    if ref is None:
        ref = m
    elif m.expression_dim != ref.expression_dim:
        raise DatasetError(
            f"identity '{name}' has expressions of length {m.expression_dim} but identity "
            f"'{ref.identity_dir.name}' ({ref.file}) has length {ref.expression_dim}; identities trained "
            f"together must share one expression space",
            file=m.file,
            frame=0,
            key="expression",
        )
    for key in ("expression_names", "expression_space"):  # where the files say, they must agree
        if getattr(m, key) is None:
            continue
        first_said = said.setdefault(key, m)
        if getattr(m, key) != getattr(first_said, key):
            raise DatasetError(_space_clash(key, name, m, first_said), file=m.file, key=key)
    return ref


def check_one_space(datasets: Sequence[MultiIdentityDataset]) -> None:
    """Refuse datasets loaded apart (e.g. one identity each, with their own splits and image sizes) whose
    expressions differ in length, ``expression_names`` or ``expression_space``, as :func:`load_dataset` refuses such
    identities loaded together: :class:`DatasetError` naming the file and key."""
    ref: Optional[SplitMeta] = None
    said: Dict[str, SplitMeta] = {}
    for data in datasets:
        for split in data.splits:
            for i in range(len(data.identities)):
                ref = _check_one_space(data.split_meta(split, i), ref, said)


def _prepared_space(space: Optional[str]) -> bool:
    """Whether ``space`` is the id of a basis ``prepare`` fitted (``pca<E>-<hex>``,
    :attr:`fastminerf.prepare.expression.ExpressionBasis.space_id`), one an ``expression_basis.npz`` holds, rather than
    the procedural heads' or the name a converter of another tracker wrote."""
    return space is not None and re.fullmatch(r"pca\d+-[0-9a-f]+", space) is not None


def _space_clash(key: str, name: str, m: SplitMeta, first: SplitMeta) -> str:
    """The message of two identities whose ``expression_names`` or ``expression_space`` differ."""
    if key == "expression_names":
        return (f"expression_names differ from those of {first.file}; identities trained together must share one "
                f"expression space")
    said = (f"identity '{name}' is in expression space '{m.expression_space}' but identity '{first.identity_dir.name}' "
            f"({first.file}) is in '{first.expression_space}': their coefficients mean different face motions")
    if not (_prepared_space(m.expression_space) or _prepared_space(first.expression_space)):  # no basis file to pass
        return f"{said} (another tracker or basis); train together only people whose expressions one tracker wrote"
    return (f"{said} (each prepare into a new folder fits its own basis); prepare them into one folder, or pass the "
            f"first folder's basis to the later prepare (--basis ROOT/expression_basis.npz)")


def expression_space_mismatch(expected: Optional[str], have: Optional[str], what: str,
                              model: Optional[str]) -> Optional[str]:
    """Why data whose expressions are in space ``have`` cannot be used with a model trained in ``expected`` (both
    known and different), naming both and the remedy (``prepare --basis`` where either is a basis ``prepare``
    fitted); None when it can (or either space is unknown). ``model``: what the model is (its checkpoint), or None."""
    if expected is None or have is None or have == expected:
        return None
    # the expressions are the subject: 'what' may be one person or several ('the new identities (p, q)')
    said = (f"the expressions of {what} are in expression space '{have}' but the model"
            f"{f' ({model})' if model else ''} was trained in '{expected}': the same coefficients would mean other "
            "face motions")
    if not (_prepared_space(expected) or _prepared_space(have)):  # no basis file to pass
        return f"{said}. Use data whose expressions are in '{expected}' (written by the training data's tracker and basis)"
    return (f"{said}. Prepare it with the training data's basis (fastminerf prepare VIDEO --out NEW --basis "
            f"TRAINING_ROOT/expression_basis.npz, or --out TRAINING_ROOT)")


def check_expression_space(expected: Optional[str], dataset: MultiIdentityDataset, what: str, model: str,
                           expected_dim: Optional[int] = None) -> None:
    """Refuse ``dataset`` when its expressions are in another space than a model's (both known), or of another length.

    Args:
        expected: the model's expression space (None: unknown, nothing is checked).
        dataset: the data to use with it.
        what: what the data is, for the message (e.g. "the driver", "the new identities").
        model: what the model is, for the message (e.g. its run folder).
        expected_dim: the model's expression length E (None: not checked).

    Raises:
        DatasetError: naming both spaces (or lengths), the data's first transforms file, and the remedy.
    """
    if expected_dim is not None and int(expected_dim) != dataset.expression_dim:
        first = dataset.split_meta(dataset.splits[0], 0)
        raise DatasetError(f"the expressions of {what} ({some_of(dataset.identities)}) are of length {dataset.expression_dim} "
                           f"but {model} was trained with length {expected_dim}; they must share one "
                           f"expression space", file=first.file, frame=0, key="expression")
    have = dataset.expression_space
    why = expression_space_mismatch(expected, have, f"{what} ({some_of(dataset.identities)})", model)
    if why is not None:
        file = next((m.file for ms in dataset._metas.values() for m in ms if m.expression_space == have), None)
        raise DatasetError(why, file=file, key="expression_space")


def _with_size(meta: SplitMeta, width: int, height: int) -> SplitMeta:
    from dataclasses import replace

    return replace(meta, width=width, height=height)
