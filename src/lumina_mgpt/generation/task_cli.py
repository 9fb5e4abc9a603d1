"""`lumina edit | control | predict | caption | ask`: the tasks besides text-to-image, one verb each.

    lumina edit scene.png "make the red circle blue"
    lumina control edges.png --kind edges "a red circle and a blue square"
    lumina predict scene.png --task segmentation
    lumina caption scene.png
    lumina ask scene.png "how many circles are there?"

Image verbs write PNGs (their task, inputs and settings in the metadata) into --out and print each path;
text verbs print the answer. Every request is checked against the model's lumina.json before it loads.
`add_task_commands(subparsers)` adds the verbs to `lumina`'s parser; `run(args)` runs the one parsed.
"""

from __future__ import annotations

import argparse
import sys

from lumina_mgpt.generation.cli import (
    add_model_arguments,
    add_output_arguments,
    add_sampling_arguments,
    add_seed_argument,
)

IMAGE_VERBS = ("edit", "control", "predict")
TEXT_VERBS = ("caption", "ask")
HELP = {
    "edit": "edit an image as an instruction says",
    "control": "draw an image that follows a condition map (edges, depth, ...) and a prompt",
    "predict": "predict a map of an image (segmentation, edges, depth, ...)",
    "caption": "describe an image in words",
    "ask": "answer a question about an image",
}
DEFAULT_MAX_NEW_TOKENS = 64


def add_task_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add every task verb to `lumina`'s subparsers (each runs through this module's `run`)."""
    for verb in IMAGE_VERBS + TEXT_VERBS:
        parser = subparsers.add_parser(verb, help=HELP[verb], description=HELP[verb])
        parser.set_defaults(_module=__name__)
        add_arguments(parser, verb)


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The arguments of one task verb."""
    parser.add_argument("image", help="the input image: a file Pillow reads (PNG, JPEG, WebP, ...)")
    if verb == "edit":
        parser.add_argument("instruction", help='what to change, e.g. "make the red circle blue"')
    elif verb == "control":
        parser.add_argument("prompt", help='what the image shows, e.g. "a red circle and a blue square"')
        parser.add_argument(
            "--kind",
            default="edges",
            help="what the condition image is: edges (project models), depth or canny (official "
            "v2), depth, canny, hed, pose, segmentation or normals (official v1) "
            "(default: edges)",
        )
    elif verb == "predict":
        parser.add_argument(
            "--task",
            required=True,
            help="the map to predict: segmentation or edges (project models); depth, canny, hed or "
            "pose (official v2); segmentation, depth, normals or pose (official v1)",
        )
        parser.add_argument(
            "--prompt", default="", help="the image's caption, which official v2's prompt ends with (default: none)"
        )
    elif verb == "caption":
        parser.add_argument(
            "--question", default="", help="how to ask for the caption (default: the model family's own question)"
        )
    elif verb == "ask":
        parser.add_argument("question", help='the question, e.g. "how many circles are there?"')
    add_model_arguments(parser)
    if verb in IMAGE_VERBS:
        parser.add_argument(
            "--width",
            type=int,
            help="width of the answer image in pixels (default: one panel of the model's family, "
            "64 for project models and 512 for official v2; official v1: the input's "
            "resolution bucket)",
        )
        parser.add_argument(
            "--height",
            type=int,
            help="height of the answer image in pixels; give both or neither (default: as --width)",
        )
        parser.add_argument(
            "-n", "--num-images", type=int, default=1, help="answers to draw; answer i uses seed + i (default: 1)"
        )
        parser.add_argument("--batch-size", type=int, default=8, help="answers decoded together (default: 8)")
        add_sampling_arguments(parser)
        add_output_arguments(parser, "outputs", "output folder, created when missing")
    else:
        add_seed_argument(parser)
        parser.add_argument(
            "--temperature", type=float, help="sampling temperature of the answer, >= 0 (default: 0, greedy)"
        )
        parser.add_argument(
            "--top-k", type=int, help="text top-k, >= 1 (default: the model's text top-k; official v1 5)"
        )
        parser.add_argument(
            "--max-new-tokens",
            type=int,
            default=DEFAULT_MAX_NEW_TOKENS,
            help=f"the longest answer in tokens (default: {DEFAULT_MAX_NEW_TOKENS})",
        )


