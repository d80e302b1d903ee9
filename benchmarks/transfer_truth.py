"""Expression transfer against ground truth: a procedural head driven by another's expressions, scored against the
true face of the target making the expressions the transfer gives it.

    python benchmarks/transfer_truth.py [--identities 3] [--frames 60] [--size 48] [--steps 900] [--config cpu]
        [--target id001] [--driver id000] [--work DIR] [--out DIR]

A generic model is trained on ``--identities`` procedural heads (``fastminerf synth``); then the target is driven by
the driver's ``train`` frames with :func:`fastminerf.render.drive_path` in both transfer modes, with ``pose="target"``
(the target's own training head poses and framing, views its field has seen). The procedural heads render any
expression of any head exactly (:class:`fastminerf.data.heads.HeadModel`, each head moving by its own expressiveness
times the coefficients, as ``synth`` draws it, over its own ``bg.png``), so each render is scored against the truth of
what its mode claims:

- ``absolute``: the target making the driver's coefficients ``e_d``;
- ``delta``: the target making ``n_t + (e_d - n_d)`` (its neutral moved by the driver's change from the driver's
  neutral; neutral = the ``train`` frame of smallest expression norm, :func:`fastminerf.render.neutral_frame`);
- ``none`` (the baseline, no transfer): the target rendered at its own neutral expression ``n_t``, scored against
  each mode's truth.

PSNR is taken in the face region (every pixel any of the frame's truths covers with the head) and over the whole
frame, on all driven frames and on the frames where the driver's mouth or eyes move (``jaw_open``, a blink or
``pucker`` at least ``--moving`` from the driver's neutral). ``truth_change_db`` is the PSNR between a mode's truth
and the target's neutral truth (how much the transferred expression changes the picture: what ``none`` misses);
``change_correlation`` is the correlation of the change the transferred expression makes in the render (against
``none``'s render) with the change it makes in truth, in the face region: whether transfer moves the right pixels the
right way, apart from the model's error on the face itself (0: no change, as ``none``). ``delta_vs_absolute_truth_db``
is the PSNR between the two modes' truths (what delta's offset ``n_t - n_d`` changes; the heads' coefficients hold no
identity, so absolute's claim is the heads' own). ``fit_psnr`` scores the model on the target's own training
expressions at the same cameras (the fit transfer cannot beat; its ``change_correlation``, of its own expressions, is
how well the model follows expressions at all). Writes ``transfer_truth.json`` into ``--out`` (default
``benchmarks/results``; another size, schedule or pair there writes ``transfer_truth_quick.json``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (add_device, add_out, device, fresh_run, machine, record_name,  # noqa: E402
                               synth_identities, torch_threads, write_result)

MODES = ("absolute", "delta")
MOVING = ("jaw_open", "blink_left", "blink_right", "pucker")
"""The coefficients whose change from the driver's neutral marks a frame where its mouth or eyes move."""


def truth_frames(identity_dir: Path, path, expression: np.ndarray, bg: np.ndarray) -> tuple:
    """The procedural head of ``identity_dir`` (its ``synth_identity.json``) making ``expression`` (B, E) at the
    cameras of ``path``, over its background ``bg`` (H, W, 3) uint8, as ``synth`` writes its frames:
    ``(B, H, W, 3)`` float in [0, 1] (rounded to 8 bits) and the head's mask ``(B, H, W)``."""
    import torch

    from fastminerf.data.heads import HeadModel, HeadParams

    marker = json.loads((identity_dir / "synth_identity.json").read_text())
    head = HeadModel(HeadParams.from_json(marker["params"]))
    moved = np.asarray(expression, np.float32) * float(marker.get("expressiveness", 1.0))  # what the face does
    intr = torch.from_numpy(np.asarray(path.intrinsics, np.float32))
    rgb, hit = head.render_frames(torch.from_numpy(np.asarray(path.c2w, np.float32)), intr, path.width, path.height,
                                  torch.from_numpy(moved), chunk_rays=1 << 16)
    rgb8 = np.rint(rgb.numpy() * 255.0).astype(np.uint8)
    out = np.where(hit.numpy()[..., None], rgb8, np.asarray(bg, np.uint8)[None])
    return out.astype(np.float32) / 255.0, hit.numpy()


