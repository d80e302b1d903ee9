"""The dataset reader: the shared layout (DATASET.md), its validation errors, lazy loading with a bounded cache."""

from __future__ import annotations

import inspect
import json
import math
import re
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Dict, List, Optional

import imageio.v3 as iio
import numpy as np
import pytest

from fastminerf.config import DataConfig
from fastminerf.data import DatasetError, FrameCache, load_dataset
from fastminerf.data.layout import find_identity_dirs, read_transforms
from fastminerf.data.synth import generate

W, H = 20, 16  # frame size of the hand-made folders: not square, so that width/height mix-ups show


def _c2w(tz: float = 3.0) -> List[List[float]]:
    return [[1.0, 0.0, 0.0, 0.1], [0.0, 1.0, 0.0, -0.2], [0.0, 0.0, 1.0, tz], [0.0, 0.0, 0.0, 1.0]]


def _write_image(path: Path, rng: np.random.Generator, w: int = W, h: int = H, channels: int = 3) -> np.ndarray:
    img = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, img)
    return img


def make_identity(
    root: Path,
    name: str,
    n_frames: int = 3,
    expr_len: int = 4,
    seed: int = 0,
    nerface: bool = False,
    split: str = "train",
    meta_extra: Optional[Dict[str, object]] = None,
) -> Path:
    """Write a small identity folder with random frames; ``nerface`` mimics a NeRFace subject folder
    (paths without extension, ``camera_angle_x`` only, a ``bbox`` per frame)."""
    rng = np.random.default_rng(seed)
    d = root / name
    frames = []
    for i in range(n_frames):
        rel = f"./{split}/f_{i:04d}"
        _write_image(d / (rel + ".png"), rng)
        frame = {
            "file_path": rel if nerface else rel + ".png",
            "transform_matrix": _c2w(3.0 + 0.1 * i),
            "expression": [float(v) for v in rng.normal(size=expr_len)],
        }
        if nerface:
            frame["bbox"] = [0.25, 0.75, 0.2, 0.8]
        frames.append(frame)
    meta: Dict[str, object] = {"frames": frames}
    if nerface:
        meta["camera_angle_x"] = 0.8
    else:
        meta["intrinsics"] = [25.0, 25.0, W / 2, H / 2]
    meta.update(meta_extra or {})
    d.mkdir(parents=True, exist_ok=True)
    (d / f"transforms_{split}.json").write_text(json.dumps(meta))
    return d


def _edit(d: Path, fn, split: str = "train") -> Path:
    f = d / f"transforms_{split}.json"
    meta = json.loads(f.read_text())
    fn(meta)
    f.write_text(json.dumps(meta))
    return f


def _assert_located(err: DatasetError, file: Path, frame: Optional[int], key: Optional[str]) -> None:
    """The error names the file, the frame and the key, in its attributes and in its message."""
    msg = str(err)
    assert err.file == str(file) and str(file) in msg, msg
    assert err.frame == frame, msg
    if frame is not None:
        assert f"frame {frame}" in msg, msg
    assert err.key == key, msg
    if key is not None:
        assert f"key '{key}'" in msg, msg


# ------------------------------------------------------------------------------------------------------------
# Loading


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, n_identities=2, n_frames=6, size=24, seed=3)
    return root


def test_loads_a_synth_set_with_every_key(synth_root: Path):
    data = load_dataset(synth_root, splits=("train", "val", "novel"))
    assert data.identities == ["id000", "id001"]
    assert data.expression_dim == 12 and data.expression_names is not None and data.expression_names[0] == "jaw_open"
    train = data.table("train")
    assert (train.width, train.height) == (24, 24)
    assert len(train) == 2 * 5 and data.num_frames("val") == 2 and data.num_frames("novel") == 2
    assert train.identity.tolist() == [0] * 5 + [1] * 5
    assert train.frame_in_identity.tolist() == [0, 1, 2, 3, 4] * 2
    # The table holds exactly what the JSON says.
    meta = json.loads((synth_root / "id001" / "transforms_train.json").read_text())
    b = 5 + 2  # identity 1, frame 2
    assert np.array_equal(train.c2w[b], np.asarray(meta["frames"][2]["transform_matrix"], np.float32))
    assert np.array_equal(train.expression[b], np.asarray(meta["frames"][2]["expression"], np.float32))
    assert np.array_equal(train.intrinsics[b], np.asarray(meta["intrinsics"], np.float32))
    assert np.array_equal(train.bbox[b], np.asarray(meta["frames"][2]["bbox"], np.float32)) and train.has_bbox.all()
    assert train.explicit_near_far.all() and train.near[b] == np.float32(meta["near"]) and train.far[b] == np.float32(meta["far"])
    assert np.array_equal(train.aabb[b], np.asarray(meta["aabb"], np.float32))
    assert train.bbox_or_none(b) == tuple(float(v) for v in np.asarray(meta["frames"][2]["bbox"], np.float32))
    # Pixels: uint8 frames, bool masks, the background from bg.png.
    img = data.image("train", b)
    assert img.dtype == np.uint8 and img.shape == (24, 24, 3)
    assert np.array_equal(img, iio.imread(synth_root / "id001" / meta["frames"][2]["file_path"]))
    mask = data.mask("train", b)
    assert mask is not None and mask.dtype == np.bool_ and 0 < mask.sum() < mask.size
    assert np.array_equal(data.background(1), iio.imread(synth_root / "id001" / "bg.png"))


def test_root_and_identity_folders_give_the_same_dataset(synth_root: Path):
    by_root = load_dataset(synth_root)
    by_dirs = load_dataset([synth_root / "id001", synth_root / "id000"])
    assert by_root.identities == by_dirs.identities == ["id000", "id001"]
    assert np.array_equal(by_root.table("train").c2w, by_dirs.table("train").c2w)
    assert by_root.splits == ("train",)
    all_splits = load_dataset(synth_root, splits=None)
    assert set(all_splits.splits) == {"train", "val", "novel"}


