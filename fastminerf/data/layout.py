"""The on-disk layout of ``DATASET.md``: finding identity folders, reading and validating
``transforms_<split>.json`` files, and decoding frames.

Everything here is eager and cheap (JSON, file existence, one image header per file); pixel data is decoded
only through :func:`read_rgb` / :func:`read_mask`, which the dataset calls lazily.

Every problem raises :class:`DatasetError`, whose message names the file, the frame (its position in the
file's ``frames`` list) and the key, e.g. ``.../transforms_train.json: frame 3: key 'transform_matrix':
expected shape (4, 4), got (3, 4)``.
"""

from __future__ import annotations

import errno
import json
import math
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..config import ArgumentValueError, as_paths, check_fps, some_of

__all__ = [
    "DEFAULT_AABB",
    "LANDMARKS_FILE",
    "EYE_LANDMARKS",
    "EYE_OPENING_LANDMARKS",
    "FACE_MESH_SIZES",
    "LIP_LANDMARKS",
    "DatasetError",
    "Landmarks",
    "SplitMeta",
    "find_identity_dirs",
    "identity_splits",
    "is_identity_dir",
    "read_landmarks",
    "read_mask",
    "read_rgb",
    "read_transforms",
]

PathLike = Union[str, Path]

DEFAULT_AABB: Tuple[float, ...] = (-1.5, -1.5, -1.5, 1.5, 1.5, 1.5)
"""The layout's default head box: a cube of side 3 at the origin, ``[xmin, ymin, zmin, xmax, ymax, zmax]``."""

IMAGE_SUFFIXES: Tuple[str, ...] = (".png", ".jpg", ".jpeg")
"""Suffixes tried, in order, for a ``file_path`` / ``mask_path`` without an image extension (NeRFace)."""

AUDIO_FILE = "audio.wav"
"""Optional per-identity speech track, starting at the source video's start (frames' ``time`` index into it)."""

LANDMARKS_FILE = "landmarks.npz"
"""Optional per-identity file of 3D face landmarks in head space (written by ``prepare``; see
:func:`read_landmarks`)."""

LIP_LANDMARKS: Tuple[int, ...] = (
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269, 270, 291,
    308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415)
"""Indices of the 40 lip points (outer and inner outline) among the 478 landmarks of mediapipe's face mesh, the
points ``prepare`` writes to :data:`LANDMARKS_FILE` (the vertices of mediapipe's ``FACEMESH_LIPS``)."""

FACE_MESH_SIZES: Tuple[int, ...] = (468, 478)
"""K of mediapipe's face mesh (478 with ``refine_landmarks``' irises, as ``prepare`` writes, 468 without): the
only ``landmarks.npz`` whose points :data:`LIP_LANDMARKS` and :data:`EYE_LANDMARKS` index (another tracker's
points, however many, hold other points there)."""

EYE_LANDMARKS: Tuple[Tuple[int, ...], Tuple[int, ...]] = (
    (7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246),
    (249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466))
"""The 16 lid points (upper and lower lid outline) of each eye among the same 478 landmarks: the person's right eye
(the image's left in a frontal view; the vertices of mediapipe's ``FACEMESH_RIGHT_EYE``), then the left
(``FACEMESH_LEFT_EYE``)."""

EYE_OPENING_LANDMARKS: Tuple[Tuple[int, ...], Tuple[int, ...]] = ((33, 160, 158, 133, 153, 144), (362, 385, 387, 263, 373, 380))
"""Six lid points of each eye (same order as :data:`EYE_LANDMARKS`) for the eye aspect ratio (Soukupova and Cech,
2016): the outer corner p1, two upper-lid points p2 and p3, the inner corner p4 (the left eye's run the other way),
two lower-lid points p5 and p6 under p3 and p2: ``(|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|)``, about 0.3 open and 0.05
shut (:func:`fastminerf.metrics.eye_aspect_ratio`)."""

LAST_ROW_TOL = 1e-4
"""How far the last row of ``transform_matrix`` may be from ``[0, 0, 0, 1]`` (JSON round-off of trackers);
anything further is almost always a transposed matrix."""

_TRANSFORMS_PREFIX = "transforms_"
_TRANSFORMS_SUFFIX = ".json"


