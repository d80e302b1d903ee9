"""Procedural talking heads: determinism, exact ground truth, novel expressions, the CLI."""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from fastminerf.cli import main
from fastminerf.config import SynthConfig
from fastminerf.data import REGIONS, load_dataset, withheld_region
from fastminerf.data.heads import (
    EXPRESSION_NAMES,
    EXPRESSION_RANGES,
    HAIR_STYLES,
    HEAD_BOUND,
    NECK_BOX,
    TRACE_BOX,
    HeadModel,
    HeadParams,
)
from fastminerf.data.rays import camera_rays
from fastminerf.data.synth import contact_sheet, generate

SIZE = 32
N_IDS = 3
N_FRAMES = 12  # 11 train (room for the 4 episodes of the regions each identity shows) + 1 val

SHADE_TOL = 2.0 / 255
"""Colour difference allowed between two renders of the same head point seen from different cameras: the
second ray lands within ~1e-4 head units of the point, over which texture and shading change by far less
than one 8-bit level."""

BATCH_TOL = 1e-5
"""Float difference allowed between renders of one frame in different batches: PyTorch evaluates sin, exp
and atan2 with vector code in the body of a tensor and scalar code in its tail, which differ in the last
bit, so a value's position in the batch can move it by a few ulps (1e-7 here; far below 1/255)."""

BOUNDARY_SHARE = 0.02
"""Share of those points allowed to exceed SHADE_TOL: points on a material edge (lid line, iris rim) can
change material within that distance."""


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, n_identities=N_IDS, n_frames=N_FRAMES, size=SIZE, seed=11, novel_frames=2)
    return out


@pytest.fixture(scope="module")
def data(root):
    return load_dataset(root, splits=("train", "val", "novel"))


def _files(folder: Path):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(root, tmp_path):
    again = tmp_path / "again"
    generate(again, n_identities=N_IDS, n_frames=N_FRAMES, size=SIZE, seed=11, novel_frames=2)
    assert _files(again) == _files(root)
    other = tmp_path / "other"
    generate(other, n_identities=1, n_frames=N_FRAMES, size=SIZE, seed=12, novel_frames=2)
    assert iio.imread(other / "id000" / "train" / "0000.png").tobytes() != iio.imread(root / "id000" / "train" / "0000.png").tobytes()
    # Identity k depends on (seed, k) only: a run with fewer identities writes the same first identity.
    fewer = tmp_path / "fewer"
    generate(fewer, n_identities=1, n_frames=N_FRAMES, size=SIZE, seed=11, novel_frames=2)
    assert _files(fewer / "id000") == _files(root / "id000")


def test_layout_and_splits(root, data):
    assert data.identities == [f"id{k:03d}" for k in range(N_IDS)]
    assert data.expression_names == EXPRESSION_NAMES and data.expression_dim == len(EXPRESSION_NAMES)
    assert data.num_frames("train") == N_IDS * (N_FRAMES - 1) and data.num_frames("val") == N_IDS
    assert data.num_frames("novel") == N_IDS * 2
    info = json.loads((root / "synth.json").read_text())
    assert [i["withheld_region"] for i in info["identities"]] == [withheld_region(k).name for k in range(N_IDS)]
    lo = np.array([r[0] for r in EXPRESSION_RANGES])
    hi = np.array([r[1] for r in EXPRESSION_RANGES])
    for split in ("train", "val", "novel"):
        e = data.table(split).expression
        assert np.all(e >= lo) and np.all(e <= hi)
    # Face boxes are real boxes inside the image and hold the middle of the face.
    t = data.table("train")
    assert np.all(t.bbox[:, 0] < t.bbox[:, 1]) and np.all(t.bbox[:, 2] < t.bbox[:, 3])
    assert np.all((t.bbox >= 0) & (t.bbox <= 1))
    assert np.all((t.bbox[:, 0] < 0.5) & (t.bbox[:, 1] > 0.5) & (t.bbox[:, 2] < 0.5) & (t.bbox[:, 3] > 0.5))


