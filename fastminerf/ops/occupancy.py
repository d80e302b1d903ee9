"""Occupancy grid and ray marching as functions: the EMA update of cell occupancies, their bitfield, and the
marcher that walks rays through the grid's cascades, skips empty cells and returns packed samples. Each has a
native op (C++ CPU / CUDA, ``torch.ops.fastminerf.*``) and a pure-PyTorch reference of the same function.

Grid (as nerfacc's ``OccGridEstimator``): ``L`` cascades; cascade ``l`` covers the region-of-interest box scaled
by ``2**l`` about its centre (``cascade_aabbs``), each with resolution ``(R0, R1, R2)``; a point belongs to the
finest cascade containing it. Cell ``(i0, i1, i2)`` has the linear index ``(i0 * R1 + i1) * R2 + i2`` (x-major,
z fastest), so ``unpack_bitfield(bits)`` equals nerfacc's ``binaries`` of shape ``(L, R0, R1, R2)``.
``occs`` is ``(L * C,)`` float32 (``C = R0 R1 R2``), level-major; the bitfield is ``(L, ceil(C / 8))`` uint8 with
bit ``b`` of byte ``k`` of a level being cell ``8k + b``.

Update (nerfacc 0.5.3's rule, with duplicates combined by max)::

    occs[c] <- max(occs[c] * decay, max_{j: indices_j = c} values_j)   for cells c in `indices` with occs[c] >= 0
    threshold = min(mean(occs[occs >= 0]), occ_threshold);   bit(c) = occs[c] > threshold

Cells not in ``indices`` keep their value (nerfacc decays only the cells it visits); cells with a negative value
are marked invisible and never change.

Marching (all float32, each operation rounded once; ``N`` rays, ``S`` samples)::

    fixed step (cone_angle == 0):  t_k = near + k * step
    cone:                          t_0 = near,  t_{k+1} = t_k + clamp(t_k * cone_angle, step, max_step)
    sample k = [t_k, t_{k+1}],  m_k = (t_k + t_{k+1}) * 0.5,  x_k = o + m_k * d
    emitted  iff  t_{k+1} > t_k  and  m_k < far  and  the cell holding x_k (finest cascade) has its bit set

The lattice starts at the near plane, so a sample of occupied space sits exactly where uniform sampling with the
same step puts it, and marching a full grid *is* uniform sampling of the box. At most ``max_samples_per_ray``
samples per ray (the first ones; ``<= 0``: no cap). The cone walk ends at its first zero-width sample. Rays with
a zero direction, an infinite near plane or a non-finite origin or direction emit nothing. Exact equality of native
and reference holds while ``|t| / step < 2**20`` along the box (float32 can resolve the lattice there).

Cell of a point (``locate_reference``): ``p = (x - lo) * (R / (hi - lo))`` in the outermost cascade; outside
unless ``0 <= p < R`` on every axis (half-open box); then, while the cell lies in the central half of its
cascade (``R/4 <= i < 3R/4`` on every axis, the next finer cascade's cells, which needs ``R % 4 == 0`` when
``L > 1``), descend and recompute ``i = clamp(floor(p), 0, R-1)`` there.

Example:
    >>> aabbs = cascade_aabbs([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], levels=1)
    >>> occs = torch.ones(32**3)                                 # every cell occupied
    >>> bits = pack_bitfield(occs, 0.5, levels=1, backend="torch")
    >>> o, d = torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    >>> s = march_rays(o, d, bits, aabbs, 32, step_size=0.1, backend="torch")
    >>> s.offsets.tolist(), s.t_starts[:2].tolist()
    ([0, 30], [1.5, 1.600000023841858])
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Sequence, Tuple, Union

import numpy as np
import torch

from .. import _native
from ._checks import check_integers

NO_FAR = 1e10  # "no far plane" (nerfacc's default)
DEFAULT_ROI = (-1.5, -1.5, -1.5, 1.5, 1.5, 1.5)
_FIXED_CHUNK = 256  # lattice steps per block in the fixed-step reference
_MAX_CONE_STEPS = 10_000_000  # guard on the cone reference's sequential loop

Resolution = Union[int, Sequence[int]]
AabbsLike = Union[torch.Tensor, Sequence[float], Sequence[Sequence[float]]]
Plane = Union[float, torch.Tensor]


class RaySamples(NamedTuple):
    """Packed samples of ``N`` rays, ``S`` samples in all, sorted by ray then by ``t``.

    Attributes:
        ray_indices: (S,) int64, the ray of each sample.
        t_starts: (S,) float32, where each sample's interval starts along its ray.
        t_ends: (S,) float32, where it ends.
        offsets: (N + 1,) int64; ray ``i``'s samples are ``offsets[i]:offsets[i+1]``.
    """

    ray_indices: torch.Tensor
    t_starts: torch.Tensor
    t_ends: torch.Tensor
    offsets: torch.Tensor

    @property
    def counts(self) -> torch.Tensor:
        """(N,) int64 samples per ray."""
        return self.offsets[1:] - self.offsets[:-1]


# ----------------------------------------------------------------------------------------------------------
# Grid layout helpers


def grid_resolution(resolution: Resolution) -> tuple[int, int, int]:
    """``(R0, R1, R2)`` from an int or three ints."""
    if isinstance(resolution, int):
        res = (resolution,) * 3
    else:
        res = tuple(int(r) for r in resolution)
    if len(res) != 3 or min(res) < 1:
        raise ValueError(f"resolution must be a positive int or three positive ints, got {resolution!r}")
    return res  # type: ignore[return-value]


def cells_per_level(resolution: Resolution) -> int:
    r = grid_resolution(resolution)
    return r[0] * r[1] * r[2]


def bitfield_bytes(resolution: Resolution) -> int:
    """Bytes per level of the bitfield: ``ceil(C / 8)``."""
    return (cells_per_level(resolution) + 7) // 8


def cascade_aabbs(roi_aabb: Sequence[float] | torch.Tensor, levels: int = 1) -> torch.Tensor:
    """(L, 6) float32 boxes of the cascades: the roi box ``{xmin, ymin, zmin, xmax, ymax, zmax}`` scaled by ``2**l``
    about its centre, computed in float32 exactly as nerfacc's ``_enlarge_aabb``."""
    if not 1 <= levels <= 16:
        raise ValueError(f"levels must be in 1..16, got {levels}")
    roi = torch.as_tensor(roi_aabb, dtype=torch.float32).reshape(-1).cpu()
    if roi.numel() != 6 or not bool((roi[3:] > roi[:3]).all()):
        raise ValueError(f"roi_aabb must be 6 numbers with max > min, got {roi.tolist()}")
    center = (roi[:3] + roi[3:]) / 2
    extent = (roi[3:] - roi[:3]) / 2
    return torch.stack([torch.cat([center - extent * 2**i, center + extent * 2**i]) for i in range(levels)])


