"""`lumina eval shapes`: run ShapesEval on a model (or on ground-truth renders) and print what was
evaluated (model, settings, seed) and the per-category table; optionally write the full report as JSON.
`lumina eval tasks`: every task of the multi-task shapes world on its held-out items (task_eval.py), one
table, beside it."""

from __future__ import annotations

import argparse

from lumina_mgpt.generation.cli import add_model_arguments, add_quality_arguments, add_sampling_arguments
from lumina_mgpt.shapes.task_eval import DEFAULT_LIMIT, EVAL_TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=["shapes", "tasks"],
                        help="shapes: ShapesEval (text to image); tasks: every task of the multi-task shapes world")
    add_model_arguments(parser)
    parser.add_argument(
        "--limit", type=int, default=None,
        help="shapes: evaluate about N prompts, keeping category shares; tasks: N held-out items per task "
             f"(default: shapes all 553 held-out prompts, tasks {DEFAULT_LIMIT})",
    )
    parser.add_argument("--task", action="append", metavar="NAME",
                        help=f"tasks only, repeatable: evaluate this task ({', '.join(EVAL_TASKS)}) "
                             "(default: every task the model's lumina.json lists; the others are shown as not "
                             "trained)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="shapes: prompts per generation call, at most 8 decoded together; tasks: items decoded "
                             "together (default: 16)")
    add_sampling_arguments(parser)
    add_quality_arguments(parser)  # tasks: on the text-to-image rows
    parser.add_argument(
        "--out", default=None, metavar="FILE",
        help="write the report as JSON to FILE (default: none)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace FILE if it exists (default: refuse)")
    parser.add_argument(
        "--ground-truth",
        action="store_true",
        help="render each prompt's own spec instead of generating (checks the analyzer: ~1.0) (default: off)",
    )
    parser.add_argument(
        "--degrade",
        default=None,
        metavar="KIND",
        help="with --ground-truth: degrade the renders first (downscale2, downscale4, jpeg30, "
        "noise12, color_jitter, vq_like) (default: none)",
    )


def _check_report_file(args: argparse.Namespace) -> None:
    """Refuse an --out that cannot take the JSON report, before any work."""
    from pathlib import Path

    from lumina_mgpt.errors import DataError
    from lumina_mgpt.generation.outputs import check_output_folder

    if args.out is not None:
        out = Path(args.out)
        if out.is_dir():
            raise DataError(f"--out {out} is a folder; give the JSON report's file name")
        if out.exists() and not args.overwrite:
            raise DataError(f"--out {out} exists; pass --overwrite to replace it, or give another file")
        check_output_folder(out.parent)


def describe_image_settings(settings, window: int | None) -> str:
    """The image sampling settings of an evaluation, as both evals print them."""
    decoding = f"SJD window {window}" if window else "plain decoding"
    return (
        f"cfg {settings.cfg:g} ({settings.cfg_schedule}), temperature {settings.image.temperature:g}, "
        f"top-k {settings.image.top_k}, top-p {settings.image.top_p:g}, {decoding}"
    )


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from lumina_mgpt.errors import DataError
    from lumina_mgpt.generation.checks import check_seeds

    if args.benchmark == "tasks":
        return _run_tasks(args)
    if args.task:
        raise DataError("--task chooses tasks of `lumina eval tasks`; ShapesEval has none: drop --task")
    from lumina_mgpt.shapes.evaluate import (
        evaluate,
        format_table,
        ground_truth_generator,
        limit_prompts,
        write_report,
    )
    from lumina_mgpt.shapes.prompts import load_eval_prompts

    # Cheap checks first, before any model loads.
    if args.degrade is not None and not args.ground_truth:
        raise DataError("--degrade only applies to --ground-truth renders; add --ground-truth or drop --degrade")
    if args.ground_truth and (args.best_of != 1 or args.verifier or args.think is not None):
        raise DataError("--ground-truth renders each prompt's spec; --best-of, --verifier and --think need a model")
    prompts = list(load_eval_prompts())
    if args.limit is not None:
        prompts = limit_prompts(prompts, args.limit)
    check_seeds(args.seed, len(prompts))
    _check_report_file(args)

    if args.ground_truth:
        generate_fn = ground_truth_generator(prompts, args.seed, args.degrade)
        print(f"ground truth: each prompt's own render (seed {args.seed}), degraded: {args.degrade or 'no'}")
    else:
        generate_fn = _model_generator(args)
    print(f"seed: {args.seed} (prompt k of the run uses seed {args.seed} + k); prompts: {len(prompts)}")

    def show_progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} prompts", end="" if done < total else "\n", file=sys.stderr)

    report = evaluate(generate_fn, prompts, batch_size=args.batch_size, progress=show_progress)
    print(format_table(report))
    if args.out is not None:
        write_report(report, Path(args.out))
    return 0


