"""Where render and eval run: the device a GPU user trained on (``--device``, ``load_run(device=)``), the library's
renders taking the model where the caller put it, and the CPU path unchanged. No GPU runs here: ``fake_cuda``
(conftest.py) simulates one."""

import json

import numpy as np
import pytest
import torch

from fastminerf.cli import main
from fastminerf.config import load_config
from fastminerf.data import load_dataset
from fastminerf.data.synth import generate
from fastminerf.render import evaluate, render_frame, render_rays, render_sequence, orbit_path
from fastminerf.train import load_run, train

from conftest import FakeCudaTensor

SIZE = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    dirs = generate(root / "data", n_identities=2, n_frames=4, size=SIZE, novel_frames=1, val_fraction=0.25)
    train(load_config("tiny", ["train.steps=2", "train.log_every=1"]), dirs, root / "run")
    return root, dirs


def _render(root, out, *extra):
    return main(["render", "--run", str(root / "run"), "--identity", "id000", "--orbit", "--frames", "2",
                 "--out", str(out / "o.mp4"), "--png-dir", str(out / "png"), *extra])


def _frames(folder):
    import imageio.v3 as iio

    return [iio.imread(p) for p in sorted(folder.glob("*.png"))]


def test_render_and_eval_run_on_the_gpu_where_there_is_one(tiny, tmp_path, fake_cuda):
    """render and eval loaded the run on the CPU and nothing moved it: a user who trained on a GPU (train.device
    auto, the gpu preset) rendered and evaluated on the CPU without a word. --device auto (default, as train's)
    takes the GPU."""
    root, dirs = tiny
    assert _render(root, tmp_path / "a") == 0
    assert fake_cuda.moves == [("MINeRF", torch.device("cuda"))]
    assert main(["eval", "--run", str(root / "run"), "--data", *map(str, dirs), "--split", "val", "--device", "cuda:0"]) == 0
    assert fake_cuda.moves[1:] == [("MINeRF", torch.device("cuda:0"))]
    assert _render(root, tmp_path / "b", "--device", "cpu") == 0  # asked for the CPU: stays there
    assert len(fake_cuda.moves) == 2


@pytest.mark.parametrize("command", ["render", "eval"])
@pytest.mark.parametrize("device, message", [
    ("cuda", "--device='cuda' but this torch"),
    ("cuda:1", "--device='cuda:1' but this machine has 1 CUDA device (cuda:0)"),
    ("mps", "--device must be auto, cpu, cuda or cuda:N"),
])
def test_a_device_that_cannot_run_is_refused_naming_the_option(tiny, tmp_path, capsys, monkeypatch, command, device,
                                                               message):
    root, dirs = tiny
    if device == "cuda:1":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    argv = (["render", "--identity", "id000", "--orbit", "--out", str(tmp_path / "x.mp4")] if command == "render" else
            ["eval", "--data", *map(str, dirs), "--split", "val", "--out", str(tmp_path / "e")])
    assert main(argv + ["--run", str(tmp_path / "no run"), "--device", device]) == 2  # before the run is read
    assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "e").exists()


def test_the_cpu_path_is_unchanged(tiny, tmp_path):
    """--device cpu (and auto on this machine) renders and scores exactly what the library gives for the run."""
    root, dirs = tiny
    _, model, _ = load_run(root / "run")
    assert next(model.parameters()).device.type == "cpu"
    data = load_dataset(dirs, splits=("train", "val"))
    for extra in ([], ["--device", "cpu"]):
        out = tmp_path / str(len(extra))
        assert _render(root, out, *extra) == 0
        path = orbit_path(load_dataset(dirs[:1]), "id000", n_frames=2)
        expected = [np.round(f * 255).astype(np.uint8) for f in
                    render_sequence(model, path, "id000", background=data.background(0), aabb=model.aabb.tolist())]
        assert all(np.array_equal(a, b) for a, b in zip(_frames(out / "png"), expected, strict=True))
        assert main(["eval", "--run", str(root / "run"), "--data", *map(str, dirs), "--split", "val",
                     "--out", str(out / "eval"), *extra]) == 0
        got = json.loads((out / "eval" / "metrics.json").read_text())
        want = evaluate(model, data, "val")
        assert got["identities"]["id000"]["psnr"] == want["identities"]["id000"]["psnr"]
        assert got["mean"] == {k: (None if v != v else v) for k, v in want["mean"].items()}


def test_load_run_puts_the_model_on_the_device_asked(tiny, fake_cuda):
    root, _ = tiny
    _, model, _ = load_run(root / "run")
    assert fake_cuda.moves == []  # the CPU by default, as before
    _, model, _ = load_run(root / "run", device="auto")
    assert fake_cuda.moves == [("MINeRF", torch.device("cuda"))]
    # model.to moves what is registered: every tensor of every part (occupancy grid, torso layer, encodings, heads)
    # is a parameter or a buffer, none a plain attribute a move would leave on the CPU
    for name, module in model.named_modules():
        loose = [k for k, v in vars(module).items() if isinstance(v, torch.Tensor)]
        assert not loose, f"{name or 'model'} keeps {loose} outside its parameters and buffers"


def test_load_run_refuses_a_device_that_cannot_run(tiny):
    root, _ = tiny
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' but this torch"):
            load_run(root / "run", device="cuda")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        load_run(root / "run", device="tpu")


