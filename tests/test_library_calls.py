"""The library's public functions called the ways a notebook user calls them: a path where a loaded dataset goes and
a loaded dataset where paths go, a preset name where a RunConfig goes. Each works or says which argument takes what
(TypeError), never a bare AttributeError or "object is not iterable" from deep inside."""
from __future__ import annotations

import pytest

import fastminerf as fm
from fastminerf.data.synth import generate


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    generate(root, n_identities=2, n_frames=6, size=16, seed=0)
    return root


def test_a_loaded_dataset_where_data_paths_go_says_the_argument_takes_paths(heads, tmp_path):
    """train(cfg, load_dataset(ROOT), out) failed with "'MultiIdentityDataset' object is not iterable" (as did
    load_dataset(dataset) and personalize(run, dataset, out)), a number with "'int' object is not iterable"."""
    data = fm.load_dataset(heads)
    cfg = fm.load_config("tiny", "train.steps=1")
    for call, asked in ((lambda: fm.train(cfg, data, tmp_path / "run"), "data_paths"),
                        (lambda: fm.personalize(tmp_path / "run", [heads / "id000", data], tmp_path / "p"),
                         "data_paths"),
                        (lambda: fm.load_dataset(data), "paths"), (lambda: fm.load_dataset(3), "paths")):
        with pytest.raises(TypeError, match=rf"^{asked}: needs identity folders or dataset roots \(str or "
                                            r"pathlib\.Path, one or a list\), got (MultiIdentityDataset|int) "):
            call()
    assert not (tmp_path / "run").exists() and not (tmp_path / "p").exists()
    assert fm.load_dataset(p for p in [str(heads / "id000"), heads / "id001"]).identities == ["id000", "id001"]
