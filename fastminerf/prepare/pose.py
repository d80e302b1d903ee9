"""Head pose from face landmarks: the canonical face, rigid alignment, perspective pose, smoothing, cameras.

Coordinates:

- *image coordinates* (what tracking gives, in pixels of the written frames): ``u`` right, ``v`` down, ``w``
  mediapipe's relative depth scaled like ``u`` (larger is farther from the camera). Right-handed, like OpenCV's
  camera frame.
- *head space* (what the layout's ``transform_matrix`` maps to): the canonical face centred at the origin
  (the centroid of its landmarks), ``+x`` towards the person's left (image right for a frontal face), ``+y`` up
  (chin to forehead), ``+z`` out of the face (towards a frontal camera); distances in head units, the canonical
  face being :attr:`PrepareConfig.face_height` units from forehead to chin.

The pipeline: :func:`fit_canonical` finds the mean face shape of all frames (generalised Procrustes analysis:
similarity alignment of every frame to the current mean, iterated) and the landmarks that move least relative to
it (the *stable* ones, used for every rigid alignment); :func:`identity_neutral` gives each person's own neutral
shape in head space (the per-landmark median of their aligned frames); :func:`solve_poses` fits a perspective
camera pose per frame to the 2D landmarks of that neutral shape (OpenCV's Levenberg-Marquardt PnP, started from
the weak-perspective similarity fit); :func:`smooth_poses` smooths them over time; :func:`camera_to_head` turns
them into the layout's OpenGL camera-to-head matrices, and :func:`project` is the exact inverse used by the
checks and the contact sheet.

Dimension letters: B frames, K landmarks (478), S stable landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "CHIN",
    "EYE_OUTER_LEFT",
    "EYE_OUTER_RIGHT",
    "FOREHEAD",
    "Poses",
    "camera_to_head",
    "evenly_spaced",
    "fit_canonical",
    "identity_neutral",
    "image_to_head_axes",
    "intrinsics_matrix",
    "nearest_rotation",
    "project",
    "scene_box",
    "similarity_align",
    "smooth_poses",
    "solve_poses",
]

FOREHEAD = 10
"""Face-mesh landmark at the top of the forehead, on the midline."""
CHIN = 152
"""Face-mesh landmark at the bottom of the chin, on the midline."""
EYE_OUTER_RIGHT = 33
"""Outer corner of the person's right eye (image left in a frontal view)."""
EYE_OUTER_LEFT = 263
"""Outer corner of the person's left eye (image right in a frontal view)."""

GPA_ITERATIONS = 5
"""Rounds of generalised Procrustes analysis; the mean shape changes by less than 1e-4 face heights after 3 on
real clips."""

GPA_FRAMES_PER_VIDEO = 300
"""Frames per video (evenly spread) used to fit the canonical shape; more change nothing measurable."""

HEAD_DEPTH = 0.9
"""Depth of the head behind the face landmarks (back of the skull, hair), in face heights, for the ``aabb``."""

FRONT_CLEARANCE = 0.1
"""Room in front of the canonical face (the nose tip) for the ``aabb``, in face heights."""

SHOULDER_DEPTH = 0.4
"""Depth behind the head origin of the neck and shoulders at the image border, in face heights: the image corners
are taken at this depth (and at the nose's) to bound what a frame shows of the person."""

BODY_LIMITS = ((-1.6, -2.0), (1.6, 1.3))
"""``((xmin, ymin), (xmax, ymax))`` of the ``aabb`` at most, in face heights from the head origin: shoulder width
and the chest below, the hair above. A wide frame shows background beyond them, which needs no density; the
marching step is the box diagonal over ``render_steps``, so a box larger than the person coarsens every ray."""

BOX_MARGIN = 0.05
"""Relative margin added on every side of the ``aabb``."""

_FLIP = np.diag([1.0, -1.0, -1.0])
"""Image axes (u right, v down, w away) to head-like axes (x right, y up, z towards the camera); also OpenCV's
camera frame to OpenGL's."""


