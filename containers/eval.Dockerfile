# ckpt-eval: the CI gate. With no arguments it runs the gates named by environment variables (EVAL_TASKS
# summarize,mmlu,perplexity; thresholds, baseline: see `ckpt-eval --help`) over the volume at /data and exits
# 0 (passed), 1 (a gate failed) or 2 (usage or input error). `ckpt-eval TASK ARGS...` runs one tool
# (summarize, mmlu, perplexity, run, lm-eval); arguments starting with `-` go to ckpt-summarize.
# Build context: the repository root (see .dockerignore). Classic builder compatible.
#   docker build -f containers/eval.Dockerfile -t ckpt-suite/eval .
# The base must provide python3 (>= 3.10) with venv and pip. NVIDIA's PyTorch image provides PyTorch,
# TensorRT and an MPI with its compiler wrappers (for mpi4py); without them, build with EXTRAS=torch
# (torch backend only).
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.10-py3

FROM ${BASE_IMAGE} AS install
ARG EXTRAS=torch,mpi
ARG EXTRA_CA_CERTS=""
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ARG PIP_CONSTRAINT=""
ARG PIP_TRUSTED_HOST=""
ARG TORCH_INDEX_URL=""
COPY containers/install-tool.sh /tmp/ckpt-src/
COPY shared/pyproject.toml /tmp/ckpt-src/shared/
COPY tools/eval/pyproject.toml /tmp/ckpt-src/tool/
RUN sh /tmp/ckpt-src/install-tool.sh deps "${EXTRAS}"
COPY shared /tmp/ckpt-src/shared
COPY tools/eval /tmp/ckpt-src/tool
COPY containers/entrypoint.sh /tmp/ckpt-src/
RUN sh /tmp/ckpt-src/install-tool.sh code "${EXTRAS}"

FROM ${BASE_IMAGE}
ARG CKPT_UID=1000
ARG CKPT_GID=1000
COPY containers/create-user.sh /tmp/create-user.sh
RUN sh /tmp/create-user.sh "${CKPT_UID}" "${CKPT_GID}" && rm /tmp/create-user.sh
COPY --from=install /opt/ckpt /opt/ckpt
COPY --from=install /opt/ckpt-code /opt/ckpt-code
ENV PATH=/opt/ckpt-code/bin:/opt/ckpt/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    XDG_CACHE_HOME=/tmp/cache \
    XDG_CONFIG_HOME=/tmp/config \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HUB_OFFLINE=1
RUN ckpt-summarize --help > /dev/null && ckpt-mmlu --help > /dev/null && ckpt-perplexity --help > /dev/null \
    && ckpt-eval --help > /dev/null
USER ${CKPT_UID}:${CKPT_GID}
WORKDIR /data
LABEL org.opencontainers.image.title="ckpt-eval" \
      org.opencontainers.image.description="Evaluate TensorRT-LLM checkpoints and engines (ROUGE, MMLU, perplexity; CI gates)"
ENTRYPOINT ["ckpt-entry", "ckpt-eval"]
CMD []
