"""End-to-end training speed of fastminerf's backbone against the NeRFace backbone MI-NeRF used, on the same data,
with the same model code, conditioning, trainer and evaluation (``model.backbone: fast`` vs ``nerface``).

1. The NeRFace backbone (``configs/nerface.yaml``: positional encodings, 8x256 MLP, 64 coarse + 64 fine samples)
   trains for ``nerface_seconds``, evaluated every ``nerface_eval_every`` training seconds; its PSNR at the end is the
   reference ``nerface_final_psnr``.
2. The fast backbone (the ``cpu`` preset) trains for ``fast_seconds``, evaluated at training-clock marks growing by
   ``eval_factor`` from ``eval_first`` (fine resolution early, where it passes the reference).

Both are evaluated on the same fixed val rays (``eval_frames`` frames per identity x ``eval_pixels`` random pixels,
pooled MSE), with evaluation time excluded from the training clock. Reported: the fast backbone's training time at
its first evaluation at or above ``nerface_final_psnr`` (an upper bound), ``speedup = nerface_seconds /
fast_seconds_to_nerface_final_psnr``, and the PSNR of each at equal training time (at the NeRFace evaluation marks
within the fast run: the fast model's latest evaluation at or before each mark). Each backbone uses its own preset's
rays per step (the NeRFace preset cuts NeRFace's 2,048 to 256 so that a CPU takes steps at all). The two runs are
sequential, so the load average and each run's process CPU time per training second are recorded.

    python benchmarks/backbone.py [--mode quick|full|tiny] [--out DIR] [--work DIR]
    fastminerf bench backbone [--full] [--out DIR]

Writes ``backbone.json`` (``--mode full``), ``backbone_quick.json`` or ``backbone_tiny.json`` and a PNG of the same
name into ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    RESULTS,
    Monitor,
    bench_arguments,
    bench_data,
    check_out_dir,
    eval_rays,
    machine,
    print_progress,
    save_figure,
    torch_threads,
    trained_on,
    train_until,
    write_with_plot,
)
from fastminerf.config import apply_overrides, config_to_dict, load_config  # noqa: E402

ProgressFn = Callable[[str, dict], None]

_NO_CHECKPOINTS = ("train.checkpoint_every=1000000", "train.checkpoint_seconds=1e9")


@dataclass(frozen=True)
class BackboneSettings:
    """One version of the benchmark (see :data:`MODES`)."""

    identities: int = 2
    """Procedural identities trained together (one generic model per backbone)."""
    size: int = 64
    """Frame width and height (px)."""
    frames: int = 40
    """Frames per identity's video."""
    seed: int = 0
    """Seed of the procedural data (training seeds are the configs')."""
    nerface_seconds: float = 600.0
    """Training budget of the NeRFace backbone."""
    nerface_eval_every: float = 60.0
    """Training seconds between evaluations of the NeRFace backbone."""
    fast_seconds: float = 150.0
    """Training budget of the fast backbone."""
    eval_first: float = 0.5
    """First evaluation of the fast backbone (training seconds)."""
    eval_factor: float = 1.2
    """Each later evaluation of the fast backbone at this times the previous mark."""
    eval_frames: int = 2
    """Val frames per identity evaluated."""
    eval_pixels: Optional[int] = 1024
    """Random pixels per evaluated frame (None: all)."""
    threads: int = 1
    """torch CPU threads of every run (``train.threads``). 1 by default: on a machine shared with other jobs a
    second OpenMP thread waits at every parallel region for a core that others hold (measured on this project's
    2-core machine under a load of 6: 3.7 s per step with 2 threads, 0.7 s with 1), and one thread keeps the CPU
    time of a run equal to its compute."""
    nerface_config: str = "nerface"
    """Preset of the NeRFace backbone."""
    nerface_overrides: Tuple[str, ...] = ("train.log_every=1",) + _NO_CHECKPOINTS
    """Overrides on it."""
    fast_config: str = "cpu"
    """Preset of the fast backbone."""
    fast_overrides: Tuple[str, ...] = ("train.log_every=5",) + _NO_CHECKPOINTS
    """Overrides on it."""


