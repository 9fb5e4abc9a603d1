"""recipes/finetune-shapes-{lora,full}.toml run from the embedded model on shapes-world renders that
`lumina pretokenize` made with the embedded model's defaults, and export models `lumina generate` loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lumina_mgpt.cli import main
from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.model_folder import EMBEDDED_MODEL
from lumina_mgpt.shapes.dataset import write_dataset
from lumina_mgpt.training.checkpoint import CHECKPOINTS, LOG_FILE, LORA_FILE, MODEL_DIR, periodic_name
from lumina_mgpt.training.recipe import Recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    """Eight 64 px renders pretokenized for the embedded model, as the recipes' comments say."""
    folder = tmp_path_factory.mktemp("finetune")
    records = write_dataset(folder / "renders", 8, seed=5, sizes=((64, 64),), progress=False)
    argv = ["pretokenize", str(records), "--out", str(folder / "tokens"), "--loss-mode", "image", "--center-crop"]
    assert main(argv + ["--device", "cpu"]) == 0
    return folder / "tokens"


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_finetune_recipe_trains_the_embedded_model_for_two_steps(kind, tokens, tmp_path):
    shipped = RECIPES / f"finetune-shapes-{kind}.toml"
    recipe = Recipe.from_file(shipped)
    assert recipe.model.path == EMBEDDED_MODEL and (recipe.lora is not None) == (kind == "lora")
    text = shipped.read_text()
    assert '"../runs/finetune-shapes/tokens"' in text
    copy = tmp_path / shipped.name  # the same recipe, reading the test's tokens
    copy.write_text(text.replace('"../runs/finetune-shapes/tokens"', json.dumps(str(tokens))))
    run = tmp_path / "run"
    assert main(["train", str(copy), "--out", str(run), "--max-steps", "2", "--no-progress"]) == 0

    log = [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2]
    # The embedded model already draws shapes: a loss per image token far below a fresh model's ~7 nats.
    assert all(math.isfinite(record["loss"]) and record["loss"] < 1.0 for record in log)
    checkpoint = run / CHECKPOINTS / periodic_name(2)
    assert (checkpoint / LORA_FILE).is_file() == (kind == "lora")
    pipe = Pipeline.from_pretrained(checkpoint / MODEL_DIR, device="cpu")  # what `lumina generate --model` loads
    assert pipe.layout.name == "compact" and pipe.defaults.size == (64, 64)
