"""Which folder a `--model` names: a local folder, the embedded model, or a Hugging Face hub id.

    resolve_model(None)                             # the embedded shapes model
    resolve_model("embedded")                       # the same, by name
    resolve_model("ckpts/Lumina-mGPT-7B-768")       # a local folder
    resolve_model("Alpha-VLLM/Lumina-mGPT-7B-768")  # a hub snapshot: downloaded once, then from the cache

Hub ids go through `huggingface_hub.snapshot_download`, so its cache, `HF_HOME` / `HF_HUB_CACHE` and
`HF_HUB_OFFLINE=1` (use a populated cache, never the network) all apply.

`read_model_info` then says what the folder holds without loading weights: its layout, sampling
defaults, tasks and text tokenizer, and where its image tokenizer is. A folder is one of
- a project folder (written by `Pipeline.save_pretrained` / `lumina train`): `lumina.json` (layout,
  sampling defaults, tasks), the model (`config.json` + safetensors), `tokenizer.json` and the image
  tokenizer in `image_tokenizer/`;
- an official Lumina-mGPT (v1) or Lumina-mGPT 2.0 folder: the family is read from config.json's
  vocab_size, the text tokenizer from the folder, and the image tokenizer (`vqgan.ckpt` or
  `movqgan_270M.ckpt`) is given or found in or above the folder.

Tasks: what a model was trained to do (TASKS): "text-to-image", "chat" (answering text, about images
too), "edit", "control" (a condition map -> an image), "subject" (a reference object in a new scene),
the image -> map predictions (PREDICTION_TASKS: "segmentation", "edges", "depth", ...), "caption",
"vqa" (questions about an image) and "rewrite" (a free-form request -> the caption the model draws
best). A project folder lists them in lumina.json's "tasks" (text-to-image alone when the field is
absent: `lumina train` on text-to-image data teaches nothing else). Official folders get their
family's tasks (FAMILY_TASKS): v1 folders chat, v2 text-to-image checkpoints only draw; the Omni
releases (a folder or hub id named "...-Omni") add the tasks of their prompts in docs/FORMATS.md
(OMNI_TASKS).

Nothing here imports torch: the CLIs read a folder and check a request before the slow imports.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lumina_mgpt.atomic import write_text_atomically
from lumina_mgpt.errors import CheckpointError, GenerationError, LuminaError
from lumina_mgpt.formats import VocabLayout, check_image_size, get_layout
from lumina_mgpt.generation.checks import (
    CFG_SCHEDULES,
    check_cfg,
    check_cfg_schedule,
    check_temperature,
    check_top_k,
    is_integer,
    is_number,
)

EMBEDDED_MODEL = Path(__file__).resolve().parent / "assets" / "shapes-model"
EMBEDDED_ALIAS = "embedded"
PROJECT_FILE = "lumina.json"
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


IMAGE_TOKENIZER_FILES = {"lumina-mgpt": "vqgan.ckpt", "lumina-mgpt-2": "movqgan_270M.ckpt"}

TEXT_TO_IMAGE = "text-to-image"
CHAT = "chat"
EDIT = "edit"
CONTROL = "control"
SUBJECT = "subject"
CAPTION = "caption"
VQA = "vqa"
REWRITE = "rewrite"
# Image -> map tasks (Pipeline.predict): the project's maps (segmentation, edges) and the official ones.
PREDICTION_TASKS = ("segmentation", "edges", "depth", "normals", "pose", "canny", "hed")
TASKS = (TEXT_TO_IMAGE, CHAT, EDIT, CONTROL, SUBJECT, *PREDICTION_TASKS, CAPTION, VQA, REWRITE)
# v1's releases answer text and describe images; v2's text-to-image checkpoints were not trained on text answers.
FAMILY_TASKS = {"lumina-mgpt": (TEXT_TO_IMAGE, CHAT), "lumina-mgpt-2": (TEXT_TO_IMAGE,)}
# The Omni releases (docs/FORMATS.md): v1's task prompts (editing, condition to image, segmentation, depth,
# surface normals, pose) and v2's dual panels (depth or canny map or subject -> image, image -> four maps).
OMNI_TASKS = {
    "lumina-mgpt": (TEXT_TO_IMAGE, CHAT, EDIT, CONTROL, "segmentation", "depth", "normals", "pose"),
    "lumina-mgpt-2": (TEXT_TO_IMAGE, CONTROL, SUBJECT, "depth", "canny", "hed", "pose"),
}
PROJECT_DEFAULT_TASKS = (TEXT_TO_IMAGE,)
# How a released Omni folder or hub snapshot is named (Lumina-mGPT-7B-768-Omni, Lumina-mGPT-2.0-Omni).
_OMNI_NAME = re.compile(r"-omni$", re.IGNORECASE)


# What a model may set apart for one task (Defaults.per_task).
PER_TASK_KEYS = ("cfg", "temperature", "image_top_k")


@dataclass(frozen=True)
class Defaults:
    """Sampling defaults of a model: what `generate` uses when an argument is left out. `per_task` maps a
    task (TASKS) to the values of PER_TASK_KEYS its methods use instead (an edit copies most of its
    input, and may want no guidance where drawing from text wants some); see `for_task`."""

    image_top_k: int
    text_top_k: int
    temperature: float
    cfg: float
    size: tuple[int, int]
    cfg_schedule: str = "constant"
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self):
        check_top_k("image_top_k", self.image_top_k)
        check_top_k("text_top_k", self.text_top_k)
        check_temperature("temperature", self.temperature)
        check_cfg("cfg", self.cfg)
        check_cfg_schedule(self.cfg_schedule)
        if not (isinstance(self.size, tuple) and len(self.size) == 2):
            raise GenerationError(f"size must be a (width, height) tuple of pixels, got {self.size!r}")
        for task, values in self.per_task.items():
            if task not in TASKS or not isinstance(values, dict) or not set(values) <= set(PER_TASK_KEYS):
                raise GenerationError(
                    f"per_task has {task!r}: {values!r}; accepted: task names of {list(TASKS)}, each with some of "
                    f"{list(PER_TASK_KEYS)}"
                )
            self.for_task(task)  # checks the values

    def for_task(self, task: str) -> Defaults:
        """The defaults `task`'s methods use: these, with the task's own values where `per_task` has them."""
        return replace(self, **self.per_task.get(task, {}), per_task={})


# Official sampling defaults (docs/FORMATS.md, "Sampling defaults"); v2's plain decoding decays its guidance.
FAMILY_DEFAULTS = {
    "lumina-mgpt": Defaults(image_top_k=2000, text_top_k=10, temperature=1.0, cfg=4.0, size=(768, 768)),
    "lumina-mgpt-2": Defaults(
        image_top_k=4096, text_top_k=10, temperature=1.0, cfg=4.0, size=(768, 768), cfg_schedule="decay-to-4"
    ),
}


@dataclass(frozen=True)
class ModelInfo:
    """What a model folder says about itself, read without loading the weights (cheap: JSON and the
    text tokenizer), so that requests can be checked before the slow load."""

    folder: Path
    layout: VocabLayout
    defaults: Defaults
    tasks: tuple[str, ...]
    text_tokenizer: Any
    image_tokenizer_path: Path | None  # None when read with find_image_tokenizer=False


def check_tasks(tasks: object, where: str = "tasks") -> tuple[str, ...]:
    """Model tasks as a tuple: a non-empty list drawn from TASKS."""
    if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks or any(t not in TASKS for t in tasks):
        raise GenerationError(f"{where} is {tasks!r}, expected a non-empty list drawn from {list(TASKS)}")
    return tuple(tasks)


def require_task(tasks: Sequence[str], task: str, *alternatives: str) -> None:
    """GenerationError unless the model's `tasks` include `task` (or one of `alternatives`, tasks that
    also do it), naming the tasks the model has; cheap, so the CLIs run it before loading the model."""
    if task in tasks or any(t in tasks for t in alternatives):
        return
    example = "an official Lumina-mGPT v1 folder" if task == CHAT else "a model trained on the shapes task world"
    raise GenerationError(
        f"this model was not trained for {task!r} (its tasks: {', '.join(tasks)}); {task!r} needs a model whose "
        f"lumina.json lists it, such as {example}"
    )


def official_tasks(folder: Path, family: str) -> tuple[str, ...]:
    """The tasks of an official folder: its family's, or the Omni release's when the folder (or the hub
    repository a snapshot came from: models--owner--NAME/snapshots/HASH) is named "...-Omni"."""
    folder = folder.absolute()  # "." names its folder too
    names = [folder.name]
    if folder.parent.name == "snapshots":
        names.append(folder.parent.parent.name)
    omni = any(_OMNI_NAME.search(name) for name in names)
    return OMNI_TASKS[family] if omni else FAMILY_TASKS[family]


def read_model_info(
    path: str | os.PathLike | None = None,
    image_tokenizer: str | os.PathLike | None = None,
    find_image_tokenizer: bool = True,
) -> ModelInfo:
    """Layout, defaults, tasks and tokenizers of the folder `path` names (see `resolve_model`), without
    loading the model. `find_image_tokenizer=False` skips the search for an official folder's image
    tokenizer, for work on ids alone (`lumina tokenize`)."""
    from lumina_mgpt.text import TextTokenizer

    folder = resolve_model(path)
    if not (folder / "config.json").is_file():
        raise GenerationError(f"{folder} is not a model folder: config.json is missing")
    text_tokenizer = TextTokenizer.from_folder(folder)
    if (folder / PROJECT_FILE).is_file():
        layout, defaults, tasks = read_project_file(folder)
        vision_path = Path(image_tokenizer) if image_tokenizer else folder / "image_tokenizer"
    else:
        family = _official_family(folder)
        layout = get_layout(family, tokenizer=text_tokenizer)
        defaults, tasks = FAMILY_DEFAULTS[family], official_tasks(folder, family)
        vision_path = Path(image_tokenizer) if image_tokenizer else None
        if vision_path is None and find_image_tokenizer:
            vision_path = _find_file(folder, IMAGE_TOKENIZER_FILES[family])
    return ModelInfo(folder, layout, defaults, tasks, text_tokenizer, vision_path)


# lumina.json fields: (JSON description, check).
_INT = ("an integer", is_integer)
_NUMBER = ("a number", is_number)
_JSON_FIELDS = {
    "layout": {
        "name": ("a string", lambda v: isinstance(v, str)),
        "vocab_size": _INT,
        "bos_id": ("an integer or null", lambda v: v is None or is_integer(v)),
        **{key: _INT for key in ("start_image_id", "end_image_id", "end_line_id", "separator_id", "pad_id",
                                 "downsample", "pixels_per_indicator")},
        **{key: ("a list of integers", lambda v: isinstance(v, list) and all(map(is_integer, v)))
           for key in ("size_indicator_ids", "code_ids")},
    },
    "defaults": {
        "image_top_k": _INT,
        "text_top_k": _INT,
        "temperature": _NUMBER,
        "cfg": _NUMBER,
        "size": ("a list of two integers [width, height]",
                 lambda v: isinstance(v, list) and len(v) == 2 and all(map(is_integer, v))),
        "cfg_schedule": (f"one of {', '.join(CFG_SCHEDULES)}", lambda v: v in CFG_SCHEDULES),
        "per_task": (
            f"an object of task -> {{some of {', '.join(PER_TASK_KEYS)}: number}}",
            lambda v: isinstance(v, dict)
            and all(isinstance(x, dict) and all(is_number(n) for n in x.values()) for x in v.values()),
        ),
    },
}
# Optional: files written before the guidance schedule existed guide with a constant scale; per_task is
# only there when a task samples apart.
_OPTIONAL_DEFAULTS = {"cfg_schedule", "per_task"}


def _json_type(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def read_project_file(folder: str | os.PathLike) -> tuple[VocabLayout, Defaults, tuple[str, ...]]:
    """Layout, sampling defaults and tasks from a project folder's lumina.json; GenerationError naming the
    field, the type found and the type expected when a field is wrong."""
    file = Path(folder) / PROJECT_FILE
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GenerationError(f"{file} is not valid JSON ({error}); write it with Pipeline.save_pretrained") from None
    if not isinstance(meta, dict):
        raise GenerationError(f"{file} holds {_json_type(meta)}, expected an object with \"layout\" and \"defaults\"")
    for section, fields in _JSON_FIELDS.items():
        values = meta.get(section)
        if not isinstance(values, dict):
            raise GenerationError(f"{file}: \"{section}\" is {_json_type(values)}, expected an object")
        for key, (expected, valid) in fields.items():
            if key in values and not valid(values[key]):
                raise GenerationError(
                    f"{file}: {section}.{key} is {_json_type(values[key])} ({json.dumps(values[key])[:40]}), "
                    f"expected {expected}"
                )
    missing = set(_JSON_FIELDS["defaults"]) - _OPTIONAL_DEFAULTS - set(meta["defaults"])
    unknown = set(meta["defaults"]) - set(_JSON_FIELDS["defaults"])
    if missing or unknown:
        raise GenerationError(
            f"{file}: defaults has missing {sorted(missing)}, unknown {sorted(unknown)}; "
            f"expected keys {sorted(_JSON_FIELDS['defaults'])}"
        )
    tasks = check_tasks(meta.get("tasks", list(PROJECT_DEFAULT_TASKS)), where=f"{file}: tasks")
    try:
        layout = VocabLayout.from_dict(meta["layout"])
        defaults = Defaults(**{**meta["defaults"], "size": tuple(meta["defaults"]["size"])})
        check_image_size(*defaults.size, layout)
    except LuminaError as error:
        raise type(error)(f"{file}: {error}") from None
    return layout, defaults, tasks


def write_project_file(
    folder: str | os.PathLike, layout: VocabLayout, defaults: Defaults, tasks: Sequence[str] = PROJECT_DEFAULT_TASKS
) -> Path:
    """Write the `lumina.json` that makes a model folder a project folder (layout, sampling defaults, tasks)."""
    values = {**asdict(defaults), "size": list(defaults.size)}
    if not defaults.per_task:
        del values["per_task"]
    meta = {
        "layout": layout.to_dict(),
        "defaults": values,
        "tasks": list(check_tasks(tasks)),
    }
    return write_text_atomically(Path(folder) / PROJECT_FILE, json.dumps(meta, indent=2))


OFFICIAL_FAMILIES = {65536: "lumina-mgpt", 171385: "lumina-mgpt-2"}  # by config.json's vocab_size


def _official_family(folder: Path) -> str:
    vocab = json.loads((folder / "config.json").read_text()).get("vocab_size")
    if vocab in OFFICIAL_FAMILIES:
        return OFFICIAL_FAMILIES[vocab]
    raise GenerationError(
        f"{folder}/config.json has vocab_size {vocab}: not an official Lumina-mGPT (65536) or Lumina-mGPT 2.0 "
        f"(171385) folder, and there is no {PROJECT_FILE} of a project model"
    )


def _find_file(folder: Path, name: str) -> Path:
    """Look for the image tokenizer in the folder and up to three levels above (the official
    repositories keep it in ckpts/chameleon/tokenizer/ or beside the model folders)."""
    candidates = []
    for base in [folder, *list(folder.resolve().parents)[:3]]:
        candidates += [base / name, base / "tokenizer" / name, base / "chameleon" / "tokenizer" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise GenerationError(f"no image tokenizer {name} found in or above {folder}; pass image_tokenizer=PATH")
