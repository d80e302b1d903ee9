"""Edge cases of the model and its modules: inputs in another dtype, a failed ``add_identities``, a grid off the CPU,
settings the field cannot honour (no training: a fraction of a second each)."""
from __future__ import annotations

import math

import pytest
import torch

from fastminerf import MINeRF, load_config
from fastminerf.config import ConfigError
from fastminerf.nn import OccupancyGrid

DTYPE_TOL = 1e-5
"""float64 rays rounded to float32 against the same rays made in float32: the same samples, pixels equal up to the
rounding of the inputs (one float32 ulp of values of order 1)."""


def _rays(n: int = 16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    origins = torch.tensor([[0.0, 0.0, 3.0]]) + 0.2 * torch.randn(n, 3, generator=g)
    directions = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, -1.0]]) + 0.1 * torch.randn(n, 3, generator=g), dim=1)
    near, far = torch.full((n,), 1.0), torch.full((n,), 5.0)
    background = torch.rand(n, 3, generator=g)
    codes = torch.randn(n, 4, generator=g)
    return [t.to(dtype) for t in (origins, directions, near, far, background, codes)]


@pytest.mark.parametrize("backbone", ["fast", "nerface"])
def test_float64_rays_render_as_their_float32_values(backbone):
    # camera_rays gives float64 rays for a float64 camera (numpy poses): the model takes them in its own dtype
    # rather than failing inside a head with "mat1 and mat2 must have the same dtype".
    torch.manual_seed(0)
    cfg = load_config("tiny", [f"model.backbone={backbone}", "model.nerface.width=16", "model.nerface.depth=2",
                               "model.nerface.skip_layer=1", "model.nerface.color_width=8"]).model
    model = MINeRF(cfg, 5, ["a", "b"], [0, 1]).eval()
    identity = torch.arange(16) % 2
    expression = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        o, d, near, far, bg, codes = _rays()
        ref = model.render_rays(o, d, near, far, identity, expression, codes, bg)
        o, d, near, far, bg, codes = _rays(dtype=torch.float64)
        out = model.render_rays(o, d, near, far, identity, expression.double(), codes, bg)
    for key in ("rgb", "opacity", "depth"):
        assert out[key].dtype == torch.float32, key
        torch.testing.assert_close(out[key], ref[key], atol=DTYPE_TOL, rtol=0)
    assert torch.equal(out["samples"], ref["samples"])


def test_a_float64_model_renders_and_trains_as_the_float32_one():
    """model.double() (e.g. for torch.autograd.gradcheck) failed in every render with "t_starts dtype torch.float32
    differs from sigmas dtype torch.float64": the marcher's sample distances stayed float32."""
    import copy

    torch.manual_seed(0)
    model = MINeRF(load_config("tiny").model, 5, ["a", "b"], [0, 1]).eval()
    wide = copy.deepcopy(model).double()
    identity = torch.arange(16) % 2
    expression = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    o, d, near, far, bg, codes = _rays()
    with torch.no_grad():
        ref = model.render_rays(o, d, near, far, identity, expression, codes, bg)
        out = wide.render_rays(o, d, near, far, identity, expression, codes, bg)
    assert out["rgb"].dtype == torch.float64
    for key in ("rgb", "opacity", "depth"):
        torch.testing.assert_close(out[key].float(), ref[key], atol=DTYPE_TOL, rtol=0)
    wide.train()
    loss = wide.render_rays(o, d, near, far, identity, expression, codes, bg)["rgb"].square().mean()
    loss.backward()
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in wide.parameters())



