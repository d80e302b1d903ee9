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


class _FirstOrderOnly(torch.autograd.Function):
    """The gradients a native backward kernel computed, as a node of the graph that raises if differentiated: the
    kernels are not differentiable themselves, and torch's fallback for an op without an autograd kernel only warns
    and gives wrong second derivatives. The graph reaches the op's inputs through ``anchors`` (its saved inputs),
    so the error is raised, not 'appears to not have been used in the graph'."""

    @staticmethod
    def forward(ctx, op: str, n_grads: int, *tensors):
        ctx.op = op
        return tuple(t.clone() for t in tensors[:n_grads])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f"fastminerf: {ctx.op}'s native backward is not differentiable, so a second derivative "
                           f"through it (create_graph=True) is not available: use backend='torch' (the reference, "
                           f"differentiated by autograd) for second derivatives")


def first_order_only(op: str, grads: tuple, anchors: tuple) -> tuple:
    """``grads`` (tensors or None) of a native backward: as they are, or, when the backward runs with
    create_graph=True, joined to the graph so that differentiating them again raises an error naming ``op``."""
    if not torch.is_grad_enabled():
        return grads
    present = [i for i, g in enumerate(grads) if g is not None]
    anchors = [a for a in anchors if isinstance(a, torch.Tensor) and a.requires_grad]
    if not present or not anchors:
        return grads
    wrapped = _FirstOrderOnly.apply(op, len(present), *[grads[i] for i in present], *anchors)
    out = list(grads)
    for i, g in zip(present, wrapped):
        out[i] = g
    return tuple(out)
