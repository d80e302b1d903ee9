"""Shared benchmark helpers: timing with warm-up, machine/version description, JSON results."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REAL = Path(os.environ.get("FASTMINERF_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
"""The real talking-face clips of the real-data benchmarks: ``$FASTMINERF_REAL_DATA``, else ``../shared/data/real``
beside the checkout."""


def no_real_clips(folder: Path, missing=()) -> str:
    """What a real-data benchmark says when ``folder`` holds no clips (or lacks the ``missing`` ones)."""
    what = f"missing {', '.join(Path(p).name for p in missing)} in {folder}" if missing else f"no clips in {folder}"
    return f"{what}: set FASTMINERF_REAL_DATA to the folder of the real clips"


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, sync: Callable[[], None] | None = None) -> float:
    """Best wall time of ``repeats`` calls after ``warmup`` calls, in seconds. The minimum is the least noisy
    estimate on a shared machine (noise only ever adds time)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - start)
    return best


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """Where and with what a benchmark ran (:func:`fastminerf.backend.machine`, as eval's metrics.json records it) and
    the commit that runs."""
    from fastminerf.backend import machine as where

    return {**where(), "git_commit": _git_commit()}


def check_out_dir(out_dir: Path) -> None:
    """Refuse a results folder that is a file or cannot be made, naming it, and make it: a benchmark calls it before
    any work (:func:`write_result` would fail only at the end, in Python's words)."""
    from fastminerf.data.writer import check_folder

    check_folder(out_dir, "the results").mkdir(parents=True, exist_ok=True)


def write_result(name: str, payload: dict, out_dir: Path = RESULTS) -> Path:
    """Write ``<out_dir>/<name>.json`` (default ``benchmarks/results``) atomically (temp file + rename), as strict JSON:
    a value that is not finite (a metric no frame gave) is ``null``, as in ``fastminerf eval``'s metrics.json."""
    from fastminerf.data.writer import json_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json_text(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Training benchmarks: data, fixed evaluation rays, training until a target with evaluation off the clock


def show_section(result: dict, key: str, title: str, name: str, out_dir: Path = RESULTS) -> Path:
    """Print the ``summary`` of ``result[key]`` as a two-column rich table and write ``result`` as
    ``<out_dir>/<name>.json``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for measure, value in result[key]["summary"].items():
        table.add_row(measure, value)
    console = Console()
    console.print(table)
    path = write_result(name, result, out_dir)
    console.print(f"wrote {path}")
    return path


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch CPU threads and give the caller's count back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (any shape): ``-10 log10(mean squared error)``."""
    import math

    return -10.0 * math.log10(max(float(torch.mean((a - b) ** 2)), 1e-10))


def mean(values) -> float:
    """Arithmetic mean of an iterable (nan when empty)."""
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def load_average() -> float:
    """1-minute load average of the machine (others' jobs included); NaN where unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def synth_identities(root: Path, n_identities: int, n_frames: int, size: int, seed: int) -> list:
    """Procedural identity folders under ``root`` (generated once: an existing dataset with the same settings is
    reused)."""
    from fastminerf.data.synth import generate

    root = Path(root)
    stamp = root / "synth.json"
    if stamp.exists():
        s = json.loads(stamp.read_text()).get("settings", {})
        if s.get("first_identity", 0) == 0 and all(
                s.get(k) == v for k, v in dict(n_identities=n_identities, n_frames=n_frames, size=size, seed=seed).items()):
            return sorted(p for p in root.iterdir() if p.is_dir())
    return generate(root, n_identities=n_identities, n_frames=n_frames, size=size, seed=seed, overwrite=True)


def fresh_run(run: Path, cfg, data=()) -> Path:
    """``run``, a benchmark's run folder in its ``--work``, removed unless it holds a run of ``cfg`` itself (its
    ``config.yaml``) on the training frames of ``data`` (the identity folders it trains on; its checkpoint's frame
    fingerprints): an interrupted run of the same settings resumes; any other is trained anew. train() would resume
    a run of other steps or time limit (whose schedule was laid over other steps: not the numbers of a run of these;
    one already past them is not trained at all) and refuse one of another config, or of data made again with other
    frames or sizes ('trained on other frames')."""
    import shutil

    from fastminerf import load_config
    from fastminerf.config import ConfigError

    saved = Path(run) / "config.yaml"
    try:
        same = saved.is_file() and load_config(saved) == cfg
    except (ConfigError, OSError):
        same = False
    if same and data:
        same = _same_frames(Path(run), data)
    if not same:
        shutil.rmtree(run, ignore_errors=True)
    return Path(run)


def _same_frames(run: Path, data) -> bool:
    """Whether the checkpoint in ``run`` (if any: a run stopped before its first one trains anew anyway) was trained on
    the training frames of ``data``: train()'s fingerprints of them (:func:`fastminerf.train.frame_keys`,
    :func:`~fastminerf.train.frame_files`) against the checkpoint's."""
    import torch

    from fastminerf import load_dataset
    from fastminerf.train import CHECKPOINT_NAME, CheckpointError, frame_files, frame_keys, load_checkpoint

    path = run / CHECKPOINT_NAME
    if not path.is_file():
        return True
    try:
        saved = load_checkpoint(path)
    except CheckpointError:
        return False
    dataset = load_dataset(list(data), splits=("train",))
    return all(isinstance(saved.get(key), torch.Tensor) and saved[key].shape == now.shape and torch.equal(saved[key], now)
               for key, now in (("frame_keys", frame_keys(dataset)), ("frame_files", frame_files(dataset))))


