"""Build the embedded shapes model with the project's own pipeline, one resumable step at a time:

1. render the task world's training records (shapes/tasks.py): 64 px canvases (text to image,
   captions, visual questions, rewrites), 64x128 dual panels (editing, control, subject, maps), a
   group of fresh caption, question, rewrite and text-to-image records for the text stage, and the
   verify, relations and subject groups of the later stages, and the understanding tasks on every canvas
   (64x64, 80x48, 48x80) for the last one,
2. train a lower-casing byte-level BPE on the text of the first two groups,
3. train the patch-local VQ image tokenizer on the task world's images (shapes/vq_images.py),
4. write the project assets (tokenizer.json, image_tokenizer/, lumina.json with the layout and tasks, and
   prompt_words.txt, the words of the training records, which the model reads prompts with),
5. `lumina pretokenize` each group at its target size (64 for canvases, 96 for the dual panels),
6. `lumina train recipes/shapes-multitask.toml`, then `recipes/shapes-multitask-text.toml` from its final
   model, then `recipes/shapes-multitask-polish.toml` (relations and subject scenes) from that one's, then
   `recipes/shapes-multitask-canvases.toml` (pictures of every canvas) from the polish stage's,
7. draw pictures with the canvases stage's final model and ask the analyzer the self-verifier's question
   about them (shapes/drawn_verify.py), pretokenize them, and train `recipes/shapes-multitask-judge.toml`
   on them from that model,
8. write rewrite and text-to-image records of requests in every training style, lists and requests set in
   context included, as the model reads them (tasks.read_request_record), pretokenize them, and train
   `recipes/shapes-multitask-requests.toml` on them from the judge stage's final model,
9. draw pictures with the requests stage's final model as in step 7 (another seed) and train
   `recipes/shapes-multitask-rejudge.toml` on them from that model,
10. once more: draw with the rejudge stage's final model (a third seed) and train
   `recipes/shapes-multitask-rejudge-again.toml` on those drawings from that model,
11. export the last stage's final model, in bf16, into the package (src/lumina_mgpt/assets/shapes-model).

    python -m lumina_mgpt.shapes.build            # from the repository root; see --help

Each step is skipped when its output exists, so a killed build continues where it stopped; on a new
machine (no runs/ folder) it starts again from step 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
# The main recipe, then a short text stage on fresh records of the tasks that answer in words, then a
# polish stage on relations and subject scenes, then a stage that reads pictures of every canvas, then a
# judge stage on the self-verifier's question about the model's own drawings, then a stage on requests as the
# model reads them, then the judge's question again, about the requests model's drawings, and once more about
# the rejudged model's.
RECIPES = tuple(
    REPO / "recipes" / f"shapes-multitask{stage}.toml"
    for stage in ("", "-text", "-polish", "-canvases", "-judge", "-requests", "-rejudge", "-rejudge-again")
)
JUDGE_RECIPE, REQUESTS_RECIPE, REJUDGE_RECIPE, REJUDGE_AGAIN_RECIPE = RECIPES[-4:]
# Before each judging stage, the stage before's final model draws pictures that the analyzer answers the
# self-verifier's question about (shapes/drawn_verify.py): recipe -> (group, offset of the drawings' seed).
DRAWN_VERIFY_COUNT = 8000
DRAWN_GROUP, REDRAWN_GROUP, REDRAWN_AGAIN_GROUP = "drawn", "redrawn", "redrawn-again"  # data-drawn, tokens-drawn, ...
DRAWN_GROUPS = {
    JUDGE_RECIPE: (DRAWN_GROUP, 0), REJUDGE_RECIPE: (REDRAWN_GROUP, 1), REJUDGE_AGAIN_RECIPE: (REDRAWN_AGAIN_GROUP, 2)
}  # fmt: skip
WORK = REPO / "runs" / "multitask"  # the recipe's paths point here
# Records per task. Canvas tasks pretokenize at 64 (64x64, 80x48, 48x80 are its buckets), dual panels
# at 96 (64x128 is a bucket of 96, not of 64).
SINGLE_COUNTS = {"text_to_image": 60000, "caption": 15000, "vqa": 25000, "rewrite": 20000}
PANEL_COUNTS = {
    "edit_recolor": 8000, "edit_move": 8000, "edit_add": 8000, "edit_remove": 8000,
    "control_edges": 10000, "subject": 10000, "segmentation": 10000, "edges": 10000,
}
# The text stage's group (rendered with another seed): the tasks that answer in words, and some drawing so
# that prompts with words around them (phrasing.add_distractors, added after the main groups were rendered
# for the shipped model) are drawn too.
TEXT_COUNTS = {"caption": 30000, "vqa": 60000, "rewrite": 80000, "text_to_image": 30000}
# Also for the text stage: the self-verifier's yes/no question with near misses like a drawing's mistakes.
# At step 5,500 the model answered "yes" to nearly every near miss of the main mix's questions.
VERIFY_COUNTS = {"verify": 24000}
# For the polish stage: the text stage's model answered "where is X relative to Y?" on the right axis but
# in a direction no better than chance, and lost the reference object in subject scenes.
RELATIONS_COUNTS = {"relations": 24000}
SUBJECT_COUNTS = {"subject": 10000}
# For the canvases stage: the earlier stages showed understanding tasks 64x64 pictures only, and the polish
# stage's model captioned 80x48 and 48x80 renders right 61 and 77 times of 96 (64x64: 96), so its
# self-verifier judged two thirds of ShapesEval's drawings on pictures it had never read.
UNDERSTAND_COUNTS = {"caption": 8000, "vqa": 12000, "verify": 10000, "relations": 10000}
GROUPS = {
    "single": (SINGLE_COUNTS, 64), "panels": (PANEL_COUNTS, 96), "text": (TEXT_COUNTS, 64),
    "verify": (VERIFY_COUNTS, 64), "relations": (RELATIONS_COUNTS, 64), "subject": (SUBJECT_COUNTS, 96),
    "understand": (UNDERSTAND_COUNTS, 64),
}  # fmt: skip
# For the requests stage: requests jotted as lists or set in context besides the earlier styles, as the model
# reads them (tasks.read_request_record). The judge stage's model rewrote 4 of the 6 held-out requests wrapped
# in a long sentence into two objects ("..., with": the leftover of "with nothing else around" read as "with
# a second object") and dropped the second item of "objects: 1 square; 1 circle". Written once the known
# words exist.
REQUEST_COUNTS = {"rewrite": 40000, "text_to_image": 16000}
REQUESTS_GROUP = "requests"  # data-requests, tokens-requests
# Made just before the stage that reads them, not in step 1; in build order (build_report lists them so).
LATE_GROUPS = (DRAWN_GROUP, REQUESTS_GROUP, REDRAWN_GROUP, REDRAWN_AGAIN_GROUP)
# The groups whose understanding pictures are drawn on every canvas; the others show them at 64x64.
EVERY_CANVAS_GROUPS = ("understand",)
BPE_GROUPS = ("single", "panels")
# The fixed dual-panel sentence and the size phrases repeat in every record: a vocabulary of 1,024
# learns them as a few tokens each (512 spelled the panel sentence in ~126 tokens).
BPE_VOCAB = 1024
PIXELS_PER_INDICATOR = 16
MAX_INDICATOR = 16  # 256 px: four times the largest canvas
IMAGE_TOP_K = 128
# Chosen on validation prompts (none held out) with benchmarks/tune_shapes_sampling.py, 319 prompts x
# sampling seeds 0 and 1000 at temperature 0.5. The polish stage's final: CFG 1.75 / 2 / 2.25 / 2.5 ->
# 0.910 / 0.913 / 0.913 / 0.890; the text stage's: CFG 2 / 2.25 / 2.5 / 2.75 -> 0.887 / 0.888 / 0.872 /
# 0.849 (temperature 0.3 scores the same; CFG 1.5 0.84, 3 0.81). The canvases stage's final (exported): CFG 1.75 / 2 /
# 2.25 -> 0.883 / 0.897 / 0.898 (320 prompts x seeds 0 and 1000), so 2.0 stays.
SAMPLING_CFG = 2.0
SAMPLING_TEMPERATURE = 0.5
# Guidance per task, on validation items of the final model (item seed 2024, as
# benchmarks/tune_task_sampling.py draws them; never the held-out ones), 48 items a task, temperature 0.5.
# Edits (mean of the four kinds): 0.953 at CFG 1, 0.984 at 1.5, 0.958 at 2, 0.859 at 2.5; without guidance
# an add more often returns its input unchanged, with strong guidance kept objects change color. Subject:
# 0.40 at CFG 1, 0.67 at 1.5, 0.81 at 2, 0.90 at 2.5, 0.88 at 3, 0.73 at 3.5.
# Tuned on the polish stage's final; kept for the canvases stage's.
PER_TASK_SAMPLING = {"edit": {"cfg": 1.5}, "subject": {"cfg": 2.5}}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def render_data(work: Path, scale: float, seed: int) -> None:
    from lumina_mgpt.shapes.task_dataset import RECORDS_FILE, write_task_dataset
    from lumina_mgpt.shapes.tasks import PANEL
    from lumina_mgpt.shapes.world import CANVAS_SIZES

    for offset, (name, (counts, _)) in enumerate(GROUPS.items()):
        if (work / f"data-{name}" / RECORDS_FILE).is_file():
            continue
        scaled = {task: max(1, round(count * scale)) for task, count in counts.items()}
        log(f"rendering {sum(scaled.values())} {name} records into {work / f'data-{name}'}")
        canvases = CANVAS_SIZES if name in EVERY_CANVAS_GROUPS else (PANEL,)
        write_task_dataset(work / f"data-{name}", scaled, seed=seed + offset, canvases=canvases)


def record_texts(records_file: Path) -> list[str]:
    """Every turn's text of a conversation-records file, images left out."""
    from lumina_mgpt.formats import IMAGE_PLACEHOLDER

    texts = []
    for line in records_file.read_text().splitlines():
        for turn in json.loads(line)["conversations"]:
            texts.extend(piece for piece in turn["value"].split(IMAGE_PLACEHOLDER) if piece.strip())
    return texts


