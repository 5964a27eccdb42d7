#!/bin/sh
# Entrypoint of every image (installed as /opt/ckpt-code/bin/ckpt-entry): `ckpt-entry TOOL [ARGS...]` runs TOOL.
# Before that it checks that the directories TOOL will write (--output_dir, --report) can be written by the
# container's user, so that a host directory owned by someone else (CKPT_VOLUME) fails with one line saying
# whose it is and what to do, instead of a bare "Permission denied" from deep inside the tool.
set -eu

tool=${1:?usage: ckpt-entry TOOL [ARGS...]}
shift

refuse() {
    # $1 flag, $2 the path given, $3 the directory on its way that is not writable
    case "$3" in
        /data | /data/*) ;;
        *) echo "$tool: error: $1 $2: $3 is not writable; outputs belong under /data (the shared volume)" >&2 && exit 1 ;;
    esac
    user="$(id -u):$(id -g)"
    echo "$tool: error: $1 $2: $3 is owned by $(stat -c %u:%g "$3") (mode $(stat -c %a "$3")) and not" \
        "writable by the container's user $user; chown $user the host directory mounted at /data," \
        "run as its owner (docker compose run --user UID:GID ...) or build the images with" \
        "--build-arg CKPT_UID=UID --build-arg CKPT_GID=GID" >&2
    exit 1
}

check_writable() {
    # The output is made beside its final place and renamed into it: the nearest existing directory on the
    # way must be writable, and so must an existing output (replaced with --overwrite) and its parent.
    case "$2" in
        /*) dir=$2 ;;
        *) dir="$PWD/$2" ;;
    esac
    output=$dir
    while [ ! -e "$dir" ]; do
        dir=$(dirname "$dir")
    done
    [ -w "$dir" ] || refuse "$1" "$2" "$dir"
    if [ "$dir" = "$output" ]; then
        [ -w "$(dirname "$dir")" ] || refuse "$1" "$2" "$(dirname "$dir")"
    fi
}

# ckpt-eval without arguments (the eval image's default) writes its reports to EVAL_REPORT_DIR
if [ "$tool" = ckpt-eval ] && [ "$#" -eq 0 ]; then
    check_writable EVAL_REPORT_DIR "${EVAL_REPORT_DIR:-/data/reports/${MODEL_NAME:-model}}"
fi

previous=""
for arg in "$@"; do
    case "$previous" in
        --output_dir | --report) check_writable "$previous" "$arg" ;;
    esac
    case "$arg" in
        --output_dir=* | --report=*) check_writable "${arg%%=*}" "${arg#*=}" ;;
    esac
    previous=$arg
done

exec "$tool" "$@"
