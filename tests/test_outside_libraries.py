"""The tiny-cuda-nn and nerfacc code paths (``HashGridEncoding._tcnn_forward``, ``OccupancyGrid._nerfacc_sample``)
without a GPU: API-faithful stand-ins of ``tinycudann.Encoding`` and ``nerfacc.OccGridEstimator`` (constructor and
call signatures, buffers, dtypes and return values copied from tiny-cuda-nn's ``bindings/torch/tinycudann/modules.py``
and nerfacc 0.5.3's ``nerfacc/estimators/occ_grid.py``; their math in PyTorch on the CPU), and the backend switch
made to send CPU tensors to them. What the stand-ins compute is what the real libraries compute where this project
claims so (tiny-cuda-nn's HashGrid function; nerfacc's samples up to its float32 lattice drift, see
test_occupancy.py), so our calls must give what the native path gives: this checks argument names, shapes, dtypes
and how our code wires the outside modules, not the libraries themselves (the GPU-marked parity tests do that)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import types
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import pytest
import torch
from torch import Tensor

import fastminerf.backend as B
from fastminerf import HashGridEncoding, OccupancyGrid
from fastminerf.ops.hash_grid import hash_encode_reference, hash_grid_levels
from fastminerf.ops.occupancy import march_rays_reference, pack_bitfield

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is not None for m in ("tinycudann", "nerfacc")),
    reason="a real tiny-cuda-nn or nerfacc is installed here (the GPU-marked parity tests cover it)")


# ----------------------------------------------------------------------------------------------------------
# tinycudann stand-in (modules.py: Module / Encoding)


class _TcnnModule(torch.nn.Module):
    def __init__(self, seed=1337):
        super().__init__()
        self.dtype = self.precision
        self.seed = seed
        initial_params = torch.zeros(self._n_params(), dtype=torch.float32)  # tcnn's initial_params are float32
        self.params = torch.nn.Parameter(initial_params, requires_grad=True)
        self.register_parameter(name="params", param=self.params)

    def forward(self, x):
        batch_size = x.shape[0]
        output = self._fwd(x.to(torch.float).contiguous(), self.params.to(self.precision).contiguous())
        return output[:batch_size, :self.n_output_dims]


class FakeTcnnEncoding(_TcnnModule):
    calls: List[dict] = []

    def __init__(self, n_input_dims, encoding_config, seed=1337, dtype=None):
        self.n_input_dims = n_input_dims
        self.encoding_config = encoding_config
        if dtype is None:
            self.precision = torch.half  # _C.preferred_precision() on most GPUs
        elif dtype in (torch.float32, torch.float16):
            self.precision = dtype
        else:
            raise ValueError(f"Encoding only supports fp32 or fp16 precision, but got {dtype}")
        c = encoding_config
        assert n_input_dims == 3 and c["otype"] == "HashGrid" and c.get("interpolation", "Linear") == "Linear"
        # tiny-cuda-nn's GridEncodingTemplated (3-D): scale = exp2f(l * log2f(b)) * N_min - 1, R = ceil(scale) + 1,
        # params_in_level = min(next_multiple(R^3, 8), 2^log2_T)
        self.levels = hash_grid_levels(c["n_levels"], c["n_features_per_level"], c["log2_hashmap_size"],
                                       c["base_resolution"], c["per_level_scale"])
        super().__init__(seed=seed)
        self.n_output_dims = c["n_levels"] * c["n_features_per_level"]
        FakeTcnnEncoding.calls.append(dict(config=dict(c), dtype=dtype))

    def _n_params(self):
        return self.levels.n_rows * self.levels.n_features

    def _fwd(self, x, params):
        assert x.dtype == torch.float32 and x.shape[1] == self.n_input_dims
        assert params.dtype == self.precision and params.numel() == self._n_params()
        table = params.float().view(self.levels.n_rows, self.levels.n_features)
        return hash_encode_reference(x, table, self.levels).to(self.precision)


# ----------------------------------------------------------------------------------------------------------
# nerfacc 0.5.3 stand-in (estimators/occ_grid.py: OccGridEstimator)


def _enlarge_aabb(aabb, factor: float) -> Tensor:
    center = (aabb[:3] + aabb[3:]) / 2
    extent = (aabb[3:] - aabb[:3]) / 2
    return torch.cat([center - extent * factor, center + extent * factor])


class FakeOccGridEstimator(torch.nn.Module):
    DIM: int = 3
    calls: List[dict] = []

    def __init__(self, roi_aabb: Union[List[int], Tensor], resolution: Union[int, List[int], Tensor] = 128,
                 levels: int = 1, **kwargs) -> None:
        super().__init__()
        if "contraction_type" in kwargs:
            raise ValueError("`contraction_type` is not supported anymore for nerfacc >= 0.4.0.")
        if isinstance(resolution, int):
            resolution = [resolution] * self.DIM
        if isinstance(resolution, (list, tuple)):
            resolution = torch.tensor(resolution, dtype=torch.int32)
        assert isinstance(resolution, Tensor), f"Invalid type: {resolution}!"
        assert resolution.shape[0] == self.DIM, f"Invalid shape: {resolution}!"
        if isinstance(roi_aabb, (list, tuple)):
            roi_aabb = torch.tensor(roi_aabb, dtype=torch.float32)
        assert isinstance(roi_aabb, Tensor), f"Invalid type: {roi_aabb}!"
        assert roi_aabb.shape[0] == self.DIM * 2, f"Invalid shape: {roi_aabb}!"
        aabbs = torch.stack([_enlarge_aabb(roi_aabb, 2**i) for i in range(levels)], dim=0)
        self.cells_per_lvl = int(resolution.prod().item())
        self.levels = levels
        self.register_buffer("resolution", resolution)
        self.register_buffer("aabbs", aabbs)
        self.register_buffer("occs", torch.zeros(self.levels * self.cells_per_lvl))
        self.register_buffer("binaries", torch.zeros([levels] + resolution.tolist(), dtype=torch.bool))

    @torch.no_grad()
    def sampling(self, rays_o: Tensor, rays_d: Tensor, sigma_fn: Optional[Callable] = None,
                 alpha_fn: Optional[Callable] = None, near_plane: float = 0.0, far_plane: float = 1e10,
                 t_min: Optional[Tensor] = None, t_max: Optional[Tensor] = None, render_step_size: float = 1e-3,
                 early_stop_eps: float = 1e-4, alpha_thre: float = 0.0, stratified: bool = False,
                 cone_angle: float = 0.0) -> Tuple[Tensor, Tensor, Tensor]:
        FakeOccGridEstimator.calls.append(dict(near_plane=near_plane, far_plane=far_plane, stratified=stratified))
        assert rays_o.dtype == rays_d.dtype == torch.float32 and rays_o.shape == rays_d.shape
        assert self.binaries.dtype == torch.bool and self.binaries.shape[0] == self.levels
        assert self.binaries.device == self.aabbs.device == rays_o.device
        near_planes = torch.full_like(rays_o[..., 0], fill_value=near_plane)
        far_planes = torch.full_like(rays_o[..., 0], fill_value=far_plane)
        if t_min is not None:
            near_planes = torch.clamp(near_planes, min=t_min)
        if t_max is not None:
            far_planes = torch.clamp(far_planes, max=t_max)
        if stratified:
            near_planes += torch.rand_like(near_planes) * render_step_size
        res = self.resolution.tolist()
        bits = pack_bitfield(self.binaries.reshape(-1).float(), 0.5, self.levels, backend="torch")
        s = march_rays_reference(rays_o, rays_d, bits, self.aabbs, res, near_planes, far_planes, render_step_size,
                                 cone_angle)
        return s.ray_indices, s.t_starts, s.t_ends  # ray indices int64 (LongTensor), t float32


# ----------------------------------------------------------------------------------------------------------
# Wiring


@pytest.fixture
def outside(monkeypatch):
    """Install the stand-ins as ``tinycudann`` and ``nerfacc`` and let ``tcnn`` / ``nerfacc`` resolve on the CPU."""
    tcnn = types.ModuleType("tinycudann")
    tcnn.Encoding = FakeTcnnEncoding
    nerfacc = types.ModuleType("nerfacc")
    nerfacc.__version__ = "0.5.3"
    nerfacc.OccGridEstimator = FakeOccGridEstimator
    monkeypatch.setitem(sys.modules, "tinycudann", tcnn)
    monkeypatch.setitem(sys.modules, "nerfacc", nerfacc)
    FakeTcnnEncoding.calls.clear()
    FakeOccGridEstimator.calls.clear()
    real = B.resolve

    def resolve(backend, component, device_type):
        if (backend, component) in (("tcnn", "encoding"), ("nerfacc", "grid")):
            return backend
        return real(backend, component, device_type)

    monkeypatch.setattr(B, "resolve", resolve)
    real_device = torch.cuda.device

    class device(real_device):  # tiny-cuda-nn's current-device guard; a no-op for the CPU tensors here
        def __init__(self, dev):
            self.idx = -1

    monkeypatch.setattr(torch.cuda, "device", device)
    yield


def test_tcnn_encoding_gives_the_native_features_and_gradients(outside):
    g = torch.Generator().manual_seed(0)
    ours = HashGridEncoding(4, 2, 12, 8, 1.7, backend="native")
    theirs = HashGridEncoding(4, 2, 12, 8, 1.7, backend="tcnn")
    with torch.no_grad():
        ours.params.uniform_(-1, 1, generator=g)
    theirs.load_state_dict(ours.state_dict())
    points = torch.rand(300, 3, generator=g)
    a, b = ours(points), theirs(points)
    assert FakeTcnnEncoding.calls and FakeTcnnEncoding.calls[0]["dtype"] == torch.float32
    assert b.dtype == torch.float32 and b.shape == a.shape
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    grad = torch.rand(a.shape, generator=g)
    a.backward(grad)
    b.backward(grad)
    torch.testing.assert_close(theirs.params.grad, ours.params.grad, atol=1e-5, rtol=1e-5)
    # one parameter vector whatever the backend: the tiny-cuda-nn module is not a submodule and adds nothing
    assert list(theirs.state_dict()) == ["params"]
    assert [p is theirs.params for p in theirs.parameters()] == [True]


def test_nerfacc_marcher_gives_the_native_samples(outside):
    g = torch.Generator().manual_seed(1)
    kwargs = dict(roi_aabb=(-1.0, -1.0, -1.0, 1.0, 1.0, 1.0), resolution=16, levels=2)
    ours, theirs = OccupancyGrid(**kwargs, backend="native"), OccupancyGrid(**kwargs, backend="nerfacc")
    ours.apply_values(torch.arange(2 * 16**3), torch.rand(2 * 16**3, generator=g), ema_decay=1.0, occ_threshold=0.5)
    theirs.load_state_dict(ours.state_dict())
    o = torch.randn(64, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.nn.functional.normalize(-o + 0.2 * torch.randn(64, 3, generator=g), dim=1)
    near = torch.rand(64, generator=g)
    far = 3.0 + torch.rand(64, generator=g)
    for kw in (dict(near=near, far=far), dict(near=0.5), dict(near=near, max_samples_per_ray=7)):
        a = ours.sample(o, d, step_size=0.05, **kw)
        b = theirs.sample(o, d, step_size=0.05, **kw)
        assert b.ray_indices.dtype == torch.int64 and b.offsets.dtype == torch.int64
        assert torch.equal(a.offsets, b.offsets), kw
        assert torch.equal(a.ray_indices, b.ray_indices)
        torch.testing.assert_close(b.t_starts, a.t_starts, atol=1e-5, rtol=0)
        torch.testing.assert_close(b.t_ends, a.t_ends, atol=1e-5, rtol=0)
    assert FakeOccGridEstimator.calls[0]["stratified"] is False


def test_training_through_tcnn_and_nerfacc_runs_as_native(outside, tmp_path):
    """The gpu preset's path (tcnn encoding, nerfacc marcher, weight average, stratified marching) trains, saves
    and loads like the native one: the same losses up to float rounding."""
    from fastminerf import load_config, load_run, train
    from fastminerf.data.synth import generate

    generate(tmp_path / "data", n_identities=2, n_frames=4, size=16, seed=3, novel_frames=1)
    data = sorted(p for p in (tmp_path / "data").iterdir() if p.is_dir())
    common = ["train.steps=6", "train.log_every=1", "model.field.identity_levels=0", "train.ema_decay=0.9",
              "train.ray_jitter=true", "train.threads=1"]
    logs = {}
    for name, backends in (("native", ["model.field.backend=native", "model.grid_backend=native"]),
                           ("outside", ["model.field.backend=tcnn", "model.grid_backend=nerfacc"])):
        train(load_config("tiny", common + backends), data, tmp_path / name)
        logs[name] = [json.loads(line)["loss"] for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    assert FakeTcnnEncoding.calls and FakeOccGridEstimator.calls
    np.testing.assert_allclose(logs["outside"], logs["native"], rtol=1e-3)
    cfg, model, _ = load_run(tmp_path / "outside")
    assert cfg.model.field.backend == "tcnn" and cfg.model.grid_backend == "nerfacc"


def test_a_run_trained_through_tcnn_and_nerfacc_loads_and_renders_on_the_cpu(outside, tmp_path, monkeypatch):
    """A run trained with model.field.backend=tcnn and model.grid_backend=nerfacc (CUDA only) could not be
    evaluated or rendered: load_run loads on the CPU (checkpoints are device-independent), and the first render
    raised "BackendError: backend 'nerfacc' runs only on CUDA devices, not on cpu" (a traceback from fastminerf
    eval / render). Loaded, it runs what computes the same function on the CPU, and gives the same image."""
    from fastminerf import load_config, load_dataset, load_run, render_frame, train
    from fastminerf.data.synth import generate

    generate(tmp_path / "data", n_identities=2, n_frames=4, size=16, seed=3, novel_frames=1)
    data = sorted(p for p in (tmp_path / "data").iterdir() if p.is_dir())
    overrides = ["train.steps=3", "model.field.identity_levels=0", "model.field.backend=tcnn",
                 "model.grid_backend=nerfacc", "train.threads=1"]
    trained = train(load_config("tiny", overrides), data, tmp_path / "run").model
    dataset = load_dataset(data, splits=("val",))
    with torch.no_grad():
        expected = render_frame(trained, dataset, "val", 0)
    monkeypatch.undo()  # the real backend switch, and no tiny-cuda-nn or nerfacc
    cfg, model, _ = load_run(tmp_path / "run")
    assert cfg.model.field.backend == "tcnn" and cfg.model.grid_backend == "nerfacc"  # what the run was trained with
    with torch.no_grad():
        image = render_frame(model, dataset, "val", 0)
    np.testing.assert_allclose(image, expected, atol=1e-4)


def test_the_outside_modules_are_built_again_after_a_move_or_a_new_state(outside):
    """The tiny-cuda-nn encoding and the nerfacc estimator were built once, on the device of their first call, and
    kept: after model.to(another device) (cuda:0 -> cuda:1, or back and forth) the next call ran the module built
    for the old device (nerfacc's boxes stayed there: 'Expected all tensors to be on the same device'), and a
    grid given another state (load_state_dict of another box) marched through the old box. A move (any _apply;
    the stand-ins run on the CPU, so .cpu() stands for it) or a new state builds them again on first use, where the
    parameters and rays now are."""
    enc = HashGridEncoding(4, 2, 12, 8, 1.7, backend="tcnn")
    points = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    enc(points)
    enc.cpu()
    enc(points)
    assert len(FakeTcnnEncoding.calls) == 2
    assert enc._tcnn[0].params is enc.params  # one parameter vector, the one the optimizer now holds

    g = torch.Generator().manual_seed(1)
    small = dict(roi_aabb=(-0.5, -0.5, -0.5, 0.5, 0.5, 0.5), resolution=16, levels=2)
    ours = OccupancyGrid(roi_aabb=(-1.0, -1.0, -1.0, 1.0, 1.0, 1.0), resolution=16, levels=2, backend="native")
    theirs = OccupancyGrid(**small, backend="nerfacc")
    ours.apply_values(torch.arange(2 * 16**3), torch.rand(2 * 16**3, generator=g), ema_decay=1.0, occ_threshold=0.5)
    o = torch.randn(64, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.nn.functional.normalize(-o + 0.2 * torch.randn(64, 3, generator=g), dim=1)
    theirs.sample(o, d, near=0.5, step_size=0.05)
    theirs.load_state_dict(ours.state_dict())  # another box
    a, b = ours.sample(o, d, near=0.5, step_size=0.05), theirs.sample(o, d, near=0.5, step_size=0.05)
    assert torch.equal(a.offsets, b.offsets) and torch.equal(a.ray_indices, b.ray_indices)
    built = theirs._nerfacc[0]
    theirs.cpu()
    theirs.sample(o, d, near=0.5, step_size=0.05)
    assert theirs._nerfacc[0] is not built and theirs._nerfacc[0].aabbs.device == o.device


def test_a_run_trained_through_tcnn_and_nerfacc_personalizes_on_the_cpu(outside, tmp_path, monkeypatch):
    """README: a run trained with tcnn / nerfacc is loaded by personalize, eval and render with auto in their place,
    so it runs on a CPU too. load_run did so, but personalize then checked the run's own config against the CPU
    (_check_backends) and refused "model.field.backend='tcnn' ... runs only on CUDA devices" before any work,
    while a personalisation may not change model.* settings: such a run could not be personalised off the GPU.
    It personalises as the model it loaded (auto in their place), and the run's config keeps what it asked for."""
    from fastminerf import load_config, load_run, personalize, train
    from fastminerf.data.synth import generate

    generate(tmp_path / "data", n_identities=3, n_frames=4, size=16, seed=3, novel_frames=1)
    data = sorted(p for p in (tmp_path / "data").iterdir() if p.is_dir())
    overrides = ["train.steps=2", "model.field.identity_levels=0", "model.field.backend=tcnn",
                 "model.grid_backend=nerfacc", "train.threads=1"]
    train(load_config("tiny", overrides), data[:2], tmp_path / "run")
    monkeypatch.undo()  # the real backend switch, and no tiny-cuda-nn or nerfacc
    personalize(tmp_path / "run", [data[2]], tmp_path / "p", steps=2)
    personalize(tmp_path / "run", [data[2]], tmp_path / "p", steps=3)  # and resumes there
    cfg, model, meta = load_run(tmp_path / "p")
    assert meta["added"] == [data[2].name] and meta["step"] == 3
    assert cfg.model.field.backend == "tcnn" and cfg.model.grid_backend == "nerfacc"
