"""Edge cases of the speech and audio code: truncated and empty recordings, training on a handful of frames, splits
that are missing or whose frames are not in time order, and model files or data that do not fit the model. Small
networks (a few steps) on made-up sound: these tests check behaviour, not how well speech is heard."""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest
import torch

from fastminerf.audio import Audio, read_wav, write_wav
from fastminerf.data import load_dataset
from fastminerf.data.synth import generate
from fastminerf.speech import (
    SPEECH_RATE,
    SpeechClip,
    SpeechConfig,
    SpeechError,
    load_speech,
    load_speech_model,
    log_mel,
    predict_expressions,
    save_speech_model,
    split_expressions,
    train_speech,
)

FAST = SpeechConfig(steps=5, batch=8)


def _noise(seconds: float, seed: int = 0) -> Audio:
    rng = np.random.default_rng(seed)
    return Audio(rng.integers(-3000, 3000, int(seconds * SPEECH_RATE)).astype(np.int16), SPEECH_RATE)


def test_read_wav_keeps_the_whole_frames_of_a_truncated_file(tmp_path):
    """A recording cut off mid-sample (an interrupted recorder or copy): the header promises more than the file holds,
    and ``wave`` hands back the bytes that are there; the whole frames are read, the partial one dropped."""
    with wave.open(str(tmp_path / "s.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.array([[100, 300], [-1000, -2000], [7, 9]], "<i2").tobytes())
    data = (tmp_path / "s.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:-3])  # the last frame loses 3 of its 4 bytes
    assert read_wav(tmp_path / "cut.wav").samples.tolist() == [200, -1500]
    (tmp_path / "cut1.wav").write_bytes(data[:-1])  # ... or 1 byte: half a sample
    assert read_wav(tmp_path / "cut1.wav").samples.tolist() == [200, -1500]


def test_load_speech_refuses_a_recording_without_sound_by_name(tmp_path):
    """load_speech promises to name the file when it holds no sound; a recording shorter than one analysis window
    cannot be heard either (log_mel refuses it without knowing the file)."""
    write_wav(tmp_path / "empty.wav", Audio(np.zeros(0, np.int16), SPEECH_RATE))
    with pytest.raises(SpeechError, match="empty.wav"):
        load_speech(tmp_path / "empty.wav")
    write_wav(tmp_path / "blip48k.wav", Audio(np.zeros(48, np.int16), 48000))  # 1 ms, through ffmpeg
    with pytest.raises(SpeechError, match="blip48k.wav"):
        load_speech(tmp_path / "blip48k.wav")
    write_wav(tmp_path / "ok.wav", Audio(np.zeros(400, np.int16), SPEECH_RATE))  # one window of silence: usable
    assert len(load_speech(tmp_path / "ok.wav").samples) == 400


def test_load_speech_says_when_a_video_has_no_sound_track(tmp_path):
    """A silent video given as the recording (render --speech clip.mp4): ffmpeg's last line was 'Error opening output
    files: Invalid argument', which says nothing of the cause; the error names the file and says it has no sound."""
    from fastminerf.render import write_video

    write_video([np.zeros((16, 16, 3), np.uint8)] * 5, tmp_path / "silent.mp4", fps=25)
    with pytest.raises(SpeechError, match=r"silent\.mp4.*no audio track"):
        load_speech(tmp_path / "silent.mp4")
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "still.png", np.zeros((8, 8, 3), np.uint8))  # a picture: no sound either
    with pytest.raises(SpeechError, match=r"still\.png.*no audio track"):
        load_speech(tmp_path / "still.png")


def test_load_speech_names_an_undecodable_recording_once(tmp_path):
    """render --speech of a video without sound said 'clip.mp4: cannot read its sound (clip.mp4: has no audio track:
    no sound to extract)': ffmpeg's account already names the file, and load_speech named it again around it."""
    from fastminerf.render import write_video

    write_video([np.zeros((16, 16, 3), np.uint8)] * 5, tmp_path / "clip.mp4", fps=25)
    with pytest.raises(SpeechError) as err:
        load_speech(tmp_path / "clip.mp4")
    assert str(err.value).count("clip.mp4") == 1 and "no audio track" in str(err.value), str(err.value)
    (tmp_path / "noise.mp3").write_bytes(b"not audio at all")
    with pytest.raises(SpeechError) as err:
        load_speech(tmp_path / "noise.mp3")
    assert str(err.value).count("noise.mp3") == 1 and "cannot read its sound" in str(err.value), str(err.value)


def test_load_speech_says_a_folder_is_not_a_recording(tmp_path):
    """render --speech DIR said 'DIR: no such file' of a folder that exists."""
    (tmp_path / "voices").mkdir()
    with pytest.raises(SpeechError, match=r"voices is a folder, not a recording"):
        load_speech(tmp_path / "voices")


def test_training_on_very_few_frames_gives_finite_expressions():
    """A short clip leaves one training frame (or two, one per calibration fold): the expressions' spread is then
    undefined with Bessel's correction (NaN), which must not make every prediction NaN."""
    audio = _noise(1.0)
    mel = log_mel(audio)
    e = np.array([[0.5, -1.0, 2.0]], np.float32)
    one = train_speech([SpeechClip("a", mel, {"train": np.array([0.3])}, {"train": e})], FAST)
    got, _ = predict_expressions(one, audio, 25.0)
    assert np.all(np.isfinite(got)) and np.allclose(got, e, atol=1e-4)
    # two frames in different 1-s stretches: the calibration trains each fold's network on the other single frame
    e2 = np.array([[0.5, -1.0, 2.0], [0.0, 1.0, -2.0]], np.float32)
    two = train_speech([SpeechClip("a", mel, {"train": np.array([0.3, 1.5])}, {"train": e2})], FAST)
    assert torch.all(torch.isfinite(two.net.gain))
    assert np.all(np.isfinite(predict_expressions(two, audio, 25.0)[0]))


def test_train_speech_leaves_torchs_global_random_state_alone():
    """train_speech seeded torch's global generator with its own seed and left it so: a notebook's random draws after
    it were the same whatever it had seeded. Its network is still the same for the same seed."""
    audio = _noise(1.0)
    clip = SpeechClip("a", log_mel(audio), {"train": np.array([0.1, 0.5])}, {"train": np.zeros((2, 3), np.float32)})
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    first = train_speech([clip], FAST)
    assert torch.equal(torch.rand(3), expected)
    second = train_speech([clip], FAST)
    assert all(torch.equal(a, b) for a, b in zip(first.net.state_dict().values(), second.net.state_dict().values()))


def test_train_speech_refuses_clips_of_no_expression_coefficients_as_such():
    """Data of no expression coefficients (E = 0: identity codes alone, which train, render and evaluate) has nothing
    for speech to predict, but `speech` trained on it and stopped with 'its loss is nan (lr 0.002 blew the network
    up); try a smaller lr', after torch's warnings: the mean of an empty loss, and a false lead. It is refused
    before training, saying why."""
    audio = _noise(1.0)
    clip = SpeechClip("a", log_mel(audio), {"train": np.array([0.1, 0.5])}, {"train": np.zeros((2, 0), np.float32)})
    with pytest.raises(SpeechError, match="no expression coefficients"):
        train_speech([clip], FAST)


def test_train_speech_names_a_split_the_clips_do_not_have():
    audio = _noise(1.0)
    clip = SpeechClip("a", log_mel(audio), {"train": np.array([0.1, 0.5])}, {"train": np.zeros((2, 3), np.float32)})
    with pytest.raises(SpeechError, match="'val'"):
        train_speech([clip], FAST, ("val",))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech_edge")
    dirs = generate(root / "data", n_identities=1, n_frames=40, size=16, novel_frames=2, val_fraction=0.5, seed=5)
    data = load_dataset(dirs, splits=("train", "val"))
    from fastminerf.speech import speech_clips

    clips, _ = speech_clips(data, ("train",))
    model = train_speech(clips, SpeechConfig(steps=100, calibrate=0), ("train",), data.expression_space)
    return root, dirs, data, model


def test_split_expressions_do_not_depend_on_the_order_of_the_frames(small, tmp_path):
    """DATASET.md does not ask for frames in time order; smoothing over the frames must follow their times, not
    their rows, or a shuffled split blends the mouths of frames seconds apart."""
    _, dirs, data, model = small
    before = split_expressions(model, data, "val")
    file = dirs[0] / "transforms_val.json"
    original = file.read_text()
    meta = json.loads(original)
    perm = np.random.default_rng(0).permutation(len(meta["frames"]))
    meta["frames"] = [meta["frames"][k] for k in perm]
    try:
        file.write_text(json.dumps(meta))
        shuffled = load_dataset(dirs, splits=("train", "val"))
        after = split_expressions(model, shuffled, "val")
    finally:
        file.write_text(original)
    times = data.table("val").time
    assert np.allclose(shuffled.table("val").time, times[perm])  # the rows were shuffled
    np.testing.assert_allclose(after, before[perm], atol=1e-6)


def test_split_expressions_refuse_a_model_of_another_size_by_name(small):
    """Data and model whose expression spaces are unknown (None) cannot be compared by name; their sizes still can."""
    _, _, data, model = small
    other = train_speech([SpeechClip("x", log_mel(_noise(1.0)), {"train": np.array([0.1, 0.4])},
                                     {"train": np.zeros((2, 3), np.float32)})], FAST)
    assert other.expression_space is None and other.expression_dim != data.expression_dim
    with pytest.raises(SpeechError, match=f"3 expression coefficients.*{data.expression_dim}"):
        split_expressions(other, data, "val")


@pytest.mark.parametrize("codec,name", [("libmp3lame", "voice.mp3"), ("pcm_f32le", "voice.wav"), ("aac", "voice.m4a")])
def test_a_speech_path_of_any_recording_load_speech_reads_has_its_sound(small, tmp_path, codec, name):
    """speech_path reads any file ffmpeg decodes (as render --speech does), but the soundtrack of its path read the
    file as a PCM WAV: render_video of an mp3, an m4a or a float WAV failed with 'not a PCM WAV file' after the
    path was made. The video's sound is the recording's, at its frames' times."""
    import subprocess

    import imageio_ffmpeg

    from fastminerf.render import speech_path

    _, dirs, data, model = small
    voice = tmp_path / name
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(dirs[0] / "audio.wav"),
                    "-c:a", codec, str(voice)], check=True)
    path = speech_path(data, data.identities[0], model, voice).head(20)
    sound = path.soundtrack()
    assert sound is not None and len(sound.samples) == round(20 / path.fps * sound.rate)
    ref = read_wav(dirs[0] / "audio.wav")
    ref = np.interp(np.arange(len(sound.samples)) / sound.rate, np.arange(len(ref.samples)) / ref.rate, ref.samples)
    lag = 2048 if codec != "pcm_f32le" else 0  # an encoder's priming delay, a few ms
    best = max(np.corrcoef(sound.samples[k: len(ref) - lag + k], ref[: len(ref) - lag])[0, 1] for k in range(0, lag + 1, 8))
    assert best > 0.9


