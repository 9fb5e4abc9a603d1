"""Every task but text-to-image and chat: requests, their prompts per model family, and running them.

A `TaskRequest` names a task of `model_folder.TASKS` and its inputs. How its prompt is written
depends on the model's family (`prompt_family`, from the vocabulary layout):
- "project" (the compact layout: models trained on the shapes task world, shapes/tasks.py): the
  exact training prompts of that world. Image-to-image tasks are v2-style dual panels of two
  shapes.tasks.PANEL canvases; understanding tasks show the image in the user turn (at the resolution
  bucket closest to it, `understanding_codes`); rewriting is text only;
- "lumina-mgpt-2" (official v2 Omni): the released dual-panel sentences (formats.image_to_image_prompt,
  image_map_pair_prompt), on panels of V2_PANEL;
- "lumina-mgpt" (official v1 Omni): the task text, then the input image in the user turn; the answer
  is an image of the input's resolution bucket (docs/FORMATS.md, "v1 Omni prompts").

Dual panels: the condition image, resized to the panel canvas, is encoded as the upper panel's code
rows; the engine writes the lower panel's rows after them (`Engine.generate_images(given_rows=)`),
and only the lower rows are decoded: the shapes tokenizer's decoder mixes the whole image, so the
condition would bleed into the answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.formats import (
    IMAGE_PLACEHOLDER,
    VocabLayout,
    bucket_sizes,
    check_image_size,
    closest_bucket,
    encode_generation_prompt,
    image_map_pair_prompt,
    image_to_image_prompt,
    resize_to_bucket,
)
from lumina_mgpt.generation.checks import check_image_dimensions, check_integer, check_prompts, check_seeds
from lumina_mgpt.generation.engine import GenerationSettings
from lumina_mgpt.model_folder import (
    CAPTION,
    CHAT,
    CONTROL,
    EDIT,
    PREDICTION_TASKS,
    REWRITE,
    SUBJECT,
    VQA,
    Defaults,
    require_task,
)
from lumina_mgpt.shapes.tasks import (
    ANSWER_MARKER,
    CAPTION_QUESTIONS,
    EDGE_MAP,
    EDIT_CONDITION,
    PANEL,
    PREDICTION_TEXT,
    REWRITE_INSTRUCTION,
    SEGMENTATION_PROMPT,
)

PROJECT, V1, V2 = "project", "lumina-mgpt", "lumina-mgpt-2"
IMAGE_TASKS = (EDIT, CONTROL, SUBJECT, *PREDICTION_TASKS)
TEXT_TASKS = (CAPTION, VQA, REWRITE)
# The official v2 example script draws dual panels of 512x1024 (a 512x512 reference and answer).
V2_PANEL = (512, 512)
# Each family's control kinds and the condition its prompt names. The v1 prompt names none: any of
# these conditions goes in as the input image, and the kind is kept in the metadata only.
CONTROL_CONDITIONS: dict[str, dict[str, str | None]] = {
    PROJECT: {"edges": EDGE_MAP},
    V2: {"depth": "depth map", "canny": "canny edge map"},
    V1: {kind: None for kind in ("depth", "canny", "hed", "pose", "segmentation", "normals")},
}
V1_CONTROL_PROMPT = (
    "Generate an image according to the provided image, and according to the following caption:\n{prompt}"
)
# Each family's image -> map prompts: v2's dual-panel map names, v1's task texts (spelled as released).
V2_MAPS = {"depth": "depth map", "canny": "canny edge map", "hed": "hed edge map", "pose": "pose estimation map"}
V1_MAPS = {
    "segmentation": "Segmentic segmentation.",
    "depth": "Depth estimation.",
    "normals": "Surface normal estimation.",
    "pose": "Human pose estimation.",
}
PREDICTIONS = {PROJECT: tuple(PREDICTION_TEXT), V2: tuple(V2_MAPS), V1: tuple(V1_MAPS)}
DEFAULT_CAPTION_QUESTION = {PROJECT: CAPTION_QUESTIONS[0], V1: "Describe this picture.", V2: "Describe this picture."}
# Short answers (a caption, a count, a color) are read greedily unless a temperature is given.
TEXT_TEMPERATURE = 0.0
# The official v1 Omni and chat defaults (docs/FORMATS.md): no guidance, image top-k 200, text top-k 5.
V1_TASK_DEFAULTS = {"cfg": 1.0, "image_top_k": 200, "text_top_k": 5}
# The name of a request's text in the metadata, per task.
TEXT_FIELDS = {EDIT: "instruction", CAPTION: "question", VQA: "question", REWRITE: "request"}


@dataclass(frozen=True)
class TaskRequest:
    """One request: `task` (a name of model_folder.TASKS other than text-to-image and chat), its text
    (instruction, prompt, question or request), its input image, control's `kind` and subject's
    `subject` (a short description of the reference object, e.g. "red circle")."""

    task: str
    text: str = ""
    image: Image.Image | None = None
    kind: str | None = None
    subject: str | None = None


def prompt_family(layout: VocabLayout) -> str:
    """How prompts are written for a model of this layout: PROJECT, V1 or V2 (see the module docstring)."""
    return PROJECT if layout.name == "compact" else layout.name


def task_defaults(family: str, defaults: Defaults, task: str | None = None) -> Defaults:
    """The sampling defaults of a task method: v1's Omni values on official v1; else the model's, with
    what its lumina.json sets apart for `task` (`Defaults.for_task`)."""
    if family == V1:
        return replace(defaults, **V1_TASK_DEFAULTS)
    return defaults if task is None else defaults.for_task(task)


def is_dual_panel(family: str) -> bool:
    """Whether image tasks answer in the lower half of a dual panel (project and v2) or as an image of their own (v1)."""
    return family != V1


def check_request(request: object, family: str, tasks: Sequence[str]) -> TaskRequest:
    """The request, checked against the model's tasks and family; GenerationError saying what is accepted."""
    if not isinstance(request, TaskRequest):
        raise GenerationError(f"a task request must be a TaskRequest, got {type(request).__name__}")
    task = request.task
    if task not in IMAGE_TASKS + TEXT_TASKS:
        raise GenerationError(f"unknown task {task!r}; accepted: {', '.join(IMAGE_TASKS + TEXT_TASKS)}")
    # A chat model answers questions about images, captions included.
    require_task(tasks, task, *((CHAT,) if task in (CAPTION, VQA) else ()))
    if task in PREDICTION_TASKS and task not in PREDICTIONS[family]:
        raise GenerationError(
            f"prediction {task!r} has no prompt for {family} models; accepted: {', '.join(PREDICTIONS[family])}"
        )
    if task == CONTROL and request.kind not in CONTROL_CONDITIONS[family]:
        raise GenerationError(
            f"control kind {request.kind!r} is not one this {family} model draws from; accepted: "
            f"{', '.join(CONTROL_CONDITIONS[family])}"
        )
    if task == SUBJECT and not (isinstance(request.subject, str) and request.subject.strip()):
        raise GenerationError(
            f"subject needs a short description of the reference object (e.g. 'red circle'), got {request.subject!r}"
        )
    text_needed = task in (EDIT, CONTROL, SUBJECT, VQA, REWRITE)
    if text_needed or request.text:
        check_prompts([request.text], what=TEXT_FIELDS.get(task, "prompt"))
        if text_needed and not request.text.strip():
            raise GenerationError(f"{task} needs a non-empty {TEXT_FIELDS.get(task, 'prompt')}")
    if (task != REWRITE) != isinstance(request.image, Image.Image):
        wanted = "no image (it rewrites text)" if task == REWRITE else "an input image (a PIL image)"
        raise GenerationError(f"{task} takes {wanted}, got {type(request.image).__name__}")
    return request


