"""The figures of a shapes build: wall time per build step, tokens per task, and loss per task.

    python -m lumina_mgpt.shapes.build_report                       # runs/multitask, data and training log
    python -m lumina_mgpt.shapes.build_report --model runs/multitask/run/checkpoints/step-00002000/model

Reads what `python -m lumina_mgpt.shapes.build` leaves in its work folder: build_times.json (seconds per
build step, summed over resumed runs), the pretokenized shards with the records they came from (tokens and
supervised tokens per task), and the training log (steps, tokens, compute time, loss over the run). With
--model, each model's mean cross-entropy per supervised token on the first --rows rows of every task.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lumina_mgpt.errors import DataError

BUILD_TIMES_FILE = "build_times.json"


def read_row_tasks(work: Path, groups: Sequence[str]) -> dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]]:
    """Every pretokenized row of the build's `groups` (data-GROUP, tokens-GROUP), by (group, task): (ids,
    labels), in shard order."""
    import pyarrow.parquet as pq

    rows: dict[tuple[str, str], list] = defaultdict(list)
    for group in groups:
        records = work / f"data-{group}" / "records.jsonl"
        manifest = work / f"tokens-{group}" / "manifest.json"
        if not records.is_file() or not manifest.is_file():
            raise DataError(
                f"{work} has no {records.name} or {manifest.name} for the {group} group: build the data first"
            )
        with open(records, encoding="utf-8") as file:
            task_of_line = {number: json.loads(line)["task"] for number, line in enumerate(file, 1)}
        for shard in json.loads(manifest.read_text())["shards"]:
            path = manifest.parent / shard["file"]
            table = pq.read_table(path, columns=["ids", "labels", "source_id"])
            sources = table.column("source_id").to_pylist()
            ids, labels = table.column("ids").to_pylist(), table.column("labels").to_pylist()
            for source, row_ids, row_labels in zip(sources, ids, labels):
                task = task_of_line[int(source.rsplit(":", 1)[1])]
                rows[group, task].append((np.asarray(row_ids), np.asarray(row_labels)))
    return dict(rows)


def token_table(rows: dict[tuple[str, str], list]) -> list[dict]:
    """Per (group, task): records, input tokens and supervised tokens (the loss scores each label but the first)."""
    from lumina_mgpt.formats import IGNORE_INDEX

    table = []
    for (group, task), task_rows in rows.items():
        tokens = sum(len(ids) for ids, _ in task_rows)
        supervised = sum(int((labels[1:] != IGNORE_INDEX).sum()) for _, labels in task_rows)
        table.append({"group": group, "task": task, "records": len(task_rows), "tokens": tokens,
                      "supervised": supervised})  # fmt: skip
    return table


def task_losses(model_folder: Path, rows: dict[tuple[str, str], list], count: int) -> dict[tuple[str, str], float]:
    """The model's mean cross-entropy per supervised token over the first `count` rows of each (group, task)."""
    import torch

    from lumina_mgpt.model.checkpoint import load_model

    model = load_model(model_folder, dtype=torch.float32)
    losses = {}
    with torch.inference_mode():
        for key, task_rows in rows.items():
            total, tokens = 0.0, 0
            for ids, labels in task_rows[:count]:
                out = model(torch.as_tensor(ids)[None], labels=torch.as_tensor(labels)[None])
                total += float(out.ce_loss) * int(out.num_tokens)
                tokens += int(out.num_tokens)
            losses[key] = total / max(tokens, 1)
    return losses


