"""The docstring examples of the package run as written and show their real outputs: each example defines what it
uses (load_dataset's read 'runs/synth', a folder the reader does not have; HeadModel's and RaySampler's used
c2w, intrinsics, expression and dataset, which they never defined)."""
import doctest
import importlib
import pkgutil

import pytest

import fastminerf

MODULES = sorted(m.name for m in pkgutil.walk_packages(fastminerf.__path__, "fastminerf.")
                 if not m.name.endswith("__main__"))  # __main__ runs the command line when imported


def _examples(name):
    return [t for t in doctest.DocTestFinder().find(importlib.import_module(name)) if t.examples]


@pytest.mark.parametrize("name", [m for m in MODULES if _examples(m)])
def test_docstring_examples_run_as_written(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # an example that writes a relative path writes it here, not into the checkout
    runner = doctest.DocTestRunner()  # the flags of `pytest --doctest-modules`: none
    for test in _examples(name):
        runner.run(test, out=lambda text: pytest.fail(f"{test.name}:\n{text}", pytrace=False))
    assert runner.summarize(verbose=False).attempted > 0


def test_every_module_with_examples_is_found():
    """The walk above sees the package's modules (a walk that found none would pass every check vacuously)."""
    names = [m for m in MODULES if _examples(m)]
    assert "fastminerf.data.dataset" in names and "fastminerf.ops.compositing" in names and len(names) >= 10, names
