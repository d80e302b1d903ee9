"""The NeRFace backbone MI-NeRF was built on, kept as the speed baseline (``ModelConfig.backbone = "nerface"``).

The same MI-NeRF model (identity codes, frame codes, the multiplicative module, background compositing, training
loop and checkpoints) with NeRFace's field and sampling in place of the hash grid and occupancy-grid marching::

    per ray (N):    c = [M(e, i), f]                      (N, C + Cf)  the same conditioning as the fast field
                    t_c ~ stratified in [near, far]        (N, S_c)     S_c = coarse_samples
    coarse:         sigma_c, rgb_c = MLP_c(PE(x(t_c)), c, PE(d))        -> weights w_c, rgb_coarse
                    t_f ~ inverse CDF of w_c               (N, S_f)     S_f = fine_samples (hierarchical sampling)
    fine:           sigma, rgb = MLP_f(PE(x(sort[t_c, t_f])), c, PE(d)) -> rgb
    both:           rgb = sum_i w_i rgb_i + (1 - sum_i w_i) background

Each MLP is NeRF's: ``depth`` ReLU layers of ``width`` on the positional encoding of the point (``position_frequencies``,
input included), the input concatenated again at ``skip_layer``, a density output (ReLU) and a feature that joins the
encoded view direction in one ``color_width`` layer before the sigmoid colour. NeRFace concatenates its expression
and latent code to the point input; here the conditioning vector ``c`` takes their place (the MI-NeRF way), entering
the first and the skip layer. Since ``c`` and the view direction are the same for every sample of a ray, the part of a
layer that reads them is computed once per ray and broadcast over the samples (``W [x; c] = W_x x + W_c c``): the
same function as concatenating them to every sample, and cheaper, so the baseline is not slowed by our choice.

Plain PyTorch: no occupancy grid (the model keeps its grid buffers, unused), no native kernels. The training loss adds
the MSE of ``rgb_coarse`` (:func:`fastminerf.train.train` does when the model returns it), as NeRF and NeRFace do.
Training jitters the stratified samples with torch's global generator (seeded with ``train.seed`` by ``train``,
with ``train.seed + 2`` by ``personalize``), whose state checkpoints hold, so a resumed ``nerface`` run is
bit-identical to an uninterrupted one on the CPU, as a fast one is.

Shapes: N rays, S samples per ray (S_c coarse, S_c + S_f fine), P / Q encoded point / direction size, K = C + Cf.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from .config import FieldConfig, NeRFaceConfig
from .field import MINeRFField, build_conditioning

__all__ = ["NeRFaceField", "NeRFaceMLP", "positional_encoding", "sample_pdf"]


def positional_encoding(x: torch.Tensor, frequencies: int) -> torch.Tensor:
    """NeRF's encoding ``[x, sin(2^k x), cos(2^k x)]`` for k < ``frequencies``: (..., 3) -> (..., 3 + 6 * frequencies)."""
    out = [x]
    for k in range(frequencies):
        out += [torch.sin(x * (2.0**k)), torch.cos(x * (2.0**k))]
    return torch.cat(out, dim=-1)


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n_samples: int, deterministic: bool) -> torch.Tensor:
    """NeRF's hierarchical sampling: ``n_samples`` distances per ray drawn by inverse CDF from piecewise-constant
    weights (N, B) over bins with edges (N, B + 1); evenly spaced quantiles when ``deterministic``. -> (N, n_samples)."""
    weights = weights + 1e-5  # no zero-probability ray
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # (N, B + 1)
    if deterministic:
        u = torch.linspace(0.0, 1.0, n_samples, dtype=bins.dtype, device=bins.device).expand(cdf.shape[0], n_samples)
    else:
        u = torch.rand(cdf.shape[0], n_samples, dtype=bins.dtype, device=bins.device)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below = (idx - 1).clamp(min=0)
    above = idx.clamp(max=cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(1, below), cdf.gather(1, above)
    bin_lo, bin_hi = bins.gather(1, below), bins.gather(1, above)
    denom = torch.where(cdf_hi - cdf_lo < 1e-5, torch.ones_like(cdf_lo), cdf_hi - cdf_lo)
    return bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)


class NeRFaceMLP(nn.Module):
    """One NeRF MLP (coarse or fine) with per-ray conditioning: encoded points (N, S, P), conditioning (N, K), encoded
    directions (N, Q) -> density (N, S) >= 0, rgb (N, S, 3) in [0, 1]."""

    def __init__(self, cfg: NeRFaceConfig, cond_dim: int) -> None:
        super().__init__()
        if not 0 < cfg.skip_layer < cfg.depth:
            raise ValueError(f"model.nerface.skip_layer must be in 1..depth-1, got {cfg.skip_layer}")
        p = 3 + 6 * cfg.position_frequencies
        q = 3 + 6 * cfg.direction_frequencies
        w = cfg.width
        self.skip = cfg.skip_layer
        self.layers = nn.ModuleList(
            nn.Linear(p if k == 0 else (w + p if k == self.skip else w), w) for k in range(cfg.depth)
        )
        # The conditioning's share of the first and the skip layer (no bias: the point part has it).
        self.cond_in = nn.Linear(cond_dim, w, bias=False)
        self.cond_skip = nn.Linear(cond_dim, w, bias=False)
        self.sigma = nn.Linear(w, 1)
        self.feature = nn.Linear(w, w)
        self.view = nn.Linear(w, cfg.color_width)
        self.view_dir = nn.Linear(q, cfg.color_width, bias=False)
        self.rgb = nn.Linear(cfg.color_width, 3)

    def forward(self, points: torch.Tensor, cond: torch.Tensor, dirs: torch.Tensor):
        h = points
        for k, layer in enumerate(self.layers):
            if k == self.skip:
                h = torch.cat([points, h], -1)
            h = layer(h)
            if k == 0:
                h = h + self.cond_in(cond)[:, None, :]
            elif k == self.skip:
                h = h + self.cond_skip(cond)[:, None, :]
            h = torch.relu(h)
        sigma = torch.relu(self.sigma(h)[..., 0])
        v = torch.relu(self.view(self.feature(h)) + self.view_dir(dirs)[:, None, :])
        return sigma, torch.sigmoid(self.rgb(v))