def train_text_tokenizer(work: Path) -> None:
    from lumina_mgpt.shapes.task_dataset import RECORDS_FILE
    from lumina_mgpt.text import TextTokenizer

    target = work / "assets" / "tokenizer.json"
    if target.is_file():
        return
    log("training the lower-casing BPE text tokenizer")
    texts = [text for name in BPE_GROUPS for text in record_texts(work / f"data-{name}" / RECORDS_FILE)]
    target.parent.mkdir(parents=True, exist_ok=True)
    TextTokenizer.train_bpe(texts, vocab_size=BPE_VOCAB, lowercase=True).save(target)


def write_known_words(work: Path) -> None:
    """List the words of the training records beside the tokenizer (text/known_words.py): the model reads
    only these, slips corrected. Training copies the assets into every model folder it writes."""
    from lumina_mgpt.shapes.task_dataset import RECORDS_FILE
    from lumina_mgpt.text.known_words import PROMPT_WORDS_FILE, prompt_words, write_prompt_words

    if (work / "assets" / PROMPT_WORDS_FILE).is_file():
        return
    texts = [text for name in GROUPS for text in record_texts(work / f"data-{name}" / RECORDS_FILE)]
    words = prompt_words(texts)
    write_prompt_words(work / "assets", words)
    log(f"known words: {len(words)}, from {len(texts)} texts")


