"""Which samples form each batch: length-grouped epochs and ratio mixing of several data sets.

Both samplers plan *global* batches (all ranks together), deterministically from a seed, and
hand each rank its share (`rank::world_size` of a batch sorted by length, so every rank gets
similar lengths). Both are resumable mid-epoch through `state_dict()` / `load_state_dict()`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from lumina_mgpt.data.loader import BatchPlan, Sample, TokenDataset
from lumina_mgpt.errors import DataError


def _check_rank(rank: int, world_size: int) -> None:
    if not 0 <= rank < world_size:
        raise DataError(f"need 0 <= rank < world_size, got rank {rank} and world_size {world_size}")


class LengthGroupedBatches:
    """Epochs of global batches of samples of similar length.

    Each epoch: a seeded permutation of all samples, cut into chunks of `chunk_batches` global
    batches, each chunk sorted by length and cut into batches of `global_batch_size` samples (or,
    with `max_tokens`, of as many samples, up to that, as fit max_tokens padded tokens, rounded
    down to whole samples per rank and never fewer than one per rank); then the batches are
    shuffled. Every sample appears exactly once per epoch. A batch that would leave a rank with
    nothing (fewer samples than ranks, at the end of a chunk) is merged into the batch before it.

    Iterating yields the rest of the current epoch and then moves to the next epoch."""

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        global_batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        chunk_batches: int = 64,
        max_tokens: int | None = None,
    ):
        _check_rank(rank, world_size)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if len(self.lengths) < world_size or global_batch_size < world_size or chunk_batches < 1:
            raise DataError(
                f"need at least world_size ({world_size}) samples ({len(self.lengths)} given), "
                f"global_batch_size >= world_size ({global_batch_size} given) and chunk_batches >= 1"
            )
        if seed < 0:
            raise DataError(f"seed must be a non-negative integer, got {seed}")
        if max_tokens is not None and max_tokens < 1:
            raise DataError(f"max_tokens must be a positive number of padded tokens, got {max_tokens}")
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.chunk_batches = chunk_batches
        self.max_tokens = max_tokens
        self.epoch = 0
        self.batch_index = 0
        self._cached: tuple[int, list[np.ndarray]] | None = None

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's global batches, in order (each sorted by length)."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._plan(epoch))
        return self._cached[1]

    def _plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        chunk = self.chunk_batches * self.global_batch_size
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            for batch in self._cut(part[np.argsort(self.lengths[part], kind="stable")]):
                if len(batch) < self.world_size:
                    batches[-1] = np.concatenate([batches[-1], batch])
                else:
                    batches.append(batch)
        return [batches[i] for i in rng.permutation(len(batches))]

    def _cut(self, ordered: np.ndarray) -> list[np.ndarray]:
        """Consecutive batches of a length-sorted run of samples."""
        batches, start = [], 0
        while start < len(ordered):
            size = min(self.global_batch_size, len(ordered) - start)
            if self.max_tokens is not None:
                # Sorted ascending: the padded size of ordered[start:start + n] is n * length of its last one.
                fits = (np.arange(1, size + 1) * self.lengths[ordered[start : start + size]]) <= self.max_tokens
                size = int(np.argmin(fits)) if not fits.all() else size
                # Every rank needs a sample, even past the budget; then whole samples per rank.
                size = max(size - size % self.world_size, min(self.world_size, len(ordered) - start))
            batches.append(ordered[start : start + size])
            start += size
        return batches

    def __len__(self) -> int:
        """Number of global batches in the current epoch."""
        return len(self.global_batches(self.epoch))

    def __iter__(self) -> Iterator[BatchPlan]:
        batches = self.global_batches(self.epoch)
        while self.batch_index < len(batches):
            step = self.batch_index
            self.batch_index += 1  # counted before yielding: a state saved now resumes after this batch
            share = batches[step][self.rank :: self.world_size]
            yield BatchPlan(step, share, np.full(len(share), self.epoch, dtype=np.int64))
        self.epoch += 1
        self.batch_index = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_index": self.batch_index, **self._settings()}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; DataError when the batching settings differ."""
        saved = {key: state.get(key) for key in self._settings()}
        if saved != self._settings():
            raise DataError(f"cannot resume: the saved batching settings {saved} differ from {self._settings()}")
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])

    def _settings(self) -> dict:
        return {
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "chunk_batches": self.chunk_batches,
            "max_tokens": self.max_tokens,
            "samples": len(self.lengths),
        }


