"""Generic training on many identities, personalisation to new ones, checkpoints and resume.

A run folder holds::

    RUN/config.yaml     the full config (every field), written when the run starts
    RUN/checkpoint.pt   the latest state, written atomically (temp file + os.replace) every
                        ``train.checkpoint_every`` steps / ``train.checkpoint_seconds`` seconds and at the end
    RUN/log.jsonl       one JSON object per logging step: step, seconds, loss, psnr, rays_per_s, samples_per_ray,
                        phase (train; a personalisation's codes then all) and occupied (the occupancy grid's fraction);
                        empty for a run that took no step (a time limit spent in the setup)
    RUN/curve.png       the loss and training PSNR against the step, drawn from the log at the end of a session
                        (:func:`write_curve`)
    RUN/.lock           locked while a training or personalisation writes the folder: a second one into the same
                        folder is refused (CheckpointError) instead of interleaving its log and checkpoints with it

A checkpoint holds only tensors and plain data (model and optimizer state dicts, step, training seconds, the ray
sampler's, occupancy generator's and torch global generator's states, the weight average when ``train.ema_decay``
keeps one, the steps taken since the last log line (their training MSEs, for the next line's PSNR), the config as
YAML text, identity names, expression size, the data paths (absolute, and relative to the run folder), a fingerprint of each training frame and of its files, each frame's size) and is read
with ``torch.load(..., weights_only=True)``: loading never runs pickled code. A corrupt, truncated or mismatched checkpoint raises :class:`CheckpointError`
naming the file.

Resume: calling :func:`train` again with the same ``out_dir`` (and the same data and config, except the keys of
:data:`RESUME_MAY_CHANGE`: ``train.steps``, ``train.max_seconds``, intervals, threads, device, backends, frame
cache) continues from the checkpoint's step. **Guaranteed**:
the model, optimizer, weight-average, ray-sampler, occupancy-generator and global-generator states are those of the
checkpoint, so on the CPU (whose kernels are deterministic: no atomics) a run resumed from step k on as many threads
takes exactly the same steps as an uninterrupted one, and ends with bit-identical parameters (tested); on another
thread count the hash grid's table gradient sums its per-thread copies in other groups, which changes the last bits.
Steps taken after the last checkpoint are lost and redone (their log lines are dropped). A run limited by
``max_seconds`` stops at a step that depends on the machine's speed; training seconds are summed over resumed
sessions.

Shapes: N rays per batch, B training frames, I identities, E expression size.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import math
import os
import pickle
import threading
import time
import unicodedata
import zipfile
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PureWindowsPath
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import _native
from . import backend as _backend
from .config import PATH_TAKEN, PATH_TYPES, ModelConfig, RunConfig, a_run_config, as_list, as_paths, check_device, dump_config, identity_list, name_position, needs, parse_config_text, some_of
from .data import MultiIdentityDataset, RayBatch, RaySampler, landmark_rays, load_dataset
from .data.dataset import a_dataset, check_expression_space
from .data.layout import IDENTITY_PATHS, DatasetError
from .data.rays import check_error_resolution
from .data.writer import check_folder, errors_naming, folder_locked, folder_writer, json_text, replaced_atomically
from .model import MINeRF, training_torch_state

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "TrainResult",
    "TrainingDiverged",
    "build_model",
    "build_optimizer",
    "load_checkpoint",
    "load_run",
    "lr_factor",
    "personalize",
    "personalize_config",
    "save_checkpoint",
    "save_run",
    "train",
    "write_curve",
]

PathLike = Union[str, Path]
ProgressFn = Callable[[Dict[str, float]], None]
MonitorFn = Callable[[MINeRF, Dict[str, float]], bool]

CHECKPOINT_NAME = "checkpoint.pt"

RUN_PATH = "a run folder or its checkpoint.pt (str or pathlib.Path)"
"""What :func:`load_run` and :func:`personalize` take as a run, for their TypeError (:func:`~fastminerf.config.needs`)."""
RUN_OUT = f"the run folder to write {PATH_TAKEN}"
"""What :func:`train`, :func:`personalize` and :func:`save_run` take as ``out_dir``, for their TypeError."""
A_MODEL = "a model (fastminerf.build_model(cfg, dataset) or fastminerf.load_run(RUN)[1])"
"""What :func:`build_optimizer` and :func:`save_run` take as ``model``, for their TypeError."""

CONFIG_NAME = "config.yaml"
LOG_NAME = "log.jsonl"
CURVE_NAME = "curve.png"
FORMAT = "fastminerf-checkpoint"
FORMAT_VERSION = 1

OCCUPANCY_POOL = 256
"""Training frames whose conditioning an occupancy update draws from (a fresh random subset each update)."""

RESUME_MAY_CHANGE = ("train.steps", "train.max_seconds", "train.log_every", "train.checkpoint_every",
                     "train.checkpoint_seconds", "train.threads", "train.device", "model.field.backend",
                     "model.grid_backend", "data.cache_frames", "data.cache_bytes", "train.personalize_steps",
                     "train.personalize_code_fraction", "train.personalize_tune", "train.personalize_lr_factor")
"""Config keys that may differ between a generic run and its resumption (they do not change its computation, except
``train.steps`` the learning-rate schedule and ``train.threads`` the rounding of the hash grid's summed gradients: the
``personalize_*`` ones act only in :func:`personalize`). The backends compute the same functions on the same weights
(:func:`_anywhere`): a run trained with ``tcnn`` / ``nerfacc`` on a GPU continues with ``auto`` or ``native`` where
they cannot run."""

PERSONALIZE_RESUME_MAY_CHANGE = tuple(k for k in RESUME_MAY_CHANGE if k not in (
    "train.personalize_code_fraction", "train.personalize_tune", "train.personalize_lr_factor"))
"""The same for a personalisation, whose phases, tuned weights and learning rate those three keys set."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read, is not a fastminerf checkpoint, or does not match what it is loaded into."""


class TrainingDiverged(ValueError):
    """Training turned non-finite: a step's loss, or the weights a checkpoint was about to hold, are NaN or infinite.
    Raised before any checkpoint holds them, so the run folder keeps its last finite checkpoint (a rerun resumes from
    it). The message names the step, and the frame and key of the data when a ray of the step carries a non-finite
    value, else the learning rates.

    Attributes:
        step: the step (counted from 1, as the log's ``step``) whose loss, or whose weights, were not finite.
    """

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = int(step)


@dataclass
class TrainResult:
    """What :func:`train` and :func:`personalize` return."""

    out_dir: Path
    """The run folder."""
    step: int
    """Steps taken in all (including those of resumed sessions)."""
    seconds: float
    """Training seconds in all."""
    loss: float
    """Loss of the last step."""
    psnr: float
    """PSNR (dB) of the last logging window's mean MSE on the training rays (those not drawn from the error map,
    ``sampler.error_fraction``, nor the mouth and eye boxes, ``sampler.mouth_fraction`` / ``eye_fraction``): rays as the
    sampler draws them, ``sampler.face_fraction`` of them inside the face box, so not the whole-frame PSNR that
    :func:`fastminerf.render.evaluate` gives the same frames (a mean of per-frame dB)."""
    resumed_from: int
    """Step the session started from (0 for a fresh run)."""
    model: MINeRF = field(repr=False)
    """The trained model (left out of the repr, which a notebook shows: its module tree is a screenful)."""
    curve: Optional[Path] = None
    """``RUN/curve.png``, the log's loss and PSNR curves (:func:`write_curve`; a run that took no step has an empty
    log, and a picture that says nothing was logged)."""
    notes: Tuple[str, ...] = ()
    """What the user should know about the data trained on (e.g. identities taken into the others' expression space
    unchecked), one sentence each; the CLI prints them."""


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: PathLike, payload: dict, what: str = "checkpoint") -> Path:
    """Write ``payload`` (tensors and plain data only) to ``path`` atomically: a temp file, flushed to the disk
    (without it a crash of the machine soon after the rename can leave an empty file under the name), then
    ``os.replace``. A write that fails raises an ``OSError`` naming ``what`` and the file."""
    path = Path(path)
    try:  # a half-written file goes (on a full disk it holds what the next save needs)
        with replaced_atomically(path) as tmp, open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        interrupt = exc.__context__
        if isinstance(exc, Exception) and isinstance(interrupt, BaseException) and not isinstance(interrupt, Exception):
            # Ctrl-C (or a SystemExit) inside torch.save leaves its zip writer half way, and closing it then fails
            # ('unexpected pos ...'): the interrupt is what happened, not a disk error
            raise interrupt from None
        if isinstance(exc, (OSError, RuntimeError)):  # torch reports a write that ran out of space as a RuntimeError
            kept = f"; {path} is kept as it was" if path.exists() else ""
            code = getattr(exc, "errno", None)
            full = " (is the disk full?)" if code in (None, errno.ENOSPC) else ""  # not for a folder or a read-only one
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc  # the file is named here
            raise OSError(code or errno.EIO, f"cannot write the {what} {path}{full}: {why}{kept}") from exc
        raise
    return path


