# syntax=docker/dockerfile:1.7
# The cloud gateway (OIP v2 REST + gRPC). Built from the repository root:
#
#   docker buildx build -f deploy/docker/gateway.Dockerfile -t edgeserve-gateway:0.1.0 .
#   docker buildx build -f deploy/docker/gateway.Dockerfile --build-arg VARIANT=gpu \
#       -t edgeserve-gateway:0.1.0-gpu .
#
# VARIANT=cpu (default) runs on python:3.11-slim-bookworm with the CPU onnxruntime;
# VARIANT=gpu runs on NVIDIA's CUDA 12 + cuDNN 9 runtime with onnxruntime-gpu (CUDA and
# TensorRT execution providers; TensorRT itself comes from the 'gpu' extra's wheels or
# the host's libraries).

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# -- the wheel: pure Python, built once, installed into the runtime stage ----------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgeserve ./edgeserve
COPY edge_agent ./edge_agent
COPY cloud_gateway ./cloud_gateway
COPY sync ./sync
COPY models ./models
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- runtime bases: both give a `python3` with venv ------------------------------------
FROM ${PYTHON_IMAGE} AS base-cpu

FROM ${CUDA_IMAGE} AS base-gpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# -- runtime ----------------------------------------------------------------------------
FROM base-${VARIANT} AS runtime
ARG VARIANT
ENV PATH=/opt/edgeserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGESERVE_GATEWAY_HOST=0.0.0.0 \
    EDGESERVE_GATEWAY_STATE_DIR=/var/lib/edgeserve/gateway
# One ONNX Runtime per image: the 'cpu' or the 'gpu' extra, never both (both wheels
# write the same `onnxruntime` module).
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python3 -m venv /opt/edgeserve \
    && wheel="$(ls /wheels/edgeserve-*.whl)" \
    && if [ "$VARIANT" = gpu ]; then \
         pip install --no-cache-dir "${wheel}[cloud,gpu]"; \
       else \
         pip install --no-cache-dir "${wheel}[cloud,cpu]"; \
       fi
# A fixed non-root uid/gid (the Helm chart's runAsUser) that owns the state folder.
RUN groupadd --system --gid 10001 edgeserve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgeserve \
       --shell /usr/sbin/nologin edgeserve \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/edgeserve /var/lib/edgeserve/gateway
USER 10001:10001
WORKDIR /var/lib/edgeserve
# http (REST + /metrics), grpc (API keys), grpc-mtls (devices)
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
ENTRYPOINT ["edgeserve"]
CMD ["gateway", "run"]
