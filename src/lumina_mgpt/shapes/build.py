"""Build the embedded shapes model with the project's own pipeline, one resumable step at a time:

1. render the data sets (48 px canvases for stage 1, the 64 px buckets for stage 2),
2. train a byte-level BPE on the prompts,
3. train the small VQ on crops of the renders,
4. write the project assets (tokenizer.json, image_tokenizer/, lumina.json with the layout),
5. `lumina pretokenize` each data set at its stage's target size,
6. `lumina train recipes/shapes.toml` (stages of growing canvas size, as in FP-SFT),
7. export the final model, in bf16, into the package (src/lumina_mgpt/assets/shapes-model).

    python -m lumina_mgpt.shapes.build            # from the repository root; see --help

Each step is skipped when its output exists, so a killed build continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
RECIPE = REPO / "recipes" / "shapes.toml"
WORK = REPO / "runs" / "shapes"  # the recipe's paths point here
STAGE_DATA = {"data-48": ((48, 48),), "data-64": ((64, 64), (80, 48), (48, 80))}
STAGE_TARGET = {"data-48": 48, "data-64": 64}
BPE_VOCAB = 512
PIXELS_PER_INDICATOR = 16
MAX_INDICATOR = 16  # 256 px: four times the largest canvas
IMAGE_TOP_K = 128
# Chosen on validation prompts (none held out) with benchmarks/tune_shapes_sampling.py, on v1 and again
# on v2 (best of CFG 2-3.5 x temperature 0.3-0.7: 0.840; CFG 3.5 scores 0.67; RESULTS.md has the grids).
SAMPLING_CFG = 2.5
SAMPLING_TEMPERATURE = 0.5
VQ_IMAGES = 3000
VQ_AUTOENCODER_WARMUP = 400


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def render_data(work: Path, counts: dict[str, int], seed: int) -> None:
    from lumina_mgpt.shapes.dataset import RECORDS_FILE, write_dataset

    for offset, (name, sizes) in enumerate(STAGE_DATA.items()):
        if (work / name / RECORDS_FILE).is_file():
            continue
        log(f"rendering {counts[name]} examples into {work / name}")
        write_dataset(work / name, counts[name], seed=seed + offset, sizes=sizes)


def train_text_tokenizer(work: Path) -> None:
    from lumina_mgpt.formats import text_to_image_prompt
    from lumina_mgpt.shapes.dataset import RECORDS_FILE
    from lumina_mgpt.text import TextTokenizer

    target = work / "assets" / "tokenizer.json"
    if target.is_file():
        return
    log("training the BPE text tokenizer")
    texts = []
    for name, sizes in STAGE_DATA.items():
        for i, line in enumerate((work / name / RECORDS_FILE).read_text().splitlines()):
            width, height = sizes[i % len(sizes)]
            texts.append(text_to_image_prompt(json.loads(line)["prompt"], width, height))
    target.parent.mkdir(parents=True, exist_ok=True)
    TextTokenizer.train_bpe(texts, vocab_size=BPE_VOCAB).save(target)


def train_image_tokenizer(work: Path, steps: int, seed: int) -> None:
    import torch

    from lumina_mgpt.vision import ImageTokenizer
    from lumina_mgpt.vision.config import preset
    from lumina_mgpt.vision.data import folder_images
    from lumina_mgpt.vision.pixels import images_to_tensor
    from lumina_mgpt.vision.train import TrainSettings, VQTrainer

    target = work / "assets" / "image_tokenizer"
    if (target / "config.json").is_file() and not (work / "vq-run").exists():
        return
    # Whole 48 px renders, not rescaled crops: objects sit on the world's grid exactly as they will
    # when the language model's data is encoded, so the codebook is spent on patches that occur.
    images = images_to_tensor(folder_images(work / "data-48" / "images")[:VQ_IMAGES])
    run = work / "vq-run"
    if (run / "trainer_state.pt").is_file():
        trainer = VQTrainer.resume(run, images, steps=steps)
    else:
        torch.manual_seed(seed)
        settings = TrainSettings(
            steps=steps, batch_size=16, dead_code_window=50, autoencoder_warmup=VQ_AUTOENCODER_WARMUP, seed=seed
        )
        trainer = VQTrainer(ImageTokenizer(preset("shapes")), images, settings, run)
    log(f"training the patch-local VQ image tokenizer for {steps} steps (from step {trainer.step})")
    trainer.run()
    ImageTokenizer.from_pretrained(run).save_pretrained(target)
    shutil.rmtree(run)


def write_project_metadata(work: Path) -> None:
    from lumina_mgpt.formats import get_layout
    from lumina_mgpt.model_folder import PROJECT_FILE, Defaults, write_project_file
    from lumina_mgpt.text import TextTokenizer
    from lumina_mgpt.vision import ImageTokenizer

    target = work / "assets" / PROJECT_FILE
    if target.is_file():
        return
    text = TextTokenizer.from_file(work / "assets" / "tokenizer.json")
    image = ImageTokenizer.from_pretrained(work / "assets" / "image_tokenizer")
    layout = get_layout(
        "compact", text, codebook_size=image.codebook_size, downsample=image.downsample,
        pixels_per_indicator=PIXELS_PER_INDICATOR, max_indicator=MAX_INDICATOR,
    )
    defaults = Defaults(
        image_top_k=IMAGE_TOP_K, text_top_k=10, temperature=SAMPLING_TEMPERATURE, cfg=SAMPLING_CFG, size=(64, 64)
    )
    write_project_file(target.parent, layout, defaults)
    log(f"layout: {layout.vocab_size} ids ({text.vocab_size} text, {layout.codebook_size} codes)")


def pretokenize_data(work: Path, seed: int) -> None:
    from lumina_mgpt.cli import main

    for name, target_size in STAGE_TARGET.items():
        out = work / f"tokens-{target_size}"
        if (out / "manifest.json").is_file():
            continue
        log(f"pretokenizing {name} at target size {target_size}")
        code = main([
            "pretokenize", str(work / name / "records.jsonl"), "--out", str(out), "--model",
            str(work / "assets"), "--target-size", str(target_size), "--loss-mode", "image",
            "--center-crop", "--seed", str(seed),
        ])
        if code:
            raise SystemExit(code)


def train_model(device: str | None, max_steps: int | None) -> Path:
    from lumina_mgpt.cli import main

    args = ["train", str(RECIPE), "--resume"]
    if device:
        args += ["--device", device]
    if max_steps:
        args += ["--max-steps", str(max_steps)]
    log(f"training: lumina {' '.join(args)}")
    if main(args):
        raise SystemExit("training failed")
    return WORK / "run" / "final"


def export(model_folder: Path, destination: Path) -> None:
    """Copy the trained project folder into the package, with the transformer in bf16 (half the bytes)."""
    import torch

    from lumina_mgpt.generation.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(model_folder, device="cpu", pack_weights=False)
    pipe.model.to(torch.bfloat16)
    staging = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    shutil.rmtree(destination, ignore_errors=True)
    os.replace(staging, destination)
    size = sum(f.stat().st_size for f in destination.rglob("*") if f.is_file())
    log(f"exported to {destination} ({size / 1e6:.1f} MB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples-48", type=int, default=20000, help="stage-1 examples (48x48)")
    parser.add_argument("--samples-64", type=int, default=60000, help="stage-2 examples (64x64, 80x48, 48x80)")
    parser.add_argument("--vq-steps", type=int, default=3500, help="VQ training steps")
    parser.add_argument("--max-steps", type=int, help="stop training after this many steps (resume later)")
    parser.add_argument("--device", help="training device (default: CUDA when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-export", action="store_true", help="train only; do not write into the package")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    render_data(WORK, {"data-48": args.samples_48, "data-64": args.samples_64}, args.seed)
    train_text_tokenizer(WORK)
    train_image_tokenizer(WORK, args.vq_steps, args.seed)
    write_project_metadata(WORK)
    pretokenize_data(WORK, args.seed)
    final = train_model(args.device, args.max_steps)
    if not args.no_export and (final / "config.json").is_file():
        from lumina_mgpt.model_folder import EMBEDDED_MODEL

        export(final, EMBEDDED_MODEL)
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
