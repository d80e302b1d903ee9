"""Procedural stylised talking heads: a signed-distance head driven by an expression vector, traced per pixel.

Head space follows ``DATASET.md``: the head sits at the origin, +y is up, the face looks down +z, and +x is
the person's left (the viewer's right). A head is a smooth union of simple primitives (cranium, jaw,
cheeks, nose, ears, neck, lips, eyes with lids, hair) with a carved mouth cavity. The expression vector
moves them (see :data:`EXPRESSION_NAMES`).

The colour of a surface point is a function of the head-space point and the expression only: albedo from
procedural textures times lighting that is fixed to the head (two directional lights and a sky term, no
shadows, nothing view-dependent). So a radiance field conditioned on the expression explains every frame,
whatever the camera.

Rendering is exact for pixel-centre rays: sphere tracing to a surface tolerance of :data:`HIT_EPS` head
units (a few hundredths of a pixel at the generator's framing), shading at the hit.

Dimension letters: N rays, B frames, E expression size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .rays import camera_rays, ray_aabb

__all__ = [
    "EXPRESSION_NAMES",
    "EXPRESSION_RANGES",
    "HAIR_STYLES",
    "PATTERNS",
    "TRACE_BOX",
    "HeadModel",
    "HeadParams",
]

EXPRESSION_NAMES: Tuple[str, ...] = (
    "jaw_open",
    "smile",
    "blink_left",
    "blink_right",
    "brow_raise",
    "brow_frown",
    "cheek_puff",
    "pucker",
    "mouth_shift",
    "gaze_x",
    "gaze_y",
    "squint",
)
"""Names of the E = 12 expression coefficients, in order. ``left``/``right`` are the person's own sides."""

EXPRESSION_RANGES: Tuple[Tuple[float, float], ...] = (
    (0.0, 1.0),  # jaw_open: 0 closed, 1 wide open (the jaw drops, lips part, the mouth cavity shows)
    (-1.0, 1.0),  # smile: mouth corners up and wider (> 0) or down (< 0)
    (0.0, 1.0),  # blink_left: the left upper lid closes
    (0.0, 1.0),  # blink_right
    (-1.0, 1.0),  # brow_raise: brows up (> 0, also opens the eyes wider) or down (< 0)
    (0.0, 1.0),  # brow_frown: inner ends of the brows pull down and together
    (0.0, 1.0),  # cheek_puff: cheeks inflate
    (0.0, 1.0),  # pucker: lips narrow and push forward
    (-1.0, 1.0),  # mouth_shift: mouth slides to the person's left (> 0) or right (< 0)
    (-1.0, 1.0),  # gaze_x: eyes look to the person's left (> 0)
    (-1.0, 1.0),  # gaze_y: eyes look up (> 0)
    (0.0, 1.0),  # squint: lower lids rise
)
"""Valid range ``(low, high)`` of each expression coefficient; 0 is the neutral face for every one."""

HAIR_STYLES: Tuple[str, ...] = ("short", "bob", "curly", "bald")
"""Hair styles an identity can have."""

PATTERNS: Tuple[str, ...] = ("freckles", "stripes", "mottled", "spots")
"""Skin surface patterns an identity can have (texture detail for the hash grid to learn)."""

TRACE_BOX: Tuple[float, ...] = (-1.15, -1.5, -1.2, 1.15, 1.4, 1.3)
"""Box holding every head at every expression, ``[xmin, ymin, zmin, xmax, ymax, zmax]``; inside the layout's
default ``aabb`` and written as the datasets' ``aabb``."""

HEAD_BOUND: Tuple[float, ...] = (0.0, 0.1, -0.05, 1.03, 1.2, 1.12)
"""Ellipsoid ``(cx, cy, cz, rx, ry, rz)`` holding every head without its neck (cranium, hair, ears, face,
jaw) at every expression; fitted to sampled heads with a 0.04 margin. With :data:`NECK_BOX` it bounds the
geometry: rays missing both miss the head without a single SDF evaluation, the others march only between
where they enter and leave (a test checks the SDF is positive on the surface of the union)."""

NECK_BOX: Tuple[float, ...] = (-0.45, -1.5, -0.55, 0.45, -0.3, 0.4)
"""Box ``[xmin, ymin, zmin, xmax, ymax, zmax]`` holding the neck."""

PIECE_RAYS = 131072
"""Rays stepped together. Large enough that the per-op overhead is small and PyTorch's intra-op threads
share each op; as rays finish, pieces shrink and are merged, so the tail of slow (grazing) rays costs few
iterations of small ops. Results do not depend on it."""

HIT_EPS = 4e-4
"""Sphere tracing stops when the distance bound falls below this many head units (about 1/50 pixel at
128 px and the generator's framing)."""

GRAZE_EPS = 4e-3
"""Rays still marching after :data:`MAX_STEPS` count as hits when within this distance (grazing rays along
a silhouette); a tenth of a pixel at 128 px."""

MAX_STEPS = 80
"""Sphere tracing steps at most."""

MIN_STEP = 1e-3
"""Smallest sphere-tracing step in head units. A ray that steps across the surface is refined by
bisection, so the smallest step bounds only how shallow a grazing dip into a surface (depth about
step^2 / (8 * curvature radius), radius >= 0.05 here) can be and still be seen, not where surfaces are."""

MIN_STEP_PIXELS = 0.5
"""With a known pixel footprint, the smallest step is this many footprints at the ray's distance: half a
pixel misses only grazing dips shallower than a few thousandths of a pixel."""