WORK_MARKER = ".fastminerf_bench"
"""The file a training benchmark leaves in its ``--work`` folder: the mark of a folder it may reuse (and clear)."""


@contextmanager
def bench_data(work: Path | None, prefix: str, n_identities: int, frames: int, size: int, seed: int,
               say: Callable[[str, dict], None]):
    """The work folder of a training benchmark (a temporary one, removed at the end, when ``work`` is None) and its
    procedural identities: ``with bench_data(...) as (work, ids):``."""
    import shutil
    import tempfile

    own = work is None
    work = Path(tempfile.mkdtemp(prefix=prefix)) if own else Path(work)
    mark = work / WORK_MARKER
    # the benchmark removes its runs there (train_until): a folder of the user's is not one to work in
    if not own and work.is_dir() and any(work.iterdir()) and not mark.is_file():
        raise ValueError(f"{work} is not empty and is no benchmark work folder (it has no {WORK_MARKER}): the benchmark "
                         "replaces its data and runs there; give a new or empty folder for --work (an earlier version's "
                         f"work folder has no mark either: to reuse one, mark it with touch {mark})")
    if not own and work.exists() and not work.is_dir():
        raise ValueError(f"{work} is a file: give a folder for --work")
    work.mkdir(parents=True, exist_ok=True)
    mark.touch()
    say("run", dict(name=f"generating {n_identities} identities ({frames} frames, {size} px)", cap=None))
    try:
        yield work, synth_identities(work / "data", n_identities, frames, size, seed)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def write_with_plot(kind: str, mode: str, result: dict, out_dir: Path, plot: Callable[[dict, Path], Path],
                    record: dict | None = None) -> str:
    """``<out_dir>/<kind>.json`` and ``.png`` for the full version, ``<kind>_<mode>.*`` for the others; the name
    written. ``record``: the settings the committed record was made with (keys of ``result["settings"]``, e.g. its
    seeds, identity counts, preset and the device its runs trained on): a full run with others into ``benchmarks/results`` writes ``<kind>_quick.*``
    (ignored by git, read by no table), as :func:`record_name` does for the other scripts' departing runs."""
    name = kind if mode == "full" else f"{kind}_{mode}"
    if mode == "full" and record is not None and Path(out_dir).resolve() == RESULTS.resolve():
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in result["settings"].items()}
        if any(settings.get(k) != v for k, v in record.items()):
            name = f"{kind}_quick"
    write_result(name, result, out_dir)
    plot(result, Path(out_dir) / f"{name}.png")
    return name


