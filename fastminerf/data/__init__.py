"""Datasets: the shared on-disk layout (``DATASET.md``), ray sampling, and procedural talking heads.

- :func:`load_dataset` reads identity folders into a :class:`MultiIdentityDataset` (metadata validated
  eagerly, frames decoded lazily into a bounded cache); problems raise :class:`DatasetError`.
- :func:`camera_rays`, :func:`frame_rays` and :class:`RaySampler` turn frames into :class:`RayBatch` es.
- :mod:`fastminerf.data.synth` (:func:`generate`, :func:`contact_sheet`) writes ground-truth datasets of
  stylised heads; :mod:`fastminerf.data.heads` renders them.
"""

from .dataset import FrameCache, FrameTable, LandmarkTable, MultiIdentityDataset, load_dataset
from .heads import EXPRESSION_NAMES, HeadModel, HeadParams
from .layout import DEFAULT_AABB, DatasetError, Landmarks, SplitMeta, find_identity_dirs, read_landmarks, read_transforms
from .rays import RayBatch, RaySampler, camera_rays, frame_rays, landmark_rays, pixel_uv, ray_aabb
from .synth import REGIONS, ExpressionRegion, contact_sheet, generate, withheld_region

__all__ = [
    "DEFAULT_AABB",
    "EXPRESSION_NAMES",
    "REGIONS",
    "DatasetError",
    "ExpressionRegion",
    "FrameCache",
    "FrameTable",
    "HeadModel",
    "Landmarks",
    "HeadParams",
    "LandmarkTable",
    "MultiIdentityDataset",
    "RayBatch",
    "RaySampler",
    "SplitMeta",
    "camera_rays",
    "contact_sheet",
    "find_identity_dirs",
    "frame_rays",
    "generate",
    "landmark_rays",
    "load_dataset",
    "pixel_uv",
    "ray_aabb",
    "read_landmarks",
    "read_transforms",
    "withheld_region",
]
