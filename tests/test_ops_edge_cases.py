"""Edge cases of the native ops and their pure-PyTorch references: rays with a negative near plane or non-finite
values, a hash grid of base resolution 1, arguments of the wrong dtype named, the README's ops and references importable
from ``fastminerf.ops``."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fastminerf.ops.hash_grid import hash_encode, hash_grid_levels
from fastminerf.ops.occupancy import cascade_aabbs, march_rays, pack_bitfield

ROI = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


@pytest.mark.native
@pytest.mark.parametrize("cone", [0.0, 0.01])
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_march_with_a_negative_near_plane_samples_the_box_behind_the_origin(backend, cone):
    """The lattice t_k = near + k step starts at any near plane, negative ones included: a box behind the origin
    (t < 0) is sampled like one in front. The reference used to bound t by |o - centre| -+ radius, which holds for
    t >= 0 only, and dropped these samples."""
    aabbs = cascade_aabbs(ROI, 1)
    bits = pack_bitfield(torch.ones(8**3), 0.5, 1)
    # Along +x from x = 3: the box x in [-1, 1) is at t in [-4, -2). Midpoints -4.95 + 0.1k (fixed step).
    o = torch.tensor([[3.0, 0.1, 0.2], [0.0, 0.1, -3.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    kw = dict(near=-5.0, far=10.0, step_size=0.1, cone_angle=cone, max_step_size=0.1)
    s = march_rays(o, d, bits, aabbs, 8, backend=backend, **kw)
    assert s.counts.tolist() == [20, 20]
    mid = (s.t_starts + s.t_ends) * 0.5
    assert bool((mid[:20] >= -4.0).all() and (mid[:20] < -2.0).all())
    other = march_rays(o, d, bits, aabbs, 8, backend="torch" if backend == "native" else "native", **kw)
    for x, y in zip(s, other):
        assert torch.equal(x, y)


# A ray with a non-finite near plane, origin or direction has no sample in the grid (every lattice point is -inf, or
# every x_k is non-finite, hence outside). The native walk used to loop forever on these: the lattice never advances
# from -inf, and an infinite origin grew the box padding to infinity, so it stepped through every sample up to `far`.
# The second ray of each case is an ordinary one (200 samples). Run in a child process so that a hang fails the test instead of the whole run.
NON_FINITE_RAYS = {
    "near -inf": "o, d, kw = [[0.0, 0.0, -3.0]], [[0.0, 0.0, 1.0]], dict(near=torch.tensor([-math.inf, 0.0]))",
    "near -inf, cone": "o, d, kw = [[0.0, 0.0, -3.0]], [[0.0, 0.0, 1.0]], dict(near=torch.tensor([-math.inf, 0.0]), cone_angle=0.01, max_step_size=0.01)",
    "origin inf": "o, d, kw = [[math.inf, 0.0, -3.0]], [[0.0, 0.0, 1.0]], dict()",
    "origin inf, cone": "o, d, kw = [[math.inf, 0.0, -3.0]], [[0.0, 0.0, 1.0]], dict(cone_angle=0.01, max_step_size=0.01)",
    "origin -inf, far inf": "o, d, kw = [[0.0, -math.inf, 0.5]], [[0.0, 0.0, 1.0]], dict(far=torch.tensor([math.inf, 1e10]))",
    "direction inf": "o, d, kw = [[0.0, 0.0, -3.0]], [[0.0, 0.0, math.inf]], dict(near=torch.tensor([-2.0, 0.0]))",
}


@pytest.mark.native
@pytest.mark.parametrize("case", sorted(NON_FINITE_RAYS))
def test_march_rays_with_non_finite_values_give_no_samples(case):
    code = f"""
import math, torch
from fastminerf.ops.hash_grid import hash_encode, hash_grid_levels
from fastminerf.ops.occupancy import cascade_aabbs, march_rays, pack_bitfield
aabbs = cascade_aabbs({ROI!r}, 1)
bits = pack_bitfield(torch.ones(8**3), 0.5, 1)
{NON_FINITE_RAYS[case]}
o, d = torch.tensor(o + [[0.0, 0.0, -3.0]]), torch.tensor(d + [[0.0, 0.0, 1.0]])
for backend in ("native", "torch"):
    s = march_rays(o, d, bits, aabbs, 8, step_size=0.01, backend=backend, **kw)
    print(backend, s.counts.tolist())
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__import__("fastminerf").__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    try:
        # a bound on a hang (a march that never ends), not a time: the child's start (torch's import) took 14.7 s at a
        # load of 8 on 2 cores
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"march_rays did not return in 300 s for {case}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["native [0, 200]", "torch [0, 200]"]


