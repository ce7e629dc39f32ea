# syntax=docker/dockerfile:1
# k2d serving image. GPU (default): CUDA 12 + cuDNN 9, what current ctranslate2 wheels need.
# CPU image from the same file:  docker build --build-arg BASE=python:3.11-slim-bookworm -t k2d:cpu .
# The serving image has no torch and no transformers; models are mounted at /models (build them
# on any machine with `make demo`, which fills ./models).
ARG BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

FROM ${BASE} AS base
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; fi

FROM base AS build
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts/setup.sh scripts/setup.sh
COPY k2d k2d
COPY k2d_cli k2d_cli
COPY app app
COPY loadtest loadtest
COPY k2d_train k2d_train
# The same install script as CI and developers (serve extras: no torch), into /opt/venv.
RUN K2D_VENV=/opt/venv scripts/setup.sh serve

FROM base AS runtime
RUN useradd --create-home --uid 10001 k2d
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=k2d:k2d /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH K2D_MODELS_DIR=/models K2D_HOST=0.0.0.0 K2D_PORT=8000 HF_HUB_OFFLINE=1
USER k2d
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"
CMD ["k2d", "serve"]
