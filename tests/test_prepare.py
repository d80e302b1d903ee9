"""`fastminerf prepare` on short pieces of real talking-face clips, and its geometry on exact synthetic data.

The real clips live outside the repository, in ``../shared/data/real`` (or ``$FASTMINERF_REAL_DATA``); tests that
need them skip when the folder is absent. Everything else (pose math, camera convention, background, errors on
bad input) runs on data made here.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fastminerf.config import PrepareConfig
from fastminerf.data import camera_rays, load_dataset
from fastminerf.data.layout import read_landmarks, read_transforms

REAL = Path(os.environ.get("FASTMINERF_REAL_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"))
CLIPS = ("02_hdtf_WDA_AlexandriaOcasioCortez_000.mp4", "09_retalking_face5_woman_glasses.mp4")
THIRD = "04_hdtf_WDA_BobMenendez_000.mp4"
FRAMES = 30
SIZE = 128

needs_real = pytest.mark.skipif(not all((REAL / c).is_file() for c in CLIPS + (THIRD,)),
                                reason=f"real clips not found in {REAL} (set FASTMINERF_REAL_DATA)")

REPROJECTION_MEDIAN_PX = 2.0
"""Median distance (pixels of the 128 px frames) between landmarks found in the written frames and the
canonical face's rigid landmarks projected through the written cameras. The canonical face is the mean of all
people, so a person's own face shape adds about a pixel; tracking noise adds a fraction of one."""

REPROJECTION_P90_PX = 4.0
"""90th percentile of the same distances (the mouth-adjacent and contour points of the rigid set move a little
with expressions)."""

OWN_LANDMARKS_MEDIAN_PX = 1.5
"""Median distance between a frame's written head-space landmarks (``landmarks.npz``: its own face, pose removed by
a similarity, expression kept), projected through its written camera, and the landmarks tracked again in the written
frame (the camera is a perspective fit of the rigid points, smoothed over time)."""

MAX_STEP_DEG = 3.0
"""Largest head rotation between consecutive frames at 25 fps: talking heads turn well under 75 degrees/s, and
tracking jitter (a degree or two frame to frame on raw mediapipe poses) must be smoothed away."""

MOUTH_R2 = 0.8
"""Share of the variance of the mouth opening of both people explained by ONE linear map from the shared
expression coefficients."""


def _cfg(**kw) -> PrepareConfig:
    base = dict(size=SIZE, max_frames=FRAMES, expression_dim=12, background_frames=30)
    base.update(kw)
    return PrepareConfig(**base)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not all((REAL / c).is_file() for c in CLIPS + (THIRD,)):
        pytest.skip(f"real clips not found in {REAL}")
    from fastminerf.prepare import prepare

    root = tmp_path_factory.mktemp("prepared")
    result = prepare([REAL / c for c in CLIPS], root, _cfg())
    return root, result


def _rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    rel = np.einsum("bji,bjk->bik", a, b)  # a^T b
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)
    return np.degrees(np.arccos(cos))


# ------------------------------------------------------------------------------------------------ real clips


@needs_real
def test_every_frame_tracked_and_layout_loads(prepared):
    root, result = prepared
    assert [v.status for v in result.videos] == ["done", "done"], [v.error for v in result.videos]
    for v in result.videos:
        assert (v.frames_total, v.frames_used, v.frames_dropped) == (FRAMES, FRAMES, 0)
        assert v.splits == {"train": 24, "val": 3, "test": 3}
        for f in ("bg.png", "audio.wav", "contact_sheet.png", "prepare.json"):
            assert (v.out_dir / f).is_file(), f
    data = load_dataset(root, splits=("train", "val", "test"))
    assert sorted(data.identities) == sorted(Path(c).stem for c in CLIPS)
    t = data.table("train")
    assert t.width == t.height == SIZE
    # The last frames of each video are val then test, in time order.
    for v in result.videos:
        idx = {s: read_transforms(v.out_dir / f"transforms_{s}.json").frame_index for s in ("train", "val", "test")}
        assert idx["train"].max() < idx["val"].min() and idx["val"].max() < idx["test"].min()
        assert idx["test"].max() == FRAMES - 1
        # listed in time order within each file: the last-listed training frames, which frame_code_from_last and
        # shift_from_last take (docs/DATASET.md), are the clip's latest
        for s in ("train", "val", "test"):
            times = read_transforms(v.out_dir / f"transforms_{s}.json").time
            assert (np.diff(idx[s]) > 0).all() and (np.diff(times) > 0).all(), (s, idx[s], times)
    import wave

    with wave.open(str(result.videos[0].out_dir / "audio.wav")) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        assert w.getnframes() / 16000 == pytest.approx(FRAMES / 25.0, abs=0.05)


@needs_real
def test_dataset_md_tree_names_every_file_and_folder_prepare_writes(prepared):
    """docs/DATASET.md's tree (the layout's contract) left out masks/, landmarks.npz, the root's
    expression_basis.npz and prepare.log, and prepare's own contact_sheet.png, prepare.json and .prepare/: each
    described elsewhere, none where a reader of a prepared folder looks first. Every entry of a prepared root and of
    an identity folder in it (hidden ones included) is named there, and prepare.log, which the command writes."""
    from tests.test_docs import _dataset_tree, dataset_tree_misses

    root, result = prepared
    folder = result.videos[0].out_dir
    missing = dataset_tree_misses([root, folder], {v.out_dir.name: "<identity>" for v in result.videos})
    assert not missing, f"docs/DATASET.md's tree does not name what prepare writes: {missing}"
    assert "prepare.log" in _dataset_tree()  # the command's (cli: mediapipe's start-up notices)


@needs_real
def test_canonical_landmarks_reproject_onto_tracked_ones(prepared):
    """Track the written frames again (independently of prepare's own tracking) and compare with the canonical
    face projected through the written intrinsics and camera-to-head matrices."""
    from fastminerf.prepare import ExpressionBasis
    from fastminerf.prepare.pose import project
    from fastminerf.prepare.tracking import FaceTracker
    import imageio.v3 as iio

    root, result = prepared
    basis = ExpressionBasis.load(root)
    for v in result.videos:
        errs, own = [], []
        landmarks = read_landmarks(v.out_dir)
        row = {int(f): j for j, f in enumerate(landmarks.frame_index)}
        with FaceTracker() as tracker:
            for split in ("train", "val", "test"):
                meta = read_transforms(v.out_dir / f"transforms_{split}.json")
                k = meta.resolve_intrinsics(SIZE, SIZE)
                for path, c2w, f in zip(meta.image_paths, meta.c2w, meta.frame_index):
                    lm = tracker(np.asarray(iio.imread(path)))
                    assert lm is not None, path
                    tracked = lm[basis.stable, :2] * SIZE
                    proj = project(basis.canonical[basis.stable], c2w.astype(np.float64), k)
                    errs.append(np.linalg.norm(proj - tracked, axis=1))
                    # the frame's own head-space landmarks (landmarks.npz, every point, expression included)
                    mine = project(landmarks.points[row[int(f)]].astype(np.float64), c2w.astype(np.float64), k)
                    own.append(np.linalg.norm(mine - lm[:, :2] * SIZE, axis=1))
        errs, own = np.concatenate(errs), np.concatenate(own)
        assert np.median(errs) < REPROJECTION_MEDIAN_PX, (v.name, np.median(errs))
        assert np.percentile(errs, 90) < REPROJECTION_P90_PX, (v.name, np.percentile(errs, 90))
        assert np.median(own) < OWN_LANDMARKS_MEDIAN_PX, (v.name, np.median(own))
        assert np.percentile(own, 90) < REPROJECTION_P90_PX, (v.name, np.percentile(own, 90))
        assert landmarks.visible.mean() > 0.95  # near-frontal faces: a few points behind the nose and the cheeks


@needs_real
def test_poses_are_smooth_and_framed_like_the_synthetic_heads(prepared):
    root, result = prepared
    data = load_dataset(root, splits=("train",))
    for v in result.videos:
        meta = read_transforms(v.out_dir / "transforms_train.json")
        rot = meta.c2w[:, :3, :3].astype(np.float64)
        steps = _rotation_angle_deg(rot[:-1], rot[1:])
        assert steps.max() < MAX_STEP_DEG, (v.name, steps.max())
        dist = np.linalg.norm(meta.c2w[:, :3, 3], axis=1)
        assert np.abs(np.diff(dist)).max() < 0.02 * dist.mean()
        # The camera looks at the head: the head origin projects inside the central half of the frame.
        centre = -np.einsum("bji,bj->bi", rot, meta.c2w[:, :3, 3])  # origin in camera coordinates
        assert np.all(centre[:, 2] < 0) and np.all(np.abs(centre[:, :2] / centre[:, 2:3]) < 0.25)
        # Every head box holds the canonical face and the default training box contains the written one.
        lo, hi = np.array(meta.aabb[:3]), np.array(meta.aabb[3:])
        assert np.all(lo < -0.5) and np.all(hi > 0.3) and np.all(hi - lo < 5.0)
    assert data.expression_dim == 12


