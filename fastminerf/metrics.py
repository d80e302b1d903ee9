"""Image metrics: PSNR, SSIM, L1, and LPIPS when its package and weights are installed.

Every metric takes float images in [0, 1] shaped ``(H, W, 3)`` (one image) or ``(B, H, W, 3)`` (a batch; any
number of leading dimensions works) as torch tensors or NumPy arrays (integer images, and values outside [0, 1]
such as 0..255 or [-1, 1], are refused), and returns one value per image: a
0-d tensor for one image, ``(B,)`` for a batch. Averaging over frames and identities is left to the caller
(:func:`fastminerf.render.evaluate` averages per-frame values).

SSIM follows Wang et al. (2004) exactly as their reference code does: an 11-tap Gaussian window with
sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, data range 1, statistics over the *valid* part of the image (no
padding), averaged over pixels and colour channels. This is the same number as
``skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=1, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False)``, which the tests check.

LPIPS is never downloaded: :func:`lpips_status` says whether the ``lpips`` package and its backbone weights
are present on this machine, and :func:`lpips` raises :class:`MetricUnavailable` with that reason otherwise.

LMD, the landmark distance of talking-head papers (Chen et al. 2018; AD-NeRF and ER-NeRF report it for lip
sync): :class:`LandmarkDistance` finds the face in a render and in its ground truth with mediapipe's face mesh
(each image on its own, the detector run on both) and returns the mean distance in pixels between their 40 lip
landmarks (mediapipe's ``FACEMESH_LIPS``, :data:`fastminerf.data.layout.LIP_LANDMARKS`). It needs the mediapipe that ``prepare`` uses;
:func:`landmark_status` says whether it is there. From the same landmarks, blinks: :func:`eye_aspect_ratio`, each eye's
opening over its width (Soukupova and Cech 2016), compared between a render and its truth.

Not an image metric, but what explains held-out numbers of monocular video: :func:`rotation_gap_deg`, how far a
frame's head pose is from every pose the model was trained on (a NeRF of one clip has seen the head from a narrow
cone of views; a frame outside it is a new view, and on the real clips its PSNR falls with that angle).
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .data.layout import EYE_LANDMARKS, EYE_OPENING_LANDMARKS, LIP_LANDMARKS
from .data.rays import EYE_MARGIN, MOUTH_MARGIN, eye_box, lip_box

__all__ = [
    "LandmarkDistance",
    "MetricUnavailable",
    "SSIM_K1",
    "SSIM_K2",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "eye_aspect_ratio",
    "l1",
    "landmark_status",
    "lpips",
    "lpips_status",
    "psnr",
    "rotation_gap_deg",
    "ssim",
]

ImageLike = Union[torch.Tensor, np.ndarray]

SSIM_WINDOW = 11
"""Side of the Gaussian SSIM window in pixels (Wang et al.)."""
SSIM_SIGMA = 1.5
"""Standard deviation of the Gaussian SSIM window in pixels (Wang et al.)."""
SSIM_K1 = 0.01
"""SSIM luminance stabiliser: ``C1 = (K1 * data_range) ** 2`` (Wang et al.)."""
SSIM_K2 = 0.03
"""SSIM contrast stabiliser: ``C2 = (K2 * data_range) ** 2`` (Wang et al.)."""

PSNR_MAX_DB = 100.0
"""PSNR reported for identical images (MSE 0), instead of infinity, so that means stay finite."""

RANGE_SLACK = 1e-3
"""How far outside [0, 1] an image's values may lie (round-off) before the metrics refuse it as another range."""


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed on this machine (e.g. LPIPS without its weights); the message says why."""


def _as_images(pred: ImageLike, target: ImageLike, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both images as float64 tensors of one shape ``(..., H, W, 3)``; float64 so that the metrics of a
    float32 image do not depend on the summation order."""
    p = torch.as_tensor(np.asarray(pred) if isinstance(pred, np.ndarray) else pred)
    t = torch.as_tensor(np.asarray(target) if isinstance(target, np.ndarray) else target)
    if p.shape != t.shape:
        raise ValueError(f"{name}: prediction {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    if p.ndim < 3 or p.shape[-1] not in (1, 3):
        raise ValueError(f"{name}: images must be (H, W, 3) or (B, H, W, 3) (or one channel), got {tuple(p.shape)}")
    if not (p.is_floating_point() and t.is_floating_point()):
        raise ValueError(f"{name}: images must be float in [0, 1], got {p.dtype} and {t.dtype}")
    for what, x in (("prediction", p), ("target", t)):  # 0..255 or [-1, 1] would be scored as data range 1
        if x.numel() and (x.min() < -RANGE_SLACK or x.max() > 1 + RANGE_SLACK):
            raise ValueError(f"{name}: images must be float in [0, 1], got a {what} with values from "
                             f"{x.min().item():.4g} up to {x.max().item():.4g} (divide 8-bit values by 255)")
    return p.to(torch.float64), t.to(device=p.device, dtype=torch.float64)


def psnr(pred: ImageLike, target: ImageLike) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (data range 1).

    .. math:: \\mathrm{PSNR} = -10 \\log_{10} \\operatorname{mean}_{h,w,c} (p - t)^2

    Args:
        pred, target: ``(H, W, 3)`` or ``(B, H, W, 3)`` float images in [0, 1].

    Returns:
        float64, ``()`` for one image or ``(B,)``; :data:`PSNR_MAX_DB` where the images are identical.

    Example:
        >>> psnr(torch.zeros(4, 4, 3), torch.full((4, 4, 3), 0.5))  # MSE 0.25
        tensor(6.0206, dtype=torch.float64)
    """
    p, t = _as_images(pred, target, "psnr")
    mse = (p - t).square().mean(dim=(-3, -2, -1))
    out = -10.0 * torch.log10(mse)
    return torch.where(mse > 0, out, torch.full_like(out, PSNR_MAX_DB)).clamp(max=PSNR_MAX_DB)


def l1(pred: ImageLike, target: ImageLike) -> torch.Tensor:
    """Mean absolute error over pixels and channels: ``mean |p - t|``.

    Args:
        pred, target: ``(H, W, 3)`` or ``(B, H, W, 3)`` float images.

    Returns:
        float64, ``()`` or ``(B,)``.
    """
    p, t = _as_images(pred, target, "l1")
    return (p - t).abs().mean(dim=(-3, -2, -1))


@lru_cache(maxsize=4)
def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (size,), float64, centred on the middle tap."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def ssim(pred: ImageLike, target: ImageLike) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) for images in [0, 1].

    .. math::
        \\mathrm{SSIM} = \\operatorname{mean}\\;
        \\frac{(2\\mu_p\\mu_t + C_1)(2\\sigma_{pt} + C_2)}{(\\mu_p^2 + \\mu_t^2 + C_1)(\\sigma_p^2 + \\sigma_t^2 + C_2)}

    with local statistics under an :data:`SSIM_WINDOW`-tap Gaussian window of sigma :data:`SSIM_SIGMA`
    (population, not sample, covariance), ``C1 = K1**2``, ``C2 = K2**2``, evaluated at every window position
    fully inside the image and averaged over positions and channels.

    Args:
        pred, target: ``(H, W, 3)`` or ``(B, H, W, 3)`` float images in [0, 1], ``H, W >= 11``.

    Returns:
        float64 in [-1, 1], ``()`` or ``(B,)``; 1 for identical images.
    """
    p, t = _as_images(pred, target, "ssim")
    h, w, c = p.shape[-3:]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {w}x{h}")
    lead = p.shape[:-3]
    # (..., H, W, C) -> (M, 1, H, W): every channel of every image filtered alike.
    p2 = p.reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    t2 = t.reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    g = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA).to(p.device)
    gx, gy = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:  # separable valid filtering: (M,1,H,W) -> (M,1,H-10,W-10)
        return F.conv2d(F.conv2d(x, gx), gy)

    mu_p, mu_t = blur(p2), blur(t2)
    var_p = blur(p2 * p2) - mu_p * mu_p
    var_t = blur(t2 * t2) - mu_t * mu_t
    cov = blur(p2 * t2) - mu_p * mu_t
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p * mu_p + mu_t * mu_t + c1) * (var_p + var_t + c2))
    per = s.mean(dim=(1, 2, 3)).reshape(-1, c).mean(dim=1)  # (M,) -> (images, C) -> (images,)
    return per.reshape(lead)


