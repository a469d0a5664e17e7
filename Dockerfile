# syntax=docker/dockerfile:1
# One image for every facefleet process: the API (default command), the retraining scheduler, the migration
# job, and the Ray head and workers (Ray is installed, so training code ships in the image, never per job).
#
#   docker build -t facefleet:0.1.0 .                                      # CPU torch (default)
#   docker build --build-arg TORCH_VARIANT=cuda -t facefleet-cuda:0.1.0 .  # CUDA torch, for GPU Ray workers
#   docker build --build-arg BASE_IMAGE=localhost/debian-python:3.11 ...    # another Python 3.11 base image
#
# TORCH_VARIANT=cpu installs the CPU wheel from PyTorch's CPU index (PyPI's Linux wheel would pull ~3 GB of
# CUDA libraries the API never uses); TORCH_VARIANT=cuda installs PyPI's Linux wheel, which bundles the CUDA
# runtime, so only the NVIDIA driver has to come from the host (NVIDIA container toolkit / device plugin).

ARG PYTHON_VERSION=3.11
# Any image with Python ${PYTHON_VERSION}, `python` on PATH, venv and useradd. Production builds use the official
# image; scripts/stack-test passes a Debian image it builds locally (no registry is reachable there).
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, in its own layer: it is the biggest download and changes least often.
RUN case "$TORCH_VARIANT" in \
      cpu)  pip install --index-url "$TORCH_CPU_INDEX_URL" "torch==${TORCH_VERSION}" ;; \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      *)    echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac
WORKDIR /src
COPY pyproject.toml README.md ./
COPY facefleet ./facefleet
# The package and its runtime dependencies only: no dev extra (pytest, ruff, moto, ...) in the image.
RUN pip install .
# MTCNN's weights (facenet_pytorch/data/*.pt) for --align; --no-deps: its metadata pins torch<2.3 and numpy<2,
# and facefleet never imports it (only loads the weights with torch.load(weights_only=True)).
RUN pip install --no-deps facenet-pytorch==2.6.0

FROM ${BASE_IMAGE} AS runtime
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="facefleet" \
      org.opencontainers.image.description="facefleet API, scheduler, migrations and Ray training workers" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.facefleet.torch-variant="${TORCH_VARIANT}"
# A fixed numeric uid so Kubernetes can check runAsNonRoot without resolving names. KubeRay starts Ray through
# `bash -l`, whose /etc/profile resets PATH: the profile.d line keeps the venv on it.
RUN groupadd --gid 10001 facefleet \
 && useradd --uid 10001 --gid facefleet --home-dir /home/facefleet --create-home --shell /bin/bash facefleet \
 && install -d -o facefleet -g facefleet -m 0750 /var/lib/facefleet /var/lib/facefleet/keys \
 && echo 'export PATH=/opt/venv/bin:$PATH' > /etc/profile.d/facefleet-venv.sh
COPY --from=build /opt/venv /opt/venv
COPY alembic /app/alembic
COPY alembic.ini /app/alembic.ini
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACEFLEET_ALEMBIC_DIR=/app/alembic \
    FACEFLEET_DATA_DIR=/var/lib/facefleet \
    FACEFLEET_SIGNING_KEY_PATH=/var/lib/facefleet/keys/signing_key.pem \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    RAY_USAGE_STATS_ENABLED=0
WORKDIR /app
USER 10001:10001
EXPOSE 8000 8265 6379
# Checks the API (the default command). Compose and Kubernetes override or disable it for the other roles.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["facefleet", "serve", "--host", "0.0.0.0", "--port", "8000"]
