"""Face landmarks and person segmentation with mediapipe's legacy solutions (models inside the wheel).

mediapipe is imported lazily, on the first tracker built, so that ``import fastminerf`` never needs it. Only
mediapipe 0.10.21 (and older) ships ``solutions.face_mesh`` and ``solutions.selfie_segmentation`` together with
their models; newer releases expect a ``.task`` model file downloaded from the internet, which prepare never
does. :func:`require_mediapipe` says so, and how to install it, when the import fails.

- :class:`FaceTracker`: FaceMesh in video mode (it tracks the face from the previous frame and runs the detector
  again only when tracking is lost) with ``refine_landmarks=True``: 478 landmarks, the last 10 on the irises.
  Only mediapipe's short-range face detector is bundled: a face must fill a good part of the frame.
  :func:`track_frames` tracks a video with it, the first frames of each run of frames with a face tracked again
  once the tracker is warm (the detector's start is rougher than tracking's).
- :func:`find_face`: a face anywhere in one frame, however small: the whole frame first, then overlapping square
  tiles of decreasing size (each tile brings a small face up to the detector's scale). ``prepare`` uses it to
  choose the region it tracks in, so that wide shots work without cropping by hand.
- :class:`Segmenter`: selfie segmentation, a soft person mask per frame.

Landmarks are returned in mediapipe's normalised image coordinates: ``x`` and ``y`` in [0, 1] across the width
and the height, ``z`` a relative depth in about the units of ``x`` (smaller is nearer the camera).

Dimension letters: K landmarks (478).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["MEDIAPIPE_VERSION", "N_LANDMARKS", "WARM_FRAMES", "FaceTracker", "MediapipeMissing", "Segmenter", "find_face",
           "require_mediapipe", "track_frames"]

N_LANDMARKS = 478
"""K: face-mesh landmarks with ``refine_landmarks`` (468 mesh points + 5 per iris)."""

MEDIAPIPE_VERSION = "0.10.21"
"""The mediapipe release prepare is written and tested against."""

INSTALL_HINT = (
    f'pip install -r requirements-prepare.txt && pip install --no-deps mediapipe=={MEDIAPIPE_VERSION} '
    f'(or `make install`; the deps are "protobuf>=4.25.3,<5" absl-py attrs flatbuffers matplotlib '
    f'opencv-python-headless)'
)


class MediapipeMissing(ImportError):
    """mediapipe (with its legacy face-mesh solution) is not installed; the message says how to install it."""


_MATPLOTLIB_SETUP_LOGGERS = ("matplotlib", "matplotlib.font_manager")
"""matplotlib's loggers of its own setup: the config and cache folder (a temporary one where HOME cannot be written)
and the font cache it builds there."""


@contextlib.contextmanager
def _matplotlib_setup_quiet() -> Iterator[None]:
    """Drop matplotlib's warnings about its own setup for the block: mediapipe imports matplotlib (its drawing
    helpers, which fastminerf does not use), and where HOME cannot be written (a cluster node) matplotlib warns on
    every import that it made a temporary folder and asks for MPLCONFIGDIR, a setting of nothing fastminerf uses."""
    import logging

    def setup_notice(record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING

    loggers = [logging.getLogger(name) for name in _MATPLOTLIB_SETUP_LOGGERS]
    for logger in loggers:
        logger.addFilter(setup_notice)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(setup_notice)


def require_mediapipe() -> Any:
    """The ``mediapipe`` module with its legacy solutions, or :class:`MediapipeMissing` saying how to install it."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging: errors only
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with _matplotlib_setup_quiet():
            import mediapipe as mp
    except ImportError as exc:
        raise MediapipeMissing(f"fastminerf prepare (and eval's mouth, eye and LMD metrics) needs mediapipe "
                               f"{MEDIAPIPE_VERSION} ({exc}); install it with: {INSTALL_HINT}") from None
    except Exception as exc:  # e.g. protobuf 5+ fails while mediapipe builds its graphs
        raise MediapipeMissing(f"mediapipe failed to import ({type(exc).__name__}: {exc}); fastminerf prepare needs "
                               f"mediapipe {MEDIAPIPE_VERSION} with protobuf<5: {INSTALL_HINT}") from None
    solutions = getattr(mp, "solutions", None)
    if solutions is None or not hasattr(solutions, "face_mesh") or not hasattr(solutions, "selfie_segmentation"):
        version = getattr(mp, "__version__", "?")
        raise MediapipeMissing(f"mediapipe {version} has no bundled face-mesh model (releases after "
                               f"{MEDIAPIPE_VERSION} download .task files at run time); install it with: {INSTALL_HINT}")
    return mp


