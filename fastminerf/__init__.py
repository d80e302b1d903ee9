"""fastminerf: one fast dynamic face NeRF for many identities (MI-NeRF on hash grids and occupancy marching).

Importing this package compiles nothing and needs no GPU; native kernels load on first use.
"""
from .backend import BACKENDS, BackendError
from .config import (
    ConfigError,
    DataConfig,
    FieldConfig,
    ModelConfig,
    PrepareConfig,
    RunConfig,
    SamplerConfig,
    SynthConfig,
    TrainConfig,
    dump_config,
    load_config,
)
from .data import (
    EXPRESSION_NAMES,
    DatasetError,
    FrameTable,
    MultiIdentityDataset,
    RayBatch,
    RaySampler,
    camera_rays,
    frame_rays,
    load_dataset,
    ray_aabb,
)
from .nn import HashGridEncoding, OccupancyGrid
from .ops import (
    CompositeResult,
    RaySamples,
    composite,
    composite_reference,
    hash_encode,
    hash_encode_reference,
    hash_grid_levels,
    march_rays,
    march_rays_reference,
    per_level_scale_for,
)

from .field import ConcatConditioning, MINeRFField, MultiplicativeConditioning, spherical_harmonics
from .model import MINeRF
from .train import (CheckpointError, TrainingDiverged, TrainResult, build_model, build_optimizer, load_checkpoint, load_run,
                    lr_factor, personalize, save_run, train, write_curve)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendError",
    "DataConfig",
    "DatasetError",
    "EXPRESSION_NAMES",
    "FrameTable",
    "MultiIdentityDataset",
    "RayBatch",
    "RaySampler",
    "PrepareConfig",
    "SamplerConfig",
    "SynthConfig",
    "camera_rays",
    "frame_rays",
    "load_dataset",
    "ray_aabb",
    "CompositeResult",
    "HashGridEncoding",
    "OccupancyGrid",
    "RaySamples",
    "composite",
    "composite_reference",
    "hash_encode",
    "hash_encode_reference",
    "hash_grid_levels",
    "march_rays",
    "march_rays_reference",
    "per_level_scale_for",
    "CheckpointError",
    "ConcatConditioning",
    "ConfigError",
    "FieldConfig",
    "MINeRF",
    "MINeRFField",
    "ModelConfig",
    "MultiplicativeConditioning",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "build_model",
    "build_optimizer",
    "dump_config",
    "load_checkpoint",
    "load_config",
    "load_run",
    "lr_factor",
    "personalize",
    "save_run",
    "spherical_harmonics",
    "train",
    "write_curve",
    "__version__",
]

# Rendering, evaluation and the demo (issue 4).
from .demo import DemoResult, run_demo
from .metrics import (LandmarkDistance, MetricUnavailable, eye_aspect_ratio, l1, landmark_status, lpips, lpips_status,
                      psnr, rotation_gap_deg, ssim)
from .render import (
    CameraPath,
    RenderError,
    VideoInfo,
    background_image,
    drive_path,
    driver_from_video,
    evaluate,
    expression_transfer,
    neutral_frame,
    orbit_cameras,
    orbit_path,
    relative_cameras,
    render_frame,
    render_sequence,
    render_video,
    set_render_steps,
    side_by_side,
    straight_alpha,
    training_basis,
    write_video,
)

__all__ += [
    "CameraPath",
    "DemoResult",
    "LandmarkDistance",
    "MetricUnavailable",
    "RenderError",
    "VideoInfo",
    "background_image",
    "drive_path",
    "driver_from_video",
    "evaluate",
    "eye_aspect_ratio",
    "expression_transfer",
    "l1",
    "landmark_status",
    "lpips",
    "lpips_status",
    "neutral_frame",
    "orbit_cameras",
    "orbit_path",
    "relative_cameras",
    "psnr",
    "render_frame",
    "render_sequence",
    "render_video",
    "rotation_gap_deg",
    "set_render_steps",
    "training_basis",
    "run_demo",
    "side_by_side",
    "ssim",
    "straight_alpha",
    "write_video",
]

# Speech to expressions (lip sync): a person saying another recording.
from .render import speech_path
from .speech import (
    SpeechConfig,
    SpeechError,
    SpeechModel,
    load_speech_clips,
    load_speech_model,
    predict_expressions,
    save_speech_model,
    speech_clips,
    split_expressions,
    train_speech,
)

__all__ += ["SpeechConfig", "SpeechError", "SpeechModel", "load_speech_clips", "load_speech_model", "predict_expressions",
            "save_speech_model", "speech_clips", "speech_path", "split_expressions", "train_speech"]
