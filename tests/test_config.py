"""Config parsing: ``--set key=value`` typing, presets that extend others, user YAML files with mistakes, and the
command-line options around them. No training: every test takes well under a second."""
from __future__ import annotations

import re
from dataclasses import fields, replace

import pytest

from fastminerf.cli import build_parser, main
from fastminerf.config import ConfigError, SpeechConfig, dump_config, flat_config, load_config, parse_config_text


# ------------------------------------------------------------------------------------------- presets, files


def _refused_in_file(tmp_path, text: str, match: str) -> None:
    """A config file holding ``text`` is a ConfigError matching ``match`` that names the file."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(mine)
    assert str(mine) in str(err.value)


@pytest.mark.parametrize("parent", ["cpuu", "missing.yaml", ""])
def test_a_missing_parent_preset_names_the_file_that_extends_it(tmp_path, parent):
    _refused_in_file(tmp_path, f"extends: {parent}\ntrain:\n  steps: 5\n", "extends")


def test_a_home_folder_path_in_a_config_file_is_the_users_home(tmp_path, monkeypatch):
    """`extends: ~/configs/base.yaml` (a lab's shared base in the user's home) is a path in a file: no shell expands
    its '~', and it was taken for a folder named '~' next to the config ('config file ~/configs/base.yaml does not
    exist'). A config path with '~' (in `extends`, or given quoted to --config) is the home folder's, as a shell
    would read it on a command line."""
    home = tmp_path / "home of Zoë"
    (home / "configs").mkdir(parents=True)
    (home / "configs" / "base.yaml").write_text("extends: tiny\ntrain:\n  steps: 7\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))  # Windows' home
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: ~/configs/base.yaml\nmodel:\n  render_steps: 32\n")
    cfg = load_config(mine)
    assert cfg.train.steps == 7 and cfg.model.render_steps == 32
    assert load_config("~/configs/base.yaml").train.steps == 7


def test_a_preset_name_is_not_shadowed_by_a_folder_of_that_name(tmp_path, monkeypatch):
    """`synth tiny` then `train --data tiny --config tiny` in one folder: the data folder 'tiny' was taken for the
    config and refused with 'config file tiny does not exist'. A folder is never a config file; a name that is
    neither a file nor a preset still says so, naming the folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert load_config("tiny") == load_config(str(__import__("fastminerf").config.CONFIG_DIR / "tiny.yaml"))
    (tmp_path / "mydata").mkdir()
    with pytest.raises(ConfigError, match="mydata.*is a folder"):
        load_config("mydata")


@pytest.mark.parametrize("raw", ["extends: tiny\ntrain:\n  steps: 7\n".encode("utf-16"), b"\x89PNG\r\n\x1a\n\x00\x00"],
                         ids=["utf-16", "png"])
def test_a_config_file_that_is_not_utf8_text_is_refused_naming_the_file(tmp_path, raw):
    """A config saved as UTF-16 (Windows Notepad's 'Unicode') or another file given as --config (an image) was refused
    with "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte", naming no file."""
    mine = tmp_path / "mine.yaml"
    mine.write_bytes(raw)
    with pytest.raises(ConfigError, match="not UTF-8 text") as err:
        load_config(mine)
    assert str(mine) in str(err.value)


@pytest.mark.parametrize("text", ["extends: tiny\ntrain:\n  steps: [7\n", "extends: tiny\ntrain:\n  steps: 7\n  steps: 9\n"],
                         ids=["not-yaml", "duplicate-key"])
def test_a_config_file_that_cannot_be_parsed_points_into_the_file(tmp_path, text):
    """YAML's account of where a config file goes wrong (line and column, under 'cannot parse config file mine.yaml')
    said 'in "<unicode string>", line 3, column 10': the file was read into a string and parsed as that. It says
    'in "<the file>", line 3'."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(mine)
    assert "<unicode string>" not in str(err.value) and f'in "{mine}", line 3' in str(err.value), str(err.value)


@pytest.mark.parametrize("text, key", [
    ("extends: tiny\ntrain:\n  steps: 7\nmodel:\n  render_steps: 32\ntrain:\n  lr: 0.005\n", "train"),
    ("extends: tiny\nmodel:\n  field:\n    n_levels: 4\n  render_steps: 32\n  field:\n    hidden_dim: 8\n", "field"),
    ("extends: tiny\ntrain:\n  steps: 7\n  steps: 9\n", "steps"),
])
def test_a_key_given_twice_in_a_file_is_refused_naming_the_file_and_key(tmp_path, text, key):
    # YAML kept the last of two 'train:' sections: the first one's steps were dropped without a word (40, the preset's)
    _refused_in_file(tmp_path, text, f"duplicate key '{key}'")


def test_a_key_overriding_a_yaml_merge_is_not_a_duplicate(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: tiny\ntrain:\n  <<: {steps: 9, lr: 0.02}\n  lr: 0.03\n")
    cfg = load_config(mine)
    assert (cfg.train.steps, cfg.train.lr) == (9, 0.03)


@pytest.mark.parametrize("section, key, hint", [("trian", "steps", "train"), ("modle", "render_steps", "model"),
                                                ("model:\n  feild", "n_levels", "model.field")])
def test_a_misspelt_section_in_a_file_suggests_the_section(tmp_path, section, key, hint):
    # 'trian:' was answered with "did you mean train.lr?" (whatever it held), 'modle:' with no suggestion at all
    indent = "  " * (section.count(":") + 1)
    _refused_in_file(tmp_path, f"extends: tiny\n{section}:\n{indent}{key}: 5\n", f"did you mean {hint}[,?]")


def test_a_string_field_left_empty_in_a_file_names_the_file_and_key(tmp_path):
    # `conditioning:` with nothing after it is YAML's null, which became the string "None"
    _refused_in_file(tmp_path, "extends: tiny\nmodel:\n  field:\n    conditioning:\n",
                     "model.field.conditioning: expected a string")


def test_a_section_given_a_value_names_the_section(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("train: 5\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: train: expected a mapping, got 5"):
        load_config(mine)


# ------------------------------------------------------------------------------------------- --set typing


def test_a_lone_override_string_is_one_override():
    """load_config("tiny", "train.steps=5") (a string where a list goes, as train() takes one data path) iterated its
    characters and said "override 't' must look like key=value"."""
    from fastminerf.config import flat_config

    assert load_config("tiny", "train.steps=5").train.steps == 5
    assert flat_config(SpeechConfig, "steps=7").steps == 7
    with pytest.raises(ConfigError, match="'train.stepz'"):
        load_config("tiny", "train.stepz=5")


@pytest.mark.parametrize("override", ["model.field=3", "model.field={n_levels: 8}", "train=5", "model.torso=null"])
def test_an_override_of_a_section_says_it_is_one(override):
    """--set model.field=... said "unknown config key 'model.field'; did you mean model.field.backend, ...": the key
    exists, as a section (a file's 'train: 5' is answered 'train: expected a mapping'). The override is refused as a
    section, with keys of it to set one at a time."""
    section = override.split("=")[0]
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    message = str(info.value)
    assert "unknown" not in message
    assert f"'{section}' is a section" in message and f"{section}." in message


def test_bools_take_1_and_0():
    # YAML reads 1 and 0 as integers: the strings "1" / "0" the parser accepts never reach it from --set or a file
    assert load_config("tiny", ["train.ray_jitter=1"]).train.ray_jitter is True
    assert load_config("cpu", ["train.ray_jitter=0"]).train.ray_jitter is False
    with pytest.raises(ConfigError, match="train.ray_jitter: expected true or false, got 2"):
        load_config("tiny", ["train.ray_jitter=2"])


def test_bools_take_1_and_0_in_a_file(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: tiny\ntrain:\n  ray_jitter: 1\n")
    assert load_config(mine).train.ray_jitter is True


def test_integers_take_exponent_notation(tmp_path):
    # YAML 1.1 reads 1e4 (no dot) as a string; 1.0e4 was already accepted as 10000
    assert load_config("tiny", ["train.steps=1e4"]).train.steps == 10000
    assert load_config("tiny", ["data.cache_bytes=2e9"]).data.cache_bytes == 2_000_000_000
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: tiny\ntrain:\n  steps: 2e3\n")
    assert load_config(mine).train.steps == 2000
    for bad in ("1.5e0", "1e400", "nan"):
        with pytest.raises(ConfigError, match="train.steps: expected an integer"):
            load_config("tiny", [f"train.steps={bad}"])


@pytest.mark.parametrize("key, value", [("train.device", "on"), ("model.field.conditioning", "yes"),
                                        ("model.field.backend", "0x10"), ("train.device", "1.10")])
def test_a_string_field_is_refused_with_the_value_as_typed(key, value):
    """--set train.device=on was refused as "got 'True'" (YAML reads on / yes as a boolean, 0x10 as 16, 1.10 as 1.1,
    and the string field took str() of that): the user never typed True. A string field takes the text as given."""
    with pytest.raises(ConfigError, match=f"got '{value}'"):
        load_config("tiny", [f"{key}={value}"])


@pytest.mark.parametrize("key, value, expected", [("train.lr", "yes", "a number"), ("train.steps", "on", "an integer"),
                                                  ("train.max_seconds", "no", "a number")])
def test_a_number_field_is_refused_with_the_value_as_typed(key, value, expected):
    """--set train.lr=yes (and speech --set smooth=yes) was refused as 'expected a number, got True': YAML reads yes /
    on / no as a boolean, a value the user never typed. A field that is no boolean refuses the text as given, as a
    string field does; a boolean field still takes yes and on, and a number as YAML reads it."""
    from fastminerf.config import SpeechConfig, flat_config

    with pytest.raises(ConfigError, match=f"{key}: expected {expected}, got '{value}'"):
        load_config("tiny", [f"{key}={value}"])
    for key, value in (("smooth", "yes"), ("steps", "on")):
        with pytest.raises(ConfigError, match=f"{key}: expected .*, got '{value}'"):
            flat_config(SpeechConfig, [f"{key}={value}"])
    assert flat_config(SpeechConfig, ["noise=0x10"]).noise == 16  # smooth, its first key, is at most 1 (seconds)
    assert load_config("tiny", ["train.lr=1e-3", "sampler.balance_identities=yes"]).sampler.balance_identities


@pytest.mark.parametrize("value", ["null", "~", "[cpu]", "{a: 1}"])
def test_a_string_field_refuses_null_and_collections(value):
    with pytest.raises(ConfigError, match="train.device: expected a string"):
        load_config("tiny", [f"train.device={value}"])
    assert load_config("tiny", ["train.device=cuda:0"]).train.device == "cuda:0"


# ------------------------------------------------------------------------------------------- validation


def _refused_naming_its_key(preset: str, override: str) -> None:
    """``override`` (``section.key=value``) on ``preset`` is a ConfigError that names its dotted key."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(preset, [override])


@pytest.mark.parametrize("override", [
    "model.render_steps=0",  # ZeroDivisionError when the model was built
    "model.occ_update_every=0",  # ZeroDivisionError at the first step
    "model.field.base_resolution=0",  # ZeroDivisionError in the hash grid
    "model.field.hidden_dim=0",  # RuntimeError from the fused heads
    "model.field.frame_code_dim=-1",  # RuntimeError: a tensor of negative size
    "train.lr_final_factor=-0.1",  # TypeError: a complex learning rate at step 1
    "train.threads=-1",  # RuntimeError from torch.set_num_threads
    "train.steps=-5",  # a run of no steps, written as if trained
    "train.personalize_steps=-1",
])
def test_values_that_crash_training_are_refused_naming_the_key(override):
    _refused_naming_its_key("tiny", override)


@pytest.mark.parametrize("override", [
    "train.ema_decay=-1",  # silently trained without the average the user asked a decay for
    "train.ema_decay=1.5",  # refused only once training had started (the average's own check)
    "train.landmark_depth_weight=-1",  # pushed the face's depth away from the landmarks
    "train.landmark_rays=-3",  # silently drew no landmark rays
    "train.landmark_depth_tolerance=-0.1",  # smooth_l1's error at the first step, after loading the data
])
def test_silently_misused_training_values_are_refused_before_training(override):
    _refused_naming_its_key("video", override)


@pytest.mark.parametrize("override", ["sampler.mouth_fraction=1.5", "sampler.eye_fraction=-0.1",
                                      "sampler.face_fraction=2", "sampler.error_fraction=-1"])
def test_sampler_fractions_are_refused_naming_the_key_before_training(override):
    # the sampler refused them only after the data had loaded, as 'mouth_fraction must be ...' without its section
    _refused_naming_its_key("video", override)


@pytest.mark.parametrize("override", [
    "train.lr=-1e-3",  # trained 'successfully' by gradient ascent, written as a trained run
    "train.lr=nan",  # trained to a loss of nan, written as a trained run
    "train.lr=inf",
    "train.code_lr=-1",
    "train.personalize_lr_factor=-0.5",  # personalize's shared weights at a negative learning rate
    "train.mask_weight=-1",  # a negative weight rewards the error it was asked to reduce
    "train.distortion_weight=-0.01",
    "train.frame_code_reg=-1",
])
def test_learning_rates_and_loss_weights_are_refused_when_negative_or_not_finite(override):
    _refused_naming_its_key("tiny", override)


@pytest.mark.parametrize("override, message", [
    ("sampler.seed=-1", "sampler.seed must be >= 0"),  # was 'expected non-negative integer', naming nothing
    ("sampler.batch_size=0", "sampler.batch_size must be >= 1"),  # these three: without their section, after loading
    ("sampler.frames_per_batch=0", "sampler.frames_per_batch must be >= 1 or null"),
    ("sampler.error_resolution=0", "sampler.error_resolution must be >= 1"),
    ("data.cache_frames=-1", "data.cache_frames must be >= 0 or null"),  # was 'max_items must be >= 0 or None'
    ("data.cache_bytes=-5", "data.cache_bytes must be >= 0 or null"),
])
def test_sampler_and_data_counts_are_refused_naming_the_key_before_training(override, message):
    # the sampler and the frame cache refused them once the run had loaded its data, naming their own keywords
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config("tiny", [override])
    assert load_config("tiny", ["sampler.seed=0", "sampler.frames_per_batch=null", "data.cache_frames=0",
                                "data.cache_bytes=null"]).data.cache_frames == 0


@pytest.mark.parametrize("override", [
    "model.grid_levels=0",  # 'levels must be in 1..16, got 0': no key
    "model.grid_levels=17",
    "model.cone_angle=-1",  # 'need step_size > 0, cone_angle >= 0 and ...': no key
    "model.grid_backend=cuda",  # "unknown backend 'cuda'": which of the two backend keys?
    "model.field.backend=Native",
    "model.backbone=NeRFace",
    "model.aabb=[1,2]",  # 'aabb must be ...' without the section
    "model.aabb=[1,1,1,0,0,0]",
    "model.field.n_levels=0",  # these: without the section
    "model.field.n_levels=33",
    "model.field.n_features_per_level=3",
    "model.field.density_levels=-1",
    "model.field.log2_hashmap_size=31",
    "model.field.sh_degree=5",
    "model.field.conditioning=Concat",
    "model.field.identity_levels_for=color",
])
def test_model_choices_and_ranges_are_refused_naming_the_key_before_training(override, tmp_path):
    # the model refused each only once the run had loaded its data and started its progress bar, most without the
    # key's section, some naming no key; and none named the YAML file a user had written it in
    _refused_naming_its_key("tiny", override)
    _refused_in_file(tmp_path, _override_in_file("tiny", override), override.split("=")[0].replace(".", r"\."))


def _override_in_file(preset: str, override: str) -> str:
    """A config file extending ``preset`` that sets what ``override`` (``key=value``) sets (NaN and infinity in YAML's
    spelling, ``.nan`` / ``.inf``)."""
    key, value = override.split("=")
    *sections, leaf = key.split(".")
    value = "." + value if value.lstrip("-") in ("nan", "inf") else value
    return (f"extends: {preset}\n" + "".join("  " * k + f"{s}:\n" for k, s in enumerate(sections))
            + "  " * len(sections) + f"{leaf}: {value}\n")


@pytest.mark.parametrize("preset,extra", [("cpu", []), ("tiny", ["model.field.identity_levels_for=colour"])])
def test_tcnn_with_identity_levels_is_refused_when_the_config_loads(preset, extra):
    """--config cpu --set model.field.backend=tcnn (the cpu and tiny presets have identity levels, which
    tiny-cuda-nn's HashGrid cannot hash) loaded, and the run failed at its first step, after the data was read and
    the model built and carved, with "BackendError: tiny-cuda-nn's HashGrid has no identity levels" (a traceback)."""
    with pytest.raises(ConfigError, match=r"model\.field\.backend=tcnn.*model\.field\.identity_levels=0") as refused:
        load_config(preset, ["model.field.backend=tcnn"] + extra)
    # the whole of the advice (on the cpu preset also density_levels=0 and texture_flow=0, which need identity levels)
    advice = re.findall(r"model\.field\.\w+=0\b", str(refused.value))
    assert advice[0] == "model.field.identity_levels=0", advice
    assert load_config(preset, ["model.field.backend=tcnn"] + advice).model.field.backend == "tcnn"


def test_the_edges_of_the_model_choices_still_load():
    cfg = load_config("tiny", ["model.grid_levels=16", "model.cone_angle=0", "model.grid_backend=nerfacc",
                               "model.field.backend=tcnn", "model.backbone=nerface", "model.aabb=null",
                               "model.field.n_levels=32", "model.field.n_features_per_level=8", "model.field.sh_degree=0",
                               "model.field.density_levels=32",
                               "model.field.identity_levels_for=colour", "model.field.conditioning=multiplicative"])
    assert cfg.model.grid_levels == 16 and cfg.model.field.density_levels == 32
    assert load_config("tiny", ["model.aabb=[-1,-1,-1,1,1,1]"]).model.aabb == (-1, -1, -1, 1, 1, 1)


@pytest.mark.parametrize("override", ["train.max_seconds=-1", "train.max_seconds=nan"])
def test_a_negative_time_limit_is_refused_naming_the_key(override):
    # --max-seconds -5 trained no step and wrote the run as trained ('trained 0 steps ... loss nan'), as train.steps=-5
    # did before it was refused; 0, like train.steps=0, stays a run of no steps
    with pytest.raises(ConfigError, match=r"train\.max_seconds must be >= 0"):
        load_config("tiny", [override])
    assert load_config("tiny", ["train.max_seconds=0"]).train.max_seconds == 0
    assert load_config("tiny", ["train.max_seconds=null"]).train.max_seconds is None


@pytest.mark.parametrize("overrides", [
    ["sampler.eye_fraction=0.9", "sampler.mouth_fraction=0.1"],  # video: mouth 0.2, so 0.9 + 0.2 on the way
    # video: density_levels 4 and identity_levels 6 > 2 on the way (n_levels 2 with identity_levels 6 trains no model)
    ["model.field.n_levels=2", "model.field.identity_levels=2", "model.field.density_levels=2"],
])
def test_overrides_are_checked_together_whatever_their_order(overrides):
    # each --set was applied and checked alone: a valid combination was refused in one order and loaded in the other
    for order in (overrides, overrides[::-1]):
        cfg = load_config("video", order)
        assert [str(v) for v in (cfg.sampler.eye_fraction, cfg.sampler.mouth_fraction)] == ["0.9", "0.1"] or \
            (cfg.model.field.n_levels, cfg.model.field.density_levels) == (2, 2)
    # the last of one key given twice still wins, and a bad combination is still refused
    assert load_config("tiny", ["train.steps=5", "train.steps=7"]).train.steps == 7
    with pytest.raises(ConfigError, match="must be <= 1"):
        load_config("video", ["sampler.eye_fraction=0.9", "sampler.mouth_fraction=0.2"])


def test_the_edges_of_the_training_weights_still_load():
    cfg = load_config("video", ["train.ema_decay=0", "train.landmark_depth_weight=0", "train.landmark_rays=0"])
    assert cfg.train.ema_decay == 0 and cfg.train.landmark_rays == 0


def test_a_bad_value_in_a_file_names_the_file_and_key(tmp_path):
    _refused_in_file(tmp_path, "extends: tiny\nmodel:\n  occ_update_every: 0\n",
                     r"model\.occ_update_every must be >= 1")


def test_the_edges_of_the_checked_values_still_load():
    cfg = load_config("tiny", ["train.steps=0", "train.threads=0", "train.lr_final_factor=0", "model.field.frame_code_dim=0",
                               "model.render_steps=1", "model.occ_update_every=1", "train.threads=null"])
    assert cfg.train.steps == 0 and cfg.train.threads is None and cfg.model.field.frame_code_dim == 0


def test_an_unknown_personalize_tune_is_refused_before_training(tmp_path):
    # only personalize checked it: a generic run trained for minutes, then its personalisation failed
    with pytest.raises(ConfigError, match="train.personalize_tune must be 'grid' or 'all', got 'heads'"):
        load_config("tiny", ["train.personalize_tune=heads"])
    _refused_in_file(tmp_path, "extends: tiny\ntrain:\n  personalize_tune: Grid\n", "personalize_tune must be")
    # a run saved with such a value still loads (render, eval, and personalize with --set can use it)
    cfg = load_config("tiny")
    saved = replace(cfg, train=replace(cfg.train, personalize_tune="heads"))
    assert parse_config_text(dump_config(saved)) == saved


# ------------------------------------------------------------------------------------------- command line


def _help(command: str) -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return " ".join(sub.choices[command].format_help().split())


def test_personalize_steps_help_names_the_key_it_sets():
    text = _help("personalize")
    assert "train.personalize_steps" in text and "overrides train.steps" not in text
    assert "overrides train.steps" in _help("train")


def test_speech_set_help_lists_every_field():
    text = _help("speech")
    assert all(f.name in text for f in fields(SpeechConfig))


@pytest.mark.parametrize("argv, message", [
    (["render", "--identity", "a", "--orbit", "--fps", "0", "--out", "{tmp}/x.mp4"], "--fps must be positive, got 0"),
    (["render", "--identity", "a", "--orbit", "--fps", "-5", "--out", "{tmp}/x.mp4"], "--fps must be positive, got -5"),
    (["render", "--identity", "a", "--orbit", "--fps", "inf", "--out", "{tmp}/x.mp4"], "--fps must be finite, got inf"),
    (["eval", "--data", "{tmp}", "--split", "val", "--max-frames", "0"], "--max-frames must be at least 1, got 0"),
    (["eval", "--data", "{tmp}", "--split", "val", "--max-frames", "-1"], "--max-frames must be at least 1, got -1"),
])
def test_cli_refuses_counts_and_rates_it_would_ignore(tmp_path, capsys, argv, message):
    # --fps 0 wrote a 16 fps video, a negative one crashed after rendering every frame; --max-frames -1 left out each
    # identity's last frame and 0 evaluated nothing. Refused before the run is opened (it does not exist here).
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv[:1] + ["--run", str(tmp_path / "run")] + argv[1:]) == 2
    assert message in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("stages", ["[16,4,32]", "[8,8]", "[0,8]"])
def test_prune_stages_must_increase(stages):
    # Out of order, a stage counted densities of an earlier one twice when choosing the samples to evaluate.
    with pytest.raises(ConfigError, match="model.prune_stages must be increasing"):
        load_config("tiny", [f"model.prune_stages={stages}"])
    assert load_config("tiny", ["model.prune_stages=[4,16,32]"]).model.prune_stages == (4, 16, 32)


def test_a_run_refuses_splits_it_would_not_train_on():
    # train() reads each identity's train split whatever data.splits says: [train, val] was accepted and ignored.
    with pytest.raises(ConfigError, match="data.splits: a run trains on each identity's 'train' split only"):
        load_config("tiny", ["data.splits=[train,val]"])


def test_render_chunks_must_hold_a_ray():
    # model.chunk_rays=0 trained (training does not chunk) and then failed every render with "range() arg 3 must
    # not be zero".
    with pytest.raises(ConfigError, match="model.chunk_rays must be >= 1, got 0"):
        load_config("tiny", ["model.chunk_rays=0"])


@pytest.mark.parametrize("device", ["meta", "mps", "xla", "cdua", "cuda:x", "gpu"])
def test_a_device_fastminerf_cannot_run_on_is_refused_by_the_config(device):
    """train.device=meta (or mps, xla) was accepted by the config and by train's device check (torch knows the
    names), and training failed deep inside (the native kernels' or the marcher's errors, after the data was read);
    a typo like cdua was refused only once train started. The config refuses it, naming the key and the devices
    that work."""
    with pytest.raises(ConfigError, match=rf"train.device.*auto, cpu, cuda or cuda:N.*{device!r}"):
        load_config("tiny", [f"train.device={device}"])
    for fine in ("auto", "cpu", "cuda", "cuda:0", "cuda:3"):
        assert load_config("tiny", [f"train.device={fine}"]).train.device == fine


@pytest.mark.parametrize("name", ["tiny", "cpu", "video", "gpu", "nerface"])
def test_a_preset_holds_only_its_differences(name):
    """README and each preset's header: a preset holds only its differences from the defaults in config.py, or from
    the preset it extends, so that a default lives in one place. cpu.yaml restated model.field.base_resolution,
    hidden_dim and train.checkpoint_seconds at their defaults, gpu.yaml log2_hashmap_size and finest_resolution: a
    default changed in config.py would silently stay at its old value in those presets, unlike every other key."""
    import yaml

    from fastminerf.config import CONFIG_DIR, RunConfig, config_to_dict

    data = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    parent = data.pop("extends", None)
    base = config_to_dict(load_config(parent) if parent else RunConfig())

    def restated(own, base, prefix=""):
        for key, value in own.items():
            if isinstance(value, dict):
                yield from restated(value, base[key], f"{prefix}{key}.")
            elif value == base[key]:
                yield f"{prefix}{key}: {value!r}"

    assert list(restated(data, base)) == [], f"{name}.yaml restates its base"


@pytest.mark.parametrize("override", [
    "model.field.expression_scale=nan",  # a run of 40 tiny steps trained to nan colours and was written as trained
    "model.field.expression_scale=inf",
    "model.field.density_bias=nan",  # likewise
    "model.field.density_bias=-inf",  # no density anywhere, ever
    "model.field.texture_flow=nan",
    "model.field.texture_flow=-0.05",  # refused only once the data had loaded
    "model.occ_threshold=nan",  # trained to nan as well
    "model.occ_threshold=-1",  # every cell occupied: the occupancy grid skipped nothing
    "model.occ_ema_decay=1.5",  # occ = max(1.5 occ, new): a cell once occupied grows and never empties
    "model.occ_ema_decay=-0.5",
    "model.occ_ema_decay=nan",
    "model.transmittance_threshold=nan",  # 'transmittance_threshold must be >= 0, got nan' after loading, no section
    "model.transmittance_threshold=-1",
    "model.cone_angle=inf",
    "model.torso.floor=nan",
    "model.torso.neck_top=inf",
    "model.torso.neck_width=nan",  # trained with a torso layer as if no neck column were asked for
    "model.torso.alpha_init=0",  # 'alpha_init must lie in (0, 1)' after loading, without its section
    "model.torso.alpha_init=1.5",
])
def test_model_numbers_that_are_not_finite_or_out_of_range_are_refused_naming_the_key(override, tmp_path):
    _refused_naming_its_key("video", override)
    _refused_in_file(tmp_path, _override_in_file("video", override), override.split("=")[0].replace(".", r"\."))


def test_the_edges_of_the_model_numbers_still_load():
    cfg = load_config("video", ["model.field.expression_scale=-2", "model.field.density_bias=3",
                                "model.field.texture_flow=0", "model.occ_threshold=0", "model.occ_ema_decay=0",
                                "model.transmittance_threshold=0", "model.cone_angle=0.1", "model.torso.floor=-2",
                                "model.torso.neck_top=0", "model.torso.neck_width=0", "model.torso.alpha_init=0.5"])
    assert cfg.model.field.expression_scale == -2 and cfg.model.occ_ema_decay == 0
    assert load_config("video", ["model.occ_ema_decay=1"]).model.occ_ema_decay == 1


@pytest.mark.parametrize("overrides, key", [
    # a traceback ('upper bound and lower bound inconsistent with step sign') once the data had loaded
    (["model.field.deform_layers=1", "model.field.deform_frequencies=-1"], "model.field.deform_frequencies"),
    # refused only once the data had loaded, naming no key or no section
    (["model.field.conditioning_degree=1"], "model.field.conditioning_degree"),  # 'the multiplicative module needs ...'
    (["model.field.density_layers=0"], "model.field.density_layers"),  # 'a head needs at least one hidden layer'
    (["model.field.color_layers=0"], "model.field.color_layers"),
    (["model.field.finest_resolution=4"], "model.field.finest_resolution"),  # tiny's base_resolution is 8
    (["model.field.identity_levels=-1"], "model.field.identity_levels"),
    (["model.field.identity_levels=5"], "model.field.identity_levels"),  # tiny's n_levels is 4
    (["model.grid_resolution=0"], "model.grid_resolution"),  # 'resolution must be a positive int ...'
    (["model.torso.resolution=8", "model.torso.frame_shift=true", "model.torso.shift_from_last=-1"],
     "model.torso.shift_from_last"),
    (["model.backbone=nerface", "model.nerface.depth=0"], "model.nerface.depth"),  # '... skip_layer must be in ...'
    (["model.backbone=nerface", "model.nerface.skip_layer=8"], "model.nerface.skip_layer"),
    # negative counts taken silently as none (or as 'no cap', 'training's steps'), trained as if that were asked
    (["model.field.deform_layers=-1"], "model.field.deform_layers"),
    (["model.field.conditioning_dim=-1"], "model.field.conditioning_dim"),
    (["model.field.identity_code_dim=-2"], "model.field.identity_code_dim"),
    (["model.field.geo_feature_dim=-1"], "model.field.geo_feature_dim"),
    (["model.eval_render_steps=-1"], "model.eval_render_steps"),
    (["model.max_samples_per_ray=-1"], "model.max_samples_per_ray"),
    (["model.occ_warmup_steps=-1"], "model.occ_warmup_steps"),
    (["model.torso.resolution=-1"], "model.torso.resolution"),
    (["model.nerface.width=0"], "model.nerface.width"),
    (["model.nerface.color_width=0"], "model.nerface.color_width"),
    (["model.nerface.coarse_samples=0"], "model.nerface.coarse_samples"),
    (["model.nerface.fine_samples=-1"], "model.nerface.fine_samples"),
    (["model.nerface.position_frequencies=-1"], "model.nerface.position_frequencies"),
    (["model.nerface.direction_frequencies=-1"], "model.nerface.direction_frequencies"),
])
def test_model_sizes_and_counts_are_refused_naming_the_key_before_training(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("tiny", overrides)


def test_the_edges_of_the_model_sizes_and_counts_still_load():
    cfg = load_config("tiny", ["model.field.deform_layers=0", "model.field.deform_frequencies=0",
                               "model.field.conditioning_degree=2", "model.field.density_layers=1",
                               "model.field.finest_resolution=8", "model.field.identity_levels=4",
                               "model.field.conditioning_dim=0", "model.field.identity_code_dim=0",
                               "model.field.geo_feature_dim=0", "model.grid_resolution=1", "model.eval_render_steps=0",
                               "model.max_samples_per_ray=0", "model.occ_warmup_steps=0", "model.torso.resolution=0",
                               "model.torso.shift_from_last=0", "model.nerface.depth=2", "model.nerface.skip_layer=1",
                               "model.nerface.fine_samples=0", "model.nerface.position_frequencies=0"])
    assert cfg.model.field.identity_levels == 4 and cfg.model.nerface.fine_samples == 0
    # a concat run ignores the degree; a degree of the Pi-net recursion above 2 stays
    assert load_config("tiny", ["model.field.conditioning_degree=3"]).model.field.conditioning_degree == 3
    concat = ["model.field.conditioning=concat", "model.field.conditioning_degree=1"]
    assert load_config("tiny", concat).model.field.conditioning == "concat"


@pytest.mark.parametrize("override", [
    "train.personalize_code_fraction=1.5",  # every personalisation step trained the codes only, the grid never
    "train.personalize_code_fraction=-0.1",  # no code phase, as 0 asks, without a word
    "train.personalize_code_fraction=nan",  # likewise (nan > 0 is false)
    "train.warmup_lr_steps=-5",  # no warm-up, as 0 asks, without a word
])
def test_training_shares_and_counts_taken_as_another_value_are_refused_naming_the_key(override):
    _refused_naming_its_key("tiny", override)
    cfg = load_config("tiny", ["train.personalize_code_fraction=0", "train.warmup_lr_steps=0"])
    assert (cfg.train.personalize_code_fraction, cfg.train.warmup_lr_steps) == (0, 0)
    assert load_config("tiny", ["train.personalize_code_fraction=1"]).train.personalize_code_fraction == 1


def test_a_seed_torch_cannot_take_is_refused_naming_the_key(tmp_path):
    # train.seed=18446744073709551615 loaded; train then wrote RUN/config.yaml and stopped on torch's 'Overflow when
    # unpacking long long', naming no key, and left the folder as a run to resume
    for seed in (2**64 - 1, 10**20, -(2**63) - 1):
        _refused_naming_its_key("tiny", f"train.seed={seed}")
    assert load_config("tiny", [f"train.seed={2**63 - 1}"]).train.seed == 2**63 - 1
    assert load_config("tiny", ["train.seed=-1"]).train.seed == -1  # torch takes it (a run may have been trained so)


def test_a_speech_seed_torch_cannot_take_is_refused_naming_the_key():
    # speech --set seed=18446744073709551615 loaded, and its training stopped on torch's 'Overflow when unpacking long
    # long' (torch.manual_seed), naming no key
    for seed in (2**64 - 1, -(2**63) - 1):
        with pytest.raises(ConfigError, match="seed"):
            flat_config(SpeechConfig, [f"seed={seed}"])
    assert flat_config(SpeechConfig, [f"seed={2**63 - 1}"]).seed == 2**63 - 1


def test_a_single_number_is_a_list_of_one_where_a_list_of_numbers_is_expected(tmp_path):
    """--set model.prune_stages=8 was refused 'expected a list, got 8' while '[8]' and '8,' were taken: YAML reads a lone
    8 as a number. One number is a list of one (config.as_list's 'one or many'), from --set and from a file alike;
    what is neither a number nor a list is still refused, naming the key."""
    assert load_config("tiny", ["model.prune_stages=8"]).model.prune_stages == (8,)
    assert load_config("tiny", ["model.prune_stages=8"]) == load_config("tiny", ["model.prune_stages=[8]"])
    path = tmp_path / "mine.yaml"
    path.write_text("extends: tiny\nmodel:\n  prune_stages: 8\n")
    assert load_config(path).model.prune_stages == (8,)
    with pytest.raises(ConfigError, match="model.prune_stages: expected a list"):
        load_config("tiny", ["model.prune_stages={a: 1}"])
    path.write_text("extends: tiny\nmodel:\n  prune_stages: true\n")
    with pytest.raises(ConfigError, match="model.prune_stages: expected a list, got True"):
        load_config(path)


def test_a_torso_layer_of_one_texel_is_refused_naming_the_key_and_the_values_allowed():
    """model.torso.resolution=1 loaded, then train stopped once the data had loaded with 'torso resolution must be >= 2,
    got 1' (the layer's bilinear texture needs two texels a side), naming no key; 0 (no layer) and 2 still load."""
    with pytest.raises(ConfigError, match=r"model\.torso\.resolution must be 0 \(no layer\) or >= 2, got 1"):
        load_config("tiny", ["model.torso.resolution=1"])
    assert [load_config("tiny", [f"model.torso.resolution={r}"]).model.torso.resolution for r in (0, 2)] == [0, 2]


@pytest.mark.parametrize("overrides", [
    ["model.field.finest_resolution=10000000000"],
    ["model.field.base_resolution=8589934592", "model.field.finest_resolution=8589934592"],
    ["model.field.finest_resolution=2147483649"],
])
def test_a_finest_resolution_beyond_the_kernels_32_bit_grid_is_refused_naming_the_key_and_its_range(overrides):
    """finest_resolution (and so base_resolution) had no upper bound: 1e10 loaded, then train stopped once the data had
    loaded with the grid's "level 3's resolution 9999994881 does not fit the kernels' 32-bit grid ... a smaller
    per_level_scale (1077.2...)", naming no key of the config (per_level_scale is none). The config refuses a finest
    level beyond 2**31, saying so; 2**31 itself still builds a grid."""
    with pytest.raises(ConfigError, match=r"model\.field\.finest_resolution must be in \d+\.\.2147483648 "):
        load_config("tiny", overrides)
    from fastminerf.field import MINeRFField

    cfg = load_config("tiny", ["model.field.finest_resolution=2147483648", "model.field.n_levels=2",
                               "model.field.identity_levels=0"]).model.field
    assert MINeRFField(cfg, 3).encoding.levels.resolutions[-1] <= 2**32 - 1



@pytest.mark.parametrize("overrides, key", [
    (["model.field.deform_layers=1", "model.field.deform_frequencies=200"], "model.field.deform_frequencies"),
    (["model.backbone=nerface", "model.nerface.position_frequencies=200"], "model.nerface.position_frequencies"),
    (["model.backbone=nerface", "model.nerface.direction_frequencies=25"], "model.nerface.direction_frequencies"),
])
def test_encoding_octaves_beyond_float32_points_are_refused_naming_the_key_and_its_range(overrides, key):
    """Octaves of the point and direction encodings had no upper bound: with 200, 2**k overflowed float32 for k >= 128,
    so the deformation's encoding was NaN and moved every sample to NaN, a run that trained and rendered garbage without
    a word (the grids read NaN points as some cell), and NeRFace's stopped at step 1 with 'its loss is nan ... a
    learning rate too high'. Beyond 24 octaves the sines of float32 points in the box are rounding noise already; the
    config refuses more, naming the key and the range, and 24 still loads."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + r" must be in 0\.\.24, got"):
        load_config("tiny", overrides)
    edge = [o.rsplit("=", 1)[0] + "=24" if "frequencies" in o else o for o in overrides]
    load_config("tiny", edge)


def test_cascades_of_an_occupancy_grid_not_a_multiple_of_4_are_refused_naming_the_keys():
    """model.grid_levels=2 with model.grid_resolution=6 loaded, then train stopped once the data had loaded with the
    grid's 'with 2 cascades every resolution must be a multiple of 4, got (6, 6, 6)', naming no key. The config refuses
    it, naming both keys and what is allowed; one cascade takes any resolution, several a multiple of 4."""
    with pytest.raises(ConfigError, match=r"model\.grid_resolution must be a multiple of 4 with model\.grid_levels=2 "
                                          r"cascades, got 6"):
        load_config("tiny", ["model.grid_levels=2", "model.grid_resolution=6"])
    assert load_config("tiny", ["model.grid_levels=2", "model.grid_resolution=8"]).model.grid_resolution == 8
    assert load_config("tiny", ["model.grid_levels=1", "model.grid_resolution=6"]).model.grid_resolution == 6


def test_the_tcnn_refusal_on_the_cpu_preset_gives_advice_that_trains():
    """On the cpu preset, model.field.backend=tcnn was refused with 'set model.field.identity_levels=0, or backend
    auto ...'; following that advice loaded a config whose field cannot be built (the preset's density_levels 4 and
    texture_flow 0.05 need the colour head's own identity levels: 'model.field.density_levels needs the colour head's
    own fine levels' once the data had loaded). The refusal names density_levels=0 and texture_flow=0 too where the
    config has them, and the config it advises builds a field."""
    from dataclasses import replace

    from fastminerf.field import MINeRFField

    with pytest.raises(ConfigError, match=r"model\.field\.identity_levels=0 and model\.field\.density_levels=0 and "
                                          r"model\.field\.texture_flow=0, or"):
        load_config("cpu", ["model.field.backend=tcnn"])
    advised = load_config("cpu", ["model.field.backend=tcnn", "model.field.identity_levels=0",
                                  "model.field.density_levels=0", "model.field.texture_flow=0"]).model.field
    MINeRFField(replace(advised, backend="torch", n_levels=2, log2_hashmap_size=8), 3)  # tcnn needs CUDA
    with pytest.raises(ConfigError) as refused:
        load_config("tiny", ["model.field.backend=tcnn"])
    assert "density_levels" not in str(refused.value) and "texture_flow" not in str(refused.value)  # tiny has none


@pytest.mark.parametrize("overrides,keys", [
    (["model.field.density_levels=1"], ["density_levels"]),  # tiny's identity levels are read by both heads
    (["model.field.texture_flow=0.05"], ["texture_flow"]),
    (["model.field.identity_levels_for=colour", "model.field.identity_levels=0", "model.field.density_levels=1",
      "model.field.texture_flow=0.05"], ["density_levels", "texture_flow"]),
])
def test_density_levels_or_a_texture_flow_without_the_colour_heads_own_levels_are_refused_when_the_config_loads(
        overrides, keys):
    """model.field.density_levels > 0 (or texture_flow > 0) without identity levels read by the colour head alone
    (identity_levels > 0, identity_levels_for: colour) loaded, and train stopped only once the data had loaded with
    the field's 'density_levels needs the colour head's own fine levels'. The config refuses it, naming the keys
    and both ways out; each way out loads and builds a field."""
    from dataclasses import replace

    from fastminerf.field import MINeRFField

    with pytest.raises(ConfigError) as refused:
        load_config("tiny", overrides)
    said = str(refused.value)
    assert "model.field.identity_levels > 0 and model.field.identity_levels_for=colour" in said, said
    assert " and ".join(f"model.field.{k}=0" for k in keys) in said, said
    for way_out in (["model.field.identity_levels=2", "model.field.identity_levels_for=colour"],
                    [f"model.field.{k}=0" for k in keys]):
        field = load_config("tiny", overrides + way_out).model.field
        MINeRFField(replace(field, backend="torch"), 3)
    load_config("tiny", ["model.backbone=nerface"] + overrides)  # the nerface backbone builds no such field
