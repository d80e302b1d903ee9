"""The image-space torso layer: its texture lookup against torch's grid_sample, the head box it cuts, and what it
learns in training and personalisation (tiny preset, seconds each)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastminerf import MINeRF, load_config, load_dataset, load_run, personalize, render_frame, train
from fastminerf.config import ConfigError
from fastminerf.data import frame_rays
from fastminerf.data.synth import generate
from fastminerf.nn.torso import SHIFT_SCALE, in_head_region, last_frames_mean, outside_head
from fastminerf.ops.texture import texture_lookup
from fastminerf.render import drive_path, render_sequence
from fastminerf.train import mask_loss, start_torso

LOOKUP_TOL = 1e-5
"""Bilinear weights in float32 computed two ways (ours from the clamped texel position, grid_sample's from its
unnormalised coordinate): they agree to a few float32 roundings of values of order 1."""

TORSO = ["model.torso.resolution=16", "model.torso.floor=0.0", "model.torso.alpha_init=0.5"]
"""A layer over the tiny frames (20 px) and a floor through the middle of the procedural heads, so that the lower
half of every head is the layer's to learn; starting half opaque lets 40 tiny steps show it."""


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("torso_heads")
    generate(root, n_identities=3, n_frames=8, size=20, seed=5, novel_frames=1)
    return sorted(p for p in root.iterdir() if p.is_dir())


def _grid_sample(texture, layer, uv):
    return torch.stack([
        F.grid_sample(texture[int(layer[k])].permute(2, 0, 1)[None], (2 * uv[k] - 1).view(1, 1, 1, 2), mode="bilinear",
                      padding_mode="border", align_corners=False).view(-1)
        for k in range(uv.shape[0])])


def test_texture_lookup_equals_grid_sample_with_its_gradient():
    g = torch.Generator().manual_seed(0)
    texture = torch.randn(3, 5, 7, 4, generator=g, requires_grad=True)
    uv = torch.rand(300, 2, generator=g) * 1.4 - 0.2  # some beyond the border, where both clamp
    layer = torch.randint(0, 3, (300,), generator=g)
    weights = torch.randn(300, 4, generator=g)
    ours = texture_lookup(texture, layer, uv)
    ref = _grid_sample(texture, layer, uv)
    torch.testing.assert_close(ours, ref, atol=LOOKUP_TOL, rtol=0)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), texture)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), texture)
    torch.testing.assert_close(g_ours, g_ref, atol=LOOKUP_TOL, rtol=0)
    with pytest.raises(ValueError, match=r"uv must be \(N, 2\)"):
        texture_lookup(texture, layer, uv[:, :1])



def test_texture_lookup_of_a_nan_coordinate_reads_as_grid_sample():
    """A NaN in uv (a NaN torso shift of a diverging run, a degenerate camera) failed with IndexError 'index out of
    range in self': NaN survives the clamp, and its floor cast to int64 indexed far outside the texture. grid_sample,
    which the lookup equals, reads a NaN coordinate as the first texel of that axis (with border padding); so does the
    lookup now, with its gradient."""
    g = torch.Generator().manual_seed(1)
    texture = torch.randn(2, 5, 7, 3, generator=g, requires_grad=True)
    nan, inf = float("nan"), float("inf")
    uv = torch.tensor([[nan, 0.5], [0.3, nan], [nan, nan], [inf, -inf], [0.4, 0.6]])
    layer = torch.tensor([0, 1, 1, 0, 1])
    ours = texture_lookup(texture, layer, uv)
    torch.testing.assert_close(ours, _grid_sample(texture.detach(), layer, uv), atol=LOOKUP_TOL, rtol=0)
    # grid_sample's own backward crashes the process on a NaN coordinate (torch's, not ours): its gradient is taken at
    # coordinate 0, which reads the same first texel with the same weight
    ref = _grid_sample(texture, layer, uv.nan_to_num(0.0))
    torch.testing.assert_close(ours, ref, atol=LOOKUP_TOL, rtol=0)
    (g_ours,) = torch.autograd.grad(ours.sum(), texture)
    (g_ref,) = torch.autograd.grad(ref.sum(), texture)
    torch.testing.assert_close(g_ours, g_ref, atol=LOOKUP_TOL, rtol=0)


