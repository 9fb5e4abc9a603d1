"""Rules every verb of `lumina` keeps: fast arguments, shown defaults, one vocabulary, a quiet library."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from lumina_mgpt import __version__
from lumina_mgpt.cli import VERBS, build_parser, main


def _verb_parsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lumina-mgpt {__version__}"


def test_parsing_arguments_imports_no_torch():
    # Argument errors and --help must answer before the slow imports (torch, diffusers).
    code = (
        "import sys\n"
        "from lumina_mgpt.cli import build_parser\n"
        "build_parser().parse_args(['generate', 'a red circle'])\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'torchao') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_option_shows_its_default(verb):
    parser = _verb_parsers()[verb]
    silent = []
    for action in parser._actions:
        if not action.option_strings or action.required or action.nargs == 0:
            continue  # positionals, required options and flags have no default to show
        if "default" not in (action.help or ""):
            silent.append("/".join(action.option_strings))
    assert not silent, f"lumina {verb}: options whose help does not state their default: {silent}"


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_one_vocabulary_for_model_and_output(verb):
    options = {o for action in _verb_parsers()[verb]._actions for o in action.option_strings}
    assert not options & {"--model-folder", "--output", "--output-dir", "--out-dir"}, verb


def test_loading_the_embedded_model_prints_nothing():
    code = "import lumina_mgpt; lumina_mgpt.Pipeline.from_pretrained()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert (result.stdout, result.stderr) == ("", "")
