"""Exact scorers of the multi-task shapes world: `score_item(item, output)` in [0, 1].

`output` is a PIL image for image tasks and a string for text tasks (caption, vqa, rewrite, verify, relations). For
dual-panel tasks either the whole 64x128 dual panel or its lower 64x64 panel is accepted (told apart
by size). Per task:
- text_to_image: the ShapesEval analyzer against the spec (1 or 0);
- edits: the edited scene matches the instruction and the rest is kept (1 or 0): the detected objects
  are exactly the expected (shape, color) pairs; every object the instruction does not move or add
  lies within KEEP_TOLERANCE of its place; a moved object went clearly the asked way; an added one
  may be anywhere;
- control_edges: the share of expected objects drawn where their outline is (box IoU >= 0.5 with a
  detection) in the right shape and the prompted color, over the larger of the expected and detected
  counts, so extra objects cost too;
- subject: the detected (shape, color) pairs are exactly the reference object and the asked others (1 or 0);
- segmentation: mean IoU over the classes present in the exact map or the prediction (background
  included); edges: F1 of edge pixels, each side counted as found within one pixel of the other;
- caption, rewrite: the parsed caption means the expected spec (1 or 0);
- vqa, verify, relations: the normalized answer equals the expected one (1 or 0).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
from PIL import Image

from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes.analyze import DetectedObject, detect, score
from lumina_mgpt.shapes.captions import NUMBER_WORDS, RELATION_PHRASES, normalize_text, parse_caption, spec_meaning
from lumina_mgpt.shapes.dual_panel import MOVE_DIRECTIONS, SEGMENTATION_COLORS, edge_map, edge_mask, segmentation_map
from lumina_mgpt.shapes.tasks import EvalItem
from lumina_mgpt.shapes.world import GRID, geometry_scale, render, render_labels

# A kept object may sit one placement-grid step (4 px) and a pixel of redrawing off its place; the
# smallest move of an edit is half the smallest object (8 px) plus the object gap (6 px), 14 px, so
# an object moved without being asked is never taken as kept.
KEEP_TOLERANCE = GRID + 1.0
# A moved object must have gone at least half its size the asked way, and more along it than across.
MOVE_MIN_SHARE = 0.5
CONTROL_MIN_IOU = 0.5
EDGE_TOLERANCE = 1  # pixels, either way (Chebyshev distance)
EDGE_DARKNESS = 128  # luminance between the edge ink's (30) and the background's (224)
_SEGMENTATION_PALETTE = np.array(list(SEGMENTATION_COLORS.values()), dtype=np.float64)
_SEGMENTATION_CLASS = {name: index for index, name in enumerate(SEGMENTATION_COLORS)}
_ANSWER_WORDS = {
    **{word: str(number) for number, word in NUMBER_WORDS.items()},
    "zero": "0",
    "none": "0",
    **{phrase: name for name, phrases in RELATION_PHRASES.items() for phrase in phrases},
}


def output_panel(item: EvalItem, output: Image.Image) -> Image.Image:
    """The image to score: for dual-panel tasks, the lower panel of a whole dual panel or the panel itself."""
    size = (item.width, item.height)
    if output.size == size:
        return output.convert("RGB")
    if item.dual_panel and output.size == (item.width, 2 * item.height):
        return output.convert("RGB").crop((0, item.height, item.width, 2 * item.height))
    accepted = f"{size[0]}x{size[1]}" + (f" or the {item.width}x{2 * item.height} dual panel" if item.dual_panel else "")
    raise DataError(f"{item.task} output is {output.width}x{output.height}; accepted: {accepted}")


def _distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(np.hypot(a[0] - b[0], a[1] - b[1]))


def _by_class(detections: list[DetectedObject]) -> dict[tuple[str | None, str | None], DetectedObject] | None:
    """Detections by (shape, color), or None when a pair appears twice or an object has no class."""
    found: dict = {}
    for detection in detections:
        key = (detection.shape, detection.color)
        if None in key or key in found:
            return None
        found[key] = detection
    return found


def score_edit(item: EvalItem, image: Image.Image) -> float:
    edit = item.edit
    if edit is None:
        raise DataError(f"item {item.index} of {item.task} carries no edit to score against")
    found = _by_class(detect(image))
    expected = edit.after.objects
    if found is None or set(found) != {(o.shape, o.color) for o in expected}:
        return 0.0
    tolerance = KEEP_TOLERANCE * geometry_scale(item.width, item.height)
    for index, obj in enumerate(expected):
        center = found[(obj.shape, obj.color)].center
        if edit.kind == "add" and index == edit.index:
            continue
        if edit.kind == "move" and index == edit.index:
            step_x, step_y = MOVE_DIRECTIONS[edit.direction]
            dx, dy = center[0] - edit.target.center[0], center[1] - edit.target.center[1]
            along, across = dx * step_x + dy * step_y, abs(dx * step_y + dy * step_x)
            if along < MOVE_MIN_SHARE * obj.size or across >= along:
                return 0.0
        elif _distance(center, obj.center) > tolerance:
            return 0.0
    return 1.0


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    overlap = width * height
    return overlap / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap)


def score_control(item: EvalItem, image: Image.Image) -> float:
    detections = detect(image)
    expected = item.scene.objects
    matched = 0
    for obj in expected:
        ious = [box_iou(obj.box, d.bbox) for d in detections]
        if ious and max(ious) >= CONTROL_MIN_IOU:
            best = detections[int(np.argmax(ious))]
            matched += (best.shape, best.color) == (obj.shape, obj.color)
    return matched / max(len(expected), len(detections))


def score_subject(item: EvalItem, image: Image.Image) -> float:
    drawn = Counter((d.shape, d.color) for d in detect(image))
    return float(drawn == Counter((o.shape, o.color) for o in item.scene.objects))


def segmentation_classes(image: Image.Image) -> np.ndarray:
    """(height, width) class indices (SEGMENTATION_COLORS order) of a map: each pixel's nearest class color."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    distances = ((pixels[:, :, None, :] - _SEGMENTATION_PALETTE[None, None]) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1)


