"""Load and save HF `save_pretrained` folders (config.json + safetensors) of the Chameleon architecture.

Loading builds the model on the meta device and assigns tensors that are views of the memory-mapped
files, so a load costs about one copy of the weights (none when dtype and device already match).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from lumina_mgpt.atomic import write_atomically, write_text_atomically
from lumina_mgpt.errors import CheckpointError
from lumina_mgpt.model.config import ModelConfig
from lumina_mgpt.model.transformer import Transformer

CONFIG_NAME = "config.json"
SINGLE_FILE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Image-tokenizer weights that HF Chameleon folders may carry; the VQ model lives in lumina_mgpt.vision.
IGNORED_PREFIX = "model.vqmodel."
_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclasses.dataclass
class _TensorEntry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def _read_header(file: Path) -> dict[str, _TensorEntry]:
    """Tensor directory of one safetensors file (the 8-byte length, then a JSON header, then data)."""
    try:
        with open(file, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_len))
    except (OSError, struct.error, ValueError) as error:
        raise CheckpointError(f"{file} is not a readable safetensors file ({error})") from error
    data_start, file_size = 8 + header_len, file.stat().st_size
    entries = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(
                f"{file}: tensor {key} has dtype {info['dtype']}; accepted: {', '.join(_SAFETENSORS_DTYPES)}"
            )
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= file_size - data_start:
            raise CheckpointError(f"{file}: tensor {key} lies outside the file (truncated download?)")
        entries[key] = _TensorEntry(
            file, _SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]), data_start + begin, data_start + end
        )
    return entries


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: those named by the index, else model.safetensors."""
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [name for name in files if not (folder / name).is_file()]
        if missing:
            keys = [key for key, name in weight_map.items() if name == missing[0]][:3]
            raise CheckpointError(
                f"{folder}: shard files {missing} named by {INDEX_NAME} are missing (they hold e.g. {keys}); "
                "accepted: a folder with every shard its index names"
            )
        return [folder / name for name in files]
    if (folder / SINGLE_FILE_NAME).is_file():
        return [folder / SINGLE_FILE_NAME]
    raise CheckpointError(f"{folder} has neither {INDEX_NAME} nor {SINGLE_FILE_NAME}; one of them is required")


def _mapped_tensor(entry: _TensorEntry, storages: dict[Path, torch.UntypedStorage]) -> torch.Tensor:
    """A tensor viewing the memory-mapped file (copy-on-write), copied only if misaligned."""
    if entry.file not in storages:
        storages[entry.file] = torch.UntypedStorage.from_file(str(entry.file), False, entry.file.stat().st_size)
    raw = torch.empty(0, dtype=torch.uint8).set_(storages[entry.file])[entry.start : entry.end]
    item_size = torch.empty(0, dtype=entry.dtype).element_size()
    if entry.start % item_size:
        raw = raw.clone()
    return raw.view(entry.dtype).view(entry.shape)


def read_config(folder: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of an HF folder's config.json."""
    path = Path(folder) / CONFIG_NAME
    try:
        hf = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path} ({error}); an HF Chameleon config.json is required") from error
    return ModelConfig.from_hf_config(hf)


def load_model(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Transformer:
    """Load an HF Chameleon folder (sharded or single safetensors) into a Transformer in eval mode.

    `dtype=None` keeps the checkpoint's dtype (that of `model.embed_tokens.weight`). `model.vqmodel.*`
    tensors are ignored. Both q/k-norm layouts load: one row per model-parallel rank (official
    releases) or one row per head (recent transformers); the file decides `config.qk_norm_rows`.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a directory; an HF save_pretrained folder is required")
    config = read_config(folder)
    entries: dict[str, _TensorEntry] = {}
    for file in _weight_files(folder):
        entries.update({k: v for k, v in _read_header(file).items() if not k.startswith(IGNORED_PREFIX)})
    q_norm = entries.get("model.layers.0.self_attn.q_norm.weight")
    if q_norm is not None and len(q_norm.shape) == 2 and q_norm.shape[0] != config.qk_norm_rows:
        config = dataclasses.replace(config, qk_norm_rows=q_norm.shape[0])

    with torch.device("meta"):
        model = Transformer(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(entries))
    unexpected = sorted(set(entries) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: tensors missing from the checkpoint: {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            f"unexpected tensors: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}; accepted: exactly "
            "the HF Chameleon parameter names for this config (plus optional model.vqmodel.*)"
        )
    for key, target in expected.items():
        if entries[key].shape != tuple(target.shape):
            raise CheckpointError(
                f"{folder}: tensor {key} has shape {list(entries[key].shape)} in the checkpoint but the config "
                f"implies {list(target.shape)}"
            )

    dtype = entries["model.embed_tokens.weight"].dtype if dtype is None else dtype
    storages: dict[Path, torch.UntypedStorage] = {}
    state = {key: _mapped_tensor(entries[key], storages).to(device=device, dtype=dtype) for key in expected}
    model.load_state_dict(state, assign=True)
    return model.eval()


def save_model(model: Transformer, path: str | os.PathLike, max_shard_bytes: int = 5 * 1024**3) -> None:
    """Write config.json and safetensors shards (+ index) in the HF Chameleon folder format.

    One shard is written as model.safetensors; more as model-0000i-of-0000n.safetensors with
    model.safetensors.index.json. Each file is replaced atomically; old weight files the new save
    does not use are removed. Other files in the folder (tokenizers, ...) are left alone.
    """
    if max_shard_bytes <= 0:
        raise CheckpointError(f"max_shard_bytes={max_shard_bytes} is invalid; a positive byte count is accepted")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for key, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(key)
        shard_bytes += size

    if len(shards) == 1:
        names = [SINGLE_FILE_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, keys in zip(names, shards):
        tensors = {key: state[key].detach().to("cpu").contiguous() for key in keys}
        write_atomically(folder / name, lambda temp, t=tensors: save_file(t, temp, metadata={"format": "pt"}))

    index_path = folder / INDEX_NAME
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {key: name for name, keys in zip(names, shards) for key in keys},
        }
        write_text_atomically(index_path, json.dumps(index, indent=2))
    stale = [p for p in folder.iterdir() if (_SHARD_NAME.fullmatch(p.name) or p.name == SINGLE_FILE_NAME)]
    for file in stale:
        if file.name not in names:
            file.unlink()
    if len(shards) == 1 and index_path.exists():
        index_path.unlink()

    hf = model.config.to_hf_config()
    dtype_name = str(model.lm_head.weight.dtype).removeprefix("torch.")
    hf.update({"dtype": dtype_name, "torch_dtype": dtype_name})
    write_text_atomically(folder / CONFIG_NAME, json.dumps(hf, indent=2, sort_keys=True))
