"""Writing the layout of ``DATASET.md``: frame images, frame records, ``transforms_<split>.json`` and
``landmarks.npz``.

The one place that knows how the writers of the layout (the procedural generator :mod:`fastminerf.data.synth`
and the video preparation :mod:`fastminerf.prepare`) put these files on disk; the soundtrack ``audio.wav`` is
written elsewhere, by :func:`fastminerf.audio.write_wav` (synth) and :func:`fastminerf.prepare.video.extract_audio`
(prepare). Files that mark progress are written atomically (a temporary file renamed over the target), so an
interrupted writer never leaves half a JSON file.
"""

from __future__ import annotations

import functools
import glob
import inspect
import itertools
import json
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .layout import LANDMARKS_FILE

__all__ = ["frame_record", "json_text", "write_json", "write_landmarks", "write_png", "write_transforms"]

PathLike = Union[str, Path]

_WRITES = itertools.count()
"""Numbers the temporary files of :func:`replaced_atomically` in this process (``next`` on it is atomic)."""


def write_id() -> str:
    """``<process id>-<n>``, a name part of one write's temporary file (:func:`replaced_atomically`, a render's
    part file) that no other write at the same time has, in this process or another."""
    return f"{os.getpid()}-{next(_WRITES)}"


@contextmanager
def replaced_atomically(path: PathLike, tmp_suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary name beside ``path`` (``<name>.<process>-<n><tmp_suffix>``: end it in ``.npz`` for
    ``np.savez``, which appends that suffix otherwise) for the caller to write; renamed over ``path`` when the block
    ends, removed when it raises (an interruption or a full disk leaves the earlier file whole and no temporary one).
    The name is this write's own (process id and a counter): two writers of ``path`` at once (two commands into one
    folder, two threads) each rename a whole file of their own, the last one staying."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{write_id()}{tmp_suffix}")
    try:
        with errors_naming(path, tmp):  # an open names the temporary file, a write that fails none: the user's file
            yield tmp
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    remove_killed_writes(path.parent, f"{path.name}.", tmp_suffix)


@contextmanager
def errors_naming(path: PathLike, *instead_of: PathLike) -> Iterator[None]:
    """An :class:`OSError` raised in the block that names no file (a write or a flush that fails: a full disk, whose
    ``ENOSPC`` Python reports without the file) or one of ``instead_of`` (a temporary file of the write) is raised
    naming ``path``, with its errno (so as the same subclass), e.g. "[Errno 28] No space left on device: 'RUN/log.jsonl'";
    one naming another file is left as it is."""
    try:
        yield
    except OSError as exc:
        if exc.errno is not None and (exc.filename is None or str(exc.filename) in {str(p) for p in instead_of}):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


STALE_WRITE_SECONDS = 60.0
"""A temporary file of a write (:func:`write_id`) untouched this long, of a process this machine does not run, is a
killed writer's (a process of another machine on a shared disk has a process id unknown here, and a live writer
keeps touching its file)."""


def remove_killed_writes(folder: Path, prefix: str, suffix: str) -> None:
    """Remove the temporary files ``folder/<prefix><process>-<n><suffix>`` (named by :func:`write_id`) that writers
    killed mid-write left (``kill -9``, a power cut: no ``except`` ran), one per kill under names of their own (a
    100 MB checkpoint, a render's part video): those of processes that no longer run, untouched for
    :data:`STALE_WRITE_SECONDS`. The write that has just replaced the same file calls it. So does the one fixed name
    versions before write_id used for every write (``<prefix without its last dot><suffix>``, e.g.
    ``checkpoint.pt.tmp``), which the next write overwrote then and nothing writes now: untouched as long, it is a
    killed writer's (one of such a version still at work keeps touching it).

    The folder is listed once a process (:func:`_left_in`; again after :data:`LEFT_FOLDERS` other folders were written
    to): a listing a write would cost a folder of 15,000 frames minutes. What killed writers of other processes leave
    meanwhile is the next process's to remove."""
    folder = Path(folder)
    left = _left_in(folder, suffix)
    older = f"{prefix[:-1]}{suffix}" if prefix.endswith(".") else None
    mine = [n for n in left if n == older or (n.startswith(prefix) and "-" in n[len(prefix):len(n) - len(suffix)])]
    now = time.time()
    for name in mine:
        pid = name[len(prefix):len(name) - len(suffix)].split("-")[0] if name != older else None
        try:
            if pid is not None and (not pid.isdigit() or _process_runs(int(pid))):
                continue
            if now - (folder / name).stat().st_mtime < STALE_WRITE_SECONDS:
                continue
            (folder / name).unlink()
        except OSError:  # gone meanwhile, or not ours to remove: left as it is
            pass
        left.discard(name)


