"""The cost of best-of-N: seconds per prompt for N = 1, 4, 8 candidates decoded as one batch
(`Pipeline.generate(best_of=N)`) vs N sequential one-image runs, with the same seeds and the same verifier.

    python benchmarks/bench_best_of.py                              # embedded model, a cheap stand-in verifier
    python benchmarks/bench_best_of.py --model PATH --verifier self # a model trained for vqa: its own judgement
    python benchmarks/bench_best_of.py --device cuda --prompts 8
    python benchmarks/bench_best_of.py --model PATH --verifier self --roc-auc 8 --prompts 96   # verifier quality

The stand-in verifier (`colorfulness`: mean saturation, a few microseconds per image) isolates the cost of
drawing the candidates; `--verifier self` adds the model's one batched yes/no prefill per prompt. The modes
take turns over --repeats rounds and each keeps its fastest round, so every mode meets the same contention.

`--roc-auc K` measures the verifier instead: K samples of each prompt (at its ShapesEval canvas), each scored
by the verifier and labelled by the ShapesEval analyzer (which the verifier never sees); the ROC AUC says how
often a correct image outscores a wrong one (0.5: chance, 1: always).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time

import numpy as np
import torch

from lumina_mgpt.generation.best_of import candidate_seeds, choose
from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.generation.verifiers import load_verifiers, ranks
from lumina_mgpt.shapes.analyze import score
from lumina_mgpt.shapes.evaluate import limit_prompts
from lumina_mgpt.shapes.prompts import load_eval_prompts


def colorfulness(images, prompt):
    """A cheap stand-in verifier: each image's mean HSV saturation."""
    return [float(np.asarray(image.convert("HSV"))[..., 1].mean()) for image in images]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def batched(pipe, prompt, seed, best_of, verifier, args) -> None:
    pipe.generate(prompt, width=args.size, height=args.size, seed=seed, best_of=best_of, verifier=verifier,
                  batch_size=best_of, progress=False)  # fmt: skip


def sequential(pipe, prompt, seed, best_of, verifier, args) -> None:
    seeds = candidate_seeds(seed, best_of)
    images = [pipe.generate(prompt, width=args.size, height=args.size, seed=s, progress=False)[0] for s in seeds]
    choose(images, prompt, seeds, load_verifiers(verifier, pipe))


def seconds_per_prompt(pipe, prompts, best_of, verifier, args, run) -> float:
    device = next(pipe.model.parameters()).device
    synchronize(device)
    begin = time.perf_counter()
    for seed, prompt in enumerate(prompts):
        run(pipe, prompt, seed, best_of, verifier, args)
    synchronize(device)
    return (time.perf_counter() - begin) / len(prompts)


def roc_auc(scores: list[float], labels: list[bool]) -> float:
    """The probability that a positive outscores a negative (ties count half): Mann-Whitney U / (P * N)."""
    ascending = [len(scores) + 1 - rank for rank in ranks(scores)]  # 1 for the lowest; ties share their mean
    positives = sum(labels)
    negatives = len(labels) - positives
    rank_sum = sum(rank for rank, label in zip(ascending, labels) if label)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def measure_verifier(pipe, prompts, samples: int, verifier) -> None:
    """Score `samples` images of each ShapesEval prompt with the verifier, label them with the analyzer, print
    the ROC AUC."""
    scores, labels = [], []
    for seed, prompt in enumerate(prompts):
        images = pipe.generate(prompt.caption, width=prompt.width, height=prompt.height, num_images=samples,
                               seed=seed * samples, verifier=verifier, progress=False)  # fmt: skip
        for image in images:
            (value,) = json.loads(image.info["parameters"])["best_of"]["candidates"][0]["scores"].values()
            scores.append(value)
            labels.append(bool(score(image, prompt.spec)))
    positives = sum(labels)
    if positives in (0, len(labels)):
        print(f"{len(labels)} images, all {'correct' if positives else 'wrong'}: the ROC AUC is undefined")
        return
    print(f"{len(labels)} images ({positives} correct by the analyzer): verifier ROC AUC {roc_auc(scores, labels):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or hub id (default: the embedded model)")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--verifier", help="a verifier spec, e.g. self (default: the colorfulness stand-in)")
    parser.add_argument("--size", type=int, default=64, help="square image side in pixels (default: 64)")
    parser.add_argument(
        "--prompts", type=int, default=4, help="ShapesEval prompts, in its category shares (default: 4)"
    )
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 8], help="candidates per prompt (default: 1 4 8)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all modes; the fastest counts (default: 2)")
    parser.add_argument(
        "--roc-auc",
        type=int,
        metavar="K",
        help="measure the verifier instead: K scored samples per prompt (default: off)",
    )
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    device = next(pipe.model.parameters()).device
    verifier = args.verifier or colorfulness
    evaluated = limit_prompts(load_eval_prompts(), args.prompts)  # every category, in ShapesEval's shares
    prompts = [p.caption for p in evaluated]
    name = device_name(device)
    canvas = "each prompt's ShapesEval canvas" if args.roc_auc is not None else f"{args.size}x{args.size}"
    print(
        f"{datetime.date.today()}; {name}; torch {torch.__version__}; model {args.model or 'embedded'}; "
        f"{canvas}; verifier {args.verifier or 'colorfulness stand-in'}; {len(prompts)} prompts"
    )
    print("command: python " + " ".join(sys.argv))
    if args.roc_auc is not None:
        measure_verifier(pipe, evaluated, args.roc_auc, verifier)
        return
    for best_of in args.n:  # warm-up: every batch shape once
        batched(pipe, prompts[0], 0, best_of, verifier, args)
    sequential(pipe, prompts[0], 0, 1, verifier, args)
    results: dict[tuple[int, str], float] = {}
    for _ in range(args.repeats):
        for best_of in args.n:
            for mode, run in (("batched", batched), ("sequential", sequential)):
                seconds = seconds_per_prompt(pipe, prompts, best_of, verifier, args, run)
                results[best_of, mode] = min(seconds, results.get((best_of, mode), float("inf")))
    print(f"{'N':>3} {'batched s/prompt':>17} {'sequential s/prompt':>20} {'sequential/batched':>19}")
    for best_of in args.n:
        together, alone = results[best_of, "batched"], results[best_of, "sequential"]
        print(f"{best_of:>3} {together:17.3f} {alone:20.3f} {alone / together:19.2f}")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


if __name__ == "__main__":
    main()
