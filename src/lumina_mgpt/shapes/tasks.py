"""The multi-task shapes world: for each task, training records and held-out evaluation items.

Tasks (TASK_NAMES): text_to_image; the edits edit_recolor, edit_move, edit_add, edit_remove; control_edges
(edge map -> image, with a caption); subject (the same object in a new scene); segmentation and edges
(image -> map); caption, vqa (understanding: the image in the user turn); rewrite (a free-form request
-> the canonical caption, text only); verify (vqa's yes/no question alone, about prompts phrased like a
user's, its near misses including the mistakes a drawing makes: what the self-verifier asks,
generation.verifiers.SelfVerifier; its eval items quote canonical captions); relations (vqa's questions
about where two objects are: "where is X relative to Y?" and yes/no about a relation, its near misses the
direction reversed or the other axis, for a drill on what the model reads worst).

Image-to-image tasks are v2-style dual panels of 64x128 (formats.image_to_image_prompt and
image_map_pair_prompt with the whole panel's size): the condition in the upper panel, the result in
the lower one, which the model writes given the upper panel's code rows. Text-to-image uses the
64x64, 80x48 and 48x80 canvases; understanding tasks (READING_TASKS) show a 64x64 image unless their
training records are asked for on other canvases (`training_record(canvases=)`): the first three build
stages taught them on 64x64 only, and the model then misread drawings of 80x48 and 48x80.

Seeds: training record i of a task comes from `np.random.default_rng([seed, TRAIN_STREAM, task_key, i])`,
evaluation item i from `[seed, EVAL_STREAM, task_key, i]` (task_key: the CRC-32 of the task's name).
The two entropy words differ, so the streams are independent whatever the seeds: an evaluation input of
two objects or more equals a training one only by chance in a space of millions. One object alone has
only some thousands of places, sizes and colors, so a large training set shows most such inputs.
Evaluation prompts for text-to-image and rewriting use the held-out phrasings (heldout_phrasing.py),
which training never produces, and training prompts never equal a ShapesEval prompt. Captions and
rewrites may answer with one: those are text the model writes, not prompts it draws from.
"""

from __future__ import annotations

import numbers
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from lumina_mgpt.errors import DataError
from lumina_mgpt.formats import IMAGE_PLACEHOLDER, image_map_pair_prompt, image_to_image_prompt, text_to_image_prompt
from lumina_mgpt.shapes.analyze import DetectedObject, score_detections
from lumina_mgpt.shapes.captions import (
    INVERSE_RELATIONS,
    canonical_caption,
    noun_phrase,
    sample_spec,
)
from lumina_mgpt.shapes.dual_panel import (
    PHRASINGS,
    Edit,
    describe_objects,
    edge_map,
    sample_edit,
    segmentation_map,
    stack_panels,
    subject_scenes,
)
from lumina_mgpt.shapes.phrasing import apply_case, edit_instruction, phrase, written_request
from lumina_mgpt.shapes.prompts import is_held_out
from lumina_mgpt.shapes.spec import CATEGORIES, COLORS, SHAPES, ObjectGroup, Relation, Spec
from lumina_mgpt.shapes.world import CANVAS_SIZES, Scene, place_objects, render, scene_from_spec