def train_image_tokenizer(work: Path, seed: int) -> None:
    from lumina_mgpt.shapes.vq_images import train_task_image_tokenizer

    target = work / "assets" / "image_tokenizer"
    if (target / "config.json").is_file() and not (work / "vq-run").exists():
        return
    import torch

    log("training the patch-local VQ image tokenizer on the task world's images")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recipe's result is reproduced byte for byte on one thread
    try:
        train_task_image_tokenizer(target, work / "vq-run", seed)
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(work / "vq-run", ignore_errors=True)


def write_project_metadata(work: Path) -> None:
    from lumina_mgpt.formats import get_layout
    from lumina_mgpt.model_folder import (
        CAPTION,
        CONTROL,
        EDIT,
        PROJECT_FILE,
        REWRITE,
        SUBJECT,
        TEXT_TO_IMAGE,
        VQA,
        Defaults,
        write_project_file,
    )
    from lumina_mgpt.text import TextTokenizer
    from lumina_mgpt.vision import ImageTokenizer

    target = work / "assets" / PROJECT_FILE
    if target.is_file():
        return
    text = TextTokenizer.from_file(work / "assets" / "tokenizer.json")
    image = ImageTokenizer.from_pretrained(work / "assets" / "image_tokenizer")
    layout = get_layout(
        "compact", text, codebook_size=image.codebook_size, downsample=image.downsample,
        pixels_per_indicator=PIXELS_PER_INDICATOR, max_indicator=MAX_INDICATOR,
    )
    defaults = Defaults(
        image_top_k=IMAGE_TOP_K, text_top_k=10, temperature=SAMPLING_TEMPERATURE, cfg=SAMPLING_CFG, size=(64, 64),
        per_task=PER_TASK_SAMPLING,
    )
    # What the task world trains (shapes/tasks.py), under the Pipeline's task names.
    tasks = (TEXT_TO_IMAGE, EDIT, CONTROL, SUBJECT, "segmentation", "edges", CAPTION, VQA, REWRITE)
    write_project_file(target.parent, layout, defaults, tasks)
    log(f"layout: {layout.vocab_size} ids ({text.vocab_size} text, {layout.codebook_size} codes)")