def image_task_turn(request: TaskRequest, family: str, panel: tuple[int, int]) -> str:
    """The user turn of an image task; for dual panels, `panel` (width, height) is one half."""
    task, text = request.task, request.text
    whole = (panel[0], 2 * panel[1])
    if family == V1:
        if task == EDIT:
            lead = text
        elif task == CONTROL:
            lead = V1_CONTROL_PROMPT.format(prompt=text)
        else:
            lead = V1_MAPS[task]
        return f"{lead} {IMAGE_PLACEHOLDER}"
    if task == EDIT:
        return image_to_image_prompt(text, *whole, EDIT_CONDITION)
    if task == CONTROL:
        return image_to_image_prompt(text, *whole, CONTROL_CONDITIONS[family][request.kind])
    if task == SUBJECT:
        return image_to_image_prompt(text, *whole, request.subject.strip())
    if family == PROJECT:  # shapes.tasks.map_prompt, on a panel of any size; the text is the task world's
        if task == "segmentation":
            return SEGMENTATION_PROMPT.format(width=whole[0], height=whole[1], prompt=PREDICTION_TEXT[task])
        return image_map_pair_prompt(PREDICTION_TEXT[task], *whole, EDGE_MAP)
    return image_map_pair_prompt(text, *whole, V2_MAPS[task])


