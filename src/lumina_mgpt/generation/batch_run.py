"""A prompt file run over one process or many: `lumina generate --prompts FILE --out DIR`, alone or under
`torchrun --nproc-per-node N -m lumina_mgpt.cli generate --prompts FILE --out DIR` (gloo on CPU, NCCL on CUDA).

The file's images (generation/prompt_files.py) are cut into batches by the file alone: consecutive images
of one size and one set of sampling settings, at most `batch_size` of them. Batch b belongs to rank
b % world_size. So each image is decoded in the same batch, with the same seed, whatever the number of
processes, and the PNGs of one process and of N are the same files. Each image has a fixed name
(`LINE-words-seedS.png`) and is written as soon as its batch is decoded; a batch whose images all exist
is skipped, so a rerun after a crash or a kill finishes the work without redoing or duplicating any. When
every rank is done (a barrier), rank 0 writes `manifest.json`: every image's file, line, prompt, seed,
size and settings.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lumina_mgpt.atomic import write_text_atomically
from lumina_mgpt.errors import GenerationError
from lumina_mgpt.formats import VocabLayout
from lumina_mgpt.generation.engine import GenerationSettings
from lumina_mgpt.generation.outputs import file_slug
from lumina_mgpt.generation.pipeline import GenerationPlan
from lumina_mgpt.generation.prompt_files import PromptLine
from lumina_mgpt.model_folder import Defaults

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ImageJob:
    """One image of a prompt file: its line, its index among the line's images, and what decodes it."""

    line: int
    index: int
    prompt: str
    seed: int
    width: int
    height: int
    settings: GenerationSettings
    sjd_window: int | None
    name: str

    @property
    def batch_key(self) -> tuple:
        """Images with equal keys can be decoded in one engine call."""
        return self.width, self.height, self.settings, self.sjd_window

    def record(self) -> dict[str, Any]:
        """The image's manifest entry."""
        return {
            "file": self.name,
            "line": self.line,
            "index": self.index,
            "prompt": self.prompt,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "cfg": self.settings.cfg,
            "cfg_schedule": self.settings.cfg_schedule,
            "image_sampling": asdict(self.settings.image),
            "sjd_window": self.sjd_window,
        }


def plan_jobs(
    lines: Sequence[PromptLine],
    layout: VocabLayout,
    defaults: Defaults,
    fallback: Mapping[str, Any],
    where: str = "prompt file",
) -> list[ImageJob]:
    """Every image of the file, in order, checked (see `PromptLine.plan`)."""
    digits = max(5, len(str(lines[-1].number))) if lines else 5
    jobs = []
    for line in lines:
        plan = line.plan(layout, defaults, fallback, where)
        words = file_slug(line.prompt)
        for index, seed in enumerate(plan.seeds):
            name = f"{line.number:0{digits}d}-{words + '-' if words else ''}seed{seed}.png"
            jobs.append(
                ImageJob(
                    line.number, index, line.prompt, seed, plan.width, plan.height, plan.settings, plan.sjd_window, name
                )
            )
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        repeated = next(name for name in names if names.count(name) > 1)
        raise GenerationError(
            f"{where}: two images of one line share the file name {repeated} (the same seed twice); "
            f"give each image of a line its own seed"
        )
    return jobs


def make_batches(jobs: Sequence[ImageJob], batch_size: int) -> list[list[ImageJob]]:
    """Consecutive jobs with one batch key, at most `batch_size` a batch: a function of the file alone."""
    batches: list[list[ImageJob]] = []
    for job in jobs:
        if batches and len(batches[-1]) < batch_size and batches[-1][0].batch_key == job.batch_key:
            batches[-1].append(job)
        else:
            batches.append([job])
    return batches


def rank_share(batches: Sequence[list[ImageJob]], rank: int, world_size: int) -> list[list[ImageJob]]:
    """The batches rank `rank` of `world_size` decodes: every world_size-th, from its own rank on."""
    return list(batches[rank::world_size])


