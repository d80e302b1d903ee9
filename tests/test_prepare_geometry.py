"""`fastminerf prepare`'s geometry and statistics against independent computations on exact synthetic data: a face
seen by known cameras built here (not with the code under test), pose smoothing at the ends of a clip and beside
dropped frames and across shots, the similarity alignment, the expression basis of motionless frames, its sign
convention and the coefficients it reads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

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
