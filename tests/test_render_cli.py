"""``render``, ``eval`` (and their library calls) end to end on a tiny run trained for a few steps, and the
errors a user sees for bad inputs. The run is too short to look like anything: these tests check that the
pieces connect (names, cameras, files, sizes), not image quality (``test_render`` checks the numbers with an
oracle model)."""

import json
import os

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from fastminerf.cli import NEW_VIEW_DEG, main
from fastminerf.config import load_config
from fastminerf.data import load_dataset
from fastminerf.data.synth import generate
from fastminerf.render import evaluate, render_frame
from fastminerf.train import load_run, train

SIZE = 24
TINY_STEPS = 3
"""Steps of the test run: enough to write a real checkpoint, as few as possible (about 1 s each here)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    dirs = generate(root / "data", n_identities=3, n_frames=6, size=SIZE, novel_frames=2, val_fraction=0.34)
    cfg = load_config("tiny", [f"train.steps={TINY_STEPS}", "train.log_every=1"])
    train(cfg, dirs[:2], root / "run")
    return root, dirs


def test_library_render_and_evaluate_with_a_trained_model(tiny):
    root, dirs = tiny
    _, model, meta = load_run(root / "run")
    data = load_dataset(dirs[:2], splits=("train", "val"))
    img = render_frame(model, data, "val", 0)
    assert img.shape == (SIZE, SIZE, 3) and np.isfinite(img).all() and 0 <= img.min() and img.max() <= 1
    res = evaluate(model, data, "val")
    assert set(res["identities"]) == {"id000", "id001"}
    for m in res["identities"].values():
        assert np.isfinite(m["psnr"]) and -1 <= m["ssim"] <= 1 and 0 <= m["l1"] <= 1
    # The table holds the rendered frames' metrics: recompute id000's PSNR by hand (rendering is deterministic).
    frames = data.table("val").frames_of(0)
    by_hand = []
    for f in frames:
        truth = data.image("val", int(f)).astype(np.float64) / 255.0
        by_hand.append(-10 * np.log10(((render_frame(model, data, "val", int(f)) - truth) ** 2).mean()))
    assert res["identities"]["id000"]["frames"] == len(frames) == 2
    assert res["identities"]["id000"]["psnr"] == pytest.approx(np.mean(by_hand), abs=1e-4)


def test_evaluate_takes_one_identity_as_a_string(tiny):
    """evaluate(..., identities="id000") looked for the identities 'i', 'd', ... ("identity 'i' is not in the
    dataset")."""
    root, dirs = tiny
    _, model, _ = load_run(root / "run")
    data = load_dataset(dirs[:2], splits=("train", "val"))
    res = evaluate(model, data, "val", identities="id000", max_frames=1, with_lpips=False, with_lmd=False)
    assert list(res["identities"]) == ["id000"]


def test_cli_eval_writes_metrics_and_images(tiny, tmp_path, capsys, monkeypatch):
    root, dirs = tiny
    rc = main(["eval", "--run", str(root / "run"), "--data", str(dirs[0]), str(dirs[1]), "--split", "val", "--out", str(tmp_path / "ev")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "id000" in out and "mean" in out and "PSNR" in out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["split"] == "val" and set(metrics["identities"]) == {"id000", "id001"}
    assert metrics["lpips"]  # a status text either way
    assert len(list((tmp_path / "ev" / "side_by_side" / "id001").glob("*.png"))) == 2
    # the train split's cameras are read beside val: how far each val head pose is from the training ones
    gaps = {n: m["pose_gap"] for n, m in metrics["identities"].items()}
    assert "POSE" in out and 0 < min(gaps.values()) and max(gaps.values()) < NEW_VIEW_DEG, gaps
    assert "new views" not in out
    # identities seen from farther than the threshold are named, the others not
    monkeypatch.setattr("fastminerf.cli.NEW_VIEW_DEG", (gaps["id000"] + gaps["id001"]) / 2)
    assert main(["eval", "--run", str(root / "run"), "--data", str(dirs[0]), str(dirs[1]), "--split", "val"]) == 0
    note = " ".join(capsys.readouterr().out.split()).split("new views:")[1]
    far, near = sorted(gaps, key=gaps.get, reverse=True)
    assert far in note and near not in note


def test_render_steps_set_the_marching_step_of_eval_and_render(tiny, tmp_path):
    from fastminerf.render import RenderError, set_render_steps

    root, dirs = tiny
    _, model, _ = load_run(root / "run")
    data = load_dataset(dirs[:1], splits=("val",))
    default = evaluate(model, data, "val")["mean"]["psnr"]
    set_render_steps(model, 16)
    assert model.render_step_size == pytest.approx(model.diagonal / 16)
    coarse = evaluate(model, data, "val")["mean"]["psnr"]
    assert coarse != default  # a quarter of the tiny preset's 64 steps: other samples, another image
    assert main(["eval", "--run", str(root / "run"), "--data", str(dirs[0]), "--split", "val", "--render-steps", "16",
                 "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["mean"]["psnr"] == pytest.approx(coarse, abs=1e-6)
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--orbit", "--frames", "2",
                 "--render-steps", "16", "--out", str(tmp_path / "o.mp4")]) == 0
    with pytest.raises(RenderError, match=">= 1"):
        set_render_steps(model, 0)
    with pytest.raises(RenderError, match="does not march rays"):
        set_render_steps(object(), 8)


def _read_video(path):
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return meta, list(reader)


def test_cli_render_drive_and_orbit(tiny, tmp_path):
    root, dirs = tiny
    rc = main(["render", "--run", str(root / "run"), "--identity", "id000", "--drive", f"{dirs[1]}:novel",
               "--out", str(tmp_path / "drive.mp4"), "--png-dir", str(tmp_path / "png")])
    assert rc == 0
    meta, frames = _read_video(tmp_path / "drive.mp4")
    assert tuple(meta["size"]) == (SIZE, SIZE) and len(frames) == 2
    assert len(list((tmp_path / "png").glob("*.png"))) == 2
    rc = main(["render", "--run", str(root / "run"), "--identity", "id001", "--orbit", "--frames", "5",
               "--transfer", "absolute", "--out", str(tmp_path / "orbit.mp4")])
    assert rc == 0
    meta, frames = _read_video(tmp_path / "orbit.mp4")
    assert len(frames) == 5


def test_cli_render_pose_modes(tiny, tmp_path, capsys):
    import imageio.v3 as iio

    from fastminerf.render import drive_path, render_sequence, to_uint8

    root, dirs = tiny
    _, model, _ = load_run(root / "run")
    data = load_dataset(dirs, splits=("train", "novel"))
    for pose in ("relative", "driver", "still"):
        png = tmp_path / pose
        assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--drive", f"{dirs[1]}:novel",
                     "--pose", pose, "--no-audio", "--out", str(tmp_path / f"{pose}.mp4"), "--png-dir", str(png)]) == 0
        assert f"{pose} poses" in capsys.readouterr().out
        # the PNG frames are the library's render of the same path
        path = drive_path(data, "id000", data, "novel", "id001", pose=pose)
        want = [to_uint8(img) for img in render_sequence(model, path, "id000", background=data.background(0),
                                                         aabb=model.aabb.tolist())]
        got = [iio.imread(p) for p in sorted(png.glob("*.png"))]
        assert len(got) == len(want) == 2
        for g, w in zip(got, want):
            assert np.abs(g.astype(int) - w.astype(int)).max() <= 1
    still = [iio.imread(p) for p in sorted((tmp_path / "still").glob("*.png"))]
    relative = [iio.imread(p) for p in sorted((tmp_path / "relative").glob("*.png"))]
    assert not np.array_equal(relative[0], iio.imread(sorted((tmp_path / "driver").glob("*.png"))[0]))
    assert not np.array_equal(still[0], relative[0]) or not np.array_equal(still[1], relative[1])


def test_cli_render_frames_cuts_a_driven_video(tiny, tmp_path, decode_audio):
    """``--frames N`` renders the first N frames of a driver folder's split (as it does for an orbit, a --speech
    recording or a driver video), their sound alone in the mp4; not every frame of the split."""
    import imageio.v3 as iio

    from fastminerf.render import drive_path, render_sequence, to_uint8

    root, dirs = tiny
    meta = json.loads((dirs[1] / "transforms_train.json").read_text())
    assert len(meta["frames"]) > 2 and (dirs[1] / "audio.wav").is_file()
    png = tmp_path / "png"
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--drive", f"{dirs[1]}:train",
                 "--frames", "2", "--out", str(tmp_path / "d.mp4"), "--png-dir", str(png)]) == 0
    _, frames = _read_video(tmp_path / "d.mp4")
    got = [iio.imread(p) for p in sorted(png.glob("*.png"))]
    assert len(frames) == len(got) == 2
    # the driver's first two frames, as the library renders them
    _, model, _ = load_run(root / "run")
    data = load_dataset(dirs[:2], splits=("train",))
    want = [to_uint8(img) for img in render_sequence(model, drive_path(data, "id000", data, "train", "id001").head(2),
                                                     "id000", background=data.background(0), aabb=model.aabb.tolist())]
    for g, w in zip(got, want):
        assert np.abs(g.astype(int) - w.astype(int)).max() <= 1
    # two frames of sound (0.08 s at 16 kHz), not the split's four
    assert abs(len(decode_audio(tmp_path / "d.mp4")) - 2 * 16000 / meta["fps"]) < 16000 / meta["fps"]


