"""Multiplicative vs concat conditioning at an equal number of steps, over several procedural datasets: the paired
difference on ``novel`` expressions (issue 4's +1 dB target) with its spread, instead of one run's anecdote.

    python benchmarks/conditioning_equal_steps.py [--seeds 0 1 2 3] [--styles 0 0.6] [--steps 2000] [--identities 4]
        [--set KEY=VALUE ...] [--name RESULT]

For each seed and expression style (``fastminerf synth --expression-style``: 0, every head moves alike; S > 0,
each head moves by its own gain in ``[1 - S, 1]``), generates ``--identities`` (4) identities x ``--frames`` frames at
``--size`` px,
trains the ``cpu`` preset (with the ``--set`` overrides, in both runs) with ``train.steps=STEPS`` (full
learning-rate decay, no time limit: a fixed step count on the CPU is deterministic, so a busy machine changes the
time, never the result) once per conditioning, and
evaluates mean PSNR on ``novel`` (expressions each head withheld from its own video) and ``val`` (unseen frames),
``--eval-frames`` frames per identity. The difference multiplicative - concat is paired by dataset; the summary
gives its mean, its standard error over the seeds and how many seeds the product term wins. Writes into ``--out``
(default ``benchmarks/results``): ``conditioning_equal_steps.json`` (``conditioning_equal_steps_<N>ids.json`` for N
!= 4; ``--name`` names another file, for a variant's runs).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    add_out,
    add_overrides,
    fresh_run,
    machine,
    record_name,
    torch_threads,
    trained_on,
    write_result,
)
from benchmarks.train_targets import evaluate  # noqa: E402
from fastminerf import load_config, load_run, train  # noqa: E402
from fastminerf.data.synth import generate  # noqa: E402

CONDITIONINGS = ("multiplicative", "concat")


def summarise(rows: list, style: float) -> dict:
    """Mean, standard error and wins of multiplicative - concat over the seeds of one style."""
    out = dict(style=style)
    for split in ("novel", "val"):
        diffs = [r["multiplicative"][split] - r["concat"][split] for r in rows if r["style"] == style]
        n = len(diffs)
        mean = sum(diffs) / n
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
        out[split] = dict(diff_mean=mean, diff_se=sd / math.sqrt(n) if n > 1 else float("nan"), diffs=diffs,
                          wins=sum(d > 0 for d in diffs), seeds=n,
                          multiplicative=sum(r["multiplicative"][split] for r in rows if r["style"] == style) / n,
                          concat=sum(r["concat"][split] for r in rows if r["style"] == style) / n)
    return out


def _difference(d: dict) -> str:
    """A :func:`summarise` difference as text: its mean and standard error, or the mean alone of one seed (which has
    no standard error: 'nan' said nothing)."""
    return f"{d['diff_mean']:+.2f} +- {d['diff_se']:.2f} dB" if d["seeds"] > 1 else f"{d['diff_mean']:+.2f} dB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--styles", type=float, nargs="+", default=[0.0, 0.6])
    ap.add_argument("--novel-poses", choices=("own", "train"), default="own",
                    help="the novel frames' head poses (fastminerf synth --novel-poses): own, or a stretch of the "
                         "identity's training poses, so that only the expression is new")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--eval-frames", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--identities", type=int, default=4)
    ap.add_argument("--work", type=Path, default=None)
    add_overrides(ap, "the cpu preset in both runs", "conditioning_equal_steps[_<N>ids]")
    add_out(ap)
    args = ap.parse_args(argv)
    # the runs' thread count (train.threads) for their evaluations too (train() gives its caller's count back); the
    # caller's count comes back at the end
    with torch_threads(args.threads):
        return _compare(ap, args)


def _compare(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    work = args.work or Path(tempfile.mkdtemp(prefix="fm_cond_"))
    where = machine()  # at the start: the commit that runs, not the one checked out when it ends
    rows = []
    for style in args.styles:
        for seed in args.seeds:
            data = work / (f"synth_n{args.identities}_s{style:g}_seed{seed}"
                           + ("" if args.novel_poses == "own" else f"_novel{args.novel_poses}"))
            wanted = dict(n_identities=args.identities, n_frames=args.frames, size=args.size, seed=seed,
                          expression_style=style, novel_poses=args.novel_poses)
            stamp = data / "synth.json"
            have = json.loads(stamp.read_text()).get("settings", {}) if stamp.exists() else {}
            if any(have.get(k) != v for k, v in wanted.items()):  # a --work dataset of other sizes is made again,
                generate(data, **wanted, overwrite=True)  # and the runs on the old one are not resumed
                for cond in CONDITIONINGS:
                    shutil.rmtree(work / f"{data.name.replace('synth', 'run', 1)}_{cond}", ignore_errors=True)
            ids = sorted(p for p in data.iterdir() if p.is_dir())
            row = dict(style=style, seed=seed)
            for cond in CONDITIONINGS:
                cfg = load_config("cpu", [f"model.field.conditioning={cond}", f"train.steps={args.steps}",
                                          "train.max_seconds=none", f"train.threads={args.threads}"] + args.overrides)
                t0 = time.perf_counter()
                run = fresh_run(work / f"{data.name.replace('synth', 'run', 1)}_{cond}", cfg)  # other steps: anew
                train(cfg, ids, run)
                seconds = time.perf_counter() - t0
                _, model, _ = load_run(run, device=cfg.train.device)  # evaluated where it trained
                nov = evaluate(model, ids, "novel", args.eval_frames)
                val = evaluate(model, ids, "val", args.eval_frames)
                row[cond] = dict(novel=nov["mean_psnr"], val=val["mean_psnr"], seconds=seconds,
                                 novel_per_identity=nov["per_identity"])
                print(f"style {style:g} seed {seed} {cond:14s} novel {nov['mean_psnr']:.2f} dB  val {val['mean_psnr']:.2f} dB"
                      f"  ({seconds:.0f} s)", flush=True)
            rows.append(row)
    summary = [summarise(rows, s) for s in args.styles]
    for s in summary:
        n = s["novel"]
        over = (f"standard error over {n['seeds']} seeds" if n["seeds"] > 1 else "one seed: no standard error")
        print(f"style {s['style']:g}: novel multiplicative - concat {_difference(n)} ({over}; product term wins "
              f"{n['wins']} of {n['seeds']}); val {_difference(s['val'])}", flush=True)
    name = record_name(ap, args, "conditioning_equal_steps" + ("" if args.identities == 4 else f"_{args.identities}ids"),
                       ("seeds", "styles", "steps", "size", "frames", "eval_frames", "novel_poses"),
                       device=trained_on(cfg))
    write_result(name, dict(
        machine=where,
        settings=dict(seeds=args.seeds, styles=args.styles, steps=args.steps, size=args.size, frames=args.frames,
                      identities=args.identities, eval_frames=args.eval_frames, threads=args.threads, config="cpu",
                      device=trained_on(cfg),
                      novel_poses=args.novel_poses,
                      overrides=args.overrides),
        rows=rows, summary=summary, target=dict(novel_diff_db=1.0,
                                                met=any(s["novel"]["diff_mean"] >= 1.0 for s in summary
                                                        if s["style"] == 0.0))), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
