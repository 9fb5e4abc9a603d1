"""The task API (Pipeline.edit / control / subject / predict / caption / ask / rewrite, generate(rewrite=True))
on a tiny random model with the embedded model's tokenizers: the prompts are the training prompts of the
shapes task world token for token, dual panels continue the given upper rows and decode only the lower
panel, every answer image carries its task, inputs and settings, and a model refuses what it was not
trained for. A random model learned nothing: these tests check mechanics, never answers."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import tiny_model
from PIL import Image

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.formats import (
    encode_conversation,
    encode_generation_prompt,
    encode_image,
    image_to_image_prompt,
    resize_to_bucket,
)
from lumina_mgpt.generation.outputs import save_png
from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.generation.tasks import PROJECT, V1, V2, V2_PANEL, TaskRequest, image_task_turn, text_task_turn
from lumina_mgpt.model_folder import FAMILY_TASKS, OMNI_TASKS, official_tasks, read_model_info
from lumina_mgpt.shapes.tasks import PANEL, REWRITE_INSTRUCTION, TASK_NAMES, TASKS, training_record
from lumina_mgpt.vision import ImageTokenizer

PROJECT_TASKS = ("text-to-image", "edit", "control", "subject", "segmentation", "edges", "caption", "vqa", "rewrite")
DUAL_PANEL_TASKS = [name for name in TASK_NAMES if TASKS[name].dual_panel]
PANEL_ROWS = 8  # a 64 px panel in the shapes tokenizer's codes (8x downsampling)


def tiny_task_pipeline(tasks=PROJECT_TASKS) -> Pipeline:
    """A random tiny transformer speaking the embedded model's vocabulary, with its real tokenizers."""
    info = read_model_info(None)
    vision = ImageTokenizer.from_pretrained(info.image_tokenizer_path)
    model = tiny_model(vocab_size=info.layout.vocab_size)
    return Pipeline(model, info.text_tokenizer, vision, info.layout, info.defaults, tasks=tasks)


@pytest.fixture(scope="module")
def pipe(one_thread):
    return tiny_task_pipeline()


@pytest.fixture
def engine_calls(pipe, monkeypatch):
    """Record every engine call's arguments, then run it."""
    calls = []
    for name in ("generate_images", "generate_text"):
        original = getattr(pipe.engine, name)

        def recorded(prompts, *args, _original=original, _name=name, **kwargs):
            out = _original(prompts, *args, **kwargs)
            calls.append({"method": _name, "prompts": [list(p) for p in prompts], "args": args, **kwargs, "out": out})
            return out

        monkeypatch.setattr(pipe.engine, name, recorded)
    return calls


def request_from_record(task: str, turns: tuple[str, ...], image: Image.Image | None) -> TaskRequest:
    """The API request a training record answers (its inputs read back from the training prompt)."""
    prompt = turns[0]
    if task in ("caption", "vqa", "verify", "relations"):  # verify and relations are asked as visual questions
        return TaskRequest("vqa" if task in ("verify", "relations") else task, prompt.removesuffix(" <|image|>"), image)
    if task == "rewrite":
        return TaskRequest(task, prompt.removeprefix(REWRITE_INSTRUCTION.split("{request}")[0]))
    upper = image.crop((0, 0, *PANEL))
    text = prompt.split(":\n", 1)[1]
    if task.startswith("edit_"):
        return TaskRequest("edit", text, upper)
    if task == "control_edges":
        return TaskRequest("control", text, upper, kind="edges")
    if task == "subject":
        subject = re.search(r"<upper half> displays a <([^>]*)>", prompt).group(1)
        return TaskRequest("subject", text, upper, subject=subject)
    return TaskRequest(task, "", upper)


