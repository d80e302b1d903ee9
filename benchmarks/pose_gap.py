"""Held-out PSNR against the head pose's distance from every training pose, frame by frame, on the real clips.

    python benchmarks/pose_gap.py --run RUN [--data WORK/data] [--splits val test] [--max-frames N] [--threads 2]

A NeRF of one monocular clip has seen the head from a cone a few degrees wide. For every held-out frame of the
prepared real clips (``--data``, a root written by ``fastminerf prepare``, e.g. the ``WORK/data`` of
``benchmarks/real_clips.py``; prepared into ``--work`` when not given), rendered by a model trained on them
(``--run``): its PSNR and its pose gap, the angle from its head pose to the nearest training pose of its clip
(``fastminerf.metrics.rotation_gap_deg``, what ``fastminerf eval`` reports as POSE and ``fastminerf prepare`` per
video). Prints PSNR by pose-gap bin, the rank correlation over frames (Spearman) and, to take out what differs
between people (how hard a face is to fit), the same within each clip (the frame's PSNR minus its clip's mean).
Writes into ``--out`` (default ``benchmarks/results``): ``pose_gap.json`` (every frame's clip, split, gap and PSNR)
and ``pose_gap.png`` (the scatter; no image of anyone).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    add_device,
    add_out,
    device,
    machine,
    record_name,
    torch_threads,
    write_result,
)
from benchmarks.real_clips import prepared_root  # noqa: E402

BINS = (0.0, 1.0, 2.0, 3.0, 5.0, 180.0)
"""Edges of the pose-gap bins in degrees."""


def spearman(a, b) -> float:
    """Spearman's rank correlation of two samples (tied values share their mean rank)."""
    def ranks(x: np.ndarray) -> np.ndarray:
        first = np.empty(len(x))
        first[np.argsort(x, kind="stable")] = np.arange(len(x), dtype=np.float64)
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        return (np.bincount(inverse, weights=first) / counts)[inverse]

    return float(np.corrcoef(ranks(np.asarray(a, float)), ranks(np.asarray(b, float)))[0, 1])


def frame_records(model, data, splits, max_frames) -> list:
    """One record per evaluated frame: clip, split, its position in the clip's split, pose gap (deg), PSNR (dB)."""
    from fastminerf.metrics import psnr, rotation_gap_deg
    from fastminerf.render import render_frame

    train = data.table("train")
    records = []
    for split in splits:
        table = data.table(split)
        for i, name in enumerate(data.identities):
            frames = table.frames_of(i)[:max_frames]
            gaps = rotation_gap_deg(table.c2w[frames][:, :3, :3], train.c2w[train.frames_of(i)][:, :3, :3])
            for k, (index, gap) in enumerate(zip(frames.tolist(), gaps.tolist())):
                truth = data.image(split, index).astype(np.float32) / 255.0
                value = float(psnr(render_frame(model, data, split, index), truth))
                records.append({"clip": name, "split": split, "k": k, "pose_gap_deg": gap, "psnr": value})
    return records


def summarise(records: list) -> dict:
    gap = np.array([r["pose_gap_deg"] for r in records])
    value = np.array([r["psnr"] for r in records])
    clips = sorted({r["clip"] for r in records})
    clip_mean = {c: float(np.mean([r["psnr"] for r in records if r["clip"] == c])) for c in clips}
    within = value - np.array([clip_mean[r["clip"]] for r in records])
    bins = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = (gap >= lo) & (gap < hi)
        bins.append({"from_deg": lo, "to_deg": hi, "frames": int(sel.sum()),
                     "psnr": float(value[sel].mean()) if sel.any() else None,
                     "psnr_within_clip": float(within[sel].mean()) if sel.any() else None})
    return {"frames": len(records), "spearman": spearman(gap, value), "spearman_within_clip": spearman(gap, within),
            "bins": bins, "clip_mean_psnr": clip_mean}


def plot(records: list, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    clips = sorted({r["clip"] for r in records})
    for j, c in enumerate(clips):
        own = [r for r in records if r["clip"] == c]
        ax.scatter([r["pose_gap_deg"] for r in own], [r["psnr"] for r in own], s=10, alpha=0.7,
                   color=plt.cm.tab10(j % 10), label=c[:2])
    ax.axvline(3.0, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("head pose: degrees from the nearest training pose of the clip")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.legend(title="clip", fontsize=7, ncol=3, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a model trained on the prepared clips")
    ap.add_argument("--data", type=Path, default=None, help="a prepared root of the real clips (default: prepare them)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastminerf_pose_gap"))
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--max-frames", type=int, default=None, help="frames per clip and split (default all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default=None, help="result file name (default pose_gap; pose_gap_quick for a run with "
                                                "other --splits or --max-frames into benchmarks/results)")
    add_device(ap)
    add_out(ap)
    args = ap.parse_args(argv)
    on = device(args)  # refused before any work
    with torch_threads(args.threads):  # the caller's count comes back at the end
        return _measure(ap, args, on)


def _measure(ap: argparse.ArgumentParser, args: argparse.Namespace, on) -> int:
    from fastminerf.data import load_dataset
    from fastminerf.train import load_run

    root = prepared_root(args.data, args.work)
    if root is None:
        return 1
    where = machine()
    _, model, _ = load_run(args.run, device=on)
    dirs = sorted(p for p in root.iterdir() if p.is_dir())
    data = load_dataset(dirs, splits=("train", *args.splits))
    t0 = time.perf_counter()
    records = frame_records(model.eval(), data, args.splits, args.max_frames)
    summary = summarise(records)
    print(f"{summary['frames']} frames in {time.perf_counter() - t0:.0f} s; Spearman (gap, PSNR) "
          f"{summary['spearman']:+.2f}, within clips {summary['spearman_within_clip']:+.2f}")
    for b in summary["bins"]:
        if b["frames"]:
            print(f"  {b['from_deg']:>4g}-{b['to_deg']:<4g} deg  {b['frames']:4d} frames  PSNR {b['psnr']:.2f} dB  "
                  f"against its clip's mean {b['psnr_within_clip']:+.2f} dB")
    name = record_name(ap, args, "pose_gap", ("splits", "max_frames"), device=on)
    path = write_result(name, {"machine": where, "settings": {"run": str(args.run), "device": str(on), "data": str(root),
                                                                   "splits": args.splits, "max_frames": args.max_frames,
                                                                   "threads": args.threads},
                                    "summary": summary, "frames": records}, args.out)
    print(f"wrote {path} and {plot(records, args.out / f'{name}.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
