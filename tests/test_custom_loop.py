"""A researcher's own training loop from the public API alone (``import fastminerf as fm``): the library's data, model,
ray sampler, renderer, optimiser and schedule, their own loss, the library's metrics and checkpoints (tiny preset,
seconds)."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

import fastminerf as fm
from fastminerf.data.synth import generate
from fastminerf.train import frame_sizes


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop_heads")
    generate(root, n_identities=2, n_frames=12, size=24, seed=2, novel_frames=1)
    return root


def _loop(cfg, dataset, steps=30):
    """The minimal custom loop: the library's pieces, an extra opacity term of the researcher's own."""
    model = fm.build_model(cfg, dataset)  # initial weights from cfg.train.seed; the global stream is left alone
    sampler = fm.RaySampler(dataset, "train", **dataclasses.asdict(cfg.sampler))
    optimizer = fm.build_optimizer(cfg, model)
    base = [cfg.train.lr, cfg.train.code_lr]
    occ = torch.Generator().manual_seed(cfg.train.seed)
    table = dataset.table("train")
    identity, expression = torch.from_numpy(table.identity), torch.from_numpy(table.expression)
    losses = []
    for step in range(steps):
        model.update_occupancy(step, identity, expression, torch.arange(len(table)), generator=occ)
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * fm.lr_factor(step, cfg)
        batch = sampler.sample()
        out = model.render_batch(batch, frame_code=batch.frame)
        loss = torch.mean((out["rgb"] - batch.rgb) ** 2) + 1e-3 * out["opacity"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return model, losses


def test_a_custom_loop_of_public_pieces_lowers_the_loss_deterministically(heads):
    cfg = fm.load_config("tiny", ["model.field.conditioning=concat"])
    dataset = fm.load_dataset([heads], splits=("train", "val"))
    model, losses = _loop(cfg, dataset)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert _loop(cfg, dataset)[1] == losses  # the same seeds, the same steps

    groups = fm.build_optimizer(cfg, model).param_groups  # the shared weights at train.lr, the codes at code_lr
    assert [g["lr"] for g in groups] == [cfg.train.lr, cfg.train.code_lr]
    assert any(p is model.identity_codes.weight for p in groups[1]["params"])
    assert fm.lr_factor(0, cfg) == pytest.approx(1 / cfg.train.warmup_lr_steps)

    model.eval()
    image, outputs = fm.render_frame(model, dataset, "val", 0, outputs=True)
    h, w = image.shape[:2]
    assert {k: tuple(v.shape) for k, v in outputs.items() if k != "rgb"} == {
        "opacity": (h, w), "depth": (h, w), "samples": (h, w), "alpha": (h, w)}
    assert outputs["samples"].dtype == torch.int64
    assert torch.equal(outputs["alpha"], outputs["opacity"])  # the tiny preset has no torso layer: the head is all
    truth = np.asarray(dataset.image("val", 0))[..., :3] / 255.0
    assert np.isfinite(float(fm.psnr(image, truth)))


def test_a_custom_loops_model_is_saved_as_a_run_that_load_run_reads_back(heads, tmp_path):
    # save_checkpoint writes any payload, but which keys load_run needs was nowhere said: a model trained by one's own
    # loop could not be saved as a run that load_run, render, eval and personalize read.
    cfg = fm.load_config("tiny", ["model.field.conditioning=concat"])
    dataset = fm.load_dataset([heads], splits=("train", "val"))
    model, _ = _loop(cfg, dataset, steps=6)
    model.eval()
    truth = np.asarray(dataset.image("val", 0))[..., :3] / 255.0
    score = float(fm.psnr(fm.render_frame(model, dataset, "val", 0), truth))
    path = fm.save_run(tmp_path / "mine", cfg, model, step=6, dataset=dataset)
    assert path == tmp_path / "mine" / "checkpoint.pt"
    cfg2, again, meta = fm.load_run(tmp_path / "mine")
    assert cfg2 == cfg and meta["step"] == 6 and meta["identity_names"] == dataset.identities
    assert meta["data_paths"] == [str(d) for d in dataset.identity_dirs]
    # as train()'s runs: the data where the run finds it when both move together, and each frame's size
    assert meta["data_relative"] == [os.path.relpath(d, tmp_path / "mine") for d in dataset.identity_dirs]
    assert torch.equal(meta["frame_sizes"], frame_sizes(dataset))
    # and what computed each part where it trained (info's 'trained with'), which load_run gives None only for runs
    # older than that record
    assert meta["backends"] == {"cpu": model.backends(torch.device("cpu"))}
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert float(fm.psnr(fm.render_frame(again, dataset, "val", 0), truth)) == score
    # a person added to it by the library, from the run folder
    fm.personalize(tmp_path / "mine", [heads / "id001"], tmp_path / "tuned", steps=2)
    assert fm.load_run(tmp_path / "tuned")[2]["refined"] == ["id001"]
    with pytest.raises(ValueError, match=r"identities \['id001'\] and \d+ training frames, the model \['id000', 'id001'\]"):
        fm.save_run(tmp_path / "other", cfg, model, dataset=fm.load_dataset([heads / "id001"], splits=("train",)))


def test_a_saved_run_is_not_taken_for_an_unfinished_training(heads, tmp_path):
    # save_run writes the model without training state, so train cannot continue it: info said 'not finished: the
    # same command continues it', and train's resume failed on 'the checkpoint lacks 'sampler''. Both say what it is.
    from fastminerf.cli import run_info

    cfg = fm.load_config("tiny", ["train.steps=20"])
    dataset = fm.load_dataset([heads], splits=("train",))
    model, _ = _loop(cfg, dataset, steps=2)
    fm.save_run(tmp_path / "mine", cfg, model, step=2, dataset=dataset)
    assert fm.load_run(tmp_path / "mine")[2]["resumable"] is False
    assert run_info(tmp_path / "mine")["resumable"] is False
    with pytest.raises(fm.CheckpointError, match=r"saved by save_run .* train does not continue it"):
        fm.train(cfg, [heads], tmp_path / "mine")


def test_lr_factor_is_the_warm_up_times_a_decay_that_stops_at_the_last_step():
    """lr_factor's schedule by hand (4 warm-up steps, 10 steps, decay to 0.01): (step + 1) / 4 up to 1, times
    0.01 ** (step / 10) from step 0, held at 0.01 from step 10 on (a run resumed or continued past its steps, or a
    custom loop that runs longer, keeps the final rate instead of decaying towards 0)."""
    cfg = fm.load_config("tiny", ["train.warmup_lr_steps=4", "train.steps=10", "train.lr_final_factor=0.01"])
    want = {0: 0.25, 1: 0.5 * 0.01 ** 0.1, 3: 0.01 ** 0.3, 5: 0.1, 10: 0.01, 15: 0.01, 40: 0.01}
    assert {s: fm.lr_factor(s, cfg) for s in want} == pytest.approx(want, rel=1e-12)


def test_the_logged_psnr_leaves_out_the_rays_drawn_where_the_error_map_is_high(heads, tmp_path, monkeypatch):
    """train's log follows the whole image: its PSNR is that of the batch's plain rays, the error-map rays
    (deliberately the worst) left out. Spied on the sampler: the step's per-ray squared errors (what it records in
    its error maps) and which rays it drew from the maps; the logged PSNR is -10 log10 of the mean over the others."""
    import math

    from fastminerf.data.rays import RaySampler

    seen = []
    record = RaySampler.record_errors

    def spy(self, frame, pixel, error):
        seen.append((np.asarray(error, np.float64), self.last_targeted_rays().copy()))
        return record(self, frame, pixel, error)

    monkeypatch.setattr(RaySampler, "record_errors", spy)
    cfg = fm.load_config("tiny", ["train.steps=1", "train.log_every=1", "sampler.error_fraction=0.5"])
    records = []
    fm.train(cfg, heads, tmp_path / "run", progress=records.append)
    (error, targeted), = seen
    assert 0 < targeted.sum() < len(targeted)
    assert records[-1]["psnr"] == pytest.approx(-10 * math.log10(error[~targeted].mean()), rel=1e-5)
    assert records[-1]["psnr"] != pytest.approx(-10 * math.log10(error.mean()), rel=1e-5)
