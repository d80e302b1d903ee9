"""Multiresolution hash encoding (instant-ngp) as a function: level parameters, the native op with autograd, and
the pure-PyTorch reference of the same function.

The function is tiny-cuda-nn's ``HashGrid`` (3-D input, linear interpolation):

.. math::
    s_l = \\mathrm{f32}(2^{l \\log_2 b} N_{min} - 1),\\quad R_l = \\lceil s_l \\rceil + 1,\\quad
    p = \\mathrm{fma}(s_l, x, 0.5),\\quad
    \\mathrm{enc}_l(x) = \\sum_{c \\in \\{0,1\\}^3} w_c(p - \\lfloor p \\rfloor)\\, \\theta_l[h_l(\\lfloor p \\rfloor + c)]

with ``h_l`` the dense index when ``R_l^3`` fits the level's table ``T_l = min(next_multiple(R_l^3, 8), 2^log2_T)``
and the coherent prime hash otherwise, both modulo ``T_l``.

fastminerf's addition, **identity levels**: the last ``identity_levels`` levels (``l >= salted_from``) always hash,
with a per-point integer ``salt`` (the identity id) as a fourth coordinate,
``h_l(x, y, z) = x ^ y P_1 ^ z P_2 ^ salt P_3`` (``P_3 = 3674653429``, tiny-cuda-nn's fourth prime), so that the
fine detail of different people at the same place lands in different rows of the one shared table: the table
does not grow with the number of identities, but the identities stop overwriting each other's texture.

Parameters are the levels' tables concatenated, each ``(T_l, F)`` row-major: the same flat vector tiny-cuda-nn holds, so its parameters load unchanged.

Known difference from tiny-cuda-nn: it computes ``s_l`` on the GPU with ``exp2f`` (up to 2 ulp error); we
compute it once on the host in float32 (numpy), so a scale can differ in its last bit and a point lying exactly
on a cell border may fall in the neighbouring cell (the encodings still agree to float precision elsewhere).

Shapes: ``N`` points, ``L`` levels, ``F`` features per level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import _native
from ._checks import check_integers

PRIME_1 = 2654435761
PRIME_2 = 805459861
PRIME_3 = 3674653429  # the salt's
UINT32_MASK = 0xFFFFFFFF
MAX_DENSE_RESOLUTION = 0x659  # largest R with R^3 < 2^32 (tiny-cuda-nn's MAX_BASES for 3-D)
MAX_LEVEL_PARAMS = 0xFFFFFFFF // 2  # tiny-cuda-nn's cap on a dense level's rows
MAX_RESOLUTION = UINT32_MASK  # R_l is a uint32 in the kernels


@dataclass(frozen=True)
class HashGridLevels:
    """Per-level constants of a hash grid, derived once from its hyper-parameters (never edited).

    Attributes:
        n_features: F, features per level.
        offsets: first table row of each level, ``L + 1`` entries (the last one is the total row count).
        resolutions: ``R_l``, grid vertices per axis at each level.
        scales: ``s_l`` as float32 values (stored as Python floats).
        salted_from: first identity level (levels from it on hash a per-point salt); ``L`` when there is none.
    """

    n_features: int
    offsets: tuple[int, ...]
    resolutions: tuple[int, ...]
    scales: tuple[float, ...]
    salted_from: int = -1

    def __post_init__(self) -> None:
        if self.salted_from < 0:
            object.__setattr__(self, "salted_from", len(self.resolutions))

    @property
    def salted(self) -> bool:
        """Whether some level hashes the per-point salt (then every encoding call needs one)."""
        return self.salted_from < self.n_levels

    @property
    def n_levels(self) -> int:
        return len(self.resolutions)

    @property
    def n_rows(self) -> int:
        return self.offsets[-1]

    def level_size(self, level: int) -> int:
        return self.offsets[level + 1] - self.offsets[level]

    def is_dense(self, level: int) -> bool:
        res = self.resolutions[level]
        return res <= MAX_DENSE_RESOLUTION and res**3 <= self.level_size(level)


def hash_grid_levels(
    n_levels: int = 16,
    n_features_per_level: int = 2,
    log2_hashmap_size: int = 19,
    base_resolution: int = 16,
    per_level_scale: float = 2.0,
    identity_levels: int = 0,
) -> HashGridLevels:
    """Level constants exactly as tiny-cuda-nn's ``GridEncodingTemplated`` computes them for 3-D input; the last
    ``identity_levels`` levels hash a per-point salt (module docstring)."""
    if not 1 <= n_levels <= 32:
        raise ValueError(f"n_levels must be in 1..32, got {n_levels}")
    if n_features_per_level not in (1, 2, 4, 8):
        raise ValueError(f"n_features_per_level must be 1, 2, 4 or 8, got {n_features_per_level}")
    if not 1 <= log2_hashmap_size <= 30:
        raise ValueError(f"log2_hashmap_size must be in 1..30, got {log2_hashmap_size}")
    if base_resolution < 1:
        raise ValueError(f"base_resolution must be >= 1, got {base_resolution}")
    if not (per_level_scale >= 1.0 and np.isfinite(per_level_scale)):
        raise ValueError(f"per_level_scale must be a finite number >= 1, got {per_level_scale}")
    if not 0 <= identity_levels <= n_levels:
        raise ValueError(f"identity_levels must be in 0..n_levels ({n_levels}), got {identity_levels}")
    log2_scale = np.log2(np.float32(per_level_scale), dtype=np.float32)
    offsets, resolutions, scales = [0], [], []
    for level in range(n_levels):
        with np.errstate(over="ignore"):
            scale = np.exp2(np.float32(level) * log2_scale, dtype=np.float32) * np.float32(base_resolution) - np.float32(1)
        res = int(np.ceil(scale)) + 1 if np.isfinite(scale) else math.inf
        if res > MAX_RESOLUTION:  # the kernels hold resolutions as uint32 (GridMeta)
            raise ValueError(f"level {level}'s resolution {res} does not fit the kernels' 32-bit grid (at most "
                             f"{MAX_RESOLUTION}): give fewer levels (n_levels={n_levels}), a smaller per_level_scale "
                             f"({per_level_scale}) or a smaller base_resolution ({base_resolution})")
        rows = min(res**3, MAX_LEVEL_PARAMS)
        rows = (rows + 7) // 8 * 8
        rows = min(rows, 1 << log2_hashmap_size)
        resolutions.append(res)
        scales.append(float(scale))
        offsets.append(offsets[-1] + rows)
    return HashGridLevels(n_features_per_level, tuple(offsets), tuple(resolutions), tuple(scales),
                          n_levels - identity_levels)


def per_level_scale_for(base_resolution: int, finest_resolution: int, n_levels: int) -> float:
    """The growth factor b that takes ``base_resolution`` to ``finest_resolution`` in ``n_levels`` levels."""
    if n_levels < 1 or base_resolution < 1:
        raise ValueError(f"need n_levels >= 1 and base_resolution >= 1, got {n_levels} and {base_resolution}")
    if n_levels == 1:
        return 1.0
    if finest_resolution < base_resolution:
        raise ValueError(f"finest_resolution ({finest_resolution}) must be >= base_resolution ({base_resolution})")
    return float(np.exp(np.log(finest_resolution / base_resolution) / (n_levels - 1)))


# ----------------------------------------------------------------------------------------------------------
# Reference (pure PyTorch)


def _grid_position(points: torch.Tensor, scale: float) -> torch.Tensor:
    """p = s x + 0.5 rounded once (as fmaf): exact in float64, then one rounding for float32 inputs."""
    if points.dtype == torch.float32:
        return (points.double() * scale + 0.5).float()
    return points * scale + 0.5


def corner_rows(base: torch.Tensor, corner: int, levels: HashGridLevels, level: int,
                salt: torch.Tensor | None = None) -> torch.Tensor:
    """Table rows (relative to the level) of corner ``corner`` (bits z y x) of the cells with integer origin
    ``base`` (N, 3) int64 holding uint32 values, with per-point ``salt`` (N,) on identity levels. Returns (N,)
    int64."""
    q = (base + torch.tensor([(corner >> d) & 1 for d in range(3)], device=base.device)) & UINT32_MASK
    res, size = levels.resolutions[level], levels.level_size(level)
    salted = level >= levels.salted_from
    if levels.is_dense(level) and not salted:
        return ((q[:, 0] + q[:, 1] * res + q[:, 2] * (res * res)) & UINT32_MASK) % size
    index = q[:, 0] ^ ((q[:, 1] * PRIME_1) & UINT32_MASK) ^ ((q[:, 2] * PRIME_2) & UINT32_MASK)
    if salted:  # the identity as a fourth hashed coordinate
        if salt is None or salt.shape != base.shape[:1]:
            raise ValueError(f"this grid has identity levels (from level {levels.salted_from}): salt must have shape "
                             f"({base.shape[0]},), got {None if salt is None else tuple(salt.shape)}")
        index = index ^ (((salt.long() & UINT32_MASK) * PRIME_3) & UINT32_MASK)
    return index % size


def _cell(points: torch.Tensor, levels: HashGridLevels, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    pos = _grid_position(points, levels.scales[level])
    floor = torch.floor(pos)
    base = floor.long() & UINT32_MASK  # (uint32)(int64)floor(p), as the kernels do
    return base, pos - floor


def hash_encode_reference(points: torch.Tensor, table: torch.Tensor, levels: HashGridLevels,
                          salt: torch.Tensor | None = None) -> torch.Tensor:
    """Pure-PyTorch hash encoding: points (N, 3) in [0, 1]^3, table (rows, F), salt (N,) integers (identity levels)
    -> (N, L*F). Differentiable with respect to ``table`` and ``points`` through autograd."""
    outputs = []
    for level in range(levels.n_levels):
        base, frac = _cell(points, levels, level)
        level_table = table[levels.offsets[level] : levels.offsets[level + 1]]
        acc = None
        for corner in range(8):
            weight = None
            for d in range(3):
                w = frac[:, d] if (corner >> d) & 1 else 1 - frac[:, d]
                weight = w if weight is None else weight * w
            term = weight[:, None] * level_table[corner_rows(base, corner, levels, level, salt)]
            acc = term if acc is None else acc + term
        outputs.append(acc)
    return torch.cat(outputs, dim=1)


def hash_grid_rows(points: torch.Tensor, levels: HashGridLevels, salt: torch.Tensor | None = None) -> torch.Tensor:
    """Absolute table rows the encoding of ``points`` (and ``salt``) reads: (L, N, 8) int64 (level-major, as the
    kernels)."""
    rows = []
    for level in range(levels.n_levels):
        base, _ = _cell(points, levels, level)
        rows.append(torch.stack([corner_rows(base, c, levels, level, salt) for c in range(8)], 1) + levels.offsets[level])
    return torch.stack(rows)


# ----------------------------------------------------------------------------------------------------------
# Native op with autograd


class _HashEncodeNative(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, table, salt, levels: HashGridLevels):
        ops = _native.ops()
        out = ops.hash_encode_forward(points, table, levels.offsets, levels.resolutions, levels.scales, salt,
                                      levels.salted_from)
        ctx.save_for_backward(points, table, salt)
        ctx.levels = levels
        return out

    @staticmethod
    def backward(ctx, grad_out):
        points, table, salt = ctx.saved_tensors
        levels = ctx.levels
        need_points, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.no_grad():
            grad_table, grad_points = _native.ops().hash_encode_backward(
                grad_out.contiguous(), points, table, levels.offsets, levels.resolutions, levels.scales, salt,
                levels.salted_from, need_table, need_points,
            )
        grads = (grad_points if need_points else None), (grad_table if need_table else None)
        return (*_native.first_order_only("hash_encode", grads, (grad_out, points, table)), None, None)


def hash_encode(points: torch.Tensor, table: torch.Tensor, levels: HashGridLevels, backend: str = "native",
                salt: torch.Tensor | None = None) -> torch.Tensor:
    """Hash-encode points (N, 3) in [0, 1]^3 with ``table`` (rows, F) -> features (N, L*F), feature
    ``l*F + f`` being feature f of level l. Differentiable with respect to ``table`` and ``points``; a second
    derivative (a gradient taken with ``create_graph=True`` differentiated again) only with ``backend="torch"``: the
    native backward raises, naming the op.
    ``salt`` (N,) non-negative integers (identity ids) is required when ``levels`` has identity levels.

    ``backend``: "native" (compiled kernels for the tensors' device) or "torch" (reference). Points outside
    [0, 1]^3 are valid input: they wrap through the hash like tiny-cuda-nn's.

    Example:
        >>> levels = hash_grid_levels(n_levels=4, log2_hashmap_size=12)
        >>> table = torch.zeros(levels.n_rows, 2)
        >>> hash_encode(torch.rand(5, 3), table, levels, backend="torch").shape
        torch.Size([5, 8])
    """
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
    if table.shape != (levels.n_rows, levels.n_features):
        raise ValueError(f"table must have shape ({levels.n_rows}, {levels.n_features}), got {tuple(table.shape)}")
    if points.dtype != table.dtype:
        raise ValueError(f"points dtype {points.dtype} differs from table dtype {table.dtype}")
    if levels.salted:
        if salt is None or salt.shape != (points.shape[0],):
            raise ValueError(f"this grid has identity levels (from level {levels.salted_from}): salt must have shape "
                             f"({points.shape[0]},), got {None if salt is None else tuple(salt.shape)}")
        check_integers("salt", salt)
        salt = salt.to(device=points.device, dtype=torch.int32).contiguous()
    else:
        salt = torch.empty(0, dtype=torch.int32, device=points.device)
    if backend == "torch":
        return hash_encode_reference(points, table, levels, salt if levels.salted else None)
    if backend != "native":
        raise ValueError(f"hash_encode backend must be 'native' or 'torch', got {backend!r}")
    if table.dtype not in (torch.float32, torch.float64):  # the kernels' own error named neither the grid nor a way out
        raise ValueError(f"the native hash-grid kernels run float32 and float64 only, and this grid is "
                         f"{str(table.dtype).replace('torch.', '')}: convert it (or the model) with .float(), or "
                         f"use backend='torch', which runs any float type")
    return _HashEncodeNative.apply(points.contiguous(), table.contiguous(), salt, levels)
