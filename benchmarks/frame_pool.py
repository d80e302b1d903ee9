"""Frame-pool benchmark: training on a split larger than the frame cache, with and without the pool
(``sampler.pool_frames``), against the same split held whole in the cache.

    python benchmarks/frame_pool.py            # 4 procedural people x 100 frames at 512 px, a cache of 100 frames
    python benchmarks/frame_pool.py --quick    # 2 x 30 frames at 64 px, a cache of 20, seconds

Three runs of the ``cpu`` preset side by side, one after another on the same data: ``pool`` (the default: the split
has 4x the frames the cache holds, so batches draw from a turning pool of nine tenths of them), ``no pool``
(``sampler.pool_frames=0``: most of a batch's 32 frames are decoded from PNG again) and ``all cached`` (a cache
without bounds). Each trains ``--steps`` steps; the time per step is taken from ``log.jsonl`` between the first
logged step and the last (the carving before training, the same in all three, left out), with the frame cache's
misses per step. Writes ``frame_pool[_quick].json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import add_out, load_average, machine, record_name, synth_identities, trained_on, write_result  # noqa: E402


def _run(ids, out: Path, steps: int, threads: int, overrides: list) -> dict:
    import importlib

    from fastminerf.config import load_config

    train = importlib.import_module("fastminerf.train").train  # the package's `train` attribute is the function
    cfg = load_config("cpu", [f"train.steps={steps}", "train.log_every=5", f"train.threads={threads}",
                              "train.checkpoint_every=0", "train.checkpoint_seconds=0"] + overrides)
    start = time.perf_counter()
    result = train(cfg, ids, out)
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    first, last = log[0], log[-1]
    return dict(overrides=overrides, steps=result.step, wall_s=wall,
                seconds_per_step=(last["seconds"] - first["seconds"]) / max(last["step"] - first["step"], 1),
                train_psnr=last.get("psnr"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=4)
    ap.add_argument("--frames", type=int, default=100, help="frames per person")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--cache", type=int, default=100, help="data.cache_frames of the two bounded runs")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 x 30 frames at 64 px, a cache of 20, 30 steps")
    ap.add_argument("--work", type=Path, default=None, help="keep the data and runs here (default: a temporary folder)")
    add_out(ap)
    args = ap.parse_args(argv)
    from fastminerf.config import load_config

    if args.quick:
        args.identities, args.frames, args.size, args.cache, args.steps = 2, 30, 64, 20, 30
    work = Path(args.work or tempfile.mkdtemp(prefix="frame_pool_"))
    ids = synth_identities(work / "data", args.identities, args.frames, args.size, seed=0)
    runs = {}
    for name, overrides in (("pool", [f"data.cache_frames={args.cache}"]),
                            ("no pool", [f"data.cache_frames={args.cache}", "sampler.pool_frames=0"]),
                            ("all cached", ["data.cache_frames=null", "data.cache_bytes=null"])):
        runs[name] = _run(ids, work / name.replace(" ", "_"), args.steps, args.threads, overrides)
        print(f"{name:>10}: {runs[name]['seconds_per_step'] * 1000:.1f} ms a step", flush=True)
    base = runs["all cached"]["seconds_per_step"]
    summary = {name: f"{r['seconds_per_step'] * 1000:.1f} ms a step ({r['seconds_per_step'] / base:.2f}x all cached)"
               for name, r in runs.items()}
    result = dict(machine=machine(), quick=args.quick, load_average=load_average(),
                  settings=dict(identities=args.identities, frames=args.frames, size=args.size, cache_frames=args.cache,
                                steps=args.steps, threads=args.threads, preset="cpu",
                                device=trained_on(load_config("cpu"))),
                  frame_pool=dict(runs=runs, summary=summary))
    path = write_result(record_name(ap, args, "frame_pool", ("identities", "frames", "size", "cache", "steps"),
                                    smoke=args.quick, device=result["settings"]["device"]), result, args.out)
    for k, v in summary.items():
        print(f"{k}: {v}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
