#!/bin/sh
# Every held-out figure of issues 16 and 18 for one model, each evaluation written once into OUT (rerun
# after an interruption: finished reports are kept), then the tables of benchmarks/task_table.py.
#
#     sh benchmarks/task_figures.sh [MODEL] [OUT]     # defaults: the embedded model, runs/figures
#
# Two sampling seeds (0 and 1000) for every figure, the model's default settings otherwise.
set -eu
MODEL=${1:-embedded}
OUT=${2:-runs/figures}
LUMINA=${LUMINA:-lumina}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"

run() {  # run REPORT ARGS...: one evaluation unless its report exists
    report=$1
    shift
    [ -f "$report" ] && return 0
    echo "== $report" >&2
    "$LUMINA" eval "$@" --model "$MODEL" --out "$report" --overwrite
}

for seed in 0 1000; do
    run "$OUT/shapes-$seed.json" shapes --seed "$seed"
    run "$OUT/tasks-$seed.json" tasks --seed "$seed"
done
"$PYTHON" benchmarks/task_table.py --shapes "$OUT"/shapes-0.json "$OUT"/shapes-1000.json \
    --tasks "$OUT"/tasks-0.json "$OUT"/tasks-1000.json | tee "$OUT/table-issue16.md"

for seed in 0 1000; do
    run "$OUT/shapes-best8-$seed.json" shapes --seed "$seed" --best-of 8 --verifier self
    run "$OUT/styles-think-best8-$seed.json" tasks --task text_to_image --seed "$seed" --think self \
        --best-of 8 --verifier self
done
"$PYTHON" benchmarks/task_table.py --shapes-best-of "$OUT"/shapes-best8-0.json "$OUT"/shapes-best8-1000.json \
    --styles-think-best-of "$OUT"/styles-think-best8-0.json "$OUT"/styles-think-best8-1000.json \
    | tee "$OUT/table-issue18.md"

# The self-verifier's ranking quality (ROC AUC against the analyzer) and the cost of best-of-N.
bench() {  # bench REPORT ARGS...: one bench_best_of.py run unless its report exists
    report=$1
    shift
    [ -f "$report" ] && return 0
    echo "== $report" >&2
    "$PYTHON" benchmarks/bench_best_of.py --model "$MODEL" "$@" > "$report.tmp"
    mv "$report.tmp" "$report"
}

for seed in 0 1000; do
    bench "$OUT/roc-auc-$seed.txt" --verifier self --roc-auc 8 --prompts 553 --seed "$seed"
done
bench "$OUT/best-of-cost.txt" --verifier self
cat "$OUT"/roc-auc-0.txt "$OUT"/roc-auc-1000.txt "$OUT/best-of-cost.txt"

# The same choices with the self-caption verifier (shapes-world models: each candidate's caption checked
# against the model's rewrite of the prompt, VQAScore breaking ties).
for seed in 0 1000; do
    run "$OUT/shapes-best8-caption-$seed.json" shapes --seed "$seed" --best-of 8 --verifier self-caption
    run "$OUT/styles-think-best8-caption-$seed.json" tasks --task text_to_image --seed "$seed" --think self \
        --best-of 8 --verifier self-caption
done
"$PYTHON" benchmarks/task_table.py --verifier self-caption \
    --shapes-best-of "$OUT"/shapes-best8-caption-0.json "$OUT"/shapes-best8-caption-1000.json \
    --styles-think-best-of "$OUT"/styles-think-best8-caption-0.json "$OUT"/styles-think-best8-caption-1000.json \
    | tee "$OUT/table-issue18-self-caption.md"
for seed in 0 1000; do
    bench "$OUT/roc-auc-self-caption-$seed.txt" --verifier self-caption --roc-auc 8 --prompts 553 --seed "$seed"
done
bench "$OUT/best-of-cost-self-caption.txt" --verifier self-caption
cat "$OUT"/roc-auc-self-caption-0.txt "$OUT"/roc-auc-self-caption-1000.txt "$OUT/best-of-cost-self-caption.txt"
