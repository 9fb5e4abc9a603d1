"""The shape of one VQ image tokenizer, and how it maps onto diffusers' `VQModel`.

A taming-style VQGAN is fully described by its per-level channel widths, residual blocks per
level, which levels have self-attention, the latent/codebook sizes and the decoder norm
(plain GroupNorm, or MoVQ's spatial norm conditioned on the quantized latents).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lumina_mgpt.errors import ImageTokenizerError

FAMILIES = ("chameleon", "movqgan", "vq")
# How each family's decoded pixels become 8-bit values (lumina_mgpt.vision.pixels.tensor_to_images):
# as the official code of each release does it, Chameleon (v1) truncating and MoVQGAN (v2) rounding.
# This project's own tokenizer rounds: the nearest value is unbiased (truncation darkens by half a
# level on average) and turns PIL -> tensor -> PIL back into the same image (truncation loses a level
# on a quarter of the 256 values).
PIXEL_ROUNDING = {"chameleon": "truncate", "movqgan": "nearest", "vq": "nearest"}
GROUPNORM_GROUPS = 32


@dataclass(frozen=True)
class VQConfig:
    """Architecture of a VQ image tokenizer (all fields are needed to rebuild its weights)."""

    family: str
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int
    embed_dim: int
    codebook_size: int
    attention_levels: tuple[int, ...] = ()
    mid_attention: bool = True
    spatial_norm: bool = False
    # Encode each downsample x downsample patch on its own, centred in a blank frame: a patch's code
    # then depends only on its own pixels, never on the rest of the image (GroupNorm statistics and
    # the encoder's receptive field otherwise spread every object's influence over all codes).
    # For synthetic, flat-colored domains, where this makes codes a deterministic function of content.
    patch_local: bool = False
    # Decode each code on its own, the mirror of `patch_local`: the code fills a 2 x 2 latent frame and
    # the middle d x d pixels of its decoding are the patch. A patch's pixels then depend only on its
    # code, so any rows of a code grid (say a dual panel's lower half) decode exactly as they would
    # inside the whole grid, and one wrong code spoils one patch, not its neighbours.
    patch_local_decoder: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        object.__setattr__(self, "attention_levels", tuple(sorted(int(i) for i in self.attention_levels)))
        if self.family not in FAMILIES:
            raise ImageTokenizerError(
                f"unknown image tokenizer family {self.family!r}; accepted: {', '.join(FAMILIES)}"
            )
        if not self.block_out_channels or any(c % GROUPNORM_GROUPS for c in self.block_out_channels):
            raise ImageTokenizerError(
                f"block_out_channels {self.block_out_channels} are not usable: at least one level is needed and "
                f"every width must be a multiple of {GROUPNORM_GROUPS} (GroupNorm groups)"
            )
        levels = len(self.block_out_channels)
        if any(not 0 <= i < levels for i in self.attention_levels):
            raise ImageTokenizerError(
                f"attention_levels {self.attention_levels} must lie in 0..{levels - 1} (one per channel level)"
            )
        for name in ("layers_per_block", "latent_channels", "embed_dim", "codebook_size"):
            if getattr(self, name) < 1:
                raise ImageTokenizerError(f"{name} must be a positive integer, got {getattr(self, name)}")

    @property
    def pixel_rounding(self) -> str:
        """"truncate" or "nearest": how this family's decoded pixels become 8-bit values (PIXEL_ROUNDING)."""
        return PIXEL_ROUNDING[self.family]

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along each side (one halving between consecutive levels)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def vqmodel_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that build the matching diffusers `VQModel`."""
        levels = range(len(self.block_out_channels))
        down = tuple("AttnDownEncoderBlock2D" if i in self.attention_levels else "DownEncoderBlock2D" for i in levels)
        # diffusers' up_blocks run from the lowest resolution (the deepest level) upwards.
        up = tuple(
            "AttnUpDecoderBlock2D" if i in self.attention_levels else "UpDecoderBlock2D" for i in reversed(levels)
        )
        return dict(
            in_channels=3,
            out_channels=3,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels,
            num_vq_embeddings=self.codebook_size,
            vq_embed_dim=self.embed_dim,
            norm_num_groups=GROUPNORM_GROUPS,
            norm_type="spatial" if self.spatial_norm else "group",
            mid_block_add_attention=self.mid_attention,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        data = dataclasses.asdict(self)
        data["block_out_channels"] = list(self.block_out_channels)
        data["attention_levels"] = list(self.attention_levels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VQConfig":
        """Inverse of `to_dict`; unknown or missing keys are errors."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ImageTokenizerError(f"unknown image tokenizer config keys {unknown}; accepted: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as error:
            raise ImageTokenizerError(f"incomplete image tokenizer config: {error}; needed: {sorted(known)}") from error


CHAMELEON = VQConfig(
    family="chameleon",
    block_out_channels=(128, 128, 256, 256, 512),
    layers_per_block=2,
    latent_channels=256,
    embed_dim=256,
    codebook_size=8192,
)

MOVQGAN_270M = VQConfig(
    family="movqgan",
    block_out_channels=(256, 512, 512, 1024),
    layers_per_block=2,
    latent_channels=4,
    embed_dim=4,
    codebook_size=16384,
    attention_levels=(3,),
    spatial_norm=True,
)

# The trainable tokenizer of the embedded model: 64x64 px -> 8x8 codes. Sized to train on two
# CPU cores in minutes: narrow levels, one residual block each, plain GroupNorm (MoVQ's spatial
# norm doubled the step time on CPU) and no mid-block attention.
SMALL = VQConfig(
    family="vq",
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=1,
    latent_channels=8,
    embed_dim=8,
    codebook_size=1024,
    mid_attention=False,
)

# `small` with patch-local encoding, the embedded model's tokenizer: in flat synthetic worlds such
# as the shapes world equal patches always get equal codes, so a language model never has to guess
# encoder noise. Train it with an autoencoder warmup (TrainSettings.autoencoder_warmup).
SHAPES = dataclasses.replace(SMALL, patch_local=True)

# `shapes` local on both sides, with a code for each of the ~1,600 distinct 8x8 patches of the
# multi-task shapes world (edits, maps, all canvases): the multi-task model's tokenizer, trained on
# those patches by shapes.vq_images.train_task_image_tokenizer.
SHAPES_TASKS = dataclasses.replace(SHAPES, patch_local_decoder=True, codebook_size=2048)

PRESETS: dict[str, VQConfig] = {
    "chameleon": CHAMELEON, "movqgan-270m": MOVQGAN_270M, "small": SMALL, "shapes": SHAPES,
    "shapes-tasks": SHAPES_TASKS,
}


def preset(name: str) -> VQConfig:
    """A named architecture (`chameleon`, `movqgan-270m`, `small`, `shapes`, `shapes-tasks`)."""
    if name not in PRESETS:
        raise ImageTokenizerError(f"unknown image tokenizer preset {name!r}; accepted: {', '.join(PRESETS)}")
    return PRESETS[name]
