"""`lumina train`: train or fine-tune a model from a TOML recipe (one process, or under torchrun)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a training recipe (.toml); see recipes/ for examples")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the run in the output folder from its newest checkpoint that loads (default: start a new run, "
        "refused when the folder holds checkpoints)",
    )
    parser.add_argument("--out", help="run folder (default: the recipe's output_dir)")
    parser.add_argument(
        "--max-steps", type=int,
        help="stop after this many optimizer steps in all, with a checkpoint (default: every step of the recipe)",
    )
    parser.add_argument("--device", help="cpu, cuda (default: this rank's GPU when CUDA is present, else cpu)")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar; the JSONL log is still written (default: a bar)"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lumina_mgpt.training.distributed import distributed_session
    from lumina_mgpt.training.recipe import Recipe
    from lumina_mgpt.training.trainer import Trainer

    recipe = Recipe.from_file(args.recipe)
    with distributed_session(args.device) as context:
        trainer = Trainer(
            recipe,
            context,
            output_dir=Path(args.out) if args.out else None,
            max_steps=args.max_steps,
            progress_bar=not args.no_progress,
        )
        final_model = trainer.train(resume=args.resume)
        if context.is_main:
            print(f"model: {final_model}")
    return 0