def request_of(args: argparse.Namespace, image):
    """The TaskRequest the parsed arguments ask for."""
    from lumina_mgpt.generation.tasks import TaskRequest
    from lumina_mgpt.model_folder import CAPTION, CONTROL, EDIT, VQA

    if args.verb == "edit":
        return TaskRequest(EDIT, args.instruction, image)
    if args.verb == "control":
        return TaskRequest(CONTROL, args.prompt, image, kind=args.kind)
    if args.verb == "predict":
        return TaskRequest(args.task, args.prompt, image)
    if args.verb == "caption":
        return TaskRequest(CAPTION, args.question, image)
    return TaskRequest(VQA, args.question, image)


def run(args: argparse.Namespace) -> int:
    from lumina_mgpt.formats import open_image
    from lumina_mgpt.generation.cli import say_how_read, sjd_window
    from lumina_mgpt.generation.checks import check_integer
    from lumina_mgpt.generation.pipeline import load_options, make_settings
    from lumina_mgpt.generation.tasks import answer_size, check_request_batch, prompt_family, task_defaults
    from lumina_mgpt.model_folder import read_model_info

    # Every check that needs no model comes first: the image, the device, the model's tasks and the options.
    request = request_of(args, open_image(args.image))
    device, dtype = load_options(args.device, quant=args.quant)
    info = read_model_info(args.model, args.image_tokenizer)
    family = prompt_family(info.layout)
    defaults = task_defaults(family, info.defaults, request.task)
    if args.verb in TEXT_VERBS:
        requests, seeds, _ = check_request_batch([request], family, info.tasks, args.seed, 1)
        check_integer("--max-new-tokens", args.max_new_tokens, 1, "tokens an answer may have")
        make_settings(defaults, temperature=args.temperature, text_top_k=args.top_k)
        pipe = _load(info, device, dtype, args.quant)
        say_how_read(pipe, request.text)
        (answer,) = pipe.run_text_tasks(
            requests, seed=seeds, temperature=args.temperature, top_k=args.top_k, max_new_tokens=args.max_new_tokens
        )
        print(answer)
        return 0

    from lumina_mgpt.generation.checks import check_sjd_window
    from lumina_mgpt.generation.outputs import OutputFolder, file_slug

    count = check_integer("--num-images", args.num_images, 1, "answers to draw")
    requests, seeds, batch_size = check_request_batch([request] * count, family, info.tasks, args.seed, args.batch_size)
    answer_size(family, info.layout, info.defaults, request.image, args.width, args.height)
    window = check_sjd_window(sjd_window(args))
    sampling = {
        "cfg": args.cfg,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "temperature": args.temperature,
        "cfg_schedule": args.cfg_schedule,
    }
    make_settings(defaults, **sampling)
    out = OutputFolder(args.out, overwrite=args.overwrite)
    pipe = _load(info, device, dtype, args.quant)
    say_how_read(pipe, request.text)
    images = pipe.run_image_tasks(
        requests,
        seed=seeds,
        width=args.width,
        height=args.height,
        batch_size=batch_size,
        sjd_window=window,
        progress=True,
        **sampling,
    )
    words = file_slug(request.text)
    for index, (seed, image) in enumerate(zip(seeds, images)):
        print(out.save(image, f"{index:03d}-{request.task}-{words + '-' if words else ''}seed{seed}.png"))
    return 0


def _load(info, device, dtype, quant):
    from lumina_mgpt.generation.pipeline import Pipeline

    print(f"loading model from {info.folder}", file=sys.stderr)
    return Pipeline.from_model_info(info, device=device, dtype=dtype, quant=quant)
