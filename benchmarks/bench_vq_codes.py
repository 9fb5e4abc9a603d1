"""What the codes of an image tokenizer depend on, measured on the shapes world.

    python benchmarks/bench_vq_codes.py                         # the embedded model's tokenizer
    python benchmarks/bench_vq_codes.py PATH [PATH ...]         # any tokenizer folders, side by side

For each tokenizer, on seeded 64x64 renders of every GenEval category:
- H(code | patch pixels): the entropy of a patch's code among patches with identical pixels. It is
  noise that a language model trained on these codes must predict and cannot: 0 when a code is a
  function of its patch alone; large when the encoder folds the rest of the image into every code.
- how many codes one plain background patch receives, and the most common one's share;
- decode -> encode stability (share of codes returned unchanged);
- the ShapesEval ceiling: the held-out prompts' ground-truth renders passed through encode -> decode
  and scored by the analyzer (what a perfect language model could reach with this tokenizer).
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

import numpy as np
import torch

from lumina_mgpt.shapes.evaluate import evaluate, ground_truth_generator, limit_prompts
from lumina_mgpt.shapes.prompts import load_eval_prompts
from lumina_mgpt.shapes.world import render, sample_scene
from lumina_mgpt.vision import ImageTokenizer

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def code_noise(tokenizer: ImageTokenizer, renders: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    images = [render(sample_scene(rng, 64, 64, CATEGORIES[i % len(CATEGORIES)])) for i in range(renders)]
    codes = torch.cat([tokenizer.encode(images[i : i + 50]) for i in range(0, renders, 50)]).numpy()
    again = torch.cat([tokenizer.encode(tokenizer.decode_to_pil(torch.from_numpy(codes[i : i + 50])))
                       for i in range(0, renders, 50)]).numpy()  # fmt: skip
    d = tokenizer.downsample
    by_patch: dict[bytes, Counter] = defaultdict(Counter)
    for image, grid in zip(images, codes):
        pixels = np.asarray(image)
        for row in range(grid.shape[0]):
            for col in range(grid.shape[1]):
                by_patch[pixels[row * d : (row + 1) * d, col * d : (col + 1) * d].tobytes()][int(grid[row, col])] += 1
    total = codes.size
    entropy = 0.0
    for counts in by_patch.values():
        p = np.array(list(counts.values()), dtype=np.float64)
        entropy += p.sum() / total * float(-(p / p.sum() * np.log(p / p.sum())).sum())
    background = max(by_patch.values(), key=lambda counts: sum(counts.values()))
    return {
        "distinct_patches": len(by_patch),
        "entropy": entropy,
        "background_codes": len(background),
        "background_top_share": background.most_common(1)[0][1] / sum(background.values()),
        "stability": float((codes == again).mean()),
    }


def ceiling(tokenizer: ImageTokenizer, prompts: int, seed: int) -> float:
    chosen = limit_prompts(list(load_eval_prompts()), prompts)
    renders = ground_truth_generator(chosen, seed)

    def through_tokenizer(captions, width, height):
        return tokenizer.decode_to_pil(tokenizer.encode(renders(captions, width, height)))

    return evaluate(through_tokenizer, chosen, batch_size=32).overall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizers", nargs="*", help="tokenizer folders (default: the embedded model's)")
    parser.add_argument("--renders", type=int, default=300, help="renders for the code statistics")
    parser.add_argument("--prompts", type=int, default=150, help="held-out prompts for the ceiling")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not args.tokenizers:
        from lumina_mgpt.model_folder import EMBEDDED_MODEL

        args.tokenizers = [str(EMBEDDED_MODEL / "image_tokenizer")]
    print("| tokenizer | distinct patches | H(code given patch) nats | codes of the background patch (top share) "
          "| decode->encode stable | ShapesEval ceiling |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for path in args.tokenizers:
        tokenizer = ImageTokenizer.from_pretrained(path).eval()
        with torch.inference_mode():
            noise = code_noise(tokenizer, args.renders, args.seed)
            score = ceiling(tokenizer, args.prompts, args.seed)
        print(f"| {path} | {noise['distinct_patches']} | {noise['entropy']:.2f} | {noise['background_codes']} "
              f"({noise['background_top_share']:.0%}) | {noise['stability']:.1%} | {score:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