LEFT_FOLDERS = 256
"""How many (folder, suffix) listings :func:`_left_in` keeps, those written to most recently: a long-lived process
(a service writing each request into a folder of its own) keeps no record of every folder it ever wrote to; one left
out is listed again at its next write."""

_LEFT: "OrderedDict[Tuple[Path, str], set]" = OrderedDict()
"""(folder, temporary suffix) -> the names ending in that suffix in the folder when this process first wrote there
(of the :data:`LEFT_FOLDERS` written to most recently)."""
_LEFT_LOCK = threading.Lock()


def _left_in(folder: Path, suffix: str) -> set:
    """The names in ``folder`` ending in ``suffix`` when this process first wrote there (listed then, once, while the
    folder is among the :data:`LEFT_FOLDERS` written to most recently)."""
    key = (folder, suffix)
    with _LEFT_LOCK:
        if key in _LEFT:
            _LEFT.move_to_end(key)
            return _LEFT[key]
    try:
        listed = {p.name for p in folder.glob(f"*{glob.escape(suffix)}")}
    except OSError:
        listed = set()
    with _LEFT_LOCK:
        left = _LEFT.setdefault(key, listed)  # another thread's listing, if it listed the folder meanwhile
        _LEFT.move_to_end(key)
        while len(_LEFT) > LEFT_FOLDERS:
            _LEFT.popitem(last=False)
    return left


def _process_runs(pid: int) -> bool:
    if os.name == "nt":  # os.kill there ends the process: nothing is known, nothing removed
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process (or a platform that cannot tell): taken as running
        return True
    return True


def check_folder(folder: PathLike, what: str, error: Callable[[str], BaseException] = ValueError) -> Path:
    """Refuse an output ``folder`` that is a file, cannot be made or cannot be written, raising ``error`` naming it and
    ``what`` it is for: for a caller to call before any work, where ``mkdir`` or the first write would fail in Python's
    words ('[Errno 17] File exists', '[Errno 13] Permission denied: X') once the work was done or begun. Checked
    without making it (a call refused later, e.g. for an unknown identity, leaves no empty folder behind): it, or the
    nearest folder above it that exists, must be a folder that can be written (a shared, read-only one is refused,
    and so is one on a read-only disk). Returns it as a path."""
    folder = Path(folder)
    for there in (folder, *folder.parents):
        if there.exists():
            if not there.is_dir():
                raise error(f"{there} is a file: give a folder for {what}")
            if not os.access(there, os.W_OK | os.X_OK):
                raise error(f"{folder}: cannot write {what} there ({there} cannot be written)" if there == folder
                            else f"{folder}: cannot make the folder for {what} ({there} cannot be written)")
            break
    return folder


LOCK_NAME = ".lock"
"""The file in a folder that a writer holds while it writes the folder (:func:`folder_locked`)."""