class ConcatTokens:
    """Several token data sets of one fingerprint seen as one, indices running on in order."""

    def __init__(self, datasets: Sequence[TokenDataset]):
        if not datasets:
            raise DataError("need at least one data set")
        fingerprints = {dataset.fingerprint.combined for dataset in datasets}
        if len(fingerprints) > 1:
            raise DataError(
                f"data sets made with different layouts or tokenizers cannot be mixed (fingerprints {sorted(fingerprints)})"
            )
        self.datasets = list(datasets)
        self.layout = datasets[0].layout
        self.offsets = np.concatenate([[0], np.cumsum([len(dataset) for dataset in datasets])])
        self.lengths = np.concatenate([dataset.lengths for dataset in datasets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Sample:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is outside 0..{len(self) - 1}")
        return self.datasets[part][index - int(self.offsets[part])]


class MixedBatches:
    """An endless sequence of global batches drawing from several data sets by ratio (Omni-SFT).

    Every slot of every global batch goes to the data set furthest behind its share (smooth
    weighted round robin), so after n samples each data set has supplied its ratio of n within
    one sample. Each data set is read in its own length-grouped epochs; indices address
    `self.dataset` (the data sets concatenated in the order given)."""

    def __init__(
        self,
        parts: Sequence[tuple[TokenDataset, float]],
        global_batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        chunk_batches: int = 64,
    ):
        _check_rank(rank, world_size)
        if not parts or any(ratio <= 0 for _, ratio in parts) or global_batch_size < world_size:
            raise DataError(
                "need at least one (data set, ratio) pair, every ratio > 0 and global_batch_size >= world_size"
            )
        self.dataset = ConcatTokens([dataset for dataset, _ in parts])
        ratios = np.asarray([ratio for _, ratio in parts], dtype=np.float64)
        self.weights = ratios / ratios.sum()
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        # Each data set's own epochs (with a seed of its own), in batches of about its share of a global batch.
        self._streams = [
            LengthGroupedBatches(
                dataset.lengths, max(1, round(global_batch_size * weight)), seed=seed * 1_000_003 + number,
                chunk_batches=chunk_batches,
            )
            for number, ((dataset, _), weight) in enumerate(zip(parts, self.weights))
        ]
        self.step = 0
        self.taken = np.zeros(len(parts), dtype=np.int64)

    def __iter__(self) -> Iterator[BatchPlan]:
        while True:
            counts = self._slot_counts()
            indices, epochs = [], []
            for number, count in enumerate(counts):
                local, epoch = self._stream_items(number, int(self.taken[number]), int(count))
                indices.append(local + self.dataset.offsets[number])
                epochs.append(epoch)
            indices, epochs = np.concatenate(indices), np.concatenate(epochs)
            order = np.argsort(self.dataset.lengths[indices], kind="stable")
            step = self.step
            self.step += 1
            self.taken += counts
            share = order[self.rank :: self.world_size]
            yield BatchPlan(step, indices[share], epochs[share])

    def _slot_counts(self) -> np.ndarray:
        taken = self.taken.astype(np.float64).copy()
        total = float(self.taken.sum())
        counts = np.zeros(len(self.weights), dtype=np.int64)
        for slot in range(self.global_batch_size):
            number = int(np.argmax(self.weights * (total + slot + 1) - taken))
            taken[number] += 1
            counts[number] += 1
        return counts

    def _stream_items(self, number: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Items start .. start + count - 1 of data set `number`'s endless sequence of epochs."""
        stream = self._streams[number]
        size = len(stream.lengths)
        positions = np.arange(start, start + count)
        items, epochs = np.empty(count, dtype=np.int64), positions // size
        for epoch in np.unique(epochs):
            order = np.concatenate(stream.global_batches(int(epoch)))
            chosen = epochs == epoch
            items[chosen] = order[positions[chosen] % size]
        return items, epochs

    def state_dict(self) -> dict:
        return {"step": self.step, "taken": self.taken.tolist(), "seed": self.seed, "weights": self.weights.tolist()}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; DataError when the seed or ratios differ."""
        saved_weights = np.asarray(state.get("weights", []), dtype=np.float64)
        if state.get("seed") != self.seed or saved_weights.shape != self.weights.shape or not np.allclose(saved_weights, self.weights):
            raise DataError(
                f"cannot resume: saved seed {state.get('seed')} / ratios {state.get('weights')} differ from "
                f"{self.seed} / {self.weights.tolist()}"
            )
        self.step, self.taken = int(state["step"]), np.asarray(state["taken"], dtype=np.int64)