def region_psnr(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB) of ``pred`` against ``truth`` (B, H, W, 3) over the pixels of ``mask`` (B, H, W) together."""
    err = ((pred - truth) ** 2).mean(axis=-1)[mask]
    return float(-10.0 * np.log10(max(float(err.mean()), 1e-10))) if err.size else float("nan")


def frame_psnrs(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, frames: np.ndarray) -> dict:
    """Face-region and whole-frame PSNR over ``frames`` (B,) bool."""
    whole = np.ones_like(mask)
    return {"face": region_psnr(pred[frames], truth[frames], mask[frames]),
            "frame": region_psnr(pred[frames], truth[frames], whole[frames])}


def change_correlation(pred: np.ndarray, pred_base: np.ndarray, truth: np.ndarray, truth_base: np.ndarray,
                       mask: np.ndarray, frames: np.ndarray) -> float:
    """Pearson correlation, over the pixels of ``mask`` in ``frames``, between what the expression changes in the
    render (``pred - pred_base``) and what it changes in truth (``truth - truth_base``): 1 when the transfer moves the
    right pixels the right way whatever the model's error on the face itself, 0 for no change (no transfer)."""
    a = (pred - pred_base)[frames][mask[frames]].reshape(-1)
    b = (truth - truth_base)[frames][mask[frames]].reshape(-1)
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def measure(run: Path, data_root: Path, target: str, driver: str, split: str = "train", moving: float = 0.25,
            where: str = "cpu") -> dict:
    """The scores of the module docstring for ``target`` driven by ``driver``'s ``split`` frames."""
    from fastminerf import load_dataset
    from fastminerf.data.synth import EXPRESSION_NAMES
    from fastminerf.render import drive_path, neutral_frame, pose_loop, render_sequence, split_fps
    from fastminerf.train import load_run

    _, model, _ = load_run(run, device=where)
    t_data = load_dataset([data_root / target], splits=("train",))
    d_data = load_dataset([data_root / driver], splits=tuple(dict.fromkeys(("train", split))))
    t_tab, d_tab = t_data.table("train"), d_data.table("train")
    n_t = t_tab.expression[neutral_frame(t_data, 0)].astype(np.float64)
    n_d = d_tab.expression[neutral_frame(d_data, 0)].astype(np.float64)
    paths = {mode: drive_path(t_data, target, d_data, split, driver, mode=mode, pose="target") for mode in MODES}
    e_d = paths["absolute"].expression.astype(np.float64)  # the driver's frames in time order, as they are
    claimed = {"absolute": e_d, "delta": n_t[None] + (e_d - n_d[None])}
    base = paths["absolute"]
    for mode in MODES:  # the transfer gives what each mode claims, on the target's own cameras
        assert np.allclose(paths[mode].expression, claimed[mode], atol=1e-5), mode
        assert np.array_equal(paths[mode].c2w, base.c2w)
    background = t_data.background(0)
    aabb = model.aabb.tolist()

    def render(path) -> np.ndarray:
        return np.stack(list(render_sequence(model, path, target, background=background, aabb=aabb)))

    # pose="target" plays the target's training frames' poses in time order: its own expressions there
    own = t_tab.frames_of(0)
    own = own[np.argsort(t_tab.time[own], kind="stable")]
    own = own[pose_loop(own.size, len(base), split_fps(t_data, "train", 0) / base.fps)]
    assert np.array_equal(t_tab.c2w[own], base.c2w)
    own_expr = t_tab.expression[own].astype(np.float32)
    neutral = np.repeat(n_t[None].astype(np.float32), len(base), axis=0)
    renders = {mode: render(paths[mode]) for mode in MODES}
    renders["none"] = render(replace(base, expression=neutral))
    renders["own"] = render(replace(base, expression=own_expr))
    truths, hits = {}, {}
    for key, expr in (("absolute", claimed["absolute"]), ("delta", claimed["delta"]), ("none", neutral),
                      ("own", own_expr)):
        truths[key], hits[key] = truth_frames(data_root / target, base, expr, background)
    # the truth renderer is synth's own: the target's own expressions give back its stored training frames
    stored = np.stack([t_data.image("train", int(r)) for r in own]).astype(np.float32) / 255.0
    truth_error = float(np.abs(stored - truths["own"]).max())
    if truth_error > 1.5 / 255.0:
        raise RuntimeError(f"the truth of {target}'s own training expressions differs from its stored frames by "
                           f"{truth_error * 255:.1f}/255: not the heads synth drew")
    face = hits["absolute"] | hits["delta"] | hits["none"]
    idx = [list(EXPRESSION_NAMES).index(name) for name in MOVING]
    change = np.abs(e_d[:, idx] - n_d[None, idx]).max(axis=1)
    sets = {"all": np.ones(len(base), bool), "moving": change >= moving}
    scores = {}
    for mode in MODES:
        scores[mode] = {}
        for name, frames in sets.items():
            if not frames.any():
                continue
            scores[mode][name] = {
                "transfer": frame_psnrs(renders[mode], truths[mode], face, frames),
                "none": frame_psnrs(renders["none"], truths[mode], face, frames),
                "truth_change_db": frame_psnrs(truths["none"], truths[mode], face, frames),
                "change_correlation": change_correlation(renders[mode], renders["none"], truths[mode], truths["none"],
                                                         face, frames),
            }
    # how far delta's claim is from the driver's coefficients themselves (the heads' shared space has no identity
    # in its coefficients: delta adds the neutrals' difference n_t - n_d to every frame)
    modes_gap = frame_psnrs(truths["delta"], truths["absolute"], face, sets["all"])
    fit = frame_psnrs(renders["own"], truths["own"], face | hits["own"], sets["all"])
    fit["change_correlation"] = change_correlation(renders["own"], renders["none"], truths["own"], truths["none"],
                                                   face | hits["own"], sets["all"])
    return {"target": target, "driver": driver, "split": split, "frames": len(base),
            "moving_frames": int(sets["moving"].sum()), "moving_threshold": moving,
            "truth_error": truth_error, "target_neutral": n_t.tolist(), "driver_neutral": n_d.tolist(), "fit_psnr": fit,
            "delta_vs_absolute_truth_db": modes_gap, "scores": scores}