def _damaged_member(path: Path) -> Optional[str]:
    """The first member of a torch zip file whose bytes do not match the CRC-32 its header stores (torch.load does not
    check them: a flipped byte in the weights loads as a wrong number), or None. Files that are no zip archive (or too
    broken to open as one) are left to torch.load, which names what is wrong with them."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return None


def read_plain_file(path: PathLike, fmt: str, version: int, required: Sequence[str], what: str, error: type,
                    older: Sequence[int] = ()) -> dict:
    """Read a dict of tensors and plain data written by :func:`save_checkpoint` with ``weights_only=True`` (no
    pickled code runs) and check its ``format``, ``version`` (or one of the ``older`` versions the caller converts)
    and ``required`` keys.

    Raises:
        error: (called with one message) naming ``what`` and the file when it is missing, unreadable, corrupt, of
            another format or version, or lacks a key.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    damaged = _damaged_member(path)
    if damaged is not None:
        raise error(f"cannot read {what} {path} (damaged since it was written: the bytes of {damaged} do not match "
                    f"their stored CRC-32)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's six lines advise weights_only=False (running the file's code)
        raise error(f"cannot read {what} {path} (corrupt or not a {what}): not a torch file of tensors and plain "
                    "data") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        reason = " ".join(str(exc).split())  # one line
        raise error(f"cannot read {what} {path} (corrupt or not a {what}): {type(exc).__name__}: {reason}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{path} is not a fastminerf {what}")
    found = data.get("version")
    if isinstance(found, int) and found > version:  # a later fastminerf's: only updating this one reads it
        raise error(f"{what} {path} was written by a newer fastminerf (format version {found}; this one reads "
                    f"{version}): update fastminerf to read it")
    if found != version and found not in older:
        raise error(f"{what} {path} has format version {found}, this fastminerf reads {version}")
    missing = [k for k in required if k not in data]
    if missing:
        raise error(f"{what} {path} lacks {missing}")
    return data


def load_checkpoint(path: PathLike) -> dict:
    """Read a checkpoint with ``weights_only=True``; raises :class:`CheckpointError` naming the file when it
    is missing, unreadable, corrupt or not a fastminerf checkpoint, or a folder (a run folder: :func:`load_run` takes
    those)."""
    needs(path, PATH_TYPES, "path", f"a checkpoint file {PATH_TAKEN}")
    if Path(path).is_dir():  # the run folder, as load_run takes it, instead of RUN/checkpoint.pt
        inner = Path(path) / CHECKPOINT_NAME
        raise CheckpointError(f"checkpoint {path} is a folder" + (
            f": give the checkpoint file in it ({inner}), or load_run({str(path)!r}) for the run" if inner.is_file()
            else ", not a checkpoint file"))
    return read_plain_file(path, FORMAT, FORMAT_VERSION, ("config_yaml", "identity_names", "expression_dim", "model", "step"),
                           "checkpoint", CheckpointError)


def _anywhere(model_cfg):
    """``model_cfg`` with ``auto`` for the backends that run only on CUDA (``tcnn``, ``nerfacc``): tiny-cuda-nn's
    HashGrid and nerfacc's marcher compute the native functions on the same parameters and bitfield, so a model
    trained through them runs native on the CPU, and ``auto`` picks them again on a GPU where installed."""
    field = model_cfg.field
    return replace(model_cfg, grid_backend="auto" if model_cfg.grid_backend == "nerfacc" else model_cfg.grid_backend,
                   field=replace(field, backend="auto" if field.backend == "tcnn" else field.backend))


def _model_from_checkpoint(data: dict, path: Path, anywhere: bool = False,
                           backends: Optional[ModelConfig] = None) -> Tuple[RunConfig, MINeRF]:
    """The run's config and its model (on the CPU); ``anywhere``: the model runs on any device (:func:`_anywhere`);
    ``backends``: a model config whose backends the model computes with instead (a resume's, which may change them:
    the same functions on the same weights). The config returned stays the one the run was trained with."""
    try:
        cfg = parse_config_text(data["config_yaml"])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: bad config: {exc}") from None
    state = data["model"]
    if "frame_identity" not in state or "aabb" not in state:
        raise CheckpointError(f"checkpoint {path}: the model state lacks frame_identity / aabb")
    space = data.get("expression_space")
    try:
        model_cfg = _anywhere(cfg.model) if anywhere else cfg.model
        if backends is not None:
            model_cfg = replace(model_cfg, grid_backend=backends.grid_backend,
                                field=replace(model_cfg.field, backend=backends.field.backend))
        with torch.random.fork_rng(devices=[]):  # initial weights, replaced by the state's: the caller's stream stays
            model = MINeRF(model_cfg, int(data["expression_dim"]),
                           list(data["identity_names"]), state["frame_identity"],
                           aabb=state["aabb"].tolist(), expression_space=str(space) if space is not None else None)
    except (TypeError, ValueError, AttributeError) as exc:  # values of another type or shape than save_checkpoint's
        raise CheckpointError(f"checkpoint {path}: bad model description: {exc}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # torch's message spans lines: one size mismatch or missing key a line
        raise CheckpointError(f"checkpoint {path} does not match its config: {' '.join(str(exc).split())}") from None
    return cfg, model


def _resumable(data: dict) -> bool:
    """Whether a checkpoint holds the training state :func:`train` continues from (a run of :func:`train` or
    :func:`personalize`), not a model :func:`save_run` wrote (it says so: a checkpoint of an older version that lacks
    a part of that state is refused as such where it is read)."""
    return bool(data.get("training_state", True))  # save_run writes False; train's and personalize's have it


def _non_finite_parameter(model: MINeRF) -> Optional[str]:
    """The name of the first parameter of ``model`` that holds NaN or infinity, or None."""
    return next((name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)


def _refuse_non_finite(model: MINeRF, path: Path) -> None:
    """:class:`CheckpointError` naming the file and the parameter when a checkpoint to train on holds non-finite
    weights (a run that diverged, saved before :class:`TrainingDiverged` stopped such runs): training on them goes
    nowhere, and was refused only at its next checkpoint as if that had diverged."""
    bad = _non_finite_parameter(model)
    if bad is not None:
        raise CheckpointError(f"{path} holds NaN or infinite weights ({bad}): the run diverged before it was saved; "
                              "train again into another folder, with a lower train.lr")


def load_run(run_dir: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[RunConfig, MINeRF, dict]:
    """Load a trained run: ``(config, model in eval mode, metadata)``. The model is on ``device`` ("cpu" by default;
    "auto", "cuda", "cuda:K" or a ``torch.device``, as ``train.device`` takes them, :func:`resolve_device`: one that
    cannot run here is refused before the checkpoint is read, a backend of the run that cannot run there before the
    model is moved there) and runs on any device: a run trained with the CUDA-only backends ``tcnn`` / ``nerfacc``
    loads with ``auto`` in their place (the same functions; the config returned is still the one the run was trained
    with).
    :func:`fastminerf.render.render_frame`, :func:`~fastminerf.render.evaluate` and the other renders render where the
    model is and give their results on the CPU.

    The metadata dict holds ``identity_names`` (I,), ``expression_dim`` E, ``expression_space`` (of the training
    data, None when unknown), ``data_paths`` (the folders it was
    trained on, absolute), ``data_relative`` (the same relative to the run folder, tried where the absolute ones are
    gone, :func:`run_data_folders`; None in older runs), ``step``, ``seconds``, ``kind`` ("train" or "personalize"),
    ``refined`` (the identities a personalisation fine-tuned, else empty), ``added`` (the new identities a
    personalisation added, else empty), ``frame_keys`` ((B,) fingerprints of the training frames, :func:`frame_keys`;
    None in older runs), ``frame_files`` ((B, 3) fingerprints of their image, mask and background files,
    :func:`frame_files`; None in older runs), ``frame_sizes`` ((B, 2) width and height of each training frame,
    :func:`frame_sizes`; None in older runs), ``backends`` (what computed each part of the model where it last
    trained, ``{device: {part: implementation}}`` of :meth:`MINeRF.backends`; None in older runs), ``generic_run``
    (the run a personalisation started from, where it is now when it moved together with this one; else None),
    ``frame_identity`` (B,), ``phase`` (the phase a personalisation's checkpoint was written in: ``codes`` or
    ``all``; else None), ``resumable`` (False for a model :func:`save_run` wrote, which holds no training state for
    :func:`train` to continue) and ``checkpoint`` (the file).
    """
    where = resolve_device(device, "device")  # before the checkpoint is read
    run = Path(needs(run_dir, (str, os.PathLike), "run_dir", RUN_PATH))
    path = _run_checkpoint(run)
    if run.is_dir() and not path.exists() and (run / CONFIG_NAME).is_file():  # a run folder, not a typo's
        writer = folder_writer(run)
        raise CheckpointError(f"run folder {run} holds no checkpoint yet: a training (process {writer}) writes it now, "
                              "before its first checkpoint" if writer else
                              f"run folder {run} holds no checkpoint: its training stopped before it wrote one (rerun "
                              "the train or personalize command that made it: it starts again)")
    data = load_checkpoint(path)
    cfg, model = _model_from_checkpoint(data, path, anywhere=True)  # loaded on the CPU: tcnn / nerfacc cannot run there
    if where.type != "cpu":  # e.g. native asked for, on a GPU the extension has no kernels for (info reads any run)
        try:
            _check_backends(replace(cfg, model=_anywhere(cfg.model)), where)
        except ValueError as exc:  # train's advice (rebuild, or another backend) is not a render's: the CPU runs it
            raise ValueError(f"{exc}; or load the run on the CPU (device='cpu'; render, eval: --device cpu)") from None
    if data.get("ema") is not None:  # the run kept a weight average (train.ema_decay): it is the trained model
        try:
            average = WeightAverage(model, cfg.train.ema_decay)
            average.load_state_dict(data["ema"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path}: bad weight average: {exc}") from None
        average.copy_to(model)
    model.eval()
    model.to(where)
    meta = dict(
        identity_names=list(model.identity_names),
        expression_dim=model.expression_dim,
        expression_space=model.expression_space,
        data_paths=list(data.get("data_paths", [])),
        data_relative=data.get("data_relative"),
        step=int(data["step"]),
        seconds=float(data.get("seconds", 0.0)),
        kind=str(data.get("kind", "train")),
        refined=[str(n) for n in data.get("refined", [])],
        added=[str(n) for n in data.get("added", [])],
        generic_run=_moved_with(data.get("generic_run"), data.get("generic_run_relative"), path.parent),
        frame_identity=model.frame_identity.clone(),
        frame_keys=data.get("frame_keys"),
        frame_files=data.get("frame_files"),
        frame_sizes=data.get("frame_sizes"),
        backends=data.get("backends"),
        phase=data.get("phase"),
        resumable=_resumable(data),
        checkpoint=path,
    )
    return cfg, model, meta


def _run_checkpoint(run: Path) -> Path:
    """The checkpoint of ``run``, a run folder (or a name without a suffix) or the checkpoint file itself."""
    return run / CHECKPOINT_NAME if run.is_dir() or not run.suffix else run


def run_config(run_dir: PathLike) -> RunConfig:
    """The config of a run, as :func:`load_run` gives it, without building its model or reading its weights: the
    checkpoint is mapped (``torch.load``'s ``mmap``), not read, so a caller that needs only the settings (``fastminerf
    personalize``, to check its own before its progress bar) does not read a run of hundreds of MB twice (0.75 s a
    read for a run of the gpu preset). A checkpoint this cannot take is left to :func:`load_run`, whose error it
    raises."""
    try:
        data = torch.load(_run_checkpoint(Path(run_dir)), map_location="cpu", weights_only=True, mmap=True)
        if isinstance(data, dict) and data.get("format") == FORMAT and data.get("version") == FORMAT_VERSION:
            return parse_config_text(data["config_yaml"])
    except Exception:  # noqa: BLE001 - load_run says what is wrong with it
        pass
    return load_run(run_dir)[0]


def _model_record(kind: str, cfg: RunConfig, model: MINeRF, out: Path, data_paths: Sequence[PathLike],
                  keys: Optional[torch.Tensor], files: Optional[torch.Tensor], sizes: Optional[torch.Tensor],
                  backends: dict) -> dict:
    """What every checkpoint of a run holds besides a training state (:func:`train`'s, :func:`personalize`'s and
    :func:`save_run`'s, which :func:`load_run` reads): the format, the config, the model and its identities, the data
    folders (absolute and relative to the run folder ``out``), the training frames' fingerprints and sizes, and what
    computed each part of the model (:meth:`MINeRF.backends`)."""
    return dict(format=FORMAT, version=FORMAT_VERSION, kind=kind, config_yaml=dump_config(cfg),
                identity_names=list(model.identity_names), expression_dim=model.expression_dim,
                expression_space=model.expression_space, data_paths=_where(data_paths),
                data_relative=_relative(data_paths, out), frame_keys=keys, frame_files=files, frame_sizes=sizes,
                backends=backends, model=model.state_dict())


def save_run(out_dir: PathLike, cfg: RunConfig, model: MINeRF, step: int = 0,
             dataset: Optional[MultiIdentityDataset] = None) -> Path:
    """Save a model trained by a loop of your own as a run folder that :func:`load_run` reads (and so ``render``,
    ``eval``, ``info`` and :func:`personalize`): ``out_dir/checkpoint.pt`` (written atomically by
    :func:`save_checkpoint`) and ``out_dir/config.yaml``, with what computed each part of the model on the device it
    is on (``backends`` of :func:`load_run`'s metadata, as :func:`train` records). Returns the checkpoint's path.

    Args:
        cfg: the config the model was built with (:func:`build_model`).
        step: the steps it was trained for (``step`` of :func:`load_run`'s metadata).
        dataset: the data it was trained on, whose ``train`` split has one frame per frame code: the run records its
            identity folders (absolute and relative to ``out_dir``) and its frames' fingerprints and sizes
            (:func:`frame_keys`, :func:`frame_files`, :func:`frame_sizes`), as a run of
            :func:`train` does, so that render finds the data and personalize fine-tunes its people only on those
            frames. None: no data is recorded.

    The checkpoint holds the model only (no optimizer, sampler or generator state): :func:`train` does not resume it.
    :func:`load_run` builds the model from ``cfg``; one with a module the config does not describe (a conditioning of
    your own in ``model.field.conditioning``) is refused there as not matching its config: load its weights with
    ``model.load_state_dict(load_checkpoint(path)["model"])`` into a model built as yours was.

    Raises:
        ValueError: ``dataset`` has other identities than the model, or another number of training frames than it
            has frame codes.
        OSError: the file cannot be written (naming it).
    """
    a_run_config(cfg)
    out = Path(needs(out_dir, PATH_TYPES, "out_dir", RUN_OUT))
    needs(model, MINeRF, "model", A_MODEL)
    keys = files = sizes = None
    if dataset is not None:
        n = a_dataset(dataset, "dataset").num_frames("train")
        if dataset.identities != model.identity_names or n != model.frame_identity.numel():
            raise ValueError(f"the dataset has identities {dataset.identities} and {n} training frames, the model "
                             f"{model.identity_names} and {model.frame_identity.numel()} frame codes: give the data the "
                             "model was built from (build_model)")
        keys, files, sizes = frame_keys(dataset), frame_files(dataset), frame_sizes(dataset)
    dirs = dataset.identity_dirs if dataset is not None else []
    device = model.identity_codes.weight.device  # where it trained: what computed each part there (info), as train's
    out.mkdir(parents=True, exist_ok=True)
    _write_config(out, cfg)
    record = _model_record("train", cfg, model, out, dirs, keys, files, sizes, {str(device): model.backends(device)})
    return save_checkpoint(out / CHECKPOINT_NAME, dict(record, step=int(step), seconds=0.0, training_state=False))


def _moved_with(recorded: Optional[str], relative: Optional[str], run: Path) -> Optional[str]:
    """A path a run recorded (absolute), or where it is now relative to the run folder when the recorded one is gone
    and that one is there (a project moved as a whole); else the recorded one."""
    if recorded is None or relative is None or os.path.exists(recorded):
        return recorded
    for rel in dict.fromkeys([relative, PureWindowsPath(relative).as_posix()]):  # '..\\data': a run made on Windows
        here = os.path.normpath(os.path.join(os.path.abspath(run), rel))
        if os.path.exists(here):
            return here
    return recorded


_GIVE_DATA = "give the folders where it is now"


def run_data_folders(meta: dict, strict: bool = True, instead: str = _GIVE_DATA) -> List[Tuple[str, bool]]:
    """Each data folder a run recorded (``data_paths`` of :func:`load_run`'s metadata) as ``(path, there)``: the
    recorded absolute path when it is there; else, when the run recorded it relative to its folder too
    (``data_relative``) and a folder is there, that one (the run and its data moved or copied together) if it holds
    the training frames the run learned (:func:`_check_found_data`: never other data taken silently; ``strict``:
    the DatasetError saying what differs and what to do ``instead``, else the recorded path, not there); else the
    recorded path, not there."""
    run = Path(meta["checkpoint"]).parent
    relative = meta.get("data_relative") or [None] * len(meta["data_paths"])
    found = []
    for recorded, rel in zip(meta["data_paths"], relative):
        here = _moved_with(recorded, rel, run)
        if here == recorded:  # there, or nowhere beside the run either
            found.append((recorded, os.path.exists(recorded)))
            continue
        try:
            _check_found_data(meta, here, recorded, instead)
        except DatasetError:
            if strict:
                raise
            found.append((recorded, False))
            continue
        found.append((here, True))
    return found


def _check_found_data(meta: dict, folder: str, recorded: str, instead: str = _GIVE_DATA) -> None:
    """DatasetError unless the people of ``folder`` that the run knows have the training frames it learned (their
    fingerprints, :func:`frame_keys` and :func:`frame_files`), naming the people prepared again at another size
    (:func:`frame_sizes`) or the first frame or file that differs, and what to do ``instead`` (e.g. the command's option that gives the data's place)."""
    from .data.layout import find_identity_dirs

    run = Path(meta["checkpoint"]).parent
    instead = (f"not the data the run {run} was trained on, found at {folder} where the run expects it (beside it) "
               f"now that {recorded} is gone; {instead}")
    dirs = [d for d in find_identity_dirs([folder]) if d.name in meta["identity_names"]]
    if not dirs:
        raise DatasetError(f"holds none of the run's people, {identity_list(meta['identity_names'])}: {instead}", file=folder)
    dataset = load_dataset(dirs, splits=("train",))
    _, frame_map = _known_maps(meta["identity_names"], meta["frame_identity"], dataset, dataset.table("train"),
                               str(run), advice=instead)
    saved_keys, saved_files, saved_sizes = _saved_fingerprints(meta)
    changed = _frames_changed(saved_keys[frame_map], saved_files[frame_map], frame_keys(dataset), frame_files(dataset),
                              dataset, saved_sizes=saved_sizes[frame_map])
    if changed:
        raise DatasetError(f"{changed}: {instead}")


def run_data_paths(meta: dict, instead: str = _GIVE_DATA,
                   identity: Optional[str] = None) -> List[str]:
    """The data folders a run recorded (``data_paths`` of :func:`load_run`'s metadata), for the commands that read
    the run's own data (render's target, speech): where they are now (:func:`run_data_folders`: a folder gone from its
    recorded place is looked for at the same place relative to the run). With ``identity``, only the folders that
    hold that person must be there (render reads one person's data: a personalised person's folder without the
    generic run's data); the folders that are there are given.

    Raises:
        DatasetError: naming the first folder that is not there and the run (moved or renamed apart from the run,
            or the run copied from another machine), and what to do ``instead``; or a folder found beside the run
            that does not hold the frames it was trained on (saying ``instead`` too).
    """
    from .data.layout import find_identity_dirs

    found = run_data_folders(meta, instead=instead)
    there = [p for p, ok in found if ok]
    gone = [p for p, ok in found if not ok]
    holds = (identity is not None and bool(there)
             and name_position([d.name for d in find_identity_dirs(there)], identity) is not None)
    if gone and not holds:
        raise DatasetError(f"not there, the data the run {Path(meta['checkpoint']).parent} was trained on (moved, "
                           f"renamed, or the run copied from another machine?): {instead}", file=gone[0])
    return there


# ----------------------------------------------------------------------------------------------------------
# Weight average


class WeightAverage:
    """Exponential moving average of a model's parameters (``train.ema_decay``), updated after every step:
    ``avg <- avg + (1 - d) (param - avg)`` with ``d = min(decay, (1 + n) / (10 + n))`` at update n, so that early
    in a run, while the weights still change fast, it averages over the last ~n/9 steps only. Buffers (the
    occupancy grid) are not averaged."""

    def __init__(self, model: MINeRF, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) to keep an average, got {decay}")
        self.decay = float(decay)
        self.names = [name for name, _ in model.named_parameters()]
        self.params = [p.detach().clone() for p in model.parameters()]
        self.updates = 0

    @torch.no_grad()
    def update(self, model: MINeRF) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], 1.0 - d)

    def state_dict(self) -> dict:
        return dict(updates=self.updates, params=dict(zip(self.names, self.params)))

    def load_state_dict(self, state: dict) -> None:
        params = state["params"]
        if list(params) != self.names or any(params[n].shape != p.shape for n, p in zip(self.names, self.params)):
            raise ValueError("the saved weight average does not match the model's parameters")
        self.params = [params[n].detach().clone().to(p.device) for n, p in zip(self.names, self.params)]
        self.updates = int(state["updates"])

    @torch.no_grad()
    def copy_to(self, model: MINeRF) -> None:
        """Set the model's parameters to the average."""
        for p, a in zip(model.parameters(), self.params):
            p.copy_(a)

    @contextmanager
    def applied(self, model: MINeRF):
        """The model holds the average inside the block and its own weights again after it."""
        own = [p.detach().clone() for p in model.parameters()]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, w in zip(model.parameters(), own):
                    p.copy_(w)


# ----------------------------------------------------------------------------------------------------------
# Pieces of the loop


def build_model(cfg: RunConfig, dataset: MultiIdentityDataset, split: str = "train") -> MINeRF:
    """A fresh model for the identities of ``dataset`` (one frame code per frame of ``split``), its initial weights
    drawn from ``cfg.train.seed`` (the ones :func:`train` starts from); the box is ``cfg.model.aabb`` or the data's
    (the union of the identities' boxes). The caller's global random stream is left as it was (seed it yourself for
    draws of your own, e.g. the ``nerface`` backbone's sample jitter in a loop of your own)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        return _seeded_model(cfg, dataset, split)


def _seeded_model(cfg: RunConfig, dataset: MultiIdentityDataset, split: str = "train") -> MINeRF:
    """:func:`build_model` leaving torch's global generator seeded with ``cfg.train.seed`` and past the initial
    weights: where :func:`train`'s own draws (the ``nerface`` backbone's jitter) continue from."""
    a_run_config(cfg)
    table = a_dataset(dataset, "dataset").table(split)
    box = np.concatenate([table.aabb[:, :3].min(0), table.aabb[:, 3:].max(0)]).tolist()
    torch.manual_seed(cfg.train.seed)
    return MINeRF(cfg.model, dataset.expression_dim, dataset.identities, torch.from_numpy(table.identity), aabb=box,
                  expression_space=dataset.expression_space)


def view_hull(model: MINeRF, dataset: MultiIdentityDataset, split: str = "train",
              keep_unseen: bool = True) -> Optional[torch.Tensor]:
    """(L*C,) bool occupancy cells inside the visual hull of every frame of ``split`` (their masks, union over frames:
    :meth:`MINeRF.hull_cells`), or None when some frame has no mask (nothing is carved then)."""
    table = dataset.table(split)
    if len(table) == 0 or any(path is None for path in table.mask_paths):
        return None
    return model.hull_cells(torch.from_numpy(table.c2w), torch.from_numpy(table.intrinsics),
                            _SplitMasks(dataset, split), keep_unseen)


class _SplitMasks(Sequence):
    """A split's masks as bool (H, W) tensors, each read when asked for and not cached: the carving visits every
    training frame once, and a list of them all held H x W bytes a frame at once (15 GB for 60,000 frames at
    512 px)."""

    def __init__(self, dataset: MultiIdentityDataset, split: str) -> None:
        self.dataset, self.split = dataset, split
        self._n = dataset.num_frames(split)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, b: int) -> torch.Tensor:
        if not 0 <= b < self._n:
            raise IndexError(b)
        return torch.from_numpy(np.array(self.dataset.mask(self.split, b, cached=False)))


TORSO_START_FRAMES = 24
"""Frames per identity (evenly spread) whose masks and colours start the torso layer."""


def start_torso(model: MINeRF, dataset: MultiIdentityDataset, split: str = "train", identity_offset: int = 0) -> int:
    """Start each identity's torso layer (:meth:`fastminerf.nn.TorsoLayer.start_from`) from up to
    :data:`TORSO_START_FRAMES` of its frames: where the person's mask covers the image outside the head field's
    region (:func:`fastminerf.nn.torso.outside_head`), and its mean colour there. Dataset identity ``k`` is model
    identity ``identity_offset + k``; identities without masks keep the default start. Returns how many identities
    were started."""
    import torch.nn.functional as F

    from .nn.torso import outside_head

    layer = model.torso
    table = dataset.table(split)
    r, started = layer.resolution, 0
    for k in range(len(dataset.identities)):
        frames = table.frames_of(k)
        pick = np.linspace(0, len(frames) - 1, min(len(frames), TORSO_START_FRAMES)).round().astype(int)
        frames = frames[np.unique(pick)]
        if len(frames) == 0 or any(table.mask_paths[b] is None for b in frames):
            continue
        masks = torch.stack([torch.from_numpy(np.array(dataset.mask(split, int(b)), np.float32)) for b in frames])
        if masks.dim() == 4:
            masks = masks[..., 0]
        masks = masks / (255.0 if masks.max() > 1.0 else 1.0)
        images = torch.stack([torch.from_numpy(np.array(dataset.image(split, int(b))[..., :3], np.float32) / 255.0)
                              for b in frames])
        t = model.cfg.torso
        below = outside_head(torch.from_numpy(table.c2w[frames]), torch.from_numpy(table.intrinsics[frames]),
                             *table.size_of(frames[0]), r, t.floor, t.neck_top, t.neck_width).float()
        cover = F.adaptive_avg_pool2d(masks[:, None], r)[:, 0] * below  # (F, R, R)
        colour = F.adaptive_avg_pool2d((images * masks[..., None]).permute(0, 3, 1, 2), r).permute(0, 2, 3, 1)
        weight = cover.sum(0)
        mean = (colour * below[..., None]).sum(0) / weight.clamp(min=1e-6)[..., None]
        layer.start_from(identity_offset + k, cover.mean(0), mean)
        started += 1
    return started


def jitter_near(near: torch.Tensor, step_size: float, generator: torch.Generator) -> torch.Tensor:
    """``train.ray_jitter``: (N,) near bounds moved by a uniform fraction of a marching step each, so a ray's sample
    lattice (which starts at its near bound) falls anywhere between the lattice points of the unjittered ray."""
    return near + torch.rand(near.shape, generator=generator, device=near.device, dtype=near.dtype) * step_size


def mask_loss(out: Dict[str, torch.Tensor], mask: torch.Tensor) -> Optional[torch.Tensor]:
    """``train.mask_weight``'s term: ``mean((opacity - mask)^2)`` over the first ``len(mask)`` rays of the render
    ``out`` (the colour rays; rays after them, such as the landmark prior's, carry no mask) whose mask is known (not
    NaN), the opacity being the person's (``person_opacity``: the head field over the torso layer) where the model
    has a layer, else the field's. None when no ray has a mask."""
    known = ~torch.isnan(mask)
    if not bool(known.any()):
        return None
    person = out.get("person_opacity", out["opacity"])[: mask.shape[0]]
    return torch.mean((person[known] - mask[known]) ** 2)


def lr_factor(step: int, cfg: RunConfig) -> float:
    """The learning-rate schedule of :func:`train`: the factor on each group's rate (``cfg.train.lr``,
    ``cfg.train.code_lr``) at ``step`` (from 0): a linear warm-up, ``(step + 1) / cfg.train.warmup_lr_steps`` up to 1,
    times an exponential decay that runs from step 0 (not from the warm-up's end) to ``cfg.train.lr_final_factor``
    at ``cfg.train.steps`` and stays there, ``lr_final_factor ** min(1, step / steps)``."""
    t = a_run_config(cfg).train
    warm = min(1.0, (step + 1) / max(1, t.warmup_lr_steps))
    return warm * t.lr_final_factor ** min(1.0, step / max(1, t.steps))


def _optimizer(groups: List[dict]) -> torch.optim.Adam:
    # instant-ngp's Adam settings: beta2 0.99 and a tiny epsilon (hash-grid entries see rare, small gradients).
    # The fused kernel (CPU and CUDA) updates all tensors in one pass: 0.6 instead of 3.0 ms a step for the cpu
    # preset's parameters on one core here (its state dict is the same as the per-tensor Adam's).
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = devices <= {"cpu", "cuda"}
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15, fused=fused or None)


def build_optimizer(cfg: RunConfig, model: MINeRF) -> torch.optim.Adam:
    """The optimiser of :func:`train` for ``model`` (build it after moving the model to its device, and again after
    :meth:`MINeRF.add_identities`): Adam with instant-ngp's settings (betas (0.9, 0.99), eps 1e-15), two parameter
    groups: ``param_groups[0]`` the shared weights (field, conditioning) at ``cfg.train.lr``, ``param_groups[1]``
    the per-identity state (identity and frame codes, the torso layer's textures and frame shifts) at
    ``cfg.train.code_lr``. Set each group's ``lr`` to its rate times :func:`lr_factor` at every step for the
    schedule of :func:`train`."""
    a_run_config(cfg)
    codes = _per_identity_params(needs(model, MINeRF, "model", A_MODEL))
    code_ids = {id(p) for p in codes}
    field_params = [p for p in model.parameters() if id(p) not in code_ids]
    return _optimizer([dict(params=field_params, lr=cfg.train.lr), dict(params=codes, lr=cfg.train.code_lr)])


def _psnr(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-10))


