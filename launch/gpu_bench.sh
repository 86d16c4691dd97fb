#!/usr/bin/env bash
# GPU throughput of the student vs the HF reference recipe, in one call of ~8 minutes.
#
#   bash launch/gpu_bench.sh            # install if needed, then run every benchmark
#   bash launch/gpu_bench.sh --dry_run  # print the commands only
#
# Runs `sbs bench` for T5 v1.1 base and large in bfloat16: ours vs --reference at batch
# 64 and larger (the best batch is the one with the most examples_per_s), label-prediction
# inference, and the packed CQA mixture when annotations and a vocabulary are present
# ($SBS_ANNOTATION_DIR / $SBS_VOCAB, default runs/demo/...; carry those paths to a lent
# machine). MFU uses the device's dense bf16 peak (H100 SXM / H200: 989 TFLOP/s; H100
# PCIe: 756), or $PEAK_TFLOPS. JSON lines go to $OUT (else ./bench_out)/gpu_bench.jsonl.
#
# Installs, when jax cannot see a GPU or torch has no CUDA: `pip install -e '.[hf,test]'
# jax[cuda12]` into ./.venv_gpu. A machine without a package index says so and stops.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[ "${1:-}" = "--dry_run" ] && DRY_RUN=1
OUT_DIR=${OUT:-./bench_out}
RESULTS="$OUT_DIR/gpu_bench.jsonl"
BUDGET_S=${BUDGET_S:-480}  # stop starting new runs after this many seconds
START=$(date +%s)
# Ours and the reference share the GPU in one process: JAX must not take 75% up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2

run() {  # prints the command; runs it unless --dry_run
  echo "+ $*"
  [ "$DRY_RUN" = 1 ] || "$@"
}

gpu_ready() {  # jax sees a GPU and torch has CUDA
  "$1" - <<'EOF' 2>/dev/null
import jax, torch, transformers, sbs_jax
assert jax.devices()[0].platform == "gpu" and torch.cuda.is_available()
EOF
}

PY=${PYTHON:-}
for candidate in "$PY" .venv_gpu/bin/python .venv/bin/python python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null && gpu_ready "$candidate"; then
    PY=$candidate
    break
  fi
done
if [ "$DRY_RUN" = 1 ] || ! gpu_ready "${PY:-python3}"; then
  PY=.venv_gpu/bin/python
  echo "== installing into .venv_gpu (jax[cuda12], torch, transformers)"
  [ -x "$PY" ] || run python3 -m venv .venv_gpu
  if ! run "$PY" -m pip install --quiet --timeout 20 --retries 1 -e '.[hf,test]' 'jax[cuda12]'; then
    echo "gpu_bench: could not install jax[cuda12] / torch / transformers: this machine has" \
         "no package index (no network?). Give it a ready environment (PYTHON=... with a" \
         "CUDA jax, torch and transformers) and rerun." >&2
    exit 3
  fi
  if [ "$DRY_RUN" = 0 ] && ! gpu_ready "$PY"; then
    echo "gpu_bench: installed, but jax sees no GPU or torch no CUDA" >&2
    "$PY" -c "import jax, torch; print(jax.devices(), torch.cuda.is_available())" >&2
    exit 4
  fi
fi

NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$NAME" in
  *H100*PCIe*) PEAK=756 ;;
  *H100*|*H200*) PEAK=989 ;;
  *) PEAK=${PEAK_TFLOPS:-} ;;
esac
PEAK=${PEAK_TFLOPS:-$PEAK}
echo "== device: ${NAME:-unknown}; bf16 peak: ${PEAK:-unknown} TFLOP/s; results: $RESULTS"
run mkdir -p "$OUT_DIR"

bench() {  # one `sbs bench` run, skipped once the time budget is spent
  local elapsed=$(( $(date +%s) - START ))
  if [ "$DRY_RUN" = 0 ] && [ "$elapsed" -ge "$BUDGET_S" ]; then
    echo "== skipped (time budget ${BUDGET_S}s spent): bench $*"
    return
  fi
  run timeout 240 "$PY" -m sbs_jax.bench --dtype bfloat16 ${PEAK:+--peak_tflops "$PEAK"} \
    --out "$RESULTS" "$@" || echo "== failed or timed out: sbs bench $*"
}

bench --size base --batch 64,128,256 --steps 10 --reference
bench --size large --batch 64,128 --steps 5 --reference
bench --size base --batch 64 --steps 5 --inference --reference
bench --size large --batch 64 --steps 5 --inference --reference
ANN=${SBS_ANNOTATION_DIR:-runs/demo/annotations}
VOCAB=${SBS_VOCAB:-runs/demo/vocab/spm.model}
if [ -d "$ANN/cqa" ] && [ -f "$VOCAB" ]; then
  SBS_ANNOTATION_DIR=$ANN SBS_VOCAB=$VOCAB bench --size base --batch 64 --steps 5 \
    --mixture sbs_cqa_distill_llm_paired --task_feature_lengths 1024,352 --reference
else
  echo "== skipped the CQA mixture run: no $ANN/cqa or $VOCAB"
fi
# Remat's memory saving, which XLA:CPU cannot show (tests/test_remat.py skips it there).
if [ "$DRY_RUN" = 0 ] && [ $(( $(date +%s) - START )) -lt "$BUDGET_S" ]; then
  run timeout 120 "$PY" -m pytest -q -s tests/test_remat.py -k peak_temporary_memory \
    > "$OUT_DIR/remat_gpu_test.txt" 2>&1 || echo "== remat GPU test failed: $OUT_DIR/remat_gpu_test.txt"
fi
echo "== done in $(( $(date +%s) - START ))s: $RESULTS"
