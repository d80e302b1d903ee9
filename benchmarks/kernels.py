"""Kernel benchmark: the native ops against their PyTorch references and against lower bounds, side by side.

    python benchmarks/kernels.py            # full sizes (instant-ngp defaults, 2^18 points)
    python benchmarks/kernels.py --quick    # small sizes, seconds

Writes ``kernels.json`` (full run) or ``kernels_quick.json`` into ``--out`` (default ``benchmarks/results``) and prints
a table. Ratios are
measured in one run on one machine; absolute times depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import add_out, machine, timeit, write_result  # noqa: E402
from fastminerf.ops.hash_grid import hash_encode, hash_grid_levels, hash_grid_rows, per_level_scale_for  # noqa: E402

TARGET_SPEEDUP_VS_REFERENCE = 10.0
TARGET_WITHIN_GATHER_BOUND = 3.0


def bench_hash_encoding(quick: bool) -> dict:
    """Hash encoding forward+backward (gradient to the table), native vs reference vs a plain gather."""
    n_points = 1 << (14 if quick else 18)
    hp = dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16,
              per_level_scale=per_level_scale_for(16, 2048, 16))
    levels = hash_grid_levels(**hp)
    gen = torch.Generator().manual_seed(0)
    table = (torch.rand(levels.n_rows, 2, generator=gen) * 2 - 1).requires_grad_(True)
    points = torch.rand(n_points, 3, generator=gen)
    grad_out = torch.randn(n_points, levels.n_levels * 2, generator=gen)
    repeats = 3 if quick else 5

    def fwd_bwd(backend: str):
        def run():
            table.grad = None
            hash_encode(points, table, levels, backend=backend).backward(grad_out)
        return run

    def fwd_only():
        with torch.no_grad():
            hash_encode(points, table, levels, backend="native")

    # The lower bound: gather the very rows the encoding reads (L * N * 8 rows of F floats), into a buffer allocated
    # once: a fresh (L * N * 8, F) tensor a call (268 MB at full size, 8x the encoding's output) made the "bound" time
    # the allocator and page faults, slower than the native forward that reads the same rows.
    rows = hash_grid_rows(points, levels).reshape(-1)
    plain = table.detach()
    gathered = torch.empty(rows.numel(), plain.shape[1], dtype=plain.dtype)

    def gather():
        torch.index_select(plain, 0, rows, out=gathered)

    t_native = timeit(fwd_bwd("native"), repeats=repeats)
    t_fwd = timeit(fwd_only, repeats=repeats)
    t_gather = timeit(gather, repeats=repeats)
    t_ref = timeit(fwd_bwd("torch"), repeats=3)
    speedup = t_ref / t_native
    over_bound = t_native / t_gather
    return {
        "sizes": {"points": n_points, **hp, "table_rows": levels.n_rows,
                  "dense_levels": sum(levels.is_dense(l) for l in range(levels.n_levels)),
                  "gathered_rows": int(rows.numel())},
        "native_fwd_bwd_s": t_native,
        "native_fwd_s": t_fwd,
        "reference_fwd_bwd_s": t_ref,
        "gather_bound_s": t_gather,
        "native_fwd_bwd_points_per_s": n_points / t_native,
        "reference_fwd_bwd_points_per_s": n_points / t_ref,
        "speedup_vs_reference": speedup,
        "native_over_gather_bound": over_bound,
        "targets": {"speedup_vs_reference": TARGET_SPEEDUP_VS_REFERENCE,
                    "native_over_gather_bound_at_most": TARGET_WITHIN_GATHER_BOUND},
        "met": {"speedup_vs_reference": speedup >= TARGET_SPEEDUP_VS_REFERENCE,
                "within_gather_bound": over_bound <= TARGET_WITHIN_GATHER_BOUND},
    }


def _optional_section(module: str, quick: bool):
    """Sections contributed by other kernel benchmarks (ray marcher, compositing, fused heads), when present."""
    try:
        mod = __import__(f"benchmarks.{module}", fromlist=["run"])
    except ImportError:
        return None
    return mod.run(quick=quick)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    add_out(parser)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    with console.status("hash encoding: native / reference / gather bound ..."):
        enc = bench_hash_encoding(args.quick)
    result = {"machine": machine(), "quick": args.quick, "hash_encoding": enc}
    for name in ("marcher", "composite", "mlp_head"):
        with console.status(f"{name} ..."):
            section = _optional_section(name, args.quick)
        if section is not None:
            result[name] = section

    table = Table(title=f"fastminerf kernels ({'quick' if args.quick else 'full'}; {result['machine']['cpu']}, "
                        f"{result['machine']['torch_threads']} threads)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row("hash enc. points", f"{enc['sizes']['points']:,}", "")
    table.add_row("native fwd+bwd points/s", f"{enc['native_fwd_bwd_points_per_s']:,.0f}", "")
    table.add_row("reference fwd+bwd points/s", f"{enc['reference_fwd_bwd_points_per_s']:,.0f}", "")
    table.add_row("native / reference speed", f"{enc['speedup_vs_reference']:.1f}x",
                  f">= {TARGET_SPEEDUP_VS_REFERENCE:.0f}x")
    table.add_row("native fwd+bwd / gather bound", f"{enc['native_over_gather_bound']:.2f}x",
                  f"<= {TARGET_WITHIN_GATHER_BOUND:.0f}x")
    for name in ("marcher", "composite", "mlp_head"):
        for key, value in (result.get(name) or {}).get("summary", {}).items():
            table.add_row(f"{name}: {key}", str(value), "")
    console.print(table)
    path = write_result("kernels_quick" if args.quick else "kernels", result, args.out)
    console.print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