def _occupancy_pool(table, generator: torch.Generator, identity_map: torch.Tensor, frame_map: torch.Tensor):
    """Random training frames (model identity (P,), expression (P, E), model frame index (P,)) for an occupancy
    update, on the generator's device; ``identity_map`` / ``frame_map`` take the table's ids to the model's."""
    b = len(table)
    dev = generator.device
    pick = torch.randint(b, (min(OCCUPANCY_POOL, b),), generator=generator, device=dev)
    rows = pick.cpu()
    ident = identity_map[torch.from_numpy(table.identity)[rows].to(dev)]
    expr = torch.from_numpy(table.expression)[rows].to(dev)
    return ident, expr, frame_map[pick]


def resolve_device(name: Union[str, torch.device], option: str = "train.device") -> torch.device:
    """``train.device`` (or the device ``option`` names, e.g. render's ``--device``): "auto" (CUDA when torch sees a
    GPU, else the CPU), "cpu", "cuda" or "cuda:K"; a device that cannot run here is refused naming ``option``."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name, option)  # a ConfigError (a ValueError) naming the key and the devices that work
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option}={name!r} but this torch ({torch.__version__}) sees no CUDA device; "
                         f"use {option}=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()  # else model.to(device) fails after the data is read: 'invalid device ordinal'
        raise ValueError(f"{option}={name!r} but this machine has {count} CUDA device{'s' if count != 1 else ''} "
                         f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}); use one of them, cuda or auto")
    return device


def _check_backends(cfg: RunConfig, device: torch.device) -> None:
    """Refuse before any work the backends of ``cfg`` that cannot run on ``device`` (tcnn or nerfacc off CUDA or
    not importable there, native without kernels for the device), naming the setting; the model would raise it at
    its first step, after the setup."""
    if cfg.model.backbone != "fast":  # the nerface backbone has no hash grid and no occupancy grid
        return
    for key, value, component in (("model.field.backend", cfg.model.field.backend, "encoding"),
                                  ("model.grid_backend", cfg.model.grid_backend, "grid")):
        try:
            _backend.resolve(value, component, device.type)
        except (_backend.BackendError, _native.NativeExtensionError) as exc:  # the latter: an extension that does
            # not load (an ImportError), which says why and how to build
            hint = (f"; {key}=auto runs what can (the same functions on the same weights: a run trained with "
                    f"{value} continues with auto)" if value in ("tcnn", "nerfacc") else "")
            raise ValueError(f"{key}={value!r} cannot run on {device}: {exc}{hint}") from None


def _check_resume_config(saved: RunConfig, new: RunConfig, path: Path,
                         may_change: Sequence[str] = RESUME_MAY_CHANGE, resume: str = "") -> None:
    """:class:`CheckpointError` naming the keys outside ``may_change`` that differ (the first five, and how many
    more), and how to continue the run instead (``resume``, e.g. with its own config file)."""
    a, b = _flat(saved), _flat(new)
    diff = [k for k in a if a[k] != b.get(k) and k not in may_change]
    if diff:
        shown = ", ".join(f"{k}: {a[k]!r} -> {b.get(k)!r}" for k in diff[:5])
        more = f", and {len(diff) - 5} more" if len(diff) > 5 else ""
        raise CheckpointError(f"{path} was trained with a different config ({shown}{more}); {resume}use another "
                              "--out folder to start a new run")


def _flat(cfg, prefix: str = "") -> dict:
    from dataclasses import fields, is_dataclass

    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            out.update(_flat(v, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = v
    return out


def _log_record(raw: bytes) -> Optional[dict]:
    """One line of ``log.jsonl`` as its record, or None for a line :func:`log_records` skips."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        return None
    if (isinstance(record, dict) and type(record.get("step")) is int
            and all(record.get(k) is None or type(record[k]) in (int, float) for k in ("loss", "psnr"))):
        return record
    return None