class DatasetError(ValueError):
    """A dataset does not follow the layout. The message names the file, the frame and the key.

    Attributes:
        problem: what is wrong, without the location.
        file: the file concerned (a transforms JSON, an image or a folder), or None.
        frame: position of the frame in the file's ``frames`` list, or None.
        key: the JSON key concerned, or None.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: Optional[PathLike] = None,
        frame: Optional[int] = None,
        key: Optional[str] = None,
    ) -> None:
        self.problem = problem
        self.file = None if file is None else str(file)
        self.frame = frame
        self.key = key
        where = []
        if self.file is not None:
            where.append(self.file)
        if frame is not None:
            where.append(f"frame {frame}")
        if key is not None:
            where.append(f"key '{key}'")
        super().__init__(": ".join(where + [problem]))


# ----------------------------------------------------------------------------------------------------------
# Finding identities and splits


def is_identity_dir(path: PathLike) -> bool:
    """True when ``path`` is a folder holding at least one ``transforms_<split>.json``."""
    p = Path(path)
    return p.is_dir() and any(p.glob(f"{_TRANSFORMS_PREFIX}*{_TRANSFORMS_SUFFIX}"))


def identity_splits(identity_dir: PathLike) -> List[str]:
    """Names of the splits an identity folder has (``transforms_<split>.json``), sorted."""
    p = Path(identity_dir)
    names = [f.name[len(_TRANSFORMS_PREFIX) : -len(_TRANSFORMS_SUFFIX)] for f in p.glob(f"{_TRANSFORMS_PREFIX}*{_TRANSFORMS_SUFFIX}")]
    return sorted(n for n in names if n)


def not_a_file(path: PathLike) -> Optional[str]:
    """What ``path`` is when it is not a file that can be read ("does not exist", "is a folder", "is a symbolic link
    that loops", ...), for messages that name it; None when it is a regular file (through any links)."""
    import os

    p = Path(path)
    if p.is_file():
        return None
    if p.is_symlink():
        try:
            p.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a loop so
            return "is a symbolic link that loops"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a symbolic link that loops"
            return f"is a symbolic link to {os.readlink(p)}, which does not exist"
    if p.is_dir():
        return "is a folder"
    if not os.path.lexists(p):
        return "does not exist"
    return "is not a regular file"


SYNTH_IDENTITY_MARKER = "synth_identity.json"
"""Written by ``fastminerf synth`` into every identity folder of a generation before any frame
(:mod:`fastminerf.data.synth`), with ``"finished": false`` until the folder's transforms files are all written: such
a folder is one the generator began and did not finish (one of an older version, without the key, when it holds no
``transforms_<split>.json``)."""


def _synth_unfinished(folder: Path) -> bool:
    marker = folder / SYNTH_IDENTITY_MARKER
    if not marker.is_file():
        return False
    if not is_identity_dir(folder):
        return True
    try:
        return json.loads(marker.read_text()).get("finished", True) is not True
    except (OSError, ValueError, AttributeError):  # not the generator's JSON object: cut short
        return True


PREPARE_WORK_DIR = ".prepare"
"""Made by ``fastminerf prepare`` in an identity folder before anything else (its stages' caches,
:mod:`fastminerf.prepare.pipeline`)."""

PREPARE_DONE_FILE = "prepare.json"
"""Written by ``fastminerf prepare`` into an identity folder last, once everything else is (and removed before its
last stage is redone): a folder holding :data:`PREPARE_WORK_DIR` without it is one prepare began and did not finish,
whatever transforms files it holds yet."""


PREPARE_FAILED_FILE = "failed.json"
"""Written by ``fastminerf prepare`` into :data:`PREPARE_WORK_DIR` when it fails on a video (``{"error": ...}``), and
removed when a prepare of the video starts again: an unfinished folder holding it was not stopped part way."""


def prepare_notes(identity_dir: PathLike) -> List[str]:
    """What ``prepare`` noted of the video it prepared into ``identity_dir`` (its :data:`PREPARE_DONE_FILE`'s notes,
    which the command printed: a file cut short, frames without a face dropped, no sound, ...), for a caller that
    prepared it unseen (``render --drive VIDEO``); [] for a folder prepare did not write or that has no notes.

    Raises:
        DatasetError: a :data:`PREPARE_DONE_FILE` that cannot be read or holds no list of notes, naming it.
    """
    path = Path(identity_dir) / PREPARE_DONE_FILE
    if not path.is_file():
        return []
    try:
        notes = json.loads(path.read_text(encoding="utf-8")).get("notes", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise DatasetError(f"cannot read it ({exc})", file=path) from None
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise DatasetError(f"needs a list of texts, got {_describe(notes)}", file=path, key="notes")
    return notes


def _prepare_unfinished(folder: Path, state: str = "stopped") -> bool:
    """Whether ``folder`` is one prepare began and did not finish, ``state`` ``stopped`` (part way) or ``failed``."""
    if not (folder / PREPARE_WORK_DIR).is_dir() or (folder / PREPARE_DONE_FILE).is_file():
        return False
    return (folder / PREPARE_WORK_DIR / PREPARE_FAILED_FILE).is_file() == (state == "failed")


def _refuse_unfinished_prepare(folders: Sequence[Path]) -> None:
    if folders and _prepare_unfinished(folders[0], "failed"):
        try:
            error = json.loads((folders[0] / PREPARE_WORK_DIR / PREPARE_FAILED_FILE).read_text())["error"]
        except (OSError, ValueError, KeyError, TypeError):
            error = "its error is not recorded"
        raise DatasetError(f"prepare failed on this folder: {error}", file=folders[0])
    if folders:
        more = f" (and here too: {some_of([f.name for f in folders[1:]])})" if len(folders) > 1 else ""
        # a version before PREPARE_FAILED_FILE left a video it failed on so too (and read its root without it)
        raise DatasetError(f"prepare was stopped before it finished this folder{more}, or an earlier version, which "
                           f"recorded no failures, failed on it: its {PREPARE_DONE_FILE}, written last, is missing; "
                           "rerun the same prepare command to finish it (it continues where it stopped; a video it "
                           "fails on is reported and then left out of its root)", file=folders[0])


IDENTITY_PATHS = "identity folders or dataset roots"
"""What a call's data paths are (:func:`find_identity_dirs`), for its TypeError (:func:`fastminerf.config.as_paths`)."""


def find_identity_dirs(paths: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """Identity folders named by ``paths``: each path is an identity folder, or a root whose sub-folders are.

    Returns the folders sorted by name (the identity name). Raises :class:`DatasetError` for no paths, a path that
    does not exist, a root without identity folders, a folder (named, or in a root) ``prepare`` began and did not finish
    (no :data:`PREPARE_DONE_FILE` yet: its transforms may be missing or part written; one it failed on is refused
    named on its own and left out of its root, prepare having reported it), a root holding an identity
    ``synth`` began and did not finish (its finished ones would be read alone), two identities with the same name
    (also one name in two Unicode spellings, NFC and NFD),
    or two names (links) for one folder.
    """
    found: List[Path] = []
    given = as_paths(paths, "paths", IDENTITY_PATHS)
    if not given:  # a glob that matched nothing: later steps failed on an empty list with an IndexError
        raise DatasetError("no identity folder or dataset root given (an empty list of paths)")
    for raw in given:
        p = Path(raw)
        if not p.exists():
            raise DatasetError("no such file or folder", file=p)
        if not p.is_dir():
            raise DatasetError("expected an identity folder or a folder of identity folders", file=p)
        _refuse_unfinished_prepare([p] if _prepare_unfinished(p) or _prepare_unfinished(p, "failed") else [])
        if is_identity_dir(p):
            found.append(p)
            continue
        begun = sorted(c for c in p.iterdir() if c.is_dir() and _synth_unfinished(c))
        if begun:
            raise DatasetError(f"synth was stopped before it finished {', '.join(c.name for c in begun)} here: rerun the "
                               "same synth command to finish the dataset (or name the finished identity folders)",
                               file=p)
        _refuse_unfinished_prepare(sorted(c for c in p.iterdir() if c.is_dir() and _prepare_unfinished(c)))
        # a video prepare failed on was reported so by it: its root reads as the people it finished
        children = sorted(c for c in p.iterdir() if is_identity_dir(c) and not _prepare_unfinished(c, "failed"))
        if not children:
            raise DatasetError(
                f"no identity folders here: neither this folder nor its sub-folders hold a "
                f"{_TRANSFORMS_PREFIX}<split>{_TRANSFORMS_SUFFIX}",
                file=p,
            )
        found.extend(children)
    by_name = {}
    for d in found:
        other = by_name.get(d.name)
        if other is not None and other.resolve() != d.resolve():
            raise DatasetError(f"identity name '{d.name}' is also the name of {other}; identity names must be unique", file=d)
        by_name[d.name] = d
    spelt: Dict[str, str] = {}
    for name in sorted(by_name):  # 'Zoë' typed here (NFC) beside 'Zoë' copied from a Mac (NFD): one name to the eye
        other = spelt.setdefault(unicodedata.normalize("NFC", name), name)
        if other != name:
            raise DatasetError(f"identity names '{other}' ({by_name[other]}) and '{name}' are one name written with "
                               f"other Unicode code points ({ascii(other)}, {ascii(name)}: accents composed or "
                               "decomposed, as in a folder copied from a Mac); they would be two people shown alike: "
                               "rename one", file=by_name[name])
    by_folder: Dict[Path, str] = {}
    for name in sorted(by_name):  # two links (or a link and the folder) to one identity: one person read as two
        real = by_name[name].resolve()
        if real in by_folder:
            raise DatasetError(f"identities {by_folder[real]} and {name} are one folder ({real}): its frames would "
                               "train as two people; give it once", file=by_name[name])
        by_folder[real] = name
    return [by_name[name] for name in sorted(by_name)]


# ----------------------------------------------------------------------------------------------------------
# One transforms file


@dataclass(frozen=True, eq=False)
class SplitMeta:
    """Validated contents of one ``transforms_<split>.json`` (one identity, one split), F frames.

    Image size and intrinsics are resolved later, once the size is known (:meth:`resolve_intrinsics`).
    """

    file: Path
    """The JSON file."""
    identity_dir: Path
    """The identity folder holding it."""
    split: str
    """Split name."""
    image_paths: Tuple[str, ...]
    """(F,) resolved image path per frame (strings: a third of the memory of ``Path`` objects, which counts
    with millions of frames)."""
    mask_paths: Tuple[Optional[str], ...]
    """(F,) resolved mask path per frame, or None."""
    c2w: np.ndarray
    """(F, 4, 4) float32 camera-to-head transforms."""
    expression: np.ndarray
    """(F, E) float32 expressions."""
    bbox: np.ndarray
    """(F, 4) float32 face boxes ``[y0, y1, x0, x1]`` as image fractions; ``[0, 1, 0, 1]`` where absent."""
    has_bbox: np.ndarray
    """(F,) bool, whether the frame gave a ``bbox``."""
    frame_index: np.ndarray
    """(F,) int64 ``frame_index`` of each frame, or its position in the file when absent."""
    time: np.ndarray
    """(F,) float64 ``time`` of each frame in seconds, NaN where absent."""
    intrinsics: Optional[Tuple[float, float, float, float]]
    """``intrinsics`` as written, or None."""
    camera_angle_x: Optional[float]
    """``camera_angle_x`` as written, or None."""
    width: Optional[int]
    """``w`` as written, or None."""
    height: Optional[int]
    """``h`` as written, or None."""
    near: Optional[float]
    """``near`` as written, or None."""
    far: Optional[float]
    """``far`` as written, or None."""
    aabb: Tuple[float, ...]
    """``aabb`` as written, or :data:`DEFAULT_AABB`."""
    background: Optional[Path]
    """Resolved background image: ``background`` when given, else ``bg.png`` when present, else None (white)."""
    expression_names: Optional[Tuple[str, ...]]
    """``expression_names`` as written, or None."""
    expression_space: Optional[str]
    """``expression_space`` as written (which basis the coefficients are in, e.g. the id of the basis ``prepare``
    fitted), or None when the file does not say."""
    fps: Optional[float]
    """``fps`` as written, or None."""
    frame_intrinsics: Optional[np.ndarray] = None
    """(F, 4) float64 ``intrinsics`` of each frame that gives its own, as written, NaN rows for the frames that take
    the file's camera; None when no frame gives one."""

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def expression_dim(self) -> int:
        """E, the expression length of every frame of the file."""
        return int(self.expression.shape[1])

    def frame_cameras(self, width: int, height: int) -> np.ndarray:
        """(F, 4) float64 ``[fx, fy, cx, cy]`` in pixels of each frame for images of the given size: the frame's own
        ``intrinsics`` where it gives them (a principal point in (0, 1] read as fractions, as the file's), else the
        file's camera (:meth:`resolve_intrinsics`)."""
        own = self.frame_intrinsics
        if own is None:
            return np.tile(np.asarray(self.resolve_intrinsics(width, height), np.float64), (len(self), 1))
        out = own.copy()
        given = ~np.isnan(own[:, 0])
        if not given.all():
            out[~given] = self.resolve_intrinsics(width, height)
        frac = given & (own[:, 2] > 0) & (own[:, 2] <= 1) & (own[:, 3] > 0) & (own[:, 3] <= 1)
        out[frac, 2] *= width
        out[frac, 3] *= height
        return out

    def resolve_intrinsics(self, width: int, height: int) -> Tuple[float, float, float, float]:
        """``[fx, fy, cx, cy]`` in pixels for images of the given size: the file's camera (each frame's, which may
        give its own, is :meth:`frame_cameras`).

        From ``intrinsics`` when written, else from ``camera_angle_x`` (fx = fy = 0.5 w / tan(angle / 2),
        principal point at the centre). NeRFace writes ``cx`` and ``cy`` as fractions of the image size
        (``0.5``); a principal point with both values in (0, 1] is read that way, since a real one within a
        pixel of the corner does not occur.
        """
        if self.intrinsics is not None:
            fx, fy, cx, cy = self.intrinsics
            if 0.0 < cx <= 1.0 and 0.0 < cy <= 1.0:
                cx, cy = cx * width, cy * height
            return (fx, fy, cx, cy)
        assert self.camera_angle_x is not None
        f = 0.5 * width / math.tan(0.5 * self.camera_angle_x)
        return (f, f, 0.5 * width, 0.5 * height)


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _numbers(value: Any, shape: Optional[Tuple[int, ...]], *, file: Path, frame: Optional[int], key: str, ndim: Optional[int] = None) -> np.ndarray:
    """Parse a JSON number / nested list into a float64 array of the given shape (or ndim), finite and within
    float32's range."""
    if isinstance(value, (str, dict)) or value is None:
        raise DatasetError(f"expected numbers, got {_describe(value)}", file=file, frame=frame, key=key)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"expected numbers, got {_describe(value)}", file=file, frame=frame, key=key) from None
    if shape is not None and arr.shape != shape:
        raise DatasetError(f"expected shape {shape}, got shape {arr.shape}", file=file, frame=frame, key=key)
    if ndim is not None and arr.ndim != ndim:
        raise DatasetError(f"expected a flat list of numbers, got shape {arr.shape}", file=file, frame=frame, key=key)
    bad = ~np.isfinite(arr)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(f"non-finite value {arr[pos]} at position {list(pos)}", file=file, frame=frame, key=key)
    big = np.abs(arr) > np.finfo(np.float32).max  # the frame table holds float32: this would become inf there
    if big.any():
        pos = tuple(int(i) for i in np.argwhere(big)[0])
        raise DatasetError(f"value {arr[pos]:g} at position {list(pos)} is beyond the range of float32 "
                           f"({np.finfo(np.float32).max:.3g}), in which it is stored", file=file, frame=frame, key=key)
    return arr


def _number(value: Any, *, file: Path, key: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetError(f"expected a number, got {_describe(value)}", file=file, key=key)
    v = float(value)
    if not math.isfinite(v):
        raise DatasetError(f"non-finite value {v}", file=file, key=key)
    if positive and v <= 0:
        raise DatasetError(f"must be positive, got {v}", file=file, key=key)
    return v


def _fps(value: Any, *, file: Path) -> float:
    """A transforms file's ``fps``: a frame rate by :func:`fastminerf.config.check_fps` (at most ``MAX_FPS``), refused
    here naming the file, not later where a path of its frames is made."""
    try:
        return check_fps(_number(value, file=file, key="fps", positive=True))
    except ArgumentValueError as exc:
        raise DatasetError(exc.reason, file=file, key="fps") from None


def _size(value: Any, *, file: Path, key: str) -> int:
    v = _number(value, file=file, key=key, positive=True)
    if v != int(v):
        raise DatasetError(f"expected a whole number of pixels, got {v}", file=file, key=key)
    return int(v)


def _resolve_image(identity_dir: Path, rel: Any, *, file: Path, frame: Optional[int], key: str) -> Path:
    """Resolve an image path relative to the identity folder, trying image suffixes when it has none."""
    if not isinstance(rel, str) or not rel:
        raise DatasetError(f"expected a relative path, got {_describe(rel)}", file=file, frame=frame, key=key)
    base = identity_dir / rel
    if base.suffix.lower() in IMAGE_SUFFIXES:
        candidates = [base]
    else:
        candidates = [base.with_name(base.name + s) for s in IMAGE_SUFFIXES] + [base]
    for c in candidates:
        if c.is_file():
            return c
    if len(candidates) == 1:
        raise DatasetError(f"image not found: {base}", file=file, frame=frame, key=key)
    raise DatasetError(
        f"image not found: {base} (tried {', '.join(s for s in IMAGE_SUFFIXES)} and no suffix)",
        file=file,
        frame=frame,
        key=key,
    )


def read_transforms(path: PathLike, identity_dir: Optional[PathLike] = None) -> SplitMeta:
    """Read and validate one ``transforms_<split>.json``.

    Checks every key the layout defines: required keys present, shapes (4x4 ``transform_matrix`` with last
    row ``[0, 0, 0, 1]`` and the head box's centre in front of the camera, 4 ``intrinsics``, 6 ``aabb``, 4
    ``bbox``), finite values, one expression length for all frames, referenced images and masks exist,
    ``expression_names`` matches the expression length.

    Args:
        path: the JSON file.
        identity_dir: folder the paths are relative to; default the file's folder.

    Raises:
        DatasetError: naming the file, the frame and the key.
    """
    file = Path(path)
    root = Path(identity_dir) if identity_dir is not None else file.parent
    name = file.name
    if not (name.startswith(_TRANSFORMS_PREFIX) and name.endswith(_TRANSFORMS_SUFFIX)):
        raise DatasetError(f"expected a file named {_TRANSFORMS_PREFIX}<split>{_TRANSFORMS_SUFFIX}", file=file)
    split = name[len(_TRANSFORMS_PREFIX) : -len(_TRANSFORMS_SUFFIX)]
    try:
        text = file.read_text(encoding="utf-8-sig")  # a byte order mark (Windows tools) is skipped, as JSON allows
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read: {exc}", file=file) from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", file=file) from None
    if not isinstance(meta, dict):
        raise DatasetError(f"expected a JSON object at the top level, got {type(meta).__name__}", file=file)

    # --- top-level keys
    if "frames" not in meta:
        raise DatasetError("missing required key", file=file, key="frames")
    frames = meta["frames"]
    if not isinstance(frames, list):
        raise DatasetError(f"expected a list of frames, got {type(frames).__name__}", file=file, key="frames")
    if not frames:
        raise DatasetError("empty split: the file lists no frames", file=file, key="frames")

    intrinsics = None
    if meta.get("intrinsics") is not None:
        k = _numbers(meta["intrinsics"], (4,), file=file, frame=None, key="intrinsics")
        if k[0] <= 0 or k[1] <= 0:
            raise DatasetError(f"focal lengths fx, fy must be positive, got {k[0]}, {k[1]}", file=file, key="intrinsics")
        intrinsics = tuple(float(v) for v in k)
    camera_angle_x = None
    if meta.get("camera_angle_x") is not None:
        camera_angle_x = _number(meta["camera_angle_x"], file=file, key="camera_angle_x", positive=True)
        if camera_angle_x >= math.pi:
            raise DatasetError(f"field of view must be below pi radians, got {camera_angle_x}", file=file, key="camera_angle_x")
    no_camera = "missing camera: give 'intrinsics' [fx, fy, cx, cy] or 'camera_angle_x'"
    file_camera = intrinsics is not None or camera_angle_x is not None
    if not file_camera and not any(isinstance(fr, dict) and fr.get("intrinsics") is not None for fr in frames):
        raise DatasetError(no_camera, file=file, key="intrinsics")
    width = _size(meta["w"], file=file, key="w") if meta.get("w") is not None else None
    height = _size(meta["h"], file=file, key="h") if meta.get("h") is not None else None

    has_near, has_far = meta.get("near") is not None, meta.get("far") is not None
    if has_near != has_far:
        missing = "far" if has_near else "near"
        raise DatasetError("'near' and 'far' must be given together", file=file, key=missing)
    near = far = None
    if has_near:
        near = _number(meta["near"], file=file, key="near")
        far = _number(meta["far"], file=file, key="far")
        if near < 0 or far <= near:
            raise DatasetError(f"need 0 <= near < far, got near={near}, far={far}", file=file, key="far")

    aabb = DEFAULT_AABB
    if meta.get("aabb") is not None:
        box = _numbers(meta["aabb"], (6,), file=file, frame=None, key="aabb")
        if np.any(box[:3] >= box[3:]):
            raise DatasetError(f"need min < max on every axis, got {box.tolist()}", file=file, key="aabb")
        aabb = tuple(float(v) for v in box)

    if meta.get("background") is not None:
        background: Optional[Path] = _resolve_image(root, meta["background"], file=file, frame=None, key="background")
    else:
        background = root / "bg.png" if (root / "bg.png").is_file() else None

    fps = _fps(meta["fps"], file=file) if meta.get("fps") is not None else None

    # --- frames
    n = len(frames)
    head_centre = (np.asarray(aabb[:3], np.float64) + np.asarray(aabb[3:], np.float64)) / 2
    image_paths: List[str] = []
    mask_paths: List[Optional[str]] = []
    c2w = np.empty((n, 4, 4), dtype=np.float32)
    bbox = np.tile(np.array([0.0, 1.0, 0.0, 1.0], dtype=np.float32), (n, 1))
    has_bbox = np.zeros(n, dtype=bool)
    frame_index = np.arange(n, dtype=np.int64)
    times = np.full(n, np.nan, dtype=np.float64)
    expressions: List[np.ndarray] = []
    frame_intrinsics: Optional[np.ndarray] = None
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise DatasetError(f"expected a JSON object, got {_describe(fr)}", file=file, frame=i)
        for key in ("file_path", "transform_matrix", "expression"):
            if key not in fr:
                raise DatasetError("missing required key", file=file, frame=i, key=key)
        m = _numbers(fr["transform_matrix"], (4, 4), file=file, frame=i, key="transform_matrix")
        if np.max(np.abs(m[3] - np.array([0.0, 0.0, 0.0, 1.0]))) > LAST_ROW_TOL:
            raise DatasetError(
                f"last row must be [0, 0, 0, 1], got {m[3].tolist()} (is the matrix transposed?)",
                file=file,
                frame=i,
                key="transform_matrix",
            )
        # The head must lie in front of the camera, which looks down -z: a tracker's OpenCV matrix (looking down +z,
        # y down) puts it behind, and every ray would march away from the head without a word.
        to_head = head_centre - m[:3, 3]
        depth = float(m[:3, 2] @ to_head)  # the head centre's z in camera space; in front < 0
        if depth > 1e-6 * float(np.linalg.norm(to_head)):
            raise DatasetError(
                f"the head (the centre of the aabb, {[float(f'{v:.4g}') for v in head_centre]}) is behind the camera, "
                f"{depth:.3g} along "
                f"its +z axis: cameras look down -z (OpenGL/Blender); a matrix in the OpenCV convention (looking "
                f"down +z, y down) needs its second and third columns negated",
                file=file,
                frame=i,
                key="transform_matrix",
            )
        c2w[i] = m
        if fr.get("intrinsics") is not None:  # this frame's own camera
            k = _numbers(fr["intrinsics"], (4,), file=file, frame=i, key="intrinsics")
            if k[0] <= 0 or k[1] <= 0:
                raise DatasetError(f"focal lengths fx, fy must be positive, got {k[0]}, {k[1]}", file=file, frame=i,
                                   key="intrinsics")
            if frame_intrinsics is None:
                frame_intrinsics = np.full((n, 4), np.nan)
            frame_intrinsics[i] = k
        elif not file_camera:
            raise DatasetError(f"{no_camera} (at the top level, or in every frame)", file=file, frame=i, key="intrinsics")
        e = _numbers(fr["expression"], None, file=file, frame=i, key="expression", ndim=1)
        if expressions and e.shape[0] != expressions[0].shape[0]:
            raise DatasetError(
                f"expression has {e.shape[0]} values but frame 0 has {expressions[0].shape[0]}; every frame "
                f"needs the same expression length",
                file=file,
                frame=i,
                key="expression",
            )
        expressions.append(e)
        if fr.get("bbox") is not None:
            b = _numbers(fr["bbox"], (4,), file=file, frame=i, key="bbox")
            if b[0] >= b[1] or b[2] >= b[3]:
                raise DatasetError(f"need y0 < y1 and x0 < x1 in [y0, y1, x0, x1], got {b.tolist()}", file=file, frame=i, key="bbox")
            # A box wholly outside the image (most often pixels written where fractions belong) would shrink to one
            # border pixel, which would then get face_fraction of the frame's rays.
            if b[0] >= 1 or b[1] <= 0 or b[2] >= 1 or b[3] <= 0:
                raise DatasetError(f"the box {b.tolist()} lies outside the image: [y0, y1, x0, x1] are fractions of the "
                                   f"image size (0 to 1), not pixels", file=file, frame=i, key="bbox")
            bbox[i] = b
            has_bbox[i] = True
        if fr.get("frame_index") is not None:
            v = fr["frame_index"]
            # Finite and within int64 before int(): int(NaN), int(inf) and an int64 overflow raise unlocated errors.
            if (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v > np.iinfo(np.int64).max
                    or not math.isfinite(v) or v != int(v)):
                raise DatasetError(f"expected a whole number >= 0, got {_describe(v)}", file=file, frame=i, key="frame_index")
            frame_index[i] = int(v)
        if fr.get("time") is not None:
            v = _numbers(fr["time"], (), file=file, frame=i, key="time")
            times[i] = float(v)
        image_paths.append(str(_resolve_image(root, fr["file_path"], file=file, frame=i, key="file_path")))
        if fr.get("mask_path") is not None:
            mask_paths.append(str(_resolve_image(root, fr["mask_path"], file=file, frame=i, key="mask_path")))
        else:
            mask_paths.append(None)
    expression = np.stack(expressions).astype(np.float32) if expressions[0].size else np.zeros((n, 0), np.float32)
    # A rotation part with determinant < 0 is a mirrored camera (most often one column of an OpenCV matrix negated,
    # not two): rays still find the head, and an upside-down or mirrored world trains without a word.
    mirrored = np.flatnonzero(np.linalg.det(c2w[:, :3, :3].astype(np.float64)) < 0)
    if mirrored.size:
        raise DatasetError(
            "the camera is mirrored (the determinant of its 3x3 rotation part is negative): cameras look down -z with +y "
            "up and +x right (OpenGL/Blender); a matrix in the OpenCV convention needs its second and third columns "
            "negated, both",
            file=file,
            frame=int(mirrored[0]),
            key="transform_matrix",
        )

    names = None
    if meta.get("expression_names") is not None:
        raw = meta["expression_names"]
        if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
            raise DatasetError(f"expected a list of names, got {_describe(raw)}", file=file, key="expression_names")
        if len(raw) != expression.shape[1]:
            raise DatasetError(
                f"{len(raw)} names for expressions of length {expression.shape[1]}", file=file, key="expression_names"
            )
        names = tuple(raw)
    space = meta.get("expression_space")
    if space is not None and (not isinstance(space, str) or not space):
        raise DatasetError(f"expected a non-empty string, got {_describe(space)}", file=file, key="expression_space")

    return SplitMeta(
        file=file,
        identity_dir=root,
        split=split,
        image_paths=tuple(image_paths),
        mask_paths=tuple(mask_paths),
        c2w=c2w,
        expression=expression,
        bbox=bbox,
        has_bbox=has_bbox,
        frame_index=frame_index,
        time=times,
        intrinsics=intrinsics,
        camera_angle_x=camera_angle_x,
        width=width,
        height=height,
        near=near,
        far=far,
        aabb=aabb,
        background=background,
        expression_names=names,
        expression_space=space,
        fps=fps,
        frame_intrinsics=frame_intrinsics,
    )


# ----------------------------------------------------------------------------------------------------------
# Pixels


def _open_image(path: PathLike):
    """``PIL.Image.open(path)`` (header only), with Pillow's :class:`DecompressionBombError` (an image of more than
    twice ``Image.MAX_IMAGE_PIXELS`` pixels, refused before decoding) raised as the ValueError every reader of
    frames handles (it is neither an OSError nor a ValueError, and went through them as a traceback)."""
    from PIL import Image  # imageio's own PNG/JPEG backend

    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"too large to decode: {exc}") from None


def image_size(path: PathLike) -> Tuple[int, int]:
    """``(width, height)`` of an image file from its header, without decoding the pixels."""
    with _open_image(path) as im:
        _check_orientation(im)
        return int(im.size[0]), int(im.size[1])


_ORIENTATIONS = {2: "mirrored left to right", 3: "turned 180 degrees", 4: "mirrored top to bottom",
                 5: "mirrored and turned 90 degrees counter-clockwise", 6: "turned 90 degrees clockwise",
                 7: "mirrored and turned 90 degrees clockwise", 8: "turned 90 degrees counter-clockwise"}
"""What an EXIF orientation tag (0x0112) other than 1 ('as stored') asks a viewer to do to the stored pixels."""


def _check_orientation(im) -> None:
    """ValueError when the open Pillow image carries an EXIF orientation that rotates or mirrors it (a phone's JPEG):
    viewers show it so, while the pixels are read as stored."""
    orientation = im.getexif().get(0x0112, 1)
    if orientation in _ORIENTATIONS:
        raise ValueError(
            f"its EXIF orientation {orientation} has viewers show it {_ORIENTATIONS[orientation]}, but frames are read "
            "as stored, so it would train on another picture than the one you see; write the frames without the "
            "tag: rotated upright (e.g. PIL.ImageOps.exif_transpose) if the cameras were made from the picture as "
            "shown, else as stored with the tag removed (e.g. exiftool -Orientation= FILE)")


_UPRIGHT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
            5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
            8: lambda a: np.rot90(a, 1)}
