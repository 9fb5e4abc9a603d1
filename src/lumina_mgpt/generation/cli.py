"""`lumina generate`: text to image, PNGs with their settings in the metadata, written as each batch
finishes; with `--prompts FILE`, a prompt file over one process or many (torchrun; see batch_run.py).
Also the options shared by the verbs that run a model (generate, demo, eval shapes)."""

from __future__ import annotations

import argparse
import functools
import json
import sys

from lumina_mgpt.model_folder import EMBEDDED_MODEL, FAMILY_DEFAULTS, PROJECT_FILE

EMBEDDED_PROJECT_FILE = EMBEDDED_MODEL / PROJECT_FILE


@functools.lru_cache(maxsize=1)
def embedded_defaults() -> dict | None:
    """The embedded model's sampling defaults from its lumina.json (JSON only: cheap at help time);
    None when the model is not in this checkout or its file is unreadable."""
    try:
        defaults = json.loads(EMBEDDED_PROJECT_FILE.read_text(encoding="utf-8"))["defaults"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return defaults if isinstance(defaults, dict) else None


def _shown(value: object) -> str:
    return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _model_default(key: str) -> str:
    """ "default: the model's; embedded model X, official v1 Y, v2 Z" for an option whose default comes
    from the model: the embedded model's lumina.json and the official families' FAMILY_DEFAULTS."""
    embedded = (embedded_defaults() or {}).get(key)
    shown = f"embedded model {_shown(embedded)}, " if embedded is not None else ""
    v1, v2 = (_shown(getattr(FAMILY_DEFAULTS[family], key)) for family in ("lumina-mgpt", "lumina-mgpt-2"))
    official = f"official v1/v2 {v1}" if v1 == v2 else f"official v1 {v1}, v2 {v2}"
    return f"default: the model's; {shown}{official}"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --image-tokenizer, --device and --quant: which model to load, and how."""
    parser.add_argument("--model", help="model folder (project or official), hub id (owner/name) or 'embedded' "
                                         "(default: the embedded shapes model)")
    parser.add_argument("--image-tokenizer",
                        help="image tokenizer file or folder (default: the model's, found in or above its folder)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)")
    parser.add_argument("--quant", metavar="MODE",
                        help="quantize the decoder's linear weights: int8 (CPU and CUDA) or int4 (CUDA only) "
                             "(default: none)")


def add_seed_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the first image; image i uses seed + i; 0 to 2**63-1 (default: 0)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling options of every verb that generates images (generate, eval shapes): one vocabulary."""
    add_seed_argument(parser)
    parser.add_argument("--cfg", type=float,
                        help="classifier-free guidance scale, >= 0; 1 disables it "
                             f"({_model_default('cfg')})")
    parser.add_argument("--top-k", type=int,
                        help="image top-k: sample among the k likeliest codes, k >= 1 "
                             f"({_model_default('image_top_k')})")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="image top-p, in (0, 1]: sample among the likeliest codes holding this much probability "
                             "(default: 1.0, off)")
    parser.add_argument("--temperature", type=float,
                        help="sampling temperature, >= 0; 0 is greedy "
                             f"({_model_default('temperature')})")
    parser.add_argument("--cfg-schedule", metavar="NAME",
                        help="how the guidance scale moves along the image: constant, or decay-to-4 (official v2: "
                             "shrinks to 4 along the image, and raises a scale below 4 to 4) "
                             f"({_model_default('cfg_schedule')})")
    parser.add_argument("--sjd", action="store_true",
                        help="speculative Jacobi decoding: the same image distribution in fewer forwards "
                             "(default: off)")
    parser.add_argument("--sjd-window", type=int, metavar="L",
                        help="SJD draft tokens verified per forward; implies --sjd (default: 16)")


