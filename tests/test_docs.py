"""Claims of the README and the command-line help that a test can check cheaply: the Layout names every module of
the package, the help of each command names the files it writes."""
import dataclasses
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"## Layout\n\n```\n(.*?)```", readme, re.S).group(1)


def test_readme_layout_names_every_module_of_the_package():
    """The Layout's package entry lists the modules (fastminerf/drawing.py, the contact sheet's and the training
    curve's drawing helpers, was missing from it)."""
    layout = _layout()
    modules = sorted(p.name for p in (ROOT / "fastminerf").glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    packages = sorted(p.name + "/" for p in (ROOT / "fastminerf").iterdir() if (p / "__init__.py").is_file())
    missing = [name for name in modules + packages if name not in layout]
    assert not missing, f"README's Layout does not name {missing}"


def test_train_help_and_docstring_name_every_file_a_run_folder_gets():
    """train and personalize draw RUN/curve.png at the end of each session (f1b9bab), but train --help and
    train()'s docstring listed config.yaml, checkpoint.pt and log.jsonl only."""
    from fastminerf import train
    from fastminerf.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    text = " ".join(sub.format_help().split())
    for name in ("config.yaml", "checkpoint.pt", "log.jsonl", "curve.png"):
        assert f"OUT/{name}" in text, name
        assert name in train.__doc__, name


def test_eval_help_says_what_the_side_by_side_images_show():
    """eval's side-by-side images are captioned and their panels enlarged (4e87729); eval --help said only
    'prediction | truth | error'."""
    from fastminerf.cli import build_parser
    from fastminerf.render import SIDE_BY_SIDE_MIN_PANEL

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["eval"]
    text = " ".join(sub.format_help().split())
    assert f"at least {SIDE_BY_SIDE_MIN_PANEL} px" in text and "PSNR; panels" in text


def test_options_help_says_what_leaving_them_out_does_not_none():
    """The help of options read from config docstrings said 'None for each video's own average rate' (prepare
    --fps), 'None for all' (--max-frames), 'None fits one' (--basis), 'None for max(1, n_frames // 10)' (synth
    --novel-frames): None is the config's value, which cannot be typed on the command line (--fps None is refused,
    --basis None names a file 'None'). The help says what leaving the option out does."""
    from fastminerf.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in ("prepare", "synth"):
        text = " ".join(commands[name].format_help().split())
        assert "None" not in text, (name, text[text.index("None") - 80:text.index("None") + 40])
    text = " ".join(commands["prepare"].format_help().split())
    assert "without it, each video's own average rate" in text, text


def test_top_level_help_summaries_of_render_and_info_name_what_they_do():
    """fastminerf --help summarised render as 'driven by another dataset's expressions and head motion, or a camera
    orbit' (not --speech, a recording through a speech model) and info as 'identities, frames, expression space,
    steps, size' (not how the run ended, its data folders, its speech model or its last PSNR, which info shows)."""
    from fastminerf.cli import build_parser

    parser = build_parser()
    summary = {a.dest: a.help for a in next(a for a in parser._actions if a.dest == "command")._choices_actions}
    assert "orbit" in summary["render"] and "speech" in summary["render"], summary["render"]
    for word in ("ended", "data", "speech", "PSNR"):
        assert word in summary["info"], (word, summary["info"])


def test_info_help_names_the_backends_info_shows():
    """Since 8fbea66 info shows the backends the run's config asked for, those that trained it and those that run it
    here (a tcnn run resumed on a CPU), but info --help, which lists everything else info shows, said nothing of them."""
    from fastminerf.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    summary = {a.dest: a.help for a in sub._choices_actions}["info"]
    description = sub.choices["info"].description
    assert "backends" in summary, summary
    assert "backends" in description and "trained with" in description and "run it here" in description, description


def test_every_dotted_name_the_readme_gives_is_reachable_as_written():
    """``fastminerf.train.write_curve`` (README, Curves) failed with "AttributeError: 'function' object has no
    attribute 'write_curve'": the package's ``train`` is the function, which hides the module of that name from
    attribute access (``import fastminerf.train as T`` gives the function too)."""
    import fastminerf

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = sorted(set(re.findall(r"`(fastminerf(?:\.[A-Za-z_]\w*)+)`", readme)) - {"fastminerf._C"})  # loaded on first use
    broken = []
    for name in names:
        obj = fastminerf
        try:
            for part in name.split(".")[1:]:
                obj = getattr(obj, part)
        except AttributeError:
            broken.append(name)
    assert not broken, f"README names {broken}, which `import fastminerf` does not reach"


def test_every_name_the_package_exports_is_in_its_modules_all():
    """fastminerf exports write_curve from fastminerf.train (README: fastminerf.write_curve), but train.py's __all__,
    the module's list of its public names, left it out: `from fastminerf.train import *` gave every other name the
    package exports from it but not write_curve. Every name the package imports from one of its modules is in that
    module's __all__ (a module without one exports every public name)."""
    import ast
    import importlib

    missing = []
    for node in ast.walk(ast.parse((ROOT / "fastminerf" / "__init__.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            module = importlib.import_module(f"fastminerf.{node.module}")
            public = getattr(module, "__all__", None)
            missing += [f"{node.module}.{a.name}" for a in node.names if public is not None and a.name not in public]
    assert not missing, f"exported by fastminerf but not in their module's __all__: {missing}"


def test_the_readmes_notebook_example_shows_progress_and_runs(tmp_path, monkeypatch, capsys):
    """The library prints nothing, and the README said nowhere how a notebook (or any Python session) sees the
    progress of train / evaluate: only the monitor hook was documented. Its notebook example runs as written (on
    tiny settings) and its progress lines come out."""
    import numpy as np

    from fastminerf.data.synth import generate

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "# in a notebook" in b]
    assert len(blocks) == 1, "README has no notebook example (a python block marked '# in a notebook')"
    code = blocks[0]
    assert 'fm.load_config("cpu")' in code
    code = code.replace('fm.load_config("cpu")', 'fm.load_config("tiny", ["train.steps=4", "train.log_every=2"])')
    generate(tmp_path / "data", n_identities=2, n_frames=6, size=16, seed=1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README notebook example", "exec"), scope)
    shown = capsys.readouterr().out
    assert "\rstep 4/4 " in shown and "frames" in shown, shown
    assert scope["result"].step == 4 and set(scope["scores"]["identities"]) == {"id000", "id001"}
    image = scope["image"]
    assert image.dtype == np.float32 and image.ndim == 3 and 0 <= image.min() and image.max() <= 1


def _readme_command_lines() -> list:
    """The `fastminerf ...` / `python -m fastminerf ...` command lines of the README, as (line, from a bash block):
    its bash blocks' lines (continuations joined, comments dropped) and its inline ones."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        block = re.sub(r"\\\n\s*", " ", block)  # a backslash continuation
        block = re.sub(r"\n\s+(?=\[)", " ", block)  # an indented continuation of options
        lines += [(re.split(r"\s#", line)[0].strip(), True) for line in block.splitlines()]
    lines += [(line, False) for line in re.findall(r"`((?:python -m )?fastminerf [^`]*)`", readme)]
    lines = [(re.sub(r"^python -m ", "", " ".join(line.split())), b) for line, b in lines]
    return [(line, b) for line, b in lines if re.match(r"fastminerf( |$)", line)]


def test_every_option_the_readme_gives_a_command_exists():
    """Each `--option` of a README command line is an option of that command (of its subcommand for bench), so a
    renamed or dropped option cannot leave the README teaching it; and a bash block's line without placeholders
    ([...], ..., upper-case names) parses as it is written."""
    import shlex

    from fastminerf.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices

    def options(parser):
        names = set()
        for action in parser._actions:
            names.update(action.option_strings)
            if isinstance(action.choices, dict):  # bench's subcommands
                for sub in action.choices.values():
                    names |= options(sub)
        return names

    lines = _readme_command_lines()
    assert len(lines) > 20, lines
    wrong, unparsed = [], []
    for line, in_block in lines:
        words = line.split()
        if len(words) < 2 or words[1].startswith("-"):  # fastminerf --version
            given, known = set(words[1:]), options(build_parser())
        elif words[1] not in commands:
            wrong.append((line, words[1]))
            continue
        else:
            given, known = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", line)), options(commands[words[1]])
        wrong += [(line, name) for name in sorted(given - known) if name.startswith("--")]
        if in_block and not re.search(r"[\[\]]|\.\.\.|\b[A-Z]{2,}\b", line) and "--version" not in line:
            try:
                build_parser().parse_args(shlex.split(line)[1:])
            except SystemExit:
                unparsed.append(line)
    assert not wrong, f"README command lines name options their command lacks: {wrong}"
    assert not unparsed, f"README command lines the command line parser refuses: {unparsed}"


def test_every_make_target_the_docs_name_exists():
    """`make X` in the README, and the Makefile's header comment, names a target of the Makefile."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    named = re.findall(r"`make ([\w-]+)", (ROOT / "README.md").read_text(encoding="utf-8"))
    named += re.findall(r"^#\s+make ([\w-]+)", makefile, re.M)
    assert len(named) >= 5 and not set(named) - targets, (sorted(set(named) - targets), sorted(targets))


def test_the_readmes_data_and_library_examples_run(tmp_path, monkeypatch):
    """The README's other python blocks (Data: load_dataset + RaySampler; Model and training: load_config, train,
    load_run, render_batch) run as written on a tiny procedural dataset, their presets made tiny, and give what
    their comments say."""
    import torch

    from fastminerf.data.synth import generate

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "# in a notebook" not in b]
    assert len(blocks) == 2, blocks
    data, library = blocks
    generate(tmp_path / "data", n_identities=2, n_frames=6, size=16, seed=1)
    monkeypatch.chdir(tmp_path)
    assert '"path/to/root"' in data and "90 % of rays inside the face box" in data
    scope: dict = {}
    exec(compile(data.replace('"path/to/root"', '"data"'), "README data example", "exec"), scope)
    batch, sampler = scope["batch"], scope["sampler"]
    assert batch.origins.shape == (4096, 3) and sampler.face_fraction == 0.9
    named = re.search(r"# RayBatch: (.*)", data).group(1).split(", ")
    assert named == [f.name for f in dataclasses.fields(batch)], named
    assert 'fm.load_config("cpu", ["model.field.conditioning=concat"])' in library
    code = library.replace('fm.load_config("cpu", [', 'fm.load_config("tiny", ["train.steps=4", ')
    scope = {}
    exec(compile(code, "README library example", "exec"), scope)
    assert type(scope["model"]).__name__ == "MINeRF" and not scope["model"].training
    assert scope["cfg"].model.field.conditioning == "concat" and scope["result"].step == 4
    rgb = scope["out"]["rgb"]
    assert rgb.shape == (16 * 16, 3) and torch.isfinite(rgb).all()


def test_dataset_md_names_every_key_synth_writes_and_the_reader_reads_each_it_lists(tmp_path):
    """docs/DATASET.md, the layout's contract: each key of a transforms file (and of its frames) that synth writes is
    in its tables, each key its tables list is one the reader (fastminerf/data/layout.py) reads, and the files it
    names for an identity folder are those synth writes."""
    import json

    from fastminerf.data.synth import generate

    doc = (ROOT / "docs" / "DATASET.md").read_text(encoding="utf-8")
    tables = re.findall(r"^## transforms_<split>\.json\n(.*?)^## ", doc, re.M | re.S)[0]
    listed = set(re.findall(r"^\| `(\w+)`(?:, `(\w+)`)? \|", tables, re.M))
    listed = {k for pair in listed for k in pair if k}
    generate(tmp_path / "data", n_identities=2, n_frames=6, size=16, seed=1)
    folder = tmp_path / "data" / "id000"
    written = set()
    for path in folder.glob("transforms_*.json"):
        meta = json.loads(path.read_text(encoding="utf-8"))
        written |= set(meta) | {k for frame in meta["frames"] for k in frame}
    assert not written - listed, f"synth writes keys docs/DATASET.md does not list: {sorted(written - listed)}"
    reader = (ROOT / "fastminerf" / "data" / "layout.py").read_text(encoding="utf-8")
    unread = sorted(k for k in listed if f'"{k}"' not in reader)
    assert not unread, f"docs/DATASET.md lists keys the reader never reads: {unread}"
    for name in ("transforms_train.json", "transforms_val.json", "bg.png", "audio.wav"):
        assert name in doc and (folder / name).is_file(), name


def test_prepare_help_names_every_file_prepare_writes():
    """prepare --help listed the transforms files, frames, masks, bg.png, audio.wav and contact_sheet.png, but not
    landmarks.npz (the depth prior's and mouth rays' landmarks), prepare.json (counts, crop, settings, pose gaps; the
    folder's finished mark) nor OUT/expression_basis.npz, the file a later prepare's --basis takes (README, Real
    videos, lists them all)."""
    from fastminerf.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["prepare"]
    text = " ".join(sub.format_help().split())
    for name in ("transforms_{train,val,test}.json", "frames", "masks", "bg.png", "audio.wav", "landmarks.npz",
                 "contact_sheet.png", "prepare.json", "OUT/expression_basis.npz"):
        assert name in text, name


def test_synth_help_names_every_file_synth_writes(tmp_path):
    """synth --help said it writes 'procedural talking heads in the shared layout ... and OUT/contact_sheet.png': not
    the audio.wav (what speech learns from) nor the bg.png each identity gets, nor synth.json; generate()'s docstring
    left out audio.wav. Both name every file a generation writes (checked against one)."""
    from fastminerf.cli import build_parser
    from fastminerf.data.synth import generate

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["synth"]
    text = " ".join(sub.format_help().split())
    doc = " ".join(generate.__doc__.split())
    generate(tmp_path, n_identities=1, n_frames=4, size=16, seed=0, novel_frames=1)
    written = [p.name for folder in (tmp_path / "id000", tmp_path) for p in sorted(folder.iterdir())
               if not p.name.startswith(".")]  # the .lock a writer holds (README, Running it twice)
    for name in written:
        if name.startswith("transforms_") or name == "id000":
            name = "transforms_{train,val,novel}.json" if name.startswith("transforms_") else "id000"
        assert name in text, name
        assert name in doc or name == "contact_sheet.png", name


def test_readme_says_what_exit_statuses_mean_and_what_an_interrupted_render_leaves(tmp_path):
    """The README gave exit statuses only for synth's and prepare's Ctrl-C (130 / 143): not the 2 of every refused
    call (what a script tests), that a refused call leaves no folder it made, nor what a render stopped by Ctrl-C
    leaves (9930190: no OUT.mp4, the --png-dir frames written so far), which the command says on its last line."""
    import numpy as np
    import pytest

    from fastminerf.cli import main
    from fastminerf.render import write_video

    out = tmp_path / "new" / "data"
    assert main(["synth", "--out", str(out), "--identities", "0"]) == 2 and not out.parent.exists()

    def stopped():
        yield np.zeros((8, 8, 3), np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as stop:
        write_video(stopped(), tmp_path / "OUT.mp4", png_dir=tmp_path / "DIR")
    said = " ".join(f"interrupted {stop.value}".replace(str(tmp_path) + "/", "").split()[:6])  # 'interrupted before the video OUT.mp4 was written;'
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "status 2" in readme
    assert "leaves no folder it made" in readme
    assert f"`{said}" in readme, said


def test_render_help_of_no_audio_says_what_each_kind_of_video_carries_without_it():
    """render --help's --no-audio said 'default: a driven video carries the driver's audio.wav, or a driver video's own
    sound': nothing of --speech, whose video carries the recording (at its own rate and channels since 4545bc1) and
    which --no-audio silences too, nor that an orbit has no sound to silence."""
    from fastminerf.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["render"]
    action = next(a for a in sub._actions if "--no-audio" in a.option_strings)
    assert "--speech" in action.help and "recording" in action.help, action.help
    assert "orbit" in action.help, action.help


def test_render_docs_say_what_the_video_file_is_and_where_the_exact_frames_are():
    """Neither the README nor render --help said what OUT.mp4 holds for a viewer or a comparison: H.264 in yuv420p
    at x264's crf 10 (chroma halved: 42 dB against the rendered frames), BT.709-tagged, its index first for the web;
    and that the --png-dir frames, not the mp4, are the render's exact 8-bit values (what a research comparison
    needs)."""
    from fastminerf.cli import build_parser

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    bullet = re.search(r"\n- Video files[^\n]*(?:\n  [^\n]*)*", readme)
    assert bullet is not None, "no 'Video files' bullet in the README"
    for said in ("yuv420p", "crf 10", "BT.709", "faststart", "--png-dir", "exact", "30000/1001"):
        assert said in bullet.group(0), said
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["render"]
    action = next(a for a in sub._actions if "--png-dir" in a.option_strings)
    assert "exact" in action.help and "lossy" in action.help, action.help


def test_the_native_ops_docs_say_a_second_derivative_needs_the_reference():
    """Since 380bd2e a second derivative through a native op (create_graph=True: a penalty on the density's gradient)
    raises, where it was silently wrong; hash_encode, composite and mlp_head still said 'differentiable with respect to
    ...' without a word of it, nor did the README's engine section or the ops package: a user learnt it from the
    error, after writing the loss."""
    from fastminerf import ops

    for fn in (ops.hash_encode, ops.composite, ops.mlp_head):
        doc = " ".join(fn.__doc__.split())
        assert "second derivative" in doc and "backend=\"torch\"" in doc, fn.__name__
    assert "second derivative" in " ".join(ops.__doc__.split())
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "second derivative" in readme


def test_dataset_md_says_what_audio_wav_may_hold_and_a_driven_video_plays_it_as_it_is(tmp_path):
    """docs/DATASET.md called audio.wav an 'optional speech track aligned with the frames' without its format: a
    converter's author could not tell whether a 48 kHz stereo recording must be made 16 kHz mono (prepare's), which
    speech and, since e42c4f9, a driven video's soundtrack take as it is (the video at its rate and channels)."""
    import numpy as np

    from fastminerf.audio import Audio, write_wav
    from fastminerf.data import load_dataset
    from fastminerf.data.synth import generate
    from fastminerf.render import drive_path

    generate(tmp_path / "d", n_identities=1, n_frames=4, size=16, seed=0, novel_frames=1)
    wav = tmp_path / "d" / "id000" / "audio.wav"
    write_wav(wav, Audio(np.zeros((48000, 2), np.int16), 48000))
    data = load_dataset([tmp_path / "d"], splits=("train",))
    sound = drive_path(data, "id000", data, "train").soundtrack()
    assert (sound.rate, sound.channels) == (48000, 2)
    row = next(line for line in (ROOT / "docs" / "DATASET.md").read_text(encoding="utf-8").splitlines()
               if line.strip().startswith("audio.wav"))
    assert "PCM WAV" in row and "any rate" in row and "16 kHz mono" in row, row


def test_the_soundtrack_docstrings_say_where_it_comes_from_and_how_it_is_read(tmp_path):
    """render_video's docstring gave the mp4 sound only for 'a driven path whose driver has audio.wav': not a
    speech_path's recording (render --speech), nor that the recording is played at its own rate and channels
    (4545bc1, e42c4f9); fastminerf.audio called itself 'pure functions on numpy arrays plus small WAV helpers (the
    standard library's wave)', though read_recording and decode_sound run ffmpeg for any other file (an mp3)."""
    import numpy as np

    from fastminerf import audio
    from fastminerf.audio import Audio, decode_sound, write_wav
    from fastminerf.render import render_video

    write_wav(tmp_path / "a.wav", Audio(np.zeros((4410, 2), np.int16), 44100))
    assert decode_sound(tmp_path / "a.wav", rate=16000).rate == 16000  # through ffmpeg
    module = " ".join(audio.__doc__.split())
    assert "ffmpeg" in module, module
    doc = " ".join(render_video.__doc__.split())
    assert "speech_path" in doc and "own rate and channels" in doc, doc


def test_readme_says_what_a_stopped_eval_or_speech_leaves(tmp_path, monkeypatch):
    """A stopped eval --out or speech printed only 'interrupted', and the README said what a stopped train,
    personalize, synth, prepare or render leaves, not these: eval --out keeps the side-by-side images of the frames
    scored so far and has no metrics.json (an earlier one was removed at the start); speech writes no model (a
    folder made for it is removed)."""
    import fastminerf.speech
    from fastminerf.cli import main
    from fastminerf.data.synth import generate

    generate(tmp_path / "d", n_identities=1, n_frames=6, size=16, seed=0, novel_frames=1)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fastminerf.speech, "train_speech", stopped)
    assert main(["speech", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "m" / "speech.pt")]) == 130
    assert not (tmp_path / "m").exists()
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "A stopped `speech` writes no model" in readme
    assert "A stopped `eval --out` writes no `metrics.json`" in readme


def test_readmes_speech_section_names_the_library_calls_that_make_a_lip_sync_video(tmp_path):
    """The render section ends with the library functions that do what its commands do; the Speech section named
    none (fastminerf/speech.py only), so a library user had no way in to `speech` and `render --speech`. Its Library
    line names them, and they run as named on a tiny procedural dataset: learn, save, load, a path, a video."""
    import fastminerf as fm
    from fastminerf.data.synth import generate

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Speech: a person saying"):readme.index("## The native engine")]
    line = " ".join(re.search(r"\nLibrary: (.*?)\n\n", section, re.S).group(1).split())
    for name in ("load_speech_clips", "train_speech", "save_speech_model", "load_speech_model", "speech_path",
                 "render_video"):
        assert re.search(rf"\b{name}\b", line), name

    generate(tmp_path / "d", n_identities=1, n_frames=12, size=16, seed=0, novel_frames=1)
    found = fm.load_speech_clips([tmp_path / "d"])
    speech = fm.train_speech(found.clips, fm.SpeechConfig(steps=2, calibrate=0),
                             expression_space=found.expression_space)
    fm.save_speech_model(tmp_path / "speech.pt", speech)
    cfg = fm.load_config("tiny", ["train.steps=2"])
    result = fm.train(cfg, [tmp_path / "d"], tmp_path / "run")
    data = fm.load_dataset([tmp_path / "d"], splits=("train",))
    path = fm.speech_path(data, "id000", fm.load_speech_model(tmp_path / "speech.pt"), tmp_path / "d" / "id000" / "audio.wav")
    info = fm.render_video(result.model, path, "id000", tmp_path / "out.mp4", aabb=result.model.aabb.tolist())
    assert info.audio_seconds > 0 and (tmp_path / "out.mp4").is_file()


def test_readme_layout_says_what_audio_py_does_now():
    """The Layout called audio.py 'a driver's speech cut to its frames'; since 4545bc1 it also reads the recording of
    render --speech (read_recording: any file ffmpeg decodes, at its own rate and channels), the soundtrack of every
    video with sound."""
    entry = re.search(r"audio\.py \((.*?)\)", " ".join(_layout().split())).group(1)
    assert "recording" in entry, entry


def test_readme_and_train_help_say_what_a_config_file_holds_and_how_set_reads_values(tmp_path):
    """`train --config FILE` was documented as 'preset name ... or YAML file; default cpu', and the README said nothing
    more of a config file than the Layout's 'a preset holds only its differences': nothing said that a file starts
    from the library's defaults (fastminerf/config.py), not from the default cpu preset, unless it says `extends:`,
    where each key is documented, how --set reads lists, null and booleans, or that RUN/config.yaml trains the same
    run again. A user's `train: {steps: 100}` file trained the defaults' 4,096-ray batches without error-map rays."""
    from fastminerf import load_config
    from fastminerf.cli import build_parser
    from fastminerf.config import RunConfig

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Model and training\n", 1)[1].split("\n## ", 1)[0]
    text = " ".join(section.split())
    for claim in ("`extends: cpu`", "`fastminerf/config.py`", "not from the `cpu` preset", "`[8,32]` or `8,32`",
                  "`null`", "the last wins", "`--config RUN/config.yaml`"):
        assert claim in text, claim
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    assert "extends" in " ".join(sub.format_help().split())
    # the claims hold
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  steps: 100\n")
    assert load_config(mine).sampler == RunConfig().sampler != load_config(None).sampler  # None: the cpu preset
    mine.write_text("extends: cpu\ntrain:\n  steps: 100\n")
    assert load_config(mine) == load_config("cpu", ["train.steps=100"])
    assert load_config("tiny", ["model.prune_stages=[8,32]"]) == load_config("tiny", ["model.prune_stages=8,32"])
    assert load_config("tiny", ["train.steps=3", "train.steps=5"]).train.steps == 5
    assert load_config("tiny", ["train.max_seconds=null"]).train.max_seconds is None


def test_readme_names_every_key_of_a_log_line_and_what_loss_and_psnr_cover(tmp_path):
    """A researcher plots RUN/log.jsonl with their own script from README's Curves bullet, which listed "step, seconds,
    loss, training PSNR, rays/s, samples/ray, phase": each line also has ``occupied``, the keys' spellings were not
    given, and nothing said that ``loss`` is the logged step's alone while ``psnr`` is over the steps since the
    previous line (so the two curves do not agree point by point) nor what ``seconds`` counts."""
    import json

    from fastminerf import load_config, train
    from fastminerf.data.synth import generate

    dirs = generate(tmp_path / "d", n_identities=1, n_frames=4, size=16, seed=0)
    train(load_config("tiny", ["train.steps=2", "train.log_every=1"]), dirs, tmp_path / "run")
    keys = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    curves = " ".join(re.search(r"- \*\*Curves\*\*: (.*?)\n- \*\*", readme, re.S).group(1).split())
    missing = [k for k in keys if f"`{k}`" not in curves]
    assert not missing, f"README's Curves bullet does not name {missing}"
    assert "the logged step's own" in curves and "since the previous line" in curves


def test_dataset_md_says_where_the_principal_point_is_measured_from():
    """docs/DATASET.md gave intrinsics 'in pixels of the stored images' and, apart, 'a ray passes through the pixel
    centre (i + 0.5, j + 0.5)', without saying from where cx and cy count: a converter of OpenCV calibrations (pixel
    centres at whole numbers, the image centre at (w - 1) / 2) wrote cx, cy half a pixel off. The row says that they
    count from the image's top-left corner, and the loader's rays agree: cx = w / 2 is the middle of the image
    (the rays of pixels w/2 - 1 and w/2 mirror each other), and so is OpenCV's (w - 1) / 2 plus 0.5."""
    import torch

    from fastminerf.data import camera_rays

    doc = (ROOT / "docs" / "DATASET.md").read_text(encoding="utf-8")
    row = next(line for line in doc.splitlines() if line.startswith("| `intrinsics` | one of these two"))
    assert "top-left corner" in row and "OpenCV" in row and "0.5" in row, row
    w = h = 8
    opencv_cx = (w - 1) / 2
    _, d = camera_rays(torch.eye(4), [10.0, 10.0, opencv_cx + 0.5, opencv_cx + 0.5], w, h,
                       pixels=[[w // 2 - 1, h // 2 - 1], [w // 2, h // 2]])
    torch.testing.assert_close(d[0, :2], -d[1, :2])


def test_dataset_md_says_every_use_training_makes_of_landmarks_npz(tmp_path):
    """docs/DATASET.md said training uses landmarks.npz 'only when train.landmark_depth_weight > 0', but the mouth
    rays (sampler.mouth_fraction, on in the video preset) and eye rays (sampler.eye_fraction) are drawn in boxes
    round its lips and lids with the depth prior off, when its points are mediapipe's face mesh: a converter's author
    could not tell that the points' order matters, nor that a file changes where rays go without the prior."""
    import numpy as np

    from fastminerf.data import RaySampler, load_dataset
    from fastminerf.data.synth import generate
    from fastminerf.data.writer import write_landmarks

    doc = (ROOT / "docs" / "DATASET.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Optional extension: `landmarks.npz`"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    for words in ("landmark_depth_weight", "mouth_fraction", "eye_fraction", "468", "478"):
        assert words in section, words
    generate(tmp_path / "d", n_identities=1, n_frames=3, size=16, seed=0)
    folder = tmp_path / "d" / "id000"
    index = load_dataset([folder], splits=("train",)).table("train").frame_index
    pts = np.random.default_rng(0).uniform(-0.2, 0.2, (len(index), 478, 3)).astype(np.float32)
    write_landmarks(folder, index, pts, np.ones(pts.shape[:2], bool))
    sampler = RaySampler(load_dataset([folder], splits=("train",)), "train", batch_size=64, mouth_fraction=0.5)
    assert sampler.mouth_box_pixels(0) is not None  # the file steers rays with no depth prior in sight


def _dataset_tree() -> str:
    """The folder tree at the top of docs/DATASET.md (its first code block)."""
    doc = (ROOT / "docs" / "DATASET.md").read_text(encoding="utf-8")
    return re.search(r"```\n(.*?)```", doc, re.S).group(1)


def dataset_tree_misses(folders, placeholders) -> list:
    """The entries of ``folders`` (files and folders, hidden ones included) that docs/DATASET.md's tree does not
    name: a folder as ``name/``, or as its placeholder (``placeholders``: an identity folder's name to
    ``<identity>``, a split's folder of frames to ``<split>``), a transforms file as itself or as
    ``transforms_<split>.json``."""
    tree = _dataset_tree()
    missing = []
    for folder in folders:
        for entry in sorted(Path(folder).iterdir()):
            token = placeholders.get(entry.name, entry.name) + ("/" if entry.is_dir() else "")
            if re.fullmatch(r"transforms_\w+\.json", token) and "transforms_<split>.json" in tree:
                continue
            if token not in tree:
                missing.append(f"{Path(folder).name}/{token}")
    return missing


def test_dataset_md_tree_names_every_file_and_folder_synth_writes(tmp_path):
    """docs/DATASET.md's tree listed transforms files, bg.png, audio.wav and frames: not the masks (mask_path's
    files), landmarks.npz, the root's expression_basis.npz, nor the files of synth and prepare beside them
    (synth.json, synth_identity.json, contact_sheet.png, .lock), each described elsewhere: a reader of a dataset
    folder could not tell which of its files the layout reads and which its writers keep for themselves."""
    from fastminerf.data.synth import generate

    generate(tmp_path, n_identities=1, n_frames=4, size=16, seed=0, novel_frames=1)
    (tmp_path / ".lock").touch()  # held while a writer writes the folder (README, Two jobs on one folder)
    places = {"id000": "<identity>", **{split: "<split>" for split in ("train", "val", "novel")}}
    missing = dataset_tree_misses([tmp_path, tmp_path / "id000"], places)
    assert not missing, f"docs/DATASET.md's tree does not name what synth writes: {missing}"
    tree = _dataset_tree()
    for name in ("masks/", "landmarks.npz", "expression_basis.npz", "prepare.log", "prepare.json", ".prepare/",
                 "frames/", "contact_sheet.png"):  # prepare's (tests/test_prepare.py lists a prepared root)
        assert name in tree, f"docs/DATASET.md's tree does not name prepare's {name}"


def test_readmes_notebook_paragraph_names_every_key_a_progress_callback_gets(tmp_path):
    """README's "In a notebook" paragraph said train's progress(record) gets the log record "(step, seconds, loss,
    psnr, rays_per_s, samples_per_ray, phase) plus total_steps and max_seconds": the record has ``occupied`` too
    (88a0902 named it in the Curves bullet), so a notebook's callback written from the paragraph missed a key it
    is given. Checked against the records a tiny training passes."""
    from fastminerf import load_config, train
    from fastminerf.data.synth import generate

    dirs = generate(tmp_path / "d", n_identities=1, n_frames=4, size=16, seed=0)
    records = []
    train(load_config("tiny", ["train.steps=2", "train.log_every=1"]), dirs, tmp_path / "run", progress=records.append)
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    said = re.search(r"call `progress\(record\)` (.*?)`evaluate`", readme).group(1)
    missing = [k for k in records[0] if f"`{k}`" not in said]
    assert not missing, f"README's notebook paragraph does not name the progress record's {missing}"


def test_prepare_and_synth_help_give_each_options_default():
    """prepare --help and synth --help (whose options' help is their config fields' docstrings) gave no default:
    'prepare --help' never said that frames are written at 256 px, nor the 32 coefficients, the 0.1 splits, the 2.4
    crop, the 1.65 focal factor or the 10 frames a video needs, which the README's synopsis quotes and demo's,
    render's and bench's help give. Each option of a value says its default (the config's, what the command runs)."""
    from fastminerf.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in ("prepare", "synth"):
        sub = commands[name]
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS==") and action.nargs != 0:
                text = " ".join(sub._get_formatter()._expand_help(action).split())
                shown = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
                assert f"(default {shown})" in text, (name, action.option_strings, text)


def test_readmes_second_synth_gives_personalize_a_new_person(tmp_path, monkeypatch, capsys):
    """Model and training's commands made the generic data with `fastminerf synth data ...` and personalised with
    `--data new_person`, but said nowhere how to make new_person: a second `synth` wrote id000 again, taken for the
    model's own id000 ('the model run was trained on other frames'). The README's second synth line writes a head of
    a new name and person, and its personalize line adds it (the lines run as written, made small)."""
    import torch

    from fastminerf.cli import main

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Model and training\n\n```bash\n(.*?)```", readme, re.S).group(1)
    lines = [re.split(r"\s#", line)[0].split() for line in block.splitlines()]
    synths = [words for words in lines if words[:2] == ["fastminerf", "synth"]]
    personalize = next(words for words in lines if words[:2] == ["fastminerf", "personalize"])
    assert len(synths) == 2 and synths[0][2] == "data" and "new_person" in personalize, block
    small = {"--frames": "6", "--size": "16"}
    monkeypatch.chdir(tmp_path)
    for words in synths:
        words = [small.get(words[i - 1], w) if i else w for i, w in enumerate(words)]
        assert main(words[1:] + ["--no-contact-sheet"]) == 0
    assert synths[1][2] == "new_person"
    generic = sorted(p.name for p in (tmp_path / "data").iterdir() if p.is_dir())
    new = sorted(p.name for p in (tmp_path / "new_person").iterdir() if p.is_dir())
    assert new and not set(new) & set(generic), (generic, new)
    assert main(["train", "--data", "data", "--out", "run", "--config", "tiny", "--steps", "2"]) == 0
    assert main(["personalize", "--run", "run", "--data", "new_person", "--out", "run2", "--steps", "2"]) == 0
    capsys.readouterr()
    names = torch.load(tmp_path / "run2" / "checkpoint.pt", map_location="cpu", weights_only=False)["identity_names"]
    assert list(names) == generic + new
    first = json.loads((tmp_path / "data" / "id000" / "synth_identity.json").read_text())
    added = json.loads((tmp_path / "new_person" / new[0] / "synth_identity.json").read_text())
    assert added["params"] != first["params"]  # another person, not the first head again under a new name


def test_the_last_frames_options_say_last_is_the_order_transforms_train_lists_them(tmp_path):
    """model.field.frame_code_from_last and model.torso.shift_from_last take an identity's last K training frames in
    the order transforms_train.json lists them (the frame codes' order), not by frame_index or time, which a frame
    may carry: their docs said 'last' (and last_frames_mean 'in time') without saying which order. They say it, as
    docs/DATASET.md does; and the frames read are kept in the file's order, as said: reversed in the file, the last
    two rows are the file's last two (frame_index 1 and 0), which the mean of the model's last two codes follows."""
    import numpy as np
    import torch

    from fastminerf import load_config, load_dataset
    from fastminerf.cli import _field_docs
    from fastminerf.config import FieldConfig, TorsoConfig
    from fastminerf.data.synth import generate
    from fastminerf.model import MINeRF

    for cls, name in ((FieldConfig, "frame_code_from_last"), (TorsoConfig, "shift_from_last")):
        doc = " ".join(_field_docs(cls)[name].split())
        assert "transforms_train.json" in doc and "not by frame_index or time" in doc, (name, doc)
    dataset_md = " ".join((ROOT / "docs" / "DATASET.md").read_text(encoding="utf-8").split())
    assert "in the order the file lists them" in dataset_md and "frame_code_from_last" in dataset_md
    assert "shift_from_last" in dataset_md
    d = generate(tmp_path / "data", n_identities=1, n_frames=6, size=16, seed=0)[0]
    path = d / "transforms_train.json"
    meta = json.loads(path.read_text())
    assert [f["frame_index"] for f in meta["frames"]] == [0, 1, 2, 3, 4]  # synth lists its frames in time order
    meta["frames"] = meta["frames"][::-1]
    path.write_text(json.dumps(meta))
    table = load_dataset(d).table("train")
    assert table.frame_index.tolist() == [4, 3, 2, 1, 0]  # as listed: not sorted by frame_index
    cfg = load_config("tiny", ["model.field.frame_code_from_last=2"])
    model = MINeRF(cfg.model, table.expression.shape[1], ["id000"], torch.zeros(len(table), dtype=torch.long))
    with torch.no_grad():
        model.frame_codes.weight.copy_(torch.from_numpy(table.frame_index.astype(np.float32))[:, None])
    assert torch.allclose(model.mean_frame_codes(), torch.full_like(model.mean_frame_codes(), 0.5))
