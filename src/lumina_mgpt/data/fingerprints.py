"""Fingerprints of what token ids mean: the vocabulary layout, the text tokenizer and the image
tokenizer. A data set records them so that a model never trains on ids from another vocabulary."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lumina_mgpt.errors import DataError
from lumina_mgpt.formats import VocabLayout

if TYPE_CHECKING:
    from lumina_mgpt.text import TextTokenizer
    from lumina_mgpt.vision import ImageTokenizer


@dataclass(frozen=True)
class DataFingerprint:
    """The three component fingerprints (sha256 hex digests) and their combination."""

    layout: str
    text_tokenizer: str
    image_tokenizer: str

    @property
    def combined(self) -> str:
        """One digest of all three: equal exactly when the ids of two data sets mean the same."""
        return hashlib.sha256(f"{self.layout}:{self.text_tokenizer}:{self.image_tokenizer}".encode()).hexdigest()

    def to_dict(self) -> dict[str, str]:
        return {**asdict(self), "combined": self.combined}

    @classmethod
    def from_dict(cls, data: dict) -> DataFingerprint:
        """Inverse of `to_dict`; DataError when a component is missing or the combination disagrees."""
        try:
            fingerprint = cls(data["layout"], data["text_tokenizer"], data["image_tokenizer"])
        except (KeyError, TypeError) as error:
            raise DataError(
                f"bad fingerprint {data!r}; expected keys layout, text_tokenizer, image_tokenizer, combined"
            ) from error
        if data.get("combined", fingerprint.combined) != fingerprint.combined:
            raise DataError("the stored combined fingerprint does not match its components; the manifest was edited")
        return fingerprint


def text_tokenizer_fingerprint(tokenizer: TextTokenizer) -> str:
    """sha256 of the tokenizer's serialized tokenizer.json (as `save` writes it) and its BOS id."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tokenizer.json"
        tokenizer.save(path)
        digest = hashlib.sha256(path.read_bytes())
    digest.update(f"bos={tokenizer.bos_id}".encode())
    return digest.hexdigest()


def image_tokenizer_fingerprint(image_tokenizer: ImageTokenizer) -> str:
    """sha256 of the architecture config and every weight (name, dtype, shape and values)."""
    digest = hashlib.sha256(json.dumps(image_tokenizer.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(image_tokenizer.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(memoryview(tensor.reshape(-1).view(dtype=torch.uint8).numpy()))
    return digest.hexdigest()


def data_fingerprint(layout: VocabLayout, text_tokenizer: TextTokenizer, image_tokenizer: ImageTokenizer) -> DataFingerprint:
    """The fingerprint that data tokenized with these three objects carries."""
    return DataFingerprint(
        layout=layout.fingerprint(),
        text_tokenizer=text_tokenizer_fingerprint(text_tokenizer),
        image_tokenizer=image_tokenizer_fingerprint(image_tokenizer),
    )

