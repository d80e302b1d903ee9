"""Lazy access to the compiled extension ``fastminerf._C``.

Nothing is compiled or imported at ``import fastminerf``; the extension is imported on the first call of a
native op. When it is missing (never built, or built against another torch), one error says how to build it.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import torch

BUILD_HINT = (
    "build it with `make install` (or `pip install --no-build-isolation -e .` in an environment that already "
    "has torch), or use backend='torch' for the pure-PyTorch reference"
)

BUILD_RECORD = Path(__file__).with_name("_C_build.json")
"""Written by setup.py beside the extension it builds: the torch (and CUDA) it was compiled against."""

REBUILD = ("rebuild it against this torch from fastminerf's source folder: `pip install --no-build-isolation --no-deps "
           "--force-reinstall -e .` (`make install` does not rebuild after a torch upgrade)")

_module: ModuleType | None = None
_error: str | None = None
_hint: str = BUILD_HINT


class NativeExtensionError(ImportError):
    """The compiled extension is missing or cannot be loaded."""


def load() -> ModuleType:
    """Import ``fastminerf._C`` (registering ``torch.ops.fastminerf.*``) or raise :class:`NativeExtensionError`."""
    global _module, _error, _hint
    if _module is not None:
        return _module
    if _error is None:
        try:
            _module = importlib.import_module("fastminerf._C")
            return _module
        except ImportError as exc:  # missing file, or an ABI mismatch with the installed torch
            _error = f"{type(exc).__name__}: {exc}"
            _hint = _torch_mismatch(str(exc)) or BUILD_HINT
    raise NativeExtensionError(f"fastminerf's native extension is not available ({_error}); {_hint}.")


def _torch_mismatch(error: str) -> str | None:
    """What to do when the extension was built against another torch than this one (its build record says so, or,
    without a record, the import failed on an undefined symbol, a C++ ABI mismatch); else None."""
    try:
        built = json.loads(BUILD_RECORD.read_text()).get("torch")
    except (OSError, ValueError, AttributeError):
        built = None
    if built is not None and built != torch.__version__:
        public = str(built).split("+")[0]
        return (f"it was built against torch {built} and this is torch {torch.__version__}: {REBUILD}, or install the "
                f"torch it was built against: `pip install 'torch=={public}'`, or use backend='torch' for the "
                "pure-PyTorch reference")
    if built is None and "undefined symbol" in error:
        return (f"it was most likely built against another torch, and this is torch {torch.__version__}: {REBUILD}, "
                "or use backend='torch' for the pure-PyTorch reference")
    return None


def load_error() -> str | None:
    """Why the extension does not load (the import's error, short), or None when it loads."""
    return None if available() else _error


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
