"""Real talking-face clips end to end: prepare -> generic training -> held-out metrics -> expression transfer.

    python benchmarks/real_clips.py [--work /tmp/fastminerf_real] [--minutes 15] [--clips 9] [--size 256]

1. ``fastminerf.prepare.prepare`` turns the clips of ``../shared/data/real`` (or ``$FASTMINERF_REAL_DATA``) into
   ``WORK/data`` at ``--size`` px (first ``--max-frames`` frames of each; resumes when already there). Of each
   clip's frames the last 10 % are ``test`` and the 10 % before them ``val`` (``--val-fraction``), neither trained on.
2. ``fastminerf.train.train`` trains ONE generic model on every clip's ``train`` split, ``--config`` preset (default ``video``: ``cpu`` plus the torso layer, mouth rays and the landmark depth prior), for
   ``--minutes`` of training time; the learning-rate schedule spans ``--steps`` (default: the preset's steps per
   its time budget, scaled to ``--minutes``); ``--set key=value`` overrides the preset. Resumes when ``WORK/run`` holds a checkpoint of the same settings.
   With ``--finetune-seconds S``, MI-NeRF's per-identity fine-tuning inside the same budget: the generic model
   trains for ``--minutes`` less ``S`` per clip (its schedule shortened alike), then each clip is fine-tuned alone
   for up to ``S`` seconds (:func:`fastminerf.train.personalize` on a known identity, ``WORK/finetune/<clip>``),
   and each clip is scored by its own fine-tuned model, beside the generic phase's model on the same frames
   (results to ``real_clips_finetune.json``).
3. ``fastminerf.render.evaluate`` on the first ``--eval-frames`` frames of each clip's ``test`` split: PSNR and
   SSIM per clip, beside two baselines computed on the same frames: the clip's ``bg.png`` alone, and the clip's
   mean training colour everywhere.
4. An expression-transfer video: ``--target`` rendered with the head motion (``relative`` poses) and expressions (``delta`` transfer)
   of ``--driver``'s test frames -> ``WORK/transfer.mp4``, and a strip image (driver frames above the rendered
   target) -> ``WORK/transfer.jpg``. Both stay outside the repository: they show the real people of the
   third-party clips, which are never copied into the project.

Writes into ``--out`` (default ``benchmarks/results``): ``real_clips.json`` (``real_clips_quick.json`` with
``--quick``, which is ignored by git; ``real_clips_val0.json`` with ``--val-fraction 0``: training on every frame
before the same test frames; ``--name N`` writes ``N.json`` instead, for a variant such as another seed). Always a
copy in ``WORK/real_clips.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import REAL, add_out, add_overrides, machine, no_real_clips, record_name, trained_on, write_result  # noqa: E402


MAX_FRAMES = 250
"""Frames per clip this benchmark prepares by default (the first ones)."""


def _clips(n: int):
    if not REAL.is_dir():
        return []
    vids = sorted(p for p in REAL.iterdir() if p.suffix.lower() in (".mp4", ".mov", ".webm"))
    return vids[:n]


def prepared_root(data: Path | None, work: Path, size: int = 256) -> Path | None:
    """``data`` (a root of prepared real clips) when given; else the nine clips of ``REAL`` prepared into
    ``work/data`` at ``size`` px as this benchmark prepares them (first :data:`MAX_FRAMES` frames; resuming what is
    there, so a ``WORK`` of this benchmark is reused). None, with the reason printed, when that fails."""
    if data is not None:
        return data
    from fastminerf.config import PrepareConfig
    from fastminerf.prepare import prepare

    clips = _clips(9)
    if not clips:
        print(no_real_clips(REAL), file=sys.stderr)
        return None
    prep = prepare(clips, work / "data", PrepareConfig(size=size, max_frames=MAX_FRAMES))
    if prep.failed:
        print("prepare failed: " + ", ".join(f"{v.name}: {v.error}" for v in prep.failed))
        return None
    return work / "data"


def _baselines(data, split: str, max_frames: int) -> dict:
    """PSNR of the background image alone and of the identity's mean training colour, on the evaluated frames."""
    from fastminerf.metrics import psnr, ssim

    out = {}
    table = data.table(split)
    train = data.table("train")
    for i, name in enumerate(data.identities):
        frames = table.frames_of(i)[:max_frames]
        tr = train.frames_of(i)
        mean = np.mean([data.image("train", int(j)).reshape(-1, 3).mean(axis=0) for j in tr[:: max(1, len(tr) // 20)]], axis=0) / 255.0
        bg = data.background(i).astype(np.float32) / 255.0
        vals = {"bg_psnr": [], "bg_ssim": [], "mean_colour_psnr": []}
        for j in frames.tolist():
            truth = data.image(split, j).astype(np.float32) / 255.0
            vals["bg_psnr"].append(float(psnr(bg, truth)))
            vals["bg_ssim"].append(float(ssim(bg, truth)))
            vals["mean_colour_psnr"].append(float(psnr(np.broadcast_to(mean, truth.shape).astype(np.float32), truth)))
        out[name] = {k: float(np.mean(v)) for k, v in vals.items()}
    return out


def _camera_gaps(data, split: str, max_frames: int) -> dict:
    """How far the evaluated frames' cameras are from every training camera of the same clip: the mean distance to
    the nearest training camera centre (head-space units). With ``evaluate``'s ``pose_gap`` (the angle to the
    nearest training head rotation): a NeRF of one monocular clip has seen its head from a narrow cone of views;
    held-out frames outside it are new views, not only new expressions."""
    out = {}
    table, train = data.table(split), data.table("train")
    for i, name in enumerate(data.identities):
        c2w, ref = table.c2w[table.frames_of(i)[:max_frames]], train.c2w[train.frames_of(i)]
        out[name] = float(np.linalg.norm(c2w[:, None, :3, 3] - ref[None, :, :3, 3], axis=-1).min(axis=1).mean())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastminerf_real"), help="data, run and video (outside the repo)")
    ap.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    ap.add_argument("--steps", type=int, default=None, help="schedule length (default: scaled from the preset)")
    ap.add_argument("--clips", type=int, default=9, help="use the first N clips (sorted by name)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--max-frames", type=int, default=MAX_FRAMES, help="frames per clip (the first ones)")
    ap.add_argument("--config", default="video",
                    help="preset (default video: cpu plus the torso layer, mouth rays and the landmark depth prior)")
    add_overrides(ap, "the preset, e.g. --set train.threads=1", "real_clips, or real_clips_val<F>")
    ap.add_argument("--eval-frames", type=int, default=5, help="test frames evaluated per clip (the first ones)")
    ap.add_argument("--target", default="02_hdtf_WDA_AlexandriaOcasioCortez_000", help="identity rendered in the video")
    ap.add_argument("--driver", default="04_hdtf_WDA_BobMenendez_000", help="identity whose poses and expressions drive it")
    ap.add_argument("--video-frames", type=int, default=20, help="frames of the transfer video (driver's test frames)")
    ap.add_argument("--val-fraction", type=float, default=0.1,
                    help="share of each clip held out as val between train and test (0: train on every frame before the "
                         "test frames, which stay the same; results to real_clips_val0.json)")
    ap.add_argument("--finetune-seconds", type=float, default=0.0,
                    help="fine-tune each clip alone for this many seconds after a generic phase that gets the rest of "
                         "--minutes (0: the generic model only)")
    ap.add_argument("--quick", action="store_true", help="results to real_clips_quick.json (ignored by git) instead, for a smoke run with a short --minutes")
    add_out(ap)
    args = ap.parse_args(argv)

    from fastminerf.config import PrepareConfig, load_config
    from fastminerf.data import load_dataset
    from fastminerf.prepare import prepare
    from fastminerf.render import drive_path, evaluate, render_sequence, to_uint8, write_video
    from fastminerf.train import personalize, train

    commit = machine()["git_commit"]  # the commit that runs, not the one checked out when it ends
    clips = _clips(args.clips)
    if not clips:
        print(no_real_clips(REAL), file=sys.stderr)
        return 1
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    seconds = {}

    # 1. prepare
    t0 = time.perf_counter()
    prep = prepare(clips, work / "data", PrepareConfig(size=args.size, max_frames=args.max_frames,
                                                       val_fraction=args.val_fraction))
    seconds["prepare"] = time.perf_counter() - t0
    if prep.failed:
        for v in prep.failed:
            print(f"prepare failed: {v.name}: {v.error}")
        return 1
    dirs = [v.out_dir for v in prep.videos]
    frames = {v.name: {"used": v.frames_used, "dropped": v.frames_dropped, **v.splits} for v in prep.videos}
    print(f"prepared {len(dirs)} clips in {seconds['prepare']:.0f} s: " + ", ".join(f"{k} {v['train']}/{v['val']}/{v['test']}" for k, v in frames.items()))

    # 2. train
    preset = load_config(args.config, args.overrides)
    per_second = preset.train.steps / (preset.train.max_seconds or 300.0)  # the preset's steps per its budget
    budget = args.minutes * 60.0
    steps = args.steps or int(round(per_second * budget))
    generic_s = budget - args.finetune_seconds * len(dirs)  # the fine-tunes' share comes off the generic phase
    if generic_s <= 0:
        print(f"--finetune-seconds {args.finetune_seconds:g} for {len(dirs)} clips leaves no time of --minutes {args.minutes:g}")
        return 1
    steps = int(round(steps * generic_s / budget))
    cfg = load_config(args.config, args.overrides + [f"train.max_seconds={generic_s}", f"train.steps={steps}",
                                                     "train.log_every=100"])
    if cfg.train.threads:  # evaluation and the video on the runs' threads too (train() gives the caller's back)
        torch.set_num_threads(cfg.train.threads)
    t0 = time.perf_counter()

    def show(rec):
        print(f"  step {int(rec['step'])}/{steps}  {rec['seconds']:.0f}s  train psnr {rec['psnr']:.2f} dB  "
              f"{rec['samples_per_ray']:.1f} samples/ray", flush=True)

    result = train(cfg, dirs, work / "run", progress=show)
    seconds["train_wall"] = time.perf_counter() - t0
    model = result.model.eval()
    print(f"trained {result.step} steps, {result.seconds:.0f} s of training: train psnr {result.psnr:.2f} dB")
    models = {d.name: model for d in dirs}
    tuned = {}
    if args.finetune_seconds > 0:  # each clip alone, as many steps as the generic rate gives in its seconds
        tune_steps = max(10, int(result.step / max(result.seconds, 1e-9) * args.finetune_seconds))
        for d in dirs:
            r = personalize(work / "run", [d], work / "finetune" / d.name, steps=tune_steps,
                            max_seconds=args.finetune_seconds)
            models[d.name] = r.model.eval()
            tuned[d.name] = {"steps": r.step, "seconds": r.seconds, "train_psnr": r.psnr}
            print(f"  fine-tuned {d.name}: {r.step} steps, {r.seconds:.0f} s, train psnr {r.psnr:.2f} dB", flush=True)

    # 3. held-out metrics
    data = load_dataset(dirs, splits=("train", "test"))
    t0 = time.perf_counter()
    metrics = evaluate(models, data, "test", out_dir=work / "eval_test", max_frames=args.eval_frames)
    generic_only = None
    if tuned:  # the generic phase's model on the same frames: what the fine-tunes added
        g = evaluate(model, data, "test", max_frames=args.eval_frames, with_lpips=False)
        generic_only = {"test": {n: {"psnr": m["psnr"], "ssim": m["ssim"]} for n, m in g["identities"].items()},
                        "mean": {"psnr": g["mean"]["psnr"], "ssim": g["mean"]["ssim"]}}
        print(f"  the generic phase alone: psnr {g['mean']['psnr']:.2f} dB  ssim {g['mean']['ssim']:.3f}")
    seconds["eval"] = time.perf_counter() - t0
    base = _baselines(data, "test", args.eval_frames)
    for name, gap in _camera_gaps(data, "test", args.eval_frames).items():
        base[name].update(pose_gap_deg=metrics["identities"][name]["pose_gap"], camera_gap=gap)
    for name, m in metrics["identities"].items():
        print(f"  {name:42s} psnr {m['psnr']:.2f} dB  ssim {m['ssim']:.3f}   (background only {base[name]['bg_psnr']:.2f} dB, "
              f"mean colour {base[name]['mean_colour_psnr']:.2f} dB; head pose {base[name]['pose_gap_deg']:.1f} deg from "
              "the nearest training pose)")
    extra = {k: metrics["mean"][k] for k in ("face_psnr", "mouth_psnr", "eye_psnr", "lmd", "ear_error") if k in metrics["mean"]}
    print(f"  mean psnr {metrics['mean']['psnr']:.2f} dB  ssim {metrics['mean']['ssim']:.3f}"
          + "".join(f"  {k} {v:.2f}" for k, v in extra.items()))

    # 4. expression transfer video
    video = strip = None
    names = data.identities
    if args.target in names and args.driver in names:
        t0 = time.perf_counter()
        path = drive_path(data, args.target, data, "test", driver_identity=args.driver, mode="delta")
        n = min(args.video_frames, len(path))
        path = path.head(n)
        ti = names.index(args.target)
        rendered = [to_uint8(f) for f in render_sequence(models[args.target], path, args.target, background=data.background(ti),
                                                         aabb=model.aabb.tolist())]
        # Outside the repository: the frames show the real people of the third-party clips.
        info = write_video(rendered, work / "transfer.mp4", fps=path.fps, audio=path.soundtrack())  # the driver's speech
        video = str(info.path)
        test = data.table("test")
        drv_frames = test.frames_of(names.index(args.driver))[:n]
        cols = np.linspace(0, n - 1, min(6, n)).round().astype(int)
        top = np.concatenate([data.image("test", int(drv_frames[c]))[..., :3] for c in cols], axis=1)
        bottom = np.concatenate([rendered[c] for c in cols], axis=1)
        import imageio.v3 as iio

        strip_path = work / "transfer.jpg"
        iio.imwrite(strip_path, np.concatenate([top, bottom], axis=0), quality=85)
        strip = str(strip_path)
        seconds["transfer_video"] = time.perf_counter() - t0
        print(f"transfer video: {video}; strip: {strip}")

    payload = {
        "machine": {**machine(), "git_commit": commit},  # threads: train.threads where set
        "settings": {"clips": [c.name for c in clips], "size": args.size, "max_frames": args.max_frames,
                     "config": args.config, "device": trained_on(cfg), "minutes": args.minutes, "steps": steps,
                     "eval_frames": args.eval_frames,
                     "eval_split": "test (each clip's last 10 %, never trained on)", "val_fraction": args.val_fraction,
                     "target": args.target,
                     "driver": args.driver, "transfer": "delta", "pose": "relative", "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                     "overrides": list(args.overrides), "finetune_seconds": args.finetune_seconds},
        "frames": frames,
        "training": {"steps": result.step, "seconds": result.seconds, "train_psnr": result.psnr,
                     "resumed_from": result.resumed_from,
                     "seconds_with_finetunes": result.seconds + sum(t["seconds"] for t in tuned.values())},
        "finetune": tuned,
        "generic_only": generic_only,
        "test": {name: {"psnr": m["psnr"], "ssim": m["ssim"], "frames": m["frames"],
                        **{k: m[k] for k in ("face_psnr", "mouth_psnr", "eye_psnr", "lmd", "ear_error", "lmd_frames") if k in m}, **base[name]}
                 for name, m in metrics["identities"].items()},
        "mean": {"psnr": metrics["mean"]["psnr"], "ssim": metrics["mean"]["ssim"], **extra,
                 "bg_psnr": float(np.mean([b["bg_psnr"] for b in base.values()])),
                 "mean_colour_psnr": float(np.mean([b["mean_colour_psnr"] for b in base.values()])),
                 "pose_gap_deg": float(np.mean([b["pose_gap_deg"] for b in base.values()]))},
        "target_psnr_db": 27.0,
        "video": video,
        "strip": strip,
        "seconds": seconds,
    }
    protocol = args.val_fraction == ap.get_default("val_fraction")  # the split: the README's table
    name = "real_clips" if protocol else f"real_clips_val{args.val_fraction:g}"
    name = record_name(ap, args, name + ("_finetune" if args.finetune_seconds > 0 else ""),
                       ("minutes", "clips", "size", "max_frames", "eval_frames", "video_frames"), args.quick,
                       device=trained_on(cfg))
    path = write_result(name, payload, args.out)
    print(f"wrote {path}")
    write_result("real_clips", payload, work)  # a copy beside the run
    return 0


if __name__ == "__main__":
    sys.exit(main())