def make_folder(folder: PathLike) -> List[Path]:
    """Make ``folder`` and the folders above it that are missing; returns those this made, deepest first (for
    :func:`remove_if_unused`).

    A folder above it removed while they are made (a refused call's :func:`remove_if_unused` of the folders it made)
    is made again, at most three tries; then FileNotFoundError naming ``folder``."""
    folder = Path(folder)
    made: List[Path] = []
    for _ in range(3):
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        made = max(made, missing, key=len)  # made by an earlier try and still there: this call's too
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return made
        except FileNotFoundError as exc:
            why = exc.strerror or str(exc)
    raise FileNotFoundError(f"cannot make {folder}: a folder above it was removed while it was made, three times "
                            f"(another call removing the folders it made?): {why}")


def remove_if_unused(made: Sequence[Path], leftovers: Sequence[str] = (LOCK_NAME,)) -> None:
    """Remove the folders ``made`` (:func:`make_folder`, deepest first) that hold nothing but files named in
    ``leftovers`` (the lock, a log nothing was written to), stopping at the first that holds more: a call refused
    after it made its output folder (a --data path that does not exist) leaves no empty folder behind."""
    for folder in made:
        try:
            names = os.listdir(folder)
            if any(n not in leftovers or not (folder / n).is_file() for n in names):
                return
            for n in names:
                (folder / n).unlink()
            folder.rmdir()
        except OSError:  # another writer's file appeared in it, or it cannot be removed: kept
            return


@contextmanager
def made_folder(folder: PathLike, leftovers: Sequence[str] = (LOCK_NAME,)) -> Iterator[Path]:
    """Make ``folder`` (and the folders above it) for the block; when the block ends, those it made that hold nothing
    but ``leftovers`` are removed (:func:`remove_if_unused`)."""
    made = make_folder(folder)
    try:
        yield Path(folder)
    finally:
        remove_if_unused(made, leftovers)


@contextmanager
def folder_locked(folder: PathLike, busy: Callable[[str], BaseException], make: bool = False) -> Iterator[None]:
    """Hold ``folder/.lock`` (an exclusive ``flock``, released by the system when the process ends however it ends:
    a file left behind by a killed writer blocks nothing) while the block runs, with this process's id in it.
    When another writer holds it, raises ``busy(holder)``, ``holder`` being ' (process <id>)' or '' when the file
    names none. No lock where ``fcntl`` is missing (Windows), the filesystem has none (some network ones: ENOLCK,
    EOPNOTSUPP) or the lock file cannot be made (a read-only folder): the block runs unguarded.

    With ``make``, the folder (and those above it) is made first, and when the block ends with nothing in it but the
    lock (the call was refused before it wrote: a --data path that does not exist), the lock file and the folders
    made are removed, the lock still held (another writer that opened the file is refused as ever; one that comes
    after makes its own). So is a lock file this call made in a folder that was there, when the block ends with
    nothing in the folder it did not hold before (a refused call into an existing --out folder). A writer that won
    the lock on a file removed so (opened just before) lets it go and takes the file now at its place; with
    ``make``, one whose folder was removed so makes it again."""
    made = make_folder(folder) if make else []
    lock = Path(folder) / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None
    f, created, before = None, False, None
    for attempt in range(3) if fcntl is not None else ():
        try:
            f, created = _open_lock(lock)
        except FileNotFoundError:  # a refused writer that made the folder removed it (after this one found it)
            f = None
            if not make or attempt == 2:
                break
            made = max(made, make_folder(folder), key=len)  # both the folders missing from it up, deepest first
            continue
        except OSError:  # no lock file can be made (a read-only folder, whose rerun may have nothing to write)
            f = None
            break
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            f.close()
            raise busy(f" (process {pid})" if pid else "") from None
        except OSError:  # a filesystem without locks: unguarded (a lock file made for it guards nothing: removed)
            f.close()
            f = None
            if created:
                with suppress(OSError):
                    lock.unlink()
            break
        if _same_file(f, lock) or attempt == 2:  # (a filesystem whose file numbers do not hold: the last one kept)
            break
        f.close()  # a refused writer removed the file after this one opened it: lock the one there now
        f = None
    if f is not None and (created or made):  # (a lock file in a folder this call made is its own to remove)
        before = _names_besides_lock(folder)
    if f is not None:
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
    try:
        yield
    finally:
        if before is not None and _names_besides_lock(folder) == before and _same_file(f, lock):
            with suppress(OSError):  # still held: removed as the made folders' lock is
                lock.unlink()
        remove_if_unused(made, leftovers=())  # its own lock is gone: one there now is a writer's that came after
        if f is not None:
            f.close()


