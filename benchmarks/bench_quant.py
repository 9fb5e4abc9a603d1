"""Weight-only quantization: logits error, weight memory and decode speed against the unquantized model.

    python benchmarks/bench_quant.py                          # CPU: fp32 vs int8 on three model sizes
    python benchmarks/bench_quant.py --device cuda            # CUDA: bf16 / int8 / int4, each plain and SJD, 7B

Logits error is ||quantized - reference|| / ||reference|| over the logits of random token sequences;
TV is the mean total-variation distance between the two next-token distributions (softmax, no top-k),
what the change means for sampling.
On CUDA every configuration is a fresh random model of --preset (default the v1 7B shape); latency is
one image of --size pixels with CFG (2 batch rows), and memory the peak allocated during generation.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import torch

from lumina_mgpt.formats import get_layout, grid_shape
from lumina_mgpt.generation.engine import Engine
from lumina_mgpt.generation.pipeline import make_settings
from lumina_mgpt.model import ModelConfig, Transformer, quantize_model
from lumina_mgpt.model_folder import FAMILY_DEFAULTS

# The random models are v1-shaped: sample as official v1 does.
SETTINGS = make_settings(FAMILY_DEFAULTS["lumina-mgpt"])

CPU_SHAPES = {
    "tiny": dict(preset="tiny"),
    "shapes (embedded model's shape)": dict(preset="shapes"),
    "small, 512 wide": dict(hidden_size=512, intermediate_size=1376, num_layers=8, num_heads=8, num_kv_heads=8),
}


def build(layout, shape: dict, device: str, dtype: torch.dtype, quant: str | None) -> Transformer:
    """A random model (seed 0, so every call gives the same weights) of a preset or explicit shape."""
    torch.manual_seed(0)
    shape = dict(shape)
    preset = shape.pop("preset", None)
    context = dict(vocab_size=layout.vocab_size, max_position_embeddings=4096)
    if preset:
        config = ModelConfig.preset(preset, **context)
    else:
        config = ModelConfig(qk_norm_rows=shape["num_heads"], **context, **shape)
    with torch.device(device):
        model = Transformer(config).to(dtype).eval()
    return quantize_model(model, quant) if quant else model


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter, counting the inner tensors (codes, scales) of quantized ones."""
    total = 0
    for parameter in model.parameters():
        data = parameter.data
        if hasattr(data, "__tensor_flatten__"):
            names, _ = data.__tensor_flatten__()
            total += sum(getattr(data, name).numel() * getattr(data, name).element_size() for name in names)
        else:
            total += data.numel() * data.element_size()
    return total


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx.float() - exact.float()).norm() / exact.float().norm())


