# syntax=docker/dockerfile:1
# xnli-serve images. CPU: docker build --target cpu -t xnli-serve:cpu .   GPU: docker build --target gpu -t xnli-serve:gpu .
# Weights are never baked in unless asked: mount a model store at /models (catalogue: /models/variants.toml), or
# build with --build-arg BAKE_DEMO_STORE=tiny|base to include the untrained demo checkpoints.

# Base image pinned by digest (tag python:3.11.10-slim-bookworm, the multi-arch index). The digest was read from a
# public record and could not be pulled on the machine that wrote this line (no registry access there); check it with
# `docker buildx imagetools inspect python:3.11.10-slim-bookworm` when you bump it.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

# ---- CPU: slim Python with the CPU build of torch ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY deploy/docker/install.sh /src/deploy/docker/install.sh
COPY deploy/requirements/cpu.lock /src/deploy/requirements/cpu.lock
COPY pyproject.toml README.md /src/
RUN sh /src/deploy/docker/install.sh /opt/venv /src deps "${TORCH_SPEC}" "${TORCH_INDEX_URL}" /src/deploy/requirements/cpu.lock
COPY app /src/app
COPY loadtests /src/loadtests
RUN sh /src/deploy/docker/install.sh /opt/venv /src app

FROM ${PYTHON_IMAGE} AS cpu
ARG BAKE_DEMO_STORE=""
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    XNLI_SERVE_HOST=0.0.0.0 \
    XNLI_SERVE_PORT=8000 \
    XNLI_SERVE_GRPC_PORT=8001 \
    XNLI_SERVE_CATALOGUE=/models/variants.toml
RUN groupadd --system --gid 10001 xnli && useradd --system --uid 10001 --gid xnli --home-dir /home/xnli --create-home xnli
COPY --from=cpu-build /opt/venv /opt/venv
RUN mkdir -p /models && if [ -n "${BAKE_DEMO_STORE}" ]; then xnli-serve build-demo-store --out /models --size "${BAKE_DEMO_STORE}"; fi \
    && chown -R xnli:xnli /models
USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000
# The Open Inference Protocol over gRPC (XNLI_SERVE_GRPC_PORT; XNLI_SERVE_GRPC_ENABLED=false turns it off).
EXPOSE 8001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2).status != 200)"]
ENTRYPOINT ["xnli-serve", "serve"]

# ---- GPU: the same slim Python; PyPI's Linux torch wheel is the CUDA build and brings the CUDA runtime libraries --
# (the host needs only the NVIDIA driver and container toolkit). torch is in gpu.lock, at the CPU image's version:
# transformers >= 5 disables torch older than 2.6, so a base image with an older torch could not load any model.
FROM ${PYTHON_IMAGE} AS gpu-build
WORKDIR /src
COPY deploy/docker/install.sh /src/deploy/docker/install.sh
COPY deploy/requirements/gpu.lock /src/deploy/requirements/gpu.lock
COPY pyproject.toml README.md /src/
RUN sh /src/deploy/docker/install.sh /opt/venv /src deps "" "" /src/deploy/requirements/gpu.lock
COPY app /src/app
COPY loadtests /src/loadtests
RUN sh /src/deploy/docker/install.sh /opt/venv /src app

FROM ${PYTHON_IMAGE} AS gpu
ARG BAKE_DEMO_STORE=""
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    XNLI_SERVE_HOST=0.0.0.0 \
    XNLI_SERVE_PORT=8000 \
    XNLI_SERVE_GRPC_PORT=8001 \
    XNLI_SERVE_CATALOGUE=/models/variants.toml
RUN groupadd --system --gid 10001 xnli && useradd --system --uid 10001 --gid xnli --home-dir /home/xnli --create-home xnli
COPY --from=gpu-build /opt/venv /opt/venv
RUN mkdir -p /models && if [ -n "${BAKE_DEMO_STORE}" ]; then xnli-serve build-demo-store --out /models --size "${BAKE_DEMO_STORE}"; fi \
    && chown -R xnli:xnli /models
USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000
# The Open Inference Protocol over gRPC (XNLI_SERVE_GRPC_PORT; XNLI_SERVE_GRPC_ENABLED=false turns it off).
EXPOSE 8001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2).status != 200)"]
ENTRYPOINT ["xnli-serve", "serve"]
