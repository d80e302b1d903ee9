"""The one backend switch: which implementation computes the encoding, the occupancy grid / marcher and the fused
MLP heads.

Values: ``auto`` | ``native`` | ``torch`` | ``tcnn`` | ``nerfacc``.

- ``native``: fastminerf's own C++ (CPU) and CUDA kernels.
- ``torch``: the pure-PyTorch reference of the same functions (slow; needs nothing compiled).
- ``tcnn``: the hash encoding through tiny-cuda-nn (CUDA only); everything else native.
- ``nerfacc``: the occupancy grid and ray marcher through nerfacc (CUDA only); everything else native.

The heads (component ``head``: one hidden layer, the per-ray conditioning added to it) have no outside library:
tiny-cuda-nn's fused MLPs take no per-ray input. They run native wherever the extension has kernels for the
device, and as torch ops with ``torch`` or without a build.
- ``auto``: on a CUDA device, tiny-cuda-nn and nerfacc where installed; otherwise native where compiled for
  the device; otherwise the torch reference.

A backend is resolved once per (component, device) and logged once; it never changes silently mid-run.
"""
from __future__ import annotations

import functools
import importlib.util
import logging

import torch

from . import _native

BACKENDS = ("auto", "native", "torch", "tcnn", "nerfacc")
COMPONENTS = ("encoding", "grid", "head")

log = logging.getLogger("fastminerf")


class BackendError(RuntimeError):
    """A requested backend cannot run here."""


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def native_for(device: torch.device) -> bool:
    """Whether the native extension has kernels for ``device``."""
    if device.type == "cpu":
        return _native.available()
    return device.type == "cuda" and _native.has_cuda()


@functools.lru_cache(maxsize=None)
def resolve(backend: str, component: str, device_type: str) -> str:
    """Resolve ``backend`` for ``component`` ("encoding", "grid" or "head") on ``device_type`` to the implementation
    that runs: "native", "torch", "tcnn" or "nerfacc". Raises :class:`BackendError` when it cannot run."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}")
    device = torch.device(device_type)
    outside = {"encoding": "tcnn", "grid": "nerfacc", "head": None}[component]
    module = {"tcnn": "tinycudann", "nerfacc": "nerfacc", None: None}[outside]
    if backend == "auto":
        if device.type == "cuda" and outside is not None and _installed(module):
            choice = outside
        elif native_for(device):
            choice = "native"
        else:
            choice = "torch"
    elif backend in ("tcnn", "nerfacc") and backend == outside:
        if device.type != "cuda":
            raise BackendError(f"backend {backend!r} runs only on CUDA devices, not on {device.type}")
        if not _installed(module):
            raise BackendError(f"backend {backend!r} needs the package `{module}`, which is not installed")
        choice = backend
    elif backend == "torch":
        choice = "torch"
    elif component == "head" and backend in ("tcnn", "nerfacc") and not native_for(device):
        choice = "torch"  # the heads have no outside library; without native kernels they stay torch ops
    else:  # "native", or the other outside library's name: this component stays native
        if not native_for(device):
            if device.type == "cpu":
                _native.load()  # raises the error that says how to build
            raise BackendError(
                f"the native extension has no {device.type} kernels (built without CUDA); rebuild on a machine "
                "with a CUDA build of torch and nvcc, or choose backend='torch'"
            )
        choice = "native"
    log.info("fastminerf: %s backend on %s: %s (requested %r)", component, device.type, choice, backend)
    return choice
