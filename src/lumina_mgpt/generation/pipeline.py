"""The high-level API: a model folder in, PIL images (or text) out.

    from lumina_mgpt import Pipeline
    pipe = Pipeline.from_pretrained()              # the embedded shapes model
    images = pipe.generate(["a red circle above a blue square"], width=64, height=64, seed=0)

A folder is one of
- a project folder (written by `Pipeline.save_pretrained` / `lumina train`): `lumina.json`
  (layout, sampling defaults), the model (`config.json` + safetensors), `tokenizer.json` and
  the image tokenizer in `image_tokenizer/`;
- an official Lumina-mGPT (v1) or Lumina-mGPT 2.0 folder: the family is read from config.json,
  the text tokenizer from the folder, and the image tokenizer (`vqgan.ckpt` or
  `movqgan_270M.ckpt`) from `image_tokenizer=` or found in or above the folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from lumina_mgpt.atomic import write_text_atomically
from lumina_mgpt.errors import GenerationError
from lumina_mgpt.formats import (
    IMAGE_PLACEHOLDER,
    ImageSegment,
    VocabLayout,
    check_image_size,
    encode_generation_prompt,
    get_layout,
    parse,
    text_to_image_prompt,
)
from lumina_mgpt.generation.engine import Engine, GenerationSettings, RowCallback
from lumina_mgpt.generation.sampling import SamplingSettings

PROJECT_FILE = "lumina.json"
EMBEDDED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "shapes-model"

# Official sampling defaults (FORMATS.md, "Sampling defaults in the official code").
FAMILY_DEFAULTS = {
    "lumina-mgpt": dict(image_top_k=2000, text_top_k=10, temperature=1.0, cfg=4.0, size=(768, 768)),
    "lumina-mgpt-2": dict(image_top_k=4096, text_top_k=10, temperature=1.0, cfg=4.0, size=(768, 768)),
}
IMAGE_TOKENIZER_FILES = {"lumina-mgpt": "vqgan.ckpt", "lumina-mgpt-2": "movqgan_270M.ckpt"}


@dataclass(frozen=True)
class ChatReply:
    """A chat answer: its text (images marked `<|image|>`) and the images it wrote."""

    text: str
    images: list[Image.Image]


@dataclass(frozen=True)
class Defaults:
    """Sampling defaults of a model: what `generate` uses when an argument is left out."""

    image_top_k: int
    text_top_k: int
    temperature: float
    cfg: float
    size: tuple[int, int]


class Pipeline:
    """A model, its text tokenizer, its image tokenizer and its vocabulary layout, ready to generate."""

    def __init__(self, model, text_tokenizer, image_tokenizer, layout: VocabLayout, defaults: Defaults):
        self.model = model
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer = image_tokenizer
        self.layout = layout
        self.defaults = defaults
        self.engine = Engine(model, layout)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        image_tokenizer: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        quant: str | None = None,
    ) -> "Pipeline":
        """Load a project or official folder; with no path, the embedded shapes model.

        `quant` quantizes the decoder's linear weights after loading: "int8" (CPU and CUDA) or
        "int4" (CUDA, bfloat16); see `lumina_mgpt.model.quantize_model`.
        """
        from lumina_mgpt.model import check_quantization, load_model, quantize_model
        from lumina_mgpt.text import TextTokenizer
        from lumina_mgpt.vision import ImageTokenizer

        folder = Path(path) if path is not None else EMBEDDED_MODEL
        if not (folder / "config.json").is_file():
            hint = ""
            if path is None:
                hint = " (the embedded model is not in this checkout: `python -m lumina_mgpt.shapes.build` makes it)"
            raise GenerationError(f"{folder} is not a model folder: config.json is missing{hint}")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        if quant is not None:
            check_quantization(quant, device, dtype)  # before the slow part

        text_tokenizer = TextTokenizer.from_folder(folder)
        project_file = folder / PROJECT_FILE
        if project_file.is_file():
            meta = json.loads(project_file.read_text())
            layout = VocabLayout.from_dict(meta["layout"])
            defaults = Defaults(**{**meta["defaults"], "size": tuple(meta["defaults"]["size"])})
            vision_path = Path(image_tokenizer) if image_tokenizer else folder / "image_tokenizer"
        else:
            family = _official_family(folder)
            layout = get_layout(family, tokenizer=text_tokenizer)
            defaults = Defaults(**FAMILY_DEFAULTS[family])
            vision_path = Path(image_tokenizer) if image_tokenizer else _find_file(folder, IMAGE_TOKENIZER_FILES[family])

        model = load_model(folder, device=device, dtype=dtype).eval()
        if quant is not None:
            quantize_model(model, quant)
        vision = ImageTokenizer.from_pretrained(vision_path).to(device)
        if vision.codebook_size != layout.codebook_size:
            raise GenerationError(
                f"image tokenizer {vision_path} has {vision.codebook_size} codes but the model's layout expects "
                f"{layout.codebook_size}; pass the image tokenizer the model was trained with"
            )
        return cls(model, text_tokenizer, vision, layout, defaults)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a project folder that `from_pretrained` (and, for the model, transformers) loads."""
        from lumina_mgpt.model import save_model

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self.model, folder)
        self.text_tokenizer.save(folder / "tokenizer.json")
        self.image_tokenizer.save_pretrained(folder / "image_tokenizer")
        write_project_file(folder, self.layout, self.defaults)

    # ------------------------------------------------------------------ generation
    def settings(
        self,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float = 1.0,
        temperature: float | None = None,
        text_top_k: int | None = None,
    ) -> GenerationSettings:
        """Generation settings with this model's defaults filled in."""
        d = self.defaults
        temperature = d.temperature if temperature is None else temperature
        return GenerationSettings(
            image=SamplingSettings(temperature, d.image_top_k if top_k is None else top_k, top_p),
            text=SamplingSettings(temperature, d.text_top_k if text_top_k is None else text_top_k),
            cfg=d.cfg if cfg is None else cfg,
        )

    def prompt_ids(self, prompt: str, width: int, height: int) -> np.ndarray:
        """The ids of the resolution-aware text-to-image prompt, ending with the separator."""
        text = text_to_image_prompt(prompt, width, height)
        return encode_generation_prompt([text], [], self.text_tokenizer, self.layout)

    def generate_codes(
        self,
        prompts: Sequence[str],
        width: int,
        height: int,
        settings: GenerationSettings,
        seeds: Sequence[int],
        on_row: RowCallback | None = None,
        progress: bool = True,
        sjd_window: int | None = None,
    ) -> list[np.ndarray]:
        """Code grids (h, w) for each prompt; see `generate`."""
        check_image_size(width, height, self.layout)
        ids = [self.prompt_ids(p, width, height) for p in prompts]
        return self.engine.generate_images(
            ids, width, height, settings, seeds, on_row=on_row, progress=progress, sjd_window=sjd_window
        )

    def generate(
        self,
        prompts: str | Sequence[str],
        width: int | None = None,
        height: int | None = None,
        num_images: int = 1,
        seed: int = 0,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float = 1.0,
        temperature: float | None = None,
        batch_size: int = 8,
        on_row: RowCallback | None = None,
        progress: bool = True,
        sjd_window: int | None = None,
    ) -> list[Image.Image]:
        """Text to image. Returns num_images images per prompt, prompt-major.

        Image i of the whole call uses seed `seed + i`, so results do not depend on batch_size.
        `sjd_window=L` (16 is usual) decodes with speculative Jacobi decoding: the same distribution
        of images in fewer forwards, though not the same image for a seed as plain decoding.
        Each image carries its prompt and settings in `image.info["parameters"]` (JSON), which
        `save_png` writes into the PNG's text metadata.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        width = width or self.defaults.size[0]
        height = height or self.defaults.size[1]
        if num_images < 1 or batch_size < 1:
            raise GenerationError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
        settings = self.settings(cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature)
        jobs = [(p, seed + i) for i, p in enumerate(p for p in prompts for _ in range(num_images))]
        images = []
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start: start + batch_size]
            grids = self.generate_codes(
                [p for p, _ in chunk], width, height, settings, [s for _, s in chunk], on_row=on_row,
                progress=progress, sjd_window=sjd_window,
            )
            pictures = self.image_tokenizer.decode_to_pil(torch.as_tensor(np.stack(grids)))
            for (prompt, image_seed), picture in zip(chunk, pictures):
                picture.info["parameters"] = json.dumps(
                    {"prompt": prompt, "width": width, "height": height, "seed": image_seed, "cfg": settings.cfg,
                     "image_sampling": asdict(settings.image), "sjd_window": sjd_window,
                     "model_layout": self.layout.name}
                )
                images.append(picture)
        return images

    def chat(
        self,
        turns: Sequence[str],
        images: Sequence[Image.Image] = (),
        seed: int = 0,
        max_new_tokens: int = 512,
        temperature: float | None = None,
        top_k: int | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> ChatReply:
        """Answer the last human turn of a conversation (turns alternate human, assistant, ...,
        human; `<|image|>` marks where each image goes). Images the model opens in its answer are
        written at `image_size`; the reply's text marks them with `<|image|>`."""
        if len(turns) % 2 != 1:
            raise GenerationError(
                f"a conversation to answer has an odd number of turns (ending with a question), got {len(turns)}"
            )
        prompt = encode_generation_prompt(list(turns), self._encode_images(images), self.text_tokenizer, self.layout)
        settings = self.settings(temperature=temperature, text_top_k=top_k)
        (answer,) = self.engine.generate_text(
            [prompt], settings, [seed], max_new_tokens=max_new_tokens,
            image_size=image_size or self.defaults.size, progress=False,
        )
        if len(answer) and answer[-1] == self.layout.separator_id:
            answer = answer[:-1]
        text, grids = [], []
        for segment in parse(answer, self.layout):
            if isinstance(segment, ImageSegment):
                text.append(IMAGE_PLACEHOLDER)
                grids.append(segment.codes)
            else:
                text.append(self.text_tokenizer.decode([int(t) for t in segment.ids]))
        pictures = [self.image_tokenizer.decode_to_pil(torch.as_tensor(g)[None])[0] for g in grids if g.size]
        return ChatReply("".join(text), pictures)

    def _encode_images(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        from lumina_mgpt.formats import bucket_sizes, closest_bucket, resize_to_bucket

        grids = []
        sizes = bucket_sizes(max(self.defaults.size), step=self.layout.pixels_per_indicator)
        for image in images:
            size = closest_bucket(image.width, image.height, sizes)
            tensor_codes = self.image_tokenizer.encode([resize_to_bucket(image.convert("RGB"), size)])
            grids.append(tensor_codes[0].cpu().numpy())
        return grids


def write_project_file(folder: str | os.PathLike, layout: VocabLayout, defaults: Defaults) -> Path:
    """Write the `lumina.json` that makes a model folder a project folder (layout + sampling defaults)."""
    meta = {"layout": layout.to_dict(), "defaults": {**asdict(defaults), "size": list(defaults.size)}}
    return write_text_atomically(Path(folder) / PROJECT_FILE, json.dumps(meta, indent=2))


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Save a generated image as PNG with its generation settings in the text metadata, atomically."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in image.info.items():
        if isinstance(value, str):
            info.add_text(key, value)
    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def _official_family(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    vocab = config.get("vocab_size")
    if vocab == 65536:
        return "lumina-mgpt"
    if vocab == 171385:
        return "lumina-mgpt-2"
    raise GenerationError(
        f"{folder}/config.json has vocab_size {vocab}: not an official Lumina-mGPT (65536) or Lumina-mGPT 2.0 "
        f"(171385) folder, and there is no {PROJECT_FILE} of a project model"
    )


def _find_file(folder: Path, name: str) -> Path:
    """Look for the image tokenizer in the folder and up to three levels above (the official
    repositories keep it in ckpts/chameleon/tokenizer/ or beside the model folders)."""
    candidates = []
    for base in [folder, *list(folder.resolve().parents)[:3]]:
        candidates += [base / name, base / "tokenizer" / name, base / "chameleon" / "tokenizer" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise GenerationError(f"no image tokenizer {name} found in or above {folder}; pass image_tokenizer=PATH")

