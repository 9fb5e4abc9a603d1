"""Training examples of the shapes world: an image, its caption and the spec it satisfies.

Sampling is seeded and unlimited; captions of the held-out evaluation set are never produced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes.captions import describe, sample_spec
from lumina_mgpt.shapes.prompts import CATEGORY_COUNTS, is_held_out
from lumina_mgpt.shapes.spec import CATEGORIES, Spec
from lumina_mgpt.shapes.world import CANVAS_SIZES, Scene, check_canvas_size, render, scene_from_spec

# Far more than ever needed: at most ~42 % of any category's captions are held out.
CAPTION_ATTEMPTS = 1000


@dataclass(frozen=True)
class Example:
    """A rendered scene with a caption that describes it and the spec the caption means."""

    image: Image.Image
    caption: str
    spec: Spec
    scene: Scene
    width: int
    height: int
    category: str


def _category_weights() -> np.ndarray:
    counts = np.array([CATEGORY_COUNTS[c] for c in CATEGORIES], dtype=np.float64)
    return counts / counts.sum()


def sample_training_caption(rng: np.random.Generator, category: str) -> tuple[Spec, str]:
    """A random (spec, caption) of `category` whose caption is not held out."""
    for _ in range(CAPTION_ATTEMPTS):
        spec = sample_spec(rng, category)
        caption = describe(spec, rng)
        if not is_held_out(caption):
            return spec, caption
    raise DataError(f"no training caption found for category {category!r}")


def sample_example(
    rng: np.random.Generator,
    size: tuple[int, int] | None = None,
    category: str | None = None,
) -> Example:
    """One example; `size` (width, height) defaults to a random entry of CANVAS_SIZES and
    `category` to a random one in GenEval's proportions."""
    width, height = size if size is not None else CANVAS_SIZES[int(rng.integers(len(CANVAS_SIZES)))]
    check_canvas_size(width, height)
    if category is None:
        category = str(rng.choice(CATEGORIES, p=_category_weights()))
    spec, caption = sample_training_caption(rng, category)
    scene = scene_from_spec(rng, spec, width, height)
    return Example(render(scene), caption, spec, scene, width, height, category)