def summary_lines(result: dict) -> list:
    """One line per mode and frame set: transfer against none, in the face region."""
    lines = [f"{result['target']} driven by {result['driver']}:{result['split']}, {result['frames']} frames "
             f"({result['moving_frames']} with mouth or eyes moving); fit on own expressions "
             f"{result['fit_psnr']['face']:.2f} dB (face), change correlation "
             f"{result['fit_psnr']['change_correlation']:.3f}; delta's truth against absolute's "
             f"{result['delta_vs_absolute_truth_db']['face']:.2f} dB (face)"]
    for mode, sets in result["scores"].items():
        for name, s in sets.items():
            lines.append(f"{mode:8s} {name:6s}: transfer {s['transfer']['face']:.2f} dB, no transfer "
                         f"{s['none']['face']:.2f} dB (face; frame {s['transfer']['frame']:.2f} / "
                         f"{s['none']['frame']:.2f}); truth vs neutral truth {s['truth_change_db']['face']:.2f} dB; "
                         f"change correlation {s['change_correlation']:.3f}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--identities", type=int, default=3, help="procedural heads trained together (default 3)")
    ap.add_argument("--frames", type=int, default=60, help="frames of each head's video (default 60)")
    ap.add_argument("--size", type=int, default=48, help="frame size in pixels (default 48)")
    ap.add_argument("--seed", type=int, default=0, help="the heads' seed and the training seed (default 0)")
    ap.add_argument("--steps", type=int, default=900,
                    help="training steps (default 900: about 5 minutes on one thread; a model of much less, e.g. the "
                         "tiny preset's, follows no expression at all, its change correlation about 0)")
    ap.add_argument("--config", default="cpu", help="preset of the model (default cpu)")
    ap.add_argument("--target", default="id001", help="the driven head (default id001)")
    ap.add_argument("--driver", default="id000", help="the head whose expressions drive it (default id000)")
    ap.add_argument("--split", default="train", help="the driver's split that drives (default train)")
    ap.add_argument("--moving", type=float, default=0.25,
                    help="a frame's mouth or eyes move when jaw_open, a blink or pucker is this far from the driver's "
                         "neutral (default 0.25)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastminerf_transfer_truth"),
                    help="folder for the heads and the run (reused when its settings match)")
    add_device(ap)
    add_out(ap)
    args = ap.parse_args(argv)
    if args.identities < 2:
        ap.error("--identities must be at least 2 (a target and a driver)")
    names = [f"id{k:03d}" for k in range(args.identities)]
    for option in ("target", "driver"):
        if getattr(args, option) not in names:
            ap.error(f"--{option} {getattr(args, option)} is not one of the heads {names}")
    if args.target == args.driver:
        ap.error("--target and --driver are the same head: nothing is transferred")
    where_to = device(args)
    from fastminerf import load_config, train

    with torch_threads(1):
        where = machine()
        ids = synth_identities(args.work / "data", args.identities, args.frames, args.size, args.seed)
        cfg = load_config(args.config, [f"train.steps={args.steps}", "train.max_seconds=null", "train.threads=1",
                                        f"train.seed={args.seed}", "train.checkpoint_every=1000000",
                                        "train.checkpoint_seconds=1e9"])
        run = fresh_run(args.work / "run", cfg, ids)
        t0 = time.perf_counter()
        trained = train(cfg, ids, run)
        seconds = time.perf_counter() - t0
        result = measure(run, args.work / "data", args.target, args.driver, args.split, args.moving, str(where_to))
    for line in summary_lines(result):
        print(line)
    name = record_name(ap, args, "transfer_truth", ("identities", "frames", "size", "seed", "steps", "config", "target",
                                                      "driver", "split", "moving"), device=where_to)
    path = write_result(name, dict(
        machine=where, settings=dict(identities=args.identities, frames=args.frames, size=args.size, seed=args.seed,
                                     steps=trained.step, config=args.config, device=str(where_to),
                                     train_seconds=seconds), result=result), args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
