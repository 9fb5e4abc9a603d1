"""ShapesEval's fixed, held-out prompt set.

The set is drawn once with a fixed seed in GenEval's category proportions, spread over the canvas
sizes, and stored beside this module (eval_prompts.jsonl). Training samples never use its
captions (`is_held_out`). Regenerate it with `python -m lumina_mgpt.shapes.prompts` only when
the world's vocabulary changes; a test checks that the file matches `build_eval_prompts()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes.captions import describe, sample_spec
from lumina_mgpt.shapes.spec import CATEGORIES, Spec
from lumina_mgpt.shapes.world import CANVAS_SIZES
from lumina_mgpt.atomic import write_text_atomically

PROMPTS_FILE = "eval_prompts.jsonl"
PROMPT_SEED = 20240607
# GenEval's prompt counts per category (553 in all).
CATEGORY_COUNTS: dict[str, int] = {
    "single_object": 80,
    "two_object": 99,
    "counting": 80,
    "colors": 94,
    "position": 100,
    "color_attr": 100,
}


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: its caption, the spec it is checked against and its canvas."""

    index: int
    category: str
    caption: str
    spec: Spec
    width: int
    height: int

    def to_dict(self) -> dict:
        """One JSON line of the prompt file (the inverse of `EvalPrompt.from_dict`)."""
        return {
            "index": self.index,
            "category": self.category,
            "caption": self.caption,
            "width": self.width,
            "height": self.height,
            "spec": self.spec.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> EvalPrompt:
        """Rebuild a prompt from `to_dict` output, validating every field."""
        try:
            return cls(
                int(data["index"]),
                data["category"],
                data["caption"],
                Spec.from_dict(data["spec"]),
                int(data["width"]),
                int(data["height"]),
            )
        except (KeyError, TypeError) as error:
            raise DataError(f"malformed prompt {data!r}: missing or bad field {error}") from error


def normalize_caption(caption: str) -> str:
    """The form in which captions are compared: lower case, single spaces."""
    return " ".join(caption.lower().split())


def build_eval_prompts(seed: int = PROMPT_SEED) -> list[EvalPrompt]:
    """Draw the prompt set: distinct captions, canvas sizes cycling within each category."""
    rng = np.random.default_rng(seed)
    prompts: list[EvalPrompt] = []
    seen: set[str] = set()
    for category in CATEGORIES:
        for position in range(CATEGORY_COUNTS[category]):
            while True:
                spec = sample_spec(rng, category)
                caption = describe(spec, rng)
                if normalize_caption(caption) not in seen:
                    break
            seen.add(normalize_caption(caption))
            width, height = CANVAS_SIZES[position % len(CANVAS_SIZES)]
            prompts.append(EvalPrompt(len(prompts), category, caption, spec, width, height))
    return prompts


def write_eval_prompts(prompts: list[EvalPrompt], path: Path) -> None:
    """Write prompts as JSON lines, atomically."""
    text = "".join(json.dumps(p.to_dict(), sort_keys=True) + "\n" for p in prompts)
    write_text_atomically(path, text)


@cache
def load_eval_prompts() -> tuple[EvalPrompt, ...]:
    """The stored prompt set, in order."""
    text = resources.files("lumina_mgpt.shapes").joinpath(PROMPTS_FILE).read_text("utf-8")
    return tuple(EvalPrompt.from_dict(json.loads(line)) for line in text.splitlines() if line)


@cache
def held_out_captions() -> frozenset[str]:
    """Normalized captions of the prompt set."""
    return frozenset(normalize_caption(p.caption) for p in load_eval_prompts())


def is_held_out(caption: str) -> bool:
    """Whether `caption` belongs to the evaluation set (and so must not be trained on)."""
    return normalize_caption(caption) in held_out_captions()


if __name__ == "__main__":
    write_eval_prompts(build_eval_prompts(), Path(__file__).with_name(PROMPTS_FILE))
