"""Training data: sources (conversation JSON/JSONL, image + prompt records, Parquet), pre-tokenization
into Parquet token shards with a manifest, and length-grouped, resumable, distributed batching.

The names below are imported from their modules on first use: `lumina pretokenize --help` imports
this package (for lumina_mgpt.data.pretokenize_cli) and must not wait for torch, numpy or pyarrow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ConcatTokens": "batching",
    "LengthGroupedBatches": "batching",
    "MixedBatches": "batching",
    "DataFingerprint": "fingerprints",
    "data_fingerprint": "fingerprints",
    "BatchPlan": "loader",
    "Collator": "loader",
    "LengthLimited": "loader",
    "Sample": "loader",
    "TokenDataset": "loader",
    "pretokenize": "pretokenizer",
    "PretokenizeSettings": "shard_encoder",
    "Tokenizers": "shard_encoder",
    "BadRecord": "sources",
    "ParquetColumns": "sources",
    "Record": "sources",
    "RecordIndex": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
