"""Pre-tokenization jobs: data sources -> token shards -> manifest.

Shard k always covers the records with global index [k * shard_size, (k + 1) * shard_size), so
a job killed at any point and started again writes exactly the same shards: finished shards
(atomic files tagged with the job's identity) are kept, the others are encoded again, and the
manifest is written last, once every shard exists. Worker processes each encode whole shards;
under torchrun each rank takes shards rank::world_size and the last rank to finish writes the
manifest.

The manifest also records how faithfully the image tokenizer reproduces the data (PSNR of encode ->
decode on the first images), with a warning below POOR_RECONSTRUCTION_DB: a model trained on the
tokens can only learn what the tokenizer keeps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from lumina_mgpt.data.fingerprints import DataFingerprint
from lumina_mgpt.data.manifest import read_manifest, write_manifest
from lumina_mgpt.data.shard_encoder import (
    PretokenizeSettings,
    ShardJob,
    Tokenizers,
    encode_shard,
    sample_reconstruction,
)
from lumina_mgpt.data.shards import ShardSummary, read_summary, shard_file_name
from lumina_mgpt.data.sources import ParquetColumns, RecordIndex
from lumina_mgpt.errors import DataError, FormatError
from lumina_mgpt.formats import bucket_sizes

logger = logging.getLogger(__name__)

# Below this the image tokenizer distorts the data. The embedded shapes tokenizer, measured as here
# (64 images at 64 px): 28.0 dB on shapes renders like those it was trained on (25-28 over samples),
# 9.0 dB on photos and 10.5 dB on black strokes on white, which come back as coloured blobs.
POOR_RECONSTRUCTION_DB = 20.0


def pretokenize(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    tokenizers: Tokenizers,
    settings: PretokenizeSettings = PretokenizeSettings(),
    parquet_columns: ParquetColumns = ParquetColumns(),
    workers: int = 1,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> dict | None:
    """Encode `sources` into token shards under `out_dir`; return the manifest, or None when
    other ranks still have shards to finish (the last one writes the manifest).

    Restarting with the same inputs resumes; a folder holding another job's shards is refused.
    DataError when more than `settings.max_bad_share` of the records are broken."""
    if not 0 <= rank < world_size or workers < 1:
        raise DataError(f"need 0 <= rank < world_size and workers >= 1, got rank {rank}, world {world_size}, {workers} workers")
    index = RecordIndex(sources, parquet_columns)
    if index.total == 0:
        raise DataError(f"the sources {[str(s) for s in sources]} hold no records")
    fingerprint = tokenizers.fingerprint()
    identity = _job_identity(index, fingerprint, settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = read_manifest(out_dir, required=False)
    if existing is not None:
        if existing["job"] != identity:
            raise DataError(f"{out_dir} already holds a data set made from other inputs or settings; use an empty folder")
        warn_if_poor_reconstruction(existing)
        return existing
    try:
        bucket_sizes(settings.target_size, step=tokenizers.layout.pixels_per_indicator)
    except FormatError as error:
        raise DataError(f"bad target size: {error}") from error
    job = ShardJob(index, tokenizers, settings, identity, out_dir)
    shard_count = math.ceil(index.total / settings.shard_size)
    mine = list(range(rank, shard_count, world_size))
    done = _finished_shards(job, mine)
    _remove_partial_files(out_dir, mine)
    todo = [shard for shard in mine if shard not in done]
    with tqdm(total=len(mine), initial=len(done), unit="shard", desc="pretokenize", disable=not progress) as bar:
        for summary in _encode_shards(job, todo, workers):
            for source_id, reason in summary.skipped_records:
                logger.warning("skipped record %s: %s", source_id, reason)
            done[summary.shard] = summary
            _check_bad_share(done.values(), index.total, settings.max_bad_share)
            bar.update()
    manifest = _write_manifest_when_complete(job, shard_count, fingerprint)
    if manifest is not None:
        warn_if_poor_reconstruction(manifest)
    return manifest


def warn_if_poor_reconstruction(manifest: dict) -> None:
    """Log a warning when the manifest's image-tokenizer PSNR is below POOR_RECONSTRUCTION_DB."""
    measured = manifest.get("reconstruction")
    if measured is not None and measured["psnr"] < POOR_RECONSTRUCTION_DB:
        logger.warning(
            "the image tokenizer reconstructs these images poorly: %.1f dB PSNR on the first %d (below %.0f dB), "
            "so a model trained on these tokens learns its distortions; use an image tokenizer trained on "
            "images like these (`lumina train-vq`)",
            measured["psnr"], measured["images"], POOR_RECONSTRUCTION_DB,
        )


