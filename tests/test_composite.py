"""Volume compositing on packed samples: the native op (CPU, and CUDA where present) against the PyTorch reference,
the reference against a per-ray loop, float64 gradcheck, edge cases, and parity with nerfacc on a GPU."""
from __future__ import annotations

import math

import pytest
import torch

from fastminerf.ops.compositing import (
    CompositeResult,
    composite,
    composite_reference,
    distortion_loss,
    ray_indices_from_offsets,
)

# Tolerances, relative to the largest magnitude of the compared tensor (atol = RTOL * max|reference|, since a
# gradient's small entries come from differences of large sums and carry the large sums' absolute error).
# Both sides evaluate the same formulas in the same order; they differ by the last ulp of exp/expm1 (libm or CUDA
# against PyTorch's vectorised exp), the summation order of index_add, FMA contraction on the GPU, and how the
# backward forms T_{i+1} (rebuilt from the saved weights, against T_i exp(-sd_i) in autograd).
# Measured worst case over 20 seeds of 300 rays x 0..64 samples: 3.5e-7 (float32) and 4.7e-16 (float64), i.e.
# about 3 ulp of the largest value; the tolerances leave a 15x-200x margin for other seeds and the GPU.
RTOL_F32 = 5e-6
RTOL_F64 = 1e-13
# gradcheck (float64 central differences with eps 1e-6): truncation error of the difference quotient.
GRADCHECK_ATOL = 1e-7
GRADCHECK_RTOL = 1e-5

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def make_packed(
    generator: torch.Generator,
    n_rays: int = 300,
    max_samples: int = 64,
    dtype: torch.dtype = torch.float32,
    empty_fraction: float = 0.15,
    zero_density_fraction: float = 0.1,
    log_sigma_range: tuple[float, float] = (-4.0, 7.0),
) -> dict[str, torch.Tensor]:
    """Random packed samples like a ray marcher's: ray lengths 0..max_samples (some forced empty), increasing t with
    random step sizes and gaps, densities log-uniform over ``exp(log_sigma_range)`` (optical depths from ~1e-4 to
    ~40, so early termination triggers) with some exact zeros, colours in [0, 1]."""
    counts = torch.randint(0, max_samples + 1, (n_rays,), generator=generator)
    counts[torch.rand(n_rays, generator=generator) < empty_fraction] = 0
    offsets = torch.zeros(n_rays + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    n_samples = int(offsets[-1])
    ray = ray_indices_from_offsets(offsets, n_samples)
    deltas = torch.empty(n_samples, dtype=torch.float64).uniform_(0.002, 0.04, generator=generator)
    gaps = torch.empty(n_samples, dtype=torch.float64).uniform_(0.0, 0.01, generator=generator)
    steps = torch.cumsum(deltas + gaps, 0)
    first = torch.cat([steps.new_zeros(1), steps])[offsets[:-1]][ray]  # cumulative steps before each ray
    near = torch.empty(n_rays, dtype=torch.float64).uniform_(0.1, 1.0, generator=generator)[ray]
    t_ends = near + steps - first - gaps
    t_starts = t_ends - deltas
    lo, hi = log_sigma_range
    sigmas = torch.exp(torch.empty(n_samples, dtype=torch.float64).uniform_(lo, hi, generator=generator))
    sigmas[torch.rand(n_samples, generator=generator) < zero_density_fraction] = 0.0
    rgbs = torch.rand(n_samples, 3, generator=generator, dtype=torch.float64)
    return {
        "sigmas": sigmas.to(dtype),
        "rgbs": rgbs.to(dtype),
        "t_starts": t_starts.to(dtype),
        "t_ends": t_ends.to(dtype),
        "offsets": offsets,
    }


def _to(data: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in data.items()}


def _random_output_grads(data, generator) -> list[torch.Tensor]:
    n, s, dtype = data["offsets"].numel() - 1, data["sigmas"].numel(), data["sigmas"].dtype
    shapes = [(n, 3), (n,), (n,), (s,)]
    return [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]


def _run(data, grads, threshold, backend):
    """Outputs and (sigmas, rgbs) gradients of one backend for the given output gradients."""
    sigmas = data["sigmas"].clone().requires_grad_()
    rgbs = data["rgbs"].clone().requires_grad_()
    out = composite(sigmas, rgbs, data["t_starts"], data["t_ends"], data["offsets"], threshold, backend=backend)
    torch.autograd.backward(list(out), [g.to(sigmas.device) for g in grads])
    return out, sigmas.grad, rgbs.grad


def _assert_close(actual, expected, rtol, what="", scale: float = 0.0):
    """|actual - expected| <= rtol * max(max|expected|, scale), elementwise."""
    expected = expected.detach().to(actual.device)
    if expected.numel():
        scale = max(scale, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=rtol * max(scale, 1e-30), msg=lambda m: f"{what}: {m}")


def _term_scale(data) -> float:
    """A bound on the terms delta_i T_{i+1} g_i and delta_i S_i of dL/dsigma for output gradients in [-1, 1]:
    delta_max * (|gO| + |gD| max m + |gC| max c + |gW|). A gradient that is a small difference of such terms is
    only as accurate as eps times this bound, in the reference as much as in the kernels."""
    delta = float((data["t_ends"] - data["t_starts"]).max())
    return delta * (1.0 + float(data["t_ends"].max()) + 3.0 + 1.0)


def _loop_reference(data, threshold):
    """Independent per-ray loop in float64, written from the formulas (checks the vectorised reference)."""
    offsets = data["offsets"].tolist()
    s, t0, t1, c = (data[k].double() for k in ("sigmas", "t_starts", "t_ends", "rgbs"))
    n = len(offsets) - 1
    color, opacity, depth = torch.zeros(n, 3, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    weights = torch.zeros_like(s)
    for r in range(n):
        tau = 0.0
        for i in range(offsets[r], offsets[r + 1]):
            trans = math.exp(-tau)
            if trans < threshold:
                break
            sd = float(s[i]) * float(t1[i] - t0[i])
            w = trans * (1.0 - math.exp(-sd))
            weights[i] = w
            color[r] += w * c[i]
            opacity[r] += w
            depth[r] += w * 0.5 * float(t0[i] + t1[i])
            tau += sd
    return CompositeResult(color, opacity, depth, weights)


# ----------------------------------------------------------------------------------------------------------
# The reference itself (needs nothing compiled)


@pytest.mark.parametrize("threshold", [0.0, 1e-4, 1e-2])
def test_reference_matches_per_ray_loop(generator, threshold):
    data = make_packed(generator, n_rays=40, max_samples=24, dtype=torch.float64)
    out = composite_reference(**data, transmittance_threshold=threshold)
    expected = _loop_reference(data, threshold)
    for name, a, e in zip(CompositeResult._fields, out, expected):
        _assert_close(a, e, RTOL_F64, name)
    if threshold > 0:
        assert (out.weights == 0).sum() > (data["sigmas"] == 0).sum(), "early termination never triggered"


def test_reference_matches_nerfacc_documented_example():
    # nerfacc's render_weight_from_density docstring: weights [0.33, 0.37, 0.03, 0.55, 0.04, 0.00, 0.59].
    t_starts = torch.arange(7.0)
    out = composite_reference(
        torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9]), torch.ones(7, 3), t_starts, t_starts + 1,
        torch.tensor([0, 3, 5, 7]), transmittance_threshold=0.0,
    )
    torch.testing.assert_close(out.weights, torch.tensor([0.33, 0.37, 0.03, 0.55, 0.04, 0.00, 0.59]), atol=5e-3, rtol=0)
    torch.testing.assert_close(out.color, out.opacity[:, None].expand(3, 3))  # white samples: colour = opacity


