"""``run_demo`` end to end at the smallest sizes (tiny preset, two heads, seconds of training): every
artefact is written, connected and readable; quality is not judged here."""

import json

import imageio_ffmpeg
import pytest

from fastminerf.data import load_dataset
from fastminerf.demo import run_demo
from fastminerf.render import evaluate
from fastminerf.train import load_run


def test_run_demo_small(tmp_path, decode_audio):
    stages = set()
    res = run_demo(tmp_path / "demo", minutes=0.05, n_identities=2, n_frames=6, size=24, config="tiny", fps=10,
                   progress=lambda stage, info: stages.add(stage))
    assert res.held_out == "id001" and res.driver == "id000"
    assert {"synth", "render", "eval_val", "eval_novel"} <= stages
    # The generic model never saw the held-out head; the personalised one holds both.
    assert load_run(res.generic_run)[2]["identity_names"] == ["id000"]
    assert load_run(res.personal_run)[2]["identity_names"] == ["id000", "id001"]
    # The video: the driver's train frames (6 frames, 1 of them val), at the data's size.
    reader = imageio_ffmpeg.read_frames(str(res.video))
    meta = next(reader)
    assert tuple(meta["size"]) == (24, 24) and len(list(reader)) == 5
    # ... with the driver's voice (the procedural heads' audio.wav) for those 5 frames at 10 fps.
    assert abs(len(decode_audio(res.video)) - 0.5 * 16000) < 1100
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    for split in ("val", "novel"):
        assert set(summary["metrics"][split]["identities"]) == {"id000", "id001"}
        assert (tmp_path / "demo" / f"eval_{split}" / "metrics.json").is_file()
    # The held-out head is scored by the personalised run, the others by the generic run (the personalisation
    # fine-tuned the shared weights for the held-out head): the same numbers as evaluating each alone.
    data = load_dataset(res.identity_dirs, splits=("train", "val"))
    for name, run in (("id000", res.generic_run), ("id001", res.personal_run)):
        alone = evaluate(load_run(run)[1], data, "val", identities=[name], with_lpips=False, with_lmd=False,
                         max_frames=summary["settings"]["eval_frames"])
        assert summary["metrics"]["val"]["identities"][name]["psnr"] == pytest.approx(
            alone["identities"][name]["psnr"], abs=1e-6)
    assert res.contact_sheet.is_file() and summary["seconds"]["total"] > 0
    with pytest.raises(FileExistsError, match="earlier demo"):
        run_demo(tmp_path / "demo", minutes=0.05, n_identities=2, n_frames=6, size=24, config="tiny")


def test_a_demo_stopped_part_way_says_how_to_run_it_again(tmp_path):
    """Ctrl-C in the demo's training said train's 'rerun the same command to resume from it' (or 'a rerun starts
    again'), but the same demo command is refused: its folder holds an earlier demo's data (and run). The demo says
    what does run it again."""
    def stop(stage, info):
        if stage == "train":
            raise KeyboardInterrupt

    args = dict(minutes=0.05, n_identities=2, n_frames=6, size=16, config="tiny")
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_demo(tmp_path / "demo", progress=stop, **args)
    with pytest.raises(FileExistsError):  # the same call again
        run_demo(tmp_path / "demo", **args)
    said = str(stopped.value)
    assert "rerun" not in said and "--overwrite" in said and str(tmp_path / "demo") in said, said


def test_run_demo_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="at least 2 identities"):
        run_demo(tmp_path, n_identities=1)
    with pytest.raises(ValueError, match="minutes must be positive"):
        run_demo(tmp_path, minutes=0)


def test_a_demo_with_an_unknown_config_is_refused_before_it_makes_data(tmp_path):
    """demo --config with a typo generated the heads first and failed only at training, leaving OUT/data behind:
    the same command with the right preset was then refused ('OUT/data already holds a generated dataset') until
    --overwrite. The config is read before anything is written."""
    with pytest.raises(ValueError, match="unknown config preset 'cpuu'"):
        run_demo(tmp_path / "demo", config="cpuu", n_identities=2, n_frames=5, size=16)
    assert not (tmp_path / "demo" / "data").exists()


def test_the_demo_renders_and_scores_the_personalised_head_where_it_trained(tmp_path, fake_cuda, monkeypatch):
    """On a machine with a GPU the demo trained and personalised there (train.device auto), scored the generic
    heads with the trained model there, and loaded the personalised run on the CPU to render transfer.mp4 and score
    the held-out head: the demo's last stages ran on the CPU. Training is simulated on the GPU here (it runs on the
    CPU, then the generic model is moved as train moves it)."""
    import sys

    import torch

    T = sys.modules["fastminerf.train"]  # the module (fastminerf.train is the function train)

    def off_the_gpu(fn):
        def run(*args, **kwargs):
            with pytest.MonkeyPatch.context() as cpu_only:  # the real CPU training, then the move train makes
                cpu_only.setattr(torch.cuda, "is_available", lambda: False)
                cpu_only.setattr(torch.cuda, "device_count", lambda: 0)
                result = fn(*args, **kwargs)
            result.model.to(T.resolve_device(args[0].train.device) if fn is real_train else "cuda")
            return result
        return run

    real_train, real_personalize = T.train, T.personalize
    monkeypatch.setattr(T, "train", off_the_gpu(real_train))
    monkeypatch.setattr(T, "personalize", off_the_gpu(real_personalize))
    run_demo(tmp_path / "demo", minutes=0.05, n_identities=2, n_frames=6, size=16, config="tiny")
    assert fake_cuda.moves.count(("MINeRF", torch.device("cuda"))) == 3  # trained, personalised, and loaded to render


