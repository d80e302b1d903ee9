"""Rays: pixel-centre camera rays (checked against a camera computed by hand), box bounds, and the sampler."""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import asdict, fields
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from fastminerf.config import SamplerConfig
from fastminerf.data import DatasetError, RayBatch, RaySampler, camera_rays, frame_rays, landmark_rays, load_dataset, ray_aabb
from fastminerf.data.writer import write_landmarks

RAY_TOL = 1e-6
"""Float32 camera maths on values of order 1: a few ulps."""

W, H = 32, 24


# ------------------------------------------------------------------------------------------------------------
# camera_rays, ray_aabb


def test_camera_rays_match_a_hand_computed_camera():
    # Camera at (1, 2, 3), turned 90 degrees about +y: its axes in head space are
    # x_cam -> (0, 0, -1), y_cam -> (0, 1, 0), z_cam -> (1, 0, 0), so it looks down -x.
    c2w = [[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 2.0], [-1.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0]]
    k = [100.0, 50.0, 30.0, 20.0]  # fx, fy, cx, cy: non-square pixels, principal point off centre
    o, d = camera_rays(torch.tensor(c2w), k, 64, 48, pixels=torch.tensor([[10, 5], [29, 19], [0, 47]]))
    # Pixel (10, 5): camera direction ((10.5 - 30) / 100, -(5.5 - 20) / 50, -1) = (-0.195, 0.29, -1),
    # in head space -0.195 * (0, 0, -1) + 0.29 * (0, 1, 0) - 1 * (1, 0, 0) = (-1, 0.29, 0.195).
    d0 = np.array([-1.0, 0.29, 0.195]) / math.sqrt(1.0 + 0.29**2 + 0.195**2)
    # Pixel (29, 19): (-0.005, 0.01, -1) -> (-1, 0.01, 0.005).
    d1 = np.array([-1.0, 0.01, 0.005]) / math.sqrt(1.0 + 0.01**2 + 0.005**2)
    # Pixel (0, 47): (-0.295, -0.55, -1) -> (-1, -0.55, 0.295).
    d2 = np.array([-1.0, -0.55, 0.295]) / math.sqrt(1.0 + 0.55**2 + 0.295**2)
    assert np.allclose(d.numpy(), np.stack([d0, d1, d2]), atol=RAY_TOL, rtol=0)
    assert np.allclose(o.numpy(), [[1.0, 2.0, 3.0]] * 3, atol=RAY_TOL, rtol=0)


def test_principal_point_ray_looks_down_minus_z():
    # With the principal point on a pixel centre that pixel's ray is the optical axis.
    o, d = camera_rays(torch.eye(4, dtype=torch.float64), [7.0, 7.0, 3.5, 2.5], 8, 6, pixels=torch.tensor([[3, 2]]))
    assert d.dtype == torch.float64
    assert torch.equal(d, torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64))
    assert torch.equal(o, torch.zeros(1, 3, dtype=torch.float64))


def test_full_frame_order_and_per_ray_cameras():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    c2w = np.eye(4)
    c2w[:3, :3] = q
    c2w[:3, 3] = rng.normal(size=3)
    k = [20.0, 22.0, 15.0, 11.0]
    o_all, d_all = camera_rays(torch.tensor(c2w, dtype=torch.float32), k, W, H)
    assert o_all.shape == (W * H, 3)
    assert torch.allclose(d_all.norm(dim=1), torch.ones(W * H), atol=RAY_TOL)
    pix = torch.tensor([[5, 7], [31, 0], [0, 23]])
    _, d_sel = camera_rays(torch.tensor(c2w, dtype=torch.float32), k, W, H, pixels=pix)
    for r, (i, j) in enumerate(pix.tolist()):
        assert torch.allclose(d_all[j * W + i], d_sel[r], atol=RAY_TOL)  # ray j * W + i is pixel (i, j)
    # One camera per ray gives the same rays.
    n = pix.shape[0]
    o_b, d_b = camera_rays(torch.tensor(c2w, dtype=torch.float32).expand(n, 4, 4), torch.tensor(k).expand(n, 4), W, H, pix)
    assert torch.allclose(d_b, d_sel, atol=RAY_TOL) and torch.allclose(o_b, o_all[:n], atol=RAY_TOL)


