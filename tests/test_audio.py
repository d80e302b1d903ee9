"""Soundtracks of driven videos: WAV reading and writing, cutting a recording to a sequence of frames, and the
sound inside the mp4 that ``write_video`` / ``render_video`` write (decoded back and checked by its pitch)."""

import json
import wave

import numpy as np
import pytest

from fastminerf.audio import Audio, AudioError, frame_soundtrack, frames_at_rate, read_wav, write_wav
from fastminerf.data import load_dataset
from fastminerf.data.synth import generate
from fastminerf.render import drive_path, write_video

RATE = 16000


def _tone(freq: float, seconds: float, rate: int = RATE, amp: float = 8000.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return np.rint(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _pitch(x: np.ndarray, rate: int = RATE) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / rate)[int(np.argmax(spec))])


def test_wav_round_trip_and_formats(tmp_path):
    a = Audio(np.arange(-500, 500, dtype=np.int16) * 30, 22050)
    write_wav(tmp_path / "a.wav", a)
    b = read_wav(tmp_path / "a.wav")
    assert b.rate == 22050 and np.array_equal(b.samples, a.samples) and b.seconds == pytest.approx(1000 / 22050)
    assert not list(tmp_path.glob("*.tmp"))
    # Stereo 16-bit is averaged; 8-bit is re-centred and scaled to 16 bits.
    with wave.open(str(tmp_path / "s.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(np.array([[100, 300], [-1000, -2000]], "<i2").tobytes())
    assert read_wav(tmp_path / "s.wav").samples.tolist() == [200, -1500]
    with wave.open(str(tmp_path / "u8.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(1), w.setframerate(8000)
        w.writeframes(np.array([128, 255, 0], np.uint8).tobytes())
    assert read_wav(tmp_path / "u8.wav").samples.tolist() == [0, 127 * 256, -128 * 256]
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    with pytest.raises(AudioError, match="bad.wav: not a PCM WAV file"):
        read_wav(tmp_path / "bad.wav")
    with pytest.raises(AudioError, match="missing.wav: no such file"):
        read_wav(tmp_path / "missing.wav")


def test_frame_soundtrack_places_each_frame_at_its_time():
    src = Audio(np.arange(1000, dtype=np.int16), 100)  # 10 s, sample k has value k
    # Contiguous frames at 4 fps from 2 s: the recording from sample 200 on, 25 samples a frame.
    got = frame_soundtrack(src, [2.0, 2.25, 2.5], 4.0)
    assert got.rate == 100 and got.samples.tolist() == list(range(200, 275))
    # A gap (a dropped frame) is a cut, not a drift: the third frame's sound starts at its own time.
    got = frame_soundtrack(src, [2.0, 2.25, 3.0], 4.0).samples
    assert got[:50].tolist() == list(range(200, 250)) and got[50:].tolist() == list(range(300, 325))
    # Played at 3 fps the video lasts n/3 s: frames end at round(k r / fps) (33, 34 and 33 samples).
    got = frame_soundtrack(src, [1.0, 2.0, 3.0], 3.0).samples
    assert len(got) == 100 and got[0] == 100 and got[33] == 200 and got[66] == 233 and got[67] == 300 and got[99] == 332
    # Past the end of the recording: silence.
    got = frame_soundtrack(src, [9.9, 10.5], 10.0).samples
    assert got.tolist() == [990, 991, 992, 993, 994, 995, 996, 997, 998, 999] + [0] * 10
    with pytest.raises(AudioError, match="frame 1 has no usable time"):
        frame_soundtrack(src, [0.0, float("nan")], 4.0)
    with pytest.raises(AudioError, match="frame rate must be > 0"):
        frame_soundtrack(src, [0.0], 0.0)


def test_frames_at_rate_keeps_the_clock():
    """Frames taken at 4 fps from 2 s with a dropped frame (3.0 s missing), shown at 8 and at 2 fps: each new frame
    shows the source frame on screen at its moment, and its time runs on within a stretch and jumps at the gap."""
    times = [2.0, 2.25, 2.5, 2.75, 3.25]
    idx, t = frames_at_rate(5, 4.0, 8.0, times)
    assert idx.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert t.tolist() == pytest.approx([2.0, 2.125, 2.25, 2.375, 2.5, 2.625, 2.75, 2.875, 3.25, 3.375])
    idx, t = frames_at_rate(5, 4.0, 2.0, times)
    assert idx.tolist() == [0, 2, 4] and t.tolist() == pytest.approx([2.0, 2.5, 3.25])
    # the soundtrack of the new frames is the recording played unbroken within each stretch
    src = Audio(np.arange(1000, dtype=np.int16), 100)
    assert frame_soundtrack(src, frames_at_rate(5, 4.0, 8.0, times)[1], 8.0).samples.tolist()[:100] == \
        list(range(200, 300))
    assert frames_at_rate(3, 25.0, 30.0)[1] is None and len(frames_at_rate(3, 25.0, 30.0)[0]) == 4
    with pytest.raises(AudioError, match="frame rate must be > 0"):
        frames_at_rate(3, 25.0, 0.0)


def test_write_video_carries_the_soundtrack(tmp_path, decode_audio):
    # 20 frames at 10 fps: 1 s of 300 Hz, then 1 s of 1200 Hz.
    sound = Audio(np.concatenate([_tone(300, 1.0), _tone(1200, 1.0)]), RATE)
    frames = [np.full((16, 16, 3), k / 20, np.float32) for k in range(20)]
    info = write_video(frames, tmp_path / "v.mp4", fps=10, audio=sound)
    assert info.audio_seconds == pytest.approx(2.0)
    assert not list(tmp_path.glob(".*"))  # the temporary WAV is gone
    got = decode_audio(tmp_path / "v.mp4")
    assert abs(len(got) - 2 * RATE) < 0.05 * RATE
    assert _pitch(got[2000:14000]) == pytest.approx(300, abs=5)
    assert _pitch(got[18000:30000]) == pytest.approx(1200, abs=5)
    # Without a soundtrack the mp4 has no audio stream.
    write_video(frames, tmp_path / "silent.mp4", fps=10)
    assert len(decode_audio(tmp_path / "silent.mp4")) == 0


def test_driven_path_takes_the_drivers_speech(tmp_path, decode_audio):
    dirs = generate(tmp_path / "data", n_identities=2, n_frames=8, size=16, novel_frames=2, val_fraction=0.25)
    driver = dirs[1]
    (driver / "audio.wav").unlink()  # the procedural voice; this test brings its own recording
    data = load_dataset([tmp_path / "data"], splits=("train", "val"))
    path = drive_path(data, "id000", data, "val", driver_identity="id001")
    assert path.audio is None and path.soundtrack() is None and "no audio.wav" in path.silent_reason()
    # Give the driver a recording (400 Hz for 1 s, then 1000 Hz) and its val frames times in the second half.
    write_wav(driver / "audio.wav", Audio(np.concatenate([_tone(400, 1.0), _tone(1000, 1.0)]), RATE))
    file = driver / "transforms_val.json"
    meta = json.loads(file.read_text())
    for fr in meta["frames"]:
        del fr["time"]
    file.write_text(json.dumps(meta))
    data = load_dataset([tmp_path / "data"], splits=("train", "val"))
    path = drive_path(data, "id000", data, "val", driver_identity="id001")
    assert path.silent_reason() == "its frames carry no 'time'" and path.soundtrack() is None
    for k, fr in enumerate(meta["frames"]):
        fr["time"] = 1.2 + k / 4.0
    file.write_text(json.dumps(meta))
    data = load_dataset([tmp_path / "data"], splits=("train", "val"))
    path = drive_path(data, "id000", data, "val", driver_identity="id001")
    assert path.audio == driver / "audio.wav" and path.silent_reason() == ""
    sound = path.soundtrack(4.0)
    assert len(sound.samples) == len(path) * RATE // 4
    assert _pitch(sound.samples) == pytest.approx(1000, abs=5)
    head = path.head(1)
    assert len(head) == 1 and head.times.tolist() == [1.2] and head.audio == path.audio
    (driver / "audio.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(AudioError, match="id001/audio.wav: not a PCM WAV file"):
        path.soundtrack()


def test_a_recording_that_ends_before_the_frames_is_said_to(tmp_path):
    """A driver whose audio.wav ends before its frames (a video whose sound track is shorter than its picture) gave
    render an mp4 whose sound was silence there, reported as 'with 0.24 s of the driver's audio' even when every
    frame lay past the recording's end. A path all of whose frames lie past it is silent and says why; one only
    partly past says which frames are."""
    dirs = generate(tmp_path / "data", n_identities=2, n_frames=8, size=16, novel_frames=2, val_fraction=0.25)
    driver = dirs[1]
    write_wav(driver / "audio.wav", Audio(_tone(400, 0.5), RATE))
    file = driver / "transforms_val.json"
    meta = json.loads(file.read_text())

    def path_at(times):
        for fr, t in zip(meta["frames"], times):
            fr["time"] = t
        file.write_text(json.dumps(meta))
        fresh = load_dataset([tmp_path / "data"], splits=("train", "val"))
        return drive_path(fresh, "id000", fresh, "val", driver_identity="id001")

    n = len(meta["frames"])
    assert n >= 2
    path = path_at([1.0 + k / 4.0 for k in range(n)])  # every frame past the 0.5 s recording
    reason = path.silent_reason()
    assert "past the end of" in reason and "audio.wav (0.50 s)" in reason and "1.00 s" in reason, reason
    assert path.soundtrack() is None and path.past_recording() == reason
    path = path_at([0.25] + [1.0 + k / 4.0 for k in range(1, n)])  # the first frame heard, the others past the end
    assert path.silent_reason() == "" and path.soundtrack() is not None
    late = path.past_recording()
    assert f"{n - 1} of {n} frames" in late and "from 1.25 s on" in late and "audio.wav (0.50 s)" in late, late
    assert path_at([k / 8.0 for k in range(n)]).past_recording() == ""  # all within: nothing to say


def test_an_audio_wav_named_in_upper_case_is_read(tmp_path):
    """An identity folder made on a case-blind system (Windows, macOS) whose recording is named AUDIO.WAV or
    Audio.wav is read there as audio.wav; copied to Linux it was 'no audio.wav': a driven video silent and speech
    leaving the person out, with the file in plain sight. It is found in any case (the exact name first)."""
    from fastminerf.audio import audio_absence, identity_audio
    from fastminerf.speech import speech_clips

    dirs = generate(tmp_path / "data", n_identities=2, n_frames=8, size=16, novel_frames=2, val_fraction=0.25)
    (dirs[1] / "audio.wav").rename(dirs[1] / "AUDIO.WAV")
    (dirs[0] / "audio.wav").rename(dirs[0] / "Audio.wav")
    assert identity_audio(dirs[1]) == dirs[1] / "AUDIO.WAV" and audio_absence(dirs[1]) is None
    data = load_dataset([tmp_path / "data"], splits=("train", "val"))
    path = drive_path(data, "id000", data, "val", driver_identity="id001")
    assert path.audio == dirs[1] / "AUDIO.WAV" and path.silent_reason() == "" and path.soundtrack() is not None
    clips, skipped = speech_clips(data, ("train",))
    assert [c.name for c in clips] == ["id000", "id001"] and not skipped, skipped
    write_wav(dirs[1] / "audio.wav", Audio(_tone(400, 1.0), RATE))  # where both are there, the exact name
    assert identity_audio(dirs[1]) == dirs[1] / "audio.wav"


def test_an_audio_wav_that_is_not_a_file_is_said_to_be_what_it_is(tmp_path):
    """An identity whose audio.wav is a folder (an unpacked archive, a copy gone wrong) or a symbolic link that loops
    was reported as having 'no audio.wav' (render's silent driver, speech's skipped identities): the user looked,
    saw audio.wav there, and could not tell what was wrong. Both say what the path is."""
    from fastminerf.speech import speech_clips

    dirs = generate(tmp_path / "data", n_identities=2, n_frames=8, size=16, novel_frames=2, val_fraction=0.25)
    (dirs[1] / "audio.wav").unlink()
    (dirs[1] / "audio.wav").mkdir()
    (dirs[0] / "audio.wav").unlink()
    (dirs[0] / "audio.wav").symlink_to("audio.wav")
    data = load_dataset([tmp_path / "data"], splits=("train", "val"))
    path = drive_path(data, "id000", data, "val", driver_identity="id001")
    assert path.soundtrack() is None and "audio.wav is a folder" in path.silent_reason(), path.silent_reason()
    _, skipped = speech_clips(data, ("train",))
    assert len(skipped) == 2 and "audio.wav is a symbolic link that loops" in skipped[0], skipped
    assert "audio.wav is a folder" in skipped[1], skipped


def test_a_paths_sound_is_checked_without_reading_the_recording_again_and_again(tmp_path, monkeypatch):
    """render asks a path what it will say of the sound (past_recording, silent_reason) and then plays it
    (soundtrack, which asks silent_reason again): each question read the whole recording and mixed it to mono for its
    length, so a 10-minute 48 kHz stereo WAV given to render --speech was read four times (1.2 s and ~0.5 GB each) where
    one reading plays it. The length is the WAV's header's (the whole samples the file holds, a truncated file's too)."""
    from fastminerf import audio as audio_module
    from fastminerf import render as render_module
    from fastminerf.render import CameraPath

    rec = tmp_path / "studio.wav"
    write_wav(rec, Audio(np.stack([_tone(400, 1.0, 48000), _tone(800, 1.0, 48000)], 1), 48000))
    n = 8
    eye = np.repeat(np.eye(4, dtype=np.float32)[None], n, 0)
    path = CameraPath(eye, np.tile(np.float32([20, 20, 8, 8]), (n, 1)), np.zeros((n, 4), np.float32), 16, 16, 4.0,
                      rec, np.arange(n) / 4.0)  # frames at 0 .. 1.75 s of a 1 s recording
    reads = []
    for module in (audio_module, render_module):  # however render reaches it
        monkeypatch.setattr(module, "read_wav", lambda p, *a, **k: reads.append(p) or read_wav(p, *a, **k), raising=False)
    late = path.past_recording()
    assert "4 of 8 frames, from 1.00 s on" in late and "(1.00 s)" in late, late
    assert path.silent_reason() == ""
    sound = path.soundtrack()
    assert (sound.rate, sound.channels) == (48000, 2) and reads == [rec]  # the one reading that plays it
    # a file cut off mid-way (an interrupted copy) holds fewer samples than its header says: counted as it is
    rec.write_bytes(rec.read_bytes()[: 44 + 4 * 24000])
    assert "6 of 8 frames, from 0.50 s on" in path.past_recording()


def test_a_recording_that_is_no_wav_and_no_sound_is_named_for_what_it_is(tmp_path):
    """read_recording (a video's soundtrack: a driver video's own sound, a --speech recording) of a file that is
    neither a PCM WAV file nor sound ffmpeg decodes gave the WAV reader's account whatever the file was: an empty or
    damaged 'someone.mp4' was 'not a PCM WAV file ()'. A file named .wav keeps the WAV reader's account (a broken
    WAV); any other gets ffmpeg's, naming the file."""
    from fastminerf.audio import AudioError, read_recording

    video = tmp_path / "someone.mp4"
    video.write_bytes(b"")
    with pytest.raises(AudioError) as err:
        read_recording(video)
    assert "not a PCM WAV" not in str(err.value) and "someone.mp4: cannot read its sound" in str(err.value)
    wav = tmp_path / "broken.wav"
    wav.write_bytes(b"RIFF")
    with pytest.raises(AudioError, match=r"broken\.wav: not a PCM WAV file"):
        read_recording(wav)


@pytest.mark.parametrize("header", ["data", "riff_and_data", "riff_before_a_list_chunk"])
def test_a_wav_whose_header_was_never_finalised_is_read_to_its_end(tmp_path, header):
    """A recorder stopped before it wrote the sizes into the header (killed, a crash; the standard library's writer
    leaves a RIFF size of 36 and a data size of 0 until it is closed) leaves a WAV whose data chunk says 0 bytes over
    seconds of sound. read_wav read no samples (render --speech: 'holds no sound to hear'; a driven video: silence),
    and where the RIFF size is too small for the chunks before the data (a LIST chunk, as ffmpeg writes) the standard
    library's reader raised a bare RuntimeError, a traceback out of every command. ffmpeg reads such a file to its end;
    so do read_wav and wav_seconds where the reader finds the data chunk, and read_recording and load_speech always."""
    import struct

    from fastminerf.audio import read_recording, wav_seconds
    from fastminerf.speech import load_speech

    tone = _tone(440.0, 1.5)
    write_wav(tmp_path / "ok.wav", Audio(tone, RATE))
    data = bytearray((tmp_path / "ok.wav").read_bytes())
    at = data.find(b"data")
    data[at + 4: at + 8] = struct.pack("<I", 0)
    if header != "data":
        data[4:8] = struct.pack("<I", 36)
    if header == "riff_before_a_list_chunk":
        data[at:at] = b"LIST" + struct.pack("<I", 4) + b"INFO"
    (tmp_path / "open.wav").write_bytes(bytes(data))
    assert np.array_equal(read_recording(tmp_path / "open.wav").samples, tone)
    assert abs(load_speech(tmp_path / "open.wav").seconds - 1.5) < 1e-3
    if header != "riff_before_a_list_chunk":  # the standard library's reader finds the data chunk: it runs to the end
        assert np.array_equal(read_wav(tmp_path / "open.wav").samples, tone)
        assert wav_seconds(tmp_path / "open.wav") == 1.5
    else:  # one it cannot parse is a WAV it cannot read, named (and ffmpeg's to decode, above)
        with pytest.raises(AudioError, match="open.wav"):
            read_wav(tmp_path / "open.wav")
        with pytest.raises(AudioError, match="open.wav"):
            wav_seconds(tmp_path / "open.wav")


@pytest.mark.parametrize("width,mono", [(2, False), (2, True), (4, False), (1, False)])
def test_reading_a_long_recording_holds_it_about_twice(tmp_path, width, mono):
    """render --speech of a 10-minute 48 kHz stereo recording (115 MB of samples) peaked at 1 GB: read_wav, which
    reads every soundtrack (read_recording, and ffmpeg's decodes through it), widened the samples to 32 or 64 bits
    and clipped them into a second wide copy before the 16-bit result: about 6 times the recording in memory, so an
    hour-long one took gigabytes. The samples stay 16-bit: the file's bytes and the result (and a mono mix's float32
    sum) at most. The values are those of the wide arithmetic (8-bit re-centred, 32-bit floored to 16, channels
    averaged and rounded half to even)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    s, c = 200_000, 2
    ints = {1: rng.integers(0, 256, (s, c)).astype(np.uint8), 2: rng.integers(-32768, 32768, (s, c)).astype("<i2"),
            4: rng.integers(-2 ** 31, 2 ** 31, (s, c)).astype("<i4")}[width]
    with wave.open(str(tmp_path / "long.wav"), "wb") as w:
        w.setnchannels(c), w.setsampwidth(width), w.setframerate(48000)
        w.writeframes(ints.tobytes())
    tracemalloc.start()
    got = read_wav(tmp_path / "long.wav", mono=mono)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    wide = {1: (ints.astype(np.int64) - 128) * 256, 2: ints.astype(np.int64), 4: ints.astype(np.int64) // 65536}[width]
    want = np.rint(wide.mean(axis=1)) if mono else wide
    assert got.samples.dtype == np.int16 and np.array_equal(got.samples, want)
    assert peak < ints.nbytes + 2.2 * s * c * 2, peak / (s * c * 2)  # the file's bytes + 16-bit samples (+ a little)


@pytest.mark.parametrize("mono, rate", [(True, 16000), (False, None)])
def test_a_recording_is_decoded_whatever_room_the_temporary_folder_has(tmp_path, monkeypatch, file_size_limit,
                                                                       mono, rate):
    """A recording that is no PCM WAV (render --speech voice.m4a, a --drive video's sound) was decoded by ffmpeg into
    a WAV file in TMPDIR, read back and removed: with TMPDIR full, the command failed with 'voice.m4a: cannot read its
    sound (... No space left on device)', naming the recording, which was fine, and not the folder that was full.
    ffmpeg's samples now come through a pipe: nothing is written, and they are the very samples the WAV held."""
    import subprocess

    import imageio_ffmpeg

    from fastminerf.audio import decode_sound
    from fastminerf.prepare.video import extract_audio

    stereo = np.stack([_tone(440, 1.0), _tone(660, 1.0)], axis=1)
    write_wav(tmp_path / "src.wav", Audio(stereo, RATE))
    voice = tmp_path / "voice.m4a"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(tmp_path / "src.wav"),
                    "-c:a", "aac", str(voice)], check=True)
    expected = read_wav(extract_audio(voice, tmp_path / "ref.wav", rate=rate, mono=mono), mono=mono)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read again
    with file_size_limit(4000):  # a temporary folder with room for 4 kB a file: 1 s of sound needs 32 kB or more
        heard = decode_sound(voice, rate=rate, mono=mono)
    assert heard.rate == expected.rate and np.array_equal(heard.samples, expected.samples)
    assert not list((tmp_path / "tmp").iterdir())
