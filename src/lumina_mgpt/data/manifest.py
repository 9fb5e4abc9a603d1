"""`manifest.json`: the description of a finished token data set, written after all its shards."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lumina_mgpt.atomic import write_text_atomically
from lumina_mgpt.errors import DataError

MANIFEST_FILE = "manifest.json"
FORMAT_TAG = "lumina_mgpt.data.tokens/1"
_REQUIRED_KEYS = ("job", "fingerprint", "layout", "settings", "sources", "counts", "shards", "skipped_records")


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write `manifest` (tagged with the format) to folder/manifest.json atomically."""
    return write_text_atomically(folder / MANIFEST_FILE, json.dumps({"format": FORMAT_TAG, **manifest}, indent=1) + "\n")


def read_manifest(folder: str | os.PathLike, required: bool = True) -> dict | None:
    """The manifest of a data set folder (None when absent and not `required`)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        if required:
            raise DataError(
                f"{folder} has no {MANIFEST_FILE}; it is not a finished token data set "
                "(run `lumina pretokenize` to the end, on every rank)"
            )
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read {path}: {error}") from error
    missing = [key for key in _REQUIRED_KEYS if key not in manifest]
    if manifest.get("format") != FORMAT_TAG or missing:
        raise DataError(f"{path} is not a token data set manifest (format {FORMAT_TAG!r}; missing keys {missing})")
    return manifest