def test_texture_lookup_refuses_a_layer_given_as_floats():
    """layer [0.5, 1.7] was truncated by .long() to layers 0 and 1 without a word; it is refused, naming it, as the
    other ops refuse float indices (ops/_checks.check_integers); int32 layers are still read."""
    texture, uv = torch.rand(2, 3, 3, 4), torch.rand(2, 2)
    with pytest.raises(ValueError, match="layer must be integers, got torch.float32"):
        texture_lookup(texture, torch.tensor([0.5, 1.7]), uv)
    torch.testing.assert_close(texture_lookup(texture, torch.tensor([0, 1], dtype=torch.int32), uv),
                               texture_lookup(texture, torch.tensor([0, 1]), uv))


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_a_half_precision_texture_is_read_where_uv_points(dtype, tol):
    """The lookup computed the texel position in the texture's dtype (uv.to(texture.dtype)): in bfloat16 a 512 px
    row's last texel position 511 rounds to 512, and the lookup failed with 'layer must be in 0..0 ..., got values
    from 0 to 0' (a layer it had); in float16 positions were off by up to a quarter texel, so a texture of sharp
    columns read the wrong mix. Positions are computed in float32 (at least), the weights and result in the
    texture's dtype. An integer texture (an 8-bit image) had uv truncated to 0 and read texel (0, 0): it is refused."""
    g = torch.Generator().manual_seed(3)
    columns = (torch.arange(512) % 2).float()  # sharp columns: a position error shows as a wrong value
    texture = columns.view(1, 1, 512, 1).expand(1, 4, 512, 1).to(dtype)
    uv = torch.rand(2000, 2, generator=g)
    layer = torch.zeros(2000, dtype=torch.long)
    ours = texture_lookup(texture, layer, uv)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.float(), texture_lookup(texture.float(), layer, uv), atol=tol, rtol=0)
    with pytest.raises(ValueError, match="texture must be floating point, got torch.uint8"):
        texture_lookup(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), layer[:2], uv[:2])