def log_records(log: PathLike) -> List[Tuple[str, dict]]:
    """The records of a run's ``log.jsonl`` with their lines, in file order: each line that is a JSON object with a
    whole-number ``step`` and numbers or null for ``loss`` and ``psnr``. Lines cut by an interruption or a full disk,
    damaged bytes (not UTF-8) and lines of another shape are skipped; [] when there is no such file."""
    log = Path(log)
    return list(_iter_log_records(log)) if log.is_file() else []


def _iter_log_records(log: Path) -> Iterator[Tuple[str, dict]]:
    """:func:`log_records` one at a time, reading the file a line at a time (a long run's log is hundreds of MB)."""
    with open(log, "rb") as f:
        for chunk in f:  # \n-ended; splitlines breaks it where a reading of the whole file would
            for raw in chunk.splitlines():
                record = _log_record(raw)
                if record is not None:
                    yield raw.decode("utf-8"), record


def last_log_record(log: PathLike, at_most: Optional[int] = None, block: int = 1 << 16) -> Optional[dict]:
    """The last of :func:`log_records` (the last whose ``step`` is at most ``at_most``, when given), read from the
    file's end a block at a time: a long run's log (a line a step for a million steps, 200 MB) is not read whole for
    its last line. None when there is no such record or file."""
    log = Path(log)
    if not log.is_file():
        return None
    with open(log, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        head = b""  # the start of the file's last block read, which may be the end of a line before it
        while True:
            start = max(0, end - block)
            f.seek(start)
            buf = f.read(end - start) + head
            end = start
            if start > 0:
                cut = buf.find(b"\n")
                if cut < 0:
                    head = buf
                    continue
                head, buf = buf[:cut], buf[cut + 1:]
            for raw in reversed(buf.splitlines()):
                record = _log_record(raw)
                if record is not None and (at_most is None or record["step"] <= at_most):
                    return record
            if start == 0:
                return None


def _truncate_log(log: Path, step: int) -> Optional[dict]:
    """Drop the log lines of steps after ``step`` (redone on resume), and those :func:`log_records` skips; the last
    record kept, or None. The log is read a line at a time (a long run's is hundreds of MB): only the kept lines are
    held, for the rewrite, and a log with nothing to drop is left as it is."""
    if not log.exists():
        return None
    kept: List[str] = []
    last, size = None, 0
    for line, record in _iter_log_records(log):
        if record["step"] <= step:
            kept.append(line + "\n")
            last, size = record, size + len(line) + 1
    if size != log.stat().st_size:  # lines to drop (a kept line's bytes and newline are never more than the file's)
        with replaced_atomically(log) as tmp:  # an interruption now leaves the whole log, not half
            tmp.write_text("".join(kept))
    return last


def write_curve(run_dir: PathLike) -> Path:
    """Draw ``RUN/curve.png`` from ``RUN/log.jsonl`` (its whole records, :func:`log_records`, read one at a time: a
    long run's log is not held): the loss and the training PSNR against the step
    (:func:`fastminerf.drawing.training_curve`). Returns the PNG's path.

    Raises:
        FileNotFoundError: the folder has no log.
    """
    from .drawing import training_curve

    run = Path(needs(run_dir, PATH_TYPES, "run_dir", f"a run folder {PATH_TAKEN}"))
    log = run / LOG_NAME
    if not log.is_file():
        raise FileNotFoundError(f"{log}: no such file (a run folder's log.jsonl)")
    img = training_curve((record for _, record in _iter_log_records(log)), run.name)  # not all held at once
    out = run / CURVE_NAME
    with replaced_atomically(out) as tmp:
        img.save(tmp, format="PNG")
    return out


def _write_config(out: Path, cfg: RunConfig) -> None:
    """``out/config.yaml``, atomically: a stopped write leaves the earlier file whole (the one a resume is told to
    give as --config) and no temporary one."""
    path = out / CONFIG_NAME
    fresh = not path.exists()
    with replaced_atomically(path) as tmp:
        tmp.write_text(dump_config(cfg))
    stack = getattr(_held, "stack", None)
    if fresh and stack is not None:  # made by this call: taken back if it is refused before its first step
        stack.fresh_config = path


def _resume_log(loop: "_Loop", data: dict) -> None:
    """Truncate a resumed run's log to its checkpoint's step and start the loop's loss and PSNR from its last line,
    so that a run resumed when already finished (no step left) reports them rather than NaN; the steps the
    checkpoint took after its last log line (``log_window``, :meth:`_Loop.checkpoint`) count in the next line, as in
    an uninterrupted run (a checkpoint without it, of an older fastminerf: the next line counts from the resume)."""
    window = data.get("log_window")
    if window is not None:
        loop.window = dict(mse=[float(v) for v in window["mse"]], rays=int(window["rays"]),
                           samples=int(window["samples"]), time=float(window["time"]))
    last = _truncate_log(loop.log, loop.step)
    if last is not None:
        loop.loss, loop.psnr = (float("nan") if last.get(k) is None else float(last[k]) for k in ("loss", "psnr"))


def _recorded_config(cfg: RunConfig, saved_cfg: Optional[RunConfig], data: Optional[dict],
                     steps_key: str = "steps") -> RunConfig:
    """The config a session records in the run folder (config.yaml, its checkpoints): ``cfg``, except that a resume
    with nothing left to train (``data``'s step at ``cfg.train.<steps_key>`` or past it, or its training seconds at
    ``train.max_seconds``) keeps the run's own steps and time limit (``saved_cfg``'s): such a session takes no step,
    and recording its limits made a run stopped at step 4 of 8 read '4 of 2' after ``train --steps 2``, finished to
    info and personalize, and a rerun with its own config.yaml trained nothing."""
    t = cfg.train
    if data is None or saved_cfg is None or (int(data["step"]) < getattr(t, steps_key) and (
            t.max_seconds is None or float(data.get("seconds", 0.0)) < t.max_seconds)):
        return cfg
    s = saved_cfg.train
    return replace(cfg, train=replace(t, **{steps_key: getattr(s, steps_key)}, max_seconds=s.max_seconds))


class _Loop:
    """The optimisation loop shared by training and personalisation (one phase per call of :meth:`run`)."""

    def __init__(self, cfg: RunConfig, model: MINeRF, sampler: RaySampler, out: Path, progress: Optional[ProgressFn],
                 payload: Callable[[], dict], occ_generator: torch.Generator, occ_warmup: Optional[int],
                 identity_map: Optional[torch.Tensor] = None, frame_map: Optional[torch.Tensor] = None,
                 monitor: Optional[MonitorFn] = None, average: Optional[WeightAverage] = None) -> None:
        # The sampler's identities and frames are ids of its own dataset; the maps take them to the model's
        # (personalisation appends new identities and frames after the generic ones; fine-tuning known identities
        # picks theirs out of the model's). None: the same ids.
        self.cfg, self.model, self.sampler, self.out = cfg, model, sampler, out
        self.progress, self.payload, self.monitor = progress, payload, monitor
        self.stopped = False  # the monitor asked to stop
        self.average = average
        dev = occ_generator.device
        table = sampler.table
        self.identity_map = (identity_map if identity_map is not None
                             else torch.arange(len(sampler.dataset.identities))).to(dev)
        self.frame_map = (frame_map if frame_map is not None else torch.arange(len(table))).to(dev)
        self.occ_generator, self.occ_warmup = occ_generator, occ_warmup
        self.log = out / LOG_NAME
        self.step = 0
        self.seconds = 0.0
        self.loss = float("nan")
        self.psnr = float("nan")
        # the steps since the last log line: their training MSEs, rays, samples and seconds (checkpointed with them)
        self.window = dict(mse=[], rays=0, samples=0, time=0.0)
        self.saved_step: Optional[int] = None  # the step of the last checkpoint this loop wrote
        self.resumed_step: Optional[int] = None  # the step of the checkpoint this session resumed from

    def checkpoint(self) -> None:
        bad = _non_finite_parameter(self.model)
        if bad is not None:  # a loss that stays finite on NaN weights: weights no step has used since they turned
            # NaN, or a NaN hash grid whose occupancy update emptied the grid before a step marched a sample through it
            raise TrainingDiverged(f"training diverged by step {self.step}: the model's {bad} holds NaN or infinite "
                                   f"values though every step's loss was finite ({self._lr_hint()}); not "
                                   f"checkpointed: {self._kept()}", self.step)
        save_checkpoint(self.out / CHECKPOINT_NAME, dict(self.payload(), log_window=dict(self.window)))
        self.saved_step = self.step

    def _lr_hint(self) -> str:
        t = self.cfg.train
        return (f"a learning rate too high for this data or model is the usual cause: train.lr {t.lr:g}, train.code_lr "
                f"{t.code_lr:g}; train again with lower ones into another folder")

    def _kept_step(self) -> Optional[int]:
        """The step the run folder's checkpoint keeps: the last one this loop wrote, else the one this session
        resumed from; None when there is none."""
        return self.saved_step if self.saved_step is not None else self.resumed_step

    def _kept(self) -> str:
        """What the run folder keeps when the loop stops on non-finite values (for :class:`TrainingDiverged`)."""
        kept = self._kept_step()
        if kept is None:
            return f"no checkpoint was written in {self.out}"
        return f"{self.out / CHECKPOINT_NAME} keeps step {kept}, the last finite weights (a rerun resumes from it)"

    @contextmanager
    def noting_interrupt(self):
        """A KeyboardInterrupt (Ctrl-C; the command's SIGTERM) raised inside the block says where the loop stopped and
        what the run folder's checkpoint keeps, for the command to print."""
        try:
            yield
        except KeyboardInterrupt as exc:
            exc.args = (self.interrupted(),)
            raise

    def interrupted(self) -> str:
        """Where the loop stopped and what the run folder's checkpoint keeps (:meth:`noting_interrupt`'s account)."""
        kept = self._kept_step()
        return f"after step {self.step}: " + (f"no checkpoint was written yet in {self.out}; a rerun starts again" if kept is None
                                              else f"{self.out / CHECKPOINT_NAME} keeps step {kept}; rerun the same command to resume from it")

    def _check_rays(self, batch: RayBatch) -> None:
        """:class:`TrainingDiverged` naming the frame, file and key of the first ray of the step (``batch``, as drawn,
        on the CPU) whose data is not finite: a NaN expression, pixel or camera would reach the weights through the
        gradients while the loss stayed finite (the native fused heads' ReLU gives 0 for a NaN, torch's gives NaN)."""
        table = self.sampler.table
        for key, values in (("expression", batch.expression), ("image", batch.rgb), ("background", batch.background),
                            ("transform_matrix", torch.cat([batch.origins, batch.directions], -1))):
            bad = ~torch.isfinite(values.reshape(len(batch), -1)).all(-1)
            if bool(bad.any()):
                b = int(batch.frame[torch.nonzero(bad)[0, 0]])
                k = int(table.identity[b])
                if key == "transform_matrix" and np.isfinite(table.c2w[b]).all():
                    key = "intrinsics"  # the rays' directions come from both
                raise TrainingDiverged(
                    f"training stopped at step {self.step + 1}: the data holds a non-finite value: {table.files[k]}: "
                    f"frame {int(table.frame_in_identity[b])} of {self.sampler.dataset.identities[k]!r}: key '{key}' "
                    f"({table.image_paths[b]}); {self._kept()}", self.step + 1)

    def _landmark_rays(self, batch: RayBatch) -> Optional[Tuple[RayBatch, torch.Tensor]]:
        """``train.landmark_depth_weight``'s rays, from the cameras of the batch's frames through tracked landmarks,
        and the landmarks' distances along them (None when the frames have no landmarks)."""
        t = self.cfg.train
        drawn = landmark_rays(self.sampler.dataset, self.sampler.split, batch.frame.cpu().numpy(), t.landmark_rays,
                              self.occ_generator)
        if drawn is None:
            return None
        rays, target = drawn
        device = batch.origins.device
        rays = rays.to(device)
        rays.identity = self.identity_map[rays.identity]
        return rays, target.to(device)

    def run(self, optimizer: torch.optim.Optimizer, base_lrs: List[float], until_step: int, total_steps: int,
            max_seconds: Optional[float], phase: str, lr_steps: int) -> None:
        stack = getattr(_held, "stack", None)
        if stack is not None:  # an interrupt after this, outside a phase's steps, is told by this loop's account
            stack.loop = self
        with self.noting_interrupt():
            self._run(optimizer, base_lrs, until_step, total_steps, max_seconds, phase, lr_steps)

    def _run(self, optimizer: torch.optim.Optimizer, base_lrs: List[float], until_step: int, total_steps: int,
             max_seconds: Optional[float], phase: str, lr_steps: int) -> None:
        cfg, model, t = self.cfg, self.model, self.cfg.train
        table = self.sampler.table
        window = self.window
        last_ckpt_time, last_ckpt_step = time.perf_counter(), self.step
        lr_cfg = replace(cfg, train=replace(t, steps=lr_steps))
        model.train()
        while not self.stopped and self.step < until_step and (max_seconds is None or self.seconds < max_seconds):
            start = time.perf_counter()
            ident, expr, frames = _occupancy_pool(table, self.occ_generator, self.identity_map, self.frame_map)
            model.update_occupancy(self.step, ident, expr, frames, generator=self.occ_generator,
                                   warmup_steps=self.occ_warmup)
            factor = lr_factor(self.step, lr_cfg)
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * factor
            batch = self.sampler.sample()
            self._check_rays(batch)
            batch = batch.to(self.occ_generator.device)
            batch.identity = self.identity_map[batch.identity]
            n = len(batch)
            # The landmark prior's rays ride in the same render as the colour rays (one pass over the field), after them.
            landmarks = self._landmark_rays(batch) if t.landmark_depth_weight > 0 else None
            rays = batch if landmarks is None else RayBatch.cat([batch, landmarks[0]])
            if t.ray_jitter and cfg.model.backbone == "fast":
                rays.near = jitter_near(rays.near, model.step_size, self.occ_generator)
            frame_index = self.frame_map[batch.frame]
            out = model.render_batch(rays, frame_code=self.frame_map[rays.frame], distortion=t.distortion_weight > 0)
            ray_error = torch.mean((out["rgb"][:n] - batch.rgb) ** 2, dim=-1)  # (N,)
            mse = ray_error.mean()
            loss = mse
            if t.distortion_weight > 0 and "distortion" in out:  # the fast backbone's packed samples
                loss = loss + t.distortion_weight * out["distortion"][:n].mean()
            if t.mask_weight > 0:
                masked = mask_loss(out, batch.mask)
                if masked is not None:
                    loss = loss + t.mask_weight * masked
            if "rgb_coarse" in out:  # a coarse + fine backbone (nerface): NeRF's loss on both images
                loss = loss + torch.mean((out["rgb_coarse"][:n] - batch.rgb) ** 2)
            if t.frame_code_reg > 0 and model.frame_codes.weight.shape[1] > 0:
                loss = loss + t.frame_code_reg * model.frame_codes(frame_index).pow(2).sum(-1).mean()
            if landmarks is not None:  # Huber distance of the depth to the landmark, weighted by the ray's opacity
                err = torch.nn.functional.smooth_l1_loss(out["depth"][n:], landmarks[1], beta=t.landmark_depth_tolerance,
                                                         reduction="none")
                loss = loss + t.landmark_depth_weight * (out["opacity"][n:].detach() * err).mean()
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
            # Read before the update: a non-finite loss stops the step before its NaN gradients reach every weight, so
            # the weights it names as non-finite were so when the step began.
            self.loss = float(loss.detach())
            if not math.isfinite(self.loss):  # before the log, the monitor and any checkpoint see it
                bad = _non_finite_parameter(model)
                held = (f"the model's {bad} held NaN or infinite values before the step" if bad is not None
                        else "every input of the step was finite")
                raise TrainingDiverged(f"training diverged at step {self.step + 1}: its loss is {self.loss} ({held}; "
                                       f"{self._lr_hint()}); {self._kept()}", self.step + 1)
            if loss.requires_grad:
                optimizer.step()
                if self.average is not None:
                    self.average.update(model)
            logged = ray_error.detach()
            if self.sampler.error_fraction > 0:
                logged = logged.cpu()
                self.sampler.record_errors(batch.frame, batch.pixel, logged)
            plain = ~self.sampler.last_targeted_rays()
            if plain.any() and not plain.all():
                # the logged PSNR leaves out the deliberately hard error, mouth and eye rays
                logged = logged.cpu()[torch.from_numpy(plain)]
            # Read on the clock: on a GPU the update is queued, and this host read waits for it.
            samples = int(out["samples"][:n].sum())
            elapsed = time.perf_counter() - start
            self.step += 1
            self.seconds += elapsed
            window["mse"].append(float(logged.mean()))
            window["rays"] += n
            window["samples"] += samples
            window["time"] += elapsed
            stopping = self.step == until_step or (max_seconds is not None and self.seconds >= max_seconds)
            if self.step % t.log_every == 0 or stopping:  # the last step is always logged
                self.psnr = _psnr(float(np.mean(window["mse"])))
                record = dict(step=self.step, seconds=round(self.seconds, 4), loss=self.loss, psnr=self.psnr,
                              rays_per_s=window["rays"] / max(window["time"], 1e-9),
                              samples_per_ray=window["samples"] / max(window["rays"], 1), phase=phase,
                              occupied=model.occupancy.occupied_fraction())
                with errors_naming(self.log), open(self.log, "a") as f:  # a full disk: the log named
                    f.write(json_text(record) + "\n")  # a diverged loss: null
                if self.progress is not None:
                    self.progress(dict(record, total_steps=total_steps, max_seconds=max_seconds or float("nan")))
                if self.monitor is not None:  # outside the step's clock: its time is not training time
                    model.eval()
                    with torch.no_grad(), (self.average.applied(model) if self.average is not None else nullcontext()):
                        self.stopped = bool(self.monitor(model, record))
                    model.train()
                window = self.window = dict(mse=[], rays=0, samples=0, time=0.0)
            now = time.perf_counter()
            # 0 turns a trigger off: it wrote a checkpoint after every step (the whole model to disk each time)
            if ((t.checkpoint_every > 0 and self.step - last_ckpt_step >= t.checkpoint_every)
                    or (t.checkpoint_seconds > 0 and now - last_ckpt_time >= t.checkpoint_seconds)):
                self.checkpoint()
                last_ckpt_time, last_ckpt_step = now, self.step


def _restore_loop(data: dict, path: Path, sampler: RaySampler, occ_gen: torch.Generator,
                  average: Optional[WeightAverage], optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Put a checkpoint's training state (besides the model) back; :class:`CheckpointError` naming the file if it
    cannot."""
    if optimizer is not None:
        _restore_optimizer(optimizer, data.get("optimizer"), path)
    try:
        _restore_state(sampler, data["sampler"])
        saved = data["occ_generator"]
        if saved.numel() == occ_gen.get_state().numel():
            occ_gen.set_state(saved)
        else:  # written on another kind of device (``train.device`` may change): a CPU generator's state is 5,056
            # bytes, a CUDA one's 16; neither takes the other's, so the stream restarts from the run's seed and step
            occ_gen.manual_seed(occ_gen.initial_seed() + int(data["step"]))
        if average is not None:
            average.load_state_dict(data["ema"])
        if data.get("torch_rng") is not None:  # checkpoints written before it was kept: the stream goes on as it is
            _set_global_rng(occ_gen.device, data["torch_rng"], occ_gen.initial_seed() + int(data["step"]))
    except KeyError as exc:  # str(KeyError) is the bare key
        raise CheckpointError(f"{path}: cannot restore the training state: the checkpoint lacks {exc}") from None
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot restore the training state: {exc}") from None


def _global_rng(device: torch.device) -> torch.Tensor:
    """The state of torch's global generator on ``device`` (the ``nerface`` backbone's sample jitter draws from it)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_global_rng(device: torch.device, saved: torch.Tensor, seed: int) -> None:
    """Put :func:`_global_rng`'s state back; one written on another kind of device (its state has another size)
    restarts the stream from ``seed``, as the occupancy generator does."""
    if saved.numel() != _global_rng(device).numel():
        torch.manual_seed(seed)
    elif device.type == "cuda":
        torch.cuda.set_rng_state(saved, device)
    else:
        torch.set_rng_state(saved)


def _frames_moved(saved: torch.Tensor, table_identity: np.ndarray, names: Sequence[str]) -> Optional[str]:
    """None when frame code ``b`` belongs to row ``b`` of the training table (``saved`` (B,) the identity of each
    frame code, ``table_identity`` the table's); else, for the message, the people whose training-frame counts differ
    (both counts, the first five: :func:`fastminerf.config.some_of`), or that the same counts came in another order.
    The same people with frames moved between them would train codes on another person's frames."""
    table = torch.from_numpy(np.asarray(table_identity)).long()
    if torch.equal(saved.cpu().long(), table):
        return None
    counts = [torch.bincount(ids, minlength=len(names)).tolist() for ids in (saved.cpu().long(), table)]
    differ = [k for k in range(len(names)) if counts[0][k] != counts[1][k]]
    if not differ:  # the same counts: frames of several people in another order
        return f"the training frames of {identity_list(names)} in another order"
    return some_of((f"{names[k]}'s {counts[0][k]} training frames (the data has {counts[1][k]})" for k in differ), 5)


def frame_keys(dataset: MultiIdentityDataset, split: str = "train") -> torch.Tensor:
    """(B,) int64 fingerprints of a split's frames, one per row of its table: the frame's image file (relative to its
    identity folder, so the data may move), camera, intrinsics and expression. Checkpoints keep them so that a resume
    or a fine-tuning tells frames that changed in place or in order (the same counts per person) from the frames
    its frame codes learned. Image contents are not read (:func:`frame_files` fingerprints the files)."""
    t = dataset.table(split)
    keys = np.empty(len(t), dtype=np.int64)
    for b in range(len(t)):
        h = hashlib.blake2b(digest_size=8)
        rel = os.path.relpath(t.image_paths[b], dataset.identity_dirs[int(t.identity[b])])
        h.update(rel.replace(os.sep, "/").encode())
        for a in (t.c2w[b], t.intrinsics[b], t.expression[b]):
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
        keys[b] = int.from_bytes(h.digest(), "little", signed=True)
    return torch.from_numpy(keys)


FRAME_FILES = ("image", "mask", "background")
"""The files of a training frame that :func:`frame_files` fingerprints, in its columns' order."""

_TAIL_BYTES = 64


def _file_key(path) -> int:
    """A fingerprint of a file's contents from its size and its last bytes (-1: no file, or missing). A PNG ends
    with its zlib stream's Adler-32 of every pixel and the chunk's CRC, so other pixels give another key; a copy of
    the file (another folder, another machine) gives the same."""
    if path is None:
        return -1
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
    except OSError:
        return -1
    h = hashlib.blake2b(size.to_bytes(8, "little") + tail, digest_size=8)
    return int.from_bytes(h.digest(), "little", signed=True)


def frame_files(dataset: MultiIdentityDataset, split: str = "train") -> torch.Tensor:
    """(B, 3) int64 fingerprints of each frame's image, mask and background files (:data:`FRAME_FILES`;
    :func:`_file_key`, -1 where the frame has none or it is missing). Checkpoints keep them beside
    :func:`frame_keys`, which covers names, cameras and expressions but no pixels: data prepared again (or retouched)
    with other pixels under the same cameras and names is told from the frames trained on, a copy or a move of the
    data is not (modification times would be). One small read per file, no decoding: 0.08 s for the nine real
    clips' 2,094 training frames (256 px), against 0.35 s to hash every image and mask."""
    t = dataset.table(split)
    bg = [_file_key(dataset.split_meta(split, i).background) for i in range(len(dataset.identities))]
    return torch.tensor([[_file_key(t.image_paths[b]), _file_key(t.mask_paths[b]), bg[int(t.identity[b])]]
                         for b in range(len(t))], dtype=torch.long).reshape(len(t), len(FRAME_FILES))


def frame_sizes(dataset: MultiIdentityDataset, split: str = "train") -> torch.Tensor:
    """(B, 2) int64 width and height in pixels of each frame of a split. Checkpoints keep them beside
    :func:`frame_keys` so that data prepared again at another size is told as such (its intrinsics change the keys
    of every frame)."""
    t = dataset.table(split)
    return torch.from_numpy(np.stack([t.widths, t.heights], axis=1).astype(np.int64))


def _saved_fingerprints(meta: dict) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A run's ``frame_keys`` (B,), ``frame_files`` (B, 3) and ``frame_sizes`` (B, 2) (:func:`load_run`'s metadata),
    each zeros where the run is older than it: 0 is "unknown", which :func:`_frames_changed` does not compare, so a
    caller can index them by frame alike."""
    count = meta["frame_identity"].numel()
    widths = {"frame_keys": (), "frame_files": (len(FRAME_FILES),), "frame_sizes": (2,)}
    return tuple(meta[k] if meta[k] is not None else torch.zeros(count, *w, dtype=torch.long)  # type: ignore[return-value]
                 for k, w in widths.items())


def _sizes_changed(saved: Optional[torch.Tensor], dataset: MultiIdentityDataset, split: str = "train") -> Optional[str]:
    """None when the saved frame sizes (:func:`frame_sizes`; 0 where unknown, None: a checkpoint written before they
    were kept) are the data's; else each identity whose size changed, with its old and new size."""
    if saved is None:
        return None
    t = dataset.table(split)
    s, n = saved.cpu().numpy().reshape(len(t), 2), frame_sizes(dataset, split).numpy()
    changed = {}
    for b in np.flatnonzero(((s != n) & (s != 0)).any(axis=1)):
        changed.setdefault(int(t.identity[b]), (s[b], n[b]))
    if not changed:
        return None
    people = ", ".join(f"{dataset.identities[i]!r} was trained at {a[0]}x{a[1]} px and is now {b[0]}x{b[1]} px"
                       for i, (a, b) in changed.items())
    sizes = sorted({int(a[0]) for a, _ in changed.values()})
    return (f"the data was prepared again at another size: {people} (prepare {'it' if len(changed) == 1 else 'them'} "
            f"again with --size {' / '.join(map(str, sizes))} to use {'it' if len(changed) == 1 else 'them'} here)")


