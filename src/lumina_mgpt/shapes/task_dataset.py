"""Write the multi-task shapes world's training records to disk as a data set `lumina pretokenize`
reads: PNGs under images/<task>/ and one JSONL of conversation records
(`{"conversations": [...], "image": [paths], "task": name}`; rewriting's records hold no image).

Records of different tasks are interleaved evenly (each task's records spread over the whole file),
so any prefix of the file holds every task in its share.

Pretokenizing: the images keep their sizes only where they are resolution buckets of the target
size. 64x64, 80x48 and 48x80 are buckets of 64; the 64x128 dual panels are buckets of 96 but not of
64 (where they would be squeezed to 48x80), so pretokenize the single-canvas tasks at --target-size 64
and the dual-panel ones at --target-size 96: write each group into its own folder, with counts of its
tasks only (`tasks.TASKS[name].dual_panel` tells them apart).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from lumina_mgpt.atomic import write_atomically, write_text_atomically
from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes.tasks import (
    PANEL,
    REQUEST_TASKS,
    TASK_NAMES,
    Canvases,
    canvases_for,
    read_request_record,
    training_record,
)
from lumina_mgpt.text.known_words import KnownWords

RECORDS_FILE = "records.jsonl"
# What the images on disk were drawn with: a resumed run must draw with the same, or it would pair old
# pictures with new records. Counts may differ (record i of a task does not depend on them).
PARAMS_FILE = "params.json"


def _check_counts(counts: Mapping[str, int]) -> None:
    for task, count in counts.items():
        if task not in TASK_NAMES:
            raise DataError(f"unknown task {task!r} in the record counts; accepted: {', '.join(TASK_NAMES)}")
        if not isinstance(count, int) or count < 0:
            raise DataError(f"record count of {task} is {count!r}; accepted: a whole number of at least 0")


def interleaved_order(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """(task, index) of every record, each task's records spread evenly over the sequence."""
    slots = [
        ((index + 0.5) / count, TASK_NAMES.index(task), index, task)
        for task, count in counts.items()
        for index in range(count)
    ]
    return [(task, index) for _, _, index, task in sorted(slots)]


def write_task_dataset(
    folder: str | os.PathLike,
    counts: Mapping[str, int],
    seed: int,
    progress: bool = True,
    canvases: Canvases = (PANEL,),
    known_words: KnownWords | None = None,
) -> Path:
    """Write `counts[task]` training records of each task into folder/images and folder/records.jsonl;
    `canvases`: those the pictures of understanding tasks are drawn on (`tasks.training_record`).
    With `known_words`, the records are the requests stage's (`tasks.read_request_record`: requests in
    every training style, as a model with these known words reads them; REQUEST_TASKS only).

    Deterministic for (counts, seed, canvases): record i of a task is the same whatever the other counts.
    Resumable: images already on disk are kept, and the records file is written last, atomically,
    so a finished data set is never half written. A folder begun with another seed or other canvases
    (PARAMS_FILE) is refused. Returns the records file.
    """
    _check_counts(counts)
    canvases = canvases_for(counts, canvases)  # refused before any record is written
    folder = Path(folder)
    params = {"seed": int(seed), "canvases": [[int(side) for side in size] for size in canvases]}
    if known_words is not None:
        if unread := sorted(set(counts) - set(REQUEST_TASKS)):
            raise DataError(f"requests as read are {', '.join(REQUEST_TASKS)} records only, not {', '.join(unread)}")
        params["known_words_sha256"] = known_words.fingerprint()
    claim_folder(folder, params)
    order = interleaved_order(counts)
    lines = []
    for task, index in tqdm(order, disable=not progress, desc="writing task records", unit="record"):
        if known_words is None:
            record = training_record(task, seed, index, canvases)
        else:
            record = read_request_record(task, seed, index, known_words.read)
        names = []
        for number, image in enumerate(record.images):
            name = f"images/{task}/{index:07d}-{number}.png"
            if not (folder / name).is_file():
                write_atomically(folder / name, lambda temp, image=image: image.save(temp, format="PNG"))
            names.append(name)
        lines.append(record_line(task, record.turns, names))
    return write_text_atomically(folder / RECORDS_FILE, "".join(lines))


def record_line(task: str, turns: Sequence[str], image_names: Sequence[str]) -> str:
    """One line of a records file: the turns (human first, alternating), the images' paths, the task."""
    roles = ("human", "gpt")
    line: dict = {"conversations": [{"from": roles[i % 2], "value": turn} for i, turn in enumerate(turns)]}
    if image_names:
        line["image"] = list(image_names)
    line["task"] = task
    return json.dumps(line) + "\n"


def claim_folder(folder: Path, params: dict) -> None:
    """Record `params` in the folder, or refuse one whose images were drawn with others."""
    path = folder / PARAMS_FILE
    if path.is_file():
        found = json.loads(path.read_text())
        if found != params:
            raise DataError(
                f"{folder} holds records drawn with {found}, not {params}: resuming would pair its images with "
                "other records; write into a new folder, or delete this one"
            )
        return
    write_text_atomically(path, json.dumps(params) + "\n")
