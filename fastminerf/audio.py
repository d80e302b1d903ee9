"""Speech tracks: reading an identity's ``audio.wav`` and cutting the soundtrack that goes with a sequence of
its frames, so that a driven video (:func:`fastminerf.render.drive_path`) carries the driver's speech in sync
with its mouth.

A prepared video's frames carry ``time`` (seconds since the start of the source video) and its ``audio.wav``
starts at the video's start (DATASET.md). A split is not always one stretch of the video (``prepare`` drops
frames without a face), so the soundtrack is built frame by frame: frame ``k`` of ``n`` gets the samples from its
own ``time`` on, as many as its share of ``n / fps`` seconds. The result lasts exactly as long as the video, every
frame's mouth is heard at its own time, and a gap between frames becomes a cut in the sound rather than a drift.
:func:`frames_at_rate` puts such a sequence on another frame rate (``render --fps``) on the same clock.

A video's soundtrack is the recording as it is (:func:`read_recording`: its own rate and channels), so a 48 kHz
stereo recording is heard so in the video (at the next AAC rate above its own where AAC lacks it: :func:`aac_rate`); the speech model reads its own copy at 16 kHz mono
(:func:`fastminerf.speech.load_speech`).

Pure functions on numpy arrays plus small WAV helpers (the standard library's ``wave``); a recording in any other
format (mp3, m4a, float WAV, a video's sound track) is decoded by the ffmpeg imageio-ffmpeg bundles
(:func:`decode_sound`, :func:`read_recording`). No printing.
"""

from __future__ import annotations

import math
import os
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from .data.layout import AUDIO_FILE, not_a_file
from .data.writer import replaced_atomically

__all__ = ["AAC_RATES", "Audio", "AudioError", "aac_rate", "frame_soundtrack", "audio_absence", "decode_sound",
           "frames_at_rate", "identity_audio", "read_recording", "read_wav", "wav_seconds", "write_wav"]

PathLike = Union[str, Path]


class AudioError(ValueError):
    """A WAV file that cannot be read, or frame times that cannot be cut into a soundtrack; the message names
    the file or the frame."""


@dataclass(frozen=True)
class Audio:
    """16-bit PCM samples and their rate: mono, or several channels (:func:`read_recording`)."""

    samples: np.ndarray
    """(S,) int16 samples, or (S, C) for C channels."""
    rate: int
    """Samples per second."""

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return len(self.samples) / float(self.rate)

    @property
    def channels(self) -> int:
        """Channels: 1 for (S,) samples."""
        return 1 if self.samples.ndim == 1 else int(self.samples.shape[1])


def read_wav(path: PathLike, mono: bool = True) -> Audio:
    """Read a PCM WAV file (8-, 16- or 32-bit integer, any channel count) as 16-bit :class:`Audio`: mono, several
    channels averaged, or with ``mono=False`` its channels as they are ((S, C) samples for more than one). A header
    whose data size is 0 (never finalised) is read to the end of the file, as ffmpeg reads it.

    Raises:
        AudioError: naming the file when it is missing, not a PCM WAV file, or of an unsupported sample width.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f, wave.open(f, "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            # a data size of 0: a header never finalised (a recorder stopped before it wrote the sizes), the samples
            # running to the end of the file, as ffmpeg reads them (wave stops at the data's start)
            raw = w.readframes(n) if n else f.read()
    except FileNotFoundError:
        raise AudioError(f"{p}: no such file") from None
    except (wave.Error, EOFError, RuntimeError) as exc:  # RuntimeError: a chunk past the RIFF size the header gives
        raise AudioError(f"{p}: not a PCM WAV file ({exc or 'its chunk sizes do not fit the header'})") from None
    # A file cut off mid-sample (an interrupted recording or copy) holds fewer bytes than its header says, and
    # ``wave`` returns them as they are: keep the whole samples (the partial frame is dropped below).
    raw = raw[: len(raw) - len(raw) % width]
    # 16-bit from the start (every width below lands in its range): a wide copy, clipped into another, held 6 times
    # the samples (1 GB for a 10-minute 48 kHz stereo recording)
    if width == 1:
        x = np.frombuffer(raw, np.uint8).astype(np.int16)
        x -= 128
        x *= 256
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.int16)  # a copy (native order): the samples outlive the file's bytes
    elif width == 4:
        x = np.frombuffer(raw, "<i2")[1::2].astype(np.int16)  # each sample's upper half: // 65536 (floored)
    else:
        raise AudioError(f"{p}: {8 * width}-bit samples are not supported (8, 16 or 32-bit PCM)")
    del raw
    if rate <= 0:
        raise AudioError(f"{p}: sample rate {rate}")
    x = x[: (len(x) // channels) * channels].reshape(-1, channels)
    if channels == 1:
        x = x[:, 0]
    elif mono:  # float32 holds the sum of 2**8 channels of 16-bit samples exactly; rounded half to even
        x = np.rint(x.sum(axis=1, dtype=np.float32) / np.float32(channels)).astype(np.int16)
    return Audio(np.ascontiguousarray(x), int(rate))


def wav_seconds(path: PathLike) -> float:
    """The length in seconds of a PCM WAV file, from its header, without reading its samples: the whole samples the
    file holds, as :func:`read_wav` reads them (a file cut off mid-way holds fewer than its header says).

    Raises:
        AudioError: naming the file when it is missing or not a WAV file.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f, wave.open(f, "rb") as w:
            frame, rate, n = w.getnchannels() * w.getsampwidth(), w.getframerate(), w.getnframes()
            held = (os.fstat(f.fileno()).st_size - f.tell()) // max(frame, 1)  # wave stops at the data's start
    except FileNotFoundError:
        raise AudioError(f"{p}: no such file") from None
    except (wave.Error, EOFError, RuntimeError) as exc:
        raise AudioError(f"{p}: not a PCM WAV file ({exc or 'its chunk sizes do not fit the header'})") from None
    if rate <= 0:
        raise AudioError(f"{p}: sample rate {rate}")
    return (min(n, held) if n else held) / float(rate)  # a data size of 0: to the end of the file, as read_wav reads