"""Each EXIF orientation of :data:`_ORIENTATIONS` done to stored pixels (H, W, C): the picture as viewers show it
(Pillow's ``ImageOps.exif_transpose``)."""


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {arr.dtype}")


def _decode(path: Path, upright: bool = False) -> np.ndarray:
    """Decode an image to uint8 (H, W, C) with C in 1..4; raises OSError/ValueError from the decoder. An EXIF
    orientation is refused (:func:`_check_orientation`), or with ``upright`` done, as viewers show the picture."""
    import imageio.v3 as iio

    # imageio turns a palette into its colours and drops PNG transparency that is not an alpha channel (a palette's
    # or a colour key's tRNS), and hands CMYK JPEGs over as four channels that would be read as RGBA: let Pillow
    # convert those (header only here) to RGBA / RGB.
    with _open_image(path) as im:
        orientation = im.getexif().get(0x0112, 1) if upright else 1
        if not upright:
            _check_orientation(im)
        keyed = im.mode in ("P", "PA") or (im.mode in ("L", "RGB") and "transparency" in im.info)
        mode = "RGBA" if keyed else "RGB" if im.mode in ("CMYK", "YCbCr", "LAB", "HSV") else None
    arr = np.asarray(iio.imread(path, plugin="pillow", mode=mode))  # PNG or JPEG (DATASET.md)
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"unsupported image shape {arr.shape}")
    if orientation in _UPRIGHT:
        arr = np.ascontiguousarray(_UPRIGHT[orientation](arr))
    return arr


