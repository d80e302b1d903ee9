"""Hash-grid encoding: native op (C++ CPU, CUDA where present) against the pure-PyTorch reference."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fastminerf import HashGridEncoding, _native
from fastminerf.ops.hash_grid import (
    HashGridLevels,
    hash_encode,
    hash_encode_reference,
    hash_grid_levels,
    hash_grid_rows,
    per_level_scale_for,
)

# Forward: native and reference compute each corner row and weight with the same float32 operations in the same
# order (grid position rounded once, as fmaf); results agree to the last bit in practice. The tolerance only
# allows for a compiler contracting a multiply-add differently.
FWD_ATOL = 1e-7
# Table gradients: a coarse-level row collects the terms of thousands of points (|term| <= 1), summed in a
# different order (per-thread copies vs index_add); float32 rounding of such sums, with cancellation, is up
# to ~1e-5 absolute.
GRAD_TABLE_RTOL, GRAD_TABLE_ATOL = 1e-5, 5e-5
# Point gradients: sums over 16 levels x 8 corners of products scaled by the level scale (up to ~2^11), so
# absolute float32 error grows with the scale.
GRAD_POINTS_RTOL, GRAD_POINTS_ATOL = 1e-4, 1e-4

SMALL = dict(n_levels=6, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0)

pytestmark = pytest.mark.native


def _table(levels, generator, dtype=torch.float32):
    return (torch.rand(levels.n_rows, levels.n_features, generator=generator, dtype=torch.float64) * 2 - 1).to(dtype)


@pytest.mark.parametrize("features", [1, 2, 4, 8])
def test_forward_matches_reference(features, generator):
    levels = hash_grid_levels(**{**SMALL, "n_features_per_level": features})
    table = _table(levels, generator)
    points = torch.rand(3000, 3, generator=generator)
    out = hash_encode(points, table, levels, backend="native")
    ref = hash_encode_reference(points, table, levels)
    assert out.shape == (3000, levels.n_levels * features)
    torch.testing.assert_close(out, ref, atol=FWD_ATOL, rtol=0)


def test_backward_matches_reference_with_random_output_gradients(generator):
    levels = hash_grid_levels(**SMALL)
    table = _table(levels, generator)
    points = torch.rand(5000, 3, generator=generator)
    grad_out = torch.randn(5000, levels.n_levels * levels.n_features, generator=generator)
    grads = {}
    for backend in ("native", "torch"):
        t = table.clone().requires_grad_(True)
        p = points.clone().requires_grad_(True)
        hash_encode(p, t, levels, backend=backend).backward(grad_out)
        grads[backend] = (t.grad, p.grad)
    torch.testing.assert_close(grads["native"][0], grads["torch"][0], rtol=GRAD_TABLE_RTOL, atol=GRAD_TABLE_ATOL)
    torch.testing.assert_close(grads["native"][1], grads["torch"][1], rtol=GRAD_POINTS_RTOL, atol=GRAD_POINTS_ATOL)
    assert grads["native"][0].abs().sum() > 0 and grads["native"][1].abs().sum() > 0


@pytest.mark.parametrize("identity_levels", [1, 3, 6])
def test_identity_levels_match_reference_forward_and_backward(identity_levels, generator):
    # The finest levels hash the per-point salt (identity id): native and reference agree on the function and both
    # gradients, and only the salted levels depend on the salt.
    levels = hash_grid_levels(**SMALL, identity_levels=identity_levels)
    assert levels.salted_from == SMALL["n_levels"] - identity_levels
    table = _table(levels, generator)
    n = 4000
    points = torch.rand(n, 3, generator=generator)
    salt = torch.randint(0, 1000, (n,), generator=generator)
    grad_out = torch.randn(n, levels.n_levels * levels.n_features, generator=generator)
    outs, grads = {}, {}
    for backend in ("native", "torch"):
        t = table.clone().requires_grad_(True)
        p = points.clone().requires_grad_(True)
        outs[backend] = hash_encode(p, t, levels, backend=backend, salt=salt)
        outs[backend].backward(grad_out)
        grads[backend] = (t.grad, p.grad)
    torch.testing.assert_close(outs["native"], outs["torch"], atol=FWD_ATOL, rtol=0)
    torch.testing.assert_close(grads["native"][0], grads["torch"][0], rtol=GRAD_TABLE_RTOL, atol=GRAD_TABLE_ATOL)
    torch.testing.assert_close(grads["native"][1], grads["torch"][1], rtol=GRAD_POINTS_RTOL, atol=GRAD_POINTS_ATOL)
    other = hash_encode(points, table, levels, salt=salt + 1)
    split = levels.salted_from * levels.n_features
    torch.testing.assert_close(other[:, :split], outs["native"][:, :split].detach(), atol=0, rtol=0)
    assert (other[:, split:] - outs["native"][:, split:].detach()).abs().mean() > 0.1
    # salt 0 on a level that would be dense still hashes (unlike the plain grid)
    rows = hash_grid_rows(points[:50], levels, torch.zeros(50, dtype=torch.int64))
    plain = hash_grid_rows(points[:50], hash_grid_levels(**SMALL))
    dense = [level for level in range(levels.salted_from, levels.n_levels) if levels.is_dense(level)]
    assert all(not torch.equal(rows[level], plain[level]) for level in dense)


def test_gradcheck_float64(generator):
    levels = hash_grid_levels(n_levels=3, n_features_per_level=2, log2_hashmap_size=6, base_resolution=3,
                              per_level_scale=1.7)
    assert not all(levels.is_dense(l) for l in range(3)), "the tiny grid must exercise the hash path too"
    table = _table(levels, generator, torch.float64).requires_grad_(True)
    # Keep points away from cell borders so that finite differences do not cross a cell (where the
    # encoding is only continuous, not differentiable).
    points = (torch.rand(12, 3, generator=generator, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    fn = lambda p, t: hash_encode(p, t, levels, backend="native")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (points, table), eps=1e-7, atol=1e-6)


def test_only_requested_gradients_are_computed(generator):
    levels = hash_grid_levels(**SMALL)
    table = _table(levels, generator).requires_grad_(True)
    points = torch.rand(100, 3, generator=generator)  # no grad wanted for points
    hash_encode(points, table, levels).sum().backward()
    assert table.grad is not None and points.grad is None


def test_dense_and_hashed_levels_follow_tiny_cuda_nn():
    # instant-ngp defaults: L=16, F=2, T=2^19, N_min=16, finest 2048
    b = per_level_scale_for(16, 2048, 16)
    levels = hash_grid_levels(16, 2, 19, 16, b)
    assert levels.resolutions[0] == 16  # s_0 = 16 - 1 = 15, R = ceil(15) + 1
    assert levels.level_size(0) == 16**3  # dense, already a multiple of 8
    dense = [levels.is_dense(l) for l in range(16)]
    assert dense[0] and not dense[-1]
    assert dense == sorted(dense, reverse=True)  # dense levels first, then hashed ones
    for l in range(16):
        assert levels.level_size(l) == min((levels.resolutions[l] ** 3 + 7) // 8 * 8, 1 << 19)
    assert abs(levels.scales[-1] - 2047) < 1e-2  # finest scale = 2048 - 1
    # A level whose R^3 just exceeds its table uses the hash (here: R^3 > 2^12)
    small = hash_grid_levels(2, 2, 12, 16, 2.0)
    assert small.is_dense(0) and not small.is_dense(1)


def test_cell_borders_and_points_outside_the_box(generator):
    # base_resolution 3, b = 2: scales 2, 5, 11, 23, so x = 0.25 and 0.75 sit exactly on a vertex (p integer).
    levels = hash_grid_levels(n_levels=4, n_features_per_level=2, log2_hashmap_size=8, base_resolution=3,
                              per_level_scale=2.0)
    assert levels.scales[:2] == (2.0, 5.0)
    table = _table(levels, generator)
    lattice = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
    grid = torch.stack(torch.meshgrid(lattice, lattice, lattice, indexing="ij"), -1).reshape(-1, 3)
    outside = torch.rand(500, 3, generator=generator) * 4 - 1.5  # in [-1.5, 2.5]^3: wraps through the hash
    # Far out: grid positions beyond 2^31 (a float cast to int would be undefined there), wrapped to 32 bits alike.
    far = (torch.rand(100, 3, generator=generator) * 2 - 1) * 1e9
    points = torch.cat([grid, outside, far])
    torch.testing.assert_close(hash_encode(points, table, levels), hash_encode_reference(points, table, levels),
                               atol=FWD_ATOL, rtol=0)
    # Continuity across a vertex: just below and just above x = 0.25 give (nearly) the same features.
    eps = 1e-6
    below = hash_encode(torch.tensor([[0.25 - eps, 0.4, 0.6]]), table, levels)
    above = hash_encode(torch.tensor([[0.25 + eps, 0.4, 0.6]]), table, levels)
    torch.testing.assert_close(below, above, atol=1e-3, rtol=0)


def test_gather_rows_reproduce_the_encoding(generator):
    """hash_grid_rows (used by the benchmark's gather bound) names exactly the rows the encoding reads."""
    levels = hash_grid_levels(**SMALL)
    table = _table(levels, generator)
    points = torch.rand(200, 3, generator=generator)
    rows = hash_grid_rows(points, levels)  # (L, N, 8)
    assert rows.shape == (levels.n_levels, 200, 8)
    # a table that is zero except one row: only points whose corners include that row get non-zero features
    target = int(rows[2, 7, 3])
    one_hot = torch.zeros_like(table)
    one_hot[target] = 1.0
    features = hash_encode(points, one_hot, levels).view(200, levels.n_levels, levels.n_features)
    touched = (rows == target).any(-1).T  # (N, L)
    assert torch.equal(features[..., 0] != 0, touched & (features[..., 0] != 0))
    assert features[7, 2, 0] > 0


def test_module_backends_agree_and_params_layout(generator):
    enc_native = HashGridEncoding(**SMALL, backend="native")
    enc_torch = HashGridEncoding(**SMALL, backend="torch")
    enc_torch.load_state_dict(enc_native.state_dict())
    assert enc_native.params.shape == (enc_native.levels.n_rows * 2,)
    points = torch.rand(1000, 3, generator=generator)
    torch.testing.assert_close(enc_native(points), enc_torch(points), atol=FWD_ATOL, rtol=0)
    assert enc_native.output_dim == 12
    # tiny-cuda-nn's flat parameter vector loads as it is; a wrong size names both sizes
    flat = torch.randn(enc_native.params.numel(), generator=generator).half()
    enc_native.load_tcnn_params(flat)
    torch.testing.assert_close(enc_native.params, flat.float())
    with pytest.raises(ValueError, match="tiny-cuda-nn parameters have 7 values"):
        enc_native.load_tcnn_params(torch.zeros(7))
    with pytest.raises(ValueError, match="unknown backend"):
        HashGridEncoding(**SMALL, backend="fast")


def test_bad_inputs_give_clear_errors(generator):
    levels = hash_grid_levels(**SMALL)
    table = _table(levels, generator)
    with pytest.raises(ValueError, match=r"points must have shape \(N, 3\)"):
        hash_encode(torch.rand(4, 2), table, levels)
    with pytest.raises(ValueError, match="table must have shape"):
        hash_encode(torch.rand(4, 3), table[:-1], levels)
    with pytest.raises(ValueError, match="dtype"):
        hash_encode(torch.rand(4, 3, dtype=torch.float64), table, levels)
    with pytest.raises(ValueError, match="n_features_per_level must be 1, 2, 4 or 8"):
        hash_grid_levels(n_features_per_level=3)
    # the op itself also checks what reaches it
    no_salt = torch.empty(0, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="must have shape"):
        _native.ops().hash_encode_forward(torch.rand(4, 3), table[:-1], levels.offsets, levels.resolutions,
                                          levels.scales, no_salt, levels.salted_from)
    salted = hash_grid_levels(**SMALL, identity_levels=2)
    with pytest.raises(ValueError, match="salt must have shape"):
        hash_encode(torch.rand(4, 3), _table(salted, generator), salted)
    with pytest.raises(RuntimeError, match="`salt` must be int32 of shape"):
        _native.ops().hash_encode_forward(torch.rand(4, 3), _table(salted, generator), salted.offsets,
                                          salted.resolutions, salted.scales, no_salt, salted.salted_from)
    with pytest.raises(ValueError, match="identity_levels must be in 0..n_levels"):
        hash_grid_levels(**SMALL, identity_levels=7)


def test_import_compiles_nothing_and_loads_native_lazily():
    code = "import sys, fastminerf; print('fastminerf._C' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_native_build_raises_one_clear_error(monkeypatch):
    monkeypatch.setattr(_native, "_module", None)
    monkeypatch.setattr(_native, "_error", "ImportError: No module named 'fastminerf._C'")
    with pytest.raises(_native.NativeExtensionError, match="make install"):
        hash_encode(torch.rand(2, 3), torch.zeros(hash_grid_levels(**SMALL).n_rows, 2), hash_grid_levels(**SMALL))
    # the reference still works without any compiled code
    levels = hash_grid_levels(**SMALL)
    assert hash_encode(torch.rand(2, 3), torch.zeros(levels.n_rows, 2), levels, backend="torch").shape == (2, 12)


@pytest.mark.cuda
def test_cuda_native_matches_cpu(generator):
    if not _native.has_cuda():
        pytest.fail("a CUDA device is present but the native extension was built without CUDA kernels")
    levels = hash_grid_levels(**SMALL)
    table = _table(levels, generator)
    points = torch.rand(4096, 3, generator=generator)
    grad_out = torch.randn(4096, levels.n_levels * 2, generator=generator)
    results = {}
    for device in ("cpu", "cuda"):
        t = table.to(device).requires_grad_(True)
        p = points.to(device).requires_grad_(True)
        out = hash_encode(p, t, levels, backend="native")
        out.backward(grad_out.to(device))
        results[device] = [x.detach().cpu() for x in (out, t.grad, p.grad)]
    torch.testing.assert_close(results["cuda"][0], results["cpu"][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(results["cuda"][1], results["cpu"][1], rtol=GRAD_TABLE_RTOL, atol=GRAD_TABLE_ATOL)
    torch.testing.assert_close(results["cuda"][2], results["cpu"][2], rtol=GRAD_POINTS_RTOL, atol=GRAD_POINTS_ATOL)


@pytest.mark.tcnn
def test_tiny_cuda_nn_parameters_load_into_ours(generator):
    import tinycudann as tcnn

    ours = HashGridEncoding(16, 2, 19, 16, per_level_scale_for(16, 2048, 16), backend="native").cuda()
    theirs = tcnn.Encoding(3, ours.tcnn_config(), dtype=torch.float32).cuda()
    assert theirs.params.numel() == ours.params.numel(), "parameter layouts differ"
    with torch.no_grad():
        theirs.params.uniform_(-1, 1, generator=None)
    ours.load_tcnn_params(theirs.params.detach())
    points = torch.rand(1 << 14, 3, device="cuda")
    # tiny-cuda-nn computes level scales with exp2f on the GPU (<= 2 ulp): features agree to float precision
    torch.testing.assert_close(ours(points), theirs(points).float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("args,name", [((16, 2048, 0), "n_levels"), ((16, 2048, -3), "n_levels"),
                                       ((16, 8, 4), "finest_resolution"), ((0, 2048, 16), "base_resolution")])
def test_per_level_scale_for_refuses_what_has_no_growth_factor(args, name):
    """``per_level_scale_for(16, 2048, 0)`` returned 0.0078 (a 'growth' below 1) and (0, 2048, 16) inf with a numpy
    divide-by-zero warning; a finest resolution under the base one gave a factor below 1 that hash_grid_levels then
    refused as 'base_resolution must be >= 1 and per_level_scale >= 1', naming neither argument the caller gave."""
    with pytest.raises(ValueError, match=name):
        per_level_scale_for(*args)
    assert per_level_scale_for(16, 16, 1) == 1.0 and per_level_scale_for(16, 16, 4) == 1.0


def test_a_float16_encoding_on_the_native_kernels_names_the_dtype_and_what_to_do():
    """HashGridEncoding(...).half() (or a float16 model) failed in the compiled kernels with "fastminerf: `points`
    must be float32 or float64, got Half", a RuntimeError that named neither the encoding nor what to do about it.
    The native path refuses it first, naming the dtype and the two ways out (float32, or the torch backend, which
    runs float16)."""
    enc = HashGridEncoding(n_levels=4, log2_hashmap_size=12, backend="native").half()
    with pytest.raises(ValueError, match=r"float16.*\.float\(\).*backend='torch'"):
        enc(torch.rand(8, 3))
    torch_enc = HashGridEncoding(n_levels=4, log2_hashmap_size=12, backend="torch").half()
    assert torch_enc(torch.rand(8, 3)).dtype == torch.float16  # the way out the message names


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.5])
def test_hash_grid_levels_names_a_per_level_scale_that_is_not_a_growth(scale):
    """per_level_scale NaN or inf passed the check (NaN < 1 is False) and failed computing the resolutions with
    numpy's 'cannot convert float NaN to integer', which names no argument."""
    with pytest.raises(ValueError, match=f"per_level_scale must be a finite number >= 1, got {scale}"):
        hash_grid_levels(n_levels=4, per_level_scale=scale)


def test_hash_grid_levels_refuses_a_resolution_the_kernels_cannot_hold():
    """n_levels=29 from 16 with the default factor 2 makes the finest level's resolution 2^32 + 1, which the native
    kernels hold as uint32 (cuda/src/op_utils.h make_grid_meta): it became 1, the level was read as a dense 1^3 grid,
    and the native encoding of that level differed from the reference (which hashes it) without a word. The
    levels refuse a resolution above 2^32 - 1, naming the level and the arguments that make it; 28 levels
    (finest 2^31 + 1) still encode the same on both backends."""
    with pytest.raises(ValueError, match=r"level 28.s resolution 4294967297 .*n_levels=29.*per_level_scale"):
        hash_grid_levels(n_levels=29, n_features_per_level=2, log2_hashmap_size=10, base_resolution=16,
                         per_level_scale=2.0)
    with pytest.raises(ValueError, match=r"level 0's resolution"):
        hash_grid_levels(n_levels=1, base_resolution=2**32)
    levels = hash_grid_levels(n_levels=28, n_features_per_level=2, log2_hashmap_size=10, base_resolution=16,
                              per_level_scale=2.0)
    assert levels.resolutions[-1] == 2**31 + 1
    if _native.available():
        g = torch.Generator().manual_seed(0)
        points = torch.rand(50, 3, generator=g, dtype=torch.float64)
        table = torch.randn(levels.n_rows, 2, generator=g, dtype=torch.float64)
        torch.testing.assert_close(hash_encode(points, table, levels), hash_encode(points, table, levels, backend="torch"))


def test_native_encoding_refuses_hand_made_levels_whose_resolution_does_not_fit_uint32():
    """hash_grid_levels refuses a level of resolution 2^32 and beyond, but HashGridLevels can be made by hand, and
    the native kernels' own check (cuda/src/op_utils.h make_grid_meta, shared by the CPU and CUDA ops) cast such a
    resolution to uint32 without a word: 2^32 + 1 became 1, a dense 1^3 level, and the encoding differed from the
    reference's. The native op refuses it, naming the level."""
    levels = HashGridLevels(n_features=2, offsets=(0, 64), resolutions=(2**32 + 1,), scales=(float(2**32),))
    points = torch.rand(4, 3, dtype=torch.float32)
    table = torch.zeros(64, 2, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"level 0 resolution must be in 1\.\.4294967295.*got 4294967297"):
        hash_encode(points, table, levels)
