"""The MI-NeRF model and its training loop on a tiny procedural dataset (tiny preset, seconds each)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fastminerf import (
    CheckpointError,
    ConcatConditioning,
    ConfigError,
    DatasetError,
    MINeRF,
    MultiplicativeConditioning,
    dump_config,
    frame_rays,
    load_config,
    load_dataset,
    load_run,
    personalize,
    spherical_harmonics,
    train,
)
from fastminerf.config import parse_config_text
from fastminerf.data.synth import generate

SH_ORTHONORMAL_TOL = 0.05
"""Monte-Carlo estimate of the SH Gram matrix from 200k uniform directions: its standard error is ~1/sqrt(200k)
times the largest basis value squared (< 3), so 0.05 leaves a wide margin while catching a wrong constant (>= 10%)."""

LOSS_DROP_FACTOR = 0.8
"""The mean MSE of the last logging window must be below this times the first window's (40 tiny steps reach about
0.5x on the tiny set; 0.8 catches a loop that does not learn)."""

CHUNK_RENDER_TOL = 1e-5
"""Chunked and unchunked rendering run the same float32 kernels on the same samples; only the order of MLP batched
reductions differs."""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_heads")
    generate(root, n_identities=3, n_frames=8, size=20, seed=3, novel_frames=1)
    return root


def _two(tiny_data):
    return sorted(p for p in tiny_data.iterdir() if p.is_dir())[:2]


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _trains(tiny_data, out, overrides):
    """Train the tiny preset with ``overrides`` on two identities, check that it learns (the last logged MSE below
    LOSS_DROP_FACTOR times the first, every loss finite) and return the trained model."""
    train(load_config("tiny", overrides), _two(tiny_data), out)
    log = _log(out)
    assert all(math.isfinite(r["loss"]) for r in log)
    assert 10 ** (-log[-1]["psnr"] / 10) < LOSS_DROP_FACTOR * 10 ** (-log[0]["psnr"] / 10)
    return load_run(out)[1]


def _frame_mse(model, dataset, index, frame_code=None):
    batch = frame_rays(dataset, "train", index)
    with torch.no_grad():
        fc = batch.frame if frame_code is None else frame_code
        out = model.render_batch(batch, frame_code=fc)
    return float(torch.mean((out["rgb"] - batch.rgb) ** 2)), out["rgb"]


# ----------------------------------------------------------------------------------------------- modules


def test_multiplicative_module_is_the_stated_polynomial():
    torch.manual_seed(0)
    mod = MultiplicativeConditioning(expression_dim=3, identity_dim=2, out_dim=4, degree=2)
    e, i = torch.randn(5, 3), torch.randn(5, 2)
    lin = mod.linear
    expected = (e @ mod.A.weight.T) * (i @ mod.B.weight.T) + torch.cat([e, i], 1) @ lin.weight.T + lin.bias
    torch.testing.assert_close(mod(e, i), expected)


def test_concat_has_no_product_term_and_multiplicative_has_one():
    """An affine map of [e, i] satisfies m(e1,i1) + m(e2,i2) == m(e1,i2) + m(e2,i1); the product term breaks it."""
    torch.manual_seed(0)
    e1, e2, i1, i2 = torch.randn(1, 3), torch.randn(1, 3), torch.randn(1, 2), torch.randn(1, 2)
    cat = ConcatConditioning(3, 2, 4)
    torch.testing.assert_close(cat(e1, i1) + cat(e2, i2), cat(e1, i2) + cat(e2, i1))
    mul = MultiplicativeConditioning(3, 2, 4)
    gap = (mul(e1, i1) + mul(e2, i2) - mul(e1, i2) - mul(e2, i1)).abs().max()
    assert gap > 1e-3


def test_spherical_harmonics_are_orthonormal():
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(200_000, 3, generator=g, dtype=torch.float64), dim=1)
    y = spherical_harmonics(d, 4)
    gram = 4 * math.pi * (y.T @ y) / d.shape[0]
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=SH_ORTHONORMAL_TOL)


def test_add_identities_keeps_old_codes_and_grows_memory_by_codes_only():
    cfg = load_config("tiny").model
    model = MINeRF(cfg, 12, ["a", "b"], [0, 0, 1])
    shared = sum(p.numel() for n, p in model.named_parameters() if "codes" not in n)
    old = model.identity_codes.weight.detach().clone()
    first = model.add_identities(["c"], [2, 2])
    assert first == 3 and model.identity_names == ["a", "b", "c"]
    torch.testing.assert_close(model.identity_codes.weight[:2], old)
    torch.testing.assert_close(model.identity_codes.weight[2], old.mean(0))
    assert sum(p.numel() for n, p in model.named_parameters() if "codes" not in n) == shared
    with pytest.raises(ValueError, match="already known"):
        model.add_identities(["a"])
    with pytest.raises(KeyError, match="unknown identity 'zed'"):
        model.identity_index("zed")


@pytest.mark.parametrize("last, rows", [(0, ([0, 1, 2, 4], [3])), (2, ([2, 4], [3])), (9, ([0, 1, 2, 4], [3]))])
def test_frames_outside_training_take_the_mean_code_of_the_last_training_frames_asked(last, rows):
    cfg = load_config("tiny", [f"model.field.frame_code_from_last={last}"]).model
    model = MINeRF(cfg, 12, ["a", "b", "c"], [0, 0, 0, 1, 0])  # identity a's frames 0, 1, 2, 4 in time; c has none
    with torch.no_grad():
        model.frame_codes.weight.copy_(torch.randn(model.frame_codes.weight.shape, generator=torch.Generator().manual_seed(1)))
    codes = model.frame_codes.weight.detach()
    held = torch.stack([codes[rows[0]].mean(0), codes[rows[1]].mean(0), torch.zeros(codes.shape[1])])
    torch.testing.assert_close(model.mean_frame_codes(), held)
    identity, expression = torch.tensor([0, 1, 2]), torch.randn(3, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # what a held-out ray is conditioned on: those codes
        torch.testing.assert_close(model.condition(identity, expression), model.condition(identity, expression, held))
    with pytest.raises(ConfigError, match=r"model\.field\.frame_code_from_last must be >= 0"):
        load_config("tiny", ["model.field.frame_code_from_last=-1"])


def test_chunked_inference_matches_one_pass(tiny_data):
    cfg = load_config("tiny", ["model.chunk_rays=64"])
    data = load_dataset(_two(tiny_data))
    from fastminerf import build_model

    model = build_model(cfg, data).eval()
    batch = frame_rays(data, "train", 0)
    with torch.no_grad():
        chunked = model.render_batch(batch, frame_code=batch.frame)
        model.cfg = cfg.model.__class__(**{**cfg.model.__dict__, "chunk_rays": 10**6})
        whole = model.render_batch(batch, frame_code=batch.frame)
    assert len(batch) > 64
    torch.testing.assert_close(chunked["rgb"], whole["rgb"], atol=CHUNK_RENDER_TOL, rtol=0)
    assert torch.equal(chunked["samples"], whole["samples"])


def test_staged_pruning_keeps_the_same_samples_and_pixels(tiny_data, trained):
    # Front-to-back pruning in stages evaluates fewer densities but must keep exactly the samples one pass keeps.
    from dataclasses import replace

    _, result = trained
    model = result.model
    data = load_dataset(_two(tiny_data))
    batch = frame_rays(data, "train", 2)
    counted = []
    density = model.field._density  # every density evaluation goes through it
    model.field._density = lambda x, *a, **k: counted.append(x.shape[0]) or density(x, *a, **k)
    outs = {}
    try:
        for name, stages, grad in (("one pass", (), False), ("staged", (2, 6), False), ("off", None, False),
                                   ("one pass, gradients", (), True)):
            counted.clear()
            model.cfg = replace(result.model.cfg, prune_stages=stages or (), prune_samples=stages is not None)
            with torch.set_grad_enabled(grad):
                out = model.render_batch(batch, frame_code=batch.frame)
            outs[name] = ({k: v.detach() for k, v in out.items()}, sum(counted))
    finally:
        model.field._density = density
        model.cfg = load_config("tiny").model
    (one, n_one), (staged, n_staged), (off, n_off) = outs["one pass"], outs["staged"], outs["off"]
    grad, n_grad = outs["one pass, gradients"]
    torch.testing.assert_close(staged["rgb"], one["rgb"], atol=CHUNK_RENDER_TOL, rtol=0)
    torch.testing.assert_close(off["rgb"], one["rgb"], atol=CHUNK_RENDER_TOL, rtol=0)
    torch.testing.assert_close(grad["rgb"], one["rgb"], atol=CHUNK_RENDER_TOL, rtol=0)
    marched = int(one["samples"].sum())
    # Rendering without gradients evaluates each marched sample's density once: the pruning pass is the field's
    # density pass. With gradients (training) the kept samples are evaluated again, differentiably; without pruning
    # every sample once.
    assert n_one == marched == n_off and n_staged <= n_one
    assert marched < n_grad <= 2 * marched


# ----------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run_mul")
    cfg = load_config("tiny")
    result = train(cfg, _two(tiny_data), run)
    return run, result


def test_training_decreases_loss_and_beats_constant_colour(tiny_data, trained):
    run, result = trained
    log = _log(run)
    assert [r["step"] for r in log] == list(range(5, 41, 5))
    first, last = log[0], log[-1]
    assert 10 ** (-last["psnr"] / 10) < LOSS_DROP_FACTOR * 10 ** (-first["psnr"] / 10)
    for key in ("seconds", "loss", "psnr", "rays_per_s", "samples_per_ray"):
        assert math.isfinite(last[key])
    data = load_dataset(_two(tiny_data))
    table = data.table("train")
    pixels = np.stack([data.image("train", b) for b in range(len(table))]).astype(np.float64) / 255
    constant_mse = float(((pixels - pixels.reshape(-1, 3).mean(0)) ** 2).mean())
    model_mse = np.mean([_frame_mse(result.model, data, b)[0] for b in range(len(table))])
    assert model_mse < constant_mse, (model_mse, constant_mse)


def test_checkpoint_round_trip_renders_the_same_image(tiny_data, trained):
    run, result = trained
    cfg, model, meta = load_run(run)
    assert meta["step"] == 40 and meta["identity_names"] == result.model.identity_names
    assert cfg == load_config("tiny")
    data = load_dataset(_two(tiny_data))
    for frame_code in (None, torch.tensor([1] * 400)):
        _, a = _frame_mse(result.model, data, 1, frame_code)
        _, b = _frame_mse(model, data, 1, frame_code)
        assert torch.equal(a, b)


@pytest.mark.parametrize("extra", [[], ["sampler.error_fraction=0.5"], ["train.ema_decay=0.9", "train.ray_jitter=true"],
                                   ["sampler.pool_frames=3"]])
def test_resume_continues_from_the_same_step_and_matches_uninterrupted(tiny_data, tmp_path, extra):
    # With error-map sampling the maps are part of the state: a resume that lost them would draw other rays; with a
    # weight average, the average is (the models compared are the averages); jittered rays draw from the saved
    # generator; with a frame pool, the pool is.
    cfg = load_config("tiny", ["train.steps=10", "train.checkpoint_every=3", "train.log_every=1"] + extra)
    straight = train(cfg, _two(tiny_data), tmp_path / "straight")

    def interrupt(record):  # killed during step 8, after the checkpoint of step 6
        if record["step"] == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, _two(tiny_data), tmp_path / "resumed", progress=interrupt)
    assert load_run(tmp_path / "resumed")[2]["step"] == 6
    again = train(cfg, _two(tiny_data), tmp_path / "resumed")
    assert again.resumed_from == 6 and again.step == 10
    a, b = straight.model.state_dict(), again.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in _log(tmp_path / "resumed")] == list(range(1, 11))
    assert [r["loss"] for r in _log(tmp_path / "resumed")] == [r["loss"] for r in _log(tmp_path / "straight")]


def test_a_resume_between_two_log_lines_logs_what_an_uninterrupted_run_logs(tiny_data, tmp_path):
    # A checkpoint at step 6 with a line every 4 steps: the resumed run's line at step 8 gave the PSNR of steps 7-8
    # only (the window of steps 5-6 was lost), the uninterrupted run's that of steps 5-8. The checkpoint keeps the
    # window of steps not logged yet.
    cfg = load_config("tiny", ["train.steps=12", "train.checkpoint_every=3", "train.log_every=4"])
    train(cfg, _two(tiny_data), tmp_path / "straight")

    def interrupt(record):
        if record["step"] == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, _two(tiny_data), tmp_path / "resumed", progress=interrupt)
    assert load_run(tmp_path / "resumed")[2]["step"] == 6
    train(cfg, _two(tiny_data), tmp_path / "resumed")
    keep = ("step", "loss", "psnr", "samples_per_ray", "occupied")
    straight, resumed = ([{k: r[k] for k in keep} for r in _log(tmp_path / run)] for run in ("straight", "resumed"))
    assert [r["step"] for r in resumed] == [4, 8, 12]
    assert resumed == straight


@pytest.mark.parametrize("every, seconds, written", [(0, 0, [6]), (4, 0, [4, 6]), (0, 1e9, [6]), (2, 1e9, [2, 4, 6])])
def test_a_checkpoint_trigger_of_zero_is_off(tiny_data, tmp_path, monkeypatch, every, seconds, written):
    # `--set train.checkpoint_seconds=0` (or checkpoint_every=0) wrote the whole model to disk after every step:
    # 0 now turns that trigger off; the last step is always written.
    import importlib

    train_module = importlib.import_module("fastminerf.train")  # the package's `train` is the function
    steps = []
    real = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint", lambda path, payload: (steps.append(payload["step"]),
                                                                               real(path, payload))[1])
    cfg = load_config("tiny", ["train.steps=6", "train.log_every=1", f"train.checkpoint_every={every}",
                               f"train.checkpoint_seconds={seconds}"])
    train(cfg, _two(tiny_data), tmp_path / "run")
    assert steps == written
    with pytest.raises(ConfigError, match="checkpoint_seconds"):
        load_config("tiny", ["train.checkpoint_seconds=-1"])


def test_weight_average_follows_its_recursion_and_is_what_a_run_loads(tiny_data, tmp_path):
    from fastminerf.train import WeightAverage, load_checkpoint

    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0), lin.bias.fill_(0.0)
    avg = WeightAverage(lin, 0.5)
    expect = torch.ones(1, 2)
    for n, v in enumerate([3.0, -1.0, 2.0, 5.0], start=1):
        with torch.no_grad():
            lin.weight.fill_(v)
        avg.update(lin)
        d = min(0.5, (1 + n) / (10 + n))
        expect = d * expect + (1 - d) * v
        assert torch.allclose(avg.params[0], expect)
    with avg.applied(lin):
        assert torch.allclose(lin.weight, expect)
    assert torch.equal(lin.weight, torch.full((1, 2), 5.0))  # its own weights again

    seen = []
    cfg = load_config("tiny", ["train.steps=6", "train.log_every=6", "train.ema_decay=0.9"])
    res = train(cfg, _two(tiny_data), tmp_path / "run",
                monitor=lambda model, rec: seen.append({k: v.clone() for k, v in model.state_dict().items()}))
    raw = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model"]
    loaded = load_run(tmp_path / "run")[1].state_dict()
    final = res.model.state_dict()
    moved = [k for k in raw if not torch.equal(raw[k], loaded[k])]
    assert moved and "identity_codes.weight" in moved  # the average is not the last weights...
    for k in loaded:  # ... and it is what the run loads, what training returns and what the monitor saw
        assert torch.equal(loaded[k], final[k]) and torch.equal(loaded[k], seen[-1][k]), k


def test_jittered_rays_start_anywhere_within_a_step_and_repeat_with_the_generator():
    from fastminerf.train import jitter_near

    near = torch.linspace(0.5, 1.5, 20000)
    gen = torch.Generator().manual_seed(3)
    moved = jitter_near(near, 0.02, gen) - near
    assert moved.min() >= 0 and moved.max() < 0.02
    counts = torch.histc(moved, bins=4, min=0.0, max=0.02)  # uniform over the step
    assert torch.all((counts - 5000).abs() < 300), counts
    assert torch.equal(jitter_near(near, 0.02, torch.Generator().manual_seed(3)) - near, moved)


def test_eval_render_steps_march_finer_outside_training_only(tiny_data, trained):
    from dataclasses import replace

    _, model, _ = load_run(trained[0])
    batch = frame_rays(load_dataset(_two(tiny_data), splits=("train",)), "train", 0)
    with torch.no_grad():
        base = model.render_batch(batch)
        model.cfg = replace(model.cfg, eval_render_steps=2 * model.cfg.render_steps)
        fine = model.render_batch(batch)
        model.train()
        training = model.render_batch(batch, frame_code=batch.frame)
        model.eval()
        assert math.isclose(model.render_step_size * 2, model.step_size)
    hit = base["samples"] > 4
    ratio = fine["samples"][hit].float().sum() / base["samples"][hit].float().sum()
    assert 1.8 < ratio < 2.2  # twice the samples on the rays that meet the head
    assert torch.equal(training["samples"], base["samples"])  # training keeps its own step
    assert float(torch.mean((fine["rgb"] - base["rgb"]) ** 2)) < 1e-3  # the same field, integrated more finely


def test_concat_and_multiplicative_both_train(tiny_data, tmp_path, trained):
    cfg = load_config("tiny", ["model.field.conditioning=concat"])
    result = train(cfg, _two(tiny_data), tmp_path / "concat")
    log = _log(tmp_path / "concat")
    assert 10 ** (-log[-1]["psnr"] / 10) < LOSS_DROP_FACTOR * 10 ** (-log[0]["psnr"] / 10)
    assert isinstance(result.model.field.conditioning, ConcatConditioning)
    assert isinstance(trained[1].model.field.conditioning, MultiplicativeConditioning)


def test_mask_loss_makes_opacity_follow_the_masks(tiny_data, tmp_path):
    plain = train(load_config("tiny", ["train.steps=100"]), _two(tiny_data), tmp_path / "plain").model
    masked = train(load_config("tiny", ["train.steps=100", "train.mask_weight=1.0"]), _two(tiny_data), tmp_path / "mask").model
    data = load_dataset(_two(tiny_data))
    errors = {}
    for name, model in (("plain", plain), ("mask", masked)):
        err = []
        for b in range(len(data.table("train"))):
            batch = frame_rays(data, "train", b)
            assert not torch.isnan(batch.mask).any()  # the procedural heads have masks
            with torch.no_grad():
                out = model.render_batch(batch, frame_code=batch.frame)
            err.append(float(torch.mean((out["opacity"] - batch.mask) ** 2)))
        errors[name] = float(np.mean(err))
    assert errors["mask"] < 0.5 * errors["plain"], errors


def test_identity_levels_train_and_keep_identities_apart(tiny_data, tmp_path):
    # With identity levels the finest levels of the one shared table are read at identity-specific rows: the model
    # trains, round-trips through its checkpoint, and two identities read the same coarse but different fine
    # features at the same points.
    cfg = load_config("tiny", ["model.field.identity_levels=2"])
    result = train(cfg, _two(tiny_data), tmp_path / "idl")
    log = _log(tmp_path / "idl")
    assert 10 ** (-log[-1]["psnr"] / 10) < LOSS_DROP_FACTOR * 10 ** (-log[0]["psnr"] / 10)
    _, model, _ = load_run(tmp_path / "idl")
    enc = model.field.encoding
    assert enc.levels.salted_from == cfg.model.field.n_levels - 2
    points = torch.rand(200, 3)
    with torch.no_grad():
        a, b = enc(points, torch.zeros(200, dtype=torch.long)), enc(points, torch.ones(200, dtype=torch.long))
    split = enc.levels.salted_from * enc.levels.n_features
    torch.testing.assert_close(a[:, :split], b[:, :split], atol=0, rtol=0)
    assert not torch.allclose(a[:, split:], b[:, split:])
    torch.testing.assert_close(enc.params, result.model.field.encoding.params.cpu())
    with pytest.raises(ValueError, match="identity levels"):
        model.field.density(points, torch.zeros(200, model.field.cond_dim))


def test_identity_levels_for_colour_keep_density_shared(tiny_data, tmp_path):
    # identity_levels_for=colour: the density head reads a grid shared at every level (the same density for every
    # identity given the same conditioning), the colour head also reads per-identity levels; the model trains.
    field = _trains(tiny_data, tmp_path / "col", ["model.field.identity_levels_for=colour"]).field
    assert field.encoding.levels.salted_from == field.encoding.levels.n_levels and field.colour_encoding is not None
    points, cond = torch.rand(64, 3), torch.randn(1, field.cond_dim).expand(64, -1).contiguous()
    dirs = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    with torch.no_grad():
        s0, c0 = field(points, dirs, cond, None, torch.zeros(64, dtype=torch.long))
        s1, c1 = field(points, dirs, cond, None, torch.ones(64, dtype=torch.long))
    torch.testing.assert_close(s0, s1, atol=0, rtol=0)
    assert not torch.allclose(c0, c1)


def test_density_levels_give_a_coarse_geometry_grid_and_train(tiny_data, tmp_path):
    # model.field.density_levels=k: the density head's grid is the coarsest k levels of the same pyramid (same
    # resolutions, fewer rows), the colour head keeps its fine identity levels, and the model trains. Without
    # colour levels the option is refused (the fine detail would be lost).
    from fastminerf.field import MINeRFField

    full = MINeRFField(load_config("tiny", ["model.field.identity_levels_for=colour"]).model.field, 12)
    field = _trains(tiny_data, tmp_path / "dl", ["model.field.identity_levels_for=colour", "model.field.density_levels=2"]).field
    assert field.encoding.levels.n_levels == 2 and field.encoding.output_dim == 2 * full.encoding.levels.n_features
    assert field.encoding.levels.n_rows < full.encoding.levels.n_rows
    for key in ("base_resolution", "per_level_scale"):
        assert field.encoding.hparams[key] == full.encoding.hparams[key], key
    assert field.colour_encoding.hparams == full.colour_encoding.hparams
    with pytest.raises(ValueError, match="density_levels needs the colour head's own fine levels"):
        MINeRFField(load_config("tiny", ["model.field.density_levels=2"]).model.field, 12)
    with pytest.raises(ValueError, match="density_levels must be in"):
        MINeRFField(load_config("tiny", ["model.field.identity_levels_for=colour", "model.field.density_levels=9"]).model.field, 12)


def test_deformation_starts_as_identity_then_moves_points_with_the_conditioning(tiny_data, tmp_path):
    # model.field.deform_layers: x' = x + D(enc(x), c) before the grid. Untrained it is the identity map; trained,
    # it moves points differently under different conditionings, and the grid reads the moved points.
    from fastminerf.field import MINeRFField

    field = MINeRFField(load_config("tiny", ["model.field.deform_layers=1"]).model.field, 12)
    points, dirs = torch.rand(64, 3), torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    cond, ids = torch.randn(64, field.cond_dim), torch.zeros(64, dtype=torch.long)
    torch.testing.assert_close(field.deformation(points, cond, None), points, atol=0, rtol=0)
    field = _trains(tiny_data, tmp_path / "deform", ["model.field.deform_layers=1"]).field
    with torch.no_grad():
        moved = field.deformation(points, cond, None)
        other = field.deformation(points, torch.randn(64, field.cond_dim), None)
        assert float((moved - points).abs().max()) > 0 and not torch.allclose(moved, other)
        density = field.density(points, cond, None, ids)
        field.deformation = None  # the same field reading the undeformed points
        assert not torch.allclose(density, field.density(points, cond, None, ids))


def test_texture_flow_starts_at_zero_then_moves_the_texture_with_the_conditioning(tiny_data, tmp_path):
    # model.field.texture_flow: the density head also outputs a flow that moves the colour head's own (per-person)
    # grid lookup. Untrained the flow is zero: the same function as the field without it; trained, it depends on
    # the conditioning and changes the colours it reads.
    from fastminerf.field import MINeRFField

    over = ["model.field.identity_levels_for=colour", "model.field.texture_flow=0.05"]
    field = MINeRFField(load_config("tiny", over).model.field, 12)
    plain = MINeRFField(load_config("tiny", over[:1]).model.field, 12)
    state = field.state_dict()
    last = [k for k in state if k.startswith("density_head.rest.")][-2:]  # the last layer's weight and bias
    plain.load_state_dict({k: (v[:-3] if k in last else v) for k, v in state.items()})
    points, dirs = torch.rand(64, 3), torch.nn.functional.normalize(torch.randn(8, 3), dim=-1)
    rays, ids = torch.arange(64) // 8, torch.zeros(8, dtype=torch.long)
    cond = torch.randn(8, field.cond_dim)
    with torch.no_grad():
        for a, b in zip(field(points, dirs, cond, rays, ids), plain(points, dirs, cond, rays, ids)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    field = _trains(tiny_data, tmp_path / "flow", over).field
    with torch.no_grad():
        flow = lambda c: field.density_head(field.encoding(points), c, rays)[:, -3:]  # noqa: E731
        assert float(flow(cond).abs().max()) > 0 and not torch.allclose(flow(cond), flow(torch.randn(8, field.cond_dim)))
        rgb = field(points, dirs, cond, rays, ids)[1]
        field.density_head.rest[-1].weight[-3:].zero_()
        field.density_head.rest[-1].bias[-3:].zero_()
        assert not torch.allclose(rgb, field(points, dirs, cond, rays, ids)[1])
    with pytest.raises(ValueError, match="texture_flow moves the colour head's own grid lookup"):
        MINeRFField(load_config("tiny", over[1:]).model.field, 12)


def test_distortion_loss_and_modulation_train(tiny_data, tmp_path):
    # The distortion loss and FiLM modulation are optional parts of the objective and the heads: both must train.
    # A run that learns was all this checked: it passed with the distortion term left out of the loss, and with the
    # modulation's scales never made or never used (the plain additive head learns as well).
    from fastminerf.field import _SplitInputHead

    model = _trains(tiny_data, tmp_path / "dist", ["train.distortion_weight=0.01", "model.field.modulate=true"])
    scales = [m.scale.weight.detach() for m in model.modules() if isinstance(m, _SplitInputHead) and m.scale is not None]
    assert scales and all(float(s.abs().max()) > 0 for s in scales)  # zero-initialised: learned, so in the forward pass
    first = {}
    for weight in (0.0, 1.0):  # the same first batch through the same initial weights: only the objective differs
        train(load_config("tiny", ["train.steps=1", "train.log_every=1", f"train.distortion_weight={weight}"]),
              _two(tiny_data), tmp_path / f"d{weight}")
        first[weight] = _log(tmp_path / f"d{weight}")[0]
    assert first[1.0]["psnr"] == first[0.0]["psnr"] and first[1.0]["loss"] > first[0.0]["loss"], first


def test_personalize_adds_an_identity_without_touching_shared_size(tiny_data, trained, tmp_path):
    run, _ = trained
    new = sorted(p for p in tiny_data.iterdir() if p.is_dir())[2]
    result = personalize(run, [new], tmp_path / "pers", steps=10)
    _, model, meta = load_run(tmp_path / "pers")
    assert meta["identity_names"][-1] == new.name and len(meta["identity_names"]) == 3
    assert meta["kind"] == "personalize" and result.step == 10
    phases = [r["phase"] for r in _log(tmp_path / "pers")]
    assert phases[0] == "codes" and phases[-1] == "all"
    with pytest.raises(ValueError, match="already in the generic model .* and .* are not"):
        personalize(run, [_two(tiny_data)[0], new], tmp_path / "pers2", steps=2)


def test_personalize_fine_tunes_a_known_identity_on_its_own_frames(tiny_data, trained, tmp_path):
    # MI-NeRF's per-identity fine-tuning: a known identity keeps its codes' slots, learns its own frames better, and
    # the other identity's codes are untouched.
    run, _ = trained
    _, generic, _ = load_run(run)
    first, second = _two(tiny_data)
    over = ["train.personalize_tune=all", "train.log_every=5"]
    result = personalize(run, [second], tmp_path / "ft", steps=40, overrides=over)
    _, tuned, meta = load_run(tmp_path / "ft")
    assert meta["identity_names"] == [first.name, second.name] and meta["refined"] == [second.name]
    assert result.step == 40 and {r["phase"] for r in _log(tmp_path / "ft")} == {"all"}  # no code-only phase
    assert torch.equal(tuned.frame_identity, generic.frame_identity)
    mine = generic.frame_identity == 1
    before, after = generic.frame_codes.weight.detach(), tuned.frame_codes.weight.detach()
    assert torch.equal(before[~mine], after[~mine]) and not torch.equal(before[mine], after[mine])
    assert torch.equal(generic.identity_codes.weight[0], tuned.identity_codes.weight[0])
    data = load_dataset(_two(tiny_data), splits=("train",))
    rows = np.flatnonzero(data.table("train").identity == 1)
    mse = [np.mean([_frame_mse(m, data, int(i))[0] for i in rows]) for m in (generic, tuned)]
    assert mse[1] < 0.8 * mse[0], mse  # its own frames, rendered with their own codes through the model's frame ids
    again = personalize(run, [second], tmp_path / "ft", steps=40, overrides=over)  # finished: resumes at the end
    assert again.resumed_from == 40
    with pytest.raises(CheckpointError, match="fine-tuned"):
        personalize(run, [first], tmp_path / "ft", steps=40, overrides=over)
    # other tuned weights would not fit the saved optimizer: refused, naming the setting (more steps may resume)
    with pytest.raises(CheckpointError, match="train.personalize_tune: 'all' -> 'grid'"):
        personalize(run, [second], tmp_path / "ft", steps=40, overrides=["train.personalize_tune=grid"])
    assert personalize(run, [second], tmp_path / "ft", steps=45, overrides=over).step == 45


def test_personalize_of_a_known_identity_needs_the_frames_it_was_trained_on(tiny_data, trained, tmp_path):
    import shutil

    run, _ = trained
    copy = tmp_path / _two(tiny_data)[0].name
    shutil.copytree(_two(tiny_data)[0], copy)
    meta = json.loads((copy / "transforms_train.json").read_text())
    meta["frames"] = meta["frames"][:-1]
    (copy / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=f"{copy}.* trained on {len(meta['frames']) + 1} training frames"):
        personalize(run, [copy], tmp_path / "ft", steps=2)


def test_personalize_resumes_in_either_phase_with_its_average(tiny_data, trained, tmp_path):
    run, _ = trained
    new = sorted(p for p in tiny_data.iterdir() if p.is_dir())[2]
    over = ["train.personalize_code_fraction=0.4", "train.checkpoint_every=2", "train.log_every=1",
            "train.ema_decay=0.9", "train.ray_jitter=true"]
    straight = personalize(run, [new], tmp_path / "straight", steps=10, overrides=over)
    for stop in (3, 7):  # killed in the codes phase (4 steps), then in the second one
        def interrupt(record, stop=stop):
            if record["step"] == stop:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            personalize(run, [new], tmp_path / f"resumed{stop}", steps=10, overrides=over, progress=interrupt)
        again = personalize(run, [new], tmp_path / f"resumed{stop}", steps=10, overrides=over)
        assert again.resumed_from == stop - 1 and again.step == 10
        a, b = straight.model.state_dict(), again.model.state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), (stop, k)


@pytest.mark.parametrize("tune", ["grid", "all"])
def test_personalize_tunes_the_shared_weights_it_is_told_to(tiny_data, trained, tmp_path, tune):
    # train.personalize_tune=grid fine-tunes the hash grid (and the codes) and leaves the heads and the conditioning
    # module exactly as the generic run left them; =all changes them too.
    run, _ = trained
    new = sorted(p for p in tiny_data.iterdir() if p.is_dir())[2]
    _, generic, _ = load_run(run)
    personalize(run, [new], tmp_path / tune, steps=8, overrides=[f"train.personalize_tune={tune}"])
    cfg, model, _ = load_run(tmp_path / tune)
    assert cfg.train.personalize_tune == tune
    before = dict(generic.field.named_parameters())
    changed = {name: not torch.equal(p, before[name]) for name, p in model.field.named_parameters()}
    assert all(v for k, v in changed.items() if k.startswith("encoding.")), changed
    heads = [v for k, v in changed.items() if not k.startswith("encoding.")]
    assert heads and (any(heads) if tune == "all" else not any(heads)), changed


def test_train_and_personalize_give_the_callers_thread_count_back(tiny_data, trained, tmp_path):
    """``train.threads`` sized torch's thread pool for the whole process and left it so: a notebook that called
    train() or personalize() with ``train.threads=1`` ran everything after it on one thread."""
    run, _ = trained
    new = sorted(p for p in tiny_data.iterdir() if p.is_dir())[2]
    before = torch.get_num_threads()
    seen = []
    try:
        torch.set_num_threads(2)
        train(load_config("tiny", ["train.steps=1", "train.log_every=1", "train.threads=1"]), _two(tiny_data),
              tmp_path / "t", progress=lambda rec: seen.append(torch.get_num_threads()))
        assert seen == [1] and torch.get_num_threads() == 2
        personalize(run, [new], tmp_path / "p", steps=1, overrides=["train.threads=1", "train.log_every=1"],
                    progress=lambda rec: seen.append(torch.get_num_threads()))
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_train_leaves_torchs_global_random_state_alone(tiny_data, tmp_path):
    """train() seeded torch's global generator with train.seed (to draw the initial weights) and left it so: a
    notebook's random draws after it were the same whatever it had seeded."""
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    train(load_config("tiny", ["train.steps=1"]), _two(tiny_data), tmp_path / "t")
    assert torch.equal(torch.rand(3), expected)


