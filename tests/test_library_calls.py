"""The library's public functions called the ways a notebook user calls them: a path where a loaded dataset goes and
a loaded dataset where paths go, a preset name where a RunConfig goes. Each works or says which argument takes what
(TypeError), never a bare AttributeError or "object is not iterable" from deep inside."""
from __future__ import annotations

import pytest

import fastminerf as fm
from fastminerf.data.synth import generate


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    generate(root, n_identities=2, n_frames=6, size=16, seed=0)
    return root


def test_a_loaded_dataset_where_data_paths_go_says_the_argument_takes_paths(heads, tmp_path):
    """train(cfg, load_dataset(ROOT), out) failed with "'MultiIdentityDataset' object is not iterable" (as did
    load_dataset(dataset) and personalize(run, dataset, out)), a number with "'int' object is not iterable"."""
    data = fm.load_dataset(heads)
    cfg = fm.load_config("tiny", "train.steps=1")
    for call, asked in ((lambda: fm.train(cfg, data, tmp_path / "run"), "data_paths"),
                        (lambda: fm.personalize(tmp_path / "run", [heads / "id000", data], tmp_path / "p"),
                         "data_paths"),
                        (lambda: fm.load_dataset(data), "paths"), (lambda: fm.load_dataset(3), "paths")):
        with pytest.raises(TypeError, match=rf"^{asked}: needs identity folders or dataset roots \(str or "
                                            r"pathlib\.Path, one or a list\), got (MultiIdentityDataset|int) "):
            call()
    assert not (tmp_path / "run").exists() and not (tmp_path / "p").exists()
    assert fm.load_dataset(p for p in [str(heads / "id000"), heads / "id001"]).identities == ["id000", "id001"]


def test_a_preset_name_or_yaml_path_where_a_run_config_goes_says_cfg_needs_a_loaded_config(heads, tmp_path):
    """train("tiny", data, out) (the CLI's --config tiny), build_model, build_optimizer, lr_factor and save_run given a
    preset name, a YAML path or None failed with "'str' object has no attribute 'train'" from deep inside."""
    data = fm.load_dataset(heads)
    cfg = fm.load_config("tiny", "train.steps=1")
    model = fm.build_model(cfg, data)
    calls = (lambda c: fm.train(c, heads, tmp_path / "run"), lambda c: fm.build_model(c, data),
             lambda c: fm.build_optimizer(c, model), lambda c: fm.lr_factor(0, c),
             lambda c: fm.save_run(tmp_path / "saved", c, model))
    for call in calls:
        for given, kind in (("tiny", "str"), (tmp_path / "c.yaml", "PosixPath"), (None, "NoneType")):
            with pytest.raises(TypeError, match=rf"^cfg: needs a RunConfig \(fastminerf\.load_config\(preset name or "
                                                rf"YAML path\)\), got {kind} "):
                call(given)
    assert not (tmp_path / "run").exists() and not (tmp_path / "saved").exists()
    assert fm.lr_factor(0, cfg) > 0


def test_a_folder_where_a_loaded_dataset_goes_says_dataset_needs_load_dataset(heads, tmp_path):
    """build_model(cfg, "data/") and save_run(out, cfg, model, step, "data/") (a folder's path, or a list of them, where
    load_dataset's result goes, as train takes paths) failed with "'PosixPath' object has no attribute 'table'" /
    "'list' object has no attribute 'num_frames'", as evaluate and neutral_frame did before 2a36b47."""
    cfg = fm.load_config("tiny")
    model = fm.build_model(cfg, fm.load_dataset(heads))
    for call, kind in ((lambda: fm.build_model(cfg, heads), "PosixPath"),
                       (lambda: fm.save_run(tmp_path / "saved", cfg, model, 0, str(heads)), "str"),
                       (lambda: fm.save_run(tmp_path / "saved", cfg, model, 0, [heads]), "list")):
        with pytest.raises(TypeError, match=rf"^dataset: needs a loaded dataset \(fastminerf\.load_dataset\(path\)\), "
                                            rf"got {kind} "):
            call()
    assert not (tmp_path / "saved").exists()