def test_the_demo_runs_on_the_cpu_when_asked_on_a_machine_with_a_gpu(tmp_path, fake_cuda, monkeypatch, capsys):
    """demo had no device choice: on a machine with a GPU it trained, rendered and scored there (the preset's
    train.device auto), with no way to keep to the CPU (the native CUDA kernels have not run on a GPU yet) short of a
    YAML config of one's own. demo --device cpu (run_demo(device=)) runs it all on the CPU; a device that cannot run
    is refused naming the option before any work."""
    from fastminerf.cli import main

    assert main(["demo", str(tmp_path / "demo"), "--minutes", "0.05", "--identities", "2", "--frames", "6",
                 "--size", "16", "--config", "tiny", "--device", "cpu"]) == 0
    assert fake_cuda.moves == []
    assert main(["demo", str(tmp_path / "other"), "--config", "tiny", "--device", "cuda:3"]) == 2
    assert "--device='cuda:3' but this machine has 1 CUDA device" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "other").exists()


def test_a_refused_demo_with_overwrite_deletes_no_run(tmp_path):
    """demo OUT --overwrite in a work folder holding the user's own data/ (not generated) and a run named generic/:
    the demo deleted generic's checkpoint, log and config first, and only then refused the data ('holds a dataset the
    generator did not write'): refused, yet the user's run was gone. Nothing is deleted before the data is made."""
    own = tmp_path / "work" / "data" / "id000"
    own.mkdir(parents=True)
    (own / "transforms_train.json").write_text(json.dumps({"frames": []}))
    run = tmp_path / "work" / "generic"
    run.mkdir()
    for name in ("checkpoint.pt", "log.jsonl", "config.yaml"):
        (run / name).write_text(f"the user's {name}")
    with pytest.raises(FileExistsError, match="did not write"):
        run_demo(tmp_path / "work", minutes=0.05, n_identities=2, n_frames=6, size=16, config="tiny", overwrite=True)
    for name in ("checkpoint.pt", "log.jsonl", "config.yaml"):
        assert (run / name).read_text() == f"the user's {name}"


@pytest.mark.parametrize("command, option, value", [
    ("demo", "--frames", "0"), ("demo", "--frames", "1"), ("demo", "--identities", "1"), ("demo", "--size", "3"), ("demo", "--seed", "-1"),
    ("demo", "--minutes", "0"), ("synth", "--frames", "0"), ("synth", "--identities", "0"), ("synth", "--size", "3"),
    ("synth", "--seed", "-1"), ("synth", "--val-fraction", "2"), ("synth", "--novel-frames", "-1"),
    ("synth", "--expression-style", "1.5")])
def test_demo_and_synth_name_the_option_typed_for_a_bad_value(tmp_path, capsys, command, option, value):
    """demo --frames 0 was refused as 'n_frames must be >= 1' (the library's argument, which the user never typed),
    synth --val-fraction 2 as 'val_fraction must be in [0, 1)'. Each refusal names the option, before any work,
    and before anything is drawn (the progress display printed a blank line, or synth's empty bar, above it)."""
    from fastminerf.cli import main

    assert main([command, str(tmp_path / "out"), option, value]) == 2
    out, err = capsys.readouterr()
    assert out == "", out
    err = " ".join(err.split())
    assert f"error: {option} " in err, err
    assert not (tmp_path / "out").exists()


def test_a_demo_of_one_frame_a_head_is_refused_before_any_work(tmp_path):
    """demo --frames 1 generated heads with no val frame, trained and personalised for its whole budget (minutes),
    rendered the video, and only then failed at the evaluation: 'identity 'id000' has no split 'val''. One frame a
    head cannot give both a train and a val frame: refused first, naming the minimum."""
    with pytest.raises(ValueError, match="at least 2 frames"):
        run_demo(tmp_path / "demo", n_identities=2, n_frames=1, size=16, config="tiny", minutes=0.05)
    assert not (tmp_path / "demo").exists()


def test_a_demo_whose_budget_went_on_generation_still_trains_its_generic_model(tmp_path, monkeypatch):
    """On a busy machine generation can spend the demo's budget, and the training clock counts the setup (the
    occupancy carving): `make demo` under load trained its generic model 0 of 9800 steps ('its 2.8 s limit
    reached') and printed the scores of an untrained model, as if they were the demo's result. The generic model
    now trains at least MIN_TRAIN_STEPS steps whatever the clock says."""
    import fastminerf.demo as demo

    monkeypatch.setattr(demo, "MIN_TRAIN_S", 1e-6)  # the setup alone outlasts the least time the budget leaves
    res = run_demo(tmp_path / "demo", minutes=0.01, n_identities=2, n_frames=6, size=16, config="tiny")
    assert load_run(res.generic_run)[2]["step"] >= demo.MIN_TRAIN_STEPS > 0
