#!/usr/bin/env bash
# Submit the chain convert -> build (array, one task per rank) -> finalize -> eval, each step starting only
# when the one before succeeded (--dependency=afterok, --kill-on-invalid-dep=yes: a failed step cancels the
# rest). A failed rank build runs report_failed.sbatch instead of finalize, which names the rank(s).
# Prints one line: convert=ID build=ID finalize=ID eval=ID report=ID (convert absent with CKPT_SKIP_CONVERT=1).
# Variables: those of the batch scripts (convert.sbatch, build_rank.sbatch, finalize.sbatch, eval.sbatch), and
#   CKPT_TP, CKPT_PP          parallel sizes: the array has TP*PP tasks, eval TP*PP tasks (default 1 each)
#   CKPT_BUILD_JOB            (set here for report_failed.sbatch: the build array's job id)
#   CKPT_LOGS                 folder of the jobs' output files (default ./ckpt-logs), on storage the nodes see
#   CKPT_SKIP_CONVERT=1       start at the build (CKPT_CHECKPOINT exists already)
#   CKPT_SKIP_EVAL=1          stop after finalize
#   CKPT_SBATCH_ARGS          sbatch flags for every job (partition, account, time limit)
#   CKPT_BUILD_SBATCH_ARGS    sbatch flags for the rank builds, e.g. "--array=0-15%4 --mem=0" (%N: N at once)
#   CKPT_EVAL_SBATCH_ARGS     sbatch flags for eval, e.g. "--gpus-per-task=1 --nodes=2"
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
world=$(( ${CKPT_TP:-1} * ${CKPT_PP:-1} ))
logs=$(mkdir -p "${CKPT_LOGS:-ckpt-logs}" && cd "${CKPT_LOGS:-ckpt-logs}" && pwd)
export CKPT_SLURM_DIR=$here CKPT_LOGS=$logs
# shellcheck disable=SC2086  # the *_SBATCH_ARGS are lists of flags
submit() { sbatch --parsable --export=ALL --kill-on-invalid-dep=yes ${CKPT_SBATCH_ARGS:-} "$@" | cut -d';' -f1; }
after=() ids=()
if [ "${CKPT_SKIP_CONVERT:-0}" != 1 ]; then
  convert=$(submit -o "$logs/convert-%j.out" "$here/convert.sbatch")
  after=(--dependency="afterok:$convert") ids+=("convert=$convert")
fi
# shellcheck disable=SC2086
build=$(submit "${after[@]}" --array="0-$((world - 1))" ${CKPT_BUILD_SBATCH_ARGS:-} -o "$logs/build-%A_%a.out" \
  "$here/build_rank.sbatch")
finalize=$(submit --dependency="afterok:$build" -o "$logs/finalize-%j.out" "$here/finalize.sbatch")
ids+=("build=$build" "finalize=$finalize")
if [ "${CKPT_SKIP_EVAL:-0}" != 1 ]; then
  # shellcheck disable=SC2086
  evaluation=$(submit --dependency="afterok:$finalize" --ntasks="$world" ${CKPT_EVAL_SBATCH_ARGS:-} \
    -o "$logs/eval-%j.out" "$here/eval.sbatch")
  ids+=("eval=$evaluation")
fi
report=$(CKPT_BUILD_JOB=$build submit --dependency="afternotok:$build" -o "$logs/report-%j.out" \
  "$here/report_failed.sbatch")
ids+=("report=$report")
echo "${ids[*]}"
