"""Reading official VQGAN files and reading/writing this project's tokenizer folders."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lumina_mgpt.atomic import write_atomically, write_text_atomically
from lumina_mgpt.errors import ImageTokenizerError
from lumina_mgpt.vision.config import VQConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_TAG = "lumina_mgpt.vision.ImageTokenizer/1"
OFFICIAL_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def load_official_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a taming/MoVQGAN checkpoint, bare or under a "state_dict" key (never unpickles code)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise ImageTokenizerError(
            f"cannot read {path} with torch.load(weights_only=True): {error}; accepted: a checkpoint holding "
            "only tensors (and plain containers), bare or under a 'state_dict' key"
        ) from error
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not payload:
        raise ImageTokenizerError(
            f"{path} does not hold a state dict; accepted: a dict of tensors, bare or under 'state_dict'"
        )
    tensors = {name: value for name, value in payload.items() if isinstance(value, torch.Tensor)}
    others = sorted(name for name in payload if name not in tensors)
    if others:
        raise ImageTokenizerError(
            f"{path}: entries {others[:8]} are not tensors; accepted: a state dict of tensors only"
        )
    return tensors


def find_yaml(checkpoint: Path) -> Path | None:
    """The taming config beside a checkpoint: same stem `.yaml`, else `vqgan.yaml` in the same folder."""
    for candidate in (checkpoint.with_suffix(".yaml"), checkpoint.parent / "vqgan.yaml"):
        if candidate.is_file():
            return candidate
    return None


def write_folder(folder: Path, config: VQConfig, state_dict: dict[str, torch.Tensor]) -> None:
    """Write config.json + model.safetensors, each atomically (temp file + os.replace)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    write_atomically(folder / WEIGHTS_FILE, lambda temp: save_file(tensors, temp, metadata={"format": "pt"}))
    document = json.dumps({"format": FORMAT_TAG, **config.to_dict()}, indent=2) + "\n"
    write_text_atomically(folder / CONFIG_FILE, document)


def read_folder(folder: Path) -> tuple[VQConfig, dict[str, torch.Tensor]]:
    """Inverse of `write_folder`."""
    try:
        document = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ImageTokenizerError(f"cannot read {folder / CONFIG_FILE}: {error}") from error
    if document.pop("format", None) != FORMAT_TAG:
        raise ImageTokenizerError(
            f"{folder / CONFIG_FILE} is not an image tokenizer config (expected format {FORMAT_TAG!r})"
        )
    return VQConfig.from_dict(document), load_file(str(folder / WEIGHTS_FILE))


def is_tokenizer_folder(path: Path) -> bool:
    """True for a folder written by `write_folder`."""
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()
