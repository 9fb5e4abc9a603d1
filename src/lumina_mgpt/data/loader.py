"""Reading token data sets for training: `TokenDataset` (all shards of a manifest, in memory as
flat int32 arrays) and `Collator` (context drop for classifier-free guidance, right padding).

Context drop: with probability `context_drop`, every token before the first supervised
<start-of-image> is removed, BOS included. This matches docs/FORMATS.md ("the model sees only the
image block") and the generation engine, whose unconditional rows start at <start-of-image>
with no BOS. The draw is seeded by (seed, epoch, sample index): the same sample gets the same
decision in the same epoch whatever the batch, rank or restart.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from lumina_mgpt.data.fingerprints import DataFingerprint
from lumina_mgpt.data.manifest import read_manifest
from lumina_mgpt.data.shards import read_samples
from lumina_mgpt.errors import DataError
from lumina_mgpt.formats import IGNORE_INDEX, VocabLayout


@dataclass(frozen=True)
class Sample:
    """One training sequence: ids and labels aligned (labels -100 where not supervised)."""

    ids: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class BatchPlan:
    """This rank's part of one global batch: sample indices and the epoch each sample is in
    (made by the samplers of lumina_mgpt.data.batching)."""

    step: int
    indices: np.ndarray
    epochs: np.ndarray


class SampleSource(Protocol):
    """What a collator reads samples from: TokenDataset, ConcatTokens."""

    def __getitem__(self, index: int) -> Sample: ...


class TokenDataset:
    """The samples of a pretokenized data set, indexed 0 .. len - 1 in shard order.

    `expected_fingerprint` (a DataFingerprint or its `combined` digest) refuses a data set whose
    ids were made with another layout, text tokenizer or image tokenizer."""

    def __init__(self, manifest_dir: str | os.PathLike, expected_fingerprint: DataFingerprint | str | None = None):
        folder = Path(manifest_dir)
        manifest = read_manifest(folder)
        self.fingerprint = DataFingerprint.from_dict(manifest["fingerprint"])
        if expected_fingerprint is not None:
            expected = getattr(expected_fingerprint, "combined", expected_fingerprint)
            if expected != self.fingerprint.combined:
                raise DataError(
                    f"data set {folder} was tokenized with fingerprint {self.fingerprint.combined} "
                    f"(layout {self.fingerprint.layout[:12]}, text {self.fingerprint.text_tokenizer[:12]}, "
                    f"image {self.fingerprint.image_tokenizer[:12]}), but fingerprint {expected} is expected; "
                    "pretokenize it again with this model's layout and tokenizers"
                )
        self.layout = VocabLayout.from_dict(manifest["layout"])
        self.manifest = manifest
        ids, labels, lengths, source_ids = [], [], [], []
        for shard in manifest["shards"]:
            table = read_samples(folder / shard["file"])
            if table.num_rows != shard["records"]:
                raise DataError(f"{folder / shard['file']} holds {table.num_rows} samples, the manifest says {shard['records']}")
            ids.append(_flat_values(table.column("ids")))
            labels.append(_flat_values(table.column("labels")))
            lengths.append(table.column("length").to_numpy())
            source_ids.extend(table.column("source_id").to_pylist())
        self.lengths = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)
        self._ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        self._labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)
        self._starts = np.concatenate([[0], np.cumsum(self.lengths)])
        self.source_ids = source_ids
        if len(self._ids) != self._starts[-1] or len(self._labels) != len(self._ids):
            raise DataError(f"the shards of {folder} disagree with their `length` column; the data set is damaged")

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is outside 0..{len(self) - 1}")
        start, stop = self._starts[index], self._starts[index + 1]
        return Sample(self._ids[start:stop].astype(np.int64), self._labels[start:stop].astype(np.int64))


class LengthLimited:
    """The samples of a data set no longer than `max_len` tokens, indexed 0 .. len - 1 in their order;
    `dropped` counts the others."""

    def __init__(self, dataset: TokenDataset, max_len: int):
        self.dataset = dataset
        self.kept = np.flatnonzero(dataset.lengths <= max_len)
        self.dropped = len(dataset) - len(self.kept)
        self.lengths = dataset.lengths[self.kept]
        self.layout = dataset.layout
        self.fingerprint = dataset.fingerprint

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is outside 0..{len(self) - 1}")
        return self.dataset[int(self.kept[index])]


def _flat_values(column: pa.ChunkedArray) -> np.ndarray:
    return np.concatenate([chunk.flatten().to_numpy() for chunk in column.chunks]) if column.num_chunks else np.zeros(0, np.int32)


class Collator:
    """Samples -> {"input_ids", "labels"} LongTensors (B, T), right-padded with pad_id / -100."""

    def __init__(self, layout: VocabLayout, context_drop: float = 0.1, seed: int = 0):
        if not 0.0 <= context_drop <= 1.0:
            raise DataError(f"context_drop must lie in [0, 1], got {context_drop}")
        self.pad_id = layout.pad_id
        self.start_image_id = layout.start_image_id
        self.context_drop = context_drop
        self.seed = seed

    def __call__(self, dataset: SampleSource, plan: BatchPlan) -> dict[str, torch.Tensor]:
        """The tensors of batch `plan`, read from `dataset`."""
        if len(plan.indices) == 0:
            raise DataError(f"batch {plan.step} is empty; a batch needs at least one sample")
        kept = [
            self.drop_context(dataset[int(index)], int(index), int(epoch))
            for index, epoch in zip(plan.indices, plan.epochs)
        ]
        width = max(len(sample.ids) for sample in kept)
        input_ids = torch.full((len(kept), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(kept), width), IGNORE_INDEX, dtype=torch.long)
        for row, sample in enumerate(kept):
            input_ids[row, : len(sample.ids)] = torch.from_numpy(sample.ids)
            labels[row, : len(sample.labels)] = torch.from_numpy(sample.labels)
        return {"input_ids": input_ids, "labels": labels}

    def drop_context(self, sample: Sample, index: int, epoch: int) -> Sample:
        """`sample`, or (when the seeded draw says so) its tail from the first supervised image."""
        if self.context_drop == 0.0 or random.Random(f"{self.seed}:{epoch}:{index}").random() >= self.context_drop:
            return sample
        start = first_supervised_image(sample, self.start_image_id)
        if start is None:
            return sample
        return Sample(sample.ids[start:], sample.labels[start:])


def first_supervised_image(sample: Sample, start_image_id: int) -> int | None:
    """Position of the first <start-of-image> whose block is supervised (an answer image), or None.

    The block's first size indicator is supervised in both loss modes, while <start-of-image>
    itself is not in mode "image": hence the look at the next position."""
    opens = np.flatnonzero(sample.ids[:-1] == start_image_id)
    supervised = opens[sample.labels[opens + 1] != IGNORE_INDEX]
    return int(supervised[0]) if len(supervised) else None