# -------------------------------------------------------------------------------------------------- LPIPS

_LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth"}
"""File names torchvision's model zoo caches the LPIPS backbones under (``$TORCH_HOME/hub/checkpoints``)."""


def lpips_status(net: str = "alex", build: bool = False) -> Tuple[bool, str]:
    """Whether LPIPS can run here without downloading anything, and why not.

    Checks, without importing anything heavy: the ``lpips`` package is installed, its linear-layer weights
    ship with it, and torchvision's cached backbone weights for ``net`` exist. Never downloads. With ``build``,
    also imports lpips and builds the network (kept for :func:`lpips`), so that an install present but broken
    (e.g. a torchvision built for another torch) is found now rather than at the first image scored.

    Returns:
        ``(True, "lpips <net>")`` or ``(False, reason)``.
    """
    if net not in _LPIPS_BACKBONE_FILES:
        return False, f"unknown LPIPS backbone '{net}' (one of {sorted(_LPIPS_BACKBONE_FILES)})"
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return False, "the 'lpips' package is not installed"
    pkg = list(spec.submodule_search_locations)[0]
    lin = os.path.join(pkg, "weights", "v0.1", f"{net}.pth")
    if not os.path.isfile(lin):
        return False, f"the lpips linear weights are missing ({lin})"
    hub = os.path.join(torch.hub.get_dir(), "checkpoints", _LPIPS_BACKBONE_FILES[net])
    if not os.path.isfile(hub):
        return False, f"the {net} backbone weights are not cached ({hub}); LPIPS is never downloaded"
    if importlib.util.find_spec("torchvision") is None:
        return False, "torchvision (needed by lpips) is not installed"
    if build:
        try:
            _lpips_model(net)
        except MetricUnavailable as exc:
            return False, str(exc).replace("LPIPS unavailable: ", "", 1)
    return True, f"lpips {net}"