@pytest.mark.parametrize("task", DUAL_PANEL_TASKS)
def test_dual_panel_prompts_and_upper_rows_equal_the_training_sequence(pipe, engine_calls, task):
    for index in range(2):
        record = training_record(task, 7, index)
        (dual_panel,) = record.images
        pipe.run_image_tasks([request_from_record(task, record.turns, dual_panel)], seed=3)
        call = engine_calls[-1]
        (given,) = call["given_rows"]
        ours = call["prompts"][0] + encode_image(given, pipe.layout, panel_rows=2 * PANEL_ROWS).tolist()
        whole = pipe.image_tokenizer.encode([dual_panel])[0].numpy()
        trained = encode_conversation(list(record.turns), [whole], pipe.text_tokenizer, pipe.layout, "response").ids
        # Token for token: BOS, the prompt, SEP, <start-of-image>, the whole panel's size, the condition's rows.
        assert ours == trained[: len(ours)].tolist()
        assert trained[len(ours)] in pipe.layout.code_ids  # what follows is the lower panel's first code
        assert call["args"][:2] == (64, 128)


@pytest.mark.parametrize("task", ["caption", "vqa", "rewrite", "verify", "relations"])
def test_text_task_prompts_equal_the_training_prompts(pipe, engine_calls, task):
    for index in range(3):
        record = training_record(task, 7, index)
        image = record.images[0] if record.images else None
        pipe.run_text_tasks([request_from_record(task, record.turns, image)], max_new_tokens=2)
        grids = [pipe.image_tokenizer.encode([image])[0].numpy()] if image else []
        trained = encode_conversation(list(record.turns), grids, pipe.text_tokenizer, pipe.layout, "response").ids
        ours = engine_calls[-1]["prompts"][0]
        assert ours == trained[: len(ours)].tolist() and ours[-1] == pipe.layout.separator_id


def test_an_image_is_read_at_its_resolution_bucket(pipe, engine_calls):
    """A drawing of the model's (80x48) is questioned code for code at its own size; a photo of another size
    is resized to the bucket closest to it in aspect (400x250 -> 80x48)."""
    drawing = Image.effect_noise((80, 48), 40).convert("RGB")
    for image in (drawing, drawing.resize((400, 250))):
        pipe.ask(image, "how many circles are there?", max_new_tokens=1)
        grid = pipe.image_tokenizer.encode([resize_to_bucket(image, (80, 48))])[0].numpy()
        question = text_task_turn(TaskRequest("vqa", "how many circles are there?", image), PROJECT)
        expected = encode_generation_prompt([question], [grid], pipe.text_tokenizer, pipe.layout).tolist()
        assert engine_calls[-1]["prompts"][0] == expected


def test_dual_panel_decodes_only_the_lower_panel_of_the_given_rows(pipe, engine_calls):
    condition = training_record("edges", 1, 0).images[0].crop((0, 0, *PANEL)).resize((128, 128))
    image = pipe.predict(condition, "edges", seed=5)
    assert image.size == (64, 64)
    call = engine_calls[-1]
    (grid,) = call["out"]
    (given,) = call["given_rows"]
    # The condition, resized to the panel canvas, is the upper panel; only the rows after it are decoded.
    np.testing.assert_array_equal(given, pipe.image_tokenizer.encode([resize_to_bucket(condition, PANEL)])[0])
    np.testing.assert_array_equal(grid[:PANEL_ROWS], given)
    lower = pipe.image_tokenizer.decode_to_pil(torch.as_tensor(grid[None, PANEL_ROWS:]))[0]
    np.testing.assert_array_equal(np.asarray(image), np.asarray(lower))


def test_requests_share_engine_calls_and_each_has_its_seed(pipe, engine_calls):
    scene = training_record("edit_move", 0, 0).images[0].crop((0, 0, *PANEL))
    requests = [TaskRequest("edit", f"move the circle {way}", scene) for way in ("left", "right", "up")]
    images = pipe.run_image_tasks(requests, seed=10, batch_size=2)
    assert [len(call["prompts"]) for call in engine_calls] == [2, 1]
    assert [json.loads(image.info["parameters"])["seed"] for image in images] == [10, 11, 12]
    assert [len(call["given_rows"]) for call in engine_calls] == [2, 1]


