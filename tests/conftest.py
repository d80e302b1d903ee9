"""Shared test setup. GPU-only tests are marked and skipped here, in one place:

- ``@pytest.mark.cuda``: needs a CUDA device (``torch.cuda.is_available()`` evaluated at collection).
- ``@pytest.mark.tcnn`` / ``@pytest.mark.nerfacc``: also need tiny-cuda-nn / nerfacc installed.
- ``@pytest.mark.native``: needs the compiled extension (built by ``make install``); a missing build is a
  failure, not a skip, unless ``FASTMINERF_ALLOW_NO_NATIVE=1`` (for checking the pure-PyTorch path alone).
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
HAS_TCNN = HAS_CUDA and importlib.util.find_spec("tinycudann") is not None
HAS_NERFACC = HAS_CUDA and importlib.util.find_spec("nerfacc") is not None


def _native_available() -> bool:
    from fastminerf import _native

    return _native.available()


def pytest_configure(config):
    for name, text in [
        ("cuda", "needs a CUDA device"),
        ("tcnn", "needs a CUDA device and tiny-cuda-nn"),
        ("nerfacc", "needs a CUDA device and nerfacc"),
        ("native", "needs the compiled native extension"),
    ]:
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config, items):
    reasons = {
        "cuda": None if HAS_CUDA else "no CUDA device",
        "tcnn": None if HAS_TCNN else "tiny-cuda-nn or a CUDA device is missing",
        "nerfacc": None if HAS_NERFACC else "nerfacc or a CUDA device is missing",
    }
    if os.environ.get("FASTMINERF_ALLOW_NO_NATIVE") == "1" and not _native_available():
        reasons["native"] = "native extension not built (FASTMINERF_ALLOW_NO_NATIVE=1)"
    for item in items:
        for name, reason in reasons.items():
            if reason and name in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def generator():
    """A fresh, seeded CPU random generator per test."""
    return torch.Generator().manual_seed(1234)


def _decode_audio(path, rate: int = 16000):
    """The audio stream of a media file as mono int16 samples at ``rate`` (decoded by imageio-ffmpeg's ffmpeg), or
    an empty array when it has none."""
    import subprocess

    import imageio_ffmpeg
    import numpy as np

    res = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-vn", "-f", "s16le",
                          "-ac", "1", "-ar", str(rate), "-"], capture_output=True)
    return np.frombuffer(res.stdout, "<i2")


@pytest.fixture
def decode_audio():
    """``decode_audio(path, rate=16000) -> (S,) int16``: the sound of an mp4 as it plays."""
    return _decode_audio
