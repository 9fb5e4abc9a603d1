"""`lumina demo`: text -> image at two aspect ratios, end to end, on the embedded model (or --model),
then, on a model trained for them, one image each of editing, segmentation and control (edges -> image,
from the model's own edge map) on the first picture, and its caption.

The two sizes are the model's own and a wider one, 5:3 (64x64 and 80x48 on the embedded model).
When the embedded shapes model is not in the checkout, the demo runs the same path (tokenize the
prompt, batched CFG decoding, VQ decoding, PNGs with metadata) on a freshly initialised model of
the embedded model's size, saved and loaded as a project folder: every stage runs for real, but
the pictures are noise. It says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lumina_mgpt.generation.cli import (
    add_model_arguments,
    add_output_arguments,
    add_seed_argument,
)

DEMO_PROMPTS = (
    "a red circle to the left of a blue square",
    "three yellow triangles",
    "a green square above a purple circle",
)
# On the first prompt's picture: (task, file name, instruction or prompt).
EDIT_INSTRUCTION = "make the red circle green"
CONTROL_PROMPT = "a yellow circle to the left of a purple square"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_seed_argument(parser)
    add_output_arguments(parser, "outputs/demo", "folder for the PNGs, created when missing")


def demo_sizes(size: tuple[int, int], step: int) -> list[tuple[int, int]]:
    """The model's size and a 5:3 one of about the same area (80x48 from 64x64), in multiples of `step`."""
    width, height = size
    wide = tuple(max(step, round(side * scale / step) * step) for side, scale in ((width, 1.25), (height, 0.75)))
    return [(width, height), wide]


def untrained_shapes_pipeline(folder: Path, seed: int = 0):
    """A project folder with the embedded model's architecture and random weights, loaded back."""
    import numpy as np
    import torch

    from lumina_mgpt.formats import get_layout
    from lumina_mgpt.generation.pipeline import Pipeline
    from lumina_mgpt.model import ModelConfig, Transformer
    from lumina_mgpt.model_folder import Defaults
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
    import sys
    import time

    from lumina_mgpt.generation.checks import check_image_dimensions, check_seeds
    from lumina_mgpt.generation.outputs import OutputFolder
    from lumina_mgpt.generation.pipeline import Pipeline, load_options
    from lumina_mgpt.model_folder import EMBEDDED_MODEL, read_model_info

    start = time.perf_counter()
    check_seeds(args.seed, len(DEMO_PROMPTS))
    device, dtype = load_options(args.device, quant=args.quant)
    out = OutputFolder(args.out, overwrite=args.overwrite)
    if args.model is None and not (EMBEDDED_MODEL / "config.json").is_file():
        print("model: the embedded shapes model is not shipped yet; running the full pipeline on an UNTRAINED model")
        print("       of the same architecture (random weights: expect noise, not shapes)")
        pipe = untrained_shapes_pipeline(out.path / "untrained-model", seed=args.seed)
    else:
        info = read_model_info(args.model, args.image_tokenizer)
        sizes = demo_sizes(info.defaults.size, info.layout.pixels_per_indicator)
        for width, height in sizes:
            check_image_dimensions(width, height, info.layout)
        print(f"loading model from {info.folder}", file=sys.stderr)
        pipe = Pipeline.from_model_info(info, device=device, dtype=dtype, quant=args.quant)
        print(f"model: {'the embedded shapes model' if args.model is None else 'the model'} ({info.folder})")
    print(f"layout: {pipe.layout.name}, vocabulary {pipe.layout.vocab_size}, {pipe.layout.codebook_size} image codes, "
          f"{pipe.model.config.num_parameters / 1e6:.1f}M transformer parameters")
    first = None
    for width, height in demo_sizes(pipe.defaults.size, pipe.layout.pixels_per_indicator):
        images = pipe.iter_generate(list(DEMO_PROMPTS), width=width, height=height, seed=args.seed, progress=False)
        for i, (prompt, image) in enumerate(zip(DEMO_PROMPTS, images)):
            path = out.save(image, f"{width}x{height}-{i}.png")
            print(f"{path}  ({image.width}x{image.height})  {prompt!r}")
            first = first or image
    run_tasks(pipe, first, out, args.seed)
    print(f"wrote {len(out.written)} PNGs to {out.path}/ in {time.perf_counter() - start:.1f} s "
          f"(settings are in each PNG's text metadata)")
    return 0


def run_tasks(pipe, picture, out, seed: int) -> None:
    """The tasks the model was trained for, on `picture` (the first prompt's image): edit it, segment it,
    draw a new picture from its edge map, describe it. Models without them skip this, saying so."""
    from lumina_mgpt.model_folder import CAPTION, CONTROL, EDIT

    def save(image, name: str, what: str) -> None:
        print(f"{out.save(image, name)}  ({image.width}x{image.height})  {what}")

    done = []
    if EDIT in pipe.tasks:
        save(pipe.edit(picture, EDIT_INSTRUCTION, seed=seed), "task-edit.png", f"edit: {EDIT_INSTRUCTION!r}")
        done.append(EDIT)
    if "segmentation" in pipe.tasks:
        save(pipe.predict(picture, "segmentation", seed=seed), "task-segmentation.png", "segmentation map")
        done.append("segmentation")
    if "edges" in pipe.tasks and CONTROL in pipe.tasks:
        edges = pipe.predict(picture, "edges", seed=seed)
        save(edges, "task-edges.png", "edge map")
        control = pipe.control(edges, "edges", CONTROL_PROMPT, seed=seed)
        save(control, "task-control.png", f"control: the edge map and {CONTROL_PROMPT!r}")
        done.append(CONTROL)
    if CAPTION in pipe.tasks:
        print(f"caption of the first picture: {pipe.caption(picture, seed=seed)!r}")
        done.append(CAPTION)
    if not done:
        print(f"tasks: this model was trained for {', '.join(pipe.tasks)} only; a multi-task model also edits, "
              "segments, draws from edge maps and describes its pictures here")