def pretokenize_data(work: Path, seed: int) -> None:
    for name, (_, target_size) in GROUPS.items():
        pretokenize_group(work, name, target_size, seed)


def pretokenize_group(work: Path, name: str, target_size: int, seed: int) -> None:
    from lumina_mgpt.cli import main

    out = work / f"tokens-{name}"
    if (out / "manifest.json").is_file():
        return
    log(f"pretokenizing the {name} records at target size {target_size}")
    code = main([
        "pretokenize", str(work / f"data-{name}" / "records.jsonl"), "--out", str(out), "--model",
        str(work / "assets"), "--target-size", str(target_size), "--loss-mode", "response",
        "--center-crop", "--seed", str(seed), "--workers", str(os.cpu_count() or 1),
    ])  # fmt: skip
    if code:
        raise SystemExit(code)


def draw_verify_data(
    work: Path, recipe: Path, model_folder: Path, seed: int, scale: float, device: str | None
) -> None:
    """The records of a judging stage (`recipe`, a key of DRAWN_GROUPS): drawings by `model_folder`, asked
    about and answered by the analyzer (not made again once that stage has finished)."""
    from lumina_mgpt.shapes.drawn_verify import write_drawn_verify_dataset
    from lumina_mgpt.shapes.task_dataset import RECORDS_FILE
    from lumina_mgpt.training.recipe import Recipe

    if (Recipe.from_file(recipe).output_dir / "final" / "config.json").is_file():
        return
    group, seed_offset = DRAWN_GROUPS[recipe]
    data = work / f"data-{group}"
    if not (data / RECORDS_FILE).is_file():
        count = max(1, round(DRAWN_VERIFY_COUNT * scale))
        log(f"drawing {count} pictures with {model_folder} for the self-verifier's question")
        write_drawn_verify_dataset(data, model_folder, count, seed=seed + seed_offset, device=device)
        log(f"answers: {(data / 'answers.json').read_text().strip()}")
    pretokenize_group(work, group, 64, seed)