def test_nerface_subject_folder_loads_as_is(tmp_path: Path):
    d = make_identity(tmp_path, "person_1", n_frames=2, expr_len=76, nerface=True)
    data = load_dataset(d)
    t = data.table("train")
    f = 0.5 * W / math.tan(0.4)  # fx from camera_angle_x = 0.8 rad
    assert np.allclose(t.intrinsics[0], [f, f, W / 2, H / 2], rtol=1e-6)
    assert t.image_paths[0] == str(d / "train" / "f_0000.png")
    assert t.has_bbox.all() and np.allclose(t.bbox[0], [0.25, 0.75, 0.2, 0.8])
    assert data.expression_dim == 76
    # No near/far in the file: bounds come from the default aabb (cube of side 3): camera at z = 3 (+0.1 x, -0.2 y).
    assert not t.explicit_near_far.any()
    assert np.allclose(t.aabb[0], [-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
    assert t.near[0] == pytest.approx(1.5, abs=1e-6)
    assert data.image("train", 1).shape == (H, W, 3)
    assert np.all(data.background(0) == 255)  # no bg.png: white


def test_nerface_fractional_principal_point(tmp_path: Path):
    d = make_identity(tmp_path, "p", meta_extra={"intrinsics": [30.0, 31.0, 0.5, 0.25]})
    t = load_dataset(d).table("train")
    assert np.allclose(t.intrinsics[0], [30.0, 31.0, 0.5 * W, 0.25 * H])


@pytest.mark.parametrize("intrinsics", [[1.65, 1.65, 0.5, 0.5], [1.65 / W, 1.65 / H, 0.5, 0.5]])
def test_intrinsics_normalised_by_the_image_size_are_refused(tmp_path: Path, intrinsics):
    # [fx/w, fy/h, cx/w, cy/h], another common way to write a camera: the principal point was read as fractions
    # (NeRFace's) and the focal length as 1.65 pixels, a field of view of 160+ degrees, trained without a word
    d = make_identity(tmp_path, "p", meta_extra={"intrinsics": intrinsics})
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, d / "transforms_train.json", None, "intrinsics")
    assert "field of view" in str(info.value) and "pixels" in str(info.value)
    wide = 0.5 * W / math.tan(math.radians(75))  # a 150-degree lens still loads
    assert load_dataset(make_identity(tmp_path, "q", meta_extra={"intrinsics": [wide, wide, W / 2, H / 2]}))


def test_rgba_frames_composite_over_the_background(tmp_path: Path):
    d = make_identity(tmp_path, "a", n_frames=1)
    rng = np.random.default_rng(5)
    bg = _write_image(d / "bg.png", rng)
    rgba = _write_image(d / "train" / "f_0000.png", rng, channels=4)
    img = load_dataset(d).image("train", 0)
    a = rgba[..., 3:].astype(np.float64) / 255.0
    # The exact blend is never halfway between two integers (that would need 2 * 255 * k + 255 = 2 * X), so
    # rounding it in float64 gives the reader's integer result exactly.
    expected = np.rint(rgba[..., :3] * a + bg * (1.0 - a)).astype(np.uint8)
    assert np.array_equal(img, expected)


# ------------------------------------------------------------------------------------------------------------
# Validation: each problem names the file, the frame and the key


def test_missing_image(tmp_path: Path):
    d = make_identity(tmp_path, "a")
    (d / "train" / "f_0001.png").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, d / "transforms_train.json", 1, "file_path")
    assert "f_0001.png" in str(info.value)


def test_missing_image_without_extension_lists_what_was_tried(tmp_path: Path):
    d = make_identity(tmp_path, "a", nerface=True)
    (d / "train" / "f_0002.png").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, d / "transforms_train.json", 2, "file_path")
    assert ".png" in str(info.value) and ".jpg" in str(info.value)


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("transform_matrix", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3]], "shape (4, 4)"),
        ("transform_matrix", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.1, -0.2, 3, 1]], "transposed"),
        ("transform_matrix", [[1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "numbers"),
        ("transform_matrix", [[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "non-finite"),
        ("expression", [0.0, float("inf"), 0.0, 0.0], "non-finite"),
        ("expression", [0.0, 1.0], "frame 0 has 4"),
        ("expression", [[0.0, 1.0], [2.0, 3.0]], "flat list"),
        ("bbox", [0.5, 0.2, 0.0, 1.0], "y0 < y1"),
        ("bbox", [0.0, 1.0, 0.0], "shape (4,)"),
        ("file_path", 7, "relative path"),
    ],
)
def test_bad_frame_values(tmp_path: Path, key, value, needle):
    d = make_identity(tmp_path, "a")
    f = _edit(d, lambda m: m["frames"][1].__setitem__(key, value))
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, f, 1, key)
    assert needle in str(info.value)


@pytest.mark.parametrize("key, frame, value", [
    ("transform_matrix", 1, [[1, 0, 0, 1e39], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1]]),
    ("expression", 1, [0.0, -1e39, 0.0, 0.0]),
    ("intrinsics", None, [1e39, 1e39, 10.0, 8.0]),
])
def test_numbers_beyond_float32_are_refused_not_stored_as_infinity(tmp_path: Path, key, frame, value):
    """A value finite in JSON but beyond float32's range (1e39: a hand edit, another tool's overflow) passed the
    non-finite check, which looked at float64, then became inf in the float32 frame table with numpy's 'overflow
    encountered in cast' warning printed, and training went on with an infinite expression, camera or focal length."""
    d = make_identity(tmp_path, "a")
    f = _edit(d, lambda m: (m["frames"][frame] if frame is not None else m).__setitem__(key, value))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing printed on the way
        with pytest.raises(DatasetError) as info:
            load_dataset(d)
    _assert_located(info.value, f, frame, key)
    assert "float32" in str(info.value)


def test_a_camera_facing_away_from_the_head_is_refused(tmp_path: Path):
    # A camera-to-head matrix in OpenCV's convention (looking down +z, y down: a tracker's usual output) loaded and
    # trained without a word: every ray marched away from the head ('trained 20 steps in 0.0 s', a flat grey model).
    d = make_identity(tmp_path, "a")
    opencv = (np.array(_c2w(3.1)) @ np.diag([1.0, -1.0, -1.0, 1.0])).tolist()
    f = _edit(d, lambda m: m["frames"][1].__setitem__("transform_matrix", opencv))
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, f, 1, "transform_matrix")
    assert "behind the camera" in str(info.value) and "OpenCV" in str(info.value)
    # a camera inside the head box (a dataset in other units than the default box's) still loads
    _edit(d, lambda m: m["frames"][1].__setitem__("transform_matrix", _c2w(0.5)))
    assert load_dataset(d).num_frames("train") == 3