TASK_NAMES: tuple[str, ...] = (
    "text_to_image",
    "edit_recolor",
    "edit_move",
    "edit_add",
    "edit_remove",
    "control_edges",
    "subject",
    "segmentation",
    "edges",
    "caption",
    "vqa",
    "rewrite",
    "verify",
    "relations",
)
TRAIN_STREAM, EVAL_STREAM = 0, 1
# The tasks that read a picture the user gives: their records may show it on any canvas of CANVAS_SIZES.
READING_TASKS = ("caption", "vqa", "verify", "relations")
REQUEST_TASKS = ("text_to_image", "rewrite")  # the tasks whose prompt is a request as people write it
PANEL = (64, 64)  # (width, height) of each half of a dual panel, and of understanding images by default
DUAL_PANEL = (PANEL[0], 2 * PANEL[1])
# The user turn of rewriting; the answer is the request's canonical caption (captions.canonical_caption).
REWRITE_INSTRUCTION = "rewrite as a shapes caption: {request}"
# Conditions of the dual-panel prompts (formats.image_to_image_prompt): what the upper panel shows.
EDIT_CONDITION = "image to edit"
EDGE_MAP = "canny edge map"  # the official name nearest to our one-pixel object outlines
# The text after the dual-panel sentence of the prediction tasks (the API knows no caption there).
PREDICTION_TEXT = {"segmentation": "segment the shapes by class", "edges": "outline the shapes"}
# The v2 image-to-map sentence (formats.image_map_pair_prompt) with a map the official list lacks.
SEGMENTATION_PROMPT = (
    "Generate a dual-panel image of {width}x{height} where the <lower half> displays a <segmentation map>, "
    "while the <upper half> retains the original image for direct visual comparison:\n{prompt}"
)
CAPTION_QUESTIONS = (
    "describe the image.",
    "describe the image",
    "what does this image show?",
    "write a caption for this image.",
    "caption this picture.",
    "what is in the picture?",
    "describe this picture in a few words.",
    "what do you see?",
)
VQA_TEMPLATES: dict[str, tuple[str, ...]] = {
    "how_many": (
        "how many {plural} are there?",
        "how many {plural} are in the image?",
        "count the {plural}.",
        "how many {plural} do you see?",
        "number of {plural}?",
    ),
    "what_color": (
        "what color is the {name}?",
        "which color does the {name} have?",
        "what is the color of the {name}?",
        "the {name} is what color?",
    ),
    "where": (
        "where is the {subject} relative to the {reference}?",
        "where is the {subject} compared to the {reference}?",
        "how is the {subject} placed relative to the {reference}?",
        "is the {subject} left of, right of, above or below the {reference}?",
    ),
    "yes_no": (
        "does this image show: {caption}?",
        "does the image show {caption}?",
        "is this a picture of {caption}?",
        "does this picture match: {caption}?",
    ),
}
VQA_KINDS = ("how_many", "how_many_colored", "what_color", "where", "yes_no")
# "Where is X relative to Y?" is answered after the model writes what it sees, as its caption would say it
# ("i see a red circle to the left of a blue square. answer: right of"): the model captions the relation
# right every time but answered the direction no better than chance when asked straight, so the answer is
# left to a comparison of names in its own words. (In the shipped model's 1,200-step polish stage that
# comparison was not learned either: its captions are right, its directions still a coin toss.) The API
# returns what follows ANSWER_MARKER (generation/tasks.py); yes/no questions stay one word, which the
# self-verifier reads.
SEEN_ANSWER = "i see {caption}. answer: {answer}"
ANSWER_MARKER = "answer:"
VERIFY_CATEGORIES = (*CATEGORIES, "counting", "position", "color_attr")
SAMPLE_ATTEMPTS = 100


@dataclass(frozen=True)
class TrainingRecord:
    """One conversation ready for the data writer: turns alternate human, assistant, and hold one
    `<|image|>` per image, in order."""

    task: str
    turns: tuple[str, ...]
    images: tuple[Image.Image, ...] = ()


@dataclass(frozen=True)
class EvalItem:
    """What the API gets for one evaluation item and what a right answer is.

    text: the prompt, instruction, question or request; image: the input (the condition panel for
    image-to-image tasks, the picture for understanding tasks), None for text-only tasks; kind: the
    API's kind argument (control "edges", prediction "segmentation" / "edges", subject "subject");
    variant: a label to break scores down by (phrasing style, question type, edit kind);
    width x height: the canvas the output image is drawn on (one panel for dual-panel tasks).
    Expected: `scene` (the scene the output should show, or the one the input shows), `spec`
    (text-to-image, caption and rewrite), `edit` (edits), `answer` (text tasks: the canonical answer).
    """

    task: str
    index: int
    text: str
    width: int
    height: int
    image: Image.Image | None = None
    kind: str | None = None
    variant: str = ""
    scene: Scene | None = None
    spec: Spec | None = None
    edit: Edit | None = None
    answer: str | None = None

    @property
    def dual_panel(self) -> bool:
        """Whether the model draws the output as the lower half of a dual panel."""
        return TASKS[self.task].dual_panel


@dataclass(frozen=True)
class Task:
    """One task: whether its output is an image drawn as a lower panel, and its two samplers."""

    name: str
    dual_panel: bool
    # (rng) -> record; READING_TASKS' samplers also take the canvases their picture may be drawn on
    sample_record: Callable[..., TrainingRecord]
    # (rng, position in the eval set) -> item; READING_TASKS' samplers also take the canvases, as above
    sample_item: Callable[..., EvalItem]


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _check_task(task: str) -> Task:
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; accepted: {', '.join(TASK_NAMES)}")
    return TASKS[task]


def task_rng(task: str, seed: int, index: int, stream: int) -> np.random.Generator:
    """The generator of record or item `index` of `task` in `stream` (TRAIN_STREAM or EVAL_STREAM)."""
    if seed < 0 or index < 0:
        raise DataError(f"seed and index must be non-negative, got {seed} and {index}")
    return np.random.default_rng([seed, stream, zlib.crc32(task.encode()), index])


Canvases = tuple[tuple[int, int], ...]


