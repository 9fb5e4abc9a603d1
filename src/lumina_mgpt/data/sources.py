"""Training data sources: conversation JSON / JSONL, `{"image", "prompt"}` records, Parquet tables.

All records of all sources form one numbered sequence (sources in the order given, records in
file order); a record's global index never depends on which other records are broken, so a shard
that covers indices [a, b) always covers the same records. Each record also carries a readable
`source_id` ("file:line" for JSON lines, "file:item" for JSON lists, "file:row" for Parquet).

Accepted records:
- conversations: `{"conversations": [{"from": "human", "value": "...<|image|>..."},
  {"from": "gpt", "value": "<|image|>"}, ...], "image": [paths]}` ("images" also accepted; a
  single path may be a plain string; no image key for text-only dialogs);
- captions: `{"image": path, "prompt": text}`, which becomes a text-to-image question whose
  size phrase is the image's resolution bucket, answered by the image;
- Parquet rows with an image column (encoded bytes, a path, or a `{bytes, path}` struct as the
  `datasets` library writes it) and a prompt column, read as caption records.
Relative image paths resolve against the folder of the file that names them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lumina_mgpt.errors import DataError
from lumina_mgpt.formats import IMAGE_PLACEHOLDER, text_to_image_prompt

SOURCE_SUFFIXES = (".jsonl", ".json", ".parquet")
HUMAN_ROLE, ASSISTANT_ROLE = "human", "gpt"

ImageSource = str | bytes  # a resolved file path or the encoded file's bytes


@dataclass(frozen=True)
class Record:
    """One training example before tokenization: either conversation turns or a caption."""

    source_id: str
    images: tuple[ImageSource, ...]
    turns: tuple[str, ...] = ()
    caption: str | None = None

    def conversation(self, image_sizes: Sequence[tuple[int, int]]) -> list[str]:
        """The turns, given the (width, height) each image was resized to (captions need it)."""
        if self.caption is None:
            return list(self.turns)
        width, height = image_sizes[0]
        return [text_to_image_prompt(self.caption, width, height), IMAGE_PLACEHOLDER]


@dataclass(frozen=True)
class BadRecord:
    """A record that cannot be used, and why."""

    source_id: str
    reason: str


@dataclass(frozen=True)
class ParquetColumns:
    """Which Parquet columns hold the image and its prompt."""

    image: str = "image"
    prompt: str = "prompt"


class _JsonLines:
    """A JSONL file: one record per non-blank line, found again by byte offset."""

    def __init__(self, path: Path):
        self.path = path
        offsets, line_numbers = [], []
        with path.open("rb") as handle:
            offset = 0
            for line_number, line in enumerate(handle, start=1):
                if line.strip():
                    offsets.append(offset)
                    line_numbers.append(line_number)
                offset += len(line)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._line_numbers = np.asarray(line_numbers, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._offsets)

    def read(self, start: int, stop: int) -> Iterator[Record | BadRecord]:
        if start >= stop:
            return
        with self.path.open("rb") as handle:
            for position in range(start, stop):
                source_id = f"{self.path}:{self._line_numbers[position]}"
                handle.seek(int(self._offsets[position]))
                line = handle.readline()
                try:
                    item = json.loads(line)
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    yield BadRecord(source_id, f"not valid JSON: {error}")
                    continue
                yield _parse_or_bad(item, source_id, self.path.parent)


class _JsonList:
    """A JSON file holding a list of records (loaded whole, on first read, once per process)."""

    def __init__(self, path: Path):
        self.path = path
        self._items: list | None = None
        self._count = len(self._load())

    def __getstate__(self) -> dict:
        # Worker processes load the list themselves: the index they receive stays small.
        return {**self.__dict__, "_items": None}

    def _load(self) -> list:
        if self._items is None:
            try:
                items = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise DataError(f"cannot read {self.path} as JSON: {error}; accepted: a JSON list of records") from error
            if not isinstance(items, list):
                raise DataError(
                    f"{self.path} holds a JSON {type(items).__name__}; accepted: a list of records "
                    "(use .jsonl for one record per line)"
                )
            self._items = items
        return self._items

    def __len__(self) -> int:
        return self._count

    def read(self, start: int, stop: int) -> Iterator[Record | BadRecord]:
        items = self._load()
        for position in range(start, stop):
            yield _parse_or_bad(items[position], f"{self.path}:{position}", self.path.parent)


class _ParquetTable:
    """A Parquet table of images and prompts, read row group by row group."""

    def __init__(self, path: Path, columns: ParquetColumns):
        import pyarrow.parquet as pq

        self.path = path
        self.columns = columns
        try:
            metadata = pq.ParquetFile(path).metadata
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read {path} as Parquet: {error}") from error
        names = set(metadata.schema.to_arrow_schema().names)
        missing = [name for name in (columns.image, columns.prompt) if name not in names]
        if missing:
            raise DataError(
                f"{path} has no column(s) {missing}; its columns are {sorted(names)}; "
                "choose the image and prompt columns with --image-column / --prompt-column"
            )
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        self._group_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self._group_starts[-1])

    def read(self, start: int, stop: int) -> Iterator[Record | BadRecord]:
        import pyarrow.parquet as pq

        if start >= stop:
            return
        table_file = pq.ParquetFile(self.path)
        first_group = int(np.searchsorted(self._group_starts, start, side="right")) - 1
        position = start
        for group in range(first_group, len(self._group_starts) - 1):
            group_start = int(self._group_starts[group])
            if group_start >= stop:
                break
            rows = table_file.read_row_group(group, columns=[self.columns.image, self.columns.prompt]).to_pylist()
            for row in rows[position - group_start : stop - group_start]:
                yield self._record(row, f"{self.path}:{position}")
                position += 1

    def _record(self, row: dict, source_id: str) -> Record | BadRecord:
        image, prompt = row[self.columns.image], row[self.columns.prompt]
        if isinstance(image, dict):  # the `datasets` Image feature: {"bytes": ..., "path": ...}
            image = image.get("bytes") or image.get("path")
        if isinstance(image, str):
            image = _resolve_path(image, self.path.parent)
        if not isinstance(image, (str, bytes)) or not image:
            return BadRecord(source_id, f"column {self.columns.image!r} holds no image bytes or path")
        if not isinstance(prompt, str) or not prompt.strip():
            return BadRecord(source_id, f"column {self.columns.prompt!r} holds no prompt text")
        return Record(source_id, (image,), caption=prompt)


class RecordIndex:
    """Every record of a list of source files, numbered 0 .. total - 1, readable by index range."""

    def __init__(self, paths: Sequence[str | os.PathLike], parquet_columns: ParquetColumns = ParquetColumns()):
        if not paths:
            raise DataError("no data source given; accepted: .jsonl, .json or .parquet files")
        # Absolute paths: the job's identity and the source ids must not depend on the working folder.
        self._files = [_open_source(Path(path).resolve(), parquet_columns) for path in paths]
        self._starts = np.concatenate([[0], np.cumsum([len(f) for f in self._files], dtype=np.int64)])

    @property
    def total(self) -> int:
        """Number of records (broken ones included) over all sources."""
        return int(self._starts[-1])

    def describe(self) -> list[dict]:
        """Each source's path and record count (what the manifest and job identity record)."""
        return [{"path": str(f.path), "records": len(f)} for f in self._files]

    def read(self, start: int, stop: int) -> Iterator[Record | BadRecord]:
        """Records with global index in [start, stop), in order, lazily."""
        if not 0 <= start <= stop <= self.total:
            raise DataError(f"record range [{start}, {stop}) is outside 0..{self.total}")
        for number, source in enumerate(self._files):
            file_start, file_stop = int(self._starts[number]), int(self._starts[number + 1])
            low, high = max(start, file_start), min(stop, file_stop)
            if low < high:
                yield from source.read(low - file_start, high - file_start)


