"""`lumina eval shapes`: run ShapesEval on a model (or on ground-truth renders) and print the
per-category table; optionally write the full report as JSON."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=["shapes"], help="the benchmark to run")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    parser.add_argument(
        "--limit", type=int, default=None, help="evaluate about N prompts, keeping category shares"
    )
    parser.add_argument(
        "--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="sampling seed of the first image; image k uses seed + k"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="prompts generated per call")
    parser.add_argument("--top-k", type=int, default=None, help="image top-k (default: the model's)")
    parser.add_argument("--sjd-window", type=int, default=None, help="decode with speculative Jacobi decoding")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON here")
    parser.add_argument(
        "--ground-truth",
        action="store_true",
        help="render each prompt's own spec instead of generating (checks the analyzer: ~1.0)",
    )
    parser.add_argument(
        "--degrade",
        default=None,
        metavar="KIND",
        help="with --ground-truth: degrade the renders first (downscale2, downscale4, jpeg30, "
        "noise12, color_jitter, vq_like)",
    )


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from lumina_mgpt.errors import DataError
    from lumina_mgpt.shapes.evaluate import (
        evaluate,
        format_table,
        ground_truth_generator,
        limit_prompts,
        write_report,
    )
    from lumina_mgpt.shapes.prompts import load_eval_prompts

    if args.degrade is not None and not args.ground_truth:
        raise DataError("--degrade only applies to --ground-truth renders")
    prompts = list(load_eval_prompts())
    if args.limit is not None:
        prompts = limit_prompts(prompts, args.limit)
    if args.ground_truth:
        generate_fn = ground_truth_generator(prompts, args.seed, args.degrade)
    else:
        from lumina_mgpt.generation.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(args.model)
        generated = 0

        def generate_fn(captions, width, height):
            # Consecutive seeds over the whole run, so no two prompts share one.
            nonlocal generated
            seed = args.seed + generated
            generated += len(captions)
            return pipe.generate(
                captions, width=width, height=height, cfg=args.cfg, seed=seed, top_k=args.top_k,
                sjd_window=args.sjd_window, progress=False,
            )

    def show_progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} prompts", end="" if done < total else "\n", file=sys.stderr)

    report = evaluate(generate_fn, prompts, batch_size=args.batch_size, progress=show_progress)
    print(format_table(report))
    if args.json is not None:
        write_report(report, Path(args.json))
    return 0
