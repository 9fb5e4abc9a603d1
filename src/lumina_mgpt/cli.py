"""The `lumina` command. Each verb lives in its own module with `add_arguments(parser)` and
`run(args) -> int`; modules are imported only when their verb runs, so `--help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from lumina_mgpt import __version__
from lumina_mgpt.errors import LuminaError

# verb -> (module, one-line help). Nested verbs use a space ("eval shapes").
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("lumina_mgpt.demo", "run the end-to-end demo on the embedded model"),
    "tokenize": ("lumina_mgpt.formats.cli", "show the Uni-Rep ids of a prompt and an image size"),
    "train-vq": ("lumina_mgpt.vision.train_cli", "train a small VQ image tokenizer"),
    "eval": (
        "lumina_mgpt.shapes.eval_cli",
        "evaluate a model (eval shapes: ShapesEval; eval tasks: every task of the shapes task world)",
    ),
    "generate": ("lumina_mgpt.generation.cli", "generate images from text prompts"),
    "pretokenize": ("lumina_mgpt.data.pretokenize_cli", "turn a data set into token shards for training"),
    "train": ("lumina_mgpt.training.cli", "train or fine-tune a model from a TOML recipe"),
    "serve": ("lumina_mgpt.serve.cli", "serve an OpenAI-compatible image API with request batching and a web UI"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumina",
        description="Run, train and evaluate Lumina-mGPT-style unified autoregressive image models.",
    )
    parser.add_argument("--version", action="version", version=f"lumina-mgpt {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (module_name, help_text) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        verb_parser.set_defaults(_module=module_name)
        _load(module_name).add_arguments(verb_parser)
    _load("lumina_mgpt.generation.task_cli").add_task_commands(sub)  # edit, control, predict, caption, ask
    return parser


def _load(module_name: str):
    return importlib.import_module(module_name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(_load(args._module).run(args) or 0)
    except LuminaError as error:
        print(f"lumina {args.verb}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