@pytest.mark.native
def test_hash_grid_with_base_resolution_one_runs_natively(generator):
    """hash_grid_levels accepts base_resolution=1 (as tiny-cuda-nn): level 0 then has scale 0 and resolution 1, which
    the reference encodes; the native op used to refuse any level resolution below 2."""
    levels = hash_grid_levels(n_levels=3, n_features_per_level=2, log2_hashmap_size=8, base_resolution=1,
                              per_level_scale=2.0)
    assert levels.resolutions[0] == 1
    points = torch.rand(100, 3, generator=generator, dtype=torch.float64).requires_grad_()
    table = torch.randn(levels.n_rows, 2, generator=generator, dtype=torch.float64).requires_grad_()
    native = hash_encode(points, table, levels, backend="native")
    reference = hash_encode(points, table, levels, backend="torch")
    torch.testing.assert_close(native, reference)
    grad = torch.randn(native.shape, generator=generator, dtype=torch.float64)
    g_native = torch.autograd.grad(native, (points, table), grad)
    g_reference = torch.autograd.grad(reference, (points, table), grad)
    for a, b in zip(g_native, g_reference):
        torch.testing.assert_close(a, b)


@pytest.mark.native
@pytest.mark.parametrize("name", ["origins", "directions", "near", "far"])
def test_native_march_names_the_argument_of_the_wrong_dtype(name):
    aabbs = [float(v) for v in cascade_aabbs(ROI, 1).reshape(-1).tolist()]
    args = dict(origins=torch.zeros(2, 3), directions=torch.ones(2, 3), near=torch.zeros(2), far=torch.ones(2))
    args[name] = args[name].double()
    bits = torch.zeros(1, 64, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match=f"`{name}` must be float32"):
        torch.ops.fastminerf.march_rays(*args.values(), bits, aabbs, [8, 8, 8], 0.01, 0.0, 1e10, 0)


def test_every_op_and_reference_of_the_readme_engine_table_is_in_fastminerf_ops():
    """README's native-engine table lists each op's Python name and its reference beside ``fastminerf.ops.*``;
    ``from fastminerf.ops import ema_update_reference`` (and ``pack_bitfield_reference``) failed: they lived only
    in ``fastminerf.ops.occupancy``."""
    import re
    from pathlib import Path

    import fastminerf
    import fastminerf.ops

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## The native engine", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == 4
    for cells in rows:
        for cell in (cells[1], cells[5]):  # Python, reference
            for name in re.findall(r"`([^`]+)`", cell):
                module, _, attr = name.rpartition(".")
                owner = fastminerf if module == "fastminerf" else fastminerf.ops
                assert hasattr(owner, attr), f"{name} is not importable from {owner.__name__}"
                if owner is fastminerf.ops:
                    assert attr in fastminerf.ops.__all__, name


@pytest.mark.parametrize("backend", [pytest.param("native", marks=pytest.mark.native), "torch"])
@pytest.mark.parametrize("name", ["near", "far"])
@pytest.mark.parametrize("shape", [(3,), (5, 1), (1, 5)])
def test_march_names_a_plane_of_the_wrong_shape(backend, name, shape):
    """``near`` / ``far`` are a float or one value per ray (N,). Three planes for five rays failed inside torch's
    ``expand`` ('The expanded size of the tensor (5) must match the existing size (3) ...'), naming neither the
    argument nor the shape it needs; a (N, 1) column failed the same way."""
    bits = pack_bitfield(torch.ones(8**3), 0.5, levels=1, backend="torch")
    planes = dict(near=0.0, far=10.0)
    planes[name] = torch.zeros(shape) + planes[name]
    with pytest.raises(ValueError, match=rf"{name} must be a float or one value per ray \(5,\), got \({shape[0]},"):
        march_rays(torch.zeros(5, 3), torch.ones(5, 3), bits, cascade_aabbs(ROI, 1), 8, step_size=0.1,
                   backend=backend, **planes)
    # One value per ray (N,) and a scalar tensor are accepted.
    march_rays(torch.zeros(5, 3), torch.ones(5, 3), bits, cascade_aabbs(ROI, 1), 8, step_size=0.1, backend=backend,
               **{name: torch.full((5,), planes[name].reshape(-1)[0].item())})
    march_rays(torch.zeros(5, 3), torch.ones(5, 3), bits, cascade_aabbs(ROI, 1), 8, step_size=0.1, backend=backend,
               **{name: torch.tensor(0.5 if name == "near" else 10.0)})


