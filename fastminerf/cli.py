"""The ``fastminerf`` command: a thin layer over the library, with rich progress.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its arguments and sets
``func`` to a ``_run_<name>(args) -> int``; :data:`SUBCOMMANDS` lists them. Library code prints nothing:
progress and summaries are shown here.

    fastminerf synth OUT --identities 8 --frames 100 --size 128 --seed 0
    fastminerf prepare VIDEO [VIDEO ...] --out ROOT [--size 256] [--fps N] [--max-frames N]
    fastminerf train --data DATA --out RUN [--config cpu|video] [--steps N] [--max-seconds S] [--set key=value ...]
    fastminerf personalize --run RUN --data NEW_OR_KNOWN_IDENTITY... --out RUN2 [--each] [--steps N] [--max-seconds S]
    fastminerf render --run RUN --identity NAME --drive PATH[:SPLIT]|VIDEO --out OUT.mp4 [--transfer delta|absolute]
    fastminerf render --run RUN --identity NAME --orbit --out OUT.mp4
    fastminerf render --run RUN --identity NAME --speech AUDIO --out OUT.mp4 [--speech-model MODEL.pt]
    fastminerf render ... [--background own|COLOUR|IMAGE] [--alpha]
    fastminerf speech (--run RUN | --data DATA... --out MODEL.pt) [--steps N] [--set key=value ...]
    fastminerf eval --run RUN [RUN ...] --data PATH... --split SPLIT [--out DIR] [--speech [MODEL.pt]]
    fastminerf demo [OUT] [--minutes 3]
    fastminerf bench {identities,backbone,all} [--full] [--out DIR]
    fastminerf info RUN [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import re
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .config import counted, plain_number, some_of

__all__ = ["SUBCOMMANDS", "build_parser", "main"]


@functools.lru_cache(maxsize=None)
def _console_class():
    from rich.console import Console

    class MessageConsole(Console):
        """A rich console whose text messages (a print of strings: summaries, notes, errors, the next command) stay
        one line each, never broken at rich's width (80 columns in a log, mid-path): grep finds them whole and a path
        or command copied from them works; a terminal wraps them as it is wide. Tables and progress displays are laid
        out to the width as ever."""

        def print(self, *objects, soft_wrap=None, **kwargs):
            if soft_wrap is None and objects and all(isinstance(o, str) for o in objects):
                soft_wrap = True
            super().print(*objects, soft_wrap=soft_wrap, **kwargs)

    return MessageConsole


def _console(stderr: bool = False):
    # markup off: paths, names and error texts are printed as they are ("clip[v2]" is not a style, "[/b]" no
    # MarkupError); the few styled prints ask for markup and escape what they interpolate (_styled)
    return _console_class()(stderr=stderr, highlight=False, markup=False)


def _styled(style: str, word: str, rest: object) -> str:
    """``word`` in ``style``, then ``rest`` as plain text, for ``console.print(..., markup=True)``."""
    from rich.markup import escape

    return f"[{style}]{word}[/{style}] {escape(str(rest))}"


def _field_help(cls, name: str) -> str:
    """The docstring of a config field, so that CLI help and config docs agree, with the field's default (the
    option's) when it has one to type: None (the docstring says what leaving it out does) and a switch's False
    give none."""
    text = _field_docs(cls).get(name, "")
    default = getattr(_config_defaults(cls), name, None)
    if default is None or isinstance(default, bool):
        return text
    shown = plain_number(default) if isinstance(default, (int, float)) else str(default)
    return f"{text.rstrip('.')} (default {shown})." if text else f"default {shown}"


@functools.lru_cache(maxsize=None)
def _config_defaults(cls):
    """A config class's defaults (``cls()``), made once."""
    return cls()


@functools.lru_cache(maxsize=None)
def _field_docs(cls) -> Dict[str, str]:
    """``{field: help}`` of every documented field of a config class, read from its source once: every command
    builds the whole parser, and inspect.getsource of a class parses its whole module (config.py), which once a
    field cost 0.25-0.75 s of each command's start."""
    import ast
    import inspect
    import textwrap

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (a frozen or byte-code-only install): plain help
        return {}
    tree = ast.parse(textwrap.dedent(src))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: Dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        name = getattr(getattr(node, "target", None), "id", None) if isinstance(node, ast.AnnAssign) else None
        if name is not None and name not in docs:
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                text = " ".join(str(nxt.value.value).split()).replace("``", "")
                # the config's None ('None for all') cannot be typed as an option's value: say what leaving it out does
                text = re.sub(r"\bNone (for )?", "without it, ", text)
                docs[name] = text.replace("%", "%%")
            else:
                docs[name] = ""
    return docs


class _Once(argparse.Action):
    """A value that a command takes as a positional or as an option (synth's OUT or --out, info's RUN or --run, as
    the other commands take --out and --run): either stores it, and the two together are a usage error."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:  # the positional left out
            return
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{self.metavar} given twice: as {self.metavar} and as --{self.dest}; give it once")
        setattr(namespace, self.dest, values)


class _NeededInUsage(argparse.HelpFormatter):
    """Help whose usage line shows a :func:`_positional_or_option` that the command needs as ``OUT``, not ``[OUT]``:
    optional to argparse only because ``--out`` may give it instead."""

    def _format_args(self, action, default_metavar):
        if getattr(action, "needed", False) and not action.option_strings:
            return self._metavar_formatter(action, default_metavar)(1)[0]
        return super()._format_args(action, default_metavar)


def _positional_or_option(p: argparse.ArgumentParser, dest: str, help: str, needed: bool = True) -> None:
    """``DEST`` as a positional (optional) and as ``--DEST`` (:class:`_Once`), default None: the command's run says
    what leaving both out does (:func:`_given`). One the command ``needed`` reads as required in the usage line."""
    metavar = dest.upper()
    p.add_argument(dest, nargs="?", type=Path, action=_Once, default=None, metavar=metavar,
                   help=f"{help} (or --{dest} {metavar})").needed = needed
    if needed:
        p.formatter_class = _NeededInUsage
    p.add_argument(f"--{dest}", type=Path, action=_Once, default=None, metavar=metavar, help=argparse.SUPPRESS)


def _given(args: argparse.Namespace, dest: str) -> Path:
    """The value of a :func:`_positional_or_option` that the command needs, or a usage error naming both ways."""
    value = getattr(args, dest)
    if value is None:
        metavar = dest.upper()
        raise ValueError(f"{args.command} needs {metavar}: fastminerf {args.command} {metavar} (or --{dest} {metavar})")
    return value


# ---------------------------------------------------------------------------------------------- synth


def _add_synth(sub: "argparse._SubParsersAction") -> None:
    from .config import SynthConfig

    d = SynthConfig()
    p = sub.add_parser(
        "synth",
        help="write a procedural multi-identity talking-head dataset (ground truth) and its contact sheet",
        description="Write procedural talking heads in the shared layout: OUT/id000 ... one folder per identity "
        "(transforms_{train,val,novel}.json, frames and masks under train/, val/ and novel/, bg.png, audio.wav (a "
        "voice that follows the mouth) and synth_identity.json), OUT/synth.json (the settings, written last) and "
        "OUT/contact_sheet.png.",
    )
    _positional_or_option(p, "out", "output folder")
    p.add_argument("--identities", type=int, default=d.n_identities, help=_field_help(SynthConfig, "n_identities"))
    p.add_argument("--frames", type=int, default=d.n_frames, help=_field_help(SynthConfig, "n_frames"))
    p.add_argument("--size", type=int, default=d.size, help=_field_help(SynthConfig, "size"))
    p.add_argument("--seed", type=int, default=d.seed, help=_field_help(SynthConfig, "seed"))
    p.add_argument("--first-identity", type=int, default=d.first_identity, metavar="K",
                   help=_field_help(SynthConfig, "first_identity"))
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help=_field_help(SynthConfig, "val_fraction"))
    p.add_argument("--novel-frames", type=int, default=d.novel_frames, help=_field_help(SynthConfig, "novel_frames"))
    p.add_argument("--expression-style", type=float, default=d.expression_style,
                   help=_field_help(SynthConfig, "expression_style"))
    p.add_argument("--novel-poses", choices=("own", "train"), default=d.novel_poses,
                   help=_field_help(SynthConfig, "novel_poses"))
    p.add_argument("--overwrite", action="store_true", help=_field_help(SynthConfig, "overwrite"))
    p.add_argument("--no-contact-sheet", action="store_true", help="do not write OUT/contact_sheet.png")
    p.set_defaults(func=_run_synth)


SYNTH_OPTIONS = dict(n_identities="--identities", n_frames="--frames", size="--size", seed="--seed",
                     first_identity="--first-identity",
                     val_fraction="--val-fraction", novel_frames="--novel-frames",
                     expression_style="--expression-style", novel_poses="--novel-poses")
"""The options of synth (and demo) for the arguments of ``fastminerf.data.synth.generate`` they set."""


class _DrawnOnUse:
    """A rich ``Progress`` shown from its first update on, as :class:`_TrainProgress`: a refusal of the settings, which
    comes before any work reports progress, is printed with nothing drawn above it (an empty bar, a blank line).
    ``with _DrawnOnUse(bar) as show:``; each progress callback calls ``show()`` before updating ``bar``."""

    def __init__(self, bar) -> None:
        self.bar, self.started = bar, False

    def __enter__(self):
        return self.show

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc) if self.started else None

    def show(self) -> None:
        if not self.started:
            self.bar.__enter__()
            self.started = True


@contextlib.contextmanager
def _named_options(options: dict):
    """A library's refusal of an argument's value (:class:`fastminerf.config.ArgumentValueError`) given with the
    option the user typed for it (``options``: argument name -> option)."""
    from .config import ArgumentValueError

    try:
        yield
    except ArgumentValueError as exc:
        if exc.name not in options:
            raise
        raise ValueError(f"{options[exc.name]} {exc.reason}") from None


def _run_synth(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .config import SynthConfig
    from .data.synth import contact_sheet, generate

    args.out = _given(args, "out")
    cfg = SynthConfig(
        n_identities=args.identities,
        n_frames=args.frames,
        size=args.size,
        seed=args.seed,
        first_identity=args.first_identity,
        val_fraction=args.val_fraction,
        novel_frames=args.novel_frames,
        expression_style=args.expression_style,
        novel_poses=args.novel_poses,
        overwrite=args.overwrite,
    )
    console = _console()
    start = time.perf_counter()
    bar = Progress(
        TextColumn("[bold]synth[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = bar.add_task("render", total=None)
    with _DrawnOnUse(bar) as show:

        def progress(done: int, total: int) -> None:
            show()
            bar.update(task, completed=done, total=total)

        kwargs = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
        with _named_options(SYNTH_OPTIONS):
            dirs = generate(args.out, progress=progress, **kwargs)
    elapsed = time.perf_counter() - start
    console.print(f"wrote {counted(len(dirs), 'identity', 'identities')} to {args.out} in {elapsed:.1f} s")
    if not args.no_contact_sheet:
        sheet = contact_sheet(dirs, Path(args.out) / "contact_sheet.png")
        console.print(f"contact sheet: {sheet}")
    return 0


# ---------------------------------------------------------------------------------------------- prepare


NEW_VIEW_DEG = 3.0
"""``prepare`` and ``eval`` name the videos / identities whose held-out frames are on average farther than this from
every training head pose (on the nine real clips, the four clips beyond it are the four with the lowest held-out
PSNR)."""

_PREPARE_OPTIONS = (("size", int), ("fps", float), ("max_frames", int), ("val_fraction", float),
                    ("test_fraction", float), ("expression_dim", int), ("crop_scale", float), ("focal_factor", float),
                    ("min_frames", int), ("track_region_scale", float), ("basis", str))
"""The `PrepareConfig` fields `fastminerf prepare` takes as options (`--max-frames` for `max_frames`), with their types;
`--overwrite` is a switch beside them."""


def _add_prepare(sub: "argparse._SubParsersAction") -> None:
    from .config import PrepareConfig

    d = PrepareConfig()
    h = lambda name: _field_help(PrepareConfig, name)  # noqa: E731
    p = sub.add_parser(
        "prepare",
        help="turn talking-face videos into a training dataset (mediapipe tracking, head pose, shared expressions)",
        description="Track the face in every frame of each video (mediapipe face mesh, 478 landmarks), estimate head "
        "pose and expression (one expression basis shared by all videos in OUT), segment the person, and write "
        "OUT/<video name>/ in the shared layout (transforms_{train,val,test}.json, frames, masks, bg.png, audio.wav, "
        "landmarks.npz) with a contact_sheet.png to check the tracking and prepare.json (counts, crop, settings, pose "
        "gaps), and the basis in OUT/expression_basis.npz (for --basis). Rerunning the same command resumes; a video that fails is "
        "reported and the others still finish.",
    )
    p.add_argument("videos", nargs="+", type=Path, metavar="VIDEO", help="video files (mp4, mov, webm, ...)")
    p.add_argument("--out", required=True, type=Path, help="dataset root (one identity folder per video)")
    for name, kind in _PREPARE_OPTIONS:
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name), help=h(name))
    p.add_argument("--overwrite", action="store_true", help=h("overwrite"))
    p.set_defaults(func=_run_prepare)


class _NativeStderrTo:
    """Send file descriptor 2 to a file while mediapipe runs: its C++ code logs to stderr directly (TensorFlow
    Lite delegate notices, absl warnings), which would tear up the progress display."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        import os

        sys.stderr.flush()
        self.saved = os.dup(2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "ab")
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        import os

        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.close()
        return False


