"""The decode step compiled (torch.compile, inductor, fullgraph) vs eager, side by side on the same weights.

    python benchmarks/bench_compiled_step.py                          # CPU, random 92M v1-shaped model
    python benchmarks/bench_compiled_step.py --size 128 --batch 1 4 --windows 8

For each batch size and decoding mode (plain, SJD with each window) it generates one image per prompt
with each engine, compiling (or warming up) on the first call, then times --repeats calls of each engine
alternately and keeps each engine's fastest (on a shared machine the other jobs' load changes within
seconds; alternating and taking the minimum compares the two under the same, least, contention). It
checks that the compiled engine emits the eager engine's tokens. Step time = (call seconds - prefill
seconds) / decode forwards, the prefill timed separately (it is the same code for both engines). On CUDA
the compiled engine uses mode="reduce-overhead" (a CUDA graph per step); on CPU plain inductor.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lumina_mgpt.formats import get_layout, grid_shape
from lumina_mgpt.generation.engine import Engine
from lumina_mgpt.generation.pipeline import make_settings
from lumina_mgpt.model import ModelConfig, Transformer
from lumina_mgpt.model_folder import FAMILY_DEFAULTS

SMALL = dict(hidden_size=512, intermediate_size=1376, num_layers=8, num_heads=8, num_kv_heads=8)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_run(engine, prompts, size, settings, window, device):
    """(seconds, grids) of one generate_images call with seeds 1..len(prompts)."""
    synchronize(device)
    start = time.perf_counter()
    grids = engine.generate_images(prompts, size, size, settings, list(range(1, len(prompts) + 1)),
                                   progress=False, sjd_window=window)
    synchronize(device)
    return time.perf_counter() - start, grids


def prefill_seconds(model, prompts, layout, size, device, repeats=3):
    """Best of `repeats` prefills of the guided batch (conditional and unconditional rows), as the engine runs it."""
    rows = len(prompts) * 2
    length = len(prompts[0]) + 3
    ids = torch.randint(0, layout.vocab_size, (rows, length), device=device)
    lengths = torch.full((rows,), length, device=device)
    rows_, cols = grid_shape(size, size, layout)
    best = float("inf")
    for _ in range(repeats):
        cache = model.new_cache(rows, length + rows_ * (cols + 1) + 64, device=device)
        synchronize(device)
        start = time.perf_counter()
        model.prefill(ids, cache, lengths)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="model preset (default: a 92M small config)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=128, help="square image side in pixels")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="prompts per call")
    parser.add_argument("--windows", type=int, nargs="*", default=[8], help="SJD windows (none: plain only)")
    parser.add_argument("--logit-scale", type=float, default=1.0, help="multiply the random head (SJD acceptance)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per engine and mode; the fastest counts")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    # A v1-shaped vocabulary: 65,536 ids with 8,192 codes at 16x downsampling; sampled as official v1.
    layout = get_layout("compact", text_vocab_size=65536 - 8192 - 134, codebook_size=8192, downsample=16)
    if args.preset:
        config = ModelConfig.preset(args.preset, vocab_size=layout.vocab_size, max_position_embeddings=8192)
    else:
        config = ModelConfig(vocab_size=layout.vocab_size, max_position_embeddings=8192, qk_norm_rows=8, **SMALL)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = Transformer(config).to(dtype).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(args.logit_scale)
    settings = make_settings(FAMILY_DEFAULTS["lumina-mgpt"])
    rows, cols = grid_shape(args.size, args.size, layout)
    rng = np.random.default_rng(0)
    print(f"{config.num_parameters / 1e6:.0f}M parameters, vocab {config.vocab_size}, {dtype}, device {args.device}, "
          f"{torch.get_num_threads()} threads; {args.size}x{args.size} = {rows * (cols + 1) + 1} tokens; "
          f"cfg {settings.cfg:g}, top-k {settings.image.top_k}, temperature {settings.image.temperature:g}")
    print(f"{'batch':>5} {'mode':>8} {'forwards':>8} {'eager ms/step':>13} {'compiled ms/step':>16} {'ratio':>6} "
          f"{'compile s':>9} {'same tokens':>11}")
    eager = Engine(model, layout, compile_decode=False)
    compiled = Engine(model, layout, compile_decode=True if cuda else {})
    for batch in args.batch:
        prompts = [list(rng.integers(0, 30000, 40)) + [layout.separator_id] for _ in range(batch)]
        prefill = prefill_seconds(model, prompts, layout, args.size, args.device)
        for window in [None, *args.windows]:
            _, eager_grids = timed_run(eager, prompts, args.size, settings, window, args.device)  # warm-up
            compile_seconds, compiled_grids = timed_run(compiled, prompts, args.size, settings, window, args.device)
            same = all(np.array_equal(a, b) for a, b in zip(eager_grids, compiled_grids))
            forwards = eager.last_stats.forwards
            eager_seconds = compiled_seconds = float("inf")
            for _ in range(args.repeats):
                eager_seconds = min(
                    eager_seconds, timed_run(eager, prompts, args.size, settings, window, args.device)[0]
                )
                compiled_seconds = min(
                    compiled_seconds, timed_run(compiled, prompts, args.size, settings, window, args.device)[0]
                )
            eager_step = (eager_seconds - prefill) / forwards * 1e3
            compiled_step = (compiled_seconds - prefill) / forwards * 1e3
            mode = "plain" if window is None else f"SJD {window}"
            print(f"{batch:5d} {mode:>8} {forwards:8d} {eager_step:13.2f} {compiled_step:16.2f} "
                  f"{eager_step / compiled_step:6.2f} {compile_seconds:9.1f} {str(same):>11}", flush=True)


if __name__ == "__main__":
    main()
