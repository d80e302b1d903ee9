"""The fused MLP head as a function: the native op with autograd and the pure-PyTorch reference.

One hidden ReLU layer whose pre-activation adds a per-ray row, then a linear output::

    h = relu(x W1^T + pre[ray_indices])      x (S, P) per sample, pre (N, H) per ray, W1 (H, P)
    y = h W2^T + b2                          W2 (O, H), b2 (O,)

``pre`` is the per-ray part of the first layer (the conditioning through its own weights, plus the first layer's
bias), computed once per ray by the caller; ``ray_indices`` (S,) int64 says which row each sample reads (``None``:
row s for sample s). Non-decreasing ray indices (samples packed ray after ray, as the marcher emits them) let the
native backward split the work over threads; any order gives the same result.

The native op (cuda/src/mlp_head_cpu.cpp, mlp_head_cuda.cu) runs the whole head for 32 samples at a time with
their activations in cache and sums weight gradients per group of rays, without atomics: the two heads of the
``cpu`` preset run 2.1-3.1x faster than the same function as separate torch ops (``benchmarks/mlp_head.py``).

Shapes: S samples, N per-ray rows, P inputs, H hidden units (at most 128), O outputs.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _native
from ._checks import check_integers

MAX_HIDDEN = 128


def mlp_head_reference(x: torch.Tensor, pre: torch.Tensor, ray_indices: Optional[torch.Tensor], w1: torch.Tensor,
                       w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch fused head (differentiable through autograd): module docstring."""
    rows = pre if ray_indices is None else pre.index_select(0, ray_indices)
    h = torch.relu(torch.addmm(rows, x, w1.t()))
    return torch.addmm(b2, h, w2.t())


class _MLPHeadNative(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pre, ray_indices, w1, w2, b2):
        ctx.save_for_backward(x, pre, ray_indices, w1, w2, b2)
        return _native.ops().mlp_head_forward(x, pre, ray_indices, w1, w2, b2)

    @staticmethod
    def backward(ctx, grad_y):
        x, pre, ray_indices, w1, w2, b2 = ctx.saved_tensors
        with torch.no_grad():
            grad_x, grad_pre, grad_w1, grad_w2, grad_b2 = _native.ops().mlp_head_backward(
                grad_y.contiguous(), x, pre, ray_indices, w1, w2, b2, ctx.needs_input_grad[0])
        need = ctx.needs_input_grad
        grad_x, grad_pre, grad_w1, grad_w2, grad_b2 = _native.first_order_only(
            "mlp_head", (grad_x if need[0] else None, grad_pre if need[1] else None, grad_w1 if need[3] else None,
                         grad_w2 if need[4] else None, grad_b2 if need[5] else None), (grad_y, x, pre, w1, w2, b2))
        return grad_x, grad_pre, None, grad_w1, grad_w2, grad_b2


def mlp_head(x: torch.Tensor, pre: torch.Tensor, ray_indices: Optional[torch.Tensor], w1: torch.Tensor,
             w2: torch.Tensor, b2: torch.Tensor, backend: str = "native") -> torch.Tensor:
    """The fused head ``relu(x W1^T + pre[ray_indices]) W2^T + b2`` -> (S, O); differentiable with respect to
    ``x``, ``pre``, ``w1``, ``w2`` and ``b2``; a second derivative (a gradient taken with ``create_graph=True``
    differentiated again) only with ``backend="torch"``: the native backward raises, naming the op. ``backend``:
    "native" (compiled kernels for the tensors' device) or "torch" (reference).

    Example:
        >>> x, pre = torch.randn(5, 8), torch.randn(2, 16)
        >>> w1, w2, b2 = torch.randn(16, 8), torch.randn(3, 16), torch.zeros(3)
        >>> mlp_head(x, pre, torch.tensor([0, 0, 1, 1, 1]), w1, w2, b2, backend="torch").shape
        torch.Size([5, 3])
    """
    if x.dim() != 2 or w1.dim() != 2 or w1.shape[1] != x.shape[1]:
        raise ValueError(f"x (S, P) and w1 (H, P) disagree: {tuple(x.shape)} and {tuple(w1.shape)}")
    if pre.dim() != 2 or pre.shape[1] != w1.shape[0]:
        raise ValueError(f"pre must have shape (N, {w1.shape[0]}), got {tuple(pre.shape)}")
    if w2.dim() != 2 or w2.shape[1] != w1.shape[0] or b2.shape != (w2.shape[0],):
        raise ValueError(f"w2 (O, H) and b2 (O,) disagree with H={w1.shape[0]}: {tuple(w2.shape)}, {tuple(b2.shape)}")
    if ray_indices is not None and ray_indices.shape != (x.shape[0],):
        raise ValueError(f"ray_indices must have shape ({x.shape[0]},), got {tuple(ray_indices.shape)}")
    if ray_indices is not None:
        check_integers("ray_indices", ray_indices)
    if ray_indices is None and pre.shape[0] != x.shape[0]:
        raise ValueError(f"without ray_indices, pre needs one row per sample ({x.shape[0]}), got {pre.shape[0]}")
    if backend == "torch":
        return mlp_head_reference(x, pre, ray_indices, w1, w2, b2)
    if backend != "native":
        raise ValueError(f"mlp_head backend must be 'native' or 'torch', got {backend!r}")
    if w1.shape[0] > MAX_HIDDEN:
        raise ValueError(f"the native fused head supports at most {MAX_HIDDEN} hidden units, got {w1.shape[0]}")
    ri = None if ray_indices is None else ray_indices.long().contiguous()
    return _MLPHeadNative.apply(x.contiguous(), pre.contiguous(), ri, w1.contiguous(), w2.contiguous(), b2.contiguous())