def training_summary(log_file: Path, window: int = 100) -> dict:
    """Steps, tokens, compute seconds (the sum of the steps' own times) and the loss over the run:
    the mean of `window` steps around every thousandth step, and of the last `window` steps."""
    if not log_file.is_file():
        raise DataError(f"no training log at {log_file}: train first")
    records = {}
    with open(log_file, encoding="utf-8") as file:
        for line in file:
            record = json.loads(line)
            if "step" in record and "tokens_per_s" in record:
                records[record["step"]] = record  # a resumed run logs the steps after its checkpoint again
    steps = sorted(records)
    seconds, previous_tokens = 0.0, 0
    for step in steps:
        record = records[step]
        seconds += (record["tokens"] - previous_tokens) / record["tokens_per_s"]
        previous_tokens = record["tokens"]
    losses = np.array([records[s]["ce"] for s in steps])
    curve = {mark: float(losses[max(0, mark - window) : mark].mean()) for mark in range(1000, len(steps) + 1, 1000)}
    return {
        "steps": len(steps),
        "tokens": records[steps[-1]]["tokens"] if steps else 0,
        "compute_seconds": seconds,
        "loss_curve": curve,
        "final_loss": float(losses[-window:].mean()) if steps else float("nan"),
    }


def record_build_time(work: Path, step: str, seconds: float) -> None:
    """Add `seconds` to `step`'s total in the work folder's build_times.json."""
    from lumina_mgpt.atomic import write_text_atomically

    path = work / BUILD_TIMES_FILE
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[step] = times.get(step, 0.0) + seconds
    write_text_atomically(path, json.dumps(times, indent=1) + "\n")


def format_report(work: Path, groups: Sequence[str], runs: Sequence[str], models: list[Path], count: int) -> str:
    """The report of a build's work folder: its `groups` of data and its training `runs` (folders in it)."""
    lines = []
    times_file = work / BUILD_TIMES_FILE
    if times_file.is_file():
        lines += ["| build step | minutes |", "|---|---|"]
        lines += [f"| {step} | {seconds / 60:.1f} |" for step, seconds in json.loads(times_file.read_text()).items()]
        lines.append("")
    for run in runs:
        log_file = work / run / "log.jsonl"
        if not log_file.is_file() and run != runs[0]:
            continue  # a later recipe that has not started
        summary = training_summary(log_file)
        lines.append(
            f"{run}: {summary['steps']:,} steps, {summary['tokens'] / 1e6:.1f}M tokens, "
            f"{summary['compute_seconds'] / 3600:.2f} h of step time, final loss (mean of the last 100 steps) "
            f"{summary['final_loss']:.4f}"
        )
        lines.append(
            "loss around each 1000th step: "
            + ", ".join(f"{mark}: {loss:.4f}" for mark, loss in summary["loss_curve"].items())
        )
    lines.append("")
    rows = read_row_tasks(work, groups)
    losses = {folder: task_losses(folder, rows, count) for folder in models}
    header = "| group | task | records | tokens | supervised tokens | share of the group's supervised |"
    rule = "|---|---|---|---|---|---|"
    for number, _ in enumerate(models, 1):
        header += f" loss, model {number} |"
        rule += "---|"
    lines += [header, rule]
    table = token_table(rows)
    totals: dict[str, int] = defaultdict(int)
    for row in table:
        totals[row["group"]] += row["supervised"]
    for row in table:
        cells = f"| {row['group']} | {row['task']} | {row['records']:,} | {row['tokens']:,} | {row['supervised']:,} | "
        cells += f"{row['supervised'] / totals[row['group']]:.1%} |"
        cells += "".join(f" {losses[folder][row['group'], row['task']]:.4f} |" for folder in models)
        lines.append(cells)
    for number, folder in enumerate(models, 1):
        lines.append(f"model {number}: {folder} (mean cross-entropy per supervised token, first {count} rows a task)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from lumina_mgpt.shapes.build import GROUPS, LATE_GROUPS, RECIPES, WORK
    from lumina_mgpt.training.recipe import Recipe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=WORK, help=f"the build's work folder (default: {WORK})")
    parser.add_argument("--model", type=Path, action="append", default=[], help="a model folder to score (repeatable)")
    parser.add_argument("--rows", type=int, default=32, help="rows a task for the losses (default: 32)")
    args = parser.parse_args(argv)
    try:
        runs = [Recipe.from_file(recipe).output_dir.name for recipe in RECIPES]
        groups = list(GROUPS)
        groups += [group for group in LATE_GROUPS if (args.work / f"tokens-{group}" / "manifest.json").is_file()]
        print(format_report(args.work, groups, runs, args.model, args.rows))
    except DataError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