# ----------------------------------------------------------------------------------------------------------
# Native against the reference


@pytest.mark.native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.0, 1e-4])
def test_native_matches_reference(generator, device, dtype, threshold):
    data = _to(make_packed(generator, dtype=dtype), device)
    grads = _random_output_grads(data, generator)
    rtol = RTOL_F32 if dtype == torch.float32 else RTOL_F64
    native, ref = _run(data, grads, threshold, "native"), _run(data, grads, threshold, "torch")
    for name, a, e in zip(CompositeResult._fields, native[0], ref[0]):
        _assert_close(a, e, rtol, name)
    _assert_close(native[1], ref[1], rtol, "d/dsigmas")
    _assert_close(native[2], ref[2], rtol, "d/drgbs")
    # Terminated samples: exactly zero weight and zero gradient on both sides, at the same samples.
    assert torch.equal(native[0].weights == 0, ref[0].weights == 0)
    if threshold > 0:
        terminated = (native[0].weights == 0) & (data["sigmas"] > 0)
        assert terminated.any(), "early termination never triggered"
        assert (native[1][terminated] == 0).all() and (native[2][terminated] == 0).all()


@pytest.mark.native
@pytest.mark.parametrize("outputs", [("color",), ("opacity",), ("depth",), ("weights",), ("color", "depth")])
def test_native_partial_output_gradients(generator, outputs):
    """Outputs left out of the loss reach the kernel as absent gradients (null pointers), not zeros."""
    data = make_packed(generator, n_rays=50, dtype=torch.float64)
    results = {}
    for backend in ("native", "torch"):
        sigmas = data["sigmas"].clone().requires_grad_()
        rgbs = data["rgbs"].clone().requires_grad_()
        out = composite(sigmas, rgbs, data["t_starts"], data["t_ends"], data["offsets"], backend=backend)
        loss = sum((getattr(out, name) * torch.linspace(-1, 1, getattr(out, name).numel(), dtype=torch.float64)
                    .reshape(getattr(out, name).shape)).sum() for name in outputs)
        results[backend] = torch.autograd.grad(loss, (sigmas, rgbs), allow_unused=True)
    for a, e in zip(results["native"], results["torch"]):
        if e is None:
            assert a is None or (a == 0).all()
        else:
            _assert_close(a, e, RTOL_F64, scale=_term_scale(data))


