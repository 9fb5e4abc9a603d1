"""`lumina eval tasks`: every task of the multi-task shapes world, run through the Pipeline's task API on
its held-out items (tasks.eval_items) and scored exactly (task_scoring.score_item).

Items are fixed (the evaluation stream of seed 0); the sampling seed moves: item k of a task uses
seed + k. Each task's items go to the model in batches (`batch_size` per engine call). Besides the
tasks of TASK_NAMES, REWRITE_DRAW draws the text-to-image items after the model rewrote them
(`Pipeline.generate(rewrite=True)`) and scores the drawings like text_to_image. A task the model's
lumina.json does not list is reported as not trained, unless it was asked for by name: then the run is
refused before any compute.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lumina_mgpt.atomic import write_text_atomically
from lumina_mgpt.errors import DataError
from lumina_mgpt.model_folder import (
    CAPTION,
    CONTROL,
    EDIT,
    REWRITE,
    SUBJECT,
    TEXT_TO_IMAGE,
    VQA,
    require_task,
)
from lumina_mgpt.shapes.captions import noun_phrase
from lumina_mgpt.shapes.spec import ObjectGroup
from lumina_mgpt.shapes.task_scoring import score_item
from lumina_mgpt.shapes.tasks import PANEL, TASK_NAMES, Canvases, EvalItem, canvases_for, eval_items

REWRITE_DRAW = "text_to_image_rewrite"
EVAL_TASKS: tuple[str, ...] = (TASK_NAMES[0], REWRITE_DRAW, *TASK_NAMES[1:])
# Twelve held-out phrasing styles and six categories: the text-to-image and rewrite items take the styles in
# turn every six items, so 72 items reach each style six times (British skips specs it cannot say).
DEFAULT_LIMIT = 72
ITEM_SEED = 0  # which held-out items: fixed, so that sampling seeds compare like with like
# The Pipeline task each eval task runs as.
API_TASKS = {
    "text_to_image": (TEXT_TO_IMAGE,),
    REWRITE_DRAW: (TEXT_TO_IMAGE, REWRITE),
    **{f"edit_{kind}": (EDIT,) for kind in ("recolor", "move", "add", "remove")},
    "control_edges": (CONTROL,),
    "subject": (SUBJECT,),
    "segmentation": ("segmentation",),
    "edges": ("edges",),
    "caption": (CAPTION,),
    "vqa": (VQA,),
    "rewrite": (REWRITE,),
    "verify": (VQA,),
    "relations": (VQA,),
}
# What each score measures (task_scoring.py has the rules).
METRICS = {
    "text_to_image": "analyzer pass",
    REWRITE_DRAW: "analyzer pass",
    **{f"edit_{kind}": "scene as instructed" for kind in ("recolor", "move", "add", "remove")},
    "control_edges": "objects matched",
    "subject": "scene as asked",
    "segmentation": "mIoU",
    "edges": "edge F1",
    "caption": "caption parses to spec",
    "vqa": "exact answer",
    "rewrite": "caption parses to spec",
    "verify": "exact yes/no",
    "relations": "exact answer",
}
TEXT_OUTPUT_TASKS = ("caption", "vqa", "rewrite", "verify", "relations")


@dataclass(frozen=True)
class ItemResult:
    """One scored item: its task, index and variant, its score in [0, 1] and, for text answers (and the
    rewrite before a drawing), what the model wrote."""

    task: str
    index: int
    variant: str
    score: float
    text: str | None = None


@dataclass(frozen=True)
class TaskReport:
    """Every item result, and the tasks left out because the model was not trained for them."""

    results: tuple[ItemResult, ...]
    not_trained: tuple[str, ...] = ()

    def scores(self) -> dict[str, tuple[int, float]]:
        """(items, mean score) per task evaluated, in EVAL_TASKS order."""
        table = {}
        for task in EVAL_TASKS:
            values = [r.score for r in self.results if r.task == task]
            if values:
                table[task] = (len(values), sum(values) / len(values))
        return table

    def variant_scores(self, task: str) -> dict[str, tuple[int, float]]:
        """(items, mean score) per variant of one task (phrasing style, question type, edit kind)."""
        groups: dict[str, list[float]] = {}
        for result in self.results:
            if result.task == task:
                groups.setdefault(result.variant, []).append(result.score)
        return {variant: (len(values), sum(values) / len(values)) for variant, values in sorted(groups.items())}

    def to_dict(self) -> dict:
        return {
            "tasks": {
                task: {
                    "score": score,
                    "items": items,
                    "metric": METRICS[task],
                    "variants": {v: {"score": s, "items": n} for v, (n, s) in self.variant_scores(task).items()},
                }
                for task, (items, score) in self.scores().items()
            },
            "not_trained": list(self.not_trained),
            "results": [
                {"task": r.task, "index": r.index, "variant": r.variant, "score": r.score}
                | ({} if r.text is None else {"text": r.text})
                for r in self.results
            ],
        }


def choose_tasks(model_tasks: Sequence[str], asked: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(tasks to evaluate, tasks not trained): every eval task when none is asked, those the model lacks
    set aside; a task asked by name must be one the model has (GenerationError naming its tasks)."""
    if asked:
        unknown = [task for task in asked if task not in EVAL_TASKS]
        if unknown:
            raise DataError(f"unknown eval task {unknown[0]!r}; accepted: {', '.join(EVAL_TASKS)}")
        for task in asked:
            for needed in API_TASKS[task]:
                require_task(model_tasks, needed)
        return list(dict.fromkeys(asked)), []
    trained = [task for task in EVAL_TASKS if all(t in model_tasks for t in API_TASKS[task])]
    return trained, [task for task in EVAL_TASKS if task not in trained]


