"""Functional core. Each kernel (the hash encoding, the occupancy update, bitfield and marcher, compositing, the
fused MLP head) has a native implementation (C++ CPU / CUDA) and a pure-PyTorch reference of the same function
(the native backward gives first derivatives only: a second derivative, ``create_graph=True``, needs the reference);
the small helpers beside them (:func:`distortion_loss`, :func:`unpack_bitfield`, :func:`occupancy_threshold`,
:func:`cascade_aabbs`, :func:`ray_indices_from_offsets`, and :func:`fastminerf.ops.texture.texture_lookup`, the
torso layer's lookup) are plain PyTorch only."""
from .compositing import CompositeResult, composite, composite_reference, distortion_loss, ray_indices_from_offsets
from .hash_grid import (
    HashGridLevels,
    hash_encode,
    hash_encode_reference,
    hash_grid_levels,
    hash_grid_rows,
    per_level_scale_for,
)
from .mlp_head import mlp_head, mlp_head_reference
from .occupancy import (
    RaySamples,
    cascade_aabbs,
    ema_update,
    ema_update_reference,
    march_rays,
    march_rays_reference,
    occupancy_threshold,
    pack_bitfield,
    pack_bitfield_reference,
    unpack_bitfield,
)

__all__ = [
    "CompositeResult",
    "composite",
    "composite_reference",
    "distortion_loss",
    "ray_indices_from_offsets",
    "HashGridLevels",
    "hash_encode",
    "hash_encode_reference",
    "hash_grid_levels",
    "hash_grid_rows",
    "per_level_scale_for",
    "mlp_head",
    "mlp_head_reference",
    "RaySamples",
    "cascade_aabbs",
    "ema_update",
    "ema_update_reference",
    "march_rays",
    "march_rays_reference",
    "occupancy_threshold",
    "pack_bitfield",
    "pack_bitfield_reference",
    "unpack_bitfield",
]