def test_novel_expressions_are_new_to_the_identity_but_shown_by_others(data):
    train, val, novel = data.table("train"), data.table("val"), data.table("novel")
    for k in range(N_IDS):
        region = withheld_region(k)
        own = train.expression[train.identity == k]
        assert not region.contains(own).any(), f"identity {k} shows its withheld region {region.name} in train"
        assert not region.contains(val.expression[val.identity == k]).any()
        assert region.contains(novel.expression[novel.identity == k]).all()
        others = train.expression[train.identity != k]
        assert region.contains(others).any(), f"no other identity shows {region.name} in train"
        # The others show it in more than a frame: each of them has an episode of every region but its own.
        for j in range(N_IDS):
            if j != k and withheld_region(j).name != region.name:
                assert region.contains(train.expression[train.identity == j]).any()
    # Every region is withheld from someone once there are as many identities as regions.
    assert {withheld_region(k).name for k in range(len(REGIONS))} == {r.name for r in REGIONS}


def test_every_region_is_shown_by_every_identity_that_does_not_withhold_it():
    """The plan alone (no rendering), for more identities than regions and the shortest videos allowed."""
    from fastminerf.data.synth import _plan_identity

    cfg = dict(size=16, fps=25.0, camera_distance=3.8, max_yaw_deg=18.0, max_pitch_deg=12.0, max_roll_deg=8.0)
    n_frames, n_val = 5, 1  # 4 training frames: one per region shown
    for k in range(2 * len(REGIONS)):
        _, _, own, video, _, novel, _ = _plan_identity(k, 5, n_frames, n_val, 3, cfg)
        assert own is withheld_region(k)
        for region in REGIONS:
            shown = region.contains(video[: n_frames - n_val]).any()
            assert shown == (region is not own), (k, region.name)
        assert not own.contains(video).any() and own.contains(novel).all()


def test_background_pixels_are_the_background_exactly(data):
    for split in ("train", "val", "novel"):
        for f in range(data.num_frames(split)):
            img = data.image(split, f)
            mask = data.mask(split, f)
            bg = data.background(int(data.table(split).identity[f]))
            assert 0.1 < mask.mean() < 0.95
            assert np.array_equal(img[~mask], bg[~mask])


def _head(root: Path, k: int) -> HeadModel:
    meta = json.loads((root / f"id{k:03d}" / "synth_identity.json").read_text())
    return HeadModel(HeadParams.from_json(meta["params"]))


def test_written_frames_are_the_render_of_their_json(root, data):
    """The camera and expression in the JSON reproduce the written pixels, rendered alone or in a batch."""
    t = data.table("train")
    k = 1
    frames = t.frames_of(k)[:3]
    head = _head(root, k)
    c2w = torch.from_numpy(t.c2w[frames])
    expr = torch.from_numpy(t.expression[frames])
    rgb, hit = head.render_frames(c2w, torch.from_numpy(t.intrinsics[frames[0]]), SIZE, SIZE, expr)
    bg = data.background(k)
    # Every surface point lies between the split's near and far.
    for f in frames:
        o, d = camera_rays(torch.from_numpy(t.c2w[f]), torch.from_numpy(t.intrinsics[f]), SIZE, SIZE)
        _, h, pts = head.render_rays(o, d, torch.from_numpy(t.expression[f]).expand(o.shape[0], -1))
        dist = (pts[h] - o[h]).norm(dim=1)
        assert h.any() and t.near[f] < dist.min() and dist.max() < t.far[f]
    for j, f in enumerate(frames):
        img = np.where(hit[j].numpy()[..., None], np.rint(rgb[j].numpy() * 255).astype(np.uint8), bg)
        assert np.array_equal(img, data.image("train", f))
        assert np.array_equal(hit[j].numpy(), data.mask("train", f))
        alone, hit_alone = head.render_frames(c2w[j : j + 1], torch.from_numpy(t.intrinsics[f]), SIZE, SIZE, expr[j : j + 1], chunk_rays=97)
        assert torch.equal(hit_alone[0], hit[j])
        assert (alone[0] - rgb[j]).abs().max() <= BATCH_TOL