BISECT_STEPS = 14
"""Bisection steps locating a crossing: the bracket of at most :data:`MIN_STEP` / STEP_SCALE shrinks below
1e-6 head units."""

STEP_SCALE = 0.85
"""Each step advances this fraction of the distance bound. The warped parts (smile curve, curls, fringe)
are normalised to stay bounds, but the ellipsoid distance is an approximation that can over-estimate a
little near very flat ellipsoids (the mouth slit), so a full step could tunnel through."""

NORMAL_H = 1.5e-3
"""Finite-difference step of the SDF gradient (normal) at a hit, in head units."""

_SMILE_BEND = 1.6
# The smile bends mouth space, y' = y - bend * smile * x^2: slope up to 2 * 1.6 * 0.26 = 0.83 over the lips, so
# distances measured in bent space over-estimate by up to sqrt(1 + 0.83^2) = 1.3; the lip and cavity terms are
# divided by that to stay bounds.
_INV_WARP_L = 1.0 / 1.3

_LIGHT_KEY = (0.45, 0.55, 0.70)
_LIGHT_FILL = (-0.65, -0.05, 0.45)

_SKIN_TONES = (
    (0.96, 0.80, 0.69),
    (0.90, 0.70, 0.56),
    (0.78, 0.57, 0.42),
    (0.62, 0.43, 0.31),
    (0.44, 0.30, 0.21),
    (0.98, 0.87, 0.79),
    (0.84, 0.63, 0.48),
    (0.55, 0.74, 0.86),  # a stylised blue avatar
)
_HAIR_COLOURS = (
    (0.08, 0.07, 0.07),
    (0.25, 0.15, 0.08),
    (0.48, 0.31, 0.15),
    (0.88, 0.72, 0.40),
    (0.68, 0.25, 0.10),
    (0.72, 0.72, 0.74),
    (0.20, 0.35, 0.80),
    (0.90, 0.42, 0.62),
)
_IRIS_COLOURS = (
    (0.40, 0.22, 0.10),
    (0.25, 0.50, 0.88),
    (0.30, 0.62, 0.30),
    (0.56, 0.45, 0.20),
    (0.55, 0.60, 0.66),
    (0.52, 0.30, 0.72),
)


def _len2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(a * a + b * b)


def _len3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(torch.addcmul(a * a, b, b), c, c).sqrt_()


def _ellipsoid(x, y, z, rx, ry, rz) -> torch.Tensor:
    """Distance bound to an ellipsoid with radii (rx, ry, rz) at the origin (Quilez' k0 (k0 - 1) / k1).
    Radii are floats or (N,) tensors."""
    if isinstance(rx, float) and isinstance(ry, float) and isinstance(rz, float):
        qx, qy, qz = x * (1.0 / rx), y * (1.0 / ry), z * (1.0 / rz)
        k0 = _len3(qx, qy, qz)
        k1 = _len3(qx * (1.0 / rx), qy * (1.0 / ry), qz * (1.0 / rz))
    else:
        qx, qy, qz = x / rx, y / ry, z / rz
        k0 = _len3(qx, qy, qz)
        k1 = _len3(qx / rx, qy / ry, qz / rz)
    return (k0 - 1.0).mul_(k0).div_(k1.clamp_min_(1e-9))


