"""Edge cases of the data layer: identities of very different lengths balanced, error maps whose cells are not a
whole number of pixels, frames in palette PNGs and CMYK JPEGs, bad ``frame_index`` and ``bbox`` values, face boxes at
the image border."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from fastminerf.data import DatasetError, RaySampler, load_dataset
from fastminerf.data.layout import read_rgb

W, H = 32, 24  # not square, and not a multiple of the error maps' resolutions below


def _identity(root: Path, name: str, n_frames: int, seed: int, **frame_extra) -> Path:
    rng = np.random.default_rng(seed)
    d = root / name
    (d / "train").mkdir(parents=True)
    frames = []
    for i in range(n_frames):
        iio.imwrite(d / "train" / f"{i}.png", rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8))
        frames.append({"file_path": f"train/{i}.png",
                       "transform_matrix": [[1, 0, 0, 0.05 * i], [0, 1, 0, 0], [0, 0, 1, 4.0], [0, 0, 0, 1]],
                       "expression": [float(seed), float(i)], **frame_extra})
    meta = {"intrinsics": [30.0, 30.0, W / 2, H / 2], "near": 2.5, "far": 5.5, "frames": frames}
    (d / "transforms_train.json").write_text(json.dumps(meta))
    return d


# ------------------------------------------------------------------------------------------------------------
# balance_identities with frames_per_batch: a short identity got one slot per frame, not half the rays


@pytest.mark.parametrize("frames_per_batch", [8, 64])
def test_balanced_identities_share_the_rays_when_frames_per_batch_exceeds_a_short_identity(tmp_path, frames_per_batch):
    _identity(tmp_path, "a", 2, seed=1)
    _identity(tmp_path, "b", 30, seed=2)
    data = load_dataset(tmp_path)
    sampler = RaySampler(data, "train", batch_size=640, seed=0, face_fraction=0.0, frames_per_batch=frames_per_batch,
                         balance_identities=True)
    share = np.mean([(sampler.sample().identity == 0).float().mean().item() for _ in range(40)])
    # An identity picked uniformly per frame slot: "a" gets half the rays (sd of the mean over 40 batches of >= 8
    # slots <= 0.03); before, it got at most its 2 frames' slots: 2/8 and 2/32 of the rays.
    assert abs(share - 0.5) < 0.1
    # Both of "a"'s frames are used, and each batch still covers min(frames_per_batch, B) slots of rays.
    batch = sampler.sample()
    assert set(batch.frame[batch.identity == 0].tolist()) == {0, 1}
    assert len(batch) == 640


# ------------------------------------------------------------------------------------------------------------
# Error maps whose cells are not a whole number of pixels


@pytest.mark.parametrize("r", [5, 32])
def test_error_rays_land_in_the_cell_that_recorded_the_error(tmp_path, r):
    # Rows of 24 pixels over 5 cells are 4.8 pixels a cell and over 32 cells 0.75 (some cells hold no pixel
    # row); columns 6.4 and 1. A pixel records into cell (row * r // H, col * r // W).
    _identity(tmp_path, "a", 1, seed=1)
    data = load_dataset(tmp_path)
    n = 4000
    sampler = RaySampler(data, "train", batch_size=n, seed=3, face_fraction=0.0, frames_per_batch=1,
                         error_fraction=1.0, error_resolution=r)
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    pixel = np.stack([cols.ravel(), rows.ravel()], 1)
    cell = np.stack([pixel[:, 1] * r // H, pixel[:, 0] * r // W], 1)
    hot_cell = (1, 2) if r == 5 else (1, 1)
    hot = (cell[:, 0] == hot_cell[0]) & (cell[:, 1] == hot_cell[1])
    sampler.record_errors(np.zeros(len(pixel), np.int64), pixel, np.where(hot, 1.0, 0.0))
    assert sampler.error_map[0][hot_cell] == 1.0
    batch = sampler.sample()
    assert sampler.last_error_rays.all()
    got = batch.pixel.numpy()
    in_hot = (got[:, 1] * r // H == hot_cell[0]) & (got[:, 0] * r // W == hot_cell[1])
    # All but the floor's share of the rays land on pixels that record into the hot cell (the floor gives each
    # other cell 0.02 of the mean: under 2 % in all). Before, a draw in the hot cell fell on a pixel of the cell
    # above or to the left ~7 % of the time (r=5), or always (r=32), and cells without pixels drew rays.
    assert in_hot.mean() > 0.97


# ------------------------------------------------------------------------------------------------------------
# frame_index that is not a finite whole number: an unlocated ValueError / OverflowError


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e30", str(2**70), str(10**400)],
                         ids=["nan", "inf", "-inf", "1e30", "2**70", "10**400"])
def test_bad_frame_index_names_the_file_frame_and_key(tmp_path, value):
    d = _identity(tmp_path, "a", 2, seed=1)
    f = d / "transforms_train.json"
    meta = json.loads(f.read_text())
    meta["frames"][1]["frame_index"] = "@@"
    f.write_text(json.dumps(meta).replace('"@@"', value))
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    err = info.value
    assert err.file == str(f) and err.frame == 1 and err.key == "frame_index", str(err)


# ------------------------------------------------------------------------------------------------------------
# PNG frames whose transparency is not an alpha channel (palette PNGs of pngquant and the like)


def test_palette_png_transparency_composites_over_the_background(tmp_path):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, : W // 2] = [200, 30, 10]  # left half: the head, opaque
    rgb[:, W // 2 :] = [0, 255, 0]  # right half: keyed out (transparent)
    im = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=4)
    path = tmp_path / "f.png"
    im.save(path, transparency=im.getpixel((W - 1, 0)))
    bg = np.full((H, W, 3), 77, np.uint8)
    out = read_rgb(path, bg)
    assert np.array_equal(out[:, : W // 2], rgb[:, : W // 2])
    assert np.array_equal(out[:, W // 2 :], bg[:, W // 2 :])  # before: the key colour, green


def test_cmyk_jpeg_frames_read_as_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    path = tmp_path / "f.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=100)
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(read_rgb(path), expected)  # before: C, M, Y as R, G, B and K as alpha



def test_frames_an_exif_orientation_tag_rotates_are_refused_naming_the_file(tmp_path):
    """Phone JPEGs carry an EXIF orientation tag (6: turn 90 degrees clockwise to show): every viewer shows them
    upright, but the loader read the pixels as stored, on their side, and trained on them without a word. A
    frame whose tag rotates or mirrors it is refused, naming the file, the frame and the key, and the tag's fix."""
    d = _identity(tmp_path, "phone", 3, seed=1)
    rgb = np.random.default_rng(2).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(d / "train" / "1.jpg", quality=95, exif=exif)
    meta = json.loads((d / "transforms_train.json").read_text())
    meta["frames"][1]["file_path"] = "train/1.jpg"
    (d / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="EXIF orientation"):
        read_rgb(d / "train" / "1.jpg")
    ds = load_dataset(d, splits=("train",))
    with pytest.raises(DatasetError, match=r"1\.jpg.*EXIF orientation 6") as err:
        ds.image("train", 1)
    assert "frame 1" in str(err.value) and "file_path" in str(err.value)
    exif[0x0112] = 1  # 'as stored': read as before
    Image.fromarray(rgb).save(d / "train" / "1.jpg", quality=95, exif=exif)
    assert read_rgb(d / "train" / "1.jpg").shape == (H, W, 3)


