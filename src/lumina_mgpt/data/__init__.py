"""Training data: sources (conversation JSON/JSONL, image + prompt records, Parquet), pre-tokenization
into Parquet token shards with a manifest, and length-grouped, resumable, distributed batching."""

from lumina_mgpt.data.batching import ConcatTokens, LengthGroupedBatches, MixedBatches
from lumina_mgpt.data.fingerprints import DataFingerprint, data_fingerprint
from lumina_mgpt.data.loader import BatchPlan, Collator, LengthLimited, Sample, TokenDataset
from lumina_mgpt.data.pretokenizer import pretokenize
from lumina_mgpt.data.shard_encoder import PretokenizeSettings, Tokenizers
from lumina_mgpt.data.sources import BadRecord, ParquetColumns, Record, RecordIndex

__all__ = [
    "BadRecord",
    "BatchPlan",
    "Collator",
    "ConcatTokens",
    "DataFingerprint",
    "LengthGroupedBatches",
    "LengthLimited",
    "MixedBatches",
    "ParquetColumns",
    "PretokenizeSettings",
    "Record",
    "RecordIndex",
    "Sample",
    "TokenDataset",
    "Tokenizers",
    "data_fingerprint",
    "pretokenize",
]
