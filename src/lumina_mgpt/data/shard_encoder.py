"""Encoding one shard: read a record range, resize each image to its resolution bucket (seeded
crop offset per record), encode the images with the VQ in batches of one bucket size, encode
each conversation, and write the shard file. A record's tokens depend only on the record, its
global index and the settings, never on the shard or batch it was encoded in. Records whose tokens
outnumber `max_seq_len` are skipped like broken ones (and counted apart): a model cannot train on them."""

from __future__ import annotations

import itertools
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lumina_mgpt.data.fingerprints import DataFingerprint, data_fingerprint
from lumina_mgpt.data.shards import EncodedSample, ShardSummary, write_shard
from lumina_mgpt.data.sources import BadRecord, Record, RecordIndex
from lumina_mgpt.errors import DataError, FormatError
from lumina_mgpt.formats import (
    IGNORE_INDEX,
    VocabLayout,
    bucket_sizes,
    closest_bucket,
    encode_conversation,
    open_image,
    resize_to_bucket,
)
from lumina_mgpt.formats.conversation import LOSS_MODES

# The images of the first this many records measure how well the image tokenizer reconstructs the data.
RECONSTRUCTION_SAMPLE = 64

if TYPE_CHECKING:
    from lumina_mgpt.text import TextTokenizer
    from lumina_mgpt.vision import ImageTokenizer


@dataclass(frozen=True)
class PretokenizeSettings:
    """Everything that decides the shards' contents, the accepted share of broken records, and two
    speed knobs: images per image-tokenizer call and threads that decode and resize images.
    `max_seq_len`: the most tokens a sample may have (None: no limit)."""

    target_size: int = 512
    loss_mode: str = "response"
    size_drop: float = 0.0
    center_crop: bool = False
    shard_size: int = 1000
    seed: int = 0
    max_bad_share: float = 0.01
    encode_batch_size: int = 16
    image_threads: int = 4
    max_seq_len: int | None = None

    def __post_init__(self) -> None:
        if self.loss_mode not in LOSS_MODES:
            raise DataError(f"unknown loss mode {self.loss_mode!r}; accepted: {', '.join(LOSS_MODES)}")
        if not 0.0 <= self.size_drop <= 1.0 or not 0.0 <= self.max_bad_share <= 1.0:
            raise DataError(f"size_drop and max_bad_share must lie in [0, 1], got {self.size_drop}, {self.max_bad_share}")
        if min(self.shard_size, self.encode_batch_size, self.image_threads) < 1:
            raise DataError(
                f"shard_size, encode_batch_size and image_threads must be >= 1, got {self.shard_size}, "
                f"{self.encode_batch_size}, {self.image_threads}"
            )
        if self.target_size <= 0:
            raise DataError(f"target_size must be a positive number of pixels, got {self.target_size}")
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise DataError(f"max_seq_len must be a positive number of tokens (or None: no limit), got {self.max_seq_len}")

    def identity(self) -> dict:
        """The settings that change shard contents."""
        settings = asdict(self)
        del settings["encode_batch_size"], settings["image_threads"], settings["max_bad_share"]
        return settings


@dataclass(frozen=True)
class Tokenizers:
    """The text tokenizer, image tokenizer and layout that give the ids their meaning."""

    text: TextTokenizer
    image: ImageTokenizer
    layout: VocabLayout

    def __post_init__(self) -> None:
        if self.image.codebook_size != self.layout.codebook_size or self.image.downsample != self.layout.downsample:
            raise DataError(
                f"the image tokenizer ({self.image.codebook_size} codes, {self.image.downsample}x) does not match "
                f"layout {self.layout.name!r} ({self.layout.codebook_size} codes, {self.layout.downsample}x); "
                "give the image tokenizer the layout was made for"
            )

    def fingerprint(self) -> DataFingerprint:
        return data_fingerprint(self.layout, self.text, self.image)


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to encode any shard of one pretokenize job (`identity` tags its shards)."""

    index: RecordIndex
    tokenizers: Tokenizers
    settings: PretokenizeSettings
    identity: str
    out_dir: Path

    def record_range(self, shard: int) -> tuple[int, int]:
        first = shard * self.settings.shard_size
        return first, min(first + self.settings.shard_size, self.index.total)


def encode_shard(job: ShardJob, shard: int) -> ShardSummary:
    """Encode one shard's records and write the shard file."""
    first, stop = job.record_range(shard)
    encoder = _ShardEncoder(job)
    samples, skipped = encoder.encode(first, stop)
    summary = ShardSummary(
        job=job.identity,
        shard=shard,
        first_record=first,
        stop_record=stop,
        records=len(samples),
        skipped=len(skipped),
        tokens=sum(len(sample.ids) for sample in samples),
        skipped_records=skipped,
        too_long=encoder.too_long,
    )
    write_shard(job.out_dir, samples, summary)
    return summary


