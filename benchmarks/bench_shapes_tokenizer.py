"""How well an image tokenizer keeps the multi-task shapes world, measured through its round trip.

    python benchmarks/bench_shapes_tokenizer.py                          # the embedded model's tokenizer
    python benchmarks/bench_shapes_tokenizer.py PATH [--scenes 300] [--items 50] [--json out.json]

Everything is seeded and independent of thread count. For the tokenizer folder:
- colors: on `--scenes` random 64x64 scenes of every GenEval category, each object is looked up among the
  analyzer's detections on encode -> decode (box IoU >= 0.5); its color is kept when the detection has it.
  Prints the keep rate per palette color and where the others went (another color, no color, lost);
- tasks: for every image task of the task world, `--items` evaluation items; the exact right output (one
  render of the spec for text-to-image) goes through the round trip and is scored by `score_item`: the
  score a perfect transformer could reach with this tokenizer. Dual-panel outputs are encoded as the whole
  panel (the condition above) and only the lower panel's code rows are decoded, as the API does;
- PSNR of all those round trips (dB, [0, 1] scale, mean per image);
- code usage: distinct codes among all images encoded, over the codebook size;
- code stability: the share of codes that decode -> encode returns unchanged (a language model trained
  on encoded images then reads back its own outputs as it wrote them).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lumina_mgpt.model_folder import EMBEDDED_MODEL
from lumina_mgpt.shapes.analyze import detect
from lumina_mgpt.shapes.dual_panel import stack_panels
from lumina_mgpt.shapes.spec import CATEGORIES, COLORS
from lumina_mgpt.shapes.task_scoring import box_iou, expected_output, score_item
from lumina_mgpt.shapes.tasks import TASK_NAMES, TASKS, EvalItem, eval_items
from lumina_mgpt.shapes.world import render, sample_scene, scene_from_spec
from lumina_mgpt.vision import ImageTokenizer, images_to_tensor
from lumina_mgpt.vision.metrics import psnr

IMAGE_TASKS = tuple(task for task in TASK_NAMES if task not in ("caption", "vqa", "rewrite"))
MATCH_IOU = 0.5
BATCH = 64


class RoundTrip:
    """encode -> decode with one tokenizer, remembering the codes used, each image's PSNR and how many
    codes survive a second encoding."""

    def __init__(self, tokenizer: ImageTokenizer):
        self.tokenizer = tokenizer
        self.codes_used: set[int] = set()
        self.psnrs: list[float] = []
        self.codes_seen = 0
        self.codes_stable = 0

    def __call__(self, images: list[Image.Image], lower_rows_from: int = 0) -> list[Image.Image]:
        """Round trips of same-size images; with `lower_rows_from` > 0 only the code rows from there on
        are decoded (the lower panel of a dual panel) and compared with those pixels."""
        outputs = []
        for start in range(0, len(images), BATCH):
            pixels = images_to_tensor(images[start : start + BATCH])
            codes = self.tokenizer.encode(pixels)[:, lower_rows_from:]
            self.codes_used.update(torch.unique(codes).tolist())
            decoded = self.tokenizer.decode(codes)
            reference = pixels[:, :, lower_rows_from * self.tokenizer.downsample :]
            self.psnrs.extend(psnr(reference, decoded).tolist())
            self.codes_seen += codes.numel()
            self.codes_stable += int((self.tokenizer.encode(decoded) == codes).sum())
            outputs.extend(self.tokenizer.decode_to_pil(codes))
        return outputs


def color_keep(round_trip: RoundTrip, scenes: int, seed: int) -> dict:
    """Per palette color: objects kept in their color, and a confusion count of what the others became."""
    rng = np.random.default_rng(seed)
    drawn = [sample_scene(rng, 64, 64, CATEGORIES[i % len(CATEGORIES)]) for i in range(scenes)]
    decoded = round_trip([render(scene) for scene in drawn])
    outcomes: dict[str, Counter] = {color: Counter() for color in COLORS}
    for scene, image in zip(drawn, decoded):
        detections = detect(image)
        for obj in scene.objects:
            ious = [box_iou(obj.box, d.bbox) for d in detections]
            best = int(np.argmax(ious)) if ious else -1
            if best < 0 or ious[best] < MATCH_IOU:
                outcomes[obj.color]["lost"] += 1
            else:
                outcomes[obj.color][detections[best].color or "no color"] += 1
    return {
        color: {
            "objects": sum(counts.values()),
            "kept": counts[color] / max(1, sum(counts.values())),
            "became": {k: v for k, v in counts.most_common() if k != color},
        }
        for color, counts in outcomes.items()
    }


def right_output(item: EvalItem) -> Image.Image:
    """The exact right output; text-to-image has many right images, so one render of its spec."""
    if item.task == "text_to_image":
        return render(scene_from_spec(np.random.default_rng(item.index), item.spec, item.width, item.height))
    return expected_output(item)


def task_ceilings(round_trip: RoundTrip, items: int, seed: int) -> dict[str, float]:
    """Mean score of each image task's exact outputs after the round trip."""
    ceilings = {}
    for task in IMAGE_TASKS:
        task_items = eval_items(task, items, seed=seed)
        outputs = [right_output(item) for item in task_items]
        if TASKS[task].dual_panel:
            panels = [stack_panels(item.image, output) for item, output in zip(task_items, outputs)]
            decoded = round_trip(panels, lower_rows_from=task_items[0].height // round_trip.tokenizer.downsample)
        else:
            by_size: dict[tuple[int, int], list[int]] = {}
            for index, output in enumerate(outputs):
                by_size.setdefault(output.size, []).append(index)
            decoded = [None] * len(outputs)
            for indices in by_size.values():
                for index, image in zip(indices, round_trip([outputs[i] for i in indices])):
                    decoded[index] = image
        ceilings[task] = float(np.mean([score_item(item, image) for item, image in zip(task_items, decoded)]))
    return ceilings


def measure(folder: Path, scenes: int, items: int, seed: int) -> dict:
    torch.manual_seed(seed)
    tokenizer = ImageTokenizer.from_pretrained(folder)
    round_trip = RoundTrip(tokenizer)
    with torch.inference_mode():
        colors = color_keep(round_trip, scenes, seed)
        ceilings = task_ceilings(round_trip, items, seed)
    return {
        "tokenizer": str(folder),
        "colors": colors,
        "min_color_kept": min(c["kept"] for c in colors.values()),
        "tasks": ceilings,
        "min_task": min(ceilings.values()),
        "psnr": float(np.mean(round_trip.psnrs)),
        "codes_used": len(round_trip.codes_used),
        "codebook_size": tokenizer.codebook_size,
        "code_stability": round_trip.codes_stable / round_trip.codes_seen,
    }


def print_report(result: dict) -> None:
    print(f"== {result['tokenizer']}")
    print("| color | objects | kept | became |")
    print("| --- | --- | --- | --- |")
    for color, row in result["colors"].items():
        became = ", ".join(f"{name} {count}" for name, count in row["became"].items()) or "-"
        print(f"| {color} | {row['objects']} | {row['kept']:.3f} | {became} |")
    print("| task | exact-output ceiling |")
    print("| --- | --- |")
    for task, value in result["tasks"].items():
        print(f"| {task} | {value:.3f} |")
    usage = result["codes_used"] / result["codebook_size"]
    print(
        f"PSNR {result['psnr']:.2f} dB; codes used {result['codes_used']} / {result['codebook_size']} ({usage:.1%}); "
        f"codes stable through decode -> encode {result['code_stability']:.3f}"
    )
    print(f"lowest color kept {result['min_color_kept']:.3f}; lowest task ceiling {result['min_task']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "folders",
        nargs="*",
        type=Path,
        default=[EMBEDDED_MODEL / "image_tokenizer"],
        help="image tokenizer folders (default: the embedded model's)",
    )
    parser.add_argument("--scenes", type=int, default=300, help="random scenes for the color table (default: 300)")
    parser.add_argument("--items", type=int, default=50, help="evaluation items per task (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes and eval items (default: 0)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here (default: none)")
    args = parser.parse_args()
    results = [measure(folder, args.scenes, args.items, args.seed) for folder in args.folders]
    for result in results:
        print_report(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