@pytest.mark.native
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_native_opacity_gradient_is_exact(generator, dtype, rtol):
    """dO/dsigma_i = delta_i T_K (T_K: transmittance behind the ray) holds to relative precision, also on opaque
    rays where T_K is tiny and the generic form T_{i+1} - sum_{j>i} w_j (autograd's) would be rounding noise.
    rtol: T_K = exp(-tau) inherits tau's relative rounding, eps * (samples per ray) * log-range, ~1e-5 in float32."""
    data = make_packed(generator, dtype=dtype, log_sigma_range=(-4.0, 4.0), zero_density_fraction=0.0)
    sigmas = data["sigmas"].clone().requires_grad_()
    out = composite(sigmas, data["rgbs"], data["t_starts"], data["t_ends"], data["offsets"], 0.0)
    (grad,) = torch.autograd.grad(out.opacity.sum(), sigmas)
    delta = (data["t_ends"] - data["t_starts"]).double()
    ray = ray_indices_from_offsets(data["offsets"])
    tau = torch.zeros(data["offsets"].numel() - 1, dtype=torch.float64).index_add(0, ray, data["sigmas"].double() * delta)
    expected = delta * torch.exp(-tau)[ray]
    assert (expected < 1e-6).any() and (expected > 1e-3).any()  # opaque and transparent rays alike
    tiny = torch.finfo(dtype).tiny  # below it, float32 denormals lose relative precision
    torch.testing.assert_close(grad.double(), expected, rtol=rtol, atol=tiny * 1e3)


@pytest.mark.native
def test_native_gradient_for_one_input_only(generator):
    data = make_packed(generator, n_rays=30, dtype=torch.float64)
    rgbs = data["rgbs"].clone().requires_grad_()
    out = composite(data["sigmas"], rgbs, data["t_starts"], data["t_ends"], data["offsets"])
    (grad,) = torch.autograd.grad(out.color.sum(), rgbs)
    _assert_close(grad, out.weights[:, None].expand(-1, 3), RTOL_F64)  # dC/dc_i = w_i


