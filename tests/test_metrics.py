"""Metrics against hand-computed values, a direct per-window SSIM, and scikit-image where installed."""

import importlib.util
import math

import numpy as np
import pytest
import torch

from fastminerf.data.layout import EYE_LANDMARKS, EYE_OPENING_LANDMARKS
from fastminerf.metrics import (
    PSNR_MAX_DB,
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_WINDOW,
    LandmarkDistance,
    MetricUnavailable,
    eye_aspect_ratio,
    l1,
    landmark_status,
    lpips,
    lpips_status,
    psnr,
    ssim,
)

EXACT = 1e-12
"""Float64 arithmetic on small images: only round-off separates two evaluations of the same formula."""

SKIMAGE_TOL = 1e-9
"""skimage filters with scipy (reflect padding, then crops the border): the same sums in another order."""

HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None


def _rng_images(seed, shape):
    g = np.random.default_rng(seed)
    return g.random(shape), g.random(shape)


def test_psnr_hand_values():
    a = torch.zeros(4, 5, 3)
    assert psnr(a, torch.full((4, 5, 3), 0.1)).item() == pytest.approx(20.0, abs=1e-6)  # MSE 0.01
    b = torch.zeros(4, 5, 3)
    b[0, 0, 0] = 1.0  # MSE = 1 / 60
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(60.0), abs=EXACT)
    assert psnr(a, a).item() == PSNR_MAX_DB


def test_psnr_batch_is_per_image():
    p, t = _rng_images(0, (3, 8, 9, 3))
    batch = psnr(p, t)
    assert batch.shape == (3,)
    for k in range(3):
        mse = np.mean((p[k] - t[k]) ** 2)
        assert batch[k].item() == pytest.approx(-10 * math.log10(mse), abs=EXACT)


def test_l1_hand_values():
    p = np.zeros((2, 2, 3))
    t = np.zeros((2, 2, 3))
    t[0, 0] = [0.3, 0.6, 0.9]  # sum 1.8 over 12 values
    assert l1(p, t).item() == pytest.approx(0.15, abs=EXACT)
    assert l1(torch.tensor(p), torch.tensor(t)).item() == pytest.approx(0.15, abs=EXACT)


def test_ssim_identical_and_constant_images():
    p, _ = _rng_images(1, (16, 16, 3))
    assert ssim(p, p).item() == pytest.approx(1.0, abs=EXACT)
    # Constant images: variances and covariance vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.2, 0.6
    c1 = SSIM_K1**2
    want = (2 * a * b + c1) / (a * a + b * b + c1)
    got = ssim(np.full((12, 14, 3), a), np.full((12, 14, 3), b)).item()
    assert got == pytest.approx(want, abs=EXACT)


def _ssim_windows(p, t):
    """Wang et al. written out: every valid window position, explicit weighted sums (H, W, C) -> float."""
    r = SSIM_WINDOW // 2
    x = np.arange(SSIM_WINDOW) - r
    g = np.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    h, wd, ch = p.shape
    vals = []
    for c in range(ch):
        for i in range(r, h - r):
            for j in range(r, wd - r):
                a = p[i - r : i + r + 1, j - r : j + r + 1, c]
                b = t[i - r : i + r + 1, j - r : j + r + 1, c]
                ma, mb = (w * a).sum(), (w * b).sum()
                va = (w * (a - ma) ** 2).sum()
                vb = (w * (b - mb) ** 2).sum()
                cov = (w * (a - ma) * (b - mb)).sum()
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_per_window_definition():
    p, t = _rng_images(2, (14, 13, 3))
    t = 0.5 * p + 0.5 * t  # correlated, so that the covariance term matters
    assert ssim(p, t).item() == pytest.approx(_ssim_windows(p, t), abs=1e-10)


