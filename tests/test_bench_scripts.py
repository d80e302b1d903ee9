"""Every benchmark script's output options: ``--out DIR`` (default ``benchmarks/results``, the committed record the
README's tables come from) on each, and the kernel scripts' quick runs writing their JSON there and nowhere else."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from benchmarks import common

BENCH = Path(common.__file__).resolve().parent
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in ("__init__", "common", "report"))


def _record() -> dict:
    return {p.name: p.stat().st_mtime_ns for p in common.RESULTS.iterdir()}


def test_the_scripts_are_all_found():
    assert len(SCRIPTS) >= 16 and {"kernels", "marcher", "speech", "prepare_speed"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_takes_out_dir(script, capsys):
    mod = importlib.import_module(f"benchmarks.{script}")
    with pytest.raises(SystemExit) as stop:
        mod.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "--out DIR" in text and "benchmarks/results" in text, text


@pytest.mark.parametrize("script", ["render_speed", "pose_gap", "speech", "transfer_poses"])
def test_every_script_of_a_trained_run_takes_the_device(script, capsys):
    """The scripts that load a run the user gives render it where render and eval would (--device, default auto),
    not on the CPU whatever the machine has."""
    mod = importlib.import_module(f"benchmarks.{script}")
    with pytest.raises(SystemExit):
        mod.main(["--help"])
    assert "--device auto|cpu|cuda|cuda:N" in capsys.readouterr().out


@pytest.mark.parametrize("script, section", [("composite", "composite"), ("mlp_head", "mlp_head"),
                                             ("marcher", "marcher")])
def test_kernel_scripts_quick_write_into_out(script, section, tmp_path):
    before = _record()
    mod = importlib.import_module(f"benchmarks.{script}")
    mod.main(["--quick", "--out", str(tmp_path / "o")])
    result = json.loads((tmp_path / "o" / f"{script}_quick.json").read_text())
    assert {"cpu", "cores", "torch", "python", "git_commit"} <= set(result["machine"])
    assert result["quick"] is True and "summary" in result[section]
    assert _record() == before  # the committed record is untouched


def test_record_name_keeps_smoke_and_subset_runs_off_the_record(tmp_path, monkeypatch):
    import argparse

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default=None)
    common.add_out(ap)

    def name(*argv, smoke=False):
        return common.record_name(ap, ap.parse_args(list(argv)), "bench", ("steps", "seeds"), smoke)

    assert name() == "bench" and name("--seeds", "0", "1") == "bench" and name("--threads", "1") == "bench"
    assert name("--steps", "4") == name("--seeds", "0") == name(smoke=True) == "bench_quick"
    assert name("--steps", "4", "--out", str(tmp_path / "scratch")) == "bench"  # not the record's folder
    assert name("--steps", "4", "--name", "bench") == "bench"  # deliberately
    assert name("--name", "variant", smoke=True) == "variant_quick"


def test_a_run_with_other_settings_does_not_replace_the_record(tmp_path, monkeypatch):
    """A benchmark run with --set KEY=VALUE (another conditioning, another learning rate) wrote the record's JSON, the
    file the README's tables are generated from (report.py), as if it were the record's settings: such a run departs
    from the record like a subset run, and writes *_quick.json unless --name says where."""
    import argparse

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    common.add_overrides(ap, "the preset", "bench")
    common.add_out(ap)

    def name(*argv):
        return common.record_name(ap, ap.parse_args(list(argv)), "bench", ("steps",))

    assert name() == "bench"
    assert name("--set", "train.lr=0.02") == "bench_quick"
    assert name("--set", "train.lr=0.02", "--name", "bench_lr") == "bench_lr"
    assert name("--set", "train.lr=0.02", "--out", str(tmp_path / "scratch")) == "bench"  # not the record's folder


def test_a_subset_run_does_not_replace_the_committed_record(tmp_path, monkeypatch):
    """conditioning_equal_steps.py --steps 2 (a smoke run) wrote conditioning_equal_steps_2ids.json, the record's
    file, into benchmarks/results."""
    import benchmarks.conditioning_equal_steps as cond

    record = tmp_path / "results"
    monkeypatch.setattr(common, "RESULTS", record)
    argv = ["--seeds", "0", "--styles", "0", "--steps", "2", "--size", "16", "--frames", "8", "--eval-frames", "1",
            "--identities", "2", "--threads", "1", "--work", str(tmp_path / "w")]
    assert cond.main(argv) == 0
    assert sorted(p.name for p in record.iterdir()) == ["conditioning_equal_steps_2ids_quick.json"]
    result = json.loads((record / "conditioning_equal_steps_2ids_quick.json").read_text())
    assert result["settings"]["steps"] == 2 and "git_commit" in result["machine"]
    assert cond.main(argv + ["--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "conditioning_equal_steps_2ids.json").is_file()


def test_speech_with_nothing_to_measure_says_so(tmp_path, capsys):
    """speech.py --seeds --no-real trained nothing, wrote nothing, printed nothing and exited 0."""
    from benchmarks import speech

    with pytest.raises(SystemExit) as stop:
        speech.main(["--seeds", "--no-real", "--out", str(tmp_path), "--work", str(tmp_path / "w")])
    assert stop.value.code == 2
    assert "nothing to measure" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script, argv", [("prepare_speed", []), ("speech", ["--seeds", "--work", "W"]),
                                          ("real_clips", ["--work", "W"])])
def test_missing_real_clips_name_the_folder_and_the_variable(script, argv, tmp_path, monkeypatch, capsys):
    """Without the real clips prepare_speed.py listed the missing paths without saying how to point it at the clips,
    speech.py skipped them silently (wrote a result without its real part, or nothing at all) and real_clips.py
    (and the scripts that prepare through it) stopped on a FileNotFoundError traceback."""
    mod = importlib.import_module(f"benchmarks.{script}")
    monkeypatch.setattr(mod, "REAL", tmp_path / "no_clips_here")
    argv = [str(tmp_path / "w") if a == "W" else a for a in argv]
    assert mod.main(argv + ["--out", str(tmp_path / "o")]) == 1
    text = capsys.readouterr()
    assert "FASTMINERF_REAL_DATA" in text.out + text.err and "no_clips_here" in text.out + text.err
    assert not (tmp_path / "o").exists()


def test_speech_says_which_identities_it_left_out(tmp_path, capsys):
    """speech_clips returns the identities it leaves out (no audio.wav) beside the clips, and speech.py dropped
    that list: a clip without sound was missing from the scores without a word, in the output or in the JSON."""
    from benchmarks import speech
    from fastminerf.data.synth import generate

    root = tmp_path / "w" / "synth0"  # the script generates this folder only when it lacks synth.json
    dirs = generate(root, n_identities=3, n_frames=40, size=16, novel_frames=2, val_fraction=0.25, seed=0)
    (dirs[0] / "audio.wav").unlink()
    assert speech.main(["--seeds", "0", "--no-real", "--out", str(tmp_path), "--work", str(tmp_path / "w"),
                        "--set", "steps=2"]) == 0
    out = capsys.readouterr().out
    assert f"{dirs[0].name}: no audio.wav" in out, out
    (written,) = tmp_path.glob("speech*.json")
    assert json.loads(written.read_text())["synth"]["0"]["skipped"] == [f"{dirs[0].name}: no audio.wav"]


@pytest.mark.parametrize("kind", ["identities", "backbone"])
def test_a_full_run_with_other_settings_does_not_replace_the_record(kind, tmp_path, monkeypatch):
    """fastminerf bench identities --full without the record's --seeds 0 1 2 (or with --counts, or --gpu) wrote
    benchmarks/results/identities.json, the README table's record of three seeds, with one seed's numbers (backbone
    --full --gpu likewise): a full run whose settings are not the record's writes <kind>_quick there, as the other
    scripts' subset runs do; the record's own settings still write the record, and another --out keeps the name."""
    mod = importlib.import_module(f"benchmarks.{kind}")
    record = json.loads((common.RESULTS / f"{kind}.json").read_text())
    assert {k: record["settings"][k] for k in mod.RECORD} == mod.RECORD  # the committed record's settings
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    plot = lambda result, path: Path(path).write_bytes(b"png")  # noqa: E731
    key = next(iter(mod.RECORD))
    other = {**record, "settings": {**record["settings"], key: "other"}}
    for result, name in ((other, f"{kind}_quick"), (record, kind)):
        assert common.write_with_plot(kind, "full", result, common.RESULTS, plot, mod.RECORD) == name
        assert (common.RESULTS / f"{name}.json").is_file() and (common.RESULTS / f"{name}.png").is_file()
    assert common.write_with_plot(kind, "full", other, tmp_path / "o", plot, mod.RECORD) == kind


@pytest.mark.parametrize("kind", ["identities", "backbone"])
def test_a_full_run_on_a_gpu_does_not_replace_the_cpu_record(kind, tmp_path, monkeypatch):
    """fastminerf bench identities --full on a GPU machine trained the record's cpu preset there (train.device auto)
    and wrote benchmarks/results/identities.json, the README's CPU numbers, with the GPU's: the record says the
    device its runs trained on, and a full run on another one writes <kind>_quick."""
    mod = importlib.import_module(f"benchmarks.{kind}")
    record = json.loads((common.RESULTS / f"{kind}.json").read_text())
    assert mod.RECORD["device"] == "cpu" == record["settings"]["device"] and record["machine"]["gpu"] is None
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    plot = lambda result, path: Path(path).write_bytes(b"png")  # noqa: E731
    on_gpu = {**record, "settings": {**record["settings"], "device": "cuda"}}
    assert common.write_with_plot(kind, "full", on_gpu, common.RESULTS, plot, mod.RECORD) == f"{kind}_quick"


def test_the_training_benchmarks_record_the_device_their_runs_trained_on(tmp_path, monkeypatch, fake_cuda):
    import torch

    import fastminerf
    from fastminerf.cli import main

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "simulated GPU")  # the results' machine record
    for name in ("train", "personalize"):  # the real runs, on the CPU (train.device auto would take the GPU)
        real = getattr(fastminerf, name)

        def on_the_cpu(*args, real=real, **kwargs):
            with pytest.MonkeyPatch.context() as cpu_only:
                cpu_only.setattr(torch.cuda, "is_available", lambda: False)
                cpu_only.setattr(torch.cuda, "device_count", lambda: 0)
                return real(*args, **kwargs)

        monkeypatch.setattr(fastminerf, name, on_the_cpu)
    assert main(["bench", "identities", "--tiny", "--counts", "1", "--out", str(tmp_path), "--work",
                 str(tmp_path / "w")]) == 0
    assert json.loads((tmp_path / "identities_tiny.json").read_text())["settings"]["device"] == "cuda"


def test_a_script_run_on_a_gpu_does_not_replace_the_cpu_record(tmp_path, monkeypatch, fake_cuda):
    """The committed records are the CPU's (the README's tables): render_speed.py (and the other scripts) run on a
    GPU machine with the record's settings wrote render_speed.json with the GPU's times. A run on another device
    than the CPU writes <name>_quick into benchmarks/results, as a subset run does; --device cpu writes the record."""
    import argparse

    import torch

    from benchmarks.render_speed import main as speed_main
    from fastminerf.config import load_config
    from fastminerf.data.synth import generate
    from fastminerf.train import train

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default=None)
    common.add_out(ap)
    args = ap.parse_args([])
    assert common.record_name(ap, args, "x", device="cuda:0") == "x_quick"
    assert common.record_name(ap, args, "x", device=torch.device("cpu")) == "x"
    assert common.record_name(ap, ap.parse_args(["--out", str(tmp_path / "o")]), "x", device="cuda") == "x"

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "simulated GPU")  # the results' machine record
    work = tmp_path / "w"
    dirs = generate(work / "data", n_identities=2, n_frames=6, size=16, seed=0, novel_frames=1, val_fraction=0.25)
    train(load_config("tiny", ["train.steps=2", "train.device=cpu"]), dirs, work / "run")
    for d in dirs:  # the record's split (test): synth makes none
        (d / "transforms_test.json").write_text((d / "transforms_val.json").read_text())
    speed = ["--work", str(work)]  # the record's settings
    assert speed_main(speed) == 0 and speed_main(speed + ["--device", "cpu"]) == 0
    written = json.loads((tmp_path / "results" / "render_speed_quick.json").read_text())
    assert written["settings"]["device"] == "cuda"
    assert json.loads((tmp_path / "results" / "render_speed.json").read_text())["settings"]["device"] == "cpu"


def test_the_readme_names_the_scripts_that_take_no_out_dir(capsys):
    """README (Benchmarks) said 'Every script in benchmarks/ takes --out DIR', but report.py takes --readme (it reads
    benchmarks/results and rewrites the README's tables). The sentence names each script without --out DIR as one."""
    import re

    readme = " ".join((BENCH.parent / "README.md").read_text(encoding="utf-8").split())
    claim = re.search(r"Every script in `benchmarks/`.*?takes `--out DIR`", readme)
    assert claim, "README's Benchmarks no longer says which scripts take --out DIR"
    for script in sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in ("__init__", "common")):
        with pytest.raises(SystemExit):
            importlib.import_module(f"benchmarks.{script}").main(["--help"])
        if "--out DIR" not in capsys.readouterr().out:
            assert f"`{script}.py`" in claim.group(0), script