def _shell_arg(path) -> str:
    """``path`` as one argument of a command line to copy: shell-quoted (names may hold spaces, quotes, brackets), and
    './-clips' for a relative '-clips', which the shell would pass as an option."""
    import shlex

    text = str(path)
    return shlex.quote(os.path.join(".", text) if text.startswith("-") else text)


def _prepare_progress(console, prefix: str = ""):
    """prepare's display and the ``progress(stage, name, done, total)`` that draws it: a line of its own for each
    stage of each video, named (``prefix`` before the name), with that stage's count (frames tracked, frames
    written; the one-step fits 0/1 to 1/1). Returns ``(bar, progress)``; the caller enters the bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Column

    titles = {"track": "track", "frames": "crop, segment, write", "cameras": "pose, expression", "basis": "shared face model"}
    # The time left, as train, synth and render show it (a long video tracks for many minutes); the stage and video
    # name in the one column that gives way (cut with an ellipsis) when the line is too long: a log file or pipe is
    # 80 columns to rich, where a long video's frame count was cut to '500/10…' instead.
    bar = Progress(TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
                   BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console, expand=True)
    tasks = {}

    def progress(stage: str, name: str, done: int, total: int) -> None:
        key = (stage, name)
        if key not in tasks:
            label = f"{prefix}{titles.get(stage, stage)} {name}".strip()
            tasks[key] = bar.add_task(label, total=total or None)
        bar.update(tasks[key], completed=done, total=total or None)

    return bar, progress


def _run_prepare(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .config import PrepareConfig
    from .prepare import MediapipeMissing, check_prepare, prepare, require_mediapipe

    try:
        require_mediapipe()
    except MediapipeMissing as exc:
        _console(stderr=True).print(_styled("bold red", "error:", exc), markup=True)
        return 2
    cfg = PrepareConfig(overwrite=args.overwrite, **{name: getattr(args, name) for name, _ in _PREPARE_OPTIONS})
    with _named_options({name: "--" + name.replace("_", "-") for name, _ in _PREPARE_OPTIONS}):
        check_prepare(args.videos, args.out, cfg)  # before the log is opened in OUT and the bar drawn
    console = _console()
    start = time.perf_counter()
    bar, progress = _prepare_progress(console)
    from .data.writer import made_folder

    # OUT made for the log is removed with it when nothing else was written there (every video missing)
    with made_folder(args.out, leftovers=("prepare.log",)), bar, _NativeStderrTo(args.out / "prepare.log"):
        result = prepare(args.videos, args.out, cfg, progress=progress)
    table = Table(title=f"prepared into {result.root} ({time.perf_counter() - start:.1f} s)")
    table.add_column("video", no_wrap=True)  # whole, the table as wide as it needs (_print_whole): in a log (80
    # columns) it was cut to 'hdtf_WDA…', and the rows of clips named alike could not be told apart
    for col in ("status", "frames used", "dropped", "train/val/test", "crop (x0, y0, side)", "val/test pose gap (deg)"):
        table.add_column(col)
    for v in result.videos:
        split = "/".join(str(v.splits.get(s, 0)) for s in ("train", "val", "test")) if v.splits else ""
        gaps = "/".join(f"{v.pose_gaps[s]:.1f}" if s in v.pose_gaps else "-" for s in ("val", "test")) if v.pose_gaps else ""
        table.add_row(v.name, v.status, str(v.frames_used), str(v.frames_dropped), split, str(v.crop or ""), gaps)
    _print_whole(console, table)
    if result.basis is not None:
        how = "reused" if result.basis_reused else "fitted on these videos"
        console.print(f"expression basis ({result.expression_dim} coefficients, {how}; space {result.expression_space}): "
                      f"{result.basis}")
    for v in result.videos:
        for note in v.notes:
            console.print(_styled("yellow", "note", f"{v.name}: {note}"), markup=True)
        far = {s: g for s, g in v.pose_gaps.items() if g > NEW_VIEW_DEG}
        if far:
            console.print(_styled("yellow", "note", f"{v.name}: its {' and '.join(far)} frames show the head "
                          f"{' / '.join(f'{g:.1f}' for g in far.values())} degrees on average from the nearest training "
                          "pose, sides the training frames never show: held-out PSNR there measures new views"), markup=True)
        if v.contact_sheet is not None:
            console.print(f"contact sheet: {v.contact_sheet}")
    for v in result.failed:
        _console(stderr=True).print(_styled("bold red", "failed", f"{v.name}: {v.error}"), markup=True)
    if any(v.splits for v in result.videos):
        if result.basis_reused:  # in a generic model's expression space: new people to add to it. Their folders, not
            # the root: it may hold the model's own people too, and personalize refuses known and new ones together
            new = " ".join(_shell_arg(v.out_dir) for v in result.videos if v.splits and v.out_dir is not None)
            console.print(f"next: fastminerf personalize --run GENERIC_RUN --data {new} --out RUN (or train)",
                          highlight=False)
        else:
            console.print(f"next: fastminerf train --data {_shell_arg(result.root)} --out RUN --config video",
                          highlight=False)
    return 2 if result.failed else 0


# ---------------------------------------------------------------------------------------------- train


class _TrainProgress:
    """Rich progress for :func:`fastminerf.train.train` / ``personalize``: steps, loss, PSNR, rays/s, time left."""

    def __init__(self, console, title: str, total_steps: int, max_seconds: Optional[float]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Column

        self.max_seconds = max_seconds
        self.total = total_steps
        # The statistics last, in the one column that gives way (cut with an ellipsis) when the line is too long: a log
        # file or pipe is 80 columns to rich, where they cut the step count and the elapsed time to '…' instead.
        self.bar = Progress(
            TextColumn(f"[bold]{title}[/bold]"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left {task.fields[left]}"),
            TextColumn("{task.fields[stats]}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
            console=console,
            expand=True,
            # between logged steps only the elapsed time changes, in seconds: rich's 10 redraws a second cost 11 ms of
            # CPU a second in a terminal beside a one-thread training
            refresh_per_second=1,
        )
        self.task = self.bar.add_task(title, total=total_steps, stats="", left="?")

    def __enter__(self):  # the bar is drawn from the first logged step on: a refusal of the data comes without it
        self.started = False
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc) if self.started else None

    def __call__(self, rec: dict) -> None:
        if not self.started:
            self.bar.__enter__()
            self.started = True
        step, secs = int(rec["step"]), float(rec["seconds"])
        rate = step / max(secs, 1e-9)
        left = (self.total - step) / max(rate, 1e-9)
        if self.max_seconds:
            left = min(left, max(0.0, self.max_seconds - secs))
        stats = (f"psnr {rec['psnr']:.2f} dB  loss {rec['loss']:.4f}  {rec['rays_per_s']:,.0f} rays/s  "
                 f"{rec['samples_per_ray']:.1f} samples/ray")
        self.bar.update(self.task, completed=step, stats=stats, left=f"{left:.0f}s")


def _add_run_options(p: argparse.ArgumentParser, steps_key: str = "train.steps") -> None:
    """``--steps`` (which sets ``steps_key``: personalize reads ``train.personalize_steps``), ``--max-seconds`` and
    ``--same-pixels``."""
    p.add_argument("--steps", type=int, default=None, help=f"optimisation steps (overrides {steps_key})")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this many training seconds")
    p.add_argument("--same-pixels", action="store_true",
                   help="the training files were only re-encoded since the run was trained on them (PNGs re-saved at "
                        "another compression level, or optimised by oxipng): resume on them (a run keeps a fingerprint "
                        "of each file's bytes, not of its pixels, and refuses other files otherwise); names, cameras "
                        "and expressions are still checked")


def _add_train(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "train",
        help="train one MI-NeRF on every identity given (resumes when OUT holds a checkpoint)",
        description="Generic training on all identities of --data. Writes OUT/config.yaml, OUT/checkpoint.pt "
        "(atomically, periodically), OUT/log.jsonl and, at the end, OUT/curve.png (loss and PSNR against the step). "
        "Rerunning the same command resumes.",
    )
    p.add_argument("--data", nargs="+", required=True, type=Path, help="identity folders or dataset roots")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--config", default=None, help="preset name (tiny, cpu, video, gpu, nerface) or YAML file; default cpu. "
                   "A file holds what differs from the defaults of fastminerf/config.py, or from the preset its "
                   "'extends: NAME' names; a run's OUT/config.yaml trains the same run again")
    _add_run_options(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.field.conditioning=concat (repeatable)")
    _add_device(p, "where it trains (sets train.device; default the config's, auto in the presets: a CUDA GPU where "
                   "torch sees one, else the CPU): auto, cpu, cuda or cuda:N", default=None)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    overrides = _device_override(args, list(args.overrides))
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.max_seconds is not None:
        overrides.append(f"train.max_seconds={args.max_seconds}")
    cfg = load_config(args.config, overrides)
    console = _console()
    with _TrainProgress(console, "train", cfg.train.steps, cfg.train.max_seconds) as progress:
        result = train(cfg, args.data, args.out, progress=progress, same_pixels=args.same_pixels)
    for note in result.notes:
        console.print(_styled("yellow", "note", note), markup=True)
    if result.step == 0:  # no loss or PSNR to give: say why
        console.print(_no_step("trained", result, cfg.train.steps, "train.steps", cfg.train.max_seconds))
        return 0
    if result.resumed_from and result.step == result.resumed_from:  # resumed, and no step taken: say why
        console.print(_nothing_to_do(result, cfg.train.steps, "train.steps", cfg.train.max_seconds))
        return 0
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from else ""
    console.print(f"trained {counted(result.step, 'step')} in {result.seconds:.1f} s{resumed}: loss {result.loss:.5f}, "
                  f"train psnr {result.psnr:.2f} dB; run in {result.out_dir}{f', its curve {result.curve}' if result.curve else ''}")
    return 0


def _no_step(done: str, result, steps: int, key: str, limit) -> str:
    """The closing line of a train or personalize that took no step (its loss and PSNR are NaN): why none was."""
    if steps == 0:
        why = f"--steps 0 ({key}) asks for none"
    elif limit is not None and result.seconds >= limit:
        why = (f"the time limit (--max-seconds / train.max_seconds {plain_number(limit)} s) was spent before the first "
               f"step, in {result.seconds:.3g} s of setup (carving the occupancy grid and starting the torso layer count as "
               "training time); give a longer limit")
    else:
        why = "it stopped before the first step"
    return f"{done} no step: {why}. Run in {result.out_dir}"


def _nothing_to_do(result, steps: int, key: str, limit) -> str:
    """The closing line of a train or personalize that resumed a run and took no step: why there was nothing to do
    ('trained 1220 steps (resumed from step 1220)' read as if it had trained)."""
    if result.step >= steps:
        why = (f"{result.out_dir} is at step {result.step}, {'past' if result.step > steps else 'already at'} --steps "
               f"{steps} ({key}); give more steps to train it further")
    elif limit is not None and result.seconds >= limit:
        why = (f"{result.out_dir} has trained {result.seconds:.1f} s, its time limit (--max-seconds / train.max_seconds "
               f"{plain_number(limit)} s) spent; give a longer one to train it further")
    else:
        why = f"{result.out_dir} stopped before its first step after step {result.step}"
    return f"nothing to train: {why}"


def _add_personalize(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "personalize",
        help="add new identities to a trained generic model from a short clip, or fine-tune known ones",
        description="New identities: fit their identity and frame codes, then briefly fine-tune the shared weights. "
        "Identities the model already knows (given with the data it was trained on): fine-tune the shared weights "
        "and their codes on their frames alone (MI-NeRF's per-identity fine-tuning: they render better, the model's "
        "other identities worse). Writes a new run holding every identity.",
    )
    p.add_argument("--run", required=True, type=Path, help="generic run folder (made by `fastminerf train`)")
    p.add_argument("--data", nargs="+", required=True, type=Path,
                   help="identity folders: all new to the model, or all known to it")
    p.add_argument("--out", required=True, type=Path, help="new run folder (with --each: a folder of runs)")
    p.add_argument("--each", action="store_true",
                   help="one run per identity of --data, in OUT/<identity>, each fine-tuned or personalised alone "
                        "(--steps and --max-seconds apply to each); score them together with eval --run OUT/*")
    _add_run_options(p, "the generic run's train.personalize_steps")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a train/sampler/data setting of the generic run for this personalisation, e.g. "
                   "--set train.personalize_tune=all (repeatable)")
    _add_device(p, "where it trains (sets train.device; default the generic run's, auto in the presets: a CUDA GPU "
                   "where torch sees one, else the CPU): auto, cpu, cuda or cuda:N", default=None)
    p.set_defaults(func=_run_personalize)


def _run_personalize(args: argparse.Namespace) -> int:
    from .train import personalize, personalize_config, run_config

    # personalize's own settings, checked before any progress bar (--steps -3 drew one of 0/-3 first); the generic
    # run's config only: personalize() loads the run itself
    args.overrides = _device_override(args, list(args.overrides))
    pcfg = personalize_config(run_config(args.run), args.overrides, args.steps, args.max_seconds)
    steps, limit = pcfg.train.personalize_steps, pcfg.train.max_seconds
    console = _console()
    if args.each:
        from .data.layout import find_identity_dirs

        jobs = [(d.name, [d], args.out / d.name) for d in find_identity_dirs(args.data)]
    else:
        jobs = [("personalize", args.data, args.out)]
    for title, data, out in jobs:
        with _TrainProgress(console, title, steps, limit) as progress:  # --max-seconds, else --set train.max_seconds
            result = personalize(args.run, data, out, steps=steps, max_seconds=args.max_seconds, progress=progress,
                                 overrides=args.overrides, same_pixels=args.same_pixels)
        for note in result.notes:
            console.print(_styled("yellow", "note", note), markup=True)
        if result.step == 0:
            console.print(_no_step("personalised with", result, steps, "train.personalize_steps", limit))
            continue
        if result.resumed_from and result.step == result.resumed_from:
            console.print(_nothing_to_do(result, steps, "train.personalize_steps", limit))
            continue
        resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from else ""
        console.print(f"personalised in {counted(result.step, 'step')}, {result.seconds:.1f} s{resumed}: train psnr "
                      f"{result.psnr:.2f} dB; run in {result.out_dir}{f', its curve {result.curve}' if result.curve else ''}")
    return 0


# ------------------------------------------------------------------------------------- render, eval, demo


_MOVED_DATA = "give the folders where it is now with {option}"


def _run_exists(run: Path) -> None:
    """Refuse a run folder that is not there, naming it (before anything else of the run is read)."""
    from .render import RenderError

    if not Path(run).exists():
        raise RenderError(f"run folder {run} does not exist")


def _open_run(run: Path, render_steps: Optional[int] = None, device="cpu"):
    """``load_run`` with a clear error for a missing folder: ``(config, model on device, metadata)``; ``render_steps``
    (the ``--render-steps`` of render and eval) changes the model's marching steps outside training."""
    from .render import RenderError, set_render_steps
    from .train import load_run

    _run_exists(run)
    cfg, model, meta = load_run(run, device=device)
    if render_steps is not None:
        set_render_steps(model, render_steps)
    return cfg, model, meta


