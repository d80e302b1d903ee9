"""Compositing the person over another background (``render --background``, ``render_frame(..., background=)``) and
frames with the person's alpha (``render --alpha``, ``render_sequence(..., alpha=True)``), on a tiny run with a torso
layer trained for a few steps: the model's own compositing path, the maths of it, and the files written."""

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import torch

from fastminerf.cli import main
from fastminerf.config import load_config
from fastminerf.data import load_dataset
from fastminerf.data.synth import generate
from fastminerf.render import (RenderError, background_image, orbit_path, render_frame, render_sequence, straight_alpha,
                               to_uint8)
from fastminerf.train import load_run, train

SIZE = 24


@pytest.fixture(scope="module")
def torso_run(tmp_path_factory):
    """A tiny run with a torso layer (the person = head field over the layer), 3 steps."""
    root = tmp_path_factory.mktemp("bg")
    dirs = generate(root / "data", n_identities=2, n_frames=6, size=SIZE, val_fraction=0.34)
    cfg = load_config("tiny", ["train.steps=3", "model.torso.resolution=16"])
    train(cfg, dirs, root / "run")
    _, model, _ = load_run(root / "run")
    assert model.torso is not None
    return root, dirs, model


def test_render_frame_composites_the_person_over_a_new_background_through_the_models_path(torso_run):
    """rgb = person + (1 - person_opacity) * background for the frame's own background and a new one alike: the
    same person where the person is opaque, the new background where there is none of them."""
    root, dirs, model = torso_run
    data = load_dataset(dirs, splits=("train",))
    own, out = render_frame(model, data, "train", 1, outputs=True)
    a = out["alpha"].numpy()[..., None]
    assert np.allclose(out["alpha"], out["person_opacity"]) and (out["person_opacity"] >= out["opacity"]).all()
    person, black = render_frame(model, data, "train", 1, background="black", outputs=True)
    assert np.allclose(black["alpha"], out["alpha"])  # the person does not depend on what is behind them
    own_bg = data.background(int(data.table("train").identity[1])).astype(np.float32) / 255.0
    assert np.allclose(own, person + (1 - a) * own_bg, atol=1e-5)
    rng = np.random.default_rng(0)
    for new in ("lime", "#3366cc", rng.random((SIZE // 2, SIZE // 2, 3)).astype(np.float32)):
        got = render_frame(model, data, "train", 1, background=new)
        bg = background_image(new, None, SIZE, SIZE)
        assert np.allclose(got, person + (1 - a) * bg, atol=1e-5), new
        assert np.allclose(got - own, (1 - a) * (bg - own_bg), atol=1e-5)  # same person pixels, the background swapped
    assert np.array_equal(render_frame(model, data, "train", 1, background="own"), own)
    assert np.allclose(background_image("lime", None, 2, 3), [0, 1, 0]) and background_image("#3366cc", None, 2, 3).shape == (3, 2, 3)


def test_render_sequence_alpha_is_the_persons_opacity_and_straight_alpha_takes_the_background_out(torso_run):
    root, dirs, model = torso_run
    data = load_dataset(dirs, splits=("train",))
    path = orbit_path(data, "id000", n_frames=1)
    kw = dict(aabb=model.aabb.tolist())
    rgba = next(render_sequence(model, path, "id000", background="lime", alpha=True, **kw))
    rgb = next(render_sequence(model, path, "id000", background="lime", **kw))
    over_black = next(render_sequence(model, path, "id000", background="black", **kw))
    assert rgba.shape == (SIZE, SIZE, 4) and np.array_equal(rgba[..., :3], rgb)
    a = rgba[..., 3:]
    assert np.allclose(rgb, over_black + (1 - a) * np.array([0, 1, 0]), atol=1e-5)
    straight = straight_alpha(rgba, background_image("lime", None, SIZE, SIZE))
    seen = a[..., 0] > 0.05
    assert seen.any()
    # straight colour times alpha is the person alone (premultiplied = over black)
    assert np.allclose((straight[..., :3] * a)[seen], over_black[seen], atol=1e-4)


def _video(path):
    reader = imageio_ffmpeg.read_frames(str(path))
    next(reader)
    return list(reader)


def test_cli_render_background_and_alpha_write_rgba_pngs_and_a_matte(torso_run, tmp_path, capsys):
    root, dirs, model = torso_run
    data = load_dataset(dirs, splits=("train",))
    out, png = tmp_path / "o.mp4", tmp_path / "png"
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--orbit", "--frames", "3",
                 "--background", "#00ff00", "--alpha", "--png-dir", str(png), "--out", str(out)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "o_alpha.mp4" in said and "RGBA" in said
    want = list(render_sequence(model, orbit_path(data, "id000", n_frames=3), "id000", background="lime", alpha=True,
                                aabb=model.aabb.tolist()))
    got = [iio.imread(p) for p in sorted(png.glob("*.png"))]
    assert len(got) == 3 and all(g.shape == (SIZE, SIZE, 4) for g in got)
    for g, w in zip(got, want):
        assert np.abs(g[..., 3].astype(int) - to_uint8(w[..., 3:])[..., 0]).max() <= 1  # alpha: the person's opacity
        # straight alpha: a compositor's a * colour + (1 - a) * green is the render over green
        a = g[..., 3:].astype(np.float32) / 255
        again = a * g[..., :3] / 255 + (1 - a) * np.array([0, 1, 0])
        assert np.abs(again - w[..., :3]).max() <= 2.5 / 255
    matte = _video(tmp_path / "o_alpha.mp4")
    assert len(matte) == 3 and len(_video(out)) == 3
    grey = np.frombuffer(matte[0], np.uint8).reshape(SIZE, SIZE, 3)
    assert np.abs(grey[..., 1].astype(int) - got[0][..., 3]).mean() < 3  # H.264's loss, no more


def test_cli_render_own_background_is_todays_render(torso_run, tmp_path):
    """--background own (the default) renders exactly what render did before the option: the person over bg.png."""
    root, dirs, model = torso_run
    data = load_dataset(dirs, splits=("train",))
    want = to_uint8(next(render_sequence(model, orbit_path(data, "id001", n_frames=1), "id001",
                                         background=data.background(1), aabb=model.aabb.tolist())))
    for extra in ([], ["--background", "own"]):
        png = tmp_path / f"png{len(extra)}"
        assert main(["render", "--run", str(root / "run"), "--identity", "id001", "--orbit", "--frames", "1",
                     "--png-dir", str(png), "--out", str(tmp_path / "o.mp4")] + extra) == 0
        assert np.array_equal(iio.imread(png / "00000.png"), want)


@pytest.mark.parametrize("background, message", [
    ("nosuchcolour", "background 'nosuchcolour' is neither a colour"),
    ("{tmp}/missing.png", "background image {tmp}/missing.png: no such file"),
    ("{tmp}", "is a folder"),
    ("{tmp}/bad.png", "cannot read the background image {tmp}/bad.png"),
])
def test_cli_render_a_bad_background_is_named_before_any_work(torso_run, tmp_path, capsys, background, message):
    root, _, _ = torso_run
    (tmp_path / "bad.png").write_text("not a picture")
    out = tmp_path / "x.mp4"
    assert main(["render", "--run", str(root / "run"), "--identity", "id000", "--orbit", "--frames", "1",
                 "--background", background.replace("{tmp}", str(tmp_path)), "--out", str(out)]) == 2
    assert message.replace("{tmp}", str(tmp_path)) in " ".join(capsys.readouterr().err.split())
    assert not out.exists()
    with pytest.raises(RenderError, match="neither a colour"):
        background_image("nosuchcolour", None, 4, 4)


def test_a_phone_photo_as_background_is_shown_upright(tmp_path):
    """A phone's JPEG (EXIF orientation 6: turn 90 degrees clockwise to show) as --background was refused with the
    training data's message ('it would train on another picture ... the cameras'): a background is a picture, used
    as every viewer shows it. Each orientation gives what Pillow's exif_transpose shows."""
    from PIL import Image, ImageOps

    stored = np.zeros((6, 8, 3), np.uint8)
    stored[:, :4] = (255, 0, 0)  # left half red, right half blue, as stored
    stored[:, 4:] = (0, 0, 255)
    stored[0, 0] = (0, 255, 0)  # a corner, to tell mirrors apart
    for orientation in range(1, 9):
        im = Image.fromarray(stored)
        exif = im.getexif()
        exif[0x0112] = orientation
        path = tmp_path / f"phone{orientation}.png"
        im.save(path, exif=exif)
        with Image.open(path) as opened:
            shown = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
        got = background_image(str(path), None, shown.shape[1], shown.shape[0])
        assert np.array_equal(to_uint8(got), shown), orientation
    # orientation 6 shows the stored left (red) half on top, 6 wide and 8 tall, the stored top-left corner top right
    six = background_image(str(tmp_path / "phone6.png"), None, 6, 8)
    assert np.allclose(six[:4, :5], [1, 0, 0]) and np.allclose(six[4:], [0, 0, 1]) and np.allclose(six[0, 5], [0, 1, 0])


def test_own_background_without_one_is_refused_not_white(torso_run):
    """render_video(..., background="own") (the CLI's word) rendered over white without a word: a path has no
    background of the person's own, and 'own' read as None. It is refused, naming what to pass; None stays white."""
    root, dirs, model = torso_run
    data = load_dataset(dirs, splits=("train",))
    path = orbit_path(data, "id000", n_frames=1)
    with pytest.raises(RenderError, match="'own'.*dataset.background"):
        next(render_sequence(model, path, "id000", background="own", aabb=model.aabb.tolist()))
    assert np.array_equal(background_image(None, None, 3, 2), np.ones((2, 3, 3), np.float32))
    assert np.array_equal(background_image("own", data.background(0), SIZE, SIZE), data.background(0) / np.float32(255))


def test_write_video_refuses_a_matte_name_that_is_a_folder_before_writing_anything(tmp_path):
    """RGBA frames into OUT.mp4 beside a folder OUT_alpha.mp4 rendered every frame, replaced OUT.mp4 and then ended in
    '[Errno 21] Is a directory: .OUT_alpha.part.mp4 -> OUT_alpha.mp4'. The matte's name is checked as the video's is,
    before a frame is encoded, and the earlier OUT.mp4 is kept."""
    from fastminerf.render import write_video

    out = tmp_path / "o.mp4"
    out.write_bytes(b"earlier")
    (tmp_path / "o_alpha.mp4").mkdir()
    asked = []

    def frames():
        for k in range(3):
            asked.append(k)
            yield np.full((8, 8, 4), 0.5, np.float32)

    with pytest.raises(RenderError, match="o_alpha.mp4 is a folder"):
        write_video(frames(), out)
    assert out.read_bytes() == b"earlier" and len(asked) == 1


class _RgbOnly(torch.nn.Module):
    """A stand-in model that gives 'rgb' alone (render.py's interface asks no more): grey over the background."""

    identity_names = ["id000", "id001"]

    def render_rays(self, origins, directions, near, far, identity, expression, frame_code=None, background=None):
        return {"rgb": 0.5 * background + 0.25}


def test_render_frame_outputs_of_a_model_that_gives_rgb_alone(torso_run):
    """render_frame(..., outputs=True) of a model that returns only 'rgb' (the interface render.py documents) failed
    once outputs carried the person's alpha ('the model returned no per-ray opacity'), though no alpha was asked
    for; the outputs hold 'alpha' where the model gives an opacity, and an RGBA render of such a model is refused."""
    root, dirs, _ = torso_run
    data = load_dataset(dirs, splits=("train",))
    image, out = render_frame(_RgbOnly(), data, "train", 0, outputs=True)
    assert image.shape == (SIZE, SIZE, 3) and set(out) == {"rgb"}
    path = orbit_path(data, "id000", n_frames=1)
    with pytest.raises(RenderError, match="no per-ray 'opacity'"):
        next(render_sequence(_RgbOnly(), path, "id000", alpha=True, near_far=(0.1, 5.0)))


@pytest.mark.parametrize("image, message", [
    (np.full((4, 4, 3), 200.0), r"float.*\[0, 1\].*200.*divide 8-bit values by 255"),
    (np.full((4, 4, 3), 200, dtype=np.int64), r"uint8 or float.*int64"),
    (np.full((4, 4, 3), 40000, dtype=np.uint16), r"uint8 or float.*uint16"),
    (np.full((4, 4, 3), np.nan, dtype=np.float32), r"float.*\[0, 1\].*nan"),
])
def test_a_background_array_of_another_range_is_refused_not_rendered_white(image, message):
    """background_image gives (H, W, 3) float32 in [0, 1], but took any float array as it was and any integer array
    as it was too (only uint8 was divided by 255): an image read as float 0..255, or as int64 or uint16, came back with
    values up to 255 or 65535, and a render over it was white wherever the person is not (the model's rgb clamped),
    without a word. Such an array is refused, naming its type and range; a float image in [0, 1] and a uint8 one
    are taken as before."""
    with pytest.raises(RenderError, match=message):
        background_image(image, None, 4, 4)
    grey = background_image(np.full((2, 2, 3), 0.5), None, 4, 4)
    assert grey.dtype == np.float32 and np.allclose(grey, 0.5)
    assert np.allclose(background_image(np.full((2, 2, 3), 51, dtype=np.uint8), None, 4, 4), 0.2)


def test_write_video_of_rgb_frames_removes_the_matte_an_earlier_rgba_render_left_beside_the_video(tmp_path):
    """render --alpha into OUT.mp4 wrote OUT_alpha.mp4; a second render into OUT.mp4 without --alpha replaced the video
    and left the first one's matte beside it, matching it no more: an editor keying with it took the old person's
    shape. The matte is OUT.mp4's by its name, so a new OUT.mp4 without one removes it, as an earlier, longer render's
    PNG frames past the new end are removed."""
    from fastminerf.render import alpha_video_path, write_video

    out = tmp_path / "o.mp4"
    info = write_video((np.full((8, 8, 4), 0.5, np.float32) for _ in range(2)), out)
    assert info.alpha_path == alpha_video_path(out) and alpha_video_path(out).is_file()
    info = write_video((np.full((8, 8, 3), 0.25, np.float32) for _ in range(2)), out)
    assert info.alpha_path is None and out.is_file()
    assert not alpha_video_path(out).exists()
    # PNG frames alone (no video) touch no matte; a failed render keeps both as they were
    write_video((np.full((8, 8, 4), 0.5, np.float32) for _ in range(2)), out)
    write_video((np.full((8, 8, 3), 0.5, np.float32) for _ in range(2)), None, png_dir=tmp_path / "png")
    assert alpha_video_path(out).is_file()
    with pytest.raises(RenderError, match="no frames"):
        write_video(iter(()), out)
    assert alpha_video_path(out).is_file()
