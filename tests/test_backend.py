"""The backend switch (``fastminerf.backend.resolve``) without a GPU: what ``auto`` picks, and what an explicit
request for an outside library says when the library is missing, broken or too old, or the tensor is on the CPU.

The outside libraries are stand-ins written to a temporary folder on ``sys.path``; ``resolve`` takes a device
type, so its CUDA branches run without a CUDA device."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest

from fastminerf import _native
from fastminerf import backend as B
from fastminerf.backend import BackendError

MODULES = ("tinycudann", "nerfacc")

WORKING = {
    "tinycudann": "class Encoding:\n    pass\n",
    "nerfacc": "__version__ = '0.5.3'\nclass OccGridEstimator:\n    pass\n",
}


def _clear_caches():
    for value in vars(B).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """``packages(name, source)`` installs a stand-in ``name`` package whose ``__init__`` is ``source``."""
    if any(importlib.util.find_spec(m) is not None or m in sys.modules for m in MODULES):
        pytest.skip("a real tiny-cuda-nn or nerfacc is installed here")
    monkeypatch.syspath_prepend(str(tmp_path))
    _clear_caches()

    def make(name: str, source: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()

    yield make
    for m in MODULES:
        sys.modules.pop(m, None)
    _clear_caches()


def test_auto_never_picks_a_gpu_library_for_cpu_tensors(packages):
    for name, source in WORKING.items():
        packages(name, source)
    for component in B.COMPONENTS:
        assert B.resolve("auto", component, "cpu") in ("native", "torch")
    # ... and does pick them on a CUDA device.
    assert B.resolve("auto", "encoding", "cuda") == "tcnn"
    assert B.resolve("auto", "grid", "cuda") == "nerfacc"
    assert B.resolve("auto", "head", "cuda") in ("native", "torch")


@pytest.mark.parametrize("installed", [False, True])
def test_gpu_libraries_are_refused_on_the_cpu(packages, installed):
    if installed:
        for name, source in WORKING.items():
            packages(name, source)
    with pytest.raises(BackendError, match="only on CUDA devices, not on cpu"):
        B.resolve("tcnn", "encoding", "cpu")
    with pytest.raises(BackendError, match="only on CUDA devices, not on cpu"):
        B.resolve("nerfacc", "grid", "cpu")


def test_missing_library_is_named(packages):
    with pytest.raises(BackendError, match="needs the package `tinycudann`, which is not installed"):
        B.resolve("tcnn", "encoding", "cuda")
    with pytest.raises(BackendError, match="needs the package `nerfacc`, which is not installed"):
        B.resolve("nerfacc", "grid", "cuda")
    assert B.resolve("auto", "encoding", "cuda") != "tcnn"
    assert B.resolve("auto", "grid", "cuda") != "nerfacc"


def test_a_library_that_fails_to_import_is_not_picked_and_its_error_is_shown(packages):
    """tiny-cuda-nn raises at import when it has no build for the GPU's compute capability: ``auto`` must not
    pick it (the first forward pass would fail), an explicit request must say why it cannot run."""
    packages("tinycudann", """
        raise EnvironmentError("Could not find compatible tinycudann extension for compute capability 52.")
    """)
    packages("nerfacc", "raise ImportError('undefined symbol: _ZN3c10')\n")
    assert B.resolve("auto", "encoding", "cuda") != "tcnn"
    assert B.resolve("auto", "grid", "cuda") != "nerfacc"
    with pytest.raises(BackendError, match="`tinycudann`.*compute capability 52"):
        B.resolve("tcnn", "encoding", "cuda")
    with pytest.raises(BackendError, match="`nerfacc`.*undefined symbol"):
        B.resolve("nerfacc", "grid", "cuda")


def test_a_nerfacc_without_the_estimator_we_call_is_not_picked(packages):
    """The marcher calls nerfacc's ``OccGridEstimator`` (0.5 on); nerfacc 0.3 has ``OccupancyGrid`` instead."""
    packages("nerfacc", "__version__ = '0.3.5'\nclass OccupancyGrid:\n    pass\n")
    assert B.resolve("auto", "grid", "cuda") != "nerfacc"
    with pytest.raises(BackendError, match="nerfacc.*0.3.5.*OccGridEstimator"):
        B.resolve("nerfacc", "grid", "cuda")


def test_native_on_cuda_without_any_build_says_the_extension_is_missing(packages, monkeypatch):
    """Without an importable extension at all, the error is the one that says why it does not load, not that
    it was built without CUDA."""

    def load():
        raise _native.NativeExtensionError("fastminerf's native extension is not available (ImportError: ABI)")

    monkeypatch.setattr(_native, "available", lambda: False)
    monkeypatch.setattr(_native, "has_cuda", lambda: False)
    monkeypatch.setattr(_native, "load", load)
    with pytest.raises(_native.NativeExtensionError, match="not available"):
        B.resolve("native", "encoding", "cuda")
    with pytest.raises(_native.NativeExtensionError, match="not available"):
        B.resolve("native", "grid", "cpu")
    # auto and torch never need it.
    assert B.resolve("auto", "encoding", "cuda") == "torch"
    assert B.resolve("torch", "grid", "cuda") == "torch"


