"""Prompt files for `lumina generate --prompts FILE`: one text-to-image request per line.

A line is a JSON object, or plain text (the whole line, stripped, is the prompt); blank lines are skipped:

    {"prompt": "a red circle above a blue square", "seed": 7, "n": 2}
    {"prompt": "a green triangle", "width": 80, "height": 48, "cfg": 3.0, "temperature": 0.7}
    a blue square to the left of a yellow circle

A line that starts with `{` is read as JSON; anything else is plain text. Object keys (LINE_KEYS):
`prompt` (required), and `seed`, `n`, `width`, `height`, `cfg`, `temperature`, `top_k`, `top_p`,
`cfg_schedule`, `sjd_window`; a key left out takes the command line's value (which defaults to the
model's). Image j of a line uses seed `seed + j`, and the first seed of every line is its own `seed`
(else `--seed`), not a running count: an image depends only on its line's number and content, never on
the other lines or on how many processes share the file.

Lines are read and checked before any model loads; an error names the file and the line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lumina_mgpt.errors import GenerationError, LuminaError
from lumina_mgpt.formats import VocabLayout
from lumina_mgpt.generation.pipeline import GenerationPlan, plan_generation
from lumina_mgpt.model_folder import Defaults

# Keys a JSON line may hold besides "prompt", each a keyword of `plan_generation` ("n" is num_images).
OPTION_KEYS = ("seed", "n", "width", "height", "cfg", "temperature", "top_k", "top_p", "cfg_schedule", "sjd_window")
LINE_KEYS = ("prompt", *OPTION_KEYS)


@dataclass(frozen=True)
class PromptLine:
    """One request of a prompt file: its 1-based line number, its prompt and the options the line sets."""

    number: int
    prompt: str
    options: Mapping[str, Any]

    def plan(
        self, layout: VocabLayout, defaults: Defaults, fallback: Mapping[str, Any], where: str = "prompt file"
    ) -> GenerationPlan:
        """The line's checked images (its options over `fallback`, the command line's, over the model's
        `defaults`), one batch of all of them; GenerationError naming `where` and the line otherwise."""
        options = {**fallback, **self.options}
        options["num_images"] = options.pop("n", 1)
        try:
            plan = plan_generation(layout, defaults, self.prompt, **options)
        except LuminaError as error:
            raise type(error)(f"{where} line {self.number}: {error}") from None
        return plan


def parse_prompt_line(text: str, number: int, where: str = "prompt file") -> PromptLine | None:
    """The request on one line of a prompt file, or None for a blank line; GenerationError naming the line
    for malformed JSON, a missing or non-text prompt, or an unknown key."""
    stripped = text.strip()
    if not stripped:
        return None
    if not stripped.startswith("{"):
        return PromptLine(number, stripped, {})
    try:
        record = json.loads(stripped)
    except ValueError as error:
        raise GenerationError(
            f"{where} line {number} starts with '{{' but is not valid JSON ({error}); write a JSON object such as "
            f'{{"prompt": "a red circle", "seed": 7}}, or the prompt alone as plain text'
        ) from None
    unknown = sorted(set(record) - set(LINE_KEYS))
    if unknown:
        raise GenerationError(
            f"{where} line {number}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(LINE_KEYS)}"
        )
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise GenerationError(f'{where} line {number}: "prompt" must be non-empty text, got {prompt!r}')
    return PromptLine(number, prompt, {key: value for key, value in record.items() if key != "prompt"})


def read_prompt_file(path: str | os.PathLike) -> list[PromptLine]:
    """Every request of a prompt file, in order; GenerationError for an unreadable or empty file or a bad line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise GenerationError(f"cannot read prompt file {path}: {reason}; give a UTF-8 text file, one prompt a line")
    parsed = (parse_prompt_line(line, number, str(path)) for number, line in enumerate(text.splitlines(), 1))
    lines = [line for line in parsed if line is not None]
    if not lines:
        raise GenerationError(f"prompt file {path} holds no prompt; write one prompt (text or a JSON object) a line")
    return lines
