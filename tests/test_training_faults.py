"""Training survives its own failures: damaged checkpoints on --resume, unsafe rank files, recipes with
NaN / infinite / mistyped numbers, and samples longer than the model can take."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from lumina_mgpt.errors import TrainingError
from lumina_mgpt.training import checkpoint as ckpt
from lumina_mgpt.training.batches import data_batches
from lumina_mgpt.training.recipe import Recipe
from lumina_mgpt.training.trainer import Trainer

from test_data import _synthetic_dataset
from test_training import SINGLE, factory, make_rows, read_log, recipe_text, write_recipe

ROWS = make_rows(12)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=[False, True], ids=["full", "lora"])
def reference(request, tmp_path_factory) -> tuple[bool, dict[int, dict]]:
    """(lora, the log of an uninterrupted run) of the two-stage recipe: 3 + 7 steps."""
    folder = tmp_path_factory.mktemp("reference")
    recipe = write_recipe(folder, recipe_text(folder / "run", lora=request.param))
    Trainer(recipe, SINGLE, batch_factory=factory(ROWS), progress_bar=False).train()
    return request.param, read_log(folder / "run")


def stopped_run(folder: Path, lora: bool) -> tuple[Recipe, Path]:
    """The same recipe stopped after step 6: checkpoints stages/s0 (step 3), step-5 and step-6."""
    recipe = write_recipe(folder, recipe_text(folder / "run", lora=lora))
    Trainer(recipe, SINGLE, max_steps=6, batch_factory=factory(ROWS), progress_bar=False).train()
    steps = [progress.global_step for progress, _ in ckpt.completed_checkpoints(folder / "run")]
    assert steps == [3, 5, 6] and len(read_log(folder / "run")) == 6
    return recipe, folder / "run"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


class RunsCode:
    """Unpickling this calls `Path.touch` on a marker file: what a malicious rank file could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def damage(folder: Path, how: str, lora: bool) -> str:
    """Damage checkpoint `folder`; returns a phrase the fallback warning must contain."""
    if how == "truncated weights":
        truncate(folder / (ckpt.LORA_FILE if lora else f"{ckpt.MODEL_DIR}/model.safetensors"))
        return "lora.safetensors is unreadable" if lora else "lies outside the file"
    if how == "garbage state":
        (folder / ckpt.STATE_FILE).write_text("{not json")
        return "state.json is unreadable"
    if how == "missing rank file":
        (folder / ckpt.rank_file(0)).unlink()
        return "rank-00000.pt is missing"
    if how == "unsafe pickle":
        torch.save({"optimizer": RunsCode(folder / "code-ran")}, folder / ckpt.rank_file(0))
        return "could run arbitrary code"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated weights", "garbage state", "missing rank file", "unsafe pickle"])
def test_resume_falls_back_past_a_damaged_newest_checkpoint(reference, tmp_path, caplog, how):
    """The newest checkpoint (step 6) is damaged: --resume warns, moves it aside, loads step 5, cuts the
    log back to step 5 only then, and ends exactly where an uninterrupted run does."""
    lora, reference_log = reference
    recipe, run = stopped_run(tmp_path, lora)
    newest = run / ckpt.CHECKPOINTS / ckpt.periodic_name(6)
    phrase = damage(newest, how, lora)
    with caplog.at_level(logging.WARNING):
        Trainer(recipe, SINGLE, batch_factory=factory(ROWS), progress_bar=False).train(resume=True)
    assert f"checkpoint {newest} cannot be resumed from" in caplog.text and phrase in caplog.text
    assert f"resuming from {run / ckpt.CHECKPOINTS / ckpt.periodic_name(5)} (step 5)" in caplog.text
    assert "weights_only" not in caplog.text
    moved = newest.with_name(f"{ckpt.DAMAGED_PREFIX}{newest.name}")
    assert (moved / ckpt.STATE_FILE).is_file() and not (moved / "code-ran").exists()
    log = read_log(run)
    assert sorted(log) == sorted(reference_log) == list(range(1, 11))
    for step, record in reference_log.items():
        assert log[step]["loss"] == pytest.approx(record["loss"], rel=1e-6, abs=1e-9), step
    assert [p.global_step for p, _ in ckpt.completed_checkpoints(run)] == [3, 7, 9, 10]


def test_when_no_checkpoint_loads_the_error_lists_them_and_nothing_is_changed(tmp_path):
    recipe, run = stopped_run(tmp_path, lora=False)
    for _, folder in ckpt.completed_checkpoints(run):
        (folder / ckpt.MODEL_DIR / "config.json").unlink()
    log_before = (run / ckpt.LOG_FILE).read_text()
    with pytest.raises(TrainingError) as refused:
        Trainer(recipe, SINGLE, batch_factory=factory(ROWS), progress_bar=False).train(resume=True)
    message = str(refused.value)
    assert message.startswith(f"no checkpoint of {run} loads, so the run cannot resume (tried ")
    for name in ("step-00000006", "step-00000005", "s0"):
        assert name in message
    assert "\n" not in message
    assert (run / ckpt.LOG_FILE).read_text() == log_before  # not cut before a checkpoint loaded
    assert len(ckpt.completed_checkpoints(run)) == 3  # nothing moved aside


