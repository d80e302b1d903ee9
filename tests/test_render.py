"""Rendering, transfer, orbits, video writing and evaluation.

The model-independent parts run against an *oracle*: the procedural head generator itself wrapped in the
model interface (``render_rays(...) -> {"rgb"}``, ``identity_names``). Rendering and evaluating a synthetic
split with the oracle must reproduce the stored frames up to their 8-bit rounding, which checks cameras,
pixel order, backgrounds, identity mapping and the metric plumbing on real pixels.
"""

import contextlib
import json
import os
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from fastminerf.data import HeadModel, HeadParams, load_dataset
from fastminerf.data.heads import EXPRESSION_NAMES
from fastminerf.data.synth import generate
from fastminerf.metrics import landmark_status, psnr
from fastminerf.render import (
    SIDE_BY_SIDE_HEADER,
    SIDE_BY_SIDE_MIN_PANEL,
    CameraPath,
    RenderError,
    drive_path,
    evaluate,
    expression_transfer,
    identity_id,
    look_at_point,
    mean_head_pose,
    neutral_frame,
    orbit_cameras,
    orbit_path,
    relative_cameras,
    render_frame,
    render_sequence,
    render_video,
    side_by_side,
    view_angles,
    write_video,
)

SIZE = 24
"""Frame size of the test dataset: the smallest comfortably above SSIM's 11-pixel window."""

ORACLE_MIN_PSNR = 45.0
"""The oracle re-traces the generator's exact rays; the stored frames are rounded to 8 bits (about 59 dB on
their own), and silhouette pixels may flip where the sphere tracer lands within its tolerance. 45 dB
leaves room for a few flipped pixels while any camera, pixel-order or background error costs > 20 dB."""


class Oracle(torch.nn.Module):
    """The generator's heads in the model interface: exact colours, hard silhouettes over the background."""

    def __init__(self, identity_dirs, names=None, size=SIZE):
        super().__init__()
        self.pixel_angle = 1.0 / (1.65 * size)
        self.heads = []
        for d in identity_dirs:
            params = json.loads((Path(d) / "synth_identity.json").read_text())["params"]
            self.heads.append(HeadModel(HeadParams.from_json(params)))
        self.identity_names = list(names) if names is not None else [Path(d).name for d in identity_dirs]
        self.calls = []

    def render_rays(self, origins, directions, near, far, identity, expression, frame_code=None, background=None):
        self.calls.append(dict(n=origins.shape[0], frame=frame_code, near=near, far=far))
        rgb = background.clone()
        hit_all = torch.zeros(origins.shape[0])
        for k in identity.unique().tolist():
            sel = torch.nonzero(identity == k).squeeze(1)
            c, hit, _ = self.heads[k].render_rays(origins[sel], directions[sel], expression[sel], pixel_angle=self.pixel_angle)
            rgb[sel[hit]] = c[hit]
            hit_all[sel] = hit.float()
        return {"rgb": rgb, "opacity": hit_all}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    dirs = generate(root, n_identities=2, n_frames=6, size=SIZE, novel_frames=2, val_fraction=0.34)
    return root, dirs


@pytest.fixture(scope="module")
def data(synth):
    return load_dataset([synth[0]], splits=("train", "val", "novel"))


# ------------------------------------------------------------------------------------------- transfer math


def test_expression_transfer_delta_and_absolute():
    tn = np.array([0.1, -0.2, 0.0])
    dn = np.array([0.3, 0.1, 0.5])
    drv = np.array([[0.3, 0.1, 0.5], [1.0, 0.0, 0.2]])
    delta = expression_transfer(tn, dn, drv, "delta")
    np.testing.assert_allclose(delta[0], tn, atol=1e-7)  # the driver at rest -> the target at rest
    np.testing.assert_allclose(delta[1], [0.1 + 0.7, -0.2 - 0.1, 0.0 - 0.3], atol=1e-7)
    np.testing.assert_array_equal(expression_transfer(tn, dn, drv, "absolute"), drv.astype(np.float32))
    assert delta.dtype == np.float32 and delta.shape == (2, 3)


def test_expression_transfer_bad_inputs():
    with pytest.raises(RenderError, match="unknown transfer mode 'sideways'"):
        expression_transfer(np.zeros(2), np.zeros(2), np.zeros((1, 2)), "sideways")
    with pytest.raises(RenderError, match="E=3.*target neutral 2"):
        expression_transfer(np.zeros(2), np.zeros(3), np.zeros((1, 3)))


def test_neutral_frame_is_smallest_norm(data):
    table = data.table("train")
    for ident in range(len(data.identities)):
        frames = table.frames_of(ident)
        got = neutral_frame(data, ident)
        norms = np.linalg.norm(table.expression[frames], axis=1)
        assert got in frames and np.isclose(np.linalg.norm(table.expression[got]), norms.min())
    assert neutral_frame(data, "id001", index=2) == table.frames_of(1)[2]
    with pytest.raises(RenderError, match="index 99 out of range"):
        neutral_frame(data, "id001", index=99)
    with pytest.raises(RenderError, match="identity 'bob' is not in the dataset"):
        neutral_frame(data, "bob")


def test_drive_path_uses_driver_cameras_and_transferred_expressions(data):
    path = drive_path(data, "id000", data, "novel", driver_identity="id001", mode="delta", pose="driver")
    nov = data.table("novel")
    frames = nov.frames_of(1)
    assert len(path) == frames.size and (path.width, path.height) == (SIZE, SIZE)
    np.testing.assert_array_equal(path.c2w, nov.c2w[frames])
    train = data.table("train")
    tn = train.expression[neutral_frame(data, 0)]
    dn = train.expression[neutral_frame(data, 1)]
    np.testing.assert_allclose(path.expression, tn + nov.expression[frames] - dn, atol=1e-6)
    absolute = drive_path(data, "id000", data, "novel", driver_identity="id001", mode="absolute")
    np.testing.assert_array_equal(absolute.expression, nov.expression[frames])
    with pytest.raises(RenderError, match="holds 2 identities"):
        drive_path(data, "id000", data, "novel")
    with pytest.raises(RenderError, match="driver split 'test' is not loaded"):
        drive_path(data, "id000", data, "test", driver_identity="id001")
    with pytest.raises(RenderError, match="identity 'carol' is not in the dataset"):
        drive_path(data, "carol", data, "novel", driver_identity="id001")


# ---------------------------------------------------------------------------------------------- cameras


def _random_rotations(rng, n, degrees):
    """n rotations about random axes by up to ``degrees`` (Rodrigues)."""
    out = []
    for _ in range(n):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        a = np.radians(rng.uniform(-degrees, degrees))
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        out.append(np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k)
    return np.stack(out)


def _c2w(rot, trans):
    """camera-to-head transforms from head-to-camera rotations (B, 3, 3) and translations (B, 3)."""
    w2c = np.tile(np.eye(4), (len(rot), 1, 1))
    w2c[:, :3, :3], w2c[:, :3, 3] = rot, trans
    return np.linalg.inv(w2c)


def test_relative_cameras_move_the_target_as_the_driver_moves():
    rng = np.random.default_rng(0)
    # the driver: a head near the camera's axis, turning up to 15 degrees; the target: framed farther away, off
    # centre and turned 20 degrees
    base = _random_rotations(rng, 1, 20)[0]
    drv = _c2w(_random_rotations(rng, 9, 15), np.array([0.1, -0.2, -3.0]) + rng.normal(scale=0.05, size=(9, 3)))
    tgt = _c2w(base @ _random_rotations(rng, 30, 5), np.array([-0.3, 0.1, -4.5]) + rng.normal(scale=0.05, size=(30, 3)))
    out = relative_cameras(drv, tgt)
    assert out.shape == drv.shape and out.dtype == np.float32
    # the target's framing: the same mean pose as its own cameras
    for a, b in zip(mean_head_pose(out), mean_head_pose(tgt)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # the driver's motion: frame-to-frame rotations and shifts in camera coordinates carried over unchanged
    w_out, w_drv = np.linalg.inv(out.astype(np.float64)), np.linalg.inv(drv)
    for i, j in ((0, 1), (2, 7), (8, 3)):
        np.testing.assert_allclose(w_out[i, :3, :3] @ w_out[j, :3, :3].T, w_drv[i, :3, :3] @ w_drv[j, :3, :3].T, atol=1e-5)
        np.testing.assert_allclose(w_out[i, :3, 3] - w_out[j, :3, 3], w_drv[i, :3, 3] - w_drv[j, :3, 3], atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(w_out[:, :3, :3]), 1.0, atol=1e-5)
    # a driver driving itself gets its own cameras back
    np.testing.assert_allclose(relative_cameras(drv, drv), drv, atol=1e-5)


def test_drive_path_head_pose_modes(synth, data):
    train, nov = data.table("train"), data.table("novel")
    own = train.frames_of(0)
    frames = nov.frames_of(1)
    relative = drive_path(data, "id000", data, "novel", driver_identity="id001")  # the default
    np.testing.assert_allclose(relative.c2w, relative_cameras(nov.c2w[frames], train.c2w[own]), atol=1e-6)
    still = drive_path(data, "id000", data, "novel", driver_identity="id001", pose="still")
    np.testing.assert_allclose(still.c2w, np.broadcast_to(still.c2w[:1], still.c2w.shape))
    for a, b in zip(mean_head_pose(still.c2w[:1]), mean_head_pose(train.c2w[own])):
        np.testing.assert_allclose(a, b, atol=1e-5)
    mine = drive_path(data, "id000", data, "novel", driver_identity="id001", pose="target")
    order = own[np.argsort(train.time[own], kind="stable")]
    np.testing.assert_array_equal(mine.c2w, train.c2w[order[:frames.size]])
    for p in (relative, still, mine):  # the target's framing and the driver's expressions, timing and sound
        assert len(p) == frames.size and (p.width, p.height) == (train.width, train.height)
        np.testing.assert_array_equal(p.intrinsics, np.repeat(train.intrinsics[own[:1]], frames.size, axis=0))
        np.testing.assert_array_equal(p.expression, drive_path(data, "id000", data, "novel", driver_identity="id001",
                                                               pose="driver").expression)
        np.testing.assert_array_equal(p.times, nov.time[frames])
    # a head driven by its own frames in the relative mode renders those frames (the oracle against the stored ones)
    oracle = Oracle(synth[1])
    path = drive_path(data, "id001", data, "train", driver_identity="id001")
    rows = train.frames_of(1)
    for b, img in enumerate(render_sequence(oracle, path, "id001", background=data.background(1),
                                            aabb=train.aabb[rows[0]])):
        truth = data.image("train", int(rows[b])).astype(np.float32) / 255.0
        assert -10 * np.log10(float(((img - truth) ** 2).mean())) > ORACLE_MIN_PSNR
    with pytest.raises(RenderError, match="unknown pose mode 'sideways'"):
        drive_path(data, "id000", data, "novel", driver_identity="id001", pose="sideways")


def test_a_driver_split_stored_out_of_time_order_plays_in_time_order(tmp_path):
    """DATASET.md does not ask for a split's frames in time order; a driven video played them as stored, a jumble
    of the driver's motion with the sound cut to match (each frame's sound at its own time). It plays them by time,
    like the target's own poses and the speech frames."""
    dirs = generate(tmp_path, n_identities=2, n_frames=12, size=16, novel_frames=1, val_fraction=0.5)
    file = dirs[1] / "transforms_val.json"
    meta = json.loads(file.read_text())
    meta["frames"] = [meta["frames"][k] for k in (3, 0, 5, 1, 4, 2)]
    file.write_text(json.dumps(meta))
    data = load_dataset([tmp_path], splits=("train", "val"))
    table = data.table("val")
    rows = table.frames_of(1)
    assert not np.all(np.diff(table.time[rows]) > 0)  # stored shuffled
    for pose in ("driver", "relative"):
        path = drive_path(data, "id000", data, "val", driver_identity="id001", mode="absolute", pose=pose)
        order = rows[np.argsort(table.time[rows])]
        np.testing.assert_array_equal(path.times, table.time[order])
        np.testing.assert_array_equal(path.expression, table.expression[order])
    np.testing.assert_array_equal(path.c2w, relative_cameras(table.c2w[order], data.table("train").c2w[
        data.table("train").frames_of(0)]))


def test_a_neutral_frame_index_counts_the_identitys_frames_in_time_order(tmp_path):
    """neutral_frame(index=k) says 'the position of the frame among the identity's own frames (0 = its first frame)',
    and a driven video plays a split in time order, but the index counted the frames as stored: in a split stored out
    of time order (DATASET.md allows it) index 0 took whichever frame the file listed first, not the video's first."""
    dirs = generate(tmp_path, n_identities=2, n_frames=12, size=16, novel_frames=1, val_fraction=0.5)
    file = dirs[1] / "transforms_train.json"
    meta = json.loads(file.read_text())
    meta["frames"] = [meta["frames"][k] for k in (3, 0, 5, 1, 4, 2)]
    file.write_text(json.dumps(meta))
    data = load_dataset([tmp_path], splits=("train",))
    table = data.table("train")
    rows = table.frames_of(1)
    order = rows[np.argsort(table.time[rows])]
    assert not np.array_equal(order, rows)  # stored shuffled
    for k in range(order.size):
        assert neutral_frame(data, "id001", index=k) == order[k]
    path = drive_path(data, "id000", data, "train", driver_identity="id001", mode="delta", driver_neutral_index=0)
    n_t = table.expression[neutral_frame(data, "id000")]
    np.testing.assert_allclose(path.expression[0], n_t, atol=1e-6)  # the video's first frame, its own neutral


def test_orbit_cameras_look_at_the_centre():
    centre = np.array([0.05, 0.1, -0.02])
    cams = orbit_cameras(12, 3.5, yaw_deg=30, pitch_deg=10, look_at=centre).astype(np.float64)
    assert cams.shape == (12, 4, 4)
    for c in cams:
        r, t = c[:3, :3], c[:3, 3]
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-6)
        assert np.linalg.norm(t - centre) == pytest.approx(3.5, abs=1e-5)
        forward = -r[:, 2]
        np.testing.assert_allclose(forward, (centre - t) / np.linalg.norm(centre - t), atol=1e-6)
    # Frame 0 is frontal (+z), with +y up; the sweep reaches +-30 degrees of yaw.
    np.testing.assert_allclose(cams[0, :3, :3], np.eye(3), atol=1e-6)
    yaws = np.degrees(np.arctan2(cams[:, 0, 3] - centre[0], cams[:, 2, 3] - centre[2]))
    assert yaws.max() == pytest.approx(30.0, abs=1e-3) and yaws.min() == pytest.approx(-30.0, abs=1e-3)
    # Around the origin every axis passes through it; around an offset centre the nearest-to-origin points
    # stay within the centre's size of it.
    np.testing.assert_allclose(look_at_point(orbit_cameras(12, 3.5)), 0.0, atol=1e-6)
    assert np.linalg.norm(look_at_point(cams) - centre) < np.linalg.norm(centre)
    # About another mean view: the angles view_angles reads back are the ones asked for.
    cams = orbit_cameras(8, 3.0, yaw_deg=5, pitch_deg=3, look_at=centre, centre_yaw_deg=12, centre_elevation_deg=-4)
    yaw, elevation = view_angles(cams, centre)
    s = np.arange(8) / 8
    np.testing.assert_allclose(yaw, 12 + 5 * np.sin(2 * np.pi * s), atol=1e-4)
    np.testing.assert_allclose(elevation, -4 + 3 * np.sin(4 * np.pi * s), atol=1e-4)
    for c in cams.astype(np.float64):  # still looking at the centre
        np.testing.assert_allclose(-c[:3, 2], (centre - c[:3, 3]) / np.linalg.norm(centre - c[:3, 3]), atol=1e-6)