def _stand_ins(cond, monkeypatch) -> None:
    """conditioning_equal_steps.py with stand-ins for its data, training and scoring (every score 20 dB): for tests
    of where its result goes and what it prints."""

    def generate(data, **settings):
        (data / "id000").mkdir(parents=True, exist_ok=True)
        (data / "synth.json").write_text(json.dumps({"settings": settings}))

    monkeypatch.setattr(cond, "generate", generate)
    monkeypatch.setattr(cond, "train", lambda cfg, ids, run: None)
    monkeypatch.setattr(cond, "load_run", lambda run, device=None: (None, None, None))
    monkeypatch.setattr(cond, "evaluate", lambda model, ids, split, frames: dict(mean_psnr=20.0, per_identity={}))


def test_a_run_of_other_novel_poses_does_not_replace_the_committed_record(tmp_path, monkeypatch):
    """conditioning_equal_steps.py --novel-poses train (the README's command for the trainposes table), run with the
    record's other settings and no --name, wrote conditioning_equal_steps.json, the record of novel frames with their
    own head motion, with numbers of another experiment. The training and scoring are stand-ins: only the file the
    result goes to is tested."""
    import benchmarks.conditioning_equal_steps as cond

    record = tmp_path / "results"
    monkeypatch.setattr(common, "RESULTS", record)

    _stand_ins(cond, monkeypatch)
    assert cond.main(["--novel-poses", "train", "--work", str(tmp_path / "w")]) == 0
    assert sorted(p.name for p in record.iterdir()) == ["conditioning_equal_steps_quick.json"]
    assert cond.main(["--novel-poses", "train", "--name", "conditioning_equal_steps_trainposes",
                      "--work", str(tmp_path / "w")]) == 0
    assert (record / "conditioning_equal_steps_trainposes.json").is_file()


