"""Exact scorers of the multi-task shapes world: the right output scores 1, wrong ones score low, and
realistic degradations of the right output (degrade.py, the shapes image tokenizer) still score high."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest
from PIL import Image

from lumina_mgpt.errors import DataError
from lumina_mgpt.model_folder import EMBEDDED_MODEL
from lumina_mgpt.shapes.captions import canonical_caption
from lumina_mgpt.shapes.degrade import DEGRADATIONS, degrade
from lumina_mgpt.shapes.dual_panel import MOVE_DIRECTIONS, stack_panels
from lumina_mgpt.shapes.spec import COLORS
from lumina_mgpt.shapes.task_eval import TEXT_OUTPUT_TASKS
from lumina_mgpt.shapes.task_scoring import KEEP_TOLERANCE, expected_output, normalize_answer, score_item
from lumina_mgpt.shapes.tasks import TASK_NAMES, TASKS, eval_items
from lumina_mgpt.shapes.world import PLAIN_BACKGROUND, render, scene_from_spec

IMAGE_TASKS = [task for task in TASK_NAMES if task not in TEXT_OUTPUT_TASKS]
EDITS = ("edit_recolor", "edit_move", "edit_add", "edit_remove")


def _right_output(item):
    """The expected output; text-to-image has many right images, so one render of its spec."""
    if item.task == "text_to_image":
        return render(scene_from_spec(np.random.default_rng(item.index), item.spec, item.width, item.height))
    return expected_output(item)


def _with_objects(scene, objects):
    return render(replace(scene, objects=tuple(objects)))


def _blank(item):
    return Image.new("RGB", (item.width, item.height), PLAIN_BACKGROUND.color)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_the_right_output_scores_one(task):
    for item in eval_items(task, 16, seed=2):
        output = _right_output(item)
        assert score_item(item, output) == 1.0
        if TASKS[task].dual_panel:  # the whole dual panel is scored on its lower half
            assert score_item(item, stack_panels(item.image, output)) == 1.0


@pytest.mark.parametrize("task", IMAGE_TASKS)
def test_an_empty_image_scores_low(task):
    scores = [score_item(item, _blank(item)) for item in eval_items(task, 12, seed=3)]
    assert max(scores) < 0.5


def _shifted(objects, index, distance, size=64):
    """`objects` with object `index` moved `distance` px one way or another, inside the canvas and
    clear of the others; None when no way fits."""
    obj = objects[index]
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        moved = replace(obj, center=(obj.center[0] + distance * dx, obj.center[1] + distance * dy))
        left, top, right, bottom = moved.box
        others = [o for i, o in enumerate(objects) if i != index]
        clear = all(
            max(abs(moved.center[0] - o.center[0]), abs(moved.center[1] - o.center[1])) >= (moved.size + o.size) / 2 + 2
            for o in others
        )
        if left >= 0 and top >= 0 and right <= size and bottom <= size and clear:
            return [moved if i == index else o for i, o in enumerate(objects)]
    return None


def test_edits_that_change_the_wrong_thing_or_nothing_score_zero():
    checked_moves = 0
    for task in EDITS:
        for item in eval_items(task, 12, seed=4):
            edit = item.edit
            after = list(edit.after.objects)
            assert score_item(item, render(edit.before)) == 0.0  # nothing done
            if task != "edit_remove":  # the asked object in a color nobody asked for
                target = after[edit.index]
                wrong = replace(target, color=next(c for c in COLORS if c not in (target.color, edit.target.color)))
                recolored = after[: edit.index] + [wrong] + after[edit.index + 1 :]
                assert score_item(item, _with_objects(edit.after, recolored)) == 0.0
            kept = [i for i in range(len(after)) if task in ("edit_recolor", "edit_remove") or i != edit.index]
            if kept:  # an object moved that the instruction keeps: 3.5 tolerances (17.5 px) away
                moved = _shifted(after, kept[0], 3.5 * KEEP_TOLERANCE)
                if moved is not None:
                    checked_moves += 1
                    assert score_item(item, _with_objects(edit.after, moved)) == 0.0
    assert checked_moves > 20


def test_kept_objects_may_shift_within_the_tolerance_and_moves_must_go_the_asked_way():
    nudges = 0
    for item in eval_items("edit_recolor", 12, seed=5):
        nudged = _shifted(list(item.scene.objects), 0, KEEP_TOLERANCE - 1)
        if nudged is not None:
            nudges += 1
            assert score_item(item, _with_objects(item.scene, nudged)) == 1.0
    backwards = 0
    for item in eval_items("edit_move", 16, seed=6):
        edit = item.edit
        step_x, step_y = MOVE_DIRECTIONS[edit.direction]
        back = replace(edit.target, center=(edit.target.center[0] - 8 * step_x, edit.target.center[1] - 8 * step_y))
        objects = [back if i == edit.index else o for i, o in enumerate(edit.after.objects)]
        if _shifted(objects, edit.index, 0) is not None:  # inside the canvas and clear of the others
            backwards += 1
            assert score_item(item, _with_objects(edit.after, objects)) == 0.0  # moved the other way
    assert nudges > 5 and backwards > 3


def test_control_and_subject_count_wrong_colors_and_misplaced_objects():
    for item in eval_items("control_edges", 12, seed=7):
        objects = list(item.scene.objects)
        recolored = [replace(objects[0], color=next(c for c in COLORS if c != objects[0].color))] + objects[1:]
        assert score_item(item, _with_objects(item.scene, recolored)) == pytest.approx(1 - 1 / len(objects))
        swapped = [replace(o, center=(64 - o.center[0], 64 - o.center[1])) for o in objects]
        far = all(abs(o.center[0] - 32) > 8 or abs(o.center[1] - 32) > 8 for o in objects)
        if far:
            assert score_item(item, _with_objects(item.scene, swapped)) < 1.0
    for item in eval_items("subject", 12, seed=8):
        subject, *others = item.scene.objects
        recolored = [replace(subject, color=next(c for c in COLORS if c != subject.color)), *others]
        assert score_item(item, _with_objects(item.scene, recolored)) == 0.0
        assert score_item(item, _with_objects(item.scene, others)) == 0.0  # the reference object left out


def test_maps_of_another_scene_score_low():
    for task in ("segmentation", "edges"):
        items = eval_items(task, 12, seed=9)
        for item, other in pairwise(items):
            assert score_item(item, expected_output(other)) < 0.6


def test_text_to_image_of_another_spec_scores_zero():
    items = eval_items("text_to_image", 24, seed=10)
    for item, other in pairwise(items):
        image = render(scene_from_spec(np.random.default_rng(0), other.spec, item.width, item.height))
        if canonical_caption(other.spec) != canonical_caption(item.spec) and other.spec.category == item.spec.category:
            assert score_item(item, image) == 0.0


def test_text_answers_are_compared_after_normalization():
    vqa = eval_items("vqa", 60, seed=11)
    for item in vqa:
        assert score_item(item, f" {item.answer.upper()}. ") == 1.0
        wrong = {"yes": "no", "no": "yes", "left of": "right of", "above": "below"}.get(item.answer, "purple")
        if item.answer != "purple":
            assert score_item(item, wrong) == 0.0
    assert normalize_answer("Three!") == "3" and normalize_answer("none") == "0"
    assert normalize_answer("To the left of.") == "left of" and normalize_answer("beneath") == "below"
    for task in ("caption", "rewrite"):
        items = eval_items(task, 30, seed=12)
        for item, other in pairwise(items):
            assert score_item(item, item.answer.capitalize() + ".") == 1.0
            assert score_item(item, "please draw " + item.answer) == 0.0  # not a canonical caption
            if canonical_caption(other.spec) != item.answer:
                assert score_item(item, other.answer) == 0.0


def test_a_position_caption_scores_in_either_direction():
    for item in eval_items("caption", 40, seed=13):
        if item.spec.relation is not None:
            subject, reference = item.answer.split(" to the left of ") if " to the left of " in item.answer else (
                item.answer.split(" above ")
            )
            flipped = f"{reference} {'to the right of' if 'left' in item.answer else 'below'} {subject}"
            assert score_item(item, flipped) == 1.0


@pytest.mark.parametrize("task", IMAGE_TASKS)
def test_degraded_right_outputs_still_score_high(task):
    items = eval_items(task, 12, seed=14)
    for kind in DEGRADATIONS:
        if task == "edges" and kind == "downscale4":
            continue  # a quarter of the resolution blurs a 2-pixel outline away: no right answer is left
        scores = [score_item(item, degrade(_right_output(item), kind, np.random.default_rng(item.index))) for item in items]
        assert np.mean(scores) >= 0.9, kind


def test_right_outputs_through_the_shapes_image_tokenizer_still_score_high():
    import torch

    from lumina_mgpt.vision import ImageTokenizer

    tokenizer = ImageTokenizer.from_pretrained(EMBEDDED_MODEL / "image_tokenizer")
    # Measured on 24 items a task: 1.00 everywhere but segmentation, 0.99 (every palette color survives);
    # v4's tokenizer turned some reds orange and blacks red, which the edit and subject scorers count as wrong.
    for task in IMAGE_TASKS:
        if task == "text_to_image":
            continue  # its items mix canvas sizes; ShapesEval's ground-truth check covers it
        items = eval_items(task, 12, seed=0)
        with torch.no_grad():
            decoded = tokenizer.decode_to_pil(tokenizer.encode([_right_output(item) for item in items]))
        assert np.mean([score_item(item, image) for item, image in zip(items, decoded)]) >= 0.95, task


def test_outputs_of_the_wrong_size_or_type_are_refused():
    (item,) = eval_items("edit_add", 1)
    with pytest.raises(DataError, match="accepted: 64x64 or the 64x128 dual panel"):
        score_item(item, Image.new("RGB", (64, 96)))
    with pytest.raises(DataError, match="scored on an image"):
        score_item(item, "a red circle")
    (item,) = eval_items("caption", 1)
    with pytest.raises(DataError, match="scored on text"):
        score_item(item, Image.new("RGB", (64, 64)))
    (item,) = eval_items("text_to_image", 1)
    with pytest.raises(DataError, match="accepted: 64x64$"):
        score_item(item, Image.new("RGB", (64, 128)))