@pytest.mark.parametrize("key", ["file_path", "transform_matrix", "expression"])
def test_missing_required_frame_key(tmp_path: Path, key):
    d = make_identity(tmp_path, "a")
    f = _edit(d, lambda m: m["frames"][2].pop(key))
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, f, 2, key)
    assert "missing required key" in str(info.value)


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("intrinsics", [25.0, float("inf"), 10.0, 8.0], "non-finite"),
        ("intrinsics", [25.0, 25.0, 10.0], "shape (4,)"),
        ("intrinsics", [-25.0, 25.0, 10.0, 8.0], "positive"),
        ("aabb", [-1, -1, -1, 1, 1], "shape (6,)"),
        ("aabb", [1, -1, -1, -1, 1, 1], "min < max"),
        ("near", 2.0, "together"),
        ("camera_angle_x", 4.0, "below pi"),
        ("expression_names", ["a", "b"], "2 names"),
        ("expression_space", 7, "non-empty string"),
        ("w", 21, "image"),
        ("h", 17.5, "whole number"),
    ],
)
def test_bad_top_level_values(tmp_path: Path, key, value, needle):
    d = make_identity(tmp_path, "a")
    f = _edit(d, lambda m: m.__setitem__(key, value))
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    expected_key = "far" if key == "near" else key
    _assert_located(info.value, f, None, expected_key)
    assert needle in str(info.value)


def test_missing_camera(tmp_path: Path):
    d = make_identity(tmp_path, "a")
    f = _edit(d, lambda m: m.pop("intrinsics"))
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, f, None, "intrinsics")
    assert "camera_angle_x" in str(info.value)


def test_empty_split(tmp_path: Path):
    d = make_identity(tmp_path, "a")
    f = _edit(d, lambda m: m.__setitem__("frames", []))
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, f, None, "frames")
    assert "empty split" in str(info.value)


@pytest.mark.parametrize(
    "text, needle, frame, key",
    [
        ('{"frames": [', "not valid JSON", None, None),
        ("[1, 2, 3]", "JSON object at the top level", None, None),
        ('{"intrinsics": [1, 1, 1, 1]}', "missing required key", None, "frames"),
        ('{"intrinsics": [1, 1, 1, 1], "frames": {"a": 1}}', "list of frames", None, "frames"),
        ('{"intrinsics": [1, 1, 1, 1], "frames": [42]}', "JSON object", 0, None),
    ],
)
def test_malformed_or_unknown_json(tmp_path: Path, text, needle, frame, key):
    d = make_identity(tmp_path, "a")
    f = d / "transforms_train.json"
    f.write_text(text)
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, f, frame, key)
    assert needle in str(info.value)


def test_expression_length_differs_between_identities(tmp_path: Path):
    make_identity(tmp_path, "alice", expr_len=4)
    bob = make_identity(tmp_path, "bob", expr_len=6)
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path)
    _assert_located(info.value, bob / "transforms_train.json", 0, "expression")
    msg = str(info.value)
    assert "'bob'" in msg and "'alice'" in msg and "6" in msg and "4" in msg


def test_expression_space_differs_between_identities(tmp_path: Path):
    alice = make_identity(tmp_path, "alice")
    bob = make_identity(tmp_path, "bob")
    carol = make_identity(tmp_path, "carol")  # says nothing: unknown, never refused
    _edit(alice, lambda m: m.__setitem__("expression_space", "pca4-aaaa"))
    assert load_dataset(tmp_path).expression_space == "pca4-aaaa"
    _edit(bob, lambda m: m.__setitem__("expression_space", "pca4-bbbb"))
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path)
    _assert_located(info.value, bob / "transforms_train.json", None, "expression_space")
    msg = str(info.value)
    assert "'bob'" in msg and "'alice'" in msg and "pca4-aaaa" in msg and "pca4-bbbb" in msg and "--basis" in msg
    assert load_dataset([alice, carol]).expression_space == "pca4-aaaa"
    assert load_dataset(carol).expression_space is None


def test_image_size_differs_between_identities_each_at_its_own_size(tmp_path: Path):
    """Identities of different image sizes load together (each frame at its file's size); a frame of another size
    than its own file's first image is still refused when decoded, naming that file, the frame and both sizes."""
    make_identity(tmp_path, "alice")
    bob = make_identity(tmp_path, "bob")
    _write_image(bob / "train" / "f_0000.png", np.random.default_rng(1), w=W + 2)
    data = load_dataset(tmp_path)
    table = data.table("train")
    assert [table.size_of(b) for b in range(len(table))] == [(W, H)] * 3 + [(W + 2, H)] * 3
    assert data.image("train", 3).shape == (H, W + 2, 3) and data.image("train", 0).shape == (H, W, 3)
    with pytest.raises(DatasetError) as info:
        data.image("train", 4)
    _assert_located(info.value, bob / "transforms_train.json", 1, "file_path")
    assert f"{W + 2}x{H}" in str(info.value) and f"{W}x{H}" in str(info.value)


def test_image_size_differs_within_a_split_fails_when_decoded(tmp_path: Path):
    d = make_identity(tmp_path, "a")
    _write_image(d / "train" / "f_0002.png", np.random.default_rng(1), h=H + 1)
    data = load_dataset(d)  # only the first image's header is read eagerly
    data.image("train", 1)
    with pytest.raises(DatasetError) as info:
        data.image("train", 2)
    _assert_located(info.value, d / "transforms_train.json", 2, "file_path")
    assert f"{W}x{H + 1}" in str(info.value)


def test_unreadable_image_fails_when_decoded(tmp_path: Path):
    d = make_identity(tmp_path, "a")
    (d / "train" / "f_0001.png").write_bytes(b"not a png at all")
    data = load_dataset(d)
    with pytest.raises(DatasetError) as info:
        data.image("train", 1)
    _assert_located(info.value, d / "transforms_train.json", 1, "file_path")
    assert "cannot read image" in str(info.value)


def test_missing_split_and_paths(tmp_path: Path):
    d = make_identity(tmp_path, "a")
    with pytest.raises(DatasetError) as info:
        load_dataset(d, splits=("train", "val"))
    assert info.value.file == str(d / "transforms_val.json") and "no split 'val'" in str(info.value)
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path / "nowhere")
    assert "no such file" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path / "empty")
    assert "no identity folders" in str(info.value)


def test_duplicate_identity_names(tmp_path: Path):
    make_identity(tmp_path / "root1", "same")
    make_identity(tmp_path / "root2", "same")
    with pytest.raises(DatasetError) as info:
        load_dataset([tmp_path / "root1", tmp_path / "root2"])
    assert "identity name 'same'" in str(info.value)


def test_read_transforms_directly(tmp_path: Path):
    d = make_identity(tmp_path, "a", n_frames=2, split="test")
    meta = read_transforms(d / "transforms_test.json")
    assert meta.split == "test" and len(meta) == 2 and meta.expression_dim == 4
    assert find_identity_dirs(tmp_path) == [d]


# ------------------------------------------------------------------------------------------------------------
# Lazy loading


