"""Data at scale: memory that must not grow with the number of frames (long videos, many people).

The inputs are small (a few procedural frames whose records are repeated to make long splits), the bounds are per
frame: a step that holds something per frame shows it at 40 frames as at 40,000.
"""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fastminerf import load_config, load_dataset
from fastminerf.data.synth import generate


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """One procedural head, 4 training frames at 128 px (masks of 16 KiB each)."""
    root = tmp_path_factory.mktemp("heads")
    generate(root, n_identities=1, n_frames=5, size=128, seed=0, novel_frames=1)
    return sorted(p for p in root.iterdir() if p.is_dir())[0]


def _long(heads: Path, out: Path, frames: int) -> Path:
    """An identity folder whose ``train`` split repeats ``heads``'s training frames to ``frames`` frames (the same
    image files; each frame decodes into its own array as a long video's would)."""
    out.mkdir(parents=True)
    for name in ("bg.png", "train"):
        (out / name).symlink_to((heads / name).resolve())
    meta = json.loads((heads / "transforms_train.json").read_text())
    recs = meta["frames"]
    meta["frames"] = [dict(recs[i % len(recs)], frame_index=i, time=i / 25.0) for i in range(frames)]
    (out / "transforms_train.json").write_text(json.dumps(meta))
    return out


def _peak_bytes(fn) -> int:
    """Peak bytes traced (NumPy's and Python's allocations) while ``fn()`` runs."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_carving_holds_one_mask_at_a_time_not_every_frames(heads, tmp_path):
    """Carving the occupancy grid (``model.occ_carve``, on in every preset) before training read every training
    frame's mask into one list: H x W bytes a frame held at once (15 GB for 60,000 frames at 512 px, ten people's
    5-minute videos), on top of the frame cache. It reads them one at a time, past the cache (kept there, the
    masks of a pass over every frame only push out what training draws, and grew the process by a further 2 MB a
    frame at 512 px through heap fragmentation): the peak does not grow with the number of frames, and the hull is
    the same cells."""
    from fastminerf.train import build_model, view_hull

    cfg = load_config("tiny")
    mask_bytes = 128 * 128
    peaks, hulls = {}, {}
    for n in (20, 200):
        data = load_dataset([_long(heads, tmp_path / f"long{n}", n)], splits="train")  # the default cache
        model = build_model(cfg, data)
        out = {}
        peaks[n] = _peak_bytes(lambda: out.setdefault("hull", view_hull(model, data)))
        hulls[n] = out["hull"]
        assert len(data.cache) == 0
    assert hulls[20] is not None and bool(hulls[20].any()) and not bool(hulls[20].all())
    assert np.array_equal(hulls[20].numpy(), hulls[200].numpy())  # the same four views, repeated
    # 180 more frames held would be 180 masks more; a bound of 20 leaves room for allocator noise
    assert peaks[200] - peaks[20] < 20 * mask_bytes, (peaks, mask_bytes)


# ---------------------------------------------------------------------------------------------- many identities

MANY = [f"id{k:04d}" for k in range(1000)]


def test_unknown_identity_among_a_thousand_names_a_few_not_all():
    """``render --identity`` with a name the 1,000-person model does not know (a typo, a person not trained) raised
    'unknown identity ...: the model knows [...]' with all 1,000 names, 9 KB of one error line, the closest name
    lost in it. Past a few names the message gives how many there are, the first few and the names closest to the
    one asked for; a model of a few people names them all, as before."""
    from fastminerf.render import RenderError, identity_id

    with pytest.raises(RenderError) as many:
        identity_id(MANY, "id1000")
    msg = str(many.value)
    assert len(msg) < 400, msg
    assert "'id1000'" in msg and "1000 identities" in msg and "id0000" in msg and "id0999" not in msg.split("closest")[0]
    assert "id0100" in msg.split("closest")[1]  # difflib's nearest names to the one asked for
    with pytest.raises(RenderError, match=r"the model knows \['a', 'b', 'c'\]"):
        identity_id(["a", "b", "c"], "d")


def test_the_models_own_identity_lookup_names_a_few_of_a_thousand_as_render_does():
    """MINeRF.identity_index, the same lookup as render.identity_id written a second time, kept the old message:
    every one of the 1,000 names in one KeyError. Both are one lookup now; the model's still raises KeyError."""
    import types

    from fastminerf.model import MINeRF
    from fastminerf.render import RenderError, identity_id

    model = types.SimpleNamespace(identity_names=MANY)
    assert MINeRF.identity_index(model, "id0007") == identity_id(model, "id0007") == 7
    with pytest.raises(KeyError) as many:
        MINeRF.identity_index(model, "id1000")
    with pytest.raises(RenderError) as same:
        identity_id(model, "id1000")
    assert many.value.args[0] == str(same.value) and len(many.value.args[0]) < 400


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """24 people (copies of one procedural head at 16 px, 3 training frames each) and a tiny run trained on them."""
    import shutil

    from fastminerf.train import train

    base = tmp_path_factory.mktemp("one")
    generate(base, n_identities=1, n_frames=4, size=16, seed=0, novel_frames=1)
    head = sorted(p for p in base.iterdir() if p.is_dir())[0]
    root = tmp_path_factory.mktemp("crowd")
    for k in range(24):
        shutil.copytree(head, root / f"p{k:04d}")
    run = tmp_path_factory.mktemp("run") / "run"
    train(load_config("tiny", ["train.steps=2"]), [root], run)
    return root, run


