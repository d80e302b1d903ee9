"""Resuming and personalising with data, settings or devices that changed since the checkpoint: refused naming the
file, or honoured; checkpoints written whole or not at all (tiny preset, seconds each)."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fastminerf import CheckpointError, ConfigError, DatasetError, load_config, load_run, personalize, train
from fastminerf.data.synth import generate


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_heads")
    generate(root, n_identities=4, n_frames=8, size=20, seed=3, novel_frames=1)
    return sorted(p for p in root.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def generic(heads, tmp_path_factory):
    run = tmp_path_factory.mktemp("resume_generic")
    train(load_config("tiny", ["train.steps=4"]), heads[:2], run)
    return run


def _copy(dirs, out):
    out.mkdir(parents=True, exist_ok=True)
    for d in dirs:
        shutil.copytree(d, out / d.name)
    return [out / d.name for d in dirs]


def _edit(identity_dir, edit, splits=("train",)):
    for split in splits:
        path = identity_dir / f"transforms_{split}.json"
        meta = json.loads(path.read_text())
        edit(meta)
        path.write_text(json.dumps(meta))


def _one_more_frame(meta):
    """The same clip with its last training frame shown twice (one more training frame)."""
    last = copy.deepcopy(meta["frames"][-1])
    last["frame_index"] += 1
    last["time"] += 0.04
    meta["frames"].append(last)


def test_resume_refuses_data_whose_training_frames_moved_between_identities(heads, tmp_path):
    # The same names and the same number of training frames in all, but one frame fewer for the first person and
    # one more for the second: frame code b would be trained on another person's frame.
    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=4"]), heads[:2], run)
    moved = _copy(heads[:2], tmp_path / "moved")
    _edit(moved[0], lambda m: m.update(frames=m["frames"][:-1]))
    _edit(moved[1], _one_more_frame)
    with pytest.raises(CheckpointError, match=re.escape(str(run / "checkpoint.pt")) + ".*training frames"):
        train(load_config("tiny", ["train.steps=6"]), moved, run)
    assert load_run(run)[2]["step"] == 4  # untouched


def test_resume_refuses_data_in_another_expression_space(heads, tmp_path):
    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=4"]), heads[:2], run)
    other = _copy(heads[:2], tmp_path / "other")
    for d in other:  # prepared again into a new folder: a basis of its own
        _edit(d, lambda m: m.update(expression_space="another-basis"), ("train", "val", "novel"))
    with pytest.raises(DatasetError, match="another-basis.*" + re.escape(str(run / "checkpoint.pt"))):
        train(load_config("tiny", ["train.steps=6"]), other, run)
    assert load_run(run)[2]["step"] == 4


def test_resume_with_another_expression_length_names_the_checkpoint(heads, tmp_path):
    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=4"]), heads[:2], run)
    shorter = _copy(heads[:2], tmp_path / "shorter")

    def drop_last_coefficient(m):
        m["expression_names"] = m["expression_names"][:-1]
        m.pop("expression_space")
        for f in m["frames"]:
            f["expression"] = f["expression"][:-1]

    for d in shorter:
        _edit(d, drop_last_coefficient, ("train", "val", "novel"))
    with pytest.raises(CheckpointError, match=re.escape(str(run / "checkpoint.pt")) + ".*length 12.*11"):
        train(load_config("tiny", ["train.steps=6"]), shorter, run)


def test_personalize_resume_refuses_a_new_identity_with_other_frames(heads, generic, tmp_path):
    # Resumed with one more training frame of the new person: the new frames would start one code early, inside the
    # generic people's frame codes, and train them on the new person.
    out = tmp_path / "pers"
    personalize(generic, [heads[2]], out, steps=4)
    before = load_run(out)[1]
    (longer,) = _copy([heads[2]], tmp_path / "longer")
    _edit(longer, _one_more_frame)
    with pytest.raises(CheckpointError, match=re.escape(str(out / "checkpoint.pt")) + ".*training frames"):
        personalize(generic, [longer], out, steps=8)
    after = load_run(out)[1]
    assert torch.equal(before.frame_codes.weight, after.frame_codes.weight)


def test_personalize_resume_refuses_another_generic_run(heads, generic, tmp_path):
    # A personalisation resumed with --run naming another generic model (of as many identities) would continue the
    # first one's weights and record the other's data folders for its generic identities.
    out = tmp_path / "pers"
    personalize(generic, [heads[2]], out, steps=4)
    other = tmp_path / "other_generic"
    train(load_config("tiny", ["train.steps=2"]), [heads[0], heads[3]], other)
    with pytest.raises(CheckpointError, match=re.escape(str(out / "checkpoint.pt")) + f".*{heads[1].name}"):
        personalize(other, [heads[2]], out, steps=8)
    assert load_run(out)[2]["step"] == 4


def test_personalize_honours_a_max_seconds_override(heads, generic, tmp_path):
    # --set train.max_seconds=S (overrides) limits the personalisation as --max-seconds (the argument) does; the
    # argument wins when both are given, and the generic run's own limit is not inherited.
    over = ["train.max_seconds=1e-9"]  # spent by the first step
    result = personalize(generic, [heads[2]], tmp_path / "limited", steps=30, overrides=over)
    assert result.step == 1
    assert load_run(tmp_path / "limited")[0].train.max_seconds == 1e-9
    result = personalize(generic, [heads[2]], tmp_path / "argument", steps=3, max_seconds=1e9, overrides=over)
    assert result.step == 3
    limited = tmp_path / "limited_generic"
    train(load_config("tiny", ["train.steps=2", "train.max_seconds=1e-9"]), heads[:2], limited)
    assert personalize(limited, [heads[2]], tmp_path / "free", steps=3).step == 3


def test_personalize_with_zero_steps_adds_the_identity_untrained(heads, generic, tmp_path):
    result = personalize(generic, [heads[2]], tmp_path / "zero", steps=0)
    assert result.step == 0
    _, model, meta = load_run(tmp_path / "zero")
    assert meta["step"] == 0 and meta["identity_names"][-1] == heads[2].name
    _, start, _ = load_run(generic)
    assert torch.equal(model.identity_codes.weight[2], start.identity_codes.weight.mean(0))  # its start: untrained


def test_personalize_resume_from_a_checkpoint_without_optimizer_state_names_the_file(heads, generic, tmp_path):
    # As train() does: a checkpoint that torch can read but that lacks the optimizer's state is refused naming it.
    out = tmp_path / "pers"
    personalize(generic, [heads[2]], out, steps=2)
    path = out / "checkpoint.pt"
    data = torch.load(path, weights_only=True)
    del data["optimizer"]
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*optimizer"):
        personalize(generic, [heads[2]], out, steps=4)


def test_rerunning_a_finished_run_reports_its_last_loss_and_psnr(heads, generic, tmp_path):
    """A second train() or personalize() of a finished run (a notebook cell run again, the same command again) took
    no step and returned loss and PSNR NaN: the CLI said "loss nan, train psnr nan dB", as for a diverged run."""
    dirs = heads
    cfg = load_config("tiny", ["train.steps=2", "train.log_every=1"])
    first = train(cfg, dirs[:2], tmp_path / "run")
    again = train(cfg, dirs[:2], tmp_path / "run")
    assert again.resumed_from == again.step == 2
    assert (again.loss, again.psnr) == (first.loss, first.psnr) and first.psnr == first.psnr
    new = personalize(generic, [dirs[3]], tmp_path / "p", steps=1)
    new_again = personalize(generic, [dirs[3]], tmp_path / "p", steps=1)
    assert (new_again.loss, new_again.psnr) == (new.loss, new.psnr) and new.psnr == new.psnr


def test_a_resume_skips_log_lines_that_are_damaged_or_not_records(heads, tmp_path):
    """Bytes of the log that are not UTF-8 (a damaged disk) stopped a resume with "'utf-8' codec can't decode byte ..."
    naming no file, though lines cut or unreadable as JSON are skipped: such a line is skipped too, like a line of
    another shape, and the records around it are kept."""
    cfg = load_config("tiny", ["train.steps=2", "train.log_every=1"])
    train(cfg, heads[:2], tmp_path / "run")
    log = tmp_path / "run" / "log.jsonl"
    lines = log.read_bytes().splitlines()
    log.write_bytes(b"\n".join([lines[0], b'{"step": 1\xff\xfe}', b"[1, 2]", b'{"step": "1"}', lines[1]]) + b"\n")
    again = train(load_config("tiny", ["train.steps=3", "train.log_every=1"]), heads[:2], tmp_path / "run")
    assert again.resumed_from == 2 and again.step == 3
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3]


def test_a_call_refused_at_its_first_step_leaves_no_run_folder_it_made(heads, generic, tmp_path):
    """A training frame that cannot be read (not the first, whose header load_dataset reads) stopped train and
    personalize at their first step's batch, after RUN/config.yaml was written: the refused call left RUN with a
    config and no checkpoint, a folder that looks like a run to resume, where README says a refused call leaves no
    folder it made ('info RUN': 'checkpoint RUN/checkpoint.pt does not exist'). An --out folder that was there stays
    (without the lock the call made there); a run with a checkpoint keeps its config.yaml."""
    data = _copy(heads[2:3], tmp_path / "data")[0]
    frame = data / json.loads((data / "transforms_train.json").read_text())["frames"][2]["file_path"]
    frame = frame if frame.suffix else frame.with_suffix(".png")
    frame.write_bytes(frame.read_bytes()[:100])
    cfg = load_config("tiny", ["train.steps=2"])
    for call, out in ((lambda out: train(cfg, [data], out), tmp_path / "new" / "run"),
                      (lambda out: personalize(generic, [data], out, steps=2), tmp_path / "pers")):
        with pytest.raises(DatasetError, match="frame 2: key 'file_path': cannot read image"):
            call(out)
        assert not out.exists() and not (tmp_path / "new").exists(), sorted(p.name for p in out.iterdir())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot read image"):
        train(cfg, [data], tmp_path / "empty")
    assert [p.name for p in (tmp_path / "empty").iterdir()] == []  # nor the lock it made there
    run = tmp_path / "run"
    shutil.copytree(generic, run)
    config = (run / "config.yaml").read_text()
    with pytest.raises(CheckpointError):  # refused on resume (other data): its config stays
        train(load_config("tiny", ["train.steps=4"]), [data], run)
    assert (run / "config.yaml").read_text() == config and (run / "checkpoint.pt").is_file()


def test_a_run_folder_without_a_checkpoint_says_why(heads, generic, tmp_path, capsys):
    """A run stopped before its first checkpoint (interrupted while setting up, which says 'no checkpoint was written
    yet in RUN; a rerun starts again') holds config.yaml alone: info, render and personalize --run said 'checkpoint
    RUN/checkpoint.pt does not exist', as of a typo. They say the run holds no checkpoint yet and what to do."""
    from fastminerf.cli import main

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(generic / "config.yaml", run / "config.yaml")
    with pytest.raises(CheckpointError, match=r"holds no checkpoint: its training stopped before it wrote one"):
        load_run(run)
    assert main(["info", str(run)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"run folder {run} holds no checkpoint" in err and "rerun the train or personalize command" in err, err
    from fastminerf.data.writer import folder_locked

    with folder_locked(run, lambda holder: AssertionError(holder)):  # a training set up there, before its checkpoint
        with pytest.raises(CheckpointError, match=rf"holds no checkpoint yet: a training \(process {os.getpid()}\) "
                                                  "writes it now"):
            load_run(run)


def test_an_absurd_error_map_is_refused_naming_the_key_before_the_model_is_built(heads, tmp_path):
    """--set sampler.error_resolution=100000 ended in a MemoryError (149 GiB) once the data had loaded and the model
    was built, its config.yaml written. Refused when the frames' size is known, before any of that, naming the key."""
    cfg = load_config("tiny", ["train.steps=1", "sampler.error_resolution=1000000"])
    with pytest.raises(ValueError, match=r"sampler.error_resolution=1000000: at most 32 cells per side"):
        train(cfg, heads[:1], tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_log_interval_below_one_is_refused_naming_the_key(heads, tmp_path):
    # It used to reach the loop and fail there with "integer modulo by zero".
    with pytest.raises(ConfigError, match="train.log_every must be >= 1, got 0"):
        load_config("tiny", ["train.log_every=0"])


def test_a_run_folder_is_resumed_only_by_the_command_that_wrote_it(heads, generic, tmp_path):
    # train into a personalisation's folder, or personalize into a generic run's: refused naming the file and the
    # command that wrote it, the checkpoint untouched.
    out = tmp_path / "pers"
    personalize(generic, [heads[2]], out, steps=2)
    with pytest.raises(CheckpointError, match=re.escape(str(out / "checkpoint.pt")) + ".*fastminerf personalize"):
        train(load_config("tiny", ["train.steps=4"]), heads[:3], out)
    assert load_run(out)[2]["step"] == 2
    copy = tmp_path / "generic_copy"
    shutil.copytree(generic, copy)
    with pytest.raises(CheckpointError, match=re.escape(str(copy / "checkpoint.pt")) + ".*fastminerf train"):
        personalize(generic, [heads[2]], copy, steps=2)
    assert load_run(copy)[2]["step"] == load_run(generic)[2]["step"]


def test_resume_on_another_kind_of_device_restarts_the_occupancy_stream(heads, tmp_path):
    # train.device may change on resume (tried on the CPU, continued on a GPU, or back), but a CUDA generator's
    # state (16 bytes: seed and offset) is not a CPU one's (5,056 bytes). A checkpoint holding the other kind resumes
    # with the stream reseeded from the run's seed and step, deterministically, instead of failing.
    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=4"]), heads[:2], run)
    path = run / "checkpoint.pt"
    data = torch.load(path, weights_only=True)
    data["occ_generator"] = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8)
    torch.save(data, path)
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    assert train(load_config("tiny", ["train.steps=8"]), heads[:2], run).step == 8
    train(load_config("tiny", ["train.steps=8"]), heads[:2], twin)
    a, b = load_run(run)[1].state_dict(), load_run(twin)[1].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_trained_with_tcnn_and_nerfacc_resumes_on_a_machine_without_them(heads, tmp_path):
    # A GPU job (model.field.backend=tcnn, grid_backend=nerfacc) preempted and resumed on a CPU node: tcnn cannot
    # run there, and the same command with backend native was refused as 'trained with a different config'. The
    # backends compute the same functions on the same weights (load_run renders such a run anywhere): they may
    # change on resume, as train.device may.
    overrides = ["train.steps=4", "model.field.identity_levels=0"]  # tiny-cuda-nn's HashGrid hashes no identity
    run = tmp_path / "run"
    train(load_config("tiny", overrides), heads[:2], run)
    path = run / "checkpoint.pt"
    data = torch.load(path, weights_only=True)
    data["config_yaml"] = (data["config_yaml"].replace("grid_backend: auto", "grid_backend: nerfacc")
                           .replace("    backend: auto", "    backend: tcnn"))
    assert "backend: tcnn" in data["config_yaml"] and "grid_backend: nerfacc" in data["config_yaml"]
    torch.save(data, path)
    on_cpu = ["train.steps=6", "model.field.identity_levels=0", "model.field.backend=native", "model.grid_backend=auto"]
    result = train(load_config("tiny", on_cpu), heads[:2], run)
    assert result.resumed_from == 4 and result.step == 6


def test_checkpoints_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    # A save that fails half way (a full disk, an interrupt) leaves the previous checkpoint readable, and a finished
    # one is flushed to the disk before it takes the name.
    import os

    from fastminerf.train import load_checkpoint, save_checkpoint

    def payload(step):
        return dict(format="fastminerf-checkpoint", version=1, config_yaml="", identity_names=["a"], expression_dim=1,
                    model={"w": torch.full((1000,), float(step))}, step=step)

    path = tmp_path / "checkpoint.pt"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(len(list(tmp_path.glob("checkpoint.pt.*.tmp"))) == 1),
                                                 real_fsync(fd)))
    save_checkpoint(path, payload(1))
    assert synced == [True]  # flushed while still under its temporary name

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, payload(2))
    data = load_checkpoint(path)
    assert data["step"] == 1 and torch.equal(data["model"]["w"], torch.full((1000,), 1.0))


