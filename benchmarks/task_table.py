"""The multi-task model's scores against the bars of issues 16 and 18: one markdown row per figure, the
mean over the given reports (one per seed), each seed's value, the bar and whether it is met.

    lumina eval shapes --seed 0 --out s0.json; lumina eval shapes --seed 1000 --out s1.json
    lumina eval tasks --seed 0 --out t0.json;  lumina eval tasks --seed 1000 --out t1.json
    python benchmarks/task_table.py --shapes s0.json s1.json --tasks t0.json t1.json

    # issue 18: --best-of 8 --verifier V on ShapesEval; --think self --best-of 8 on the phrasing styles
    python benchmarks/task_table.py --shapes-best-of b0.json b1.json --styles-think-best-of h0.json h1.json \
        --verifier self
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# (task of `lumina eval tasks`, what the row says, bar)
TASK_BARS = [
    ("text_to_image", "text-to-image, held-out phrasing styles", 0.85),
    ("text_to_image_rewrite", "text-to-image with --rewrite, the same styles", 0.88),
    ("edit_recolor", "editing: recolor", None),
    ("edit_move", "editing: move", None),
    ("edit_add", "editing: add", None),
    ("edit_remove", "editing: remove", None),
    ("control_edges", "control (edges -> image)", 0.85),
    ("subject", "subject-driven", 0.80),
    ("segmentation", "segmentation (mIoU)", 0.80),
    ("edges", "edge map (F1)", 0.80),
    ("caption", "caption", 0.80),
    ("vqa", "visual questions", 0.85),
    ("rewrite", "rewrite", 0.90),
    ("verify", "verify (the self-verifier's question; no bar)", None),
    ("relations", "relations (where two objects are; no bar)", None),
]
EDITS = ("edit_recolor", "edit_move", "edit_add", "edit_remove")
EDIT_BAR = 0.80
SHAPES_BAR = 0.88
SHAPES_BEST_OF_BAR = 0.95
STYLES_THINK_BEST_OF_BAR = 0.93


def read(paths: list[Path]) -> list[dict]:
    return [json.loads(Path(path).read_text()) for path in paths]


def row(label: str, values: list[float], bar: float | None) -> str:
    mean = sum(values) / len(values)
    seeds = " / ".join(f"{value:.3f}" for value in values)
    verdict = "" if bar is None else ("met" if mean >= bar else "**not met**")
    return f"| {label} | **{mean:.3f}** | {seeds} | {'' if bar is None else f'>= {bar:.2f}'} | {verdict} |"


def table_rows(args: argparse.Namespace) -> list[str]:
    rows = []
    if args.shapes:
        rows.append(row("text-to-image, ShapesEval", [r["overall"] for r in read(args.shapes)], SHAPES_BAR))
    if args.tasks:
        reports = read(args.tasks)
        for task, label, bar in TASK_BARS:
            if all(task in r["tasks"] for r in reports):
                rows.append(row(label, [r["tasks"][task]["score"] for r in reports], bar))
        if all(edit in r["tasks"] for r in reports for edit in EDITS):
            means = [sum(r["tasks"][edit]["score"] for edit in EDITS) / len(EDITS) for r in reports]
            rows.append(row("editing, the four kinds", means, EDIT_BAR))
    if args.shapes_best_of:
        values = [r["overall"] for r in read(args.shapes_best_of)]
        rows.append(row(f"ShapesEval, --best-of 8 --verifier {args.verifier}", values, SHAPES_BEST_OF_BAR))
    if args.styles_think_best_of:
        values = [r["tasks"]["text_to_image"]["score"] for r in read(args.styles_think_best_of)]
        label = f"phrasing styles, --think self --best-of 8 --verifier {args.verifier}"
        rows.append(row(label, values, STYLES_THINK_BEST_OF_BAR))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", type=Path, help="lumina eval shapes --out reports, one per seed")
    parser.add_argument("--tasks", nargs="+", type=Path, help="lumina eval tasks --out reports, one per seed")
    parser.add_argument("--shapes-best-of", nargs="+", type=Path, help="eval shapes reports with best-of")
    parser.add_argument(
        "--styles-think-best-of", nargs="+", type=Path, help="eval tasks --task text_to_image reports with think"
    )
    parser.add_argument("--verifier", default="self", help="the verifier the best-of reports chose with (default: self)")
    args = parser.parse_args()
    rows = table_rows(args)
    if not rows:
        parser.error("give at least one group of reports")
    print("| figure | mean | per seed | bar | |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
