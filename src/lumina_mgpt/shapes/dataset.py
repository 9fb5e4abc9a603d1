"""Write shapes examples to disk as a data set `lumina pretokenize` reads: PNGs plus a JSONL of
`{"image": path, "prompt": caption}` records (the simple record format)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes.examples import Example, sample_example
from lumina_mgpt.shapes.world import CANVAS_SIZES

RECORDS_FILE = "records.jsonl"


def write_dataset(
    folder: str | os.PathLike,
    count: int,
    seed: int,
    sizes: Sequence[tuple[int, int]] = CANVAS_SIZES,
    progress: bool = True,
) -> Path:
    """Render `count` examples (sizes taken in turn) into folder/images and folder/records.jsonl.

    Deterministic for (count, seed, sizes). Resumable: images already on disk are kept, and the
    records file is written last, atomically, so a finished data set is never half written.
    Returns the records file.
    """
    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in tqdm(range(count), disable=not progress, desc="rendering shapes", unit="img"):
        example = _sample_fitting(rng, sizes[i % len(sizes)])
        name = f"images/{i:07d}.png"
        if not (folder / name).is_file():
            tmp = folder / (name + ".tmp")
            example.image.save(tmp, format="PNG")
            os.replace(tmp, folder / name)
        records.append({"image": name, "prompt": example.caption, "category": example.category})
    target = folder / RECORDS_FILE
    tmp = folder / (RECORDS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, target)
    return target


def _sample_fitting(rng: np.random.Generator, size: tuple[int, int]) -> Example:
    """An example at `size`, drawing again when its objects do not fit (small canvases cannot
    always hold four objects with their margins)."""
    for _ in range(100):
        try:
            return sample_example(rng, size=size)
        except DataError:
            continue
    raise DataError(f"no example fits a {size[0]}x{size[1]} canvas after 100 draws")
