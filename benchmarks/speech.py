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
3. With ``--render-run RUN`` (a model trained on the prepared real clips and its ``RUN/speech.pt``): ``--target``
   rendered saying ``--speaker``'s held-out speech, the video tracked again by ``prepare`` in the run's
   expression space, and the mouth's opening of the render correlated with the commanded one and with the one
   the speaker made at the same time (a pixel-level lip-sync check).
4. With ``--eval-run RUN`` (the same kind of run): every ``test`` frame of every clip rendered three ways and
   compared with the real frame (``fastminerf.render.evaluate``: PSNR, PSNR in the face box, LMD = the distance in
   pixels between the lip landmarks mediapipe finds in the render and in the frame): with its tracked expression
   (the model's reconstruction), with the expression ``RUN/speech.pt`` hears in the clip's sound at that time
   (``fastminerf eval --speech``), and with the clip's mean training expression (a face that does not move its
   lips: the floor lip sync has to beat).

Scores (``fastminerf.speech.speech_metrics``): R^2 of the expression coefficients and of the mouth's opening
against always predicting the training mean (0 = the mean, 1 = exact), and the correlation between predicted
and tracked mouth opening; for the calibrated network (the default: 3 out-of-fold networks measure how far each
coefficient can be heard) and for one network without the calibration, on the same frames.

Writes into ``--out`` (default ``benchmarks/results``): ``speech.json`` (steps 1 and 2), ``speech_end_to_end.json``
(step 3) and ``speech_eval.json`` (step 4).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, replace
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import REAL, add_device, add_out, add_overrides, device, machine, no_real_clips, record_name, write_result  # noqa: E402


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


def _say_skipped(skipped) -> None:
    """Print speech_clips' account of the identities left out of the scores (no audio.wav) or cut short."""
    for line in skipped:
        print(f"  left out or cut: {line}")


def _line(tag: str, res: dict) -> str:
    a, b = res["calibrated"]["all"], res["uncalibrated"]["all"]
    return (f"{tag}: {a['frames']} frames, mouth R2 {a['mouth_r2']:.3f} (uncalibrated {b['mouth_r2']:.3f}), mouth corr "
            f"{a['mouth_corr']:.3f} ({b['mouth_corr']:.3f}), expression R2 {a['r2']:.3f} ({b['r2']:.3f})")


def _end_to_end(run: Path, target: str, speaker: str, work: Path, n_frames: int, on) -> dict:
    """Render ``target`` saying ``speaker``'s held-out speech (from the speaker's first ``val`` frame on, which the
    speech model never heard), track the rendered video with ``prepare`` in the run's expression space, and
    correlate the mouth's opening of the render with the one commanded by the speech model and with the one the
    speaker made (tracked in the held-out frames, matched by time)."""
    import json
    import shutil

    from fastminerf.audio import frame_soundtrack, read_wav, write_wav
    from fastminerf.config import PrepareConfig
    from fastminerf.data import load_dataset
    from fastminerf.data.layout import find_identity_dirs
    from fastminerf.prepare import prepare
    from fastminerf.prepare.expression import ExpressionBasis
    from fastminerf.render import load_target, render_video, speech_path, training_basis
    from fastminerf.speech import _corr, load_speech_model, mouth_opening
    from fastminerf.train import load_run

    _, model, meta = load_run(run, device=on)
    speech = load_speech_model(Path(run) / "speech.pt")
    basis_file = training_basis(meta["data_paths"])
    basis = ExpressionBasis.load(basis_file.parent)
    spk_dir = [d for d in find_identity_dirs(meta["data_paths"]) if d.name == speaker][0]
    spk = load_dataset([spk_dir], splits=("val", "test"))
    times = np.concatenate([spk.table(s).time for s in ("val", "test")])
    truth_mouth = mouth_opening(np.concatenate([spk.table(s).expression for s in ("val", "test")]), None, basis)
    start = float(times.min())
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rec = read_wav(spk_dir / "audio.wav")
    clip = frame_soundtrack(rec, start + np.arange(int(np.ceil((rec.seconds - start) * 25))) / 25.0, 25.0)
    wav = write_wav(work / "held_out_speech.wav", clip)
    tgt = load_target(meta["data_paths"], target)
    path = speech_path(tgt, target, speech, wav).head(n_frames)
    t0 = time.perf_counter()
    video = render_video(model, path, target, work / "said.mp4", background=tgt.background(0), aabb=model.aabb.tolist()).path
    render_s = time.perf_counter() - t0
    prep = prepare([video], work / "tracked", PrepareConfig(size=256, val_fraction=0.0, test_fraction=0.0, basis=str(basis_file)))
    if prep.failed:
        raise RuntimeError(f"tracking the render failed: {prep.failed[0].error}")
    frames = json.loads((work / "tracked" / "said" / "transforms_train.json").read_text())["frames"]
    t_r = np.array([f["time"] for f in frames])
    rendered = mouth_opening(np.array([f["expression"] for f in frames]), None, basis)
    k = np.clip(np.rint(t_r * 25).astype(int), 0, len(path) - 1)
    commanded = mouth_opening(path.expression[k], None, basis)
    truth = np.interp(start + t_r, times, truth_mouth)
    out = {"run": str(run), "device": str(on), "target": target, "speaker": speaker, "start_seconds": round(start, 3),
           "frames_rendered": len(path), "frames_tracked": len(frames), "render_seconds": round(render_s, 1),
           "corr_rendered_commanded": _corr(rendered, commanded), "corr_rendered_speaker": _corr(rendered, truth),
           "corr_commanded_speaker": _corr(commanded, truth),
           "std_mouth": {"rendered": float(rendered.std()), "commanded": float(commanded.std()), "speaker": float(truth.std())}}
    print(f"end to end: {target} saying {speaker}'s held-out speech ({len(frames)} of {len(path)} frames tracked): mouth "
          f"opening of the render vs commanded {out['corr_rendered_commanded']:.3f}, vs the speaker's "
          f"{out['corr_rendered_speaker']:.3f}; commanded vs the speaker's {out['corr_commanded_speaker']:.3f}")
    return out