def read_rgb(
    path: PathLike, background: Union[None, np.ndarray, Callable[[], np.ndarray]] = None, upright: bool = False
) -> np.ndarray:
    """Decode an image as uint8 (H, W, 3); an alpha channel composites over ``background`` (H, W, 3) uint8,
    or over what a callable ``background()`` returns (called only for images with alpha), white when None.
    Grey images are repeated to three channels. An EXIF orientation that turns or mirrors the picture (a phone's
    JPEG) is refused, frames being read as stored; with ``upright`` (a picture that is no frame, e.g. a render's
    new background) it is done, as viewers show the picture.

    Raises OSError or ValueError from the decoder (the dataset turns them into :class:`DatasetError`).
    """
    arr = _decode(Path(path), upright)
    c = arr.shape[2]
    if c in (1, 2):
        arr = np.concatenate([np.repeat(arr[:, :, :1], 3, axis=2), arr[:, :, 1:]], axis=2)
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    rgb = arr[:, :, :3].astype(np.uint32)
    alpha = arr[:, :, 3:4].astype(np.uint32)
    if callable(background):
        background = background()
    if background is None:
        back = np.full_like(rgb, 255)
    else:
        if background.shape != rgb.shape:
            raise ValueError(f"background is {background.shape[1]}x{background.shape[0]}, image is {rgb.shape[1]}x{rgb.shape[0]}")
        back = background.astype(np.uint32)
    # Exact integer compositing: round(rgb * a / 255 + back * (255 - a) / 255).
    out = (rgb * alpha + back * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


MASK_THRESHOLD = 127
"""A mask pixel keeps the head when its grey value (mean of the colour channels) exceeds this."""


def read_mask(path: PathLike) -> np.ndarray:
    """Decode a foreground mask as bool (H, W): True where the mean colour value exceeds
    :data:`MASK_THRESHOLD` (white = head and torso kept). An alpha channel is ignored."""
    arr = _decode(Path(path))
    c = arr.shape[2]
    colour = arr[:, :, :1] if c in (1, 2) else arr[:, :, :3]
    return colour.mean(axis=2) > MASK_THRESHOLD


@dataclass(frozen=True)
class Landmarks:
    """An identity's ``landmarks.npz``: tracked face points per frame, in head space, F frames of K points.

    An extension of the layout that ``prepare`` writes beside the transforms files (other writers may too):
    ``frame_index (F,) int`` (the frames' ``frame_index``, which every split's frames are matched by),
    ``points (F, K, 3) float`` and ``visible (F, K) bool`` (whether the frame's camera sees the point). Training
    uses them as a depth prior (``train.landmark_depth_weight``).
    """

    file: Path
    frame_index: np.ndarray
    """(F,) int64."""
    points: np.ndarray
    """(F, K, 3) float32, head units."""
    visible: np.ndarray
    """(F, K) bool."""


NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)
"""What ``np.load`` raises for a file that is no readable ``.npz`` (empty: EOFError; cut short or damaged:
BadZipFile; another file: ValueError)."""