def test_a_run_trained_on_relative_paths_finds_its_data_from_another_folder(heads, tmp_path, monkeypatch):
    """``train --data data`` stored ``data`` as given: render, eval and a driving video's basis look the training data
    up in the run, and from any other working folder failed with "data: no such file or folder". Runs (trained and
    personalised) record where their data is."""
    from fastminerf.render import load_target

    _copy(heads[:2], tmp_path / "project" / "data")
    monkeypatch.chdir(tmp_path / "project")
    train(load_config("tiny", ["train.steps=1"]), ["data"], "run")
    personalize("run", [str(_copy(heads[2:3], tmp_path / "project" / "new")[0].relative_to(tmp_path / "project"))],
                "run_new", steps=1)
    monkeypatch.chdir(tmp_path)
    for run in ("run", "run_new"):
        meta = load_run(tmp_path / "project" / run)[2]
        assert all(Path(p).is_absolute() and Path(p).exists() for p in meta["data_paths"]), meta["data_paths"]
    assert load_target(load_run(tmp_path / "project" / "run_new")[2]["data_paths"], heads[2].name).identities == [heads[2].name]


def test_a_checkpoint_write_that_fails_leaves_no_half_file_and_says_why(tmp_path, monkeypatch):
    # A full disk: torch reports it as a RuntimeError ("unexpected pos ..."), or an OSError. The half-written temp
    # file must not stay behind (it holds the space the next save needs), and the error names the file and the cause.
    from fastminerf.train import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    good = dict(format="fastminerf-checkpoint", version=1, config_yaml="", identity_names=["a"], expression_dim=1,
                model={"w": torch.zeros(10)}, step=1)
    save_checkpoint(path, good)
    for error in (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 137536 vs 137428"),
                  OSError(28, "No space left on device"), KeyboardInterrupt()):
        def failing(obj, f, *args, _error=error, **kwargs):
            f.write(b"PK\x03\x04 half a zip")
            raise _error

        monkeypatch.setattr(torch, "save", failing)
        expected = KeyboardInterrupt if isinstance(error, KeyboardInterrupt) else OSError
        with pytest.raises(expected) as info:
            save_checkpoint(path, good)
        if expected is OSError:
            assert str(path) in str(info.value) and "disk" in str(info.value)
        if isinstance(error, OSError):  # said once, the file named once (replaced_atomically names it too)
            assert str(info.value) == (f"[Errno 28] cannot write the checkpoint {path} (is the disk full?): No space "
                                       f"left on device; {path} is kept as it was")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
        assert load_checkpoint(path)["step"] == 1



