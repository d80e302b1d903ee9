"""A new real person from their own clip: personalising a generic model of other real people against training alone.

    python benchmarks/real_personalize.py --data WORK/data [--new 02_hdtf_WDA_AlexandriaOcasioCortez_000]
        [--generic-minutes 6] [--budgets 30 120] [--work /tmp/fastminerf_personalize]

``--data`` is a root of prepared real clips (e.g. ``benchmarks/real_clips.py``'s ``WORK/data``; prepared into
``--work`` from ``../shared/data/real`` when not given). One generic model (``video`` preset) trains on every clip
but ``--new`` for ``--generic-minutes``; then, for each budget in ``--budgets`` (seconds of training), the new
person is (a) added to that model with :func:`fastminerf.train.personalize` from its ``train`` split, once for each
``train.personalize_tune`` in ``--tunes`` (``grid``: the hash tables only; ``all``: every shared weight), and (b)
trained alone from scratch with the same preset on the same frames. Both are scored on the new clip's ``test`` frames
(never trained on), PSNR / SSIM. Training step counts are set from the step rate of the generic run, so each
schedule fits its budget. The expression basis of a root prepared together holds the new clip's landmarks too (a
person prepared later joins the basis without changing it); the field, codes and torso layer of the generic model
never saw the new person.

Writes ``real_personalize.json`` (``--name``) into ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import add_out, add_overrides, machine, record_name, trained_on, write_result  # noqa: E402
from benchmarks.real_clips import prepared_root  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="a prepared root of the real clips (default: prepare them)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastminerf_personalize"))
    ap.add_argument("--new", default="02_hdtf_WDA_AlexandriaOcasioCortez_000", help="the clip held out as the new person")
    ap.add_argument("--generic-minutes", type=float, default=6.0)
    ap.add_argument("--budgets", type=float, nargs="+", default=[30.0, 120.0], help="seconds of training per comparison")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rate", type=float, default=19.0,
                    help="steps a second the generic schedule is laid out for (default 19: the nine-clip `video` run's "
                         "14,000 steps in 731 s on two threads); the new person's schedules use the rate measured")
    ap.add_argument("--config", default="video")
    ap.add_argument("--tunes", nargs="+", default=["grid", "all"], choices=["grid", "all"],
                    help="train.personalize_tune settings to compare (default both)")
    add_overrides(ap, "the preset in every run", "real_personalize")
    add_out(ap)
    args = ap.parse_args(argv)

    from fastminerf.config import load_config
    from fastminerf.data import load_dataset
    from fastminerf.data.layout import find_identity_dirs
    from fastminerf.render import evaluate
    from fastminerf.train import load_run, personalize, train

    # the runs' thread count (train.threads) for their evaluations too: train() gives its caller's count back
    torch.set_num_threads(args.threads)
    where = machine()  # at the start: the commit that runs
    root = prepared_root(args.data, args.work, 256)
    if root is None:
        return 1
    dirs = find_identity_dirs([root])
    new = [d for d in dirs if d.name == args.new]
    if not new:
        print(f"no clip '{args.new}' in {root}: {[d.name for d in dirs]}")
        return 1
    others = [d for d in dirs if d.name != args.new]
    base = [f"train.threads={args.threads}"] + list(args.overrides)

    test = load_dataset(new, splits=("test",))  # every model is scored on these frames

    def score(run: Path) -> dict:
        _, model, _ = load_run(run, device=load_config(args.config, base).train.device)  # scored where it trained
        m = evaluate(model.eval(), test, "test")
        rec = m["identities"][args.new]
        return {"psnr": rec["psnr"], "ssim": rec["ssim"], "frames": rec["frames"]}

    generic_s = args.generic_minutes * 60
    t0 = time.perf_counter()
    generic_run = args.work / "generic"
    # the schedule spans the steps the budget holds at --rate, so its learning rate decays to its end in time
    gen = train(load_config(args.config, base + [f"train.steps={int(args.rate * generic_s)}", f"train.max_seconds={generic_s}"]),
                others, generic_run)
    step_rate = gen.step / max(gen.seconds, 1e-9)
    gen_psnr = gen.psnr
    if gen_psnr != gen_psnr:  # resumed from a finished run: no step taken now, the last logged PSNR
        import json

        lines = (generic_run / "log.jsonl").read_text().splitlines()
        gen_psnr = float(json.loads(lines[-1])["psnr"]) if lines else float("nan")
    print(f"generic on {len(others)} clips: {gen.step} steps in {gen.seconds:.0f} s ({step_rate:.1f} steps/s), "
          f"train PSNR {gen_psnr:.2f} dB", flush=True)
    rows = []
    for budget in args.budgets:
        steps = max(10, int(step_rate * budget))
        row = {"budget_s": budget, "steps": steps}
        for tune in args.tunes:
            pers_run = args.work / f"personal_{tune}_{budget:g}s"
            pers = personalize(generic_run, new, pers_run, steps=steps, max_seconds=budget,
                               overrides=[f"train.personalize_tune={tune}"])
            row[f"personalized_{tune}"] = {**score(pers_run), "steps": pers.step, "seconds": pers.seconds}
        alone_run = args.work / f"alone_{budget:g}s"
        alone = train(load_config(args.config, base + [f"train.steps={steps}", f"train.max_seconds={budget}"]), new, alone_run)
        row["alone"] = {**score(alone_run), "steps": alone.step, "seconds": alone.seconds}
        rows.append(row)
        print(f"{budget:g} s: " + ", ".join(f"{k.replace('personalized_', 'personalised, tune ')} {v['psnr']:.2f} dB / "
                                           f"{v['ssim']:.3f} ({v['steps']} steps)"
                                           for k, v in row.items() if isinstance(v, dict)), flush=True)
    payload = {"machine": where,
               "settings": {"data": str(root), "new": args.new, "generic_clips": [d.name for d in others],
                            "config": args.config, "device": trained_on(load_config(args.config, base)),
                            "generic_minutes": args.generic_minutes, "budgets_s": args.budgets,
                            "threads": args.threads, "overrides": list(args.overrides), "tunes": args.tunes,
                            "eval_split": "test (all frames)"},
               "generic": {"steps": gen.step, "seconds": gen.seconds, "train_psnr": gen_psnr if gen_psnr == gen_psnr else None},
               "rows": rows, "seconds_total": time.perf_counter() - t0}
    name = record_name(ap, args, "real_personalize", ("generic_minutes", "budgets", "tunes"),
                       device=payload["settings"]["device"])
    print(f"wrote {write_result(name, payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
