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
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_arch_list():
    """Translate FASTMINERF_CUDA_ARCHITECTURES ("80;90") into TORCH_CUDA_ARCH_LIST ("8.0;9.0")."""
    import torch

    env = os.environ.get("FASTMINERF_CUDA_ARCHITECTURES", "").replace(",", ";").strip()
    if env:
        archs = [a.strip() for a in env.split(";") if a.strip()]
        return ";".join(f"{a[:-1]}.{a[-1]}" for a in archs), f"FASTMINERF_CUDA_ARCHITECTURES={env}"
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
    arch_list, source = _cuda_arch_list()
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    print(f"fastminerf: building CUDA kernels for {arch_list} (from {source})")
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


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    name="fastminerf",
    version="0.1.0",
    description="One fast dynamic face NeRF for many identities (MI-NeRF) with hash grids and occupancy marching",
    packages=find_packages(include=["fastminerf", "fastminerf.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.1", "numpy", "imageio", "imageio-ffmpeg", "rich", "pyyaml"],
    entry_points={"console_scripts": ["fastminerf=fastminerf.cli:main"]},
    # the presets, for installs that do not keep the source tree (found by fastminerf.config.CONFIG_DIR)
    data_files=[("share/fastminerf/configs", sorted(glob.glob("configs/*.yaml")))],
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
)