def test_train_and_personalize_learn_when_the_caller_turned_gradients_off(tiny_data, trained, tmp_path):
    """A serving process or notebook that turned autograd off (torch.set_grad_enabled(False), a torch.no_grad()
    block) and then trained got a run that learned nothing: every step's loss had no gradient, the step skipped its
    update, and train reported the steps done. They train as with gradients on, and give the caller's mode back."""
    run, _ = trained
    new = sorted(p for p in tiny_data.iterdir() if p.is_dir())[2]
    cfg = load_config("tiny", ["train.steps=4", "train.log_every=2"])
    expected = train(cfg, _two(tiny_data), tmp_path / "on")
    expected_p = personalize(run, [new], tmp_path / "p_on", steps=3)
    with torch.no_grad():
        got = train(cfg, _two(tiny_data), tmp_path / "off")
        got_p = personalize(run, [new], tmp_path / "p_off", steps=3)
        assert not torch.is_grad_enabled()
    assert (got.loss, got_p.loss) == (expected.loss, expected_p.loss)
    for a, b in (("on", "off"), ("p_on", "p_off")):
        trained_state, other = (load_run(tmp_path / d)[1].state_dict() for d in (a, b))
        assert all(torch.equal(trained_state[k], other[k]) for k in trained_state)


def test_train_runs_inside_the_callers_inference_mode(tiny_data, tmp_path):
    """A server that handles every request inside torch.inference_mode() (torch's advice for serving) and trains
    there stopped at the first step with torch's 'Inference tensors cannot be saved for backward'. train (and
    personalize, through the same wrapper) trains as outside it, and leaves the caller in inference mode."""
    cfg = load_config("tiny", ["train.steps=2", "train.log_every=1"])
    expected = train(cfg, _two(tiny_data), tmp_path / "outside")
    with torch.inference_mode():
        got = train(cfg, _two(tiny_data), tmp_path / "inside")
        assert torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
    assert got.loss == expected.loss


