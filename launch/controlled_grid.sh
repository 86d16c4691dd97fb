#!/usr/bin/env bash
# The controlled experiment's grid (docs/experiments.md): the marked-selection task, standard
# finetuning, standard distillation and distilling step-by-step, 12.5/25/50/100% of 16,000
# problems, seeds 0, 1, 2; once with a teacher that is always right and once with one that
# errs on a seeded 20% of its examples. Resumable: rerun the same command after a stop.
#
#   bash launch/controlled_grid.sh                  # every form in $OPS (default: sum_last_digit)
#   OPS="abs_diff product_last_digit" bash launch/controlled_grid.sh
#   OUT=runs/controlled SEEDS=0,1,2 ERROR_RATE=0.2 METHODS=... TEACHERS="exact noisy"
#   TRAIN=16000 FRACTIONS=12.5,25,50,100 SWEEP_ARGS="--gin.TRAIN_STEPS=3000"
#
# Seed 0 of every cell runs first (each teacher, each form), then the other seeds, so a
# stopped grid already has one full picture. On 2 CPU cores a cell takes 7-10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
SBS=${SBS:-.venv/bin/sbs}
OUT=${OUT:-runs/controlled}
OPS=${OPS:-sum_last_digit}
SEEDS=${SEEDS:-0,1,2}
ERROR_RATE=${ERROR_RATE:-0.2}
TEACHERS=${TEACHERS:-exact noisy}
METHODS=${METHODS:-standard_finetuning,standard_distillation,distill_llm}
TRAIN=${TRAIN:-16000}
FRACTIONS=${FRACTIONS:-12.5,25,50,100}
read -r -a SWEEP_EXTRA <<< "${SWEEP_ARGS:-}"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
for teacher in $TEACHERS; do
  case "$teacher" in
    exact|noisy) ;;
    *) echo "controlled_grid.sh: TEACHERS holds '$teacher': use exact and/or noisy" >&2; exit 2;;
  esac
done

prepare() {  # op teacher -> the prepared dir
  local rate=0
  [ "$2" = noisy ] && rate=$ERROR_RATE
  local dir="$OUT/marked_$1-$2"
  "$SBS" synthetic prepare --form marked --op "$1" --name "marked_$1" --train "$TRAIN" \
    --test 500 --error_rate "$rate" --out_dir "$dir" >&2
  echo "$dir"
}

sweep() {  # op teacher seeds
  local dir
  dir=$(prepare "$1" "$2")
  "$SBS" sweep --dataset "marked_$1" --methods "$METHODS" --fractions "$FRACTIONS" \
    --seeds "$3" --annotation_dir "$dir/annotations" --vocab "$dir/vocab/spm.model" \
    --gin_file=overlays/marked_cpu.gin --out_dir "$dir/sweep" ${SWEEP_EXTRA[@]+"${SWEEP_EXTRA[@]}"}
  "$SBS" report "$dir/sweep"
}

for seeds in "${SEEDS%%,*}" "$SEEDS"; do
  for op in $OPS; do
    for teacher in $TEACHERS; do
      sweep "$op" "$teacher" "$seeds"
    done
  done
done
