"""Multiplicative vs concat conditioning at an equal number of steps (not equal wall time), so that a machine
shared with other jobs does not give one of them more steps.

    python benchmarks/conditioning_equal_steps.py --data SYNTH_ROOT [--steps 700]

Trains the ``cpu`` preset with ``train.steps=STEPS`` (full learning-rate decay, no time limit) on the first 4
identities of SYNTH_ROOT for each conditioning and evaluates mean PSNR on ``novel`` and ``val`` (4 frames per
identity, each identity's mean frame code). Writes ``benchmarks/results/conditioning_equal_steps.json``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, write_result  # noqa: E402
from benchmarks.train_targets import evaluate  # noqa: E402
from fastminerf import load_config, load_run, train  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="fm_cond_"))
    ids = sorted(p for p in args.data.iterdir() if p.is_dir())[:4]
    out = dict(machine=machine(), steps=args.steps, identities=[p.name for p in ids])
    for cond in ("multiplicative", "concat"):
        cfg = load_config("cpu", [f"model.field.conditioning={cond}", f"train.steps={args.steps}", "train.max_seconds=none"])
        r = train(cfg, ids, work / cond)
        _, model, _ = load_run(work / cond)
        out[cond] = dict(steps=r.step, seconds=r.seconds, novel=evaluate(model, ids, "novel", 4),
                         val=evaluate(model, ids, "val", 4))
        print(cond, r.step, f"{r.seconds:.1f} s", f"novel {out[cond]['novel']['mean_psnr']:.2f} dB",
              f"val {out[cond]['val']['mean_psnr']:.2f} dB", flush=True)
    write_result("conditioning_equal_steps", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
