"""Decoding videos and extracting their audio, through the ffmpeg binary that imageio-ffmpeg bundles.

Every decode passes ffmpeg's ``fps`` filter, so a variable-frame-rate video (phones, screen recordings) becomes a
constant-rate frame sequence: frame ``k`` is the picture on screen at ``k / fps`` seconds (the last frame that
starts at or before it, at any rate: :func:`_on_screen_at`), and two decodes of the same
video with the same rate give the same frames (the tracking pass and the writing pass rely on that). Cropping and
resizing happen inside ffmpeg, in its own process, beside the Python work.

Dimension letters: B frames, H and W pixels.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np

from ..data.layout import not_a_file
from ..data.writer import replaced_atomically

__all__ = ["VideoError", "VideoInfo", "decode_audio", "extract_audio", "probe", "read_frames", "video_stream_seconds"]

PathLike = Union[str, Path]

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".ts", ".mts", ".m2ts", ".dv", ".mpg", ".mpeg",
                  ".3gp", ".wmv", ".flv", ".ogv", ".mxf")
"""File suffixes accepted as videos, in any case (anything ffmpeg decodes works under these names): phones' and the
web's containers, camcorders' and broadcast's MPEG-TS (``00001.MTS``), DV, DVD's MPEG-2 and broadcast MXF."""


class VideoError(ValueError):
    """A video cannot be read (missing, not a video, no video stream). The message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg reports about a video."""

    path: Path
    """The video file."""
    width: int
    """Frame width in pixels (after the rotation tag is applied, in square pixels: :data:`SQUARE_PIXELS`)."""
    height: int
    """Frame height in pixels."""
    fps: float
    """Average frame rate ffmpeg reports (the rate given to :func:`probe` when it reports none)."""
    duration: float
    """Duration in seconds (0 when unknown)."""
    has_audio: bool
    """Whether the file holds an audio stream."""
    transfer: Optional[str] = None
    """The HDR transfer ffmpeg lists for the video stream (``smpte2084``: PQ; ``arib-std-b67``: HLG), whose frames
    :func:`read_frames` tone-maps to SDR (:data:`TONE_MAP`); None for SDR video."""


@contextlib.contextmanager
def _quiet_imageio_ffmpeg():
    """imageio-ffmpeg warns on stderr whenever a decoded frame's size differs from the stream's stored size (a crop,
    a resize, or a phone video's rotation tag, which ffmpeg applies); library code prints nothing.

    A filter of the block's own, not the logger's level: reads that overlap (two threads) each add and remove theirs,
    while a level put back by the first to end would let the other's warnings through, and the one put back by the
    last would be the ERROR the other set, for good."""
    log = logging.getLogger("imageio_ffmpeg")
    errors_only = _ErrorsOnly()
    log.addFilter(errors_only)
    try:
        yield
    finally:
        log.removeFilter(errors_only)


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


SQUARE_PIXELS = "scale=w='if(gt(sar,0),round(iw*sar),iw)':h=ih,setsar=1"
"""ffmpeg filter to square pixels: a video whose pixels are not square (DV, broadcast, some phones store 720x576 for
a 4:3 or 16:9 picture) is widened or narrowed to its display aspect, so that faces are not squashed and a square
crop is square on screen. A no-op on square pixels (ffmpeg passes such frames through)."""


DEINTERLACE = "bwdif=mode=send_frame:parity=auto:deint=interlaced"
"""ffmpeg filter that deinterlaces the frames flagged interlaced (broadcast and DV recordings: each frame's two
fields, its even and odd rows, are a field apart in time, and every moving edge would be combed), one frame out per
frame in (the first field's moment), before anything scales rows; progressive frames pass through untouched."""


HDR_TRANSFERS = ("smpte2084", "arib-std-b67")
"""ffmpeg's names of the HDR transfers: PQ and HLG, which phones record in by default (an iPhone's 10-bit HEVC, BT.2020
primaries). Their code values mean other colours than SDR's: read as BT.709 they are grey and washed out."""

TONE_MAP = ("zscale=t=linear:npl=203,format=gbrpf32le,zscale=p=bt709,tonemap=mobius:param=0.5,"
            "zscale=t=bt709:m=bt709:r=pc,format=gbrp")
"""ffmpeg filters that turn an HDR video's frames (:data:`HDR_TRANSFERS`) into BT.709 SDR: to linear light with HDR's
reference white (203 nits, ITU-R BT.2408: where a phone puts paper white and a face's brightest skin) as SDR's white,
BT.2020 primaries to BT.709, and the light above half of that white rolled off (``mobius``: speculars and a sunlit
window keep their shading), not clipped; below it, colours are kept as they are."""


def tone_maps() -> bool:
    """Whether this ffmpeg has the filters of :data:`TONE_MAP` (imageio-ffmpeg's does; an ffmpeg built without zimg,
    given by ``IMAGEIO_FFMPEG_EXE``, has not: HDR frames are then read as they are stored, grey and washed out)."""
    return _has_filters(_ffmpeg(), ("zscale", "tonemap"))


@functools.lru_cache(maxsize=None)
def _has_filters(ffmpeg: str, names: Tuple[str, ...]) -> bool:
    listed = subprocess.run([ffmpeg, "-nostdin", "-hide_banner", "-filters"], **_FFMPEG_TEXT).stdout
    return all(re.search(rf"^\s*\S+\s+{n}\s", listed, re.MULTILINE) for n in names)


TONE_MAP_COMMAND = ("ffmpeg -i IN -vf zscale=t=linear:npl=203,format=gbrpf32le,zscale=p=bt709,tonemap=mobius:param=0.5,"
                    "zscale=t=bt709:m=bt709:r=tv,format=yuv420p -c:v libx264 -crf 12 -c:a copy OUT.mp4")
"""The command that makes an SDR copy of an HDR video, with an ffmpeg that has zscale (imageio-ffmpeg's)."""


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


_FFMPEG_TEXT = dict(capture_output=True, encoding="utf-8", errors="replace")
"""How ffmpeg's messages are read: it writes UTF-8 and repeats the input's name, which may hold bytes of another
encoding (a latin-1 'café.mp4' from an old zip on a UTF-8 system): strict decoding failed on them naming no file."""


def _input(path: PathLike) -> str:
    """``path`` as ffmpeg's input: absolute, so that a name that starts with one of ffmpeg's protocols and a colon
    (``file:take 2.mp4``, ``pipe:1.mp4``, ``concat:...``) is read as the file it names, not through that protocol."""
    return str(Path(path).absolute())


def require_file(path: PathLike) -> Path:
    """``path`` as a Path, or :class:`VideoError` saying what it is instead (:func:`~fastminerf.data.layout.not_a_file`):
    no such file, a folder (the folder of one's videos, given where the videos go, with how to give the videos in it),
    a link to a file that is gone."""
    p = Path(path)
    what = not_a_file(p)
    if what == "is a folder":
        raise VideoError(f"{p}: is a folder, not a video file; give the videos in it ({p / '*'})")
    if what is not None:
        raise VideoError(f"{p}: " + ("no such video file" if what == "does not exist" else what))
    return p


def probe(path: PathLike, fps: Optional[float] = None) -> VideoInfo:
    """Size, frame rate, duration and whether there is audio, or :class:`VideoError` naming the file.

    ``fps``: the rate the caller will decode at (``--fps``), if any: a video whose frame rate ffmpeg does not report
    (a browser's WebM recording) is then accepted with this rate instead of refused."""
    import imageio_ffmpeg

    p = require_file(path)
    try:
        with _quiet_imageio_ffmpeg():
            gen = imageio_ffmpeg.read_frames(_input(p), output_params=["-vf", SQUARE_PIXELS])
            meta = next(gen)
        gen.close()
    except (OSError, RuntimeError, StopIteration) as exc:
        # ffmpeg opened the file and found streams, none a picture (a voice memo saved as .mp4): its last line,
        # 'Error opening output files: Invalid argument', would say nothing of that
        kinds = sorted({k.lower() for k in _STREAM_KINDS.findall(str(exc))})
        if "does not contain any stream" in str(exc) and kinds and "video" not in kinds:
            raise VideoError(f"{p}: has no video stream (ffmpeg finds only {' and '.join(kinds)} in it): "
                             "not a video") from None
        if "moov atom not found" in str(exc):  # ffmpeg's last line says 'Invalid data', as of a file of another kind
            raise VideoError(f"{p}: holds no index (ffmpeg: 'moov atom not found'), which an MP4 / MOV writes at its "
                             "end: the file is cut short (an interrupted download or copy, or a recording that was "
                             "never finished); copy or download it again") from None
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise VideoError(f"{p}: ffmpeg cannot decode it as a video ({first})") from None
    w, h = meta["size"]
    rate = float(meta.get("fps") or 0.0)
    line = _video_stream_line(p)
    average, base = _video_rates(line)
    if average is not None and base is not None and average > base:
        # not an average of its frames (ffmpeg says 600 fps for DV in an AVI, 60k for a raw .dv, beside 25 tbr): the
        # rate every timestamp of the stream fits, which no average of its frames exceeds
        rate = base
    if not (rate > 0 and math.isfinite(rate)):
        if not fps:
            raise VideoError(f"{p}: ffmpeg reports no frame rate; pass fps (--fps) explicitly")
        rate = float(fps)
    return VideoInfo(p, int(w), int(h), rate, float(meta.get("duration") or 0.0), bool(meta.get("audio_codec")),
                     _transfer(line))


def _video_stream_line(path: PathLike) -> str:
    """The line ffmpeg lists for the file's first video stream ('' without one): asked once per version of the file
    (its size and modification time), though probe and each of prepare's three reads of a video want it."""
    try:
        st = os.stat(path)
        version = (st.st_size, st.st_mtime_ns)
    except OSError:  # ffmpeg says what is wrong with it
        version = None
    return _stream_line(_ffmpeg(), _input(path), version)


@functools.lru_cache(maxsize=64)
def _stream_line(ffmpeg: str, path: str, version: Optional[Tuple[int, int]]) -> str:
    res = subprocess.run([ffmpeg, "-nostdin", "-hide_banner", "-i", path], **_FFMPEG_TEXT)
    return next((m.group(0) for m in _VIDEO_STREAM.finditer(res.stderr)), "")


def _transfer(line: str) -> Optional[str]:
    """The HDR transfer (:data:`HDR_TRANSFERS`) in a video stream's line (:func:`_video_stream_line`, in its pixel
    format's parenthesis: ``yuv420p10le(tv, bt2020nc/bt2020/smpte2084, progressive)``), or None."""
    m = re.search(r"\([^()]*\b(" + "|".join(HDR_TRANSFERS) + r")\b[^()]*\)", line)
    return None if m is None else m.group(1)


def _more_than_8_bits(line: str) -> bool:
    """Whether a video stream's line (:func:`_video_stream_line`) gives a pixel format of more than 8 bits a sample
    (``yuv420p10le``, ``yuv422p12be``: phones' HDR and 10-bit video, cameras', ProRes)."""
    return re.search(r", [a-z0-9]+p(9|1[0-6])(le|be)\b", line) is not None


def _video_rates(line: str) -> Tuple[Optional[float], Optional[float]]:
    """The average and base frame rates (``fps``, ``tbr``) in the line ffmpeg lists for a video stream
    (:func:`_video_stream_line`), each None where it lists none. imageio-ffmpeg reads the first alone, and not where it
    is written in thousands ('60k')."""

    def rate(unit: str) -> Optional[float]:
        m = re.search(rf" ([0-9.]+)(k?) {unit}\b", line)
        return None if m is None else float(m.group(1)) * (1000.0 if m.group(2) else 1.0)

    return rate("fps"), rate("tbr")


def video_stream_seconds(path: PathLike) -> Optional[float]:
    """How long the file's first video stream lasts by what its header says (not by what decodes: a file cut short, an
    interrupted download or copy, keeps the header of the whole), or None where ffmpeg lists no such length.

    The picture's own length, not the container's ``Duration`` (its longest stream's: a slide video's sound may run
    on after its last picture): Matroska / WebM's ``DURATION`` tag of the stream, MP4 / MOV's edit list of the stream
    (ffmpeg lists both at its debug level, the edit list in the stream's time base), or the container's where the
    file holds the picture alone."""
    res = subprocess.run([_ffmpeg(), "-nostdin", "-hide_banner", "-v", "debug", "-i", _input(path)], **_FFMPEG_TEXT)
    text = res.stderr
    video = re.search(r"^\s*Stream #\d+:(\d+)[^:\n]*?, \d+, (\d+)/(\d+): Video:.*$", text, re.MULTILINE)
    if video is None:
        return None
    index, base = int(video.group(1)), int(video.group(2)) / int(video.group(3))
    block = text[video.end():]
    block = block[:re.search(r"^\s*Stream #|\Z", block, re.MULTILINE).start()]  # the stream's own metadata lines
    tag = re.search(r"^\s*DURATION\s*: (\d+):(\d+):([0-9.]+)\s*$", block, re.MULTILINE)
    if tag is not None:
        return int(tag.group(1)) * 3600 + int(tag.group(2)) * 60 + float(tag.group(3))
    edits = [int(m.group(1)) for m in re.finditer(rf"Processing st: {index}, edit list \d+ - media time: -?\d+, "
                                                  r"duration: (\d+)", text)]
    if sum(edits) > 0:
        return sum(edits) * base
    whole = re.search(r"^\s*Duration: (\d+):(\d+):([0-9.]+)", text, re.MULTILINE)
    if whole is not None and len(re.findall(r"^\s*Stream #", text, re.MULTILINE)) == 1:
        return int(whole.group(1)) * 3600 + int(whole.group(2)) * 60 + float(whole.group(3))
    return None


_VIDEO_STREAM = re.compile(r"^\s*Stream #\d+:\d+\S*: Video: .*$", re.MULTILINE)

_STREAM_KINDS = re.compile(r"^\s*Stream #\d+:\d+\S*: (\w+):", re.MULTILINE)
"""The kind (Video, Audio, Subtitle, Data, ...) of each stream ffmpeg lists for an input."""


def _on_screen_at(fps: float, origin: float = 0.0) -> Tuple[str, str]:
    """ffmpeg filters that make frame ``k`` the picture on screen at ``k / fps``: the last source frame that starts at
    or before it. The ``fps`` filter alone rounds each source time to the nearest output slot and keeps a slot's last
    frame, i.e. the picture shown half an output frame later (30 fps read at 10: source frame ``3k + 1``); source times
    moved half an output frame later first (less 1 ms, more than a container clock's rounding of a frame's time) round
    into the slot that starts at or after them. At the video's own rate and above, the same frames as the filter
    alone."""
    shift = 0.5 / float(fps) - 1e-3
    # start_time=origin (:func:`_origin`, on the file's own clock: -copyts): the first slot is the file's start, as
    # audio.wav's first sample is, also where the picture starts after the sound (the first picture held until then)
    return (f"setpts=PTS+{max(shift, 0.0)!r}/TB", f"fps={fps!r}:start_time={float(origin)!r}")


def _origin(path: PathLike) -> float:
    """Where a file's time 0 is on its own clock (ffmpeg's ``-copyts``): the earlier of its first picture's and its
    first sound's times, so that frames (:func:`read_frames`) and audio.wav (:func:`extract_audio`) count from the
    same moment. ffmpeg's own shift does not: an MPEG-TS file whose picture starts after its sound (tens of ms are
    common) had its frames counted from the picture and its sound from the sound. 0 when neither is found."""
    return _starts(path)[0]


def _starts(path: PathLike) -> Tuple[float, Optional[int], Optional[int]]:
    """:func:`_origin`, and the sample rate and channels of the file's first audio stream as decoded (None without
    one).

    One ffmpeg run a stream: with both in one run, ffmpeg could stop once the picture's first frame was out and
    before the sound's was shown (about 1 run in 200 on a loaded machine), which took the picture's start alone."""
    starts, rate, channels = [], None, None
    for stream, show in (("v", "-vf"), ("a", "-af")):
        res = subprocess.run([_ffmpeg(), "-nostdin", "-hide_banner", "-copyts", "-i", _input(path), "-map",
                              f"0:{stream}:0?", show, "showinfo" if stream == "v" else "ashowinfo",
                              f"-frames:{stream}", "1", "-f", "null", "-"], **_FFMPEG_TEXT)
        for m in _FIRST_PTS.finditer(res.stderr):
            starts.append(float(m.group(1)))
            rate, channels = (int(m.group(3)), int(m.group(2))) if m.group(3) else (rate, channels)
    return (min(starts) if starts else 0.0), rate, channels


_FIRST_PTS = re.compile(r"Parsed_a?showinfo_\d+ @ [^\]]*\] n: *0 pts: *-?\d+ pts_time:(-?[0-9.e+-]+)(?:.*? channels:(\d+).*? rate:(\d+))?")


def read_frames(
    path: PathLike,
    fps: float,
    crop: Optional[Tuple[int, int, int]] = None,
    size: Optional[Tuple[int, int]] = None,
    max_frames: Optional[int] = None,
) -> Iterator[np.ndarray]:
    """Decoded RGB frames of a video at a constant ``fps``.

    Args:
        path: the video.
        fps: output frame rate (ffmpeg's ``fps`` filter: frames are duplicated or dropped to keep time).
        crop: ``(x0, y0, side)`` square crop in source pixels (square ones, :data:`SQUARE_PIXELS`), applied before
            ``size``.
        size: ``(width, height)`` of the output frames (area-averaging resize); None keeps the size.
        max_frames: stop after this many frames.

    Yields:
        uint8 ``(H, W, 3)`` arrays (read-only views of ffmpeg's output), SDR: an HDR video's tone-mapped
        (:data:`TONE_MAP`).
    """
    import imageio_ffmpeg

    line = _video_stream_line(path)
    filters = [DEINTERLACE, SQUARE_PIXELS, *_on_screen_at(fps, _origin(path))]
    if crop is not None:
        x0, y0, side = crop
        if _more_than_8_bits(line):
            # ffmpeg's exact crop of 4:2:0 / 4:2:2 frames of more than 8 bits at an odd x misplaces their chroma (the
            # frames came out pure green once resized): cropped in 4:4:4 of 16 bits, nothing is lost or misplaced
            filters.append("format=yuv444p16le")
        # exact=1: otherwise ffmpeg rounds x0 and y0 down to the chroma grid (even pixels in 4:2:0 video), and the
        # frames would sit a source pixel away from the landmarks mapped with the crop asked for.
        filters.append(f"crop={side}:{side}:{x0}:{y0}:exact=1")
    if size is not None:
        # accurate_rnd+full_chroma_int: at swscale's fast precision, the conversion to RGB it does inside the resize
        # left out part of a limited-range video's expansion (every frame 2 levels darker than decoded whole)
        filters.append(f"scale={size[0]}:{size[1]}:flags=area+accurate_rnd+full_chroma_int")
    if _transfer(line) is not None and tone_maps():
        filters.append(TONE_MAP)  # last: on the fewest pixels (it works in floats)
    out = ["-vf", ",".join(filters)]
    if max_frames is not None:
        out += ["-frames:v", str(int(max_frames))]
    with _quiet_imageio_ffmpeg():
        gen = imageio_ffmpeg.read_frames(_input(path), input_params=["-copyts"], output_params=out)
        meta = next(gen)
    w, h = meta["size"]
    try:
        for buf in gen:
            yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
    finally:
        gen.close()


def extract_audio(path: PathLike, out_wav: PathLike, rate: Optional[int] = 16000, duration: Optional[float] = None,
                  mono: bool = True) -> Path:
    """Write the video's first audio stream as mono 16-bit PCM WAV at ``rate`` Hz, optionally only the first
    ``duration`` seconds. Written to a temporary name and renamed, so an interrupted run leaves no partial file.
    ``rate`` None: the stream's own, at most 48 kHz; ``mono`` False: its channels, more than two mixed down to stereo
    (above either, ffmpeg writes a WAV header the standard library's reader cannot read back).

    Raises:
        VideoError: the file has no audio track, or ffmpeg failed (its last message included).
    """
    out = Path(out_wav)
    cmd, _, _ = _audio_command(path, rate, duration, mono)
    with replaced_atomically(out, ".tmp.wav") as tmp:  # ffmpeg takes the format from the suffix
        res = subprocess.run(cmd + ["-acodec", "pcm_s16le", str(tmp)], **_FFMPEG_TEXT)
        _check_audio_run(path, res.returncode, res.stderr)
    return out


def decode_audio(path: PathLike, rate: Optional[int] = 16000, mono: bool = True) -> Tuple[np.ndarray, int]:
    """The samples :func:`extract_audio` writes, without a file: ``(S,)`` int16 mono or ``(S, C)`` with ``mono``
    False, and their rate (ffmpeg's raw 16-bit output read through a pipe: nothing is written to disk, so a full or
    read-only temporary folder does not stop it).

    Raises:
        VideoError: as :func:`extract_audio`.
    """
    cmd, rate, channels = _audio_command(path, rate, None, mono)
    res = subprocess.run(cmd + ["-f", "s16le", "-acodec", "pcm_s16le", "pipe:1"], capture_output=True)
    _check_audio_run(path, res.returncode, res.stderr.decode("utf-8", errors="replace"))
    x = np.frombuffer(res.stdout, "<i2")
    x = x[: len(x) - len(x) % channels].reshape(-1, channels).astype(np.int16)
    return np.ascontiguousarray(x[:, 0] if channels == 1 else x), rate


def _audio_command(path: PathLike, rate: Optional[int], duration: Optional[float], mono: bool) -> Tuple[List[str], int, int]:
    """The ffmpeg command (without its output) that decodes the file's first audio stream as :func:`extract_audio`
    says, the rate it decodes at and the channels it gives."""
    # On the file's own clock (-copyts), from its origin (_origin), where read_frames puts frame 0: an audio stream that
    # starts after the picture (a delay the container records, as screen and phone recorders write) is padded with
    # that much silence (aresample's first_pts; ffmpeg would otherwise pull the sound forward), and one that starts
    # before it (MPEG-TS) is kept from there, as the frames are.
    # first_pts counts the samples of the stream as decoded, not of the output: at another rate than ``rate`` (an
    # mp3 at 44.1 kHz, whose first sample after the encoder's priming is at 25 ms; an MPEG-TS file at 48 kHz, which
    # starts at 1.4 s) a start counted in output samples padded the sound with silence (255 samples; almost 1 s).
    origin, source_rate, channels = _starts(path)
    rate = int(min(source_rate or 48000, 48000) if rate is None else rate)
    start = int(round(origin * (source_rate or rate)))
    layout = ["-ac", "1"] if mono else ["-ac", "2"] if (channels or 0) > 2 else []
    # -map: the first audio stream, whose start and rate _starts measured; left to itself ffmpeg takes the one with the
    # most channels (a screen recording's desktop sound, stereo, over its microphone, mono, on track 1)
    cmd = [_ffmpeg(), "-nostdin", "-v", "error", "-y", "-copyts", "-i", _input(path), "-map", "0:a:0", "-vn", *layout,
           "-ar", str(rate), "-af", f"aresample=first_pts={start},asetpts=PTS-STARTPTS"]
    if duration is not None:
        cmd += ["-t", f"{duration:.6f}"]
    return cmd, rate, 1 if mono else min(channels or 1, 2)


def _check_audio_run(path: PathLike, status: int, stderr: str) -> None:
    """:class:`VideoError` naming ``path`` for an ffmpeg run of :func:`_audio_command` that failed."""
    if status != 0:
        if "matches no streams" in stderr:  # ffmpeg's last line ('Error opening output files') hides it
            raise VideoError(f"{path}: has no audio track: no sound to extract")
        msg = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {status}"
        raise VideoError(f"{path}: cannot extract the audio ({msg})")
