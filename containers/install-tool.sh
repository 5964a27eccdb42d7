#!/bin/sh
# Install one tool's dependencies into the virtual environment /opt/ckpt and ckptfmt + the tool themselves
# into /opt/ckpt-code, which a .pth file puts on the venv's path (install stage of every image).
#
#   install-tool.sh deps EXTRAS   pyproject.toml files only: installs every dependency (cacheable layer)
#   install-tool.sh code EXTRAS   full sources: installs ckptfmt and the tool into /opt/ckpt-code, without deps
#
# The final stage copies the two directories separately: a code change leaves /opt/ckpt (up to ~1 GB) as
# it was, so its copy stays a cached layer and only the few MB of /opt/ckpt-code are copied again.
#
# Sources are expected in /tmp/ckpt-src/shared and /tmp/ckpt-src/tool. The venv sees the base image's
# site-packages, so the NVIDIA images' own torch/TensorRT/mpi4py satisfy the requirements instead of being
# downloaded again. pip runs from the base interpreter (no pip inside the venv, nothing left behind).
# Build arguments honoured through the environment: PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS,
# PIP_CONSTRAINT, PIP_TRUSTED_HOST, EXTRA_CA_CERTS (PEM text added to the CA bundle pip uses, for this stage
# only) and TORCH_INDEX_URL: when set and the tool (with EXTRAS) requires torch, torch alone comes from that
# index first (e.g. PyTorch's CPU index https://download.pytorch.org/whl/cpu), so the other requirements find
# it installed and PyPI's CUDA build is never downloaded.
set -eu

VENV=/opt/ckpt
CODE=/opt/ckpt-code
SRC=/tmp/ckpt-src
stage=${1:?usage: install-tool.sh deps|code EXTRAS}
extras=${2-}

# Build arguments that were not given arrive empty; pip would read an empty setting as a value.
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CONSTRAINT PIP_TRUSTED_HOST; do
    eval "value=\${$name-}"
    [ -n "$value" ] || unset "$name"
done

if [ -n "${EXTRA_CA_CERTS-}" ]; then
    bundle=/tmp/ckpt-ca-bundle.pem
    cat /etc/ssl/certs/ca-certificates.crt > "$bundle"
    printf '%s\n' "$EXTRA_CA_CERTS" >> "$bundle"
    export PIP_CERT="$bundle"
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv --system-site-packages --without-pip "$VENV"
fi

tool_spec="$SRC/tool"
if [ -n "$extras" ]; then
    tool_spec="$SRC/tool[$extras]"
fi

# Whether the tool with these extras requires torch (Python < 3.11 has no tomllib: assume it does).
needs_torch() {
    "$VENV/bin/python" - "$SRC/tool/pyproject.toml" "$extras" <<'EOF'
import re
import sys

try:
    import tomllib
except ImportError:
    sys.exit(0)
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project.get("optional-dependencies", {})
requirements = project.get("dependencies", []) + [r for e in sys.argv[2].split(",") for r in extras.get(e, [])]
sys.exit(0 if any(re.match(r"torch(?![\w.-])", r) for r in requirements) else 1)
EOF
}

# The distribution names of ckptfmt and the tool (the `name` line of each pyproject.toml).
project_names() {
    sed -n 's/^name *= *"\([^"]*\)".*/\1/p' "$SRC/shared/pyproject.toml" "$SRC/tool/pyproject.toml"
}

pip_install() {
    "$VENV/bin/python" -m pip install --no-cache-dir --no-input --disable-pip-version-check "$@"
}

case "$stage" in
    deps)
        if [ -n "${TORCH_INDEX_URL-}" ] && needs_torch; then
            # Only that index (no extra index or find-links that could offer another build); torch's own
            # dependencies come with the next step.
            echo "install-tool.sh: torch from $TORCH_INDEX_URL" >&2
            (
                unset PIP_EXTRA_INDEX_URL PIP_FIND_LINKS
                pip_install --no-deps --index-url "$TORCH_INDEX_URL" torch
            )
        fi
        # Empty distributions of both projects pull in every dependency, then go: the code is in $CODE.
        pip_install "$SRC/shared" "$tool_spec"
        # shellcheck disable=SC2046 # one word per name
        "$VENV/bin/python" -m pip uninstall --yes --no-input --disable-pip-version-check $(project_names)
        site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
        echo "$CODE" > "$site/ckpt-code.pth"
        ;;
    code)
        pip_install --no-deps --target "$CODE" "$SRC/shared" "$SRC/tool"
        install -m 0755 "$SRC/entrypoint.sh" "$CODE/bin/ckpt-entry"
        ;;
    *)
        echo "install-tool.sh: unknown stage '$stage' (expected deps or code)" >&2
        exit 2
        ;;
esac

rm -f /tmp/ckpt-ca-bundle.pem
