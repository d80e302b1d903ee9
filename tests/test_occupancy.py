"""Occupancy grid and ray marcher: native ops against the pure-PyTorch reference, edge cases, the module, and
parity with nerfacc (GPU only).

Tolerances:
- native vs reference, CPU or CUDA: exact (``torch.equal``). Both evaluate the same float32 operations, each
  rounded once (the kernels use ``__fmul_rn``/``__fadd_rn`` so nvcc cannot fuse them), the marcher's skipping is
  verified so that it never changes which samples are emitted, and the update is max / multiply only.
- nerfacc parity: see ``NERFACC_*`` below.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastminerf import BackendError
from fastminerf.nn.occupancy import OccupancyGrid
from fastminerf.ops.occupancy import (
    cascade_aabbs,
    cells_per_level,
    ema_update,
    locate_reference,
    march_rays,
    occupancy_threshold,
    pack_bitfield,
    unpack_bitfield,
)

ROI = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)

# nerfacc accumulates its lattice (t += dt) where we compute t_k = near + k * step: after k steps the two differ by
# at most k half-ulps of t (t <= 8 here: ulp 9.5e-7, k <= 1600 -> 8e-4).
NERFACC_T_ATOL = 1e-3
# nerfacc finds cells with a DDA (with a 1e-6 nudge) where we floor the sample's grid coordinate, and the drift above
# can move a midpoint across a cell border: rays whose sample count differs must stay rare, and by a sample or two.
NERFACC_MISMATCHED_RAYS = 0.02
NERFACC_COUNT_SLACK = 2


def random_rays(n: int, g: torch.Generator, distance: float = 3.0, spread: float = 1.0):
    """Rays from a shell at ``distance`` towards random points in [-spread, spread]^3 (unit directions)."""
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1) * distance
    target = (torch.rand(n, 3, generator=g) * 2 - 1) * spread
    return o, torch.nn.functional.normalize(target - o, dim=1)


def sphere_occs(levels: int, res, radius: float = 0.6, center=(0.1, -0.05, 0.0)) -> torch.Tensor:
    """Occupancies of a ball (1 inside, 0 outside) at every cascade's cell centres."""
    from fastminerf.ops.occupancy import cell_points

    aabbs = cascade_aabbs(ROI, levels)
    C = cells_per_level(res)
    occs = []
    for level in range(levels):
        x = cell_points(aabbs[level], torch.arange(C), res)
        occs.append(((x - torch.tensor(center)).norm(dim=1) < radius).float())
    return torch.cat(occs)


def assert_same_samples(a, b):
    for name, x, y in zip(("ray_indices", "t_starts", "t_ends", "offsets"), a, b):
        assert x.dtype == y.dtype, name
        assert torch.equal(x, y), f"{name} differ: {x.numel()} vs {y.numel()} values"


def assert_well_formed(s, n_rays: int):
    assert s.offsets.shape == (n_rays + 1,) and int(s.offsets[0]) == 0 and int(s.offsets[-1]) == s.t_starts.numel()
    counts = s.offsets[1:] - s.offsets[:-1]
    assert torch.equal(s.ray_indices, torch.repeat_interleave(torch.arange(n_rays, device=counts.device), counts))
    assert bool((s.t_ends > s.t_starts).all())
    same_ray = s.ray_indices[1:] == s.ray_indices[:-1]
    assert bool((s.t_starts[1:][same_ray] >= s.t_ends[:-1][same_ray]).all()), "samples of a ray must be sorted"


# ----------------------------------------------------------------------------------------------------------
# Marcher: native vs reference


CASES = [
    # levels, resolution, cone_angle, max_samples, occupancy
    (1, 16, 0.0, 0, "random"),
    (1, (8, 12, 16), 0.0, 0, "sphere"),
    (3, 16, 0.0, 0, "sphere"),
    (3, 16, 0.0, 7, "random"),
    (2, (8, 12, 16), 0.02, 0, "sphere"),
    (3, 32, 0.01, 0, "random"),
    (2, 16, 0.05, 5, "sphere"),
]