def test_resume_with_other_people_names_the_difference_not_everyone(crowd, tmp_path):
    """Resuming a run of many people with one person gone (or one frame more for one person) was refused naming every
    identity twice ('trained on identities [...]; --data now has [...]'), or with the training-frame counts of every
    identity twice and their names: 3,000 items for 1,000 people, the person that differs somewhere inside. The
    refusal names the identities that differ, and the rest by count."""
    import shutil

    from fastminerf.train import CheckpointError, train

    root, run = crowd
    fewer = tmp_path / "fewer"
    shutil.copytree(root, fewer, ignore=lambda d, names: ["p0010"] if Path(d) == root else [])
    with pytest.raises(CheckpointError) as gone:
        train(load_config("tiny", ["train.steps=4"]), [fewer], run)
    msg = str(gone.value)
    assert "p0010" in msg and "p0020" not in msg and len(msg) < 600, msg

    longer = tmp_path / "longer"
    shutil.copytree(root, longer)
    path = longer / "p0010" / "transforms_train.json"
    meta = json.loads(path.read_text())
    meta["frames"].append(dict(meta["frames"][-1], frame_index=99, time=99 / 25.0))
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="training frames") as moved:
        train(load_config("tiny", ["train.steps=4"]), [longer], run)
    msg = str(moved.value)
    assert "p0010" in msg and "p0020" not in msg and len(msg) < 600, msg


def test_info_and_eval_notes_of_many_people_are_a_few_lines(crowd, tmp_path, capsys, monkeypatch):
    """``fastminerf info`` on a run of 1,000 people listed every one with their frame count (250 lines of table), and
    eval's note of the people whose LMD and EAR count fewer frames named each (one 20 KB line when mediapipe finds no
    face in tiny renders). Both give the first few and how many more; ``info --json`` and metrics.json keep
    every person."""
    from fastminerf.cli import main

    monkeypatch.setenv("COLUMNS", "100")
    root, run = crowd
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "p0000 (3)" in out and "p0020" not in out and "and 16 more" in out, out
    assert main(["info", str(run), "--json"]) == 0
    assert "p0020" in capsys.readouterr().out
    pytest.importorskip("mediapipe")  # LMD and its note need it; at 16 px it finds no face in any frame
    assert main(["eval", "--run", str(run), "--data", str(root), "--split", "val"]) == 0
    out = capsys.readouterr().out
    note = [line for line in out.splitlines() if line.startswith("LMD and EAR over fewer frames")]
    assert note and "p0020" not in note[0] and "and 16 more" in note[0], note


def test_recording_errors_costs_the_batch_not_every_identitys_map(crowd):
    """Each training step with error-map sampling (``sampler.error_fraction``, the cpu and gpu presets) fed the error
    maps through two bincounts over every cell of every identity's map, 16 MB of temporaries a step for 1,000 people
    (1.7 ms of a tiny step at 1,000, 0.1 ms at 10), for a batch that touches a few frames' people. It works on the
    cells the batch hit; the maps come out the same."""
    import torch

    from fastminerf.data.rays import ERROR_MOMENTUM, RaySampler

    root, _ = crowd
    data = load_dataset([root], splits="train")
    sampler = RaySampler(data, "train", batch_size=256, frames_per_batch=4, error_fraction=0.5, seed=0)
    expect = sampler.error_map.copy()
    for step in range(3):
        batch = sampler.sample()
        err = torch.rand(len(batch), generator=torch.Generator().manual_seed(step)).double()
        r = sampler.error_resolution
        ident = data.table("train").identity[batch.frame.numpy()]
        cells = (batch.pixel[:, 1].numpy() * r // 16, batch.pixel[:, 0].numpy() * r // 16)  # 16 px frames
        for key in set(zip(ident.tolist(), cells[0].tolist(), cells[1].tolist())):
            sel = (ident == key[0]) & (cells[0] == key[1]) & (cells[1] == key[2])
            mean, old = float(err.numpy()[sel].mean()), expect[key]
            expect[key] = mean if np.isnan(old) else old + ERROR_MOMENTUM * (mean - old)
        peak = _peak_bytes(lambda: sampler.record_errors(batch.frame, batch.pixel, err))
        assert peak < sampler.error_map.nbytes / 2, (peak, sampler.error_map.nbytes)
    np.testing.assert_allclose(sampler.error_map, expect, rtol=1e-12, equal_nan=True)


def test_data_found_beside_a_moved_run_of_many_people_names_a_few_of_them(crowd, tmp_path):
    """A run whose data is gone from its recorded place and whose relative place holds none of its people was refused
    naming every identity of the run ('holds none of the run's identities [...]': 1,000 names for 1,000 people)."""
    import os
    import shutil

    from fastminerf.data.layout import DatasetError
    from fastminerf.train import load_run, run_data_paths

    root, run = crowd
    other = tmp_path / "other"
    shutil.copytree(root / "p0000", other / "q0000")
    meta = load_run(run)[2]
    meta.update(data_paths=[str(tmp_path / "gone")], data_relative=[os.path.relpath(other, run)])
    with pytest.raises(DatasetError, match="holds none of the run.s people") as none:
        run_data_paths(meta)
    msg = str(none.value)
    assert "p0000" in msg and "p0020" not in msg and "24 identities" in msg, msg