_SAME_PIXELS = ("; if it was only re-encoded (the same pixels: PNGs re-saved at another compression level or optimised, "
                "e.g. by oxipng), say so with --same-pixels (same_pixels=True)")


def _frames_changed(saved_keys: Optional[torch.Tensor], saved_files: Optional[torch.Tensor], keys: torch.Tensor,
                    files: torch.Tensor, dataset: MultiIdentityDataset, split: str = "train",
                    saved_sizes: Optional[torch.Tensor] = None, same_pixels_hint: bool = False) -> Optional[str]:
    """None when the saved fingerprints (``frame_keys`` (B,) of :func:`frame_keys`, ``frame_files`` (B, 3) of
    :func:`frame_files`; 0 where unknown, None: a checkpoint written before they were kept, or not compared) match
    ``keys`` and ``files``; else the identities prepared again at another size (``saved_sizes``, :func:`frame_sizes`),
    or the first frame, then the first file, that differs, named (``same_pixels_hint``: a file of other contents is
    said to be accepted with ``same_pixels``, where the caller takes it)."""
    resized = _sizes_changed(saved_sizes, dataset, split)
    if resized:
        return resized
    t = dataset.table(split)
    for saved, now in ((saved_keys, keys), (saved_files, files)):
        if saved is None:
            continue
        s, n = saved.cpu().numpy().reshape(len(t), -1), now.numpy().reshape(len(t), -1)
        diff = np.argwhere((s != n) & (s != 0))
        if not len(diff):
            continue
        b, k = (int(v) for v in diff[0])
        frames = len({int(r) for r, _ in diff})
        more = f"; {frames - 1} more frames too" if frames > 1 else ""
        where = f"{split} frame {int(t.frame_in_identity[b])} of {dataset.identities[int(t.identity[b])]!r}"
        if now.dim() == 1:
            return f"{t.image_paths[b]}: {where} is another frame (file, camera or expression) than the one trained on{more}"
        path = (t.image_paths[b], t.mask_paths[b], dataset.split_meta(split, int(t.identity[b])).background)[k]
        state = ("is missing" if n[b, k] == -1 else "is new" if s[b, k] == -1
                 else "has other contents (the data was prepared again or edited" + (_SAME_PIXELS if same_pixels_hint
                                                                                      else "") + ")")
        return f"{path}: the {FRAME_FILES[k]} file of {where} {state} since it was trained on{more}"
    return None