def test_frames_are_decoded_lazily_into_a_bounded_cache(tmp_path: Path):
    d = make_identity(tmp_path, "a", n_frames=6)
    data = load_dataset(d, cache_frames=2)
    assert len(data.cache) == 0 and data.cache.misses == 0  # nothing decoded at load
    for i in range(6):
        img = data.image("train", i)
        assert np.array_equal(img, iio.imread(d / "train" / f"f_{i:04d}.png"))
        assert len(data.cache) <= 2
    assert data.cache.misses == 6 and len(data.cache) == 2
    assert ("image", "train", 5) in data.cache and ("image", "train", 0) not in data.cache
    data.image("train", 5)
    assert data.cache.hits == 1
    with pytest.raises(ValueError):
        data.image("train", 5)[0, 0, 0] = 1  # cached frames are read-only


def test_cache_frames_counts_frames_not_images_and_masks(tmp_path: Path):
    """data.cache_frames says frames: a frame's image and its mask count as one, so a split of masked frames keeps
    as many frames as one without masks (it kept half as many: 4,096 images and masks were 2,048 frames)."""
    from tests.test_rays import _identity

    _identity(tmp_path, "m", 4, seed=3, mask=True)
    data = load_dataset(tmp_path, cache_frames=2)
    for i in range(4):
        data.image("train", i), data.mask("train", i)
    held = set(data.cache._items)
    assert {k for k in held if k[0] == "image"} == {("image", "train", 2), ("image", "train", 3)}
    assert {("mask", "train", 2), ("mask", "train", 3)} <= held and data.frames_held("train") == 2


def test_a_frames_mask_leaves_the_cache_with_its_image(tmp_path: Path):
    """A mask counts 0 toward cache_frames (it goes with its image), but it stayed when its image was dropped: with
    cache_frames set and cache_bytes null, every mask ever read stayed in memory, uncounted (a long masked split
    grew the process by H x W bytes a frame, without bound). The frame's mask is dropped with its image."""
    from tests.test_rays import _identity

    _identity(tmp_path, "m", 6, seed=3, mask=True)
    data = load_dataset(tmp_path, cache_frames=2, cache_bytes=None)
    for i in range(6):
        data.image("train", i), data.mask("train", i)
    assert set(data.cache._items) == {(k, "train", i) for k in ("image", "mask") for i in (4, 5)}
    data.mask("train", 0)  # a mask read without its image is a frame of its own, counted
    data.mask("train", 1)
    assert len(data.cache) <= 4 and data.cache._count <= 2


def test_a_mask_read_before_its_image_stops_counting_once_the_image_is_cached(tmp_path: Path):
    """A frame's mask counts 0 toward cache_frames while its image is cached, but one read before its image (the
    sampler's face rays in a frame with a mask and no face box, the torso layer's start) kept counting 1 after the
    image came: such a frame counted 2, and cache_frames=2 held one and a half frames (frame 0's mask pushed out)."""
    from tests.test_rays import _identity

    _identity(tmp_path, "m", 4, seed=3, mask=True)
    data = load_dataset(tmp_path, cache_frames=2, cache_bytes=None)
    for i in (0, 1):
        data.mask("train", i), data.image("train", i)
    assert set(data.cache._items) == {(k, "train", i) for k in ("image", "mask") for i in (0, 1)}
    assert data.cache._count == 2
    data.image("train", 2)  # a third frame pushes out the oldest frame, its mask with it
    assert ("image", "train", 0) not in data.cache and ("mask", "train", 0) not in data.cache


def test_cache_bounded_in_bytes(tmp_path: Path):
    d = make_identity(tmp_path, "a", n_frames=5)
    frame_bytes = W * H * 3
    data = load_dataset(d, cache_frames=None, cache_bytes=3 * frame_bytes)
    for i in range(5):
        data.image("train", i)
        assert data.cache.nbytes <= 3 * frame_bytes
    assert len(data.cache) == 3


def test_frame_cache_lru_order_and_oversized_items():
    cache = FrameCache(max_items=2, max_bytes=100)
    loads = []

    def loader(value, size=10):
        def load():
            loads.append(value)
            return np.full(size, value, dtype=np.uint8)

        return load

    cache.get("a", loader(1))
    cache.get("b", loader(2))
    cache.get("a", loader(1))  # a is now the most recent
    cache.get("c", loader(3))  # evicts b
    assert "a" in cache and "c" in cache and "b" not in cache
    big = cache.get("big", loader(4, size=200))  # larger than max_bytes: returned, not kept
    assert big.shape == (200,) and "big" not in cache and len(cache) == 2
    assert loads == [1, 2, 3, 4]


def test_data_config_fields_are_the_keywords_of_load_dataset(synth_root: Path):
    params = inspect.signature(load_dataset).parameters
    for f in fields(DataConfig):
        assert params[f.name].default == getattr(DataConfig(), f.name)
    data = load_dataset(synth_root, **asdict(DataConfig(splits=("val",), cache_frames=3)))
    assert data.splits == ("val",) and data.cache.max_items == 3


def test_json_files_hold_null_where_a_float_is_not_finite(tmp_path):
    # metrics.json, demo.json, log.jsonl and `info --json` are read by other tools: Python writes NaN / Infinity,
    # which strict JSON parsers refuse; they are written as null.
    import math

    from fastminerf.data.writer import json_text, write_json

    data = {"lmd": float("nan"), "psnr": float("inf"), "ok": 1.5, "rows": [float("-inf"), 2, "x", (3.0, math.nan)]}
    path = write_json(tmp_path / "m.json", data)

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"lmd": None, "psnr": None, "ok": 1.5,
                                                                   "rows": [None, 2, "x", [3.0, None]]}
    assert json.loads(json_text(data), parse_constant=refuse)["lmd"] is None
    assert math.isnan(data["lmd"])  # the data itself is left as it was


def test_json_text_takes_numpy_numbers_and_arrays():
    # a metric computed with numpy is an np.float32 / np.float64 / np.int64 (a mean over frames, a count): the
    # writer took only Python floats and raised "Object of type float32 is not JSON serializable" instead.
    from fastminerf.data.writer import json_text

    data = {"psnr": np.float32(25.5), "lmd": np.float32("nan"), "n": np.int64(3), "ok": np.bool_(True),
            "per_frame": np.array([1.0, np.inf], dtype=np.float32)}
    assert json.loads(json_text(data)) == {"psnr": 25.5, "lmd": None, "n": 3, "ok": True, "per_frame": [1.0, None]}


