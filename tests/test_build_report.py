"""The shapes build's figures: tokens and losses per task from the shards, time and loss from the log."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from model_fixtures import tiny_model

from lumina_mgpt.errors import DataError
from lumina_mgpt.formats import IGNORE_INDEX
from lumina_mgpt.model import save_model
from lumina_mgpt.shapes.build import GROUPS as BUILD_GROUPS
from lumina_mgpt.shapes.build_report import (
    main,
    read_row_tasks,
    record_build_time,
    task_losses,
    token_table,
    training_summary,
)

# (group, task, ids, labels): labels are the ids where supervised, IGNORE_INDEX elsewhere.
ROWS = [
    ("single", "caption", [1, 5, 6, 7, 2], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, 2]),
    ("single", "vqa", [1, 8, 9, 3], [IGNORE_INDEX, IGNORE_INDEX, 9, 3]),
    ("single", "caption", [1, 5, 4, 2], [IGNORE_INDEX, 5, 4, 2]),
    ("panels", "edit_add", [1, 10, 11, 12, 13, 2], [IGNORE_INDEX, IGNORE_INDEX, 11, 12, 13, 2]),
    ("text", "caption", [1, 5, 6, 2], [IGNORE_INDEX, IGNORE_INDEX, 6, 2]),
    ("verify", "verify", [1, 8, 4, 3], [IGNORE_INDEX, IGNORE_INDEX, 4, 3]),
]
GROUPS = tuple(BUILD_GROUPS)


def write_work(folder):
    """A build work folder as the build leaves it: records, one shard per group, a training log."""
    for group in GROUPS:
        rows = [row for row in ROWS if row[0] == group]
        (folder / f"data-{group}").mkdir(parents=True)
        (folder / f"data-{group}" / "records.jsonl").write_text(
            "".join(json.dumps({"task": task, "conversations": []}) + "\n" for _, task, _, _ in rows)
        )
        tokens = folder / f"tokens-{group}"
        tokens.mkdir()
        table = pa.table(
            {
                "ids": [ids for _, _, ids, _ in rows],
                "labels": [labels for _, _, _, labels in rows],
                "source_id": [f"{folder}/data-{group}/records.jsonl:{n}" for n in range(1, len(rows) + 1)],
            }
        )
        pq.write_table(table, tokens / "shard-00000.parquet")
        (tokens / "manifest.json").write_text(json.dumps({"shards": [{"file": "shard-00000.parquet"}]}))
    (folder / "run").mkdir()
    # A first run logs steps 1-1200 and dies; resumed from its step-1000 checkpoint, the run logs 1001-2000
    # again: the later lines are the run's history.
    killed = [{"step": s, "tokens": 100 * s, "tokens_per_s": 50.0, "ce": 9.0} for s in range(1001, 1201)]
    log = [{"step": s, "tokens": 100 * s, "tokens_per_s": 50.0, "ce": 3.0 - s / 1000} for s in range(1, 2001)]
    log[1000:1000] = killed
    (folder / "run" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))


def test_rows_are_counted_per_task_and_losses_are_cross_entropy_per_supervised_token(tmp_path):
    write_work(tmp_path)
    rows = read_row_tasks(tmp_path, GROUPS)
    assert {key: len(task_rows) for key, task_rows in rows.items()} == {
        ("single", "caption"): 2,
        ("single", "vqa"): 1,
        ("panels", "edit_add"): 1,
        ("text", "caption"): 1,
        ("verify", "verify"): 1,
    }
    table = {(row["group"], row["task"]): row for row in token_table(rows)}
    assert table["single", "caption"] == {"group": "single", "task": "caption", "records": 2, "tokens": 9,
                                          "supervised": 5}  # fmt: skip
    assert table["panels", "edit_add"]["supervised"] == 4

    model = tiny_model()
    save_model(model, tmp_path / "model")
    losses = task_losses(tmp_path / "model", rows, count=8)
    with torch.no_grad():
        scored, targets = [], []
        for group, task, ids, labels in ROWS:
            if (group, task) == ("single", "caption"):
                logits = model(torch.tensor([ids]))[0, :-1]
                keep = torch.tensor(labels[1:]) != IGNORE_INDEX
                scored.append(logits[keep])
                targets.append(torch.tensor(labels[1:])[keep])
        expected = F.cross_entropy(torch.cat(scored), torch.cat(targets)).item()
    assert losses["single", "caption"] == pytest.approx(expected, rel=1e-4)
    assert task_losses(tmp_path / "model", rows, count=1)["single", "caption"] != pytest.approx(expected, rel=1e-4)


def test_training_summary_counts_each_step_once_and_build_times_add_up(tmp_path, capsys):
    write_work(tmp_path)
    summary = training_summary(tmp_path / "run" / "log.jsonl")
    assert summary["steps"] == 2000 and summary["tokens"] == 200_000
    assert summary["compute_seconds"] == pytest.approx(200_000 / 50.0)
    assert summary["loss_curve"][1000] == pytest.approx(np.mean([3.0 - s / 1000 for s in range(901, 1001)]))
    assert summary["loss_curve"][2000] == summary["final_loss"] == pytest.approx(3.0 - 1950.5 / 1000)
    record_build_time(tmp_path, "train", 60.0)
    record_build_time(tmp_path, "train", 30.0)
    assert main(["--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| train | 1.5 |" in out and "run: 2,000 steps" in out and "| single | caption | 2 | 9 | 5 | 71.4% |" in out
    assert "run-text" not in out  # the text stage has not started


def test_a_work_folder_without_data_is_a_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text("")
    with pytest.raises(DataError, match="build the data first"):
        read_row_tasks(tmp_path, GROUPS)
    with pytest.raises(SystemExit):
        main(["--work", str(tmp_path)])


def test_the_build_recipes_chain_and_read_only_the_groups_the_build_makes():
    """Each recipe of the build starts from the one before it and trains on pretokenized groups of GROUPS,
    so a fresh machine's build makes everything its stages read."""
    from lumina_mgpt.shapes.build import LATE_GROUPS, RECIPES, WORK
    from lumina_mgpt.training.recipe import Recipe

    recipes = [Recipe.from_file(path) for path in RECIPES]
    made = {(WORK / f"tokens-{group}").resolve() for group in [*BUILD_GROUPS, *LATE_GROUPS]}
    for before, recipe in zip([None, *recipes], recipes):
        if before is not None:
            assert recipe.model.path.resolve() == (before.output_dir / "final").resolve()
        for stage in recipe.stages:
            assert {source.manifest.resolve() for source in stage.data} <= made
    read = {source.manifest.resolve() for recipe in recipes for stage in recipe.stages for source in stage.data}
    assert read == made  # and every group rendered is trained on