def read_recording(path: PathLike) -> Audio:
    """A recording as it is, for a video's soundtrack: a PCM WAV file read with its rate and channels, any other file
    ffmpeg decodes (mp3, m4a, 24-bit or float WAV, a video's sound track) decoded at its own rate (at most 48 kHz), its
    channels kept (more than two mixed down to stereo), on the file's own clock (:func:`fastminerf.prepare.video.extract_audio`).

    Raises:
        AudioError: naming the file when it is missing, or neither a PCM WAV file nor sound ffmpeg can decode (the
            WAV reader's account for a ``.wav`` file, ffmpeg's for any other).
    """
    p = Path(path)
    try:
        return read_wav(p, mono=False)
    except AudioError as not_wav:
        if not p.is_file():
            raise
        try:
            return decode_sound(p, rate=None, mono=False)
        except AudioError:
            if p.suffix.lower() == ".wav":
                raise not_wav from None  # a damaged WAV file: the WAV reader's account of it
            raise  # anything else (an empty or damaged video): ffmpeg's


def decode_sound(path: PathLike, rate: Optional[int] = None, mono: bool = True) -> Audio:
    """A file's sound decoded by ffmpeg (:func:`fastminerf.prepare.video.decode_audio`, on the file's own clock), at
    ``rate`` (None: its own, at most 48 kHz) and mono or with its channels (more than two mixed down to stereo).

    Raises:
        AudioError: ``"{path}: cannot read its sound (why)"``, e.g. a video without a sound track.
    """
    from .prepare.video import VideoError, decode_audio

    p = Path(path)
    try:  # through a pipe: no temporary file (a full or read-only TMPDIR stopped a copy in it, naming the recording)
        samples, got = decode_audio(p, rate=rate, mono=mono)
    except VideoError as exc:
        why = str(exc)
        why = why[len(f"{p}: "):] if why.startswith(f"{p}: ") else why  # ffmpeg's account names the recording already
        raise AudioError(f"{p}: cannot read its sound ({why})") from None
    return Audio(samples, int(got))


AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
"""The sample rates an AAC soundtrack (ffmpeg's encoder) can be at."""


def aac_rate(rate: int) -> int:
    """The rate a recording at ``rate`` is at in a video's AAC soundtrack: its own where AAC has it, else the next
    AAC rate above it, which keeps all of its sound (ffmpeg put it on the nearest: 9 kHz on 8 kHz, cutting its top
    500 Hz), 96 kHz for any above that."""
    return next((r for r in AAC_RATES if r >= rate), AAC_RATES[-1])


def write_wav(path: PathLike, audio: Audio) -> Path:
    """Write :class:`Audio` as a 16-bit PCM WAV file of its channels, atomically (a temporary name, then a rename)."""
    out = Path(path)
    with replaced_atomically(out) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(audio.channels)
        w.setsampwidth(2)
        w.setframerate(int(audio.rate))
        w.writeframes(np.ascontiguousarray(audio.samples, dtype="<i2").tobytes())
    return out


