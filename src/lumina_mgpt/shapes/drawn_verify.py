"""The self-verifier's yes/no question asked about a model's own drawings, answered by the analyzer.

The verify task's records (tasks.py) ask about rendered scenes, with near misses made up to look like a
drawing's mistakes. A model's real drawings go wrong in their own ways, and best-of-N asks it to judge
exactly those: the canvases stage's model answered "yes" for most drawings of its own that the analyzer
rejects (benchmarks/RESULTS.md). Each drawing here is made by a trained model from a training phrasing of a
random spec (never a ShapesEval prompt), at the model's default sampling, on a ShapesEval canvas. Each is
asked twice, in the verify task's wording: about the prompt it was drawn from, and about a near miss of it
(`tasks.near_miss`, the drawing's mistakes included); the answer is "yes" exactly when the analyzer
(`analyze.detect`, `analyze.score_detections`) finds the asked spec in the drawing.

The data set is written like task_dataset's (PNGs under images/drawn/, one records.jsonl of "verify"
records) and resumes the same way: drawings already on disk are kept, and the records file is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lumina_mgpt.atomic import write_atomically, write_text_atomically
from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes.analyze import detect, score_detections
from lumina_mgpt.shapes.captions import sample_spec
from lumina_mgpt.shapes.spec import Spec
from lumina_mgpt.shapes.task_dataset import RECORDS_FILE, claim_folder, record_line
from lumina_mgpt.shapes.tasks import (
    VERIFY_CATEGORIES,
    VQA_TEMPLATES,
    near_miss,
    prompt_as_quoted,
    understanding_turns,
)
from lumina_mgpt.shapes.world import CANVAS_SIZES

DRAWINGS = "images/drawn"
TASK = "verify"


@dataclass(frozen=True)
class PlannedDrawing:
    """What drawing `index` of a data set shows: a training phrasing of `spec`, on a width x height canvas."""

    spec: Spec
    prompt: str
    width: int
    height: int


def planned_drawing(seed: int, index: int) -> PlannedDrawing:
    rng = np.random.default_rng([seed, index])
    spec = sample_spec(rng, VERIFY_CATEGORIES[int(rng.integers(len(VERIFY_CATEGORIES)))])
    width, height = CANVAS_SIZES[int(rng.integers(len(CANVAS_SIZES)))]
    return PlannedDrawing(spec, prompt_as_quoted(rng, spec), width, height)


def _drawing_name(index: int) -> str:
    return f"{DRAWINGS}/{index:07d}.png"


def model_fingerprint(model: str | os.PathLike) -> str:
    """The sha256 of a model folder's config.json and weights: which model drew a folder's pictures, wherever
    the folder lies."""
    folder = Path(model)
    files = [folder / "config.json", *sorted(folder.glob("*.safetensors"))]
    if not all(path.is_file() for path in files) or len(files) < 2:
        raise DataError(f"{folder} is not a model folder with config.json and *.safetensors weights")
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as file:
            for block in iter(lambda file=file: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def draw_missing(folder: Path, model: str | os.PathLike, plans: list[PlannedDrawing], seed: int,
                 batch_size: int, progress: bool, device: str | None) -> None:  # fmt: skip
    """Draw every planned drawing not yet on disk with the model's defaults, drawing k with seed + k."""
    missing = [k for k in range(len(plans)) if not (folder / _drawing_name(k)).is_file()]
    if not missing:
        return
    from lumina_mgpt.generation.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(model, device=device)
    by_canvas: dict[tuple[int, int], list[int]] = {}
    for k in missing:
        by_canvas.setdefault((plans[k].width, plans[k].height), []).append(k)
    bar = tqdm(total=len(missing), disable=not progress, desc="drawing", unit="drawing")
    for (width, height), ks in by_canvas.items():
        for start in range(0, len(ks), batch_size):
            chunk = ks[start : start + batch_size]
            images = pipe.generate([plans[k].prompt for k in chunk], width=width, height=height,
                                   seed=[seed + k for k in chunk], batch_size=batch_size, progress=False)  # fmt: skip
            for k, image in zip(chunk, images):
                path = folder / _drawing_name(k)
                write_atomically(path, lambda temp, image=image: image.save(temp, format="PNG"))
            bar.update(len(chunk))
    bar.close()


def drawing_questions(seed: int, index: int, plan: PlannedDrawing, image: Image.Image) -> list[tuple[str, str]]:
    """(question, answer) pairs about drawing `index`: its own prompt, then a near miss of it (left out in
    the rare case that no near miss the drawing lacks is found)."""
    rng = np.random.default_rng([seed, index, 1])
    detections = detect(image)
    asked: list[tuple[Spec, str]] = [(plan.spec, plan.prompt)]
    miss = near_miss(rng, plan.spec, detections, drawing_mistakes=True)
    if miss is not None:
        asked.append((miss[0], prompt_as_quoted(rng, miss[0])))
    templates = VQA_TEMPLATES["yes_no"]
    return [
        (templates[int(rng.integers(len(templates)))].format(caption=text),
         "yes" if score_detections(detections, spec) else "no")
        for spec, text in asked
    ]  # fmt: skip


def write_drawn_verify_dataset(
    folder: str | os.PathLike,
    model: str | os.PathLike,
    count: int,
    seed: int,
    batch_size: int = 32,
    progress: bool = True,
    device: str | None = None,
) -> Path:
    """Draw `count` pictures with `model` into folder/images/drawn and write their verify records (two
    questions a drawing) to folder/records.jsonl, and the count of each answer to folder/answers.json, drawing
    on `device` (default: the Pipeline's). Resumable; a folder begun with another seed or another model (its
    weights' fingerprint) is refused. Returns the records file."""
    if not isinstance(count, int) or count < 1:
        raise DataError(f"count of drawings is {count!r}; accepted: a whole number of at least 1")
    folder = Path(folder)
    claim_folder(folder, {"seed": int(seed), "model_sha256": model_fingerprint(model)})
    plans = [planned_drawing(seed, k) for k in range(count)]
    draw_missing(folder, model, plans, seed, batch_size, progress, device)
    lines = []
    answers = {"yes": 0, "no": 0}
    for k, plan in enumerate(tqdm(plans, disable=not progress, desc="asking the analyzer", unit="drawing")):
        with Image.open(folder / _drawing_name(k)) as image:
            questions = drawing_questions(seed, k, plan, image.convert("RGB"))
        for question, answer in questions:
            answers[answer] += 1
            lines.append(record_line(TASK, understanding_turns(question, answer), [_drawing_name(k)]))
    write_text_atomically(folder / "answers.json", json.dumps(answers) + "\n")
    return write_text_atomically(folder / RECORDS_FILE, "".join(lines))
