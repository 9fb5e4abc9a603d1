"""The embedded shapes world (scenes, captions, dual-panel tasks), ShapesEval, its GenEval-style
benchmark with an exact analyzer, and the multi-task world (tasks.py: training records and evaluation
items of every task; task_scoring.py: their exact scorers)."""

from lumina_mgpt.shapes.analyze import DetectedObject, detect, score
from lumina_mgpt.shapes.captions import canonical_caption, parse_caption
from lumina_mgpt.shapes.dual_panel import TASKS, DualPanelExample, sample_dual_panel
from lumina_mgpt.shapes.evaluate import Report, evaluate, format_table
from lumina_mgpt.shapes.examples import Example, sample_example
from lumina_mgpt.shapes.phrasing import phrase
from lumina_mgpt.shapes.prompts import is_held_out, load_eval_prompts
from lumina_mgpt.shapes.spec import CATEGORIES, COLORS, SHAPES, ObjectGroup, Relation, Spec
from lumina_mgpt.shapes.task_dataset import write_task_dataset
from lumina_mgpt.shapes.task_scoring import score_item
from lumina_mgpt.shapes.tasks import (
    REWRITE_INSTRUCTION,
    TASK_NAMES,
    EvalItem,
    TrainingRecord,
    eval_items,
    training_record,
)
from lumina_mgpt.shapes.world import CANVAS_SIZES, Scene, SceneObject, render, sample_scene

__all__ = [
    "CANVAS_SIZES",
    "CATEGORIES",
    "COLORS",
    "REWRITE_INSTRUCTION",
    "SHAPES",
    "TASKS",
    "TASK_NAMES",
    "DetectedObject",
    "DualPanelExample",
    "EvalItem",
    "Example",
    "ObjectGroup",
    "Relation",
    "Report",
    "Scene",
    "SceneObject",
    "Spec",
    "TrainingRecord",
    "canonical_caption",
    "detect",
    "eval_items",
    "evaluate",
    "format_table",
    "is_held_out",
    "load_eval_prompts",
    "parse_caption",
    "phrase",
    "render",
    "sample_dual_panel",
    "sample_example",
    "sample_scene",
    "score",
    "score_item",
    "training_record",
    "write_task_dataset",
]
