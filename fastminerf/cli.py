"""The ``fastminerf`` command: a thin layer over the library, with rich progress.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its arguments and sets
``func`` to a ``_run_<name>(args) -> int``; :data:`SUBCOMMANDS` lists them. Library code prints nothing:
progress and summaries are shown here.

    fastminerf synth OUT --identities 8 --frames 100 --size 128 --seed 0
    fastminerf train --data DATA --out RUN [--config cpu] [--steps N] [--max-seconds S] [--set key=value ...]
    fastminerf personalize --run RUN --data NEW_IDENTITY --out RUN2 [--steps N] [--max-seconds S]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable, List, Optional, Sequence

__all__ = ["SUBCOMMANDS", "build_parser", "main"]


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _field_help(cls, name: str) -> str:
    """The docstring of a config field (first sentence), so that CLI help and config docs agree."""
    import ast
    import inspect
    import textwrap

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (a frozen or byte-code-only install): plain help
        return ""
    tree = ast.parse(textwrap.dedent(src))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                text = " ".join(str(nxt.value.value).split()).replace("``", "")
                return text.replace("%", "%%")
    return ""


# ---------------------------------------------------------------------------------------------- synth


def _add_synth(sub: "argparse._SubParsersAction") -> None:
    from .config import SynthConfig

    d = SynthConfig()
    p = sub.add_parser(
        "synth",
        help="write a procedural multi-identity talking-head dataset (ground truth) and its contact sheet",
        description="Write procedural talking heads in the shared layout (train, val and novel splits per "
        "identity) and OUT/contact_sheet.png.",
    )
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--identities", type=int, default=d.n_identities, help=_field_help(SynthConfig, "n_identities"))
    p.add_argument("--frames", type=int, default=d.n_frames, help=_field_help(SynthConfig, "n_frames"))
    p.add_argument("--size", type=int, default=d.size, help=_field_help(SynthConfig, "size"))
    p.add_argument("--seed", type=int, default=d.seed, help=_field_help(SynthConfig, "seed"))
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help=_field_help(SynthConfig, "val_fraction"))
    p.add_argument("--novel-frames", type=int, default=d.novel_frames, help=_field_help(SynthConfig, "novel_frames"))
    p.add_argument("--overwrite", action="store_true", help=_field_help(SynthConfig, "overwrite"))
    p.add_argument("--no-contact-sheet", action="store_true", help="do not write OUT/contact_sheet.png")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .config import SynthConfig
    from .data.synth import contact_sheet, generate

    cfg = SynthConfig(
        n_identities=args.identities,
        n_frames=args.frames,
        size=args.size,
        seed=args.seed,
        val_fraction=args.val_fraction,
        novel_frames=args.novel_frames,
        overwrite=args.overwrite,
    )
    console = _console()
    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]synth[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("render", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        kwargs = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
        dirs = generate(args.out, progress=progress, **kwargs)
    elapsed = time.perf_counter() - start
    console.print(f"wrote {len(dirs)} identities to {args.out} in {elapsed:.1f} s")
    if not args.no_contact_sheet:
        sheet = contact_sheet(dirs, Path(args.out) / "contact_sheet.png")
        console.print(f"contact sheet: {sheet}")
    return 0


# ---------------------------------------------------------------------------------------------- train


class _TrainProgress:
    """Rich progress for :func:`fastminerf.train.train` / ``personalize``: steps, loss, PSNR, rays/s, time left."""

    def __init__(self, console, title: str, total_steps: int, max_seconds: Optional[float]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.max_seconds = max_seconds
        self.total = total_steps
        self.bar = Progress(
            TextColumn(f"[bold]{title}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("left {task.fields[left]}"),
            console=console,
        )
        self.task = self.bar.add_task(title, total=total_steps, stats="", left="?")

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def __call__(self, rec: dict) -> None:
        step, secs = int(rec["step"]), float(rec["seconds"])
        rate = step / max(secs, 1e-9)
        left = (self.total - step) / max(rate, 1e-9)
        if self.max_seconds:
            left = min(left, max(0.0, self.max_seconds - secs))
        stats = (f"loss {rec['loss']:.4f}  psnr {rec['psnr']:.2f} dB  {rec['rays_per_s']:,.0f} rays/s  "
                 f"{rec['samples_per_ray']:.1f} samples/ray")
        self.bar.update(self.task, completed=step, stats=stats, left=f"{left:.0f}s")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (overrides train.steps)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this many training seconds")


def _add_train(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "train",
        help="train one MI-NeRF on every identity given (resumes when OUT holds a checkpoint)",
        description="Generic training on all identities of --data. Writes OUT/config.yaml, OUT/checkpoint.pt "
        "(atomically, periodically) and OUT/log.jsonl. Rerunning the same command resumes.",
    )
    p.add_argument("--data", nargs="+", required=True, type=Path, help="identity folders or dataset roots")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--config", default=None, help="preset name (tiny, cpu, gpu) or YAML file; default cpu")
    _add_run_options(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.field.conditioning=concat (repeatable)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.max_seconds is not None:
        overrides.append(f"train.max_seconds={args.max_seconds}")
    cfg = load_config(args.config, overrides)
    console = _console()
    with _TrainProgress(console, "train", cfg.train.steps, cfg.train.max_seconds) as progress:
        result = train(cfg, args.data, args.out, progress=progress)
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from else ""
    console.print(f"trained {result.step} steps in {result.seconds:.1f} s{resumed}: loss {result.loss:.5f}, "
                  f"train psnr {result.psnr:.2f} dB; run in {result.out_dir}")
    return 0


def _add_personalize(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "personalize",
        help="add new identities to a trained generic model from a short clip",
        description="Fit new identity and frame codes, then briefly fine-tune the shared weights; writes a new run "
        "holding every identity.",
    )
    p.add_argument("--run", required=True, type=Path, help="generic run folder (made by `fastminerf train`)")
    p.add_argument("--data", nargs="+", required=True, type=Path, help="identity folders of the new identities")
    p.add_argument("--out", required=True, type=Path, help="new run folder")
    _add_run_options(p)
    p.set_defaults(func=_run_personalize)


def _run_personalize(args: argparse.Namespace) -> int:
    from .train import load_run, personalize

    cfg, _, _ = load_run(args.run)
    steps = args.steps if args.steps is not None else cfg.train.personalize_steps
    console = _console()
    with _TrainProgress(console, "personalize", steps, args.max_seconds) as progress:
        result = personalize(args.run, args.data, args.out, steps=steps, max_seconds=args.max_seconds, progress=progress)
    console.print(f"personalised in {result.step} steps, {result.seconds:.1f} s: train psnr {result.psnr:.2f} dB; "
                  f"run in {result.out_dir}")
    return 0


# ----------------------------------------------------------------------------------------------- main

SUBCOMMANDS: List[Callable[["argparse._SubParsersAction"], None]] = [_add_synth, _add_train, _add_personalize]
"""Functions that each add one subcommand to the parser (others append theirs here)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastminerf`` command, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="fastminerf",
        description="Train one fast dynamic face NeRF (MI-NeRF) on talking-face videos of many people.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``fastminerf`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Errors the user can fix (a malformed dataset, an output folder that already holds data, a bad
    argument value) print one line on stderr and return 2 instead of a traceback.
    """
    from .data.layout import DatasetError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DatasetError, FileExistsError, ValueError) as exc:
        _console(stderr=True).print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False)
        return 2
    except KeyboardInterrupt:
        _console(stderr=True).print("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
