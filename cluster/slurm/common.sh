# shellcheck shell=bash
# Sourced by the batch scripts of cluster/slurm/ (sbatch copies a script away from this folder, so they find
# this file through CKPT_SLURM_DIR, which submit.sh exports). Variables read here:
#   CKPT_IMAGE   container image (pyxis/enroot: `srun --container-image`), e.g. registry/ckpt-build:TAG or a
#                .sqsh file; empty: run the tools installed on the nodes
#   CKPT_MOUNTS  pyxis --container-mounts, e.g. /lustre:/lustre (the shared directories of the job)
#   CKPT_VENV    with no image: a virtual environment with the tools, activated before they run (optional)
set -euo pipefail

ckpt_need() {  # ckpt_need VAR...: stop with one line when a variable the script needs is empty
  local v
  for v in "$@"; do
    if [ -z "${!v:-}" ]; then
      echo "error: $v is not set (see the header of cluster/slurm/$(basename "${CKPT_SCRIPT:-$0}"))" >&2
      exit 2
    fi
  done
}

ckpt_srun_args() {  # the srun flags that run a step in the image; none without CKPT_IMAGE
  CKPT_SRUN=()
  if [ -n "${CKPT_IMAGE:-}" ]; then
    if ! srun --help 2>/dev/null | grep -q -- --container-image; then
      echo "error: CKPT_IMAGE is set but this Slurm has no pyxis plugin (srun --container-image); unset it to use installed tools" >&2
      exit 2
    fi
    CKPT_SRUN=(--container-image="$CKPT_IMAGE")
    if [ -n "${CKPT_MOUNTS:-}" ]; then CKPT_SRUN+=(--container-mounts="$CKPT_MOUNTS"); fi
  elif [ -n "${CKPT_VENV:-}" ]; then
    # shellcheck disable=SC1091
    source "$CKPT_VENV/bin/activate"
  fi
}

ckpt_run() {  # ckpt_run TOOL ARGS...: one process, in the image when there is one
  ckpt_srun_args
  if [ ${#CKPT_SRUN[@]} -gt 0 ]; then
    srun --ntasks=1 "${CKPT_SRUN[@]}" "$@"
  else
    "$@"
  fi
}
