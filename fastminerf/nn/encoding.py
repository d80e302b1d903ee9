"""``HashGridEncoding``: the module that owns a hash grid's parameters and calls the encoding op."""
from __future__ import annotations

import torch
from torch import nn

from .. import backend as _backend
from ..ops.hash_grid import HashGridLevels, hash_encode, hash_grid_levels

TCNN_INIT_RANGE = 1e-4  # tiny-cuda-nn initialises grid parameters uniformly in [-1e-4, 1e-4]


class HashGridEncoding(nn.Module):
    """Multiresolution hash encoding of points (N, 3) in [0, 1]^3 into features (N, L*F).

    Args:
        n_levels: L, number of resolution levels.
        n_features_per_level: F, in {1, 2, 4, 8}.
        log2_hashmap_size: log2 of the largest table size T per level.
        base_resolution: N_min, coarsest grid resolution.
        per_level_scale: growth factor b between levels (use ``per_level_scale_for`` to reach a finest
            resolution).
        backend: "auto", "native", "torch", "tcnn" (tiny-cuda-nn, CUDA only); other values of the project-wide
            switch ("nerfacc") leave the encoding native. Resolved once per device at the first call.
        identity_levels: the last this many levels hash a per-point salt, the identity id, passed to ``forward``
            (``fastminerf.ops.hash_grid``): each identity's fine detail gets its own rows of the shared table.
            tiny-cuda-nn has no such levels: with some, ``auto`` stays native and ``tcnn`` is refused.

    The parameters are one flat vector ``params`` in tiny-cuda-nn's layout (levels concatenated, each
    ``(T_l, F)`` row-major), so ``load_tcnn_params`` copies a tiny-cuda-nn ``HashGrid``'s parameters as they are.
    Memory: ``4 * F * sum_l T_l`` bytes in float32, independent of how many identities a model holds.
    """

    def __init__(
        self,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 2.0,
        backend: str = "auto",
        identity_levels: int = 0,
    ) -> None:
        super().__init__()
        if backend not in _backend.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(_backend.BACKENDS)}")
        self.hparams = dict(
            n_levels=n_levels,
            n_features_per_level=n_features_per_level,
            log2_hashmap_size=log2_hashmap_size,
            base_resolution=base_resolution,
            per_level_scale=per_level_scale,
        )
        self.levels: HashGridLevels = hash_grid_levels(**self.hparams, identity_levels=identity_levels)
        self.identity_levels = identity_levels
        self.backend = backend
        self.params = nn.Parameter(
            torch.empty(self.levels.n_rows * n_features_per_level).uniform_(-TCNN_INIT_RANGE, TCNN_INIT_RANGE)
        )
        self._tcnn = None  # tiny-cuda-nn module sharing `params`, created on first use (not a submodule)

    def _apply(self, fn, *args, **kwargs):
        """A device move or cast drops the tiny-cuda-nn module: it was built on its first call's device (and, under
        torch's overwrite-on-conversion, shares a parameter that may have been replaced); the next call builds it
        again where the parameters now are."""
        self._tcnn = None
        return super()._apply(fn, *args, **kwargs)

    @property
    def output_dim(self) -> int:
        return self.levels.n_levels * self.levels.n_features

    @property
    def table(self) -> torch.Tensor:
        """The parameters viewed as a table (rows, F)."""
        return self.params.view(self.levels.n_rows, self.levels.n_features)

    def tcnn_config(self) -> dict:
        """The tiny-cuda-nn encoding config computing the same function."""
        h = self.hparams
        return {
            "otype": "HashGrid",
            "n_levels": h["n_levels"],
            "n_features_per_level": h["n_features_per_level"],
            "log2_hashmap_size": h["log2_hashmap_size"],
            "base_resolution": h["base_resolution"],
            "per_level_scale": h["per_level_scale"],
            "interpolation": "Linear",
        }

    @torch.no_grad()
    def load_tcnn_params(self, params: torch.Tensor) -> None:
        """Copy a tiny-cuda-nn HashGrid's flat parameter vector (float or half) into this encoding."""
        if params.numel() != self.params.numel():
            raise ValueError(
                f"tiny-cuda-nn parameters have {params.numel()} values, this grid has {self.params.numel()} "
                f"({self.levels.n_rows} rows x {self.levels.n_features} features); check the hyper-parameters"
            )
        self.params.copy_(params.reshape(-1).to(self.params))

    def resolved_backend(self, device: torch.device) -> str:
        impl = _backend.resolve(self.backend, "encoding", device.type)
        if impl == "tcnn" and self.levels.salted:
            if self.backend == "tcnn":
                raise _backend.BackendError(
                    "tiny-cuda-nn's HashGrid has no identity levels; use the native backend or "
                    "model.field.identity_levels=0")
            impl = "native" if _backend.native_for(device) else "torch"
        return impl

    def forward(self, points: torch.Tensor, salt: torch.Tensor | None = None) -> torch.Tensor:
        """points (N, 3) in [0, 1]^3, salt (N,) identity ids (needed with identity levels) -> features (N, L*F)."""
        impl = self.resolved_backend(points.device)
        if impl == "tcnn":
            return self._tcnn_forward(points)
        return hash_encode(points.to(self.params.dtype), self.table, self.levels, backend=impl, salt=salt)

    def _tcnn_forward(self, points: torch.Tensor) -> torch.Tensor:
        # tiny-cuda-nn builds and runs on the current CUDA device: make it the points' (a model on cuda:1).
        with torch.cuda.device(points.device):
            if self._tcnn is None:
                import tinycudann as tcnn  # only on CUDA machines with tiny-cuda-nn installed

                module = tcnn.Encoding(3, self.tcnn_config(), dtype=torch.float32)
                module.params = self.params  # share our parameters: one set, whatever the backend
                self._tcnn = [module]  # in a list so that it is not registered as a submodule
            return self._tcnn[0](points.float()).to(self.params.dtype)

    def extra_repr(self) -> str:
        h = self.hparams
        return (
            f"L={h['n_levels']}, F={h['n_features_per_level']}, log2_T={h['log2_hashmap_size']}, "
            f"N_min={h['base_resolution']}, b={h['per_level_scale']:.4f}, rows={self.levels.n_rows}, "
            f"identity_levels={self.identity_levels}, "
            f"backend={self.backend!r}"
        )
