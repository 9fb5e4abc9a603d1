"""How well models read pictures of each canvas: the understanding tasks (caption, visual questions, the
self-verifier's yes/no question, relations) on the held-out items of `lumina eval tasks`, their pictures
drawn at 64x64 (the held-out items themselves), 80x48 and 48x80 (items of the same seeds drawn on the other
canvas: placing objects draws differently on each, so the scenes and questions differ). ShapesEval draws two thirds of its prompts on 80x48 or 48x80, and the self-verifier reads those
drawings.

    python benchmarks/bench_reading_canvases.py --model runs/multitask/run-polish/final --model embedded

Prints one markdown row per model, task and canvas.
"""

from __future__ import annotations

import argparse
import time

from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.shapes.task_eval import evaluate_tasks
from lumina_mgpt.shapes.tasks import READING_TASKS
from lumina_mgpt.shapes.world import CANVAS_SIZES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="model folder or 'embedded' (repeatable; default: embedded)")
    parser.add_argument("--items", type=int, default=96, help="items per task and canvas (default: 96)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (answers are greedy; default: 0)")
    args = parser.parse_args()

    canvases = [f"{w}x{h}" for w, h in CANVAS_SIZES]
    print(f"{args.items} held-out items per task and canvas, sampling seed {args.seed}")
    print("| model | task | " + " | ".join(canvases) + " |")
    print("|---|---|" + "---|" * len(canvases))
    for model in args.model or ["embedded"]:
        start = time.perf_counter()
        pipe = Pipeline.from_pretrained(None if model == "embedded" else model)
        scores = {}
        for canvas in CANVAS_SIZES:
            report = evaluate_tasks(pipe, READING_TASKS, limit=args.items, seed=args.seed, canvases=(canvas,))
            scores[canvas] = report.scores()
        for task in READING_TASKS:
            cells = " | ".join(f"{scores[canvas][task][1]:.3f}" for canvas in CANVAS_SIZES)
            print(f"| {model} | {task} | {cells} |", flush=True)
        print(f"({model}: {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
