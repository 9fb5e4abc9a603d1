"""Official VQGAN checkpoints (taming-transformers / Chameleon, SBER-MoVQGAN) -> diffusers `VQModel`.

Both official families use taming's tensor names: `encoder.down.{i}.block.{j}`,
`decoder.up.{i}.block.{j}` (up levels indexed from the HIGHEST resolution, while diffusers'
`up_blocks` run from the lowest), `mid.block_1/attn_1/block_2`, `nin_shortcut`, and attention
q/k/v/proj_out as 1x1 convolutions. MoVQGAN's decoder norms carry `norm_layer`/`conv_y`/`conv_b`,
the same sub-names as diffusers' `SpatialNorm`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from lumina_mgpt.errors import ImageTokenizerError
from lumina_mgpt.vision.config import VQConfig

# Training-only weights some taming checkpoints carry (LPIPS net, discriminator); not part of the tokenizer.
TRAINING_ONLY_PREFIXES = ("loss.",)

_ATTENTION_PROJECTIONS = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_SPATIAL_NORM_PARTS = ("norm_layer", "conv_y", "conv_b")
_LEVEL_NAME = re.compile(r"^(encoder\.down|decoder\.up)\.(\d+)\.(block|attn)\.(\d+)\.(.+)$")
_SAMPLER_NAME = re.compile(r"^(encoder\.down\.(\d+)\.downsample|decoder\.up\.(\d+)\.upsample)\.conv\.(weight|bias)$")
_MID_NAME = re.compile(r"^(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(.+)$")
_TOP_LEVEL = {
    "encoder.conv_in.weight", "encoder.conv_in.bias", "encoder.conv_out.weight", "encoder.conv_out.bias",
    "decoder.conv_in.weight", "decoder.conv_in.bias", "decoder.conv_out.weight", "decoder.conv_out.bias",
    "quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight", "post_quant_conv.bias",
    "quantize.embedding.weight",
}  # fmt: skip


def detect_family(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'movqgan' (spatial-norm decoder) or 'chameleon' (plain taming VQGAN) for official tensor names."""
    required = ("encoder.conv_in.weight", "decoder.conv_out.weight", "quantize.embedding.weight", "quant_conv.weight")
    absent = [name for name in required if name not in state_dict]
    if absent:
        sample = sorted(state_dict)[:5]
        raise ImageTokenizerError(
            f"not a taming-style VQGAN state dict: {absent} are missing (first names found: {sample}); accepted: "
            "Chameleon vqgan.ckpt, SBER-MoVQGAN .ckpt, or a folder written by ImageTokenizer.save_pretrained"
        )
    spatial = any(name.startswith("decoder.") and ".norm_layer." in name for name in state_dict)
    return "movqgan" if spatial else "chameleon"


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> VQConfig:
    """Read the architecture off the official tensor names and shapes."""
    family = detect_family(state_dict)
    matches = [m for name in state_dict if (m := _LEVEL_NAME.match(name))]
    levels = sorted({int(m.group(2)) for m in matches if m.group(1) == "encoder.down"})
    if not levels or levels != list(range(len(levels))):
        raise ImageTokenizerError(f"encoder levels {levels} are not 0..n-1; cannot read the architecture")
    widths = tuple(_shape(state_dict, f"encoder.down.{i}.block.0.conv2.weight")[0] for i in levels)
    if _shape(state_dict, "encoder.conv_in.weight")[0] != widths[0]:
        raise ImageTokenizerError(
            "encoder.conv_in width differs from the first level's width (ch_mult[0] != 1); "
            "accepted: taming VQGANs whose ch_mult starts with 1"
        )
    blocks = {int(m.group(4)) for m in matches if m.group(0).startswith("encoder.down.0.block.")}
    encoder_attention = tuple(i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state_dict)
    decoder_attention = tuple(i for i in levels if f"decoder.up.{i}.attn.0.q.weight" in state_dict)
    if encoder_attention != decoder_attention:
        raise ImageTokenizerError(
            f"encoder attention levels {encoder_attention} differ from decoder levels {decoder_attention}; "
            "accepted: taming VQGANs with the same attn_resolutions on both sides"
        )
    return VQConfig(
        family=family,
        block_out_channels=widths,
        layers_per_block=len(blocks),
        latent_channels=_shape(state_dict, "encoder.conv_out.weight")[0],
        embed_dim=_shape(state_dict, "quant_conv.weight")[0],
        codebook_size=_shape(state_dict, "quantize.embedding.weight")[0],
        attention_levels=encoder_attention,
        mid_attention="encoder.mid.attn_1.q.weight" in state_dict,
        spatial_norm=family == "movqgan",
    )