@needs_real
def test_prepared_data_trains_out_of_the_box(prepared, tmp_path):
    """`fastminerf train` reads the prepared root as it is: a few tiny-preset steps run, and rays of the face box
    pass through the written aabb."""
    import torch

    from fastminerf.config import load_config
    from fastminerf.data import RaySampler
    from fastminerf.train import train

    root, _ = prepared
    result = train(load_config("tiny", ["train.steps=4", "train.log_every=2"]), [root], tmp_path / "run")
    assert result.step == 4 and math.isfinite(result.loss)
    data = load_dataset(root, splits=("train",))
    batch = RaySampler(data, "train", batch_size=512, seed=0, face_fraction=1.0).sample()
    assert torch.all(batch.far > batch.near)  # every face ray crosses the head box


@needs_real
def test_smoothing_removes_jitter():
    """The same landmarks with and without temporal smoothing: the smoothed rotations change less frame to frame."""
    from fastminerf.prepare.pose import (
        camera_to_head,
        fit_canonical,
        identity_neutral,
        smooth_poses,
        solve_poses,
    )
    from fastminerf.prepare.tracking import FaceTracker
    from fastminerf.prepare.video import read_frames

    with FaceTracker() as tracker:
        lm = np.stack([tracker(f) for f in read_frames(REAL / CLIPS[0], 25.0, size=(256, 256), max_frames=FRAMES)])
    lm = lm.astype(np.float64) * np.array([256, 256, 256])
    canonical, stable = fit_canonical([lm], 1.2, 0.5)
    neutral, _ = identity_neutral(lm, canonical, stable)
    k = [1.65 * 256, 1.65 * 256, 128, 128]
    raw = solve_poses(lm, neutral, stable, k)
    smooth = smooth_poses(raw, np.arange(len(lm)), 1.0)
    accel = lambda p: np.abs(np.diff(camera_to_head(p)[:, :3, :3], n=2, axis=0)).mean()  # noqa: E731
    assert accel(smooth) < 0.7 * accel(raw)