def npz_error_reason(exc: BaseException) -> str:
    """One line saying why ``np.load`` could not read a file (one of :data:`NPZ_ERRORS`), without numpy's advice to
    load a file that is no archive of arrays as pickled objects (which would run its code)."""
    if isinstance(exc, ValueError) and "pickled" in str(exc):
        return "not an .npz archive of arrays"
    if isinstance(exc, ValueError) and "allow_pickle" in str(exc):  # an archive member that is an object array
        return "it holds pickled Python objects, which are not read (they could run code)"
    return " ".join(str(exc).split()) or type(exc).__name__


def read_landmarks(identity_dir: PathLike) -> Optional[Landmarks]:
    """The identity's :data:`LANDMARKS_FILE`, validated, or None when it has none.

    Raises:
        DatasetError: naming the file and the key when an array is missing or has the wrong shape or values.
    """
    path = Path(identity_dir) / LANDMARKS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except NPZ_ERRORS as exc:
        raise DatasetError(f"not a readable .npz file ({npz_error_reason(exc)})", file=path) from None
    for key in ("frame_index", "points", "visible"):
        if key not in arrays:
            raise DatasetError(f"missing (the file has {sorted(arrays)})", file=path, key=key)
    idx, pts, vis = arrays["frame_index"], arrays["points"], arrays["visible"]
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise DatasetError(f"expected a 1-D integer array, got {idx.dtype} {idx.shape}", file=path, key="frame_index")
    f = idx.shape[0]
    if pts.ndim != 3 or pts.shape[0] != f or pts.shape[2] != 3:
        raise DatasetError(f"expected shape ({f}, K, 3), got {pts.shape}", file=path, key="points")
    if vis.shape != pts.shape[:2]:
        raise DatasetError(f"expected shape {pts.shape[:2]}, got {vis.shape}", file=path, key="visible")
    bad = np.flatnonzero(~np.isfinite(pts).all(axis=(1, 2)))
    if bad.size:  # the row and its frame: a file of thousands
        raise DatasetError(f"holds NaN or infinite values (row {int(bad[0])}, frame {int(idx[bad[0]])})", file=path,
                           key="points")
    order = np.argsort(idx, kind="stable")
    twice = np.flatnonzero(np.diff(idx[order]) == 0)
    if twice.size:
        a, b = sorted(int(r) for r in order[twice[0]:twice[0] + 2])
        raise DatasetError(f"repeats frame {int(idx[a])} (rows {a} and {b})", file=path, key="frame_index")
    return Landmarks(path, idx.astype(np.int64), pts.astype(np.float32), vis.astype(bool))