def add_quality_arguments(parser: argparse.ArgumentParser) -> None:
    """Best-of-N with verifiers and thinking before generation (generate, eval shapes, eval tasks)."""
    parser.add_argument("--best-of", type=int, default=1, metavar="N",
                        help="draw N candidates of each image in one batch and keep the one the verifiers rank "
                             "first; candidate j of the image of seed s uses seed s*N+j (default: 1)")
    parser.add_argument("--verifier", action="append", metavar="V",
                        help="repeatable; how candidates are scored: self (the model's own yes/no judgement, needs "
                             "a model trained for vqa or chat), self-caption (shapes-world models: the model's caption "
                             "of each image checked against its rewrite of the prompt, then self), "
                             "python:module:function ((images, prompt) -> scores) "
                             "or http:URL (POST JSON); several are combined by mean rank; with --best-of 1 every "
                             "image is just scored (default: none; --best-of above 1 needs one)")
    parser.add_argument("--think", metavar="T",
                        help="refine each prompt before drawing it: self (the model rewrites it; needs 'rewrite') or "
                             "the URL of an OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1); a failing endpoint "
                             "leaves the prompt as asked, with a warning (default: none)")
    parser.add_argument("--think-model", metavar="NAME",
                        help="with --think URL: the model name sent to the endpoint (default: none, not sent)")
    parser.add_argument("--think-key", metavar="KEY",
                        help="with --think URL: the API key, sent as a Bearer token (default: the environment's "
                             "LUMINA_THINK_API_KEY, else none)")
    parser.add_argument("--think-max-tokens", type=int, default=1024, metavar="N",
                        help="with --think URL: the most tokens the analysis may take (default: 1024)")
    parser.add_argument("--think-timeout", type=float, default=60.0, metavar="S",
                        help="with --think URL: seconds to wait for the endpoint before drawing the prompt as asked "
                             "(default: 60)")


def quality_options(args: argparse.Namespace, tasks) -> dict:
    """The best_of, verifier and think arguments of `Pipeline.generate` the quality options ask for, checked
    against the model's `tasks` (before it loads): python: verifiers are imported here."""
    from lumina_mgpt.errors import GenerationError
    from lumina_mgpt.generation.best_of import check_best_of
    from lumina_mgpt.generation.thinking import SELF, ChatThinker, check_think_spec
    from lumina_mgpt.generation.verifiers import (
        PYTHON_PREFIX,
        check_verifier_spec,
        load_python_verifier,
        require_verifier_tasks,
    )
    from lumina_mgpt.model_folder import REWRITE, require_task

    best_of = check_best_of(args.best_of)
    verifiers = [check_verifier_spec(spec) for spec in args.verifier or ()]
    if best_of > 1 and not verifiers:
        raise GenerationError(f"--best-of {best_of} needs a --verifier to choose with: self, self-caption, "
                              f"python:module:function or http:URL")
    for spec in verifiers:
        require_verifier_tasks(spec, tasks)
        if spec.startswith(PYTHON_PREFIX):
            load_python_verifier(spec)
    think = None if args.think is None else check_think_spec(args.think)
    if think == SELF:
        require_task(tasks, REWRITE)
    elif think is not None:
        think = ChatThinker(think, model=args.think_model, api_key=args.think_key, timeout_s=args.think_timeout,
                            max_tokens=args.think_max_tokens)
    options = {"best_of": best_of, "verifier": verifiers} if verifiers else {}
    return options if think is None else {**options, "think": think}


def add_output_arguments(parser: argparse.ArgumentParser, default: str, what: str) -> None:
    """--out and --overwrite."""
    parser.add_argument("--out", default=default, help=f"{what} (default: {default})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing files of the same name (default: keep them and write the new image "
                             "under the next free name, NAME-1.png, NAME-2.png, ...)")


def sjd_window(args: argparse.Namespace) -> int | None:
    """The SJD window the sampling options ask for (None: plain decoding)."""
    from lumina_mgpt.generation.speculative import DEFAULT_WINDOW

    if args.sjd_window is not None:
        return args.sjd_window
    return DEFAULT_WINDOW if args.sjd else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="*", help="one or more prompts (quote each), or none with --prompts")
    parser.add_argument("--prompts", metavar="FILE",
                        help="a prompt file, one request a line: plain text or a JSON object (prompt, seed, n, width, "
                             "height, cfg, ...); each line's images use seeds seed..seed+n-1, are named by line and "
                             "seed, and are skipped on a rerun when they exist; a manifest.json is written at the "
                             "end; runs under torchrun, each rank taking its share (default: none, the prompts "
                             "are arguments)")
    add_model_arguments(parser)
    size = _model_default("size")
    parser.add_argument("--width", type=int, help=f"image width in pixels ({size})")
    parser.add_argument("--height", type=int, help=f"image height in pixels ({size})")
    parser.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt (default: 1)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="images decoded together; each batch is written before the next starts (default: 8)")
    add_sampling_arguments(parser)
    parser.add_argument("--rewrite", action="store_true",
                        help="the model first rewrites each prompt as the caption it draws best, then draws the "
                             "rewrite; the PNG metadata keeps both (needs a model trained for 'rewrite'); the same "
                             "as --think self (default: off)")
    add_quality_arguments(parser)
    parser.add_argument("--keep-candidates", action="store_true",
                        help="with --best-of: also write every candidate, NAME-candidateJ-seedS.png, each with its "
                             "scores in the metadata (default: only the chosen image)")
    add_output_arguments(parser, "outputs", "output folder, created when missing")


