"""Fused MLP head: native op (C++ CPU: the blocked AVX2 / baseline loops and the per-sample loop; CUDA where
present) against the pure-PyTorch reference, and the field's heads on either backend."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from fastminerf.ops.mlp_head import mlp_head, mlp_head_reference

pytestmark = pytest.mark.native

# float32: sums of up to H = 64 products in the forward and of up to S products in the weight gradients, in another
# order than torch's matrix products (and with FMAs).
F32_RTOL, F32_ATOL = 1e-4, 1e-4


def _case(generator, S, N, P, H, O, dtype, sorted_rays=True, with_rays=True):
    x = torch.randn(S, P, generator=generator, dtype=torch.float64).to(dtype)
    pre = torch.randn(N if with_rays else S, H, generator=generator, dtype=torch.float64).to(dtype)
    ri = torch.randint(0, N, (S,), generator=generator) if with_rays else None
    if ri is not None and sorted_rays:
        ri = ri.sort().values
    w1 = (torch.randn(H, P, generator=generator, dtype=torch.float64) / P**0.5).to(dtype)
    w2 = (torch.randn(O, H, generator=generator, dtype=torch.float64) / H**0.5).to(dtype)
    b2 = torch.randn(O, generator=generator, dtype=torch.float64).to(dtype)
    gy = torch.randn(S, O, generator=generator, dtype=torch.float64).to(dtype)
    return x, pre, ri, w1, w2, b2, gy


def _run(backend, x, pre, ri, w1, w2, b2, gy):
    leaves = [t.clone().requires_grad_(True) for t in (x, pre, w1, w2, b2)]
    xl, prel, w1l, w2l, b2l = leaves
    y = mlp_head(xl, prel, ri, w1l, w2l, b2l, backend=backend)
    y.backward(gy)
    return [y.detach()] + [t.grad for t in leaves]


# (P, H, O): the cpu preset's density head (8 -> 64 -> 19) and colour head (27 -> 64 -> 3); H = 12 takes the
# per-sample loop (H not a multiple of 8); 40 inputs and 34 outputs take the heap buffers of wide blocks.
SHAPES = [(8, 64, 19), (27, 64, 3), (5, 12, 4), (40, 32, 34), (3, 128, 1)]


@pytest.mark.parametrize("P,H,O", SHAPES)
def test_forward_and_gradients_match_reference_float64(P, H, O, generator):
    case = _case(generator, 3001, 97, P, H, O, torch.float64)
    native, ref = _run("native", *case), _run("torch", *case)
    for name, a, b in zip(["y", "x", "pre", "w1", "w2", "b2"], native, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("P,H,O", SHAPES[:2])
def test_float32_blocked_path_matches_reference(P, H, O, generator):
    case = _case(generator, 20000, 700, P, H, O, torch.float32)
    native = _run("native", *case)
    ref = _run("torch", *[t.double() if t is not None and t.is_floating_point() else t for t in case])
    for name, a, b in zip(["y", "x", "pre", "w1", "w2", "b2"], native, ref):
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double() / scale, b / scale, rtol=F32_RTOL, atol=F32_ATOL,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("sorted_rays,with_rays", [(False, True), (True, False)])
def test_unsorted_and_absent_ray_indices(sorted_rays, with_rays, generator):
    case = _case(generator, 500, 37, 8, 64, 19, torch.float64, sorted_rays=sorted_rays, with_rays=with_rays)
    for a, b in zip(_run("native", *case), _run("torch", *case)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_no_samples_gives_empty_output_and_zero_gradients(generator):
    x, pre, _, w1, w2, b2, _ = _case(generator, 10, 5, 8, 64, 19, torch.float32)
    out = _run("native", x[:0], pre, torch.zeros(0, dtype=torch.int64), w1, w2, b2, torch.zeros(0, 19))
    assert out[0].shape == (0, 19)
    assert all(float(g.abs().sum()) == 0.0 for g in out[2:])


def test_gradients_are_bit_identical_for_any_thread_count(generator):
    case = _case(generator, 20000, 700, 8, 64, 19, torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run("native", *case)
        torch.set_num_threads(2)
        two = _run("native", *case)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_bad_inputs_name_the_argument(generator):
    x, pre, ri, w1, w2, b2, _ = _case(generator, 50, 10, 8, 16, 3, torch.float32)
    bad = ri.clone()
    bad[7] = 10
    with pytest.raises(RuntimeError, match=r"ray_indices\[7\] = 10"):
        mlp_head(x, pre, bad, w1, w2, b2)
    with pytest.raises(ValueError, match="pre must have shape"):
        mlp_head(x, pre[:, :5], ri, w1, w2, b2)
    with pytest.raises(ValueError, match="at most 128 hidden units"):
        mlp_head(x, torch.zeros(10, 129), ri, torch.zeros(129, 8), torch.zeros(3, 129), b2)
    with pytest.raises(RuntimeError, match="`pre` dtype"):
        mlp_head(x, pre.double(), ri, w1, w2, b2)
    with pytest.raises(RuntimeError, match="`pre`, which has no rows"):
        mlp_head(x, pre[:0], ri, w1, w2, b2)



@pytest.mark.parametrize("backend", ["native", "torch"])
def test_ray_indices_of_the_wrong_shape_are_named_on_both_backends(generator, backend):
    """``ray_indices`` is (S,), one per sample. Five indices for 50 samples passed the Python checks: the native op
    named them, the reference failed inside torch ('The expanded size of the tensor (50) must match the existing
    size (5) at non-singleton dimension 0'), and a (S, 1) column likewise."""
    x, pre, ri, w1, w2, b2, _ = _case(generator, 50, 10, 8, 16, 3, torch.float32)
    for bad in (ri[:5], ri[:, None]):
        with pytest.raises(ValueError, match=re.escape(f"ray_indices must have shape (50,), got {tuple(bad.shape)}")):
            mlp_head(x, pre, bad, w1, w2, b2, backend=backend)


def test_reference_is_the_unfused_head(generator):
    """The reference is the plain two-layer MLP on [x, cond[ray]] with the per-ray part folded into ``pre``."""
    x, pre, ri, w1, w2, b2, _ = _case(generator, 200, 20, 8, 16, 3, torch.float64)
    rows = pre[ri]
    expected = torch.relu(x @ w1.t() + rows) @ w2.t() + b2
    torch.testing.assert_close(mlp_head_reference(x, pre, ri, w1, w2, b2), expected)


def test_field_heads_agree_between_native_and_torch_backends(generator):
    from fastminerf.config import FieldConfig
    from fastminerf.field import MINeRFField

    cfg = FieldConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, finest_resolution=32, hidden_dim=64,
                      density_layers=1, color_layers=1, identity_levels=2, identity_levels_for="colour",
                      density_levels=2, texture_flow=0.05, backend="native")
    torch.manual_seed(0)
    native = MINeRFField(cfg, expression_dim=6).double()
    reference = MINeRFField(dataclasses.replace(cfg, backend="torch"), expression_dim=6).double()
    reference.load_state_dict(native.state_dict())
    assert native.density_head.fusable and native.color_head.fusable
    n, s = 40, 900
    points = torch.rand(s, 3, generator=generator, dtype=torch.float64)
    ray_indices = torch.randint(0, n, (s,), generator=generator).sort().values
    directions = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator, dtype=torch.float64), dim=-1)
    expression = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    code = torch.randn(n, cfg.identity_code_dim, generator=generator, dtype=torch.float64)
    identity = torch.randint(0, 3, (n,), generator=generator)
    outs, grads = [], []
    for field in (native, reference):
        field.zero_grad()
        cond = field.condition(expression, code, None)
        sigma, rgb = field(points, directions, cond, ray_indices, identity)
        (sigma.sum() * 1e-3 + rgb.square().sum()).backward()
        outs.append((sigma.detach(), rgb.detach()))
        grads.append({k: p.grad for k, p in field.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-9)
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-8, atol=1e-9, msg=lambda m: f"{key}: {m}")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sorted_rays,with_rays", [(True, True), (False, True), (True, False)])
def test_cuda_native_matches_cpu(dtype, sorted_rays, with_rays, generator):
    from fastminerf import _native

    if not _native.has_cuda():
        pytest.fail("a CUDA device is present but the native extension was built without CUDA kernels")
    for P, H, O in SHAPES:
        case = _case(generator, 5000, 300, P, H, O, dtype, sorted_rays=sorted_rays, with_rays=with_rays)
        cpu = _run("native", *case)
        gpu = [t.cpu() for t in _run("native", *[t.cuda() if t is not None else None for t in case])]
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=F32_RTOL, atol=F32_ATOL)
        for name, a, b in zip(["y", "x", "pre", "w1", "w2", "b2"], gpu, cpu):
            scale = max(b.abs().max().item(), 1.0)
            torch.testing.assert_close(a / scale, b / scale, **tol, msg=lambda m: f"{(P, H, O)} {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("P,H,O", [SHAPES[0], SHAPES[2]])  # the blocked loops and the per-sample loop
def test_a_nan_input_gives_nan_where_the_reference_does(P, H, O, dtype, generator):
    # torch's relu keeps a NaN (and its backward passes the gradient of a NaN on), so a NaN in a sample's input or in a
    # ray's row shows as NaN in the output and the gradients; a relu that reads NaN as "not > 0" hid it as 0.
    x, pre, ri, w1, w2, b2, gy = _case(generator, 300, 40, P, H, O, dtype)
    x[7, 0] = float("nan")
    pre[int(ri[200]), 1] = float("nan")
    native, ref = _run("native", x, pre, ri, w1, w2, b2, gy), _run("torch", x, pre, ri, w1, w2, b2, gy)
    assert bool(ref[0][7].isnan().any()) and bool(ref[0][200].isnan().any())
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=F32_RTOL, atol=F32_ATOL)
    for name, a, b in zip(["y", "x", "pre", "w1", "w2", "b2"], native, ref):
        torch.testing.assert_close(a, b, equal_nan=True, **tol, msg=lambda m: f"{name}: {m}")
