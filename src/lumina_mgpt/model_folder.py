"""Which folder a `--model` names: a local folder, the embedded model, or a Hugging Face hub id.

    resolve_model(None)                             # the embedded shapes model
    resolve_model("embedded")                       # the same, by name
    resolve_model("ckpts/Lumina-mGPT-7B-768")       # a local folder
    resolve_model("Alpha-VLLM/Lumina-mGPT-7B-768")  # a hub snapshot: downloaded once, then from the cache

Hub ids go through `huggingface_hub.snapshot_download`, so its cache, `HF_HOME` / `HF_HUB_CACHE` and
`HF_HUB_OFFLINE=1` (use a populated cache, never the network) all apply. Nothing here imports torch.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from lumina_mgpt.errors import CheckpointError

EMBEDDED_MODEL = Path(__file__).resolve().parent / "assets" / "shapes-model"
EMBEDDED_ALIAS = "embedded"
# owner/name as the hub spells them; a local path is tried first, so "ckpts/model" still means a folder
# when it exists.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def resolve_model(name: str | os.PathLike | None = None) -> Path:
    """The local folder of a model given by path, hub id, "embedded" or None (the embedded model)."""
    if name is None or str(name) == EMBEDDED_ALIAS:
        if not (EMBEDDED_MODEL / "config.json").is_file():
            raise CheckpointError(
                f"the embedded model is not in this checkout ({EMBEDDED_MODEL}); "
                "`python -m lumina_mgpt.shapes.build` makes it"
            )
        return EMBEDDED_MODEL
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"--model {path} is a file; give a model folder (config.json + weights) or a hub id")
        return path
    if _HUB_ID.fullmatch(str(name)):
        return _hub_snapshot(str(name))
    raise CheckpointError(
        f"--model {name}: no such folder, and not a hub id (owner/name); give a model folder, a hub id such as "
        f"Alpha-VLLM/Lumina-mGPT-7B-768, or '{EMBEDDED_ALIAS}'"
    )


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    print(f"fetching {repo_id} from the Hugging Face hub (or its local cache)", file=sys.stderr)
    try:
        return Path(snapshot_download(repo_id))
    except (OSError, ValueError) as error:  # every hub failure (offline, not found, gated, HTTP) is an OSError
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"could not get {repo_id} from the hub or its cache ({reason}); where there is network, run "
            f"`hf download {repo_id} --local-dir DIR` and pass --model DIR, or fill the hub cache and set "
            "HF_HUB_OFFLINE=1"
        ) from error