def test_replaced_atomically_keeps_the_earlier_file_and_no_temporary_one_when_the_write_fails(tmp_path):
    # The layout's JSON and landmarks, the WAV, track and checkpoint writers go through it: a write that raises
    # (a full disk, an interruption) left its temporary file beside the target in four of them.
    from fastminerf.data.writer import replaced_atomically

    target = tmp_path / "landmarks.npz"
    target.write_bytes(b"earlier")
    with pytest.raises(KeyboardInterrupt):
        with replaced_atomically(target, ".tmp.npz") as tmp:
            np.savez(tmp, x=np.zeros(3))
            # np.savez keeps a name ending in .npz; the name is this write's own (process id, a counter)
            assert tmp.exists() and tmp.name.startswith("landmarks.npz.") and tmp.name.endswith(".tmp.npz")
            assert set(tmp_path.iterdir()) == {target, tmp}
            raise KeyboardInterrupt
    assert target.read_bytes() == b"earlier" and list(tmp_path.iterdir()) == [target]
    with replaced_atomically(target, ".tmp.npz") as tmp:
        np.savez(tmp, x=np.arange(3))
    assert list(np.load(target)["x"]) == [0, 1, 2] and list(tmp_path.iterdir()) == [target]


def test_a_write_that_fails_on_a_full_disk_names_the_file(tmp_path, file_size_limit):
    """A write that fails part way (a full disk: ENOSPC; here the process's file size limit: EFBIG, which fails the
    same writes without filling a disk) raised the bare OSError of the write, naming no file ("error: [Errno 28] No
    space left on device" was all synth, prepare, eval or render printed), or naming the temporary file of the write.
    The writers of the layout (JSON, PNG, WAV, landmarks) go through replaced_atomically, whose error names the file
    the user asked for, and leave no temporary file."""
    import errno

    # a 24 px frame's PNG is under 3,000 bytes; the identity's audio.wav (a second of 16-bit sound) is not
    with file_size_limit(3000), pytest.raises(OSError) as info:
        generate(tmp_path / "d", n_identities=1, n_frames=4, size=24, seed=0)
    wav = tmp_path / "d" / "id000" / "audio.wav"
    assert info.value.errno == errno.EFBIG
    assert info.value.filename == str(wav) and str(wav) in str(info.value), str(info.value)
    assert not [p for p in (tmp_path / "d").rglob("*") if ".tmp" in p.name]


def test_intrinsics_per_frame_are_each_frames_camera(tmp_path: Path):
    """A converter that writes a camera per frame (``intrinsics`` in each frame, as trackers with a zooming or cropping
    camera do) gets each frame's camera, not the file's for all of them without a word; frames without one take the
    file's, and a file whose every frame has one needs none of its own."""
    d = make_identity(tmp_path, "a", n_frames=3)
    _edit(d, lambda m: m["frames"][1].__setitem__("intrinsics", [30.0, 31.0, 9.0, 7.0]))
    t = load_dataset(d).table("train")
    assert t.intrinsics.tolist() == [[25.0, 25.0, W / 2, H / 2], [30.0, 31.0, 9.0, 7.0], [25.0, 25.0, W / 2, H / 2]]

    def per_frame_only(m):
        m.pop("intrinsics")
        for i, fr in enumerate(m["frames"]):
            fr["intrinsics"] = [20.0 + i, 20.0 + i, 0.5, 0.5]  # NeRFace's fractions, read per frame as per file
    _edit(d, per_frame_only)
    t = load_dataset(d).table("train")
    assert t.intrinsics.tolist() == [[20.0 + i, 20.0 + i, W / 2, H / 2] for i in range(3)]

    f = _edit(d, lambda m: m["frames"][2].__setitem__("intrinsics", [0.9, 0.9, 0.5, 0.5]))  # normalised: too wide
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, f, 2, "intrinsics")
    f = _edit(d, lambda m: m["frames"][2].__setitem__("intrinsics", [20.0, 20.0]))
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, f, 2, "intrinsics")
    f = _edit(d, lambda m: m["frames"][2].pop("intrinsics"))  # one frame without a camera, the file without one
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, f, 2, "intrinsics")
    assert "camera_angle_x" in str(info.value)


def test_spaces_of_other_trackers_are_not_sent_to_the_remedy_of_prepared_data(tmp_path: Path):
    """A hand-made identity that names its tracker's space (as DATASET.md asks a converter to) beside the procedural
    heads, or data of such a space given to a model of another: both spaces are named, and the remedy is not
    ``prepare --basis`` (which neither space came from: there is no expression_basis.npz to pass)."""
    from fastminerf.data.dataset import expression_space_mismatch

    alice = make_identity(tmp_path, "alice", meta_extra={"expression_space": "procedural-heads-4"})
    bob = make_identity(tmp_path, "bob", meta_extra={"expression_space": "flame-4"})
    with pytest.raises(DatasetError) as info:
        load_dataset([alice, bob])
    _assert_located(info.value, bob / "transforms_train.json", None, "expression_space")
    msg = str(info.value)
    assert "'procedural-heads-4'" in msg and "'flame-4'" in msg and "--basis" not in msg, msg
    why = expression_space_mismatch("procedural-heads-4", "flame-4", "the driver", "run/checkpoint.pt")
    assert "'flame-4'" in why and "'procedural-heads-4'" in why and "run/checkpoint.pt" in why, why
    assert "--basis" not in why and "(None)" not in why, why
    why = expression_space_mismatch("pca4-aaaa", "flame-4", "the driver", "run/checkpoint.pt")  # a prepared model's
    assert "--basis" in why, why  # space: the driver's video can be prepared into it


@pytest.mark.parametrize("scale", [2, 4])
def test_a_principal_point_outside_the_image_is_refused(tmp_path: Path, scale):
    """Frames resized by a converter without their intrinsics (a 2x or 4x camera for the stored images: the principal
    point on the image's far corner or beyond it, the head drawn off the picture) loaded and trained without a word;
    the file and key are named, and the stored images' size. A camera whose centre is off-centre inside still loads."""
    d = make_identity(tmp_path, "p", meta_extra={"intrinsics": [25.0 * scale, 25.0 * scale, W / 2 * scale, H / 2 * scale]})
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, d / "transforms_train.json", None, "intrinsics")
    assert "principal point" in str(info.value) and f"{W}x{H}" in str(info.value)
    f = _edit(d, lambda m: (m.__setitem__("intrinsics", [25.0, 25.0, W / 2, H / 2]),
                            m["frames"][1].__setitem__("intrinsics", [50.0, 50.0, 2.0 * W, 2.0 * H])))
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, f, 1, "intrinsics")
    assert load_dataset(make_identity(tmp_path, "q", meta_extra={"intrinsics": [25.0, 25.0, W * 0.8, H * 0.3]}))


