"""Volume compositing of packed samples: per-ray colour, opacity and depth, with early ray termination.

The ray marcher emits samples packed ray by ray (CSR layout): ray ``r`` owns samples
``offsets[r]:offsets[r+1]``, sorted by distance along the ray. For each sample ``i`` of a ray:

.. math::
    \\delta_i = t^{end}_i - t^{start}_i,\\quad
    \\alpha_i = 1 - e^{-\\sigma_i \\delta_i},\\quad
    T_i = \\exp\\Big(-\\sum_{j<i} \\sigma_j \\delta_j\\Big),\\quad
    w_i = [T_i \\ge \\epsilon]\\, T_i \\alpha_i

    C = \\sum_i w_i c_i,\\quad O = \\sum_i w_i,\\quad D = \\sum_i w_i \\frac{t^{start}_i + t^{end}_i}{2}

``epsilon`` is the early-termination threshold on transmittance: the first sample whose transmittance is below it,
and every later sample of the ray, gets weight 0 (and no gradient); ``epsilon = 0`` keeps every sample.
``D`` is the *expected* depth, not normalised by the opacity (divide by ``O`` for the depth of the visible surface;
nerfacc's ``rendering`` does that division, its ``accumulate_along_rays`` does not).
``alpha`` is evaluated without the cancellation of ``1 - exp(-sigma delta)`` for small ``sigma delta``: ``-expm1``
in the reference and in float64, a short series (within 2 ulp) in the float32 kernels.

Backends: ``native`` (the C++ CPU and CUDA kernels of ``cuda/include/fastminerf/composite.h``, chosen by the
tensors' device) and ``torch`` (:func:`composite_reference`, the same function in plain PyTorch, differentiated by
autograd). Both are differentiable with respect to ``sigmas`` and ``rgbs`` through all four outputs (weights
included); neither is differentiable with respect to ``t_starts`` / ``t_ends``. The native backward is not
differentiable itself: a second derivative needs ``torch`` (the native one raises, naming the op).

Shapes: ``N`` rays, ``S`` packed samples.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _native

DEFAULT_TRANSMITTANCE_THRESHOLD = 1e-4  # instant-ngp's and nerfacc's early-stop epsilon


class CompositeResult(NamedTuple):
    """Outputs of :func:`composite`.

    Attributes:
        color: (N, 3) accumulated colour ``sum_i w_i c_i`` (no background).
        opacity: (N,) accumulated weight ``sum_i w_i`` (1 - transmittance left behind the ray, up to termination).
        depth: (N,) expected depth ``sum_i w_i (t_start_i + t_end_i) / 2``, NOT divided by the opacity.
        weights: (S,) per-sample weights ``w_i`` (0 for samples after early termination).
    """

    color: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    weights: torch.Tensor


def ray_indices_from_offsets(offsets: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
    """Ray index of every packed sample: offsets (N+1,) int64 -> (S,) int64."""
    counts = offsets[1:] - offsets[:-1]
    rays = torch.arange(counts.numel(), device=offsets.device)
    if n_samples is None:
        return torch.repeat_interleave(rays, counts)
    return torch.repeat_interleave(rays, counts, output_size=n_samples)


def _check(sigmas, rgbs, t_starts, t_ends, offsets, transmittance_threshold) -> None:
    if sigmas.dim() != 1:
        raise ValueError(f"sigmas must have shape (S,), got {tuple(sigmas.shape)}")
    n_samples = sigmas.shape[0]
    if rgbs.shape != (n_samples, 3):
        raise ValueError(f"rgbs must have shape ({n_samples}, 3), got {tuple(rgbs.shape)}")
    if t_starts.shape != (n_samples,) or t_ends.shape != (n_samples,):
        raise ValueError(
            f"t_starts and t_ends must have shape ({n_samples},), got {tuple(t_starts.shape)} and {tuple(t_ends.shape)}"
        )
    if offsets.dim() != 1 or offsets.numel() < 1 or offsets.dtype != torch.int64:
        raise ValueError(f"offsets must be an int64 tensor of shape (N + 1,), got {offsets.dtype} {tuple(offsets.shape)}")
    if sigmas.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"sigmas must be float32 or float64, got {sigmas.dtype}")
    for name, t in (("rgbs", rgbs), ("t_starts", t_starts), ("t_ends", t_ends)):
        if t.dtype != sigmas.dtype:
            raise ValueError(f"{name} dtype {t.dtype} differs from sigmas dtype {sigmas.dtype}")
    if not transmittance_threshold >= 0.0:
        raise ValueError(f"transmittance_threshold must be >= 0, got {transmittance_threshold}")


# ----------------------------------------------------------------------------------------------------------
# Reference (pure PyTorch)


def composite_reference(
    sigmas: torch.Tensor,
    rgbs: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    offsets: torch.Tensor,
    transmittance_threshold: float = DEFAULT_TRANSMITTANCE_THRESHOLD,
) -> CompositeResult:
    """Pure-PyTorch compositing, the same function as the native kernels, differentiated by autograd.

    The per-ray exclusive sum of ``sigma delta`` is a cumulative sum along the rows of a zero-padded (N, 1 + M)
    matrix (M = the longest ray), so each ray sums only its own samples, left to right like the kernels. (A global
    cumsum minus each ray's start value would be O(S) memory but subtracts two large numbers, losing a later ray's
    precision to the rays before it.) Memory O(N M) for the padded matrix. Argument shapes and the result as in
    :func:`composite`.
    """
    _check(sigmas, rgbs, t_starts, t_ends, offsets, transmittance_threshold)
    n_rays, n_samples = offsets.numel() - 1, sigmas.shape[0]
    if int(offsets[0]) != 0 or int(offsets[-1]) != n_samples or bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError("offsets must be non-decreasing from 0 to the sample count")
    t_starts, t_ends = t_starts.detach(), t_ends.detach()  # not differentiated, as in the native op
    ray = ray_indices_from_offsets(offsets, n_samples)
    local = torch.arange(n_samples, device=sigmas.device) - offsets[:-1][ray]  # index of each sample in its ray
    longest = int((offsets[1:] - offsets[:-1]).max()) if n_rays > 0 else 0
    optical_depth = sigmas * (t_ends - t_starts)
    padded = optical_depth.new_zeros(n_rays, longest + 1).index_put((ray, local + 1), optical_depth)
    tau = torch.cumsum(padded, dim=1)[ray, local]  # sum over the earlier samples of the same ray
    trans = torch.exp(-tau)
    alpha = -torch.expm1(-optical_depth)
    weights = torch.where(trans >= transmittance_threshold, trans * alpha, torch.zeros_like(trans))
    mid = (t_starts + t_ends) * 0.5
    color = rgbs.new_zeros(n_rays, 3).index_add(0, ray, weights[:, None] * rgbs)
    opacity = sigmas.new_zeros(n_rays).index_add(0, ray, weights)
    depth = sigmas.new_zeros(n_rays).index_add(0, ray, weights * mid)
    return CompositeResult(color, opacity, depth, weights)


# ----------------------------------------------------------------------------------------------------------
# Native op with autograd


class _CompositeNative(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigmas, rgbs, t_starts, t_ends, offsets, threshold: float):
        color, opacity, depth, weights, trans_end, n_active = _native.ops().composite_forward(
            sigmas, rgbs, t_starts, t_ends, offsets, threshold
        )
        ctx.set_materialize_grads(False)  # absent output gradients reach the kernel as null pointers
        ctx.save_for_backward(rgbs, sigmas, t_starts, t_ends, offsets, weights, trans_end, n_active)
        return color, opacity, depth, weights

    @staticmethod
    def backward(ctx, grad_color, grad_opacity, grad_depth, grad_weights):
        rgbs, sigmas, t_starts, t_ends, offsets, weights, trans_end, n_active = ctx.saved_tensors
        need_sigmas, need_rgbs = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grads = [None if g is None else g.contiguous() for g in (grad_color, grad_opacity, grad_depth, grad_weights)]
        with torch.no_grad():
            grad_sigmas, grad_rgbs = _native.ops().composite_backward(
                *grads, sigmas, rgbs, t_starts, t_ends, offsets, weights, trans_end, n_active, need_sigmas, need_rgbs
            )
        grad_sigmas, grad_rgbs = _native.first_order_only(
            "composite", ((grad_sigmas if need_sigmas else None), (grad_rgbs if need_rgbs else None)),
            (*grads, sigmas, rgbs))
        return grad_sigmas, grad_rgbs, None, None, None, None


def composite(
    sigmas: torch.Tensor,
    rgbs: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    offsets: torch.Tensor,
    transmittance_threshold: float = DEFAULT_TRANSMITTANCE_THRESHOLD,
    backend: str = "native",
) -> CompositeResult:
    """Composite packed samples into per-ray colour, opacity and expected depth (see the module docstring).

    Args:
        sigmas: (S,) densities, >= 0 (not checked).
        rgbs: (S, 3) colours.
        t_starts: (S,) sample start distances.
        t_ends: (S,) sample end distances (>= t_starts).
        offsets: (N+1,) int64, ray r owns samples ``offsets[r]:offsets[r+1]`` (sorted by t); non-decreasing from 0
            to S (checked on CPU tensors; on CUDA each ray's range is clamped to [0, S] instead).
        transmittance_threshold: early-termination epsilon: a sample with transmittance ``T_i < epsilon`` and every
            later sample of its ray get weight 0. 0 disables termination.
        backend: "native" (compiled kernels for the tensors' device) or "torch" (:func:`composite_reference`).

    Returns:
        :class:`CompositeResult` ``(color (N, 3), opacity (N,), depth (N,), weights (S,))``, differentiable with
        respect to ``sigmas`` and ``rgbs`` (through all four), not ``t_starts`` / ``t_ends``; a second derivative
        (a gradient taken with ``create_graph=True`` differentiated again) only with ``backend="torch"``: the native
        backward raises, naming the op.
        float32 and float64 inputs are supported; all float inputs share one dtype.

    Example:
        >>> sigmas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> rgbs = torch.ones(7, 3)
        >>> t_starts = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        >>> offsets = torch.tensor([0, 3, 5, 7, 7])  # 4 rays, the last one empty
        >>> out = composite(sigmas, rgbs, t_starts, t_starts + 1, offsets, backend="torch")
        >>> out.weights.round(decimals=2)
        tensor([0.3300, 0.3700, 0.0300, 0.5500, 0.0400, 0.0000, 0.5900])
        >>> out.opacity.round(decimals=2)
        tensor([0.7300, 0.5900, 0.5900, 0.0000])
    """
    _check(sigmas, rgbs, t_starts, t_ends, offsets, transmittance_threshold)
    if backend == "torch":
        return composite_reference(sigmas, rgbs, t_starts, t_ends, offsets, transmittance_threshold)
    if backend != "native":
        raise ValueError(f"composite backend must be 'native' or 'torch', got {backend!r}")
    outputs = _CompositeNative.apply(
        sigmas.contiguous(),
        rgbs.contiguous(),
        t_starts.contiguous(),
        t_ends.contiguous(),
        offsets.contiguous(),
        float(transmittance_threshold),
    )
    return CompositeResult(*outputs)


# ----------------------------------------------------------------------------------------------------------
# Regularisers on the weights


def distortion_loss(weights: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360's distortion loss of each ray, from packed per-sample weights (S,) (e.g.
    :attr:`CompositeResult.weights`), differentiable with respect to ``weights``:

    .. math::
        L = \\sum_{i,j} w_i w_j \\left|\\frac{t_i + t'_i}{2} - \\frac{t_j + t'_j}{2}\\right|
            + \\frac{1}{3} \\sum_i w_i^2 (t'_i - t_i)

    It is small when a ray's weight sits in one short interval (a sharp surface) and large when it is spread along
    the ray (haze, half-transparent surfaces). The double sum is computed in O(S) as
    ``2 sum_i w_i (m_i W_<i - (w m)_<i)`` with per-ray exclusive prefix sums (float64). Distances are in the units of
    ``t``. Returns (N,).
    """
    n_rays, n = offsets.numel() - 1, weights.shape[0]
    if n == 0:
        return weights.new_zeros(n_rays)
    ray = ray_indices_from_offsets(offsets, n)
    w = weights.double()
    mid = ((t_starts + t_ends) * 0.5).double()
    starts = offsets[:-1].clamp(max=n - 1)

    def exclusive(x: torch.Tensor) -> torch.Tensor:  # per-ray sum of the earlier samples
        incl = torch.cumsum(x, 0)
        excl = incl - x
        return excl - excl[starts].index_select(0, ray)

    pairs = 2.0 * w * (mid * exclusive(w) - exclusive(w * mid))
    per_sample = pairs + w * w * (t_ends - t_starts).double() / 3.0
    return per_sample.new_zeros(n_rays).index_add(0, ray, per_sample).to(weights.dtype)
