"""The MI-NeRF field shared by all identities: hash-grid features and small MLP heads, conditioned on the
identity and the expression through the multiplicative module.

::

    per ray (N):     m = M(e, i)            (N, C)   multiplicative (or concat) conditioning
                     c = [m, f]             (N, C + Cf)  with the frame code f
    per sample (S):  x = x + D(x, c)                     optional conditioned deformation (``deform_layers``)
                     h = grid(x, id)        (S, L*F)     hash-grid features of the sample point (the finest
                                                         ``identity_levels`` levels also hash the identity id)
                     sigma, g, u = density_head(h, c)     density (S,), geometry feature (S, G), and with
                                                         ``texture_flow`` a flow u (S, 3)
                     t = texture(x + s tanh(u), id)      the colour head's own per-person levels
                                                         (``identity_levels_for: colour``), read where the flow
                                                         moves the point (``s = texture_flow``; 0: at x)
                     rgb = color_head([g, t], [c, SH(d)])  colour (S, 3)

The conditioning enters both heads: expressions change geometry (the mouth opens, the eyes close), so the
density depends on it, not only the colour. Conditioning is per ray, so the part of each head's first layer
that reads it is computed once per ray and gathered per sample (``W [h; c] = W_h h + (W_c c)[ray]``): the
same function as concatenating ``c`` to every sample, at a fraction of the cost. The view direction is per ray
too, so its spherical harmonics join the per-ray inputs of the colour head.

Shapes: N rays, S samples, E expression size, D identity-code size, C conditioning width, Cf frame-code size,
L*F grid features, G geometry-feature size.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
from torch import nn

from . import backend as _backend
from .config import FieldConfig
from .nn import HashGridEncoding
from .ops import mlp_head, per_level_scale_for
from .ops.mlp_head import MAX_HIDDEN

__all__ = [
    "ConcatConditioning",
    "MINeRFField",
    "MultiplicativeConditioning",
    "build_conditioning",
    "spherical_harmonics",
]

MAX_LOG_DENSITY = 15.0
"""Raw densities are clamped here before ``exp`` (exp(15) ~ 3.3e6 is opaque at any step size) so that a
large raw value cannot overflow."""


def spherical_harmonics(directions: torch.Tensor, degree: int) -> torch.Tensor:
    """Real spherical harmonics of unit directions (N, 3) -> (N, degree**2), degree in 0..4 (tiny-cuda-nn's
    ``SphericalHarmonics`` constants and order, on the directions themselves, not remapped to [0, 1])."""
    if not 0 <= degree <= 4:
        raise ValueError(f"sh_degree must be in 0..4, got {degree}")
    n = directions.shape[0]
    if degree == 0:
        return directions.new_zeros(n, 0)
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            1.0925484305920792 * xy,
            -1.0925484305920792 * yz,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * xz,
            0.54627421529603959 * (xx - yy),
        ]
    if degree > 3:
        out += [
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * xy * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


class MultiplicativeConditioning(nn.Module):
    """MI-NeRF's multiplicative module: expression e (N, E) and identity code i (N, D) -> m (N, C).

    Degree 2: ``m = (A e) * (B i) + C e + D i + b`` (``*`` element-wise; A, B, C, D, b shared by all
    identities). Degree n > 2 continues the Pi-net recursion ``x_k = (U_k z) * x_(k-1) + x_(k-1)`` with
    ``z = [e, i]``, so ``m`` is a polynomial of degree n in (e, i).
    """

    def __init__(self, expression_dim: int, identity_dim: int, out_dim: int, degree: int = 2) -> None:
        super().__init__()
        if degree < 2:
            raise ValueError(f"the multiplicative module needs degree >= 2, got {degree}")
        with warnings.catch_warnings():  # E = 0 (identity codes alone, DATASET.md): A has no weight to initialise
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
            self.A = nn.Linear(expression_dim, out_dim, bias=False)
        self.B = nn.Linear(identity_dim, out_dim, bias=False)
        self.linear = nn.Linear(expression_dim + identity_dim, out_dim)  # C e + D i + b in one matrix
        self.higher = nn.ModuleList(nn.Linear(expression_dim + identity_dim, out_dim, bias=False) for _ in range(degree - 2))
        self.out_dim = out_dim

    def forward(self, expression: torch.Tensor, identity_code: torch.Tensor) -> torch.Tensor:
        """e (N, E), i (N, D) -> m (N, C)."""
        z = torch.cat([expression, identity_code], dim=-1)
        m = self.A(expression) * self.B(identity_code) + self.linear(z)
        for u in self.higher:
            m = u(z) * m + m
        return m


class ConcatConditioning(nn.Module):
    """The ablation baseline: ``m = C e + D i + b``, a linear map of ``[e, i]`` with no product term (an MLP
    reading ``m`` sees exactly what it would see reading ``[e, i]`` through its first layer)."""

    def __init__(self, expression_dim: int, identity_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(expression_dim + identity_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, expression: torch.Tensor, identity_code: torch.Tensor) -> torch.Tensor:
        """e (N, E), i (N, D) -> m (N, C)."""
        return self.linear(torch.cat([expression, identity_code], dim=-1))


def build_conditioning(cfg: FieldConfig, expression_dim: int) -> nn.Module:
    """The conditioning module named by ``cfg.conditioning``."""
    if cfg.conditioning == "multiplicative":
        return MultiplicativeConditioning(expression_dim, cfg.identity_code_dim, cfg.conditioning_dim, cfg.conditioning_degree)
    if cfg.conditioning == "concat":
        return ConcatConditioning(expression_dim, cfg.identity_code_dim, cfg.conditioning_dim)
    raise ValueError(f"model.field.conditioning must be 'multiplicative' or 'concat', got {cfg.conditioning!r}")


class _GatherRows(torch.autograd.Function):
    """``rows.index_select(0, index)`` whose backward is one ``index_add_`` into zeros: 3-4x faster on the CPU than
    autograd's own backward of ``index_select`` for (S, hidden) gradients gathered from N << S rows."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.n_rows = rows.shape[0]
        return rows.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.n_rows, grad.shape[1]).index_add_(0, index, grad.contiguous()), None