def test_a_run_of_other_seeds_does_not_replace_the_novel_vs_identities_record(tmp_path, monkeypatch):
    """novel_vs_identities.py with no options (its default seeds 0 1) wrote novel_vs_identities.json over the record
    of seeds 0 1 2 3 (the command report.py cites): the seeds were not among the options record_name checks. A run of
    other seeds (0 1 here) writes *_quick.json; the cited command writes the record. The training is a stand-in: only the file
    the result goes to is tested."""
    import benchmarks.novel_vs_identities as novel
    from benchmarks import report

    record = tmp_path / "results"
    monkeypatch.setattr(common, "RESULTS", record)

    class Now:  # the seeds' processes, run here (the stand-in is not seen by a worker process)
        def __init__(self, max_workers=None):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def submit(self, fn, *args):
            import concurrent.futures

            done = concurrent.futures.Future()
            done.set_result(fn(*args))
            return done

    def measure(seed, counts, *args, say=print):
        return [dict(seed=seed, n=n, val_psnr=30.0, novel_psnr=20.0 + n, novel_psnr_panel=20.0 + n,
                     novel_psnr_first=20.0 + n) for n in counts]

    monkeypatch.setattr(novel, "ProcessPoolExecutor", Now)
    monkeypatch.setattr(novel, "measure", measure)
    assert novel.main(["--seeds", "0", "1", "--work", str(tmp_path / "w")]) == 0  # the old default
    assert sorted(p.name for p in record.iterdir()) == ["novel_vs_identities_quick.json"]
    cited = report.novel_vs_identities_table(report._load("novel_vs_identities"))
    command = cited.split("(`python benchmarks/novel_vs_identities.py")[1].split("`)")[0].split()
    assert novel.main(command + ["--work", str(tmp_path / "w")]) == 0
    assert json.loads((record / "novel_vs_identities.json").read_text())["settings"]["seeds"] == [0, 1, 2, 3]


