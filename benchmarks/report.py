"""Regenerate the README's benchmark tables from ``benchmarks/results/*.json``.

    python benchmarks/report.py          # rewrites the blocks between <!-- BEGIN name --> and <!-- END name -->

Each table is generated from one JSON file, so the README never shows a number that no result file holds.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine_line(result: dict) -> str:
    m = result["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return (f"_Measured on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads{gpu}), "
            f"torch {m['torch']}, Python {m['python']}, commit {m['git_commit']}._")


def kernels_table(result: dict) -> str:
    enc = result["hash_encoding"]
    s = enc["sizes"]
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    lines = [
        f"Hash encoding, instant-ngp defaults (L={s['n_levels']}, F={s['n_features_per_level']}, "
        f"T=2^{s['log2_hashmap_size']}, N_min={s['base_resolution']}, finest 2048), {s['points']:,} points, "
        "forward + backward to the table:",
        "",
        "| measure | value | target | met |",
        "| --- | ---: | ---: | :---: |",
        f"| native C++ (points/s) | {enc['native_fwd_bwd_points_per_s']:,.0f} | | |",
        f"| PyTorch reference (points/s) | {enc['reference_fwd_bwd_points_per_s']:,.0f} | | |",
        f"| native / reference speed | {enc['speedup_vs_reference']:.1f}x | >= {enc['targets']['speedup_vs_reference']:.0f}x "
        f"| {yes(enc['met']['speedup_vs_reference'])} |",
        f"| native fwd+bwd time / gather bound ({s['gathered_rows']:,} rows) | {enc['native_over_gather_bound']:.2f}x "
        f"| <= {enc['targets']['native_over_gather_bound_at_most']:.0f}x | {yes(enc['met']['within_gather_bound'])} |",
    ]
    march = result.get("marcher")
    if march:
        lines += ["", "Ray marcher, head-shaped occupancy against uniform sampling of the box at the same step:", "",
                  "| measure | value |", "| --- | ---: |"]
        for key, value in march.get("summary", {}).items():
            lines.append(f"| {key} | {value} |")
    comp = result.get("composite")
    if comp:
        lines += ["", "Volume compositing on packed samples, forward + backward:", "", "| measure | value |",
                  "| --- | ---: |"]
        for key, value in comp.get("summary", {}).items():
            lines.append(f"| {key} | {value} |")
    lines += ["", _machine_line(result)]
    return "\n".join(lines)


def train_targets_table(result: dict) -> str:
    t = result["targets"]
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    gm, gc, p = result["generic_multiplicative"], result["generic_concat"], result["personalize"]
    d = result["data"]
    lines = [
        f"Procedural heads, {len(d['identities']) - 1} identities + 1 held out, {d['size']} px, "
        f"`{result['config']}` preset, {result['budget_seconds']:.0f} s budget per training "
        f"(`python benchmarks/train_targets.py`):",
        "",
        "| target | measured | goal | met |",
        "| --- | ---: | ---: | :---: |",
        f"| generic training: mean val PSNR | {t['generic_val_psnr_ge_30db']['value']:.2f} dB | >= 30 dB "
        f"| {yes(t['generic_val_psnr_ge_30db']['met'])} |",
        f"| `novel` PSNR, multiplicative - concat ({gm['novel']['mean_psnr']:.2f} vs {gc['novel']['mean_psnr']:.2f} dB) "
        f"| {t['novel_multiplicative_minus_concat_ge_1db']['value']:+.2f} dB | >= +1 dB "
        f"| {yes(t['novel_multiplicative_minus_concat_ge_1db']['met'])} |",
        f"| personalisation (30 frames) reaches the val PSNR of 5 min alone ({p['alone_final_val_psnr']:.2f} dB) "
        f"| {'%.0f s' % p['seconds_to_match_alone'] if p['seconds_to_match_alone'] is not None else 'not reached'} "
        f"| <= 60 s | {yes(t['personalize_matches_alone_within_60s']['met'])} |",
        "",
        _machine_line(result),
    ]
    return "\n".join(lines)


def prepare_table(result: dict) -> str:
    b, s = result["best"], result["sizes"]
    yes = "yes" if result["met"] else "**no**"
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in b["stage_seconds"].items())
    lines = [
        f"`fastminerf prepare` on {len(s['clips'])} real clips re-encoded to {s['input_px']} px, "
        f"{s['frames_per_clip']} frames each, written at {s['output_px']} px (`python benchmarks/prepare_speed.py`; "
        "wall time of one call, mediapipe start-up included, best of the runs):",
        "",
        "| measure | value | target | met |",
        "| --- | ---: | ---: | :---: |",
        f"| frames/s, end to end | {b['fps']:.1f} | >= {result['target_fps']:.0f} | {yes} |",
        f"| frames, seconds | {b['frames']}, {b['seconds']:.1f} s ({stages}) | | |",
        "",
        _machine_line(result) + f" mediapipe {result['machine'].get('mediapipe')}, OpenCV {result['machine'].get('opencv')}.",
    ]
    return "\n".join(lines)


def real_clips_table(result: dict) -> str:
    st, tr = result["settings"], result["training"]
    lines = [
        f"One generic model trained on the `train` split of {len(st['clips'])} real clips (first {st['max_frames']} "
        f"frames each, {st['size']} px), `{st['config']}` preset, {tr['seconds'] / 60:.1f} min of CPU training "
        f"({tr['steps']} steps); evaluated on the first {st['eval_frames']} frames of each clip's `test` split (its "
        "last frames, never trained on). Baselines on the same frames: `bg.png` alone, and the clip's mean colour "
        "(`python benchmarks/real_clips.py`):",
        "",
        "| clip | PSNR (dB) | SSIM | bg.png alone (dB) | mean colour (dB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in result["test"].items():
        lines.append(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['bg_psnr']:.2f} | {m['mean_colour_psnr']:.2f} |")
    mn = result["mean"]
    lines.append(f"| **mean** | **{mn['psnr']:.2f}** | **{mn['ssim']:.3f}** | {mn['bg_psnr']:.2f} | {mn['mean_colour_psnr']:.2f} |")
    met = "met" if mn["psnr"] >= result["target_psnr_db"] else "**not met**"
    lines += ["", f"Target >= {result['target_psnr_db']:.0f} dB mean PSNR: {met}.", "", _machine_line(result)]
    return "\n".join(lines)


TABLES = {"kernels": kernels_table, "train_targets": train_targets_table, "prepare": prepare_table,
          "real_clips": real_clips_table}


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, render in TABLES.items():
        result = _load(name)
        if result is None:
            continue
        block = f"<!-- BEGIN {name} (generated by benchmarks/report.py) -->\n{render(result)}\n<!-- END {name} -->"
        pattern = re.compile(rf"<!-- BEGIN {name} .*?-->.*?<!-- END {name} -->", re.S)
        if not pattern.search(text):
            print(f"README has no block for {name}; add '<!-- BEGIN {name} -->' / '<!-- END {name} -->'", file=sys.stderr)
            continue
        text = pattern.sub(lambda _: block, text)
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
