"""``fastminerf prepare`` against ground truth: procedural heads of known pose and expression, made into videos.

    python benchmarks/prepare_truth.py [--identities 2] [--frames 80] [--size 192] [--prepare-size 128]
                                       [--expression-dim 8] [--quick] [--work DIR] [--out DIR]

Real videos have no ground truth; the procedural heads (:func:`fastminerf.data.synth.generate`) do: each frame's
camera (``transform_matrix``) and expression coefficients are known. Their train and val frames, in order, are
written as one 25 fps H.264 video per head (no sound) and prepared together (one shared basis, every frame in
``train``), once as prepare does by default and once with ``pose_smoothing=0``. Then, per head, frame by frame
(prepared frame ``i`` is source frame ``frame_index``):

- **rotation**: the prepared head frame differs from the true one by a constant rotation (and scale), so one rotation
  ``Q`` is fitted per head (chordal mean of ``R_prep R_true^T``) and each frame's angle between ``R_prep`` and
  ``Q R_true`` is its error (degrees); beside it the true motion (each frame's angle from the mean pose), the error
  of frame ``i`` relative to frame 0 (no fit at all: ``R_0^T R_i`` against the truth's), and each axis of motion
  (pitch, yaw, roll about the head's x, y, z) as the slope and r.m.s. error of the recovered deviation from the mean
  pose against the true one (a sign flip shows as a negative slope, a flattened axis as a slope below 1);
- **lag**: the rotation error against the truth shifted by -2..2 frames (a frame offset or a smoothing that shifts
  in time moves the minimum off 0), with smoothing and without, and the R2 of the fast expression coefficients
  (jaw, blink, smile) against the shifted truth;
- **translation**: the camera centres (head space) fitted to the true ones by one similarity; the residual in true
  head units beside the true centres' spread;
- **expression**: R2 of each true coefficient (the face's, ``expressiveness`` applied) explained by a linear map (with
  an offset) of the prepared coefficients: per head, jointly (one map, an offset per head: the shared space), and
  across (the map fitted on the first head, applied to the others, each centred);
- **reprojection**: prepare's own numbers (``prepare.json``) and the same measured again through the files as the
  trainer reads them (``read_transforms``, ``landmarks.npz`` through ``camera_project``, against ``track.npz``).

Writes ``prepare_truth.json`` (``--name``) into ``--out`` (default ``benchmarks/results``); a ``--quick`` run, or one
with other sizes, writes ``prepare_truth_quick.json`` there instead.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import add_out, check_out_dir, machine, record_name, write_result  # noqa: E402

SUBSET = ("identities", "frames", "size", "prepare_size", "expression_dim", "seed")
LAGS = (-2, -1, 0, 1, 2)
LAG_COEFFICIENTS = ("jaw_open", "blink_left", "smile")
"""True coefficients whose R2 is measured against the truth shifted by :data:`LAGS` frames (the fast ones)."""
QUICK = dict(identities=2, frames=24, size=128, prepare_size=64, expression_dim=4)


def _angle_deg(r: np.ndarray) -> np.ndarray:
    """Rotation angle (degrees) of each ``(..., 3, 3)`` rotation."""
    c = (np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def _rotvec(r: np.ndarray) -> np.ndarray:
    """Rotation vectors (radians) of ``(B, 3, 3)`` rotations (angles below 180 degrees)."""
    theta = np.radians(_angle_deg(r))
    axis = np.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], axis=1)
    s = np.sin(theta)
    return axis * np.where(s > 1e-12, theta / np.where(s > 1e-12, 2 * s, 1.0), 0.5)[:, None]


def _r2(x: np.ndarray, y: np.ndarray, coef: np.ndarray) -> float:
    return float(1.0 - ((x @ coef - y) ** 2).mean() / y.var())


def _stats(v: np.ndarray) -> dict:
    return {"median": float(np.median(v)), "p95": float(np.percentile(v, 95)), "max": float(np.max(v))}


def _frames(folder: Path, splits) -> tuple:
    """``c2w (B, 4, 4)``, ``expression (B, E)``, ``frame_index (B,)`` of the frames of ``splits`` in order."""
    from fastminerf.data.layout import read_transforms

    metas = [read_transforms(folder / f"transforms_{s}.json") for s in splits if (folder / f"transforms_{s}.json").is_file()]
    return (np.concatenate([np.asarray(m.c2w, np.float64) for m in metas]),
            np.concatenate([np.asarray(m.expression, np.float64) for m in metas]),
            np.concatenate([np.asarray(m.frame_index, np.int64) for m in metas]))


def _rotation(rp: np.ndarray, rt: np.ndarray) -> dict:
    """Rotation errors of prepared camera rotations ``rp`` against the true ``rt`` (both ``(B, 3, 3)``, camera to
    head, in frame order)."""
    from fastminerf.prepare.pose import nearest_rotation

    q = nearest_rotation(np.einsum("bij,bkj->ik", rp, rt))
    aligned = q @ rt
    err = _angle_deg(np.einsum("bji,bjk->bik", rp, aligned))
    rel = _angle_deg(np.einsum("bji,bjk->bik", np.einsum("ji,bjk->bik", rp[0], rp), np.einsum("ji,bjk->bik", rt[0], rt)))
    lag = {}
    for k in LAGS:
        i = np.arange(max(0, -k), len(rp) - max(0, k))
        lag[str(k)] = float(np.mean(_angle_deg(np.einsum("bji,bjk->bik", rp[i], aligned[i + k]))))
    # deviation of each frame's head rotation from the mean one, as a rotation vector in the head frame
    dev_t = _rotvec(np.einsum("bij,kj->bik", aligned, nearest_rotation(aligned.mean(0))))
    dev_p = _rotvec(np.einsum("bij,kj->bik", rp, nearest_rotation(rp.mean(0))))
    axes = {}
    for a, name in enumerate(("pitch", "yaw", "roll")):
        t, p = dev_t[:, a], dev_p[:, a]
        axes[name] = {"true_std_deg": float(np.degrees(t.std())), "slope": float((t - t.mean()) @ (p - p.mean()) / max(((t - t.mean()) ** 2).sum(), 1e-18)),
                      "rms_err_deg": float(np.degrees(np.sqrt(((p - t) ** 2).mean())))}
    motion = _angle_deg(np.einsum("bji,bjk->bik", aligned, np.broadcast_to(nearest_rotation(aligned.mean(0)), aligned.shape)))
    return {"aligned_err_deg": _stats(err), "relative_to_frame0_err_deg": _stats(rel), "true_motion_deg": _stats(motion),
            "head_frame_offset_deg": float(_angle_deg(q)), "axes": axes, "lag_mean_err_deg": lag,
            "best_lag": int(min(LAGS, key=lambda k: lag[str(k)]))}


def _reprojection(folder: Path) -> dict:
    """The tracked landmarks against ``landmarks.npz`` projected through the written cameras, as the trainer reads
    them (pixels of the written frames)."""
    import torch

    from fastminerf.data.layout import read_transforms
    from fastminerf.data.rays import camera_project

    meta = read_transforms(folder / "transforms_train.json")
    x0, y0, side = json.loads((folder / "prepare.json").read_text())["crop"]
    lm = np.load(folder / ".prepare" / "track.npz")["landmarks"].astype(np.float64)
    with np.load(folder / "landmarks.npz") as z:
        fid, points = z["frame_index"], z["points"].astype(np.float64)
    tracked = (lm[fid, :, :2] - np.array([x0, y0])) * (meta.width / side)
    c2w = {int(i): np.asarray(c, np.float64) for i, c in zip(np.asarray(meta.frame_index), np.asarray(meta.c2w))}
    uv, _ = camera_project(torch.as_tensor(points), torch.as_tensor(np.stack([c2w[int(i)] for i in fid])),
                           torch.as_tensor(np.asarray(meta.intrinsics, np.float64)))
    err = np.linalg.norm(uv.numpy() - tracked, axis=-1)
    return {"median_px": float(np.median(err)), "p95_px": float(np.percentile(err, 95)),
            "mean_signed_px": [float(v) for v in (uv.numpy() - tracked).reshape(-1, 2).mean(0)]}


def measure(synth_dirs, prepared: Path, unsmoothed: Path) -> dict:
    """The comparison of the prepared folders (``prepared``: prepare's defaults; ``unsmoothed``: pose_smoothing 0)
    with the procedural heads ``synth_dirs`` they were made from."""
    from fastminerf.data.heads import EXPRESSION_NAMES
    from fastminerf.prepare.pose import similarity_align

    out, prep_e, true_e = {}, [], []
    for d in synth_dirs:
        t_c2w, t_expr, t_idx = _frames(d, ("train", "val"))
        order = np.argsort(t_idx)
        t_c2w, t_expr = t_c2w[order], t_expr[order] * json.loads((d / "synth_identity.json").read_text())["expressiveness"]
        p_c2w, p_expr, fid = _frames(prepared / d.name, ("train", "val", "test"))
        u_c2w, _, ufid = _frames(unsmoothed / d.name, ("train", "val", "test"))
        rt, tt = t_c2w[fid, :3, :3], t_c2w[fid, :3, 3]
        s, rot, tr = (v[0] for v in similarity_align(tt, p_c2w[:, :3, 3], np.ones(len(tt))))  # Umeyama, unweighted
        terr = np.linalg.norm(s * tt @ rot.T + tr - p_c2w[:, :3, 3], axis=1) / s
        x = np.c_[p_expr, np.ones(len(p_expr))]
        r2 = {}
        for j, name in enumerate(EXPRESSION_NAMES):
            y = t_expr[fid, j]
            if y.std() > 1e-6:
                r2[name] = _r2(x, y, np.linalg.lstsq(x, y, rcond=None)[0])
        lag_r2 = {}
        for name in LAG_COEFFICIENTS:
            j, lag_r2[name] = EXPRESSION_NAMES.index(name), {}
            for k in LAGS:  # prepared frame i against the truth of source frame frame_index + k
                i = np.arange(len(fid))[(fid + k >= 0) & (fid + k < len(t_expr))]
                xk, yk = x[i], t_expr[fid[i] + k, j]
                lag_r2[name][str(k)] = _r2(xk, yk, np.linalg.lstsq(xk, yk, rcond=None)[0]) if yk.std() > 1e-6 else None
        smooth = _rotation(p_c2w[:, :3, :3], rt)
        raw = _rotation(u_c2w[:, :3, :3], t_c2w[ufid, :3, :3])
        out[d.name] = {
            "frames": int(len(fid)), "frames_in_video": int(len(t_idx)),
            "rotation": smooth,
            "rotation_unsmoothed": {k: raw[k] for k in ("aligned_err_deg", "axes", "lag_mean_err_deg", "best_lag")},
            "translation": {"err_head_units": _stats(terr),
                            "true_spread_head_units": float(np.median(np.linalg.norm(tt - tt.mean(0), axis=1))),
                            "scale_prepared_per_true": s},
            "expression_r2": r2,
            "expression_lag_r2": lag_r2,
            "reprojection": {"prepare_json": json.loads((prepared / d.name / "prepare.json").read_text())["reprojection_px"],
                             "through_the_files": _reprojection(prepared / d.name)},
        }
        prep_e.append(p_expr)
        true_e.append(t_expr[fid])
    joint, cross = {}, {}
    n = len(prep_e)
    x = np.concatenate([np.c_[p, np.eye(n)[np.full(len(p), k)]] for k, p in enumerate(prep_e)])
    for j, name in enumerate(EXPRESSION_NAMES):
        ys = [t[:, j] for t in true_e]
        if min(y.std() for y in ys) <= 1e-6:
            continue
        y = np.concatenate(ys)
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        pred, start = x @ coef, 0
        joint[name] = []
        for yk in ys:
            joint[name].append(float(1.0 - ((pred[start:start + len(yk)] - yk) ** 2).mean() / yk.var()))
            start += len(yk)
        if n > 1:
            x0 = prep_e[0] - prep_e[0].mean(0)
            c0 = np.linalg.lstsq(x0, ys[0] - ys[0].mean(), rcond=None)[0]
            cross[name] = [_r2(p - p.mean(0), yk - yk.mean(), c0) for p, yk in zip(prep_e[1:], ys[1:])]
    return {"identities": out, "expression_r2_joint": joint, "expression_r2_across": cross}


def _write_video(path: Path, frames, fps: float) -> None:
    import imageio_ffmpeg

    w = imageio_ffmpeg.write_frames(str(path), (frames[0].shape[1], frames[0].shape[0]), fps=fps, macro_block_size=16,
                                    ffmpeg_log_level="error", quality=9)
    w.send(None)
    for f in frames:
        w.send(np.ascontiguousarray(f).tobytes())
    w.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--identities", type=int, default=2, help="procedural heads (videos prepared together)")
    ap.add_argument("--frames", type=int, default=80, help="frames per head's video (25 fps)")
    ap.add_argument("--size", type=int, default=192, help="the heads' video size in pixels")
    ap.add_argument("--prepare-size", type=int, default=128, help="prepare --size")
    ap.add_argument("--expression-dim", type=int, default=8, help="prepare --expression-dim")
    ap.add_argument("--seed", type=int, default=0, help="the heads' seed")
    ap.add_argument("--quick", action="store_true", help=f"a smoke run ({QUICK}); writes prepare_truth_quick.json")
    ap.add_argument("--work", type=Path, default=None, help="folder for the heads, videos and prepared data (default a "
                                                            "temporary one, removed)")
    ap.add_argument("--name", default=None, help="result file name (default prepare_truth)")
    add_out(ap)
    args = ap.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    check_out_dir(args.out)

    import cv2
    import imageio.v3 as iio
    import imageio_ffmpeg
    import mediapipe

    from fastminerf.config import PrepareConfig
    from fastminerf.data.synth import generate
    from fastminerf.prepare import prepare

    work = Path(tempfile.mkdtemp(prefix="fmn_prepare_truth_")) if args.work is None else args.work
    try:
        fps = 25.0
        dirs = generate(work / "synth", n_identities=args.identities, n_frames=args.frames, size=args.size,
                        seed=args.seed, novel_frames=1, fps=fps, overwrite=True)
        videos = []
        for d in dirs:
            frames = [iio.imread(p)[..., :3] for split in ("train", "val")
                      for p in sorted((d / split).glob("[0-9][0-9][0-9][0-9].png"))]
            videos.append(work / f"{d.name}.mp4")
            _write_video(videos[-1], frames, fps)
        cfg = dict(size=args.prepare_size, expression_dim=args.expression_dim, min_frames=5, val_fraction=0.0,
                   test_fraction=0.0)
        start = time.perf_counter()
        for root, extra in (("prepared", {}), ("unsmoothed", {"pose_smoothing": 0.0})):
            shutil.rmtree(work / root, ignore_errors=True)
            res = prepare(videos, work / root, PrepareConfig(**cfg, **extra))
            assert not res.failed, [v.error for v in res.failed]
        seconds = time.perf_counter() - start
        result = measure(dirs, work / "prepared", work / "unsmoothed")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    m = machine()
    m.update({"mediapipe": mediapipe.__version__, "opencv": cv2.__version__, "imageio_ffmpeg": imageio_ffmpeg.__version__})
    payload = {"machine": m, "quick": bool(args.quick),
               "sizes": {"identities": args.identities, "frames": args.frames, "video_px": args.size,
                         "prepare_px": args.prepare_size, "expression_dim": args.expression_dim, "seed": args.seed},
               "prepare_seconds_both": seconds, **result,
               "method": "procedural heads of known pose and expression, written as 25 fps H.264 and prepared "
                         "(defaults, and pose_smoothing 0); per head one constant rotation aligns the head frames; "
                         "expressions by least squares; see the script's docstring"}
    name = record_name(ap, args, "prepare_truth", SUBSET, smoke=args.quick)
    path = write_result(name, payload, args.out)
    for ident, r in result["identities"].items():
        rot, un = r["rotation"], r["rotation_unsmoothed"]
        print(f"{ident}: rotation error {rot['aligned_err_deg']['median']:.2f} deg median, "
              f"{rot['aligned_err_deg']['p95']:.2f} p95 (unsmoothed {un['aligned_err_deg']['median']:.2f}; true motion "
              f"{rot['true_motion_deg']['median']:.1f} median, {rot['true_motion_deg']['max']:.1f} max), best lag "
              f"{rot['best_lag']} (unsmoothed {un['best_lag']}); camera centre "
              f"{r['translation']['err_head_units']['median']:.3f} head units (spread "
              f"{r['translation']['true_spread_head_units']:.2f}); R2 jaw_open {r['expression_r2'].get('jaw_open', float('nan')):.2f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