# ------------------------------------------------------------------------------------------------------------
# A face box wholly outside the image (pixels written where fractions belong)


def test_bbox_outside_the_image_is_refused(tmp_path):
    d = _identity(tmp_path, "a", 2, seed=1)
    f = d / "transforms_train.json"
    meta = json.loads(f.read_text())
    meta["frames"][1]["bbox"] = [6.0, 18.0, 8.0, 24.0]  # pixels of a 32 x 24 image
    f.write_text(json.dumps(meta))
    with pytest.raises(DatasetError) as info:
        load_dataset(d)
    err = info.value
    assert err.file == str(f) and err.frame == 1 and err.key == "bbox" and "fraction" in str(err), str(err)
    # A box reaching a little past the border (a tracked face at the edge) still loads.
    meta["frames"][1]["bbox"] = [-0.1, 0.5, 0.8, 1.2]
    f.write_text(json.dumps(meta))
    assert load_dataset(d).table("train").has_bbox[1]


def test_rays_of_a_border_face_box_stay_in_the_image(tmp_path):
    _identity(tmp_path, "a", 2, seed=1, bbox=[-0.1, 0.5, 0.8, 1.2])
    data = load_dataset(tmp_path)
    sampler = RaySampler(data, "train", batch_size=2000, seed=0, face_fraction=1.0, frames_per_batch=2)
    px = sampler.sample().pixel
    assert sampler.face_box_pixels(0) == (0, 12, 25, 32)
    assert bool(((px[:, 1] < 12) & (px[:, 0] >= 25) & (px[:, 0] < W)).all())
    assert torch.unique(px[:, 0]).numel() == 7 and torch.unique(px[:, 1]).numel() == 12


