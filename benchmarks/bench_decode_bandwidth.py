"""Is the decode step at the memory limit? Bytes read per step / step time, next to a memory-copy
bandwidth measured in the same run; and the full-size path: random bf16 weights written to disk once,
memory-mapped by `load_model`, decoded by the engine, with the process's peak RSS.

A decode step reads every transformer weight once (for all rows of the batch together), the image-code
rows of lm_head (the engine's code head), one embedding row per batch row and the keys and values
cached so far. Those bytes divided by the step time are the achieved bandwidth. The copy bandwidth
counts bytes read plus bytes written (the STREAM "copy" convention), the stricter of the usual two.

    python benchmarks/bench_decode_bandwidth.py                                  # ~1B bf16 model
    python benchmarks/bench_decode_bandwidth.py --preset lumina-mgpt-7b --folder runs/bench-7b

The weights folder is written once (streamed, a tensor at a time, so writing costs little memory) and
reused by later runs; without --folder a temporary one is used and removed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lumina_mgpt.formats import get_layout, grid_shape
from lumina_mgpt.generation.engine import Engine
from lumina_mgpt.generation.pipeline import make_settings
from lumina_mgpt.model import ModelConfig, Transformer, load_model, pack_linear_weights
from lumina_mgpt.model_folder import FAMILY_DEFAULTS

# ~1.0B parameters of which 0.72B are transformer blocks (read every step); v1-shaped vocabulary.
ONE_BILLION = dict(hidden_size=2048, intermediate_size=5632, num_layers=14, num_heads=16, num_kv_heads=16)
WEIGHTS_FILE = "model.safetensors"
CHUNK_VALUES = 1 << 24  # random values drawn per write: 32 MB of bf16


def peak_rss_bytes() -> int:
    """The process's peak resident set (VmHWM): mapped file pages that were touched count too."""
    with open("/proc/self/status") as status:
        line = next(entry for entry in status if entry.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def write_random_checkpoint(folder: Path, config: ModelConfig, seed: int) -> None:
    """An HF Chameleon folder with random bf16 weights (norm weights 1, biases 0, the rest N(0, 0.02)),
    streamed into one safetensors file so that no full copy of the model is ever in memory."""
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in Transformer(config).state_dict().items()}
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = int(np.prod(shape)) * 2
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # keeps every tensor 8-byte aligned for the mmap loader
    generator = torch.Generator().manual_seed(seed)
    temporary = folder / (WEIGHTS_FILE + ".partial")
    with open(temporary, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        for key, shape in shapes.items():
            remaining = int(np.prod(shape))
            while remaining:
                count = min(remaining, CHUNK_VALUES)
                if key.endswith("norm.weight"):
                    chunk = torch.ones(count, dtype=torch.bfloat16)
                elif key.endswith("bias"):
                    chunk = torch.zeros(count, dtype=torch.bfloat16)
                else:
                    chunk = torch.randn(count, generator=generator).mul_(0.02).to(torch.bfloat16)
                out.write(chunk.view(torch.uint8).numpy().tobytes())
                remaining -= count
    temporary.rename(folder / WEIGHTS_FILE)
    (folder / "config.json").write_text(json.dumps(config.to_hf_config()))


def reset_peak_rss() -> None:
    """Restart VmHWM from the current resident set (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def best_seconds(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def memory_bandwidths(num_bytes: int) -> dict[str, float]:
    """GB/s of a large tensor copy (bytes copied per second, as memcpy benchmarks count it; STREAM counts
    read + written bytes, twice that) and of a read-only pass (a sum), each the best of 5."""
    source = torch.ones(num_bytes, dtype=torch.uint8)
    target = torch.empty_like(source)
    copy = num_bytes / best_seconds(lambda: target.copy_(source)) / 1e9
    read = num_bytes / best_seconds(lambda: source.view(torch.int64).sum()) / 1e9
    return {"copy": copy, "read": read}


def bytes_per_step(model: Transformer, batch_rows: int, cached_tokens: float, code_rows: int) -> float:
    """Bytes one decode step reads: the blocks' and final norm's weights (packed ones too), `code_rows` rows
    of lm_head, one embedding row per batch row, and `cached_tokens` (mean over the steps) of keys and
    values per row, in the cache's dtype."""
    config = model.config
    total = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name not in ("model.embed_tokens.weight", "lm_head.weight"):
            total += tensor.numel() * tensor.element_size()
    total += (code_rows + batch_rows) * config.hidden_size * model.lm_head.weight.element_size()
    cache_item = model.new_cache(1, 1).keys[0].element_size()
    kv_per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * cache_item
    return total + batch_rows * cached_tokens * kv_per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="a model preset (e.g. lumina-mgpt-7b); default: a ~1B config")
    parser.add_argument("--folder", type=Path, help="weights folder, written if missing (default: a temporary one)")
    parser.add_argument("--size", type=int, default=128, help="square image side in pixels (default: 128, 73 tokens)")
    parser.add_argument("--prompts", type=int, default=1, help="prompts decoded together (default: 1)")
    parser.add_argument("--buffer-mb", type=int, default=512, help="bandwidth test buffer (default: 512)")
    parser.add_argument("--no-pack", action="store_true", help="decode only from the memory-mapped weights")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    layout = get_layout("compact", text_vocab_size=65536 - 8192 - 134, codebook_size=8192, downsample=16)
    if args.preset:
        config = ModelConfig.preset(args.preset, vocab_size=layout.vocab_size)
    else:
        config = ModelConfig(vocab_size=layout.vocab_size, max_position_embeddings=4096, **ONE_BILLION)
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.folder or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / WEIGHTS_FILE).is_file():
            start = time.perf_counter()
            write_random_checkpoint(folder, config, seed=0)
            print(f"wrote random bf16 weights to {folder} in {time.perf_counter() - start:.0f} s")
        weight_bytes = (folder / WEIGHTS_FILE).stat().st_size
        bandwidths = [memory_bandwidths(args.buffer_mb << 20)]
        reset_peak_rss()  # the test buffers are freed: the peak counts from here
        rss_before = peak_rss_bytes()
        model = load_model(folder)  # memory-mapped; bf16 as stored
        rng = np.random.default_rng(0)
        prompts = [list(rng.integers(0, 30000, 40)) + [layout.separator_id] for _ in range(args.prompts)]
        settings = make_settings(FAMILY_DEFAULTS["lumina-mgpt"])  # official v1 sampling: cfg 4, top-k 2000
        batch_rows = 2 * args.prompts if settings.guided else args.prompts
        rows, cols = grid_shape(args.size, args.size, layout)
        print(
            f"model: {config.num_parameters / 1e9:.2f}B parameters, bf16 weights {weight_bytes / 1e9:.2f} GB, "
            f"{torch.get_num_threads()} threads; image {args.size}x{args.size} = {rows * (cols + 1) + 1} tokens, "
            f"{args.prompts} prompt(s), {batch_rows} rows with CFG {settings.cfg}"
        )
        results = {"mapped": decode_steps(model, layout, prompts, settings, args.size)}
        report_peak_rss("mapped weights", weight_bytes, rss_before)
        if not args.no_pack:
            pack_linear_weights(model)
            results["packed"] = decode_steps(model, layout, prompts, settings, args.size)
            report_peak_rss("after packing", weight_bytes, rss_before)
        bandwidths.append(memory_bandwidths(args.buffer_mb << 20))

    copy = max(b["copy"] for b in bandwidths)
    read = max(b["read"] for b in bandwidths)
    print(f"memory: copy {copy:.1f} GB/s (bytes copied per second; x2 read + written), read-only pass {read:.1f} GB/s")
    print("| weights | decode steps | step ms (median) | image tokens/s | GB read per step | GB/s | / copy | / read |")
    print("|---|---|---|---|---|---|---|---|")
    for name, step_times in results.items():
        step = statistics.median(step_times.tolist())
        cached = len(prompts[0]) + 3 + (len(step_times) + 1) / 2  # mean keys/values per row over the steps
        read_bytes = bytes_per_step(model, batch_rows, cached, code_rows=len(layout.code_ids))
        achieved = read_bytes / step / 1e9
        print(
            f"| {name} | {len(step_times)} | {step * 1e3:.1f} | {args.prompts / step:.2f} | {read_bytes / 1e9:.3f} "
            f"| {achieved:.1f} | {achieved / copy:.0%} | {achieved / read:.0%} |"
        )


def report_peak_rss(when: str, weight_bytes: int, rss_before: int) -> None:
    peak = peak_rss_bytes()
    print(
        f"peak RSS, {when}: {peak / 1e9:.2f} GB = {peak / weight_bytes:.3f}x the weights "
        f"({(peak - rss_before) / 1e9:.2f} GB = {(peak - rss_before) / weight_bytes:.3f}x above the pre-load peak)"
    )


def decode_steps(model: Transformer, layout, prompts, settings, size: int) -> np.ndarray:
    """Seconds of each decode step (the prefill excluded) of the second of two runs: the first faults
    mapped weights in."""
    engine = Engine(model, layout)
    stamps: list[float] = []
    for _ in range(2):
        stamps.clear()
        engine.generate_images(
            prompts, size, size, settings, list(range(len(prompts))), progress=False,
            on_step=lambda output: stamps.append(time.perf_counter()),
        )
    return np.diff(stamps)  # stamps[0] is the prefill's choice: each difference is one decode step


if __name__ == "__main__":
    main()
