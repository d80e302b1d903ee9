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


def _file_size_limit(limit: int):
    """A context manager: the process's files may not grow past ``limit`` bytes while it is entered (RLIMIT_FSIZE, the
    writes past it failing with EFBIG, as a full disk fails them with ENOSPC; SIGXFSZ ignored, which would end the
    process). Skips the test where there is no such limit (not POSIX)."""
    import contextlib
    import signal

    resource = pytest.importorskip("resource")

    @contextlib.contextmanager
    def limited():
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous)

    return limited()


@pytest.fixture
def file_size_limit():
    """``with file_size_limit(bytes):`` a disk that is full past ``bytes`` a file, for the process (:func:`_file_size_limit`)."""
    return _file_size_limit


# ------------------------------------------------------------------------------------------ a simulated GPU


class FakeCudaTensor(torch.Tensor):
    """A tensor on the simulated GPU of :func:`fake_cuda`: it computes on the CPU, says ``device`` cuda:0, and is
    refused as a CUDA tensor is: mixed with a (non-scalar) CPU tensor in one operation ('Expected all tensors to be
    on the same device') or turned into NumPy without coming back to the CPU first. ``.to("cpu")`` / ``.cpu()`` give a
    plain CPU tensor."""

    @property
    def device(self):
        return torch.device("cuda", 0)

    @property
    def is_cuda(self):
        return True

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                        "host memory first.")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor).clone()

    def to(self, *args, **kwargs):
        device = _to_device(args, kwargs)
        plain = self.as_subclass(torch.Tensor)
        if device is not None and device.type == "cpu":
            return _REAL_TENSOR_TO(plain, *_on_cpu(args, kwargs)[0], **_on_cpu(args, kwargs)[1])
        return _REAL_TENSOR_TO(plain, *_on_cpu(args, kwargs)[0], **_on_cpu(args, kwargs)[1]).as_subclass(FakeCudaTensor)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.__name__ == "__get__":  # attribute reads (shape, dtype, ...) other than the properties above
            return super().__torch_function__(func, types, args, kwargs)
        flat = []

        def walk(x):
            if isinstance(x, torch.Tensor):
                flat.append(x)
            elif isinstance(x, (list, tuple)):
                for y in x:
                    walk(y)
            elif isinstance(x, dict):
                for y in x.values():
                    walk(y)

        walk(args)
        walk(kwargs)
        on_cpu = [t for t in flat if not isinstance(t, FakeCudaTensor) and t.dim() > 0]
        if on_cpu and any(isinstance(t, FakeCudaTensor) for t in flat):
            raise RuntimeError(f"{getattr(func, '__name__', func)}: Expected all tensors to be on the same device, but "
                               "found at least two devices, cuda:0 and cpu!")
        return super().__torch_function__(func, types, args, kwargs)


_REAL_TENSOR_TO = torch.Tensor.to


def _to_device(args, kwargs):
    """The device a ``Tensor.to`` / ``Module.to`` call moves to, or None (a dtype alone)."""
    target = kwargs.get("device", args[0] if args else None)
    if isinstance(target, torch.Tensor):
        return target.device
    if isinstance(target, (str, torch.device)):
        return torch.device(target)
    return None


def _on_cpu(args, kwargs):
    """``args, kwargs`` of a ``to`` call with the CPU in place of its device."""
    if "device" in kwargs:
        return args, {**kwargs, "device": "cpu"}
    if args and isinstance(args[0], (str, torch.device)):
        return ("cpu",) + tuple(args[1:]), kwargs
    if args and isinstance(args[0], torch.Tensor):
        return (args[0].dtype,) + tuple(args[1:]), kwargs
    return args, kwargs


@pytest.fixture
def fake_cuda(monkeypatch):
    """One simulated CUDA device on this CPU machine (no test here has a GPU). torch says one is there
    (``torch.cuda.is_available()``, ``device_count() == 1``); ``tensor.to("cuda")`` gives a :class:`FakeCudaTensor`
    (computing on the CPU, refused where a CUDA tensor would be); ``module.to("cuda")`` leaves the module's tensors on
    the CPU, so that fastminerf's own model computes, and is recorded: the fixture's ``moves`` lists
    ``(class name, device)`` of each module moved to the GPU."""
    import types

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    # the GPU's random state, which torch.random.fork_rng keeps (fastminerf.train's calls keep torch's state)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.zeros(16, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": None)
    if hasattr(torch, "accelerator"):  # a CUDA build of torch (make check-cuda-extension) asks the driver for a stream
        # at every Adam step once CUDA is said to be there (its graph-capture check); no stream is capturing here
        monkeypatch.setattr(torch.accelerator, "current_stream",
                            lambda device=None: types.SimpleNamespace(is_capturing=lambda: False))
    state = types.SimpleNamespace(moves=[])

    def tensor_to(self, *args, **kwargs):
        device = _to_device(args, kwargs)
        if device is not None and device.type == "cuda" and not isinstance(self, FakeCudaTensor):
            a, k = _on_cpu(args, kwargs)
            return _REAL_TENSOR_TO(self, *a, **k).as_subclass(FakeCudaTensor)
        return _REAL_TENSOR_TO(self, *args, **kwargs)

    real_module_to = torch.nn.Module.to

    def module_to(self, *args, **kwargs):
        device = _to_device(args, kwargs)
        if device is not None and device.type == "cuda":
            state.moves.append((type(self).__name__, device))
            a, k = _on_cpu(args, kwargs)
            return real_module_to(self, *a, **k)
        return real_module_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", tensor_to)
    monkeypatch.setattr(torch.nn.Module, "to", module_to)
    return state
