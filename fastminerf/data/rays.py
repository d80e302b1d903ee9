"""Rays from the layout's cameras, and batches of training rays drawn across identities and frames.

Conventions (``DATASET.md``): pixel ``(i, j)`` is (column, row) and its ray passes through the pixel centre
``(i + 0.5, j + 0.5)``. Cameras are OpenGL/Blender: the camera looks down its -z axis, +y is up, +x right, so a
pixel's direction in camera space is ``((i + 0.5 - cx) / fx, -(j + 0.5 - cy) / fy, -1)``; ``transform_matrix``
(c2w) takes it to head space.

Dimension letters: N rays, B frames, E expression size.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..config import SamplerConfig
from .dataset import MultiIdentityDataset
from .layout import EYE_LANDMARKS, FACE_MESH_SIZES, LIP_LANDMARKS

__all__ = ["EYE_MARGIN", "MOUTH_MARGIN", "RayBatch", "RaySampler", "box_pixels", "camera_project", "camera_rays",
           "check_error_resolution",
           "eye_box", "eye_boxes", "frame_rays", "landmark_rays", "lip_box", "mouth_boxes", "pixel_uv", "ray_aabb"]

TensorLike = Union[torch.Tensor, np.ndarray, list, tuple]

_PARALLEL_EPS = 1e-12
"""Magnitude that replaces exact zeros of a direction component in the slab test, so that 0 * inf never
produces NaN; any value far below 1/(scene size) gives the same intersection."""


def camera_rays(
    c2w: TensorLike,
    intrinsics: TensorLike,
    width: int,
    height: int,
    pixels: Optional[TensorLike] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Origins and unit directions of pixel-centre rays, in head space.

    .. math::
        d_{cam} = \\left(\\frac{i + 0.5 - c_x}{f_x},\\ -\\frac{j + 0.5 - c_y}{f_y},\\ -1\\right),\\quad
        d = \\frac{R\\, d_{cam}}{\\lVert R\\, d_{cam} \\rVert},\\quad o = t

    with ``R = c2w[:3, :3]`` and ``t = c2w[:3, 3]``.

    Args:
        c2w: camera-to-head transform, ``(4, 4)`` (or ``(3, 4)``) for one camera, or ``(N, 4, 4)`` for one
            camera per ray.
        intrinsics: ``[fx, fy, cx, cy]`` in pixels, ``(4,)`` or ``(N, 4)``.
        width, height: image size in pixels; used to enumerate pixels when ``pixels`` is None.
        pixels: ``(N, 2)`` integer (column, row) per ray; None for every pixel of the image in row-major
            order (ray ``j * width + i`` is pixel ``(i, j)``).

    Returns:
        ``origins (N, 3)`` and ``directions (N, 3)``, unit length, float32 (float64 when ``c2w`` is a float64
        tensor).

    Example:
        >>> o, d = camera_rays(torch.eye(4), [2.0, 2.0, 1.0, 1.0], 2, 2)
        >>> d[0]  # pixel (0, 0): ((0.5 - 1) / 2, -(0.5 - 1) / 2, -1), normalised
        tensor([-0.2357,  0.2357, -0.9428])
    """
    c2w_t = torch.as_tensor(c2w)
    dtype = c2w_t.dtype if c2w_t.dtype in (torch.float32, torch.float64) else torch.float32
    c2w_t = c2w_t.to(dtype)
    k = torch.as_tensor(intrinsics, dtype=dtype, device=c2w_t.device)
    if c2w_t.shape[-2:] not in ((4, 4), (3, 4)):
        raise ValueError(f"c2w must be (4, 4), (3, 4) or (N, 4, 4), got {tuple(c2w_t.shape)}")
    if k.shape[-1] != 4:
        raise ValueError(f"intrinsics must be (4,) or (N, 4) [fx, fy, cx, cy], got {tuple(k.shape)}")
    if pixels is None:
        rows, cols = torch.meshgrid(
            torch.arange(height, device=c2w_t.device), torch.arange(width, device=c2w_t.device), indexing="ij"
        )
        col = cols.reshape(-1).to(dtype)
        row = rows.reshape(-1).to(dtype)
    else:
        px = torch.as_tensor(pixels, device=c2w_t.device)
        if px.ndim != 2 or px.shape[1] != 2:
            raise ValueError(f"pixels must be (N, 2) (column, row), got {tuple(px.shape)}")
        col = px[:, 0].to(dtype)
        row = px[:, 1].to(dtype)
    fx, fy, cx, cy = k[..., 0], k[..., 1], k[..., 2], k[..., 3]
    x = (col + 0.5 - cx) / fx
    y = -(row + 0.5 - cy) / fy
    z = -torch.ones_like(x)
    rot = c2w_t[..., :3, :3]
    # d = R @ [x, y, z], written out so that one camera (3, 3) and per-ray cameras (N, 3, 3) share the code.
    dirs = x[:, None] * rot[..., :, 0] + y[:, None] * rot[..., :, 1] + z[:, None] * rot[..., :, 2]
    dirs = dirs / torch.linalg.vector_norm(dirs, dim=-1, keepdim=True)
    origins = c2w_t[..., :3, 3].expand(dirs.shape).contiguous()
    return origins, dirs