def test_an_unsafe_rank_file_is_refused_in_our_words_without_running_it(tmp_path):
    torch.save({"rng": RunsCode(tmp_path / "code-ran")}, tmp_path / ckpt.rank_file(0))
    with pytest.raises(TrainingError) as refused:
        ckpt.load_rank_state(tmp_path, 0)
    assert "holds pickled objects other than tensors" in str(refused.value)
    assert "weights_only" not in str(refused.value) and refused.value.__cause__ is None
    assert not (tmp_path / "code-ran").exists()
    (tmp_path / ckpt.rank_file(1)).write_bytes(b"not a torch file")
    with pytest.raises(TrainingError, match="is not a torch.save file"):
        ckpt.load_rank_state(tmp_path, 1)


# ---------------------------------------------------------------------------- recipes


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("lr = 0.003", "lr = nan", "[[stages]] 's0' lr = nan is invalid; accepted: a finite number > 0"),
        ("lr = 0.003", "lr = inf", "[[stages]] 's0' lr = inf is invalid; accepted: a finite number > 0"),
        ("lr = 0.003", 'lr = "3e-3"', "stages.s0.lr = '3e-3' has the wrong type, a string; accepted: a number"),
        ("z_loss = 1e-4", "z_loss = -inf", "z_loss = -inf is invalid; accepted: a finite number >= 0"),
        ("seed = 3", "seed = 3.5", "recipe.seed = 3.5 has the wrong type, a float; accepted: an integer"),
        ("seed = 3", "seed = -3", "seed = -3 is invalid; accepted: a finite number >= 0"),
        ("seed = 3", "seed = 3\nmax_seq_len = 0", "max_seq_len = 0 is invalid; accepted: a finite number > 0"),
        ("keep = 2", "keep = true", "checkpoint.keep = True has the wrong type, true or false; accepted: an integer"),
        ('preset = "tiny"', 'preset = "tiny"\nhidden_size = "64"',
         "model.hidden_size = '64' has the wrong type, a string; accepted: an integer"),
        ('preset = "tiny"', 'preset = "tiny"\nrope_theta = nan', "model.rope_theta = nan is invalid"),
        ('manifest = "unused"', 'manifest = "unused"\nratio = nan', "stage 's0' data ratio = nan is invalid"),
        ("[checkpoint]", "[optimizer]\ngrad_clip = inf\n[checkpoint]", "optimizer.grad_clip = inf is invalid"),
        ("[checkpoint]", "[optimizer]\nbetas = [0.9, nan]\n[checkpoint]", "accepted: numbers in [0, 1)"),
        ("warmup = 2", "warmup = -2", "[[stages]] 's0' warmup = -2 is invalid; accepted: a finite number >= 0"),
        ("batch_size = 2", "batch_size = 2\ntarget_size = 0", "target_size = 0 is invalid"),
    ],
)
def test_recipe_numbers_must_be_finite_in_range_and_of_their_type(tmp_path, old, new, message):
    text = recipe_text(tmp_path / "run")
    assert old in text
    with pytest.raises(TrainingError) as refused:
        Recipe.from_toml(text.replace(old, new, 1), tmp_path)
    assert message in str(refused.value) and "\n" not in str(refused.value)


# ---------------------------------------------------------------------------- over-long samples


def test_training_skips_samples_longer_than_max_seq_len(tmp_path, caplog):
    """A data set pretokenized without a limit: samples longer than the recipe's max_seq_len never
    reach a batch, and the skip is counted in a warning."""
    lengths = [20, 30, 200, 40, 50, 5000, 60, 70]
    manifest = _synthetic_dataset(tmp_path / "tokens", lengths)
    recipe = write_recipe(
        tmp_path, recipe_text(tmp_path / "run", steps=(2,)).replace('"unused"', f'"{manifest}"')
    )
    stage = recipe.stages[0]
    with caplog.at_level(logging.WARNING):
        batches = data_batches(stage, 0, SINGLE, seed=0, max_seq_len=100)
    assert f"skipping 2 of 8 samples of {manifest} longer than max_seq_len = 100 tokens (the longest has 5000)" in caplog.text
    assert len(batches.dataset) == 6
    widths = [batch["input_ids"].shape[1] for batch in batches]
    assert len(widths) == 3 and max(widths) == 70
    with pytest.raises(TrainingError, match=r"every sample of .* is longer than max_seq_len = 10 tokens \(the shortest has 20\)"):
        data_batches(stage, 0, SINGLE, seed=0, max_seq_len=10)


def test_the_default_limit_is_the_models_max_position_embeddings(tmp_path, caplog):
    lengths = [20, 30, 1025, 40]  # the tiny preset has 1024 positions
    manifest = _synthetic_dataset(tmp_path / "tokens", lengths)
    recipe = write_recipe(
        tmp_path, recipe_text(tmp_path / "run", steps=(1,)).replace('"unused"', f'"{manifest}"')
    )
    with caplog.at_level(logging.WARNING):
        Trainer(recipe, SINGLE, progress_bar=False).train()
    assert "skipping 1 of 4 samples" in caplog.text and "max_seq_len = 1024 tokens" in caplog.text
    assert json.loads((tmp_path / "run" / ckpt.LOG_FILE).read_text())["tokens"] <= 2 * 40