@pytest.mark.native
@pytest.mark.parametrize("levels,res,cone,cap,kind", CASES)
def test_march_native_matches_reference(levels, res, cone, cap, kind, generator):
    aabbs = cascade_aabbs(ROI, levels)
    if kind == "random":
        occs = torch.rand(levels * cells_per_level(res), generator=generator)
        bits = pack_bitfield(occs, 0.8, levels)
    else:
        bits = pack_bitfield(sphere_occs(levels, res), 0.5, levels)
    o, d = random_rays(160, generator, distance=2.5 * 2 ** (levels - 1), spread=1.2)
    near = torch.rand(160, generator=generator) * 0.5
    far = torch.where(torch.rand(160, generator=generator) < 0.2, torch.full((160,), 3.0), torch.full((160,), 1e10))
    kw = dict(near=near, far=far, step_size=0.01 * 2 ** (levels - 1), cone_angle=cone, max_samples_per_ray=cap)
    native = march_rays(o, d, bits, aabbs, res, backend="native", **kw)
    reference = march_rays(o, d, bits, aabbs, res, backend="torch", **kw)
    assert native.t_starts.numel() > 0
    assert_same_samples(native, reference)
    assert_well_formed(native, 160)
    if cap:
        assert int(native.counts.max()) <= cap


@pytest.mark.native
def test_occupied_samples_are_a_subset_of_uniform_samples(generator):
    """The lattice starts at the near plane: skipping never shifts samples, it only drops empty ones."""
    res, levels = 32, 2
    aabbs = cascade_aabbs(ROI, levels)
    o, d = random_rays(200, generator, distance=4.0)
    sparse = march_rays(o, d, pack_bitfield(sphere_occs(levels, res), 0.5, levels), aabbs, res, step_size=0.02)
    full = march_rays(o, d, pack_bitfield(torch.ones(levels * res**3), 0.5, levels), aabbs, res, step_size=0.02)
    key = lambda s: set(zip(s.ray_indices.tolist(), s.t_starts.tolist(), s.t_ends.tolist()))  # noqa: E731
    assert key(sparse) < key(full)
    assert sparse.t_starts.numel() < full.t_starts.numel() / 2


# ----------------------------------------------------------------------------------------------------------
# Marcher: edge cases


@pytest.mark.native
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_full_grid_is_uniform_sampling_of_the_box(backend, generator):
    """A full grid gives every lattice sample whose midpoint lies in the box [lo, hi), nothing else."""
    res = (8, 12, 16)
    aabbs = cascade_aabbs(ROI, 1)
    bits = pack_bitfield(torch.ones(cells_per_level(res)), 0.5, 1)
    o, d = random_rays(64, generator, distance=3.0, spread=0.9)
    near, step = 0.25, 0.03
    s = march_rays(o, d, bits, aabbs, res, near=near, step_size=step, backend=backend)
    k = torch.arange(400, dtype=torch.float32)
    t0 = near + k * torch.tensor(step, dtype=torch.float32)
    t1 = near + (k + 1) * torch.tensor(step, dtype=torch.float32)
    mid = (t0 + t1) * 0.5
    x = o[:, None, :] + mid[None, :, None] * d[:, None, :]  # (N, K, 3)
    inside = ((x >= -1.0) & (x < 1.0)).all(-1)  # no midpoint lies within float error of a face for this seed
    assert torch.equal(s.counts, inside.sum(1))
    assert torch.equal(s.t_starts, t0[None].expand_as(inside)[inside])
    assert torch.equal(s.t_ends, t1[None].expand_as(inside)[inside])


@pytest.mark.native
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_empty_grid_misses_and_degenerate_rays_give_no_samples(backend, generator):
    aabbs = cascade_aabbs(ROI, 2)
    full = pack_bitfield(torch.ones(2 * 16**3), 0.5, 2)
    empty = pack_bitfield(torch.zeros(2 * 16**3), 0.5, 2)
    o, d = random_rays(50, generator)
    s = march_rays(o, d, empty, aabbs, 16, step_size=0.01, backend=backend)
    assert s.t_starts.numel() == 0 and torch.equal(s.offsets, torch.zeros(51, dtype=torch.int64))
    # A miss, a ray pointing away, near > far, a zero direction, a far plane before the box, then a hit.
    o = torch.tensor([[0.0, 5.0, -5.0], [0.0, 0.0, -3.0], [0.0, 0.0, -3.0], [0.0, 0.0, 0.0], [0.0, 0.0, -5.0],
                      [0.0, 0.0, -5.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0],
                      [0.0, 0.0, 1.0]])
    near = torch.tensor([0.0, 0.0, 4.0, 0.0, 0.0, 0.0])
    far = torch.tensor([1e10, 1e10, 3.0, 1e10, 2.9, 1e10])
    s = march_rays(o, d, full, aabbs, 16, near=near, far=far, step_size=0.01, backend=backend)
    assert s.counts.tolist()[:5] == [0, 0, 0, 0, 0]
    assert int(s.counts[5]) == 400  # the level-1 box spans z in [-2, 2): 4 / 0.01 samples


