#!/usr/bin/env bash
# Run the jobs of a kustomization in order, each after the one before succeeded:
#   cluster/k8s/run.sh [KUSTOMIZATION_DIR]     (default: cluster/k8s/base; e.g. cluster/k8s/overlays/example)
# convert -> build (Indexed Job, one pod per rank) -> finalize -> eval. A failed rank build stops the chain
# before finalize, naming the failed ranks (the build Job's status.failedIndexes).
# A Job of the same name left by an earlier run is deleted before its stage is applied (a Job's pod template
# cannot be changed in place).
# Variables:
#   KUBECTL          the kubectl command (default: kubectl), with its context and namespace flags if needed
#   CKPT_STAGES      the stages to run, in order (default: "convert build finalize eval")
#   CKPT_POLL_S      seconds between two looks at a running Job (default: 10)
# No cluster has run this script (docs/cluster.md); its manifests are validated offline by the tests.
set -euo pipefail
dir=${1:-$(dirname "$0")/base}
read -r -a kubectl <<<"${KUBECTL:-kubectl}"
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
"${kubectl[@]}" kustomize "$dir" >"$rendered"
"${kubectl[@]}" apply -f "$rendered" -l 'ckpt.stage notin (convert,build,finalize,eval)'  # volume, params, service
for stage in ${CKPT_STAGES:-convert build finalize eval}; do
  job=ckpt-$stage
  echo "run.sh: $job"
  "${kubectl[@]}" delete job "$job" --ignore-not-found >/dev/null
  "${kubectl[@]}" apply -f "$rendered" -l "ckpt.stage=$stage"
  while :; do  # until the Job is Complete or Failed (the conditions that are True)
    conditions=" $("${kubectl[@]}" get "job/$job" -o jsonpath='{.status.conditions[?(@.status=="True")].type}') "
    case "$conditions" in
      *" Complete "*) break ;;
      *" Failed "*)
        failed=$("${kubectl[@]}" get "job/$job" -o jsonpath='{.status.failedIndexes}')
        echo "run.sh: error: $job failed${failed:+ (ranks $failed)}; logs: ${kubectl[*]} logs -l batch.kubernetes.io/job-name=$job" >&2
        exit 1 ;;
    esac
    sleep "${CKPT_POLL_S:-10}"
  done
done
