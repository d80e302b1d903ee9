"""Every benchmark script's output options: ``--out DIR`` (default ``benchmarks/results``, the committed record the
README's tables come from) on each, and the kernel scripts' quick runs writing their JSON there and nowhere else."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from benchmarks import common

BENCH = Path(common.__file__).resolve().parent
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in ("__init__", "common", "report"))


def _record() -> dict:
    return {p.name: p.stat().st_mtime_ns for p in common.RESULTS.iterdir()}


def test_the_scripts_are_all_found():
    assert len(SCRIPTS) >= 16 and {"kernels", "marcher", "speech", "prepare_speed"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_takes_out_dir(script, capsys):
    mod = importlib.import_module(f"benchmarks.{script}")
    with pytest.raises(SystemExit) as stop:
        mod.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "--out DIR" in text and "benchmarks/results" in text, text


@pytest.mark.parametrize("script, section", [("composite", "composite"), ("mlp_head", "mlp_head"),
                                             ("marcher", "marcher")])
def test_kernel_scripts_quick_write_into_out(script, section, tmp_path):
    before = _record()
    mod = importlib.import_module(f"benchmarks.{script}")
    mod.main(["--quick", "--out", str(tmp_path / "o")])
    result = json.loads((tmp_path / "o" / f"{script}_quick.json").read_text())
    assert {"cpu", "cores", "torch", "python", "git_commit"} <= set(result["machine"])
    assert result["quick"] is True and "summary" in result[section]
    assert _record() == before  # the committed record is untouched
