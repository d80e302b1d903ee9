"""``fastminerf prepare``: talking-face videos to a training dataset in the shared layout, on a CPU.

One module per concept:

- :mod:`.video`: decoding at a constant frame rate (imageio-ffmpeg's ffmpeg) and audio extraction;
- :mod:`.tracking`: mediapipe face mesh (478 landmarks) and selfie segmentation, imported lazily;
- :mod:`.pose`: canonical face (Procrustes), rigid alignment, perspective head pose, smoothing, cameras;
- :mod:`.expression`: the expression basis shared by every identity of an output folder;
- :mod:`.background`: the static background image;
- :mod:`.contact_sheet`: one PNG per video to check the tracking at a glance;
- :mod:`.pipeline`: the stages, failures kept per video, resume.

Example:
    Two videos of faces in the working folder (not run by the package's doctests, which have no such videos;
    ``prepare`` also needs mediapipe, see the README's Data):

    >>> from fastminerf.prepare import prepare
    >>> from fastminerf.config import PrepareConfig
    >>> result = prepare(["alice.mp4", "bob.mov"], "data", PrepareConfig(size=256))  # doctest: +SKIP
    >>> [(v.name, v.status, v.frames_used) for v in result.videos]                     # doctest: +SKIP
"""

from .expression import BASIS_FILE, ExpressionBasis
from .pipeline import PrepareError, PrepareResult, VideoResult, check_prepare, prepare
from .tracking import MediapipeMissing, require_mediapipe
from .video import VideoError

__all__ = [
    "BASIS_FILE",
    "ExpressionBasis",
    "MediapipeMissing",
    "PrepareError",
    "PrepareResult",
    "VideoError",
    "VideoResult",
    "check_prepare",
    "prepare",
    "require_mediapipe",
]