def camera_project(points: torch.Tensor, c2w: torch.Tensor, intrinsics: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where head-space points land in the image, the inverse of :func:`camera_rays`: the ray through pixel
    ``(i, j)`` meets the points that project to ``(i + 0.5, j + 0.5)``.

    Args:
        points: ``(..., K, 3)`` head-space points.
        c2w: ``(..., 4, 4)`` camera-to-head transforms (OpenGL), broadcast against ``points``' leading dimensions.
        intrinsics: ``[fx, fy, cx, cy]``, ``(4,)`` or ``(..., 4)``.

    Returns:
        ``uv (..., K, 2)`` in pixels (u right, v down) and ``depth (..., K)`` along each camera's optical axis.
    """
    r, t = c2w[..., :3, :3], c2w[..., :3, 3]
    cam = torch.einsum("...ji,...kj->...ki", r, points - t[..., None, :])  # R^T (p - t)
    depth = -cam[..., 2]
    k = intrinsics[..., None, :]
    uv = torch.stack([k[..., 0] * cam[..., 0] / depth + k[..., 2], -k[..., 1] * cam[..., 1] / depth + k[..., 3]], dim=-1)
    return uv, depth


def ray_aabb(origins: torch.Tensor, directions: torch.Tensor, aabb: TensorLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """Distances where rays enter and leave an axis-aligned box (slab method).

    Args:
        origins, directions: ``(N, 3)``.
        aabb: ``[xmin, ymin, zmin, xmax, ymax, zmax]``, ``(6,)`` or ``(N, 6)``.

    Returns:
        ``near (N,)`` and ``far (N,)``, with ``near >= 0`` (a camera inside the box starts at 0). A ray that
        misses the box gets ``near == far``: an empty interval.
    """
    box = torch.as_tensor(aabb, dtype=origins.dtype, device=origins.device)
    lo, hi = box[..., :3], box[..., 3:]
    d = torch.where(directions == 0, torch.full_like(directions, _PARALLEL_EPS), directions)
    inv = 1.0 / d
    t_lo = (lo - origins) * inv
    t_hi = (hi - origins) * inv
    near = torch.minimum(t_lo, t_hi).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t_lo, t_hi).amin(dim=-1)
    far = torch.maximum(far, near)
    return near, far


@dataclass
class RayBatch:
    """A batch of N rays with everything training needs to know about each one.

    All tensors share one device; ``frame`` indexes the split's flat frame table.
    """

    origins: torch.Tensor
    """(N, 3) float32 ray origins in head space."""
    directions: torch.Tensor
    """(N, 3) float32 unit directions in head space."""
    near: torch.Tensor
    """(N,) float32 distance where sampling starts."""
    far: torch.Tensor
    """(N,) float32 distance where sampling stops; ``far <= near`` means the ray misses the head box."""
    identity: torch.Tensor
    """(N,) int64 identity id (index into ``dataset.identities``)."""
    frame: torch.Tensor
    """(N,) int64 flat frame index into the split's frame table."""
    pixel: torch.Tensor
    """(N, 2) int64 (column, row)."""
    uv: torch.Tensor
    """(N, 2) float32 pixel centre in [0, 1]^2: ``((column + 0.5) / W, (row + 0.5) / H)`` (the torso layer's
    image coordinates)."""
    rgb: torch.Tensor
    """(N, 3) float32 target colour in [0, 1] (RGBA frames already composited over the background)."""
    background: torch.Tensor
    """(N, 3) float32 colour of the identity's background image at the pixel, in [0, 1]."""
    expression: torch.Tensor
    """(N, E) float32 expression of the ray's frame."""
    mask: torch.Tensor
    """(N,) float32 foreground mask at the pixel (1 person, 0 background), NaN where the frame has no mask."""

    def __len__(self) -> int:
        return int(self.origins.shape[0])

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "RayBatch":
        """A copy with every tensor on ``device``."""
        return RayBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    @staticmethod
    def cat(batches: Sequence["RayBatch"]) -> "RayBatch":
        """The rays of several batches, one after the other."""
        return RayBatch(**{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(RayBatch)})

    def __getitem__(self, index) -> "RayBatch":
        """Rays selected by a slice, an index tensor or a boolean mask over N."""
        return RayBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def _near_far(table, frames: np.ndarray, origins: torch.Tensor, directions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N,) near and far of rays of given frames: the layout's ``near``/``far`` where it gives them, else the ray's
    stretch inside the frame's ``aabb``."""
    near = torch.from_numpy(table.near[frames])
    far = torch.from_numpy(table.far[frames])
    explicit = table.explicit_near_far[frames]
    if not explicit.all():
        box_near, box_far = ray_aabb(origins, directions, torch.from_numpy(table.aabb[frames]))
        use_box = torch.from_numpy(~explicit)
        near, far = torch.where(use_box, box_near, near), torch.where(use_box, box_far, far)
    return near.contiguous(), far.contiguous()


def _gather_rays(
    dataset: MultiIdentityDataset, split: str, frames: np.ndarray, pixels: np.ndarray
) -> RayBatch:
    """Build the rays of given (frame, pixel) pairs. frames: (N,) flat indices; pixels: (N, 2) (column, row)."""
    table = dataset.table(split)
    frames = np.asarray(frames, dtype=np.int64)
    pixels = np.asarray(pixels, dtype=np.int64)
    n = frames.shape[0]
    cols, rows = pixels[:, 0], pixels[:, 1]
    rgb = np.empty((n, 3), dtype=np.uint8)
    bg = np.empty((n, 3), dtype=np.uint8)
    mask = np.full(n, np.nan, dtype=np.float32)
    order = np.argsort(frames, kind="stable")
    uniq, starts = np.unique(frames[order], return_index=True)
    bounds = np.append(starts, n)
    for f, a, b in zip(uniq.tolist(), bounds[:-1].tolist(), bounds[1:].tolist()):
        sel = order[a:b]
        img = dataset.image(split, f)
        rgb[sel] = img[rows[sel], cols[sel]]
        back = dataset.background(int(table.identity[f]), split)
        bg[sel] = back[rows[sel], cols[sel]]
        if table.mask_paths[f] is not None:
            mask[sel] = dataset.mask(split, f)[rows[sel], cols[sel]]
    c2w = torch.from_numpy(table.c2w[frames])
    intr = torch.from_numpy(table.intrinsics[frames])
    size = torch.from_numpy(np.stack([table.widths[frames], table.heights[frames]], axis=1))  # (N, 2) each ray's frame's
    origins, directions = camera_rays(c2w, intr, 0, 0, torch.from_numpy(pixels))  # the size is unused: pixels given
    near, far = _near_far(table, frames, origins, directions)
    return RayBatch(
        origins=origins,
        directions=directions,
        near=near,
        far=far,
        identity=torch.from_numpy(table.identity[frames]),
        frame=torch.from_numpy(frames),
        pixel=torch.from_numpy(pixels),
        uv=pixel_uv(torch.from_numpy(pixels), size[:, 0], size[:, 1]),
        rgb=torch.from_numpy(rgb).float().div_(255.0),
        background=torch.from_numpy(bg).float().div_(255.0),
        expression=torch.from_numpy(table.expression[frames]),
        mask=torch.from_numpy(mask),
    )


def box_pixels(boxes: TensorLike, height: int, width: int) -> np.ndarray:
    """Boxes ``[y0, y1, x0, x1]`` in fractions of the image (the layout's ``bbox``), ``(4,)`` or ``(B, 4)``, as whole
    pixels: rows ``[y0, y1)``, columns ``[x0, x1)`` (int64, same shape), grown outwards to whole pixels, clipped to
    the image and at least one pixel each way."""
    box = np.asarray(boxes, dtype=np.float64)
    y0 = np.clip(np.floor(box[..., 0] * height), 0, height - 1)
    y1 = np.clip(np.ceil(box[..., 1] * height), y0 + 1, height)
    x0 = np.clip(np.floor(box[..., 2] * width), 0, width - 1)
    x1 = np.clip(np.ceil(box[..., 3] * width), x0 + 1, width)
    return np.stack([y0, y1, x0, x1], axis=-1).astype(np.int64)


MOUTH_MARGIN = 0.25
"""A mouth box is the lips' extent grown by this share of it on each side, so that the lips' outline and the skin
around them count (:func:`lip_box`; eval's ``mouth_psnr`` and the sampler's ``mouth_fraction``)."""

EYE_MARGIN = 0.25
"""An eye box is the lids' extent grown by this share of the eye's width on each side, across and down alike, so that
a shut eye's box is as tall as an open one's less the opening (:func:`eye_box`; eval's ``eye_psnr`` and the sampler's
``eye_fraction``)."""


def _grown_box(pts: np.ndarray, height: int, width: int, grow: np.ndarray) -> np.ndarray:
    """The extent of points ``(..., K, 2)`` (x, y pixels) grown by ``grow`` ``(..., 2)`` pixels each side, as
    ``[y0, y1, x0, x1]`` fractions of the image."""
    lo, hi = pts.min(axis=-2), pts.max(axis=-2)
    size = np.stack(np.broadcast_arrays(np.asarray(width, np.float64), np.asarray(height, np.float64)), axis=-1)
    a, b = (lo - grow) / size, (hi + grow) / size
    return np.stack([a[..., 1], b[..., 1], a[..., 0], b[..., 0]], axis=-1)


def lip_box(lips: TensorLike, height: int, width: int, margin: float = MOUTH_MARGIN) -> np.ndarray:
    """The box around lip points ``(..., K, 2)`` in pixels (x, y), as ``[y0, y1, x0, x1]`` in fractions of the image
    (the layout's ``bbox`` convention; ``(..., 4)`` float64), grown by ``margin`` times the lips' extent on each
    side."""
    pts = np.asarray(lips, dtype=np.float64)
    return _grown_box(pts, height, width, margin * (pts.max(axis=-2) - pts.min(axis=-2)))


def eye_box(lids: TensorLike, height: int, width: int, margin: float = EYE_MARGIN) -> np.ndarray:
    """The box around one eye's lid points ``(..., K, 2)`` in pixels (x, y), as ``[y0, y1, x0, x1]`` fractions of the
    image (``(..., 4)`` float64), grown by ``margin`` times the eye's width (its x extent) on each side, up and down
    too: a shut eye's points are a line, the lids around it are not."""
    pts = np.asarray(lids, dtype=np.float64)
    eye_width = pts[..., 0].max(axis=-1) - pts[..., 0].min(axis=-1)
    return _grown_box(pts, height, width, margin * np.stack([eye_width, eye_width], axis=-1))


def _landmark_boxes(dataset: MultiIdentityDataset, split: str, groups: Sequence[Sequence[int]],
                    box: Callable[[np.ndarray, int, int], np.ndarray]) -> Optional[np.ndarray]:
    """``(F, G, 4)`` boxes ``box(uv, height, width)`` of each landmark group of every frame (``landmarks.npz``
    through the frame's camera), NaN where a group's points are not all visible or its box lies outside the image;
    None without mediapipe's face mesh (:data:`~fastminerf.data.layout.FACE_MESH_SIZES` points)."""
    lms = dataset.landmarks(split)
    if lms is None or lms.points.shape[1] not in FACE_MESH_SIZES:
        return None
    table = dataset.table(split)
    out = []
    for group in groups:
        idx = np.asarray(group, dtype=np.int64)
        uv, _ = camera_project(torch.from_numpy(lms.points[:, idx]).double(), torch.from_numpy(table.c2w).double(),
                               torch.from_numpy(table.intrinsics).double())
        boxes = box(uv.numpy(), table.heights, table.widths)
        boxes[~lms.visible[:, idx].all(axis=1)] = np.nan
        # a group whose box lies wholly outside the picture (a camera that does not fit the landmarks) has no pixel
        # to sample or score; clipped to the image it would become a one-pixel strip along an edge
        boxes[(boxes[:, 0] >= 1) | (boxes[:, 1] <= 0) | (boxes[:, 2] >= 1) | (boxes[:, 3] <= 0)] = np.nan
        out.append(boxes)
    return np.stack(out, axis=1)


def mouth_boxes(dataset: MultiIdentityDataset, split: str, margin: float = MOUTH_MARGIN) -> Optional[np.ndarray]:
    """Each frame's mouth box from its lip landmarks (``landmarks.npz``, projected through the frame's camera) as
    ``(F, 4)`` ``[y0, y1, x0, x1]`` fractions of the image (:func:`lip_box`), NaN rows for frames whose lips are not
    all visible; None when the split has no landmarks or they are not mediapipe's face mesh."""
    boxes = _landmark_boxes(dataset, split, [LIP_LANDMARKS], lambda uv, h, w: lip_box(uv, h, w, margin))
    return None if boxes is None else boxes[:, 0]


def eye_boxes(dataset: MultiIdentityDataset, split: str, margin: float = EYE_MARGIN) -> Optional[np.ndarray]:
    """Each frame's two eye boxes (the person's right eye, then the left; :data:`fastminerf.data.layout.EYE_LANDMARKS`
    through the frame's camera) as ``(F, 2, 4)`` ``[y0, y1, x0, x1]`` fractions of the image (:func:`eye_box`), NaN
    where an eye's lids are not all visible (a head turned away); None without mediapipe's face mesh."""
    return _landmark_boxes(dataset, split, EYE_LANDMARKS, lambda uv, h, w: eye_box(uv, h, w, margin))


def pixel_uv(pixels: torch.Tensor, width: TensorLike, height: TensorLike) -> torch.Tensor:
    """(N, 2) int (column, row) -> (N, 2) float32 pixel centres in [0, 1]^2 (see :attr:`RayBatch.uv`), in images of
    ``width`` x ``height`` (ints, or (N,) each ray's)."""
    size = torch.stack(torch.broadcast_tensors(torch.as_tensor(width, dtype=torch.float32),
                                               torch.as_tensor(height, dtype=torch.float32)), dim=-1)
    return ((pixels.to(torch.float32) + 0.5) / size).contiguous()


def frame_rays(dataset: MultiIdentityDataset, split: str, index: int) -> RayBatch:
    """Every ray of one frame (for rendering and evaluation), in row-major pixel order.

    Ray ``j * W + i`` is pixel ``(i, j)``, so ``batch.rgb.reshape(H, W, 3)`` is the frame.

    Args:
        dataset: the dataset.
        split: split name.
        index: flat frame index in the split.

    Returns:
        A :class:`RayBatch` of N = H * W rays; its ``identity`` holds the dataset's identity ids, which a model's
        ``render_batch`` takes as its own (:func:`fastminerf.render.render_frame` maps them by name).
    """
    table = dataset.table(split)
    if not 0 <= index < len(table):
        raise IndexError(f"frame {index} out of range for split '{split}' with {len(table)} frames")
    w, h = table.size_of(index)
    rows, cols = np.divmod(np.arange(w * h, dtype=np.int64), w)
    pixels = np.stack([cols, rows], axis=1)
    return _gather_rays(dataset, split, np.full(w * h, index, dtype=np.int64), pixels)


def landmark_rays(dataset: MultiIdentityDataset, split: str, frames: TensorLike, count: int,
                  generator: torch.Generator) -> Optional[Tuple[RayBatch, torch.Tensor]]:
    """Rays from the cameras of some frames through their visible face landmarks (``landmarks.npz``), with the
    distance to each landmark along its ray: the targets of the landmark depth prior.

    ``count`` landmarks are drawn uniformly over the visible landmarks of the frames that have any (frames may repeat
    and so weigh more; a landmark may be drawn twice), with ``generator``. The rays' ``rgb`` and ``background`` are
    zeros and their ``mask`` NaN (they carry no colour target); ``pixel`` and ``uv`` are where the landmark
    projects.

    Args:
        dataset: the dataset.
        split: split of ``frames``.
        frames: (M,) flat frame indices of the split.
        count: rays to draw.
        generator: torch generator of the draw (its device is used; the result is on the CPU).

    Returns:
        ``(rays, depth (count,))``, or None when none of the frames has a visible landmark (or ``count`` is 0).
    """
    lms = dataset.landmarks(split)
    if lms is None or count <= 0:
        return None
    frames = np.unique(np.asarray(frames, dtype=np.int64))
    vis = lms.visible[frames]  # (M, K)
    flat = np.flatnonzero(vis.reshape(-1))
    if flat.size == 0:
        return None
    pick = torch.randint(0, flat.size, (count,), generator=generator, device=generator.device).cpu().numpy()
    row, k = np.divmod(flat[pick], vis.shape[1])
    f = frames[row]
    table = dataset.table(split)
    c2w = torch.from_numpy(table.c2w[f]).double()
    target = torch.from_numpy(lms.points[f, k]).double()
    origins = c2w[:, :3, 3]
    ray = target - origins
    depth = ray.norm(dim=-1)
    directions = ray / depth[:, None]
    origins32, directions32 = origins.float().contiguous(), directions.float().contiguous()
    near, far = _near_far(table, f, origins32, directions32)
    uv = camera_project(target[:, None], c2w, torch.from_numpy(table.intrinsics[f]).double())[0][:, 0]
    size = torch.from_numpy(np.stack([table.widths[f], table.heights[f]], axis=1)).double()  # (N, 2)
    pixel = torch.minimum(uv.floor().clamp(min=0.0), size - 1).long()
    n = len(f)
    zeros3 = torch.zeros(n, 3)
    return RayBatch(
        origins=origins32,
        directions=directions32,
        near=near,
        far=far,
        identity=torch.from_numpy(table.identity[f]),
        frame=torch.from_numpy(f),
        pixel=pixel,
        uv=(uv / size).float().clamp(0.0, 1.0).contiguous(),
        rgb=zeros3,
        background=zeros3.clone(),
        expression=torch.from_numpy(table.expression[f]),
        mask=torch.full((n,), float("nan")),
    ), depth.float()


_SAMPLER = SamplerConfig()

POOL_TURNOVER = 1 / 16
"""Share of ``frames_per_batch`` (of ``batch_size`` without it; at least one frame) that a frame pool replaces each
step (``SamplerConfig.pool_frames``): with the ``cpu`` preset's 32 frames a batch, 2 new frames a step to decode."""

POOL_CACHE_SHARE = 0.9
"""Share of the frames the frame cache holds that an automatic pool takes: the rest keeps the frames that just left
the pool from pushing pool frames out of the cache."""

ERROR_MOMENTUM = 0.1
"""Weight of a step's mean error in a cell's moving average (error-map sampling)."""

ERROR_FLOOR = 0.02
"""Every error-map cell keeps this times the map's mean as probability mass, so no cell is starved."""


def check_error_resolution(table, resolution: int, key: str = "error_resolution") -> None:
    """Refuse an error map (:class:`RaySampler`'s ``error_resolution``) finer than a cell per pixel of the largest
    side of ``table``'s frames (or than the default, :class:`~fastminerf.config.SamplerConfig`'s, on smaller
    frames): its further cells hold no pixel, and its maps (identities x R x R, 9 bytes a cell) would take the memory
    of an R x R image each (100000: a MemoryError of hundreds of GiB). ``key`` names the setting in the message."""
    side = int(max(np.max(table.heights), np.max(table.widths))) if len(table) else 0
    most = max(side, _SAMPLER.error_resolution)
    if int(resolution) > most:
        raise ValueError(f"{key}={resolution}: at most {most} cells per side for these frames (a cell per pixel of "
                         f"their largest side, {side} px" + (f", or the default {most}" if most > side else "")
                         + "; a finer map's further cells hold no pixel)")


class RaySampler:
    """Draws batches of training rays across identities and frames, with NeRFace's face-box importance.

    Each batch picks ``frames_per_batch`` distinct frames (uniformly over the split's frames; when
    ``balance_identities``, each slot picks an identity uniformly, then one of its frames, distinct until an identity
    has more slots than frames, whose frames then fill several slots), gives each about
    ``batch_size / frames_per_batch`` rays, and
    draws ``round(face_fraction * rays_of_frame)`` of a frame's rays uniformly inside its face box (``bbox``),
    or uniformly among its mask pixels when it has a mask but no box; the others uniformly over the image.
    A frame with neither draws all its rays uniformly.

    Error-map sampling (``error_fraction > 0``): the first ``round(error_fraction * rays_of_frame)`` rays of each
    frame go where the model was recently wrong. Each identity has an ``error_resolution`` x ``error_resolution``
    map over the image of the mean squared error its training rays had (an exponential moving average per cell,
    fed by :meth:`record_errors` after every step); such a ray picks a cell of its frame's identity with
    probability proportional to the map (cells not seen yet count as the mean of those seen, and every cell keeps
    :data:`ERROR_FLOOR` times the mean so none is starved; a cell that holds no pixel, when ``error_resolution``
    exceeds the image size, is never picked), then a uniform pixel among those that record into it. ``face_fraction`` applies
    to the rest of the frame's rays. :attr:`last_error_rays` marks the rays of the last batch drawn this way.

    Mouth rays (``mouth_fraction > 0``): ``round(mouth_fraction * face_rays)`` of a frame's face rays are drawn
    uniformly in a box around its lips instead (:func:`mouth_boxes`: the lip landmarks of ``landmarks.npz`` through
    the frame's camera); a frame without all its lip landmarks keeps them in its face box. The uniform rays are left
    as they were. :attr:`last_mouth_rays` marks them.

    Eye rays (``eye_fraction > 0``): likewise ``round(eye_fraction * face_rays)`` of a frame's face rays (after its
    mouth rays) go to the boxes around its eyes (:func:`eye_boxes`), alternately the right and the left; an eye
    whose lids are not all visible gives its rays to the other, and a frame with neither keeps them as face rays.
    :attr:`last_eye_rays` marks them.

    The sampler owns a NumPy generator seeded with ``seed``: two samplers with the same arguments produce
    the same batches; :meth:`state_dict` / :meth:`load_state_dict` resume the sequence. The keywords after
    ``split`` are the fields of :class:`fastminerf.config.SamplerConfig` (same meaning, same defaults).

    Example:
        Batches of 64 rays from a tiny procedural dataset (2 identities, 16 px) in a temporary folder:

        >>> import tempfile
        >>> from fastminerf.data.dataset import load_dataset
        >>> from fastminerf.data.synth import generate
        >>> root = tempfile.TemporaryDirectory()
        >>> _ = generate(root.name, n_identities=2, n_frames=6, size=16, seed=0)
        >>> sampler = RaySampler(load_dataset(root.name, splits="train"), "train", batch_size=64, seed=0)
        >>> batch = sampler.sample()
        >>> type(batch).__name__, tuple(batch.origins.shape), tuple(batch.rgb.shape), batch.identity.unique().tolist()
        ('RayBatch', (64, 3), (64, 3), [0, 1])
        >>> root.cleanup()
    """

    def __init__(
        self,
        dataset: MultiIdentityDataset,
        split: str,
        batch_size: int = _SAMPLER.batch_size,
        seed: int = _SAMPLER.seed,
        face_fraction: float = _SAMPLER.face_fraction,
        frames_per_batch: Optional[int] = _SAMPLER.frames_per_batch,
        balance_identities: bool = _SAMPLER.balance_identities,
        error_fraction: float = _SAMPLER.error_fraction,
        error_resolution: int = _SAMPLER.error_resolution,
        mouth_fraction: float = _SAMPLER.mouth_fraction,
        eye_fraction: float = _SAMPLER.eye_fraction,
        pool_frames: Optional[int] = _SAMPLER.pool_frames,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= face_fraction <= 1.0:
            raise ValueError(f"face_fraction must be in [0, 1], got {face_fraction}")
        if not 0.0 <= error_fraction <= 1.0:
            raise ValueError(f"error_fraction must be in [0, 1], got {error_fraction}")
        if not 0.0 <= mouth_fraction <= 1.0:
            raise ValueError(f"mouth_fraction must be in [0, 1], got {mouth_fraction}")
        if not (0.0 <= eye_fraction <= 1.0 and mouth_fraction + eye_fraction <= 1.0):
            raise ValueError(f"eye_fraction must be in [0, 1 - mouth_fraction], got {eye_fraction} "
                             f"(mouth_fraction {mouth_fraction})")
        if error_resolution < 1:
            raise ValueError(f"error_resolution must be >= 1, got {error_resolution}")
        if frames_per_batch is not None and frames_per_batch < 1:
            raise ValueError(f"frames_per_batch must be >= 1 or None, got {frames_per_batch}")
        if pool_frames is not None and pool_frames < 0:
            raise ValueError(f"pool_frames must be >= 0 or None, got {pool_frames}")
        self.dataset = dataset
        self.split = split
        self.table = dataset.table(split)
        check_error_resolution(self.table, error_resolution)  # before its maps are allocated
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.face_fraction = float(face_fraction)
        self.frames_per_batch = frames_per_batch
        self.balance_identities = bool(balance_identities)
        self.error_fraction = float(error_fraction)
        self.error_resolution = int(error_resolution)
        self.mouth_fraction = float(mouth_fraction)
        self.eye_fraction = float(eye_fraction)
        r = self.error_resolution
        self.error_map = np.full((len(dataset.identities), r, r), np.nan)
        """(I, R, R) float64 moving average of each identity's squared error per image cell; NaN: not seen yet."""
        self.last_error_rays = np.zeros(0, dtype=bool)
        """(N,) bool: the rays of the last batch drawn from the error map."""
        self.last_mouth_rays = np.zeros(0, dtype=bool)
        """(N,) bool: the rays of the last batch drawn in their frame's mouth box."""
        self.last_eye_rays = np.zeros(0, dtype=bool)
        """(N,) bool: the rays of the last batch drawn in one of their frame's eye boxes."""
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        b = len(self.table)
        all_frames = np.arange(b, dtype=np.int64)
        self._frame_p: Optional[np.ndarray] = self._balanced_p(all_frames) if self.balance_identities else None
        self._identity_frames = self._by_identity(all_frames) if self.balance_identities else {}
        if pool_frames is None:  # automatic: a pool only where the split does not fit the frame cache
            held = dataset.frames_held(split)
            pool_frames = 0 if held is None or held >= b else int(POOL_CACHE_SHARE * held)
        self.pool_frames = int(pool_frames) if 0 < int(pool_frames) < b else 0
        """Frames of the pool that batches draw from (``SamplerConfig.pool_frames``); 0: every frame of the split."""
        self._in_pool = np.ones(b, dtype=bool)
        if self.pool_frames:
            self._in_pool[:] = False
            self._in_pool[self._rng.choice(b, size=self.pool_frames, replace=False, p=self._frame_p)] = True
        # The pixel rows and columns of each identity's error-map cells, at its own image size: a pixel records into
        # cell (row * R // H, col * R // W), so cell c holds rows [ceil(c H / R), ceil((c + 1) H / R)); none when
        # H < R and c falls between two rows. (I, R + 1) each, (I, R, R).
        heights, widths = self.table.heights, self.table.widths
        size = np.zeros((len(dataset.identities), 2), dtype=np.int64)  # (W, H) of each identity's frames in the split
        size[self.table.identity] = np.stack([widths, heights], axis=1)
        cells = np.arange(r + 1, dtype=np.int64)[None, :]
        self._cell_rows = -(-cells * size[:, 1:] // r)
        self._cell_cols = -(-cells * size[:, :1] // r)
        self._cell_has_pixels = (np.diff(self._cell_rows)[:, :, None] > 0) & (np.diff(self._cell_cols)[:, None, :] > 0)
        self._box_px = box_pixels(self.table.bbox, heights, widths)
        self._has_mask = np.array([p is not None for p in self.table.mask_paths], dtype=bool)
        assert self._box_px.shape == (b, 4)
        mouths = mouth_boxes(dataset, split) if self.mouth_fraction > 0 else None
        self._has_mouth = np.zeros(b, dtype=bool) if mouths is None else ~np.isnan(mouths).any(axis=1)
        self._mouth_px = np.zeros((b, 4), dtype=np.int64)
        if self._has_mouth.any():
            self._mouth_px[self._has_mouth] = box_pixels(mouths[self._has_mouth], heights[self._has_mouth],
                                                         widths[self._has_mouth])
        eyes = eye_boxes(dataset, split) if self.eye_fraction > 0 else None
        self._eye_ok = np.zeros((b, 2), dtype=bool) if eyes is None else ~np.isnan(eyes).any(axis=2)
        self._eye_px = np.zeros((b, 2, 4), dtype=np.int64)
        if self._eye_ok.any():
            each = np.nonzero(self._eye_ok)[0]  # the frame of each visible eye
            self._eye_px[self._eye_ok] = box_pixels(eyes[self._eye_ok], heights[each], widths[each])

    def face_box_pixels(self, frame: int) -> Tuple[int, int, int, int]:
        """The pixel rectangle ``(row0, row1, col0, col1)`` (end-exclusive) that face rays of ``frame`` use."""
        return tuple(int(v) for v in self._box_px[frame])  # type: ignore[return-value]

    def mouth_box_pixels(self, frame: int) -> Optional[Tuple[int, int, int, int]]:
        """The pixel rectangle that mouth rays of ``frame`` use, or None when they are face rays (no lip landmarks,
        or ``mouth_fraction`` is 0)."""
        if not self._has_mouth[frame]:
            return None
        return tuple(int(v) for v in self._mouth_px[frame])  # type: ignore[return-value]

    def eye_box_pixels(self, frame: int) -> Tuple[Optional[Tuple[int, int, int, int]], Optional[Tuple[int, int, int, int]]]:
        """The pixel rectangles that eye rays of ``frame`` use, the person's right eye then the left, each None where
        that eye's lids are not all visible or ``eye_fraction`` is 0."""
        return tuple(tuple(int(v) for v in self._eye_px[frame, e]) if self._eye_ok[frame, e] else None
                     for e in range(2))  # type: ignore[return-value]

    def last_targeted_rays(self) -> np.ndarray:
        """(N,) bool: the rays of the last batch drawn where errors are expected (error-map, mouth and eye rays), which a
        training log leaves out of a PSNR meant to follow the whole image."""
        return self.last_error_rays | self.last_mouth_rays | self.last_eye_rays

    def state_dict(self) -> Dict[str, object]:
        """The generator state, the error maps and the frame pool, to resume the same sequence of batches."""
        state = {"bit_generator": self._rng.bit_generator.state, "error_map": self.error_map.copy()}
        if self.pool_frames:
            state["pool"] = self._in_pool.copy()
        return state

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore a state from :meth:`state_dict` (one without ``error_map`` keeps the current maps)."""
        self._rng.bit_generator.state = state["bit_generator"]
        if "error_map" in state:
            error_map = np.asarray(state["error_map"], dtype=np.float64)
            if error_map.shape != self.error_map.shape:
                raise ValueError(f"error map of shape {error_map.shape} does not fit this sampler's {self.error_map.shape}")
            self.error_map = error_map.copy()
        if "pool" in state and self.pool_frames:  # a state of another pool size keeps this sampler's pool
            pool = np.asarray(state["pool"], dtype=bool)
            if pool.shape == self._in_pool.shape and int(pool.sum()) == self.pool_frames:
                self._in_pool = pool.copy()

    def record_errors(self, frame: TensorLike, pixel: TensorLike, error: TensorLike) -> None:
        """Feed the error maps: ``frame`` (N,) flat frame indices of this sampler's split, ``pixel`` (N, 2)
        (column, row) and ``error`` (N,) each ray's squared error (e.g. the mean over RGB). A cell's value moves
        :data:`ERROR_MOMENTUM` of the way to the mean error of this call's rays in it."""
        frame, pixel, error = (np.asarray(torch.as_tensor(v).detach().cpu()) for v in (frame, pixel, error))
        r, h, w = self.error_resolution, self.table.heights[frame], self.table.widths[frame]
        cell_row = np.minimum(pixel[:, 1] * r // h, r - 1)
        cell_col = np.minimum(pixel[:, 0] * r // w, r - 1)
        index = (self.table.identity[frame].astype(np.int64) * r + cell_row) * r + cell_col
        # over the cells the rays hit, not every identity's map (16 MB of temporaries a step for 1,000 people)
        hit, slot = np.unique(index, return_inverse=True)
        total = np.bincount(slot.reshape(-1), weights=error.astype(np.float64), minlength=hit.size)
        count = np.bincount(slot.reshape(-1), minlength=hit.size)
        flat = self.error_map.reshape(-1)
        mean, old = total / count, flat[hit]
        flat[hit] = np.where(np.isnan(old), mean, old + ERROR_MOMENTUM * (mean - old))

    def _error_cells(self, identities: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """(row, column) of one error-map cell per entry of ``identities``, drawn from each identity's map."""
        r = self.error_resolution
        cells = np.empty(identities.shape[0], dtype=np.int64)
        for ident in np.unique(identities).tolist():
            sel = np.flatnonzero(identities == ident)
            m = self.error_map[ident].reshape(-1)
            seen = ~np.isnan(m)
            mean = float(m[seen].mean()) if seen.any() else 1.0
            p = (np.where(seen, m, mean) + ERROR_FLOOR * mean + 1e-12) * self._cell_has_pixels[ident].reshape(-1)
            cells[sel] = rng.choice(m.size, size=sel.size, p=p / p.sum())
        return np.divmod(cells, r)

    def __iter__(self) -> Iterator[RayBatch]:
        while True:
            yield self.sample()

    def _balanced_p(self, frames: np.ndarray) -> np.ndarray:
        """(len(frames),) draw probabilities of ``frames`` that give each identity among them the same share."""
        ident = self.table.identity[frames]
        counts = np.bincount(ident, minlength=len(self.dataset.identities)).astype(np.float64)
        return 1.0 / (counts[ident] * np.count_nonzero(counts))

    def _by_identity(self, frames: np.ndarray) -> Dict[int, np.ndarray]:
        """``frames`` (ascending) grouped by identity, for the identities that have any."""
        ident = self.table.identity[frames]
        return {int(i): frames[ident == i] for i in np.unique(ident)}

    def _turn_pool(self) -> None:
        """Replace :data:`POOL_TURNOVER` of a batch's frames of the pool by frames outside it (drawn as the split's
        frames are: uniformly, or balanced over identities)."""
        rng = self._rng
        inside, outside = np.flatnonzero(self._in_pool), np.flatnonzero(~self._in_pool)
        k = min(max(1, int(round(POOL_TURNOVER * (self.frames_per_batch or self.batch_size)))), outside.size)
        p = None if self._frame_p is None else self._frame_p[outside] / self._frame_p[outside].sum()
        self._in_pool[rng.choice(inside, size=k, replace=False)] = False
        self._in_pool[rng.choice(outside, size=k, replace=False, p=p)] = True

    def _draw_frames(self, count: int, distinct: bool) -> np.ndarray:
        if self.pool_frames:  # from the pool, which turns over a little each batch
            self._turn_pool()
            pool = np.flatnonzero(self._in_pool)
            if distinct and self._frame_p is not None:
                return self._draw_balanced_slots(min(count, pool.size), self._by_identity(pool))
            p = None if self._frame_p is None else self._balanced_p(pool)
            return pool[self._rng.choice(pool.size, size=min(count, pool.size) if distinct else count,
                                         replace=not distinct, p=p)]
        b = len(self.table)
        if distinct:
            count = min(count, b)
            if self._frame_p is not None:
                return self._draw_balanced_slots(count, self._identity_frames)
        return self._rng.choice(b, size=count, replace=not distinct, p=self._frame_p).astype(np.int64)

    def _draw_balanced_slots(self, count: int, identity_frames: Dict[int, np.ndarray]) -> np.ndarray:
        """``count`` frame slots, each of an identity picked uniformly, then distinct frames of that identity in random
        order, again from the start when it has fewer frames than slots.

        Distinct frames drawn with the per-frame weights would not balance: an identity of 2 frames can fill only 2
        of 64 slots, whatever its weight, so it got 2/64 of the rays instead of half (of two identities). Repeating
        its frames gives each of them more rays instead."""
        rng = self._rng
        idents = np.array(sorted(identity_frames), dtype=np.int64)
        slot_ident = idents[rng.integers(0, idents.size, size=count)]
        out = np.empty(count, dtype=np.int64)
        for ident in np.unique(slot_ident).tolist():
            sel = np.flatnonzero(slot_ident == ident)
            out[sel] = np.resize(rng.permutation(identity_frames[ident]), sel.size)
        return out

    def sample(self) -> RayBatch:
        """Draw the next batch of ``batch_size`` rays."""
        n = self.batch_size
        rng = self._rng
        if self.frames_per_batch is None:
            frames = self._draw_frames(n, distinct=False)
            slot_of_ray = np.arange(n)
            chosen = frames
            rank = np.zeros(n, dtype=np.int64)
            per_slot = np.ones(n, dtype=np.int64)
        else:
            chosen = self._draw_frames(min(self.frames_per_batch, n), distinct=True)
            k = chosen.shape[0]
            slot_of_ray = np.arange(n) % k
            frames = chosen[slot_of_ray]
            rank = np.arange(n) // k  # position of the ray among its frame's rays
            per_slot = np.bincount(slot_of_ray, minlength=k)
        error_rays = np.zeros(n, dtype=bool)
        if self.frames_per_batch is None:
            # One ray per draw: each ray is an error ray with probability error_fraction, else a face ray with
            # probability face_fraction.
            if self.error_fraction > 0:
                error_rays = rng.random(n) < self.error_fraction
            face = (rng.random(n) < self.face_fraction) & ~error_rays
            mouth = np.zeros(n, dtype=bool)
            if self.mouth_fraction > 0:
                mouth = (rng.random(n) < self.mouth_fraction) & face
            eye = np.zeros(n, dtype=bool)
            which_eye = np.zeros(n, dtype=np.int64)
            if self.eye_fraction > 0:
                eye = (rng.random(n) < self.eye_fraction / max(1.0 - self.mouth_fraction, 1e-12)) & face & ~mouth
                which_eye = (rng.random(n) < 0.5).astype(np.int64)
        else:
            n_error = np.rint(self.error_fraction * per_slot).astype(np.int64)
            n_face = np.rint(self.face_fraction * (per_slot - n_error)).astype(np.int64)
            n_mouth = np.rint(self.mouth_fraction * n_face).astype(np.int64)
            first = n_error[slot_of_ray]
            error_rays = rank < first
            face = (rank >= first) & (rank < first + n_face[slot_of_ray])
            mouth = face & (rank < first + n_mouth[slot_of_ray])
            n_eye = np.rint(self.eye_fraction * n_face).astype(np.int64)
            eye = face & ~mouth & (rank < first + n_mouth[slot_of_ray] + n_eye[slot_of_ray])
            which_eye = (rank - first - n_mouth[slot_of_ray]) % 2
        # Mouth and eye rays are face rays drawn in the lip and eye boxes; an eye out of sight passes its rays to the
        # other, and in a frame without the landmarks they stay face rays.
        mouth &= self._has_mouth[frames]
        eye_ok = self._eye_ok[frames]
        which_eye = np.where(eye_ok[np.arange(n), which_eye], which_eye, 1 - which_eye)
        eye &= eye_ok.any(axis=1)
        face &= ~(mouth | eye)
        self.last_mouth_rays = mouth
        self.last_eye_rays = eye
        h, w = self.table.heights[frames], self.table.widths[frames]  # (N,) each ray's frame's size
        u = rng.random((n, 2))
        rows = np.minimum((u[:, 0] * h).astype(np.int64), h - 1)
        cols = np.minimum((u[:, 1] * w).astype(np.int64), w - 1)
        if error_rays.any():  # the same uniforms, scaled to the pixels of the drawn cell (those that record into it)
            ident = self.table.identity[frames[error_rays]]
            cell_row, cell_col = self._error_cells(ident, rng)
            for out, lo_hi, cell, uu in ((rows, self._cell_rows, cell_row, u[error_rays, 0]),
                                         (cols, self._cell_cols, cell_col, u[error_rays, 1])):
                lo, hi = lo_hi[ident, cell], lo_hi[ident, cell + 1]
                out[error_rays] = np.minimum(lo + (uu * (hi - lo)).astype(np.int64), hi - 1)
        self.last_error_rays = error_rays
        # Mouth, eye and face rays inside their boxes reuse the same uniforms, scaled to their box.
        has_box = self.table.has_bbox[frames]
        in_box = face & has_box
        for sel, boxes in ((mouth, self._mouth_px[frames]), (eye, self._eye_px[frames, which_eye]), (in_box, self._box_px[frames])):
            if sel.any():
                box = boxes[sel]
                rows[sel] = np.minimum(box[:, 0] + (u[sel, 0] * (box[:, 1] - box[:, 0])).astype(np.int64), box[:, 1] - 1)
                cols[sel] = np.minimum(box[:, 2] + (u[sel, 1] * (box[:, 3] - box[:, 2])).astype(np.int64), box[:, 3] - 1)
        in_mask = face & ~has_box & self._has_mask[frames]
        if in_mask.any():
            for f in np.unique(frames[in_mask]).tolist():
                sel = np.flatnonzero(in_mask & (frames == f))
                mask = self.dataset.mask(self.split, f)
                assert mask is not None
                inside = np.flatnonzero(mask.reshape(-1))
                if inside.size == 0:
                    continue  # an empty mask: keep the uniform draw
                pick = inside[rng.integers(0, inside.size, size=sel.size)]
                rows[sel], cols[sel] = np.divmod(pick, self.table.widths[f])
        return _gather_rays(self.dataset, self.split, frames, np.stack([cols, rows], axis=1))