def test_ssim_batch_and_float32():
    p, t = _rng_images(3, (2, 20, 24, 3))
    batch = ssim(torch.tensor(p, dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    assert batch.shape == (2,)
    for k in range(2):
        # float32 inputs are converted exactly to float64, so only the input rounding differs.
        want = ssim(p[k].astype(np.float32).astype(np.float64), t[k].astype(np.float32).astype(np.float64))
        assert batch[k].item() == pytest.approx(want.item(), abs=EXACT)


@pytest.mark.skipif(not HAS_SKIMAGE, reason="scikit-image not installed")
@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matches_skimage(seed):
    from skimage.metrics import structural_similarity

    p, t = _rng_images(seed, (33, 40, 3))
    t = np.clip(p + 0.15 * (t - 0.5), 0, 1)  # a noisy copy: SSIM well inside (0, 1)
    want = structural_similarity(
        p, t, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False
    )
    assert 0.2 < want < 0.99
    assert ssim(p, t).item() == pytest.approx(want, abs=SKIMAGE_TOL)


@pytest.mark.skipif(not HAS_SKIMAGE, reason="scikit-image not installed")
def test_psnr_matches_skimage():
    from skimage.metrics import peak_signal_noise_ratio

    p, t = _rng_images(4, (10, 12, 3))
    assert psnr(p, t).item() == pytest.approx(peak_signal_noise_ratio(t, p, data_range=1.0), abs=1e-9)


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="float"):
        l1(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8))


def test_lpips_never_downloads():
    ok, why = lpips_status()
    assert isinstance(why, str) and why
    if not ok:
        with pytest.raises(MetricUnavailable, match="LPIPS unavailable"):
            lpips(np.zeros((16, 16, 3)), np.zeros((16, 16, 3)))
    assert lpips_status("nope")[0] is False


def test_eye_aspect_ratio_is_opening_over_width():
    """A 4-wide eye whose lids are h apart at both inner points has aspect ratio h / 4; a shut eye 0; batches work."""
    marks = np.zeros((2, 478, 3))
    for e, (p1, p2, p3, p4, p5, p6) in enumerate(EYE_OPENING_LANDMARKS):
        x = 10.0 * e
        marks[:, p1, :2], marks[:, p4, :2] = (x, 0.0), (x + 4.0, 0.0)
        for up, down, at in ((p2, p6, x + 1.0), (p3, p5, x + 3.0)):
            marks[0, up, :2], marks[0, down, :2] = (at, 0.5 * (1 + e)), (at, -0.5 * (1 + e))
            marks[1, up, :2] = marks[1, down, :2] = (at, 0.0)
    np.testing.assert_allclose(eye_aspect_ratio(marks), [[0.25, 0.5], [0.0, 0.0]])
    np.testing.assert_allclose(eye_aspect_ratio(torch.from_numpy(marks[0])), [0.25, 0.5])


needs_mediapipe = pytest.mark.skipif(not landmark_status()[0], reason="mediapipe (make install) is not installed")


@needs_mediapipe
def test_lmd_is_the_lip_landmarks_shift_in_pixels(tmp_path, capfd):
    """A procedural head at 128 px (mediapipe finds it): the same image 0, the image moved by s pixels about s
    (mediapipe's own scatter on these heads is about a pixel, so shifts of 4 and 8), no face in a grey image."""
    from fastminerf.data import load_dataset
    from fastminerf.data.synth import generate

    dirs = generate(tmp_path, n_identities=1, n_frames=2, size=128, novel_frames=1, val_fraction=0.0, seed=0)
    img = load_dataset(dirs, splits=("train",)).image("train", 0).astype(np.float32) / 255.0
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_LIPS

    with LandmarkDistance() as lmd:
        assert len(lmd.lips) == 40
        assert set(lmd.lips.tolist()) == {k for pair in FACEMESH_LIPS for k in pair}  # the layout's LIP_LANDMARKS
        assert lmd(img, img) == 0.0
        for s in (4, 8):
            assert lmd(np.roll(img, s, axis=1), img) == pytest.approx(s, abs=1.0)
            assert lmd(torch.from_numpy(np.roll(img, -s, axis=0)), img) == pytest.approx(s, abs=1.0)
        assert lmd(np.full_like(img, 0.5), img) is None
        marks = lmd.landmarks(img)
        y0, y1, x0, x1 = np.array(lmd.mouth_box(marks, 128, 128)) * 128
        lips = marks[lmd.lips]
        assert (lips[:, 0] >= x0).all() and (lips[:, 0] < x1).all() and (lips[:, 1] >= y0).all() and (lips[:, 1] < y1).all()
        assert (y1 - y0) * (x1 - x0) < 128 * 128 / 8  # the mouth, not the face
        # the eyes: the layout's lid points are mediapipe's eye outlines, each box holds its eye, the face's eyes are open
        from mediapipe.python.solutions.face_mesh_connections import FACEMESH_LEFT_EYE, FACEMESH_RIGHT_EYE

        assert [set(e) for e in EYE_LANDMARKS] == [{k for pair in c for k in pair} for c in (FACEMESH_RIGHT_EYE, FACEMESH_LEFT_EYE)]
        for (y0, y1, x0, x1), lids in zip(lmd.eye_boxes(marks, 128, 128) * 128, EYE_LANDMARKS):
            lid = marks[np.asarray(lids)]
            assert (lid[:, 0] > x0).all() and (lid[:, 0] < x1).all() and (lid[:, 1] > y0).all() and (lid[:, 1] < y1).all()
            assert (y1 - y0) * (x1 - x0) < 128 * 128 / 30
        assert (lmd.eye_boxes(marks, 128, 128)[0, 2] < lmd.eye_boxes(marks, 128, 128)[1, 2])  # the right eye on the image's left
        right, left = eye_aspect_ratio(marks)  # this frame blinks its left eye (blink_left 0.98, blink_right 0.02)
        assert 0.25 < right < 0.5 and left < right - 0.15, (right, left)
        with pytest.raises(ValueError, match="one \\(H, W, 3\\) image"):
            lmd(img[None], img)
    # mediapipe's native start-up chatter (TensorFlow Lite, absl) stays out of the user's terminal
    assert capfd.readouterr().err == ""


