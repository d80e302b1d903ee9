"""Training time against the number of identities (MI-NeRF's Figure 4): one generic model for N people against N
single-identity models, all trained until the same val PSNR target.

For each N in ``counts`` (procedural identities ``id000 ...``, a fixed frame size and frames per identity):

- (b) the single-identity models of the identities new at this N are trained first (identity k's model does not
  depend on N, so each is trained once and the sum over k < N is the single-identity cost of N people), each until
  its own val PSNR reaches ``target_psnr``;
- (a) right after them, one generic model on identities 0..N-1 until its **mean** val PSNR over them reaches the
  target; then its mean PSNR on each identity's ``novel`` split (expressions that identity never showed, shown by
  the others: Figure 4, right), next to the mean ``novel`` PSNR of the single-identity models of the same people
  (``novel_gain_vs_single``, like for like: the plain mean is over different people at each N) and the first
  identity's own (``novel_psnr_first``: the one person in every model);
- optionally, personalisation: identity N added to the generic model (``fastminerf.personalize``) until its val PSNR
  reaches the target.

Same config for every run (a preset + the overrides below), fixed seeds. ``--seeds 0 1 2`` repeats the whole
benchmark on other procedural people (data seed) and model initialisations (``train.seed``): each row is then the
mean over the seeds, with each seed's value in ``<key>_by_seed`` and the standard deviation in ``<key>_std``, and
the targets are read on the means (one seed's novel-PSNR trend is within its noise).

"Until the target": the trainer's monitor hook evaluates PSNR on fixed val rays (``eval_frames`` frames per
identity x ``eval_pixels`` random pixels, pooled MSE) at training-clock marks that grow by ``eval_factor`` (the same relative time resolution for short and long
runs); evaluation time is excluded from the training clock, and the time recorded is the training time at the first
evaluation that reached the target (evaluations at steps growing by ``eval_factor``, so the step count is an upper
bound by at most that factor, and reproducible). Every run is capped in steps (``single_cap_steps``;
``generic_cap_steps`` x N up to ``generic_cap_max``); a capped run records ``reached: false`` and its time at the
cap. ``ratio_steps`` (generic steps / summed single steps) is free of the machine's load: generic and single steps
draw the same rays per step from models of the same size, so on a quiet machine the time ratio follows it.

The machine is shared: singles and the generic run of each N are trained back to back, the load average before and
after each run is recorded, and so is each run's process CPU time (evaluation excluded): ``cpu_per_wall`` near the
torch thread count means the run had the cores; ``ratio_cpu`` is the generic / single ratio in CPU seconds.

    python benchmarks/identities.py [--mode quick|full|tiny] [--seeds 0 1 2] [--out DIR] [--work DIR]
    fastminerf bench identities [--full] [--seeds 0 1 2] [--out DIR]

Writes ``identities.json`` (``--mode full``), ``identities_quick.json`` or ``identities_tiny.json`` and a PNG of the
same name into ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    RESULTS,
    Monitor,
    bench_arguments,
    bench_data,
    check_out_dir,
    eval_psnr,
    eval_rays,
    load_average,
    machine,
    mean,
    print_progress,
    save_figure,
    torch_threads,
    trained_on,
    train_until,
    write_with_plot,
)
from fastminerf.config import apply_overrides, config_to_dict, load_config  # noqa: E402

ProgressFn = Callable[[str, dict], None]


@dataclass(frozen=True)
class IdentitiesSettings:
    """One version of the benchmark (see :data:`MODES`)."""

    counts: Tuple[int, ...] = (1, 2, 4, 8, 16)
    """Identity counts N."""
    size: int = 64
    """Frame width and height (px)."""
    frames: int = 40
    """Frames per identity's video (train + val; ``novel`` adds a tenth)."""
    seed: int = 0
    """Seed of the procedural data and of the training (``train.seed``)."""
    target_psnr: float = 20.0
    """Val PSNR (dB) every model is trained to (generic: the mean over its identities)."""
    single_cap_steps: int = 500
    """Step cap of one single-identity run (at 64 px one reaches 20 dB in about 170 steps)."""
    generic_cap_steps: int = 250
    """Step cap of a generic run per identity (cap = this x N, at most ``generic_cap_max``): above the summed
    single-identity steps, so that a generic model slower than N single ones is still measured."""
    generic_cap_max: int = 4000
    """Largest step cap of a generic run."""
    personalize: bool = True
    """Also time adding identity N to each generic model (``fastminerf.personalize`` with the preset's
    ``personalize_steps`` schedule: codes only first, then everything)."""
    personalize_cap_steps: int = 100
    """Step cap of a personalisation (and its schedule: ``train.personalize_steps`` is set to it)."""
    eval_frames: int = 2
    """Val frames per identity evaluated (spread over the split)."""
    eval_pixels: Optional[int] = 1024
    """Random pixels per evaluated frame (None: all)."""
    novel_pixels: Optional[int] = 2048
    """Random pixels per ``novel`` frame for the final novel PSNR (every novel frame is used)."""
    eval_factor: float = 1.15
    """Each evaluation mark is this times the previous one (the first at step ``eval_first``)."""
    eval_first: int = 10
    """First evaluation mark (step); marks are steps, so every run is evaluated at the same steps whatever the
    load (CPU training is deterministic) and the steps to the target are reproducible."""
    threads: int = 1
    """torch CPU threads of every run (``train.threads``). 1 by default: on a machine shared with other jobs a
    second OpenMP thread waits at every parallel region for a core that others hold (measured on this project's
    2-core machine under a load of 6: 3.7 s per step with 2 threads, 0.7 s with 1), and one thread keeps the CPU
    time of a run equal to its compute."""
    config: str = "cpu"
    """Training preset of every run."""
    overrides: Tuple[str, ...] = ("train.log_every=5", "train.max_seconds=null", "train.checkpoint_every=1000000",
                                  "train.checkpoint_seconds=1e9")
    """Overrides on the preset (the monitor looks every 5 steps; step caps instead of the preset's time limit, so that
    the machine's load changes the times but not what is trained; no periodic checkpoints, only the final one)."""


