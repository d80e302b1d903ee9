"""Build fastminerf and its native extension `fastminerf._C`.

Always built: the C++ CPU kernels (`cuda/src/*_cpu.cpp`), parallelised with PyTorch's OpenMP pool.
Also built when the installed torch is a CUDA build and nvcc is found: the CUDA kernels (`cuda/src/*.cu`) and
their op registrations (`cuda/src/*_cuda_ops.cpp`). Target architectures come from
`FASTMINERF_CUDA_ARCHITECTURES` (e.g. "80;90" or "86"), else from the local GPU; with neither, the build stops
with an error that says so. `FASTMINERF_CPU_ONLY=1` skips CUDA even where it is available.

Install with the torch you want already present and without build isolation, so that the extension is compiled
against that torch:  `pip install --no-build-isolation -e .`  (the Makefile does this).
"""
import glob
import os
import re
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def torch_arch_list(spec):
    """FASTMINERF_CUDA_ARCHITECTURES in CMake's form ("80;90", "86", "90a", "80-real", "120-virtual"; commas or
    semicolons) as TORCH_CUDA_ARCH_LIST ("8.0;9.0+PTX"). Each entry gives that architecture's machine code; the
    newest one also PTX, which the driver compiles for GPUs newer than any listed (CMake's plain "90" builds both),
    unless an entry already asks for PTX ("-virtual", or torch's own "8.6+PTX"). "-real": machine code only."""
    entries = [a.strip() for a in spec.replace(",", ";").split(";") if a.strip()]
    if not entries:
        raise ValueError("FASTMINERF_CUDA_ARCHITECTURES is empty")
    parsed = []
    for entry in entries:
        m = re.fullmatch(r"(?:(\d+)\.(\d)|(\d+)(\d))([af]?)(-real|-virtual|\+PTX)?", entry, re.IGNORECASE)
        if m is None:
            raise ValueError(f"FASTMINERF_CUDA_ARCHITECTURES: cannot read {entry!r} (expected e.g. 80, 86, 90a, "
                             f"80-real, 90-virtual or 8.6+PTX)")
        major, minor = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        kind = (m.group(6) or "").lower()
        parsed.append([(int(major), int(minor)), f"{int(major)}.{minor}{m.group(5).lower()}",
                       kind in ("-virtual", "+ptx")])
    portable = [p for p in parsed if not p[1].endswith(("a", "f"))]  # "90a": arch-specific, no portable PTX
    if portable and not any(ptx for _, _, ptx in parsed):
        max(portable, key=lambda p: p[0])[2] = True
    return ";".join(name + ("+PTX" if ptx else "") for _, name, ptx in parsed)


def _cuda_arch_list():
    """TORCH_CUDA_ARCH_LIST for the build and where it came from."""
    import torch

    env = os.environ.get("FASTMINERF_CUDA_ARCHITECTURES", "").strip()
    if env:
        try:
            return torch_arch_list(env), f"FASTMINERF_CUDA_ARCHITECTURES={env}"
        except ValueError as exc:
            sys.exit(f"fastminerf: {exc}")
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}", f"the local GPU ({torch.cuda.get_device_name()})"
    sys.exit(
        "fastminerf: building the CUDA kernels needs target architectures, but no GPU is visible and "
        "FASTMINERF_CUDA_ARCHITECTURES is not set. Set it (e.g. FASTMINERF_CUDA_ARCHITECTURES='80;90') or "
        "build for the CPU only with FASTMINERF_CPU_ONLY=1."
    )


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    include = [os.path.join(ROOT, "cuda", "include"), os.path.join(ROOT, "cuda", "src")]
    cpu_sources = sorted(glob.glob(os.path.join("cuda", "src", "*_cpu.cpp"))) + ["cuda/src/module.cpp"]
    # -fopenmp: at::parallel_for is an inline OpenMP region in ATen's headers, so the extension itself must be
    # compiled with OpenMP or its loops run on one thread. The GOMP symbols bind to the runtime torch loaded.
    # No -std flag: torch's build helpers pick the standard its headers need (C++17 for torch 2.13, C++20 for
    # 2.14+); our sources compile under both.
    # -ffp-contract=fast: a * b + c may become one FMA where the target has it (GCC's default outside ISO mode;
    # torch's -std=c++17 turns it off), which the fused MLP head's AVX2 loops rely on.
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=fast"]
    link_flags = ["-fopenmp"]
    want_cuda = (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and os.environ.get("FASTMINERF_CPU_ONLY", "0") not in ("1", "true", "yes")
    )
    if not want_cuda:
        return [
            CppExtension(
                "fastminerf._C",
                cpu_sources,
                include_dirs=include,
                extra_compile_args={"cxx": cxx_flags},
                extra_link_args=link_flags,
            )
        ]
    # the target architectures are asked for when the kernels are compiled (Build.build_extensions), not here:
    # every command evaluates this list, egg_info and sdist too, which compile nothing
    cuda_sources = sorted(glob.glob(os.path.join("cuda", "src", "*.cu")))
    cuda_sources += sorted(glob.glob(os.path.join("cuda", "src", "*_cuda_ops.cpp")))
    return [
        CUDAExtension(
            "fastminerf._C",
            cpu_sources + cuda_sources,
            include_dirs=include,
            define_macros=[("FASTMINERF_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            extra_link_args=link_flags,
        )
    ]


BUILD_RECORD = "_C_build.json"
"""Beside the built extension: the torch (and CUDA) it is compiled against, which fastminerf._native names when the
extension does not load under another torch (a newer one pip installed later)."""


def write_build_record(folder):
    """Write :data:`BUILD_RECORD` into ``folder`` (the built extension's) for the torch this build compiles against."""
    import json

    import torch

    path = os.path.join(folder, BUILD_RECORD)
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, "cuda": torch.version.cuda}, f)
    return path


