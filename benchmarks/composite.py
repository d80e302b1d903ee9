"""Compositing benchmark: the native op against its PyTorch reference on a ray marcher's packed layout.

    python benchmarks/composite.py            # 16k rays x 0..64 samples (about 0.5M samples)
    python benchmarks/composite.py --quick    # 4k rays

``run(quick)`` returns a dict (folded into ``benchmarks/kernels.py``'s result); run as a script it also writes
``composite[_quick].json`` into ``--out`` (default ``benchmarks/results``). Samples/s counts every packed sample,
terminated ones included.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import add_out, machine, show_section, timeit  # noqa: E402
from fastminerf.ops.compositing import composite  # noqa: E402

THRESHOLD = 1e-4  # the default early-termination epsilon


def packed_layout(n_rays: int, max_samples: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Packed samples like the occupancy marcher's: 0..max_samples per ray (uniform), step 1/256 of a unit scene
    with gaps where the grid skipped empty cells, densities log-uniform in [e^-4, e^7] (empty space to surfaces,
    so about half the rays terminate early), colours in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_samples + 1, (n_rays,), generator=gen)
    offsets = torch.zeros(n_rays + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    n_samples = int(offsets[-1])
    ray = torch.repeat_interleave(torch.arange(n_rays), counts)
    step = 1.0 / 256
    gaps = step * torch.randint(0, 3, (n_samples,), generator=gen).double()
    ends = torch.cumsum(step + gaps, 0)
    first = torch.cat([ends.new_zeros(1), ends])[offsets[:-1]][ray]
    t_ends = (0.5 + ends - first).float()
    return {
        "sigmas": torch.exp(torch.empty(n_samples).uniform_(-4.0, 7.0, generator=gen)),
        "rgbs": torch.rand(n_samples, 3, generator=gen),
        "t_starts": t_ends - step,
        "t_ends": t_ends,
        "offsets": offsets,
    }


def run(quick: bool = False) -> dict:
    """Native vs reference compositing, forward and forward+backward, in samples per second."""
    n_rays, max_samples = (4096 if quick else 16384), 64
    data = packed_layout(n_rays, max_samples)
    n_samples = data["sigmas"].numel()
    gen = torch.Generator().manual_seed(1)
    grad_color = torch.randn(n_rays, 3, generator=gen)
    grad_opacity = torch.randn(n_rays, generator=gen)
    grad_depth = torch.randn(n_rays, generator=gen)
    sigmas = data["sigmas"].clone().requires_grad_()
    rgbs = data["rgbs"].clone().requires_grad_()
    args = (data["t_starts"], data["t_ends"], data["offsets"], THRESHOLD)
    repeats = 3 if quick else 7

    def fwd_bwd(backend: str):
        def step():
            sigmas.grad = rgbs.grad = None
            out = composite(sigmas, rgbs, *args, backend=backend)
            torch.autograd.backward([out.color, out.opacity, out.depth], [grad_color, grad_opacity, grad_depth])
        return step

    def fwd(backend: str):
        def step():
            with torch.no_grad():
                composite(data["sigmas"], data["rgbs"], *args, backend=backend)
        return step

    # A floor for comparison: one vectorised transcendental pass over the samples (the kernel does two per sample,
    # exp and expm1, plus the reads of 6 values and the write of the weight).
    optical_depth = data["sigmas"] * (data["t_ends"] - data["t_starts"])

    def exp_pass():
        torch.exp(-optical_depth)

    with torch.no_grad():
        weights = composite(data["sigmas"], data["rgbs"], *args).weights
    terminated = float(((weights == 0) & (data["sigmas"] > 0)).sum()) / n_samples

    times = {
        "native_fwd_s": timeit(fwd("native"), repeats=repeats),
        "native_fwd_bwd_s": timeit(fwd_bwd("native"), repeats=repeats),
        "reference_fwd_s": timeit(fwd("torch"), repeats=max(2, repeats // 2)),
        "reference_fwd_bwd_s": timeit(fwd_bwd("torch"), repeats=max(2, repeats // 2)),
        "exp_pass_s": timeit(exp_pass, repeats=repeats),
    }
    per_s = {key.replace("_s", "_samples_per_s"): n_samples / t for key, t in times.items() if key != "exp_pass_s"}
    speedup_fwd_bwd = times["reference_fwd_bwd_s"] / times["native_fwd_bwd_s"]
    speedup_fwd = times["reference_fwd_s"] / times["native_fwd_s"]
    return {
        "sizes": {"rays": n_rays, "max_samples_per_ray": max_samples, "samples": n_samples, "dtype": "float32",
                  "transmittance_threshold": THRESHOLD, "terminated_fraction": terminated},
        **times,
        **per_s,
        "speedup_fwd_vs_reference": speedup_fwd,
        "speedup_fwd_bwd_vs_reference": speedup_fwd_bwd,
        "native_fwd_over_exp_pass": times["native_fwd_s"] / times["exp_pass_s"],
        "summary": {
            "samples (rays x 0..64)": f"{n_samples:,} ({n_rays:,} rays)",
            "native fwd+bwd samples/s": f"{per_s['native_fwd_bwd_samples_per_s']:,.0f}",
            "reference fwd+bwd samples/s": f"{per_s['reference_fwd_bwd_samples_per_s']:,.0f}",
            "native / reference speed (fwd+bwd)": f"{speedup_fwd_bwd:.1f}x",
            "native / reference speed (fwd)": f"{speedup_fwd:.1f}x",
        },
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4k rays instead of 16k")
    add_out(parser)
    args = parser.parse_args(argv)
    result = {"machine": machine(), "quick": args.quick, "composite": run(args.quick)}
    show_section(result, "composite", "fastminerf compositing", "composite_quick" if args.quick else "composite",
                 args.out)
    return result


if __name__ == "__main__":
    main()