MODES = {
    "full": IdentitiesSettings(),
    "quick": IdentitiesSettings(counts=(1, 2, 4), size=32, frames=20, single_cap_steps=300, generic_cap_steps=200,
                                generic_cap_max=800, personalize=False, eval_pixels=512, novel_pixels=512),
    # Tests: seconds. The numbers mean nothing; the shape of the output is what is checked.
    "tiny": IdentitiesSettings(counts=(1, 2), size=16, frames=8, target_psnr=12.0, single_cap_steps=6,
                               generic_cap_steps=4, generic_cap_max=8, personalize_cap_steps=4, eval_frames=1,
                               eval_pixels=64, novel_pixels=64, eval_first=2, config="tiny",
                               overrides=("train.log_every=2", "train.max_seconds=null",
                                          "train.checkpoint_every=1000000", "train.checkpoint_seconds=1e9")),
}
"""``full``: the README's numbers (about half an hour on 2 cores); ``quick``: a few minutes; ``tiny``: tests."""

RECORD = {"counts": [1, 2, 4, 8, 16], "config": "cpu", "seeds": [0, 1, 2], "device": "cpu"}
"""The settings of the committed record (``--full --seeds 0 1 2``, trained on the CPU, the README's table): a full run
with others (on a GPU machine too, where train.device auto trains there) into
``benchmarks/results`` writes ``identities_quick`` (:func:`benchmarks.common.write_with_plot`)."""


