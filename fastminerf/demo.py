"""The built-in demo: procedural heads -> generic training -> personalisation of a held-out head ->
an expression-transfer video, evaluation tables and a contact sheet, in a few minutes on a small CPU.

:func:`run_demo` is what ``fastminerf demo`` runs. Steps, all written under ``out_dir``:

1. ``data/``: :func:`fastminerf.data.synth.generate` writes ``n_identities`` procedural heads (``train``,
   ``val`` and ``novel`` splits; ``novel`` shows an expression region the identity never shows in ``train``);
   :func:`fastminerf.data.synth.contact_sheet` tiles them into ``contact_sheet.png`` beside ``data/``. The last
   identity is held out of generic training.
2. ``generic/``: :func:`fastminerf.train.train` on the other identities with the ``config`` preset, limited to
   ``train_share`` of the time budget.
3. ``personal/``: :func:`fastminerf.train.personalize` adds the held-out head from its ``train`` split, limited to
   the rest of the budget.
4. ``transfer.mp4``: the held-out head driven by the first identity's ``drive_split`` frames (head motion,
   ``relative`` poses, and expressions, ``delta`` transfer), :func:`fastminerf.render.drive_path` and
   :func:`fastminerf.render.render_video`.
5. ``eval_val/`` and ``eval_novel/``: :func:`fastminerf.render.evaluate` on every identity's ``val`` split
   (unseen frames of seen expressions) and ``novel`` split (expressions each identity never showed: MI-NeRF's
   cross-identity transfer, with exact ground truth), with side-by-side images; the held-out head rendered by the
   personalised run, the others by the generic run (the personalisation fine-tuned the shared weights for the
   held-out head).
6. ``demo.json``: settings, timings, where everything is, and both metric tables.

The budget: data generation and rendering take what they take (2 s for the default 180 frames of 64x64 on a
2-core CPU); ``minutes`` minus the measured generation time minus :data:`RENDER_RESERVE_S` is split between
training and personalisation, each with the preset's own schedule (warm-up, logging) over its time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from .data.writer import noted_on_interrupt

__all__ = ["DemoResult", "RENDER_RESERVE_S", "run_demo"]

PathLike = Union[str, Path]
DemoProgress = Callable[[str, Dict[str, float]], None]
"""``progress(stage, info)``: stage is ``synth``, ``train``, ``personalize``, ``render``, ``eval_val`` or
``eval_novel``; ``info`` holds ``done`` and ``total`` (frames) for the rendering stages and ``synth``, and
the training log record (``step``, ``loss``, ``psnr``, ``total_steps``, ...) for the training stages."""

RENDER_RESERVE_S = 60.0
"""Seconds of the budget kept for rendering the video and the evaluations, so that the whole demo ends by
``minutes`` even on a busy machine. The video's 24 frames and the 30 evaluated frames (3 per identity and split)
took 5 s on an idle 2-core CPU (2026-12-06), 22 s with other jobs on it, and 75 s on a busy one before rendering
reused the pruning pass's densities: the demo usually ends early, and its training would gain nothing from the
difference (at 64 px and 30 frames a head more steps do not move held-out PSNR)."""

PERSONALIZE_RATE_FACTOR = 0.6
"""Personalisation steps are planned at this fraction of the generic run's measured steps per second:
measured, its steps took 1.3-2x as long (and the machine's speed varies), and planning too few steps is the
safe side (the schedule completes; ``max_seconds`` still caps the time)."""

MIN_TRAIN_S = 2.0
"""Least training time given to each of the two training stages, even when the budget is spent."""

MIN_TRAIN_STEPS = 25
"""Least steps of the generic training, whatever its time limit: the training clock counts its setup (the occupancy
carving), so where generation had spent the budget on a busy machine the limit stopped the generic model at step 0
and the demo scored an untrained model. The demo then overruns ``minutes`` by those steps."""


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    out_dir: Path
    """The demo folder."""
    identity_dirs: List[Path]
    """The generated identity folders; the last one is the held-out head."""
    held_out: str
    """Name of the held-out (personalised) identity."""
    driver: str
    """Name of the identity whose frames drive the video."""
    generic_run: Path
    """Run folder of the generic model."""
    personal_run: Path
    """Run folder of the personalised model (all identities)."""
    video: Path
    """The expression-transfer mp4."""
    contact_sheet: Path
    """Contact sheet of the generated data."""
    metrics: Dict[str, dict] = field(default_factory=dict)
    """:func:`fastminerf.render.evaluate` result per split (``val``, ``novel``)."""
    seconds: Dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds per stage and ``total``."""


@noted_on_interrupt("the demo in {out_dir} stopped part way (it does not resume, and once its data or a run is "
                    "written refuses the same call): run it again with overwrite (--overwrite), or into another folder")
def run_demo(
    out_dir: PathLike,
    minutes: float = 3.0,
    n_identities: int = 5,
    n_frames: int = 30,
    size: int = 64,
    seed: int = 0,
    config: str = "cpu",
    train_share: float = 0.7,
    drive_split: str = "train",
    transfer: str = "delta",
    fps: float = 12.5,
    eval_frames: Optional[int] = 3,
    overwrite: bool = False,
    progress: Optional[DemoProgress] = None,
    device: Optional[str] = None,
) -> DemoResult:
    """Run the whole demo in ``out_dir`` (see the module docstring) and return what it made.

    Args:
        out_dir: demo folder (created).
        minutes: wall-clock budget of the whole demo, in minutes.
        n_identities: procedural heads (>= 2): all but the last train the generic model.
        n_frames: frames per identity's video (``train`` + ``val``, >= 2); ``novel`` gets a fifth as many.
        size: frame width and height in pixels (>= 11, for SSIM).
        seed: seed of the data (training seeds come from the preset).
        config: training preset name or YAML file (:func:`fastminerf.config.load_config`).
        train_share: share of the training budget spent on generic training (the rest personalises).
        drive_split: split of the driver (the first identity) whose frames drive the video.
        transfer: ``delta`` or ``absolute`` (:func:`fastminerf.render.expression_transfer`).
        fps: frame rate of the video (the procedural videos are 25 fps; half speed shows the motion better
            at this size).
        eval_frames: frames evaluated per identity and split (the first ones); None for all.
        overwrite: replace a previous demo's generated data in ``out_dir``.
        progress: see :data:`DemoProgress`.
        device: where it trains, renders and evaluates: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (its
            ``train.device``); None: the config's (``auto`` in the presets: a CUDA GPU where torch sees one).

    Raises:
        ValueError: bad settings. FileExistsError: ``out_dir`` holds data from an earlier demo and
            ``overwrite`` is false. KeyboardInterrupt (Ctrl-C) says so: a demo stopped part way, at any stage, is
            run again with ``overwrite``.
    """
    from .config import PATH_TAKEN, PATH_TYPES, ArgumentValueError, apply_overrides, load_config, needs
    from .data import load_dataset
    from .data.synth import contact_sheet, generate
    from .data.writer import write_json
    from .render import drive_path, evaluate, render_video
    from .train import load_run, personalize, resolve_device, train

    needs(out_dir, PATH_TYPES, "out_dir", f"the demo's folder {PATH_TAKEN}")
    if n_identities < 2:
        raise ArgumentValueError("n_identities", f"must be at least 2 identities (the demo holds one out), got {n_identities}")
    if n_frames < 2:  # one frame makes no val split: the evaluation failed after the whole budget was trained
        raise ArgumentValueError("n_frames", f"must be at least 2 frames (one train and one val frame a head), got {n_frames}")
    if size < 11:
        raise ArgumentValueError("size", f"must be at least 11 pixels (SSIM's window), got {size}")
    if not minutes > 0:
        raise ArgumentValueError("minutes", f"must be positive, got {minutes}")
    if not 0.0 < train_share < 1.0:
        raise ArgumentValueError("train_share", f"must be in (0, 1), got {train_share}")
    if device is not None:
        resolve_device(device, "device")  # one that cannot run here: refused before the data is made
    # read before the data is made: a typo found at training left OUT/data, and the corrected call was refused
    cfg = load_config(config, [f"train.device={device}"] if device is not None else [])
    out = Path(out_dir)  # made by generate, once it has taken its settings (a bad one leaves no folder)
    generic, personal = out / "generic", out / "personal"
    if not overwrite:
        for run in (generic, personal):
            if (run / "checkpoint.pt").exists():
                raise FileExistsError(f"{run} already holds a run from an earlier demo; pass overwrite (--overwrite) or another folder")
    seconds: Dict[str, float] = {}
    t0 = time.perf_counter()

    def report(stage: str):
        if progress is None:
            return None
        return lambda done, total: progress(stage, {"done": float(done), "total": float(total)})

    # 1. data
    start = time.perf_counter()
    novel = max(2, n_frames // 5)
    dirs = generate(out / "data", n_identities=n_identities, n_frames=n_frames, size=size, seed=seed,
                    val_fraction=0.2, novel_frames=novel, overwrite=overwrite, progress=report("synth"))
    sheet = contact_sheet(dirs, out / "contact_sheet.png")
    seconds["synth"] = time.perf_counter() - start
    if overwrite:  # the earlier demo's runs, once generate has not refused OUT/data (a dataset it did not write)
        for run in (generic, personal):
            for name in ("checkpoint.pt", "log.jsonl", "config.yaml", "curve.png"):
                (run / name).unlink(missing_ok=True)

    # 2-3. training, in the budget that is left
    left = max(2 * MIN_TRAIN_S, minutes * 60.0 - seconds["synth"] - RENDER_RESERVE_S)
    train_s = max(MIN_TRAIN_S, train_share * left)
    personal_s = max(MIN_TRAIN_S, left - train_s)
    cfg = apply_overrides(cfg, [f"train.max_seconds={train_s}"])
    start = time.perf_counter()
    least = ["train.max_seconds=null", f"train.steps={MIN_TRAIN_STEPS}"]  # the least steps, without a time limit
    spent = minutes * 60.0 - seconds["synth"] - RENDER_RESERVE_S <= 2 * MIN_TRAIN_S  # by generation
    show = None if progress is None else (lambda rec: progress("train", rec))
    gen = train(apply_overrides(cfg, least) if spent else cfg, dirs[:-1], generic, progress=show)
    if gen.step < MIN_TRAIN_STEPS:  # the limit ran out in the setup: resumed for the least steps
        gen = train(apply_overrides(cfg, least), dirs[:-1], generic, progress=show)
    seconds["train"] = time.perf_counter() - start
    # Personalisation lays its schedule (codes first, then everything) over its step count: fit the count to
    # the time it has, at the speed generic training measured, so both phases happen.
    rate = gen.step / max(gen.seconds, 1e-9)
    personal_steps = max(4, min(cfg.train.personalize_steps, int(PERSONALIZE_RATE_FACTOR * rate * personal_s)))
    start = time.perf_counter()
    personalize(generic, [dirs[-1]], personal, steps=personal_steps, max_seconds=personal_s,
                progress=None if progress is None else (lambda rec: progress("personalize", rec)))
    seconds["personalize"] = time.perf_counter() - start

    # 4. the transfer video
    _, model, _ = load_run(personal, device=cfg.train.device)  # where it trained, beside the generic model
    data = load_dataset(dirs, splits=("train", "val", "novel"))
    held_out, driver = data.identities[-1], data.identities[0]
    start = time.perf_counter()
    path = drive_path(data, held_out, data, drive_split, driver_identity=driver, mode=transfer)
    # every driver frame at ``fps``: slow motion (render_video's fps would keep the driver's clock, dropping frames),
    # each frame's sound from its own time, as long as the frame lasts
    path = replace(path, fps=float(fps))
    target = data.identities.index(held_out)
    video = render_video(model, path, held_out, out / "transfer.mp4", background=data.background(target),
                         aabb=model.aabb.tolist(), progress=report("render"))
    seconds["render"] = time.perf_counter() - start

    # 5. evaluation: the held-out head by the personalised run, the others by the generic run (the personalised
    # run's shared weights were fine-tuned for the held-out head, and render the others worse)
    models = {name: model if name == held_out else gen.model for name in data.identities}
    metrics: Dict[str, dict] = {}
    for split in ("val", "novel"):
        start = time.perf_counter()
        metrics[split] = evaluate(models, data, split, out_dir=out / f"eval_{split}", max_frames=eval_frames,
                                  progress=report(f"eval_{split}"))
        seconds[f"eval_{split}"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - t0

    result = DemoResult(out_dir=out, identity_dirs=list(dirs), held_out=held_out, driver=driver, generic_run=generic,
                        personal_run=personal, video=video.path or out / "transfer.mp4", contact_sheet=sheet,
                        metrics=metrics, seconds=seconds)
    summary = dict(
        settings=dict(minutes=minutes, n_identities=n_identities, n_frames=n_frames, size=size, seed=seed, config=config,
                      train_share=train_share, drive_split=drive_split, transfer=transfer, fps=fps,
                      train_seconds=train_s, personalize_seconds=personal_s, generic_steps=gen.step,
                      personalize_steps=personal_steps, eval_frames=eval_frames),
        held_out=held_out, driver=driver, generic_run=str(generic), personal_run=str(personal), video=str(result.video),
        video_frames=video.n_frames, contact_sheet=str(sheet), seconds=seconds, metrics=metrics,
    )
    write_json(out / "demo.json", summary)
    return result
