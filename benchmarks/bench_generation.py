"""Image-token throughput: our engine vs the official approach, same random weights, one process.

The reference is transformers' ChameleonForConditionalGeneration + generate(), with classifier-free
guidance as a logits processor that runs the unconditional pass as its own forward (transformers'
UnbatchedClassifierFreeGuidanceLogitsProcessor, which the official code adapts) and a processor
that forces the Uni-Rep structure. Ours: one batched forward for conditional and unconditional
rows on a static KV cache (compiled on CUDA).

    python benchmarks/bench_generation.py                       # small config on CPU
    python benchmarks/bench_generation.py --preset lumina-mgpt-7b --device cuda --size 768

On CUDA it also prints the achieved memory bandwidth of our decode step (weights + KV cache read
per step / step time) as a fraction of the device's peak (--peak-gbps, default H100 SXM 3350).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lumina_mgpt.formats import get_layout, grid_shape
from lumina_mgpt.generation.engine import Engine
from lumina_mgpt.generation.pipeline import make_settings
from lumina_mgpt.model import ModelConfig, load_model, pack_linear_weights
from lumina_mgpt.model_folder import FAMILY_DEFAULTS

SMALL = dict(hidden_size=512, intermediate_size=1376, num_layers=8, num_heads=8, num_kv_heads=8)


def build_reference(config: ModelConfig, folder: Path, dtype: torch.dtype, device: str):
    """A random transformers Chameleon with our config's shapes, saved so that ours loads the same weights."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    hf_config = ChameleonConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, max_position_embeddings=config.max_position_embeddings,
        # No IMGIMG names: transformers would otherwise mask the image-code logits it is asked to sample.
        vocabulary_map={"<image>": 3},
        vq_config=dict(embed_dim=4, num_embeddings=16, latent_channels=4, base_channels=32,
                       channel_multiplier=[1], num_res_blocks=1, resolution=16),
    )
    with torch.device("meta"):
        reference = ChameleonForConditionalGeneration(hf_config)
    reference = reference.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(0, 0.02) if parameter.dim() > 1 else parameter.fill_(1.0)
        for name, parameter in reference.named_parameters():
            if name.endswith("norm.bias"):
                parameter.zero_()
    reference.eval().save_pretrained(folder)
    return reference


