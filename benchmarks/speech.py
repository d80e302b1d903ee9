"""Speech to expressions (lip sync): how well the sound alone predicts held-out frames' expressions.

    python benchmarks/speech.py [--work /tmp/fastminerf_speech] [--seeds 0 1 2] [--no-real] [--leave-one-out]

1. Procedural heads (``fastminerf.data.synth``: 4 identities x 200 frames, the last quarter of each held out as
   ``val``), one dataset per seed: their ``audio.wav`` is a voice that follows each head's mouth (loudness and
   first formant with the jaw, second formant with smile and pucker), so the jaw can be heard exactly.
2. The real clips of ``../shared/data/real`` (or ``$FASTMINERF_REAL_DATA``), prepared into ``WORK/real`` as
   ``benchmarks/real_clips.py`` prepares them (256 px, first 250 frames, 10 % ``val`` and 10 % ``test``): the
   network learns from every clip's ``train`` frames and is scored on its ``val`` and ``test`` frames (the
   speaker's own voice later in the clip); with ``--leave-one-out``, also nine networks that each never hear
   one speaker, scored on all of that speaker's frames (a voice the network has never heard).

Scores (``fastminerf.speech.speech_metrics``): R^2 of the expression coefficients and of the mouth's opening
against always predicting the training mean (0 = the mean, 1 = exact), and the correlation between predicted
and tracked mouth opening; for the calibrated network (the default: 3 out-of-fold networks measure how far each
coefficient can be heard) and for one network without the calibration, on the same frames.

Writes ``benchmarks/results/speech.json``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, replace
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402

REAL = Path(os.environ.get("FASTMINERF_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))


def _score(clips, fit, held, cfg, space, basis) -> dict:
    """The calibrated network and one without calibration, learned from ``fit`` splits, scored on ``held``."""
    from fastminerf.speech import speech_metrics, train_speech

    out = {}
    for name, c in (("calibrated", cfg), ("uncalibrated", replace(cfg, calibrate=0))):
        t0 = time.perf_counter()
        model = train_speech(clips, c, fit, space)
        m = speech_metrics(model, [x for x in clips if any(len(x.times.get(s, ())) for s in held)], held, basis=basis)
        out[name] = {"seconds": round(time.perf_counter() - t0, 1), "all": m["all"], "identities": m["identities"],
                     "gain": [round(float(g), 3) for g in model.net.gain]}
    return out


def _line(tag: str, res: dict) -> str:
    a, b = res["calibrated"]["all"], res["uncalibrated"]["all"]
    return (f"{tag}: {a['frames']} frames, mouth R2 {a['mouth_r2']:.3f} (uncalibrated {b['mouth_r2']:.3f}), mouth corr "
            f"{a['mouth_corr']:.3f} ({b['mouth_corr']:.3f}), expression R2 {a['r2']:.3f} ({b['r2']:.3f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastminerf_speech"), help="generated and prepared data")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="procedural datasets")
    ap.add_argument("--no-real", action="store_true", help="skip the real clips")
    ap.add_argument("--leave-one-out", action="store_true", help="also score each real speaker with a network that never heard them")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="SpeechConfig field")
    args = ap.parse_args()

    from fastminerf.config import PrepareConfig
    from fastminerf.data import load_dataset
    from fastminerf.data.synth import generate
    from fastminerf.prepare import prepare
    from fastminerf.prepare.expression import ExpressionBasis
    from fastminerf.speech import speech_clips, speech_config, speech_metrics, train_speech

    cfg = speech_config(args.overrides)
    result = {"machine": machine(), "config": asdict(cfg), "synth": {}, "real": None}
    print(f"speech config: {cfg}")

    for seed in args.seeds:
        root = args.work / f"synth{seed}"
        if not (root / "synth.json").is_file():
            generate(root, n_identities=4, n_frames=200, size=16, novel_frames=2, val_fraction=0.25, seed=seed, overwrite=True)
        data = load_dataset([root], splits=("train", "val"))
        clips, _ = speech_clips(data, ("train", "val"))
        res = _score(clips, ("train",), ("val",), cfg, data.expression_space, None)
        result["synth"][str(seed)] = res
        print(_line(f"procedural heads, seed {seed}", res))
    if result["synth"]:
        cal = [r["calibrated"]["all"] for r in result["synth"].values()]
        raw = [r["uncalibrated"]["all"] for r in result["synth"].values()]
        result["synth_mean"] = {k: {key: float(np.mean([m[key] for m in ms])) for key in ("mouth_r2", "mouth_corr", "r2")}
                                for k, ms in (("calibrated", cal), ("uncalibrated", raw))}

    videos = sorted(p for p in REAL.iterdir() if p.suffix.lower() in (".mp4", ".mov", ".webm")) if REAL.is_dir() else []
    if videos and not args.no_real:
        prep = prepare(videos, args.work / "real", PrepareConfig(size=256, max_frames=250))
        if prep.failed:
            print("prepare failed: " + ", ".join(f"{v.name}: {v.error}" for v in prep.failed))
            return 1
        data = load_dataset([args.work / "real"], splits=("train", "val", "test"))
        basis = ExpressionBasis.load(args.work / "real")
        clips, skipped = speech_clips(data, ("train", "val", "test"))
        seconds = sum(len(c.mel) for c in clips) / 100.0
        real = {"clips": [c.name for c in clips], "speech_seconds": round(seconds, 1),
                "train_frames": int(sum(len(c.times["train"]) for c in clips)),
                "own_voice": _score(clips, ("train",), ("val", "test"), cfg, data.expression_space, basis)}
        print(_line(f"real clips ({len(clips)} speakers, {seconds:.0f} s of speech), held-out frames", real["own_voice"]))
        if args.leave_one_out:
            loo = {}
            for k, c in enumerate(clips):
                # every frame of one speaker, scored by networks that learned from every frame of the other eight
                per = {}
                for name, cc in (("calibrated", cfg), ("uncalibrated", replace(cfg, calibrate=0))):
                    model = train_speech(clips[:k] + clips[k + 1:], cc, ("train", "val", "test"), data.expression_space)
                    per[name] = speech_metrics(model, [c], ("train", "val", "test"), basis=basis)["all"]
                loo[c.name] = per
                print(f"  {c.name} unheard: mouth R2 {per['calibrated']['mouth_r2']:.3f} ({per['uncalibrated']['mouth_r2']:.3f}), "
                      f"corr {per['calibrated']['mouth_corr']:.3f} ({per['uncalibrated']['mouth_corr']:.3f})")
            real["leave_one_out"] = loo
            real["leave_one_out_mean"] = {n: {key: float(np.mean([v[n][key] for v in loo.values()]))
                                              for key in ("mouth_r2", "mouth_corr", "r2")} for n in ("calibrated", "uncalibrated")}
            print("leave one speaker out, mean over speakers: " + ", ".join(
                f"{n} mouth R2 {m['mouth_r2']:.3f} corr {m['mouth_corr']:.3f} R2 {m['r2']:.3f}" for n, m in real["leave_one_out_mean"].items()))
        result["real"] = real
    path = write_result("speech", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
