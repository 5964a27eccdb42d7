#!/usr/bin/env bash
# Issue 10 in one command, on a machine with 2 GPUs: tp 2 vs tp 1 with the torch backend over NCCL.
#   bash bench/multi_gpu.sh [WORK_DIR] [TOKENIZER_DIR]
# 1. random fp16 LLaMA ~1.1B (TinyLlama shape, SmolLM2 vocabulary) written as tp1 and tp2 checkpoints;
# 2. greedy tokens + decode tokens/s at batch 1 and 8 for tp1 (one process) and tp2 (two processes),
#    all-reduce share of a tp2 decode step; comparison table;
# 3. with TOKENIZER_DIR (a tokenizer of 49152 tokens, e.g. SmolLM2's): ckpt-summarize on the shipped set at
#    tp1 and tp2 (random weights: the scores are near zero; what is compared is equality and latency).
# Env: PYTHON (default python3), PRESET (1b|tiny), DTYPE (float16; float32 makes tp1/tp2 tokens comparable
# exactly: in fp16 the split sums of tp 2 flip near-ties of random weights). Uses mpirun when present, else torchrun. NVLink multicast stays off.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/ckpt-multi-gpu}
TOK=${2:-}
PY=${PYTHON:-python3}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if command -v mpirun >/dev/null; then
  launch2=(mpirun --allow-run-as-root --oversubscribe -x NCCL_NVLS_ENABLE -x PYTHONPATH -n 2 "$PY")
else
  launch2=("$PY" -m torch.distributed.run --nproc-per-node 2)
fi
mkdir -p "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY bench/eval_tp.py prepare --out "$WORK" --preset "${PRESET:-1b}" --dtype "${DTYPE:-float16}"
$PY bench/eval_tp.py run --ckpt "$WORK/tp1" --json "$WORK/tp1.json"
"${launch2[@]}" bench/eval_tp.py run --ckpt "$WORK/tp2" --json "$WORK/tp2.json"
$PY bench/eval_tp.py compare "$WORK/tp1.json" "$WORK/tp2.json"
if [ -n "$TOK" ]; then
  for tp in 1 2; do
    args=(--checkpoint_dir "$WORK/tp$tp" --tokenizer_dir "$TOK" --backend torch --test_trt_llm
          --batch_size 8 --max_ite 3 --output_len 64 --device cuda --report "$WORK/summarize-tp$tp")
    if [ "$tp" = 1 ]; then $PY -m ckpt_eval.summarize "${args[@]}"; else "${launch2[@]}" -m ckpt_eval.summarize "${args[@]}"; fi
  done
  $PY - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
for tp in (1, 2):
    r = json.load(open(f"{w}/summarize-tp{tp}/results.json"))
    for name, s in r["systems"].items():
        print(f"summarize tp{tp} {name}: rouge1 {s['rouge1']:.2f} rouge2 {s['rouge2']:.2f} rougeL {s['rougeL']:.2f} "
              f"latency/batch {s['latency_per_batch_s']:.3f}s tokens/s {s['tokens_per_s']:.1f}")
PY
fi