def _mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    mods = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class _SplitInputHead(nn.Module):
    """An MLP on ``[per-sample input (S, P), per-ray conditioning (N, K)[ray]]`` whose first layer reads the
    conditioning once per ray. ``layers >= 1`` hidden layers of width ``hidden``.

    With one hidden layer of at most :data:`fastminerf.ops.mlp_head.MAX_HIDDEN` units and no modulation it is the fused
    head of ``fastminerf.ops.mlp_head`` (native kernels where the ``head`` component of ``backend`` resolves to them):
    the same function and parameters."""

    def __init__(self, sample_dim: int, cond_dim: int, hidden: int, layers: int, out_dim: int,
                 modulate: bool = False, backend: str = "torch") -> None:
        super().__init__()
        if layers < 1:
            raise ValueError("a head needs at least one hidden layer")
        self.first = nn.Linear(sample_dim, hidden)
        self.cond = nn.Linear(cond_dim, hidden, bias=False) if cond_dim > 0 else None
        self.scale = None
        if modulate and cond_dim > 0:
            self.scale = nn.Linear(cond_dim, hidden, bias=False)
            nn.init.zeros_(self.scale.weight)  # starts as the plain additive head
        self.rest = _mlp(hidden, hidden, layers - 1, out_dim)
        self.backend = backend
        why = ([f"{layers} hidden layers"] if layers != 1 else []) + (["no per-ray input"] if self.cond is None else [])
        why += ["modulated"] if self.scale is not None else []
        # wider than the native kernel takes (MAX_HIDDEN units), the same function runs unfused, as torch's
        why += [f"{hidden} hidden units, beyond the fused kernel's {MAX_HIDDEN}"] if hidden > MAX_HIDDEN else []
        self.unfused: Optional[str] = ", ".join(why) or None
        """Why the head runs as torch ops whatever the backend (None: it is the fused head)."""
        self.fusable = not why

    def forward(self, x: torch.Tensor, cond: torch.Tensor, ray_indices: Optional[torch.Tensor]) -> torch.Tensor:
        if self.fusable and _backend.resolve(self.backend, "head", x.device.type) == "native":
            pre = torch.nn.functional.linear(cond, self.cond.weight, self.first.bias)  # (N, hidden): once per ray
            last = self.rest[-1]
            return mlp_head(x, pre, ray_indices, self.first.weight, last.weight, last.bias)
        h = self.first(x)
        if self.cond is not None:
            c = self.cond(cond)  # (N, hidden): once per ray
            if self.scale is not None:
                c = torch.cat([c, 1.0 + self.scale(cond)], -1)
            c = c if ray_indices is None else _GatherRows.apply(c, ray_indices)
            if self.scale is not None:
                shift, scale = c.chunk(2, -1)
                h = torch.addcmul(shift, h, scale)
            else:
                h = h + c
        return self.rest(torch.relu(h))