def text_task_turn(request: TaskRequest, family: str) -> str:
    """The user turn of a text task: the question before the image, or the rewriting instruction."""
    if request.task == REWRITE:
        return REWRITE_INSTRUCTION.format(request=request.text)
    question = request.text or DEFAULT_CAPTION_QUESTION[family]
    return f"{question} {IMAGE_PLACEHOLDER}"


def image_fingerprint(image: Image.Image) -> dict:
    """An input image as the metadata records it: its size and the sha256 of its RGB pixels."""
    rgb = image.convert("RGB")
    return {"width": rgb.width, "height": rgb.height, "sha256": hashlib.sha256(rgb.tobytes()).hexdigest()}


def request_fields(request: TaskRequest) -> dict:
    """What a request asked, as the metadata of its answer image records it: the task, its text, kind and
    subject, and the input image's size and hash."""
    fields = {"task": request.task, TEXT_FIELDS.get(request.task, "prompt"): request.text}
    if request.kind is not None:
        fields["kind"] = request.kind
    if request.subject is not None:
        fields["subject"] = request.subject
    return {**fields, "input_image": image_fingerprint(request.image)}


def lower_panels(grids: Sequence[np.ndarray], panel_rows: int) -> np.ndarray:
    """The lower panel's code rows of each dual-panel grid, (batch, rows - panel_rows, cols)."""
    return np.stack([np.asarray(grid)[panel_rows:] for grid in grids])


def input_bucket(layout: VocabLayout, defaults: Defaults, image: Image.Image) -> tuple[int, int]:
    """The resolution bucket an input image is resized to: the one of the model's size closest in aspect."""
    sizes = bucket_sizes(max(defaults.size), step=layout.pixels_per_indicator)
    return closest_bucket(image.width, image.height, sizes)


def understanding_codes(pipe, image: Image.Image) -> np.ndarray:
    """The code grid of an image to be described, questioned or verified, resized first to the resolution
    bucket of the model's size closest to it in aspect: a picture the model drew is read at its own size,
    code for code. Scaling an 80x48 drawing onto a 64x64 canvas (stretched, cropped or letterboxed) moves
    its objects off the VQ's 8-pixel patch grid: a model taught on 64x64 pictures only then captioned a
    single square as "three black circles", and read it right at its own size. The embedded model has
    since been taught pictures of every canvas (the build's canvases stage)."""
    resized = resize_to_bucket(image.convert("RGB"), input_bucket(pipe.layout, pipe.defaults, image))
    return pipe.image_tokenizer.encode([resized])[0].cpu().numpy()


def answer_size(
    family: str,
    layout: VocabLayout,
    defaults: Defaults,
    image: Image.Image | None,
    width: int | None,
    height: int | None,
) -> tuple[int, int]:
    """The (width, height) of an image task's answer: one panel of a dual panel (the family's unless given:
    PANEL for project models, V2_PANEL for official v2), or on v1 the input image's resolution bucket at the
    model's size (unless given). GenerationError / FormatError for a size the layout cannot draw."""
    if width is None and height is None:
        if family == PROJECT:
            return PANEL
        if family == V2:
            return V2_PANEL
        return input_bucket(layout, defaults, image)
    if width is None or height is None:
        raise GenerationError(
            f"give both the width and the height of the answer image, or neither; got {width}x{height}"
        )
    size = check_image_dimensions(width, height, layout)
    if is_dual_panel(family):
        check_image_size(size[0], 2 * size[1], layout)  # the whole dual panel must be drawable too
    return size