def test_rotation_gap_is_the_angle_to_the_nearest_reference():
    import math

    from fastminerf.metrics import rotation_gap_deg

    def yaw(deg):
        a = math.radians(deg)
        return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])

    def pitch(deg):
        a = math.radians(deg)
        return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])

    reference = np.stack([yaw(0.0), yaw(10.0), yaw(-20.0)])
    rotations = np.stack([yaw(3.0), yaw(12.5), yaw(-35.0), yaw(10.0), pitch(7.0), yaw(10.0) @ pitch(4.0)])
    expected = [3.0, 2.5, 15.0, 0.0, 7.0, 4.0]
    np.testing.assert_allclose(rotation_gap_deg(rotations, reference), expected, atol=1e-5)
    np.testing.assert_allclose(rotation_gap_deg(rotations, reference, chunk=2), expected, atol=1e-5)  # chunked alike
    assert np.isnan(rotation_gap_deg(rotations, np.zeros((0, 3, 3)))).all()



@needs_mediapipe
def test_lmd_refuses_a_uint8_image_as_the_other_metrics_do(tmp_path):
    """An 8-bit frame (a PNG as imageio reads it) was clipped to [0, 1] and so turned into a black and white image,
    in which mediapipe still found a face: a wrong LMD without a word. It is refused, as psnr refuses it."""
    from fastminerf.data import load_dataset
    from fastminerf.data.synth import generate

    dirs = generate(tmp_path, n_identities=1, n_frames=1, size=128, novel_frames=1, val_fraction=0.0, seed=0)
    frame = load_dataset(dirs, splits=("train",)).image("train", 0)
    with LandmarkDistance() as lmd:
        with pytest.raises(ValueError, match="float in \\[0, 1\\]"):
            lmd.landmarks(frame)
        with pytest.raises(ValueError, match="float in \\[0, 1\\]"):
            lmd(frame, frame.astype(np.float32) / 255.0)
        assert lmd(frame.astype(np.float32) / 255.0, frame.astype(np.float64) / 255.0) == 0.0


@pytest.mark.parametrize("metric", [psnr, ssim, l1])
def test_metrics_refuse_images_outside_0_1(metric):
    """A frame read as 8-bit values and only cast to float (0..255), or scaled to [-1, 1] as some networks want, was
    scored as if in [0, 1]: PSNR -11 dB, SSIM a plausible 0.69 against 0.94 for the same real frames. Refused, naming
    which image and its range; values within round-off of [0, 1] still count."""
    p, t = _rng_images(5, (16, 16, 3))
    with pytest.raises(ValueError, match="in \\[0, 1\\].*prediction.*up to 2\\d\\d"):
        metric(p * 255.0, t)
    with pytest.raises(ValueError, match="in \\[0, 1\\].*target.*from -0\\.9"):
        metric(torch.tensor(p), torch.tensor(t * 2 - 1))
    metric(np.clip(p, 0, 1) * (1 + 1e-7), t)  # round-off past 1 is fine