def test_ray_aabb():
    box = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    o = torch.tensor([[0.0, 0.0, 5.0], [0.0, 3.0, 5.0], [0.2, 0.3, 0.0], [0.5, 0.0, 5.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    near, far = ray_aabb(o, d, box)
    assert near.tolist() == [4.0, far[1].item(), 0.0, 4.0]
    assert far[0].item() == 6.0 and far[2].item() == pytest.approx(0.8) and far[3].item() == 6.0
    assert far[1] <= near[1]  # misses: empty interval


# ------------------------------------------------------------------------------------------------------------
# Sampler


def _identity(root: Path, name: str, n_frames: int, seed: int, bbox=None, mask=False, near_far=True) -> None:
    rng = np.random.default_rng(seed)
    d = root / name
    (d / "train").mkdir(parents=True)
    iio.imwrite(d / "bg.png", rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8))
    frames = []
    for i in range(n_frames):
        iio.imwrite(d / "train" / f"{i}.png", rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8))
        fr = {
            "file_path": f"train/{i}.png",
            "transform_matrix": [[1, 0, 0, 0.05 * i], [0, 1, 0, 0], [0, 0, 1, 4.0], [0, 0, 0, 1]],
            "expression": [float(seed), float(i), 0.5],
        }
        if bbox is not None:
            fr["bbox"] = bbox
        if mask:
            m = np.zeros((H, W), dtype=np.uint8)
            m[2:6, 20:30] = 255  # a 4 x 10 block
            iio.imwrite(d / "train" / f"{i}_mask.png", m)
            fr["mask_path"] = f"train/{i}_mask.png"
        frames.append(fr)
    meta = {"intrinsics": [30.0, 30.0, W / 2, H / 2], "frames": frames}
    if near_far:
        meta.update(near=2.5, far=5.5)
    (d / "transforms_train.json").write_text(json.dumps(meta))


BOX = [0.25, 0.5, 0.5, 0.75]  # rows 6..12, columns 16..24 of a 32 x 24 image: 1/16 of its pixels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rays")
    _identity(root, "a", 4, seed=1, bbox=BOX)
    _identity(root, "b", 12, seed=2, bbox=BOX, near_far=False)
    return load_dataset(root, cache_frames=64)


def _in_box(pixel: torch.Tensor) -> torch.Tensor:
    col, row = pixel[:, 0], pixel[:, 1]
    return (row >= 6) & (row < 12) & (col >= 16) & (col < 24)


def test_sampler_is_deterministic_with_a_seed(data):
    a = RaySampler(data, "train", batch_size=512, seed=7, frames_per_batch=5)
    b = RaySampler(data, "train", batch_size=512, seed=7, frames_per_batch=5)
    c = RaySampler(data, "train", batch_size=512, seed=8, frames_per_batch=5)
    for _ in range(3):
        x, y, z = a.sample(), b.sample(), c.sample()
        for name in ("origins", "directions", "pixel", "frame", "rgb", "near", "far"):
            assert torch.equal(getattr(x, name), getattr(y, name))
        assert not torch.equal(x.pixel, z.pixel)
    state = a.state_dict()
    nxt = a.sample()
    a.load_state_dict(state)
    assert torch.equal(a.sample().pixel, nxt.pixel)


def test_face_box_fraction_is_respected(data):
    n = 4000
    sampler = RaySampler(data, "train", batch_size=n, seed=0, face_fraction=0.9, frames_per_batch=8)
    batch = sampler.sample()
    inside = _in_box(batch.pixel).float().mean().item()
    # 90 % are drawn inside the box; the other 10 % are uniform and land in it with probability 1/16.
    expected = 0.9 + 0.1 / 16
    sigma = math.sqrt(0.1 * n * (1 / 16) * (15 / 16)) / n
    assert 0.9 <= inside <= expected + 5 * sigma
    assert sampler.face_box_pixels(0) == (6, 12, 16, 24)
    uniform = RaySampler(data, "train", batch_size=n, seed=0, face_fraction=0.0, frames_per_batch=8).sample()
    frac = _in_box(uniform.pixel).float().mean().item()
    assert abs(frac - 1 / 16) < 5 * math.sqrt((1 / 16) * (15 / 16) / n)


def test_each_ray_carries_its_frame(data):
    batch = RaySampler(data, "train", batch_size=300, seed=3, frames_per_batch=6).sample()
    t = data.table("train")
    assert len(batch) == 300 and len(torch.unique(batch.frame)) == 6
    assert batch.identity.dtype == torch.long and batch.frame.dtype == torch.long and batch.pixel.dtype == torch.long
    assert torch.allclose(batch.directions.norm(dim=1), torch.ones(300), atol=RAY_TOL)
    for r in range(0, 300, 7):
        f = int(batch.frame[r])
        col, row = batch.pixel[r].tolist()
        ident = int(batch.identity[r])
        assert ident == t.identity[f]
        assert torch.equal(batch.rgb[r], torch.tensor(data.image("train", f)[row, col]).float() / 255)
        assert torch.equal(batch.background[r], torch.tensor(data.background(ident)[row, col]).float() / 255)
        assert torch.equal(batch.expression[r], torch.from_numpy(t.expression[f]))
        o, d = camera_rays(torch.from_numpy(t.c2w[f]), torch.from_numpy(t.intrinsics[f]), W, H, batch.pixel[r : r + 1])
        assert torch.allclose(batch.origins[r], o[0], atol=RAY_TOL) and torch.allclose(batch.directions[r], d[0], atol=RAY_TOL)
        if t.explicit_near_far[f]:  # identity "a" gives near/far
            assert (batch.near[r].item(), batch.far[r].item()) == (2.5, 5.5)
        else:  # identity "b" clips rays to the default aabb
            n_, f_ = ray_aabb(o, d, t.aabb[f])
            assert batch.near[r] == n_[0] and batch.far[r] == f_[0]
            # Within the frame's bounds (closest and farthest distance from the camera to the box), or an
            # empty interval for a ray that passes beside the box.
            assert batch.near[r] <= batch.far[r]
            if batch.near[r] < batch.far[r]:
                assert t.near[f] - RAY_TOL <= batch.near[r] and batch.far[r] <= t.far[f] + RAY_TOL


def test_frame_rays_reproduce_the_frame(data):
    batch = frame_rays(data, "train", 5)
    assert len(batch) == W * H
    img = (batch.rgb.reshape(H, W, 3) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(img, data.image("train", 5))
    assert batch.pixel[W + 3].tolist() == [3, 1]
    bg = (batch.background.reshape(H, W, 3) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(bg, data.background(int(data.table("train").identity[5])))
    sub = batch[torch.arange(10)]
    assert isinstance(sub, RayBatch) and len(sub) == 10 and len(batch.to("cpu")) == W * H


def test_identity_balance(data):
    # Identity "a" has 4 frames, "b" 12: uniform frames give "a" a quarter of the rays, balancing a half.
    n, draws = 64, 100
    plain = RaySampler(data, "train", batch_size=n, seed=1, frames_per_batch=1)
    balanced = RaySampler(data, "train", batch_size=n, seed=1, frames_per_batch=1, balance_identities=True)
    share_plain = np.mean([float((plain.sample().identity == 0).float().mean()) for _ in range(draws)])
    share_bal = np.mean([float((balanced.sample().identity == 0).float().mean()) for _ in range(draws)])
    # One frame (one identity) per batch: each share is a mean of 100 Bernoulli draws (sd <= 0.05).
    assert abs(share_plain - 0.25) < 0.2 and abs(share_bal - 0.5) < 0.25 and share_bal > share_plain


def _pool_data(root: Path, frames=(6, 60), cache_frames=20):
    for i, n in enumerate(frames):
        _identity(root, "ab"[i], n, seed=i + 1, bbox=BOX)
    return load_dataset(root, cache_frames=cache_frames)


def test_a_split_that_outgrows_the_frame_cache_is_drawn_from_a_turning_pool(tmp_path):
    """66 frames, a cache of 20: without a pool nearly every frame a batch draws is decoded from disk again; the
    pool (nine tenths of what the cache holds) decodes only the few frames it takes in each step, and every frame
    still comes round."""
    data = _pool_data(tmp_path)
    assert data.frames_held("train") == 20
    pooled = RaySampler(data, "train", batch_size=64, seed=0, frames_per_batch=16)
    assert pooled.pool_frames == 18  # nine tenths of 20
    seen, turns = set(), []
    before = pooled._in_pool.copy()
    for _ in range(200):
        batch = pooled.sample()
        pool = np.flatnonzero(pooled._in_pool)
        assert pool.size == 18 and set(batch.frame.tolist()) <= set(pool.tolist())
        turns.append(int((pooled._in_pool & ~before).sum()))
        before = pooled._in_pool.copy()
        seen |= set(batch.frame.tolist())
    assert turns == [1] * 200  # round(16 / 16) new frames a step
    assert seen == set(range(66))
    misses = data.cache.misses
    for _ in range(50):
        pooled.sample()
    pooled_misses = data.cache.misses - misses
    data.cache.clear()
    plain = RaySampler(data, "train", batch_size=64, seed=0, frames_per_batch=16, pool_frames=0)
    assert plain.pool_frames == 0
    for _ in range(50):
        plain.sample()
    misses = data.cache.misses
    for _ in range(50):
        plain.sample()
    plain_misses = data.cache.misses - misses
    # one new frame a step (and the odd pool frame the cache let go) against most of 16 frames a step
    assert pooled_misses <= 2 * 50 and plain_misses >= 8 * 50, (pooled_misses, plain_misses)


def test_a_split_that_fits_the_cache_has_no_pool_and_draws_as_before(tmp_path):
    data = _pool_data(tmp_path, cache_frames=66)
    auto = RaySampler(data, "train", batch_size=64, seed=3, frames_per_batch=16)
    off = RaySampler(data, "train", batch_size=64, seed=3, frames_per_batch=16, pool_frames=0)
    assert auto.pool_frames == 0
    for _ in range(5):
        a, b = auto.sample(), off.sample()
        assert torch.equal(a.frame, b.frame) and torch.equal(a.pixel, b.pixel)


def test_a_pool_keeps_identities_balanced_and_resumes(tmp_path):
    """6 frames of 'a' beside 60 of 'b', balanced: 'a' keeps half the rays through a pool of 18 frames; a sampler
    given another's state draws the very same batches (the pool is part of the state)."""
    data = _pool_data(tmp_path)
    for per_batch in (16, None):
        s = RaySampler(data, "train", batch_size=64, seed=1, frames_per_batch=per_batch, balance_identities=True)
        share = np.mean([float((s.sample().identity == 0).float().mean()) for _ in range(100)])
        assert abs(share - 0.5) < 0.1, (per_batch, share)
    s = RaySampler(data, "train", batch_size=64, seed=2, frames_per_batch=16, pool_frames=10)
    for _ in range(7):
        s.sample()
    t = RaySampler(data, "train", batch_size=64, seed=99, frames_per_batch=16, pool_frames=10)
    t.load_state_dict(s.state_dict())
    for _ in range(5):
        a, b = s.sample(), t.sample()
        assert torch.equal(a.frame, b.frame) and torch.equal(a.pixel, b.pixel)


def test_mask_guides_face_rays_when_there_is_no_box(tmp_path):
    _identity(tmp_path, "m", 3, seed=4, mask=True)
    data = load_dataset(tmp_path)
    batch = RaySampler(data, "train", batch_size=1000, seed=0, face_fraction=0.8, frames_per_batch=3).sample()
    col, row = batch.pixel[:, 0], batch.pixel[:, 1]
    in_mask = ((row >= 2) & (row < 6) & (col >= 20) & (col < 30)).float().mean().item()
    area = 40 / (W * H)
    assert 0.8 <= in_mask <= 0.8 + 0.2 * area + 5 * math.sqrt(0.2 * area / 1000)


def test_per_ray_frames(data):
    sampler = RaySampler(data, "train", batch_size=2000, seed=5, frames_per_batch=None)
    batch = sampler.sample()
    assert len(torch.unique(batch.frame)) == data.num_frames("train")  # 2000 draws over 16 frames hit them all
    inside = _in_box(batch.pixel).float().mean().item()
    assert abs(inside - (0.9 + 0.1 / 16)) < 5 * math.sqrt(0.09 / 2000) + 0.01


def test_sampler_config_fields_are_the_keywords(data):
    params = inspect.signature(RaySampler).parameters
    for f in fields(SamplerConfig):
        assert params[f.name].default == getattr(SamplerConfig(), f.name)
    batch = RaySampler(data, "train", **asdict(SamplerConfig(batch_size=100, frames_per_batch=3))).sample()
    assert len(batch) == 100 and len(torch.unique(batch.frame)) == 3


@pytest.mark.parametrize("frames_per_batch", [4, None])
def test_error_rays_go_where_the_recorded_error_is(data, frames_per_batch):
    # W x H = 32 x 24 over a 4 x 4 error map: cells are 8 x 6 pixels. Every identity's cells get error 0.01
    # except cell (row 1, col 2) of identity 0 ("a"), with error 1.
    n, r = 4000, 4
    sampler = RaySampler(data, "train", batch_size=n, seed=2, face_fraction=0.0, frames_per_batch=frames_per_batch,
                         error_fraction=0.5, error_resolution=r)
    assert np.isnan(sampler.error_map).all()
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    pixel = np.stack([cols.ravel(), rows.ravel()], 1)
    hot = (pixel[:, 1] // 6 == 1) & (pixel[:, 0] // 8 == 2)
    t = data.table("train")
    for frame in (int(np.flatnonzero(t.identity == 0)[0]), int(np.flatnonzero(t.identity == 1)[0])):
        error = np.where(hot & (t.identity[frame] == 0), 1.0, 0.01)
        sampler.record_errors(np.full(len(pixel), frame), pixel, error)
    assert sampler.error_map[0, 1, 2] == 1.0 and sampler.error_map[1, 1, 2] == pytest.approx(0.01)
    batch = sampler.sample()
    chosen = torch.from_numpy(sampler.last_error_rays)
    assert abs(chosen.float().mean().item() - 0.5) < 0.05
    in_hot = (batch.pixel[:, 1] // 6 == 1) & (batch.pixel[:, 0] // 8 == 2)
    ident0 = batch.identity == 0
    # Identity 0's error rays: the hot cell holds 1 / (1 + 15 * 0.01) of the map plus its floor share.
    p_hot = (1.0 + 0.02 * (1.15 / 16)) / (1.15 + 0.02 * 1.15)
    share = in_hot[chosen & ident0].float().mean().item()
    assert abs(share - p_hot) < 0.05
    # Identity 1's map is flat: its error rays are uniform (1 cell of 16); the other rays stay uniform too.
    assert abs(in_hot[chosen & ~ident0].float().mean().item() - 1 / 16) < 0.04
    assert abs(in_hot[~chosen].float().mean().item() - 1 / 16) < 0.03
    # A moving average: a second record moves the hot cell a tenth of the way to the new error.
    frame0 = int(np.flatnonzero(t.identity == 0)[0])
    sampler.record_errors([frame0], [[16, 6]], [0.0])
    assert sampler.error_map[0, 1, 2] == pytest.approx(0.9)


def test_an_error_map_finer_than_a_cell_per_pixel_is_refused_before_it_is_allocated(data):
    """error_resolution=100000 allocated (identities x 100000 x 100000) float64 maps: a MemoryError of 149 GiB after
    the data loaded. Cells past a pixel each of the frames' largest side hold no pixel: such a map is refused, naming
    the key and the bound (the default, 32, is taken on smaller frames: its extra cells are empty, never drawn)."""
    assert RaySampler(data, "train", error_resolution=W).error_map.shape == (2, W, W)
    for r in (W + 1, 100_000):
        with pytest.raises(ValueError, match=rf"error_resolution={r}: at most {W} cells per side .*largest side, {W} px"):
            RaySampler(data, "train", error_resolution=r)


def test_error_maps_are_part_of_the_sampler_state(data):
    a = RaySampler(data, "train", batch_size=256, seed=1, error_fraction=0.7, error_resolution=2)
    a.record_errors([0, 0], [[0, 0], [31, 23]], [1.0, 0.0])
    state = a.state_dict()
    nxt = a.sample()
    b = RaySampler(data, "train", batch_size=256, seed=9, error_fraction=0.7, error_resolution=2)
    b.load_state_dict(state)
    assert torch.equal(b.sample().pixel, nxt.pixel)
    with pytest.raises(ValueError, match="error map"):
        RaySampler(data, "train", error_resolution=3).load_state_dict(state)
    with pytest.raises(ValueError, match="error_fraction"):
        RaySampler(data, "train", error_fraction=1.5)


# ------------------------------------------------------------------------------------------------ landmark rays


def _with_landmarks(tmp_path, frames_with: int = 3, k: int = 6) -> Path:
    """Identity 'a' of 4 frames and 'b' of 12 (no landmarks); 'a' gets landmarks on its first ``frames_with``
    frames, the last of each frame's points hidden."""
    root = tmp_path / "lm"
    _identity(root, "a", 4, seed=1, bbox=BOX)
    _identity(root, "b", 12, seed=2, bbox=BOX, near_far=False)
    rng = np.random.default_rng(5)
    points = rng.uniform(-0.4, 0.4, size=(frames_with, k, 3))
    visible = np.ones((frames_with, k), dtype=bool)
    visible[:, -1] = False
    write_landmarks(root / "a", np.arange(frames_with), points, visible)
    return root


def test_landmark_rays_pass_through_visible_landmarks_at_their_distance(tmp_path):
    from fastminerf.prepare.pose import project

    root = _with_landmarks(tmp_path)
    data = load_dataset(root)
    lms = data.landmarks("train")
    t = data.table("train")
    assert lms.has.tolist() == [True, True, True, False] + [False] * 12
    rays, depth = landmark_rays(data, "train", np.arange(len(t)), 400, torch.Generator().manual_seed(0))
    f, pts = rays.frame.numpy(), rays.origins + depth[:, None] * rays.directions
    assert set(f.tolist()) == {0, 1, 2}  # only frames with landmarks
    # each ray's point at the returned distance is one of its frame's visible landmarks (never the hidden one)
    dist = torch.cdist(pts[:, None].double(), torch.from_numpy(lms.points[f][:, :5]).double())[:, 0]
    assert float(dist.min(dim=1).values.max()) < 1e-5
    torch.testing.assert_close(rays.directions.norm(dim=-1), torch.ones(400))
    assert torch.all((depth > rays.near) & (depth < rays.far))
    assert torch.equal(rays.identity, torch.zeros(400, dtype=torch.int64))
    # uv and pixel are where prepare's camera projects the landmark
    uv = np.stack([project(p[None], t.c2w[i].astype(np.float64), t.intrinsics[i])[0] for p, i in zip(pts.numpy(), f)])
    np.testing.assert_allclose(rays.uv.numpy() * [t.width, t.height], uv, atol=1e-3)
    assert torch.equal(rays.pixel, torch.from_numpy(np.floor(uv)).long())
    # the same generator state draws the same rays; frames without landmarks give none
    again, _ = landmark_rays(data, "train", np.arange(len(t)), 400, torch.Generator().manual_seed(0))
    assert torch.equal(again.origins, rays.origins) and torch.equal(again.frame, rays.frame)
    assert landmark_rays(data, "train", np.arange(3, len(t)), 10, torch.Generator()) is None


def test_malformed_landmarks_name_the_file_and_key(tmp_path):
    root = _with_landmarks(tmp_path)
    path = root / "a" / "landmarks.npz"
    np.savez(path, frame_index=np.arange(3), points=np.zeros((3, 6, 2)), visible=np.ones((3, 6), bool))
    with pytest.raises(DatasetError, match=r"landmarks\.npz.*key 'points'.*\(3, K, 3\)"):
        load_dataset(root).landmarks("train")
    np.savez(path, frame_index=np.arange(3), points=np.zeros((3, 6, 3)))
    with pytest.raises(DatasetError, match=r"landmarks\.npz.*key 'visible'.*missing"):
        load_dataset(root).landmarks("train")
    path.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"landmarks\.npz.*not a readable"):
        load_dataset(root).landmarks("train")


def test_landmarks_with_a_repeated_or_non_finite_frame_name_the_frame(tmp_path):
    """A converter's landmarks.npz with one frame_index twice, or a NaN point (a frame its tracker lost), was refused
    with 'repeats a frame' / 'holds NaN or infinite values', naming neither the frame nor the row among thousands.
    Both name the frame (its frame_index) and its row in the file."""
    root = _with_landmarks(tmp_path)
    path = root / "a" / "landmarks.npz"
    points = np.zeros((3, 6, 3))
    np.savez(path, frame_index=np.array([5, 7, 7]), points=points, visible=np.ones((3, 6), bool))
    with pytest.raises(DatasetError, match=r"landmarks\.npz: key 'frame_index': repeats frame 7 \(rows 1 and 2\)"):
        load_dataset(root).landmarks("train")
    points[1, 4, 2] = np.nan
    np.savez(path, frame_index=np.array([5, 6, 7]), points=points, visible=np.ones((3, 6), bool))
    with pytest.raises(DatasetError, match=r"landmarks\.npz: key 'points': holds NaN or infinite values \(row 1, "
                                           r"frame 6\)"):
        load_dataset(root).landmarks("train")


def test_landmarks_cut_short_or_damaged_name_the_file(tmp_path):
    """A landmarks.npz cut short (a copy killed midway, a full disk) or with damaged bytes stopped train
    (landmark_depth_weight > 0) and eval with a zipfile.BadZipFile traceback naming no file ('File is not a zip file',
    "Bad CRC-32 for file 'points.npy'"), or an EOFError for an empty file."""
    root = _with_landmarks(tmp_path)
    path = root / "a" / "landmarks.npz"
    raw = path.read_bytes()
    member = raw.index(b"points.npy") + 200  # inside the points array's bytes
    for damaged in (raw[: len(raw) // 2], raw[:member] + bytes(b ^ 0xFF for b in raw[member:member + 16]) + raw[member + 16:],
                    b""):
        path.write_bytes(damaged)
        with pytest.raises(DatasetError, match=r"landmarks\.npz.*not a readable"):
            load_dataset(root).landmarks("train")


def test_an_npz_file_that_is_another_file_is_refused_without_numpys_pickle_advice(tmp_path):
    """Another file in place of landmarks.npz or expression_basis.npz (an image, a pickle) was refused with numpy's
    'This file contains pickled (object) data. If you trust the file you can load it unsafely using the
    `allow_pickle=` keyword argument or `pickle.load()`.': advice no fastminerf user can take, or should."""
    import pickle

    from fastminerf.prepare.expression import BASIS_FILE, ExpressionBasis

    root = _with_landmarks(tmp_path)
    for raw in (b"\x89PNG\r\n\x1a\n" + bytes(64), pickle.dumps({"points": [1, 2]})):
        (root / "a" / "landmarks.npz").write_bytes(raw)
        (tmp_path / BASIS_FILE).write_bytes(raw)
        with pytest.raises(DatasetError, match=r"landmarks\.npz.*not a readable") as lm:
            load_dataset(root).landmarks("train")
        with pytest.raises(ValueError, match="not a readable expression basis") as basis:
            ExpressionBasis.load(tmp_path)
        for err in (lm, basis):
            assert "pickle" not in str(err.value) and "trust" not in str(err.value), err.value



def test_an_npz_holding_pickled_objects_is_refused_without_numpys_allow_pickle_advice(tmp_path):
    """A shared landmarks.npz or expression_basis.npz whose arrays are pickled Python objects (object arrays, which
    would run code when read) is not read, but was refused with numpy's 'Object arrays cannot be loaded when
    allow_pickle=False', the same advice as above in other words. It says what the file holds, and nothing runs."""
    from fastminerf.prepare.expression import BASIS_FILE, ExpressionBasis

    root = _with_landmarks(tmp_path)
    objects = np.array([{"points": [1, 2]}], dtype=object)
    np.savez(root / "a" / "landmarks.npz", frame_index=objects, points=np.zeros((1, 3, 3)), visible=np.ones((1, 3), bool))
    np.savez(tmp_path / BASIS_FILE, format=objects)
    with pytest.raises(DatasetError, match=r"landmarks\.npz.*pickled Python objects") as lm:
        load_dataset(root).landmarks("train")
    with pytest.raises(ValueError, match="not a readable expression basis.*pickled Python objects") as basis:
        ExpressionBasis.load(tmp_path)
    for err in (lm, basis):
        assert "allow_pickle" not in str(err.value), err.value

# ------------------------------------------------------------------------------------------------ mouth rays


def test_mouth_rays_go_to_the_lips_and_fall_back_to_the_face_box(tmp_path):
    # Identity 'a' (4 frames, camera at (0.05 i, 0, 4) looking down -z, f = 30, centre (16, 12)) gets mediapipe's 478
    # landmarks on frames 0-2, the lips spanning x in [-0.4, 0.4], y in [-0.4, -0.2] on the z = 0 plane: they project
    # to u = 16 + 7.5 (x - 0.05 i), v = 12 - 7.5 y, a 6 x 1.5 px box grown by a quarter of its extent on each side.
    # Frame 2 hides one lip point; frame 3 and identity 'b' have no landmarks.
    from fastminerf.data.layout import LIP_LANDMARKS
    from fastminerf.data.rays import MOUTH_MARGIN, mouth_boxes

    root = tmp_path / "mouth"
    _identity(root, "a", 4, seed=1, bbox=BOX)
    _identity(root, "b", 12, seed=2, bbox=BOX, near_far=False)
    points = np.zeros((3, 478, 3))
    lips = np.asarray(LIP_LANDMARKS)
    points[:, lips, 0] = np.linspace(-0.4, 0.4, lips.size)
    points[:, lips, 1] = np.where(np.arange(lips.size) % 2 == 0, -0.4, -0.2)
    visible = np.ones((3, 478), dtype=bool)
    visible[2, lips[5]] = False
    write_landmarks(root / "a", np.arange(3), points, visible)
    data = load_dataset(root)
    boxes = mouth_boxes(data, "train")
    assert MOUTH_MARGIN == 0.25 and boxes.shape == (16, 4)
    for i in range(2):
        u0, u1 = 16 + 7.5 * (-0.4 - 0.05 * i), 16 + 7.5 * (0.4 - 0.05 * i)
        expected = [(13.5 - 0.375) / H, (15.0 + 0.375) / H, (u0 - 1.5) / W, (u1 + 1.5) / W]
        np.testing.assert_allclose(boxes[i], expected, atol=1e-9)
    assert np.isnan(boxes[2:]).all()  # a hidden lip point, no landmarks

    n = 6000
    sampler = RaySampler(data, "train", batch_size=n, seed=0, face_fraction=0.8, frames_per_batch=None, mouth_fraction=0.5)
    # whole pixels: rows [13.125, 15.375) -> 13..15, columns [11.5, 20.5) and [11.125, 20.125) -> 11..20
    assert sampler.mouth_box_pixels(0) == (13, 16, 11, 21) and sampler.mouth_box_pixels(1) == (13, 16, 11, 21)
    assert sampler.mouth_box_pixels(2) is None and sampler.mouth_box_pixels(5) is None
    batch = sampler.sample()
    col, row, frame = batch.pixel[:, 0], batch.pixel[:, 1], batch.frame
    in_mouth = (row >= 13) & (row < 16) & (col >= 11) & (col < 21)  # below the face box (rows 6..11)
    lipped = frame < 2
    tol = 5 * math.sqrt(0.25 / lipped.sum().item())
    marked = torch.from_numpy(sampler.last_mouth_rays)
    assert bool(in_mouth[marked].all()) and not bool(marked[~lipped].any())
    # Half the face rays (80 %) of frames with lips go to their mouth box, the uniform 20 % land there with p = 30 / 768 ...
    assert abs(marked[lipped].float().mean().item() - 0.4) < tol
    assert abs(in_mouth[lipped].float().mean().item() - (0.4 + 0.2 * 30 / (W * H))) < tol
    assert abs(_in_box(batch.pixel)[lipped].float().mean().item() - (0.4 + 0.2 / 16)) < tol
    # ... and the others keep all their face rays in the face box.
    in_face = _in_box(batch.pixel)[~lipped].float().mean().item()
    assert abs(in_face - (0.8 + 0.2 / 16)) < 5 * math.sqrt(0.25 / (~lipped).sum().item())
    # Whole frames per batch: round(0.5 * 80) face rays of a frame with lips go to its mouth box; every other ray is
    # the one a sampler without mouth rays draws (the same random numbers).
    kw = dict(batch_size=1600, seed=1, face_fraction=0.8, frames_per_batch=16)
    with_mouth = RaySampler(data, "train", mouth_fraction=0.5, **kw)
    batch, plain = with_mouth.sample(), RaySampler(data, "train", **kw).sample()
    marked = torch.from_numpy(with_mouth.last_mouth_rays)
    assert torch.equal(batch.pixel[~marked], plain.pixel[~marked]) and torch.equal(batch.frame, plain.frame)
    col, row, frame = batch.pixel[:, 0], batch.pixel[:, 1], batch.frame
    in_mouth = (row >= 13) & (row < 16) & (col >= 11) & (col < 21)
    for f in range(16):
        mine = frame == f
        assert mine.sum() == 100 and (marked & mine).sum() == (40 if f < 2 else 0)
        assert (in_mouth & marked & mine).sum() == (marked & mine).sum()
    with pytest.raises(ValueError, match="mouth_fraction"):
        RaySampler(data, "train", mouth_fraction=-0.1)
    # Without landmarks (or at 0) nothing changes: the same batches as a sampler that never heard of mouths.
    plain = RaySampler(data, "train", batch_size=256, seed=3, frames_per_batch=None).sample()
    off = RaySampler(data, "train", batch_size=256, seed=3, frames_per_batch=None, mouth_fraction=0.0).sample()
    assert torch.equal(plain.pixel, off.pixel)


def test_eye_rays_alternate_between_the_eyes_and_follow_the_visible_one(tmp_path):
    # The camera of the mouth test (u = 16 + 7.5 (x - 0.05 i), v = 12 - 7.5 y): the person's right eye's lids span
    # x in [-0.4, -0.1], the left's [0.1, 0.4], both y in [0.2, 0.3], so each eye is 2.25 x 0.75 px, grown by a quarter
    # of its width (0.5625 px) on every side. Frame 2 hides a point of the left eye; frame 3 and 'b' have no landmarks.
    from fastminerf.data.layout import EYE_LANDMARKS
    from fastminerf.data.rays import EYE_MARGIN, eye_boxes

    root = tmp_path / "eyes"
    _identity(root, "a", 4, seed=1, bbox=BOX)
    _identity(root, "b", 12, seed=2, bbox=BOX, near_far=False)
    points = np.zeros((3, 478, 3))
    for lids, (x0, x1) in zip(EYE_LANDMARKS, ((-0.4, -0.1), (0.1, 0.4))):
        lids = np.asarray(lids)
        points[:, lids, 0] = np.linspace(x0, x1, lids.size)
        points[:, lids, 1] = np.where(np.arange(lids.size) % 2 == 0, 0.2, 0.3)
    visible = np.ones((3, 478), dtype=bool)
    visible[2, EYE_LANDMARKS[1][3]] = False
    write_landmarks(root / "a", np.arange(3), points, visible)
    data = load_dataset(root)
    boxes = eye_boxes(data, "train")
    assert EYE_MARGIN == 0.25 and boxes.shape == (16, 2, 4)
    for i in range(3):
        for e, (x0, x1) in enumerate(((-0.4, -0.1), (0.1, 0.4))):
            if i == 2 and e == 1:
                continue
            u0, u1 = 16 + 7.5 * (x0 - 0.05 * i), 16 + 7.5 * (x1 - 0.05 * i)
            expected = [(9.75 - 0.5625) / H, (10.5 + 0.5625) / H, (u0 - 0.5625) / W, (u1 + 0.5625) / W]
            np.testing.assert_allclose(boxes[i, e], expected, atol=1e-9)
    assert np.isnan(boxes[2, 1]).all() and np.isnan(boxes[3:]).all()

    kw = dict(batch_size=1600, seed=1, face_fraction=0.8, frames_per_batch=16, mouth_fraction=0.0)
    sampler = RaySampler(data, "train", eye_fraction=0.5, **kw)
    right, left = sampler.eye_box_pixels(0)
    assert right == (9, 12, 12, 16) and left == (9, 12, 16, 20)  # rows [9.19, 11.06), columns [12.44, 15.81), [16.19, 19.56)
    assert sampler.eye_box_pixels(2)[1] is None and sampler.eye_box_pixels(5) == (None, None)
    batch, plain = sampler.sample(), RaySampler(data, "train", **kw).sample()
    marked = torch.from_numpy(sampler.last_eye_rays)
    # every other ray is the one a sampler without eye rays draws (the same random numbers)
    assert torch.equal(batch.pixel[~marked], plain.pixel[~marked]) and torch.equal(batch.frame, plain.frame)
    assert np.array_equal(sampler.last_targeted_rays(), sampler.last_eye_rays)
    col, row, frame = batch.pixel[:, 0], batch.pixel[:, 1], batch.frame

    def inside(box):
        return (row >= box[0]) & (row < box[1]) & (col >= box[2]) & (col < box[3])

    for f in range(16):
        mine = marked & (frame == f)
        assert (frame == f).sum() == 100 and mine.sum() == (40 if f < 3 else 0)  # round(0.5 * 80) face rays
        if f < 2:  # both eyes seen: 20 rays each (frame 1's boxes share a column)
            r, l = (inside(b) & mine for b in sampler.eye_box_pixels(f))
            assert (r | l).sum() == 40 and (f == 1 or (r.sum() == 20 and l.sum() == 20))
        elif f == 2:  # the left eye is hidden: all 40 in the right one
            assert (inside(sampler.eye_box_pixels(2)[0]) & mine).sum() == 40
    # one ray at a time: each face ray an eye ray with p = 0.5, both eyes alike
    n = 6000
    single = RaySampler(data, "train", batch_size=n, seed=0, face_fraction=0.8, frames_per_batch=None, eye_fraction=0.25,
                        mouth_fraction=0.5)
    batch = single.sample()
    eyed = batch.frame < 2
    tol = 5 * math.sqrt(0.25 / eyed.sum().item())
    share = torch.from_numpy(single.last_eye_rays)[eyed].float().mean().item()
    assert abs(share - 0.8 * 0.25) < tol and not (single.last_eye_rays & single.last_mouth_rays).any()
    with pytest.raises(ValueError, match="eye_fraction"):
        RaySampler(data, "train", mouth_fraction=0.6, eye_fraction=0.5)


def test_a_mouth_box_outside_the_picture_is_no_mouth_box(tmp_path):
    # Landmarks whose camera does not fit them (a user's own data, a tracker in another frame) can project wholly off
    # the image: the box was clipped into a one-pixel strip along the edge, where mouth rays were drawn and eval's
    # mouth PSNR was scored. Such a frame has no mouth box, as one whose lips are hidden.
    from fastminerf.data.layout import LIP_LANDMARKS
    from fastminerf.data.rays import mouth_boxes

    root = tmp_path / "off"
    _identity(root, "a", 4, seed=1, bbox=BOX)
    points = np.zeros((2, 478, 3))
    lips = np.asarray(LIP_LANDMARKS)
    points[:, lips, 0] = np.linspace(-0.4, 0.4, lips.size)
    points[:, lips, 1] = np.where(np.arange(lips.size) % 2 == 0, -0.4, -0.2)
    points[1, lips, 0] += 6.0  # u = 16 + 7.5 x: 58..64 px, right of a 32 px wide image
    write_landmarks(root / "a", np.arange(2), points, np.ones((2, 478), dtype=bool))
    data = load_dataset(root)
    boxes = mouth_boxes(data, "train")
    assert np.isfinite(boxes[0]).all() and np.isnan(boxes[1]).all()
    sampler = RaySampler(data, "train", batch_size=64, seed=0, frames_per_batch=None, mouth_fraction=0.5)
    assert sampler.mouth_box_pixels(0) is not None and sampler.mouth_box_pixels(1) is None


@pytest.mark.parametrize("points, mediapipes", [(468, True), (478, True), (5023, False), (500, False)])
def test_mouth_and_eye_boxes_come_only_from_mediapipes_face_mesh(tmp_path, points, mediapipes):
    """landmarks.npz may hold any K points (docs/DATASET.md); the mouth and eye rays read the lips and lids at
    mediapipe's face-mesh indices. They took any file of more points than the largest of those indices as
    mediapipe's, so another tracker's mesh (FLAME's 5,023 vertices, a 500-point model) had boxes built round
    whichever of its points sat at those indices, and mouth rays aimed there without a word. Only mediapipe's mesh
    (468 points, 478 with the irises, one order) gives boxes; other files keep those rays in the face box."""
    from fastminerf.data import load_dataset
    from fastminerf.data.rays import eye_boxes, mouth_boxes
    from fastminerf.data.synth import generate
    from fastminerf.data.writer import write_landmarks

    generate(tmp_path / "d", n_identities=1, n_frames=3, size=16, seed=0)
    folder = tmp_path / "d" / "id000"
    data = load_dataset([folder], splits=("train",))
    index = data.table("train").frame_index
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.2, 0.2, (len(index), points, 3)).astype(np.float32)
    write_landmarks(folder, index, pts, np.ones(pts.shape[:2], bool))
    data = load_dataset([folder], splits=("train",))
    for boxes in (mouth_boxes(data, "train"), eye_boxes(data, "train")):
        assert (boxes is not None) == mediapipes, (points, boxes)


def test_pixel_uv_is_the_pixel_centre_over_width_and_height():
    from fastminerf.data.rays import pixel_uv

    uv = pixel_uv(torch.tensor([[0, 0], [3, 1], [1, 0]]), 4, 2)  # (column, row) in a 4 wide, 2 high image
    assert torch.equal(uv, torch.tensor([[0.125, 0.25], [0.875, 0.75], [0.375, 0.25]]))
