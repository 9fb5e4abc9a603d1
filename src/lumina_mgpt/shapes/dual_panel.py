"""Dual-panel examples (Lumina-mGPT's any-to-image tasks): one image of width x 2*height whose
upper half is the condition and lower half the target, each a full canvas, with a caption."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes.captions import noun_phrase
from lumina_mgpt.shapes.spec import COLORS, SHAPES, ObjectGroup
from lumina_mgpt.shapes.world import (
    CANVAS_SIZES,
    OBJECT_GAP,
    RELATION_SLOPE,
    Scene,
    SceneObject,
    check_canvas_size,
    free_centers,
    geometry_scale,
    place_objects,
    render,
    render_labels,
)

TASKS: tuple[str, ...] = (
    "edge_to_image",
    "image_to_segmentation",
    "recolor",
    "move",
    "add",
    "remove",
    "same_object",
)
# Flat class colors of segmentation maps.
SEGMENTATION_COLORS: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "circle": (255, 0, 0),
    "square": (0, 255, 0),
    "triangle": (0, 0, 255),
}
MOVE_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Instruction phrasings per task: {name} is an object without its article ("red circle"),
# {object} one with it, {objects} a list of them.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "edge_to_image": (
        "turn the edge map into an image of {objects}",
        "an image of {objects} following the edge map",
    ),
    "image_to_segmentation": (
        "segment the image of {objects} by shape",
        "the shape segmentation map of {objects}",
    ),
    "recolor": (
        "change the color of the {name} to {color}",
        "make the {name} {color}",
        "paint the {name} {color}",
    ),
    "move": ("move the {name} {direction}", "shift the {name} {direction}"),
    "add": ("add {object}", "put {object} into the picture", "insert {object}"),
    "remove": ("remove the {name}", "delete the {name}", "take away the {name}"),
    "same_object": (
        "the same {name} together with {objects}",
        "the {name} from the reference, now with {objects}",
    ),
}
TASK_ATTEMPTS = 100


@dataclass(frozen=True)
class DualPanelExample:
    """A dual-panel image with its instruction caption and the scenes of both halves."""

    image: Image.Image  # width x (2 * height): condition above, target below
    caption: str
    task: str
    upper: Scene
    lower: Scene


def stack_panels(upper: Image.Image, lower: Image.Image) -> Image.Image:
    """Condition above target, one canvas each."""
    panel = Image.new("RGB", (upper.width, upper.height + lower.height))
    panel.paste(upper, (0, 0))
    panel.paste(lower, (0, upper.height))
    return panel


def edge_map(scene: Scene) -> Image.Image:
    """Black object outlines (pixels of an object next to another label) on white."""
    labels = render_labels(scene)
    padded = np.pad(labels, 1, mode="edge")
    height, width = labels.shape
    differs = np.zeros(labels.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dy : dy + height, dx : dx + width] != labels
    edges = differs & (labels > 0)
    return Image.fromarray(np.where(edges, 0, 255).astype(np.uint8)).convert("RGB")


def segmentation_map(scene: Scene) -> Image.Image:
    """Each pixel painted with its shape class's flat color."""
    labels = render_labels(scene)
    lookup = np.array(
        [SEGMENTATION_COLORS["background"]]
        + [SEGMENTATION_COLORS[obj.shape] for obj in scene.objects],
        dtype=np.uint8,
    )
    return Image.fromarray(lookup[labels])


def _phrase(rng: np.random.Generator, task: str, **words: str) -> str:
    options = PHRASINGS[task]
    return options[int(rng.integers(len(options)))].format(**words)