def test_the_hash_grid_references_without_a_salt_on_identity_levels_say_so():
    """hash_encode refuses a grid with identity levels and no salt; the public reference and hash_grid_rows read the
    same levels through corner_rows, which took salt=None to 'NoneType' object has no attribute 'long'."""
    from fastminerf.ops import hash_encode_reference, hash_grid_rows

    levels = hash_grid_levels(n_levels=4, n_features_per_level=2, log2_hashmap_size=8, base_resolution=2,
                              per_level_scale=2.0, identity_levels=1)
    points, table = torch.rand(5, 3), torch.zeros(levels.n_rows, levels.n_features)
    for call in (lambda: hash_encode_reference(points, table, levels), lambda: hash_grid_rows(points, levels)):
        with pytest.raises(ValueError, match=r"identity levels \(from level 3\): salt"):
            call()
    salt = torch.zeros(5, dtype=torch.int64)
    assert hash_encode_reference(points, table, levels, salt).shape == (5, 8)
    assert hash_grid_rows(points, levels, salt).shape == (4, 5, 8)


def _native_op_cases():
    """Each native op with autograd, as (function of its differentiable float64 inputs, those inputs)."""
    from fastminerf.ops import composite, mlp_head

    g = torch.Generator().manual_seed(0)
    levels = hash_grid_levels(n_levels=2, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2,
                              per_level_scale=2.0)
    points = torch.rand(4, 3, generator=g, dtype=torch.float64)
    table = torch.randn(levels.n_rows, 2, generator=g, dtype=torch.float64)
    t_starts = torch.tensor([0.0, 0.5, 1.0, 0.2], dtype=torch.float64)
    offsets = torch.tensor([0, 3, 4])
    ray = torch.tensor([0, 0, 1])
    return {
        "hash_encode": (lambda b, p, t: hash_encode(p, t, levels, backend=b), (points, table)),
        "composite": (lambda b, s, c: composite(s, c, t_starts, t_starts + 0.4, offsets, 0.0, backend=b).color,
                      (torch.rand(4, generator=g, dtype=torch.float64) * 2, torch.rand(4, 3, generator=g, dtype=torch.float64))),
        "mlp_head": (lambda b, x, w1: mlp_head(x, torch.randn(2, 5, generator=torch.Generator().manual_seed(1),
                                                             dtype=torch.float64), ray, w1,
                                              torch.ones(2, 5, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                                              backend=b),
                     (torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64))),
    }


