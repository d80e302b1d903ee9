"""`fastminerf prepare`'s geometry and statistics against independent computations on exact synthetic data: a face
seen by known cameras built here (not with the code under test), pose smoothing at the ends of a clip and beside
dropped frames and across shots, the similarity alignment, the expression basis of motionless frames, its sign
convention and the coefficients it reads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

K_LANDMARKS = 478


def _rot_xyz(a, b, c) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    rel = np.einsum("...ji,...jk->...ik", a, b)  # a^T b
    return np.degrees(np.arccos(np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))


def _synthetic_face(rng) -> np.ndarray:
    """(K, 3) points in head space as the module defines it: centroid at the origin, +x from the right eye's outer
    corner to the left one's, +y from chin to forehead (1.2 apart), +z out of the face."""
    from fastminerf.prepare.pose import CHIN, EYE_OUTER_LEFT, EYE_OUTER_RIGHT, FOREHEAD

    face = rng.normal(size=(K_LANDMARKS, 3)) * np.array([0.3, 0.4, 0.1])
    face[:, 2] += 0.15 * (1 - (face[:, 0] / 0.6) ** 2)  # a face bulges towards +z in its middle
    face[FOREHEAD], face[CHIN] = [0.0, 0.6, 0.1], [0.0, -0.6, 0.1]
    face[EYE_OUTER_RIGHT], face[EYE_OUTER_LEFT] = [-0.3, 0.15, 0.0], [0.3, 0.15, 0.0]
    face -= face.mean(axis=0)
    # the centring moved the four reference points a little: put them back on the axes, keeping the centroid
    shift = np.zeros(3)
    for idx, target in ((FOREHEAD, [0.0, 0.6]), (CHIN, [0.0, -0.6]), (EYE_OUTER_RIGHT, [-0.3, 0.15]), (EYE_OUTER_LEFT, [0.3, 0.15])):
        shift[:2] += face[idx, :2] - target
        face[idx, :2] = target
    others = np.setdiff1d(np.arange(K_LANDMARKS), [FOREHEAD, CHIN, EYE_OUTER_RIGHT, EYE_OUTER_LEFT])
    face[others] += shift / len(others)
    return face