def _untuned_sources(meta: dict, names: Sequence[str]) -> dict:
    """For each of ``names`` (identities a personalisation's run neither added nor fine-tuned), the run that last
    trained it without its shared weights being tuned for someone else: ``generic_run`` followed back past the
    personalisations tuned for others to the one that added or fine-tuned it, or to the ``train`` run; None where
    the chain cannot be followed (a run not recorded, gone or unreadable)."""
    from .train import CHECKPOINT_NAME, CheckpointError, _moved_with, load_checkpoint

    sources, left, run, seen = {}, list(names), meta.get("generic_run"), set()
    while left and run is not None and run not in seen:
        seen.add(run)
        path = Path(run) / CHECKPOINT_NAME
        try:
            data = load_checkpoint(path)
        except CheckpointError:
            break
        own = set(map(str, data.get("added", []))) | set(map(str, data.get("refined", [])))
        generic = data.get("kind", "train") != "personalize"
        for n in [n for n in left if generic or n in own]:
            sources[n] = (run, generic)
            left.remove(n)
        run = _moved_with(data.get("generic_run"), data.get("generic_run_relative"), path.parent)
    return {n: sources.get(n) for n in names}


def _not_personalised(run: Path, meta: dict, names: Sequence[str]) -> Optional[str]:
    """A note when identities ``names`` are rendered from a personalisation's run that neither added nor fine-tuned
    them: the shared weights were fine-tuned for other people (the procedural heads' `val` frames lose 6-7 dB), so
    they render as they were trained only from the run that last trained them (the generic run, or the
    personalisation that added or fine-tuned them, :func:`_untuned_sources`). None otherwise (or for checkpoints
    that do not record whom they personalised)."""
    own = meta.get("added", []) + meta.get("refined", [])
    others = [n for n in names if n not in own]
    if meta.get("kind") != "personalize" or not own or not others:
        return None
    groups = {}
    for n, source in _untuned_sources(meta, others).items():
        groups.setdefault(source, []).append(n)

    def where(source, who) -> str:
        if source is None:
            return "a run whose shared weights were not fine-tuned for someone else"
        path, generic = source
        return f"the generic run {path}" if generic else f"{path}, the run personalised for {some_of(who)}"

    verb = "renders" if len(others) == 1 else "render"
    said = f"{run} was personalised for {some_of(own)}: {some_of(others)} {verb} worse from it than from "
    if len(groups) == 1:
        (source, who), = groups.items()
        return said + f"{where(source, who)}, whose shared weights were not fine-tuned for {some_of(own)}"
    return said + "; ".join(f"{where(source, who)} ({some_of(who)})" for source, who in groups.items())


_RENDER_STEPS_HELP = ("ray-marching steps across the head box (default: the run's model.eval_render_steps, 256 in the cpu "
                      "and video presets); 128 renders about twice as fast and a little softer (-0.06 dB on the real "
                      "clips); at most 4 a cell of the field's finest grid along the box diagonal (finer samples nothing more)")


def _add_device(p: argparse.ArgumentParser, help: Optional[str] = None, default: Optional[str] = "auto") -> None:
    """``--device`` (refused by :func:`_device` before any work), with its ``help`` for the command."""
    p.add_argument("--device", default=default, metavar="auto|cpu|cuda|cuda:N",
                   help=help or "where the model renders: auto (default, as train.device: a CUDA GPU where torch sees "
                                "one, else the CPU), cpu, cuda or cuda:N")


def _device_override(args: argparse.Namespace, overrides: List[str]) -> List[str]:
    """``overrides`` with train's and personalize's ``--device`` as ``train.device`` (after the --set ones: the
    option wins, as --steps does), the device refused first, naming --device."""
    if args.device is None:
        return overrides
    _device(args)
    return overrides + [f"train.device={args.device}"]


def _device(args: argparse.Namespace):
    """``--device`` as a torch device, refused before any work when it cannot run here (naming the option)."""
    from .train import resolve_device

    return resolve_device(args.device, "--device")


