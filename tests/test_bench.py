"""The benchmark command's quick path: ``fastminerf bench ... --tiny`` writes JSON of the documented shape (the
numbers of a seconds-long run mean nothing; their consistency is checked)."""
from __future__ import annotations

import json

import pytest

from fastminerf.cli import main

SMALL_CPU_RUNS = ["--set", "sampler.batch_size=64", "--set", "model.grid_resolution=16", "--set", "model.render_steps=16",
                  "--set", "model.eval_render_steps=16"]
"""--set overrides of a benchmark's cpu preset runs for a test of what the script records, not of the runs' quality:
1,024-ray batches, a 48-cell occupancy grid and 128 / 256 marching steps cost most of its seconds."""


def test_bench_identities_tiny_writes_the_documented_json(tmp_path):
    assert main(["bench", "identities", "--tiny", "--out", str(tmp_path), "--work", str(tmp_path / "w")]) == 0
    result = json.loads((tmp_path / "identities_tiny.json").read_text())
    assert (tmp_path / "identities_tiny.png").stat().st_size > 0
    assert {"cpu", "cores", "torch", "git_commit"} <= set(result["machine"])
    assert result["settings"]["counts"] == [1, 2] and result["data"]["seed"] == 0
    rows = result["rows"]
    assert [r["n"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("target_psnr", "generic_seconds", "single_seconds_total", "novel_psnr", "generic_steps",
                    "single_steps_total", "generic_reached", "ratio", "ratio_steps", "load_start", "personalize_seconds"):
            assert key in r, key
        assert len(r["single_seconds"]) == r["n"]
        assert abs(r["single_seconds_total"] - sum(r["single_seconds"])) < 1e-9
        gen = result["runs"][f"generic_{r['n']}"]
        # The recorded time is the training clock at the evaluation that reached the target (or the cap).
        point = next((p for p in gen["curve"] if p["psnr"] >= r["target_psnr"]), None)
        assert r["generic_reached"] == (point is not None)
        if point is not None:
            assert (r["generic_seconds"], r["generic_steps"]) == (point["seconds"], point["step"])
        else:
            assert r["generic_steps"] == r["generic_cap_steps"]
    # Identity k's single-identity model is trained once and reused for every N.
    assert rows[1]["single_seconds"][0] == rows[0]["single_seconds"][0]


def test_bench_identities_over_seeds_averages_the_rows(tmp_path):
    argv = ["bench", "identities", "--tiny", "--counts", "1", "--work", str(tmp_path / "w")]
    for seeds, out in (("0", "a"), ("1", "b"), ("0 1", "ab")):
        assert main(argv + ["--out", str(tmp_path / out), "--seeds", *seeds.split()]) == 0
    a, b, ab = (json.loads((tmp_path / out / "identities_tiny.json").read_text()) for out in ("a", "b", "ab"))
    assert ab["settings"]["seeds"] == [0, 1] and a["data"]["identities"] == b["data"]["identities"]
    ra, rb, row = a["rows"][0], b["rows"][0], ab["rows"][0]
    # Steps and PSNR are deterministic on the CPU: each seed's row is the one-seed run's, the row their mean.
    assert row["novel_psnr_by_seed"] == [ra["novel_psnr"], rb["novel_psnr"]]
    assert row["generic_steps_by_seed"] == [ra["generic_steps"], rb["generic_steps"]]
    assert abs(row["novel_psnr"] - (ra["novel_psnr"] + rb["novel_psnr"]) / 2) < 1e-9
    assert abs(row["novel_psnr_std"] - abs(ra["novel_psnr"] - rb["novel_psnr"]) / 2) < 1e-9
    assert ra["novel_psnr"] != rb["novel_psnr"]  # other people, other initialisation
    assert row["generic_reached"] == (ra["generic_reached"] and rb["generic_reached"])
    assert set(ab["runs"]) == {"seed0", "seed1"} and "novel_psnr_grows_1_to_8" not in ab["targets"]


def test_bench_backbone_tiny_writes_the_documented_json(tmp_path):
    assert main(["bench", "backbone", "--tiny", "--out", str(tmp_path), "--work", str(tmp_path / "w")]) == 0
    r = json.loads((tmp_path / "backbone_tiny.json").read_text())
    assert (tmp_path / "backbone_tiny.png").stat().st_size > 0
    for key in ("machine", "nerface_final_psnr", "nerface_seconds", "fast_seconds_to_nerface_final_psnr", "speedup",
                "equal_time", "nerface", "fast"):
        assert key in r, key
    assert r["nerface_final_psnr"] == r["nerface"]["curve"][-1]["psnr"]
    assert r["resolved_config"]["nerface"]["model"]["backbone"] == "nerface"
    assert r["resolved_config"]["fast"]["model"]["backbone"] == "fast"
    if r["fast_seconds_to_nerface_final_psnr"] is not None:
        assert abs(r["speedup"] - r["nerface_seconds"] / r["fast_seconds_to_nerface_final_psnr"]) < 1e-9
    else:
        assert r["speedup"] is None and r["fast_final_psnr"] < r["nerface_final_psnr"]


def test_novel_vs_identities_writes_rows_per_seed_and_their_mean(tmp_path):
    from benchmarks.novel_vs_identities import main as novel_main

    assert novel_main(["--config", "tiny", "--steps", "4", "--counts", "1", "2", "--seeds", "0", "1", "--size", "16",
                       "--frames", "8", "--panel", "2", "--work", str(tmp_path / "w"), "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "novel_vs_identities.json").read_text())
    assert [(row["seed"], row["n"]) for row in r["rows"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(row["steps"] == 4 for row in r["rows"])
    # The panel (id000, id001) is evaluated at every N: two single-person models at N=1, one model of both at N=2.
    assert [row["models"] for row in r["rows"]] == [2, 1, 2, 1]
    for row in r["rows"]:
        assert sorted(row["novel_per_identity"]) == ["id000", "id001"]
        per_id = row["novel_per_identity"]
        assert abs(row["novel_psnr_panel"] - (per_id["id000"] + per_id["id001"]) / 2) < 1e-9
        assert row["novel_psnr_first"] == per_id["id000"]
    for m in r["mean"]:
        per_seed = [row["novel_psnr_panel"] for row in r["rows"] if row["n"] == m["n"]]
        assert abs(m["novel_psnr_panel"] - sum(per_seed) / 2) < 1e-9
    assert r["targets"]["novel_psnr_panel"]["met"] == (r["mean"][1]["novel_psnr_panel"] > r["mean"][0]["novel_psnr_panel"])


def test_novel_vs_identities_panel_groups_cover_the_panel_once():
    from benchmarks.novel_vs_identities import panel_groups

    assert panel_groups(1, 4) == [[0], [1], [2], [3]]
    assert panel_groups(2, 4) == [[0, 1], [2, 3]]
    assert panel_groups(4, 4) == [[0, 1, 2, 3]]
    assert panel_groups(8, 4) == [list(range(8))]
    with pytest.raises(ValueError, match="panel of 4"):
        panel_groups(3, 4)


def test_render_speed_times_every_setting_on_the_same_frames(tmp_path):
    """benchmarks/render_speed.py on a tiny trained model: one row per setting, staged pruning renders the same image
    (it keeps the same samples), and the 128-step lattice takes samples in proportion to its steps."""
    from benchmarks.render_speed import VARIANTS
    from benchmarks.render_speed import main as speed_main
    from fastminerf.config import load_config
    from fastminerf.data.synth import generate
    from fastminerf.train import train

    work = tmp_path / "w"
    dirs = generate(work / "data", n_identities=2, n_frames=6, size=16, seed=0, novel_frames=1)
    train(load_config("tiny", ["train.steps=30"]), dirs, work / "run")
    assert speed_main(["--work", str(work), "--split", "val", "--frames", "1", "--threads", "1", "--repeats", "1",
                       "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "render_speed.json").read_text())
    rows = {row["variant"]: row for row in r["rows"]}
    assert list(rows) == list(VARIANTS) and r["settings"]["frames"] == 2 and r["settings"]["size"] == [16, 16]
    steps = r["settings"]["eval_render_steps"] or r["settings"]["render_steps"]
    assert rows["preset"]["speedup"] == 1.0 and rows["preset"]["psnr_delta"] == 0.0
    assert abs(rows["staged"]["psnr_delta"]) < 1e-3
    ratio = rows["128 steps"]["samples_per_ray"] / rows["preset"]["samples_per_ray"]
    assert abs(ratio / (128 / steps) - 1.0) < 0.3, (ratio, steps)
    for row in r["rows"]:
        assert row["seconds_per_frame"] > 0 and abs(row["rays_per_second"] * row["seconds_per_frame"] - 256) < 1e-6


def test_pose_gap_scores_every_held_out_frame_against_its_pose_gap(tmp_path):
    """benchmarks/pose_gap.py on a tiny trained model: one record per held-out frame, with the frame's own PSNR and
    its angle to the nearest training pose; bins and rank correlations summarise them."""
    import numpy as np

    from benchmarks.pose_gap import main as gap_main
    from benchmarks.pose_gap import spearman
    from fastminerf.config import load_config
    from fastminerf.data import load_dataset
    from fastminerf.data.synth import generate
    from fastminerf.metrics import psnr, rotation_gap_deg
    from fastminerf.render import render_frame
    from fastminerf.train import load_run, train

    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # ties share their mean rank (scipy's)
    dirs = generate(tmp_path / "data", n_identities=2, n_frames=8, size=16, seed=0, novel_frames=1, val_fraction=0.25)
    train(load_config("tiny", ["train.steps=20"]), dirs, tmp_path / "run")
    assert gap_main(["--run", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--splits", "val",
                     "--threads", "1", "--out", str(tmp_path / "res")]) == 0
    r = json.loads((tmp_path / "res" / "pose_gap.json").read_text())
    assert (tmp_path / "res" / "pose_gap.png").stat().st_size > 0
    data = load_dataset(dirs, splits=("train", "val"))
    val, tr = data.table("val"), data.table("train")
    assert len(r["frames"]) == len(val) == r["summary"]["frames"]
    _, model, _ = load_run(tmp_path / "run")
    first = r["frames"][0]
    i = data.identities.index(first["clip"])
    index = int(val.frames_of(i)[0])
    truth = data.image("val", index).astype(np.float32) / 255.0
    assert first["psnr"] == pytest.approx(float(psnr(render_frame(model.eval(), data, "val", index), truth)), abs=1e-4)
    expected = rotation_gap_deg(val.c2w[[index], :3, :3], tr.c2w[tr.frames_of(i)][:, :3, :3])[0]
    assert first["pose_gap_deg"] == pytest.approx(float(expected))
    assert sum(b["frames"] for b in r["summary"]["bins"]) == len(val)



def test_kernels_gather_bound_times_the_gather_not_an_allocation(monkeypatch):
    """benchmarks/kernels.py's gather bound (the rows the hash encoding reads) must time the gather alone: a fresh
    (L * N * 8, F) tensor a call made the "lower bound" slower than the native forward reading the same rows
    (kernels.json: gather 0.38 s, native forward 0.08 s, so "native fwd+bwd / gather bound" 0.53x)."""
    from torch.profiler import ProfilerActivity, profile

    import benchmarks.kernels as kernels

    timed = []
    monkeypatch.setattr(kernels, "timeit", lambda fn, repeats=5, warmup=1, sync=None: timed.append(fn) or 1.0)
    enc = kernels.bench_hash_encoding(quick=True)
    gather = timed[2]  # native fwd+bwd, native fwd, gather bound, reference
    gather()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        gather()
    allocated = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)
    gathered_bytes = enc["sizes"]["gathered_rows"] * enc["sizes"]["n_features_per_level"] * 4
    assert allocated < gathered_bytes / 100, (allocated, gathered_bytes)


def test_report_check_mode_leaves_the_readme_and_names_stale_blocks(tmp_path, capsys):
    """benchmarks/report.py took no arguments: ``--help`` (or any option) rewrote README.md. ``--check`` compares the
    generated blocks with a README without writing it and names the stale ones; ``--help`` writes nothing."""
    import shutil

    from benchmarks import report

    readme = tmp_path / "README.md"
    shutil.copy(report.ROOT / "README.md", readme)
    with pytest.raises(SystemExit) as exc:
        report.main(["--help", "--readme", str(readme)])
    assert exc.value.code == 0
    text = readme.read_text()
    stale = text.replace("<!-- BEGIN kernels (generated by benchmarks/report.py) -->\n",
                         "<!-- BEGIN kernels (generated by benchmarks/report.py) -->\nan old line\n", 1)
    assert stale != text
    readme.write_text(stale)
    capsys.readouterr()
    assert report.main(["--check", "--readme", str(readme)]) == 1
    assert readme.read_text() == stale  # --check never writes
    out = capsys.readouterr()
    assert "kernels" in out.out + out.err and "train_targets" not in out.out + out.err
    assert report.main(["--readme", str(readme)]) == 0  # the default still regenerates
    assert report.main(["--check", "--readme", str(readme)]) == 0 and readme.read_text() == text


def test_conditioning_equal_steps_records_the_data_and_threads_it_ran(tmp_path, monkeypatch):
    """benchmarks/conditioning_equal_steps.py reused a ``--work`` dataset of other sizes (only the seed and style were
    in its folder's name) while its JSON named the requested ones, and recorded the caller's torch threads, not the
    runs' ``--threads``."""
    import torch

    import benchmarks.conditioning_equal_steps as cond
    from fastminerf.data.synth import generate

    written = {}
    monkeypatch.setattr(cond, "write_result", lambda name, payload, *out_dir: written.update(name=name, payload=payload))
    generate(tmp_path / "synth_n2_s0_seed0", n_identities=2, n_frames=8, size=16, seed=0, overwrite=True)
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    try:
        assert cond.main(["--seeds", "0", "--styles", "0", "--steps", "2", "--size", "24", "--frames", "8",
                          "--eval-frames", "1", "--identities", "2", "--threads", str(threads),
                          "--work", str(tmp_path), *SMALL_CPU_RUNS]) == 0
    finally:
        torch.set_num_threads(before)
    r = written["payload"]
    used = json.loads((tmp_path / "synth_n2_s0_seed0" / "synth.json").read_text())["settings"]
    assert (used["size"], used["n_frames"]) == (r["settings"]["size"], r["settings"]["frames"]) == (24, 8)
    assert r["machine"]["torch_threads"] == r["settings"]["threads"] == threads


def test_conditioning_equal_steps_evaluates_its_runs_where_they_trained(tmp_path, monkeypatch, fake_cuda):
    """Its runs train on train.device (auto: the GPU where torch sees one) and were reloaded for evaluation with
    load_run's default, the CPU: on a GPU machine each novel and val score rendered on the CPU. They load where
    they trained."""
    import torch

    import benchmarks.conditioning_equal_steps as cond
    from fastminerf.data.synth import generate

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "simulated GPU")  # the results' machine record
    monkeypatch.setattr(cond, "write_result", lambda name, payload, *out_dir: None)
    real_train = cond.train

    def on_the_cpu(*args, **kwargs):  # the real training (train.device auto would train on the GPU)
        with pytest.MonkeyPatch.context() as cpu_only:
            cpu_only.setattr(torch.cuda, "is_available", lambda: False)
            cpu_only.setattr(torch.cuda, "device_count", lambda: 0)
            return real_train(*args, **kwargs)

    monkeypatch.setattr(cond, "train", on_the_cpu)
    generate(tmp_path / "synth_n2_s0_seed0", n_identities=2, n_frames=8, size=16, seed=0, overwrite=True)
    before = torch.get_num_threads()
    try:
        assert cond.main(["--seeds", "0", "--styles", "0", "--steps", "2", "--size", "16", "--frames", "8",
                          "--eval-frames", "1", "--identities", "2", "--threads", "1", "--work", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(before)
    assert fake_cuda.moves == [("MINeRF", torch.device("cuda"))] * len(cond.CONDITIONINGS)  # each run loaded there


def test_report_train_targets_row_names_the_budget_and_frames_of_the_json():
    """The personalisation row of the train_targets table said "30 frames" and "5 min alone" whatever the result's
    ``personalize_frames`` and ``budget_seconds`` (``--minutes``, ``--quick``)."""
    import copy

    from benchmarks import report

    result = report._load("train_targets")
    assert "| personalisation (30 frames) reaches the val PSNR of 5 min alone (" in report.train_targets_table(result)
    other = copy.deepcopy(result)
    other["budget_seconds"], other["data"]["personalize_frames"] = 15.0, 12
    assert "| personalisation (12 frames) reaches the val PSNR of 0.25 min alone (" in report.train_targets_table(other)


def test_report_tables_cite_the_command_that_made_them():
    """The novel_vs_identities, render_speed and real_personalize_05 tables cited the bare script
    (`python benchmarks/novel_vs_identities.py`) while their JSON was made with other options (four seeds where the
    script runs two, one frame a clip where it renders two, clip 05 held out where it holds out 02): a user rerunning
    the cited command got another table. Options that differ from the script's defaults are in the command."""
    from benchmarks import report

    novel = report.novel_vs_identities_table(report._load("novel_vs_identities"))
    assert "(`python benchmarks/novel_vs_identities.py`)" in novel  # its default seeds are the record's, 0 1 2 3
    speed = report.render_speed_table(report._load("render_speed"))
    assert "(`python benchmarks/render_speed.py --frames 1`)" in speed
    assert "(`python benchmarks/real_personalize.py`)" in report.real_personalize_table(report._load("real_personalize"))
    p05 = report.real_personalize_table(report._load("real_personalize_05"))
    assert "(`python benchmarks/real_personalize.py --new 05_hdtf_WDA_EdMarkey0_000`)" in p05


@pytest.mark.parametrize("script", ["backbone", "identities", "marcher", "conditioning_equal_steps"])
def test_benchmark_help_describes_it_in_whole_sentences(script, monkeypatch, capsys):
    """`python benchmarks/backbone.py --help` (and identities.py, marcher.py, conditioning_equal_steps.py) described
    the benchmark with its docstring's first line, cut mid-sentence: "... against the NeRFace backbone MI-NeRF used,
    on the same data,". The description is the docstring's first paragraph, as the other benchmarks' is."""
    import importlib
    import sys

    module = importlib.import_module(f"benchmarks.{script}")
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--help"])
    with pytest.raises(SystemExit) as exc:
        module.main()
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    description = " ".join(help_text.split("\n\n")[1].split())
    assert description == " ".join(module.__doc__.split("\n\n")[0].split())
    assert description.endswith(".")


def test_benchmark_results_are_strict_json(tmp_path):
    """benchmarks' result files were written with Python's NaN tokens where a metric had no value (a clip where
    mediapipe found no face: ``"lmd": NaN`` in real_clips_quick.json; one seed's standard error in
    conditioning_equal_steps), which jq and JavaScript refuse; fastminerf's own metrics.json writes null there."""
    from benchmarks.common import write_result

    def strict(token):
        raise ValueError(f"not strict JSON: {token}")

    path = write_result("strict", {"mean": {"psnr": 20.5, "lmd": float("nan")}, "se": [float("inf"), 1.0]}, tmp_path)
    data = json.loads(path.read_text(), parse_constant=strict)
    assert data == {"mean": {"psnr": 20.5, "lmd": None}, "se": [None, 1.0]}
    assert path.read_text().endswith("}\n")
    # ... and the README table of such a result shows the unmeasured metric as '-' instead of failing on null
    import copy

    from benchmarks import report

    result = copy.deepcopy(report._load("real_clips"))
    clip = next(iter(result["test"]))
    result["test"][clip]["lmd"] = result["test"][clip]["ear_error"] = None
    row = next(line for line in report.real_clips_table(result).splitlines() if line.startswith(f"| {clip} |"))
    assert row.split(" | ")[3:7] == [f"{result['test'][clip]['mouth_psnr']:.2f}", "-",
                                     f"{result['test'][clip]['eye_psnr']:.2f}", "-"]


@pytest.mark.parametrize("extra, message", [(["--counts", "0"], "identity counts must be at least 1, got [0]"),
                                            (["--seeds", "1", "-1"], "seeds must be whole numbers >= 0, got [1, -1]")])
def test_bench_refuses_counts_and_seeds_it_cannot_run_before_any_work(tmp_path, capsys, extra, message):
    """bench identities --counts 0 crashed with an IndexError traceback from the dataset reader after generating
    data, and --seeds -1 was refused by the generator once the benchmark had begun: both are named before any work."""
    assert main(["bench", "identities", "--tiny", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
                + extra) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("which", ["identities", "backbone"])
def test_bench_refuses_a_results_folder_that_is_a_file_before_any_work(tmp_path, capsys, which):
    """bench --out FILE ran the whole benchmark (minutes with --full) and then failed on '[Errno 17] File exists'
    when it wrote the results: the folder is checked, by name, before any work."""
    (tmp_path / "taken").write_text("a file")
    assert main(["bench", which, "--tiny", "--out", str(tmp_path / "taken"), "--work", str(tmp_path / "work")]) == 2
    assert "taken is a file: give a folder for the results" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "work").exists()


def test_the_benchmarks_of_a_trained_run_measure_where_the_cli_renders(tmp_path, fake_cuda, monkeypatch):
    """render_speed.py and pose_gap.py loaded the run with load_run's default, the CPU: on a GPU machine they timed
    and scored the CPU without a word. They take --device as render and eval do (default auto: the GPU where torch
    sees one), and the result says where it rendered."""
    import torch

    from benchmarks.pose_gap import main as gap_main
    from benchmarks.render_speed import main as speed_main
    from fastminerf.config import load_config
    from fastminerf.data.synth import generate
    from fastminerf.train import train

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "simulated GPU")  # the results' machine record
    work = tmp_path / "w"
    dirs = generate(work / "data", n_identities=2, n_frames=6, size=16, seed=0, novel_frames=1, val_fraction=0.25)
    train(load_config("tiny", ["train.steps=2", "train.device=cpu"]), dirs, work / "run")
    speed = ["--work", str(work), "--split", "val", "--frames", "1", "--threads", "1", "--repeats", "1"]
    assert speed_main(speed + ["--out", str(tmp_path / "a")]) == 0
    assert fake_cuda.moves == [("MINeRF", torch.device("cuda"))]
    assert json.loads((tmp_path / "a" / "render_speed.json").read_text())["settings"]["device"] == "cuda"
    assert speed_main(speed + ["--out", str(tmp_path / "b"), "--device", "cpu"]) == 0
    assert len(fake_cuda.moves) == 1
    assert json.loads((tmp_path / "b" / "render_speed.json").read_text())["settings"]["device"] == "cpu"
    assert gap_main(["--run", str(work / "run"), "--data", str(work / "data"), "--splits", "val", "--threads", "1",
                     "--out", str(tmp_path / "c")]) == 0
    assert fake_cuda.moves[1:] == [("MINeRF", torch.device("cuda"))]
    assert json.loads((tmp_path / "c" / "pose_gap.json").read_text())["settings"]["device"] == "cuda"


def test_bench_backbone_refuses_the_identities_options_it_does_not_use(tmp_path, capsys):
    """bench backbone --counts 4 (or --seeds 1) ran the backbone benchmark as without them, without a word: both are
    options of the identities benchmark alone, refused before any work."""
    for extra in (["--counts", "4"], ["--seeds", "1"]):
        assert main(["bench", "backbone", "--tiny", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")]
                    + extra) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert extra[0] in err and "identities" in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("which, mine", [("identities", "runs/generic_1/notes.txt"), ("backbone", "fast/notes.txt")])
def test_bench_work_refuses_a_folder_that_is_not_its_own(tmp_path, capsys, which, mine):
    """bench --work DIR removed DIR/<which>/fast, nerface or runs/<name> (shutil.rmtree) whatever they held: a user's
    own folder there was lost. A work folder that is not empty and holds no mark of the benchmark is refused, naming
    it, before any work; the benchmark's own folder (marked on its first run) is reused by a rerun."""
    own = tmp_path / "w" / which / mine
    own.parent.mkdir(parents=True)
    own.write_text("my notes")
    assert main(["bench", which, "--tiny", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")]) == 2
    assert str(tmp_path / "w" / which) in " ".join(capsys.readouterr().err.split())
    assert own.read_text() == "my notes"


def test_bench_work_says_how_to_reuse_a_work_folder_of_an_earlier_version(tmp_path, capsys):
    """--work's help promises 'a new or empty one, or an earlier bench run's', but a work folder of a version before
    today's mark (.fastminerf_bench) holds the benchmark's data and runs without it, and was refused as 'no benchmark
    work folder ... give a new or empty folder': the user's earlier work could not be reused, nor was it said how.
    Unmarked, it cannot be told from a user's folder (the benchmark removes runs there), so it is still refused, with
    the way to reuse it (the mark, made by the user, who knows the folder) named in the refusal and in the help."""
    old = tmp_path / "w" / "identities"
    (old / "data").mkdir(parents=True)
    (old / "data" / "synth.json").write_text("{}")  # what an earlier bench left there (its runs beside)
    assert main(["bench", "identities", "--tiny", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"touch {old / '.fastminerf_bench'}" in err and "earlier version" in err
    assert not (old / ".fastminerf_bench").exists()
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert ".fastminerf_bench" in " ".join(capsys.readouterr().out.split())


def test_benchmark_mains_give_the_callers_torch_thread_count_back(tmp_path, monkeypatch):
    """conditioning_equal_steps.py and pose_gap.py set torch's thread count to their --threads and left it so: called
    in-process (as the tests here call them) every later test of the session ran on that count. Their main gives the
    caller's count back, as backbone.py, identities.py and render_speed.py do, also when it stops on an error."""
    import sys

    import torch

    import benchmarks.conditioning_equal_steps as cond
    import benchmarks.pose_gap as gap

    def stop(*args, **kwargs):
        raise RuntimeError("stopped here")

    before = torch.get_num_threads()
    mine = 3 if before != 3 else 2
    torch.set_num_threads(mine)
    try:
        monkeypatch.setattr(cond, "generate", stop)
        with pytest.raises(RuntimeError, match="stopped here"):
            cond.main(["--seeds", "0", "--styles", "0", "--steps", "1", "--size", "16", "--frames", "8",
                       "--threads", "1", "--work", str(tmp_path)])
        assert torch.get_num_threads() == mine
        monkeypatch.setattr(sys.modules["fastminerf.train"], "load_run", stop)  # the module, not the function
        with pytest.raises(RuntimeError, match="stopped here"):
            gap.main(["--run", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--threads", "1",
                      "--device", "cpu", "--out", str(tmp_path / "res")])
        assert torch.get_num_threads() == mine
    finally:
        torch.set_num_threads(before)


def test_conditioning_equal_steps_trains_its_work_runs_anew_for_other_steps(tmp_path, monkeypatch):
    """Rerun on the same --work with other --steps (or --set), conditioning_equal_steps.py resumed the earlier runs:
    from a 2-step run to 4 steps (a schedule laid over 2 steps, then over 4: not a 4-step run's numbers), and with
    fewer steps than a run had it trained nothing and scored the longer run, recording both under the new --steps.
    A --work run is resumed only when it is of the very config asked for (an interrupted one); others are trained
    anew."""
    import benchmarks.conditioning_equal_steps as cond

    written = []
    monkeypatch.setattr(cond, "write_result", lambda name, payload, *out_dir: written.append(payload))
    argv = ["--seeds", "0", "--styles", "0", "--size", "16", "--frames", "8", "--eval-frames", "1", "--identities", "2",
            "--threads", "1", *SMALL_CPU_RUNS]

    def scores(steps, work):
        assert cond.main(argv + ["--steps", str(steps), "--work", str(tmp_path / work)]) == 0
        row = written[-1]["rows"][0]
        return {c: (row[c]["novel"], row[c]["val"]) for c in cond.CONDITIONINGS}

    short, fresh = scores(2, "w"), scores(4, "fresh")
    assert scores(4, "w") == fresh  # not the 2-step runs resumed
    assert scores(2, "w") == short  # not the 4-step runs scored as 2-step ones
    assert scores(2, "w") == short  # the same settings again: the same numbers


def test_novel_vs_identities_trains_its_work_runs_anew_for_other_steps(tmp_path):
    """novel_vs_identities.py keeps its runs in a --work folder that outlives it (/tmp/fastminerf_novel_vs_identities
    by default): rerun with other --steps it resumed the earlier runs (or, past them, trained nothing) and recorded
    their numbers under the new steps."""
    from benchmarks.novel_vs_identities import measure

    def scores(steps, work):
        rows = measure(0, [1], steps, tmp_path / work, "tiny", 16, 8, panel=1, say=lambda line: None)
        return rows[0]["steps"], rows[0]["novel_psnr"], rows[0]["val_psnr"]

    short, fresh = scores(2, "w"), scores(4, "fresh")
    assert scores(4, "w") == fresh
    assert scores(2, "w") == short


def test_novel_vs_identities_trains_its_work_runs_anew_on_other_frames(tmp_path):
    """Rerun on the same --work folder with other --frames (or --size), novel_vs_identities.py made the data again but
    kept the runs of the same config (benchmarks.common.fresh_run looked at the config alone), which train() then
    refused with a traceback: 'checkpoint.pt was trained on other frames'."""
    from benchmarks.novel_vs_identities import measure

    def scores(frames, work):
        rows = measure(0, [1], 2, tmp_path / work, "tiny", 16, frames, panel=1, say=lambda line: None)
        return rows[0]["steps"], rows[0]["novel_psnr"], rows[0]["val_psnr"]

    scores(8, "w")
    assert scores(10, "w") == scores(10, "fresh")