_TINY_NERFACE = ("model.nerface.width=32", "model.nerface.depth=2", "model.nerface.skip_layer=1",
                 "model.nerface.color_width=16", "model.nerface.coarse_samples=8", "model.nerface.fine_samples=8",
                 "sampler.batch_size=64", "train.log_every=1") + _NO_CHECKPOINTS

MODES = {
    "full": BackboneSettings(),
    "quick": BackboneSettings(size=32, frames=20, nerface_seconds=60.0, nerface_eval_every=10.0, fast_seconds=30.0,
                              eval_pixels=256),
    # Tests: seconds. The numbers mean nothing; the shape of the output is what is checked.
    "tiny": BackboneSettings(size=16, frames=8, nerface_seconds=2.0, nerface_eval_every=0.5, fast_seconds=2.0,
                             eval_first=0.2, eval_frames=1, eval_pixels=64, nerface_overrides=_TINY_NERFACE,
                             fast_config="tiny", fast_overrides=("train.log_every=2",) + _NO_CHECKPOINTS),
}
"""``full``: the README's numbers (about 15 minutes on 2 cores); ``quick``: under two minutes of training; ``tiny``:
tests."""

RECORD = {"fast_config": "cpu", "device": "cpu"}
"""The settings of the committed record (the README's table, trained on the CPU): a full run with others (``--gpu``, or
on a GPU machine, where train.device auto trains there) into
``benchmarks/results`` writes ``backbone_quick`` (:func:`benchmarks.common.write_with_plot`)."""


def _latest(curve: list, seconds: float) -> Optional[dict]:
    before = [p for p in curve if p["seconds"] <= seconds + 1e-9]
    return before[-1] if before else None


def run_backbone(mode: str = "quick", out_dir: Path = RESULTS, work: Optional[Path] = None,
                 config: Optional[str] = None, progress: Optional[ProgressFn] = None) -> dict:
    """Run the benchmark in ``mode`` (:data:`MODES`), write ``<out_dir>/backbone[_mode].json`` and its PNG, and return
    the result. ``config`` replaces the fast backbone's preset (e.g. ``gpu``). ``progress(event, info)`` as in
    :func:`benchmarks.identities.run_identities` (events ``run`` and ``eval``)."""
    s = MODES[mode]
    check_out_dir(out_dir)  # before any work: the results are written at the end
    if config is not None:
        s = replace(s, fast_config=config)
    with torch_threads(s.threads):  # every run also sets train.threads; the caller's count comes back at the end
        return _run(s, mode, out_dir, work, progress)


def _run(s, mode: str, out_dir: Path, work: Optional[Path], progress: Optional[ProgressFn]) -> dict:
    where = machine()  # at the start (threads and the commit that runs, not the one checked out when it ends)
    say = progress or (lambda event, info: None)
    with bench_data(work, "fm_backbone_", s.identities, s.frames, s.size, s.seed, say) as (work, ids):
        result = _measure(s, mode, work, ids, say, where)
    result["written"] = write_with_plot("backbone", mode, result, out_dir, plot, RECORD)
    return result