@pytest.mark.parametrize("cast", ["double", "half"])
def test_a_cast_model_updates_its_occupancy_grid_as_the_float32_one(cast):
    """model.double() (the float64 model above, which renders and trains) cast the grid's float32 occupancies and
    boxes too, and its first occupancy update failed in the EMA kernel with 'occs must be a float32 vector, got
    torch.float64' (mark_all the same in pack_bitfield); .half() also rounded the occupancies. The grid keeps its
    float32 state through dtype casts (device moves still apply), so the update is the float32 model's."""
    import copy

    torch.manual_seed(0)
    model = MINeRF(load_config("tiny").model, 5, ["a", "b"], [0, 1])
    gen = torch.Generator().manual_seed(3)
    model.occupancy.occs.uniform_(0.0, 0.02, generator=gen)
    cast_model = getattr(copy.deepcopy(model), cast)()
    grid = cast_model.occupancy
    if cast == "double":
        identity, expression = torch.tensor([0, 1]), torch.zeros(2, 5)
        for m in (model, cast_model):
            assert m.update_occupancy(0, identity, expression, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(grid.occs, model.occupancy.occs, atol=1e-6, rtol=1e-5)
    else:
        assert torch.equal(grid.occs, model.occupancy.occs)
    assert grid.occs.dtype == torch.float32 and grid.aabbs.dtype == torch.float32
    assert torch.equal(grid.aabbs, model.occupancy.aabbs)
    grid.mark_all()
    assert grid.occupied_fraction() == 1.0


def test_add_identities_refused_for_a_bad_frame_leaves_the_model_as_it_was():
    cfg = load_config("tiny", ["model.torso.resolution=8", "model.torso.frame_shift=true"]).model
    model = MINeRF(cfg, 5, ["a", "b"], [0, 1, 1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="outside the grown model"):
        model.add_identities(["c"], [2, 3])  # 3: nobody
    assert model.identity_names == ["a", "b"] and model.num_identities == 2
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].shape == v.shape and torch.equal(after[k], v), k
    # and it can be grown as meant afterwards
    assert model.add_identities(["c"], [2, 2]) == 3
    assert model.identity_codes.weight.shape[0] == 3 and model.torso.texture.shape[0] == 3
    assert model.frame_codes.weight.shape[0] == 5 and model.torso_shift.shape[0] == 5


def test_cell_radius_of_a_grid_on_another_device():
    # hull_cells (carving and personalisation's restore) asks each cascade for its cell radius; on a grid moved off
    # the CPU that must not mix its box with a CPU tensor ("meta" stands in for a GPU here).
    grid = OccupancyGrid(roi_aabb=(-1.0, -2.0, -1.0, 1.0, 2.0, 3.0), resolution=(8, 16, 4), levels=2, backend="torch")
    radii = [grid.cell_radius(level) for level in range(2)]
    assert radii[0] == pytest.approx(0.5 * (0.25**2 + 0.25**2 + 1.0**2) ** 0.5)
    assert radii[1] == pytest.approx(2 * radii[0])
    moved = grid.to("meta")
    assert [moved.cell_radius(level) for level in range(2)] == pytest.approx(radii)


def test_colour_identity_levels_beyond_the_grid_are_refused():
    # identity_levels_for: colour reads the finest identity_levels levels of the n_levels pyramid again; more levels
    # than the pyramid has would start below its base resolution (levels of 2 and 4 cells for the tiny grid),
    # where identity_levels_for: all refuses the same setting.
    # The config refuses it where it loads, naming the key; the model still refuses a config that skipped that check.
    for where in ("all", "colour"):
        with pytest.raises(ConfigError, match=r"model\.field\.identity_levels must be in 0\.\.4, got 6"):
            load_config("tiny", ["model.field.identity_levels=6", f"model.field.identity_levels_for={where}"])
        cfg = load_config("tiny", [f"model.field.identity_levels_for={where}"]).model
        object.__setattr__(cfg.field, "identity_levels", 6)
        with pytest.raises(ValueError, match=r"identity_levels must be in 0\.\.n_levels \(4\), got 6"):
            MINeRF(cfg, 5, ["a"], [0])


@pytest.mark.parametrize("how", ["half", "bfloat16", "autocast"])
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_a_fast_model_in_half_precision_names_the_parameter_and_what_to_do(how, backend):
    """model.half() on the fast backbone failed on the native backend with the hash grid's 'use backend=torch'
    (which then failed in the compositing with 'sigmas must be float32 or float64, got torch.float16', naming
    neither the model nor a way out); under torch.autocast the native head failed with "`pre` dtype BFloat16
    differs from `x` dtype Float". The model refuses at once, naming the parameter and its dtype, and says to keep
    it float32 (model.float()), autocast off; float32 renders as before, and the nerface backbone renders in half."""
    torch.manual_seed(0)
    cfg = load_config("tiny", [f"model.field.backend={backend}", f"model.grid_backend={backend}"]).model
    model = MINeRF(cfg, 5, ["a", "b"], [0, 1]).eval()
    o, d, near, far, bg, codes = _rays()
    identity, expression = torch.arange(16) % 2, torch.zeros(16, 5)
    if how == "autocast":
        context = torch.autocast("cpu", dtype=torch.bfloat16)
        match = r"torch.autocast.*float32.*enabled=False"
    else:
        model = getattr(model, how)()
        context = torch.no_grad()
        match = rf"parameter '[\w.]+' is {how if how == 'bfloat16' else 'float16'}.*model.float\(\)"
    with context, pytest.raises(ValueError, match=match):
        model.render_rays(o, d, near, far, identity, expression, None, bg)
    with torch.no_grad():
        assert model.float().render_rays(o, d, near, far, identity, expression, None, bg)["rgb"].dtype == torch.float32
    nerface = MINeRF(load_config("tiny", ["model.backbone=nerface"]).model, 5, ["a", "b"], [0, 1]).eval().half()
    with torch.no_grad():
        assert nerface.render_rays(o, d, near, far, identity, expression, None, bg)["rgb"].dtype == torch.float16


@pytest.mark.parametrize("conditioning", ["multiplicative", "concat"])
def test_a_model_of_no_expression_coefficients_is_built_without_a_torch_warning(conditioning):
    """Identities whose frames carry ``expression: []`` (E = 0: identity codes alone, DATASET.md) train and render, but
    building the model printed torch's 'Initializing zero-element tensors is a no-op' on stderr, which reads as a
    fault. E = 0 is allowed and the model is built without that warning, and renders."""
    import warnings

    cfg = load_config("tiny", [f"model.field.conditioning={conditioning}"]).model
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Initializing zero-element tensors")
        model = MINeRF(cfg, 0, ["a", "b"], torch.tensor([0, 0, 1])).eval()
    o, d, near, far, bg, codes = _rays()
    with torch.no_grad():
        out = model.render_rays(o, d, near, far, torch.arange(16) % 2, torch.zeros(16, 0), None, bg)
    assert torch.isfinite(out["rgb"]).all()


def test_heads_wider_than_the_fused_kernel_train_and_render_on_every_backend():
    """model.field.hidden_dim is accepted at any width, but a head of one hidden layer wider than the native fused
    kernel's 128 units stopped training at its first step ('the native fused head supports at most 128 hidden
    units', naming no key) with backend auto or native. Such a head runs unfused, the same function as the torch
    backend's, and its gradients reach the weights."""
    torch.manual_seed(0)
    ref = MINeRF(load_config("tiny", ["model.field.hidden_dim=160", "model.field.backend=torch"]).model, 5, ["a", "b"],
                 [0, 1])
    identity = torch.arange(16) % 2
    expression = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    o, d, near, far, bg, codes = _rays()
    want = ref.render_rays(o, d, near, far, identity, expression, codes, bg)["rgb"]
    for backend in ("auto", "native"):
        cfg = load_config("tiny", ["model.field.hidden_dim=160", f"model.field.backend={backend}"]).model
        model = MINeRF(cfg, 5, ["a", "b"], [0, 1])
        model.load_state_dict(ref.state_dict())
        got = model.render_rays(o, d, near, far, identity, expression, codes, bg)["rgb"]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        got.sum().backward()
        grads = [p.grad for p in model.field.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.native
def test_the_heads_backend_says_which_heads_run_unfused():
    """info's 'heads native' (the checkpoint's record of what trained the run, and what runs here) was the backend
    asked for, whatever the heads were: a colour head of two hidden layers (the default) or heads wider than the fused
    kernel run as torch ops, yet were reported native. The record names the heads torch computes and why."""
    cpu = torch.device("cpu")

    def heads(*overrides):
        return MINeRF(load_config("tiny", list(overrides)).model, 5, ["a"], [0]).backends(cpu)["heads"]

    assert heads() == "native"
    assert heads("model.field.color_layers=2") == "native (density head), torch (colour head: 2 hidden layers)"
    assert heads("model.field.hidden_dim=160") == "torch (density and colour heads: 160 hidden units, beyond the " \
                                                  "fused kernel's 128)"
    assert heads("model.field.modulate=true") == "torch (density and colour heads: modulated)"
    assert heads("model.field.backend=torch") == "torch"


def _two_rays_of_three():
    """Two rays of three samples each, every sample 1 long: the optical depth before sample i is the sum of the
    densities before it in its ray."""
    t_starts = torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0, 2.0])
    return t_starts, t_starts + 1.0, torch.tensor([0, 3, 6])


