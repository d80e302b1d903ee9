"""fastminerf: one fast dynamic face NeRF for many identities (MI-NeRF on hash grids and occupancy marching).

Importing this package compiles nothing and needs no GPU; native kernels load on first use.
"""
from .backend import BACKENDS, BackendError
from .nn import HashGridEncoding, OccupancyGrid
from .ops import hash_encode, hash_encode_reference, hash_grid_levels, march_rays, per_level_scale_for

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendError",
    "HashGridEncoding",
    "OccupancyGrid",
    "hash_encode",
    "hash_encode_reference",
    "hash_grid_levels",
    "march_rays",
    "per_level_scale_for",
    "__version__",
]