@lru_cache(maxsize=2)
def _lpips_model(net: str):
    ok, why = lpips_status(net)
    if not ok:
        raise MetricUnavailable(f"LPIPS unavailable: {why}")
    try:
        import lpips as _lp  # noqa: PLC0415  (optional, heavy)

        model = _lp.LPIPS(net=net, verbose=False, pretrained=True)
    except Exception as exc:  # a broken torchvision install fails here, not in lpips_status
        raise MetricUnavailable(f"LPIPS unavailable: importing or building lpips failed: {exc}") from None
    return model.eval()


def lpips(pred: ImageLike, target: ImageLike, net: str = "alex") -> torch.Tensor:
    """LPIPS distance (Zhang et al. 2018), lower is better; only with weights already on this machine.

    Args:
        pred, target: ``(H, W, 3)`` or ``(B, H, W, 3)`` float images in [0, 1].
        net: backbone, ``alex`` (the usual choice), ``vgg`` or ``squeeze``.

    Returns:
        float64, ``()`` or ``(B,)``, on the images' device (the network runs there).

    Raises:
        MetricUnavailable: when :func:`lpips_status` is false (the message gives its reason).
    """
    p, t = _as_images(pred, target, "lpips")
    model = _lpips_model(net).to(p.device)  # built on the CPU once; run where the images are (a render on a GPU)
    lead = p.shape[:-3]
    h, w, c = p.shape[-3:]
    x = p.reshape(-1, h, w, c).permute(0, 3, 1, 2).float() * 2 - 1  # lpips wants (B, 3, H, W) in [-1, 1]
    y = t.reshape(-1, h, w, c).permute(0, 3, 1, 2).float() * 2 - 1
    with torch.no_grad():
        d = model(x, y).reshape(-1).to(torch.float64)
    return d.reshape(lead)



def landmark_status() -> Tuple[bool, str]:
    """Whether :class:`LandmarkDistance` can run here (mediapipe with its bundled face mesh), and why not.

    Returns:
        ``(True, "mediapipe <version> face mesh")`` or ``(False, reason)``.
    """
    from .prepare.tracking import MediapipeMissing, require_mediapipe  # noqa: PLC0415  (mediapipe is heavy)

    try:
        mp = require_mediapipe()
    except MediapipeMissing as exc:
        return False, str(exc)
    return True, f"mediapipe {getattr(mp, '__version__', '?')} face mesh"


def eye_aspect_ratio(landmarks: ImageLike) -> np.ndarray:
    """Each eye's aspect ratio from face-mesh landmarks ``(..., 478, D)`` (D >= 2; x and y are used) as ``(..., 2)``,
    the person's right eye then the left: ``(|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|)`` over the six lid points of
    :data:`fastminerf.data.layout.EYE_OPENING_LANDMARKS`; about 0.25-0.3 for an open eye, under 0.1 shut."""
    pts = np.asarray(landmarks.detach().cpu() if isinstance(landmarks, torch.Tensor) else landmarks, dtype=np.float64)
    p = pts[..., np.asarray(EYE_OPENING_LANDMARKS), :2]  # (..., 2 eyes, 6 points, 2)
    dist = lambda a, b: np.linalg.norm(p[..., a, :] - p[..., b, :], axis=-1)  # noqa: E731
    return (dist(1, 5) + dist(2, 4)) / (2.0 * np.maximum(dist(0, 3), 1e-12))