def test_a_transforms_file_with_a_byte_order_mark_loads(tmp_path: Path):
    """Windows tools (PowerShell's UTF-8, Notepad) begin a converter's JSON with a UTF-8 byte order mark, which JSON
    readers may skip (RFC 8259) and Python's own json.loads of the bytes does; the file was refused as 'not valid
    JSON: Unexpected UTF-8 BOM (decode using utf-8-sig)'."""
    d = make_identity(tmp_path, "a")
    f = d / "transforms_train.json"
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    assert len(load_dataset(d).table("train")) == 3


def test_a_mirrored_camera_is_refused(tmp_path: Path):
    """An OpenCV matrix converted by negating its third column alone (the head then in front, y still down): a
    mirrored camera (its rotation's determinant -1), trained on as an upside-down world without a word, with head
    motion mirrored when driving another person. Refused, naming the frame and both columns to negate."""
    d = make_identity(tmp_path, "a")
    half = (np.array(_c2w(3.1)) @ np.diag([1.0, -1.0, -1.0, 1.0]) @ np.diag([1.0, 1.0, -1.0, 1.0])).tolist()
    f = _edit(d, lambda m: m["frames"][2].__setitem__("transform_matrix", half))
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    _assert_located(info.value, f, 2, "transform_matrix")
    assert "mirror" in str(info.value) and "second and third columns" in str(info.value)