def test_a_run_folder_where_a_loaded_model_goes_says_model_needs_load_run(heads, tmp_path):
    """render_frame("run", data, "val", 0) and evaluate("run", data, "val") (a run folder, as the commands take --run,
    where load_run's model goes) said "the model has no 'identity_names': cannot map identity names to model
    identities", as if the model were broken; set_render_steps("run", 64) that a PosixPath "does not march rays"."""
    cfg = fm.load_config("tiny")
    data = fm.load_dataset(heads, splits=("train", "val"))
    fm.save_run(tmp_path / "run", cfg, fm.build_model(cfg, data))
    for run in (tmp_path / "run", str(tmp_path / "run"), tmp_path / "run" / "checkpoint.pt"):
        for call in (lambda: fm.render_frame(run, data, "val", 0), lambda: fm.evaluate(run, data, "val"),
                     lambda: fm.set_render_steps(run, 64)):
            with pytest.raises(TypeError, match=r"^model: needs a loaded model \(fastminerf\.load_run\(RUN\)\[1\]\), "
                                                r"got (str|PosixPath) "):
                call()
    assert fm.render_frame(fm.load_run(tmp_path / "run")[1], data, "val", 0).shape == (16, 16, 3)


def test_load_runs_whole_result_where_a_loaded_model_goes_says_model_needs_its_model(heads, tmp_path):
    """model = load_run(RUN) (its whole result, (config, model, metadata), as a notebook first writes it) given to
    render_frame or evaluate said "unknown identity '...': the model knows [...]" followed by the repr of the config,
    of the model and of the metadata's tensors (thousands of lines at a few hundred frames): the tuple was read as a
    list of identity names. It is refused as a run path is, naming the argument and where the model is."""
    cfg = fm.load_config("tiny")
    data = fm.load_dataset(heads, splits=("train", "val"))
    fm.save_run(tmp_path / "run", cfg, fm.build_model(cfg, data))
    loaded = fm.load_run(tmp_path / "run")
    name, box = data.identities[0], [-1.0] * 3 + [1.0] * 3
    for call in (lambda: fm.render_frame(loaded, data, "val", 0), lambda: fm.evaluate(loaded, data, "val"),
                 lambda: fm.set_render_steps(loaded, 64),
                 lambda: next(fm.render_sequence(loaded, fm.orbit_path(data, name, n_frames=2), name, aabb=box))):
        with pytest.raises(TypeError, match=r"^model: needs a loaded model \(fastminerf\.load_run\(RUN\)\[1\]\), "
                                            r"got tuple "):
            call()


def test_training_basis_of_one_path_reads_it_as_one_path(tmp_path):
    """training_basis("data/id000") (one path, as load_dataset and train take one) looked for the basis next to each
    of its characters: '/', 't', 'm', 'p', ... and said 'no expression_basis.npz next to the run's training data (/, t,
    m, p, ...)'."""
    (tmp_path / "id000").mkdir()
    (tmp_path / "expression_basis.npz").write_bytes(b"")
    for given in (str(tmp_path / "id000"), tmp_path / "id000", [tmp_path / "id000"], (p for p in [tmp_path])):
        assert fm.training_basis(given) == tmp_path / "expression_basis.npz"
    with pytest.raises(fm.RenderError, match=rf"training data \({tmp_path / 'else' / 'id000'}\)"):
        fm.training_basis(str(tmp_path / "else" / "id000"))
    with pytest.raises(TypeError, match=r"^data_paths: needs "):
        fm.training_basis(fm.VideoInfo)