@pytest.mark.cuda
def test_lpips_scores_cuda_images(monkeypatch):
    """The LPIPS network is built once, on the CPU, and lpips() fed it the images on their own device: CUDA images
    (a render on the GPU) failed with torch's 'Input type (torch.cuda.FloatTensor) and weight type
    (torch.FloatTensor) should be the same'. The network runs on the images' device; the distance comes back there,
    as psnr's does. A stand-in network (the lpips package and its weights are not needed)."""
    import fastminerf.metrics as metrics

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 1)

        def forward(self, x, y):
            return (self.conv(x) - self.conv(y)).abs().mean(dim=(1, 2, 3))

    monkeypatch.setattr(metrics, "_lpips_model", lambda net: Net().eval())
    pred, target = torch.rand(2, 16, 16, 3, device="cuda"), torch.rand(2, 16, 16, 3, device="cuda")
    d = lpips(pred, target)
    assert d.shape == (2,) and d.device.type == "cuda"
    assert torch.allclose(d.cpu(), lpips(pred.cpu(), target.cpu()).cpu())


@needs_mediapipe
def test_lmd_and_trackers_closed_twice_are_closed_as_a_file_is():
    """LandmarkDistance closed twice (close() then leaving its with block, or a close in a finally after one) raised
    mediapipe's "Closing SolutionBase._graph which is already None"; so did FaceTracker and Segmenter. A second close
    does nothing, as a Python file's does."""
    from fastminerf.prepare.tracking import FaceTracker, Segmenter

    with LandmarkDistance() as lmd:
        lmd.close()
    lmd.close()
    for make in (lambda: FaceTracker(static=True), Segmenter):
        with make() as solution:
            solution.close()
        solution.close()


@needs_mediapipe
def test_lmd_distance_averages_the_lip_landmarks_alone():
    from fastminerf.data.layout import LIP_LANDMARKS

    a = np.zeros((478, 2), dtype=np.float32)
    lips = a.copy()
    lips[np.asarray(LIP_LANDMARKS)] += (3.0, 4.0)  # every lip point moved 5 px
    rest = a + (30.0, 40.0)
    rest[np.asarray(LIP_LANDMARKS)] = 0.0  # everything moved but the lips
    with LandmarkDistance() as lmd:
        assert lmd.distance(lips, a) == pytest.approx(5.0)
        assert lmd.distance(rest, a) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Hand values that mutation testing of metrics.py found unchecked (each kills at least one mutant that the tests
# above let through).


def test_psnr_of_nearly_identical_images_is_capped_like_that_of_identical_ones():
    """PSNR_MAX_DB caps every value, not only MSE 0: MSE 1e-12 would be 120 dB (a mean over frames dominated by
    the best one); MSE 1e-8 is 80 dB, under the cap, as it is."""
    a = np.zeros((4, 4, 3))
    assert psnr(a, np.full((4, 4, 3), 1e-6)).item() == PSNR_MAX_DB
    assert psnr(a, np.full((4, 4, 3), 1e-4)).item() == pytest.approx(80.0, abs=1e-9)


def test_l1_counts_errors_of_either_sign():
    """+0.3 at one pixel and -0.3 at another (three channels each): 1.8 over 12 values, 0.15, not the signed mean 0."""
    p = np.full((2, 2, 3), 0.5)
    t = p.copy()
    t[0, 0], t[1, 1] = 0.8, 0.2
    assert l1(p, t).item() == pytest.approx(0.15, abs=EXACT)
    assert l1(t, p).item() == pytest.approx(0.15, abs=EXACT)


def test_ssim_takes_images_of_exactly_one_window_and_refuses_one_side_too_short():
    """11x11 is one window position (the constant-image formula holds); 8 pixels on either side alone is refused,
    not averaged over no window at all (NaN)."""
    a, b = 0.3, 0.7
    c1 = SSIM_K1**2
    got = ssim(np.full((SSIM_WINDOW, SSIM_WINDOW, 3), a), np.full((SSIM_WINDOW, SSIM_WINDOW, 3), b)).item()
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=EXACT)
    for shape in ((8, 20, 3), (20, 8, 3)):
        with pytest.raises(ValueError, match="at least 11x11"):
            ssim(np.zeros(shape), np.zeros(shape))