def _describe_all(objects: tuple[SceneObject, ...]) -> str:
    phrases = [noun_phrase(ObjectGroup(obj.shape, obj.color)) for obj in objects]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _distinct_items(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """`count` different (shape, color) pairs, so that every object can be named uniquely."""
    pairs = [(shape, color) for shape in SHAPES for color in COLORS]
    chosen = rng.choice(len(pairs), size=count, replace=False)
    return [pairs[int(i)] for i in chosen]


class _Retry(Exception):
    """This random draw cannot realize the task (no room); draw again."""


def _random_scene(rng: np.random.Generator, width: int, height: int, low: int, high: int) -> Scene:
    return place_objects(rng, _distinct_items(rng, int(rng.integers(low, high + 1))), width, height)


def _edit(rng: np.random.Generator, task: str, width: int, height: int) -> tuple[Scene, Scene, str]:
    """(before, after, instruction) for the edit tasks; raises _Retry when there is no room."""
    if task == "add":
        before = _random_scene(rng, width, height, 1, 3)
        present = {(o.shape, o.color) for o in before.objects}
        shape, color = next(p for p in _distinct_items(rng, 4) if p not in present)
        size = before.objects[int(rng.integers(len(before.objects)))].size  # on the placement grid
        scale = geometry_scale(width, height)
        xs, ys = free_centers(size, list(before.objects), width, height, scale)
        if xs.size == 0:
            raise _Retry
        choice = int(rng.integers(xs.size))
        added = SceneObject(shape, color, (float(xs[choice]), float(ys[choice])), size)
        after = replace(before, objects=before.objects + (added,))
        return before, after, _phrase(rng, task, object=noun_phrase(ObjectGroup(shape, color)))
    before = _random_scene(rng, width, height, 2 if task == "remove" else 1, 3)
    index = int(rng.integers(len(before.objects)))
    target = before.objects[index]
    name = noun_phrase(ObjectGroup(target.shape, target.color), with_count=False)
    others = [o for i, o in enumerate(before.objects) if i != index]
    if task == "remove":
        return before, replace(before, objects=tuple(others)), _phrase(rng, task, name=name)
    if task == "recolor":
        taken = {o.color for o in before.objects if o.shape == target.shape}
        new_color = str(rng.choice([c for c in COLORS if c not in taken]))
        objects = list(before.objects)
        objects[index] = replace(target, color=new_color)
        instruction = _phrase(rng, task, name=name, color=new_color)
        return before, replace(before, objects=tuple(objects)), instruction
    direction = str(rng.choice(list(MOVE_DIRECTIONS)))
    moved = _move(rng, target, others, direction, width, height)
    objects = list(before.objects)
    objects[index] = moved
    instruction = _phrase(rng, task, name=name, direction=direction)
    return before, replace(before, objects=tuple(objects)), instruction


def _move(
    rng: np.random.Generator,
    target: SceneObject,
    others: list[SceneObject],
    direction: str,
    width: int,
    height: int,
) -> SceneObject:
    """The target moved clearly in `direction`: by at least half its size plus a gap, with the
    cross-axis offset kept small."""
    scale = geometry_scale(width, height)
    xs, ys = free_centers(target.size, others, width, height, scale)
    step_x, step_y = MOVE_DIRECTIONS[direction]
    along = (xs - target.center[0]) * step_x + (ys - target.center[1]) * step_y
    across = np.abs((xs - target.center[0]) * step_y + (ys - target.center[1]) * step_x)
    keep = (along >= target.size / 2 + OBJECT_GAP * scale) & (across <= RELATION_SLOPE * along)
    if not keep.any():
        raise _Retry
    choice = int(rng.choice(np.flatnonzero(keep)))
    return replace(target, center=(float(xs[choice]), float(ys[choice])))


def _same_object(rng: np.random.Generator, width: int, height: int) -> tuple[Scene, Scene, str]:
    """A reference object alone, then the same object (shape, color, size) among new objects."""
    new_scene = _random_scene(rng, width, height, 2, 3)
    subject = new_scene.objects[0]
    xs, ys = free_centers(subject.size, [], width, height, geometry_scale(width, height))
    choice = int(rng.integers(xs.size))
    alone = replace(subject, center=(float(xs[choice]), float(ys[choice])))
    reference = replace(new_scene, objects=(alone,))
    name = f"{subject.color} {subject.shape}"
    caption = _phrase(rng, "same_object", name=name, objects=_describe_all(new_scene.objects[1:]))
    return reference, new_scene, caption


def sample_dual_panel(
    rng: np.random.Generator, task: str, size: tuple[int, int] | None = None
) -> DualPanelExample:
    """A random example of `task` (one of TASKS) on a `size` (width, height) canvas per half."""
    if task not in TASKS:
        raise DataError(f"unknown dual-panel task {task!r}; accepted: {', '.join(TASKS)}")
    width, height = size if size is not None else CANVAS_SIZES[int(rng.integers(len(CANVAS_SIZES)))]
    check_canvas_size(width, height)
    if task in ("edge_to_image", "image_to_segmentation"):
        scene = _random_scene(rng, width, height, 1, 4)
        caption = _phrase(rng, task, objects=_describe_all(scene.objects))
        if task == "edge_to_image":
            image = stack_panels(edge_map(scene), render(scene))
        else:
            image = stack_panels(render(scene), segmentation_map(scene))
        return DualPanelExample(image, caption, task, scene, scene)
    for _ in range(TASK_ATTEMPTS):
        try:
            if task == "same_object":
                upper, lower, caption = _same_object(rng, width, height)
            else:
                upper, lower, caption = _edit(rng, task, width, height)
        except _Retry:
            continue
        image = stack_panels(render(upper), render(lower))
        return DualPanelExample(image, caption, task, upper, lower)
    raise DataError(f"could not build a {task!r} example on a {width}x{height} canvas")
