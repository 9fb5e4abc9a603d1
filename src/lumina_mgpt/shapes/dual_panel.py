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
    PLAIN_BACKGROUND,
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
    "image_to_edges",
    "recolor",
    "move",
    "add",
    "remove",
    "same_object",
)
# Flat class colors of segmentation maps: the world's own background and palette colors, which the
# shapes image tokenizers reproduce (through v4's, pure RGB primaries on black came back at 0.02 mIoU,
# these at 0.94; through the task tokenizer, shapes/vq_images.py, at 0.99).
SEGMENTATION_COLORS: dict[str, tuple[int, int, int]] = {
    "background": PLAIN_BACKGROUND.color,
    "circle": COLORS["red"],
    "square": COLORS["green"],
    "triangle": COLORS["blue"],
}
# Edge maps: a band of EDGE_WIDTH pixels inside each object's outline, in the palette's black on the
# plain background (through v4's tokenizer one-pixel black lines on white kept 0.40 F1, this 0.78; through
# the task tokenizer 1.00).
EDGE_WIDTH = 2
EDGE_INK = COLORS["black"]
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
    "image_to_edges": (
        "draw the edge map of the image of {objects}",
        "the object outlines of {objects}",
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


def edge_mask(scene: Scene) -> np.ndarray:
    """(height, width) bool: object pixels within EDGE_WIDTH steps (4-neighbour) of another label."""
    labels = render_labels(scene)
    height, width = labels.shape
    near = np.zeros(labels.shape, dtype=bool)
    padded = np.pad(labels, EDGE_WIDTH, mode="edge")
    for dy in range(-EDGE_WIDTH, EDGE_WIDTH + 1):
        for dx in range(-EDGE_WIDTH, EDGE_WIDTH + 1):
            if 0 < abs(dy) + abs(dx) <= EDGE_WIDTH:
                shifted = padded[EDGE_WIDTH + dy : EDGE_WIDTH + dy + height, EDGE_WIDTH + dx : EDGE_WIDTH + dx + width]
                near |= shifted != labels
    return near & (labels > 0)


def edge_map(scene: Scene) -> Image.Image:
    """The objects' outlines (edge_mask) in EDGE_INK on the plain background."""
    pixels = np.empty((scene.height, scene.width, 3), dtype=np.uint8)
    pixels[:] = PLAIN_BACKGROUND.color
    pixels[edge_mask(scene)] = EDGE_INK
    return Image.fromarray(pixels)


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


def describe_objects(objects: tuple[SceneObject, ...]) -> str:
    phrases = [noun_phrase(ObjectGroup(obj.shape, obj.color)) for obj in objects]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _distinct_items(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """`count` different (shape, color) pairs, so that every object can be named uniquely."""
    pairs = [(shape, color) for shape in SHAPES for color in COLORS]
    chosen = rng.choice(len(pairs), size=count, replace=False)
    return [pairs[int(i)] for i in chosen]


class _Retry(Exception):
    """This random draw cannot realize the task (no room); draw again."""


def random_scene(rng: np.random.Generator, width: int, height: int, low: int, high: int) -> Scene:
    return place_objects(rng, _distinct_items(rng, int(rng.integers(low, high + 1))), width, height)


@dataclass(frozen=True)
class Edit:
    """One edit of a scene: `before` becomes `after`. `target` is the object the instruction names
    (the added object for "add"; as it was before for the others), `index` its place in `before`
    (in `after` for "add"); `new_color` and `direction` are set for recolor and move."""

    kind: str  # recolor, move, add, remove
    before: Scene
    after: Scene
    target: SceneObject
    index: int
    new_color: str | None = None
    direction: str | None = None

    def instruction(self, rng: np.random.Generator, templates: tuple[str, ...]) -> str:
        """One of `templates` filled in: {name} is the target without article, {object} with it."""
        group = ObjectGroup(self.target.shape, self.target.color)
        words = {
            "name": noun_phrase(group, with_count=False),
            "object": noun_phrase(group),
            "color": self.new_color or "",
            "direction": self.direction or "",
        }
        return templates[int(rng.integers(len(templates)))].format(**words)


EDIT_KINDS: tuple[str, ...] = ("recolor", "move", "add", "remove")


def _edit(rng: np.random.Generator, kind: str, width: int, height: int) -> Edit:
    """A random edit of a random scene; raises _Retry when there is no room."""
    if kind == "add":
        before = random_scene(rng, width, height, 1, 3)
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
        return Edit(kind, before, after, added, len(before.objects))
    before = random_scene(rng, width, height, 2 if kind == "remove" else 1, 3)
    index = int(rng.integers(len(before.objects)))
    target = before.objects[index]
    others = [o for i, o in enumerate(before.objects) if i != index]
    if kind == "remove":
        return Edit(kind, before, replace(before, objects=tuple(others)), target, index)
    objects = list(before.objects)
    if kind == "recolor":
        taken = {o.color for o in before.objects if o.shape == target.shape}
        new_color = str(rng.choice([c for c in COLORS if c not in taken]))
        objects[index] = replace(target, color=new_color)
        return Edit(kind, before, replace(before, objects=tuple(objects)), target, index, new_color=new_color)
    direction = str(rng.choice(list(MOVE_DIRECTIONS)))
    objects[index] = _move(rng, target, others, direction, width, height)
    return Edit(kind, before, replace(before, objects=tuple(objects)), target, index, direction=direction)


def sample_edit(rng: np.random.Generator, kind: str, width: int, height: int) -> Edit:
    """A random edit of `kind` (one of EDIT_KINDS) of a scene of 1 to 3 distinct objects."""
    if kind not in EDIT_KINDS:
        raise DataError(f"unknown edit {kind!r}; accepted: {', '.join(EDIT_KINDS)}")
    check_canvas_size(width, height)
    for _ in range(TASK_ATTEMPTS):
        try:
            return _edit(rng, kind, width, height)
        except _Retry:
            continue
    raise DataError(f"could not build a {kind!r} edit on a {width}x{height} canvas")


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


def subject_scenes(rng: np.random.Generator, width: int, height: int) -> tuple[Scene, Scene]:
    """(reference, new scene): a reference object alone, then the same object (shape, color, size)
    first among one or two other new objects."""
    new_scene = random_scene(rng, width, height, 2, 3)
    subject = new_scene.objects[0]
    xs, ys = free_centers(subject.size, [], width, height, geometry_scale(width, height))
    choice = int(rng.integers(xs.size))
    alone = replace(subject, center=(float(xs[choice]), float(ys[choice])))
    return replace(new_scene, objects=(alone,)), new_scene


def _same_object(rng: np.random.Generator, width: int, height: int) -> tuple[Scene, Scene, str]:
    reference, new_scene = subject_scenes(rng, width, height)
    subject = new_scene.objects[0]
    name = f"{subject.color} {subject.shape}"
    caption = _phrase(rng, "same_object", name=name, objects=describe_objects(new_scene.objects[1:]))
    return reference, new_scene, caption


def sample_dual_panel(
    rng: np.random.Generator, task: str, size: tuple[int, int] | None = None
) -> DualPanelExample:
    """A random example of `task` (one of TASKS) on a `size` (width, height) canvas per half."""
    if task not in TASKS:
        raise DataError(f"unknown dual-panel task {task!r}; accepted: {', '.join(TASKS)}")
    width, height = size if size is not None else CANVAS_SIZES[int(rng.integers(len(CANVAS_SIZES)))]
    check_canvas_size(width, height)
    if task in ("edge_to_image", "image_to_segmentation", "image_to_edges"):
        scene = random_scene(rng, width, height, 1, 4)
        caption = _phrase(rng, task, objects=describe_objects(scene.objects))
        if task == "edge_to_image":
            image = stack_panels(edge_map(scene), render(scene))
        elif task == "image_to_edges":
            image = stack_panels(render(scene), edge_map(scene))
        else:
            image = stack_panels(render(scene), segmentation_map(scene))
        return DualPanelExample(image, caption, task, scene, scene)
    for _ in range(TASK_ATTEMPTS):
        try:
            if task == "same_object":
                upper, lower, caption = _same_object(rng, width, height)
            else:
                edit = _edit(rng, task, width, height)
                upper, lower, caption = edit.before, edit.after, edit.instruction(rng, PHRASINGS[task])
        except _Retry:
            continue
        image = stack_panels(render(upper), render(lower))
        return DualPanelExample(image, caption, task, upper, lower)
    raise DataError(f"could not build a {task!r} example on a {width}x{height} canvas")