def _composite(sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor, far: torch.Tensor, background: torch.Tensor):
    """Alpha compositing of sorted samples at distances t (N, S); the last sample's interval ends at ``far``.
    -> rgb over the background (N, 3), opacity (N,), depth (N,), weights (N, S)."""
    delta = torch.cat([t[:, 1:] - t[:, :-1], (far[:, None] - t[:, -1:])], -1).clamp(min=0.0)
    alpha = 1.0 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1] + 1e-10], -1), -1)
    weights = alpha * trans
    opacity = weights.sum(-1)
    color = (weights[..., None] * rgb).sum(1) + (1.0 - opacity)[:, None] * background
    depth = (weights * t).sum(-1) / opacity.clamp(min=1e-6)
    return color, opacity, depth, weights


class NeRFaceField(nn.Module):
    """Coarse and fine NeRFace MLPs behind MI-NeRF's conditioning (the model's ``field`` when ``backbone: nerface``).

    Args:
        cfg: :class:`fastminerf.config.FieldConfig` (the conditioning settings; the hash grid and heads are unused).
        nerface: :class:`fastminerf.config.NeRFaceConfig`.
        expression_dim: E.
    """

    # The per-ray conditioning ``[M(s e, i), f]`` is the fast field's, the same function and the same parameters.
    condition = MINeRFField.condition

    def __init__(self, cfg: FieldConfig, nerface: NeRFaceConfig, expression_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.nerface = nerface
        self.expression_dim = expression_dim
        self.conditioning = build_conditioning(cfg, expression_dim)
        cond_dim = cfg.conditioning_dim + cfg.frame_code_dim
        self.coarse = NeRFaceMLP(nerface, cond_dim)
        self.fine = NeRFaceMLP(nerface, cond_dim) if nerface.fine_samples > 0 else None

    def _evaluate(self, mlp: NeRFaceMLP, origins, directions, t, aabb, cond, dirs_enc):
        points = origins[:, None, :] + t[..., None] * directions[:, None, :]  # (N, S, 3)
        lo, hi = aabb[:3], aabb[3:]
        x = 2.0 * (points - lo) / (hi - lo) - 1.0  # the head box -> [-1, 1]^3
        return mlp(positional_encoding(x, self.nerface.position_frequencies), cond, dirs_enc)

    def render(self, origins: torch.Tensor, directions: torch.Tensor, near: torch.Tensor, far: torch.Tensor,
               cond: torch.Tensor, background: torch.Tensor, aabb: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Render N rays: origins, directions (N, 3), near, far (N,), cond (N, K), background (N, 3), aabb (6,).
        Returns the dict of ``MINeRF.render_rays`` plus ``rgb_coarse`` (N, 3). Rays with ``far <= near`` show the
        background."""
        cfg = self.nerface
        n = origins.shape[0]
        hit = far > near
        far = torch.where(hit, far, near)
        jitter = cfg.perturb and self.training
        edges = torch.linspace(0.0, 1.0, cfg.coarse_samples + 1, dtype=origins.dtype, device=origins.device)
        edges = near[:, None] + (far - near)[:, None] * edges  # (N, S_c + 1)
        u = torch.rand(n, cfg.coarse_samples, dtype=origins.dtype, device=origins.device) if jitter else 0.5
        t_coarse = edges[:, :-1] + (edges[:, 1:] - edges[:, :-1]) * u
        dirs_enc = positional_encoding(directions, cfg.direction_frequencies)
        mask = hit[:, None].to(origins.dtype)
        sigma_c, rgb_c = self._evaluate(self.coarse, origins, directions, t_coarse, aabb, cond, dirs_enc)
        color_c, opacity_c, depth_c, w_c = _composite(sigma_c * mask, rgb_c, t_coarse, far, background)
        samples = torch.full((n,), cfg.coarse_samples, dtype=torch.int64, device=origins.device)
        if self.fine is None:
            return dict(rgb=color_c, opacity=opacity_c, depth=depth_c, samples=samples)
        with torch.no_grad():
            t_fine = sample_pdf(edges, w_c.detach(), cfg.fine_samples, deterministic=not jitter)
        t_all, _ = torch.sort(torch.cat([t_coarse, t_fine], -1), -1)
        sigma, rgb = self._evaluate(self.fine, origins, directions, t_all, aabb, cond, dirs_enc)
        color, opacity, depth, _ = _composite(sigma * mask, rgb, t_all, far, background)
        return dict(rgb=color, opacity=opacity, depth=depth, samples=samples + cfg.coarse_samples + cfg.fine_samples,
                    rgb_coarse=color_c)
