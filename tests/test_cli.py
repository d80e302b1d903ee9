"""The command line as a shell, a log file or a job scheduler sees it: exit statuses, signals, what goes where."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastminerf.data.synth import generate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli heads")  # a space in the path, as users' folders have
    generate(root, n_identities=2, n_frames=6, size=16, seed=0, novel_frames=1)
    return root


def _start(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "fastminerf", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=tmp_path, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal starts it


HANG_S = 600.0
"""Bound of a wait on a subprocess: only a hang reaches it. On a loaded 2-core machine the training below took 33 s
(import, data, setup, 5 steps) to log its first step, against 5 s idle; a 60 s bound failed at twice that load."""


def _wait_for_log(run: Path, proc, timeout: float = HANG_S) -> None:
    """Until the training in ``run`` has logged a step (it is in its loop); a training that has not is killed, so that
    its output can be read (it trains 100,000 steps: a wait for its end was a hang of the suite)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        log = run / "log.jsonl"
        if log.is_file() and log.read_text().strip():
            return
        time.sleep(0.1)
    status = proc.poll()
    if status is None:
        proc.kill()
    raise AssertionError(f"training did not start: {status} {proc.communicate()}")


@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_stopped_training_says_so_in_one_line_and_exits_128_plus_the_signal(heads, tmp_path, sig, status, word):
    # SIGTERM (what a job scheduler, `kill` or `timeout` send) killed the process where it stood: exit -15, no word,
    # the terminal's cursor left hidden by the progress display, a render's .part file left behind. It now stops as
    # Ctrl-C does: context managers close, one line on stderr, status 128 + 15.
    run = tmp_path / "run"
    proc = _start(["train", "--data", str(heads), "--out", str(run), "--config", "tiny", "--steps", "100000",
                   "--set", "train.checkpoint_every=0"], tmp_path)
    try:
        _wait_for_log(run, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=HANG_S)
    finally:
        if proc.poll() is None:  # pragma: no cover - the signal was ignored
            proc.kill()
            proc.communicate()
    assert proc.returncode == status, (out, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(word), err
    # and says what the run folder keeps (checkpoints off here: nothing) and what a rerun does
    assert f"no checkpoint was written yet in {run}; a rerun starts again" in err.strip().splitlines()[-1], err


def test_version_prints_the_package_version_on_stdout(capsys):
    # `fastminerf --version` said 'error: the following arguments are required: COMMAND' (status 2).
    import fastminerf
    from fastminerf.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"fastminerf {fastminerf.__version__}" and not err


def test_version_says_which_backends_run_on_this_machine(capsys, monkeypatch):
    """`fastminerf --version` said only 'fastminerf 0.1.0': not which torch, nor whether the native kernels load
    (CPU, CUDA), nor whether tiny-cuda-nn or nerfacc are usable, so a user could not tell what a run would use
    without reading logs. It names torch and each implementation, with why one is not available."""
    import torch

    from fastminerf import _native
    from fastminerf import backend as B
    from fastminerf.cli import main

    B._unusable.cache_clear()
    monkeypatch.setattr(B, "_unusable", lambda module: None if module == "nerfacc" else "which is not installed")
    with pytest.raises(SystemExit):
        main(["--version"])
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out and "torch reference: yes" in out
    assert f"native CPU kernels: {'yes' if _native.available() else 'no (the extension does not load'}" in out
    assert "tiny-cuda-nn: no (is not installed)" in out
    assert ("nerfacc: yes" if torch.cuda.is_available() else "nerfacc: installed, but no CUDA device here") in out
    monkeypatch.setattr(_native, "load", lambda: (_ for _ in ()).throw(_native.NativeExtensionError("x")))
    monkeypatch.setattr(_native, "available", lambda: False)
    monkeypatch.setattr(_native, "_error", "ImportError: undefined symbol: _ZN3c10")
    with pytest.raises(SystemExit):
        main(["--version"])
    out = capsys.readouterr().out
    assert "native CPU kernels: no (the extension does not load: ImportError: undefined symbol" in out
    assert "native CUDA kernels: no (the extension does not load)" in out


@pytest.mark.parametrize("width", [60, 80])
def test_the_training_progress_line_keeps_its_step_count_and_times_in_a_log_or_a_narrow_terminal(width):
    # A log file or pipe is 80 columns to rich: the final progress line of `fastminerf train > log.txt` read
    # 'train ━ … loss 0.0322  psnr 14.84 dB  31,171 rays/s  36.1 samples/ray 0… left 0s', the step count cut to '…'
    # and the elapsed time to '0…'; at COLUMNS=60 the title too. The statistics give way, not the counts.
    import io

    from rich.console import Console

    from fastminerf.cli import _TrainProgress

    buf = io.StringIO()
    console = Console(file=buf, width=width, highlight=False, markup=False)
    with _TrainProgress(console, "train", 100000, None) as progress:
        progress(dict(step=1660, seconds=8.0, loss=0.0011, psnr=30.11, rays_per_s=54410.0, samples_per_ray=29.4))
    lines = [line.rstrip() for line in buf.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and len(lines[0]) <= width, lines
    import re

    assert re.search(r"^train .*1660/100000 .*\d:\d\d:\d\d left 474s", lines[0]), lines


def test_an_error_is_one_line_in_a_log_whatever_its_length(tmp_path, capsys, monkeypatch):
    # A log file or pipe is 80 columns to rich, which broke a long error after 80 characters, mid-path: 'grep error:'
    # showed half the message and a path copied from it did not exist.
    from fastminerf.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    missing = tmp_path / ("a folder with a long name, as datasets have " * 2) / "id000"
    assert main(["train", "--data", str(missing), "--out", str(tmp_path / "run"), "--config", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(missing) in err, err


def test_the_next_step_after_prepare_is_one_command_line_in_a_log(tmp_path, capsys, monkeypatch):
    # 'next: fastminerf train --data ROOT --out RUN --config video' was broken over two lines at 80 columns when
    # ROOT is long: copied from a log it ran 'fastminerf train --data' alone.
    from fastminerf.cli import main
    from fastminerf.prepare import PrepareResult, VideoResult

    root = tmp_path / "prepared clips of the interviews, 256 px"
    videos = [VideoResult("carol", tmp_path / "carol.mp4", "done", out_dir=root / "carol",
                          splits={"train": 8, "val": 1, "test": 1})]
    result = PrepareResult(root, videos, root / "expression_basis.npz", False, 32, "pca32-0123456789ab")
    monkeypatch.setattr("fastminerf.prepare.prepare", lambda *args, **kwargs: result)
    monkeypatch.setattr("fastminerf.prepare.require_mediapipe", lambda: None)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["prepare", str(videos[0].video), "--out", str(root)]) == 0
    import shlex

    want = f"next: fastminerf train --data {shlex.quote(str(root))} --out RUN --config video"
    assert want in capsys.readouterr().out.splitlines()


def test_summary_lines_keep_their_paths_on_one_line_in_a_log(tmp_path, capsys, monkeypatch):
    # 'contact sheet: PATH', 'run in PATH', 'metrics in PATH': rich broke such lines at 80 columns in a log, mid-path
    # ('metrics in demo' / 'out/eval_*/metrics.json'), so the path could not be copied or grepped.
    from fastminerf.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    out = tmp_path / "procedural heads for the lip-sync comparison, seed 0"
    assert main(["synth", str(out), "--identities", "1", "--frames", "2", "--size", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"contact sheet: {out / 'contact_sheet.png'}" in lines, lines
    assert any(line.startswith(f"wrote 1 identity to {out} in ") for line in lines), lines


def test_prepare_shows_the_time_left_of_a_long_video(tmp_path, capsys, monkeypatch):
    # A 10-minute 1080p recording tracks for many minutes: prepare's bars showed frames done and the time elapsed,
    # never the time left (train, synth and render show it), so a user could not tell a 2-minute wait from an hour.
    import re

    from fastminerf.cli import main
    from fastminerf.prepare import PrepareResult

    def slow_prepare(videos, out_dir, cfg, progress=None):
        progress("track", "lecture", 0, 1_000_000)
        for k in range(1, 6):
            time.sleep(0.05)
            progress("track", "lecture", 100 * k, 1_000_000)  # at most 2,000 frames/s: over 8 minutes left
        return PrepareResult(Path(out_dir), [], None, False)

    monkeypatch.setattr("fastminerf.prepare.prepare", slow_prepare)
    monkeypatch.setattr("fastminerf.prepare.require_mediapipe", lambda: None)
    monkeypatch.setenv("COLUMNS", "80")
    main(["prepare", str(tmp_path / "lecture.mp4"), "--out", str(tmp_path / "data")])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("track lecture")]
    assert len(line) == 1 and len(line[0]) <= 80 and "500/1000000" in line[0], line
    times = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in re.findall(r"(\d+):(\d\d):(\d\d)", line[0])]
    assert len(times) == 2 and times[1] >= 60, line  # the time elapsed, then the time left


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_name_the_terminal_cannot_show_does_not_fail_the_command(tmp_path, encoding):
    # A terminal or log in another encoding than UTF-8 (PYTHONIOENCODING=ascii, a latin-1 terminal, a Windows
    # console's code page): synth into '~/Zoë's talk/张伟' wrote the heads, then ended in "'ascii' codec can't encode
    # character '\xeb'" at its summary line, status 2 and no contact sheet; prepare likewise at its progress display.
    # Such characters are written escaped (as Python's stderr does), and the command goes on.
    out = tmp_path / "Zoë's talk" / "张伟"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", PYTHONIOENCODING=encoding, LANG="C", LC_ALL="C")
    proc = subprocess.run([sys.executable, "-m", "fastminerf", "synth", str(out), "--identities", "1", "--frames", "2",
                           "--size", "8"], capture_output=True, env=env, cwd=tmp_path, timeout=120)
    err = proc.stderr.decode(encoding)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert (out / "contact_sheet.png").is_file()
    stdout = proc.stdout.decode(encoding)
    shown = str(out).encode(encoding, "backslashreplace").decode(encoding)
    assert f"contact sheet: {shown}{os.sep}contact_sheet.png" in stdout.splitlines(), stdout


def test_the_next_step_after_prepare_runs_for_a_root_whose_name_starts_with_a_dash(tmp_path, capsys, monkeypatch):
    # prepare --out=-clips (a folder named '-clips', or '--old' by a script's date format) said 'next: fastminerf
    # train --data -clips --out RUN ...', which the shell passes as an option: 'argument --data: expected at least
    # one argument'. A relative path that starts with '-' is written './-clips', the same folder.
    from fastminerf.cli import build_parser, main
    from fastminerf.prepare import PrepareResult, VideoResult

    monkeypatch.chdir(tmp_path)
    root = Path("-clips")
    videos = [VideoResult("carol", tmp_path / "carol.mp4", "done", out_dir=root / "carol",
                          splits={"train": 8, "val": 1, "test": 1})]
    result = PrepareResult(root, videos, root / "expression_basis.npz", False, 32, "pca32-0123456789ab")
    monkeypatch.setattr("fastminerf.prepare.prepare", lambda *args, **kwargs: result)
    monkeypatch.setattr("fastminerf.prepare.require_mediapipe", lambda: None)
    assert main(["prepare", "carol.mp4", "--out=-clips"]) == 0
    import shlex

    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("next: ")]
    args = build_parser().parse_args(shlex.split(line.removeprefix("next: fastminerf ")))
    assert [Path(p).resolve() for p in args.data] == [(tmp_path / "-clips").resolve()]


def test_summary_lines_count_one_thing_in_the_singular(tmp_path, capsys):
    """render's summary said 'orbit of id000: 1 frames 16x16', synth's 'wrote 1 identities', train's 'trained 1 steps':
    a count of one takes the singular in every summary line."""
    from fastminerf.cli import main

    assert main(["synth", str(tmp_path / "d"), "--identities", "1", "--frames", "3", "--size", "16",
                 "--no-contact-sheet"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "wrote 1 identity to" in said, said
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--config", "tiny",
                 "--steps", "1"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "trained 1 step in" in said, said
    assert main(["render", "--run", str(tmp_path / "r"), "--identity", "id000", "--orbit", "--frames", "1",
                 "--out", str(tmp_path / "o.mp4")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "id000: 1 frame 16x16" in said, said


def test_building_the_parser_reads_each_config_class_source_once(monkeypatch):
    """Every command builds the whole parser, whose synth and prepare options take their help from the config
    fields' docstrings: inspect.getsource of the class was called once per option (21 times, each parsing all of
    config.py: 0.25-0.75 s of every command's start on a busy 2-core machine, before any work). Once per class."""
    import inspect

    from fastminerf import cli

    calls = []
    real = inspect.getsource
    monkeypatch.setattr(inspect, "getsource", lambda obj: calls.append(obj) or real(obj))
    cache = getattr(cli, "_field_docs", None)
    if cache is not None:
        cache.cache_clear()
    parser = cli.build_parser()
    cli.build_parser()
    assert len(calls) == len(set(calls)) <= 2, [getattr(c, "__name__", c) for c in calls]
    synth = parser._subparsers._group_actions[0].choices["synth"].format_help()
    assert "Number of identities" in synth  # the docstring still gives the help


def test_the_training_progress_bar_is_redrawn_once_a_second_at_most():
    """Between logged steps (every 25) the training bar changes only in its elapsed time, which counts seconds; rich's
    default redraw of 10 a second took 11 ms of CPU a second in a terminal (4 ms in a log), beside a one-thread
    training on a 2-core machine."""
    import io

    from rich.console import Console

    from fastminerf.cli import _TrainProgress

    console = Console(file=io.StringIO(), force_terminal=True, width=100, highlight=False, markup=False)
    with _TrainProgress(console, "train", 1000, None) as progress:
        progress(dict(step=25, seconds=2.0, loss=0.01, psnr=20.0, rays_per_s=10000.0, samples_per_ray=30.0))
        assert progress.bar.live.auto_refresh and progress.bar.live.refresh_per_second <= 1


def test_out_and_run_are_options_in_every_command(tmp_path, capsys):
    """train, prepare, render, eval and speech take --out (and --run); synth and demo took their folder and info its
    run as a positional only, and `fastminerf synth --out DATA` (as every other command is typed) was refused as
    'fastminerf: error: unrecognized arguments: --out', under the top-level usage. They take either; one given twice
    (positional and option) is a usage error, none (synth, info) one line naming both ways."""
    from fastminerf.cli import build_parser, main
    from fastminerf.config import load_config
    from fastminerf.train import train

    assert main(["synth", "--out", str(tmp_path / "d"), "--identities", "1", "--frames", "2", "--size", "16",
                 "--no-contact-sheet"]) == 0
    assert (tmp_path / "d" / "synth.json").is_file()
    assert build_parser().parse_args(["demo", "--out", "there"]).out == Path("there")
    assert build_parser().parse_args(["demo", "there"]).out == Path("there")
    train(load_config("tiny", ["train.steps=2"]), tmp_path / "d", tmp_path / "run")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "run"), "--json"]) == 0
    positional = capsys.readouterr().out
    assert main(["info", "--run", str(tmp_path / "run"), "--json"]) == 0
    assert capsys.readouterr().out == positional
    for args in (["synth", "a", "--out", "b"], ["info", "--run", "a", "b"], ["demo", "a", "--out", "b"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(args)
        assert exit_.value.code == 2
        assert "given twice" in capsys.readouterr().err
    assert main(["synth", "--identities", "1"]) == 2
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert "synth OUT (or --out OUT)" in err and "info RUN (or --run RUN)" in err


def test_a_call_refused_for_a_missing_input_leaves_no_folder_behind(tmp_path, capsys):
    """`train --data TYPO --out R` made R/ and left it holding only .lock when the data check failed (personalize
    and eval --out likewise, through the same lock); `speech --data TYPO --out M/speech.pt` left M/ empty, and
    `prepare TYPO.mp4 --out P` left P/ with an empty prepare.log. What a refused call made and left empty is gone;
    a folder that was there is kept, and a second try finds nothing in the way."""
    from fastminerf.cli import main
    from fastminerf.config import load_config
    from fastminerf.data import load_dataset
    from fastminerf.render import evaluate
    from fastminerf.train import load_run, train

    missing = str(tmp_path / "TYPO")
    assert main(["train", "--data", missing, "--out", str(tmp_path / "R" / "run"), "--config", "tiny"]) == 2
    assert main(["speech", "--data", missing, "--out", str(tmp_path / "M" / "speech.pt")]) == 2
    assert main(["prepare", str(tmp_path / "TYPO.mp4"), "--out", str(tmp_path / "P")]) == 2
    assert "TYPO" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    assert main(["train", "--data", missing, "--out", str(tmp_path / "kept"), "--config", "tiny"]) == 2
    assert (tmp_path / "kept").is_dir()
    generate(tmp_path / "d", n_identities=1, n_frames=4, size=16, seed=0, novel_frames=1)
    train(load_config("tiny", ["train.steps=1"]), tmp_path / "d", tmp_path / "run")
    assert main(["personalize", "--run", str(tmp_path / "run"), "--data", missing, "--out", str(tmp_path / "p2")]) == 2
    assert not (tmp_path / "p2").exists()
    _, model, _ = load_run(tmp_path / "run")
    with pytest.raises(ValueError, match="split 'nosuchsplit' is not loaded"):
        evaluate(model, load_dataset(tmp_path / "d"), "nosuchsplit", out_dir=tmp_path / "E")
    assert not (tmp_path / "E").exists()


def test_the_usage_line_shows_the_folder_synth_and_info_need_as_required(capsys):
    """synth and info take OUT / RUN as a positional or as --out / --run (cb8aac7), so argparse showed the positional
    as optional: 'usage: fastminerf synth [-h] ... [OUT]', though synth and info need one of the two. The usage reads
    OUT and RUN as required; demo's OUT, which defaults to ./demo_out, stays optional."""
    from fastminerf.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name, metavar in (("synth", "OUT"), ("info", "RUN")):
        usage = commands[name].format_usage()
        assert usage.split()[-1] == metavar and f"[{metavar}]" not in usage, usage
    assert commands["demo"].format_usage().split()[-1] == "[OUT]"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["synth", "--size", "x"])
    assert "[OUT]" not in capsys.readouterr().err


def test_personalize_reads_the_generic_run_once_and_personalises_as_it_did(heads, tmp_path, monkeypatch, capsys):
    """fastminerf personalize loaded the generic run twice: once (its model built, its weights read) only for its
    config, to check its own settings before the progress bar, then again in personalize(). A run of the gpu preset
    (204 MB with its optimizer state) took 0.75 s a load here. The command now reads only the config first
    (train.run_config: the checkpoint mapped, not read), the same config load_run gives, and personalises as before."""
    import torch

    import fastminerf as fm
    import importlib

    train_mod = importlib.import_module("fastminerf.train")  # fastminerf.train is the function
    from fastminerf.cli import main

    cfg = fm.load_config("tiny")
    fm.save_run(tmp_path / "run", cfg, fm.build_model(cfg, fm.load_dataset(heads / "id000")))
    assert train_mod.run_config(tmp_path / "run") == fm.load_run(tmp_path / "run")[0]
    assert train_mod.run_config(tmp_path / "run" / "checkpoint.pt") == cfg
    with pytest.raises(fm.CheckpointError, match="does not exist"):  # load_run's own error for what it cannot read
        train_mod.run_config(tmp_path / "nothere")
    built = []
    real = train_mod._model_from_checkpoint
    monkeypatch.setattr(train_mod, "_model_from_checkpoint", lambda *a, **k: built.append(a[1]) or real(*a, **k))
    args = ["--run", str(tmp_path / "run"), "--data", str(heads / "id001"), "--steps", "2"]
    assert main(["personalize", *args, "--out", str(tmp_path / "p1")]) == 0
    assert len(built) == 1  # the generic run's model built once: was twice
    monkeypatch.setattr(train_mod, "run_config", lambda run: fm.load_run(run)[0])  # the command as it was
    assert main(["personalize", *args, "--out", str(tmp_path / "p2")]) == 0
    one, two = (torch.load(tmp_path / p / "checkpoint.pt", weights_only=True)["model"] for p in ("p1", "p2"))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


@pytest.mark.parametrize("argv, option", [
    (["render", "--run", "r", "--identity", "a", "--orbit", "--out", "o.mp4", "--fps=--"], "--fps"),
    (["prepare", "v.mp4", "--out", "o", "--fps=--"], "--fps"),
    (["synth", "o", "--size=--"], "--size"),
    (["train", "--data", "d", "--out", "o", "--steps=--"], "--steps"),
    (["eval", "--run", "r", "--data", "d", "--split", "val", "--max-frames=--"], "--max-frames"),
    (["render", "--run", "r", "--identity", "a", "--orbit", "--out", "o.mp4", "--transfer=--"], "--transfer"),
    (["bench", "identities", "--tiny", "--counts=--"], "--counts"),  # it ran the benchmark with the default counts
])
def test_an_option_given_the_text_double_dash_is_a_usage_error_naming_it(argv, option, tmp_path, capsys, monkeypatch):
    # Python 3.11's argparse dropped '--' from an option's value: --fps=-- stored [] and the command ended in a
    # TypeError traceback ('>' not supported between instances of 'list' and 'int')
    from fastminerf.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: invalid" in err and "'--'" in err, err
    assert list(tmp_path.iterdir()) == []


_UNPRIVILEGED = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
"""Runs a command as root without its capabilities: permissions then stop its writes, as they stop a user's."""


def _as_a_user(argvs, cwd):
    """Run ``fastminerf.cli.main`` on each of ``argvs`` in one process without root's capabilities; each one's exit
    status and last stderr line."""
    import json
    import shutil

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop its capabilities")
    script = ("import contextlib, io, json, sys\nfrom fastminerf.cli import main\nsaid = []\n"
              "for argv in json.loads(sys.argv[1]):\n    err = io.StringIO()\n"
              "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
              "        status = main(argv)\n    said.append([status, (err.getvalue().strip().splitlines() or [''])[-1]])\n"
              "print(json.dumps(said))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", COLUMNS="1000")
    res = subprocess.run(_UNPRIVILEGED + [sys.executable, "-c", script, json.dumps(argvs)], capture_output=True,
                         text=True, env=env, cwd=cwd, timeout=HANG_S)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_writes_into_a_place_that_cannot_be_written_are_refused_up_front_naming_the_folder(heads, tmp_path):
    """prepare --out, train --out and synth into a read-only place ended with Python's bare "[Errno 13] Permission
    denied: 'X'" (synth after its progress bar began; train into an existing read-only run only at its config.yaml;
    prepare at its log), where eval and render say what cannot be written and what for (check_folder). Each is
    refused before any work, in check_folder's words, nothing written."""
    shared = tmp_path / "shared"
    (shared / "run").mkdir(parents=True)
    (shared / "data").mkdir()
    for folder in (shared / "run", shared / "data", shared):
        folder.chmod(0o555)
    try:
        said = _as_a_user([
            ["synth", "--out", "shared/new", "--identities", "1", "--frames", "6", "--size", "16"],
            ["synth", "--out", "shared/data", "--identities", "1", "--frames", "6", "--size", "16"],
            ["train", "--data", str(heads), "--out", "shared/new", "--config", "tiny", "--steps", "1"],
            ["train", "--data", str(heads), "--out", "shared/run", "--config", "tiny", "--steps", "1"],
            ["prepare", "clip.mp4", "--out", "shared/new"],
            ["prepare", "clip.mp4", "--out", "shared/data"],
        ], tmp_path)
    finally:
        for folder in (shared, shared / "run", shared / "data"):
            folder.chmod(0o755)
    made = {"shared/new": "cannot make the folder for", "shared/data": "cannot write", "shared/run": "cannot write"}
    for (status, line), folder in zip(said, ["shared/new", "shared/data", "shared/new", "shared/run", "shared/new",
                                             "shared/data"]):
        assert status == 2 and "Errno" not in line and line.startswith(f"error: {folder}: {made[folder]}"), line
        assert ("(shared cannot be written)" if folder == "shared/new" else f"({folder} cannot be written)") in line, line
    assert sorted(p.name for p in shared.rglob("*")) == ["data", "run"]


def test_personalize_progress_counts_down_a_time_limit_set_with_set(heads, tmp_path, monkeypatch):
    """`personalize --set train.max_seconds=S` (the limit as train takes it, the key personalize's --set reads) stopped
    at S seconds, but the progress bar was given only --max-seconds (None here): its time left came from the steps
    alone, 'left 8s' on the last line of a run its 3 s limit had ended. The bar counts down the limit the run keeps."""
    import fastminerf as fm
    import fastminerf.cli as cli

    cfg = fm.load_config("tiny")
    fm.save_run(tmp_path / "run", cfg, fm.build_model(cfg, fm.load_dataset(heads / "id000")))
    made = []

    class Spy(cli._TrainProgress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(cli, "_TrainProgress", Spy)
    args = ["personalize", "--run", str(tmp_path / "run"), "--data", str(heads / "id001"), "--steps", "2"]
    assert cli.main([*args, "--set", "train.max_seconds=1000", "--out", str(tmp_path / "p1")]) == 0
    assert made[-1].max_seconds == 1000.0
    made[-1](dict(step=1, seconds=999.5, loss=0.01, psnr=20.0, rays_per_s=1.0, samples_per_ray=1.0))
    assert made[-1].bar.tasks[0].fields["left"] == "0s"  # 0.5 s of the limit left, not the 1 step's 999.5 s
    assert cli.main([*args, "--max-seconds", "900", "--out", str(tmp_path / "p2")]) == 0
    assert made[-1].max_seconds == 900.0  # --max-seconds as before
