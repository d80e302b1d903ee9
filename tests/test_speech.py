"""Speech to expressions (fastminerf.speech), render --speech and fastminerf speech, on the procedural heads whose
audio.wav is a voice that follows each head's mouth (loud and open-vowelled while the jaw is open)."""

from __future__ import annotations

import dataclasses
import json
import wave

import numpy as np
import pytest
import torch

from fastminerf import load_config, load_dataset, train
from fastminerf.audio import Audio, read_wav, write_wav
from fastminerf.config import ConfigError, flat_config
from fastminerf.cli import main
from fastminerf.data.heads import EXPRESSION_NAMES
from fastminerf.data.synth import generate
from fastminerf.render import pose_loop, speech_path
from fastminerf.speech import (
    COLUMNS_PER_SECOND,
    MEL_BANDS,
    SPEECH_RATE,
    SpeechConfig,
    SpeechError,
    frame_windows,
    load_speech,
    load_speech_model,
    log_mel,
    mel_filterbank,
    mouth_opening,
    predict_expressions,
    save_speech_model,
    speech_clips,
    speech_metrics,
    split_expressions,
    train_speech,
)
from fastminerf.speech import _predict_times  # the per-clip prediction split_expressions must agree with

JAW = EXPRESSION_NAMES.index("jaw_open")
STEPS = 250


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Three procedural heads with 120 frames (4.8 s of voice) each, a quarter of them held out as val, and a
    speech model learned from the train frames."""
    root = tmp_path_factory.mktemp("speech")
    dirs = generate(root / "data", n_identities=3, n_frames=120, size=16, novel_frames=2, val_fraction=0.25, seed=3)
    data = load_dataset(dirs, splits=("train", "val", "novel"))
    clips, skipped = speech_clips(data, ("train", "val", "novel"))
    torch.manual_seed(0)
    model = train_speech(clips, SpeechConfig(steps=STEPS), ("train",), data.expression_space)
    return root, dirs, data, clips, skipped, model


def test_mel_filterbank_and_a_tone_lands_in_its_band():
    fb = mel_filterbank()
    assert fb.shape == (MEL_BANDS, 257)
    peaks = fb.argmax(1)
    assert np.all(np.diff(peaks) >= 0) and fb.max() <= 1.0 + 1e-6
    t = np.arange(SPEECH_RATE) / SPEECH_RATE
    tone = Audio(np.rint(8000 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.int16), SPEECH_RATE)
    mel = log_mel(tone, normalise=False)
    assert mel.shape == (101, MEL_BANDS)  # 1 s at 100 columns a second, centred windows
    band = int(np.median(mel.argmax(1)))
    centre_hz = peaks[band] * SPEECH_RATE / 512
    assert abs(centre_hz - 1000.0) < 120.0


def test_frame_windows_are_centred_on_each_frame_time():
    mel = np.zeros((300, 4), np.float32)
    mel[250] = 1.0  # the sound at 2.5 s
    mel[0], mel[-1] = 3.0, 2.0  # the first and last columns, told apart from their neighbours
    w = frame_windows(mel, np.array([2.5, 0.0, 2.98]), context=3)
    assert w.shape == (3, 7, 4)
    assert np.argmax(w[0, :, 0]) == 3  # the centre column
    assert np.all(w[1, :4] == mel[0]) and np.all(w[1, 4:] == 0)  # before the start: the first column repeated
    assert np.all(w[2, :4] == 0) and np.all(w[2, 4:] == mel[-1])  # past the end: the last column repeated
    with pytest.raises(SpeechError, match="frame 1 has no usable time"):
        frame_windows(mel, np.array([0.1, np.nan]), 3)
    assert COLUMNS_PER_SECOND == 100


def test_a_frame_reads_the_mel_column_nearest_its_time():
    """log_mel's column j is centred on j / 100 s, so a frame hears the column nearest its time: 0.006 s is 0.6 of a
    column after column 0 (column 1), 0.014 s is 0.4 after column 1 (column 1), and frame 29 of a 25 fps video
    (prepare writes its time as 29 / 25) is column 116 although 29 / 25 * 100 is 115.99999999999999 in floating point
    (a floor read column 115, 10 ms early)."""
    mel = np.eye(200, dtype=np.float32)  # column j holds a 1 in band j: a window's band names its column
    times = np.array([0.006, 0.014, 29 / 25, 0.004])
    assert 29 / 25 * COLUMNS_PER_SECOND < 116  # the floating-point case itself
    w = frame_windows(mel, times, context=0)
    assert np.argmax(w[:, 0], axis=1).tolist() == [1, 1, 116, 0]


def test_clips_leave_out_frames_without_time_and_identities_without_audio(heads, tmp_path):
    _, dirs, data, clips, skipped, _ = heads
    assert [c.name for c in clips] == data.identities and skipped == []
    for c in clips:
        assert len(c.times["novel"]) == 0  # novel frames carry no time in the recording
        assert len(c.times["train"]) == 90 and len(c.times["val"]) == 30
    (dirs[0] / "audio.wav").rename(tmp_path / "kept.wav")
    try:
        clips2, skipped2 = speech_clips(load_dataset(dirs, splits=("train",)), ("train",))
    finally:
        (tmp_path / "kept.wav").rename(dirs[0] / "audio.wav")
    assert [c.name for c in clips2] == data.identities[1:]
    assert skipped2 == [f"{data.identities[0]}: no audio.wav"]


def test_the_network_hears_the_mouth_on_held_out_frames(heads):
    """The held-out (val) frames' jaw is predicted from the sound alone: most of its variance about the
    training mean is explained, and coefficients the voice does not carry are held near their mean by the
    calibration, so the whole expression is predicted no worse than by the mean."""
    _, _, _, clips, _, model = heads
    m = speech_metrics(model, clips, ("val",))
    assert m["all"]["frames"] == 90
    assert m["all"]["mouth_r2"] > 0.6, m["all"]
    assert m["all"]["mouth_corr"] > 0.8, m["all"]
    gains = model.net.gain.numpy()
    assert gains[JAW] > 0.6  # the jaw is heard
    assert np.median(gains) < 0.3  # most coefficients (blinks, brows, gaze) are not
    # without the calibration the network makes up the coefficients it cannot hear, worse than their mean
    raw = train_speech(clips, SpeechConfig(steps=STEPS, calibrate=0), ("train",), model.expression_space)
    m_raw = speech_metrics(raw, clips, ("val",))
    assert m["all"]["r2"] > m_raw["all"]["r2"] + 0.2 and m["all"]["r2"] > -0.1, (m["all"], m_raw["all"])
    # on the training frames the fit is closer still
    assert speech_metrics(model, clips, ("train",))["all"]["mouth_r2"] > m["all"]["mouth_r2"]


def test_speech_path_makes_a_head_say_another_heads_voice(heads):
    """id000 saying id001's recording: one frame per 1/fps of sound, its jaw following id001's tracked jaw, the
    head poses id000's own, played forward and back."""
    _, dirs, data, _, _, model = heads
    voice = dirs[1] / "audio.wav"
    path = speech_path(data, data.identities[0], model, voice)
    seconds = read_wav(voice).seconds
    assert len(path) == int(np.ceil(seconds * 25 - 1e-9)) and path.fps == 25
    assert path.expression_space == data.expression_space and path.silent_reason() == ""
    table = data.table("train")
    src = table.frames_of(1)
    truth = np.concatenate([table.expression[src], data.table("val").expression[data.table("val").frames_of(1)]])
    assert np.corrcoef(path.expression[: len(truth), JAW], truth[:, JAW])[0, 1] > 0.8
    own = table.c2w[table.frames_of(0)]
    assert np.allclose(path.c2w[:90], own) and np.allclose(path.c2w[90:], own[pose_loop(90, len(path))[90:]])
    assert len(path.soundtrack().samples) == round(len(path) / 25 * SPEECH_RATE)