def spread_frames(table, identity: int, count: int):
    """Flat indices of up to ``count`` frames of identity ``identity`` in a split's frame table, spread evenly over
    its video (first and last included)."""
    import numpy as np

    idx = table.frames_of(identity)
    return idx[np.unique(np.linspace(0, len(idx) - 1, min(count, len(idx))).round().astype(int))]


def eval_rays(dirs, split: str, frames_per_identity: int, pixels_per_frame: int | None, seed: int = 0) -> dict:
    """Fixed evaluation rays ``{identity name: RayBatch}``: ``frames_per_identity`` frames spread over the split,
    and of each a fixed random subset of ``pixels_per_frame`` pixels (None: every pixel). A random pixel subset
    estimates the frame's MSE without bias at a fraction of the rendering cost."""
    from dataclasses import fields

    from fastminerf import RayBatch, frame_rays, load_dataset

    data = load_dataset(dirs, splits=(split,))
    table = data.table(split)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, name in enumerate(data.identities):
        pick = spread_frames(table, k, frames_per_identity)
        parts = []
        for b in pick.tolist():
            batch = frame_rays(data, split, b)
            if pixels_per_frame is not None and pixels_per_frame < len(batch):
                keep = torch.randperm(len(batch), generator=gen)[:pixels_per_frame]
                batch = RayBatch(**{f.name: getattr(batch, f.name)[keep] for f in fields(batch)})
            parts.append(batch)
        out[name] = RayBatch(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(parts[0])})
    return out


@torch.no_grad()
def eval_psnr(model, rays: dict) -> dict:
    """PSNR (dB) of ``model`` on each identity's fixed rays (see :func:`eval_rays`; the identity is looked up by
    name in the model; frames outside training use the identity's mean training frame code)."""
    out = {}
    device = model.aabb.device
    for name, batch in rays.items():
        batch = batch.to(device)
        batch.identity = torch.full_like(batch.identity, model.identity_index(name))
        out[name] = psnr(model.render_batch(batch)["rgb"], batch.rgb)
    return out


class Monitor:
    """A ``fastminerf.train`` monitor: evaluates PSNR on fixed rays when the training clock passes the next mark,
    keeps the curve, and asks to stop once the mean PSNR reaches ``target`` (None: never). Evaluation happens
    outside the training clock (the trainer does not count a monitor's time); its own wall and CPU time are
    recorded so that the process CPU time spent training can be told apart.

    Marks are on the training clock (``unit="seconds"``) or on the step count (``unit="step"``: the same
    evaluations whatever the machine's load, since CPU training is deterministic): ``first``, then each mark
    ``factor`` times the previous (the same relative resolution for every run length), or ``every`` apart when
    given. The trainer calls the monitor every ``train.log_every`` steps, which bounds the resolution from below.
    ``stop_step`` caps the run (the monitor evaluates and stops there), whatever the config's schedule length.
    """

    def __init__(self, rays: dict, target: float | None = None, first: float = 1.0, factor: float = 1.2,
                 every: float | None = None, on_eval: Callable[[dict], None] | None = None,
                 unit: str = "seconds", stop_step: int | None = None) -> None:
        if unit not in ("seconds", "step"):
            raise ValueError(f"unit must be 'seconds' or 'step', got {unit!r}")
        self.rays, self.target, self.factor, self.every, self.on_eval = rays, target, factor, every, on_eval
        self.unit, self.stop_step = unit, stop_step
        self.next = first
        self.curve: list = []
        self.reached_at: dict | None = None
        self.eval_seconds = 0.0
        self.eval_cpu_seconds = 0.0

    def evaluate(self, model, seconds: float, step: int) -> dict:
        wall, cpu = time.perf_counter(), time.process_time()
        per = eval_psnr(model, self.rays)
        mean = sum(per.values()) / len(per)
        point = dict(seconds=seconds, step=step, psnr=mean, per_identity=per)
        self.curve.append(point)
        if self.target is not None and self.reached_at is None and mean >= self.target:
            self.reached_at = point
        self.eval_seconds += time.perf_counter() - wall
        self.eval_cpu_seconds += time.process_time() - cpu
        if self.on_eval is not None:
            self.on_eval(point)
        return point

    def __call__(self, model, record: dict) -> bool:
        seconds, at = float(record["seconds"]), float(record[self.unit])
        capped = self.stop_step is not None and int(record["step"]) >= self.stop_step
        if at < self.next and not capped:
            return False
        self.evaluate(model, seconds, int(record["step"]))
        while self.next <= at:
            self.next = self.next + self.every if self.every else self.next * self.factor
        return capped or self.reached_at is not None

    def finish(self, model, seconds: float, step: int) -> None:
        """Evaluate the final model unless the last evaluation was at its step."""
        if not self.curve or self.curve[-1]["step"] != step:
            was = model.training
            model.eval()
            self.evaluate(model, seconds, step)
            model.train(was)