@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_while_a_checkpoint_is_written_stays_an_interrupt(tmp_path, monkeypatch, interrupt):
    """Ctrl-C (a notebook's Interrupt, or SIGTERM, which the command raises as one) landing while torch.save wrote the
    file left torch's zip writer half way, and closing it raised RuntimeError('unexpected pos ...'), which
    save_checkpoint reported as "OSError: cannot write the checkpoint ... (is the disk full?)": the user who stopped
    the run was told of a disk problem, the command said 'error:' and exited 2 instead of 'interrupted', and a
    notebook's `except KeyboardInterrupt` missed it. The interrupt is raised, and the earlier checkpoint is kept."""
    from fastminerf.train import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    good = dict(format="fastminerf-checkpoint", version=1, config_yaml="", identity_names=["a"], expression_dim=1,
                model={"w": torch.zeros(1000)}, step=1)
    save_checkpoint(path, good)

    class Interrupted:  # the file torch writes to, interrupted at its second write
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 2:
                raise interrupt()
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *args, **kwargs: real_save(obj, Interrupted(f), *args, **kwargs))
    with pytest.raises(interrupt):
        save_checkpoint(path, dict(good, step=2, model={"w": torch.ones(1000)}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_a_log_rewrite_that_fails_leaves_the_log_whole_and_no_temp_file(tmp_path, monkeypatch):
    from pathlib import Path

    from fastminerf.train import _truncate_log

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(dict(step=s)) + "\n" for s in (5, 10, 15)))
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.endswith(".tmp"):
            with open(self, "w") as f:
                f.write('{"st')
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        _truncate_log(log, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [5, 10, 15]




def test_a_resume_of_a_long_log_holds_no_copy_of_its_records_and_leaves_a_clean_log_as_it_is(tmp_path):
    """A week-long run logs a line a step or few: the resume of a 1M-line log.jsonl (200 MB) held every line and its
    parsed record at once (2.2 GB, 8.5 times the file), and rewrote the whole file even when it ended at the
    checkpoint's step (a finished run continued with more steps). The log is read a line at a time (the kept lines
    alone are held, for the rewrite: 3.4 times the file), and a log with nothing to drop is not rewritten."""
    import tracemalloc

    from fastminerf.train import _truncate_log

    log = tmp_path / "log.jsonl"
    record = dict(step=0, seconds=0.5, loss=0.01, psnr=20.0, rays_per_s=51000.5, samples_per_ray=35.8, phase="train",
                  occupied=0.93)
    log.write_text("".join(json.dumps(dict(record, step=s, loss=1 / s)) + "\n" for s in range(1, 20001)))
    size, inode = log.stat().st_size, log.stat().st_ino
    assert _truncate_log(log, 20000)["step"] == 20000
    assert log.stat().st_ino == inode and log.stat().st_size == size  # nothing to drop: the file as it was
    tracemalloc.start()
    try:
        last = _truncate_log(log, 19990)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert last == dict(record, step=19990, loss=1 / 19990)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, 19991))
    assert peak < 4 * size, f"peak {peak / size:.1f} times the log"  # the kept lines, their text and its bytes