def test_conditioning_equal_steps_of_one_seed_gives_no_nan_standard_error(tmp_path, monkeypatch, capsys):
    """conditioning_equal_steps.py --seeds 0 printed 'multiplicative - concat +0.00 +- nan dB (standard error over 1
    seeds; ...)': one seed has no standard error, which the line now says in words. The training and scoring are
    stand-ins: only the summary line is tested."""
    import benchmarks.conditioning_equal_steps as cond

    _stand_ins(cond, monkeypatch)
    assert cond.main(["--seeds", "0", "--styles", "0", "--work", str(tmp_path / "w"), "--out", str(tmp_path)]) == 0
    line = " ".join(capsys.readouterr().out.split()).split("style 0: ")[1]
    assert "nan" not in line and "1 seeds" not in line, line
    assert "novel multiplicative - concat +0.00 dB (one seed: no standard error; product term wins 0 of 1); val +0.00 dB" in line
    assert cond.main(["--seeds", "0", "1", "--styles", "0", "--work", str(tmp_path / "w"), "--out", str(tmp_path)]) == 0
    assert "+0.00 +- 0.00 dB (standard error over 2 seeds; product term wins 0 of 2); val +0.00 +- 0.00 dB" in " ".join(
        capsys.readouterr().out.split())


def test_prepare_truth_quick_measures_prepare_against_the_heads_truth(tmp_path, capsys):
    """prepare_truth.py --quick: procedural heads made into videos, prepared, and compared frame by frame with their
    known poses and expressions; its JSON goes to --out only (prepare_truth_quick.json), the record untouched. On the
    first head (the one that moves most) the recovered rotation follows the truth without a frame offset or a flipped
    axis, the jaw's coefficient is explained best at offset 0, and the written cameras put the landmarks where they were
    tracked."""
    pytest.importorskip("mediapipe")
    from benchmarks import prepare_truth

    before = _record()
    assert prepare_truth.main(["--quick", "--out", str(tmp_path / "o")]) == 0
    assert _record() == before
    result = json.loads((tmp_path / "o" / "prepare_truth_quick.json").read_text())
    assert {"cpu", "git_commit", "mediapipe"} <= set(result["machine"]) and result["quick"] is True
    assert result["sizes"]["frames"] == prepare_truth.QUICK["frames"]
    head = result["identities"]["id000"]
    assert head["frames"] == head["frames_in_video"] == prepare_truth.QUICK["frames"]
    rot = head["rotation"]
    assert rot["best_lag"] == 0 and rot["aligned_err_deg"]["median"] < 0.5 * rot["true_motion_deg"]["max"]
    assert all(axis["slope"] > 0 for axis in (rot["axes"]["yaw"], rot["axes"]["pitch"]))
    lag = head["expression_lag_r2"]["jaw_open"]
    assert max(lag, key=lambda k: lag[k]) == "0" and lag["0"] > 0.5
    assert head["reprojection"]["through_the_files"]["median_px"] < 1.5
    assert "wrote" in capsys.readouterr().out