class LandmarkDistance:
    """LMD: mean distance in pixels between the lip landmarks mediapipe finds in a render and in its ground truth.

    Each image is searched on its own (mediapipe's face mesh in static mode, no tracking from frame to frame),
    so a render is judged as a tracker sees it. Use as a context manager, or call :meth:`close`.

    Raises:
        MetricUnavailable: mediapipe (with its bundled face mesh) is not installed; the message says how to.
    """

    def __init__(self) -> None:
        ok, why = landmark_status()
        if not ok:
            raise MetricUnavailable(f"LMD unavailable: {why}")
        from .prepare.tracking import FaceTracker  # noqa: PLC0415

        self.lips = np.array(LIP_LANDMARKS, dtype=np.int64)
        """The lip landmarks' indices (40)."""
        self._tracker = FaceTracker(static=True)

    def landmarks(self, image: ImageLike) -> Optional[np.ndarray]:
        """The face's landmarks ``(K, 2)`` in pixels (x, y) in one ``(H, W, 3)`` float image in [0, 1], or None."""
        img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"LMD takes one (H, W, 3) image, got shape {img.shape}")
        if not np.issubdtype(img.dtype, np.floating):  # clipping 8-bit values to [0, 1] would binarise the image
            raise ValueError(f"LMD: images must be float in [0, 1], got {img.dtype}")
        rgb = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        found = self._tracker(rgb)
        if found is None:
            return None
        return found[:, :2] * np.array([img.shape[1], img.shape[0]], dtype=np.float32)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Mean distance in pixels between the lip landmarks of two :meth:`landmarks` results."""
        return float(np.linalg.norm(a[self.lips] - b[self.lips], axis=1).mean())

    def mouth_box(self, landmarks: np.ndarray, height: int, width: int, margin: float = MOUTH_MARGIN) -> Tuple[float, float, float, float]:
        """The lips of a :meth:`landmarks` result as a box ``[y0, y1, x0, x1]`` in fractions of the image (the
        layout's ``bbox`` convention; :func:`fastminerf.data.rays.lip_box`), grown by ``margin`` times their extent on
        each side so that the lips' outline and the skin around them count."""
        return tuple(float(v) for v in lip_box(landmarks[self.lips], height, width, margin))  # type: ignore[return-value]

    def eye_boxes(self, landmarks: np.ndarray, height: int, width: int, margin: float = EYE_MARGIN) -> np.ndarray:
        """The two eyes of a :meth:`landmarks` result (the person's right, then the left) as boxes ``(2, 4)``
        ``[y0, y1, x0, x1]`` in fractions of the image (:func:`fastminerf.data.rays.eye_box`: each eye's lids grown by
        ``margin`` times its width on each side)."""
        return np.stack([eye_box(landmarks[np.asarray(lids)], height, width, margin) for lids in EYE_LANDMARKS])

    def __call__(self, pred: ImageLike, target: ImageLike) -> Optional[float]:
        """Mean lip-landmark distance in pixels between ``pred`` and ``target`` (``(H, W, 3)`` in [0, 1]), or None
        when mediapipe finds no face in either."""
        a = self.landmarks(pred)
        if a is None:
            return None
        b = self.landmarks(target)
        if b is None:
            return None
        return self.distance(a, b)

    def close(self) -> None:
        self._tracker.close()

    def __enter__(self) -> "LandmarkDistance":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rotation_gap_deg(rotations: np.ndarray, reference: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """The angle in degrees from each rotation ``(A, 3, 3)`` to the nearest of ``reference`` ``(B, 3, 3)`` (the
    geodesic distance on SO(3)), ``(A,)`` float64. Camera-to-head rotations of two frames give the angle between
    their head poses; ``reference`` empty gives NaN."""
    a = np.asarray(rotations, dtype=np.float64).reshape(-1, 9)
    b = np.asarray(reference, dtype=np.float64).reshape(-1, 9)
    if len(a) == 0 or len(b) == 0:
        return np.full(len(a), np.nan)
    # The nearest has the largest trace(R_a^T R_b), the sum of the element-wise product: one matrix product, in row
    # chunks to bound memory. The angle from the chord, 2 asin(|R_a - R_b|_F / sqrt(8)), stays exact near 0, where
    # arccos((trace - 1) / 2) loses half the digits.
    nearest = np.concatenate([np.argmax(a[i:i + chunk] @ b.T, axis=1) for i in range(0, len(a), chunk)])
    chord = np.linalg.norm(a - b[nearest], axis=1) / np.sqrt(8.0)
    return np.degrees(2.0 * np.arcsin(np.clip(chord, 0.0, 1.0)))