def _frames_progress(console, title: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn(f"[bold]{title}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _add_render(sub: "argparse._SubParsersAction") -> None:
    from . import render  # loaded with the package already: its constants cost --help nothing

    p = sub.add_parser(
        "render",
        help="render an identity driven by another dataset's expressions and head motion (--drive), a camera orbit "
             "(--orbit), or saying a recording (--speech, lip sync)",
        description="Render identity NAME of a trained run to an mp4: with --drive, the expressions and head motion "
        "of a driver's frames (cross-identity expression transfer, head poses per --pose; 'delta' moves NAME's neutral face by the "
        "driver's change from its own neutral face, neutral = the train frame with the smallest expression norm); "
        "with --orbit, a camera orbit at NAME's neutral expression; with --speech, NAME saying a recording (lip "
        "sync through a speech model, see fastminerf speech). Any of them over NAME's own background or, with "
        "--background, over a colour or an image, and with --alpha carrying the person's opacity (RGBA PNG frames, "
        "a matte video) to composite later.",
    )
    p.add_argument("--run", required=True, type=Path, help="run folder (made by train or personalize)")
    p.add_argument("--identity", required=True, help="identity to render (its name in the run)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--drive", metavar="PATH[:SPLIT]",
                     help="driver identity folder (or root) and split (default train), or a video file: prepared "
                          "first (cached in RUN/drivers/; where the run cannot be written, a finished cache there is used "
                          "as it is, else a temporary folder for this render) with the run's expression basis")
    src.add_argument("--orbit", action="store_true",
                     help="render a camera orbit instead: about NAME's mean view, as far each way as its training "
                          "views reach unless --yaw / --pitch say")
    src.add_argument("--speech", type=Path, metavar="AUDIO",
                     help="a recording (wav, mp3, m4a, or a video's sound) for NAME to say: expressions from a speech "
                          "model (fastminerf speech), head poses from NAME's own training frames")
    p.add_argument("--speech-model", type=Path, default=None,
                   help="the speech model for --speech (default RUN/speech.pt, written by fastminerf speech --run RUN)")
    p.add_argument("--out", required=True, type=Path, help="output mp4")
    p.add_argument("--transfer", choices=["delta", "absolute"], default=None, help="expression transfer mode of a --drive video (default delta)")
    p.add_argument("--pose", choices=["relative", "driver", "target", "still"], default=None,
                   help="head poses of a --drive video: 'relative' (default) moves NAME's head about its mean training "
                        "pose as the driver's head moves about its own, in NAME's framing (the head stays on NAME's "
                        "shoulders); 'driver' takes the driver's cameras as they are (its framing); 'target' plays "
                        "NAME's own training head poses; 'still' holds NAME's mean pose")
    p.add_argument("--driver-identity", default=None, help="driver name when the --drive folder holds several")
    p.add_argument("--target-data", nargs="+", type=Path, default=None,
                   help="folders holding NAME's training data, and beside them the expression basis a --drive video "
                        "is prepared with (default: the run's own data paths; give them when the data moved)")
    p.add_argument("--frames", type=int, default=None,
                   help=f"frames of an orbit (default {render.ORBIT_FRAMES}), or the first frames of a driven or "
                        "--speech video, counted at its --fps (default all)")
    p.add_argument("--fps", type=float, default=None, help=f"frame rate (default: the driver's; with --speech, the target's; {render.DEFAULT_FPS:g} for an orbit); a driven or "
                        "--speech video keeps its clock at any rate (frames repeated or dropped, the sound in time)")
    p.add_argument("--yaw", type=float, default=None, metavar="DEG",
                   help="an orbit's left-right swing each way (default: as far as NAME's training views reach, a few "
                        "degrees for a talking-head video: beyond them the model guesses)")
    p.add_argument("--pitch", type=float, default=None, metavar="DEG",
                   help="an orbit's up-down swing each way (default: as far as NAME's training views reach)")
    p.add_argument("--png-dir", type=Path, default=None,
                   help="also write every frame as PNG into this folder: the render's exact 8-bit values, for "
                        "comparisons (the mp4 is lossy: H.264 at crf 10, its chroma at half resolution)")
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help=f"the video's longer side in pixels, {render.MIN_RENDER_SIZE} to {render.MAX_RENDER_SIZE} "
                        "(default: NAME's frame size; with --pose driver, the driver's): the NeRF renders at any "
                        "resolution, e.g. 512 for a model trained on 256 px frames, or 128 for a quick preview. The "
                        "other side keeps the frames' aspect; the focal lengths and principal point scale with the "
                        "image, the background (own bg.png or an image) is resized to it (bilinear, antialiased when shrinking), "
                        "a --beside-driver driver half scaled to its height. An odd side is exact in "
                        "--png-dir frames and padded by one replicated row or column in the mp4 (H.264's yuv420p "
                        "needs even sizes)")
    p.add_argument("--background", default="own", metavar="own|COLOUR|IMAGE",
                   help="what the person (head and torso) is composited over: 'own' (default) NAME's own background "
                        "(bg.png); a colour, a name (white, black, grey, lime, ...; CSS names: 'green' is #008000, "
                        "a green screen's #00FF00 is 'lime') or #RRGGBB; or an image file, resized to the frame. "
                        "E.g. --background lime --alpha --png-dir frames/")
    p.add_argument("--alpha", action="store_true",
                   help="with the person's opacity: --png-dir frames are RGBA PNGs with straight (unassociated) "
                        "alpha, and beside OUT.mp4 a grey matte video OUT_alpha.mp4 (white = the person; mp4 has no "
                        "alpha channel). Not with --beside-driver")
    p.add_argument("--no-audio", dest="audio", action="store_false",
                   help="a silent video (default: a --drive video carries the driver's audio.wav, or a driver video's own "
                        "sound, cut to its frames; a --speech video the recording, at its own rate and channels; an "
                        "orbit has no sound)")
    p.add_argument("--beside-driver", action="store_true",
                   help="with --drive: each frame shows the driver's frame left of the render, labelled, to judge the "
                        "transfer by (both enlarged to at least 128 px)")
    p.add_argument("--render-steps", type=int, default=None, metavar="N", help=_RENDER_STEPS_HELP)
    _add_device(p)
    p.set_defaults(func=_run_render)


def _run_render(args: argparse.Namespace) -> int:
    import numpy as np

    from .render import driver_notes
    from .prepare.video import VIDEO_SUFFIXES, probe
    from .render import drive_path, driver_from_video, load_driver, load_target, orbit_path, orbit_reach, parse_drive
    from .render import background_image, check_outputs, render_video
    from .render import training_basis
    from .data.writer import check_folder

    from . import render
    from .config import check_fps
    from .render import RenderError, identity_id
    from .train import run_data_paths

    if args.frames is not None and args.frames < 1:  # an orbit would otherwise take 0 for its default
        raise RenderError(f"--frames must be at least 1, got {args.frames}")
    if args.fps is not None:  # ffmpeg wrote 0 as 16 fps; a negative or infinite rate failed at the end, 1e9 ran out
        with _named_options({"fps": "--fps"}):  # of memory repeating a driver's frames
            check_fps(args.fps)
    if args.size is not None:  # before the model is read and a driver prepared
        with _named_options({"size": "--size"}):
            render.check_render_size(args.size)
    for option, given in (("--drive", None if args.drive is None else parse_drive(args.drive)[0]),
                          ("--speech", args.speech)):
        if given is not None and Path(given).resolve() == args.out.resolve():  # replaced once rendered
            raise RenderError(f"--out {args.out} is {option} {given}, the recording the video is made from: writing "
                              "the video would replace it; give another --out")
    device = _device(args)
    console = _console()
    source = "--orbit" if args.orbit else "--speech" if args.speech is not None else "--drive"
    for applies, given in (("--drive", {"--transfer": args.transfer, "--pose": args.pose,
                                        "--driver-identity": args.driver_identity,
                                        "--beside-driver": args.beside_driver or None}),
                           ("--orbit", {"--yaw": args.yaw, "--pitch": args.pitch}),
                           ("--speech", {"--speech-model": args.speech_model})):
        unused = [option for option, value in given.items() if value is not None]
        if unused and source != applies:  # they were ignored without a word
            console.print(_styled("yellow", "note", f"{', '.join(unused)} appl{'ies' if len(unused) == 1 else 'y'} to "
                                                    f"{applies} only, not to {source}: ignored"), markup=True)
    args.transfer, args.pose = args.transfer or "delta", args.pose or "relative"
    args.beside_driver = args.beside_driver and source == "--drive"
    if args.alpha and args.beside_driver:  # before the model is read and a driver prepared
        raise RenderError("--alpha with --beside-driver: the driver's frame beside the render has no alpha; render "
                          "the person alone for compositing")
    # a bad colour or a missing image: said before any work ('own' is NAME's, read with its data below)
    background_image(args.background, np.zeros((1, 1, 3), np.uint8), 1, 1)
    check_outputs(args.out, args.png_dir, args.alpha)  # what write_video would refuse only after the driver's preparation
    voice = None
    if args.speech is not None:  # the speech model and the recording, before the run's model and data are read
        from .speech import load_speech, load_speech_model

        _run_exists(args.run)
        voice = load_speech_model(args.speech_model or Path(args.run) / "speech.pt"), load_speech(args.speech)
    _, model, meta = _open_run(args.run, args.render_steps, device)
    # fail early, naming the identity; then its spelling in the run (a name typed in the other Unicode form finds it)
    args.identity = model.identity_names[identity_id(model, args.identity)]
    note = _not_personalised(args.run, meta, [args.identity])
    if note:
        console.print(_styled("yellow", "note", note), markup=True)
    data_paths = args.target_data or run_data_paths(meta, _MOVED_DATA.format(option="--target-data"), args.identity)
    target = load_target(data_paths, args.identity)
    late = silent = None  # what the summary says of the sound: the drive branch's, of the driver's audio.wav
    if args.orbit:
        path = orbit_path(target, args.identity, n_frames=args.frames or render.ORBIT_FRAMES, yaw_deg=args.yaw, pitch_deg=args.pitch)
        reach = orbit_reach(target, args.identity)
        beyond = [f"--{name} {value:g}" for name, value, far in (("yaw", args.yaw, reach[0]), ("pitch", args.pitch, reach[1]))
                  if value is not None and abs(value) > far]
        if beyond:  # --help says the model guesses there; the video did not
            console.print(_styled("yellow", "note", f"{' and '.join(beyond)} swing{'s' if len(beyond) == 1 else ''} "
                                                    f"beyond {args.identity}'s training views (they reach "
                                                    f"{reach[0]:.1f} degrees left-right and {reach[1]:.1f} up-down "
                                                    "each way): the model guesses the head there"), markup=True)
        what = f"orbit of {args.identity}"
    elif args.speech is not None:
        from .render import speech_path

        # the recording itself: the video's soundtrack as it is (its rate and channels), the model hearing 16 kHz mono
        path = speech_path(target, args.identity, voice[0], args.speech, fps=args.fps, heard=voice[1])
        if args.frames and args.frames > len(path):  # fewer frames than asked, without a word
            console.print(_styled("yellow", "note", f"--frames {args.frames}: the recording ({voice[1].seconds:.2f} s) "
                                                    f"gives {counted(len(path), 'frame')} at {path.fps:g} fps, all "
                                                    "rendered"), markup=True)
        if args.frames:
            path = path.head(args.frames)
        what = f"{args.identity} saying {args.speech.name}"
    else:
        folder, split = parse_drive(args.drive)
        video = folder if folder.is_file() and folder.suffix.lower() in VIDEO_SUFFIXES else None
        if video is not None:  # a raw video: prepare it first
            if not Path(args.drive.strip()).exists():  # VIDEO:SPLIT rendered every frame as 'train', the split dropped
                raise RenderError(f"--drive {args.drive.strip()}: a video driver has no splits (it is prepared whole, "
                                  f"every frame in 'train'); give {folder} alone, with --frames N for its first frames")
            basis = training_basis(data_paths)  # a run without one is refused before the preparation's bar
            drivers = Path(args.run) / "drivers"
            unwritable = found = None
            digests: dict = {}  # the video's content hash: read once, by the cache's check or prepare's
            try:  # a shared, read-only run: prepared all the same, where it can be, for this render
                check_folder(drivers, "the prepared driver", RenderError)
            except RenderError as exc:
                # unless its owner's render prepared it there with these settings: then read where it is
                found = render.finished_driver(folder, basis, drivers, target.table("train").width, args.frames,
                                               fps=args.fps, digests=digests)
                unwritable = exc if found is None else None
            if unwritable is not None:
                import tempfile

                scratch = tempfile.TemporaryDirectory(prefix="fastminerf-driver-")  # removed when the render ends
                drivers = Path(scratch.name)
                # as driver_from_video prepares it: every frame in train (prepare's own 0.1 / 0.1 left the video's
                # last fifth out of the train split DIR/NAME drives with), at the target's size and --fps
                at_fps = f" --fps {args.fps:g}" if args.fps else ""
                console.print(_styled("yellow", "note", f"{unwritable}: the driver is prepared in {drivers} for this render "
                                      f"and removed after it; to keep it for other renders, prepare it once with "
                                      f"fastminerf prepare {video} --out DIR --basis {basis} --val-fraction 0 "
                                      f"--test-fraction 0 --size {target.table('train').width}{at_fps} and drive with "
                                      f"DIR/{video.stem}"), markup=True)
            # prepare's stages, each named with its own count: in one bar of 'frames' the tracking's count was
            # followed by the writing's from 0 and then the pose fit's, which ended it at '1/1 frames'
            if found is not None:  # found above: driver_from_video would read (and hash) the video again to find it
                folder = found
            else:
                bar, progress = _prepare_progress(console, "driver: ")
                with bar:
                    folder = driver_from_video(folder, basis, drivers, target.table("train").width, args.frames,
                                               fps=args.fps, progress=progress, digests=digests)
            for note in driver_notes(folder):  # what prepare says of a video (a cut-short file, frames dropped)
                console.print(_styled("yellow", "note", f"{folder.name}: {note}"), markup=True)
            split = "train"
        elif folder.is_file():  # load_driver would say 'expected an identity folder', nothing of videos
            raise RenderError(f"--drive {folder} is a file, not a video ({', '.join(VIDEO_SUFFIXES)}) nor an identity "
                              "folder")
        driver, driver_name = load_driver(folder, split, args.driver_identity)
        path = drive_path(target, args.identity, driver, split, driver_name, mode=args.transfer, pose=args.pose)
        # at --fps on the driver's clock, then the first --frames of the video (a driver video was cut while it was
        # prepared, at that rate: every frame is one of the video's)
        path = path.at_fps(args.fps)
        if args.frames:
            path = path.head(args.frames)
        # said of audio.wav, the video's sound to 16 kHz mono, which the user knows as the video's sound
        named = None if video is None else f"the sound of {video}"
        late, silent = path.past_recording(named), path.silent_reason(named)
        if video is not None and not silent:
            # the video's own sound, at its rate and channels: on the clock of its frames' times, as its copy is
            path = replace(path, audio=video)
        elif video is not None and path.audio is None and not probe(video).has_audio:
            silent = f"{video} has no audio track"  # not 'no audio.wav', a file the user never made
        what = f"{args.identity} driven by {driver_name}:{split} ({args.transfer}, {args.pose} poses)"
    if late is None:
        late, silent = path.past_recording(), path.silent_reason()
    path = path.at_size(args.size)  # before the background, resized to the video's size
    background = background_image(args.background, target.background(0), path.width, path.height)
    with _frames_progress(console, "render") as bar:
        task = bar.add_task("render", total=len(path))
        info = render_video(model, path, args.identity, args.out, background=background,
                            aabb=model.aabb.tolist(), png_dir=args.png_dir, fps=args.fps,
                            progress=lambda d, t: bar.update(task, completed=d, total=t), audio=args.audio,
                            beside_driver=args.beside_driver, caption=what, alpha=args.alpha)
    extra = f", PNG frames in {info.png_dir}{' (RGBA)' if args.alpha else ''}" if info.png_dir else ""
    if info.alpha_path is not None:
        extra += f", its matte in {info.alpha_path}"
    if info.audio_seconds:
        # to the hundredth: a frame of sound is 0.04 s at 25 fps, which .1f gave as 0.0 s (read as none). The
        # soundtrack lasts the video's whole frames: a recording of 37.5 frames' length is 1.50 s of it, not 1.52
        heard = min(info.audio_seconds, voice[1].seconds) if voice is not None else info.audio_seconds
        extra += f", with {heard:.2f} s of {'the recording' if args.speech else 'the driver' + chr(39) + 's audio'}"
        if late:  # a driver whose recording ends before its frames: silent there
            extra += f" ({late})"
    elif args.audio and not args.orbit and info.path is not None:
        extra += f", silent (the driver: {silent})"
    console.print(f"{what}: {counted(info.n_frames, 'frame')} {info.width}x{info.height} -> {info.path}{extra}")
    return 0


def _metrics_table(result: dict, title: str):
    from rich import box
    from rich.table import Table

    names = result["metrics"]
    # Short headings and numbers that never shrink, so the table fits an 80-column terminal without cutting a value;
    # the caption explains the short headings the table shows, when there are any. Long identity names fold instead.
    boxes = " / ".join(h for m, h in (("face_psnr", "FACE"), ("mouth_psnr", "MOUTH"), ("eye_psnr", "EYE")) if m in names)
    explained = [text for m, text in (("lmd", "LMD in pixels"), ("ear_error", "EAR: eye aspect ratio error"),
                                      ("landmark_depth", "DEPTH: landmark depth error, head units"),
                                      ("pose_gap", "POSE: degrees from the nearest training head pose")) if m in names]
    # the mean row's frames are all the identities', its values the unweighted mean of theirs (metrics.json's mean)
    over = ["mean: of the identities' means, each identity alike"] if len(result["identities"]) > 1 else []
    caption = "; ".join(([f"PSNR in dB: whole frame{f', {boxes} boxes' if boxes else ''}"] if boxes or explained else [])
                        + explained + over) or None
    # No padding: the box's blank divider alone separates columns, so that all eleven metrics eval can report (POSE
    # and LPIPS included) fit 80 columns, the width rich gives a log file or a pipe.
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True, padding=(0, 0))
    table.add_column("identity", overflow="fold", min_width=5)
    table.add_column("frames", justify="right", no_wrap=True)
    fmt = {"psnr": "{:.2f}", "ssim": "{:.3f}", "l1": "{:.4f}", "lpips": "{:.4f}", "face_psnr": "{:.2f}",
           "mouth_psnr": "{:.2f}", "eye_psnr": "{:.2f}", "lmd": "{:.2f}", "ear_error": "{:.3f}", "landmark_depth": "{:.3f}",
           "pose_gap": "{:.1f}"}
    heading = {"psnr": "PSNR", "face_psnr": "FACE", "mouth_psnr": "MOUTH", "eye_psnr": "EYE", "ear_error": "EAR",
               "landmark_depth": "DEPTH", "pose_gap": "POSE"}
    for m in names:
        table.add_column(heading.get(m, m.upper()), justify="right", no_wrap=True)

    def cell(m: str, v: float) -> str:  # a metric without a value there (e.g. no face found for LMD): "-"
        return fmt[m].format(v) if v == v else "-"

    for name, vals in result["identities"].items():
        table.add_row(name, str(vals["frames"]), *[cell(m, vals[m]) for m in names])
    from rich.text import Text

    table.add_row(Text("mean", style="bold"), str(result["frames"]),
                  *[Text(cell(m, result["mean"][m]), style="bold") for m in names])
    return table