def test_transfer_truth_scores_both_modes_against_the_heads_truth(tmp_path):
    """benchmarks/transfer_truth.py at a tiny size: a target head driven by another's expressions in both transfer
    modes, scored against the true head making what each mode claims (its truth renderer gives the target's stored
    training frames back), with the no-transfer baseline; the JSON goes into --out and nowhere else."""
    import benchmarks.transfer_truth as truth

    before = _record()
    argv = ["--identities", "2", "--frames", "8", "--size", "16", "--steps", "4", "--config", "tiny", "--target",
            "id001", "--driver", "id000", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert truth.main(argv) == 0
    result = json.loads((tmp_path / "o" / "transfer_truth.json").read_text())
    assert {"cpu", "torch", "python", "git_commit"} <= set(result["machine"])
    assert result["settings"]["size"] == 16 and result["settings"]["steps"] == 4
    r = result["result"]
    assert r["target"] == "id001" and r["driver"] == "id000" and r["frames"] == 7
    assert r["truth_error"] <= 1.5 / 255
    for mode in ("absolute", "delta"):
        s = r["scores"][mode]["all"]
        assert {"transfer", "none", "truth_change_db"} <= set(s) and set(s["transfer"]) == {"face", "frame"}
        assert -1.0 <= s["change_correlation"] <= 1.0
    assert _record() == before  # the committed record is untouched
