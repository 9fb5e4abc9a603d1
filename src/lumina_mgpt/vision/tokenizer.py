"""`ImageTokenizer`: pixels <-> VQ code grids, on diffusers' `VQModel`, for every family."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from lumina_mgpt.errors import ImageTokenizerError
from lumina_mgpt.quiet_imports import import_quietly
from lumina_mgpt.vision import checkpoints, convert
from lumina_mgpt.vision.config import VQConfig
from lumina_mgpt.vision.pixels import images_to_tensor, tensor_to_images
from lumina_mgpt.vision.quantize import lookup, nearest_codes

VQModel = import_quietly("diffusers", "VQModel")

# Inputs outside [-1, 1] by more than this are refused: they are [0, 1] or [0, 255] pixels by mistake.
_RANGE_TOLERANCE = 1e-3
# Larger images are refused rather than exhausting memory: resize them to a resolution bucket first.
MAX_PIXELS = 4096 * 4096


class ImageTokenizer(torch.nn.Module):
    """A VQ image tokenizer: `encode` images to (B, h, w) codes, `decode` codes to images.

    `family` is "chameleon" (v1, 16x), "movqgan" (v2, 8x) or "vq" (this project's trainable one)."""

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.model = VQModel(**config.vqmodel_kwargs())

    @property
    def codebook_size(self) -> int:
        """Number of codes; codes are 0 .. codebook_size - 1."""
        return self.config.codebook_size

    @property
    def downsample(self) -> int:
        """Pixels per code along each side."""
        return self.config.downsample

    @property
    def family(self) -> str:
        """'chameleon', 'movqgan' or 'vq'."""
        return self.config.family

    @property
    def codebook(self) -> torch.Tensor:
        """The (codebook_size, embed_dim) code vectors."""
        return self.model.quantize.embedding.weight

    # -- differentiable pieces (training uses these) -------------------------------------------

    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pre-quantization latents (B, embed_dim, H/d, W/d) of pixels in [-1, 1]."""
        if not self.config.patch_local:
            return self.model.quant_conv(self.model.encoder(pixels))
        # Every d x d patch alone, centred in a blank (mid-gray) frame d/2 wide: the encoder maps the
        # 2d x 2d frame to 2 x 2 latents, each a quarter on the patch; their mean is its latent.
        d = self.downsample
        batch, channels, height, width = pixels.shape
        rows, cols = height // d, width // d
        patches = pixels.reshape(batch, channels, rows, d, cols, d).permute(0, 2, 4, 1, 3, 5)
        flat = patches.reshape(-1, channels * d * d)
        inverse = None
        if not flat.requires_grad:  # (unique has no derivative; reconstructions rarely repeat anyway)
            # Equal patches have equal latents, so each distinct patch is encoded once: flat synthetic
            # images repeat a few hundred patches, which makes encoding many times faster.
            flat, inverse = torch.unique(flat, dim=0, return_inverse=True)
        framed = torch.nn.functional.pad(flat.reshape(-1, channels, d, d), (d // 2,) * 4)
        latents = self.model.quant_conv(self.model.encoder(framed)).mean(dim=(2, 3))
        if inverse is not None:
            latents = latents[inverse]
        return latents.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2)

    def decode_latents(self, quantized: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W), unclamped, from quantized latents (B, embed_dim, h, w)."""
        if not self.config.patch_local_decoder:
            return self.model.decode(quantized, force_not_quantize=True).sample
        d = self.downsample
        batch, channels, rows, cols = quantized.shape
        cells = quantized.permute(0, 2, 3, 1).reshape(-1, channels)
        inverse = None
        if not cells.requires_grad:  # equal codes decode equally: each distinct one is decoded once
            cells, inverse = torch.unique(cells, dim=0, return_inverse=True)
        framed = cells[:, :, None, None].expand(-1, -1, 2, 2)
        pixels = self.model.decode(framed, force_not_quantize=True).sample
        patches = pixels[:, :, d // 2 : d // 2 + d, d // 2 : d // 2 + d]
        if inverse is not None:
            patches = patches[inverse]
        patches = patches.reshape(batch, rows, cols, -1, d, d)
        return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, -1, rows * d, cols * d)

    # -- the public interface -----------------------------------------------------------------

    @torch.inference_mode()
    def encode(self, images: torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
        """Codes (B, h, w) of float images (B, 3, H, W) in [-1, 1], or of a list of same-size PIL images."""
        pixels = images if isinstance(images, torch.Tensor) else images_to_tensor(images)
        self._check_pixels(pixels)
        weight = self.codebook
        latents = self.encode_latents(pixels.to(device=weight.device, dtype=weight.dtype))
        return nearest_codes(latents, weight)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Float32 pixels (B, 3, h*d, w*d) in [-1, 1] of codes (B, h, w)."""
        self._check_codes(codes)
        weight = self.codebook
        pixels = self.decode_latents(lookup(codes.to(weight.device), weight))
        return pixels.float().clamp(-1.0, 1.0)

    def decode_to_pil(self, codes: torch.Tensor) -> list[Image.Image]:
        """`decode`, then 8-bit RGB PIL images: truncated for "chameleon", rounded otherwise, as each
        family's official code does (see `VQConfig.pixel_rounding`)."""
        return tensor_to_images(self.decode(codes), self.config.pixel_rounding)

    # -- files ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, family: str | None = None) -> "ImageTokenizer":
        """Load a `save_pretrained` folder, a Chameleon `vqgan.ckpt` (reading `vqgan.yaml` beside it when
        present) or a MoVQGAN `.ckpt`; a folder holding one of those files also works.

        `family`, when given, is what the caller expects; a checkpoint of another family is refused."""
        path = Path(path)
        if path.is_dir() and checkpoints.is_tokenizer_folder(path):
            config, state_dict = checkpoints.read_folder(path)
            tokenizer = cls._assemble(config, state_dict, str(path))
        else:
            tokenizer = cls._from_official(cls._official_file(path))
        if family is not None and tokenizer.family != family:
            raise ImageTokenizerError(
                f"{path} holds a {tokenizer.family!r} image tokenizer, not the {family!r} one that was asked for"
            )
        return tokenizer

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write config.json + model.safetensors (diffusers names) atomically into `folder`."""
        checkpoints.write_folder(Path(folder), self.config, self.model.state_dict())

    # -- internals --------------------------------------------------------------------------------

    @classmethod
    def _official_file(cls, path: Path) -> Path:
        if path.is_file():
            return path
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in checkpoints.OFFICIAL_SUFFIXES and p.is_file())
            if len(found) == 1:
                return found[0]
            raise ImageTokenizerError(
                f"{path} holds {len(found)} checkpoint files ({[p.name for p in found]}); accepted: a folder with "
                f"{checkpoints.CONFIG_FILE} + {checkpoints.WEIGHTS_FILE}, or exactly one official checkpoint"
            )
        raise ImageTokenizerError(f"image tokenizer {path} does not exist")

    @classmethod
    def _from_official(cls, file: Path) -> "ImageTokenizer":
        official = checkpoints.load_official_state_dict(file)
        config = convert.infer_config(official)
        yaml_file = checkpoints.find_yaml(file)
        if yaml_file is not None:
            convert.check_yaml_config(yaml_file.read_text(), config, str(yaml_file))
        return cls._assemble(config, convert.convert_state_dict(official, config), str(file))

    @classmethod
    def _assemble(cls, config: VQConfig, state_dict: dict[str, torch.Tensor], source: str) -> "ImageTokenizer":
        # Build on the meta device and adopt the loaded tensors: no time spent on random init.
        with torch.device("meta"):
            tokenizer = cls(config)
        convert.check_against_model(state_dict, tokenizer.model.state_dict(), source)
        tokenizer.model.load_state_dict(state_dict, strict=True, assign=True)
        if not all(torch.isfinite(t).all() for t in state_dict.values()):
            raise ImageTokenizerError(f"{source} contains NaN or infinite weights")
        return tokenizer.eval()

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if pixels.dim() != 4 or pixels.shape[1] != 3 or not pixels.is_floating_point():
            raise ImageTokenizerError(
                f"expected float pixels of shape (B, 3, H, W), got {pixels.dtype} {tuple(pixels.shape)}"
            )
        height, width = pixels.shape[-2:]
        if height == 0 or width == 0 or height % self.downsample or width % self.downsample:
            raise ImageTokenizerError(
                f"image size {width}x{height} is not a positive multiple of {self.downsample} on both sides "
                f"(the {self.family} tokenizer downsamples {self.downsample}x)"
            )
        if height * width > MAX_PIXELS:
            raise ImageTokenizerError(
                f"image size {width}x{height} exceeds {MAX_PIXELS} pixels; resize it to a resolution bucket first"
            )
        low, high = pixels.min().item(), pixels.max().item()
        if low < -1 - _RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
            raise ImageTokenizerError(f"pixels span [{low:.3g}, {high:.3g}]; accepted: values in [-1, 1]")

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 3 or codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ImageTokenizerError(
                f"expected integer codes of shape (B, h, w), got {codes.dtype} {tuple(codes.shape)}"
            )
        if codes.numel() == 0:
            raise ImageTokenizerError(f"expected a non-empty code grid, got shape {tuple(codes.shape)}")
        low, high = codes.min().item(), codes.max().item()
        if low < 0 or high >= self.codebook_size:
            raise ImageTokenizerError(f"codes span [{low}, {high}]; accepted: 0 .. {self.codebook_size - 1}")