def _model_generator(args: argparse.Namespace):
    """Load the model (after checking its options) and return the generate_fn that samples with them;
    prints the model and the settings."""
    import sys

    from lumina_mgpt.generation.checks import check_integer, check_sjd_window
    from lumina_mgpt.generation.cli import quality_options, sjd_window
    from lumina_mgpt.generation.pipeline import Pipeline, load_options, make_settings
    from lumina_mgpt.model_folder import read_model_info
    from lumina_mgpt.shapes.evaluate import pipeline_generator

    check_integer("--batch-size", args.batch_size, 1, "prompts per generation call")
    window = check_sjd_window(sjd_window(args))
    device, dtype = load_options(args.device, quant=args.quant)
    info = read_model_info(args.model, args.image_tokenizer)
    settings = make_settings(
        info.defaults, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
        cfg_schedule=args.cfg_schedule,
    )
    quality = quality_options(args, info.tasks)
    print(f"loading model from {info.folder}", file=sys.stderr)
    pipe = Pipeline.from_model_info(info, device=device, dtype=dtype, quant=args.quant)
    print(f"model: {info.folder} (layout {info.layout.name}, device {device})")
    print(f"settings: {describe_image_settings(settings, window)}")
    print(describe_quality(args, quality))
    return pipeline_generator(
        pipe, args.seed, cfg=settings.cfg, top_k=settings.image.top_k, top_p=settings.image.top_p,
        temperature=settings.image.temperature, cfg_schedule=settings.cfg_schedule, sjd_window=window, **quality,
    )


def describe_quality(args: argparse.Namespace, quality: dict) -> str:
    """The line saying how images were chosen and prompts refined (reports compare runs by it)."""
    chosen = (f"best of {args.best_of} by {' + '.join(args.verifier)} (mean rank)" if "verifier" in quality
              else "one sample per prompt")
    return f"choice: {chosen}; thinking: {args.think or 'none'}"


def _run_tasks(args: argparse.Namespace) -> int:
    """`lumina eval tasks`: check everything, load the model, run every chosen task, print the table."""
    import sys
    from pathlib import Path

    from lumina_mgpt.errors import DataError
    from lumina_mgpt.generation.checks import check_integer, check_seeds, check_sjd_window
    from lumina_mgpt.generation.cli import quality_options, sjd_window
    from lumina_mgpt.generation.pipeline import Pipeline, load_options, make_settings
    from lumina_mgpt.model_folder import read_model_info
    from lumina_mgpt.shapes.task_eval import choose_tasks, evaluate_tasks, format_task_table, write_task_report

    if args.ground_truth or args.degrade is not None:
        raise DataError("--ground-truth and --degrade check ShapesEval's analyzer; `eval tasks` has neither")
    limit = check_integer("--limit", DEFAULT_LIMIT if args.limit is None else args.limit, 1, "items per task")
    check_seeds(args.seed, limit)
    batch_size = check_integer("--batch-size", args.batch_size, 1, "items decoded together")
    window = check_sjd_window(sjd_window(args))
    _check_report_file(args)
    device, dtype = load_options(args.device, quant=args.quant)
    info = read_model_info(args.model, args.image_tokenizer)
    tasks, _ = choose_tasks(info.tasks, args.task)
    if not tasks:
        raise DataError(
            f"this model was trained for none of the evaluated tasks (its tasks: {', '.join(info.tasks)}); "
            f"`eval tasks` needs a model of the multi-task shapes world"
        )
    sampling = {"cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "temperature": args.temperature,
                "cfg_schedule": args.cfg_schedule}
    settings = make_settings(info.defaults, **sampling)
    quality = quality_options(args, info.tasks)
    print(f"loading model from {info.folder}", file=sys.stderr)
    pipe = Pipeline.from_model_info(info, device=device, dtype=dtype, quant=args.quant)
    print(f"model: {info.folder} (layout {info.layout.name}, device {device})")
    print(f"image settings: {describe_image_settings(settings, window)}; text answers greedy")
    print(f"seed: {args.seed} (item k of a task uses seed {args.seed} + k); items per task: {limit}")
    print(f"text-to-image {describe_quality(args, quality)}")

    def show_progress(task: str, items: int) -> None:
        print(f"{task}: {items} items done", file=sys.stderr)

    report = evaluate_tasks(
        pipe, args.task, limit=limit, seed=args.seed, batch_size=batch_size, sampling={**sampling, "sjd_window": window},
        progress=show_progress, drawing=quality,
    )
    print(format_task_table(report))
    if args.out is not None:
        header = {"model": str(info.folder), "seed": args.seed, "limit": limit, "cfg": settings.cfg,
                  "cfg_schedule": settings.cfg_schedule, "temperature": settings.image.temperature,
                  "top_k": settings.image.top_k, "top_p": settings.image.top_p, "sjd_window": window,
                  "best_of": args.best_of, "verifiers": args.verifier or [], "think": args.think}
        write_task_report(report, Path(args.out), header)
    return 0
