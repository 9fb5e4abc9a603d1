"""Choose a shapes model's sampling defaults (CFG scale, image top-k, temperature) on validation prompts.

    python benchmarks/tune_shapes_sampling.py --model runs/shapes/export --cfg 2 4 6 --top-k 32 128 --temperature 0.8 1

The validation prompts are drawn like ShapesEval's (same categories, shares and canvas sizes) from
another seed, with every held-out caption removed, so the held-out set is never used for tuning.
Prints one ShapesEval-style overall score per setting.
"""

from __future__ import annotations

import argparse
import itertools
import time

from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.shapes.evaluate import evaluate, limit_prompts, pipeline_generator
from lumina_mgpt.shapes.prompts import build_eval_prompts, is_held_out

VALIDATION_SEED = 2024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the embedded model)")
    parser.add_argument("--cfg", type=float, nargs="+", default=[4.0])
    parser.add_argument("--top-k", type=int, nargs="+", default=[128])
    parser.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    parser.add_argument("--prompts", type=int, default=120, help="validation prompts per setting")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the first image")
    args = parser.parse_args()

    candidates = [p for p in build_eval_prompts(VALIDATION_SEED) if not is_held_out(p.caption)]
    prompts = limit_prompts(candidates, args.prompts)
    pipe = Pipeline.from_pretrained(args.model)
    print(f"{len(prompts)} validation prompts (none held out)")
    print("| cfg | top-k | temperature | overall | seconds |")
    print("|---|---|---|---|---|")
    for cfg, top_k, temperature in itertools.product(args.cfg, args.top_k, args.temperature):
        generate = pipeline_generator(pipe, args.seed, cfg=cfg, top_k=top_k, temperature=temperature)
        start = time.perf_counter()
        report = evaluate(generate, prompts)
        seconds = time.perf_counter() - start
        print(f"| {cfg:g} | {top_k} | {temperature:g} | {report.overall:.3f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
