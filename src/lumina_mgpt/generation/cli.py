"""`lumina generate`: text to image, PNGs with their settings in the metadata."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="+", help="one or more prompts (quote each)")
    parser.add_argument("--model", help="model folder (project or official); default: the embedded shapes model")
    parser.add_argument("--image-tokenizer", help="image tokenizer file or folder, if not in or above the model folder")
    parser.add_argument("--width", type=int, help="image width in pixels (default: the model's)")
    parser.add_argument("--height", type=int, help="image height in pixels (default: the model's)")
    parser.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed+i (default 0)")
    parser.add_argument("--cfg", type=float, help="classifier-free guidance scale; 1 disables it (default: the model's, 4.0 official)")
    parser.add_argument("--top-k", type=int, help="image top-k (default: the model's; official v1 2000, v2 4096)")
    parser.add_argument("--top-p", type=float, default=1.0, help="image top-p (default 1.0: off)")
    parser.add_argument("--temperature", type=float, help="sampling temperature; 0 is greedy (default 1.0)")
    parser.add_argument("--batch-size", type=int, default=8, help="images decoded together (default 8)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--sjd", action="store_true",
                        help="speculative Jacobi decoding: the same image distribution in fewer forwards")
    parser.add_argument("--sjd-window", type=int, metavar="L",
                        help="SJD draft tokens verified per forward; implies --sjd (default 16)")
    parser.add_argument("--quant", metavar="MODE",
                        help="quantize the decoder's linear weights: int8 (CPU and CUDA) or int4 (CUDA only)")
    parser.add_argument("--out", default="outputs", help="output folder (default ./outputs)")


def run(args: argparse.Namespace) -> int:
    from lumina_mgpt.generation.pipeline import Pipeline, save_png
    from lumina_mgpt.generation.speculative import DEFAULT_WINDOW

    pipe = Pipeline.from_pretrained(
        args.model, image_tokenizer=args.image_tokenizer, device=args.device, quant=args.quant
    )
    sjd_window = args.sjd_window if args.sjd_window is not None else DEFAULT_WINDOW if args.sjd else None
    images = pipe.generate(
        args.prompt, width=args.width, height=args.height, num_images=args.num_images, seed=args.seed,
        cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature, batch_size=args.batch_size,
        sjd_window=sjd_window,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        prompt = args.prompt[i // args.num_images]
        slug = "".join(c if c.isalnum() else "-" for c in prompt.lower())[:40].strip("-")
        path = out / f"{i:03d}-{slug}-seed{args.seed + i}.png"
        save_png(image, path)
        print(path)
    return 0