def run_identities(mode: str = "quick", out_dir: Path = RESULTS, work: Optional[Path] = None,
                   config: Optional[str] = None, progress: Optional[ProgressFn] = None,
                   counts: Optional[Tuple[int, ...]] = None, seeds: Optional[Sequence[int]] = None) -> dict:
    """Run the benchmark in ``mode`` (:data:`MODES`), write ``<out_dir>/identities[_mode].json`` and its PNG, and
    return the result. ``config`` replaces the mode's preset (e.g. ``gpu``), ``counts`` its identity counts, ``seeds``
    its one seed (several: the benchmark once per seed, rows averaged; see the module's docstring).
    ``progress(event, info)`` is called with ``("run", {"name", "cap"})`` when a training starts, ``("eval", point)``
    after each evaluation and ``("row", row)`` when an N is done."""
    s = MODES[mode]
    # before any work: a count of 0 crashed the dataset reader after the data was made (an IndexError), a negative
    # seed was refused by the generator once the benchmark had begun
    if counts and min(int(c) for c in counts) < 1:
        raise ValueError(f"identity counts must be at least 1, got {list(counts)}")
    if seeds and min(int(k) for k in seeds) < 0:
        raise ValueError(f"seeds must be whole numbers >= 0, got {list(seeds)}")
    check_out_dir(out_dir)
    if config is not None:
        s = replace(s, config=config)
    if counts:
        s = replace(s, counts=tuple(sorted(set(int(c) for c in counts))))
    seeds = list(dict.fromkeys(int(k) for k in seeds)) if seeds else [s.seed]
    with torch_threads(s.threads):  # every run also sets train.threads; the caller's count comes back at the end
        where = machine()  # at the start (threads and the commit that runs, not the one checked out when it ends)
        results = [_run(replace(s, seed=k), mode, work / f"seed{k}" if work and len(seeds) > 1 else work, progress,
                        where) for k in seeds]
    result = results[0] if len(results) == 1 else combine_seeds(results)
    result["written"] = write_with_plot("identities", mode, result, out_dir, plot, RECORD)
    return result


def _run(s, mode: str, work: Optional[Path], progress: Optional[ProgressFn], where: dict) -> dict:
    say = progress or (lambda event, info: None)
    n_ids = max(s.counts) + (1 if s.personalize else 0)
    with bench_data(work, "fm_identities_", n_ids, s.frames, s.size, s.seed, say) as (work, ids):
        return _measure(s, mode, work, ids, say, where)


def combine_seeds(results: list) -> dict:
    """One result from the same benchmark run on several seeds: each row's numbers are the mean over the seeds (with
    ``<key>_by_seed`` and ``<key>_std``, population standard deviation), its flags true only when true for every
    seed, its lists per seed; the runs are kept per seed; the targets are read on the mean rows."""
    seeds = [r["settings"]["seed"] for r in results]
    rows = []
    for per_seed in zip(*(r["rows"] for r in results)):
        row = {}
        for key, first in per_seed[0].items():
            values = [r[key] for r in per_seed]
            if key in ("n", "target_psnr"):  # the same in every seed's row
                row[key] = first
            elif isinstance(first, bool):
                row[key] = all(values)
            elif isinstance(first, (int, float)):
                avg = mean(values)
                row[key] = avg
                row[f"{key}_by_seed"] = values
                row[f"{key}_std"] = mean((v - avg) ** 2 for v in values) ** 0.5
            else:
                row[f"{key}_by_seed"] = values
        row["single_seconds"] = [mean(v) for v in zip(*row.pop("single_seconds_by_seed"))]  # per identity index k
        rows.append(row)
    first = results[0]
    return dict(
        first, settings={**first["settings"], "seed": None, "seeds": seeds},
        data={**first["data"], "seed": None, "seeds": seeds,
              "identities_by_seed": [r["data"]["identities"] for r in results]},
        rows=rows, runs={f"seed{k}": r["runs"] for k, r in zip(seeds, results)}, targets=_targets(rows),
        targets_by_seed=[r["targets"] for r in results],
    )