@needs_real
def test_expression_space_is_shared_and_reused(prepared, tmp_path):
    """One linear map from the coefficients predicts the mouth opening of both people (the same coefficients
    mean the same expression), and a later prepare into the same root projects on the stored basis."""
    from fastminerf.data.layout import DatasetError
    from fastminerf.prepare import BASIS_FILE, PrepareError, prepare
    from fastminerf.prepare.expression import ExpressionBasis

    root, result = prepared
    xs, ys = [], []
    for v in result.videos:
        lm = np.load(v.out_dir / ".prepare" / "track.npz")["landmarks"]
        gap = np.linalg.norm(lm[:, 13, :2] - lm[:, 14, :2], axis=1) / np.linalg.norm(lm[:, 10, :2] - lm[:, 152, :2], axis=1)
        expr = np.concatenate([read_transforms(v.out_dir / f"transforms_{s}.json").expression for s in ("train", "val", "test")])
        xs.append(expr)
        ys.append(gap - np.median(gap))  # relative to the person's own neutral
        assert np.abs(np.median(expr, axis=0)).max() < 0.5  # the neutral face sits near 0
    x = np.concatenate(xs).astype(np.float64)
    y = np.concatenate(ys)
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    r2 = 1 - ((a @ coef - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert r2 > MOUTH_R2, r2

    # A new identity joins the same space: the stored basis is reused, not refitted.
    before = (root / BASIS_FILE).read_bytes()
    more = prepare([REAL / THIRD], root, _cfg(max_frames=20))
    assert more.basis_reused and more.videos[0].status == "done"
    assert (root / BASIS_FILE).read_bytes() == before
    names = {json.loads((d / "transforms_train.json").read_text())["expression_names"].__len__() for d in root.iterdir() if d.is_dir()}
    assert names == {12}
    space = ExpressionBasis.load(root).space_id
    assert load_dataset([root]).expression_space == space and space.startswith("pca12-")
    shutil.rmtree(root / Path(THIRD).stem)

    # Into another folder a new basis is fitted: its space differs, and the two folders are refused together.
    other = prepare([REAL / THIRD], tmp_path / "other", _cfg(max_frames=20))
    assert not other.basis_reused and ExpressionBasis.load(tmp_path / "other").space_id != space
    with pytest.raises(DatasetError, match="expression space"):
        load_dataset([root, tmp_path / "other"])
    # Given the first folder's basis (--basis), the new folder joins its space.
    with pytest.raises(PrepareError, match="one folder holds one expression space"):
        prepare([REAL / THIRD], tmp_path / "other", _cfg(max_frames=20, basis=str(root / BASIS_FILE)))
    joined = prepare([REAL / THIRD], tmp_path / "joined", _cfg(max_frames=20, basis=str(root / BASIS_FILE)))
    assert joined.basis_reused and joined.videos[0].status == "done"
    assert (tmp_path / "joined" / BASIS_FILE).read_bytes() == (root / BASIS_FILE).read_bytes()
    assert load_dataset([root, tmp_path / "joined"]).expression_space == space


@needs_real
def test_resume_skips_finished_work_and_redoes_interrupted_stages(tmp_path):
    from fastminerf.prepare import prepare

    root = tmp_path / "data"
    clip = REAL / CLIPS[1]
    calls = []

    def interrupt(stage, name, done, total):
        calls.append(stage)
        if stage == "frames" and done >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as stopped:
        prepare([clip], root, _cfg(max_frames=20), progress=interrupt)
    assert f"kept in {root}: rerun the same command to continue" in str(stopped.value)  # what Ctrl-C prints
    ident = root / clip.stem
    assert (ident / ".prepare" / "track.npz").is_file() and not (ident / ".prepare" / "frames.json").exists()
    assert not list(ident.glob("transforms_*.json"))

    first = prepare([clip], root, _cfg(max_frames=20))
    v = first.videos[0]
    assert v.status == "done" and "track" not in v.seconds and "frames" in v.seconds  # tracking came from the cache
    # what prepare wrote (not its lock, .lock, which every prepare into the folder holds and signs with its process)
    stamp = {p: p.stat().st_mtime_ns for p in ident.rglob("*") if p.is_file() and p.name != ".lock"}

    again = prepare([clip], root, _cfg(max_frames=20))
    assert again.videos[0].status == "skipped"
    assert {p: p.stat().st_mtime_ns for p in ident.rglob("*") if p.is_file() and p.name != ".lock"} == stamp
    # The same bytes with another modification time (a copy, a fresh checkout): still the same source.
    copy = tmp_path / "copy" / clip.name
    copy.parent.mkdir()
    shutil.copyfile(clip, copy)
    assert prepare([copy], root, _cfg(max_frames=20)).videos[0].status == "skipped"

    # Other settings: refused unless overwrite, never silently mixed.
    clash = prepare([clip], root, _cfg(max_frames=20, size=96))
    assert clash.videos[0].status == "failed" and "other settings" in clash.videos[0].error and "size" in clash.videos[0].error
    redo = prepare([clip], root, _cfg(max_frames=20, size=96, overwrite=True))
    assert redo.videos[0].status == "done"
    assert read_transforms(ident / "transforms_train.json").width == 96


@needs_real
def test_a_failing_video_does_not_stop_the_others(tmp_path):
    from fastminerf.cli import main

    noface = tmp_path / "noface.mp4"
    _write_noise_video(noface)
    broken = tmp_path / "broken.mov"
    broken.write_bytes(b"not a video")
    out = tmp_path / "data"
    rc = main(["prepare", str(noface), str(REAL / CLIPS[1]), str(broken), "--out", str(out), "--size", "64",
               "--max-frames", "15", "--min-frames", "5", "--focal-factor", "2.5"])
    assert rc == 2
    written = read_transforms(out / Path(CLIPS[1]).stem / "transforms_train.json")
    assert written.width == 64 and written.intrinsics[0] == pytest.approx(2.5 * 64)
    done = json.loads((out / Path(CLIPS[1]).stem / "prepare.json").read_text())
    assert done["frames_used"] == 15
    assert not (out / "noface" / "transforms_train.json").exists()
    assert not (out / "broken").exists()


def _write_video(path: Path, frames) -> None:
    import imageio_ffmpeg

    w = imageio_ffmpeg.write_frames(str(path), (frames[0].shape[1], frames[0].shape[0]), fps=25, macro_block_size=16,
                                    ffmpeg_log_level="error", quality=9)
    w.send(None)
    for f in frames:
        w.send(np.ascontiguousarray(f).tobytes())
    w.close()


def _drivers_read_only(monkeypatch, run: Path) -> None:
    """RUN/drivers as another user sees it (root writes anywhere): writer.check_folder refuses it."""
    from fastminerf.data import writer

    real = writer.check_folder

    def read_only(folder, what, error=ValueError):
        if Path(folder) == run / "drivers":
            raise error(f"{folder}: cannot make the folder for {what} ({run} cannot be written)")
        return real(folder, what, error)

    monkeypatch.setattr(writer, "check_folder", read_only)


def _head_video_run(tmp_path: Path) -> Path:
    """A procedural head's 16 frames as TMP/head.mp4 (no sound), prepared into TMP/data at 64 px, and a tiny run of
    2 steps on it in TMP/run; returns the data root."""
    import imageio.v3 as iio

    from fastminerf.config import load_config
    from fastminerf.data.synth import generate
    from fastminerf.prepare import prepare
    from fastminerf.train import train

    d = generate(tmp_path / "synth", n_identities=1, n_frames=16, size=128, seed=0, novel_frames=1)[0]
    _write_video(tmp_path / "head.mp4", [iio.imread(p)[..., :3] for split in ("train", "val")
                                         for p in sorted((d / split).glob("[0-9][0-9][0-9][0-9].png"))])
    root = tmp_path / "data"
    assert prepare([tmp_path / "head.mp4"], root, PrepareConfig(size=64, expression_dim=4, min_frames=5)
                   ).videos[0].status == "done"
    train(load_config("tiny", ["train.steps=2"]), [root], tmp_path / "run")
    return root


def _write_noise_video(path: Path, frames: int = 15, size: int = 64) -> None:
    rng = np.random.default_rng(0)
    _write_video(path, [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(frames)])


def test_video_without_a_face_fails_naming_it(tmp_path):
    from fastminerf.prepare import prepare

    video = tmp_path / "nobody.mp4"
    _write_noise_video(video)
    result = prepare([video], tmp_path / "data", _cfg(min_frames=5))
    v = result.videos[0]
    assert v.status == "failed" and v.frames_total == 15 and v.frames_used == 0
    assert str(video) in v.error and "crop the video around the face" in v.error
    assert result.basis is None


def test_a_video_another_prepare_is_writing_fails_naming_that_prepare(tmp_path):
    """Two prepare of one video into one root at once (a job of an array started twice, or rerun with another --size
    while the first still ran) both wrote the identity folder: each said it had prepared the video, and the folder
    held one's frames under the other's files (found: --size 64 and --size 48 side by side, both 'done', the folder
    64 px). A prepare holds the identity folder (ROOT/<name>/.lock) from its check to its last file: a video whose
    folder another one holds fails, naming the folder and the process, and its folder is left as it is; a .lock
    left behind blocks nothing."""
    import fcntl

    from fastminerf.prepare import prepare

    video = tmp_path / "nobody.mp4"
    _write_noise_video(video)
    folder = tmp_path / "data" / "nobody"
    folder.mkdir(parents=True)
    with open(folder / ".lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(str(os.getpid()))
        held.flush()
        result = prepare([video], tmp_path / "data", _cfg(min_frames=5))
        v = result.videos[0]
        assert v.status == "failed" and str(folder) in v.error and f"process {os.getpid()}" in v.error, v.error
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]
    v = prepare([video], tmp_path / "data", _cfg(min_frames=5)).videos[0]  # released: the video's own failure
    assert v.status == "failed" and "crop the video around the face" in v.error


def test_a_prepare_whose_every_video_failed_names_the_roots_basis_as_it_is(tmp_path, capsys):
    """A prepare whose videos all failed (the one video another prepare was writing, a video without a face) into a
    root that holds an expression basis printed 'expression basis (0 coefficients, reused; space None)': the result
    gave the basis' file without its size and space. It gives the basis' own."""
    from fastminerf.cli import main
    from fastminerf.prepare import prepare
    from fastminerf.prepare.expression import ExpressionBasis

    rng = np.random.default_rng(0)
    comps = np.linalg.qr(rng.normal(size=(30, 4)))[0].T
    basis = ExpressionBasis(rng.normal(size=(10, 3)), np.arange(5), comps, 1.5, np.full(4, 0.25), 2.0, ("a",))
    (tmp_path / "data").mkdir()
    basis.save(tmp_path / "data")
    video = tmp_path / "nobody.mp4"
    _write_noise_video(video)
    result = prepare([video], tmp_path / "data", _cfg(min_frames=5))
    assert result.videos[0].status == "failed"
    assert (result.expression_dim, result.expression_space) == (4, basis.space_id)
    capsys.readouterr()
    assert main(["prepare", str(video), "--out", str(tmp_path / "data"), "--min-frames", "5", "--size", "64"]) == 2
    assert f"expression basis (4 coefficients, reused; space {basis.space_id})" in capsys.readouterr().out


@pytest.mark.parametrize("exclusive", [False, True])
def test_an_expression_basis_that_cannot_be_written_names_its_file(tmp_path, file_size_limit, exclusive):
    """prepare saves the root's expression_basis.npz through a temporary file of its own: on a full disk (here a file
    size limit) the whole prepare stopped with "error: [Errno 28] No space left on device", naming no file. The error
    names the basis, and no temporary file is left."""
    from fastminerf.prepare.expression import BASIS_FILE, ExpressionBasis

    rng = np.random.default_rng(0)
    comps = np.linalg.qr(rng.normal(size=(30, 4)))[0].T
    basis = ExpressionBasis(rng.normal(size=(10, 3)), np.arange(5), comps, 1.5, np.full(4, 0.25), 2.0, ("a",))
    with file_size_limit(1000), pytest.raises(OSError) as info:
        basis.save(tmp_path, exclusive=exclusive)
    assert info.value.filename == str(tmp_path / BASIS_FILE), str(info.value)
    assert list(tmp_path.iterdir()) == []


WIDE_FACE_PX = 160
"""Width the 512 px clip is shrunk to inside a 1280x720 wide shot: its face is then about 100 px, a seventh of the
frame's height, which mediapipe's short-range detector does not find in the whole frame."""

WIDE_LANDMARKS_MEDIAN_PX = 3.5
"""Median distance, in the original clip's pixels, between landmarks tracked in the wide shot (mapped back) and in
the clip itself: measured 2.3 (0.7 px of the wide shot's own pixels) on 02's first 30 frames."""


@needs_real
def test_a_small_face_in_a_wide_shot_is_found_and_tracked(prepared, tmp_path):
    import subprocess

    import imageio_ffmpeg

    from fastminerf.prepare import prepare

    wide = tmp_path / "wide.mp4"
    x0, y0, scale = 900, 400, WIDE_FACE_PX / 512
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(REAL / CLIPS[0]), "-frames:v",
                    str(FRAMES), "-vf", f"scale={WIDE_FACE_PX}:-2,pad=1280:720:{x0}:{y0}:gray", "-an", str(wide)], check=True)
    # Tracking the whole frame (the region off) finds no face at all.
    off = prepare([wide], tmp_path / "off", _cfg(track_region_scale=0))
    assert off.videos[0].status == "failed" and off.videos[0].frames_used == 0
    result = prepare([wide], tmp_path / "on", _cfg())
    v = result.videos[0]
    assert v.status == "done" and v.frames_used == FRAMES, v.error
    assert any("the face is small in the frame" in n for n in v.notes)
    # The crop holds the shrunk clip's face: inside the pasted 160 px picture, in source pixels.
    cx, cy, side = v.crop
    assert x0 - side / 2 < cx + side / 2 < x0 + WIDE_FACE_PX + side / 2 and side < 400
    own = np.load(tmp_path / "on" / "wide" / ".prepare" / "track.npz")["landmarks"][..., :2]
    ref = np.load(prepared[0] / Path(CLIPS[0]).stem / ".prepare" / "track.npz")["landmarks"][..., :2]
    err = np.linalg.norm((own - np.array([x0, y0])) / scale - ref, axis=-1)
    assert np.median(err) < WIDE_LANDMARKS_MEDIAN_PX
    assert read_transforms(tmp_path / "on" / "wide" / "transforms_train.json").width == SIZE