def test_colour_depends_only_on_the_head_point_and_expression(root):
    """Lighting is fixed to the head: a surface point seen from two cameras has one colour."""
    head = _head(root, 0)
    e = torch.zeros(1, len(EXPRESSION_NAMES))
    e[0, 0], e[0, 1], e[0, 9] = 0.4, 0.3, -0.5  # jaw a little open, a smile, a glance
    f = 1.65 * 64

    def cam(yaw: float, pitch: float) -> torch.Tensor:
        cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
        r = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        m = torch.eye(4)
        m[:3, :3] = r
        m[:3, 3] = r @ torch.tensor([0.0, 0.0, 3.8])
        return m

    o, d = camera_rays(cam(-0.25, 0.1), [f, f, 32, 32], 64, 64)
    rgb_a, hit_a, pts = head.render_rays(o, d, e.expand(o.shape[0], -1))
    pts = pts[hit_a]
    colour_a = rgb_a[hit_a]
    # Aim rays of a second camera straight at those points; keep the points it sees (not hidden).
    origin_b = cam(0.3, -0.15)[:3, 3]
    dirs_b = pts - origin_b
    dist_b = dirs_b.norm(dim=1)
    dirs_b = dirs_b / dist_b[:, None]
    rgb_b, hit_b, pts_b = head.render_rays(origin_b.expand_as(pts).contiguous(), dirs_b, e.expand(pts.shape[0], -1))
    seen = hit_b & ((pts_b - pts).norm(dim=1) < 1e-3)
    assert seen.sum() > 0.3 * len(pts)  # a good part of the face is visible from both sides
    diff = (rgb_b[seen] - colour_a[seen]).abs().amax(dim=1)
    assert (diff > SHADE_TOL).float().mean() < BOUNDARY_SHARE
    assert diff.median() < 0.5 / 255