def test_load_checkpoint_of_a_run_folder_says_it_is_a_folder_and_names_its_checkpoint(heads, tmp_path):
    """load_checkpoint("run") (the run folder, as load_run takes it) said 'checkpoint run does not exist', though the
    folder is there and holds the checkpoint; load_speech_model says so of a folder already."""
    cfg = fm.load_config("tiny")
    fm.save_run(tmp_path / "run", cfg, fm.build_model(cfg, fm.load_dataset(heads)))
    with pytest.raises(fm.CheckpointError, match=rf"^checkpoint {tmp_path / 'run'} is a folder: give the checkpoint "
                                                 rf"file in it \({tmp_path / 'run' / 'checkpoint.pt'}\), or load_run"):
        fm.load_checkpoint(str(tmp_path / "run"))
    assert fm.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 0
    with pytest.raises(fm.CheckpointError, match=rf"^checkpoint {tmp_path / 'nothing.pt'} does not exist"):
        fm.load_checkpoint(tmp_path / "nothing.pt")


def test_load_config_of_a_loaded_config_says_it_takes_a_name_or_path():
    """load_config(cfg, ["train.steps=5"]) (a loaded RunConfig, to change a key) failed with "OSError: [Errno 36] File
    name too long: 'RunConfig(data=DataConfig(...'": its text was taken for a file name."""
    cfg = fm.load_config("tiny")
    for given, kind in ((cfg, "RunConfig"), (cfg.train, "TrainConfig"), (3, "int")):
        with pytest.raises(TypeError, match=rf"^name_or_path: needs a preset name or a YAML file's path \(str or "
                                            rf"pathlib\.Path\), got {kind} "):
            fm.load_config(given, ["train.steps=5"])
    assert fm.load_config(None).train.steps > 0


def test_speech_given_a_folder_where_a_loaded_dataset_goes_says_dataset_needs_load_dataset(heads):
    """speech_clips("data/", ["train"]) and split_expressions(speech_model, "data/", "val") failed with "'PosixPath'
    object has no attribute 'splits'" (load_speech_clips is the one that takes paths)."""
    from fastminerf.speech import speech_clips, split_expressions

    for call in (lambda: speech_clips(heads, ["train"]), lambda: split_expressions(None, str(heads), "val")):
        with pytest.raises(TypeError, match=r"^dataset: needs a loaded dataset \(fastminerf\.load_dataset\(path\)\), "
                                            r"got (PosixPath|str) "):
            call()


def test_a_speech_model_or_recording_file_where_the_loaded_one_goes_says_what_loads_it(heads, tmp_path):
    """speech_path(data, NAME, "speech.pt", WAV) and split_expressions("speech.pt", data, "val") (the model's file, as
    render --speech takes it) failed with "'PosixPath' object has no attribute 'source'"; predict_expressions(model,
    "talk.wav", 25) with "'PosixPath' object has no attribute 'rate'"."""
    from fastminerf.speech import load_speech

    data = fm.load_dataset(heads, splits=("train", "val"))
    wav = heads / "id001" / "audio.wav"
    model_file = tmp_path / "speech.pt"
    for call, asked in ((lambda: fm.speech_path(data, "id000", model_file, wav), "speech_model"),
                        (lambda: fm.split_expressions(str(model_file), data, "val"), "model"),
                        (lambda: fm.predict_expressions(model_file, load_speech(wav), 25.0), "model")):
        with pytest.raises(TypeError, match=rf"^{asked}: needs a loaded speech model "
                                            r"\(fastminerf\.load_speech_model\(path\)\), got (PosixPath|str) "):
            call()
    found = fm.load_speech_clips(heads)
    model = fm.train_speech(found.clips, fm.SpeechConfig(steps=2), expression_space=found.expression_space)
    with pytest.raises(TypeError, match=r"^audio: needs a loaded recording \(fastminerf\.speech\.load_speech\(path\)\), "
                                        r"got PosixPath "):
        fm.predict_expressions(model, wav, 25.0)
    assert fm.predict_expressions(model, load_speech(wav), 25.0)[0].shape[1] == data.expression_dim