def _smin(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Smooth minimum (quadratic), blending over a width ``k``."""
    h = (a - b).abs_().sub_(k).clamp_max_(0.0)  # -(k - |a - b|)+
    return torch.minimum(a, b).sub_(h.mul_(h).mul_(0.25 / k))


def _smax(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Smooth maximum (quadratic), blending over a width ``k``."""
    h = (a - b).abs_().sub_(k).clamp_max_(0.0)
    return torch.maximum(a, b).add_(h.mul_(h).mul_(0.25 / k))


def _smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _mix(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Blend colours a, b (N, 3) with weight w (N,)."""
    return a + (b - a) * w[:, None]


def _colour(rgb: Sequence[float], n: int) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).expand(n, 3)


def _bounds(origins: torch.Tensor, directions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where rays (N, 3) enter and leave the union of :data:`HEAD_BOUND` and :data:`NECK_BOX`: (N,), (N,);
    ``near = far = 0`` for rays that miss both."""
    cx, cy, cz, rx, ry, rz = HEAD_BOUND
    inv_r = torch.tensor([1.0 / rx, 1.0 / ry, 1.0 / rz], dtype=origins.dtype)
    oc = (origins - torch.tensor([cx, cy, cz], dtype=origins.dtype)) * inv_r
    dc = directions * inv_r
    a = (dc * dc).sum(-1)
    b = (oc * dc).sum(-1)
    c = (oc * oc).sum(-1) - 1.0
    disc = b * b - a * c
    root = disc.clamp_min(0.0).sqrt()
    e_near = ((-b - root) / a).clamp_min(0.0)
    e_far = torch.where(disc > 0, (-b + root) / a, torch.zeros_like(b))
    e_far = torch.maximum(e_far, e_near)
    b_near, b_far = ray_aabb(origins, directions, NECK_BOX)
    e_hit, b_hit = e_far > e_near, b_far > b_near
    inf = torch.full_like(b, math.inf)
    near = torch.minimum(torch.where(e_hit, e_near, inf), torch.where(b_hit, b_near, inf))
    far = torch.maximum(torch.where(e_hit, e_far, -inf), torch.where(b_hit, b_far, -inf))
    miss = ~(e_hit | b_hit)
    near = torch.where(miss, torch.zeros_like(b), near)
    far = torch.where(miss, torch.zeros_like(b), far)
    return near, far


class _Piece:
    """Tracing state of a group of rays (n rays): flat ray index, origin, direction, current and last
    distance along the ray, where the ray leaves the bounds, and the expression columns."""

    __slots__ = ("idx", "o", "d", "t", "tf", "prev", "e")

    def __init__(self, idx, o, d, t, tf, prev, e) -> None:
        self.idx, self.o, self.d, self.t, self.tf, self.prev, self.e = idx, o, d, t, tf, prev, e

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    def take(self, keep: torch.Tensor) -> "_Piece":
        return _Piece(
            self.idx[keep], [v[keep] for v in self.o], [v[keep] for v in self.d], self.t[keep], self.tf[keep],
            self.prev[keep], [v[keep] for v in self.e],
        )

    @staticmethod
    def cat(pieces: Sequence["_Piece"]) -> "_Piece":
        if len(pieces) == 1:
            return pieces[0]

        def cols(get):
            return [torch.cat(c) for c in zip(*(get(p) for p in pieces))]

        return _Piece(
            torch.cat([p.idx for p in pieces]), cols(lambda p: p.o), cols(lambda p: p.d),
            torch.cat([p.t for p in pieces]), torch.cat([p.tf for p in pieces]), torch.cat([p.prev for p in pieces]),
            cols(lambda p: p.e),
        )


def _merge(pieces: List[_Piece], limit: int) -> List[_Piece]:
    """Combine pieces smaller than half of ``limit`` into pieces of at most ``limit`` rays."""
    big = [p for p in pieces if len(p) * 2 > limit]
    small = sorted((p for p in pieces if len(p) * 2 <= limit), key=len)
    out, group, size = big, [], 0
    for p in small:
        if group and size + len(p) > limit:
            out.append(_Piece.cat(group))
            group, size = [], 0
        group.append(p)
        size += len(p)
    if group:
        out.append(_Piece.cat(group))
    return out


def _split(n: int, size: int) -> List[Tuple[int, int]]:
    return [(a, min(n, a + size)) for a in range(0, n, size)]


@dataclass(frozen=True)
class HeadParams:
    """Everything that makes one identity: shape, colours, hair and surface pattern (head units, RGB in [0, 1])."""

    seed: int
    """Seed of the identity's texture noise."""
    cranium: Tuple[float, float, float]
    """Radii (x, y, z) of the cranium ellipsoid."""
    jaw: Tuple[float, float, float]
    """Radii (x, y, z) of the lower-face ellipsoid; x is the jaw width."""
    cheek_r: float
    """Cheek radius."""
    nose_size: float
    """Nose scale (1 is average)."""
    ear_size: float
    """Ear scale."""
    neck_r: float
    """Neck radius."""
    eye_x: float
    """Half the distance between the eye centres."""
    eye_y: float
    """Height of the eye centres."""
    eye_r: float
    """Eyeball radius."""
    mouth_y: float
    """Height of the mouth."""
    mouth_w: float
    """Half width of the lips."""
    brow_offset: float
    """Height of the brows above the eye centres."""
    brow_thickness: float
    """Half thickness of the brows."""
    hair_style: str
    """One of :data:`HAIR_STYLES`."""
    hair_thickness: float
    """Thickness of the hair layer over the cranium."""
    hairline: float
    """Height of the hairline at the sides (z = 0); it rises towards the face."""
    beard: bool
    """Whether the lower face is hair-coloured (a stylised beard)."""
    skin: Tuple[float, float, float]
    """Skin albedo."""
    hair: Tuple[float, float, float]
    """Hair (and brow, beard) albedo."""
    iris: Tuple[float, float, float]
    """Iris albedo."""
    lips: Tuple[float, float, float]
    """Lip albedo."""
    pattern: str
    """One of :data:`PATTERNS`."""
    pattern_colour: Tuple[float, float, float]
    """Albedo of the pattern's marks."""
    pattern_scale: float
    """Spatial frequency of the pattern (cycles per head unit, roughly)."""
    pattern_direction: Tuple[float, float, float]
    """Unit direction across the stripes of the ``stripes`` pattern."""

    @staticmethod
    def random(rng: np.random.Generator, index: int = 0) -> "HeadParams":
        """Draw an identity. ``index`` cycles hair styles and patterns so that a few identities cover them all."""

        def u(lo: float, hi: float) -> float:
            return float(rng.uniform(lo, hi))

        def pick(options, stride):
            # Consecutive identities step through the palette (stride coprime to its length), with a random
            # offset of 0 or 1: a handful of identities always covers it, and each still varies with the seed.
            return options[(index * stride + int(rng.integers(2))) % len(options)]

        def jitter(c, amount=0.03):
            return tuple(float(np.clip(v + rng.uniform(-amount, amount), 0.0, 1.0)) for v in c)

        skin = jitter(pick(_SKIN_TONES, 3))
        style = HAIR_STYLES[(index + int(rng.integers(2))) % len(HAIR_STYLES)] if index >= len(HAIR_STYLES) else HAIR_STYLES[index]
        pattern = PATTERNS[(index * 3 + 1) % len(PATTERNS)]
        if pattern == "stripes":
            hue = rng.uniform(0, 1)
            paint = tuple(float(0.5 + 0.45 * math.cos(2 * math.pi * (hue + k / 3))) for k in range(3))
        elif pattern == "freckles":
            paint = tuple(float(v * 0.62) for v in (skin[0], skin[1] * 0.85, skin[2] * 0.7))
        else:
            paint = tuple(float(v * 0.72) for v in skin)
        d = rng.normal(size=3)
        d[1] = abs(d[1]) + 0.5
        d = d / np.linalg.norm(d)
        lips = (min(1.0, skin[0] * 0.85 + 0.12), skin[1] * 0.55, skin[2] * 0.58)
        return HeadParams(
            seed=int(rng.integers(2**31 - 1)),
            cranium=(u(0.70, 0.80), u(0.82, 0.92), u(0.80, 0.88)),
            jaw=(u(0.46, 0.60), u(0.44, 0.54), u(0.56, 0.63)),
            cheek_r=u(0.15, 0.19),
            nose_size=u(0.8, 1.3),
            ear_size=u(0.85, 1.15),
            neck_r=u(0.30, 0.36),
            eye_x=u(0.24, 0.29),
            eye_y=u(0.06, 0.12),
            eye_r=u(0.09, 0.11),
            mouth_y=u(-0.43, -0.37),
            mouth_w=u(0.2, 0.26),
            brow_offset=u(0.14, 0.17),
            brow_thickness=u(0.025, 0.04),
            hair_style=style,
            hair_thickness={"short": u(0.04, 0.06), "bob": u(0.07, 0.1), "curly": u(0.11, 0.14), "bald": 0.0}[style],
            hairline=u(0.05, 0.2),
            beard=bool(style == "bald" or rng.uniform() < 0.2),
            skin=skin,
            hair=jitter(pick(_HAIR_COLOURS, 5), 0.04),
            iris=jitter(pick(_IRIS_COLOURS, 5), 0.04),
            lips=tuple(float(np.clip(v, 0, 1)) for v in lips),
            pattern=pattern,
            pattern_colour=tuple(float(np.clip(v, 0, 1)) for v in paint),
            pattern_scale=u(4.0, 7.0),
            pattern_direction=tuple(float(v) for v in d),
        )

    def to_json(self) -> Dict[str, object]:
        """A JSON-serialisable dict of the parameters."""
        return asdict(self)

    @staticmethod
    def from_json(data: Dict[str, object]) -> "HeadParams":
        """The parameters from :meth:`to_json` (as written to ``synth_identity.json``)."""
        return HeadParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})  # type: ignore[arg-type]