def _aabbs_list(aabbs: AabbsLike) -> list[float]:
    flat = torch.as_tensor(aabbs, dtype=torch.float32).reshape(-1)
    if flat.numel() == 0 or flat.numel() % 6:
        raise ValueError(f"aabbs must hold 6 numbers per level, got {flat.numel()}")
    return [float(v) for v in flat.tolist()]


def _check_resolution_for_levels(res: tuple[int, int, int], levels: int) -> None:
    if levels > 1 and any(r % 4 for r in res):
        raise ValueError(f"with {levels} cascades every resolution must be a multiple of 4, got {res}")


def _f32(x: float) -> float:
    """The float32 value nearest to x (what the kernels see; inf beyond float32's range)."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


def cell_points(
    aabb: torch.Tensor,
    indices: torch.Tensor,
    resolution: Resolution,
    jitter: torch.Tensor | None = None,
) -> torch.Tensor:
    """World points of cells ``indices`` (M,) of one cascade with box ``aabb`` (6,): ``lo + (i + u) / R (hi - lo)``
    with ``u = jitter`` (M, 3) in [0, 1) (nerfacc's update points), or the cell centres (``u = 0.5``). -> (M, 3)."""
    r = grid_resolution(resolution)
    i2 = indices % r[2]
    i1 = (indices // r[2]) % r[1]
    i0 = indices // (r[1] * r[2])
    coords = torch.stack([i0, i1, i2], dim=-1).to(torch.float32)
    u = torch.full_like(coords, 0.5) if jitter is None else jitter.to(coords)
    res = torch.tensor(r, dtype=torch.float32, device=indices.device)
    aabb = aabb.to(device=indices.device, dtype=torch.float32)
    return aabb[:3] + (coords + u) / res * (aabb[3:] - aabb[:3])


def visual_hull(
    points: torch.Tensor,
    c2w: torch.Tensor,
    intrinsics: torch.Tensor,
    masks: Sequence[torch.Tensor],
    radius: float = 0.0,
    keep_unseen: bool = True,
) -> torch.Tensor:
    """Which points some view sees on its foreground, or no view sees at all: (M,) bool.

    A point is dropped only when every view that sees it (in front of the camera, inside the image) sees background
    there. That is the union over views of each view's visual hull, the right hull for a scene that changes between
    views (a face whose mouth opens in some frames): rendering any of the views never needs a dropped point (it is
    outside that view, or the view's ray through it shows background). Space carving for the occupancy grid.

    Args:
        points: (M, 3) head-space points (e.g. cell centres).
        c2w: (F, 4, 4) camera-to-head transforms, OpenGL convention (the camera looks down -z, +y up).
        intrinsics: (F, 4) ``[fx, fy, cx, cy]`` in pixels, pixel ``(i, j)`` covering ``[i, i+1) x [j, j+1)``.
        masks: F bool (H, W) foreground masks (sizes may differ between views).
        radius: a point stands for a ball of this radius (e.g. a cell's half diagonal): each mask is dilated by the
            ball's largest projected radius in that view (plus one pixel), so a partly covered cell is kept.
        keep_unseen: whether points no view sees count as kept (False: only points seen on a foreground).
    """
    return visual_hulls([(points, radius)], c2w, intrinsics, masks, keep_unseen)[0]


def visual_hulls(
    groups: Sequence[Tuple[torch.Tensor, float]],
    c2w: torch.Tensor,
    intrinsics: torch.Tensor,
    masks: Sequence[torch.Tensor],
    keep_unseen: bool = True,
) -> List[torch.Tensor]:
    """:func:`visual_hull` of each ``(points (M_g, 3), radius)`` of ``groups`` (e.g. the cells of each cascade, each
    with its own cell size), the same result as one call per group, in one pass over the views: each mask is read
    once (a lazy sequence decodes a mask file each time it is indexed) and its summed-area table built once."""
    device = groups[0][0].device if groups else None
    fg = [torch.zeros(points.shape[0], dtype=torch.bool, device=points.device) for points, _ in groups]
    seen = [torch.zeros_like(f) for f in fg]
    todo = [torch.arange(points.shape[0], device=points.device) for points, _ in groups]  # no foreground shown yet
    for f in range(c2w.shape[0]):
        if all(t.numel() == 0 for t in todo):
            break
        mask = masks[f].to(device=device, dtype=torch.bool)
        h, w = mask.shape
        table = None
        for g, (points, radius) in enumerate(groups):
            if todo[g].numel() == 0:
                continue
            rot, origin = c2w[f, :3, :3].to(points), c2w[f, :3, 3].to(points)
            q = (points.index_select(0, todo[g]) - origin) @ rot  # camera coordinates R^T (p - o)
            depth = -q[:, 2]
            fx, fy, cx, cy = [float(v) for v in intrinsics[f]]
            inv = 1.0 / depth.clamp(min=1e-6)
            u = torch.floor(cx + fx * q[:, 0] * inv)
            v = torch.floor(cy - fy * q[:, 1] * inv)
            inside = (depth > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
            if not bool(inside.any()):
                continue
            uc, vc = u.clamp(0, w - 1).long(), v.clamp(0, h - 1).long()
            if radius > 0:
                # the mask dilated by r pixels, read only where points land: a summed-area table counts the
                # foreground pixels of each point's (2r+1)^2 square (a max-pool dilation of every mask cost 34 s for
                # 1,359 frames)
                r = int(math.ceil(radius * max(fx, fy) / float(depth[inside].min()))) + 1
                if table is None:
                    table = torch.zeros(h + 1, w + 1, dtype=torch.int64, device=mask.device)
                    table[1:, 1:] = mask.long().cumsum(0).cumsum(1)
                y0, y1 = (vc - r).clamp(0, h), (vc + r + 1).clamp(0, h)
                x0, x1 = (uc - r).clamp(0, w), (uc + r + 1).clamp(0, w)
                count = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
                hit = inside & (count > 0)
            else:
                hit = inside & mask.reshape(-1)[vc * w + uc]
            seen[g][todo[g][inside]] = True
            fg[g][todo[g][hit]] = True
            todo[g] = todo[g][~hit]
    return [a | ~b if keep_unseen else a for a, b in zip(fg, seen)]


# ----------------------------------------------------------------------------------------------------------
# Update: EMA and bitfield


def ema_update_reference(occs: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, decay: float) -> torch.Tensor:
    """Pure-PyTorch EMA update: see the module docstring. occs (L*C,), indices (M,) int64, values (M,) -> (L*C,)."""
    visited = torch.zeros_like(occs, dtype=torch.bool).index_fill_(0, indices, True)
    new_max = torch.full_like(occs, -math.inf).scatter_reduce(0, indices, values.to(occs), "amax", include_self=True)
    decay_t = torch.tensor(_f32(decay), dtype=torch.float32, device=occs.device)
    return torch.where(visited & (occs >= 0), torch.maximum(occs * decay_t, new_max), occs)


def ema_update(
    occs: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, decay: float = 0.95, backend: str = "native"
) -> torch.Tensor:
    """EMA update of cell occupancies (returns a new tensor; not differentiable).

    Args:
        occs: (L*C,) float32 occupancies, level-major.
        indices: (M,) int64 cells ``level * C + cell`` visited this round (repeats allowed: their max counts).
        values: (M,) new occupancy-like values (density * step size, as nerfacc / instant-ngp); not NaN.
        decay: EMA decay applied to the visited cells.
        backend: "native" or "torch".
    """
    if occs.dim() != 1 or occs.dtype != torch.float32:
        raise ValueError(f"occs must be a float32 vector, got {occs.dtype} {tuple(occs.shape)}")
    check_integers("indices", indices)
    indices = indices.reshape(-1).to(device=occs.device, dtype=torch.int64)
    values = values.reshape(-1).to(device=occs.device, dtype=torch.float32)
    if indices.numel() != values.numel():
        raise ValueError(f"indices ({indices.numel()}) and values ({values.numel()}) differ in length")
    if backend == "torch":
        return ema_update_reference(occs, indices, values, decay)
    if backend != "native":
        raise ValueError(f"ema_update backend must be 'native' or 'torch', got {backend!r}")
    return _native.ops().occupancy_ema(occs.contiguous(), indices.contiguous(), values.contiguous(), _f32(decay))


def occupancy_threshold(occs: torch.Tensor, occ_threshold: float = 0.01) -> float:
    """``min(mean(occs[occs >= 0]), occ_threshold)`` as a float32 value (NaN when no cell is >= 0: nothing set).
    Computed by torch for every backend, so native and reference bitfields compare the same number."""
    visible = occs[occs >= 0]
    if visible.numel() == 0:
        return math.nan
    return float(torch.clamp(visible.mean(), max=_f32(occ_threshold)).item())


def _check_bitfield_input(occs: torch.Tensor, levels: int) -> None:
    """What :func:`pack_bitfield` and its reference take: ``levels`` >= 1 and a float32 vector of L*C values (shapes
    only: no value of a CUDA tensor is read)."""
    if not levels >= 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if occs.dim() != 1 or occs.dtype != torch.float32 or occs.numel() % levels:
        raise ValueError(f"occs must be a float32 vector of L*C values, got {occs.dtype} {tuple(occs.shape)}")


def pack_bitfield_reference(occs: torch.Tensor, threshold: float, levels: int) -> torch.Tensor:
    """Pure-PyTorch bitfield: occs (L*C,) -> (L, ceil(C/8)) uint8, bit set where ``occs > threshold``."""
    _check_bitfield_input(occs, levels)
    cells = occs.numel() // levels
    bits = (occs > torch.tensor(threshold, dtype=torch.float32, device=occs.device)).view(levels, cells)
    pad = (-cells) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(levels, pad)], dim=1)
    weights = torch.tensor([1 << b for b in range(8)], dtype=torch.int32, device=occs.device)
    return (bits.view(levels, -1, 8).to(torch.int32) * weights).sum(-1).to(torch.uint8)


def pack_bitfield(occs: torch.Tensor, threshold: float, levels: int, backend: str = "native") -> torch.Tensor:
    """Bitfield (L, ceil(C/8)) uint8 of ``occs > threshold`` for occs (L*C,) float32 (level-major)."""
    _check_bitfield_input(occs, levels)
    threshold = _f32(threshold)
    if backend == "torch":
        return pack_bitfield_reference(occs, threshold, levels)
    if backend != "native":
        raise ValueError(f"pack_bitfield backend must be 'native' or 'torch', got {backend!r}")
    return _native.ops().occupancy_bitfield(occs.contiguous(), threshold, levels)


def unpack_bitfield(bitfield: torch.Tensor, resolution: Resolution) -> torch.Tensor:
    """(L, ceil(C/8)) uint8 -> (L, R0, R1, R2) bool (nerfacc's ``binaries`` layout)."""
    r = grid_resolution(resolution)
    if bitfield.dtype != torch.uint8 or bitfield.dim() != 2 or bitfield.shape[1] != bitfield_bytes(r):
        raise ValueError(f"bitfield must be uint8 of shape (L, {bitfield_bytes(r)}) for resolution {r}, got "
                         f"{bitfield.dtype} {tuple(bitfield.shape)}")
    shifts = torch.arange(8, device=bitfield.device, dtype=torch.uint8)
    bits = ((bitfield[..., None] >> shifts) & 1).bool().reshape(bitfield.shape[0], -1)
    return bits[:, : r[0] * r[1] * r[2]].reshape(bitfield.shape[0], *r)


# ----------------------------------------------------------------------------------------------------------
# Marching: reference


def locate_reference(points: torch.Tensor, aabbs: AabbsLike, resolution: Resolution) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell of each point (P, 3) float32: (level (P,) int64, -1 outside the grid; index (P,) int64 in the level).
    The float32 operations of ``occupancy::locate`` (cuda/include/fastminerf/occupancy.h), one by one."""
    r = grid_resolution(resolution)
    boxes = torch.tensor(_aabbs_list(aabbs), dtype=torch.float32, device=points.device).view(-1, 6)
    levels = boxes.shape[0]
    res = torch.tensor(r, dtype=torch.float32, device=points.device)
    lo = boxes[:, :3]
    scale = res / (boxes[:, 3:] - boxes[:, :3])  # (L, 3), float32 division
    p = (points - lo[-1]) * scale[-1]
    inside = ((p >= 0) & (p < res)).all(dim=1)
    i = torch.where(inside[:, None], p, torch.zeros_like(p)).floor().long()
    level = torch.full_like(inside, levels - 1, dtype=torch.int64)
    res_i = torch.tensor(r, dtype=torch.int64, device=points.device)
    for lvl in range(levels - 2, -1, -1):
        inner = inside & (level == lvl + 1) & ((4 * i >= res_i) & (4 * i < 3 * res_i)).all(dim=1)
        q = (points - lo[lvl]) * scale[lvl]
        q = torch.where(inside[:, None], q, torch.zeros_like(q))
        fine = torch.minimum(torch.maximum(q.floor(), torch.zeros_like(q)), res - 1).long()
        i = torch.where(inner[:, None], fine, i)
        level = torch.where(inner, torch.full_like(level, lvl), level)
    index = (i[:, 0] * r[1] + i[:, 1]) * r[2] + i[:, 2]
    return torch.where(inside, level, torch.full_like(level, -1)), torch.where(inside, index, torch.zeros_like(index))


def _occupied(points: torch.Tensor, binaries: torch.Tensor, aabbs: AabbsLike, resolution: Resolution) -> torch.Tensor:
    level, index = locate_reference(points, aabbs, resolution)
    flat = binaries.reshape(binaries.shape[0], -1)
    return (level >= 0) & flat[level.clamp(min=0), index]


def _reach(origins: torch.Tensor, directions: torch.Tensor, outer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) ray parameters before and after which no point of the outer box lies: t_c -+ radius / |d|, t_c the
    parameter of the ray's closest approach to the centre (|o + t d - centre| >= |d| |t - t_c|, negative t
    included), with the box's circumscribed sphere grown by 1% (far beyond float32 rounding of o + t d)."""
    center = (outer[:3] + outer[3:]) / 2
    radius = float(torch.linalg.norm(outer[3:] - outer[:3]).item()) / 2 * 1.01 + 1e-3
    length = torch.linalg.norm(directions, dim=1)
    closest = ((center - origins) * (directions / length[:, None])).sum(dim=1) / length  # |d|^2 may underflow
    return closest - radius / length, closest + radius / length


def _pack(n_rays: int, ray: torch.Tensor, k: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, cap: int) -> RaySamples:
    order = torch.argsort(ray * (int(k.max().item()) + 1 if k.numel() else 1) + k)
    ray, t0, t1 = ray[order], t0[order], t1[order]
    counts = torch.bincount(ray, minlength=n_rays)
    offsets = torch.zeros(n_rays + 1, dtype=torch.int64, device=ray.device)
    offsets[1:] = torch.cumsum(counts, 0)
    if cap > 0:
        rank = torch.arange(ray.numel(), device=ray.device) - offsets[ray]
        keep = rank < cap
        ray, t0, t1 = ray[keep], t0[keep], t1[keep]
        offsets[1:] = torch.cumsum(counts.clamp(max=cap), 0)
    return RaySamples(ray, t0, t1, offsets)


def march_rays_reference(
    origins: torch.Tensor,
    directions: torch.Tensor,
    bitfield: torch.Tensor,
    aabbs: AabbsLike,
    resolution: Resolution,
    near: Plane = 0.0,
    far: Plane = NO_FAR,
    step_size: float = 5e-3,
    cone_angle: float = 0.0,
    max_step_size: float = NO_FAR,
    max_samples_per_ray: int = 0,
) -> RaySamples:
    """Pure-PyTorch marcher: every lattice sample of every ray is tested (no skipping), all rays together, in
    blocks of steps (fixed step) or step by step (cone). Same arguments and result as :func:`march_rays`."""
    o, d, tn, tf = _rays(origins, directions, near, far)
    res = grid_resolution(resolution)
    boxes = torch.tensor(_aabbs_list(aabbs), dtype=torch.float32, device=o.device).view(-1, 6)
    binaries = unpack_bitfield(bitfield, res)
    step, cone, max_step = _f32(step_size), _f32(cone_angle), _f32(max_step_size)
    step_t = torch.tensor(step, dtype=torch.float32, device=o.device)
    n = o.shape[0]
    alive = torch.linalg.norm(d, dim=1) > 0
    enter, leave = _reach(o, d, boxes[-1])
    stop = torch.minimum(tf, leave)  # no sample past this lies in the grid before `far`
    rays, ks, t0s, t1s = [], [], [], []

    def emit(t0: torch.Tensor, t1: torch.Tensor, k: torch.Tensor, ray: torch.Tensor, valid: torch.Tensor) -> None:
        mid = (t0 + t1) * 0.5
        keep = valid & (t1 > t0) & (mid < tf[ray]) & (mid >= enter[ray])  # samples before `enter` are outside
        ray, k, t0, t1, mid = ray[keep], k[keep], t0[keep], t1[keep], mid[keep]
        x = o[ray] + mid[:, None] * d[ray]
        keep = _occupied(x, binaries, boxes, res)
        rays.append(ray[keep]), ks.append(k[keep]), t0s.append(t0[keep]), t1s.append(t1[keep])

    if cone == 0.0:
        # Test k in [first, last): before `first` every midpoint is before `enter`, after `last` past `stop`.
        first = torch.floor((enter - tn) / step).clamp(min=0).nan_to_num(0) - 1
        last = torch.ceil((stop - tn) / step).clamp(min=0).nan_to_num(0) + 2
        first = first.clamp(min=0).long()
        last = torch.where(alive, last, torch.zeros_like(last)).long().clamp(min=first)
        total = int((last - first).max().item()) if n else 0
        for j0 in range(0, total, _FIXED_CHUNK):
            j = torch.arange(j0, min(j0 + _FIXED_CHUNK, total), device=o.device)
            ray = torch.arange(n, device=o.device)[:, None].expand(n, j.numel()).reshape(-1)
            kk = first[ray] + j[None, :].expand(n, j.numel()).reshape(-1)
            t0 = tn[ray] + kk.to(torch.float32) * step_t
            t1 = tn[ray] + (kk + 1).to(torch.float32) * step_t
            emit(t0, t1, kk, ray, kk < last[ray])
    else:
        cone_t = torch.tensor(cone, dtype=torch.float32, device=o.device)
        t = tn.clone()
        alive &= tn <= tf
        ray = torch.arange(n, device=o.device)
        for k in range(_MAX_CONE_STEPS):
            t1 = t + torch.clamp(t * cone_t, min=step, max=max_step)
            alive &= t1 > t  # the recurrence cannot advance: the walk ends
            alive &= (t + t1) * 0.5 < stop
            if not bool(alive.any()):
                break
            emit(t[alive], t1[alive], torch.full_like(ray[alive], k), ray[alive], torch.ones_like(ray[alive], dtype=torch.bool))
            t = t1
    cat = lambda xs, dtype: torch.cat(xs) if xs else torch.zeros(0, dtype=dtype, device=o.device)  # noqa: E731
    return _pack(n, cat(rays, torch.int64), cat(ks, torch.int64), cat(t0s, torch.float32), cat(t1s, torch.float32),
                 max_samples_per_ray)


# ----------------------------------------------------------------------------------------------------------
# Marching: public function


def _rays(origins: torch.Tensor, directions: torch.Tensor, near: Plane, far: Plane):
    if origins.dim() != 2 or origins.shape[1] != 3 or directions.shape != origins.shape:
        raise ValueError(f"origins and directions must have shape (N, 3), got {tuple(origins.shape)} and "
                         f"{tuple(directions.shape)}")
    n, dev = origins.shape[0], origins.device
    o = origins.to(torch.float32).contiguous()
    d = directions.to(device=dev, dtype=torch.float32).contiguous()
    tn, tf = (_plane(name, value, n, dev) for name, value in (("near", near), ("far", far)))
    return o, d, tn, tf


def _plane(name: str, value: Plane, n: int, device: torch.device) -> torch.Tensor:
    """A near or far plane (a float, or one value per ray) as (N,) float32."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, n)):
        raise ValueError(f"{name} must be a float or one value per ray ({n},), got {tuple(t.shape)}")
    return t.expand(n).contiguous()


def march_rays(
    origins: torch.Tensor,
    directions: torch.Tensor,
    bitfield: torch.Tensor,
    aabbs: AabbsLike,
    resolution: Resolution,
    near: Plane = 0.0,
    far: Plane = NO_FAR,
    step_size: float = 5e-3,
    cone_angle: float = 0.0,
    max_step_size: float = NO_FAR,
    max_samples_per_ray: int = 0,
    backend: str = "native",
) -> RaySamples:
    """March rays through an occupancy grid and return the samples in occupied cells (packed, sorted by ray then t).

    Not differentiable (sample positions are discrete choices). The function is stated in the module docstring.

    Args:
        origins: (N, 3) ray origins.
        directions: (N, 3) unit directions (``t`` is then a distance).
        bitfield: (L, ceil(C/8)) uint8 occupancy bits (``pack_bitfield``).
        aabbs: (L, 6) cascade boxes, finest first (``cascade_aabbs``), as a tensor or numbers.
        resolution: R or (R0, R1, R2) cells per axis of every cascade.
        near, far: float or (N,) per ray: the lattice starts at ``near``; samples need their midpoint ``< far``.
        step_size: the fixed step, and the smallest step with a cone.
        cone_angle: 0 for a fixed step, else the step grows as ``t * cone_angle`` (e.g. 1/256 as instant-ngp).
        max_step_size: upper clamp of the cone step.
        max_samples_per_ray: keep the first this many samples of each ray; <= 0 keeps all.
        backend: "native" (compiled op for the tensors' device) or "torch" (reference).

    Returns:
        :class:`RaySamples` ``(ray_indices (S,), t_starts (S,), t_ends (S,), offsets (N+1,))``.

    Example:
        >>> aabbs = cascade_aabbs([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], levels=2)

        A random tenth of the cells occupied (seeded), two rays:

        >>> occs = torch.rand(2 * 16**3, generator=torch.Generator().manual_seed(2))
        >>> bits = pack_bitfield(occs, 0.9, levels=2, backend="torch")
        >>> rays_o = torch.tensor([[0.0, 0.0, -3.0], [3.0, 3.0, 3.0]])
        >>> rays_d = torch.nn.functional.normalize(-rays_o, dim=1)
        >>> s = march_rays(rays_o, rays_d, bits, aabbs, 16, near=0.0, step_size=0.01, backend="torch")
        >>> s.offsets.tolist()  # ray r's samples are offsets[r]:offsets[r + 1]
        [0, 49, 71]
        >>> t_mid = (s.t_starts + s.t_ends) / 2
        >>> points = rays_o[s.ray_indices] + t_mid[:, None] * rays_d[s.ray_indices]  # (S, 3) to evaluate
        >>> tuple(points.shape)
        (71, 3)
    """
    res = grid_resolution(resolution)
    boxes = _aabbs_list(aabbs)
    levels = len(boxes) // 6
    _check_resolution_for_levels(res, levels)
    if bitfield.dtype != torch.uint8 or tuple(bitfield.shape) != (levels, bitfield_bytes(res)):
        raise ValueError(f"bitfield must be uint8 of shape ({levels}, {bitfield_bytes(res)}), got {bitfield.dtype} "
                         f"{tuple(bitfield.shape)}")
    step = _f32(step_size)  # the marcher's float32 values, as both backends walk with them
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"step_size must be a positive finite float32 number, got {step_size}")
    if not (_f32(cone_angle) >= 0 and math.isfinite(_f32(cone_angle))):
        raise ValueError(f"cone_angle must be a finite number >= 0, got {cone_angle}")
    if not _f32(max_step_size) >= step:
        raise ValueError(f"max_step_size must be >= step_size ({step_size}), got {max_step_size}")
    if backend == "torch":
        return march_rays_reference(origins, directions, bitfield, boxes, res, near, far, step_size, cone_angle,
                                    max_step_size, max_samples_per_ray)
    if backend != "native":
        raise ValueError(f"march_rays backend must be 'native' or 'torch', got {backend!r}")
    o, d, tn, tf = _rays(origins, directions, near, far)
    out = _native.ops().march_rays(o, d, tn, tf, bitfield.to(o.device).contiguous(), boxes, list(res), _f32(step_size),
                                   _f32(cone_angle), _f32(max_step_size), int(max_samples_per_ray))
    return RaySamples(*out)
