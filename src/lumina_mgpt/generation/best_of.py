"""Best-of-N: draw N candidates of an image, let verifiers (verifiers.py) rank them, keep the best.

Seeds: the candidates of the image whose seed is s (image i of a call: seed + i, as without best-of) use
seeds s * N + j, j = 0 .. N - 1. Candidate 0 of best-of-1 is the plain image; distinct image seeds never
share a candidate seed; a run is reproduced by its seed and N alone.

Each candidate's metadata (`parameters` JSON, written into its PNG) gains a "best_of" object: N, the
verifiers, which candidate this is and which was chosen, and for every candidate its seed, its score from
each verifier and its mean rank over them (1 is best; ties share their mean rank).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.generation.checks import MAX_SEED, check_integer
from lumina_mgpt.generation.verifiers import Verifier, best_index, check_scores, combine_ranks

MAX_BEST_OF = 256


@dataclass(frozen=True)
class BestOf:
    """One image's candidates (in seed order, each with its metadata) and the index of the chosen one."""

    candidates: tuple[Image.Image, ...]
    chosen: int

    @property
    def image(self) -> Image.Image:
        return self.candidates[self.chosen]


def check_best_of(best_of: object) -> int:
    return check_integer("best_of", best_of, 1, "candidates drawn per image, the verifiers keep one", MAX_BEST_OF)


def candidate_seeds(image_seed: int, best_of: int) -> list[int]:
    """The seeds of the candidates of the image whose seed is `image_seed` (see the module docstring)."""
    last = image_seed * best_of + best_of - 1
    if last > MAX_SEED:
        raise GenerationError(
            f"seed {image_seed} with best_of {best_of} needs candidate seeds up to {last}, beyond {MAX_SEED} "
            f"(2**63-1); accepted: image seeds up to {(MAX_SEED - best_of + 1) // best_of}"
        )
    return [image_seed * best_of + j for j in range(best_of)]


def choose(
    candidates: Sequence[Image.Image], prompt: str, seeds: Sequence[int], verifiers: Sequence[tuple[str, Verifier]]
) -> BestOf:
    """Score `candidates` of `prompt` with every verifier, choose the best by mean rank (the lowest seed on a
    tie) and record every candidate's scores and rank in each candidate's metadata."""
    scores = {name: check_scores(name, verify(list(candidates), prompt), len(candidates)) for name, verify in verifiers}
    mean_ranks = combine_ranks(list(scores.values()))
    chosen = best_index(mean_ranks)
    table = [
        {"seed": seed, "scores": {name: values[j] for name, values in scores.items()}, "mean_rank": mean_ranks[j]}
        for j, seed in enumerate(seeds)
    ]
    for j, image in enumerate(candidates):
        parameters = json.loads(image.info.get("parameters", "{}"))
        parameters["best_of"] = {
            "n": len(candidates), "verifiers": list(scores), "judged_prompt": prompt, "candidate": j,
            "chosen": chosen, "candidates": table,
        }  # fmt: skip
        image.info["parameters"] = json.dumps(parameters)
    return BestOf(tuple(candidates), chosen)
