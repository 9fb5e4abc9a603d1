"""`lumina generate`, `lumina demo` and `lumina eval shapes` on the embedded model: bad values and bad
--out refused before the model loads, PNGs written batch by batch and never clobbered, one option
vocabulary with every default shown."""

import argparse
import json
import math
import re

import pytest
from PIL import Image

from lumina_mgpt import cli
from lumina_mgpt.cli import main
from lumina_mgpt.errors import LuminaError
from lumina_mgpt.generation.cli import EMBEDDED_PROJECT_FILE
from lumina_mgpt.generation.outputs import file_slug
from lumina_mgpt.generation.engine import Engine
from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.model_folder import EMBEDDED_MODEL, FAMILY_DEFAULTS, PROJECT_FILE

TINY = ["--width", "32", "--height", "32", "--device", "cpu"]


def generate(args, tmp_path, *extra):
    return main(["generate", *args, *TINY, "--out", str(tmp_path / "out"), *extra])


def pngs(folder):
    return sorted(p.name for p in folder.iterdir())


def test_pngs_are_written_as_each_batch_finishes_and_survive_a_crash(tmp_path, monkeypatch, capsys):
    on_disk_at_each_batch = []
    original = Engine.generate_images

    def crash_on_third_batch(self, *args, **kwargs):
        on_disk_at_each_batch.append(len(list((tmp_path / "out").glob("*.png"))))
        if len(on_disk_at_each_batch) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate_images", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        generate(["a red circle", "two blue squares"], tmp_path, "-n", "3", "--batch-size", "2", "--seed", "9")
    assert on_disk_at_each_batch == [0, 2, 4]
    assert pngs(tmp_path / "out") == [
        "000-a-red-circle-seed9.png", "001-a-red-circle-seed10.png", "002-a-red-circle-seed11.png",
        "003-two-blue-squares-seed12.png",
    ]
    for name in pngs(tmp_path / "out"):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.size == (32, 32)
            assert json.loads(image.text["parameters"])["seed"] == int(re.search(r"seed(\d+)", name).group(1))
    out, err = capsys.readouterr()
    # Paths go to stdout, each on a line of its own; the loading line and bars go to stderr.
    assert out.splitlines() == [str(tmp_path / "out" / name) for name in pngs(tmp_path / "out")]
    assert f"loading model from {EMBEDDED_MODEL}" in err


def test_existing_files_are_kept_unless_overwrite(tmp_path, capsys):
    args = ["a red circle", "--seed", "3"]
    assert generate(args, tmp_path) == 0
    first = (tmp_path / "out" / "000-a-red-circle-seed3.png").read_bytes()
    assert generate(args, tmp_path, "--temperature", "0") == 0
    assert pngs(tmp_path / "out") == ["000-a-red-circle-seed3-1.png", "000-a-red-circle-seed3.png"]
    assert (tmp_path / "out" / "000-a-red-circle-seed3.png").read_bytes() == first
    assert generate(args, tmp_path, "--temperature", "0", "--overwrite") == 0
    assert pngs(tmp_path / "out") == ["000-a-red-circle-seed3-1.png", "000-a-red-circle-seed3.png"]
    assert (tmp_path / "out" / "000-a-red-circle-seed3.png").read_bytes() == (
        tmp_path / "out" / "000-a-red-circle-seed3-1.png").read_bytes()
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "out" / "000-a-red-circle-seed3.png")


