"""Pictures for a person to look at: prepare's contact sheet drawn at the sizes prepare writes (no mediapipe needed)."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from fastminerf.drawing import CURVE_COLOURS
from fastminerf.prepare.contact_sheet import write_contact_sheet
from fastminerf.prepare.pose import project

BACKDROP = 30  # the sheet's background grey
TILE = 120  # the flat frames' grey


def _sheet(path, size, labels=None, n=4):
    rng = np.random.default_rng(0)
    neutral = rng.normal(size=(24, 3)) * 0.3
    intrinsics = [float(size), float(size), size / 2, size / 2]
    cam = np.eye(4)
    cam[2, 3] = 4.0
    lm = np.concatenate([project(neutral, cam, intrinsics), np.zeros((24, 1))], axis=1)
    frames = [np.full((size, size, 3), TILE, np.uint8) for _ in range(n)]
    masks = [np.zeros((size, size), np.uint8) for _ in range(n)]
    c2w_all = np.repeat(cam[None], 30, axis=0)
    c2w_all[:, 0, 3] = np.linspace(-0.1, 0.1, 30)
    kw = {} if labels is None else {"labels": labels}
    out = write_contact_sheet(path, "a_person_with_a_long_name", frames, masks, [lm] * n, [cam] * n, neutral,
                              np.arange(12), intrinsics, np.full((size, size, 3), 200, np.uint8), c2w_all,
                              rng.normal(size=(30, 6)), **kw)
    return np.asarray(iio.imread(out))


def test_a_contact_sheet_that_cannot_be_written_whole_keeps_the_earlier_one(tmp_path, file_size_limit):
    """prepare's sheet was saved in place: a save that failed part way (a full disk; here a file size limit) left the
    sheet of the earlier prepare cut short under its name, the error naming no file. Whole or not at all, named."""
    out = tmp_path / "contact_sheet.png"
    out.write_bytes(b"earlier sheet")
    with file_size_limit(2000), pytest.raises(OSError) as info:
        _sheet(out, 64)
    assert str(out) in str(info.value), str(info.value)
    assert out.read_bytes() == b"earlier sheet" and [p.name for p in tmp_path.iterdir()] == ["contact_sheet.png"]


def _first_tile_row(img):
    return int(np.flatnonzero((img[:, 4:8] == TILE).all(axis=(1, 2)))[0])


@pytest.mark.parametrize("size, n", [(64, 4), (128, 4), (512, 4), (256, 1), (512, 1)])
def test_contact_sheet_header_is_wrapped_to_the_sheet_not_cut(tmp_path, size, n):
    """The sheet's header (what the green and red points, the axes and the rows are) is one line of ~750 px: at
    prepare --size 128 (a 532 px sheet) it ran off the right edge mid-word, at 64 px most of it was lost, and a
    video of one usable frame gives a sheet one tile wide. It is wrapped to the sheet's width, the tiles below it."""
    img = _sheet(tmp_path / "s.png", size, n=n)
    top = _first_tile_row(img)
    header = img[:top].astype(int)
    assert (np.abs(header[:, -6:] - BACKDROP) <= 8).all(), "header text reaches the sheet's right edge"
    text = (header.max(axis=2) > 120).any(axis=1)
    assert text.sum() > 5
    if max(size, 256) * n <= 512:  # several lines (frames under 256 px are enlarged to it) of text, separated by empty rows
        starts = np.flatnonzero(text[1:] & ~text[:-1])
        assert len(starts) >= 2, top


def test_contact_sheet_curves_and_frames_are_labelled(tmp_path):
    """The rotation and expression curves were three colours with no word of which is which (about the camera's x,
    y, z; coefficients 0, 1, 2), and the frames shown had no index: a bad frame could not be found in frames/.
    Each plot's title names its curves in their colours, and each tile carries the label the caller gives."""
    size = 256
    img = _sheet(tmp_path / "s.png", size, labels=[f"frame {i}" for i in (0, 9, 19, 29)])
    # the plots' boxes: rows where the grey outline runs along
    rows = np.flatnonzero(((img == 90).all(axis=2)).sum(axis=1) > size)
    y0 = int(rows[0])
    band = img[y0 + 1: y0 + 14].astype(int)
    for colour in CURVE_COLOURS:
        close = (np.abs(band - np.array(colour)).max(axis=2) < 60).sum()
        assert close > 3, f"no legend in {colour}"
    top = _first_tile_row(img)
    for c in range(4):
        x = 4 + c * (size + 4)
        corner = img[top + size - 14: top + size, x: x + size // 2]  # bottom left
        assert (corner != TILE).any(), f"tile {c} carries no label"


def test_contact_sheet_of_small_frames_is_enlarged_so_the_face_shows_under_its_landmarks(tmp_path):
    """At prepare --size 64 the sheet drew 478 landmarks of 2 px on a 64 px tile: the face was buried under the dots
    and the tile's label ran off it. Frames under SHEET_MIN_TILE px are enlarged by a whole factor (nearest
    neighbour) before the landmarks, axes and labels are drawn, the points placed at the enlarged pixels."""
    from fastminerf.prepare.contact_sheet import SHEET_MIN_TILE

    size = 64
    img = _sheet(tmp_path / "s.png", size, labels=["f"] * 4)
    scale = -(-SHEET_MIN_TILE // size)
    tile = size * scale
    assert img.shape[1] == 4 + 4 * (tile + 4), img.shape
    top = _first_tile_row(img)
    second = img[top + tile + 4: top + 2 * tile + 4, 4: 4 + tile]  # the mask row: flat frames, darkened, enlarged
    assert second.shape[:2] == (tile, tile) and (second == second[0, 0]).all()
    # most of the landmark tile is still the frame, not dots
    first = img[top: top + tile, 4: 4 + tile]
    assert (first == TILE).all(axis=2).mean() > 0.6
    assert ((first[..., 1] > 200) & (first[..., 0] < 100)).any()  # green landmarks drawn