@needs_real
def test_a_raw_video_drives_a_trained_model_in_its_expression_space(prepared, tmp_path, capsys, decode_audio):
    import imageio_ffmpeg

    from fastminerf.cli import main
    from fastminerf.config import load_config
    from fastminerf.prepare.expression import ExpressionBasis
    from fastminerf.train import train

    root, _ = prepared
    train(load_config("tiny", ["train.steps=2"]), [root], tmp_path / "run")
    target = Path(CLIPS[0]).stem
    argv = ["render", "--run", str(tmp_path / "run"), "--identity", target, "--drive", str(REAL / THIRD),
            "--frames", "12", "--out", str(tmp_path / "drive.mp4")]
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"driven by {Path(THIRD).stem}:train" in out and "s of the driver's audio" in out
    frames = list(imageio_ffmpeg.read_frames(str(tmp_path / "drive.mp4")))
    assert tuple(frames[0]["size"]) == (SIZE, SIZE) and len(frames) - 1 == 12
    assert abs(len(decode_audio(tmp_path / "drive.mp4")) - 12 / 25 * 16000) < 1100
    # The driver was prepared in the training data's space, into the run's cache, which a second call reuses.
    driver = tmp_path / "run" / "drivers" / Path(THIRD).stem
    assert json.loads((driver / "transforms_train.json").read_text())["expression_space"] == ExpressionBasis.load(root).space_id
    stamp = (driver / "prepare.json").stat().st_mtime_ns
    assert main(argv[:-1] + [str(tmp_path / "again.mp4")]) == 0
    assert (driver / "prepare.json").stat().st_mtime_ns == stamp


@needs_real
def test_relative_poses_keep_a_real_target_in_its_own_framing(prepared):
    """One real person driven by another (benchmarks/transfer_poses.py's measures, on the two prepared clips): with
    the driver's cameras the head lands where the driver's crop had it (measured 11.4 px off at 128 px and 21 % off
    in size); with relative poses it moves about the target's usual place as far as the driver moves about its own."""
    from benchmarks.transfer_poses import placement
    from fastminerf.data import load_dataset
    from fastminerf.render import drive_path

    root, _ = prepared
    data = load_dataset([root], splits=("train",))
    train = data.table("train")
    for target, driver in ((0, 1), (1, 0)):
        rows, drows = train.frames_of(target), train.frames_of(driver)
        sway = placement(drive_path(data, data.identities[driver], data, "train", data.identities[driver], pose="driver"),
                         train.c2w[drows], train.intrinsics[drows])  # the driver about its own mean place
        got = {m: placement(drive_path(data, data.identities[target], data, "train", data.identities[driver], pose=m),
                            train.c2w[rows], train.intrinsics[rows]) for m in ("driver", "relative")}
        assert got["driver"]["scale"] > 0.15 and got["driver"]["offset_px"] > 2 * got["relative"]["offset_px"]
        assert got["relative"]["offset_px"] <= sway["offset_px"] + 1.0 and got["relative"]["scale"] < 0.05
        assert got["relative"]["pose_gap_deg"] < got["driver"]["pose_gap_deg"]


SYNTH_WIDE_MEDIAN_PX = 3.5
"""Median distance, in the 192 px close-up's pixels, between a procedural head's landmarks tracked in a wide shot
(the head shrunk to 96 px, mapped back) and in the close-up: measured 2.0 (1 px of the wide shot)."""


def test_a_procedural_head_in_a_wide_shot_is_found_without_real_clips(tmp_path):
    """The wide-shot search on data made here (mediapipe finds the procedural heads' faces), so that CI, which has
    no real clips, checks it too."""
    import cv2
    import imageio.v3 as iio

    from fastminerf.data.synth import generate
    from fastminerf.prepare import prepare

    d = generate(tmp_path / "synth", n_identities=1, n_frames=24, size=192, seed=0, novel_frames=1)[0]
    close = [iio.imread(p)[..., :3] for split in ("train", "val") for p in sorted((d / split).glob("[0-9][0-9][0-9][0-9].png"))]
    side, x0, y0 = 96, 900, 400
    wide = []
    for f in close:
        canvas = np.full((720, 1280, 3), 128, np.uint8)
        canvas[y0:y0 + side, x0:x0 + side] = cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA)
        wide.append(canvas)
    _write_video(tmp_path / "close.mp4", close)
    _write_video(tmp_path / "wide.mp4", wide)
    cfg = dict(size=64, expression_dim=6, min_frames=5)
    assert prepare([tmp_path / "wide.mp4"], tmp_path / "off", PrepareConfig(track_region_scale=0, **cfg)).videos[0].frames_used == 0
    got = prepare([tmp_path / "wide.mp4"], tmp_path / "on", PrepareConfig(**cfg)).videos[0]
    assert got.status == "done" and got.frames_used == len(close)
    assert any("the face is small in the frame" in n for n in got.notes)
    ref = prepare([tmp_path / "close.mp4"], tmp_path / "ref", PrepareConfig(**cfg)).videos[0]
    assert ref.status == "done" and not any("small in the frame" in n for n in ref.notes)
    own = np.load(tmp_path / "on" / "wide" / ".prepare" / "track.npz")["landmarks"][..., :2]
    base = np.load(tmp_path / "ref" / "close" / ".prepare" / "track.npz")["landmarks"][..., :2]
    err = np.linalg.norm((own - np.array([x0, y0])) * (192 / side) - base, axis=-1)
    assert np.median(err) < SYNTH_WIDE_MEDIAN_PX


def test_a_raw_video_drives_one_or_two_frames(tmp_path):
    """``render --drive VIDEO --frames 2`` (or 1) failed: the driver was prepared with max_frames 2, and prepare
    refuses a video of fewer than 3 frames ('only 2 frames (at least 3 needed)'). The driver now holds at least
    the frames asked for (render cuts the path to --frames)."""
    import imageio.v3 as iio

    from fastminerf.data.synth import generate
    from fastminerf.prepare import prepare
    from fastminerf.render import driver_from_video

    d = generate(tmp_path / "synth", n_identities=1, n_frames=8, size=128, seed=0, novel_frames=1)[0]
    _write_video(tmp_path / "head.mp4", [iio.imread(p)[..., :3] for split in ("train", "val")
                                         for p in sorted((d / split).glob("[0-9][0-9][0-9][0-9].png"))])
    assert prepare([tmp_path / "head.mp4"], tmp_path / "data", PrepareConfig(size=64, expression_dim=4, min_frames=5)
                   ).videos[0].status == "done"  # the training data's basis
    for n in (1, 2):
        out = driver_from_video(tmp_path / "head.mp4", tmp_path / "data" / "expression_basis.npz", tmp_path / "drivers",
                                64, max_frames=n)
        assert len(read_transforms(out / "transforms_train.json").c2w) >= n


def test_a_short_raw_video_drives_at_its_rate_and_below_it(tmp_path):
    """A driver video of fewer than prepare's 10 frames at the rate it is read (a 0.36 s clip at 25 fps; the same
    clip at ``render --fps 10``, 4 frames) was refused, 'only 4 frames (at least 10 needed; a face was found in
    every one)', where ``--frames 4`` of it drove: render has no --min-frames to give, and a driver needs no val or
    test frames. Every frame of such a clip drives; a face missing from most frames is still refused."""
    import imageio.v3 as iio

    from fastminerf.data.synth import generate
    from fastminerf.prepare import prepare
    from fastminerf.render import RenderError, driver_from_video

    d = generate(tmp_path / "synth", n_identities=1, n_frames=24, size=128, seed=0, novel_frames=1)[0]
    frames = [iio.imread(p)[..., :3] for split in ("train", "val") for p in sorted((d / split).glob("[0-9][0-9][0-9][0-9].png"))]
    _write_video(tmp_path / "head.mp4", frames)
    assert prepare([tmp_path / "head.mp4"], tmp_path / "data", PrepareConfig(size=64, expression_dim=4, min_frames=5)
                   ).videos[0].status == "done"  # the training data's basis
    basis = tmp_path / "data" / "expression_basis.npz"
    _write_video(tmp_path / "short.mp4", frames[:9])  # 0.36 s at 25 fps
    for fps, n in ((None, 9), (10.0, 4)):
        out = driver_from_video(tmp_path / "short.mp4", basis, tmp_path / f"drivers{fps}", 64, fps=fps)
        assert len(read_transforms(out / "transforms_train.json").c2w) == n
    # a face in 4 of 30 frames: the detector's account, as before, not a 4-frame driver
    _write_video(tmp_path / "faceless.mp4", frames[:4] + [np.zeros_like(frames[0])] * 26)
    with pytest.raises(RenderError, match="a face was found in only 4 of 30 frames"):
        driver_from_video(tmp_path / "faceless.mp4", basis, tmp_path / "drivers_faceless", 64)