def test_cli_render_carries_the_drivers_audio(tiny, tmp_path, capsys, decode_audio):
    import shutil

    from fastminerf.audio import Audio, write_wav

    root, dirs = tiny
    driver = shutil.copytree(dirs[1], tmp_path / "driver")
    assert (driver / "audio.wav").is_file()  # the procedural heads' voice; taken away to see a silent driver
    (driver / "audio.wav").unlink()
    argv = ["render", "--run", str(root / "run"), "--identity", "id000", "--drive", f"{driver}:val"]
    assert main(argv + ["--out", str(tmp_path / "silent.mp4")]) == 0
    assert "silent (the driver: no audio.wav)" in " ".join(capsys.readouterr().out.split())  # rich wraps lines
    # The synthetic video's frames carry times k / fps; a 2 s ramp of pitch tells which part was cut.
    fps = json.loads((driver / "transforms_val.json").read_text())["fps"]
    t = np.arange(32000) / 16000
    write_wav(driver / "audio.wav", Audio(np.rint(8000 * np.sin(2 * np.pi * (200 + 400 * t) * t)).astype(np.int16), 16000))
    assert main(argv + ["--out", str(tmp_path / "loud.mp4")]) == 0
    assert "s of the driver's audio" in " ".join(capsys.readouterr().out.split())
    n_val = len(json.loads((driver / "transforms_val.json").read_text())["frames"])
    got = decode_audio(tmp_path / "loud.mp4")
    assert abs(len(got) - n_val * 16000 / fps) < 0.02 * 16000 + 1024  # the video's length (AAC pads a frame at most)
    assert np.abs(got).max() > 2000
    assert main(argv + ["--out", str(tmp_path / "quiet.mp4"), "--no-audio"]) == 0
    assert len(decode_audio(tmp_path / "quiet.mp4")) == 0


def test_cli_render_says_where_the_drivers_audio_ends(tiny, tmp_path, capsys, decode_audio):
    """A driver whose audio.wav ends before its frames' times (a video whose sound track is shorter than its
    picture) was reported 'with 0.08 s of the driver's audio' over a silent soundtrack: the video is silent and the
    command says why."""
    import shutil

    from fastminerf.audio import Audio, write_wav

    root, dirs = tiny
    driver = shutil.copytree(dirs[1], tmp_path / "driver")
    times = [fr["time"] for fr in json.loads((driver / "transforms_val.json").read_text())["frames"]]
    write_wav(driver / "audio.wav", Audio(np.full(int(min(times) * 16000), 3000, np.int16), 16000))
    argv = ["render", "--run", str(root / "run"), "--identity", "id000", "--drive", f"{driver}:val"]
    assert main(argv + ["--out", str(tmp_path / "d.mp4")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "silent (the driver: its frames, from" in out and "lie past the end of" in out, out
    assert len(decode_audio(tmp_path / "d.mp4")) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["render", "--identity", "bob", "--orbit"], "unknown identity 'bob'"),
        (["render", "--identity", "id000", "--drive", "{data}/id009:val"], "no such folder"),
        (["render", "--identity", "id000", "--drive", "{data}/id001:test"], "has no split 'test'"),
        (["render", "--identity", "id000", "--drive", "{data}"], "holds 3 identities"),
        # a file that is not a video by its name (e.g. a .ts clip): 'expected an identity folder' said nothing of videos
        (["render", "--identity", "id000", "--drive", "{data}/id001/bg.png"], "bg.png is a file, not a video (.mp4"),
        (["render", "--identity", "id002", "--orbit"], "unknown identity 'id002'"),
        (["render", "--identity", "id000", "--orbit", "--frames", "0"], "--frames must be at least 1, got 0"),
        (["render", "--identity", "id000", "--drive", "{data}/id001", "--frames", "-1"], "--frames must be at least 1"),
        (["eval", "--data", "{data}/id002", "--split", "val"], "unknown identity 'id002'"),
        (["eval", "--data", "{data}/id001", "--split", "test"], "has no split 'test'"),
    ],
)
def test_cli_bad_inputs_name_the_thing(tiny, tmp_path, capsys, argv, message):
    root, _ = tiny
    argv = [a.replace("{data}", str(root / "data")) for a in argv]
    argv = argv[:1] + ["--run", str(root / "run")] + argv[1:]
    if argv[0] == "render":
        argv += ["--out", str(tmp_path / "x.mp4")]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("extra, note", [
    (["--orbit", "--pose", "still"], "--pose applies to --drive only, not to --orbit: ignored"),
    (["--drive", "{data}/id001:val", "--yaw", "10", "--pitch", "2"], "--yaw, --pitch apply to --orbit only"),
    (["--orbit", "--speech-model", "{data}", "--transfer", "absolute"], "--transfer applies to --drive only"),
])
def test_cli_render_says_which_options_it_ignores(tiny, tmp_path, capsys, extra, note):
    """Options of another source were ignored without a word (--speech with --pose still played the target's own
    poses, --drive with --yaw rendered no orbit): the command says so before it renders."""
    root, _ = tiny
    extra = [a.replace("{data}", str(root / "data")) for a in extra]
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--frames", "1",
                 "--out", str(tmp_path / "x.mp4")] + extra) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert note in out and "[yellow]" not in out  # styled, not markup printed as text


def test_data_in_another_expression_space_is_refused(tiny, tmp_path, capsys):
    import shutil

    from fastminerf.data.synth import EXPRESSION_SPACE
    from fastminerf.train import personalize

    root, dirs = tiny
    _, model, meta = load_run(root / "run")
    assert model.expression_space == meta["expression_space"] == EXPRESSION_SPACE
    # The same numbers of coefficients, prepared with another basis: a driver, evaluation data, a new identity.
    known = shutil.copytree(dirs[1], tmp_path / "id001")  # a known person, in another space
    new = shutil.copytree(dirs[2], tmp_path / "new" / "id002")
    for f in list(known.glob("transforms_*.json")) + list(new.glob("transforms_*.json")):
        m = json.loads(f.read_text())
        m["expression_space"] = "pca12-0123456789ab"
        f.write_text(json.dumps(m))
    for argv in (["render", "--run", str(root / "run"), "--identity", "id000", "--drive", f"{known}:val",
                  "--out", str(tmp_path / "x.mp4")],
                 ["eval", "--run", str(root / "run"), "--data", str(known), "--split", "val"]):
        assert main(argv) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "pca12-0123456789ab" in err and EXPRESSION_SPACE in err and "--basis" in err
    assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(ValueError, match="the new identities .* expression space 'pca12-0123456789ab'"):
        personalize(root / "run", [new], tmp_path / "p", steps=1)


def test_a_driver_of_another_expression_size_is_refused_by_space(tiny, tmp_path, capsys):
    """A driver prepared in another space with another number of coefficients: the default (delta) transfer said
    only 'expression sizes differ ... identities must share one expression space', without the spaces or the remedy
    that a driver of the same size (or --transfer absolute) was given."""
    import shutil

    from fastminerf.data.synth import EXPRESSION_SPACE

    root, dirs = tiny
    known = shutil.copytree(dirs[1], tmp_path / "id001")
    for f in known.glob("transforms_*.json"):
        m = json.loads(f.read_text())
        m["expression_space"] = "pca5-0123456789ab"
        m.pop("expression_names", None)
        for fr in m["frames"]:
            fr["expression"] = fr["expression"][:5]
        f.write_text(json.dumps(m))
    for transfer in ("delta", "absolute"):
        assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--drive", f"{known}:val",
                     "--transfer", transfer, "--out", str(tmp_path / "x.mp4")]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "pca5-0123456789ab" in err and EXPRESSION_SPACE in err and "--basis" in err, err
    assert not (tmp_path / "x.mp4").exists()


def test_a_raw_video_needs_the_training_datas_basis(tiny, tmp_path, capsys):
    root, _ = tiny
    video = tmp_path / "someone.mp4"
    w = imageio_ffmpeg.write_frames(str(video), (32, 32), fps=25, macro_block_size=16, ffmpeg_log_level="error")
    w.send(None)
    for k in range(5):
        w.send(np.full((32, 32, 3), 40 * k, np.uint8).tobytes())
    w.close()
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--drive", str(video),
                 "--out", str(tmp_path / "x.mp4")]) == 2
    said = capsys.readouterr()
    err = " ".join(said.err.split())
    assert "no expression_basis.npz next to the run's training data" in err and "--basis" in err
    assert "driver: " not in said.out  # refused before the preparation's progress bar began (it did)


