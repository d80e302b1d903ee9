"""Speech to expressions: a small network that hears a recording and says, frame by frame, which expression the
face makes while it speaks, so that any identity of a model can be rendered saying any recording (lip sync).

MI-NeRF drives its shared face field with expressions; what speaks is a mapping from sound to those
expressions, learned from the prepared videos themselves: every frame of a prepared video carries its
``time`` in the video's ``audio.wav`` and its ``expression`` (DATASET.md), so the pairs (sound around ``time``,
``expression``) are training data with no other labels. Because every identity of one ``prepare`` shares one
expression space, one mapping serves them all, and it is trained on all of them at once.

The pieces, functional first:

- :func:`log_mel`: a recording (16 kHz) to 40 log-mel bands every 10 ms (25 ms Hann windows), each band
  normalised over the recording (so loudness and microphone matter less than how the spectrum moves).
- :func:`frame_windows`: for each video frame, the bands from ``context`` columns before its time to
  ``context`` after (0.2 s each side by default: mouths move ahead of and behind their sounds).
- :class:`SpeechToExpression`: four 1-D convolutions over time (three of them strided) and two linear layers,
  from a window to the ``E`` expression coefficients (about 100,000 parameters).
- :func:`train_speech`: Adam on the squared error of the coefficients over the frames of the ``fit`` splits,
  with noise and time jitter on the bands; :func:`speech_metrics` scores held-out frames: R^2 of the
  coefficients against always predicting the training mean, and the correlation of the mouth's opening
  (:func:`mouth_opening`) between prediction and tracking.
- :func:`predict_expressions`: a recording to one expression per video frame at ``fps``: the network's
  prediction at every mel column, smoothed over time (``smooth`` seconds) and read at each frame's time, so the
  mouth makes the same motion at the same instants whatever the frame rate.
- :func:`split_expressions`: the expressions a split's frames would have if only their soundtrack were known,
  for rendering them and comparing with the real frames (``fastminerf eval --speech``).
- :func:`save_speech_model` / :func:`load_speech_model`: plain tensors and data (``weights_only``), written
  atomically, with the expression space the model speaks in.

Expressions not carried by sound (blinks, brows, gaze) come out near their average: the network predicts what
the sound says and the mean of the rest. Library code: no printing.

Dimension letters: B frames, T mel columns, M mel bands, E expression size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .audio import Audio, AudioError, audio_absence, decode_sound, identity_audio, read_wav
from .config import PATH_TAKEN, PATH_TYPES, SpeechConfig, as_list, check_fps, needs, some_of
from .data.dataset import a_dataset
from .data.writer import check_folder
from .model import built_in_float32, training_torch_state

__all__ = [
    "MEL_BANDS",
    "SPEECH_RATE",
    "SpeechClip",
    "SpeechClips",
    "SpeechConfig",
    "SpeechError",
    "SpeechModel",
    "SpeechToExpression",
    "check_speech_out",
    "check_speech_space",
    "frame_windows",
    "load_speech",
    "load_speech_clips",
    "load_speech_model",
    "log_mel",
    "mel_filterbank",
    "mouth_opening",
    "predict_expressions",
    "save_speech_model",
    "speech_clips",
    "speech_metrics",
    "split_expressions",
    "train_speech",
]

PathLike = Union[str, Path]
ProgressFn = Callable[[int, int, float], None]

SPEECH_RATE = 16000
"""Sample rate the features are computed at (recordings at other rates are resampled by ffmpeg)."""
HOP = 160
"""Samples between mel columns (10 ms)."""
WINDOW = 400
"""Samples in one analysis window (25 ms)."""
N_FFT = 512
MEL_BANDS = 40
DYNAMIC_RANGE = 1e-5
"""Mel energies below this fraction of the recording's loudest (50 dB down) count as silence, so that digital
silence and a quiet room give the network the same input."""
COLUMNS_PER_SECOND = SPEECH_RATE / HOP
FORMAT = "fastminerf-speech"
FORMAT_VERSION = 2
"""2: the config's ``smooth`` is in seconds. Version 1 counted it in video frames and recorded no frame rate; its
files are read as frames at :data:`VERSION_1_FPS`."""
VERSION_1_FPS = 25.0
"""The frame rate a version-1 file's ``smooth`` is read at: that of prepare's and synth's layouts by default, at
which those models were learned and rendered (``smooth`` 1.0 frame: 0.04 s)."""

# Inner-lip landmark pairs of mediapipe's face mesh (upper, lower): the middle and a point either side of it.
_INNER_LIPS = ((13, 14), (82, 87), (312, 317))


class SpeechError(ValueError):
    """Speech data or a speech model that cannot be used; the message names the file, the identity or the key."""


# ------------------------------------------------------------------------------------------------ features


def load_speech(path: PathLike) -> Audio:
    """A recording at :data:`SPEECH_RATE`, mono: a 16 kHz PCM WAV is read as it is; any other file ffmpeg can
    decode (WAV at another rate, mp3, m4a, a video's sound track) is converted through the ffmpeg that
    imageio-ffmpeg bundles.

    Raises:
        SpeechError: naming the file when it is missing, holds no sound (less than one analysis window, which
            :func:`log_mel` could not hear), or cannot be decoded.
    """
    p = Path(path)
    if p.is_dir():
        raise SpeechError(f"{p} is a folder, not a recording")
    if not p.is_file():
        raise SpeechError(f"{p}: no such file")
    try:
        audio = read_wav(p)
        if audio.rate == SPEECH_RATE:
            return _heard(p, audio)
    except AudioError:
        pass
    try:
        audio = decode_sound(p, SPEECH_RATE, mono=True)
    except AudioError as exc:  # "{p}: cannot read its sound (why)"
        raise SpeechError(str(exc)) from None
    return _heard(p, audio)


def _heard(p: Path, audio: Audio) -> Audio:
    """``audio`` read from ``p``, refused by name when it is too short to hear (log_mel's own error could not name
    the file)."""
    if len(audio.samples) < WINDOW:
        raise SpeechError(f"{p}: holds no sound to hear ({audio.seconds * 1000:.0f} ms, less than one "
                          f"{WINDOW / SPEECH_RATE * 1000:.0f} ms analysis window)")
    return audio


def mel_filterbank(bands: int = MEL_BANDS, n_fft: int = N_FFT, rate: int = SPEECH_RATE,
                   fmin: float = 60.0, fmax: float = 7600.0) -> np.ndarray:
    """(bands, n_fft // 2 + 1) triangular filters evenly spaced on the mel scale (``2595 log10(1 + f / 700)``)
    between ``fmin`` and ``fmax``; each filter is 1 at its centre frequency and 0 at its neighbours' centres."""
    def to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)

    def to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), bands + 2))
    freqs = np.arange(n_fft // 2 + 1) * rate / n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    return np.clip(np.minimum(up, down), 0.0, None).astype(np.float32)


def log_mel(audio: Audio, normalise: bool = True) -> np.ndarray:
    """(T, :data:`MEL_BANDS`) float32 log-mel energies of a :data:`SPEECH_RATE` recording, column ``j`` centred
    on sample ``j * HOP`` (time ``j / 100`` s), floored at :data:`DYNAMIC_RANGE` of the loudest; with
    ``normalise``, each band minus its mean over the recording, divided by its standard deviation.

    Raises:
        SpeechError: the recording is at another rate or shorter than one analysis window.
    """
    if audio.rate != SPEECH_RATE:
        raise SpeechError(f"log_mel needs {SPEECH_RATE} Hz audio, got {audio.rate} Hz (read it with load_speech)")
    if len(audio.samples) < WINDOW:
        raise SpeechError(f"the recording lasts {audio.seconds:.3f} s, shorter than one {WINDOW / SPEECH_RATE * 1000:.0f} ms window")
    x = torch.from_numpy(audio.samples.astype(np.float32) / 32768.0)
    spec = torch.stft(x, N_FFT, HOP, WINDOW, window=torch.hann_window(WINDOW, dtype=x.dtype), center=True, return_complex=True)
    power = spec.abs().square()  # (F, T)
    mel = torch.from_numpy(mel_filterbank()) @ power
    out = torch.log(mel.clamp_min(float(mel.max()) * DYNAMIC_RANGE + 1e-12)).T.contiguous()  # (T, M)
    if normalise:
        out = (out - out.mean(0)) / out.std(0).clamp_min(1e-3)
    return out.numpy().astype(np.float32)


def frame_windows(mel: np.ndarray, times: np.ndarray, context: int) -> np.ndarray:
    """(B, 2 context + 1, M) windows of ``mel`` (T, M) centred on each frame's time (seconds); columns past
    either end repeat the first or last column.

    Raises:
        SpeechError: naming the first frame whose time is missing (NaN) or negative.
    """
    return _column_windows(mel, _columns_of(times), context)


def _columns_of(times: np.ndarray) -> np.ndarray:
    """(B,) the mel column of each time (seconds), refusing by number the first frame whose time is missing (NaN) or
    negative."""
    t = np.asarray(times, np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
    if bad.size:
        raise SpeechError(f"frame {int(bad[0])} has no usable time ({t[bad[0]]}): cannot find its sound")
    return np.rint(t * COLUMNS_PER_SECOND).astype(np.int64)


def _column_windows(mel: np.ndarray, centre: np.ndarray, context: int) -> np.ndarray:
    """(B, 2 context + 1, M) windows of ``mel`` centred on columns ``centre`` (B,), ends repeated."""
    idx = np.clip(centre[:, None] + np.arange(-context, context + 1)[None, :], 0, len(mel) - 1)
    return mel[idx]


# ------------------------------------------------------------------------------------------------- network


class SpeechToExpression(nn.Module):
    """Windows of mel bands (B, 2 context + 1, M) -> expressions (B, E).

    Four 1-D convolutions over time (kernel 3, stride 2 after the first), then two linear layers; the output is
    ``mean + gain * scale * net(x)``, with ``mean`` (E,) and ``scale`` (one number) the training expressions' mean
    and overall standard deviation, so the last layer starts near the mean, and ``gain`` (E,) how far each
    coefficient's prediction is trusted (:func:`train_speech`'s calibration; ones while training).
    """

    @built_in_float32
    def __init__(self, expression_dim: int, cfg: SpeechConfig = SpeechConfig(), bands: int = MEL_BANDS) -> None:
        super().__init__()
        self.expression_dim = int(expression_dim)
        self.context = int(cfg.context)
        self.bands = int(bands)
        w = int(cfg.width)
        self.conv = nn.Sequential(
            nn.Conv1d(bands, w, 3, padding=1), nn.LeakyReLU(0.02),
            nn.Conv1d(w, w, 3, stride=2, padding=1), nn.LeakyReLU(0.02),
            nn.Conv1d(w, w, 3, stride=2, padding=1), nn.LeakyReLU(0.02),
            nn.Conv1d(w, w, 3, stride=2, padding=1), nn.LeakyReLU(0.02),
        )
        length = 2 * self.context + 1
        for _ in range(3):
            length = (length - 1) // 2 + 1
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(w * length, cfg.hidden), nn.LeakyReLU(0.02), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, self.expression_dim),
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("mean", torch.zeros(self.expression_dim))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("gain", torch.ones(self.expression_dim))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        if windows.ndim != 3 or windows.shape[1:] != (2 * self.context + 1, self.bands):
            raise SpeechError(f"windows must be (B, {2 * self.context + 1}, {self.bands}), got {tuple(windows.shape)}")
        return self.mean + self.gain * self.scale * self.head(self.conv(windows.transpose(1, 2)))


@dataclass
class SpeechModel:
    """A trained :class:`SpeechToExpression` with what it was trained on."""

    net: SpeechToExpression
    config: SpeechConfig
    expression_space: Optional[str]
    """The space of the expressions it predicts (the training data's ``expression_space``), or None."""
    identities: List[str]
    """The identities whose speech it learned from."""
    metrics: Dict[str, object] = field(default_factory=dict)
    """Held-out scores measured after training (:func:`speech_metrics`), as plain data."""
    source: Optional[Path] = None
    """The file it was read from (:func:`load_speech_model`), for messages; None for a model just learned."""
    networks: Optional[int] = None
    """Networks :func:`train_speech` trained for it: one per calibration fold held out, and the final one (1 without
    calibration, or where no fold could be held out: clips shorter than a block); None for a model read from a file."""

    @property
    def expression_dim(self) -> int:
        return self.net.expression_dim


def a_speech_model(model: SpeechModel, asked: str = "model") -> SpeechModel:
    """``model``, or TypeError (:func:`~fastminerf.config.needs`) when it is not a loaded :class:`SpeechModel` (its
    file's path, as ``render --speech`` takes it: "'PosixPath' object has no attribute 'source'")."""
    return needs(model, SpeechModel, asked, "a loaded speech model (fastminerf.load_speech_model(path))")


def check_speech_space(model: SpeechModel, dataset, what: str) -> None:
    """Refuse a speech model whose expressions ``dataset``'s identities cannot make: of another space (both known)
    or of another size. ``what``: whose expressions the data holds, for the message ("the target 'NAME'").

    Raises:
        SpeechError: naming the speech model (its file when it was read from one), both spaces or sizes, and the
            remedy: a speech model learned from data of the identities' space.
    """
    named = f"the speech model{f' {model.source}' if model.source is not None else ''}"
    have, space = model.expression_space, dataset.expression_space
    if have is not None and space is not None and have != space:
        raise SpeechError(f"{named} predicts expressions in expression space '{have}' (learned from "
                          f"{some_of(model.identities)}) but the expressions of {what} are in '{space}': the "
                          f"same coefficients would mean other face motions. Learn a speech model from data in '{space}' "
                          "(fastminerf speech --run RUN, or --data of the run's data)")
    if model.expression_dim != dataset.expression_dim:  # spaces unknown (None) on one side: sizes still must agree
        raise SpeechError(f"{named} predicts {model.expression_dim} expression coefficients, the frames of "
                          f"{some_of(dataset.identities)} have {dataset.expression_dim}")


# -------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SpeechClip:
    """One identity's recording and the frames tracked in it."""

    name: str
    mel: np.ndarray
    """(T, M) normalised log-mel bands of the identity's ``audio.wav``."""
    times: Dict[str, np.ndarray]
    """Per split, (B,) frame times in seconds."""
    expressions: Dict[str, np.ndarray]
    """Per split, (B, E) expressions."""


def _identity_mel(name: str, wav: Path) -> np.ndarray:
    """:func:`log_mel` of an identity's recording; a recording that cannot be read is a :class:`SpeechError` naming
    the identity."""
    try:
        return log_mel(load_speech(wav))
    except (SpeechError, AudioError) as exc:
        raise SpeechError(f"identity '{name}': {exc}") from None


def _seconds(mel: np.ndarray) -> float:
    """The time of a recording's last log-mel column (its length, to a column)."""
    return (len(mel) - 1) / COLUMNS_PER_SECOND


def _past_end(mel: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Which frame ``times`` lie past the end of the recording of ``mel`` (T, M): their window would be centred
    beyond its last column, all of it the recording's end repeated (a recording cut short)."""
    return np.asarray(times, np.float64) > (len(mel) - 0.5) / COLUMNS_PER_SECOND


def speech_clips(dataset, splits: Sequence[str]) -> Tuple[List[SpeechClip], List[str]]:
    """The identities of a loaded dataset that can teach speech: those with an ``audio.wav`` and frames that
    carry ``time``; frames without a time (e.g. the procedural heads' ``novel`` split) are left out, and so are
    frames whose time lies past the end of the recording (one cut short), which the returned lines count.

    Args:
        dataset: a :class:`fastminerf.data.MultiIdentityDataset` with ``splits`` loaded.
        splits: the splits to take frames from.

    Returns:
        The clips, and one line per identity left out (or with frames past its recording's end) saying why.

    Raises:
        SpeechError: naming a split that is not loaded.
    """
    dataset, splits = a_dataset(dataset, "dataset"), as_list(splits)
    clips, skipped = [], []
    for s in splits:
        if s not in dataset.splits:
            raise SpeechError(f"split '{s}' is not loaded; loaded: {list(dataset.splits)}")
    for i, name in enumerate(dataset.identities):
        absent = audio_absence(dataset.identity_dirs[i])
        if absent is not None:
            skipped.append(f"{name}: {absent}")
            continue
        wav = identity_audio(dataset.identity_dirs[i])
        mel = _identity_mel(name, wav)
        times, exprs, late = {}, {}, []
        for s in splits:
            table = dataset.table(s)
            frames = table.frames_of(i)
            t = table.time[frames].astype(np.float64)
            keep = np.isfinite(t) & (t >= 0)
            late.append(t[keep & _past_end(mel, t)])
            keep &= ~_past_end(mel, t)
            times[s], exprs[s] = t[keep], table.expression[frames][keep].astype(np.float32)
        late = np.concatenate(late)
        if late.size:  # a recording cut short: these frames have no sound to learn from
            skipped.append(f"{name}: {late.size} of its frames (from {late.min():.2f} s on), past the end of its "
                           f"{wav} ({_seconds(mel):.2f} s): is the recording cut short?")
        if sum(len(v) for v in times.values()) == 0:
            if not late.size:
                skipped.append(f"{name}: its frames carry no 'time'")
            continue
        clips.append(SpeechClip(name, mel, times, exprs))
    return clips, skipped


@dataclass
class SpeechClips:
    """What :func:`load_speech_clips` found in identity folders."""

    clips: List[SpeechClip]
    skipped: List[str]
    """One line per identity left out, saying why."""
    expression_space: Optional[str]
    """The identities' expression space (None where their files name none)."""
    splits: List[str]
    """Every split any identity has, in the order first seen."""


def load_speech_clips(paths: Union[str, Path, Sequence[Union[str, Path]]]) -> SpeechClips:
    """The clips of :func:`speech_clips` from identity folders or dataset roots, each identity loaded alone with the
    splits it has and its own image size (speech reads no image: a person added from a clip without ``val``, or
    prepared at another size, belongs with the others), in one expression space.

    Raises:
        DatasetError: identities of another expression length, names or space (as :func:`fastminerf.data.load_dataset`
            refuses them together), naming the file and key.
    """
    from .data import load_dataset
    from .data.dataset import check_one_space
    from .data.layout import find_identity_dirs

    datas = [load_dataset([d], splits=None) for d in find_identity_dirs(paths)]
    check_one_space(datas)  # a speech model predicts one kind of coefficients
    clips: List[SpeechClip] = []
    skipped: List[str] = []
    for data in datas:
        more, why = speech_clips(data, data.splits)
        clips, skipped = clips + more, skipped + why
    space = next((d.expression_space for d in datas if d.expression_space is not None), None)
    return SpeechClips(clips, skipped, space, list(dict.fromkeys(s for d in datas for s in d.splits)))


def _windows(clips: Sequence[SpeechClip], splits: Sequence[str], context: int, folds: int = 0,
             block: float = 1.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The frames of ``splits`` of every clip in time order: windows (N, 2 context + 1, M), expressions (N, E),
    the clip of each frame (N,), its calibration fold (N,): stretches of ``block`` seconds go to the folds in
    turn (all 0 when ``folds`` < 2), and its time (N,)."""
    ws, es, owner, fold, ts = [], [], [], [], []
    for k, c in enumerate(clips):
        have = [s for s in splits if s in c.times]  # none: splits the clips were not cut from (refused below)
        t = np.concatenate([c.times[s] for s in have]) if have else np.zeros(0)
        if not len(t):
            continue
        e = np.concatenate([c.expressions[s] for s in have])
        order = np.argsort(t, kind="stable")
        t, e = t[order], e[order]
        ws.append(frame_windows(c.mel, t, context))
        es.append(e)
        owner.append(np.full(len(t), k))
        fold.append((np.floor(t / block).astype(np.int64) % folds) if folds >= 2 else np.zeros(len(t), np.int64))
        ts.append(t)
    if not ws:
        raise SpeechError(f"no frame with a time and a recording in splits {list(splits)}")
    return np.concatenate(ws), np.concatenate(es), np.concatenate(owner), np.concatenate(fold), np.concatenate(ts)


# --------------------------------------------------------------------------------------------- training


@built_in_float32
def _fit(x: torch.Tensor, y: torch.Tensor, cfg: SpeechConfig, progress: Optional[ProgressFn], done: int, total: int) -> SpeechToExpression:
    """Adam over random batches of (x: wide windows, y: expressions); progress counts from ``done`` of ``total``."""
    # the initial weights and dropout draw from torch's global generator, seeded here (the caller's is given back)
    with training_torch_state():
        torch.manual_seed(int(cfg.seed))
        return _fit_seeded(x, y, cfg, progress, done, total)


def _fit_seeded(x: torch.Tensor, y: torch.Tensor, cfg: SpeechConfig, progress: Optional[ProgressFn], done: int,
                total: int) -> SpeechToExpression:
    """:func:`_fit` with torch's global generator seeded."""
    gen = torch.Generator().manual_seed(int(cfg.seed))
    net = SpeechToExpression(y.shape[1], cfg)
    net.mean.copy_(y.mean(0))
    # One frame (a short clip, or a calibration fold's complement) has no spread; std's Bessel correction would
    # make it NaN, and a NaN scale every weight and prediction.
    spread = y.std(0) if len(y) > 1 else torch.zeros(y.shape[1])
    net.scale.copy_(spread.square().mean().sqrt().clamp_min(1e-6))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(k, cfg.steps) / cfg.steps)))
    n, span = len(x), 2 * cfg.context + 1
    net.train()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, n, (min(cfg.batch, n),), generator=gen)
        shift = torch.randint(0, 2 * cfg.jitter + 1, (len(idx),), generator=gen)
        xb = x[idx[:, None], shift[:, None] + torch.arange(span)[None, :]]
        if cfg.noise > 0:
            xb = xb + cfg.noise * torch.randn(xb.shape, generator=gen)
        loss = (net(xb) - y[idx]).square().mean() / net.scale.square()
        value = float(loss.detach())
        if not math.isfinite(value):  # NaN from here on: every prediction of the model it would give NaN
            raise SpeechError(f"speech training diverged at step {done + step} of {total}: its loss is {value} "
                              f"(lr {cfg.lr:g} blew the network up); try a smaller lr (--set lr=..., default "
                              f"{SpeechConfig.lr:g})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step % 50 == 0 or step == cfg.steps):
            progress(done + step, total, value)
    return net.eval()


def train_speech(
    clips: Sequence[SpeechClip],
    cfg: SpeechConfig = SpeechConfig(),
    fit_splits: Sequence[str] = ("train",),
    expression_space: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
) -> SpeechModel:
    """Fit a :class:`SpeechToExpression` to the frames of ``fit_splits`` of every clip.

    Windows are cut ``jitter`` columns wider than the network hears, so each step can shift every window by a
    random offset in ``[-jitter, jitter]``; Gaussian noise of ``noise`` is added to the bands. Deterministic for
    a seed on one thread count.

    With ``calibrate`` = K >= 2 folds, each clip is cut into stretches of ``block`` seconds dealt to the K folds
    in turn; K networks each learn from all folds but one and predict the one left out, so every frame gets a
    prediction from a network that never heard it. Each coefficient's gain ``clip(cov(p, t) / var(p), 0, 1)``
    over those predictions (p, tracking t, both about the mean) says how much of what a network predicts for it is
    real. The final network learns from every frame and its output is the mean plus these gains times its
    deviation from the mean, so coefficients the sound does not tell (blinks, brows, gaze) stay near their mean
    instead of following noise.

    Args:
        clips: from :func:`speech_clips`.
        cfg: the network and its training.
        fit_splits: the splits whose frames are learned from.
        expression_space: recorded in the model (the data's ``expression_space``).
        progress: called as ``progress(step, total, loss)`` every 50 steps and at the end (``total`` counts
            every network's steps when calibrating: ``steps`` times the model's ``networks``).

    Raises:
        SpeechError: no frame to learn from, clips of different expression sizes or of none (E = 0), or a training
            that diverged (a non-finite loss, e.g. too high an ``lr``: the step named).
    """
    what = "the clips of a dataset (a list of SpeechClip: fastminerf.load_speech_clips(paths).clips)"
    clips = [needs(c, SpeechClip, "clips", what) for c in needs(clips, (list, tuple), "clips", what)]
    fit_splits = as_list(fit_splits)
    dims = {c.expressions[s].shape[1] for c in clips for s in fit_splits if s in c.expressions and len(c.expressions[s])}
    if len(dims) > 1:
        raise SpeechError(f"the clips' expressions have different sizes {sorted(dims)}; one expression space is needed")
    if dims == {0}:  # an empty loss: its mean is NaN, which read as a diverged training ('try a smaller lr')
        raise SpeechError("the clips' frames have no expression coefficients (expression: [], E = 0): speech has "
                          "nothing to predict; it needs data with expressions (prepare writes them)")
    wide, target, owner, fold, times = _windows(clips, fit_splits, cfg.context + cfg.jitter, cfg.calibrate, cfg.block)
    x, y = torch.from_numpy(wide), torch.from_numpy(target)
    folds = [k for k in range(cfg.calibrate) if (fold == k).any() and (fold != k).any()] if cfg.calibrate else []
    total = cfg.steps * (len(folds) + 1)
    gain = torch.ones(y.shape[1])
    if folds:
        pred = np.zeros(target.shape, np.float32)
        seen = np.isin(fold, folds)
        nets = {k: _fit(x[fold != k], y[fold != k], cfg, progress, n * cfg.steps, total) for n, k in enumerate(folds)}
        for k in np.unique(owner):  # predicted per clip as at inference (stretches of one fold are contiguous)
            rows = np.flatnonzero((owner == k) & seen)
            for part in np.split(rows, np.flatnonzero(np.diff(fold[rows]) != 0) + 1):
                if part.size:
                    # within the stretch: the sound next to it taught this network
                    pred[part] = _heard_at(nets[int(fold[part[0]])], clips[k].mel, times[part], cfg.smooth, False)
        mean = y.mean(0).double()
        p = torch.from_numpy(pred[seen]).double() - mean
        t = y[torch.from_numpy(seen)].double() - mean
        gain = ((p * t).sum(0) / p.square().sum(0).clamp_min(1e-12)).clamp(0.0, 1.0).float()
    net = _fit(x, y, cfg, progress, total - cfg.steps, total)
    net.gain.copy_(gain)
    return SpeechModel(net, cfg, expression_space, [c.name for c in clips], networks=len(folds) + 1)


def _smooth(expr: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of (B, E) along B (edges repeated)."""
    if sigma <= 0 or len(expr) < 2:
        return expr
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.concatenate([np.repeat(expr[:1], r, 0), expr, np.repeat(expr[-1:], r, 0)])
    return np.stack([np.convolve(padded[:, j], k, mode="valid") for j in range(expr.shape[1])], 1).astype(np.float32)


@torch.no_grad()
def _heard_at(net: SpeechToExpression, mel: np.ndarray, times: np.ndarray, smooth: float,
              beyond: bool = True) -> np.ndarray:
    """Expressions (B, E) at ``times`` (seconds, in any order): ``net``'s prediction at every mel column (10 ms) from
    the first time's column to the last one's (with ``beyond``, and the sound's columns within the Gaussian's reach
    either side of them, up to the recording's ends), smoothed along them with a Gaussian of ``smooth`` seconds (ends
    repeated), read at each time's column. The trajectory is one function of time, so frames at 25 and at 50 fps
    get the same expression at the same instant; the frames' spacing (or gaps) changes nothing. With ``beyond``,
    columns out of every frame's reach are not predicted: stretches of frames further apart than two reaches (a
    split's frames scattered over a long recording) are predicted and smoothed apart, each frame reading what the
    whole span would give it."""
    centre = _columns_of(times)
    if not len(centre):
        return np.zeros((0, net.expression_dim), np.float32)
    sigma = smooth * COLUMNS_PER_SECOND
    reach = int(math.ceil(3 * sigma)) if beyond and sigma > 0 else 0  # _smooth's kernel radius
    at = np.unique(centre)
    out = np.empty((len(centre), net.expression_dim), np.float32)
    net = net.eval()
    for run in np.split(at, np.flatnonzero(np.diff(at) > 2 * reach + 1) + 1) if beyond else [at]:
        first = max(0, int(run[0]) - reach)
        last = max(int(run[-1]), min(len(mel), int(run[-1]) + reach))  # len(mel): a last frame's rounding
        columns = np.arange(first, last + 1)
        pred = [net(torch.from_numpy(_column_windows(mel, columns[a:a + 1024], net.context)))
                for a in range(0, len(columns), 1024)]  # windows built a chunk at a time: 6.5 KB a column
        pred = _smooth(torch.cat(pred).numpy().astype(np.float32), sigma)
        rows = (centre >= run[0]) & (centre <= run[-1])
        out[rows] = pred[centre[rows] - first]
    return out


def _predict_times(model: SpeechModel, mel: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Expressions (B, E) at frame ``times`` (:func:`_heard_at`, the model's ``smooth``); rows follow ``times``."""
    return _heard_at(model.net, mel, times, model.config.smooth)


def predict_expressions(model: SpeechModel, audio: Audio, fps: float) -> Tuple[np.ndarray, np.ndarray]:
    """One expression per video frame of a recording played at ``fps``.

    Returns:
        ``(expressions (B, E) float32, times (B,) float64)``, B = ``ceil(seconds * fps)``, frame ``k`` at ``k / fps``.

    Raises:
        fastminerf.config.ArgumentValueError: ``fps`` is not a frame rate (:func:`fastminerf.config.check_fps`).
        SpeechError: a recording shorter than one analysis window.
    """
    a_speech_model(model)
    needs(audio, Audio, "audio", "a loaded recording (fastminerf.speech.load_speech(path))")
    fps = check_fps(fps)
    mel = log_mel(audio)
    b = max(1, int(math.ceil(audio.seconds * fps - 1e-9)))
    times = np.arange(b, dtype=np.float64) / fps
    return _predict_times(model, mel, times), times


def split_expressions(model: SpeechModel, dataset, split: str) -> np.ndarray:
    """Every frame of a loaded split with the expression the speech model hears in its identity's ``audio.wav``
    at its ``time``: the split's expression table, row for row, as speech alone would drive it.

    Args:
        model: the speech model.
        dataset: a :class:`fastminerf.data.MultiIdentityDataset` with ``split`` loaded, in the model's
            expression space.

    Returns:
        ``(N, E)`` float32, N the rows of ``dataset.table(split)``.

    Raises:
        SpeechError: a split not loaded, a model of another expression space or size (:func:`check_speech_space`),
            or an identity without ``audio.wav``, with frames that carry no ``time`` or with frames past the end of its
            recording (named).
    """
    if split not in a_dataset(dataset, "dataset").splits:
        raise SpeechError(f"split '{split}' is not loaded; loaded: {list(dataset.splits)}")
    a_speech_model(model)
    check_speech_space(model, dataset, f"the evaluated data ({some_of(dataset.identities)})")
    table = dataset.table(split)
    out = np.array(table.expression, dtype=np.float32, copy=True)
    for i, name in enumerate(dataset.identities):
        frames = table.frames_of(i)
        if frames.size == 0:
            continue
        absent = audio_absence(dataset.identity_dirs[i])
        if absent is not None:
            absent = f" has {absent} in {dataset.identity_dirs[i]}" if absent.startswith("no ") else f": {absent}"
            raise SpeechError(f"identity '{name}'{absent}: its frames cannot be driven by speech")
        wav = identity_audio(dataset.identity_dirs[i])
        times = table.time[frames].astype(np.float64)
        if not np.all(np.isfinite(times) & (times >= 0)):
            raise SpeechError(f"identity '{name}': frames of split '{split}' carry no 'time' in its audio.wav")
        mel = _identity_mel(name, wav)
        late = _past_end(mel, times)
        if late.any():  # their sound would be silence: a prediction scored against the real mouth
            raise SpeechError(f"identity '{name}': {int(late.sum())} frames of split '{split}' (from "
                              f"{times[late].min():.2f} s on) lie past the end of its {wav} ({_seconds(mel):.2f} s): "
                              f"is the recording cut short?")
        out[frames] = _predict_times(model, mel, times)
    return out


# ---------------------------------------------------------------------------------------------- metrics


def mouth_opening(expressions: np.ndarray, expression_space: Optional[str], basis=None) -> Optional[np.ndarray]:
    """How far the mouth opens in each expression (B,), in the space's own units, or None when the space does not
    say: the procedural heads' ``jaw_open`` coefficient; for prepared data (``basis``, the
    :class:`fastminerf.prepare.expression.ExpressionBasis` of the space), the mean gap between mediapipe's inner
    lip landmarks (13/14, 82/87, 312/317) that the coefficients add to the person's neutral face, in head units."""
    e = np.asarray(expressions, np.float64)
    from .data.synth import EXPRESSION_SPACE as PROCEDURAL
    if expression_space == PROCEDURAL:
        from .data.heads import EXPRESSION_NAMES
        return e[:, EXPRESSION_NAMES.index("jaw_open")]
    if basis is None:
        return None
    d = basis.deformation(e)  # (B, K, 3) in head space, y up
    return np.mean([d[:, up, 1] - d[:, lo, 1] for up, lo in _INNER_LIPS], axis=0)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def speech_metrics(model: SpeechModel, clips: Sequence[SpeechClip], splits: Sequence[str],
                   basis=None) -> Dict[str, object]:
    """Scores of ``model`` on the frames of ``splits`` of each clip (predictions smoothed as :func:`predict_expressions`
    smooths them, per split in time order).

    Returns ``{"splits": [...], "identities": {name: scores}, "all": scores}``, scores over an identity's frames and
    over all frames: ``r2``, one minus the squared error of the coefficients over that of always predicting the
    model's training mean (0 is the mean's score, 1 exact); ``mouth_r2``, the same for the mouth's opening
    (:func:`mouth_opening`); ``mouth_corr``, the correlation between predicted and tracked mouth opening (both None
    where the space does not say); and ``frames``.
    """
    splits = as_list(splits)
    base = model.net.mean.numpy()
    per: Dict[str, Dict[str, object]] = {}
    all_p, all_t = [], []
    for c in clips:
        ps, ts = [], []
        for s in splits:
            if s in c.times and len(c.times[s]):
                ps.append(_predict_times(model, c.mel, c.times[s]))
                ts.append(c.expressions[s])
        if not ps:
            continue
        p, t = np.concatenate(ps), np.concatenate(ts)
        all_p.append(p)
        all_t.append(t)
        per[c.name] = _scores(p, t, base, model.expression_space, basis)
    if not per:
        raise SpeechError(f"no frame with a time in splits {list(splits)} to score")
    return {"splits": list(splits), "identities": per,
            "all": _scores(np.concatenate(all_p), np.concatenate(all_t), base, model.expression_space, basis)}


def _scores(p: np.ndarray, t: np.ndarray, base: np.ndarray, space: Optional[str], basis) -> Dict[str, object]:
    sse = float(((p - t) ** 2).sum())
    sst = float(((t - base[None, :]) ** 2).sum())
    out: Dict[str, object] = {"frames": int(len(t)), "r2": 1.0 - sse / sst if sst > 0 else float("nan"),
                              "mouth_r2": None, "mouth_corr": None}
    mp, mt, mb = (mouth_opening(x, space, basis) for x in (p, t, base[None, :]))
    if mp is not None:
        den = float(((mt - mb) ** 2).sum())
        out["mouth_r2"] = 1.0 - float(((mp - mt) ** 2).sum()) / den if den > 0 else float("nan")
        out["mouth_corr"] = _corr(mp, mt)
    return out


# ----------------------------------------------------------------------------------------- checkpoints


def check_speech_out(path: PathLike) -> Path:
    """Refuse, before a model is learned, a place :func:`save_speech_model` cannot or must not write it to: a folder,
    a file whose folder is a file or cannot be made (checked, not made: :func:`save_speech_model` makes it), or an existing file the model would
    replace that is no speech model (a run's ``checkpoint.pt``, a frame: ``--out`` typed in a hurry). An earlier
    speech model there (of any format version) may be replaced.

    Raises:
        SpeechError: naming the path.
    """
    out = Path(path)
    if out.is_dir():
        raise SpeechError(f"{out} is a folder: give the speech model's file name (e.g. {out / 'speech.pt'})")
    if out.is_file():
        try:
            data = torch.load(out, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - torch raises many types for files that are no torch file
            data = None
        if not (isinstance(data, dict) and data.get("format") == FORMAT):
            raise SpeechError(f"{out} exists and is not a speech model: refusing to replace it; give another file "
                              "name for the model (or remove the file)")
    # checked, not made: made when the model is written, so that a call refused later (--data TYPO) leaves no empty
    # folder behind
    check_folder(out.parent, "the speech model",
                 lambda why: SpeechError(f"{out}: cannot make its folder {out.parent} ({why})"))
    return out


def save_speech_model(path: PathLike, model: SpeechModel) -> Path:
    """Write the model as plain tensors and data (read back with ``weights_only=True``), atomically. A path that is a
    folder (named by the writer, an OSError) or an existing file of another kind (:func:`check_speech_out`) is refused."""
    from .train import save_checkpoint

    needs(path, PATH_TYPES, "path", f"the speech model's file to write {PATH_TAKEN}")
    a_speech_model(model)
    out = Path(path) if Path(path).is_dir() else check_speech_out(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpeechError(f"{out}: cannot make its folder {out.parent} ({exc.strerror or exc})") from None
    return save_checkpoint(out, what="speech model", payload={
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "expression_dim": model.expression_dim,
        "expression_space": model.expression_space,
        "identities": list(model.identities),
        "config": asdict(model.config),
        "state": model.net.state_dict(),
        "metrics": model.metrics,
    })


def load_speech_model(path: PathLike) -> SpeechModel:
    """Read a model written by :func:`save_speech_model`.

    Raises:
        SpeechError: naming the file when it is missing, corrupt, not a speech model, of another format version,
            or lacks a key.
    """
    from .train import read_plain_file

    p = Path(needs(path, PATH_TYPES, "path", f"a speech model's file {PATH_TAKEN}"))
    if p.is_dir():  # e.g. the run folder instead of RUN/speech.pt
        raise SpeechError(f"speech model {p} is a folder: give the model file in it (e.g. {p / 'speech.pt'})")
    if not p.is_file():
        raise SpeechError(f"speech model {p} does not exist (train one with: fastminerf speech --run RUN, or --data ... --out {p})")
    data = read_plain_file(p, FORMAT, FORMAT_VERSION, ("expression_dim", "config", "state"), "speech model", SpeechError,
                           older=(1,))
    try:
        config = dict(data["config"])
        if data["version"] == 1 and isinstance(config.get("smooth"), (int, float)):  # video frames then, at 25 fps
            config["smooth"] = config["smooth"] / VERSION_1_FPS
        cfg = SpeechConfig(**config)
        with torch.random.fork_rng(devices=[]):  # initial weights, replaced by the file's: the caller's stream stays
            net = SpeechToExpression(int(data["expression_dim"]), cfg)
        net.load_state_dict(data["state"])
    except (TypeError, RuntimeError, ValueError) as exc:  # ValueError: SpeechConfig's ConfigError, SpeechError
        raise SpeechError(f"speech model {p} does not match this fastminerf's network: {exc}") from None
    net.eval()
    space, identities, metrics = data.get("expression_space"), data.get("identities", []), data.get("metrics") or {}
    for key, ok, kind in (("expression_space", space is None or isinstance(space, str), "a name or None"),
                          ("identities", isinstance(identities, (list, tuple)), "a list of names"),
                          ("metrics", isinstance(metrics, dict), "a dict")):
        if not ok:
            raise SpeechError(f"speech model {p}: key '{key}' holds {type(data[key]).__name__} {data[key]!r}, not {kind}")
    return SpeechModel(net, cfg, space, [str(n) for n in identities], dict(metrics), p)
