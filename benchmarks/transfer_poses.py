"""Where a driven head lands: the head poses of cross-identity transfer on the real clips, per pose mode.

    python benchmarks/transfer_poses.py [--data WORK/data] [--work /tmp/fastminerf_poses] [--run RUN]

Every ordered pair of the prepared real clips (``--data``, a root written by ``fastminerf prepare``, e.g. the
``WORK/data`` of ``benchmarks/real_clips.py``; prepared into ``--work`` from ``../shared/data/real`` when not given):
the target driven by the driver's ``test`` frames with ``fastminerf.render.drive_path`` in each head-pose mode
(``driver``: the driver's cameras as they are; ``relative``: the driver's head motion about its mean applied to the
target's mean training pose, in the target's framing). For each path, against the target's own training frames:

- ``offset_px``: how far the head's centre lands in the picture from where the target's training frames put it
  (the projection of the head-space origin, against the mean of its projections in the training frames), pixels;
- ``scale``: the head's size in the picture against its mean size in training (camera distance ratio), as
  ``|log2|`` (0: the same size, 1: twice or half as large);
- ``pose_gap_deg``: the angle from the path's head rotation to the nearest training one (a view the target's
  field has to extrapolate).

The target's torso layer and background are images in its own framing: a head placed elsewhere or at another size
floats beside its shoulders. Writes ``transfer_poses.json`` into ``--out`` (default ``benchmarks/results``). With
``--run`` (a model trained on these clips) it also renders ``--target`` driven by ``--driver`` in both modes beside
the driver's frames into ``--work``/transfer_poses.png, which stays outside the repository (it shows the real
people).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import add_device, add_out, device, machine, record_name, write_result  # noqa: E402
from benchmarks.real_clips import prepared_root  # noqa: E402
from fastminerf.metrics import rotation_gap_deg  # noqa: E402

MODES = ("driver", "relative")


def head_centre_px(c2w: np.ndarray, intrinsics: np.ndarray) -> tuple:
    """Pixel position (B, 2) of the head-space origin and its depth (B,) for cameras (B, 4, 4) (camera-to-head,
    OpenGL) with intrinsics (B, 4) ``[fx, fy, cx, cy]``: the renderer's projection, ``camera_project``."""
    import torch

    from fastminerf.data.rays import camera_project

    uv, depth = camera_project(torch.zeros(1, 3, dtype=torch.float64), torch.as_tensor(c2w, dtype=torch.float64),
                               torch.as_tensor(intrinsics, dtype=torch.float64))
    return uv[:, 0].numpy(), depth[:, 0].numpy()


def placement(path, own_c2w: np.ndarray, own_intrinsics: np.ndarray) -> dict:
    """The three measures of the module docstring for one path against the target's training cameras."""
    uv, depth = head_centre_px(path.c2w, path.intrinsics)
    own_uv, own_depth = head_centre_px(own_c2w, own_intrinsics)
    return {"offset_px": float(np.linalg.norm(uv - own_uv.mean(axis=0), axis=1).mean()),
            "scale": float(np.abs(np.log2(own_depth.mean() / depth)).mean()),
            "pose_gap_deg": float(rotation_gap_deg(path.c2w[:, :3, :3].astype(np.float64),
                                                   own_c2w[:, :3, :3].astype(np.float64)).mean())}


