# syntax=docker/dockerfile:1
# The GPU image, taudis-gpu: train, evaluate and infer. The CUDA build of torch 2.14.1 brings the
# CUDA user-space libraries (cuBLAS, cuDNN, NCCL, ... as nvidia-* wheels), so the base needs none;
# the NVIDIA driver comes from the node (GKE mounts it under /usr/local/nvidia). The same torch
# runs on a CPU when no GPU is visible. detectron2 is installed by scripts/install-detectron2.sh.
#
# Build it with the project's build command, which stages the build context (requirements from
# pyproject.toml, the taudis wheel) and names the image:
#   scripts/build_images.py --registry REGISTRY [--push]
# Layers run from the least to the most often changed: a code change rebuilds only the last one.
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
FROM ${BASE_IMAGE}

# The non-root user the steps run as (numeric in USER, so that runAsNonRoot can verify it). KFP's launcher writes artifacts under /gcs, /minio and /s3
# as that user, so those exist and belong to it; nothing else outside /tmp is writable by it.
RUN groupadd --gid 1000 taudis \
  && useradd --uid 1000 --gid 1000 --home-dir /home/taudis --create-home --shell /usr/sbin/nologin taudis \
  && mkdir -p /gcs /minio /s3 \
  && chown taudis:taudis /gcs /minio /s3

# Every cache and scratch path is under /tmp, the one place writable with a read-only root
# filesystem (an emptyDir on Kubernetes, a tmpfs with `--read-only`): numba's compiled functions,
# matplotlib's font cache, torch's and others' XDG caches.
ENV VIRTUAL_ENV=/opt/taudis \
  PATH=/opt/taudis/bin:$PATH \
  PYTHONUNBUFFERED=1 \
  PYTHONDONTWRITEBYTECODE=1 \
  XDG_CACHE_HOME=/tmp/taudis/cache \
  NUMBA_CACHE_DIR=/tmp/taudis/numba \
  MPLCONFIGDIR=/tmp/taudis/matplotlib \
  FVCORE_CACHE=/tmp/taudis/cache/fvcore \
  OMP_WAIT_POLICY=PASSIVE \
  NVIDIA_VISIBLE_DEVICES=all \
  NVIDIA_DRIVER_CAPABILITIES=compute,utility \
  LD_LIBRARY_PATH=/usr/local/nvidia/lib64

COPY build-env.sh /usr/local/lib/taudis/build-env.sh
COPY requirements/tools.txt /opt/taudis-build/tools.txt
RUN --mount=type=secret,id=pipconf \
  --mount=type=secret,id=cacert \
  . /usr/local/lib/taudis/build-env.sh \
  && python3 -m venv /opt/taudis \
  && pip install --no-cache-dir --requirement /opt/taudis-build/tools.txt

# torch and torchvision first: the largest layer, and the one that changes least often.
COPY requirements/model.txt /opt/taudis-build/model.txt
RUN --mount=type=secret,id=pipconf \
  --mount=type=secret,id=cacert \
  . /usr/local/lib/taudis/build-env.sh \
  && pip install --no-cache-dir --requirement /opt/taudis-build/model.txt

COPY detectron2/ /opt/taudis-build/detectron2/
RUN --mount=type=secret,id=pipconf \
  --mount=type=secret,id=cacert \
  . /usr/local/lib/taudis/build-env.sh \
  && bash /opt/taudis-build/detectron2/install-detectron2.sh /opt/taudis/bin/python

COPY requirements/runtime.txt /opt/taudis-build/runtime.txt
RUN --mount=type=secret,id=pipconf \
  --mount=type=secret,id=cacert \
  . /usr/local/lib/taudis/build-env.sh \
  && pip install --no-cache-dir --requirement /opt/taudis-build/runtime.txt

COPY wheels/ /opt/taudis-build/wheels/
RUN . /usr/local/lib/taudis/build-env.sh \
  && pip install --no-cache-dir --no-deps --no-index /opt/taudis-build/wheels/taudis-*.whl \
  && pip check \
  && taudis --help >/dev/null

USER 1000:1000
WORKDIR /home/taudis
CMD ["taudis", "--help"]

# Last, so that a new revision changes no cached layer above.
ARG BASE_IMAGE
ARG TAUDIS_VERSION=unknown
ARG REVISION=unknown
ARG SOURCE_URL=unknown
LABEL org.opencontainers.image.title="taudis-gpu" \
  org.opencontainers.image.description="taudis pipeline steps on the GPU: Mask R-CNN training, evaluation, inference" \
  org.opencontainers.image.version="${TAUDIS_VERSION}" \
  org.opencontainers.image.revision="${REVISION}" \
  org.opencontainers.image.source="${SOURCE_URL}" \
  org.opencontainers.image.licenses="Apache-2.0" \
  org.opencontainers.image.base.name="${BASE_IMAGE}"
