"""`lumina demo`: text -> image at two aspect ratios on the embedded model, end to end.

While the embedded shapes model is not shipped, the demo runs the same path (tokenize the prompt,
batched CFG decoding, VQ decoding, PNGs with metadata) on a freshly initialised model of the
embedded model's size, saved and loaded as a project folder: every stage runs for real, but the
pictures are noise. It says so.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEMO_PROMPTS = (
    "a red circle to the left of a blue square",
    "three yellow triangles",
    "a green square above a purple circle",
)
DEMO_SIZES = ((64, 64), (80, 48))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/demo", help="folder for the PNGs (default outputs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image (default 0)")


def untrained_shapes_pipeline(folder: Path, seed: int = 0):
    """A project folder with the embedded model's architecture and random weights, loaded back."""
    import numpy as np
    import torch

    from lumina_mgpt.formats import get_layout
    from lumina_mgpt.generation.pipeline import Defaults, Pipeline
    from lumina_mgpt.model import ModelConfig, Transformer
    from lumina_mgpt.shapes import CATEGORIES
    from lumina_mgpt.shapes.examples import sample_training_caption
    from lumina_mgpt.text import TextTokenizer
    from lumina_mgpt.vision import ImageTokenizer
    from lumina_mgpt.vision.config import preset

    rng = np.random.default_rng(seed)
    captions = [sample_training_caption(rng, CATEGORIES[i % len(CATEGORIES)])[1] for i in range(600)]
    text_tokenizer = TextTokenizer.train_bpe(captions, vocab_size=400)
    torch.manual_seed(seed)
    image_tokenizer = ImageTokenizer(preset("small")).eval()
    layout = get_layout(
        "compact", text_tokenizer, codebook_size=image_tokenizer.codebook_size,
        downsample=image_tokenizer.downsample, pixels_per_indicator=16, max_indicator=16,
    )
    model = Transformer(ModelConfig.preset("shapes", vocab_size=layout.vocab_size)).eval()
    defaults = Defaults(image_top_k=200, text_top_k=10, temperature=1.0, cfg=4.0, size=(64, 64))
    Pipeline(model, text_tokenizer, image_tokenizer, layout, defaults).save_pretrained(folder)
    return Pipeline.from_pretrained(folder, device="cpu")


def run(args: argparse.Namespace) -> int:
    from lumina_mgpt.generation.pipeline import EMBEDDED_MODEL, Pipeline, save_png

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if (EMBEDDED_MODEL / "config.json").is_file():
        pipe = Pipeline.from_pretrained(device="cpu")
        print(f"model: the embedded shapes model ({EMBEDDED_MODEL})")
    else:
        print("model: the embedded shapes model is not shipped yet; running the full pipeline on an UNTRAINED model")
        print("       of the same architecture (random weights: expect noise, not shapes)")
        pipe = untrained_shapes_pipeline(out / "untrained-model", seed=args.seed)
    print(f"layout: {pipe.layout.name}, vocabulary {pipe.layout.vocab_size}, {pipe.layout.codebook_size} image codes, "
          f"{sum(p.numel() for p in pipe.model.parameters()) / 1e6:.1f}M transformer parameters")
    paths = []
    for width, height in DEMO_SIZES:
        images = pipe.generate(list(DEMO_PROMPTS), width=width, height=height, seed=args.seed, progress=False)
        for i, image in enumerate(images):
            path = out / f"{width}x{height}-{i}.png"
            save_png(image, path)
            paths.append(path)
            print(f"{path}  ({image.width}x{image.height})  {DEMO_PROMPTS[i]!r}")
    print(f"wrote {len(paths)} PNGs to {out}/ in {time.perf_counter() - start:.1f} s "
          f"(settings are in each PNG's text metadata)")
    return 0
