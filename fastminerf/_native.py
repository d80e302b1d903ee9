"""Lazy access to the compiled extension ``fastminerf._C``.

Nothing is compiled or imported at ``import fastminerf``; the extension is imported on the first call of a
native op. When it is missing (never built, or built against another torch), one error says how to build it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch

BUILD_HINT = (
    "build it with `make install` (or `pip install --no-build-isolation -e .` in an environment that already "
    "has torch), or use backend='torch' for the pure-PyTorch reference"
)

_module: ModuleType | None = None
_error: str | None = None


class NativeExtensionError(ImportError):
    """The compiled extension is missing or cannot be loaded."""


def load() -> ModuleType:
    """Import ``fastminerf._C`` (registering ``torch.ops.fastminerf.*``) or raise :class:`NativeExtensionError`."""
    global _module, _error
    if _module is not None:
        return _module
    if _error is None:
        try:
            _module = importlib.import_module("fastminerf._C")
            return _module
        except ImportError as exc:  # missing file, or an ABI mismatch with the installed torch
            _error = f"{type(exc).__name__}: {exc}"
    raise NativeExtensionError(f"fastminerf's native extension is not available ({_error}); {BUILD_HINT}.")


def available() -> bool:
    """True when the native extension can be imported."""
    try:
        load()
    except NativeExtensionError:
        return False
    return True


def has_cuda() -> bool:
    """True when the native extension was compiled with its CUDA kernels."""
    return available() and bool(getattr(_module, "with_cuda", False))


def ops():
    """The registered op namespace ``torch.ops.fastminerf`` (loading the extension first)."""
    load()
    return torch.ops.fastminerf