class _Deformation(nn.Module):
    """``x' = clamp(x + D([enc(x), c]), 0, 1)``: the conditioned deformation of sample points (S, 3) in [0, 1]^3
    before the grid lookups; ``enc`` is the frequency encoding of the point, ``c`` the per-ray conditioning. The
    last layer is zero-initialised, so training starts from the undeformed field."""

    def __init__(self, cond_dim: int, hidden: int, layers: int, frequencies: int) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32), persistent=False)
        self.mlp = _SplitInputHead(3 + 6 * frequencies, cond_dim, hidden, layers, 3)
        last = self.mlp.rest[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, points: torch.Tensor, cond: torch.Tensor, ray_indices: Optional[torch.Tensor]) -> torch.Tensor:
        angles = (points[:, :, None] * self.freqs.to(points.dtype)).flatten(1)  # (S, 3 * K)
        enc = torch.cat([points, torch.sin(angles), torch.cos(angles)], -1)
        return (points + self.mlp(enc, cond, ray_indices)).clamp(0.0, 1.0)


def heads_backend(backend: str, heads, device_type: str) -> str:
    """What computes the heads ``(name, _SplitInputHead)`` on ``device_type``: the ``head`` component of ``backend``,
    or, where that is native, which heads run fused and which as torch ops, and why (``fastminerf info``)."""
    which = _backend.resolve(backend, "head", device_type)
    if which != "native":
        return which
    fused = [name for name, head in heads if head.fusable]
    unfused: dict = {}
    for name, head in heads:
        if not head.fusable:
            unfused.setdefault(head.unfused, []).append(name)
    if not unfused:
        return "native"

    def named(names):
        return f"{' and '.join(names)} head{'s' if len(names) > 1 else ''}"

    return ", ".join(([f"native ({named(fused)})"] if fused else [])
                     + [f"torch ({named(names)}: {why})" for why, names in unfused.items()])


