"""The embedded shapes world (scenes, captions, dual-panel tasks) and ShapesEval, its
GenEval-style benchmark with an exact analyzer."""

from lumina_mgpt.shapes.analyze import DetectedObject, detect, score
from lumina_mgpt.shapes.dual_panel import TASKS, DualPanelExample, sample_dual_panel
from lumina_mgpt.shapes.evaluate import Report, evaluate, format_table
from lumina_mgpt.shapes.examples import Example, sample_example
from lumina_mgpt.shapes.prompts import is_held_out, load_eval_prompts
from lumina_mgpt.shapes.spec import CATEGORIES, COLORS, SHAPES, ObjectGroup, Relation, Spec
from lumina_mgpt.shapes.world import CANVAS_SIZES, Scene, SceneObject, render, sample_scene

__all__ = [
    "CANVAS_SIZES",
    "CATEGORIES",
    "COLORS",
    "SHAPES",
    "TASKS",
    "DetectedObject",
    "DualPanelExample",
    "Example",
    "ObjectGroup",
    "Relation",
    "Report",
    "Scene",
    "SceneObject",
    "Spec",
    "detect",
    "evaluate",
    "format_table",
    "is_held_out",
    "load_eval_prompts",
    "render",
    "sample_dual_panel",
    "sample_example",
    "sample_scene",
    "score",
]
