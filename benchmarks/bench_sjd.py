"""Speculative Jacobi decoding vs plain decoding: step compression and wall-clock speedup, side by side.

    python benchmarks/bench_sjd.py                                  # random ~40M model on CPU
    python benchmarks/bench_sjd.py --model PATH --size 64           # a trained project or official folder
    python benchmarks/bench_sjd.py --preset lumina-mgpt-7b --device cuda --size 768 --quant int4

Step compression = image tokens per decode forward of one prompt (plain decoding: exactly 1).
SJD gains only where the model is confident: a randomly initialized model spreads its probability over
the top-k codes, so its drafts are rarely accepted and compression stays near 1. `--logit-scale`
multiplies the random model's head as a stand-in for a confident model (it is not a trained model).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lumina_mgpt.formats import get_layout, grid_shape
from lumina_mgpt.generation.engine import Engine
from lumina_mgpt.generation.pipeline import Pipeline, make_settings
from lumina_mgpt.model import ModelConfig, Transformer, pack_linear_weights, quantize_model
from lumina_mgpt.model_folder import FAMILY_DEFAULTS

SMALL = dict(hidden_size=512, intermediate_size=1376, num_layers=8, num_heads=8, num_kv_heads=8)
PROMPTS = ["a red circle above a blue square", "two green triangles", "a yellow star on the left",
           "three purple squares"]


def random_setup(args):
    """A random model with a v1-shaped vocabulary (65,536 ids, 8,192 codes, 16x downsampling) and token prompts."""
    layout = get_layout("compact", text_vocab_size=65536 - 8192 - 134, codebook_size=8192, downsample=16)
    if args.preset:
        config = ModelConfig.preset(args.preset, vocab_size=layout.vocab_size, max_position_embeddings=8192)
    else:
        config = ModelConfig(vocab_size=layout.vocab_size, max_position_embeddings=8192, qk_norm_rows=8, **SMALL)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(args.device):
        model = Transformer(config).to(dtype).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(args.logit_scale)
    if args.quant:
        quantize_model(model, args.quant)
    else:
        pack_linear_weights(model)  # as the Pipeline does on CPU; a no-op on CUDA
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, 30000, 40)) + [layout.separator_id] for _ in range(args.images)]
    # The random model is v1-shaped: sample as official v1 does.
    settings = make_settings(FAMILY_DEFAULTS["lumina-mgpt"], cfg=args.cfg, top_k=args.top_k)
    description = f"random {config.num_parameters / 1e6:.0f}M model, head x{args.logit_scale}"
    return Engine(model, layout), layout, prompts, settings, description


def model_setup(args):
    """A model folder through the Pipeline: its layout, its prompts, its sampling defaults."""
    pipe = Pipeline.from_pretrained(args.model, device=args.device, quant=args.quant)
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
    prompts = [list(pipe.prompt_ids(text, args.size, args.size)) for text in texts]
    settings = pipe.settings(cfg=args.cfg, top_k=args.top_k)
    return pipe.engine, pipe.layout, prompts, settings, f"{args.model}"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_mode(engine, prompts, settings, args, window):
    """Generate every prompt (batches of --batch, seed = index); returns (seconds, decode forwards, tokens)."""
    seconds, forwards, tokens = 0.0, 0, 0
    for start in range(0, len(prompts), args.batch):
        chunk = prompts[start: start + args.batch]
        seeds = list(range(start, start + len(chunk)))
        synchronize(args.device)
        begin = time.perf_counter()
        engine.generate_images(chunk, args.size, args.size, settings, seeds, progress=False, sjd_window=window)
        synchronize(args.device)
        seconds += time.perf_counter() - begin
        forwards += engine.last_stats.forwards
        tokens += engine.last_stats.tokens
    return seconds, forwards, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (project or official); default: a random model")
    parser.add_argument("--preset", help="random model preset (default: a ~40M small config)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quant", help="int8 or int4 (CUDA)")
    parser.add_argument("--size", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--images", type=int, default=4, help="images per mode (seeds 0..images-1)")
    parser.add_argument("--batch", type=int, default=1,
                        help="prompts per call; a batch runs until its slowest row is done")
    parser.add_argument("--windows", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--cfg", type=float, help="default: the model's own; official v1's for a random model")
    parser.add_argument("--top-k", type=int, help="default: the model's own; official v1's for a random model")
    parser.add_argument("--logit-scale", type=float, default=1.0, help="random model only: multiply the head")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all modes; the fastest counts (default: 3)")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    engine, layout, prompts, settings, description = model_setup(args) if args.model else random_setup(args)
    rows, cols = grid_shape(args.size, args.size, layout)
    print(f"{description}; device {args.device}; quant {args.quant or 'none'}; {args.size}x{args.size} = "
          f"{rows * (cols + 1) + 1} tokens; cfg {settings.cfg}, top-k {settings.image.top_k}, "
          f"temperature {settings.image.temperature}; "
          f"{args.images} images, batch {args.batch}")
    # Warm-up (compilation and CUDA graphs on CUDA) for every mode, then the measured runs.
    for window in [None, *args.windows]:
        engine.generate_images(prompts[:args.batch], args.size, args.size, settings, [0] * len(prompts[:args.batch]),
                               progress=False, sjd_window=window)
    # The modes take turns, --repeats rounds, and each keeps its fastest round: every mode meets the
    # same contention on a shared machine.
    modes = [None, *args.windows]
    results = {}
    for _ in range(args.repeats):
        for window in modes:
            seconds, forwards, tokens = run_mode(engine, prompts, settings, args, window)
            if window not in results or seconds < results[window][0]:
                results[window] = (seconds, forwards, tokens)
    print(f"{'mode':>10} {'forwards':>9} {'tokens/forward':>15} {'seconds':>9} {'speedup':>8}")
    plain_seconds = results[None][0]
    for window in modes:
        seconds, forwards, tokens = results[window]
        name = "plain" if window is None else f"SJD L={window}"
        print(f"{name:>10} {forwards:9d} {tokens / forwards:15.2f} {seconds:9.2f} {plain_seconds / seconds:8.2f}")


if __name__ == "__main__":
    main()