def test_per_task_defaults_choose_each_requests_sampling_and_arguments_override_them(pipe, monkeypatch):
    scene = training_record("edit_move", 0, 0).images[0].crop((0, 0, *PANEL))
    per_task = {"edit": {"cfg": 1.0, "temperature": 0.0}, "edges": {"image_top_k": 4}}
    tuned = Pipeline(pipe.model, pipe.text_tokenizer, pipe.image_tokenizer, pipe.layout,
                     replace(pipe.defaults, per_task=per_task), tasks=pipe.tasks)  # fmt: skip
    calls = []
    decode = tuned.engine.generate_images
    monkeypatch.setattr(tuned.engine, "generate_images", lambda prompts, *args, **kwargs: calls.append(
        (args[2].cfg, args[2].image.temperature, args[2].image.top_k, len(prompts))) or decode(prompts, *args, **kwargs))
    requests = [TaskRequest("edit", "move the circle left", scene), TaskRequest("edges", "", scene),
                TaskRequest("edit", "move the circle up", scene), TaskRequest("segmentation", "", scene)]  # fmt: skip
    images = tuned.run_image_tasks(requests, seed=3)
    cfg, temperature, top_k = pipe.defaults.cfg, pipe.defaults.temperature, pipe.defaults.image_top_k
    # One engine call per (size, settings): the two edits together, each map with its own settings.
    assert calls == [(1.0, 0.0, top_k, 2), (cfg, temperature, 4, 1), (cfg, temperature, top_k, 1)]
    meta = [json.loads(image.info["parameters"]) for image in images]
    assert [(m["seed"], m["cfg"], m["image_sampling"]["top_k"]) for m in meta] == [
        (3, 1.0, top_k), (4, cfg, 4), (5, 1.0, top_k), (6, cfg, top_k)
    ]
    calls.clear()
    tuned.run_image_tasks(requests[:1], cfg=2.0)  # an argument wins over the task's default
    assert calls == [(2.0, 0.0, top_k, 1)]


def test_answer_images_carry_task_inputs_and_settings_into_the_png(pipe, tmp_path):
    condition = training_record("control_edges", 0, 0).images[0].crop((0, 0, *PANEL))
    image = pipe.control(condition, "edges", "a red circle", seed=4, cfg=3.0, temperature=0.7)
    path = save_png(image, tmp_path / "control.png")
    meta = json.loads(Image.open(path).text["parameters"])
    assert meta["task"] == "control" and meta["prompt"] == "a red circle" and meta["kind"] == "edges"
    assert meta["input_image"] == {
        "width": 64, "height": 64, "sha256": hashlib.sha256(condition.convert("RGB").tobytes()).hexdigest()
    }  # fmt: skip
    assert (meta["seed"], meta["cfg"], meta["image_sampling"]["temperature"]) == (4, 3.0, 0.7)
    assert (meta["width"], meta["height"], meta["model_layout"]) == (64, 64, "compact")
    edited = json.loads(pipe.edit(condition, "make it blue").info["parameters"])
    assert edited["task"] == "edit" and edited["instruction"] == "make it blue"
    subject = json.loads(pipe.subject(condition, "red circle", "the same red circle").info["parameters"])
    assert subject["subject"] == "red circle" and subject["prompt"] == "the same red circle"


def test_ask_returns_what_a_project_model_answers_after_what_it_saw(pipe, monkeypatch):
    """A where-question is trained to be answered after a caption of the scene (shapes.tasks.SEEN_ANSWER):
    ask returns the answer alone."""
    record = next(r for r in (training_record("relations", 7, i) for i in range(20)) if "answer:" in r.turns[1])
    written = np.array([*pipe.text_tokenizer.encode(record.turns[1]), pipe.layout.separator_id])
    monkeypatch.setattr(pipe.engine, "generate_text", lambda prompts, *args, **kwargs: [written] * len(prompts))
    question = record.turns[0].removesuffix(" <|image|>")
    assert pipe.ask(record.images[0], question) == record.turns[1].rpartition("answer: ")[2]
    assert pipe.ask(record.images[0], question) in ("left of", "right of", "above", "below")
    assert pipe.read_answer(written).text == record.turns[1]


def test_text_answers_are_strings(pipe):
    scene = training_record("caption", 0, 0).images[0]
    assert isinstance(pipe.caption(scene, max_new_tokens=4), str)
    assert isinstance(pipe.ask(scene, "how many circles are there?", max_new_tokens=4), str)
    assert isinstance(pipe.rewrite("Draw me a RED circle, please", max_new_tokens=4), str)