def test_train_speech_given_what_load_speech_clips_returned_says_clips_takes_its_clips(heads):
    """train_speech(load_speech_clips(PATHS)) (the README passes its .clips) failed with "'SpeechClips' object is not
    iterable", train_speech("data/") with "'PosixPath' object is not iterable"."""
    found = fm.load_speech_clips(heads)
    for given, kind in ((found, "SpeechClips"), (heads, "PosixPath"), ([heads], "PosixPath")):
        with pytest.raises(TypeError, match=rf"^clips: needs the clips of a dataset \(a list of SpeechClip: "
                                            rf"fastminerf\.load_speech_clips\(paths\)\.clips\), got {kind} "):
            fm.train_speech(given, fm.SpeechConfig(steps=1))


def test_a_loaded_model_where_a_run_path_goes_says_the_argument_takes_a_run_folder(heads, tmp_path):
    """personalize(model, data, out) (the model load_run gave, where the generic run's folder goes) and load_run(None)
    failed with pathlib's "expected str, bytes or os.PathLike object, not MINeRF", naming no argument."""
    cfg = fm.load_config("tiny")
    model = fm.build_model(cfg, fm.load_dataset(heads))
    for call, asked, kind in ((lambda: fm.personalize(model, heads / "id000", tmp_path / "p"), "generic_run", "MINeRF"),
                              (lambda: fm.load_run(model), "run_dir", "MINeRF"),
                              (lambda: fm.load_run(None), "run_dir", "NoneType")):
        with pytest.raises(TypeError, match=rf"^{asked}: needs a run folder or its checkpoint\.pt \(str or "
                                            rf"pathlib\.Path\), got {kind} "):
            call()
    assert not (tmp_path / "p").exists()


def test_render_frame_given_an_identity_name_for_its_index_says_index_takes_a_frame_number(heads):
    """render_frame(model, data, "val", "id001") (the identity's name, as render --identity takes it, where the frame's
    flat index goes) failed with "'<=' not supported between instances of 'int' and 'str'"."""
    import numpy as np

    cfg = fm.load_config("tiny")
    data = fm.load_dataset(heads, splits=("train", "val"))
    model = fm.build_model(cfg, data)
    for index, kind in (("id001", "str"), (1.0, "float")):
        with pytest.raises(TypeError, match=rf"^index: needs a frame's flat index in split 'val' \(int: "
                                            rf"dataset\.table\('val'\)\.frames_of\(identity\) gives an identity's\), "
                                            rf"got {kind} "):
            fm.render_frame(model, data, "val", index)
    assert fm.render_frame(model, data, "val", np.int64(1)).shape == (16, 16, 3)