def test_the_head_box_ends_at_the_floor_and_rendering_needs_uv():
    cfg = load_config("tiny", ["model.torso.resolution=8", "model.torso.floor=-0.5"]).model
    model = MINeRF(cfg, 12, ["a", "b"], [0, 1], aabb=[-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
    assert model.aabb.tolist() == [-1.5, -0.5, -1.5, 1.5, 1.5, 1.5]
    assert model.torso.texture.shape == (2, 8, 8, 4)
    n = 64
    g = torch.Generator().manual_seed(1)
    origins = torch.tensor([0.0, 0.0, 4.0]).repeat(n, 1)
    target = torch.rand(n, 3, generator=g) * 2 - 1  # rays through the whole box, half of them below the floor
    directions = F.normalize(target - origins, dim=-1)
    samples = model.occupancy.sample(origins, directions, torch.zeros(n), torch.full((n,), 10.0),
                                     step_size=model.step_size)
    points = origins[samples.ray_indices] + ((samples.t_starts + samples.t_ends) / 2)[:, None] * directions[samples.ray_indices]
    assert samples.ray_indices.numel() > 0 and float(points[:, 1].min()) >= -0.5 - 1e-4
    far = torch.where(torch.arange(n) < n // 2, 10.0, 0.0)  # the second half miss the box: the background shows
    rays = dict(origins=origins, directions=directions, near=torch.zeros(n), far=far,
                identity=torch.zeros(n, dtype=torch.long), expression=torch.zeros(n, 12))
    background = torch.rand(n, 3, generator=g)
    with torch.no_grad():
        with pytest.raises(ValueError, match="torso layer: render_rays needs uv"):
            model.render_rays(**rays, background=background)
        out = model.render_rays(**rays, uv=torch.rand(n, 2, generator=g), background=background)
    # behind the field lies the layer, at its initial colour (0.5) and opacity, over the background
    a = cfg.torso.alpha_init
    torch.testing.assert_close(out["rgb"][n // 2:], (1 - a) * background[n // 2:] + a * 0.5)
    # the person's opacity (what the mask loss compares with the mask) is the field's over the layer's
    torch.testing.assert_close(out["person_opacity"], out["opacity"] + (1 - out["opacity"]) * a)
    torch.testing.assert_close(out["person_opacity"][n // 2:], torch.full((n - n // 2,), a))
    assert float(out["opacity"][: n // 2].max()) > 0.0
    bad = load_config("tiny", ["model.torso.resolution=8", "model.torso.floor=-2.0"]).model
    with pytest.raises(ValueError, match="model.torso.floor -2.0 must lie inside"):
        MINeRF(bad, 12, ["a"], [0], aabb=[-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])


def test_outside_head_is_where_the_ray_meets_the_mid_plane_outside_the_head_region():
    # a camera 4 units in front of the head, looking at it (-z), 10 x 10 px, f = 10: texel centres (1.25, 3.75, 6.25,
    # 8.75 px) meet z = 0 at x = 4 (u - 5) / 10 = -1.5, -0.5, 0.5, 1.5 and y = -4 (v - 5) / 10 = 1.5 ... -1.5. Floor
    # -1, neck column |x| <= 1 below y = 0. A roll of 90 degrees turns the picture.
    c2w = torch.eye(4)[None].repeat(2, 1, 1)
    c2w[:, 2, 3] = 4.0
    c2w[1, :3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    k = torch.tensor([[10.0, 10.0, 5.0, 5.0]]).repeat(2, 1)
    out = outside_head(c2w, k, 10, 10, 4, -1.0, 0.0, 1.0)
    F_, T = False, True
    assert out[0].tolist() == [[F_, F_, F_, F_], [F_, F_, F_, F_], [T, F_, F_, T], [T, T, T, T]]
    # rolled: head x = 4 (v - 5) / 10 (rows), head y = 4 (u - 5) / 10 (columns)
    assert out[1].tolist() == [[T, T, F_, F_], [T, F_, F_, F_], [T, F_, F_, F_], [T, T, F_, F_]]
    points = torch.tensor([[0.0, -0.9, 0.0], [0.9, -0.9, 0.0], [0.9, 0.5, 0.0], [0.0, -1.1, 0.0]])
    assert in_head_region(points, -1.0, 0.0, 1.0).tolist() == [T, T, T, F_]
    assert in_head_region(points, -1.0, 0.0, 0.5).tolist() == [T, F_, T, F_]


def test_the_field_never_samples_the_shoulders():
    cfg = load_config("tiny", ["model.torso.resolution=8", "model.torso.floor=-1.0", "model.torso.neck_top=0.0",
                               "model.torso.neck_width=0.5"]).model
    model = MINeRF(cfg, 12, ["a"], [0], aabb=[-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
    centres = model.occupancy.cell_centers()
    inside = in_head_region(centres, -1.0, 0.0, 0.5)
    assert bool((model.occupancy.occs[~inside] == -1).all()) and bool((model.occupancy.occs[inside] >= 0).all())
    assert bool(inside.any()) and bool((~inside).any())
    g = torch.Generator().manual_seed(2)
    n = 256
    origins = torch.tensor([0.0, 0.0, 4.0]).repeat(n, 1)
    directions = F.normalize(torch.rand(n, 3, generator=g) * 2 - 1 - origins, dim=-1)
    s = model.occupancy.sample(origins, directions, torch.zeros(n), torch.full((n,), 10.0), step_size=model.step_size)
    points = origins[s.ray_indices] + ((s.t_starts + s.t_ends) / 2)[:, None] * directions[s.ray_indices]
    # a sample lies in a kept cell: within half a cell of the region
    half = float((model.aabb[3:] - model.aabb[:3]).max()) / cfg.grid_resolution / 2 + 1e-4
    assert s.ray_indices.numel() > 0
    assert float(points[:, 1].min()) >= -1.0 - 1e-4
    low = points[:, 1] < -half
    assert float(points[low, 0].abs().max()) <= 0.5 + half


def test_the_layer_starts_from_the_masked_person_below_the_floor(heads):
    data = load_dataset(heads[:2])
    cfg = load_config("tiny", TORSO).model
    model = MINeRF(cfg, data.expression_dim, data.identities, data.table("train").identity,
                   aabb=data.table("train").aabb[0].tolist())
    assert start_torso(model, data) == 2
    alpha = torch.sigmoid(model.torso.texture[..., 3]).detach()
    # identity 0's expected coverage from its frames: mask (pooled to the layer) times below the floor, averaged
    table = data.table("train")
    frames = table.frames_of(0)
    masks = torch.stack([torch.from_numpy(np.array(data.mask("train", int(b)), np.float32)) for b in frames])
    masks = (masks / masks.max())[:, None]
    t = cfg.torso
    cover = F.adaptive_avg_pool2d(masks, 16)[:, 0] * outside_head(
        torch.from_numpy(table.c2w[frames]), torch.from_numpy(table.intrinsics[frames]), 20, 20, 16, t.floor, t.neck_top,
        t.neck_width)
    expected = cover.mean(0).clamp(0.5, 0.98)  # alpha_init 0.5 is the least a texel starts from
    torch.testing.assert_close(alpha[0], expected, atol=1e-5, rtol=0)
    assert float(cover.mean()) > 0.05 and bool((alpha[0] > 0.6).any())  # the heads' lower halves are there


def _train_mse(model, data):
    errs = []
    for b in range(len(data.table("train"))):
        batch = frame_rays(data, "train", b)
        with torch.no_grad():
            out = model.render_batch(batch, frame_code=batch.frame)
        errs.append(float(torch.mean((out["rgb"] - batch.rgb) ** 2)))
    return float(np.mean(errs))


def test_the_layer_learns_what_the_field_cannot_reach(heads, tmp_path):
    # The same floor with and without a layer: without one, the lower half of each head has nothing to show it.
    data = load_dataset(heads[:2])
    box = data.table("train").aabb[0].tolist()
    cut = [f"model.aabb=[{box[0]},0.0,{box[2]},{box[3]},{box[4]},{box[5]}]"]
    with_layer = train(load_config("tiny", TORSO + ["train.steps=60"]), heads[:2], tmp_path / "torso").model
    without = train(load_config("tiny", cut + ["train.steps=60"]), heads[:2], tmp_path / "cut").model
    assert with_layer.aabb.tolist() == without.aabb.tolist()
    mse_layer, mse_cut = _train_mse(with_layer, data), _train_mse(without, data)
    assert mse_layer < 0.8 * mse_cut, (mse_layer, mse_cut)
    # the checkpoint holds the layer: the reloaded model renders the same frame
    _, reloaded, _ = load_run(tmp_path / "torso")
    torch.testing.assert_close(reloaded.torso.texture, with_layer.torso.texture, atol=0, rtol=0)
    a = render_frame(with_layer, data, "train", 3)
    b = render_frame(reloaded, data, "train", 3)
    assert np.array_equal(a, b)


def test_the_mask_loss_reaches_the_layer_where_the_field_leaves_the_person_to_it():
    # The mask holds the whole person; with a layer, the loss compares it with the field over the layer, so on rays
    # below the floor (the field has nothing there) it still teaches the layer's opacity. Compared with the field's
    # opacity alone (as it once was), it taught the layer nothing: no gradient reached the texture.
    cfg = load_config("tiny", ["model.torso.resolution=8", "model.torso.floor=0.0"]).model
    model = MINeRF(cfg, 12, ["a"], [0], aabb=[-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
    n = 32
    g = torch.Generator().manual_seed(2)
    origins = torch.tensor([0.0, -0.8, 4.0]).repeat(n, 1)  # level rays under the floor: they never enter the box
    directions = torch.tensor([0.0, 0.0, -1.0]).repeat(n, 1)
    out = model.render_rays(origins, directions, torch.zeros(n), torch.full((n,), 10.0), torch.zeros(n, dtype=torch.long),
                            torch.zeros(n, 12), uv=torch.rand(n, 2, generator=g), background=torch.rand(n, 3, generator=g))
    assert float(out["opacity"].abs().max()) == 0.0
    mask = torch.ones(n)
    mask[:4] = float("nan")  # frames without a mask count for nothing
    loss = mask_loss(out, mask)
    a = cfg.torso.alpha_init
    torch.testing.assert_close(loss, torch.tensor((1.0 - a) ** 2))
    loss.backward()
    assert float(model.torso.texture.grad[..., 3].min()) < 0.0  # descending raises the layer's opacity
    assert mask_loss(out, torch.full((n,), float("nan"))) is None


def test_personalisation_gives_the_new_identity_a_layer_and_leaves_the_others(heads, tmp_path):
    run = tmp_path / "generic"
    generic = train(load_config("tiny", TORSO), heads[:2], run).model
    before = generic.torso.texture.detach().clone()
    personalize(run, [heads[2]], tmp_path / "pers", steps=10)
    _, model, _ = load_run(tmp_path / "pers")
    assert model.torso.texture.shape == (3, 16, 16, 4)
    assert torch.equal(model.torso.texture[:2], before)  # no other identity's rays reach their texels
    box = load_dataset(heads[:2]).table("train").aabb[0].tolist()
    started = MINeRF(model.cfg, model.expression_dim, model.identity_names[:2], [0], aabb=box)
    started.add_identities([heads[2].name])
    start_torso(started, load_dataset([heads[2]]), identity_offset=2)
    assert not torch.equal(model.torso.texture[2], started.torso.texture[2])  # trained from its start
    # a path (what `render --drive` and `--orbit` use) passes each pixel's image position as a frame does: the new
    # person driven by their own first frame renders that frame
    data = load_dataset([heads[2]])
    name = heads[2].name
    table = data.table("train")
    first = int(table.frames_of(0)[0])
    path = drive_path(data, name, data, "train", mode="absolute")
    seq = next(render_sequence(model, path, name, background=data.background(0),
                               near_far=(float(table.near[first]), float(table.far[first]))))
    np.testing.assert_allclose(seq, render_frame(model, data, "train", first), atol=1e-5, rtol=0)


def test_last_frames_mean_takes_each_identitys_last_frames_in_order():
    frame_identity = torch.tensor([0, 1, 0, 1, 0, 0])  # identity 0: frames 0, 2, 4, 5; identity 1: 1, 3; 2: none
    values = torch.arange(12, dtype=torch.float64).view(6, 2)
    got = last_frames_mean(values, frame_identity, 3, last=2)
    torch.testing.assert_close(got, torch.stack([(values[4] + values[5]) / 2, (values[1] + values[3]) / 2,
                                                 torch.zeros(2, dtype=torch.float64)]))
    everything = torch.stack([values[[0, 2, 4, 5]].mean(0), values[[1, 3]].mean(0), torch.zeros(2, dtype=torch.float64)])
    torch.testing.assert_close(last_frames_mean(values, frame_identity, 3, last=0), everything)
    torch.testing.assert_close(last_frames_mean(values, frame_identity, 3, last=50), everything)
    torch.testing.assert_close(last_frames_mean(values, frame_identity, 3, last=1)[:2], values[[5, 3]])
    with pytest.raises(ValueError, match="last must be >= 0"):
        last_frames_mean(values, frame_identity, 3, last=-1)


def test_frame_shifts_move_the_layer_and_frames_outside_training_take_the_last_ones():
    cfg = load_config("tiny", ["model.torso.resolution=8", "model.torso.floor=0.0", "model.torso.frame_shift=true",
                               "model.torso.shift_from_last=2"]).model
    model = MINeRF(cfg, 12, ["a", "b"], [0, 0, 0, 1], aabb=[-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
    assert model.torso_shift.shape == (4, 2) and float(model.torso_shift.detach().abs().max()) == 0.0
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.torso.texture.copy_(torch.randn(model.torso.texture.shape, generator=g))  # a layer with detail
        model.torso_shift.copy_(torch.randn(4, 2, generator=g) * 3)
    n = 16
    origins = torch.tensor([0.0, -0.8, 4.0]).repeat(n, 1)  # under the floor: the layer over the background alone
    directions = torch.tensor([0.0, 0.0, -1.0]).repeat(n, 1)
    uv = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    background = torch.rand(n, 3, generator=g)
    identity = torch.zeros(n, dtype=torch.long)

    def render(frame_code):
        with torch.no_grad():
            return model.render_rays(origins, directions, torch.zeros(n), torch.full((n,), 10.0), identity,
                                     torch.zeros(n, 12), frame_code, background, uv=uv)["rgb"]

    def layer(shift):
        with torch.no_grad():
            return model.torso.over(identity, uv - SHIFT_SCALE * shift, background)[0]

    frames = torch.tensor([0, 1, 2, 0] * 4)
    torch.testing.assert_close(render(frames), layer(model.torso_shift[frames]))
    assert not torch.allclose(render(frames), layer(torch.zeros(n, 2)), atol=1e-3)  # the shift moved it
    held = (model.torso_shift[1] + model.torso_shift[2]) / 2  # identity a's last two training frames
    torch.testing.assert_close(render(None), layer(held.expand(n, 2)))
    # personalisation grows the shifts with zeros for the new frames and keeps the others
    before = model.torso_shift.detach().clone()
    model.add_identities(["c"], [2, 2])
    assert torch.equal(model.torso_shift[:4], before) and float(model.torso_shift[4:].detach().abs().max()) == 0.0
    with pytest.raises(ConfigError, match=r"model\.torso\.shift_from_last must be >= 0"):  # where the config loads
        load_config("tiny", ["model.torso.resolution=8", "model.torso.floor=0.0", "model.torso.shift_from_last=-1"])
    bad = load_config("tiny", ["model.torso.resolution=8", "model.torso.floor=0.0"]).model
    object.__setattr__(bad.torso, "shift_from_last", -1)  # a config that skipped that check: the model refuses it too
    with pytest.raises(ValueError, match="shift_from_last must be >= 0"):
        MINeRF(bad, 12, ["a"], [0], aabb=[-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])


def test_frame_shifts_are_learned_saved_and_trained_for_new_people(heads, tmp_path):
    run = tmp_path / "shifted"
    model = train(load_config("tiny", TORSO + ["model.torso.frame_shift=true", "train.steps=60"]), heads[:2], run).model
    assert model.torso_shift.shape == (model.frame_identity.numel(), 2)
    assert float(model.torso_shift.detach().abs().max()) > 0.0  # gradients reach every training frame's shift
    _, reloaded, _ = load_run(run)
    torch.testing.assert_close(reloaded.torso_shift, model.torso_shift, atol=0, rtol=0)
    data = load_dataset(heads[:2])
    assert np.array_equal(render_frame(model, data, "train", 3), render_frame(reloaded, data, "train", 3))
    personalize(run, [heads[2]], tmp_path / "pers", steps=10)
    _, grown, _ = load_run(tmp_path / "pers")
    new = grown.frame_identity == 2
    assert int(new.sum()) == len(load_dataset([heads[2]]).table("train"))
    assert torch.equal(grown.torso_shift[~new], model.torso_shift.detach())  # the other people's frames untouched
    assert float(grown.torso_shift[new].detach().abs().max()) > 0.0