@pytest.mark.native
@pytest.mark.parametrize("op", ["hash_encode", "composite", "mlp_head"])
def test_a_second_derivative_through_a_native_op_is_refused_not_wrong(op):
    """The native backward kernels are not differentiable themselves. A gradient taken with create_graph=True (a
    penalty on the density's gradient, gradgradcheck) went through the backward op's autograd fallback, which torch
    only warns about, and gave silently wrong second derivatives (gradgradcheck: 'Jacobian mismatch'). A second
    derivative through a native op is now an error naming the op and the reference (backend='torch'), which gives
    it. (torch's once_differentiable is not enough: its error node is cut from the inputs, so autograd.grad said
    the inputs 'appear to not have been used in the graph', and allow_unused=True gave None.)"""
    f, inputs = _native_op_cases()[op]
    inputs = [t.clone().requires_grad_() for t in inputs]
    out = f("native", *inputs)
    grads = torch.autograd.grad((out * out).sum(), inputs, create_graph=True)
    with pytest.raises(RuntimeError, match=rf"{op}.s native backward is not differentiable.*backend='torch'"):
        torch.autograd.grad(sum((gr * gr).sum() for gr in grads), inputs)
    # First derivatives are unchanged, and the reference differentiates twice.
    reference = f("torch", *inputs)
    for a, b in zip(grads, torch.autograd.grad((reference * reference).sum(), inputs, create_graph=True)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradgradcheck(lambda *xs: f("torch", *xs), inputs)


@pytest.mark.parametrize("resolution", [4, (8, 8, 4), 16])
def test_unpack_bitfield_refuses_a_bitfield_of_another_resolution(resolution):
    """A bitfield of 8^3 cells read as another resolution: with fewer cells (4^3, 8x8x4) unpack_bitfield returned the
    first cells' bits in the other layout, a grid of the right shape and the wrong cells; with more (16^3) torch's
    "shape '[2, 16, 16, 16]' is invalid for input of size 1024", naming neither argument."""
    from fastminerf.ops import unpack_bitfield

    bits = pack_bitfield(torch.rand(2 * 8**3), 0.5, levels=2, backend="torch")
    with pytest.raises(ValueError, match=r"bitfield must be uint8 of shape \(L, \d+\) for resolution \(\d+, \d+, \d+\), got torch.uint8 \(2, 64\)"):
        unpack_bitfield(bits, resolution)
    assert unpack_bitfield(bits, 8).shape == (2, 8, 8, 8)


@pytest.mark.parametrize("backend", [pytest.param("native", marks=pytest.mark.native), "torch"])
@pytest.mark.parametrize("levels", [0, -1, -2])
def test_pack_bitfield_names_a_level_count_below_one(backend, levels):
    """levels=0 raised ZeroDivisionError ('integer modulo by zero'); levels=-2 passed the Python check (26 % -2 == 0)
    and the native op said '`occs` length 26 is not a multiple of the -2 levels'."""
    with pytest.raises(ValueError, match=f"levels must be >= 1, got {levels}"):
        pack_bitfield(torch.rand(26), 0.5, levels, backend=backend)


@pytest.mark.parametrize("backend", [pytest.param("native", marks=pytest.mark.native), "torch"])
@pytest.mark.parametrize("params, name", [
    (dict(step_size=1e-50), "step_size"),  # 0 in float32, the marcher's type
    (dict(step_size=float("inf"), max_step_size=float("inf")), "step_size"),
    (dict(step_size=float("nan")), "step_size"),
    (dict(cone_angle=float("nan")), "cone_angle"),
    (dict(cone_angle=float("inf")), "cone_angle"),
    (dict(cone_angle=-0.1), "cone_angle"),
    (dict(cone_angle=0.01, max_step_size=float("nan")), "max_step_size"),
    (dict(step_size=0.1, max_step_size=0.05), "max_step_size"),
])
def test_march_names_a_step_parameter_that_cannot_march(backend, params, name):
    """The marcher runs in float32. A step of 1e-50 (0 in float32), an infinite step, a NaN or infinite cone angle
    and a NaN max_step_size passed march_rays' own check ('need step_size > 0, cone_angle >= 0 ...'): the reference
    returned no sample for every ray without a word, the native op refused with a RuntimeError. Both backends now
    refuse them with a ValueError naming the parameter."""
    bits = pack_bitfield(torch.ones(8**3), 0.5, levels=1, backend="torch")
    kw = dict(step_size=0.1)
    kw.update(params)
    with pytest.raises(ValueError, match=f"^{name} must be"):
        march_rays(torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]]), bits, cascade_aabbs(ROI, 1), 8,
                   backend=backend, **kw)


@pytest.mark.parametrize("backend", [pytest.param("native", marks=pytest.mark.native), "torch"])
@pytest.mark.parametrize("op", ["hash_encode salt", "mlp_head ray_indices", "ema_update indices"])
def test_an_integer_argument_given_as_floats_is_refused_not_truncated(op, backend):
    """Integer arguments were converted with .to(int) / .long(), so floats were truncated without a word: salts
    [0.5, 1.7] read identities 0 and 1, ray indices rows 0 and 1 (native; the reference failed in
    index_select), occupancy cells [3.7] cell 3. They are refused, naming the argument; integer tensors of another
    width are still converted."""
    from fastminerf.ops import ema_update, mlp_head

    name = op.split()[1]
    if op.startswith("hash_encode"):
        levels = hash_grid_levels(n_levels=2, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2,
                                  per_level_scale=2.0, identity_levels=1)
        table = torch.randn(levels.n_rows, 2)
        call = lambda idx: hash_encode(torch.rand(2, 3), table, levels, backend=backend, salt=idx)  # noqa: E731
    elif op.startswith("mlp_head"):
        w1, w2 = torch.randn(4, 3), torch.randn(2, 4)
        call = lambda idx: mlp_head(torch.randn(2, 3), torch.randn(2, 4), idx, w1, w2, torch.zeros(2),  # noqa: E731
                                    backend=backend)
    else:
        call = lambda idx: ema_update(torch.zeros(8), idx, torch.ones(2), backend=backend)  # noqa: E731
    with pytest.raises(ValueError, match=f"{name} must be integers, got torch.float32"):
        call(torch.tensor([0.5, 1.7]))
    for dtype in (torch.int32, torch.int64):
        call(torch.tensor([0, 1], dtype=dtype))