def _open_lock(lock: Path):
    """The lock file ``lock`` opened to read and append, and whether this call made it."""
    try:
        return os.fdopen(os.open(lock, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o666), "a+"), True
    except FileExistsError:
        return open(lock, "a+"), False


def _same_file(f, path: Path) -> bool:
    """Whether the open file ``f`` is the one at ``path`` now (not one removed, or replaced, since it was opened)."""
    try:
        there, held = os.stat(path), os.fstat(f.fileno())
    except OSError:
        return False
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)


def _names_besides_lock(folder: PathLike) -> Optional[set]:
    """The names in ``folder`` but its lock file (None when it cannot be listed)."""
    try:
        return set(os.listdir(folder)) - {LOCK_NAME}
    except OSError:
        return None


def folder_writer(folder: PathLike) -> Optional[int]:
    """The process id of the writer that holds ``folder/.lock`` (:func:`folder_locked`) now, None when none does (or
    it cannot be told: no ``fcntl``, no lock file). Looked at without standing in a writer's way: only when the file
    names a process that runs (each writer writes its id there; a writer starting now finds the last, ended one's) is
    the lock tried, shared and non-blocking, and let go at once; a writer starting in that instant would be refused
    by the live process named anyway."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    path = Path(folder) / LOCK_NAME
    try:
        with open(path) as f:
            pid = f.read().strip()
            if not pid.isdigit() or not _process_runs(int(pid)):
                return None
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return int(pid)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError:  # no lock file, or a filesystem without locks
        return None
    return None


@contextmanager
def noting_interrupt(note: Callable[[], str]) -> Iterator[None]:
    """A KeyboardInterrupt (Ctrl-C; the command's SIGTERM) leaving the block says ``note()`` (what the stopped writer
    leaves, worked out when it stops), for the command to print after 'interrupted'."""
    try:
        yield
    except KeyboardInterrupt as exc:
        exc.args = (note(),)
        raise


def noted_on_interrupt(note: str) -> Callable:
    """Decorate a long writer so that a KeyboardInterrupt (Ctrl-C; the command's SIGTERM) leaving it says what a rerun
    does (``note``, formatted with the call's arguments by name), for the command to print after 'interrupted'."""
    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with noting_interrupt(lambda: note.format(**signature.bind(*args, **kwargs).arguments)):
                return fn(*args, **kwargs)
        return wrapper
    return decorate


def write_png(path: PathLike, img: np.ndarray, level: int = 1) -> None:
    """Write a uint8 image ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` as PNG with zlib ``level`` (0-9: low is
    fast; the pixels are the same at every level), atomically: a stopped write leaves no image cut short under
    ``path``."""
    import imageio.v3 as iio

    with replaced_atomically(path) as tmp:
        iio.imwrite(tmp, np.ascontiguousarray(img), plugin="pillow", extension=".png", compress_level=level)


def _finite(data: object) -> object:
    """``data`` with every float that is not finite (NaN, +-inf) replaced by None, and numpy scalars and arrays as
    the Python numbers and lists they hold (``json`` refuses ``np.float32``, ``np.int64``, ``np.bool_``)."""
    if isinstance(data, (np.generic, np.ndarray)):
        data = data.tolist()
    if isinstance(data, float):
        return data if np.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def json_text(data: object, indent: Optional[int] = None) -> str:
    """``data`` as strict JSON: floats that are not finite as ``null``. Python's ``json`` writes them as ``NaN`` /
    ``Infinity``, which strict JSON readers (jq, JavaScript, most other languages) refuse."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False)


def write_json(path: PathLike, data: object, indent: Optional[int] = 1) -> Path:
    """Write ``data`` as JSON atomically: to a temporary file beside it, then renamed over ``path``; floats that are not finite
    as ``null`` (:func:`json_text`)."""
    path = Path(path)
    with replaced_atomically(path) as tmp:
        tmp.write_text(json_text(data, indent))
    return path


def write_landmarks(folder: PathLike, frame_index: np.ndarray, points: np.ndarray, visible: np.ndarray) -> Path:
    """Write an identity's ``landmarks.npz`` (see :class:`fastminerf.data.layout.Landmarks`) atomically."""
    path = Path(folder) / LANDMARKS_FILE
    with replaced_atomically(path, ".tmp.npz") as tmp:
        np.savez(tmp, frame_index=np.asarray(frame_index, dtype=np.int64), points=np.asarray(points, dtype=np.float32),
                 visible=np.asarray(visible, dtype=bool))
    return path


def frame_record(
    file_path: str,
    transform_matrix: np.ndarray,
    expression: Sequence[float],
    *,
    mask_path: Optional[str] = None,
    bbox: Optional[Sequence[float]] = None,
    frame_index: Optional[int] = None,
    time: Optional[float] = None,
) -> Dict[str, object]:
    """One entry of a transforms file's ``frames`` list (keys of ``DATASET.md``; optional keys only when given).

    ``float(np.float32)`` is exact, so reading the JSON back gives the very float32 values written."""
    rec: Dict[str, object] = {"file_path": file_path}
    if mask_path is not None:
        rec["mask_path"] = mask_path
    rec["transform_matrix"] = [[float(v) for v in row] for row in np.asarray(transform_matrix)]
    rec["expression"] = [float(v) for v in expression]
    if bbox is not None:
        rec["bbox"] = [float(v) for v in bbox]
    if frame_index is not None:
        rec["frame_index"] = int(frame_index)
    if time is not None:
        rec["time"] = float(time)
    return rec


def write_transforms(
    identity_dir: PathLike,
    split: str,
    frames: Sequence[Dict[str, object]],
    *,
    intrinsics: Sequence[float],
    width: int,
    height: int,
    aabb: Optional[Sequence[float]] = None,
    near: Optional[float] = None,
    far: Optional[float] = None,
    expression_names: Optional[Sequence[str]] = None,
    fps: Optional[float] = None,
    background: Optional[str] = None,
    expression_space: Optional[str] = None,
) -> Path:
    """Write ``identity_dir/transforms_<split>.json`` atomically (camera keys first, then ``frames``).

    ``camera_angle_x`` is written beside ``intrinsics`` for readers that only know NeRF's key; ``near`` and
    ``far`` go together (one alone is refused: it used to be dropped without a word)."""
    import math

    if (near is None) != (far is None):
        raise ValueError(f"near and far are written together, got near={near}, far={far}")

    fx = float(intrinsics[0])
    meta: Dict[str, object] = {
        "camera_angle_x": 2.0 * math.atan(0.5 * width / fx),
        "intrinsics": [float(v) for v in intrinsics],
        "w": int(width),
        "h": int(height),
    }
    if near is not None and far is not None:
        meta["near"] = float(near)
        meta["far"] = float(far)
    if aabb is not None:
        meta["aabb"] = [float(v) for v in aabb]
    if background is not None:
        meta["background"] = background
    if expression_names is not None:
        meta["expression_names"] = list(expression_names)
    if expression_space is not None:
        meta["expression_space"] = str(expression_space)
    if fps is not None:
        meta["fps"] = float(fps)
    meta["frames"] = list(frames)
    return write_json(Path(identity_dir) / f"transforms_{split}.json", meta)
