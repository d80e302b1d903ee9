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


def _wait_for_log(run: Path, proc, timeout: float = 60.0) -> None:
    """Until the training in ``run`` has logged a step (it is in its loop)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        log = run / "log.jsonl"
        if log.is_file() and log.read_text().strip():
            return
        time.sleep(0.1)
    raise AssertionError(f"training did not start: {proc.poll()} {proc.communicate()}")


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
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # pragma: no cover - the signal was ignored
            proc.kill()
    assert proc.returncode == status, (out, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(word), err


def test_version_prints_the_package_version_on_stdout(capsys):
    # `fastminerf --version` said 'error: the following arguments are required: COMMAND' (status 2).
    import fastminerf
    from fastminerf.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"fastminerf {fastminerf.__version__}" and not err