def test_image_paths_may_lead_out_of_the_identity_folder_or_be_absolute(tmp_path):
    """DATASET.md: file_path, mask_path and background are relative to the identity folder, may lead out of it
    ('../shared/...') and may be absolute; all three are read alike (one resolver)."""
    import imageio.v3 as iio

    from fastminerf.data.layout import read_transforms

    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("f.png", "m.png", "bg.png"):
        iio.imwrite(shared / name, np.zeros((8, 8, 3), np.uint8))
    ident = tmp_path / "data" / "a"
    ident.mkdir(parents=True)
    frame = {"transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]], "expression": [0.0]}
    meta = {"intrinsics": [8.0, 8.0, 4.0, 4.0], "background": str(shared / "bg.png"),
            "frames": [dict(frame, file_path="../../shared/f", mask_path=str(shared / "m.png"))]}
    (ident / "transforms_train.json").write_text(json.dumps(meta))
    m = read_transforms(ident / "transforms_train.json")
    assert Path(m.image_paths[0]).resolve() == shared / "f.png"
    assert Path(m.mask_paths[0]) == shared / "m.png" and Path(m.background) == shared / "bg.png"


def test_two_names_for_one_identity_folder_are_refused(tmp_path):
    """A shared root of links (a lab's selection of people) where two links lead to one folder ('alice' and an older
    'a_smith') trained the same frames as two people without a word. Refused, naming both and the folder."""
    generate(tmp_path / "src", n_identities=2, n_frames=4, size=16, seed=0, novel_frames=1)
    root = tmp_path / "links"
    root.mkdir()
    (root / "alice").symlink_to(tmp_path / "src" / "id000")
    (root / "a_smith").symlink_to(tmp_path / "src" / "id000")
    (root / "bob").symlink_to(tmp_path / "src" / "id001")
    with pytest.raises(DatasetError, match=r"a_smith and alice are one folder.*id000"):
        find_identity_dirs(root)
    with pytest.raises(DatasetError, match=r"alice and id000 are one folder"):
        find_identity_dirs([tmp_path / "src" / "id000", root / "alice"])
    (root / "a_smith").unlink()
    assert [p.name for p in find_identity_dirs(root)] == ["alice", "bob"]  # one link each: read as before


def test_two_writers_of_one_file_do_not_share_a_temporary_file(tmp_path: Path):
    """Two writers of the same file at once (two ``synth`` into one folder, two ``eval --out`` into one DIR, a job of
    an array started twice) wrote the same temporary name ``<name>.tmp``: the second truncated the first's half-written
    file, renamed it, and the first then failed on '[Errno 2] No such file or directory: ...bg.png.tmp'. Each write
    has a temporary file of its own: both end, and the file is one of them, whole."""
    import threading

    from fastminerf.data.writer import replaced_atomically

    target = tmp_path / "metrics.json"
    started, second_done = threading.Event(), threading.Event()
    errors = []

    def first():
        try:
            with replaced_atomically(target) as tmp:
                tmp.write_text('{"who": "first", ')
                started.set()
                second_done.wait(10)
                with open(tmp, "a") as f:
                    f.write('"whole": true}')
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    assert started.wait(10)
    with replaced_atomically(target) as tmp:
        tmp.write_text('{"who": "second", "whole": true}')
    assert json.loads(target.read_text()) == {"who": "second", "whole": True}
    second_done.set()
    t.join(10)
    assert not errors, errors
    assert json.loads(target.read_text()) == {"who": "first", "whole": True}
    assert list(tmp_path.iterdir()) == [target]


def test_one_name_in_two_unicode_spellings_is_refused(tmp_path):
    """'Zoë' typed on Linux (é one code point, NFC) beside 'Zoë' copied from a Mac (e + combining accent, NFD): two
    folders to the filesystem, one name to the eye. They were read as two people shown 'Zoë' twice in every table
    and checkpoint, --identity picking one by its bytes. Refused as one name given twice, naming the spellings."""
    import unicodedata

    generate(tmp_path / "src", n_identities=2, n_frames=4, size=16, seed=0, novel_frames=1)
    nfc, nfd = unicodedata.normalize("NFC", "Zoë"), unicodedata.normalize("NFD", "Zoë")
    (tmp_path / "src" / "id000").rename(tmp_path / "src" / nfc)
    (tmp_path / "src" / "id001").rename(tmp_path / "src" / nfd)
    with pytest.raises(DatasetError, match=r"Unicode.*" + re.escape(ascii(nfd))):
        find_identity_dirs(tmp_path / "src")


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path):
    """Temporary names are each write's own (process id and a counter), so a writer killed mid-write (``kill -9`` of a
    training while it saved a 100 MB checkpoint) left ``checkpoint.pt.<pid>-<n>.tmp`` that no later write replaced:
    one more per kill. The next write of the file removes the temporary files of dead processes (this machine's, a
    minute old); a live writer's, or a fresh one, is left alone."""
    import os
    import subprocess
    import sys

    from fastminerf.data.writer import replaced_atomically

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    target = tmp_path / "checkpoint.pt"
    time_ago = 3600.0
    killed = tmp_path / f"checkpoint.pt.{dead}-0.tmp"
    live = tmp_path / f"checkpoint.pt.{os.getppid()}-3.tmp"  # a writer that still runs
    fresh = tmp_path / f"checkpoint.pt.{dead}-1.tmp"  # maybe another machine's, on a shared disk: too young to judge
    other = tmp_path / f"bg.png.{dead}-0.tmp"  # another file's: its own next write cleans it
    for f in (killed, live, fresh, other):
        f.write_bytes(b"half")
    for f in (killed, live, other):
        t = f.stat().st_mtime - time_ago
        os.utime(f, (t, t))
    with replaced_atomically(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert not killed.exists()
    assert live.exists() and fresh.exists() and other.exists()



def test_writes_into_ever_new_folders_keep_a_bounded_record_of_them(tmp_path: Path):
    """Each atomic write recorded its folder's listing of temporary files (writer._LEFT, one entry per folder and
    suffix) for the rest of the process: a service rendering, evaluating or training each request into a folder of
    its own kept one more entry per request, without bound. The record keeps the folders written most recently; a
    folder left out is listed again at its next write, whose killed writers are still removed."""
    import os

    from fastminerf.data import writer

    for i in range(writer.LEFT_FOLDERS + 40):
        (tmp_path / f"request{i}").mkdir()
        writer.write_json(tmp_path / f"request{i}" / "out.json", {"i": i})
    assert len(writer._LEFT) <= writer.LEFT_FOLDERS
    first = tmp_path / "request0"  # long left out of the record
    killed = first / "out.json.999999999-0.tmp"
    killed.write_bytes(b"half")
    os.utime(killed, (0, 0))
    writer.write_json(first / "out.json", {"i": 0})
    assert not killed.exists() and len(writer._LEFT) <= writer.LEFT_FOLDERS


def test_the_fixed_temporary_name_of_older_versions_is_removed_by_the_next_write(tmp_path: Path):
    """Versions before today's wrote every atomic write through one fixed name (``checkpoint.pt.tmp``, a render's
    ``.OUT.part.mp4`` and ``.OUT.mp4.audio.wav``), which the next write overwrote and renamed away. A run (or render
    folder) where such a write was killed, resumed with today's names of each write's own, kept that file for good (a
    100 MB checkpoint's): nothing wrote or removed that name any more. The next write removes it as it removes a
    killed writer's of today, once a minute old (a writer of an older version still running keeps touching it)."""
    import os

    from fastminerf.data.writer import remove_killed_writes, replaced_atomically

    old = tmp_path / "checkpoint.pt.tmp"
    part = tmp_path / ".clip.part.mp4"
    sound = tmp_path / ".clip.mp4.audio.wav"
    fresh = tmp_path / "log.jsonl.tmp"  # young: maybe an older version's writer at work
    for f in (old, part, sound, fresh):
        f.write_bytes(b"half")
    for f in (old, part, sound):
        t = f.stat().st_mtime - 3600.0
        os.utime(f, (t, t))
    with replaced_atomically(tmp_path / "checkpoint.pt") as tmp:
        tmp.write_bytes(b"whole")
    with replaced_atomically(tmp_path / "log.jsonl") as tmp:
        tmp.write_bytes(b"whole")
    remove_killed_writes(tmp_path, ".clip.", ".part.mp4")  # what write_video calls after replacing clip.mp4
    remove_killed_writes(tmp_path, ".clip.mp4.", ".audio.wav")
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"whole"
    assert not old.exists() and not part.exists() and not sound.exists()
    assert fresh.exists()


def test_a_folder_whose_lock_cannot_be_made_is_written_unguarded(tmp_path: Path):
    """A read-only data folder (a prepared root on a shared, read-only mount: prepare reruns there skip every finished
    video) cannot hold the lock file: folder_locked opened it before it asked for the lock, so the PermissionError of
    the open ended each video of such a rerun as failed, where no write was needed. A lock file that cannot be made
    (simulated here by a folder in its place, which open refuses as the mount would) is no lock: the block runs
    unguarded, as where the filesystem has no locks."""
    from fastminerf.data.writer import LOCK_NAME, folder_locked

    (tmp_path / LOCK_NAME).mkdir()
    ran = []
    with folder_locked(tmp_path, lambda holder: RuntimeError(f"busy{holder}")):
        ran.append(True)
    assert ran == [True]


def test_a_video_an_earlier_version_failed_on_is_not_said_to_be_stopped(tmp_path: Path):
    """A root prepared by a version before failures were recorded (``.prepare/failed.json``) keeps, for a video that
    version failed on (no face, too few frames), what it had written: ``.prepare/`` with the tracking cache and no
    ``prepare.json``. That version read the root as the people it finished; today's refuses it as unfinished, as it
    must (a stopped video's folder looks the same), but said only 'prepare was stopped before it finished this folder
    ... it continues where it stopped' to a user who stopped nothing. The message names the other cause and what the
    rerun does with it (reports the video failed, and the root reads without it)."""
    generate(tmp_path / "root", n_identities=1, n_frames=4, size=16, seed=0, novel_frames=1)
    left = tmp_path / "root" / "noface" / ".prepare"  # what an earlier prepare left of a video without a face
    left.mkdir(parents=True)
    (left / "track.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"noface: prepare was stopped before it finished this folder.*failed on it"
                                           r".*rerun the same prepare command.*left out of its root"):
        load_dataset(tmp_path / "root")


def test_a_refused_call_leaves_no_lock_in_a_folder_that_was_there(tmp_path: Path):
    """train (render, synth, prepare) refused into an --out folder that existed before (a --data typo, a damaged frame)
    left the .lock file it made there: the README says a refused call leaves nothing it made. The lock a call made is
    removed when it wrote nothing there, while still held (a writer that opened it is refused as ever; one that comes
    after makes its own); a lock that was there before, or one beside what the call wrote, stays."""
    import fcntl

    from fastminerf.data.writer import LOCK_NAME, folder_locked

    def busy(holder):
        return RuntimeError(f"busy{holder}")

    empty, kept, wrote = (tmp_path / n for n in ("empty", "kept", "wrote"))
    for folder in (empty, kept, wrote):
        folder.mkdir()
    (kept / "notes.txt").write_text("mine")
    for folder in (empty, kept):
        with pytest.raises(ValueError):
            with folder_locked(folder, busy):
                assert (folder / LOCK_NAME).is_file()
                raise ValueError("refused: --data TYPO")
    assert sorted(p.name for p in empty.iterdir()) == [] and sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    with folder_locked(wrote, busy):
        (wrote / "checkpoint.pt").write_bytes(b"x")
    assert sorted(p.name for p in wrote.iterdir()) == [LOCK_NAME, "checkpoint.pt"]
    with folder_locked(wrote, busy):  # a lock an earlier call left: not this one's to remove
        pass
    assert (wrote / LOCK_NAME).is_file()
    with open(wrote / LOCK_NAME) as held:  # another writer holds it: refused, and its lock stays
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="busy"):
            with folder_locked(wrote, busy):
                pass
    assert (wrote / LOCK_NAME).is_file()