def exact_segmentation(item: EvalItem) -> np.ndarray:
    """The item scene's class indices, from its exact label map."""
    lookup = np.array([0] + [_SEGMENTATION_CLASS[o.shape] for o in item.scene.objects])
    return lookup[render_labels(item.scene)]


def score_segmentation(item: EvalItem, image: Image.Image) -> float:
    predicted, exact = segmentation_classes(image), exact_segmentation(item)
    ious = []
    for label in np.union1d(np.unique(predicted), np.unique(exact)):
        union = np.count_nonzero((predicted == label) | (exact == label))
        ious.append(np.count_nonzero((predicted == label) & (exact == label)) / union)
    return float(np.mean(ious))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(mask, radius)
    height, width = mask.shape
    grown = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


def edge_pixels(image: Image.Image) -> np.ndarray:
    """Where an edge map is drawn: darker than EDGE_DARKNESS."""
    return np.asarray(image.convert("L")) < EDGE_DARKNESS


def score_edges(item: EvalItem, image: Image.Image) -> float:
    predicted, exact = edge_pixels(image), edge_mask(item.scene)
    if not predicted.any() or not exact.any():
        return float(predicted.any() == exact.any())
    precision = np.count_nonzero(predicted & _dilate(exact, EDGE_TOLERANCE)) / np.count_nonzero(predicted)
    recall = np.count_nonzero(exact & _dilate(predicted, EDGE_TOLERANCE)) / np.count_nonzero(exact)
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, number words as digits, relation synonyms as their names."""
    text = normalize_text(text)
    return _ANSWER_WORDS.get(text, " ".join(_ANSWER_WORDS.get(word, word) for word in text.split()))


def score_caption(item: EvalItem, text: str) -> float:
    parsed = parse_caption(text)
    return float(parsed is not None and spec_meaning(parsed) == spec_meaning(item.spec))


def score_vqa(item: EvalItem, text: str) -> float:
    return float(normalize_answer(text) == normalize_answer(item.answer))


def _image_scorer(scorer: Callable[[EvalItem, Image.Image], float]) -> Callable[[EvalItem, object], float]:
    def scored(item: EvalItem, output: object) -> float:
        if not isinstance(output, Image.Image):
            raise DataError(f"{item.task} is scored on an image; got {type(output).__name__}")
        return scorer(item, output_panel(item, output))

    return scored


def _text_scorer(scorer: Callable[[EvalItem, str], float]) -> Callable[[EvalItem, object], float]:
    def scored(item: EvalItem, output: object) -> float:
        if not isinstance(output, str):
            raise DataError(f"{item.task} is scored on text; got {type(output).__name__}")
        return scorer(item, output)

    return scored


SCORERS: dict[str, Callable[[EvalItem, object], float]] = {
    "text_to_image": _image_scorer(lambda item, image: float(score(image, item.spec))),
    **{f"edit_{kind}": _image_scorer(score_edit) for kind in ("recolor", "move", "add", "remove")},
    "control_edges": _image_scorer(score_control),
    "subject": _image_scorer(score_subject),
    "segmentation": _image_scorer(score_segmentation),
    "edges": _image_scorer(score_edges),
    "caption": _text_scorer(score_caption),
    "vqa": _text_scorer(score_vqa),
    "rewrite": _text_scorer(score_caption),
    "verify": _text_scorer(score_vqa),
    "relations": _text_scorer(score_vqa),
}


def score_item(item: EvalItem, output: Image.Image | str) -> float:
    """How well `output` answers `item`, in [0, 1] (see the module docstring for each task's rule)."""
    if item.task not in SCORERS:
        raise DataError(f"no scorer for task {item.task!r}; accepted: {', '.join(SCORERS)}")
    return SCORERS[item.task](item, output)


def expected_output(item: EvalItem) -> Image.Image | str:
    """The exact right output of `item` (a panel, or the canonical answer): what scores 1.0."""
    if item.answer is not None:
        return item.answer
    if item.task == "segmentation":
        return segmentation_map(item.scene)
    if item.task == "edges":
        return edge_map(item.scene)
    if item.scene is None:
        raise DataError(f"item {item.index} of {item.task} has no expected scene; text-to-image has many right images")
    return render(item.scene)