def reference_generate(reference, layout, prompt, width, height, cfg, top_k, seed):
    """The official approach: generate() one prompt at a time, unconditional pass as a separate forward."""
    from transformers import LogitsProcessor, LogitsProcessorList, UnbatchedClassifierFreeGuidanceLogitsProcessor

    rows, cols = grid_shape(width, height, layout)
    step = layout.pixels_per_indicator
    header = [layout.start_image_id, layout.size_indicator_ids[height // step], layout.size_indicator_ids[width // step]]
    device = reference.device
    code_ids = torch.as_tensor(layout.code_ids, device=device)

    class ForceUniRep(LogitsProcessor):
        def __init__(self, start):
            self.start = start

        def __call__(self, input_ids, scores):
            j = input_ids.shape[1] - self.start
            allowed = torch.full_like(scores, float("-inf"))
            if j == rows * (cols + 1):
                allowed[:, layout.end_image_id] = 0
            elif j % (cols + 1) == cols:
                allowed[:, layout.end_line_id] = 0
            else:
                allowed[:, code_ids] = 0
            return scores + allowed

    input_ids = torch.as_tensor([list(prompt) + header], device=device)
    processors = LogitsProcessorList([
        UnbatchedClassifierFreeGuidanceLogitsProcessor(cfg, reference, torch.as_tensor([header], device=device)),
        ForceUniRep(input_ids.shape[1]),
    ])
    torch.manual_seed(seed)
    out = reference.generate(
        input_ids, logits_processor=processors, max_new_tokens=rows * (cols + 1) + 1, min_new_tokens=rows * (cols + 1) + 1,
        do_sample=True, top_k=top_k, temperature=1.0, pad_token_id=layout.pad_id, eos_token_id=None,
    )
    return out[0, input_ids.shape[1]:]


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="model preset (default: a ~40M small config)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--batch", type=int, default=4, help="prompts per batch for our batched run")
    parser.add_argument("--cfg", type=float, help="default: the official v1 model's (FAMILY_DEFAULTS)")
    parser.add_argument("--top-k", type=int, help="default: the official v1 model's (FAMILY_DEFAULTS)")
    parser.add_argument("--peak-gbps", type=float, default=3350.0, help="device peak memory bandwidth, GB/s")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on CUDA, else float32")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine; the fastest counts (default: 3)")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    if args.dtype:
        dtype = getattr(torch, args.dtype)
    else:
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    # A v1-shaped vocabulary: 65,536 ids with 8,192 codes at 16x downsampling.
    layout = get_layout("compact", text_vocab_size=65536 - 8192 - 134, codebook_size=8192, downsample=16)
    if args.preset:
        config = ModelConfig.preset(args.preset, vocab_size=layout.vocab_size, max_position_embeddings=8192)
    else:
        config = ModelConfig(vocab_size=layout.vocab_size, max_position_embeddings=8192, qk_norm_rows=8, **SMALL)
    print(f"config: {config.num_parameters / 1e6:.0f}M parameters, vocab {config.vocab_size}, device {args.device}, {dtype}")

    with tempfile.TemporaryDirectory() as tmp:
        reference = None if args.skip_reference else build_reference(config, Path(tmp), dtype, args.device)
        if reference is None:
            from lumina_mgpt.model import Transformer

            with torch.device(args.device):
                ours = Transformer(config).to(dtype).eval()
        else:
            ours = load_model(tmp, device=args.device, dtype=dtype).eval()
    packed = pack_linear_weights(ours)  # as the Pipeline does on CPU; a no-op on CUDA

    size = args.size
    rows, cols = grid_shape(size, size, layout)
    tokens_per_image = rows * (cols + 1) + 1
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, 30000, 40)) + [layout.separator_id] for _ in range(args.batch)]
    # The random model is v1-shaped: sample as official v1 does.
    settings = make_settings(FAMILY_DEFAULTS["lumina-mgpt"], cfg=args.cfg, top_k=args.top_k)
    args.cfg, args.top_k = settings.cfg, settings.image.top_k
    engine = Engine(ours, layout)

    def one_prompt():
        engine.generate_images(prompts[:1], size, size, settings, [0], progress=False)

    def all_prompts():
        engine.generate_images(prompts, size, size, settings, list(range(args.batch)), progress=False)

    def reference_one():
        reference_generate(reference, layout, prompts[0], size, size, args.cfg, args.top_k, 0)

    # Warm-up (compilation on CUDA), then the runs alternate so that each meets the same contention.
    runs = {"one": one_prompt, "batched": all_prompts}
    if reference is not None:
        runs["reference"] = reference_one
    for fn in runs.values():
        fn()
    seconds = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            seconds[name] = min(seconds[name], timed(fn, args.device))
    one, batched = seconds["one"], seconds["batched"]
    ours_one = tokens_per_image / one
    ours_batched = tokens_per_image * args.batch / batched
    print(f"image: {size}x{size}, {tokens_per_image} tokens, cfg {args.cfg}, top-k {args.top_k}; "
          f"{packed} linear weights packed; {torch.get_num_threads()} threads; best of {args.repeats}")
    print(f"ours, 1 prompt (2 rows with CFG):       {ours_one:8.1f} image tokens/s")
    print(f"ours, {args.batch} prompts ({2 * args.batch} rows with CFG):     {ours_batched:8.1f} image tokens/s")

    if args.device.startswith("cuda"):
        weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
        kv_bytes_per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * ours.lm_head.weight.element_size()
        prompt_len = len(prompts[0]) + 3
        # The static cache is read in full each step (masked); count the whole allocation.
        kv_bytes = 2 * kv_bytes_per_token * (prompt_len + tokens_per_image)
        step_time = one / tokens_per_image
        achieved = (weight_bytes + kv_bytes) / step_time / 1e9
        print(f"decode step: {step_time * 1e3:.2f} ms, {achieved:.0f} GB/s = {achieved / args.peak_gbps:.0%} of {args.peak_gbps:.0f} GB/s peak")

    if reference is not None:
        ref_rate = tokens_per_image / seconds["reference"]
        print(f"reference (transformers generate + CFG processor), 1 prompt: {ref_rate:8.1f} image tokens/s")
        print(f"ratio ours/reference: 1 prompt {ours_one / ref_rate:.2f}x, batched {ours_batched / ref_rate:.2f}x")


if __name__ == "__main__":
    main()