@pytest.mark.parametrize("swing", [{"yaw_deg": float("nan")}, {"pitch_deg": float("inf")}, {"yaw_deg": -float("inf")}])
def test_orbit_cameras_refuse_a_swing_that_is_not_a_number_of_degrees(swing):
    """render --orbit --yaw nan rendered an orbit of NaN cameras (every frame the background, without a word), and
    --pitch inf stopped with 'error: math domain error', naming nothing: the swing is refused, named."""
    name = next(iter(swing))
    with pytest.raises(RenderError, match=rf"{name} \(--{name[:-4]}\) must be a finite number of degrees, got "):
        orbit_cameras(4, 3.0, **swing)


def test_a_camera_path_shows_what_it_is_in_a_line(data):
    """A notebook shows a cell's last value by its repr: ``path = fm.orbit_path(data, "id001"); path`` printed every
    camera matrix, intrinsic and expression of the default 60-frame orbit (777 lines, 34 KB; numpy shortens only
    arrays of over 1,000 numbers). It says how many frames, their size, rate, expressions and sound instead."""
    path = orbit_path(data, "id001")
    text = repr(path)
    assert "\n" not in text and len(text) < 300, text
    for shown in ("CameraPath", f"{len(path)} frames", f"{SIZE}x{SIZE}", "25 fps", f"E={path.expression.shape[1]}"):
        assert shown in text, (shown, text)
    assert repr(path.take(slice(0, 2))).startswith("CameraPath(2 frames")


def test_orbit_path_frames_the_identity(data):
    path = orbit_path(data, "id001", n_frames=5)
    assert len(path) == 5 and (path.width, path.height) == (SIZE, SIZE)
    table = data.table("train")
    np.testing.assert_array_equal(path.expression[3], table.expression[neutral_frame(data, 1)])
    # The synthetic cameras aim at (0, 0.1, 0) with up to 0.04 of sideways shift (and a nod of < 12 degrees).
    own = table.c2w[table.frames_of(1)]
    np.testing.assert_allclose(look_at_point(own), [0, 0.1, 0], atol=0.05)
    # By default the orbit swings about the training views' mean as far as they reach (90th percentile, at least 2
    # degrees: these four frames turn by 1), no farther.
    centre = look_at_point(own)
    yaw, elevation = view_angles(own, centre)
    path = orbit_path(data, "id001", n_frames=40)
    oy, oe = view_angles(path.c2w, centre)
    reach = lambda a: max(2.0, np.percentile(np.abs(a - a.mean()), 90))  # noqa: E731
    assert oy.mean() == pytest.approx(yaw.mean(), abs=0.05) and oe.mean() == pytest.approx(elevation.mean(), abs=0.05)
    assert np.abs(oy - yaw.mean()).max() == pytest.approx(reach(yaw), abs=0.05)
    assert np.abs(oe - elevation.mean()).max() == pytest.approx(reach(elevation), abs=0.05)
    wide = view_angles(orbit_path(data, "id001", n_frames=40, yaw_deg=30, pitch_deg=10).c2w, centre)
    assert np.abs(wide[0] - yaw.mean()).max() == pytest.approx(30, abs=0.05)
    assert np.abs(wide[1] - elevation.mean()).max() == pytest.approx(10, abs=0.05)


# ------------------------------------------------------------------------------------------------- video


def _frames(n, h, w):
    y, x = np.mgrid[0:h, 0:w]
    return [np.stack([x / w, y / h, np.full((h, w), k / n)], axis=2).astype(np.float32) for k in range(n)]


VIDEO_MEAN_ERROR = 6.0
"""Mean absolute difference (of 255) allowed between smooth gradients and their H.264/yuv420p round trip:
chroma subsampling and quantisation, not a wrong frame (a frame mix-up or transposition costs > 30)."""


@pytest.mark.parametrize("h,w", [(32, 48), (21, 31)])
def test_write_video_reads_back(tmp_path, h, w):
    import imageio_ffmpeg

    frames = _frames(7, h, w)
    info = write_video(iter(frames), tmp_path / "sub" / "v.mp4", fps=10, png_dir=tmp_path / "png")
    assert (info.n_frames, info.width, info.height) == (7, w, h)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "sub" / "v.mp4"))
    meta = reader.__next__()
    ew, eh = w + w % 2, h + h % 2
    assert tuple(meta["size"]) == (ew, eh)
    got = [np.frombuffer(f, np.uint8).reshape(eh, ew, 3) for f in reader]
    assert len(got) == 7
    for g, f in zip(got, frames):
        ref = np.rint(f * 255)
        assert np.abs(g[:h, :w].astype(float) - ref).mean() < VIDEO_MEAN_ERROR
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert [p.name for p in pngs] == [f"{k:05d}.png" for k in range(7)]
    np.testing.assert_array_equal(iio.imread(pngs[3]), np.rint(frames[3] * 255).astype(np.uint8))


def _top_boxes(path):
    """The types of an ISO media file's top-level boxes (ftyp, moov, mdat, ...), in file order."""
    import struct

    types = []
    with open(path, "rb") as f:
        while True:
            head = f.read(8)
            if len(head) < 8:
                return types
            size, kind = struct.unpack(">I4s", head)
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0] - 8
            types.append(kind.decode("latin-1"))
            if size == 0:
                return types
            f.seek(size - 8, 1)


@pytest.mark.parametrize("name", ["v.mp4", "v.mov", "v.m4v"])
def test_write_video_puts_the_index_before_the_pictures_so_a_browser_plays_it_while_it_downloads(tmp_path, name):
    """ffmpeg writes the mp4 index (moov) after the pictures (mdat) unless told +faststart: a browser or phone
    given the file over the web must then fetch all of it (or seek to its end) before the first frame shows."""
    info = write_video(iter(_frames(5, 16, 16)), tmp_path / name, fps=10)
    boxes = _top_boxes(info.path)
    assert "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat"), boxes


VIDEO_COLOURS = np.array([[224, 172, 140], [141, 85, 54], [255, 255, 255], [20, 20, 20], [200, 30, 40],
                          [40, 190, 60], [30, 60, 210], [0, 255, 0]], np.uint8)
"""Flat colours of a video colour check: skin tones, white, near black, saturated red, green, blue, a green screen's."""


def _colour_tags(path):
    """The (range, matrix, primaries, transfer) ffmpeg reads from the video stream of ``path``, None where untagged."""
    import subprocess

    import imageio_ffmpeg

    said = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True).stderr
    fmt = re.search(r"Video: h264.*?, yuv420p(?:\(([^)]*)\))?", said)
    assert fmt is not None, said
    parts = [p.strip() for p in (fmt.group(1) or "").split(",") if p.strip() not in ("progressive", "top first",
                                                                                      "bottom first")]
    rng = next((p for p in parts if p in ("tv", "pc")), None)
    spaces = [p for p in parts if p not in ("tv", "pc")]
    matrix, primaries, transfer = spaces[0].split("/") if spaces and "/" in spaces[0] else (spaces or [None]) * 3
    return rng, matrix, primaries, transfer