def _measure(s, mode: str, work: Path, ids: list, say: ProgressFn, where: dict) -> dict:
    val = eval_rays(ids, "val", s.eval_frames, s.eval_pixels, seed=s.seed)
    novel = eval_rays(ids, "novel", 10**6, s.novel_pixels, seed=s.seed)
    base = apply_overrides(load_config(s.config), list(s.overrides) + [f"train.personalize_steps={s.personalize_cap_steps}",
                                                                      f"train.threads={s.threads}",
                                                                      f"train.seed={s.seed}"])

    def run(name: str, dirs, names, cap: int, personalize_from=None):
        say("run", dict(name=name, cap=cap))
        monitor = Monitor({n: val[n] for n in names}, s.target_psnr, first=s.eval_first, factor=s.eval_factor,
                          on_eval=lambda p: say("eval", p), unit="step", stop_step=cap)
        summary, result = train_until(base, dirs, work / "runs" / name, monitor, personalize_from)
        summary["cap_steps"] = cap
        return summary, result

    singles = []  # per identity k: summary of its single-identity run + its novel PSNR
    rows, runs = [], {}
    for n in s.counts:
        load_start = load_average()
        for k in range(len(singles), n):
            name = ids[k].name
            summary, result = run(f"single_{name}", [ids[k]], [name], s.single_cap_steps)
            summary["novel_psnr"] = eval_psnr(result.model, {name: novel[name]})[name]
            singles.append(summary)
            runs[f"single_{name}"] = summary
        names = [p.name for p in ids[:n]]
        gen_name = f"generic_{n}"
        cap = min(s.generic_cap_steps * n, s.generic_cap_max)
        generic, result = run(gen_name, ids[:n], names, cap)
        novel_per = eval_psnr(result.model, {name: novel[name] for name in names})
        generic["novel_per_identity"] = novel_per
        runs[gen_name] = generic
        row = dict(
            n=n, target_psnr=s.target_psnr,
            generic_seconds=generic["seconds"], generic_steps=generic["steps"], generic_reached=generic["reached"],
            generic_final_psnr=generic["final_psnr"], generic_cap_steps=cap,
            single_seconds_total=sum(r["seconds"] for r in singles[:n]),
            single_steps_total=sum(r["steps"] for r in singles[:n]),
            single_reached_all=all(r["reached"] for r in singles[:n]),
            single_seconds=[r["seconds"] for r in singles[:n]],
            single_final_psnr=mean(r["final_psnr"] for r in singles[:n]),
            novel_psnr=mean(novel_per.values()),
            single_novel_psnr=mean(r["novel_psnr"] for r in singles[:n]),
            novel_psnr_first=novel_per[names[0]],
        )
        # The mean above is over a different set of people at each N (their difficulty varies); against the single
        # models of the same people the comparison is like for like.
        row["novel_gain_vs_single"] = row["novel_psnr"] - row["single_novel_psnr"]
        row["ratio"] = row["generic_seconds"] / max(row["single_seconds_total"], 1e-9)
        row["ratio_steps"] = row["generic_steps"] / max(row["single_steps_total"], 1)
        single_cpu = sum(r["train_cpu_seconds"] for r in singles[:n])
        row["ratio_cpu"] = generic["train_cpu_seconds"] / max(single_cpu, 1e-9)
        row["generic_cpu_per_wall"] = generic["cpu_per_wall"]
        row["single_cpu_per_wall"] = mean(r["cpu_per_wall"] for r in singles[:n])
        if s.personalize:
            new = ids[n]
            pers, _ = run(f"personalize_{n}_{new.name}", [new], [new.name], s.personalize_cap_steps,
                          personalize_from=work / "runs" / gen_name)
            runs[f"personalize_{n}"] = pers
            row.update(personalize_seconds=pers["seconds"], personalize_steps=pers["steps"],
                       personalize_reached=pers["reached"])
        row["load_start"], row["load_end"] = load_start, load_average()
        rows.append(row)
        say("row", row)

    for row in rows:  # identity N's own single-identity time, where a later N trained it
        if s.personalize and row["n"] < len(singles):
            row["personalize_vs_single_seconds"] = singles[row["n"]]["seconds"]
    result = dict(
        machine=where, mode=mode, settings=dict(asdict(s), device=trained_on(base)),
        data=dict(identities=[p.name for p in ids], size=s.size, frames_per_identity=s.frames, seed=s.seed,
                  val_rays_per_identity=len(next(iter(val.values()))),
                  novel_rays_per_identity=len(next(iter(novel.values())))),
        resolved_config=config_to_dict(base),
        timing=("training seconds only (train.py's clock): evaluation, data loading and checkpoint writing excluded; "
                "time to target = the training time at the first evaluation reaching it"),
        rows=rows, runs=runs, targets=_targets(rows),
    )
    return result