def training_record(task: str, seed: int, index: int, canvases: Canvases = (PANEL,)) -> TrainingRecord:
    """Training record `index` of `task` for `seed` (deterministic; independent of other records).
    `canvases`: the (width, height) sizes of CANVAS_SIZES a READING_TASKS picture is drawn on, one drawn
    per record; with the default, 64x64 only, the records are those the first build stages trained on."""
    sampler = _check_task(task)
    canvases = canvases_for([task], canvases)
    rng = task_rng(task, seed, index, TRAIN_STREAM)
    return sampler.sample_record(rng) if canvases == (PANEL,) else sampler.sample_record(rng, canvases)


def read_request_record(task: str, seed: int, index: int, read: Callable[[str], str]) -> TrainingRecord:
    """Record `index` of text_to_image or rewrite (REQUEST_TASKS) for `seed`, its prompt written by
    `phrasing.written_request` (lists and requests in context besides `phrase`'s styles) and read by `read` as
    the model will read it (`KnownWords.read`): the requests stage's records. The prompt a model hears is its
    reading of the request, so it trains on the leftovers of a long request ("..., with a") that it meets."""
    if task not in REQUEST_TASKS:
        raise DataError(f"task {task!r} has no request records; accepted: {', '.join(REQUEST_TASKS)}")
    sampler = _text_to_image_record if task == "text_to_image" else _rewrite_record
    return sampler(task_rng(task, seed, index, TRAIN_STREAM), written_request, read)


def eval_item(task: str, seed: int, index: int, canvases: Canvases = (PANEL,)) -> EvalItem:
    """Evaluation item `index` of `task` for `seed`, from a stream disjoint from training; `canvases` as in
    `training_record` (the held-out items of `lumina eval tasks` are the default's)."""
    sampler = _check_task(task)
    canvases = canvases_for([task], canvases)
    rng = task_rng(task, seed, index, EVAL_STREAM)
    return sampler.sample_item(rng, index) if canvases == (PANEL,) else sampler.sample_item(rng, index, canvases)


def eval_items(task: str, count: int, seed: int = 0, canvases: Canvases = (PANEL,)) -> list[EvalItem]:
    """The first `count` evaluation items of `task` for `seed`, `canvases` as in `eval_item`."""
    if count < 0:
        raise DataError(f"item count must be non-negative, got {count}")
    return [eval_item(task, seed, index, canvases) for index in range(count)]


def canvases_for(tasks: Iterable[str], canvases: object) -> Canvases:
    """`canvases` as distinct (width, height) pairs of CANVAS_SIZES; other than the default (64x64 only), for
    READING_TASKS only. DataError saying what is accepted otherwise."""
    sizes = list(canvases) if isinstance(canvases, (tuple, list)) else []
    checked = tuple(
        (int(size[0]), int(size[1]))
        for size in sizes
        if isinstance(size, (tuple, list)) and len(size) == 2
        and all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in size)
    )  # fmt: skip
    malformed = not checked or len(checked) != len(sizes) or len(set(checked)) != len(checked)
    if malformed or any(size not in CANVAS_SIZES for size in checked):
        raise DataError(
            f"canvases {canvases!r}: accepted a non-empty list of distinct (width, height) among {CANVAS_SIZES}"
        )
    others = [task for task in tasks if task not in READING_TASKS]
    if checked != (PANEL,) and others:
        raise DataError(
            f"{', '.join(others)} draw(s) on their own canvases; other canvases apply to {', '.join(READING_TASKS)} "
            f"only: ask for those tasks alone"
        )
    return checked


def _canvas(rng: np.random.Generator, canvases: Canvases) -> tuple[int, int]:
    """One of `canvases`; a single canvas draws nothing from `rng`, so 64x64 records stay as they were."""
    return canvases[0] if len(canvases) == 1 else canvases[int(rng.integers(len(canvases)))]


def understanding_turns(question: str, answer: str) -> tuple[str, str]:
    return f"{question} {IMAGE_PLACEHOLDER}", answer


def _dual_panel_turns(prompt: str) -> tuple[str, str]:
    return prompt, IMAGE_PLACEHOLDER


# --- text to image and rewriting -------------------------------------------------------------------


def _as_written(text: str) -> str:
    return text


def _training_prompt(
    rng: np.random.Generator, write: Callable[[Spec, np.random.Generator], str] = phrase,
    read: Callable[[str], str] = _as_written,
) -> tuple[Spec, str]:
    """A spec of a random category and a training phrasing of it by `write`, as `read` reads it, that is no
    ShapesEval prompt."""
    for _ in range(SAMPLE_ATTEMPTS):
        spec = sample_spec(rng, _pick(rng, CATEGORIES))
        text = read(write(spec, rng))
        if not is_held_out(text):
            return spec, text
    raise DataError("no training prompt found outside the ShapesEval prompts")


