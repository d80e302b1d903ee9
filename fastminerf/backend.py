"""The one backend switch: which implementation computes the encoding, the occupancy grid / marcher, the fused
MLP heads and the volume compositing.

Values: ``auto`` | ``native`` | ``torch`` | ``tcnn`` | ``nerfacc``.

- ``native``: fastminerf's own C++ (CPU) and CUDA kernels.
- ``torch``: the pure-PyTorch reference of the same functions (slow; needs nothing compiled).
- ``tcnn``: the hash encoding through tiny-cuda-nn (CUDA only); everything else native.
- ``nerfacc``: the occupancy grid and ray marcher through nerfacc (CUDA only); everything else native.

The heads (component ``head``: one hidden layer, the per-ray conditioning added to it) and the compositing (component
``composite``, set by the model's ``grid_backend`` with the marcher whose samples it sums) have no outside library:
tiny-cuda-nn's fused MLPs take no per-ray input, and the samples are composited by our own op whichever marcher made
them. They run native wherever the extension has kernels for the device, and as torch ops with ``torch`` or without
a build.
- ``auto``: on a CUDA device, tiny-cuda-nn and nerfacc where installed and importable (one that is installed but
  fails to import, or too old, is skipped with a warning); otherwise native where compiled for the device;
  otherwise the torch reference (on a CPU or CUDA device with a warning, once, that says why the native kernels
  are missing). Never an outside library for a tensor off CUDA.

A backend is resolved once per (component, device) and logged once; it never changes silently mid-run.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import platform
from pathlib import Path
from typing import Optional, Union

import torch

from . import _native

BACKENDS = ("auto", "native", "torch", "tcnn", "nerfacc")
COMPONENTS = ("encoding", "grid", "head", "composite")

log = logging.getLogger("fastminerf")


class BackendError(RuntimeError):
    """A requested backend cannot run here."""


_NEEDS = {"tinycudann": "Encoding", "nerfacc": "OccGridEstimator"}
"""What fastminerf calls in each outside package (nerfacc has ``OccGridEstimator`` from 0.5 on)."""


@functools.lru_cache(maxsize=None)
def _unusable(module: str) -> str | None:
    """Why the outside package ``module`` cannot run here, or None when it can. Being found on the path is not
    enough: tiny-cuda-nn raises at import when it has no build for the GPU's compute capability, either can be
    built against another torch, and an old nerfacc lacks the estimator we call; ``auto`` picking such a package
    would fail at the first forward pass instead of running native."""
    if importlib.util.find_spec(module) is None:
        return "which is not installed"
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, or tiny-cuda-nn's EnvironmentError
        return f"which fails to import ({type(exc).__name__}: {exc})"
    if not hasattr(mod, _NEEDS[module]):
        return f"whose version {getattr(mod, '__version__', '(unknown)')} has no `{_NEEDS[module]}`"
    return None


@functools.lru_cache(maxsize=None)
def _warn_torch_fallback(device_type: str) -> None:
    """Warn once per device type that ``auto`` runs the pure-PyTorch reference for want of native kernels."""
    if device_type == "cpu" or not _native.available():
        try:
            _native.load()
            why = "the native extension does not load"
        except _native.NativeExtensionError as exc:
            why = str(exc)
    else:
        why = ("the native extension was built without CUDA kernels; rebuild it on a machine with a CUDA build of "
               "torch and nvcc")
    log.warning("fastminerf: backend 'auto' runs the pure-PyTorch reference on %s, many times slower than the "
                "native kernels: %s", device_type, why)


def native_for(device: torch.device) -> bool:
    """Whether the native extension has kernels for ``device``."""
    if device.type == "cpu":
        return _native.available()
    return device.type == "cuda" and _native.has_cuda()


@functools.lru_cache(maxsize=None)
def resolve(backend: str, component: str, device_type: str) -> str:
    """Resolve ``backend`` for ``component`` ("encoding", "grid", "head" or "composite") on ``device_type`` to the implementation
    that runs: "native", "torch", "tcnn" or "nerfacc". Raises :class:`BackendError` when it cannot run."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}")
    device = torch.device(device_type)
    outside = {"encoding": "tcnn", "grid": "nerfacc", "head": None, "composite": None}[component]
    module = {"tcnn": "tinycudann", "nerfacc": "nerfacc", None: None}[outside]
    if backend == "auto":
        reason = _unusable(module) if device.type == "cuda" and outside is not None else "not for this device"
        if reason is None:
            choice = outside
        else:
            if device.type == "cuda" and outside is not None and reason != "which is not installed":
                log.warning("fastminerf: backend 'auto' does not use %s for the %s: the package `%s` is installed, %s",
                            outside, component, module, reason)
            choice = "native" if native_for(device) else "torch"
            if choice == "torch" and device.type in ("cpu", "cuda"):  # other devices have no native kernels at all
                _warn_torch_fallback(device.type)
    elif backend in ("tcnn", "nerfacc") and backend == outside:
        if device.type != "cuda":
            raise BackendError(f"backend {backend!r} runs only on CUDA devices, not on {device.type}")
        reason = _unusable(module)
        if reason is not None:
            raise BackendError(f"backend {backend!r} needs the package `{module}`, {reason}")
        choice = backend
    elif backend == "torch":
        choice = "torch"
    elif outside is None and backend in ("tcnn", "nerfacc") and not native_for(device):
        choice = "torch"  # the heads and compositing have no outside library; without native kernels they stay torch
        if device.type in ("cpu", "cuda"):
            _warn_torch_fallback(device.type)
    else:  # "native", or the other outside library's name: this component stays native
        if not native_for(device):
            if device.type == "cpu" or not _native.available():
                _native.load()  # raises the error that says why it does not load and how to build
            if device.type != "cuda":
                raise BackendError(f"the native extension has kernels for cpu and cuda tensors only, not "
                                   f"{device.type}; choose backend='torch' (or 'auto', which picks it there)")
            raise BackendError(
                f"the native extension has no {device.type} kernels (built without CUDA); rebuild on a machine "
                "with a CUDA build of torch and nvcc, or choose backend='torch'"
            )
        choice = "native"
    log.info("fastminerf: %s backend on %s: %s (requested %r)", component, device.type, choice, backend)
    return choice


