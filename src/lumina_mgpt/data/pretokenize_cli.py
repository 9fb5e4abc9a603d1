"""`lumina pretokenize`: turn a data set into token shards for training.

The model (`--model`, by default the embedded shapes model) supplies the text tokenizer, the image
tokenizer, the vocabulary layout, the target size (its lumina.json) and the sequence limit (its
config.json), so the tokens fit the model that will train on them. Without a model, give
--tokenizer, --image-tokenizer and --layout.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lumina_mgpt.errors import DataError
from lumina_mgpt.formats.layout import LAYOUT_NAMES

DEFAULT_TARGET_SIZE = 512  # without a model to say otherwise: the official 512 px stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", help=".jsonl / .json conversation or image+prompt files, .parquet tables")
    parser.add_argument("--out", required=True, help="folder for the shards and manifest.json (rerun to resume)")
    parser.add_argument(
        "--model",
        help="the model the tokens are for: a folder (project or official), a hub id or 'embedded'; it supplies "
        "the tokenizers, layout, target size and max_seq_len (default: the embedded shapes model, or none when "
        "--tokenizer, --image-tokenizer and --layout are all given)",
    )
    parser.add_argument(
        "--tokenizer",
        help="without --model: the text tokenizer, a tokenizer.json or a folder holding one (default: the model's)",
    )
    parser.add_argument(
        "--image-tokenizer",
        help="image tokenizer folder or official checkpoint (default: the model's)",
    )
    parser.add_argument(
        "--layout", choices=LAYOUT_NAMES, help="without --model: the vocabulary layout (default: the model's)"
    )
    parser.add_argument(
        "--target-size", type=int,
        help=f"target side in px of the resolution buckets (default: the model's image size, else {DEFAULT_TARGET_SIZE})",
    )
    parser.add_argument(
        "--max-seq-len", type=int,
        help="skip (and count) samples of more tokens than this (default: the model's max_position_embeddings "
        "from its config.json; without one, no limit)",
    )
    parser.add_argument("--loss-mode", choices=("response", "image"), default="response",
                        help="supervise every answer token (v1) or only answer images (v2) (default: %(default)s)")
    parser.add_argument("--size-drop", type=float, default=0.0,
                        help="probability of dropping the size phrase, 0.1 in v2 (default: %(default)s)")
    parser.add_argument("--center-crop", action="store_true",
                        help="crop at the center instead of at a seeded random offset (default: random offset)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes, each encoding whole shards (default: %(default)s)")
    parser.add_argument("--shard-size", type=int, default=1000, help="records per shard (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crop offsets and size drops (default: %(default)s)")
    parser.add_argument("--max-bad-share", type=float, default=0.01,
                        help="fail above this share of skipped records (default: %(default)s)")
    parser.add_argument("--image-column", default="image", help="Parquet column with image bytes or paths (default: %(default)s)")
    parser.add_argument("--prompt-column", default="prompt", help="Parquet column with the prompts (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per image-tokenizer call (default: %(default)s)")
    parser.add_argument("--image-threads", type=int, default=4,
                        help="threads decoding and resizing images (default: %(default)s)")
    parser.add_argument("--device", help="device of the image tokenizer (default: this rank's GPU when CUDA is present, else cpu)")


def run(args: argparse.Namespace) -> int:
    from lumina_mgpt.data.pretokenizer import POOR_RECONSTRUCTION_DB, pretokenize
    from lumina_mgpt.data.shard_encoder import PretokenizeSettings
    from lumina_mgpt.data.sources import ParquetColumns

    tokenizers, model_target_size, model_max_seq_len = load_tokenizers(args)
    settings = PretokenizeSettings(
        target_size=model_target_size if args.target_size is None else args.target_size,
        loss_mode=args.loss_mode,
        size_drop=args.size_drop,
        center_crop=args.center_crop,
        shard_size=args.shard_size,
        seed=args.seed,
        max_bad_share=args.max_bad_share,
        encode_batch_size=args.batch_size,
        image_threads=args.image_threads,
        max_seq_len=model_max_seq_len if args.max_seq_len is None else args.max_seq_len,
    )
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    manifest = pretokenize(
        args.sources,
        args.out,
        tokenizers,
        settings,
        parquet_columns=ParquetColumns(image=args.image_column, prompt=args.prompt_column),
        workers=args.workers,
        rank=rank,
        world_size=world_size,
    )
    if manifest is None:
        print(f"rank {rank}: shards done; the last rank to finish writes {Path(args.out) / 'manifest.json'}")
        return 0
    counts = manifest["counts"]
    limit = "" if settings.max_seq_len is None else f", {manifest['too_long']} of them over {settings.max_seq_len} tokens"
    print(
        f"{counts['records']} records ({counts['skipped']} skipped{limit}), {counts['tokens']} tokens in "
        f"{len(manifest['shards'])} shards at target size {settings.target_size}: {Path(args.out) / 'manifest.json'}"
    )
    measured = manifest["reconstruction"]
    if measured is not None:
        verdict = "poor" if measured["psnr"] < POOR_RECONSTRUCTION_DB else "fine"
        print(
            f"image tokenizer round trip on the first {measured['images']} images: {measured['psnr']:.1f} dB PSNR "
            f"({verdict}; below {POOR_RECONSTRUCTION_DB:.0f} dB is poor)"
        )
    return 0


def load_tokenizers(args: argparse.Namespace):
    """(Tokenizers, the target size, max_seq_len) the arguments name: a model's, or the three pieces given
    without a model (target size DEFAULT_TARGET_SIZE, no length limit)."""
    import math

    import torch

    from lumina_mgpt.data.shard_encoder import Tokenizers
    from lumina_mgpt.formats import get_layout
    from lumina_mgpt.model_folder import PROJECT_FILE, read_model_info, read_project_file
    from lumina_mgpt.model import read_config
    from lumina_mgpt.model_folder import resolve_model
    from lumina_mgpt.text import TextTokenizer
    from lumina_mgpt.vision import ImageTokenizer

    device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    pieces = {"--tokenizer": args.tokenizer, "--image-tokenizer": args.image_tokenizer, "--layout": args.layout}
    if args.model is None and all(pieces.values()):
        path = Path(args.tokenizer)
        text = TextTokenizer.from_folder(path) if path.is_dir() else TextTokenizer.from_file(path)
        image = ImageTokenizer.from_pretrained(args.image_tokenizer).to(device)
        options = {"codebook_size": image.codebook_size, "downsample": image.downsample} if args.layout == "compact" else {}
        return Tokenizers(text, image, get_layout(args.layout, tokenizer=text, **options)), DEFAULT_TARGET_SIZE, None
    fixed = [name for name in ("--tokenizer", "--layout") if pieces[name]]
    if fixed:
        raise DataError(
            f"{' and '.join(fixed)} cannot replace a model's own (its ids depend on them); give --tokenizer, "
            "--image-tokenizer and --layout without --model, or a --model alone"
        )
    folder = resolve_model(args.model)
    if (folder / PROJECT_FILE).is_file():  # a project folder, with weights or not yet (the build pretokenizes first)
        layout, defaults, _ = read_project_file(folder)
        text, image_path = TextTokenizer.from_folder(folder), args.image_tokenizer or folder / "image_tokenizer"
    else:  # an official folder: the family, and so the layout, from its config.json
        info = read_model_info(folder, image_tokenizer=args.image_tokenizer)
        layout, defaults, text, image_path = info.layout, info.defaults, info.text_tokenizer, info.image_tokenizer_path
    image = ImageTokenizer.from_pretrained(image_path).to(device)
    width, height = defaults.size
    has_config = (folder / "config.json").is_file()
    max_seq_len = read_config(folder).max_position_embeddings if has_config else None
    return Tokenizers(text, image, layout), math.isqrt(width * height), max_seq_len