def _decoded_as_tagged(path, matrix, h, w):
    """The video's frames as a standard player shows them: its 8-bit yuv420p planes (tv range) turned into RGB with
    the luma weights of the ``matrix`` its stream is tagged with, in floating point (each chroma sample for its
    2x2 block)."""
    import subprocess

    import imageio_ffmpeg

    kr, kb = {"bt709": (0.2126, 0.0722), "bt470bg": (0.299, 0.114), "smpte170m": (0.299, 0.114)}[matrix]
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "yuv420p", "-"], capture_output=True, check=True).stdout
    planes = np.frombuffer(raw, np.uint8).astype(np.float64).reshape(-1, h * w * 3 // 2)
    frames = []
    for p in planes:
        y = p[:h * w].reshape(h, w)
        cb, cr = (np.repeat(np.repeat(c.reshape(h // 2, w // 2), 2, 0), 2, 1)
                  for c in (p[h * w:h * w * 5 // 4], p[h * w * 5 // 4:]))
        luma, cb, cr = (y - 16) / 219, (cb - 128) / 224, (cr - 128) / 224
        r, b = luma + 2 * (1 - kr) * cr, luma + 2 * (1 - kb) * cb
        g = (luma - kr * r - kb * b) / (1 - kr - kb)
        frames.append(np.clip(np.rint(np.stack([r, g, b], -1) * 255), 0, 255))
    return np.stack(frames)


def test_write_video_tags_its_colours_so_players_show_the_rendered_ones(tmp_path):
    """The frames are sRGB: the video says so (BT.709 primaries and matrix, sRGB transfer, tv range), and its
    pictures are converted with the matrix it names, so that a player, which turns them back into RGB by the
    tags (or, untagged, by a guess: BT.709 for HD in browsers, BT.601 for SD elsewhere), shows each flat colour
    within a level or two of the rendered one. Untagged and converted with BT.601, a player that takes BT.709 showed
    skin 3-5 levels off, a saturated red 17 and a green screen's green 39."""
    frames = [np.full((32, 48, 3), c, np.uint8) for c in VIDEO_COLOURS]
    info = write_video(iter(frames), tmp_path / "v.mp4", fps=10)
    rng, matrix, primaries, transfer = _colour_tags(info.path)
    assert (rng, matrix, primaries, transfer) == ("tv", "bt709", "bt709", "iec61966-2-1")
    shown = _decoded_as_tagged(info.path, matrix, 32, 48)
    error = np.abs(shown - VIDEO_COLOURS[:, None, None, :].astype(np.float64))
    assert error.max() <= 2, error.max(axis=(1, 2))


def _frame_rate(path):
    """The exact frame rate of the video stream of ``path``: one over the step between its frames' timestamps, in
    the stream's time base (ffmpeg's framecrc of the packets as stored)."""
    import subprocess
    from fractions import Fraction

    import imageio_ffmpeg

    said = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:v:0", "-c",
                           "copy", "-f", "framecrc", "-"], capture_output=True, text=True, check=True).stdout
    base = Fraction(re.search(r"^#tb 0: (\d+/\d+)", said, re.M).group(1))
    steps = {int(line.split(",")[3]) for line in said.splitlines() if line.startswith("0,")}
    assert len(steps) == 1, steps
    return 1 / (base * steps.pop())


@pytest.mark.parametrize("fps,exact", [(29.97, "30000/1001"), (23.976, "24000/1001"), (23.98, "24000/1001"),
                                       (59.94, "60000/1001"), (30000 / 1001, "30000/1001"), (25, "25"),
                                       (12.5, "25/2"), (30, "30")])
def test_write_video_writes_an_ntsc_rate_given_in_decimals_exactly(tmp_path, fps, exact):
    """29.97 is how ffmpeg lists a 30000/1001 video (a phone's, a camcorder's; prepare reads a driver's rate so) and
    what a user gives --fps for one: the video is written at 30000/1001, the NTSC rate that editors' timelines and
    players run at, not at 2997/100, which differs from it by 0.001 % (a separate rate to an editor, which
    conforms it); other rates stay as they are."""
    from fractions import Fraction

    info = write_video(iter(_frames(4, 16, 16)), tmp_path / "v.mp4", fps=fps)
    assert _frame_rate(info.path) == Fraction(exact)


@pytest.mark.parametrize("quality", [0, 0.5, 11, float("nan")])
def test_write_video_refuses_a_quality_out_of_its_range_before_any_frame(tmp_path, quality):
    """write_video's quality was documented as 0 (worst) to 10 (best), but imageio-ffmpeg takes 1 to 10 and stopped
    the render at its first frame with a bare AssertionError ('quality must be between 1 and 10 inclusive'; under
    python -O no check at all, and x264's worst setting)."""
    def frames():
        raise AssertionError("a frame was asked for")
        yield

    with pytest.raises(RenderError, match=r"quality .* 1 \(worst\) to 10 \(best\)"):
        write_video(frames(), tmp_path / "v.mp4", fps=10, quality=quality)
    assert not (tmp_path / "v.mp4").exists()


@pytest.mark.parametrize("fps", [0, -5, float("inf"), float("nan")])
def test_write_video_refuses_a_rate_that_is_not_a_positive_number_before_any_frame(tmp_path, fps):
    """fps=inf stopped with a traceback (OverflowError: cannot convert Infinity to integer ratio, from render --fps
    inf too), NaN alike (ValueError), 0 wrote a 16 fps video and a negative rate failed in ffmpeg once every frame
    was rendered."""
    def frames():
        raise AssertionError("a frame was asked for")
        yield

    with pytest.raises(RenderError, match=r"fps must be a positive number"):
        write_video(frames(), tmp_path / "v.mp4", fps=fps)
    assert not (tmp_path / "v.mp4").exists()


def test_write_video_again_removes_an_earlier_renders_frames_past_99999(tmp_path):
    """PNG frames are numbered with at least five digits, so a render of over 100,000 frames (67 minutes at 25 fps:
    a lecture driven through) writes 100000.png on; the clean-up of an earlier, longer render's frames looked only for
    five-digit names and left those behind."""
    png = tmp_path / "png"
    png.mkdir()
    for name in ("100000.png", "123456.png", "notes.png", "12345x.png"):
        (png / name).write_bytes(b"an earlier render's")
    write_video(iter(_frames(2, 16, 16)), None, fps=10, png_dir=png)
    assert sorted(p.name for p in png.glob("*.png")) == ["00000.png", "00001.png", "12345x.png", "notes.png"]

def test_write_video_replaces_earlier_output_whole_or_not_at_all(tmp_path):
    """Rendering again into the same mp4 and PNG folder: a shorter video leaves no frames of the longer one behind;
    an interrupted render leaves the earlier mp4 whole (written beside it, renamed at the end) and no part file."""
    import imageio_ffmpeg

    def n_frames(path):
        reader = imageio_ffmpeg.read_frames(str(path))
        next(reader)
        return sum(1 for _ in reader)

    video, png = tmp_path / "v.mp4", tmp_path / "png"
    write_video(iter(_frames(6, 16, 16)), video, fps=10, png_dir=png)
    (png / "notes.png").write_bytes(b"not ours")  # a file not named as a frame is left alone
    write_video(iter(_frames(3, 16, 16)), video, fps=10, png_dir=png)
    assert n_frames(video) == 3
    assert sorted(p.name for p in png.glob("*.png")) == ["00000.png", "00001.png", "00002.png", "notes.png"]

    def interrupted():
        yield from _frames(2, 16, 16)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_video(interrupted(), video, fps=10)
    assert n_frames(video) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["png", "v.mp4"]


def test_write_video_bad_inputs(tmp_path):
    with pytest.raises(RenderError, match="no frames"):
        write_video([], tmp_path / "a.mp4")
    with pytest.raises(RenderError, match="frame 1 is 8x8, the video is 10x10"):
        write_video([np.zeros((10, 10, 3)), np.zeros((8, 8, 3))], tmp_path / "b.mp4")


@pytest.mark.parametrize("name", ["v", "v.webm", "v.gif", "v.png"])
def test_write_video_refuses_a_file_that_cannot_hold_h264_before_any_frame(tmp_path, name):
    """An output name without a suffix crashed in ffmpeg after the first frames were rendered; .webm / .gif / .png
    'succeeded' and replaced an earlier file with an empty or broken one. Refused up front, naming the file, with the
    earlier file left as it was and no frame asked for."""
    out = tmp_path / name
    out.write_bytes(b"earlier work")
    asked = []

    def frames():
        for f in _frames(3, 16, 16):
            asked.append(1)
            yield f

    with pytest.raises(RenderError, match=rf"{name}.*\.mp4"):
        write_video(frames(), out, fps=10)
    assert asked == [] and out.read_bytes() == b"earlier work"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("when", ["at_start", "at_end"])
def test_write_video_a_failed_encode_is_an_error_naming_the_file_and_keeps_the_earlier_one(tmp_path, monkeypatch, when):
    """imageio-ffmpeg never looks at ffmpeg's exit status: an ffmpeg that failed once it had the frames (a full disk
    when it writes the mp4's index at the end) left a broken file under the name, reported as written; one that quit
    at once surfaced as a FileNotFoundError about the hidden part file. Both are an error naming the video, and an
    earlier video of that name stays as it was."""
    import imageio_ffmpeg

    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fail = "exit 1" if when == "at_start" else 'cat > /dev/null; echo broken > "$last"; exit 1'
    real = imageio_ffmpeg.get_ffmpeg_exe()  # what imageio-ffmpeg asks besides the video (its encoders) goes to ffmpeg
    fake.write_text(f'#!/bin/sh\nfor last; do :; done\ncase "$last" in *"{tmp_path / "out"}"*) {fail};; esac\n'
                    f'exec "{real}" "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake))
    out = tmp_path / "out" / "v.mp4"
    out.parent.mkdir()
    out.write_bytes(b"earlier work")
    with pytest.raises(RenderError, match=re.escape(str(out)) + ".*ffmpeg.*kept as it was"):
        write_video(iter(_frames(40, 64, 64)), out, fps=10)
    assert out.read_bytes() == b"earlier work"
    assert sorted(p.name for p in out.parent.iterdir()) == ["v.mp4"]


def test_write_video_whose_soundtrack_cannot_be_written_names_the_video(tmp_path, file_size_limit):
    """The soundtrack goes to a temporary WAV file beside the video for ffmpeg to read: on a full disk (here a file
    size limit) render stopped with "error: [Errno 27] File too large: 'out/.v.mp4.<process>-0.audio.wav'", a file
    the user never asked for, or (before the writer named its file) with no file at all. The error names the video,
    as when its folder cannot be written, and leaves nothing beside it."""
    from fastminerf.audio import Audio

    out = tmp_path / "out" / "v.mp4"
    sound = Audio(np.zeros(16000, np.int16), 16000)  # 32,000 bytes; the frames are not encoded yet
    with file_size_limit(3000), pytest.raises(RenderError) as info:
        write_video(iter(_frames(4, 16, 16)), out, fps=10, audio=sound)
    assert str(info.value).startswith(f"{out}: cannot write the video there (") and "audio.wav" not in str(info.value)
    assert list(out.parent.iterdir()) == []


@contextlib.contextmanager
def _read_only(folder):
    """``folder`` made unwritable: by its mode, or (for root, whom modes do not stop) as an immutable folder; the test
    is skipped where neither holds."""
    import shutil
    import subprocess

    folder.chmod(0o555)
    immutable = (os.access(folder, os.W_OK) and shutil.which("chattr") is not None
                 and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0)
    try:
        try:
            (folder / ".probe").touch()
        except OSError:
            yield folder
        else:
            pytest.skip("cannot make a folder read-only here")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.mark.parametrize("case", ["folder", "read_only"])
def test_write_video_refuses_an_output_it_cannot_write_before_any_frame(tmp_path, case):
    """An --out that is a folder, or a video in a read-only folder, was found out only after every frame had been
    rendered (minutes for a long video), as an OSError about the hidden part file ('Is a directory: .v.part.mp4 ->
    v.mp4', 'Read-only file system: .v.part.mp4') or ffmpeg's failure. Refused before any frame is asked for, naming
    the video; an earlier video there stays."""
    asked = []

    def frames():
        for f in _frames(3, 16, 16):
            asked.append(1)
            yield f

    if case == "folder":
        out = tmp_path / "v.mp4"
        out.mkdir()
        with pytest.raises(RenderError, match=re.escape(str(out)) + ".*folder"):
            write_video(frames(), out, fps=10)
        assert out.is_dir() and list(out.iterdir()) == []
    else:
        out = tmp_path / "ro" / "v.mp4"
        out.parent.mkdir()
        out.write_bytes(b"earlier work")
        with _read_only(out.parent), pytest.raises(RenderError, match=re.escape(str(out)) + ".*cannot write"):
            write_video(frames(), out, fps=10)
        assert out.read_bytes() == b"earlier work" and sorted(p.name for p in out.parent.iterdir()) == ["v.mp4"]
    assert asked == []


# ---------------------------------------------------------------------------------- rendering with oracle


def test_render_frame_reproduces_ground_truth(synth, data):
    oracle = Oracle(synth[1])
    for split, index in (("train", 1), ("val", 3)):
        img = render_frame(oracle, data, split, index)
        truth = data.image(split, index).astype(np.float32) / 255.0
        assert img.shape == (SIZE, SIZE, 3)
        err = np.abs(img - truth)
        mse = float((err**2).mean())
        assert -10 * np.log10(max(mse, 1e-12)) > ORACLE_MIN_PSNR
    # Frames get the model's default code unless asked for the training-frame codes.
    assert all(c["frame"] is None for c in oracle.calls)
    render_frame(oracle, data, "train", 1, use_frame_codes=True)
    assert oracle.calls[-1]["frame"].tolist() == [1] * SIZE * SIZE


def test_a_split_not_loaded_is_refused_naming_the_split_frame_identity_and_loaded_splits(synth, data):
    # render_frame(model, data, "test", 0) (or neutral_frame, orbit_path) on a dataset loaded without that split
    # raised a bare KeyError from the dataset's table, not the RenderError the other render functions give, and said
    # neither which frame nor whose was asked for
    oracle = Oracle(synth[1])
    loaded = r"is not loaded; loaded: \['train', 'val', 'novel'\]"
    with pytest.raises(RenderError, match=rf"frame 3 of split 'test'.*{loaded}"):
        render_frame(oracle, data, "test", 3)
    with pytest.raises(RenderError, match=rf"identity 'id001'.*split 'test'.*{loaded}"):
        neutral_frame(data, "id001", "test")
    with pytest.raises(RenderError, match=rf"identity 'id000'.*split 'test'.*{loaded}"):
        orbit_path(data, "id000", 4, split="test")


def test_identity_mapping_is_by_name(synth, data):
    swapped = Oracle(synth[1][::-1])  # the model's id 0 is 'id001'
    assert identity_id(swapped, "id001") == 0
    img = render_frame(swapped, data, "val", 0)
    truth = data.image("val", 0).astype(np.float32) / 255.0
    assert -10 * np.log10(float(((img - truth) ** 2).mean())) > ORACLE_MIN_PSNR
    with pytest.raises(RenderError, match="unknown identity 'zed'"):
        identity_id(swapped, "zed")


def test_evaluate_refuses_data_of_another_expression_length_before_rendering(data):
    # eval of a model trained with 10 coefficients on data with 12 started its progress bar and failed at the first
    # frame with "expression must have shape (N, 10), got (1024, 12)", naming neither the data nor its file
    from fastminerf.config import load_config
    from fastminerf.data.layout import DatasetError
    from fastminerf.model import MINeRF

    model = MINeRF(load_config("tiny").model, 10, data.identities, [0, 1])
    calls = []
    with pytest.raises(DatasetError, match="length 12.*10") as err:
        evaluate(model, data, "val", with_lpips=False, with_lmd=False, progress=lambda *a: calls.append(a))
    assert "id000/transforms_train.json" in str(err.value) and err.value.key == "expression" and calls == []


def test_evaluate_with_oracle_and_a_wrong_model(synth, data, tmp_path):
    res = evaluate(Oracle(synth[1]), data, "val", out_dir=tmp_path / "ev")
    assert set(res["identities"]) == {"id000", "id001"}
    for name, m in res["identities"].items():
        assert m["frames"] == len(data.table("val").frames_of(data.identities.index(name)))
        assert m["psnr"] > ORACLE_MIN_PSNR and m["ssim"] > 0.99 and m["l1"] < 2.0 / 255
    mean_psnr = np.mean([m["psnr"] for m in res["identities"].values()])
    assert res["mean"]["psnr"] == pytest.approx(mean_psnr)
    on_disk = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert on_disk["mean"] == pytest.approx(res["mean"])
    sbs = sorted((tmp_path / "ev" / "side_by_side" / "id000").glob("*.png"))
    assert len(sbs) == res["identities"]["id000"]["frames"]
    panel = SIZE * -(-SIDE_BY_SIDE_MIN_PANEL // SIZE)  # captioned and enlarged (test_evaluate_side_by_side_images_are_labelled_...)
    assert iio.imread(sbs[0]).shape == (SIDE_BY_SIDE_HEADER + panel, 3 * panel, 3)
    # A model that renders the other person: the same plumbing must report it as much worse.
    wrong = Oracle(synth[1], names=["id001", "id000"])
    bad = evaluate(wrong, data, "val")
    assert bad["mean"]["psnr"] < res["mean"]["psnr"] - 10
    with pytest.raises(RenderError, match="unknown identity 'id001'"):
        evaluate(Oracle(synth[1][:1]), data, "val")
    with pytest.raises(RenderError, match="split 'test' is not loaded"):
        evaluate(Oracle(synth[1]), data, "test")


def test_evaluate_again_into_one_folder_leaves_only_this_evaluations_images(synth, data, tmp_path):
    """A second evaluation into the same folder (fewer frames, another split or model) left the first one's
    side-by-side images of the frames it did not render beside its metrics.json; an image not named as a frame is
    left alone."""
    evaluate(Oracle(synth[1]), data, "train", out_dir=tmp_path / "ev", with_lpips=False, with_lmd=False)
    folder = tmp_path / "ev" / "side_by_side" / "id000"
    assert len(list(folder.glob("*.png"))) > 1
    (folder / "notes.png").write_bytes(b"not ours")
    res = evaluate(Oracle(synth[1]), data, "train", out_dir=tmp_path / "ev", max_frames=1, with_lpips=False,
                   with_lmd=False)
    assert res["identities"]["id000"]["frames"] == 1
    assert sorted(p.name for p in folder.glob("*.png")) == ["0000.png", "notes.png"]


def test_evaluate_again_removes_an_earlier_long_splits_images_past_frame_9999(synth, data, tmp_path):
    """Side-by-side images are named by the frame's position with at least four digits, so a split of more than
    10,000 frames (a 20-minute lecture's training frames at 25 fps) gives 10000.png on; the clean-up of an earlier
    evaluation's images looked only for four-digit names and left those beside the new evaluation's."""
    folder = tmp_path / "ev" / "side_by_side" / "id000"
    folder.mkdir(parents=True)
    for name in ("10000.png", "23999.png", "notes.png", "1234a.png"):
        (folder / name).write_bytes(b"an earlier evaluation's")
    evaluate(Oracle(synth[1]), data, "train", out_dir=tmp_path / "ev", max_frames=1, with_lpips=False, with_lmd=False)
    assert sorted(p.name for p in folder.glob("*.png")) == ["0000.png", "1234a.png", "notes.png"]


def _stopped_in_third_image(monkeypatch):
    """imageio's imwrite stopped (Ctrl-C, a kill) half way through the third image it writes."""
    real, calls = iio.imwrite, []

    def cut(path, *args, **kwargs):
        calls.append(path)
        real(path, *args, **kwargs)
        if len(calls) == 3:
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt
    monkeypatch.setattr(iio, "imwrite", cut)


def _whole_pngs(folder):
    """The folder holds only whole PNGs (every one decodes) and no temporary file."""
    for p in folder.iterdir():
        assert p.suffix == ".png", p
        iio.imread(p)
    return sorted(p.name for p in folder.iterdir())


def test_a_stopped_render_or_evaluation_leaves_no_half_png(synth, data, tmp_path, monkeypatch):
    """render --png-dir and eval --out wrote each PNG under its final name: stopped in a write, a frame cut short
    stayed as 00002.png (or 0002.png beside metrics.json), a file any viewer or script takes for a whole frame.
    Each is written beside its name and renamed when whole."""
    _stopped_in_third_image(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        write_video(iter(_frames(5, 16, 16)), None, fps=10, png_dir=tmp_path / "png")
    assert _whole_pngs(tmp_path / "png") == ["00000.png", "00001.png"]
    _stopped_in_third_image(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(Oracle(synth[1]), data, "train", out_dir=tmp_path / "ev", with_lpips=False, with_lmd=False)
    assert _whole_pngs(tmp_path / "ev" / "side_by_side" / "id000") == ["0000.png", "0001.png"]


def test_a_stopped_evaluation_leaves_no_earlier_metrics_beside_its_images(synth, data, tmp_path):
    """eval --out into a folder of an earlier evaluation, stopped part way: the earlier metrics.json stayed whole beside
    side-by-side images this evaluation had already replaced (another split, model or frames), so the folder read as
    one evaluation whose scores were not those of its images. The earlier metrics go when this one starts writing."""
    evaluate(Oracle(synth[1]), data, "train", out_dir=tmp_path / "ev", with_lpips=False, with_lmd=False)
    assert (tmp_path / "ev" / "metrics.json").is_file()

    def stop(done, total):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(Oracle(synth[1], names=["id001", "id000"]), data, "train", out_dir=tmp_path / "ev",
                 with_lpips=False, with_lmd=False, progress=stop)
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_evaluate_reports_how_far_each_head_pose_is_from_training(synth, data):
    """``pose_gap``: the mean angle from each evaluated frame's head pose to the identity's nearest training one."""
    from fastminerf.metrics import rotation_gap_deg

    oracle = Oracle(synth[1])
    res = evaluate(oracle, data, "val", with_lmd=False)
    assert "pose_gap" in res["metrics"]
    val, train = data.table("val"), data.table("train")
    for i, name in enumerate(data.identities):
        expected = rotation_gap_deg(val.c2w[val.frames_of(i)][:, :3, :3], train.c2w[train.frames_of(i)][:, :3, :3])
        assert res["identities"][name]["pose_gap"] == pytest.approx(float(expected.mean()))
        assert 0.5 < res["identities"][name]["pose_gap"] < 45  # the procedural heads turn between frames
    assert res["mean"]["pose_gap"] == pytest.approx(np.mean([m["pose_gap"] for m in res["identities"].values()]))
    assert evaluate(oracle, data, "train", with_lmd=False)["mean"]["pose_gap"] == pytest.approx(0.0, abs=1e-3)
    # without the train split there is nothing to compare with: no column
    assert "pose_gap" not in evaluate(oracle, load_dataset([synth[0]], splits=("val",)), "val", with_lmd=False)["metrics"]


def test_evaluate_with_a_model_per_identity(synth, data):
    # Per-identity fine-tuned runs: each identity is rendered by its own model and scored as if alone.
    good, wrong = Oracle(synth[1]), Oracle(synth[1], names=["id001", "id000"])
    each = evaluate({"id000": good, "id001": wrong}, data, "val", with_lmd=False)
    alone = [evaluate(m, data, "val", identities=[n], with_lmd=False)["identities"][n]
             for n, m in (("id000", good), ("id001", wrong))]
    assert each["identities"]["id000"] == alone[0] and each["identities"]["id001"] == alone[1]
    assert each["mean"]["psnr"] == pytest.approx((alone[0]["psnr"] + alone[1]["psnr"]) / 2)
    assert alone[0]["psnr"] > alone[1]["psnr"] + 10
    with pytest.raises(RenderError, match="no model given for identity 'id001'"):
        evaluate({"id000": good}, data, "val")


def test_evaluate_face_box_and_given_expressions(synth, data):
    """FACE PSNR is the PSNR inside each frame's bbox; rendering with given expressions (as eval --speech does)
    changes what is rendered and nothing else."""
    oracle = Oracle(synth[1])
    table = data.table("val")
    own = evaluate(oracle, data, "val", with_lmd=False)
    assert own["expressions"] == "tracked" and "face_psnr" in own["metrics"] and "lmd" not in own["metrics"]
    index = int(table.frames_of(0)[0])
    y0, y1, x0, x1 = (int(np.floor(table.bbox[index][0] * SIZE)), int(np.ceil(table.bbox[index][1] * SIZE)),
                      int(np.floor(table.bbox[index][2] * SIZE)), int(np.ceil(table.bbox[index][3] * SIZE)))
    assert 0 < y1 - y0 < SIZE or 0 < x1 - x0 < SIZE  # a box, not the whole frame
    wrong = np.array(table.expression, copy=True)
    wrong[:, EXPRESSION_NAMES.index("jaw_open")] = 1.0  # every mouth wide open
    one = evaluate(oracle, data, "val", max_frames=1, with_lmd=False, expressions=wrong, expressions_from="jaw open")
    pred = render_frame(oracle, data, "val", index, expression=wrong[index])
    truth = data.image("val", index).astype(np.float32) / 255.0
    assert one["expressions"] == "jaw open"
    assert one["identities"]["id000"]["face_psnr"] == pytest.approx(float(psnr(pred[y0:y1, x0:x1], truth[y0:y1, x0:x1])))
    assert one["identities"]["id000"]["psnr"] == pytest.approx(float(psnr(pred, truth)))
    assert one["mean"]["face_psnr"] < own["mean"]["face_psnr"] - 5  # the open mouths are wrong, and inside the box
    same = evaluate(oracle, data, "val", with_lmd=False, expressions=table.expression)
    assert same["mean"] == pytest.approx(own["mean"])
    with pytest.raises(RenderError, match="expressions for split 'val' must be"):
        evaluate(oracle, data, "val", expressions=wrong[:1])
    with pytest.raises(RenderError, match="expression of shape"):
        render_frame(oracle, data, "val", index, expression=wrong[index, :3])


@pytest.mark.skipif(not landmark_status()[0], reason="mediapipe (make install) is not installed")
def test_evaluate_mouth_and_eye_metrics_see_a_wrong_mouth_and_shut_eyes(tmp_path):
    """At 128 px mediapipe finds the procedural faces: the exact renders have LMD under a pixel and a clean mouth box; renders
    with every mouth wide open lose most inside that box and move the lip landmarks; with every eye shut, the eye boxes
    lose most and the eye aspect ratios differ."""
    dirs = generate(tmp_path, n_identities=1, n_frames=6, size=128, novel_frames=1, val_fraction=0.34, seed=0)
    data = load_dataset(dirs, splits=("val",))
    oracle = Oracle(dirs, size=128)
    exact = evaluate(oracle, data, "val")["identities"]["id000"]
    assert exact["lmd_frames"] == exact["frames"] == 2 and exact["lmd"] < 1.0  # near-exact renders, mediapipe scatter
    assert exact["mouth_psnr"] > ORACLE_MIN_PSNR
    wrong = np.array(data.table("val").expression, copy=True)
    wrong[:, EXPRESSION_NAMES.index("jaw_open")] = 1.0
    opened = evaluate(oracle, data, "val", expressions=wrong)["identities"]["id000"]
    assert opened["lmd"] > 2.0, opened
    assert opened["mouth_psnr"] < opened["face_psnr"] < exact["face_psnr"], opened  # the error is in the mouth
    # the eyes likewise: exact renders have the real frame's eye openings, shut eyes are seen in the eye boxes
    assert exact["eye_psnr"] > ORACLE_MIN_PSNR and exact["ear_error"] < 0.03, exact
    assert abs(opened["eye_psnr"] - exact["eye_psnr"]) < 3.0, opened  # an open mouth leaves the eyes alone
    shut = np.array(data.table("val").expression, copy=True)
    shut[:, [EXPRESSION_NAMES.index("blink_left"), EXPRESSION_NAMES.index("blink_right")]] = 0.7  # fully shut, mediapipe loses the face
    blind = evaluate(oracle, data, "val", expressions=shut)["identities"]["id000"]
    assert blind["eye_psnr"] < blind["face_psnr"] - 5 and blind["face_psnr"] < exact["face_psnr"], blind  # the error is in the eyes
    assert blind["lmd_frames"] == 2 and blind["ear_error"] > 0.1 + exact["ear_error"], blind


def test_side_by_side_panels():
    p = np.zeros((4, 5, 3), np.float32)
    t = np.full((4, 5, 3), 0.1, np.float32)
    img = side_by_side(p, t)
    assert img.shape == (4, 15, 3) and img.dtype == np.uint8
    assert (img[:, :5] == 0).all() and (img[:, 5:10] == 26).all()
    assert (img[:, 10:] == 102).all()  # 4 x 0.1 -> 0.4 -> 102


def test_render_video_drives_target(synth, data, tmp_path):
    import imageio_ffmpeg

    oracle = Oracle(synth[1])
    path = drive_path(data, "id000", data, "novel", driver_identity="id001", mode="delta")
    seen = []
    info = render_video(oracle, path, "id000", tmp_path / "t.mp4", background=data.background(0),
                        aabb=data.table("train").aabb[0], progress=lambda d, t: seen.append((d, t)))
    assert info.n_frames == len(path) and seen[-1] == (len(path), len(path))
    frames = list(imageio_ffmpeg.read_frames(str(tmp_path / "t.mp4")))[1:]
    assert len(frames) == len(path)
    # The oracle renders exactly what the generator would: compare with a direct trace of the target head.
    first = next(render_sequence(oracle, path, 0, background=data.background(0), aabb=data.table("train").aabb[0]))
    rgb, hit = oracle.heads[0].render_frames(torch.from_numpy(path.c2w[:1]), torch.from_numpy(path.intrinsics[0]),
                                             SIZE, SIZE, torch.from_numpy(path.expression[:1]))
    want = np.where(hit[0].numpy()[..., None], rgb[0].numpy(), data.background(0) / 255.0)
    assert np.abs(first - want).mean() < 1e-3
    assert hit[0].float().mean() > 0.1  # the head is in the picture
    with pytest.raises(RenderError, match="exactly one of aabb and near_far"):
        next(render_sequence(oracle, path, 0))


def test_camera_path_checks_shapes():
    with pytest.raises(RenderError, match="one B"):
        CameraPath(np.zeros((2, 4, 4)), np.zeros((3, 4)), np.zeros((2, 5)), 8, 8)


def test_camera_path_take_keeps_frames_together():
    b = 5
    path = CameraPath(np.arange(b * 16, dtype=np.float32).reshape(b, 4, 4), np.arange(b * 4, dtype=np.float32).reshape(b, 4),
                      np.arange(b * 3, dtype=np.float32).reshape(b, 3), 8, 6, fps=30.0, times=np.arange(b) / 30.0,
                      expression_space="s")
    sub = path.take(np.array([4, 1]))
    np.testing.assert_array_equal(sub.c2w, path.c2w[[4, 1]])
    np.testing.assert_array_equal(sub.intrinsics, path.intrinsics[[4, 1]])
    np.testing.assert_array_equal(sub.expression, path.expression[[4, 1]])
    np.testing.assert_array_equal(sub.times, path.times[[4, 1]])
    assert (sub.width, sub.height, sub.fps, sub.expression_space) == (8, 6, 30.0, "s")
    assert len(path.head(2)) == 2 and np.array_equal(path.head(2).times, path.times[:2])


def test_parse_drive_paths_with_colons(tmp_path):
    """``--drive PATH[:SPLIT]``: a folder whose name holds a colon is a path as a whole; after the last colon comes a
    split; a missing folder is named as missing (not its text after a colon mistaken for a bad split name)."""
    import re

    from fastminerf.render import parse_drive

    folder = tmp_path / "a:b" / "id:1"
    folder.mkdir(parents=True)
    assert parse_drive(str(folder)) == (folder, "train")
    assert parse_drive(f"{folder}:val") == (folder, "val")
    assert parse_drive(f" {folder}:val ", default_split="x") == (folder, "val")
    with pytest.raises(RenderError, match="no such folder '.*id:2'"):
        parse_drive(f"{tmp_path}/a:b/id:2:val")
    with pytest.raises(RenderError, match=re.escape(f"no such folder '{tmp_path}/a:b/nope'")):
        parse_drive(f"{tmp_path}/a:b/nope")  # its last colon is inside the path: no split, a missing folder
    with pytest.raises(RenderError, match="'' is not a split name"):
        parse_drive(f"{folder}:")


def test_evaluate_renders_a_model_left_in_training_mode_as_eval_does(data):
    """evaluate() of a model in training mode (a freshly built one, or one between training steps) marched its rays
    with the training step (``render_steps``) instead of ``eval_render_steps``, so the same weights scored
    differently from ``fastminerf eval`` (load_run gives eval mode); evaluate renders in eval mode and gives the
    caller's mode back."""
    from fastminerf import build_model, load_config

    cfg = load_config("tiny", ["model.render_steps=8", "model.eval_render_steps=64"])
    torch.manual_seed(0)
    model = build_model(cfg, data)
    ref = evaluate(model.eval(), data, "val", max_frames=1, with_lpips=False, with_lmd=False)
    model.train()
    got = evaluate(model, data, "val", max_frames=1, with_lpips=False, with_lmd=False)
    assert model.training
    assert got["identities"] == ref["identities"]


def test_evaluate_records_the_render_steps_each_identity_was_rendered_with(data, tmp_path):
    """metrics.json did not say with how many ray-marching steps the frames were rendered (eval --render-steps, or the
    run's eval_render_steps), so two evaluations of one run at different steps, which differ in PSNR, could not be told
    apart; each identity's steps are recorded."""
    from fastminerf import build_model, load_config
    from fastminerf.render import set_render_steps

    model = build_model(load_config("tiny", ["model.render_steps=8"]), data).eval()
    assert evaluate(model, data, "val", max_frames=1, with_lpips=False, with_lmd=False)["render_steps"] == {
        "id000": 8, "id001": 8}
    set_render_steps(model, 32)
    res = evaluate(model, data, "val", out_dir=tmp_path / "ev", max_frames=1, with_lpips=False, with_lmd=False)
    assert res["render_steps"] == {"id000": 32, "id001": 32}
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["render_steps"] == {"id000": 32, "id001": 32}


def test_evaluate_without_a_buildable_lpips_reports_it_unavailable(synth, data, tmp_path, monkeypatch):
    """lpips and its weights present but unusable (a torchvision that does not match torch fails on import): eval
    rendered its first frame and then failed with 'LPIPS unavailable: importing or building lpips failed', losing
    every other metric. LPIPS is reported unavailable instead, with the reason, as when its weights are missing."""
    from fastminerf import metrics

    site = tmp_path / "site"
    (site / "lpips" / "weights" / "v0.1").mkdir(parents=True)
    (site / "lpips" / "weights" / "v0.1" / "alex.pth").write_bytes(b"")
    (site / "lpips" / "__init__.py").write_text("import torchvision\n")
    (site / "torchvision").mkdir()
    (site / "torchvision" / "__init__.py").write_text("raise ImportError('torchvision 0.1 was built for another torch')\n")
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.syspath_prepend(str(site))
    for mod in ("lpips", "torchvision"):
        monkeypatch.delitem(__import__("sys").modules, mod, raising=False)
    metrics._lpips_model.cache_clear()
    assert metrics.lpips_status()[0]  # the files alone look usable
    res = evaluate(Oracle(synth[1]), data, "val", max_frames=1, with_lmd=False)
    assert "lpips" not in res["metrics"] and res["mean"]["psnr"] > ORACLE_MIN_PSNR
    assert res["lpips"].startswith("unavailable:") and "another torch" in res["lpips"]


def test_evaluate_frames_smaller_than_the_ssim_window(tmp_path):
    """synth allows frames from 8 pixels (a smoke test): eval of them rendered the first frame and failed with
    'ssim: images must be at least 11x11 pixels', losing PSNR and L1 too. SSIM is undefined there and reads NaN
    (null in metrics.json, '-' in the table); the other metrics are computed as always."""
    dirs = generate(tmp_path, n_identities=1, n_frames=3, size=8, novel_frames=1, val_fraction=0.34)
    small = load_dataset(dirs, splits=("val",))
    res = evaluate(Oracle(dirs, size=8), small, "val", with_lpips=False, with_lmd=False, out_dir=tmp_path / "ev")
    ident = res["identities"]["id000"]
    assert "ssim" in res["metrics"] and np.isnan(ident["ssim"]) and np.isnan(res["mean"]["ssim"])
    assert ident["psnr"] > 30 and ident["l1"] < 0.05
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["mean"]["ssim"] is None


def test_target_poses_play_at_the_targets_speed_whatever_the_drivers_rate(tmp_path):
    """pose='target' played the target's training head poses one per driven frame: a 50 fps driver turned the head of a
    25 fps target twice as fast as in its own video (a 12.5 fps one half as fast). Frame k, at the driver's time
    k / fps, takes the target's pose at that time: frame k * 25 / fps of its video."""
    target = load_dataset(generate(tmp_path / "t", n_identities=1, n_frames=40, size=16, novel_frames=1),
                          splits=("train",))
    table = target.table("train")
    own = table.frames_of(0)
    poses = table.c2w[own[np.argsort(table.time[own], kind="stable")]]
    for fps in (50.0, 12.5):
        driver = load_dataset(generate(tmp_path / f"d{fps:g}", n_identities=1, n_frames=12, size=16, novel_frames=1,
                                       fps=fps, seed=1), splits=("train",))
        path = drive_path(target, "id000", driver, "train", pose="target")
        assert path.fps == fps and 2 * len(path) < len(poses)
        if fps == 50.0:  # each target pose twice
            np.testing.assert_array_equal(path.c2w[::2], poses[: (len(path) + 1) // 2])
        else:  # every other target pose
            np.testing.assert_array_equal(path.c2w, poses[::2][: len(path)])


def test_a_driver_that_gives_its_frame_times_but_not_its_rate_plays_at_its_own_speed(tmp_path):
    """DATASET.md makes ``fps`` optional: a driver whose frames carry their ``time`` (50 fps here) but whose
    transforms file has no ``fps`` (another tool's layout) was played at 25 fps, twice as slow, each frame taking
    1/25 s of sound from times 1/50 s apart (every stretch of the voice heard twice). Its rate comes from its times."""
    import json

    from fastminerf.audio import read_wav

    dirs = generate(tmp_path / "d", n_identities=2, n_frames=12, size=16, novel_frames=1, fps=50.0, seed=1)
    file = dirs[1] / "transforms_train.json"
    meta = json.loads(file.read_text())
    del meta["fps"]
    file.write_text(json.dumps(meta))
    data = load_dataset(dirs, splits=("train",))
    path = drive_path(data, "id000", data, "train", "id001")
    assert path.fps == 50.0
    sound = path.soundtrack()
    assert len(sound.samples) == round(len(path) / 50.0 * sound.rate)
    # the recording played on unbroken: the soundtrack is the recording from the first frame's time
    start = round(path.times[0] * sound.rate)
    whole = read_wav(dirs[1] / "audio.wav").samples
    assert np.array_equal(sound.samples, whole[start: start + len(sound.samples)])


def test_evaluate_side_by_side_images_are_labelled_and_legible(synth, data, tmp_path):
    """eval's side-by-side images were the three panels alone at the frame's size (72 x 24 px here, 192 x 64 for
    the demo's heads): no word of which panel is the render, the truth or the error, nor of the person, the frame
    or its PSNR, and too small to judge. Each now has a header (the caption: identity, split, frame, PSNR; a label
    over each panel) and panels enlarged (nearest neighbour, whole factors) to at least SIDE_BY_SIDE_MIN_PANEL."""
    res = evaluate(Oracle(synth[1]), data, "val", out_dir=tmp_path / "ev", max_frames=1, with_lpips=False,
                   with_lmd=False)
    img = iio.imread(tmp_path / "ev" / "side_by_side" / "id000" / "0000.png")
    scale = -(-SIDE_BY_SIDE_MIN_PANEL // SIZE)
    panel, header = SIZE * scale, SIDE_BY_SIDE_HEADER
    assert img.shape == (header + panel, 3 * panel, 3), img.shape
    # the panels are side_by_side's own pixels, each enlarged by whole factors
    table = data.table("val")
    index = int(table.frames_of(data.identities.index("id000"))[0])
    pred = render_frame(Oracle(synth[1]), data, "val", index)
    truth = data.image("val", index).astype(np.float32) / 255.0
    plain = side_by_side(pred, truth)
    assert (img[header:] == np.repeat(np.repeat(plain, scale, axis=0), scale, axis=1)).all()
    # a caption line across the top and a label over each panel: light text on the dark header
    bright = img[:header].max(axis=2) > 150
    line = header // 2
    assert bright[:line, : panel].any(), "no caption"
    for k in range(3):
        assert bright[line:, k * panel: (k + 1) * panel].any(), f"no label over panel {k}"
    assert res["identities"]["id000"]["frames"] == 1


def test_a_driven_video_can_show_the_driver_beside_the_target(synth, data, tmp_path):
    """A transfer video showed the target alone: nothing to judge the transfer against (did the mouth open when the
    driver's did?), where reenactment results are shown driver | result. render_video(..., beside_driver=True) puts
    each frame's driver frame (the one the path took it from, also at another fps) left of the render, under a
    labelled header; the plain video is unchanged."""
    from fastminerf.render import SIDE_BY_SIDE_HEADER, SIDE_BY_SIDE_MIN_PANEL

    oracle = Oracle(synth[1])
    path = drive_path(data, "id000", data, "novel", driver_identity="id001", mode="delta")
    table = data.table("novel")
    rows = table.frames_of(data.identities.index("id001"))
    assert path.sources is not None and len(path.sources) == len(path)
    assert list(path.sources) == [table.image_paths[i] for i in rows]
    slow = path.at_fps(2 * path.fps)  # each driver frame twice: the sources follow the frames
    assert list(slow.sources) == [s for s in path.sources for _ in range(2)][: len(slow)]
    aabb = data.table("train").aabb[0]
    render_video(oracle, path, "id000", None, background=data.background(0), aabb=aabb, png_dir=tmp_path / "plain")
    render_video(oracle, path, "id000", None, background=data.background(0), aabb=aabb, png_dir=tmp_path / "beside",
                 beside_driver=True, caption="id000 driven by id001:novel")
    scale = -(-SIDE_BY_SIDE_MIN_PANEL // SIZE)
    panel = SIZE * scale
    for k in range(len(path)):
        plain = iio.imread(tmp_path / "plain" / f"{k:05d}.png")
        both = iio.imread(tmp_path / "beside" / f"{k:05d}.png")
        assert plain.shape == (SIZE, SIZE, 3)
        assert both.shape == (SIDE_BY_SIDE_HEADER + panel, 2 * panel, 3)
        big = lambda a: np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)  # noqa: E731
        assert (both[SIDE_BY_SIDE_HEADER:, :panel] == big(data.image("novel", int(rows[k])))).all()
        assert (both[SIDE_BY_SIDE_HEADER:, panel:] == big(plain)).all()
        bright = both[:SIDE_BY_SIDE_HEADER].max(axis=2) > 150
        assert bright[:, :panel].any() and bright[SIDE_BY_SIDE_HEADER // 2:, panel:].any()  # caption, labels
    orbit = orbit_path(data, "id000", n_frames=2)
    with pytest.raises(RenderError, match="no driver frames"):
        render_video(oracle, orbit, "id000", None, background=data.background(0), aabb=aabb,
                     png_dir=tmp_path / "o", beside_driver=True)


def test_a_render_beside_its_driver_reports_its_last_frame_done(synth, data, tmp_path):
    """render --drive --beside-driver ended its progress bar at 'render 0/1 frames' (59/60 for 60 frames): the
    driver | render frames zipped the driver's frames first, so after the last one the render's generator was never
    resumed past its last frame and its final progress(n, n) was never called (a notebook's callback likewise)."""
    oracle = Oracle(synth[1])
    path = drive_path(data, "id000", data, "novel", driver_identity="id001", mode="delta")
    calls = []
    render_video(oracle, path, "id000", None, background=data.background(0), aabb=data.table("train").aabb[0],
                 png_dir=tmp_path / "beside", beside_driver=True, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (len(path), len(path))


def _caption_ink(header: np.ndarray) -> float:
    """Light text on the dark (30, 30, 30) header: the sum of its brightness above the background."""
    return float(np.clip(header.max(axis=2).astype(np.float64) - 30, 0, None).sum())


def test_a_long_caption_wraps_inside_the_header_instead_of_running_off_the_frame(synth, data, tmp_path):
    """render --drive --beside-driver captions each frame '<target> driven by <driver>:<split> (<mode>, <pose> poses)':
    with the real clips' names (25 characters each) that is 90 characters, about 540 px of text over a 256 px frame
    of two 128 px panels, and the header cut it off after '... driven by 03_hdtf_WDA', so the video did not say who
    drove it nor how (eval's captions of a long name over small panels likewise). The caption wraps at spaces onto as
    many lines as it needs, the header growing by a line's height each; a short caption keeps the one-line header."""
    from PIL import Image, ImageDraw

    from fastminerf.render import SIDE_BY_SIDE_HEADER, SIDE_BY_SIDE_MIN_PANEL, side_by_side

    caption = "05_hdtf_WDA_EdMarkey0_000 driven by 03_hdtf_WDA_KatieHill_000:train (delta, relative poses)"
    wide = Image.new("RGB", (2000, SIDE_BY_SIDE_HEADER), (30, 30, 30))
    ImageDraw.Draw(wide).text((4, 2), caption, fill=(235, 235, 235))
    whole = _caption_ink(np.asarray(wide))
    oracle = Oracle(synth[1])
    path = drive_path(data, "id000", data, "novel", driver_identity="id001", mode="delta").head(1)
    aabb = data.table("train").aabb[0]
    panel = SIZE * -(-SIDE_BY_SIDE_MIN_PANEL // SIZE)
    images = {}
    for name, text in (("long", caption), ("none", "")):
        render_video(oracle, path, "id000", None, background=data.background(0), aabb=aabb,
                     png_dir=tmp_path / name, beside_driver=True, caption=text)
        images[name] = iio.imread(tmp_path / name / "00000.png")
    long, none = images["long"], images["none"]
    assert none.shape == (SIDE_BY_SIDE_HEADER + panel, 2 * panel, 3)
    assert long.shape[1] == 2 * panel and long.shape[0] > SIDE_BY_SIDE_HEADER + panel
    assert (long[-panel:] == none[-panel:]).all()  # the panels themselves are unchanged
    shown = _caption_ink(long[:-panel]) - _caption_ink(none[:-panel])  # the labels' ink taken away
    assert shown > 0.97 * whole, (shown, whole)
    frame = np.full((SIZE, SIZE, 3), 0.5, dtype=np.float32)
    short = side_by_side(frame, frame, caption="id000  val frame 0", min_panel=SIDE_BY_SIDE_MIN_PANEL)
    assert short.shape == (SIDE_BY_SIDE_HEADER + panel, 3 * panel, 3)
    tall = side_by_side(frame, frame, caption=caption, min_panel=SIDE_BY_SIDE_MIN_PANEL)
    assert tall.shape[0] > SIDE_BY_SIDE_HEADER + panel


def test_set_render_steps_refuses_the_nerface_backbone():
    """render/eval --render-steps N on a run of the nerface backbone (configs/nerface.yaml) was taken and did nothing:
    set_render_steps checked only that the config has eval_render_steps, which every ModelConfig has, while its
    docstring (and --help's 'ray-marching steps') says a model that does not march rays is refused."""
    from fastminerf.config import load_config
    from fastminerf.model import MINeRF
    from fastminerf.render import RenderError, set_render_steps

    model = MINeRF(load_config("nerface").model, 4, ["a"], [0, 0])
    with pytest.raises(RenderError, match="does not march rays"):
        set_render_steps(model, 8)


def test_side_by_side_takes_the_datasets_8_bit_truth(data):
    """``fm.side_by_side(fm.render_frame(model, data, split, i), data.image(split, i))``, a notebook's first look at a
    render against its frame, gave a white truth panel and a white error panel: the dataset's frames are uint8, and
    side_by_side clipped 0..255 to [0, 1] as if they were floats (only evaluate divided them by 255 first). An 8-bit
    image is read as 8-bit, as to_uint8 and write_video read it."""
    truth = data.image("val", 0)
    assert truth.dtype == np.uint8
    pred = np.clip(truth.astype(np.float32) / 255.0 + 0.05, 0, 1)
    expected = side_by_side(pred, truth.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(side_by_side(pred, truth), expected)
    np.testing.assert_array_equal(side_by_side((pred * 255 + 0.5).astype(np.uint8), truth),
                                  side_by_side((pred * 255 + 0.5).astype(np.uint8) / np.float32(255), truth / np.float32(255)))
    assert side_by_side(pred, truth)[:, SIZE:2 * SIZE].mean() < 250  # the truth panel is the frame, not white


def test_evaluate_records_the_machine_it_ran_on_as_benchmark_records_do(synth, data, tmp_path):
    """eval's metrics.json said nothing of where its numbers came from, while every benchmark record carries its
    machine (CPU, threads, torch, GPU): a researcher comparing scores across machines (or a GPU's render with a CPU's)
    could not tell them apart. The result holds the benchmarks' machine record and the device the model rendered on."""
    import platform

    threads = torch.get_num_threads()
    res = evaluate(Oracle(synth[1]), data, "train", out_dir=tmp_path / "ev", max_frames=1, with_lpips=False,
                   with_lmd=False)
    on_disk = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for machine in (res["machine"], on_disk["machine"]):
        assert machine["device"] == "cpu" and machine["gpu"] is None and machine["torch_threads"] == threads
        assert machine["torch"] == torch.__version__ and machine["python"] == platform.python_version()
        assert {"cpu", "cores", "platform", "numpy", "fastminerf"} <= set(machine)


def test_a_png_folder_or_evaluation_folder_that_is_a_file_is_refused_naming_it(synth, data, tmp_path):
    """render --png-dir FILE ended in '[Errno 17] File exists: FILE' and eval --out FILE in '[Errno 20] Not a
    directory: FILE/metrics.json', Python's words once the work had started, and render --out FILE/v.mp4 (a file
    typed for the video's folder) in '[Errno 17] File exists: FILE'. All are refused by name before any frame is
    rendered, as a video name that is a folder is."""
    taken = tmp_path / "taken"
    taken.write_bytes(b"a file")
    asked = []

    def frames():
        asked.append(1)
        yield np.zeros((8, 8, 3), np.float32)

    with pytest.raises(RenderError, match="taken is a file: give a folder for the PNG frames"):
        write_video(frames(), tmp_path / "v.mp4", png_dir=taken)
    assert not asked and not (tmp_path / "v.mp4").exists()
    with pytest.raises(RenderError, match="taken is a file: give a folder for the video"):
        write_video(frames(), taken / "v.mp4")
    assert not asked and taken.read_bytes() == b"a file"
    oracle = Oracle(synth[1])
    with pytest.raises(RenderError, match="taken is a file: give a folder for metrics.json"):
        evaluate(oracle, data, "train", out_dir=taken, with_lpips=False, with_lmd=False)
    assert not oracle.calls and taken.read_bytes() == b"a file"


def test_evaluate_again_into_one_folder_removes_an_earlier_evaluations_images_of_other_people(synth, data, tmp_path):
    """eval --out DIR of both people, then eval --out DIR of one: metrics.json held the one, and side_by_side/ still
    held the other's images of the first evaluation (another split, another model), read as this evaluation's. The
    numbered images of people this evaluation does not score are removed too (other files are left alone)."""
    evaluate(Oracle(synth[1]), data, "val", out_dir=tmp_path / "ev", with_lpips=False, with_lmd=False)
    other = tmp_path / "ev" / "side_by_side" / "id001"
    assert any(other.glob("*.png"))
    (tmp_path / "ev" / "side_by_side" / "notes").mkdir()
    (tmp_path / "ev" / "side_by_side" / "notes" / "0000.txt").write_text("mine")
    res = evaluate(Oracle(synth[1]), data, "train", out_dir=tmp_path / "ev", identities="id000", max_frames=1,
                   with_lpips=False, with_lmd=False)
    assert list(res["identities"]) == ["id000"]
    assert not other.exists()
    assert sorted(p.name for p in (tmp_path / "ev" / "side_by_side").iterdir()) == ["id000", "notes"]


@pytest.mark.parametrize("where", ["frames", ".", "frames/sub"])
def test_write_video_refuses_png_frames_into_a_datasets_identity_folder(tmp_path, where):
    """render --png-dir onto a prepared identity's frames/ (named 00000.png on, as the PNG frames are) overwrote
    the data's first frames with renders and removed the rest as 'an earlier render's frames past the video's end'.
    A png_dir in (or under) a folder holding a transforms_<split>.json is refused before anything is written."""
    ident = tmp_path / "data" / "anna"
    (ident / "frames").mkdir(parents=True)
    (ident / "transforms_train.json").write_text(json.dumps({"frames": []}))
    originals = {}
    for k in range(4):
        originals[k] = np.full((16, 16, 3), 10 * k, np.uint8)
        iio.imwrite(ident / "frames" / f"{k:05d}.png", originals[k])
    with pytest.raises(RenderError, match=r"anna.*transforms_train\.json.*outside the dataset"):
        write_video(iter(_frames(2, 16, 16)), tmp_path / "v.mp4", fps=10, png_dir=ident / where)
    for k in range(4):
        np.testing.assert_array_equal(iio.imread(ident / "frames" / f"{k:05d}.png"), originals[k])
    assert not (tmp_path / "v.mp4").exists() and not (ident / "frames" / "sub").exists()


def test_two_renders_into_one_video_each_write_their_own_part_file(tmp_path):
    """Two renders to the same OUT.mp4 at once (a job started twice) encoded into the same '.OUT.part.mp4': the
    second's check that it can write there removed the first's file under its ffmpeg, and the second ended with
    'ffmpeg failed to encode the video after 8 frames (no file ...)' though ffmpeg had done nothing wrong. Each
    render has a part file of its own: both end, OUT.mp4 is the last one's, whole, and no part file is left."""
    import time

    import imageio_ffmpeg

    from fastminerf.render import write_video

    out = tmp_path / "o.mp4"

    def first():
        for k in range(4):
            if k == 2:  # the other render starts and ends while this one encodes into its part file
                for _ in range(200):
                    if list(tmp_path.glob(".o*.part.mp4")):  # ffmpeg has opened it
                        break
                    time.sleep(0.05)
                write_video((np.full((96, 96, 3), 0.9, np.float32) for _ in range(6)), out, fps=10)
            yield np.full((96, 96, 3), 0.1, np.float32)

    info = write_video(first(), out, fps=10)
    assert info.n_frames == 4
    reader = imageio_ffmpeg.read_frames(str(out))
    next(reader)  # its metadata
    frames = [np.frombuffer(f, np.uint8) for f in reader]
    assert len(frames) == 4 and max(f.mean() for f in frames) < 80  # the first's 4 dark frames, a whole video
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4"]


def test_an_evaluation_into_a_folder_another_one_writes_is_refused(synth, data, tmp_path):
    """Two eval --out DIR at once (another split, model or frames): the second removed the first's metrics.json and
    its side-by-side images while the first wrote them, and DIR ended with one evaluation's scores beside images of
    both. An evaluation holds DIR (DIR/.lock) while it writes it: the second is refused before it removes anything,
    naming the folder and the process; a .lock left behind blocks nothing."""
    import fcntl
    import os

    out = tmp_path / "ev"
    evaluate(Oracle(synth[1]), data, "train", out_dir=out, with_lpips=False, with_lmd=False)
    before = sorted(p.relative_to(out) for p in out.rglob("*.png")) + ["metrics.json"]
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(str(os.getpid()))
        held.flush()
        with pytest.raises(RenderError, match=f"{out} is in use by another evaluation.*process {os.getpid()}"):
            evaluate(Oracle(synth[1]), data, "val", out_dir=out, with_lpips=False, with_lmd=False)
        assert sorted(p.relative_to(out) for p in out.rglob("*.png")) + ["metrics.json"] == before
        assert json.loads((out / "metrics.json").read_text())["split"] == "train"
    res = evaluate(Oracle(synth[1]), data, "val", out_dir=out, with_lpips=False, with_lmd=False)  # released
    assert json.loads((out / "metrics.json").read_text())["split"] == "val" == res["split"]


def test_a_frame_index_out_of_range_is_refused_naming_the_split_and_its_frames(synth, data):
    """render_frame(model, data, 'val', 99) raised a plain IndexError from the ray table (and -1 rendered the split's
    last frame as if it were asked): a RenderError names the frame, the split and the frames it has (per identity)."""
    oracle = Oracle(synth[1])
    n = data.num_frames("val")
    each = ", ".join(f"{name}: {len(data.table('val').frames_of(i))}" for i, name in enumerate(data.identities))
    for index in (n, 99, -1):
        with pytest.raises(RenderError, match=rf"frame {index} of split 'val'.*{n} frames.*\({each}\)"):
            render_frame(oracle, data, "val", index)
    render_frame(oracle, data, "val", n - 1)  # the last one renders


def test_a_killed_renders_part_file_and_soundtrack_are_removed_by_the_next_render(tmp_path):
    """A render killed mid-encoding (kill -9, the out-of-memory killer) leaves '.OUT.<pid>-<n>.part.mp4' (and its
    soundtrack '.OUT.mp4.<pid>-<n>.audio.wav'), names of its own that no later render replaced: one hidden video per
    kill. The next render into OUT removes those of processes that no longer run (a minute untouched); a live
    render's is left alone."""
    import os
    import subprocess
    import sys

    from fastminerf.render import write_video

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    killed = [tmp_path / f".o.{dead}-0.part.mp4", tmp_path / f".o.mp4.{dead}-1.audio.wav"]
    live = tmp_path / f".o.{os.getppid()}-0.part.mp4"
    for f in (*killed, live):
        f.write_bytes(b"half")
        t = f.stat().st_mtime - 3600
        os.utime(f, (t, t))
    write_video((np.full((32, 32, 3), 0.5, np.float32) for _ in range(2)), tmp_path / "o.mp4", fps=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["o.mp4", live.name])


def test_an_interrupted_video_says_it_was_not_written_and_which_png_frames_were(tmp_path):
    """render stopped by Ctrl-C printed just 'interrupted': nothing said that OUT.mp4 was not written (its part file
    is removed; an earlier OUT.mp4 stays as it was) nor that --png-dir holds the frames rendered so far, followed by
    an earlier, longer render's. The interrupt carries what is on disk, for the command to print after it."""
    from fastminerf.render import write_video

    out, pngs = tmp_path / "out.mp4", tmp_path / "pngs"
    write_video([np.zeros((8, 8, 3), np.uint8)] * 5, out, png_dir=pngs)  # an earlier, longer render

    def stopped():
        for _ in range(2):
            yield np.full((8, 8, 3), 200, np.uint8)
        raise KeyboardInterrupt

    before = out.read_bytes()
    with pytest.raises(KeyboardInterrupt) as stop:
        write_video(stopped(), out, png_dir=pngs)
    note = str(stop.value)
    assert f"before the video {out} was written (the file there is an earlier one, left as it was)" in note
    assert f"2 PNG frames of this render written to {pngs} (00000.png to 00001.png)" in note
    assert "the frames after them there are an earlier render's" in note
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "pngs"]
    assert iio.imread(pngs / "00001.png")[0, 0, 0] == 200 and iio.imread(pngs / "00002.png")[0, 0, 0] == 0
    with pytest.raises(KeyboardInterrupt) as stop:
        write_video(stopped(), tmp_path / "new.mp4")
    assert str(stop.value) == f"before the video {tmp_path / 'new.mp4'} was written"


def test_a_video_interrupted_while_ffmpeg_takes_a_frame_counts_that_frames_png_as_this_renders(tmp_path, monkeypatch):
    """render --png-dir stopped by SIGTERM or Ctrl-C while ffmpeg took a frame (where a render spends its time between
    frames) said '190 PNG frames of this render written (00000.png to 00189.png); the frames after them there are an
    earlier render's' into a new folder: 00190.png, written just before, is this render's and no earlier one was
    there. The note counts the PNG frames written, not the frames the video took."""
    import imageio_ffmpeg

    from fastminerf.render import write_video

    real = imageio_ffmpeg.write_frames

    def interrupted_at_frame_2(*args, **kwargs):  # the real encoder, the signal arriving as frame 2 goes to it
        inner = real(*args, **kwargs)
        inner.send(None)
        try:
            for sent in range(3):
                frame = yield
                if sent == 2:
                    raise KeyboardInterrupt
                inner.send(frame)
        finally:
            inner.close()

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", interrupted_at_frame_2)
    out, pngs = tmp_path / "out.mp4", tmp_path / "pngs"
    with pytest.raises(KeyboardInterrupt) as stop:
        write_video([np.full((8, 8, 3), 100, np.uint8)] * 5, out, png_dir=pngs)
    assert sorted(p.name for p in pngs.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert str(stop.value) == (f"before the video {out} was written; 3 PNG frames of this render written to {pngs} "
                               "(00000.png to 00002.png)")


def test_evaluate_and_neutral_frame_given_a_path_say_they_need_a_loaded_dataset(tmp_path):
    """evaluate(model, "data/", "val") (a folder's path where load_dataset's result goes, as the CLI takes paths)
    failed with a bare AttributeError: "'str' object has no attribute 'splits'". It says what it needs."""
    from fastminerf.render import evaluate, neutral_frame

    for call in (lambda: evaluate(None, str(tmp_path), "val"), lambda: neutral_frame(tmp_path, "id000")):
        with pytest.raises(TypeError, match=r"needs a loaded dataset \(fastminerf\.load_dataset\(path\)\), got (str|PosixPath)"):
            call()


def test_a_soundtrack_is_at_its_recordings_rate_or_the_next_aac_rate_above(tmp_path):
    """The README said a video's sound is AAC 'at the recording's rate', but ffmpeg's AAC encoder takes 13 rates and
    put any other on the nearest one: a 7 kHz recording came out at 7350 Hz, a 9 kHz one at 8 kHz (its top 500 Hz
    cut), 50 kHz at 48 kHz, 192 kHz at 96 kHz, with nothing said. A rate AAC carries is kept; another is resampled
    to the next AAC rate above it (nothing of the recording cut; 96 kHz at most), as write_video documents."""
    import imageio_ffmpeg
    import subprocess

    from fastminerf.audio import Audio

    frames = _frames(5, 16, 16)
    for rate, expected in ((44100, 44100), (16000, 16000), (7000, 7350), (9000, 11025), (50000, 64000),
                           (192000, 96000)):
        t = np.arange(rate // 2) / rate
        sound = Audio((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16), rate)
        out = tmp_path / f"{rate}.mp4"
        write_video(iter(frames), out, fps=10, audio=sound)
        listing = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(out)],
                                 capture_output=True, text=True).stderr
        assert re.search(rf"Audio: aac.*, {expected} Hz", listing), (rate, listing)


@pytest.mark.parametrize("fps", [float("nan"), 0.0, -25.0, float("inf"), 1e9])
def test_an_orbit_refuses_a_frame_rate_that_is_not_one(data, fps):
    """orbit_path(fps=nan) (or 0, inf, a billion) made a path, and the call that used it failed far from the cause
    (write_video at the end of the render) or, driven at 1e9 fps, ran out of memory."""
    from fastminerf.config import ArgumentValueError

    with pytest.raises(ArgumentValueError, match="^fps must be") as refused:
        orbit_path(data, "id000", n_frames=2, fps=fps)
    assert refused.value.name == "fps"
    with pytest.raises(ArgumentValueError, match="^fps must be"):
        orbit_path(data, "id000", n_frames=2).at_fps(fps)
    assert orbit_path(data, "id000", n_frames=2, fps=30).fps == 30.0


@pytest.mark.parametrize("fps", ["1e9", "1001"])
def test_render_refuses_an_absurd_frame_rate_before_any_work(tmp_path, capsys, fps):
    """render --fps 1e9 rendered an orbit at a billion frames a second, and a driven video's frames repeated at it ran
    out of memory (killed): refused naming --fps, before the run is opened (it does not exist here)."""
    from fastminerf.cli import main

    argv = ["render", "--run", str(tmp_path / "run"), "--identity", "a", "--orbit", "--fps", fps,
            "--out", str(tmp_path / "x.mp4")]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--fps must be at most 1000 frames a second" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("swing, most", [({"yaw_deg": 1e300}, 180), ({"yaw_deg": -181.0}, 180), ({"pitch_deg": 91.0}, 90)])
def test_orbit_cameras_refuse_a_swing_beyond_a_turn(swing, most):
    """render --orbit --yaw 1e300 was accepted: the cameras sat wherever sin(1e300 radians) put them, an orbit of no
    meaning (a swing of 180 degrees each way already goes all round the head; 90 up-down looks straight down)."""
    name = next(iter(swing))
    with pytest.raises(RenderError, match=rf"{name} \(--{name[:-4]}\) must be at most {most} degrees each way"):
        orbit_cameras(4, 3.0, **swing)
    orbit_cameras(4, 3.0, **{name: float(most)})  # the bound itself is an orbit


def test_orbit_cameras_refuse_more_frames_than_anyone_renders():
    """render --orbit --frames 1000000000 ended in numpy's MemoryError traceback (a (1e9, 4, 4) array): refused,
    naming --frames and the bound, before any array is made."""
    from fastminerf.render import ORBIT_MAX_FRAMES

    with pytest.raises(RenderError, match=rf"n_frames \(--frames\) must be at most {ORBIT_MAX_FRAMES}, got 1000000000"):
        orbit_cameras(1_000_000_000, 3.0)
    assert orbit_cameras(ORBIT_MAX_FRAMES, 3.0).shape == (ORBIT_MAX_FRAMES, 4, 4)


def test_set_render_steps_refuses_steps_finer_than_the_fields_finest_grid():
    """render --render-steps 1000000000 was taken and ran for minutes (a billion steps across the box, every one
    marched through the occupancy grid): refused, with the bound, which a step as fine as a quarter of the field's
    finest grid cell along the box diagonal sets (finer steps sample no detail the field holds)."""
    from fastminerf.config import load_config
    from fastminerf.model import MINeRF
    import math

    from fastminerf.render import RenderError, max_render_steps, set_render_steps

    model = MINeRF(load_config("tiny").model, 4, ["a"], [0, 0])
    most = max_render_steps(model)
    assert most == math.ceil(4 * math.sqrt(3) * model.cfg.field.finest_resolution)
    with pytest.raises(RenderError, match=rf"render steps must be at most {most} for this model .*got 1000000000"):
        set_render_steps(model, 1_000_000_000)
    set_render_steps(model, most)
    assert model.eval_steps == most
    assert max_render_steps(MINeRF(load_config("cpu").model, 4, ["a"], [0, 0])) > 256  # the cpu / video presets' own


def test_frames_whose_times_give_no_frame_rate_are_refused_naming_the_identity_and_time(tmp_path):
    """Frames without an fps whose ``time`` steps are 0.1 ms apart (a converter that wrote milliseconds as
    seconds / 10, or sample counts) gave a rate of 10000 a second, and render --drive of them said 'error: fps must be
    at most 1000 frames a second, got 10000' though the user had typed --fps 25: nothing named the driver, its
    split or the key the rate came from. split_fps refuses such times itself, naming them."""
    import json

    from fastminerf.data import load_dataset
    from fastminerf.data.synth import generate
    from fastminerf.render import RenderError, split_fps

    folder = generate(tmp_path / "d", n_identities=1, n_frames=6, size=16, seed=0)[0]
    path = folder / "transforms_train.json"
    meta = json.loads(path.read_text())
    meta.pop("fps", None)
    for i, frame in enumerate(meta["frames"]):
        frame["time"] = i * 1e-4
    path.write_text(json.dumps(meta))
    data = load_dataset([folder], splits=("train",))
    with pytest.raises(RenderError, match=r"id000.*'train'.*time.*10000.*1000"):
        split_fps(data, "train", 0)
    for i, frame in enumerate(meta["frames"]):
        frame["time"] = i * 0.04
    path.write_text(json.dumps(meta))
    assert split_fps(load_dataset([folder], splits=("train",)), "train", 0) == 25.0
