"""`lumina edit | control | predict | caption | ask` (task_cli.add_task_commands): fast torch-free parsing,
defaults in every help, refusals before the model loads, and answers written on a tiny random model."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from PIL import Image
from test_tasks_api import tiny_task_pipeline

from lumina_mgpt.errors import FormatError, GenerationError
from lumina_mgpt.generation import task_cli
from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.shapes.tasks import PANEL, training_record

VERBS = task_cli.IMAGE_VERBS + task_cli.TEXT_VERBS


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="lumina")
    task_cli.add_task_commands(root.add_subparsers(dest="verb", required=True))
    return root


def verb_parser(verb: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "scene.png"
    training_record("edit_move", 0, 0).images[0].crop((0, 0, *PANEL)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, one_thread):
    """A project folder of a tiny random model that lists every task of the shapes task world."""
    folder = tmp_path_factory.mktemp("model")
    tiny_task_pipeline().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def draw_only_folder(tmp_path_factory, one_thread):
    """A project folder of a tiny random model trained (as its lumina.json says) only to draw."""
    folder = tmp_path_factory.mktemp("draw-only")
    tiny_task_pipeline(tasks=("text-to-image",)).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model loaded; the request should have been refused first")

    monkeypatch.setattr(Pipeline, "from_model_info", refuse)


@pytest.mark.parametrize("verb", VERBS)
def test_every_option_shows_its_default_and_the_vocabulary_is_shared(verb):
    actions = verb_parser(verb)._actions
    silent = [
        "/".join(a.option_strings)
        for a in actions
        if a.option_strings and not a.required and a.nargs != 0 and "default" not in (a.help or "")
    ]
    assert not silent, f"lumina {verb}: options whose help does not state their default: {silent}"
    options = {o for a in actions for o in a.option_strings}
    assert {"--model", "--seed", "--device"} <= options
    assert ({"--out", "--cfg", "--top-k", "--temperature", "--num-images"} <= options) == (verb in task_cli.IMAGE_VERBS)


def test_parsing_imports_no_torch():
    code = (
        "import sys, argparse\n"
        "from lumina_mgpt.generation.task_cli import add_task_commands\n"
        "root = argparse.ArgumentParser(); add_task_commands(root.add_subparsers(dest='verb'))\n"
        "root.parse_args(['edit', 'in.png', 'make it blue'])\n"
        "print(','.join(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "in.png"],  # --task is required
        ["edit", "in.png"],  # no instruction
        ["ask", "in.png"],  # no question
        ["edit", "in.png", "x", "--seed", "one"],
        ["caption", "in.png", "--cfg", "2"],  # text verbs sample no image
    ],
)
def test_argument_errors_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(argv)
    assert exit_info.value.code == 2 and "usage:" in capsys.readouterr().err


REFUSED = [
    (["edit", "{scene}", "make it blue", "--model", "{draw_only}"], GenerationError,
     "this model was not trained for 'edit' \\(its tasks: text-to-image\\)"),
    (["caption", "{scene}", "--model", "{draw_only}"], GenerationError, "this model was not trained for 'caption'"),
    (["edit", "{missing}", "make it blue"], FormatError, "does not exist"),
    (["control", "{scene}", "a circle", "--kind", "depth", "--model", "{model}"], GenerationError,
     "control kind 'depth' is not one this project model draws from; accepted: edges"),
    (["predict", "{scene}", "--task", "depth", "--model", "{model}"], GenerationError,
     "this model was not trained for 'depth'"),
    (["edit", "{scene}", "x", "--model", "{model}", "--width", "64"], GenerationError,
     "give both the width and the height"),
    (["edit", "{scene}", "x", "--model", "{model}", "--width", "40", "--height", "64"], FormatError, "multiples of 16"),
    (["edit", "{scene}", "x", "--model", "{model}", "-n", "0"], GenerationError, "--num-images must be an integer >= 1"),
    (["edit", "{scene}", "x", "--model", "{model}", "--temperature", "-1"], GenerationError, "temperature must be"),
    (["ask", "{scene}", "how many?", "--model", "{model}", "--max-new-tokens", "0"], GenerationError,
     "--max-new-tokens must be an integer >= 1"),
    (["edit", "{scene}", "x", "--model", "{model}", "--out", "{scene}"], GenerationError, "is a file"),
]  # fmt: skip


@pytest.mark.parametrize("argv, error, message", REFUSED)
def test_bad_requests_are_refused_before_the_model_loads(argv, error, message, scene_file, model_folder,
                                                         draw_only_folder, tmp_path, no_model_load):  # fmt: skip
    names = {"scene": scene_file, "missing": str(tmp_path / "missing.png"), "model": model_folder,
             "draw_only": draw_only_folder}  # fmt: skip
    args = parser().parse_args([part.format(**names) for part in argv])
    with pytest.raises(error, match=message):
        task_cli.run(args)


def test_image_verbs_write_pngs_with_their_request_in_the_metadata(scene_file, model_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["edit", scene_file, "make the circle blue", "--model", model_folder, "--out", str(out), "-n", "2",
            "--seed", "5", "--cfg", "3"]  # fmt: skip
    assert task_cli.run(parser().parse_args(argv)) == 0
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in written] == [
        "000-edit-make-the-circle-blue-seed5.png",
        "001-edit-make-the-circle-blue-seed6.png",
    ]
    meta = [json.loads(Image.open(path).text["parameters"]) for path in written]
    assert [(m["task"], m["instruction"], m["seed"], m["cfg"]) for m in meta] == [
        ("edit", "make the circle blue", 5, 3.0),
        ("edit", "make the circle blue", 6, 3.0),
    ]
    argv = ["predict", scene_file, "--task", "segmentation", "--model", model_folder, "--out", str(out)]
    assert task_cli.run(parser().parse_args(argv)) == 0
    (path,) = capsys.readouterr().out.split()
    assert path.endswith("000-segmentation-seed0.png") and Image.open(path).size == (64, 64)


def test_text_verbs_print_the_answer(scene_file, model_folder, capsys):
    argv = ["ask", scene_file, "how many circles are there?", "--model", model_folder, "--max-new-tokens", "3"]
    assert task_cli.run(parser().parse_args(argv)) == 0
    answer = capsys.readouterr().out
    assert answer.endswith("\n") and answer.count("\n") == 1


def test_generate_rewrite_draws_the_rewrite_and_keeps_both_prompts(model_folder, tmp_path, capsys):
    from lumina_mgpt.cli import main

    out = tmp_path / "out"
    assert main(["generate", "A RED CIRCLE, please", "--model", model_folder, "--out", str(out), "--rewrite"]) == 0
    captured = capsys.readouterr()
    (path,) = captured.out.split()
    assert path.rsplit("/", 1)[1].startswith("000-a-red-circle-please-seed0")  # named by what was asked
    meta = json.loads(Image.open(path).text["parameters"])
    assert meta["prompt"] == "A RED CIRCLE, please"
    assert isinstance(meta["rewritten_prompt"], str)
    assert f"rewrote 'A RED CIRCLE, please' as {meta['rewritten_prompt']!r}" in captured.err


def test_generate_rewrite_is_refused_before_loading_a_model_without_it(draw_only_folder, no_model_load, tmp_path,
                                                                      capsys):  # fmt: skip
    from lumina_mgpt.cli import main

    model = ["--model", draw_only_folder]
    assert main(["generate", "a red circle", "--rewrite", "--out", str(tmp_path / "out"), *model]) == 2
    assert "not trained for 'rewrite'" in capsys.readouterr().err
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    assert main(["generate", "--prompts", str(prompts), "--rewrite", "--out", str(tmp_path / "out"), *model]) == 2
    assert "--rewrite works with prompts given as arguments" in capsys.readouterr().err


def test_the_demo_shows_the_tasks_of_a_multi_task_model(model_folder, tmp_path, capsys):
    from lumina_mgpt.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--model", model_folder, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("task-edit.png", "task-segmentation.png", "task-edges.png", "task-control.png"):
        assert Image.open(out / name).size == (64, 64)
        assert json.loads(Image.open(out / name).text["parameters"])["task"] in ("edit", "segmentation", "edges",
                                                                                 "control")
    assert "caption of the first picture: " in printed
    assert f"{Pipeline.from_pretrained(model_folder).model.config.num_parameters / 1e6:.1f}M" in printed


def test_the_demo_of_a_text_to_image_model_says_what_it_skips(tmp_path, capsys):
    from lumina_mgpt.cli import main

    folder = tmp_path / "text-to-image-model"
    drawing_only = tiny_task_pipeline(tasks=("text-to-image",))
    drawing_only.save_pretrained(folder)
    assert main(["demo", "--model", str(folder), "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    # Packed weights are buffers, not parameters: the count comes from the config.
    assert f"{drawing_only.model.config.num_parameters / 1e6:.1f}M transformer parameters" in printed
    assert "trained for text-to-image only" in printed
    assert not list((tmp_path / "demo").glob("task-*"))