def _print_whole(console, table) -> None:
    """Print ``table`` at its natural width (every cell on one line) when it cannot fit the console's: on a narrower
    terminal (COLUMNS=60, a split window) rich cut its numbers ('25.…', a POSE of 1.1 to '1') and squeezed the
    identity names out; its lines now run past the edge (the terminal wraps them) and every value stays whole.
    (Rich's collapse does not keep each column's minimum, so a width between the two still cut values.)"""
    from rich.measure import Measurement

    need = Measurement.get(console, console.options.update_width(1 << 16), table)
    width = console.width
    if need.minimum <= width:
        console.print(table)
        return
    console.width = need.maximum
    try:
        console.print(table)
    finally:
        console.width = width


def _add_eval(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "eval",
        help="render every frame of a split and report PSNR, SSIM and L1 per identity",
        description="Render every frame of SPLIT for each identity of --data (names must be in a run; people of a root that no run knows are left out, named), print a "
        "table and, with --out, write DIR/metrics.json and DIR/side_by_side/<identity>/*.png (prediction | truth | "
        "error, under a header naming identity, split, frame and PSNR; panels enlarged to at least 128 px). LPIPS is added only when the lpips package and its weights are already installed. FACE is the PSNR "
        "inside each frame's face box (bbox); MOUTH inside a box around the real frame's lips (lips, teeth, mouth "
        "interior); EYE inside the boxes around its eyes. LMD (lip sync, as talking-head papers report it) is the "
        "mean distance in pixels between the 40 lip landmarks mediapipe finds in the render and in the truth, and EAR "
        "(blinks) the mean difference of their eye aspect ratios (eye opening over width, ~0.3 open, <0.1 shut), "
        "where mediapipe is installed (make install). Where the data "
        "has landmarks.npz (fastminerf prepare), DEPTH is the median distance in head units between the "
        "rendered depth and the tracked face landmarks along rays through them (the geometry check). Where the "
        "identities have a train split, POSE is the mean angle in degrees from each frame's head pose to the nearest "
        "training one: frames far from every training pose show the head from a side the clip never did. Each "
        "identity's value is the mean over its frames (PSNR a mean of per-frame dB; DEPTH the median above); the mean row is the unweighted "
        "mean over identities, each counted alike however many frames it has.",
    )
    p.add_argument("--run", nargs="+", required=True, type=Path,
                   help="run folder; or several (e.g. a generic run and runs that fine-tuned one identity each, "
                        "personalize --each): each identity is rendered by the run that fine-tuned it, else by the "
                        "first generic run that knows it or the run that added it (two runs that fine-tuned or added "
                        "one identity are refused), else by the first run that knows it")
    p.add_argument("--data", nargs="+", required=True, type=Path, help="identity folders or dataset roots")
    p.add_argument("--split", required=True, help="split to evaluate (e.g. val, test, novel)")
    p.add_argument("--out", type=Path, default=None, help="folder for metrics.json and side-by-side images")
    p.add_argument("--max-frames", type=int, default=None, help="evaluate only the first N frames of each identity")
    p.add_argument("--speech", nargs="?", type=Path, const=True, default=None, metavar="MODEL",
                   help="render every frame with the expression a speech model hears in its identity's audio.wav at "
                        "the frame's time instead of the tracked one (lip sync against the real frames; MODEL defaults "
                        "to RUN/speech.pt, written by fastminerf speech)")
    p.add_argument("--render-steps", type=int, default=None, metavar="N", help=_RENDER_STEPS_HELP)
    _add_device(p)
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .data.layout import DatasetError, find_identity_dirs, identity_splits
    from .render import RenderError, check_eval_out, evaluate

    if args.max_frames is not None and args.max_frames < 1:  # [:0] evaluated nothing, [:-1] all but the last frame
        raise RenderError(f"--max-frames must be at least 1, got {args.max_frames}")
    device = _device(args)
    if args.out is not None:  # evaluate's own check, before the runs and the data are read
        check_eval_out(args.out)
    speech_model = None
    if args.speech is not None:  # likewise the speech model
        from .speech import load_speech_model

        _run_exists(args.run[0])
        speech_file = Path(args.run[0]) / "speech.pt" if args.speech is True else args.speech
        speech_model = load_speech_model(speech_file)
    console = _console()
    # one folder named twice (a glob that holds a run also named on its own) is one run, not two of the same people
    args.run = [run for k, run in enumerate(args.run)
                if Path(run).resolve() not in {Path(r).resolve() for r in args.run[:k]}]
    runs = [(run, *_open_run(run, args.render_steps, device)[1:]) for run in args.run]
    dirs = find_identity_dirs(args.data)
    # A root may also hold people no run knows (a new person prepared into it, to be added by personalize): eval
    # scores those the runs know and names the others. A person's folder named on its own, or a root of no known
    # person, is still refused by _model_per_identity, naming the identity.
    known = {n for _, _, meta in runs for n in meta["identity_names"]}
    named = {Path(p).resolve() for p in args.data}
    unknown = [d for d in dirs if d.name not in known and d.resolve() not in named]
    if unknown and len(unknown) < len(dirs):
        dirs = [d for d in dirs if d not in unknown]
        console.print(_styled("yellow", "note", f"left out {some_of(d.name for d in unknown)} (in "
                              f"{', '.join(sorted({str(d.parent) for d in unknown}))}): "
                              f"{'none of the runs' if len(runs) > 1 else 'the run'} "
                              f"{', '.join(str(r) for r, _, _ in runs)} {'knows' if len(runs) > 1 else 'does not know'} "
                              f"{'it' if len(unknown) == 1 else 'them'} (add a new person with fastminerf personalize)"),
                      markup=True)
    for d in dirs:
        if args.split not in identity_splits(d):
            raise DatasetError(f"identity '{d.name}' has no split '{args.split}'; it has {identity_splits(d)}", file=d)
    # the train split's cameras too (tables only; no frame of it is decoded), for the POSE column
    with_train = args.split != "train" and all("train" in identity_splits(d) for d in dirs)
    data = load_dataset(dirs, splits=("train", args.split) if with_train else (args.split,))
    model = _model_per_identity(runs, data.identities)  # fails before any rendering, naming the identity
    for run, m, meta in runs:
        note = _not_personalised(run, meta, [n for n in data.identities if model[n] is m])
        if note:
            console.print(_styled("yellow", "note", note), markup=True)
    note = _passed_over(runs, model)
    if note:
        console.print(_styled("yellow", "note", note), markup=True)
    expressions, driven = None, None
    if speech_model is not None:
        from .speech import split_expressions

        expressions = split_expressions(speech_model, data, args.split)
        driven = f"speech ({speech_file})"
    with _frames_progress(console, f"eval {args.split}") as bar:
        task = bar.add_task("eval", total=None)
        result = evaluate(model, data, args.split, out_dir=args.out, max_frames=args.max_frames, expressions=expressions,
                          expressions_from=driven, models_from=_run_of(runs, model),
                          progress=lambda d, t: bar.update(task, completed=d, total=t))
    where = str(args.run[0]) if len(args.run) == 1 else f"{len(args.run)} runs"
    _print_whole(console, _metrics_table(result, f"{where} on {args.split}, {result['expressions']} expressions"))
    console.print(f"LPIPS: {result['lpips']}; LMD: {result['lmd']}")
    fewer = [f"{n} ({v['lmd_frames']} of {v['frames']})" for n, v in result["identities"].items()
             if v.get("lmd_frames", v["frames"]) < v["frames"]]
    if fewer:  # LMD and EAR skip frames without a face found in both images: a mean over the others only
        console.print(f"LMD and EAR over fewer frames: {some_of(fewer)}; mediapipe found no face in the render or "
                      "the truth of the others")
    sizes = {n: f"{v['width']}x{v['height']}" for n, v in result["identities"].items() if "width" in v}
    if "lmd" in result["metrics"] and len(set(sizes.values())) > 1:  # the mean's pixels are of several sizes
        console.print(f"LMD in pixels of each person's size ({some_of(f'{n} {s}' for n, s in sizes.items())}): "
                      "compare it between people of one size; the mean mixes pixels of several")
    far = {n: v["pose_gap"] for n, v in result["identities"].items() if v.get("pose_gap", 0.0) > NEW_VIEW_DEG}
    if far:
        console.print(f"new views: {some_of(f'{n} ({g:.1f} deg)' for n, g in far.items())} are seen on average more "
                      f"than {NEW_VIEW_DEG:g} degrees from the nearest training head pose (POSE, the frames' mean), "
                      "sides of the head their clip never showed; expect lower PSNR there (docs: Training on real clips)")
    if args.out is not None:
        console.print(f"wrote {args.out / 'metrics.json'} and side-by-side images in {args.out / 'side_by_side'}")
    return 0