def _text_to_image_record(rng: np.random.Generator, write=phrase, read=_as_written) -> TrainingRecord:
    spec, text = _training_prompt(rng, write, read)
    width, height = CANVAS_SIZES[int(rng.integers(len(CANVAS_SIZES)))]
    image = render(scene_from_spec(rng, spec, width, height))
    return TrainingRecord("text_to_image", (text_to_image_prompt(text, width, height), IMAGE_PLACEHOLDER), (image,))


def _heldout_request(rng: np.random.Generator, position: int) -> tuple[Spec, str, str]:
    """(spec, style, text): categories and held-out styles taken in turn along the eval set."""
    # Imported here: the held-out phrasings are for evaluation only, and training never loads them.
    from lumina_mgpt.shapes.heldout_phrasing import heldout_phrase_cycling

    spec = sample_spec(rng, CATEGORIES[position % len(CATEGORIES)])
    style, text = heldout_phrase_cycling(spec, position // len(CATEGORIES), rng)
    return spec, style, text


def _text_to_image_item(rng: np.random.Generator, position: int) -> EvalItem:
    spec, style, text = _heldout_request(rng, position)
    width, height = CANVAS_SIZES[int(rng.integers(len(CANVAS_SIZES)))]  # drawn: independent of the style
    return EvalItem("text_to_image", position, text, width, height, variant=style, spec=spec)


def _rewrite_record(rng: np.random.Generator, write=phrase, read=_as_written) -> TrainingRecord:
    spec, text = _training_prompt(rng, write, read)
    return TrainingRecord("rewrite", (REWRITE_INSTRUCTION.format(request=text), canonical_caption(spec)))


def _rewrite_item(rng: np.random.Generator, position: int) -> EvalItem:
    spec, style, text = _heldout_request(rng, position)
    return EvalItem(
        "rewrite", position, text, *PANEL, variant=style, spec=spec, answer=canonical_caption(spec)
    )


# --- image to image ------------------------------------------------------------------------------


def _edit_sampler(kind: str) -> tuple[Callable, Callable]:
    task = f"edit_{kind}"

    def record(rng: np.random.Generator) -> TrainingRecord:
        edit = sample_edit(rng, kind, *PANEL)
        prompt = image_to_image_prompt(edit_instruction(edit, rng), *DUAL_PANEL, EDIT_CONDITION)
        image = stack_panels(render(edit.before), render(edit.after))
        return TrainingRecord(task, _dual_panel_turns(prompt), (image,))

    def item(rng: np.random.Generator, position: int) -> EvalItem:
        edit = sample_edit(rng, kind, *PANEL)
        return EvalItem(
            task, position, edit_instruction(edit, rng, typos=False), *PANEL, image=render(edit.before), variant=kind,
            scene=edit.after, edit=edit,
        )  # fmt: skip

    return record, item


def _control_scene(rng: np.random.Generator) -> Scene:
    """One to three objects of different shapes, so that a caption binds each color to one outline."""
    count = int(rng.integers(1, len(SHAPES) + 1))
    shapes = [str(s) for s in rng.choice(SHAPES, size=count, replace=False)]
    return place_objects(rng, [(shape, _pick(rng, list(COLORS))) for shape in shapes], *PANEL)


def _control_record(rng: np.random.Generator) -> TrainingRecord:
    scene = _control_scene(rng)
    order = rng.permutation(len(scene.objects))  # the caption's order carries no position
    caption = apply_case(rng, describe_objects(tuple(scene.objects[int(i)] for i in order)))
    prompt = image_to_image_prompt(caption, *DUAL_PANEL, EDGE_MAP)
    return TrainingRecord("control_edges", _dual_panel_turns(prompt), (stack_panels(edge_map(scene), render(scene)),))


def _control_item(rng: np.random.Generator, position: int) -> EvalItem:
    scene = _control_scene(rng)
    caption = describe_objects(scene.objects)
    return EvalItem("control_edges", position, caption, *PANEL, image=edge_map(scene), kind="edges", scene=scene)


def _subject_text(rng: np.random.Generator, new_scene: Scene) -> tuple[str, str]:
    """(condition, prompt): the subject's description and what the new scene should hold."""
    subject = new_scene.objects[0]
    name = noun_phrase(ObjectGroup(subject.shape, subject.color), with_count=False)
    prompt = _pick(rng, PHRASINGS["same_object"]).format(name=name, objects=describe_objects(new_scene.objects[1:]))
    return name, prompt


def _subject_record(rng: np.random.Generator) -> TrainingRecord:
    reference, new_scene = subject_scenes(rng, *PANEL)
    condition, prompt = _subject_text(rng, new_scene)
    text = image_to_image_prompt(apply_case(rng, prompt), *DUAL_PANEL, condition)
    return TrainingRecord("subject", _dual_panel_turns(text), (stack_panels(render(reference), render(new_scene)),))


def _subject_item(rng: np.random.Generator, position: int) -> EvalItem:
    reference, new_scene = subject_scenes(rng, *PANEL)
    _, prompt = _subject_text(rng, new_scene)
    return EvalItem("subject", position, prompt, *PANEL, image=render(reference), kind="subject", scene=new_scene)


def map_prompt(task: str) -> str:
    """The dual-panel prompt of a prediction task ("segmentation" or "edges") on a 64x128 panel."""
    if task == "segmentation":
        width, height = DUAL_PANEL
        return SEGMENTATION_PROMPT.format(width=width, height=height, prompt=PREDICTION_TEXT[task])
    if task == "edges":
        return image_map_pair_prompt(PREDICTION_TEXT[task], *DUAL_PANEL, EDGE_MAP)
    raise DataError(f"unknown prediction task {task!r}; accepted: {', '.join(PREDICTION_TEXT)}")


def _prediction_sampler(task: str) -> tuple[Callable, Callable]:
    draw_map = segmentation_map if task == "segmentation" else edge_map

    def scene_of(rng: np.random.Generator) -> Scene:
        count = int(rng.integers(1, 5))
        items = [(_pick(rng, SHAPES), _pick(rng, list(COLORS))) for _ in range(count)]
        return place_objects(rng, items, *PANEL)

    def record(rng: np.random.Generator) -> TrainingRecord:
        scene = scene_of(rng)
        return TrainingRecord(task, _dual_panel_turns(map_prompt(task)), (stack_panels(render(scene), draw_map(scene)),))

    def item(rng: np.random.Generator, position: int) -> EvalItem:
        scene = scene_of(rng)
        return EvalItem(task, position, PREDICTION_TEXT[task], *PANEL, image=render(scene), kind=task, scene=scene)

    return record, item


# --- understanding -------------------------------------------------------------------------------


def scene_detections(scene: Scene) -> list[DetectedObject]:
    """The scene's objects as the analyzer would report them on an exact render."""
    detections = []
    for obj in scene.objects:
        left, top, right, bottom = obj.box
        box = (round(left), round(top), round(right), round(bottom))
        detections.append(DetectedObject(obj.shape, obj.color, obj.center, obj.size * obj.size, box))
    return sorted(detections, key=lambda d: -d.area)


def shows(scene: Scene, spec: Spec) -> bool:
    """Whether the scene satisfies `spec` by the analyzer's rules (the truth of a yes/no question)."""
    return score_detections(scene_detections(scene), spec)


def caption_spec(rng: np.random.Generator) -> Spec:
    """A spec that names everything in its scene: one object, a counted group of one color, or two
    objects in a relation, read left to right or top to bottom ('left of' or 'above')."""
    category = _pick(rng, ("colors", "counting", "position"))
    spec = sample_spec(rng, category)
    taken = {g.color for g in spec.groups if g.color}
    groups = []
    for group in spec.groups:
        color = group.color or _pick(rng, [c for c in COLORS if c not in taken])
        taken.add(color)
        groups.append(replace(group, color=color))
    relation = spec.relation if spec.relation is None else _in_reading_order(spec.relation)
    return Spec(category, tuple(groups), relation)


def _in_reading_order(relation: Relation) -> Relation:
    """The relation said from the left or top object, as captions say it ("right of" -> "left of" the other way)."""
    if relation.name in ("right of", "below"):
        return Relation(relation.reference, INVERSE_RELATIONS[relation.name], relation.subject)
    return relation


def _caption_record(rng: np.random.Generator, canvases: Canvases = (PANEL,)) -> TrainingRecord:
    spec = caption_spec(rng)
    image = render(scene_from_spec(rng, spec, *_canvas(rng, canvases)))
    question = apply_case(rng, _pick(rng, CAPTION_QUESTIONS))
    return TrainingRecord("caption", understanding_turns(question, canonical_caption(spec)), (image,))


def _caption_item(rng: np.random.Generator, position: int, canvases: Canvases = (PANEL,)) -> EvalItem:
    spec = caption_spec(rng)
    canvas = _canvas(rng, canvases)
    scene = scene_from_spec(rng, spec, *canvas)
    question = CAPTION_QUESTIONS[position % len(CAPTION_QUESTIONS)]
    return EvalItem(
        "caption", position, question, *canvas, image=render(scene), variant=spec.category, scene=scene, spec=spec,
        answer=canonical_caption(spec),
    )  # fmt: skip


def _plural(shape: str, color: str | None = None) -> str:
    return noun_phrase(ObjectGroup(shape, color, 2, exact=True), with_count=False)


def _count_question(
    rng: np.random.Generator, colored: bool, canvas: tuple[int, int] = PANEL
) -> tuple[Scene, dict[str, str], str]:
    """A scene of one to four objects, mostly of one shape, and how many of a shape (and color) it holds."""
    shape = _pick(rng, SHAPES)
    palette = [str(c) for c in rng.choice(list(COLORS), size=2, replace=False)]
    count = int(rng.integers(1, 5))
    items = [
        (shape if rng.random() < 0.7 else _pick(rng, SHAPES), _pick(rng, palette)) for _ in range(count)
    ]
    color = _pick(rng, palette) if colored else None
    if colored and rng.random() < 0.15:  # a color not in the picture: the answer is 0
        color = _pick(rng, [c for c in COLORS if c not in palette])
    scene = place_objects(rng, items, *canvas)
    answer = sum(1 for o in scene.objects if o.shape == shape and (color is None or o.color == color))
    return scene, {"plural": _plural(shape, color)}, str(answer)


def _color_question(rng: np.random.Generator, canvas: tuple[int, int] = PANEL) -> tuple[Scene, dict[str, str], str]:
    count = int(rng.integers(1, len(SHAPES) + 1))
    shapes = [str(s) for s in rng.choice(SHAPES, size=count, replace=False)]
    scene = place_objects(rng, [(s, _pick(rng, list(COLORS))) for s in shapes], *canvas)
    asked = scene.objects[int(rng.integers(count))]
    return scene, {"name": asked.shape}, asked.color


def _where_question(
    rng: np.random.Generator, canvas: tuple[int, int] = PANEL
) -> tuple[Scene, dict[str, str], str, str]:
    """(scene, the question's words, answer, the answer as training writes it: after what is seen)."""
    pairs = [(shape, color) for shape in SHAPES for color in COLORS]
    first, second = (pairs[int(i)] for i in rng.choice(len(pairs), size=2, replace=False))
    name = _pick(rng, list(INVERSE_RELATIONS))
    scene = place_objects(rng, [first, second], *canvas, relation=(0, name, 1))
    words = {"subject": f"{first[1]} {first[0]}", "reference": f"{second[1]} {second[0]}"}
    spec = Spec("position", (ObjectGroup(*first), ObjectGroup(*second)), _in_reading_order(Relation(0, name, 1)))
    seen = canonical_caption(spec)
    return scene, words, name, SEEN_ANSWER.format(caption=seen, answer=name)


def near_miss(
    rng: np.random.Generator, spec: Spec, detections: list, drawing_mistakes: bool = False
) -> tuple[Spec, str] | None:
    """(a spec like `spec` that a picture of `detections` does not show, how it was changed), or None when
    SAMPLE_ATTEMPTS changes drawn all happen to stay true. `detections`: the picture's objects, analyze.detect
    of a drawing or scene_detections of a scene. Each try changes the spec one way among those that apply;
    `drawing_mistakes` adds the ways a drawing of the spec goes wrong, which the self-verifier must notice: a
    count off by one, the two colors on the wrong objects, a relation on the other axis, a second object that
    is not there."""
    for _ in range(SAMPLE_ATTEMPTS):
        changed, kind = _changed_spec(rng, spec, drawing_mistakes)
        if not score_detections(detections, changed):
            return changed, kind
    return None


def _changed_spec(rng: np.random.Generator, spec: Spec, drawing_mistakes: bool) -> tuple[Spec, str]:
    """`spec` changed one way among those that apply (see near_miss), and the way's name."""
    kinds = ["wrong_color", "wrong_shape"]
    kinds += ["wrong_count"] if len(spec.groups) == 1 else []
    kinds += ["swapped_relation"] if spec.relation is not None else []
    if drawing_mistakes:
        kinds += ["count_off_by_one"] if len(spec.groups) == 1 else []
        colors = [group.color for group in spec.groups]
        kinds += ["swapped_colors"] if len(spec.groups) == 2 and None not in colors and len(set(colors)) == 2 else []
        kinds += ["other_axis"] if spec.relation is not None else []
        kinds += ["one_more_object"] if len(spec.groups) == 1 and spec.groups[0].count == 1 else []
    kind = _pick(rng, kinds)
    groups = list(spec.groups)
    at = int(rng.integers(len(groups)))
    group = groups[at]
    relation = spec.relation
    if kind == "wrong_color":
        groups[at] = replace(group, color=_pick(rng, [c for c in COLORS if c != group.color]))
    elif kind == "wrong_shape":
        groups[at] = replace(group, shape=_pick(rng, [s for s in SHAPES if s != group.shape]))
    elif kind == "wrong_count":
        options = [n for n in (2, 3, 4) if n != group.count]
        groups[at] = replace(group, count=options[int(rng.integers(len(options)))], exact=True)
    elif kind in ("swapped_relation", "other_axis"):
        relation = _changed_relation(rng, relation, kind)
    elif kind == "count_off_by_one":  # one object too many or too few (one object: two)
        options = [n for n in (group.count - 1, group.count + 1) if 2 <= n <= 4]
        groups[at] = replace(group, count=options[int(rng.integers(len(options)))], exact=True)
    elif kind == "swapped_colors":  # each color on the other object
        groups = [replace(groups[0], color=groups[1].color), replace(groups[1], color=groups[0].color)]
    else:  # one_more_object: the caption names an object the scene lacks
        shape = _pick(rng, [s for s in SHAPES if s != group.shape])
        groups.append(ObjectGroup(shape, _pick(rng, list(COLORS)) if group.color else None))
    category = "counting" if groups[0].count > 1 else spec.category
    category = "two_object" if len(groups) > len(spec.groups) else category
    return Spec(category, tuple(groups), relation), kind


def _changed_relation(rng: np.random.Generator, relation: Relation, kind: str) -> Relation:
    """The relation reversed ("swapped_relation") or on the other axis ("other_axis": left/right for
    above/below and back)."""
    if kind == "swapped_relation":
        return replace(relation, name=INVERSE_RELATIONS[relation.name])
    axis = ("above", "below") if relation.name in ("left of", "right of") else ("left of", "right of")
    return replace(relation, name=_pick(rng, axis))


def _yes_no_question(
    rng: np.random.Generator, drawing_mistakes: bool = False, canvas: tuple[int, int] = PANEL
) -> tuple[Scene, Spec, str, str]:
    """(scene, the spec asked about, answer, variant): "yes" and "no" equally often; a "no" is a near
    miss. With `drawing_mistakes`, the categories a drawing most often gets wrong come up twice as often."""
    spec = sample_spec(rng, _pick(rng, VERIFY_CATEGORIES if drawing_mistakes else CATEGORIES))
    scene = scene_from_spec(rng, spec, *canvas)
    if rng.random() < 0.5:
        return scene, spec, "yes", "yes"
    miss = near_miss(rng, spec, scene_detections(scene), drawing_mistakes)
    if miss is None:
        raise DataError(f"no near-miss caption found for {spec}")
    changed, kind = miss
    return scene, changed, "no", kind


def _vqa_question(
    rng: np.random.Generator, templates: Callable[[str], str], canvases: Canvases = (PANEL,)
) -> tuple[Scene, str, str, str, str]:
    """(scene, question, answer, kind, the answer as training writes it); `templates(kind)` picks the
    question's wording."""
    kind = _pick(rng, VQA_KINDS)
    canvas = _canvas(rng, canvases)
    variant = kind
    response = None
    if kind in ("how_many", "how_many_colored"):
        scene, words, answer = _count_question(rng, colored=kind == "how_many_colored", canvas=canvas)
        template = templates("how_many")
    elif kind == "what_color":
        scene, words, answer = _color_question(rng, canvas)
        template = templates(kind)
    elif kind == "where":
        scene, words, answer, response = _where_question(rng, canvas)
        template = templates(kind)
    else:
        scene, asked, answer, miss = _yes_no_question(rng, canvas=canvas)
        words = {"caption": canonical_caption(asked)}
        variant = f"yes_no:{miss}"
        template = templates(kind)
    return scene, template.format(**words), answer, variant, response or answer


def _vqa_record(rng: np.random.Generator, canvases: Canvases = (PANEL,)) -> TrainingRecord:
    scene, question, _, _, response = _vqa_question(rng, lambda kind: _pick(rng, VQA_TEMPLATES[kind]), canvases)
    return TrainingRecord("vqa", understanding_turns(apply_case(rng, question), response), (render(scene),))


def _vqa_item(rng: np.random.Generator, position: int, canvases: Canvases = (PANEL,)) -> EvalItem:
    scene, question, answer, variant, _ = _vqa_question(rng, lambda kind: VQA_TEMPLATES[kind][0], canvases)
    return EvalItem(
        "vqa", position, question, scene.width, scene.height, image=render(scene), variant=variant, scene=scene,
        answer=answer,
    )  # fmt: skip


def quoted_prompt(prompt: str) -> str:
    """A prompt as a yes/no question quotes it: without its closing punctuation (the template adds a '?').
    The self-verifier and the verify task's records both quote this way."""
    return prompt.strip().rstrip(".!?").strip()


def prompt_as_quoted(rng: np.random.Generator, spec: Spec) -> str:
    """A training phrasing of `spec` (no ShapesEval prompt), quoted as the self-verifier quotes a user's prompt."""
    for _ in range(SAMPLE_ATTEMPTS):
        text = quoted_prompt(phrase(spec, rng))
        if not is_held_out(text):
            return text
    raise DataError(f"no training phrasing of {spec} found outside the ShapesEval prompts")


def _verify_record(rng: np.random.Generator, canvases: Canvases = (PANEL,)) -> TrainingRecord:
    # Users' prompts, not captions, are what the verifier asks about: the caption is phrased like one.
    scene, asked, answer, _ = _yes_no_question(rng, drawing_mistakes=True, canvas=_canvas(rng, canvases))
    question = _pick(rng, VQA_TEMPLATES["yes_no"]).format(caption=prompt_as_quoted(rng, asked))
    return TrainingRecord("verify", understanding_turns(question, answer), (render(scene),))


def _verify_item(rng: np.random.Generator, position: int, canvases: Canvases = (PANEL,)) -> EvalItem:
    scene, asked, answer, variant = _yes_no_question(rng, drawing_mistakes=True, canvas=_canvas(rng, canvases))
    question = VQA_TEMPLATES["yes_no"][0].format(caption=canonical_caption(asked))
    return EvalItem(
        "verify", position, question, scene.width, scene.height, image=render(scene), variant=variant, scene=scene, answer=answer
    )


def _relation_question(
    rng: np.random.Generator, template: Callable[[str], str], canvases: Canvases = (PANEL,)
) -> tuple[Scene, str, str, str, str]:
    """(scene, question, answer, variant, the answer as training writes it): "where is X relative to Y?"
    (60%) or a yes/no question about two objects in a relation, "yes" and "no" equally often, a "no" with
    the direction reversed or on the other axis. `template(kind)` picks the question's wording."""
    canvas = _canvas(rng, canvases)
    if rng.random() < 0.6:
        scene, words, answer, response = _where_question(rng, canvas)
        return scene, template("where").format(**words), answer, "where", response
    spec = sample_spec(rng, "position")
    scene = scene_from_spec(rng, spec, *canvas)
    asked, answer, variant = spec, "yes", "yes_no:yes"
    if rng.random() < 0.5:
        for _ in range(SAMPLE_ATTEMPTS):
            variant = _pick(rng, ("swapped_relation", "other_axis"))
            changed = replace(spec, relation=_changed_relation(rng, spec.relation, variant))
            if not shows(scene, changed):
                asked, answer, variant = changed, "no", f"yes_no:{variant}"
                break
        else:
            raise DataError(f"no near miss of the relation found for {spec}")
    return scene, template("yes_no").format(caption=canonical_caption(asked)), answer, variant, answer


def _relations_record(rng: np.random.Generator, canvases: Canvases = (PANEL,)) -> TrainingRecord:
    scene, question, _, _, response = _relation_question(
        rng, lambda kind: _pick(rng, VQA_TEMPLATES[kind]), canvases
    )
    return TrainingRecord("relations", understanding_turns(apply_case(rng, question), response), (render(scene),))


def _relations_item(rng: np.random.Generator, position: int, canvases: Canvases = (PANEL,)) -> EvalItem:
    scene, question, answer, variant, _ = _relation_question(rng, lambda kind: VQA_TEMPLATES[kind][0], canvases)
    return EvalItem(
        "relations", position, question, scene.width, scene.height, image=render(scene), variant=variant, scene=scene, answer=answer
    )


def _registry() -> dict[str, Task]:
    samplers: dict[str, tuple[Callable, Callable]] = {
        "text_to_image": (_text_to_image_record, _text_to_image_item),
        **{f"edit_{kind}": _edit_sampler(kind) for kind in ("recolor", "move", "add", "remove")},
        "control_edges": (_control_record, _control_item),
        "subject": (_subject_record, _subject_item),
        "segmentation": _prediction_sampler("segmentation"),
        "edges": _prediction_sampler("edges"),
        "caption": (_caption_record, _caption_item),
        "vqa": (_vqa_record, _vqa_item),
        "rewrite": (_rewrite_record, _rewrite_item),
        "verify": (_verify_record, _verify_item),
        "relations": (_relations_record, _relations_item),
    }
    dual = {"edit_recolor", "edit_move", "edit_add", "edit_remove", "control_edges", "subject", "segmentation", "edges"}
    return {name: Task(name, name in dual, *samplers[name]) for name in TASK_NAMES}


TASKS: dict[str, Task] = _registry()
