"""``OccupancyGrid``: the module that owns the occupancy state (occupancies, bitfield, cascade boxes) and calls the
functional core in ``fastminerf.ops.occupancy`` (or nerfacc's marcher when the backend resolves to it)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .. import _native
from .. import backend as _backend
from ..ops.occupancy import (
    DEFAULT_ROI,
    NO_FAR,
    Plane,
    RaySamples,
    Resolution,
    _plane,
    bitfield_bytes,
    cascade_aabbs,
    cell_points,
    ema_update,
    grid_resolution,
    march_rays,
    occupancy_threshold,
    pack_bitfield,
    unpack_bitfield,
)

DensityFn = Callable[[torch.Tensor], torch.Tensor]  # points (M, 3) -> (M,) or (M, 1) density * step size


class OccupancyGrid(nn.Module):
    """Multi-cascade occupancy grid over an axis-aligned box, with nerfacc's update rule and a marcher that skips
    empty cells (see :mod:`fastminerf.ops.occupancy` for the exact function).

    Args:
        roi_aabb: the region of interest ``{xmin, ymin, zmin, xmax, ymax, zmax}`` (cascade 0).
        resolution: R or (R0, R1, R2) cells per axis of every cascade (multiples of 4 when ``levels > 1``).
        levels: L cascades; cascade l covers the roi scaled by ``2**l`` about its centre.
        backend: "auto", "native", "torch" or "nerfacc" (the marcher through nerfacc's ``OccGridEstimator``, CUDA
            only; the update stays ours); "tcnn" leaves the grid native. Resolved once per device type.

    Buffers (saved in checkpoints): ``aabbs`` (L, 6) float32, ``occs`` (L*C,) float32, ``bitfield``
    (L, ceil(C/8)) uint8. Memory: ``4.125 * L * C`` bytes (8.25 MiB for one 128^3 cascade).

    Example:
        >>> grid = OccupancyGrid(resolution=64, levels=1, backend="torch")
        >>> grid.mark_all()
        >>> s = grid.sample(torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]]), step_size=0.01)
        >>> int(s.counts[0])
        300
    """

    def __init__(
        self,
        roi_aabb: Sequence[float] | torch.Tensor = DEFAULT_ROI,
        resolution: Resolution = 128,
        levels: int = 1,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if backend not in _backend.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(_backend.BACKENDS)}")
        self.resolution = grid_resolution(resolution)
        if levels > 1 and any(r % 4 for r in self.resolution):
            raise ValueError(f"with {levels} cascades every resolution must be a multiple of 4, got {self.resolution}")
        self.levels = levels
        self.backend = backend
        self.cells_per_level = self.resolution[0] * self.resolution[1] * self.resolution[2]
        aabbs = cascade_aabbs(roi_aabb, levels)
        self._aabbs_values = [float(v) for v in aabbs.reshape(-1).tolist()]  # host copy: no device sync per call
        self.register_buffer("aabbs", aabbs)
        self.register_buffer("occs", torch.zeros(levels * self.cells_per_level))
        self.register_buffer("bitfield", torch.zeros(levels, bitfield_bytes(self.resolution), dtype=torch.uint8))
        self._nerfacc = None  # nerfacc.OccGridEstimator created on first use (kept out of the submodules)

    def _apply(self, fn, *args, **kwargs):
        """Device moves apply to the state; dtype casts (``model.double()``, ``.half()``) leave the occupancies and
        boxes float32, what the update rule and the kernels compute in (the marcher's samples are float32 anyway).
        The nerfacc estimator, built on its first call's device, is dropped: the next march builds it where the rays
        now are."""
        self._nerfacc = None
        kept = {name: getattr(self, name) for name in ("occs", "aabbs")}
        super()._apply(fn, *args, **kwargs)
        for name, value in kept.items():
            if getattr(self, name).dtype != torch.float32:
                setattr(self, name, value.to(getattr(self, name).device))
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._aabbs_values = [float(v) for v in self.aabbs.reshape(-1).tolist()]
        self._nerfacc = None  # built with the old box: built again on the next march

    # ------------------------------------------------------------------------------------------------------
    # Backends

    def resolved_backend(self, device: torch.device) -> str:
        """The marcher's implementation on ``device``: "native", "torch" or "nerfacc"."""
        return _backend.resolve(self.backend, "grid", device.type)

    def _update_backend(self, device: torch.device) -> str:
        impl = self.resolved_backend(device)
        if impl == "nerfacc":  # nerfacc only marches; the update is ours
            native = _native.available() if device.type == "cpu" else _native.has_cuda()
            impl = "native" if native else "torch"
        return impl

    # ------------------------------------------------------------------------------------------------------
    # State

    @property
    def binaries(self) -> torch.Tensor:
        """(L, R0, R1, R2) bool occupancy (nerfacc's ``binaries``)."""
        return unpack_bitfield(self.bitfield, self.resolution)

    @torch.no_grad()
    def occupied_fraction(self) -> float:
        """Fraction of cells (over all cascades) whose bit is set."""
        return float(self.binaries.float().mean().item())

    @torch.no_grad()
    def mark_all(self) -> None:
        """Set every cell occupied: marching then samples the whole box uniformly."""
        self.occs.fill_(1.0)
        self.bitfield.copy_(pack_bitfield(self.occs, 0.0, self.levels, backend="torch"))

    @torch.no_grad()
    def mark_empty(self) -> None:
        """Clear every cell: marching then returns no samples."""
        self.occs.zero_()
        self.bitfield.zero_()

    def cell_centers(self) -> torch.Tensor:
        """(L*C, 3) world centres of every cell of every cascade (cell ``level * C + index``)."""
        index = torch.arange(self.cells_per_level, device=self.occs.device)
        return torch.cat([cell_points(self.aabbs[level], index, self.resolution) for level in range(self.levels)])

    def cell_radius(self, level: int) -> float:
        """Half the diagonal of a cell of cascade ``level``. From the host copy of the boxes: a CPU tensor of the
        resolution against the boxes of a grid on a GPU would be refused as mixing devices (the same float32 values
        and operations as on the boxes themselves)."""
        box = torch.tensor(self._aabbs_values[6 * level: 6 * level + 6], dtype=torch.float32)
        side = (box[3:] - box[:3]) / torch.tensor(self.resolution, dtype=torch.float32)
        return 0.5 * float(torch.linalg.norm(side))

    @torch.no_grad()
    def carve(self, keep: torch.Tensor) -> None:
        """Exclude the cells where ``keep`` (L*C,) is false for good: their occupancy becomes -1 (nerfacc's mark of
        cells no camera sees), so no update samples them and no marcher visits them; the others keep their state."""
        keep = keep.reshape(-1).to(device=self.occs.device, dtype=torch.bool)
        self.occs.masked_fill_(~keep, -1.0)
        bits = self.binaries.reshape(-1) & keep
        self.bitfield.copy_(pack_bitfield(bits.float(), 0.5, self.levels, backend="torch"))

    @torch.no_grad()
    def restore(self, cells: torch.Tensor) -> int:
        """Bring back excluded cells where ``cells`` (L*C,) is true, as occupied (later updates decay them where the
        density is low): a new identity may need space that the carving for the others removed. Returns how many."""
        back = cells.reshape(-1).to(device=self.occs.device, dtype=torch.bool) & (self.occs < 0)
        self.occs.masked_fill_(back, 1.0)
        bits = self.binaries.reshape(-1) | back
        self.bitfield.copy_(pack_bitfield(bits.float(), 0.5, self.levels, backend="torch"))
        return int(back.sum())

    @torch.no_grad()
    def apply_values(self, cells: torch.Tensor, values: torch.Tensor, ema_decay: float = 0.95,
                     occ_threshold: float = 0.01) -> None:
        """One EMA update from new values (M,) of cells (M,) (``level * C + cell``), then the threshold and bitfield."""
        impl = self._update_backend(self.occs.device)
        self.occs.copy_(ema_update(self.occs, cells, values, ema_decay, backend=impl))
        threshold = occupancy_threshold(self.occs, occ_threshold)
        self.bitfield.copy_(pack_bitfield(self.occs, threshold, self.levels, backend=impl))

    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: DensityFn,
        occ_threshold: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        n: int = 16,
        generator: torch.Generator | None = None,
    ) -> bool:
        """nerfacc's ``update_every_n_steps``: every ``n`` steps, evaluate ``density_fn`` at one jittered point per
        chosen cell of every cascade (all visible cells during the first ``warmup_steps`` steps, then C/4 uniformly
        drawn cells plus up to C/4 occupied ones) and apply the EMA update, threshold and bitfield.

        ``density_fn`` maps points (M, 3) to opacity-like values (M,) or (M, 1): density times the step size, as
        nerfacc's ``occ_eval_fn``. Cells in a finer cascade's region are updated in the coarser ones too (as
        nerfacc does; the marcher reads the finest). Returns whether it updated. Unlike nerfacc it also runs in eval
        mode and takes a ``generator`` for reproducible draws (on the grid's device).
        """
        if step % n != 0:
            return False
        device = self.occs.device
        C = self.cells_per_level
        cells, points = [], []
        for level in range(self.levels):
            level_occs = self.occs[level * C : (level + 1) * C]
            if step < warmup_steps:
                indices = torch.nonzero(level_occs >= 0)[:, 0]
            else:
                uniform = torch.randint(C, (C // 4,), device=device, generator=generator)
                uniform = uniform[level_occs[uniform] >= 0]
                occupied = torch.nonzero(self.binaries[level].reshape(-1))[:, 0]
                if occupied.numel() > C // 4:
                    pick = torch.randint(occupied.numel(), (C // 4,), device=device, generator=generator)
                    occupied = occupied[pick]
                indices = torch.cat([uniform, occupied])
            jitter = torch.rand(indices.numel(), 3, device=device, generator=generator)
            points.append(cell_points(self.aabbs[level], indices, self.resolution, jitter))
            cells.append(indices + level * C)
        values = density_fn(torch.cat(points)).reshape(-1)
        self.apply_values(torch.cat(cells), values, ema_decay, occ_threshold)
        return True

    @torch.no_grad()
    def mark_from_density(
        self,
        density_fn: DensityFn,
        occ_threshold: float = 0.01,
        samples_per_cell: int = 4,
        generator: torch.Generator | None = None,
    ) -> None:
        """Rebuild the grid from a known density (tests, benchmarks): occupancies reset, then ``samples_per_cell``
        warm-up updates without decay (each cell keeps the largest value seen at its jittered points)."""
        self.occs.zero_()
        for _ in range(samples_per_cell):
            self.update(0, density_fn, occ_threshold, ema_decay=1.0, warmup_steps=1, n=1, generator=generator)

    # ------------------------------------------------------------------------------------------------------
    # Marching

    @torch.no_grad()
    def sample(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        near: Plane = 0.0,
        far: Plane = NO_FAR,
        step_size: float = 5e-3,
        cone_angle: float = 0.0,
        max_step_size: float = NO_FAR,
        max_samples_per_ray: int = 0,
    ) -> RaySamples:
        """March rays (N, 3) (unit directions) through the grid: packed samples in occupied cells. See
        :func:`fastminerf.ops.occupancy.march_rays` for the arguments."""
        impl = self.resolved_backend(origins.device)
        if impl == "nerfacc":
            return self._nerfacc_sample(origins, directions, near, far, step_size, cone_angle, max_samples_per_ray)
        return march_rays(origins, directions, self.bitfield, self._aabbs_values, self.resolution, near, far,
                          step_size, cone_angle, max_step_size, max_samples_per_ray, backend=impl)

    def _nerfacc_sample(self, origins, directions, near, far, step_size, cone_angle, max_samples_per_ray):
        """nerfacc 0.5.3 ``OccGridEstimator.sampling`` on our bitfield. Its lattice accumulates ``t += dt`` and its
        cells come from a DDA, so samples agree with ours up to float32 rounding (see the parity test); it has no
        ``max_step_size`` (its cone step is unbounded)."""
        import nerfacc  # only on CUDA machines with nerfacc installed

        if self._nerfacc is None:
            est = nerfacc.OccGridEstimator(
                roi_aabb=self.aabbs[0].tolist(), resolution=list(self.resolution), levels=self.levels
            ).to(origins.device)
            self._nerfacc = [est]  # in a list so that it is not registered as a submodule
        est = self._nerfacc[0]
        est.binaries = self.binaries.to(origins.device)
        est.occs = self.occs.to(origins.device)
        n = origins.shape[0]
        t_min, t_max = _plane("near", near, n, origins.device), _plane("far", far, n, origins.device)
        ray_indices, t_starts, t_ends = est.sampling(
            origins.float().contiguous(),
            directions.float().contiguous(),
            sigma_fn=None,
            near_plane=float("-inf"),  # per-ray planes come from t_min / t_max
            far_plane=float("inf"),
            t_min=t_min,
            t_max=t_max,
            render_step_size=step_size,
            stratified=False,
            cone_angle=cone_angle,
            alpha_thre=0.0,
        )
        ray_indices = ray_indices.long()
        counts = torch.bincount(ray_indices, minlength=n)
        offsets = torch.zeros(n + 1, dtype=torch.int64, device=origins.device)
        offsets[1:] = torch.cumsum(counts, 0)
        if max_samples_per_ray > 0:
            keep = torch.arange(ray_indices.numel(), device=origins.device) - offsets[ray_indices] < max_samples_per_ray
            ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
            offsets[1:] = torch.cumsum(counts.clamp(max=max_samples_per_ray), 0)
        return RaySamples(ray_indices, t_starts.float(), t_ends.float(), offsets)

    def extra_repr(self) -> str:
        return (f"resolution={self.resolution}, levels={self.levels}, roi={self._aabbs_values[:6]}, "
                f"backend={self.backend!r}")