def test_prepare_given_a_loaded_dataset_for_its_videos_says_videos_takes_video_files(heads, tmp_path):
    """prepare(load_dataset(ROOT), out) (a loaded dataset where the video files go) failed with
    "'MultiIdentityDataset' object is not iterable", as train did."""
    from fastminerf.prepare import prepare

    with pytest.raises(TypeError, match=r"^videos: needs video files \(str or pathlib\.Path, one or a list\), got "
                                        r"MultiIdentityDataset "):
        prepare(fm.load_dataset(heads), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_render_frame_takes_a_torch_integer_for_its_index_as_it_did(heads):
    """172aa2a's check of the index (int or numpy's integer) refused a 0-d torch integer (torch.randint(n, ()), an
    element of a torch tensor of frame indices), which rendered the frame before it: 'index: needs a frame's flat
    index ..., got Tensor 'tensor(1)''. An index is what Python takes as one (operator.index); floats and names are
    still refused."""
    import numpy as np
    import torch

    cfg = fm.load_config("tiny")
    data = fm.load_dataset(heads, splits=("train", "val"))
    model = fm.build_model(cfg, data)
    image = fm.render_frame(model, data, "val", torch.tensor(1))
    assert np.array_equal(image, fm.render_frame(model, data, "val", 1))
    with pytest.raises(TypeError, match=r"^index: needs a frame's flat index .* got Tensor "):
        fm.render_frame(model, data, "val", torch.tensor(1.0))


def test_dump_config_given_a_preset_name_says_it_takes_a_loaded_config():
    """dump_config("tiny") (a preset name, as load_config takes it) and dump_config(None) failed with dataclasses'
    "must be called with a dataclass type or instance", naming neither the argument nor what it takes."""
    for given, kind in (("tiny", "str"), (None, "NoneType")):
        with pytest.raises(TypeError, match=rf"^cfg: needs a RunConfig \(fastminerf\.load_config\(preset name or "
                                            rf"YAML path\)\), got {kind} "):
            fm.dump_config(given)
    cfg = fm.load_config("tiny")
    assert fm.dump_config(cfg).startswith("data:")


def test_a_missing_or_swapped_folder_or_file_argument_says_which_argument_takes_a_path(heads, tmp_path):
    """train(cfg, data, None), personalize(run, data, None), save_run(None, cfg, model), load_checkpoint(None),
    write_curve(None), run_demo(None) and driver_from_video(None, ...) failed with pathlib's "expected str, bytes or
    os.PathLike object, not NoneType" (personalize only after loading the generic run), naming no argument."""
    cfg = fm.load_config("tiny", "train.steps=1")
    model = fm.build_model(cfg, fm.load_dataset(heads))
    fm.save_run(tmp_path / "run", cfg, model)
    calls = ((lambda: fm.train(cfg, heads, None), "out_dir"),
             (lambda: fm.personalize(tmp_path / "run", heads / "id000", None), "out_dir"),
             (lambda: fm.save_run(None, cfg, model), "out_dir"),
             (lambda: fm.load_checkpoint(None), "path"),
             (lambda: fm.write_curve(None), "run_dir"),
             (lambda: fm.run_demo(None), "out_dir"),
             (lambda: fm.driver_from_video(None, heads / "expression_basis.npz", tmp_path / "d", 16), "video"),
             (lambda: fm.driver_from_video(heads / "v.mp4", None, tmp_path / "d", 16), "basis"),
             (lambda: fm.driver_from_video(heads / "v.mp4", heads / "b.npz", None, 16), "out_root"))
    for call, asked in calls:
        with pytest.raises(TypeError, match=rf"^{asked}: needs .*\(str or pathlib\.Path\), got NoneType 'None'"):
            call()
    with pytest.raises(TypeError, match=r"^out_dir: needs .*\(str or pathlib\.Path\), got MINeRF "):
        fm.save_run(model, cfg, tmp_path / "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_save_speech_model_with_swapped_or_missing_arguments_names_them(heads, tmp_path):
    """save_speech_model(model, path) (the arguments swapped) and save_speech_model(None, model) failed with
    pathlib's "expected str, bytes or os.PathLike object", save_speech_model(path, None) with "'NoneType' object has
    no attribute 'expression_dim'" after making the file's folder; load_speech_model(None) with pathlib's message."""
    found = fm.load_speech_clips(heads)
    model = fm.train_speech(found.clips, fm.SpeechConfig(steps=2), expression_space=found.expression_space)
    out = tmp_path / "new" / "speech.pt"
    for call, asked, kind in ((lambda: fm.save_speech_model(model, out), "path", "SpeechModel"),
                              (lambda: fm.save_speech_model(None, model), "path", "NoneType"),
                              (lambda: fm.load_speech_model(None), "path", "NoneType")):
        with pytest.raises(TypeError, match=rf"^{asked}: needs .*\(str or pathlib\.Path\), got {kind} "):
            call()
    with pytest.raises(TypeError, match=r"^model: needs a loaded speech model \(fastminerf\.load_speech_model\(path\)\), "
                                        r"got NoneType "):
        fm.save_speech_model(out, None)
    assert not (tmp_path / "new").exists()
    assert fm.load_speech_model(fm.save_speech_model(out, model)).expression_dim == model.expression_dim


def test_render_video_given_a_file_path_for_its_camera_path_says_path_takes_a_camera_path(heads, tmp_path):
    """render_video(model, "out.mp4", NAME, ...) (the output file given where the CameraPath goes: both are 'paths')
    failed with "'str' object has no attribute 'at_fps'", render_sequence(model, None, NAME) with "'NoneType' object
    has no attribute 'expression_space'", naming neither the argument nor what it takes."""
    cfg = fm.load_config("tiny")
    data = fm.load_dataset(heads)
    model = fm.build_model(cfg, data)
    for call, kind in ((lambda: fm.render_video(model, str(tmp_path / "out.mp4"), "id000", None,
                                                png_dir=tmp_path / "png"), "str"),
                       (lambda: list(fm.render_sequence(model, None, "id000")), "NoneType")):
        with pytest.raises(TypeError, match=rf"^path: needs a camera path \(fastminerf\.orbit_path, drive_path or "
                                            rf"speech_path\), got {kind} "):
            call()
    assert list(tmp_path.iterdir()) == []
    cam = fm.orbit_path(data, "id000", n_frames=1)
    assert len(list(fm.render_sequence(model, cam, "id000", aabb=[-1.5] * 3 + [1.5] * 3))) == 1


def test_build_optimizer_and_save_run_given_a_run_folder_or_none_for_the_model_say_model_takes_a_model(heads, tmp_path):
    """build_optimizer(cfg, "run") or build_optimizer(cfg, None) failed with "'str' object has no attribute
    'identity_codes'", save_run(out, cfg, None) with "'NoneType' object has no attribute ..." from deep inside."""
    cfg = fm.load_config("tiny")
    for call, kind in ((lambda: fm.build_optimizer(cfg, str(tmp_path / "run")), "str"),
                       (lambda: fm.build_optimizer(cfg, None), "NoneType"),
                       (lambda: fm.save_run(tmp_path / "saved", cfg, None), "NoneType")):
        with pytest.raises(TypeError, match=rf"^model: needs a model \(fastminerf\.build_model\(cfg, dataset\) or "
                                            rf"fastminerf\.load_run\(RUN\)\[1\]\), got {kind} "):
            call()
    assert list(tmp_path.iterdir()) == []


def test_training_basis_of_no_paths_names_the_argument():
    """training_basis(None) (a run's metadata without data paths, passed on) raised RenderError "no
    expression_basis.npz next to the run's training data ()": an empty pair of brackets, as if the data had been
    looked in and found lacking; an empty list said the same."""
    with pytest.raises(TypeError, match=r"^data_paths: needs identity folders or dataset roots"):
        fm.training_basis(None)
    with pytest.raises(fm.RenderError, match=r"no data paths given"):
        fm.training_basis([])


def test_build_model_leaves_the_callers_global_random_stream_alone(heads):
    """build_model seeded torch's global generator with train.seed and left it so: a notebook's own torch.rand
    sequence changed after building a model (every model built reset it to the same place). The weights are still
    drawn from train.seed alone, whatever the caller's stream, and are the ones train() starts from."""
    import torch

    cfg = fm.load_config("tiny", "train.steps=1")
    data = fm.load_dataset(heads)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    first = fm.build_model(cfg, data).state_dict()
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(99)
    again = fm.build_model(cfg, data).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    torch.manual_seed(cfg.train.seed)  # what build_model drew them from before: the same weights
    from fastminerf.model import MINeRF

    table = data.table("train")
    box = [*table.aabb[:, :3].min(0).tolist(), *table.aabb[:, 3:].max(0).tolist()]
    seeded = MINeRF(cfg.model, data.expression_dim, data.identities, torch.from_numpy(table.identity), aabb=box,
                    expression_space=data.expression_space).state_dict()
    assert all(torch.equal(first[k], seeded[k]) for k in first)