def test_unknown_names_are_refused(packages):
    with pytest.raises(BackendError, match="unknown backend 'cuda'"):
        B.resolve("cuda", "encoding", "cpu")
    with pytest.raises(ValueError, match="unknown component"):
        B.resolve("auto", "marcher", "cpu")


@pytest.mark.native
@pytest.mark.parametrize("device", ["mps", "meta", "xpu"])
def test_native_on_a_device_without_native_kernels_does_not_ask_for_a_cuda_build(packages, device):
    """The native extension has kernels for the CPU and CUDA only. 'native' on an Apple GPU (or a meta tensor)
    said 'the native extension has no mps kernels (built without CUDA); rebuild on a machine with a CUDA build of
    torch and nvcc': no build gives mps kernels. The error names the devices it has and the backends that run."""
    for component in B.COMPONENTS:
        with pytest.raises(BackendError) as err:
            B.resolve("native", component, device)
        message = str(err.value)
        assert "CUDA build" not in message and "built without CUDA" not in message
        assert device in message and "cpu" in message.lower() and "backend='torch'" in message
    assert B.resolve("auto", "encoding", device) == "torch"


def test_compositing_follows_the_models_grid_backend():
    # MINeRF composited natively wherever the extension loaded, whatever the config said: a model set to the torch
    # reference (model.grid_backend=torch) still summed its samples with the C++ kernel. Compositing is a component of
    # the one switch now, set by the marcher's key.
    import torch

    from fastminerf import MINeRF, load_config

    assert B.resolve("torch", "composite", "cpu") == "torch"
    assert B.resolve("nerfacc", "composite", "cpu") in ("native", "torch")  # no outside library composites
    for backend, expect in (("torch", "torch"), ("auto", B.resolve("auto", "composite", "cpu"))):
        cfg = load_config("tiny", [f"model.grid_backend={backend}"])
        model = MINeRF(cfg.model, expression_dim=4, identity_names=["a"], frame_identity=[0])
        assert model._composite_backend(torch.device("cpu")) == expect


@pytest.mark.parametrize("device, loads", [("cpu", False), ("cuda", False), ("cuda", True)])
def test_auto_without_native_kernels_warns_once_that_it_runs_the_torch_reference(packages, monkeypatch, caplog,
                                                                                  device, loads):
    """An extension that fails to load (never built, or built against another torch) or has no kernels for the
    device (a CPU-only build on a GPU machine) sends ``auto`` to the pure-PyTorch reference, many times slower:
    the user must hear it once (a warning, which the command line shows), with the reason and how to build."""

    def load():
        if loads:
            return object()
        raise _native.NativeExtensionError("fastminerf's native extension is not available (ImportError: ABI); "
                                           + _native.BUILD_HINT)

    monkeypatch.setattr(_native, "available", lambda: loads)
    monkeypatch.setattr(_native, "has_cuda", lambda: False)
    monkeypatch.setattr(_native, "load", load)
    with caplog.at_level("WARNING", logger="fastminerf"):
        for component in B.COMPONENTS:
            assert B.resolve("auto", component, device) == "torch"
        # another device: its own line where it has no kernels either (a CPU-only build runs native on the CPU)
        B.resolve("auto", "encoding", "cpu" if device == "cuda" else "cuda")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == (1 if loads else 2), warnings
    first = warnings[0]
    assert device in first and "torch" in first, first
    assert ("built without CUDA" in first) if loads else ("ImportError: ABI" in first and "make install" in first), first


@pytest.mark.parametrize("record", [True, False])
def test_an_extension_built_against_another_torch_names_both_versions_and_the_rebuild(monkeypatch, tmp_path, record):
    """pip installing a newer torch beside an extension built against an older one (the wheel asks only torch>=2.1)
    gave "fastminerf's native extension is not available (ImportError: ...: undefined symbol: _ZN3c10...); build it
    with `make install` ...": neither torch version, and `make install` does nothing after a torch upgrade (its
    stamp depends on the sources only). The build records its torch beside the extension (setup.py); the error
    names it and this torch, and the commands that rebuild it against this torch or install the one it was
    built against."""
    import importlib
    import json

    real_import = importlib.import_module

    def import_module(name, *args):
        if name == "fastminerf._C":
            raise ImportError("/x/fastminerf/_C.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev")
        return real_import(name, *args)

    built = tmp_path / "_C_build.json"
    if record:
        built.write_text(json.dumps({"torch": "2.11.0+cpu", "cuda": None}))
    monkeypatch.setattr(_native, "BUILD_RECORD", built, raising=False)
    monkeypatch.setattr(_native.importlib, "import_module", import_module)
    monkeypatch.setattr(_native, "_module", None)
    monkeypatch.setattr(_native, "_error", None)
    monkeypatch.setattr(_native, "_hint", _native.BUILD_HINT)  # load() sets it: put back after the test
    import torch

    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    version = "built against torch 2.11.0\\+cpu" if record else "built against another torch"
    with pytest.raises(_native.NativeExtensionError,
                       match=rf"undefined symbol.*{version}.*this is torch 2.13.0\+cpu.*"
                             rf"pip install --no-build-isolation --no-deps --force-reinstall -e \."):
        _native.load()
    if record:
        with pytest.raises(_native.NativeExtensionError, match=r"pip install 'torch==2.11.0'"):
            _native.load()