def test_a_log_write_that_fails_on_a_full_disk_names_the_log(heads, tmp_path, file_size_limit):
    """Training appends a line to RUN/log.jsonl at every logging step: on a full disk (here a file size limit, which
    fails the same write) it stopped with "error: [Errno 28] No space left on device", naming no file. The error
    names the log."""
    import errno

    run = tmp_path / "run"
    cfg = load_config("tiny", ["train.steps=40", "train.log_every=1", "train.checkpoint_every=0",
                               "train.checkpoint_seconds=0"])
    # config.yaml (about 2,100 bytes) is written whole; the log (about 250 bytes a step) reaches 3,000 bytes first
    with file_size_limit(3000), pytest.raises(OSError) as info:
        train(cfg, heads[:2], run)
    assert info.value.errno == errno.EFBIG
    assert info.value.filename == str(run / "log.jsonl") and str(run / "log.jsonl") in str(info.value), str(info.value)


def test_a_config_write_that_is_stopped_leaves_the_run_folder_s_config_whole(heads, generic, tmp_path, monkeypatch):
    # train and personalize wrote RUN/config.yaml in place: stopped in that write (Ctrl-C, a kill, a full disk) a
    # resumed run's config.yaml was cut short, the file train's refusal tells the user to resume with (--config
    # RUN/config.yaml), and a new personalisation left a half one. It is written as the checkpoint is: whole or not at all.
    from pathlib import Path

    from fastminerf.config import load_config as load

    run = tmp_path / "run"
    shutil.copytree(generic, run)
    before = (run / "config.yaml").read_text()
    real = Path.write_text

    def stopped(self, data, *args, **kwargs):
        if self.name.startswith("config.yaml"):
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise KeyboardInterrupt
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(load_config("tiny", ["train.steps=6"]), heads[:2], run)
    with pytest.raises(KeyboardInterrupt):
        personalize(generic, [heads[2]], tmp_path / "new", steps=2)
    monkeypatch.setattr(Path, "write_text", real)
    assert (run / "config.yaml").read_text() == before
    load(run / "config.yaml")
    assert sorted(p.name for p in run.iterdir() if "config" in p.name) == ["config.yaml"]
    # the new personalisation's folder, left with nothing in it but its lock, is removed with it
    assert not (tmp_path / "new").exists()


def test_runs_record_their_data_folders_absolute_so_they_are_found_from_any_folder(heads, tmp_path, monkeypatch):
    # `fastminerf train --data data/...` in one folder, `render`/`info`/`personalize` run from another: the run's
    # data_paths (render's targets, the expression basis) must not depend on where train was started.
    from fastminerf.render import load_target

    _copy(heads[:3], tmp_path / "work" / "data")
    monkeypatch.chdir(tmp_path / "work")
    train(load_config("tiny", ["train.steps=2"]), ["data/" + heads[0].name, "data/" + heads[1].name], "run")
    personalize("run", ["data/" + heads[2].name], "run2", steps=2)
    monkeypatch.chdir(tmp_path)
    for run, names in ((tmp_path / "work" / "run", heads[:2]), (tmp_path / "work" / "run2", heads[:3])):
        meta = load_run(run)[2]
        assert meta["data_paths"] == [str(tmp_path / "work" / "data" / d.name) for d in names]
        assert load_target(meta["data_paths"], heads[0].name).identities == [heads[0].name]
    assert load_run(tmp_path / "work" / "run2")[2]["generic_run"] == str(tmp_path / "work" / "run")


def _swap_first_frames(meta):
    meta["frames"][0], meta["frames"][1] = meta["frames"][1], meta["frames"][0]


def _zero_first_expression(meta):
    meta["frames"][0]["expression"] = [0.0] * len(meta["frames"][0]["expression"])


@pytest.mark.parametrize("edit", [_swap_first_frames, _zero_first_expression])
def test_resume_refuses_training_frames_that_changed_in_place(heads, tmp_path, edit):
    # The same people with the same number of frames each, but frames reordered in a transforms file (frame code b
    # would go on learning another frame) or a frame's expression or camera changed: refused naming the frame.
    data = _copy(heads[:2], tmp_path / "data")
    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=4"]), data, run)
    _edit(data[0], edit)
    first = json.loads((data[0] / "transforms_train.json").read_text())["frames"][0]["file_path"]
    with pytest.raises(CheckpointError, match=re.escape(str(run / "checkpoint.pt")) + ".*" +
                       re.escape(str(data[0] / first)) + f".*frame 0 of '{heads[0].name}'"):
        train(load_config("tiny", ["train.steps=6"]), data, run)
    assert load_run(run)[2]["step"] == 4
    # the data folder moved elsewhere, frames untouched: still the same frames
    fresh = _copy(heads[:2], tmp_path / "moved")
    train(load_config("tiny", ["train.steps=6"]), fresh, run)
    assert load_run(run)[2]["step"] == 6


def test_personalize_resume_and_fine_tuning_refuse_frames_that_changed_in_place(heads, generic, tmp_path):
    new = _copy(heads[2:3], tmp_path / "new")
    run = tmp_path / "added"
    personalize(generic, new, run, steps=2)
    _edit(new[0], _swap_first_frames)
    with pytest.raises(CheckpointError, match=re.escape(str(run / "checkpoint.pt")) + ".*" + heads[2].name):
        personalize(generic, new, run, steps=4)
    known = _copy(heads[:1], tmp_path / "known")  # a known person's frames in another order than the model learned
    _edit(known[0], _swap_first_frames)
    with pytest.raises(DatasetError, match=heads[0].name + ".*" + re.escape(str(generic))):
        personalize(generic, known, tmp_path / "tuned", steps=2)


def test_a_new_person_named_like_a_known_one_is_told_to_rename_its_folder(heads, generic, tmp_path):
    # A new person whose identity folder has the name of one the model knows is taken for that person (names are
    # folder names) and refused as a known identity with other frames; the message said only "fine-tune a known
    # identity with the data it was trained on", nothing of the name.
    same_name = tmp_path / "new" / heads[0].name
    shutil.copytree(heads[2], same_name)
    with pytest.raises(DatasetError, match=re.escape(heads[0].name) + ".*new person.*folder name"):
        personalize(generic, [same_name], tmp_path / "p", steps=2)
    with pytest.raises(ValueError, match="new person.*folder name"):  # with a new one beside it: the same advice
        personalize(generic, [same_name, heads[3]], tmp_path / "q", steps=2)


def test_a_new_person_with_another_expression_length_names_the_file(heads, generic, tmp_path):
    # personalize refused it with its own message, naming the run but not the data's file, frame or key (eval and
    # render --drive name the transforms file, frame 0 and 'expression').
    shorter = _copy(heads[2:3], tmp_path / "shorter")[0]

    def drop_last_coefficient(m):
        m["expression_names"] = m["expression_names"][:-1]
        m.pop("expression_space")
        for f in m["frames"]:
            f["expression"] = f["expression"][:-1]

    _edit(shorter, drop_last_coefficient, ("train", "val", "novel"))
    with pytest.raises(DatasetError, match=re.escape(str(shorter / "transforms_")) + r".*frame 0: key 'expression'.*"
                       r"length 11.*length 12") as err:
        personalize(generic, [shorter], tmp_path / "p", steps=2)
    assert err.value.key == "expression" and err.value.file.startswith(str(shorter))


