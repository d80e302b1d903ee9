"""Procedural talking heads: settings outside the defaults, and the cameras checked against the pixels."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import imageio.v3 as iio
import numpy as np
import pytest

from fastminerf.data.heads import HeadModel, HeadParams
from fastminerf.data.layout import DatasetError
from fastminerf.data.synth import generate


def _run(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a hang fails the test instead of stalling the suite)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("fps", [0.0, -25.0, float("nan"), float("inf")])
def test_frame_rate_must_be_positive(tmp_path, fps):
    """fps 0 used to loop forever drawing blinks (a gap of 0 frames), a negative one failed deep in numpy."""
    out = _run(f"""
        from fastminerf.data.synth import generate
        try:
            generate({str(tmp_path / 'out')!r}, n_identities=1, n_frames=4, size=8, fps=float({str(fps)!r}))
        except ValueError as exc:
            print("ValueError:", exc)
    """)
    assert "ValueError: fps must be" in out.stdout, out.stdout + out.stderr
    assert not (tmp_path / "out").exists()


def test_a_frame_rate_render_refuses_is_refused_before_data_is_written(tmp_path):
    """generate(fps=5000) checked its rate by hand (positive, finite) beside config.check_fps, the one check of a
    frame rate (at most 1000, a high-speed camera's; 2c3eebf): it wrote procedural heads at 5,000 frames a second
    whose every driven render (CameraPath at the data's rate) is refused once a run is trained on them."""
    with pytest.raises(ValueError, match="fps must be at most 1000 frames a second, got 5000"):
        generate(tmp_path / "out", n_identities=1, n_frames=2, size=8, fps=5000.0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value", [("focal_factor", 0.0), ("focal_factor", -1.65), ("camera_distance", 0.0),
                                        ("camera_distance", -3.8)])
def test_cameras_that_cannot_see_the_head_are_refused(tmp_path, key, value):
    """A zero focal length crashed after the first identity's setup, a negative one wrote transforms the loader
    refuses, a camera distance <= 0 put every camera inside or behind the head (frames of background only)."""
    with pytest.raises(ValueError, match=key):
        generate(tmp_path / "out", n_identities=1, n_frames=2, size=8, **{key: value})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", [-3, 1.5])
def test_a_seed_numpy_cannot_take_is_refused_naming_it_before_anything_is_written(tmp_path, seed):
    """synth --seed -3 (and demo --seed -3) made OUT and failed in numpy's words, 'expected non-negative integer',
    once the progress bar had started; the demo then left OUT/data behind."""
    with pytest.raises(ValueError, match=f"seed must be a whole number >= 0, got {seed}"):
        generate(tmp_path / "out", n_identities=1, n_frames=2, size=8, seed=seed)
    assert not (tmp_path / "out").exists()


def test_a_low_frame_rate_still_finishes():
    """Below 25/90 fps the gap between blinks rounded to 0 frames and drawing them never ended."""
    out = _run("""
        import numpy as np
        from fastminerf.data.synth import _talking
        e = _talking(np.random.default_rng(0), 20, 0.2)
        print("blinks", int((e[:, 2] > 0).sum()))
    """, timeout=60)
    assert out.returncode == 0 and "blinks" in out.stdout, out.stderr


def test_known_head_points_project_onto_the_rendered_head(tmp_path):
    """Project points of the head (eyes, nose tip, mouth) with each frame's written camera and intrinsics
    (OpenGL camera-to-head, camera looking down -z, +y up): they land on the rendered head (mask), the person's
    left eye (+x) on the viewer's right, and inside the written face box."""
    root = tmp_path / "d"
    generate(root, n_identities=1, n_frames=3, size=48, seed=4, novel_frames=1, max_yaw_deg=25.0, max_roll_deg=15.0)
    d = root / "id000"
    head = HeadModel(HeadParams.from_json(json.loads((d / "synth_identity.json").read_text())["params"]))
    p = head.params
    points = {
        "eye_left": (p.eye_x, p.eye_y, head._eye_z + p.eye_r),
        "eye_right": (-p.eye_x, p.eye_y, head._eye_z + p.eye_r),
        "nose_tip": (0.0, head._nose_y - 0.07 * p.nose_size, head._nose_z + 0.12 * p.nose_size),
        "chin": (0.0, p.mouth_y - 0.15, head._mouth_z - 0.05),
    }
    checked = 0
    for split in ("train", "val", "novel"):
        tr = json.loads((d / f"transforms_{split}.json").read_text())
        fx, fy, cx, cy = tr["intrinsics"]
        for fr in tr["frames"]:
            c2w = np.array(fr["transform_matrix"], dtype=np.float64)
            assert np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-5) and np.linalg.det(c2w[:3, :3]) > 0
            w2c = np.linalg.inv(c2w)
            mask = iio.imread(d / fr["mask_path"]) > 127
            y0, y1, x0, x1 = fr["bbox"]
            uv = {}
            for name, pt in points.items():
                cam = w2c @ np.array([*pt, 1.0])
                assert cam[2] < 0, (name, "behind the camera")
                u, v = fx * cam[0] / -cam[2] + cx, -fy * cam[1] / -cam[2] + cy
                uv[name] = (u, v)
                assert mask[int(v), int(u)], (split, fr["file_path"], name, u, v)
                assert y0 * 48 <= v <= y1 * 48 and x0 * 48 <= u <= x1 * 48, (name, u, v, fr["bbox"])
            assert uv["eye_left"][0] > uv["eye_right"][0]
            assert uv["nose_tip"][1] > max(uv["eye_left"][1], uv["eye_right"][1])
            checked += 1
    assert checked == 4


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_interrupted_generation_is_redone_by_the_same_call(tmp_path, monkeypatch):
    """synth stopped part way (Ctrl-C, a kill) left its finished identities marked as a generated dataset, so the same
    command run again was refused ('already holds a generated dataset ...; pass --overwrite'); and stopped between an
    identity's transforms and its marker, the half-written identity read as a folder the generator did not write,
    which even --overwrite refused to replace. synth.json, written last, marks a finished generation: without it the
    same call redoes the folder, to the same bytes as an uninterrupted one."""
    import fastminerf.data.synth as synth

    args = dict(n_identities=3, n_frames=6, size=16, seed=0, novel_frames=1)
    generate(tmp_path / "straight", **args)
    straight = _tree(tmp_path / "straight")

    def stop_in_second(done, total):  # in the second identity's frames
        if done > 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "a", progress=stop_in_second, **args)
    generate(tmp_path / "a", **args)
    assert _tree(tmp_path / "a") == straight

    real = synth.write_transforms

    def stop_after_transforms(d, split, *a, **k):  # the second identity's train transforms written, then stopped
        real(d, split, *a, **k)
        if d.name == "id001":
            raise KeyboardInterrupt

    monkeypatch.setattr(synth, "write_transforms", stop_after_transforms)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "b", **args)
    monkeypatch.setattr(synth, "write_transforms", real)
    generate(tmp_path / "b", **args)
    assert _tree(tmp_path / "b") == straight
    with pytest.raises(FileExistsError, match="already holds a generated dataset"):  # a finished one is kept
        generate(tmp_path / "b", **args)


