#!/bin/sh
# The whole pipeline through compose: convert (hf, nemo, deepspeed or jax), build, eval, each in its own container.
#   containers/pipeline.sh [hf|nemo|deepspeed|jax] [extra `docker compose` options, e.g. -f compose.yaml -f compose.cpu.yaml]
# Stops at the first step that fails and exits with that step's status. Settings come from the environment
# (HF_MODEL_DIR / NEMO_CKPT_PATH / DEEPSPEED_CHECKPOINT_DIR / JAX_CHECKPOINT_DIR, MODEL_NAME, DTYPE, TP_SIZE, ...; see docs/containers.md).
set -eu

source=${1:-nemo}
[ "$#" -eq 0 ] || shift
case "$source" in
    hf | nemo | deepspeed | jax) ;;
    *)
        echo "pipeline.sh: unknown source '$source' (expected hf, nemo, deepspeed or jax)" >&2
        exit 2
        ;;
esac

# EVAL_COMMAND: what the eval step runs instead of compose's eval command; `gates` runs the CI gates named by
# the environment (`ckpt-eval --help`), whose variables below are handed to the container when set.
GATE_VARIABLES="MODEL_NAME EVAL_TASKS EVAL_BACKEND EVAL_MODEL_DIR TOKENIZER_DIR EVAL_REPORT_DIR ROUGE1_THRESHOLD
MMLU_THRESHOLD PERPLEXITY_THRESHOLD EVAL_BASELINE_DIR MAX_REGRESSION MAX_ITE OUTPUT_LEN MAX_INPUT_LEN EVAL_ARGS
SUMMARIZE_ARGS MMLU_ARGS PERPLEXITY_ARGS"
gate_env=""
for name in $GATE_VARIABLES; do
    if printenv "$name" > /dev/null; then gate_env="$gate_env -e $name"; fi
done

for service in "convert-$source" build eval; do
    options="" args=""
    if [ "$service" = eval ]; then options=$gate_env args=${EVAL_COMMAND:-}; fi
    echo "pipeline.sh: docker compose run $service $args" >&2
    # shellcheck disable=SC2086 # word lists
    docker compose "$@" run --rm -T $options "$service" $args < /dev/null
done
