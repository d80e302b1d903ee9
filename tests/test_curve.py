"""The training curve a person looks at: RUN/curve.png, drawn from RUN/log.jsonl at the end of train and personalize."""
from __future__ import annotations


import imageio.v3 as iio
import numpy as np
import pytest

from fastminerf import load_config, personalize, train
from fastminerf.data.synth import generate
from fastminerf.train import CURVE_NAME, write_curve


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("curve_heads")
    generate(root, n_identities=3, n_frames=6, size=16, seed=1, novel_frames=1)
    return sorted(p for p in root.iterdir() if p.is_dir())


def _panels(img):
    """Column ranges of the plot boxes: the grey frame lines drawn around each plot."""
    grey = (np.abs(img.astype(int) - 90).max(axis=2) <= 2)
    rows = np.flatnonzero(grey.sum(axis=1) > img.shape[1] // 3)  # the boxes' top and bottom lines
    return rows


def test_train_and_personalize_draw_the_loss_and_psnr_curve(heads, tmp_path):
    """A run wrote its loss and PSNR only as numbers in log.jsonl: nothing to look at to judge whether training
    went well (instant-ngp and nerfstudio show the curve as it trains). train and personalize now draw RUN/curve.png
    from the log at the end: a plot of the loss and one of the training PSNR against the step, with their ranges."""
    run = tmp_path / "run"
    res = train(load_config("tiny", ["train.steps=40"]), heads[:2], run)
    png = run / CURVE_NAME
    assert png.is_file() and res.curve == png
    img = iio.imread(png)
    assert img.ndim == 3 and img.shape[1] >= 480 and img.shape[0] >= 300, img.shape
    # two plots, each boxed (two horizontal grey lines apiece) and holding coloured curve pixels
    assert len(_panels(img)) >= 4
    coloured = (img.max(axis=2).astype(int) - img.min(axis=2)) > 80
    top, bottom = img[: img.shape[0] // 2], img[img.shape[0] // 2:]
    assert coloured[: len(top)].sum() > 50 and coloured[len(top):].sum() > 50
    # redrawn from the log as it stands: a hand-made log of one line still gives an image, no curve
    lines = (run / "log.jsonl").read_text().splitlines()
    assert len(lines) == 8
    (run / "log.jsonl").write_text(lines[0] + "\n")
    assert write_curve(run) == png and iio.imread(png).shape == img.shape
    with pytest.raises(FileNotFoundError, match="log.jsonl"):
        write_curve(tmp_path / "nothing")
    person = personalize(run, heads[2], tmp_path / "person", steps=20)
    assert person.curve == tmp_path / "person" / CURVE_NAME and person.curve.is_file()


def test_a_log_without_a_whole_record_draws_an_empty_curve_and_a_resume_ends(heads, tmp_path):
    """A log whose only line was cut (a full disk or an interruption at the first log write: log_records skips such
    lines) made write_curve fail with numpy's 'cannot reshape array of size 0 into shape (0,newaxis)', and so a
    resume of that run, which truncates the log to its checkpoint and draws the curve at the end: `fastminerf train`
    ended in that one line, after the session. training_curve titles an empty log 'nothing logged yet'; the plots
    of it are now empty boxes, as for a log of one record."""
    run = tmp_path / "run"
    cfg = load_config("tiny", ["train.steps=5"])
    train(cfg, heads[:2], run)
    full = iio.imread(run / CURVE_NAME)
    (run / "log.jsonl").write_text('{"step": 5, "seconds": 0.1, "lo')
    assert write_curve(run) == run / CURVE_NAME and iio.imread(run / CURVE_NAME).shape == full.shape
    res = train(cfg, heads[:2], run)  # nothing left to train: the log is truncated to its checkpoint, then drawn
    assert res.step == 5 and res.curve == run / CURVE_NAME and res.curve.is_file()


def test_the_curve_of_a_long_log_holds_no_copy_of_its_lines_or_records(tmp_path):
    """A week-long run logs a line a step or few; the curve is drawn from the whole log at the end of each session.
    write_curve held every line of a 1M-line log.jsonl (200 MB) and its parsed record at once (8 times the file,
    1.7 GB, at the end of a training beside its model). The records are read a line at a time and only the numbers
    drawn are kept; the picture is the same."""
    import json
    import tracemalloc

    from fastminerf.drawing import training_curve

    run = tmp_path / "run"
    run.mkdir()
    record = dict(step=0, seconds=0.5, loss=0.01, psnr=20.0, rays_per_s=51000.5, samples_per_ray=35.8, phase="codes",
                  occupied=0.93)
    records = [dict(record, step=s, seconds=s * 0.9876, loss=0.02 + 0.01 / s, psnr=20 + s / 1000,
                    phase="codes" if s < 5000 else "all") for s in range(1, 20001)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    size = (run / "log.jsonl").stat().st_size
    tracemalloc.start()
    try:
        png = write_curve(run)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(iio.imread(png), np.asarray(training_curve(records, "run")))
    assert peak < size, f"peak {peak / size:.1f} times the log"


def test_the_curve_of_a_run_past_a_million_steps_gives_its_steps_whole(monkeypatch):
    """The curve's title and the step axis's ends were written with '%g', six significant digits: past a million steps
    a run's curve read 'step 1.23457e+06' for step 1234567 (and its axis '1.23456e+06 ... 1.23457e+06'). They give
    the step as the log has it."""
    from PIL import ImageDraw

    from fastminerf.drawing import training_curve

    written = []
    real = ImageDraw.ImageDraw.text

    def text(self, xy, words, *args, **kwargs):
        written.append(words)
        return real(self, xy, words, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    training_curve([dict(step=1234560, seconds=1e6, loss=0.01, psnr=20.0),
                    dict(step=1234567, seconds=1000006.25, loss=0.01, psnr=20.1)], "run")
    assert written[0].startswith("run: step 1234567, 1000006 s of training"), written[0]
    assert written.count("1234560") == 2 and written.count("1234567") == 2, written