def test_a_stopped_generation_says_how_to_finish_it(tmp_path):
    """Ctrl-C in synth printed only 'interrupted', not that the folder is unfinished nor what to do about it."""
    def stop(done, total):
        if done > 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as stopped:
        generate(tmp_path / "out", n_identities=2, n_frames=6, size=16, seed=0, novel_frames=1, progress=stop)
    assert str(stopped.value) == (f"before {tmp_path / 'out'}/synth.json was written: rerun the same command to "
                                  "generate it again")


def test_a_root_synth_left_unfinished_is_refused_as_data_not_read_in_part(tmp_path):
    # synth stopped part way leaves its finished identities beside one it had begun (marked, without transforms):
    # train --data ROOT then trained on the finished ones alone without a word. A root holding an identity the
    # generator began and did not finish is refused, naming it and the way to finish it.
    from fastminerf.data import load_dataset

    def stop_in_second(done, total):  # in the second identity's frames
        if done > 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "a", n_identities=3, n_frames=6, size=16, seed=0, novel_frames=1, progress=stop_in_second)
    with pytest.raises(DatasetError, match=r"stopped before it finished id001, id002 here: rerun the same synth command"):
        load_dataset(tmp_path / "a", splits=("train",))
    load_dataset(tmp_path / "a" / "id000", splits=("train",))  # a finished identity named on its own still loads