def _model_per_identity(runs, names: Sequence[str]) -> dict:
    """``{identity: model}`` for eval over runs ``(folder, model, meta)``: the run that fine-tuned the
    identity (``personalize`` on a known identity), else the first generic run that knows it or personalisation that
    added it (a personalisation's shared weights were fine-tuned for its own people), else the first run that knows
    it; a RenderError naming the
    identity when none does, or when two runs fine-tuned it or two added it."""
    from .render import RenderError

    chosen = {}
    for name in names:
        tuned = [(run, model) for run, model, meta in runs if name in meta["refined"]]
        added = [run for run, _, meta in runs if name in meta["added"]]
        for what, several in (("fine-tuned", [r for r, _ in tuned]), ("added", added if not tuned else [])):
            if len(several) > 1:
                raise RenderError(f"identity '{name}' was {what} by several runs: {[str(r) for r in several]}; give one")
        knows = [(run, model, meta) for run, model, meta in runs if name in meta["identity_names"]]
        if not knows:
            known = sorted({n for _, _, meta in runs for n in meta["identity_names"]})
            raise RenderError(f"unknown identity '{name}': none of the runs {[str(r) for r, _, _ in runs]} knows it "
                              f"(they know {known})")
        own = [(run, model) for run, model, meta in knows if meta["kind"] == "train" or name in meta["added"]]
        chosen[name] = (tuned or own or [(run, model) for run, model, _ in knows])[0][1]
    return chosen


def _run_of(runs, chosen: dict) -> dict:
    """``{identity: run folder}`` of eval's runs ``(folder, model, meta)`` for :func:`_model_per_identity`'s
    ``{identity: model}``: which run scored whom, for metrics.json."""
    return {n: str(next(r for r, m, _ in runs if m is chosen[n])) for n in chosen}


def _passed_over(runs, chosen: dict) -> Optional[str]:
    """A note naming each of eval's runs ``(folder, model, meta)`` that renders none of the people in ``chosen``
    (:func:`_model_per_identity`'s ``{identity: model}``) though it knows some that no run fine-tuned: another run
    renders them (the first of two generic runs of the same people, e.g. two seeds given to compare them). A run
    that renders nobody because runs that fine-tuned its people render them is what was asked: no note."""
    refined = {n for _, _, meta in runs for n in meta["refined"]}
    lines = []
    for run, m, meta in runs:
        if any(chosen[n] is m for n in chosen):
            continue
        passed = [n for n in chosen if n in meta["identity_names"] and n not in refined]
        by = {str(r) for r, other, _ in runs for n in passed if chosen[n] is other}
        if passed:
            lines.append(f"{run} renders none of the people evaluated: {some_of(passed)} "
                         f"{'is' if len(passed) == 1 else 'are'} rendered by {', '.join(sorted(by))}")
    if not lines:
        return None
    return "; ".join(lines) + " (eval scores each person by one run: to compare runs, evaluate each run on its own)"


def _add_demo(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "demo",
        help="the built-in demo: procedural heads -> generic training -> personalisation -> transfer video + metrics",
        description="Generate procedural heads, train one model on all but one, personalise it to the held-out head, "
        "render the held-out head driven by another identity (OUT/transfer.mp4) and evaluate every identity on its "
        "val and novel (never-shown expressions) splits. A few minutes on a 2-core CPU.",
    )
    import inspect

    from .demo import run_demo

    # run_demo's own defaults (one definition: the library call and the command run the same demo)
    d = {name: v.default for name, v in inspect.signature(run_demo).parameters.items()}
    _positional_or_option(p, "out", "demo folder (default ./demo_out)", needed=False)
    p.add_argument("--minutes", type=float, default=d["minutes"], help=f"wall-clock budget in minutes (default {d['minutes']:g})")
    p.add_argument("--identities", type=int, default=d["n_identities"],
                   help=f"procedural heads, one held out (default {d['n_identities']})")
    p.add_argument("--frames", type=int, default=d["n_frames"], help=f"frames per identity's video (default {d['n_frames']})")
    p.add_argument("--size", type=int, default=d["size"], help=f"frame size in pixels (default {d['size']})")
    p.add_argument("--seed", type=int, default=d["seed"], help=f"data seed (default {d['seed']})")
    p.add_argument("--config", default=d["config"], help=f"training preset or YAML file (default {d['config']})")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in OUT")
    p.add_argument("--device", default=None, metavar="auto|cpu|cuda|cuda:N",
                   help="where it trains, renders and evaluates (default: the config's train.device, auto in the "
                        "presets: a CUDA GPU where torch sees one, else the CPU)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .demo import run_demo

    if args.out is None:
        args.out = Path("demo_out")
    if args.device is not None:
        _device(args)  # refused before any work, naming --device
    console = _console()
    stages = {"synth": "generate heads", "train": "generic training", "personalize": "personalise held-out",
              "render": "transfer video", "eval_val": "eval val", "eval_novel": "eval novel"}
    bar = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console)
    with _DrawnOnUse(bar) as show:
        tasks = {}

        def progress(stage: str, info: dict) -> None:
            show()
            if stage not in tasks:
                tasks[stage] = bar.add_task(stages.get(stage, stage), total=None, stats="")
            if "step" in info:
                secs, limit = float(info["seconds"]), float(info.get("max_seconds", float("nan")))
                left = f"  {max(0.0, limit - secs):.0f}s left" if limit == limit else ""
                bar.update(tasks[stage], completed=int(info["step"]), total=int(info["total_steps"]),
                           stats=f"psnr {info['psnr']:.2f} dB{left}")
            else:
                bar.update(tasks[stage], completed=int(info["done"]), total=int(info["total"]))

        with _named_options(dict(SYNTH_OPTIONS, minutes="--minutes")):
            result = run_demo(args.out, minutes=args.minutes, n_identities=args.identities, n_frames=args.frames,
                              size=args.size, seed=args.seed, config=args.config, overwrite=args.overwrite,
                              progress=progress, device=args.device)
    for split, title in (("val", "val: unseen frames"), ("novel", "novel: expressions each identity never showed")):
        _print_whole(console, _metrics_table(result.metrics[split], f"{title} ({result.held_out} personalised)"))
    secs = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    console.print(f"transfer video: {result.video} ({result.held_out} driven by {result.driver})")
    console.print(f"contact sheet: {result.contact_sheet}; metrics in {result.out_dir}/eval_*/metrics.json")
    console.print(f"time: {secs}")
    return 0