@pytest.mark.native
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_axis_parallel_rays_with_midpoints_on_cell_borders(backend):
    """Rays along z (zero x, y components), lying on x/y cell faces, with every midpoint exactly on a z face
    (all values exact in float32): a point on a face belongs to the cell above it."""
    res = 8  # cells of 0.25 in [-1, 1]
    aabbs = cascade_aabbs(ROI, 1)
    C = res**3
    i0, i1, i2 = torch.meshgrid(torch.arange(res), torch.arange(res), torch.arange(res), indexing="ij")
    occs = ((i2 % 3 == 0) & (i0 == 4) & (i1 == 4)).float().reshape(C)  # cells (4, 4, z) with z in {0, 3, 6}
    bits = pack_bitfield(occs, 0.5, 1)
    # x = y = 0 is the face between cells 3 and 4: the ray belongs to cells (4, 4, .).
    o = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, 2.0], [-0.25, 0.0, -2.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    # near 0.875, step 0.25: midpoints at t = 1 + 0.25k, z = -1 + 0.25k for the first ray: the face of cell k.
    s = march_rays(o, d, bits, aabbs, res, near=0.875, step_size=0.25, backend=backend)
    assert s.counts.tolist() == [3, 3, 0]
    assert s.t_starts[:3].tolist() == [0.875, 1.625, 2.375]  # cells z = 0, 3, 6
    # Ray 2 goes down from z = 2: midpoints z = 1 - 0.25k sit on the lower face of cell 8 - k; z = 1 is outside
    # (half-open box), then cells 7, 6, ..., 0 at k = 1..8 (z = -1, the box's lower face, is inside): occupied
    # 6 (k = 2), 3 (k = 5) and 0 (k = 8).
    assert s.t_starts[3:].tolist() == [1.375, 2.125, 2.875]
    assert s.t_ends[3:].tolist() == [1.625, 2.375, 3.125]


@pytest.mark.native
def test_points_on_borders_and_between_cascades():
    aabbs = cascade_aabbs(ROI, 2)  # level 0: [-1, 1), level 1: [-2, 2), 8 cells each
    pts = torch.tensor([
        [-1.0, -1.0, -1.0],    # lower corner of level 0: inside, cell 0
        [1.0, 0.0, 0.0],       # upper face of level 0: level 1
        [-2.0, -2.0, -2.0],    # lower corner of level 1
        [2.0, 0.0, 0.0],       # upper face of the grid: outside
        [0.0, 0.0, 0.0],       # centre: level 0, cell (4, 4, 4)
        [5.0, 0.0, 0.0],       # outside
        [float("nan"), 0.0, 0.0],
    ])
    level, index = locate_reference(pts, aabbs, 8)
    assert level.tolist() == [0, 1, 1, -1, 0, -1, -1]
    assert index[[0, 2, 4]].tolist() == [0, 0, (4 * 8 + 4) * 8 + 4]
    assert int(index[1]) == (6 * 8 + 4) * 8 + 4


@pytest.mark.native
def test_cap_keeps_the_first_samples(generator):
    aabbs = cascade_aabbs(ROI, 1)
    bits = pack_bitfield(sphere_occs(1, 16), 0.5, 1)
    o, d = random_rays(100, generator, spread=0.3)
    full = march_rays(o, d, bits, aabbs, 16, step_size=0.01)
    capped = march_rays(o, d, bits, aabbs, 16, step_size=0.01, max_samples_per_ray=10)
    assert torch.equal(capped.counts, full.counts.clamp(max=10))
    first = torch.cat([full.t_starts[a : a + c] for a, c in zip(full.offsets[:-1].tolist(), capped.counts.tolist())])
    assert torch.equal(capped.t_starts, first)


@pytest.mark.native
def test_cone_steps_grow_with_distance(generator):
    aabbs = cascade_aabbs(ROI, 1)
    bits = pack_bitfield(torch.ones(16**3), 0.5, 1)
    o, d = torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    s = march_rays(o, d, bits, aabbs, 16, step_size=0.001, cone_angle=0.01, max_step_size=0.035)
    dt = s.t_ends - s.t_starts
    assert bool((dt[1:] >= dt[:-1]).all()) and float(dt[0]) == pytest.approx(0.02, rel=0.05)
    assert float(dt.max()) == pytest.approx(0.035, rel=1e-5)  # t1 - t0 of float32 t's near 4: 1 ulp
    assert_same_samples(s, march_rays(o, d, bits, aabbs, 16, step_size=0.001, cone_angle=0.01, max_step_size=0.035,
                                      backend="torch"))


def test_march_rejects_bad_arguments():
    aabbs = cascade_aabbs(ROI, 2)
    o, d = torch.zeros(1, 3), torch.ones(1, 3)
    with pytest.raises(ValueError, match="multiple of 4"):
        march_rays(o, d, torch.zeros(2, 27, dtype=torch.uint8), aabbs, 6, backend="torch")
    with pytest.raises(ValueError, match="bitfield"):
        march_rays(o, d, torch.zeros(1, 512, dtype=torch.uint8), aabbs, 16, backend="torch")
    with pytest.raises(ValueError, match="step_size"):
        march_rays(o, d, torch.zeros(2, 512, dtype=torch.uint8), aabbs, 16, step_size=0.0, backend="torch")


# ----------------------------------------------------------------------------------------------------------
# Update: EMA, threshold, bitfield


@pytest.mark.native
def test_ema_native_matches_reference(generator):
    C = 3 * 10**3
    occs = torch.rand(C, generator=generator)
    occs[:50] = -1.0  # invisible cells never change
    indices = torch.randint(0, C, (5000,), generator=generator)  # many repeats: their max counts
    indices[:20] = torch.arange(20)
    values = torch.rand(5000, generator=generator) * 2
    native = ema_update(occs, indices, values, 0.95, backend="native")
    reference = ema_update(occs, indices, values, 0.95, backend="torch")
    assert torch.equal(native, reference)
    assert torch.equal(native[:50], occs[:50])
    untouched = torch.ones(C, dtype=torch.bool)
    untouched[indices] = False
    assert torch.equal(native[untouched], occs[untouched])
    c = int(indices[100])
    expected = max(float(occs[c]) * 0.95, float(values[indices == c].max()))
    assert float(native[c]) == pytest.approx(expected, rel=1e-6)
    empty = torch.zeros(0, dtype=torch.int64)
    assert torch.equal(ema_update(occs, empty, torch.zeros(0)), occs)


@pytest.mark.native
@pytest.mark.parametrize("res", [16, (3, 5, 7)])
def test_bitfield_native_matches_reference_and_nerfacc_layout(res, generator):
    levels = 2
    C = cells_per_level(res)
    occs = torch.rand(levels * C, generator=generator)
    thr = occupancy_threshold(occs, 0.5)
    native = pack_bitfield(occs, thr, levels, backend="native")
    assert torch.equal(native, pack_bitfield(occs, thr, levels, backend="torch"))
    assert native.shape == (levels, (C + 7) // 8)
    r = (res,) * 3 if isinstance(res, int) else res
    assert torch.equal(unpack_bitfield(native, r), (occs > thr).view(levels, *r))  # binaries[l, x, y, z]
    assert torch.equal(pack_bitfield(torch.zeros(levels * C), 0.0, levels), torch.zeros_like(native))


def test_threshold_rule():
    occs = torch.tensor([-1.0, 0.0, 0.002, 0.004, 0.5])
    assert occupancy_threshold(occs, 0.01) == pytest.approx(0.01)  # mean of >= 0 cells is 0.1265
    assert occupancy_threshold(torch.tensor([-1.0, 0.0, 0.002, 0.004]), 0.01) == pytest.approx(0.002)
    assert occupancy_threshold(torch.full((4,), -1.0), 0.01) != occupancy_threshold(torch.full((4,), -1.0), 0.01)  # NaN


# ----------------------------------------------------------------------------------------------------------
# Module


def ball_density(x: torch.Tensor) -> torch.Tensor:
    return (x.norm(dim=1) < 0.5).float() * 20.0 * 0.01  # density 20 times a step of 0.01


@pytest.mark.native
def test_module_update_follows_nerfacc_schedule():
    grid = OccupancyGrid(roi_aabb=ROI, resolution=16, levels=2, backend="native")
    g = torch.Generator().manual_seed(0)
    assert not grid.update(3, ball_density, n=16)
    assert grid.update(0, ball_density, warmup_steps=256, generator=g)
    warm = grid.occs.clone()
    assert float(warm.max()) == pytest.approx(0.2) and 0 < grid.occupied_fraction() < 0.1
    calls = []

    def counting(x):
        calls.append(x.shape[0])
        return torch.zeros(x.shape[0])

    assert grid.update(512, counting, warmup_steps=256, generator=g)
    C = 16**3
    occupied = grid.binaries.reshape(2, -1).sum(1)
    assert calls[0] == sum(C // 4 + min(int(k), C // 4) for k in occupied)  # uniform + occupied per level
    assert bool((grid.occs <= warm).all()) and float(grid.occs.max()) == pytest.approx(0.2 * 0.95)
    # Native and reference updates give the same state.
    torch_grid = OccupancyGrid(roi_aabb=ROI, resolution=16, levels=2, backend="torch")
    native_grid = OccupancyGrid(roi_aabb=ROI, resolution=16, levels=2, backend="native")
    for grid_ in (torch_grid, native_grid):
        grid_.update(0, ball_density, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch_grid.occs, native_grid.occs) and torch.equal(torch_grid.bitfield, native_grid.bitfield)


@pytest.mark.native
def test_module_sampling_and_state_dict(generator):
    grid = OccupancyGrid(roi_aabb=ROI, resolution=32, levels=2, backend="native")
    grid.mark_from_density(ball_density, generator=generator)
    o, d = random_rays(64, generator, spread=0.4)
    s = grid.sample(o, d, near=0.0, step_size=0.01)
    assert_same_samples(s, march_rays(o, d, grid.bitfield, grid.aabbs, 32, step_size=0.01, backend="torch"))
    copy = OccupancyGrid(roi_aabb=(-9, -9, -9, 9, 9, 9), resolution=32, levels=2, backend="torch")
    copy.load_state_dict(grid.state_dict())
    assert_same_samples(s, copy.sample(o, d, near=0.0, step_size=0.01))
    grid.mark_all()
    assert grid.occupied_fraction() == 1.0
    grid.mark_empty()
    assert grid.sample(o, d, step_size=0.01).t_starts.numel() == 0


def test_nerfacc_backend_needs_cuda():
    grid = OccupancyGrid(resolution=16, backend="nerfacc")
    with pytest.raises(BackendError):
        grid.sample(torch.zeros(1, 3), torch.ones(1, 3))


# ----------------------------------------------------------------------------------------------------------
# GPU


@pytest.mark.cuda
@pytest.mark.native
@pytest.mark.parametrize("cone", [0.0, 0.01])
def test_cuda_matches_cpu_exactly(cone, generator):
    levels, res = 3, 32
    aabbs = cascade_aabbs(ROI, levels)
    occs = torch.rand(levels * res**3, generator=generator)
    indices = torch.randint(0, levels * res**3, (20000,), generator=generator)
    values = torch.rand(20000, generator=generator)
    cpu = ema_update(occs, indices, values)
    gpu = ema_update(occs.cuda(), indices.cuda(), values.cuda())
    assert torch.equal(cpu, gpu.cpu())
    thr = occupancy_threshold(cpu, 0.9)
    bits = pack_bitfield(cpu, thr, levels)
    assert torch.equal(bits, pack_bitfield(cpu.cuda(), thr, levels).cpu())
    o, d = random_rays(4096, generator, distance=6.0)
    kw = dict(near=0.1, step_size=0.01, cone_angle=cone, max_samples_per_ray=64)
    a = march_rays(o, d, bits, aabbs, res, **kw)
    b = march_rays(o.cuda(), d.cuda(), bits.cuda(), aabbs, res, **kw)
    assert_same_samples(a, tuple(x.cpu() for x in b))


@pytest.mark.nerfacc
@pytest.mark.native
@pytest.mark.parametrize("levels,cone", [(1, 0.0), (3, 0.0), (2, 0.004)])
def test_nerfacc_parity(levels, cone):
    """The same bitfield loaded into nerfacc's ``binaries``: the same samples up to the tolerances above."""
    g = torch.Generator().manual_seed(7)
    ours = OccupancyGrid(roi_aabb=ROI, resolution=64, levels=levels, backend="native").cuda()
    theirs = OccupancyGrid(roi_aabb=ROI, resolution=64, levels=levels, backend="nerfacc").cuda()
    ours.mark_from_density(ball_density, generator=torch.Generator(device="cuda").manual_seed(0))
    theirs.load_state_dict(ours.state_dict())
    o, d = random_rays(2000, g, distance=3.0, spread=0.6)
    o, d = o.cuda(), d.cuda()
    a = ours.sample(o, d, near=0.0, step_size=0.005, cone_angle=cone)
    b = theirs.sample(o, d, near=0.0, step_size=0.005, cone_angle=cone)
    mismatched = a.counts != b.counts
    assert float(mismatched.float().mean()) <= NERFACC_MISMATCHED_RAYS
    assert int((a.counts - b.counts).abs().max()) <= NERFACC_COUNT_SLACK
    same = ~mismatched
    sel_a = same[a.ray_indices]
    sel_b = same[b.ray_indices]
    torch.testing.assert_close(a.t_starts[sel_a], b.t_starts[sel_b], rtol=0, atol=NERFACC_T_ATOL)
    torch.testing.assert_close(a.t_ends[sel_a], b.t_ends[sel_b], rtol=0, atol=NERFACC_T_ATOL)


# ----------------------------------------------------------------------------------------------------------
# Space carving from masks


def _look_at(eye):
    """OpenGL camera-to-world looking from ``eye`` at the origin, +y up."""
    eye = torch.tensor(eye, dtype=torch.float32)
    back = eye / eye.norm()
    right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), back)
    right = right / right.norm()
    up = torch.linalg.cross(back, right)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, eye
    return c2w


def test_visual_hull_keeps_a_sphere_and_drops_what_every_view_sees_as_background():
    from fastminerf.data.rays import camera_rays
    from fastminerf.ops.occupancy import visual_hull

    size, radius = 64, 0.6
    eyes = [(0.0, 0.0, 4.0), (2.0, 0.5, 3.5), (-2.0, -0.5, 3.5)]
    c2w = torch.stack([_look_at(e) for e in eyes])
    intrinsics = torch.tensor([[80.0, 80.0, 32.0, 32.0]] * 3)
    masks = []
    for k in range(3):  # exact sphere silhouettes: rays passing within the radius of the centre
        o, d = camera_rays(c2w[k], intrinsics[k], size, size)
        closest = torch.linalg.norm(o - (o * d).sum(-1, keepdim=True) * d, dim=-1)
        masks.append((closest <= radius).reshape(size, size))
    gen = torch.Generator().manual_seed(0)
    points = (torch.rand(20000, 3, generator=gen) * 2 - 1) * 1.2
    keep = visual_hull(points, c2w, intrinsics, masks)
    norm = points.norm(dim=-1)
    assert keep[norm < radius * 0.98].all()  # nothing of the object is carved
    # Analytically: a point is kept iff some view that sees it looks at the sphere through it (its viewing line
    # passes within the radius of the centre). Compared away from silhouette edges (pixels are discrete there).
    any_fg = torch.zeros_like(keep)
    seen = torch.zeros_like(keep)
    near_edge = torch.zeros_like(keep)
    for k in range(3):
        eye = c2w[k, :3, 3]
        d = points - eye
        d = d / d.norm(dim=-1, keepdim=True)
        closest = torch.linalg.norm(eye - (eye * d).sum(-1, keepdim=True) * d, dim=-1)
        q = (points - eye) @ c2w[k, :3, :3]
        u, v = 32 + 80 * q[:, 0] / -q[:, 2], 32 - 80 * q[:, 1] / -q[:, 2]
        inside = (u >= 0) & (u < 64) & (v >= 0) & (v < 64)
        any_fg |= inside & (closest <= radius)
        seen |= inside
        near_edge |= inside & ((closest - radius).abs() < 0.05)
        near_edge |= (u.abs() < 1) | ((u - 64).abs() < 1) | (v.abs() < 1) | ((v - 64).abs() < 1)
    expected = any_fg | ~seen
    assert (~near_edge).sum() > 10000
    assert torch.equal(keep[~near_edge], expected[~near_edge])
    assert (~keep).sum() > 2000  # a real part of the box is carved
    # a dilation radius keeps points just outside the silhouette too
    ring = (norm > radius * 1.02) & (norm < radius * 1.08)
    assert keep[ring].float().mean() < visual_hull(points[ring], c2w, intrinsics, masks, radius=0.1).float().mean()
    # a point no view sees is kept (nothing is known there)
    behind = torch.tensor([[0.0, 0.0, 10.0]])
    assert visual_hull(behind, c2w[:1], intrinsics[:1], masks[:1]).item()


def test_visual_hull_dilation_equals_dilating_each_mask():
    """With a radius, a point is kept when its pixel is within r pixels (a (2r+1)^2 square) of a foreground pixel:
    the summed-area lookup must give what dilating the whole mask with a max filter and reading it gives."""
    from fastminerf.ops.occupancy import visual_hull

    gen = torch.Generator().manual_seed(3)
    c2w = torch.stack([_look_at(e) for e in [(0.0, 0.0, 4.0), (1.5, 0.3, 3.6)]])
    intrinsics = torch.tensor([[80.0, 80.0, 32.0, 32.0], [70.0, 70.0, 30.0, 34.0]])
    masks = [torch.rand(64, 64, generator=gen) > 0.995, torch.rand(60, 64, generator=gen) > 0.99]
    points = (torch.rand(5000, 3, generator=gen) * 2 - 1) * 1.2
    cell = 0.05
    keep = visual_hull(points, c2w, intrinsics, masks, radius=cell, keep_unseen=False)
    expected = torch.zeros_like(keep)
    for k in range(2):  # the same test one view at a time, with the dilated mask spelled out
        q = (points - c2w[k, :3, 3]) @ c2w[k, :3, :3]
        depth = -q[:, 2]
        fx, fy, cx, cy = intrinsics[k].tolist()
        u = torch.floor(cx + fx * q[:, 0] / depth)
        v = torch.floor(cy - fy * q[:, 1] / depth)
        h, w = masks[k].shape
        inside = (depth > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        r = int(math.ceil(cell * max(fx, fy) / float(depth[inside].min()))) + 1
        dilated = torch.nn.functional.max_pool2d(masks[k][None, None].float(), 2 * r + 1, stride=1, padding=r)[0, 0] > 0
        pixel = (v.clamp(0, h - 1) * w + u.clamp(0, w - 1)).long()
        expected |= inside & dilated.reshape(-1)[pixel]
    assert 0 < int(keep.sum()) < keep.numel()  # sparse masks: some points kept, some carved
    assert torch.equal(keep, expected)


def test_carve_and_restore_cells():
    grid = OccupancyGrid([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], 8, backend="torch")
    grid.mark_all()
    keep = torch.zeros(512, dtype=torch.bool)
    keep[:100] = True
    grid.carve(keep)
    assert grid.binaries.reshape(-1).tolist() == keep.tolist()
    assert (grid.occs[~keep] == -1).all() and (grid.occs[keep] == 1).all()
    back = torch.zeros(512, dtype=torch.bool)
    back[50:150] = True
    assert grid.restore(back) == 50
    assert grid.binaries.reshape(-1)[:150].all() and not grid.binaries.reshape(-1)[150:].any()


def test_the_memory_the_docstring_states_is_the_buffers():
    """``OccupancyGrid``'s docstring said '4.125 * L * C bytes (8.6 MiB for one 128^3 cascade)': 4.125 * 128^3
    bytes is 8.25 MiB (8.65 MB); a researcher sizing cascades from it was off by 4 %."""
    import re

    doc = " ".join(OccupancyGrid.__doc__.split())
    stated = re.search(r"Memory: ``4\.125 \* L \* C`` bytes \(([\d.]+) MiB for one 128\^3 cascade\)", doc)
    assert stated, "the docstring's memory sentence moved"
    for levels in (1, 2):
        grid = OccupancyGrid(resolution=128 if levels == 1 else 16, levels=levels)
        nbytes = sum(b.numel() * b.element_size() for name, b in grid.named_buffers() if name != "aabbs")
        assert nbytes == 4.125 * levels * grid.cells_per_level
    assert float(stated.group(1)) == round(4.125 * 128**3 / 2**20, 2)


def test_hull_cells_of_cascades_reads_each_mask_once():
    """MINeRF.hull_cells ran the visual hull once per cascade (model.grid_levels), so with 4 levels every training
    frame's mask was decoded from its PNG 4 times (720 decodes for 180 frames: 8.0 s against 1.8 s at one level). The
    cascades are carved in one pass over the frames, each mask read once, with the same cells kept as one visual hull
    per level."""
    from collections.abc import Sequence

    from fastminerf.config import load_config
    from fastminerf.model import MINeRF
    from fastminerf.ops.occupancy import visual_hull

    gen = torch.Generator().manual_seed(5)
    eyes = [(0.0, 0.0, 4.0), (1.5, 0.3, 3.6), (-1.0, -0.4, 3.8), (0.3, 1.2, 3.7)]
    c2w = torch.stack([_look_at(e) for e in eyes])
    intrinsics = torch.tensor([[40.0, 40.0, 16.0, 16.0]] * len(eyes))
    masks = [torch.zeros(32, 32, dtype=torch.bool) for _ in eyes]
    for m in masks:  # the head in the middle of each view, ragged
        m[12:20, 13:19] = torch.rand(8, 6, generator=gen) > 0.3

    class Counted(Sequence):
        reads = 0

        def __len__(self):
            return len(masks)

        def __getitem__(self, b):
            Counted.reads += 1
            return masks[b]

    model = MINeRF(load_config("tiny", ["model.grid_levels=3"]).model, 4, ["a"], [0, 0])
    hull = model.hull_cells(c2w, intrinsics, Counted())
    assert Counted.reads == len(masks)
    grid, c = model.occupancy, model.occupancy.cells_per_level
    centers = grid.cell_centers()
    expected = torch.cat([visual_hull(centers[k * c:(k + 1) * c], c2w, intrinsics, masks, grid.cell_radius(k))
                          for k in range(grid.levels)])
    assert torch.equal(hull, expected) and 0 < int(hull.sum()) < hull.numel()


@pytest.mark.parametrize("backend", ["torch", pytest.param("native", marks=pytest.mark.native)])
def test_a_cell_exactly_at_the_threshold_is_not_occupied(backend):
    # bit(c) = occs[c] > threshold, strictly: a grid whose cells all hold the same value marks none (its mean is the
    # threshold), and only the cells above it count.
    occs = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.5, 0.5000001, -1.0, 0.4999999])  # one level of 2 x 2 x 2 cells
    assert pack_bitfield(occs, 0.5, 1, backend=backend).tolist() == [[(1 << 3) | (1 << 5)]]
    flat = torch.full((2 * 64,), 0.003)
    assert not pack_bitfield(flat, occupancy_threshold(flat, 0.01), 2, backend=backend).any()