class OnTheGpu:
    """A model on the simulated GPU with the interface render.py documents: every tensor it is given must be on its
    device (FakeCudaTensor refuses a CPU one in any operation), and it answers with tensors there; the colour is the
    background darkened by the expression's first coefficient, the opacity a half."""

    def __init__(self, names):
        self.identity_names = list(names)
        self.weight = torch.zeros(1).to("cuda")
        self.seen = []

    def parameters(self):
        yield self.weight

    def render_rays(self, origins, directions, near, far, identity, expression, frame_code=None, background=None):
        given = dict(origins=origins, directions=directions, near=near, far=far, identity=identity,
                     expression=expression, frame_code=frame_code, background=background)
        self.seen.append({k: v.device.type for k, v in given.items() if v is not None})
        shade = 1.0 - 0.1 * expression[:, :1].abs().clamp(max=1) + self.weight + 0 * (origins + directions).sum(1, True)
        rgb = background * shade + 0 * (near + far + identity)[:, None]
        return {"rgb": rgb, "opacity": torch.full_like(near, 0.5), "depth": near + 0}


def test_the_library_renders_where_the_model_is_and_gives_the_cpu_back(tiny, fake_cuda):
    root, dirs = tiny
    data = load_dataset(dirs, splits=("train", "val"))
    model = OnTheGpu(data.identities)
    batch_out = render_rays(model, *(torch.zeros(3, 3) for _ in range(2)), torch.zeros(3), torch.ones(3),
                            torch.zeros(3, dtype=torch.int64), torch.zeros(3, data.expression_dim), torch.ones(3, 3),
                            frame=torch.zeros(3, dtype=torch.int64))
    assert all(type(v) is torch.Tensor and v.device.type == "cpu" for v in batch_out.values())
    image, outs = render_frame(model, data, "val", 0, outputs=True, background="lime")
    assert image.shape == (SIZE, SIZE, 3) and outs["alpha"].device.type == "cpu"
    path = orbit_path(data, "id000", n_frames=2)
    frames = list(render_sequence(model, path, "id000", background="black", aabb=[-1, -1, -1, 1, 1, 1], alpha=True))
    assert len(frames) == 2 and frames[0].shape == (SIZE, SIZE, 4)
    assert model.seen and all(set(s.values()) == {"cuda"} for s in model.seen)


def test_evaluate_scores_lpips_where_the_model_renders(tiny, fake_cuda, monkeypatch):
    """evaluate gave LPIPS its NumPy frames: the network ran on the CPU for a model on a GPU (lpips runs where its
    images are), a forward pass of AlexNet a frame on the CPU beside a render on the GPU."""
    import fastminerf.render as R

    root, dirs = tiny
    data = load_dataset(dirs, splits=("val",))
    devices = []

    def lpips(pred, truth):
        devices.append(tuple(torch.as_tensor(x).device.type for x in (pred, truth)))
        return torch.tensor(0.25, dtype=torch.float64)

    monkeypatch.setattr(R, "lpips_status", lambda build=False: (True, "lpips stand-in"))
    monkeypatch.setattr(R, "lpips", lpips)
    res = evaluate(OnTheGpu(data.identities), data, "val", with_lmd=False)
    assert devices and set(devices) == {("cuda", "cuda")}
    assert res["mean"]["lpips"] == 0.25
    devices.clear()
    _, model, _ = load_run(root / "run")  # on the CPU: scored there, as before
    evaluate(model, data, "val", with_lmd=False)
    assert set(devices) == {("cpu", "cpu")}


def test_a_run_whose_backend_cannot_run_on_the_gpu_says_to_render_on_the_cpu(tmp_path, fake_cuda, capsys):
    """A run trained with backend native, rendered on a GPU the extension has no kernels for (--device auto, the
    default), was refused with train's advice, 'rebuild ... or choose backend='torch'', an option render does not
    have: it said nothing of --device cpu, which renders it."""
    dirs = generate(tmp_path / "data", n_identities=1, n_frames=3, size=SIZE)
    with pytest.MonkeyPatch.context() as cpu_only:
        cpu_only.setattr(torch.cuda, "is_available", lambda: False)
        train(load_config("tiny", ["train.steps=1", "model.field.backend=native"]), dirs, tmp_path / "run")
    argv = ["render", "--run", str(tmp_path / "run"), "--identity", dirs[0].name, "--orbit", "--frames", "1",
            "--out", str(tmp_path / "o.mp4")]
    from fastminerf import _native

    if _native.available() and not _native.has_cuda():  # the build here: CPU kernels only
        assert main(argv) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "model.field.backend='native' cannot run on cuda" in err and "--device cpu" in err
    assert main(argv + ["--device", "cpu"]) == 0


@pytest.mark.parametrize("command", ["train", "personalize"])
def test_train_and_personalize_take_device_as_render_and_eval_do(tiny, tmp_path, capsys, command):
    """render, eval and demo take --device; train and personalize did not ('unrecognized arguments: --device'), a GPU
    user had to know --set train.device=... . --device sets train.device, is refused before any work naming
    --device, and its help says where the command trains."""
    root, dirs = tiny
    argv = (["train", "--data", str(dirs[0]), "--config", "tiny", "--steps", "1"] if command == "train" else
            ["personalize", "--run", str(root / "run"), "--data", str(dirs[1]), "--steps", "1"])
    assert main(argv + ["--out", str(tmp_path / "bad"), "--device", "mps"]) == 2
    assert "--device must be auto, cpu, cuda or cuda:N" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "bad").exists()
    assert main(argv + ["--out", str(tmp_path / "ok"), "--device", "cpu"]) == 0
    assert load_config(tmp_path / "ok" / "config.yaml").train.device == "cpu"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "where it trains" in " ".join(capsys.readouterr().out.split())
