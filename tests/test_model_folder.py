"""`--model`: a folder, the embedded model, or a hub id resolved through the hub's cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lumina_mgpt.errors import CheckpointError
from lumina_mgpt.model_folder import EMBEDDED_MODEL, resolve_model

REPO_ID = "Alpha-VLLM/Lumina-mGPT-7B-768"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache_with(tmp_path: Path, repo_id: str, files_from: Path) -> Path:
    """A Hugging Face hub cache in the hub's own layout holding one snapshot of `repo_id`."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(files_from, repo / "snapshots" / COMMIT)
    return cache


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


def test_no_name_and_the_alias_mean_the_embedded_model():
    assert resolve_model(None) == resolve_model("embedded") == EMBEDDED_MODEL


def test_a_local_folder_wins_over_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("owner/name") == Path("owner/name")


def test_a_file_or_a_name_that_is_neither_folder_nor_hub_id_is_refused(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_model(weights)
    with pytest.raises(CheckpointError, match="not a hub id"):
        resolve_model(str(tmp_path / "missing" / "deeper" / "folder"))


def test_hub_id_resolves_offline_from_a_populated_cache(tmp_path):
    cache = hub_cache_with(tmp_path, REPO_ID, EMBEDDED_MODEL)
    code = f"from lumina_mgpt.model_folder import resolve_model; print(resolve_model({REPO_ID!r}))"
    result = run_python(code, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == cache / "models--Alpha-VLLM--Lumina-mGPT-7B-768" / "snapshots" / COMMIT


def test_hub_id_without_network_or_cache_names_the_download_command(tmp_path):
    code = (
        "from lumina_mgpt.model_folder import resolve_model\n"
        f"try:\n    resolve_model({REPO_ID!r})\nexcept Exception as error:\n    print(type(error).__name__, error)\n"
    )
    result = run_python(code, HF_HUB_CACHE=str(tmp_path / "empty"), HF_HUB_OFFLINE="1")
    assert result.stdout.startswith("CheckpointError")
    assert f"hf download {REPO_ID} --local-dir DIR" in result.stdout


def embedded_vocab_size() -> int:
    return json.loads((EMBEDDED_MODEL / "config.json").read_text())["vocab_size"]


def test_pipeline_loads_a_hub_id_from_the_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from lumina_mgpt.generation.pipeline import Pipeline

    cache = hub_cache_with(tmp_path, REPO_ID, EMBEDDED_MODEL)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    pipe = Pipeline.from_pretrained(REPO_ID, device="cpu")
    (image,) = pipe.generate("a red circle", width=32, height=32, progress=False)
    assert image.size == (32, 32) and pipe.layout.vocab_size == embedded_vocab_size()


def test_tokenize_reads_the_models_own_vocabulary_grid_and_size(tmp_path):
    cache = hub_cache_with(tmp_path, REPO_ID, EMBEDDED_MODEL)
    for model in ([], ["--model", "embedded"], ["--model", REPO_ID]):
        code = f"from lumina_mgpt.cli import main; main(['tokenize', 'a red circle', *{model!r}])"
        result = run_python(code, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
        assert result.returncode == 0, result.stderr
        assert f"layout: compact (vocab {embedded_vocab_size()}," in result.stdout
        assert "image: 64x64 -> grid 8x8 (rows x cols), block 76 ids" in result.stdout
