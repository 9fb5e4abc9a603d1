"""A stage's batches from its pretokenized data sets (lumina_mgpt.data), in the trainer's protocol."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from lumina_mgpt.errors import TrainingError

logger = logging.getLogger(__name__)


class BatchSource(Protocol):
    """What the trainer reads: an iterable of {"input_ids": (B, T), "labels": (B, T)} LongTensors.

    `iter()` continues from the position `load_state_dict` restored; a new `iter()` after one is
    exhausted starts the next epoch. `len()` (batches per epoch on this rank) is needed for `epochs`.
    """

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class DataBatches:
    """A data sampler's plans collated into padded batches; position and epochs live in the sampler."""

    def __init__(self, dataset, sampler, collator) -> None:
        self.dataset, self.sampler, self.collator = dataset, sampler, collator
        self.layout = dataset.layout

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for plan in self.sampler:
            yield self.collator(self.dataset, plan)

    def __len__(self) -> int:
        if not hasattr(self.sampler, "__len__"):
            raise TypeError("a mixture of data sets is endless")
        return len(self.sampler)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def data_batches(
    stage, index: int, context, seed: int, layout: str | None = None, max_seq_len: int | None = None
) -> DataBatches:
    """This rank's share of stage `stage`'s data: one data set length-grouped, several mixed by ratio.

    Each rank reads `stage.batch_size` sequences per micro-batch (global batch = batch_size x ranks);
    context drop (CFG) is drawn per sample by the collator. `layout`, when given, must be the data's.
    Samples longer than `max_seq_len` tokens are skipped with a warning (`lumina pretokenize
    --max-seq-len` drops them earlier; this is the second line of defence against running out of memory).
    """
    from lumina_mgpt.data import Collator, LengthGroupedBatches, MixedBatches, TokenDataset

    datasets = [TokenDataset(source.manifest) for source in stage.data]
    if max_seq_len is not None:
        datasets = [
            _without_long_samples(dataset, source.manifest, stage.name, max_seq_len, context.is_main)
            for source, dataset in zip(stage.data, datasets)
        ]
    for source, dataset in zip(stage.data[1:], datasets[1:]):
        if dataset.fingerprint != datasets[0].fingerprint:
            raise TrainingError(
                f"data sets {stage.data[0].manifest} and {source.manifest} were tokenized differently "
                f"(fingerprints {datasets[0].fingerprint.combined} and {dataset.fingerprint.combined}); a stage mixes only data "
                "made with the same layout and tokenizers"
            )
    if layout is not None:
        for source, dataset in zip(stage.data, datasets):
            if dataset.layout.name != layout:
                raise TrainingError(
                    f"data set {source.manifest} uses layout {dataset.layout.name!r}; the recipe says {layout!r}"
                )
    global_batch = stage.batch_size * context.world_size
    if len(datasets) == 1:
        dataset = datasets[0]
        sampler = LengthGroupedBatches(
            dataset.lengths, global_batch, seed=seed, rank=context.rank, world_size=context.world_size
        )
    else:
        sampler = MixedBatches(
            [(dataset, source.ratio) for dataset, source in zip(datasets, stage.data)],
            global_batch,
            seed=seed,
            rank=context.rank,
            world_size=context.world_size,
        )
        dataset = sampler.dataset
    collator = Collator(dataset.layout, context_drop=stage.context_drop, seed=seed)
    return DataBatches(dataset, sampler, collator)


def _without_long_samples(dataset, manifest, stage_name: str, max_seq_len: int, report: bool):
    """`dataset` without its samples longer than `max_seq_len` tokens (warned about when `report`)."""
    from lumina_mgpt.data import LengthLimited

    kept = LengthLimited(dataset, max_seq_len)
    if len(kept) == 0:
        raise TrainingError(
            f"stage {stage_name!r}: every sample of {manifest} is longer than max_seq_len = {max_seq_len} tokens "
            f"(the shortest has {int(dataset.lengths.min())}); raise max_seq_len or pretokenize at a smaller --target-size"
        )
    if kept.dropped and report:
        logger.warning(
            "stage %r: skipping %d of %d samples of %s longer than max_seq_len = %d tokens (the longest has %d); "
            "`lumina pretokenize --max-seq-len` drops them before training",
            stage_name, kept.dropped, len(dataset), manifest, max_seq_len, int(dataset.lengths.max()),
        )
    return kept