def run_batches(
    pipe,
    batches: Sequence[list[ImageJob]],
    out: Path,
    overwrite: bool = False,
    on_written: Callable[[Path], None] | None = None,
) -> tuple[int, int]:
    """Decode each batch that has an image missing in `out` (every batch with `overwrite`), writing the
    missing images (all of them with `overwrite`) as the batch finishes. Returns (written, skipped)."""
    from lumina_mgpt.generation.outputs import save_png

    written = skipped = 0
    for batch in batches:
        wanted = [job for job in batch if overwrite or not (out / job.name).exists()]
        if not wanted:
            skipped += len(batch)
            continue
        # The whole batch is decoded even when only some images are missing: the same batch gives the
        # same floats, so a finished image never depends on which of its neighbours a crash left behind.
        first = batch[0]
        plan = GenerationPlan(
            tuple(job.prompt for job in batch),
            tuple(job.seed for job in batch),
            first.width,
            first.height,
            first.settings,
            len(batch),
            first.sjd_window,
        )
        for job, image in zip(batch, pipe.run_plan(plan, progress=False)):
            if job not in wanted:
                continue
            try:
                # Only this rank owns the name and the bytes are a function of the job: replacing is safe.
                path = save_png(image, out / job.name, overwrite=True)
            except OSError as error:
                raise GenerationError(
                    f"could not write {job.name} into {out}: {error.strerror or error}; the images written before it "
                    f"are kept, and a rerun skips them"
                ) from None
            written += 1
            if on_written is not None:
                on_written(path)
        skipped += len(batch) - len(wanted)
    return written, skipped


def write_manifest(jobs: Sequence[ImageJob], out: Path, prompts_file: str | os.PathLike, model: str) -> Path:
    """`manifest.json` in `out`, listing every job; GenerationError if an image is missing from `out`."""
    missing = [job.name for job in jobs if not (out / job.name).exists()]
    if missing:
        raise GenerationError(
            f"{len(missing)} of {len(jobs)} images are missing from {out} (first: {missing[0]}); rerun the same "
            f"command to finish them"
        )
    manifest = {
        "prompts": str(prompts_file),
        "model": model,
        "count": len(jobs),
        "images": [job.record() for job in jobs],
    }
    return write_text_atomically(out / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def run_prompt_file(args) -> int:
    """`lumina generate --prompts FILE`: the CLI's arguments in, images and a manifest out (see the module)."""
    from lumina_mgpt.generation.checks import check_integer
    from lumina_mgpt.generation.cli import sjd_window
    from lumina_mgpt.generation.outputs import check_output_folder
    from lumina_mgpt.generation.pipeline import Pipeline, load_options
    from lumina_mgpt.generation.prompt_files import read_prompt_file
    from lumina_mgpt.model_folder import read_model_info

    # Every check that needs no model, before the process group and the slow load.
    lines = read_prompt_file(args.prompts)
    device, dtype = load_options(args.device, quant=args.quant)
    info = read_model_info(args.model, args.image_tokenizer)
    fallback = {
        "seed": args.seed,
        "n": args.num_images,
        "width": args.width,
        "height": args.height,
        "cfg": args.cfg,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "cfg_schedule": args.cfg_schedule,
        "sjd_window": sjd_window(args),
    }
    jobs = plan_jobs(lines, info.layout, info.defaults, fallback, where=str(args.prompts))
    batch_size = check_integer("batch_size", args.batch_size, 1, "images decoded together")
    out = check_output_folder(args.out)

    from lumina_mgpt.training.distributed import barrier, distributed_session

    with distributed_session(str(device)) as context:
        share = rank_share(make_batches(jobs, batch_size), context.rank, context.world_size)
        tag = f"rank {context.rank}/{context.world_size}: " if context.is_distributed else ""
        missing = sum(1 for batch in share for job in batch if args.overwrite or not (out / job.name).exists())
        print(f"{tag}{missing} of {sum(map(len, share))} images to decode", file=sys.stderr)
        written, skipped = 0, sum(map(len, share))
        if missing:  # a finished share needs no model
            print(f"{tag}loading model from {info.folder}", file=sys.stderr)
            pipe = Pipeline.from_model_info(info, device=context.device, dtype=dtype, quant=args.quant)
            written, skipped = run_batches(
                pipe, share, out, overwrite=args.overwrite, on_written=lambda path: print(path, flush=True)
            )
        print(f"{tag}wrote {written} image(s), skipped {skipped} already in {out}", file=sys.stderr)
        barrier(context)
        if context.is_main:
            manifest = write_manifest(jobs, out, args.prompts, str(info.folder))
            print(f"manifest: {manifest} ({len(jobs)} images)", file=sys.stderr)
    return 0