def test_a_raw_procedural_video_drives_a_model_trained_on_prepared_videos(tmp_path, capsys, monkeypatch):
    """``render --drive VIDEO`` without the real clips: videos of procedural heads, prepared, trained on for two
    steps, then a third head's video as the driver (CI runs this; the real-clip test adds sound)."""
    import imageio.v3 as iio

    from fastminerf.cli import main
    from fastminerf.config import load_config
    from fastminerf.data.synth import generate
    from fastminerf.prepare import prepare
    from fastminerf.prepare.expression import ExpressionBasis
    from fastminerf.train import train

    dirs = generate(tmp_path / "synth", n_identities=3, n_frames=24, size=128, seed=0, novel_frames=1)
    videos = []
    for d in dirs:
        _write_video(tmp_path / f"{d.name}.mp4", [iio.imread(p)[..., :3] for split in ("train", "val")
                                                 for p in sorted((d / split).glob("[0-9][0-9][0-9][0-9].png"))])
        videos.append(tmp_path / f"{d.name}.mp4")
    root = tmp_path / "data"
    result = prepare(videos[:2], root, PrepareConfig(size=64, expression_dim=6, min_frames=5))
    assert all(v.status == "done" for v in result.videos)
    # how far the held-out head poses are from the training ones, from the cameras written
    from fastminerf.metrics import rotation_gap_deg

    for v in result.videos:
        rot = {s: read_transforms(v.out_dir / f"transforms_{s}.json").c2w[:, :3, :3] for s in ("train", "val", "test")}
        assert set(v.pose_gaps) == {"val", "test"}
        for s in ("val", "test"):
            assert v.pose_gaps[s] == pytest.approx(float(rotation_gap_deg(rot[s], rot["train"]).mean()), abs=1e-4)
            assert v.pose_gaps[s] > 0.1  # the procedural heads keep turning
    # every prepared frame knows where its mouth and eyes are (their landmarks through its camera): inside its face
    # box, small parts of it, where the `video` preset's mouth and eye rays go
    from fastminerf.data.rays import eye_boxes, mouth_boxes

    data = load_dataset(root, splits=("train",))
    mouths, faces = mouth_boxes(data, "train"), data.table("train").bbox
    assert not np.isnan(mouths).any()
    assert (mouths[:, [0, 2]] >= faces[:, [0, 2]]).all() and (mouths[:, [1, 3]] <= faces[:, [1, 3]]).all()
    area = lambda b: (b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])  # noqa: E731
    assert (area(mouths) < area(faces) / 6).all() and (mouths[:, 0] > (faces[:, 0] + faces[:, 1]) / 2).all()  # lower half
    eyes = eye_boxes(data, "train")
    assert eyes.shape == (len(faces), 2, 4) and not np.isnan(eyes).any()
    for e in range(2):
        assert (eyes[:, e, [0, 2]] >= faces[:, [0, 2]]).all() and (eyes[:, e, [1, 3]] <= faces[:, [1, 3]]).all()
        assert (area(eyes[:, e]) < area(faces) / 10).all() and (eyes[:, e, 1] < mouths[:, 0]).all()  # above the mouth
    assert (eyes[:, 0, 3] <= eyes[:, 1, 2] + 0.02).all()  # the person's right eye on the image's left
    train(load_config("tiny", ["train.steps=2", "sampler.mouth_fraction=0.5", "sampler.eye_fraction=0.3"]), [root],
          tmp_path / "run")
    # a new person prepared in the model's expression space is pointed at personalize (and, with the threshold at 0,
    # told that its held-out frames are new views)
    monkeypatch.setattr("fastminerf.cli.NEW_VIEW_DEG", 0.0)
    assert main(["prepare", str(videos[2]), "--out", str(tmp_path / "new"), "--size", "64", "--min-frames", "5",
                 "--basis", str(root / "expression_basis.npz")]) == 0
    hint = " ".join(capsys.readouterr().out.split())
    assert "reused" in hint and "next: fastminerf personalize --run GENERIC_RUN" in hint
    assert "pose gap" in hint and "id002: its val and test frames show the head" in hint
    assert main(["render", "--run", str(tmp_path / "run"), "--identity", "id000", "--drive", str(videos[2]),
                 "--frames", "8", "--out", str(tmp_path / "drive.mp4")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "driven by id002:train" in out and "8 frames 64x64" in out and f"silent (the driver: {videos[2]} has no audio track)" in out
    driver = json.loads((tmp_path / "run" / "drivers" / "id002" / "transforms_train.json").read_text())
    assert driver["expression_space"] == ExpressionBasis.load(root).space_id and len(driver["frames"]) == 8


def test_a_raw_video_drives_with_its_own_sound_or_says_it_has_none(tmp_path, capsys):
    """``render --drive VIDEO`` played the 16 kHz mono audio.wav prepared from the video (the dataset's contract, what
    speech reads), so a 48 kHz stereo recording came out with nothing above 8 kHz and one channel; it plays the video's
    own sound, at its rate and channels, in sync (frame k at k / fps). A video without sound said 'silent (the
    driver: no audio.wav)', a file the user never made; it says the video has no audio track."""
    import subprocess

    import imageio_ffmpeg

    from fastminerf.cli import main

    ff = imageio_ffmpeg.get_ffmpeg_exe()
    _head_video_run(tmp_path)
    # left: a 440 Hz tone from 0.2 s on; right: 10 kHz throughout (above a 16 kHz recording's band)
    sound = "aevalsrc='0.5*gte(t,0.2)*sin(2*PI*440*t)|0.3*sin(2*PI*10000*t)':s=48000:d=0.64:c=stereo"
    talking = tmp_path / "talking.mp4"
    subprocess.run([ff, "-nostdin", "-v", "error", "-y", "-i", str(tmp_path / "head.mp4"), "-f", "lavfi", "-i", sound,
                    "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-b:a", "192k", str(talking)], check=True)
    out = tmp_path / "drive.mp4"
    assert main(["render", "--run", str(tmp_path / "run"), "--identity", "head", "--drive", str(talking),
                 "--frames", "12", "--out", str(out)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "12 frames" in said and "with 0.48 s of the driver's audio" in said, said
    head = subprocess.run([ff, "-nostdin", "-hide_banner", "-i", str(out)], capture_output=True, text=True).stderr
    assert "48000 Hz, stereo" in head, head
    raw = subprocess.run([ff, "-nostdin", "-v", "error", "-i", str(out), "-vn", "-f", "s16le", "-"],
                         capture_output=True).stdout
    played = np.frombuffer(raw, "<i2").reshape(-1, 2).astype(np.float64)
    assert abs(len(played) - 0.48 * 48000) < 0.03 * 48000
    onset = np.flatnonzero(np.abs(played[:, 0]) > 3000)[0] / 48000
    assert onset == pytest.approx(0.2, abs=0.005)
    right = np.abs(np.fft.rfft(played[4800:4800 + 4096, 1]))
    assert np.argmax(right) * 48000 / 4096 == pytest.approx(10000, abs=50)
    # a video whose sound ends before its picture: the frames past it are said to lie past the end of the video's
    # sound, not of RUN/drivers/.../audio.wav (the cached copy, a file the user never made)
    short = tmp_path / "short.mp4"
    subprocess.run([ff, "-nostdin", "-v", "error", "-y", "-i", str(tmp_path / "head.mp4"), "-f", "lavfi", "-i",
                    "sine=f=440:r=48000:d=0.2", "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac",
                    str(short)], check=True)
    assert main(["render", "--run", str(tmp_path / "run"), "--identity", "head", "--drive", str(short),
                 "--frames", "12", "--out", str(tmp_path / "short_out.mp4")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"lie past the end of the sound of {short} (" in said and "audio.wav" not in said, said
    # a video without sound: named as such
    assert main(["render", "--run", str(tmp_path / "run"), "--identity", "head", "--drive", str(tmp_path / "head.mp4"),
                 "--frames", "4", "--out", str(tmp_path / "mute.mp4")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"silent (the driver: {tmp_path / 'head.mp4'} has no audio track)" in said, said


def test_cli_help_and_missing_mediapipe(monkeypatch, capsys):
    import sys

    from fastminerf.cli import main
    from fastminerf.prepare import MediapipeMissing, require_mediapipe

    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    assert "--max-frames" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe now raises ImportError
    with pytest.raises(MediapipeMissing, match="--no-deps mediapipe==0.10.21"):
        require_mediapipe()
    assert main(["prepare", "x.mp4", "--out", "y"]) == 2
    assert "mediapipe" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="mediapipe is not installed")
def test_mediapipe_imported_where_home_cannot_be_written_says_nothing_of_matplotlib(tmp_path):
    """prepare and eval on a cluster node whose HOME is read-only printed matplotlib's 'mkdir -p failed for path
    ~/.config/matplotlib' and 'Matplotlib created a temporary cache directory ... it is highly recommended to set the
    MPLCONFIGDIR environment variable' on every run: mediapipe imports matplotlib (its drawing helpers, which
    fastminerf never uses), whose warnings asked the user to set up a library the command does not use.
    require_mediapipe imports it without them."""
    import subprocess
    import sys

    unwritable = tmp_path / "a file"  # no folder can be made under it, whoever runs the test (root too)
    unwritable.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR"}
    env.update(HOME=str(unwritable), XDG_CONFIG_HOME=str(unwritable), XDG_CACHE_HOME=str(unwritable))
    code = ("import sys; from fastminerf.prepare import require_mediapipe; require_mediapipe(); "
            "assert 'matplotlib' in sys.modules, 'mediapipe no longer imports matplotlib'")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "matplotlib" not in run.stderr.lower(), run.stderr


# ------------------------------------------------------------------------------------------------ geometry


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_similarity_align_recovers_a_known_similarity():
    from fastminerf.prepare.pose import similarity_align

    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    rot = _random_rotation(rng)
    dst = 2.5 * src @ rot.T + np.array([1.0, -2.0, 0.5])
    s, r, t = similarity_align(src[None], dst, np.ones(50))
    np.testing.assert_allclose(s, [2.5], rtol=1e-10)
    np.testing.assert_allclose(r[0], rot, atol=1e-10)
    np.testing.assert_allclose(t[0], [1.0, -2.0, 0.5], atol=1e-10)


def test_projection_matches_the_renderers_rays():
    """A head point on the ray the renderer shoots through pixel (i, j) projects to that pixel's centre."""
    from fastminerf.prepare.pose import Poses, camera_to_head, project

    rng = np.random.default_rng(2)
    poses = Poses(np.stack([_random_rotation(rng) for _ in range(3)]), np.array([[0.1, -0.2, 4.0], [0.0, 0.0, 3.0], [-0.3, 0.1, 5.0]]))
    c2w = camera_to_head(poses)
    k = [200.0, 210.0, 60.0, 70.0]
    pix = np.array([[3, 5], [60, 70], [100, 20]])
    for b in range(3):
        o, d = camera_rays(c2w[b], k, 128, 128, pixels=pix)
        pts = (o + 2.7 * d).numpy().astype(np.float64)
        np.testing.assert_allclose(project(pts, c2w[b], k), pix + 0.5, atol=1e-3)
        # and the OpenCV pose convention: X_cam = R X + t has positive depth for points in front
        cam = pts @ poses.rotation[b].T + poses.translation[b]
        assert np.all(cam[:, 2] > 0)


def test_solve_poses_recovers_perspective_poses():
    from fastminerf.prepare.pose import Poses, camera_to_head, project, solve_poses

    rng = np.random.default_rng(3)
    face = rng.normal(scale=0.4, size=(60, 3))
    k = [1.65 * 128, 1.65 * 128, 64.0, 64.0]
    truth = []
    shapes = []
    for _ in range(4):
        angles = rng.uniform(-0.3, 0.3, size=3)
        rot = _rot_xyz(*angles) @ np.diag([1.0, -1.0, -1.0])  # a head facing the camera, turned a little
        t = np.array([rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2), rng.uniform(3.0, 5.0)])
        truth.append((rot, t))
        c2w = camera_to_head(Poses(rot[None], t[None]))[0]
        uv = project(face, c2w, k)
        depth = (face @ rot.T + t)[:, 2]
        shapes.append(np.concatenate([uv, (depth - t[2])[:, None] * k[0] / t[2]], axis=1))  # weak-perspective z
    poses = solve_poses(np.stack(shapes), face, np.arange(60), k)
    for b, (rot, t) in enumerate(truth):
        assert _rotation_angle_deg(poses.rotation[b : b + 1], rot[None])[0] < 0.01
        np.testing.assert_allclose(poses.translation[b], t, atol=1e-4)


def test_a_landmark_behind_another_is_hidden_until_the_camera_goes_round():
    from fastminerf.prepare.pose import landmark_visibility

    g = np.linspace(-0.45, 0.45, 10)
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    front = np.concatenate([grid, np.zeros((100, 1))], axis=1)  # a sheet of points on the plane z = 0
    cam = np.array([0.0, 0.0, 4.0])
    behind = cam + 1.1 * (front[37] - cam)  # on the ray through point 37, 0.4 units further
    pts = np.concatenate([front, behind[None]])[None]
    looking_down_z = np.eye(4)
    looking_down_z[:3, 3] = cam
    from_behind = np.diag([-1.0, 1.0, -1.0, 1.0])  # turned round, on the same line at z = -4, looking towards +z
    from_behind[:3, 3] = cam + 2.0 * (front[37] - cam)
    k = [200.0, 200.0, 64.0, 64.0]
    vis = landmark_visibility(np.concatenate([pts, pts]), np.stack([looking_down_z, from_behind]), k, depth_gap=0.05)
    assert vis[0, :100].all() and not vis[0, 100]
    assert vis[1, 100] and not vis[1, 37] and vis[1, :37].all() and vis[1, 38:100].all()


def _rot_xyz(a, b, c) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def test_smoothing_keeps_rotations_and_constant_motion():
    from fastminerf.prepare.pose import Poses, smooth_poses

    rng = np.random.default_rng(4)
    n = 20
    rot = np.stack([_rot_xyz(0.01 * i, 0.02 * i, 0.0) for i in range(n)])
    trans = np.stack([np.array([0.01 * i, 0.0, 4.0]) for i in range(n)])
    noisy = Poses(np.stack([r @ _rot_xyz(*rng.normal(scale=0.01, size=3)) for r in rot]), trans)
    out = smooth_poses(noisy, np.arange(n), 1.5)
    np.testing.assert_allclose(np.einsum("bij,bkj->bik", out.rotation, out.rotation), np.broadcast_to(np.eye(3), (n, 3, 3)), atol=1e-10)
    # linear motion is kept away from the ends (a symmetric kernel)
    np.testing.assert_allclose(out.translation[5:-5], trans[5:-5], atol=1e-10)
    err_in = _rotation_angle_deg(noisy.rotation, rot)[5:-5].mean()
    err_out = _rotation_angle_deg(out.rotation, rot)[5:-5].mean()
    assert err_out < 0.6 * err_in


def test_median_background_recovers_the_seen_background_and_fills_holes():
    from fastminerf.prepare.background import median_background

    rng = np.random.default_rng(5)
    h = w = 64
    bg = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    frames, person = [], []
    for i in range(9):
        f = bg.copy()
        m = np.zeros((h, w), np.float32)
        x = 10 + 3 * i
        f[20:50, x : x + 12] = 255  # the "person" moves right
        m[20:50, x : x + 12] = 1.0
        f[28:40, 26:34] = 0  # a part that never moves: never background
        m[28:40, 26:34] = 1.0
        frames.append(f)
        person.append(m)
    out, seen = median_background(np.stack(frames), np.stack(person))
    assert not seen[30:38, 28:32].any() and seen[:15].all()
    np.testing.assert_array_equal(out[seen], bg[seen])
    assert np.all(out[~seen] > 0)  # filled from the surroundings, not left black


def test_variable_frame_rate_is_resampled_to_constant_time_steps(tmp_path):
    """A video whose frames 10.. come 0.4 s late (a gap, as variable-frame-rate recordings have) decodes to a
    constant 25 fps: the gap is filled by repeating frame 9, so frame k is what is shown at k / 25 s."""
    import subprocess

    import imageio_ffmpeg

    from fastminerf.prepare.video import probe, read_frames

    src = tmp_path / "cfr.mp4"
    w = imageio_ffmpeg.write_frames(str(src), (32, 32), fps=25, macro_block_size=16, ffmpeg_log_level="error",
                                    output_params=["-g", "1"])
    w.send(None)
    for i in range(20):
        w.send(np.full((32, 32, 3), 10 * i, dtype=np.uint8).tobytes())
    w.close()
    vfr = tmp_path / "vfr.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(src), "-vf",
                    "setpts='if(lt(N,10),N,N+10)/25/TB'", "-fps_mode", "vfr", "-g", "1", str(vfr)], check=True)
    frames = [f[0, 0, 0] for f in read_frames(vfr, 25.0)]
    assert len(frames) == 30
    levels = np.round(np.array(frames, dtype=np.float64) / 10)
    np.testing.assert_array_equal(levels[:10], np.arange(10))
    np.testing.assert_array_equal(levels[10:20], np.full(10, 9))  # the gap: the last frame stays on screen
    np.testing.assert_array_equal(levels[20:], np.arange(10, 20))
    assert probe(vfr).width == 32


@pytest.mark.parametrize("src_fps, fps, tbn", [(30, 10.0, 12800), (50, 12.5, 12800), (25, 10.0, 12800),
                                                 (30, 30.0, 12800), (30, 60.0, 12800), (30000 / 1001, 29.97, 30000)])
def test_frame_k_at_another_rate_is_the_picture_on_screen_at_k_over_fps(tmp_path, src_fps, fps, tbn):
    """``prepare --fps 10`` of a 30 fps video wrote source frame 3k + 1 as frame k (time k / 10): ffmpeg's fps filter
    rounds each source time to the nearest output slot and keeps the last frame of a slot, so a frame was the picture
    shown up to half an output frame after its time (50 fps to 12.5: 2 source frames, 40 ms; the frame's sound, its
    ``time`` in audio.wav, led its mouth by that much). Frame k is the picture on screen at k / fps: the last source
    frame that starts at or before it, also where the container's clock does not divide the rate (12800 ticks a
    second at 30 fps) and at the video's own rate (every frame once)."""
    import imageio_ffmpeg

    from fastminerf.prepare.video import read_frames

    src = tmp_path / "count.mp4"
    w = imageio_ffmpeg.write_frames(str(src), (32, 32), fps=src_fps, macro_block_size=16, ffmpeg_log_level="error",
                                    output_params=["-g", "1", "-video_track_timescale", str(tbn)])
    w.send(None)
    n = 40
    for i in range(n):
        w.send(np.full((32, 32, 3), 6 * i, dtype=np.uint8).tobytes())
    w.close()
    got = np.round(np.array([f[16, 16, 0] for f in read_frames(src, fps)], dtype=np.float64) / 6).astype(int)
    k = np.arange(len(got))
    want = np.minimum(np.floor(k * src_fps / fps + 1e-6).astype(int), n - 1)
    assert len(got) >= int(n * fps / src_fps) - 1
    np.testing.assert_array_equal(got, want)


def test_a_phone_video_with_a_rotation_tag_decodes_upright_and_quietly(tmp_path, caplog):
    """Phones store portrait video as landscape frames plus a display-rotation tag. ffmpeg applies it, so the
    frames come out as the phone showed them: probe reports the rotated size, the frames have it, their content
    is the stored picture turned 90 degrees counter-clockwise, and nothing is logged about the size change."""
    import subprocess

    import imageio_ffmpeg

    from fastminerf.prepare.video import probe, read_frames

    stored = np.zeros((32, 48, 3), dtype=np.uint8)  # landscape: 48 wide, 32 high; bright top-left corner
    stored[:8, :16] = 250
    stored[:, :, 2] = np.linspace(0, 200, 48, dtype=np.uint8)[None, :]
    src = tmp_path / "landscape.mp4"
    w = imageio_ffmpeg.write_frames(str(src), (48, 32), fps=25, macro_block_size=16, ffmpeg_log_level="error",
                                    output_params=["-g", "1", "-crf", "0"])
    w.send(None)
    for _ in range(3):
        w.send(stored.tobytes())
    w.close()
    phone = tmp_path / "phone.mov"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", "90", "-i", str(src),
                    "-c", "copy", str(phone)], check=True)
    caplog.set_level(logging.WARNING)
    info = probe(phone)
    assert (info.width, info.height) == (32, 48)
    frames = list(read_frames(phone, 25.0))
    assert len(frames) == 3 and frames[0].shape == (48, 32, 3)
    upright = np.rot90(stored.astype(np.float64), 1)
    assert np.abs(frames[0].astype(np.float64) - upright).mean() < 4.0
    assert np.abs(frames[0].astype(np.float64) - np.rot90(stored.astype(np.float64), -1)).mean() > 40.0
    assert [r.getMessage() for r in caplog.records if r.name.startswith("imageio")] == []


def _overlapping_blocks(block, then):
    """Open ``block()`` in a second thread, open it here while that one is open, end the other, then return
    ``then()`` called inside this one: two threads' blocks that overlap, the later ending last."""
    import threading

    inside, leave = threading.Event(), threading.Event()

    def first():
        with block():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(10)
    with block():  # starts inside the first block, ends after it
        leave.set()
        t.join(10)
        return then()


def test_native_stderr_comes_back_after_trackers_started_in_two_threads():
    """A batch script preparing into two roots from two threads: each tracker's start-up sends file descriptor 2 to
    /dev/null and puts back what it found there. When the second thread's quiet block began inside the first's, it
    found /dev/null and put that back last: every later error, warning and traceback of the process vanished
    (and mediapipe's start-up lines reached the terminal through the first's early restore). Overlapping blocks
    end with descriptor 2 where it was before the first."""
    from fastminerf.prepare.tracking import _native_stderr_quiet

    def where() -> tuple:
        st = os.fstat(2)
        return st.st_dev, st.st_ino

    before = where()
    null = os.stat(os.devnull)
    assert _overlapping_blocks(_native_stderr_quiet, where) == (null.st_dev, null.st_ino)  # quiet while one is open
    assert where() == before


def test_imageio_ffmpeg_warnings_stay_quiet_in_overlapping_reads_and_come_back_after(caplog):
    """Two threads decoding at once (a batch script preparing two roots): each read set imageio-ffmpeg's logger to
    ERROR and put back the level it found. The first read to end turned its warnings back on under the other
    (library code printing 'the frame size for reading ... is different' lines), and the last put ERROR back for
    good, silencing the user's own imageio-ffmpeg warnings for the rest of the process."""
    from fastminerf.prepare.video import _quiet_imageio_ffmpeg

    caplog.set_level(logging.WARNING, logger="imageio_ffmpeg")
    log = logging.getLogger("imageio_ffmpeg")
    level = log.level
    _overlapping_blocks(_quiet_imageio_ffmpeg, lambda: log.warning("the frame size for reading differs"))
    assert log.level == level
    log.warning("a warning of the user's own decode")
    assert [r.getMessage() for r in caplog.records if r.name == "imageio_ffmpeg"] == ["a warning of the user's own decode"]


def test_a_folder_prepare_did_not_write_is_refused_untouched(tmp_path):
    """README: 'folders prepare did not write are never touched'. Since prepare locks each identity folder
    (ROOT/<name>/.lock) before it looks at it, a video whose name is that of a folder of the user's (their notes, a
    hand-made identity) was refused as holding foreign files, but left a .lock of prepare's in it. It is refused before
    the lock, the folder as it was."""
    from fastminerf.prepare import prepare

    video = tmp_path / "nobody.mp4"
    _write_noise_video(video)
    folder = tmp_path / "data" / "nobody"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    v = prepare([video], tmp_path / "data", _cfg(min_frames=5)).videos[0]
    assert v.status == "failed" and str(folder) in v.error and "did not write" in v.error, v.error
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_render_of_a_raw_driver_video_says_what_prepare_noted_of_it(tmp_path, capsys):
    """``render --drive VIDEO`` prepares the video into RUN/drivers/ and kept quiet about what prepare noted of it
    (RUN/drivers/NAME/prepare.json's notes): a driver with frames without a face rendered a shorter video than the
    driver, nothing said (a cut-short file alike). render prints the notes as prepare does ('note NAME: ...'), when
    it prepares the driver and when it finds it prepared."""
    import imageio.v3 as iio

    from fastminerf.cli import main
    from fastminerf.config import load_config
    from fastminerf.data.synth import generate
    from fastminerf.prepare import prepare
    from fastminerf.train import train

    d = generate(tmp_path / "synth", n_identities=1, n_frames=16, size=128, seed=0, novel_frames=1)[0]
    frames = [iio.imread(p)[..., :3] for split in ("train", "val") for p in sorted((d / split).glob("[0-9][0-9][0-9][0-9].png"))]
    _write_video(tmp_path / "head.mp4", frames)
    assert prepare([tmp_path / "head.mp4"], tmp_path / "data", PrepareConfig(size=64, expression_dim=4, min_frames=5)
                   ).videos[0].status == "done"
    train(load_config("tiny", ["train.steps=1"]), [tmp_path / "data"], tmp_path / "run")
    _write_video(tmp_path / "driver.mp4", frames[:6] + [np.zeros_like(frames[0])] * 3 + frames[6:12])
    capsys.readouterr()
    cmd = ["render", "--run", str(tmp_path / "run"), "--identity", "head", "--drive", str(tmp_path / "driver.mp4"),
           "--out", str(tmp_path / "drive.mp4")]
    for _ in range(2):  # prepared, then found prepared
        assert main(cmd) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "12 frames" in out, out
        assert "note driver: 3 frames with no face found were dropped" in out and "frames 6-8" in out, out


def _dataset_md_row(key: str) -> str:
    """The row of docs/DATASET.md's tables that describes ``key`` (the contract an outside reader follows)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "DATASET.md").read_text(encoding="utf-8")
    return next(line for line in doc.splitlines() if line.startswith(f"| `{key}` |"))


@needs_real
def test_prepared_masks_are_soft_and_dataset_md_says_how_a_grey_value_is_read(prepared):
    """DATASET.md said of mask_path only 'white = head and torso kept', but prepare writes selfie segmentation's
    soft mask (every grey from 0 to 255, a quarter of the values at the edge of the person): a reader following the
    contract could not tell whether grey is a weight, an alpha or a yes / no, nor where the loader draws the line.
    The written rule (foreground where the grey value is above 127) is what load_dataset reads from these files."""
    import imageio.v3 as iio

    root, result = prepared
    row = _dataset_md_row("mask_path")
    assert "soft" in row and "above 127" in row, row
    data = load_dataset(root, splits=("train",))
    t = data.table("train")
    greys = set()
    for k in range(0, len(t.mask_paths), 7):
        grey = np.asarray(iio.imread(t.mask_paths[k]))
        greys |= set(np.unique(grey).tolist())
        assert np.array_equal(data.mask("train", k), grey > 127), t.mask_paths[k]
    assert len(greys - {0, 255}) > 10  # soft: values between black and white


@needs_real
def test_dataset_md_says_what_the_expression_basis_holds_and_its_rule_holds_on_prepared_data(prepared):
    """The expression vectors of prepared data are coefficients of ROOT/expression_basis.npz, which no doc described
    (the README: 'holds the shared face model'): a reader could not tell its arrays nor how a frame's expression
    relates to its landmarks. docs/DATASET.md names every array the file holds, and the rule it gives (a difference
    of two frames' landmarks.npz points, flattened, times components^T over scale, is the difference of their
    expressions) holds on the written files."""
    root, result = prepared
    doc = (Path(__file__).resolve().parents[1] / "docs" / "DATASET.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Optional extension: `expression_basis.npz`"):]
    with np.load(root / "expression_basis.npz", allow_pickle=False) as z:
        basis = {k: z[k] for k in z.files}
    unnamed = [k for k in basis if f"| `{k}` |" not in section]
    assert not unnamed, f"docs/DATASET.md does not describe arrays of expression_basis.npz: {unnamed}"
    components, scale = basis["components"], float(basis["scale"])
    for v in result.videos:
        lm = np.load(v.out_dir / "landmarks.npz", allow_pickle=False)
        row = {int(f): j for j, f in enumerate(lm["frame_index"])}
        frames = [f for s in ("train", "val", "test")
                  for f in json.loads((v.out_dir / f"transforms_{s}.json").read_text(encoding="utf-8"))["frames"]]
        assert len(frames[0]["expression"]) == components.shape[0] == len(basis["explained"])
        points = np.stack([lm["points"][row[f["frame_index"]]] for f in frames]).astype(np.float64)
        expr = np.array([f["expression"] for f in frames])
        predicted = (points - points[0]).reshape(len(points), -1) @ components.T / scale
        assert np.abs(predicted - (expr - expr[0])).max() < 1e-4 * max(1.0, np.abs(expr).max())


def test_a_raw_video_drives_a_run_that_cannot_be_written(tmp_path):
    """render --drive VIDEO against a run folder the user cannot write (a shared, read-only run) ended with
    "error: [Errno 13] Permission denied: 'run/drivers'": the video is prepared into RUN/drivers/. It is now prepared
    in a temporary folder for this render (removed after it), and a note says so and how to keep a driver (prepare
    VIDEO --out DIR --basis ... --val-fraction 0 --test-fraction 0 --size W, then --drive DIR/NAME). Run without root's capabilities, so the folder's
    permissions stop the writes as they stop a user's."""
    import subprocess
    import sys

    import imageio_ffmpeg

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop its capabilities")
    root = _head_video_run(tmp_path)
    run = tmp_path / "run"
    (tmp_path / "tmp").mkdir()
    run.chmod(0o555)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                       os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", COLUMNS="1000", TMPDIR=str(tmp_path / "tmp"))
    try:
        res = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m", "fastminerf",
                              "render", "--run", str(run), "--identity", "head", "--drive", str(tmp_path / "head.mp4"),
                              "--frames", "4", "--out", str(tmp_path / "drive.mp4")],
                             capture_output=True, text=True, env=env, timeout=600)
    finally:
        run.chmod(0o755)
    said = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 0, said
    assert f"note {run / 'drivers'}: cannot make the folder for the prepared driver ({run} cannot be written)" in said
    # as render prepares it: every frame in train (prepare's default 0.1 / 0.1 left the last fifth of the video out
    # of the train split --drive DIR/NAME plays), at the target's size
    assert (f"prepare {tmp_path / 'head.mp4'} --out DIR --basis {root / 'expression_basis.npz'} --val-fraction 0 "
            "--test-fraction 0 --size 64" in said), said
    assert "drive with DIR/head" in said and "4 frames" in said, said
    assert len(list(imageio_ffmpeg.read_frames(str(tmp_path / "drive.mp4")))) - 1 == 4
    assert not (run / "drivers").exists() and not list((tmp_path / "tmp").iterdir())  # the temporary driver removed


