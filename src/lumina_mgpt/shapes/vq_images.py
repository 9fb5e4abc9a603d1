"""Training images of the multi-task model's image tokenizer, drawn from the task world (tasks.py).

Every canvas the language model reads or writes is here in its share: text-to-image renders at every
canvas size, both halves of the edit, subject and control panels (each half a canvas of its own, as the
tokenizer sees it), segmentation maps and edge maps. Drawn from the training seed stream of tasks.py,
so no evaluation item is among them.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from PIL import Image

from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes.tasks import TASKS, training_record

# The recipe of train_task_image_tokenizer: the `shapes-tasks` tokenizer (vision/config.py) trained on
# the distinct patches of this many canvases (1,554 for seed 0).
TASK_TOKENIZER_IMAGES = 6000
TASK_TOKENIZER_PRESET = "shapes-tasks"


def task_tokenizer_settings(seed: int):
    """The VQTrainer settings of train_task_image_tokenizer."""
    from lumina_mgpt.vision.train import TrainSettings

    return TrainSettings(
        steps=2400,
        batch_size=128,  # distinct patches per step
        autoencoder_warmup=600,
        # A patch's code is used in a step with probability ~128/1,600: only codes unused for far
        # longer than that are dead.
        dead_code_window=200,
        seed=seed,
    )


# (task, panel) sources taken in turn; panel 0 is the upper half of a dual panel (the condition),
# 1 the lower (the result); single canvases have panel 0 only. Text-to-image renders come three
# times per cycle, one per canvas size on average; the maps twice each (as an input of control and
# an output of prediction). The renders inside edit / subject / prediction panels repeat the
# text-to-image world on 64x64 with fresh layouts.
SOURCES: tuple[tuple[str, int], ...] = (
    ("text_to_image", 0),
    ("text_to_image", 0),
    ("text_to_image", 0),
    ("edit_recolor", 0),
    ("edit_recolor", 1),
    ("edit_move", 1),
    ("edit_add", 1),
    ("edit_remove", 1),
    ("subject", 0),
    ("subject", 1),
    ("control_edges", 0),  # edge map
    ("control_edges", 1),
    ("segmentation", 1),  # segmentation map
    ("segmentation", 1),
    ("edges", 1),  # edge map
)


def record_canvas(task: str, panel: int, seed: int, index: int) -> Image.Image:
    """Panel `panel` of training record `index` of `task`: its single canvas, or a half of its dual panel."""
    (image,) = training_record(task, seed, index).images
    if not TASKS[task].dual_panel:
        return image
    half = image.height // 2
    return image.crop((0, panel * half, image.width, (panel + 1) * half))


def tokenizer_training_images(count: int, seed: int) -> list[Image.Image]:
    """`count` canvases, SOURCES in turn (deterministic for a seed; sizes 64x64, 80x48 and 48x80)."""
    if count < 1 or seed < 0:
        raise DataError(f"need a positive image count and a non-negative seed, got count {count} and seed {seed}")
    per_cycle = Counter(task for task, _ in SOURCES)
    images = []
    for position in range(count):
        cycle, slot = divmod(position, len(SOURCES))
        task, panel = SOURCES[slot]
        # The sources of one task read records in turn, so no record is used twice.
        occurrence = sum(1 for earlier, _ in SOURCES[:slot] if earlier == task)
        images.append(record_canvas(task, panel, seed, cycle * per_cycle[task] + occurrence))
    return images


def train_task_image_tokenizer(output_folder: str | os.PathLike, work_folder: str | os.PathLike, seed: int) -> None:
    """Train the multi-task model's image tokenizer into `output_folder` (about 20 min on 2 CPU cores).

    Resumable: VQTrainer checkpoints into `work_folder` every `save_every` steps, and a rerun continues
    from there (work_folder is kept). The finished tokenizer is saved with only the codes the training
    patches use (vision.train.keep_used_codes): about 1,400 of the 2,048 trained."""
    import torch

    from lumina_mgpt.vision import ImageTokenizer
    from lumina_mgpt.vision.config import preset
    from lumina_mgpt.vision.data import distinct_patches
    from lumina_mgpt.vision.train import TRAINER_STATE_FILE, VQTrainer, keep_used_codes

    work = Path(work_folder)
    config = preset(TASK_TOKENIZER_PRESET)
    patches = distinct_patches(tokenizer_training_images(TASK_TOKENIZER_IMAGES, seed), config.downsample)
    settings = task_tokenizer_settings(seed)
    if (work / TRAINER_STATE_FILE).is_file():
        trainer = VQTrainer.resume(work, patches, steps=settings.steps)
    else:
        torch.manual_seed(seed)
        trainer = VQTrainer(ImageTokenizer(config), patches, settings, work)
    trainer.run()
    keep_used_codes(ImageTokenizer.from_pretrained(work), patches).save_pretrained(output_folder)
