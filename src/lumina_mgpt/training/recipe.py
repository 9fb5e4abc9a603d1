"""Training recipes: TOML files with global settings and an ordered list of `[[stages]]`.

```toml
output_dir = "runs/example"      # relative paths are relative to the recipe file
seed = 0
layout = "lumina-mgpt"           # optional: the data sets' vocabulary layout must be this one
z_loss = 1e-5
max_seq_len = 4096               # longer samples are skipped (default: the model's max_position_embeddings)

[model]                          # exactly one of preset / path
preset = "tiny"                  # a ModelConfig preset, initialised from `seed` ...
path = "ckpts/Lumina-mGPT-7B-768"  # ... or an HF folder to fine-tune ("embedded": the embedded shapes model)
vocab_size = 512                 # presets only: any ModelConfig field (hidden_size, ...) replaces the preset's
dropout = 0.05                   # residual dropout (also replaces a folder's value)
assets = "ckpts/x"               # files copied next to every exported model (tokenizers ...); default: path
activation_checkpointing = false
compile = false

[optimizer]
betas = [0.9, 0.95]
eps = 1e-8
weight_decay = 0.1
grad_clip = 1.0

[lora]                           # absent: full fine-tuning
rank = 8
alpha = 16.0
dropout = 0.0
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

[checkpoint]
every = 500                      # optimizer steps between checkpoints (0: only at the end of each stage)
keep = 3                         # periodic checkpoints kept per run

[[stages]]
name = "512"
target_size = 512                # for information (the data decides the sizes)
lr = 2e-5
min_lr = 0.0
warmup = 100                     # optimizer steps of linear warmup
schedule = "cosine"              # or "constant"
steps = 1000                     # or epochs = 1.0
batch_size = 4                   # sequences per rank per micro-batch
grad_accumulation = 8
context_drop = 0.1
[[stages.data]]
manifest = "data/t2i-512"
ratio = 1.0
```
Unknown keys anywhere are errors naming the key and its table; so are values of the wrong type
(naming the type found and the one accepted) and numbers that are NaN, infinite or out of range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the `tomli` package
    import tomli as tomllib

from lumina_mgpt.errors import TrainingError
from lumina_mgpt.model_folder import EMBEDDED_ALIAS, resolve_model
from lumina_mgpt.training.lora import LORA_TARGETS

SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class ModelSource:
    preset: str | None = None
    path: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields replacing the preset's
    dropout: float | None = None
    assets: Path | None = None
    activation_checkpointing: bool = False
    compile: bool = False


@dataclass(frozen=True)
class OptimizerSettings:
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS


@dataclass(frozen=True)
class CheckpointSettings:
    every: int = 0
    keep: int = 2


@dataclass(frozen=True)
class DataSource:
    manifest: Path
    ratio: float = 1.0


@dataclass(frozen=True)
class Stage:
    name: str
    data: tuple[DataSource, ...]
    lr: float
    batch_size: int
    steps: int | None = None
    epochs: float | None = None
    target_size: int | None = None
    min_lr: float = 0.0
    warmup: int = 0
    schedule: str = "cosine"
    grad_accumulation: int = 1
    context_drop: float = 0.0


@dataclass(frozen=True)
class Recipe:
    model: ModelSource
    stages: tuple[Stage, ...]
    output_dir: Path
    seed: int = 0
    layout: str | None = None
    z_loss: float = 1e-5
    max_seq_len: int | None = None
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    lora: LoraSettings | None = None
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    source_text: str = ""

    @classmethod
    def from_file(cls, path: str | Path) -> Recipe:
        """Parse and validate a recipe file; relative paths resolve against its folder."""
        recipe_path = Path(path)
        try:
            text = recipe_path.read_text()
        except OSError as error:
            raise TrainingError(f"cannot read recipe {recipe_path} ({error}); a TOML file is required") from error
        return cls.from_toml(text, recipe_path.resolve().parent)

    @classmethod
    def from_toml(cls, text: str, base_dir: Path) -> Recipe:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise TrainingError(f"recipe is not valid TOML: {error}") from error
        return _parse_recipe(data, base_dir, text)


def _check_keys(table: dict[str, Any], accepted: set[str], where: str) -> None:
    for key in table:
        if key not in accepted:
            raise TrainingError(f"unknown key {key!r} in {where}; accepted: {', '.join(sorted(accepted))}")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _type_name(value: Any) -> str:
    """How TOML calls the type of a parsed value."""
    kinds = {dict: "a table", list: "an array", **_TYPE_NAMES, float: "a float"}
    return next((name for kind, name in kinds.items() if type(value) is kind), type(value).__name__)


def _typed(table: dict[str, Any], key: str, kinds: tuple[type, ...], where: str, default: Any = None) -> Any:
    """table[key] checked against `kinds` (ints are accepted where floats are; bools never as numbers)."""
    if key not in table:
        return default
    value = table[key]
    accepted = kinds + (int,) if float in kinds else kinds
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, accepted):
        names = " or ".join(_TYPE_NAMES[kind] for kind in kinds)
        raise TrainingError(f"{where}.{key} = {value!r} has the wrong type, {_type_name(value)}; accepted: {names}")
    return float(value) if float in kinds else value


def _positive(value: float | None, name: str, allow_zero: bool = False) -> None:
    """`value` finite and > 0 (or >= 0 with `allow_zero`); None passes."""
    if value is not None and not (math.isfinite(value) and (value > 0 or (allow_zero and value == 0))):
        bound = ">= 0" if allow_zero else "> 0"
        raise TrainingError(f"{name} = {value} is invalid; accepted: a finite number {bound}")


def _resolve(base_dir: Path, value: str | None) -> Path | None:
    return None if value is None else (base_dir / Path(value).expanduser()).resolve()


def _parse_model(table: dict[str, Any], base_dir: Path) -> ModelSource:
    from lumina_mgpt.model import ModelConfig

    own = {f.name for f in dataclasses.fields(ModelSource)} - {"overrides"}
    shape = {f.name for f in dataclasses.fields(ModelConfig)} - {"dropout", "hf_extras"}
    _check_keys(table, own | shape, "[model]")
    preset = _typed(table, "preset", (str,), "model")
    path = _typed(table, "path", (str,), "model")
    if (preset is None) == (path is None):
        raise TrainingError("[model] needs exactly one of preset = NAME or path = FOLDER")
    overrides = {key: value for key, value in table.items() if key in shape}
    _check_override_types(overrides, ModelConfig)
    if overrides and path is not None:
        raise TrainingError(
            f"[model] {', '.join(sorted(overrides))} apply to presets only; a folder's config.json fixes the shape"
        )
    dropout = _typed(table, "dropout", (float,), "model")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise TrainingError(f"model.dropout = {dropout} is invalid; accepted: a probability in [0, 1)")
    if path == EMBEDDED_ALIAS:
        resolved_path = resolve_model(path)  # wherever the package is installed
    else:
        resolved_path = _resolve(base_dir, path)
    return ModelSource(
        preset=preset,
        path=resolved_path,
        overrides=overrides,
        dropout=dropout,
        assets=_resolve(base_dir, _typed(table, "assets", (str,), "model")) or resolved_path,
        activation_checkpointing=_typed(table, "activation_checkpointing", (bool,), "model", False),
        compile=_typed(table, "compile", (bool,), "model", False),
    )


def _check_override_types(overrides: dict[str, Any], config_class: type) -> None:
    """[model] overrides of a preset have the type of the ModelConfig field they replace; numbers are
    sizes, counts or scales, all > 0 (dropout, the one probability, is not an override)."""
    kinds = {"int": (int,), "float": (float,), "bool": (bool,), "str": (str,)}
    for field_info in dataclasses.fields(config_class):
        kind = kinds.get(str(field_info.type))
        if field_info.name in overrides and kind is not None:
            value = _typed(overrides, field_info.name, kind, "model")
            if kind in ((int,), (float,)):
                _positive(value, f"model.{field_info.name}")


def _parse_optimizer(table: dict[str, Any]) -> OptimizerSettings:
    _check_keys(table, {f.name for f in dataclasses.fields(OptimizerSettings)}, "[optimizer]")
    betas = table.get("betas", [0.9, 0.95])
    numbers = isinstance(betas, list) and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)
    if not (numbers and len(betas) == 2):
        raise TrainingError(f"optimizer.betas = {betas!r} is invalid; accepted: two numbers like [0.9, 0.95]")
    if not all(0.0 <= b < 1.0 for b in betas):
        raise TrainingError(f"optimizer.betas = {betas!r} is invalid; accepted: numbers in [0, 1)")
    settings = OptimizerSettings(
        betas=(float(betas[0]), float(betas[1])),
        eps=_typed(table, "eps", (float,), "optimizer", 1e-8),
        weight_decay=_typed(table, "weight_decay", (float,), "optimizer", 0.1),
        grad_clip=_typed(table, "grad_clip", (float,), "optimizer", 1.0),
    )
    _positive(settings.eps, "optimizer.eps")
    _positive(settings.weight_decay, "optimizer.weight_decay", allow_zero=True)
    _positive(settings.grad_clip, "optimizer.grad_clip", allow_zero=True)
    return settings


def _parse_lora(table: dict[str, Any]) -> LoraSettings:
    _check_keys(table, {f.name for f in dataclasses.fields(LoraSettings)}, "[lora]")
    targets = table.get("targets", list(LORA_TARGETS))
    if not (isinstance(targets, list) and targets and all(t in LORA_TARGETS for t in targets)):
        raise TrainingError(f"lora.targets = {targets!r} is invalid; accepted: a list of {', '.join(LORA_TARGETS)}")
    settings = LoraSettings(
        rank=_typed(table, "rank", (int,), "lora", 8),
        alpha=_typed(table, "alpha", (float,), "lora", 16.0),
        dropout=_typed(table, "dropout", (float,), "lora", 0.0),
        targets=tuple(targets),
    )
    _positive(settings.rank, "lora.rank")
    _positive(settings.alpha, "lora.alpha")
    if not 0.0 <= settings.dropout < 1.0:
        raise TrainingError(f"lora.dropout = {settings.dropout} is invalid; accepted: a probability in [0, 1)")
    return settings


def _parse_checkpoint(table: dict[str, Any]) -> CheckpointSettings:
    _check_keys(table, {f.name for f in dataclasses.fields(CheckpointSettings)}, "[checkpoint]")
    settings = CheckpointSettings(
        every=_typed(table, "every", (int,), "checkpoint", 0), keep=_typed(table, "keep", (int,), "checkpoint", 2)
    )
    _positive(settings.every, "checkpoint.every", allow_zero=True)
    _positive(settings.keep, "checkpoint.keep")
    return settings


def _parse_stage(table: dict[str, Any], index: int, base_dir: Path) -> Stage:
    named = table.get("name")
    where = f"[[stages]] {named!r}" if isinstance(named, str) else f"[[stages]] #{index + 1}"
    stage_fields = {f.name for f in dataclasses.fields(Stage)}
    _check_keys(table, stage_fields, where)
    for required in ("name", "data", "lr", "batch_size"):
        if required not in table:
            raise TrainingError(f"{where} lacks {required!r}; required: name, data, lr, batch_size, steps or epochs")
    name = _typed(table, "name", (str,), "stages")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise TrainingError(f"stage name {name!r} is invalid; accepted: a non-empty name without slashes")
    where = f"[[stages]] {name!r}"
    field_where = f"stages.{name}"  # how _typed names a field of this stage
    sources = table["data"]
    if not isinstance(sources, list) or not sources:
        raise TrainingError(f"{where}: data must be a non-empty list of [[stages.data]] tables")
    data = []
    for source in sources:
        if not isinstance(source, dict):
            raise TrainingError(f"{where}: each data entry must be a table with manifest and ratio")
        _check_keys(source, {"manifest", "ratio"}, f"[[stages.data]] of stage {name!r}")
        if "manifest" not in source:
            raise TrainingError(f"[[stages.data]] of stage {name!r} lacks 'manifest' (a pretokenized data folder)")
        ratio = _typed(source, "ratio", (float,), f"{field_where}.data", 1.0)
        _positive(ratio, f"stage {name!r} data ratio")
        manifest = _resolve(base_dir, _typed(source, "manifest", (str,), f"{field_where}.data"))
        data.append(DataSource(manifest=manifest, ratio=ratio))
    steps = _typed(table, "steps", (int,), field_where)
    epochs = _typed(table, "epochs", (float,), field_where)
    if (steps is None) == (epochs is None):
        raise TrainingError(f"{where} needs exactly one of steps = N or epochs = X")
    stage = Stage(
        name=name,
        data=tuple(data),
        lr=_typed(table, "lr", (float,), field_where),
        batch_size=_typed(table, "batch_size", (int,), field_where),
        steps=steps,
        epochs=epochs,
        target_size=_typed(table, "target_size", (int,), field_where),
        min_lr=_typed(table, "min_lr", (float,), field_where, 0.0),
        warmup=_typed(table, "warmup", (int,), field_where, 0),
        schedule=_typed(table, "schedule", (str,), field_where, "cosine"),
        grad_accumulation=_typed(table, "grad_accumulation", (int,), field_where, 1),
        context_drop=_typed(table, "context_drop", (float,), field_where, 0.0),
    )
    _positive(stage.lr, f"{where} lr")
    _positive(stage.batch_size, f"{where} batch_size")
    _positive(stage.target_size, f"{where} target_size")
    _positive(stage.steps, f"{where} steps")
    _positive(stage.epochs, f"{where} epochs")
    _positive(stage.min_lr, f"{where} min_lr", allow_zero=True)
    _positive(stage.warmup, f"{where} warmup", allow_zero=True)
    _positive(stage.grad_accumulation, f"{where} grad_accumulation")
    if stage.schedule not in SCHEDULES:
        raise TrainingError(f"{where} schedule = {stage.schedule!r} is unknown; accepted: {', '.join(SCHEDULES)}")
    if not 0.0 <= stage.context_drop <= 1.0:
        raise TrainingError(f"{where} context_drop = {stage.context_drop} is invalid; accepted: a probability")
    if stage.min_lr > stage.lr:
        raise TrainingError(f"{where} min_lr = {stage.min_lr} exceeds lr = {stage.lr}; accepted: min_lr <= lr")
    return stage


def _parse_recipe(data: dict[str, Any], base_dir: Path, text: str) -> Recipe:
    top = {"model", "stages", "output_dir", "seed", "layout", "z_loss", "max_seq_len", "optimizer", "lora", "checkpoint"}
    _check_keys(data, top, "the top level")
    for table in ("model", "optimizer", "lora", "checkpoint"):
        if table in data and not isinstance(data[table], dict):
            raise TrainingError(f"{table} must be a table ([{table}])")
    if "model" not in data:
        raise TrainingError("the recipe lacks a [model] table (preset = NAME or path = FOLDER)")
    stages_data = data.get("stages")
    if not isinstance(stages_data, list) or not stages_data:
        raise TrainingError("the recipe lacks [[stages]]; at least one stage is required")
    stages = tuple(_parse_stage(table, i, base_dir) for i, table in enumerate(stages_data))
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise TrainingError(f"stage names {names} repeat; each stage needs its own name")
    if "output_dir" not in data:
        raise TrainingError("the recipe lacks output_dir (the run folder; --out overrides it)")
    layout = _typed(data, "layout", (str,), "recipe")
    if layout is not None:
        from lumina_mgpt.formats.layout import LAYOUT_NAMES

        if layout not in LAYOUT_NAMES:
            raise TrainingError(f"layout = {layout!r} is unknown; accepted: {', '.join(LAYOUT_NAMES)}")
    recipe = Recipe(
        model=_parse_model(data["model"], base_dir),
        stages=stages,
        output_dir=_resolve(base_dir, _typed(data, "output_dir", (str,), "recipe")),
        seed=_typed(data, "seed", (int,), "recipe", 0),
        layout=layout,
        z_loss=_typed(data, "z_loss", (float,), "recipe", 1e-5),
        max_seq_len=_typed(data, "max_seq_len", (int,), "recipe"),
        optimizer=_parse_optimizer(data.get("optimizer", {})),
        lora=_parse_lora(data["lora"]) if "lora" in data else None,
        checkpoint=_parse_checkpoint(data.get("checkpoint", {})),
        source_text=text,
    )
    _positive(recipe.z_loss, "z_loss", allow_zero=True)
    _positive(recipe.max_seq_len, "max_seq_len")
    _positive(recipe.seed, "seed", allow_zero=True)
    return recipe