@pytest.mark.parametrize("stop", ["between identities", "between transforms files"])
def test_a_root_synth_stopped_between_writes_is_refused_as_data(tmp_path, monkeypatch, stop):
    # Stopped after one identity's last file and before the next one was begun (marked), or between the transforms
    # files of one identity, a root read as the identities written so far (the one begun with its train split alone)
    # without a word: every identity synth will write is marked unfinished until its transforms are all written.
    from fastminerf.data import load_dataset, synth

    real_png, real_transforms = synth.write_png, synth.write_transforms

    def png(path, *a, **k):
        if stop == "between identities" and path.parent.name == "id001" and path.name == "bg.png":
            raise KeyboardInterrupt
        return real_png(path, *a, **k)

    def transforms(d, split, *a, **k):
        if stop == "between transforms files" and d.name == "id001" and split == "val":
            raise KeyboardInterrupt
        return real_transforms(d, split, *a, **k)

    monkeypatch.setattr(synth, "write_png", png)
    monkeypatch.setattr(synth, "write_transforms", transforms)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "a", n_identities=3, n_frames=6, size=16, seed=0, novel_frames=1)
    with pytest.raises(DatasetError, match=r"stopped before it finished id001, id002 here: rerun the same synth command"):
        load_dataset(tmp_path / "a", splits=("train",))
    monkeypatch.undo()
    generate(tmp_path / "a", n_identities=3, n_frames=6, size=16, seed=0, novel_frames=1)
    assert load_dataset(tmp_path / "a", splits=("train", "val", "novel")).identities == ["id000", "id001", "id002"]


def test_generated_identities_gathered_in_a_folder_are_not_removed_as_a_stopped_generation(tmp_path):
    """A folder without synth.json holding generated identity folders was taken for a generation stopped part way,
    and synth into it removed them all: finished identities copied there (renamed, with the user's notes beside
    them) were deleted without --overwrite, and ones linked there ended in 'Cannot call rmtree on a symbolic link',
    naming nothing. Only the folders this call writes (the same names) are redone; the others are refused, named."""
    args = dict(n_identities=1, n_frames=6, size=16, seed=0, novel_frames=1)
    src = generate(tmp_path / "src", n_identities=2, n_frames=6, size=16, seed=3, novel_frames=1)
    mine = tmp_path / "mine"
    mine.mkdir()
    import shutil

    shutil.copytree(src[0], mine / "alice")
    (mine / "alice" / "NOTES.txt").write_text("kept")
    with pytest.raises(FileExistsError, match=r"alice.*not one this call writes.*--overwrite"):
        generate(mine, **args)
    assert (mine / "alice" / "NOTES.txt").read_text() == "kept" and not (mine / "id000").exists()
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "id000").symlink_to(src[1])
    with pytest.raises(FileExistsError, match=r"id000 holds a dataset the generator did not write"):
        generate(linked, **args)
    assert (src[1] / "transforms_train.json").is_file() and (linked / "id000").is_symlink()


def test_a_second_generation_into_a_folder_being_generated_is_refused(tmp_path):
    """Two ``synth`` into one folder at once (a job started twice): the second, finding no ``synth.json`` (the first
    writes it last), took the first's identity folders for a generation stopped part way and removed them under it,
    and both failed ('Directory not empty', 'The directory does not exist'), or with another --seed the folder mixed
    two datasets. The folder is held (OUT/.lock) while a generation writes it: the second is refused, naming the
    folder and the process, and the first's files stay; a .lock left behind by one that ended does not block."""
    import fcntl
    import os

    from fastminerf.data.synth import generate

    out = tmp_path / "heads"
    out.mkdir()
    (out / "id000").mkdir()
    (out / "id000" / "synth_identity.json").write_text("{}")  # the first's, part way
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(str(os.getpid()))
        held.flush()
        with pytest.raises(OSError, match=f"{out} is in use by another.*process {os.getpid()}"):
            generate(out, n_identities=1, n_frames=2, size=8)
        assert (out / "id000" / "synth_identity.json").read_text() == "{}"
    generate(out, n_identities=1, n_frames=2, size=8)  # released: a leftover .lock file is no obstacle
    assert (out / "synth.json").is_file()