class TaskRunner:
    """Runs task requests on a Pipeline's model, tokenizers and engine (see `Pipeline.run_image_tasks`)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.family = prompt_family(pipe.layout)

    # ------------------------------------------------------------------ image tasks
    def run_images(
        self,
        requests: Sequence[TaskRequest],
        seeds: Sequence[int],
        settings: Sequence[GenerationSettings],
        width: int | None,
        height: int | None,
        batch_size: int,
        progress: bool,
        sjd_window: int | None = None,
    ) -> list[Image.Image]:
        """One answer image per request (each with its settings), in order; requests of one output size and
        settings share engine calls."""
        pipe = self.pipe
        # Every size is checked before the first engine call.
        sizes = [answer_size(self.family, pipe.layout, pipe.defaults, r.image, width, height) for r in requests]
        results: list[Image.Image | None] = [None] * len(requests)
        groups: dict[tuple[tuple[int, int], GenerationSettings], list[int]] = {}
        for index, size in enumerate(sizes):
            groups.setdefault((size, settings[index]), []).append(index)
        for (size, group_settings), indices in groups.items():
            for start in range(0, len(indices), batch_size):
                batch = indices[start : start + batch_size]
                images = self._image_batch(
                    [requests[i] for i in batch], [seeds[i] for i in batch], size, group_settings, progress,
                    sjd_window,
                )
                for index, image in zip(batch, images):
                    results[index] = image
        return results

    def _image_batch(
        self,
        requests: list[TaskRequest],
        seeds: list[int],
        size: tuple[int, int],
        settings: GenerationSettings,
        progress: bool,
        sjd_window: int | None,
    ) -> list[Image.Image]:
        pipe = self.pipe
        width, height = size
        # The condition image at the answer's canvas: the upper panel, or v1's image in the user turn.
        inputs = [resize_to_bucket(request.image.convert("RGB"), size) for request in requests]
        grids = [grid.cpu().numpy() for grid in pipe.image_tokenizer.encode(inputs)]
        turns = [image_task_turn(pipe.read_request(request), self.family, size) for request in requests]
        if is_dual_panel(self.family):
            prompts = [encode_generation_prompt([turn], [], pipe.text_tokenizer, pipe.layout) for turn in turns]
            out = pipe.engine.generate_images(
                prompts, width, 2 * height, settings, seeds, given_rows=grids, progress=progress, sjd_window=sjd_window
            )
            codes = lower_panels(out, panel_rows=grids[0].shape[0])
        else:
            prompts = [
                encode_generation_prompt([turn], [grid], pipe.text_tokenizer, pipe.layout)
                for turn, grid in zip(turns, grids)
            ]
            codes = np.stack(
                pipe.engine.generate_images(
                    prompts, width, height, settings, seeds, progress=progress, sjd_window=sjd_window
                )
            )
        return pipe.image_tokenizer.decode_to_pil(torch.as_tensor(codes))

    # ------------------------------------------------------------------ text tasks
    def run_texts(
        self,
        requests: Sequence[TaskRequest],
        seeds: Sequence[int],
        settings: GenerationSettings,
        max_new_tokens: int,
        batch_size: int,
        progress: bool,
    ) -> list[str]:
        """One answer per request, in order, `batch_size` prompts per engine call."""
        pipe = self.pipe
        prompts = []
        for request in requests:
            images = [] if request.task == REWRITE else [understanding_codes(self.pipe, request.image)]
            prompts.append(
                encode_generation_prompt(
                    [text_task_turn(pipe.read_request(request), self.family)], images, pipe.text_tokenizer, pipe.layout
                )
            )
        answers = []
        for start in range(0, len(prompts), batch_size):
            answers += pipe.engine.generate_text(
                prompts[start : start + batch_size],
                settings,
                list(seeds[start : start + batch_size]),
                max_new_tokens=max_new_tokens,
                image_size=pipe.defaults.size,
                progress=progress,
            )
        # An image opened in a text answer is no part of it: only the text is kept.
        texts = [" ".join(pipe.read_answer(answer).text.replace(IMAGE_PLACEHOLDER, " ").split()) for answer in answers]
        return [final_answer(text) for text in texts] if self.family == PROJECT else texts


def final_answer(text: str) -> str:
    """What a project model answers after what it saw ("i see a red circle left of a blue square. answer:
    right of" -> "right of"; shapes.tasks.SEEN_ANSWER); a text without the marker is the answer."""
    return text.rpartition(ANSWER_MARKER)[2].strip()


def check_request_batch(
    requests: Sequence[TaskRequest], family: str, tasks: Sequence[str], seed: int | Sequence[int], batch_size: int
) -> tuple[list[TaskRequest], list[int], int]:
    """Checked requests, one seed per request (`seed + i` for an int) and the batch size."""
    if isinstance(requests, TaskRequest) or not isinstance(requests, Sequence) or not requests:
        raise GenerationError("give a non-empty list of TaskRequest")
    checked = [check_request(request, family, tasks) for request in requests]
    seeds = check_seeds(seed, len(checked))
    return checked, seeds, check_integer("batch_size", batch_size, 1, "requests decoded together")