def _check_kind(data: dict, kind: str, path: Path) -> None:
    """A run folder is resumed by the command that wrote it: a generic training's weights continued as a
    personalisation (or the reverse) would run the other's schedule and parameter groups on them."""
    written = str(data.get("kind", "train"))
    if written != kind:
        raise CheckpointError(f"{path} was written by `fastminerf {written}`, not `{kind}`: continue it with "
                              f"`fastminerf {written}`, or choose another --out folder")


def _restore_optimizer(optimizer: torch.optim.Optimizer, state: Optional[dict], path: Path) -> None:
    """A checkpoint's optimizer state (None: the checkpoint lacks it); :class:`CheckpointError` naming the file."""
    if state is None:
        raise CheckpointError(f"{path}: cannot restore the optimizer state: the checkpoint has none")
    try:
        optimizer.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot restore the optimizer state: {type(exc).__name__}: {exc}") from None


def _state(sampler: RaySampler) -> dict:
    full = sampler.state_dict()
    state = full["bit_generator"]
    # Plain data only: the 128-bit PCG64 words as decimal strings (weights_only loads them without pickled code),
    # the error maps as a tensor.
    inner = state["state"]
    out = dict(bit_generator=state["bit_generator"], state=str(inner["state"]), inc=str(inner["inc"]),
               has_uint32=int(state["has_uint32"]), uinteger=int(state["uinteger"]),
               error_map=torch.from_numpy(full["error_map"]))
    if "pool" in full:  # the frames the batches draw from, where the split outgrows the frame cache
        out["pool"] = torch.from_numpy(full["pool"])
    return out


def _restore_state(sampler: RaySampler, s: dict) -> None:
    state = {"bit_generator": dict(bit_generator=s["bit_generator"], state=dict(state=int(s["state"]), inc=int(s["inc"])),
                                   has_uint32=int(s["has_uint32"]), uinteger=int(s["uinteger"]))}
    if "error_map" in s:  # checkpoints written before error-map sampling have none
        state["error_map"] = s["error_map"].numpy()
    if "pool" in s:
        state["pool"] = s["pool"].numpy()
    sampler.load_state_dict(state)


# ----------------------------------------------------------------------------------------------------------
# Generic training


def _where(paths: Sequence[PathLike]) -> List[str]:
    """Paths as a run records them: absolute, so that render, eval and personalize find the data (and the generic
    run) from any working folder, not only from the one training ran in."""
    return [os.path.abspath(p) for p in paths]


def _relative(paths: Sequence[PathLike], run: Path) -> List[Optional[str]]:
    """``paths`` relative to the run folder ``run`` (None where there is no such path: another drive), recorded beside
    the absolute ones so that a run moved or copied together with its data finds it (:func:`run_data_folders`)."""
    found = []
    for p in paths:
        try:
            found.append(Path(os.path.relpath(os.path.abspath(p), os.path.abspath(run))).as_posix())  # '/': read anywhere
        except ValueError:
            found.append(None)
    return found


def _leaves_torch_state(fn):
    """``fn`` runs on ``train.threads`` (it calls ``torch.set_num_threads``), with gradients on whatever the caller's
    mode (a serving process's ``torch.set_grad_enabled(False)``, a ``torch.no_grad()`` block: its steps would update
    nothing; a ``torch.inference_mode()`` block, whose tensors autograd cannot save), and draws its initial weights
    after seeding torch's global generator with ``train.seed``; the caller gets its thread count, grad mode and
    global random state back when ``fn`` returns or raises: a library call does not leave the process's torch
    changed."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        try:
            with training_torch_state(devices):
                return fn(*args, **kwargs)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
    return wrapper


_held = threading.local()  # the ExitStack of the train / personalize call running in this thread


def _holds_run_folder(fn):
    """``fn`` (train, personalize) makes and locks its run folder with :func:`_lock_run_folder` (after the checks
    that refuse a call before any work); the lock is released, and the frame cache of its training data
    (:func:`_load_training_data`) emptied, when ``fn`` returns or raises. An error before the first step (no
    checkpoint, no log line) removes the ``config.yaml`` the call wrote there, and so a folder it made. A
    KeyboardInterrupt outside the steps (while the data is read and the model set up), which
    :meth:`_Loop.noting_interrupt` did not describe, says what the run folder keeps, as one inside them does; after a
    phase's steps began (between phases, after the last checkpoint), in the loop's words (:meth:`_Loop.interrupted`)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        outer = getattr(_held, "stack", None)
        with ExitStack() as stack:
            _held.stack = stack
            try:
                return fn(*args, **kwargs)
            except Exception:
                # refused before its first step (a frame that cannot be read, a device error): the config this call
                # wrote goes, so that a folder it made is removed with its lock, not left looking like a run to resume
                config = getattr(stack, "fresh_config", None)
                if config is not None and not any((config.parent / n).exists() for n in (CHECKPOINT_NAME, LOG_NAME)):
                    config.unlink(missing_ok=True)
                raise
            except KeyboardInterrupt as exc:
                out, loop = getattr(stack, "run_folder", None), getattr(stack, "loop", None)
                if not exc.args and loop is not None:  # after a phase's steps began: not 'before its first step'
                    exc.args = (loop.interrupted(),)
                elif not exc.args and out is not None:
                    ckpt = out / CHECKPOINT_NAME
                    exc.args = (f"before its first step: {ckpt} is as it was; rerun the same command to resume from it"
                                if ckpt.exists() else
                                f"before its first step: no checkpoint was written yet in {out}; a rerun starts again",)
                raise
            finally:
                _held.stack = outer
    return wrapper


def _lock_run_folder(out: Path) -> None:
    """Make the run folder ``out`` and hold ``out/.lock`` (:func:`~fastminerf.data.writer.folder_locked`) until the
    :func:`_holds_run_folder` call ends (the folder, made by it, is removed then when the call left only the lock); :class:`CheckpointError` naming the folder when it is a file, or naming it
    and the holder's process id when another training or personalisation holds it."""
    if out.exists() and not out.is_dir():  # a file's name typed for the folder's: mkdir's bare 'File exists'
        raise CheckpointError(f"run folder {out} is a file, not a folder: give the folder the run goes in (--out)")
    check_folder(out, "the run", CheckpointError)  # a shared, read-only run: refused here, not at its config.yaml
    # made here, and removed again with the lock when the call is refused before it writes there (--data TYPO)
    _held.stack.run_folder = out  # what an interrupt before the first step names
    _held.stack.enter_context(folder_locked(out, lambda holder: CheckpointError(
        f"run folder {out} is in use by another training or personalisation{holder}: wait for it to end, or use "
        "another --out folder"), make=True))


def _load_training_data(paths: Sequence[str], cfg: RunConfig) -> MultiIdentityDataset:
    """The ``train`` split of ``paths`` with ``cfg``'s frame cache (an error map finer than its frames refused,
    :func:`~fastminerf.data.rays.check_error_resolution`), emptied when the :func:`_holds_run_folder` call
    ends, however it ends: a notebook keeps an interrupted cell's traceback (for ``%debug``), and with it the call's
    frames, whose cache of decoded frames (up to ``data.cache_bytes``) would stay in memory beside the one a rerun
    decodes."""
    dataset = load_dataset(paths, splits=("train",), cache_frames=cfg.data.cache_frames, cache_bytes=cfg.data.cache_bytes)
    _held.stack.callback(dataset.cache.clear)
    # the sampler's check, before the model is built and the run folder written: the frames' size is known now
    check_error_resolution(dataset.table("train"), cfg.sampler.error_resolution, "sampler.error_resolution")
    return dataset