def task_request(item: EvalItem):
    """The Pipeline request that answers an eval item (not text-to-image, which `generate` draws)."""
    from lumina_mgpt.generation.tasks import TaskRequest

    if item.task.startswith("edit_"):
        return TaskRequest(EDIT, item.text, item.image)
    if item.task == "control_edges":
        return TaskRequest(CONTROL, item.text, item.image, kind=item.kind)
    if item.task == "subject":
        # The reference object leads the new scene (dual_panel.subject_scenes); the training prompt names it.
        reference = item.scene.objects[0]
        subject = noun_phrase(ObjectGroup(reference.shape, reference.color), with_count=False)
        return TaskRequest(SUBJECT, item.text, item.image, subject=subject)
    (task,) = API_TASKS[item.task]  # predictions, caption, vqa, rewrite, verify (asked as vqa)
    return TaskRequest(task, item.text, item.image)


def evaluate_tasks(
    pipe,
    tasks: Sequence[str] | None = None,
    limit: int = DEFAULT_LIMIT,
    seed: int = 0,
    batch_size: int = 16,
    sampling: dict | None = None,
    progress: Callable[[str, int], None] | None = None,
    drawing: dict | None = None,
    item_seed: int = ITEM_SEED,
    canvases: Canvases = (PANEL,),
) -> TaskReport:
    """Run and score the first `limit` held-out items of each task (all EVAL_TASKS the model has when
    `tasks` is None; see `choose_tasks`); item k of a task samples with seed + k. `item_seed` picks
    another set of items (for tuning: never the held-out ITEM_SEED). `canvases` draws the pictures of the
    understanding tasks (tasks.READING_TASKS, the only ones it accepts) on those canvases instead of 64x64.

    `sampling` (cfg, top_k, top_p, temperature, cfg_schedule, sjd_window) applies to image answers; text
    answers are read greedily. `drawing` (best_of, verifier, think: see `Pipeline.generate`) applies to the
    text-to-image rows; text_to_image_rewrite keeps its own thinking, the model's rewrite.
    `progress(task, items)` is called after each task."""
    if limit < 1:
        raise DataError(f"limit must be at least 1 item per task, got {limit}")
    chosen, not_trained = choose_tasks(pipe.tasks, tasks)
    canvases = canvases_for(chosen, canvases)  # refused before any task runs
    sampling = dict(sampling or {})
    drawing = dict(drawing or {})
    results: list[ItemResult] = []
    for task in chosen:
        items = eval_items("text_to_image" if task == REWRITE_DRAW else task, limit, item_seed, canvases)
        seeds = [seed + k for k in range(len(items))]
        outputs, texts = _answer(pipe, task, items, seeds, batch_size, sampling, drawing)
        for item, output, text in zip(items, outputs, texts):
            results.append(ItemResult(task, item.index, item.variant, score_item(item, output), text))
        if progress is not None:
            progress(task, len(items))
    return TaskReport(tuple(results), tuple(not_trained))


def _answer(pipe, task, items, seeds, batch_size, sampling, drawing) -> tuple[list, list[str | None]]:
    """The model's outputs for the items of one task, and the text to keep with each result."""
    if task in ("text_to_image", REWRITE_DRAW):
        if task == REWRITE_DRAW:
            drawing = {key: value for key, value in drawing.items() if key != "think"}
        images: list = [None] * len(items)
        by_size: dict[tuple[int, int], list[int]] = {}
        for k, item in enumerate(items):
            by_size.setdefault((item.width, item.height), []).append(k)
        for (width, height), ks in by_size.items():
            drawn = pipe.generate(
                [items[k].text for k in ks], width=width, height=height, seed=[seeds[k] for k in ks],
                batch_size=batch_size, progress=False, rewrite=task == REWRITE_DRAW, **sampling, **drawing,
            )  # fmt: skip
            for k, image in zip(ks, drawn):
                images[k] = image
        if task == REWRITE_DRAW:
            return images, [json.loads(image.info["parameters"])["rewritten_prompt"] for image in images]
        return images, [None] * len(items)
    requests = [task_request(item) for item in items]
    if task in TEXT_OUTPUT_TASKS:
        answers = pipe.run_text_tasks(requests, seed=seeds, batch_size=batch_size)
        return answers, list(answers)
    return pipe.run_image_tasks(requests, seed=seeds, batch_size=batch_size, **sampling), [None] * len(items)


def format_task_table(report: TaskReport) -> str:
    """A plain-text table: one row per task (score, items, metric), then the tasks not trained."""
    lines = [f"{'task':<22} {'items':>5} {'score':>6}  metric"]
    for task, (items, score) in report.scores().items():
        lines.append(f"{task:<22} {items:>5} {score:>6.3f}  {METRICS[task]}")
    for task in report.not_trained:
        lines.append(f"{task:<22} {'-':>5} {'-':>6}  not in the model's tasks")
    lines.append("(score: the mean over items, each in [0, 1]; text answers read greedily)")
    return "\n".join(lines)


def write_task_report(report: TaskReport, path: Path, header: dict) -> None:
    """The report as JSON (`header`: model, seed, limit, settings first), written atomically."""
    write_text_atomically(path, json.dumps({**header, **report.to_dict()}, indent=2) + "\n")