# ---------------------------------------------------------------------------------------------- bench


def _benchmarks():
    """The benchmark modules of the source checkout (``benchmarks/`` beside the package: they are measurement
    scripts with their results folder, not part of the installed library)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "identities.py").is_file():
        raise ValueError(f"fastminerf bench runs the benchmarks of a source checkout (benchmarks/ next to {root / 'fastminerf'}); "
                         "install with `pip install -e .` from a clone")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import backbone, identities

    return identities, backbone


def _add_bench(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: training time against the number of identities, and the fast backbone against NeRFace's",
        description="identities: one generic model for N procedural identities against N single-identity models, all "
        "trained to the same val PSNR (MI-NeRF's Figure 4), plus novel-expression PSNR against N. backbone: the fast "
        "backbone against the NeRFace backbone on the same data (time to NeRFace's final PSNR, PSNR at equal time). "
        "The short version takes a few minutes; --full gives the README's numbers (about 30 + 15 minutes on 2 cores). "
        "Writes OUT/<name>.json and .png with --full, OUT/<name>_quick.* for the short version, OUT/<name>_tiny.* with "
        "--tiny; a --full run into benchmarks/results with other settings than the README's record (identities: "
        "--seeds 0 1 2 and the default counts; either: without --gpu, trained on the CPU: train.device auto trains on a GPU where torch sees one) writes <name>_quick.* there.",
    )
    p.add_argument("which", choices=["identities", "backbone", "all"], help="which benchmark")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the full version (README numbers)")
    size.add_argument("--tiny", action="store_true", help="seconds-long smoke version (tests; numbers mean nothing)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--work", type=Path, default=None, help="folder for generated data and runs: a new or empty one, or an earlier bench run's (marked by its "
                   ".fastminerf_bench; one of a version before the mark is reused once given it) (default: temporary)")
    p.add_argument("--counts", type=int, nargs="+", default=None, metavar="N",
                   help="identity counts of the identities benchmark (default: 1 2 4 8 16 with --full, 1 2 with --tiny, "
                   "1 2 4 otherwise)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="K",
                   help="identities benchmark: data and training seeds (several: run once per seed, rows averaged)")
    p.add_argument("--gpu", action="store_true", help="train the fast model with the gpu preset (tiny-cuda-nn and nerfacc "
                   "where installed; training and evaluation run on CUDA when present, train.device=auto)")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if args.which == "backbone" and (args.counts or args.seeds):  # options of the identities benchmark alone
        raise ValueError(f"{'--counts' if args.counts else '--seeds'} is an option of the identities benchmark: "
                         "bench backbone takes neither (run bench identities, or bench all)")
    identities, backbone = _benchmarks()
    mode = "full" if args.full else ("tiny" if args.tiny else "quick")
    out = args.out or identities.RESULTS
    config = "gpu" if args.gpu else None
    console = _console()
    todo = ["identities", "backbone"] if args.which == "all" else [args.which]
    for which in todo:
        with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}[/bold]"), TextColumn("{task.fields[stats]}"),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task(which, stats="")

            def progress(event: str, info: dict) -> None:
                if event == "run":
                    bar.update(task, description=f"{which}: {info['name']}", stats="")
                elif event == "eval":
                    bar.update(task, stats=f"{info['seconds']:.1f} s, step {info['step']}, {info['psnr']:.2f} dB")
                elif event == "row":
                    console.print(f"N={info['n']}: generic {info['generic_seconds']:.1f} s "
                                  f"({'reached' if info['generic_reached'] else 'capped'}), {len(info['single_seconds'])} "
                                  f"singles {info['single_seconds_total']:.1f} s, ratio {info['ratio']:.2f}, "
                                  f"novel {info['novel_psnr']:.2f} dB")

            if which == "identities":
                r = identities.run_identities(mode, out, args.work and args.work / which, config, progress,
                                              args.counts, args.seeds)
            else:
                r = backbone.run_backbone(mode, out, args.work and args.work / which, config, progress)
                reach = r["fast_seconds_to_nerface_final_psnr"]
                console.print(f"nerface: {r['nerface_final_psnr']:.2f} dB after {r['nerface_seconds']:.0f} s; fast: "
                              + (f"{reach:.1f} s to reach it, speedup {r['speedup']:.0f}x" if reach else
                                 f"not reached in {r['fast_seconds']:.0f} s"))
        name = r["written"]  # a full run with other settings than the record's: <which>_quick (write_with_plot)
        console.print(f"wrote {Path(out) / (name + '.json')} and {name}.png")
    return 0


def _add_speech(sub: "argparse._SubParsersAction") -> None:
    from .config import SpeechConfig

    p = sub.add_parser(
        "speech",
        help="learn a mapping from speech to expressions (lip sync) from prepared videos with sound",
        description="Train the speech-to-expression network (fastminerf.speech) on every identity of the data that "
        "has an audio.wav: each frame's expression against the sound around its time. It learns from the 'train' "
        "frames and is scored on the other splits whose frames carry a time (val, test): R2 of the expression "
        "coefficients and of the mouth's opening against always predicting the training mean (0 = the mean, "
        "1 = exact), and the correlation of the mouth's opening with the tracked one. Then render --speech AUDIO. "
        "It trains on the CPU (a small network), whatever train.device says: it takes no --device.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="a trained run: learn from its training data, write RUN/speech.pt")
    src.add_argument("--data", nargs="+", type=Path, help="identity folders or dataset roots")
    p.add_argument("--out", type=Path, default=None, help="the model file (default RUN/speech.pt; required with --data)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the config's, 1500)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"a SpeechConfig field ({', '.join(f.name for f in fields(SpeechConfig))}); repeatable")
    p.set_defaults(func=_run_speech)


def _run_speech(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table
    from rich.text import Text

    from .config import SpeechConfig, flat_config
    from .speech import SpeechError, check_speech_out, load_speech_clips, save_speech_model, speech_metrics, train_speech
    from .train import run_data_paths

    console = _console()
    if args.run is not None:
        _, _, meta = _open_run(args.run)
        paths = [Path(p) for p in run_data_paths(meta, _MOVED_DATA.format(option="--data (with --out)"))]
        out = args.out or Path(args.run) / "speech.pt"
    else:
        paths, out = args.data, args.out
        if out is None:
            raise SpeechError("--out is required with --data (the file to write the speech model to)")
    check_speech_out(out)  # a folder, a run's checkpoint, a frame: refused before learning
    cfg = flat_config(SpeechConfig, list(args.overrides) + ([f"steps={args.steps}"] if args.steps is not None else []))
    found = load_speech_clips(paths)
    clips, skipped = found.clips, found.skipped
    for line in skipped:
        console.print(_styled("yellow", "left out", line), markup=True)
    if not clips:
        raise SpeechError(f"no identity in {[str(p) for p in paths]} has an audio.wav and frames with a time")
    with Progress(TextColumn("[bold]speech[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("speech", total=None, loss="-")

        def progress(done: int, total: int, loss: float) -> None:
            bar.update(task, completed=done, total=total, loss=f"{loss:.4f}")

        model = train_speech(clips, cfg, ("train",), found.expression_space, progress=progress)
    held = [s for s in found.splits if s != "train" and any(len(c.times.get(s, ())) for c in clips)]
    from .prepare.expression import ExpressionBasis
    from .render import RenderError, training_basis

    try:
        basis = ExpressionBasis.load(training_basis(paths).parent)
    except RenderError:  # data not made by prepare: the mouth's opening is known for the procedural heads only
        basis = None
    table = Table(title=f"speech -> expression on held-out frames ({', '.join(held) or 'none'})")
    table.add_column("identity", no_wrap=True)  # whole (_print_whole): '..._000' and '..._001' differ at the end
    for col in ("frames", "R2", "mouth R2", "mouth corr"):
        table.add_column(col, justify="right")
    if held:
        model.metrics = speech_metrics(model, clips, held, basis=basis)
        fmt = lambda v: _score(v, "{:.3f}")  # noqa: E731
        rows = list(model.metrics["identities"].items()) + [(Text("all", style="bold"), model.metrics["all"])]
        for name, m in rows:
            table.add_row(name, str(m["frames"]), fmt(m["r2"]), fmt(m["mouth_r2"]), fmt(m["mouth_corr"]))
        _print_whole(console, table)
    save_speech_model(out, model)
    console.print(f"learned from {counted(len(clips), 'identity', 'identities')} "
                  f"({counted(sum(len(c.times.get('train', ())) for c in clips), 'frame')}) "
                  f"({counted(cfg.steps, 'step')} a network, {counted(model.networks, 'network')}) "
                  f"-> {out}")
    return 0


def _add_info(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "info",
        help="what a trained run holds: identities, frames, expression space, steps and what ended them, size, its "
             "data folders, backends, speech model and last training PSNR",
        description="Describe a run folder (or checkpoint): its kind (train or personalize), steps of its total and "
        "training time (and whether its time limit or an interruption ended it; a personalisation still in its "
        "code-only phase), its identities and their training frames, the expression length and space (data in another space is "
        "refused by personalize, render --drive and eval), the conditioning, the parameter count, the data it was "
        "trained on (marked when no longer there), the backends its config asked for, those it was trained with and "
        "those that run it here (a tcnn or nerfacc run loads with auto where they are not installed), its speech model "
        "(RUN/speech.pt) when it has one, and the last logged training PSNR.",
    )
    _positional_or_option(p, "run", "run folder (made by train or personalize) or checkpoint file")
    p.add_argument("--json", action="store_true", help="print the description as JSON instead of a table")
    p.set_defaults(func=_run_info)


def _score(value: Optional[float], spec: str = "{:.2f}") -> str:
    """A score as a table shows it: ``spec`` of it, or "-" where it is not there (None) or not defined (NaN: the
    correlation over a held-out split of one frame, where nothing varies), as eval's table shows a missing metric."""
    return "-" if value is None or value != value else spec.format(value)


