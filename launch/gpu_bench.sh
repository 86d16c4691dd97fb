#!/usr/bin/env bash
# GPU throughput of the student vs the HF reference recipe, in one call of at most ~11 minutes
# (no new run starts after $BUDGET_S = 420 s; the last may run its limit).
#
#   bash launch/gpu_bench.sh            # install if needed, then run every benchmark
#   bash launch/gpu_bench.sh --dry_run  # print the commands only
#   ONLY="large_train base_infer" bash launch/gpu_bench.sh  # just these runs, in this order
#
# Runs (names for ONLY): base_train, base_infer, remat, large_train, large_infer, base_256, cqa.
#
# Runs `sbs bench` for T5 v1.1 base and large in bfloat16: ours vs --reference at batch
# 64 and larger (the best batch is the one with the most examples_per_s), label-prediction
# inference, and the packed CQA mixture when annotations and a vocabulary are present
# ($SBS_ANNOTATION_DIR / $SBS_VOCAB, default runs/demo/...; carry those paths to a lent
# machine). MFU uses the device's dense bf16 peak (H100 SXM / H200: 989 TFLOP/s; H100
# PCIe: 756), or $PEAK_TFLOPS. JSON lines go to $OUT (else ./bench_out)/gpu_bench.jsonl.
#
# Python: the first of $PYTHON, .venv_gpu, .venv, python3 whose jax sees a GPU and whose torch
# has CUDA, with this checkout on PYTHONPATH (so a ready image needs no install; the lent
# H200s hold jax, flax, optax, orbax, torch and transformers but no package index). Wheels in
# ./.whl (gin-config: `sbs_jax` imports it) are installed into /tmp/sbs_site first. Else it
# installs `-e '.[hf,test]' jax[cuda12]` into ./.venv_gpu; no index: it says so and stops.
# Needs no TensorFlow or SeqIO, except for the CQA mixture run.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/sbs_site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/sbs_site"
fi

DRY_RUN=0
ALL_RUNS="base_train base_infer remat large_train large_infer base_256 cqa"
ONLY=${ONLY:-$ALL_RUNS}
for name in $ONLY; do
  case " $ALL_RUNS " in
    *" $name "*) ;;
    *) echo "gpu_bench: unknown run '$name' in ONLY; the runs are: $ALL_RUNS" >&2; exit 2 ;;
  esac
done

[ "${1:-}" = "--dry_run" ] && DRY_RUN=1
OUT_DIR=${OUT:-./bench_out}
RESULTS="$OUT_DIR/gpu_bench.jsonl"
BUDGET_S=${BUDGET_S:-420}  # stop starting new runs after this many seconds
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
[ "$DRY_RUN" = 1 ] || { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm \
  --format=csv; "$PY" -c "import jax, torch, transformers, flax; print('python', __import__('sys').version.split()[0], 'jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"; }

bench() {  # TIMEOUT ARGS...: one `sbs bench` run, skipped once the time budget is spent
  local limit=$1; shift
  local elapsed=$(( $(date +%s) - START ))
  if [ "$DRY_RUN" = 0 ] && [ "$elapsed" -ge "$BUDGET_S" ]; then
    echo "== skipped (time budget ${BUDGET_S}s spent): bench $*"
    return
  fi
  run timeout "$limit" "$PY" -m sbs_jax.commands.bench --dtype bfloat16 ${PEAK:+--peak_tflops "$PEAK"} \
    --out "$RESULTS" "$@" || echo "== failed or timed out after ${limit}s: sbs bench $*"
}

remat() {  # SIZE: remat's memory saving, which XLA:CPU cannot show (compile only)
  if [ "$DRY_RUN" = 0 ] && [ $(( $(date +%s) - START )) -ge "$BUDGET_S" ]; then
    echo "== skipped (time budget ${BUDGET_S}s spent): remat memory $1"
    return
  fi
  run timeout 150 "$PY" launch/remat_memory.py --size "$1" --shape 16,512 \
    --out "$OUT_DIR/remat_memory.jsonl" || echo "== remat memory $1 failed or timed out"
}

# Most wanted first. Measured on a lent H200 (2026-12-04, jax 0.11.2): one base bf16 train
# step compiles in 39 s, a process starts in ~15 s; large at batch 64 did not finish its
# compile + reference in 150 s, hence the limits.
run_one() {  # NAME
  case "$1" in
    base_train) bench 240 --size base --batch 64,128 --steps 10 --reference ;;
    base_infer) bench 180 --size base --batch 64 --steps 5 --inference --reference ;;
    remat) remat base ;;
    large_train) bench 300 --size large --batch 64 --steps 5 --reference ;;
    large_infer) bench 180 --size large --batch 64 --steps 5 --inference --reference ;;
    base_256) bench 200 --size base --batch 256 --steps 10 --reference ;;
    cqa)
      local ann=${SBS_ANNOTATION_DIR:-runs/demo/annotations}
      local vocab=${SBS_VOCAB:-runs/demo/vocab/spm.model}
      if [ -d "$ann/cqa" ] && [ -f "$vocab" ]; then
        SBS_ANNOTATION_DIR=$ann SBS_VOCAB=$vocab bench 240 --size base --batch 64 --steps 5 \
          --mixture sbs_cqa_distill_llm_paired --task_feature_lengths 1024,352 --reference
      else
        echo "== skipped the CQA mixture run: no $ann/cqa or $vocab (and it needs TensorFlow + SeqIO)"
      fi ;;
  esac
}
for name in $ONLY; do run_one "$name"; done
echo "== done in $(( $(date +%s) - START ))s: $RESULTS"