class MINeRFField(nn.Module):
    """The shared field: points in [0, 1]^3, view directions and per-ray conditioning -> density and colour.

    Args:
        cfg: :class:`fastminerf.config.FieldConfig`.
        expression_dim: E.

    Memory: the hash grid (``4 * F * sum_l T_l`` bytes) and the heads are shared by all identities; nothing in
    the field grows with the number of identities (identity and frame codes live in the model).
    """

    def __init__(self, cfg: FieldConfig, expression_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.expression_dim = expression_dim
        self.encoding = HashGridEncoding(  # the coarsest density_levels levels of the pyramid (all when 0)
            n_levels=cfg.density_levels or cfg.n_levels,
            n_features_per_level=cfg.n_features_per_level,
            log2_hashmap_size=cfg.log2_hashmap_size,
            base_resolution=cfg.base_resolution,
            per_level_scale=per_level_scale_for(cfg.base_resolution, cfg.finest_resolution, cfg.n_levels),
            backend=cfg.backend,
            identity_levels=cfg.identity_levels if cfg.identity_levels_for == "all" else 0,
        )
        self.colour_encoding = None  # identity levels read by the colour head only (identity_levels_for: colour)
        if cfg.identity_levels_for == "colour" and cfg.identity_levels > 0:
            if cfg.identity_levels > cfg.n_levels:  # would start below base_resolution: refused as with `all`
                raise ValueError(f"identity_levels must be in 0..n_levels ({cfg.n_levels}), got {cfg.identity_levels}")
            k, scale = cfg.identity_levels, per_level_scale_for(cfg.base_resolution, cfg.finest_resolution, cfg.n_levels)
            self.colour_encoding = HashGridEncoding(
                n_levels=k, n_features_per_level=cfg.n_features_per_level, log2_hashmap_size=cfg.log2_hashmap_size,
                base_resolution=int(round(cfg.base_resolution * scale ** (cfg.n_levels - k))), per_level_scale=scale,
                backend=cfg.backend, identity_levels=k)
        if cfg.density_levels and self.colour_encoding is None:
            raise ValueError("model.field.density_levels needs the colour head's own fine levels: set "
                             "model.field.identity_levels > 0 and model.field.identity_levels_for: colour")
        colour_extra = self.colour_encoding.output_dim if self.colour_encoding is not None else 0
        self.conditioning = build_conditioning(cfg, expression_dim)
        self.cond_dim = cfg.conditioning_dim + cfg.frame_code_dim  # C + Cf, the per-ray input of both heads
        self.deformation = (_Deformation(self.cond_dim, cfg.hidden_dim, cfg.deform_layers, cfg.deform_frequencies)
                            if cfg.deform_layers > 0 else None)
        if cfg.texture_flow < 0:
            raise ValueError(f"model.field.texture_flow must be >= 0, got {cfg.texture_flow}")
        if cfg.texture_flow > 0 and self.colour_encoding is None:
            raise ValueError("model.field.texture_flow moves the colour head's own grid lookup: set "
                             "model.field.identity_levels > 0 and model.field.identity_levels_for: colour")
        self.flow_dim = 3 if cfg.texture_flow > 0 else 0
        self.density_head = _SplitInputHead(
            self.encoding.output_dim, self.cond_dim, cfg.hidden_dim, cfg.density_layers,
            1 + cfg.geo_feature_dim + self.flow_dim, modulate=cfg.modulate, backend=cfg.backend,
        )
        if self.flow_dim:  # the flow starts at zero: the unmoved texture
            last = self.density_head.rest[-1]
            with torch.no_grad():
                last.weight[-3:].zero_()
                last.bias[-3:].zero_()
        # The view direction is the same for every sample of a ray, so its SH enter with the per-ray inputs.
        self.color_head = _SplitInputHead(
            cfg.geo_feature_dim + colour_extra, self.cond_dim + cfg.sh_degree**2, cfg.hidden_dim, cfg.color_layers, 3,
            modulate=cfg.modulate, backend=cfg.backend,
        )

    def condition(self, expression: torch.Tensor, identity_code: torch.Tensor, frame_code: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-ray conditioning ``[M(s e, i), f]``: e (N, E), i (N, D), f (N, Cf) or None -> (N, C + Cf)."""
        if expression.shape[-1] != self.expression_dim:
            raise ValueError(f"expressions have length {expression.shape[-1]} but the model was built for {self.expression_dim}")
        m = self.conditioning(expression * self.cfg.expression_scale, identity_code)
        if self.cfg.frame_code_dim == 0:
            return m
        if frame_code is None:
            frame_code = m.new_zeros(m.shape[0], self.cfg.frame_code_dim)
        return torch.cat([m, frame_code], dim=-1)

    def _density(self, points: torch.Tensor, cond: torch.Tensor, ray_indices: Optional[torch.Tensor],
                 identity: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Density (S,), the density head's other outputs (S, G + flow_dim: the geometry feature, then the raw
        texture flow when ``texture_flow`` > 0) and the (deformed) points the grids read (S, 3)."""
        if self.deformation is not None:
            points = self.deformation(points, cond, ray_indices)
        salt = self._salt(identity, ray_indices) if self.cfg.identity_levels_for == "all" else None
        h = self.encoding(points, salt)
        out = self.density_head(h, cond, ray_indices)
        raw = out[:, 0] + self.cfg.density_bias
        sigma = torch.exp(raw.clamp(max=MAX_LOG_DENSITY))
        return sigma, out[:, 1:], points

    def _salt(self, identity: Optional[torch.Tensor], ray_indices: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Per-sample identity ids for the identity levels (None when there are none)."""
        if self.cfg.identity_levels == 0:
            return None
        if identity is None:
            raise ValueError("this field has identity levels (model.field.identity_levels > 0): pass the identity "
                             "id of each conditioning row")
        identity = identity.to(torch.int32)  # the kernels' salt type, cast per ray rather than per sample
        return identity if ray_indices is None else identity.index_select(0, ray_indices)

    def density(self, points: torch.Tensor, cond: torch.Tensor, ray_indices: Optional[torch.Tensor] = None,
                identity: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Density (S,) at points (S, 3) in [0, 1]^3 under conditioning rows ``cond[ray_indices]`` ((N, C+Cf)
        and (S,) int64; ``ray_indices=None`` when ``cond`` has one row per point); ``identity`` (N,) int64 is the
        identity id of each conditioning row (needed with identity levels)."""
        return self._density(points, cond, ray_indices, identity)[0]

    def forward(
        self, points: torch.Tensor, directions: torch.Tensor, cond: torch.Tensor, ray_indices: Optional[torch.Tensor] = None,
        identity: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """points (S, 3) in [0, 1]^3, cond (N, C+Cf), unit directions (N, 3) and identity ids (N,) per conditioning
        row (the rays), ray_indices (S,) (None: one row per point) -> density (S,), rgb (S, 3) in [0, 1]."""
        sigma, geo, points = self._density(points, cond, ray_indices, identity)
        return sigma, self.colour(geo, points, directions, cond, ray_indices, identity)

    def density_features(self, points: torch.Tensor, cond: torch.Tensor, ray_indices: Optional[torch.Tensor] = None,
                         identity: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The density pass of :meth:`forward` alone: density (S,), the density head's other outputs (S, F) and the
        points the grids read (S, 3); :meth:`colour` takes the last two (rows may be selected in between)."""
        return self._density(points, cond, ray_indices, identity)

    def colour(self, geo: torch.Tensor, points: torch.Tensor, directions: torch.Tensor, cond: torch.Tensor,
               ray_indices: Optional[torch.Tensor] = None, identity: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The colour pass of :meth:`forward` from :meth:`density_features`' outputs: rgb (S, 3) in [0, 1]."""
        if self.colour_encoding is not None:  # per-person texture for the colour head only
            if self.flow_dim:
                geo, flow = geo.split([self.cfg.geo_feature_dim, self.flow_dim], dim=-1)
                # contiguous first: tanh over the split's strided columns runs 2-3x slower (the same numbers)
                points = (points + self.cfg.texture_flow * torch.tanh(flow.contiguous())).clamp(0.0, 1.0)
            geo = torch.cat([geo, self.colour_encoding(points, self._salt(identity, ray_indices))], -1)
        view = torch.cat([cond, spherical_harmonics(directions, self.cfg.sh_degree)], dim=-1)  # (N, C+Cf+SH)
        return torch.sigmoid(self.color_head(geo, view, ray_indices))