def trained_on(cfg) -> str:
    """The device a training benchmark's runs of ``cfg`` train on (its ``train.device``, auto in the presets: a CUDA
    GPU where torch sees one), recorded in the result's settings: a record's times are its device's."""
    from fastminerf.train import resolve_device

    return str(resolve_device(cfg.train.device))


def train_until(cfg, dirs, out: Path, monitor: Monitor, personalize_from: Path | None = None) -> dict:
    """Train (or personalise ``personalize_from`` to ``dirs``) under ``monitor``, stopping at its target, its
    ``stop_step``, or at ``cfg.train.max_seconds`` / ``cfg.train.steps`` (``train.personalize_steps``). Returns ``(summary, TrainResult)``; the summary holds the
    training seconds and steps to the target (to the stop when it was not reached), whether it was reached, the
    curve, the final PSNR, the process CPU seconds of the run with evaluation excluded (about ``torch threads x
    seconds`` on an idle machine: less means other jobs took the cores) and the machine load before and after."""
    import shutil

    from fastminerf import personalize, train

    shutil.rmtree(out, ignore_errors=True)
    load_before, cpu0 = load_average(), time.process_time()
    if personalize_from is None:
        result = train(cfg, dirs, out, monitor=monitor)
    else:
        result = personalize(personalize_from, dirs, out, steps=cfg.train.personalize_steps,
                             max_seconds=cfg.train.max_seconds, monitor=monitor)
    monitor.finish(result.model, result.seconds, result.step)
    cpu = time.process_time() - cpu0 - monitor.eval_cpu_seconds
    reached = monitor.reached_at
    return dict(seconds=reached["seconds"] if reached else result.seconds,
                steps=reached["step"] if reached else result.step, reached=reached is not None,
                final_psnr=(reached or monitor.curve[-1])["psnr"], stopped_seconds=result.seconds,
                stopped_step=result.step, train_cpu_seconds=cpu, cpu_per_wall=cpu / max(result.seconds, 1e-9),
                eval_seconds=monitor.eval_seconds, load_before=load_before, load_after=load_average(),
                curve=monitor.curve), result


# ----------------------------------------------------------------------------------------------------------
# The command-line face of the training benchmarks (identities.py, backbone.py)


def add_out(ap: argparse.ArgumentParser) -> None:
    """``--out DIR`` (``args.out``), the folder every benchmark script writes its result JSON (and figures) into:
    default ``benchmarks/results``, the committed record the README's tables come from (``report.py``)."""
    ap.add_argument("--out", type=Path, default=RESULTS, metavar="DIR",
                    help="results folder (default benchmarks/results: the committed record the README's tables are "
                         "generated from; give another folder for a scratch run)")


def add_device(ap: argparse.ArgumentParser) -> None:
    """``--device`` (``args.device``) of the scripts that load a trained run: where it renders, as render's and eval's
    option (default auto: a CUDA GPU where torch sees one, else the CPU); :func:`device` resolves it."""
    from fastminerf.cli import _add_device

    _add_device(ap)