def test_runs_load_and_train_under_the_callers_float64_default_dtype(tiny_data, trained, tmp_path):
    """A notebook that set torch.set_default_dtype(torch.float64) for its own numerics could not load any run:
    load_run said 'checkpoint ...: bad model description: occs must be a float32 vector', as if the file were
    damaged, and build_model and train failed so too. The model is float32 (its kernels are), built so whatever the
    default, which the caller keeps."""
    run, _ = trained
    cfg = load_config("tiny", ["train.steps=2"])
    expected = train(cfg, _two(tiny_data), tmp_path / "f32")
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        model = load_run(run)[1]
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        got = train(cfg, _two(tiny_data), tmp_path / "f64")
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(before)
    assert got.loss == expected.loss


def test_load_run_leaves_torchs_global_random_state_alone(trained):
    """load_run built the model (its initial weights drawn from torch's global generator) and then loaded the
    checkpoint's weights over them: each load moved the caller's stream, so a server or notebook that seeded torch
    drew other numbers after loading a run, and other ones again after each reload."""
    run, _ = trained
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    load_run(run)
    assert torch.equal(torch.rand(3), expected)


def test_personalize_takes_a_lone_override_string(tiny_data, trained, tmp_path):
    run, _ = trained
    new = sorted(p for p in tiny_data.iterdir() if p.is_dir())[2]
    personalize(run, new, tmp_path / "p", steps=1, overrides="train.personalize_tune=all")
    assert load_run(tmp_path / "p")[0].train.personalize_tune == "all"


