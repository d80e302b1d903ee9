"""setup.py's translation of FASTMINERF_CUDA_ARCHITECTURES (CMake's form, shared with CMakeLists.txt) into torch's
TORCH_CUDA_ARCH_LIST: the newest architecture also gets PTX, so GPUs newer than any listed still run the kernels."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "setup.py"


@pytest.fixture(scope="module")
def torch_arch_list():
    spec = importlib.util.spec_from_file_location("fastminerf_setup", SETUP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the helpers, builds nothing
    return module.torch_arch_list


@pytest.mark.parametrize("spec, expected", [
    ("80;90", "8.0;9.0+PTX"),
    ("90,80", "9.0+PTX;8.0"),
    ("86", "8.6+PTX"),
    ("120", "12.0+PTX"),
    (" 75 ; 86 ; ", "7.5;8.6+PTX"),
    ("80;90a", "8.0+PTX;9.0a"),  # arch-specific 90a has no portable PTX: the newest portable entry carries it
    ("90a", "9.0a"),
    ("80-real;90-real", "8.0;9.0+PTX"),
    ("80;90-virtual", "8.0;9.0+PTX"),  # PTX asked for: nothing added
    ("80-virtual;90-real", "8.0+PTX;9.0"),
    ("8.6+PTX;8.0", "8.6+PTX;8.0"),  # torch's own form passes through
    ("8.0;8.6", "8.0;8.6+PTX"),
])
def test_cmake_architectures_become_torch_arch_list(torch_arch_list, spec, expected):
    assert torch_arch_list(spec) == expected


@pytest.mark.parametrize("spec", ["", ";", "sm_80", "8", "native", "80-fast"])
def test_unreadable_architectures_are_named(torch_arch_list, spec):
    with pytest.raises(ValueError, match="FASTMINERF_CUDA_ARCHITECTURES"):
        torch_arch_list(spec)


def _run_setup(args, env=None, hide_torch=False, cwd=None):
    """Run setup.py as pip does (as __main__, in a subprocess), optionally in an environment where torch cannot be
    imported (what pip's default build isolation gives: a fresh environment with setuptools and wheel only)."""
    import os
    import subprocess
    import sys

    prelude = "import sys; sys.modules['torch'] = None; " if hide_torch else ""
    code = prelude + f"import runpy; sys.argv = ['setup.py'] + {list(args)!r}; runpy.run_path({str(SETUP)!r}, run_name='__main__')"
    return subprocess.run([sys.executable, "-c", "import sys; " + code], capture_output=True, text=True, timeout=120,
                          cwd=cwd or SETUP.parent, env={**os.environ, **(env or {})})


def test_build_without_torch_says_how_to_install(tmp_path):
    """`pip install DIR` builds in an isolated environment without torch: the build must say to install torch first
    and to build without isolation, not end in a ModuleNotFoundError traceback."""
    proc = _run_setup(["egg_info", "--egg-base", str(tmp_path)], hide_torch=True)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "--no-build-isolation" in proc.stderr and "torch" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def egg_info(tmp_path_factory):
    """The metadata setuptools builds (egg_info, which the sdist and the wheel are made from), written outside the
    source tree: the folder holding fastminerf.egg-info."""
    base = tmp_path_factory.mktemp("egg")
    proc = _run_setup(["-q", "egg_info", "--egg-base", str(base)])
    assert proc.returncode == 0, proc.stderr
    return base / "fastminerf.egg-info"


def test_sdist_carries_what_the_build_needs(egg_info):
    """An sdist (python -m build --sdist, pip download) is built from its own files: the native headers and sources
    (CPU and CUDA), the presets and the files the install and the native checks read must all be in it.
    setuptools' egg_info lists the sdist's files in SOURCES.txt."""
    root = SETUP.parent
    listed = set((egg_info / "SOURCES.txt").read_text().split())
    needed = [p.relative_to(root).as_posix() for p in sorted((root / "cuda").rglob("*")) if p.is_file()]
    needed += [p.relative_to(root).as_posix() for p in sorted((root / "configs").glob("*.yaml"))]
    needed += ["tests/conftest.py", "CMakeLists.txt", "Makefile", "requirements.txt", "requirements-prepare.txt", "setup.py", "README.md"]
    assert [p for p in needed if p not in listed] == []


def test_installed_package_finds_its_presets(tmp_path):
    """A non-editable install puts the package where the install scheme says (a venv, but also pip install --user,
    --prefix or --target, and a system Python's /usr/local): the presets must travel inside the package, not in a
    share/ folder that only sys.prefix is searched for. build_py lays the package out as the wheel holds it; the
    package imported from there (no source tree beside it, no presets under sys.prefix) must load every preset."""
    import os
    import subprocess
    import sys

    lib = tmp_path / "lib"
    proc = _run_setup(["-q", "build_py", "--build-lib", str(lib)])
    assert proc.returncode == 0, proc.stderr
    code = "import fastminerf.config as c; print(c.CONFIG_DIR); [c.load_config(n) for n in ('tiny', 'cpu', 'video', 'gpu', 'nerface')]"
    env = {**os.environ, "PYTHONPATH": str(lib)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(str(lib)), run.stdout


@pytest.mark.parametrize("cxx", ["/bin/false", "/nonexistent/g++"])
def test_build_without_a_compiler_says_so(tmp_path, cxx):
    """A machine without a working C++ compiler (none installed, or CXX naming one that does not run): the build
    stops with one line that names the compiler and says what to do, not a CalledProcessError / FileNotFoundError
    traceback from torch's compiler check."""
    build = tmp_path / "build"
    proc = _run_setup(["-q", "build_ext", "--build-temp", str(build), "--build-lib", str(build)],
                      env={"CXX": cxx, "CC": cxx})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "C++" in proc.stderr and cxx in proc.stderr and "CXX" in proc.stderr, proc.stderr[-3000:]


def test_installed_requirements_carry_the_versions_the_code_needs(egg_info):
    """pip install DIR (or the wheel) keeps an older copy of a dependency it finds installed when setup.py asks for
    the bare name: imageio 2.9 stayed and `fastminerf synth` failed with "No module named 'imageio.v3'". Every
    package setup.py requires must carry the lower bound requirements.txt (what make install and the tests use)
    gives it."""
    import re

    required = (egg_info / "requires.txt").read_text().split()

    def parse(line):
        m = re.match(r"([A-Za-z0-9_.-]+)\s*([<>=!~].*)?$", line.split("#")[0].strip())
        return (m.group(1).lower().replace("_", "-"), (m.group(2) or "").replace(" ", "")) if m else None

    pinned = dict(filter(None, map(parse, (SETUP.parent / "requirements.txt").read_text().splitlines())))
    declared = dict(map(parse, required))
    assert {name: declared[name] for name in declared if name in pinned} == {name: pinned[name] for name in declared
                                                                              if name in pinned}


def test_the_build_records_its_torch_where_the_extension_looks(tmp_path):
    """The build writes the torch it compiles against beside the extension, under the name fastminerf._native reads
    when the extension does not load (its message then names both torch versions)."""
    import json

    import torch

    from fastminerf import _native

    spec = importlib.util.spec_from_file_location("fastminerf_setup", SETUP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = Path(module.write_build_record(str(tmp_path)))
    assert path.name == _native.BUILD_RECORD.name
    assert json.loads(path.read_text()) == {"torch": torch.__version__, "cuda": torch.version.cuda}


def test_metadata_of_a_cuda_torch_without_a_gpu_needs_no_architectures(monkeypatch):
    """With a CUDA build of torch and nvcc but no GPU (a build node, CI, check-cuda-extension) and no
    FASTMINERF_CUDA_ARCHITECTURES, every setup.py command stopped with 'needs target architectures', egg_info and
    sdist too, which compile nothing (pip's metadata step, python -m build --sdist). The architectures are asked
    for where they are used: when the CUDA kernels are compiled."""
    import torch
    import torch.utils.cpp_extension as cpp

    spec = importlib.util.spec_from_file_location("fastminerf_setup_cuda", SETUP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(cpp, "CUDA_HOME", "/usr/local/cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("FASTMINERF_CUDA_ARCHITECTURES", raising=False)
    monkeypatch.delenv("FASTMINERF_CPU_ONLY", raising=False)
    (ext,) = module._extensions()  # the metadata commands evaluate this
    assert ("FASTMINERF_WITH_CUDA", None) in ext.define_macros
    with pytest.raises(SystemExit, match="FASTMINERF_CUDA_ARCHITECTURES is not set"):
        module._cuda_arch_list()  # what the build of the kernels still says