def test_a_refused_call_on_a_filesystem_without_locks_leaves_no_lock_in_a_folder_that_was_there(tmp_path: Path,
                                                                                                 monkeypatch):
    """On a filesystem that answers flock with ENOLCK / EOPNOTSUPP (some network ones) the call runs unguarded, and
    the .lock file it had just made to lock stayed in an --out folder that was there, refused call or not, though
    the README says a refused call leaves nothing it made (it guards nothing there: nobody can lock it)."""
    import errno
    import fcntl

    from fastminerf.data.writer import LOCK_NAME, folder_locked

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(ValueError):
        with folder_locked(folder, lambda holder: RuntimeError(f"busy{holder}")):
            raise ValueError("refused: --data TYPO")
    assert sorted(p.name for p in folder.iterdir()) == []
    (folder / LOCK_NAME).write_text("")  # a lock file that was there (an earlier version's): not this call's
    with folder_locked(folder, lambda holder: RuntimeError(f"busy{holder}")):
        pass
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]


def test_a_writer_whose_made_folder_a_refused_writer_removed_makes_it_again_and_locks_it(tmp_path: Path, monkeypatch):
    """Two trainings (evaluations) into one new --out at once, a third refused: the refused one removes the folder
    it made with its lock, still held; a writer that had made (found) the folder just before then could not open its
    lock file there (FileNotFoundError), ran unguarded, and a writer coming after made the folder again and locked
    it: two writers in one folder (three processes refused in a loop: a few overlaps a minute). With ``make`` the
    folder is made again and locked."""
    import fcntl

    import fastminerf.data.writer as writer

    folder = tmp_path / "runs" / "new"
    real_open = writer._open_lock
    calls = []

    def removed_first(lock):  # the refused writer's clean-up, between this one's make_folder and its open
        calls.append(lock)
        if len(calls) == 1:
            writer.remove_if_unused([folder, folder.parent])
        return real_open(lock)

    monkeypatch.setattr(writer, "_open_lock", removed_first)
    with writer.folder_locked(folder, lambda holder: RuntimeError(f"busy{holder}"), make=True):
        assert folder.is_dir() and (folder / writer.LOCK_NAME).is_file()
        with open(folder / writer.LOCK_NAME) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not (tmp_path / "runs").exists()  # made by this call, left with nothing: removed as ever


def test_a_refused_writer_does_not_remove_the_lock_a_writer_made_after_it_in_the_folder_it_made(tmp_path: Path,
                                                                                                monkeypatch):
    """A call with make refused into a new --out removes its own lock, then the folders it made that hold nothing but
    a lock: a writer that had made its lock there in between (it found the folder, its lock file gone) lost it, and the
    folder, while it held it, and a third made both again: two writers in one folder. Only what holds nothing at all
    is removed now (the call's own lock is gone by then): the other writer's folder and lock stay."""
    import fcntl

    import fastminerf.data.writer as writer

    folder = tmp_path / "new"
    real_remove = writer.remove_if_unused
    other = []

    def another_writer_first(made, *args, **kwargs):  # between this call's unlink of its lock and its clean-up
        f = open(folder / writer.LOCK_NAME, "a+")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.append(f)
        return real_remove(made, *args, **kwargs)

    monkeypatch.setattr(writer, "remove_if_unused", another_writer_first)
    with pytest.raises(ValueError):
        with writer.folder_locked(folder, lambda holder: RuntimeError(f"busy{holder}"), make=True):
            raise ValueError("refused: --data TYPO")
    try:
        assert (folder / writer.LOCK_NAME).is_file() and writer._same_file(other[0], folder / writer.LOCK_NAME)
    finally:
        other[0].close()


def test_make_folder_makes_a_folder_again_when_a_refused_call_removes_its_parent_in_between(tmp_path: Path,
                                                                                              monkeypatch):
    """make_folder("runs/new/run") makes runs/new, then runs/new/run; a refused call (remove_if_unused) removing
    runs/new in between failed the call with "[Errno 2] No such file or directory" though nothing was wrong with
    the path. It makes the folders again (they are then this call's: returned for remove_if_unused); a parent that
    keeps going away ends in an error naming the folder."""
    import fastminerf.data.writer as writer

    folder = tmp_path / "runs" / "new" / "run"
    real_mkdir, removals = Path.mkdir, []

    def raced(self, mode=0o777, parents=False, exist_ok=False):
        if self == folder and not parents and len(removals) < times:  # the parent made, this folder not yet
            removals.append(self.parent)
            self.parent.rmdir()
        return real_mkdir(self, mode, parents, exist_ok)

    monkeypatch.setattr(Path, "mkdir", raced)
    times = 1
    assert writer.make_folder(folder) == [folder, folder.parent, folder.parent.parent]
    assert folder.is_dir() and len(removals) == 1
    writer.remove_if_unused([folder, folder.parent, folder.parent.parent])
    assert not (tmp_path / "runs").exists()
    times = 100
    with pytest.raises(FileNotFoundError, match=rf"cannot make {re.escape(str(folder))}: .*removed"):
        writer.make_folder(folder)


def test_a_frame_rate_no_video_has_is_refused_naming_the_file_and_key(tmp_path):
    """A transforms file's fps of 2000 (a converter that wrote a sample rate, or milliseconds per frame inverted
    wrongly) was read as it was, and render --drive of it said 'error: fps must be at most 1000 frames a second, got
    2000' after the model had loaded, naming neither the file nor its key, though the user had typed --fps 25: the
    driver's clock comes first. The reader refuses it as any other value out of range (config.check_fps, the one
    frame-rate check), naming the file and fps; 1000 itself is read."""
    folder = generate(tmp_path / "d", n_identities=1, n_frames=4, size=16, seed=0)[0]
    path = folder / "transforms_train.json"
    meta = json.loads(path.read_text())
    for fps in (2000, 1e9):
        path.write_text(json.dumps(dict(meta, fps=fps)))
        with pytest.raises(DatasetError, match=r"transforms_train\.json.*fps.*at most 1000") as info:
            read_transforms(path)
        assert "2000" in str(info.value) or "1e+09" in str(info.value), info.value
    path.write_text(json.dumps(dict(meta, fps=1000)))
    assert read_transforms(path).fps == 1000
