"""Fused MLP head benchmark: the native op against the same heads as separate torch ops, on the cpu preset's sizes.

    python benchmarks/mlp_head.py            # 32k samples of 1,024 rays (a training step's worth)
    python benchmarks/mlp_head.py --quick    # 8k samples

Two heads, forward + backward: density (8 grid features -> 64 -> 19: density, geometry feature, texture flow) and
colour (27 -> 64 -> 3), each with a 48- or 57-wide per-ray conditioning added to the hidden layer. "unfused" is
the field's head as torch ops (linear, per-ray rows gathered with an index_add backward, relu, linear): what
training ran before the fused op. ``run(quick)`` returns a dict (folded into ``benchmarks/kernels.py``'s result);
run as a script it also writes ``mlp_head[_quick].json`` into ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import add_out, machine, show_section, timeit  # noqa: E402
from fastminerf.field import _SplitInputHead  # noqa: E402

HEADS = {"density": (8, 48, 19), "colour": (27, 57, 3)}  # (per-sample inputs, per-ray inputs, outputs)
HIDDEN = 64


def _head_case(sample_dim: int, cond_dim: int, out_dim: int, n_samples: int, n_rays: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    heads = {b: _SplitInputHead(sample_dim, cond_dim, HIDDEN, 1, out_dim, backend=b) for b in ("native", "torch")}
    heads["torch"].load_state_dict(heads["native"].state_dict())
    x = torch.randn(n_samples, sample_dim, generator=gen).requires_grad_()
    cond = torch.randn(n_rays, cond_dim, generator=gen).requires_grad_()
    ray_indices = torch.randint(0, n_rays, (n_samples,), generator=gen).sort().values
    grad = torch.randn(n_samples, out_dim, generator=gen)
    return heads, x, cond, ray_indices, grad


def run(quick: bool = False) -> dict:
    """Fused native heads against the unfused torch heads, forward + backward, in samples per second."""
    n_samples, n_rays = (8192 if quick else 32768), 1024
    repeats = 3 if quick else 7
    result = {"sizes": {"samples": n_samples, "rays": n_rays, "hidden": HIDDEN, "dtype": "float32",
                        "heads": {k: dict(zip(("inputs", "per_ray_inputs", "outputs"), v)) for k, v in HEADS.items()}}}
    summary = {}
    for name, dims in HEADS.items():
        heads, x, cond, ray_indices, grad = _head_case(*dims, n_samples, n_rays, seed=len(name))

        def step(backend: str):
            def go():
                x.grad = cond.grad = None
                heads[backend](x, cond, ray_indices).backward(grad)
            return go

        times = {b: timeit(step(b), repeats=repeats) for b in ("native", "torch")}
        speedup = times["torch"] / times["native"]
        result[name] = {"native_fwd_bwd_s": times["native"], "unfused_fwd_bwd_s": times["torch"],
                        "native_samples_per_s": n_samples / times["native"],
                        "unfused_samples_per_s": n_samples / times["torch"], "speedup": speedup}
        summary[f"{name} head native fwd+bwd samples/s"] = f"{n_samples / times['native']:,.0f}"
        summary[f"{name} head native / unfused torch speed"] = f"{speedup:.1f}x"
    result["summary"] = summary
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8k samples instead of 32k")
    add_out(parser)
    args = parser.parse_args(argv)
    result = {"machine": machine(), "quick": args.quick, "mlp_head": run(args.quick)}
    show_section(result, "mlp_head", "fastminerf fused MLP heads", "mlp_head_quick" if args.quick else "mlp_head",
                 args.out)
    return result


if __name__ == "__main__":
    main()
