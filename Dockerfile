# MouaadNet-Ultra: the image every Kubeflow component runs in (`@dsl.component(base_image=...)`).
#
# CPU (default):  docker build -t mouaadnet:cpu .
# GPU / TensorRT: docker build -t mouaadnet:gpu \
#                   --build-arg BASE_IMAGE=nvcr.io/nvidia/tensorrt:24.08-py3 \
#                   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .
# The builder and the runtime use the same base so that the virtual environment's interpreter matches.
# The venv sees the base's site-packages (--system-site-packages): TensorRT's Python bindings on GPU bases.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------- builder
FROM ${BASE_IMAGE} AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=pipeline,export,serve

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# torch first, from the index that matches the base (CPU wheels by default: the PyPI default is the CUDA build).
RUN python3 -m venv --system-site-packages /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY mouaadnet ./mouaadnet
RUN pip install --no-cache-dir "/src[${EXTRAS}]"

# ---------------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="mouaadnet-ultra" \
      org.opencontainers.image.description="MouaadNet-Ultra: people detection + gender + age, and its MLOps pipeline" \
      org.opencontainers.image.licenses="Apache-2.0"

# git: DVC and MLflow read the repository state (commit, data.dvc) when a component works in one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid so that Kubernetes `runAsNonRoot` can check it.
RUN groupadd --gid 10001 mouaadnet \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin mouaadnet

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Configs, the data pin and the DVC remote (no credentials: those come from a Kubernetes Secret / env).
COPY --chown=10001:10001 configs ./configs
# The shipped model (the pipeline's `pretrained` and first champion) and the real validation scenes it is judged on.
COPY --chown=10001:10001 weights ./weights
COPY --chown=10001:10001 examples ./examples
COPY --chown=10001:10001 data.dvc ./data.dvc
COPY --chown=10001:10001 .dvc/config ./.dvc/config

USER 10001:10001

ENTRYPOINT ["mouaadnet"]
CMD ["--help"]
