"""`lumina pretokenize`: turn a data set into token shards for training."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from lumina_mgpt.errors import DataError
from lumina_mgpt.formats import LAYOUT_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", help=".jsonl / .json conversation or image+prompt files, .parquet tables")
    parser.add_argument("--out", required=True, help="folder for the shards and manifest.json (rerun to resume)")
    parser.add_argument("--model-folder", help="a project model folder (tokenizer.json, lumina.json, image_tokenizer/) "
                        "or an official one (then also give --layout and --image-tokenizer)")
    parser.add_argument("--tokenizer", help="text tokenizer: a tokenizer.json or a folder holding one")
    parser.add_argument("--image-tokenizer", help="image tokenizer folder or official checkpoint")
    parser.add_argument("--layout", choices=LAYOUT_NAMES, help="vocabulary layout (read from lumina.json when omitted)")
    parser.add_argument("--target-size", type=int, default=512, help="target side of the resolution buckets (default 512)")
    parser.add_argument("--loss-mode", choices=("response", "image"), default="response",
                        help="supervise every answer token (v1) or only answer images (v2)")
    parser.add_argument("--size-drop", type=float, default=0.0, help="probability of dropping the size phrase (v2: 0.1)")
    parser.add_argument("--center-crop", action="store_true", help="crop at the center instead of a seeded random offset")
    parser.add_argument("--workers", type=int, default=1, help="worker processes, each encoding whole shards")
    parser.add_argument("--shard-size", type=int, default=1000, help="records per shard (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crop offsets and size drops")
    parser.add_argument("--max-bad-share", type=float, default=0.01, help="fail above this share of broken records")
    parser.add_argument("--image-column", default="image", help="Parquet column with image bytes or paths")
    parser.add_argument("--prompt-column", default="prompt", help="Parquet column with the prompts")
    parser.add_argument("--batch-size", type=int, default=16, help="images per image-tokenizer call")
    parser.add_argument("--image-threads", type=int, default=4, help="threads decoding and resizing images")
    parser.add_argument("--device", help="device of the image tokenizer (default: this rank's GPU, else cpu)")


def run(args: argparse.Namespace) -> int:
    from lumina_mgpt.data.pretokenizer import pretokenize
    from lumina_mgpt.data.shard_encoder import PretokenizeSettings
    from lumina_mgpt.data.sources import ParquetColumns

    settings = PretokenizeSettings(
        target_size=args.target_size,
        loss_mode=args.loss_mode,
        size_drop=args.size_drop,
        center_crop=args.center_crop,
        shard_size=args.shard_size,
        seed=args.seed,
        max_bad_share=args.max_bad_share,
        encode_batch_size=args.batch_size,
        image_threads=args.image_threads,
    )
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    manifest = pretokenize(
        args.sources,
        args.out,
        load_tokenizers(args),
        settings,
        parquet_columns=ParquetColumns(image=args.image_column, prompt=args.prompt_column),
        workers=args.workers,
        rank=rank,
        world_size=world_size,
    )
    if manifest is None:
        print(f"rank {rank}: shards done; the last rank to finish writes {Path(args.out) / 'manifest.json'}")
    else:
        counts = manifest["counts"]
        print(
            f"{counts['records']} records ({counts['skipped']} skipped), {counts['tokens']} tokens in "
            f"{len(manifest['shards'])} shards: {Path(args.out) / 'manifest.json'}"
        )
    return 0


def load_tokenizers(args: argparse.Namespace):
    """The text tokenizer, image tokenizer and layout named by the arguments."""
    import torch

    from lumina_mgpt.data.shard_encoder import Tokenizers
    from lumina_mgpt.formats import VocabLayout, get_layout
    from lumina_mgpt.generation.pipeline import PROJECT_FILE
    from lumina_mgpt.text import TextTokenizer
    from lumina_mgpt.vision import ImageTokenizer

    layout, image_path = None, args.image_tokenizer
    if args.model_folder:
        folder = Path(args.model_folder)
        text = TextTokenizer.from_folder(folder)
        if (folder / PROJECT_FILE).is_file() and args.layout is None:
            layout = VocabLayout.from_dict(json.loads((folder / PROJECT_FILE).read_text())["layout"])
            image_path = image_path or folder / "image_tokenizer"
    elif args.tokenizer:
        path = Path(args.tokenizer)
        text = TextTokenizer.from_folder(path) if path.is_dir() else TextTokenizer.from_file(path)
    else:
        raise DataError("give --model-folder, or --tokenizer with --image-tokenizer and --layout")
    if image_path is None or (layout is None and args.layout is None):
        raise DataError("without a project model folder, give --image-tokenizer PATH and --layout NAME")
    device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    image = ImageTokenizer.from_pretrained(image_path).to(device)
    if layout is None:
        options = {"codebook_size": image.codebook_size, "downsample": image.downsample} if args.layout == "compact" else {}
        layout = get_layout(args.layout, tokenizer=text, **options)
    return Tokenizers(text, image, layout)