def test_a_driver_cached_in_a_read_only_run_is_used_not_prepared_again(tmp_path, capsys, monkeypatch):
    """render --drive VIDEO against a shared run whose owner had rendered with the video (RUN/drivers/NAME prepared,
    finished, with the same settings) prepared it again in a temporary folder for every other user, who cannot write
    RUN/drivers: tracking and fitting the whole video each time, for the driver already there. A finished driver of
    the same video and settings is read where it is; only a missing or different one is prepared elsewhere."""
    from fastminerf.cli import main

    root = _head_video_run(tmp_path)
    run = tmp_path / "run"
    argv = ["render", "--run", str(run), "--identity", "head", "--drive", str(tmp_path / "head.mp4"), "--frames", "4",
            "--no-audio"]
    assert main(argv + ["--out", str(tmp_path / "owner.mp4")]) == 0  # the owner's render caches the driver
    assert (run / "drivers" / "head" / "prepare.json").is_file()
    capsys.readouterr()
    _drivers_read_only(monkeypatch, run)
    monkeypatch.setattr("fastminerf.prepare.prepare", lambda *a, **k: pytest.fail("the cached driver prepared again"))
    assert main(argv + ["--out", str(tmp_path / "reader.mp4")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "prepared in" not in said, said


def test_render_of_a_raw_driver_video_reads_its_bytes_once(tmp_path, capsys, monkeypatch):
    """render --drive VIDEO hashed the video twice when it prepared it anew over a cache of other settings:
    driver_from_video's look for a finished cache (finished_folder), then prepare's own skip check (about a second a
    GB each); in a read-only run, finished_driver's look, then prepare's in a temporary folder. The digest is passed
    through: one read of the video's bytes a render, whether it prepares the driver or finds it."""
    import hashlib

    from fastminerf.cli import main

    _head_video_run(tmp_path)
    run, video = tmp_path / "run", tmp_path / "head.mp4"
    real_digest, hashed = hashlib.file_digest, []

    def counted(f, digest):
        hashed.append(Path(f.name).name)
        return real_digest(f, digest)

    def render(frames: int, out: str) -> list:
        hashed.clear()
        assert main(["render", "--run", str(run), "--identity", "head", "--drive", str(video), "--no-audio",
                     "--frames", str(frames), "--out", str(tmp_path / out)]) == 0
        return list(hashed)

    monkeypatch.setattr(hashlib, "file_digest", counted)
    assert render(4, "a.mp4") == ["head.mp4"]  # prepared into RUN/drivers
    assert (run / "drivers" / "head" / "prepare.json").is_file()
    assert render(4, "b.mp4") == ["head.mp4"]  # found there
    assert render(3, "c.mp4") == ["head.mp4"]  # other frames: prepared again over it
    _drivers_read_only(monkeypatch, run)
    capsys.readouterr()
    assert render(5, "d.mp4") == ["head.mp4"]  # not the cache's frames: prepared in a temporary folder
    assert "prepared in" in " ".join(capsys.readouterr().out.split())
    assert render(3, "e.mp4") == ["head.mp4"]  # the cache's: read where it is