def test_a_personalisation_into_the_run_it_starts_from_is_refused(heads, generic, tmp_path):
    # `personalize --run R --data P --out R` on a run R that fine-tuned P was taken for a resume of R (the same
    # identities, the same fine-tuned person): it went on training in place and recorded R as the run it started
    # from, so info said "started from R" of R itself and the generic run it did start from was lost.
    tuned = tmp_path / "tuned"
    personalize(generic, [heads[0]], tuned, steps=2)
    with pytest.raises(CheckpointError, match=re.escape(str(tuned)) + ".*another --out"):
        personalize(tuned, [heads[0]], tuned, steps=4)
    meta = load_run(tuned)[2]
    assert meta["step"] == 2 and Path(meta["generic_run"]) == Path(generic).resolve()


def test_a_run_folder_in_training_is_refused_to_a_second_training_until_the_first_ends(heads, generic, tmp_path):
    # Two `fastminerf train --out RUN` at once both trained: their lines interleaved in RUN/log.jsonl (201 lines for
    # 120 logging steps) and each overwrote the other's checkpoint. The second is refused, naming the folder.
    import threading

    run, started, release, errors = tmp_path / "run", threading.Event(), threading.Event(), []

    def hold(model, record):  # the first training waits at its first logging step, holding the folder
        started.set()
        release.wait(30)

    def first():
        try:
            train(load_config("tiny", ["train.steps=5"]), heads[:2], run, monitor=hold)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(60)
        with pytest.raises(CheckpointError, match=re.escape(str(run)) + ".*in use"):
            train(load_config("tiny", ["train.steps=5"]), heads[:2], run)
        with pytest.raises(CheckpointError, match=re.escape(str(run)) + ".*in use"):
            personalize(generic, heads[2:3], run, steps=2)
    finally:
        release.set()
        thread.join(60)
    assert not errors
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [5]
    train(load_config("tiny", ["train.steps=6"]), heads[:2], run)  # free again once the first has ended
    assert load_run(run)[2]["step"] == 6