@pytest.mark.native
@pytest.mark.parametrize("threshold", [0.0, 1e-2])
def test_native_gradcheck_float64(generator, threshold):
    # Tiny rays. With threshold 1e-2 the densities put every ray's T far from the threshold (ratio > 2), so the
    # finite differences never move a sample across it.
    t_starts = torch.tensor([0.1, 0.2, 0.35, 0.5, 0.6, 0.2, 0.3, 0.4, 0.1], dtype=torch.float64)
    t_ends = t_starts + torch.tensor([0.1, 0.15, 0.1, 0.1, 0.2, 0.1, 0.1, 0.3, 0.05], dtype=torch.float64)
    sigmas = torch.tensor([0.5, 40.0, 3.0, 0.0, 2.0, 1.5, 60.0, 0.7, 0.8], dtype=torch.float64)
    offsets = torch.tensor([0, 5, 5, 8, 9])  # rays of 5, 0, 3 and 1 samples
    rgbs = torch.rand(9, 3, generator=generator, dtype=torch.float64)
    if threshold > 0:
        ref = composite_reference(sigmas, rgbs, t_starts, t_ends, offsets, threshold)
        assert (ref.weights[[2, 3, 4, 7]] == 0).all() and (ref.weights[[0, 1, 5, 6]] > 0).all()

    def fn(s, c):
        return tuple(composite(s, c, t_starts, t_ends, offsets, threshold))

    inputs = (sigmas.requires_grad_(), rgbs.requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


# ----------------------------------------------------------------------------------------------------------
# Edge cases (native and reference alike)

BACKENDS = [pytest.param("native", marks=pytest.mark.native), "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_rays", [0, 4])
def test_all_rays_empty(backend, n_rays):
    empty = torch.zeros(0, dtype=torch.float32)
    sigmas, rgbs = empty.clone().requires_grad_(), torch.zeros(0, 3).requires_grad_()
    out = composite(sigmas, rgbs, empty, empty, torch.zeros(n_rays + 1, dtype=torch.int64), backend=backend)
    assert out.color.shape == (n_rays, 3) and out.opacity.shape == (n_rays,) and out.depth.shape == (n_rays,)
    assert out.weights.shape == (0,)
    assert (out.color == 0).all() and (out.opacity == 0).all() and (out.depth == 0).all()
    (out.color.sum() + out.opacity.sum()).backward()
    assert sigmas.grad is None or sigmas.grad.shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_sample(backend):
    sigma, delta = 2.0, 0.25
    out = composite(torch.tensor([sigma], dtype=torch.float64, requires_grad=True),
                    torch.tensor([[0.2, 0.4, 0.6]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
                    torch.tensor([1.0 + delta], dtype=torch.float64), torch.tensor([0, 1]), backend=backend)
    alpha = 1 - math.exp(-sigma * delta)
    assert out.weights.item() == pytest.approx(alpha, rel=1e-14)
    assert out.opacity.item() == pytest.approx(alpha, rel=1e-14)
    assert out.depth.item() == pytest.approx(alpha * (1.0 + delta / 2), rel=1e-14)
    torch.testing.assert_close(out.color[0], alpha * torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_density(backend):
    n = 6
    sigmas = torch.zeros(n, requires_grad=True)
    t_starts = torch.linspace(0.0, 0.5, n)
    out = composite(sigmas, torch.rand(n, 3), t_starts, t_starts + 0.1, torch.tensor([0, 2, n]), backend=backend)
    assert (out.weights == 0).all() and (out.opacity == 0).all() and (out.color == 0).all()
    out.opacity.sum().backward()
    # dO/dsigma_i = delta_i T_{i+1} = delta_i at zero density: transparent samples still get a gradient.
    torch.testing.assert_close(sigmas.grad, torch.full((n,), 0.1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_density_terminates(backend):
    # An opaque first sample (sigma delta = 1e5): all weight on it, later samples terminated, finite gradients.
    sigmas = torch.tensor([1e6, 3.0, 5.0], requires_grad=True)
    rgbs = torch.rand(3, 3, requires_grad=True)
    t_starts = torch.tensor([0.1, 0.2, 0.3])
    out = composite(sigmas, rgbs, t_starts, t_starts + 0.1, torch.tensor([0, 3]), backend=backend)
    torch.testing.assert_close(out.weights, torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(out.color[0], rgbs[0].detach())
    (out.color.sum() + out.depth.sum()).backward()
    assert torch.isfinite(sigmas.grad).all() and torch.isfinite(rgbs.grad).all()
    assert (sigmas.grad[1:] == 0).all() and (rgbs.grad[1:] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_threshold_boundary_is_inclusive(backend):
    # With zero density T_i = 1 exactly: threshold 1 keeps every sample (T >= threshold), the next float above
    # 1 terminates before the first sample; weights are 0 either way, but the gradients tell the two apart.
    t_starts = torch.tensor([0.0, 0.5], dtype=torch.float64)
    for threshold, active in [(1.0, True), (math.nextafter(1.0, 2.0), False)]:
        sigmas = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        out = composite(sigmas, torch.ones(2, 3, dtype=torch.float64), t_starts, t_starts + 0.5,
                        torch.tensor([0, 2]), threshold, backend=backend)
        out.opacity.sum().backward()
        assert bool((sigmas.grad != 0).all()) is active


@pytest.mark.native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_threshold_terminates_at_the_same_sample(generator, dtype):
    # A threshold between two consecutive transmittances of ray 0 (at their geometric mean, far from either in ulps):
    # native and reference must stop at the same sample.
    data = make_packed(generator, n_rays=20, dtype=dtype, log_sigma_range=(-1.0, 3.0), zero_density_fraction=0.0)
    counts = data["offsets"].diff()
    r = int(torch.nonzero(counts >= 4)[0])  # the first ray with a few samples
    ray0 = slice(int(data["offsets"][r]), int(data["offsets"][r + 1]))
    sd = (data["sigmas"] * (data["t_ends"] - data["t_starts"]))[ray0].double()
    trans = torch.exp(-torch.cumsum(sd, 0))
    k = max(1, int((trans > 1e-3).sum()) // 2)  # trans[k] = T_{k+1}: samples 0..k stay active
    threshold = math.sqrt(float(trans[k - 1]) * float(trans[k]))
    native = composite(**data, transmittance_threshold=threshold)
    ref = composite(**data, transmittance_threshold=threshold, backend="torch")
    assert torch.equal(native.weights == 0, ref.weights == 0)
    assert int((native.weights[ray0] > 0).sum()) == k + 1


@pytest.mark.native
def test_native_rejects_bad_offsets():
    x = torch.rand(4)
    with pytest.raises(RuntimeError, match="non-decreasing"):
        composite(x, torch.rand(4, 3), x, x + 1, torch.tensor([0, 3, 2, 4]))
    with pytest.raises(RuntimeError, match="start at 0"):
        composite(x, torch.rand(4, 3), x, x + 1, torch.tensor([0, 3]))


def test_input_validation():
    x = torch.rand(4)
    with pytest.raises(ValueError, match="rgbs"):
        composite(x, torch.rand(4, 4), x, x + 1, torch.tensor([0, 4]), backend="torch")
    with pytest.raises(ValueError, match="int64"):
        composite(x, torch.rand(4, 3), x, x + 1, torch.tensor([0, 4], dtype=torch.int32), backend="torch")
    with pytest.raises(ValueError, match="dtype"):
        composite(x, torch.rand(4, 3, dtype=torch.float64), x, x + 1, torch.tensor([0, 4]), backend="torch")
    with pytest.raises(ValueError, match="backend"):
        composite(x, torch.rand(4, 3), x, x + 1, torch.tensor([0, 4]), backend="cuda")


@pytest.mark.native
def test_native_accepts_non_contiguous_inputs(generator):
    data = make_packed(generator, n_rays=20)
    wide = torch.cat([data["rgbs"], torch.rand(len(data["rgbs"]), 1)], 1)
    out = composite(data["sigmas"], wide[:, :3], data["t_starts"], data["t_ends"], data["offsets"])
    _assert_close(out.color, composite_reference(**data).color, RTOL_F32)


# ----------------------------------------------------------------------------------------------------------
# GPU: CUDA against CPU, and parity with nerfacc


@pytest.mark.cuda
@pytest.mark.native
def test_cuda_matches_cpu(generator):
    data = make_packed(generator, n_rays=2000)
    grads = _random_output_grads(data, generator)
    cpu, gpu = _run(data, grads, 1e-4, "native"), _run(_to(data, "cuda"), grads, 1e-4, "native")
    for name, a, e in zip(CompositeResult._fields, gpu[0], cpu[0]):
        _assert_close(a, e, RTOL_F32, name)
    _assert_close(gpu[1], cpu[1], RTOL_F32, "d/dsigmas")
    _assert_close(gpu[2], cpu[2], RTOL_F32, "d/drgbs")


# nerfacc computes alpha as 1 - exp(-sd) (we use -expm1(-sd)) and T from a parallel scan (another summation order):
# differences of a few float32 ulps of the largest value, amplified like RTOL_F32 in the gradients.
RTOL_NERFACC = 1e-4


@pytest.mark.nerfacc
@pytest.mark.native
def test_matches_nerfacc(generator):
    import nerfacc

    data = _to(make_packed(generator, n_rays=2000), "cuda")
    grads = [g.cuda() for g in _random_output_grads(data, generator)]
    offsets = data["offsets"]
    n_rays, n_samples = offsets.numel() - 1, data["sigmas"].numel()
    packed_info = torch.stack([offsets[:-1], offsets[1:] - offsets[:-1]], dim=-1)  # (N, 2) int64: start, count
    ray_indices = ray_indices_from_offsets(offsets, n_samples)
    sigmas = data["sigmas"].clone().requires_grad_()
    rgbs = data["rgbs"].clone().requires_grad_()
    t_starts, t_ends = data["t_starts"], data["t_ends"]
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas, packed_info=packed_info)
    color = nerfacc.accumulate_along_rays(weights, rgbs, ray_indices=ray_indices, n_rays=n_rays)
    opacity = nerfacc.accumulate_along_rays(weights, None, ray_indices=ray_indices, n_rays=n_rays)[:, 0]
    mid = ((t_starts + t_ends) / 2.0)[:, None]
    depth = nerfacc.accumulate_along_rays(weights, mid, ray_indices=ray_indices, n_rays=n_rays)[:, 0]
    theirs = (color, opacity, depth, weights)
    torch.autograd.backward(list(theirs), grads)
    ours, grad_sigmas, grad_rgbs = _run(data, grads, 0.0, "native")
    for name, a, e in zip(CompositeResult._fields, ours, theirs):
        _assert_close(a, e.detach(), RTOL_NERFACC, name)
    _assert_close(grad_sigmas, sigmas.grad, RTOL_NERFACC, "d/dsigmas")
    _assert_close(grad_rgbs, rgbs.grad, RTOL_NERFACC, "d/drgbs")


# ----------------------------------------------------------------------------------------------------------
# Distortion loss


def test_distortion_loss_matches_the_double_sum(generator):
    data = make_packed(generator, n_rays=60, max_samples=20, dtype=torch.float64)
    weights = composite_reference(**data, transmittance_threshold=0.0).weights.detach().requires_grad_(True)
    got = distortion_loss(weights, data["t_starts"], data["t_ends"], data["offsets"])
    off = data["offsets"]
    expected = []
    for r in range(off.numel() - 1):
        a, b = int(off[r]), int(off[r + 1])
        w = weights[a:b]
        mid = (data["t_starts"][a:b] + data["t_ends"][a:b]) / 2
        delta = data["t_ends"][a:b] - data["t_starts"][a:b]
        expected.append((w[:, None] * w[None] * (mid[:, None] - mid[None]).abs()).sum() + (w * w * delta).sum() / 3)
    expected = torch.stack(expected)
    _assert_close(got, expected, RTOL_F64, "distortion")
    g1, = torch.autograd.grad(got.sum(), weights)
    g2, = torch.autograd.grad(expected.sum(), weights)
    _assert_close(g1, g2, RTOL_F64, "distortion gradient")


def test_distortion_loss_is_smaller_for_a_sharp_surface():
    t = torch.arange(10, dtype=torch.float32)
    offsets = torch.tensor([0, 10, 20])
    sharp = torch.zeros(10)
    sharp[4] = 1.0
    spread = torch.full((10,), 0.1)
    loss = distortion_loss(torch.cat([sharp, spread]), torch.cat([t, t]), torch.cat([t, t]) + 1, offsets)
    assert loss[0] == pytest.approx(1.0 / 3.0)  # one interval of length 1: only the w^2 delta / 3 term
    assert loss[1] > 3 * loss[0]
    assert distortion_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.tensor([0, 0])).tolist() == [0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_backend_differentiates_the_sample_bounds(generator, backend):
    """Neither backend is differentiable with respect to ``t_starts`` / ``t_ends`` (module docstring): with the
    bounds requiring grad, the native op left them without a gradient while the reference gave them one through
    autograd (dC/dt from ``sigma * (t_end - t_start)`` and the depth's midpoints), so a model switched from
    ``native`` to ``torch`` trained its sample positions where the native one did not."""
    data = make_packed(generator, n_rays=8, dtype=torch.float64)
    sigmas = data["sigmas"].clone().requires_grad_()
    t_starts, t_ends = data["t_starts"].clone().requires_grad_(), data["t_ends"].clone().requires_grad_()
    out = composite(sigmas, data["rgbs"], t_starts, t_ends, data["offsets"], backend=backend)
    (out.color.sum() + out.opacity.sum() + out.depth.sum() + out.weights.sum()).backward()
    assert t_starts.grad is None and t_ends.grad is None
    assert sigmas.grad is not None and bool(sigmas.grad.abs().sum() > 0)
