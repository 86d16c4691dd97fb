#!/usr/bin/env bash
# Issue 27 item 6: one rationale per example vs five filtered ones, on the controlled task.
#
# The marked task (sum's last digit, 16,000 problems, 500 test), a sampling teacher that
# misreads ERROR_RATE of its answers, each answer drawing its own misreading. Two
# annotations of the same problems by the same teacher:
#   one:  one sample per problem (the teacher's sample 0), every rationale kept;
#   five: five samples per problem, the label is their vote, and only the rationales
#         whose label equals the vote are kept (--keep vote).
# Then distilling step-by-step students on each (same problems, steps, vocabulary: one's),
# over SEEDS, through `sbs sweep`, and `sbs report` on each sweep. Resumable: a rerun
# reuses the annotations and the finished cells.
#
#   bash launch/samples_experiment.sh            # about 35 min on 2 idle cores
set -euo pipefail
cd "$(dirname "$0")/.."
SBS=${SBS:-.venv/bin/sbs}
OUT=${OUT:-runs/samples}
OP=${OP:-sum_last_digit}
SEEDS=${SEEDS:-0,1,2}
ERROR_RATE=${ERROR_RATE:-0.3}
TRAIN=${TRAIN:-16000}
KEEP=${KEEP:-vote}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
NAME="marked_$OP"

"$SBS" synthetic prepare --form marked --op "$OP" --name "$NAME" --train "$TRAIN" --test 500 \
  --error_rate "$ERROR_RATE" --sampled --num_samples 1 --out_dir "$OUT/one"
"$SBS" synthetic prepare --form marked --op "$OP" --name "$NAME" --train "$TRAIN" --test 500 \
  --error_rate "$ERROR_RATE" --num_samples 5 --keep "$KEEP" --out_dir "$OUT/five"
for arm in one five; do
  # five's paired rows: one per kept rationale (about 4.6 per problem), so its length
  # check (DataConfig.fit_lengths) reads them all, not the overlay's first 20,000.
  more=()
  [ "$arm" = five ] && more=(--gin.DataConfig.length_check_examples=100000)
  "$SBS" sweep --dataset "$NAME" --methods distill_llm --fractions 100 --seeds "$SEEDS" \
    --annotation_dir "$OUT/$arm/annotations" --vocab "$OUT/one/vocab/spm.model" \
    --gin_file=overlays/marked_cpu.gin --out_dir "$OUT/$arm/sweep" "${more[@]}"
  "$SBS" report "$OUT/$arm/sweep"
done