def test_groups_drawn_on_every_canvas_hold_only_tasks_that_read_pictures():
    from lumina_mgpt.shapes.build import EVERY_CANVAS_GROUPS
    from lumina_mgpt.shapes.tasks import READING_TASKS

    assert EVERY_CANVAS_GROUPS and set(EVERY_CANVAS_GROUPS) <= set(BUILD_GROUPS)
    for group in EVERY_CANVAS_GROUPS:
        counts, target_size = BUILD_GROUPS[group]
        assert set(counts) <= set(READING_TASKS) and target_size == 64  # 80x48 and 48x80 are buckets of 64


def test_the_build_draws_each_judging_stages_pictures_with_the_stage_before_it_then_trains_and_exports(
    tmp_path, monkeypatch
):
    """build.main's order, every step stubbed: the judge stage's drawings come from the canvases stage's final
    model, after that stage and before the judge recipe; the requests records are written before the requests
    recipe; the rejudge stage's drawings come from the requests stage's final and the second rejudge stage's
    from the rejudge stage's; the last stage's final is exported; --max-steps stops early."""
    from lumina_mgpt import model_folder
    from lumina_mgpt.shapes import build

    calls = []
    for step in ("render_data", "train_text_tokenizer", "train_image_tokenizer", "write_project_metadata",
                 "write_known_words", "pretokenize_data"):  # fmt: skip
        monkeypatch.setattr(build, step, lambda *args, step=step: calls.append((step,)))
    runs = {"folder": tmp_path / "whole", "finished": True}

    def train_model(recipe, device, max_steps):
        final = runs["folder"] / recipe.stem / "final"
        final.mkdir(parents=True, exist_ok=True)
        if runs["finished"]:
            (final / "config.json").write_text("{}")
        calls.append(("train", recipe.stem))
        return final

    monkeypatch.setattr(build, "train_model", train_model)
    monkeypatch.setattr(
        build, "draw_verify_data", lambda work, recipe, final, *rest: calls.append(("draw", final.parent.name))
    )
    monkeypatch.setattr(build, "read_requests_data", lambda work, *rest: calls.append(("requests",)))
    monkeypatch.setattr(build, "export", lambda final, destination: calls.append(("export", final.parent.name)))
    monkeypatch.setattr(build, "WORK", tmp_path)
    monkeypatch.setattr(model_folder, "EMBEDDED_MODEL", tmp_path / "package")
    assert build.main([]) == 0
    trained = [call for call in calls if call[0] in ("train", "draw", "requests", "export")]
    stems = [recipe.stem for recipe in build.RECIPES]
    assert stems[-4:] == [
        "shapes-multitask-judge", "shapes-multitask-requests", "shapes-multitask-rejudge",
        "shapes-multitask-rejudge-again",
    ]  # fmt: skip
    assert trained == [
        *[("train", stem) for stem in stems[:-4]], ("draw", stems[-5]), ("train", stems[-4]), ("requests",),
        ("train", stems[-3]), ("draw", stems[-3]), ("train", stems[-2]), ("draw", stems[-2]), ("train", stems[-1]),
        ("export", stems[-1]),
    ]
    calls.clear()
    runs.update(folder=tmp_path / "stopped", finished=False)  # --max-steps stopped the first recipe: nothing after it
    assert build.main(["--max-steps", "5"]) == 0
    assert [call for call in calls if call[0] in ("train", "draw", "requests", "export")] == [("train", stems[0])]