def _asked_backends(cfg) -> dict:
    """The backend settings a run's config asked for (what ``fastminerf info`` names beside what runs here)."""
    if cfg.model.backbone != "fast":
        return {"model.backbone": cfg.model.backbone}
    return {"model.field.backend": cfg.model.field.backend, "model.grid_backend": cfg.model.grid_backend}


def run_info(run: Path) -> dict:
    """The description ``fastminerf info`` prints (a plain dict, JSON-ready)."""
    import torch

    from .data.writer import folder_writer
    from .train import LOG_NAME, last_log_record, run_data_folders

    cfg, model, meta = _open_run(run)
    folders = run_data_folders(meta, strict=False)  # where the data is now (moved with the run: beside it)
    counts = torch.bincount(meta["frame_identity"], minlength=len(meta["identity_names"])).tolist()
    info = dict(run=str(run), checkpoint=str(meta["checkpoint"]), kind=meta["kind"], step=meta["step"],
                seconds=round(meta["seconds"], 1), identities=dict(zip(meta["identity_names"], counts)),
                expression_dim=meta["expression_dim"], expression_space=meta["expression_space"],
                conditioning=cfg.model.field.conditioning, parameters=sum(p.numel() for p in model.parameters()),
                checkpoint_bytes=Path(meta["checkpoint"]).stat().st_size, data_paths=[p for p, _ in folders],
                refined=meta["refined"], added=meta["added"], generic_run=meta["generic_run"],
                total_steps=cfg.train.personalize_steps if meta["kind"] == "personalize" else cfg.train.steps,
                max_seconds=cfg.train.max_seconds, phase=meta["phase"] if meta["kind"] == "personalize" else None,
                limit_reached=cfg.train.max_seconds is not None and meta["seconds"] >= cfg.train.max_seconds,
                data_missing=[p for p, there in folders if not there],
                resumable=meta["resumable"], training_now=folder_writer(Path(meta["checkpoint"]).parent),
                backends=dict(asked=_asked_backends(cfg), trained=meta["backends"],
                              here={d: model.backends(torch.device(d))
                                    for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])}))
    speech = Path(meta["checkpoint"]).parent / "speech.pt"
    if speech.is_file():
        from .speech import SpeechError, load_speech_model

        try:
            sm = load_speech_model(speech)
        except SpeechError as exc:  # a damaged speech.pt is one row of the run's description, not the end of it
            info["speech"] = dict(file=str(speech), error=str(exc))
        else:
            held = (sm.metrics or {}).get("all") or {}
            info["speech"] = dict(file=str(speech), identities=len(sm.identities), expression_space=sm.expression_space,
                                  held_out={k: held.get(k) for k in ("frames", "r2", "mouth_r2", "mouth_corr")} if held else None)
    # lines of steps after the checkpoint, which a rerun redoes (and drops), are not its
    last = last_log_record(Path(meta["checkpoint"]).parent / LOG_NAME,
                           at_most=None if info["training_now"] else meta["step"])
    if last is not None:
        info["last_log"] = {k: last[k] for k in ("step", "loss", "psnr") if k in last}
    return info


def _run_info(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .data.writer import json_text

    args.run = _given(args, "run")
    info = run_info(args.run)
    if args.json:
        print(json_text(info, indent=1))
        return 0
    table = Table(title=f"{args.run} ({info['kind']})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")  # a long data path folds onto more lines: it was cut to '/data/lo…'
    last = info.get("last_log")
    steps = f"{info['step']} of {info['total_steps']}, {info['seconds']:.0f} s"
    if not info["resumable"]:
        steps += " (a model saved by save_run, without the training state train continues from)"
    elif info["training_now"]:  # not 'the same command continues it': a second train would be refused
        steps += f" (being trained now, by process {info['training_now']}: its last checkpoint)"
    elif info["step"] < info["total_steps"]:  # a finished run and one its time limit or an interruption ended differ
        steps += (f" (its {plain_number(info['max_seconds'])} s limit reached)" if info["limit_reached"]
                  else " (not finished: the same command continues it)")
    missing = set(info["data_missing"])
    rows = [
        ("steps, training time", steps),
        ("identities (training frames)", some_of(f"{n} ({c})" for n, c in info["identities"].items())
         + (" (info --json lists them all)" if len(info["identities"]) > 8 else "")),
        ("expression", f"{info['expression_dim']} coefficients, space {info['expression_space'] or 'not recorded'}"),
        ("conditioning", info["conditioning"]),
        ("parameters, checkpoint", f"{info['parameters']:,}, {info['checkpoint_bytes'] / 2**20:.1f} MiB"),
        ("trained on", ", ".join(p + (" (not there: moved?)" if p in missing else "") for p in info["data_paths"])
         or "?"),
    ]
    rows.append(("backends (the run's config)", ", ".join(f"{k}={v}" for k, v in info["backends"]["asked"].items())))
    for what, runs in (("trained with, on", info["backends"]["trained"] or {}), ("runs here on", info["backends"]["here"])):
        for device, parts in runs.items():
            rows.append((f"{what} {device}", ", ".join(f"{k} {v}" for k, v in parts.items())))
    if info["phase"] == "codes":
        rows.append(("phase", "code-only: the new people's codes are placed, no shared weight is tuned yet"))
    if info["refined"]:
        rows.append(("fine-tuned for", some_of(info["refined"])))
    if info["added"]:
        rows.append(("added (personalised)", some_of(info["added"])))
    if info["generic_run"]:
        rows.append(("started from", info["generic_run"]))
    sp = info.get("speech")
    if sp and "error" in sp:
        rows.append(("speech model (render --speech)", f"unreadable: {sp['error']}"))
    elif sp:
        h = sp["held_out"]
        score = (f"held-out mouth R2 {_score(h['mouth_r2'])}, corr {_score(h['mouth_corr'])} ({h['frames']} frames)"
                 if h and h.get("mouth_r2") is not None else "no held-out score")
        rows.append(("speech model (render --speech)", f"{Path(sp['file']).name}: {sp['identities']} voices, {score}"))
    if last:  # a diverged run logs its NaN loss and PSNR as null
        loss, psnr = (float("nan") if last.get(k) is None else last[k] for k in ("loss", "psnr"))
        rows.append(("last log", f"step {last.get('step')}, loss {loss:.5f}, train psnr {psnr:.2f} dB"))
    for k, v in rows:
        table.add_row(k, str(v))
    _console().print(table)
    return 0


# ----------------------------------------------------------------------------------------------- main

SUBCOMMANDS: List[Callable[["argparse._SubParsersAction"], None]] = [
    _add_synth, _add_prepare, _add_train, _add_personalize, _add_render, _add_speech, _add_eval, _add_demo, _add_bench,
    _add_info,
]
"""Functions that each add one subcommand to the parser (others append theirs here)."""


class _Version(argparse._VersionAction):
    """``--version``: the package's version, then torch's and what runs here (backend.available), computed only
    when asked (it imports torch, the extension and any tiny-cuda-nn or nerfacc)."""

    def __call__(self, parser, namespace, values, option_string=None):
        import torch

        from .backend import available

        lines = [parser.prog + self.version.removeprefix("%(prog)s"), f"torch {torch.__version__}"]
        lines += [f"{name}: {state}" for name, state in available().items()]
        parser._print_message("\n".join(lines) + "\n", sys.stdout)
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse's parser (its subcommands' too: add_parser makes them of the parent's class), except that an option
    given the text '--' (``--fps=--``) takes that text: Python 3.11's argparse drops every '--' from an option's
    values, so --fps=-- stored [] (a TypeError traceback later) and bench --counts=-- ran with the default counts; now
    the option's type or choices refuse it as any other text (a usage error naming the option, exit status 2)."""

    def _get_values(self, action, arg_strings):
        if action.option_strings and arg_strings == ["--"] and action.nargs in (None, "?", "+", "*"):
            value = self._get_value(action, "--")
            self._check_value(action, value)
            return value if action.nargs in (None, "?") else [value]
        return super()._get_values(action, arg_strings)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastminerf`` command, with every subcommand."""
    parser = _Parser(
        prog="fastminerf",
        description="Train one fast dynamic face NeRF (MI-NeRF) on talking-face videos of many people.",
    )
    from . import __version__

    parser.add_argument("--version", action=_Version, version=f"%(prog)s {__version__}",
                        help="show the version, torch's, and which backends run on this machine, and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has left (poll flags its write end with POLLERR); if so, stdout is
    pointed at /dev/null so that the interpreter's last flush does not raise BrokenPipeError once more."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not any(events & select.POLLERR for _, events in poller.poll(0)):
            return False
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    except (AttributeError, OSError, ValueError):  # no file descriptor (a captured stream), or no poll here
        return False
    return True


def _escape_unencodable_output() -> None:
    """Let stdout write what its encoding cannot (an identity or path named 'Zoë' or '张伟' on an ASCII or latin-1
    terminal or log: PYTHONIOENCODING, a Windows console's code page) as escapes, as Python's stderr does, instead of
    failing the command with UnicodeEncodeError at its first such line."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            try:
                stream.reconfigure(errors="backslashreplace")
            except (AttributeError, ValueError, io.UnsupportedOperation):  # a stream that cannot change: as it is
                pass


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command stands: it unwinds as Ctrl-C does (the progress display gives the terminal
    its cursor back, a half-written checkpoint or video is removed, a run folder's lock is released)."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``fastminerf`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Errors the user can fix (a malformed dataset, an output folder that already holds data, a bad
    argument value, a full disk or a folder it may not write) print one line on stderr and return 2 instead of a traceback.
    Ctrl-C (SIGINT) and SIGTERM (a job scheduler, ``kill``, ``timeout``) stop it with one line on stderr and return
    130 / 143 (128 + the signal, as a shell reports a process the signal ended); a run keeps its last checkpoint.
    """
    import signal
    import threading

    from .data.layout import DatasetError

    _escape_unencodable_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    in_main = threading.current_thread() is threading.main_thread()  # only the main thread may set a handler
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    try:
        return int(args.func(args) or 0)
    except (DatasetError, OSError, ValueError) as exc:  # OSError: a full disk, a read-only or missing folder
        if isinstance(exc, BrokenPipeError) and _stdout_gone():  # stdout's reader left (`info RUN --json | head`)
            return 141  # quietly, with the status of a shell tool killed by SIGPIPE
        _console(stderr=True).print(_styled("bold red", "error:", exc), markup=True)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated)
        said = str(exc)  # where a training stopped and what its run folder keeps
        _console(stderr=True).print(("terminated" if terminated else "interrupted") + (f" {said}" if said else ""))
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        if in_main:  # None: a handler not set from Python
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