def test_load_speech_model_says_a_folder_is_a_folder(small, tmp_path):
    """--speech-model RUN (the run folder, not RUN/speech.pt) said 'speech model RUN does not exist' and suggested
    writing a model to the folder's path: the folder exists, and the model file in it is what is wanted."""
    _, _, _, model = small
    save_speech_model(tmp_path / "run" / "speech.pt", model)
    with pytest.raises(SpeechError, match=r"run is a folder.*run/speech\.pt"):
        load_speech_model(tmp_path / "run")


def test_load_speech_model_names_the_file_of_a_bad_config(small, tmp_path):
    _, _, _, model = small
    out = save_speech_model(tmp_path / "speech.pt", model)
    data = torch.load(out, weights_only=True)
    data["config"]["calibrate"] = 1  # refused by SpeechConfig (a ConfigError, not a TypeError)
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(SpeechError, match="bad.pt"):
        load_speech_model(tmp_path / "bad.pt")


def test_saving_a_speech_model_over_a_folder_says_so_not_that_the_disk_is_full(small, tmp_path):
    """fastminerf speech --out DIR (an existing folder) trained the model, then said 'cannot write the checkpoint DIR
    (is the disk full?)': it is a speech model, and the disk was fine. The message names the file and the cause."""
    _, _, _, model = small
    (tmp_path / "models").mkdir()
    with pytest.raises(OSError, match=r"speech model .*models.*[Ii]s a directory") as err:
        save_speech_model(tmp_path / "models", model)
    assert "disk" not in str(err.value) and "checkpoint" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"] and not any((tmp_path / "models").iterdir())


