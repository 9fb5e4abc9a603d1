"""Random official-format VQGAN checkpoints and an independent taming-style reference forward.

`official_state_dict(family, width_divisor)` builds tensors with exactly the names listed in
tests/data (copies of the tensor listings in shared/formats: Chameleon VQGAN, SBER-MoVQGAN 270M); every width >= 64 is divided by
`width_divisor` to keep tests fast (the codebook length and 3/4-channel dims are kept).
`reference_encode` / `reference_decode` run the taming graph straight from those official names
with torch.nn.functional, so a correct name conversion must reproduce them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

FORMATS = Path(__file__).resolve().parent / "data"
LISTINGS = {"chameleon": FORMATS / "chameleon_vqgan_state_dict.txt", "movqgan": FORMATS / "movqgan_270m_state_dict.txt"}
_LINE = re.compile(r"^(\S+) \(([\d, ]*)\)$")

CHAMELEON_YAML = """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: {embed_dim}
    n_embed: {n_embed}
    ddconfig:
      double_z: false
      z_channels: {z_channels}
      resolution: 512
      in_channels: 3
      out_ch: 3
      ch: {ch}
      ch_mult: [1, 1, 2, 2, 4]
      num_res_blocks: 2
      attn_resolutions: []
      dropout: 0.0
"""


def official_shapes(family: str, width_divisor: int = 1) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an official checkpoint, widths divided by `width_divisor`."""
    shapes = {}
    for line in LISTINGS[family].read_text().splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue  # e.g. the "Working with z of shape ..." line printed when the listing was made
        name, dims = match.group(1), tuple(int(d) for d in match.group(2).split(",") if d.strip())
        shapes[name] = tuple(
            d if (name == "quantize.embedding.weight" and axis == 0) or d < 64 else d // width_divisor
            for axis, d in enumerate(dims)
        )
    return shapes


def official_state_dict(family: str, width_divisor: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official names; scaled so activations stay O(1) through the network."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in official_shapes(family, width_divisor).items():
        if name == "quantize.embedding.weight":
            tensor = torch.randn(shape, generator=generator)
        elif len(shape) > 1:
            fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
            tensor = torch.randn(shape, generator=generator) / fan_in**0.5
        elif "norm" in name and name.endswith(".weight"):
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            tensor = 0.1 * torch.randn(shape, generator=generator)
        tensors[name] = tensor
    return tensors


def chameleon_yaml(state_dict: dict[str, torch.Tensor]) -> str:
    """A vqgan.yaml in the official layout describing `state_dict` (full or reduced width)."""
    return CHAMELEON_YAML.format(
        embed_dim=state_dict["quant_conv.weight"].shape[0],
        n_embed=state_dict["quantize.embedding.weight"].shape[0],
        z_channels=state_dict["encoder.conv_out.weight"].shape[0],
        ch=state_dict["encoder.conv_in.weight"].shape[0],
    )


# ---- reference taming forward on official names ---------------------------------------------


def _conv(sd, prefix, x, stride=1):
    weight = sd[f"{prefix}.weight"]
    return F.conv2d(x, weight, sd[f"{prefix}.bias"], stride=stride, padding=0 if stride == 2 else weight.shape[-1] // 2)


def _norm(sd, prefix, x, zq):
    if zq is None:
        return F.group_norm(x, 32, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps=1e-6)
    normed = F.group_norm(x, 32, sd[f"{prefix}.norm_layer.weight"], sd[f"{prefix}.norm_layer.bias"], eps=1e-6)
    zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
    return normed * _conv(sd, f"{prefix}.conv_y", zq) + _conv(sd, f"{prefix}.conv_b", zq)


def _resnet(sd, prefix, x, zq):
    h = _conv(sd, f"{prefix}.conv1", F.silu(_norm(sd, f"{prefix}.norm1", x, zq)))
    h = _conv(sd, f"{prefix}.conv2", F.silu(_norm(sd, f"{prefix}.norm2", h, zq)))
    if f"{prefix}.nin_shortcut.weight" in sd:
        x = _conv(sd, f"{prefix}.nin_shortcut", x)
    return x + h


def _attention(sd, prefix, x, zq):
    batch, channels, height, width = x.shape
    h = _norm(sd, f"{prefix}.norm", x, zq)
    q, k, v = (_conv(sd, f"{prefix}.{p}", h).reshape(batch, channels, -1) for p in ("q", "k", "v"))
    weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * channels**-0.5, dim=2)
    h = torch.bmm(v, weights.transpose(1, 2)).reshape(batch, channels, height, width)
    return x + _conv(sd, f"{prefix}.proj_out", h)


def _count(sd, pattern):
    return len({m.group(1) for name in sd if (m := re.match(pattern, name))})


def _mid(sd, side, h, zq):
    h = _resnet(sd, f"{side}.mid.block_1", h, zq)
    if f"{side}.mid.attn_1.q.weight" in sd:
        h = _attention(sd, f"{side}.mid.attn_1", h, zq)
    return _resnet(sd, f"{side}.mid.block_2", h, zq)


def reference_encode(sd: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """taming Encoder + quant_conv: pre-quantization latents."""
    levels = _count(sd, r"encoder\.down\.(\d+)\.")
    h = _conv(sd, "encoder.conv_in", pixels)
    for level in range(levels):
        for block in range(_count(sd, rf"encoder\.down\.{level}\.block\.(\d+)\.")):
            h = _resnet(sd, f"encoder.down.{level}.block.{block}", h, None)
            if f"encoder.down.{level}.attn.{block}.q.weight" in sd:
                h = _attention(sd, f"encoder.down.{level}.attn.{block}", h, None)
        if level != levels - 1:
            h = _conv(sd, f"encoder.down.{level}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2)
    h = _mid(sd, "encoder", h, None)
    h = _conv(sd, "encoder.conv_out", F.silu(_norm(sd, "encoder.norm_out", h, None)))
    return _conv(sd, "quant_conv", h)


def reference_decode(sd: dict[str, torch.Tensor], quantized: torch.Tensor) -> torch.Tensor:
    """post_quant_conv + taming Decoder (MoVQ spatial norms when the names carry them)."""
    zq = quantized if "decoder.norm_out.norm_layer.weight" in sd else None
    levels = _count(sd, r"decoder\.up\.(\d+)\.")
    h = _conv(sd, "decoder.conv_in", _conv(sd, "post_quant_conv", quantized))
    h = _mid(sd, "decoder", h, zq)
    for level in reversed(range(levels)):
        for block in range(_count(sd, rf"decoder\.up\.{level}\.block\.(\d+)\.")):
            h = _resnet(sd, f"decoder.up.{level}.block.{block}", h, zq)
            if f"decoder.up.{level}.attn.{block}.q.weight" in sd:
                h = _attention(sd, f"decoder.up.{level}.attn.{block}", h, zq)
        if level != 0:
            h = _conv(sd, f"decoder.up.{level}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _conv(sd, "decoder.conv_out", F.silu(_norm(sd, "decoder.norm_out", h, zq)))
