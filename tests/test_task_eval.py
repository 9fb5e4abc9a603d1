"""`lumina eval tasks` (shapes/task_eval.py): every task's held-out items through the task API, batched,
scored in [0, 1], one table; tasks a model lacks shown as not trained, or refused when asked by name."""

from __future__ import annotations

import json

import pytest
from test_tasks_api import tiny_task_pipeline

from lumina_mgpt.cli import main
from lumina_mgpt.errors import DataError, GenerationError
from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.model_folder import read_model_info
from lumina_mgpt.shapes import task_eval
from lumina_mgpt.shapes.task_eval import (
    EVAL_TASKS,
    REWRITE_DRAW,
    TEXT_OUTPUT_TASKS,
    TaskReport,
    choose_tasks,
    evaluate_tasks,
    format_task_table,
)
from lumina_mgpt.shapes.tasks import TASK_NAMES


@pytest.fixture(scope="module")
def pipe(one_thread):
    return tiny_task_pipeline()


@pytest.fixture(scope="module")
def report(pipe):
    return evaluate_tasks(pipe, limit=2, seed=3, batch_size=4)


def test_every_task_is_scored_in_the_unit_interval_and_tabled(report):
    scores = report.scores()
    assert list(scores) == list(EVAL_TASKS) and set(EVAL_TASKS) == {*TASK_NAMES, REWRITE_DRAW}
    assert all(items == 2 and 0.0 <= score <= 1.0 for items, score in scores.values())
    assert all(0.0 <= r.score <= 1.0 for r in report.results) and report.not_trained == ()
    table = format_task_table(report).splitlines()
    assert [line.split()[0] for line in table[1:-1]] == list(EVAL_TASKS)
    texts = [r.text for r in report.results if r.task in (*TEXT_OUTPUT_TASKS, REWRITE_DRAW)]
    assert len(texts) == 2 * (len(TEXT_OUTPUT_TASKS) + 1) and all(isinstance(text, str) for text in texts)


def test_items_of_a_task_share_engine_calls(pipe, monkeypatch):
    sizes = []
    for name in ("generate_images", "generate_text"):
        original = getattr(pipe.engine, name)
        monkeypatch.setattr(
            pipe.engine, name, lambda prompts, *a, _original=original, **k: sizes.append(len(prompts)) or _original(
                prompts, *a, **k
            ),
        )  # fmt: skip
    evaluate_tasks(pipe, ["edit_move", "vqa"], limit=3, batch_size=8)
    assert sizes == [3, 3]


def test_a_model_without_a_task_reports_it_as_not_trained_or_refuses_it_by_name():
    chosen, not_trained = choose_tasks(("text-to-image",), None)
    assert chosen == ["text_to_image"] and not_trained == [t for t in EVAL_TASKS if t != "text_to_image"]
    chosen, not_trained = choose_tasks(("text-to-image", "caption"), None)
    assert chosen == ["text_to_image", "caption"]
    with pytest.raises(GenerationError, match="not trained for 'rewrite' \\(its tasks: text-to-image\\)"):
        choose_tasks(("text-to-image",), [REWRITE_DRAW])
    with pytest.raises(DataError, match="unknown eval task 'dance'; accepted: text_to_image, text_to_image_rewrite"):
        choose_tasks(("text-to-image",), ["dance"])
    table = format_task_table(TaskReport((), ("caption",)))
    assert "caption" in table and "not in the model's tasks" in table


def test_the_json_report_keeps_scores_variants_and_answers(pipe, tmp_path):
    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    out = tmp_path / "tasks.json"
    argv = ["eval", "tasks", "--model", str(folder), "--task", "vqa", "--task", "segmentation", "--limit", "2",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert list(report["tasks"]) == ["segmentation", "vqa"] and report["limit"] == 2 and report["seed"] == 0
    vqa = report["tasks"]["vqa"]
    assert (
        vqa["items"] == 2 and vqa["metric"] == "exact answer" and sum(v["items"] for v in vqa["variants"].values()) == 2
    )
    assert [r["task"] for r in report["results"]] == ["vqa", "vqa", "segmentation", "segmentation"]
    assert all("text" in r for r in report["results"][:2])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "tasks", "--task", "caption", "--model", "{draw_only}"],
         "not trained for 'caption' \\(its tasks: text-to-image\\)"),
        (["eval", "tasks", "--task", "dance"], "unknown eval task 'dance'"),
        (["eval", "tasks", "--ground-truth"], "--ground-truth and --degrade check ShapesEval's analyzer"),
        (["eval", "tasks", "--limit", "0"], "--limit must be an integer >= 1"),
        (["eval", "shapes", "--task", "vqa"], "ShapesEval has none: drop --task"),
    ],
)
def test_bad_eval_requests_are_refused_before_the_model_loads(argv, message, capsys, monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("the model loaded")

    tiny_task_pipeline(tasks=("text-to-image",)).save_pretrained(tmp_path / "draw-only")
    monkeypatch.setattr(Pipeline, "from_model_info", refuse)
    assert main([part.format(draw_only=tmp_path / "draw-only") for part in argv]) == 2
    assert message.replace("\\", "") in capsys.readouterr().err


def test_the_embedded_model_is_evaluated_on_what_it_was_trained_for(capsys):
    assert main(["eval", "tasks", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in EVAL_TASKS}
    assert set(rows) == set(EVAL_TASKS) and "analyzer pass" in rows["text_to_image"]
    chosen, not_trained = choose_tasks(read_model_info().tasks, None)
    assert all("not in the model's tasks" in rows[task] for task in not_trained)
    assert not any("not in the model's tasks" in rows[task] for task in chosen)


def test_tuning_items_come_from_another_seed_than_the_held_out_ones(pipe, monkeypatch):
    asked = []
    original = task_eval.eval_items
    monkeypatch.setattr(task_eval, "eval_items", lambda *args: asked.append(args) or original(*args))
    evaluate_tasks(pipe, ["vqa"], limit=1)
    evaluate_tasks(pipe, ["vqa"], limit=1, item_seed=2024)
    assert [args[:3] for args in asked] == [("vqa", 1, task_eval.ITEM_SEED), ("vqa", 1, 2024)]
    assert task_eval.ITEM_SEED != 2024


def test_understanding_items_can_be_read_on_another_canvas_and_other_tasks_refuse_it(pipe):
    report = evaluate_tasks(pipe, ["caption"], limit=2, canvases=((80, 48),))
    assert [r.task for r in report.results] == ["caption", "caption"]
    with pytest.raises(DataError, match="text_to_image draw.s. on their own canvases"):
        evaluate_tasks(pipe, ["caption", "text_to_image"], limit=1, canvases=((80, 48),))