def frame_soundtrack(audio: Audio, times: Sequence[float], fps: float) -> Audio:
    """The soundtrack of a video made of frames taken at ``times`` and played at ``fps``.

    Frame ``k`` contributes ``round((k + 1) r / fps) - round(k r / fps)`` samples (``r`` the sample rate) starting
    at sample ``round(times[k] r)``: the total is ``round(n r / fps)``, the video's duration, and each frame's
    sound starts at its own time whatever the gaps between frames. Samples past the end of the recording are
    silence. The soundtrack has the recording's rate and channels.

    Args:
        audio: the recording the times refer to.
        times: (n,) seconds since the start of the recording, one per frame, finite and >= 0.
        fps: the frame rate the video is played at.

    Raises:
        AudioError: naming the first frame whose time is missing (NaN) or negative, or a bad ``fps``.
    """
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if not np.isfinite(fps) or fps <= 0:
        raise AudioError(f"frame rate must be > 0, got {fps}")
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
    if bad.size:
        raise AudioError(f"frame {int(bad[0])} has no usable time ({t[bad[0]]}): cannot place its sound")
    r = float(audio.rate)
    edges = np.rint(np.arange(len(t) + 1) * r / fps).astype(np.int64)
    lengths = np.diff(edges)
    starts = np.rint(t * r).astype(np.int64)
    out = np.zeros((int(edges[-1]),) + audio.samples.shape[1:], np.int16)
    src = audio.samples
    for k in range(len(t)):
        a = int(starts[k])
        take = max(0, min(int(lengths[k]), len(src) - a))
        if take:
            out[edges[k]: edges[k] + take] = src[a: a + take]
    return Audio(out, audio.rate)


def frames_at_rate(n: int, source_fps: float, fps: float,
                   times: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """A video of ``n`` frames taken at ``source_fps``, shown at ``fps`` in real time: the source frame on screen at
    each new frame's moment, and that moment in the recording.

    New frame ``j`` is ``j / fps`` seconds into the video and shows source frame ``floor(j source_fps / fps)`` (frames
    dropped or repeated, never slowed down or sped up); there are ``ceil(n fps / source_fps)`` of them, so the video
    lasts as long as the source (to within a frame). Its time is its source frame's ``times`` plus how far into that
    frame's ``1 / source_fps`` it falls: within a stretch of frames the times run on at ``1 / fps`` a frame, and a gap
    between source frames (dropped frames) stays a cut, as :func:`frame_soundtrack` plays it.

    Args:
        n: source frames.
        source_fps: their frame rate.
        fps: the new frame rate.
        times: (n,) each source frame's seconds in its recording (NaN where unknown), or None.

    Returns:
        ``(indices (m,) int64 into the source frames, times (m,) float64 or None when ``times`` is None)``.

    Raises:
        AudioError: a rate that is not a positive number.
    """
    for name, rate in (("source frame rate", source_fps), ("frame rate", fps)):
        if not (np.isfinite(rate) and rate > 0):
            raise AudioError(f"{name} must be > 0, got {rate}")
    m = int(math.ceil(n * float(fps) / float(source_fps) - 1e-6)) if n > 0 else 0
    clock = np.arange(m, dtype=np.float64) / float(fps)
    idx = np.minimum(np.floor(clock * float(source_fps) + 1e-6).astype(np.int64), max(n - 1, 0))
    if times is None:
        return idx, None
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.shape != (n,):
        raise AudioError(f"frames_at_rate needs one time per frame ({n}), got {t.shape[0]}")
    return idx, t[idx] + (clock - idx / float(source_fps))


def identity_audio(identity_dir: PathLike, any_kind: bool = False) -> Optional[Path]:
    """An identity folder's ``audio.wav``, or None when it has none. ``any_kind``: also when the name is there but
    is not a file to read (a folder, a symbolic link that loops), for a message that says what it is
    (:func:`audio_absence`, :func:`fastminerf.data.layout.not_a_file`).

    Without that exact name, the name in another case (``AUDIO.WAV``, ``Audio.wav``): a folder made on a case-blind
    system (Windows, macOS), where that name is ``audio.wav``, reads the same here."""
    p = Path(identity_dir) / AUDIO_FILE
    if not os.path.lexists(p):
        try:
            with os.scandir(p.parent) as entries:
                p = p.parent / min((e.name for e in entries if e.name.lower() == AUDIO_FILE), default=AUDIO_FILE)
        except OSError:  # no such folder: none
            pass
    return p if p.is_file() or (any_kind and os.path.lexists(p)) else None


def audio_absence(identity_dir: PathLike) -> Optional[str]:
    """Why an identity folder has no recording to read: "no audio.wav", or what its ``audio.wav`` is instead
    ("/data/a/audio.wav is a folder"); None when it has one."""
    p = identity_audio(identity_dir, any_kind=True)
    if p is None:
        return f"no {AUDIO_FILE}"
    what = not_a_file(p)
    return None if what is None else f"{p} {what}"