def test_a_texture_layer_out_of_range_is_named():
    """texture_lookup with a layer outside the texture's raised torch's bare 'IndexError: index out of range in self',
    naming neither layer nor the texture's layers. It is named when the lookup fails, not checked ahead: a range check
    on a CUDA tensor's values would wait for the GPU on the training path."""
    from fastminerf.ops.texture import texture_lookup

    texture, uv = torch.rand(3, 4, 4, 2), torch.rand(2, 2)
    for bad in ([0, 3], [-4, 1]):
        with pytest.raises(IndexError, match=r"layer must be in 0\.\.2 \(the texture's 3 layers\)"):
            texture_lookup(texture, torch.tensor(bad), uv)
    assert texture_lookup(texture, torch.tensor([0, 2]), uv).shape == (2, 2)


def test_the_bitfield_reference_checks_its_levels_as_pack_bitfield_does():
    """pack_bitfield_reference called directly with levels=0 raised ZeroDivisionError (pack_bitfield checked it, its
    reference did not). Both check the same (shapes only, no tensor's values)."""
    from fastminerf.ops.occupancy import pack_bitfield_reference

    with pytest.raises(ValueError, match="levels must be >= 1, got 0"):
        pack_bitfield_reference(torch.rand(16), 0.5, 0)
    with pytest.raises(ValueError, match="occs must be a float32 vector"):
        pack_bitfield_reference(torch.rand(15), 0.5, 2)


@pytest.mark.parametrize("backend", [pytest.param("native", marks=pytest.mark.native), "torch"])
@pytest.mark.parametrize("op", ["hash_encode salt", "mlp_head ray_indices", "ema_update indices", "texture_lookup layer"])
def test_a_boolean_mask_given_as_integers_is_refused_not_read_as_zeros_and_ones(op, backend):
    """A boolean mask where integers are expected (``ray_indices=counts > 0``, ``indices=occs > t``) passed the
    integer check and was read as indices 0 and 1: ema_update raised cells 0 and 1 on both backends, the native head
    read rows 0 and 1 of pre (its reference failed in index_select), salts and texture layers read identity 0 and 1.
    A mask is not a list of indices: it is refused, naming the argument and what to call."""
    from fastminerf.ops import ema_update, mlp_head
    from fastminerf.ops.texture import texture_lookup

    name = op.split()[1]
    mask = torch.tensor([True, False])
    if op.startswith("hash_encode"):
        levels = hash_grid_levels(n_levels=2, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2,
                                  per_level_scale=2.0, identity_levels=1)
        call = lambda: hash_encode(torch.rand(2, 3), torch.randn(levels.n_rows, 2), levels, backend=backend,  # noqa: E731
                                   salt=mask)
    elif op.startswith("mlp_head"):
        call = lambda: mlp_head(torch.randn(2, 3), torch.randn(2, 4), mask, torch.randn(4, 3), torch.randn(2, 4),  # noqa: E731
                                torch.zeros(2), backend=backend)
    elif op.startswith("ema_update"):
        call = lambda: ema_update(torch.zeros(8), mask, torch.ones(2), backend=backend)  # noqa: E731
    else:
        if backend == "native":
            pytest.skip("texture_lookup is plain PyTorch")
        call = lambda: texture_lookup(torch.rand(2, 4, 4, 3), mask, torch.rand(2, 2))  # noqa: E731
    with pytest.raises(ValueError, match=f"{name} must be integers, got torch.bool: .*nonzero"):
        call()


def _views(t: torch.Tensor) -> dict:
    """The same values as ``t`` (2-D) in layouts the training loop never makes: transposed storage, every other
    column of a wider buffer, a view at a storage offset, and (for one repeated row) a zero-stride expand."""
    wide = torch.zeros(t.shape[0], 2 * t.shape[1], dtype=t.dtype)
    wide[:, ::2] = t
    flat = torch.zeros(t.numel() + 5, dtype=t.dtype)
    flat[5:] = t.reshape(-1)
    return {"transposed": t.t().contiguous().t(), "stepped": wide[:, ::2], "offset": flat[5:].view(t.shape)}