def device(args: argparse.Namespace) -> torch.device:
    """:func:`add_device`'s ``--device`` as a torch device (``load_run(run, device=...)``), refused before any work
    when it cannot run here, naming the option, as render and eval refuse it."""
    from fastminerf.cli import _device

    return _device(args)


def record_name(ap: argparse.ArgumentParser, args: argparse.Namespace, name: str, subset=(),
                smoke: bool = False, device=None) -> str:
    """The name (``<args.out>/<name>.json``) a benchmark script writes its result under, such that a smoke or subset
    run cannot replace the committed record by accident. ``name`` is the record's (``--name``, ``args.name``, when
    given); a smoke run (``smoke``: a ``--quick`` flag) writes ``<name>_quick``, as does a run that departs from the
    record's settings (one of the ``subset`` options, those that shrink a run, e.g. fewer clips, seeds or frames or a
    shorter budget, differs from its default, which is the record's setting; or a ``--set KEY=VALUE`` of
    :func:`add_overrides` changes the config, or ``device``, where the run computed, is not the CPU: the records are
    the CPU's) without ``--name`` into ``benchmarks/results``: ``*_quick.json`` is ignored by git and read by no
    table. In another ``--out`` folder a departing run keeps ``name``; ``--name`` writes where it says, the record
    included, deliberately."""
    explicit = getattr(args, "name", None)
    name = explicit or name
    if smoke:
        return f"{name}_quick"
    options = list(subset) + (["overrides"] if hasattr(args, "overrides") else [])  # --set: other settings
    departs = any(getattr(args, option) != ap.get_default(option) for option in options)
    departs = departs or (device is not None and torch.device(device).type != "cpu")
    if departs and not explicit and Path(args.out).resolve() == RESULTS.resolve():
        return f"{name}_quick"
    return name


def bench_arguments(doc: str, modes) -> argparse.ArgumentParser:
    """The options every training benchmark script takes: --mode, --out, --work, --config."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--mode", choices=sorted(modes), default="quick")
    add_out(ap)
    ap.add_argument("--work", type=Path, default=None, help="folder for data and runs: a new or empty one, or an earlier run's (marked by its "
                    f"{WORK_MARKER}; one of a version before the mark is reused once given it) (default: a temp folder)")
    ap.add_argument("--config", default=None, help="preset replacing the (fast) model's (e.g. gpu)")
    return ap


def add_overrides(ap: argparse.ArgumentParser, what: str, result_name: str | None = None) -> None:
    """``--set KEY=VALUE`` (repeatable, into ``args.overrides``) overriding ``what``; with ``result_name``, also
    ``--name`` (``args.name``): the result file of a variant's run, so the default file (``result_name``) stays (a
    run with ``--set`` and no ``--name`` writes ``*_quick`` into ``benchmarks/results``, :func:`record_name`)."""
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help=f"override a field of {what} (repeatable)")
    if result_name is not None:
        ap.add_argument("--name", default=None, help=f"result file name for a variant's run (default {result_name})")


def print_progress(event: str, info: dict) -> None:
    """Plain progress lines of a benchmark script (benchmarks print; the library does not; the CLI uses rich)."""
    if event == "run":
        print(info["name"] + (f" (cap {info['cap']})" if info.get("cap") else ""), flush=True)
    elif event == "eval":
        print(f"  {info['seconds']:7.1f} s  step {info['step']:5d}  {info['psnr']:6.2f} dB", flush=True)
    elif event == "row":
        print({k: v for k, v in info.items() if not isinstance(v, list)}, flush=True)


def save_figure(fig, result: dict, path: Path, what: str) -> Path:
    """Title a benchmark figure with its settings and machine, write it as PNG and close it."""
    import matplotlib.pyplot as plt

    m = result["machine"]
    fig.suptitle(f"{result['settings']['size']} px, {what}, {m['cpu']} ({m['torch_threads']} threads), "
                 f"{result['mode']} version", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