def test_near_and_far_are_written_together(tmp_path):
    # A lone near (or far) used to be dropped without a word: the dataset then used its own default bounds.
    from fastminerf.data.writer import write_transforms

    kw = dict(intrinsics=[30.0, 30.0, 16.0, 12.0], width=W, height=H)
    with pytest.raises(ValueError, match="near and far are written together"):
        write_transforms(tmp_path, "train", [], near=2.0, **kw)
    with pytest.raises(ValueError, match="near and far are written together"):
        write_transforms(tmp_path, "train", [], far=6.0, **kw)
    path = write_transforms(tmp_path, "train", [], near=2.0, far=6.0, **kw)
    meta = json.loads(path.read_text())
    assert (meta["near"], meta["far"]) == (2.0, 6.0)


def test_one_split_given_as_a_string_is_that_split(tmp_path):
    """load_dataset(path, splits="train") read the splits 't', 'r', 'a', ... ("identity 'a' has no split 't'"), where
    ``paths`` takes one path as a string."""
    d = _identity(tmp_path, "a", 2, 0)
    assert load_dataset(d, splits="train").splits == ("train",)


@pytest.mark.parametrize("kind", ["folder", "loop"])
def test_a_transforms_file_that_is_not_a_file_is_said_to_be_what_it_is(tmp_path, kind):
    """A transforms_val.json that is a folder or a symbolic link that loops was reported as '(file missing)',
    though the user sees the name in the folder."""
    d = _identity(tmp_path, "a", 3, seed=1)
    bad = d / "transforms_val.json"
    if kind == "folder":
        bad.mkdir()
    else:
        bad.symlink_to(bad.name)
    with pytest.raises(DatasetError, match="is a folder" if kind == "folder" else "is a symbolic link that loops") as err:
        load_dataset(d, splits=("train", "val"))
    assert "missing" not in str(err.value) and "transforms_val.json" in str(err.value)


@pytest.mark.parametrize("splits", [(), []])
def test_no_splits_to_load_is_a_dataset_error_naming_the_splits_there(tmp_path, splits):
    # load_dataset promises DatasetError for bad input; splits=() raised a bare ValueError, which a caller catching
    # DatasetError (as the commands do) did not catch.
    _identity(tmp_path, "a", 2, seed=1)
    with pytest.raises(DatasetError, match=r"no split to load.*\['train'\]"):
        load_dataset(tmp_path, splits=splits)


@pytest.mark.parametrize("paths", [[], (), None])
def test_no_data_folders_given_is_a_dataset_error(paths):
    # load_dataset(sorted(Path("data").glob("id*"))) matching nothing raised "IndexError: list index out of range"
    with pytest.raises(DatasetError, match="no identity folder or dataset root given"):
        load_dataset(paths)