def check_yaml_config(yaml_text: str, config: VQConfig, yaml_name: str) -> None:
    """Compare a taming `vqgan.yaml` (model.params.ddconfig) with the architecture read off the tensors."""
    import yaml  # PyYAML: a dependency of huggingface_hub, which diffusers requires

    try:
        document = yaml.safe_load(yaml_text)
        params = document["model"]["params"]
        ddconfig = params["ddconfig"]
        stated = {
            "block_out_channels": tuple(int(ddconfig["ch"]) * int(m) for m in ddconfig["ch_mult"]),
            "layers_per_block": int(ddconfig["num_res_blocks"]),
            "latent_channels": int(ddconfig["z_channels"]),
            "embed_dim": int(params["embed_dim"]),
            "codebook_size": int(params["n_embed"]),
            "attention_levels": tuple(
                i for i in range(len(ddconfig["ch_mult"]))
                if int(ddconfig["resolution"]) // 2**i in {int(r) for r in ddconfig.get("attn_resolutions") or ()}
            ),
        }  # fmt: skip
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise ImageTokenizerError(
            f"{yaml_name} is not a taming VQGAN config ({type(error).__name__}: {error}); accepted: a yaml with "
            "model.params.{embed_dim, n_embed, ddconfig.{ch, ch_mult, num_res_blocks, z_channels, resolution, "
            "attn_resolutions}}"
        ) from error
    disagreements = [
        f"{name}: yaml {value} vs tensors {getattr(config, name)}"
        for name, value in stated.items()
        if value != getattr(config, name)
    ]
    if disagreements:
        raise ImageTokenizerError(f"{yaml_name} does not describe this checkpoint: " + "; ".join(disagreements))


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], config: VQConfig) -> dict[str, torch.Tensor]:
    """Rename (and reshape) official tensors to diffusers `VQModel` names.

    Raises ImageTokenizerError listing every name that has no place in the model."""
    levels = len(config.block_out_channels)
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name, tensor in state_dict.items():
        if name.startswith(TRAINING_ONLY_PREFIXES):
            continue
        target = _convert_name(name, levels)
        if target is None:
            unknown.append(name)
            continue
        is_attention_projection = re.search(r"\.to_(q|k|v|out\.0)\.weight$", target) is not None
        # taming's 1x1-conv projections (C, C, 1, 1) are diffusers' Linear layers (C, C)
        flatten = is_attention_projection and tensor.dim() == 4
        converted[target] = tensor.reshape(tensor.shape[:2]) if flatten else tensor
    if unknown:
        raise ImageTokenizerError(f"{len(unknown)} tensors have no place in a VQGAN: {_listing(unknown)}")
    return converted


def check_against_model(converted: Mapping[str, torch.Tensor], expected: Mapping[str, Any], source: str) -> None:
    """Refuse unless `converted` fills every parameter of the model exactly once with the right shape."""
    missing = sorted(set(expected) - set(converted))
    extra = sorted(set(converted) - set(expected))
    wrong_shape = [
        f"{name} {tuple(converted[name].shape)} (expected {tuple(expected[name].shape)})"
        for name in sorted(set(converted) & set(expected))
        if tuple(converted[name].shape) != tuple(expected[name].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if extra:
        problems.append(f"{len(extra)} left over: {_listing(extra)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} with a wrong shape: {_listing(wrong_shape)}")
    if problems:
        raise ImageTokenizerError(f"{source} does not match the tokenizer architecture; " + "; ".join(problems))


def _convert_name(name: str, levels: int) -> str | None:
    if name in _TOP_LEVEL:
        return name
    for side in ("encoder", "decoder"):
        if name.startswith(f"{side}.norm_out."):
            return f"{side}.conv_norm_out." + name[len(f"{side}.norm_out.") :]
    if match := _LEVEL_NAME.match(name):
        tower, level, kind, index, rest = match.groups()
        if tower == "encoder.down":
            prefix = f"encoder.down_blocks.{level}"
        else:
            prefix = f"decoder.up_blocks.{levels - 1 - int(level)}"
        if kind == "block":
            return f"{prefix}.resnets.{index}.{_resnet_part(rest)}"
        part = _attention_part(rest)
        return None if part is None else f"{prefix}.attentions.{index}.{part}"
    if match := _SAMPLER_NAME.match(name):
        _, down_level, up_level, kind = match.groups()
        if down_level is not None:
            return f"encoder.down_blocks.{down_level}.downsamplers.0.conv.{kind}"
        return f"decoder.up_blocks.{levels - 1 - int(up_level)}.upsamplers.0.conv.{kind}"
    if match := _MID_NAME.match(name):
        side, part, rest = match.groups()
        if part == "attn_1":
            attention = _attention_part(rest)
            return None if attention is None else f"{side}.mid_block.attentions.0.{attention}"
        return f"{side}.mid_block.resnets.{0 if part == 'block_1' else 1}.{_resnet_part(rest)}"
    return None


def _resnet_part(rest: str) -> str:
    return "conv_shortcut." + rest[len("nin_shortcut.") :] if rest.startswith("nin_shortcut.") else rest


def _attention_part(rest: str) -> str | None:
    head, _, tail = rest.partition(".")
    if head in _ATTENTION_PROJECTIONS and tail in ("weight", "bias"):
        return f"{_ATTENTION_PROJECTIONS[head]}.{tail}"
    if head == "norm":
        spatial = tail.split(".", 1)[0] in _SPATIAL_NORM_PARTS
        return f"spatial_norm.{tail}" if spatial else f"group_norm.{tail}"
    return None


def _shape(state_dict: Mapping[str, torch.Tensor], name: str) -> tuple[int, ...]:
    if name not in state_dict:
        raise ImageTokenizerError(f"tensor {name} is missing; cannot read the VQGAN architecture")
    return tuple(state_dict[name].shape)


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