def sample_reconstruction(job: ShardJob, limit: int = RECONSTRUCTION_SAMPLE) -> dict | None:
    """How faithfully the image tokenizer reproduces the data: PSNR (dB, from the squared error pooled
    over images, each weighing the same) of encode -> decode on the images of the first `limit`
    records, cut to their buckets exactly as for encoding; None when those records hold no image."""
    import torch

    from lumina_mgpt.vision.metrics import decibels, squared_error
    from lumina_mgpt.vision.pixels import images_to_tensor

    encoder = _ShardEncoder(job)
    by_size: dict[tuple[int, int], list[Image.Image]] = {}
    for position, item in enumerate(job.index.read(0, min(limit, job.index.total))):
        prepared = encoder._prepare(0, position, item)
        if isinstance(prepared, _PreparedRecord):
            for image in prepared.images:
                by_size.setdefault(image.size, []).append(image)
    image_tokenizer, batch_size = job.tokenizers.image, job.settings.encode_batch_size
    errors = []
    for images in by_size.values():
        for start in range(0, len(images), batch_size):
            pixels = images_to_tensor(images[start : start + batch_size])
            errors.append(squared_error(pixels, image_tokenizer.decode(image_tokenizer.encode(pixels)).cpu()))
    if not errors:
        return None
    pooled = torch.cat(errors)
    return {"images": len(pooled), "psnr": round(decibels(pooled.mean()).item(), 2)}


@dataclass(frozen=True)
class _PreparedRecord:
    """A record with its images opened and resized to their buckets."""

    position: int  # within the shard
    record: Record
    sizes: list[tuple[int, int]]  # (width, height) of each image's bucket
    images: list[Image.Image]  # emptied once they are queued for the image tokenizer
    rng: random.Random  # the record's own generator, continued by the size drop


class _ShardEncoder:
    """Reads a record range, opens and resizes its images in threads, encodes them with the VQ in
    batches of one bucket size, then encodes each conversation."""

    def __init__(self, job: ShardJob):
        self.job = job
        self.settings = job.settings
        # Buckets step by the layout's size-indicator step: 32 px officially, finer in small compact models.
        self.sizes = bucket_sizes(job.settings.target_size, step=job.tokenizers.layout.pixels_per_indicator)
        self.codes: dict[tuple[int, int], np.ndarray] = {}  # (record position, image number) -> code grid
        self.pending: dict[tuple[int, int], list[tuple[tuple[int, int], Image.Image]]] = {}
        self.too_long = 0  # skipped records with more than max_seq_len tokens

    def encode(self, first: int, stop: int) -> tuple[list[EncodedSample], list[tuple[str, str]]]:
        """The samples of records [first, stop) and the (source_id, reason) of the skipped ones."""
        records = enumerate(self.job.index.read(first, stop))
        prepared: list[_PreparedRecord | BadRecord] = []
        # Windows of records bound the memory of resized images waiting for the image tokenizer.
        window_size = self.settings.encode_batch_size * self.settings.image_threads
        with ThreadPoolExecutor(self.settings.image_threads) as pool:
            while window := list(itertools.islice(records, window_size)):
                for item in pool.map(lambda pair: self._prepare(first, *pair), window):
                    prepared.append(self._queue(item) if isinstance(item, _PreparedRecord) else item)
        for size in list(self.pending):
            self._flush(size)
        samples, skipped = [], []
        for item in prepared:
            result = item if isinstance(item, BadRecord) else self._sample(item)
            if isinstance(result, BadRecord):
                skipped.append((result.source_id, result.reason))
            else:
                samples.append(result)
        return samples, skipped

    def _prepare(self, first: int, position: int, item: Record | BadRecord) -> _PreparedRecord | BadRecord:
        if isinstance(item, BadRecord):
            return item
        # One generator per record: its crop offsets and size drop do not depend on other records.
        rng = random.Random(f"{self.settings.seed}:{first + position}")
        try:
            images = [open_image(source) for source in item.images]
        except FormatError as error:
            return BadRecord(item.source_id, str(error))
        crop_rng = None if self.settings.center_crop else rng
        resized = [
            resize_to_bucket(image, closest_bucket(image.width, image.height, self.sizes), crop_rng) for image in images
        ]
        return _PreparedRecord(position, item, [image.size for image in resized], resized, rng)

    def _queue(self, prepared: _PreparedRecord) -> _PreparedRecord:
        """Hand the record's images to the per-bucket queues; the record without its images."""
        for number, image in enumerate(prepared.images):
            self.pending.setdefault(image.size, []).append(((prepared.position, number), image))
            if len(self.pending[image.size]) >= self.settings.encode_batch_size:
                self._flush(image.size)
        return replace(prepared, images=[])

    def _flush(self, size: tuple[int, int]) -> None:
        batch = self.pending.pop(size, [])
        if batch:
            grids = self.job.tokenizers.image.encode([image for _, image in batch]).cpu().numpy()
            self.codes.update((key, grid) for (key, _), grid in zip(batch, grids))

    def _sample(self, prepared: _PreparedRecord) -> EncodedSample | BadRecord:
        tokenizers, record = self.job.tokenizers, prepared.record
        grids = [self.codes.pop((prepared.position, number)) for number in range(len(prepared.sizes))]
        try:
            encoded = encode_conversation(
                record.conversation(prepared.sizes), grids, tokenizers.text, tokenizers.layout,
                loss_mode=self.settings.loss_mode, size_drop=self.settings.size_drop, rng=prepared.rng,
            )
        except FormatError as error:
            return BadRecord(record.source_id, str(error))
        if not np.any(encoded.labels != IGNORE_INDEX):
            return BadRecord(record.source_id, f"no token is supervised in loss mode {self.settings.loss_mode!r}")
        limit = self.settings.max_seq_len
        if limit is not None and len(encoded.ids) > limit:
            self.too_long += 1
            return BadRecord(record.source_id, f"{len(encoded.ids)} tokens, more than max_seq_len {limit}")
        return EncodedSample(record.source_id, encoded.ids, encoded.labels)