def test_a_folder_holding_a_dataset_the_generator_did_not_write_is_refused_untouched(tmp_path):
    """synth into a folder of the user's whose identity folder has a generated one's name (a hand-made or converted
    id000) is refused, as it was; since synth locks its folder (OUT/.lock, 68bddd3) before it looks at it, the refusal
    left that .lock among the user's files. The user's data is refused before the lock: the folder is as it was."""
    import shutil

    src = generate(tmp_path / "src", n_identities=1, n_frames=2, size=8)
    mine = tmp_path / "mine"
    shutil.copytree(src[0], mine / "id000")
    (mine / "id000" / "synth_identity.json").unlink()  # not the generator's: the user's own
    before = sorted(p.relative_to(mine) for p in mine.rglob("*"))
    with pytest.raises(FileExistsError, match=r"id000 holds a dataset the generator did not write"):
        generate(mine, n_identities=1, n_frames=2, size=8)
    assert sorted(p.relative_to(mine) for p in mine.rglob("*")) == before


def test_a_rerun_into_a_generated_dataset_names_its_first_identity(tmp_path):
    """synth run again into its dataset (the same command, or into a root an earlier version generated) is refused
    naming one identity folder there, 'already holds a generated dataset (id001, ...)': the first the filesystem
    listed, not the first by name, so the user read it as a dataset that lacks id000. The folders are taken in name
    order, as the readers (find_identity_dirs) take them."""
    generate(tmp_path / "d", n_identities=3, n_frames=4, size=16, seed=0, novel_frames=1)
    for _ in range(4):  # the listing order of a folder follows its history on some filesystems
        (tmp_path / "d" / "id000").rename(tmp_path / "d" / "tmp")
        (tmp_path / "d" / "tmp").rename(tmp_path / "d" / "id000")
        with pytest.raises(FileExistsError, match=r"already holds a generated dataset \(id000, \.\.\.\)"):
            generate(tmp_path / "d", n_identities=3, n_frames=4, size=16, seed=0, novel_frames=1)


def test_a_refused_synth_draws_no_progress_line(tmp_path, capsys):
    """synth run again into a dataset it generated (or into one an earlier version generated) drew an empty
    'synth 0/? frames' progress line before its refusal ('already holds a generated dataset'), which read as a
    generation that began and broke; the bar is drawn from the first frame on, as train's from its first step."""
    from fastminerf.cli import main

    args = ["synth", str(tmp_path / "d"), "--identities", "2", "--frames", "4", "--size", "16", "--novel-frames", "1",
            "--no-contact-sheet"]
    assert main(args) == 0
    assert "frames" in capsys.readouterr().out  # the bar of a generation that runs
    assert main(args) == 2
    out = capsys.readouterr()
    assert "already holds a generated dataset" in out.err and not out.out.strip(), out


def test_first_identity_writes_the_heads_a_larger_generation_writes_under_their_names(tmp_path):
    """--first-identity K (a new person for personalize) writes idK ..., byte for byte the heads a generation of more
    identities with the same seed writes under those names; a negative or fractional K is refused by name."""
    from fastminerf.cli import main

    full = generate(tmp_path / "all", n_identities=3, n_frames=4, size=16, seed=2)
    later = generate(tmp_path / "later", n_identities=1, n_frames=4, size=16, seed=2, first_identity=2)
    assert [d.name for d in later] == ["id002"]
    files = sorted(p.relative_to(full[2]) for p in full[2].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(later[0]) for p in later[0].rglob("*") if p.is_file())
    assert all((full[2] / f).read_bytes() == (later[0] / f).read_bytes() for f in files)
    assert json.loads((tmp_path / "later" / "synth.json").read_text())["settings"]["first_identity"] == 2
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="first_identity"):
            generate(tmp_path / "bad", n_identities=1, n_frames=2, size=8, first_identity=bad)
    assert main(["synth", str(tmp_path / "bad"), "--first-identity", "-1", "--frames", "2", "--size", "8"]) == 2
    assert not (tmp_path / "bad").exists()