class HeadModel:
    """One identity's head: its signed distance, colour and a per-pixel renderer.

    Expressions are (N, E) float32 tensors in the order of :data:`EXPRESSION_NAMES` (E = 12).

    Example:
        One 32 px frame, neutral expression, from a camera 3 units in front of the face (looking down -z):

        >>> head = HeadModel(HeadParams.random(np.random.default_rng(0)))
        >>> c2w = torch.eye(4)[None].clone()
        >>> c2w[0, 2, 3] = 3.0
        >>> expression = torch.zeros(1, len(EXPRESSION_NAMES))
        >>> rgb, hit = head.render_frames(c2w, [40.0, 40.0, 16.0, 16.0], 32, 32, expression)
        >>> tuple(rgb.shape), tuple(hit.shape), bool(hit[0, 16, 16]), bool(hit[0, 0, 0])
        ((1, 32, 32, 3), (1, 32, 32), True, False)
    """

    def __init__(self, params: HeadParams) -> None:
        self.params = p = params
        # Fixed placement of the cranium and jaw.
        self._cranium_c = (0.0, 0.15, -0.05)
        self._jaw_c = (0.0, -0.34, 0.08)
        self._cheek_xy = (0.31, -0.2)
        self._neck = (-0.08, -0.95, 0.5)  # centre z, centre y, half height: y in [-1.45, -0.45]
        self._ear_c = (p.cranium[0] * 0.96, 0.0, -0.06)
        # Texture noise: a periodic lattice sampled trilinearly (2 channels per call).
        g = torch.Generator().manual_seed(p.seed)
        self._noise = torch.rand(1, 4, 16, 16, 16, generator=g)
        self._noise = torch.cat([self._noise, self._noise[:, :, :1]], dim=2)
        self._noise = torch.cat([self._noise, self._noise[:, :, :, :1]], dim=3)
        self._noise = torch.cat([self._noise, self._noise[:, :, :, :, :1]], dim=4).contiguous()
        # Anchors on the neutral face: cheeks sit on cranium+jaw; eyes, nose and mouth on that plus cheeks.
        self._cheek_z = 0.0
        self._cheek_z = self._surface_z(self._cheek_xy[0], self._cheek_xy[1], cheeks=False) - 0.8 * p.cheek_r
        self._eye_z = self._surface_z(p.eye_x, p.eye_y) - 0.2 * p.eye_r
        self._nose_y = (p.eye_y + p.mouth_y) * 0.5 - 0.02
        self._nose_z = self._surface_z(0.0, self._nose_y) - 0.02
        self._mouth_z = self._surface_z(0.0, p.mouth_y)

    # ------------------------------------------------------------------ geometry

    def _body(self, x, y, z, jaw, puff, cheeks: bool = True) -> torch.Tensor:
        p = self.params
        c = self._cranium_c
        d = _ellipsoid(x, y - c[1], z - c[2], *p.cranium)
        j = self._jaw_c
        d = _smin(d, _ellipsoid(x, y - j[1] + 0.1 * jaw, z - j[2], *p.jaw), 0.25)
        if cheeks:
            d_cheek = _len3(x.abs() - self._cheek_xy[0], y - self._cheek_xy[1], z - self._cheek_z) - p.cheek_r * (1.0 + 0.5 * puff)
            d = _smin(d, d_cheek, 0.16)
        return d

    def _surface_z(self, x: float, y: float, cheeks: bool = True) -> float:
        """z of the neutral face's front surface at (x, y), by bisection (the point (x, y, 0) is inside)."""
        lo, hi = 0.0, 1.5
        zero = torch.zeros(1)
        xs, ys = torch.full((1,), x), torch.full((1,), y)
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if self._body(xs, ys, torch.full((1,), mid), zero, zero, cheeks).item() > 0:
                hi = mid
            else:
                lo = mid
        return 0.5 * (lo + hi)

    def _sdf(self, x, y, z, e: List[torch.Tensor], parts: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Signed distance bound of the head at points (x, y, z), each (N,), under expressions ``e``
        (E columns of (N,)). When ``parts`` is a dict it receives the component distances for shading."""
        p = self.params
        jaw, smile, blink_l, blink_r, brow, _frown, puff, pucker, shift, _gx, _gy, squint = e
        ax = x.abs()
        d = self._body(x, y, z, jaw, puff)
        # ears
        ec = self._ear_c
        d = _smin(d, _ellipsoid(ax - ec[0], y - ec[1], z - ec[2], 0.055, 0.15 * p.ear_size, 0.1 * p.ear_size), 0.04)
        # neck
        nz, ny, nh = self._neck
        d = _smin(d, torch.maximum(_len2(x, z - nz) - p.neck_r, (y - ny).abs() - nh), 0.2)
        # nose: a bridge ellipsoid and a rounder tip
        s = p.nose_size
        d_nose = _ellipsoid(x, y - self._nose_y - 0.03 * s, z - self._nose_z, 0.07 * s, 0.15 * s, 0.09 * s)
        d_nose = _smin(d_nose, _len3(x, y - self._nose_y + 0.07 * s, z - self._nose_z - 0.07 * s) - 0.05 * s, 0.05)
        d = _smin(d, d_nose, 0.07)
        # eye sockets, carved before the lids and eyeballs go in
        r = p.eye_r
        ex, ey, ez = ax - p.eye_x, y - p.eye_y, z - self._eye_z
        eye_len = _len3(ex, ey, ez)
        d = _smax(d, 1.3 * r - eye_len, 0.06)
        # lips and mouth cavity, in mouth coordinates bent by the smile
        mx = x - 0.07 * shift
        my = y - (p.mouth_y - 0.05 * jaw) - _SMILE_BEND * smile * mx * mx
        lip_rx = p.mouth_w * (1.0 + 0.15 * smile.clamp_min(0.0)) * (1.0 - 0.35 * pucker)
        lip_ry = 0.05 + 0.045 * jaw + 0.02 * pucker
        lip_z = z - (self._mouth_z - 0.05 + 0.05 * pucker)
        d_lip = _ellipsoid(mx, my, lip_z, lip_rx, lip_ry, 0.085 + 0.02 * pucker) * _INV_WARP_L
        d = _smin(d, d_lip, 0.035)
        cav_ry = 0.003 + 0.07 * jaw * (1.0 - 0.5 * pucker)
        d_cav = _ellipsoid(mx, my, z - (self._mouth_z - 0.2), 0.8 * lip_rx, cav_ry, 0.24) * _INV_WARP_L
        d = _smax(d, -d_cav, 0.012)
        # lids: a shell around the eyeball, present above the upper and below the lower lid line
        blink = torch.where(x > 0, blink_l, blink_r)
        upper = r * (0.45 - 1.1 * blink + 0.15 * brow.clamp_min(0.0) - 0.1 * squint)
        lower = r * (-0.5 + 0.35 * squint)
        lid_cut = torch.minimum(upper - ey, ey - lower)
        d_lid = torch.maximum(eye_len - 1.1 * r, lid_cut)
        d = _smin(d, d_lid, 0.015)
        d_ball = eye_len - r
        d = torch.minimum(d, d_ball)
        # hair
        d_hair = self._hair(x, y, z)
        if d_hair is not None:
            d = torch.minimum(d, d_hair)
        if parts is not None:
            parts.update(
                ball=d_ball, lid=d_lid, lip=d_lip, cav=d_cav, upper=upper, ey=ey, ex=ex, ez=ez, mx=mx, my=my,
                cav_ry=cav_ry, hair=d_hair if d_hair is not None else torch.full_like(d, 1e3),
            )
        return d

    def _hair(self, x, y, z) -> Optional[torch.Tensor]:
        p = self.params
        if p.hair_style == "bald":
            return None
        c = self._cranium_c
        t = p.hair_thickness
        rx, ry, rz = p.cranium
        if p.hair_style == "bob":
            shell = _ellipsoid(x, y - c[1] + 0.05, z - c[2] + 0.02, rx + t, ry + t + 0.05, rz + t)
        else:
            shell = _ellipsoid(x, y - c[1], z - c[2] + 0.02, rx + t, ry + t, rz + t)
        if p.hair_style == "curly":
            # Curls: bumps of gradient at most amp * freq, so dividing by 1 + amp * freq keeps a bound.
            amp, freq = 0.03, 9.0
            bumps = amp * torch.sin(freq * x + 1.0) * torch.sin(freq * y + 2.0) * torch.sin(freq * z + 0.5)
            shell = (shell + bumps) / (1.0 + amp * freq)
        slope = 0.5
        # A wavy fringe over the forehead; its slopes (0.44 in x, 0.15 in z) enter the normalisation.
        fringe = 0.04 * torch.sin(11.0 * x + 1.3) * _smoothstep(0.1, 0.5, z)
        above_hairline = (p.hairline + slope * z + fringe - y) / math.sqrt(1.0 + (slope + 0.15) ** 2 + 0.44**2)
        if p.hair_style == "bob":
            behind_face = torch.maximum(z - 0.1, -0.75 - y)
            above_hairline = torch.minimum(above_hairline, behind_face)
        return torch.maximum(shell, above_hairline)

    def sdf(self, points: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Signed distance bound (N,) at ``points`` (N, 3) under ``expression`` (N, E); negative inside."""
        e = [c.contiguous() for c in expression.float().unbind(1)]
        return self._sdf(points[:, 0].contiguous(), points[:, 1].contiguous(), points[:, 2].contiguous(), e)

    # ------------------------------------------------------------------ colour

    def _noise_at(self, x, y, z, scale: float, channels: slice) -> torch.Tensor:
        """Smooth periodic noise in [0, 1] at frequency ``scale``: (C, N) for the channels asked."""
        g = torch.stack([x, y, z], dim=1) * (scale / 8.0)
        g = torch.remainder(g + 1.0, 2.0) - 1.0
        vol = self._noise[:, channels]
        out = F.grid_sample(vol, g.view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="border", align_corners=True)
        return out.view(vol.shape[1], -1)

    def _normals(self, x, y, z, e) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit SDF gradient by the tetrahedron rule (4 evaluations)."""
        h = NORMAL_H
        ks = ((1, -1, -1), (-1, -1, 1), (-1, 1, -1), (1, 1, 1))
        nx = ny = nz = None
        for kx, ky, kz in ks:
            v = self._sdf(x + kx * h, y + ky * h, z + kz * h, e)
            nx = v * kx if nx is None else nx + v * kx
            ny = v * ky if ny is None else ny + v * ky
            nz = v * kz if nz is None else nz + v * kz
        norm = _len3(nx, ny, nz).clamp_min(1e-12)
        return nx / norm, ny / norm, nz / norm

    def shade(self, points: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Colour (N, 3) in [0, 1] of surface points (N, 3) under ``expression`` (N, E).

        A function of the head-space point and the expression only (lighting is fixed to the head).
        """
        e = [c.contiguous() for c in expression.float().unbind(1)]
        return self._shade(points[:, 0].contiguous(), points[:, 1].contiguous(), points[:, 2].contiguous(), e)

    def _shade(self, x, y, z, e) -> torch.Tensor:
        p = self.params
        n = x.shape[0]
        parts: Dict[str, torch.Tensor] = {}
        d = self._sdf(x, y, z, e, parts)
        nx, ny, nz = self._normals(x, y, z, e)
        _, _, _, _, brow, frown, puff, _, _, gx, gy, _ = e
        ax = x.abs()
        tol = 2e-3

        # --- skin with the identity's pattern
        noise = self._noise_at(x, y, z, 3.0, slice(0, 2))
        fine = self._noise_at(x, y, z, p.pattern_scale * 2.5, slice(2, 4))
        skin = _colour(p.skin, n) * (0.9 + 0.2 * noise[0])[:, None]
        paint = _colour(p.pattern_colour, n)
        if p.pattern == "freckles":
            w = _smoothstep(0.62, 0.7, fine[0]) * _smoothstep(0.1, 0.5, z) * 0.8
        elif p.pattern == "stripes":
            dx, dy, dz = p.pattern_direction
            s = torch.sin(p.pattern_scale * 2.2 * (dx * x + dy * y + dz * z) + 3.0 * noise[1])
            w = _smoothstep(0.35, 0.5, s) * 0.85
        elif p.pattern == "spots":
            w = _smoothstep(0.58, 0.64, self._noise_at(x, y, z, p.pattern_scale, slice(1, 2))[0]) * 0.7
        else:  # mottled
            w = _smoothstep(0.3, 0.8, fine[1]) * 0.6
        skin = _mix(skin, paint, w)
        # cheek blush grows with the puff
        blush = torch.exp(-((ax - 0.33) ** 2 + (y + 0.18) ** 2) / 0.012) * (0.25 + 0.35 * puff) * (z > 0.2)
        skin = _mix(skin, _colour((0.85, 0.35, 0.35), n), blush)
        # beard
        if p.beard:
            beard = _smoothstep(p.mouth_y + 0.1, p.mouth_y - 0.02, y) * (z > 0.05) * _smoothstep(0.35, 0.55, fine[1] + 0.3)
            skin = _mix(skin, _colour(p.hair, n) * (0.8 + 0.3 * fine[0])[:, None], beard)
        # brows: bands above the eyes, raised by brow_raise, inner ends pulled down by brow_frown
        bx = parts["ex"]
        inner = (-bx / 0.13).clamp(0.0, 1.0)
        by = y - (p.eye_y + p.brow_offset + 0.07 * brow - 0.05 * frown * inner - 0.25 * bx * bx)
        along = (bx / 0.14).clamp(-1.0, 1.0)
        band = (by.abs() < p.brow_thickness * (1.0 - 0.6 * along * along)) & (bx.abs() < 0.14) & (z > 0.2)
        skin = torch.where(band[:, None], _colour(p.hair, n) * 0.8, skin)

        albedo = skin
        # --- lips, with a dark line where they meet
        is_lip = parts["lip"] <= d + tol
        lip = _colour(p.lips, n) * (1.0 - 0.5 * torch.exp(-(parts["my"] / 0.012) ** 2))[:, None]
        albedo = torch.where(is_lip[:, None], lip, albedo)
        # --- mouth cavity: teeth on the upper front wall, tongue below, dark throat
        is_mouth = parts["cav"] < tol
        rel = parts["my"] / parts["cav_ry"]
        mouth = torch.where(
            (rel > 0.6)[:, None],
            _colour((0.92, 0.90, 0.84), n),
            torch.where((rel < -0.65)[:, None], _colour((0.62, 0.22, 0.24), n), _colour((0.10, 0.02, 0.03), n)),
        )
        albedo = torch.where(is_mouth[:, None], mouth, albedo)
        # --- lids (skin, a little darker) with a lash line at the upper edge
        is_lid = (parts["lid"] <= d + tol) & ~is_mouth
        lash = (parts["ey"] - parts["upper"]).abs() < 0.012
        lid = torch.where(lash[:, None], _colour((0.06, 0.05, 0.05), n), skin * 0.88)
        albedo = torch.where(is_lid[:, None], lid, albedo)
        # --- eyeballs: white, iris and pupil around the gaze direction
        is_ball = parts["ball"] <= d + tol
        sx = torch.where(x > 0, torch.ones_like(x), -torch.ones_like(x))
        gvx, gvy, gvz = 0.45 * gx * sx, 0.35 * gy, torch.ones_like(x)  # mirrored: ex points away from the nose
        gl = _len3(gvx, gvy, gvz)
        el = _len3(parts["ex"], parts["ey"], parts["ez"]).clamp_min(1e-9)
        cos = (parts["ex"] * gvx + parts["ey"] * gvy + parts["ez"] * gvz) / (el * gl)
        iris_pattern = 0.75 + 0.25 * torch.sin(40.0 * (parts["ex"] + parts["ey"]))
        eye = torch.where(
            (cos > 0.985)[:, None],
            _colour((0.03, 0.03, 0.04), n),
            torch.where((cos > 0.9)[:, None], _colour(p.iris, n) * iris_pattern[:, None], _colour((0.94, 0.94, 0.91), n)),
        )
        albedo = torch.where(is_ball[:, None], eye, albedo)
        # --- hair, with strands
        is_hair = parts["hair"] <= d + tol
        azimuth = torch.atan2(x, z - self._cranium_c[2])
        strands = 0.8 + 0.3 * torch.sin(28.0 * azimuth + 4.0 * noise[1] + 3.0 * y) * (0.4 + fine[0])
        albedo = torch.where(is_hair[:, None], _colour(p.hair, n) * strands.clamp(0.4, 1.3)[:, None], albedo)
        # neck a little darker
        albedo = albedo * (1.0 - 0.15 * _smoothstep(-0.55, -0.8, y))[:, None]

        # --- lighting fixed to the head
        lk = torch.tensor(_LIGHT_KEY) / torch.linalg.vector_norm(torch.tensor(_LIGHT_KEY))
        lf = torch.tensor(_LIGHT_FILL) / torch.linalg.vector_norm(torch.tensor(_LIGHT_FILL))
        key = (nx * lk[0] + ny * lk[1] + nz * lk[2]).clamp_min(0.0)
        fill = (nx * lf[0] + ny * lf[1] + nz * lf[2]).clamp_min(0.0)
        light = 0.30 + 0.10 * ny + 0.62 * key + 0.22 * fill
        # The mouth cavity gets little light (a fixed occlusion factor, still a function of the point).
        light = torch.where(is_mouth, light * 0.45, light)
        return (albedo * light[:, None]).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ tracing

    def _step(self, piece: _Piece, last: bool, pixel_angle: Optional[float]):
        """One sphere-tracing step of a piece: (remaining piece or None, hits (idx, t), crossings (idx, lo, hi))."""
        (ox, oy, oz), (dx, dy, dz), t = piece.o, piece.d, piece.t
        dist = self._sdf(ox + t * dx, oy + t * dy, oz + t * dz, piece.e)
        converged = dist.abs() < HIT_EPS
        if last:
            converged = converged | (dist.abs() < GRAZE_EPS)
        inside = (dist < 0) & ~converged
        escaped = (t > piece.tf) & ~converged & ~inside
        hits = (piece.idx[converged], t[converged])
        # The previous position was outside: rays stop at their first inside position.
        crossings = (piece.idx[inside], (t - piece.prev)[inside], t[inside])
        if last:
            return None, hits, crossings
        if pixel_angle is None:
            floor = torch.full_like(dist, MIN_STEP)
        else:
            floor = (MIN_STEP_PIXELS * pixel_angle * t).clamp_min_(MIN_STEP)
        piece.prev = torch.maximum(STEP_SCALE * dist, floor)
        piece.t = t + piece.prev
        keep = torch.nonzero(~(converged | inside | escaped)).squeeze(1)
        if keep.numel() == 0:
            return None, hits, crossings
        return (piece if keep.numel() == len(piece) else piece.take(keep)), hits, crossings

    def _bisect(self, o: torch.Tensor, d: torch.Tensor, expression: torch.Tensor, ray, lo, hi) -> torch.Tensor:
        """Surface distance between an outside ``lo`` and an inside ``hi`` (n,) of rays ``ray`` (n,)."""
        ox, oy, oz = (o[ray, k].contiguous() for k in range(3))
        dx, dy, dz = (d[ray, k].contiguous() for k in range(3))
        e = [expression[ray, k].contiguous() for k in range(expression.shape[1])]
        for _ in range(BISECT_STEPS):
            mid = 0.5 * (lo + hi)
            out = self._sdf(ox + mid * dx, oy + mid * dy, oz + mid * dz, e) > 0
            lo = torch.where(out, mid, lo)
            hi = torch.where(out, hi, mid)
        return 0.5 * (lo + hi)

    def trace(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        expression: torch.Tensor,
        pixel_angle: Optional[float] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sphere-trace rays to the head surface.

        Rays march only inside the head's bounds (:data:`HEAD_BOUND`, :data:`NECK_BOX`). Each step advances
        ``STEP_SCALE`` times the distance bound, but at least :data:`MIN_STEP` (or :data:`MIN_STEP_PIXELS`
        pixel footprints at the ray's distance when ``pixel_angle`` is given) so that rays grazing a
        silhouette do not crawl. A ray stops when its bound falls below :data:`HIT_EPS` (hit), when the bound
        turns negative (it crossed the surface: hit, located by bisection between its last outside and first
        inside positions), or when it leaves the bounds (miss). Rays still marching after :data:`MAX_STEPS`
        are hits when within :data:`GRAZE_EPS`.

        Args:
            origins, directions: (N, 3), directions unit length, head space.
            expression: (N, E) expression per ray.
            pixel_angle: angle between neighbouring pixels' rays (about 1 / focal length in pixels), or None.

        Returns:
            ``hit (N,)`` bool and ``t (N,)`` float32 distance to the surface (meaningful where hit).
        """
        o = origins.float().contiguous()
        dvec = directions.float().contiguous()
        expression = expression.float()
        n = o.shape[0]
        near, far = _bounds(o, dvec)
        hit = torch.zeros(n, dtype=torch.bool)
        t_out = torch.zeros(n)
        todo = torch.nonzero(far > near).squeeze(1)
        if todo.numel() == 0:
            return hit, t_out
        pieces = []
        for a, b in _split(todo.numel(), PIECE_RAYS):
            idx = todo[a:b]
            pieces.append(
                _Piece(
                    idx, [o[idx, k].contiguous() for k in range(3)], [dvec[idx, k].contiguous() for k in range(3)],
                    near[idx].contiguous(), far[idx].contiguous(), torch.zeros(b - a),
                    [expression[idx, k].contiguous() for k in range(expression.shape[1])],
                )
            )
        crossed = []
        for step in range(MAX_STEPS):
            last = step == MAX_STEPS - 1
            remaining = []
            for piece in pieces:
                piece, (h_idx, h_t), crossing = self._step(piece, last, pixel_angle)
                hit[h_idx] = True
                t_out[h_idx] = h_t
                if crossing[0].numel():
                    crossed.append(crossing)
                if piece is not None:
                    remaining.append(piece)
            if not remaining:
                break
            pieces = _merge(remaining, PIECE_RAYS)
        if crossed:
            ray, lo, hi = (torch.cat(v) for v in zip(*crossed))
            for a, b in _split(ray.numel(), PIECE_RAYS):
                hit[ray[a:b]] = True
                t_out[ray[a:b]] = self._bisect(o, dvec, expression, ray[a:b], lo[a:b], hi[a:b])
        return hit, t_out

    def render_rays(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        expression: torch.Tensor,
        chunk_rays: int = 524288,
        pixel_angle: Optional[float] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Trace and shade rays.

        Args:
            origins, directions: (N, 3) head space, unit directions.
            expression: (N, E).
            chunk_rays: rays traced at once (memory bound; the result does not depend on it).
            pixel_angle: angle between neighbouring pixels' rays, or None (see :meth:`trace`).

        Returns:
            ``rgb (N, 3)`` in [0, 1] (0 where missed), ``hit (N,)`` bool, ``points (N, 3)`` surface points
            (0 where missed).
        """
        n = origins.shape[0]
        rgb = torch.zeros(n, 3)
        hit = torch.zeros(n, dtype=torch.bool)
        pts = torch.zeros(n, 3)
        for a, b in _split(n, max(1, chunk_rays)):
            o, d, ex = origins[a:b].float(), directions[a:b].float(), expression[a:b].float()
            h, t = self.trace(o, d, ex, pixel_angle)
            sel = torch.nonzero(h).squeeze(1)
            if sel.numel():
                p = o[sel] + t[sel, None] * d[sel]
                rgb[a + sel] = torch.cat([self.shade(p[i:j], ex[sel[i:j]]) for i, j in _split(sel.numel(), PIECE_RAYS)])
                pts[a + sel] = p
            hit[a:b] = h
        return rgb, hit, pts

    def render_frames(
        self,
        c2w: torch.Tensor,
        intrinsics: torch.Tensor,
        width: int,
        height: int,
        expression: torch.Tensor,
        chunk_rays: int = 524288,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Render B frames of this head over a transparent background.

        Args:
            c2w: (B, 4, 4) camera-to-head transforms.
            intrinsics: (4,) or (B, 4) ``[fx, fy, cx, cy]`` in pixels.
            width, height: frame size W, H.
            expression: (B, E).
            chunk_rays: rays traced at once (memory bound; the result does not depend on it).

        Returns:
            ``rgb (B, H, W, 3)`` float32 in [0, 1] (0 where the head is absent) and ``hit (B, H, W)`` bool.
        """
        b = c2w.shape[0]
        intr = torch.as_tensor(intrinsics, dtype=torch.float32)
        if intr.ndim == 1:
            intr = intr.expand(b, 4)
        expression = torch.as_tensor(expression, dtype=torch.float32)
        rays = [camera_rays(c2w[f].float(), intr[f], width, height) for f in range(b)]
        o = torch.cat([r[0] for r in rays])
        d = torch.cat([r[1] for r in rays])
        ex = expression.repeat_interleave(width * height, dim=0)
        angle = 1.0 / float(intr[:, :2].max())
        rgb, hit, _ = self.render_rays(o, d, ex, chunk_rays=chunk_rays, pixel_angle=angle)
        return rgb.view(b, height, width, 3), hit.view(b, height, width)

