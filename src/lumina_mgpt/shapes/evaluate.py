"""ShapesEval: generate every held-out prompt, analyze the images, report GenEval-style accuracy
(per category, and overall as the mean over categories)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lumina_mgpt.atomic import write_text_atomically
from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes.analyze import score
from lumina_mgpt.shapes.degrade import degrade
from lumina_mgpt.shapes.prompts import EvalPrompt, load_eval_prompts
from lumina_mgpt.shapes.spec import CATEGORIES
from lumina_mgpt.shapes.world import render, scene_from_spec

# generate_fn(captions, width, height) -> one image per caption, each width x height.
GenerateFn = Callable[[list[str], int, int], list[Image.Image]]


@dataclass(frozen=True)
class PromptResult:
    """Whether the image generated for one prompt passed the analyzer."""

    index: int
    category: str
    caption: str
    correct: bool


@dataclass(frozen=True)
class Report:
    """Per-prompt results of one evaluation, with GenEval-style summaries."""

    results: tuple[PromptResult, ...]

    def category_accuracy(self) -> dict[str, float]:
        """Accuracy per category present, in CATEGORIES order."""
        accuracy = {}
        for category in CATEGORIES:
            outcomes = [r.correct for r in self.results if r.category == category]
            if outcomes:
                accuracy[category] = sum(outcomes) / len(outcomes)
        return accuracy

    @property
    def overall(self) -> float:
        """GenEval's overall score: the unweighted mean of the category accuracies."""
        accuracy = self.category_accuracy()
        return sum(accuracy.values()) / len(accuracy) if accuracy else 0.0

    def category_counts(self) -> dict[str, int]:
        """Number of prompts per category present."""
        counts = {c: sum(1 for r in self.results if r.category == c) for c in CATEGORIES}
        return {category: count for category, count in counts.items() if count}

    def to_dict(self) -> dict:
        """The JSON report: overall, per-category accuracy and count, and every result."""
        counts = self.category_counts()
        return {
            "overall": self.overall,
            "categories": {
                category: {"accuracy": accuracy, "prompts": counts[category]}
                for category, accuracy in self.category_accuracy().items()
            },
            "results": [
                {
                    "index": r.index,
                    "category": r.category,
                    "caption": r.caption,
                    "correct": r.correct,
                }
                for r in self.results
            ],
        }


def limit_prompts(prompts: Sequence[EvalPrompt], limit: int) -> list[EvalPrompt]:
    """About `limit` prompts keeping every category's share (the first of each category)."""
    if limit < 1:
        raise DataError(f"prompt limit {limit} must be at least 1")
    share = min(1.0, limit / len(prompts))
    chosen = []
    for category in CATEGORIES:
        of_category = [p for p in prompts if p.category == category]
        chosen.extend(of_category[: max(1, round(share * len(of_category)))])
    return sorted(chosen, key=lambda p: p.index)


def evaluate(
    generate_fn: GenerateFn,
    prompts: Sequence[EvalPrompt] | None = None,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Generate each prompt at its canvas size in batches and score the images.

    `progress(done, total)` is called after each batch.
    """
    prompts = list(load_eval_prompts() if prompts is None else prompts)
    if batch_size < 1:
        raise DataError(f"batch size {batch_size} must be at least 1")
    by_size: dict[tuple[int, int], list[EvalPrompt]] = {}
    for prompt in prompts:
        by_size.setdefault((prompt.width, prompt.height), []).append(prompt)
    correct: dict[int, bool] = {}
    for (width, height), group in by_size.items():
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            images = generate_fn([p.caption for p in batch], width, height)
            if len(images) != len(batch):
                raise DataError(
                    f"generate_fn returned {len(images)} images for {len(batch)} prompts"
                )
            for prompt, image in zip(batch, images):
                if image.size != (width, height):
                    raise DataError(
                        f"generated image is {image.width}x{image.height}; "
                        f"prompt {prompt.index} asks for {width}x{height}"
                    )
                correct[prompt.index] = score(image, prompt.spec)
            if progress is not None:
                progress(len(correct), len(prompts))
    return Report(
        tuple(PromptResult(p.index, p.category, p.caption, correct[p.index]) for p in prompts)
    )


def pipeline_generator(pipe, first_seed: int = 0, **options) -> GenerateFn:
    """A generate_fn that draws with `pipe.generate(..., **options)`, seeding the images of the whole run
    consecutively from `first_seed`, so no two prompts share a seed whatever the batching."""
    generated = 0

    def generate(captions: list[str], width: int, height: int) -> list[Image.Image]:
        nonlocal generated
        seed = first_seed + generated
        generated += len(captions)
        return pipe.generate(captions, width=width, height=height, seed=seed, progress=False, **options)

    return generate


def ground_truth_generator(
    prompts: Sequence[EvalPrompt], seed: int = 0, degradation: str | None = None
) -> GenerateFn:
    """A generate_fn that renders each prompt's own spec (optionally degraded): a check of the
    analyzer, which should score about 1.0 with it."""
    by_caption = {p.caption: p for p in prompts}

    def generate(captions: list[str], width: int, height: int) -> list[Image.Image]:
        images = []
        for caption in captions:
            prompt = by_caption[caption]
            # Seeded per prompt so results do not depend on batching.
            rng = np.random.default_rng([seed, prompt.index])
            image = render(scene_from_spec(rng, prompt.spec, width, height))
            images.append(image if degradation is None else degrade(image, degradation, rng))
        return images

    return generate


def format_table(report: Report) -> str:
    """A plain-text table: one row per category, then the overall score and what it means."""
    counts = report.category_counts()
    lines = [f"{'category':<14} {'prompts':>7} {'accuracy':>8}"]
    for category, accuracy in report.category_accuracy().items():
        lines.append(f"{category:<14} {counts[category]:>7} {accuracy:>8.3f}")
    lines.append(f"{'overall':<14} {len(report.results):>7} {report.overall:>8.3f}")
    lines.append("(overall: the mean over categories, each weighing the same whatever its number of prompts)")
    return "\n".join(lines)


def write_report(report: Report, path: Path) -> None:
    """The report as JSON, written atomically."""
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    write_text_atomically(path, text)