def say_how_read(pipe, text: str) -> None:
    """One stderr line where the model reads `text` otherwise: words it does not know (text/known_words.py)."""
    read = pipe.read(text)
    if read != text:
        print(f"the model reads {text!r} as {read!r}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from lumina_mgpt.errors import GenerationError
    from lumina_mgpt.generation.checks import check_prompts
    from lumina_mgpt.generation.outputs import OutputFolder, file_slug
    from lumina_mgpt.generation.pipeline import Pipeline, load_options, plan_generation
    from lumina_mgpt.model_folder import read_model_info

    if args.prompts is not None:
        if args.prompt:
            raise GenerationError("give prompts as arguments or in a --prompts file, not both")
        if args.rewrite:
            raise GenerationError("--rewrite works with prompts given as arguments, not with a --prompts file")
        if args.best_of != 1 or args.verifier or args.think is not None:
            raise GenerationError("--best-of, --verifier and --think work with prompts given as arguments, not with "
                                  "a --prompts file")
        from lumina_mgpt.generation.batch_run import run_prompt_file

        return run_prompt_file(args)
    if not args.prompt:
        raise GenerationError("no prompts given; pass one or more prompts as arguments, or --prompts FILE")
    # Cheap checks first, all before the slow model load: prompts, device and quantization, the
    # model folder's metadata (layout, defaults) with the sampling options, then the output folder.
    check_prompts(args.prompt)
    device, dtype = load_options(args.device, quant=args.quant)
    info = read_model_info(args.model, args.image_tokenizer)
    if args.rewrite:
        if args.think is not None:
            raise GenerationError(f"--rewrite is --think self; give one of them, not both (--think {args.think})")
        args.think = "self"
    quality = quality_options(args, info.tasks)
    if args.keep_candidates and "best_of" not in quality:
        raise GenerationError("--keep-candidates writes the candidates of --best-of; add --best-of N --verifier V")
    plan = plan_generation(
        info.layout, info.defaults, args.prompt, width=args.width, height=args.height, num_images=args.num_images,
        seed=args.seed, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
        cfg_schedule=args.cfg_schedule, batch_size=args.batch_size, sjd_window=sjd_window(args),
    )
    out = OutputFolder(args.out, overwrite=args.overwrite)
    print(f"loading model from {info.folder}", file=sys.stderr)
    pipe = Pipeline.from_model_info(info, device=device, dtype=dtype, quant=args.quant)
    if "think" in quality:
        plan = pipe.think_plan(plan, quality["think"])
        for asked, drawn in dict(zip(plan.requests, plan.prompts)).items():
            if drawn != asked:  # a failed thinking endpoint said so already
                print(f"rewrote {asked!r} as {drawn!r}", file=sys.stderr)
    for prompt in dict.fromkeys(plan.prompts):
        say_how_read(pipe, prompt)

    digits = max(3, len(str(len(plan) - 1)))
    if "best_of" in quality:
        images = pipe.iter_best_of(plan, quality["best_of"], quality["verifier"])
    else:
        images = pipe.run_plan(plan)
    with tqdm(total=len(plan), desc="images", unit="img", file=sys.stderr) as bar:
        for i, image in enumerate(images):
            words = file_slug((plan.requests or plan.prompts)[i])
            stem = f"{i:0{digits}d}-{words + '-' if words else ''}seed{plan.seeds[i]}"
            if "best_of" in quality:
                _report_choice(image, stem, bar)
                if args.keep_candidates:
                    for j, candidate in enumerate(image.candidates):
                        seed = json.loads(candidate.info["parameters"])["seed"]
                        out.save(candidate, f"{stem}-candidate{j}-seed{seed}.png")
                image = image.image
            path = out.save(image, f"{stem}.png")
            bar.write(str(path), file=sys.stdout)  # clears the bars, prints on a line of its own, redraws them
            bar.update()
    return 0


def _report_choice(result, stem: str, bar) -> None:
    """One stderr line per image of best-of-N: each candidate's mean rank, the chosen one marked."""
    table = json.loads(result.image.info["parameters"])["best_of"]["candidates"]
    ranks = " ".join(f"{'*' if j == result.chosen else ''}{row['mean_rank']:g}" for j, row in enumerate(table))
    bar.write(f"{stem}: kept candidate {result.chosen} of {len(table)} (mean ranks: {ranks})", file=sys.stderr)
