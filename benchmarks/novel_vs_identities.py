"""Novel-expression PSNR against the number of identities at a fixed training schedule (MI-NeRF's Figure 4, right).

``identities.py`` stops every model at the same val PSNR (a time-to-target measurement), so its novel PSNR compares
models at the same fit. The paper trains every model fully instead; this script does the same within a CPU's reach:
for N in ``--counts``, generic models of N procedural identities, all trained for the same ``--steps`` (the preset's
schedule stretched to them, no time limit), then their PSNR on the val frames and on the ``novel`` split
(expressions that identity never showed, shown by the others).

The people differ in how hard their withheld expressions are (18.7 to 26.5 dB novel PSNR within one run's N = 8 models),
so a mean over "each model's people" mixes more people with more identities. The headline compares the same people
at every N instead: a **panel** of the first ``--panel`` identities (4), each evaluated in the one model of N that
holds it. For N >= 4 that is one model on ``id000 .. id(N-1)``; for N < 4 the panel is split into 4 / N models
(N = 1: four single-person models, N = 2: two models of two). The mean over each model's people and identity 0
alone are recorded too. One run per ``--seeds`` seed (procedural people and ``train.seed``); rows are per seed,
``mean`` rows average them.

    python benchmarks/novel_vs_identities.py [--steps 2000] [--counts 1 2 4 8] [--seeds 0 1 2 3] [--workers 2] [--work DIR]

Writes into ``--out`` (default ``benchmarks/results``): ``novel_vs_identities.json``; a run of other settings (other
seeds too) ``novel_vs_identities_quick.json`` there, so that the record stays.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    add_out,
    fresh_run,
    trained_on,
    record_name,
    eval_psnr,
    eval_rays,
    machine,
    mean,
    synth_identities,
    torch_threads,
    write_result,
)


def panel_groups(n: int, panel: int) -> list:
    """Which identities (indices) each model for N = ``n`` trains on, so that every one of the first ``panel``
    identities is in exactly one of them: one model on ``0 .. n-1`` when ``n >= panel``, else ``panel // n``
    models on consecutive groups of ``n`` (N = 1 with a panel of 4: four single-person models)."""
    if n >= panel:
        return [list(range(n))]
    if panel % n:
        raise ValueError(f"the panel of {panel} identities does not split into models of {n}")
    return [list(range(g, g + n)) for g in range(0, panel, n)]


def measure(seed: int, counts, steps: int, work: Path, config: str, size: int, frames: int, panel: int = 4,
            say=print) -> list:
    """The rows of one seed: per N, val and novel PSNR of generic models of N identities trained for ``steps``
    steps. The first ``panel`` identities are evaluated at every N (each in the one model of N that holds it), so
    their mean compares the same people across N; ``novel_psnr`` is the mean over every identity of the models."""
    from fastminerf import load_config, train

    ids = synth_identities(work / f"seed{seed}" / "data", max(max(counts), panel), frames, size, seed)
    val = eval_rays(ids, "val", 2, 1024, seed=seed)
    novel = eval_rays(ids, "novel", 10**6, 2048, seed=seed)
    cfg = load_config(config, [f"train.steps={steps}", "train.max_seconds=null", "train.threads=1",
                               f"train.seed={seed}", "train.checkpoint_every=1000000",
                               "train.checkpoint_seconds=1e9", "train.log_every=100"])
    rows = []
    for n in counts:
        t0 = time.perf_counter()
        v, nv, step = {}, {}, 0
        groups = panel_groups(n, panel)
        for group in groups:
            names = [ids[k].name for k in group]
            # a run of other steps, or on data made again with other frames or sizes: anew
            run = fresh_run(work / f"seed{seed}" / f"generic_{n}_{group[0]}", cfg, [ids[k] for k in group])
            result = train(cfg, [ids[k] for k in group], run)
            v.update(eval_psnr(result.model, {k: val[k] for k in names}))
            nv.update(eval_psnr(result.model, {k: novel[k] for k in names}))
            step = result.step
        on_panel = [ids[k].name for k in range(panel)]
        row = dict(seed=seed, n=n, models=len(groups), steps=step,
                   seconds=time.perf_counter() - t0, val_psnr=mean(v[k] for k in on_panel),
                   novel_psnr=mean(nv.values()), novel_psnr_panel=mean(nv[k] for k in on_panel),
                   novel_psnr_first=nv[ids[0].name], novel_per_identity=nv)
        say(f"seed {seed} N={n}: val {row['val_psnr']:.2f} dB, novel {row['novel_psnr']:.2f} dB, panel novel "
            f"{row['novel_psnr_panel']:.2f} dB, identity 0 novel {row['novel_psnr_first']:.2f} dB ({row['seconds']:.0f} s)")
        rows.append(row)
    return rows


def _measure_one_thread(*args) -> list:
    with torch_threads(1):
        return measure(*args, say=lambda line: print(line, flush=True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3],
                    help="one run per seed (default 0 1 2 3, the record's; other seeds write *_quick.json)")
    ap.add_argument("--config", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--workers", type=int, default=None, help="processes (one thread each); default one per seed and core")
    ap.add_argument("--panel", type=int, default=4, help="identities evaluated at every N (each N's models hold them)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastminerf_novel_vs_identities"))
    add_out(ap)
    args = ap.parse_args(argv)
    counts = sorted(set(args.counts))
    for n in counts:  # refuse a panel that does not split into models of N before any training
        try:
            panel_groups(n, args.panel)
        except ValueError as exc:
            ap.error(str(exc))
    with torch_threads(1):
        where = machine()
    # One process per seed, one thread each (the seeds are independent; on 2 cores two seeds take the time of one).
    with ProcessPoolExecutor(max_workers=args.workers or min(len(args.seeds), os.cpu_count() or 1)) as pool:
        jobs = [pool.submit(_measure_one_thread, seed, counts, args.steps, args.work, args.config, args.size,
                            args.frames, args.panel) for seed in args.seeds]
        rows = [r for job in jobs for r in job.result()]
    means = [dict(n=n, **{k: mean(r[k] for r in rows if r["n"] == n)
                         for k in ("val_psnr", "novel_psnr", "novel_psnr_panel", "novel_psnr_first")})
             for n in counts]
    upto8 = [m for m in means if m["n"] <= 8]
    targets = {key: dict(value=[m[key] for m in upto8], met=all(b[key] > a[key] for a, b in zip(upto8, upto8[1:])))
               for key in ("novel_psnr_panel", "novel_psnr_first", "novel_psnr")}
    from fastminerf import load_config

    device = trained_on(load_config(args.config))
    name = record_name(ap, args, "novel_vs_identities", ("steps", "counts", "seeds", "size", "frames", "panel", "config"),
                       device=device)
    write_result(name, dict(
        machine=where, settings=dict(steps=args.steps, counts=counts, seeds=args.seeds, config=args.config,
                                     device=device,
                                     size=args.size, frames=args.frames, panel=args.panel),
        rows=rows, mean=means, targets=targets), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