def _open_source(path: Path, parquet_columns: ParquetColumns) -> _JsonLines | _JsonList | _ParquetTable:
    if not path.is_file():
        raise DataError(f"data source {path} does not exist or is not a file")
    if path.suffix == ".jsonl":
        return _JsonLines(path)
    if path.suffix == ".json":
        return _JsonList(path)
    if path.suffix == ".parquet":
        return _ParquetTable(path, parquet_columns)
    raise DataError(f"data source {path} has an unknown suffix; accepted: {', '.join(SOURCE_SUFFIXES)}")


def _resolve_path(name: str, folder: Path) -> str:
    path = Path(name).expanduser()
    return str(path if path.is_absolute() else folder / path)


def _parse_or_bad(item: object, source_id: str, folder: Path) -> Record | BadRecord:
    try:
        return parse_record(item, source_id, folder)
    except DataError as error:
        return BadRecord(source_id, str(error))


def parse_record(item: object, source_id: str, folder: Path) -> Record:
    """A Record from one decoded JSON record; DataError says what is wrong with it."""
    if not isinstance(item, dict):
        raise DataError(f"a record must be a JSON object, got {type(item).__name__}")
    if "conversations" in item:
        return _parse_conversation(item, source_id, folder)
    if "prompt" in item and "image" in item:
        prompt, image = item["prompt"], item["image"]
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(image, str) or not image:
            raise DataError('a caption record needs a non-empty text "prompt" and one image path "image"')
        return Record(source_id, (_resolve_path(image, folder),), caption=prompt)
    raise DataError(
        f"record has keys {sorted(item)}; accepted: \"conversations\" (+ \"image\"/\"images\") "
        'or "image" + "prompt"'
    )


def _parse_conversation(item: dict, source_id: str, folder: Path) -> Record:
    turns = item["conversations"]
    if not isinstance(turns, list) or not turns:
        raise DataError('"conversations" must be a non-empty list of {"from", "value"} turns')
    values = []
    for number, turn in enumerate(turns):
        expected_role = HUMAN_ROLE if number % 2 == 0 else ASSISTANT_ROLE
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise DataError(f'turn {number} must be an object with a text "value"')
        if turn.get("from") != expected_role:
            raise DataError(
                f'turn {number} is from {turn.get("from")!r}; turns alternate "{HUMAN_ROLE}", "{ASSISTANT_ROLE}", '
                f'... starting with "{HUMAN_ROLE}"'
            )
        values.append(turn["value"])
    images = item.get("image", item.get("images", []))
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise DataError('"image" / "images" must be a path or a list of paths')
    placeholders = sum(value.count(IMAGE_PLACEHOLDER) for value in values)
    if placeholders != len(images):
        raise DataError(
            f"the turns hold {placeholders} {IMAGE_PLACEHOLDER} placeholders but the record lists "
            f"{len(images)} images; there must be one image per placeholder"
        )
    return Record(source_id, tuple(_resolve_path(p, folder) for p in images), turns=tuple(values))