def _measure(s, mode: str, work: Path, ids: list, say: ProgressFn, where: dict) -> dict:
    val = eval_rays(ids, "val", s.eval_frames, s.eval_pixels, seed=s.seed)
    cfg_nerface = apply_overrides(load_config(s.nerface_config),
                                  list(s.nerface_overrides) + [f"train.max_seconds={s.nerface_seconds}",
                                                               f"train.threads={s.threads}"])
    cfg_fast = apply_overrides(load_config(s.fast_config), list(s.fast_overrides) + [f"train.max_seconds={s.fast_seconds}",
                                                                                    f"train.threads={s.threads}"])
    if cfg_nerface.model.backbone != "nerface" or cfg_fast.model.backbone != "fast":
        raise ValueError("the nerface config must use model.backbone nerface and the fast config backbone fast")
    on_eval = lambda p: say("eval", p)  # noqa: E731

    say("run", dict(name="nerface backbone", cap=s.nerface_seconds))
    nerface, _ = train_until(cfg_nerface, ids, work / "nerface",
                             Monitor(val, None, first=s.nerface_eval_every, every=s.nerface_eval_every, on_eval=on_eval))
    say("run", dict(name="fast backbone", cap=s.fast_seconds))
    fast, _ = train_until(cfg_fast, ids, work / "fast",
                          Monitor(val, None, first=s.eval_first, factor=s.eval_factor, on_eval=on_eval))

    reference = nerface["curve"][-1]["psnr"]
    reached = next((p for p in fast["curve"] if p["psnr"] >= reference), None)
    equal_time = []
    for p in nerface["curve"]:
        q = _latest(fast["curve"], p["seconds"])
        if q is not None and p["seconds"] <= fast["stopped_seconds"] + 1e-9:
            equal_time.append(dict(seconds=p["seconds"], nerface_psnr=p["psnr"], fast_psnr=q["psnr"], fast_seconds=q["seconds"]))
    end = _latest(nerface["curve"], fast["stopped_seconds"])
    for run, cfg in ((nerface, cfg_nerface), (fast, cfg_fast)):
        run["rays_per_step"] = cfg.sampler.batch_size
    result = dict(
        machine=where, mode=mode, settings=dict(asdict(s), device=trained_on(cfg_fast)),
        data=dict(identities=[p.name for p in ids], size=s.size, frames_per_identity=s.frames, seed=s.seed,
                  val_rays_per_identity=len(next(iter(val.values())))),
        nerface_final_psnr=reference,
        nerface_seconds=nerface["stopped_seconds"],
        nerface_steps=nerface["stopped_step"],
        fast_seconds_to_nerface_final_psnr=reached["seconds"] if reached else None,
        fast_steps_to_nerface_final_psnr=reached["step"] if reached else None,
        speedup=nerface["stopped_seconds"] / reached["seconds"] if reached else None,
        fast_final_psnr=fast["curve"][-1]["psnr"],
        fast_seconds=fast["stopped_seconds"],
        nerface_psnr_at_fast_end=end["psnr"] if end else None,
        equal_time=equal_time,
        timing=("training seconds only (train.py's clock): evaluation, data loading and checkpoint writing excluded; "
                "the fast time is the training time at its first evaluation at or above nerface_final_psnr"),
        nerface=nerface, fast=fast,
        resolved_config=dict(nerface=config_to_dict(cfg_nerface), fast=config_to_dict(cfg_fast)),
    )
    result["targets"] = dict(fast_reaches_nerface_final_20x_sooner=dict(
        value=result["speedup"], met=result["speedup"] is not None and result["speedup"] >= 20.0))
    return result


def plot(result: dict, path: Path) -> Path:
    """Val PSNR against training seconds of both backbones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, label, style in (("fast", "fast backbone (hash grid + occupancy)", "s-"),
                              ("nerface", "NeRFace backbone (8x256 MLP, 64+64 samples)", "o-")):
        curve = result[key]["curve"]
        ax.plot([p["seconds"] for p in curve], [p["psnr"] for p in curve], style, ms=3, label=label)
    ax.axhline(result["nerface_final_psnr"], color="gray", lw=0.8, ls=":")
    if result["fast_seconds_to_nerface_final_psnr"]:
        ax.axvline(result["fast_seconds_to_nerface_final_psnr"], color="gray", lw=0.8, ls=":")
        ax.set_title(f"NeRFace's final {result['nerface_final_psnr']:.2f} dB reached {result['speedup']:.0f}x sooner",
                     fontsize=10)
    ax.set(xscale="log", xlabel="training seconds", ylabel="val PSNR (dB)")
    ax.legend(fontsize=8)
    return save_figure(fig, result, path, f"{len(result['data']['identities'])} identities")


def main(argv=None) -> int:
    args = bench_arguments(__doc__, MODES).parse_args(argv)
    r = run_backbone(args.mode, args.out, args.work, args.config, print_progress)
    print({k: r[k] for k in ("nerface_final_psnr", "nerface_seconds", "fast_seconds_to_nerface_final_psnr", "speedup")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
