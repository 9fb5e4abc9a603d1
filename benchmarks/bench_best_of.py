"""The cost of best-of-N: seconds per prompt for N = 1, 4, 8 candidates decoded as one batch
(`Pipeline.generate(best_of=N)`) vs N sequential one-image runs, with the same seeds and the same verifier.

    python benchmarks/bench_best_of.py                              # embedded model, a cheap stand-in verifier
    python benchmarks/bench_best_of.py --model PATH --verifier self # a model trained for vqa: its own judgement
    python benchmarks/bench_best_of.py --device cuda --prompts 8
    python benchmarks/bench_best_of.py --model PATH --verifier self --roc-auc 8 --prompts 553  # verifier quality

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
from tqdm.auto import tqdm

from lumina_mgpt.generation.best_of import candidate_seeds, choose
from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.generation.verifiers import load_verifiers
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


def roc_auc(scores, labels) -> float:
    """The probability that a positive outscores a negative (ties count half): Mann-Whitney U / (P * N)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ascending = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1 for the lowest; ties share their mean
    positives = int(labels.sum())
    negatives = len(labels) - positives
    return float((ascending[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_auc_interval(scores, labels, prompt_of, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of the ROC AUC that resamples whole prompts (the drawings of one prompt are
    not independent of each other); resamples without both kinds of label are skipped."""
    scores, labels, prompt_of = np.asarray(scores), np.asarray(labels, dtype=bool), np.asarray(prompt_of)
    members = [np.flatnonzero(prompt_of == prompt) for prompt in np.unique(prompt_of)]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        chosen = np.concatenate([members[k] for k in rng.integers(len(members), size=len(members))])
        if 0 < labels[chosen].sum() < len(chosen):
            values.append(roc_auc(scores[chosen], labels[chosen]))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def measure_verifier(pipe, prompts, samples: int, verifier, first_seed: int = 0) -> None:
    """Score `samples` images of each ShapesEval prompt with the verifier (image j of prompt k drawn with seed
    first_seed + k * samples + j), label them with the analyzer, print the ROC AUC, its bootstrap interval and
    the AUC of each category."""
    scores, labels, prompt_of = [], [], []
    for index, prompt in enumerate(tqdm(prompts, desc="drawing and judging", unit="prompt")):
        images = pipe.generate(prompt.caption, width=prompt.width, height=prompt.height, num_images=samples,
                               seed=first_seed + index * samples, verifier=verifier, progress=False)  # fmt: skip
        for image in images:
            (value,) = json.loads(image.info["parameters"])["best_of"]["candidates"][0]["scores"].values()
            scores.append(value)
            labels.append(bool(score(image, prompt.spec)))
            prompt_of.append(index)
    positives = sum(labels)
    if positives in (0, len(labels)):
        print(f"{len(labels)} images, all {'correct' if positives else 'wrong'}: the ROC AUC is undefined")
        return
    low, high = roc_auc_interval(scores, labels, prompt_of)
    print(f"{len(labels)} images ({positives} correct by the analyzer): verifier ROC AUC "
          f"{roc_auc(scores, labels):.3f} (95% interval over prompts {low:.3f}-{high:.3f})")  # fmt: skip
    for category in dict.fromkeys(prompt.category for prompt in prompts):
        chosen = [k for k, index in enumerate(prompt_of) if prompts[index].category == category]
        wrong = sum(not labels[k] for k in chosen)
        auc = roc_auc([scores[k] for k in chosen], [labels[k] for k in chosen]) if 0 < wrong < len(chosen) else None
        print(f"  {category}: {len(chosen)} images, {wrong} wrong, ROC AUC {'-' if auc is None else f'{auc:.3f}'}")


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
    parser.add_argument(
        "--seed", type=int, default=0, help="with --roc-auc: the first image's seed; image i uses seed + i (default: 0)"
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
        measure_verifier(pipe, evaluated, args.roc_auc, verifier, args.seed)
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
