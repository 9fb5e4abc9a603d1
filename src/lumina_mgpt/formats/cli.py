"""`lumina tokenize`: show how a model writes a text-to-image request in its ids."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the text-to-image prompt")
    parser.add_argument("--model", help="model folder, hub id (owner/name) or 'embedded'; its text tokenizer, "
                                        "layout and default size are used (default: the embedded shapes model)")
    parser.add_argument("--width", type=int, help="image width in pixels (default: the model's)")
    parser.add_argument("--height", type=int, help="image height in pixels (default: the model's)")
    parser.add_argument("--no-size", action="store_true",
                        help="use the prompt without the size phrase, as v2 may (default: with it)")
    parser.add_argument("--ids", action="store_true", help="also print the prompt ids (default: counts only)")


def run(args: argparse.Namespace) -> int:
    from lumina_mgpt.formats.conversation import encode_generation_prompt
    from lumina_mgpt.formats.prompts import text_to_image_prompt
    from lumina_mgpt.formats.unirep import grid_shape, image_block_length
    from lumina_mgpt.generation.checks import check_image_dimensions, check_prompts
    from lumina_mgpt.model_folder import read_model_info

    (prompt,) = check_prompts(args.prompt)
    info = read_model_info(args.model, find_image_tokenizer=False)
    layout, tokenizer = info.layout, info.text_tokenizer
    width, height = check_image_dimensions(
        info.defaults.size[0] if args.width is None else args.width,
        info.defaults.size[1] if args.height is None else args.height,
        layout,
    )
    rows, cols = grid_shape(width, height, layout)
    question = text_to_image_prompt(prompt, width, height, include_size=not args.no_size)
    prompt_ids = encode_generation_prompt([question], [], tokenizer, layout)
    block = image_block_length(width, height, layout)
    print(f"model: {info.folder}")
    print(f"layout: {layout.name} (vocab {layout.vocab_size}, fingerprint {layout.fingerprint()[:16]})")
    print(f"prompt: {len(prompt_ids)} ids")
    print(f"image: {width}x{height} -> grid {rows}x{cols} (rows x cols), block {block} ids")
    print(f"total: {len(prompt_ids) + block} ids")
    if args.ids:
        print("ids: " + " ".join(str(i) for i in prompt_ids))
    return 0