def mean_total_variation(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float(0.5 * (approx.float().softmax(-1) - exact.float().softmax(-1)).abs().sum(-1).mean())


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def image_seconds(engine: Engine, prompt: list[int], size: int, settings, device: str, window: int | None) -> float:
    """Seconds for one image after a warm-up run (compilation, CUDA graphs)."""
    engine.generate_images([prompt], size, size, settings, [0], progress=False, sjd_window=window)
    synchronize(device)
    start = time.perf_counter()
    engine.generate_images([prompt], size, size, settings, [1], progress=False, sjd_window=window)
    synchronize(device)
    return time.perf_counter() - start


def cpu_report(args) -> None:
    layout = get_layout("compact", text_vocab_size=65536 - 8192 - 134, codebook_size=8192, downsample=16)
    rows, cols = grid_shape(args.size, args.size, layout)
    tokens = rows * (cols + 1) + 1
    prompt = list(np.random.default_rng(0).integers(0, 30000, 40)) + [layout.separator_id]
    ids = torch.randint(0, layout.vocab_size, (4, 64), generator=torch.Generator().manual_seed(1))
    print(f"CPU, fp32 vs int8 weight-only (torchao), vocab {layout.vocab_size}, image {args.size}x{args.size} "
          f"({tokens} tokens, cfg {SETTINGS.cfg:g}, top-k {SETTINGS.image.top_k}, plain decoding)")
    print(f"{'model':>32} {'params':>8} {'logits err':>11} {'TV':>8} {'weights fp32':>13} {'int8':>9} "
          f"{'tok/s fp32':>11} {'int8':>8}")
    for name, shape in CPU_SHAPES.items():
        reference = build(layout, shape, "cpu", torch.float32, None)
        quantized = build(layout, shape, "cpu", torch.float32, "int8")
        approx, exact = quantized(ids), reference(ids)
        speeds = [tokens / image_seconds(Engine(m, layout), prompt, args.size, SETTINGS, "cpu", None)
                  for m in (reference, quantized)]
        params = reference.config.num_parameters / 1e6
        error, tv = relative_error(approx, exact), mean_total_variation(approx, exact)
        print(f"{name:>32} {params:7.1f}M {error:11.4%} {tv:8.4f} {weight_bytes(reference) / 2**20:11.1f}MB "
              f"{weight_bytes(quantized) / 2**20:7.1f}MB {speeds[0]:11.1f} {speeds[1]:8.1f}")


def cuda_report(args) -> None:
    layout = get_layout("compact", text_vocab_size=65536 - 8192 - 134, codebook_size=8192, downsample=16)
    rows, cols = grid_shape(args.size, args.size, layout)
    tokens = rows * (cols + 1) + 1
    prompt = list(np.random.default_rng(0).integers(0, 30000, 40)) + [layout.separator_id]
    ids = torch.randint(0, layout.vocab_size, (2, 128), generator=torch.Generator().manual_seed(1)).cuda()
    shape = dict(preset=args.preset)
    print(f"CUDA {torch.cuda.get_device_name()}, {args.preset} shape, image {args.size}x{args.size} ({tokens} tokens), "
          f"cfg {SETTINGS.cfg:g}, top-k {SETTINGS.image.top_k}, 1 prompt; random weights "
          "(SJD acceptance is not representative)")
    print(f"{'weights':>8} {'decoding':>9} {'logits err':>11} {'TV':>8} {'weights GB':>11} {'peak GB':>8} "
          f"{'s/image':>8} {'tok/s':>7}")
    reference_logits = None
    for quant in (None, "int8", "int4"):
        model = build(layout, shape, "cuda", torch.bfloat16, quant)
        with torch.no_grad():
            logits = model(ids)
        reference_logits = logits if reference_logits is None else reference_logits
        error, tv = relative_error(logits, reference_logits), mean_total_variation(logits, reference_logits)
        engine = Engine(model, layout, compile_decode=not args.no_compile)
        for window in (None, args.window):
            torch.cuda.reset_peak_memory_stats()
            seconds = image_seconds(engine, prompt, args.size, SETTINGS, "cuda", window)
            peak = torch.cuda.max_memory_allocated() / 2**30
            decoding = "plain" if window is None else f"SJD {window}"
            print(f"{quant or 'bf16':>8} {decoding:>9} {error:11.4%} {tv:8.4f} {weight_bytes(model) / 2**30:11.2f} "
                  f"{peak:8.2f} {seconds:8.2f} {tokens / seconds:7.1f}")
        del model, engine, logits
        gc.collect()
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, help="square image side (default 128 on CPU, 512 on CUDA)")
    parser.add_argument("--preset", default="lumina-mgpt-7b", help="CUDA: model preset (default the v1 7B shape)")
    parser.add_argument("--window", type=int, default=16, help="CUDA: SJD window")
    parser.add_argument("--no-compile", action="store_true", help="CUDA: run the decode step eagerly")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    cuda = args.device.startswith("cuda")
    args.size = args.size or (512 if cuda else 128)
    cuda_report(args) if cuda else cpu_report(args)


if __name__ == "__main__":
    main()