def test_cli_info_describes_a_run(tiny, tmp_path, capsys):
    from fastminerf.data.synth import EXPRESSION_SPACE

    root, dirs = tiny
    assert main(["info", str(root / "run"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    table = load_dataset(dirs[:2], splits=("train",)).table("train")
    assert info["identities"] == {"id000": int((table.identity == 0).sum()), "id001": int((table.identity == 1).sum())}
    assert info["step"] == TINY_STEPS and info["kind"] == "train" and info["expression_space"] == EXPRESSION_SPACE
    assert info["expression_dim"] == 12 and info["parameters"] > 0 and info["last_log"]["step"] == TINY_STEPS
    assert main(["info", str(root / "run")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert EXPRESSION_SPACE in out and "id000" in out and "fine-tuned for" not in out
    # which backends the run asked for, which computed it when it trained, and which run here (info said none)
    assert main(["info", str(root / "run"), "--json"]) == 0
    backends = json.loads(capsys.readouterr().out)["backends"]
    here = {"encoding": "native", "grid": "native", "heads": "native", "compositing": "native"}
    assert backends == {"asked": {"model.field.backend": "auto", "model.grid_backend": "auto"},
                        "trained": {"cpu": here}, "here": {"cpu": here} | ({"cuda": backends["here"].get("cuda")}
                                                                           if torch.cuda.is_available() else {})}
    assert "backends (the run's config) │ model.field.backend=auto," in out
    assert "trained with, on cpu │ encoding native," in out and "runs here on cpu │ encoding native," in out
    assert main(["info", str(tmp_path / "nope")]) == 2
    # a known identity fine-tuned on its own frames (MI-NeRF's per-identity fine-tuning), through the CLI
    assert main(["personalize", "--run", str(root / "run"), "--data", str(dirs[1]), "--out", str(tmp_path / "ft"),
                 "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "ft"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "personalize" and info["refined"] == ["id001"] and list(info["identities"]) == ["id000", "id001"]
    assert main(["info", str(tmp_path / "ft")]) == 0
    assert "fine-tuned for │ id001" in " ".join(capsys.readouterr().out.split())


def test_cli_info_of_a_run_with_a_damaged_speech_model_describes_the_run(tiny, tmp_path, capsys, monkeypatch):
    """info RUN failed whole (exit 2, 'speech model RUN/speech.pt ...') when RUN/speech.pt could not be read (a copy
    cut short): the user debugging the run lost the rest of info. The run is described, its speech model marked
    unreadable, naming the file and why."""
    import shutil

    monkeypatch.setenv("COLUMNS", "400")
    root, _ = tiny
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    (run / "speech.pt").write_bytes(b"PK\x03\x04 cut short")
    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == TINY_STEPS and info["speech"]["file"] == str(run / "speech.pt")
    assert str(run / "speech.pt") in info["speech"]["error"]
    assert main(["info", str(run)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"speech model (render --speech) │ unreadable: cannot read speech model {run / 'speech.pt'} (corrupt" in out, out
    assert "id000" in out and "last log" in out


def test_cli_says_when_a_personalised_run_renders_someone_it_was_not_personalised_for(tiny, tmp_path, capsys,
                                                                                     monkeypatch):
    # A run that added id002 to the generic model fine-tuned the shared weights for id002: id000 renders from it
    # worse than from the generic run (6-7 dB on the procedural heads' val frames), which render and eval say.
    # info's table is laid out to the console's width (80 columns in a pipe): a run path longer than its value column
    # (a TMPDIR longer than /tmp) was folded over two rows and the test failed; wide enough for any temporary folder.
    monkeypatch.setenv("COLUMNS", "400")
    root, dirs = tiny
    pers = tmp_path / "pers"
    assert main(["personalize", "--run", str(root / "run"), "--data", str(dirs[2]), "--out", str(pers), "--steps", "2"]) == 0
    meta = load_run(pers)[2]
    assert meta["added"] == ["id002"] and meta["refined"] == [] and meta["generic_run"] == str(root / "run")
    capsys.readouterr()
    assert main(["info", str(pers)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "added (personalised) │ id002" in out and f"started from │ {root / 'run'}" in out
    for who, noted in (("id000", True), ("id002", False)):
        assert main(["render", "--run", str(pers), "--identity", who, "--orbit", "--frames", "1",
                     "--out", str(tmp_path / f"{who}.mp4")]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert ("personalised for id002: id000 renders worse" in out) == noted, out
    assert main(["eval", "--run", str(pers), "--data", str(dirs[0]), str(dirs[2]), "--split", "val"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "personalised for id002: id000 renders worse" in out and str(root / "run") in out
    # with the generic run beside it (after it or before), eval takes id000 from the generic run: nothing to say
    for order in ((root / "run", pers), (pers, root / "run")):
        assert main(["eval", "--run", *map(str, order), "--data", str(dirs[0]), str(dirs[2]), "--split", "val"]) == 0
        assert "worse from it" not in capsys.readouterr().out


def test_cli_fine_tunes_each_identity_and_scores_each_with_its_own_run(tiny, tmp_path, capsys):
    # MI-NeRF's workflow: a generic run, one fine-tuned run per person, every person scored by their own run.
    root, dirs = tiny
    each = tmp_path / "each"
    assert main(["personalize", "--run", str(root / "run"), "--data", str(dirs[0]), str(dirs[1]), "--out", str(each),
                 "--each", "--steps", "2"]) == 0
    metas = {n: load_run(each / n)[2] for n in ("id000", "id001")}
    assert {n: m["refined"] for n, m in metas.items()} == {"id000": ["id000"], "id001": ["id001"]}
    argv = ["eval", "--run", str(root / "run"), str(each / "id001"), str(each / "id000"), "--data", str(dirs[0]),
            str(dirs[1]), "--split", "val", "--out", str(tmp_path / "ev")]
    assert main(argv) == 0
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())["identities"]
    data = load_dataset(dirs[:2], splits=("val",))
    for name in ("id000", "id001"):  # the run that fine-tuned the identity rendered it, not the generic one listed first
        own = evaluate(load_run(each / name)[1], data, "val", identities=[name], with_lmd=False)["identities"][name]
        assert got[name]["psnr"] == pytest.approx(own["psnr"], abs=1e-6)
    generic = evaluate(load_run(root / "run")[1], data, "val", with_lmd=False)["identities"]
    assert any(abs(got[n]["psnr"] - generic[n]["psnr"]) > 1e-4 for n in ("id000", "id001"))
    capsys.readouterr()
    assert main(["eval", "--run", str(each / "id000"), str(each / "id001"), "--data", str(dirs[2]), "--split", "val"]) == 2
    assert "unknown identity 'id002': none of the runs" in " ".join(capsys.readouterr().err.split())


def test_eval_of_one_run_named_twice_scores_it_as_one_run(tiny, capsys):
    """eval --run runs/* runs/generic (a glob that holds the generic run, named again) loaded the run twice and said
    'note RUN renders none of the people evaluated: id000, id001 are rendered by RUN ... to compare runs, evaluate
    each run on its own' under a table titled '2 runs on val': one run, named twice, read as two. A run folder
    given again (as another spelling of the same path) is the one run."""
    root, dirs = tiny
    argv = ["eval", "--data", str(dirs[0]), str(dirs[1]), "--split", "val", "--max-frames", "1"]
    capsys.readouterr()
    assert main(argv + ["--run", str(root / "run"), str(root / "run") + "/"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "renders none" not in out and "2 runs" not in out, out
    assert f"{root / 'run'} on val" in out, out


def test_eval_of_two_generic_runs_of_the_same_people_says_the_second_renders_none_of_them(tiny, tmp_path, capsys):
    """eval --run A B of two generic runs of the same people (a researcher's two seeds, to compare them) scored every
    person by A, the first run that knows them, under a table titled '2 runs on val', and said nothing of B: its
    numbers looked like a comparison or a mix of both. eval names the run that renders nobody and says why."""
    root, dirs = tiny
    other = tmp_path / "seed1"
    train(load_config("tiny", [f"train.steps={TINY_STEPS}", "train.seed=1"]), dirs[:2], other)
    capsys.readouterr()
    argv = ["eval", "--data", str(dirs[0]), str(dirs[1]), "--split", "val", "--max-frames", "1"]
    assert main(argv + ["--run", str(root / "run"), str(other)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{other} renders none of the people evaluated: id000, id001 are rendered by {root / 'run'}" in out, out
    assert "evaluate each run on its own" in out
    # a generic run beside runs that fine-tuned each of its people renders none of them, as asked: nothing to say
    each = tmp_path / "each"
    assert main(["personalize", "--run", str(root / "run"), "--data", str(dirs[0]), str(dirs[1]), "--out", str(each),
                 "--each", "--steps", "1"]) == 0
    capsys.readouterr()
    assert main(argv + ["--run", str(root / "run"), str(each / "id000"), str(each / "id001")]) == 0
    assert "renders none" not in capsys.readouterr().out


def test_eval_of_a_root_scores_the_people_the_run_knows_and_names_the_others(tiny, tmp_path, capsys):
    """A root that also holds a person the run does not know (prepared into it to be added by personalize) was
    refused as a whole ('unknown identity'): eval scores every person of the root a run knows and names the ones it
    left out; a person's folder named on its own is still refused, as is a root of people no run knows."""
    root, dirs = tiny
    argv = ["eval", "--run", str(root / "run"), "--split", "val", "--out", str(tmp_path / "ev")]
    assert main(argv + ["--data", str(root / "data")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert sorted(json.loads((tmp_path / "ev" / "metrics.json").read_text())["identities"]) == ["id000", "id001"]
    assert f"left out id002 (in {root / 'data'}): the run {root / 'run'} does not know it" in out
    assert main(argv + ["--data", str(root / "data"), str(dirs[2])]) == 2  # named: a mistake to say
    assert "unknown identity 'id002'" in " ".join(capsys.readouterr().err.split())
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / dirs[2].name).symlink_to(dirs[2])
    assert main(argv + ["--data", str(alone)]) == 2
    assert "unknown identity 'id002'" in " ".join(capsys.readouterr().err.split())


def test_eval_of_a_root_of_many_new_people_names_the_first_few_it_left_out(tiny, tmp_path, capsys):
    """eval of a root of one known person beside many new ones (prepared into it, to be added by personalize) named
    every one it left out in its note (1,000 new people: a page), where README says eval's notes name the first few
    people and how many more."""
    root, dirs = tiny
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for k, d in enumerate(generate(tmp_path / "new", n_identities=10, n_frames=2, size=SIZE, val_fraction=0.5)):
        d.rename(mixed / f"new{k:02d}")
    (mixed / dirs[0].name).symlink_to(dirs[0])
    assert main(["eval", "--run", str(root / "run"), "--split", "val", "--data", str(mixed)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "left out new00, new01" in out and "and 2 more (in" in out and "new09" not in out, out


def test_cli_missing_run(tmp_path, capsys):
    assert main(["render", "--run", str(tmp_path / "nope"), "--identity", "a", "--orbit", "--out", str(tmp_path / "x.mp4")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "run folder" in err and "nope does not exist" in err


def test_metrics_table_fits_80_columns_without_cutting_a_value():
    """Every metric eval can report, for a long real-clip name: each value printed whole in an 80-column terminal
    (the name may fold), the units in the caption."""
    from rich.console import Console

    from fastminerf.cli import _metrics_table

    names = ["psnr", "ssim", "l1", "face_psnr", "mouth_psnr", "eye_psnr", "lmd", "ear_error", "landmark_depth"]
    vals = dict(zip(names, [25.3217, 0.79012, 0.03114, 25.2944, 24.7891, 24.2345, 1.2381, 0.02517, 0.01043]))
    result = {"metrics": names, "frames": 5, "identities": {"02_hdtf_WDA_AlexandriaOcasioCortez_000": {"frames": 5, **vals}},
              "mean": vals}
    console = Console(width=80, record=True, color_system=None)
    console.print(_metrics_table(result, "test"))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    for shown in ("25.32", "0.790", "0.0311", "25.29", "24.79", "24.23", "1.24", "0.025", "0.010"):
        assert text.count(shown) == 2, shown  # the identity's row and the mean's
    assert "PSNR in dB" in text and "LMD in pixels" in text


def test_metrics_table_with_every_column_fits_80_columns():
    """eval on prepared clips with mediapipe and a train split reports ten metrics (POSE beside DEPTH), LPIPS makes
    eleven: each value still printed whole at 80 columns, the width rich gives a log file or a pipe, so that the
    table says what metrics.json says."""
    import io

    from rich.console import Console

    from fastminerf.cli import _metrics_table

    names = ["psnr", "ssim", "l1", "lpips", "face_psnr", "mouth_psnr", "eye_psnr", "lmd", "ear_error", "landmark_depth",
             "pose_gap"]
    vals = dict(zip(names, [25.3217, 0.79012, 0.03114, 0.12345, 25.2944, 24.7891, 24.2345, 12.3812, 0.02517, 0.01043,
                            13.24]))
    shown = ["25.32", "0.790", "0.0311", "0.1235", "25.29", "24.79", "24.23", "12.38", "0.025", "0.010", "13.2"]
    for drop in ("lpips", None):  # without the lpips package (the usual case), and with it
        keep = [m for m in names if m != drop]
        result = {"metrics": keep, "frames": 1234, "mean": vals,
                  "identities": {"02_hdtf_WDA_AlexandriaOcasioCortez_000": {"frames": 617, **vals}}}
        console = Console(width=80, record=True, color_system=None, file=io.StringIO())
        console.print(_metrics_table(result, "test"))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text, text
        for value in (v for m, v in zip(names, shown) if m != drop):
            assert text.count(value) == 2, (value, text)  # the identity's row and the mean's
        assert "POSE" in text and "617" in text and "1234" in text


def test_cli_eval_says_when_lmd_covers_fewer_frames_than_evaluated(tiny, capsys, monkeypatch):
    """LMD and the EAR error are averaged over the frames where mediapipe finds a face in both the render and the truth;
    a run whose worst renders lose the face reported an LMD over its better frames only, the table showing it beside a
    run's LMD over every frame with nothing to tell them apart. The CLI names the identities with fewer."""
    import fastminerf.render as render

    root, dirs = tiny
    real = render.evaluate

    def fake_lmd(*args, **kwargs):  # as if mediapipe had found the face in 1 render of id000 and in all of id001
        res = real(*args, **kwargs)
        for name, vals in res["identities"].items():
            vals.update(lmd=1.0, ear_error=0.01, lmd_frames=1 if name == "id000" else vals["frames"])
        return res

    monkeypatch.setattr(render, "evaluate", fake_lmd)
    assert main(["eval", "--run", str(root / "run"), "--data", str(dirs[0]), str(dirs[1]), "--split", "val"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "LMD and EAR over fewer frames: id000 (1 of 2)" in out and "id001 (" not in out


def test_cli_output_into_a_closed_pipe_is_not_an_error(tiny):
    """`fastminerf info RUN --json | head -1` ended with 'error: [Errno 32] Broken pipe' on stderr and status 2: the
    reader leaving early (head, less) was reported as the command's failure. It ends quietly, with the status of a
    command killed by SIGPIPE (141), as cat and other shell tools do."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root, _ = tiny
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                   os.environ.get("PYTHONPATH")])))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    try:
        proc = subprocess.run([sys.executable, "-m", "fastminerf", "info", str(root / "run"), "--json"], stdout=write,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(write)
    assert proc.stderr == "" and proc.returncode == 141


def test_cli_reports_a_broken_pipe_that_is_not_stdout(tiny, monkeypatch, capsys):
    """A BrokenPipeError from another pipe (a subprocess that died) while stdout is fine is still an error."""
    import fastminerf.cli as cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_run_info", broken)
    root, _ = tiny
    assert cli.main(["info", str(root / "run")]) == 2
    assert "error: [Errno 32] Broken pipe" in capsys.readouterr().err


def test_cli_personalize_says_when_it_resumed(tiny, tmp_path, capsys):
    # train's last line says "(resumed from step N)"; personalize's said "personalised in N steps, S s" of a run it
    # had only resumed (rerun after an interruption, or after it had finished: no step taken), as if it had done them.
    root, dirs = tiny
    argv = ["personalize", "--run", str(root / "run"), "--data", str(dirs[2]), "--out", str(tmp_path / "p"), "--steps"]
    assert main(argv + ["2"]) == 0
    assert "resumed" not in capsys.readouterr().out
    assert main(argv + ["3"]) == 0
    assert "personalised in 3 steps" in (out := " ".join(capsys.readouterr().out.split())) and "resumed from step 2" in out


@pytest.mark.parametrize("extra, message", [(["--steps", "-3"], "train.personalize_steps must be >= 0, got -3"),
                                            (["--max-seconds", "-1"], "train.max_seconds must be >= 0"),
                                            (["--set", "model.field.n_levels=4"], "personalisation cannot change")])
def test_cli_personalize_refuses_bad_steps_or_time_before_its_progress_bar(tiny, tmp_path, capsys, extra, message):
    """personalize --steps -3 drew a progress bar of '0/-3' (and --max-seconds -1 one of 0/20) before the library
    refused them: the settings are checked, by the config's own check, before any work is shown."""
    root, dirs = tiny
    assert main(["personalize", "--run", str(root / "run"), "--data", str(dirs[2]), "--out", str(tmp_path / "p")]
                + extra) == 2
    said = capsys.readouterr()
    assert message in " ".join(said.err.split()) and "personalize" not in said.out
    assert not (tmp_path / "p").exists()


def test_cli_eval_refuses_a_person_added_by_several_runs(tiny, tmp_path, capsys):
    # Two runs that fine-tuned one person are refused ("give one"); two that added one (a grid and an all
    # personalisation, or personalize --each and a run of three new people) scored the person with whichever came
    # first, without a word: the table's number was one run's, unsaid which.
    root, dirs = tiny
    for name in ("a", "b"):
        assert main(["personalize", "--run", str(root / "run"), "--data", str(dirs[2]), "--out", str(tmp_path / name),
                     "--steps", "1"]) == 0
    capsys.readouterr()
    argv = ["eval", "--run", str(root / "run"), str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(dirs[2]),
            "--split", "val"]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "identity 'id002' was added by several runs" in err and str(tmp_path / "b") in err
    assert main(argv[:3] + argv[4:]) == 0  # one of them: scored by it


def test_a_driver_of_another_expression_length_is_refused_naming_its_file(tiny, tmp_path, capsys):
    # A driver with 5 coefficients whose files name no space (a NeRFace subject, data of an older prepare): the
    # delta transfer said 'expression sizes differ: driver expressions have E=5, target neutral 12 ...' naming no
    # file; --transfer absolute started rendering and failed at the first frame with 'expression must have shape
    # (N, 12), got (1024, 5)'.
    import shutil

    root, dirs = tiny
    short = shutil.copytree(dirs[1], tmp_path / "short")
    for f in short.glob("transforms_*.json"):
        m = json.loads(f.read_text())
        for key in ("expression_space", "expression_names"):
            m.pop(key, None)
        for fr in m["frames"]:
            fr["expression"] = fr["expression"][:5]
        f.write_text(json.dumps(m))
    for extra in ([], ["--transfer", "absolute", "--pose", "driver"]):
        assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--drive", f"{short}:val", *extra,
                     "--out", str(tmp_path / "x.mp4")]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"{short}/transforms_" in err and "key 'expression'" in err and "length 5" in err, err
    assert not (tmp_path / "x.mp4").exists()


def test_cli_eval_prints_every_value_whole_on_a_narrow_terminal(tiny, tmp_path, capsys, monkeypatch):
    """At COLUMNS=60 (a split terminal) the metrics table no longer fits: rich cut the numbers ('25.…', the POSE
    value '0.4' to '0') and folded the identity names to 'ident / ity', 'id000' split from its row at other widths,
    or dropped that column. Each identity's row must still hold its name and every value metrics.json has."""
    root, dirs = tiny
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["eval", "--run", str(root / "run"), "--data", str(dirs[0]), str(dirs[1]), "--split", "val",
                 "--out", str(tmp_path / "ev")]) == 0
    lines = capsys.readouterr().out.splitlines()
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    fmt = {"psnr": "{:.2f}", "ssim": "{:.3f}", "l1": "{:.4f}", "face_psnr": "{:.2f}", "pose_gap": "{:.1f}"}
    for name, vals in metrics["identities"].items():
        row = [line for line in lines if line.split()[:1] == [name]]
        assert len(row) == 1, (name, lines)
        cells = row[0].split()
        for m, f in fmt.items():
            assert f.format(vals[m]) in cells, (m, vals[m], row[0])


def test_cli_info_shows_a_long_data_path_whole(tiny, tmp_path, capsys, monkeypatch):
    """info's 'trained on' row cut a long data path with an ellipsis ('/data/long/subfolder_with_a_long…'), in a log
    (80 columns) and in most terminals: where the run's data is was not said. The value folds onto more lines."""
    import re
    import shutil

    root, dirs = tiny
    deep = tmp_path.joinpath(*(f"subfolder_with_a_long_name_{i}" for i in range(3)), "the_data")
    shutil.copytree(dirs[0], deep / dirs[0].name)
    train(load_config("tiny", ["train.steps=1"]), deep, tmp_path / "run")
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["info", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    cells = "".join(re.findall(r"│ ([^│]*?) *│$", out, flags=re.M))  # the value column, its lines joined
    assert "…" not in out and str(deep) in cells, out


def test_cli_info_describes_a_run_whose_loss_diverged(tiny, tmp_path, capsys):
    """A diverged run logs its NaN loss and PSNR as null (JSON has no NaN); info, where one looks first at such a
    run, crashed on them with a traceback ('unsupported format string passed to NoneType.__format__')."""
    import shutil

    root, _ = tiny
    run = tmp_path / "diverged"
    shutil.copytree(root / "run", run, ignore=shutil.ignore_patterns(".lock"))
    lines = (run / "log.jsonl").read_text().splitlines()
    last = dict(json.loads(lines[-1]), loss=None, psnr=None)
    (run / "log.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(last)]) + "\n")
    assert main(["info", str(run)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"step {last['step']}, loss nan, train psnr nan dB" in out, out


def test_cli_info_reads_a_log_whose_last_line_was_cut_or_damaged(tiny, tmp_path, capsys):
    """A run killed mid-write or on a full disk leaves its log's last line cut; a damaged disk leaves bytes that are
    not UTF-8; a hand edit, a line of another shape. info failed on each with a bare 'Expecting property name ...' or
    "'utf-8' codec can't decode ..." naming no file (or a TypeError traceback), though resume skips such lines: it
    shows the last whole record, as resume does."""
    import shutil

    root, _ = tiny
    run = tmp_path / "cut"
    shutil.copytree(root / "run", run, ignore=shutil.ignore_patterns(".lock"))
    lines = (run / "log.jsonl").read_bytes().splitlines()
    whole = json.loads(lines[-2])
    for tail in (lines[-1][: len(lines[-1]) // 2], b'{"step": 99, "loss": 0.5\xff\xfe}',
                 b'{"step": "x", "loss": [1], "psnr": {}}', b"[1, 2]"):
        (run / "log.jsonl").write_bytes(b"\n".join(lines[:-1] + [tail]) + b"\n")
        assert main(["info", str(run)]) == 0, tail
        out = " ".join(capsys.readouterr().out.split())
        assert f"step {whole['step']}, loss {whole['loss']:.5f}" in out, (tail, out)


def test_cli_info_reads_only_the_end_of_a_long_log(tiny, tmp_path, monkeypatch):
    """A week-long run logs a line every step or few: a 1M-line log.jsonl (200 MB) made info parse every line to show
    the last one (13.8 s and 1.9 GB against 1.8 s and 0.24 GB for a 20-step run). info reads the log from its end:
    the last record at or before the checkpoint's step (a line of a later step, which a rerun redoes, passed over)."""
    import shutil

    from fastminerf.cli import run_info

    root, _ = tiny
    run = tmp_path / "long"
    shutil.copytree(root / "run", run, ignore=shutil.ignore_patterns(".lock"))
    lines = (run / "log.jsonl").read_text().splitlines()
    first, whole = json.loads(lines[0]), json.loads(lines[-1])
    early = "".join(json.dumps(dict(first, step=1, loss=0.5 + i * 1e-6)) + "\n" for i in range(20000))
    later = json.dumps(dict(whole, step=whole["step"] + 1, loss=9.0))  # after the checkpoint: an interrupted run
    (run / "log.jsonl").write_text(early + "\n".join(lines) + "\n" + later + "\n")
    parsed = []
    real = json.loads

    def counting(text, *args, **kwargs):
        if '"step"' in (text.decode("utf-8", "replace") if isinstance(text, bytes) else text):
            parsed.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    info = run_info(run)
    assert info["last_log"] == {k: whole[k] for k in ("step", "loss", "psnr")}, info["last_log"]
    assert len(parsed) < 100, f"parsed {len(parsed)} log lines to find the last"


def test_cli_render_orbit_beyond_the_training_views_says_so(tiny, tmp_path, capsys):
    """An orbit swung farther than the identity's training views reach (--yaw 60 on a clip that turns a few degrees)
    rendered views the model never saw, without a word, though --help says the model guesses beyond them: the command
    names the swing and how far the views reach, and says nothing for the default orbit nor one within the views."""
    from fastminerf.render import load_target, orbit_reach

    root, _ = tiny
    yaw, pitch = orbit_reach(load_target([root / "data"], "id000"), "id000")
    run = ["render", "--run", str(root / "run"), "--identity", "id000", "--orbit", "--frames", "1",
           "--out", str(tmp_path / "o.mp4")]
    assert main(run + ["--yaw", "60", "--pitch", f"{pitch / 2:g}"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"--yaw 60 swings beyond id000's training views (they reach {yaw:.1f} degrees" in out, out
    assert "--pitch" not in out and "[yellow]" not in out
    for within in ([], ["--yaw", f"{yaw / 2:g}", "--pitch", f"{pitch:g}"]):
        assert main(run + within) == 0
        assert "training views" not in capsys.readouterr().out  # (the test's folder name holds 'beyond')


@pytest.mark.parametrize("option, value", [("--yaw", "nan"), ("--pitch", "inf")])
def test_cli_render_refuses_an_orbit_swing_that_is_not_a_number(tiny, tmp_path, capsys, option, value):
    """--yaw nan rendered the orbit from NaN cameras (every frame the background) and said it had written it; --pitch
    inf stopped with 'error: math domain error'. Refused with status 2, naming the option, leaving no --png-dir."""
    root, _ = tiny
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--orbit", "--frames", "2", option,
                 value, "--out", str(tmp_path / "o.mp4"), "--png-dir", str(tmp_path / "png")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"({option}) must be a finite number of degrees, got {value}" in err, err
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "png").exists()


def test_cli_render_refuses_a_split_of_a_driver_video(tiny, tmp_path, capsys):
    """--drive clip.mp4:test rendered every frame of the video as its 'train' split (a driver video is prepared whole,
    without splits) and said 'driven by clip:train', the ':test' dropped without a word: refused, before the video is
    prepared, saying what a video driver takes."""
    root, _ = tiny
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded: refused before preparing")
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--drive", f"{video}:test",
                 "--out", str(tmp_path / "x.mp4")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--drive {video}:test: a video driver has no splits" in err, err
    assert not (tmp_path / "x.mp4").exists() and not (root / "run" / "drivers" / "clip").exists()


def _beeps(seconds: float, at, rate: int = 16000) -> np.ndarray:
    """``seconds`` of silence with a 50 ms 1 kHz beep starting at each of ``at``."""
    t = np.arange(int(round(seconds * rate))) / rate
    x = np.zeros_like(t)
    for a in at:
        on = (t >= a) & (t < a + 0.05)
        x[on] = 0.8 * np.sin(2 * np.pi * 1000 * (t[on] - a))
    return np.rint(32767 * x).astype(np.int16)


def _onsets(x: np.ndarray, rate: int = 16000) -> list:
    """Seconds where the sound gets loud after at least 20 ms of quiet: the beeps' starts."""
    loud = np.flatnonzero(np.abs(x.astype(np.int64)) > 3000)
    return [loud[i] / rate for i in range(len(loud)) if i == 0 or loud[i] - loud[i - 1] > 0.02 * rate]


@pytest.mark.parametrize("fps", [10.0, 50.0])
def test_cli_render_at_another_fps_keeps_the_drivers_clock(tiny, tmp_path, fps, decode_audio):
    """``render --drive DATA --fps N`` played the driver's 25 fps frames one per video frame at N fps (slow or fast
    motion) while each frame took 1/N s of sound from its own time: at 10 fps every stretch of sound was played
    2.5 times over (a beep heard two or three times), at 50 fps a beep at 0.4 s came at 0.2 s, cut to pieces. The
    video keeps the driver's clock: as many seconds as the driver, frames repeated or dropped, the sound unbroken."""
    from fastminerf.audio import Audio, write_wav

    root, _ = tiny
    driver = generate(tmp_path / "drv", n_identities=1, n_frames=21, size=SIZE, novel_frames=1, val_fraction=0.05)[0]
    meta = json.loads((driver / "transforms_train.json").read_text())
    n, src = len(meta["frames"]), meta["fps"]
    assert src == 25.0 and n == 20
    write_wav(driver / "audio.wav", Audio(_beeps(n / src, [0.2, 0.52]), 16000))
    png = tmp_path / "png"
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--drive", f"{driver}:train",
                 "--fps", f"{fps:g}", "--out", str(tmp_path / "d.mp4"), "--png-dir", str(png)]) == 0
    meta_v, frames = _read_video(tmp_path / "d.mp4")
    want = int(np.ceil(n * fps / src))
    assert len(frames) == len(list(png.glob("*.png"))) == want and meta_v["fps"] == fps
    sound = decode_audio(tmp_path / "d.mp4")
    assert abs(len(sound) / 16000 - want / fps) <= 1 / fps  # the sound lasts as long as the video
    got = _onsets(sound)
    assert len(got) == 2 and np.abs(np.array(got) - [0.2, 0.52]).max() <= 1 / fps, got
    # --frames counts the video's frames at that rate (it took 5 of the driver's, 2 video frames at 10 fps)
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--drive", f"{driver}:train",
                 "--fps", f"{fps:g}", "--frames", "5", "--out", str(tmp_path / "f.mp4")]) == 0
    assert len(_read_video(tmp_path / "f.mp4")[1]) == 5
    assert abs(len(decode_audio(tmp_path / "f.mp4")) / 16000 - 5 / fps) <= 1 / fps


def test_a_run_whose_data_moved_says_so_and_how_to_give_it(tmp_path, capsys):
    """A run keeps its data folders as absolute paths; once the data was renamed, or the run copied to another
    machine, render and speech --run failed with '/old/data: no such file or folder', which neither says that the
    path is the run's record of its data nor how to point the command at where the data is now."""
    import shutil

    dirs = generate(tmp_path / "data", n_identities=2, n_frames=4, size=SIZE, novel_frames=1, val_fraction=0.25)
    train(load_config("tiny", ["train.steps=1"]), dirs, tmp_path / "run")
    shutil.move(tmp_path / "data", tmp_path / "renamed")
    for args, option in ((["render", "--run", str(tmp_path / "run"), "--identity", "id000", "--orbit", "--frames", "1",
                           "--out", str(tmp_path / "o.mp4")], "--target-data"),
                         (["speech", "--run", str(tmp_path / "run"), "--steps", "1"], "--data")):
        assert main(args) != 0
        err = " ".join(capsys.readouterr().err.split())
        assert str(dirs[0]) in err and "trained on" in err and option in err, err
    assert main(["render", "--run", str(tmp_path / "run"), "--identity", "id000", "--orbit", "--frames", "1",
                 "--out", str(tmp_path / "o.mp4"), "--target-data", str(tmp_path / "renamed")]) == 0


def test_cli_info_says_how_far_a_run_went_where_it_stopped_and_whether_its_data_is_there(tmp_path, capsys):
    """info said '76, 0 s' of a personalisation that its time limit (or an interruption) ended after 76 of 2,000
    steps, the same as of a finished run; nor whether a personalisation stopped in its code-only phase (no shared
    weight tuned yet), nor that the data it names as 'trained on' is no longer there."""
    import shutil

    from fastminerf.train import personalize

    dirs = generate(tmp_path / "data", n_identities=3, n_frames=4, size=SIZE, novel_frames=1, val_fraction=0.25)
    train(load_config("tiny", ["train.steps=2", "train.log_every=1"]), dirs[:2], tmp_path / "run")
    personalize(tmp_path / "run", dirs[2:], tmp_path / "p", steps=1000, max_seconds=1e-9)  # the limit ends it
    personalize(tmp_path / "run", dirs[2:], tmp_path / "q", steps=1000, monitor=lambda model, record: True,
                overrides=["train.log_every=1"])  # stopped after the first step, in the code-only phase
    capsys.readouterr()
    assert main(["info", str(tmp_path / "run"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == info["total_steps"] == 2 and info["phase"] is None and info["data_missing"] == []
    assert main(["info", str(tmp_path / "p"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 1 and info["total_steps"] == 1000 and info["max_seconds"] == 1e-9
    assert main(["info", str(tmp_path / "p")]) == 0
    # its seconds (setup and one step: 0.3 s on a loaded machine, '1 s' past 0.5 s) as the run recorded them
    shown = f"1 of 1000, {info['seconds']:.0f} s (its 1e-09 s limit reached)"
    assert shown in " ".join(capsys.readouterr().out.split())
    assert main(["info", str(tmp_path / "q")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1 of 1000" in out and "not finished" in out and "code-only" in out
    shutil.move(tmp_path / "data", tmp_path / "renamed")
    assert main(["info", str(tmp_path / "p"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data_missing"] == [str(d) for d in dirs]
    assert main(["info", str(tmp_path / "p")]) == 0
    assert "not there" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv, message", [
    (["render", "--identity", "id000", "--orbit", "--out", "{tmp}/x.webm"], "a video needs the suffix"),
    (["render", "--identity", "id000", "--orbit", "--out", "{tmp}/x.mp4", "--png-dir", "{tmp}/taken"],
     "taken is a file: give a folder for the PNG frames"),
    (["render", "--identity", "id000", "--orbit", "--alpha", "--out", "{tmp}/m.mp4"], "m_alpha.mp4 is a folder"),
    (["eval", "--data", "{data}", "--split", "val", "--out", "{tmp}/taken"], "taken is a file: give a folder"),
])
def test_render_and_eval_refuse_their_outputs_before_reading_the_model(tiny, tmp_path, capsys, monkeypatch, argv,
                                                                      message):
    """A bad --out (a suffix that is no video container, a matte name that is a folder) or --png-dir / eval --out
    that is a file was refused only once the model was read, a driver video prepared and the progress bar begun:
    the user with a typo waited first. The library's own checks of those outputs now run before the run is opened."""
    import fastminerf.cli as cli

    root, _ = tiny
    (tmp_path / "taken").write_bytes(b"a file")
    (tmp_path / "m_alpha.mp4").mkdir()
    monkeypatch.setattr(cli, "_open_run", lambda *a, **k: pytest.fail("the run was read before the outputs were checked"))
    argv = [a.replace("{data}", str(root / "data")).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv[:1] + ["--run", str(root / "run")] + argv[1:]) == 2
    assert message in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("argv, message", [
    (["render", "--identity", "id000", "--speech", "{tmp}/voice.wav", "--out", "{tmp}/x.mp4"],
     "speech model {run}/speech.pt does not exist"),
    (["render", "--identity", "id000", "--speech", "{tmp}/nope.wav", "--speech-model", "{tmp}/m.pt", "--out", "{tmp}/x.mp4"],
     "nope.wav: no such file"),
    (["eval", "--data", "{data}", "--split", "val", "--speech", "{tmp}/m.pt"], "speech model {tmp}/m.pt does not exist"),
])
def test_render_and_eval_read_the_speech_model_and_recording_before_the_run(tiny, tmp_path, capsys, monkeypatch, argv,
                                                                            message):
    """render --speech and eval --speech read the speech model (and render the recording) only after the run's model
    and data: a missing model or a mistyped recording was said after that wait. They are read first (after the run
    folder is known to be there: a wrong --run is still named as such)."""
    import fastminerf.cli as cli

    root, _ = tiny
    monkeypatch.setattr(cli, "_open_run", lambda *a, **k: pytest.fail("the run was read before the speech inputs"))
    if "--speech-model" in argv:  # a speech model that loads: a file of the wrong kind would do for 'before'
        (tmp_path / "m.pt").write_bytes(b"")
        monkeypatch.setattr("fastminerf.speech.load_speech_model", lambda path: object())
    swap = lambda a: a.replace("{data}", str(root / "data")).replace("{tmp}", str(tmp_path)).replace("{run}", str(root / "run"))  # noqa: E731
    argv = [swap(a) for a in argv]
    assert main(argv[:1] + ["--run", str(root / "run")] + argv[1:]) == 2
    assert swap(message) in " ".join(capsys.readouterr().err.split())
    monkeypatch.undo()
    assert main(argv[:1] + ["--run", str(tmp_path / "no run")] + argv[1:]) == 2
    assert "no run does not exist" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("source", ["--drive", "--speech"])
def test_cli_render_refuses_to_write_over_its_own_input_video(tiny, tmp_path, capsys, source):
    """render --drive clip.mp4 --out clip.mp4 (or --speech voice.mp4 --out voice.mp4: one name typed twice) read the
    recording, rendered, then replaced it with the render: the user's own video was gone. Refused before any work,
    naming both options, and the file is kept."""
    root, _ = tiny
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"the user's recording")
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", source, str(video),
                 "--out", str(tmp_path / "." / "clip.mp4")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--out {tmp_path / '.' / 'clip.mp4'} is {source} {video}" in err, err
    assert video.read_bytes() == b"the user's recording" and not (root / "run" / "drivers" / "clip").exists()


def test_a_one_frame_driven_render_gives_the_length_of_its_sound(tiny, tmp_path, capsys):
    """render --drive D --frames 1 carries one frame's sound (1 / fps s, 0.04 s at 25 fps) and said 'with 0.0 s of
    the driver's audio', which reads as none: the length is given to the hundredth of a second."""
    root, dirs = tiny
    fps = json.loads((dirs[1] / "transforms_val.json").read_text())["fps"]
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--drive", f"{dirs[1]}:val",
                 "--frames", "1", "--out", str(tmp_path / "one.mp4")]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"with {1 / fps:.2f} s of the driver's audio" in text, text


def test_render_help_gives_the_orbit_frame_rate_of_the_library(monkeypatch, capsys):
    """render --help said '25 for an orbit', a literal beside render.DEFAULT_FPS (the rate orbit_path gives an orbit):
    the help takes the library's constant, so that it says the rate an orbit is rendered at."""
    from fastminerf import render

    monkeypatch.setattr(render, "DEFAULT_FPS", 30.0)
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "30 for an orbit" in text and "25 for an orbit" not in text, text


def test_a_refused_render_or_eval_leaves_no_output_folder_behind(tiny, tmp_path, capsys):
    """render --out NEW/v.mp4 --png-dir NEW2/pngs of an unknown identity, or eval --out NEW of a split the data does
    not have, was refused after the early output checks had made NEW, NEW2/pngs (and eval's NEW): empty folders left
    behind by a call that wrote nothing. The checks look without making; a folder is made when it is written to."""
    root, dirs = tiny
    assert main(["render", "--run", str(root / "run"), "--identity", "nobody", "--orbit", "--out",
                 str(tmp_path / "a" / "v.mp4"), "--png-dir", str(tmp_path / "b" / "pngs")]) == 2
    assert "nobody" in capsys.readouterr().err
    assert main(["eval", "--run", str(root / "run"), "--data", str(dirs[0]), "--split", "nosuch", "--out",
                 str(tmp_path / "c" / "ev")]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # a good call still makes them
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--orbit", "--frames", "2", "--out",
                 str(tmp_path / "a" / "v.mp4"), "--png-dir", str(tmp_path / "b" / "pngs")]) == 0
    assert (tmp_path / "a" / "v.mp4").is_file() and len(list((tmp_path / "b" / "pngs").glob("*.png"))) == 2


def test_the_not_personalised_note_of_a_chain_names_the_run_that_last_trained_the_identity(tiny, tmp_path, capsys,
                                                                                          monkeypatch):
    """In a chain GEN -> RUN2 (adds id002) -> RUN3 (fine-tunes id000), rendering id001 from RUN3 said it renders worse
    'than from the generic run it started from (RUN2)': RUN2 is not generic, its shared weights were tuned for id002,
    and id001 renders as GEN had it only from GEN. The note follows generic_run back to the run that last trained each
    identity without being tuned for someone else (GEN for id001, RUN2 for id002), and one identity 'renders'."""
    monkeypatch.setenv("COLUMNS", "400")
    root, dirs = tiny
    gen, run2, run3 = root / "run", tmp_path / "run2", tmp_path / "run3"
    assert main(["personalize", "--run", str(gen), "--data", str(dirs[2]), "--out", str(run2), "--steps", "1"]) == 0
    assert main(["personalize", "--run", str(run2), "--data", str(dirs[0]), "--out", str(run3), "--steps", "1"]) == 0
    capsys.readouterr()
    for who, source in (("id001", f"the generic run {gen}"), ("id002", f"{run2}, the run personalised for id002")):
        assert main(["render", "--run", str(run3), "--identity", who, "--orbit", "--frames", "1",
                     "--out", str(tmp_path / f"{who}.mp4")]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert f"{run3} was personalised for id000: {who} renders worse from it than from {source}" in out, out
        assert "render worse" not in out and "generic run it started from" not in out
    assert main(["eval", "--run", str(run3), "--data", str(dirs[1]), str(dirs[2]), "--split", "val"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (f"id001, id002 render worse from it than from the generic run {gen} (id001); {run2}, the run personalised "
            f"for id002 (id002)") in out, out


def test_the_not_personalised_note_of_many_people_names_the_first_few_and_how_many_more():
    """eval --run RUN2 --data ROOT of a personalisation that added one person to a model of 1,000 listed the 999
    others in one note, a page of names, where README says eval's notes name the first few people and how many more."""
    from pathlib import Path

    from fastminerf.cli import _not_personalised

    names = [f"p{k:04d}" for k in range(1000)]
    note = _not_personalised(Path("run2"), {"kind": "personalize", "added": ["new"], "refined": []}, names)
    assert "p0000" in note and "and 992 more" in note and "p0999" not in note
    assert "personalised for new: p0000" in note


def test_cli_info_says_a_run_is_being_trained_now(tmp_path, capsys, monkeypatch):
    """info on a run a train was writing said '(not finished: the same command continues it)', which invited a second
    train into it (refused: the folder is locked). A run whose RUN/.lock a live process holds is 'being trained now';
    the look (a shared lock, released at once) is taken only when the lock file names a live process, so that a train
    starting at that moment is not refused for it; and once the writer lets go, the run reads as before."""
    from fastminerf.data.writer import folder_locked

    monkeypatch.setenv("COLUMNS", "250")  # the table's line whole
    dirs = generate(tmp_path / "data", n_identities=1, n_frames=3, size=SIZE, novel_frames=1)
    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=50", "train.log_every=1"]), dirs, run,
          monitor=lambda model, record: True)  # stopped after its first step: not finished
    capsys.readouterr()
    with folder_locked(run, lambda holder: AssertionError(holder)):  # a train writing the run, in this process
        assert main(["info", str(run), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["training_now"] == os.getpid()
        assert main(["info", str(run)]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert f"being trained now, by process {os.getpid()}" in out and "continues it" not in out, out
    assert main(["info", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["training_now"] is None
    assert main(["info", str(run)]) == 0
    assert "not finished: the same command continues it" in " ".join(capsys.readouterr().out.split())
    with folder_locked(run, lambda holder: AssertionError(holder)):  # the look leaves the lock to its writer
        pass


def test_an_identity_typed_in_the_other_unicode_form_is_found(tmp_path, capsys):
    """render --identity 'Zoë' copied from macOS Finder (decomposed: NFD) of a run trained on a folder named 'Zoë'
    typed composed (NFC) was refused as "unknown identity 'Zoë' ... closest to 'Zoë'": one name to the eye, other code
    points. Names are compared in NFC (a dataset refuses two names that differ only so), stored names unchanged:
    the model's identity, the target data's folder and --driver-identity are found."""
    import unicodedata

    from fastminerf.render import load_driver, load_target

    nfc, nfd = unicodedata.normalize("NFC", "Zoë"), unicodedata.normalize("NFD", "Zoë")
    dirs = generate(tmp_path / "data", n_identities=2, n_frames=3, size=SIZE, novel_frames=1)
    dirs[1].rename(tmp_path / "data" / nfc)
    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=1"]), [tmp_path / "data"], run)
    model = load_run(run)[1]
    assert model.identity_index(nfd) == model.identity_names.index(nfc)
    assert load_target([tmp_path / "data"], nfd).identities == [nfc]
    assert load_driver(tmp_path / "data", "val", nfd)[1] == nfc
    for extra in (["--orbit", "--frames", "1"], ["--drive", str(tmp_path / "data") + ":val", "--driver-identity", nfd]):
        assert main(["render", "--run", str(run), "--identity", nfd, "--out", str(tmp_path / "o.mp4"), *extra]) == 0, \
            capsys.readouterr().err


def test_the_orbit_default_frame_count_has_one_definition(tiny, tmp_path, capsys, monkeypatch):
    """The orbit's 60 frames were typed into render --help, into the command's call ('args.frames or 60') and into
    orbit_path's default, apart: one changed, the others went on saying or rendering 60. They are
    render.ORBIT_FRAMES."""
    import inspect

    from fastminerf import render

    assert inspect.signature(render.orbit_path).parameters["n_frames"].default == render.ORBIT_FRAMES
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    assert f"frames of an orbit (default {render.ORBIT_FRAMES})" in " ".join(capsys.readouterr().out.split())
    monkeypatch.setattr(render, "ORBIT_FRAMES", 2)
    root, dirs = tiny
    assert main(["render", "--run", str(root / "run"), "--identity", dirs[0].name, "--orbit",
                 "--out", str(tmp_path / "o.mp4")]) == 0
    assert ": 2 frames" in " ".join(capsys.readouterr().out.split())


def test_the_progress_of_a_driver_videos_preparation_names_its_stages(tiny, tmp_path, capsys, monkeypatch):
    """``render --drive VIDEO`` drew prepare's stages into one bar counted in 'frames': tracking went to 8/8 frames,
    the writing of the frames again from 0, and the one-step pose and expression fit ended the bar at '1/1 frames'
    for a driver of 8 frames (and a second render, whose driver is cached, showed only that). Each stage is shown
    as prepare shows it: named, with its own count."""
    root, dirs = tiny
    video = tmp_path / "someone.mp4"
    video.write_bytes(b"")  # never read: the preparation is the stand-in below

    def prepared(video, basis, out_root, size, max_frames=None, progress=None, fps=None, digests=None):
        for stage, total in (("track", 8), ("frames", 8), ("cameras", 1)):
            for done in range(total + 1):
                progress(stage, "someone", done, total)
        return dirs[2]

    monkeypatch.setattr("fastminerf.render.training_basis", lambda paths: tmp_path / "expression_basis.npz")
    monkeypatch.setattr("fastminerf.render.driver_from_video", prepared)
    # --no-audio: a driver video plays its own sound (e42c4f9), and this stand-in has none to read
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--drive", str(video), "--frames", "2",
                 "--no-audio", "--out", str(tmp_path / "x.mp4")]) == 0
    out = capsys.readouterr().out
    assert "1/1 frames" not in out, out
    assert "track someone" in out and "pose, expression someone" in out, out


def test_evaluate_keeps_no_frame_in_the_cache_and_reads_each_once(tiny, monkeypatch):
    """README (Memory and disk at scale) says eval holds one frame at a time, flat in the frames; but every truth
    frame and mask evaluate read stayed in the dataset's frame cache, up to its 2 GiB (0.26 MB a frame at 256 px:
    +26 MB for 100 frames, 1 GB for a long split). Each frame is still decoded once (the render's rays and the
    truth share it), and none is kept after its scores."""
    from collections import Counter

    import fastminerf.data.dataset as dataset_module

    root, dirs = tiny
    _, model, _ = load_run(root / "run")
    data = load_dataset(dirs[:2], splits=("train", "val"))
    reads = Counter()
    real = dataset_module.read_rgb
    monkeypatch.setattr(dataset_module, "read_rgb", lambda path, *a, **k: reads.update([str(path)]) or real(path, *a, **k))
    result = evaluate(model, data, "val", with_lmd=False)
    frames = {str(p) for p in data.table("val").image_paths}
    assert result["frames"] == len(frames) and {p: reads[p] for p in frames} == {p: 1 for p in frames}
    assert len(data.cache) == 0 and data.cache.nbytes == 0


def test_a_frame_repeated_in_a_path_is_rendered_once(tiny, monkeypatch):
    """A driven video at a higher --fps than its driver's repeats frames (CameraPath.at_fps: a 25 fps driver at
    50 fps shows each of its frames twice, at 30 fps one frame in six is a repeat), and render_sequence rendered every repeat again,
    the same camera and expression, the same pixels. A frame equal to the one before it is that one's picture."""
    import fastminerf.render as render_module
    from fastminerf.render import orbit_path, render_sequence

    root, dirs = tiny
    _, model, _ = load_run(root / "run")
    data = load_dataset(dirs[:1], splits=("train",))
    once = orbit_path(data, "id000", n_frames=3)
    twice = once.take(np.repeat(np.arange(3), 2))  # what at_fps gives at twice the rate
    calls = []
    real = render_module.render_rays
    monkeypatch.setattr(render_module, "render_rays", lambda *a, **k: calls.append(1) or real(*a, **k))
    box = model.aabb.tolist()
    for alpha in (False, True):
        calls.clear()
        frames = list(render_sequence(model, twice, "id000", aabb=box, alpha=alpha))
        assert len(frames) == 6 and len(calls) == 3
        alone = list(render_sequence(model, once, "id000", aabb=box, alpha=alpha))
        for k in range(6):
            assert np.array_equal(frames[k], alone[k // 2])


def test_metrics_table_caption_explains_only_the_columns_it_shows():
    """The caption explained DEPTH (and LMD, EAR) under every table with a box metric, also where no such column is
    shown: `fastminerf demo` and eval on procedural heads (no landmarks.npz, no mediapipe face) printed 'DEPTH:
    landmark depth error, head units' under a table without a DEPTH column."""
    import io

    from rich.console import Console

    from fastminerf.cli import _metrics_table

    names = ["psnr", "ssim", "l1", "face_psnr", "pose_gap"]
    vals = dict(zip(names, [25.3, 0.79, 0.031, 25.2, 1.3]))
    result = {"metrics": names, "frames": 1, "mean": vals, "identities": {"id000": {"frames": 1, **vals}}}
    console = Console(width=80, record=True, color_system=None, file=io.StringIO())
    console.print(_metrics_table(result, "test"))
    text = " ".join(console.export_text().split())
    assert "FACE" in text and "POSE: degrees from the nearest training head pose" in text, text
    for absent in ("DEPTH", "EAR", "LMD", "MOUTH", "EYE"):
        assert absent not in text, (absent, text)


def test_time_limits_are_written_in_full_where_whole(tiny, capsys, monkeypatch):
    """--max-seconds 1234567 was written with '%g': info's 'its 1.23457e+06 s limit reached', and train's 'nothing to
    train' and 'no step' lines '(--max-seconds / train.max_seconds 1.23457e+06 s)', a limit the user never gave. A
    whole number of seconds is written in full, as the curve writes a step (ad691b3); any other as before."""
    import types

    import fastminerf.cli as cli

    root, _ = tiny
    real = cli.run_info

    def at_its_limit(run):  # the tiny run, as if its time limit had ended it after its first step
        return dict(real(run), step=1, max_seconds=1234567.0, seconds=1234567.0, limit_reached=True)

    monkeypatch.setattr(cli, "run_info", at_its_limit)
    monkeypatch.setenv("COLUMNS", "200")  # the row on one line
    assert main(["info", str(root / "run")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"1 of {TINY_STEPS}, 1234567 s (its 1234567 s limit reached)" in out, out
    result = types.SimpleNamespace(step=5, seconds=1234567.5, out_dir=root / "run")
    assert "train.max_seconds 1234567 s) spent" in cli._nothing_to_do(result, 10, "train.steps", 1234567.0)
    assert "train.max_seconds 1234567 s) was spent" in cli._no_step("trained", result, 10, "train.steps", 1234567.0)
    assert "train.max_seconds 0.5 s) was spent" in cli._no_step("trained", result, 10, "train.steps", 0.5)


def test_time_limits_that_are_not_whole_are_written_as_given():
    """A limit with a fraction and more than six digits (--max-seconds 86400.25, a day and a quarter second) was
    still written with '%g': '(--max-seconds / train.max_seconds 86400.2 s)', a limit the user never gave. Any limit
    is written as the user's number (the shortest text that reads back as it)."""
    import types

    import fastminerf.cli as cli

    result = types.SimpleNamespace(step=5, seconds=2e6, out_dir="run")  # past each limit below
    assert "train.max_seconds 86400.25 s) spent" in cli._nothing_to_do(result, 10, "train.steps", 86400.25)
    assert "train.max_seconds 1234567.5 s) was spent" in cli._no_step("trained", result, 10, "train.steps", 1234567.5)
    assert "train.max_seconds 1e-09 s) was spent" in cli._no_step("trained", result, 10, "train.steps", 1e-9)


def test_a_stopped_eval_out_says_it_wrote_no_metrics_and_where_the_images_of_the_frames_it_scored_are(
        tiny, tmp_path, capsys, monkeypatch):
    """eval --out stopped by Ctrl-C or SIGTERM printed only 'interrupted' / 'terminated': not that --out holds the
    side-by-side images of the frames scored so far and no metrics.json (train and render say what they leave)."""
    import fastminerf.render

    root, dirs = tiny
    real, calls = fastminerf.render.render_frame, []

    def stopped_at_the_third_frame(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fastminerf.render, "render_frame", stopped_at_the_third_frame)
    out = tmp_path / "ev"
    assert main(["eval", "--run", str(root / "run"), "--data", str(dirs[0]), str(dirs[1]), "--split", "val",
                 "--out", str(out)]) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert not (out / "metrics.json").exists() and len(list((out / "side_by_side").rglob("*.png"))) == 2
    assert err.startswith(f"interrupted before {out / 'metrics.json'} was written"), err
    assert f"2 side-by-side images of this evaluation written to {out / 'side_by_side'}" in err, err
    # without --out nothing is written and nothing more is said
    calls.clear()
    assert main(["eval", "--run", str(root / "run"), "--data", str(dirs[0]), str(dirs[1]), "--split", "val"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_metrics_table_says_its_mean_is_over_identities_not_frames():
    """eval's mean row showed the frames of all identities (here 4) beside the unweighted mean of the identities'
    means (metrics.json's 'mean'): 'mean 4 ... 20.00' read as the mean of 4 frames, whose PSNR here is 17.50 dB. The
    caption says what the mean is, where there are identities to average; one identity's table is as it was."""
    import io

    from rich.console import Console

    from fastminerf.cli import _metrics_table

    names = ["psnr", "ssim", "l1"]
    one, three = dict(zip(names, [25.0, 0.9, 0.02])), dict(zip(names, [15.0, 0.5, 0.1]))
    mean = {m: (one[m] + three[m]) / 2 for m in names}
    result = {"metrics": names, "frames": 4, "mean": mean,
              "identities": {"id000": {"frames": 1, **one}, "id001": {"frames": 3, **three}}}

    def shown(result):
        console = Console(width=80, record=True, color_system=None, file=io.StringIO())
        console.print(_metrics_table(result, "test"))
        return " ".join(console.export_text().split())

    text = shown(result)
    assert "20.00" in text and "mean: of the identities' means, each identity alike" in text, text
    alone = dict(result, frames=1, mean=one, identities={"id000": result["identities"]["id000"]})
    assert "mean:" not in shown(alone)


def test_the_new_view_notes_say_their_pose_gap_is_a_mean_over_frames(tiny, tmp_path, capsys, monkeypatch):
    """eval's and prepare's pose gap is the mean over a split's frames of each frame's angle to its nearest training
    pose, but their notes said the frames were 'seen more than 3 degrees from every training head pose' and 'show
    the head 3.4 degrees from every training pose': every frame that far from every pose, where some frames of such a
    split sit within a degree of one. Both notes now say it is the frames' mean angle to the nearest pose."""
    import types

    import fastminerf.prepare as prep

    root, dirs = tiny
    monkeypatch.setattr("fastminerf.cli.NEW_VIEW_DEG", 0.0)
    assert main(["eval", "--run", str(root / "run"), "--data", str(dirs[0]), "--split", "val"]) == 0
    note = " ".join(capsys.readouterr().out.split()).split("new views:")[1]
    assert "on average" in note and "from the nearest training head pose" in note and "every" not in note, note
    video = types.SimpleNamespace(name="clip", status="done", frames_used=60, frames_dropped=0, crop=(0, 0, 512),
                                  splits={"train": 48, "val": 6, "test": 6}, pose_gaps={"val": 1.7, "test": 3.4},
                                  notes=[], contact_sheet=None, out_dir=tmp_path / "p" / "clip")
    done = types.SimpleNamespace(root=tmp_path / "p", videos=[video], failed=[], basis=None, basis_reused=False)
    monkeypatch.setattr(prep, "check_prepare", lambda *a, **k: None)
    monkeypatch.setattr(prep, "prepare", lambda *a, **k: done)
    assert main(["prepare", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "p")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "clip: its val and test frames show the head 1.7 / 3.4 degrees on average from the nearest training pose" \
        in out and "every" not in out, out

def test_eval_metrics_json_records_the_run_that_scored_each_identity(tiny, tmp_path):
    """eval --run A B --out DIR said only on the terminal which run rendered each person: metrics.json, read later,
    could not tell a generic run's score from a fine-tuned one's. It records each identity's run."""
    root, dirs = tiny
    each = tmp_path / "each"
    assert main(["personalize", "--run", str(root / "run"), "--data", str(dirs[0]), "--out", str(each),
                 "--each", "--steps", "1"]) == 0
    out = tmp_path / "ev"
    assert main(["eval", "--run", str(root / "run"), str(each / "id000"), "--data", str(dirs[0]), str(dirs[1]),
                 "--split", "val", "--max-frames", "1", "--out", str(out)]) == 0
    got = json.loads((out / "metrics.json").read_text())
    assert got["runs"] == {"id000": str(each / "id000"), "id001": str(root / "run")}


def test_a_driver_video_at_a_higher_fps_is_told_in_renderings_words(tiny, tmp_path, capsys, monkeypatch):
    """render --drive VIDEO --fps 50 of a 25 fps video repeated prepare's note for training data, 'no motion, nothing
    new to learn; --fps 25 or below reads each picture at most once': a render learns nothing. It says what repeating
    the video's pictures does to the render (held poses and expressions, no smoother motion) in render's words. The
    note is prepare's own (repeats_note, which prepare writes), not a copy of its words: a rewording there that
    render no longer recognises fails here."""
    import shutil

    from fastminerf.prepare.pipeline import repeats_note

    root, dirs = tiny
    video = tmp_path / "someone.mp4"
    video.write_bytes(b"")  # never read: the preparation is the stand-in below
    folder = tmp_path / "drivers" / "someone"
    shutil.copytree(dirs[2], folder)
    note = repeats_note(50.0, 25.0)
    assert note is not None and repeats_note(25.0, 25.0) is None
    (folder / "prepare.json").write_text(json.dumps({"notes": [note]}))
    monkeypatch.setattr("fastminerf.render.training_basis", lambda paths: tmp_path / "expression_basis.npz")
    monkeypatch.setattr("fastminerf.render.driver_from_video", lambda *a, **k: folder)
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--drive", str(video), "--frames", "2",
                 "--fps", "50", "--no-audio", "--out", str(tmp_path / "x.mp4")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "nothing new to learn" not in out and "reads each picture" not in out, out
    assert "--fps 50 is above the driver video's own rate (25 fps)" in out and "50% of the rendered frames" in out, out


def test_speech_and_info_show_an_undefined_held_out_score_as_a_dash_not_nan(tiny, tmp_path, capsys, monkeypatch):
    """A held-out split of one frame has no correlation (nothing varies): speech's table printed 'nan' in its mouth
    corr column, and info of the run 'corr nan', where every other table of the CLI shows a score that is not
    there as '-'."""
    import shutil

    monkeypatch.setenv("COLUMNS", "400")
    root, _ = tiny
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    data = generate(tmp_path / "one_val", n_identities=1, n_frames=4, size=16, novel_frames=1, val_fraction=0.25)
    assert main(["speech", "--data", str(data[0]), "--out", str(run / "speech.pt"), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "id000" in line).replace("│", " ").split()
    assert row[:2] == ["id000", "1"] and row[-1] == "-", out
    assert "nan" not in out.lower(), out
    assert main(["info", str(run)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "corr - (1 frames)" in out and "nan" not in out.lower(), out
