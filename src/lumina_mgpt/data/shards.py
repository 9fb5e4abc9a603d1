"""Token shards: Parquet files of encoded samples, each carrying a summary of how it was made.

Columns: `ids` and `labels` (list<int32>, labels -100 where not supervised, aligned with ids),
`length` (int32) and `source_id` (string). The summary (record range, counts, skipped records and
the identity of the job) lives in the file's key-value metadata, so a finished shard is one file,
written atomically, and a restarted job can trust it without reading its rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lumina_mgpt.atomic import write_atomically
from lumina_mgpt.errors import DataError

SUMMARY_KEY = b"lumina_mgpt.shard"
SCHEMA = pa.schema(
    [
        ("ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("length", pa.int32()),
        ("source_id", pa.string()),
    ]
)


def shard_file_name(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


@dataclass(frozen=True)
class EncodedSample:
    """One tokenized record."""

    source_id: str
    ids: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class ShardSummary:
    """What one shard covers and holds; `job` identifies the settings and inputs that made it."""

    job: str
    shard: int
    first_record: int
    stop_record: int
    records: int
    skipped: int
    tokens: int
    skipped_records: list[tuple[str, str]] = field(default_factory=list)  # (source_id, reason)
    too_long: int = 0  # of the skipped records, those with more tokens than max_seq_len

    @property
    def file(self) -> str:
        return shard_file_name(self.shard)

    def to_dict(self) -> dict:
        return {**asdict(self), "skipped_records": [list(pair) for pair in self.skipped_records]}

    @classmethod
    def from_dict(cls, data: dict) -> ShardSummary:
        return cls(**{**data, "skipped_records": [tuple(pair) for pair in data["skipped_records"]]})


def write_shard(folder: Path, samples: Sequence[EncodedSample], summary: ShardSummary) -> Path:
    """Write the shard atomically (temp file + os.replace) and return its path."""
    lengths = [len(sample.ids) for sample in samples]
    table = pa.table(
        {
            "ids": pa.array([sample.ids.astype(np.int32) for sample in samples], type=pa.list_(pa.int32())),
            "labels": pa.array([sample.labels.astype(np.int32) for sample in samples], type=pa.list_(pa.int32())),
            "length": pa.array(lengths, type=pa.int32()),
            "source_id": pa.array([sample.source_id for sample in samples], type=pa.string()),
        },
        schema=SCHEMA.with_metadata({SUMMARY_KEY: json.dumps(summary.to_dict()).encode()}),
    )
    return write_atomically(folder / summary.file, lambda temp: pq.write_table(table, temp))


def read_summary(path: Path) -> ShardSummary:
    """The summary stored in a shard file; DataError for files that are not shards."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        return ShardSummary.from_dict(json.loads(metadata[SUMMARY_KEY]))
    except (OSError, KeyError, TypeError, ValueError, pa.ArrowInvalid) as error:
        raise DataError(f"{path} is not a token shard written by `lumina pretokenize`: {error}") from error


def read_samples(path: Path) -> pa.Table:
    """The rows of a shard (ids, labels, length, source_id)."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise DataError(f"cannot read token shard {path}: {error}") from error
    if not table.schema.remove_metadata().equals(SCHEMA):
        raise DataError(f"{path} has columns {table.schema.names}; a token shard has {SCHEMA.names}")
    return table
