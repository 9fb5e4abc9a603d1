"""`lumina tokenize`: show how a text-to-image request is written in a layout's ids."""

from __future__ import annotations

import argparse

from lumina_mgpt.formats.layout import LAYOUT_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the text-to-image prompt")
    parser.add_argument("--width", type=int, default=512, help="image width in pixels (default 512)")
    parser.add_argument("--height", type=int, default=512, help="image height in pixels (default 512)")
    parser.add_argument("--layout", choices=LAYOUT_NAMES, default="lumina-mgpt", help="vocabulary layout")
    parser.add_argument("--tokenizer", required=True, help="the model's tokenizer.json")
    parser.add_argument("--no-size", action="store_true", help="use the prompt without the size phrase (v2)")
    parser.add_argument("--ids", action="store_true", help="also print the prompt ids")


def run(args: argparse.Namespace) -> int:
    from lumina_mgpt.formats.conversation import encode_generation_prompt
    from lumina_mgpt.formats.layout import get_layout
    from lumina_mgpt.formats.prompts import text_to_image_prompt
    from lumina_mgpt.formats.unirep import grid_shape, image_block_length
    from lumina_mgpt.text import TextTokenizer

    tokenizer = TextTokenizer.from_file(args.tokenizer)
    layout = get_layout(args.layout, tokenizer)
    rows, cols = grid_shape(args.width, args.height, layout)
    question = text_to_image_prompt(args.prompt, args.width, args.height, include_size=not args.no_size)
    prompt_ids = encode_generation_prompt([question], [], tokenizer, layout)
    block = image_block_length(args.width, args.height, layout)
    print(f"layout: {layout.name} (vocab {layout.vocab_size}, fingerprint {layout.fingerprint()[:16]})")
    print(f"prompt: {len(prompt_ids)} ids")
    print(f"image: {args.width}x{args.height} -> grid {rows}x{cols} (rows x cols), block {block} ids")
    print(f"total: {len(prompt_ids) + block} ids")
    if args.ids:
        print("ids: " + " ".join(str(i) for i in prompt_ids))
    return 0