def available() -> dict:
    """What can run on this machine, for ``fastminerf --version``: each implementation -> "yes" or "no (why)"
    (the native extension's CPU and CUDA kernels, tiny-cuda-nn, nerfacc, the torch reference), and whether torch
    sees a CUDA device. Importing tiny-cuda-nn and nerfacc is part of the check (as ``auto`` does)."""
    try:
        _native.load()
        native = "yes"
    except _native.NativeExtensionError:
        native = f"no (the extension does not load: {_native.load_error()})"
    if native != "yes":
        native_cuda = "no (the extension does not load)"
    else:
        native_cuda = "yes" if _native.has_cuda() else "no (the extension was built without CUDA kernels)"
    cuda = torch.cuda.is_available()
    out = {"native CPU kernels": native, "native CUDA kernels": native_cuda}
    for name, module in (("tiny-cuda-nn", "tinycudann"), ("nerfacc", "nerfacc")):
        reason = _unusable(module)
        out[name] = ("yes" if cuda else "installed, but no CUDA device here") if reason is None else \
            f"no ({reason.removeprefix('which ').removeprefix('whose ')})"
    out["torch reference"] = "yes"
    out["CUDA device"] = (f"yes ({torch.cuda.device_count()}: {torch.cuda.get_device_name(0)})" if cuda
                          else f"no (torch {torch.__version__} sees none)")
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu_name(device: Optional[torch.device]) -> Optional[str]:
    """The CUDA device's name (``device``'s, else the current one's where torch sees one), or None."""
    if device is not None and device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        return torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError) as exc:  # a driver that cannot answer: the record says so
        return f"unknown ({exc})"


def machine(device: Optional[Union[str, torch.device]] = None) -> dict:
    """Where and with what numbers were computed: the CPU, its cores, torch's threads, the versions of Python, torch,
    numpy and fastminerf, the platform and the GPU (None without one). Benchmark records carry it (with the
    commit) and so does ``evaluate``'s metrics.json; with ``device`` (where the model ran) it names that too, and
    the GPU is that device's (None on the CPU)."""
    import numpy

    from . import __version__

    where = None if device is None else torch.device(device)
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "fastminerf": __version__,
        "platform": platform.platform(),
        "gpu": _gpu_name(where),
    }
    if where is not None:
        info["device"] = str(where)
    return info
