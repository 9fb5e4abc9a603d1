"""Encode and decode throughput (images/s) of the image tokenizers at one resolution.

Full-size Chameleon VQGAN and SBER-MoVQGAN 270M are built with random weights (their speed does not
depend on the values); the small VQ is loaded from --small when given, else randomly initialized.
CPU runs fp32; CUDA (when present) runs bf16.

    .venv/bin/python benchmarks/bench_image_tokenizers.py --size 256 --batch 2 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from lumina_mgpt.vision.config import CHAMELEON, MOVQGAN_270M, SMALL
from lumina_mgpt.vision.tokenizer import ImageTokenizer


def measure(
    tokenizer: ImageTokenizer, size: int, batch: int, repeats: int, device: torch.device
) -> tuple[float, float]:
    """(encode images/s, decode images/s) over `repeats` batches after one warm-up batch."""
    pixels = torch.rand(batch, 3, size, size, device=device) * 2 - 1

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    codes = tokenizer.encode(pixels)  # warm-up: kernel selection, allocator
    tokenizer.decode(codes)
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        codes = tokenizer.encode(pixels)
    synchronize()
    encode_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        tokenizer.decode(codes)
    synchronize()
    decode_seconds = time.perf_counter() - start
    return batch * repeats / encode_seconds, batch * repeats / decode_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="square image side in px (default 256)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--small", help="folder of a trained small VQ (default: random weights)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--small-batch", type=int, default=64, help="batch for the small VQ (default 64)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"size {args.size}px, CPU threads {torch.get_num_threads()}, devices {[d.type for d in devices]}")
    print(f"{'tokenizer':<22}{'device':<8}{'dtype':<10}{'batch':>6}{'grid':>8}{'encode img/s':>15}{'decode img/s':>15}")
    for name, build, batch in (
        ("chameleon (random)", lambda: ImageTokenizer(CHAMELEON), args.batch),
        ("movqgan-270m (random)", lambda: ImageTokenizer(MOVQGAN_270M), args.batch),
        (
            "small vq" + ("" if args.small else " (random)"),
            lambda: ImageTokenizer.from_pretrained(args.small) if args.small else ImageTokenizer(SMALL),
            args.small_batch,
        ),
    ):
        tokenizer = build().eval()
        for device in devices:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            tokenizer.to(device, dtype)
            encode_rate, decode_rate = measure(tokenizer, args.size, batch, args.repeats, device)
            grid = f"{args.size // tokenizer.downsample}x{args.size // tokenizer.downsample}"
            dtype_name = str(dtype).removeprefix("torch.")
            row = f"{name:<22}{device.type:<8}{dtype_name:<10}{batch:>6}{grid:>8}"
            print(f"{row}{encode_rate:>15.2f}{decode_rate:>15.2f}")
        del tokenizer


if __name__ == "__main__":
    main()
