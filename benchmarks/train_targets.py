"""The three training targets of issue 4, measured on procedural heads (4 identities, 128 px, this CPU).

1. Generic training (``cpu`` preset, multiplicative) for ``--minutes`` (5): mean val PSNR over time (the run is
   stopped at time marks with ``train.max_seconds``, evaluated, and resumed: resume is exact, so the curve is the
   one of a single uninterrupted run; evaluation time is not training time).
2. ``concat`` with the same budget: mean PSNR on the ``novel`` split (expressions an identity never showed) against
   multiplicative.
3. A held-out 5th identity from 30 training frames: personalising the generic model for up to 1 minute against
   training that identity alone from scratch for ``--minutes``; reports the personalisation time at which it first
   matches the from-scratch PSNR (at the marks evaluated).

Frames outside training use each identity's mean training frame code (``MINeRF.render_rays`` default). Evaluation
renders at most ``--eval-frames`` frames per identity and split, spread over the split.

    python benchmarks/train_targets.py [--data SYNTH_ROOT] [--minutes 5] [--quick]

Writes ``train_targets.json`` (``train_targets_quick.json`` with ``--quick``) into ``--out`` (default
``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import add_out, add_overrides, machine, psnr, record_name, spread_frames, trained_on, write_result  # noqa: E402
from fastminerf import frame_rays, load_config, load_dataset, load_run, personalize, train  # noqa: E402
from fastminerf.config import config_to_dict  # noqa: E402
from fastminerf.data.synth import generate  # noqa: E402

PERSONALIZE_FRAMES = 30


def evaluate(model, dirs, split: str, frames_per_identity: int) -> dict:
    """Mean PSNR over up to ``frames_per_identity`` frames of each identity in ``dirs`` (rendered at their
    identity's id in ``model``)."""
    data = load_dataset(dirs, splits=(split,))
    table = data.table(split)
    per_identity = {}
    start = time.perf_counter()
    for k, name in enumerate(data.identities):
        pick = spread_frames(table, k, frames_per_identity)
        values = []
        for b in pick.tolist():
            batch = frame_rays(data, split, b)
            batch.identity = torch.full_like(batch.identity, model.identity_index(name))
            with torch.no_grad():
                batch = batch.to(model.aabb.device)
                out = model.render_batch(batch)  # frame_code None: the identity's mean training code
            values.append(psnr(out["rgb"], batch.rgb))
        per_identity[name] = float(np.mean(values))
    return dict(mean_psnr=float(np.mean(list(per_identity.values()))), per_identity=per_identity,
                eval_seconds=time.perf_counter() - start)


def staged_train(cfg, dirs, out: Path, marks, eval_dirs, eval_frames: int, log) -> list:
    """Train to each time mark (resuming), evaluating val PSNR at each."""
    curve = []
    for mark in marks:
        c = load_config_from(cfg, [f"train.max_seconds={mark}"])
        result = train(c, dirs, out)
        _, model, _ = load_run(out, device=c.train.device)  # evaluated where it trained
        ev = evaluate(model, eval_dirs, "val", eval_frames)
        curve.append(dict(seconds=result.seconds, step=result.step, val_psnr=ev["mean_psnr"], train_psnr=result.psnr))
        log(f"  {out.name}: {result.seconds:6.1f} s, step {result.step:5d}, train {result.psnr:5.2f} dB, "
            f"val {ev['mean_psnr']:5.2f} dB")
    return curve


def load_config_from(cfg, overrides):
    from fastminerf.config import apply_overrides

    return apply_overrides(cfg, overrides)


def clip(identity_dir: Path, out_root: Path, n_frames: int) -> Path:
    """A copy of an identity folder whose train split keeps its first ``n_frames`` frames (images linked)."""
    dst = out_root / identity_dir.name
    dst.mkdir(parents=True, exist_ok=True)
    for item in identity_dir.iterdir():
        target = dst / item.name
        if target.exists() or target.is_symlink():
            continue
        if item.name == "transforms_train.json":
            meta = json.loads(item.read_text())
            meta["frames"] = meta["frames"][:n_frames]
            target.write_text(json.dumps(meta))
        else:
            target.symlink_to(item.resolve())
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="synth root with >= 5 identities (default: generate)")
    ap.add_argument("--minutes", type=float, default=5.0, help="generic / from-scratch budget")
    ap.add_argument("--personalize-seconds", type=float, default=60.0)
    ap.add_argument("--eval-frames", type=int, default=10, help="frames per identity and split evaluated (10: all of the default set)")
    ap.add_argument("--config", default="cpu")
    add_overrides(ap, "the --config preset")
    ap.add_argument("--work", type=Path, default=None, help="folder for runs (default: a temp folder)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data and budgets (about a minute)")
    ap.add_argument("--personalize-only", action="store_true",
                    help="redo only the personalisation against the generic and alone runs kept in --work, updating "
                         "the results JSON (e.g. after changing train.personalize_steps)")
    add_out(ap)
    args = ap.parse_args(argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731  (benchmarks print; the library does not)
    work = args.work or Path(tempfile.mkdtemp(prefix="fm_targets_"))
    work.mkdir(parents=True, exist_ok=True)
    size, n_frames, seed = (32, 40, 0) if args.quick else (128, 100, 0)
    if args.data is None:
        args.data = work / "synth"
        if not (args.data / "synth.json").exists():
            log(f"generating 5 identities, {n_frames} frames, {size} px into {args.data}")
            generate(args.data, n_identities=5, n_frames=n_frames, size=size, seed=seed, overwrite=True)
    ids = sorted(p for p in args.data.iterdir() if p.is_dir())
    if len(ids) < 5:
        raise SystemExit(f"{args.data} must hold at least 5 identities")
    generic_ids, held_out = ids[:4], ids[4]
    minutes = 0.25 if args.quick else args.minutes
    pers_seconds = 10.0 if args.quick else args.personalize_seconds
    overrides = list(args.overrides)
    cfg = load_config(args.config, overrides)
    name = record_name(ap, args, "train_targets", ("minutes", "personalize_seconds", "eval_frames"), args.quick,
                       device=trained_on(cfg))
    if cfg.train.threads:  # the evaluations between the runs on the runs' threads too (train() gives the caller's back)
        torch.set_num_threads(cfg.train.threads)
    budget = minutes * 60
    marks = [budget * f for f in (0.2, 0.4, 0.6, 0.8, 1.0)]
    results = dict(machine=machine(), config=args.config, device=trained_on(cfg), overrides=overrides, quick=args.quick,
                   data=dict(root=str(args.data), identities=[p.name for p in ids], size=size,
                             frames_per_identity=n_frames, seed=seed, held_out=held_out.name,
                             personalize_frames=PERSONALIZE_FRAMES),
                   budget_seconds=budget, resolved_config=config_to_dict(cfg))
    if args.personalize_only:
        if args.work is None:
            raise SystemExit("--personalize-only needs the --work folder of a full run")
        source = "train_targets_quick" if args.quick else "train_targets"  # the run whose generic model is in --work
        old = json.loads((args.out / f"{source}.json").read_text())
        old["personalize_rerun"] = dict(machine=results["machine"], resolved_config=results["resolved_config"])
        held_clip = work / "clip" / held_out.name
        old["personalize"] = personalize_phase(cfg, work / "generic_multiplicative", held_clip, work,
                                               old["personalize"]["alone_curve"], pers_seconds, args.eval_frames, log)
        return finish(old, name, args, work, log)

    # 1. Generic, multiplicative.
    log(f"[1] generic multiplicative, {budget:.0f} s")
    run_mul = work / "generic_multiplicative"
    results["generic_multiplicative"] = dict(curve=staged_train(cfg, generic_ids, run_mul, marks, generic_ids, 1, log))
    _, model_mul, _ = load_run(run_mul, device=cfg.train.device)
    results["generic_multiplicative"]["val"] = evaluate(model_mul, generic_ids, "val", args.eval_frames)
    results["generic_multiplicative"]["novel"] = evaluate(model_mul, generic_ids, "novel", args.eval_frames)
    log(f"  final val {results['generic_multiplicative']['val']['mean_psnr']:.2f} dB, "
        f"novel {results['generic_multiplicative']['novel']['mean_psnr']:.2f} dB")

    # 2. Concat at the same budget.
    log(f"[2] generic concat, {budget:.0f} s")
    run_cat = work / "generic_concat"
    cfg_cat = load_config_from(cfg, ["model.field.conditioning=concat", f"train.max_seconds={budget}"])
    r = train(cfg_cat, generic_ids, run_cat)
    _, model_cat, _ = load_run(run_cat, device=cfg_cat.train.device)
    results["generic_concat"] = dict(seconds=r.seconds, step=r.step,
                                     val=evaluate(model_cat, generic_ids, "val", args.eval_frames),
                                     novel=evaluate(model_cat, generic_ids, "novel", args.eval_frames))
    gap = results["generic_multiplicative"]["novel"]["mean_psnr"] - results["generic_concat"]["novel"]["mean_psnr"]
    results["novel_gap_db"] = gap
    log(f"  concat novel {results['generic_concat']['novel']['mean_psnr']:.2f} dB; multiplicative - concat = {gap:+.2f} dB")

    # 3. Held-out identity from 30 frames: from scratch vs personalisation.
    clip_root = work / "clip"
    held_clip = clip(held_out, clip_root, PERSONALIZE_FRAMES)
    log(f"[3] {held_out.name} alone from scratch, {budget:.0f} s")
    run_alone = work / "alone"
    alone_curve = staged_train(cfg, [held_clip], run_alone, marks, [held_clip], args.eval_frames, log)
    results["personalize"] = personalize_phase(cfg, run_mul, held_clip, work, alone_curve, pers_seconds,
                                               args.eval_frames, log)
    return finish(results, name, args, work, log)


def personalize_phase(cfg, run_mul: Path, held_clip: Path, work: Path, alone_curve: list, pers_seconds: float,
                      eval_frames: int, log) -> dict:
    """Personalise the held-out clip from the generic run, evaluated at six time marks (resumed between them)."""
    target = alone_curve[-1]["val_psnr"]
    log(f"[3] personalise {held_clip.name} from the generic model, up to {pers_seconds:.0f} s")
    run_pers = work / "personalized"
    shutil.rmtree(run_pers, ignore_errors=True)
    pers_curve = []
    steps = cfg.train.personalize_steps  # the preset's schedule; the time limit may stop it earlier
    t = cfg.train  # the preset's personalisation settings, also when the generic run was made with older ones
    settings = [f"train.personalize_{k}={getattr(t, 'personalize_' + k)}" for k in ("code_fraction", "tune", "lr_factor")]
    for f in (1 / 12, 1 / 6, 0.25, 0.5, 0.75, 1.0):
        res = personalize(run_mul, [held_clip], run_pers, steps=steps, max_seconds=pers_seconds * f, overrides=settings)
        _, model_p, _ = load_run(run_pers, device=cfg.train.device)
        ev = evaluate(model_p, [held_clip], "val", eval_frames)
        pers_curve.append(dict(seconds=res.seconds, step=res.step, val_psnr=ev["mean_psnr"]))
        log(f"  personalized: {res.seconds:5.1f} s, step {res.step}, val {ev['mean_psnr']:.2f} dB")
    reached = next((p["seconds"] for p in pers_curve if p["val_psnr"] >= target), None)
    return dict(alone_curve=alone_curve, alone_final_val_psnr=target, curve=pers_curve, steps=steps,
                settings=settings, seconds_to_match_alone=reached)


def finish(results: dict, name: str, args, work: Path, log) -> int:
    gap = results["novel_gap_db"]
    reached = results["personalize"]["seconds_to_match_alone"]
    final_val = results["generic_multiplicative"]["val"]["mean_psnr"]
    results["targets"] = dict(
        generic_val_psnr_ge_30db=dict(value=final_val, met=final_val >= 30.0),
        novel_multiplicative_minus_concat_ge_1db=dict(value=gap, met=gap >= 1.0),
        personalize_matches_alone_within_60s=dict(value=reached, met=reached is not None and reached <= 60.0),
    )
    path = write_result(name, results, args.out)
    log(json.dumps(results["targets"], indent=1))
    log(f"wrote {path}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