# -- running the shards ---------------------------------------------------------------------------

_worker_job: ShardJob | None = None


def _init_worker(job: ShardJob, threads: int) -> None:
    import torch

    global _worker_job
    torch.set_num_threads(threads)
    _worker_job = job


def _encode_in_worker(shard: int) -> ShardSummary:
    return encode_shard(_worker_job, shard)


def _encode_shards(job: ShardJob, shards: list[int], workers: int) -> Iterator[ShardSummary]:
    """Summaries of the encoded shards, as they finish (in order when in-process)."""
    if workers == 1 or len(shards) <= 1:
        for shard in shards:
            yield encode_shard(job, shard)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has started threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(job, threads)) as pool:
        futures: set[Future] = {pool.submit(_encode_in_worker, shard) for shard in shards}
        try:
            while futures:
                finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _job_identity(index: RecordIndex, fingerprint: DataFingerprint, settings: PretokenizeSettings) -> str:
    description = {"fingerprint": fingerprint.combined, "settings": settings.identity(), "sources": index.describe()}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _finished_shards(job: ShardJob, shards: list[int]) -> dict[int, ShardSummary]:
    done = {}
    for shard in shards:
        path = job.out_dir / shard_file_name(shard)
        if path.is_file():
            summary = read_summary(path)
            if summary.job != job.identity:
                raise DataError(
                    f"{path} was written by a job with other inputs or settings; use an empty folder "
                    "or remove the old shards"
                )
            done[shard] = summary
    return done


def _remove_partial_files(out_dir: Path, shards: list[int]) -> None:
    """Delete temp files a killed run of these shards left behind."""
    for shard in shards:
        for leftover in out_dir.glob(f".{shard_file_name(shard)}.*.tmp"):
            leftover.unlink(missing_ok=True)


def _check_bad_share(summaries, total: int, max_bad_share: float) -> None:
    summaries = list(summaries)
    skipped = sum(summary.skipped for summary in summaries)
    if skipped > max_bad_share * total:
        examples = [f"{sid} ({reason})" for summary in summaries for sid, reason in summary.skipped_records][:5]
        raise DataError(
            f"{skipped} of {total} records are broken, more than the accepted share {max_bad_share:.2%}; "
            f"for example: {'; '.join(examples)}"
        )


def _write_manifest_when_complete(job: ShardJob, shard_count: int, fingerprint: DataFingerprint) -> dict | None:
    paths = [job.out_dir / shard_file_name(shard) for shard in range(shard_count)]
    if not all(path.is_file() for path in paths):
        logger.info("this rank's shards are done; the last rank to finish writes the manifest")
        return None
    summaries = [read_summary(path) for path in paths]
    _check_bad_share(summaries, job.index.total, job.settings.max_bad_share)
    manifest = {
        "job": job.identity,
        "fingerprint": fingerprint.to_dict(),
        "layout": job.tokenizers.layout.to_dict(),
        "settings": asdict(job.settings),
        "sources": job.index.describe(),
        "counts": {
            "records": sum(s.records for s in summaries),
            "skipped": sum(s.skipped for s in summaries),
            "tokens": sum(s.tokens for s in summaries),
        },
        "shards": [
            {"file": s.file, "first_record": s.first_record, "stop_record": s.stop_record, "records": s.records, "tokens": s.tokens}
            for s in summaries
        ],
        "skipped_records": [{"source_id": sid, "reason": reason} for s in summaries for sid, reason in s.skipped_records],
        "too_long": sum(s.too_long for s in summaries),  # of the skipped records: more tokens than max_seq_len
        "reconstruction": sample_reconstruction(job),
    }
    write_manifest(job.out_dir, manifest)
    return manifest