def _look_at(position: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-head matrix of a camera at ``position`` looking at the head origin, head +y up: columns
    x right, y up, z backwards (the camera looks down -z)."""
    back = position / np.linalg.norm(position)
    right = np.cross([0.0, 1.0, 0.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, position
    return m


def test_a_face_seen_by_known_cameras_gives_those_cameras_back():
    """The whole chain (canonical face, neutral, perspective pose, OpenGL matrices) against cameras built here with
    a look-at and a textbook pinhole (u = cx + fx x / -z, v = cy - fy y / -z), and mediapipe-like landmarks: u, v in
    pixels, w the depth relative to the head centre scaled like u, larger farther. A flipped axis anywhere (image
    v, depth sign, OpenCV vs OpenGL, head x) shows as a camera on the wrong side."""
    from fastminerf.prepare.pose import camera_to_head, fit_canonical, identity_neutral, project, solve_poses

    rng = np.random.default_rng(7)
    face = _synthetic_face(rng)
    size = 256
    f = 1.65 * size
    k = [f, f, size / 2, size / 2]
    cams, shapes = [], []
    for i in range(24):
        yaw, pitch = 0.35 * math.sin(i / 4.0), 0.2 * math.cos(i / 5.0)  # camera to the person's left, above, ...
        dist = 4.0 + 0.3 * math.sin(i / 3.0)
        pos = dist * np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
        c2w = _look_at(pos)
        c2w[:3, 3] += c2w[:3, :3] @ np.array([0.05 * math.sin(i), -0.04, 0.0])  # head off the optical axis a little
        cam = (face - c2w[:3, 3]) @ c2w[:3, :3]  # head points in the camera's axes (OpenGL)
        depth = -cam[:, 2]
        u = k[2] + f * cam[:, 0] / depth
        v = k[3] - f * cam[:, 1] / depth
        centre = -((0 - c2w[:3, 3]) @ c2w[:3, 2])
        cams.append(c2w)
        shapes.append(np.stack([u, v, (depth - centre) * f / centre], axis=1))
    cams, shapes = np.stack(cams), np.stack(shapes)
    canonical, stable = fit_canonical([shapes], 1.2, 0.5)
    assert np.abs(canonical - face).max() < 0.1  # perspective bends the mean shape a little
    neutral, _ = identity_neutral(shapes, canonical, stable)
    got = camera_to_head(solve_poses(shapes, neutral, stable, k))
    np.testing.assert_allclose(np.linalg.det(got[:, :3, :3]), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.einsum("bji,bjk->bik", got[:, :3, :3], got[:, :3, :3]),
                               np.broadcast_to(np.eye(3), (len(got), 3, 3)), atol=1e-9)
    assert _angle_deg(got[:, :3, :3], cams[:, :3, :3]).max() < 0.5
    pos_err = np.linalg.norm(got[:, :3, 3] - cams[:, :3, 3], axis=1) / np.linalg.norm(cams[:, :3, 3], axis=1)
    assert pos_err.max() < 0.02
    # the neutral face through the recovered cameras lands on the tracked points
    assert np.median(np.linalg.norm(project(neutral[stable], got, k) - shapes[:, stable, :2], axis=2)) < 1.0


def _moving_poses(frames: np.ndarray):
    """Constant angular velocity about a fixed axis and constant linear velocity, at source frames ``frames``."""
    from fastminerf.prepare.pose import Poses

    base = _rot_xyz(0.1, -0.2, 0.05) @ np.diag([1.0, -1.0, -1.0])
    axis = np.array([0.3, 1.0, 0.2]) / np.linalg.norm([0.3, 1.0, 0.2])
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = []
    for fr in frames:
        a = math.radians(1.5) * fr  # 1.5 degrees per frame: a head turning at 37 degrees/s at 25 fps
        rot.append((np.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * kx @ kx) @ base)
    trans = np.array([[0.004 * fr, -0.002 * fr, 4.0 + 0.01 * fr] for fr in frames])
    return Poses(np.stack(rot), trans)


def test_smoothing_keeps_constant_motion_at_the_ends_of_a_clip_and_beside_dropped_frames():
    """A head turning and moving steadily is left where it is by the smoothing at every frame: the first and last
    ones (the held-out frames are the last of a clip) and those beside a gap of dropped frames included."""
    from fastminerf.prepare.pose import smooth_poses

    frames = np.concatenate([np.arange(0, 20), np.arange(24, 40)])  # frames 20-23 dropped (no face)
    truth = _moving_poses(frames)
    for sigma in (1.0, 2.0):
        out = smooth_poses(truth, frames, sigma)
        err = _angle_deg(out.rotation, truth.rotation)
        assert err.max() < 0.02, (sigma, np.round(err, 3))
        np.testing.assert_allclose(out.translation, truth.translation, atol=1e-9)


def test_smoothing_keeps_a_lone_frame_and_a_pair_between_gaps():
    """A frame whose neighbours are all dropped keeps its pose (no division by zero); two frames between gaps keep
    theirs too (averaged, each would lag towards the other: the one-sided neighbours of a clip's end)."""
    from fastminerf.prepare.pose import Poses, smooth_poses

    frames = np.array([0, 1, 2, 3, 4, 20, 40, 41])
    poses = _moving_poses(frames)
    rng = np.random.default_rng(3)
    noisy = Poses(np.stack([r @ _rot_xyz(*rng.normal(scale=0.02, size=3)) for r in poses.rotation]),
                  poses.translation + rng.normal(scale=0.01, size=poses.translation.shape))
    out = smooth_poses(noisy, frames, 1.0)
    assert np.all(np.isfinite(out.rotation)) and np.all(np.isfinite(out.translation))
    np.testing.assert_allclose(out.rotation[5:], noisy.rotation[5:], atol=1e-9)
    np.testing.assert_allclose(out.translation[5:], noisy.translation[5:], atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(out.rotation), 1.0, atol=1e-9)


def test_an_expression_basis_fitted_on_motionless_frames_reads_later_faces_finitely():
    """A clip in which the face never moves (a still photo as a video) has no deformation to fit: the basis must
    not divide by its zero (or rounding-level) energy, or the coefficients of every identity that later joins the
    stored basis come out NaN or of order 1e12."""
    from fastminerf.prepare.expression import fit_basis

    rng = np.random.default_rng(0)
    for still in (np.zeros((5, K_LANDMARKS, 3)), rng.normal(scale=1e-16, size=(5, K_LANDMARKS, 3))):
        components, scale, explained = fit_basis([still], 3)
        assert math.isfinite(scale) and scale > 0
        assert np.all(np.isfinite(explained)) and np.all(np.isfinite(components))
        later = rng.normal(scale=0.01, size=(4, K_LANDMARKS * 3))  # a real face's deformations, head units
        coeff = later @ components.T / scale
        assert np.all(np.isfinite(coeff)) and np.abs(coeff).max() < 10.0


def test_a_long_videos_per_frame_geometry_holds_its_results_not_copies_of_every_frame():
    """A 2.4-minute 1080p video at 30 fps (4,351 frames) took prepare to 0.74 GB, against 0.48 GB at 10 fps: about
    90 KB more a frame, so a 10-minute 60 fps recording (36,000 frames) needed over 3 GB. The per-frame geometry
    (the alignment to the canonical and neutral faces with its median, the PnP starts, the expression coefficients)
    each made several float64 copies of every frame's 478 landmarks at once (the shared basis' fit kept one of
    every frame of every video). They work through a fixed number of frames at a time: what each holds beyond its
    inputs is its result and a fixed amount (measured with tracemalloc, in copies of the frames' landmarks)."""
    import tracemalloc

    from fastminerf.config import PrepareConfig
    from fastminerf.prepare.pipeline import VideoResult, _fit_basis
    from fastminerf.prepare.pose import identity_neutral, solve_poses

    rng = np.random.default_rng(0)
    face = _synthetic_face(rng)
    b = 2000
    rots = np.stack([_rot_xyz(*rng.normal(0.0, 0.1, 3)) for _ in range(b)])
    # image coordinates (u right, v down, w away), 100 px a head unit, with tracking noise
    shapes = (np.einsum("bij,kj->bki", rots, face) * np.array([100.0, -100.0, -100.0]) + np.array([128.0, 128.0, 0.0])
              + rng.normal(0.0, 0.3, (b, K_LANDMARKS, 3)))
    copy = shapes.nbytes

    def copies(run):
        tracemalloc.start()
        try:
            out = run()
            return out, tracemalloc.get_traced_memory()[1] / copy
        finally:
            tracemalloc.stop()

    basis, held = copies(lambda: _fit_basis([VideoResult("a", Path("a.mp4"), "pending")], {"a": {"lm": shapes}},
                                             PrepareConfig(expression_dim=8)))
    assert held < 3.0, held  # was 4.0
    (neutral, aligned), held = copies(lambda: identity_neutral(shapes, basis.canonical, basis.stable))
    assert held < 2.0, held  # the aligned frames (1) and a fixed amount; was 4.0
    _, held = copies(lambda: solve_poses(shapes, neutral, basis.stable, [211.2, 211.2, 128.0, 128.0]))
    assert held < 1.0, held  # was 3.1
    _, held = copies(lambda: basis.coefficients(aligned, neutral))
    assert held < 0.5, held  # was 1.0


def test_similarity_align_recovers_a_known_similarity_and_never_returns_a_reflection():
    """Umeyama's method by construction: points moved by s = 1.7, a known rotation and t come back as exactly those
    (landmarks of weight 0 moved anywhere change nothing); a mirror image, which no rotation reaches, gives the best
    rotation (det +1), not the reflection u vt that fits it better."""
    from fastminerf.prepare.pose import similarity_align

    rng = np.random.default_rng(5)
    src = rng.normal(size=(40, 3)) * np.array([0.3, 0.4, 0.1]) + np.array([0.2, -0.1, 0.3])  # off the origin
    rot, s, t = _rot_xyz(0.3, -0.5, 0.2), 1.7, np.array([0.3, -0.2, 1.5])
    dst = s * src @ rot.T + t
    weights = rng.uniform(0.5, 2.0, size=40)
    weights[:5] = 0.0
    dst[:5] += rng.normal(size=(5, 3))  # ignored landmarks, moved anywhere
    got_s, got_r, got_t = similarity_align(src, dst, weights)
    assert got_s.shape == (1,) and got_r.shape == (1, 3, 3) and got_t.shape == (1, 3)
    np.testing.assert_allclose(got_s[0], s, rtol=1e-12)
    np.testing.assert_allclose(got_r[0], rot, atol=1e-12)
    np.testing.assert_allclose(got_t[0], t, atol=1e-12)
    mirror = src * np.array([-1.0, 1.0, 1.0])  # x negated: a left-handed copy
    _, r, _ = similarity_align(src, mirror, np.ones(40))
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    np.testing.assert_allclose(r[0] @ r[0].T, np.eye(3), atol=1e-12)


def test_smoothing_does_not_reach_across_a_cut_between_shots():
    """Two shots, each of a head that holds still, with no frame dropped between them: smoothed per shot, every pose
    stays as it is (a line through equal poses is that pose); smoothed across the cut, the frames beside it would be
    pulled towards the other shot's pose."""
    from fastminerf.prepare.pose import Poses, smooth_poses

    a, b = _rot_xyz(0.1, 0.2, 0.0), _rot_xyz(-0.3, 0.4, 0.1)
    rotation = np.stack([a] * 6 + [b] * 6)
    translation = np.array([[0.0, 0.0, 4.0]] * 6 + [[0.5, -0.2, 3.0]] * 6)
    frames = np.arange(12)
    shot = np.array([0] * 6 + [1] * 6)
    out = smooth_poses(Poses(rotation, translation), frames, 2.0, shot=shot)
    np.testing.assert_allclose(out.rotation, rotation, atol=1e-9)
    np.testing.assert_allclose(out.translation, translation, atol=1e-9)


def test_expression_coefficients_are_the_deformation_from_neutral_along_each_component_over_scale():
    """ExpressionBasis.coefficients by hand: with orthonormal components c0, c1 and scale 0.5, the face
    neutral + 0.5 (2 c0 - c1) reads (2, -1), the neutral face itself (0, 0), and deformation() maps (2, -1) back."""
    from fastminerf.prepare.expression import ExpressionBasis

    k = 6
    rng = np.random.default_rng(2)
    c0, c1 = np.zeros(k * 3), np.zeros(k * 3)
    c0[[0, 4]] = [0.6, 0.8]  # unit length, orthogonal to c1
    c1[[7, 10, 16]] = [2 / 3, -2 / 3, 1 / 3]
    basis = ExpressionBasis(canonical=np.zeros((k, 3)), stable=np.arange(k), components=np.stack([c0, c1]), scale=0.5,
                            explained=np.array([0.6, 0.4]), face_height=1.2)
    neutral = rng.normal(size=(k, 3))
    face = neutral + 0.5 * (2 * c0 - c1).reshape(k, 3)
    got = basis.coefficients(np.stack([face, neutral]), neutral)
    np.testing.assert_allclose(got, [[2.0, -1.0], [0.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(basis.deformation(got[:1])[0], face - neutral, atol=1e-12)


def test_an_expression_basis_has_each_components_largest_entry_positive():
    """fit_basis's sign convention: a component and its negation explain the same, so each is turned to have its
    largest entry (in magnitude) positive, whatever sign the SVD returned; a basis refitted gives the same signs."""
    from fastminerf.prepare.expression import fit_basis

    rng = np.random.default_rng(4)
    k = 10
    dirs = np.zeros((3, k * 3))
    dirs[0, [2, 5]] = [-0.9, 0.3]  # largest entry negative
    dirs[1, [8, 11]] = [0.2, -0.7]
    dirs[2, [20, 25]] = [0.8, -0.1]
    amounts = rng.normal(size=(60, 3)) * np.array([3.0, 2.0, 1.0])
    deformations = (amounts @ dirs).reshape(60, k, 3)
    components, _, _ = fit_basis([deformations], 3)
    big = np.argmax(np.abs(components), axis=1)
    assert np.all(components[np.arange(3), big] > 0)
    assert big.tolist() == [2, 11, 20]  # the directions put in, largest variance first


# ---------------------------------------------------------------------------------------------------------------
# Hand values that mutation testing of pose.py and expression.py found unchecked.


def test_similarity_align_fits_a_mirror_image_with_the_best_rotation_and_umeyamas_scale():
    """Points at +-3, +-2, +-1 along the axes of a turned frame Q, and twice their mirror image across the plane
    normal to Q's first axis. No rotation reaches a mirror image; the best one is the turn by pi about Q's second
    axis, R = Q diag(-1, 1, -1) Q^T (it gets the two largest extents right and the smallest, 1, wrong:
    a^2 + b^2 - c^2 = 12 against 6 for the turn about the third axis), and Umeyama's scale is 2 (a^2 + b^2 - c^2) /
    (a^2 + b^2 + c^2) = 12/7; the translation takes the source centroid to the target's."""
    from fastminerf.prepare.pose import similarity_align

    q = _rot_xyz(0.4, -0.7, 1.1)
    axes = np.concatenate([np.diag([3.0, 2.0, 1.0]), -np.diag([3.0, 2.0, 1.0])])  # (6, 3), centroid 0
    m, n = np.array([0.5, -0.2, 1.0]), np.array([-1.0, 0.3, 2.0])
    src = axes @ q.T + m
    dst = 2.0 * (axes * np.array([-1.0, 1.0, 1.0])) @ q.T + n
    s, r, t = similarity_align(src, dst, np.ones(6))
    want_r = q @ np.diag([-1.0, 1.0, -1.0]) @ q.T
    np.testing.assert_allclose(s, [12.0 / 7.0], rtol=1e-12)
    np.testing.assert_allclose(r[0], want_r, atol=1e-12)
    np.testing.assert_allclose(t[0], n - 12.0 / 7.0 * want_r @ m, atol=1e-12)


def _skewed_face(rng) -> np.ndarray:
    """(K, 3) a face already in head space but with its midline not at right angles to the eye line: centroid 0,
    outer eye corners on a line along +x, forehead minus chin (0.15, 1.2, 0) in the x-y plane."""
    from fastminerf.prepare.pose import CHIN, EYE_OUTER_LEFT, EYE_OUTER_RIGHT, FOREHEAD

    face = rng.normal(size=(K_LANDMARKS, 3)) * np.array([0.3, 0.4, 0.1])
    face[EYE_OUTER_RIGHT], face[EYE_OUTER_LEFT] = [-0.3, 0.15, 0.0], [0.3, 0.15, 0.0]
    face[FOREHEAD], face[CHIN] = [0.1, 0.6, 0.1], [-0.05, -0.6, 0.1]
    return face - face.mean(axis=0)  # moving every point alike keeps both reference directions


def _seen(face, rot, scale, shift) -> np.ndarray:
    """Image coordinates (u right, v down, w away; pixels) of head-space points under a similarity."""
    return (scale * face @ rot.T + shift) * np.array([1.0, -1.0, -1.0])


def test_the_canonical_face_of_a_face_seen_under_several_similarities_is_that_face():
    """A face that already is in head space (centroid 0, eyes along +x, forehead-chin in the x-y plane with
    +y) and only moved, turned and scaled in the frames is its own canonical face: the centring, the turn (the
    rows of the new axes, applied as ``c @ rot.T``), the midline made square to the eye line before it sets +y, and
    the scale to the face height each matter (a frame turned by 30 degrees and a skewed midline show any of them);
    a stable share of 0 still keeps 4 landmarks to align on."""
    from fastminerf.prepare.pose import fit_canonical

    face = _skewed_face(np.random.default_rng(11))
    height = math.hypot(0.15, 1.2)
    shapes = np.stack([_seen(face, _rot_xyz(0.5 * (-1) ** i, 0.3 + 0.05 * i, 0.2 - 0.1 * i), 90.0 + 7.0 * i,
                             np.array([128.0 + i, 120.0 - 2 * i, 5.0])) for i in range(6)])
    canonical, stable = fit_canonical([shapes], height, 0.5)
    np.testing.assert_allclose(canonical, face, atol=1e-9)
    assert len(stable) == round(0.5 * K_LANDMARKS)
    canonical, stable = fit_canonical([shapes], height, 0.0)  # a similarity needs points: 4 stable ones at least
    np.testing.assert_allclose(canonical, face, atol=1e-9)
    assert len(stable) == 4


def test_the_canonical_face_of_two_videos_weighs_them_alike_and_aligns_on_the_landmarks_that_do_not_move():
    """Two videos of one face (4 and 8 frames, each frame turned and scaled otherwise) in which landmarks 400-477
    jitter by 0.06 head units (in pairs of frames +n and -n, so that each video's mean is exact) and video B also
    holds landmarks 400-439 moved by delta (an expression it keeps); the four that set the head axes are below 400.
    The stable half (239 of 478) is none of the jittering ones, in increasing order; aligned on them alone, every
    frame fits exactly, so relative to landmark 0 the canonical face is the face itself, with delta / 2 on
    landmarks 400-439: each video weighs the same (by frames, B's 8 against A's 4 would give 2/3 delta)."""
    from fastminerf.prepare.pose import fit_canonical

    rng = np.random.default_rng(12)
    face = _skewed_face(rng)
    delta = np.zeros_like(face)
    delta[400:440] = rng.normal(scale=0.05, size=(40, 3))
    videos = []
    for v, pairs in enumerate((2, 4)):
        frames = []
        for i in range(pairs):
            n = np.zeros_like(face)
            n[400:] = rng.normal(scale=0.06, size=(78, 3))
            for sign in (1.0, -1.0):
                j = len(frames)
                frames.append(_seen(face + v * delta + sign * n, _rot_xyz(0.1 * j, -0.2 * v, 0.05), 100.0 + 5.0 * j,
                                    np.array([128.0, 128.0, 0.0])))
        videos.append(np.stack(frames))
    canonical, stable = fit_canonical(videos, math.hypot(0.15, 1.2), 0.5)
    assert len(stable) == 239 and stable.max() < 400 and np.all(np.diff(stable) > 0)
    want = face + 0.5 * delta
    np.testing.assert_allclose(canonical - canonical[0], want - want[0], atol=1e-9)


def test_a_persons_neutral_face_is_the_median_of_their_frames_aligned_on_the_stable_landmarks():
    """A person whose stable landmarks (100 on) are the canonical face's and whose others differ (their own
    shape), seen in 5 frames under different similarities, with the mouth (landmarks 0-49) open in 2 of them: the
    neutral face is their own shape exactly (the median; the mean would keep 2/5 of the open mouth), and the frames
    with the pose removed are that shape plus each frame's expression."""
    from fastminerf.prepare.pose import identity_neutral

    rng = np.random.default_rng(13)
    canonical = _skewed_face(rng)
    stable = np.arange(100, K_LANDMARKS)
    person = canonical.copy()
    person[:100] += rng.normal(scale=0.05, size=(100, 3))
    mouth = np.zeros_like(person)
    mouth[:50, 1] = -0.08
    expression = [mouth * (i in (1, 3)) for i in range(5)]
    shapes = np.stack([_seen(person + expression[i], _rot_xyz(0.2 * i - 0.3, 0.1, -0.05 * i), 80.0 + 10.0 * i,
                             np.array([120.0 + 3 * i, 130.0, 2.0])) for i in range(5)])
    neutral, aligned = identity_neutral(shapes, canonical, stable)
    np.testing.assert_allclose(neutral, person, atol=1e-9)
    np.testing.assert_allclose(aligned, person + np.stack(expression), atol=1e-9)


def test_evenly_spaced_frames_by_hand():
    """The first and the last frame and those between, as evenly as whole frames allow; all of them when few."""
    from fastminerf.prepare.pose import evenly_spaced

    assert evenly_spaced(10, 4).tolist() == [0, 3, 6, 9]
    assert evenly_spaced(3, 5).tolist() == [0, 1, 2]
    assert evenly_spaced(4, 4).tolist() == [0, 1, 2, 3]


def test_nearest_rotation_of_a_stretched_reflection_and_of_a_scaled_rotation():
    """Q1 diag(3, 2, -1) Q2^T is nearest Q1 Q2^T (trace(R^T M) = 3 + 2 + 1 at most, reached there, whereas
    Q1 diag(1, 1, -1) Q2^T, its own U V^T, is a reflection); 2 R is nearest R."""
    from fastminerf.prepare.pose import nearest_rotation

    q1, q2 = _rot_xyz(0.3, -0.6, 0.9), _rot_xyz(-1.2, 0.4, 0.25)
    got = nearest_rotation(np.stack([q1 @ np.diag([3.0, 2.0, -1.0]) @ q2.T, 2.0 * q1]))
    np.testing.assert_allclose(got, np.stack([q1 @ q2.T, q1]), atol=1e-12)


def test_smoothing_weighs_neighbours_by_a_gaussian_of_sigma_cut_at_three_sigma():
    """A translation spike of 1 at frame 10 of 21 (sigma 2, every neighbour present): at the frames whose whole
    reach (6 frames each side) is inside the clip the line through symmetric neighbours is their weighted mean,
    exp(-d^2 / 8) / S at distance d from the spike, S = sum over |j| <= 6 of exp(-j^2 / 8). Then two steady runs on
    either side of 9 dropped frames (a gap of 10 > 3 sigma): nothing reaches across, every pose stays exactly."""
    from fastminerf.prepare.pose import Poses, smooth_poses

    n = 21
    rot = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    trans = np.zeros((n, 3))
    trans[10, 0] = 1.0
    out = smooth_poses(Poses(rot, trans), np.arange(n), 2.0)
    total = sum(math.exp(-j * j / 8.0) for j in range(-6, 7))
    want = [math.exp(-(f - 10) ** 2 / 8.0) / total for f in range(6, 15)]
    np.testing.assert_allclose(out.translation[6:15, 0], want, atol=1e-12)
    np.testing.assert_allclose(out.rotation, rot, atol=1e-12)

    frames = np.concatenate([np.arange(0, 11), np.arange(20, 31)])
    steps = np.zeros((22, 3))
    steps[11:, 0] = 1.0
    out = smooth_poses(Poses(np.broadcast_to(np.eye(3), (22, 3, 3)).copy(), steps), frames, 2.0)
    np.testing.assert_allclose(out.translation, steps, atol=1e-12)


def test_the_scene_box_of_one_camera_by_hand():
    """size 256, fx = fy = 256, principal point (100, 140); a canonical face of four points, x +-0.3, y +-0.6, z
    from -0.1 to 0.2, face height 1.2: front 0.2 + 0.12 = 0.32, back 0.1 + 1.08 = 1.18. A camera 2 units out on +z
    looking at the head origin sees the image corners at (u - 100) / 256 and -(v - 140) / 256 per unit of depth,
    taken at depths 2 - 0.32 = 1.68 and 2 + 0.48 = 2.48: x from -0.390625 * 2.48 to 0.609375 * 2.48, y from
    -0.453125 * 2.48 to 0.546875 * 2.48; 5 % of the extents (2.48, 2.48, 1.5) added each side. The same camera moved
    round to +x (looking along -x) sees x = 2 - depth, from -0.48 to the face's 0.3 and the front's 0.32, y as
    before. At 4 units the body limits (x +-1.92, y up to 1.56) cut the box."""
    from fastminerf.prepare.pose import scene_box

    canonical = np.array([[-0.3, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.6, 0.2], [0.0, -0.6, -0.1]])
    k = [256.0, 256.0, 100.0, 140.0]
    front = np.eye(4)
    front[2, 3] = 2.0
    x0, x1, y0, y1 = -0.390625 * 2.48, 0.609375 * 2.48, -0.453125 * 2.48, 0.546875 * 2.48
    np.testing.assert_allclose(scene_box(front[None], k, 256, canonical, 1.2),
                               [x0 - 0.124, y0 - 0.124, -1.255, x1 + 0.124, y1 + 0.124, 0.395], atol=1e-12)
    side = np.eye(4)
    side[:3, :3] = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # columns: right -z, up, back +x
    side[0, 3] = 2.0
    np.testing.assert_allclose(scene_box(side[None], k, 256, canonical, 1.2),
                               [-0.48 - 0.04, y0 - 0.124, -1.255, 0.32 + 0.04, y1 + 0.124, 0.395], atol=1e-12)
    far = front.copy()
    far[2, 3] = 4.0
    np.testing.assert_allclose(scene_box(far[None], k, 256, canonical, 1.2),
                               [-1.92, -0.453125 * 4.48 - 0.224, -1.255, 1.92, 1.56, 0.395], atol=1e-12)


def test_an_expression_basis_weighs_each_video_alike_by_hand():
    """Video A: 2 frames at +-1 along c0; video B: 4 frames at (+-3, +-2) along (c0, c1). Each video's frames weigh
    1 / its length and the videos alike: the energy is 1 + 9 = 10 along c0 and 4 along c1, so the scale (RMS of
    the first coefficient over the two videos) is sqrt(10 / 2), the explained shares 10/14 and 4/14, and one
    component kept still explains 10/14 of the whole, not all of it."""
    from fastminerf.prepare.expression import fit_basis

    k = 5
    c0, c1 = np.zeros(k * 3), np.zeros(k * 3)
    c0[[1, 6]] = [0.8, 0.6]
    c1[[3, 13]] = [0.6, -0.8]
    a = np.array([[1.0, 0.0], [-1.0, 0.0]])
    b = np.array([[3.0, 2.0], [3.0, -2.0], [-3.0, 2.0], [-3.0, -2.0]])
    videos = [(x @ np.stack([c0, c1])).reshape(len(x), k, 3) for x in (a, b)]
    components, scale, explained = fit_basis(videos, 2)
    np.testing.assert_allclose(components, np.stack([c0, -c1]), atol=1e-12)  # largest entry positive: -0.8 -> 0.8
    assert scale == pytest.approx(math.sqrt(5.0), rel=1e-12)
    np.testing.assert_allclose(explained, [10.0 / 14.0, 4.0 / 14.0], rtol=1e-12)
    _, _, explained = fit_basis(videos, 1)
    np.testing.assert_allclose(explained, [10.0 / 14.0], rtol=1e-12)


def test_an_expression_space_id_changes_with_anything_that_maps_landmarks_to_coefficients():
    """Bases differing only in scale, in the canonical face, in the stable landmarks or in a component are
    different spaces (a driver in one read by a model in another would be wrong by that much); the same contents,
    and the names of the videos fitted on, which map nothing, give the same id."""
    from fastminerf.prepare.expression import ExpressionBasis

    rng = np.random.default_rng(6)
    parts = dict(canonical=rng.normal(size=(6, 3)), stable=np.arange(4), components=np.eye(18)[:2], scale=0.5,
                 explained=np.array([0.6, 0.4]), face_height=1.2)
    base = ExpressionBasis(**parts)
    same = ExpressionBasis(**{**parts, "canonical": parts["canonical"].copy()}, fitted_on=("a",))
    assert same.space_id == base.space_id
    changed = [{"scale": 0.25}, {"canonical": parts["canonical"] + 1e-6}, {"stable": np.arange(1, 5)},
               {"components": np.eye(18)[[0, 2]]}]
    ids = {ExpressionBasis(**{**parts, **c}).space_id for c in changed}
    assert base.space_id not in ids and len(ids) == len(changed)


def test_a_landmark_behind_another_is_hidden_within_0_4_of_the_landmark_spacing_in_pixels():
    """A 10x10 sheet of points 0.1 apart at z = 0 seen from z = 4 with f = 200: 5 pixels apart. A point 0.4 units
    behind the sheet, on the ray through a sheet point moved sideways by 0.03 (1.5 pixels from that point's
    image, under 0.4 x 5 = 2) is hidden; moved by 0.05 (2.5 pixels) it is not. The sheet stays visible."""
    from fastminerf.prepare.pose import landmark_visibility

    g = np.linspace(-0.45, 0.45, 10)
    sheet = np.concatenate([np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2), np.zeros((100, 1))], axis=1)
    cam = np.array([0.0, 0.0, 4.0])
    c2w = np.eye(4)
    c2w[:3, 3] = cam
    k = [200.0, 200.0, 64.0, 64.0]
    for side, hidden in ((0.03, True), (0.05, False)):
        behind = cam + 1.1 * (sheet[37] + np.array([side, 0.0, 0.0]) - cam)
        vis = landmark_visibility(np.concatenate([sheet, behind[None]])[None], c2w[None], k, depth_gap=0.05)
        assert vis[0, :100].all() and vis[0, 100] == (not hidden), (side, vis[0, 100])
