"""Run folders and training checkpoints.

A run folder holds:
```
recipe.toml                 the recipe text the run started with
log.jsonl                   one JSON line per optimizer step (rank 0)
checkpoints/step-00000100/  periodic checkpoints, the last `keep` kept
stages/<name>/              the final checkpoint of each finished stage, never removed
final/                      the last stage's model (hard links to stages/<last>/model), once all are done
```
A checkpoint folder holds `model/` (an HF Chameleon folder, LoRA merged, plus the recipe's assets:
what `lumina generate --model` loads), `lora.safetensors` (the unmerged adapters, LoRA runs only),
`state.json` (stage, steps, tokens, world size) and `rank-00000.pt` ... one per rank (optimizer shard,
data position, RNG states; plain tensors and containers, read with `torch.load(weights_only=True)`).
Every checkpoint is written into a hidden temp folder, then renamed: a folder without the temp
prefix is complete. A complete checkpoint can still be damaged afterwards (a full disk, a partial
copy, a manual edit): `--resume` then falls back to the newest one that loads and moves the damaged
ones aside as hidden `.damaged-<name>` folders, kept for inspection. Ranks share the run folder (one
node, or a shared file system).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lumina_mgpt.atomic import write_text_atomically
from lumina_mgpt.errors import TrainingError
from lumina_mgpt.text.known_words import PROMPT_WORDS_FILE

CHECKPOINTS = "checkpoints"
STAGES = "stages"
STATE_FILE = "state.json"
MODEL_DIR = "model"
LORA_FILE = "lora.safetensors"
FINAL_DIR = "final"
LOG_FILE = "log.jsonl"
RECIPE_FILE = "recipe.toml"
TEMP_PREFIX = ".tmp-"
DAMAGED_PREFIX = ".damaged-"
# Files of an HF folder that an export writes itself; everything else in `assets` is copied next to it.
_MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class TrainingProgress:
    """Where a run stands: the stage, optimizer steps in it and overall, tokens seen."""

    stage_index: int
    stage_name: str
    stage_step: int
    global_step: int
    tokens: int
    stage_finished: bool
    world_size: int

    @classmethod
    def read(cls, folder: Path) -> TrainingProgress:
        try:
            return cls(**json.loads((folder / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise TrainingError(
                f"{folder / STATE_FILE} is unreadable ({error}); a training checkpoint is required"
            ) from error


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint that loaded: its progress, folder and this rank's saved state (None after a finished
    stage, whose successor starts from the stage's model with a fresh optimizer)."""

    progress: TrainingProgress
    folder: Path
    rank_state: dict | None


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and python RNG states as weights_only-loadable containers."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "python": [version, list(python_state), gauss_next],
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, python_state, gauss_next = state["python"]
    random.setstate((version, tuple(python_state), gauss_next))


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def save_rank_state(folder: Path, rank: int, state: dict) -> None:
    """Write this rank's optimizer shard, data position and RNG states (tensors and plain containers)."""
    torch.save(state, folder / rank_file(rank))