def test_speech_path_at_another_rate_keeps_the_heads_speed(heads):
    """render --speech --fps 50 on a 25 fps person played its training head poses one per frame, the head turning
    twice as fast as in its video while the mouth kept the recording's time (--fps 12.5: half as fast). Frame k takes
    the pose at its time, training frame k * 25 / fps."""
    _, dirs, data, _, _, model = heads
    table = data.table("train")
    own = table.c2w[table.frames_of(0)]
    fast = speech_path(data, data.identities[0], model, dirs[1] / "audio.wav", fps=50)
    assert fast.fps == 50 and len(fast) > 2 * len(own)
    np.testing.assert_array_equal(fast.c2w[:2 * len(own):2], own)
    np.testing.assert_array_equal(fast.c2w[1:2 * len(own) - 1:2], own[1:])  # a frame between two: the later, rounded up
    slow = speech_path(data, data.identities[0], model, dirs[1] / "audio.wav", fps=12.5)
    np.testing.assert_array_equal(slow.c2w[:len(own) // 2], own[::2][:len(own) // 2])


def test_split_expressions_drive_each_frame_by_its_own_sound(heads, tmp_path):
    """A split's table, row for row, as the sound at each frame's time says: the val frames' jaws follow the
    tracked ones, and identities without audio or frames without time are refused by name."""
    _, dirs, data, clips, _, model = heads
    spoken = split_expressions(model, data, "val")
    table = data.table("val")
    assert spoken.shape == table.expression.shape and spoken.dtype == np.float32
    assert np.corrcoef(spoken[:, JAW], table.expression[:, JAW])[0, 1] > 0.8
    assert not np.allclose(spoken, table.expression)
    # the same as predicting the identity's clip at those times
    c = clips[1]
    assert np.allclose(spoken[table.frames_of(1)], _predict_times(model, c.mel, c.times["val"]))
    with pytest.raises(SpeechError, match="frames of split 'novel' carry no 'time'"):
        split_expressions(model, data, "novel")
    with pytest.raises(SpeechError, match="split 'test' is not loaded"):
        split_expressions(model, data, "test")
    (dirs[0] / "audio.wav").rename(tmp_path / "kept.wav")
    try:
        with pytest.raises(SpeechError, match=f"identity '{data.identities[0]}' has no audio.wav"):
            split_expressions(model, data, "val")
    finally:
        (tmp_path / "kept.wav").rename(dirs[0] / "audio.wav")


def test_one_split_given_as_a_string_is_that_split(heads):
    """speech_clips(data, "train") and train_speech(..., fit_splits="train") took the splits 't', 'r', ... ("split
    't' is not loaded")."""
    _, _, data, _, _, _ = heads
    clips, _ = speech_clips(data, "train")
    assert clips and all(set(c.times) == {"train"} for c in clips)
    model = train_speech(clips, SpeechConfig(steps=2, calibrate=0), "train", data.expression_space)
    assert model.net.mean.shape == (data.expression_dim,)


def test_pose_loop_plays_forward_then_back():
    assert pose_loop(3, 8).tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    assert pose_loop(1, 3).tolist() == [0, 0, 0]


def test_speech_model_round_trip_and_bad_files(heads, tmp_path):
    _, dirs, _, _, _, model = heads
    out = save_speech_model(tmp_path / "speech.pt", model)
    back = load_speech_model(out)
    audio = load_speech(dirs[2] / "audio.wav")
    a, _ = predict_expressions(model, audio, 25.0)
    b, _ = predict_expressions(back, audio, 25.0)
    np.testing.assert_array_equal(a, b)
    assert back.expression_space == model.expression_space and back.identities == model.identities
    with pytest.raises(SpeechError, match="does not exist"):
        load_speech_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(out.read_bytes()[:100])
    with pytest.raises(SpeechError, match="corrupt or not a speech model"):
        load_speech_model(bad)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(SpeechError, match="not a fastminerf speech model"):
        load_speech_model(tmp_path / "other.pt")


def test_train_speech_learns_when_the_caller_turned_gradients_off(heads):
    """train_speech called with autograd off (a serving process's torch.set_grad_enabled(False), a notebook cell in
    torch.no_grad()) stopped at its first step with torch's 'element 0 of tensors does not require grad'. It learns
    as with gradients on, and gives the caller's mode back."""
    _, _, data, clips, _, _ = heads
    cfg = SpeechConfig(steps=3, calibrate=0)
    expected = train_speech(clips, cfg, ("train",), data.expression_space)
    with torch.no_grad():
        got = train_speech(clips, cfg, ("train",), data.expression_space)
        assert not torch.is_grad_enabled()
    want = expected.net.state_dict()
    assert all(torch.equal(want[k], v) for k, v in got.net.state_dict().items())


def test_train_speech_runs_inside_the_callers_inference_mode(heads):
    """train_speech inside torch.inference_mode() (a server's request handler) stopped at its first step with torch's
    'Inference tensors cannot be saved for backward'; it learns as outside it."""
    _, _, data, clips, _, _ = heads
    cfg = SpeechConfig(steps=2, calibrate=0)
    expected = train_speech(clips, cfg, ("train",), data.expression_space)
    with torch.inference_mode():
        got = train_speech(clips, cfg, ("train",), data.expression_space)
        assert torch.is_inference_mode_enabled()
    want = expected.net.state_dict()
    assert all(torch.equal(want[k], v) for k, v in got.net.state_dict().items())


def test_speech_works_under_the_callers_float64_default_dtype(heads, tmp_path):
    """Under torch.set_default_dtype(torch.float64) (a notebook's own numerics) speech_path, predict_expressions
    and train_speech stopped with torch's 'expected m1 and m2 to have the same dtype, but got: float != double'
    (the STFT's window took the default dtype), and load_speech_model gave a float64 network. They give what they
    give under float32, and the caller keeps its default."""
    _, dirs, data, clips, _, model = heads
    out = save_speech_model(tmp_path / "speech.pt", model)
    audio = load_speech(dirs[2] / "audio.wav")
    expected, _ = predict_expressions(model, audio, 25.0)
    cfg = SpeechConfig(steps=2, calibrate=0)
    trained = train_speech(clips, cfg, ("train",), data.expression_space).net.state_dict()
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        back = load_speech_model(out)
        assert {p.dtype for p in back.net.parameters()} == {torch.float32}
        np.testing.assert_array_equal(predict_expressions(back, audio, 25.0)[0], expected)
        again = train_speech(clips, cfg, ("train",), data.expression_space).net.state_dict()
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(before)
    assert all(torch.equal(trained[k], v) for k, v in again.items())


def test_load_speech_model_leaves_torchs_global_random_state_alone(heads, tmp_path):
    """load_speech_model built the network (initial weights from torch's global generator) before loading the
    file's weights over them: every load moved the caller's random stream."""
    model = heads[-1]
    out = save_speech_model(tmp_path / "speech.pt", model)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    load_speech_model(out)
    assert torch.equal(torch.rand(3), expected)


def test_speech_config_overrides_name_the_bad_key():
    assert flat_config(SpeechConfig, ["steps=10", "noise=0.1"]) == SpeechConfig(steps=10, noise=0.1)
    with pytest.raises(ConfigError, match="unknown config key 'stepz'; did you mean steps"):
        flat_config(SpeechConfig, ["stepz=3"])
    with pytest.raises(ConfigError, match="'dropout' must be in"):
        flat_config(SpeechConfig, ["dropout=1.5"])
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        flat_config(SpeechConfig, ["steps=many"])


@pytest.mark.parametrize("key", ["lr", "block", "noise", "smooth", "weight_decay"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_speech_config_refuses_a_non_finite_number(key, value):
    """speech --set lr=nan (or inf; block=nan, noise=inf, ...) passed SpeechConfig's checks ('lr <= 0' and 'noise >= 0'
    hold for neither NaN nor inf as written) where lr=-1 is refused, and trained a network of NaN weights: the
    fields are refused as not finite, naming the key, as the run config's train.lr is."""
    with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
        flat_config(SpeechConfig, [f"{key}={value}"])
    with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
        SpeechConfig(**{key: float(value)})


@pytest.mark.parametrize("value", ["40", "1e9"])
def test_speech_config_refuses_a_smoothing_longer_than_a_second(value):
    """speech --set smooth=1e9 ended in numpy's traceback (4.37 TiB for the Gaussian's kernel) after loading the data,
    and smooth=40 (40 ms typed as milliseconds, smooth being seconds since 1173382) trained and rendered lips held
    still without a word: a Gaussian of 40 s flattens every syllable. 'smooth' is refused above 1 s, naming the key
    and its unit."""
    with pytest.raises(ConfigError, match="'smooth' must be at most 1 second"):
        flat_config(SpeechConfig, [f"smooth={value}"])
    assert SpeechConfig(smooth=1.0).smooth == 1.0


def test_load_speech_converts_other_formats_and_rates(tmp_path, heads):
    _, dirs, _, _, _, _ = heads
    src = read_wav(dirs[0] / "audio.wav")
    t = np.arange(len(src.samples) * 3) / 48000.0
    write_wav(tmp_path / "48k.wav", Audio(np.rint(5000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), 48000))
    a = load_speech(tmp_path / "48k.wav")
    assert a.rate == SPEECH_RATE and abs(a.seconds - src.seconds) < 0.05
    (tmp_path / "noise.mp3").write_bytes(b"not audio at all")
    with pytest.raises(SpeechError, match="noise.mp3: cannot read its sound"):
        load_speech(tmp_path / "noise.mp3")


def test_mouth_opening_of_prepared_spaces_uses_the_inner_lips():
    class Basis:  # a stand-in for ExpressionBasis: one coefficient moves landmark 14 (lower inner lip) down
        def deformation(self, c):
            d = np.zeros((len(c), 478, 3))
            d[:, 14, 1] = -np.asarray(c)[:, 0]
            return d

    e = np.array([[0.0], [3.0]])
    assert np.allclose(mouth_opening(e, "pca1-x", Basis()), [0.0, 1.0])
    assert mouth_opening(e, "pca1-x", None) is None


def test_cli_speech_then_render_speech(heads, tmp_path, decode_audio, capsys):
    root, dirs, _, _, _, _ = heads
    cfg = load_config("tiny", ["train.steps=20"])
    train(cfg, dirs[:2], tmp_path / "run")
    assert main(["speech", "--run", str(tmp_path / "run"), "--steps", "60"]) == 0
    assert (tmp_path / "run" / "speech.pt").is_file()
    m = load_speech_model(tmp_path / "run" / "speech.pt").metrics
    assert m["splits"] == ["val"] and m["all"]["frames"] == 60  # the val frames of the run's two identities
    capsys.readouterr()
    assert main(["info", str(tmp_path / "run"), "--json"]) == 0
    sp = json.loads(capsys.readouterr().out)["speech"]
    assert sp["identities"] == 2 and sp["held_out"]["frames"] == 60
    assert abs(sp["held_out"]["mouth_r2"] - m["all"]["mouth_r2"]) < 1e-9
    assert main(["eval", "--run", str(tmp_path / "run"), "--data", str(dirs[0]), "--split", "val", "--speech",
                 "--max-frames", "2", "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["expressions"] == f"speech ({tmp_path / 'run' / 'speech.pt'})" and ev["frames"] == 2
    out = tmp_path / "say.mp4"
    assert main(["render", "--run", str(tmp_path / "run"), "--identity", "id000", "--speech",
                 str(dirs[2] / "audio.wav"), "--frames", "20", "--out", str(out)]) == 0
    sound = decode_audio(out)
    assert abs(len(sound) - 20 / 25 * 16000) < 1600  # 0.8 s of the recording (AAC frames round it)
    # a 48 kHz stereo recording is the video's soundtrack as it is, not the 16 kHz mono copy the model hears
    studio = _studio_recording(tmp_path / "studio.wav", 1.0)
    assert main(["render", "--run", str(tmp_path / "run"), "--identity", "id000", "--speech", str(studio),
                 "--frames", "20", "--out", str(out)]) == 0
    rate, channels, played = _audio_stream(out)
    assert (rate, channels) == (48000, 2) and abs(len(played) - 20 / 25 * 48000) < 0.03 * 48000
    other = load_speech_model(tmp_path / "run" / "speech.pt")
    other.expression_space = "pca12-0123456789"  # as if learned from data prepared elsewhere
    save_speech_model(tmp_path / "other.pt", other)
    assert main(["render", "--run", str(tmp_path / "run"), "--identity", "id000", "--speech", str(dirs[2] / "audio.wav"),
                 "--speech-model", str(tmp_path / "other.pt"), "--out", str(tmp_path / "y.mp4")]) == 2
    assert "pca12-0123456789" in capsys.readouterr().err and not (tmp_path / "y.mp4").exists()
    assert main(["speech", "--data", str(root / "data")]) == 2  # --out is required with --data
    assert main(["render", "--run", str(tmp_path / "run"), "--identity", "id000", "--speech", str(tmp_path / "none.wav"),
                 "--out", str(tmp_path / "x.mp4")]) == 2


@pytest.mark.parametrize("where", ["folder", "run_folder"])
def test_cli_speech_refuses_an_out_that_is_a_folder_before_learning(heads, tmp_path, capsys, monkeypatch, where):
    """speech --out models/ (an existing folder) learned the whole model (1,500 steps a network by default) and then
    failed to write it; refused up front, naming the folder and the file to give."""
    import fastminerf.speech

    root, dirs, _, _, _, _ = heads
    monkeypatch.setattr(fastminerf.speech, "train_speech", lambda *a, **k: pytest.fail("learned before refusing"))
    folder = tmp_path / "models"
    folder.mkdir()
    if where == "folder":
        args = ["speech", "--data", str(root / "data"), "--out", str(folder)]
    else:  # RUN/speech.pt is a folder
        train(load_config("tiny", ["train.steps=2"]), dirs[:1], tmp_path / "run")
        (tmp_path / "run" / "speech.pt").mkdir()
        folder = tmp_path / "run" / "speech.pt"
        args = ["speech", "--run", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "folder" in err


def test_cli_speech_learns_from_identities_with_other_splits_or_image_sizes(heads, tmp_path):
    # `fastminerf speech --run RUN` on a personalised run whose new person has no val split (prepared with
    # --val-fraction 0), or frames of another size, was refused: the data was loaded as one dataset with the first
    # identity's splits ("identity 'new' has no split 'val'") and one image size per split, though speech reads no
    # image and each identity's held-out frames are its own.
    import shutil

    _, dirs, _, _, _, _ = heads
    no_val = tmp_path / "no_val"
    shutil.copytree(dirs[1], no_val)
    (no_val / "transforms_val.json").unlink()
    bigger = generate(tmp_path / "big", n_identities=1, n_frames=40, size=24, novel_frames=1, val_fraction=0.25,
                      seed=5)[0].rename(tmp_path / "big" / "bigger")
    out = tmp_path / "speech.pt"
    assert main(["speech", "--data", str(dirs[0]), str(no_val), str(bigger), "--out", str(out), "--steps", "5"]) == 0
    model = load_speech_model(out)
    assert sorted(model.identities) == sorted([dirs[0].name, "no_val", bigger.name])
    assert model.metrics["splits"] == ["val"] and model.metrics["all"]["frames"] == 30 + 10  # the val frames there are


def test_cli_speech_table_names_each_identity_whole_in_a_log(heads, tmp_path, capsys, monkeypatch):
    """A log file or pipe is 80 columns to rich: the held-out table cut 'hdtf_WDA_AlexandriaOcasioCortez_000' to
    'hdtf_WDA_AlexandriaOcasioCorte…', the suffix that tells two clips of one person apart. Each row names it whole."""
    import shutil

    _, dirs, _, _, _, _ = heads
    names = ["hdtf_WDA_AlexandriaOcasioCortez_000", "hdtf_WDA_AlexandriaOcasioCortez_001"]
    for d, name in zip(dirs[:2], names):
        shutil.copytree(d, tmp_path / "data" / name)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["speech", "--data", *(str(tmp_path / "data" / n) for n in names), "--out", str(tmp_path / "s.pt"),
                 "--steps", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in names:
        assert sum(f" {name} " in line for line in lines) == 1, (name, lines)


def _studio_recording(path, seconds: float, rate: int = 48000):
    """A stereo recording at ``rate``: a 440 Hz tone on the left, 10 kHz (above a 16 kHz recording's band) on the
    right; PCM WAV, or through ffmpeg for another suffix."""
    import subprocess

    import imageio_ffmpeg

    t = np.arange(int(seconds * rate)) / rate
    both = np.stack([4000 * np.sin(2 * np.pi * 440 * t), 4000 * np.sin(2 * np.pi * 10000 * t)], axis=1)
    wav = path.with_suffix(".wav")
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.rint(both).astype("<i2").tobytes())
    if path.suffix != ".wav":
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(wav), str(path)],
                       check=True)
    return path


def _audio_stream(path):
    """(rate, channels, (S, C) int16 samples) of a media file's sound as ffmpeg decodes it, at its own rate."""
    import re
    import subprocess

    import imageio_ffmpeg

    ff = imageio_ffmpeg.get_ffmpeg_exe()
    head = subprocess.run([ff, "-nostdin", "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    m = re.search(r"Audio: .*?, (\d+) Hz, (mono|stereo)", head)
    assert m, head
    rate, channels = int(m.group(1)), 1 if m.group(2) == "mono" else 2
    raw = subprocess.run([ff, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-f", "s16le", "-"],
                         capture_output=True).stdout
    return rate, channels, np.frombuffer(raw, "<i2").reshape(-1, channels)


@pytest.mark.parametrize("suffix,given,rate", [(".wav", 48000, 48000), (".mp3", 44100, 44100), (".flac", 96000, 48000)])
def test_speech_path_soundtrack_is_the_recording_as_it_is(heads, tmp_path, suffix, given, rate):
    """render --speech of a 48 kHz stereo recording gave the video the recording as the speech model hears it, 16
    kHz mono (nothing above 8 kHz: a telephone's band). The model still hears 16 kHz; the soundtrack is the
    recording at its own rate and channels, as long as the frames (frame k at k / fps); above 48 kHz (a 96 kHz
    FLAC), at 48 kHz."""
    from fastminerf.render import write_video

    _, _, data, _, _, model = heads
    voice = _studio_recording(tmp_path / f"studio{suffix}", 1.0, given)
    path = speech_path(data, data.identities[0], model, voice)
    assert len(path) == 25
    sound = path.soundtrack()
    assert sound.rate == rate and sound.samples.shape == (rate, 2)
    if suffix == ".wav":
        _, _, whole = _audio_stream(voice)
        assert np.array_equal(sound.samples, whole)
    info = write_video((np.zeros((16, 16, 3), np.uint8) for _ in range(len(path))), tmp_path / "say.mp4", path.fps,
                       audio=sound)
    assert info.audio_seconds == pytest.approx(1.0)
    got_rate, channels, played = _audio_stream(tmp_path / "say.mp4")
    assert (got_rate, channels) == (rate, 2)
    assert abs(len(played) - rate) < 0.03 * rate  # as long as the 25 frames (AAC frames round it)
    spectrum = np.abs(np.fft.rfft(played[rate // 4: rate // 4 + 4096, 1].astype(np.float64)))
    assert np.argmax(spectrum) * rate / 4096 == pytest.approx(10000, abs=50)  # the right channel's 10 kHz is there


def test_cli_speech_summary_counts_one_network_and_one_step_in_the_singular(heads, tmp_path, capsys):
    """speech --set calibrate=0 (one network, no calibration) ended with '(1500 steps a network, 1 networks)', and
    --steps 1 with '1 steps a network': the summary counts with config.counted, as its identities and frames."""
    root, _, _, _, _, _ = heads
    assert main(["speech", "--data", str(root / "data"), "--out", str(tmp_path / "m.pt"), "--steps", "1",
                 "--set", "calibrate=0"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(1 step a network, 1 network) ->" in out, out


def test_the_mouth_moves_the_same_at_any_frame_rate(heads):
    """The speech model's smoothing was counted in video frames (smooth 1.0: 40 ms at 25 fps, 20 ms at 50 fps), so the
    same recording rendered at --fps 50 moved the mouth otherwise than at 25 at the very same instants. The smoothing
    is in seconds: every second frame at 50 fps is the frame at 25 fps at that instant."""
    _, dirs, _, _, _, model = heads
    audio = load_speech(dirs[1] / "audio.wav")
    e25, t25 = predict_expressions(model, audio, 25.0)
    e50, t50 = predict_expressions(model, audio, 50.0)
    np.testing.assert_array_equal(t50[::2][:len(t25)], t25)
    spread = float(e25[:, JAW].std())
    assert spread > 0
    np.testing.assert_allclose(e50[::2][:len(e25)], e25, rtol=0, atol=1e-5 * spread)
    e30, t30 = predict_expressions(model, audio, 30.0)  # 0.2 s is frame 5 at 25 fps and frame 6 at 30
    np.testing.assert_allclose(e30[::6][:len(e25[::5])], e25[::5][:len(e30[::6])], rtol=0, atol=1e-5 * spread)


def test_a_speech_model_written_with_smoothing_in_frames_keeps_its_meaning(heads, tmp_path):
    """A file of format version 1 counted 'smooth' in video frames and did not record a frame rate: it is read as
    frames at 25 fps (the rate of prepare's and synth's layouts), so smooth 1.0 is 0.04 s, what it gave at 25 fps."""
    _, dirs, _, _, _, model = heads
    out = save_speech_model(tmp_path / "speech.pt", model)
    data = torch.load(out, weights_only=True)
    data["version"] = 1
    data["config"]["smooth"] = 2.0  # frames at 25 fps: 0.08 s
    torch.save(data, tmp_path / "old.pt")
    old = load_speech_model(tmp_path / "old.pt")
    assert old.config.smooth == pytest.approx(0.08)
    audio = load_speech(dirs[2] / "audio.wav")
    now = load_speech_model(out)
    now.config = dataclasses.replace(now.config, smooth=0.08)
    np.testing.assert_array_equal(predict_expressions(old, audio, 25.0)[0], predict_expressions(now, audio, 25.0)[0])


def test_cli_render_speech_says_the_recordings_own_length_and_when_frames_outrun_it(heads, tmp_path, capsys):
    """render --speech of a 1.50 s recording (37.5 frames at 25 fps: 38 frames, their soundtrack 1.52 s, the last
    0.02 s silence) said 'with 1.52 s of the recording'; --frames 100 of it rendered 38 frames without a word."""
    root, dirs, _, _, _, model = heads
    train(load_config("tiny", ["train.steps=2"]), dirs[:1], tmp_path / "run")
    speech = save_speech_model(tmp_path / "speech.pt", model)
    voice = _studio_recording(tmp_path / "voice.wav", 1.5)
    argv = ["render", "--run", str(tmp_path / "run"), "--identity", "id000", "--speech", str(voice),
            "--speech-model", str(speech), "--out", str(tmp_path / "say.mp4")]
    capsys.readouterr()
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "38 frames" in out and "with 1.50 s of the recording" in out, out
    assert "--frames" not in out
    assert main(argv + ["--frames", "100"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "38 frames" in out and "--frames 100: the recording " in out and "gives 38 frames" in out, out
    assert main(argv + ["--frames", "10"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "10 frames" in out and "with 0.40 s of the recording" in out and "--frames" not in out, out
def test_frames_scattered_over_a_long_recording_are_predicted_from_their_own_sound_only():
    """Per-column prediction (1173382) predicted every 10 ms column from the first frame's time to the last one's:
    300 frames spread over a 10-minute recording (a split's frames, eval --speech, speech_metrics) ran the network on
    60,000 columns, about 200 times what they need (each frame reads its own columns within the Gaussian's reach).
    Only those columns are predicted now, in stretches smoothed apart, and each frame gets what it got from the
    whole span."""
    import math

    from fastminerf import speech
    from fastminerf.config import SpeechConfig

    torch.manual_seed(0)
    net = speech.SpeechToExpression(4, SpeechConfig())
    mel = np.random.default_rng(0).random((30000, net.bands), dtype=np.float32)  # 5 minutes
    times = np.sort(np.random.default_rng(1).choice(7500, 150, replace=False)) / 25.0
    times = np.concatenate([times, [0.0, 0.04, times[-1] + 0.04, 299.99]])  # neighbours and both ends too
    seen = []
    forward = net.forward
    net.forward = lambda w: (seen.append(len(w)), forward(w))[1]
    got = speech._heard_at(net, mel, times, 0.04)
    reach = int(math.ceil(3 * 0.04 * speech.COLUMNS_PER_SECOND))
    assert sum(seen) <= len(times) * (2 * reach + 1), sum(seen)
    with torch.no_grad():  # the whole span, smoothed in one piece: what each frame should read
        full = speech._smooth(forward(torch.from_numpy(speech._column_windows(mel, np.arange(len(mel) + 1),
                                                                               net.context))).numpy(),
                              0.04 * speech.COLUMNS_PER_SECOND)
    np.testing.assert_allclose(got, full[speech._columns_of(times)], rtol=0, atol=1e-6)


def test_predict_expressions_refuses_a_rate_no_video_has():
    """predict_expressions (a library call: the expressions of a recording at ``fps``) checked its rate by hand,
    positive and finite, beside config.check_fps (2c3eebf: 'the one check'): fps=1e6 made a million frames a second
    of sound (100,000 for 0.1 s; a 10 s recording at 1e9 fps asked for 80 GB of frame times). It refuses what
    CameraPath, speech_path and render --fps refuse, with their words."""
    from fastminerf.config import SpeechConfig
    from fastminerf.speech import SpeechModel, SpeechToExpression

    model = SpeechModel(SpeechToExpression(4, SpeechConfig()), SpeechConfig(), None, [])
    audio = Audio(np.zeros(4000, np.int16), 16000)  # 0.25 s
    assert len(predict_expressions(model, audio, 25.0)[0]) == 7
    for fps, words in ((1e6, "fps must be at most 1000 frames a second"), (0.0, "fps must be positive"),
                       (float("nan"), "fps must be positive"), (float("inf"), "fps must be finite")):
        with pytest.raises(ValueError, match=words):
            predict_expressions(model, audio, fps)


def test_cli_speech_summary_counts_the_networks_it_trained(tmp_path, capsys):
    """A clip shorter than a calibration block (calibrate 3, block 1 s: here 0.4 s a person) goes whole into one fold,
    which leaves no fold to hold out: one network is trained (the bar counted 2/2 steps), but the summary said
    '(2 steps a network, 4 networks)', counted from calibrate. It counts the networks trained."""
    generate(tmp_path / "data", n_identities=2, n_frames=12, size=16, seed=3)
    assert main(["speech", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "m.pt"), "--steps", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2/2" in out and "(2 steps a network, 1 network) ->" in out, out


def test_smoothing_predictions_repeats_the_end_values_instead_of_fading_to_zero():
    """speech's Gaussian smoothing of predicted expressions (edges repeated): a constant stays that constant at
    both ends, and a step keeps its end values exactly where the kernel reaches no farther (sigma 1: reach 3)."""
    from fastminerf.speech import _smooth

    flat = np.full((8, 2), 0.7, np.float32)
    np.testing.assert_allclose(_smooth(flat, 1.0), flat, rtol=1e-6)
    step = np.repeat(np.array([[0.0], [1.0]], np.float32), 10, axis=0)  # 10 frames at 0, then 10 at 1
    out = _smooth(step, 1.0)[:, 0]
    assert out.shape == (20,) and out[0] == 0.0 and out[-1] == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(out[9] + out[10], 1.0, rtol=1e-6)  # symmetric about the step


def test_a_library_caller_reads_how_many_networks_train_speech_trained(tmp_path):
    """The count of networks (calibration folds' and the final one) reached only the CLI, through the progress
    callback's total; train_speech's caller could not read it. The model says it: as many as the progress counted."""
    for frames, overrides, networks in ((60, {}, 4),  # 2.2 s of train frames a head: each of the 3 folds held out
                                        (12, {}, 1),  # 0.4 s a head, shorter than a block: no fold to hold out
                                        (60, {"calibrate": 0}, 1)):
        generate(tmp_path / f"data{frames}", n_identities=2, n_frames=frames, size=16, seed=3, overwrite=True)
        clips = speech_clips(load_dataset(tmp_path / f"data{frames}"), ("train",))[0]
        totals = []
        got = train_speech(clips, SpeechConfig(steps=2, **overrides),
                           progress=lambda done, total, loss: totals.append(total))
        assert got.networks == networks and set(totals) == {networks * 2}, (frames, overrides)
