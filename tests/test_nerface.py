"""The NeRFace backbone (``model.backbone: nerface``, the speed baseline) on a tiny procedural set: it trains through
the unchanged loop, its coarse network learns from the coarse loss, its checkpoints round-trip, and its sampling and
compositing do what NeRF's do. A small MLP (32 wide, 2 layers, 8 + 8 samples) keeps each test to seconds."""
from __future__ import annotations

import json

import pytest
import torch

from fastminerf import MINeRF, frame_rays, load_config, load_dataset, load_run, personalize, train
from fastminerf.data.synth import generate
from fastminerf.nerface import NeRFaceField, positional_encoding, sample_pdf

SMALL = ["model.nerface.width=32", "model.nerface.depth=2", "model.nerface.skip_layer=1",
         "model.nerface.color_width=16", "model.nerface.coarse_samples=8", "model.nerface.fine_samples=8",
         "sampler.batch_size=128", "train.steps=40", "train.lr=5e-3", "train.code_lr=5e-3", "train.log_every=5",
         "model.chunk_rays=256"]
"""The nerface preset with a small network and a learning rate that moves it in 40 steps."""

LOSS_DROP_FACTOR = 0.8
"""The mean training MSE of the last logging window must be below this times the first window's (40 steps reach
about 0.5x here; 0.8 catches a loop that does not learn)."""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_heads_nerface")
    generate(root, n_identities=2, n_frames=8, size=16, seed=5, novel_frames=1)
    return sorted(p for p in root.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run_nerface")
    cfg = load_config("nerface", SMALL)
    torch.manual_seed(0)
    initial = MINeRF(cfg.model, 12, ["a", "b"], [0, 1]).field.coarse.sigma.weight.clone()
    return run, train(cfg, tiny_data, run), initial


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_preset_is_the_nerface_backbone_of_the_paper():
    cfg = load_config("nerface")
    n = cfg.model.nerface
    assert cfg.model.backbone == "nerface"
    assert (n.width, n.depth, n.skip_layer, n.position_frequencies, n.direction_frequencies) == (256, 8, 4, 10, 4)
    assert (n.coarse_samples, n.fine_samples, cfg.train.lr) == (64, 64, 5e-4)
    model = MINeRF(cfg.model, 12, ["a"], [0])
    assert isinstance(model.field, NeRFaceField)
    assert len(model.field.coarse.layers) == 8 and model.field.coarse.layers[4].in_features == 256 + 63


def test_nerface_trains_loss_decreases_and_coarse_network_learns(trained):
    run, result, initial = trained
    log = _log(run)
    assert log[-1]["step"] == 40
    assert 10 ** (-log[-1]["psnr"] / 10) < LOSS_DROP_FACTOR * 10 ** (-log[0]["psnr"] / 10)
    assert log[-1]["samples_per_ray"] == 8 + 8 + 8  # coarse on 8, fine on the 8 coarse + 8 fine
    # The fine samples are drawn without gradients, so only the coarse loss can move the coarse network.
    assert not torch.equal(result.model.field.coarse.sigma.weight, initial)


def test_nerface_checkpoint_round_trip_renders_the_same_image(tiny_data, trained):
    run, result, _ = trained
    cfg, model, meta = load_run(run)  # torch.load(weights_only=True)
    assert cfg.model.backbone == "nerface" and meta["step"] == 40
    batch = frame_rays(load_dataset(tiny_data, splits=("val",)), "val", 0)
    with torch.no_grad():
        a = result.model.render_batch(batch)
        b = model.render_batch(batch)
    assert set(a) == {"rgb", "opacity", "depth", "samples", "rgb_coarse"}
    assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["rgb_coarse"], b["rgb_coarse"])


def test_missed_rays_show_the_background_and_evaluation_is_deterministic():
    cfg = load_config("nerface", SMALL)
    model = MINeRF(cfg.model, 12, ["a"], [0]).eval()
    n = 6
    origins = torch.tensor([[0.0, 0.0, 4.0]]).repeat(n, 1)
    directions = torch.tensor([[0.0, 0.0, -1.0]]).repeat(n, 1)
    near, far = torch.full((n,), 2.5), torch.full((n,), 5.5)
    far[:3] = near[:3]  # rays 0-2 miss the box
    background = torch.rand(n, 3)
    args = (origins, directions, near, far, torch.zeros(n, dtype=torch.int64), torch.zeros(n, 12))
    with torch.no_grad():
        out = model.render_rays(*args, background=background)
        again = model.render_rays(*args, background=background)
    assert torch.equal(out["rgb"][:3], background[:3]) and torch.equal(out["opacity"][:3], torch.zeros(3))
    assert torch.equal(out["rgb"], again["rgb"])


def test_hierarchical_sampling_follows_the_coarse_weights():
    bins = torch.linspace(0.0, 8.0, 9).expand(2, 9).contiguous()
    weights = torch.zeros(2, 8)
    weights[0, 3] = 1.0  # all mass in bin [3, 4]
    weights[1] = 1.0  # uniform
    for deterministic in (True, False):
        t = sample_pdf(bins, weights, 200, deterministic)
        assert bool(((t[0] >= 3.0) & (t[0] <= 4.0)).float().mean() > 0.95)
        assert abs(float(t[1].mean()) - 4.0) < 0.5


def test_positional_encoding_is_nerfs():
    x = torch.tensor([[0.25, -0.5, 1.0]])
    enc = positional_encoding(x, 2)
    expected = torch.cat([x, torch.sin(x), torch.cos(x), torch.sin(2 * x), torch.cos(2 * x)], -1)
    assert enc.shape == (1, 15) and torch.allclose(enc, expected)


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="backbone"):
        MINeRF(load_config("tiny", ["model.backbone=mlp"]).model, 12, ["a"], [0])


def test_nerface_resumed_run_and_personalisation_match_uninterrupted_ones(tiny_data, tmp_path):
    # The stratified and hierarchical samples draw from torch's global generator: a resume must take it from the
    # checkpoint, not from wherever the resuming process's generator stands.
    cfg = load_config("nerface", SMALL + ["train.steps=8", "train.checkpoint_every=3", "train.log_every=1",
                                          "train.personalize_code_fraction=0.5"])

    def interrupt(record):  # killed during step 6, after the checkpoint of step 3
        if record["step"] == 5:
            raise KeyboardInterrupt

    straight = train(cfg, tiny_data[:1], tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_data[:1], tmp_path / "resumed", progress=interrupt)
    torch.rand(7)  # the resuming process's generator is elsewhere
    again = train(cfg, tiny_data[:1], tmp_path / "resumed")
    assert again.resumed_from == 3
    assert [r["loss"] for r in _log(tmp_path / "resumed")] == [r["loss"] for r in _log(tmp_path / "straight")]
    a, b = straight.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    new = tiny_data[1:]
    straight = personalize(tmp_path / "straight", new, tmp_path / "p_straight", steps=8)
    with pytest.raises(KeyboardInterrupt):
        personalize(tmp_path / "straight", new, tmp_path / "p_resumed", steps=8, progress=interrupt)
    torch.rand(7)
    again = personalize(tmp_path / "straight", new, tmp_path / "p_resumed", steps=8)
    assert again.resumed_from == 3
    a, b = straight.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nerface_personalisation_draws_from_the_runs_seed_not_the_callers_generator(tiny_data, trained, tmp_path):
    run, _, _ = trained
    models = []
    for k in (1, 2):
        torch.manual_seed(k)  # whatever the caller's generator holds
        models.append(personalize(run, tiny_data[1:], tmp_path / f"p{k}", steps=4).model.state_dict())
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