def test_generate_with_rewrite_draws_the_rewrite_and_keeps_both_in_the_metadata(pipe):
    request = "Draw me a RED circle, please"
    rewritten = pipe.rewrite(request)
    (image,) = pipe.generate(request, width=32, height=32, rewrite=True, progress=False)
    meta = json.loads(image.info["parameters"])
    assert meta["prompt"] == request and meta["rewritten_prompt"] == rewritten
    # The rewrite is drawn exactly as a plain request for it would be.
    drawn = pipe.generate_codes([rewritten], 32, 32, pipe.settings(), seeds=[0], progress=False)[0]
    plain = pipe.image_tokenizer.decode_to_pil(torch.as_tensor(drawn[None]))[0]
    np.testing.assert_array_equal(np.asarray(image), np.asarray(plain))


@pytest.fixture
def no_compute(pipe, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the engine ran; the request should have been refused first")

    monkeypatch.setattr(pipe.engine, "generate_images", refuse)
    monkeypatch.setattr(pipe.engine, "generate_text", refuse)


SCENE = Image.new("RGB", (64, 64), (224, 224, 224))


def with_tasks(pipe: Pipeline, *tasks: str) -> Pipeline:
    """The same model, declaring `tasks`; its engine refuses to run, as the fixture's does."""
    declared = Pipeline(pipe.model, pipe.text_tokenizer, pipe.image_tokenizer, pipe.layout, pipe.defaults, tasks)
    declared.engine = pipe.engine
    return declared

BAD_REQUESTS = [
    (lambda p: p.run_image_tasks([TaskRequest("dance", "x", SCENE)]), "unknown task 'dance'; accepted: edit, control"),
    (
        lambda p: with_tasks(p, "depth").predict(SCENE, "depth"),  # a lumina.json may list it; no prompt exists
        "prediction 'depth' has no prompt for project models; accepted: segmentation, edges",
    ),
    (
        lambda p: p.control(SCENE, "depth", "a circle"),
        "control kind 'depth' is not one this project model draws from; accepted: edges",
    ),
    (lambda p: p.subject(SCENE, " ", "a circle"), "subject needs a short description of the reference object"),
    (lambda p: p.edit(SCENE, "  "), "edit needs a non-empty instruction"),
    (lambda p: p.edit(None, "make it blue"), "edit takes an input image \\(a PIL image\\), got NoneType"),
    (lambda p: p.run_text_tasks([TaskRequest("rewrite", "a circle", SCENE)]), "rewrite takes no image"),
    (lambda p: p.run_image_tasks([TaskRequest("caption", "", SCENE)]), "caption, vqa and rewrite answer text"),
    (lambda p: p.run_text_tasks([TaskRequest("edit", "x", SCENE)]), "only caption, vqa and rewrite answer text"),
    (lambda p: p.edit(SCENE, "x", width=64), "give both the width and the height of the answer image, or neither"),
    (lambda p: p.edit(SCENE, "x", cfg=-1.0), "cfg must be a finite number >= 0"),
    (lambda p: p.edit(SCENE, "x", seed=-1), "seed must be an integer from 0"),
    (lambda p: p.run_image_tasks([]), "give a non-empty list of TaskRequest"),
    (lambda p: p.run_image_tasks(["edit"]), "a task request must be a TaskRequest, got str"),
]


@pytest.mark.parametrize("call, message", BAD_REQUESTS)
def test_bad_requests_are_refused_before_any_compute(pipe, no_compute, call, message):
    with pytest.raises(GenerationError, match=message):
        call(pipe)


def test_a_model_refuses_tasks_its_lumina_json_does_not_list(pipe, no_compute):
    drawing_only = with_tasks(pipe, "text-to-image")
    expected = "this model was not trained for '{}' \\(its tasks: text-to-image\\)"
    for call, task in [
        (lambda p: p.edit(SCENE, "make it blue"), "edit"),
        (lambda p: p.control(SCENE, "edges", "a circle"), "control"),
        (lambda p: p.predict(SCENE, "segmentation"), "segmentation"),
        (lambda p: p.caption(SCENE), "caption"),
        (lambda p: p.ask(SCENE, "how many?"), "vqa"),
        (lambda p: p.rewrite("a circle"), "rewrite"),
        (lambda p: p.generate("a circle", rewrite=True), "rewrite"),
    ]:
        with pytest.raises(GenerationError, match=expected.format(task)):
            call(drawing_only)
    # A chat model answers questions about images: caption and vqa run there too.
    chatty = with_tasks(pipe, "text-to-image", "chat")
    with pytest.raises(AssertionError, match="the engine ran"):
        chatty.caption(SCENE)


def test_official_families_write_their_released_prompts():
    edit = TaskRequest("edit", "make the sky purple", SCENE)
    depth = TaskRequest("depth", "a cat on a sofa", SCENE)
    control = TaskRequest("control", "a cat on a sofa", SCENE, kind="canny")
    subject = TaskRequest("subject", "the mug on a beach", SCENE, subject="a white mug")
    assert image_task_turn(edit, V1, (512, 512)) == "make the sky purple <|image|>"
    assert image_task_turn(TaskRequest("segmentation", "", SCENE), V1, (512, 512)) == (
        "Segmentic segmentation. <|image|>"
    )
    assert image_task_turn(control, V1, (512, 512)) == (
        "Generate an image according to the provided image, and according to the following caption:\n"
        "a cat on a sofa <|image|>"
    )
    assert image_task_turn(depth, V2, V2_PANEL) == (
        "Generate a dual-panel image of 512x1024 where the <lower half> displays a <depth map>, while the "
        "<upper half> retains the original image for direct visual comparison:\na cat on a sofa"
    )
    assert image_task_turn(control, V2, V2_PANEL) == image_to_image_prompt(
        "a cat on a sofa", 512, 1024, "canny edge map"
    )
    assert image_task_turn(subject, V2, V2_PANEL) == image_to_image_prompt(
        "the mug on a beach", 512, 1024, "a white mug"
    )
    assert image_task_turn(edit, PROJECT, PANEL).startswith("Generate a dual-panel image of 64x128 where the <upper")


def test_omni_folders_and_hub_snapshots_get_the_omni_tasks():
    for family in ("lumina-mgpt", "lumina-mgpt-2"):
        assert official_tasks(Path("ckpts/Lumina-mGPT-2.0-Omni"), family) == OMNI_TASKS[family]
        snapshot = Path("hub/models--Alpha-VLLM--Lumina-mGPT-7B-768-Omni/snapshots/0123abcd")
        assert official_tasks(snapshot, family) == OMNI_TASKS[family]
        assert official_tasks(Path("ckpts/Lumina-mGPT-7B-768"), family) == FAMILY_TASKS[family]
        assert official_tasks(Path("ckpts/omnivore"), family) == FAMILY_TASKS[family]


def test_official_v1_omni_answers_an_image_of_the_input_in_the_user_turn(tmp_path, monkeypatch):
    from test_pipeline import official_folder

    folder = official_folder(tmp_path, "v1").rename(tmp_path / "Lumina-mGPT-7B-768-Omni")
    omni = Pipeline.from_pretrained(folder, device="cpu")
    assert omni.tasks == OMNI_TASKS["lumina-mgpt"]
    calls = []
    original = omni.engine.generate_images

    def recorded(prompts, width, height, settings, seeds, **kwargs):
        calls.append((prompts, settings, kwargs))
        return original(prompts, width, height, settings, seeds, **kwargs)

    monkeypatch.setattr(omni.engine, "generate_images", recorded)
    picture = Image.new("RGB", (128, 64), (200, 30, 30))
    image = omni.predict(picture, "depth", width=64, height=32, seed=2)
    assert image.size == (64, 32)
    ((prompt,), settings, kwargs) = calls[-1]
    grid = omni.image_tokenizer.encode([resize_to_bucket(picture, (64, 32))])[0].numpy()
    expected = encode_generation_prompt(["Depth estimation. <|image|>"], [grid], omni.text_tokenizer, omni.layout)
    assert list(prompt) == expected.tolist() and kwargs.get("given_rows") is None
    assert settings.cfg == 1.0 and settings.image.top_k == 200  # the official Omni defaults
    with pytest.raises(GenerationError, match="control kind 'edges' is not one this lumina-mgpt model draws from"):
        omni.control(picture, "edges", "a red square")