def test_personalize_refuses_model_overrides(tiny_data, trained, tmp_path):
    run, _ = trained
    new = sorted(p for p in tiny_data.iterdir() if p.is_dir())[2]
    with pytest.raises(ConfigError, match="model.field.hidden_dim"):
        personalize(run, [new], tmp_path / "p", steps=2, overrides=["model.field.hidden_dim=8"])
    with pytest.raises(ConfigError, match="personalize_tune must be"):
        personalize(run, [new], tmp_path / "p", steps=2, overrides=["train.personalize_tune=heads"])


# ----------------------------------------------------------------------------------------------- bad inputs


def test_unknown_config_key_names_it_and_close_matches():
    with pytest.raises(ConfigError, match=r"model\.field\.conditionin'.*model\.field\.conditioning"):
        load_config("tiny", ["model.field.conditionin=concat"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config("tiny", ["train.steps=many"])
    with pytest.raises(ConfigError, match="unknown config preset 'huge'"):
        load_config("huge")
    cfg = load_config("cpu", ["model.field.conditioning=concat", "train.max_seconds=none"])
    assert parse_config_text(dump_config(cfg)) == cfg and cfg.train.max_seconds is None


def test_a_preset_extends_another_and_a_cycle_is_named(tmp_path):
    (tmp_path / "mine.yaml").write_text("extends: tiny\ntrain:\n  steps: 7\n")
    assert load_config(tmp_path / "mine.yaml") == load_config("tiny", ["train.steps=7"])
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="in a cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("extends: tiny\ntrain:\n  stepz: 7\n")
    with pytest.raises(ConfigError, match="train.stepz"):
        load_config(tmp_path / "bad.yaml")


def test_bad_conditioning_name_is_rejected():
    with pytest.raises(ValueError, match="multiplicative' or 'concat'"):
        MINeRF(load_config("tiny", ["model.field.conditioning=sum"]).model, 12, ["a"], [0])


def test_expression_length_mismatch_is_a_clear_error(trained):
    model = trained[1].model
    n = 4
    rays = dict(origins=torch.zeros(n, 3), directions=torch.tensor([[0.0, 0.0, 1.0]]).repeat(n, 1),
                near=torch.zeros(n), far=torch.ones(n), identity=torch.zeros(n, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expression must have shape \(N, 12\)"):
        model.render_rays(**rays, expression=torch.zeros(n, 5))
    with pytest.raises(IndexError, match="identity id outside"):
        model.render_rays(**{**rays, "identity": torch.full((n,), 7)}, expression=torch.zeros(n, 12))


def test_corrupt_checkpoint_names_the_file(trained, tmp_path):
    run, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = (run / "checkpoint.pt").read_bytes()
    (bad / "checkpoint.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=str(bad / "checkpoint.pt")):
        load_run(bad)
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint"):
        load_run(bad)
    torch.save({"weights": torch.zeros(3)}, bad / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a fastminerf checkpoint"):
        load_run(bad)


def test_a_file_that_is_no_checkpoint_is_refused_in_one_line_without_torchs_advice(tmp_path):
    """`fastminerf info` given an image or a pickle of objects: the error carried torch's six-line UnpicklingError,
    which advises re-running torch.load with weights_only=False (running the file's code) and filing a PyTorch issue."""
    import pickle
    from collections import OrderedDict

    import imageio.v3 as iio
    import numpy as np

    from fastminerf.train import load_checkpoint

    png = tmp_path / "contact_sheet.png"
    iio.imwrite(png, np.zeros((8, 8, 3), np.uint8))
    objects = tmp_path / "objects.pt"
    objects.write_bytes(pickle.dumps({"model": OrderedDict(), "callback": print}, protocol=2))
    for path in (png, objects):
        with pytest.raises(CheckpointError, match="corrupt or not a checkpoint") as err:
            load_checkpoint(path)
        text = str(err.value)
        assert "\n" not in text and str(path) in text and "weights_only" not in text and "issue" not in text, text


def test_a_checkpoint_whose_bytes_were_damaged_is_refused_not_loaded(trained, tmp_path):
    """One byte flipped inside the weights (a bad disk, a copy gone wrong): torch.load does not check the zip's CRCs,
    so info, eval and a resume took the damaged weights without a word (a resume trained on from them)."""
    import zipfile

    run, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = bytearray((run / "checkpoint.pt").read_bytes())
    with zipfile.ZipFile(run / "checkpoint.pt") as z:
        big = max(z.infolist(), key=lambda i: i.file_size)  # a weight tensor's bytes, stored uncompressed
    h = big.header_offset  # local header: 30 bytes, then the name and the extra field, then the data
    start = h + 30 + int.from_bytes(raw[h + 26:h + 28], "little") + int.from_bytes(raw[h + 28:h + 30], "little")
    raw[start + big.file_size // 2] ^= 0x40
    (bad / "checkpoint.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged") as err:
        load_run(bad)
    assert str(bad / "checkpoint.pt") in str(err.value) and big.filename in str(err.value), err.value
    load_run(run)  # the intact file still loads


@pytest.mark.parametrize("edit", ["wider codes", "config not yaml", "names not a list"])
def test_a_checkpoint_whose_contents_do_not_fit_is_refused_in_one_line_naming_it(trained, tmp_path, edit):
    """A checkpoint written by another tool or edited (weights of another shape, a config that is not YAML, identity
    names that are no list) was refused in torch's two lines ('Error(s) in loading state_dict for MINeRF:' then the
    size mismatch) or crashed info and eval with a traceback (yaml.parser.ParserError, TypeError)."""
    run, _ = trained
    data = torch.load(run / "checkpoint.pt", weights_only=True)
    if edit == "wider codes":
        w = data["model"]["identity_codes.weight"]
        data["model"]["identity_codes.weight"] = torch.zeros(w.shape[0], w.shape[1] + 3)
    elif edit == "config not yaml":
        data["config_yaml"] = "model: [1, 2"
    else:
        data["identity_names"] = 5
    bad = tmp_path / "checkpoint.pt"
    torch.save(data, bad)
    with pytest.raises(CheckpointError) as err:
        load_run(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_resume_with_a_missing_identity_is_refused(tiny_data, trained):
    run, _ = trained
    with pytest.raises(CheckpointError, match="missing"):
        train(load_config("tiny"), _two(tiny_data)[:1], run)


def test_cli_train_then_resume(tiny_data, tmp_path):
    from fastminerf.cli import main

    args = ["train", "--data", *map(str, _two(tiny_data)), "--out", str(tmp_path / "r"), "--config", "tiny", "--steps", "4"]
    assert main(args) == 0
    assert main(args[:-1] + ["6"]) == 0
    assert _log(tmp_path / "r")[-1]["step"] == 6
    assert main(args + ["--set", "model.field.hidden_dm=3"]) == 2
    # settings that only personalisation reads do not stop a generic run from resuming; a changed model does
    assert main(args[:-1] + ["8", "--set", "train.personalize_tune=all", "--set", "train.personalize_lr_factor=0.5"]) == 0
    assert _log(tmp_path / "r")[-1]["step"] == 8
    assert main(args[:-1] + ["10", "--set", "model.field.hidden_dim=32"]) == 2


def test_monitor_stops_training_and_its_time_is_not_training_time(tiny_data, tmp_path):
    import time

    cfg = load_config("tiny", ["train.log_every=2"])
    seen = []

    def monitor(model, record):  # what a benchmark does: evaluate, then decide whether to stop
        assert not model.training and not torch.is_grad_enabled()
        seen.append(record["step"])
        time.sleep(0.2)
        return record["step"] >= 6

    start = time.perf_counter()
    result = train(cfg, _two(tiny_data), tmp_path / "monitored", monitor=monitor)
    wall = time.perf_counter() - start
    assert seen == [2, 4, 6] and result.step == 6 and load_run(tmp_path / "monitored")[2]["step"] == 6
    assert result.seconds <= wall - 0.2 * len(seen)  # the monitor's sleeps are outside the training clock
    assert result.model.training is False  # train() returns the model in eval mode as before


def test_a_step_is_timed_until_its_device_work_is_done(tiny_data, tmp_path, monkeypatch):
    """On a CUDA device a step's backward pass and optimizer update are queued, and the host waits for them at its
    first read of a result; the loop read the loss (float(loss)) only after it had stopped the step's clock, so
    without error-map sampling (tiny, nerface, the defaults) a step's seconds and rays_per_s left out its backward
    pass and update, and train.max_seconds ran long. Here a host read after backward() advances a fake clock by the
    queued work's time, as on an asynchronous device."""
    import time

    queued, clock, wait = [False], [0.0], 1.0
    backward = torch.Tensor.backward

    def queue(self, *args, **kwargs):
        backward(self, *args, **kwargs)
        queued[0] = True

    def reader(name):
        real = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if queued[0]:
                queued[0], clock[0] = False, clock[0] + wait
            return real(self, *args, **kwargs)
        return read

    monkeypatch.setattr(torch.Tensor, "backward", queue)
    for name in ("__float__", "__int__", "__bool__", "item", "cpu", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, reader(name))
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    steps = 4
    result = train(load_config("tiny", [f"train.steps={steps}", "train.log_every=1"]), _two(tiny_data), tmp_path / "r")
    assert result.seconds >= steps * wait
    assert all(r["rays_per_s"] <= 256 / wait for r in _log(tmp_path / "r"))


def test_device_choice(tiny_data, tmp_path):
    from fastminerf.train import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="train.device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            resolve_device("cuda")


def test_a_gpu_index_beyond_the_machine_is_refused(monkeypatch):
    """train.device=cuda:1 on a machine with one GPU was accepted: training read the data, built and carved the
    model, then failed in model.to(device) with torch's 'CUDA error: invalid device ordinal' traceback."""
    from fastminerf.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"train.device='cuda:1'.*1 CUDA device.*cuda:0"):
        resolve_device("cuda:1")


def test_an_unusable_device_is_refused_before_any_work(tiny_data, trained, tmp_path):
    """train.device=gpu (or cuda on a machine without one) was refused only after the data was read, the model
    built and the occupancy grid carved (minutes on a large dataset), leaving an empty run folder behind."""
    run, _ = trained
    new = sorted(p for p in tiny_data.iterdir() if p.is_dir())[2]
    with pytest.raises(ValueError, match="train.device"):
        train(load_config("tiny", ["train.device=gpu"]), _two(tiny_data), tmp_path / "t")
    with pytest.raises(ValueError, match="train.device"):
        personalize(run, [new], tmp_path / "p", steps=1, overrides=["train.device=gpu"])
    assert not (tmp_path / "t").exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize("key,value", [("model.field.backend", "tcnn"), ("model.grid_backend", "nerfacc")])
def test_a_backend_that_cannot_run_on_the_device_is_refused_before_any_work(tiny_data, tmp_path, capsys, key, value):
    """model.field.backend=tcnn (or model.grid_backend=nerfacc) where it cannot run (the CPU here; a GPU machine
    without the package) was found out at the first training step, after the data was read and the model built and
    carved, as a BackendError traceback from fastminerf train (a RuntimeError, which the command line does not
    report as a user error)."""
    from fastminerf.cli import main

    sets = ["--set", f"{key}={value}", "--set", "model.field.identity_levels=0", "--set", "train.device=cpu"]
    out = tmp_path / "t"
    assert main(["train", "--data", *map(str, _two(tiny_data)), "--out", str(out), "--config", "tiny",
                 "--steps", "1", *sets]) == 2
    assert key in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.cuda
def test_training_and_personalisation_run_on_cuda(tiny_data, tmp_path):
    dirs = sorted(p for p in tiny_data.iterdir() if p.is_dir())
    cfg = load_config("tiny", ["train.device=cuda", "train.steps=10"])
    result = train(cfg, dirs[:2], tmp_path / "gpu")
    assert result.model.aabb.device.type == "cuda"
    personal = personalize(tmp_path / "gpu", dirs[2:3], tmp_path / "gpu_p", steps=6)
    assert personal.model.aabb.device.type == "cuda" and math.isfinite(personal.loss)
    _, model, _ = load_run(tmp_path / "gpu_p")  # checkpoints load on the CPU
    assert model.aabb.device.type == "cpu"


def _with_landmarks(dirs, out):
    """Copies of identity folders with made-up landmarks a little in front of the heads' centres on every frame."""
    import shutil

    from fastminerf.data.writer import write_landmarks

    rng = np.random.default_rng(0)
    copies = []
    for d in dirs:
        shutil.copytree(d, out / d.name)
        copies.append(out / d.name)
        n = len(json.loads((d / "transforms_train.json").read_text())["frames"])
        write_landmarks(out / d.name, np.arange(n), rng.uniform(-0.3, 0.3, (n, 12, 3)) + [0.0, 0.0, 0.4],
                        np.ones((n, 12), dtype=bool))
    return copies


def _landmark_depth_error(model, dirs) -> float:
    """``evaluate``'s geometry check: median |depth - landmark distance| along rays through the landmarks."""
    from fastminerf.render import evaluate

    return evaluate(model, load_dataset(dirs), "train", with_lpips=False)["mean"]["landmark_depth"]


def test_landmark_depth_prior_pulls_the_depth_to_the_landmarks(tiny_data, tmp_path):
    """Landmarks (``landmarks.npz``) on every training frame: with the prior the rendered depth along rays through
    them lands near them; without it, it stays where the images put it."""
    dirs = _with_landmarks(_two(tiny_data), tmp_path)
    errors = {}
    for name, over in (("plain", []), ("prior", ["train.landmark_depth_weight=1.0", "train.landmark_rays=64"])):
        result = train(load_config("tiny", ["train.steps=100"] + over), dirs, tmp_path / name)
        assert math.isfinite(result.loss)
        errors[name] = _landmark_depth_error(result.model, dirs)
    assert errors["prior"] < 0.25 * errors["plain"], errors  # measured: 0.012 against 0.21 head units
    # an identity without landmarks gets NaN and the mean skips it
    from fastminerf.render import evaluate

    other = sorted(p for p in tiny_data.iterdir() if p.is_dir())[0]
    result = evaluate(train(load_config("tiny", ["train.steps=2"]), [dirs[1], other], tmp_path / "mixed").model,
                      load_dataset([dirs[1], other]), "train", with_lpips=False)
    assert "landmark_depth" in result["metrics"] and math.isnan(result["identities"][other.name]["landmark_depth"])
    assert result["mean"]["landmark_depth"] == result["identities"][dirs[1].name]["landmark_depth"]


def test_personalisation_uses_the_new_persons_landmarks(tiny_data, trained, tmp_path):
    run, _ = trained
    new = _with_landmarks([sorted(p for p in tiny_data.iterdir() if p.is_dir())[2]], tmp_path)
    errors = {}
    for name, over in (("plain", []), ("prior", ["train.landmark_depth_weight=1.0", "train.landmark_rays=64"])):
        result = personalize(run, new, tmp_path / name, steps=80, overrides=over)
        errors[name] = _landmark_depth_error(result.model, new)
    assert errors["prior"] < 0.25 * errors["plain"], errors  # measured: 0.014 against 0.29 head units


def test_cli_train_on_a_full_disk_says_so_in_one_line_and_keeps_the_last_checkpoint(tiny_data, tmp_path, monkeypatch,
                                                                                     capsys):
    from fastminerf.cli import main

    args = ["train", "--data", *map(str, _two(tiny_data)), "--out", str(tmp_path / "r"), "--config", "tiny", "--steps", "4"]
    assert main(args) == 0

    def full_disk(obj, f, *a, **k):  # how torch reports a write that ran out of space
        f.write(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 137536 vs 137428")

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert main(args[:-1] + ["8"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "checkpoint.pt" in err and "disk" in err and "Traceback" not in err
    assert load_run(tmp_path / "r")[2]["step"] == 4
    assert not list((tmp_path / "r").glob("checkpoint.pt*.tmp"))  # its temporary file (replaced_atomically's name)


def test_cli_errors_show_brackets_in_paths_as_they_are(tmp_path, capsys):
    # rich markup took "[v2]" in a folder's name for a style (dropped from the message) and "[/b]" crashed the error
    # display with a MarkupError traceback.
    from fastminerf.cli import main

    for name in ("clip[v2]", "take[/b]"):
        missing = tmp_path / name
        assert main(["train", "--data", str(missing), "--out", str(tmp_path / "r"), "--config", "tiny"]) == 2
        err = capsys.readouterr().err
        assert name in err.replace("\n", "") and "Traceback" not in err


def test_a_time_limit_spent_before_the_first_step_is_said_plainly(tiny_data, tmp_path, capsys):
    """train --max-seconds S with S below the setup time (carving the occupancy grid and starting the torso layer
    count as training time) trained no step and printed 'trained 0 steps in 0.0 s: loss nan, train psnr nan dB', as
    if the run had diverged. The line now says that the limit ended the run before its first step."""
    from fastminerf.cli import main

    out = tmp_path / "t"
    assert main(["train", "--data", *map(str, _two(tiny_data)), "--out", str(out), "--config", "tiny",
                 "--max-seconds", "1e-9"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "nan" not in text, text
    assert "no step" in text and "1e-09 s" in text and "--max-seconds" in text, text


def test_a_run_that_took_no_step_still_holds_its_log(tiny_data, trained, tmp_path, capsys):
    """A time limit spent in the setup (carving counts as training time) saved a run of 0 steps with config.yaml and
    checkpoint.pt but no log.jsonl, which the run folder's description promises beside them (and write_curve refused
    the folder). The folder now holds an empty log (no step, no line) and its curve says so; info reads it, and the
    same command with more time goes on from it, appending whole lines."""
    from fastminerf.cli import main
    from fastminerf.train import log_records, write_curve

    out = tmp_path / "t"
    result = train(load_config("tiny", ["train.max_seconds=1e-9"]), _two(tiny_data), out)
    assert result.step == 0
    assert (out / "log.jsonl").is_file() and (out / "log.jsonl").read_text() == ""
    assert result.curve == out / "curve.png" and result.curve.is_file() and write_curve(out) == result.curve
    assert main(["info", str(out)]) == 0
    more = train(load_config("tiny", ["train.steps=2", "train.log_every=1"]), _two(tiny_data), out)
    assert more.resumed_from == 0 and more.step == 2 and [r["step"] for r in _log(out)] == [1, 2]
    assert [r["step"] for _, r in log_records(out / "log.jsonl")] == [1, 2]
    run, _ = trained
    pers = personalize(run, _two(tiny_data), tmp_path / "p", steps=4, max_seconds=0)  # no setup time counted: 0
    assert pers.step == 0 and (tmp_path / "p" / "log.jsonl").read_text() == ""


@pytest.fixture
def no_native(monkeypatch):
    """The native extension as on a machine where it does not load (built against another torch, or not built)."""
    from fastminerf import _native, backend

    monkeypatch.setattr(_native, "_module", None)
    monkeypatch.setattr(_native, "_error", "ImportError: undefined symbol (built against another torch)")
    backend.resolve.cache_clear()
    yield
    backend.resolve.cache_clear()


def test_a_native_backend_without_the_extension_is_refused_as_a_user_error(tiny_data, tmp_path, capsys, no_native):
    """model.field.backend=native where the extension does not load: _check_backends refused it before any work,
    but only BackendError was turned into the ValueError naming the setting; the extension's own error is an
    ImportError, so fastminerf train ended in a traceback instead of one line naming the key and how to build."""
    from fastminerf.cli import main

    out = tmp_path / "t"
    assert main(["train", "--data", *map(str, _two(tiny_data)), "--out", str(out), "--config", "tiny", "--steps", "1",
                 "--set", "model.field.backend=native"]) == 2
    err = capsys.readouterr().err
    assert "model.field.backend" in err and "make install" in err, err
    assert not out.exists()


def test_personalize_refuses_a_backend_that_cannot_run_before_any_work(tiny_data, tmp_path, monkeypatch):
    """train refuses a backend that cannot run on its device before any work (_check_backends); personalize did
    not: with the generic run's native backend and no extension that loads, it read the data, added the identities,
    carved and wrote OUT/config.yaml, then failed at its first step with the loader's ImportError."""
    from fastminerf import _native, backend

    dirs = sorted(p for p in tiny_data.iterdir() if p.is_dir())
    train(load_config("tiny", ["train.steps=1", "model.field.backend=native"]), dirs[:2], tmp_path / "g")
    monkeypatch.setattr(_native, "_module", None)
    monkeypatch.setattr(_native, "_error", "ImportError: undefined symbol (built against another torch)")
    backend.resolve.cache_clear()
    try:
        with pytest.raises(ValueError, match="model.field.backend='native' cannot run on cpu"):
            personalize(tmp_path / "g", dirs[2:], tmp_path / "p", steps=1)
    finally:
        backend.resolve.cache_clear()
    assert not (tmp_path / "p").exists()


def test_an_interrupted_training_or_personalisation_says_what_its_run_folder_keeps(tiny_data, trained, tmp_path):
    # Ctrl-C printed 'interrupted' and nothing else: not whether any step was kept, which one, nor that rerunning the
    # same command resumes. The KeyboardInterrupt now says what the run folder's checkpoint keeps.
    cfg = load_config("tiny", ["train.steps=10", "train.checkpoint_every=3", "train.log_every=1"])

    def at(stop):
        def interrupt(record):
            if record["step"] == stop:
                raise KeyboardInterrupt
        return interrupt

    with pytest.raises(KeyboardInterrupt) as stopped:
        train(cfg, _two(tiny_data), tmp_path / "run", progress=at(7))
    assert (f"after step 7: {tmp_path / 'run' / 'checkpoint.pt'} keeps step 6; rerun the same command to resume from it"
            in str(stopped.value)), str(stopped.value)
    with pytest.raises(KeyboardInterrupt) as stopped:
        train(cfg, _two(tiny_data), tmp_path / "early", progress=at(2))
    assert (f"after step 2: no checkpoint was written yet in {tmp_path / 'early'}; a rerun starts again"
            in str(stopped.value)), str(stopped.value)
    with pytest.raises(KeyboardInterrupt) as stopped:  # resumed at 6, stopped before its next checkpoint
        train(cfg, _two(tiny_data), tmp_path / "run", progress=at(8))
    assert f"{tmp_path / 'run' / 'checkpoint.pt'} keeps step 6;" in str(stopped.value), str(stopped.value)
    run, _ = trained
    new = sorted(p for p in tiny_data.iterdir() if p.is_dir())[2]
    with pytest.raises(KeyboardInterrupt) as stopped:
        personalize(run, [new], tmp_path / "p", steps=10, overrides=["train.checkpoint_every=2", "train.log_every=1"],
                    progress=at(5))
    kept = load_run(tmp_path / "p")[2]["step"]  # the phases count their checkpoints apart
    assert f"{tmp_path / 'p' / 'checkpoint.pt'} keeps step {kept}; rerun the same command to resume" in str(stopped.value)


def _frame_locals(tb, name):
    """The locals of the innermost frame of traceback ``tb`` running the function ``name``."""
    found = None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == name:
            found = tb.tb_frame.f_locals
        tb = tb.tb_next
    return found


def test_an_interrupted_train_or_personalize_lets_its_frame_cache_go(tiny_data, trained, tmp_path):
    """A notebook keeps the traceback of an interrupted cell (IPython's sys.last_traceback, for %debug), and with it
    the frames of train() and personalize(): their dataset's frame cache (decoded training frames, up to
    data.cache_bytes = 2 GiB) stayed in memory after Ctrl-C until the next error, and rerunning the cell to resume
    decoded a second one beside it. The cache is emptied when the call ends, however it ends."""
    run, _ = trained
    new = sorted(p for p in tiny_data.iterdir() if p.is_dir())[2]

    def interrupt(record):
        if record["step"] == 2:
            raise KeyboardInterrupt

    calls = [("train", lambda: train(load_config("tiny", ["train.steps=4", "train.log_every=1"]), _two(tiny_data),
                                     tmp_path / "t", progress=interrupt)),
             ("personalize", lambda: personalize(run, [new], tmp_path / "p", steps=4,
                                                 overrides=["train.log_every=1"], progress=interrupt))]
    for name, call in calls:
        with pytest.raises(KeyboardInterrupt) as caught:
            call()
        dataset = _frame_locals(caught.value.__traceback__, name)["dataset"]
        assert dataset.cache.misses > 0  # it did decode frames
        assert len(dataset.cache) == 0 and dataset.cache.nbytes == 0, name


def test_a_train_result_shows_its_numbers_in_a_line(trained):
    """A notebook shows a cell's last value by its repr: ``result = fm.train(...); result`` gave 30 lines, most of
    them the model's module tree (every Linear of every head and the occupancy grid's box), with the run's curve
    under it. The model stays an attribute; the repr is the run's numbers and files."""
    run, result = trained
    text = repr(result)
    assert "\n" not in text and len(text) < 400, text
    for shown in (f"step={result.step}", f"loss={result.loss!r}", f"psnr={result.psnr!r}", str(run), "curve.png"):
        assert shown in text, (shown, text)
    assert "Linear" not in text and "HashGridEncoding" not in text
    assert isinstance(result.model, MINeRF)


def _of_no_space(identity, dest):
    """A copy of ``identity`` at ``dest`` whose transforms files name no expression_space (a hand-made identity)."""
    import shutil

    hand = shutil.copytree(identity, dest)
    for f in hand.glob("transforms_*.json"):
        m = json.loads(f.read_text())
        m.pop("expression_space")
        f.write_text(json.dumps(m))
    return hand


def test_an_identity_of_no_named_space_beside_named_ones_is_noted(tiny_data, tmp_path, capsys):
    """A hand-made identity whose files name no expression_space (another tracker's coefficients, of the length of the
    procedural heads') trained beside heads that name theirs: DATASET.md says it is taken into their space unchecked,
    and the run records that space for it; train says so (a note naming it and the space), instead of nothing."""
    from fastminerf.cli import main
    from fastminerf.data.synth import EXPRESSION_SPACE

    named, other = _two(tiny_data)
    hand = _of_no_space(other, tmp_path / "data" / "hand")
    result = train(load_config("tiny", ["train.steps=1"]), [named, hand], tmp_path / "run")
    assert len(result.notes) == 1 and "'hand'" in result.notes[0] and EXPRESSION_SPACE in result.notes[0], result.notes
    assert "expression_space" in result.notes[0]
    assert train(load_config("tiny", ["train.steps=1"]), [named], tmp_path / "run1").notes == ()
    assert main(["train", "--data", str(named), str(hand), "--out", str(tmp_path / "run2"), "--config", "tiny",
                 "--steps", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "note" in out and "'hand'" in out and EXPRESSION_SPACE in out, out


def test_a_new_identity_of_no_named_space_added_to_a_model_of_one_is_noted(tiny_data, tmp_path, capsys):
    """personalize: a hand-made new person whose files name no expression_space, added to a model trained in a named
    space, is taken into it unchecked (DATASET.md) as in train; personalize says so too."""
    from fastminerf import personalize
    from fastminerf.cli import main
    from fastminerf.data.synth import EXPRESSION_SPACE

    named, other = _two(tiny_data)
    hand = _of_no_space(other, tmp_path / "data" / "hand")
    train(load_config("tiny", ["train.steps=1"]), [named], tmp_path / "run")
    result = personalize(tmp_path / "run", [hand], tmp_path / "p", steps=1)
    assert len(result.notes) == 1 and "'hand'" in result.notes[0] and EXPRESSION_SPACE in result.notes[0], result.notes
    assert main(["personalize", "--run", str(tmp_path / "run"), "--data", str(hand), "--out", str(tmp_path / "p2"),
                 "--steps", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "note" in out and "'hand'" in out and EXPRESSION_SPACE in out, out


def test_steps_0_says_no_step_was_taken_in_train_and_personalize(tiny_data, tmp_path, capsys):
    """train --steps 0 and personalize --steps 0 ended in 'loss nan, train psnr nan dB', as if the run had diverged:
    no step was asked for. Both say that no step was taken and why (--steps 0)."""
    from fastminerf.cli import main

    ids = sorted(p for p in tiny_data.iterdir() if p.is_dir())
    run = tmp_path / "t"
    assert main(["train", "--data", *map(str, ids[:2]), "--out", str(run), "--config", "tiny", "--steps", "0"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "nan" not in text and "no step" in text and "--steps 0" in text, text
    assert main(["personalize", "--run", str(run), "--data", str(ids[2]), "--out", str(tmp_path / "p"),
                 "--steps", "0"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "nan" not in text and "no step" in text and "--steps 0" in text, text


def test_a_data_refusal_comes_before_any_progress_line(tiny_data, tmp_path, capsys):
    """train and personalize with a missing --data folder drew an empty 'train 0/5' ('personalize 0/20') progress
    line and then the refusal: the bar starts with the first logged step, once the data was found and read."""
    from fastminerf.cli import main

    ids = sorted(p for p in tiny_data.iterdir() if p.is_dir())
    run = tmp_path / "t"
    assert main(["train", "--data", str(tmp_path / "nothere"), "--out", str(run), "--config", "tiny",
                 "--steps", "5"]) == 2
    out = capsys.readouterr()
    assert "nothere" in out.err and "0/5" not in out.out + out.err, out
    assert main(["train", "--data", *map(str, ids[:2]), "--out", str(run), "--config", "tiny", "--steps", "5"]) == 0
    assert "5/5" in capsys.readouterr().out
    assert main(["personalize", "--run", str(run), "--data", str(tmp_path / "nothere"), "--out",
                 str(tmp_path / "p"), "--steps", "7"]) == 2
    out = capsys.readouterr()
    assert "nothere" in out.err and "0/7" not in out.out + out.err, out


def test_new_identities_of_a_named_space_added_to_a_model_of_none_record_it_and_say_so(tiny_data, tmp_path):
    """personalize of new people whose files name an expression_space into a model trained on hand-made people that
    named none said nothing and recorded none: a driver later prepared with another basis was then never checked.
    As train does for such a mix, the model's people are taken to be in the new people's space (a note names them
    and it) and the new run records that space, so data of another space is refused."""
    import shutil

    from fastminerf import personalize
    from fastminerf.data.dataset import check_expression_space
    from fastminerf.data.synth import EXPRESSION_SPACE

    named, other = _two(tiny_data)
    hand = shutil.copytree(other, tmp_path / "data" / "hand")
    for f in hand.glob("transforms_*.json"):
        m = json.loads(f.read_text())
        m.pop("expression_space")
        f.write_text(json.dumps(m))
    train(load_config("tiny", ["train.steps=1"]), [hand], tmp_path / "run")
    assert load_run(tmp_path / "run")[2]["expression_space"] is None
    result = personalize(tmp_path / "run", [named], tmp_path / "p", steps=1)
    assert len(result.notes) == 1 and "'hand'" in result.notes[0] and EXPRESSION_SPACE in result.notes[0], result.notes
    _, model, meta = load_run(tmp_path / "p")
    assert meta["expression_space"] == EXPRESSION_SPACE == model.expression_space
    elsewhere = shutil.copytree(named, tmp_path / "data" / "elsewhere")
    for f in elsewhere.glob("transforms_*.json"):
        m = json.loads(f.read_text())
        m["expression_space"] = "pca12-0123456789ab"
        f.write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="pca12-0123456789ab"):
        check_expression_space(model.expression_space, load_dataset([elsewhere]), "the driver", "the model")


def test_train_and_personalize_on_a_run_past_its_steps_say_there_was_nothing_to_do(tiny_data, tmp_path, capsys):
    """train --steps 60 on a run already at step 1220 printed 'trained 1220 steps ... (resumed from step 1220)', as if it
    had trained; nothing was done (the run is past --steps). The closing line says so, and how to train further; so
    does the rerun of a finished command, and personalize's."""
    from fastminerf.cli import main

    out, pers = tmp_path / "t", tmp_path / "p"
    dirs = sorted(p for p in tiny_data.iterdir() if p.is_dir())
    base = ["train", "--data", *map(str, dirs[:2]), "--out", str(out), "--config", "tiny"]
    assert main(base + ["--steps", "3"]) == 0
    capsys.readouterr()
    for steps, where in (("1", "past --steps 1"), ("3", "already at --steps 3")):
        assert main(base + ["--steps", steps]) == 0
        said = " ".join(capsys.readouterr().out.split())
        assert "trained 3 steps" not in said and "resumed" not in said, said
        assert f"nothing to train: {out} is at step 3, {where} (train.steps)" in said, said
    p = ["personalize", "--run", str(out), "--data", str(dirs[2]), "--out", str(pers), "--steps", "2"]
    assert main(p) == 0
    capsys.readouterr()
    assert main(p[:-1] + ["1"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "personalised in 2 steps" not in said and f"nothing to train: {pers} is at step 2, past --steps 1" in said, said


def test_multiplicative_module_of_degree_3_continues_the_pi_net_recursion():
    torch.manual_seed(0)
    mod = MultiplicativeConditioning(expression_dim=3, identity_dim=2, out_dim=4, degree=3)
    e, i = torch.randn(5, 3), torch.randn(5, 2)
    z = torch.cat([e, i], 1)
    x2 = (e @ mod.A.weight.T) * (i @ mod.B.weight.T) + z @ mod.linear.weight.T + mod.linear.bias
    x3 = (z @ mod.higher[0].weight.T) * x2 + x2  # x_k = (U_k z) * x_(k-1) + x_(k-1)
    torch.testing.assert_close(mod(e, i), x3)


def test_expression_scale_multiplies_the_expressions_the_conditioning_reads():
    cfg = load_config("tiny", ["model.field.expression_scale=2.5"]).model
    torch.manual_seed(0)
    model = MINeRF(cfg, 4, ["a", "b"], [0, 1])
    ident, e = torch.tensor([0, 1, 1]), torch.randn(3, 4)
    want = model.field.conditioning(2.5 * e, model.identity_codes(ident))
    torch.testing.assert_close(model.condition(ident, e)[:, : want.shape[1]], want)


def test_normalize_points_maps_the_box_onto_the_unit_cube():
    model = MINeRF(load_config("tiny").model, 4, ["a"], [0], aabb=[-1.0, -2.0, 0.0, 3.0, 2.0, 1.0])
    points = torch.tensor([[-1.0, -2.0, 0.0], [3.0, 2.0, 1.0], [1.0, 0.0, 0.5], [0.0, 1.0, 0.25], [-5.0, 9.0, 0.5]])
    unit = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.25, 0.75, 0.25], [0.0, 1.0, 0.5]])
    torch.testing.assert_close(model.normalize_points(points), unit, rtol=0, atol=1e-7)  # outside: clamped