def test_the_pruning_keeps_a_sample_exactly_at_the_threshold_and_drops_the_next():
    # Finite densities: T_i >= threshold is kept (as the compositor gives it a weight), the first T_i below it is not.
    # Densities of powers of two and a threshold of exp(-2): the optical depth 2 sits on it exactly.
    from fastminerf.model import _before_termination, _keep_before_termination
    from fastminerf.ops import RaySamples

    t_starts, t_ends, offsets = _two_rays_of_three()
    sigmas = torch.tensor([2.0, 0.5, 1.0, 1.0, 1.0, 0.5])
    threshold = math.exp(-2.0)
    assert -math.log(threshold) == 2.0
    expected = torch.tensor([True, True, False, True, True, True])  # ray 0: depths 0, 2, 2.5; ray 1: 0, 1, 2
    assert torch.equal(_before_termination(sigmas, t_starts, t_ends, offsets, threshold), expected)
    samples = RaySamples(torch.tensor([0, 0, 0, 1, 1, 1]), t_starts, t_ends, offsets)
    for stages in ((), (1,), (1, 2)):
        keep = _keep_before_termination(lambda idx: sigmas if idx is None else sigmas[idx], samples, threshold, stages)
        assert torch.equal(keep, expected), stages


@pytest.mark.parametrize("stages", [(), (1,), (1, 2)])
def test_the_pruning_keeps_a_nan_density_for_the_loss_to_see(stages):
    # A NaN density failed every comparison with the threshold, so the sample and every one after it (the prefix
    # sums run over the whole batch) were dropped: the rays rendered as background with a finite loss, and training
    # stopped only at the next checkpoint on the weights. Kept, the NaN reaches the compositing and the loss.
    from fastminerf.model import _keep_before_termination
    from fastminerf.ops import RaySamples

    t_starts, t_ends, offsets = _two_rays_of_three()
    sigmas = torch.tensor([0.1, float("nan"), 0.1, 0.1, 0.1, 0.1])
    samples = RaySamples(torch.tensor([0, 0, 0, 1, 1, 1]), t_starts, t_ends, offsets)
    keep = _keep_before_termination(lambda idx: sigmas if idx is None else sigmas[idx], samples, 0.5, stages)
    assert bool(keep.all()), keep


def test_a_nan_hash_table_renders_nan_not_the_background():
    torch.manual_seed(0)
    model = MINeRF(load_config("tiny").model, 5, ["a", "b"], [0, 1]).train()
    model.occupancy.mark_all()
    with torch.no_grad():
        model.field.encoding.params.fill_(float("nan"))
    o, d, near, far, bg, codes = _rays()
    out = model.render_rays(o, d, near, far, torch.arange(16) % 2, torch.zeros(16, 5), codes, bg)
    assert int(out["samples"].sum()) > 0
    assert bool(torch.isnan(out["rgb"]).any()), "a NaN field rendered as the background"
