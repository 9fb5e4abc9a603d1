"""Shared builders for the model tests: tiny configs and random transformers Chameleon folders."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lumina_mgpt.model import ModelConfig, Transformer

# A few image-token names so that transformers' ChameleonImageVocabularyMapping has something to map.
VOCABULARY_MAP = {"<image>": 3, **{f"IMGIMG{chr(ord('A') + i)}Z": 10 + i for i in range(4)}}
TINY_VQ_CONFIG = dict(
    embed_dim=4, num_embeddings=16, latent_channels=4, base_channels=32, channel_multiplier=[1],
    num_res_blocks=1, resolution=16,
)


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    """A random tiny Transformer in eval mode, with non-trivial norm weights and biases."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.preset("tiny", **overrides))
    randomize_norms(model)
    return model.eval()


@torch.no_grad()
def randomize_norms(model: torch.nn.Module) -> None:
    """Move every norm weight away from 1 and every norm bias away from 0, so that they matter."""
    for name, parameter in model.named_parameters():
        if "norm" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            parameter.copy_(base + 0.3 * torch.randn_like(parameter))


def hf_chameleon(folder: Path, *, swin_norm: bool, num_kv_heads: int, seed: int = 0):
    """A random transformers ChameleonForConditionalGeneration (fp32, eval), saved to `folder`."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    torch.manual_seed(seed)
    config = ChameleonConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=num_kv_heads, swin_norm=swin_norm, vocabulary_map=VOCABULARY_MAP,
        vq_config=TINY_VQ_CONFIG, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        max_position_embeddings=256,
    )
    model = ChameleonForConditionalGeneration(config).eval()
    randomize_norms(model)
    model.save_pretrained(folder)
    return model


def hf_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """transformers logits before its image-token masking."""
    with torch.no_grad():
        return model.lm_head(model.model(input_ids=input_ids).last_hidden_state).float()


def rewrite_qk_norm_rows(folder: Path, rows: int) -> None:
    """Turn a transformers folder into the official layout: q/k norms with `rows` rows (one per rank).

    Keeps every `heads // rows`-th row, which is what repeat-interleaving the kept rows reproduces
    once the model's own norms are made rank-shared (see `share_norm_rows`).
    """
    file = folder / "model.safetensors"
    tensors = load_file(file)
    for key, tensor in list(tensors.items()):
        if "_norm." in key and "self_attn" in key:
            tensors[key] = tensor[:: tensor.shape[0] // rows].clone()
    save_file(tensors, file, metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["model_parallel_size"] = rows
    (folder / "config.json").write_text(json.dumps(config))


@torch.no_grad()
def share_norm_rows(model: torch.nn.Module, rows: int) -> None:
    """Make each run of heads // rows q/k-norm rows equal to its first row (the rank-shared layout)."""
    for name, parameter in model.named_parameters():
        if "_norm." in name and "self_attn" in name:
            per_row = parameter.shape[0] // rows
            parameter.copy_(parameter[::per_row].repeat_interleave(per_row, dim=0))
