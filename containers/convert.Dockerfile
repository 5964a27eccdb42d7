# ckpt-convert: Hugging Face / NeMo / Megatron / DeepSpeed / JAX weights -> TensorRT-LLM checkpoint.
# Build context: the repository root (see .dockerignore). Classic builder compatible.
#   docker build -f containers/convert.Dockerfile -t ckpt-suite/convert .
# The base must provide python3 (>= 3.10) with venv and pip; NVIDIA's PyTorch image also provides torch,
# which the venv reuses instead of downloading it again.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.10-py3

FROM ${BASE_IMAGE} AS install
ARG EXTRAS=hf,nemo,jax
ARG EXTRA_CA_CERTS=""
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ARG PIP_CONSTRAINT=""
ARG PIP_TRUSTED_HOST=""
ARG TORCH_INDEX_URL=""
COPY containers/install-tool.sh /tmp/ckpt-src/
COPY shared/pyproject.toml /tmp/ckpt-src/shared/
COPY tools/convert/pyproject.toml /tmp/ckpt-src/tool/
RUN sh /tmp/ckpt-src/install-tool.sh deps "${EXTRAS}"
COPY shared /tmp/ckpt-src/shared
COPY tools/convert /tmp/ckpt-src/tool
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
    HF_HUB_OFFLINE=1
RUN ckpt-convert --help > /dev/null
USER ${CKPT_UID}:${CKPT_GID}
WORKDIR /data
LABEL org.opencontainers.image.title="ckpt-convert" \
      org.opencontainers.image.description="Convert HF/NeMo/Megatron weights to the TensorRT-LLM checkpoint format"
ENTRYPOINT ["ckpt-entry", "ckpt-convert"]
CMD ["--help"]