def _targets(rows: list) -> dict:
    by_n = {r["n"]: r for r in rows}
    out = {}
    if 8 in by_n:
        r = by_n[8]
        ok = r["ratio"] <= 0.25 and r["generic_reached"] and r["single_reached_all"]
        out["generic_le_25pct_of_singles_at_8"] = dict(value=r["ratio"], met=bool(ok))
    multi = [r["ratio"] for r in rows if r["n"] >= 2]
    if len(multi) >= 2:
        out["ratio_falls_with_n"] = dict(value=multi, met=all(b < a for a, b in zip(multi, multi[1:])))
    upto8 = [r["novel_psnr"] for r in rows if r["n"] <= 8]
    if len(upto8) >= 2:
        out["novel_psnr_grows_1_to_8"] = dict(value=upto8, met=all(b > a for a, b in zip(upto8, upto8[1:])))
        gains = [r["novel_gain_vs_single"] for r in rows if r["n"] <= 8]
        out["novel_gain_vs_single_grows_1_to_8"] = dict(value=gains, met=all(b > a for a, b in zip(gains, gains[1:])))
    return out


def plot(result: dict, path: Path) -> Path:
    """Time to target against N (generic vs summed single-identity models) and novel PSNR against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    n = [r["n"] for r in rows]
    fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(14, 4))
    series = [("single_seconds_total", "single_reached_all", "o-", "N single-identity models (sum)"),
              ("generic_seconds", "generic_reached", "s-", "one generic model")]
    if any("personalize_seconds" in r for r in rows):
        series.append(("personalize_seconds", "personalize_reached", "^--", "add identity N+1 (personalise)"))
    for key, reached, style, label in series:
        ax1.plot(n, [r[key] for r in rows], style, label=label)
        capped = [r for r in rows if not r[reached]]  # a capped run's time is a lower bound
        ax1.plot([r["n"] for r in capped], [r[key] for r in capped], "kx", ms=9)
    ax1.plot([], [], "kx", label="capped: target not reached")
    ax1.set(xscale="log", yscale="log", xlabel="identities N", ylabel="training seconds to target",
            title=f"time to {rows[0]['target_psnr']:.0f} dB val PSNR")
    ax1.set_xticks(n, [str(v) for v in n])
    ax1.legend(fontsize=8)
    for key, label, style in (("ratio", "training seconds", "s-"), ("ratio_cpu", "CPU seconds", "d--"),
                              ("ratio_steps", "steps", "o:")):
        ax3.plot(n, [r[key] for r in rows], style, label=label)
    ax3.axhline(0.25, color="gray", lw=0.8, ls=":")
    ax3.set(xscale="log", yscale="log", xlabel="identities N", ylabel="generic / sum of single",
            title="cost of one generic model relative to N single ones")
    ax3.set_xticks(n, [str(v) for v in n])
    ax3.legend(fontsize=8)
    for key, style, label in (("novel_psnr", "s-", "generic model"), ("single_novel_psnr", "o-", "single-identity models")):
        ax2.errorbar(n, [r[key] for r in rows], yerr=[r.get(key + "_std", 0.0) for r in rows], fmt=style, capsize=3,
                     label=label + (" (mean ± sd over seeds)" if key + "_std" in rows[0] else ""))
    ax2.set(xscale="log", xlabel="identities N", ylabel="PSNR (dB)", title="novel expressions (PSNR)")
    ax2.set_xticks(n, [str(v) for v in n])
    if all("novel_gain_vs_single" in r for r in rows):  # like for like: the same people's single models
        gain = ax2.twinx()
        gain.errorbar(n, [r["novel_gain_vs_single"] for r in rows], yerr=[r.get("novel_gain_vs_single_std", 0.0) for r in rows],
                      fmt="d:", color="gray", capsize=3, label="generic - single (right)")
        gain.set_ylabel("generic - single, same people (dB)")
        gain.legend(fontsize=8, loc="lower right")
    ax2.legend(fontsize=8, loc="upper left")
    return save_figure(fig, result, path, f"{result['settings']['config']} preset")


def main(argv=None) -> int:
    ap = bench_arguments(__doc__, MODES)
    ap.add_argument("--counts", type=int, nargs="+", default=None, help="identity counts replacing the mode's")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="data and training seeds; several: the benchmark once per seed, rows averaged")
    args = ap.parse_args(argv)
    run_identities(args.mode, args.out, args.work, args.config, print_progress, args.counts, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