@pytest.mark.native
def test_native_ops_read_views_as_their_contiguous_copies_with_the_same_gradients():
    """Researchers call the ops on views (a transposed or sliced tensor, a view into a bigger buffer, an expanded
    row): the wrappers hand the kernels contiguous copies, so every layout gives the contiguous input's outputs and
    gradients bit for bit (composite has its own test, test_composite.py)."""
    from fastminerf.ops import mlp_head

    g = torch.Generator().manual_seed(0)
    levels = hash_grid_levels(n_levels=3, n_features_per_level=2, log2_hashmap_size=8, base_resolution=4,
                              per_level_scale=1.5, identity_levels=1)
    points, table = torch.rand(40, 3, generator=g), torch.randn(levels.n_rows, 2, generator=g)
    salt = torch.randint(0, 3, (40,), generator=g)
    x, pre, w1 = torch.randn(40, 5, generator=g), torch.randn(6, 8, generator=g), torch.randn(8, 5, generator=g)
    w2, b2 = torch.randn(3, 8, generator=g), torch.randn(3, generator=g)
    rays = torch.sort(torch.randint(0, 6, (40,), generator=g)).values

    def grads(fn, *inputs):
        leaves = [t.detach().requires_grad_() for t in inputs]  # detach keeps the view's strides and offset
        out = fn(*leaves)
        out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
        return out.detach(), [t.grad for t in leaves]

    cases = {
        "hash_encode points": (lambda p: hash_encode(p, table, levels, salt=salt), points),
        "hash_encode table": (lambda t: hash_encode(points, t, levels, salt=salt), table),
        "mlp_head x": (lambda a: mlp_head(a, pre, rays, w1, w2, b2), x),
        "mlp_head pre": (lambda a: mlp_head(x, a, rays, w1, w2, b2), pre),
        "mlp_head w1": (lambda a: mlp_head(x, pre, rays, a, w2, b2), w1),
    }
    for name, (fn, t) in cases.items():
        out, (grad,) = grads(fn, t)
        for layout, view in _views(t).items():
            assert layout != "offset" or view.storage_offset() == 5
            out_v, (grad_v,) = grads(fn, view)
            assert torch.equal(out_v, out) and torch.equal(grad_v, grad), f"{name}, {layout}"
    # one row expanded to every sample: its gradient is the sum over the rows, as for the contiguous copy
    row = x[:1].detach().requires_grad_()
    mlp_head(row.expand(40, 5), pre, rays, w1, w2, b2).sum().backward()
    ref = x[:1].detach().requires_grad_()
    mlp_head(ref.expand(40, 5).contiguous(), pre, rays, w1, w2, b2).sum().backward()
    assert torch.equal(row.grad, ref.grad)
    origins = torch.randn(30, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, -3.0])
    bits = pack_bitfield(torch.rand(2 * 8**3, generator=g), 0.6, 2)
    march = lambda o: march_rays(o, torch.tensor([[0.0, 0.0, 1.0]]).expand(30, 3), bits,  # noqa: E731
                                 cascade_aabbs(ROI, 2), 8, step_size=0.05)
    expected = march(origins)
    for layout, view in _views(origins).items():
        assert all(torch.equal(a, b) for a, b in zip(march(view), expected)), layout


@pytest.mark.native
def test_composite_and_march_give_the_same_bits_on_one_and_two_threads():
    """The CPU kernels split rays over torch's threads, each ray walked by one thread: outputs (and the compositing
    gradients) are the same bits for any thread count, on more rays than one parallel chunk (512 rays)."""
    from fastminerf.ops import composite

    g = torch.Generator().manual_seed(1)
    n = 1500
    origins = torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, -3.0])
    directions = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 1.0]),
                                               dim=1)
    bits = pack_bitfield(torch.rand(2 * 8**3, generator=g), 0.5, 2)
    runs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            s = march_rays(origins, directions, bits, cascade_aabbs(ROI, 2), 8, step_size=0.05)
            sigmas = (torch.arange(s.t_starts.numel()) % 7).float().requires_grad_()
            rgbs = torch.rand(s.t_starts.numel(), 3, generator=torch.Generator().manual_seed(2)).requires_grad_()
            out = composite(sigmas, rgbs, s.t_starts, s.t_ends, s.offsets)
            (out.color.sum() + out.depth.sum() + out.opacity.sum()).backward()
            runs.append([*s, *out, sigmas.grad, rgbs.grad])
    finally:
        torch.set_num_threads(before)
    assert runs[0][3][-1] > 0
    assert all(torch.equal(a, b) for a, b in zip(*runs))