_QUIET_LOCK = threading.Lock()
_quiet = {"depth": 0, "saved": None}
"""Blocks of :func:`_native_stderr_quiet` open now (in any thread), and the descriptor 2 found before the first."""


@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null for the block (Python's own ``sys.stderr``
    is flushed first and restored after). mediapipe's C++ (TensorFlow Lite, absl) prints INFO and WARNING lines
    there when a graph starts and on its first frame, whatever ``GLOG_minloglevel`` says.

    Descriptor 2 belongs to the process: blocks that overlap (trackers started in two threads) share one
    redirection, made by the first to begin and undone by the last to end, so that descriptor 2 comes back to what
    it was before the first (each putting back what it found would leave /dev/null there for good)."""
    with _QUIET_LOCK:
        if _quiet["depth"] == 0:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError, AttributeError):  # no real descriptor 2 (e.g. an embedded interpreter)
                saved = None
            else:
                with open(os.devnull, "wb") as null:
                    os.dup2(null.fileno(), 2)
            _quiet["saved"] = saved
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet["depth"] -= 1
            saved = _quiet["saved"]
            if _quiet["depth"] == 0 and saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
                _quiet["saved"] = None


class _Solution:
    """A mediapipe solution object (``self._solution``) closed by :meth:`close` or by leaving a ``with`` block.

    :meth:`_start` builds it with native stderr quieted (:func:`_native_stderr_quiet`) and runs one blank frame
    through it there: mediapipe starts its graph in the background and prints its start-up chatter (TensorFlow
    Lite, absl) when it has, so waiting for one output is what keeps that out of the user's terminal. A blank frame
    has no face and no person, so it leaves no tracking state behind."""

    _solution: Any
    _closed = False

    def _start(self, build: Callable[[], Any]) -> None:
        with _native_stderr_quiet():
            self._solution = build()
            self._solution.process(np.zeros((64, 64, 3), np.uint8))

    def close(self) -> None:
        """Close the solution; closing it again does nothing, as with a file (mediapipe's own close raises then)."""
        if not self._closed:
            self._closed = True
            self._solution.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FaceTracker(_Solution):
    """mediapipe FaceMesh in video mode: one face, 478 landmarks per frame, or None when no face is found.

    Feed the frames of one video in order (the tracker carries state from frame to frame); build a new tracker
    for each video. Use as a context manager, or call :meth:`close`. ``static=True`` treats every image as
    unrelated (the detector runs on each), for searching single images.
    """

    def __init__(self, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5,
                 static: bool = False) -> None:
        mp = require_mediapipe()
        self._face_seen = False
        self._start(lambda: mp.solutions.face_mesh.FaceMesh(
            static_image_mode=bool(static),
            max_num_faces=1,
            refine_landmarks=True,
            min_detection_confidence=float(min_detection_confidence),
            min_tracking_confidence=float(min_tracking_confidence),
        ))

    def __call__(self, rgb: np.ndarray) -> Optional[np.ndarray]:
        """Landmarks ``(K, 3)`` float32 (normalised x, y, z) of the face in an RGB uint8 frame ``(H, W, 3)``, or
        None when there is no face."""
        if self._face_seen:
            res = self._solution.process(np.ascontiguousarray(rgb))
        else:  # the landmark model's first run prints a warning of its own
            with _native_stderr_quiet():
                res = self._solution.process(np.ascontiguousarray(rgb))
        faces = res.multi_face_landmarks
        if not faces:
            return None
        self._face_seen = True
        lm = faces[0].landmark
        if len(lm) != N_LANDMARKS:
            raise RuntimeError(f"mediapipe returned {len(lm)} landmarks, expected {N_LANDMARKS}")
        return np.array([(p.x, p.y, p.z) for p in lm], dtype=np.float32)


WARM_FRAMES = 5
"""The first frames of each run of frames with a face that :func:`track_frames` tracks again, backwards, once the
tracker is warm."""


def track_frames(frames: Iterable[np.ndarray], tracker: "FaceTracker", warm: Optional[int] = None,
                 each: Optional[Callable[[int, np.ndarray], None]] = None) -> List[Optional[np.ndarray]]:
    """Landmarks (as :class:`FaceTracker` gives them, None where no face) of each frame of one video, in order.

    In video mode the face mesh places the first frame of a run of frames with a face (the video's first, or the
    first after frames without one) in the region the face *detector* gives, a rougher start than the region the
    previous frame's landmarks give every later frame: on procedural heads of known pose, such a frame's head pose
    was 3.0 degrees off against 2.5 for the same frames tracked mid-run (28 starts), and its landmarks 1.1 px from
    the mid-run ones at 192 px (0.24 px for frames tracked mid-run twice). So once a run has ``warm`` frames
    (:data:`WARM_FRAMES`), they are tracked again backwards, from the last to the first (each from the landmarks of
    the frame after it), and those results replace the first ones; then forwards again to the last, so that the
    frames after them are tracked on from where they were (2 (warm - 1) more runs of the landmark model per run).
    A run shorter than ``warm`` at the video's end is tracked back from its last frame; one that loses the face
    before ``warm`` frames keeps its first results.

    Args:
        frames: RGB uint8 ``(H, W, 3)`` frames of one video, in order.
        tracker: a video-mode :class:`FaceTracker` that has seen no frame of this video.
        warm: frames tracked again at each run's start; None: :data:`WARM_FRAMES`; 1 or less: none.
        each: called with each frame's index and the frame before it is tracked (progress, other per-frame work).
    """
    warm = WARM_FRAMES if warm is None else int(warm)
    found: List[Optional[np.ndarray]] = []
    head: List[np.ndarray] = []  # the current run's first frames (copies: a decoder may reuse its buffers)
    start = None
    for i, rgb in enumerate(frames):
        if each is not None:
            each(i, rgb)
        lm = tracker(rgb)
        found.append(lm)
        if lm is None:
            start, head = None, []
            continue
        if start is None:
            start, head = i, []
        if i - start < warm:
            head.append(np.array(rgb))
            if i - start == warm - 1:
                _track_again(tracker, head, found, start)
    if start is not None and 1 < len(head) < warm:  # the video ended within a run's first frames
        _track_again(tracker, head, found, start)
    return found


def _track_again(tracker: "FaceTracker", head: Sequence[np.ndarray], found: List[Optional[np.ndarray]],
                 start: int) -> None:
    """Track ``head`` (frames ``start...`` of a run, the tracker now warm on the last of them) backwards, keeping
    those results in ``found``, then forwards again to the last, where the tracker goes on from."""
    again = {}
    for j in range(len(head) - 2, -1, -1):
        lm = tracker(head[j])
        if lm is None:  # lost on the way back (the tracker starts from the detector again): keep the first results
            again = {}
            break
        again[j] = lm
    for j in range(1, len(head)):
        tracker(head[j])
    for j, lm in again.items():
        found[start + j] = lm


def _resize_max(rgb: np.ndarray, max_side: int) -> Tuple[np.ndarray, float]:
    """``rgb`` downscaled (area averaging) so its longer side is at most ``max_side``, and the scale applied."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return rgb, 1.0
    import cv2

    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


def find_face(rgb: np.ndarray, max_side: int = 720, tiles: Sequence[int] = (2, 3, 4),
              min_detection_confidence: float = 0.5) -> Optional[np.ndarray]:
    """Landmarks ``(K, 3)`` in the frame's pixels (``x``, ``y``; ``z`` in the units of ``x``) of a face anywhere in
    an RGB frame, or None.

    mediapipe's bundled detector is short-range: it finds faces that fill a good part of its input. The search
    looks at the whole frame first, then, for ``k`` in ``tiles``, at square tiles of side ``min(H, W) / k``
    overlapping by half (each downscaled to at most ``max_side``), in order: the first face found is returned, so
    a larger view wins over a tile.
    """
    h, w = rgb.shape[:2]
    with FaceTracker(min_detection_confidence, static=True) as tracker:
        views = [(0, 0, w, h)]
        for k in tiles:
            side = int(min(h, w) // k)
            if side < 32:
                break
            step = max(1, side // 2)
            xs = sorted(set(list(range(0, w - side + 1, step)) + [w - side]))
            ys = sorted(set(list(range(0, h - side + 1, step)) + [h - side]))
            views += [(x, y, side, side) for y in ys for x in xs]
        for x, y, vw, vh in views:
            img, _ = _resize_max(np.ascontiguousarray(rgb[y: y + vh, x: x + vw]), max_side)
            found = tracker(img)
            if found is not None:
                return (found * np.array([vw, vh, vw], np.float32) + np.array([x, y, 0], np.float32)).astype(np.float32)
    return None


class Segmenter(_Solution):
    """mediapipe selfie segmentation: the probability that each pixel shows the person (head, hair, torso)."""

    def __init__(self, model_selection: int = 0) -> None:
        if model_selection not in (0, 1):
            raise ValueError(f"segmentation model must be 0 (general) or 1 (landscape), got {model_selection}")
        mp = require_mediapipe()
        self._start(lambda: mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=int(model_selection)))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Person probability ``(H, W)`` float32 in [0, 1] of an RGB uint8 frame ``(H, W, 3)``."""
        return np.asarray(self._solution.process(np.ascontiguousarray(rgb)).segmentation_mask, dtype=np.float32)
