"""The training loop: stages of AdamW steps with accumulation, clipping, logging and exact resume.

Losses are the model's: cross-entropy on supervised positions (labels != -100, shifted inside the
model) plus z_loss * mean(logsumexp(logits)^2) on the same positions. One optimizer step averages
over every supervised token of its micro-batches on every rank (micro-batches are weighted by
their token counts), so accumulation and sharding do not change the objective.

Weight decay applies to the weight matrices of linear layers (attention, MLP, LM head, LoRA
adapters) and not to norms, QK-norm biases or the embedding table: decay pulls every row of a
table each step while rarely seen tokens (most of a 65k-171k vocabulary) get few gradient updates
to balance it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from lumina_mgpt.atomic import write_text_atomically
from lumina_mgpt.errors import CheckpointError, TrainingError
from lumina_mgpt.formats import IGNORE_INDEX
from lumina_mgpt.model import (
    ModelConfig,
    Transformer,
    enable_activation_checkpointing,
    load_model,
    read_config,
    save_model,
)
from lumina_mgpt.training import checkpoint as ckpt
from lumina_mgpt.training.batches import BatchSource, data_batches
from lumina_mgpt.training.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    broadcast_full_state,
    gather_full_state,
    load_local_optimizer_state,
    local_optimizer_state,
    shard_model,
)
from lumina_mgpt.training.lora import apply_lora, merge_lora
from lumina_mgpt.training.recipe import Recipe, Stage

# (stage, stage index, distributed context, seed) -> this rank's batches for the stage.
BatchFactory = Callable[[Stage, int, DistributedContext, int], BatchSource]

logger = logging.getLogger(__name__)


def learning_rate(stage: Stage, step: int, total_steps: int) -> float:
    """LR of 0-based optimizer step `step`: linear warmup to `lr`, then constant or cosine to `min_lr`."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    if stage.schedule == "constant":
        return stage.lr
    progress = min(1.0, (step - stage.warmup) / max(1, total_steps - stage.warmup))
    return stage.min_lr + 0.5 * (stage.lr - stage.min_lr) * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed (nn.Linear weights) and not decayed (the rest)."""
    decayed, not_decayed = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.requires_grad:
                is_matrix = isinstance(module, nn.Linear) and name == "weight"
                (decayed if is_matrix else not_decayed).append(parameter)
    if not decayed and not not_decayed:
        raise TrainingError("the model has no trainable parameters")
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]


def clip_gradients(parameters: list[nn.Parameter], max_norm: float, context: DistributedContext) -> float:
    """Global L2 norm of the gradients (over all shards); scales them to `max_norm` when larger (0: no clip)."""
    local = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in parameters if p.grad is not None]
    if not local:
        return 0.0
    squares = torch.stack([g.float().pow(2).sum() for g in local]).sum()
    norm = all_reduce_sum(squares, context).sqrt()
    if max_norm > 0:
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for gradient in local:
            gradient.mul_(scale.to(gradient.dtype))
    return float(norm)


@dataclasses.dataclass
class _StageRun:
    """The live objects of the stage being trained."""

    index: int
    stage: Stage
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: BatchSource
    total_steps: int
    iterator: Iterator[dict[str, torch.Tensor]] | None = None

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.iterator is None:
            self.iterator = iter(self.batches)
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.batches)
            try:
                return next(self.iterator)
            except StopIteration:
                raise TrainingError(f"stage {self.stage.name!r}: the data yields no batch on this rank") from None


class Trainer:
    """Runs a recipe's stages in order in `output_dir`, resuming from its newest checkpoint on request.

    `batch_factory` makes each stage's batches (default: `data_batches`, the recipe's pretokenized data
    sets through lumina_mgpt.data, context drop included, samples longer than the recipe's
    max_seq_len skipped). `max_steps` stops after that many optimizer steps overall (with a checkpoint).
    """

    def __init__(
        self,
        recipe: Recipe,
        context: DistributedContext,
        output_dir: Path | None = None,
        max_steps: int | None = None,
        batch_factory: BatchFactory | None = None,
        progress_bar: bool = True,
    ) -> None:
        if max_steps is not None and max_steps <= 0:
            raise TrainingError(f"max_steps={max_steps} is invalid; a positive integer is accepted")
        self.recipe = recipe
        self.context = context
        self.run_dir = Path(output_dir or recipe.output_dir)
        self.max_steps = max_steps
        self.batch_factory = batch_factory or self._data_batches
        self.progress_bar = progress_bar and context.is_main
        self.global_step = 0
        self.tokens = 0

    # ------------------------------------------------------------------ entry point
    def train(self, resume: bool = False) -> Path:
        """Train every remaining stage; returns the model folder of the newest checkpoint (HF format, LoRA
        merged, with the recipe's assets): `final/` once every stage is done."""
        start = self._prepare_run_dir(resume)
        first_stage = 0
        if start is not None:
            progress = start.progress
            self.global_step, self.tokens = progress.global_step, progress.tokens
            first_stage = progress.stage_index + 1 if progress.stage_finished else progress.stage_index
            if progress.stage_finished:
                start = None
        for index in range(first_stage, len(self.recipe.stages)):
            if self._reached_max_steps():
                break
            self._train_stage(index, start)
            start = None
        barrier(self.context)
        latest, folder = ckpt.completed_checkpoints(self.run_dir)[-1]
        finished = latest.stage_finished and latest.stage_index == len(self.recipe.stages) - 1
        if not finished:
            return folder / ckpt.MODEL_DIR
        if self.context.is_main:
            ckpt.publish_final(self.run_dir, folder / ckpt.MODEL_DIR)
        barrier(self.context)
        return self.run_dir / ckpt.FINAL_DIR

    # ------------------------------------------------------------------ run folder
    def _prepare_run_dir(self, resume: bool) -> ckpt.ResumePoint | None:
        """Check the run folder against `resume`, record the recipe, and find the checkpoint to resume
        from: the newest that loads on every rank. Damaged ones are moved aside and the log is cut back
        to the chosen step, only once it has loaded."""
        found = ckpt.completed_checkpoints(self.run_dir)
        unreadable = ckpt.unreadable_checkpoints(self.run_dir)
        recipe_file = self.run_dir / ckpt.RECIPE_FILE
        if (found or unreadable) and not resume:
            raise TrainingError(
                f"{self.run_dir} already holds checkpoints; pass --resume to continue that run or choose another --out"
            )
        if found and recipe_file.is_file() and recipe_file.read_text() != self.recipe.source_text:
            raise TrainingError(
                f"the recipe differs from {recipe_file}, the one this run started with; resume with that recipe"
            )
        barrier(self.context)  # every rank has listed the checkpoints before rank 0 changes the folder
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomically(recipe_file, self.recipe.source_text)
        if not found and not unreadable:
            if self.context.is_main:
                ckpt.truncate_log(self.run_dir, 0)
            return None
        start, rejected = self._newest_loadable(found, unreadable)
        if self.context.is_main:
            for folder, reason in rejected:
                target = ckpt.move_aside(folder)
                logger.warning("checkpoint %s cannot be resumed from: %s; moved aside to %s", folder, reason, target.name)
            if rejected:
                logger.warning("resuming from %s (step %d)", start.folder, start.progress.global_step)
            ckpt.truncate_log(self.run_dir, start.progress.global_step)
        barrier(self.context)  # nothing is written to the run folder before the damaged checkpoints are gone
        return start

    def _newest_loadable(
        self, found: list[tuple[ckpt.TrainingProgress, Path]], unreadable: list[tuple[Path, str]]
    ) -> tuple[ckpt.ResumePoint, list[tuple[Path, str]]]:
        """The newest checkpoint every rank can load, and (folder, reason) of each one that was rejected."""
        rejected = list(unreadable)
        for progress, folder in reversed(found):
            if progress.world_size != self.context.world_size:
                raise TrainingError(
                    f"{folder} was written by {progress.world_size} ranks; resume it with the same number of ranks "
                    f"(now {self.context.world_size})"
                )
            start, failure = None, None
            try:
                start = self._load_resume_point(progress, folder)
            except (TrainingError, CheckpointError) as error:
                failure = str(error)
            # Every rank tries its own files; all of them must move on together when one fails.
            failures = all_reduce_sum(torch.tensor([float(failure is not None)], device=self.context.device), self.context)
            if start is not None and int(failures.item()) == 0:
                return start, rejected
            rejected.append((folder, failure or "another rank could not load its part of it"))
        tried = "; ".join(f"{folder}: {reason}" for folder, reason in rejected)
        raise TrainingError(f"no checkpoint of {self.run_dir} loads, so the run cannot resume (tried {tried})")

    def _load_resume_point(self, progress: ckpt.TrainingProgress, folder: Path) -> ckpt.ResumePoint:
        """Check every file that resuming from `folder` reads (model weights on the meta device: config,
        tensor names, shapes and file sizes, no data) and load this rank's state."""
        if progress.stage_finished:
            load_model(folder / ckpt.MODEL_DIR, device="meta")  # what the next stage (or final/) starts from
            return ckpt.ResumePoint(progress, folder, None)
        if self.recipe.lora is None:
            load_model(folder / ckpt.MODEL_DIR, device="meta")
        else:
            ckpt.load_adapters(folder)
            if progress.stage_index > 0:  # the previous stage's model, which the adapters sit on
                load_model(self._stage_source(progress.stage_index), device="meta")
        return ckpt.ResumePoint(progress, folder, ckpt.load_rank_state(folder, self.context.rank))

    def _reached_max_steps(self) -> bool:
        return self.max_steps is not None and self.global_step >= self.max_steps

    # ------------------------------------------------------------------ data
    def _data_batches(self, stage: Stage, index: int, context: DistributedContext, seed: int) -> BatchSource:
        return data_batches(
            stage, index, context, seed, layout=self.recipe.layout, max_seq_len=self._sequence_limit(index)
        )

    def _sequence_limit(self, index: int) -> int:
        """The longest sample stage `index` trains on: the recipe's max_seq_len, else the model's
        max_position_embeddings."""
        if self.recipe.max_seq_len is not None:
            return self.recipe.max_seq_len
        folder = self._stage_source(index)
        if folder is not None:
            return read_config(folder).max_position_embeddings
        # The context length does not depend on the vocabulary, which a preset may leave to the data.
        placeholder = {} if "vocab_size" in self.recipe.model.overrides else {"vocab_size": 1}
        return self._preset_config(**placeholder).max_position_embeddings

    # ------------------------------------------------------------------ model
    def _stage_source(self, index: int) -> Path | None:
        """The folder stage `index` starts from: the previous stage's final model, else the recipe's."""
        if index > 0:
            return self.run_dir / ckpt.STAGES / self.recipe.stages[index - 1].name / ckpt.MODEL_DIR
        return self.recipe.model.path

    def _build_model(self, index: int, checkpoint: Path | None, data_vocab_size: int | None) -> nn.Module:
        """Build (rank 0 on CPU, other ranks on meta), adapt, wrap and place the model of stage `index`.

        A preset without a vocab_size takes the data's: the ids the tokenizers actually produce.
        (An explicit larger one is allowed: the extra ids are never seen.)"""
        source = self.recipe.model
        lora = self.recipe.lora
        if checkpoint is not None and lora is None:
            folder = checkpoint / ckpt.MODEL_DIR  # full fine-tuning: the checkpoint holds every weight
        else:
            folder = self._stage_source(index)
        real = not self.context.is_distributed or self.context.is_main
        ckpt.seed_everything(self.recipe.seed)  # the same initial weights and adapters for every run of the recipe
        if folder is not None:
            loaded = load_model(folder, device="cpu" if real else "meta", dtype=torch.float32)
            config = loaded.config
            if source.dropout is not None:
                config = dataclasses.replace(config, dropout=source.dropout)
            with torch.device("meta"):
                model = Transformer(config)
            model.load_state_dict(loaded.state_dict(), assign=True)
        else:
            extra = {} if source.dropout is None else {"dropout": source.dropout}
            if "vocab_size" not in source.overrides and data_vocab_size is not None:
                extra["vocab_size"] = data_vocab_size
            config = self._preset_config(**extra)
            with torch.device("cpu" if real else "meta"):
                model = Transformer(config)
        if lora is not None:
            apply_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets)
            if checkpoint is not None and real:
                adapters = ckpt.load_adapters(checkpoint)
                missing, unexpected = model.load_state_dict(adapters, strict=False)
                if unexpected or any("lora_" in key for key in missing):
                    raise TrainingError(f"{checkpoint / ckpt.LORA_FILE} does not match the recipe's LoRA settings")
        model.train()
        if source.activation_checkpointing:
            enable_activation_checkpointing(model)
        if source.compile:
            for block in model.model.layers:
                block.compile()
        if not self.context.is_distributed:
            return model.to(self.context.device)
        full_state = model.state_dict() if self.context.is_main else {}
        shard_model(model, self.context)
        model.to_empty(device=self.context.device)
        broadcast_full_state(model, full_state)
        return model

    def _preset_config(self, **extra: Any) -> ModelConfig:
        """The recipe's preset with its [model] overrides and `extra`."""
        source = self.recipe.model
        try:
            return ModelConfig.preset(source.preset, **source.overrides, **extra)
        except CheckpointError as error:
            raise TrainingError(f"[model] preset {source.preset!r}: {error}") from error

    def _export(self, model: nn.Module, folder: Path) -> None:
        """Rank 0 writes the plain HF model (LoRA merged, assets copied) and the unmerged adapters."""
        full_state = gather_full_state(model, self.context)
        if not self.context.is_main:
            return
        with torch.device("meta"):
            export = Transformer(model.config)
        if self.recipe.lora is not None:
            from safetensors.torch import save_file

            lora = self.recipe.lora
            apply_lora(export, lora.rank, lora.alpha, lora.dropout, lora.targets)
            adapters = {key: value.contiguous() for key, value in full_state.items() if ".lora_" in key}
            save_file(adapters, folder / ckpt.LORA_FILE)
        export.load_state_dict(full_state, assign=True)
        merge_lora(export)
        save_model(export, folder / ckpt.MODEL_DIR)
        # A model fine-tuned from a folder may learn words that folder's word list lacks, and would then drop
        # them from prompts: only a recipe that names its assets (as the build's do) carries the list over.
        source = self.recipe.model
        ckpt.copy_assets(source.assets, folder / ckpt.MODEL_DIR, word_list=source.assets != source.path)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, run: _StageRun, stage_step: int, finished: bool) -> None:
        parent = self.run_dir / (ckpt.STAGES if finished else ckpt.CHECKPOINTS)
        name = run.stage.name if finished else ckpt.periodic_name(self.global_step)
        temp = parent / f"{ckpt.TEMP_PREFIX}{name}"
        if self.context.is_main:
            ckpt.empty_folder(temp)
        barrier(self.context)
        rank_state = {
            "optimizer": local_optimizer_state(run.model, run.optimizer),
            "data": run.batches.state_dict(),
            "rng": ckpt.rng_state(),
        }
        ckpt.save_rank_state(temp, self.context.rank, rank_state)
        self._export(run.model, temp)
        barrier(self.context)
        if self.context.is_main:
            progress = ckpt.TrainingProgress(
                stage_index=run.index,
                stage_name=run.stage.name,
                stage_step=stage_step,
                global_step=self.global_step,
                tokens=self.tokens,
                stage_finished=finished,
                world_size=self.context.world_size,
            )
            ckpt.publish(temp, parent / name, progress)
            if not finished:
                ckpt.prune_periodic(self.run_dir, self.recipe.checkpoint.keep)
        barrier(self.context)

    def _maybe_checkpoint(self, run: _StageRun, stage_step: int) -> None:
        """Checkpoint at the end of the stage, every `checkpoint.every` steps, and when max_steps stops the run."""
        if stage_step == run.total_steps:
            self._save_checkpoint(run, stage_step, finished=True)
        elif self._reached_max_steps() or (
            self.recipe.checkpoint.every and stage_step % self.recipe.checkpoint.every == 0
        ):
            self._save_checkpoint(run, stage_step, finished=False)

    # ------------------------------------------------------------------ stages
    def _stage_steps(self, stage: Stage, batches: BatchSource) -> int:
        if stage.steps is not None:
            return stage.steps
        try:
            per_epoch = len(batches)  # type: ignore[arg-type]
        except TypeError:
            raise TrainingError(f"stage {stage.name!r} counts epochs but its data has no length; use steps") from None
        return max(1, math.ceil(stage.epochs * per_epoch / stage.grad_accumulation))

    def _train_stage(self, index: int, start: ckpt.ResumePoint | None) -> None:
        """Train stage `index` from its beginning, or from `start`, a checkpoint inside it."""
        stage = self.recipe.stages[index]
        stage_seed = self.recipe.seed + 1_000 * index
        batches = self.batch_factory(stage, index, self.context, stage_seed)
        data_layout = getattr(batches, "layout", None)
        checkpoint = None if start is None else start.folder
        model = self._build_model(index, checkpoint, None if data_layout is None else data_layout.vocab_size)
        settings = self.recipe.optimizer
        optimizer = torch.optim.AdamW(
            parameter_groups(model, settings.weight_decay), lr=stage.lr, betas=settings.betas, eps=settings.eps
        )
        if data_layout is not None and data_layout.vocab_size > model.config.vocab_size:
            raise TrainingError(
                f"stage {stage.name!r}: the data's layout has {data_layout.vocab_size} ids but the model's "
                f"vocabulary only {model.config.vocab_size}; give [model] vocab_size >= {data_layout.vocab_size}, "
                "or leave it out to take the data's"
            )
        run = _StageRun(
            index=index,
            stage=stage,
            model=model,
            optimizer=optimizer,
            batches=batches,
            total_steps=self._stage_steps(stage, batches),
        )
        first_step = 0
        if start is not None:
            first_step = start.progress.stage_step
            saved = start.rank_state
            load_local_optimizer_state(model, optimizer, saved["optimizer"])
            batches.load_state_dict(saved["data"])
            ckpt.set_rng_state(saved["rng"])
        else:
            ckpt.seed_everything(stage_seed + 7919 * self.context.rank)  # dropout masks differ across ranks

        bar = None
        if self.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=run.total_steps, initial=first_step, desc=f"stage {stage.name}", unit="step")
        trainable = [p for p in model.parameters() if p.requires_grad]
        for stage_step in range(first_step, run.total_steps):
            if self._reached_max_steps():
                break
            record = self._train_step(run, stage_step, trainable)
            if self.context.is_main:
                self._log(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            self._maybe_checkpoint(run, stage_step + 1)
        if bar is not None:
            bar.close()

    def _train_step(self, run: _StageRun, stage_step: int, trainable: list[nn.Parameter]) -> dict[str, Any]:
        """One optimizer step over `grad_accumulation` micro-batches; returns its log record.

        `tokens` counts input positions over all ranks, right padding included (what the hardware
        computes); `supervised_tokens` the positions the loss scores.
        """
        started = time.perf_counter()
        stage, model, device = run.stage, run.model, self.context.device
        lr = learning_rate(stage, stage_step, run.total_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        micro_batches = []
        for _ in range(stage.grad_accumulation):
            batch = run.next_batch()
            micro_batches.append((batch["input_ids"].to(device), batch["labels"].to(device)))
        # Counts of this step: [supervised positions (shifted, as the model scores them), input positions].
        counts = torch.tensor(
            [[int((labels[:, 1:] != IGNORE_INDEX).sum()), labels.numel()] for _, labels in micro_batches],
            dtype=torch.float64,
            device=device,
        ).sum(0)
        counts = all_reduce_sum(counts, self.context)
        supervised = counts[0].clamp(min=1.0)
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # ce and z, summed over supervised tokens
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        )
        for position, (input_ids, labels) in enumerate(micro_batches):
            if self.context.is_distributed:
                model.set_requires_gradient_sync(position == len(micro_batches) - 1)
            with autocast:
                out = model(input_ids, labels=labels, z_loss_weight=self.recipe.z_loss)
            # FSDP averages gradients over ranks, hence the world size factor.
            weight = out.num_tokens.double() * self.context.world_size / supervised
            (out.loss * weight.float()).backward()
            sums += torch.stack([out.ce_loss.detach(), out.z_loss.detach()]).double() * out.num_tokens
        sums = all_reduce_sum(sums, self.context) / supervised
        grad_norm = clip_gradients(trainable, self.recipe.optimizer.grad_clip, self.context)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        tokens = int(counts[1])
        self.tokens += tokens
        ce, z = float(sums[0]), float(sums[1])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        return {
            "step": self.global_step,
            "stage": stage.name,
            "stage_step": stage_step + 1,
            "loss": ce + self.recipe.z_loss * z,
            "ce": ce,
            "z": z,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": self.tokens,
            "supervised_tokens": int(counts[0]),
            "tokens_per_s": tokens / elapsed,
        }

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / ckpt.LOG_FILE, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
