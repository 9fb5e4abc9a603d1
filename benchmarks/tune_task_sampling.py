"""Choose a multi-task shapes model's sampling defaults for its image-to-image tasks (editing, control,
subject, maps) on validation items: the task world's evaluation items of another seed, never the held-out
ones `lumina eval tasks` scores.

    python benchmarks/tune_task_sampling.py --model runs/multitask/run/final --cfg 1 2.5 --temperature 0 0.5

Prints one row per setting with each task's score (item k samples with seed k, as in `eval tasks`).
"""

from __future__ import annotations

import argparse
import itertools
import time

from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.shapes.task_eval import ITEM_SEED, evaluate_tasks

VALIDATION_ITEM_SEED = 2024
IMAGE_TASKS = (
    "edit_recolor", "edit_move", "edit_add", "edit_remove", "control_edges", "subject", "segmentation", "edges",
)  # fmt: skip
assert VALIDATION_ITEM_SEED != ITEM_SEED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the embedded model)")
    parser.add_argument("--task", action="append", choices=IMAGE_TASKS, help="repeatable (default: all eight)")
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.5])
    parser.add_argument("--temperature", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--top-k", type=int, nargs="+", default=[128])
    parser.add_argument("--items", type=int, default=24, help="validation items per task (default: 24)")
    args = parser.parse_args()

    tasks = args.task or list(IMAGE_TASKS)
    pipe = Pipeline.from_pretrained(args.model)
    print(f"{args.items} validation items per task (item seed {VALIDATION_ITEM_SEED}; held-out: {ITEM_SEED})")
    print("| cfg | temperature | top-k | " + " | ".join(tasks) + " | seconds |")
    print("|---|---|---|" + "---|" * (len(tasks) + 1))
    for cfg, temperature, top_k in itertools.product(args.cfg, args.temperature, args.top_k):
        start = time.perf_counter()
        report = evaluate_tasks(
            pipe, tasks, limit=args.items, item_seed=VALIDATION_ITEM_SEED,
            sampling={"cfg": cfg, "temperature": temperature, "top_k": top_k},
        )  # fmt: skip
        scores = report.scores()
        cells = " | ".join(f"{scores[task][1]:.3f}" for task in tasks)
        print(f"| {cfg:g} | {temperature:g} | {top_k} | {cells} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
