"""How fast a trained model renders frames on this machine, and what each faster setting costs in PSNR.

    python benchmarks/render_speed.py [--work /tmp/fastminerf_real] [--frames 2] [--threads 1 2] [--repeats 2] [--device auto]

Loads ``WORK/run`` (a model trained by ``benchmarks/real_clips.py``) and renders the first ``--frames`` frames of every
clip's ``test`` split (``--split``) (``WORK/data``) at the data's size, with the run's own settings and with each variant below, for
each thread count, on ``--device`` (as render's: default auto, the GPU where torch sees one). Every variant renders the same frames side by side in one run (a shared machine is noisy: the
ratios are the result, the seconds depend on the load); each frame's time is the best of ``--repeats`` renders.

Variants (``model.*`` settings changed on the loaded model, nothing retrained):

- ``preset``: the run's settings (the ``video`` preset renders with ``eval_render_steps`` 256, twice training's lattice);
- ``staged``: ``prune_stages`` [8, 32], the density pass front to back so rays that turned opaque stop early (the
  same samples kept: the same image up to float rounding);
- ``128 steps``: the training lattice (``eval_render_steps`` 128), half the samples a ray;
- ``128 steps, staged``: both.

Writes ``render_speed.json`` into ``--out`` (default ``benchmarks/results``): machine, versions, sizes, per variant
and thread count: seconds a frame, frames/s, rays/s, samples a ray, PSNR and its difference from ``preset`` on the
same frames.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import add_device, add_out, device, machine, record_name, write_result  # noqa: E402

VARIANTS = {
    "preset": {},
    "staged": {"prune_stages": (8, 32)},
    "128 steps": {"eval_render_steps": 128},  # what `render --render-steps 128` sets (fastminerf.set_render_steps)
    "128 steps, staged": {"eval_render_steps": 128, "prune_stages": (8, 32)},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastminerf_real"), help="real_clips.py's work folder")
    ap.add_argument("--frames", type=int, default=2, help="test frames per clip (the first ones)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2, help="renders of each frame; the best time counts")
    ap.add_argument("--split", default="test", help="split rendered (default test: frames never trained on)")
    add_device(ap)
    add_out(ap)
    args = ap.parse_args(argv)
    where = device(args)  # refused before any work

    from fastminerf.data import load_dataset
    from fastminerf.metrics import psnr
    from fastminerf.render import render_frame
    from fastminerf.train import load_run

    run, data_dir = args.work / "run", args.work / "data"
    if not (run / "checkpoint.pt").is_file():
        print(f"no trained model in {run}: run benchmarks/real_clips.py --work {args.work} first", file=sys.stderr)
        return 1
    _, model, meta = load_run(run, device=where)
    model = model.eval()
    base_cfg = model.cfg
    split = args.split
    data = load_dataset(sorted(p for p in data_dir.iterdir() if (p / f"transforms_{split}.json").is_file()),
                        splits=(split,))
    table = data.table(split)
    frames = [int(f) for i in range(len(data.identities)) for f in table.frames_of(i)[: args.frames]]
    truth = {f: data.image(split, f).astype(np.float32) / 255.0 for f in frames}
    rays_per_frame = table.height * table.width

    host = machine()  # at the start: the caller's threads (each row records its own) and the commit that runs
    threads_before = torch.get_num_threads()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)  # put back after the loop
        render_frame(model, data, split, frames[0])  # warm-up: caches, thread pool
        for name, change in VARIANTS.items():
            model.cfg = replace(base_cfg, **change)
            seconds, samples, values = [], [], []
            for f in frames:
                best = float("inf")
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    img, out = render_frame(model, data, split, f, outputs=True)
                    best = min(best, time.perf_counter() - t0)
                seconds.append(best)
                samples.append(float(out["samples"].float().mean()))
                values.append(float(psnr(img, truth[f])))
            model.cfg = base_cfg
            per_frame = float(np.mean(seconds))
            row = {"variant": name, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in change.items()},
                   "threads": threads, "seconds_per_frame": per_frame, "frames_per_second": 1.0 / per_frame,
                   "rays_per_second": rays_per_frame / per_frame, "samples_per_ray": float(np.mean(samples)),
                   "psnr": float(np.mean(values))}
            rows.append(row)
            print(f"  {threads} thread{'s' if threads > 1 else ''}  {name:18s} {per_frame:6.2f} s/frame  "
                  f"{row['rays_per_second'] / 1e3:6.1f}k rays/s  {row['samples_per_ray']:5.1f} samples/ray  "
                  f"PSNR {row['psnr']:.2f} dB", flush=True)
    torch.set_num_threads(threads_before)
    for row in rows:
        base = next(r for r in rows if r["threads"] == row["threads"] and r["variant"] == "preset")
        row["speedup"] = base["seconds_per_frame"] / row["seconds_per_frame"]
        row["psnr_delta"] = row["psnr"] - base["psnr"]
    payload = {
        "machine": host,
        "settings": {"run": str(run), "device": str(where), "split": split, "identities": list(data.identities), "frames_per_identity": args.frames, "frames": len(frames),
                     "size": [table.width, table.height], "repeats": args.repeats,
                     "eval_render_steps": base_cfg.eval_render_steps, "render_steps": base_cfg.render_steps,
                     "prune_stages": list(base_cfg.prune_stages), "trained_steps": meta["step"]},
        "rows": rows,
    }
    name = record_name(ap, args, "render_speed", ("threads", "repeats", "split"), device=where)
    path = write_result(name, payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