def test_frames_past_the_end_of_a_cut_recording_are_left_out_and_said(tmp_path):
    """An audio.wav cut short (a copy killed midway, a full disk; read_wav keeps what is there) left the later frames
    without their sound: speech learned their expressions from the recording's last column, silence, without a word
    (a tiny run reported its table as for whole data). Those frames are left out and the clip says how many."""
    from fastminerf.speech import speech_clips

    d = generate(tmp_path / "data", n_identities=1, n_frames=40, size=16, novel_frames=1, val_fraction=0.25, seed=5)[0]
    full = read_wav(d / "audio.wav")
    cut = Audio(full.samples[: len(full.samples) * 2 // 5], full.rate)
    write_wav(d / "audio.wav", cut)
    data = load_dataset([d], splits=("train", "val"))
    clips, skipped = speech_clips(data, ("train", "val"))
    times = np.concatenate([clips[0].times[s] for s in ("train", "val")])
    table_times = np.concatenate([data.table(s).time for s in ("train", "val")])
    late = int(np.sum(table_times > cut.seconds))
    assert 10 < late < 30 and times.max() <= cut.seconds and len(times) == len(table_times) - late
    assert len(clips[0].expressions["val"]) == len(clips[0].times["val"])
    assert len(skipped) == 1 and skipped[0].startswith(f"{d.name}: {late} of its frames") and "audio.wav" in skipped[0], skipped


def test_eval_speech_refuses_frames_past_the_end_of_a_cut_recording(small, tmp_path):
    """eval --speech on frames whose audio.wav was cut short predicted them from the recording's last column, silence,
    and scored those renders against the real mouths without a word: split_expressions refuses them, naming the
    identity, the split and the file."""
    import shutil

    _, dirs, _, model = small
    d = tmp_path / dirs[0].name
    shutil.copytree(dirs[0], d)
    full = read_wav(d / "audio.wav")
    write_wav(d / "audio.wav", Audio(full.samples[: len(full.samples) * 3 // 5], full.rate))
    data = load_dataset([d], splits=("train", "val"))
    assert split_expressions(model, data, "train").shape == data.table("train").expression.shape  # within: as ever
    with pytest.raises(SpeechError, match=r"frames of split 'val'.*past the end of .*audio\.wav"):
        split_expressions(model, data, "val")  # ... the held-out ones lie past its end


def test_speech_refuses_a_model_file_in_a_folder_it_cannot_make_before_learning(small, tmp_path, capsys, monkeypatch):
    """fastminerf speech --out FILE/speech.pt (its folder a file) learned the model, printed its scores and then
    failed on '[Errno 17] File exists: FILE': the model's place is checked, by name, before it learns."""
    from fastminerf.cli import main

    _, dirs, _, _ = small
    (tmp_path / "taken").write_text("a file")
    monkeypatch.setattr("fastminerf.speech.train_speech", lambda *a, **k: pytest.fail("learned before the check"))
    assert main(["speech", "--data", str(dirs[0]), "--out", str(tmp_path / "taken" / "speech.pt")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "taken/speech.pt: cannot make its folder" in err and "taken" in err


def test_speech_out_onto_a_file_that_is_no_speech_model_is_refused_before_learning(small, tmp_path, monkeypatch, capsys):
    """speech --data DATA --out RUN/checkpoint.pt (or a frame, bg.png: --out typed in a hurry) learned the model
    and wrote it over the file: the run's checkpoint or the data's background was gone. An existing file that is
    no speech model is refused before learning, by the command and by save_speech_model alike; an earlier speech
    model is replaced as before."""
    from fastminerf import speech as speech_module
    from fastminerf.cli import main
    from fastminerf.train import save_checkpoint

    root, dirs, _, model = small
    (tmp_path / "run").mkdir()
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoint.pt", what="checkpoint", payload={"format": "fastminerf-run"})
    frame = tmp_path / "bg.png"
    frame.write_bytes((dirs[0] / "bg.png").read_bytes())
    kept = {p: p.read_bytes() for p in (ckpt, frame)}
    monkeypatch.setattr(speech_module, "train_speech", lambda *a, **k: pytest.fail("learned before refusing"))
    for target in (ckpt, frame):
        assert main(["speech", "--data", str(dirs[0]), "--out", str(target), "--steps", "5"]) == 2
        assert f"{target.name} exists and is not a speech model" in " ".join(capsys.readouterr().err.split())
        with pytest.raises(SpeechError, match=rf"{target.name} exists and is not a speech model"):
            save_speech_model(target, model)
        assert target.read_bytes() == kept[target]
    monkeypatch.undo()
    out = save_speech_model(tmp_path / "speech.pt", model)
    save_speech_model(out, model)  # an earlier speech model: replaced
    assert load_speech_model(out).identities == model.identities


def test_render_speech_decodes_the_recording_for_the_model_once(small, tmp_path, monkeypatch):
    """render --speech REC.mp3 read the recording for the speech model twice (ffmpeg's probes and decode each time):
    the command reads it before the run's model (to refuse a bad one early), and speech_path, handed the file since
    the soundtrack became the recording itself, read it again. The command's reading is handed on."""
    import subprocess

    import imageio_ffmpeg

    from fastminerf import load_config, speech, train
    from fastminerf.cli import main

    _, dirs, _, model = small
    train(load_config("tiny", ["train.steps=2"]), dirs, tmp_path / "run")
    save_speech_model(tmp_path / "run" / "speech.pt", model)
    voice = tmp_path / "voice.mp3"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(dirs[0] / "audio.wav"),
                    str(voice)], check=True)
    read = []
    monkeypatch.setattr(speech, "load_speech", lambda p: read.append(p) or load_speech(p))
    assert main(["render", "--run", str(tmp_path / "run"), "--identity", dirs[0].name, "--speech", str(voice),
                 "--frames", "3", "--out", str(tmp_path / "say.mp4")]) == 0
    assert read == [voice]


def test_a_speech_model_of_another_expression_space_is_refused_as_such(small, tmp_path):
    """render --speech (speech_path) with a speech model learned from data prepared elsewhere was refused only once
    the render began (render_sequence's check of a driven path), as 'the expressions of the driver are in ...:
    Prepare it with the training data's basis (fastminerf prepare VIDEO ...)': there is no driver and no video to
    prepare, the speech model is what must be learned again; eval --speech (split_expressions) gave the same remedy.
    Both refuse before any prediction, naming the speech model's file and space, the identity's space and the remedy."""
    from fastminerf.render import speech_path

    _, dirs, data, model = small
    other = load_speech_model(save_speech_model(tmp_path / "other.pt", model))
    other.expression_space = "pca12-0123456789"  # as if learned from data prepared elsewhere
    for call in (lambda: speech_path(data, data.identities[0], other, dirs[0] / "audio.wav"),
                 lambda: split_expressions(other, data, "val")):
        with pytest.raises(SpeechError) as err:
            call()
        msg = str(err.value)
        assert "other.pt" in msg and "pca12-0123456789" in msg and data.expression_space in msg, msg
        assert "fastminerf speech" in msg and "driver" not in msg and "prepare" not in msg, msg


def test_speech_training_that_diverges_stops_instead_of_keeping_nan_weights():
    """speech --set lr=... too high (here 1e6) blew the network up to NaN within a few steps, yet trained on, printed
    'nan' scores and wrote the model; render --speech then drove the face with NaN expressions without a word. Like
    train (TrainingDiverged), speech training stops at the first non-finite loss, naming the step and the rate."""
    audio = _noise(2.0)
    rng = np.random.default_rng(0)
    times = np.linspace(0.1, 1.9, 40)
    clip = SpeechClip("a", log_mel(audio), {"train": times}, {"train": rng.normal(size=(40, 3)).astype(np.float32)})
    for calibrate in (0, 3):  # the single network, and a calibration fold's
        with pytest.raises(SpeechError, match=r"diverged at step \d+ .*lr.*1e\+06"):
            train_speech([clip], SpeechConfig(steps=40, batch=8, lr=1e6, calibrate=calibrate))


@pytest.mark.parametrize("key,value", [("identities", 5), ("metrics", [1]), ("expression_space", 3)])
def test_load_speech_model_names_the_file_of_a_bad_entry(small, tmp_path, key, value):
    """A speech.pt whose network loads but whose identities, metrics or expression space are of the wrong kind (a
    file edited or written by another tool) crashed render --speech, eval --speech and info RUN with a bare TypeError
    traceback from load_speech_model; it is a SpeechError naming the file and the key, as a bad config is."""
    _, _, _, model = small
    data = torch.load(save_speech_model(tmp_path / "speech.pt", model), weights_only=True)
    data[key] = value
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(SpeechError, match=f"bad.pt.*'{key}'"):
        load_speech_model(tmp_path / "bad.pt")