def test_cell_points_are_the_cell_centres_in_x_major_order():
    from fastminerf.ops.occupancy import cell_points

    aabb = torch.tensor([-1.0, 0.0, 2.0, 3.0, 6.0, 4.0])  # sides 4, 6, 2: cells of 2 x 2 x 0.5 at resolution 2, 3, 4
    res = (2, 3, 4)
    idx = torch.tensor([0, 1, 4, 23])  # cells (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 2, 3): (i0 * R1 + i1) * R2 + i2
    centres = torch.tensor([[0.0, 1.0, 2.25], [0.0, 1.0, 2.75], [0.0, 3.0, 2.25], [2.0, 5.0, 3.75]])
    torch.testing.assert_close(cell_points(aabb, idx, res), centres, rtol=0, atol=1e-6)
    corners = torch.tensor([[-1.0, 0.0, 2.0], [-1.0, 0.0, 2.5], [-1.0, 2.0, 2.0], [1.0, 4.0, 3.5]])
    torch.testing.assert_close(cell_points(aabb, idx, res, torch.zeros(4, 3)), corners, rtol=0, atol=1e-6)
    level, index = locate_reference(cell_points(aabb, torch.arange(24), res), aabb, res)  # each centre in its cell
    assert level.tolist() == [0] * 24 and index.tolist() == list(range(24))
