"""The judge stage's records (shapes/drawn_verify.py): a model's own drawings, asked the self-verifier's
question, answered by the analyzer."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from lumina_mgpt.data import RecordIndex
from lumina_mgpt.errors import DataError
from lumina_mgpt.model_folder import EMBEDDED_MODEL
from lumina_mgpt.shapes.analyze import detect, score_detections
from lumina_mgpt.shapes.drawn_verify import planned_drawing, write_drawn_verify_dataset
from lumina_mgpt.shapes.prompts import is_held_out
from lumina_mgpt.shapes.spec import CATEGORIES
from lumina_mgpt.shapes.tasks import VQA_TEMPLATES, near_miss, scene_detections
from lumina_mgpt.shapes.world import CANVAS_SIZES, render, scene_from_spec


def _asked_prompt(question: str) -> str:
    """The prompt a verify question quotes (VQA_TEMPLATES["yes_no"] with the image placeholder after it)."""
    for template in VQA_TEMPLATES["yes_no"]:
        before, after = template.split("{caption}")
        after += " <|image|>"
        if question.startswith(before) and question.endswith(after):
            return question[len(before) : -len(after)]
    raise AssertionError(f"not a verify question: {question!r}")


def test_planned_drawings_are_deterministic_training_phrasings_on_shapeseval_canvases():
    plans = [planned_drawing(5, k) for k in range(300)]
    assert plans == [planned_drawing(5, k) for k in range(300)] and plans != [planned_drawing(6, k) for k in range(300)]
    assert not any(is_held_out(plan.prompt) for plan in plans)
    assert {(plan.width, plan.height) for plan in plans} == set(CANVAS_SIZES)
    assert {plan.spec.category for plan in plans} == set(CATEGORIES)


def test_near_misses_work_on_a_drawings_detections_as_on_a_scenes():
    """tasks.near_miss on analyze.detect of a picture: the same change as on the scene's own objects."""
    rng = np.random.default_rng(0)
    for k in range(60):
        plan = planned_drawing(1, k)
        scene = scene_from_spec(rng, plan.spec, plan.width, plan.height)
        seed = int(rng.integers(1 << 30))
        from_pixels = near_miss(np.random.default_rng(seed), plan.spec, detect(render(scene)), drawing_mistakes=True)
        from_scene = near_miss(np.random.default_rng(seed), plan.spec, scene_detections(scene), drawing_mistakes=True)
        assert from_pixels == from_scene


@pytest.mark.skipif(not (EMBEDDED_MODEL / "config.json").is_file(), reason="no embedded model")
def test_drawn_records_ask_about_the_drawing_and_the_analyzer_answers_resumably(tmp_path):
    records_file = write_drawn_verify_dataset(tmp_path / "a", EMBEDDED_MODEL, 6, seed=3, progress=False)
    records = [json.loads(line) for line in records_file.read_text().splitlines()]
    assert 6 < len(records) <= 12 and {r["task"] for r in records} == {"verify"}
    answers = json.loads((tmp_path / "a" / "answers.json").read_text())
    assert answers == dict(Counter(r["conversations"][1]["value"] for r in records))
    for record in records:
        question, answer = record["conversations"][0]["value"], record["conversations"][1]["value"]
        assert question.endswith("? <|image|>") and answer in ("yes", "no")
        assert _asked_prompt(question)
    first = records[0]  # about its own prompt: "yes" exactly when the analyzer finds that prompt's spec
    plan = planned_drawing(3, 0)
    assert plan.prompt in first["conversations"][0]["value"]
    with Image.open(tmp_path / "a" / first["image"][0]) as image:
        assert image.size == (plan.width, plan.height)
        truth = score_detections(detect(image.convert("RGB")), plan.spec)
    assert first["conversations"][1]["value"] == ("yes" if truth else "no")

    by_drawing: dict[str, list] = {}
    for record in records:
        by_drawing.setdefault(record["image"][0], []).append(record)
    for pair in by_drawing.values():  # the second question, a near miss the drawing lacks, is answered "no"
        assert len(pair) in (1, 2) and all(r["conversations"][1]["value"] == "no" for r in pair[1:])
        assert not any(is_held_out(_asked_prompt(r["conversations"][0]["value"])) for r in pair)

    drawing = tmp_path / "a" / first["image"][0]
    stamp = drawing.stat().st_mtime_ns
    records_file.unlink()  # as if killed after drawing: the drawings are kept, the records written again
    again = write_drawn_verify_dataset(tmp_path / "a", EMBEDDED_MODEL, 6, seed=3, progress=False)
    assert again.read_text() == "".join(json.dumps(r) + "\n" for r in records) and drawing.stat().st_mtime_ns == stamp
    index = RecordIndex([again])
    assert index.total == len(records) and all(len(r.images) == 1 for r in index.read(0, index.total))
    with pytest.raises(DataError, match="resuming would pair its images with other records"):
        write_drawn_verify_dataset(tmp_path / "a", EMBEDDED_MODEL, 6, seed=4, progress=False)
    other_model = tmp_path / "other-model"
    shutil.copytree(EMBEDDED_MODEL, other_model)
    with open(other_model / "config.json", "a") as file:
        file.write("\n")  # other bytes: another model, wherever it lies
    with pytest.raises(DataError, match="resuming would pair its images with other records"):
        write_drawn_verify_dataset(tmp_path / "a", other_model, 6, seed=3, progress=False)
    with pytest.raises(DataError, match="at least 1"):
        write_drawn_verify_dataset(tmp_path / "b", EMBEDDED_MODEL, 0, seed=3, progress=False)