def test_a_run_folder_on_a_filesystem_without_locks_still_trains(heads, tmp_path, monkeypatch):
    """Some network filesystems answer flock with ENOLCK / EOPNOTSUPP: the run folder's lock must not stop training
    there (it only guards against a second training into the same folder)."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    train(load_config("tiny", ["train.steps=2"]), heads[:1], tmp_path / "run")
    assert load_run(tmp_path / "run")[2]["step"] == 2


def _phases(run):
    return [json.loads(line)["phase"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_personalisation_time_limit_leaves_the_shared_weights_their_share_and_resumes_in_their_phase(heads, generic,
                                                                                                     tmp_path, monkeypatch):
    """--max-seconds ended a personalisation inside its code-only phase whenever that phase's steps (a
    personalize_code_fraction of --steps) took longer than the limit: no shared weight was tuned, and the result was
    silently the generic model plus the new person's codes. Each phase gets its share of the time as of the steps;
    a resumed run continues in the phase it stopped in."""
    import itertools
    import time

    # a clock of the calls, not of the machine: under load one real step took the whole 0.4 s and left the tuning none
    ticks = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks) * 0.004)
    run = tmp_path / "timed"
    # 0.5 of 100,000 steps for the codes: far more than the time allows
    over = ["train.personalize_code_fraction=0.5", "train.log_every=1"]
    personalize(generic, [heads[2]], run, steps=100_000, max_seconds=0.4, overrides=over)
    phases = _phases(run)
    assert phases[0] == "codes" and phases[-1] == "all", sorted(set(phases))
    _, start, _ = load_run(generic)
    _, tuned, meta = load_run(run)
    assert meta["step"] < 50_000  # both phases ran within the limit, the second before the first's steps were done
    grid = [n for n, _ in start.named_parameters() if "encoding" in n or "grid" in n]
    assert grid and any(not torch.equal(dict(start.named_parameters())[n], dict(tuned.named_parameters())[n])
                        for n in grid)
    n = len(phases)
    personalize(generic, [heads[2]], run, steps=100_000, max_seconds=0.8, overrides=over)
    assert _phases(run)[n:] and set(_phases(run)[n:]) == {"all"}  # not back to the codes


@pytest.mark.parametrize("which", ["image", "mask", "background"])
def test_resume_refuses_training_pixels_that_changed_under_the_same_cameras(heads, tmp_path, which):
    """A dataset prepared again (or retouched) with other pixels but the same transforms files (cameras,
    expressions, file names) resumed silently: frame codes and weights went on learning other images. The checkpoint
    keeps the byte size of each training frame's image, mask and background file (one stat each, survives copies
    and moves), and a resume on files of other sizes is refused naming the file; the same pixels copied elsewhere
    still resume."""
    from PIL import Image

    data = _copy(heads[:2], tmp_path / "data")
    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=4"]), data, run)
    frame = json.loads((data[1] / "transforms_train.json").read_text())
    rel = {"image": frame["frames"][0]["file_path"], "mask": frame["frames"][0]["mask_path"],
           "background": frame["background"]}[which]
    path = data[1] / rel
    img = Image.open(path)
    Image.fromarray(255 - np.asarray(img)).save(path)  # other pixels, same name, shape and camera
    with pytest.raises(CheckpointError, match=re.escape(str(run / "checkpoint.pt")) + ".*" + re.escape(str(path))):
        train(load_config("tiny", ["train.steps=6"]), data, run)
    assert load_run(run)[2]["step"] == 4
    train(load_config("tiny", ["train.steps=6"]), _copy(heads[:2], tmp_path / "copied"), run)
    assert load_run(run)[2]["step"] == 6


def test_fine_tuning_a_known_person_refuses_pixels_other_than_those_trained_on(heads, generic, tmp_path):
    from PIL import Image

    known = _copy(heads[:1], tmp_path / "known")
    path = known[0] / json.loads((known[0] / "transforms_train.json").read_text())["frames"][2]["file_path"]
    Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*" + re.escape(str(generic))):
        personalize(generic, known, tmp_path / "tuned", steps=2)


def test_a_checkpoint_of_another_fastminerf_version_says_which_side_is_older(heads, generic, tmp_path):
    """A checkpoint written by a newer fastminerf (a higher format version) was refused with 'has format version 2,
    this fastminerf reads 1', which does not say to update fastminerf; one without the training state an older
    version did not keep was refused with "cannot restore the training state: 'sampler'" (a bare KeyError)."""
    run = tmp_path / "run"
    shutil.copytree(generic, run)
    path = run / "checkpoint.pt"
    data = torch.load(path, weights_only=True)
    torch.save(dict(data, version=data["version"] + 1), path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*newer fastminerf.*update"):
        load_run(run)
    del data["sampler"]
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*lacks 'sampler'"):
        train(load_config("tiny", ["train.steps=6"]), heads[:2], run)


def test_a_resume_with_another_config_says_how_to_continue_and_counts_what_it_leaves_out(heads, tmp_path):
    """The same train command rerun without its --config (the cpu preset by default) was refused with five of the
    eleven keys that differ, no word of the others, and 'use another --out folder to start a new run': not how to
    continue the run, which is what the rerun was for. The message counts the keys left out and names the run's own
    config file, with which the run continues."""
    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=2"]), heads[:2], run)
    with pytest.raises(CheckpointError, match=r"and \d+ more.*" + re.escape(str(run / "config.yaml"))):
        train(load_config("cpu", ["train.steps=3"]), heads[:2], run)
    assert train(load_config(str(run / "config.yaml"), ["train.steps=3"]), heads[:2], run).step == 3


def test_resume_after_the_data_was_prepared_again_at_another_size_says_so(heads, generic, tmp_path):
    """Data prepared again at another --size (or synth --size) was refused on resume as 'train frame 0 of 'x' is
    another frame (file, camera or expression) than the one trained on', which does not say the size changed (the
    intrinsics in the fingerprint did). Checkpoints keep each training frame's size: the message names the old and
    new size of each identity, and the size to prepare again at; fine-tuning the generic run says it too."""
    data = _copy(heads[:2], tmp_path / "data")
    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=1"]), data, run)
    generate(tmp_path / "small", n_identities=4, n_frames=8, size=16, seed=3, novel_frames=1)
    for d in data[:1]:  # the first person prepared again at 16 px
        shutil.rmtree(d)
        shutil.copytree(tmp_path / "small" / d.name, d)
    name = data[0].name
    size_change = rf"prepared again at another size: {name!r} was trained at 20x20 px and is now 16x16 px"
    with pytest.raises(CheckpointError, match=size_change):
        train(load_config("tiny", ["train.steps=2"]), data, run)
    fine = _copy(heads[:1], tmp_path / "fine")
    shutil.rmtree(fine[0])
    shutil.copytree(tmp_path / "small" / heads[0].name, fine[0])
    with pytest.raises(DatasetError, match=size_change.replace(name, heads[0].name)):
        personalize(generic, fine, tmp_path / "p", steps=1)


def test_data_beside_a_moved_run_prepared_again_at_another_size_says_so(heads, tmp_path):
    """The data found beside a run moved with it (its recorded place gone) was checked by fingerprint only: prepared
    again at another --size it was refused as 'another frame (file, camera or expression)', the words c11c9bc
    replaced on resume and fine-tuning, since the size is what changed. It names the old and new size there too."""
    from fastminerf.train import run_data_paths

    proj = tmp_path / "proj"
    data = _copy(heads[:2], proj / "data")
    train(load_config("tiny", ["train.steps=1"]), [proj / "data"], proj / "run")
    generate(tmp_path / "small", n_identities=4, n_frames=8, size=16, seed=3, novel_frames=1)
    shutil.rmtree(data[0])
    shutil.copytree(tmp_path / "small" / heads[0].name, data[0])
    moved = tmp_path / "disk2" / "proj"
    shutil.move(str(proj), str(moved))
    with pytest.raises(DatasetError, match=rf"prepared again at another size: {heads[0].name!r} was trained at 20x20 "
                                           r"px and is now 16x16 px"):
        run_data_paths(load_run(moved / "run")[2])


def _orbit(run, name, out):
    from fastminerf.cli import main

    return main(["render", "--run", str(run), "--identity", name, "--orbit", "--frames", "1", "--out", str(out)])


def test_a_personalised_person_renders_without_the_generic_runs_data(heads, tmp_path, capsys):
    """render of a person a personalisation added refused when the generic run's data folder was gone ('not there,
    the data the run was trained on'), though it reads only that person's own folder, which is there: only the
    folders that hold the person rendered must be there. A generic person whose data is gone is still refused."""
    data, new = _copy(heads[:2], tmp_path / "data"), _copy(heads[2:3], tmp_path / "new")
    train(load_config("tiny", ["train.steps=1"]), [tmp_path / "data"], tmp_path / "run")
    personalize(tmp_path / "run", new, tmp_path / "pers", steps=1)
    shutil.rmtree(tmp_path / "data")
    assert _orbit(tmp_path / "pers", heads[2].name, tmp_path / "new.mp4") == 0
    assert (tmp_path / "new.mp4").is_file()
    capsys.readouterr()
    assert _orbit(tmp_path / "pers", heads[0].name, tmp_path / "old.mp4") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert str(tmp_path / "data") in err and "--target-data" in err


def test_a_run_moved_with_its_data_finds_the_data_beside_it(heads, tmp_path, capsys):
    """A lab moved a project folder (its runs and their data) to another disk: the runs recorded only absolute data
    paths, so render, speech and a personalisation's record pointed at the old place. Runs record the paths relative
    to the run folder too, tried where the absolute ones are gone, as long as the frames there are the ones trained
    on (their fingerprints); other frames are refused, naming the file."""
    from PIL import Image

    from fastminerf.train import run_data_paths

    proj = tmp_path / "proj"
    _copy(heads[:2], proj / "data")
    new = _copy(heads[2:3], proj / "new")
    train(load_config("tiny", ["train.steps=1"]), [proj / "data"], proj / "runs" / "run")
    personalize(proj / "runs" / "run", new, proj / "pers", steps=1)
    moved = tmp_path / "disk2" / "proj"
    shutil.move(str(proj), str(moved))
    assert run_data_paths(load_run(moved / "runs" / "run")[2]) == [str(moved / "data")]
    assert run_data_paths(load_run(moved / "pers")[2]) == [str(moved / "data"), str(moved / "new" / heads[2].name)]
    for run, name in ((moved / "runs" / "run", heads[0].name), (moved / "pers", heads[2].name)):
        assert _orbit(run, name, tmp_path / "o.mp4") == 0, capsys.readouterr().err
    from fastminerf.cli import run_info

    info = run_info(moved / "pers")
    assert info["data_paths"][0] == str(moved / "data") and info["data_missing"] == []
    # a personalisation of the moved run records where the generic run's data is now
    more = _copy(heads[3:4], moved / "more")
    personalize(moved / "runs" / "run", more, moved / "pers2", steps=1)
    assert load_run(moved / "pers2")[2]["data_paths"][0] == str(moved / "data")
    # other pixels where the run expects its data: not taken for it
    frame = json.loads((moved / "data" / heads[1].name / "transforms_train.json").read_text())["frames"][0]
    path = moved / "data" / heads[1].name / frame["file_path"]
    Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*" + re.escape(str(proj / "data"))):
        run_data_paths(load_run(moved / "runs" / "run")[2])
    # and render says how to give the data's place, as when the folder is gone (it said only 'give the folders
    # where the data is now', not --target-data)
    capsys.readouterr()
    assert _orbit(moved / "runs" / "run", heads[1].name, tmp_path / "o.mp4") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert str(path) in err and "--target-data" in err, err


def test_training_files_re_encoded_with_the_same_pixels_resume_when_the_user_says_so(heads, generic, tmp_path,
                                                                                     capsys):
    """PNGs re-saved at another compression level (or optimised by oxipng): other bytes, the same pixels. The
    checkpoint's fingerprints are of the files' bytes (no pixels kept), so a resume was refused with no way to say
    it is the same data. --same-pixels (same_pixels=True) resumes on them, still checking names, cameras and
    expressions, and records the new files, so later resumes need it no more; the refusal says so."""
    from PIL import Image

    from fastminerf.cli import main

    data = _copy(heads[:2], tmp_path / "data")
    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=2"]), data, run)
    rel = json.loads((data[1] / "transforms_train.json").read_text())["frames"][0]["file_path"]
    path = data[1] / rel
    pixels = np.asarray(Image.open(path))
    Image.fromarray(pixels).save(path, compress_level=0)  # the same pixels, another file
    assert np.array_equal(np.asarray(Image.open(path)), pixels)
    with pytest.raises(CheckpointError, match="same.pixels"):
        train(load_config("tiny", ["train.steps=3"]), data, run)
    argv = ["train", "--data", *map(str, data), "--out", str(run), "--config", "tiny"]
    assert main(argv + ["--steps", "3", "--same-pixels"]) == 0, capsys.readouterr().err
    assert load_run(run)[2]["step"] == 3
    train(load_config("tiny", ["train.steps=4"]), data, run)  # the new files are the ones recorded
    assert load_run(run)[2]["step"] == 4
    # fine-tuning a known person on re-encoded files likewise
    known = _copy(heads[:1], tmp_path / "known")
    path = known[0] / json.loads((known[0] / "transforms_train.json").read_text())["frames"][0]["file_path"]
    Image.fromarray(np.asarray(Image.open(path))).save(path, compress_level=0)
    with pytest.raises(DatasetError, match="same.pixels"):
        personalize(generic, known, tmp_path / "tuned", steps=1)
    personalize(generic, known, tmp_path / "tuned", steps=1, same_pixels=True)
    assert load_run(tmp_path / "tuned")[2]["refined"] == [heads[0].name]
    personalize(generic, known, tmp_path / "tuned", steps=2)  # its resume checks the files it tuned on


def test_a_personalisation_moved_with_its_generic_run_names_it_where_it_is(heads, tmp_path):
    """A project moved as a whole: the personalisation still named its generic run at the old place (info's 'started
    from', the note of people it did not personalise, a resume's hint), a path that no longer exists. It records the
    generic run relative to itself too, and names it where it is now."""
    from fastminerf.cli import run_info

    proj = tmp_path / "proj"
    train(load_config("tiny", ["train.steps=1"]), _copy(heads[:2], proj / "data"), proj / "run")
    personalize(proj / "run", _copy(heads[2:3], proj / "new"), proj / "pers", steps=1)
    moved = tmp_path / "disk2" / "proj"
    shutil.move(str(proj), str(moved))
    assert load_run(moved / "pers")[2]["generic_run"] == str(moved / "run")
    assert run_info(moved / "pers")["generic_run"] == str(moved / "run")


def test_a_run_folder_that_is_a_file_is_refused_naming_it(heads, generic, tmp_path):
    """train / personalize --out DATA/id000/bg.png (a file's name typed for the run folder's) failed with OSError's
    bare '[Errno 17] File exists', which does not say --out must be a folder. Both name it, and keep the file."""
    frame = tmp_path / "bg.png"
    frame.write_bytes(b"a picture")
    with pytest.raises(CheckpointError, match=r"run folder .*bg\.png is a file, not a folder"):
        train(load_config("tiny", ["train.steps=2"]), heads[:2], frame)
    with pytest.raises(CheckpointError, match=r"run folder .*bg\.png is a file, not a folder"):
        personalize(generic, [heads[2]], frame, steps=2)
    assert frame.read_bytes() == b"a picture"


def test_a_tcnn_run_resumed_where_tcnn_cannot_run_is_told_the_backend_to_set(heads, tmp_path, capsys):
    # Its own config (the same command) on a CPU node said only "backend 'tcnn' runs only on CUDA devices": the user
    # could not tell that the run continues with backend auto (the same weights).
    from fastminerf.cli import main

    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=2", "model.field.identity_levels=0"]), heads[:2], run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("    backend: auto", "    backend: tcnn"))
    assert main(["train", "--data", *map(str, heads[:2]), "--out", str(run), "--config", str(config)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "model.field.backend='tcnn' cannot run on cpu" in err, err
    assert "model.field.backend=auto" in err and "the same weights" in err, err


def test_personalize_refuses_a_known_name_spelt_with_other_unicode_code_points(heads, tmp_path):
    # A model trained on Linux with 'Zoë' (é one code point, NFC) personalised from a folder copied from a Mac,
    # 'Zoë' with e + combining accent (NFD): the same name to the eye and in every table, other bytes to Python.
    # It was added as a new person: the run held two identities shown 'Zoë (8), Zoë (8)', and render --identity Zoë
    # picked whichever one the typed bytes matched. It is refused, naming the folder and the model's spelling.
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "Zoë"), unicodedata.normalize("NFD", "Zoë")
    shutil.copytree(heads[0], tmp_path / "linux" / nfc)
    shutil.copytree(heads[1], tmp_path / "linux" / "id001")
    shutil.copytree(heads[2], tmp_path / "mac" / nfd)
    run = tmp_path / "run"
    train(load_config("tiny", ["train.steps=2"]), [tmp_path / "linux"], run)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "mac" / nfd)) + ".*Unicode"):
        personalize(run, [tmp_path / "mac" / nfd], tmp_path / "pers", steps=2)
    assert not (tmp_path / "pers" / "checkpoint.pt").exists()


def test_a_run_made_on_windows_finds_its_moved_data_on_linux(heads, tmp_path):
    # A project trained on a Windows laptop and copied to a Linux cluster (run and data together): the run recorded
    # its data as 'C:\Users\zoe\proj\data' and, relative to the run, '..\data': joined on Linux that is a file name
    # with a backslash, so the run's data was 'not there' (render, speech, info, a personalisation's record). The
    # relative path is read with either separator, and recorded with '/', which Windows reads too.
    from pathlib import PureWindowsPath

    from fastminerf.train import run_data_paths

    proj = tmp_path / "Zoë's proj"
    _copy(heads[:1], proj / "my data")
    train(load_config("tiny", ["train.steps=1"]), [proj / "my data"], proj / "runs" / "run")
    meta = load_run(proj / "runs" / "run")[2]
    assert meta["data_relative"] == ["../../my data"]
    meta.update(data_paths=[r"C:\Users\zoe\proj\my data"], data_relative=[str(PureWindowsPath("..", "..", "my data"))])
    assert run_data_paths(meta) == [str(proj / "my data")]



def _stopped_at_step_4(cfg, data, gen):
    """Train ``cfg`` (8 steps, checkpoints every 2) on ``data`` into ``gen`` and stop it by Ctrl-C at step 5: the
    run holds step 4's checkpoint."""
    def interrupt(record):
        if record["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, gen, progress=interrupt)

def test_personalize_refuses_a_generic_run_being_trained_now_and_notes_an_unfinished_one(heads, tmp_path):
    # personalize --run GEN while `train --out GEN` was still writing GEN took whichever checkpoint it read (step 596
    # of 4000 on the real clips) without a word and recorded GEN as the run it started from, which then went on to
    # hold another model; one from an interrupted GEN (not at its steps, no time limit) said nothing either.
    from fastminerf.data.writer import folder_locked

    gen = tmp_path / "gen"
    cfg = load_config("tiny", ["train.steps=8", "train.checkpoint_every=2", "train.log_every=1"])

    _stopped_at_step_4(cfg, heads[:2], gen)
    assert load_run(gen)[2]["step"] == 4
    with folder_locked(gen, lambda holder: CheckpointError(holder)):  # a training writing it now
        with pytest.raises(CheckpointError, match=re.escape(str(gen)) + r".*being trained now.*step 4 of 8"):
            personalize(gen, [heads[2]], tmp_path / "now", steps=2)
    assert not (tmp_path / "now").exists()
    result = personalize(gen, [heads[2]], tmp_path / "p", steps=2)
    assert any(str(gen) in n and "not finished" in n and "step 4 of 8" in n for n in result.notes), result.notes
    train(cfg, heads[:2], gen)  # finished: no note
    assert not any("not finished" in n for n in personalize(gen, [heads[2]], tmp_path / "q", steps=2).notes)


def test_info_of_an_interrupted_personalisation_gives_the_log_of_the_step_it_keeps(heads, generic, tmp_path):
    # Stopped after step 4 with its checkpoint at step 3 (one code-only step, then one every 2 of the tuning's),
    # info said 'steps 3 of 8' and 'last log: step 4, loss ..., train psnr ...': the loss and PSNR of a step the run
    # does not hold (the rerun redoes it and drops that line).
    from fastminerf.cli import run_info

    run = tmp_path / "pers"

    def interrupt(record):
        if record["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        personalize(generic, [heads[2]], run, steps=8, progress=interrupt,
                    overrides=["train.checkpoint_every=2", "train.log_every=1"])
    info = run_info(run)
    assert info["step"] == 3 and info["last_log"]["step"] == 3, info["last_log"]


def test_an_interrupt_before_the_first_step_says_what_the_run_folder_keeps(heads, generic, tmp_path, monkeypatch):
    # Ctrl-C while personalize (or train) read its data and set up, a few seconds on the real clips, printed a bare
    # 'interrupted': not whether the run folder (left with its config.yaml) kept a checkpoint a rerun resumes from,
    # as an interrupt during the steps says.
    import sys

    tr = sys.modules["fastminerf.train"]  # the module (fastminerf.train is the function)
    run = tmp_path / "pers"
    personalize(generic, [heads[2]], run, steps=2)

    class Stop:
        def __init__(self, *args, **kwargs):
            raise KeyboardInterrupt

    monkeypatch.setattr(tr, "RaySampler", Stop)
    with pytest.raises(KeyboardInterrupt, match=re.escape(str(run / "checkpoint.pt")) + ".*resume"):
        personalize(generic, [heads[2]], run, steps=4)
    with pytest.raises(KeyboardInterrupt, match="no checkpoint was written yet in " + re.escape(str(tmp_path / "new"))):
        train(load_config("tiny", ["train.steps=2"]), heads[:2], tmp_path / "new")

    # after the last step, while the loss curve is drawn, it is no longer 'before its first step'
    def late(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.undo()
    monkeypatch.setattr(tr, "write_curve", late)
    with pytest.raises(KeyboardInterrupt, match="after step 2: " + re.escape(str(tmp_path / "late" / "checkpoint.pt"))
                       + " keeps step 2"):
        train(load_config("tiny", ["train.steps=2"]), heads[:2], tmp_path / "late")


def test_an_interrupt_after_steps_outside_the_loop_is_not_said_to_be_before_the_first_step(heads, generic, tmp_path,
                                                                                          monkeypatch):
    # ef6b8c9 moved the curve's drawing into the loop's account, but the other moments after steps outside a loop's
    # run (the weight average copied into the model after the last checkpoint; personalisation's set-up of its tuning
    # phase once its code phase has run) were still told 'before its first step: ... is as it was'.
    import sys

    tr = sys.modules["fastminerf.train"]  # the module (fastminerf.train is the function)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tr.WeightAverage, "copy_to", stop)
    with pytest.raises(KeyboardInterrupt, match="after step 2: " + re.escape(str(tmp_path / "avg" / "checkpoint.pt"))
                       + " keeps step 2"):
        train(load_config("tiny", ["train.steps=2", "train.ema_decay=0.9"]), heads[:2], tmp_path / "avg")
    monkeypatch.undo()

    made = []

    def second_phase(groups):
        made.append(groups)
        if len(made) == 2:  # the tuning phase's optimizer, after the code phase's steps
            raise KeyboardInterrupt
        return torch.optim.Adam(groups)

    monkeypatch.setattr(tr, "_optimizer", second_phase)
    with pytest.raises(KeyboardInterrupt, match="after step 2: no checkpoint was written yet in "):
        personalize(generic, [heads[2]], tmp_path / "phases", steps=4,
                    overrides=["train.personalize_code_fraction=0.5"])


def test_a_resume_on_a_root_a_new_person_was_prepared_into_names_the_folders_to_give(heads, tmp_path):
    # prepare NEW.mp4 --out ROOT (the README's way to put a new person in the training data's expression space) then
    # train --data ROOT --out GEN again, to continue GEN: refused with 'resume with the same data', though --data was
    # the same folder; what continues it is its own identities' folders (and personalize adds the new one).
    root = tmp_path / "root"
    first = _copy(heads[:2], root)
    cfg = load_config("tiny", ["train.steps=2"])
    train(cfg, root, tmp_path / "gen")
    _copy(heads[2:3], root)
    with pytest.raises(CheckpointError, match="new: .*" + re.escape(heads[2].name) + ".*--data "
                       + re.escape(" ".join(str(p) for p in first)) + ".*personalize"):
        train(load_config("tiny", ["train.steps=4"]), root, tmp_path / "gen")
    assert train(load_config("tiny", ["train.steps=4"]), first, tmp_path / "gen").resumed_from == 2


def test_a_session_with_nothing_to_train_keeps_the_run_s_steps_and_time_limit(heads, generic, tmp_path):
    # `train --steps 2` on a run stopped at step 4 of 8 said 'nothing to train' and yet wrote train.steps 2 into its
    # config.yaml and checkpoint: info said '4 of 2', personalize no longer noted the run unfinished, and a rerun with
    # its own config.yaml (as a refused resume is told to give) trained nothing. A session that takes no step keeps
    # the run's own steps and time limit; one that trains records its new ones, as before.
    from fastminerf.cli import run_info

    gen = tmp_path / "gen"
    cfg = load_config("tiny", ["train.steps=8", "train.checkpoint_every=2", "train.log_every=1"])

    _stopped_at_step_4(cfg, heads[:2], gen)
    for change in (["train.steps=2"], ["train.max_seconds=1e-9"]):
        again = train(load_config("tiny", [*change, "train.checkpoint_every=2", "train.log_every=1"]), heads[:2], gen)
        assert again.resumed_from == again.step == 4
        saved = load_run(gen)[0]
        assert (saved.train.steps, saved.train.max_seconds) == (8, None), change
        assert load_config(gen / "config.yaml").train.steps == 8
        info = run_info(gen)
        assert (info["step"], info["total_steps"], info["max_seconds"]) == (4, 8, None), change
    assert any("not finished" in n for n in personalize(gen, [heads[2]], tmp_path / "p", steps=2).notes)
    assert train(load_config(gen / "config.yaml"), heads[:2], gen).step == 8
    fewer = train(load_config("tiny", ["train.steps=10", "train.checkpoint_every=2"]), heads[:2], gen)
    assert fewer.step == 10 and load_run(gen)[0].train.steps == 10  # a session that trains records its steps
    p = tmp_path / "p"
    pers = personalize(generic, [heads[2]], p, steps=4)
    assert pers.step == 4
    assert personalize(generic, [heads[2]], p, steps=2).step == 4
    assert load_run(p)[0].train.personalize_steps == 4 and load_config(p / "config.yaml").train.personalize_steps == 4