def image_to_head_axes(points: np.ndarray) -> np.ndarray:
    """Flip ``v`` and ``w`` of image-coordinate points (..., 3): y up, z towards the camera (a rotation by pi about
    x, so shapes keep their handedness)."""
    return np.asarray(points, dtype=np.float64) @ _FLIP


def similarity_align(src: np.ndarray, dst: np.ndarray, weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least-squares similarity from each shape of ``src`` to ``dst`` (Umeyama's method).

    Finds ``s, R, t`` minimising ``sum_k w_k |s R src_k + t - dst_k|^2`` with R a rotation (det +1).

    Args:
        src: ``(B, K, 3)`` or ``(K, 3)`` shapes.
        dst: ``(K, 3)`` target shape.
        weights: ``(K,)`` non-negative landmark weights (0 ignores a landmark).

    Returns:
        ``scale (B,)``, ``rotation (B, 3, 3)``, ``translation (B, 3)``.
    """
    x = np.asarray(src, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    y = np.asarray(dst, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mx = np.einsum("k,bkd->bd", w, x)
    my = w @ y
    xc = x - mx[:, None]
    yc = y - my
    cov = np.einsum("k,kd,bke->bde", w, yc, xc)  # (B, 3, 3): sum_k w_k yc_k xc_k^T
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones((x.shape[0], 3))
    d[:, 2] = np.sign(np.linalg.det(u @ vt))
    d[d[:, 2] == 0, 2] = 1.0
    rot = u @ (d[:, :, None] * vt)
    var_x = np.einsum("k,bkd->b", w, xc * xc)
    scale = (sig * d).sum(axis=1) / var_x
    trans = my - scale[:, None] * np.einsum("bde,be->bd", rot, mx)
    return scale, rot, trans


def apply_similarity(points: np.ndarray, scale: np.ndarray, rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """``s R p + t`` for shapes ``(B, K, 3)`` with per-shape ``scale (B,)``, ``rot (B, 3, 3)``, ``trans (B, 3)``."""
    return scale[:, None, None] * np.einsum("bde,bke->bkd", rot, points) + trans[:, None]


def _frontal(shape: np.ndarray, face_height: float) -> np.ndarray:
    """``shape`` (K, 3, head-like axes) moved to head space: centred on its centroid, rotated so that x runs from
    the right eye's outer corner to the left one's and y from chin to forehead, scaled to ``face_height``."""
    c = shape - shape.mean(axis=0)
    x = c[EYE_OUTER_LEFT] - c[EYE_OUTER_RIGHT]
    x /= np.linalg.norm(x)
    y = c[FOREHEAD] - c[CHIN]
    y -= x * (x @ y)
    y /= np.linalg.norm(y)
    z = np.cross(x, y)
    rot = np.stack([x, y, z])  # rows: the new axes in the old frame
    out = c @ rot.T
    return out * (face_height / np.linalg.norm(out[FOREHEAD] - out[CHIN]))


def evenly_spaced(n: int, count: int) -> np.ndarray:
    """At most ``count`` sorted indices evenly spread over ``range(n)`` (all of them when ``n <= count``)."""
    if n <= count:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))


def fit_canonical(shapes: Sequence[np.ndarray], face_height: float, stable_fraction: float) -> Tuple[np.ndarray, np.ndarray]:
    """The canonical face of several videos and its stable landmarks (generalised Procrustes analysis).

    Each round aligns every frame (similarity, stable landmarks only after the first round) to the current mean,
    averages the aligned frames per video, then the videos with equal weight (a long video does not outweigh a
    short one), and puts the mean in head space (:func:`_frontal`). The stable landmarks are the
    ``stable_fraction`` whose aligned positions vary least within each video.

    Args:
        shapes: per video, ``(B_i, K, 3)`` landmarks in image coordinates (pixels).
        face_height: forehead-to-chin distance of the canonical face, head units.
        stable_fraction: share of landmarks kept as stable.

    Returns:
        ``canonical (K, 3)`` float64 in head space and ``stable (S,)`` sorted landmark indices.
    """
    if not shapes:
        raise ValueError("fit_canonical needs at least one video")
    videos = [image_to_head_axes(s[evenly_spaced(len(s), GPA_FRAMES_PER_VIDEO)]) for s in shapes]
    k = videos[0].shape[1]
    mean = _frontal(np.mean([v.mean(axis=0) for v in videos], axis=0), face_height)
    weights = np.ones(k)
    stable = np.arange(k)
    for _ in range(GPA_ITERATIONS):
        aligned = [apply_similarity(v, *similarity_align(v, mean, weights)) for v in videos]
        mean = _frontal(np.mean([a.mean(axis=0) for a in aligned], axis=0), face_height)
        # Spread of each landmark around its video's mean, pooled over videos with equal weight.
        spread = np.mean([np.sqrt(((a - a.mean(axis=0)) ** 2).sum(axis=2).mean(axis=0)) for a in aligned], axis=0)
        n_stable = max(4, int(round(stable_fraction * k)))
        stable = np.sort(np.argsort(spread)[:n_stable])
        weights = np.zeros(k)
        weights[stable] = 1.0
    return mean, stable


def identity_neutral(shapes: np.ndarray, canonical: np.ndarray, stable: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A person's neutral face in head space and their frames with the pose removed.

    The frames are aligned to the canonical face (similarity on the stable landmarks), the neutral face is the
    per-landmark median of the aligned frames, and the frames are aligned once more, to the neutral face.

    Args:
        shapes: ``(B, K, 3)`` landmarks in image coordinates.
        canonical: ``(K, 3)`` canonical face (head space).
        stable: ``(S,)`` stable landmark indices.

    Returns:
        ``neutral (K, 3)`` and ``aligned (B, K, 3)``, head space.
    """
    w = np.zeros(canonical.shape[0])
    w[stable] = 1.0
    aligned = _align_frames(shapes, canonical, w, np.empty(np.shape(shapes), dtype=np.float64))
    # per block of landmarks: np.median copies what it is given
    neutral = np.concatenate([np.median(aligned[:, k:k + FRAME_CHUNK // 16], axis=0)
                              for k in range(0, aligned.shape[1], FRAME_CHUNK // 16)])
    # The median face, put back on the canonical face's position, orientation and scale.
    neutral = apply_similarity(neutral[None], *similarity_align(neutral, canonical, w))[0]
    return neutral, _align_frames(shapes, neutral, w, aligned)


FRAME_CHUNK = 256
"""Frames aligned (or projected) at a time: the temporaries of a long video's per-frame computations (several
copies of the frames' landmarks each) stay a fixed size, however many frames it has."""


def _align_frames(shapes: np.ndarray, target: np.ndarray, weights: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Image-coordinate ``shapes (B, K, 3)`` aligned to ``target`` (head space, :func:`similarity_align` on
    ``weights``), written into ``out (B, K, 3)`` :data:`FRAME_CHUNK` frames at a time."""
    for s in range(0, len(out), FRAME_CHUNK):
        x = image_to_head_axes(shapes[s:s + FRAME_CHUNK])
        out[s:s + FRAME_CHUNK] = apply_similarity(x, *similarity_align(x, target, weights))
    return out


def intrinsics_matrix(intrinsics: Sequence[float]) -> np.ndarray:
    """The 3x3 pinhole matrix of ``[fx, fy, cx, cy]``."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Poses:
    """Rigid head poses in OpenCV's camera frame: ``X_cam = R X_head + t`` (x right, y down, z forward)."""

    rotation: np.ndarray
    """(B, 3, 3) float64."""
    translation: np.ndarray
    """(B, 3) float64, head units."""

    def __len__(self) -> int:
        return int(self.rotation.shape[0])


def solve_poses(shapes: np.ndarray, neutral: np.ndarray, stable: np.ndarray, intrinsics: Sequence[float]) -> Poses:
    """Per-frame perspective pose of the neutral face that best explains the tracked 2D landmarks.

    Each frame starts from the weak-perspective solution (similarity from the neutral face to the frame's 3D
    landmarks: its scale s in pixels per head unit puts the head at depth ``fx / s``) and is refined by OpenCV's
    iterative PnP (Levenberg-Marquardt on the re-projection error of the stable landmarks, fixed intrinsics).

    Args:
        shapes: ``(B, K, 3)`` landmarks in image coordinates (pixels of the frames the intrinsics describe).
        neutral: ``(K, 3)`` the person's neutral face, head space.
        stable: ``(S,)`` landmarks used.
        intrinsics: ``[fx, fy, cx, cy]``.

    Returns:
        :class:`Poses` of the B frames.
    """
    import cv2

    fx, fy, cx, cy = (float(v) for v in intrinsics)
    kmat = intrinsics_matrix(intrinsics)
    w = np.zeros(neutral.shape[0])
    w[stable] = 1.0
    b = shapes.shape[0]
    # Weak perspective: x_i ~ s R neutral + t in pixels (head-like axes); s pixels per head unit at depth fx / s.
    # (the inverse of each frame's fit onto the neutral face: close to the direct fit, and batched SVDs)
    fits = [similarity_align(image_to_head_axes(shapes[s:s + FRAME_CHUNK]), neutral, w) for s in range(0, b, FRAME_CHUNK)]
    s_inv, r_inv, t_inv = (np.concatenate(part) for part in zip(*fits))
    s_all = 1.0 / s_inv
    r_all = np.transpose(r_inv, (0, 2, 1))
    t_all = -np.einsum("bij,bj->bi", r_all, t_inv) * s_all[:, None]
    rotations = np.empty((b, 3, 3))
    translations = np.empty((b, 3))
    obj = np.ascontiguousarray(neutral[stable], dtype=np.float64)
    for i in range(b):
        origin = _FLIP @ t_all[i]  # image position (u, v, w) of the head origin
        depth = fx / s_all[i]
        t0 = np.array([(origin[0] - cx) * depth / fx, (origin[1] - cy) * depth / fy, depth]).reshape(3, 1)
        rvec0, _ = cv2.Rodrigues(_FLIP @ r_all[i])
        img = np.ascontiguousarray(shapes[i, stable, :2], dtype=np.float64)
        ok, rvec, tvec = cv2.solvePnP(obj, img, kmat, None, rvec0, t0.copy(), True, cv2.SOLVEPNP_ITERATIVE)
        if not ok or not np.all(np.isfinite(tvec)) or tvec[2, 0] <= 0:
            rvec, tvec = rvec0, t0
        rotations[i] = cv2.Rodrigues(rvec)[0]
        translations[i] = tvec.reshape(3)
    return Poses(rotations, translations)


def smooth_poses(poses: Poses, frame_index: np.ndarray, sigma: float, shot: Optional[np.ndarray] = None) -> Poses:
    """Gaussian-weighted local linear smoothing over time of rotations (chordal: the matrices are smoothed, then
    projected back onto rotations) and translations. Weights use the frames' source indices, so frames on either
    side of a gap (dropped frames) count less; the kernel is cut at 3 sigma, and at cuts: a frame's neighbours in
    another ``shot`` do not count (the head jumps there; smoothed across, both sides would be pulled towards a pose
    neither shows).

    Each pose is the value at its own frame of the weighted least-squares line through its neighbours, not their
    weighted mean: the two are the same where the neighbours lie symmetrically (inside a clip), but at the first
    and last frames and beside a gap the mean of one-sided neighbours lags a moving head by about half a frame of
    motion (the last frames are the held-out ones), while the line keeps constant motion exactly. A frame with no
    neighbour within reach is left as it is.

    Args:
        poses: B poses in frame order.
        frame_index: ``(B,)`` increasing source frame index of each pose.
        sigma: standard deviation in frames; 0 returns the poses unchanged.
        shot: ``(B,)`` the shot (a run of frames between two cuts) of each pose; None: one shot.
    """
    if sigma <= 0 or len(poses) < 2:
        return poses
    idx = np.asarray(frame_index, dtype=np.float64)
    shots = np.zeros(len(idx), np.int64) if shot is None else np.asarray(shot)
    b = len(poses)
    reach = int(np.ceil(3 * sigma))
    mom = np.zeros((3, b))  # sum_j w_j d_j^p, d_j the neighbour's offset in frames
    acc_r = np.zeros((2, b, 3, 3))  # sum_j w_j d_j^p R_j, p = 0, 1
    acc_t = np.zeros((2, b, 3))
    for off in range(-reach, reach + 1):
        lo, hi = max(0, -off), min(b, b - off)
        if lo >= hi:
            continue
        gap = idx[lo + off : hi + off] - idx[lo:hi]
        w = np.exp(-0.5 * (gap / sigma) ** 2) * (np.abs(gap) <= 3 * sigma) * (shots[lo + off : hi + off] == shots[lo:hi])
        for p in range(3):
            mom[p, lo:hi] += w * gap**p
        for p in range(2):
            acc_r[p, lo:hi] += (w * gap**p)[:, None, None] * poses.rotation[lo + off : hi + off]
            acc_t[p, lo:hi] += (w * gap**p)[:, None] * poses.translation[lo + off : hi + off]
    # Line a + c d fitted with weights w, at d = 0: a = (S2 A0 - S1 A1) / (S0 S2 - S1^2). S0 S2 - S1^2 is 0 only
    # when every neighbour sits at one offset (the frame alone): then the weighted mean, the frame itself.
    det = mom[0] * mom[2] - mom[1] ** 2
    line = det > 1e-9 * mom[0] * mom[2]
    safe = np.where(line, det, 1.0)
    c0 = np.where(line, mom[2] / safe, 1.0 / mom[0])
    c1 = np.where(line, -mom[1] / safe, 0.0)
    rot = c0[:, None, None] * acc_r[0] + c1[:, None, None] * acc_r[1]
    trans = c0[:, None] * acc_t[0] + c1[:, None] * acc_t[1]
    return Poses(nearest_rotation(rot), trans)


def nearest_rotation(matrices: np.ndarray) -> np.ndarray:
    """The rotation nearest each ``(..., 3, 3)`` matrix in the Frobenius norm (``U V^T`` of its SVD, the last
    column of ``U`` flipped where that would be a reflection): the chordal mean of rotations when given their
    (weighted) average."""
    u, _, vt = np.linalg.svd(np.asarray(matrices, dtype=np.float64))
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, 2] *= d[..., None]
    return u @ vt


def camera_to_head(poses: Poses) -> np.ndarray:
    """The layout's ``transform_matrix`` per frame: ``(B, 4, 4)`` float64 camera-to-head, OpenGL convention.

    With ``X_cv = R X + t`` (OpenCV camera) and ``X_gl = F X_cv`` (``F = diag(1, -1, -1)``), the head-to-camera
    transform is ``[F R | F t]`` and its inverse ``[R^T F | -R^T t]``."""
    rt = np.transpose(poses.rotation, (0, 2, 1))
    out = np.zeros((len(poses), 4, 4))
    out[:, :3, :3] = rt @ _FLIP
    out[:, :3, 3] = -np.einsum("bij,bj->bi", rt, poses.translation)
    out[:, 3, 3] = 1.0
    return out


def project(points: np.ndarray, c2w: np.ndarray, intrinsics: Sequence[float]) -> np.ndarray:
    """Pixel positions ``(..., K, 2)`` (u right, v down; pixel (i, j) spans [i, i+1) x [j, j+1)) of head-space
    points ``(K, 3)`` seen by cameras ``c2w (..., 4, 4)`` (OpenGL, as the layout and the renderer read them)."""
    return _project(points, c2w, intrinsics)[0]


def _project(points, c2w, intrinsics) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`fastminerf.data.rays.camera_project` (the renderer's camera convention) on float64 numpy arrays."""
    import torch

    from ..data.rays import camera_project

    uv, depth = camera_project(*(torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (points, c2w, intrinsics)))
    return uv.numpy(), depth.numpy()


def landmark_visibility(points: np.ndarray, c2w: np.ndarray, intrinsics: Sequence[float], depth_gap: float,
                        radius_factor: float = 0.4) -> np.ndarray:
    """Which landmarks each camera sees: a point is hidden when another projects within ``radius_factor`` times
    the frame's median nearest-neighbour spacing of it (in pixels) and lies more than ``depth_gap`` head units
    nearer the camera (the far side of the nose, the cheek beyond a turned face).

    Args:
        points: ``(B, K, 3)`` head-space landmarks of B frames.
        c2w: ``(B, 4, 4)`` their cameras (OpenGL).
        intrinsics: ``[fx, fy, cx, cy]``.
        depth_gap: head units.
        radius_factor: fraction of the nearest-neighbour spacing under which two projections coincide.

    Returns:
        ``(B, K)`` bool.
    """
    pts, cams = np.asarray(points), np.asarray(c2w)
    out = np.ones(pts.shape[:2], dtype=bool)
    for b in range(pts.shape[0]):
        j = b % FRAME_CHUNK
        if j == 0:  # (B', K, 2), (B', K): each frame's points through its own camera, a chunk of frames at a time
            uv, depth = _project(pts[b:b + FRAME_CHUNK], cams[b:b + FRAME_CHUNK], intrinsics)
        d2 = ((uv[j, :, None] - uv[j, None]) ** 2).sum(-1)
        np.fill_diagonal(d2, np.inf)
        radius = radius_factor * float(np.median(np.sqrt(d2.min(axis=1))))
        nearer = depth[j, None, :] < depth[j, :, None] - depth_gap  # [k, l]: l is nearer than k
        out[b] = ~((d2 < radius * radius) & nearer).any(axis=1)
    return out


def scene_box(c2w: np.ndarray, intrinsics: Sequence[float], size: int, canonical: np.ndarray, face_height: float) -> List[float]:
    """An ``aabb`` holding what the frames show of the person, in head space.

    Depth (z): from :data:`HEAD_DEPTH` face heights behind the canonical face to :data:`FRONT_CLEARANCE` in front
    of it. Across (x, y): the canonical face and, for every frame, the image corners at the nose's depth and at the
    shoulders' (:data:`SHOULDER_DEPTH`), so that hair, neck and shoulders cut by the crop are inside; then a
    :data:`BOX_MARGIN` margin, and no wider than :data:`BODY_LIMITS`.
    """
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    m = np.asarray(c2w, dtype=np.float64)
    r, t = m[:, :3, :3], m[:, :3, 3]
    depth = np.einsum("bj,bj->b", r[:, :, 2], t)  # distance of the head origin along each optical axis
    front = canonical[:, 2].max() + FRONT_CLEARANCE * face_height
    back = -canonical[:, 2].min() + HEAD_DEPTH * face_height
    corners = np.array([[0.0, 0.0], [size, 0.0], [0.0, size], [size, size]])
    rays = np.stack([(corners[:, 0] - cx) / fx, -(corners[:, 1] - cy) / fy, -np.ones(4)], axis=1)  # (4, 3), depth 1
    planes = [depth - front, depth + SHOULDER_DEPTH * face_height]
    pts = np.concatenate([d[:, None, None] * rays[None] for d in planes], axis=1)
    world = np.einsum("bij,bkj->bki", r, pts) + t[:, None]  # (B, 8, 3)
    allp = np.concatenate([world.reshape(-1, 3), canonical])
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    lo[2], hi[2] = -back, front
    pad = BOX_MARGIN * (hi - lo)
    (xmin, ymin), (xmax, ymax) = BODY_LIMITS
    lo = np.maximum(lo - pad, np.array([xmin, ymin, -np.inf]) * face_height)
    hi = np.minimum(hi + pad, np.array([xmax, ymax, np.inf]) * face_height)
    return [float(v) for v in np.concatenate([lo, hi])]
