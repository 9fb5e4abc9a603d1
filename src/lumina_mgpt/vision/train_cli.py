"""`lumina train-vq`: train (or resume) a small VQ image tokenizer and report held-out PSNR/SSIM."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EVAL_CROPS = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `lumina train-vq`."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data", type=Path,
        help="folder of training images, the last tenth held out (no default: give --data or --skimage-photos)",
    )
    source.add_argument("--skimage-photos", action="store_true", help="random crops of scikit-image's bundled photos")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder (a loadable tokenizer folder)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--preset", default="small", help="architecture preset (default: %(default)s)")
    parser.add_argument(
        "--init", help="start from this tokenizer's weights (any from_pretrained path) instead (default: the preset's "
        "random initialisation)"
    )
    parser.add_argument("--codebook-size", type=int, help="override the preset's codebook size (default: the preset's)")
    parser.add_argument("--crops", type=int, default=512, help="training crops to cut per crop size (default: %(default)s)")
    parser.add_argument(
        "--crop-size", type=int, nargs="+", default=[32, 64, 128],
        help="training crop sides in px; each step trains on one of them, so the tokenizer (and the "
        "stability of its codes) holds at every size, not only the one trained (default: 32 64 128)",
    )
    parser.add_argument(
        "--eval-size", type=int, nargs="+", default=[64, 256],
        help=f"held-out crop sides in px, {EVAL_CROPS} crops each (default: 64 256)",
    )
    parser.add_argument("--steps", type=int, help="total optimizer steps (default: 1500; on resume: as saved)")
    parser.add_argument(
        "--batch-size", type=int, default=32,
        help="crops per step at the smallest crop size; larger crops come fewer per step, covering the same "
        "pixels (default: %(default)s)",
    )
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak AdamW learning rate (default: %(default)s)")
    parser.add_argument(
        "--consistency-weight", type=float, default=0.1,
        help="weight of the re-encoding loss that makes encode(decode(codes)) return the codes (default: %(default)s)",
    )
    parser.add_argument(
        "--autoencoder-warmup", type=int, default=0,
        help="train this many steps unquantized, then set the codebook by k-means on the latents "
        "(needed by patch-local presets such as `shapes`, which otherwise collapse onto a few codes) "
        "(default: %(default)s)",
    )
    parser.add_argument("--save-every", type=int, default=100, help="steps between checkpoints (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the crops (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")


def run(args: argparse.Namespace) -> int:
    """Train, save, evaluate; prints and writes eval.json beside the checkpoint."""
    import dataclasses

    import torch

    from lumina_mgpt.errors import ImageTokenizerError
    from lumina_mgpt.vision import data
    from lumina_mgpt.atomic import write_text_atomically
    from lumina_mgpt.vision.config import preset
    from lumina_mgpt.vision.metrics import SSIM_MIN_SIDE, evaluate_reconstruction
    from lumina_mgpt.vision.tokenizer import ImageTokenizer
    from lumina_mgpt.vision.train import TrainSettings, VQTrainer

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.data is None and not args.skimage_photos:
        raise ImageTokenizerError("say where the images come from: --data FOLDER or --skimage-photos")
    if min(args.eval_size) < SSIM_MIN_SIDE:
        raise ImageTokenizerError(
            f"--eval-size {min(args.eval_size)} is too small: SSIM needs at least {SSIM_MIN_SIDE} px"
        )
    if args.data is not None:
        images = data.folder_images(args.data)
        held_out_count = max(1, len(images) // 10)
        train_images, eval_images = images[:-held_out_count], images[-held_out_count:]
    else:
        train_images = data.skimage_photos(data.SKIMAGE_TRAIN_PHOTOS)
        eval_images = data.skimage_photos(data.SKIMAGE_HELDOUT_PHOTOS)
    if not train_images:
        raise ImageTokenizerError(f"{args.data} holds too few images to hold a tenth out; give at least 2")
    for option, sizes, pool, role in (
        ("--crop-size", args.crop_size, train_images, "training"),
        ("--eval-size", args.eval_size, eval_images, "held-out"),
    ):
        shortest = min(min(image.size) for image in pool)
        if max(sizes) > shortest:
            raise ImageTokenizerError(
                f"{option} {max(sizes)} does not fit: the {role} images are as small as {shortest} px on a side; "
                f"choose sizes up to {shortest}"
            )
    # Crops come from seeded generators, so a resumed run sees exactly the same data.
    crop_generator = torch.Generator().manual_seed(args.seed)
    train_pixels = [data.random_crops(train_images, args.crops, size, crop_generator) for size in args.crop_size]
    eval_generator = torch.Generator().manual_seed(args.seed + 1)
    eval_pixels = {size: data.random_crops(eval_images, EVAL_CROPS, size, eval_generator) for size in args.eval_size}

    if args.resume and args.init:
        raise ImageTokenizerError("--resume continues --out's own run; it cannot be combined with --init")
    if args.resume:
        trainer = VQTrainer.resume(args.out, train_pixels, steps=args.steps)
    else:
        torch.manual_seed(args.seed)
        if args.init:
            tokenizer = ImageTokenizer.from_pretrained(args.init)
            if args.codebook_size is not None and args.codebook_size != tokenizer.codebook_size:
                raise ImageTokenizerError(
                    f"--init {args.init} has {tokenizer.codebook_size} codes; drop --codebook-size"
                )
        else:
            config = preset(args.preset)
            if args.codebook_size is not None:
                config = dataclasses.replace(config, codebook_size=args.codebook_size)
            tokenizer = ImageTokenizer(config)
        settings = TrainSettings(
            steps=args.steps or TrainSettings.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            consistency_weight=args.consistency_weight,
            autoencoder_warmup=args.autoencoder_warmup,
            save_every=args.save_every,
            seed=args.seed,
        )
        trainer = VQTrainer(tokenizer, train_pixels, settings, args.out)
    downsample = trainer.tokenizer.downsample
    misfits = sorted({size for size in (*args.crop_size, *args.eval_size) if size % downsample})
    if misfits:
        raise ImageTokenizerError(
            f"crop sizes {misfits} are not multiples of the tokenizer's {downsample}x downsampling"
        )
    history = trainer.run(progress=not args.no_progress)

    tokenizer = ImageTokenizer.from_pretrained(args.out).eval()
    report = {"steps": trainer.step, "final_loss": history[-1]["loss"] if history else None, "held_out": {}}
    for size, pixels in eval_pixels.items():
        scores = evaluate_reconstruction(tokenizer, pixels)
        report["held_out"][f"{size}px"] = scores
        print(
            f"held-out {scores['images']} crops of {size}px: PSNR {scores['psnr']:.2f} dB, "
            f"SSIM {scores['ssim']:.4f}, codes stable under decode->encode {scores['code_stability']:.1%}, "
            f"second round trip PSNR {scores['round_trip_psnr']:.2f} dB"
        )
    write_text_atomically(args.out / "eval.json", json.dumps(report, indent=2) + "\n")
    return 0