@_leaves_torch_state
@_holds_run_folder
def train(cfg: RunConfig, data_paths: Union[PathLike, Sequence[PathLike]], out_dir: PathLike,
          progress: Optional[ProgressFn] = None, monitor: Optional[MonitorFn] = None,
          same_pixels: bool = False) -> TrainResult:
    """Train one model on every identity of ``data_paths`` (their ``train`` split), in ``out_dir``.

    Runs on ``cfg.train.threads`` torch threads when set and seeds torch's global generator with ``cfg.train.seed``;
    the caller's thread count and global random state are given back at the end.

    Writes ``config.yaml``, ``checkpoint.pt``, ``log.jsonl`` and ``curve.png`` (module docstring). If ``out_dir``
    already holds a checkpoint, resumes from it (same data and config required, except the keys in :data:`RESUME_MAY_CHANGE`).
    Stops after ``cfg.train.steps`` steps or ``cfg.train.max_seconds`` training seconds, whichever comes first.

    Args:
        cfg: the run config (:func:`fastminerf.config.load_config`).
        data_paths: identity folders and/or dataset roots.
        out_dir: the run folder (created).
        progress: called at every logging step with the log record plus ``total_steps`` and ``max_seconds``.
        monitor: called at every logging step as ``monitor(model, record)`` with the model in eval mode and gradients
            off (e.g. to evaluate val PSNR); returning True stops training there (the checkpoint is written as at
            any end). Its time is not counted in the training seconds.
        same_pixels: on resume, take training files whose bytes differ from those trained on as the same pixels
            re-encoded (PNGs re-saved or optimised): checkpoints fingerprint files, not decoded pixels, so only the
            caller can say so. Names, cameras and expressions are still compared, and the checkpoint then records
            the new files.

    Raises:
        DatasetError: a bad dataset, or resuming with data in another expression space. CheckpointError: an
        unreadable checkpoint, or resuming with other data (identities, their training frames, expression length) or
        another config. TrainingDiverged: a step's loss, data or the weights to be checkpointed turned NaN or
        infinite; the run folder keeps its last finite checkpoint.
    """
    device = resolve_device(a_run_config(cfg).train.device)  # before any work: a device that cannot run is refused
    _check_backends(cfg, device)
    paths = [str(p) for p in as_paths(data_paths, "data_paths", IDENTITY_PATHS)]
    out = Path(needs(out_dir, PATH_TYPES, "out_dir", RUN_OUT))
    _lock_run_folder(out)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    dataset = _load_training_data(paths, cfg)
    keys, files, sizes = frame_keys(dataset), frame_files(dataset), frame_sizes(dataset)
    ckpt_path = out / CHECKPOINT_NAME
    data = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    saved_cfg: Optional[RunConfig] = None  # the config a resumed run was trained with
    if data is not None:
        _check_kind(data, "train", ckpt_path)
        if not _resumable(data):
            raise CheckpointError(f"{ckpt_path} holds a model saved by save_run (no optimizer or sampler state): train "
                                  "does not continue it; train into another folder, or personalize from it")
        saved_cfg, model = _model_from_checkpoint(data, ckpt_path, backends=cfg.model)  # backends may change
        _refuse_non_finite(model, ckpt_path)
        _check_resume_config(saved_cfg, cfg, ckpt_path, resume=f"to continue it, give its own config (--config "
                             f"{out / CONFIG_NAME}; its steps, time limit, intervals and threads may still change), or ")
        if list(data["identity_names"]) != dataset.identities:
            gone = [n for n in data["identity_names"] if n not in dataset.identities]
            extra = [n for n in dataset.identities if n not in data["identity_names"]]
            raise CheckpointError(f"{ckpt_path} was trained on {identity_list(data['identity_names'])}; --data now has "
                                  f"{identity_list(dataset.identities)} (missing: {identity_list(gone)}, new: "
                                  f"{identity_list(extra)}); " + (
                                      "resume with the same data" if gone else  # new people prepared into its root
                                      "to continue it, give the folders of the identities it was trained on (--data "
                                      + " ".join(str(d) for n, d in zip(dataset.identities, dataset.identity_dirs)
                                                 if n not in extra)
                                      + "); to add the new ones, personalize from it"))
        moved = _frames_moved(model.frame_identity, dataset.table("train").identity, dataset.identities)
        if moved:
            raise CheckpointError(f"{ckpt_path} was trained on {moved}; resume with the same data")
        if model.expression_dim != dataset.expression_dim:
            raise CheckpointError(f"{ckpt_path} was trained with expressions of length {model.expression_dim}; the data "
                                  f"has length {dataset.expression_dim}; resume with the same data")
        check_expression_space(model.expression_space, dataset, "the data", str(ckpt_path))
        changed = _frames_changed(data.get("frame_keys"), None if same_pixels else data.get("frame_files"), keys,
                                  files, dataset, saved_sizes=data.get("frame_sizes"), same_pixels_hint=True)
        if changed:
            raise CheckpointError(f"{ckpt_path} was trained on other frames: {changed}; resume with the same data")
    recorded = _recorded_config(cfg, saved_cfg, data)
    setup_seconds = 0.0  # carving counts as training time
    if data is None:
        model = _seeded_model(cfg, dataset)  # train's own draws continue from the seeded stream (the caller's is given back)
        start = time.perf_counter()
        hull = view_hull(model, dataset) if cfg.model.occ_carve and cfg.model.backbone == "fast" else None
        if hull is not None:  # space no training frame shows the person in is never sampled
            model.occupancy.carve(hull)
        if model.torso is not None:
            start_torso(model, dataset)
        setup_seconds = time.perf_counter() - start
    model.to(device)
    ran = {str(device): model.backends(device)}  # what computes each part here, kept in the checkpoint (info)
    _write_config(out, recorded)
    sampler = RaySampler(dataset, "train", **asdict(cfg.sampler))
    occ_gen = torch.Generator(device=device).manual_seed(cfg.train.seed + 1)
    base_lrs = [cfg.train.lr, cfg.train.code_lr]
    optimizer = build_optimizer(cfg, model)
    average = WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None

    def payload() -> dict:
        return dict(_model_record("train", recorded, model, out, paths, keys, files, sizes, ran),
                    optimizer=optimizer.state_dict(),
                    step=loop.step,
                    seconds=loop.seconds, sampler=_state(sampler), occ_generator=occ_gen.get_state(),
                    torch_rng=_global_rng(device),
                    ema=average.state_dict() if average is not None else None)

    loop = _Loop(cfg, model, sampler, out, progress, payload, occ_gen, None, monitor=monitor, average=average)
    resumed = 0
    if data is not None:
        _restore_loop(data, ckpt_path, sampler, occ_gen, average, optimizer)
        loop.step, loop.seconds = int(data["step"]), float(data.get("seconds", 0.0))
        resumed = loop.resumed_step = loop.step
        _resume_log(loop, data)
    else:
        loop.seconds = setup_seconds
        if loop.log.exists():
            loop.log.unlink()  # a log without a checkpoint belongs to a run that never saved: start it again
    loop.run(optimizer, base_lrs, cfg.train.steps, cfg.train.steps, cfg.train.max_seconds, "train", cfg.train.steps)
    return replace(_finish(loop, model, average, resumed), notes=_data_notes(dataset))


def _data_notes(dataset: MultiIdentityDataset, model_space: Optional[str] = None) -> Tuple[str, ...]:
    """:attr:`TrainResult.notes` of the data trained on: identities of no named expression space beside named ones, or
    (personalize: ``model_space``, the generic model's) added to a model of a named space."""
    names = dataset.unnamed_space if dataset.expression_space else list(dataset.identities) if model_space else []
    if not names:
        return ()
    one = len(names) == 1
    space, whose = (dataset.expression_space, "the others'") if dataset.expression_space else (model_space, "the model's")
    return (f"{identity_list(names)} name{'s' if one else ''} no expression_space in {'its' if one else 'their'} "
            f"transforms files: taken to be in {whose} expression space '{space}', the expression length alone "
            f"checked, and the run records that space for {'it' if one else 'them'}. If another tracker or basis wrote "
            f"{'its' if one else 'their'} expressions, expression transfer between {'it' if one else 'them'} and the "
            f"others moves the face at random: write that tracker's own expression_space into the files "
            f"(docs/DATASET.md), which refuses the mix",)


def _adopted_space_note(names: List[str], space: str) -> str:
    """personalize's note when new people of a named expression space join a model that recorded none: the
    model's people (``names``) are taken into ``space``, as :func:`_data_notes` says of train's mix."""
    one = len(names) == 1
    return (f"the model's {identity_list(names)} named no expression_space in {'its' if one else 'their'} transforms "
            f"files: taken to be in the new identities' expression space '{space}', the expression length alone "
            f"checked, and the run records that space (data of another space is now refused). If another tracker or "
            f"basis wrote {'its' if one else 'their'} expressions, expression transfer between "
            f"{'it' if one else 'them'} and the new identities moves the face at random")


# ----------------------------------------------------------------------------------------------------------
# Personalisation


@_leaves_torch_state
@_holds_run_folder
def personalize(generic_run: PathLike, data_paths: Union[PathLike, Sequence[PathLike]], out_dir: PathLike,
                steps: Optional[int] = None, max_seconds: Optional[float] = None,
                progress: Optional[ProgressFn] = None, monitor: Optional[MonitorFn] = None,
                overrides: Union[str, Sequence[str]] = (), same_pixels: bool = False) -> TrainResult:
    """Add the identities of ``data_paths`` (a short clip each: their ``train`` split) to a trained generic model,
    or fine-tune identities it already knows on their own frames.

    New identities, two phases: first only the new identity codes and frame codes are optimised
    (``train.personalize_code_fraction`` of the steps, or of ``max_seconds`` where the limit would end the run
    before those steps; the shared field is frozen, so the new person is placed in the
    learned identity space), then the codes and the shared weights named by ``train.personalize_tune`` (by default the
    hash grid only: the heads and the conditioning keep what the generic identities taught them) are fine-tuned, the
    shared ones at ``train.personalize_lr_factor`` times their learning rate. The occupancy grid keeps what it learned
    and is updated from the new identities' conditions (without the all-cells warm-up).

    Known identities (every name in ``data_paths`` already in the model, with the training frames it was trained on):
    MI-NeRF's per-identity fine-tuning after generic training. Only the second phase runs (their codes are trained):
    the shared weights named by ``train.personalize_tune`` and their codes learn their frames alone, so the result
    renders them better and the model's other identities worse (its checkpoint lists the fine-tuned ones under
    ``refined``).

    The result is a full run in ``out_dir`` (all identities), loadable with :func:`load_run`; rerunning with the same
    ``out_dir`` resumes. Its random draws come from ``train.seed`` (torch's global generator is seeded with it, and the
    caller's state given back), so a step-limited personalisation is deterministic whatever the caller drew before.

    Args:
        generic_run: folder of a run made by :func:`train`.
        data_paths: identity folders: all new to the model, or all known to it.
        out_dir: the new run folder.
        steps: total personalisation steps (default ``train.personalize_steps`` of the generic run's config).
        max_seconds: time limit in training seconds (default ``train.max_seconds`` of ``overrides``, else none: the
            generic run's own limit is not this personalisation's).
        progress, monitor: as for :func:`train` (the monitor sees the model with every identity, old and new).
        overrides: ``key=value`` changes (a list, or one string) of the generic run's ``train.``, ``sampler.`` or
            ``data.`` settings for this personalisation (e.g. ``train.personalize_tune=all``); the model's settings are
            the generic run's.
        same_pixels: as for :func:`train`, for the files of known identities fine-tuned (against the generic run's)
            and of a resumed personalisation.
    """
    paths = [str(p) for p in as_paths(data_paths, "data_paths", IDENTITY_PATHS)]
    needs(generic_run, PATH_TYPES, "generic_run", RUN_PATH)  # not its loaded model: the run is continued
    needs(out_dir, PATH_TYPES, "out_dir", RUN_OUT)  # before the generic run is loaded
    cfg, model, meta = load_run(generic_run)
    _refuse_non_finite(model, meta["checkpoint"])
    unfinished = _unfinished_generic(generic_run, cfg, meta)  # before any work: one being trained now is refused
    cfg = personalize_config(cfg, overrides, steps, max_seconds)
    steps, max_seconds = cfg.train.personalize_steps, cfg.train.max_seconds
    device = resolve_device(cfg.train.device)  # before any work: a device that cannot run is refused at once
    # and, as in train(), a backend that cannot run on it: the loaded model's (load_run puts auto in place of tcnn
    # and nerfacc, which compute the same functions), so a run trained through them personalises on a CPU too
    _check_backends(replace(cfg, model=_anywhere(cfg.model)), device)
    if cfg.train.threads:  # as train() does: the generic run's setting, or this personalisation's override
        torch.set_num_threads(cfg.train.threads)
    out = Path(out_dir)
    _lock_run_folder(out)
    dataset = _load_training_data(paths, cfg)
    check_expression_space(model.expression_space, dataset, "the new identities", str(generic_run),
                           model.expression_dim)
    generic_space, generic_names = model.expression_space, list(model.identity_names)
    known = [n for n in dataset.identities if n in model.identity_names]
    spelt = {unicodedata.normalize("NFC", n): n for n in model.identity_names}
    for name, folder in zip(dataset.identities, dataset.identity_dirs):  # 'Zoë' from a Mac's folder (NFD)
        same = spelt.get(unicodedata.normalize("NFC", name))
        if name not in known and same is not None:
            raise ValueError(f"{folder}: identity '{name}' is the generic model's '{same}' written with other Unicode "
                             f"code points ({ascii(name)} against {ascii(same)}: accents decomposed, as in a folder "
                             "copied from a Mac, or composed); it would be added as a second person of the same name. "
                             "Rename the folder to the model's spelling to fine-tune that person, or to another name")
    if known and len(known) != len(dataset.identities):
        new_ones = [n for n in dataset.identities if n not in known]
        raise ValueError(f"identities {known} are already in the generic model {generic_run} and {new_ones} are not; "
                         f"add new identities and fine-tune known ones in two runs ({_NEW_PERSON_HINT})")
    table = dataset.table("train")
    keys, files, sizes = frame_keys(dataset), frame_files(dataset), frame_sizes(dataset)
    generic_keys, generic_files, generic_sizes = _saved_fingerprints(meta)
    ckpt_path = out / CHECKPOINT_NAME
    if ckpt_path.exists() and os.path.samefile(ckpt_path, meta["checkpoint"]):  # not a resume: the run it starts from
        resume = f" (to continue it, give the run it started from: --run {meta['generic_run']})" if meta["generic_run"] else ""
        raise CheckpointError(f"{ckpt_path} is the checkpoint of {generic_run}, the run this personalisation starts "
                              f"from; a personalisation writes a new run: choose another --out folder{resume}")
    data = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    saved_cfg: Optional[RunConfig] = None  # the config a resumed personalisation was trained with
    first_id = model.num_identities
    if data is not None:  # resumed: the same identities, and the settings it started with (or only harmless changes)
        _check_kind(data, "personalize", ckpt_path)
        started = list(data["identity_names"])[:first_id]
        if started != model.identity_names:  # another generic model: its data folders would be recorded for these
            raise CheckpointError(f"{ckpt_path} started from a model of identities {started}, not from {generic_run} "
                                  f"({model.identity_names}); resume with the generic run it started from, or use "
                                  "another --out folder")
        saved_cfg, model = _model_from_checkpoint(data, ckpt_path, anywhere=True)  # as the generic run was loaded
        _refuse_non_finite(model, ckpt_path)
        refined, added = list(data.get("refined", [])), list(data["identity_names"])[first_id:]
        if (refined if known else added + refined) != dataset.identities:
            raise CheckpointError(f"{ckpt_path} fine-tuned {refined} and added {added}, not "
                                  f"{'fine-tuned' if known else 'added'} {dataset.identities}; use another --out folder")
        _check_resume_config(saved_cfg, cfg, ckpt_path, PERSONALIZE_RESUME_MAY_CHANGE)
    if known:  # fine-tune known identities on their own frames: their codes are trained, no code-only phase
        identity_map, frame_map = _known_maps(model.identity_names, model.frame_identity, dataset, table,
                                              str(generic_run))
        if data is not None and data.get("frame_files") is not None:  # a resume: the files it fine-tuned on
            generic_files = data["frame_files"].clone()
        changed = _frames_changed(generic_keys[frame_map], None if same_pixels else generic_files[frame_map], keys,
                                  files, dataset, saved_sizes=generic_sizes[frame_map], same_pixels_hint=True)
        if changed:
            raise DatasetError(f"{changed}: the model {generic_run} was trained on other frames; fine-tune a known "
                               f"identity with the data it was trained on ({_NEW_PERSON_HINT})")
        generic_files = generic_files.clone()
        generic_files[frame_map] = files  # the files fine-tuned on (the same, or re-encoded: same_pixels)
    else:
        if data is not None:
            first_frame = model.frame_identity.numel() - len(table)
            saved = model.frame_identity.cpu()  # the added people's frame codes come last, in the table's order
            moved = _frames_moved(saved[saved >= first_id] - first_id, table.identity, dataset.identities)
            if moved:
                raise CheckpointError(f"{ckpt_path} added {moved}; resume with the same data, or use another --out "
                                      "folder")
            saved_keys = data.get("frame_keys")
            saved_files, saved_sizes = data.get("frame_files"), data.get("frame_sizes")
            changed = _frames_changed(None if saved_keys is None else saved_keys[first_frame:],
                                      None if saved_files is None or same_pixels else saved_files[first_frame:], keys,
                                      files, dataset, saved_sizes=None if saved_sizes is None else saved_sizes[first_frame:],
                                      same_pixels_hint=True)
            if changed:
                raise CheckpointError(f"{ckpt_path} added other frames: {changed}; resume with the same data, or use "
                                      "another --out folder")
        else:
            first_frame = model.add_identities(dataset.identities, torch.from_numpy(table.identity) + first_id)
            if model.expression_space is None:  # as train takes people of no named space into the others' space
                model.expression_space = dataset.expression_space
            hull = view_hull(model, dataset, keep_unseen=False)
            if hull is not None:  # space the generic identities' carving removed but the new ones show
                model.occupancy.restore(hull)
            if model.torso is not None:
                start_torso(model, dataset, identity_offset=first_id)
        identity_map = torch.arange(len(dataset.identities)) + first_id
        frame_map = torch.arange(len(table)) + first_frame
    model.to(device)
    ran = {str(device): model.backends(device)}  # what computes each part here, kept in the checkpoint (info)
    recorded = _recorded_config(cfg, saved_cfg, data, "personalize_steps")
    _write_config(out, recorded)
    sampler_cfg = replace(cfg.sampler, seed=cfg.sampler.seed + 1)
    sampler = RaySampler(dataset, "train", **asdict(sampler_cfg))
    occ_gen = torch.Generator(device=device).manual_seed(cfg.train.seed + 2)
    torch.manual_seed(cfg.train.seed + 2)  # the nerface backbone's jitter: from the run's seed, not the caller's state
    fraction = 0.0 if known else cfg.train.personalize_code_fraction
    code_steps = min(steps, max(1, int(round(steps * fraction)))) if fraction > 0 else 0  # steps=0: none
    codes = _per_identity_params(model)
    code_ids = {id(p) for p in codes}
    field_params = [p for p in model.parameters() if id(p) not in code_ids]
    tuned = _personalize_tuned(cfg, model, field_params)

    state = dict(optimizer=None, phase="codes")
    # the generic run's data where it is now (it may have moved with the run; not there: recorded as it was), and
    # the new people's
    data_paths = [p for p, _ in run_data_folders(meta, strict=False)] + ([] if known else _where(paths))

    def payload() -> dict:
        record = _model_record("personalize", recorded, model, out, data_paths,
                               generic_keys if known else torch.cat([generic_keys, keys]),
                               generic_files if known else torch.cat([generic_files, files]),
                               generic_sizes if known else torch.cat([generic_sizes, sizes]), ran)
        return dict(record, generic_run=_where([generic_run])[0], generic_run_relative=_relative([generic_run], out)[0],
                    refined=list(dataset.identities) if known else [], added=[] if known else list(dataset.identities),
                    optimizer=state["optimizer"].state_dict(), phase=state["phase"], step=loop.step,
                    seconds=loop.seconds, sampler=_state(sampler), occ_generator=occ_gen.get_state(),
                    torch_rng=_global_rng(device),
                    ema=average.state_dict() if average is not None else None)

    average = WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    loop = _Loop(cfg, model, sampler, out, progress, payload, occ_gen, 0, identity_map=identity_map,
                 frame_map=frame_map, monitor=monitor, average=average)
    restore = None
    if data is not None:
        loop.step, loop.seconds = int(data["step"]), float(data.get("seconds", 0.0))
        _restore_loop(data, ckpt_path, sampler, occ_gen, average)  # the optimizer: once its phase is known
        restore = data.get("optimizer")
        _resume_log(loop, data)
    elif loop.log.exists():
        loop.log.unlink()
    resumed = loop.step
    if data is not None:
        loop.resumed_step = loop.step
    restore_phase = str(data.get("phase", "codes")) if data is not None else None
    # A time limit that would end the run inside the code-only phase (the generic model plus codes, no shared weight
    # tuned) ends that phase at its fraction of the limit instead, leaving the rest to the tuning; a phase whose steps
    # fit (at the rate it runs, with the tuning's share left) takes them all, as without a limit. A resumed run goes
    # on in the phase it stopped in (the first may have ended by time before code_steps).
    code_seconds = max_seconds * fraction if max_seconds is not None and code_steps else None
    if loop.step < code_steps and restore_phase != "all":
        for p in field_params:
            p.requires_grad_(False)
        opt = _optimizer([dict(params=codes, lr=cfg.train.code_lr)])
        state["optimizer"], state["phase"] = opt, "codes"
        if data is not None and restore_phase == "codes":
            _restore_optimizer(opt, restore, ckpt_path)
        first, start_seconds = loop.step, loop.seconds
        loop.run(opt, [cfg.train.code_lr], code_steps, steps, code_seconds, "codes", steps)
        if code_seconds is not None and first < loop.step < code_steps and not loop.stopped:
            rate = (loop.seconds - start_seconds) / (loop.step - first)  # seconds a code-only step
            if loop.seconds + rate * (code_steps - loop.step) <= max_seconds * (1 - fraction):
                loop.run(opt, [cfg.train.code_lr], code_steps, steps, max_seconds, "codes", steps)
        for p in field_params:
            p.requires_grad_(True)
    if not loop.stopped:
        lrs = [cfg.train.lr * cfg.train.personalize_lr_factor, cfg.train.code_lr]
        tuned_ids = {id(q) for q in tuned}
        for p in field_params:  # shared weights outside train.personalize_tune stay as the generic run left them
            p.requires_grad_(id(p) in tuned_ids)
        opt = _optimizer([dict(params=tuned, lr=lrs[0]), dict(params=codes, lr=lrs[1])])
        state["optimizer"], state["phase"] = opt, "all"
        if data is not None and restore_phase == "all":
            _restore_optimizer(opt, restore, ckpt_path)
        loop.run(opt, lrs, steps, steps, max_seconds, "all", steps)
        for p in field_params:
            p.requires_grad_(True)
    notes = _data_notes(dataset, model.expression_space) + unfinished
    if known == [] and generic_space is None and model.expression_space is not None:
        notes += (_adopted_space_note(list(generic_names), model.expression_space),)
    return replace(_finish(loop, model, average, resumed), notes=notes)