def load_rank_state(folder: Path, rank: int) -> dict:
    """Read what `save_rank_state` wrote for `rank` (weights_only: no arbitrary unpickling)."""
    path = folder / rank_file(rank)
    if not path.is_file():
        raise TrainingError(f"{path} is missing; a checkpoint holds one rank file per rank of the run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises loading without weights_only, which would run the file's code.
        if zipfile.is_zipfile(path):
            raise TrainingError(
                f"{path} holds pickled objects other than tensors, numbers and plain containers; refused, since "
                "loading them could run arbitrary code (a rank file written by `lumina train` holds only those)"
            ) from None
        raise TrainingError(
            f"{path} is not a torch.save file (damaged?); a rank file written by `lumina train` is required"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise TrainingError(f"{path} is unreadable ({error}); the file is truncated or damaged") from error


def load_adapters(folder: Path) -> dict[str, torch.Tensor]:
    """The unmerged LoRA adapters a LoRA run's checkpoint holds."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / LORA_FILE
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise TrainingError(f"{path} is unreadable ({error}); a LoRA checkpoint holds its adapters there") from error


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def copy_assets(assets: Path | None, model_folder: Path, word_list: bool = True) -> None:
    """Copy (hard-link when possible) the non-weight files of `assets` into an exported model folder;
    `word_list` False leaves out the list of words the model knows (text/known_words.py)."""
    if assets is None or not assets.is_dir():
        return
    for entry in assets.iterdir():
        if entry.name in _MODEL_FILES or entry.name.startswith(".") or entry.suffix == ".safetensors":
            continue
        if entry.name == PROMPT_WORDS_FILE and not word_list:
            continue
        target = model_folder / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(target))


def publish_final(run_dir: Path, model_folder: Path) -> Path:
    """Give the run's finished model the stable name `final/` (hard links; replaced atomically)."""
    temp = run_dir / f"{TEMP_PREFIX}{FINAL_DIR}"
    if temp.exists():
        shutil.rmtree(temp)
    shutil.copytree(model_folder, temp, copy_function=_link_or_copy)
    final = run_dir / FINAL_DIR
    if final.exists():
        shutil.rmtree(final)
    os.replace(temp, final)
    return final


def empty_folder(folder: Path) -> None:
    """Create `folder` empty (a stale one, left by a crash mid-write, is removed first)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()


def publish(temp: Path, target: Path, progress: TrainingProgress) -> None:
    """Write state.json into `temp` and rename it to `target` (replacing an older folder of that name)."""
    write_text_atomically(temp / STATE_FILE, json.dumps(asdict(progress), indent=1) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(temp, target)


def periodic_name(global_step: int) -> str:
    """Folder name of the periodic checkpoint after `global_step` (sorts by step)."""
    return f"step-{global_step:08d}"


def _visible_folders(parent: Path) -> list[Path]:
    """Sub-folders of `parent` except hidden ones (temp folders being written, damaged checkpoints)."""
    if not parent.is_dir():
        return []
    return sorted(folder for folder in parent.iterdir() if folder.is_dir() and not folder.name.startswith("."))


def _published_folders(run_dir: Path) -> list[Path]:
    """Checkpoint folders that were published whole (they hold state.json, written last)."""
    folders = _visible_folders(run_dir / CHECKPOINTS) + _visible_folders(run_dir / STAGES)
    return [folder for folder in folders if (folder / STATE_FILE).is_file()]


def completed_checkpoints(run_dir: Path) -> list[tuple[TrainingProgress, Path]]:
    """Every complete checkpoint of a run (periodic and stage finals) with a readable state.json, oldest
    first; `unreadable_checkpoints` lists the others."""
    found = []
    for folder in _published_folders(run_dir):
        try:
            found.append((TrainingProgress.read(folder), folder))
        except TrainingError:
            continue
    return sorted(found, key=lambda item: (item[0].global_step, item[0].stage_finished))


def unreadable_checkpoints(run_dir: Path) -> list[tuple[Path, str]]:
    """(folder, reason) of the published checkpoints whose state.json cannot be read."""
    damaged = []
    for folder in _published_folders(run_dir):
        try:
            TrainingProgress.read(folder)
        except TrainingError as error:
            damaged.append((folder, str(error)))
    return damaged


def move_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint to a hidden `.damaged-<name>` beside it (ignored from then on, kept
    for inspection); an older one of that name is replaced."""
    target = folder.with_name(f"{DAMAGED_PREFIX}{folder.name}")
    if target.exists():
        shutil.rmtree(target)
    os.replace(folder, target)
    return target


def prune_periodic(run_dir: Path, keep: int) -> None:
    """Remove all but the newest `keep` periodic checkpoints (stage finals are never removed)."""
    folders = _visible_folders(run_dir / CHECKPOINTS)
    for folder in folders[: max(0, len(folders) - keep)]:
        shutil.rmtree(folder)


def truncate_log(run_dir: Path, last_step: int) -> None:
    """Drop log lines of steps after `last_step` (written before a crash, redone on resume)."""
    path = run_dir / LOG_FILE
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    write_text_atomically(path, "".join(line + "\n" for line in kept))