def _strip(run: Path, data, target: str, driver: str, n: int, on) -> np.ndarray:
    """Driver frames above the target rendered in each mode, ``n`` columns."""
    from fastminerf.render import drive_path, render_sequence, to_uint8
    from fastminerf.train import load_run

    _, model, _ = load_run(run, device=on)
    test = data.table("test")
    drv = test.frames_of(data.identities.index(driver))
    cols = np.linspace(0, drv.size - 1, n).round().astype(int)
    rows = [np.concatenate([data.image("test", int(drv[c]))[..., :3] for c in cols], axis=1)]
    tid = data.identities.index(target)
    for mode in MODES:
        sub = drive_path(data, target, data, "test", driver, pose=mode).take(cols)
        frames = [to_uint8(img) for img in render_sequence(model, sub, target, background=data.background(tid),
                                                            aabb=model.aabb.tolist())]
        rows.append(np.concatenate(frames, axis=1))
    return np.concatenate(rows, axis=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="a prepared root of the real clips (default: prepare them)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastminerf_poses"))
    ap.add_argument("--size", type=int, default=256, help="frame size when preparing (default 256, as real_clips.py)")
    ap.add_argument("--run", type=Path, default=None, help="a model trained on these clips: render a comparison strip")
    ap.add_argument("--target", default="02_hdtf_WDA_AlexandriaOcasioCortez_000", help="the strip's target")
    ap.add_argument("--driver", default="04_hdtf_WDA_BobMenendez_000", help="the strip's driver")
    add_device(ap)
    add_out(ap)
    args = ap.parse_args(argv)
    on = device(args)  # refused before any work

    from fastminerf.data import load_dataset
    from fastminerf.data.layout import find_identity_dirs
    from fastminerf.render import drive_path

    root = prepared_root(args.data, args.work, args.size)
    if root is None:
        return 1
    dirs = find_identity_dirs([root])
    data = load_dataset(dirs, splits=("train", "test"))
    names = list(data.identities)
    train = data.table("train")
    t0 = time.perf_counter()
    pairs = []
    for target in names:
        own = train.frames_of(names.index(target))
        for driver in names:
            if driver == target:
                continue
            rec = {"target": target, "driver": driver}
            for mode in MODES:
                path = drive_path(data, target, data, "test", driver, pose=mode)
                rec[mode] = placement(path, train.c2w[own], train.intrinsics[own])
            pairs.append(rec)
    summary = {mode: {k: float(np.mean([p[mode][k] for p in pairs])) for k in ("offset_px", "scale", "pose_gap_deg")}
               for mode in MODES}
    summary.update({f"{mode}_max": {k: float(np.max([p[mode][k] for p in pairs])) for k in ("offset_px", "scale", "pose_gap_deg")}
                    for mode in MODES})
    own_test = {}
    for i, name in enumerate(names):  # the clips' own held-out frames, for scale: how far they are from training
        tr = train.frames_of(i)
        own_test[name] = placement(drive_path(data, name, data, "test", name, pose="driver"), train.c2w[tr],
                                   train.intrinsics[tr])
    summary["own_test"] = {k: float(np.mean([v[k] for v in own_test.values()])) for k in ("offset_px", "scale", "pose_gap_deg")}
    print(f"{len(pairs)} ordered pairs of {len(names)} clips, drivers' test frames ({time.perf_counter() - t0:.1f} s)")
    print(f"{'':>22} {'offset px':>10} {'|log2 scale|':>13} {'pose gap deg':>13}")
    for key in (*MODES, *(f"{m}_max" for m in MODES), "own_test"):
        s = summary[key]
        print(f"{key:>22} {s['offset_px']:>10.1f} {s['scale']:>13.3f} {s['pose_gap_deg']:>13.1f}")
    strip = None
    if args.run is not None:
        import imageio.v3 as iio

        args.work.mkdir(parents=True, exist_ok=True)
        strip = args.work / "transfer_poses.png"
        iio.imwrite(strip, _strip(args.run, data, args.target, args.driver, 6, on))
        print(f"strip (driver | {' | '.join(MODES)}, top to bottom): {strip}")
    payload = {"machine": machine(),
               "settings": {"data": str(root), "device": str(on) if args.run else None, "clips": names, "frames": "each driver's test split",
                            "modes": list(MODES), "transfer": "delta"},
               "summary": summary, "pairs": pairs, "own_test": own_test,
               "strip": None if strip is None else str(strip)}
    name = record_name(ap, args, "transfer_poses", ("size",), device=on if args.run else None)
    print(f"wrote {write_result(name, payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