# ------------------------------------------------------------------------------------------------------------
# A decompression bomb among shared frames: Pillow's DecompressionBombError is no OSError nor ValueError, and
# went through every handler as a traceback


def _png_header_of(path: Path, width: int, height: int) -> None:
    """A grey PNG that says it is width x height (its pixels cut short): Pillow refuses it on opening, before
    decoding anything, so the test allocates nothing."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("frame", [0, 1])
def test_a_decompression_bomb_frame_is_refused_naming_the_file(tmp_path, frame):
    """A 30000x30000 PNG among a downloaded dataset's frames: frame 0 (its header read for the size) and a later
    frame (decoded when training reaches it) ended in PIL's DecompressionBombError traceback. Both are a
    DatasetError naming the transforms file, the frame, the key and the image."""
    d = _identity(tmp_path, "a", 3, seed=1)
    _png_header_of(d / "train" / f"{frame}.png", 30000, 30000)
    with pytest.raises(ValueError, match="900000000 pixels"):
        read_rgb(d / "train" / f"{frame}.png")
    with pytest.raises(DatasetError, match=rf"frame {frame}: key 'file_path': cannot read image .*{frame}\.png.*900000000 pixels"):
        load_dataset(d, splits=("train",)).image("train", frame)


@pytest.mark.parametrize("key", ["cache_frames", "cache_bytes"])
def test_load_dataset_names_its_own_cache_keyword_for_a_negative_bound(tmp_path, key):
    """load_dataset(..., cache_frames=-1) was refused as 'max_items must be >= 0 or None' (cache_bytes=-1 as
    'max_bytes ...'), the frame cache's internal arguments, which the caller never typed."""
    d = _identity(tmp_path, "a", 2, 0)
    with pytest.raises(ValueError, match=rf"^{key} must be >= 0 or None, got -1$"):
        load_dataset([d], **{key: -1})


def test_expression_refusals_agree_with_whom_they_name(tmp_path):
    """'the new identities (a, b) has expressions of length 2 but ...' and '... (a, b) is in expression space' : the
    verb followed the list of people in the singular. The sentences speak of their expressions, which are."""
    from fastminerf.data.dataset import check_expression_space, expression_space_mismatch

    data = load_dataset([_identity(tmp_path, "a", 2, 0), _identity(tmp_path, "b", 2, 1)])
    with pytest.raises(DatasetError) as err:
        check_expression_space(None, data, "the new identities", "RUN", data.expression_dim + 1)
    assert f"the expressions of the new identities (a, b) are of length {data.expression_dim} but RUN" in str(err.value)
    why = expression_space_mismatch("s1", "s2", "the new identities (a, b)", "RUN")
    assert why.startswith("the expressions of the new identities (a, b) are in expression space 's2' but the model "
                          "(RUN) was trained in 's1'"), why


def test_expression_refusals_of_many_people_name_the_first_few_and_how_many_more(tmp_path):
    """eval or personalize of a root of many people in another expression length or space listed every one of them
    in the refusal (1,000 people: a page), where README says errors name the first few people and how many more."""
    from fastminerf.data.dataset import check_expression_space

    for k in range(12):
        _identity(tmp_path / "root", f"p{k:02d}", 1, k)
        (tmp_path / "root" / f"p{k:02d}" / "transforms_train.json").write_text(json.dumps(
            {**json.loads((tmp_path / "root" / f"p{k:02d}" / "transforms_train.json").read_text()),
             "expression_space": "flame-2"}))
    data = load_dataset([tmp_path / "root"])
    for args in ((None, data.expression_dim + 1), ("pca32-abc", None)):
        with pytest.raises(DatasetError) as err:
            check_expression_space(args[0], data, "the new identities", "RUN", args[1])
        assert "(p00, p01" in str(err.value) and "and 4 more)" in str(err.value) and "p11" not in str(err.value)
