# syntax=docker/dockerfile:1
# k2d images from one file, each for GPU (default base: CUDA 12 + cuDNN 9, what current ctranslate2
# wheels need) or CPU (--build-arg BASE=python:3.11-slim-bookworm, or any Debian/Ubuntu with python3):
#   serving (default target, no torch):   docker build -t k2d:gpu .
#   training (torch, the pipeline):       docker build --target train -t k2d:train-gpu .
# The serving image reads models from /models; the training image writes them there
# (`k2d bootstrap configs/demo.yaml`: docker-compose.yml's one-shot `train` service).
# scripts/verify_images.py builds both CPU images with podman and runs them for real.
ARG BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

FROM ${BASE} AS base
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; fi \
    && (id -u k2d >/dev/null 2>&1 || useradd --create-home --uid 10001 k2d)

FROM base AS sources
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts/setup.sh scripts/setup.sh
COPY k2d k2d
COPY k2d_cli k2d_cli
COPY app app
COPY loadtest loadtest
COPY k2d_train k2d_train
COPY k2d_bench k2d_bench

FROM sources AS build
# The same install script as CI and developers (serve extras: no torch), into /opt/venv.
RUN K2D_VENV=/opt/venv scripts/setup.sh serve

FROM sources AS train
# K2D_TORCH_INDEX_URL: a torch wheel index (empty: the package index's default build, CUDA on x86_64;
# a CPU-only index makes a slim CPU image). K2D_WHEELS: a folder of local wheels, mounted at build time.
ARG K2D_TORCH_INDEX_URL=""
ARG K2D_WHEELS=""
COPY configs configs
# setup.sh also installs the corpus's offline voices (gcin-voice, espeak-ng, flite) and texts (fortunes-zh, fortunes) with apt.
RUN if [ -n "$K2D_WHEELS" ]; then export PIP_FIND_LINKS="$K2D_WHEELS"; fi \
    && K2D_VENV=/opt/venv scripts/setup.sh train \
    && rm -rf /var/lib/apt/lists/* /root/.cache \
    && mkdir -p /models /app/runs && chown k2d:k2d /models /app/runs
ENV PATH=/opt/venv/bin:$PATH K2D_MODELS_DIR=/models HF_HUB_OFFLINE=1 MPLCONFIGDIR=/tmp/matplotlib
USER k2d
# /models and /app/runs start owned by k2d, so named volumes mounted there are writable by it.
ENTRYPOINT ["k2d"]
CMD ["bootstrap", "configs/demo.yaml"]

FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=k2d:k2d /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH K2D_MODELS_DIR=/models K2D_HOST=0.0.0.0 K2D_PORT=8000 HF_HUB_OFFLINE=1
USER k2d
EXPOSE 8000
# on the port the service listens on (K2D_PORT may be changed at run time)
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python3 -c "import os,sys,urllib.request; url='http://127.0.0.1:%s/healthz' % os.environ.get('K2D_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"
CMD ["k2d", "serve"]
