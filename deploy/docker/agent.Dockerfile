# syntax=docker/dockerfile:1.7
# The edge agent, arm64 first. Built from the repository root:
#
#   docker buildx build --platform linux/arm64 -f deploy/docker/agent.Dockerfile \
#       -t edgeserve-agent:0.1.0 .
#   # NVIDIA Jetson (JetPack 6, L4T r36), with NVIDIA's onnxruntime-gpu wheel for it:
#   docker buildx build --platform linux/arm64 -f deploy/docker/agent.Dockerfile \
#       --build-arg VARIANT=jetson --build-arg ORT_WHEEL=<onnxruntime_gpu-...whl URL> \
#       -t edgeserve-agent:0.1.0-jetson .
#
# BuildKit sets TARGETPLATFORM from --platform (the build machine's own platform when it
# is left out), so always name the platform; the arm64 default below only applies to a
# builder that does not set it. `--platform linux/amd64` builds the same image for x86-64.
# The wheel is pure Python: it is built on BUILDPLATFORM (set by BuildKit), no emulation.
# Run it beside the apps it serves; the local API has no authentication, so publish it
# on loopback only: docker run -p 127.0.0.1:8710:8710 -v agent-state:/var/lib/edgeserve/agent

ARG TARGETPLATFORM=linux/arm64
ARG VARIANT=generic
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# JetPack 6 (L4T r36, Ubuntu 22.04): CUDA, cuDNN and TensorRT for the Jetson's GPU.
ARG JETSON_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0

FROM --platform=$BUILDPLATFORM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgeserve ./edgeserve
COPY edge_agent ./edge_agent
COPY cloud_gateway ./cloud_gateway
COPY sync ./sync
COPY models ./models
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM --platform=$TARGETPLATFORM ${PYTHON_IMAGE} AS base-generic

# Ubuntu 22.04 ships Python 3.10; edgeserve needs 3.11 (deadsnakes builds it for arm64).
FROM --platform=$TARGETPLATFORM ${JETSON_IMAGE} AS base-jetson
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && ln -sf /usr/bin/python3.11 /usr/local/bin/python3 \
    && rm -rf /var/lib/apt/lists/*

FROM base-${VARIANT} AS runtime
ENV PATH=/opt/edgeserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGESERVE_AGENT_HOST=0.0.0.0 \
    EDGESERVE_AGENT_STATE_DIR=/var/lib/edgeserve/agent
# The agent with escalation and fleet sync: no torch, no FastAPI, no TensorRT on the device.
# One ONNX Runtime per image (both wheels write the same module): the CPU one from PyPI
# (the 'cpu' extra), or, given ORT_WHEEL (a URL or path), the onnxruntime-gpu wheel NVIDIA
# builds for the Jetson's JetPack and Python, instead of it.
ARG ORT_WHEEL=""
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python3 -m venv /opt/edgeserve \
    && wheel="$(ls /wheels/edgeserve-*.whl)" \
    && if [ -n "$ORT_WHEEL" ]; then \
         pip install --no-cache-dir "${wheel}[edge,escalation,fleet]" "$ORT_WHEEL"; \
       else \
         pip install --no-cache-dir "${wheel}[edge,cpu,escalation,fleet]"; \
       fi
RUN groupadd --system --gid 10001 edgeserve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgeserve \
       --shell /usr/sbin/nologin edgeserve \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/edgeserve /var/lib/edgeserve/agent
USER 10001:10001
WORKDIR /var/lib/edgeserve
# the local OIP v2 REST API + /metrics
EXPOSE 8710
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8710/v2/health/ready', timeout=2)"]
ENTRYPOINT ["edgeserve"]
CMD ["agent", "run"]
