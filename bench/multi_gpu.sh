#!/usr/bin/env bash
# Issues 10 and 25 in one command, on a machine with 2 or 4 GPUs: tensor parallel vs one GPU, torch backend.
#   bash bench/multi_gpu.sh [WORK_DIR] [TOKENIZER_DIR]
# 1. a random LLaMA (PRESET: 7b = LLaMA-2-7B shape, default; 1b = TinyLlama shape with SmolLM2's vocabulary;
#    tiny) written at tp 1, tp 2 (tp 4 with 4 GPUs), pp 2, and FP8 at tp 1 and tp 2;
# 2. per checkpoint, greedy tokens + decode tokens/s at batch 1 and 8 with the decode step of COMPILE (fused:
#    the fused Triton step with its all-reduces in the CUDA graph, default; eager; reduce-overhead), fraction
#    of the bandwidth bound, all-reduce share of a step (bench/eval_tp.py); pp 2 runs eager; one table;
# 3. the small-model check: PRESET tiny at fp32, tp N greedy tokens against tp 1 with the same step;
# 4. with TOKENIZER_DIR (49152 tokens, e.g. SmolLM2's): ckpt-summarize --compile on the small fp32 model at
#    tp 1 and tp 2 (random weights: what is compared is that the summaries are the same, and latency).
# Env: PYTHON (default python3), PRESET, DTYPE (float16), COMPILE (fused), TPS (default: 1 2, and 4 with 4+
# GPUs), FP8 (1: also the FP8 runs where the GPU is sm89+). Uses mpirun when present, else torchrun.
# NVLink multicast (NVLS) stays off.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/ckpt-multi-gpu}
TOK=${2:-}
PY=${PYTHON:-python3}
PRESET=${PRESET:-7b}
COMPILE=${COMPILE:-fused}
GPUS=$(nvidia-smi -L | wc -l)
TPS=${TPS:-$( [ "$GPUS" -ge 4 ] && echo "1 2 4" || echo "1 2" )}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
launch() {  # launch N ARGS...: N processes of python ARGS
  local n=$1; shift
  if [ "$n" = 1 ]; then "$PY" "$@"
  elif command -v mpirun >/dev/null; then
    mpirun --allow-run-as-root --oversubscribe -x NCCL_NVLS_ENABLE -x PYTHONPATH -n "$n" "$PY" "$@"
  else "$PY" -m torch.distributed.run --nproc-per-node "$n" "$@"; fi
}
mkdir -p "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fp8=()
if [ "${FP8:-1}" = 1 ] && "$PY" -c 'import sys, torch; sys.exit(torch.cuda.get_device_capability() < (8, 9))'; then
  fp8=(--fp8)
fi
# shellcheck disable=SC2086
"$PY" bench/eval_tp.py prepare --out "$WORK" --preset "$PRESET" --dtype "${DTYPE:-float16}" --tp $TPS --pp2 "${fp8[@]}"
runs=()
for tp in $TPS; do
  launch "$tp" bench/eval_tp.py run --ckpt "$WORK/tp$tp" --compile "$COMPILE" --json "$WORK/tp$tp.json"
  runs+=("$WORK/tp$tp.json")
done
launch 2 bench/eval_tp.py run --ckpt "$WORK/pp2" --compile eager --json "$WORK/pp2.json"
runs+=("$WORK/pp2.json")
if [ ${#fp8[@]} = 1 ]; then
  for tp in 1 2; do
    launch "$tp" bench/eval_tp.py run --ckpt "$WORK/fp8-tp$tp" --compile "$COMPILE" --json "$WORK/fp8-tp$tp.json"
    runs+=("$WORK/fp8-tp$tp.json")
  done
fi
"$PY" bench/eval_tp.py compare "${runs[@]}"
echo "== small model at fp32: tp N greedy tokens against tp 1, decode step $COMPILE"
# shellcheck disable=SC2086
"$PY" bench/eval_tp.py prepare --out "$WORK/small" --preset tiny --dtype float32 --tp $TPS
small=()
for tp in $TPS; do
  launch "$tp" bench/eval_tp.py run --ckpt "$WORK/small/tp$tp" --compile "$COMPILE" --batch 1 --json "$WORK/small/tp$tp.json"
  small+=("$WORK/small/tp$tp.json")
done
"$PY" bench/eval_tp.py compare "${small[@]}"
if [ -n "$TOK" ]; then  # the small fp32 model (49152-token vocabulary): the same summaries at tp 1 and tp 2
  for tp in 1 2; do
    args=(--checkpoint_dir "$WORK/small/tp$tp" --tokenizer_dir "$TOK" --backend torch --test_trt_llm --compile
          --data_type fp32 --batch_size 8 --max_ite 3 --output_len 64 --device cuda --report "$WORK/summarize-tp$tp")
    launch "$tp" -m ckpt_eval.summarize "${args[@]}"
  done
  "$PY" - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
runs = {tp: json.load(open(f"{w}/summarize-tp{tp}/results.json")) for tp in (1, 2)}
for tp, r in runs.items():
    for name, s in r["systems"].items():
        print(f"summarize tp{tp} {name}: rouge1 {s['rouge1']:.2f} rouge2 {s['rouge2']:.2f} rougeL {s['rougeL']:.2f} "
              f"latency/batch {s['latency_per_batch_s']:.3f}s tokens/s {s['tokens_per_s']:.1f}")
same = runs[1]["predictions"] == runs[2]["predictions"]
print(f"summaries tp 2 vs tp 1: {'identical' if same else 'DIFFERENT'}")
PY
fi