def _eval_three_ways(run: Path, split: str, max_frames, on) -> dict:
    """Render every ``split`` frame of the run's data with tracked, speech-predicted and still (mean training)
    expressions; the metrics of each (step 4)."""
    from fastminerf.data import load_dataset
    from fastminerf.render import evaluate
    from fastminerf.speech import load_speech_model, split_expressions
    from fastminerf.train import load_run

    _, model, meta = load_run(run, device=on)
    data = load_dataset([Path(p) for p in meta["data_paths"]], splits=("train", split))
    speech_file = run / "speech.pt"
    table, train = data.table(split), data.table("train")
    still = np.array(table.expression, dtype=np.float32, copy=True)
    for i in range(len(data.identities)):
        still[table.frames_of(i)] = train.expression[train.frames_of(i)].mean(axis=0)
    ways = {"tracked": None, "speech": split_expressions(load_speech_model(speech_file), data, split), "still": still}
    out = {"run": str(run), "device": str(on), "split": split, "speech_model": str(speech_file)}
    for name, expressions in ways.items():
        t0 = time.perf_counter()
        res = evaluate(model, data, split, max_frames=max_frames, expressions=expressions, expressions_from=name,
                       with_lpips=False)
        out[name] = {"mean": res["mean"], "identities": res["identities"], "frames": res["frames"],
                     "seconds": round(time.perf_counter() - t0, 1)}
        m = res["mean"]
        print(f"{split} frames ({res['frames']}), {name} expressions: PSNR {m['psnr']:.2f} dB, mouth PSNR {m.get('mouth_psnr', float('nan')):.2f} dB, face PSNR "
              f"{m.get('face_psnr', float('nan')):.2f} dB, LMD {m.get('lmd', float('nan')):.2f} px")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastminerf_speech"), help="generated and prepared data")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="procedural datasets (none: skip them)")
    ap.add_argument("--no-real", action="store_true", help="skip the real clips")
    ap.add_argument("--leave-one-out", action="store_true", help="also score each real speaker with a network that never heard them")
    ap.add_argument("--render-run", type=Path, default=None,
                    help="a run trained on prepared real clips, with RUN/speech.pt (fastminerf speech --run RUN): render "
                         "--target saying --speaker's held-out speech, track the render, compare mouths")
    ap.add_argument("--target", default="02_hdtf_WDA_AlexandriaOcasioCortez_000")
    ap.add_argument("--speaker", default="04_hdtf_WDA_BobMenendez_000")
    ap.add_argument("--render-frames", type=int, default=40, help="frames rendered (25 a second)")
    ap.add_argument("--eval-run", type=Path, default=None,
                    help="a run trained on prepared real clips, with RUN/speech.pt: render every --eval-split frame with "
                         "tracked, speech-predicted and still expressions and compare each with the real frames")
    ap.add_argument("--eval-split", default="test")
    ap.add_argument("--eval-frames", type=int, default=None, help="frames per clip for --eval-run (default all)")
    ap.add_argument("--name", default=None, help="result file name (default speech; speech_quick for a run with other "
                                                "--seeds, --no-real or --set into benchmarks/results) for a variant's run")
    add_overrides(ap, "SpeechConfig")
    add_device(ap)
    add_out(ap)
    args = ap.parse_args(argv)
    on = device(args)  # refused before any work
    if not args.seeds and args.no_real and args.render_run is None and args.eval_run is None:
        ap.error("nothing to measure: --seeds is empty and --no-real skips the real clips (give seeds, the clips, "
                 "--render-run or --eval-run)")

    from fastminerf.config import PrepareConfig
    from fastminerf.data import load_dataset
    from fastminerf.data.synth import generate
    from fastminerf.prepare import prepare
    from fastminerf.prepare.expression import ExpressionBasis
    from fastminerf.config import SpeechConfig, flat_config
    from fastminerf.speech import speech_clips, speech_metrics, train_speech

    videos = [] if args.no_real or not REAL.is_dir() else sorted(
        p for p in REAL.iterdir() if p.suffix.lower() in (".mp4", ".mov", ".webm"))
    if not args.no_real and not videos:  # said before the procedural part, not a result without its real half
        print(no_real_clips(REAL) + ", or skip them with --no-real", file=sys.stderr)
        return 1
    cfg = flat_config(SpeechConfig, args.overrides)
    result = {"machine": machine(), "config": asdict(cfg), "synth": {}, "real": None}
    print(f"speech config: {cfg}")

    for seed in args.seeds:
        root = args.work / f"synth{seed}"
        if not (root / "synth.json").is_file():
            generate(root, n_identities=4, n_frames=200, size=16, novel_frames=2, val_fraction=0.25, seed=seed, overwrite=True)
        data = load_dataset([root], splits=("train", "val"))
        clips, skipped = speech_clips(data, ("train", "val"))
        _say_skipped(skipped)
        res = dict(_score(clips, ("train",), ("val",), cfg, data.expression_space, None), skipped=skipped)
        result["synth"][str(seed)] = res
        print(_line(f"procedural heads, seed {seed}", res))
    if result["synth"]:
        cal = [r["calibrated"]["all"] for r in result["synth"].values()]
        raw = [r["uncalibrated"]["all"] for r in result["synth"].values()]
        result["synth_mean"] = {k: {key: float(np.mean([m[key] for m in ms])) for key in ("mouth_r2", "mouth_corr", "r2")}
                                for k, ms in (("calibrated", cal), ("uncalibrated", raw))}

    if videos:
        prep = prepare(videos, args.work / "real", PrepareConfig(size=256, max_frames=250))
        if prep.failed:
            print("prepare failed: " + ", ".join(f"{v.name}: {v.error}" for v in prep.failed))
            return 1
        data = load_dataset([args.work / "real"], splits=("train", "val", "test"))
        basis = ExpressionBasis.load(args.work / "real")
        clips, skipped = speech_clips(data, ("train", "val", "test"))
        _say_skipped(skipped)
        seconds = sum(len(c.mel) for c in clips) / 100.0
        real = {"clips": [c.name for c in clips], "skipped": skipped, "speech_seconds": round(seconds, 1),
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
    if result["synth"] or result["real"]:
        name = record_name(ap, args, "speech", ("seeds", "no_real"))
        print(f"wrote {write_result(name, result, args.out)}")
    # --name names speech.json only, and --set (SpeechConfig) changes only its training, not the runs' renders
    others = argparse.Namespace(**{**vars(args), "name": None, "overrides": []})
    if args.render_run is not None:
        e2e = _end_to_end(args.render_run, args.target, args.speaker, args.work / "end_to_end", args.render_frames, on)
        name = record_name(ap, others, "speech_end_to_end", ("render_frames",), device=on)
        print(f"wrote {write_result(name, {'machine': machine(), **e2e}, args.out)}")
    if args.eval_run is not None:
        ev = _eval_three_ways(args.eval_run, args.eval_split, args.eval_frames, on)
        name = record_name(ap, others, "speech_eval", ("eval_frames", "eval_split"), device=on)
        print(f"wrote {write_result(name, {'machine': machine(), **ev}, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