def test_every_expression_coefficient_moves_the_face(root):
    head = _head(root, 2)
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.0, 0.1, 3.8])
    neutral = torch.zeros(len(EXPRESSION_NAMES))
    exprs = [neutral]
    for i, (lo, hi) in enumerate(EXPRESSION_RANGES):
        e = neutral.clone()
        e[i] = hi if abs(hi) >= abs(lo) else lo
        exprs.append(e)
    size = 48
    rgb, _ = head.render_frames(c2w.expand(len(exprs), 4, 4), [1.65 * size, 1.65 * size, size / 2, size / 2], size, size, torch.stack(exprs))
    for i, name in enumerate(EXPRESSION_NAMES):
        changed = ((rgb[i + 1] - rgb[0]).abs().amax(dim=-1) > 8 / 255).sum().item()
        assert changed >= 6, f"{name} changes only {changed} pixels"
    # Left and right blinks close different eyes: the left eye (+x, the viewer's right) for blink_left.
    left = (rgb[1 + EXPRESSION_NAMES.index("blink_left")] - rgb[0]).abs().sum(-1)
    right = (rgb[1 + EXPRESSION_NAMES.index("blink_right")] - rgb[0]).abs().sum(-1)
    assert left[:, size // 2 :].sum() > 5 * left[:, : size // 2].sum()
    assert right[:, : size // 2].sum() > 5 * right[:, size // 2 :].sum()


def test_heads_stay_inside_the_bounds_the_tracer_trusts():
    """The SDF is positive on the boundary of the tracing bounds and of the declared head box, for every
    hair style and extreme expressions."""
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    n = 4000
    # Points on the head ellipsoid, except those inside the neck box; points on the neck box outside the ellipsoid.
    v = torch.randn(n, 3, generator=g)
    v = v / v.norm(dim=1, keepdim=True)
    centre, radii = torch.tensor(HEAD_BOUND[:3]), torch.tensor(HEAD_BOUND[3:])
    shell = centre + radii * v
    lo, hi = torch.tensor(NECK_BOX[:3]), torch.tensor(NECK_BOX[3:])
    in_box = ((shell >= lo) & (shell <= hi)).all(dim=1)
    box = lo + (hi - lo) * torch.rand(n, 3, generator=g)
    axis = torch.randint(0, 3, (n,), generator=g)
    side = torch.randint(0, 2, (n,), generator=g).bool()
    box[torch.arange(n), axis] = torch.where(side, hi[axis], lo[axis])
    outside_shell = ((box - centre) / radii).norm(dim=1) > 1.0
    # And points on the faces of TRACE_BOX, the head box (aabb) the datasets declare.
    tlo, thi = torch.tensor(TRACE_BOX[:3]), torch.tensor(TRACE_BOX[3:])
    faces = tlo + (thi - tlo) * torch.rand(n, 3, generator=g)
    faces[torch.arange(n), axis] = torch.where(side, thi[axis], tlo[axis])
    pts = torch.cat([shell[~in_box], box[outside_shell], faces])
    lo_e = torch.tensor([r[0] for r in EXPRESSION_RANGES])
    hi_e = torch.tensor([r[1] for r in EXPRESSION_RANGES])
    for k in range(2 * len(HAIR_STYLES)):
        head = HeadModel(HeadParams.random(rng, k))
        corner = torch.where(torch.rand(pts.shape[0], len(lo_e), generator=g) < 0.5, lo_e, hi_e)
        assert head.sdf(pts, corner).min() > 0, head.params.hair_style


VOICE_JAW_CORRELATION = 0.8
"""Correlation, over a head's video frames, between the loudness of ``audio.wav`` in each frame's time and the
frame's jaw opening: the voice follows the mouth (0.92-0.95 measured on two heads of seed 0)."""


def test_audio_follows_the_mouth_and_novel_frames_have_no_time(tmp_path):
    from fastminerf.audio import read_wav
    from fastminerf.data.synth import VOICE_RATE

    fps = 25.0
    d = generate(tmp_path / "s", n_identities=1, n_frames=50, size=16, seed=0, novel_frames=2, fps=fps)[0]
    audio = read_wav(d / "audio.wav")
    assert audio.rate == VOICE_RATE and audio.seconds == pytest.approx(50 / fps)
    data = load_dataset(d, splits=("train", "val", "novel"))
    frames = [(t, e[EXPRESSION_NAMES.index("jaw_open")]) for split in ("train", "val")
              for t, e in zip(data.table(split).time, data.table(split).expression)]
    assert [t for t, _ in frames] == pytest.approx([k / fps for k in range(50)])
    loud = [np.sqrt(np.mean(audio.samples[int(t * VOICE_RATE): int((t + 1 / fps) * VOICE_RATE)].astype(float) ** 2))
            for t, _ in frames]
    assert np.corrcoef(loud, [j for _, j in frames])[0, 1] > VOICE_JAW_CORRELATION
    assert np.isnan(data.table("novel").time).all()  # a clip of its own, not in the recording


def test_contact_sheet(root, tmp_path):
    out = contact_sheet(root, tmp_path / "sheet.png", train_columns=4, novel_columns=2)
    sheet = iio.imread(out)
    # 32 px frames are enlarged 3x to 96 px tiles: a row per identity, 6 tiles per row plus a label column.
    assert sheet.shape[0] >= N_IDS * 96 and sheet.shape[1] >= 6 * 96
    assert sheet.std() > 10


def test_a_contact_sheet_that_cannot_be_written_whole_keeps_the_earlier_one(root, tmp_path, file_size_limit):
    """The sheet was saved in place (PIL opens the name and writes it): a save that failed part way (a full disk; here a
    file size limit) left the earlier sheet (synth --overwrite, the demo again) cut short under its name, and the
    error, the write's, named no file. It is written as the layout's other files are: whole or not at all, the error
    naming it."""
    out = tmp_path / "sheet.png"
    out.write_bytes(b"earlier sheet")
    with file_size_limit(2000), pytest.raises(OSError) as info:
        contact_sheet(root, out, train_columns=4, novel_columns=2)
    assert str(out) in str(info.value), str(info.value)
    assert out.read_bytes() == b"earlier sheet" and [p.name for p in tmp_path.iterdir()] == ["sheet.png"]


def test_contact_sheet_of_short_videos_puts_the_novel_frame_under_its_header(tmp_path):
    """``synth --frames 4`` (3 training frames, fewer than the sheet's 6 train columns) drew each identity's novel
    frame in the 4th column, under 'train (varied expressions)', while the 'novel (withheld)' header stood over
    two empty columns further right: the withheld expression read as a training frame. The novel frames stand under
    their header."""
    from fastminerf.data.layout import read_transforms

    generate(tmp_path / "d", n_identities=1, n_frames=4, size=16, seed=0, novel_frames=1)
    d = tmp_path / "d" / "id000"
    sheet = iio.imread(contact_sheet(tmp_path / "d", tmp_path / "sheet.png"))[..., :3].astype(int)
    novel = iio.imread(read_transforms(d / "transforms_novel.json", d).image_paths[0])[..., :3].astype(int)
    tile = np.repeat(np.repeat(novel, 6, axis=0), 6, axis=1)  # 16 px enlarged to the 96 px tiles
    found = [(y, x) for y in range(sheet.shape[0] - 95) for x in range(sheet.shape[1] - 95)
             if sheet[y, x, 0] == tile[0, 0, 0] and np.array_equal(sheet[y:y + 96, x:x + 96], tile)]
    assert len(found) == 1, found
    header = np.flatnonzero(((sheet[:16, :, 0] > 200) & (sheet[:16, :, 2] < 160)).any(axis=0))  # the header's orange ink
    assert found[0][1] <= header.min() < found[0][1] + 96, (found, header.min())


def test_novel_poses_train_changes_only_the_novel_cameras(root, data, tmp_path):
    """``novel_poses="train"``: the novel frames are seen from training poses of their identity (pose gap 0), with
    the same expressions as the default's own head motion; train and val are untouched."""
    from fastminerf.metrics import rotation_gap_deg

    posed = tmp_path / "posed"
    generate(posed, n_identities=N_IDS, n_frames=N_FRAMES, size=SIZE, seed=11, novel_frames=2, novel_poses="train")
    pdata = load_dataset(posed, splits=("train", "val", "novel"))
    for split in ("train", "val"):
        a, b = data.table(split), pdata.table(split)
        assert np.array_equal(a.c2w, b.c2w) and np.array_equal(a.expression, b.expression)
    novel, pnovel, train = data.table("novel"), pdata.table("novel"), pdata.table("train")
    assert np.array_equal(novel.expression, pnovel.expression)
    for k in range(N_IDS):
        own_train = train.c2w[train.frames_of(k)][:, :3, :3]
        assert rotation_gap_deg(pnovel.c2w[pnovel.frames_of(k)][:, :3, :3], own_train).max() < 1e-3
        assert rotation_gap_deg(novel.c2w[novel.frames_of(k)][:, :3, :3], own_train).max() > 0.1  # own motion: new
    assert json.loads((posed / "synth.json").read_text())["settings"]["novel_poses"] == "train"
    with pytest.raises(ValueError, match="novel_poses"):
        generate(tmp_path / "bad", n_identities=1, n_frames=4, size=SIZE, novel_poses="driver")


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synth", str(out), "--identities", "2", "--frames", "5", "--size", "16", "--seed", "4"]
    assert main(args) == 0
    assert (out / "contact_sheet.png").is_file()
    data = load_dataset(out, splits=("train", "val", "novel"))
    assert data.identities == ["id000", "id001"] and data.table("train").width == 16
    # A second run refuses to overwrite, unless asked.
    assert main(args) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--identities", "1"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["id000"]


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "fastminerf", "synth", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--identities" in res.stdout


def test_synth_config_fields_are_the_keywords(tmp_path):
    params = inspect.signature(generate).parameters
    for f in fields(SynthConfig):
        assert params[f.name].default == getattr(SynthConfig(), f.name)
    dirs = generate(tmp_path / "cfg", **asdict(SynthConfig(n_identities=1, n_frames=2, size=12, novel_frames=1)))
    assert [d.name for d in dirs] == ["id000"] and iio.imread(dirs[0] / "train" / "0000.png").shape == (12, 12, 3)


def test_expression_style_moves_each_face_by_its_own_gain_and_records_the_same_coefficients(root, data, tmp_path):
    styled = tmp_path / "styled"
    generate(styled, n_identities=2, n_frames=N_FRAMES, size=SIZE, seed=11, novel_frames=2, expression_style=0.6)
    sdata = load_dataset(styled, splits=("train",))
    t, st = data.table("train"), sdata.table("train")
    gains = []
    for k in range(2):
        marker = json.loads((styled / f"id{k:03d}" / "synth_identity.json").read_text())
        gains.append(marker["expressiveness"])
        assert 0.4 <= marker["expressiveness"] <= 1.0
        assert json.loads((root / f"id{k:03d}" / "synth_identity.json").read_text())["expressiveness"] == 1.0
        frames = st.frames_of(k)[:3]
        # the same recorded expressions and cameras as the unstyled heads of the same seed...
        assert np.array_equal(st.expression[frames], t.expression[t.frames_of(k)[:3]])
        assert np.array_equal(st.c2w[frames], t.c2w[t.frames_of(k)[:3]])
        # ...but the face moves by the gain: the frames are the renders of the scaled coefficients
        head = _head(styled, k)
        expr = torch.from_numpy(st.expression[frames] * np.float32(marker["expressiveness"]))
        rgb, hit = head.render_frames(torch.from_numpy(st.c2w[frames]), torch.from_numpy(st.intrinsics[frames[0]]), SIZE,
                                      SIZE, expr)
        for j, f in enumerate(frames.tolist()):
            img = np.where(hit[j].numpy()[..., None], np.rint(rgb[j].numpy() * 255).astype(np.uint8), sdata.background(k))
            assert np.array_equal(img, sdata.image("train", f))
    assert gains[0] != gains[1]
    with pytest.raises(ValueError, match="expression_style must be in"):
        generate(tmp_path / "bad", n_identities=1, n_frames=N_FRAMES, size=SIZE, expression_style=1.0)
