"""Training that turns non-finite (a learning rate that blows up, a NaN in a weight or in the data) stops with an
error naming the step, and never writes NaN weights over the last good checkpoint (tiny preset, seconds each)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastminerf as fm
from fastminerf import TrainingDiverged, load_checkpoint, load_config, load_run, train
from fastminerf.data.synth import generate


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("diverge_heads")
    generate(root, n_identities=2, n_frames=10, size=20, seed=5, novel_frames=1)
    return root


def _finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def _blowing_up(checkpoint_every: int):
    """The tiny preset at a learning rate of 1e8: within a few steps the loss is NaN."""
    return load_config("tiny", ["train.steps=12", f"train.checkpoint_every={checkpoint_every}", "train.log_every=1",
                                "train.lr=1e8", "train.code_lr=1e8"])


def test_a_learning_rate_that_blows_up_stops_at_the_step_and_keeps_the_finite_checkpoint(heads, tmp_path):
    # lr 1e8: within a few steps the loss is NaN. Before, the run went on to its last step on NaN weights, logged
    # 'nan', and wrote them over the checkpoint as a trained run.
    cfg = _blowing_up(checkpoint_every=1)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"step \d+: its loss is nan .*train\.lr 1e\+08.*keeps step \d+, the last finite") as info:
        train(cfg, [heads], run)
    assert 1 < info.value.step < 12 and f"step {info.value.step}:" in str(info.value)
    # the weights were finite when the step began (its update is what would have made every one NaN): none is named
    assert "held NaN" not in str(info.value), str(info.value)
    saved = load_checkpoint(run / "checkpoint.pt")
    assert saved["step"] == info.value.step - 1 and _finite(saved["model"])
    assert isinstance(info.value, ValueError)  # the command prints it as one line


@pytest.mark.parametrize("poisoned,stop,message", [
    (6, 7, r"training diverged at step 7: its loss is nan .*the model's field\.encoding\.params held NaN or infinite "
           r"values before the step.*train\.lr"),
    (8, 8, r"training diverged by step 8: the model's field\.encoding\.params holds NaN.*train\.lr"),
])
def test_a_nan_weight_is_not_checkpointed_and_the_run_resumes_from_the_last_good_checkpoint(heads, tmp_path, poisoned,
                                                                                            stop, message):
    # A NaN in the hash table poisoned at step 6 (by the monitor, after step 6's log) gives NaN densities: the step
    # after it sees a NaN loss and stops there. (The sample pruning used to drop NaN samples, so every ray showed the
    # background, the loss stayed finite and only the weights of step 8's checkpoint told.) Poisoned at step 8, after
    # its loss and before its checkpoint, only the weights can tell: the checkpoint is refused. Either way step 4's
    # checkpoint stays, and a new call resumes from it.
    cfg = load_config("tiny", ["train.steps=12", "train.checkpoint_every=4", "train.log_every=2"])
    run = tmp_path / "run"

    def poison(model, record):
        if record["step"] == poisoned:
            with torch.no_grad():
                model.field.encoding.params.fill_(float("nan"))
        return False

    with pytest.raises(TrainingDiverged, match=message) as info:
        train(cfg, [heads], run, monitor=poison)
    assert info.value.step == stop
    saved = load_checkpoint(run / "checkpoint.pt")
    assert saved["step"] == 4 and _finite(saved["model"])
    result = train(cfg, [heads], run)
    assert result.resumed_from == 4 and result.step == 12 and np.isfinite(result.loss)
    assert _finite(load_run(run)[1].state_dict())


def test_a_nan_expression_in_the_data_names_the_frame(heads, tmp_path, monkeypatch):
    # Files with NaN are refused when read; data changed in memory (a researcher's own loader) reaches the loop.
    import sys

    T = sys.modules["fastminerf.train"]  # the module (fastminerf.train is also the function)

    def load(*args, **kwargs):
        ds = fm.load_dataset(*args, **kwargs)
        ds.table("train").expression[:] = np.nan
        return ds

    monkeypatch.setattr(T, "load_dataset", load)
    with pytest.raises(TrainingDiverged, match=r"step 1: the data holds a non-finite value: .*transforms_train.json: frame \d+ of .id00[01].: key 'expression'"):
        train(load_config("tiny", ["train.steps=4"]), [heads], tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("column,key", [("c2w", "transform_matrix"), ("intrinsics", "intrinsics")])
def test_a_nan_camera_in_the_data_names_its_key(heads, tmp_path, monkeypatch, column, key):
    import sys

    T = sys.modules["fastminerf.train"]

    def load(*args, **kwargs):
        ds = fm.load_dataset(*args, **kwargs)
        getattr(ds.table("train"), column)[:, 0] = np.nan  # the first row of each camera, or every focal length x
        return ds

    monkeypatch.setattr(T, "load_dataset", load)
    with pytest.raises(TrainingDiverged, match=f"key '{key}'"):
        train(load_config("tiny", ["train.steps=2"]), [heads], tmp_path / "run")


def _poisoned_copy(run, out):
    """``out``: ``run`` with NaN in its hash table, as a run that diverged was saved before TrainingDiverged."""
    import shutil

    from fastminerf.train import save_checkpoint

    shutil.copytree(run, out)
    data = load_checkpoint(out / "checkpoint.pt")
    data["model"]["field.encoding.params"].fill_(float("nan"))
    save_checkpoint(out / "checkpoint.pt", data)
    return out


def test_resuming_or_personalizing_a_checkpoint_of_nan_weights_is_refused_naming_it(heads, tmp_path):
    # Such a run trained on (its loss stays finite on a NaN hash table) to be refused at its next checkpoint as 'a rerun
    # resumes from it', which diverged the same way again.
    cfg = load_config("tiny", ["train.steps=4"])
    train(cfg, [heads / "id000"], tmp_path / "good")
    bad = _poisoned_copy(tmp_path / "good", tmp_path / "bad")
    with pytest.raises(fm.CheckpointError, match=r"bad/checkpoint\.pt holds NaN or infinite weights \(field\.encoding\.params\)"):
        train(load_config("tiny", ["train.steps=8"]), [heads / "id000"], bad)
    with pytest.raises(fm.CheckpointError, match=r"bad/checkpoint\.pt holds NaN or infinite weights \(field\.encoding\.params\)"):
        fm.personalize(bad, [heads / "id001"], tmp_path / "pers", steps=2)
    assert not (tmp_path / "pers" / "checkpoint.pt").exists()


def test_a_run_that_diverges_before_its_first_checkpoint_names_its_folder(heads, tmp_path):
    # With no checkpoint written yet the message said only 'no checkpoint was written': with personalize --each (a run
    # per person under OUT) the user could not tell whose run it was; the interrupt's message names the folder.
    cfg = _blowing_up(checkpoint_every=1000)
    run = tmp_path / "early"
    with pytest.raises(TrainingDiverged, match=r"its loss is nan") as info:
        train(cfg, [heads], run)
    assert f"no checkpoint was written in {run}" in str(info.value), str(info.value)
    assert not (run / "checkpoint.pt").exists()
