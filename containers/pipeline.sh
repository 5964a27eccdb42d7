#!/bin/sh
# The whole pipeline through compose: convert (hf or nemo), build, eval, each in its own container.
#   containers/pipeline.sh [hf|nemo] [extra `docker compose` options, e.g. -f compose.yaml -f compose.cpu.yaml]
# Stops at the first step that fails and exits with that step's status. Settings come from the environment
# (HF_MODEL_DIR / NEMO_CKPT_PATH, MODEL_NAME, DTYPE, TP_SIZE, ...; see docs/containers.md).
set -eu

source=${1:-nemo}
[ "$#" -eq 0 ] || shift
case "$source" in
    hf | nemo) ;;
    *)
        echo "pipeline.sh: unknown source '$source' (expected hf or nemo)" >&2
        exit 2
        ;;
esac

for service in "convert-$source" build eval; do
    echo "pipeline.sh: docker compose run $service" >&2
    docker compose "$@" run --rm -T "$service" < /dev/null
done