BAD_ARGUMENTS = [
    (["--width", "0"], "image size 0x32 is not accepted by layout 'compact': sizes must be positive integers"),
    (["--height", "-16"], "sizes must be positive integers"),
    (["--width", "40"], "width and height must be multiples of 16"),
    (["--cfg", "inf"], "cfg must be a finite number >= 0 (classifier-free guidance; 1 disables it), got inf (float)"),
    (["--cfg", "nan"], "cfg must be a finite number >= 0"),
    (["--temperature", "inf"], "temperature must be a finite number >= 0 (0 is greedy), got inf (float)"),
    (["--temperature", "-1"], "temperature must be a finite number >= 0"),
    (["--seed", str(2**63)], "seed must be an integer from 0 to 9223372036854775807"),
    (["--seed", "-1"], "seed must be an integer from 0 to 9223372036854775807"),
    (["--top-k", "0"], "top_k must be an integer >= 1"),
    (["--top-p", "0"], "top_p must be a number in (0, 1]"),
    (["--top-p", "1.5"], "top_p must be a number in (0, 1]"),
    (["-n", "0"], "num_images must be an integer >= 1"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1"),
    (["--sjd-window", "0"], "sjd_window must be an integer >= 1"),
    (["--device", "tpu9"], "unknown device 'tpu9'; accepted: cpu, cuda, cuda:N or mps"),
    (["--quant", "int3"], "unknown quantization 'int3'"),
]


@pytest.mark.parametrize("extra, message", BAD_ARGUMENTS)
def test_bad_values_are_one_line_errors_before_the_model_loads(tmp_path, capsys, extra, message):
    assert main(["generate", "a red circle", "--width", "32", "--height", "32", *extra,
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lumina generate: error: ") and err.count("\n") == 1, err
    assert message in err
    assert "loading model" not in err and not (tmp_path / "out").exists()


def test_the_api_and_the_cli_refuse_with_the_same_message(tmp_path, capsys):
    pipe = Pipeline.from_pretrained(device="cpu")
    for options, argv in [
        (dict(cfg=math.inf), ["--cfg", "inf"]),
        (dict(seed=-1), ["--seed", "-1"]),
        (dict(width=0), ["--width", "0"]),
        (dict(top_p=0.0), ["--top-p", "0"]),
    ]:
        with pytest.raises(LuminaError) as raised:
            pipe.generate("a red circle", **{"width": 32, "height": 32, **options})
        assert main(["generate", "a red circle", "--width", "32", "--height", "32", *argv,
                     "--out", str(tmp_path)]) == 2
        assert capsys.readouterr().err == f"lumina generate: error: {raised.value}\n"


def test_a_prompt_that_is_not_utf8_is_refused(tmp_path, capsys):
    # What `lumina generate $'\xff'` puts in sys.argv: the byte, surrogate-escaped.
    assert generate([b"a red \xff circle".decode("utf-8", "surrogateescape")], tmp_path) == 2
    err = capsys.readouterr().err
    assert "prompt 1 is not valid UTF-8 text: '\\udcff' (byte 0xff) at character 6" in err


def test_non_integer_sizes_are_argument_errors(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["generate", "a red circle", "--width", "64.0"])
    assert exited.value.code == 2
    assert "argument --width: invalid int value: '64.0'" in capsys.readouterr().err


def test_bad_out_is_refused_before_the_model_loads(tmp_path, capsys):
    file = tmp_path / "taken.png"
    file.write_bytes(b"png")
    assert generate(["a red circle"], tmp_path, "--out", str(file)) == 2
    err = capsys.readouterr().err
    assert f"output folder {file} is a file; give a folder" in err and "loading model" not in err
    assert generate(["a red circle"], tmp_path, "--out", str(file / "sub")) == 2
    err = capsys.readouterr().err
    assert "cannot write into output folder" in err and "loading model" not in err
    assert file.read_bytes() == b"png"


def test_read_only_out_is_refused(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the refusal cannot be observed")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert generate(["a red circle"], tmp_path, "--out", str(locked)) == 2
        assert "cannot write into output folder" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("prompt, slug", [
    ("a red circle to the left of a blue square", "a-red-circle-to-the-left-of-a-blue"),  # 41 characters whole
    ("Three YELLOW triangles!", "three-yellow-triangles"),
    ("x" * 50 + " tail", "x" * 40),
    ("?!", ""),
])
def test_file_names_cut_prompts_at_word_boundaries(prompt, slug):
    assert file_slug(prompt) == slug
    assert len(file_slug(prompt)) <= 40


def test_a_prompt_without_words_still_gets_a_file_name(tmp_path):
    assert generate(["?!"], tmp_path) == 0
    assert pngs(tmp_path / "out") == ["000-seed0.png"]


# ---------------------------------------------------------------------- one vocabulary
def verb_parser(verb: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"lumina {verb}")
    cli._load(cli.VERBS[verb][0]).add_arguments(parser)
    return parser


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each option by its first long name."""
    return {next(s for s in action.option_strings if s.startswith("--")): action
            for action in parser._actions if action.option_strings}


@pytest.mark.parametrize("verb", ["generate", "demo", "eval"])
def test_every_option_shows_its_default_and_model_and_out_exist(verb):
    actions = options(verb_parser(verb))
    assert {"--model", "--out", "--overwrite", "--device", "--seed"} <= set(actions)
    for name, action in actions.items():
        if name != "--help":
            assert "default" in action.help, f"lumina {verb} {name}: {action.help}"


def test_generate_and_eval_share_the_sampling_options():
    generate_options, eval_options = options(verb_parser("generate")), options(verb_parser("eval"))
    sampling = ["--seed", "--cfg", "--top-k", "--top-p", "--temperature", "--sjd", "--sjd-window", "--model",
                "--image-tokenizer", "--device", "--quant"]
    for name in sampling:
        assert generate_options[name].help == eval_options[name].help, name


def test_help_shows_the_models_real_defaults():
    from lumina_mgpt.generation.speculative import DEFAULT_WINDOW

    assert EMBEDDED_PROJECT_FILE == EMBEDDED_MODEL / PROJECT_FILE
    embedded = json.loads(EMBEDDED_PROJECT_FILE.read_text())["defaults"]
    actions = options(verb_parser("generate"))
    v1, v2 = FAMILY_DEFAULTS["lumina-mgpt"], FAMILY_DEFAULTS["lumina-mgpt-2"]
    temperature = f"embedded model {embedded['temperature']}, official v1/v2 {v1.temperature}"
    assert temperature in actions["--temperature"].help
    assert v1.temperature == v2.temperature and v1.cfg == v2.cfg
    assert f"embedded model {embedded['cfg']}, official v1/v2 {v1.cfg}" in actions["--cfg"].help
    assert (f"embedded model {embedded['image_top_k']}, official v1 {v1.image_top_k}, v2 {v2.image_top_k}"
            in actions["--top-k"].help)
    size = "x".join(map(str, embedded["size"]))
    assert f"embedded model {size}, official v1/v2 {v1.size[0]}x{v1.size[1]}" in actions["--width"].help
    assert f"(default: {DEFAULT_WINDOW})" in actions["--sjd-window"].help


# ---------------------------------------------------------------------- eval shapes and demo
def test_eval_prints_what_it_ran_and_drives_the_pipeline(tmp_path, monkeypatch, capsys):
    from lumina_mgpt.shapes.prompts import CANVAS_SIZES

    calls = []

    def blank(self, prompts, width, height, seed, **options):
        calls.append((len(prompts), width, height, seed, options))
        return [Image.new("RGB", (width, height), (225, 225, 225)) for _ in prompts]

    monkeypatch.setattr(Pipeline, "generate", blank)
    report = tmp_path / "report.json"
    argv = ["eval", "shapes", "--limit", "24", "--cfg", "3", "--temperature", "0.25", "--top-p", "0.9", "--seed", "4",
            "--device", "cpu", "--out", str(report)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"model: {EMBEDDED_MODEL} (layout compact, device cpu)" in out
    assert "settings: cfg 3 (constant), temperature 0.25, top-k 128, top-p 0.9, plain decoding" in out
    assert "seed: 4 (prompt k of the run uses seed 4 + k)" in out
    assert "(overall: the mean over categories" in out
    assert re.search(r"overall\s+\d+\s+0\.000", out)
    assert {(c[1], c[2]) for c in calls} == set(CANVAS_SIZES)
    assert all(c[4]["cfg"] == 3 and c[4]["temperature"] == 0.25 and c[4]["top_p"] == 0.9 for c in calls)
    # Seeds run on across calls: image k of the evaluation uses seed 4 + k.
    counts = [c[0] for c in calls]
    assert [c[3] for c in calls] == [4 + sum(counts[:i]) for i in range(len(counts))]
    assert json.loads(report.read_text())["overall"] == 0.0
    assert main(argv) == 2  # the report exists now
    assert f"--out {report} exists; pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


def test_eval_refuses_bad_options_before_loading(capsys):
    assert main(["eval", "shapes", "--top-k", "0", "--limit", "6"]) == 2
    err = capsys.readouterr().err
    assert "top_k must be an integer >= 1" in err and "loading model" not in err


def test_demo_sizes_and_refusals(tmp_path, capsys):
    from lumina_mgpt.demo import demo_sizes

    assert demo_sizes((64, 64), 16) == [(64, 64), (80, 48)]
    assert demo_sizes((768, 768), 32) == [(768, 768), (960, 576)]
    file = tmp_path / "file"
    file.write_text("")
    assert main(["demo", "--out", str(file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["demo", "--seed", str(2**63), "--out", str(tmp_path / "demo")]) == 2
    assert "seed must be an integer from 0" in capsys.readouterr().err