def _unfinished_generic(run: PathLike, cfg: RunConfig, meta: dict) -> Tuple[str, ...]:
    """personalize's look at the run it starts from (``cfg``, ``meta``: :func:`load_run`'s): :class:`CheckpointError`
    naming it and the process when a ``train`` or ``personalize`` writes it now (the personalisation would start from
    whichever checkpoint it read, and record as its start a folder that goes on to hold another model); the note of
    :attr:`TrainResult.notes` when it stopped before its steps and its time limit (interrupted: the same command
    continues it); else none."""
    total = cfg.train.personalize_steps if meta["kind"] == "personalize" else cfg.train.steps
    at = f"its checkpoint is at step {meta['step']} of {total}"
    writer = folder_writer(Path(meta["checkpoint"]).parent)
    if writer is not None:
        raise CheckpointError(f"{run} is being trained now (by process {writer}; {at}): a personalisation would start "
                              f"from whichever checkpoint it read, and {run} would then hold another model; wait for "
                              "its training to end, or personalise from a copy of the folder")
    limit = cfg.train.max_seconds
    if meta["resumable"] and meta["step"] < total and (limit is None or meta["seconds"] < limit):
        return (f"the generic run {run} is not finished ({at}, stopped before its steps or time limit): this "
                "personalisation started from that model; to start from the finished one, continue its training "
                "(the same command), then personalise into another --out folder",)
    return ()


_NEW_PERSON_HINT = ("identities are named by their folders: a new person whose folder has the name of one the model "
                    "knows is taken for that one; give a new person a folder name the model does not have")


def _known_maps(names: Sequence[str], frame_identity: torch.Tensor, dataset: MultiIdentityDataset, table, run: str,
                advice: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """For identities a model already knows (its ``names`` and ``frame_identity``, the identity of each frame code):
    the model's id of each dataset identity, and the model's frame code of each row of the dataset's ``train`` table
    (a person's frames in the order the generic run saw them). A person with another number of training frames is a
    DatasetError ending in ``advice`` (default: fine-tune with the data trained on)."""
    names = list(names)
    identity_map = torch.tensor([names.index(n) for n in dataset.identities], dtype=torch.long)
    frame_map = torch.empty(len(table), dtype=torch.long)
    for d, name in enumerate(dataset.identities):
        rows = torch.from_numpy(np.flatnonzero(table.identity == d))
        codes = torch.nonzero(frame_identity.cpu() == identity_map[d]).flatten()
        if len(codes) != len(rows):
            raise DatasetError(f"{dataset.identity_dirs[d]}: the model {run} was trained on "
                               f"{len(codes)} training frames of {name!r}, this data has {len(rows)}; "
                               + (advice or f"fine-tune a known identity with the data it was trained on "
                                            f"({_NEW_PERSON_HINT})"))
        frame_map[rows] = codes
    return identity_map, frame_map


def _finish(loop: _Loop, model: MINeRF, average: Optional[WeightAverage], resumed: int) -> TrainResult:
    """The last checkpoint (unless the loop's own trigger just wrote it), then the model as :func:`load_run` would
    give it (the weight average, if kept)."""
    if loop.saved_step != loop.step:
        with loop.noting_interrupt():
            loop.checkpoint()
    if not loop.log.is_file():  # no step logged (a time limit spent in the setup): the folder still holds its log
        with errors_naming(loop.log), open(loop.log, "a"):
            pass
    if average is not None:
        average.copy_to(model)
    model.eval()
    return TrainResult(out_dir=loop.out, step=loop.step, seconds=loop.seconds, loss=loop.loss, psnr=loop.psnr,
                       resumed_from=resumed, model=model, curve=write_curve(loop.out))


def _per_identity_params(model: MINeRF) -> List[torch.nn.Parameter]:
    """The per-identity state, optimised at ``train.code_lr`` and alone in personalisation's first phase: identity
    and frame codes, and the torso layer's textures (and frame shifts) where the model has one."""
    params = [model.identity_codes.weight, model.frame_codes.weight]
    params += [model.torso.texture] if model.torso is not None else []
    return params + ([model.torso_shift] if model.torso_shift is not None else [])


PERSONALIZE_MAY_SET = ("train.", "sampler.", "data.")
"""Config sections a personalisation may change (the model is the generic run's)."""


def personalize_config(generic: RunConfig, overrides: Union[str, Sequence[str]] = (), steps: Optional[int] = None,
                       max_seconds: Optional[float] = None) -> RunConfig:
    """The settings :func:`personalize` runs with, from the generic run's config ``generic``: its ``overrides``
    (``train.*``, ``sampler.*``, ``data.*`` only), ``steps`` (default ``train.personalize_steps``) and ``max_seconds``
    (default the overrides' ``train.max_seconds``, else none: not the generic run's limit). A caller checks them
    with it before any work (``fastminerf personalize`` before its progress bar).

    Raises:
        ConfigError: an override of another section, or a value the config refuses (steps < 0, a negative limit).
    """
    cfg = _personalize_config(replace(generic, train=replace(generic.train, max_seconds=None)), overrides)
    steps = int(steps if steps is not None else cfg.train.personalize_steps)
    max_seconds = max_seconds if max_seconds is not None else cfg.train.max_seconds
    return replace(cfg, train=replace(cfg.train, personalize_steps=steps, max_seconds=max_seconds))


def _personalize_config(cfg: RunConfig, overrides: Union[str, Sequence[str]]) -> RunConfig:
    from .config import ConfigError, apply_overrides, check_run

    overrides = as_list(overrides)
    bad = [o for o in overrides if not o.split("=", 1)[0].strip().startswith(PERSONALIZE_MAY_SET)]
    if bad:
        raise ConfigError(f"personalisation cannot change {bad}: only train.*, sampler.* and data.* settings may "
                          "change (the model is the generic run's)")
    return check_run(apply_overrides(cfg, list(overrides)))  # also a saved run's own value, which no override set


def _personalize_tuned(cfg: RunConfig, model: MINeRF, field_params: List[torch.nn.Parameter]) -> List[torch.nn.Parameter]:
    """The shared parameters the second personalisation phase optimises (``train.personalize_tune``)."""
    from .nn import HashGridEncoding

    grids = [p for m in model.field.modules() if isinstance(m, HashGridEncoding) for p in m.parameters()]
    if cfg.train.personalize_tune == "all" or not grids:  # the nerface backbone has no grid
        return field_params
    return grids