def _require_torch():
    """Stop with what to do when torch cannot be imported: the extension is compiled against the torch it will run
    with, so torch must be installed first and the build must see it. pip's default build isolation builds in a
    fresh environment without it."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        sys.exit(
            f"fastminerf: building the native extension needs torch, which this build cannot import ({exc}). Install "
            "torch first (e.g. pip install torch==2.13.0, the CPU build), then install fastminerf without build "
            "isolation, so that the build sees that torch: pip install --no-build-isolation DIR (or `make install` "
            "from a clone)."
        )


def _cmdclass():
    import subprocess

    from torch.utils.cpp_extension import BuildExtension, get_cxx_compiler

    class Build(BuildExtension):
        def build_extensions(self):
            """Check first that the C++ compiler runs (torch's own check ends in a subprocess traceback), then take
            the CUDA target architectures."""
            cxx = getattr(self.compiler, "compiler_cxx", None)
            for compiler in dict.fromkeys([cxx[0] if cxx else get_cxx_compiler(), get_cxx_compiler()]):
                try:
                    subprocess.run([compiler, "--version"], check=True, capture_output=True)
                except (OSError, subprocess.CalledProcessError) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) else f"exit status {exc.returncode}"
                    sys.exit(f"fastminerf: building the native extension needs a C++17 compiler, and `{compiler}` does "
                             f"not run ({reason}). Install one (e.g. apt-get install g++) or point CXX at it.")
            if any(("FASTMINERF_WITH_CUDA", None) in ext.define_macros for ext in self.extensions):
                arch_list, source = _cuda_arch_list()  # read by torch's build when it compiles the .cu files
                os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
                print(f"fastminerf: building CUDA kernels for {arch_list} (from {source})")
            super().build_extensions()
            for ext in self.extensions:
                write_build_record(os.path.dirname(self.get_ext_fullpath(ext.name)))

    return {"build_ext": Build.with_options(use_ninja=True)}


if __name__ == "__main__":  # pip and setuptools run this file as __main__; tests import it for torch_arch_list
    _require_torch()
    setup(
        name="fastminerf",
        version="0.1.0",
        description="One fast dynamic face NeRF for many identities (MI-NeRF) with hash grids and occupancy marching",
        # the presets travel inside the package (fastminerf/configs/*.yaml), so that every install scheme (venv,
        # --user, --prefix, --target, a system Python's /usr/local) has them where fastminerf.config.CONFIG_DIR looks
        packages=find_packages(include=["fastminerf", "fastminerf.*"]) + ["fastminerf.configs"],
        package_dir={"fastminerf.configs": "configs"},
        package_data={"fastminerf.configs": ["*.yaml"]},
        python_requires=">=3.10",
        # the lower bounds of requirements.txt: pip keeps an older copy already installed when given a bare name
        install_requires=["torch>=2.1", "numpy>=1.24", "imageio>=2.30", "imageio-ffmpeg>=0.4.9", "rich>=13", "pyyaml>=6"],
        entry_points={"console_scripts": ["fastminerf=fastminerf.cli:main"]},
        ext_modules=_extensions(),
        cmdclass=_cmdclass(),
    )