def read_requests_data(work: Path, seed: int, scale: float) -> None:
    """The requests stage's records, read with the known words of the assets, pretokenized."""
    from lumina_mgpt.shapes.task_dataset import RECORDS_FILE, write_task_dataset
    from lumina_mgpt.text.known_words import KnownWords

    data = work / f"data-{REQUESTS_GROUP}"
    if not (data / RECORDS_FILE).is_file():
        counts = {task: max(1, round(count * scale)) for task, count in REQUEST_COUNTS.items()}
        log(f"writing {sum(counts.values())} requests as the model reads them into {data}")
        known_words = KnownWords.from_folder(work / "assets")
        if known_words is None:
            raise SystemExit(f"{work / 'assets'} lists no known words: run the build from its first step")
        write_task_dataset(data, counts, seed=seed + len(GROUPS), known_words=known_words)
    pretokenize_group(work, REQUESTS_GROUP, 64, seed)


def train_model(recipe: Path, device: str | None, max_steps: int | None) -> Path:
    """Run (or resume) one recipe; returns its final model folder."""
    from lumina_mgpt.cli import main
    from lumina_mgpt.training.recipe import Recipe

    args = ["train", str(recipe), "--resume"]
    if device:
        args += ["--device", device]
    if max_steps:
        args += ["--max-steps", str(max_steps)]
    log(f"training: lumina {' '.join(args)}")
    if main(args):
        raise SystemExit("training failed")
    return Recipe.from_file(recipe).output_dir / "final"


def export(model_folder: Path, destination: Path) -> None:
    """Copy the trained project folder into the package, with the transformer in bf16 (half the bytes)."""
    import torch

    from lumina_mgpt.generation.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(model_folder, device="cpu", pack_weights=False)
    pipe.model.to(torch.bfloat16)
    staging = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    shutil.rmtree(destination, ignore_errors=True)
    os.replace(staging, destination)
    size = sum(f.stat().st_size for f in destination.rglob("*") if f.is_file())
    log(f"exported to {destination} ({size / 1e6:.1f} MB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-scale", type=float, default=1.0,
        help="multiply every task's record count (default: 1.0, 490,000 records; 0.01 for a smoke build)",
    )
    parser.add_argument("--max-steps", type=int, help="stop training after this many steps (resume later)")
    parser.add_argument("--device", help="training device (default: CUDA when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-export", action="store_true", help="train only; do not write into the package")
    args = parser.parse_args(argv)
    from lumina_mgpt.shapes.build_report import record_build_time

    def timed(name, step, *step_args):
        started = time.perf_counter()
        result = step(*step_args)
        record_build_time(WORK, name, time.perf_counter() - started)  # build_report.py prints the totals
        return result

    start = time.perf_counter()
    timed("render data", render_data, WORK, args.data_scale, args.seed)
    timed("text tokenizer", train_text_tokenizer, WORK)
    timed("image tokenizer", train_image_tokenizer, WORK, args.seed)
    timed("metadata", write_project_metadata, WORK)
    timed("known words", write_known_words, WORK)
    timed("pretokenize", pretokenize_data, WORK, args.seed)
    final = None
    for recipe in RECIPES:
        if final is not None and recipe in DRAWN_GROUPS:  # a judging stage reads the stage before's drawings
            timed(f"{DRAWN_GROUPS[recipe][0]} data", draw_verify_data, WORK, recipe, final, args.seed,
                  args.data_scale, args.device)  # fmt: skip
        if recipe == REQUESTS_RECIPE:
            timed("requests data", read_requests_data, WORK, args.seed, args.data_scale)
        final = timed(f"train {recipe.stem}", train_model, recipe, args.device, args.max_steps)
        if not (final / "config.json").is_file():
            break  # stopped by --max-steps: the next recipe starts from this one's final model
    if not args.no_export and (final / "config.json").is_file():
        from lumina_mgpt.model_folder import EMBEDDED_MODEL

        export(final, EMBEDDED_MODEL)
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