@pytest.mark.parametrize("metric", [psnr, ssim, l1])
def test_metrics_take_round_off_on_either_side_of_0_1_and_refuse_a_percent_beyond(metric):
    """A render's values 1e-7 past 0 or 1 (float arithmetic) are scored; 0.01 past them is another range, refused."""
    p, t = _rng_images(6, (12, 12, 3))
    p[0, 0, 0], p[1, 1, 1] = 1.0 + 1e-7, -1e-7
    assert np.isfinite(float(metric(p, t)))
    for bad in (1.01, -0.01):
        q = t.copy()
        q[2, 2, 2] = bad
        with pytest.raises(ValueError, match="in \\[0, 1\\]"):
            metric(p.clip(0, 1), q)


def test_eye_aspect_ratio_ignores_depth_and_reads_a_collapsed_eye_as_shut():
    """The ratio is of the image outline (x, y): the same eyes with any depth give 0.25 and 0.5; an eye whose six
    points coincide (a face seen edge-on) is 0, not NaN."""
    marks = np.zeros((478, 3))
    for e, (p1, p2, p3, p4, p5, p6) in enumerate(EYE_OPENING_LANDMARKS):
        x = 10.0 * e
        marks[p1, :2], marks[p4, :2] = (x, 0.0), (x + 4.0, 0.0)
        for up, down, at in ((p2, p6, x + 1.0), (p3, p5, x + 3.0)):
            marks[up, :2], marks[down, :2] = (at, 0.5 * (1 + e)), (at, -0.5 * (1 + e))
    marks[:, 2] = np.random.default_rng(0).normal(scale=3.0, size=478)
    np.testing.assert_allclose(eye_aspect_ratio(marks), [0.25, 0.5])
    collapsed = marks.copy()
    collapsed[np.asarray(EYE_OPENING_LANDMARKS[0]), :2] = (5.0, 5.0)
    with np.errstate(all="raise"):
        np.testing.assert_allclose(eye_aspect_ratio(collapsed), [0.0, 0.5])


def test_lmd_landmarks_are_x_then_y_in_pixels_of_a_wide_image_fed_as_rounded_8_bit():
    """LandmarkDistance.landmarks with a stand-in tracker (mediapipe not needed): the tracker's normalised (x, y)
    come back as (x * W, y * H) of an 80x40 image, and it is given the image as uint8, rounded (0.5 -> 128) and
    clipped (an unclamped render's 1.01 is 255 and -0.01 is 0, not wrapped round to 2 and 254)."""
    seen = []

    def tracker(rgb):
        seen.append(rgb)
        out = np.zeros((478, 3), np.float32)
        out[:, :2] = (0.25, 0.75)
        out[:, 2] = 0.1
        return out

    lmd = LandmarkDistance.__new__(LandmarkDistance)
    lmd._tracker = tracker
    img = np.full((40, 80, 3), 0.5, np.float32)
    img[0, 0] = 1.01
    img[0, 1] = -0.01
    marks = lmd.landmarks(img)
    assert marks.shape == (478, 2)
    np.testing.assert_allclose(marks[0], [20.0, 30.0])
    rgb = seen[0]
    assert rgb.dtype == np.uint8 and rgb.shape == (40, 80, 3)
    assert rgb[5, 5].tolist() == [128] * 3 and rgb[0, 0].tolist() == [255] * 3 and rgb[0, 1].tolist() == [0] * 3


def test_rotation_gap_of_one_rotation_and_of_one_past_a_chunk():
    from fastminerf.metrics import rotation_gap_deg

    def yaw(deg):
        a = math.radians(deg)
        return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])

    reference = np.stack([yaw(0.0), yaw(30.0)])
    np.testing.assert_allclose(rotation_gap_deg(yaw(5.0)[None], reference), [5.0], atol=1e-9)
    angles = [1.0, 2.0, 3.0, 28.0, 40.0]
    np.testing.assert_allclose(rotation_gap_deg(np.stack([yaw(a) for a in angles]), reference, chunk=4),
                               [1.0, 2.0, 3.0, 2.0, 10.0], atol=1e-9)
