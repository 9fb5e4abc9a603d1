"""The shapes world, its dual-panel tasks and ShapesEval (analyzer, prompt set, report, CLI)."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from lumina_mgpt import cli
from lumina_mgpt.errors import DataError, FormatError
from lumina_mgpt.shapes import eval_cli
from lumina_mgpt.shapes.analyze import (
    DetectedObject,
    connected_components,
    detect,
    relations_between,
    score,
    score_detections,
)
from lumina_mgpt.shapes.captions import describe, sample_spec
from lumina_mgpt.shapes.degrade import DEGRADATIONS, degrade
from lumina_mgpt.shapes.dual_panel import SEGMENTATION_COLORS, TASKS, sample_dual_panel
from lumina_mgpt.shapes.evaluate import (
    Report,
    evaluate,
    format_table,
    ground_truth_generator,
    limit_prompts,
    write_report,
)
from lumina_mgpt.shapes.examples import sample_example, sample_training_caption
from lumina_mgpt.shapes.prompts import (
    CATEGORY_COUNTS,
    build_eval_prompts,
    is_held_out,
    load_eval_prompts,
)
from lumina_mgpt.shapes.spec import (
    CATEGORIES,
    COLORS,
    SHAPES,
    ObjectGroup,
    Relation,
    Spec,
)
from lumina_mgpt.shapes.world import (
    CANVAS_SIZES,
    OBJECT_GAP,
    Background,
    Scene,
    SceneObject,
    relation_holds_clearly,
    render,
    render_labels,
    scene_from_spec,
)

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
PLAIN = Background((220, 220, 220), (0.0, 0.0), 0.0, 0)


def wrong_spec(spec: Spec) -> Spec:
    """A spec that a render of `spec` must fail: another shape, color, count or relation, or
    (color_attr) the colors bound to the wrong shapes."""
    groups = list(spec.groups)
    first = groups[0]
    if spec.category == "position":
        relation = spec.relation
        return replace(spec, relation=replace(relation, name=OPPOSITE[relation.name]))
    if spec.category == "counting":
        count = first.count - 1 if first.count > 2 else 3
        return replace(spec, groups=(replace(first, count=count),))
    if spec.category == "colors":
        other = next(c for c in COLORS if c != first.color)
        return replace(spec, groups=(replace(first, color=other),))
    if spec.category == "single_object":
        other = next(s for s in SHAPES if s != first.shape)
        return replace(spec, groups=(replace(first, shape=other),))
    if spec.category == "color_attr":
        second = groups[1]
        return replace(
            spec, groups=(replace(first, color=second.color), replace(groups[1], color=first.color))
        )
    unused = next(s for s in SHAPES if s not in (first.shape, groups[1].shape))
    return replace(spec, groups=(first, replace(groups[1], shape=unused)))


@pytest.fixture(scope="module")
def held_out_renders():
    """Every held-out prompt rendered from its own spec, with its detections."""
    generate = ground_truth_generator(load_eval_prompts(), seed=1)
    rendered = []
    for prompt in load_eval_prompts():
        image = generate([prompt.caption], prompt.width, prompt.height)[0]
        rendered.append((prompt, image, detect(image)))
    return rendered


# --- the world -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", CANVAS_SIZES + ((128, 128),))
def test_every_canvas_size_gives_an_image_of_exactly_that_size(size):
    rng = np.random.default_rng(0)
    for category in CATEGORIES:
        example = sample_example(rng, size, category)
        assert example.image.size == size
        assert (example.width, example.height) == size
        assert example.image.mode == "RGB"


@pytest.mark.parametrize("size", [(50, 64), (64, 40), (32, 32)])
def test_unsupported_canvas_sizes_are_refused(size):
    with pytest.raises(FormatError, match="multiples of 16"):
        sample_example(np.random.default_rng(0), size)


def test_same_seed_same_examples_and_another_seed_differs():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sample_example(rng) for _ in range(12)]

    first, again, other = draw(7), draw(7), draw(8)
    for a, b in zip(first, again):
        assert (a.caption, a.spec, a.scene) == (b.caption, b.spec, b.scene)
        assert a.image.tobytes() == b.image.tobytes()
    assert [e.caption for e in first] != [e.caption for e in other]


def test_scenes_keep_margins_gaps_and_clear_relations():
    rng = np.random.default_rng(3)
    for index in range(300):
        width, height = CANVAS_SIZES[index % len(CANVAS_SIZES)]
        spec = sample_spec(rng, CATEGORIES[index % len(CATEGORIES)])
        scene = scene_from_spec(rng, spec, width, height)
        expected = sum(group.count for group in spec.groups)
        assert len(scene.objects) == expected
        for obj in scene.objects:
            left, top, right, bottom = obj.box
            assert min(left, top) >= 3 and right <= width - 3 and bottom <= height - 3
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                gap_x = abs(a.center[0] - b.center[0]) - (a.size + b.size) / 2
                gap_y = abs(a.center[1] - b.center[1]) - (a.size + b.size) / 2
                assert max(gap_x, gap_y) >= OBJECT_GAP
        labels = render_labels(scene)
        assert set(np.unique(labels)) == set(range(expected + 1))
        if spec.relation is not None:
            subject, reference = scene.objects[0], scene.objects[1]
            dx = subject.center[0] - reference.center[0]
            dy = subject.center[1] - reference.center[1]
            reach = (subject.size + reference.size) / 2
            assert relation_holds_clearly(dx, dy, reach, spec.relation.name, OBJECT_GAP)


def test_scene_from_spec_honours_named_colors_and_counts():
    spec = Spec("counting", (ObjectGroup("triangle", "orange", 3, exact=True),))
    scene = scene_from_spec(np.random.default_rng(0), spec, 64, 64)
    assert [(o.shape, o.color) for o in scene.objects] == [("triangle", "orange")] * 3


def test_captions_are_grammatical_and_match_their_specs():
    rng = np.random.default_rng(11)
    for _ in range(400):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        spec = sample_spec(rng, category)
        caption = describe(spec, rng)
        assert not re.search(r"\ba (orange|image)\b", caption), caption
        consonant_words = "red|green|blue|yellow|purple|black|circle|square|triangle"
        assert not re.search(rf"\ban ({consonant_words})\b", caption), caption
        for group in spec.groups:
            assert group.shape in caption
            if group.color is not None:
                assert group.color in caption
        if category == "counting":
            count = spec.groups[0].count
            number_words = {2: "two", 3: "three", 4: "four"}
            assert f"{number_words[count]} " in caption or f"{count} " in caption
            assert f"{spec.groups[0].shape}s" in caption
        if category == "position":
            words = {
                "left of": "left",
                "right of": "right",
                "above": "above|over",
                "below": "below|beneath|under",
            }
            assert re.search(words[spec.relation.name], caption)


def test_spec_round_trips_through_json_and_rejects_unknown_words():
    spec = Spec(
        "position",
        (ObjectGroup("circle", "red"), ObjectGroup("square", None)),
        Relation(0, "above", 1),
    )
    assert Spec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(DataError, match="unknown shape"):
        Spec("colors", (ObjectGroup("hexagon", "red"),))
    with pytest.raises(DataError, match="unknown color"):
        Spec("colors", (ObjectGroup("circle", "teal"),))
    with pytest.raises(DataError, match="two different groups"):
        Spec("position", (ObjectGroup("circle"),), Relation(0, "above", 0))


# --- the held-out prompt set ---------------------------------------------------------------------


def test_stored_prompt_set_is_the_seeded_build_in_geneval_proportions():
    stored = load_eval_prompts()
    assert list(stored) == build_eval_prompts()
    assert Counter(p.category for p in stored) == CATEGORY_COUNTS
    assert len({p.caption for p in stored}) == len(stored)
    assert {(p.width, p.height) for p in stored} == set(CANVAS_SIZES)
    assert all(is_held_out(p.caption) for p in stored)
    assert is_held_out("  " + stored[0].caption.upper() + " ")


def test_training_sampling_never_yields_held_out_captions():
    rng = np.random.default_rng(5)
    for index in range(12000):
        category = CATEGORIES[index % len(CATEGORIES)]
        _, caption = sample_training_caption(rng, category)
        assert not is_held_out(caption), caption
    examples = [sample_example(rng) for _ in range(60)]
    assert not any(is_held_out(e.caption) for e in examples)
    assert len({e.category for e in examples}) == len(CATEGORIES)


# --- the analyzer --------------------------------------------------------------------------------


def test_detect_finds_each_object_with_its_shape_color_and_box():
    objects = (
        SceneObject("circle", "red", (14.0, 14.0), 20),
        SceneObject("square", "blue", (48.0, 16.0), 18),
        SceneObject("triangle", "black", (20.0, 48.0), 22),
        SceneObject("triangle", "yellow", (50.0, 50.0), 16),
    )
    found = detect(render(Scene(64, 64, objects, PLAIN)))
    assert len(found) == 4
    by_shape_color = {(d.shape, d.color): d for d in found}
    for obj in objects:
        detection = by_shape_color[(obj.shape, obj.color)]
        assert np.allclose(detection.center, obj.center, atol=1.0)
        left, top, right, bottom = detection.bbox
        # The 3x3 blur trims acute triangle corners by up to a pixel on each side.
        assert abs((right - left) - obj.size) <= 2 and abs((bottom - top) - obj.size) <= 2


def test_detect_sees_nothing_on_an_empty_noisy_background():
    scene = Scene(96, 48, (), Background((225, 222, 218), (12.0, -10.0), 4.0, 3))
    noisy = degrade(render(scene), "noise12", np.random.default_rng(0))
    assert detect(noisy) == []


def _flood_fill_partition(mask: np.ndarray) -> set[frozenset]:
    """Reference: the 8-connected components of `mask` as sets of (row, col), by flood fill."""
    unseen = {tuple(p) for p in np.argwhere(mask)}
    parts = set()
    while unseen:
        stack = [unseen.pop()]
        part = set(stack)
        while stack:
            row, col = stack.pop()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    neighbour = (row + dr, col + dc)
                    if neighbour in unseen:
                        unseen.remove(neighbour)
                        part.add(neighbour)
                        stack.append(neighbour)
        parts.add(frozenset(part))
    return parts


def test_connected_components_match_a_flood_fill():
    rng = np.random.default_rng(12)
    for _ in range(60):
        height, width = (int(v) for v in rng.integers(1, 40, size=2))
        mask = rng.random((height, width)) < rng.uniform(0.1, 0.9)
        labels, count = connected_components(mask)
        assert (labels[~mask] == 0).all()
        parts = {
            frozenset(tuple(p) for p in np.argwhere(labels == label))
            for label in range(1, count + 1)
        }
        assert parts == _flood_fill_partition(mask)
    full, count = connected_components(np.ones((4, 5), dtype=bool))
    assert count == 1 and (full == 1).all()


def _box_object(center, size=10):
    x, y = center
    half = size // 2
    box = (x - half, y - half, x + half, y + half)
    return DetectedObject("circle", "red", center, size * size, box)


def test_relations_follow_geneval_centers_rule():
    left = _box_object((10, 30))
    right = _box_object((40, 34))
    assert relations_between(left, right) == {"left of"}
    assert relations_between(right, left) == {"right of"}
    above = _box_object((40, 5))
    assert relations_between(above, right) == {"above"}
    diagonal = _box_object((40, 64))
    assert relations_between(diagonal, left) == {"right of", "below"}
    assert relations_between(left, _box_object((11, 31))) == set()


def test_counting_rejects_an_extra_object_of_the_same_shape():
    spec = Spec("counting", (ObjectGroup("circle", "green", 2, exact=True),))
    two = [_box_object((10, 10)), _box_object((40, 10))]
    two = [replace(d, color="green") for d in two]
    assert score_detections(two, spec)
    assert not score_detections(two + [_box_object((25, 40))], spec)
    assert not score_detections(two[:1], spec)


def test_ground_truth_renders_score_at_least_098_at_every_size(held_out_renders):
    for size in CANVAS_SIZES:
        outcomes = [
            score_detections(found, prompt.spec)
            for prompt, _, found in held_out_renders
            if (prompt.width, prompt.height) == size
        ]
        assert len(outcomes) > 150
        assert np.mean(outcomes) >= 0.98, size


def test_renders_of_a_wrong_prompt_score_at_most_005(held_out_renders):
    by_category = Counter()
    for prompt, _, found in held_out_renders:
        by_category[prompt.category] += score_detections(found, wrong_spec(prompt.spec))
    assert sum(by_category.values()) / len(held_out_renders) <= 0.05
    for category in CATEGORIES:
        assert by_category[category] <= 0.05 * CATEGORY_COUNTS[category], category


@pytest.mark.parametrize("kind", sorted(DEGRADATIONS))
def test_vq_like_degradations_keep_scores_at_least_09(held_out_renders, kind):
    rng = np.random.default_rng(2)
    subset = held_out_renders[::4]
    outcomes = [score(degrade(image, kind, rng), prompt.spec) for prompt, image, _ in subset]
    assert np.mean(outcomes) >= 0.9


# --- the evaluation loop, report and CLI ---------------------------------------------------------


def test_evaluate_reports_per_category_and_overall_as_their_mean():
    prompts = limit_prompts(load_eval_prompts(), 60)
    assert {p.category for p in prompts} == set(CATEGORIES)
    sizes_seen = []

    def blank(captions, width, height):
        sizes_seen.append((len(captions), width, height))
        return [Image.new("RGB", (width, height), (230, 230, 230)) for _ in captions]

    progress = []
    report = evaluate(blank, prompts, batch_size=4, progress=lambda *done: progress.append(done))
    assert report.overall == 0.0
    assert progress[-1] == (len(prompts), len(prompts)) and len(progress) == len(sizes_seen)
    assert all(count <= 4 for count, _, _ in sizes_seen)
    assert sum(count for count, _, _ in sizes_seen) == len(prompts)

    truth = evaluate(ground_truth_generator(prompts), prompts, batch_size=7)
    accuracy = truth.category_accuracy()
    assert list(accuracy) == list(CATEGORIES)
    assert truth.overall == pytest.approx(sum(accuracy.values()) / len(accuracy))
    assert truth.overall >= 0.98
    table = format_table(truth)
    assert all(category in table for category in CATEGORIES) and "overall" in table


def test_evaluate_refuses_images_of_the_wrong_size():
    prompts = limit_prompts(load_eval_prompts(), 6)
    with pytest.raises(DataError, match="asks for"):
        evaluate(lambda captions, w, h: [Image.new("RGB", (32, 32))] * len(captions), prompts)


def test_report_json_is_written_and_complete(tmp_path):
    prompts = limit_prompts(load_eval_prompts(), 12)
    report = evaluate(ground_truth_generator(prompts), prompts)
    path = tmp_path / "report.json"
    write_report(report, path)
    data = json.loads(path.read_text())
    assert data["overall"] == pytest.approx(report.overall)
    assert len(data["results"]) == len(prompts)
    assert set(data["categories"]) == set(CATEGORIES)
    assert isinstance(report, Report)


def run_eval_verb(argv: list[str]) -> int:
    """`lumina eval ...` through the eval verb's own parser (other verbs' modules not needed)."""
    parser = argparse.ArgumentParser(prog="lumina eval")
    eval_cli.add_arguments(parser)
    return eval_cli.run(parser.parse_args(argv))


def test_eval_verb_is_registered():
    assert cli.VERBS["eval"][0] == "lumina_mgpt.shapes.eval_cli"


def test_cli_ground_truth_prints_about_one_and_writes_json(tmp_path, capsys):
    out = tmp_path / "gt.json"
    assert run_eval_verb(["shapes", "--ground-truth", "--limit", "40", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"overall\s+\d+\s+(1\.000|0\.9[89]\d)", printed), printed
    assert json.loads(out.read_text())["overall"] >= 0.98


def test_cli_refuses_degrading_generated_images():
    with pytest.raises(DataError, match="--ground-truth"):
        run_eval_verb(["shapes", "--degrade", "jpeg30"])


# --- dual-panel tasks ----------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_dual_panels_have_two_full_canvases(task):
    rng = np.random.default_rng(4)
    for width, height in CANVAS_SIZES:
        example = sample_dual_panel(rng, task, (width, height))
        assert example.image.size == (width, 2 * height)
        assert example.task == task and example.caption
        assert example.upper.width == example.lower.width == width


def _halves(example):
    width, double = example.image.size
    upper = example.image.crop((0, 0, width, double // 2))
    lower = example.image.crop((0, double // 2, width, double))
    return upper, lower


def _shapes_and_colors(image):
    return Counter((d.shape, d.color) for d in detect(image))


def test_segmentation_classes_match_the_image_objects():
    rng = np.random.default_rng(6)
    for _ in range(12):
        example = sample_dual_panel(rng, "image_to_segmentation")
        image, segmentation = _halves(example)
        seg = np.asarray(segmentation)
        for obj in example.upper.objects:
            x, y = int(obj.center[0]), int(obj.center[1])
            assert tuple(seg[y, x]) == SEGMENTATION_COLORS[obj.shape]
        seg_shapes = Counter()
        for shape, color in SEGMENTATION_COLORS.items():
            if shape != "background":
                _, count = connected_components((seg == color).all(axis=-1))
                seg_shapes[shape] = count
        image_shapes = Counter(d.shape for d in detect(image))
        assert +seg_shapes == image_shapes


def test_edge_map_outlines_the_target_objects():
    rng = np.random.default_rng(8)
    for _ in range(8):
        example = sample_dual_panel(rng, "edge_to_image")
        edges, image = _halves(example)
        dark = (np.asarray(edges) < 128).all(axis=-1)
        labels = render_labels(example.lower)
        assert dark.any() and (labels[dark] > 0).all()
        for index in range(1, len(example.lower.objects) + 1):
            assert dark[labels == index].any()
        expected = Counter((o.shape, o.color) for o in example.lower.objects)
        assert _shapes_and_colors(image) == expected


def test_edits_change_exactly_what_the_instruction_says():
    rng = np.random.default_rng(9)
    for task in ("recolor", "move", "add", "remove"):
        for _ in range(6):
            example = sample_dual_panel(rng, task)
            before, after = example.upper.objects, example.lower.objects
            upper, lower = _halves(example)
            assert _shapes_and_colors(upper) == Counter((o.shape, o.color) for o in before)
            assert _shapes_and_colors(lower) == Counter((o.shape, o.color) for o in after)
            if task == "add":
                assert after[:-1] == before and after[-1].color in example.caption
            elif task == "remove":
                (gone,) = set(before) - set(after)
                assert f"the {gone.color} {gone.shape}" in example.caption
            else:
                changed = [(a, b) for a, b in zip(before, after) if a != b]
                assert len(changed) == 1
                old, new = changed[0]
                assert f"the {old.color} {old.shape}" in example.caption
                if task == "recolor":
                    assert new.color != old.color and new.center == old.center
                    assert example.caption.endswith(new.color)
                else:
                    direction = example.caption.rsplit(" ", 1)[1]
                    dx, dy = new.center[0] - old.center[0], new.center[1] - old.center[1]
                    main_offset = {"left": -dx, "right": dx, "up": -dy, "down": dy}[direction]
                    assert main_offset >= old.size / 2


def test_same_object_task_reuses_the_reference_object():
    rng = np.random.default_rng(10)
    for _ in range(8):
        example = sample_dual_panel(rng, "same_object")
        (reference,) = example.upper.objects
        subject = example.lower.objects[0]
        assert (reference.shape, reference.color, reference.size) == (
            subject.shape,
            subject.color,
            subject.size,
        )
        assert f"the {subject.color} {subject.shape}" in example.caption.replace("same ", "")


def test_unknown_dual_panel_task_is_refused():
    with pytest.raises(DataError, match="accepted"):
        sample_dual_panel(np.random.default_rng(0), "colorize")


def test_written_dataset_is_deterministic_resumable_and_pretokenizable(tmp_path):
    from lumina_mgpt.data import RecordIndex
    from lumina_mgpt.shapes.dataset import write_dataset

    sizes = ((48, 48), (80, 48))
    first = write_dataset(tmp_path / "a", 12, seed=4, sizes=sizes, progress=False)
    (tmp_path / "a" / "images" / "0000003.png").unlink()  # as if killed before this image was saved
    again = write_dataset(tmp_path / "a", 12, seed=4, sizes=sizes, progress=False)
    other = write_dataset(tmp_path / "b", 12, seed=4, sizes=sizes, progress=False)
    assert first.read_text() == again.read_text() == other.read_text()
    for name in ("0000003.png", "0000010.png"):
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()
    records = [json.loads(line) for line in first.read_text().splitlines()]
    assert len(records) == 12 and all(not is_held_out(r["prompt"]) for r in records)
    for i, record in enumerate(records):
        with Image.open(tmp_path / "a" / record["image"]) as image:
            assert image.size == sizes[i % 2]
    index = RecordIndex([first])
    assert index.total == 12 and not any(type(r).__name__ == "BadRecord" for r in index.read(0, 12))
